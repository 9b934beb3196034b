"""Likeness as a ComfyUI node pack.

ComfyUI imports this folder as a package (``custom_nodes/<folder>/__init__.py``). The shared core
is registered as ``lora_likeness`` first, so the node modules import it by that unique name.
"""

from .likeness_bootstrap import load_core

load_core()

from .comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
