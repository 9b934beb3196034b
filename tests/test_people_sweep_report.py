"""A family sweep's report: per-person columns in cells.csv, per-person curves (identity, presence,
all-present and blend rates by epoch), the page that shows them, and per-person columns in
``likeness score``'s summary.csv. Synthetic family of test_people.py, so every value is known."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from test_people import A1, A2, B1, B2, reference_set
from test_sweep_report import CHECKPOINTS, STRENGTHS, make_sweep, recommendation_for

from lora_likeness.people import PeopleSet, compact_people_text, people_columns, people_in_image
from lora_likeness.people_sweep import PeopleCell, people_cells_from_records, recommend_for_people
from lora_likeness.recommend import NO_LORA
from lora_likeness.sweep import report as sweep_report
from lora_likeness.sweep.report import SWEEP_REPORT_FILES, cells_csv, people_curves_png, write_sweep_report


@pytest.fixture()
def family() -> PeopleSet:
    return PeopleSet.build({"A": reference_set(A1, A2), "B": reference_set(B1, B2)})


def family_images(family, checkpoint: str, strength: float | None):
    """Two images per cell. step-b: B missing from one; alpha @ 1: both everywhere; final: A twice in one (blend)."""
    if strength is None:
        return [people_in_image(family, [A2, B1]), people_in_image(family, [A2])]
    if checkpoint == "step-b":
        return [people_in_image(family, [A1, B2]), people_in_image(family, [A1])]
    if checkpoint == "final (e30)":
        return [people_in_image(family, [A1, B2]), people_in_image(family, [A1, A1])]
    return [people_in_image(family, [A1, B2]), people_in_image(family, [A2, B1])]


@pytest.fixture()
def sweep(family, tmp_path):
    images, _ = make_sweep(tmp_path / "sweep")
    recommendation = recommendation_for(images)
    cells = [PeopleCell(NO_LORA, None, None, -1, family_images(family, NO_LORA, None))]
    cells += [PeopleCell(name, strength, epoch, order, family_images(family, name, strength))
              for order, (name, epoch) in enumerate(CHECKPOINTS) for strength in STRENGTHS]
    return images, recommendation, recommend_for_people(family, cells, n_boot=200)


def test_cells_csv_has_each_persons_mean_ci_presence_and_the_cells_rates(sweep):
    _, recommendation, people = sweep
    rows = list(csv.DictReader(io.StringIO(cells_csv(recommendation, people))))
    assert list(rows[0])[-11:] == people_columns(["A", "B"]) == [
        "A_mean", "A_ci95_low", "A_ci95_high", "A_presence_rate", "B_mean", "B_ci95_low", "B_ci95_high", "B_presence_rate",
        "all_present_rate", "blend_rate", "worst_served"]
    assert len(rows) == len(recommendation.cells) == 7
    for row in rows:
        strength = float(row["strength"]) if row["strength"] else None
        result = people.result_for(row["checkpoint"], strength)
        assert result is not None, row["label"]
        for name in ("A", "B"):
            stats = result.stats.people[name]
            assert float(row[f"{name}_presence_rate"]) == pytest.approx(stats.presence_rate)
            assert float(row[f"{name}_mean"]) == pytest.approx(stats.mean, abs=1e-6)
            assert float(row[f"{name}_ci95_low"]) <= float(row[f"{name}_mean"]) <= float(row[f"{name}_ci95_high"])
        assert float(row["all_present_rate"]) == pytest.approx(result.stats.all_present_rate)
        assert float(row["blend_rate"]) == pytest.approx(result.stats.blend_rate)
    by_label = {row["label"]: row for row in rows}
    assert by_label[NO_LORA]["B_presence_rate"] == "0.500000" and by_label[NO_LORA]["all_present_rate"] == "0.500000"
    assert by_label["step-b @ 1"]["B_presence_rate"] == "0.500000" and by_label["step-b @ 1"]["worst_served"] == "B"
    assert by_label["final (e30) @ 0.6"]["blend_rate"] == "0.500000" and by_label["alpha @ 1"]["blend_rate"] == "0.000000"
    assert float(by_label["alpha @ 1"]["A_mean"]) == pytest.approx(1.0) and by_label["alpha @ 1"]["all_present_rate"] == "1.000000"
    # Without people the table is what it was.
    assert list(csv.DictReader(io.StringIO(cells_csv(recommendation))))[0].keys().isdisjoint({"A_mean", "blend_rate"})


@pytest.fixture()
def figures(monkeypatch):
    drawn = []
    original = sweep_report._figure_png

    def keep(figure):
        drawn.append(figure)
        return original(figure)

    monkeypatch.setattr(sweep_report, "_figure_png", keep)
    return drawn


def _lines(axes) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in axes.get_lines()}


def test_people_curves_draw_each_person_with_ci_band_and_the_rates_per_strength(sweep, figures):
    _, _, people = sweep
    data = people_curves_png(people)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    figure = figures[-1]
    axes = figure.get_axes()
    assert len(axes) == 2 * len(STRENGTHS)  # identity and rates, one column per strength
    for column, strength in enumerate(STRENGTHS):
        top, bottom = axes[2 * column], axes[2 * column + 1]
        assert top.get_title() == f"strength {strength:g}"
        lines, rates = _lines(top), _lines(bottom)
        for name in ("A", "B"):
            expected = [people.result_for(c, strength).stats.people[name].mean for c, _ in CHECKPOINTS]
            assert lines[name] == pytest.approx(expected)
            presence = [people.result_for(c, strength).stats.people[name].presence_rate * 100 for c, _ in CHECKPOINTS]
            if column == 0:
                assert rates[f"{name} present"] == pytest.approx(presence)
        assert len(top.collections) >= 2  # a CI band per person (and the recommended star where it is)
        if column == 0:
            assert rates["blended"] == pytest.approx([0.0, 0.0, 50.0])
            assert rates["all present"] == pytest.approx([50.0, 100.0, 50.0])
            # Each person's no-LoRA mean as a line of its own.
            assert lines[f"A, {NO_LORA}"] == pytest.approx([1.0, 1.0])
    assert axes[1].get_xticks().tolist() == [10.0, 20.0, 30.0]  # epochs on x


def test_people_curves_survive_a_person_never_found(family, figures):
    cells = [PeopleCell(f"e{i}", 1.0, i, i, [people_in_image(family, [A1])]) for i in (1, 2)]
    people = recommend_for_people(family, cells, n_boot=50)
    assert people_curves_png(people)[:4] == b"\x89PNG"
    lines = _lines(figures[-1].get_axes()[0])
    assert np.isnan(lines["B"]).all() and lines["A"] == pytest.approx([1.0, 1.0])


def test_write_sweep_report_with_people_writes_the_curves_and_the_page_shows_them(sweep, tmp_path):
    images, recommendation, people = sweep
    out = tmp_path / "sweep"
    files = write_sweep_report(out, images, recommendation, {"prompts": ["photo of A and B"]}, people=people)
    assert set(files) == set(SWEEP_REPORT_FILES) - {"trade_off.png"}  # the family files too (no adherence measured)
    assert files["people_curves.png"].read_bytes()[:4] == b"\x89PNG"
    page = files["report.html"].read_text()
    assert "Each person by epoch" in page and page.index("Each person by epoch") < page.index("<h2>Cells</h2>")
    header = files["cells.csv"].read_text().splitlines()[0]
    assert header.endswith("A_presence_rate,B_mean,B_ci95_low,B_ci95_high,B_presence_rate,all_present_rate,blend_rate,worst_served")
    plain = write_sweep_report(tmp_path / "plain", images, recommendation, {})
    assert "people_curves.png" not in plain and "A_mean" not in plain["cells.csv"].read_text()


def test_people_cells_from_records_group_order_and_skip_images_without_people(family):
    one, two = people_in_image(family, [A1, B2]), people_in_image(family, [A1])
    records = [
        {"checkpoint": "e2", "strength": 1.0, "epoch": 2, "people": one},
        {"checkpoint": "e1", "strength": 0.6, "epoch": 1, "people": two},
        {"checkpoint": "anything", "strength": None, "people": one},
        {"checkpoint": "e1", "strength": 1.0, "epoch": 1, "people": None},  # unreadable: in no statistic
        {"checkpoint": "e2", "strength": 1.0, "epoch": 2, "people": two},
    ]
    cells = people_cells_from_records(records)
    assert [(c.checkpoint, c.strength, c.order, len(c.images)) for c in cells] == [
        (NO_LORA, None, -1, 1), ("e2", 1.0, 0, 2), ("e1", 0.6, 1, 1), ("e1", 1.0, 1, 0)]
    recommendation = recommend_for_people(family, cells, n_boot=50)
    assert recommendation.best.cell.checkpoint == "e2"  # B found in one of two images beats B never found
    assert recommendation.lines("Warning: ")[0] == recommendation.sentence()
    assert recommendation.result_for("e1", 0.6).stats.people["B"].presence_rate == 0.0
    assert recommendation.result_for("whatever", None).cell.checkpoint == NO_LORA


def test_compact_people_text_for_cells_and_labels(family):
    cells = [PeopleCell("e1", 1.0, 1, 0, [people_in_image(family, [A1, B2]), people_in_image(family, [A1, A1])])]
    stats = recommend_for_people(family, cells, n_boot=50).results[0].stats
    assert compact_people_text(stats) == "A 1.00 (100%) · B 1.00 (50%) · all 50% · blend 50%"
    assert compact_people_text(stats, rates=False) == "A 1.00 · B 1.00"
    like_a = np.array([0.8, 0, 0, 0.6])  # 0.8 like A (over A's 0.7), 0.48 like B (under B's 0.62)
    alone = recommend_for_people(family, [PeopleCell("e1", 1.0, 1, 0, [people_in_image(family, [like_a])])], n_boot=50)
    assert compact_people_text(alone.results[0].stats) == "A .80 (100%) · B – (0%) · all 0% · blend 0%"
