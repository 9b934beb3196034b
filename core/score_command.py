"""``likeness score``: score a folder of images against reference photos and report per group.

    likeness score --refs DIR --images DIR [--pack NAME|PATH] [--group-by folder|lora|step|none]
                   [--aggregation max|mean|ism] [--out DIR] [--json FILE]
    likeness score --person NAME=DIR [--person NAME=DIR ...] | --people DIR  --images DIR [--expect NAME ...]

With several people (a family LoRA), every face of every image is assigned to one person, and each
person is reported found or missing with their own score; see :mod:`lora_likeness.people`.

Exit codes: 0 done (unreadable images are reported, not fatal); 2 a setting the user must fix
(no face-model pack, no usable reference photo, a missing folder, an output path that cannot be
written or that another run is writing to); 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .console import EXIT_CANCELLED, EXIT_USAGE, RichProgress, add_engine_arguments, load_face_engine, make_console, print_error
from .progress import Cancelled


def register(commands) -> None:
    """Add ``score`` to the ``likeness`` sub-command parsers."""
    score = commands.add_parser("score", help="score a folder of images against reference photos",
                                description="Score every image under --images against the reference photos in --refs.")
    who = score.add_mutually_exclusive_group(required=True)
    who.add_argument("--refs", type=Path, help="folder (or one file) of real photos of the person")
    who.add_argument("--person", action="append", metavar="NAME=DIR",
                     help="one person of a family LoRA and their photos; repeat per person. NAME is their trigger word: "
                          "a prompt naming it expects them in the image")
    who.add_argument("--people", type=Path, metavar="DIR", help="a folder with one sub-folder of photos per person (its name is the trigger word)")
    score.add_argument("--images", required=True, type=Path, help="folder of generated images (searched recursively)")
    add_engine_arguments(score)
    score.add_argument("--group-by", choices=("folder", "lora", "step", "none"), default="folder",
                       help="group images by sub-folder, by the LoRA in their own metadata (A1111/ComfyUI), by the training step "
                            "of a trainer's sample images (sd-scripts/kohya_ss, musubi-tuner, ai-toolkit, OneTrainer names, "
                            "step_N folders), or not at all (default: folder). With lora or step the report ends with the "
                            "recommended checkpoint/step")
    score.add_argument("--aggregation", choices=("max", "mean", "ism"), default="max",
                       help="score of an image: best match to any reference (max), mean over references (mean), or similarity to the mean reference (ism) (default: max)")
    score.add_argument("--face", choices=("largest", "best"), default="largest",
                       help="which face of a multi-face image is scored (default: largest)")
    score.add_argument("--expect", nargs="+", metavar="NAME",
                       help="with several people: who is expected in images whose prompt names nobody (default: everyone)")
    score.add_argument("--out", type=Path, help="write scores.csv, summary.csv, report.json, report.md, scores.png and contact_sheet.png "
                                                "here (and curves.png with --group-by lora|step)")
    score.add_argument("--json", type=Path, help="write the JSON report to this file ('-' for standard output)")
    score.add_argument("--det-thresh", type=float, default=0.5, help="face detector confidence threshold (default: 0.5)")
    score.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals (default: 0)")
    score.add_argument("--cache-dir", type=Path, help="face cache folder (default: $LIKENESS_CACHE_DIR or ~/.cache/lora-likeness)")
    score.add_argument("--no-cache", action="store_true", help="do not read or write the face cache")
    score.add_argument("--download", action="store_true", help="download the pack if it is not found (needs internet; off by default)")
    score.add_argument("--no-contact-sheet", action="store_true", help="skip the contact sheet (faster on thousands of images)")
    score.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=command_score)


def command_score(args: argparse.Namespace) -> int:
    err = make_console(stderr=True)
    try:
        return _score(args, err)
    except (KeyboardInterrupt, Cancelled):
        # Ctrl-C anywhere: nothing half-written is left (reports are staged and swapped in whole).
        err.print("cancelled; faces analysed so far are cached, so a re-run continues quickly.", markup=False)
        return EXIT_CANCELLED


def _score(args: argparse.Namespace, err) -> int:
    from contextlib import ExitStack

    from .cache import FaceCache
    from .outputs import OutputError, ReportFolder, check_output_file
    from .people import PeopleError, parse_person_option
    from .pipeline import ScoreSettings, people_folders, score_folder
    from .references import NoReferencesError
    from .report import REPORT_FILES, own_outputs, preserve_file, report_json, write_report_into

    out = make_console()
    json_to_stdout = args.json is not None and str(args.json) == "-"
    people = None
    try:
        if args.person:
            people = [parse_person_option(text) for text in args.person]
        elif args.people is not None:
            if not args.people.is_dir():
                print_error(err, f"--people {args.people} is not a folder (it needs one sub-folder of photos per person)")
                return EXIT_USAGE
            people = people_folders(args.people)
    except PeopleError as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    if args.expect and people is None:
        print_error(err, "--expect names people: use it with --person or --people")
        return EXIT_USAGE
    if args.expect:
        unknown = [name for name in args.expect if name not in {n for n, _ in people}]
        if unknown:
            print_error(err, f"--expect names {', '.join(unknown)}, who is not one of the people ({', '.join(n for n, _ in people)})")
            return EXIT_USAGE
    inputs = [("--refs", args.refs)] if people is None else [(f"--person {name}", folder) for name, folder in people]
    for label, folder in (*inputs, ("--images", args.images)):
        if not folder.exists():
            print_error(err, f"{label} {folder} does not exist")
            return EXIT_USAGE
    with ExitStack() as stack:
        # Every output is checked, and --out created and locked, before any work: a path we cannot
        # write or a folder another run is writing to is said at once, not after the analysis.
        try:
            if args.json is not None and not json_to_stdout:
                check_output_file(args.json, "--json")
            report = stack.enter_context(ReportFolder(args.out, REPORT_FILES, "--out")) if args.out is not None else None
        except OutputError as exc:
            print_error(err, str(exc))
            return EXIT_USAGE
        engine = load_face_engine(args, err)
        if engine is None:
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
                run = score_folder(engine, args.refs, args.images, settings, cache=cache, progress=progress, exclude=exclude,
                                   people=people, expect=args.expect)
            finally:
                progress.close()
        except (NoReferencesError, PeopleError) as exc:
            print_error(err, str(exc))
            return EXIT_USAGE

        written = {}
        if report is not None:
            written = write_report_into(run, report, sheet=not args.no_contact_sheet)
        if args.json is not None:
            if json_to_stdout:
                sys.stdout.write(report_json(run) + "\n")
                for warning in run.warnings:
                    err.print(f"warning: {warning}", markup=False)
                if run.verdict is not None:
                    for line in run.verdict.lines():
                        err.print(line, markup=False)
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

    from .report import baseline_row, baseline_sentence
    from .tables import format_value

    model = run.model
    table = Table(title=f"Likeness ({run.settings.aggregation}, pack {model.get('pack')}, {', '.join(model.get('providers', []))})", title_justify="left")
    for column in ("group", "n", "faces", "no-face", "mean", "median", "std", "min", "max", "top-3", "95% CI"):
        table.add_column(column, justify="left" if column == "group" else "right", no_wrap=column != "group")
    best = max((g.mean for g in run.groups if g.mean is not None), default=None)
    for g in run.groups:
        ci = f"{g.ci95[0]:.3f}–{g.ci95[1]:.3f}" if g.ci95 else "–"
        no_face = f"{g.no_face_rate:.0%}" if g.no_face_rate is not None else "–"
        mean = format_value(g.mean)
        if best is not None and g.mean == best and len(run.groups) > 1:
            mean = f"[bold]{mean}[/bold]"
        table.add_row(Text(g.label), str(g.n_images), str(g.n_faces), no_face, mean, format_value(g.median), format_value(g.std), format_value(g.min), format_value(g.max), format_value(g.top3_mean), ci)
    row = baseline_row(run)
    if row is not None:
        table.add_section()
        table.add_row(*row, style="green")
    console.print(table)
    console.print(baseline_sentence(run), markup=False)
    if run.people is not None:
        print_people(run, console)
    for warning in run.warnings:
        console.print(Text.assemble(("warning: ", "yellow"), warning))
    if run.verdict is not None:  # --group-by lora|step: the checkpoint or step to use (lora_likeness.steps)
        for line in run.verdict.lines():
            if line.startswith("warning: "):
                console.print(Text.assemble(("warning: ", "yellow"), line[len("warning: "):]))
            else:
                console.print(Text(line, style="bold" if line.startswith(("Recommended", "No recommendation")) else None))


def print_people(run, console) -> None:
    """The per-person table: group | person | expected | present | mean | 95% CI | served | all present | blended."""
    from rich.table import Table
    from rich.text import Text

    from .people import person_colour
    from .report import PEOPLE_COLUMNS, people_rows, people_sentence

    table = Table(title="People (each face assigned to one person)", title_justify="left")
    for column in PEOPLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("group", "person") else "right", no_wrap=column != "group")
    for row in people_rows(run):
        name = row[1].removesuffix(" (worst)")
        colour = "#%02x%02x%02x" % person_colour(run.people.index(name))
        table.add_row(Text(row[0]), Text(row[1], style=colour + (" bold" if row[1].endswith("(worst)") else "")), *row[2:])
    console.print(table)
    console.print(people_sentence(run), markup=False)
