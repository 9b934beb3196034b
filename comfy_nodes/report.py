"""Scored Grid: the epochs x strengths grid with scores and means, the core's report files, and the
core's recommendation (which checkpoint at which strength to use) from the same scores. With People
as references (a family LoRA), each cell carries each person's scores and the recommendation is the
core's worst-served one (:func:`lora_likeness.people_sweep.recommend_people_records`, as
``likeness sweep --people`` gives)."""

from __future__ import annotations

import json
import logging

from lora_likeness import grid
from lora_likeness.images import save_png_atomic, write_text_atomic
from lora_likeness.people import compact_people_text, people_group_statistics
from lora_likeness.people_sweep import PeopleRecommendation, recommend_people_records
from lora_likeness.recommend import NO_LORA, Recommendation, cells_from_records, recommend
from lora_likeness.report import annotated_image, contact_sheet, run_image, write_report
from PIL import Image

from . import host
from .host import io
from .scoring import scored_face_box, summary_text
from .types import CATEGORY, LabelsType, Scores, ScoresType, arrays_to_tensor, check_labels, tensor_to_arrays

log = logging.getLogger("lora_likeness.comfyui")

GRID_FILE = "grid.png"
LAYOUT_FILE = "grid.json"
RECOMMENDATION_FILE = "recommendation.json"
NO_RECOMMENDATION = (
    "No recommendation: the labels do not say which checkpoint and strength made each image "
    "(connect Epoch Sweep's labels)"
)


def grid_cells(arrays, scores: Scores, labels) -> list[grid.GridCell] | None:
    """Place each image by its label's ``row``/``column`` (Epoch Sweep's labels carry them);
    ``None`` when the labels do not say where images go."""
    if not labels or not all("row" in info and "column" in info for _, info in labels):
        return None
    run = scores.run
    aggregation = run.settings.aggregation
    return [
        grid.GridCell(image=Image.fromarray(rgb), row=str(info["row"]), column=str(info["column"]),
                      score=item.score.value(aggregation), box=scored_face_box(item),
                      note="memorised?" if item.score.memorised else None)
        for rgb, item, (_, info) in zip(arrays, run.images, labels)
    ]


def axis_order(labels, key: str, sort_key) -> list[str]:
    """Row or column names in a meaningful order: by epoch / strength when the labels have them."""
    first_seen: dict[str, tuple] = {}
    for index, (_, info) in enumerate(labels):
        first_seen.setdefault(str(info[key]), (sort_key(info), index))
    return sorted(first_seen, key=lambda name: first_seen[name])


def _row_key(info: dict) -> tuple:
    final = info.get("epoch") is None and info.get("step") is None
    progress = info.get("epoch") if info.get("epoch") is not None else (info.get("step") or 0)
    return (str(info.get("run") or ""), final, progress)


def _column_key(info: dict) -> tuple:
    strength = info.get("strength")
    return (strength is None, strength if strength is not None else 0.0)


def grid_layout(cells: list[grid.GridCell], rows: list[str], columns: list[str], baseline: float | None) -> dict:
    """The grid as data (``grid.json``): axes in order, means per row, column and cell, every score."""
    row_means, column_means, cell_means = grid.grid_means(cells)
    return {
        "rows": rows,
        "columns": columns,
        "baseline": baseline,
        "row_means": {r: row_means.get(r) for r in rows},
        "column_means": {c: column_means.get(c) for c in columns},
        "cells": [
            {"row": r, "column": c, "n": len(members), "mean": cell_means.get((r, c)),
             "scores": [m.score for m in members]}
            for r in rows for c in columns
            if (members := [cell for cell in cells if cell.row == r and cell.column == c])
        ],
    }


def grid_image(arrays, scores: Scores, labels) -> tuple[Image.Image, dict | None]:
    """Epochs x strengths (seeds side by side in a cell) and its layout when the labels place images;
    otherwise the core's contact sheet of the scored images, grouped as they were scored, and no layout.
    ``arrays`` None: the images the run scored (its batch, or its files read again)."""
    run = scores.run
    if run.people is not None:  # a family: every face boxed in its person's colour and named, in every cell
        import numpy as np

        arrays = [np.asarray(annotated_image(run, i)) for i in range(len(run.images))]
    if arrays is None:
        arrays = [scored_pixels(run, i) for i in range(len(run.images))]
    cells = grid_cells(arrays, scores, labels)
    if cells is None:
        return contact_sheet(run), None
    rows, columns = axis_order(labels, "row", _row_key), axis_order(labels, "column", _column_key)
    baseline = run.references.baseline.mean
    picture = grid.scored_grid(cells, rows=rows, columns=columns, baseline=baseline,
                               title=f"{run.settings.aggregation} likeness ({run.model.get('pack')})")
    layout = grid_layout(cells, rows, columns, baseline)
    if run.people is not None:
        add_people_to_layout(layout, scores, labels)
    return picture, layout


