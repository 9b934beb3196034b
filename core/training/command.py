"""``likeness train``: argument parser and handler (imports nothing heavy until it runs).

    likeness train --base MODEL --data DIR --out DIR --name NAME [--epochs N] [--save-every N]
                   [--rank R] [--alpha A] [--resolution PX] [--config FILE.toml] [--resume]
                   [--backend builtin|sd-scripts] [--print-command] ...

Settings are layered: built-in defaults, then ``--config FILE.toml`` (keys named like the fields of
:class:`~lora_likeness.training.config.TrainConfig`), then flags given on the command line.
Exit codes: 0 done, 2 a setting or the installation to fix (the message says which), 130 cancelled (state saved; ``--resume`` continues).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import EXIT_CANCELLED, EXIT_USAGE, RichProgress, interrupt_cancels, make_console, print_error

# flag -> (TrainConfig field, argparse keyword arguments); every default is None = "not given".
_FLAGS: list[tuple[str, str, dict]] = [
    ("--base", "base", {"type": Path, "metavar": "MODEL", "help": "SD1.x or SDXL base model: diffusers folder or .safetensors checkpoint"}),
    ("--family", "family", {"choices": ("auto", "sd1", "sdxl"), "help": "model family of --base (default auto: detected; sd1/sdxl refuse any other)"}),
    ("--data", "data", {"type": Path, "metavar": "DIR", "help": "Kohya training folder (img/<repeats>_<trigger> <class>/, optional reg/) or a dataset .toml"}),
    ("--out", "out", {"type": Path, "metavar": "DIR", "help": "where checkpoints, loss log and samples are written"}),
    ("--name", "name", {"metavar": "NAME", "help": "output name: NAME-000001.safetensors per epoch, NAME.safetensors at the end (default: lora)"}),
    ("--reg-data", "reg_data", {"type": Path, "metavar": "DIR", "help": "regularisation images (<repeats>_<class>/ folders; default DATA/reg)"}),
    ("--tokenizer", "tokenizer", {"type": Path, "metavar": "DIR", "help": "CLIP tokenizer folder (default: found offline)"}),
    ("--tokenizer-2", "tokenizer_2", {"type": Path, "metavar": "DIR", "help": "SDXL's second tokenizer folder (default: the base's, else --tokenizer's files)"}),
    ("--base-config", "base_config", {"type": Path, "metavar": "DIR", "help": "diffusers config folder for a single-file base (default: the family's built-in configs)"}),
    ("--epochs", "epochs", {"type": int, "metavar": "N", "help": "epochs (default 10)"}),
    ("--save-every", "save_every_n_epochs", {"type": int, "metavar": "N", "help": "save a checkpoint every N epochs (default 1)"}),
    ("--rank", "rank", {"type": int, "metavar": "R", "help": "LoRA rank / network_dim (default 16)"}),
    ("--alpha", "alpha", {"type": float, "metavar": "A", "help": "LoRA alpha / network_alpha (default 16)"}),
    ("--resolution", "resolution", {"type": int, "metavar": "PX", "help": "training resolution (default: 512 for SD1.x, 1024 for SDXL)"}),
    ("--lr", "lr", {"type": float, "help": "learning rate (default 1e-4)"}),
    ("--unet-lr", "unet_lr", {"type": float, "help": "UNet learning rate (default: --lr)"}),
    ("--text-encoder-lr", "text_encoder_lr", {"type": float, "help": "text-encoder learning rate (default: --lr for SD1.x, 0 = UNet only for SDXL)"}),
    ("--optimizer", "optimizer", {"choices": ("AdamW", "AdamW8bit"), "help": "optimizer (default AdamW)"}),
    ("--scheduler", "scheduler", {"help": "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial (default constant)"}),
    ("--warmup-steps", "warmup_steps", {"type": int, "help": "learning-rate warm-up steps (default 0)"}),
    ("--repeats", "repeats", {"type": int, "help": "override the repeats of every training folder"}),
    ("--batch-size", "batch_size", {"type": int, "help": "batch size (default 1)"}),
    ("--grad-accum", "gradient_accumulation", {"type": int, "metavar": "N", "help": "gradient accumulation steps (default 1)"}),
    ("--mixed-precision", "mixed_precision", {"choices": ("no", "fp16", "bf16"), "help": "default fp16 (float32 on a CPU)"}),
    ("--save-precision", "save_precision", {"choices": ("fp16", "bf16", "float"), "help": "dtype of saved LoRAs (default fp16)"}),
    ("--gradient-checkpointing", "gradient_checkpointing", {"action": argparse.BooleanOptionalAction, "help": "trade speed for memory"}),
    ("--cache-latents", "cache_latents", {"action": argparse.BooleanOptionalAction, "help": "encode images once before training (default on)"}),
    ("--sdpa", "sdpa", {"action": argparse.BooleanOptionalAction, "help": "scaled-dot-product attention (default on)"}),
    ("--min-snr-gamma", "min_snr_gamma", {"type": float, "help": "min-SNR loss weighting gamma (default 0 = off; 5 is common)"}),
    ("--noise-offset", "noise_offset", {"type": float, "help": "noise offset (default 0)"}),
    ("--prior-loss-weight", "prior_loss_weight", {"type": float, "help": "loss weight of regularisation images (default 1)"}),
    ("--buckets", "buckets", {"action": argparse.BooleanOptionalAction, "help": "aspect-ratio buckets (default on)"}),
    ("--caption-extension", "caption_extension", {"help": "caption file extension (default .txt)"}),
    ("--shuffle-caption", "shuffle_caption", {"action": argparse.BooleanOptionalAction, "help": "shuffle comma-separated tags"}),
    ("--keep-tokens", "keep_tokens", {"type": int, "help": "tags kept in place when shuffling (default 0)"}),
    ("--clip-skip", "clip_skip", {"type": int, "help": "CLIP skip (default 1)"}),
    ("--seed", "seed", {"type": int, "help": "seed (default 42)"}),
    ("--sample-every", "sample_every_n_epochs", {"type": int, "metavar": "N", "help": "sample images every N epochs into OUT/samples/ (default 0 = off)"}),
    ("--sample-prompt", "sample_prompts", {"action": "append", "metavar": "TEXT", "help": "sample prompt (repeatable; default: the trigger and class)"}),
    ("--sample-seed", "sample_seed", {"type": int, "help": "seed of the samples (default 1)"}),
    ("--sample-steps", "sample_steps", {"type": int, "help": "sampling steps (default 20)"}),
    ("--samples-per-prompt", "samples_per_prompt", {"type": int, "help": "images per prompt (seeds sample-seed, +1, …; default 1)"}),
    ("--score-refs", "score_refs", {"type": Path, "metavar": "DIR", "help": "reference photos: score each epoch's samples (ArcFace)"}),
    ("--pack", "score_pack", {"metavar": "NAME|PATH", "help": "face-model pack for scoring (default buffalo_l)"}),
    ("--early-stop", "early_stop_patience", {"type": int, "metavar": "N", "help": "stop when the identity score has not improved for N scored epochs"}),
    ("--keep-best", "keep_best", {"action": argparse.BooleanOptionalAction, "help": "final NAME.safetensors = best-scoring epoch"}),
    ("--backend", "backend", {"choices": ("builtin", "sd-scripts"), "help": "built-in trainer or a kohya-ss/sd-scripts checkout (default builtin)"}),
    ("--sd-scripts", "sd_scripts", {"type": Path, "metavar": "DIR", "help": "sd-scripts checkout (default $SD_SCRIPTS_DIR)"}),
    ("--accelerate", "accelerate", {"type": Path, "metavar": "PATH", "help": "accelerate executable for sd-scripts (default: its venv's, then PATH)"}),
    ("--device", "device", {"help": "auto, cpu, cuda, cuda:1, mps (default auto)"}),
]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to the CLI."""
    parser = commands.add_parser(
        "train", help="train an SD1.x or SDXL LoRA (Kohya-format checkpoints per epoch)",
        description="Train an SD1.x or SDXL LoRA (the base model's family is detected) on a Kohya training folder: NAME-000001.safetensors per saved epoch, NAME.safetensors at "
                    "the end, a loss log, optional samples scored against reference photos. Ctrl-C saves a resumable state.",
    )
    for flag, dest, kwargs in _FLAGS:
        parser.add_argument(flag, dest=dest, default=None, **kwargs)
    parser.add_argument("--config", type=Path, metavar="FILE.toml", help="TOML settings file: TrainConfig field names or these long options (rank = 16, save_every = 2, ...)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in OUT (after Ctrl-C or a crash)")
    parser.add_argument("--print-command", action="store_true",
                        help="print the sd-scripts command for these settings (and write the dataset .toml it uses), then exit")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the result (files, steps, scores) as JSON ('-' for standard output)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=command_train)


