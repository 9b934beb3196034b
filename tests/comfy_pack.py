"""The ComfyUI node pack loaded once per process, as the root ``__init__`` imports it inside ComfyUI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "likeness_comfy_nodes_under_test"


def load_node_pack():
    """``comfy_nodes`` under a unique name; with ComfyUI importable it runs as ``main.py --cpu`` would."""
    if importlib.util.find_spec("comfy") is not None:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    if NAME not in sys.modules:
        folder = REPO / "comfy_nodes"
        spec = importlib.util.spec_from_file_location(NAME, folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[NAME]
