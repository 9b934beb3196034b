"""Install Likeness's runtime dependencies into the running Python without harming the host.

Three ways in:

1. ComfyUI-Manager runs ``python install.py`` in this folder with ComfyUI's interpreter.
2. A1111 / Forge run the extension's ``install.py`` with their own root on PYTHONPATH, so their
   ``launch`` module is importable; then pip runs through ``launch.run_pip`` (which honours
   ``--skip-install`` and ``INDEX_URL``) and presence checks through ``launch.is_installed``.
3. By hand: ``python install.py [--dry-run] [--fix-onnxruntime] [--gpu|--cpu]``.

The plan comes from ``core/dependencies.py`` (standard library only), loaded by path: this script
never imports the ``lora_likeness`` package, whose dependencies may not be installed yet. The
host's torch, numpy, Pillow, protobuf, transformers and OpenCV are frozen with a pip constraints
file; torch is never installed or upgraded. Exit status: 0 done (or nothing to do), 1 pip failed or
the result does not fit, 2 the requirements cannot fit this environment (nothing was changed).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
DEPENDENCIES_FILE = HERE / "core" / "dependencies.py"
DEPENDENCIES_MODULE = "lora_likeness_dependencies"
PREFIX = "[Likeness]"

EXIT_OK = 0
EXIT_PIP_FAILED = 1
EXIT_BLOCKED = 2


def say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def complain(message: str) -> None:
    print(f"{PREFIX} ERROR: {message}", file=sys.stderr, flush=True)


def load_dependencies() -> ModuleType:
    """``core/dependencies.py`` as ``lora_likeness_dependencies`` (never via ``lora_likeness``)."""
    if DEPENDENCIES_MODULE in sys.modules:
        return sys.modules[DEPENDENCIES_MODULE]
    spec = importlib.util.spec_from_file_location(DEPENDENCIES_MODULE, DEPENDENCIES_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {DEPENDENCIES_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[DEPENDENCIES_MODULE] = module  # dataclasses look their module up while executing
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[DEPENDENCIES_MODULE]
        raise
    return module


def find_a1111_launch() -> ModuleType | None:
    """A1111's ``launch`` module when A1111's launcher runs us, else None.

    A1111 (modules/launch_utils.py, run_extension_installer) starts ``python install.py`` with its
    root on PYTHONPATH; importing ``launch`` then only parses A1111's command line (not started:
    its main() is guarded). Anywhere else the import fails, or finds an unrelated module without
    A1111's functions, and pip is run directly."""
    try:
        import launch  # type: ignore[import-not-found]
    except (Exception, SystemExit):
        return None
    if all(callable(getattr(launch, name, None)) for name in ("run_pip", "is_installed", "run")):
        return launch
    return None


class PipFailed(RuntimeError):
    pass


#: onnx 1.12 is the last release that accepts protobuf < 3.20.2, and its wheels stop at Python 3.10;
#: every onnx wheel for Python 3.11+ requires protobuf >= 3.20.2. Without a wheel pip falls back to
#: compiling onnx 1.12 from source, which fails (it needs cmake and protoc) after minutes.
ONNX_PROTOBUF_FLOOR_PY311 = "3.20.2"
PROTOBUF_FIX = "3.20.3"


def protobuf_blocker(deps: ModuleType, facts, actions) -> str | None:
    """Why the plan cannot fit, when insightface (which needs onnx) would be installed on Python
    3.11+ beside a host protobuf older than onnx's floor (A1111 1.10 pins protobuf==3.20.0); else None.

    Detected before pip runs, so the user gets the reason and the one-line fix instead of a failed
    source build."""
    installs_insightface = any(
        action.kind == deps.INSTALL and any(deps.parse_requirement(text).key == deps.INSIGHTFACE for text in action.packages)
        for action in actions
    )
    protobuf = facts.version("protobuf")
    if not installs_insightface or facts.version("onnx") is not None or protobuf is None or tuple(facts.python[:2]) < (3, 11):
        return None
    if deps.satisfies(protobuf, f">={ONNX_PROTOBUF_FLOOR_PY311}"):
        return None
    python = facts.python_text
    return (
        f"insightface needs onnx, and every onnx wheel for Python {python} requires protobuf>={ONNX_PROTOBUF_FLOOR_PY311}, "
        f"but this environment's protobuf is {protobuf} (A1111 1.10 pins 3.20.0) and install.py does not change "
        f"the host's pins (onnx 1.12, the last release accepting it, has wheels only up to Python 3.10 and does not "
        f"build from source without cmake and protoc). Either run A1111 on Python 3.10, or allow the bug-fix release "
        f"protobuf {PROTOBUF_FIX} of the same series yourself and restart: "
        f'"{sys.executable}" -m pip install protobuf=={PROTOBUF_FIX}'
    )


