"""Who is in each photo: the subject as the largest identity cluster or from reference photos,
several identities at once, identity outliers, and the coverage of identity subsets.

Pure functions over unit embeddings ``(N, D)``; cosine similarity is a dot product.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..scoring import normalize

#: Identity subsets are listed up to this many identities (2**8 - 1 = 255 rows).
MAX_COVERAGE_IDENTITIES = 8


@dataclass
class Cluster:
    """One identity found among all faces: its unit mean embedding and its member faces.

    ``members`` are ``(photo index, face index)`` pairs, at most one face per photo.
    """

    centroid: np.ndarray
    members: list[tuple[int, int]]


def _best_per_photo(keys: Sequence[tuple[int, int]], similarity: np.ndarray, threshold: float) -> list[int]:
    """Indexes of faces at or above ``threshold``, keeping only the most similar face per photo."""
    best: dict[int, int] = {}
    for index in np.flatnonzero(similarity >= threshold):
        photo = keys[index][0]
        if photo not in best or similarity[index] > similarity[best[photo]]:
            best[photo] = int(index)
    return sorted(best.values())


def grow_cluster(embeddings: np.ndarray, keys: Sequence[tuple[int, int]], seed: np.ndarray, threshold: float, rounds: int = 5) -> Cluster:
    """Faces similar to ``seed`` (at most one per photo), re-centred on their mean a few times."""
    centroid = normalize(seed)
    chosen: list[int] = []
    for _ in range(rounds):
        similarity = embeddings @ centroid
        new = _best_per_photo(keys, similarity, threshold)
        if not new:
            break
        if new == chosen:
            break
        chosen = new
        centroid = normalize(embeddings[chosen].mean(axis=0))
    return Cluster(centroid=centroid, members=[tuple(keys[i]) for i in chosen])


def find_clusters(embeddings: np.ndarray, keys: Sequence[tuple[int, int]], threshold: float, count: int = 2) -> list[Cluster]:
    """The ``count`` largest identity clusters, largest first (by the number of photos).

    Each cluster starts at the face with the most neighbours at or above ``threshold`` (the
    densest point, so a chain of look-alikes cannot merge two people), grows to every face close
    to its mean, and its faces are removed before the next one is sought.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    remaining = np.arange(len(keys))
    clusters: list[Cluster] = []
    while remaining.size and len(clusters) < count:
        sub = embeddings[remaining]
        seed = int(np.argmax(neighbour_counts(sub, threshold)))  # first on ties: deterministic
        cluster = grow_cluster(sub, [keys[i] for i in remaining], sub[seed], threshold)
        if not cluster.members:
            cluster = Cluster(centroid=normalize(sub[seed]), members=[tuple(keys[remaining[seed]])])
        clusters.append(cluster)
        taken = set(cluster.members)
        remaining = np.array([i for i in remaining if tuple(keys[i]) not in taken], dtype=int)
    return clusters


def neighbour_counts(embeddings: np.ndarray, threshold: float, block: int = 2048) -> np.ndarray:
    """For each row of ``(N, D)``, how many rows (itself included) are at least ``threshold``
    similar; computed in blocks so 20,000 faces need 160 MB, not an N x N matrix."""
    matrix = np.asarray(embeddings, dtype=np.float32)
    counts = np.zeros(len(matrix), dtype=np.int64)
    for start in range(0, len(matrix), block):
        counts[start : start + block] = (matrix[start : start + block] @ matrix.T >= threshold).sum(axis=1)
    return counts


def assign_faces(
    photo_embeddings: Sequence[np.ndarray],
    centroids: Mapping[str, np.ndarray],
    threshold: float,
) -> tuple[dict[str, int], dict[str, float]]:
    """Which face of one photo is which identity.

    Args:
        photo_embeddings: ``(F, D)`` unit embeddings of the photo's faces (largest first).
        centroids: identity name -> unit mean embedding.

    Returns:
        ``(assigned, best)``: identity -> face index for identities present (similarity at or
        above ``threshold``; greedily by similarity, so each face is one person and each person one
        face), and identity -> best similarity of any face (for the report).
    """
    names = list(centroids)
    faces = np.asarray(photo_embeddings, dtype=np.float64).reshape(-1, next(iter(centroids.values())).shape[0]) if names else np.zeros((0, 0))
    if not names or faces.shape[0] == 0:
        return {}, {name: float("nan") for name in names}
    matrix = faces @ np.stack([centroids[n] for n in names]).T  # (F, I)
    best = {name: float(matrix[:, j].max()) for j, name in enumerate(names)}
    assigned: dict[str, int] = {}
    used: set[int] = set()
    for flat in np.argsort(-matrix, axis=None, kind="stable"):
        face, j = divmod(int(flat), len(names))
        if matrix[face, j] < threshold:
            break
        if face in used or names[j] in assigned:
            continue
        assigned[names[j]] = face
        used.add(face)
    return assigned, best


def outliers(similarities: Sequence[float], mad_factor: float = 3.0, floor: float = 0.15) -> list[int]:
    """Indexes whose similarity to the identity's mean lies far below the others'.

    Far means more than ``max(floor, mad_factor * 1.4826 * MAD)`` under the median (the robust
    version of "3 standard deviations"); needs at least 4 values.
    """
    values = np.asarray(similarities, dtype=np.float64)
    if values.size < 4:
        return []
    median = float(np.median(values))
    spread = max(floor, mad_factor * 1.4826 * float(np.median(np.abs(values - median))))
    return [int(i) for i in np.flatnonzero(values < median - spread)]


@dataclass
class CoverageRow:
    """Kept images showing exactly ``identities`` (and nobody else of the set), and those showing
    at least them."""

    identities: tuple[str, ...]
    exactly: int
    at_least: int

    def as_dict(self) -> dict:
        return {"identities": list(self.identities), "exactly": self.exactly, "at_least": self.at_least}


def coverage_matrix(names: Sequence[str], labels: Sequence[frozenset[str]]) -> list[CoverageRow]:
    """Counts for every non-empty subset of ``names`` (singles, pairs, ..., all), in that order.

    ``labels`` holds the identities present in each kept image. Seed 003's inclusion-exclusion
    idea: a LoRA that must draw any combination of the people needs photos of each combination,
    so a subset with ``exactly == 0`` is worth a warning.
    """
    names = list(names)[:MAX_COVERAGE_IDENTITIES]
    rows = []
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            wanted = frozenset(subset)
            exactly = sum(1 for label in labels if label & frozenset(names) == wanted)
            at_least = sum(1 for label in labels if wanted <= label)
            rows.append(CoverageRow(identities=tuple(subset), exactly=exactly, at_least=at_least))
    return rows
