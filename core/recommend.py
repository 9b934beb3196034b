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
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .scoring import GroupStats

NO_LORA = "no LoRA"


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
    """

    checkpoint: str
    strength: float | None
    epoch: int | None = None
    scores: list[float | None] = field(default_factory=list)
    keys: list[Hashable] | None = None
    memorised: int = 0
    adherence: list[float | None] | None = None
    order: int = 0

    @property
    def is_baseline(self) -> bool:
        return self.strength is None

    @property
    def label(self) -> str:
        """``e10 @ 0.8``; ``no LoRA`` for the baseline."""
        return NO_LORA if self.is_baseline else f"{self.checkpoint} @ {self.strength:g}"


@dataclass
class CellResult:
    """A cell with its statistics (the core's :class:`~.scoring.GroupStats`) and mean adherence."""

    cell: Cell
    stats: GroupStats
    adherence: float | None = None
    eligible: bool = True
    """False when the cell's no-face rate is above ``max_no_face`` (it cannot be recommended)."""

    def as_dict(self) -> dict: ...


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

    def headline(self) -> str:
        """One line for a terminal, a node output or under a grid, e.g.
        ``Recommended: e30 @ 0.8 — identity 0.612 (95% CI 0.581–0.640), beats e40 @ 0.8 by 0.031 (CI 0.010–0.052)``."""
        ...

    def as_dict(self) -> dict: ...


def recommend(
    cells: Sequence[Cell],
    ceiling: float | None = None,
    max_no_face: float = 0.5,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Recommendation:
    """Rank the cells by mean identity and say how sure the choice is (see the module docstring)."""
    ...


def cells_from_records(records: Iterable[Mapping]) -> list[Cell]:
    """Cells from flat per-image records (what hosts hold): keys ``checkpoint``, ``strength`` (None =
    no LoRA), optional ``epoch``, ``score`` (None = no face), optional ``key``, ``memorised``,
    ``adherence``. Cells come out in first-seen checkpoint order (``order``), strengths ascending."""
    ...
