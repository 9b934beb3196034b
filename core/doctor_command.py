"""``likeness doctor``: check the installation — versions, onnxruntime builds and providers, the
training stack against its tested ranges, and the face-model packs; ``--fix-onnxruntime`` repairs a
clash of onnxruntime builds with pip.

Exit codes: 0 all good, 1 problems found (or the repair failed).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from . import __version__
from .console import make_console


def register(commands) -> None:
    """Add ``doctor`` to the ``likeness`` sub-command parsers."""
    doctor = commands.add_parser("doctor", help="check the installation: versions, onnxruntime providers, face-model packs")
    doctor.add_argument("--pack", default=os.environ.get("LIKENESS_PACK", "buffalo_l"), help="pack to look for (default: buffalo_l)")
    doctor.add_argument("--fix-onnxruntime", action="store_true", help="repair an onnxruntime / onnxruntime-gpu clash with pip")
    doctor.set_defaults(handler=command_doctor)


def command_doctor(args: argparse.Namespace) -> int:
    from . import dependencies
    from .faces import inspect_pack, pack_search_dirs, resolve_providers

    console = make_console()
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
