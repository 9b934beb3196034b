"""Train LoRA: a Kohya dataset + an SD1.x or SDXL checkpoint -> per-epoch LoRA files in ``models/loras/<name>/``.

The built-in trainer (``lora_likeness.training``, diffusers + peft) runs in ComfyUI's process, so
ComfyUI's loaded models are unloaded first to give it the GPU memory. The core tells the model family
from the checkpoint's keys (:func:`lora_likeness.families.detect_family`) and fills what is left at 0
(the resolution) from it; every text encoder's tokenizer is ComfyUI's bundled ``sd1_tokenizer``, as
ComfyUI's own SD1 and SDXL text encoders use it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import host
from .host import io
from .types import CATEGORY

log = logging.getLogger("lora_likeness.comfyui")

NO_CHECKPOINTS = "(no checkpoints in models/checkpoints)"


def bucket_settings(resolution: int) -> dict:
    """Aspect buckets around ``resolution``: half to twice the side, as sd-scripts' 256..1024 for 512;
    64-px steps, or 8-px steps for resolutions below 256 (test-sized models). 0: the model family's
    resolution and buckets (the core fills them)."""
    if not resolution:
        return {"resolution": None, "min_bucket_reso": None, "max_bucket_reso": None}
    return {"resolution": resolution, "min_bucket_reso": max(32, resolution // 2), "max_bucket_reso": resolution * 2,
            "bucket_reso_steps": 64 if resolution >= 256 else 8}


def run_key(loras_root: Path, out: Path, name: str) -> str:
    """The run's key as LoRA Checkpoints lists it: ``<name>/<name>`` for ``loras/<name>/<name>-000001…``."""
    return f"{out.relative_to(loras_root).as_posix()}/{name}"


def describe_result(result, key: str, family_title: str, resolution: int) -> str:
    """The summary output; ``resolution`` is the one used (the family's when the node's was 0)."""
    lines = [
        f"LoRA run {key}: {len(result.checkpoints)} epoch file(s)" + (f" + final {result.final.name}" if result.final else ""),
        f"{family_title} LoRA, trained at {resolution} px",
        f"{result.epochs_done} epoch(s), {result.steps} step(s) in {result.out}",
    ]
    if result.loss_csv:
        lines.append(f"loss log: {result.loss_csv}")
    if result.stopped_early:
        lines.append("stopped early: the identity score stopped improving")
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)


class TrainLora(io.ComfyNode):
    """One LoRA training run with the built-in trainer; Kohya-named files LoRA Checkpoints can list."""

    @classmethod
    def define_schema(cls):
        names = host.checkpoint_names() or [NO_CHECKPOINTS]
        return io.Schema(
            node_id="LikenessTrainLora",
            display_name="Train LoRA",
            category=CATEGORY,
            description=(
                "Trains an SD1.x or SDXL LoRA (the family is read from the checkpoint) on a Kohya dataset folder (from "
                "Prepare Dataset) and saves name-000001.safetensors … per epoch and name.safetensors at the end into "
                "models/loras/<name>/. Unloads ComfyUI's models first. Stop saves the state (name.likeness-state, which "
                "LoRA loaders do not list): queue again with resume on to continue."
            ),
            inputs=[
                io.Combo.Input("checkpoint", options=names, default=names[0], tooltip="SD1.x or SDXL base checkpoint."),
                io.String.Input("dataset", default="", tooltip="Kohya dataset folder (Prepare Dataset's dataset output)."),
                io.String.Input("name", default="my_lora", tooltip="Run name: the folder and file names in models/loras."),
                io.Int.Input("epochs", default=10, min=1, max=10000),
                io.Int.Input("save_every", default=1, min=1, max=10000, tooltip="Save a checkpoint every N epochs."),
                io.Int.Input("rank", default=16, min=1, max=1024, tooltip="LoRA rank (network_dim)."),
                io.Float.Input("alpha", default=16.0, min=0.0, max=1024.0, step=1.0,
                               tooltip="LoRA alpha (network_alpha); 0 means the rank."),
                io.Float.Input("learning_rate", default=1e-4, min=0.0, max=1.0, step=1e-5, round=1e-6),
                io.Int.Input("resolution", default=0, min=0, max=4096, step=8,
                             tooltip="Training resolution in pixels; 0: the model's own (512 SD1.x, 1024 SDXL)."),
                io.Int.Input("seed", default=42, min=0, max=2**31 - 1),
                io.Boolean.Input("resume", default=False, tooltip="Continue the run saved when it was stopped."),
            ],
            outputs=[
                io.String.Output("lora_run", display_name="lora_run"),
                io.String.Output("summary", display_name="summary"),
            ],
            is_output_node=True,  # it writes LoRA files: runs even with nothing connected to its outputs
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, checkpoint: str, dataset: str, name: str, epochs: int = 10, save_every: int = 1, rank: int = 16,
                alpha: float = 16.0, learning_rate: float = 1e-4, resolution: int = 0, seed: int = 42,
                resume: bool = False):
        from lora_likeness.families import ModelLoadError, detect_family
        from lora_likeness.training import ConfigError, TrainConfig, TrainingCancelled, train_lora

        if checkpoint == NO_CHECKPOINTS:
            raise FileNotFoundError("Train LoRA: put an SD1.x or SDXL .safetensors checkpoint in models/checkpoints, then refresh")
        if not (dataset or "").strip():
            raise ValueError("Train LoRA: connect Prepare Dataset's dataset output or type a Kohya dataset folder")
        roots = host.lora_roots()
        if not roots:
            raise FileNotFoundError("Train LoRA: ComfyUI has no loras folder to save into")
        name = (name or "").strip()
        out = roots[0] / name
        base = host.checkpoint_path(checkpoint)
        tokenizer = host.sd1_tokenizer_dir()  # ComfyUI's bundled CLIP BPE files serve every SD1/SDXL text encoder
        config = TrainConfig(
            base=base, data=Path(dataset.strip()).expanduser(), out=out, name=name, tokenizer=tokenizer, tokenizer_2=tokenizer,
            epochs=int(epochs), save_every_n_epochs=int(save_every), rank=int(rank), alpha=float(alpha),
            lr=float(learning_rate), seed=int(seed), **bucket_settings(int(resolution)),
        )
        try:
            config.validate()
            family = detect_family(base)  # a header read: an SD2 / Flux / refiner checkpoint is refused here, with the reason
        except (ConfigError, ModelLoadError) as exc:
            raise ValueError(f"Train LoRA: {exc}") from exc
        host.free_models()
        try:
            result = train_lora(config, progress=host.CoreCancelProgress(), resume=bool(resume))
        except (ConfigError, ModelLoadError) as exc:
            raise ValueError(f"Train LoRA: {exc}") from exc
        except TrainingCancelled as exc:
            done = exc.result
            raise RuntimeError(
                f"Train LoRA stopped after {done.epochs_done} epoch(s), {done.steps} step(s); the state is saved in "
                f"{done.state}. Queue again with 'resume' on to continue."
            ) from exc
        for message in result.warnings:
            log.warning("[Likeness] %s", message)
        key = run_key(roots[0], out, name)
        return io.NodeOutput(key, describe_result(result, key, family.title, config.for_family(family).resolution))


NODES = [TrainLora]
