"""What a training run returns, whichever backend trained (our trainer or sd-scripts), and how a
cancelled run reports itself. Its own module so both backends use it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..progress import Cancelled


@dataclass
class TrainResult:
    """What a run wrote and how it went."""

    out: Path
    name: str
    checkpoints: list[Path] = field(default_factory=list)
    """Per-epoch files, in epoch order (those of an earlier, resumed session included)."""
    final: Path | None = None
    epochs_done: int = 0
    steps: int = 0
    state: Path | None = None
    loss_csv: Path | None = None
    loss_plot: Path | None = None
    samples: dict[int, list[Path]] = field(default_factory=dict)
    scores: dict[int, float | None] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False
    cancelled: bool = False
    warnings: list[str] = field(default_factory=list)
    command: list[str] | None = None
    """The sd-scripts command line (sd-scripts backend only)."""

    def as_dict(self) -> dict:
        return {
            "out": str(self.out), "name": self.name, "checkpoints": [str(p) for p in self.checkpoints],
            "final": str(self.final) if self.final else None, "epochs_done": self.epochs_done, "steps": self.steps,
            "state": str(self.state) if self.state else None, "loss_csv": str(self.loss_csv) if self.loss_csv else None,
            "loss_plot": str(self.loss_plot) if self.loss_plot else None,
            "samples": {str(k): [str(p) for p in v] for k, v in self.samples.items()},
            "scores": {str(k): v for k, v in self.scores.items()}, "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early, "cancelled": self.cancelled, "warnings": list(self.warnings),
            "command": self.command,
        }


class TrainingCancelled(Cancelled):
    """Cancelled between steps; the state was saved (``result.state``) and ``resume=True`` continues."""

    def __init__(self, message: str, result: TrainResult) -> None:
        super().__init__(message)
        self.result = result
