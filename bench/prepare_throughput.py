"""Photos per second of `likeness prepare` on the shared photos, CPU, against face analysis alone.

Baseline ("analysis"): ``pipeline.analyze_paths`` over the same photos with no cache — decode,
detect and embed every face, which is what `likeness score` does per image and the least any
dataset preparation must do. Ours: ``prepare_dataset`` with its defaults (1024 px PNG crops),
end to end including the report and contact sheets, two ways:
  cold   empty face cache
  warm   faces cached (a second run with other settings: decode, quality, crops and files remain)

The face engine is loaded once before timing (hosts keep one per process). Each way runs
``--repeats`` times, interleaved; medians are printed with photos/s and the ratio to the baseline,
and the split of a cold run into its stages.

    python bench/prepare_throughput.py [--photos DIR] [--pack PATH] [--size 1024] [--format png] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def analysis(engine, photos: Path) -> float:
    from lora_likeness.images import list_images
    from lora_likeness.pipeline import analyze_paths

    started = time.perf_counter()
    analyze_paths(engine, list_images(photos))
    return time.perf_counter() - started


def prepare(engine, photos: Path, out: Path, cache_dir: Path, size: int, image_format: str):
    from lora_likeness.dataset import PrepareConfig, prepare_dataset

    config = PrepareConfig(photos=photos, out=out, trigger="ohwx", class_word="person", size=size,
                           image_format=image_format, cache_dir=cache_dir)
    started = time.perf_counter()
    result = prepare_dataset(engine, config)
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=SHARED / "faces")
    parser.add_argument("--pack", type=Path, default=SHARED / "models" / "insightface" / "models" / "likeness_test")
    parser.add_argument("--size", type=int, default=1024, choices=(512, 768, 1024))
    parser.add_argument("--format", dest="image_format", default="png", choices=("png", "jpg"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from lora_likeness.faces import FaceEngine
    from lora_likeness.images import list_images

    engine = FaceEngine.load(args.pack, providers="cpu")
    n = len(list_images(args.photos))
    times: dict[str, list[float]] = {"analysis": [], "cold": [], "warm": []}
    stages = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        analysis(engine, args.photos)  # warm-up: onnxruntime's first runs are slower
        for repeat in range(args.repeats):
            times["analysis"].append(analysis(engine, args.photos))
            cache = scratch / f"cache{repeat}"
            elapsed, result = prepare(engine, args.photos, scratch / f"cold{repeat}", cache, args.size, args.image_format)
            times["cold"].append(elapsed)
            stages.append(result.timings)
            # Warm: same cache, a fresh output folder (nothing to compare against, all files written).
            elapsed, _ = prepare(engine, args.photos, scratch / f"warm{repeat}", cache, args.size, args.image_format)
            times["warm"].append(elapsed)
    base = statistics.median(times["analysis"])
    print(f"{n} photos from {args.photos}, pack {args.pack.name}, {engine.workers} workers, crops {args.size} px {args.image_format}, "
          f"median of {args.repeats}")
    print(f"  {'analysis only (baseline)':<28} {base:6.2f} s  {n / base:6.1f} photos/s")
    for way in ("cold", "warm"):
        median = statistics.median(times[way])
        print(f"  {'prepare ' + way:<28} {median:6.2f} s  {n / median:6.1f} photos/s  {base / median:5.2f}x the baseline's rate")
    kept = stages[-1]
    split = {k: statistics.median(s[k] for s in stages) for k in ("references_s", "photos_s", "crops_s", "total_s")}
    print(f"  cold split: photos (decode+faces+quality) {split['photos_s']:.2f} s, selection+crops+reg {split['crops_s']:.2f} s, "
          f"reports+commit {split['total_s'] - split['photos_s'] - split['crops_s'] - split['references_s']:.2f} s "
          f"({kept['photos']} photos)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
