"""Score Images (Likeness) vs cubiq/ComfyUI_FaceAnalysis' FaceEmbedDistance, in one ComfyUI process.

The peer is the most-used ComfyUI face-distance node. Both nodes get the same IMAGE batch (24
photos from ../shared/faces, padded to 512x512) and the same insightface pack, and are called the
way ComfyUI calls them. Printed: images/s of each and the ratio, the scores side by side, and the
peer's faults measured on small batches.

Fairness: the peer embeds its reference photos inside every call (it has no reference node); ours
does that once in Reference Faces, whose output ComfyUI keeps between runs. Both figures are shown:
Score Images alone, and Reference Faces + Score Images from a cold face cache.

The peer's code is not part of this repository: ``--peer`` (required) takes a checkout of
github.com/cubiq/ComfyUI_FaceAnalysis or a bare git directory of it (HEAD is read); it is loaded at
run time from a temporary copy. Run with ComfyUI's interpreter, ComfyUI's folder given (the peer
imports ``folder_paths`` and ``comfy.utils``):

    "$COMFYUI_PYTHON" bench/comfy_peer.py --comfyui "$COMFYUI_DIR" --peer "$FACEANALYSIS_DIR"
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIKENESS_SHARED", REPO.parent / "shared"))
PEER_FILES = ("faceanalysis.py", "Inconsolata.otf")


def load_peer(source: Path, workdir: Path):
    """Import the peer's faceanalysis.py from a checkout or a bare git directory (HEAD)."""
    for name in PEER_FILES:
        if (source / name).is_file():
            (workdir / name).write_bytes((source / name).read_bytes())
        else:
            blob = subprocess.run(["git", f"--git-dir={source}", "show", f"HEAD:{name}"], capture_output=True, check=True)
            (workdir / name).write_bytes(blob.stdout)
    spec = importlib.util.spec_from_file_location("cubiq_faceanalysis_peer", workdir / "faceanalysis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_ours():
    """The node pack as ComfyUI loads it: core registered by the bootstrap, nodes under a unique name."""
    for name, folder in (("likeness_bootstrap_bench", REPO / "likeness_bootstrap.py"),):
        spec = importlib.util.spec_from_file_location(name, folder)
        bootstrap = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bootstrap)
        bootstrap.load_core()
    folder = REPO / "comfy_nodes"
    spec = importlib.util.spec_from_file_location("likeness_nodes_bench", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return {name: sys.modules[f"{spec.name}.{name}"] for name in ("faces", "scoring", "types")}


def photo_batch(paths, size: int):
    import torch

    frames = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (size, size), (127, 127, 127))
        canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
        frames.append(np.asarray(canvas, np.float32) / 255.0)
    return torch.from_numpy(np.stack(frames))