def config_from_args(args: argparse.Namespace):
    """Defaults, then ``--config``, then the flags given."""
    from .config import TrainConfig, load_config_file

    config = load_config_file(args.config) if args.config else TrainConfig()
    return config.replace(**{dest: getattr(args, dest) for _, dest, _ in _FLAGS})


def command_train(args: argparse.Namespace) -> int:
    import json
    import shlex
    import sys

    from ..families import ModelLoadError
    from ..progress import Cancelled
    from .config import ConfigError

    err = make_console(stderr=True)
    out = make_console()
    try:
        config = config_from_args(args)
        config.validate()
    except ConfigError as exc:
        print_error(err, str(exc))
        return EXIT_USAGE

    if args.print_command:
        from .sd_scripts import prepare

        try:
            command, toml_path, info = prepare(config, resume=args.resume, write=True, strict=False)
        except (ConfigError, ModelLoadError) as exc:
            print_error(err, str(exc))
            return EXIT_USAGE
        if info.get("placeholders"):
            err.print(f"note: {info['placeholders']} (the command shows placeholder paths)", markup=False)
        for warning in info["warnings"]:
            err.print(f"warning: {warning}", markup=False)
        err.print(f"wrote {toml_path}", markup=False)
        sys.stdout.write(shlex.join(command) + "\n")
        return 0

    from .stack import TrainingStackError, describe_import_error, require_training_stack

    if config.backend != "sd-scripts":  # sd-scripts trains in its own venv
        try:
            require_training_stack()
        except TrainingStackError as exc:
            print_error(err, str(exc))
            return EXIT_USAGE

    from .result import TrainingCancelled
    from .trainer import train_lora

    json_to_stdout = args.json is not None and str(args.json) == "-"
    progress = RichProgress(err, enabled=not args.quiet and not json_to_stdout)
    try:
        try:
            with interrupt_cancels(progress):
                result = train_lora(config, progress, resume=args.resume)
        finally:
            progress.close()
    except (ConfigError, ModelLoadError) as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    except ImportError as exc:  # a part of the stack that the check up front does not import
        print_error(err, describe_import_error(exc))
        return EXIT_USAGE
    except TrainingCancelled as exc:
        err.print(f"cancelled: {exc}", markup=False)
        return EXIT_CANCELLED
    except Cancelled:
        err.print("cancelled before training started; nothing was written", markup=False)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        err.print("stopped at once (second Ctrl-C): the state saved at the end of the last finished epoch, if any, is kept; "
                  "--resume continues from it", markup=False)
        return EXIT_CANCELLED

    if args.json is not None:
        text = json.dumps(result.as_dict(), indent=2)
        if json_to_stdout:
            sys.stdout.write(text + "\n")
        else:
            from ..images import write_text_atomic

            write_text_atomic(args.json, text + "\n")
    console = err if json_to_stdout else out
    for path in result.checkpoints:
        console.print(f"checkpoint {path}", markup=False)
    if result.final:
        console.print(f"final      {result.final}", markup=False)
    if result.loss_csv:
        console.print(f"loss log   {result.loss_csv}" + (f" and {result.loss_plot.name}" if result.loss_plot else ""), markup=False)
    for epoch, score in sorted(result.scores.items()):
        mark = "  <- best" if epoch == result.best_epoch else ""
        console.print(f"epoch {epoch:>3}: identity score {score:.3f}{mark}" if score is not None else f"epoch {epoch:>3}: no face in the samples", markup=False)
    if result.stopped_early:
        console.print(f"stopped early after epoch {result.epochs_done}: the identity score stopped improving", markup=False)
    for warning in result.warnings:
        console.print(f"warning: {warning}", markup=False)
    return 0
