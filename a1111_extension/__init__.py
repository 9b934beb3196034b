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

import sys
from pathlib import Path

import lora_likeness  # noqa: F401  (registered by likeness_bootstrap before this package)

_CALLBACK_NAMES = ("likeness_before_image_saved", "likeness_image_saved", "likeness_tab")


def _registered(callbacks_key: str, function) -> bool:
    from modules import script_callbacks

    return any(getattr(c, "callback", None) is function for c in script_callbacks.callback_map.get(callbacks_key, []))


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
        axes.install_axes(xyz)
        xyz_hooks.install_hooks(xyz)
    if not _registered("callbacks_before_image_saved", xyz_hooks.on_before_image_saved):
        script_callbacks.on_before_image_saved(xyz_hooks.on_before_image_saved, name=_CALLBACK_NAMES[0])
    if not _registered("callbacks_image_saved", xyz_hooks.on_image_saved):
        script_callbacks.on_image_saved(xyz_hooks.on_image_saved, name=_CALLBACK_NAMES[1])
    if not _registered("callbacks_ui_tabs", tab.build_tab):
        script_callbacks.on_ui_tabs(tab.build_tab, name=_CALLBACK_NAMES[2])
