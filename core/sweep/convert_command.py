"""``likeness convert``: write diffusers/PEFT LoRAs as Kohya files (imports nothing heavy until it runs).

    likeness convert SOURCE [--out FILE|DIR] [--alpha A] [--force]

SOURCE is one LoRA file (``…/exp_e10/pytorch_lora_weights.safetensors``, ``adapter_model.safetensors``) or a
folder of checkpoint folders (``output/exp_e10 … exp_e50``), converted run by run into
``OUT/<run>-<epoch:06d>.safetensors``: a Kohya run that A1111's X/Y/Z plot and ComfyUI can sweep.
Exit codes: 0 done, 2 nothing converted (the message says why; nothing is half written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import EXIT_USAGE, make_console, print_error


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``convert`` sub-command to the CLI."""
    parser = commands.add_parser(
        "convert", help="write a diffusers/PEFT LoRA (or a folder of them) as Kohya files A1111 and ComfyUI load",
        description="Convert diffusers (pytorch_lora_weights.safetensors) and PEFT (adapter_model.safetensors) LoRAs to Kohya's "
                    "networks.lora format. A folder of checkpoint folders (exp_e10, exp_e20 … or checkpoint-500 …) becomes one "
                    "Kohya run per training run: NAME-000010.safetensors, NAME-000020.safetensors … with ss_epoch set. "
                    "Existing files are never replaced without --force, and the source is never written.",
    )
    parser.add_argument("source", type=Path, metavar="SOURCE", help="a LoRA .safetensors file, or a folder of checkpoint folders")
    parser.add_argument("--out", type=Path, metavar="FILE|DIR",
                        help="target file (for one SOURCE file) or folder; default: a -kohya folder beside the folder that holds the "
                             "run (output/ and output/exp_e10/pytorch_lora_weights.safetensors both write to output-kohya/)")
    parser.add_argument("--alpha", type=float, metavar="A",
                        help="the lora_alpha the LoRA was trained with, for every module; overrides what the file and its "
                             "adapter_config.json say (default: from them, else alpha = rank, i.e. scale 1.0 as diffusers applies it)")
    parser.add_argument("--force", action="store_true", help="replace existing target files")
    parser.set_defaults(handler=command_convert)


def command_convert(args: argparse.Namespace) -> int:
    from .convert import ConversionError, convert_path

    err = make_console(stderr=True)
    out = make_console()
    if args.alpha is not None and not args.alpha > 0:
        print_error(err, f"--alpha {args.alpha}: must be a positive number")
        return EXIT_USAGE
    try:
        written, notes = convert_path(args.source, args.out, alpha=args.alpha, overwrite=args.force)
    except ConversionError as exc:
        print_error(err, str(exc))
        return EXIT_USAGE
    for note in notes:
        err.print(f"note: {note}", markup=False)
    from ..training.kohya_format import read_metadata

    for path in written:
        meta = read_metadata(path)
        epoch = f", epoch {meta['ss_epoch']}" if "ss_epoch" in meta else (f", step {meta['ss_steps']}" if "ss_steps" in meta else "")
        out.print(f"wrote {path} (rank {meta.get('ss_network_dim')}, alpha {meta.get('ss_network_alpha')} from "
                  f"{meta.get('likeness_alpha_source')}{epoch})", markup=False)
    return 0
