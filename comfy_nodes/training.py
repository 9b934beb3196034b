"""Train LoRA: a Kohya dataset + an SD1.x checkpoint -> per-epoch LoRA files in ``models/loras/<name>/``.

The built-in trainer (``lora_likeness.training``, diffusers + peft) runs in ComfyUI's process, so
ComfyUI's loaded models are unloaded first to give it the GPU memory.
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
    64-px steps, or 8-px steps for resolutions below 256 (test-sized models)."""
    return {"min_bucket_reso": max(32, resolution // 2), "max_bucket_reso": resolution * 2,
            "bucket_reso_steps": 64 if resolution >= 256 else 8}


def run_key(loras_root: Path, out: Path, name: str) -> str:
    """The run's key as LoRA Checkpoints lists it: ``<name>/<name>`` for ``loras/<name>/<name>-000001…``."""
    return f"{out.relative_to(loras_root).as_posix()}/{name}"


def describe_result(result, key: str) -> str:
    lines = [
        f"LoRA run {key}: {len(result.checkpoints)} epoch file(s)" + (f" + final {result.final.name}" if result.final else ""),
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
                "Trains an SD1.x LoRA on a Kohya dataset folder (from Prepare Dataset) and saves name-000001.safetensors "
                "… per epoch and name.safetensors at the end into models/loras/<name>/. Unloads ComfyUI's models first. "
                "Stop saves the state: queue again with resume on to continue."
            ),
            inputs=[
                io.Combo.Input("checkpoint", options=names, default=names[0], tooltip="SD1.x base checkpoint."),
                io.String.Input("dataset", default="", tooltip="Kohya dataset folder (Prepare Dataset's dataset output)."),
                io.String.Input("name", default="my_lora", tooltip="Run name: the folder and file names in models/loras."),
                io.Int.Input("epochs", default=10, min=1, max=10000),
                io.Int.Input("save_every", default=1, min=1, max=10000, tooltip="Save a checkpoint every N epochs."),
                io.Int.Input("rank", default=16, min=1, max=1024, tooltip="LoRA rank (network_dim)."),
                io.Float.Input("alpha", default=16.0, min=0.0, max=1024.0, step=1.0,
                               tooltip="LoRA alpha (network_alpha); 0 means the rank."),
                io.Float.Input("learning_rate", default=1e-4, min=0.0, max=1.0, step=1e-5, round=1e-6),
                io.Int.Input("resolution", default=512, min=32, max=4096, step=8, tooltip="Training resolution in pixels."),
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
                alpha: float = 16.0, learning_rate: float = 1e-4, resolution: int = 512, seed: int = 42,
                resume: bool = False):
        from lora_likeness.training import ConfigError, TrainConfig, TrainingCancelled, train_lora

        if checkpoint == NO_CHECKPOINTS:
            raise FileNotFoundError("Train LoRA: put an SD1.x .safetensors checkpoint in models/checkpoints, then refresh")
        if not (dataset or "").strip():
            raise ValueError("Train LoRA: connect Prepare Dataset's dataset output or type a Kohya dataset folder")
        roots = host.lora_roots()
        if not roots:
            raise FileNotFoundError("Train LoRA: ComfyUI has no loras folder to save into")
        name = (name or "").strip()
        out = roots[0] / name
        config = TrainConfig(
            base=host.checkpoint_path(checkpoint), data=Path(dataset.strip()).expanduser(), out=out, name=name,
            tokenizer=host.sd1_tokenizer_dir(), epochs=int(epochs), save_every_n_epochs=int(save_every), rank=int(rank),
            alpha=float(alpha), lr=float(learning_rate), resolution=int(resolution), seed=int(seed),
            **bucket_settings(int(resolution)),
        )
        try:
            config.validate()
        except ConfigError as exc:
            raise ValueError(f"Train LoRA: {exc}") from exc
        host.free_models()
        try:
            result = train_lora(config, progress=host.CoreCancelProgress(), resume=bool(resume))
        except ConfigError as exc:
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
        return io.NodeOutput(key, describe_result(result, key))


NODES = [TrainLora]
