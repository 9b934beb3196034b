"""Report files of a scoring run: CSV, JSON, Markdown, a plot and a contact sheet.

Written through :class:`lora_likeness.outputs.ReportFolder`: one run at a time per folder, the new
report staged and swapped in whole at the end, and a report already in the output folder moved to
``previous/<time>/`` then: a re-run never overwrites what an earlier run produced, and an interrupted
one leaves the earlier report where it was.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import fonts
from .grid import draw_score, score_colour
from .images import DEFAULT_MAX_SIDE, LoadedImage, decode_image, from_array, save_png_atomic, write_bytes_atomic, write_text_atomic
from .outputs import PREVIOUS, ReportFolder, preserve_file, preserve_previous  # noqa: F401 - imported from here by training, sweep and dataset
from .pipeline import ScoredImage, ScoreRun
from .tables import csv_text, format_value

REPORT_FILES = ("scores.csv", "summary.csv", "report.json", "report.md", "scores.png", "contact_sheet.png", "curves.png")
SUMMARY_COLUMNS = (
    "label", "n_images", "n_faces", "n_errors", "no_face_rate", "mean", "median", "std", "min", "max",
    "top3_mean", "ci95_low", "ci95_high", "n_memorised",
)
SCORE_COLUMNS = (
    "path", "group", "face_found", "n_faces", "score_max", "score_mean", "score_ism", "best_ref",
    "best_ref_path", "memorised", "det_score", "error",
)


def summary_rows(run: ScoreRun) -> list[dict]:
    rows = []
    for group in run.groups:
        data = group.as_dict()
        low, high = group.ci95 if group.ci95 is not None else (None, None)
        data.update(ci95_low=low, ci95_high=high)
        rows.append({column: data.get(column) for column in SUMMARY_COLUMNS})
    return rows


def summary_csv(run: ScoreRun) -> str:
    """One row per group; a people run adds each person's mean, 95% CI and presence rate and the
    group's all-present rate, blend rate and worst-served person (:func:`~.people.people_columns`)."""
    if run.people is None:
        return csv_text(SUMMARY_COLUMNS, summary_rows(run))
    from .people import people_columns, people_values

    rows = [{**row, **people_values(run.people_groups.get(group.label), run.people.names)}
            for group, row in zip(run.groups, summary_rows(run))]
    return csv_text((*SUMMARY_COLUMNS, *people_columns(run.people.names)), rows)


def scores_csv(run: ScoreRun) -> str:
    """One row per image; a people run adds ``<name>_score`` (empty when missing), ``<name>_face`` per
    person, ``blended`` and ``all_present``."""
    ref_paths = run.references.used_paths()
    rows = [image.as_dict(ref_paths) for image in run.images]
    if run.people is None:
        return csv_text(SCORE_COLUMNS, rows)
    extra = [f"{name}_{part}" for name in run.people.names for part in ("score", "face")] + ["blended", "all_present"]
    for row in rows:
        for name, person in (row.get("people") or {}).items():
            row[f"{name}_score"], row[f"{name}_face"] = person["score"], person["face_index"]
    return csv_text((*SCORE_COLUMNS, *extra), rows)


def report_json(run: ScoreRun) -> str:
    return json.dumps(run.as_dict(), indent=2, ensure_ascii=False, allow_nan=False)


def summary_table_text(run: ScoreRun) -> str:
    """The seed-style table as plain text (Markdown), for hosts that show a STRING."""
    head = "| group | n | faces | no-face | mean | median | std | min | max | top-3 | 95% CI |"
    lines = [head, "|" + "---|" * 11]
    for g in run.groups:
        ci = f"{g.ci95[0]:.3f}–{g.ci95[1]:.3f}" if g.ci95 else "–"
        no_face = f"{g.no_face_rate:.0%}" if g.no_face_rate is not None else "–"
        lines.append(
            f"| {g.label} | {g.n_images} | {g.n_faces} | {no_face} | {format_value(g.mean)} | {format_value(g.median)} | "
            f"{format_value(g.std)} | {format_value(g.min)} | {format_value(g.max)} | {format_value(g.top3_mean)} | {ci} |"
        )
    row = baseline_row(run)
    if row is not None:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


PEOPLE_COLUMNS = ("group", "person", "expected", "present", "mean", "95% CI", "served", "all present", "blended")


