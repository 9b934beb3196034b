"""ReferenceSet: the real photos of the person, as embeddings, with their own baseline.

Each reference photo contributes one face. A photo with several faces contributes the face that
agrees best with the single-face photos (the subject), or its largest face when no photo shows
the subject alone. Photos without a face are listed with the reason and left out; an empty set is
an error, since nothing can be scored against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .faces import FaceResult
from .images import relative_name
from .scoring import Baseline, normalize, reference_baseline


class NoReferencesError(ValueError):
    """No usable reference face: the message names every photo and why it was not usable."""


@dataclass
class ReferencePhoto:
    """One reference photo's outcome; ``row`` indexes :attr:`ReferenceSet.embeddings` when used."""

    path: str
    n_faces: int
    error: str | None = None
    row: int | None = None
    face_index: int | None = None
    loo: float | None = None
    outlier: bool = False

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "used": self.row is not None,
            "n_faces": self.n_faces,
            "face_index": self.face_index,
            "loo": self.loo,
            "outlier": self.outlier,
            "error": self.error,
        }


@dataclass
class ReferenceSet:
    """Reference embeddings ``(R, D)`` (unit length), the photos they came from, and the baseline."""

    embeddings: np.ndarray
    photos: list[ReferencePhoto]
    baseline: Baseline
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])

    def used_paths(self) -> list[str]:
        """Path of each embedding row, in row order."""
        by_row = {p.row: p.path for p in self.photos if p.row is not None}
        return [by_row[i] for i in range(self.n)]

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "n_photos": len(self.photos),
            "aggregation": self.baseline.aggregation,
            "baseline_mean": self.baseline.mean,
            "baseline_min": self.baseline.min,
            "baseline_max": self.baseline.max,
            "pairwise_max": self.baseline.pairwise_max,
            "files": [p.as_dict() for p in self.photos],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_results(cls, results: Sequence[FaceResult], names: Sequence[str] | None = None, aggregation: str = "max") -> "ReferenceSet":
        """Build the set from analysed reference photos (``names`` label them in messages)."""
        names = list(names) if names is not None else [str(r.path) if r.path else f"reference {i + 1}" for i, r in enumerate(results)]
        photos = [ReferencePhoto(path=name, n_faces=len(r.faces), error=r.error) for name, r in zip(names, results)]
        embedded = [[f.embedding for f in r.faces if f.embedding is not None] if r.ok else [] for r in results]
        singles = [faces[0] for faces in embedded if len(faces) == 1]
        anchor = normalize(np.mean(singles, axis=0)) if singles else None
        warnings: list[str] = []
        rows: list[np.ndarray] = []
        for photo, faces in zip(photos, embedded):
            if photo.error is not None:
                warnings.append(f"reference {photo.path} skipped: {photo.error}")
                continue
            if not faces:
                photo.error = "no face found"
                warnings.append(f"reference {photo.path} skipped: no face found")
                continue
            index = 0
            if len(faces) > 1:
                if anchor is not None:
                    index = int(np.argmax(normalize(np.asarray(faces)) @ anchor))
                    warnings.append(f"reference {photo.path} shows {len(faces)} faces; using the one that matches the other references (face {index + 1} by size)")
                else:
                    warnings.append(f"reference {photo.path} shows {len(faces)} faces; using the largest")
            photo.face_index, photo.row = index, len(rows)
            rows.append(np.asarray(faces[index], dtype=np.float32))
        if not rows:
            detail = "\n".join(f"  - {p.path}: {p.error}" for p in photos) or "  (no image files)"
            raise NoReferencesError(
                "No reference photo has a usable face, so there is nothing to compare against:\n"
                + detail
                + "\nUse clear, front-facing photos of the person (one face each)."
            )
        embeddings = normalize(np.stack(rows)).astype(np.float32)
        baseline = reference_baseline(embeddings, aggregation)
        by_row = {p.row: p for p in photos if p.row is not None}
        for row, value in enumerate(baseline.loo):
            by_row[row].loo = float(value)
        for row in baseline.outliers:
            by_row[row].outlier = True
            warnings.append(
                f"reference {by_row[row].path} looks like a different person from the other references "
                f"(leave-one-out similarity {by_row[row].loo:.3f}); check it or remove it"
            )
        if len(rows) == 1:
            warnings.append("only one usable reference photo: no baseline and no memorisation check; 5-20 photos are better")
        return cls(embeddings=embeddings, photos=photos, baseline=baseline, warnings=warnings)


def reference_names(paths: Sequence[Path], root: Path | None) -> list[str]:
    """Short names for reference photos: relative to their folder when there is one."""
    if root is None:
        return [str(p) for p in paths]
    return [relative_name(p, root) for p in paths]