def add_people_to_layout(layout: dict, scores: Scores, labels) -> None:
    """Each grid.json cell gets ``people`` (each person's mean, 95% CI, presence rate; the cell's
    all-present and blend rates and worst-served person: the core's group statistics over the cell's
    readable images) and ``people_text``, the same in one line (what the band under the grid shows)."""
    run = scores.run
    for cell in layout["cells"]:
        members = [item.people for item, (_, info) in zip(run.images, labels)
                   if str(info["row"]) == cell["row"] and str(info["column"]) == cell["column"] and item.people is not None]
        stats = people_group_statistics(run.people, members, seed=run.settings.seed, n_boot=run.settings.n_boot)
        cell["people"] = stats.as_dict()
        cell["people_text"] = compact_people_text(stats)


def people_lines(layout: dict | None) -> list[str]:
    """One band line per grid cell with each person's scores: ``e2 @0.5: dad .61 (100%) · mum .48 (50%) · …``."""
    if not layout:
        return []
    return [f"{cell['row']} {cell['column']}: {cell['people_text']}" for cell in layout["cells"] if cell.get("people_text")]


def scored_pixels(run, index: int):
    """The run's ``index``-th image as ``(H, W, 3)`` uint8 (a grey square when its file cannot be read)."""
    import numpy as np

    loaded = run_image(run, index)
    return loaded.rgb if loaded.rgb is not None else np.full((256, 256, 3), 40, np.uint8)


def is_baseline(info: dict) -> bool:
    """The no-LoRA floor: Epoch Sweep's baseline row, or any image sampled at strength 0 (the base model)."""
    return str(info.get("row")) == NO_LORA or not info.get("strength")


def recommendation_records(scores: Scores, labels) -> list[dict] | None:
    """One record per image for the core's :func:`~lora_likeness.recommend.cells_from_records`, in
    grid row order (so the checkpoints come out in epoch order); ``None`` when the labels do not
    carry a row and a strength (only Epoch Sweep's labels say which LoRA made an image).

    checkpoint = the grid row (``e10``, ``final (e12)``, ``run e10`` for several runs), strength =
    the image's strength, epoch from the label; strength 0 and the ``no LoRA`` row are the floor
    (checkpoint ``no LoRA``, strength None). key = (seed, n-th image of that seed in its grid cell),
    the same in every cell, so cells are compared image by image. Strength 0 at every checkpoint
    samples the same base model with the same seeds: those repeats of the floor are left out.
    """
    if not labels or not all("row" in info and "strength" in info for _, info in labels):
        return None
    run = scores.run
    aggregation = run.settings.aggregation
    rows = axis_order(labels, "row", _row_key)
    order = sorted(range(len(labels)), key=lambda i: rows.index(str(labels[i][1]["row"])))
    taken: dict[tuple, int] = {}
    floor_keys: set = set()
    records = []
    for i in order:
        info, item = labels[i][1], run.images[i]
        seed = info.get("seed")
        place = (str(info["row"]), str(info.get("column")), seed)
        key = (seed, taken.get(place, 0))
        taken[place] = key[1] + 1
        baseline = is_baseline(info)
        if baseline:
            if key in floor_keys:
                continue
            floor_keys.add(key)
        records.append({
            "checkpoint": NO_LORA if baseline else str(info["row"]),
            "strength": None if baseline else float(info["strength"]),
            "epoch": None if baseline else info.get("epoch"),
            "score": item.score.value(aggregation),
            "key": key,
            "memorised": int(bool(item.score.memorised)),
            "people": item.people,  # who is in the image, with People as references (None otherwise)
        })
    return records


def recommendation_for(scores: Scores, labels) -> Recommendation | None:
    """The core's recommendation over the grid's cells; the ceiling is the references' baseline."""
    records = recommendation_records(scores, labels)
    if records is None:
        return None
    return recommend(cells_from_records(records), ceiling=scores.run.references.baseline.mean)


def people_recommendation_for(scores: Scores, labels) -> PeopleRecommendation | None:
    """With People as references: the core's cell best for the worst-served person over the same
    records as :func:`recommendation_for`; ``None`` for one person or labels that place no image."""
    run = scores.run
    records = recommendation_records(scores, labels) if run.people is not None else None
    if records is None:
        return None
    return recommend_people_records(run.people, records, seed=run.settings.seed, n_boot=run.settings.n_boot)


def recommendation_text(recommendation: Recommendation | None, people: PeopleRecommendation | None = None) -> str:
    """The Recommend output: the headline, then one line per warning; for a family, the worst-served
    answer with each person's scores, then its warnings (the single-score recommendation, which ranks
    cells by the best match to anyone in the family, stays in recommendation.json)."""
    if recommendation is None:
        return NO_RECOMMENDATION
    if people is not None:
        return "\n".join(people.lines())
    return "\n".join(recommendation.lines())


