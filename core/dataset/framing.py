"""Crop windows: where a close-up, a head-and-shoulders or a half-body shot of a face sits in a
photo, and rendering the window to the output size.

Geometry is pure (source-image pixels, ``x1, y1, x2, y2`` boxes). A window always contains every
face it frames with room for hair and chin (it never cuts the face), keeps other people's faces
entirely outside, and, where the photo is too small, pads with the photo's border colour instead
of stretching. :func:`plan_window` searches a few sizes and positions and takes the one closest to
the framing's ideal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: framing -> (window side in face sizes, height of the face centre from the window's top as a
#: fraction of the window). The face size is the larger side of the detector's box (about
#: forehead to chin), so 2 face sizes show the whole head with a little neck.
FRAMING_GEOMETRY = {
    "close-up": (2.0, 0.47),
    "head-and-shoulders": (3.4, 0.38),
    "half-body": (6.0, 0.28),
}
#: Room kept around each framed face, in face sizes: hair above, chin below, ears at the sides.
MARGIN_TOP, MARGIN_BOTTOM, MARGIN_SIDE = 0.35, 0.25, 0.2
#: Share of another face's box that may overlap a window (a sliver of a cheek at the edge).
FOREIGN_OVERLAP = 0.02
_SCALE_STEPS = 5
_POSITION_STEPS = 9


@dataclass(frozen=True)
class CropWindow:
    """A crop in source-image pixels (may extend past the photo, which is then padded).

    Attributes:
        box: ``(x1, y1, x2, y2)`` floats.
        framing: one of ``FRAMING_GEOMETRY``.
        padding: share of the window's area outside the photo (0 = none).
        scale: window size over the framing's ideal size (1 = ideal, down to ``min_scale``).
    """

    box: tuple[float, float, float, float]
    framing: str
    padding: float
    scale: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def as_dict(self) -> dict:
        return {
            "box": [round(v, 1) for v in self.box],
            "framing": self.framing,
            "padding": round(self.padding, 4),
            "scale": round(self.scale, 3),
        }


def face_size(box: Sequence[float]) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def protected_box(boxes: Sequence[Sequence[float]], image_size: tuple[int, int]) -> np.ndarray:
    """Union of the faces' boxes with room for hair and chin, clipped to the photo ``(W, H)``
    (what the photo does not show cannot be kept)."""
    expanded = []
    for box in boxes:
        size = face_size(box)
        expanded.append((box[0] - MARGIN_SIDE * size, box[1] - MARGIN_TOP * size, box[2] + MARGIN_SIDE * size, box[3] + MARGIN_BOTTOM * size))
    array = np.asarray(expanded, dtype=np.float64)
    width, height = image_size
    return np.array([max(0.0, array[:, 0].min()), max(0.0, array[:, 1].min()), min(float(width), array[:, 2].max()), min(float(height), array[:, 3].max())])


def _positions(desired: float, low: float, high: float) -> np.ndarray:
    """Candidate window starts: the desired one clamped into ``[low, high]`` plus an even grid."""
    if high < low:
        return np.array([])
    grid = np.linspace(low, high, _POSITION_STEPS) if high > low else np.array([low])
    return np.unique(np.concatenate([[min(max(desired, low), high)], grid]))


def plan_window(
    image_size: tuple[int, int],
    faces: Sequence[Sequence[float]],
    framing: str,
    foreign: Sequence[Sequence[float]] = (),
    aspect: float = 1.0,
    max_padding: float = 0.15,
    min_scale: float = 0.8,
) -> tuple[CropWindow | None, str | None]:
    """The best window of ``framing`` around ``faces`` in a photo of ``image_size = (W, H)``.

    Args:
        faces: boxes of the faces the crop frames (the subject, or every identity in the photo).
        foreign: boxes of faces that must stay entirely outside the crop.
        aspect: window width / height (1 for squares).
        max_padding: largest share of the window allowed outside the photo.
        min_scale: smallest window as a fraction of the framing's ideal size.

    Returns:
        ``(window, None)``, or ``(None, reason)`` where reason is ``"padding"`` (the photo is too
        small around the face for this framing) or ``"foreign"`` (another face cannot be kept out).
    """
    width, height = image_size
    factor, centre_height = FRAMING_GEOMETRY[framing]
    boxes = np.asarray(faces, dtype=np.float64).reshape(-1, 4)
    size = max(face_size(b) for b in boxes)
    keep = protected_box(boxes, image_size)
    keep_w, keep_h = keep[2] - keep[0], keep[3] - keep[1]
    centre_x = (boxes[:, 0].min() + boxes[:, 2].max()) / 2.0
    centre_y = (boxes[:, 1].min() + boxes[:, 3].max()) / 2.0
    ideal = factor * size
    root = math.sqrt(aspect)
    # Several faces: the window grows to hold them all with a margin.
    ideal = max(ideal, keep_w * 1.1 / root, keep_h * 1.1 * root)
    foreign_boxes = np.asarray(foreign, dtype=np.float64).reshape(-1, 4)
    foreign_area = np.maximum(foreign_boxes[:, 2] - foreign_boxes[:, 0], 0) * np.maximum(foreign_boxes[:, 3] - foreign_boxes[:, 1], 0)

    best: tuple[float, CropWindow] | None = None
    blocked_by_foreign = False
    for scale in np.linspace(1.0, min_scale, _SCALE_STEPS):
        win_w, win_h = ideal * scale * root, ideal * scale / root
        if win_w < keep_w - 1e-6 or win_h < keep_h - 1e-6:
            break
        desired_x = centre_x - win_w / 2.0
        desired_y = centre_y - centre_height * win_h
        # The protected box must be inside; the photo should be, where it is large enough.
        low_x, high_x = keep[2] - win_w, keep[0]
        low_y, high_y = keep[3] - win_h, keep[1]
        if win_w <= width:
            low_x, high_x = max(low_x, 0.0), min(high_x, width - win_w)
        else:
            low_x, high_x = max(low_x, width - win_w), min(high_x, 0.0)
        if win_h <= height:
            low_y, high_y = max(low_y, 0.0), min(high_y, height - win_h)
        else:
            low_y, high_y = max(low_y, height - win_h), min(high_y, 0.0)
        xs, ys = _positions(desired_x, low_x, high_x), _positions(desired_y, low_y, high_y)
        if xs.size == 0 or ys.size == 0:
            continue
        x1, y1 = np.meshgrid(xs, ys, indexing="ij")
        x1, y1 = x1.ravel(), y1.ravel()
        x2, y2 = x1 + win_w, y1 + win_h
        inside = (np.clip(x2, 0, width) - np.clip(x1, 0, width)) * (np.clip(y2, 0, height) - np.clip(y1, 0, height))
        padding = 1.0 - inside / (win_w * win_h)
        ok = padding <= max_padding + 1e-9
        if foreign_boxes.size:
            overlap_w = np.clip(np.minimum(x2[:, None], foreign_boxes[None, :, 2]) - np.maximum(x1[:, None], foreign_boxes[None, :, 0]), 0, None)
            overlap_h = np.clip(np.minimum(y2[:, None], foreign_boxes[None, :, 3]) - np.maximum(y1[:, None], foreign_boxes[None, :, 1]), 0, None)
            clash = (overlap_w * overlap_h > FOREIGN_OVERLAP * foreign_area[None, :]).any(axis=1)
            blocked_by_foreign |= bool((ok & clash).any()) and not bool((ok & ~clash).any())
            ok &= ~clash
        if not ok.any():
            continue
        cost = (np.hypot(x1 - desired_x, y1 - desired_y) / ideal) + (1.0 - scale) + 2.0 * padding
        cost = np.where(ok, cost, np.inf)
        index = int(np.argmin(cost))
        if best is None or cost[index] < best[0]:
            window = CropWindow(
                box=(float(x1[index]), float(y1[index]), float(x2[index]), float(y2[index])),
                framing=framing,
                padding=float(max(0.0, padding[index])),
                scale=float(scale),
            )
            best = (float(cost[index]), window)
    if best is not None:
        return best[1], None
    return None, "foreign" if blocked_by_foreign else "padding"


def output_size(size: int, window: CropWindow, keep_aspect: bool) -> tuple[int, int]:
    """Pixel size of the rendered crop: ``size x size``, or the window's aspect at about ``size**2``
    pixels (multiples of 8) for sd-scripts' buckets."""
    if not keep_aspect:
        return size, size
    aspect = window.width / window.height
    return max(8, round(size * math.sqrt(aspect) / 8.0) * 8), max(8, round(size / math.sqrt(aspect) / 8.0) * 8)


