"""Score Images: how much each image of a batch looks like the reference person."""

from __future__ import annotations

import logging
import math

from lora_likeness import grid, pipeline
from lora_likeness.report import summary_table_text
from lora_likeness.scoring import FACE_CHOICES
from PIL import Image

from . import host
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


def scored_face_box(item) -> list[float] | None:
    """Pixel box of the face an image was scored by (``None`` without a face)."""
    index = item.score.face_index
    return None if index is None else [float(v) for v in item.result.faces[index].box]


def annotate(arrays, run) -> list[Image.Image]:
    """Each image with its scored face boxed and its score (``no face``, ``memorised?``) drawn on it."""
    baseline = run.references.baseline.mean
    aggregation = run.settings.aggregation
    return [
        grid.draw_score(Image.fromarray(rgb), item.score.value(aggregation), box=scored_face_box(item),
                        baseline=baseline, note="memorised?" if item.score.memorised else None)
        for rgb, item in zip(arrays, run.images)
    ]


def summary_text(run) -> str:
    """The group table (Markdown) and the run's warnings, as the STRING output shows them."""
    lines = [summary_table_text(run)]
    lines += [f"warning: {w}" for w in run.warnings]
    return "\n".join(lines)


class ScoreImages(io.ComfyNode):
    """IMAGE batch + reference faces -> one identity score per image."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessScoreImages",
            display_name="Score Images",
            category=CATEGORY,
            description=(
                "Scores each image against the reference faces (ArcFace cosine similarity; higher is more alike; "
                "compare with the references' baseline). Images without a face get no score (NaN) and the run "
                "goes on; results stay in batch order, one per image."
            ),
            inputs=[
                io.Image.Input("images", tooltip="Generated images (IMAGE batch)."),
                ReferencesType.Input("references"),
                io.Combo.Input("face", options=list(FACE_CHOICES), default="largest",
                               tooltip="largest: score the largest face; best: the face most like the references."),
                LabelsType.Input("labels", optional=True,
                                 tooltip="Per-image labels from Epoch Sweep: groups the summary by epoch and strength."),
            ],
            outputs=[
                io.Float.Output("scores", display_name="scores", is_output_list=True,
                                tooltip="One score per image, in batch order; NaN where no face was found."),
                io.String.Output("summary", display_name="summary"),
                io.Image.Output("annotated", display_name="annotated",
                                tooltip="Each image with the scored face boxed and its score drawn on it."),
                ScoresType.Output("score_run", display_name="score_run",
                                  tooltip="Everything scored, for Scored Grid (grid, report files)."),
            ],
        )

    @classmethod
    def execute(cls, images, references: References, face: str = "largest", labels=None):
        arrays = tensor_to_arrays(images)
        labels = check_labels(labels, len(arrays))
        refs = references.references
        settings = pipeline.ScoreSettings(aggregation=refs.baseline.aggregation, face_choice=face, group_by="none")
        run = pipeline.score_arrays(
            references.engine, refs, arrays, names=image_names(labels, len(arrays)), groups=labels,
            settings=settings, progress=host.HostProgress(),
        )
        for message in run.warnings:
            log.warning("[Likeness] %s", message)
        values = [item.score.value(settings.aggregation) for item in run.images]
        scores = [math.nan if v is None else float(v) for v in values]
        annotated = arrays_to_tensor(annotate(arrays, run))
        labels = labels or [(item.group, {}) for item in run.images]
        return io.NodeOutput(scores, summary_text(run), annotated, Scores(run, labels))


NODES = [ScoreImages]
