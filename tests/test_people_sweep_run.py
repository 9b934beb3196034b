"""`likeness sweep --people` on the tiny random model: one prompt per subset the dataset covers, every
person scored in every image, and the recommendation best for the worst-served person. The tiny model
draws no faces, so after a first sweep its PNGs are replaced (their recorded parameters kept, so the
second sweep reuses them) by pictures pasted from the real photos with known people in them."""

from __future__ import annotations

import json
import shutil

import pytest
from likeness_assets import PACK_DIR, PEOPLE
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_people_images import portrait
from test_sweep import tiny  # noqa: F401 - the module fixture: a tiny base and a Kohya run (e1, e2, final)
from training_stack import require_training_stack

require_training_stack()

from lora_likeness.sweep.config import SweepConfig  # noqa: E402


@pytest.fixture()
def family_dataset(tmp_path):
    """A `likeness prepare --identity` report (people, their reference folders, coverage) and the held-out photos."""
    held = {}
    for trigger, folder in (("ohwxa", "obama"), ("ohwxb", "lfw_colin_powell")):
        photos = sorted((PEOPLE / folder).iterdir())
        (tmp_path / "refs" / trigger).mkdir(parents=True)
        for photo in photos[:-1]:
            shutil.copy(photo, tmp_path / "refs" / trigger / photo.name)
        held[trigger] = photos[-1]
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    report = {"settings": {"class_word": "man", "identities": [
        {"name": "ohwxa", "refs": str(tmp_path / "refs" / "ohwxa"), "class_word": None},
        {"name": "ohwxb", "refs": str(tmp_path / "refs" / "ohwxb"), "class_word": None}]},
        "coverage": [{"identities": ["ohwxa"], "exactly": 3, "at_least": 5}, {"identities": ["ohwxb"], "exactly": 2, "at_least": 4},
                     {"identities": ["ohwxa", "ohwxb"], "exactly": 2, "at_least": 2}]}
    (dataset / "report.json").write_text(json.dumps(report))
    return dataset, held


def repaint(path, photos) -> None:
    """Replace a sweep PNG's pixels by ``photos`` side by side, keeping its text chunks (its parameters)."""
    with Image.open(path) as image:
        texts = {k: v for k, v in image.info.items() if isinstance(v, str)}
    tiles = [portrait(p, 300) for p in photos]
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + 20 * (len(tiles) + 1), 340), (200, 200, 200))
    x = 20
    for tile in tiles:
        canvas.paste(tile, (x, 20))
        x += tile.width + 20
    info = PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    canvas.save(path, pnginfo=info)


