"""Load Likeness's packages under their unique names, whatever is on ``sys.path``.

Both hosts import this repository without installing it: ComfyUI imports the cloned folder
as a package, and A1111 loads ``scripts/*.py`` by path with the extension root on ``sys.path``
only while it does so. A bare ``import core`` would then find whichever extension's ``core``
came first, so the core is registered as ``lora_likeness`` (and the A1111 adapter as
``lora_likeness_a1111``) straight from its folder. When ``lora_likeness`` is already imported
(``pip install -e .`` or an earlier host load) that module is reused.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent
CORE_NAME = "lora_likeness"
A1111_NAME = "lora_likeness_a1111"


def load_package(name: str, folder: Path) -> ModuleType:
    """Import ``folder/__init__.py`` as the top-level package ``name`` (once per process)."""
    if name in sys.modules:
        loaded = sys.modules[name]
        origin = Path(getattr(loaded, "__file__", "") or "").resolve().parent
        if origin != folder.resolve():
            # Another copy (a pip install, another clone) was imported first; ours would clash with it.
            print(f"[Likeness] note: using {name} from {origin}, not the copy in {folder}", file=sys.stderr)
        return loaded
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        raise
    return module


def load_core() -> ModuleType:
    """The shared core, importable afterwards as ``import lora_likeness``."""
    return load_package(CORE_NAME, ROOT / "core")


def load_a1111_adapter() -> ModuleType:
    """The A1111 / Forge adapter (imports A1111's ``modules``; call only inside A1111)."""
    load_core()
    return load_package(A1111_NAME, ROOT / "a1111_extension")
