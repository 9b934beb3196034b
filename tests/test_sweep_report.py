"""The sweep report: scored grid, plots, CSV/JSON and the self-contained HTML page.

Synthetic sweeps of flat-coloured PNGs: every (cell, seed) has its own colour, so where a colour
lands in the grid says which row and column it was put in. The recommendation is the real
``recommend()`` on the same records, as the sweep engine makes it.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from lora_likeness.recommend import NO_LORA, cells_from_records, recommend
from lora_likeness.sweep.report import (
    MARK,
    PEOPLE_REPORT_FILES,
    SWEEP_REPORT_FILES,
    curves_png,
    heatmap_png,
    report_html,
    sweep_grid,
    trade_off_png,
    write_sweep_report,
)
from lora_likeness.sweep.results import SweepImage
from PIL import Image

# Checkpoints in epoch order; the labels deliberately do not sort alphabetically in that order.
CHECKPOINTS = [("step-b", 10), ("alpha", 20), ("final (e30)", 30)]
STRENGTHS = [0.6, 1.0]
SEEDS = [1236, 1237]
# Mean identity per (checkpoint, strength): alpha @ 1.0 is the clear best.
MEANS = {
    ("step-b", 0.6): 0.30, ("step-b", 1.0): 0.40,
    ("alpha", 0.6): 0.45, ("alpha", 1.0): 0.70,
    ("final (e30)", 0.6): 0.50, ("final (e30)", 1.0): 0.55,
}
BASELINE_MEAN = 0.10
SIZE = (48, 64)  # portrait, like 512×768


def colour(cell: int, seed: int) -> tuple[int, int, int]:
    """A distinct colour per (cell index, seed index), far from the badge and frame colours."""
    return (40 + 23 * cell, 200 - 30 * seed, 90 + 11 * cell)


def make_sweep(
    folder: Path,
    checkpoints=CHECKPOINTS,
    strengths=STRENGTHS,
    seeds=SEEDS,
    baseline: bool = True,
    scores=None,
    epochs: bool = True,
    adherence: bool = False,
    prompts: tuple[str, ...] = ("photo of ohwx man",),
) -> tuple[list[SweepImage], dict]:
    """Flat PNGs under ``folder/images`` and their SweepImage records; returns ``(images, colours)``
    with ``colours[(checkpoint, strength, seed)]`` (strength ``None`` and checkpoint ``no LoRA`` for the baseline)."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    cells = ([(NO_LORA, None, None, -1)] if baseline else []) + [
        (name, epoch, s, order) for order, (name, epoch) in enumerate(checkpoints) for s in strengths
    ]
    images, colours = [], {}
    for c, (name, epoch, strength, order) in enumerate(cells):
        for p, prompt in enumerate(prompts):
            for k, seed in enumerate(seeds):
                fill = colour(c, k + p * len(seeds))
                path = images_dir / f"c{c}_p{p}_s{seed}.png"
                Image.new("RGB", SIZE, fill).save(path)
                if scores is not None:
                    score = scores(name, strength, k)
                else:
                    mean = BASELINE_MEAN if strength is None else MEANS.get((name, strength), 0.4)
                    score = mean + (0.01 if k % 2 else -0.01)
                colours[(name, strength, seed, p)] = fill
                images.append(SweepImage(
                    path=path, checkpoint=name, epoch=epoch if epochs else None, order=order, strength=strength,
                    seed=seed, prompt_index=p, prompt=prompt, score=score,
                    box=[8.0, 10.0, 40.0, 50.0] if score is not None else None,
                    adherence=(0.30 - 0.05 * (strength or 0) + 0.01 * order) if adherence else None,
                ))
    return images, colours


def recommendation_for(images, ceiling=0.8):
    return recommend(cells_from_records(images), ceiling=ceiling, n_boot=300)


def centroid(pixels: np.ndarray, fill) -> tuple[float, float, int]:
    mask = (pixels == np.asarray(fill, dtype=np.uint8)).all(axis=2)
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()) if xs.size else -1.0, float(ys.mean()) if ys.size else -1.0, int(mask.sum()))


