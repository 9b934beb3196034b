"""Scoring in-memory images (what the host adapters pass) gives the same answers as scoring files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from likeness_assets import PEOPLE
from lora_likeness.images import list_images
from lora_likeness.pipeline import ScoreSettings, build_references, references_from_arrays, score_arrays
from lora_likeness.references import NoReferencesError
from lora_likeness.report import write_report


def rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_arrays_score_like_files(engine, cache, tmp_path):
    ref_paths = list_images(PEOPLE / "obama")
    refs_from_files = build_references(engine, PEOPLE / "obama")
    refs = references_from_arrays(engine, [rgb(p) for p in ref_paths], [p.name for p in ref_paths], cache=cache)
    assert refs.n == refs_from_files.n
    assert refs.baseline.mean == pytest.approx(refs_from_files.baseline.mean, abs=0.02)

    others = list_images(PEOPLE / "angelina_jolie")[:2]
    arrays = [rgb(p) for p in others] + [np.zeros((64, 64, 3), np.float32)]  # float 0..1 like ComfyUI, no face
    groups = [("jolie e1 @1", {"run": "jolie", "epoch": 1, "strength": 1.0})] * 2 + [("blank", {})]
    run = score_arrays(engine, refs, arrays, groups=groups, settings=ScoreSettings(group_by="none"), cache=cache)
    assert [g.label for g in run.groups] == ["jolie e1 @1", "blank"]
    assert run.images[2].score.face_found is False and run.images[2].error is None
    assert all(i.score.value("max") < 0.4 for i in run.images[:2])  # another person

    # Second pass hits the cache (content hash of the arrays).
    misses = cache.misses
    score_arrays(engine, refs, arrays, groups=groups, cache=cache)
    assert cache.misses == misses

    files = write_report(run, tmp_path / "out")
    assert files["contact_sheet.png"].stat().st_size > 0  # drawn from the arrays, no files needed


def test_no_face_in_any_reference_is_a_clear_error(engine):
    with pytest.raises(NoReferencesError, match="reference 1"):
        references_from_arrays(engine, [np.full((64, 64, 3), 127, np.uint8)])
