"""Images per second of `likeness score` against the naive way, on the same photos, in one run.

Baseline ("naive"): what the seed scripts and most nodes do — ``FaceAnalysis(name=pack)`` with every
module of the pack loaded, ``prepare()`` with its defaults, then for each photo ``cv2.imread`` +
``app.get(img)`` and the cosine similarity of the largest face to every reference embedding.

Ours: the library call behind ``likeness score`` (engine load + references + images + group
statistics, no report files), three ways:
  cold        empty face cache
  refs warm   the reference photos already cached (a new batch of generated images)
  all warm    every photo cached (re-scoring the same images, e.g. with another grouping)

Each way runs ``--repeats`` times, interleaved with the baseline; medians are printed, with the
ratios against the baseline and how closely our scores agree with the baseline's.

    python bench/score_throughput.py [--refs DIR] [--images DIR] [--pack PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def naive(pack: Path, ref_paths: list[Path], image_paths: list[Path], det_size=None) -> tuple[float, dict[str, float | None]]:
    import cv2
    from insightface.app import FaceAnalysis

    started = time.perf_counter()
    app = FaceAnalysis(name=str(pack), providers=["CPUExecutionProvider"])
    if det_size is None:
        app.prepare(ctx_id=-1)  # the defaults people use (insightface 2.x: 128 and 640 px passes)
    else:
        app.prepare(ctx_id=-1, det_size=det_size)

    def largest(path: Path):
        faces = app.get(cv2.imread(str(path)))
        if not faces:
            return None
        return max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])).normed_embedding

    refs = np.array([e for e in (largest(p) for p in ref_paths) if e is not None])
    scores = {}
    for path in image_paths:
        embedding = largest(path)
        scores[str(path)] = None if embedding is None else float((refs @ embedding).max())
    return time.perf_counter() - started, scores


def ours(pack: Path, refs: Path, images: Path, cache_dir: Path | None) -> tuple[float, dict[str, float | None]]:
    from lora_likeness.cache import FaceCache
    from lora_likeness.faces import FaceEngine
    from lora_likeness.pipeline import ScoreSettings, score_folder

    started = time.perf_counter()
    engine = FaceEngine.load(pack, providers="cpu")
    cache = FaceCache(cache_dir) if cache_dir is not None else None
    run = score_folder(engine, refs, images, ScoreSettings(group_by="none"), cache=cache)
    elapsed = time.perf_counter() - started
    root = Path(run.images_root)
    return elapsed, {str(root / i.path): i.score.value("max") for i in run.images}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=Path, default=SHARED / "faces" / "people" / "obama")
    parser.add_argument("--images", type=Path, default=SHARED / "faces")
    parser.add_argument("--pack", type=Path, default=SHARED / "models" / "insightface" / "models" / "likeness_test")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    sys.path.insert(0, str(REPO))
    import likeness_bootstrap

    likeness_bootstrap.load_core()
    from lora_likeness.images import list_images

    ref_paths, image_paths = list_images(args.refs), list_images(args.images)
    total = len(ref_paths) + len(image_paths)
    print(f"photos: {len(ref_paths)} references + {len(image_paths)} images = {total} decodes per run; pack {args.pack.name}; CPU")

    times: dict[str, list[float]] = {"naive": [], "cold": [], "refs warm": [], "all warm": []}
    agreement = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            t_naive, naive_scores = naive(args.pack, ref_paths, image_paths)
            times["naive"].append(t_naive)
            cache_dir = Path(scratch) / f"cache{repeat}"
            t_cold, our_scores = ours(args.pack, args.refs, args.images, cache_dir)
            times["cold"].append(t_cold)
            refs_only = Path(scratch) / f"refs{repeat}"
            ours(args.pack, args.refs, args.refs, refs_only)  # warm only the reference photos
            times["refs warm"].append(ours(args.pack, args.refs, args.images, refs_only)[0])
            times["all warm"].append(ours(args.pack, args.refs, args.images, cache_dir)[0])
            both = [(naive_scores[k], our_scores.get(k)) for k in naive_scores]
            agreement = [abs(a - b) for a, b in both if a is not None and b is not None]
            missing = sum(1 for a, b in both if (a is None) != (b is None))

    single_scale = naive(args.pack, ref_paths, image_paths, det_size=(640, 640))[1]
    close = [abs(single_scale[k] - our_scores[k]) for k in single_scale if single_scale[k] is not None and our_scores.get(k) is not None]

    base = statistics.median(times["naive"])
    print(f"{'run':<10} {'median s':>9} {'images/s':>9} {'vs naive':>9}   (all runs, s)")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = base / median
        print(f"{name:<10} {median:9.3f} {total / median:9.1f} {ratio:8.1f}x   {', '.join(f'{v:.3f}' for v in values)}")
    print(
        f"score agreement with naive (max aggregation, largest face): mean |diff| {np.mean(agreement):.4f}, "
        f"max {np.max(agreement):.4f} over {len(agreement)} images; face found by only one side: {missing}"
    )
    print(
        f"score agreement with FaceAnalysis at a single 640 px scale: mean |diff| {np.mean(close):.4f}, "
        f"max {np.max(close):.4f} (insightface 2.x's default second 128 px pass moves its keypoints)"
    )
    print("targets: cold >= 3x, warm cache >= 10x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
