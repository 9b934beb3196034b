#!/usr/bin/env python3
"""Seconds per training step of the built-in LoRA trainer against diffusers' own LoRA example.

    python bench/train_step.py [--steps 20] [--resolution 64] [--batch-size 2] [--gpu-steps 30]

CPU part (always): a tiny SD1-shaped model and a small Kohya folder are written to a temporary
folder; the same batches are trained by
  * the baseline: the loop of diffusers' ``examples/text_to_image/train_text_to_image_lora.py``
    (peft LoRA on the UNet's to_q/to_k/to_v/to_out.0, VAE encode every step, AdamW, MSE on noise),
  * ours, like for like: UNet only, no latent cache (Kohya targets: also proj_in/out and feed-forward),
  * ours, defaults: UNet + text encoder, cached latents.
It prints median seconds per optimizer step and the ratio baseline / ours (> 1: ours is faster).

GPU part (only when CUDA is available): a random full-size SD1.5 from ``../shared/tools/make_random_sd15.py``,
512 px, batch 1, fp16, gradient checkpointing and cached latents, UNet + text encoder: it/s and peak
VRAM (``torch.cuda.max_memory_allocated``); the target for 6 GB cards is a peak of at most 6 GiB.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"


def _trainer(config):
    """Our trainer, set up (model loaded, LoRA attached, latents cached) but not run."""
    from lora_likeness.progress import Progress
    from lora_likeness.training.trainer import _Trainer

    config.validate()
    trainer = _Trainer(config, Progress(), resume=False)
    trainer.setup()
    return trainer


def time_ours(config, steps: int) -> list[float]:
    from lora_likeness.training.data import epoch_batches

    trainer = _trainer(config)
    batches = epoch_batches(trainer.dataset, 1, config.seed)
    times = []
    for step in range(steps + 3):  # 3 warm-up steps
        started = time.perf_counter()
        trainer._micro_step(batches[step % len(batches)], step)
        trainer._optimizer_step()
        if trainer.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times[3:]


def time_diffusers_example(base: Path, config, steps: int) -> list[float]:
    """The training loop of diffusers' train_text_to_image_lora.py on the same model and images."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from lora_likeness.training.data import epoch_batches, load_dataset, load_training_image
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    dataset = load_dataset(config)
    batches = epoch_batches(dataset, 1, config.seed)
    times = []
    for step in range(steps + 3):
        started = time.perf_counter()
        batch = batches[step % len(batches)]
        images = np.stack([load_training_image(dataset.items[s.item].path, dataset.items[s.item].bucket) for s in batch])
        pixels = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        ids = tokenizer([s.caption for s in batch], max_length=tokenizer.model_max_length, padding="max_length",
                        truncation=True, return_tensors="pt").input_ids
        hidden = text_encoder(ids, return_dict=False)[0]
        prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return times[3:]


def cpu_bench(args) -> None:
    import torch
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.tiny import write_tiny_model, write_training_folder

    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as scratch:
        scratch = Path(scratch)
        base = write_tiny_model(scratch / "base", TOKENIZER)
        data = write_training_folder(scratch / "data", n_images=8, size=(args.resolution, args.resolution), repeats=1)
        common = {"base": base, "data": data, "name": "bench", "rank": 8, "alpha": 8, "lr": 1e-4, "resolution": args.resolution, "buckets": False,
                      "batch_size": args.batch_size, "mixed_precision": "no", "device": "cpu", "seed": 0}
        print(f"CPU: torch {torch.__version__}, {torch.get_num_threads()} threads; tiny SD1 model, {args.resolution} px, "
              f"batch {args.batch_size}, rank 8, {args.steps} timed steps after 3 warm-up steps")
        baseline = statistics.median(time_diffusers_example(base, TrainConfig(**common, out=scratch / "o0"), args.steps))
        alike = statistics.median(time_ours(TrainConfig(**common, out=scratch / "o1", text_encoder_lr=0.0, cache_latents=False), args.steps))
        default = statistics.median(time_ours(TrainConfig(**common, out=scratch / "o2"), args.steps))
    print(f"  diffusers train_text_to_image_lora loop      {baseline * 1000:8.1f} ms/step")
    print(f"  built-in, UNet only, no latent cache           {alike * 1000:8.1f} ms/step   ratio {baseline / alike:.2f}x")
    print(f"  built-in, defaults (UNet + TE, cached latents) {default * 1000:8.1f} ms/step   ratio {baseline / default:.2f}x")
    print("  (ratio = baseline / ours; > 1 means the built-in trainer is faster. Ours trains more modules: Kohya's targets.)")


def gpu_bench(args) -> None:
    import torch
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.tiny import write_training_folder

    with tempfile.TemporaryDirectory(prefix="likeness-bench-gpu-") as scratch:
        scratch = Path(scratch)
        checkpoint = scratch / "sd15_random.safetensors"
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_random_sd15.py"), str(checkpoint), "--dtype", "fp16"], check=True,
                       capture_output=True)
        data = write_training_folder(scratch / "data", n_images=8, size=(512, 512), repeats=1)
        config = TrainConfig(base=checkpoint, data=data, out=scratch / "out", name="bench", rank=16, alpha=16, resolution=512,
                             buckets=False, batch_size=1, mixed_precision="fp16", gradient_checkpointing=True, cache_latents=True,
                             tokenizer=TOKENIZER, device="cuda", seed=0)
        trainer = _trainer(config)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        from lora_likeness.training.data import epoch_batches

        batches = epoch_batches(trainer.dataset, 1, config.seed)
        times = []
        for step in range(args.gpu_steps + 3):
            started = time.perf_counter()
            trainer._micro_step(batches[step % len(batches)], step)
            trainer._optimizer_step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    per_step = statistics.median(times[3:])
    print(f"GPU {torch.cuda.get_device_name()}: full-size SD1.5 (random), 512 px, batch 1, fp16, gradient checkpointing, "
          f"cached latents, rank 16, UNet + text encoder")
    print(f"  {1 / per_step:.2f} it/s, peak VRAM {peak:.2f} GiB (target <= 6 GiB: {'met' if peak <= 6 else 'NOT met'})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_cpu:
        cpu_bench(args)
    import torch

    if torch.cuda.is_available():
        gpu_bench(args)
    else:
        print("GPU: no CUDA device here; the full-size SD1.5 figures (it/s, peak VRAM at 512 px) were not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
