"""What flows between the Likeness nodes, and the one conversion of ComfyUI IMAGE tensors.

Custom socket types (each wire carries a plain Python object, never serialised):

=========================== ======================================================================
``LIKENESS_FACE_MODEL``     :class:`lora_likeness.faces.FaceEngine` (detector + recogniser, loaded once)
``LIKENESS_REFERENCES``     :class:`References`: the engine plus the :class:`ReferenceSet` built with it
``LIKENESS_LABELS``         list of ``(label, info)``, one per image: the core's group format, ``info``
                            holding ``run``/``epoch``/``step``/``strength``/``seed``/``lora`` and the
                            grid placement ``row``/``column``
``LIKENESS_CHECKPOINTS``    list of :class:`lora_likeness.checkpoints.LoraCheckpoint`, in epoch order
``LIKENESS_SCORES``         :class:`Scores`: the core's :class:`ScoreRun` plus the labels it was scored with
=========================== ======================================================================

ComfyUI IMAGE tensors are ``(B, H, W, C)`` float32 in 0..1, C = 3 (sometimes 4 or 1); the core takes
``(H, W, 3)`` uint8 RGB arrays. :func:`tensor_to_arrays` and :func:`arrays_to_tensor` are the only
places that convert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .host import io

if TYPE_CHECKING:  # pragma: no cover
    from lora_likeness.faces import FaceEngine
    from lora_likeness.people import PeopleSet
    from lora_likeness.pipeline import ScoreRun
    from lora_likeness.references import ReferenceSet

FaceModelType = io.Custom("LIKENESS_FACE_MODEL")
ReferencesType = io.Custom("LIKENESS_REFERENCES")
LabelsType = io.Custom("LIKENESS_LABELS")
CheckpointsType = io.Custom("LIKENESS_CHECKPOINTS")
ScoresType = io.Custom("LIKENESS_SCORES")

CATEGORY = "Likeness"

#: One label per image: ``(group label, info)``.
Labels = list[tuple[str, dict]]


@dataclass
class References:
    """Reference photos as embeddings, with the face model that made them (scores need the same one)."""

    engine: FaceEngine
    references: ReferenceSet
    source: str  # where the photos came from, for messages
    people: PeopleSet | None = None
    """Several people (People node): ``references`` then holds all their photos together."""


@dataclass
class Scores:
    """A scored batch: the core's run (per-image scores, groups, baseline) and the labels used."""

    run: ScoreRun
    labels: Labels


def tensor_to_arrays(images, what: str = "images") -> list[np.ndarray]:
    """IMAGE ``(B, H, W, C)`` float 0..1 -> list of ``(H, W, 3)`` uint8 RGB arrays."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) == 3:  # a single image without the batch axis
        images, shape = images[None], (1, *shape)
    if len(shape) != 4 or shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected a ComfyUI IMAGE batch (B, H, W, C) with C = 3, got shape {shape}")
    batch = images.detach().float().cpu().clamp(0, 1).numpy() if hasattr(images, "detach") else np.asarray(images, np.float32)
    batch = np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8)
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return [np.ascontiguousarray(image[:, :, :3]) for image in batch]


def arrays_to_tensor(arrays: Sequence) -> object:
    """``(H, W, 3)`` uint8 arrays or PIL images of one size -> IMAGE ``(B, H, W, 3)`` float32 0..1."""
    import torch

    stacked = np.stack([np.asarray(a.convert("RGB") if hasattr(a, "convert") else a, dtype=np.uint8) for a in arrays])
    return torch.from_numpy(stacked.astype(np.float32) / 255.0)


def image_names(labels: Labels | None, count: int) -> list[str]:
    """Names for the images of a batch in reports: ``image 3 (jx265 e10 @0.8 seed 2)``."""
    names = []
    for i in range(count):
        name = f"image {i + 1}"
        if labels:
            label, info = labels[i]
            seed = info.get("seed")
            name += f" ({label}" + (f" seed {seed}" if seed is not None else "") + ")"
        names.append(name)
    return names


def check_labels(labels: Labels | None, count: int) -> Labels | None:
    """Labels must match the batch one to one; say which side is off when they do not."""
    if labels is None:
        return None
    if len(labels) != count:
        raise ValueError(
            f"{len(labels)} labels for {count} images: connect the labels output of the node that made these "
            f"images (Epoch Sweep), or leave labels unconnected"
        )
    return list(labels)
