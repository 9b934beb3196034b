"""``likeness watch``: follow a trainer's sample folder while it trains (imports nothing heavy until it runs).

    likeness watch --refs me/ --samples OUTPUT/samples [--out DIR] [--json FILE] [--once]
                   [--interval S] [--checkpoints DIR] [--pack NAME|PATH] …

Every ``--interval`` seconds the folder is looked at; each new sample (sd-scripts/kohya_ss, musubi-tuner,
ai-toolkit, OneTrainer names, or any image whose folder says ``step_500``) is scored once, the live table
and ``report.html``/``curves.png`` in ``--out`` are refreshed, and the verdict says which step looks most
like the person and whether identity has stopped improving or is falling. Ctrl-C ends the watch with a
complete report. ``--once`` scores what is there, writes the report and exits (for scripts and tests).
A live watch may start before the trainer: a ``--samples`` folder that does not exist yet is waited for.

Exit codes: 0 done (also after Ctrl-C: the report is complete); 2 a setting the user must fix (no face-model
pack, no usable reference photo, a missing ``--refs`` folder (or ``--samples`` with ``--once``), an output path
that cannot be written or is in use).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .console import EXIT_CANCELLED, EXIT_USAGE, add_engine_arguments, load_face_engine, make_console, print_error


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``watch`` sub-command to the CLI."""
    parser = commands.add_parser(
        "watch", help="follow a trainer's sample folder while it trains: which step looks most like the person",
        description="Score each new sample image a trainer writes (sd-scripts/kohya_ss, musubi-tuner, ai-toolkit, OneTrainer, "
                    "or folders named step_N), keep a live table and an identity-vs-step curve, and say which step is best "
                    "and when identity stops improving or falls (over-training). Ctrl-C ends it with a complete report.",
    )
    parser.add_argument("--refs", required=True, type=Path, help="folder (or one file) of real photos of the person")
    parser.add_argument("--samples", required=True, type=Path,
                        help="the trainer's sample folder (sd-scripts/musubi: OUTPUT/sample, ai-toolkit: OUTPUT/JOB/samples, "
                             "OneTrainer: WORKSPACE/samples)")
    parser.add_argument("--out", type=Path,
                        help="report folder, refreshed every round (default: likeness_watch beside the samples folder)")
    parser.add_argument("--json", type=Path, help="also write the JSON report to this file at the end ('-' for standard output)")
    parser.add_argument("--once", action="store_true", help="score what is there now, write the report and exit")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between two looks at the folder (default: 10)")
    parser.add_argument("--write-timeout", type=float, default=120.0,
                        help="seconds a sample that does not decode is waited for after its last change (default: 120)")
    parser.add_argument("--patience", type=int, default=3,
                        help="sample rounds without a gain before the verdict says identity has stopped improving (default: 3)")
    parser.add_argument("--checkpoints", type=Path,
                        help="where the trainer saves checkpoints, to name the one closest to the best step (default: the "
                             "samples folder's parent)")
    add_engine_arguments(parser)
    parser.add_argument("--aggregation", choices=("max", "mean", "ism"), default="max", help="per-image score (default: max)")
    parser.add_argument("--face", choices=("largest", "best"), default="largest", help="which face is scored (default: largest)")
    parser.add_argument("--det-thresh", type=float, default=0.5, help="face detector confidence threshold (default: 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals (default: 0)")
    parser.add_argument("--cache-dir", type=Path, help="face cache folder (default: $LIKENESS_CACHE_DIR or ~/.cache/lora-likeness)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the face cache")
    parser.add_argument("--download", action="store_true", help="download the pack if it is not found (needs internet; off by default)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no live table: one line per round")
    parser.set_defaults(handler=command_watch)


