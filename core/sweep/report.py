"""The sweep's report: a scored grid, curves, a heatmap, a trade-off plot, CSV/JSON and one HTML page.

Everything here reads a finished sweep (:class:`~.results.SweepImage` records and the
:class:`~..recommend.Recommendation` made from them) and draws it; nothing is recomputed, so the
pictures, tables and the headline always agree. Pillow and matplotlib (Agg) only.

Files written by :func:`write_sweep_report` into the sweep's output folder:

- ``report.html``: one self-contained page (every picture embedded as a ``data:`` URI, inline CSS,
  no script, no external resource) with the headline, warnings, the cell table, the plots, the grid,
  then the settings (folded) and small thumbnails of every image.
- ``grid.jpg``: checkpoints (rows, epoch order) × strengths (columns), the no-LoRA baseline in a
  row of its own on top, the recommended cell framed in blue.
- ``curves.png``: identity vs epoch, one line per strength with its CI band, the floor (no LoRA)
  and ceiling (reference photos) as lines; below it the no-face rate.
- ``people_curves.png`` (a family sweep, ``--people``): each person's identity vs epoch with its CI
  band, per strength; below it each person's presence rate, the all-present and the blend rate.
- ``heatmap.png``: mean identity per checkpoint × strength.
- ``trade_off.png``: identity vs CLIP prompt adherence, only when adherence was measured.
- ``cells.csv`` (one row per cell, :meth:`Recommendation.table`, plus per-person columns in a family
  sweep), ``images.csv`` (one row per image),
  ``recommendation.json`` and ``recommendation.txt``.

A report set already in the folder is moved to ``previous/<time>/`` first (as ``likeness score``
does): re-running a sweep never overwrites what an earlier run wrote.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..grid import GridCell, draw_score, font, format_score, scored_grid
from ..images import write_bytes_atomic, write_text_atomic
from ..outputs import ReportFolder
from ..recommend import NO_LORA, CellResult, Recommendation
from ..tables import csv_text
from .results import SweepImage

#: The files of one sweep report; an earlier set of these is moved to ``previous/<time>/``.
SWEEP_REPORT_FILES = (
    "report.html", "grid.jpg", "curves.png", "heatmap.png", "trade_off.png", "cells.csv", "images.csv",
    "recommendation.json", "recommendation.txt", "people.json", "people_curves.png",
)
#: The files of :data:`SWEEP_REPORT_FILES` only a family sweep (several people) writes.
PEOPLE_REPORT_FILES = ("people.json", "people_curves.png")
IMAGE_COLUMNS = (
    "path", "checkpoint", "epoch", "strength", "seed", "prompt_index", "score", "memorised", "adherence", "box", "error",
)
#: Columns of ``cells.csv`` when the recommendation has no cells to take them from.
CELL_COLUMNS = (
    "label", "checkpoint", "strength", "epoch", "n", "faces", "no_face_rate", "mean", "ci_low", "ci_high",
    "median", "min", "max", "memorised", "adherence", "eligible", "rank",
)

#: Longest side of one grid image in px (made smaller for big sweeps, see :data:`GRID_MAX_SIDE`).
GRID_CELL = 256
#: The grid's width and height stay below about this many px (a JPEG allows 65535; viewers choke sooner).
GRID_MAX_SIDE = 8000
#: Images shown side by side in one grid cell; the rest are counted in the cell's last badge.
GRID_PER_CELL = 4
#: Longest side of the per-image thumbnails embedded in the HTML page, px.
THUMB_SIZE = 192
#: Frame of the recommended cell: blue, off the red → amber → green score scale.
MARK = (30, 110, 255)

Loader = Callable[[Path], Image.Image]


def open_image(path: Path) -> Image.Image:
    """The image at ``path`` as RGB, decoded in full (boxes are in its pixels)."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _strength_text(strength: float | None) -> str:
    return NO_LORA if strength is None else f"strength {strength:g}"


def _checkpoint_axis(results: Sequence[CellResult]) -> list[tuple[str, int | None]]:
    """The LoRA checkpoints as ``(label, epoch)``, in ``order`` (first seen breaks ties)."""
    seen: dict[str, tuple[int, int, int | None]] = {}
    for i, result in enumerate(results):
        cell = result.cell
        if not cell.is_baseline and cell.checkpoint not in seen:
            seen[cell.checkpoint] = (cell.order, i, cell.epoch)
    return [(name, seen[name][2]) for name in sorted(seen, key=seen.__getitem__)]


def _strength_axis(results: Sequence[CellResult]) -> list[float]:
    return sorted({float(r.cell.strength) for r in results if not r.cell.is_baseline})


def _rows_by_cell(recommendation: Recommendation) -> dict[int, dict]:
    """``id(CellResult) -> table row`` (:meth:`Recommendation.table` is in ``cells`` order)."""
    return {id(result): row for result, row in zip(recommendation.cells, recommendation.table())}


def _is_best(recommendation: Recommendation, result: CellResult) -> bool:
    best = recommendation.best
    return best is not None and result is best


def _number(value) -> float:
    """A table value as a float, NaN for missing (matplotlib leaves gaps at NaN)."""
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _drawable(text: str, face) -> str:
    """``text`` as the font can draw it: Pillow's built-in bitmap fallback knows Latin-1 only."""
    if isinstance(face, ImageFont.FreeTypeFont):
        return text
    for wide, narrow in (("—", "-"), ("–", "-"), ("★", "*"), ("·", "-"), ("×", "x")):
        text = text.replace(wide, narrow)
    return text.encode("latin-1", "replace").decode("latin-1")


