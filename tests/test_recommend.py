"""The sweep recommendation on synthetic score tables whose answers are known by construction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from lora_likeness.recommend import (
    ADHERENCE_GAP,
    NO_FACE_RISE,
    NO_LORA,
    TABLE_COLUMNS,
    Cell,
    cells_from_records,
    recommend,
)

N_BOOT = 1000  # enough for stable percentiles here, and fast


def cell(checkpoint, strength, scores, order=0, keys=True, **kwargs):
    """A cell whose image i has pairing key (i, 0) (seed i, first prompt)."""
    scores = [None if s is None else float(s) for s in scores]
    return Cell(
        checkpoint=checkpoint,
        strength=strength,
        scores=scores,
        keys=[(i, 0) for i in range(len(scores))] if keys else None,
        order=order,
        **kwargs,
    )


def per_seed_base(n=20, seed=1):
    """Per-seed identity that varies a lot from seed to seed (some seeds give a better face)."""
    return np.random.default_rng(seed).permutation(np.linspace(0.2, 0.8, n))


# --- choosing and comparing ------------------------------------------------------------------


def test_clear_winner_is_decisive_and_headline_says_beats():
    base = per_seed_base()
    wobble = np.random.default_rng(2).normal(0.0, 0.01, base.size)
    cells = [
        cell(NO_LORA, None, base - 0.4, order=-1),
        cell("e10", 1.0, base, order=0),
        cell("e20", 1.0, base + 0.15 + wobble, order=1),
    ]
    rec = recommend(cells, ceiling=0.81, n_boot=N_BOOT)
    assert rec.best.label == "e20 @ 1" and rec.runner_up.label == "e10 @ 1"
    assert rec.paired and rec.n_pairs == 20
    expected = float(np.mean((base + 0.15 + wobble) - base))
    assert rec.difference == pytest.approx(expected)
    low, high = rec.difference_ci
    assert 0 < low < expected < high
    assert rec.decisive
    assert rec.floor == pytest.approx(float(np.mean(base - 0.4)))
    line = rec.headline()
    assert line.startswith(f"Recommended: e20 @ 1 — identity {np.mean(base + 0.15 + wobble):.3f} (95% CI ")
    assert f"beats e10 @ 1 by {expected:.3f} (95% CI {low:.3f}–{high:.3f})" in line
    assert line.endswith(f"Floor (no LoRA) {np.mean(base - 0.4):.2f}, ceiling (reference photos) 0.81.")
    assert "within noise" not in line
    assert not any("within noise" in w for w in rec.warnings)


def test_nearly_equal_cells_are_within_noise():
    base = per_seed_base()
    diffs = np.array([0.02, -0.02] * 10) + 0.001  # mean 0.001, spread 0.02 per seed
    cells = [cell("e30", 0.8, base + diffs, order=0), cell("e40", 0.8, base, order=1)]
    rec = recommend(cells, n_boot=N_BOOT)
    assert rec.best.label == "e30 @ 0.8" and rec.runner_up.label == "e40 @ 0.8"
    assert rec.difference == pytest.approx(0.001)
    assert rec.difference_ci[0] < 0 < rec.difference_ci[1]
    assert not rec.decisive
    assert "within noise of e40 @ 0.8 (difference 0.001, 95% CI " in rec.headline()
    [warning] = [w for w in rec.warnings if "within noise" in w]
    assert warning.startswith("e30 @ 0.8 and e40 @ 0.8 are within noise (difference 0.001")
    assert "more seeds would separate them" in warning


def test_pairing_by_seed_separates_what_an_unpaired_comparison_cannot():
    # Seeds differ by up to 0.6 in identity; the LoRA adds 0.02 to every seed (± 0.003).
    base = per_seed_base()
    better = base + 0.02 + np.array([0.003, -0.003] * 10)
    paired = recommend([cell("e20", 1.0, better), cell("e10", 1.0, base)], n_boot=N_BOOT)
    unpaired = recommend([cell("e20", 1.0, better, keys=False), cell("e10", 1.0, base, keys=False)], n_boot=N_BOOT)

    diffs = better - base
    assert paired.paired and paired.n_pairs == 20 and paired.decisive
    assert paired.difference == pytest.approx(0.02)
    # Independent check of the paired CI: the normal approximation mean ± 1.96 sd / sqrt(n).
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(diffs.size)
    assert paired.difference_ci[0] == pytest.approx(0.02 - half, abs=0.001)
    assert paired.difference_ci[1] == pytest.approx(0.02 + half, abs=0.001)

    assert not unpaired.paired and unpaired.n_pairs == 0 and not unpaired.decisive
    assert unpaired.difference == pytest.approx(float(better.mean() - base.mean()))
    half = 1.96 * math.sqrt(better.var(ddof=1) / better.size + base.var(ddof=1) / base.size)
    width = unpaired.difference_ci[1] - unpaired.difference_ci[0]
    assert width == pytest.approx(2 * half, rel=0.25)
    assert "within noise" in unpaired.headline() and "beats" in paired.headline()


def test_paired_difference_uses_only_keys_with_a_face_in_both_cells():
    base = per_seed_base(10)
    better = list(base + 0.1)
    better[3] = None  # no face at seed 3 in the better cell
    worse = list(base)
    worse[7] = None
    rec = recommend([cell("e2", 1.0, better), cell("e1", 1.0, worse)], n_boot=N_BOOT)
    common = [i for i in range(10) if i not in (3, 7)]
    assert rec.paired and rec.n_pairs == 8
    assert rec.difference == pytest.approx(float(np.mean([better[i] - worse[i] for i in common])))


def test_fewer_than_two_common_keys_falls_back_to_unpaired():
    a = Cell("e2", 1.0, scores=[0.7, 0.72, 0.69], keys=[(0, 0), (1, 0), (2, 0)])
    b = Cell("e1", 1.0, scores=[0.5, 0.52, 0.49], keys=[(2, 0), (3, 0), (4, 0)])
    rec = recommend([a, b], n_boot=N_BOOT)
    assert not rec.paired and rec.n_pairs == 0
    assert rec.difference == pytest.approx(np.mean([0.7, 0.72, 0.69]) - np.mean([0.5, 0.52, 0.49]))
    assert rec.decisive  # the unpaired CI is [0.17, 0.23]: every resample has a > b


def test_losing_on_the_paired_images_despite_the_higher_mean_is_explained():
    base = per_seed_base(8)  # seed 7 has the best face (0.8)
    full = base + 0.02
    missing_best = list(base[:7] + 0.05) + [None]  # +0.05 on every seed, but no face at seed 7
    rec = recommend([cell("e10", 1.0, missing_best), cell("e20", 1.0, full)], n_boot=N_BOOT)
    assert np.mean(full) > np.mean(missing_best[:7])
    assert rec.best.label == "e20 @ 1" and rec.paired and rec.n_pairs == 7
    assert rec.difference == pytest.approx(-0.03) and not rec.decisive
    assert any(
        w.startswith("e10 @ 1 scores higher than e20 @ 1 on the 7 seed/prompt pairs where both find a face (by 0.030)")
        for w in rec.warnings
    )


def test_ties_break_on_ci_low_then_no_face_rate_then_sweep_order():
    tight = [0.6] * 6
    wide = [0.4, 0.8] * 3  # same mean 0.6, lower CI low bound
    rec = recommend([cell("a", 1.0, wide), cell("b", 1.0, tight)], n_boot=N_BOOT)
    assert rec.best.label == "b @ 1"
    rec = recommend([cell("a", 1.0, tight + [None]), cell("b", 1.0, tight + [0.6])], n_boot=N_BOOT)
    assert rec.best.label == "b @ 1"  # fewer images without a face
    rec = recommend([cell("a", 1.0, tight), cell("b", 1.0, tight)], n_boot=N_BOOT)
    assert rec.best.label == "a @ 1" and rec.difference == 0.0 and not rec.decisive


def test_cell_with_too_many_no_faces_is_not_eligible_even_with_the_highest_mean():
    cells = [
        cell("e10", 1.0, [0.5, 0.52, 0.48, 0.5]),
        cell("e20", 1.0, [0.9, None, None, None]),
        cell("e30", 1.0, [0.55, 0.6, None, None]),  # exactly at the 50% limit: still eligible
    ]
    rec = recommend(cells, max_no_face=0.5, n_boot=N_BOOT)
    assert rec.best.label == "e30 @ 1" and rec.runner_up.label == "e10 @ 1"
    e20 = rec.cells[1]
    assert not e20.eligible and e20.rank is None and "75%" in e20.reason
    assert any(w.startswith("e20 @ 1 has a higher mean identity (0.900) but is not recommended") for w in rec.warnings)
    stricter = recommend(cells, max_no_face=0.25, n_boot=N_BOOT)
    assert stricter.best.label == "e10 @ 1" and stricter.runner_up is None
    assert stricter.difference is None and not stricter.decisive
    assert "the only cell that can be recommended (no runner-up to compare with)." in stricter.headline()


# --- warnings --------------------------------------------------------------------------------


def test_rising_no_face_rate_is_flagged_with_its_checkpoints_and_strength():
    cells = [
        cell("e10", 0.5, [0.5, 0.5, 0.5, None], order=0),
        cell("e10", 1.0, [0.5, 0.5, 0.5, 0.5], order=0),
        cell("e20", 0.5, [0.5, 0.5, None, 0.5], order=1),
        cell("e20", 1.0, [0.5, 0.5, 0.5, None], order=1),
        cell("e30", 0.5, [None, 0.5, 0.5, 0.5], order=2),
        cell("e30", 1.0, [0.5, None, 0.5, None], order=2),
    ]
    rec = recommend(cells, n_boot=N_BOOT)
    rising = [w for w in rec.warnings if "no-face rate rises" in w]
    assert rising == [
        "no-face rate rises from 0% at e10 to 50% at e30 (strength 1): over-training often distorts faces."
    ]


def test_small_or_receding_no_face_rises_are_not_flagged():
    five = [0.5] * 5
    cells = [
        # 0% -> 20%: a rise below NO_FACE_RISE
        cell("e10", 1.0, five, order=0),
        cell("e20", 1.0, five[:4] + [None], order=1),
        # 0% -> 60% -> 20%: the last checkpoint is back under NO_FACE_RISE_MIN_RATE
        cell("e10", 0.5, five, order=0),
        cell("e20", 0.5, [None, None, None, 0.5, 0.5], order=1),
        cell("e30", 0.5, [None, 0.5, 0.5, 0.5, 0.5], order=2),
    ]
    assert 0.2 < NO_FACE_RISE
    rec = recommend(cells, max_no_face=1.0, n_boot=N_BOOT)
    assert not [w for w in rec.warnings if "no-face rate" in w]


def test_memorisation_is_flagged_for_the_top_cells_only():
    cells = [
        cell("e10", 1.0, [0.3] * 8, memorised=3),
        cell("e20", 1.0, [0.4] * 8),
        cell("e30", 1.0, [0.5] * 8),
        cell("e40", 1.0, [0.6] * 8, memorised=2),
    ]
    rec = recommend(cells, n_boot=N_BOOT)
    memo = [w for w in rec.warnings if "memorisation" in w]
    expected = (
        "2 of 8 images at e40 @ 1 are closer to one reference photo than the reference photos are to each "
        "other — possible memorisation of a training photo; check them before trusting this cell."
    )
    assert memo == [expected]  # e10 ranks 4th: not among the top 3


def test_floor_and_ceiling_warnings():
    base = per_seed_base(12)
    floor_cell = cell(NO_LORA, None, base, order=-1)
    # Barely above the floor, with the seed-to-seed spread of the floor: its CI reaches the floor.
    weak = recommend([floor_cell, cell("e10", 1.0, base + 0.01)], ceiling=0.81, n_boot=N_BOOT)
    assert weak.floor == pytest.approx(float(base.mean()))
    assert weak.best.ci[0] <= weak.floor
    assert any(
        w.startswith("e10 @ 1 is not reliably more like the person than the base model alone") for w in weak.warnings
    )
    strong = recommend([floor_cell, cell("e10", 1.0, base + 0.5)], ceiling=0.81, n_boot=N_BOOT)
    assert not any("base model alone" in w for w in strong.warnings)
    # base + 0.5 has mean 1.0 > ceiling 0.81
    assert any(
        w.startswith("e10 @ 1 scores 1.000, above the reference photos' own similarity to each other (0.810)")
        for w in strong.warnings
    )
    assert not any("above the reference photos" in w for w in weak.warnings)
    assert strong.as_dict()["ceiling"] == 0.81 and strong.as_dict()["floor"] == pytest.approx(float(base.mean()))


def test_headline_without_floor_or_ceiling_has_no_trailing_context():
    rec = recommend([cell("e10", 1.0, [0.5, 0.6])], n_boot=N_BOOT)
    assert rec.floor is None and rec.ceiling is None
    assert rec.headline().endswith("(no runner-up to compare with).")
    only_ceiling = recommend([cell("e10", 1.0, [0.5, 0.6])], ceiling=0.8, n_boot=N_BOOT)
    assert only_ceiling.headline().endswith(" Ceiling (reference photos) 0.80.")


def test_no_eligible_cell_gives_no_best_and_says_why():
    cells = [cell(NO_LORA, None, [0.1, 0.2], order=-1), cell("e10", 1.0, [None, None]), cell("e20", 1.0, [None, None])]
    rec = recommend(cells, n_boot=N_BOOT)
    assert rec.best is None and rec.runner_up is None and not rec.decisive
    assert rec.reason == "no face was found in any LoRA image"
    assert rec.headline().startswith("No recommendation: no face was found in any LoRA image.")
    assert not any(w.startswith("No recommendation") for w in rec.warnings)  # said once, in the headline
    assert all(r.rank is None for r in rec.cells)

    mostly_none = recommend([cell("e10", 1.0, [0.5, None, None])], n_boot=N_BOOT)
    assert mostly_none.best is None and "more than 50%" in mostly_none.reason and "67%" in mostly_none.reason

    only_floor = recommend([cell(NO_LORA, None, [0.1, 0.2], order=-1)], n_boot=N_BOOT)
    assert only_floor.best is None and "no LoRA cell" in only_floor.reason
    assert recommend([], n_boot=N_BOOT).best is None


def test_adherence_trade_off_front_and_warning():
    ident = {"A": 0.60, "B": 0.59, "C": 0.50, "D": 0.40}
    adher = {"A": 0.20, "B": 0.26, "C": 0.22, "D": 0.30}
    spread = np.array([-0.05, 0.05] * 5)
    # B's seeds wobble against A's: A − B = 0.01 ± 0.1 per seed, within noise; C and D trail A by a
    # constant 0.1 and 0.2 on every seed: clearly less alike.
    wobble = {"A": spread, "B": -spread, "C": spread, "D": spread}
    cells = [
        cell(name, 1.0, ident[name] + wobble[name], order=i, adherence=[adher[name] - 0.01, adher[name] + 0.01, None])
        for i, name in enumerate("ABCD")
    ]
    rec = recommend(cells, n_boot=N_BOOT)
    assert [r.adherence for r in rec.cells] == pytest.approx([0.20, 0.26, 0.22, 0.30])
    assert [r.label for r in rec.trade_off] == ["A @ 1", "B @ 1", "D @ 1"]  # C is beaten by B on both
    assert rec.as_dict()["trade_off"] == ["A @ 1", "B @ 1", "D @ 1"]
    [warning] = [w for w in rec.warnings if "follows the prompt less" in w]
    assert warning.startswith("A @ 1 follows the prompt less (CLIP 0.200 vs 0.260 at B @ 1) for an identity "
                              "within noise of it (0.600 vs 0.590)")
    # D follows the prompt best, but is clearly less alike: not offered as the alternative.
    assert "D @ 1" not in warning

    # A smaller gap than ADHERENCE_GAP is not worth a warning.
    close = {"A": 0.20, "B": 0.20 + ADHERENCE_GAP / 2, "C": 0.19, "D": 0.19}
    for c in cells:
        c.adherence = [close[c.checkpoint]]
    rec = recommend(cells, n_boot=N_BOOT)
    assert not any("follows the prompt less" in w for w in rec.warnings)
    assert [r.label for r in rec.trade_off] == ["A @ 1", "B @ 1"]


def test_adherence_warning_needs_identity_within_noise_on_the_paired_images():
    # Seeds vary so much that the two cells' own CIs overlap, but A beats B by 0.1 on every seed.
    base = per_seed_base()
    cells = [cell("A", 1.0, base + 0.1, adherence=[0.20]), cell("B", 1.0, base, adherence=[0.30])]
    rec = recommend(cells, n_boot=N_BOOT)
    a, b = rec.cells
    assert a.ci[0] <= b.ci[1] and rec.decisive
    assert not any("follows the prompt less" in w for w in rec.warnings)
    assert [r.label for r in rec.trade_off] == ["A @ 1", "B @ 1"]  # still shown as a trade-off


def test_no_adherence_means_no_trade_off():
    rec = recommend([cell("e10", 1.0, [0.5, 0.6]), cell("e20", 1.0, [0.4, 0.5])], n_boot=N_BOOT)
    assert rec.trade_off == [] and all(r.adherence is None for r in rec.cells)


# --- outputs ---------------------------------------------------------------------------------


def sweep_cells():
    base = per_seed_base(8)
    return [
        cell(NO_LORA, None, base - 0.3, order=-1),
        cell("e10", 0.5, base, order=0, adherence=[0.25] * 8),
        cell("e10", 1.0, list(base[:7] + 0.1) + [None], order=0, memorised=1),
        cell("e20", 0.5, base + 0.02 + np.random.default_rng(3).normal(0, 0.01, 8), order=1),
        cell("e20", 1.0, [None] * 6 + [0.9, 0.9], order=1),
    ]


def test_same_seed_gives_the_same_recommendation_and_another_seed_other_intervals():
    first = recommend(sweep_cells(), ceiling=0.7, seed=5, n_boot=N_BOOT).as_dict()
    again = recommend(sweep_cells(), ceiling=0.7, seed=5, n_boot=N_BOOT).as_dict()
    assert first == again
    other = recommend(sweep_cells(), ceiling=0.7, seed=6, n_boot=N_BOOT).as_dict()
    assert other["difference_ci"] != first["difference_ci"]
    assert other["best"] == first["best"] and other["difference"] == first["difference"]


def test_as_dict_is_strict_json_and_round_trips():
    rec = recommend(sweep_cells(), ceiling=0.7, n_boot=N_BOOT)
    data = rec.as_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["headline"] == rec.headline()
    assert data["best"] == rec.best.label and data["runner_up"] == rec.runner_up.label
    assert data["warnings"] == rec.warnings and data["level"] == 0.95
    assert [c["label"] for c in data["cells"]] == [NO_LORA, "e10 @ 0.5", "e10 @ 1", "e20 @ 0.5", "e20 @ 1"]
    baseline = data["cells"][0]
    assert baseline["strength"] is None and baseline["eligible"] is False and baseline["rank"] is None
    assert baseline["stats"]["mean"] == pytest.approx(rec.floor)
    e10 = data["cells"][2]
    assert e10["stats"]["n_memorised"] == 1 and e10["stats"]["no_face_rate"] == 0.125
    assert e10["stats"]["checkpoint"] == "e10" and e10["stats"]["strength"] == 1.0


def test_table_rows_have_every_column_and_ranks():
    rec = recommend(sweep_cells(), n_boot=N_BOOT)
    rows = rec.table()
    assert all(tuple(row) == TABLE_COLUMNS for row in rows)
    by_label = {row["label"]: row for row in rows}
    assert by_label["e10 @ 1"]["rank"] == 1 and by_label["e20 @ 0.5"]["rank"] == 2
    assert by_label["e10 @ 0.5"]["rank"] == 3
    assert by_label[NO_LORA]["rank"] is None and by_label["e20 @ 1"]["eligible"] is False
    row = by_label["e10 @ 1"]
    assert (row["n"], row["faces"], row["memorised"], row["checkpoint"], row["strength"]) == (8, 7, 1, "e10", 1.0)
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert by_label["e10 @ 0.5"]["adherence"] == pytest.approx(0.25)
    json.dumps(rows, allow_nan=False)


def test_other_level_changes_the_interval_and_its_name():
    cells = sweep_cells()
    narrow = recommend(cells, level=0.8, n_boot=N_BOOT)
    wide = recommend(cells, level=0.95, n_boot=N_BOOT)
    assert "80% CI" in narrow.headline() and "95% CI" not in narrow.headline()
    assert narrow.best.ci[1] - narrow.best.ci[0] < wide.best.ci[1] - wide.best.ci[0]
    assert narrow.best.stats.ci95 == wide.best.ci  # the stats keep their 95% CI


def test_bad_arguments_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="level"):
        recommend([], level=95)
    with pytest.raises(ValueError, match="max_no_face"):
        recommend([], max_no_face=50)
    with pytest.raises(ValueError, match="one key per image"):
        recommend([Cell("e1", 1.0, scores=[0.5, 0.6], keys=[(0, 0)])])


# --- records ---------------------------------------------------------------------------------


def test_cells_from_records_groups_orders_and_counts():
    records = []
    for checkpoint, epoch in (("e20", 20), ("e10", 10)):  # e20 seen first
        for strength in (1.0, 0.5):
            for seed in (0, 1, 2):
                records.append({
                    "checkpoint": checkpoint, "strength": strength, "epoch": epoch, "key": [seed, 0],
                    "score": None if seed == 2 and strength == 1.0 else 0.1 * seed + epoch / 100,
                    "memorised": checkpoint == "e20" and seed == 0,
                    "adherence": 0.25 if strength == 0.5 else None,
                })
    records += [{"checkpoint": NO_LORA, "strength": None, "score": 0.05, "key": [seed, 0]} for seed in (0, 1)]
    cells = cells_from_records(records)
    assert [(c.label, c.order) for c in cells] == [
        (NO_LORA, -1), ("e20 @ 0.5", 0), ("e20 @ 1", 0), ("e10 @ 0.5", 1), ("e10 @ 1", 1),
    ]
    e20 = cells[2]
    assert e20.epoch == 20 and e20.scores[:2] == pytest.approx([0.2, 0.3]) and e20.scores[2] is None
    assert e20.keys == [(0, 0), (1, 0), (2, 0)] and e20.memorised == 1 and e20.adherence is None
    assert cells[1].adherence == [0.25] * 3 and cells[4].memorised == 0
    assert cells[0].epoch is None and cells[0].checkpoint == NO_LORA and cells[0].keys == [(0, 0), (1, 0)]
    # Keys from JSON (lists) pair across cells.
    rec = recommend(cells, n_boot=N_BOOT)
    assert rec.paired


def test_cells_from_records_without_keys_and_with_explicit_order():
    records = [
        {"checkpoint": "late", "strength": 1, "score": 0.5, "order": 1},
        {"checkpoint": "early", "strength": 1, "score": 0.4, "order": 0},
        {"checkpoint": "early", "strength": 1, "score": None, "order": 0},
    ]
    cells = cells_from_records(records)
    assert [(c.checkpoint, c.order) for c in cells] == [("early", 0), ("late", 1)]
    assert cells[0].keys is None and cells[0].scores == [0.4, None] and cells[0].strength == 1.0


def test_images_a_host_failed_to_make_count_as_missing_not_as_no_face():
    nan = "NansException: A tensor with NaNs was produced in Unet."
    records = [{"checkpoint": "e1", "strength": 1.0, "score": s, "key": [k]} for k, s in enumerate((0.3, 0.35))]
    records += [{"checkpoint": "e2", "strength": 1.0, "missing": nan}] * 2  # the host's generation raised: no image at all
    records += [{"checkpoint": "e3", "strength": 1.0, "score": 0.6, "key": [0]}, {"checkpoint": "e3", "strength": 1.0, "missing": nan}]
    cells = cells_from_records(records)
    e2, e3 = cells[1], cells[2]
    assert e2.scores == [] and not e2.keys and e2.missing == [nan, nan]
    assert e3.scores == [0.6] and e3.keys == [(0,)] and e3.missing == [nan]
    rec = recommend(cells, n_boot=N_BOOT)
    failed = rec.cells[1]
    assert not failed.eligible and failed.rank is None and failed.reason == f"no image was made ({nan})"
    stats = failed.stats
    assert (stats.n_images, stats.n_errors, stats.n_faces, stats.no_face_rate, stats.mean) == (2, 2, 0, None, None)
    partly = rec.cells[2]  # compared on the image it has; its missing one is not a "no face"
    assert partly.eligible and partly.stats.n_errors == 1 and partly.stats.no_face_rate == 0.0
    assert rec.best.label == "e3 @ 1" and rec.runner_up.label == "e1 @ 1"
    assert not any("no-face" in w or "no face" in w for w in rec.warnings), rec.warnings

    none_made = recommend(cells_from_records([{"checkpoint": NO_LORA, "strength": None, "score": 0.1},
                                              {"checkpoint": "e1", "strength": 1.0, "missing": nan}]), n_boot=N_BOOT)
    assert none_made.best is None and none_made.reason == "no LoRA cell produced an image"
    assert json.loads(json.dumps(none_made.as_dict()))["cells"][1]["stats"]["n_errors"] == 1


def test_cells_from_records_refuses_a_lora_image_without_checkpoint():
    with pytest.raises(ValueError, match="record 2: .*strength 0.8.* names no 'checkpoint'"):
        cells_from_records([{"checkpoint": "e1", "strength": 1.0, "score": 0.5}, {"strength": 0.8, "score": 0.4}])


def test_cells_from_sweep_images():
    from lora_likeness.sweep.results import SweepImage

    images = [
        SweepImage(Path("a.png"), "e10", 10, 0, 0.8, seed, 0, "photo of sks", score=0.4 + seed / 10, memorised=seed == 1)
        for seed in range(3)
    ] + [SweepImage(Path("b.png"), NO_LORA, None, -1, None, seed, 0, "photo of sks", score=0.1) for seed in range(3)]
    cells = cells_from_records(images)
    assert [c.label for c in cells] == [NO_LORA, "e10 @ 0.8"]
    assert cells[1].keys == [(0, 0), (1, 0), (2, 0)] and cells[1].memorised == 1 and cells[1].epoch == 10
