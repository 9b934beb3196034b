"""LoRA switch time of the sweep vs reloading the pipeline per checkpoint (target: at least 10x), and on a GPU
the sweep's images/s at 512x768, 25 steps on a full-size SD1.5.

    python bench/sweep_switch.py                      # tiny random SD1-shaped model on CPU (runs anywhere)
    python bench/sweep_switch.py --sd15 MODEL.safetensors [--device cuda]   # full size (a random one:
                                                      # ../shared/tools/make_random_sd15.py; values don't matter)

Measured, per switch from one epoch's LoRA to the next (median of --repeats):

* ours       LoraSwitcher.load + apply: the next epoch's tensors copied into the existing peft layers;
* diffusers  pipe.delete_adapters + pipe.load_lora_weights on the loaded pipeline (diffusers' own way);
* reload     StableDiffusionPipeline.from_pretrained/from_single_file + load_lora_weights: what a script
             that starts over for every checkpoint does (the baseline the ratio is against).

The LoRA files are Kohya files written by the trainer's own writer (rank 16, every Kohya target module,
random values): what ``likeness train`` saves per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def write_epochs(base_parts, folder: Path, epochs: int, rank: int) -> list[Path]:
    """Kohya files ``bench-00000N.safetensors`` with random weights for the base's target modules."""
    import copy

    import torch
    from lora_likeness.training.kohya_format import epoch_file_name, save_lora_file
    from lora_likeness.training.network import attach_lora

    modules = {name: copy.deepcopy(module).float() for name, module in base_parts.modules().items()}
    network = attach_lora(base_parts.family.lora_components(modules), rank=rank, alpha=rank / 2)
    files = []
    for epoch in range(1, epochs + 1):
        generator = torch.Generator().manual_seed(epoch)
        with torch.no_grad():
            for _, down, up in network.pairs():
                down.copy_(torch.randn(down.shape, generator=generator) * 0.02)
                up.copy_(torch.randn(up.shape, generator=generator) * 0.02)
        path = folder / epoch_file_name("bench", epoch)
        save_lora_file(path, network.kohya_state_dict(torch.float16), {"ss_epoch": epoch, "ss_network_dim": rank})
        files.append(path)
    del modules
    return files


def timed(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15", type=Path, help="a full-size SD1.5 single file (default: a tiny random model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--images", type=int, default=8, help="images for the images/s figure (GPU, full size)")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline
    from lora_likeness.families import load_base
    from lora_likeness.sweep.config import SweepConfig
    from lora_likeness.sweep.engine import Generator
    from lora_likeness.training.tiny import write_tiny_model
    from safetensors.torch import load_file

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as scratch:
        scratch = Path(scratch)
        if args.sd15 is None:
            base = write_tiny_model(scratch / "tiny", SHARED / "tokenizers" / "sd1_clip")
            what = "tiny random SD1-shaped model"

            def reload_pipeline():
                return StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
        else:
            base = args.sd15
            what = f"full-size SD1.5 ({base.name})"

            def reload_pipeline():
                parts = load_base(base, tokenizer=SHARED / "tokenizers" / "sd1_clip", dtype=dtype)
                return parts.family.pipeline(parts, parts.noise_scheduler)
        parts = load_base(base, tokenizer=SHARED / "tokenizers" / "sd1_clip", dtype=torch.float32)
        files = write_epochs(parts, scratch, epochs=max(2, args.repeats + 1), rank=args.rank)
        size_mb = files[0].stat().st_size / 2**20
        del parts

        config = SweepConfig(base=base, tokenizer=SHARED / "tokenizers" / "sd1_clip", device=args.device, precision="fp16" if dtype == torch.float16 else "float",
                             width=512, height=768, steps=25, prompts=["photo of a person"])
        generator = Generator(config)
        switcher = generator.switcher
        switcher.apply(switcher.load(files[0]), 1.0)  # the first LoRA creates the layers; the rest are switches
        cycle = iter(files[1:] * 100)

        def ours():
            switcher.apply(switcher.load(next(cycle)), 0.8)
            if device.type == "cuda":
                torch.cuda.synchronize()

        t_ours = timed(ours, args.repeats)
        assert switcher.switches["injected"] == 1, switcher.switches

        pipe = reload_pipeline().to(device)
        pipe.load_lora_weights(load_file(str(files[0])), adapter_name="a0")
        names = iter(range(1, 10_000))

        def diffusers_swap():
            name = f"a{next(names)}"
            pipe.delete_adapters(pipe.get_active_adapters())
            pipe.load_lora_weights(load_file(str(next(cycle))), adapter_name=name)
            if device.type == "cuda":
                torch.cuda.synchronize()

        t_diffusers = timed(diffusers_swap, args.repeats)
        pipe = None  # free it before the reloads

        def reload():
            fresh = reload_pipeline().to(device)
            fresh.load_lora_weights(load_file(str(next(cycle))), adapter_name="x")
            if device.type == "cuda":
                torch.cuda.synchronize()

        t_reload = timed(reload, max(2, args.repeats // 2))

        print(f"model: {what}; LoRA: rank {args.rank}, {switcher.current.n_modules} modules, {size_mb:.1f} MB; device {device}")
        print(f"switch, ours (copy into the layers):      {t_ours * 1000:9.1f} ms")
        print(f"switch, diffusers delete + load_lora:     {t_diffusers * 1000:9.1f} ms   ({t_diffusers / t_ours:6.1f}x ours)")
        print(f"reload pipeline + load_lora (baseline):   {t_reload * 1000:9.1f} ms")
        ratio = t_reload / t_ours
        print(f"ratio reload / ours: {ratio:.1f}x (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")

        if args.sd15 is not None and device.type == "cuda":
            prompt = "photo of a person"
            for batch in (1, 4):
                generator.generate(prompt, list(range(batch)))  # warm-up
                started = time.perf_counter()
                done = 0
                while done < args.images:
                    generator.generate(prompt, list(range(done, done + batch)))
                    done += batch
                torch.cuda.synchronize()
                elapsed = time.perf_counter() - started
                print(f"images/s at 512x768, 25 steps, dpmpp_2m_karras, fp16, batch {batch}: {done / elapsed:.2f} "
                      f"(peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)")
        elif args.sd15 is not None:
            print("images/s at 512x768: needs a CUDA device (--device cuda)")
        generator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
