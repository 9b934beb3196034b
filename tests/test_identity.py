"""Identity scores on real photos with the real face pack in ../shared."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from likeness_assets import FACES, PACK_DIR, PEOPLE
from lora_likeness.images import decode_image, list_images
from lora_likeness.pipeline import analyze_paths
from lora_likeness.references import NoReferencesError, ReferenceSet
from lora_likeness.scoring import score_embedding


@pytest.fixture(scope="module")
def people(engine):
    """identity -> list of (path, largest-face embedding) for faces/people/*."""
    found = {}
    for folder in sorted(p for p in PEOPLE.iterdir() if p.is_dir()):
        paths = list_images(folder)
        results = analyze_paths(engine, paths)
        assert all(r.faces for r in results), [str(r.path) for r in results if not r.faces]
        found[folder.name] = [(p, r.faces[0].embedding) for p, r in zip(paths, results)]
    return found


def test_every_identity_scores_its_own_photos_above_every_other_identity(people):
    assert len(people) >= 4
    for name, own in people.items():
        own_embeddings = np.array([e for _, e in own])
        # Each own photo against the OTHER own photos (scoring a photo against itself proves nothing).
        own_scores = [
            score_embedding(own_embeddings[i], np.delete(own_embeddings, i, axis=0)).score_max for i in range(len(own))
        ]
        other_scores = [
            (other, path.name, score_embedding(e, own_embeddings).score_max)
            for other, photos in people.items() if other != name for path, e in photos
        ]
        worst_own = min(own_scores)
        best_other = max(other_scores, key=lambda item: item[2])
        assert worst_own > best_other[2], f"{name}: own photo scored {worst_own:.3f}, {best_other} scored higher"


def test_embeddings_match_insightface_face_analysis_in_bgr(engine):
    """Our pipeline feeds insightface BGR like FaceAnalysis does; RGB would shift the embedding."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(PACK_DIR), providers=["CPUExecutionProvider"], allowed_modules=["detection", "recognition"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    path = PEOPLE / "obama" / "obama_02_speech.jpg"
    theirs = max(app.get(cv2.imread(str(path))), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    reference = theirs.normed_embedding
    ours = engine.analyze(decode_image(path)).faces[0]
    assert float(ours.embedding @ reference) > 0.97
    # The same crop fed as RGB (the peer node's bug) agrees clearly less.
    from insightface.utils import face_align

    bgr = cv2.imread(str(path))
    crop = face_align.norm_crop(bgr, theirs.kps)
    wrong = engine.recognizer.get_feat(crop[:, :, ::-1].copy()).ravel()
    wrong = wrong / np.linalg.norm(wrong)
    assert float(wrong @ reference) < float(ours.embedding @ reference) - 0.01


def test_group_photo_best_face_finds_the_subject(engine, people):
    refs = ReferenceSet.from_results(analyze_paths(engine, list_images(PEOPLE / "obama")))
    result = analyze_paths(engine, [FACES / "group_photos" / "two_people.jpg"])[0]
    assert len(result.faces) >= 2
    from lora_likeness.scoring import score_faces

    embeddings = [f.embedding for f in result.faces]
    largest = score_faces(embeddings, refs.embeddings, "largest")
    best = score_faces(embeddings, refs.embeddings, "best")
    assert best.value("max") > 0.5 > largest.value("max")  # Biden is the larger face here
    assert best.face_index != largest.face_index


def test_no_face_images_are_recorded_outcomes(engine):
    blank = np.full((256, 256, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    for array in (blank, noise):
        result = engine.analyze_array(array)
        assert result.ok and result.faces == []


def test_a_face_filling_the_frame_is_found(engine):
    """An aligned 112x112 crop (face edge to edge, like an SD close-up) needs the padded retry."""
    result = engine.analyze(decode_image(FACES / "others" / "tom_hanks_01.png"))
    assert len(result.faces) == 1
    box = result.faces[0].box
    assert (box[2] - box[0]) > 60


def test_reference_set_baseline_outliers_and_faceless_references(engine, tmp_path):
    Image.new("RGB", (64, 64), (200, 200, 200)).save(tmp_path / "blank.png")
    paths = list_images(PEOPLE / "lfw_colin_powell") + [FACES / "others" / "biden_02.jpg", tmp_path / "blank.png"]
    refs = ReferenceSet.from_results(analyze_paths(engine, paths), [p.name for p in paths])
    assert refs.n == 7
    by_name = {p.path: p for p in refs.photos}
    assert by_name["biden_02.jpg"].outlier
    assert not any(by_name[p.name].outlier for p in paths[:6])
    assert by_name["blank.png"].row is None and by_name["blank.png"].error == "no face found"
    assert any("biden_02.jpg" in w and "different person" in w for w in refs.warnings)
    assert refs.baseline.mean is not None and -1 <= refs.baseline.min <= refs.baseline.max <= 1
    with pytest.raises(NoReferencesError, match="blank.png: no face found"):
        ReferenceSet.from_results(analyze_paths(engine, [tmp_path / "blank.png"]), ["blank.png"])
