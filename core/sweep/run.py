"""``likeness run``: photos → dataset → LoRA → sweep → report, one command, resumable.

Every stage writes into its own folder under ``out`` and is kept:

* ``out/dataset/``  — :func:`~..dataset.prepare.prepare_dataset` (re-running with the same photos and
  settings rewrites nothing);
* ``out/training/`` — :func:`~..training.trainer.train_lora` (a finished run with the same settings is
  skipped, an interrupted one resumes from its saved state; other settings or a changed dataset move the
  earlier run aside to ``training.<time>/`` and train again);
* ``out/sweep/``    — :func:`.engine.run_sweep` (finished images are reused).

``out/run.json`` records what each stage was run with, which is how a re-run knows what is done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..progress import Progress
from .config import SweepConfig

RUN_RECORD = "run.json"
STAGES = ("prepare", "train", "sweep")


class RunError(ValueError):
    """A setting of ``likeness run`` the user must fix."""


@dataclass
class RunConfig:
    """The settings of a whole run; ``train_overrides`` / ``sweep_overrides`` reach the stage configs as they are."""

    photos: Path
    trigger: str | None
    class_word: str
    base: Path
    out: Path
    refs: Path | None = None
    """Reference photos for scoring; default: ``photos`` (the person's own photos)."""
    pack: str | None = None
    providers: str = "auto"
    tokenizer: Path | None = None
    """CLIP tokenizer folder for a single-file base (default: found offline, see ``likeness train``)."""
    resolution: int | None = None
    """Training resolution and dataset crop size; default: the base model family's (512 SD1.x, 1024 SDXL)."""
    epochs: int = 10
    max_images: int = 50
    prompt: str | None = None
    """Sweep prompt; default ``photo of <trigger> <class>``, or with ``identities`` one per group of people the dataset covers."""
    identities: list = field(default_factory=list)
    """Several people in one LoRA (:class:`~..dataset.config.IdentitySpec`: trigger, reference photos, class word):
    the dataset is labelled with who is in each photo, and the sweep scores every person in every image."""
    train_overrides: dict[str, Any] = field(default_factory=dict)
    sweep_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("photos", "base", "out", "refs", "tokenizer"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))

    @property
    def name(self) -> str:
        """The LoRA's file name: the trigger word (``ohwx-000003.safetensors``); with several people,
        their triggers joined by ``_`` unless ``trigger`` names the run."""
        text = self.trigger if self.trigger and self.trigger.strip() else "_".join(i.name for i in self.identities)
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "lora"


class StageProgress(Progress):
    """Prefixes every task with its stage (``2/3 train · training``) on one shared progress display."""

    def __init__(self, inner: Progress) -> None:
        super().__init__()
        self.inner = inner
        self.stage = ""

    def start(self, total: int, description: str = "") -> None:
        super().start(total, description)
        self.inner.start(total, f"{self.stage} · {description}" if self.stage else description)

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        self.inner.advance(count, detail)

    def finish(self) -> None:
        self.inner.finish()

    def cancel(self) -> None:
        self.inner.cancel()

    def cancelled(self) -> bool:
        return self.inner.cancelled()


@dataclass
class RunResult:
    out: Path
    dataset: Any = None
    training: Any = None
    sweep: Any = None
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"out": str(self.out), "skipped": self.skipped, "notes": self.notes,
                "dataset": str(self.dataset.out) if self.dataset else None,
                "checkpoints": [str(p) for p in self.training.checkpoints] if self.training else [],
                "final": str(self.training.final) if self.training and self.training.final else None,
                "sweep": self.sweep.as_dict() if self.sweep else None}


