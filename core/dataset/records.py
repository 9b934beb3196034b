"""What the dataset pipeline knows about each photo, and what it returns (:class:`PrepareResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .framing import CropWindow
from .identity import CoverageRow
from .quality import FaceMeasures

#: Rejection codes, in the order the pipeline checks them.
REJECTION_CODES = {
    "unreadable": "the file could not be read as an image",
    "half_transparent": "much of the photo is half-transparent: on any background its colours are washed out",
    "no_face": "no face was detected",
    "not_subject": "the subject (or none of the identities) is not in the photo",
    "face_too_small": "the face is smaller than min_face_px",
    "blurry": "the face is blurry (sharpness below min_sharpness)",
    "extreme_pose": "the head is turned or tilted beyond max_yaw_deg / max_pitch_deg",
    "underexposed": "the face is too dark",
    "overexposed": "the face is too bright",
    "other_face": "another person's face cannot be kept out of any crop",
    "no_framing": "no requested framing fits without more than max_padding of padding",
    "duplicate": "a near-duplicate of a better photo that was kept",
    "over_limit": "not among the best max_images photos",
    "render_failed": "the crop could not be written",
}


@dataclass
class FaceInfo:
    """One detected face in source-image pixels (``embedding`` is ``None`` beyond the engine's
    ``max_faces``; such faces still count as other people's faces when cropping)."""

    box: np.ndarray
    kps: np.ndarray
    det_score: float
    embedding: np.ndarray | None
    measures: FaceMeasures | None

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclass
class PhotoRecord:
    """One source photo through the pipeline (internal; reports use :meth:`PrepareResult.as_dict`)."""

    path: Path
    rel: str
    sha256: str = ""
    size: tuple[int, int] = (0, 0)
    error: str | None = None
    transparent_share: float = 0.0  # of the pixels, see LoadedImage
    half_transparent_share: float = 0.0
    faces: list[FaceInfo] = field(default_factory=list)
    phash: int | None = None
    thumb: bytes | None = None  # JPEG of the photo at THUMB_SIDE px, for the contact sheet
    identities: dict[str, int] = field(default_factory=dict)
    similarity: dict[str, float] = field(default_factory=dict)
    boxed: bool = False
    code: str | None = None
    reason: str | None = None
    windows: dict[str, CropWindow] = field(default_factory=dict)
    score: float = 0.0
    outlier: bool = False


@dataclass
class KeptImage:
    """One image written to the dataset.

    Attributes:
        source: the photo's path relative to ``--photos`` (posix).
        output: the image's path relative to ``--out`` (``img/<repeats>_<...>/<name>.png``).
        caption: the text of the ``.txt`` beside it.
        identities: trigger words of the people in it (config order).
        framing: ``close-up`` | ``head-and-shoulders`` | ``half-body``.
        window: the crop in source pixels, with its padding share.
        faces: ``{trigger: [x1, y1, x2, y2]}`` source-pixel boxes of the framed faces.
        similarity: ``{trigger: cosine similarity}`` of each face to that identity's mean.
        score: the ranking score (0..1).
        upscale: output pixels per source pixel (> 1 means enlarged).
        outlier: flagged as looking less like the person than the other photos.
        measures: ``{trigger: face measures}``.
        from_box: the person's face was chosen by an imported face box.
    """

    source: str
    output: str
    caption: str
    identities: list[str]
    framing: str
    window: CropWindow
    faces: dict[str, list[float]]
    similarity: dict[str, float]
    score: float
    upscale: float
    outlier: bool
    measures: dict[str, dict]
    from_box: bool = False

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "output": self.output,
            "caption": self.caption,
            "identities": list(self.identities),
            "framing": self.framing,
            "window": self.window.as_dict(),
            "faces": self.faces,
            "similarity": {k: round(v, 4) for k, v in self.similarity.items()},
            "score": round(self.score, 4),
            "upscale": round(self.upscale, 3),
            "outlier": self.outlier,
            "measures": self.measures,
            "from_box": self.from_box,
        }


@dataclass
class Rejection:
    """A photo left out, and why (``code`` is a key of :data:`REJECTION_CODES`)."""

    source: str
    code: str
    reason: str
    n_faces: int = 0

    def as_dict(self) -> dict:
        return {"source": self.source, "code": self.code, "reason": self.reason, "n_faces": self.n_faces}


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` did. ``files`` maps names (``dataset.toml``, ``report.json``,
    ``report.html``, ...) to their paths; ``unchanged`` is True when the output already held
    exactly this result (nothing was rewritten); ``previous`` is where an earlier, different output
    was moved."""

    out: Path
    kept: list[KeptImage]
    rejected: list[Rejection]
    identities: list[dict]
    coverage: list[CoverageRow]
    repeats: int
    steps_per_epoch: int
    subsets: list[dict]
    reg_images: int
    settings: dict
    model: dict
    warnings: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    unchanged: bool = False
    previous: Path | None = None
    timings: dict = field(default_factory=dict)
    n_photos: int = 0

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rejection in self.rejected:
            counts[rejection.code] = counts.get(rejection.code, 0) + 1
        return counts

    @property
    def nothing_kept(self) -> str | None:
        """Why no photo was kept (a sentence naming the rejection reasons, most frequent first), or
        ``None`` when some were."""
        if self.kept:
            return None
        counts = sorted(self.counts().items(), key=lambda item: (-item[1], item[0]))
        reasons = "; ".join(f"{n} {code}: {REJECTION_CODES.get(code, code)}" for code, n in counts)
        return f"no photo was kept of {self.n_photos}: {reasons or 'none could be used'}"

    def as_dict(self) -> dict:
        """The ``report.json`` shape. Deterministic: no times, so a re-run with the same input
        writes the same bytes (``timings`` stay on the result object)."""
        from .. import __version__

        return {
            "tool": "likeness prepare",
            "version": __version__,
            "settings": self.settings,
            "model": self.model,
            "summary": {
                "photos": self.n_photos,
                "kept": len(self.kept),
                "rejected": len(self.rejected),
                "rejected_by_reason": dict(sorted(self.counts().items())),
                "repeats": self.repeats,
                "steps_per_epoch": self.steps_per_epoch,
                "reg_images": self.reg_images,
            },
            "rejection_codes": REJECTION_CODES,
            "identities": self.identities,
            "coverage": [row.as_dict() for row in self.coverage],
            "subsets": self.subsets,
            "kept": [k.as_dict() for k in self.kept],
            "rejected": [r.as_dict() for r in self.rejected],
            "warnings": list(self.warnings),
        }
