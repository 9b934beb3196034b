"""How other trainers name (and tag) the checkpoints and sample images they write.

Every pattern below was read from the trainer's own code; the function that writes each name is
cited beside it. Nothing here opens an image or a tensor: names, PNG text chunks and safetensors
headers only.

Checkpoints (a file's stem -> run name, epoch, step):

* sd-scripts / kohya_ss, musubi-tuner, ComfyUI-FluxTrainer (which calls sd-scripts'
  ``train_util``): ``name-000010`` (``EPOCH_FILE_NAME = "{}-{:06d}"``, ``get_epoch_ckpt_name``) and
  ``name-step00000500`` (``STEP_FILE_NAME = "{}-step{:08d}"``, ``get_step_ckpt_name``); the final one is
  ``name`` (``get_last_ckpt_name``). Their metadata holds ``ss_epoch`` and ``ss_steps``
  (``get_sai_model_spec`` / ``train_network.py``'s ``metadata``).
* ai-toolkit: ``{job_name}_{step:09d}`` (``BaseSDTrainProcess.save``: ``step_num = f"_{str(step).zfill(9)}"``),
  final ``{job_name}``; metadata ``training_info`` = JSON ``{"step": …, "epoch": …}``
  (``BaseSDTrainProcess.update_training_metadata``).
* OneTrainer: ``save/{prefix}{YYYY-mm-dd_HH-MM-SS}-save-{global_step}-{epoch}-{epoch_step}``
  (``GenericTrainer.__save`` with ``TrainProgress.filename_string``); backups the same with ``-backup-``.
* diffusers / accelerate: ``checkpoint-500/`` folders (``lora_likeness.checkpoints`` reads those).

Sample images (a path relative to the samples folder -> step, epoch, prompt index, seed):

* sd-scripts / kohya_ss: ``sample/{output_name}_{e000010|000500}_{prompt:02d}_{YYYYmmddHHMMSS}[_{seed}].png``
  (``train_util.sample_image_inference``: ``num_suffix = f"e{epoch:06d}" if epoch is not None else f"{steps:06d}"``);
  samples at an epoch's end are named by the epoch only.
* musubi-tuner: the same name plus ``_{frame:03d}`` (``trainer_base.sample_image_inference`` and
  ``hv_generate_video.save_images_grid(create_subdir=False)``).
* ai-toolkit: ``samples/{time_ms}__{step:09d}_{prompt}.{jpg|png|webp}`` (``BaseSDTrainProcess.sample``:
  ``filename = f"[time]_{step_num}_[count]…"``, ``GenerateImageConfig._get_path_no_ext``); files are written
  into ``samples/.tmp`` and moved into place (``save_image_atomic``).
* OneTrainer: ``samples/{prompt index} - {prompt}/{prefix}{YYYY-mm-dd_HH-MM-SS}-training-sample-{global_step}-{epoch}-{epoch_step}.png``
  (``GenericTrainer.__sample_loop``).
* A1111 / Forge / ComfyUI images and Likeness' own PNGs: the seed from the metadata (``Seed: 123`` in A1111's
  infotext, a sampler node's ``seed``/``noise_seed`` in ComfyUI's graph).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

# -- checkpoints -------------------------------------------------------------------------------

# sd-scripts library/train_util.py (and musubi-tuner utils/train_utils.py): EPOCH_FILE_NAME, STEP_FILE_NAME.
_KOHYA_EPOCH = re.compile(r"^(?P<run>.+?)-(?P<epoch>\d{6})$")
_KOHYA_STEP = re.compile(r"^(?P<run>.+?)-step(?P<step>\d{8})$")
# ai-toolkit jobs/process/BaseSDTrainProcess.py save(): f"{job_name}_{str(step).zfill(9)}".
_AI_TOOLKIT_STEP = re.compile(r"^(?P<run>.+?)_(?P<step>\d{9})$")
# OneTrainer modules/trainer/GenericTrainer.py __save()/__backup(): "{prefix}{timestamp}-save-{step}-{epoch}-{epoch_step}".
_ONETRAINER_SAVE = re.compile(
    r"^(?P<prefix>.*?)(?P<time>\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})-(?:save|backup)-(?P<step>\d+)-(?P<epoch>\d+)-(?P<epoch_step>\d+)$"
)


@dataclass(frozen=True)
class CheckpointName:
    """What a checkpoint's file stem says: its run, epoch and step (``None`` where the name does not say)."""

    run: str
    epoch: int | None = None
    step: int | None = None
    trainer: str = ""


