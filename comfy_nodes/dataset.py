"""Prepare Dataset: a folder of photos of the person -> a Kohya training folder (``likeness prepare``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from lora_likeness.dataset.config import SIZES, PrepareConfig, PrepareConfigError
from lora_likeness.images import decode_image

from . import host
from .faces import _folder_fingerprint, whole_thumbnail
from .host import io
from .types import CATEGORY, FaceModelType, arrays_to_tensor

if TYPE_CHECKING:  # pragma: no cover
    from lora_likeness.dataset import PrepareResult

log = logging.getLogger("lora_likeness.comfyui")

PREVIEW_COUNT = 8  # kept crops shown on the node
DATASETS_FOLDER = "likeness/datasets"  # under ComfyUI's output folder


def default_out_folder(trigger: str) -> Path:
    """``<ComfyUI output>/likeness/datasets/<trigger>``."""
    return host.output_directory() / DATASETS_FOLDER / (trigger.strip() or "dataset")


def describe_result(result: PrepareResult) -> str:
    """Plain-text summary: kept/rejected counts by reason, repeats, steps, where, warnings."""
    lines = [
        f"dataset: {result.out}" + (" (unchanged: same input as the last run)" if result.unchanged else ""),
        f"kept {len(result.kept)} of {result.n_photos} photo(s); rejected {len(result.rejected)}",
    ]
    lines += [f"  {code}: {count}" for code, count in sorted(result.counts().items())]
    lines.append(f"repeats {result.repeats}, {result.steps_per_epoch} step(s) per epoch"
                 + (f", {result.reg_images} regularisation image(s)" if result.reg_images else ""))
    if result.previous is not None:
        lines.append(f"the earlier output was moved to {result.previous}")
    if "report.html" in result.files:
        lines.append(f"report: {result.files['report.html']}")
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def kept_preview(result: PrepareResult, count: int = PREVIEW_COUNT):
    """The first ``count`` kept crops as square tiles (one grey tile when nothing was kept)."""
    tiles = []
    for kept in result.kept[:count]:
        loaded = decode_image(Path(result.out) / kept.output, max_side=512)
        tiles.append(whole_thumbnail(loaded.rgb))
    return arrays_to_tensor(tiles or [whole_thumbnail(None)])


class PrepareDataset(io.ComfyNode):
    """Photos of one person -> Kohya ``img/<repeats>_<trigger> <class>/`` crops + captions + report."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessPrepareDataset",
            display_name="Prepare Dataset",
            category=CATEGORY,
            description=(
                "Turns a folder of photos of one person into a Kohya training folder: finds the person's face, drops "
                "blurry, dark, duplicate and other-person photos (each with its reason), crops and captions the rest "
                "and writes dataset.toml and a report. The photos themselves are only read."
            ),
            inputs=[
                FaceModelType.Input("face_model", tooltip="From Face Model."),
                io.String.Input("photos", default="", tooltip="Folder of photos of the person (searched recursively)."),
                io.String.Input("trigger", default="ohwx", tooltip="Trigger word: a rare token the LoRA learns."),
                io.String.Input("class_word", default="person", tooltip="Class word: man, woman, person, …"),
                io.String.Input("out_folder", default="",
                                tooltip="Where the dataset goes; empty: output/likeness/datasets/<trigger>."),
                io.Combo.Input("size", options=[str(s) for s in SIZES], default="512",
                               tooltip="Side of the square crops in pixels."),
                io.Int.Input("max_images", default=50, min=1, max=10000, tooltip="Keep at most this many photos."),
                io.Int.Input("target_steps", default=200, min=1, max=1000000,
                             tooltip="Steps per epoch the repeats aim for (repeats = target / kept images)."),
                io.String.Input("subject_refs", default="", optional=True,
                                tooltip="Optional: a folder of reference photos saying who the person is "
                                        "(else the largest group of matching faces)."),
            ],
            outputs=[
                io.String.Output("dataset", display_name="dataset"),
                io.String.Output("summary", display_name="summary"),
                io.Image.Output("preview", display_name="preview"),
            ],
            is_output_node=True,  # it writes the dataset: runs even with nothing connected to its outputs
        )

    @classmethod
    def fingerprint_inputs(cls, face_model=None, photos="", trigger="", class_word="", out_folder="", size="512",
                           max_images=50, target_steps=200, subject_refs=""):
        # Re-run when photos change; prepare_dataset leaves an identical output untouched anyway.
        return "|".join(str(v) for v in (_folder_fingerprint(photos or ""), _folder_fingerprint(subject_refs or ""),
                                         trigger, class_word, out_folder, size, max_images, target_steps))

    @classmethod
    def execute(cls, face_model, photos: str, trigger: str, class_word: str, out_folder: str = "", size: str = "512",
                max_images: int = 50, target_steps: int = 200, subject_refs: str = ""):
        from lora_likeness.dataset import prepare_dataset  # the pipeline's imports load at first use

        photos = (photos or "").strip()
        if not photos:
            raise ValueError("Prepare Dataset: type the path of a folder of photos of the person")
        out = Path(out_folder.strip()).expanduser() if (out_folder or "").strip() else default_out_folder(trigger)
        refs = (subject_refs or "").strip()
        config = PrepareConfig(
            photos=Path(photos).expanduser(), out=out, trigger=trigger.strip() or None, class_word=class_word.strip() or "person",
            size=int(size), max_images=int(max_images), target_steps=int(target_steps),
            subject_refs=Path(refs).expanduser() if refs else None,
        )
        try:
            result = prepare_dataset(face_model, config, progress=host.HostProgress())
        except PrepareConfigError as exc:
            raise ValueError(f"Prepare Dataset: {exc}") from exc
        for message in result.warnings:
            log.warning("[Likeness] %s", message)
        preview = kept_preview(result)
        return io.NodeOutput(str(result.out), describe_result(result), preview, ui=host.preview_images(preview, cls))


NODES = [PrepareDataset]
