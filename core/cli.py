"""The ``likeness`` command: wires the sub-commands together; each lives in its own module.

    likeness score    score a folder of images against reference photos   (lora_likeness.score_command)
    likeness doctor   check the installation                              (lora_likeness.doctor_command)
    likeness prepare  face photos -> training dataset                     (lora_likeness.dataset.command)
    likeness train    train a LoRA                                        (lora_likeness.training.command)
    likeness sweep    epochs x strengths x seeds, scored and recommended  (lora_likeness.sweep.command)
    likeness run      prepare -> train -> sweep -> report                 (lora_likeness.sweep.command)
    likeness convert  diffusers/PEFT LoRA -> Kohya file                   (lora_likeness.sweep.convert_command)
    likeness watch    follow a trainer's samples: which step is the person (lora_likeness.watch_command)

Exit codes: 0 done; 1 ``doctor`` found problems; 2 a setting the user must fix; 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .console import EXIT_CANCELLED, EXIT_USAGE, cli_pack_advice  # noqa: F401 - re-exported for hosts and scripts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="likeness", description="Measure how much generated images look like a real person (ArcFace identity scores).")
    parser.add_argument("--version", action="version", version=f"likeness {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    # Each command module adds its parser and sets ``handler`` (args -> exit code).
    from . import doctor_command, score_command, watch_command
    from .dataset import command as dataset_command
    from .sweep import command as sweep_command
    from .sweep import convert_command
    from .training import command as training_command

    for register in (score_command.register, doctor_command.register, dataset_command.register,
                     training_command.register, sweep_command.register, convert_command.register, watch_command.register):
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
    with quiet_third_party():  # our progress and messages only, not the libraries' (see lora_likeness.quiet)
        return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
