"""Which training step (or checkpoint) of a scored folder looks most like the person.

A scored folder grouped by ``step`` (a trainer's sample images) or by ``lora`` (A1111/ComfyUI images
made with ``<lora:name-0000NN:w>`` checkpoints) is a row of checkpoints: the same :func:`~.recommend.recommend`
the sweep uses ranks them, pairing images by the seed (and sample prompt) their names or metadata record.
Beside it: the trend along the steps (best so far, how many rounds without a gain, a fall that looks like
over-training) and the saved checkpoint file closest to the best step, for trainers that save checkpoints
less often than they sample.

Pure functions over a :class:`~.pipeline.ScoreRun` (no face model); the image metadata is read again
from the files for the pairing keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import LoraCheckpoint, list_runs
from .labels import NO_LORA, read_generation_text, step_label
from .recommend import Recommendation, cells_from_records, recommend
from .trainer_outputs import seed_from_metadata

#: ``watch``'s and ``score``'s "no gain over the last N sample rounds" once the best step is this many rounds back.
DEFAULT_PATIENCE = 3


@dataclass
class StepVerdict:
    """The recommendation over the groups of a scored folder, the trend and the checkpoint to use.

    Attributes:
        recommendation: :func:`~.recommend.recommend` over the groups (``as_dict`` is the sweep's shape).
        best_step: the recommended group's step (``None`` when it has none or nothing was recommended).
        best_epoch: its epoch when known.
        trend: sentences about the curve: ``best so far: step 1750 (0.710, 95% CI …)``, ``no gain over the last
            3 sample rounds``, and the fall warning.
        falling: the last round is below the best round's CI (identity is falling: likely over-training).
        rounds_since_best: sample rounds after the best one.
        checkpoint: the saved checkpoint closest to the best step (``None`` without checkpoints or steps).
    """

    recommendation: Recommendation
    best_step: int | None = None
    best_epoch: int | None = None
    trend: list[str] = field(default_factory=list)
    falling: bool = False
    rounds_since_best: int = 0
    checkpoint: LoraCheckpoint | None = None

    def lines(self) -> list[str]:
        """The headline, the trend, the checkpoint to use and the warnings (for a terminal or a node)."""
        out = [self.recommendation.headline(), *self.trend]
        if self.checkpoint is not None:
            out.append(f"closest saved checkpoint: {self.checkpoint.name} ({self.checkpoint.label})")
        return out + [f"warning: {w}" for w in self.recommendation.warnings]

    def as_dict(self) -> dict:
        data = self.recommendation.as_dict()
        data.update({
            "best_step": self.best_step,
            "best_epoch": self.best_epoch,
            "trend": list(self.trend),
            "falling": bool(self.falling),
            "rounds_since_best": int(self.rounds_since_best),
            "checkpoint": None if self.checkpoint is None else {
                "name": self.checkpoint.name, "path": str(self.checkpoint.path), "label": self.checkpoint.label,
                "step": self.checkpoint.step, "epoch": self.checkpoint.epoch,
            },
        })
        return data


def _pairing_key(path: Path, root: Path, group_by: str):
    """``(seed, prompt index)`` from the name or metadata; ``None`` when neither is known."""
    if group_by == "step":
        label = step_label(path, root)
        if label.seed is None and label.prompt is None:
            return None
        return (label.seed, label.prompt)
    texts = read_generation_text(path)
    seed = seed_from_metadata(texts)
    return None if seed is None else (seed, None)


def run_records(run, root: Path | None = None) -> list[dict]:
    """Per-image records for :func:`~.recommend.cells_from_records`: one checkpoint per group (in the run's
    group order), strength from the group's LoRA (``None`` for the no-LoRA group: the floor)."""
    root = Path(root if root is not None else run.images_root or ".")
    info = {g.label: g.info for g in run.groups}
    order = {g.label: i for i, g in enumerate(run.groups)}
    group_by = run.settings.group_by
    records = []
    for image in run.images:
        if image.error is not None:
            continue  # unreadable: counted in the group's statistics, not a sample of the step
        fields = info.get(image.group, {})
        path = root / image.path
        if group_by == "lora" and image.group == NO_LORA:
            strength = None
        elif group_by == "lora":
            strength = fields.get("strength") or 1.0
        else:
            strength = 1.0
        records.append({
            "checkpoint": image.group,
            "strength": strength,
            "epoch": fields.get("epoch"),
            "order": order.get(image.group, 0),
            "score": image.score.value(run.settings.aggregation),
            "key": _pairing_key(path, root, group_by) if run.arrays is None else None,
            "memorised": image.score.memorised,
        })
    return records


def _ci_text(ci, level: float) -> str:
    return f"{level * 100:g}% CI {ci[0]:.3f}–{ci[1]:.3f}" if ci is not None else "no CI"


def _trend(recommendation: Recommendation, patience: int, unit: str) -> tuple[list[str], bool, int]:
    """Trend sentences, whether the curve is falling, rounds since the best (over the cells in order)."""
    best = recommendation.best
    if best is None or best.cell.is_baseline:
        return [], False, 0
    # Along training at the best cell's strength (a grid of epochs x strengths holds one such line per strength).
    line = [r for r in recommendation.cells if not r.cell.is_baseline and r.cell.strength == best.cell.strength]
    since = len(line) - 1 - line.index(best)
    text = f"best so far: {best.cell.checkpoint} ({best.mean:.3f}, {_ci_text(best.ci, recommendation.level)})"
    if since >= patience:
        text += f"; no gain over the last {since} {unit}"
    lines = [text]
    last = line[-1]
    falling = bool(since > 0 and last.mean is not None and best.ci is not None and last.mean < best.ci[0])
    if falling:
        lines.append(
            f"identity is falling: {last.cell.checkpoint} scores {last.mean:.3f}, below {best.cell.checkpoint}'s "
            f"{_ci_text(best.ci, recommendation.level)} — likely over-training; use {best.cell.checkpoint} "
            f"(or stop training)"
        )
    return lines, falling, since


def nearest_checkpoint(step: int | None, epoch: int | None, checkpoints: list[LoraCheckpoint]) -> LoraCheckpoint | None:
    """The checkpoint saved closest to ``step`` (ties: the earlier one), else to ``epoch``; ``None`` when none
    of ``checkpoints`` records the step (or epoch) it was saved at."""
    if step is not None:
        stepped = [c for c in checkpoints if c.step is not None]
        if stepped:
            return min(stepped, key=lambda c: (abs(c.step - step), c.step))
    if epoch is not None:
        by_epoch = [c for c in checkpoints if c.epoch is not None and not c.final]
        if by_epoch:
            return min(by_epoch, key=lambda c: (abs(c.epoch - epoch), c.epoch))
    return None


#: How deep :func:`output_checkpoints` looks: OneTrainer's ``save/`` and diffusers' ``checkpoint-500/`` sit one
#: folder below the output folder, sd-scripts' and ai-toolkit's files in it.
CHECKPOINT_DEPTH = 1


def output_checkpoints(folder: Path | None) -> list[LoraCheckpoint]:
    """The LoRA checkpoints a trainer saved in its output folder (the samples folder's parent) and one folder
    below it (all runs together); ``[]`` when there is none or the folder cannot be read."""
    if folder is None or not Path(folder).is_dir():
        return []
    try:
        return [c for items in list_runs(Path(folder), max_depth=CHECKPOINT_DEPTH).values() for c in items]
    except OSError:
        return []


def samples_checkpoints(samples: Path) -> list[LoraCheckpoint]:
    """The checkpoints beside a samples folder: in it and in its parent (a trainer saves there or one folder below:
    sd-scripts ``OUTPUT/``, ai-toolkit ``OUTPUT/JOB/``, OneTrainer ``WORKSPACE/save/``), each file once."""
    samples = Path(samples)
    found = output_checkpoints(samples) + output_checkpoints(samples.parent)
    return list({c.path: c for c in found}.values())


def epoch_steps(checkpoints: list[LoraCheckpoint]) -> dict[int, int]:
    """Epoch -> the step it ended at, from checkpoints saved at an epoch's end that record both (sd-scripts'
    ``NAME-000003`` and final files: ``ss_epoch``, ``ss_steps``). Step-named files are left out: their ``ss_epoch``
    is the epoch in progress, not one that ended."""
    ends: dict[int, int] = {}
    for checkpoint in sorted(checkpoints, key=lambda c: c.final):  # an epoch file before the final one
        if checkpoint.by_step or checkpoint.epoch is None or checkpoint.step is None:
            continue
        ends.setdefault(checkpoint.epoch, checkpoint.step)
    return ends


def step_verdict(run, checkpoints: list[LoraCheckpoint] | None = None, patience: int = DEFAULT_PATIENCE,
                 max_no_face: float = 0.5) -> StepVerdict | None:
    """The recommendation over a run grouped by ``step`` or ``lora`` (``None`` for other groupings or no
    image with a face). ``checkpoints``: saved checkpoints to name the closest of (see :func:`output_checkpoints`)."""
    if run.settings.group_by not in ("step", "lora"):
        return None
    records = run_records(run)
    if not records:
        return None
    cells = cells_from_records(records)
    if not any(not c.is_baseline for c in cells):
        return None
    for cell in cells:  # a step's samples have no strength; a LoRA group's label names its strength already
        cell.show_strength = False
    recommendation = recommend(cells, ceiling=run.references.baseline.mean, max_no_face=max_no_face,
                               n_boot=run.settings.n_boot, seed=run.settings.seed)
    unit = "sample rounds" if run.settings.group_by == "step" else "checkpoints"
    trend, falling, since = _trend(recommendation, patience, unit)
    verdict = StepVerdict(recommendation, trend=trend, falling=falling, rounds_since_best=since)
    best = recommendation.best
    if best is not None:
        fields = next((g.info for g in run.groups if g.label == best.cell.checkpoint), {})
        verdict.best_step, verdict.best_epoch = fields.get("step"), fields.get("epoch")
        verdict.checkpoint = nearest_checkpoint(verdict.best_step, verdict.best_epoch, checkpoints or [])
    return verdict