def recommended_cell(recommendation: Recommendation | None, labels, people: PeopleRecommendation | None = None) -> dict | None:
    """The grid cell (``row``, ``column``) of the recommended checkpoint and strength, for grid.json
    (the family's when ``people`` is given)."""
    if people is not None:
        best = people.best.cell if people.best is not None else None
        choice = None if best is None else (best.strength is None, best.checkpoint, best.strength)
    else:
        best = recommendation.best.cell if recommendation is not None and recommendation.best is not None else None
        choice = None if best is None else (best.is_baseline, best.checkpoint, best.strength)
    if choice is None:
        return None
    floor, checkpoint, strength = choice
    for _, info in labels:
        if floor:
            if is_baseline(info):
                return {"row": str(info["row"]), "column": str(info["column"])}
        elif not is_baseline(info) and str(info["row"]) == checkpoint and float(info["strength"]) == strength:
            return {"row": str(info["row"]), "column": str(info["column"])}
    return None


class ScoredGrid(io.ComfyNode):
    """Scored images -> one grid image (epochs x strengths) and the report files in the output folder."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessScoredGrid",
            display_name="Scored Grid",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Lays the scored images out as epochs x strengths (seeds side by side), with each image's score and "
                "the row/column means in the headers, and writes the report (scores.csv, summary.csv, report.json, "
                "report.md, scores.png, contact_sheet.png, grid.png, grid.json) to a new folder under ComfyUI's output folder. "
                "With Epoch Sweep's labels it also recommends a checkpoint and strength (best mean identity, its 95% CI, "
                "whether it beats the runner-up beyond noise, the no-LoRA floor and the references' ceiling): the "
                "recommend output and recommendation.json."
            ),
            inputs=[
                io.Image.Input("images", optional=True,
                               tooltip="The images that were scored (Epoch Sweep's images); unconnected: the images Score "
                                       "Images scored (its batch, or the files of its folder)."),
                ScoresType.Input("score_run", tooltip="From Score Images."),
                LabelsType.Input("labels", optional=True,
                                 tooltip="Per-image labels (Epoch Sweep); default: the labels Score Images used."),
                io.String.Input("filename_prefix", default="likeness/report",
                                tooltip="Report folder under the output folder; a number is appended per run."),
            ],
            outputs=[
                io.Image.Output("grid", display_name="grid"),
                io.String.Output("summary", display_name="summary"),
                # Last: saved workflows link outputs by slot.
                io.String.Output("recommend", display_name="recommend",
                                 tooltip="Which checkpoint at which strength to use, and how sure that is (one line), "
                                         "then any warnings (memorisation, rising no-face rates). With People as "
                                         "references: the cell best for the worst-served person, each person's scores."),
            ],
        )

    @classmethod
    def execute(cls, score_run: Scores, images=None, labels=None, filename_prefix: str = "likeness/report"):
        arrays = tensor_to_arrays(images) if images is not None else None
        run = score_run.run
        if arrays is not None and len(arrays) != len(run.images):
            raise ValueError(
                f"Scored Grid got {len(arrays)} images but the score run has {len(run.images)}: connect the same "
                f"images that went into Score Images"
            )
        labels = check_labels(labels, len(run.images)) or score_run.labels
        picture, layout = grid_image(arrays, score_run, labels)
        folder, subfolder = host.new_output_folder(filename_prefix)
        files = write_report(run, folder)
        recommendation = recommendation_for(score_run, labels) if layout is not None else None
        people = people_recommendation_for(score_run, labels) if recommendation is not None else None
        advice = recommendation_text(recommendation, people)
        details = people_lines(layout)
        if recommendation is not None or details:
            picture = grid.caption_below(picture, advice.splitlines() if recommendation is not None else [""], details=details)
        save_png_atomic(picture, folder / GRID_FILE)
        if layout is not None:
            layout["recommended"] = recommended_cell(recommendation, labels, people)
            write_text_atomic(folder / LAYOUT_FILE, json.dumps(layout, indent=2, allow_nan=False) + "\n")
        if recommendation is not None:
            saved = recommendation.as_dict()
            if people is not None:
                saved["people"] = people.as_dict()
            write_text_atomic(folder / RECOMMENDATION_FILE, json.dumps(saved, indent=2, allow_nan=False) + "\n")
        shown = [folder / GRID_FILE] + [files[name] for name in ("scores.png",) if name in files]
        log.info("[Likeness] report written to %s", folder)
        log.info("[Likeness] %s", advice.splitlines()[0])
        summary = summary_text(run) + f"\nreport: {folder}"
        return io.NodeOutput(arrays_to_tensor([picture]), summary, advice, ui=host.output_files_ui(shown, subfolder))


NODES = [ScoredGrid]
