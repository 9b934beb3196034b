"""Import of face boxes someone else already drew (a photo manager's face tags).

Format: CSV (comma, semicolon or tab separated, with a header) or JSON (a list of objects, or an
object with a ``markers`` list) with the columns ``file, x, y, w, h`` and optionally ``name``.
``x, y`` are the box's top-left corner and ``w, h`` its size, all relative to the photo as it is
displayed (after EXIF rotation), 0..1. ``file`` is matched against the photo's path relative to
``--photos``, then against a path suffix, then against the bare file name when that is unique.

PhotoPrism keeps exactly this in its ``markers`` table (seed 004). Export one person's face
markers from its index database with::

    SELECT f.file_name AS file, m.x, m.y, m.w, m.h, s.subj_name AS name
    FROM markers m
    JOIN files f ON f.file_uid = m.file_uid
    LEFT JOIN subjects s ON s.subj_uid = m.subj_uid
    WHERE m.marker_type = 'face' AND m.marker_invalid = 0 AND s.subj_name = 'Alice';

e.g. ``sqlite3 -header -csv storage/index.db "<query>" > alice.csv`` (SQLite) or
``mariadb -B photoprism -e "<query>" > alice.tsv`` (MariaDB, tab separated); drop the
``s.subj_name = ...`` condition and name each person with ``--identity`` to import everyone.
``file_name`` is relative to PhotoPrism's originals folder: pass that folder as ``--photos``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

REQUIRED_COLUMNS = ("file", "x", "y", "w", "h")


class FaceBoxError(ValueError):
    """The face-box file cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class FaceBox:
    """One imported face box, relative to the displayed photo (0..1)."""

    file: str
    x: float
    y: float
    w: float
    h: float
    name: str | None = None
    row: int = 0

    def to_pixels(self, size: tuple[int, int]) -> np.ndarray:
        """``(x1, y1, x2, y2)`` in pixels of a photo of ``size = (W, H)``."""
        width, height = size
        return np.array([self.x * width, self.y * height, (self.x + self.w) * width, (self.y + self.h) * height], dtype=np.float64)


def _rows_from_csv(text: str) -> Iterable[dict]:
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    for row in reader:
        yield {(k or "").strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}


def _rows_from_json(text: str, path: Path) -> Iterable[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FaceBoxError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict):
        data = data.get("markers", data.get("boxes"))
    if not isinstance(data, list):
        raise FaceBoxError(f"{path}: expected a list of {{file, x, y, w, h}} objects (or {{\"markers\": [...]}})")
    for item in data:
        if not isinstance(item, dict):
            raise FaceBoxError(f"{path}: every entry must be an object with file, x, y, w, h; got {item!r}")
        yield {str(k).strip().lower(): v for k, v in item.items()}


def load_face_boxes(path: Path) -> list[FaceBox]:
    """Read and validate a face-box file; raises :class:`FaceBoxError` naming the bad row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FaceBoxError(f"{path}: cannot be read ({exc})") from exc
    is_json = path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{")
    rows = _rows_from_json(text, path) if is_json else _rows_from_csv(text)
    boxes: list[FaceBox] = []
    for number, row in enumerate(rows, start=2 if not is_json else 1):
        missing = [c for c in REQUIRED_COLUMNS if row.get(c) in (None, "")]
        if missing:
            raise FaceBoxError(f"{path}, entry {number}: missing {', '.join(missing)} (columns needed: file, x, y, w, h[, name])")
        try:
            x, y, w, h = (float(row[c]) for c in ("x", "y", "w", "h"))
        except (TypeError, ValueError) as exc:
            raise FaceBoxError(f"{path}, entry {number}: x, y, w, h must be numbers ({exc})") from exc
        if not (w > 0 and h > 0 and -0.5 <= x <= 1.0 and -0.5 <= y <= 1.0 and w <= 1.5 and h <= 1.5):
            raise FaceBoxError(
                f"{path}, entry {number}: x={x}, y={y}, w={w}, h={h} is not a box in relative coordinates (0..1; "
                f"pixel boxes must be divided by the photo's width and height)"
            )
        name = row.get("name")
        boxes.append(FaceBox(file=str(row["file"]), x=x, y=y, w=w, h=h, name=str(name) if name not in (None, "") else None, row=number))
    return boxes


def match_boxes(boxes: Sequence[FaceBox], relative_paths: Sequence[str]) -> tuple[dict[str, list[FaceBox]], list[str]]:
    """Attach boxes to photos (``relative_paths`` as posix strings relative to ``--photos``).

    Returns ``(by photo, warnings)``; a box whose file matches no photo, or several by name only,
    is reported and ignored.
    """
    exact = {p: p for p in relative_paths}
    by_name: dict[str, list[str]] = {}
    for rel in relative_paths:
        by_name.setdefault(PurePosixPath(rel).name, []).append(rel)
    matched: dict[str, list[FaceBox]] = {}
    unmatched: list[str] = []
    for box in boxes:
        key = box.file.replace("\\", "/")
        while key.startswith("./"):
            key = key[2:]
        key = key.lstrip("/")
        target = exact.get(key)
        if target is None:
            suffix = [p for p in relative_paths if p.endswith("/" + key) or key.endswith("/" + p)]
            if len(suffix) == 1:
                target = suffix[0]
        if target is None:
            candidates = by_name.get(PurePosixPath(key).name, [])
            if len(candidates) == 1:
                target = candidates[0]
        if target is None:
            unmatched.append(box.file)
            continue
        matched.setdefault(target, []).append(box)
    warnings = []
    if unmatched:
        shown = ", ".join(sorted(set(unmatched))[:5])
        more = len(set(unmatched)) - 5
        warnings.append(
            f"{len(unmatched)} face box(es) name files not found under --photos (or ambiguous by name): {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    return matched, warnings


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
