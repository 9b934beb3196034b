"""The always-visible "Likeness identity score" section of txt2img and img2img.

Imported only inside A1111 / Forge (it subclasses ``modules.scripts.Script``); ``scripts/likeness.py``
re-exports the class so A1111's script loader finds it.

Per generated image (``postprocess_image_after_composite``: the final image, after every other
script's ``postprocess_image`` such as a face detailer), the face is detected, embedded and
scored against the reference photos; the image's infotext gets ``Likeness: 0.573``. After the
batch (``postprocess``), the scores ride on the ``Processed`` object for the X/Y/Z hooks and the
batch mean goes into the comments the UI shows.
"""

from __future__ import annotations

import gradio as gr
from lora_likeness import grid as core_grid
from modules import scripts

from . import axes
from .scorer import DEFAULT_PACK, available_packs, get_scorer
from .xyz_hooks import CELL_ATTRIBUTE, INFOTEXT_KEY, PEOPLE_INFOTEXT_KEY, CellScores, InfotextField

TITLE = "Likeness identity score"
AGGREGATION_CHOICES = ["max", "mean", "ism"]


def infotext_value(p=None, index=None, use_main_prompt=False, **_):
    """``Likeness`` in an infotext (A1111 calls callables in ``extra_generation_params`` with the
    locals of ``create_infotext``): the image's score, or the mean for a batch grid."""
    cell = vars(p).get(CELL_ATTRIBUTE) if p is not None else None
    if cell is None or not cell.images:
        return None
    if use_main_prompt:
        return core_grid.format_score(cell.mean)
    by_position = getattr(p, "likeness_positions", {})
    scored = by_position.get((getattr(p, "iteration", 0), index))
    return core_grid.format_score(scored.value) if scored is not None else None


def people_infotext_value(p=None, index=None, use_main_prompt=False, **_):
    """``Likeness people`` in an image's infotext with named reference folders: ``dad 0.612, mum -, blended``."""
    cell = vars(p).get(CELL_ATTRIBUTE) if p is not None else None
    if cell is None or not cell.images or use_main_prompt:
        return None
    scored = getattr(p, "likeness_positions", {}).get((getattr(p, "iteration", 0), index))
    return scored.people_text if scored is not None else None


class LikenessScript(scripts.Script):
    """Enable checkbox, reference folder, face pack, aggregation."""

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        packs = available_packs()
        with gr.Accordion(TITLE, open=False, elem_id=self.elem_id("likeness")):
            enabled = gr.Checkbox(label="Enable: score every generated image (and every X/Y/Z cell)", value=False,
                                  elem_id=self.elem_id("likeness_enabled"))
            refs = gr.Textbox(label="Reference folder",
                              placeholder="folder of real photos of the person; several people: name=folder; name=folder",
                              elem_id=self.elem_id("likeness_refs"))
            with gr.Row():
                pack = gr.Dropdown(label="Face pack", choices=packs or [DEFAULT_PACK],
                                   value=DEFAULT_PACK if DEFAULT_PACK in packs or not packs else packs[0],
                                   allow_custom_value=True, elem_id=self.elem_id("likeness_pack"))
                aggregation = gr.Radio(label="Aggregation over reference photos", choices=AGGREGATION_CHOICES, value="max",
                                       elem_id=self.elem_id("likeness_aggregation"))
        return [enabled, refs, pack, aggregation]

    def before_process(self, p, *args):
        axes.check_before_processing(p)

    def process(self, p, enabled=False, refs="", pack=DEFAULT_PACK, aggregation="max", *args):
        if not enabled:
            return
        scorer = get_scorer(refs, pack, aggregation or "max")  # LikenessSetupError says what to fix
        state = vars(p).get(axes.STATE_ATTRIBUTE)
        prompt = p.prompt if isinstance(p.prompt, str) else (p.prompt[0] if p.prompt else "")  # tags say which LoRA
        setattr(p, CELL_ATTRIBUTE, CellScores(scorer, lora=state.info() if state is not None else {}, prompt=prompt))
        p.likeness_positions = {}
        # callables the host calls per infotext, and JSON-safe for Forge Classic's Processed.js() (see InfotextField)
        p.extra_generation_params[INFOTEXT_KEY] = InfotextField(infotext_value)
        if scorer.people is not None:
            p.extra_generation_params[PEOPLE_INFOTEXT_KEY] = InfotextField(people_infotext_value)

    def postprocess_image_after_composite(self, p, pp, *args):
        cell = vars(p).get(CELL_ATTRIBUTE)
        if cell is None:
            return
        position = (getattr(p, "iteration", 0), getattr(p, "batch_index", len(cell.images)))
        name = f"image {len(cell.images) + 1}"
        prompts = getattr(p, "prompts", None) or []  # this batch's prompts: the people they name are expected
        index = position[1] if isinstance(position[1], int) and position[1] < len(prompts) else None
        scored = cell.scorer.score_images([pp.image], [name], prompts[index] if index is not None else cell.prompt)[0]
        cell.images.append(scored)
        cell.pil_images.append(pp.image)
        seeds = getattr(p, "seeds", None) or []  # this batch's seeds (A1111 sets them per iteration)
        cell.seeds.append(seeds[position[1]] if isinstance(position[1], int) and position[1] < len(seeds) else None)
        p.likeness_positions[position] = scored

    def postprocess(self, p, processed, *args):
        cell = vars(p).get(CELL_ATTRIBUTE)
        if cell is None:
            return
        processed.likeness = cell
        if cell.images:
            faces = sum(1 for image in cell.images if image.value is not None)
            baseline = cell.scorer.baseline
            line = (f"Likeness: mean {core_grid.format_score(cell.mean)} over {len(cell.images)} image(s), "
                    f"{faces} with a face" + (f"; reference baseline {baseline:.3f}" if baseline is not None else ""))
            processed.comments = (processed.comments or "") + line + "\n"  # shown under the gallery
            print(f"[Likeness] {line.removeprefix('Likeness: ')}", flush=True)  # and in the console, for API users
