"""A1111 / Forge adapter, imported as ``lora_likeness_a1111`` by ``scripts/likeness.py``.

Modules (everything computed comes from ``lora_likeness``):
    prompt_loras  ``<lora:…>`` tags: find them, put a run's checkpoint in (pure text)
    scorer        one face engine and reference set per setting for the life of the process
    axes          X/Y/Z axes "Likeness: LoRA epoch" and "Likeness: LoRA strength"
    xyz_hooks     scores on X/Y/Z cells, means in the axis labels, grid infotext and reports
    recommendation  the grid's cells as the core's records for ``recommend()``; the line under the grid
    script        the always-visible "Likeness identity score" section (needs ``modules.scripts``)
    tab           the "Likeness" tab, one function per section

Importing this package imports nothing of A1111; :func:`register` does, and is called by
``scripts/likeness.py`` every time A1111 loads it (a UI reload clears A1111's callbacks).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import lora_likeness  # noqa: F401  (registered by likeness_bootstrap before this package)

_CALLBACK_NAMES = ("likeness_before_image_saved", "likeness_image_saved", "likeness_tab")


def _registered(callbacks_key: str, function) -> bool:
    from modules import script_callbacks

    return any(getattr(c, "callback", None) is function for c in script_callbacks.callback_map.get(callbacks_key, []))


def _add_callback(register_callback: Callable, callback: Callable, name: str) -> None:
    """``script_callbacks.on_…(callback, name=name)``; without ``name`` where the host's register
    function has no such parameter (Forge Classic / Neo kept A1111 1.7's ``on_…(callback)``)."""
    try:
        takes_name = "name" in inspect.signature(register_callback).parameters
    except (TypeError, ValueError):  # a builtin or C function: call it the old way
        takes_name = False
    if takes_name:
        register_callback(callback, name=name)
    else:
        register_callback(callback)


def register() -> None:
    """Inside A1111 / Forge: X/Y/Z axes and hooks, the Likeness tab, image-save callbacks, and
    A1111's ``models/insightface/models`` as a face-pack folder. Idempotent.

    The axes are added here, while A1111 imports the script files, and not in ``on_before_ui``:
    under ``--nowebui`` the X/Y/Z script builds its axis list before that callback runs.
    """
    from lora_likeness import faces
    from modules import paths, script_callbacks

    from . import axes, tab, xyz_hooks

    faces.register_models_dir(Path(paths.models_path) / "insightface" / "models", "A1111 models folder")
    xyz = xyz_hooks.find_xyz_module()
    if xyz is None:
        print("[Likeness] the X/Y/Z plot script is not loaded: no Likeness axes or grid scores", file=sys.stderr)
    else:
        try:
            axes.install_axes(xyz)
            xyz_hooks.install_hooks(xyz)
        except LookupError as error:  # an X/Y/Z script of an unknown shape: the rest of Likeness still works
            print(f"[Likeness] {error}: no Likeness axes or grid scores", file=sys.stderr)
    if not _registered("callbacks_before_image_saved", xyz_hooks.on_before_image_saved):
        _add_callback(script_callbacks.on_before_image_saved, xyz_hooks.on_before_image_saved, _CALLBACK_NAMES[0])
    if not _registered("callbacks_image_saved", xyz_hooks.on_image_saved):
        _add_callback(script_callbacks.on_image_saved, xyz_hooks.on_image_saved, _CALLBACK_NAMES[1])
    if not _registered("callbacks_ui_tabs", tab.build_tab):
        _add_callback(script_callbacks.on_ui_tabs, tab.build_tab, _CALLBACK_NAMES[2])
