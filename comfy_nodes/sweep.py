"""LoRA Checkpoints and Epoch Sweep: one training run's epochs x strengths x seeds, sampled in ComfyUI.

Epoch Sweep samples with ComfyUI's own code (``comfy.sd.load_lora_for_models``, ``comfy.sample``,
the VAE's ``decode``), so images match what a LoraLoader + KSampler graph gives for the same
settings. Each LoRA is applied to a clone of the already-loaded MODEL and CLIP: the checkpoint is
never reloaded and the base model never changes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lora_likeness import checkpoints as lora_checkpoints
from lora_likeness.checkpoints import LoraCheckpoint
from lora_likeness.recommend import NO_LORA

from . import host
from .host import io
from .types import CATEGORY, CheckpointsType, LabelsType

log = logging.getLogger("lora_likeness.comfyui")

NO_RUNS = "(no LoRA files in models/loras)"


# --------------------------------------------------------------------------------------------
# LoRA Checkpoints
# --------------------------------------------------------------------------------------------


def find_runs() -> dict[str, tuple[Path, list[LoraCheckpoint]]]:
    """Run key -> (loras folder, checkpoints) over all of ComfyUI's loras folders; the first folder
    holding a run wins, as ComfyUI's own lookup of ``lora_name`` does."""
    runs: dict[str, tuple[Path, list[LoraCheckpoint]]] = {}
    for root in host.lora_roots():
        for key, items in lora_checkpoints.list_runs(root).items():
            runs.setdefault(key, (root, items))
    return runs


def describe_checkpoints(items: list[LoraCheckpoint]) -> str:
    lines = [f"{len(items)} checkpoint(s) of run {items[0].run}:" if items else "no checkpoints"]
    lines += [f"  {c.label:>12}  {c.name}" for c in items]
    return "\n".join(lines)