def fmt(value) -> str:
    return "   none" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:7.3f}"


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI checkout (default $COMFYUI_DIR)")
    parser.add_argument("--peer", type=Path, help="checkout (or bare git directory) of github.com/cubiq/ComfyUI_FaceAnalysis")
    parser.add_argument("--pack", type=Path, default=SHARED / "models" / "insightface" / "models" / "likeness_test")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.comfyui:
        parser.error("give --comfyui (or set COMFYUI_DIR)")
    if args.peer is None:
        parser.error("give --peer: a checkout of github.com/cubiq/ComfyUI_FaceAnalysis (or a bare git directory of it); "
                     "the peer's code is not part of this repository")
    if not args.peer.is_dir():
        parser.error(f"--peer {args.peer} is not a folder: give a checkout of github.com/cubiq/ComfyUI_FaceAnalysis")
    sys.path.insert(0, str(Path(args.comfyui).resolve()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import logging

    import torch

    logging.getLogger("lora_likeness").setLevel(logging.ERROR)  # the warnings are about the photos, not the bench
    workdir = Path(tempfile.mkdtemp(prefix="likeness-peer-"))
    os.environ["LIKENESS_CACHE_DIR"] = str(workdir / "cache")  # never the user's cache; cold per measurement below
    peer = load_peer(args.peer, workdir)
    ours = load_ours()
    peer.INSIGHTFACE_DIR = str(args.pack.parent.parent)  # the peer loads <dir>/models/<name>
    peer_models = peer.InsightFace(provider="CPU", name=args.pack.name)
    peer_node = peer.FaceEmbedDistance()
    face_model = ours["faces"].FaceModel.execute(pack=args.pack.name, provider="cpu", pack_path=str(args.pack)).args[0]

    refs_paths = sorted((SHARED / "faces" / "people" / "obama").glob("*.jpg"))
    pool = sorted(p for p in (SHARED / "faces").rglob("*") if p.suffix.lower() in (".jpg", ".png") and p not in refs_paths)
    paths = pool[: args.images]
    batch = photo_batch(paths, args.size)
    refs = photo_batch(refs_paths, args.size)
    print(f"batch: {len(paths)} photos at {args.size}x{args.size}; references: {len(refs_paths)} photos of Obama; "
          f"pack {args.pack.name}; torch threads {torch.get_num_threads()}; insightface {peer_models.face_analysis.__module__}")

    def run_peer():
        return peer_node.analize(peer_models, refs, batch, "cosine", 100.0, 0, True)

    cache_round = [0]

    def run_ours_with_refs():
        cache_round[0] += 1
        os.environ["LIKENESS_CACHE_DIR"] = str(workdir / f"cache{cache_round[0]}")  # cold reference cache
        references = ours["faces"].ReferenceFaces.execute(face_model, "mean", images=refs).args[0]
        return ours["scoring"].ScoreImages.execute(batch, references).args

    references = ours["faces"].ReferenceFaces.execute(face_model, "ism", images=refs).args[0]

    def run_ours():
        return ours["scoring"].ScoreImages.execute(batch, references).args

    import contextlib
    import io as _io

    quiet = contextlib.redirect_stdout(_io.StringIO())  # the peer prints one line per image
    with quiet:
        run_peer()  # warm-up: sessions, first-size allocations
    run_ours()
    t_ours, t_ours_refs = [], []
    t_peer = []
    for _ in range(args.repeat):  # interleaved, so load from other processes hits both alike
        t_ours.append(median_time(run_ours, 1))
        with contextlib.redirect_stdout(_io.StringIO()):
            t_peer.append(median_time(run_peer, 1))
        t_ours_refs.append(median_time(run_ours_with_refs, 1))
    n = len(paths)
    ours_ips, peer_ips = n / statistics.median(t_ours), n / statistics.median(t_peer)
    ours_refs_ips = n / statistics.median(t_ours_refs)
    print(f"\nimages/s (median of {args.repeat}):")
    print(f"  peer FaceEmbedDistance (references embedded in the call) {peer_ips:6.1f}")
    print(f"  ours Score Images                                          {ours_ips:6.1f}   ratio {ours_ips / peer_ips:.2f}x")
    print(f"  ours Reference Faces (cold cache) + Score Images           {ours_refs_ips:6.1f}   ratio {ours_refs_ips / peer_ips:.2f}x")

    # ---- results side by side -------------------------------------------------------------
    with contextlib.redirect_stdout(_io.StringIO()):
        _, peer_dist = run_peer()
    scores = run_ours()[0]
    engine = face_model
    arrays = ours["types"].tensor_to_arrays(batch)
    ref_arrays = ours["types"].tensor_to_arrays(refs)
    # Our pipeline fed RGB the way the peer does (channels swapped before our BGR conversion).
    from lora_likeness import pipeline

    swapped_refs = pipeline.references_from_arrays(engine, [a[:, :, ::-1] for a in ref_arrays], aggregation="ism")
    swapped = pipeline.score_arrays(engine, swapped_refs, [a[:, :, ::-1] for a in arrays],
                                    settings=pipeline.ScoreSettings(aggregation="ism", group_by="none"))
    print("\nper image: ours = ISM (cosine to the mean reference face; the peer's cosine distance is 1 - this)")
    print(f"  {'image':38} {'ours':>7} {'peer 1-d':>9} {'diff':>7} {'ours fed RGB':>13}")
    diffs, diffs_rgb, single = [], [], []
    for path, ours_score, peer_d, item in zip(paths, scores, peer_dist, swapped.images):
        peer_sim = None if peer_d >= 100.0 else 1.0 - float(peer_d)
        rgb_score = item.score.value("ism")
        if peer_sim is not None and not math.isnan(ours_score):
            diffs.append(abs(ours_score - peer_sim))
            if "group_photos" not in path.parts:
                single.append(diffs[-1])
            if rgb_score is not None:
                diffs_rgb.append(abs(rgb_score - peer_sim))
        diff = "" if peer_sim is None or math.isnan(ours_score) else f"{ours_score - peer_sim:+7.3f}"
        print(f"  {path.relative_to(SHARED / 'faces').as_posix()[:38]:38} {fmt(ours_score)} {fmt(peer_sim):>9} {diff:>7} {fmt(rgb_score):>13}")
    print(f"  |ours - peer|: mean {np.mean(diffs):.3f}, max {np.max(diffs):.3f} over {len(diffs)} images with a face in both "
          f"(one-person photos: max {np.max(single):.3f}; in a group photo the colour order can also change which face is largest);"
          f"\n  our pipeline fed RGB as the peer does: mean {np.mean(diffs_rgb):.3f}, max {np.max(diffs_rgb):.3f}"
          " -> the whole gap is the peer's channel order (insightface's models expect BGR)")

    # ---- the peer's faults, measured ---------------------------------------------------------
    print("\nfaults (small batches):")
    blank = torch.full((1, args.size, args.size, 3), 0.5)
    two = torch.cat([batch[:1], blank])
    with contextlib.redirect_stdout(_io.StringIO()):
        _, peer_two = peer_node.analize(peer_models, refs, two, "cosine", 100.0, 0, False)
    ours_two = ours["scoring"].ScoreImages.execute(two, references).args[0]
    print(f"  no-face image: peer returns {[round(float(v), 3) for v in peer_two]} (100.0 kept as if it were a distance);"
          f" ours {['nan' if math.isnan(v) else round(v, 3) for v in ours_two]} (missing, counted in the no-face rate)")
    with contextlib.redirect_stdout(_io.StringIO()):
        _, peer_filtered = peer_node.analize(peer_models, refs, batch[:6], "cosine", 0.6, 0, False)
    ours_six = ours["scoring"].ScoreImages.execute(batch[:6], references).args[0]
    print(f"  filter_thresh 0.6 on 6 images: peer returns {len(peer_filtered)} values and {len(peer_filtered)} images, "
          f"with nothing saying which inputs they were; ours returns {len(ours_six)}, one per image in batch order")
    faceless_refs = torch.cat([blank, refs[:1]])
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            peer_node.analize(peer_models, blank, batch[:2], "cosine", 100.0, 0, False)
        peer_refs = "ran"
    except Exception as exc:  # noqa: BLE001 - the peer raises a bare Exception
        peer_refs = f"aborted: {exc}"
    with contextlib.redirect_stdout(_io.StringIO()):
        peer_node.analize(peer_models, faceless_refs, batch[:2], "cosine", 100.0, 0, False)
    ours_refs = ours["faces"].ReferenceFaces.execute(face_model, "max", images=faceless_refs).args
    try:
        ours["faces"].ReferenceFaces.execute(face_model, "max", images=blank)
        ours_alone = "ran"
    except Exception as exc:  # noqa: BLE001 - shown as measured
        ours_alone = f"stops with {type(exc).__name__}: {str(exc).splitlines()[1].strip()}"
    print(f"  a faceless reference alone: peer {peer_refs}; ours {ours_alone} (nothing to compare against either way)")
    print(f"  a faceless reference beside a good one: peer drops it without a word; ours keeps going and warns "
          f"'{next(w for w in ours_refs[0].references.warnings if 'no face' in w)}'")
    sizes = []
    detector = peer_models.face_analysis.det_model
    original = detector._detect_candidates if hasattr(detector, "_detect_candidates") else None
    if original is not None:
        def recording(img, input_size, threshold, _original=original):
            sizes.append(tuple(input_size))
            return _original(img, input_size, threshold)

        detector._detect_candidates = recording
        with contextlib.redirect_stdout(_io.StringIO()):
            peer_models.get_embeds(np.full((args.size, args.size, 3), 127, np.uint8))
        detector._detect_candidates = original
        print(f"  detection passes on a faceless image: peer {len(sizes)} at sizes {sorted(set(sizes))} "
              f"(it sets det_model.input_size for 640..320, which insightface 2.x ignores); ours 2 (one, and one padded)")
    else:
        print("  detection passes: this insightface has no _detect_candidates to count (0.7.3 honours input_size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