_SAFE_ARG = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def shell_quote(arg: str) -> str:
    """Quote one argument for A1111's ``run`` (a shell=True string on POSIX and on Windows, so
    double quotes, which both understand; requirements like ``numpy>=1.26,<3`` need them)."""
    if _SAFE_ARG.match(arg):
        return arg
    if any(char in arg for char in '"$`\\\n') and os.name != "nt":
        raise ValueError(f"refusing to pass {arg!r} through the shell")
    return f'"{arg}"'


class DirectPip:
    """pip as ``[sys.executable, -m, pip, ...]``: ComfyUI-Manager and runs by hand."""

    name = f"pip of {sys.executable}"
    skip_install = False

    def __init__(self, dependencies: ModuleType) -> None:
        self.dependencies = dependencies

    def pip(self, args: list[str], desc: str) -> None:
        """Run pip; ``desc`` names what it works on, for messages."""
        command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
        if args[0] == "install":  # as A1111's run_pip: an older wheel beats compiling a newer sdist
            command.append("--prefer-binary")
        try:
            result = subprocess.run(command, check=False)
        except OSError as error:
            raise PipFailed(f"{args[0]} {desc}: could not start pip: {error}") from error
        if result.returncode != 0:
            raise PipFailed(
                f"{args[0]} {desc}: pip exited with status {result.returncode} ({' '.join(command)})"
            )

    def is_installed(self, name: str) -> bool:
        return self.dependencies.installed_version(name) is not None


class A1111Pip:
    """pip through A1111's ``launch.run_pip`` (and ``launch.run`` for ``pip uninstall``, because
    run_pip appends ``--prefer-binary``, which ``pip uninstall`` rejects)."""

    def __init__(self, launch: ModuleType) -> None:
        self.launch = launch
        self.name = "A1111's launch.run_pip"
        self.skip_install = bool(getattr(getattr(launch, "args", None), "skip_install", False))

    def pip(self, args: list[str], desc: str) -> None:
        """Run pip through A1111; ``desc`` names what it works on, for messages."""
        try:
            command = " ".join(shell_quote(arg) for arg in args)
            if args[0] == "uninstall":
                python = getattr(self.launch, "python", sys.executable)
                self.launch.run(
                    f'"{python}" -m pip {command}',
                    desc=f"Uninstalling {desc} (Likeness)",
                    errdesc=f"Couldn't uninstall {desc}",
                )
            else:  # run_pip prints "Installing <desc>"
                self.launch.run_pip(command, desc=f"{desc} (Likeness)")
        except (RuntimeError, ValueError) as error:  # launch.run raises RuntimeError with pip's output
            raise PipFailed(f"{args[0]} {desc}: {error}") from error

    def is_installed(self, name: str) -> bool:
        return bool(self.launch.is_installed(name))


def install_no_deps(deps: ModuleType, runner, action, constraints_file: str, workdir: Path) -> None:
    """insightface without opencv-python / onnxruntime: pip resolves it with its dependencies in a
    dry run (so the versions fit the host pins, e.g. insightface 1.0.1 under A1111's protobuf
    3.20), then everything it would install except the excluded distributions goes in --no-deps."""
    report_path = workdir / "resolve.json"
    pins: list[str] | None = None
    try:
        runner.pip(
            ["install", "--dry-run", "--quiet", "--report", str(report_path), "-c", constraints_file,
             *action.packages],
            f"{' '.join(action.packages)} (dry run: resolving its requirements)",
        )
        report = json.loads(report_path.read_text(encoding="utf-8"))
        pins = deps.report_installs(report, action.exclude)
        builds = [pin for pin in deps.report_source_builds(report) if pin in pins]
        if builds:
            say(f"warning: pip will build {', '.join(builds)} from source (no wheel fits this Python "
                f"under the host pins); that needs a compiler unless they are pure Python")
    except (PipFailed, OSError, ValueError) as error:
        say(f"could not resolve with `pip install --dry-run --report` (pip older than 22.2?): {error}")
    if pins:
        runner.pip(["install", "--no-deps", "-c", constraints_file, *pins], " ".join(pins))
        return
    if pins is not None:  # pip had nothing to add
        return
    fallback = deps.insightface_fallback_requirements(action.exclude)
    say(f"installing insightface's known requirements instead: {' '.join(fallback)}")
    runner.pip(["install", "-c", constraints_file, *fallback], " ".join(fallback))
    runner.pip(["install", "--no-deps", "-c", constraints_file, *action.packages], " ".join(action.packages))


