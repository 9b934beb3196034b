"""Scores drawn on images and scored grids."""

from __future__ import annotations

import itertools

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


def _touch(a, b) -> bool:
    """Whether two boxes ``(left, top, right, bottom)`` overlap or come closer than 1 px."""
    return not (a[2] + 1 <= b[0] or b[2] + 1 <= a[0] or a[3] + 1 <= b[1] or b[3] + 1 <= a[1])


# ComfyUI Epoch Sweep's labels (the no-LoRA row sampled at strength 0) and the sweep report's.
COMFY_AXES = (["no LoRA", "e1", "final (e12)"], ["@0", "@0.5", "@1"])
SWEEP_AXES = (["step-b", "alpha", "final (e30)"], ["strength 0.6", "strength 1"])


@pytest.mark.parametrize("size", [64, 96, 256])
@pytest.mark.parametrize("axes", [COMFY_AXES, SWEEP_AXES], ids=["comfy", "sweep"])
def test_labels_stay_clear_of_each_other_and_over_their_own_column(drawn_text, size, axes):
    rows, columns = axes
    fills = {column: (30 + 60 * j, 140, 200 - 50 * j) for j, column in enumerate(columns)}
    cells = [GridCell(flat(fills[column]), row, column, None if j == 0 else 0.31 + 0.1 * i + 0.17 * j)
             for i, row in enumerate(rows) for j, column in enumerate(columns)]
    grid = scored_grid(cells, rows=rows, columns=columns, baseline=0.77, title="max likeness (likeness_test)", cell_size=size)
    boxes = [(text, box) for text, box, canvas in drawn_text if canvas == grid.size]
    assert len(boxes) >= 2 + len(rows) + len(columns)
    for text, (left, top, right, bottom) in boxes:
        assert 0 <= left and right <= grid.width and 0 <= top and bottom <= grid.height, f"{text!r} leaves the canvas"
    for (text_a, a), (text_b, b) in itertools.combinations(boxes, 2):
        assert not _touch(a, b), f"{text_a!r} {a} touches {text_b!r} {b} at {size} px"

    # Each column's header (one line or wrapped) lies over that column's images, above them.
    pixels = np.asarray(grid)
    spans, image_top = {}, grid.height
    for column, fill in fills.items():
        ys, xs = np.nonzero((pixels == np.asarray(fill, dtype=np.uint8)).all(axis=2))
        spans[column] = (xs.min(), xs.max())
        image_top = min(image_top, ys.min())
    _, column_means, _ = grid_means(cells)
    words = {column: set(axis_label(column, column_means[column]).split()) for column in columns}
    placed = set()
    for text, (left, top, right, bottom) in boxes:
        owners = [column for column in columns if set(text.split()) <= words[column]]
        if bottom > image_top or not owners:
            continue  # a row label, the title or the corner
        column = min(owners, key=lambda c: abs((spans[c][0] + spans[c][1]) / 2 - (left + right) / 2))
        assert spans[column][0] - 1 <= left and right <= spans[column][1] + 1, f"{text!r} spills out of {column!r} at {size} px"
        placed.add(column)
    assert placed == set(columns)


def test_corner_names_the_reference_photos_not_a_baseline(drawn_text):
    cells = [GridCell(flat((0, 0, 0)), r, c, 0.5) for r in ("no LoRA", "e1") for c in ("@0", "@1")]
    grid = scored_grid(cells, baseline=0.77, cell_size=128)
    said = " ".join(text for text, _, canvas in drawn_text if canvas == grid.size)
    assert "reference photos 0.770" in said and "no LoRA · 0.500" in said
    assert "baseline" not in said  # which baseline? the word alone is ambiguous next to the no-LoRA row


def test_badge_text_stays_on_a_small_image(drawn_text):
    small = flat((128, 128, 128), (43, 64))  # a portrait image in a 64 px grid cell
    out = draw_score(small, 0.61, note="memorised? +4")
    drawn = [(text, box) for text, box, canvas in drawn_text if canvas == out.size]
    assert drawn and drawn[0][0] == "0.610"
    for text, (left, top, right, bottom) in drawn:
        assert 0 <= left and right <= out.width and 0 <= top and bottom <= out.height, f"{text!r} runs off the image"
    for (_, a), (_, b) in itertools.combinations(drawn, 2):
        assert not _touch(a, b)
    # Where it fits, score and note share one line as before.
    wide = draw_score(flat((128, 128, 128), (400, 300)), 0.61, note="memorised?")
    assert [text for text, _, canvas in drawn_text if canvas == wide.size] == ["0.610 memorised?"]
