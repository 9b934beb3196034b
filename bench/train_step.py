#!/usr/bin/env python3
"""Seconds per training step of the built-in LoRA trainer against diffusers' own LoRA example loops.

    python bench/train_step.py [--family sd1,sdxl] [--steps 20] [--warmup 3] [--resolution 64] [--batch-size 2]
                               [--threads N] [--gpu-steps 30] [--sdxl-gpu MODEL.safetensors]

CPU part (always), per family (``sd1``: the SD1-shaped tiny model, ``sdxl``: the SDXL-shaped one, both from
:func:`lora_likeness.training.tiny.write_tiny_model`), on the same images, batch, resolution, float32, rank,
AdamW settings and LoRA modules (every Kohya UNet target: attention q/k/v/out, feed-forward,
proj_in/proj_out; UNet only):

* baseline: the training loop of diffusers' example script, reimplemented in a few lines (huggingface/diffusers
  at 58eb52c0803ea9af3abec60841c2a093bdf1f951): ``examples/text_to_image/train_text_to_image_lora.py`` (SD1)
  and ``train_text_to_image_lora_sdxl.py`` (SDXL). Per step, like the scripts with their default arguments
  and ``dataloader_num_workers=0``: load, crop and normalise the images and tokenize the captions (the
  scripts' dataset transform), VAE-encode with ``latent_dist.sample()``, ``randn_like`` noise and
  ``randint`` timesteps, ``add_noise``, run the frozen text encoder(s) on the token ids (SDXL: both encoders'
  penultimate hidden states concatenated, the second's pooled output, ``add_time_ids`` from original size,
  crop corner and target size), UNet, MSE on the noise, ``loss.item()``, backward, gradient clipping at 1.0,
  ``optimizer.step()``, ``lr_scheduler.step()`` (constant), ``zero_grad()``. Their peft ``LoraConfig``
  (``lora_alpha = r``, gaussian init) is given our target modules instead of their attention-only list, so
  both sides train the same layers. Left out: accelerate's per-step bookkeeping (``accumulate``, ``gather``,
  the progress bar), which can only make the baseline slower;
* ours, like for like: ``_Trainer._micro_step`` + ``_optimizer_step`` with the VAE run every step (no latent
  cache); the frozen text encoders' outputs are cached per caption (what the trainer does whenever the
  text encoders are not trained and captions are not shuffled);
* ours, cached latents: the same with the trainer's default latent cache;
* for reference, diffusers' loop on its own attention-only LoRA (``to_q``/``to_k``/``to_v``/``to_out.0``): what
  this bench compared against before (ours then trained more layers than the baseline).

Steps of all loops are interleaved (one step of each per round, ``--warmup`` rounds discarded: the first
steps allocate, and fill the caption cache) so a load change on a shared machine hits every loop alike.
Printed per loop: median wall-clock ms per optimizer step with its interquartile range, the median CPU
ms of this process (``time.process_time``: the work itself, less sensitive to other processes), and the
ratio baseline / ours of each round's pair of steps, median and interquartile range, for both (> 1: ours
is faster). On a CPU shared with other jobs, ``--threads 1`` keeps torch's threads from waiting on each
other (with 2 threads on 2 busy cores a step here took 5-10x longer).

GPU part (only when CUDA is available): SD1.5 at 512 px and SDXL at 1024 px, batch 1, fp16, gradient
checkpointing, cached latents, the family's default parts (SD1.5: UNet + text encoder; SDXL: UNet only),
random full-size weights (``../shared/tools/make_random_sd15.py`` / ``make_random_sdxl.py``, or the
``--sd15-gpu`` / ``--sdxl-gpu`` files): it/s and peak VRAM (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"
TOKENIZER_2 = SHARED / "tokenizers" / "sdxl_clip_g"
DIFFUSERS_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"


def _trainer(config):
    """Our trainer, set up (model loaded, LoRA attached, latents cached) but not run."""
    from lora_likeness.progress import Progress
    from lora_likeness.training.trainer import _Trainer

    config.validate()
    trainer = _Trainer(config, Progress(), resume=False)
    trainer.setup()
    return trainer


def ours_step(config) -> Callable[[int], None]:
    """One optimizer step of the built-in trainer per call (the work of ``_Trainer.run``'s inner loop)."""
    from lora_likeness.training.data import epoch_batches

    trainer = _trainer(config)
    batches = epoch_batches(trainer.dataset, 1, config.seed)

    def step(index: int) -> None:
        trainer._micro_step(batches[index % len(batches)], index)
        trainer._optimizer_step()
        if trainer.device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    return step


def diffusers_step(base: Path, config, family: str, own_targets: bool = False) -> Callable[[int], None]:
    """One step of diffusers' ``train_text_to_image_lora{,_sdxl}.py`` loop per call, on our LoRA targets
    (``own_targets``: on the scripts' own ``to_k``/``to_q``/``to_v``/``to_out.0``)."""
    import diffusers
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers
    from lora_likeness.families import get_family
    from lora_likeness.training.data import epoch_batches, load_dataset, load_training_image
    from lora_likeness.training.kohya_format import find_targets
    from peft import LoraConfig

    spec = get_family(family)
    slots = spec.text_encoder_slots
    tokenizers = [transformers.CLIPTokenizer.from_pretrained(base, subfolder=s.tokenizer) for s in slots]
    encoders = [getattr(transformers, s.model_class).from_pretrained(base, subfolder=s.component) for s in slots]
    vae = diffusers.AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = diffusers.UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    scheduler = diffusers.DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    for model in (unet, vae, *encoders):
        model.requires_grad_(False)
    paths = [t.path for t in find_targets(spec.lora_components({"unet": unet}, text_encoders=False))]
    pattern = "^(?:" + "|".join(p.replace(".", r"\.") for p in paths) + ")$"
    targets = ["to_k", "to_q", "to_v", "to_out.0"] if own_targets else pattern
    unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian", target_modules=targets))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = diffusers.optimization.get_scheduler("constant", optimizer)
    unet.train()
    dataset = load_dataset(config)
    batches = epoch_batches(dataset, 1, config.seed)

    def step(index: int) -> None:
        batch = batches[index % len(batches)]
        items = [dataset.items[s.item] for s in batch]
        # The scripts' dataset transform (run in the main process: dataloader_num_workers=0).
        images = np.stack([load_training_image(item.path, item.bucket) for item in items])
        pixels = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1
        ids = [t([s.caption for s in batch], max_length=t.model_max_length, padding="max_length", truncation=True,
                 return_tensors="pt").input_ids for t in tokenizers]
        # The training loop.
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if family == "sdxl":
            hidden = []
            for encoder, token_ids in zip(encoders, ids):
                output = encoder(token_ids, output_hidden_states=True, return_dict=False)
                pooled = output[0]
                hidden.append(output[-1][-2])
            time_ids = torch.cat([torch.tensor([[*g.original_hw, *g.crop_top_left, *g.target_hw]]) for g in (i.geometry for i in items)])
            prediction = unet(noisy, timesteps, torch.concat(hidden, dim=-1),
                              added_cond_kwargs={"time_ids": time_ids.float(), "text_embeds": pooled}, return_dict=False)[0]
        else:
            hidden = encoders[0](ids[0], return_dict=False)[0]
            prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.detach().item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()

    return step


def interleaved(loops: dict[str, Callable[[int], None]], steps: int, warmup: int) -> dict[str, tuple[list[float], list[float]]]:
    """Run one step of every loop per round (the first loop rotates), ``warmup + steps`` rounds;
    ``(wall seconds, CPU seconds)`` per timed step."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in loops}
    names = list(loops)
    for index in range(warmup + steps):
        for name in names[index % len(names):] + names[:index % len(names)]:  # each loop first in turn
            step = loops[name]
            wall, cpu = time.perf_counter(), time.process_time()
            step(index)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if index >= warmup:
                times[name][0].append(wall)
                times[name][1].append(cpu)
    return times


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def cpu_bench(family: str, args) -> None:
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.tiny import write_tiny_model, write_training_folder

    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as scratch:
        scratch = Path(scratch)
        base = write_tiny_model(scratch / "base", TOKENIZER, family=family, tokenizer_2_dir=TOKENIZER_2 if family == "sdxl" else None)
        data = write_training_folder(scratch / "data", n_images=8, size=(args.resolution, args.resolution), repeats=1)
        common = {"base": base, "data": data, "name": "bench", "rank": 8, "alpha": 8, "lr": 1e-4, "resolution": args.resolution,
                  "buckets": False, "batch_size": args.batch_size, "mixed_precision": "no", "device": "cpu", "seed": 0,
                  "text_encoder_lr": 0.0}
        loops = {
            "baseline": diffusers_step(base, TrainConfig(**common, out=scratch / "o0"), family),
            "alike": ours_step(TrainConfig(**common, out=scratch / "o1", cache_latents=False)),
            "cached": ours_step(TrainConfig(**common, out=scratch / "o2", cache_latents=True)),
            "attention": diffusers_step(base, TrainConfig(**common, out=scratch / "o3"), family, own_targets=True),
        }
        times = interleaved(loops, args.steps, args.warmup)
    script = "train_text_to_image_lora_sdxl.py" if family == "sdxl" else "train_text_to_image_lora.py"
    labels = {"baseline": f"diffusers {script} loop", "alike": "built-in, VAE every step (like for like)",
              "cached": "built-in, latents cached (trainer default)"}
    print(f"{family}: tiny {family.upper()}-shaped model, {args.resolution} px, batch {args.batch_size}, float32, rank 8, UNet LoRA on "
          f"every Kohya target, AdamW; {args.steps} interleaved steps after {args.warmup} warm-up rounds")
    print(f"  {'':42s} {'wall ms/step':>12s} {'(IQR)':>15s} {'CPU ms/step':>12s}   {'ratio baseline/ours, per round: median (IQR)':s}")
    for name, label in labels.items():
        wall, cpu = times[name]
        q1, median, q3 = _quartiles(wall)
        line = f"  {label:42s} {median * 1000:12.1f} ({q1 * 1000:6.1f}-{q3 * 1000:6.1f}) {statistics.median(cpu) * 1000:12.1f}"
        if name != "baseline":
            line += f"   wall {_ratio(times['baseline'][0], wall)}, CPU {_ratio(times['baseline'][1], cpu)}"
        print(line)
    print(f"  diffusers' loop on its own attention-only LoRA (to_q/k/v/out.0): {statistics.median(times['attention'][0]) * 1000:.1f} ms wall, "
          f"{statistics.median(times['attention'][1]) * 1000:.1f} ms CPU; against it (the earlier comparison, fewer modules on its side) "
          f"ours like for like is wall {_ratio(times['attention'][0], times['alike'][0])}, CPU {_ratio(times['attention'][1], times['alike'][1])}")


def _ratio(baseline: list[float], ours: list[float]) -> str:
    """Median and interquartile range of the per-round ratios baseline / ours (> 1: ours is faster)."""
    q1, median, q3 = _quartiles([b / o for b, o in zip(baseline, ours)])
    return f"{median:.2f}x ({q1:.2f}-{q3:.2f})"


def _random_checkpoint(tool: str, folder: Path) -> Path:
    path = folder / tool.replace("make_", "").replace(".py", ".safetensors")
    subprocess.run([sys.executable, str(SHARED / "tools" / tool), str(path), "--dtype", "fp16"], check=True, capture_output=True)
    return path


def gpu_bench(family: str, checkpoint: Path | None, args) -> None:
    import torch
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.tiny import write_training_folder

    resolution = 1024 if family == "sdxl" else 512
    with tempfile.TemporaryDirectory(prefix="likeness-bench-gpu-") as scratch:
        scratch = Path(scratch)
        checkpoint = checkpoint or _random_checkpoint("make_random_sdxl.py" if family == "sdxl" else "make_random_sd15.py", scratch)
        data = write_training_folder(scratch / "data", n_images=8, size=(resolution, resolution), repeats=1)
        config = TrainConfig(base=checkpoint, data=data, out=scratch / "out", name="bench", rank=16, alpha=16, resolution=resolution,
                             buckets=False, batch_size=1, mixed_precision="fp16", gradient_checkpointing=True, cache_latents=True,
                             tokenizer=TOKENIZER, tokenizer_2=TOKENIZER_2 if family == "sdxl" else None, device="cuda", seed=0)
        step = ours_step(config)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for index in range(args.gpu_steps + args.warmup):
            started = time.perf_counter()
            step(index)
            times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    q1, per_step, q3 = _quartiles(times[args.warmup:])
    from lora_likeness.families import get_family

    trained = "UNet + text encoder(s)" if config.for_family(get_family(family)).train_text_encoder else "UNet only (cached text)"
    print(f"GPU {torch.cuda.get_device_name()}: full-size {family.upper()} (random weights), {resolution} px, batch 1, fp16, "
          f"gradient checkpointing, cached latents, rank 16, {trained} (the family's default)")
    print(f"  {1 / per_step:.2f} it/s ({1 / q3:.2f}-{1 / q1:.2f}), peak VRAM {peak:.2f} GiB"
          + (f" (target <= 6 GiB: {'met' if peak <= 6 else 'NOT met'})" if family == "sd1" else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="sd1,sdxl", help="comma-separated: sd1, sdxl")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument("--sd15-gpu", type=Path, help="full-size SD1.5 file for the GPU part (default: a random one)")
    parser.add_argument("--sdxl-gpu", type=Path, help="full-size SDXL file for the GPU part (default: a random one)")
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.family.split(",") if f.strip()]
    unknown = [f for f in families if f not in ("sd1", "sdxl")]
    if unknown:
        parser.error(f"--family: unknown {', '.join(unknown)} (sd1, sdxl)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {load:.1f} at start; diffusers loops as of huggingface/diffusers@{DIFFUSERS_COMMIT[:10]}")
    from lora_likeness.quiet import quiet_third_party

    with quiet_third_party():  # the libraries' notices and "Loading weights" bars would bury the tables
        if not args.skip_cpu:
            for family in families:
                cpu_bench(family, args)
        if torch.cuda.is_available():
            for family in families:
                gpu_bench(family, args.sdxl_gpu if family == "sdxl" else args.sd15_gpu, args)
        else:
            print("GPU: no CUDA device here; the full-size figures (it/s, peak VRAM: SD1.5 at 512 px, SDXL at 1024 px) were not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
