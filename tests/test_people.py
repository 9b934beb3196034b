"""Several people per image (core/people.py) on synthetic embeddings whose answers are worked out by hand.

Geometry (4-d, unit vectors; the max aggregation):
    A's photos a1 = (1, 0, 0, 0), a2 = (0.8, 0.6, 0, 0)     a1·a2 = 0.8
    B's photos b1 = (0.6, 0, 0.8, 0), b2 = (0, 0, 0.8, 0.6)  b1·b2 = 0.64
    a1·b1 = 0.6, a2·b1 = 0.48, every other A·B product is 0.
So genuine_low(A) = 0.8, impostor_high(A) = max(b1 vs A, b2 vs A) = 0.6, threshold(A) = 0.7;
genuine_low(B) = 0.64, impostor_high(B) = max(a1 vs B, a2 vs B) = 0.6, threshold(B) = 0.62.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lora_likeness.people import (
    PeopleError,
    PeopleSet,
    assign_faces,
    expected_from_prompt,
    parse_person_option,
    people_group_statistics,
    people_in_image,
)
from lora_likeness.references import ReferencePhoto, ReferenceSet
from lora_likeness.scoring import reference_baseline

A1, A2 = np.array([1.0, 0, 0, 0]), np.array([0.8, 0.6, 0, 0])
B1, B2 = np.array([0.6, 0, 0.8, 0]), np.array([0, 0, 0.8, 0.6])


def reference_set(*rows: np.ndarray) -> ReferenceSet:
    embeddings = np.stack(rows).astype(np.float32)
    photos = [ReferencePhoto(path=f"p{i}.jpg", n_faces=1, row=i, face_index=0) for i in range(len(rows))]
    return ReferenceSet(embeddings=embeddings, photos=photos, baseline=reference_baseline(embeddings, "max"))


@pytest.fixture()
def family() -> PeopleSet:
    return PeopleSet.build({"A": reference_set(A1, A2), "B": reference_set(B1, B2)})


def test_thresholds_come_from_the_references(family):
    assert family.genuine_low == pytest.approx([0.8, 0.64])
    assert family.impostor_high == pytest.approx([0.6, 0.6])
    assert family.thresholds == pytest.approx([0.7, 0.62])
    # cross[p, q]: mean similarity of q's photos to p's references; A's photos to B: (0.6 + 0.48) / 2.
    assert family.cross[0, 1] == pytest.approx(0.3)
    assert family.cross[1, 0] == pytest.approx(0.54)
    assert family.warnings == []


def test_one_person_threshold_is_half_their_least_typical_photo():
    alone = PeopleSet.build({"A": reference_set(A1, A2)})
    assert alone.thresholds == pytest.approx([0.4])


def test_one_photo_takes_the_most_alike_other_person_as_threshold():
    mixed = PeopleSet.build({"A": reference_set(A1), "B": reference_set(B1, B2)})
    # A: no leave-one-out; B's photos reach at most a1·b1 = 0.6. B: a1 reaches 0.6 -> (0.64 + 0.6) / 2.
    assert mixed.thresholds == pytest.approx([0.6, 0.62])
    assert any("one usable reference photo" in w for w in mixed.warnings)


def test_single_photo_and_nobody_else_is_refused():
    with pytest.raises(PeopleError, match="at least two photos"):
        PeopleSet.build({"A": reference_set(A1)})


def test_bad_names_are_refused():
    with pytest.raises(PeopleError, match="given twice"):
        PeopleSet.build([("A", reference_set(A1, A2)), ("A", reference_set(B1, B2))])
    with pytest.raises(PeopleError, match="cannot name a person"):
        PeopleSet.build({"a=b": reference_set(A1, A2)})
    with pytest.raises(PeopleError, match="no people"):
        PeopleSet.build({})


def test_people_alike_as_their_own_photos_are_warned_about():
    # C's photos: c1 = a1 exactly, so a real photo of C is as like A as A's own photos.
    with_twin = PeopleSet.build({"A": reference_set(A1, A2), "C": reference_set(A1, B2)})
    assert any("cannot be told apart" in w for w in with_twin.warnings)


def test_assignment_is_optimal_not_greedy():
    # Greedy (best pair first) gives face 0 to person 0 (0.95) and face 1 to person 1: margins
    # 0.25 + 0.01 = 0.26. The optimum swaps them: 0.28 + 0.20 = 0.48.
    sims = np.array([[0.95, 0.90], [0.90, 0.63]])
    assert assign_faces(sims, np.array([0.7, 0.62])) == [(0, 1), (1, 0)]


def test_assignment_drops_pairs_below_threshold():
    sims = np.array([[0.69, 0.1], [0.2, 0.9]])
    assert assign_faces(sims, np.array([0.7, 0.62])) == [(1, 1)]
    assert assign_faces(np.zeros((0, 2)), np.array([0.7, 0.62])) == []


def test_both_people_found(family):
    image = people_in_image(family, [A1, B2])
    assert image.people["A"].found and image.people["A"].face_index == 0 and image.people["A"].score == pytest.approx(1.0)
    assert image.people["B"].found and image.people["B"].face_index == 1 and image.people["B"].score == pytest.approx(1.0)
    assert not image.blended and image.all_present and image.unmatched_faces == []


def test_one_person_missing(family):
    image = people_in_image(family, [A1])  # a1 is 0.6 like B: under B's 0.62
    assert image.people["A"].found and not image.people["B"].found
    assert image.people["B"].score is None and image.people["B"].face_index is None
    assert not image.all_present and not image.blended


def test_same_face_twice_is_a_duplicated_person(family):
    image = people_in_image(family, [A1, A1])
    assert image.people["A"].face_index == 0 and image.people["A"].also_faces == (1,)
    assert not image.people["B"].found
    assert image.duplicated == ["A"] and image.blended


def test_face_between_two_people_is_a_blend(family):
    mix = (A1 + B1) / np.linalg.norm(A1 + B1)  # 2/sqrt(5) = 0.894 like a1 and like b1
    image = people_in_image(family, [mix])
    assert image.faces[0].accepted_by == ("A", "B") and image.blend_faces == [0]
    found = [name for name, person in image.people.items() if person.found]
    assert len(found) == 1 and image.people[found[0]].score == pytest.approx(2 / np.sqrt(5))
    assert image.blended


def test_face_like_nobody_is_unmatched(family):
    stranger = np.array([0, 1.0, 0, 0])  # 0.6 like a2 (< 0.7), 0 like B
    image = people_in_image(family, [A1, stranger, None])
    assert image.unmatched_faces == [1]
    assert [f.index for f in image.faces] == [0, 1]  # the face without an embedding is skipped


def test_expected_people_limit_presence(family):
    image = people_in_image(family, [A1], expected=["A"])
    assert image.expected == ("A",) and image.all_present
    assert image.people["B"].expected is False


def test_expected_from_prompt_matches_whole_trigger_words():
    triggers = {"dad": "ohwxdad", "mum": "ohwxmum", "kid": "sks kid"}
    assert expected_from_prompt("photo of OHWXDAD and ohwxmum, christmas", triggers) == ["dad", "mum"]
    assert expected_from_prompt("ohwxdaddy at the beach with sks kid", triggers) == ["kid"]
    assert expected_from_prompt("a landscape", triggers) == []
    assert expected_from_prompt(None, triggers) is None


def test_group_statistics_by_hand(family):
    images = [
        people_in_image(family, [A1, B2]),  # both found, scores 1.0 / 1.0
        people_in_image(family, [A2, B1]),  # A: a2 -> 1.0, B: b1 -> 1.0
        people_in_image(family, [A1]),  # B missing
        people_in_image(family, [A1, A1]),  # A duplicated, B missing
    ]
    stats = people_group_statistics(family, images, n_boot=200)
    a, b = stats.people["A"], stats.people["B"]
    assert (a.n_expected, a.n_found, a.presence_rate, a.mean) == (4, 4, 1.0, pytest.approx(1.0))
    assert (b.n_expected, b.n_found, b.presence_rate, b.mean) == (4, 2, 0.5, pytest.approx(1.0))
    assert b.served == pytest.approx(0.5)  # (1 + 1 + 0 + 0) / 4
    assert stats.all_present_rate == 0.5 and stats.blend_rate == 0.25
    assert a.n_duplicated == 1
    assert stats.worst_served == "B"
    assert a.ci95 == pytest.approx((1.0, 1.0))


def test_worst_served_is_relative_to_each_persons_own_baseline():
    pad = lambda v: np.append(v, 0.0)  # noqa: E731 - a fifth axis for faces like nobody's photos
    family5 = PeopleSet.build({"A": reference_set(pad(A1), pad(A2)), "B": reference_set(pad(B1), pad(B2))})
    # A's face: 0.75 like a1, 0.8*0.75 - 0.6*0.661 = 0.203 like a2, 0.45 like b1. A's baseline
    # (mean leave-one-out) is 0.8, so A is served at 0.75 / 0.8 = 94%.
    a_face = np.array([0.75, -np.sqrt(1 - 0.75 ** 2), 0, 0, 0])
    # B's face: 0.63 like b2, 0.403 like b1, 0 like A. B's baseline is 0.64: 0.63 / 0.64 = 98%.
    b_face = 0.63 * pad(B2) + np.sqrt(1 - 0.63 ** 2) * np.eye(5)[4]
    image = people_in_image(family5, [a_face, b_face])
    assert image.people["A"].score == pytest.approx(0.75) and image.people["B"].score == pytest.approx(0.63)
    stats = people_group_statistics(family5, [image], n_boot=50)
    assert stats.worst_served == "A"  # although B's raw score is the lower one


def test_person_option():
    assert parse_person_option("ohwxdad=refs/dad") == ("ohwxdad", Path("refs/dad"))
    for bad in ("refs/dad", "=refs/dad", "dad=", "a,b=refs"):
        with pytest.raises(PeopleError):
            parse_person_option(bad)


def test_prompt_text_from_a1111_and_comfyui_metadata():
    from lora_likeness.labels import prompt_from_metadata

    infotext = "photo of ohwxdad and ohwxmum <lora:family:0.8>\nNegative prompt: ohwxkid\nSteps: 20, Seed: 1"
    assert prompt_from_metadata({"parameters": infotext}) == "photo of ohwxdad and ohwxmum <lora:family:0.8>"
    assert prompt_from_metadata({"parameters": "ohwxkid at the beach\nSteps: 20, Seed: 1"}) == "ohwxkid at the beach"
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"positive": ["6", 0], "negative": ["7", 0], "model": ["4", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "ohwxdad and ohwxkid", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ohwxmum", "clip": ["4", 1]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
    }
    import json

    assert prompt_from_metadata({"prompt": json.dumps(graph)}) == "ohwxdad and ohwxkid"  # not the negative's ohwxmum
    assert prompt_from_metadata({}) is None
