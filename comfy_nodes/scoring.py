"""Score Images: how much each image of a batch, or of a folder, looks like the reference person."""

from __future__ import annotations

import logging
import math

from lora_likeness import grid, pipeline
from lora_likeness.cache import FaceCache
from lora_likeness.report import annotated_image, people_sentence, people_table_text, summary_table_text
from lora_likeness.scoring import FACE_CHOICES

from . import host
from .faces import folder_fingerprint
from .host import io
from .types import (
    CATEGORY,
    LabelsType,
    References,
    ReferencesType,
    Scores,
    ScoresType,
    arrays_to_tensor,
    check_labels,
    image_names,
    tensor_to_arrays,
)

log = logging.getLogger("lora_likeness.comfyui")

#: Longest side (px) of a folder's images in the annotated output: photos of any size share one
#: padded canvas there, and a batch of full-size phone photos would take gigabytes.
PREVIEW_SIDE = 768


def scored_face_box(item) -> list[float] | None:
    """Pixel box of the face an image was scored by (``None`` without a face)."""
    index = item.score.face_index
    return None if index is None else [float(v) for v in item.result.faces[index].box]


def summary_text(run) -> str:
    """The group table (Markdown), the per-person table of a people run, and the run's warnings, as the
    STRING output shows them."""
    lines = [summary_table_text(run)]
    if run.people is not None:
        lines += ["", people_table_text(run), people_sentence(run)]
    lines += [f"warning: {w}" for w in run.warnings]
    return "\n".join(lines)


def expected_names(references: References, expect: str) -> list[str] | None:
    """``expect`` (comma-separated names) checked against the people; ``None`` when empty."""
    names = [name.strip() for name in (expect or "").split(",") if name.strip()]
    if not names:
        return None
    if references.people is None:
        raise ValueError("Score Images: 'expect' names people; connect a People node as references")
    unknown = [name for name in names if name not in references.people.names]
    if unknown:
        raise ValueError(f"Score Images: expect names {', '.join(unknown)}, who is not one of the people ({', '.join(references.people.names)})")
    return names


def score_folder_run(references: References, folder: str, face: str, expect: list[str] | None = None):
    """The core's scoring of every image file under ``folder`` (any sizes; names and sub-folder groups kept);
    with people, each image's own prompt (else ``expect``, else everyone) says who is expected."""
    root = host.resolve_folder(folder)
    if not root.exists():
        raise FileNotFoundError(f"Score Images: folder {root} does not exist (a relative path is looked up in ComfyUI's "
                                f"input folder)")
    settings = pipeline.ScoreSettings(aggregation=references.references.baseline.aggregation, face_choice=face,
                                      group_by="folder")
    return pipeline.score_image_folder(references.engine, references.references, root, settings, cache=FaceCache(),
                                       progress=host.HostProgress(), people=references.people, expect=expect)


class ScoreImages(io.ComfyNode):
    """IMAGE batch or a folder of images + reference faces -> one identity score per image."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessScoreImages",
            display_name="Score Images",
            category=CATEGORY,
            description=(
                "Scores each image against the reference faces (ArcFace cosine similarity; higher is more alike; "
                "compare with the references' baseline). Takes an IMAGE batch (Epoch Sweep's images, in batch order) "
                "or a folder of images of any sizes (each keeps its file name; sub-folders are groups, as in "
                "'likeness score'). Images without a face get no score (NaN) and the run goes on."
            ),
            inputs=[
                io.Image.Input("images", optional=True,
                               tooltip="Generated images (IMAGE batch); or leave it unconnected and type a folder."),
                ReferencesType.Input("references"),
                io.Combo.Input("face", options=list(FACE_CHOICES), default="largest",
                               tooltip="largest: score the largest face; best: the face most like the references."),
                LabelsType.Input("labels", optional=True,
                                 tooltip="Per-image labels from Epoch Sweep: groups the summary by epoch and strength."),
                # Last: saved workflows keep their widget values in order.
                io.String.Input("folder", default="", optional=True,
                                tooltip="A folder of images to score instead of a batch: any sizes, searched recursively, "
                                        "each sub-folder a group; a relative path is looked up in ComfyUI's input folder."),
                io.String.Input("expect", default="", optional=True,
                                tooltip="With People as references: who is expected in each image (comma-separated names). "
                                        "Default: the people a file's own prompt names, else everyone."),
            ],
            outputs=[
                io.Float.Output("scores", display_name="scores", is_output_list=True,
                                tooltip="One score per image, in batch (or file name) order; NaN where no face was found."),
                io.String.Output("summary", display_name="summary"),
                io.Image.Output("annotated", display_name="annotated",
                                tooltip="Each image with the scored face boxed and its score drawn on it (a folder's images "
                                        "padded to one size)."),
                ScoresType.Output("score_run", display_name="score_run",
                                  tooltip="Everything scored, for Scored Grid (grid, report files)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, images=None, references=None, face="largest", labels=None, folder="", expect=""):
        return folder_fingerprint(folder)  # re-run when the folder's files change

    @classmethod
    def execute(cls, references: References, images=None, face: str = "largest", labels=None, folder: str = "", expect: str = ""):
        folder = (folder or "").strip()
        expected = expected_names(references, expect)
        if images is not None and folder:
            raise ValueError("Score Images got both an IMAGE batch and a folder: connect the images or type a folder, not both")
        if images is None and not folder:
            raise ValueError(
                "Score Images has no images: connect an IMAGE batch (Epoch Sweep, Load Image) or type the path of a folder "
                "of images (any sizes; a relative path is looked up in ComfyUI's input folder)"
            )
        if folder:
            if labels is not None:
                raise ValueError("Score Images: labels belong to Epoch Sweep's images; a folder is grouped by its sub-folders "
                                 "(disconnect labels)")
            run = score_folder_run(references, folder, face, expected)
            if not run.images:
                raise ValueError(f"Score Images: no image files in {run.images_root}")
            labels = [(item.group, {}) for item in run.images]
            side = PREVIEW_SIDE
        else:
            arrays = tensor_to_arrays(images)
            labels = check_labels(labels, len(arrays))
            refs = references.references
            settings = pipeline.ScoreSettings(aggregation=refs.baseline.aggregation, face_choice=face, group_by="none")
            run = pipeline.score_arrays(
                references.engine, refs, arrays, names=image_names(labels, len(arrays)), groups=labels,
                settings=settings, progress=host.HostProgress(), people=references.people, expect=expected,
            )
            labels = labels or [(item.group, {}) for item in run.images]
            side = None  # the batch's own size
        for message in run.warnings:
            log.warning("[Likeness] %s", message)
        values = [item.score.value(run.settings.aggregation) for item in run.images]
        scores = [math.nan if v is None else float(v) for v in values]
        annotated = arrays_to_tensor(grid.on_common_canvas([annotated_image(run, i, side) for i in range(len(run.images))]))
        return io.NodeOutput(scores, summary_text(run), annotated, Scores(run, labels))


NODES = [ScoreImages]