def photo_aspect(image_size: tuple[int, int]) -> float:
    """Aspect of keep-aspect windows: the photo's own, bounded to 1:2 .. 2:1 (bucket range)."""
    width, height = image_size
    return float(np.clip(width / max(height, 1), 0.5, 2.0))


def render_crop(path: Path, window: CropWindow, out_size: tuple[int, int], source_size: tuple[int, int],
                background: tuple[int, int, int] = (255, 255, 255)):
    """Decode ``path`` at the resolution the crop needs and return the crop as a PIL image.

    The photo is decoded no larger than needed (JPEGs at a reduced DCT scale when the window is
    much larger than the output); parts of the window outside the photo are filled with the mean
    colour of the photo's outer border; the window is resized with Lanczos, never stretched
    (its aspect is the output's). Returns ``(image, upscale)`` where ``upscale`` is output pixels
    per source pixel (> 1 means enlarged), or ``(None, error)`` when the photo cannot be decoded.
    Transparent pixels are laid on ``background`` (RGB 0..255).
    """
    from PIL import Image

    from ..images import decode_image

    out_w, out_h = out_size
    longest = max(source_size)
    needed = min(longest, math.ceil(longest * max(out_w / window.width, out_h / window.height)) + 2)
    loaded = decode_image(path, max_side=max(needed, 64), draft_side=max(needed, 64), background=background)
    if loaded.rgb is None:
        return None, loaded.error or "cannot be decoded"
    rgb = loaded.rgb
    factor = 1.0 / loaded.scale
    x1, y1, x2, y2 = (v * factor for v in window.box)
    height, width = rgb.shape[:2]
    pad_left, pad_top = max(0, math.ceil(-x1)), max(0, math.ceil(-y1))
    pad_right, pad_bottom = max(0, math.ceil(x2 - width)), max(0, math.ceil(y2 - height))
    if pad_left or pad_top or pad_right or pad_bottom:
        ring = np.concatenate([rgb[:4].reshape(-1, 3), rgb[-4:].reshape(-1, 3), rgb[:, :4].reshape(-1, 3), rgb[:, -4:].reshape(-1, 3)])
        fill = np.rint(ring.mean(axis=0)).astype(np.uint8)
        canvas = np.empty((height + pad_top + pad_bottom, width + pad_left + pad_right, 3), dtype=np.uint8)
        canvas[:] = fill
        canvas[pad_top : pad_top + height, pad_left : pad_left + width] = rgb
        rgb = canvas
        x1, x2, y1, y2 = x1 + pad_left, x2 + pad_left, y1 + pad_top, y2 + pad_top
    image = Image.fromarray(rgb)
    box = (max(0.0, x1), max(0.0, y1), min(float(image.width), x2), min(float(image.height), y2))
    crop = image.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box)
    return crop, out_w / window.width
