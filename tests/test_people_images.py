"""Several people in real images: group pictures pasted from the real photos in ../shared/faces (each
person's last photo held out of their references), and the real group photos. Known answers:
who is pasted where, who is missing, who is pasted twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from likeness_assets import FACES, PEOPLE
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_likeness import pipeline
from lora_likeness.pipeline import ScoreSettings, score_folder
from lora_likeness.report import contact_sheet, people_table_text, report_json, report_markdown, summary_csv

SCHEMA = json.loads((Path(pipeline.__file__).parent / "report.schema.json").read_text())

FAMILY = {"obama": PEOPLE / "obama", "jolie": PEOPLE / "angelina_jolie", "powell": PEOPLE / "lfw_colin_powell"}


@pytest.fixture(scope="module")
def family_refs(tmp_path_factory):
    """Each person's photos but the last (held out: it is pasted into the group pictures)."""
    root = tmp_path_factory.mktemp("people")
    held_out = {}
    for name, folder in FAMILY.items():
        photos = sorted(folder.iterdir())
        (root / name).mkdir()
        for photo in photos[:-1]:
            shutil.copy(photo, root / name / photo.name)
        held_out[name] = photos[-1]
    return root, held_out


def portrait(path, height: int = 420) -> Image.Image:
    """A person's photo scaled to ``height`` px: three of them side by side make a 1200 px wide group."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        return image.resize((max(1, round(image.width * height / image.height)), height))


def group_picture(path, photos, prompt: str | None = None) -> None:
    tiles = [portrait(p) for p in photos]
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + 20 * (len(tiles) + 1), 460), (200, 200, 200))
    x = 20
    for tile in tiles:
        canvas.paste(tile, (x, 20))
        x += tile.width + 20
    info = None
    if prompt is not None:
        info = PngInfo()
        info.add_text("parameters", f"{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, Seed: 1")
    canvas.save(path, pnginfo=info)


@pytest.fixture(scope="module")
def generated(family_refs, tmp_path_factory):
    """e1/all_three.png, e1/obama_twice.png, e2/jolie_missing.png (prompts in A1111 infotext) and
    e2/no_prompt.jpg (jolie and powell, no metadata)."""
    root, held = family_refs
    images = tmp_path_factory.mktemp("generated")
    (images / "e1").mkdir()
    (images / "e2").mkdir()
    group_picture(images / "e1" / "all_three.png", [held["obama"], held["jolie"], held["powell"]], "photo of obama, jolie and powell")
    group_picture(images / "e1" / "obama_twice.png", [held["obama"], held["obama"]], "photo of obama and jolie")
    group_picture(images / "e2" / "jolie_missing.png", [held["obama"], held["powell"]], "photo of obama, jolie and powell, christmas")
    group_picture(images / "e2" / "no_prompt.jpg", [held["jolie"], held["powell"]])
    (images / "e2" / "broken.png").write_bytes(b"not a picture")  # unreadable: reported, not counted as anyone missing
    return images


@pytest.fixture(scope="module")
def scored(family_refs, generated):
    root, _ = family_refs
    images = generated
    from likeness_assets import PACK_DIR

    from lora_likeness.faces import FaceEngine

    engine = FaceEngine.load(PACK_DIR, providers="cpu")
    run = score_folder(engine, None, images, ScoreSettings(n_boot=200), people=[(n, root / n) for n in FAMILY], expect=["jolie", "powell"])
    return run


def image(run, name):
    return next(i for i in run.images if i.path.endswith(name))


def test_three_pasted_people_are_each_found_in_their_place(scored):
    item = image(scored, "all_three.png")
    people = item.people.people
    assert all(p.found for p in people.values()) and item.expected_from == "prompt"
    # Boxes left to right: the faces' x order is obama, jolie, powell.
    x = {name: float(item.result.faces[p.face_index].box[0]) for name, p in people.items()}
    assert x["obama"] < x["jolie"] < x["powell"]
    for index, name in enumerate(scored.people.names):
        assert people[name].score > scored.people.thresholds[index]
    assert not item.people.blended and item.people.all_present


def test_the_same_person_twice_is_a_blend_and_the_other_is_missing(scored):
    item = image(scored, "obama_twice.png")
    assert item.people.people["obama"].found and len(item.people.people["obama"].also_faces) == 1
    assert not item.people.people["jolie"].found
    assert item.people.blended and not item.people.all_present
    assert item.people.expected == ("obama", "jolie")


def test_a_missing_person_is_missing(scored):
    item = image(scored, "jolie_missing.png")
    assert item.people.people["obama"].found and item.people.people["powell"].found
    assert not item.people.people["jolie"].found and item.people.people["jolie"].expected
    assert not item.people.blended and not item.people.all_present


def test_without_a_prompt_the_expect_option_says_who_is_expected(scored):
    item = image(scored, "no_prompt.jpg")
    assert item.expected_from == "--expect" and item.people.expected == ("jolie", "powell")
    assert item.people.all_present and not item.people.people["obama"].found


def test_group_statistics_and_report(scored, tmp_path):
    e1 = scored.people_groups["e1"]
    assert e1.people["jolie"].presence_rate == 0.5  # found in all_three, missing in obama_twice
    assert e1.people["obama"].presence_rate == 1.0 and e1.all_present_rate == 0.5 and e1.blend_rate == 0.5
    assert e1.worst_served == "jolie"
    e2 = scored.people_groups["e2"]
    assert e2.people["jolie"].n_expected == 2 and e2.people["jolie"].presence_rate == 0.5
    assert e2.people["obama"].n_expected == 1  # no_prompt.jpg expects jolie and powell only
    report = json.loads(report_json(scored))
    jsonschema.validate(report, SCHEMA)
    broken = next(i for i in report["images"] if i["path"].endswith("broken.png"))
    assert broken["error"] and "people" not in broken
    first = next(i for i in report["images"] if i["path"].endswith("all_three.png"))
    assert set(first["people"]) == {"obama", "jolie", "powell"} and first["blended"] is False
    assert first["people"]["jolie"]["found"] is True and isinstance(first["people"]["jolie"]["face_index"], int)
    group = next(g for g in report["groups"] if g["label"] == "e1")
    assert group["people"]["jolie"]["presence_rate"] == 0.5 and group["all_present_rate"] == 0.5
    assert set(group["people"]["obama"]) >= {"mean", "ci95", "presence_rate"}
    assert report["people"]["people"]["obama"]["threshold"] > report["people"]["people"]["obama"]["impostor_high"]
    assert "| e1 | jolie (worst) |" in people_table_text(scored)
    assert "## People" in report_markdown(scored)
    assert any("blended faces" in w for w in scored.warnings)


def test_summary_csv_has_each_persons_mean_ci_presence_and_the_groups_rates(scored):
    import csv
    import io

    rows = {row["label"]: row for row in csv.DictReader(io.StringIO(summary_csv(scored)))}
    assert set(rows) == {"e1", "e2"}
    header = list(rows["e1"])
    assert header[:2] == ["label", "n_images"]  # the single-person columns first, as before
    assert header[-3:] == ["all_present_rate", "blend_rate", "worst_served"]
    e1 = rows["e1"]
    assert float(e1["jolie_presence_rate"]) == 0.5 and float(e1["obama_presence_rate"]) == 1.0
    assert float(e1["all_present_rate"]) == 0.5 and float(e1["blend_rate"]) == 0.5 and e1["worst_served"] == "jolie"
    for label, row in rows.items():
        for name, person in scored.people_groups[label].people.items():
            if person.mean is None:
                assert row[f"{name}_mean"] == "" and row[f"{name}_ci95_low"] == ""
                continue
            assert float(row[f"{name}_mean"]) == pytest.approx(person.mean, abs=1e-6)
            assert (float(row[f"{name}_ci95_low"]), float(row[f"{name}_ci95_high"])) == pytest.approx(person.ci95, abs=1e-6)
    assert rows["e2"]["obama_presence_rate"] == "1.000000"  # only jolie_missing.png expects obama in e2


def test_contact_sheet_boxes_each_face_in_its_persons_colour(scored, monkeypatch):
    from PIL import ImageDraw

    from lora_likeness.people import person_colour

    texts = []
    original = ImageDraw.ImageDraw.text

    def recording(self, xy, text, *args, **kwargs):
        texts.append(text)
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", recording)
    sheet = contact_sheet(scored, cell=200, columns=4)
    assert {"obama", "jolie", "powell"} <= set(texts)
    assert any(t.startswith("jolie –") for t in texts)  # missing in a picture that expected her
    pixels = {tuple(int(v) for v in row) for row in np.unique(np.asarray(sheet).reshape(-1, 3), axis=0)}
    assert person_colour(0) in pixels and person_colour(1) in pixels and person_colour(2) in pixels


def test_real_group_photos(engine, tmp_path):
    refs = tmp_path / "refs"
    (refs / "biden").mkdir(parents=True)
    for photo in sorted((FACES / "others").glob("biden_*.jpg")):
        shutil.copy(photo, refs / "biden" / photo.name)
    shutil.copytree(PEOPLE / "obama", refs / "obama")
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("obama_and_biden.jpg", "two_people.jpg", "insightface_t1_group.jpg"):
        shutil.copy(FACES / "group_photos" / name, images / name)
    from lora_likeness.pipeline import people_folders

    run = score_folder(engine, None, images, ScoreSettings(group_by="none", n_boot=100), people=people_folders(refs))
    both = image(run, "obama_and_biden.jpg").people
    assert both.people["obama"].found and both.people["biden"].found and not both.blended
    assert both.people["obama"].face_index != both.people["biden"].face_index
    assert both.unmatched_faces == [i for i in range(3) if i not in (both.people["obama"].face_index, both.people["biden"].face_index)]
    two = image(run, "two_people.jpg").people
    assert two.people["obama"].found and two.people["biden"].found  # face_recognition's two_people.jpg is them too
    strangers = image(run, "insightface_t1_group.jpg").people
    assert not any(p.found for p in strangers.people.values()) and len(strangers.unmatched_faces) == 6


def run_cli(args, capsys):
    from lora_likeness import cli

    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_scores_every_person(family_refs, generated, tmp_path, capsys):
    from likeness_assets import PACK_DIR

    root, _ = family_refs
    out = tmp_path / "report"
    code, stdout, _ = run_cli(["score", "--people", root, "--images", generated, "--pack", PACK_DIR, "--out", out,
                               "--expect", "jolie", "powell", "--quiet", "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["people"]["names"] == ["jolie", "obama", "powell"]  # sub-folders in natural order
    images = {i["path"]: i for i in report["images"]}
    assert images["e2/jolie_missing.png"]["people"]["jolie"]["found"] is False
    assert images["e1/obama_twice.png"]["blended"] is True
    assert images["e2/no_prompt.jpg"]["expected_from"] == "--expect"
    e1 = next(g for g in report["groups"] if g["label"] == "e1")
    assert e1["all_present_rate"] == 0.5 and e1["worst_served"] == "jolie"
    assert "People (each face assigned to one person)" in stdout and "jolie (worst)" in stdout
    assert "## People" in (out / "report.md").read_text()
    import csv

    rows = {r["path"]: r for r in csv.DictReader((out / "scores.csv").open())}
    missing = rows["e2/jolie_missing.png"]
    assert missing["jolie_score"] == "" and float(missing["obama_score"]) > 0.5 and missing["all_present"] == "False"
    assert rows["e1/obama_twice.png"]["blended"] == "True"


def test_cli_person_options_and_their_mistakes(family_refs, generated, tmp_path, capsys):
    from likeness_assets import PACK_DIR

    root, _ = family_refs
    base = ["score", "--images", generated / "e1", "--pack", PACK_DIR, "--quiet", "--no-cache"]
    code, _, err = run_cli([*base, "--person", f"obama={root / 'obama'}", "--person", f"jolie={root / 'jolie'}",
                            "--json", tmp_path / "r.json"], capsys)
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["people"]["names"] == ["obama", "jolie"]
    assert report["groups"][0]["people"]["jolie"]["presence_rate"] == 0.5
    code, _, err = run_cli([*base, "--person", str(root / "obama")], capsys)
    assert code == 2 and "NAME=FOLDER" in " ".join(err.split())
    code, _, err = run_cli([*base, "--person", f"obama={root / 'nobody'}"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli([*base, "--person", f"obama={root / 'obama'}", "--person", f"obama={root / 'jolie'}"], capsys)
    assert code == 2 and "given twice" in err
    code, _, err = run_cli([*base, "--people", root, "--expect", "bush"], capsys)
    assert code == 2 and "bush" in err
    code, _, err = run_cli([*base, "--refs", root / "obama", "--expect", "obama"], capsys)
    assert code == 2 and "--person or --people" in err


def test_scores_plot_has_a_curve_per_person(scored, monkeypatch):
    from matplotlib.axes import Axes

    from lora_likeness.report import plot_png

    labels = []
    original = Axes.errorbar

    def recording(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", recording)
    assert plot_png(scored)[:4] == b"\x89PNG"
    # jolie is expected in e1 (2: all_three, obama_twice) and e2 (2: jolie_missing, no_prompt via --expect), found in 2.
    assert "jolie (present 2/4)" in labels and "obama (present 3/3)" in labels



def test_memorisation_is_judged_per_person(family_refs, engine, tmp_path):
    """Each found person's face is checked against that person's photos with the single-person rule
    (closer to one of their photos than any two of their photos are to each other): an exact
    reference photo in a family picture is flagged for that person only; a held-out photo gets the
    same answer as a single-person run of that person would give."""
    root, held = family_refs
    images = tmp_path / "images"
    images.mkdir()
    copied = sorted((root / "obama").iterdir())[0]  # one of obama's reference photos, pasted as it is
    group_picture(images / "copied.png", [copied, held["jolie"]], "photo of obama and jolie")
    group_picture(images / "jolie.png", [held["jolie"]], "photo of jolie")
    group_picture(images / "powell.png", [held["powell"]], "photo of powell")
    run = score_folder(engine, None, images, ScoreSettings(n_boot=50), people=[(n, root / n) for n in FAMILY])
    copy = image(run, "copied.png")
    assert copy.people.people["obama"].found and copy.people.people["jolie"].found
    assert copy.score.memorised and copy.people.memorised == ["obama"]
    report = json.loads(report_json(run))
    jsonschema.validate(report, SCHEMA)
    data = report["images"][[i.path for i in run.images].index(copy.path)]
    assert data["memorised_people"] == ["obama"] and data["people"]["obama"]["memorised"] is True
    for name in ("jolie", "powell"):
        alone = score_folder(engine, root / name, images / f"{name}.png", ScoreSettings(n_boot=50))
        assert image(run, f"{name}.png").score.memorised == alone.images[0].score.memorised, name
    # powell's held-out photo is closer to one of his photos than any two of his are to each other
    # (a single-person run flags it), but not closer than the most alike pair of anyone's photos.
    assert image(run, "powell.png").score.memorised and not image(run, "jolie.png").score.memorised
