"""Identity scores as pure functions over embeddings: no files, no models.

Conventions: embeddings are float arrays of shape ``(D,)`` or ``(N, D)``; similarities are cosine
similarities in -1..1 (1 = same direction). For ArcFace-style models a photo of the same person
typically scores 0.4-0.8 against another, different people -0.1-0.3; values from different packs
are not on the same scale.

Per image, against a reference set of ``R`` embeddings:
    ``max``   best similarity to any reference photo (the method of the seed experiments)
    ``mean``  mean similarity over all reference photos
    ``ism``   similarity to the normalised mean reference embedding (identity similarity metric)
Per group: counts, no-face rate, mean / median / std / min / max / top-3 mean of one of those,
and a seeded bootstrap confidence interval of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

AGGREGATIONS = ("max", "mean", "ism")
FACE_CHOICES = ("largest", "best")

#: Below this best match to any other reference photo, a reference photo is flagged as possibly
#: another person (measured: different people score at most ~0.28 with the test pack).
DIFFERENT_PERSON_SIMILARITY = 0.2


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale each row (or the single vector) to unit length; zero vectors stay zero."""
    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)


def similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities between rows of ``a (N, D)`` and ``b (M, D)``: shape ``(N, M)``."""
    return normalize(np.atleast_2d(a)) @ normalize(np.atleast_2d(b)).T


@dataclass(frozen=True)
class FaceScore:
    """One face against the reference set. ``best_ref`` indexes the reference array."""

    score_max: float
    score_mean: float
    score_ism: float
    best_ref: int

    def value(self, aggregation: str) -> float:
        return {"max": self.score_max, "mean": self.score_mean, "ism": self.score_ism}[aggregation]


def score_embedding(embedding: np.ndarray, references: np.ndarray) -> FaceScore:
    """Score one face embedding ``(D,)`` against reference embeddings ``(R, D)``."""
    refs = normalize(np.atleast_2d(references))
    if refs.shape[0] == 0:
        raise ValueError("the reference set is empty")
    face = normalize(np.asarray(embedding, dtype=np.float64))
    sims = refs @ face
    centroid = normalize(refs.mean(axis=0))
    best = int(np.argmax(sims))
    return FaceScore(
        score_max=float(sims[best]),
        score_mean=float(sims.mean()),
        score_ism=float(centroid @ face),
        best_ref=best,
    )


@dataclass(frozen=True)
class ImageScore:
    """The scored outcome of one image. ``face_found`` False means no usable face (not an error)."""

    face_found: bool
    n_faces: int
    face_index: int | None = None
    score: FaceScore | None = None
    memorised: bool = False

    def value(self, aggregation: str) -> float | None:
        return None if self.score is None else self.score.value(aggregation)


def score_faces(
    embeddings: Sequence[np.ndarray | None],
    references: np.ndarray,
    face_choice: str = "largest",
    aggregation: str = "max",
    memorisation_threshold: float | None = None,
) -> ImageScore:
    """Score the faces of one image (``embeddings`` ordered largest face first).

    Args:
        embeddings: one entry per detected face; ``None`` where no embedding was computed.
        references: ``(R, D)`` reference embeddings.
        face_choice: ``largest`` scores the largest face; ``best`` the face that matches best
            under ``aggregation`` (for group shots where the subject is not the largest face).
        memorisation_threshold: the highest similarity between two different reference photos;
            a face closer than that to one reference photo is flagged as memorised.
    """
    if face_choice not in FACE_CHOICES:
        raise ValueError(f"face_choice must be one of {FACE_CHOICES}, not {face_choice!r}")
    candidates = [(i, e) for i, e in enumerate(embeddings) if e is not None]
    if not candidates:
        return ImageScore(face_found=False, n_faces=len(embeddings))
    if face_choice == "largest":
        chosen = [candidates[0]]
    else:
        chosen = candidates
    scored = [(i, score_embedding(e, references)) for i, e in chosen]
    index, best = max(scored, key=lambda item: item[1].value(aggregation))
    memorised = memorisation_threshold is not None and best.score_max > memorisation_threshold
    return ImageScore(face_found=True, n_faces=len(embeddings), face_index=index, score=best, memorised=bool(memorised))


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean; reproducible for a given ``seed``.

    Returns ``None`` for no values and ``(v, v)`` for a single value.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    if data.size == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return (float(low), float(high))


@dataclass
class GroupStats:
    """Statistics of one group of images (an epoch, a strength, a folder).

    ``n_images`` counts every image in the group, ``n_errors`` those that could not be read,
    ``n_faces`` those with a scored face; ``no_face_rate`` is the share of readable images without
    a face. Score statistics cover images with a face only; they are ``None`` when there is none
    (``std`` needs two values: sample standard deviation, ddof=1).
    """

    label: str
    n_images: int
    n_errors: int
    n_faces: int
    no_face_rate: float | None
    mean: float | None
    median: float | None
    std: float | None
    min: float | None
    max: float | None
    top3_mean: float | None
    ci95: tuple[float, float] | None
    n_memorised: int = 0
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = {
            "label": self.label,
            "n_images": self.n_images,
            "n_errors": self.n_errors,
            "n_faces": self.n_faces,
            "no_face_rate": self.no_face_rate,
            "mean": self.mean,
            "median": self.median,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "top3_mean": self.top3_mean,
            "ci95": list(self.ci95) if self.ci95 is not None else None,
            "n_memorised": self.n_memorised,
        }
        data.update(self.info)
        return data


def group_statistics(
    label: str,
    scores: Sequence[float | None],
    n_errors: int = 0,
    n_memorised: int = 0,
    seed: int = 0,
    n_boot: int = 2000,
    info: dict | None = None,
) -> GroupStats:
    """Statistics of one group.

    Args:
        scores: one entry per readable image: its score, or ``None`` when it has no face.
        n_errors: images of the group that could not be read (not part of ``scores``).
    """
    values = np.asarray([s for s in scores if s is not None], dtype=np.float64)
    readable = len(scores)
    has = values.size > 0
    top = np.sort(values)[::-1][:3] if has else values
    return GroupStats(
        label=label,
        n_images=readable + n_errors,
        n_errors=n_errors,
        n_faces=int(values.size),
        no_face_rate=(readable - values.size) / readable if readable else None,
        mean=float(values.mean()) if has else None,
        median=float(np.median(values)) if has else None,
        std=float(values.std(ddof=1)) if values.size >= 2 else None,
        min=float(values.min()) if has else None,
        max=float(values.max()) if has else None,
        top3_mean=float(top.mean()) if has else None,
        ci95=bootstrap_ci(values, n_boot=n_boot, seed=seed),
        n_memorised=n_memorised,
        info=dict(info or {}),
    )


@dataclass
class Baseline:
    """How alike the reference photos are to each other: the ceiling a LoRA can hope to reach.

    ``loo[i]`` scores reference ``i`` against the other references with the chosen aggregation
    (leave-one-out); ``pairwise_max`` is the highest similarity between two different references,
    the memorisation threshold. Everything is ``None``/empty with fewer than two references.
    """

    aggregation: str
    loo: np.ndarray
    pairwise: np.ndarray
    mean: float | None
    min: float | None
    max: float | None
    pairwise_max: float | None
    outliers: list[int]


def reference_baseline(references: np.ndarray, aggregation: str = "max") -> Baseline:
    """Leave-one-out similarities of a reference set ``(R, D)`` and its likely outliers."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
    refs = normalize(np.atleast_2d(references))
    count = refs.shape[0]
    pairwise = refs @ refs.T
    if count < 2:
        return Baseline(aggregation, np.zeros(0), pairwise, None, None, None, None, [])
    loo = np.array([score_embedding(refs[i], np.delete(refs, i, axis=0)).value(aggregation) for i in range(count)])
    off_diagonal = pairwise[~np.eye(count, dtype=bool)].reshape(count, count - 1)
    return Baseline(
        aggregation=aggregation,
        loo=loo,
        pairwise=pairwise,
        mean=float(loo.mean()),
        min=float(loo.min()),
        max=float(loo.max()),
        pairwise_max=float(off_diagonal.max()),
        outliers=reference_outliers(pairwise),
    )


def reference_outliers(pairwise: np.ndarray, floor: float = DIFFERENT_PERSON_SIMILARITY) -> list[int]:
    """Indexes of reference photos that look like someone else.

    A photo is flagged when its best match to every other reference is below ``floor``, or (with
    three or more photos) when its mean similarity to the others lies far below the set's median:
    more than ``max(0.15, 3 * 1.4826 * MAD)`` under it.
    """
    count = pairwise.shape[0]
    if count < 2:
        return []
    others = pairwise[~np.eye(count, dtype=bool)].reshape(count, count - 1)
    best = others.max(axis=1)
    means = others.mean(axis=1)
    flagged = set(np.flatnonzero(best < floor).tolist()) if count >= 3 else set()
    if count == 2 and best[0] < floor:
        flagged = {0, 1}
    if count >= 3:
        median = float(np.median(means))
        spread = max(0.15, 3.0 * 1.4826 * float(np.median(np.abs(means - median))))
        flagged |= set(np.flatnonzero(means < median - spread).tolist())
    return sorted(flagged)