def live_table(run):
    """The live view: one row per step (n, faces, mean, 95% CI, a bar), then the verdict's lines."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .tables import format_value

    table = Table(title=f"Likeness by step — {run.images_root}", title_justify="left")
    for column in ("step", "epoch", "n", "faces", "mean", "95% CI", ""):
        table.add_column(column, justify="left" if column in ("step", "") else "right", no_wrap=True)
    verdict = run.verdict
    best = verdict.recommendation.best.cell.checkpoint if verdict is not None and verdict.recommendation.best else None
    top = max((g.mean for g in run.groups if g.mean is not None), default=None)
    for g in run.groups:
        ci = f"{g.ci95[0]:.3f}–{g.ci95[1]:.3f}" if g.ci95 else "–"
        bar = "█" * max(0, round(20 * g.mean / top)) if g.mean is not None and top and top > 0 else ""
        style = "bold green" if g.label == best else None
        epoch = g.info.get("epoch")
        table.add_row(Text(g.label), "" if epoch is None else str(epoch), str(g.n_images), str(g.n_faces), format_value(g.mean), ci,
                      bar, style=style)
    lines = verdict.lines() if verdict is not None else ["waiting for samples with a face…"]
    texts = [Text(line, style="yellow" if line.startswith("warning") else None) for line in lines]
    return Group(table, *texts, *(Text(f"warning: {w}", style="yellow") for w in run.warnings))


def command_watch(args: argparse.Namespace) -> int:
    try:
        return _watch(args)
    except KeyboardInterrupt:  # before the watch began (loading the pack, the reference photos): nothing written
        make_console(stderr=True).print("cancelled; faces analysed so far are cached, so a re-run continues quickly.", markup=False)
        return EXIT_CANCELLED


def _watch(args: argparse.Namespace) -> int:
    import sys
    import threading

    from .cache import FaceCache
    from .images import write_text_atomic
    from .outputs import OutputError, check_output_file
    from .pipeline import ScoreSettings, build_references
    from .references import NoReferencesError
    from .report import preserve_file, report_json
    from .watch import SampleWatcher, WatchReport, WatchSettings, watch

    err = make_console(stderr=True)
    out = make_console()
    if not args.refs.exists():
        print_error(err, f"--refs {args.refs} does not exist")
        return EXIT_USAGE
    # Started before the trainer: its sample folder appears with the first samples (sd-scripts makes OUTPUT/sample
    # then). A live watch waits for it; --once has nothing to score.
    samples_missing = not args.samples.exists()
    if samples_missing and args.once:
        print_error(err, f"--samples {args.samples} does not exist")
        return EXIT_USAGE
    if not samples_missing and not args.samples.is_dir():
        print_error(err, f"--samples {args.samples} is a file: pass the folder the trainer writes its samples into")
        return EXIT_USAGE
    if not args.interval > 0:
        print_error(err, f"--interval {args.interval}: must be a number of seconds above 0")
        return EXIT_USAGE
    json_to_stdout = args.json is not None and str(args.json) == "-"
    out_dir = args.out if args.out is not None else args.samples.resolve().parent / "likeness_watch"
    try:
        if args.json is not None and not json_to_stdout:
            check_output_file(args.json, "--json")
        report = WatchReport(out_dir, "--out")
        report.__enter__()
    except OutputError as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    try:
        engine = load_face_engine(args, err)
        if engine is None:
            return EXIT_USAGE
        cache = None if args.no_cache else FaceCache(args.cache_dir)
        score = ScoreSettings(aggregation=args.aggregation, face_choice=args.face, group_by="step", seed=args.seed)
        try:
            references = build_references(engine, args.refs, cache=cache, aggregation=args.aggregation)
        except NoReferencesError as exc:
            print_error(err, str(exc))
            return EXIT_USAGE
        settings = WatchSettings(args.samples, checkpoints=args.checkpoints, interval_s=args.interval,
                                 write_timeout_s=args.write_timeout, patience=args.patience, score=score)
        exclude = [out_dir] + ([cache.folder] if cache is not None else [])
        watcher = SampleWatcher(engine, references, settings, cache=cache, exclude=exclude)
        live = None
        if not args.once and not args.quiet and not json_to_stdout and out.is_terminal:
            from rich.live import Live

            live = Live(console=out, auto_refresh=False, transient=False)
            live.start()

        def on_round(run, new):
            if live is not None:
                live.update(live_table(run), refresh=True)
            elif not args.once and not json_to_stdout:
                verdict = run.verdict
                head = verdict.trend[0] if verdict is not None and verdict.trend else "no sample with a face yet"
                out.print(f"{len(run.images)} sample(s) scored (+{new}); {head}", markup=False)

        if not args.once and not json_to_stdout:
            err.print(f"watching {args.samples} every {args.interval:g} s (Ctrl-C to stop); report in {out_dir}", markup=False)
            if samples_missing:
                err.print(f"note: {args.samples} does not exist yet: waiting for the trainer to write its first samples there",
                          markup=False)
        try:
            run = watch(watcher, report, once=args.once, stop=threading.Event(), on_round=on_round)
        finally:
            if live is not None:
                live.stop()
    finally:
        report.__exit__(None, None, None)
    if args.json is not None:
        if json_to_stdout:
            sys.stdout.write(report_json(run) + "\n")
        else:
            moved = preserve_file(args.json)
            if moved is not None:
                err.print(f"note: the earlier {args.json.name} was kept as {moved.name}", markup=False)
            write_text_atomic(args.json, report_json(run))
    if not json_to_stdout:
        from .score_command import print_summary

        print_summary(run, out)  # the verdict's lines included
        out.print(f"report: {out_dir / 'report.html'}", markup=False)
    return 0
