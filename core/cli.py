"""The ``likeness`` command.

    likeness score --refs DIR --images DIR [--pack NAME|PATH] [--group-by folder|lora|none]
                   [--aggregation max|mean|ism] [--out DIR] [--json FILE]
    likeness doctor [--pack NAME|PATH] [--fix-onnxruntime]
    likeness prepare / train / sweep / run / convert: see ``likeness <command> --help``

Exit codes: 0 done (unreadable images are reported, not fatal); 2 a setting the user must fix
(no face-model pack, no usable reference photo, a missing folder, an output path that cannot be
written or that another run is writing to); 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from pathlib import Path

from . import __version__
from .progress import Cancelled, Progress

EXIT_USAGE = 2
EXIT_CANCELLED = 130


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped or logged: keep the table on one line per group
    return console


class RichProgress(Progress):
    """:class:`lora_likeness.progress.Progress` drawn with rich; Ctrl-C cancels between items."""

    def __init__(self, console, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        super().__init__()
        self.bar = Bar(
            TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}", style="dim"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not enabled,
        )
        self.task = None

    def start(self, total: int, description: str = "") -> None:
        super().start(total, description)
        if self.task is None:
            self.bar.start()
        self.task = self.bar.add_task(description, total=total, detail="")

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        self.bar.update(self.task, advance=count, detail=(detail or "")[-40:])

    def finish(self) -> None:
        self.bar.update(self.task, detail="")

    def close(self) -> None:
        if self.task is not None:  # stopping a bar that never started prints an empty line
            self.bar.stop()


def cli_pack_advice():
    """What the CLI says to do about a missing face-model pack: its folders, ``--pack PATH``, ``--download``."""
    from .faces import PackAdvice

    return PackAdvice(
        install="a folder named '{pack}' in one of those places — in ComfyUI that is ComfyUI/models/insightface/models/{pack}/, "
                "otherwise ~/.insightface/models/{pack}/ —",
        point_to_folder="or pass the folder itself with --pack PATH",
        folder_missing="Pass --pack a folder that holds the pack's .onnx files (e.g. .../models/insightface/models/buffalo_l), "
                       "or a pack name.",
        download="`likeness score --download` fetches a public insightface pack (buffalo_l, buffalo_s, antelopev2) from "
                 "insightface's release page (non-commercial licence).",
    )


def _error(console, message: str | BaseException) -> None:
    """Print ``error: <message>``; a missing face pack is explained with the CLI's options."""
    from rich.text import Text

    from .faces import PackNotFoundError

    if isinstance(message, PackNotFoundError):
        message = message.message(cli_pack_advice())
    console.print(Text.assemble(("error: ", "bold red"), str(message)))


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", default=os.environ.get("LIKENESS_PACK", "buffalo_l"),
                        help="face-model pack: a name searched in the usual places, or a folder path (default: buffalo_l, or $LIKENESS_PACK)")
    parser.add_argument("--providers", default="auto",
                        help="onnxruntime providers: auto, cpu, cuda, coreml, directml, or a comma-separated list (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="likeness", description="Measure how much generated images look like a real person (ArcFace identity scores).")
    parser.add_argument("--version", action="version", version=f"likeness {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score a folder of images against reference photos",
                                description="Score every image under --images against the reference photos in --refs.")
    score.add_argument("--refs", required=True, type=Path, help="folder (or one file) of real photos of the person")
    score.add_argument("--images", required=True, type=Path, help="folder of generated images (searched recursively)")
    _add_engine_arguments(score)
    score.add_argument("--group-by", choices=("folder", "lora", "none"), default="folder",
                       help="group images by sub-folder, by the LoRA in their own metadata (A1111/ComfyUI), or not at all (default: folder)")
    score.add_argument("--aggregation", choices=("max", "mean", "ism"), default="max",
                       help="score of an image: best match to any reference (max), mean over references (mean), or similarity to the mean reference (ism) (default: max)")
    score.add_argument("--face", choices=("largest", "best"), default="largest",
                       help="which face of a multi-face image is scored (default: largest)")
    score.add_argument("--out", type=Path, help="write scores.csv, summary.csv, report.json, report.md, scores.png and contact_sheet.png here")
    score.add_argument("--json", type=Path, help="write the JSON report to this file ('-' for standard output)")
    score.add_argument("--det-thresh", type=float, default=0.5, help="face detector confidence threshold (default: 0.5)")
    score.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals (default: 0)")
    score.add_argument("--cache-dir", type=Path, help="face cache folder (default: $LIKENESS_CACHE_DIR or ~/.cache/lora-likeness)")
    score.add_argument("--no-cache", action="store_true", help="do not read or write the face cache")
    score.add_argument("--download", action="store_true", help="download the pack if it is not found (needs internet; off by default)")
    score.add_argument("--no-contact-sheet", action="store_true", help="skip the contact sheet (faster on thousands of images)")
    score.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    doctor = commands.add_parser("doctor", help="check the installation: versions, onnxruntime providers, face-model packs")
    doctor.add_argument("--pack", default=os.environ.get("LIKENESS_PACK", "buffalo_l"), help="pack to look for (default: buffalo_l)")
    doctor.add_argument("--fix-onnxruntime", action="store_true", help="repair an onnxruntime / onnxruntime-gpu clash with pip")

    # Sub-commands of the later stages register themselves and set ``handler`` (args -> exit code).
    from .dataset import command as dataset_command
    from .sweep import command as sweep_command
    from .sweep import convert_command
    from .training import command as training_command

    for register in (dataset_command.register, training_command.register, sweep_command.register, convert_command.register):
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .quiet import quiet_third_party

    try:
        args = build_parser().parse_args(argv)  # imports every command's module: a second or two
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    handler = getattr(args, "handler", None) or (command_score if args.command == "score" else command_doctor)
    with quiet_third_party():  # our progress and messages only, not the libraries' (see lora_likeness.quiet)
        return handler(args)


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


def command_score(args: argparse.Namespace) -> int:
    err = _console(stderr=True)
    try:
        return _score(args, err)
    except (KeyboardInterrupt, Cancelled):
        # Ctrl-C anywhere: nothing half-written is left (reports are staged and swapped in whole).
        err.print("cancelled; faces analysed so far are cached, so a re-run continues quickly.", markup=False)
        return EXIT_CANCELLED


def _score(args: argparse.Namespace, err) -> int:
    from contextlib import ExitStack

    from .cache import FaceCache
    from .faces import FaceEngine, FaceModelError, PackNotFoundError
    from .outputs import OutputError, ReportFolder, check_output_file
    from .pipeline import ScoreSettings, score_folder
    from .references import NoReferencesError
    from .report import REPORT_FILES, own_outputs, preserve_file, report_json, write_report_into

    out = _console()
    json_to_stdout = args.json is not None and str(args.json) == "-"
    for label, folder in (("--refs", args.refs), ("--images", args.images)):
        if not folder.exists():
            _error(err, f"{label} {folder} does not exist")
            return EXIT_USAGE
    with ExitStack() as stack:
        # Every output is checked, and --out created and locked, before any work: a path we cannot
        # write or a folder another run is writing to is said at once, not after the analysis.
        try:
            if args.json is not None and not json_to_stdout:
                check_output_file(args.json, "--json")
            report = stack.enter_context(ReportFolder(args.out, REPORT_FILES, "--out")) if args.out is not None else None
        except OutputError as exc:
            _error(err, str(exc))
            return EXIT_USAGE
        try:
            engine = FaceEngine.load(args.pack, providers=args.providers, download=args.download, det_thresh=args.det_thresh)
        except (PackNotFoundError, FaceModelError) as exc:
            _error(err, exc)
            return EXIT_USAGE
        cache = None if args.no_cache else FaceCache(args.cache_dir)
        progress = RichProgress(err, enabled=not args.quiet and not json_to_stdout)
        # Never read our own outputs back as inputs: the report folder, its earlier reports, the cache.
        exclude = own_outputs(args.out) if args.out is not None else []
        if cache is not None:
            exclude.append(cache.folder)
        settings = ScoreSettings(aggregation=args.aggregation, face_choice=args.face, group_by=args.group_by, seed=args.seed)
        try:
            try:
                run = score_folder(engine, args.refs, args.images, settings, cache=cache, progress=progress, exclude=exclude)
            finally:
                progress.close()
        except NoReferencesError as exc:
            _error(err, str(exc))
            return EXIT_USAGE

        written = {}
        if report is not None:
            written = write_report_into(run, report, sheet=not args.no_contact_sheet)
        if args.json is not None:
            if json_to_stdout:
                sys.stdout.write(report_json(run) + "\n")
                for warning in run.warnings:
                    err.print(f"warning: {warning}", markup=False)
            else:
                from .images import write_text_atomic

                moved = preserve_file(args.json)
                if moved is not None:
                    run.warnings.append(f"the earlier {args.json.name} was kept as {moved.name}")
                write_text_atomic(args.json, report_json(run))
                written[args.json.name] = args.json
    if not json_to_stdout:
        print_summary(run, out)
        for path in written.values():
            out.print(f"wrote {path}", markup=False)
    return 0


def print_summary(run, console) -> None:
    """The seed-style table: group | n | faces | no-face | mean | median | std | min | max | top-3 | 95% CI."""
    from rich.table import Table
    from rich.text import Text

    from .report import _cell, baseline_row, baseline_sentence

    model = run.model
    table = Table(title=f"Likeness ({run.settings.aggregation}, pack {model.get('pack')}, {', '.join(model.get('providers', []))})", title_justify="left")
    for column in ("group", "n", "faces", "no-face", "mean", "median", "std", "min", "max", "top-3", "95% CI"):
        table.add_column(column, justify="left" if column == "group" else "right", no_wrap=column != "group")
    best = max((g.mean for g in run.groups if g.mean is not None), default=None)
    for g in run.groups:
        ci = f"{g.ci95[0]:.3f}–{g.ci95[1]:.3f}" if g.ci95 else "–"
        no_face = f"{g.no_face_rate:.0%}" if g.no_face_rate is not None else "–"
        mean = _cell(g.mean)
        if best is not None and g.mean == best and len(run.groups) > 1:
            mean = f"[bold]{mean}[/bold]"
        table.add_row(Text(g.label), str(g.n_images), str(g.n_faces), no_face, mean, _cell(g.median), _cell(g.std), _cell(g.min), _cell(g.max), _cell(g.top3_mean), ci)
    row = baseline_row(run)
    if row is not None:
        table.add_section()
        table.add_row(*row, style="green")
    console.print(table)
    console.print(baseline_sentence(run), markup=False)
    for warning in run.warnings:
        console.print(Text.assemble(("warning: ", "yellow"), warning))


# --------------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------------


def command_doctor(args: argparse.Namespace) -> int:
    from . import dependencies
    from .faces import inspect_pack, pack_search_dirs, resolve_providers

    console = _console()
    console.print(f"likeness {__version__} — Python {platform.python_version()} on {platform.platform()}", markup=False)
    console.print(f"  interpreter: {sys.executable}", markup=False)
    installed = dependencies.installed_distributions()
    for name in ("numpy", "pillow", "opencv-python", "opencv-python-headless", "insightface", "matplotlib", "rich", "torch"):
        version = installed.get(dependencies.canonical_name(name))
        if version or name in ("numpy", "pillow", "insightface"):
            console.print(f"  {name:<24} {version or 'NOT INSTALLED'}", markup=False)
    kind = dependencies.torch_kind()
    console.print(f"  torch build              {kind or 'no torch'}", markup=False)
    gpus = dependencies.cuda_device_count()
    console.print(f"  CUDA devices             {gpus or 'none usable'}", markup=False)
    variants, clash = dependencies.onnxruntime_variants(installed)
    problems = 0
    if not variants:
        console.print("  onnxruntime              NOT INSTALLED: run `python install.py` (or pip install onnxruntime / onnxruntime-gpu)", markup=False)
        problems += 1
    else:
        console.print("  onnxruntime              " + ", ".join(f"{n} {v}" for n, v in variants.items()), markup=False)
    if clash:
        problems += 1
        console.print("  PROBLEM: several onnxruntime builds are installed; they share one import and break each other "
                      "(usually the GPU is silently lost). Repair: likeness doctor --fix-onnxruntime", markup=False)
    try:
        import onnxruntime

        console.print(f"  onnxruntime providers    {', '.join(onnxruntime.get_available_providers())}", markup=False)
        chosen = resolve_providers("auto")
        console.print(f"  likeness would use       {chosen[0]}", markup=False)
        if kind == "cuda" and gpus and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            console.print("  note: this machine has a CUDA GPU but onnxruntime has no CUDA provider: face models run on CPU. "
                          "Install onnxruntime-gpu instead of onnxruntime (python install.py does).", markup=False)
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding to report
        problems += 1
        console.print(f"  onnxruntime import FAILED: {exc}", markup=False)

    problems += _doctor_training_stack(console, installed)

    console.print("\nFace-model packs (searched in this order):", markup=False)
    found_requested = False
    for label, folder in pack_search_dirs():
        if not folder.is_dir():
            console.print(f"  {folder}  ({label}): not present", markup=False)
            continue
        packs = sorted(p for p in folder.iterdir() if p.is_dir())
        console.print(f"  {folder}  ({label}): {len(packs)} folder(s)", markup=False)
        for pack in packs:
            detector, recognizer, issues = inspect_pack(pack)
            if detector and recognizer:
                found_requested |= pack.name == args.pack
                console.print(f"    ok    {pack.name}: {detector.name} + {recognizer.name}", markup=False)
            else:
                console.print(f"    unusable {pack.name}: {'; '.join(issues)}", markup=False)
    explicit = Path(args.pack).expanduser()
    if not found_requested and explicit.is_dir():
        detector, recognizer, issues = inspect_pack(explicit)
        found_requested = bool(detector and recognizer)
        console.print(f"  {explicit}: " + ("ok" if found_requested else "; ".join(issues)), markup=False)
    if not found_requested:
        problems += 1
        console.print(f"\n  pack '{args.pack}' not found: put its .onnx files in <one of the folders above>/{args.pack}/ "
                      f"or pass --pack PATH (see README, 'Face-model packs').", markup=False)

    if args.fix_onnxruntime:
        return _fix_onnxruntime(console)
    console.print("\nall good" if not problems else f"\n{problems} problem(s) found", markup=False)
    return 0 if not problems else 1


def _doctor_training_stack(console, installed: dict[str, str]) -> int:
    """The ``train`` extra's packages against their tested ranges, and whether they import.
    Returns the number of problems (a stack that is installed but does not import)."""
    from . import dependencies

    console.print("\nTraining stack (likeness train / sweep; tested ranges of lora-likeness[train]):", markup=False)
    for _, requirement in dependencies.extra_requirements("train"):
        version = installed.get(requirement.key)
        state = "not installed" if version is None else ("ok" if dependencies.satisfies(version, requirement.specifier) else "OUTSIDE the tested range")
        console.print(f"  {requirement.name:<24} {version or '-':<12} {requirement.specifier:<14} {state}", markup=False)
    if not any(name in installed for name in dependencies.TRAINING_STACK):
        console.print('  not installed: scoring works without it; `pip install -e ".[train]"` adds training and sweeps', markup=False)
        return 0
    from .training.stack import import_failure

    failure = import_failure()
    if failure is not None:
        console.print(f"  PROBLEM: {dependencies.training_stack_conflict(failure)}", markup=False)
        return 1
    outside = dependencies.extra_findings(("train",), installed, include_missing=False)
    if outside:
        console.print("  note: it imports, but " + "; ".join(f.message() for f in outside)
                      + ". Untested: if training or a sweep fails, install the tested ranges.", markup=False)
    else:
        console.print("  imports: ok", markup=False)
    return 0


def _fix_onnxruntime(console) -> int:
    """The onnxruntime part of install.py's plan: uninstall every build, install the right one
    (CUDA build when torch has CUDA), under pins of the host's own packages."""
    import subprocess
    import tempfile

    from . import dependencies

    plan = dependencies.plan(dependencies.gather_facts(), fix_onnxruntime=True)
    actions = [a for a in plan if a.changes and any(dependencies.parse_requirement(p).key.startswith("onnxruntime") for p in a.packages)]
    if not actions:
        console.print("onnxruntime: nothing to repair", markup=False)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch) / "constraints.txt"
        for action in actions:
            constraints.write_text("\n".join(action.constraints) + "\n")
            arguments = [sys.executable, "-m", "pip", *dependencies.pip_arguments(action, str(constraints))]
            console.print(f"{action.describe()}\n  $ {' '.join(arguments)}", markup=False)
            if subprocess.call(arguments) != 0:
                console.print("pip failed; run `python install.py --fix-onnxruntime` in the Likeness folder for details", markup=False)
                return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
