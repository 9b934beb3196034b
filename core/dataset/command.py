"""``likeness prepare``: argument parser and handler (imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..console import EXIT_CANCELLED, EXIT_USAGE, RichProgress, add_engine_arguments, load_face_engine, make_console, print_error

EPILOG = """\
examples:
  likeness prepare --photos ~/Pictures/alice --trigger ohwx --class woman --out alice-dataset
  likeness prepare --photos library/ --subject refs/alice --trigger ohwx --class woman --size 512 --out ds
  likeness prepare --photos ~/Pictures/alice --trigger ohwx --class woman --family sdxl --out alice-sdxl
  likeness prepare --photos ~/Pictures/alice --trigger ohwx --class woman --base sd_xl_base_1.0.safetensors --out alice-sdxl
  likeness prepare --photos family/ --identity ohwxdad:man=refs/dad --identity ohwxmum:woman=refs/mum --out ds

Writes img/<repeats>_<trigger> <class>/ (images + .txt captions), reg/ (with --reg), dataset.toml
(sd-scripts --dataset_config), report.html / report.json and contact sheets. Source photos are only
read; a re-run with the same input changes nothing, an earlier different output moves to previous/.
Exit codes: 0 done, 1 no photo could be kept (the rejections are in report.html), 2 a setting to fix (an
empty --photos folder, an --out that cannot be written, ...), 130 cancelled.
"""


def _framings(text: str) -> tuple[str, ...]:
    from .config import FRAMINGS

    aliases = {"closeup": "close-up", "close": "close-up", "head": "head-and-shoulders", "shoulders": "head-and-shoulders",
               "head-shoulders": "head-and-shoulders", "half": "half-body", "halfbody": "half-body", "upper-body": "half-body"}
    chosen = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        name = aliases.get(part, part)
        if name not in FRAMINGS:
            raise argparse.ArgumentTypeError(f"unknown framing {part!r}; choose from {', '.join(FRAMINGS)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise argparse.ArgumentTypeError("give at least one framing")
    return tuple(chosen)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` sub-command to the CLI."""
    from ..families import FAMILIES

    parser = commands.add_parser(
        "prepare", help="turn a folder of real photos into a Kohya training dataset",
        description="Find the person's photos, filter and rank them, crop close-ups and wider shots, caption them and "
                    "write a Kohya dataset folder with dataset.toml and a report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--photos", metavar="DIR", required=True, type=Path, help="folder of photos (searched recursively; never modified)")
    parser.add_argument("--out", metavar="DIR", required=True, type=Path, help="output folder")
    parser.add_argument("--trigger", metavar="WORD", help="rare trigger word of the person, e.g. ohwx (not needed with --identity)")
    parser.add_argument("--class", metavar="WORD", dest="class_word", default="person", help="class word: man, woman, person, ... (default: person)")
    parser.add_argument("--family", choices=tuple(FAMILIES), help="model family the dataset is for: sets the crop size and the "
                        "dataset.toml's bucket limits (sd1: 512 px, buckets 256-1024; sdxl: 1024 px, buckets 512-2048; default: "
                        "--base's family, else sd1)")
    parser.add_argument("--base", metavar="MODEL", type=Path, help="the base model you will train on (.safetensors or diffusers folder): "
                        "its family is read from it (only the header is read)")
    parser.add_argument("--size", type=int, choices=(512, 768, 1024), help="crop size in pixels (default: the family's, 512 sd1, 1024 sdxl)")
    parser.add_argument("--keep-aspect", action="store_true", help="keep each photo's aspect ratio (about size x size pixels) for bucketing instead of squares")
    parser.add_argument("--framings", metavar="LIST", type=_framings, default=("close-up", "head-and-shoulders", "half-body"),
                        help="comma-separated: close-up, head-and-shoulders, half-body (default: all three, kept in a spread)")
    parser.add_argument("--max-images", metavar="N", type=int, default=50, help="keep at most this many photos, the best ones (default: 50)")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--target-steps", metavar="N", type=int, default=200, help="steps per epoch to aim for; sets repeats = ceil(steps x batch / images) (default: 200)")
    steps.add_argument("--repeats", metavar="N", type=int, help="fixed Kohya repeats instead of --target-steps")
    parser.add_argument("--batch-size", metavar="N", type=int, default=1, help="training batch size written to dataset.toml (default: 1)")
    parser.add_argument("--subject", metavar="DIR", type=Path, help="reference photos of the person (else the most frequent face is the subject)")
    parser.add_argument("--identity", action="append", default=[], metavar="NAME[:CLASS]=REF_DIR",
                        help="one person of a multi-person dataset: trigger word, optional class, reference photos; repeat per person")
    parser.add_argument("--face-boxes", metavar="FILE", type=Path, help="CSV/JSON of file,x,y,w,h[,name] face boxes in relative coordinates (e.g. a PhotoPrism markers export)")
    parser.add_argument("--reg", metavar="DIR", type=Path, help="folder of regularisation images (written to reg/1_<class>/)")
    parser.add_argument("--format", dest="image_format", choices=("png", "jpg"), default="png", help="image format of the crops (default: png)")
    parser.add_argument("--tagger", metavar="DIR", type=Path, help="local WD14 tagger folder (model.onnx + selected_tags.csv) to add tags to captions")
    parser.add_argument("--tag-threshold", metavar="P", type=float, default=0.35, help="tagger probability for a tag (default: 0.35)")
    thresholds = parser.add_argument_group("thresholds (see report.html for all of them)")
    thresholds.add_argument("--match-threshold", metavar="SIM", type=float, default=0.35, help="face similarity to the person's mean that counts as them (default: 0.35)")
    thresholds.add_argument("--min-face-px", metavar="PX", type=float, default=96.0, help="smallest face, in source pixels (default: 96)")
    thresholds.add_argument("--min-sharpness", metavar="VAR", type=float, default=20.0, help="Laplacian variance of the face at 128 px (default: 20)")
    thresholds.add_argument("--max-yaw", metavar="DEG", type=float, default=60.0, help="largest head turn in degrees (default: 60)")
    thresholds.add_argument("--max-padding", metavar="SHARE", type=float, default=0.15, help="largest share of a crop that may be padding (default: 0.15)")
    add_engine_arguments(parser)
    parser.add_argument("--det-thresh", metavar="P", type=float, default=0.5, help="face detector confidence threshold (default: 0.5)")
    parser.add_argument("--cache-dir", metavar="DIR", type=Path, help="face cache folder (default: $LIKENESS_CACHE_DIR or ~/.cache/lora-likeness)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the face cache")
    parser.add_argument("--download", action="store_true", help="download the pack if it is not found (needs internet; off by default)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=command_prepare)


def family_of(args: argparse.Namespace) -> str:
    """``--family``, checked against ``--base``'s family when both are given; ``--base``'s alone; else ``sd1``.

    Raises:
        PrepareConfigError: ``--base`` cannot be read or is not a supported base model, or is of another family.
    """
    from .config import PrepareConfigError

    if getattr(args, "base", None) is None:
        return getattr(args, "family", None) or "sd1"
    from ..families import ModelLoadError, detect_family

    try:
        return detect_family(args.base, args.family).name
    except ModelLoadError as exc:
        raise PrepareConfigError(f"--base: {exc}") from None


def build_config(args: argparse.Namespace):
    """The :class:`PrepareConfig` the arguments describe.

    Raises:
        PrepareConfigError: see :func:`family_of`.
    """
    from .config import PrepareConfig, QualityThresholds, SelectionSettings, parse_identity

    return PrepareConfig(
        photos=args.photos, out=args.out, trigger=args.trigger, class_word=args.class_word, family=family_of(args), size=args.size,
        keep_aspect=args.keep_aspect, framings=args.framings, max_images=args.max_images, target_steps=args.target_steps,
        repeats=args.repeats, batch_size=args.batch_size, subject_refs=args.subject,
        identities=[parse_identity(text) for text in args.identity], face_boxes=args.face_boxes, reg_dir=args.reg,
        image_format=args.image_format, tagger_dir=args.tagger, tag_threshold=args.tag_threshold,
        quality=QualityThresholds(min_face_px=args.min_face_px, min_sharpness=args.min_sharpness, max_yaw_deg=args.max_yaw),
        selection=SelectionSettings(match_threshold=args.match_threshold, max_padding=args.max_padding),
        cache_dir=args.cache_dir, use_cache=not args.no_cache,
    )


def command_prepare(args: argparse.Namespace) -> int:
    from ..progress import Cancelled
    from .config import PrepareConfigError
    from .prepare import prepare_dataset

    out, err = make_console(), make_console(stderr=True)
    try:
        config = build_config(args)
        config.validate()
    except PrepareConfigError as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    engine = load_face_engine(args, err)
    if engine is None:
        return EXIT_USAGE
    progress = RichProgress(err, enabled=not args.quiet)
    try:
        try:
            result = prepare_dataset(engine, config, progress=progress)
        finally:
            progress.close()
    except PrepareConfigError as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    except (KeyboardInterrupt, Cancelled):
        err.print("cancelled; nothing in --out was changed (faces analysed so far are cached, so a re-run continues quickly).")
        return EXIT_CANCELLED
    print_result(result, out)
    if result.nothing_kept:
        report = result.files.get("report.html")
        print_error(err, result.nothing_kept + (f"; every file and its reason: {report}" if report else ""))
        return 1
    return 0


def print_result(result, console) -> None:
    from rich.table import Table
    from rich.text import Text

    counts = result.counts()
    console.print(f"{len(result.kept)} kept, {len(result.rejected)} rejected of {result.n_photos} photos "
                  f"({result.timings.get('photos_per_s', 0):.1f} photos/s)", markup=False)
    if result.kept:
        console.print(for_family_line(result.settings), markup=False)
    if counts:
        table = Table(title="rejected", title_justify="left")
        table.add_column("reason")
        table.add_column("photos", justify="right")
        for code, n in sorted(counts.items(), key=lambda item: -item[1]):
            table.add_row(code, str(n))
        console.print(table)
    if result.subsets:
        subsets = Table(title=f"Kohya subsets ({result.repeats} repeats, ~{result.steps_per_epoch} steps/epoch)", title_justify="left")
        for column in ("folder", "images", "repeats", "class tokens"):
            subsets.add_column(column)
        for row in result.subsets:
            subsets.add_row(Text(row["folder"]), str(row["images"]), str(row["num_repeats"]), Text(row["class_tokens"]))
        console.print(subsets)
    if result.coverage:
        coverage = Table(title="identity coverage", title_justify="left")
        for column in ("people", "exactly", "at least"):
            coverage.add_column(column)
        for row in result.coverage:
            coverage.add_row(Text(" + ".join(row.identities)), str(row.exactly), str(row.at_least), style="red" if row.exactly == 0 else None)
        console.print(coverage)
    for warning in result.warnings:
        if not (result.nothing_kept and warning.startswith(result.nothing_kept)):  # said once, as the error
            console.print(Text.assemble(("warning: ", "yellow"), warning))
    if result.unchanged:
        console.print(f"{result.out}: unchanged (it already holds exactly this dataset)", markup=False)
    else:
        for name in ("dataset.toml", "report.html", "report.json"):
            if name in result.files:
                console.print(f"wrote {result.files[name]}", markup=False)
    if result.kept:
        console.print(f"train with: --dataset_config {os.fspath(result.out / 'dataset.toml')}", markup=False)


def for_family_line(settings: dict) -> str:
    """``for SDXL: 1024 px crops, dataset.toml resolution 1024, buckets 512-2048`` from a result's settings."""
    from ..families import get_family
    from .kohya import bucket_limits

    family = get_family(settings.get("family", "sd1"))
    size = int(settings["size"])
    low, high = bucket_limits(size, family)
    return f"for {family.title}: {size} px crops, dataset.toml resolution {size}, buckets {low}-{high} (--family or --base choose the family)"
