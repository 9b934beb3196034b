"""Sample images during training (fixed prompts and seeds) and their identity score against reference photos.

The score of an epoch is the mean, over the samples where a face was found, of each sample's best
cosine similarity to the reference photos (the core scorer's ``max`` aggregation); samples without a
face are counted in ``no_face``. Early stopping and keep-best read this number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import TrainConfig


@dataclass
class EpochScore:
    epoch: int
    mean: float | None
    n_images: int
    n_faces: int

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "mean": self.mean, "n_images": self.n_images, "n_faces": self.n_faces}


def sample_prompts(config: TrainConfig, default: str) -> list[str]:
    return list(config.sample_prompts) or [default]


def generate_samples(parts, config: TrainConfig, epoch: int, prompts: list[str], device, dtype) -> list[tuple[Path, np.ndarray]]:
    """Render ``samples_per_prompt`` images per prompt with seeds ``sample_seed + k``; write PNGs to ``<out>/samples/``.

    ``parts`` is the trainer's :class:`~lora_likeness.families.LoadedModel` (the LoRA layers are live in its
    UNet / text encoders); its family builds the pipeline. Sizes in pixels.
    """
    import torch
    from diffusers import EulerDiscreteScheduler
    from PIL import Image

    from ..images import save_png_atomic
    from .kohya_format import EPOCH_FILE_NAME

    family = parts.family
    scheduler_config = family.configs["scheduler/scheduler_config.json"]
    scheduler = EulerDiscreteScheduler.from_config({k: v for k, v in scheduler_config.items() if not k.startswith("_")})
    vae_device = next(parts.vae.parameters()).device
    parts.vae.to(device)
    pipe = family.pipeline(parts, scheduler)
    size = config.sample_size or config.resolution
    out_dir = Path(config.out) / "samples"
    written = []
    models = [parts.unet, *parts.text_encoders.values()]
    was_training = [m.training for m in models]
    for model in models:
        model.eval()
    try:
        for p_index, prompt in enumerate(prompts):
            for k in range(config.samples_per_prompt):
                generator = torch.Generator(device="cpu").manual_seed(config.sample_seed + k)
                with torch.no_grad(), torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
                    image = pipe(prompt, negative_prompt=config.sample_negative or None, height=size, width=size,
                                 num_inference_steps=config.sample_steps, guidance_scale=config.sample_cfg,
                                 generator=generator, output_type="np").images[0]
                rgb = (np.nan_to_num(image) * 255).round().clip(0, 255).astype(np.uint8)
                path = out_dir / f"{EPOCH_FILE_NAME.format(config.name, epoch)}_{p_index:02d}_{k:02d}.png"
                save_png_atomic(Image.fromarray(rgb), path, pnginfo=_pnginfo(prompt, config, epoch, k, size))
                written.append((path, rgb))
    finally:
        for model, training in zip(models, was_training):
            model.train(training)
        parts.vae.to(vae_device)
    return written


def _pnginfo(prompt: str, config: TrainConfig, epoch: int, k: int, size: int):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    # A1111-style parameters, so `likeness score --group-by lora` groups the samples by epoch.
    lora = f"{config.name}-{epoch:06d}"
    info.add_text("parameters", f"{prompt} <lora:{lora}:1>\nNegative prompt: {config.sample_negative}\n"
                                f"Steps: {config.sample_steps}, Sampler: Euler, CFG scale: {config.sample_cfg}, "
                                f"Seed: {config.sample_seed + k}, Size: {size}x{size}")
    return info


class SampleScorer:
    """Scores sample images against ``config.score_refs`` with the core face engine (loaded once)."""

    def __init__(self, config: TrainConfig, progress=None) -> None:
        from ..cache import FaceCache
        from ..faces import FaceEngine
        from ..pipeline import build_references

        self.engine = FaceEngine.load(config.score_pack, providers="auto")
        self.cache = FaceCache()
        self.references = build_references(self.engine, Path(config.score_refs), cache=self.cache, progress=progress)

    def score(self, epoch: int, images: list[np.ndarray]) -> EpochScore:
        from ..pipeline import ScoreSettings, score_arrays

        run = score_arrays(self.engine, self.references, images, groups=[(f"e{epoch}", {"epoch": epoch})] * len(images),
                           settings=ScoreSettings(group_by="none"), cache=None)
        group = run.groups[0] if run.groups else None
        return EpochScore(epoch, group.mean if group else None, len(images), group.n_faces if group else 0)


@dataclass
class EarlyStop:
    """Plateau detection on the per-epoch identity score."""

    patience: int
    min_delta: float
    best: float | None = None
    best_epoch: int | None = None
    waited: int = 0

    def update(self, epoch: int, score: float | None) -> bool:
        """Record ``score``; ``True`` when training should stop (no improvement for ``patience`` scored epochs)."""
        if score is not None and (self.best is None or score > self.best + self.min_delta):
            self.best, self.best_epoch, self.waited = score, epoch, 0
        else:
            if score is not None and self.best is not None and score > self.best:
                self.best, self.best_epoch = score, epoch  # better, but within min_delta: still a plateau
            self.waited += 1
        return bool(self.patience) and self.waited >= self.patience

    def as_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "waited": self.waited}
