"""Scores drawn on images, and scored grids (rows x columns, e.g. epochs x strengths).

Pillow only, no host types: ComfyUI and A1111 convert their images to ``PIL.Image`` at the boundary.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NO_FACE = "no face"


def font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans (matplotlib ships it) at ``size`` px, else Pillow's default bitmap font."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # noqa: BLE001 - any font problem falls back to the built-in font
        return ImageFont.load_default()


def score_colour(score: float | None, baseline: float | None) -> tuple[int, int, int]:
    """Red (no face) … amber (low) … green (at the reference baseline, or 0.8 without one)."""
    if score is None:
        return (200, 40, 40)
    top = baseline if baseline and baseline > 0.2 else 0.8
    ratio = float(np.clip(score / top, 0.0, 1.0))
    return (int(230 * (1 - ratio)), int(170 + 60 * ratio), 40)


def format_score(score: float | None) -> str:
    """``0.573`` or ``no face``."""
    return NO_FACE if score is None else f"{score:.3f}"


def _text_size(draw: ImageDraw.ImageDraw, text: str, face) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    return right - left, bottom - top


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, face, fill, anchor: str = "lt") -> None:
    """Draw text anchored at ``xy``: horizontal l/m/r, vertical t/m/d (bottom) — computed here
    because Pillow's ``anchor`` is not supported by its bitmap fallback font."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    width, height = right - left, bottom - top
    x = xy[0] - {"l": 0, "m": width / 2, "r": width}[anchor[0]] - left
    y = xy[1] - {"t": 0, "m": height / 2, "d": height}[anchor[1]] - top
    draw.text((x, y), text, fill=fill, font=face)