def _rate(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "–"


def people_rows(run: ScoreRun) -> list[list[str]]:
    """The per-person table: one row per group and person (:data:`PEOPLE_COLUMNS`); the worst-served
    person of each group is marked ``(worst)``. Empty for a single-person run."""
    rows: list[list[str]] = []
    for group in run.groups:
        stats = run.people_groups.get(group.label)
        if stats is None:
            continue
        for name, person in stats.people.items():
            ci = f"{person.ci95[0]:.3f}–{person.ci95[1]:.3f}" if person.ci95 else "–"
            shown = name + (" (worst)" if name == stats.worst_served and len(stats.people) > 1 else "")
            rows.append([group.label, shown, str(person.n_expected), _rate(person.presence_rate), format_value(person.mean), ci,
                         format_value(person.served), _rate(stats.all_present_rate), _rate(stats.blend_rate)])
    return rows


def people_table_text(run: ScoreRun) -> str:
    """:func:`people_rows` as a Markdown table ("" for a single-person run)."""
    rows = people_rows(run)
    if not rows:
        return ""
    lines = ["| " + " | ".join(PEOPLE_COLUMNS) + " |", "|" + "---|" * len(PEOPLE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def people_header(stats) -> str:
    """One group's people in a line: ``dad 0.61 (90%)  mum 0.48 (70%)  all 65%  blend 10%``."""
    parts = [f"{name} {format_value(p.mean, 2)} ({_rate(p.presence_rate)})" for name, p in stats.people.items() if p.n_expected]
    return "  ".join(parts + [f"all {_rate(stats.all_present_rate)}", f"blend {_rate(stats.blend_rate)}"])


def people_sentence(run: ScoreRun) -> str:
    """How each person's acceptance threshold came about, for the report and the console."""
    if run.people is None:
        return ""
    parts = [f"{name} {run.people.thresholds[i]:.3f}" for i, name in enumerate(run.people.names)]
    return ("Per-person acceptance thresholds (halfway between the person's least typical own photo and the most alike "
            "photo of someone else; see README): " + ", ".join(parts) + ". Presence: share of the images expecting the "
            "person where a face cleared it; served: mean score counting a missing person as 0.")


def baseline_row(run: ScoreRun) -> list[str] | None:
    """The reference baseline as a table row beside the groups (the ceiling to compare with)."""
    b, refs = run.references.baseline, run.references
    if b.mean is None:
        return None
    loo = np.asarray(b.loo, dtype=np.float64)
    median = float(np.median(loo))
    std = float(loo.std(ddof=1)) if loo.size >= 2 else None
    return ["(reference baseline)", str(refs.n), str(refs.n), "–", format_value(b.mean), format_value(median), format_value(std),
            format_value(b.min), format_value(b.max), "–", "–"]


def baseline_sentence(run: ScoreRun) -> str:
    refs = run.references
    b = refs.baseline
    if b.mean is None:
        return f"Reference baseline: not available ({refs.n} usable reference photo)."
    return (
        f"Reference baseline (each reference photo against the others, {b.aggregation}, {refs.n} photos): "
        f"mean {b.mean:.3f}, min {b.min:.3f}, max {b.max:.3f}. A LoRA at the baseline is as like the person "
        f"as their own photos are to each other."
    )


def report_markdown(run: ScoreRun, files: dict[str, Path] | None = None) -> str:
    model = run.model
    lines = [
        "# Likeness report",
        "",
        f"- images: `{run.images_root}` ({len(run.images)} files), grouped by {run.settings.group_by}",
        f"- score: `{run.settings.aggregation}` cosine similarity to the reference photos, "
        f"{run.settings.face_choice} face per image",
        f"- face model: `{model.get('pack')}` ({model.get('embedding_dim')}-d, providers {', '.join(model.get('providers', []))})",
        "",
        summary_table_text(run),
        "",
        baseline_sentence(run),
        "",
    ]
    if run.people is not None:
        lines += ["## People", "", people_table_text(run), "", people_sentence(run), ""]
    if run.verdict is not None:  # --group-by lora|step: which checkpoint or step (lora_likeness.steps)
        lines += ["## Recommendation", "", *[f"- {line}" for line in run.verdict.lines()], ""]
    if files and "curves.png" in files:
        lines += ["![identity by step](curves.png)", ""]
    if files and "scores.png" in files:
        lines += ["![scores per group](scores.png)", ""]
    if files and "contact_sheet.png" in files:
        lines += ["![contact sheet](contact_sheet.png)", ""]
    if run.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in run.warnings], ""]
    errors = [i for i in run.images if i.error]
    if errors:
        lines += ["## Unreadable files", "", *[f"- `{i.path}`: {i.error}" for i in errors], ""]
    lines += [
        "## How to read it",
        "",
        "Each image's face is compared with every reference photo (cosine similarity of ArcFace embeddings).",
        "Higher is more alike; compare groups with each other and with the reference baseline, not with fixed",
        "thresholds: scores from different face-model packs are on different scales. Images without a face",
        "count in the no-face rate and not in the statistics; a rising no-face rate across epochs often means",
        "over-training is distorting faces.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------


def plot_png(run: ScoreRun) -> bytes:
    """Per group: every image's score, the mean with its 95% CI, the min–max band, and the
    reference baseline as a line. Returns PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    groups = run.groups
    title = f"Likeness by {run.settings.group_by} — {run.model.get('pack')}"
    # CJK folder names: drawn with a CJK font when one is installed, else escaped (never boxes).
    (title, *labels), families = fonts.plot_texts([title, *(g.label for g in groups)])
    families = families or None
    x = np.arange(len(groups))
    figure = Figure(figsize=(max(6.0, 0.9 * len(groups) + 2.5), 4.8), dpi=110)
    axes = figure.add_subplot(1, 1, 1)
    by_group: dict[str, list[float]] = {}
    for image in run.images:
        value = image.score.value(run.settings.aggregation)
        if value is not None:
            by_group.setdefault(image.group, []).append(value)
    rng = np.random.default_rng(0)
    for i, group in enumerate(groups):
        values = by_group.get(group.label, [])
        if values:
            axes.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=12, color="0.55", alpha=0.7, zorder=2)
    has = [g.mean is not None for g in groups]
    if any(has):
        xs = x[has]
        means = np.array([g.mean for g in groups if g.mean is not None])
        lows = np.array([g.min for g in groups if g.mean is not None])
        highs = np.array([g.max for g in groups if g.mean is not None])
        axes.fill_between(xs, lows, highs, color="tab:blue", alpha=0.12, label="min–max", zorder=1)
        ci = np.array([g.ci95 for g in groups if g.mean is not None])
        axes.errorbar(xs, means, yerr=[means - ci[:, 0], ci[:, 1] - means], fmt="o-", color="tab:blue", capsize=4, label="mean, 95% CI", zorder=3)
    if run.people is not None:
        plot_people(axes, run, x)
    baseline = run.references.baseline
    if baseline.mean is not None:
        axes.axhline(baseline.mean, color="tab:green", linestyle="--", label=f"reference baseline {baseline.mean:.3f}")
        axes.axhspan(baseline.min, baseline.max, color="tab:green", alpha=0.06)
    for i, group in enumerate(groups):
        if group.no_face_rate:
            axes.annotate(f"no face {group.no_face_rate:.0%}", (i, 0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                          textcoords="offset points", ha="center", fontsize=7, color="tab:red")
    axes.set_xticks(x)
    axes.set_xticklabels(labels, rotation=30 if max((len(l) for l in labels), default=0) > 8 else 0, ha="right" if len(groups) > 1 else "center",
                         fontsize=8, fontfamily=families)
    axes.set_ylabel(f"identity score ({run.settings.aggregation} cosine similarity)")
    axes.set_title(title, fontfamily=families)
    axes.grid(axis="y", alpha=0.3)
    if any(has) or baseline.mean is not None:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_people(axes, run: ScoreRun, x: np.ndarray) -> None:
    """Each person's mean score with its 95% CI per group, in the person's colour, a little apart from
    the others; the label carries the presence rate over all groups (curves per epoch of a family LoRA)."""
    from .people import person_colour

    count = run.people.n
    for p, name in enumerate(run.people.names):
        shift = (p - (count - 1) / 2) * 0.08
        points = [(i + shift, s.people[name]) for i, g in enumerate(run.groups)
                  if (s := run.people_groups.get(g.label)) is not None and s.people[name].mean is not None]
        if not points:
            continue
        xs = np.array([point[0] for point in points])
        means = np.array([point[1].mean for point in points])
        ci = np.array([point[1].ci95 for point in points])
        colour = tuple(c / 255 for c in person_colour(p))
        expected = sum(s.people[name].n_expected for s in run.people_groups.values())
        found = sum(s.people[name].n_found for s in run.people_groups.values())
        axes.errorbar(xs, means, yerr=[means - ci[:, 0], ci[:, 1] - means], fmt="s--", color=colour, capsize=3, markersize=4,
                      label=f"{name} (present {found}/{expected})", zorder=4)


def _thumbnail_source(image: ScoredImage, run: ScoreRun, cell: int):
    """The scored image again: from memory when the run scored host images, else from its file."""
    index = next(i for i, item in enumerate(run.images) if item is image)
    return run_image(run, index, max_side=cell * 2)


def run_image(run: ScoreRun, index: int, max_side: int | None = None) -> LoadedImage:
    """The ``index``-th scored image again: the host's array when the run scored in-memory images
    (as it is), else decoded from its file with its longest side at most ``max_side`` px (default:
    :data:`~lora_likeness.images.DEFAULT_MAX_SIDE`). ``scale`` maps the image's pixels to the face boxes'."""
    image = run.images[index]
    if run.arrays is not None:
        return from_array(run.arrays[index], image.path)
    return decode_image(Path(run.images_root or ".") / image.path, max_side=max_side or DEFAULT_MAX_SIDE)


def annotated_image(run: ScoreRun, index: int, max_side: int | None = None) -> Image.Image:
    """The ``index``-th scored image with its scored face boxed and its score (``no face``, ``memorised?``)
    drawn on it (:func:`~lora_likeness.grid.draw_score`); a file that cannot be read is a grey tile saying so."""
    item = run.images[index]
    loaded = run_image(run, index, max_side)
    if loaded.rgb is None or item.error is not None:
        tile = Image.new("RGB", (256, 256), (40, 40, 40))
        ImageDraw.Draw(tile).text((8, 8), "unreadable", fill=(230, 80, 80), font=fonts.draw_font("unreadable", 16)[0])
        return tile
    if item.people is not None and run.people is not None:
        picture = Image.fromarray(loaded.rgb).convert("RGB")
        draw = ImageDraw.Draw(picture)
        size = max(10, min(40, min(picture.size) // 24))
        draw_people(draw, item, run, 1.0 / loaded.scale, (0, 0), size)  # source px -> these px
        band = size + 8
        draw.rectangle([0, picture.height - band, picture.width, picture.height], fill=(0, 0, 0))
        people_line(draw, item, run, (4, picture.height - band + 3), picture.width - 8, size)
        return picture
    box = None
    if item.score.face_index is not None:
        box = [float(v) / loaded.scale for v in item.result.faces[item.score.face_index].box]  # source px -> these px
    return draw_score(Image.fromarray(loaded.rgb), item.score.value(run.settings.aggregation), box=box,
                      baseline=run.references.baseline.mean, note="memorised?" if item.score.memorised else None)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def shorten_middle(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, or its start and end around ``…``, whichever fits ``width`` px (two thirds from the
    end: a file name's end tells epochs and seeds apart)."""
    if _text_width(draw, text, font) <= width:
        return text
    low, high = 0, len(text)  # how many characters are kept
    while low < high:
        keep = (low + high + 1) // 2
        head = keep // 3
        if _text_width(draw, text[:head] + "…" + text[len(text) - (keep - head):], font) <= width:
            low = keep
        else:
            high = keep - 1
    head = low // 3
    return text[:head] + "…" + text[len(text) - (low - head):]


def wrap_text(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    """``text`` in lines at most ``width`` px wide, broken between words and inside words too long
    for a line (paths); the last line ends with ``…`` when the text goes on."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if _text_width(draw, candidate, font) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:  # a word wider than a line is broken where it must be
            if line and _text_width(draw, line + char, font) > width:
                lines.append(line)
                line = ""
            line += char
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and _text_width(draw, last + "…", font) > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "…"]
    return lines


def _reason(image: ScoredImage) -> str:
    """The error without the file's path in front: the tile shows the name already."""
    error = image.error or ""
    path = str(image.result.path) if image.result.path is not None else None
    if path and error.startswith(path + ": "):
        return error[len(path) + 2:]
    return error


NAME_BAND = 15  # px above the picture for the file name
SCORE_BAND = 18  # px below it for the score


def annotate_thumbnail(image: ScoredImage, run: ScoreRun, cell: int, size: int = 13, small_size: int = 10) -> Image.Image:
    """A ``cell x cell`` tile: the file name, the thumbnail with the faces' boxes, and the score; for
    an unreadable file, the reason wrapped to the tile instead. ``size``/``small_size``: font px."""
    canvas = Image.new("RGB", (cell, cell), (28, 28, 28))
    draw = ImageDraw.Draw(canvas)
    shown = image.path
    if run.settings.group_by == "folder" and shown.startswith(image.group + "/"):
        shown = shown[len(image.group) + 1:]  # the block's header names the folder already
    name_font, name = fonts.draw_font(shown, small_size)
    draw.text((3, 2), shorten_middle(draw, name, name_font, cell - 6), fill=(185, 185, 185), font=name_font)
    loaded = _thumbnail_source(image, run, cell) if image.error is None else None
    font, _ = fonts.draw_font("", size)
    if loaded is not None and loaded.rgb is not None:
        room = cell - NAME_BAND - SCORE_BAND
        thumb = Image.fromarray(loaded.rgb)
        factor = min(cell / thumb.width, room / thumb.height)
        fitted = (max(1, round(thumb.width * factor)), max(1, round(thumb.height * factor)))
        thumb = thumb.resize(fitted, Image.Resampling.BILINEAR)
        offset = ((cell - fitted[0]) // 2, NAME_BAND + (room - fitted[1]) // 2)
        canvas.paste(thumb, offset)
        value = image.score.value(run.settings.aggregation)
        colour = score_colour(value, run.references.baseline.mean)
        scale = factor / loaded.scale
        if image.people is not None and run.people is not None:
            draw_people(draw, image, run, scale, offset, small_size)
            draw.rectangle([0, cell - SCORE_BAND, cell, cell], fill=(0, 0, 0))
            people_line(draw, image, run, (4, cell - SCORE_BAND + 1), cell - 8, small_size + 1)
            return canvas
        for index, face in enumerate(image.result.faces):
            box = [face.box[0] * scale + offset[0], face.box[1] * scale + offset[1], face.box[2] * scale + offset[0], face.box[3] * scale + offset[1]]
            chosen = index == image.score.face_index
            draw.rectangle(box, outline=colour if chosen else (150, 150, 150), width=2 if chosen else 1)
        text = f"{value:.3f}" if value is not None else "no face"
        if image.score.memorised:
            text += " (memorised?)"
        draw.rectangle([0, cell - SCORE_BAND, cell, cell], fill=(0, 0, 0))
        draw.text((4, cell - SCORE_BAND + 1), text, fill=colour, font=font)
    else:
        draw.text((4, NAME_BAND + 2), "unreadable", fill=(230, 80, 80), font=font)
        small_font, reason = fonts.draw_font(_reason(image) if image.error else "could not be read again for the sheet", small_size)
        line_height = small_size + 3
        top = NAME_BAND + size + 8
        for i, line in enumerate(wrap_text(draw, reason, small_font, cell - 8, max(1, (cell - top - 2) // line_height))):
            draw.text((4, top + i * line_height), line, fill=(200, 200, 200), font=small_font)
    return canvas


def draw_people(draw: ImageDraw.ImageDraw, image: ScoredImage, run: ScoreRun, scale: float, offset: tuple[int, int], size: int = 10) -> None:
    """Each face boxed in its person's colour with the name above it (grey and unnamed when it
    matches nobody; ``+`` between names for a blend). ``scale``: source px -> drawing px."""
    from .people import NOBODY_COLOUR, person_colour

    assigned = {p.face_index: name for name, p in image.people.people.items() if p.found}
    again = {f: name for name, p in image.people.people.items() for f in p.also_faces}  # one person's face twice
    blends = {f.index: f.accepted_by for f in image.people.faces if f.blend}
    for index, face in enumerate(image.result.faces):
        box = [face.box[0] * scale + offset[0], face.box[1] * scale + offset[1], face.box[2] * scale + offset[0], face.box[3] * scale + offset[1]]
        name = assigned.get(index, again.get(index))
        colour = person_colour(run.people.index(name)) if name is not None else NOBODY_COLOUR
        draw.rectangle(box, outline=colour, width=2 if index in assigned else 1)
        label = "+".join(blends[index]) if index in blends else (f"{name} again" if index in again and index not in assigned else name)
        if label:
            label_font, label = fonts.draw_font(label, size)
            draw.text((box[0], max(0, box[1] - size - 2)), label, fill=colour, font=label_font)


def people_line(draw: ImageDraw.ImageDraw, image: ScoredImage, run: ScoreRun, xy: tuple[float, float], width: int, size: int = 11) -> None:
    """``dad 0.61  mum –`` in the people's colours (expected people only; ``blend!`` when faces blended)."""
    from .people import person_colour

    x, y = xy
    parts = [(name, p) for name, p in image.people.people.items() if p.expected or p.found]
    for name, person in parts:
        text = f"{name} {person.score:.2f}" if person.found else f"{name} –"
        font, text = fonts.draw_font(text, size)
        if x + _text_width(draw, text, font) > xy[0] + width:
            break
        draw.text((x, y), text, fill=person_colour(run.people.index(name)) if person.found else (120, 120, 120), font=font)
        x += _text_width(draw, text + "  ", font)
    if image.people.blended and x < xy[0] + width - 20:
        font, text = fonts.draw_font("blend!", size)
        draw.text((x, y), text, fill=(230, 80, 80), font=font)


def contact_sheet(run: ScoreRun, cell: int = 160, columns: int = 8, per_group: int = 64) -> Image.Image:
    """One block per group (in group order): a header with its statistics, then its images."""
    by_group: dict[str, list[ScoredImage]] = {}
    for image in run.images:
        by_group.setdefault(image.group, []).append(image)
    blocks: list[Image.Image] = []
    width = columns * cell
    for group in run.groups:
        members = by_group.get(group.label, [])[:per_group]
        rows = max(1, math.ceil(len(members) / columns))
        block = Image.new("RGB", (width, 26 + rows * cell), (16, 16, 16))
        draw = ImageDraw.Draw(block)
        stats = f"mean {format_value(group.mean)}  min {format_value(group.min)}  max {format_value(group.max)}  faces {group.n_faces}/{group.n_images}"
        if group.label in run.people_groups:
            stats = people_header(run.people_groups[group.label])
        header_font, header = fonts.draw_font(f"{group.label}    {stats}", 15)
        draw.text((6, 4), header, fill=(235, 235, 235), font=header_font)
        for i, image in enumerate(members):
            block.paste(annotate_thumbnail(image, run, cell), ((i % columns) * cell, 26 + (i // columns) * cell))
        blocks.append(block)
    height = sum(b.height for b in blocks) or cell
    sheet = Image.new("RGB", (width, height), (16, 16, 16))
    y = 0
    for block in blocks:
        sheet.paste(block, (0, y))
        y += block.height
    return sheet


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def own_outputs(out_dir: Path) -> list[Path]:
    """What a scan of the images must leave out so that a report in ``out_dir`` is never scored
    itself: the folder, its ``previous/`` reports, and the report files (when ``out_dir`` is the
    image folder, the folder itself cannot be left out)."""
    out_dir = Path(out_dir)
    return [out_dir, out_dir / PREVIOUS, *(out_dir / name for name in REPORT_FILES)]


def write_report(run: ScoreRun, out_dir: Path, plot: bool = True, sheet: bool = True) -> dict[str, Path]:
    """Write every report file into ``out_dir``; returns ``{file name: path}``.

    Raises:
        lora_likeness.outputs.OutputError: ``out_dir`` cannot be written, or another run is writing to it.
    """
    with ReportFolder(out_dir, REPORT_FILES) as report:
        return write_report_into(run, report, plot=plot, sheet=sheet)


def write_report_into(run: ScoreRun, report: ReportFolder, plot: bool = True, sheet: bool = True) -> dict[str, Path]:
    """:func:`write_report` into a :class:`ReportFolder` the caller already holds (the CLI locks
    ``--out`` before the analysis, so that a second run is refused at once, not after it)."""
    if report.previous is not None:
        run.warnings.append(f"the earlier report in {report.folder} was moved to {report.previous}")
    files: dict[str, Path] = {}
    if plot:
        write_bytes_atomic(report.path("scores.png"), plot_png(run))
        files["scores.png"] = report.final("scores.png")
    if plot and run.verdict is not None:  # groups are checkpoints or steps: the sweep's identity curve
        from .sweep.report import curves_png  # imported here: the sweep's report imports this module

        write_bytes_atomic(report.path("curves.png"), curves_png(run.verdict.recommendation))
        files["curves.png"] = report.final("curves.png")
    if sheet and run.images:
        save_png_atomic(contact_sheet(run), report.path("contact_sheet.png"), optimize=False)
        files["contact_sheet.png"] = report.final("contact_sheet.png")
    for name, text in (("scores.csv", scores_csv(run)), ("summary.csv", summary_csv(run))):
        write_text_atomic(report.path(name), text)
        files[name] = report.final(name)
    files["report.md"] = report.final("report.md")
    files["report.json"] = report.final("report.json")
    write_text_atomic(report.path("report.md"), report_markdown(run, files))
    write_text_atomic(report.path("report.json"), report_json(run))
    report.commit()
    return files