def test_family_sweep_recommends_the_checkpoint_best_for_everyone(tiny, family_dataset, tmp_path):  # noqa: F811
    from lora_likeness.sweep.engine import run_sweep

    base, loras = tiny
    dataset, held = family_dataset
    config = SweepConfig(base=base, loras=loras, people=dataset, out=tmp_path / "sweep", seeds=[1], strengths=[1.0], steps=1,
                         width=64, height=64, sampler="euler", pack=str(PACK_DIR), providers="cpu", device="cpu", adherence=False)
    first = run_sweep(config)
    assert first.config.prompts == ["photo of ohwxa man", "photo of ohwxb man", "photo of ohwxa man and ohwxb man"]
    assert len(first.images) == 4 * 3  # (no LoRA + e1, e2, final) x 3 prompts x 1 seed
    assert any(w.startswith("ohwxa never appears") for w in first.people.warnings)  # noise has no faces
    assert (tmp_path / "sweep" / "people.json").is_file()

    # e2 draws whoever its prompt names; e1 and the final checkpoint put ohwxa's face on everyone.
    for record in first.images:
        wanted = [name for name in ("ohwxa", "ohwxb") if name in record.prompt]
        if record.checkpoint == "e2":
            repaint(record.path, [held[name] for name in wanted])
        else:
            repaint(record.path, [held["ohwxa"]] * len(wanted))
    second = run_sweep(config)
    assert (second.generated, second.reused) == (0, 12)
    best = second.people.best
    assert (best.cell.checkpoint, best.cell.strength) == ("e2", 1.0)
    assert best.stats.all_present_rate == 1.0 and best.stats.blend_rate == 0.0
    final = next(r for r in second.people.results if r.cell.checkpoint == "final (e3)")
    assert final.stats.worst_served == "ohwxb" and final.stats.people["ohwxb"].presence_rate == 0.0
    assert final.stats.blend_rate == pytest.approx(1 / 3)  # the pair prompt shows ohwxa twice
    pair = next(r for r in second.images if r.checkpoint == "final (e3)" and "and" in r.prompt)
    assert pair.extra["blended"] is True and pair.extra["people"]["ohwxb"]["found"] is False
    saved = json.loads((tmp_path / "sweep" / "people.json").read_text())
    assert saved["best"]["checkpoint"] == "e2" and saved["best"]["worst_served"] in ("ohwxa", "ohwxb")
    assert "Best for the whole family: e2 @ 1" in second.people.sentence()
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert "<h2>Family</h2>" in page and "<tr class='best'><td>e2 @ 1</td>" in page
    assert any(p.name == "people.json" for p in (tmp_path / "sweep" / "previous").rglob("*.json"))  # the first run's, kept


def test_family_sweep_needs_refs_or_people(tiny, tmp_path):  # noqa: F811
    from lora_likeness.sweep.config import SweepConfigError

    base, loras = tiny
    with pytest.raises(SweepConfigError, match="--refs is required \\(or --people"):
        SweepConfig(base=base, loras=loras, out=tmp_path / "s", prompts=["x"]).validate()
    folder = tmp_path / "people"
    folder.mkdir()
    with pytest.raises(SweepConfigError, match="--prompt is required"):  # a plain folder of people makes no prompts
        SweepConfig(base=base, loras=loras, people=folder, out=tmp_path / "s").validate()


def test_run_with_identities_prepares_a_family_and_sweeps_every_person(tmp_path):
    """`likeness run --identity …`: the dataset is labelled per person, the LoRA is named after the people,
    and the sweep makes one prompt per group the dataset covers and scores each person."""
    from test_sweep_run import SWEEP, TOKENIZER, TRAIN

    from lora_likeness.dataset.config import IdentitySpec
    from lora_likeness.sweep.run import RunConfig, run_all
    from lora_likeness.training.tiny import write_tiny_model

    base = write_tiny_model(tmp_path / "base", TOKENIZER)
    photos = tmp_path / "photos"
    photos.mkdir()
    for folder in ("obama", "lfw_colin_powell"):
        for photo in sorted((PEOPLE / folder).iterdir()):
            shutil.copy(photo, photos / photo.name)
    identities = [IdentitySpec("ohwxa", PEOPLE / "obama"), IdentitySpec("ohwxb", PEOPLE / "lfw_colin_powell")]
    config = RunConfig(photos=photos, trigger=None, class_word="man", base=base, out=tmp_path / "run", pack=str(PACK_DIR),
                       providers="cpu", epochs=1, resolution=512, identities=identities, train_overrides=dict(TRAIN),
                       sweep_overrides={**SWEEP, "seeds": [1], "strengths": [1.0], "steps": 1})
    result = run_all(config)
    assert {name for kept in result.dataset.kept for name in kept.identities} == {"ohwxa", "ohwxb"}
    assert result.training.final.name == "ohwxa_ohwxb.safetensors"
    assert result.sweep.config.prompts == ["photo of ohwxa man", "photo of ohwxb man"]  # each alone: no photo of the pair
    assert result.sweep.people is not None and (tmp_path / "run" / "sweep" / "people.json").is_file()
    assert any("never appears" in w for w in result.sweep.people.warnings)  # a tiny random model draws no faces
