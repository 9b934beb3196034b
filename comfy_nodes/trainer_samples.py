"""Score Training Samples: which step of a training run looks most like the person, from its sample images.

A thin adapter over :func:`lora_likeness.watch.score_samples_folder`: a trainer's sample folder (sd-scripts,
kohya_ss, musubi-tuner, ai-toolkit, OneTrainer) scored and grouped by step, or the validation images of a
training node (FluxTrainer's validation output, with the step from its loop's ``steps``) kept by step in a
folder and scored with every earlier step.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lora_likeness.cache import FaceCache
from lora_likeness.scoring import FACE_CHOICES
from lora_likeness.watch import save_validation_images, score_samples_folder

from . import host
from .faces import folder_fingerprint
from .host import io
from .scoring import summary_text
from .types import CATEGORY, References, ReferencesType, Scores, ScoresType, arrays_to_tensor, tensor_to_arrays

log = logging.getLogger("lora_likeness.comfyui")

#: Where validation images are kept when no folder is typed: ComfyUI's output folder, this sub-folder.
VALIDATION_FOLDER = "likeness_validation"


def _curves_tensor(run):
    """The identity-vs-step curve as an IMAGE (one frame); a 1x1 black frame before any sample has a face."""
    import io as bytes_io

    import numpy as np
    from PIL import Image

    if run.verdict is None:
        return arrays_to_tensor([np.zeros((1, 1, 3), dtype=np.uint8)])
    from lora_likeness.sweep.report import curves_png

    with Image.open(bytes_io.BytesIO(curves_png(run.verdict.recommendation))) as picture:
        return arrays_to_tensor([picture.convert("RGB")])


class ScoreTrainingSamples(io.ComfyNode):
    """A trainer's sample folder (or a training node's validation images) + reference faces -> the best step."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessScoreTrainingSamples",
            display_name="Score Training Samples",
            category=CATEGORY,
            description=(
                "Scores the sample images a trainer writes while it trains (sd-scripts/kohya_ss 'sample', musubi-tuner, "
                "ai-toolkit 'samples', OneTrainer 'samples', or folders named step_500) and says which step looks most "
                "like the person, whether identity has stopped improving or is falling (over-training), and which saved "
                "checkpoint is closest. Connect a training node's validation images and its step (FluxTrainer's loop "
                "'steps') to keep them by step and score every step so far."
            ),
            inputs=[
                ReferencesType.Input("references"),
                io.String.Input("folder", default="",
                                tooltip="The trainer's sample folder (OUTPUT/sample, OUTPUT/JOB/samples, WORKSPACE/samples). With "
                                        "validation images connected: where they are kept (default: ComfyUI's output/"
                                        f"{VALIDATION_FOLDER})."),
                io.Combo.Input("face", options=list(FACE_CHOICES), default="largest",
                               tooltip="largest: score the largest face; best: the face most like the references."),
                io.Image.Input("validation_images", optional=True,
                               tooltip="A training node's validation images of one step (one per validation prompt, same "
                                       "seeds every step), e.g. FluxTrainer's FluxTrainValidate output."),
                io.Int.Input("step", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="The training step the validation images were made at (FluxTrainer's loop 'steps')."),
            ],
            outputs=[
                io.String.Output("summary", display_name="summary",
                                 tooltip="The table by step, the recommendation, the trend and the closest checkpoint."),
                io.Int.Output("best_step", display_name="best_step", tooltip="The step that looks most like the person; -1 if none yet."),
                io.Image.Output("curves", display_name="curves", tooltip="Identity vs step with 95% CI bands."),
                ScoresType.Output("score_run", display_name="score_run", tooltip="Everything scored, for Scored Grid."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, references=None, folder="", face="largest", validation_images=None, step=0):
        if validation_images is not None:
            return float("nan")  # new validation images every time: always run
        return folder_fingerprint(folder)  # re-run when the trainer writes new samples

    @classmethod
    def execute(cls, references: References, folder: str = "", face: str = "largest", validation_images=None, step: int = 0):
        text = (folder or "").strip()
        if validation_images is not None:
            root = host.resolve_folder(text) if text else host.output_directory() / VALIDATION_FOLDER
            save_validation_images(tensor_to_arrays(validation_images, "validation_images"), root, int(step or 0))
        elif not text:
            raise ValueError("Score Training Samples: type the trainer's sample folder (e.g. OUTPUT/sample for sd-scripts, "
                             "OUTPUT/JOB/samples for ai-toolkit, WORKSPACE/samples for OneTrainer), or connect validation images")
        else:
            root = host.resolve_folder(text)
        if not Path(root).is_dir():
            raise FileNotFoundError(f"Score Training Samples: folder {root} does not exist (a relative path is looked up in "
                                    f"ComfyUI's input folder)")
        run = score_samples_folder(references.engine, references.references, Path(root), face_choice=face,
                                   cache=FaceCache(), progress=host.HostProgress())
        if not run.images:
            raise ValueError(f"Score Training Samples: no image files in {root} yet")
        for message in run.warnings:
            log.warning("[Likeness] %s", message)
        lines = [summary_text(run)]
        if run.verdict is not None:
            lines += run.verdict.lines()
        best = run.verdict.best_step if run.verdict is not None and run.verdict.best_step is not None else -1
        labels = [(item.group, {}) for item in run.images]
        return io.NodeOutput("\n".join(lines), int(best), _curves_tensor(run), Scores(run, labels))


NODES = [ScoreTrainingSamples]
