"""The sweep: every checkpoint × strength × prompt × seed generated once, scored, tabulated, recommended.

Flow of :func:`run_sweep`:

1. checkpoints from ``config.loras`` (Kohya run or diffusers/PEFT run folders, epoch order), the
   face engine and the reference photos (so a bad pack or faceless references fail before any
   generation);
2. the plan: one PNG per (cell, prompt, seed) under ``<out>/images/<cell>/``; a PNG that exists and
   whose recorded parameters equal the plan's is reused (an interrupted sweep resumes where it
   stopped; a changed setting regenerates, the earlier file is kept beside it);
3. generation on diffusers with the base loaded once; the no-LoRA cells first, then each checkpoint
   (switched in place by :class:`~.loras.LoraSwitcher`) at each strength;
4. faces scored with the core scorer (faces cached by content), optional CLIP prompt adherence;
5. :func:`~..recommend.recommend` and the report files (:mod:`.report`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..progress import Progress
from ..recommend import NO_LORA, Recommendation, cells_from_records, recommend
from .config import SAMPLERS, SweepConfig, SweepConfigError
from .results import SweepImage

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
MANIFEST = "sweep.json"
PNG_KEY = "likeness"  # PNG text chunk with the generation parameters as JSON


@dataclass(frozen=True)
class SweepCheckpoint:
    """One LoRA of the sweep's epoch axis."""

    label: str
    epoch: int | None
    order: int
    path: Path
    format: str
    fingerprint: str
    """sha256 of the file: a rewritten checkpoint with the same name is a different LoRA."""

    @property
    def stem(self) -> str:
        """The name A1111 would use: the file's stem, or the run folder's name for diffusers/PEFT files
        (all of which are called ``pytorch_lora_weights`` / ``adapter_model``)."""
        return self.path.stem if self.format == "kohya" else self.path.parent.name


@dataclass(frozen=True)
class PlannedImage:
    """One image the sweep needs: where it goes and the parameters it must carry."""

    path: Path
    checkpoint: SweepCheckpoint | None
    strength: float | None
    prompt_index: int
    prompt: str
    seed: int
    parameters: dict

    def record(self) -> SweepImage:
        checkpoint = self.checkpoint
        return SweepImage(path=self.path, checkpoint=checkpoint.label if checkpoint else NO_LORA,
                          epoch=checkpoint.epoch if checkpoint else None, order=checkpoint.order if checkpoint else -1,
                          strength=self.strength, seed=self.seed, prompt_index=self.prompt_index, prompt=self.prompt)


@dataclass
class SweepResult:
    """What :func:`run_sweep` did and wrote."""

    config: SweepConfig
    checkpoints: list[SweepCheckpoint]
    images: list[SweepImage]
    recommendation: Recommendation
    files: dict[str, Path] = field(default_factory=dict)
    generated: int = 0
    reused: int = 0
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    people: object | None = None
    """With several people (``config.people``): the :class:`~..people_sweep.PeopleRecommendation`."""

    def as_dict(self) -> dict:
        return {"generated": self.generated, "reused": self.reused, "images": len(self.images),
                **({"people": self.people.as_dict()} if self.people is not None else {}),
                "checkpoints": [{"label": c.label, "epoch": c.epoch, "path": str(c.path), "format": c.format} for c in self.checkpoints],
                "recommendation": self.recommendation.headline(), "warnings": list(self.warnings),
                "files": {k: str(v) for k, v in self.files.items()}, "timings": self.timings}


# ------------------------------------------------------------------------------------------------
# checkpoints and fingerprints
# ------------------------------------------------------------------------------------------------


def base_fingerprint(base: Path) -> str:
    """Cheap identity of a base model (its name, sizes and A1111's 64 KiB hash of each weights file)."""
    from ..training.kohya_format import legacy_model_hash

    base = Path(base)
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*.safetensors") if p.is_file())
    digest = hashlib.sha256(base.name.encode())
    for path in files:
        digest.update(f"{path.relative_to(base) if base.is_dir() else path.name}:{path.stat().st_size}:{legacy_model_hash(path)}".encode())
    return digest.hexdigest()[:16]


