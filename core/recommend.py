"""Which sweep cell (checkpoint × strength) to use, and how sure we are.

Pure functions on score tables (numpy only: this runs inside every host, A1111's pins included).
A *cell* is one LoRA checkpoint at one strength, or the no-LoRA baseline; its images are the same
seeds × prompts in every cell, so two cells can be compared image by image (a paired comparison,
much less noisy than comparing two means).

The answer: the cell with the highest mean identity (mean over images with a face of each image's
best cosine similarity to the reference photos) among cells that find a face often enough; its
bootstrap 95% CI; whether it beats the runner-up beyond noise (the CI of the paired difference
excludes 0); the floor (no-LoRA baseline) and the ceiling (how alike the reference photos are to
each other); warnings for memorisation and for no-face rates that rise with training.

Everything random is drawn from ``numpy.random.default_rng(seed)``: the same cells and seed give
the same recommendation, to the last digit.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .scoring import GroupStats, bootstrap_ci, group_statistics

NO_LORA = "no LoRA"

#: A no-face rate that climbs by at least this much (absolute, 0..1) from an earlier checkpoint to
#: the last one at the same strength is flagged: over-training tends to distort faces until the
#: detector stops finding them.
NO_FACE_RISE = 0.25
#: ... and only when the last checkpoint's no-face rate is itself at least this high.
NO_FACE_RISE_MIN_RATE = 0.25
#: Prompt adherence (CLIP cosine) this much lower than a cell of similar identity is worth a warning
#: (CLIP image-text cosines of matching pairs sit around 0.2-0.35, so 0.02 is a visible step).
ADHERENCE_GAP = 0.02
#: How many of the best-ranked cells are checked for memorisation.
MEMORISATION_TOP = 3

# Tolerance for the threshold comparisons on rates made of small counts (1/4 - 0 == 0.25 exactly,
# but 0.7 - 0.45 is not).
_EPS = 1e-9


@dataclass
class Cell:
    """The images of one sweep cell.

    Attributes:
        checkpoint: axis label of the checkpoint (``e10``, ``final (e20)``, ``exp_e30``), or :data:`NO_LORA`.
        strength: LoRA strength (multiplier); ``None`` for the no-LoRA baseline.
        epoch: the checkpoint's epoch when known (curves are drawn against it).
        scores: one entry per image: its identity score (cosine, -1..1), ``None`` when no face was found.
        keys: one pairing key per image (e.g. ``(seed, prompt_index)``); images with equal keys in two
            cells were generated from the same noise and prompt. ``None``: unpaired.
        memorised: how many images were flagged as possible memorisation.
        adherence: optional prompt-adherence (CLIP) score per image, ``None`` entries allowed.
        order: position of the checkpoint on the epoch axis (0, 1, …); the no-LoRA cell uses -1.
        missing: one entry per image the host failed to make (its generation raised), saying why. Such an
            image has no score at all: it counts as missing (an error in the statistics), never as "no face".
    """

    checkpoint: str
    strength: float | None
    epoch: int | None = None
    scores: list[float | None] = field(default_factory=list)
    keys: list[Hashable] | None = None
    memorised: int = 0
    adherence: list[float | None] | None = None
    order: int = 0
    missing: list[str] = field(default_factory=list)
    show_strength: bool = True
    """False where every cell has the same strength by construction (a trainer's sample rounds): the label
    is the checkpoint alone (``step 750``)."""

    @property
    def is_baseline(self) -> bool:
        return self.strength is None

    @property
    def label(self) -> str:
        """``e10 @ 0.8`` (``step 750`` without :attr:`show_strength`); ``no LoRA`` for the baseline."""
        if self.is_baseline:
            return NO_LORA
        return f"{self.checkpoint} @ {self.strength:g}" if self.show_strength else self.checkpoint


@dataclass
class CellResult:
    """A cell with its statistics (the core's :class:`~.scoring.GroupStats`) and mean adherence."""

    cell: Cell
    stats: GroupStats
    adherence: float | None = None
    eligible: bool = True
    """False when the cell's no-face rate is above ``max_no_face`` (it cannot be recommended)."""
    ci: tuple[float, float] | None = None
    """Bootstrap CI of the mean identity at the recommendation's ``level`` (``stats.ci95`` is always 95%)."""
    rank: int | None = None
    """1 = recommended, 2 = runner-up, …; ``None`` for cells that cannot be recommended."""
    reason: str | None = None
    """Why the cell cannot be recommended (``None`` when it can)."""

    @property
    def label(self) -> str:
        return self.cell.label

    @property
    def mean(self) -> float | None:
        return self.stats.mean

    def as_dict(self) -> dict:
        cell = self.cell
        return {
            "label": cell.label,
            "checkpoint": cell.checkpoint,
            "strength": _float(cell.strength),
            "epoch": None if cell.epoch is None else int(cell.epoch),
            "order": int(cell.order),
            "baseline": cell.is_baseline,
            "stats": _json_safe(self.stats.as_dict()),
            "ci": _pair(self.ci),
            "adherence": _float(self.adherence),
            "eligible": bool(self.eligible),
            "rank": self.rank,
            "reason": self.reason,
        }

    def row(self) -> dict:
        """One table row (see :meth:`Recommendation.table`)."""
        stats = self.stats
        low, high = self.ci if self.ci is not None else (None, None)
        return {
            "label": self.cell.label,
            "checkpoint": self.cell.checkpoint,
            "strength": _float(self.cell.strength),
            "epoch": None if self.cell.epoch is None else int(self.cell.epoch),
            "n": stats.n_images,
            "faces": stats.n_faces,
            "no_face_rate": _float(stats.no_face_rate),
            "mean": _float(stats.mean),
            "ci_low": _float(low),
            "ci_high": _float(high),
            "median": _float(stats.median),
            "min": _float(stats.min),
            "max": _float(stats.max),
            "memorised": stats.n_memorised,
            "adherence": _float(self.adherence),
            "eligible": bool(self.eligible),
            "rank": self.rank,
        }


TABLE_COLUMNS = (
    "label", "checkpoint", "strength", "epoch", "n", "faces", "no_face_rate", "mean", "ci_low", "ci_high",
    "median", "min", "max", "memorised", "adherence", "eligible", "rank",
)


@dataclass
class Recommendation:
    """The recommended cell and the evidence (``as_dict`` is the ``recommendation.json`` shape)."""

    best: CellResult | None
    runner_up: CellResult | None
    difference: float | None
    """best mean − runner-up mean (paired over common keys when both cells have keys)."""
    difference_ci: tuple[float, float] | None
    decisive: bool
    """True when ``difference_ci`` lies above 0: the best cell beats the runner-up beyond noise."""
    floor: float | None
    """Mean identity of the no-LoRA baseline cell (what the base model does without the LoRA)."""
    ceiling: float | None
    """Reference baseline mean (how alike the reference photos are to each other)."""
    cells: list[CellResult]
    """Every cell, the baseline included, in sweep order (checkpoint order, then strength)."""
    warnings: list[str] = field(default_factory=list)
    level: float = 0.95
    trade_off: list[CellResult] = field(default_factory=list)
    """Identity-vs-prompt-adherence Pareto front of the eligible cells (no other eligible cell is at
    least as good on both and better on one), highest identity first; empty without adherence scores."""
    paired: bool = False
    """True when the difference was bootstrapped over images paired by key."""
    n_pairs: int = 0
    """Keys both cells have a face for (the paired sample size; 0 when unpaired)."""
    reason: str | None = None
    """Why there is no recommendation (``best`` is ``None``)."""
    max_no_face: float = 0.5

    def lines(self, warning_prefix: str = "warning: ") -> list[str]:
        """The headline, then one line per warning (what a node output, a grid band or a terminal shows)."""
        return [self.headline()] + [f"{warning_prefix}{w}" for w in self.warnings]

    def headline(self) -> str:
        """One line for a terminal, a node output or under a grid, e.g.
        ``Recommended: e30 @ 0.8 — identity 0.612 (95% CI 0.581–0.640); beats e40 @ 0.8 by 0.031 (95% CI 0.010–0.052).
        Floor (no LoRA) 0.05, ceiling (reference photos) 0.81.``; when the difference's CI reaches 0:
        ``…; within noise of e40 @ 0.8 (difference 0.004, 95% CI -0.010–0.018). …``; without an eligible
        cell: ``No recommendation: <reason>. …``. Floor and ceiling are left out when unknown."""
        context = []
        if self.floor is not None:
            context.append(f"floor (no LoRA) {self.floor:.2f}")
        if self.ceiling is not None:
            context.append(f"ceiling (reference photos) {self.ceiling:.2f}")
        tail = f" {context[0][:1].upper()}{', '.join(context)[1:]}." if context else ""
        if self.best is None:
            return f"No recommendation: {self.reason or 'no cell can be recommended'}.{tail}"
        ci_name = _ci_name(self.level)
        text = f"Recommended: {self.best.label} — identity {self.best.mean:.3f}"
        if self.best.ci is not None:
            text += f" ({ci_name} {_range(self.best.ci)})"
        if self.runner_up is None or self.difference is None:
            text += "; the only cell that can be recommended (no runner-up to compare with)."
        elif self.decisive:
            text += f"; beats {self.runner_up.label} by {self.difference:.3f} ({ci_name} {_range(self.difference_ci)})."
        else:
            text += (
                f"; within noise of {self.runner_up.label} (difference {self.difference:.3f}, "
                f"{ci_name} {_range(self.difference_ci)})."
            )
        return text + tail

    def table(self) -> list[dict]:
        """One row per cell in sweep order, keys :data:`TABLE_COLUMNS` (for CSV and display)."""
        return [result.row() for result in self.cells]

    def as_dict(self) -> dict:
        return {
            "headline": self.headline(),
            "best": None if self.best is None else self.best.label,
            "runner_up": None if self.runner_up is None else self.runner_up.label,
            "difference": _float(self.difference),
            "difference_ci": _pair(self.difference_ci),
            "decisive": bool(self.decisive),
            "paired": bool(self.paired),
            "n_pairs": int(self.n_pairs),
            "floor": _float(self.floor),
            "ceiling": _float(self.ceiling),
            "level": float(self.level),
            "max_no_face": float(self.max_no_face),
            "reason": self.reason,
            "warnings": list(self.warnings),
            "trade_off": [result.label for result in self.trade_off],
            "cells": [result.as_dict() for result in self.cells],
        }


def recommend(
    cells: Sequence[Cell],
    ceiling: float | None = None,
    max_no_face: float = 0.5,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Recommendation:
    """Rank the cells by mean identity and say how sure the choice is (see the module docstring).

    Args:
        cells: the sweep's cells in sweep order (:func:`cells_from_records` gives that order); the
            no-LoRA baseline (``strength None``) gives the floor and is never recommended.
        ceiling: the reference baseline mean (:func:`~.scoring.reference_baseline`), ``None`` if unknown.
        max_no_face: a LoRA cell whose share of images without a face is above this (0..1) cannot be
            recommended, however high its mean.
        n_boot: bootstrap resamples for every CI; level: their coverage (0.95 = 95% CI).
        seed: seeds every bootstrap, so the result is reproducible.

    Ties on the mean are broken by the higher CI low bound, then the lower no-face rate, then the
    earlier cell in sweep order.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie between 0 and 1 (e.g. 0.95), not {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, not {n_boot!r}")
    if not 0.0 <= max_no_face <= 1.0:
        raise ValueError(f"max_no_face is a share of images (0..1), not {max_no_face!r}")

    results = [_cell_result(cell, max_no_face, n_boot, level, seed) for cell in cells]
    baselines = [r for r in results if r.cell.is_baseline]
    floor = baselines[0].mean if baselines else None

    index = {id(r): i for i, r in enumerate(results)}
    ranked = sorted(
        (r for r in results if r.eligible),
        # Means equal up to float rounding are ties ([0.4, 0.8] and [0.6, 0.6] must tie).
        key=lambda r: (-round(r.mean, 9), -round(r.ci[0], 9), r.stats.no_face_rate, index[id(r)]),
    )
    for rank, result in enumerate(ranked, start=1):
        result.rank = rank

    recommendation = Recommendation(
        best=ranked[0] if ranked else None,
        runner_up=ranked[1] if len(ranked) > 1 else None,
        difference=None,
        difference_ci=None,
        decisive=False,
        floor=floor,
        ceiling=None if ceiling is None else float(ceiling),
        cells=results,
        level=level,
        max_no_face=max_no_face,
    )
    warnings = recommendation.warnings
    if not ranked:
        # The reason is in the headline (and ``reason``); repeating it as a warning printed it twice under every grid.
        recommendation.reason = _no_recommendation_reason(results, max_no_face)
    if recommendation.best is not None and recommendation.runner_up is not None:
        _compare(recommendation, n_boot, level, seed)

    warnings.extend(_memorisation_warnings(ranked))
    warnings.extend(_rising_no_face_warnings(results))
    best = recommendation.best
    if best is not None:
        warnings.extend(_best_cell_warnings(recommendation, results))
    recommendation.trade_off = _pareto_front(ranked)
    warnings.extend(_adherence_warnings(ranked, n_boot, level, seed))
    return recommendation


def cells_from_records(records: Iterable[Mapping]) -> list[Cell]:
    """Cells from flat per-image records (what hosts hold): keys ``checkpoint``, ``strength`` (None =
    no LoRA), optional ``epoch``, ``score`` (None = no face), optional ``key``, ``memorised``,
    ``adherence``. Cells come out in first-seen checkpoint order (``order``), strengths ascending.
    A record with ``missing`` (why the host made no image) stands for an image that does not exist: it
    adds to the cell's :attr:`Cell.missing`, not to its scores.

    The no-LoRA baseline comes first (``order`` -1, checkpoint :data:`NO_LORA`). When records carry an
    integer ``order`` (as :class:`~.sweep.results.SweepImage` does), checkpoints are placed by it
    (first-seen order breaks ties) and then renumbered 0, 1, …. A cell gets ``keys`` only when every
    one of its records has a ``key`` (JSON lists become tuples); ``adherence`` when any record has
    one. Objects with those attributes (``SweepImage``) are accepted as well as mappings.
    """
    groups: dict[tuple[str, float | None], dict] = {}
    checkpoint_rank: dict[str, tuple[float, int]] = {}
    for number, record in enumerate(records, start=1):
        strength = _get(record, "strength")
        if strength is None:
            checkpoint, strength = NO_LORA, None
        else:
            checkpoint = _get(record, "checkpoint")
            if checkpoint is None or checkpoint == "":
                raise ValueError(f"record {number}: an image made with a LoRA (strength {strength}) names no 'checkpoint'")
            checkpoint = str(checkpoint)
            strength = float(strength)
            if checkpoint not in checkpoint_rank:
                explicit = _get(record, "order")
                explicit = float(explicit) if isinstance(explicit, (int, np.integer)) and explicit >= 0 else math.inf
                checkpoint_rank[checkpoint] = (explicit, len(checkpoint_rank))
        group = groups.setdefault(
            (checkpoint, strength),
            {"epoch": None, "scores": [], "keys": [], "memorised": 0, "adherence": [], "missing": []},
        )
        epoch = _get(record, "epoch")
        if group["epoch"] is None and epoch is not None:
            group["epoch"] = int(epoch)
        missing = _get(record, "missing")
        if missing:
            group["missing"].append(str(missing))
            continue
        score = _get(record, "score")
        group["scores"].append(None if score is None else float(score))
        key = _get(record, "key")
        group["keys"].append(tuple(key) if isinstance(key, list) else key)
        group["memorised"] += int(bool(_get(record, "memorised")))
        adherence = _get(record, "adherence")
        group["adherence"].append(None if adherence is None else float(adherence))

    ordered = sorted(checkpoint_rank, key=checkpoint_rank.__getitem__)
    position = {name: i for i, name in enumerate(ordered)}
    cells = []
    for (checkpoint, strength), group in groups.items():
        keys = group["keys"] if all(k is not None for k in group["keys"]) else None
        adherence = group["adherence"] if any(a is not None for a in group["adherence"]) else None
        cells.append(
            Cell(
                checkpoint=checkpoint,
                strength=strength,
                epoch=group["epoch"],
                scores=group["scores"],
                keys=keys,
                memorised=group["memorised"],
                adherence=adherence,
                order=-1 if strength is None else position[checkpoint],
                missing=group["missing"],
            )
        )
    cells.sort(key=lambda c: (c.order, -math.inf if c.strength is None else c.strength))
    return cells


# ---------------------------------------------------------------------------------------------
# Statistics


def _cell_result(cell: Cell, max_no_face: float, n_boot: int, level: float, seed: int) -> CellResult:
    if cell.keys is not None and len(cell.keys) != len(cell.scores):
        raise ValueError(f"{cell.label}: {len(cell.keys)} keys for {len(cell.scores)} scores (one key per image)")
    info = {"checkpoint": cell.checkpoint, "strength": _float(cell.strength), "epoch": cell.epoch}
    stats = group_statistics(
        cell.label, cell.scores, n_errors=len(cell.missing), n_memorised=int(cell.memorised), seed=seed, n_boot=n_boot,
        info=info,
    )
    faces = [float(s) for s in cell.scores if s is not None]
    ci = stats.ci95 if level == 0.95 else bootstrap_ci(faces, n_boot=n_boot, level=level, seed=seed)
    adherence_values = [float(a) for a in (cell.adherence or []) if a is not None]
    result = CellResult(
        cell=cell,
        stats=stats,
        adherence=float(np.mean(adherence_values)) if adherence_values else None,
        ci=ci,
    )
    if cell.is_baseline:
        result.eligible, result.reason = False, "the no-LoRA baseline (the floor)"
    elif not cell.scores and cell.missing:
        result.eligible, result.reason = False, f"no image was made ({cell.missing[0]})"
    elif not cell.scores:
        result.eligible, result.reason = False, "no images"
    elif stats.n_faces == 0:
        result.eligible, result.reason = False, "no face found in any image"
    elif stats.no_face_rate > max_no_face + _EPS:
        result.eligible, result.reason = (
            False,
            f"no face in {stats.no_face_rate:.0%} of its images (more than the {max_no_face:.0%} allowed)",
        )
    return result


def _compare(recommendation: Recommendation, n_boot: int, level: float, seed: int) -> None:
    """Difference best − runner-up and its bootstrap CI: paired over common keys when possible."""
    difference, ci, n_pairs = _difference(recommendation.best.cell, recommendation.runner_up.cell, n_boot, level, seed)
    recommendation.difference, recommendation.difference_ci = difference, ci
    recommendation.paired, recommendation.n_pairs = n_pairs > 0, n_pairs
    recommendation.decisive = ci[0] > 0.0


def _difference(a: Cell, b: Cell, n_boot: int, level: float, seed: int) -> tuple[float, tuple[float, float], int]:
    """Mean identity of ``a`` − ``b``, its bootstrap CI and the number of pairs (0 = unpaired).

    Paired (resampling keys, mean of per-key differences) over the keys both cells have a face for
    when both have keys and share at least two; otherwise each cell's faces are resampled on their own.
    Both cells need at least one face.
    """
    diffs = _paired_differences(a, b)
    if diffs is not None:
        return float(diffs.mean()), bootstrap_ci(diffs, n_boot=n_boot, level=level, seed=seed), int(diffs.size)
    faces_a = np.asarray([s for s in a.scores if s is not None], dtype=np.float64)
    faces_b = np.asarray([s for s in b.scores if s is not None], dtype=np.float64)
    return float(faces_a.mean() - faces_b.mean()), _unpaired_ci(faces_a, faces_b, n_boot, level, seed), 0


def _per_key_scores(cell: Cell) -> dict:
    """Mean score per key over the images with a face (repeated keys are averaged), in first-seen order."""
    sums: dict = {}
    for key, score in zip(cell.keys, cell.scores):
        if score is not None:
            total, count = sums.get(key, (0.0, 0))
            sums[key] = (total + float(score), count + 1)
    return {key: total / count for key, (total, count) in sums.items()}


def _paired_differences(a: Cell, b: Cell) -> np.ndarray | None:
    """Per-key differences a − b over keys both cells have a face for; ``None`` when fewer than 2."""
    if a.keys is None or b.keys is None:
        return None
    scores_a, scores_b = _per_key_scores(a), _per_key_scores(b)
    common = [key for key in scores_a if key in scores_b]
    if len(common) < 2:
        return None
    return np.asarray([scores_a[key] - scores_b[key] for key in common], dtype=np.float64)


def _unpaired_ci(a: np.ndarray, b: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(a) − mean(b), each sample resampled on its own."""
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    means_b = b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means_a - means_b, [tail, 100.0 - tail])
    return (float(low), float(high))


def _pareto_front(ranked: Sequence[CellResult]) -> list[CellResult]:
    """Eligible cells with adherence that no other such cell beats on identity and adherence at once."""
    scored = [r for r in ranked if r.adherence is not None]
    front = []
    for r in scored:
        dominated = any(
            o is not r
            and o.mean >= r.mean
            and o.adherence >= r.adherence
            and (o.mean > r.mean or o.adherence > r.adherence)
            for o in scored
        )
        if not dominated:
            front.append(r)
    return front  # ``ranked`` is already highest identity first


# ---------------------------------------------------------------------------------------------
# Warnings: plain sentences naming the cell


def _no_recommendation_reason(results: Sequence[CellResult], max_no_face: float) -> str:
    lora = [r for r in results if not r.cell.is_baseline]
    if not lora:
        return "the sweep has no LoRA cell, only the no-LoRA baseline" if results else "the sweep has no cells"
    made = [r for r in lora if r.cell.scores]  # cells whose every image failed to generate are not "no face"
    if not made and any(r.cell.missing for r in lora):
        return "no LoRA cell produced an image"
    if all(r.stats.n_faces == 0 for r in made):
        return "no face was found in any LoRA image"
    return (
        f"every LoRA cell misses the face in more than {max_no_face:.0%} of its images "
        f"(lowest no-face rate {min(r.stats.no_face_rate for r in lora if r.stats.no_face_rate is not None):.0%})"
    )


def _memorisation_warnings(ranked: Sequence[CellResult]) -> list[str]:
    out = []
    for result in ranked[:MEMORISATION_TOP]:
        if result.stats.n_memorised > 0:
            out.append(
                f"{result.stats.n_memorised} of {result.stats.n_images} images at {result.label} are closer to one "
                f"reference photo than the reference photos are to each other — possible memorisation of a "
                f"training photo; check them before trusting this cell."
            )
    return out


def _rising_no_face_warnings(results: Sequence[CellResult]) -> list[str]:
    """Per strength, along the checkpoint axis: a no-face rate that climbs towards the last checkpoint."""
    by_strength: dict[float, list[tuple[int, int, CellResult]]] = {}
    for i, result in enumerate(results):
        if not result.cell.is_baseline and result.stats.no_face_rate is not None:
            by_strength.setdefault(result.cell.strength, []).append((result.cell.order, i, result))
    out = []
    for strength in sorted(by_strength):
        line = [r for _, _, r in sorted(by_strength[strength], key=lambda item: item[:2])]
        if len(line) < 2:
            continue
        last = line[-1]
        lowest = min(line[:-1], key=lambda r: r.stats.no_face_rate)  # earliest of equal lows
        rate, low = last.stats.no_face_rate, lowest.stats.no_face_rate
        if rate - low >= NO_FACE_RISE - _EPS and rate >= NO_FACE_RISE_MIN_RATE - _EPS:
            out.append(
                f"no-face rate rises from {low:.0%} at {lowest.cell.checkpoint} to {rate:.0%} at "
                f"{last.cell.checkpoint} (strength {strength:g}): over-training often distorts faces."
            )
    return out


def _best_cell_warnings(rec: Recommendation, results: Sequence[CellResult]) -> list[str]:
    best, ci_name = rec.best, _ci_name(rec.level)
    out = []
    if rec.runner_up is not None and not rec.decisive:
        out.append(
            f"{best.label} and {rec.runner_up.label} are within noise (difference {rec.difference:.3f}, "
            f"{ci_name} {_range(rec.difference_ci)}); more seeds would separate them."
        )
    if rec.paired and rec.difference < 0:
        # Ranked on all its faces, the best cell can still lose on the images both cells have a face in
        # (the runner-up missed the face where it would have scored well, or the reverse).
        out.append(
            f"{rec.runner_up.label} scores higher than {best.label} on the {rec.n_pairs} seed/prompt pairs where "
            f"both find a face (by {-rec.difference:.3f}); {best.label} ranks first only on its mean over all "
            f"its faces — compare the images where one of them finds no face before choosing."
        )
    if rec.floor is not None and best.ci[0] <= rec.floor:
        out.append(
            f"{best.label} is not reliably more like the person than the base model alone: its {ci_name} "
            f"({_range(best.ci)}) reaches down to the no-LoRA floor {rec.floor:.3f}. The LoRA may not have "
            f"learned the face (check the trigger word and the training)."
        )
    if rec.ceiling is not None and best.mean > rec.ceiling:
        out.append(
            f"{best.label} scores {best.mean:.3f}, above the reference photos' own similarity to each other "
            f"({rec.ceiling:.3f}): often memorisation of training photos, or too few reference photos."
        )
    for result in results:
        if (not result.eligible and not result.cell.is_baseline and result.mean is not None
                and result.mean > best.mean):
            out.append(
                f"{result.label} has a higher mean identity ({result.mean:.3f}) but is not recommended: {result.reason}."
            )
    return out


def _adherence_warnings(ranked: Sequence[CellResult], n_boot: int, level: float, seed: int) -> list[str]:
    """The best-identity cell follows the prompt clearly less than a cell whose identity is within noise of it.

    "Within noise" is the same test as best vs runner-up: the CI of the (paired when possible)
    difference in identity reaches 0. Overlapping per-cell CIs would be too lenient: the seed-to-seed
    spread makes every cell's CI wide, while the paired difference can still be clear.
    """
    if not ranked or ranked[0].adherence is None:
        return []
    best = ranked[0]
    similar = [
        r for r in ranked[1:]
        if r.adherence is not None
        and r.adherence - best.adherence >= ADHERENCE_GAP - _EPS
        and _difference(best.cell, r.cell, n_boot, level, seed)[1][0] <= 0.0
    ]
    if not similar:
        return []
    follower = max(similar, key=lambda r: r.adherence)  # first (higher identity) among equal adherence
    message = (
        f"{best.label} follows the prompt less (CLIP {best.adherence:.3f} vs {follower.adherence:.3f} at "
        f"{follower.label}) for an identity within noise of it ({best.mean:.3f} vs {follower.mean:.3f}); "
        f"prefer {follower.label} if the prompt matters."
    )
    return [message]


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def _ci_name(level: float) -> str:
    return f"{level * 100:g}% CI"


def _range(pair: tuple[float, float] | None) -> str:
    # ASCII minus: U+2212 breaks cp1252 consoles (Windows hosts); the en dash separates the bounds.
    return "–" if pair is None else f"{pair[0]:.3f}–{pair[1]:.3f}"


def _float(value) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _pair(pair) -> list[float] | None:
    return None if pair is None else [_float(pair[0]), _float(pair[1])]


def _json_safe(value):
    """numpy scalars → Python numbers, tuples → lists, non-finite floats → None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _float(value)
    return value


def _get(record, name: str):
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)