def draw_score(
    image: Image.Image,
    score: float | None,
    box: Sequence[float] | None = None,
    baseline: float | None = None,
    note: str | None = None,
) -> Image.Image:
    """A copy of ``image`` with the face box outlined and a score badge along the bottom edge.

    Args:
        image: any mode; the copy is RGB.
        score: cosine similarity, or ``None`` for an image without a face.
        box: face box ``(x1, y1, x2, y2)`` in this image's pixels.
        baseline: reference baseline mean (sets where the colour turns green).
        note: appended to the badge (``memorised?``).
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    colour = score_colour(score, baseline)
    side = min(out.size)
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=colour, width=max(1, side // 128))
    face = font(max(10, min(48, side // 10)))
    height = _text_size(draw, "Ag", face)[1]
    pad = max(2, height // 4)
    lines = [format_score(score) + (f" {note}" if note else "")]
    if note and draw.textlength(lines[0], font=face) > out.width - 2 * pad:
        # A small image: the note goes on a line of its own, shortened if it still does not fit.
        lines = [format_score(score), _shorten(draw, note, face, out.width - 2 * pad)]
    width = max(_text_size(draw, line, face)[0] for line in lines)
    step = height + pad
    badge = [0, out.height - len(lines) * step - 2 * pad, min(out.width, width + 2 * pad), out.height]
    draw.rectangle(badge, fill=(0, 0, 0))
    for k, line in enumerate(lines):
        _text(draw, (pad, out.height - (len(lines) - k) * step - pad), line, face, colour)
    return out


def on_common_canvas(images: Sequence[Image.Image], background: tuple[int, int, int] = (40, 40, 40)) -> list[Image.Image]:
    """Images of different sizes, each centred on a canvas of one size (the largest width x the largest
    height) and padded with ``background``, never stretched: what a host needs to put them in one batch.
    Images that already share one size are returned as they are."""
    if not images:
        return []
    width, height = max(i.width for i in images), max(i.height for i in images)
    out = []
    for image in images:
        if image.size == (width, height):
            out.append(image)
            continue
        canvas = Image.new("RGB", (width, height), background)
        canvas.paste(image.convert("RGB"), ((width - image.width) // 2, (height - image.height) // 2))
        out.append(canvas)
    return out


NO_IMAGE = "no image"


def draw_no_image(size: tuple[int, int], reason: str | None = None) -> Image.Image:
    """A dark cell of ``size`` (width, height) px for a grid position whose image was never made (its
    generation failed): ``no image`` in red, then ``reason`` wrapped below it as far as it fits."""
    out = Image.new("RGB", (max(1, int(size[0])), max(1, int(size[1]))), (32, 32, 32))
    draw = ImageDraw.Draw(out)
    face = font(max(10, min(48, min(out.size) // 10)))
    height = _text_size(draw, "Ag", face)[1]
    pad = max(2, height // 4)
    _text(draw, (pad, pad), _shorten(draw, NO_IMAGE, face, out.width - 2 * pad), face, score_colour(None, None))
    lines = _wrap(draw, reason or "", face, out.width - 2 * pad) if reason else []
    room = max(0, (out.height - 2 * pad - height) // (height + pad))
    if len(lines) > room:  # the reports carry the whole text; the cell shows what fits
        lines = lines[:room]
        if lines:
            lines[-1] = _shorten(draw, lines[-1] + " …", face, out.width - 2 * pad)
    for k, line in enumerate(lines, start=1):
        _text(draw, (pad, pad + k * (height + pad)), _shorten(draw, line, face, out.width - 2 * pad), face, (220, 220, 220))
    return out


def axis_means(scores: Sequence[float | None], keys: Sequence[Hashable]) -> dict[Hashable, float | None]:
    """Mean of the non-missing scores for each key (``None`` when a key has no face at all), keys in first-seen order."""
    groups: dict[Hashable, list[float]] = {}
    for score, key in zip(scores, keys):
        bucket = groups.setdefault(key, [])
        if score is not None and not math.isnan(score):
            bucket.append(float(score))
    return {key: (float(np.mean(values)) if values else None) for key, values in groups.items()}


def mean_score(scores: Sequence[float | None]) -> float | None:
    """Mean of the non-missing scores; ``None`` when no image has a face (or there are none)."""
    return axis_means(scores, [0] * len(scores)).get(0)


def axis_label(label: str, mean: float | None) -> str:
    """``e10 · 0.612`` / ``e10 · no face``."""
    return f"{label} · {format_score(mean)}"


@dataclass
class GridCell:
    """One image placed in a grid at (``row``, ``column``); several images may share a cell (seeds)."""

    image: Image.Image
    row: str
    column: str
    score: float | None
    box: Sequence[float] | None = None
    note: str | None = None


def grid_means(
    cells: Sequence[GridCell],
) -> tuple[dict[str, float | None], dict[str, float | None], dict[tuple[str, str], float | None]]:
    """Row means, column means and cell means of the scores (faces only)."""
    scores = [c.score for c in cells]
    rows = axis_means(scores, [c.row for c in cells])
    columns = axis_means(scores, [c.column for c in cells])
    pairs = axis_means(scores, [(c.row, c.column) for c in cells])
    return rows, columns, pairs  # type: ignore[return-value]


def _ordered(given: Sequence[str] | None, seen: Sequence[str]) -> list[str]:
    if given is not None:
        return list(given)
    return list(dict.fromkeys(seen))


def _fit(image: Image.Image, size: int) -> tuple[Image.Image, float]:
    factor = size / max(image.size)
    fitted = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.Resampling.LANCZOS)
    return fitted, factor


#: Header fonts shrink to fit their column down to this size (px) before a label is shortened.
SMALLEST_HEADER_FONT = 9
#: A column label wraps onto at most this many lines above its mean.
HEADER_LABEL_LINES = 2


def _shorten(draw: ImageDraw.ImageDraw, text: str, face, width: float) -> str:
    """``text`` cut to fit ``width`` px with an ellipsis (the last resort for a label that cannot wrap)."""
    if draw.textlength(text, font=face) <= width:
        return text
    ellipsis = "…" if isinstance(face, ImageFont.FreeTypeFont) else ".."
    while text and draw.textlength(text + ellipsis, font=face) > width:
        text = text[:-1]
    return text.rstrip() + ellipsis if text else ellipsis


def _header_lines(draw: ImageDraw.ImageDraw, label: str, mean: float | None, face, width: float) -> list[str] | None:
    """One column header as lines no wider than ``width`` px: ``label · mean``, else the label over
    the mean, else the label wrapped at spaces over the mean; ``None`` when none fits this font."""
    score = format_score(mean)
    fits = lambda text: draw.textlength(text, font=face) <= width  # noqa: E731
    if fits(axis_label(label, mean)):
        return [axis_label(label, mean)]
    if not fits(score):
        return None
    if fits(label):
        return [label, score]
    words = _wrap(draw, label, face, width)
    if len(words) <= HEADER_LABEL_LINES and all(fits(line) for line in words):
        return words + [score]
    return None


def _fit_headers(draw: ImageDraw.ImageDraw, headers: Sequence[tuple[str, float | None]], width: float, largest: int):
    """The largest font (``largest`` down to :data:`SMALLEST_HEADER_FONT` px) at which every header
    fits ``width`` px, and each header's lines; at the smallest size a header that still does not
    fit is wrapped and its lines shortened with an ellipsis."""
    for size in range(largest, SMALLEST_HEADER_FONT - 1, -1):
        face = font(size)
        laid = [_header_lines(draw, label, mean, face, width) for label, mean in headers]
        if all(lines is not None for lines in laid):
            return face, laid
    face = font(SMALLEST_HEADER_FONT)
    laid = []
    for label, mean in headers:
        lines = _header_lines(draw, label, mean, face, width)
        if lines is None:
            words = _wrap(draw, label, face, width)
            kept, rest = words[:HEADER_LABEL_LINES - 1], " ".join(words[HEADER_LABEL_LINES - 1:])
            lines = [_shorten(draw, line, face, width) for line in [*kept, *([rest] if rest else []), format_score(mean)]]
        laid.append(lines)
    return face, laid


def _wrap_parts(draw: ImageDraw.ImageDraw, parts: Sequence[str], face, width: float, separator: str = " · ") -> list[str]:
    """``parts`` joined by ``separator`` into lines no wider than ``width`` px, breaking between
    parts first (a part wider than a line is wrapped at its spaces)."""
    lines: list[str] = []
    for part in parts:
        candidate = f"{lines[-1]}{separator}{part}" if lines else part
        if lines and draw.textlength(candidate, font=face) <= width:
            lines[-1] = candidate
        else:
            lines.extend(_wrap(draw, part, face, width))
    return lines


def scored_grid(
    cells: Sequence[GridCell],
    rows: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    baseline: float | None = None,
    title: str | None = None,
    cell_size: int | None = None,
    span_rows: Sequence[str] = (),
) -> Image.Image:
    """A ``rows x columns`` grid of scored images with the means in the headers.

    Args:
        cells: the images with their row, column and score; images sharing a (row, column) sit side
            by side in that cell, in the order given.
        rows, columns: header order (default: first-seen order in ``cells``).
        baseline: the reference photos' mean similarity to each other (the ceiling), printed in the
            corner as ``reference photos`` (not "baseline": next to a no-LoRA row that would be
            ambiguous) and used for the colours.
        title: printed above the grid.
        cell_size: longest side of each image in px (default: the largest image's, at most 512).
        span_rows: rows that belong to no column (a sweep's no-LoRA baseline has no strength): each
            is drawn above the column headers with its images side by side from the first column
            on, and its images count in no column mean.

    Returns:
        An RGB image: the title and the corner line (the mean of all images, the reference photos)
        on top, then the span rows, then the column headers and the rows. Headers read
        ``label · mean``; a column header too wide for its column goes onto two or three lines
        (label over mean), then a smaller font, so no label runs into another at any cell size.
    """
    if not cells:
        raise ValueError("no images to put in a grid")
    spanning = [r for r in dict.fromkeys(span_rows) if any(c.row == r for c in cells)]
    row_order = [r for r in _ordered(rows, [c.row for c in cells]) if r not in spanning]
    column_order = _ordered(columns, [c.column for c in cells if c.row not in spanning])
    row_means, _, _ = grid_means(cells)
    _, column_means, _ = grid_means([c for c in cells if c.row not in spanning])
    by_cell: dict[tuple[str, str], list[GridCell]] = {}
    by_span: dict[str, list[GridCell]] = {}
    for cell in cells:
        if cell.row in spanning:
            by_span.setdefault(cell.row, []).append(cell)
        else:
            by_cell.setdefault((cell.row, cell.column), []).append(cell)
    placed = [members for (r, c), members in by_cell.items() if r in row_order and c in column_order]
    per_cell = max((len(v) for v in placed), default=1)
    size = cell_size or min(512, max(max(c.image.size) for c in cells))
    # Slots as wide and tall as the largest fitted image: portrait images do not sit in square slots.
    fitted_sizes = [(max(1, round(c.image.width * size / max(c.image.size))), max(1, round(c.image.height * size / max(c.image.size))))
                    for c in cells]
    slot_w, slot_h = max(w for w, _ in fitted_sizes), max(h for _, h in fitted_sizes)
    gap = max(2, size // 64)
    largest = max(12, min(32, size // 12))
    header_font = font(largest)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_size(measure, "Ag", header_font)[1] + 2 * gap
    row_labels = {r: axis_label(r, row_means.get(r)) for r in [*spanning, *row_order]}
    left = max(_text_size(measure, text, header_font)[0] for text in row_labels.values()) + 3 * gap
    cell_width = per_cell * slot_w + (per_cell - 1) * gap
    columns_width = len(column_order) * (cell_width + gap)
    # A span row puts as many images on a line as the columns have room for (all of them when there are no columns).
    most_spanned = max((len(v) for v in by_span.values()), default=0)
    per_line = max(1, (columns_width + gap) // (slot_w + gap) if column_order else most_spanned)
    span_lines = {r: math.ceil(len(by_span[r]) / per_line) for r in spanning}
    span_rule = line // 2 if spanning and column_order else 0  # room for a rule between the span rows and the headers
    width = left + max(columns_width, min(per_line, most_spanned) * (slot_w + gap))

    header_face, header_lines = _fit_headers(measure, [(c, column_means.get(c)) for c in column_order], cell_width, largest)
    header_line = _text_size(measure, "Ag", header_face)[1] + gap
    overall = mean_score([c.score for c in cells])
    corner = [f"all images {overall:.3f}" if overall is not None else "no face in any image"]
    if baseline is not None:
        corner.append(f"reference photos {baseline:.3f}")
    band_width = width - 2 * gap
    title_lines = _wrap(measure, title, header_font, band_width) if title else []
    corner_lines = _wrap_parts(measure, corner, header_font, band_width)
    widest = max(measure.textlength(text, font=header_font) for text in title_lines + corner_lines)
    width = max(width, math.ceil(widest) + 2 * gap)  # a single word wider than the grid widens it
    header_band = max((len(lines) for lines in header_lines), default=0) * header_line + (gap if column_order else 0)
    spans_top = gap + (len(title_lines) + len(corner_lines)) * line
    top = spans_top + sum(n * (slot_h + gap) for n in span_lines.values()) + span_rule + header_band
    height = top + len(row_order) * (slot_h + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    y = gap
    for text in title_lines:
        _text(draw, (gap, y), text, header_font, (0, 0, 0))
        y += line
    for text in corner_lines:
        _text(draw, (gap, y), text, header_font, (60, 60, 60))
        y += line

    def paste(cell: GridCell, x: int, y: int) -> None:
        fitted, factor = _fit(cell.image.convert("RGB"), size)
        box = [v * factor for v in cell.box] if cell.box is not None else None
        annotated = draw_score(fitted, cell.score, box=box, baseline=baseline, note=cell.note)
        canvas.paste(annotated, (x + (slot_w - fitted.width) // 2, y + (slot_h - fitted.height) // 2))

    y = spans_top
    for row in spanning:
        _text(draw, (left - 2 * gap, y + slot_h // 2), row_labels[row], header_font, (0, 0, 0), "rm")
        for k, cell in enumerate(by_span[row]):
            paste(cell, left + (k % per_line) * (slot_w + gap), y + (k // per_line) * (slot_h + gap))
        y += span_lines[row] * (slot_h + gap)
    if span_rule:
        draw.line([(gap, y + span_rule // 2), (width - gap, y + span_rule // 2)], fill=(200, 200, 200), width=1)
    for j, column in enumerate(column_order):
        x = left + j * (cell_width + gap) + cell_width // 2
        for k, text in enumerate(reversed(header_lines[j])):
            _text(draw, (x, top - gap - k * header_line), text, header_face, (0, 0, 0), "md")
    for i, row in enumerate(row_order):
        y = top + i * (slot_h + gap)
        _text(draw, (left - 2 * gap, y + slot_h // 2), row_labels[row], header_font, (0, 0, 0), "rm")
        for j, column in enumerate(column_order):
            x = left + j * (cell_width + gap)
            for k, cell in enumerate(by_cell.get((row, column), [])):
                paste(cell, x + k * (slot_w + gap), y)
    return canvas


# --------------------------------------------------------------------------------------------
# A caption band under a grid (the recommendation and its warnings)
# --------------------------------------------------------------------------------------------

CAPTION_HEADLINE = (0, 0, 0)
CAPTION_WARNING = (170, 70, 0)
CAPTION_BACKGROUND = (255, 255, 255)


def _wrap(draw: ImageDraw.ImageDraw, text: str, face, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px (a longer word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=face) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def caption_below(image: Image.Image, lines: Sequence[str], background: tuple[int, int, int] = CAPTION_BACKGROUND,
                  details: Sequence[str] = ()) -> Image.Image:
    """A copy of ``image`` (RGB) with a band under it holding ``lines``, wrapped to its width: the
    first line in black (the headline), then ``details`` in black (a family's per-cell scores), then
    the other lines in amber (warnings). Font size follows the width (12 to 28 px)."""
    picture = image.convert("RGB")
    face = font(max(12, min(28, picture.width // 45)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, top, _, bottom = measure.textbbox((0, 0), "Ag", font=face)
    line_height = bottom - top
    pad = max(4, line_height // 2)
    coloured = [(text, CAPTION_HEADLINE if i == 0 else CAPTION_WARNING) for i, text in enumerate(lines)]
    coloured[1:1] = [(text, CAPTION_HEADLINE) for text in details]
    wrapped = [(row, colour) for text, colour in coloured for row in _wrap(measure, text, face, picture.width - 2 * pad)]
    band = 2 * pad + len(wrapped) * line_height + (len(wrapped) - 1) * (line_height // 3)
    canvas = Image.new("RGB", (picture.width, picture.height + band), background)
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = picture.height + pad
    for text, colour in wrapped:
        draw.text((pad, y - top), text, fill=colour, font=face)
        y += line_height + line_height // 3
    return canvas