def sweep_checkpoints(config: SweepConfig, family: str = "sd1") -> list[SweepCheckpoint]:
    """The checkpoints of ``config.loras`` in epoch order, each with a unique label.

    Raises:
        SweepConfigError: no LoRA found, several runs and no ``run`` chosen, or a LoRA of another model family
            than ``family`` (the base's).
    """
    from .. import checkpoints as ckpt
    from ..training.kohya_format import file_sha256

    try:
        found = ckpt.sweep_checkpoints(config.loras, run=config.run, base=family)
    except ValueError as exc:  # includes ArchitectureMismatch
        raise SweepConfigError(str(exc)) from exc
    if not found:
        raise SweepConfigError(f"--loras: {ckpt.no_lora_found_message(config.loras)}")
    out = []
    for order, item in enumerate(found):
        out.append(SweepCheckpoint(label=item.label, epoch=item.epoch, order=order, path=item.path,
                                   format=item.format, fingerprint=file_sha256(item.path)))
    return out


# ------------------------------------------------------------------------------------------------
# the plan and resuming
# ------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "lora"


def cell_folder(checkpoint: SweepCheckpoint | None, strength: float | None) -> str:
    """``no-lora``, ``e10_s0.8``, ``final_e20_s1``: one folder per cell under ``images/``."""
    if checkpoint is None:
        return "no-lora"
    return f"{_slug(checkpoint.label)}_s{strength:g}"


def plan_images(config: SweepConfig, checkpoints: list[SweepCheckpoint], base_id: str) -> list[PlannedImage]:
    """Every image of the sweep, in generation order: no-LoRA cells first, then checkpoint, strength, prompt, seed."""
    cells: list[tuple[SweepCheckpoint | None, float | None]] = []
    if config.baseline:
        cells.append((None, None))
    cells += [(c, s) for c in checkpoints for s in config.strengths]
    shared = config.generation()
    planned = []
    for checkpoint, strength in cells:
        folder = Path(config.out) / IMAGES_DIR / cell_folder(checkpoint, strength)
        for p_index, prompt in enumerate(config.prompts):
            for seed in config.seeds:
                parameters = {"base": Path(config.base).name, "base_id": base_id, "prompt": prompt, "seed": int(seed), **shared,
                              "lora": checkpoint.path.name if checkpoint else None,
                              "lora_sha256": checkpoint.fingerprint if checkpoint else None,
                              "checkpoint": checkpoint.label if checkpoint else NO_LORA,
                              "epoch": checkpoint.epoch if checkpoint else None, "strength": strength}
                planned.append(PlannedImage(folder / f"p{p_index}_seed{seed}.png", checkpoint, strength, p_index, prompt, int(seed), parameters))
    return planned


def recorded_parameters(path: Path) -> dict | None:
    """The parameters a sweep PNG carries (its ``likeness`` text chunk), or ``None``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            text = image.info.get(PNG_KEY) or getattr(image, "text", {}).get(PNG_KEY)
    except Exception:  # noqa: BLE001 - unreadable or truncated: it is regenerated
        return None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def split_done(planned: list[PlannedImage]) -> tuple[list[PlannedImage], list[PlannedImage], list[Path]]:
    """``(done, todo, stale)``: images whose file carries exactly the planned parameters are done; files
    with other parameters are ``stale`` (kept under another name before their cell is regenerated)."""
    done, todo, stale = [], [], []
    for item in planned:
        if item.path.is_file():
            if recorded_parameters(item.path) == item.parameters:
                done.append(item)
                continue
            stale.append(item.path)
        todo.append(item)
    return done, todo, stale


def a1111_parameters(item: PlannedImage) -> str:
    """The A1111 ``parameters`` text, so ``likeness score --group-by lora`` and image browsers read the PNGs."""
    p = item.parameters
    lora = f" <lora:{item.checkpoint.stem}:{item.strength:g}>" if item.checkpoint is not None else ""
    return (f"{item.prompt}{lora}\nNegative prompt: {p['negative']}\n"
            f"Steps: {p['steps']}, Sampler: {p['sampler']}, CFG scale: {p['cfg']:g}, Seed: {item.seed}, "
            f"Size: {p['width']}x{p['height']}, Model: {Path(p['base']).stem}, Clip skip: {p['clip_skip']}")


def save_sweep_png(rgb, item: PlannedImage) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from ..images import save_png_atomic

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(item))
    info.add_text(PNG_KEY, json.dumps(item.parameters, sort_keys=True))
    save_png_atomic(Image.fromarray(rgb), item.path, pnginfo=info)


# ------------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------------


def make_scheduler(name: str, base_config: dict):
    """A diffusers scheduler for sampler ``name`` (see :data:`~.config.SAMPLERS`) with the base's betas."""
    import diffusers

    class_name, extra = SAMPLERS[name]
    keep = {k: v for k, v in base_config.items() if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                                          "trained_betas", "prediction_type", "timestep_spacing")}
    keep["steps_offset"] = 1  # SD1's inference value (the training scheduler's config says 0)
    return getattr(diffusers, class_name).from_config({**keep, **extra})


