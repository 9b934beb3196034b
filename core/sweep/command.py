"""``likeness sweep`` and ``likeness run``: argument parsers and handlers (nothing heavy until they run).

    likeness sweep --base MODEL --loras DIR --refs DIR --prompt TEXT [--negative TEXT] [--seeds 1236,1237]
                   [--strengths 0.6,0.8,1.0] [--steps N] [--cfg X] [--width W] [--height H] [--pack NAME|PATH] --out DIR
    likeness run --photos DIR --trigger T --class C --base MODEL --out DIR

Exit codes: 0 done, 2 a setting or the installation to fix (the message says which), 130 cancelled (re-running continues where it stopped).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import EXIT_CANCELLED, EXIT_USAGE, RichProgress, add_engine_arguments, interrupt_cancels, make_console, print_error


def _sweep_options(parser: argparse.ArgumentParser, for_run: bool) -> None:
    """Generation options shared by ``sweep`` and ``run`` (defaults None = the SweepConfig default)."""
    from .config import SAMPLERS

    group = parser.add_argument_group("sweep")
    if not for_run:
        group.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                           help="prompt (repeatable: each prompt is generated with every seed in every cell); optional with --people "
                                "naming a multi-identity dataset (one prompt per group of people it covers)")
    group.add_argument("--negative", metavar="TEXT", help="negative prompt")
    group.add_argument("--seeds", metavar="LIST", help="seeds, e.g. 1236,1237 or 1236-1239 (default 1236,1237)")
    group.add_argument("--strengths", metavar="LIST", help="LoRA strengths, e.g. 0.6,0.8,1.0 (default)")
    group.add_argument("--steps", type=int, help="sampling steps (default: the model family's, 25)")
    group.add_argument("--cfg", type=float, help="CFG scale (default: the model family's, 7)")
    group.add_argument("--width", type=int, help="image width in px (default: 512 for SD1.x, 1024 for SDXL)")
    group.add_argument("--height", type=int, help="image height in px (default: 768 for SD1.x, 1024 for SDXL)")
    group.add_argument("--sampler", choices=tuple(SAMPLERS), help="sampler (default dpmpp_2m_karras)")
    group.add_argument("--clip-skip", type=int, help="CLIP skip as A1111 counts it (default 1 = none)")
    group.add_argument("--batch-size", type=int, help="images generated at once (default 4)")
    group.add_argument("--no-baseline", dest="baseline", action="store_false", default=None,
                       help="skip the no-LoRA cell (the floor every checkpoint should beat)")
    group.add_argument("--clip", type=Path, metavar="DIR", help="local CLIP model folder for prompt adherence (default: the offline Hugging Face cache)")
    group.add_argument("--no-adherence", dest="adherence", action="store_false", default=None, help="do not measure prompt adherence")
    group.add_argument("--max-no-face", type=float, help="cells whose no-face rate is above this cannot be recommended (default 0.5)")
    group.add_argument("--precision", choices=("auto", "fp16", "bf16", "float"), help="auto = fp16 on CUDA, float32 on CPU")
    group.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    group.add_argument("--tokenizer", type=Path, metavar="DIR", help="CLIP tokenizer folder (default: found offline)")
    group.add_argument("--tokenizer-2", dest="tokenizer_2", type=Path, metavar="DIR",
                       help="SDXL's second tokenizer folder (default: the base's, else --tokenizer's files with SDXL's pad token)")
    group.add_argument("--family", choices=("auto", "sd1", "sdxl"),
                       help="model family of --base (default auto: detected from the file; sd1/sdxl refuse any other)")


def sweep_overrides(args: argparse.Namespace) -> dict:
    """The sweep options the user gave, as SweepConfig fields."""
    from .config import parse_floats, parse_seeds

    values = {}
    for name in ("negative", "steps", "cfg", "width", "height", "sampler", "clip_skip", "batch_size", "baseline", "clip",
                 "adherence", "max_no_face", "precision", "device", "tokenizer", "tokenizer_2", "family"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if args.seeds is not None:
        values["seeds"] = parse_seeds(args.seeds)
    if args.strengths is not None:
        values["strengths"] = parse_floats(args.strengths, "strengths")
    return values


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``sweep`` and ``run`` to the CLI."""
    sweep = commands.add_parser(
        "sweep", help="generate every checkpoint x strength x seed, score them and recommend one",
        description="Generate images for every LoRA checkpoint at every strength (plus a no-LoRA baseline) with fixed seeds, "
                    "score them against the reference photos and recommend the best checkpoint and strength. Re-running reuses "
                    "the images already made.",
    )
    sweep.add_argument("--base", required=True, type=Path, metavar="MODEL",
                       help="SD1.x or SDXL base: diffusers folder or .safetensors checkpoint (the family is detected)")
    sweep.add_argument("--loras", required=True, type=Path, metavar="DIR",
                       help="a Kohya run folder (name-000010.safetensors …), a folder of diffusers/PEFT run folders, or one LoRA file")
    sweep.add_argument("--run", metavar="NAME", help="which training run in --loras when it holds several")
    who = sweep.add_mutually_exclusive_group(required=True)
    who.add_argument("--refs", type=Path, metavar="DIR", help="real photos of the person")
    who.add_argument("--people", type=Path, metavar="DIR",
                     help="a family LoRA: a `likeness prepare --identity` dataset, or a folder of one photo folder per person "
                          "(each person scored in every image; the recommendation is best for the worst-served person)")
    sweep.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (images/, report.html, recommendation.json, grid.jpg …)")
    add_engine_arguments(sweep)
    _sweep_options(sweep, for_run=False)
    sweep.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(handler=command_sweep)

    run = commands.add_parser(
        "run", help="photos -> dataset -> LoRA -> sweep -> report in one command",
        description="Prepare a dataset from the photos, train a LoRA, sweep its epochs x strengths and write the report with a "
                    "recommendation. Every stage's output is kept under --out; re-running skips what is done.",
    )
    run.add_argument("--photos", required=True, type=Path, metavar="DIR", help="photos of the person (never modified)")
    run.add_argument("--trigger", metavar="WORD", help="rare trigger word for the person, e.g. ohwx (with --identity: the LoRA's name)")
    run.add_argument("--identity", action="append", default=[], metavar="NAME[:CLASS]=REF_DIR",
                     help="several people in one LoRA (a family): each person's trigger word, class and reference photos; repeat "
                          "per person. The sweep then scores every person and recommends the checkpoint best for the worst-served one")
    run.add_argument("--class", dest="class_word", required=True, metavar="WORD", help="class word: man, woman, person, …")
    run.add_argument("--base", required=True, type=Path, metavar="MODEL",
                     help="SD1.x or SDXL base: diffusers folder or .safetensors checkpoint (the family and its defaults are detected)")
    run.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (dataset/, training/, sweep/)")
    run.add_argument("--refs", type=Path, metavar="DIR", help="reference photos for scoring (default: --photos)")
    add_engine_arguments(run)
    run.add_argument("--epochs", type=int, default=10, help="training epochs, one checkpoint each (default 10)")
    run.add_argument("--resolution", type=int, help="training resolution and crop size (default: 512 for SD1.x, 1024 for SDXL)")
    run.add_argument("--max-images", type=int, default=50, help="keep at most this many photos (default 50)")
    run.add_argument("--train-config", type=Path, metavar="FILE.toml", help="more training settings (TrainConfig fields, as for likeness train --config)")
    run.add_argument("--prompt", metavar="TEXT", help="sweep prompt (default: 'photo of TRIGGER CLASS')")
    _sweep_options(run, for_run=True)
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=command_run)


