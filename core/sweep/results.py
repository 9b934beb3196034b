"""What a sweep produced: one record per generated image (the input of scoring, report and recommendation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SweepImage:
    """One generated image of a sweep and its score.

    Attributes:
        path: the PNG under ``<out>/images/`` (its metadata carries every generation parameter).
        checkpoint: axis label of the checkpoint (``e10``, ``final (e20)``, ``exp_e30``) or ``no LoRA``.
        epoch: the checkpoint's epoch when known.
        order: the checkpoint's position on the epoch axis (0, 1, …; ``-1`` for no LoRA).
        strength: LoRA strength; ``None`` for the no-LoRA baseline.
        seed: generation seed; prompt_index / prompt: which prompt.
        score: identity score (best cosine over the reference photos), ``None`` when no face.
        box: the scored face's box ``[x1, y1, x2, y2]`` in image pixels, or ``None``.
        memorised: flagged as possible memorisation.
        adherence: CLIP prompt-adherence score when measured.
    """

    path: Path
    checkpoint: str
    epoch: int | None
    order: int
    strength: float | None
    seed: int
    prompt_index: int
    prompt: str
    score: float | None = None
    box: list[float] | None = None
    memorised: bool = False
    adherence: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        """Pairing key: same seed and prompt = same starting noise and text in every cell."""
        return (self.seed, self.prompt_index)