def _dtype(config: SweepConfig, device):
    import torch

    if config.precision == "float" or (config.precision == "auto" and device.type != "cuda"):
        return torch.float32
    return torch.bfloat16 if config.precision == "bf16" else torch.float16


class Generator:
    """The base model loaded once as its family's diffusers pipeline, with a :class:`~.loras.LoraSwitcher`."""

    def __init__(self, config: SweepConfig, base_model=None) -> None:
        import torch

        from ..families import detect_family
        from ..training.trainer import pick_device
        from .loras import LoraSwitcher

        self.config = config
        self.device = pick_device(config.device)
        self.dtype = _dtype(config, self.device)
        family = base_model.family if base_model is not None else detect_family(config.base, config.family)
        parts = base_model or family.load(config.base, {"tokenizer": config.tokenizer, "tokenizer_2": config.tokenizer_2},
                                          config.base_config, dtype=self.dtype)
        scheduler = make_scheduler(config.sampler, dict(parts.noise_scheduler.config))
        self.pipe = family.pipeline(parts, scheduler)
        self.pipe.to(self.device)  # loaded in self.dtype already (a host's model keeps its own)
        self.dtype = self.pipe.unet.dtype
        for model in parts.modules().values():
            model.eval().requires_grad_(False)
        self.pipe.vae.eval().requires_grad_(False)
        self.switcher = LoraSwitcher(family.lora_components(parts.modules()), device=self.device, dtype=self.dtype)
        self._loaded: Path | None = None
        self._torch = torch

    def use(self, checkpoint: SweepCheckpoint | None, strength: float | None) -> None:
        """Switch to ``checkpoint`` at ``strength`` (``None``: the base model alone)."""
        if checkpoint is None:
            self.switcher.disable()
            return
        if self._loaded != checkpoint.path:
            self.switcher.apply(self.switcher.load(checkpoint.path, checkpoint.format), strength)
            self._loaded = checkpoint.path
        else:
            self.switcher.set_strength(strength)

    def generate(self, prompt: str, seeds: list[int]):
        """RGB uint8 images ``[len(seeds), H, W, 3]``; each seed's starting noise is drawn on the CPU, so a
        seed gives the same image on any device and in any batch."""
        import numpy as np

        torch = self._torch
        config = self.config
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        factor = self.pipe.vae_scale_factor  # 8 for SD1.x
        shape = (self.pipe.unet.config.in_channels, config.height // factor, config.width // factor)
        latents = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]).to(self.device, self.dtype)
        with torch.inference_mode():
            images = self.pipe([prompt] * len(seeds), negative_prompt=[config.negative] * len(seeds) if config.negative else None,
                               height=config.height, width=config.width, num_inference_steps=config.steps,
                               guidance_scale=config.cfg, generator=generators, latents=latents,
                               clip_skip=config.clip_skip - 1 or None, output_type="np").images
        return (np.nan_to_num(images) * 255).round().clip(0, 255).astype(np.uint8)

    def close(self) -> None:
        self.switcher.remove()
        del self.pipe
        gc.collect()
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