def parse_checkpoint_stem(stem: str) -> CheckpointName:
    """``jx-000010`` -> epoch 10; ``jx-step00000500`` -> step 500; ``jx_000000250`` -> step 250 (ai-toolkit);
    ``2026-12-07_10-00-00-save-500-2-100`` -> step 500, epoch 2 (OneTrainer); anything else is a final file."""
    match = _KOHYA_EPOCH.match(stem)
    if match:
        return CheckpointName(match["run"], int(match["epoch"]), None, "sd-scripts")
    match = _KOHYA_STEP.match(stem)
    if match:
        return CheckpointName(match["run"], None, int(match["step"]), "sd-scripts")
    match = _AI_TOOLKIT_STEP.match(stem)
    if match:
        return CheckpointName(match["run"], None, int(match["step"]), "ai-toolkit")
    match = _ONETRAINER_SAVE.match(stem)
    if match:
        run = match["prefix"].rstrip("-_ ") or "onetrainer"
        # OneTrainer counts epochs from 0 while one runs: "-save-500-2-100" is in the third epoch.
        return CheckpointName(run, int(match["epoch"]), int(match["step"]), "onetrainer")
    return CheckpointName(stem)


def _integer(value) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() else None


def progress_from_metadata(metadata: dict) -> tuple[int | None, int | None]:
    """``(epoch, step)`` a LoRA's safetensors metadata records: sd-scripts' ``ss_epoch``/``ss_steps``, else
    ai-toolkit's ``training_info`` JSON (``{"step": 250, "epoch": 1}``); ``None`` where not recorded."""
    epoch, step = _integer(metadata.get("ss_epoch")), _integer(metadata.get("ss_steps"))
    info = metadata.get("training_info")
    if (epoch is None or step is None) and isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            info = None
    if isinstance(info, dict):
        epoch = epoch if epoch is not None else _integer(info.get("epoch"))
        step = step if step is not None else _integer(info.get("step"))
    return epoch, step


# -- sample images -----------------------------------------------------------------------------

# sd-scripts train_util.sample_image_inference / musubi-tuner trainer_base.sample_image_inference:
# f"{output_name + '_'}{e{epoch:06d} | {steps:06d}}_{i:02d}_{%Y%m%d%H%M%S}{_seed}" (+ "_{frame:03d}" in musubi).
_KOHYA_SAMPLE = re.compile(
    r"^(?:(?P<run>.*)_)?(?:e(?P<epoch>\d{6})|(?P<step>\d{6,}))_(?P<prompt>\d{2,})_(?P<time>\d{14})(?:_(?P<seed>\d+))?(?:_(?P<frame>\d{3}))?$"
)
# ai-toolkit BaseSDTrainProcess.sample: f"[time]_{_{step:09d}}_[count]", [time] = int(time.time() * 1000).
_AI_TOOLKIT_SAMPLE = re.compile(r"^(?P<time>\d{10,})__(?P<step>\d{9})_(?P<prompt>\d+)$")
# OneTrainer GenericTrainer.__sample_loop: samples/"{i} - {prompt}"/"{prefix}{timestamp}-training-sample-{step}-{epoch}-{epoch_step}".
_ONETRAINER_SAMPLE = re.compile(
    r"^(?P<prefix>.*?)(?P<time>\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})-training-sample-(?P<step>\d+)-(?P<epoch>\d+)-(?P<epoch_step>\d+)$"
)
_ONETRAINER_PROMPT_FOLDER = re.compile(r"^(?P<prompt>\d+) - ")
# Folders a sample sits in that name a step (ComfyUI SaveImage prefixes such as "samples/step_500/…").
_STEP_PART = re.compile(r"(?:^|[_\-. ])(?:step|steps|global_step)[_\-]?(?P<step>\d+)(?:$|[_\-. ])", re.IGNORECASE)
_LIKENESS_SAMPLE = re.compile(r"^likeness_sample_(?P<prompt>\d+)$")
# A1111 infotext "…, Seed: 1234, …"; ComfyUI sampler inputs.
_A1111_SEED = re.compile(r"(?:^|[\s,])Seed:\s*(?P<seed>-?\d+)")
_COMFY_SEED_INPUTS = ("seed", "noise_seed")


