"""A1111 / Forge entry point: A1111 loads this file by path.

The extension root is on ``sys.path`` only while this file is imported, and other extensions may
ship their own ``core`` or ``scripts`` modules, so nothing here is imported by a bare name: the
bootstrap is loaded from its path and registers ``lora_likeness`` and ``lora_likeness_a1111``.
"""

import importlib.util
import sys
from pathlib import Path


def _load_bootstrap():
    name = "lora_likeness_bootstrap"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "likeness_bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lora_likeness = _load_bootstrap().load_core()
lora_likeness_a1111 = _load_bootstrap().load_a1111_adapter()