def _wrap(draw: ImageDraw.ImageDraw, text: str, face, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` px wide (a longer word stays whole)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        left, _, right, _ = draw.textbbox((0, 0), candidate, font=face)
        if line and right - left > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines or [""]


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _new_figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


# --------------------------------------------------------------------------------------------
# The scored grid
# --------------------------------------------------------------------------------------------


def _fit(picture: Image.Image, size: int) -> tuple[Image.Image, float]:
    """``picture`` resized so that its longest side is exactly ``size`` px, and the factor used.

    Exactly ``size``: :func:`~..grid.scored_grid` then pastes it unchanged, frame pixels included."""
    factor = size / max(picture.size)
    target = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    if target == picture.size:
        return picture.convert("RGB"), 1.0
    return picture.convert("RGB").resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0), factor


def _placeholder(size: int, text: str) -> Image.Image:
    tile = Image.new("RGB", (size, size), (70, 70, 70))
    face = font(max(10, size // 12))
    ImageDraw.Draw(tile).text((size // 16, size // 16), _drawable(text, face), fill=(235, 120, 100), font=face)
    return tile


def _load_fitted(image: SweepImage, load: Loader, size: int) -> tuple[Image.Image, list[float] | None, str | None]:
    """The image fitted to ``size`` px, its face box in the fitted pixels, and an error (or ``None``)."""
    try:
        picture = load(Path(image.path))
    except Exception as exc:  # noqa: BLE001 - one unreadable image must not lose the whole report
        return _placeholder(size, "unreadable"), None, f"{image.path}: {exc}"
    fitted, factor = _fit(picture, size)
    box = [float(v) * factor for v in image.box] if image.box is not None else None
    return fitted, box, None


def _frame(picture: Image.Image, colour=MARK) -> Image.Image:
    """A copy with a frame drawn just inside its edges (a 1/24 of the short side, at least 3 px)."""
    framed = picture.copy()
    width = max(3, min(framed.size) // 24)
    ImageDraw.Draw(framed).rectangle([0, 0, framed.width - 1, framed.height - 1], outline=colour, width=width)
    return framed


def _grid_rows(images: Sequence[SweepImage]) -> list[str]:
    """Row labels: the baseline first, then the checkpoints by ``order`` (first seen breaks ties)."""
    seen: dict[str, tuple[int, int]] = {}
    for i, image in enumerate(images):
        label = NO_LORA if image.strength is None else image.checkpoint
        if label not in seen:
            seen[label] = (-1 if image.strength is None else image.order, i)
        elif image.strength is None:
            seen[label] = (-1, seen[label][1])
    return sorted(seen, key=lambda name: (name != NO_LORA, seen[name]))


def _shown(members: list[SweepImage], keys: list, limit: int) -> list[SweepImage]:
    """Up to ``limit`` images of one cell: the common pairing ``keys`` first, so every cell shows
    the same seeds and prompts (their badges compare image by image), then any others."""
    members = sorted(members, key=lambda im: (im.prompt_index, im.seed))
    wanted = set(keys)
    first = [im for im in members if im.key in wanted]
    rest = [im for im in members if im.key not in wanted]
    return (first + rest)[:limit]


def sweep_grid(
    images: Sequence[SweepImage],
    recommendation: Recommendation | None,
    load: Loader | None = None,
    cell_size: int | None = None,
    per_cell: int = GRID_PER_CELL,
) -> Image.Image:
    """The scored grid of a sweep: checkpoints (rows) × strengths (columns).

    Rows follow ``order`` (the epoch axis). The no-LoRA baseline is a row of its own on top, above
    the column headers and in no column: it has no strength, and putting its images into the
    strength columns would mix the floor into those columns' means (the headers read
    ``strength 0.8 · mean``) and repeat the same pictures in every column; a column of its own
    would leave the rest of its row and of its column blank. Images of different seeds and prompts sit side by
    side in a cell, at most ``per_cell`` of them (the same seeds and prompts in every cell; the
    last badge counts the rest, e.g. ``+4``): the header means are over the images shown, the
    report's table over all. The recommended cell's images are framed in blue and the headline is
    printed above the grid.

    Args:
        images: the sweep's images (their ``path`` is read with ``load``).
        recommendation: what :func:`~..recommend.recommend` made of them (``None``: no frame, no headline).
        load: ``path -> PIL.Image`` in the pixels ``box`` refers to (default: open the file).
        cell_size: longest side of each image in px (default :data:`GRID_CELL`, smaller when the grid
            would pass :data:`GRID_MAX_SIDE`).
        per_cell: at most this many images side by side in one cell.

    Returns:
        An RGB image. Memory stays bounded: each image is reduced to ``cell_size`` as soon as it is read.
    """
    if not images:
        raise ValueError("no sweep images to put in a grid")
    if per_cell < 1:
        raise ValueError(f"per_cell must be at least 1, not {per_cell!r}")
    load = load or open_image
    rows = _grid_rows(images)
    strengths = sorted({float(im.strength) for im in images if im.strength is not None})
    columns = [_strength_text(s) for s in strengths]
    by_cell: dict[tuple[str, str], list[SweepImage]] = {}
    for image in images:
        row = NO_LORA if image.strength is None else image.checkpoint
        by_cell.setdefault((row, _strength_text(image.strength)), []).append(image)
    keys = sorted({im.key for im in images}, key=lambda key: (key[1], key[0]))[:per_cell]
    shown_per_cell = max(min(len(members), per_cell) for members in by_cell.values())
    size = cell_size or max(64, min(GRID_CELL, GRID_MAX_SIDE // max(len(columns) * shown_per_cell, len(rows))))

    best = recommendation.best.cell if recommendation is not None and recommendation.best is not None else None
    best_cell = (best.checkpoint, _strength_text(best.strength)) if best is not None else None
    cells: list[GridCell] = []
    problems: list[str] = []
    for row in rows:
        for column in [NO_LORA] if row == NO_LORA else columns:  # the baseline is in no strength column
            members = by_cell.get((row, column), [])
            shown = _shown(members, keys, per_cell)
            for k, image in enumerate(shown):
                fitted, box, problem = _load_fitted(image, load, size)
                if problem:
                    problems.append(problem)
                if (row, column) == best_cell:
                    fitted = _frame(fitted)
                notes = []
                if image.memorised:
                    notes.append("memorised?")
                if k == len(shown) - 1 and len(members) > len(shown):
                    notes.append(f"+{len(members) - len(shown)}")
                cells.append(GridCell(fitted, row, column, image.score, box=box, note=" ".join(notes) or None))
    ceiling = recommendation.ceiling if recommendation is not None else None
    grid = scored_grid(cells, rows=rows, columns=columns, baseline=ceiling, cell_size=size, span_rows=[NO_LORA])
    return _titled(grid, recommendation, size, problems, shown_per_cell, max(len(m) for m in by_cell.values()))


def _titled(grid: Image.Image, recommendation: Recommendation | None, size: int, problems: list[str], shown: int, most: int) -> Image.Image:
    """``grid`` under a band with the headline (wrapped) and a line saying how to read the frame."""
    face = font(max(12, min(30, size // 11)))
    small = font(max(11, min(24, size // 14)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(grid.width, 480)
    pad = max(4, size // 32)
    headline = recommendation.headline() if recommendation is not None else "Likeness sweep"
    lines = [(line, face, (0, 0, 0)) for line in _wrap(measure, _drawable(headline, face), face, width - 2 * pad)]
    notes = []
    if recommendation is not None and recommendation.best is not None:
        notes.append(f"Blue frame: the recommended cell ({recommendation.best.cell.label}).")
    if most > shown:
        notes.append(f"Up to {shown} of {most} images per cell shown (same seeds and prompts in every cell); header means are over the shown images.")
    if problems:
        notes.append(f"{len(problems)} image(s) could not be read.")
    for note in notes:
        lines += [(line, small, (70, 70, 70)) for line in _wrap(measure, _drawable(note, small), small, width - 2 * pad)]
    heights = [measure.textbbox((0, 0), "Ag", font=f)[3] + pad for _, f, _ in lines]
    band = sum(heights) + 2 * pad
    canvas = Image.new("RGB", (width, band + grid.height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = pad
    for (text, f, colour), height in zip(lines, heights):
        draw.text((pad, y), text, fill=colour, font=f)
        y += height
    canvas.paste(grid, (0, band))
    return canvas


def grid_jpeg(grid: Image.Image, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    grid.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _x_positions(axis: list[tuple[str, int | None]]) -> tuple[list[float], str]:
    """Epoch numbers when every checkpoint has a distinct one, else 0, 1, …"""
    epochs = [epoch for _, epoch in axis]
    if axis and all(e is not None for e in epochs) and len(set(epochs)) == len(epochs):
        return [float(e) for e in epochs], "epoch"
    return [float(i) for i in range(len(axis))], "checkpoint"


def curves_png(recommendation: Recommendation) -> bytes:
    """Identity vs epoch, one line per strength with its CI band (the table's ``ci_low``–``ci_high``),
    the floor (no LoRA) and ceiling (reference photos) as horizontal lines and the recommended point
    as a star; below, the no-face rate per strength (a rise with training is a warning sign).

    Cells that cannot be recommended are crossed out. Missing values leave gaps. Returns PNG bytes."""
    results = list(recommendation.cells)
    rows = _rows_by_cell(recommendation)
    axis = _checkpoint_axis(results)
    strengths = _strength_axis(results)
    xs, x_name = _x_positions(axis)
    where = {name: i for i, (name, _) in enumerate(axis)}
    figure = _new_figure(max(6.5, 0.7 * len(axis) + 4.0), 6.4)
    grid_spec = figure.add_gridspec(2, 1, height_ratios=(3.0, 1.2), hspace=0.08)
    top = figure.add_subplot(grid_spec[0])
    bottom = figure.add_subplot(grid_spec[1], sharex=top)
    colours = [f"C{i % 10}" for i in range(len(strengths))]
    crossed_x, crossed_y = [], []
    for strength, colour in zip(strengths, colours):
        means = np.full(len(axis), np.nan)
        lows, highs, rates = means.copy(), means.copy(), means.copy()
        for result in results:
            cell = result.cell
            if cell.is_baseline or float(cell.strength) != strength:
                continue
            i, row = where[cell.checkpoint], rows[id(result)]
            means[i], lows[i], highs[i] = _number(row.get("mean")), _number(row.get("ci_low")), _number(row.get("ci_high"))
            rates[i] = _number(row.get("no_face_rate")) * 100.0
            if not result.eligible and not math.isnan(means[i]):
                crossed_x.append(xs[i])
                crossed_y.append(means[i])
        label = f"strength {strength:g}"
        top.plot(xs, means, "o-", color=colour, label=label, zorder=3)
        if np.isfinite(lows).any():
            top.fill_between(xs, lows, highs, color=colour, alpha=0.15, linewidth=0, zorder=1)
        bottom.plot(xs, rates, "o-", color=colour, markersize=4, label=label)
    if crossed_x:
        top.scatter(crossed_x, crossed_y, marker="x", s=90, color="tab:red", zorder=4, label="cannot be recommended")
    baseline = next((r for r in results if r.cell.is_baseline), None)
    if recommendation.floor is not None:
        top.axhline(recommendation.floor, color="0.35", linestyle="--", label=f"no LoRA (floor) {recommendation.floor:.3f}")
    if recommendation.ceiling is not None:
        top.axhline(recommendation.ceiling, color="tab:green", linestyle="--", label=f"reference photos (ceiling) {recommendation.ceiling:.3f}")
    if baseline is not None and baseline.stats.no_face_rate is not None:
        bottom.axhline(baseline.stats.no_face_rate * 100.0, color="0.35", linestyle="--", label=NO_LORA)
    best = recommendation.best
    if best is not None and not best.cell.is_baseline and best.mean is not None and best.cell.checkpoint in where:
        top.scatter([xs[where[best.cell.checkpoint]]], [best.mean], marker="*", s=320, color="gold", edgecolors="black",
                    zorder=5, label=f"recommended: {best.cell.label}")
    empty = _empty_identity_reason(results)
    if empty is not None:  # an empty panel alone reads like a broken plot: say why it is empty
        top.text(0.5, 0.5, empty, transform=top.transAxes, ha="center", va="center", color="0.25", fontsize=9,
                 bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"}, zorder=6)
        if not any(math.isfinite(_number(r.mean)) for r in results):
            top.set_ylim(0.0, 1.0)
    elif not axis:
        top.text(0.5, 0.5, "no LoRA cells", transform=top.transAxes, ha="center", va="center", color="0.4")
    level = getattr(recommendation, "level", 0.95)
    top.set_ylabel("identity (mean cosine similarity)")
    top.set_title(f"Identity by {x_name}, {level * 100:g}% CI bands")
    top.grid(alpha=0.3)
    top.tick_params(labelbottom=False)
    if top.get_legend_handles_labels()[0]:
        top.legend(fontsize=8, loc="best")
    bottom.set_ylabel("no face %")
    bottom.set_ylim(-5, 105)
    bottom.grid(alpha=0.3)
    bottom.set_xlabel(x_name)
    if axis:
        bottom.set_xticks(xs)
        labels = [name for name, _ in axis]
        long = max(len(name) for name in labels) > 6 and len(labels) > 3
        bottom.set_xticklabels(labels, rotation=30 if long else 0, ha="right" if long else "center", fontsize=8)
        if len(xs) == 1:  # a single checkpoint: give the point some room
            bottom.set_xlim(xs[0] - 1, xs[0] + 1)
    figure.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=0.14 if axis else 0.1)
    return _figure_png(figure)


def _empty_identity_reason(results: Sequence[CellResult]) -> str | None:
    """Why the identity panel has no LoRA point at all (lines wrapped for the panel), or ``None`` when it has one."""
    import textwrap

    lora = [r for r in results if not r.cell.is_baseline]
    if not lora or any(math.isfinite(_number(r.mean)) for r in lora):
        return None
    images = sum(r.stats.n_images for r in results)
    unreadable = sum(r.stats.n_errors for r in results)
    if images and unreadable == images:
        reason = (f"no image could be read: all {images} images failed to open, so there is no identity to plot "
                  f"(images.csv gives each file's error).")
    elif not any(r.stats.n_faces for r in results):
        reason = (f"no face was found in any image: the face detector found none in the {images - unreadable} images, "
                  f"so there is no identity to plot. Look at the grid: noise (a random or broken base model), faces "
                  f"too small to detect or a prompt without a person all end here.")
    else:
        reason = ("no face was found in any image made with a LoRA (only in the no-LoRA baseline), so there is no "
                  "LoRA identity to plot. Look at the grid: a LoRA that distorts faces, or too high a strength, ends here.")
    return "\n".join(textwrap.wrap(reason, 60))


def heatmap_png(recommendation: Recommendation) -> bytes:
    """Mean identity per checkpoint (rows, epoch order) × strength (columns), the value written in
    each cell; cells that cannot be recommended hatched, combinations without images grey, the
    recommended cell outlined. Floor and ceiling are in the title and on the colour bar. PNG bytes."""
    import matplotlib
    from matplotlib.patches import Rectangle

    results = list(recommendation.cells)
    rows = _rows_by_cell(recommendation)
    axis = _checkpoint_axis(results)
    strengths = _strength_axis(results)
    n_rows, n_columns = max(1, len(axis)), max(1, len(strengths))
    values = np.full((n_rows, n_columns), np.nan)
    placed: dict[tuple[int, int], CellResult] = {}
    where = {name: i for i, (name, _) in enumerate(axis)}
    column_of = {s: j for j, s in enumerate(strengths)}
    for result in results:
        if result.cell.is_baseline:
            continue
        i, j = where[result.cell.checkpoint], column_of[float(result.cell.strength)]
        placed[(i, j)] = result
        values[i, j] = _number(rows[id(result)].get("mean"))
    figure = _new_figure(min(16.0, 2.6 + 1.25 * n_columns), min(14.0, 1.9 + 0.55 * n_rows))
    axes = figure.add_subplot(1, 1, 1)
    colormap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-6:
        low, high = low - 0.05, high + 0.05
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colormap, vmin=low, vmax=high, aspect="auto", interpolation="nearest")
    bar = figure.colorbar(image, ax=axes, fraction=0.05, pad=0.03)
    bar.set_label("mean identity")
    _mark_floor_and_ceiling(bar, recommendation, low, high)
    for i in range(n_rows):
        for j in range(n_columns):
            result = placed.get((i, j))
            if result is None:
                axes.text(j, i, "–", ha="center", va="center", color="0.3", fontsize=9)
                continue
            row = rows[id(result)]
            mean = _number(row.get("mean"))
            rate = _number(row.get("no_face_rate"))
            text = "no face" if math.isnan(mean) else f"{mean:.3f}"
            if not math.isnan(rate) and rate > 0:
                text += f"\nno face {rate:.0%}"
            if not result.eligible:
                axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.45", linewidth=0))
            shade = colormap((mean - low) / (high - low)) if not math.isnan(mean) else (0.88, 0.88, 0.88, 1.0)
            light = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.55
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if light else "white")
            if _is_best(recommendation, result):
                axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3.5))
    axes.set_xticks(range(n_columns))
    axes.set_xticklabels([f"{s:g}" for s in strengths] or [""])
    axes.set_yticks(range(n_rows))
    axes.set_yticklabels([name for name, _ in axis] or [""])
    axes.set_xlabel("LoRA strength")
    axes.set_ylabel("checkpoint")
    context = []
    if recommendation.floor is not None:
        context.append(f"floor (no LoRA) {recommendation.floor:.3f}")
    if recommendation.ceiling is not None:
        context.append(f"ceiling {recommendation.ceiling:.3f}")
    # Over the whole figure, not the heatmap's axes: a long title there ran into the colour bar's top number.
    figure.suptitle("Mean identity per cell" + (f"\n{', '.join(context)}" if context else ""), fontsize=10)
    figure.tight_layout()
    return _figure_png(figure)


def _mark_floor_and_ceiling(bar, recommendation: Recommendation, low: float, high: float) -> None:
    """Floor and ceiling as lines across the colour bar, named by tick labels of their own
    (``ceiling 0.600``); the regular ticks too close to them are left out so no two labels overlap.
    Only values inside the colour range ``low``–``high`` are marked (the title gives both anyway)."""
    marks = [(value, name, colour) for value, name, colour in
             ((recommendation.floor, "floor", "0.2"), (recommendation.ceiling, "ceiling", "tab:green"))
             if value is not None and low <= value <= high]
    if not marks:
        return
    # A tick label is about 0.17 in tall; the bar is the figure's height less the title and the x axis.
    bar_height = max(0.6, bar.ax.figure.get_figheight() - 1.5)
    clearance = min(0.5, 0.2 / bar_height) * (high - low)
    if len(marks) == 2 and abs(marks[0][0] - marks[1][0]) < 2 * clearance:  # one label of two lines for both
        middle = (marks[0][0] + marks[1][0]) / 2
        labels = {middle: ("\n".join(f"{n} {v:.3f}" for v, n, _ in sorted(marks, reverse=True)), marks[1][2])}
    else:
        labels = {value: (f"{name} {value:.3f}", colour) for value, name, colour in marks}
    for value, _, colour in marks:
        bar.ax.axhline(value, color=colour, linewidth=2)
    regular = [t for t in bar.get_ticks() if low <= t <= high
               and all(abs(t - v) >= clearance * (1 + text.count("\n")) for v, (text, _) in labels.items())]
    formatter = bar.ax.yaxis.get_major_formatter()
    texts = dict(zip(regular, formatter.format_ticks(regular))) if regular else {}
    ticks = sorted([*regular, *labels])
    bar.set_ticks(ticks, labels=[labels[t][0] if t in labels else texts[t] for t in ticks])
    for tick, label in zip(ticks, bar.ax.get_yticklabels()):
        if tick in labels:
            label.set_color(labels[tick][1])


def trade_off_png(recommendation: Recommendation) -> bytes | None:
    """Identity (mean) vs CLIP prompt adherence per cell with the Pareto front
    (``recommendation.trade_off``); ``None`` when no cell has an adherence score. PNG bytes."""
    results = [r for r in recommendation.cells if r.adherence is not None and r.mean is not None]
    if not results:
        return None
    figure = _new_figure(7.2, 5.2)
    axes = figure.add_subplot(1, 1, 1)
    strengths = _strength_axis(results)
    colour_of = {s: f"C{i % 10}" for i, s in enumerate(strengths)}
    labelled = set()
    for result in results:
        cell = result.cell
        if cell.is_baseline:
            colour, marker, label = "0.35", "s", NO_LORA
        else:
            colour, marker, label = colour_of[float(cell.strength)], "o", f"strength {cell.strength:g}"
        hollow = not result.eligible and not cell.is_baseline
        axes.scatter([result.adherence], [result.mean], marker=marker, s=46,
                     facecolors="none" if hollow else colour, edgecolors=colour, zorder=3,
                     label=None if label in labelled else label)
        labelled.add(label)
        axes.annotate(cell.label, (result.adherence, result.mean), xytext=(4, 3), textcoords="offset points", fontsize=7, color="0.25")
    front = sorted(getattr(recommendation, "trade_off", None) or [], key=lambda r: r.adherence)
    if len(front) >= 1:
        axes.plot([r.adherence for r in front], [r.mean for r in front], "-", color="tab:purple", linewidth=1.5, alpha=0.7,
                  zorder=2, label="trade-off front (best identity for its adherence)")
    best = recommendation.best
    if best is not None and best.adherence is not None and best.mean is not None:
        axes.scatter([best.adherence], [best.mean], marker="*", s=320, color="gold", edgecolors="black", zorder=5,
                     label=f"recommended: {best.cell.label}")
    if recommendation.ceiling is not None:
        axes.axhline(recommendation.ceiling, color="tab:green", linestyle="--", linewidth=1, label="reference photos (ceiling)")
    axes.set_xlabel("prompt adherence (mean CLIP image-text cosine)")
    axes.set_ylabel("identity (mean cosine similarity)")
    axes.set_title("Identity vs prompt adherence (hollow: cannot be recommended)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return _figure_png(figure)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _people_axis(people) -> list[tuple[str, int | None]]:
    """The LoRA checkpoints of a :class:`~..people_sweep.PeopleRecommendation` as ``(label, epoch)``, in ``order``."""
    seen: dict[str, tuple[int, int, int | None]] = {}
    for i, result in enumerate(people.results):
        cell = result.cell
        if cell.strength is not None and cell.checkpoint not in seen:
            seen[cell.checkpoint] = (cell.order, i, cell.epoch)
    return [(name, seen[name][2]) for name in sorted(seen, key=seen.__getitem__)]


def people_curves_png(people) -> bytes:
    """Per-person curves of a family sweep (``people``: a :class:`~..people_sweep.PeopleRecommendation`):
    one column of panels per strength. Top: each person's mean identity vs epoch in their colour, with
    its 95% CI band, and their no-LoRA mean as a dashed line; the recommended cell starred. Bottom:
    each person's presence rate (share of the images expecting them where they were found), the
    all-present rate (black) and the blend rate (red, dashed), in %. Missing values leave gaps. PNG bytes."""
    from ..people import person_colour

    names = list(people.results[0].stats.people) if people.results else []
    axis = _people_axis(people)
    xs, x_name = _x_positions(axis)
    where = {name: i for i, (name, _) in enumerate(axis)}
    strengths = sorted({float(r.cell.strength) for r in people.results if r.cell.strength is not None}) or [None]
    floor = next((r for r in people.results if r.cell.strength is None), None)
    figure = _new_figure(max(6.5, len(strengths) * (0.6 * len(axis) + 3.5)), 6.6)
    grid_spec = figure.add_gridspec(2, len(strengths), height_ratios=(3.0, 1.6), hspace=0.1, wspace=0.18)
    top_first = None
    for column, strength in enumerate(strengths):
        top = figure.add_subplot(grid_spec[0, column], sharey=top_first)
        bottom = figure.add_subplot(grid_spec[1, column], sharex=top)
        top_first = top_first or top
        series = {r.cell.checkpoint: r for r in people.results if r.cell.strength is not None and float(r.cell.strength) == strength}
        for p, name in enumerate(names):
            colour = tuple(c / 255.0 for c in person_colour(p))
            means, lows, highs, presence = (np.full(len(axis), np.nan) for _ in range(4))
            for checkpoint, result in series.items():
                stats, i = result.stats.people[name], where[checkpoint]
                means[i] = _number(stats.mean)
                if stats.ci95 is not None:
                    lows[i], highs[i] = stats.ci95
                presence[i] = _number(stats.presence_rate) * 100.0
            top.plot(xs, means, "o-", color=colour, label=name, zorder=3)
            if np.isfinite(lows).any():
                top.fill_between(xs, lows, highs, color=colour, alpha=0.15, linewidth=0, zorder=1)
            if floor is not None and floor.stats.people[name].mean is not None:
                top.axhline(floor.stats.people[name].mean, color=colour, linestyle="--", linewidth=1, alpha=0.8,
                            label=f"{name}, {NO_LORA}" if column == 0 else None)
            bottom.plot(xs, presence, "o-", color=colour, markersize=4, label=f"{name} present" if column == 0 else None)
        all_present, blend = np.full(len(axis), np.nan), np.full(len(axis), np.nan)
        for checkpoint, result in series.items():
            all_present[where[checkpoint]] = _number(result.stats.all_present_rate) * 100.0
            blend[where[checkpoint]] = _number(result.stats.blend_rate) * 100.0
        bottom.plot(xs, all_present, "s-", color="black", markersize=4, label="all present" if column == 0 else None)
        bottom.plot(xs, blend, "^--", color="tab:red", markersize=4, label="blended" if column == 0 else None)
        best = people.best
        if best is not None and best.cell.strength is not None and float(best.cell.strength) == strength:
            x = xs[where[best.cell.checkpoint]]
            ys = [best.stats.people[n].mean for n in names if best.stats.people[n].mean is not None]
            top.scatter([x] * len(ys), ys, marker="*", s=260, color="gold", edgecolors="black", zorder=5,
                        label=f"recommended: {best.cell.label}")
        top.set_title(_strength_text(strength) if strength is not None else "no LoRA cells", fontsize=10)
        top.grid(alpha=0.3)
        top.tick_params(labelbottom=False)
        bottom.set_ylim(-5, 105)
        bottom.grid(alpha=0.3)
        bottom.set_xlabel(x_name)
        if column == 0:
            top.set_ylabel("identity (mean cosine similarity)")
            bottom.set_ylabel("% of images")
            if bottom.get_legend_handles_labels()[0]:
                bottom.legend(fontsize=7, loc="best")
        if top.get_legend_handles_labels()[0]:
            top.legend(fontsize=7, loc="best")
        if axis:
            bottom.set_xticks(xs)
            bottom.set_xticklabels([name for name, _ in axis], rotation=30 if len(axis) > 3 else 0, fontsize=8,
                                   ha="right" if len(axis) > 3 else "center")
            if len(xs) == 1:
                bottom.set_xlim(xs[0] - 1, xs[0] + 1)
    figure.suptitle(f"Each person's identity by {x_name}, 95% CI bands; presence, all-present and blend rates", fontsize=11)
    figure.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.14)
    return _figure_png(figure)


def relative_path(path: Path | str, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX separators) when it lies inside it, else as given."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


def cells_csv(recommendation: Recommendation, people=None) -> str:
    """``cells.csv``: :meth:`Recommendation.table`, one row per cell in sweep order; with ``people`` (a
    :class:`~..people_sweep.PeopleRecommendation`) also each person's mean, 95% CI and presence rate and
    the cell's all-present rate, blend rate and worst-served person
    (:func:`~..people.people_columns`: ``dad_mean``, ``dad_ci95_low``, …, ``blend_rate``, ``worst_served``)."""
    table = recommendation.table()
    columns = list(table[0]) if table else list(CELL_COLUMNS)
    if people is None:
        return csv_text(columns, table)
    from ..people import people_columns, people_values

    names = list(people.results[0].stats.people) if people.results else []
    rows = []
    for result, row in zip(recommendation.cells, table):
        match = people.result_for(result.cell.checkpoint, None if result.cell.is_baseline else float(result.cell.strength))
        rows.append({**row, **people_values(match.stats if match is not None else None, names)})
    return csv_text(columns + people_columns(names), rows)


def image_rows(images: Sequence[SweepImage], root: Path) -> list[dict]:
    """One ``images.csv`` row per image; ``path`` relative to ``root``, ``box`` as ``x1 y1 x2 y2`` (image
    pixels), ``error`` why the image could not be scored (empty when it was)."""
    rows = []
    for image in images:
        rows.append({
            "path": relative_path(image.path, root),
            "checkpoint": NO_LORA if image.strength is None else image.checkpoint,
            "epoch": image.epoch,
            "strength": None if image.strength is None else float(image.strength),
            "seed": image.seed,
            "prompt_index": image.prompt_index,
            "score": None if image.score is None else float(image.score),
            "memorised": bool(image.memorised),
            "adherence": None if image.adherence is None else float(image.adherence),
            "box": None if image.box is None else " ".join(f"{float(v):.1f}" for v in image.box),
            "error": image.extra.get("error"),
        })
    return rows


def images_csv(images: Sequence[SweepImage], root: Path) -> str:
    return csv_text(IMAGE_COLUMNS, image_rows(images, root))


def _jsonable(value):
    """Settings as strict JSON: paths → strings, tuples → lists, non-finite floats → null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def recommendation_json(recommendation: Recommendation, settings: Mapping) -> str:
    """``recommendation.json``: :meth:`Recommendation.as_dict` plus the sweep's ``settings``."""
    data = dict(recommendation.as_dict())
    data["settings"] = _jsonable(settings)
    return json.dumps(_jsonable(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def recommendation_text(recommendation: Recommendation) -> str:
    """``recommendation.txt``: the headline, then the warnings as a list."""
    lines = [recommendation.headline()]
    if recommendation.warnings:
        lines += ["", "Warnings:", *[f"- {w}" for w in recommendation.warnings]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_STYLE = (
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;max-width:1400px;color:#1d1d1f}"
    "h1{margin:0 0 6px}h2{margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}h3{margin:16px 0 4px;font-size:15px}"
    ".headline{font-size:17px;font-weight:600;background:#eef4ff;border-left:5px solid #1e6eff;padding:8px 12px}"
    ".warn{color:#8a4b00}ul.warn{background:#fff6e5;padding:8px 12px 8px 30px;border-left:5px solid #f0a020}"
    "table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.best td{background:#eef4ff;font-weight:600}"
    "tr.out td{color:#777}img.plot{max-width:100%;height:auto;border:1px solid #eee}"
    ".thumbs{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;width:" + str(THUMB_SIZE) + "px}"
    "figure img{display:block;max-width:100%;height:auto}figcaption{font-size:11px;color:#444;overflow-wrap:anywhere}"
    "code{background:#f4f4f4;padding:0 3px}.muted{color:#666}summary{cursor:pointer;color:#1e6eff}"
    "ol{margin:0;padding-left:1.6em}"
)

# The settings a reader looks for first, in this order, with their names; others follow (see _setting_rows).
_SETTING_NAMES = (
    ("base", "base model"), ("loras", "LoRAs"), ("run", "training run"), ("refs", "reference photos"),
    ("prompts", "prompts"), ("prompt", "prompt"), ("negative", "negative prompt"), ("seeds", "seeds"),
    ("strengths", "strengths"), ("steps", "steps"), ("cfg", "CFG"), ("sampler", "sampler"), ("size", "size"),
    ("clip_skip", "CLIP skip"), ("face_model", "face model"), ("adherence", "prompt adherence"),
    ("checkpoints", "checkpoints"), ("max_no_face", "no-face limit"),
    ("baseline", "no-LoRA baseline"), ("images", "images"), ("out", "output folder"), ("device", "device"),
    ("precision", "precision"), ("batch_size", "batch size"), ("providers", "face model providers"),
    ("tokenizer", "tokenizer"), ("base_config", "base model config"),
)
# Paths and prompts: shown as code.
_CODE_SETTINGS = {"base", "loras", "refs", "out", "tokenizer", "base_config", "negative", "prompt", "pack"}


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _is_empty(value) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, set, Mapping)) and not value)


def _plain(value) -> str:
    """A setting's value as words: ``yes``/``no``, ``0.6, 1``, ``7``; HTML-escaped."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return _e(f"{float(value):g}")
    if isinstance(value, (list, tuple, set)):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{_e(str(k).replace('_', ' '))} {_plain(v)}" for k, v in value.items() if not _is_empty(v))
    return _e(value)


def _face_model_text(face_model, pack=None) -> str:
    """``buffalo_l (detector det_10g.onnx, embedder w600k_r50.onnx, 512-d embeddings)`` from
    :meth:`~..faces.FaceEngine.describe`, or the pack name alone."""
    if not isinstance(face_model, Mapping):
        return f"<code>{_e(face_model if not _is_empty(face_model) else pack)}</code>"
    details = []
    if face_model.get("detector"):
        details.append(f"detector {_e(Path(str(face_model['detector'])).name)}")
    if face_model.get("recognizer"):
        details.append(f"embedder {_e(Path(str(face_model['recognizer'])).name)}")
    if face_model.get("embedding_dim"):
        details.append(f"{_e(face_model['embedding_dim'])}-d embeddings")
    name = face_model.get("pack") or pack or "face model"
    text = f"<code>{_e(name)}</code>" + (f" ({', '.join(details)})" if details else "")
    if face_model.get("providers"):
        text += f", on {_plain(face_model['providers'])}"
    return text


def _adherence_text(settings: Mapping) -> str | None:
    """Prompt adherence as what happened: off, not measured (and why), or the CLIP model it used."""
    model = settings.get("clip_model")
    if not _is_empty(model):
        return f"measured with <code>{_e(model)}</code>"
    wanted = settings.get("adherence")
    if wanted is None:
        return None
    if not wanted:
        return "off"
    return "not measured: no CLIP model found"


def _setting_rows(settings: Mapping) -> list[tuple[str, str]]:
    """``(name, HTML value)`` rows of the sweep's settings as a person would write them: known keys
    named and in reading order, then any others under their own names; empty values left out or
    said in words; prompts numbered from 1; the face model as ``pack (detector, embedder, size)``."""
    settings = dict(settings)
    if "size" not in settings and settings.get("width") and settings.get("height"):
        settings["size"] = f"{settings['width']} × {settings['height']} px"
    if "size" in settings:
        settings.pop("width", None)
        settings.pop("height", None)
    done = {"width", "height", "clip", "clip_model", "pack", "references", "generated", "reused"}
    values: dict[str, str] = {}
    for key, value in settings.items():
        if key in done:
            continue
        if key in ("prompts", "prompt") and isinstance(value, (list, tuple)):
            if value:
                values[key] = "<ol>" + "".join(f"<li><code>{_e(p)}</code></li>" for p in value) + "</ol>"
        elif key == "negative":
            values[key] = f"<code>{_e(value)}</code>" if not _is_empty(value) else "none"
        elif key == "face_model":
            values[key] = _face_model_text(value, settings.get("pack"))
        elif key == "adherence":
            text = _adherence_text(settings)
            if text is not None:
                values[key] = text
        elif key == "max_no_face" and isinstance(value, (int, float)):
            values[key] = _e(f"{float(value):.0%} (a cell with more images without a face cannot be recommended)")
        elif key in _CODE_SETTINGS and not _is_empty(value):
            values[key] = f"<code>{_e(value)}</code>"
        elif not _is_empty(value):
            values[key] = _plain(value)
    if "face_model" not in values and not _is_empty(settings.get("pack")):
        values["face_model"] = _face_model_text(settings["pack"])
    if "adherence" not in values and _adherence_text(settings) is not None:
        values["adherence"] = _adherence_text(settings)
    if "refs" in values and settings.get("references") is not None:
        values["refs"] += f" ({_e(settings['references'])} used)"
    elif settings.get("references") is not None:
        values["references"] = _e(settings["references"])
    counts = [f"{settings[k]} {k}" for k in ("generated", "reused") if settings.get(k) is not None]
    if counts:
        values["images"] = _e(", ".join(counts))
    names = dict(_SETTING_NAMES, references="reference photos used")
    order = [k for k, _ in _SETTING_NAMES if k in values] + [k for k in values if k not in names or k == "references"]
    return [(names.get(k, k.replace("_", " ")), values[k]) for k in dict.fromkeys(order)]


def _settings_section(settings: Mapping) -> str:
    """The settings, folded (``<details>``): they come after the results, for whoever wants to check them."""
    rows = _setting_rows(settings)
    if not rows:
        return "<p class='muted'>No settings recorded.</p>"
    table = "".join(f"<tr><th>{_e(name)}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<details><summary>Show the {len(rows)} settings of this sweep</summary><table>{table}</table></details>"


def _num(value, digits: int = 3) -> str:
    value = _number(value)
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _cell_table(recommendation: Recommendation) -> str:
    rows = _rows_by_cell(recommendation)
    level = getattr(recommendation, "level", 0.95)
    head = ["rank", "cell", "epoch", "mean", f"{level * 100:g}% CI", "median", "min", "max", "faces / images", "no face",
            "memorised", "adherence", "note"]
    body = []
    for result in recommendation.cells:
        row = rows[id(result)]
        rate = _number(row.get("no_face_rate"))
        ci = "–" if row.get("ci_low") is None else f"{_num(row.get('ci_low'))}–{_num(row.get('ci_high'))}"
        note = getattr(result, "reason", None) or ("" if result.eligible else "cannot be recommended")
        if _is_best(recommendation, result):
            note = "recommended"
        elif recommendation.runner_up is not None and result is recommendation.runner_up:
            note = "runner-up"
        css = "best" if _is_best(recommendation, result) else ("" if result.eligible else "out")
        cells = [
            _e(row.get("rank") if row.get("rank") is not None else "–"), _e(row.get("label")), _e(row.get("epoch") if row.get("epoch") is not None else "–"),
            _num(row.get("mean")), ci, _num(row.get("median")), _num(row.get("min")), _num(row.get("max")),
            f"{_e(row.get('faces'))} / {_e(row.get('n'))}", "–" if math.isnan(rate) else f"{rate:.0%}",
            _e(row.get("memorised")), _num(row.get("adherence")), _e(note),
        ]
        numeric = {0, 2, 3, 5, 6, 7, 8, 9, 10, 11}
        tds = "".join(f"<td class='n'>{c}</td>" if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells))
        body.append(f"<tr class='{css}'>{tds}</tr>")
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    floor_ceiling = []
    if recommendation.floor is not None:
        floor_ceiling.append(f"floor (no LoRA) {recommendation.floor:.3f}")
    if recommendation.ceiling is not None:
        floor_ceiling.append(f"ceiling (reference photos to each other) {recommendation.ceiling:.3f}")
    tail = f"<p class='muted'>{_e('; '.join(floor_ceiling))}</p>" if floor_ceiling else ""
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>{tail}"


def thumbnail_jpeg(image: SweepImage, load: Loader, size: int = THUMB_SIZE, ceiling: float | None = None) -> bytes:
    """A small JPEG of one image with its face box and score badge (``unreadable`` tile if it cannot be read)."""
    fitted, box, _ = _load_fitted(image, load, size)
    badge = draw_score(fitted, image.score, box=box, baseline=ceiling, note="memorised?" if image.memorised else None)
    buffer = io.BytesIO()
    badge.save(buffer, format="JPEG", quality=80, optimize=True)
    return buffer.getvalue()


def _thumbnails(recommendation: Recommendation, images: Sequence[SweepImage], load: Loader, size: int) -> str:
    """Per cell (sweep order): a heading with its mean and the images' thumbnails."""
    groups: dict[tuple[str, float | None], list[SweepImage]] = {}
    for image in images:
        key = (NO_LORA, None) if image.strength is None else (image.checkpoint, float(image.strength))
        groups.setdefault(key, []).append(image)
    parts = []
    order = [(NO_LORA, None) if r.cell.is_baseline else (r.cell.checkpoint, float(r.cell.strength)) for r in recommendation.cells]
    titles = {key: r for key, r in zip(order, recommendation.cells)}
    order += [key for key in groups if key not in titles]
    for key in order:
        members = sorted(groups.get(key, []), key=lambda im: (im.prompt_index, im.seed))
        if not members:
            continue
        result = titles.get(key)
        label = result.cell.label if result is not None else (NO_LORA if key[1] is None else f"{key[0]} @ {key[1]:g}")
        summary = f" — mean {format_score(result.mean)}, faces {result.stats.n_faces}/{result.stats.n_images}" if result is not None else ""
        star = " ★ recommended" if result is not None and _is_best(recommendation, result) else ""
        figures = []
        for image in members:
            uri = data_uri(thumbnail_jpeg(image, load, size, recommendation.ceiling), "image/jpeg")
            caption = f"seed {image.seed} · prompt {image.prompt_index + 1} · {format_score(image.score)}"
            if image.memorised:
                caption += " · memorised?"
            name = Path(image.path).name
            figures.append(
                f"<figure><img src='{uri}' alt='{_e(label)}, {_e(caption)}' title='{_e(name)}'>"
                f"<figcaption>{_e(caption)}<br><span class='muted'>{_e(name)}</span></figcaption></figure>"
            )
        parts.append(f"<h3>{_e(label)}{_e(summary)}{_e(star)}</h3><div class='thumbs'>{''.join(figures)}</div>")
    return "".join(parts)


_HOW_TO_READ = (
    "Each image's face is compared with every reference photo (cosine similarity of ArcFace embeddings; an "
    "image's score is its best match). A cell's identity is the mean over its images with a face, with a "
    "bootstrap confidence interval. The recommended cell has the highest mean among cells that find a face often "
    "enough; it beats the runner-up beyond noise only when the interval of their difference (paired image by "
    "image over the same seeds and prompts) lies above 0. The floor is the base model without the LoRA; the "
    "ceiling is how alike the reference photos are to each other. Compare cells with each other and with these "
    "two lines, not with fixed thresholds: scores from different face models are on different scales. A no-face "
    "rate that rises with training usually means over-training is distorting faces."
)


def report_html(
    recommendation: Recommendation,
    images: Sequence[SweepImage],
    files: Mapping[str, Path],
    settings: Mapping,
    grid_jpeg: bytes | None,
    plots: Mapping[str, bytes],
    load: Loader | None = None,
    thumb_size: int = THUMB_SIZE,
    people=None,
) -> str:
    """One self-contained HTML page: every picture a ``data:`` URI, inline CSS, no script, no link out.
    With ``people`` (a :class:`~..people_sweep.PeopleRecommendation`), a "Family" section leads.

    Args:
        files: the report's other files (name → path), listed as links relative to the page.
        settings: the sweep's settings (``base``, ``loras``, ``prompts``, ``negative``, ``seeds``,
            ``strengths``, ``steps``, ``cfg``, ``sampler``, ``width``/``height`` or ``size``, ``pack`` …).
        grid_jpeg: the scored grid as JPEG bytes, or ``None``.
        plots: PNG bytes by file name (``curves.png``, ``heatmap.png``, ``trade_off.png``).
        load: reads an image for its thumbnail (default: open the file).
        thumb_size: longest side of each embedded thumbnail, px (JPEG, about 10 kB each at 192).

    Every string from the user (prompts, paths, labels, warnings) is HTML-escaped.
    """
    load = load or open_image
    headline = recommendation.headline()
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Likeness sweep — {_e(headline)}</title><style>{_STYLE}</style></head><body>",
        "<h1>Likeness sweep</h1>",
        f"<p class='headline'>{_e(headline)}</p>",
    ]
    if people is not None:
        parts.append(f"<h2>Family</h2><p class='headline'>{_e(people.sentence())}</p>{_people_table(people)}")
        if plots.get("people_curves.png"):
            parts.append("<h3>Each person by epoch</h3><img class='plot' src='"
                         f"{data_uri(plots['people_curves.png'], 'image/png')}' alt='each person by epoch'>")
    if recommendation.warnings:
        parts.append("<ul class='warn'>" + "".join(f"<li>{_e(w)}</li>" for w in recommendation.warnings) + "</ul>")
    # The results first (cells, curves, grid); the settings after them, folded.
    parts.append(f"<h2>Cells</h2>{_cell_table(recommendation)}")
    titles = (("curves.png", "Identity by epoch"), ("heatmap.png", "Heatmap"), ("trade_off.png", "Identity vs prompt adherence"))
    for name, title in titles:
        if plots.get(name):
            parts.append(f"<h2>{_e(title)}</h2><img class='plot' src='{data_uri(plots[name], 'image/png')}' alt='{_e(title)}'>")
    if grid_jpeg:
        parts.append(f"<h2>Grid</h2><img class='plot' src='{data_uri(grid_jpeg, 'image/jpeg')}' alt='scored grid'>")
    parts.append(f"<h2>Settings</h2>{_settings_section(settings)}")
    if images:
        parts.append(f"<h2>Images</h2><p class='muted'>{len(images)} images; the score is the best cosine similarity to a reference photo.</p>")
        parts.append(_thumbnails(recommendation, images, load, thumb_size))
    if files:
        links = "".join(f"<li><a href='{_e(Path(p).name)}'>{_e(Path(p).name)}</a></li>" for name, p in files.items() if name != "previous")
        parts.append(f"<h2>Files</h2><ul>{links}</ul>")
        if "previous" in files:
            parts.append(f"<p class='muted'>The earlier report was moved to <code>{_e(files['previous'])}</code>.</p>")
    parts.append(f"<h2>How to read it</h2><p>{_e(_HOW_TO_READ)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _people_table(people) -> str:
    """Per cell: each person's mean (presence), all present, blended, worst served; the best cell marked."""
    names = list(people.results[0].stats.people) if people.results else []
    head = "".join(f"<th>{_e(n)}</th>" for n in ["cell", *names, "all present", "blended", "worst served"])
    rows = []
    for result in people.results:
        stats = result.stats
        cells = [_e(result.cell.label)]
        for name in names:
            person = stats.people[name]
            cells.append("–" if person.n_expected == 0 else
                         f"{_num(person.mean)} ({person.presence_rate:.0%})" if person.mean is not None else f"missing ({person.presence_rate:.0%})")
        cells += [f"{stats.all_present_rate:.0%}" if stats.all_present_rate is not None else "–",
                  f"{stats.blend_rate:.0%}" if stats.blend_rate is not None else "–", _e(stats.worst_served or "–")]
        mark = " class='best'" if people.best is result else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_sweep_report(
    out_dir: Path,
    images: Sequence[SweepImage],
    recommendation: Recommendation,
    settings: Mapping,
    load: Loader | None = None,
    people=None,
) -> dict[str, Path]:
    """Write the sweep report into ``out_dir`` (see the module docstring for the files); with ``people``
    (a :class:`~..people_sweep.PeopleRecommendation`) also ``people.json`` and the page's Family section.

    One run at a time: the report is staged and swapped in at the end (an interrupted run leaves the
    earlier one in place), report files already there moving to ``out_dir/previous/<time>/`` then.
    Returns ``{file name: path}``, plus ``previous`` (the folder the earlier report went to) when
    there was one.
    """
    out_dir = Path(out_dir)
    load = load or open_image
    files: dict[str, Path] = {}
    # Locked against a second run, staged, and swapped in whole at the end (see lora_likeness.outputs).
    with ReportFolder(out_dir, SWEEP_REPORT_FILES) as report:
        moved = report.previous

        def put(name: str, data: bytes | str) -> None:
            (write_text_atomic if isinstance(data, str) else write_bytes_atomic)(report.path(name), data)
            files[name] = out_dir / name

        grid = grid_jpeg(sweep_grid(images, recommendation, load=load)) if images else None
        if grid is not None:
            put("grid.jpg", grid)
        plots = {"curves.png": curves_png(recommendation), "heatmap.png": heatmap_png(recommendation)}
        if people is not None:
            plots["people_curves.png"] = people_curves_png(people)
        trade_off = trade_off_png(recommendation)
        if trade_off is not None:
            plots["trade_off.png"] = trade_off
        for name, data in plots.items():
            put(name, data)
        put("cells.csv", cells_csv(recommendation, people))
        put("images.csv", images_csv(images, out_dir))
        put("recommendation.json", recommendation_json(recommendation, settings))
        put("recommendation.txt", recommendation_text(recommendation))
        if people is not None:
            put("people.json", json.dumps(_jsonable(people.as_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        files["report.html"] = out_dir / "report.html"
        listed = dict(files, **({"previous": moved} if moved is not None else {}))
        write_text_atomic(report.path("report.html"), report_html(recommendation, images, listed, settings, grid, plots, load=load,
                                                                  people=people))
        report.commit()
    return listed
