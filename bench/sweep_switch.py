"""LoRA switch time of the sweep vs reloading the pipeline per checkpoint (target: at least 10x), and on a GPU
the sweep's images/s (25 steps; SD1.5 at 512x768, SDXL at 1024x1024) on a full-size model.

    python bench/sweep_switch.py                      # tiny random SD1-shaped model on CPU (runs anywhere)
    python bench/sweep_switch.py --sd15 MODEL.safetensors [--device cuda]   # full size (a random one:
                                                      # ../shared/tools/make_random_sd15.py; values don't matter)
    python bench/sweep_switch.py --sdxl MODEL.safetensors   # full-size SDXL
                                                      # (../shared/tools/make_random_sdxl.py); about 7 GB of RAM per
                                                      # pipeline in fp16, one pipeline at a time

Weights are fp16 on a GPU and for ``--sdxl`` (a float32 SDXL pipeline is 14 GB), float32 otherwise
(``--precision`` overrides); every loop uses the same precision.

Measured, per switch from one epoch's LoRA to the next (median of --repeats):

* ours       LoraSwitcher.load + apply: the next epoch's tensors copied into the existing peft layers;
* diffusers  pipe.delete_adapters + pipe.load_lora_weights on the loaded pipeline (diffusers' own way);
* reload     StableDiffusionPipeline.from_pretrained/from_single_file + load_lora_weights: what a script
             that starts over for every checkpoint does (the baseline the ratio is against).

The LoRA files are Kohya files written by the trainer's own writer (rank 16, every Kohya target module,
random values): what ``likeness train`` saves per epoch. Peak resident memory of the process is printed too.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOKENIZERS = {"tokenizer": SHARED / "tokenizers" / "sd1_clip", "tokenizer_2": SHARED / "tokenizers" / "sdxl_clip_g"}


def write_epochs(base_parts, folder: Path, epochs: int, rank: int) -> list[Path]:
    """Kohya files ``bench-00000N.safetensors`` with random weights for the base's target modules.

    The LoRA layers are attached to ``base_parts`` itself (no copy: a full-size SDXL is 7 GB in fp16);
    the caller throws the parts away afterwards."""
    import torch
    from lora_likeness.training.kohya_format import epoch_file_name, save_lora_file
    from lora_likeness.training.network import attach_lora

    network = attach_lora(base_parts.family.lora_components(base_parts.modules()), rank=rank, alpha=rank / 2)
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
    return files


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def release() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_time(files: list[Path]) -> float:
    """Median seconds to read one LoRA file's bytes (the part of a switch no loader can skip)."""
    samples = []
    for path in files:
        started = time.perf_counter()
        path.read_bytes()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def page_in(pipe) -> None:
    """Read one element of every memory page of the pipeline's weights.

    safetensors maps a checkpoint's file into memory, and a pipeline loaded in the file's own dtype on the
    CPU keeps pointing into it: its weights are read from the file only when first used (by the first
    image). This does that reading, so a reload's cost is whole."""
    import torch

    with torch.no_grad():
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is None:
                continue
            for tensor in (*module.parameters(), *module.buffers()):
                flat = tensor.detach().reshape(-1)
                flat[:: max(1, 4096 // flat.element_size())].float().sum()


def timed(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--sd15", type=Path, help="a full-size SD1.5 (single file or diffusers folder; default: a tiny random model)")
    model.add_argument("--sdxl", type=Path, help="a full-size SDXL (single file or diffusers folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("auto", "fp16", "float"), default="auto",
                        help="weights of every pipeline: auto = fp16 on a GPU or with --sdxl, else float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--images", type=int, default=8, help="images for the images/s figure (GPU, full size)")
    args = parser.parse_args()
    for given in (args.sd15, args.sdxl):
        if given is not None and not given.exists():
            parser.error(f"{given} does not exist")

    import torch
    from lora_likeness.families import load_base
    from lora_likeness.sweep.config import SweepConfig
    from lora_likeness.sweep.engine import Generator, make_scheduler
    from lora_likeness.training.tiny import write_tiny_model
    from safetensors.torch import load_file

    torch.manual_seed(0)
    device = torch.device(args.device)
    fp16 = args.precision == "fp16" or (args.precision == "auto" and (device.type == "cuda" or args.sdxl is not None))
    dtype = torch.float16 if fp16 else torch.float32
    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as scratch:
        scratch = Path(scratch)
        if args.sd15 is None and args.sdxl is None:
            base = write_tiny_model(scratch / "tiny", TOKENIZERS["tokenizer"])
            what = "tiny random SD1-shaped model"
        else:
            base = args.sd15 or args.sdxl
            what = f"full-size {'SDXL' if args.sdxl else 'SD1.5'} ({base.name})"

        def on_device(pipe):
            # Loaded on the CPU already; moving an fp16 pipeline "to" the CPU only makes diffusers warn.
            return pipe if device.type == "cpu" else pipe.to(device)

        def reload_pipeline():
            parts = load_base(base, **TOKENIZERS, dtype=dtype)
            return parts.family.pipeline(parts, make_scheduler(SweepConfig.sampler, dict(parts.noise_scheduler.config)))

        parts = load_base(base, **TOKENIZERS, dtype=dtype)
        family = parts.family
        files = write_epochs(parts, scratch, epochs=max(2, args.repeats + 1), rank=args.rank)
        size_mb = files[0].stat().st_size / 2**20
        del parts
        release()

        for path in files:  # every loop then finds the LoRA files in the page cache alike
            path.read_bytes()
        t_read = read_time(files)

        size = family.defaults
        config = SweepConfig(base=base, **TOKENIZERS, device=args.device, precision="fp16" if fp16 else "float",
                             width=size.width, height=size.height, steps=25, prompts=["photo of a person"])
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
        n_modules = switcher.current.n_modules

        if args.sd15 is not None or args.sdxl is not None:
            if device.type == "cuda":
                prompt = "photo of a person"
                for batch in (1, 4):
                    torch.cuda.reset_peak_memory_stats()
                    generator.generate(prompt, list(range(batch)))  # warm-up
                    started = time.perf_counter()
                    done = 0
                    while done < args.images:
                        generator.generate(prompt, list(range(done, done + batch)))
                        done += batch
                    torch.cuda.synchronize()
                    elapsed = time.perf_counter() - started
                    print(f"images/s at {size.width}x{size.height}, 25 steps, dpmpp_2m_karras, {'fp16' if fp16 else 'float32'}, batch {batch}: "
                          f"{done / elapsed:.2f} (peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)")
            else:
                print(f"images/s at {size.width}x{size.height}: needs a CUDA device (--device cuda)")
        generator.close()
        del generator, switcher, ours
        release()  # one pipeline at a time: a full-size SDXL would not fit twice beside other jobs

        pipe = on_device(reload_pipeline())
        pipe.load_lora_weights(load_file(str(files[0])), adapter_name="a0")
        names = iter(range(1, 10_000))

        def diffusers_swap():
            name = f"a{next(names)}"
            pipe.delete_adapters(pipe.get_active_adapters())
            pipe.load_lora_weights(load_file(str(next(cycle))), adapter_name=name)
            if device.type == "cuda":
                torch.cuda.synchronize()

        t_diffusers = timed(diffusers_swap, args.repeats)
        del pipe, diffusers_swap
        release()

        reloads, paging = [], []
        for _ in range(max(2, args.repeats // 2)):
            started = time.perf_counter()
            fresh = on_device(reload_pipeline())
            fresh.load_lora_weights(load_file(str(next(cycle))), adapter_name="x")
            if device.type == "cuda":
                torch.cuda.synchronize()
            reloads.append(time.perf_counter() - started)
            started = time.perf_counter()
            if device.type == "cpu":
                page_in(fresh)
            paging.append(time.perf_counter() - started)
            del fresh
            release()  # outside the timing: a script that reloads frees the old pipeline too, but not here
        t_reload, t_paging = statistics.median(reloads), statistics.median(paging)

        print(f"model: {what}, {'fp16' if fp16 else 'float32'}; LoRA: rank {args.rank}, {n_modules} modules, {size_mb:.1f} MB; "
              f"device {device}; median of {args.repeats} switches, {len(reloads)} reloads; peak RSS {peak_rss_gib():.1f} GiB")
        print(f"switch, ours (copy into the layers):      {t_ours * 1000:9.1f} ms   (reading the file's bytes alone: {t_read * 1000:.1f} ms; "
              "files in the page cache)")
        print(f"switch, diffusers delete + load_lora:     {t_diffusers * 1000:9.1f} ms   ({t_diffusers / t_ours:6.1f}x ours)")
        print(f"reload pipeline + load_lora (baseline):   {t_reload * 1000:9.1f} ms")
        if t_paging > 0.05 * t_reload:
            print(f"  + paging the reloaded weights in:       {t_paging * 1000:9.1f} ms   (loaded in the file's dtype, the pipeline reads its "
                  "weights from the file at first use)")
        ratio, whole = t_reload / t_ours, (t_reload + t_paging) / t_ours
        print(f"ratio reload / ours: {ratio:.1f}x" + (f", {whole:.1f}x with the paging" if t_paging > 0.05 * t_reload else "")
              + f" (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    from lora_likeness.quiet import quiet_third_party

    with quiet_third_party():  # diffusers' fp16-on-CPU notice and loading bars would bury the figures
        code = main()
    sys.exit(code)
