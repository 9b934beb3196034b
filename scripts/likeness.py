"""A1111 / Forge entry point: A1111 loads this file by path.

The extension root is on ``sys.path`` only while this file is imported, and other extensions may
ship their own ``core`` or ``scripts`` modules, so nothing here is imported by a bare name: the
bootstrap is loaded from its path and registers ``lora_likeness`` and ``lora_likeness_a1111``.

Inside A1111 (its ``modules.scripts`` is what is loading us) this file also exposes the
always-visible script class and registers the X/Y/Z axes and hooks, the tab and the callbacks,
every time it is loaded: a UI reload clears A1111's callbacks and loads the X/Y/Z script anew.
Anywhere else (tests, tools) it only registers the packages.
"""

import importlib.util
import sys
from pathlib import Path


def _load_bootstrap():
    name = "lora_likeness_bootstrap"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "likeness_bootstrap.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Likeness: cannot load {path}; is the extension folder complete?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


lora_likeness = _load_bootstrap().load_core()
lora_likeness_a1111 = _load_bootstrap().load_a1111_adapter()

if "modules.scripts" in sys.modules:  # loaded by A1111 / Forge
    from lora_likeness_a1111.script import LikenessScript  # noqa: F401  (A1111 finds Script subclasses here)

    lora_likeness_a1111.register()