class LoraCheckpoints(io.ComfyNode):
    """The epoch checkpoints of one Kohya training run in ``models/loras``, in epoch order."""

    @classmethod
    def define_schema(cls):
        runs = list(find_runs()) or [NO_RUNS]
        return io.Schema(
            node_id="LikenessLoraCheckpoints",
            display_name="LoRA Checkpoints",
            category=CATEGORY,
            description=(
                "Lists one training run's LoRA files from models/loras in epoch order: Kohya's name-000001 … "
                "name-0000NN and the final name (its epoch from ss_epoch metadata). Epoch 0 in the range means "
                "'from the first' / 'to the last'. A run saved by step (name-step00000500, ai-toolkit, OneTrainer) "
                "is listed in step order and its range is in steps."
            ),
            inputs=[
                io.Combo.Input("run", options=runs, default=runs[0],
                               tooltip="Training run: files sharing one name (sub-folder/name) in models/loras."),
                io.Int.Input("first_epoch", default=0, min=0, max=100000,
                             tooltip="0: from the first epoch. In steps for a run saved by step only (no epoch files)."),
                io.Int.Input("last_epoch", default=0, min=0, max=100000,
                             tooltip="0: up to the last epoch. In steps for a run saved by step only (no epoch files)."),
                io.Boolean.Input("include_final", default=True,
                                 tooltip="Include the final file (saved without an epoch number)."),
            ],
            outputs=[
                CheckpointsType.Output("checkpoints", display_name="checkpoints"),
                io.String.Output("listing", display_name="listing"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, run="", first_epoch=0, last_epoch=0, include_final=True):
        digest = hashlib.sha256(f"{run}|{first_epoch}|{last_epoch}|{include_final}".encode())
        for root in host.lora_roots():
            for item in lora_checkpoints.scan_loras(root):
                stat = item.path.stat()
                digest.update(f"{item.path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    @classmethod
    def execute(cls, run: str, first_epoch: int = 0, last_epoch: int = 0, include_final: bool = True):
        runs = find_runs()
        if not runs:
            folders = ", ".join(str(p) for p in host.lora_roots()) or "models/loras"
            raise FileNotFoundError(
                f"No LoRA files found in {folders}. Put one training run's checkpoints there "
                f"(name-000001.safetensors … name.safetensors, as Kohya's sd-scripts saves them), then refresh."
            )
        if run not in runs:
            raise ValueError(f"No LoRA training run {run!r} in models/loras (runs found: {', '.join(runs)})")
        root, _ = runs[run]
        first, last = (first_epoch or None), (last_epoch or None)
        items = lora_checkpoints.run_checkpoints(root, run, first, last, include_final)
        if not items:
            epochs = ", ".join(c.label for c in runs[run][1])
            raise ValueError(f"Run {run} has no checkpoint in the chosen range (it has: {epochs})")
        return io.NodeOutput(items, describe_checkpoints(items))


# --------------------------------------------------------------------------------------------
# Epoch Sweep
# --------------------------------------------------------------------------------------------


def parse_numbers(text: str, kind: type, what: str) -> list:
    """``"0.6, 0.8 1.0"`` -> ``[0.6, 0.8, 1.0]``; order kept, duplicates dropped."""
    parts = [p for p in re.split(r"[,;\s]+", str(text).strip()) if p]
    values = []
    for part in parts:
        try:
            value = kind(float(part)) if kind is int and re.fullmatch(r"[+-]?\d+(\.0*)?", part) else kind(part)
        except ValueError:
            raise ValueError(f"{what}: {part!r} is not a{'n integer' if kind is int else ' number'} (got {text!r})") from None
        if value not in values:
            values.append(value)
    if not values:
        raise ValueError(f"{what}: give at least one value, separated by commas (got {text!r})")
    return values


@dataclass(frozen=True)
class Cell:
    """One image of the sweep; ``checkpoint`` None is the base model alone (the no-LoRA baseline)."""

    checkpoint: LoraCheckpoint | None
    strength: float
    seed: int


def plan(items: list[LoraCheckpoint], strengths: list[float], seeds: list[int], baseline: bool = False) -> list[Cell]:
    """Checkpoint-major order: each LoRA file is read once and each (LoRA, strength) applied once.
    With ``baseline``, the base model alone comes first, once per seed (strength 0)."""
    floor = [Cell(None, 0.0, seed) for seed in seeds] if baseline else []
    return floor + [Cell(c, s, seed) for c in items for s in strengths for seed in seeds]


def cell_label(cell: Cell, several_runs: bool) -> tuple[str, dict]:
    """The core's ``(group label, info)`` for one image, with its grid row and column. The
    baseline is the row ``no LoRA`` in the column ``@0`` (strength 0 is what it is)."""
    if cell.checkpoint is None:
        return NO_LORA, {"run": None, "epoch": None, "step": None, "strength": 0.0, "seed": cell.seed,
                         "lora": None, "row": NO_LORA, "column": "@0"}
    use = cell.checkpoint.use(cell.strength)
    row = f"{cell.checkpoint.run_name} {cell.checkpoint.label}" if several_runs else cell.checkpoint.label
    info = {
        "run": use.run, "epoch": use.epoch, "step": use.step, "strength": cell.strength, "seed": cell.seed,
        "lora": cell.checkpoint.name, "row": row, "column": f"@{cell.strength:g}",
    }
    return use.label, info


# ComfyUI's model classes (comfy.supported_models) -> the core's architecture names; others are
# "unknown", which the architecture check lets through (ComfyUI then reports unmatched keys).
_ARCHITECTURES = (
    ("SDXLRefiner", "sdxl"), ("SDXL", "sdxl"), ("SD15", "sd1"), ("SD20", "sd2"), ("SD3", "sd3"), ("Flux", "flux"),
)


class ComfySampling:
    """The ComfyUI calls Epoch Sweep makes, in one place (unit tests put a recording fake here)."""

    def architecture(self, model) -> str:
        config = getattr(getattr(model, "model", None), "model_config", None)
        names = [klass.__name__ for klass in type(config).__mro__] if config is not None else []
        for name in names:
            for known, arch in _ARCHITECTURES:
                if name == known:
                    return arch
        return "unknown"

    def load_lora(self, path: Path):
        import comfy.utils

        return comfy.utils.load_torch_file(str(path), safe_load=True)  # safetensors only: no pickle

    def matching_keys(self, model, clip, lora) -> int:
        """How many of the LoRA's weights this MODEL/CLIP has (0: made for another model)."""
        import comfy.lora
        import comfy.lora_convert

        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        if clip is not None:
            key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
        return len(comfy.lora.load_lora(comfy.lora_convert.convert_lora(dict(lora)), key_map, log_missing=False))

    def apply(self, model, clip, lora, strength: float):
        import comfy.sd

        if strength == 0:
            return model, clip
        # Clones of the patchers with the LoRA as patches: the loaded base stays as it is.
        return comfy.sd.load_lora_for_models(model, clip, lora, strength, strength)

    def encode(self, clip, text: str):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    def sample(self, model, positive, negative, seed: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, width: int, height: int, progress: host.HostProgress):
        import comfy.model_management
        import comfy.sample
        import comfy.utils
        import latent_preview
        import torch

        latent = torch.zeros([1, 4, height // 8, width // 8], device=comfy.model_management.intermediate_device())
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

        def callback(step, x0, x, total_steps):
            preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
            progress.step(step, preview)  # ComfyUI's hook raises on Stop here, between sampler steps

        return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                   callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)

    def decode(self, vae, samples):
        images = vae.decode(samples)
        if len(images.shape) == 5:  # video VAEs: fold frames into the batch, as VAEDecode does
            images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
        return images[..., :3]


def _sampler_options() -> tuple[list[str], list[str]]:
    if host.IN_COMFYUI:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    return ["euler", "euler_ancestral", "dpmpp_2m"], ["normal", "karras", "simple"]


class EpochSweep(io.ComfyNode):
    """Checkpoints x strengths x seeds -> IMAGE batch + per-image labels, with ComfyUI's sampler."""

    sampling = ComfySampling()

    @classmethod
    def define_schema(cls):
        samplers, schedulers = _sampler_options()
        return io.Schema(
            node_id="LikenessEpochSweep",
            display_name="Epoch Sweep",
            category=CATEGORY,
            description=(
                "Samples every checkpoint of a training run at every strength and seed with ComfyUI's own sampler, "
                "applying each LoRA to the loaded MODEL/CLIP (the checkpoint is not reloaded). Outputs the images in "
                "checkpoint, strength, seed order (the no-LoRA baseline first, when included) and a label per image "
                "for Score Images and Scored Grid."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                io.Vae.Input("vae"),
                CheckpointsType.Input("checkpoints", tooltip="From LoRA Checkpoints."),
                io.String.Input("positive", multiline=True, default="photo of sks person",
                                tooltip="Positive prompt (include the LoRA's trigger word)."),
                io.String.Input("negative", multiline=True, default=""),
                io.String.Input("strengths", default="0.6, 0.8, 1.0",
                                tooltip="LoRA strengths (model and CLIP), comma-separated; 0 samples the base model."),
                io.String.Input("seeds", default="1, 2", tooltip="Seeds, comma-separated: the same seeds for every cell."),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=samplers, default="euler" if "euler" in samplers else samplers[0]),
                io.Combo.Input("scheduler", options=schedulers, default="normal" if "normal" in schedulers else schedulers[0]),
                io.Int.Input("width", default=512, min=64, max=8192, step=8),
                io.Int.Input("height", default=512, min=64, max=8192, step=8),
                # Last, and optional: saved workflows and API prompts without it stay valid.
                io.Boolean.Input("include_baseline", default=True, optional=True,
                                 tooltip="Also sample the base model without any LoRA, once per seed: the 'no LoRA' "
                                         "row (the floor the recommendation compares against)."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images"),
                LabelsType.Output("labels", display_name="labels"),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, checkpoints, positive: str, negative: str, strengths: str, seeds: str,
                steps: int, cfg: float, sampler_name: str, scheduler: str, width: int, height: int,
                include_baseline: bool = True):
        import torch

        items: list[LoraCheckpoint] = list(checkpoints or [])
        if not items:
            raise ValueError("Epoch Sweep got no checkpoints: connect LoRA Checkpoints")
        strength_values = parse_numbers(strengths, float, "strengths")
        seed_values = parse_numbers(seeds, int, "seeds")
        sampling = cls.sampling
        base = sampling.architecture(model)
        for item in items:  # every file before the first image: a wrong LoRA fails in a second, not an hour
            lora_checkpoints.check_architecture(item.path, base)
        cells = plan(items, strength_values, seed_values, baseline=bool(include_baseline))
        several_runs = len({c.run for c in items}) > 1
        progress = host.HostProgress(steps_per_item=steps)
        progress.start(len(cells), "epoch sweep")
        images, labels = [], []
        lora_path, lora, applied = None, None, None
        for cell in cells:
            progress.check()
            path = cell.checkpoint.path if cell.checkpoint is not None else None
            if path is not None and path != lora_path:
                lora_path, lora = path, sampling.load_lora(path)
                if sampling.matching_keys(model, clip, lora) == 0:
                    raise lora_checkpoints.ArchitectureMismatch(
                        f"{cell.checkpoint.name}: none of its weights match the loaded model "
                        f"({lora_checkpoints.ARCHITECTURE_NAMES.get(base, base)}); it was made for another base model"
                    )
            if applied is None or applied[0] != (path, cell.strength):
                # The baseline samples the loaded MODEL/CLIP as they are.
                patched_model, patched_clip = (model, clip) if path is None else sampling.apply(model, clip, lora, cell.strength)
                conditioning = (sampling.encode(patched_clip, positive), sampling.encode(patched_clip, negative))
                applied = ((path, cell.strength), patched_model, conditioning)
            _, patched_model, (positive_cond, negative_cond) = applied
            samples = sampling.sample(patched_model, positive_cond, negative_cond, cell.seed, steps, cfg,
                                      sampler_name, scheduler, width, height, progress)
            images.append(sampling.decode(vae, samples).float().cpu())
            labels.append(cell_label(cell, several_runs))
            progress.advance(1, labels[-1][0])
        progress.finish()
        return io.NodeOutput(torch.cat(images, dim=0), labels)


NODES = [LoraCheckpoints, EpochSweep]