def _batches(todo: list[PlannedImage], size: int):
    """Consecutive images of one cell and prompt, at most ``size`` at a time (they differ only in seed)."""
    batch: list[PlannedImage] = []
    for item in todo:
        if batch and (len(batch) >= size or (item.checkpoint, item.strength, item.prompt_index) !=
                      (batch[0].checkpoint, batch[0].strength, batch[0].prompt_index)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def generate_missing(config: SweepConfig, todo: list[PlannedImage], progress: Progress, base_model=None) -> int:
    """Generate and save ``todo`` (in plan order); cancellable between batches, every saved image stays."""
    if not todo:
        return 0
    generator = Generator(config, base_model)
    progress.start(len(todo), "generating")
    written = 0
    try:
        for batch in _batches(todo, config.batch_size):
            progress.check()
            first = batch[0]
            generator.use(first.checkpoint, first.strength)
            images = generator.generate(first.prompt, [item.seed for item in batch])
            for rgb, item in zip(images, batch):
                save_sweep_png(rgb, item)
                written += 1
            progress.advance(len(batch), f"{first.checkpoint.label if first.checkpoint else NO_LORA}"
                                          f"{'' if first.strength is None else f' @ {first.strength:g}'}")
    finally:
        generator.close()
        progress.finish()
    return written


# ------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------


def score_images(records: list[SweepImage], engine, references, cache, progress: Progress) -> list:
    """Fill ``score``, ``box`` and ``memorised`` of each record from its PNG (faces cached by content);
    returns each record's :class:`~..faces.FaceResult`."""
    from ..pipeline import ScoreSettings, analyze_paths, score_result

    settings = ScoreSettings(group_by="none")
    results = analyze_paths(engine, [r.path for r in records], cache=cache, progress=progress, description="scoring faces")
    for record, result in zip(records, results):
        if result.error:
            record.extra["error"] = result.error
            continue
        scored = score_result(result, references, settings)
        record.score = scored.value(settings.aggregation)
        record.memorised = bool(scored.memorised)
        if scored.face_index is not None:
            record.box = [round(float(v), 1) for v in result.faces[scored.face_index].box]
    return results


def people_set_for(config: SweepConfig, engine, cache, progress: Progress):
    """The :class:`~..people.PeopleSet` of ``config.people``: a multi-identity dataset's people and their
    reference folders, else one sub-folder of photos per person."""
    from ..people_sweep import read_dataset_people
    from ..pipeline import build_people, people_folders

    dataset = read_dataset_people(config.people)
    folders = list(dataset.refs.items()) if dataset is not None else people_folders(config.people)
    return build_people(engine, folders, cache=cache, progress=progress)


def recommend_people(records: list[SweepImage], results: list, people) -> object:
    """Assign every image's faces to the people (expected: the trigger words its prompt names) and
    recommend the cell best for the worst-served person; each record's ``extra`` gets ``people``/``blended``
    and its ``memorised`` is judged per person (the pooled references' check is replaced)."""
    from ..people import expected_from_prompt, people_in_image
    from ..people_sweep import PeopleCell, recommend_for_people

    cells: dict[tuple, PeopleCell] = {}
    for record, result in zip(records, results):
        key = (record.checkpoint, record.strength)
        cell = cells.setdefault(key, PeopleCell(record.checkpoint, record.strength, record.epoch, record.order))
        if result.error:
            continue
        expected = expected_from_prompt(record.prompt, {name: name for name in people.names}) or None
        assigned = people_in_image(people, [f.embedding for f in result.faces], expected)
        record.extra["people"] = {name: person.as_dict() for name, person in assigned.people.items()}
        record.extra["blended"] = assigned.blended
        record.memorised = bool(assigned.memorised)  # per person: a face against its own person's photos
        cell.images.append(assigned)
    ordered = sorted(cells.values(), key=lambda c: (c.strength is not None, c.order, c.strength or 0.0))
    return recommend_for_people(people, ordered)


def measure_adherence(records: list[SweepImage], config: SweepConfig, progress: Progress, warnings: list[str]) -> dict | None:
    """CLIP image-text similarity per image when a CLIP model is available locally; ``None`` otherwise."""
    if not config.adherence:
        return None
    from .adherence import PromptAdherence, find_clip_model

    folder = find_clip_model(config.clip)
    if folder is None:
        return None
    import numpy as np
    from PIL import Image

    model = PromptAdherence.load(folder)
    progress.start(len(records), "prompt adherence (CLIP)")
    batch = 8
    for start in range(0, len(records), batch):
        progress.check()
        chunk = records[start:start + batch]
        arrays = []
        for record in chunk:
            with Image.open(record.path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        for record, value in zip(chunk, model.score(arrays, [r.prompt for r in chunk])):
            record.adherence = float(value)
        progress.advance(len(chunk))
    progress.finish()
    return {"clip_model": str(folder)}


# ------------------------------------------------------------------------------------------------
# the whole sweep
# ------------------------------------------------------------------------------------------------


def run_sweep(config: SweepConfig, progress: Progress | None = None, engine=None, cache=None, base_model=None,
              write: bool = True) -> SweepResult:
    """Generate (or reuse), score, recommend and write the report of one sweep.

    Args:
        config: the sweep (validated here).
        progress: drawn by the front door; ``check()`` between batches raises :class:`~..progress.Cancelled`
            (every image saved so far is reused by the next run).
        engine: a loaded :class:`~..faces.FaceEngine` (default: ``config.pack``); cache: a :class:`~..cache.FaceCache`.
        base_model: an already loaded :class:`~..families.LoadedModel` (hosts that hold one).
        write: write the report files under ``config.out``.

    Raises:
        SweepConfigError, PackNotFoundError, NoReferencesError, ModelLoadError (:mod:`lora_likeness.families`):
            settings to fix (clear messages).
    """
    from ..cache import FaceCache
    from ..faces import DEFAULT_PACK, FaceEngine
    from ..families import detect_family
    from ..pipeline import build_references
    from ..report import preserve_file

    config.validate()
    family = base_model.family if base_model is not None else detect_family(config.base, config.family)
    config = config.for_family(family)
    if config.adherence and config.clip is not None:
        from .adherence import clip_folder_problem

        problem = clip_folder_problem(config.clip)
        if problem:  # asked for explicitly: say so now, not after an hour of generation
            raise SweepConfigError(f"--clip: {problem}")
    progress = progress or Progress()
    started = time.perf_counter()
    timings: dict = {}
    warnings: list[str] = []
    checkpoints = sweep_checkpoints(config, family.name)
    engine = engine or FaceEngine.load(config.pack or DEFAULT_PACK, providers=config.providers)
    cache = cache if cache is not None else FaceCache()
    people = people_set_for(config, engine, cache, progress) if config.people is not None else None
    if people is not None:
        from ..pipeline import people_references

        references = people_references(people)
    else:
        references = build_references(engine, config.refs, cache=cache, progress=progress)

    planned = plan_images(config, checkpoints, base_fingerprint(config.base))
    done, todo, stale = split_done(planned)
    for path in stale:
        moved = preserve_file(path)
        if moved is not None:
            warnings.append(f"{path.relative_to(config.out)} was made with other settings; kept as {moved.name} and regenerated")
    timings["planned_s"] = round(time.perf_counter() - started, 3)
    mark = time.perf_counter()
    generated = generate_missing(config, todo, progress, base_model)
    timings["generation_s"] = round(time.perf_counter() - mark, 3)

    records = [item.record() for item in planned]
    mark = time.perf_counter()
    face_results = score_images(records, engine, references, cache, progress)
    people_recommendation = recommend_people(records, face_results, people) if people is not None else None
    timings["scoring_s"] = round(time.perf_counter() - mark, 3)
    adherence = measure_adherence(records, config, progress, warnings)

    cells = cells_from_records({"checkpoint": r.checkpoint, "strength": r.strength, "epoch": r.epoch, "score": r.score,
                                "key": r.key, "memorised": r.memorised, "adherence": r.adherence} for r in records)
    recommendation = recommend(cells, ceiling=references.baseline.mean, max_no_face=config.max_no_face)
    recommendation.warnings = list(references.warnings) + warnings + list(recommendation.warnings)
    if people_recommendation is not None:
        # The family's warnings lead: the classic recommendation scores the largest face against everyone's photos.
        recommendation.warnings = [f"people: {w}" for w in people.warnings] + list(people_recommendation.warnings) + recommendation.warnings
    result = SweepResult(config=config, checkpoints=checkpoints, images=records, recommendation=recommendation,
                         generated=generated, reused=len(done), warnings=warnings, timings=timings, people=people_recommendation)
    if write:
        from .report import write_sweep_report

        settings = {**config.as_dict(), "checkpoints": [c.label for c in checkpoints], "face_model": engine.describe(),
                    "references": len(references.used_paths()), "generated": generated, "reused": len(done)}
        if adherence:
            settings.update(adherence)
        if people is not None:
            settings["people"] = people.as_dict()
        result.files = write_sweep_report(Path(config.out), records, recommendation, settings, people=people_recommendation)
        from ..images import write_text_atomic

        manifest = Path(config.out) / MANIFEST
        write_text_atomic(manifest, json.dumps({"config": config.as_dict(), **result.as_dict(),
                                                "images": [_image_row(r, config.out) for r in records]}, indent=2) + "\n")
        result.files[MANIFEST] = manifest
    timings["total_s"] = round(time.perf_counter() - started, 3)
    return result


def _image_row(record: SweepImage, out: Path) -> dict:
    return {"path": record.path.relative_to(out).as_posix(), "checkpoint": record.checkpoint, "epoch": record.epoch,
            "strength": record.strength, "seed": record.seed, "prompt_index": record.prompt_index, "score": record.score,
            "memorised": record.memorised, "adherence": record.adherence, "box": record.box, **record.extra}