def is_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert 300 <= image.width <= 2500 and 200 <= image.height <= 2000, image.size
    return image


# --------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------


def test_grid_rows_in_epoch_order_columns_by_strength_baseline_first_and_best_framed(tmp_path):
    images, colours = make_sweep(tmp_path)
    recommendation = recommendation_for(images)
    assert recommendation.best.cell.label == "alpha @ 1"
    shuffled = images[::-1]  # the grid orders by ``order`` and strength, not by arrival
    grid = sweep_grid(shuffled, recommendation, cell_size=64)
    pixels = np.asarray(grid.convert("RGB"))

    positions = {key: centroid(pixels, fill) for key, fill in colours.items()}
    for key, (_, _, count) in positions.items():
        assert count > 0.5 * 48 * 64, f"{key} missing from the grid ({count} px)"
    # Rows: no LoRA, then step-b (epoch 10), alpha (20), final (30) — top to bottom.
    row_y = [positions[(NO_LORA, None, SEEDS[0], 0)][1]] + [positions[(name, 0.6, SEEDS[0], 0)][1] for name, _ in CHECKPOINTS]
    assert row_y == sorted(row_y) and len({round(y) for y in row_y}) == 4
    # Columns: 0.6, then 1.0 — left to right; seeds side by side in a cell.
    column_x = [positions[("alpha", 0.6, SEEDS[0], 0)][0], positions[("alpha", 1.0, SEEDS[0], 0)][0]]
    assert column_x == sorted(column_x) and column_x[1] - column_x[0] > 2 * 48
    seed_a, seed_b = positions[("alpha", 1.0, SEEDS[0], 0)], positions[("alpha", 1.0, SEEDS[1], 0)]
    assert abs(seed_a[1] - seed_b[1]) < 1 and 40 < seed_b[0] - seed_a[0] < 90
    # The baseline appears once, its seeds side by side in the same order.
    baseline_a, baseline_b = positions[(NO_LORA, None, SEEDS[0], 0)], positions[(NO_LORA, None, SEEDS[1], 0)]
    assert abs(baseline_a[1] - baseline_b[1]) < 1 and 40 < baseline_b[0] - baseline_a[0] < 90

    # The blue frame surrounds exactly the recommended cell's two images.
    frame = (pixels == np.asarray(MARK, dtype=np.uint8)).all(axis=2)
    ys, xs = np.nonzero(frame)
    assert frame.sum() > 2 * 2 * (48 + 64)
    best = [(pixels == np.asarray(colours[("alpha", 1.0, s, 0)], dtype=np.uint8)).all(axis=2) for s in SEEDS]
    best_ys, best_xs = np.nonzero(best[0] | best[1])
    assert xs.min() <= best_xs.min() and xs.max() >= best_xs.max()
    assert ys.min() <= best_ys.min() and ys.max() >= best_ys.max()
    assert xs.max() - xs.min() < 2 * 64 + 20 and ys.max() - ys.min() <= 64
    # Without a recommendation there is no frame; the headline band goes too but the grid is the same size or smaller.
    plain = np.asarray(sweep_grid(images, None, cell_size=64))
    assert not (plain == np.asarray(MARK, dtype=np.uint8)).all(axis=2).any()