def _with_progress(console, quiet: bool, work):
    """``work(progress)`` under one rich progress display; the first Ctrl-C cancels between items."""
    progress = RichProgress(console, enabled=not quiet)
    try:
        with interrupt_cancels(progress):
            return work(progress)
    finally:
        progress.close()


def _print_result(sweep, console) -> None:
    recommendation = sweep.recommendation
    console.print(f"{sweep.generated} image(s) generated, {sweep.reused} reused", markup=False)
    for line in recommendation.lines():
        console.print(line, markup=False)
    if getattr(sweep, "people", None) is not None:
        console.print(sweep.people.sentence(), markup=False)
    for path in sweep.files.values():
        console.print(f"wrote {path}", markup=False)


def training_line(training) -> str:
    """``training: 2 checkpoints (e1, final) in DIR``: every file the sweep goes on to use, the final one included."""
    from ..labels import parse_kohya_name

    labels = []
    for path in training.checkpoints:
        _, epoch, step = parse_kohya_name(Path(path).name)
        labels.append(f"e{epoch}" if epoch is not None else f"step {step}" if step is not None else Path(path).stem)
    if training.final:
        labels.append("final")
    if not labels:
        return f"training: no checkpoint in {training.out}"
    return f"training: {len(labels)} checkpoint{'s' if len(labels) != 1 else ''} ({', '.join(labels)}) in {training.out}"


def _training_stack_problem() -> str | None:
    """The conflict message when diffusers / transformers / peft cannot be imported, else None."""
    from ..training.stack import TrainingStackError, require_training_stack

    try:
        require_training_stack()
    except TrainingStackError as exc:
        return str(exc)
    return None