@dataclass(frozen=True)
class SampleLabel:
    """Where a sample image sits in training.

    Attributes:
        step: global training step it was made at (``None`` when only the epoch is known).
        epoch: epoch, when the name says (sd-scripts' end-of-epoch samples, OneTrainer).
        prompt: index of the sample prompt (the trainer's prompt list order), ``None`` when unknown.
        seed: the sampling seed, from the name or the image's metadata.
        trainer: ``sd-scripts``, ``musubi-tuner``, ``ai-toolkit``, ``onetrainer`` or ``metadata``/``folder``.
    """

    step: int | None
    epoch: int | None = None
    prompt: int | None = None
    seed: int | None = None
    trainer: str = ""

    @property
    def known(self) -> bool:
        return self.step is not None or self.epoch is not None

    @property
    def label(self) -> str:
        """``step 500``, ``epoch 10`` (end-of-epoch samples without a step), or ``unknown step``."""
        if self.step is not None:
            return f"step {self.step}"
        if self.epoch is not None:
            return f"epoch {self.epoch}"
        return "unknown step"

    def sort_key(self) -> tuple:
        # Unknown last; end-of-epoch samples without a step by epoch after the stepped ones of a run.
        if self.step is not None:
            return (0, self.step, self.epoch or 0)
        if self.epoch is not None:
            return (1, self.epoch, 0)
        return (2, 0, 0)


def parse_sample_path(relative: str) -> SampleLabel | None:
    """The step/epoch/prompt/seed a trainer's sample file name (path relative to the samples folder) says,
    ``None`` when it follows none of the layouts in the module docstring."""
    path = PurePosixPath(relative.replace("\\", "/"))
    stem = path.stem
    match = _AI_TOOLKIT_SAMPLE.match(stem)
    if match:
        return SampleLabel(int(match["step"]), None, int(match["prompt"]), None, "ai-toolkit")
    match = _ONETRAINER_SAMPLE.match(stem)
    if match:
        folder = _ONETRAINER_PROMPT_FOLDER.match(path.parent.name)
        prompt = int(folder["prompt"]) if folder else None
        return SampleLabel(int(match["step"]), int(match["epoch"]), prompt, None, "onetrainer")
    match = _KOHYA_SAMPLE.match(stem)
    if match:
        trainer = "musubi-tuner" if match["frame"] is not None else "sd-scripts"
        epoch = int(match["epoch"]) if match["epoch"] is not None else None
        step = int(match["step"]) if match["step"] is not None else None
        seed = int(match["seed"]) if match["seed"] is not None else None
        return SampleLabel(step, epoch, int(match["prompt"]), seed, trainer)
    for part in reversed([*path.parent.parts, stem]):
        found = _STEP_PART.search(part)
        if found:
            own = _LIKENESS_SAMPLE.match(stem)  # a host node's validation images (lora_likeness.watch.VALIDATION_NAME)
            return SampleLabel(int(found["step"]), None, int(own["prompt"]) if own else None, None, "folder")
    return None


def seed_from_metadata(texts: dict[str, str]) -> int | None:
    """The sampling seed recorded in an image's metadata (:func:`lora_likeness.labels.read_generation_text`):
    A1111's ``Seed:``, else the seed of the ComfyUI graph's sampler when it has exactly one."""
    parameters = texts.get("parameters")
    if parameters:
        match = _A1111_SEED.search(parameters)
        if match:
            return int(match["seed"])
    prompt = texts.get("prompt")
    if prompt:
        try:
            graph = json.loads(prompt)
        except ValueError:
            graph = None
        seeds = set()
        if isinstance(graph, dict):
            for node in graph.values():
                inputs = node.get("inputs") if isinstance(node, dict) else None
                if isinstance(inputs, dict):
                    seeds.update(int(inputs[k]) for k in _COMFY_SEED_INPUTS if isinstance(inputs.get(k), int))
        if len(seeds) == 1:
            return seeds.pop()
    return None


def sample_label(relative: str, texts: dict[str, str] | None = None) -> SampleLabel:
    """:func:`parse_sample_path`, with the seed filled in from metadata; an unknown name gives
    ``SampleLabel(None)`` (grouped as ``unknown step``)."""
    label = parse_sample_path(relative) or SampleLabel(None)
    if label.seed is None and texts:
        seed = seed_from_metadata(texts)
        if seed is not None:
            label = SampleLabel(label.step, label.epoch, label.prompt, seed, label.trainer or "metadata")
    return label