def verify(deps: ModuleType, runner, plan_options: dict, installed_names: list[str]) -> bool:
    """After installing: the plan must now be empty and every installed name present."""
    importlib.invalidate_caches()
    ok = True
    for name in installed_names:
        if not runner.is_installed(name):
            complain(f"{name} is still not installed after pip ran")
            ok = False
    after = deps.plan(deps.gather_facts(), **plan_options)
    leftover = [action for action in after if action.changes or action.kind == deps.BLOCKED]
    for action in leftover:
        complain(f"still not satisfied after installing: {action.describe()}")
        ok = False
    try:
        declared = importlib.metadata.requires(deps.INSIGHTFACE) or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    for unmet in deps.unmet_declared_requirements(declared, deps.installed_distributions()):
        say(f"warning: insightface declares {unmet}")
    return ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="install.py",
        description="Install Likeness's dependencies into this Python without touching the host's "
        "torch, numpy, Pillow, protobuf, transformers or OpenCV.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument(
        "--fix-onnxruntime",
        action="store_true",
        help="switch a working onnxruntime variant to the one that fits this torch "
        "(a clash between variants is always repaired)",
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--gpu", action="store_true", help="want onnxruntime-gpu (CUDA), whatever torch is")
    choice.add_argument("--cpu", action="store_true", help="want the CPU onnxruntime")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deps = load_dependencies()
    launch = find_a1111_launch()
    runner = A1111Pip(launch) if launch is not None else DirectPip(deps)

    facts = deps.gather_facts()
    torch_text = facts.torch or "not installed"
    if facts.torch_cuda:
        torch_text += f" {facts.torch_cuda}"
    say(f"Python {facts.python_text} ({sys.executable}) on {facts.platform}; torch: {torch_text}; via {runner.name}")

    plan_options = {"prefer": "gpu" if args.gpu else "cpu" if args.cpu else None,
                    "fix_onnxruntime": args.fix_onnxruntime}
    actions = deps.plan(facts, **plan_options)

    blocker = protobuf_blocker(deps, facts, actions)
    if blocker is not None:
        actions = [deps.Action(deps.BLOCKED, blocker)]
    if any(action.kind == deps.BLOCKED for action in actions):
        for action in actions:
            complain(action.describe())
        complain("nothing was changed")
        return EXIT_BLOCKED
    if args.dry_run or runner.skip_install:
        why = "dry run" if args.dry_run else "A1111 runs with --skip-install"
        say(f"{why}: nothing will be changed; the plan is:")
        for action in actions:
            say(action.describe())
        return EXIT_OK

    installed_names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="likeness-install-") as tmp:
        workdir = Path(tmp)
        constraints_file = workdir / "host-constraints.txt"
        try:
            for action in actions:
                say(action.describe())
                if not action.changes:
                    continue
                constraints_file.write_text("".join(f"{line}\n" for line in action.constraints), encoding="utf-8")
                if action.kind == deps.INSTALL and action.no_deps:
                    install_no_deps(deps, runner, action, str(constraints_file), workdir)
                else:
                    runner.pip(deps.pip_arguments(action, str(constraints_file)), " ".join(action.packages))
                if action.kind == deps.INSTALL:
                    installed_names += [deps.parse_requirement(text).name for text in action.packages]
        except PipFailed as error:
            complain(f"pip failed, stopping here: {error}")
            return EXIT_PIP_FAILED
    if not any(action.changes for action in actions):
        return EXIT_OK
    if not verify(deps, runner, plan_options, installed_names):
        return EXIT_PIP_FAILED
    say("done: every requirement is satisfied")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
