"""Family sweeps (core/people_sweep.py): prompts per covered subset, and the checkpoint best for the
worst-served person, on the hand-computed synthetic family of test_people.py."""

from __future__ import annotations

import json

import pytest
from test_people import A1, A2, B1, B2, reference_set

from lora_likeness.people import PeopleSet, people_in_image
from lora_likeness.people_sweep import PeopleCell, people_phrase, read_dataset_people, recommend_for_people, subset_prompts


@pytest.fixture()
def family() -> PeopleSet:
    return PeopleSet.build({"A": reference_set(A1, A2), "B": reference_set(B1, B2)})


def test_prompts_follow_the_datasets_coverage(tmp_path):
    (tmp_path / "refs_dad").mkdir()
    report = {
        "settings": {"class_word": "person", "identities": [
            {"name": "ohwxdad", "refs": str(tmp_path / "refs_dad"), "class_word": "man"},
            {"name": "ohwxmum", "refs": "refs_mum", "class_word": None},
            {"name": "ohwxkid", "refs": "refs_kid", "class_word": "girl"}]},
        "coverage": [
            {"identities": ["ohwxdad"], "exactly": 5, "at_least": 9},
            {"identities": ["ohwxmum"], "exactly": 4, "at_least": 8},
            {"identities": ["ohwxkid"], "exactly": 0, "at_least": 3},
            {"identities": ["ohwxdad", "ohwxmum"], "exactly": 2, "at_least": 4},
            {"identities": ["ohwxdad", "ohwxkid"], "exactly": 0, "at_least": 2},
            {"identities": ["ohwxmum", "ohwxkid"], "exactly": 0, "at_least": 2},
            {"identities": ["ohwxdad", "ohwxmum", "ohwxkid"], "exactly": 2, "at_least": 2}],
    }
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "report.json").write_text(json.dumps(report))
    people = read_dataset_people(dataset)
    assert people.names == ("ohwxdad", "ohwxmum", "ohwxkid")
    assert people.refs["ohwxdad"] == tmp_path / "refs_dad" and people.refs["ohwxmum"] == tmp_path / "refs_mum"
    assert people.covered == (("ohwxdad",), ("ohwxmum",), ("ohwxdad", "ohwxmum"), ("ohwxdad", "ohwxmum", "ohwxkid"))
    assert subset_prompts(people) == [
        "photo of ohwxdad man", "photo of ohwxmum person", "photo of ohwxdad man and ohwxmum person",
        "photo of ohwxdad man, ohwxmum person and ohwxkid girl"]
    assert people_phrase(["a", "b"]) == "a and b"


def test_single_person_dataset_has_no_people(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"settings": {"identities": []}}))
    assert read_dataset_people(tmp_path) is None
    assert read_dataset_people(tmp_path / "missing") is None


def test_recommendation_is_best_for_the_worst_served_person(family):
    cells = [
        # e1: A at 1.0 everywhere, B always missing: B served 0 -> worst relative 0.
        PeopleCell("e1", 1.0, 1, 0, [people_in_image(family, [A1]) for _ in range(2)]),
        # e2: both found at 1.0 -> A 1.0/0.8, B 1.0/0.64: worst is A at 125%.
        PeopleCell("e2", 1.0, 2, 1, [people_in_image(family, [A1, B2]) for _ in range(2)]),
        # e3: half the images show A twice (B missing, blended) -> B served 0.5 / 0.64 = 78%.
        PeopleCell("e3", 1.0, 3, 2, [people_in_image(family, [A1, B2]), people_in_image(family, [A1, A1])]),
        PeopleCell("no LoRA", None, None, -1, [people_in_image(family, [A1, B2])]),
    ]
    recommendation = recommend_for_people(family, cells, n_boot=100)
    assert recommendation.best.cell.checkpoint == "e2"
    assert recommendation.best.worst_relative == pytest.approx(1.0 / 0.8)
    assert recommendation.best.stats.worst_served == "A"
    e3 = next(r for r in recommendation.results if r.cell.checkpoint == "e3")
    assert e3.stats.worst_served == "B" and e3.worst_relative == pytest.approx(0.5 / 0.64)
    assert any("blending rises" in w and "e3" in w for w in recommendation.warnings)
    assert "Best for the whole family: e2 @ 1" in recommendation.sentence()
    assert recommendation.as_dict()["best"]["checkpoint"] == "e2"


def test_a_person_who_never_appears_is_warned_about(family):
    cells = [PeopleCell(f"e{i}", 1.0, i, i, [people_in_image(family, [A1])]) for i in (1, 2)]
    recommendation = recommend_for_people(family, cells, n_boot=50)
    assert any(w.startswith("B never appears") for w in recommendation.warnings)
    # Every cell misses B: they would all tie at 0 and the first would win; no cell serves the family.
    assert recommendation.best is None
    assert recommendation.reason == "no cell shows every person: B never appears"
    assert recommendation.sentence() == ("No recommendation for the whole family: no cell shows every person: B never appears. "
                                         "Best cell per person: A e1 @ 1 (1.000 (present 100%)), B missing (0%) in every cell.")
    data = json.loads(json.dumps(recommendation.as_dict()))
    assert data["best"] is None and data["reason"] == recommendation.reason
    assert data["best_per_person"] == {"A": {"checkpoint": "e1", "strength": 1.0, "epoch": 1, "served": 1.0, "mean": 1.0, "presence_rate": 1.0}}
    assert [cell["checkpoint"] for cell in data["cells"]] == ["e1", "e2"]  # the per-person breakdown is kept


def test_no_cell_for_the_family_when_each_cell_misses_someone_else(family):
    cells = [PeopleCell("e1", 1.0, 1, 0, [people_in_image(family, [A1])]),   # B missing
             PeopleCell("e2", 1.0, 2, 1, [people_in_image(family, [B2])])]   # A missing
    recommendation = recommend_for_people(family, cells, n_boot=50)
    assert recommendation.best is None
    assert recommendation.reason == "no cell shows every person: e1 @ 1 misses B; e2 @ 1 misses A"
    assert {name: r.cell.checkpoint for name, r in recommendation.best_per_person.items()} == {"A": "e1", "B": "e2"}
    assert recommendation.lines()[0].startswith("No recommendation for the whole family: no cell shows every person")



def test_the_sentence_names_every_expected_person_a_missing_one_as_missing(family):
    # e1: A found in both images, B found in one of two; e2: A found, B never (expected in both).
    cells = [PeopleCell("e1", 1.0, 1, 0, [people_in_image(family, [A1, B2]), people_in_image(family, [A1])]),
             PeopleCell("e2", 0.5, 2, 1, [people_in_image(family, [A1]) for _ in range(2)])]
    recommendation = recommend_for_people(family, cells, n_boot=50)
    e2 = recommendation.result_for("e2", 0.5)
    recommendation.best = e2  # the sentence of a cell where B is expected but never found
    sentence = recommendation.sentence()
    assert "Per person: A 1.000 (present 100%), B missing (0%);" in sentence
