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
    text = format_score(score) + (f" {note}" if note else "")
    face = font(max(10, min(48, side // 10)))
    width, height = _text_size(draw, text, face)
    pad = max(2, height // 4)
    badge = [0, out.height - height - 3 * pad, min(out.width, width + 2 * pad), out.height]
    draw.rectangle(badge, fill=(0, 0, 0))
    _text(draw, (pad, out.height - height - 2 * pad), text, face, colour)
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


def scored_grid(
    cells: Sequence[GridCell],
    rows: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    baseline: float | None = None,
    title: str | None = None,
    cell_size: int | None = None,
) -> Image.Image:
    """A ``rows x columns`` grid of scored images with the means in the headers.

    Args:
        cells: the images with their row, column and score; images sharing a (row, column) sit side
            by side in that cell, in the order given.
        rows, columns: header order (default: first-seen order in ``cells``).
        baseline: reference baseline mean, printed in the corner and used for the colours.
        title: printed above the grid.
        cell_size: longest side of each image in px (default: the largest image's, at most 512).

    Returns:
        An RGB image; row headers on the left and column headers on top read ``label · mean``, and
        the corner gives the overall mean.
    """
    if not cells:
        raise ValueError("no images to put in a grid")
    row_order = _ordered(rows, [c.row for c in cells])
    column_order = _ordered(columns, [c.column for c in cells])
    row_means, column_means, _ = grid_means(cells)
    by_cell: dict[tuple[str, str], list[GridCell]] = {}
    for cell in cells:
        by_cell.setdefault((cell.row, cell.column), []).append(cell)
    per_cell = max(len(v) for v in by_cell.values())
    size = cell_size or min(512, max(max(c.image.size) for c in cells))
    # Slots as wide and tall as the largest fitted image: portrait images do not sit in square slots.
    fitted_sizes = [(max(1, round(c.image.width * size / max(c.image.size))), max(1, round(c.image.height * size / max(c.image.size))))
                    for c in cells]
    slot_w, slot_h = max(w for w, _ in fitted_sizes), max(h for _, h in fitted_sizes)
    gap = max(2, size // 64)
    header_font = font(max(12, min(32, size // 12)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_labels = {r: axis_label(r, row_means.get(r)) for r in row_order}
    column_labels = {c: axis_label(c, column_means.get(c)) for c in column_order}
    left = max(_text_size(measure, text, header_font)[0] for text in row_labels.values()) + 3 * gap
    line = _text_size(measure, "Ag", header_font)[1] + 2 * gap
    top = line * (2 if title else 1) + gap
    cell_width = per_cell * slot_w + (per_cell - 1) * gap
    width = left + len(column_order) * (cell_width + gap)
    height = top + len(row_order) * (slot_h + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    overall = mean_score([c.score for c in cells])
    corner = f"mean {format_score(overall)}" + (f" · baseline {baseline:.3f}" if baseline is not None else "")
    if title:
        _text(draw, (gap, gap), title, header_font, (0, 0, 0))
        _text(draw, (gap, gap + line), corner, header_font, (60, 60, 60))
    else:
        _text(draw, (gap, gap), corner, header_font, (60, 60, 60))
    for j, column in enumerate(column_order):
        x = left + j * (cell_width + gap) + cell_width // 2
        _text(draw, (x, top - gap), column_labels[column], header_font, (0, 0, 0), "md")
    for i, row in enumerate(row_order):
        y = top + i * (slot_h + gap)
        _text(draw, (left - 2 * gap, y + slot_h // 2), row_labels[row], header_font, (0, 0, 0), "rm")
        for j, column in enumerate(column_order):
            x = left + j * (cell_width + gap)
            for k, cell in enumerate(by_cell.get((row, column), [])):
                fitted, factor = _fit(cell.image.convert("RGB"), size)
                box = [v * factor for v in cell.box] if cell.box is not None else None
                annotated = draw_score(fitted, cell.score, box=box, baseline=baseline, note=cell.note)
                offset = ((slot_w - fitted.width) // 2, (slot_h - fitted.height) // 2)
                canvas.paste(annotated, (x + k * (slot_w + gap) + offset[0], y + offset[1]))
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


def caption_below(image: Image.Image, lines: Sequence[str], background: tuple[int, int, int] = CAPTION_BACKGROUND) -> Image.Image:
    """A copy of ``image`` (RGB) with a band under it holding ``lines``, wrapped to its width: the
    first line in black (the headline), the others in amber (warnings). Font size follows the width
    (12 to 28 px)."""
    picture = image.convert("RGB")
    face = font(max(12, min(28, picture.width // 45)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, top, _, bottom = measure.textbbox((0, 0), "Ag", font=face)
    line_height = bottom - top
    pad = max(4, line_height // 2)
    wrapped = [(row, CAPTION_HEADLINE if i == 0 else CAPTION_WARNING)
               for i, text in enumerate(lines) for row in _wrap(measure, text, face, picture.width - 2 * pad)]
    band = 2 * pad + len(wrapped) * line_height + (len(wrapped) - 1) * (line_height // 3)
    canvas = Image.new("RGB", (picture.width, picture.height + band), background)
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = picture.height + pad
    for text, colour in wrapped:
        draw.text((pad, y - top), text, fill=colour, font=face)
        y += line_height + line_height // 3
    return canvas
