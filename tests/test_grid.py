"""Scores drawn on images and scored grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lora_likeness.grid import GridCell, axis_label, axis_means, draw_score, format_score, grid_means, scored_grid


def flat(colour, size=(64, 80)):
    return Image.new("RGB", size, colour)


def test_axis_means_skip_missing_faces():
    means = axis_means([0.5, None, 0.7, None], ["e1", "e1", "e2", "e3"])
    assert means["e1"] == pytest.approx(0.5) and means["e2"] == pytest.approx(0.7) and means["e3"] is None
    assert list(means) == ["e1", "e2", "e3"]
    assert axis_label("e3", None) == "e3 · no face" and axis_label("e1", 0.5) == "e1 · 0.500"
    assert format_score(0.5734) == "0.573"


def test_draw_score_marks_box_and_badge_without_touching_the_input():
    image = flat((128, 128, 128), (100, 100))
    before = np.asarray(image).copy()
    out = draw_score(image, 0.61, box=(20, 20, 60, 70), baseline=0.8)
    assert np.array_equal(np.asarray(image), before)
    pixels = np.asarray(out)
    assert (pixels[20, 40] != 128).any()  # box edge drawn
    assert (pixels[45, 40] == 128).all()  # inside the box untouched
    assert (pixels[-2, 2] == 0).all()  # badge background along the bottom


def test_scored_grid_layout_and_means():
    cells = []
    scores = {("e1", "@0.6"): [0.2, 0.4], ("e1", "@1"): [0.3, None], ("e2", "@0.6"): [0.5, 0.7], ("e2", "@1"): [0.9, 0.8]}
    for (row, column), values in scores.items():
        for value in values:
            cells.append(GridCell(flat((50, 90, 200)), row, column, value))
    rows, columns, pairs = grid_means(cells)
    assert rows["e1"] == pytest.approx(0.3) and rows["e2"] == pytest.approx(0.725)
    assert columns["@1"] == pytest.approx((0.3 + 0.9 + 0.8) / 3)
    assert pairs[("e1", "@1")] == pytest.approx(0.3)
    grid = scored_grid(cells, baseline=0.81, title="jx265", cell_size=64)
    # Two columns of two images side by side, two rows, plus headers.
    assert grid.width > 4 * 64 and grid.height > 2 * 64
    assert grid.width < 4 * 64 + 400 and grid.height < 2 * 64 + 200
    # The blue cell images are in the grid.
    blue = (np.asarray(grid) == (50, 90, 200)).all(axis=2).sum()
    assert blue > 8 * 64 * 40 * 0.5
    with pytest.raises(ValueError):
        scored_grid([])


def test_row_order_given_is_kept():
    cells = [GridCell(flat((0, 0, 0)), r, "c", 0.5) for r in ("e10", "e2")]
    left_to_right = scored_grid(cells, rows=["e2", "e10"], cell_size=32)
    assert left_to_right.height > 2 * 32