@pytest.mark.parametrize("size", [64, 256])
def test_grid_gives_the_no_lora_baseline_a_row_of_its_own_without_a_blank_staircase(tmp_path, drawn_text, size):
    images, colours = make_sweep(tmp_path, seeds=[1, 2, 3, 4])
    grid = sweep_grid(images, recommendation_for(images), cell_size=size)
    pixels = np.asarray(grid)

    def mask(keys):
        return np.logical_or.reduce([(pixels == np.asarray(colours[k], dtype=np.uint8)).all(axis=2) for k in keys])

    base_ys, base_xs = np.nonzero(mask([k for k in colours if k[0] == NO_LORA]))
    lora_ys, lora_xs = np.nonzero(mask([k for k in colours if k[0] != NO_LORA]))
    first_ys, first_xs = np.nonzero(mask([k for k in colours if k[1] == STRENGTHS[0]]))
    # Above every LoRA image, starting where the strength columns start, directly over the first
    # strength column (so nothing below the baseline is left blank), and no extra column for it.
    assert base_ys.max() < lora_ys.min()
    assert abs(int(base_xs.min()) - int(lora_xs.min())) <= 2
    assert base_xs.max() <= first_xs.max()
    assert grid.width - lora_xs.max() <= max(8, size // 16)
    region = pixels[base_ys.min():lora_ys.max() + 1, lora_xs.min():lora_xs.max() + 1]
    assert (region == 255).all(axis=2).mean() < 0.3  # headers, gaps and the rest of the baseline row only
    # The blue frame stays on the recommended cell.
    frame_ys, frame_xs = np.nonzero((pixels == np.asarray(MARK, dtype=np.uint8)).all(axis=2))
    best_ys, best_xs = np.nonzero(mask([k for k in colours if k[:2] == ("alpha", 1.0)]))
    assert frame_xs.min() <= best_xs.min() and frame_xs.max() >= best_xs.max() and frame_ys.min() <= best_ys.min()
    # No label touches another.
    boxes = [(text, box) for text, box, canvas in drawn_text if max(canvas) > size]  # not the badges on the images
    assert len(boxes) >= 1 + 4 + 2  # the corner, four row labels, two column headers
    for (text_a, a), (text_b, b) in itertools.combinations(boxes, 2):
        assert a[2] + 1 <= b[0] or b[2] + 1 <= a[0] or a[3] + 1 <= b[1] or b[3] + 1 <= a[1], f"{text_a!r} touches {text_b!r}"


def test_grid_caps_images_per_cell_with_the_same_seeds_everywhere_and_loads_only_those(tmp_path):
    images, colours = make_sweep(tmp_path, seeds=[1, 2, 3], prompts=("a", "b"))
    loaded = []

    def load(path: Path) -> Image.Image:
        assert isinstance(path, Path)
        loaded.append(path)
        return Image.open(path).convert("RGB")

    recommendation = recommendation_for(images)
    capped = sweep_grid(images, recommendation, load=load, cell_size=40, per_cell=2)
    n_cells = 1 + len(CHECKPOINTS) * len(STRENGTHS)
    assert len(loaded) == 2 * n_cells  # 2 of the 6 images per cell read, not all 42
    pixels = np.asarray(capped)
    shown = {key for key, fill in colours.items() if centroid(pixels, fill)[2] > 0}
    # Every cell shows prompt 0 with seeds 1 and 2: the same pairing keys in every cell.
    assert shown == {key for key in colours if key[3] == 0 and key[2] in (1, 2)}
    full = np.asarray(sweep_grid(images, recommendation, load=load, cell_size=40, per_cell=6))
    assert all(centroid(full, fill)[2] > 0 for fill in colours.values())


def test_grid_survives_an_unreadable_image_and_a_cell_without_faces(tmp_path):
    images, colours = make_sweep(tmp_path, scores=lambda name, strength, k: None if name == "alpha" else 0.5 + 0.01 * k)
    images[3].path.unlink()
    recommendation = recommendation_for(images)
    grid = sweep_grid(images, recommendation, cell_size=48)
    assert grid.width > 100 and grid.height > 4 * 48
    pixels = np.asarray(grid)
    assert centroid(pixels, colours[(NO_LORA, None, SEEDS[0], 0)])[2] > 0
    with pytest.raises(ValueError, match="no sweep images"):
        sweep_grid([], recommendation)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


SCENARIOS = {
    "full": {},
    "faceless cells": {"scores": lambda name, strength, k: None if (name == "alpha" or (strength == 1.0 and k == 0)) else 0.4 + 0.02 * k},
    "no faces at all": {"scores": lambda name, strength, k: None},
    "single checkpoint": {"checkpoints": [("e10", 10)]},
    "single strength": {"strengths": [0.8]},
    "single cell, no baseline": {"checkpoints": [("e10", 10)], "strengths": [1.0], "baseline": False},
    "no baseline": {"baseline": False},
    "unknown epochs": {"epochs": False},
    "baseline only": {"checkpoints": []},
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_curves_and_heatmap_are_sane_pngs_whatever_is_missing(tmp_path, scenario):
    images, _ = make_sweep(tmp_path, **SCENARIOS[scenario])
    recommendation = recommendation_for(images, ceiling=None if scenario == "no baseline" else 0.8)
    curves = is_png(curves_png(recommendation))
    heatmap = is_png(heatmap_png(recommendation))
    # The recommended cell is outlined in pure red on the heatmap; no recommendation, no outline.
    red = (np.asarray(heatmap.convert("RGB")) == (255, 0, 0)).all(axis=2).sum()
    if recommendation.best is not None:
        assert red > 40
    else:
        assert red == 0
    assert curves.height > 300
    assert trade_off_png(recommendation) is None  # no adherence measured


def test_curves_use_epochs_when_known_and_draw_every_strength(tmp_path):
    with_epochs = make_sweep(tmp_path / "a")[0]
    without = make_sweep(tmp_path / "b", epochs=False)[0]
    one_strength = make_sweep(tmp_path / "c", strengths=[1.0])[0]
    a, b, c = (np.asarray(is_png(curves_png(recommendation_for(i))).convert("RGB")) for i in (with_epochs, without, one_strength))
    assert not np.array_equal(a, b)  # epoch axis vs checkpoint-index axis
    # matplotlib's C1 (orange, the second strength's line) only appears when there are two strengths.
    orange = np.asarray((255, 127, 14), dtype=np.uint8)
    assert (a == orange).all(axis=2).sum() > 50
    assert (c == orange).all(axis=2).sum() == 0


@pytest.fixture()
def figures(monkeypatch):
    """The matplotlib figures the report turns into PNG bytes, drawn, in order."""
    from lora_likeness.sweep import report

    drawn = []
    original = report._figure_png

    def keep(figure):
        data = original(figure)
        drawn.append(figure)
        return data

    monkeypatch.setattr(report, "_figure_png", keep)
    return drawn


def _texts(figure):
    """Every visible, non-empty text of a drawn figure with its extent in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in figure.findobj(Text)
            if t.get_visible() and t.get_text().strip() and t.figure is figure]


@pytest.mark.parametrize("checkpoints", [CHECKPOINTS, [("alpha", 20)]], ids=["three rows", "one row"])
@pytest.mark.parametrize("floor, ceiling", [(0.35, 0.6), (0.52, 0.53)], ids=["apart", "close together"])
def test_heatmap_marks_floor_and_ceiling_on_the_colour_bar_clear_of_its_numbers(tmp_path, figures, checkpoints, floor, ceiling):
    # Floor and ceiling both fall inside the cells' colour range (0.3 or 0.45 to 0.7).
    images, _ = make_sweep(tmp_path, checkpoints=checkpoints,
                           scores=lambda name, strength, k: floor if strength is None else MEANS[(name, strength)])
    heatmap_png(recommendation_for(images, ceiling=ceiling))
    texts = _texts(figures[-1])
    said = " ".join(text for text, _ in texts)
    assert "ceiling" in said and "floor" in said
    for (text_a, a), (text_b, b) in itertools.combinations(texts, 2):
        assert not a.overlaps(b), f"{text_a!r} overlaps {text_b!r}"
    stripe = figures[-1].axes[-1].get_window_extent()  # the colour bar itself
    assert not [text for text, extent in texts if ("floor" in text or "ceiling" in text) and extent.overlaps(stripe)]


def test_curves_say_why_the_identity_panel_is_empty_when_no_face_was_found(tmp_path, figures):
    images, _ = make_sweep(tmp_path, scores=lambda name, strength, k: None)
    curves_png(recommendation_for(images))
    figure = figures[-1]
    texts = _texts(figure)
    top = figure.axes[0].get_window_extent()
    said = [(text, extent) for text, extent in texts if "no face was found in any image" in text]
    assert said, "the empty identity panel does not say why"
    assert all(top.x0 <= e.x0 and e.x1 <= top.x1 and top.y0 <= e.y0 and e.y1 <= top.y1 for _, e in said)
    # With faces there is no such message.
    curves_png(recommendation_for(make_sweep(tmp_path / "faces")[0]))
    assert not [text for text, _ in _texts(figures[-1]) if "no face was found" in text]


def test_trade_off_plot_when_adherence_exists(tmp_path):
    images, _ = make_sweep(tmp_path, adherence=True)
    recommendation = recommendation_for(images)
    assert recommendation.trade_off  # the real recommend() found a front
    is_png(trade_off_png(recommendation))


# --------------------------------------------------------------------------------------------
# HTML, CSV, JSON and the files
# --------------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


EVIL_PROMPT = "photo of <script>alert('x')</script> man"
EVIL_NEGATIVE = "\"'><img src=http://evil.example/x.png onerror=alert(1)>"


def test_report_html_is_self_contained_and_escapes_user_strings(tmp_path):
    images, _ = make_sweep(tmp_path, checkpoints=[("e<b>10</b>", 10), ("e20", 20)], prompts=(EVIL_PROMPT,), adherence=True)
    recommendation = recommendation_for(images)
    recommendation.warnings.append("folder <i>x</i> & co")
    settings = {"base": "/models/<base>.safetensors", "prompts": [EVIL_PROMPT], "negative": EVIL_NEGATIVE,
                "seeds": SEEDS, "strengths": STRENGTHS, "steps": 25, "cfg": 7.0, "sampler": "dpmpp_2m_karras",
                "width": 512, "height": 768, "pack": "likeness_test"}
    plots = {"curves.png": curves_png(recommendation), "heatmap.png": heatmap_png(recommendation),
             "trade_off.png": trade_off_png(recommendation)}
    page = report_html(recommendation, images, {"cells.csv": tmp_path / "cells.csv"}, settings, b"\xff\xd8fakejpeg", plots)

    parser = _Tags()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    sources = [a["src"] for t, a in parser.tags if t == "img"]
    # curves, heatmap, trade-off, grid, and one thumbnail per image
    assert len(sources) == 4 + len(images)
    assert all(s.startswith("data:image/") for s in sources)
    # No attribute of any real tag points outside the page (escaped text may mention URLs), no CSS url().
    linked = [v for _, a in parser.tags for k, v in a.items() if k in ("src", "href", "srcset", "action", "poster", "data")]
    assert linked and not [v for v in linked if re.match(r"\s*(https?:|//|ftp:|file:)", v or "", re.IGNORECASE)]
    assert "url(" not in page and "@import" not in page
    assert "<script>" not in page and "<b>10</b>" not in page and "<i>x</i>" not in page and "<base>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;10&lt;/b&gt;" in page
    assert "&quot;&#x27;&gt;&lt;img src=http://evil.example/x.png" in page
    assert "folder &lt;i&gt;x&lt;/i&gt; &amp; co" in page
    assert "512 × 768 px" in page and "dpmpp_2m_karras" in page
    # The headline and the table: the recommended row is marked.
    assert f"<p class='headline'>{html.escape(recommendation.headline())}</p>" in page
    assert page.count("class='best'") == 1


class _Page(HTMLParser):
    """The page's sections in order (``h2`` texts), its settings as ``{name: (text, folded, tags)}``
    and its figure captions."""

    def __init__(self):
        super().__init__()
        self.open: list[tuple[str, dict]] = []
        self.sections: list[str] = []
        self.settings: dict[str, tuple[str, bool, list[tuple[str, dict]]]] = {}
        self.captions: list[str] = []
        self._text: list[str] | None = None
        self._name: str | None = None
        self._tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.open.append((tag, dict(attrs)))
        if tag in ("h2", "th", "td", "figcaption"):
            self._text, self._tags = [], []
        elif self._text is not None:
            self._tags.append((tag, dict(attrs)))
            self._text.append(" ")  # list items read as separate words

    def handle_endtag(self, tag):
        while self.open and self.open[-1][0] != tag:
            self.open.pop()
        if self.open:
            self.open.pop()
        if self._text is None or tag not in ("h2", "th", "td", "figcaption"):
            return
        text, self._text = " ".join("".join(self._text).split()), None
        folded = any(t == "details" for t, _ in self.open)
        if tag == "h2":
            self.sections.append(text)
        elif tag == "figcaption":
            self.captions.append(text)
        elif tag == "th" and folded:
            self._name = text
        elif tag == "td" and self._name is not None:
            self.settings[self._name] = (text, folded, self._tags)
            self._name = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def sweep_settings(**changes) -> dict:
    """The settings ``run_sweep`` hands the report: ``SweepConfig.as_dict()`` plus what the engine adds."""
    from lora_likeness.sweep.config import SweepConfig

    config = SweepConfig(base=Path("/models/base.safetensors"), loras=Path("/runs/me"), refs=Path("/photos/me"),
                         out=Path("/runs/me/sweep"), prompts=["photo of ohwx man", "ohwx man smiling"], strengths=STRENGTHS)
    settings = {**config.as_dict(), "checkpoints": [name for name, _ in CHECKPOINTS], "references": 12, "generated": 14,
                "reused": 0, "face_model": {"pack": "buffalo_l", "path": "/packs/buffalo_l", "detector": "det_10g.onnx",
                                            "recognizer": "w600k_r50.onnx", "embedding_dim": 512, "providers": ["CPU"],
                                            "det_thresh": 0.5, "det_max_side": 640, "fingerprint": "0" * 32}}
    settings.update(changes)
    return settings


def test_report_html_shows_results_first_and_settings_folded_and_in_words(tmp_path):
    images, _ = make_sweep(tmp_path, prompts=("photo of ohwx man", "ohwx man smiling"))
    recommendation = recommendation_for(images)
    plots = {"curves.png": curves_png(recommendation), "heatmap.png": heatmap_png(recommendation)}

    def page(settings):
        parser = _Page()
        parser.feed(report_html(recommendation, images, {}, settings, b"\xff\xd8fakejpeg", plots))
        return parser

    default = page(sweep_settings())
    # The headline, the cells, the curves and the grid first; the settings after them, folded.
    sections = default.sections
    assert "Settings" in sections
    for first in ("Cells", "Identity by epoch", "Heatmap", "Grid"):
        assert sections.index(first) < sections.index("Settings"), sections
    assert default.settings and all(folded for _, folded, _ in default.settings.values())
    # As a person would write them: prompts numbered from 1 ...
    prompts = default.settings["prompts"]
    assert prompts[0] == "photo of ohwx man ohwx man smiling"
    assert [a.get("start", "1") for t, a in prompts[2] if t == "ol"] == ["1"]
    assert all("prompt 0" not in caption for caption in default.captions)
    assert any("prompt 1 " in caption for caption in default.captions)
    # ... nothing empty, no Python spellings, no raw JSON ...
    for name, (text, _, _) in default.settings.items():
        assert text and text not in ("None", "True", "False", "[]", "{}"), f"{name}: {text!r}"
        assert not name.count("_"), f"{name} is a variable name"
    assert default.settings["negative prompt"][0] == "none"
    face = default.settings["face model"][0]
    assert face.startswith("buffalo_l (") and "det_10g.onnx" in face and "w600k_r50.onnx" in face and "512" in face
    assert "{" not in face and "fingerprint" not in face
    # ... and prompt adherence as what happened.
    assert default.settings["prompt adherence"][0] == "not measured: no CLIP model found"
    assert page(sweep_settings(adherence=False)).settings["prompt adherence"][0] == "off"
    measured = page(sweep_settings(clip_model="/hf/clip-vit-base-patch32")).settings
    assert "/hf/clip-vit-base-patch32" in measured["prompt adherence"][0]
    assert not {"clip", "clip model", "clip_model"} & set(measured)  # said once, in the adherence row


def test_write_sweep_report_files_parse_and_match_and_a_rerun_preserves_the_first(tmp_path):
    out = tmp_path / "sweep"
    images, _ = make_sweep(out, adherence=True)
    recommendation = recommendation_for(images)
    settings = {"base": Path("/models/base.safetensors"), "prompts": ["photo of ohwx man"], "seeds": SEEDS,
                "strengths": STRENGTHS, "steps": 25, "cfg": 7.0, "face_model": {"pack": "likeness_test"}}
    (out / "notes.txt").write_text("mine")
    files = write_sweep_report(out, images, recommendation, settings)
    assert set(files) == set(SWEEP_REPORT_FILES) - set(PEOPLE_REPORT_FILES)  # one person: no family files
    assert all(path.parent == out and path.stat().st_size > 0 for path in files.values())

    table = recommendation.table()
    with open(files["cells.csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == [t["label"] for t in table] and rows[0]["label"] == NO_LORA
    for row, expected in zip(rows, table):
        assert float(row["mean"]) == pytest.approx(expected["mean"], abs=1e-6)
        assert (row["rank"] or None) == (None if expected["rank"] is None else str(expected["rank"]))
    with open(files["images.csv"], newline="") as handle:
        image_rows = list(csv.DictReader(handle))
    assert len(image_rows) == len(images)
    assert all(r["path"].startswith("images/") and (out / r["path"]).is_file() for r in image_rows)
    assert [float(r["score"]) for r in image_rows] == pytest.approx([i.score for i in images])
    assert image_rows[0]["box"] == "8.0 10.0 40.0 50.0" and image_rows[0]["strength"] == "" and image_rows[0]["checkpoint"] == NO_LORA
    data = json.loads(files["recommendation.json"].read_text())
    assert data["best"] == recommendation.best.label == "alpha @ 1"
    assert data["headline"] == recommendation.headline()
    assert data["settings"]["base"] == "/models/base.safetensors" and data["settings"]["seeds"] == SEEDS
    assert [c["label"] for c in data["cells"]] == [t["label"] for t in table]
    assert files["recommendation.txt"].read_text().splitlines()[0] == recommendation.headline()
    first_html = files["report.html"].read_text()
    assert first_html.startswith("<!doctype html>") and "alpha @ 1" in first_html
    with Image.open(files["grid.jpg"]) as grid:
        assert grid.format == "JPEG" and grid.width > 200

    # Again: the first report set moves to previous/<time>/, nothing is lost or overwritten.
    files["report.html"].write_text(first_html + "<!-- first run -->")
    again = write_sweep_report(out, images, recommendation, settings)
    previous = again["previous"]
    assert previous.parent == out / "previous"
    assert (previous / "report.html").read_text().endswith("<!-- first run -->")
    assert {p.name for p in previous.iterdir()} == set(SWEEP_REPORT_FILES) - set(PEOPLE_REPORT_FILES)
    assert "<!-- first run -->" not in again["report.html"].read_text()
    assert (out / "notes.txt").read_text() == "mine" and all(i.path.is_file() for i in images)
    assert str(previous.name) in again["report.html"].read_text()


def test_write_sweep_report_without_faces_or_adherence(tmp_path):
    out = tmp_path / "sweep"
    images, _ = make_sweep(out, scores=lambda name, strength, k: None)
    recommendation = recommendation_for(images)
    assert recommendation.best is None
    files = write_sweep_report(out, images, recommendation, {})
    assert "trade_off.png" not in files and "previous" not in files
    assert json.loads(files["recommendation.json"].read_text())["best"] is None
    assert files["recommendation.txt"].read_text().startswith("No recommendation")
    assert "No settings recorded" in files["report.html"].read_text()
    # An empty sweep (every image failed before scoring) still gets a report that says so, without a grid.
    empty = write_sweep_report(tmp_path / "empty", [], recommend([]), {})
    assert "grid.jpg" not in empty and empty["images.csv"].read_text().startswith("path,checkpoint")
    assert "the sweep has no cells" in empty["report.html"].read_text()