def _read_record(out: Path) -> dict:
    try:
        return json.loads((out / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_record(out: Path, record: dict) -> None:
    from ..images import write_text_atomic

    write_text_atomic(out / RUN_RECORD, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def train_config(config: RunConfig, dataset_dir: Path, family):
    from ..training.config import TrainConfig

    values = {"epochs": config.epochs, "resolution": config.resolution, **config.train_overrides}
    if config.tokenizer is not None:
        values["tokenizer"] = config.tokenizer
    return TrainConfig().replace(**values).replace(base=config.base, data=dataset_dir, out=config.out / "training",
                                                   name=config.name).for_family(family)


def sweep_config(config: RunConfig, training_dir: Path, family) -> SweepConfig:
    """The sweep of a run: ``photo of <trigger> <class>``; with several people, the prepared dataset's
    people (one prompt per group of them it covers, unless ``prompt`` is given)."""
    if config.identities:
        values = {"prompts": [config.prompt] if config.prompt else [], **config.sweep_overrides}
        who = {"refs": None, "people": config.out / "dataset"}
    else:
        values = {"prompts": [config.prompt or f"photo of {config.trigger} {config.class_word}"], **config.sweep_overrides}
        who = {"refs": config.refs or config.photos}
    if config.tokenizer is not None:
        values["tokenizer"] = config.tokenizer
    return SweepConfig().replace(**values).replace(base=config.base, loras=training_dir, out=config.out / "sweep", pack=config.pack,
                                                   providers=config.providers, run=config.name, **who).for_family(family)


def run_all(config: RunConfig, progress: Progress | None = None, engine=None, cache=None) -> RunResult:
    """Prepare, train, sweep and report, skipping what an earlier run of the same settings finished.

    Raises:
        RunError, PrepareConfigError, ConfigError, SweepConfigError, ModelLoadError, PackNotFoundError,
        NoReferencesError: settings to fix; TrainingCancelled / Cancelled when the user stopped (re-run continues).
    """
    from ..cache import FaceCache
    from ..dataset.config import PrepareConfig
    from ..dataset.prepare import prepare_dataset
    from ..faces import DEFAULT_PACK, FaceEngine
    from ..report import preserve_file
    from ..training.state import find_state
    from ..training.trainer import train_lora
    from .engine import run_sweep

    for name in ("photos", "base"):
        if not getattr(config, name).exists():
            raise RunError(f"--{name} {getattr(config, name)} does not exist")
    if not config.identities and (not config.trigger or not config.trigger.strip()):
        raise RunError("--trigger is required: a rare word that will mean this person (e.g. ohwx), unless --identity names several people")
    from ..families import detect_family

    # The base's family (a header read) sets the crop size, training resolution and sweep defaults;
    # a base that cannot be used is refused before any photo is touched.
    family = detect_family(config.base, config.train_overrides.get("family", "auto"))
    resolution = config.resolution or family.defaults.resolution
    out = config.out
    from ..outputs import OutputError, check_output_folder

    try:
        check_output_folder(out)
    except OutputError as exc:
        raise RunError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    progress = StageProgress(progress or Progress())
    record = _read_record(out)
    result = RunResult(out=out)
    engine = engine or FaceEngine.load(config.pack or DEFAULT_PACK, providers=config.providers)
    cache = cache if cache is not None else FaceCache()

    # 1. the dataset
    progress.stage = "1/3 prepare"
    prepare = PrepareConfig(photos=config.photos, out=out / "dataset", trigger=None if config.identities else config.trigger,
                            class_word=config.class_word, identities=list(config.identities),
                            family=family.name, size=resolution if resolution in (512, 768, 1024) else family.defaults.prepare_size,
                            max_images=config.max_images)
    result.dataset = prepare_dataset(engine, prepare, progress, cache=cache)
    if result.dataset.nothing_kept:
        raise RunError(f"{result.dataset.nothing_kept}; every file and its reason: {result.dataset.files.get('report.html', prepare.out)}")
    dataset_changed = not result.dataset.unchanged and "prepare" in record
    if result.dataset.unchanged:
        result.skipped.append("prepare")
    record["prepare"] = _plain(prepare.as_dict())
    _write_record(out, record)

    # 2. the LoRA
    progress.stage = "2/3 train"
    train = train_config(config, out / "dataset", family)
    train.validate()
    settings = _plain(train.to_dict())
    training_dir = out / "training"
    final = training_dir / f"{config.name}.safetensors"
    has_state = find_state(training_dir, config.name) is not None
    same = record.get("train") == settings and not dataset_changed
    if training_dir.exists() and any(training_dir.iterdir()) and not same:
        moved = preserve_file(training_dir)
        result.notes.append(f"the earlier training (other settings or dataset) was kept as {moved.name}")
        has_state = False
    if same and final.exists():
        from ..checkpoints import run_checkpoints
        from ..training.result import TrainResult

        result.training = TrainResult(out=training_dir, name=config.name,
                                      checkpoints=[c.path for c in run_checkpoints(training_dir, config.name) if not c.final], final=final)
        result.skipped.append("train")
    else:
        record["train"] = settings
        _write_record(out, record)
        result.training = train_lora(train, progress, resume=same and has_state)

    # 3. the sweep and its report
    progress.stage = "3/3 sweep"
    sweep = sweep_config(config, training_dir, family)
    result.sweep = run_sweep(sweep, progress, engine=engine, cache=cache)
    record["sweep"] = _plain(sweep.as_dict())
    record["result"] = result.as_dict()
    _write_record(out, record)
    return result
