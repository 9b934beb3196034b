"""Scoring math on synthetic embeddings with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lora_likeness.scoring import (
    bootstrap_ci,
    group_statistics,
    reference_baseline,
    reference_outliers,
    score_embedding,
    score_faces,
)


def unit(*values):
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_score_embedding_max_mean_ism_and_best_reference():
    refs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    face = unit(1.0, 1.0, 0.0)
    s = score_embedding(face, refs)
    assert s.score_max == pytest.approx(1 / math.sqrt(2))
    assert s.score_mean == pytest.approx(1 / math.sqrt(2))
    # The mean reference (0.5, 0.5, 0) normalised is the face itself.
    assert s.score_ism == pytest.approx(1.0)
    assert s.best_ref in (0, 1)

    s = score_embedding(np.array([0.0, 2.0, 0.0]), refs)  # unnormalised input is normalised
    assert (s.score_max, s.score_mean, s.best_ref) == (pytest.approx(1.0), pytest.approx(0.5), 1)
    assert s.score_ism == pytest.approx(1 / math.sqrt(2))


def test_score_embedding_rejects_an_empty_reference_set():
    with pytest.raises(ValueError, match="empty"):
        score_embedding(np.ones(3), np.zeros((0, 3)))


def test_face_choice_largest_versus_best_and_no_face():
    refs = np.array([[1.0, 0.0]])
    stranger, subject = np.array([0.0, 1.0]), np.array([1.0, 0.0])
    largest = score_faces([stranger, subject], refs, "largest")
    best = score_faces([stranger, subject], refs, "best")
    assert (largest.face_index, largest.value("max")) == (0, pytest.approx(0.0))
    assert (best.face_index, best.value("max")) == (1, pytest.approx(1.0))
    # A face without an embedding is skipped; no embedded face at all is a recorded outcome.
    assert score_faces([None, subject], refs).face_index == 1
    none = score_faces([], refs)
    assert not none.face_found and none.value("max") is None and none.n_faces == 0


def test_memorisation_flag_uses_the_closest_pair_of_references():
    refs = np.array([unit(1, 0, 0), unit(1, 1, 0)])  # pairwise similarity 0.7071
    threshold = reference_baseline(refs).pairwise_max
    assert threshold == pytest.approx(1 / math.sqrt(2))
    assert score_faces([unit(1, 0.01, 0)], refs, memorisation_threshold=threshold).memorised
    assert not score_faces([unit(0, 0.3, 1)], refs, memorisation_threshold=threshold).memorised


def test_group_statistics_against_hand_computed_values():
    stats = group_statistics("e10", [0.5, None, 0.2, 0.8, 0.3], n_errors=1, n_memorised=1)
    assert stats.n_images == 6 and stats.n_errors == 1 and stats.n_faces == 4
    assert stats.no_face_rate == pytest.approx(1 / 5)  # of the readable images
    assert stats.mean == pytest.approx(0.45)
    assert stats.median == pytest.approx(0.4)
    # sample std: deviations 0.05, -0.25, 0.35, -0.15 -> squares sum 0.21 -> /3
    assert stats.std == pytest.approx(math.sqrt(0.21 / 3))
    assert (stats.min, stats.max) == (pytest.approx(0.2), pytest.approx(0.8))
    assert stats.top3_mean == pytest.approx((0.8 + 0.5 + 0.3) / 3)
    low, high = stats.ci95
    assert 0.2 <= low < stats.mean < high <= 0.8
    assert stats.as_dict()["ci95"] == [low, high]


def test_group_statistics_without_faces_and_with_one_face():
    empty = group_statistics("none", [None, None])
    assert empty.n_faces == 0 and empty.no_face_rate == 1.0
    assert empty.mean is None and empty.std is None and empty.ci95 is None
    one = group_statistics("one", [0.42])
    assert one.mean == pytest.approx(0.42) and one.std is None and one.ci95 == (0.42, 0.42)


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    values = np.linspace(0.1, 0.9, 25)
    first, again = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert first == again
    assert bootstrap_ci(values, seed=4) != first
    assert first[0] < values.mean() < first[1]
    # Standard error of the mean ~ std/sqrt(n); the 95% interval is about +-1.96 SE wide.
    se = values.std(ddof=0) / math.sqrt(values.size)
    assert (first[1] - first[0]) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_reference_baseline_leave_one_out():
    refs = np.array([unit(1, 0, 0), unit(1, 1, 0), unit(0, 1, 0)])
    base = reference_baseline(refs, "max")
    # ref0: best of (0.7071, 0); ref1: best of (0.7071, 0.7071); ref2: best of (0, 0.7071)
    assert base.loo == pytest.approx([1 / math.sqrt(2)] * 3)
    mean_base = reference_baseline(refs, "mean")
    assert mean_base.loo == pytest.approx([1 / (2 * math.sqrt(2)), 1 / math.sqrt(2), 1 / (2 * math.sqrt(2))])
    assert mean_base.mean == pytest.approx(np.mean(mean_base.loo))
    single = reference_baseline(refs[:1])
    assert single.mean is None and single.pairwise_max is None and single.outliers == []


def test_reference_outliers_flag_a_different_person():
    rng = np.random.default_rng(0)
    person = unit(*rng.normal(size=64))
    same = [normalize_noise(person, rng, 0.6) for _ in range(5)]
    stranger = unit(*rng.normal(size=64))
    refs = np.array(same + [stranger])
    pairwise = refs @ refs.T
    assert reference_outliers(pairwise) == [5]
    assert reference_outliers(np.array(same) @ np.array(same).T) == []


def normalize_noise(vector, rng, noise):
    v = vector + noise * rng.normal(size=vector.size) / math.sqrt(vector.size)
    return v / np.linalg.norm(v)