def _loras_problem(config) -> str | None:
    """Why ``--loras`` holds nothing to sweep (no LoRA, only pickles, several runs and no ``--run``), else None.

    Read from names and safetensors headers only, so it is said before the training stack is needed or loaded."""
    from .. import checkpoints as ckpt

    try:
        found = ckpt.sweep_checkpoints(config.loras, run=config.run, base=None)
    except ValueError as exc:
        return str(exc)
    return None if found else f"--loras: {ckpt.no_lora_found_message(config.loras)}"


def command_sweep(args: argparse.Namespace) -> int:
    from ..faces import FaceModelError, PackNotFoundError
    from ..families import ModelLoadError
    from ..progress import Cancelled
    from ..references import NoReferencesError
    from ..training.stack import describe_import_error
    from .config import SweepConfig, SweepConfigError
    from .engine import run_sweep
    from .loras import LoraLoadError

    err = make_console(stderr=True)
    out = make_console()
    try:
        config = SweepConfig(base=args.base, loras=args.loras, refs=args.refs, people=args.people, out=args.out, prompts=list(args.prompts or []),
                             run=args.run, pack=args.pack, providers=args.providers).replace(**sweep_overrides(args))
        config.validate()
    except SweepConfigError as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    if (message := _loras_problem(config) or _training_stack_problem()) is not None:
        print_error(err, message)
        return EXIT_USAGE
    try:
        result = _with_progress(err, args.quiet, lambda progress: run_sweep(config, progress))
    except (SweepConfigError, PackNotFoundError, FaceModelError, NoReferencesError, ModelLoadError, LoraLoadError) as exc:
        print_error(err, exc)
        return EXIT_USAGE
    except ImportError as exc:  # a part of the stack that the check up front does not import
        print_error(err, describe_import_error(exc))
        return EXIT_USAGE
    except (Cancelled, KeyboardInterrupt):
        err.print("cancelled: every image saved so far is reused when you run the same command again", markup=False)
        return EXIT_CANCELLED
    _print_result(result, out)
    return 0


def command_run(args: argparse.Namespace) -> int:
    from ..dataset.config import PrepareConfigError
    from ..faces import FaceModelError, PackNotFoundError
    from ..families import ModelLoadError
    from ..progress import Cancelled
    from ..references import NoReferencesError
    from ..training.config import ConfigError, load_config_file
    from ..training.result import TrainingCancelled
    from ..training.stack import describe_import_error
    from .config import SweepConfigError
    from .loras import LoraLoadError
    from .run import RunConfig, RunError, run_all

    err = make_console(stderr=True)
    out = make_console()
    try:
        train = {}
        if args.train_config is not None:
            from ..training.config import TrainConfig

            # Only what the file sets: its other fields are defaults and must not undo --epochs / --resolution.
            defaults = TrainConfig().to_dict()
            loaded = load_config_file(args.train_config).to_dict()
            train = {k: v for k, v in loaded.items() if k not in ("base", "data", "out", "name") and v != defaults.get(k)}
        from ..dataset.config import parse_identity

        config = RunConfig(photos=args.photos, trigger=args.trigger, class_word=args.class_word, base=args.base, out=args.out,
                           identities=[parse_identity(text) for text in args.identity],
                           refs=args.refs, pack=args.pack, providers=args.providers, tokenizer=args.tokenizer, resolution=args.resolution,
                           epochs=args.epochs, max_images=args.max_images, prompt=args.prompt,
                           train_overrides=train, sweep_overrides=sweep_overrides(args))
    except (ConfigError, SweepConfigError, PrepareConfigError) as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    if (message := _training_stack_problem()) is not None:  # before the dataset is prepared, not after
        print_error(err, message)
        return EXIT_USAGE
    try:
        result = _with_progress(err, args.quiet, lambda progress: run_all(config, progress))
    except (RunError, PrepareConfigError, ConfigError, SweepConfigError, PackNotFoundError, FaceModelError, NoReferencesError,
            ModelLoadError, LoraLoadError) as exc:
        print_error(err, exc)
        return EXIT_USAGE
    except ImportError as exc:  # a part of the stack that the check up front does not import
        print_error(err, describe_import_error(exc))
        return EXIT_USAGE
    except TrainingCancelled as exc:
        err.print(f"cancelled during training: {exc}; run the same command again to continue", markup=False)
        return EXIT_CANCELLED
    except (Cancelled, KeyboardInterrupt):
        err.print("cancelled: finished stages and images are kept; run the same command again to continue", markup=False)
        return EXIT_CANCELLED
    if result.skipped:
        out.print(f"already done, skipped: {', '.join(result.skipped)}", markup=False)
    for note in result.notes:
        out.print(f"note: {note}", markup=False)
    dataset = result.dataset
    out.print(f"dataset: {len(dataset.kept)} photo(s) kept, {len(dataset.rejected)} rejected -> {dataset.out}", markup=False)
    out.print(training_line(result.training), markup=False)
    _print_result(result.sweep, out)
    return 0
