"""Scored Grid: the epochs x strengths grid with scores and means, and the core's report files."""

from __future__ import annotations

import json
import logging

from lora_likeness import grid
from lora_likeness.images import save_png_atomic, write_text_atomic
from lora_likeness.report import contact_sheet, write_report
from PIL import Image

from . import host
from .host import io
from .scoring import scored_face_box, summary_text
from .types import CATEGORY, LabelsType, Scores, ScoresType, arrays_to_tensor, check_labels, tensor_to_arrays

log = logging.getLogger("lora_likeness.comfyui")

GRID_FILE = "grid.png"
LAYOUT_FILE = "grid.json"


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
    otherwise the core's contact sheet of the scored images, grouped as they were scored, and no layout."""
    cells = grid_cells(arrays, scores, labels)
    run = scores.run
    if cells is None:
        return contact_sheet(run), None
    rows, columns = axis_order(labels, "row", _row_key), axis_order(labels, "column", _column_key)
    baseline = run.references.baseline.mean
    picture = grid.scored_grid(cells, rows=rows, columns=columns, baseline=baseline,
                               title=f"{run.settings.aggregation} likeness ({run.model.get('pack')})")
    return picture, grid_layout(cells, rows, columns, baseline)


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
                "report.md, scores.png, contact_sheet.png, grid.png, grid.json) to a new folder under ComfyUI's output folder."
            ),
            inputs=[
                io.Image.Input("images", tooltip="The images that were scored (Epoch Sweep's images)."),
                ScoresType.Input("score_run", tooltip="From Score Images."),
                LabelsType.Input("labels", optional=True,
                                 tooltip="Per-image labels (Epoch Sweep); default: the labels Score Images used."),
                io.String.Input("filename_prefix", default="likeness/report",
                                tooltip="Report folder under the output folder; a number is appended per run."),
            ],
            outputs=[
                io.Image.Output("grid", display_name="grid"),
                io.String.Output("summary", display_name="summary"),
            ],
        )

    @classmethod
    def execute(cls, images, score_run: Scores, labels=None, filename_prefix: str = "likeness/report"):
        arrays = tensor_to_arrays(images)
        run = score_run.run
        if len(arrays) != len(run.images):
            raise ValueError(
                f"Scored Grid got {len(arrays)} images but the score run has {len(run.images)}: connect the same "
                f"images that went into Score Images"
            )
        labels = check_labels(labels, len(arrays)) or score_run.labels
        picture, layout = grid_image(arrays, score_run, labels)
        folder, subfolder = host.new_output_folder(filename_prefix)
        files = write_report(run, folder)
        save_png_atomic(picture, folder / GRID_FILE)
        if layout is not None:
            write_text_atomic(folder / LAYOUT_FILE, json.dumps(layout, indent=2, allow_nan=False) + "\n")
        shown = [folder / GRID_FILE] + [files[name] for name in ("scores.png",) if name in files]
        log.info("[Likeness] report written to %s", folder)
        summary = summary_text(run) + f"\nreport: {folder}"
        return io.NodeOutput(arrays_to_tensor([picture]), summary, ui=host.output_files_ui(shown, subfolder))


NODES = [ScoredGrid]
