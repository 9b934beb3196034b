"""The Likeness nodes for ComfyUI (V3 node API), category "Likeness".

One module per node family, each exporting ``NODES``, a list of node classes; a node is a schema
(``define_schema``) plus one call into ``lora_likeness`` (``execute``):

    faces.py    Face Model, Reference Faces
    scoring.py  Score Images
    sweep.py    LoRA Checkpoints, Epoch Sweep
    report.py   Scored Grid
    dataset.py  Prepare Dataset
    training.py Train LoRA

To add a family: write ``comfy_nodes/<family>.py`` with its ``NODES`` and add it to ``FAMILIES``.
Shared pieces: ``host`` (the only module that touches ComfyUI), ``types`` (custom socket types
and the IMAGE tensor conversion). ComfyUI finds the nodes through :func:`comfy_entrypoint`, which
the repository's root ``__init__.py`` exports (and nothing else: ComfyUI ignores the entrypoint of
a module that also has ``NODE_CLASS_MAPPINGS``).
"""

from __future__ import annotations

from . import dataset, faces, report, scoring, sweep, trainer_samples, training
from .host import ComfyExtension, register_face_model_folders

FAMILIES = (faces, scoring, trainer_samples, sweep, report, dataset, training)
NODES = [node for family in FAMILIES for node in family.NODES]


class LikenessExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_face_model_folders()

    async def get_node_list(self) -> list[type]:
        return list(NODES)


async def comfy_entrypoint() -> LikenessExtension:
    """What ComfyUI (0.3.48+) calls to get the nodes."""
    register_face_model_folders()  # ComfyUI 0.3.64 does not call on_load; folder_paths must know the folder now
    return LikenessExtension()


__all__ = ["NODES", "LikenessExtension", "comfy_entrypoint"]
