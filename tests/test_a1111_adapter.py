"""The A1111 adapter's logic that needs no A1111: LoRA tags in prompts, the LoRA axes' prompt
rewriting over a real Lora folder, grid means and infotexts, the recommendation under a scored grid
(records for the core, the caption band, the reports), scoring PIL images with the real face pack,
and the tab's "score a folder" action.

What needs A1111 itself (its X/Y/Z script, its Lora loader, its image saving) is tested against a
real A1111 in tests/integration/test_a1111_host.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections import namedtuple
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from likeness_assets import PACK_DIR, PEOPLE
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]


def _adapter():
    # The way scripts/likeness.py loads it: the bootstrap by path, then the package by name.
    spec = importlib.util.spec_from_file_location("lora_likeness_bootstrap", REPO / "likeness_bootstrap.py")
    bootstrap = sys.modules.get("lora_likeness_bootstrap")
    if bootstrap is None:
        bootstrap = importlib.util.module_from_spec(spec)
        sys.modules["lora_likeness_bootstrap"] = bootstrap
        spec.loader.exec_module(bootstrap)
    return bootstrap.load_a1111_adapter()


_adapter()
from lora_likeness.recommend import NO_LORA, cells_from_records, recommend
from lora_likeness_a1111 import axes, prompt_loras, recommendation, scorer, tab, xyz_hooks

OBAMA = sorted((PEOPLE / "obama").iterdir())
BUSH = sorted((PEOPLE / "lfw_george_w_bush").iterdir())


# --- <lora:…> tags ---------------------------------------------------------------------------------


def test_find_lora_tags_reads_multipliers_as_a1111s_lora_extension_does():
    tags = prompt_loras.find_lora_tags("<lora:a:0.5:0.8>, <lora:b:unet=0.3>, <lyco:c>, <hypernet:d:1>, <lora:e:te=0.2>")
    assert [(t.name, t.strength) for t in tags] == [("a", 0.8), ("b", 0.3), ("c", 1.0), ("e", 0.2)]


def test_set_lora_replaces_every_tag_of_the_run_keeps_other_loras_and_strength():
    prompt = "photo of jx, <lora:jx265:0.7>, <lora:detail:0.5>, <lora:jx265-000002:1>, smiling"
    out = prompt_loras.set_lora(prompt, "jx265-000010", None, prompt_loras.same_run("jx265"))
    assert out == "photo of jx, <lora:jx265-000010:0.7>, <lora:detail:0.5>, smiling"
    assert prompt_loras.set_lora(out, "jx265-000001", 0.5, prompt_loras.same_run("jx265")) == (
        "photo of jx, <lora:jx265-000001:0.5>, <lora:detail:0.5>, smiling")


@pytest.mark.parametrize("prompt, expected", [("photo", "photo, <lora:jx-000001:1>"), ("photo,", "photo, <lora:jx-000001:1>"),
                                              ("", "<lora:jx-000001:1>")])
def test_set_lora_appends_when_the_run_is_absent(prompt, expected):
    assert prompt_loras.set_lora(prompt, "jx-000001", None, prompt_loras.same_run("jx")) == expected


# --- LoRA axes over a real Lora folder ------------------------------------------------------------


def _lora(path: Path, epoch: int | None) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": np.zeros((4, 320), np.float16),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": np.zeros((320, 4), np.float16),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha": np.array(4.0, np.float16),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_epoch": str(epoch)} if epoch is not None else {})


@pytest.fixture()
def lora_dir(tmp_path, monkeypatch):
    root = tmp_path / "Lora"
    for epoch in (10, 2, 1):
        _lora(root / "people" / f"jx-{epoch:06d}.safetensors", epoch)
    _lora(root / "people" / "jx.safetensors", 12)
    _lora(root / "other.safetensors", None)
    monkeypatch.setattr(axes, "lora_dir", lambda: root)
    return root


def _cell(prompt: str):
    """What X/Y/Z hands an axis: a copy of the processing object (only ``prompt`` is read here)."""
    return SimpleNamespace(prompt=prompt)


def test_epoch_choices_list_each_run_in_epoch_order_final_last(lora_dir):
    # Runs in the core's order (top-level "other" first), each run by epoch, the final file last.
    # "None" first: the base model without the run's LoRA (the floor of the recommendation).
    assert axes.epoch_choices() == ["None", "other", "jx-000001", "jx-000002", "jx-000010", "jx"]
    assert axes.format_epoch(None, None, "jx-000002") == "jx e2"
    assert axes.format_epoch(None, None, "jx") == "jx final (e12)"
    assert axes.format_epoch(None, None, "None") == "no LoRA"
    assert axes.format_strength(None, None, 0.5) == "strength 0.5"


@pytest.mark.parametrize("order", ["epoch-first", "strength-first"])
def test_epoch_and_strength_axes_in_either_order(lora_dir, order):
    p = _cell("photo of jx, <lora:jx:1>, <lora:detail:0.3>")
    steps = [(axes.apply_epoch, "jx-000002"), (axes.apply_strength, 0.5)]
    for apply, value in (steps if order == "epoch-first" else steps[::-1]):
        apply(p, value, [value])
    assert p.prompt == "photo of jx, <lora:jx-000002:0.5>, <lora:detail:0.3>"
    axes.check_before_processing(p)  # nothing pending
    assert axes.state_of(p).info() == {"run": "jx", "epoch": 2, "strength": 0.5}


@pytest.mark.parametrize("order", ["epoch-first", "strength-first"])
def test_epoch_value_none_removes_the_runs_tags_and_keeps_other_loras(lora_dir, order):
    p = _cell("photo of jx, <lora:jx:1>, <lora:detail:0.3>, smiling")
    steps = [(axes.apply_epoch, "None", ["None", "jx-000002"]), (axes.apply_strength, 0.5, [0.5, 1.0])]
    for apply, value, values in (steps if order == "epoch-first" else steps[::-1]):
        apply(p, value, values)
    assert p.prompt == "photo of jx, <lora:detail:0.3>, smiling"
    axes.check_before_processing(p)  # no strength left pending: there is no LoRA to set it on
    axes.confirm_epochs(None, ["None", "jx-000001"])


@pytest.mark.parametrize("prompt, expected", [
    ("<lora:jx-000001:1>, photo", "photo"), ("photo, <lora:jx:1>", "photo"), ("a, <lora:jx:1>, b, <lora:jx-000002:0.5>", "a, b"),
    ("photo <lora:other:1>", "photo <lora:other:1>"),
])
def test_remove_loras_takes_the_separator_with_the_tag(prompt, expected):
    assert prompt_loras.remove_loras(prompt, prompt_loras.same_run("jx")) == expected


def test_strength_axis_without_a_single_lora_is_refused_before_processing(lora_dir):
    p = _cell("photo, <lora:a:1>, <lora:b:1>")
    axes.apply_strength(p, 0.7, [0.7])
    with pytest.raises(RuntimeError, match="2 LoRAs"):
        axes.check_before_processing(p)
    q = _cell("photo, <lora:a:1>")
    axes.apply_strength(q, 0.7, [0.7])
    assert q.prompt == "photo, <lora:a:0.7>"


def test_unknown_checkpoint_names_the_runs_that_exist(lora_dir):
    with pytest.raises(RuntimeError, match=r"no LoRA checkpoint named 'jx-000003'.*people/jx \(e1, e2, e10, final \(e12\)\)"):
        axes.confirm_epochs(None, ["jx-000001", "jx-000003"])
    assert axes.resolve_checkpoint("people/jx-000010.safetensors").epoch == 10


def test_forge_neo_lora_dirs_are_listed_and_resolved_after_lora_dir(lora_dir, tmp_path, monkeypatch):
    """Forge Neo lists LoRA networks from ``--lora-dir`` and every ``--lora-dirs`` folder (cmd_opts.lora_dirs)."""
    extra = tmp_path / "more-loras"
    _lora(extra / "zimg-000004.safetensors", 4)
    _lora(extra / "zimg-000005.safetensors", 5)
    modules = ModuleType("modules")
    modules.shared = SimpleNamespace(cmd_opts=SimpleNamespace(lora_dir=str(lora_dir), lora_dirs=[str(extra), str(lora_dir)]))
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.shared", modules.shared)
    choices = axes.epoch_choices()
    assert choices[:2] == ["None", "other"] and choices[-2:] == ["zimg-000004", "zimg-000005"]
    assert choices.count("jx-000010") == 1  # --lora-dir given again in --lora-dirs is listed once
    assert axes.resolve_checkpoint("zimg-000005").epoch == 5
    assert axes.format_epoch(None, None, "zimg-000004") == "zimg e4"
    p = _cell("photo, <lora:zimg:1>")
    axes.apply_epoch(p, "zimg-000004", ["zimg-000004"])
    assert p.prompt == "photo, <lora:zimg-000004:1>"
    with pytest.raises(RuntimeError, match=r"no LoRA checkpoint named 'zimg-000006'.*more-loras.*zimg \(e4, e5\)"):
        axes.confirm_epochs(None, ["zimg-000006"])


# --- grid means and infotexts ---------------------------------------------------------------------


def test_infotext_with_score_sets_or_replaces_the_field():
    text = "photo\nNegative prompt: ugly\nSteps: 2, Seed: 1, Likeness: 0.100, Version: v1.10.1"
    assert xyz_hooks.infotext_with_score(text, 0.5731).endswith("Steps: 2, Seed: 1, Likeness: 0.573, Version: v1.10.1")
    assert xyz_hooks.infotext_with_score("photo\nSteps: 2", None) == "photo\nSteps: 2, Likeness: no face"


def test_infotext_field_is_called_by_the_host_and_dumps_as_json_without_a_default():
    """A1111 calls it in create_infotext; Forge Classic's Processed.js() is a plain json.dumps of the same dict."""
    field = xyz_hooks.InfotextField(lambda p=None, index=None, **_: f"{p}:{index}")
    assert callable(field) and field(p="cell", index=2, use_main_prompt=False) == "cell:2"
    assert json.dumps({"extra_generation_params": {xyz_hooks.INFOTEXT_KEY: field}}) == '{"extra_generation_params": {"Likeness": ""}}'


def test_infotext_fields_are_quoted_as_a1111_quotes_them():
    text = xyz_hooks.infotext_with_field("photo\nSteps: 2, Likeness: 0.5", xyz_hooks.RECOMMENDATION_KEY, "jx e2 @ 1")
    assert text == "photo\nSteps: 2, Likeness: 0.5, Likeness recommendation: jx e2 @ 1"
    again = xyz_hooks.infotext_with_field(text, xyz_hooks.RECOMMENDATION_KEY, "jx final (e3), @ 0.5")
    assert again == 'photo\nSteps: 2, Likeness: 0.5, Likeness recommendation: "jx final (e3), @ 0.5"'
    assert xyz_hooks.infotext_with_score(again, 0.25) == again.replace("Likeness: 0.5", "Likeness: 0.250")


def _scored(value, face=True):
    from lora_likeness.faces import FaceResult
    from lora_likeness.scoring import FaceScore, ImageScore

    score = ImageScore(face_found=face, n_faces=int(face), face_index=0 if face else None,
                       score=FaceScore(value, value, value, 0) if face else None)
    return scorer.ScoredImage(name="x", result=FaceResult(path=None, sha256="", size=(8, 8)), score=score, aggregation="max")


def test_grid_scores_axis_means_and_labels():
    cells = {
        (0, 0, 0): xyz_hooks.CellScores(None, [_scored(0.2)]),
        (1, 0, 0): xyz_hooks.CellScores(None, [_scored(0.6)]),
        (0, 1, 0): xyz_hooks.CellScores(None, [_scored(0.4)]),
        (1, 1, 0): xyz_hooks.CellScores(None, [_scored(None, face=False)]),
    }
    grid = xyz_hooks.GridScores(None, ["e1", "e2"], ["strength 0.5", "strength 1"], [""], cells)
    assert grid.mean == pytest.approx(0.4)
    assert grid.labels_with_means(["e1", "e2"], 0) == ["e1 · 0.300", "e2 · 0.600"]
    assert grid.labels_with_means(["strength 0.5", "strength 1"], 1) == ["strength 0.5 · 0.400", "strength 1 · 0.400"]
    assert grid.labels_with_means([""], 2) == [""]  # the "Nothing" axis keeps no label
    assert grid.group_label(1, 0, 0) == "e2 | strength 0.5"


# --- scoring PIL images with the real pack --------------------------------------------------------


def _square(path: Path, side: int = 256) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.fit(ImageOps.exif_transpose(image).convert("RGB"), (side, side))


def test_scorer_scores_pil_images_and_caches_them_in_memory(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for photo in OBAMA[:-1]:
        (refs / photo.name).write_bytes(photo.read_bytes())
    s = scorer.get_scorer(str(refs), str(PACK_DIR), "max")
    assert scorer.get_scorer(str(refs), str(PACK_DIR), "max").references is s.references  # analysed once
    images = [_square(OBAMA[-1]), _square(BUSH[0]), Image.new("RGB", (64, 64), (90, 90, 90))]
    hits_before = s.memory.hits
    same, other, blank = s.score_images(images, ["obama", "bush", "blank"])
    assert same.value > 0.4 > other.value and blank.value is None and blank.box is None
    x1, y1, x2, y2 = same.box
    assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
    again = s.score_images(images[:1], ["obama"])[0]
    assert again.value == same.value and s.memory.hits == hits_before + 1


@pytest.mark.parametrize("refs, pack, message", [
    ("", str(PACK_DIR), "set the reference folder"),
    ("/nonexistent/refs", str(PACK_DIR), "does not exist"),
    (str(PEOPLE / "obama"), "/nonexistent/pack", "pack folder /nonexistent/pack does not exist"),
])
def test_scorer_setup_errors_say_what_to_fix(refs, pack, message):
    with pytest.raises(scorer.LikenessSetupError, match=message):
        scorer.get_scorer(refs, pack, "max")


def test_scorer_refuses_a_reference_folder_without_faces(tmp_path):
    Image.new("RGB", (64, 64), (0, 0, 0)).save(tmp_path / "black.png")
    with pytest.raises(scorer.LikenessSetupError, match="no usable reference face"):
        scorer.get_scorer(str(tmp_path), str(PACK_DIR), "max")


def _pair(left: Path, right: Path, side: int = 256) -> Image.Image:
    """Two photos side by side: a picture of two people."""
    canvas = Image.new("RGB", (2 * side, side), (127, 127, 127))
    canvas.paste(_square(left, side), (0, 0))
    canvas.paste(_square(right, side), (side, 0))
    return canvas


def test_named_reference_folders_score_each_person_and_write_them_in_the_reports(tmp_path):
    for name, photos in (("obama", OBAMA[:-1]), ("bush", BUSH[1:])):
        (tmp_path / name).mkdir()
        for photo in photos:
            (tmp_path / name / photo.name).write_bytes(photo.read_bytes())
    s = scorer.get_scorer(f"obama={tmp_path / 'obama'}; bush={tmp_path / 'bush'}", str(PACK_DIR), "max")
    assert s.people.names == ["obama", "bush"]
    both, twice = s.score_images([_pair(OBAMA[-1], BUSH[0]), _pair(OBAMA[-1], OBAMA[-1])], ["both", "twice"],
                                 prompt="photo of obama and bush")
    assert both.people.all_present and not both.people.blended
    assert twice.people.blended and not twice.people.people["bush"].found
    assert twice.people_text.startswith("obama 0.") and twice.people_text.endswith("bush -, blended")
    run = s.run([both, twice], [("cell", {}), ("cell", {})])
    report = json.loads(json.dumps(run.as_dict()))
    assert report["groups"][0]["people"]["bush"]["presence_rate"] == 0.5 and report["images"][1]["blended"] is True
    from lora_likeness import report as core_report

    header = core_report.scores_csv(run).splitlines()[0]
    assert "obama_score" in header and "bush_score" in header and "blended" in header
    with pytest.raises(scorer.LikenessSetupError, match="name=folder"):
        scorer.get_scorer(f"obama={tmp_path / 'obama'}; {tmp_path / 'bush'}", str(PACK_DIR), "max")


# --- the tab's "score a folder" action -----------------------------------------------------------


def test_score_folder_action_writes_the_core_report_and_returns_table_plot_sheet(tmp_path):
    images = tmp_path / "generated"
    for group, photos in (("e1", BUSH[:2]), ("e2", OBAMA[-1:])):
        (images / group).mkdir(parents=True)
        for photo in photos:
            (images / group / photo.name).write_bytes(photo.read_bytes())
    result = tab.score_folder_action(str(PEOPLE / "obama"), str(images), str(PACK_DIR), "max", "folder",
                                     outputs_root=tmp_path / "outputs")
    assert [row[0] for row in result.rows] == ["e1", "e2", "(reference baseline)"], result.message
    assert [row[1] for row in result.rows[:2]] == ["2", "1"]
    assert Path(result.plot).is_file() and Path(result.contact_sheet).is_file()
    out = Path(result.plot).parent
    assert out.parent == tmp_path / "outputs" / "likeness"
    assert json.loads((out / "report.json").read_text())["groups"][1]["label"] == "e2"
    assert "Scored 3 image(s) in 2 group(s)" in result.message


def test_score_folder_action_groups_a_trainers_samples_by_step(tmp_path):
    from trainer_layouts import BEST_STEP, LAYOUTS, STEPS, references

    samples = LAYOUTS["ai-toolkit"](tmp_path)
    result = tab.score_folder_action(str(references(tmp_path)), str(samples), str(PACK_DIR), "max", "step",
                                     outputs_root=tmp_path / "outputs")
    assert [row[0] for row in result.rows] == [f"step {s}" for s in STEPS] + ["(reference baseline)"], result.message
    assert f"Recommended: step {BEST_STEP}" in result.message and "likely over-training" in result.message
    assert "Closest saved checkpoint: jx_face_000000500.safetensors" in result.message
    report = json.loads((Path(result.plot).parent / "report.json").read_text())
    assert report["recommendation"]["best_step"] == BEST_STEP


def test_score_folder_action_with_named_folders_scores_each_person(tmp_path):
    import csv

    for name, photos in (("obama", OBAMA[:-1]), ("bush", BUSH[1:])):
        (tmp_path / "refs" / name).mkdir(parents=True)
        for photo in photos:
            (tmp_path / "refs" / name / photo.name).write_bytes(photo.read_bytes())
    images = tmp_path / "generated" / "e1"
    images.mkdir(parents=True)
    _pair(OBAMA[-1], BUSH[0]).save(images / "both.png")
    _pair(OBAMA[-1], OBAMA[-1]).save(images / "twice.png")
    refs = f"obama={tmp_path / 'refs' / 'obama'}; bush={tmp_path / 'refs' / 'bush'}"
    result = tab.score_folder_action(refs, str(images.parent), str(PACK_DIR), "max", "folder", outputs_root=tmp_path / "outputs")
    assert "of 2 people (obama, bush)" in result.message, result.message
    assert "| e1 | bush (worst) | 2 | 50% |" in result.message  # bush missing from twice.png
    report = json.loads(result.files["report.json"].read_text())
    assert report["people"]["names"] == ["obama", "bush"]
    assert report["groups"][0]["people"]["bush"]["presence_rate"] == 0.5 and report["groups"][0]["all_present_rate"] == 0.5
    twice = next(i for i in report["images"] if i["path"].endswith("twice.png"))
    assert twice["blended"] is True and twice["people"]["obama"]["found"] is True
    with open(result.files["summary.csv"], newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["bush_presence_rate"] == "0.500000" and row["obama_presence_rate"] == "1.000000" and row["blend_rate"] == "0.500000"


def test_score_folder_action_reports_bad_settings_as_a_message(tmp_path):
    assert "does not exist" in tab.score_folder_action(str(PEOPLE / "obama"), str(tmp_path / "missing"), str(PACK_DIR)).message
    assert "reference folder" in tab.score_folder_action("", str(tmp_path), str(PACK_DIR)).message
    (tmp_path / "a_file").write_text("mine")
    message = tab.score_folder_action(str(PEOPLE / "obama"), str(tmp_path), str(PACK_DIR), out_dir=str(tmp_path / "a_file")).message
    assert "a_file is a file, not a folder" in message and (tmp_path / "a_file").read_text() == "mine"


def test_tab_sections_are_a_container_later_stages_extend():
    before = list(tab.SECTIONS)
    try:
        tab.add_section("Later stage", lambda: None)
        tab.add_section("Score a folder", tab.build_score_section)  # same title: replaced, not doubled
        assert [title for title, _ in tab.SECTIONS] == ["Score a folder", "Dataset", "Train", "Later stage"]
    finally:
        tab.SECTIONS[:] = before


def test_image_map_keys_pil_images_by_identity_without_keeping_them_alive():
    import gc

    images = xyz_hooks.ImageMap()
    a, twin = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))  # equal content, unhashable
    images[a] = "a.png"
    assert images.get(a) == "a.png" and images.get(twin) is None
    del a
    gc.collect()
    images[twin] = "b.png"  # a dead entry is dropped on the next write
    assert len(images._items) == 1


# --- the recommendation under a scored grid -------------------------------------------------------


def test_lora_choices_read_the_swept_lora_from_the_cells_prompts():
    prompts = {  # x: epoch via Prompt S/R (one "None" value drops the tag), y: strength; a detail LoRA everywhere
        (0, 0, 0): "photo, <lora:detail:0.3>", (0, 1, 0): "photo, <lora:detail:0.3>",
        (1, 0, 0): "photo, <lora:jx-000001:0.5>, <lora:detail:0.3>", (1, 1, 0): "photo, <lora:jx-000001:1>, <lora:detail:0.3>",
        (2, 0, 0): "photo, <lora:jx:0>, <lora:detail:0.3>", (2, 1, 0): "photo, <lora:jx:1>, <lora:detail:0.3>",
    }
    choices, reason = recommendation.lora_choices(prompts, lambda names: {"jx": ("jx final (e12)", 12)})
    assert reason is None
    assert choices[(0, 0, 0)] == choices[(0, 1, 0)] == choices[(2, 0, 0)] == recommendation.FLOOR  # no tag, or strength 0
    assert choices[(1, 0, 0)] == recommendation.LoraChoice("jx e1", 0.5, 1)  # from the Kohya name
    assert choices[(2, 1, 0)] == recommendation.LoraChoice("jx final (e12)", 1.0, 12)  # from the Lora folder
    assert recommendation.lora_axes(choices) == {0, 1}

    # The same LoRA in every cell (a CFG grid): nothing to recommend, and nothing to explain.
    assert recommendation.lora_choices({(0, 0, 0): "a <lora:jx:1>", (1, 0, 0): "a <lora:jx:1>"}) == (None, None)
    # Two LoRAs swapped at once: no recommendation, and why.
    choices, reason = recommendation.lora_choices({(0, 0, 0): "a <lora:jx:1> <lora:b:1>", (1, 0, 0): "a <lora:jx:0.5> <lora:b:0.5>"})
    assert choices is None and "several LoRAs at once (b, jx)" in reason


def _cell_scores(values, prompt, seeds):
    return xyz_hooks.CellScores(None, [_scored(v, face=v is not None) for v in values], prompt=prompt, seeds=list(seeds))


def test_grid_records_pair_images_across_cells_and_count_the_floor_once():
    # x: epoch (None, e1, e2), y: strength (0.5, 1), z: CFG (a non-LoRA axis: part of the pairing key).
    epochs = {0: None, 1: "jx-000001", 2: "jx-000002"}
    cells, prompts = {}, {}
    for ix, stem in epochs.items():
        for iy, strength in enumerate((0.5, 1.0)):
            for iz in range(2):
                prompt = "photo" if stem is None else f"photo, <lora:{stem}:{strength:g}>"
                base = 0.1 if stem is None else 0.2 * ix + 0.1 * iy + 0.01 * iz
                cells[(ix, iy, iz)] = _cell_scores([base, base + 0.02, None], prompt, seeds=(5, 5, 6))
                prompts[(ix, iy, iz)] = prompt
    choices, _ = recommendation.lora_choices(prompts)
    records = recommendation.grid_records(cells, choices)
    floor = [r for r in records if r["checkpoint"] == NO_LORA]
    # The two "None" columns hold the same images (same seeds, no LoRA): kept once, keyed by CFG index + seed.
    assert [r["key"] for r in floor] == [(0, 5, 0), (0, 5, 1), (0, 6, 0), (1, 5, 0), (1, 5, 1), (1, 6, 0)]
    assert records[:6] == floor  # the floor first, then by epoch
    assert [r["checkpoint"] for r in records[6:]] == ["jx e1"] * 12 + ["jx e2"] * 12
    e2 = [r for r in records if r["checkpoint"] == "jx e2" and r["strength"] == 1.0]
    assert [r["score"] for r in e2] == pytest.approx([0.5, 0.52, None, 0.51, 0.53, None])
    assert {r["key"] for r in e2} == {r["key"] for r in floor}  # the same keys in every cell: paired

    advice, reason = recommendation.recommend_grid(cells, prompts, ceiling=0.8)
    expected = recommend(cells_from_records(records), ceiling=0.8)
    assert reason is None and advice.as_dict() == expected.as_dict()  # the core decides
    assert advice.best.label == "jx e2 @ 1" and advice.paired and advice.floor == pytest.approx(0.11)


def test_grid_records_of_a_run_saved_by_steps_are_in_step_order():
    # ai-toolkit's files (job_000000250 …) and sd-scripts' --save_every_n_steps files (jx-step00000500): no epochs.
    for stems in (["job_000001000", "job_000000250", "job_000000500"], ["jx-step00001000", "jx-step00000250", "jx-step00000500"]):
        prompts = {(ix, 0, 0): f"photo, <lora:{stem}:1>" for ix, stem in enumerate(stems)}
        cells = {position: _cell_scores([0.3, 0.4], prompt, seeds=(1, 2)) for position, prompt in prompts.items()}
        choices, _ = recommendation.lora_choices(prompts)
        assert [choices[(ix, 0, 0)].step for ix in range(3)] == [1000, 250, 500]
        records = recommendation.grid_records(cells, choices)
        run = stems[0].split("_0")[0].split("-step")[0]
        assert [r["checkpoint"] for r in records[::2]] == [f"{run} step 250", f"{run} step 500", f"{run} step 1000"]


def test_caption_below_extends_the_canvas_and_wraps_to_its_width():
    picture = Image.new("RGB", (320, 200), (40, 90, 160))
    lines = ["Recommended: jx e2 @ 1 — identity 0.612 (95% CI 0.581–0.640); beats jx e2 @ 0.5 by 0.031", "Warning: x"]
    out = recommendation.caption_below(picture, lines)
    assert out.width == 320 and out.height > 200 + 3 * 12  # the headline wraps: at least three lines
    assert (np.asarray(out)[:200] == np.asarray(picture)).all()  # the grid itself untouched
    band = np.asarray(out.convert("L"))[200:]
    assert band.min() < 60 and band.max() == 255  # dark text on white
    assert (band[-2:] == 255).all()  # with a margin below the last line


def _fake_draw_xyz_grid(p, xs, ys, zs, x_labels, y_labels, z_labels, cell, draw_legend, include_lone_images,
                        include_sub_grids, first_axes_processed, second_axes_processed, margin_size):
    """A1111's draw_xyz_grid reduced to what the wrapper relies on: every cell once through ``cell``,
    a black cell where one returned no image, then ``[z grid, sub-grid, *cells]`` (one z value)."""
    results = [cell(x, y, z, ix, iy, iz) for iz, z in enumerate(zs) for iy, y in enumerate(ys) for ix, x in enumerate(xs)]
    side = next(r.images[0].width for r in results if r.images)
    cells = [r.images[0] if r.images else Image.new("RGB", (side, side)) for r in results]
    grid = Image.new("RGB", (side * len(xs), side * len(ys)), (255, 255, 255))
    for k, image in enumerate(cells):
        grid.paste(image, ((k % len(xs)) * side, (k // len(xs)) * side))
    images = [grid, grid.copy(), *cells]
    return SimpleNamespace(images=images, infotexts=["photo\nSteps: 2, Seed: 7"] * len(images), comments="", info="")


@pytest.fixture(scope="module")
def obama_scorer(tmp_path_factory):
    refs = tmp_path_factory.mktemp("refs")
    for photo in OBAMA[:-1]:
        (refs / photo.name).write_bytes(photo.read_bytes())
    return scorer.get_scorer(str(refs), str(PACK_DIR), "max")


def test_scored_xyz_grid_carries_the_recommendation(lora_dir, obama_scorer, tmp_path):
    # X: Likeness: LoRA epoch (None, e1, e2); Y: Likeness: LoRA strength (0.5, 1), through the axes' own
    # prompt rewriting. The person only in e2 @1; someone else elsewhere; the floor the same photo twice.
    xs, ys = ["None", "jx-000001", "jx-000002"], [0.5, 1.0]
    photos = {("None", 0.5): BUSH[1], ("None", 1.0): BUSH[1], ("jx-000001", 0.5): BUSH[0], ("jx-000001", 1.0): BUSH[0],
              ("jx-000002", 0.5): BUSH[2], ("jx-000002", 1.0): OBAMA[-1]}

    def cell(x, y, z, ix, iy, iz):
        pc = _cell("photo of jx, <lora:jx:1>")
        axes.apply_epoch(pc, x, xs)
        axes.apply_strength(pc, y, ys)
        picture = _square(photos[(x, y)], 128)
        scored = obama_scorer.score_images([picture], ["image"])
        likeness = xyz_hooks.CellScores(obama_scorer, scored, [picture], axes.state_of(pc).info(), prompt=pc.prompt, seeds=[7])
        return SimpleNamespace(images=[picture], likeness=likeness, index_of_first_image=0)

    draw = xyz_hooks.wrap_draw_xyz_grid(_fake_draw_xyz_grid)
    p = SimpleNamespace()
    processed = draw(p, xs, ys, [""], [axes.format_epoch(None, None, x) for x in xs], [f"strength {y:g}" for y in ys], [""],
                     cell, True, True, False, "x", "y", 0)
    scores = xyz_hooks.grid_of(processed.images[0])
    assert scores is getattr(p, xyz_hooks.SESSION_ATTRIBUTE)
    advice = scores.recommendation()
    assert advice.best.label == "jx e2 @ 1" and advice.ceiling == pytest.approx(obama_scorer.baseline)
    bush = obama_scorer.score_images([_square(BUSH[1], 128)], ["floor"])[0].value
    assert advice.floor == pytest.approx(bush) and advice.cells[0].stats.n_images == 1  # the floor once

    # The main grid got a caption band (the sub-grid, same scored cells, did not).
    main, sub = processed.images[0], processed.images[1]
    assert main.width == sub.width and main.height > sub.height
    assert (np.asarray(main)[:sub.height] == np.asarray(sub)).all()
    assert np.asarray(main.convert("L"))[sub.height:].min() < 60

    xyz_hooks.finish(scores, processed, fallback_dir=str(tmp_path))
    headline = advice.headline()
    assert headline.startswith("Recommended: jx e2 @ 1 — identity ")
    assert processed.comments.splitlines()[1] == headline  # under the gallery, right after the grid mean
    assert "Likeness recommendation: jx e2 @ 1" in processed.infotexts[0] and processed.info == processed.infotexts[0]
    report = json.loads(next(tmp_path.glob("xyz_grid-*-likeness_scores.json")).read_text())
    assert report["recommendation"] == json.loads(json.dumps(advice.as_dict()))
    assert report["recommendation"]["best"] == "jx e2 @ 1" and len(report["images"]) == 6

    saved = SimpleNamespace(image=main, pnginfo={"parameters": "photo\nSteps: 2"})
    xyz_hooks.on_before_image_saved(saved)
    assert saved.pnginfo["parameters"].endswith(f"Likeness: {scores.mean:.3f}, Likeness recommendation: jx e2 @ 1")


@pytest.fixture(scope="module")
def family_scorer(tmp_path_factory):
    """Named reference folders: obama (all but his last photo) and bush (all but his first)."""
    root = tmp_path_factory.mktemp("family")
    for name, photos in (("obama", OBAMA[:-1]), ("bush", BUSH[1:])):
        (root / name).mkdir()
        for photo in photos:
            (root / name / photo.name).write_bytes(photo.read_bytes())
    return scorer.get_scorer(f"obama={root / 'obama'}; bush={root / 'bush'}", str(PACK_DIR), "max")


def _people_picture(left: Path, right: Path | None, side: int = 128) -> Image.Image:
    """One or two photos side by side on a ``2 side x side`` canvas (every cell the same size)."""
    canvas = Image.new("RGB", (2 * side, side), (127, 127, 127))
    canvas.paste(_square(left, side), (0, 0))
    if right is not None:
        canvas.paste(_square(right, side), (side, 0))
    return canvas


def _scored_family_grid(family_scorer, xs: list, ys: list, photos_of):
    """The extension's X/Y/Z wrapper over a fake grid whose cell ``(x, y)`` shows ``photos_of(x, y)`` (left,
    right or None) for a prompt naming obama and bush; returns the grid's :class:`xyz_hooks.GridScores`
    and the host's ``processed``."""

    def cell(x, y, z, ix, iy, iz):
        pc = _cell("photo of obama and bush, <lora:jx:1>")
        axes.apply_epoch(pc, x, xs)
        axes.apply_strength(pc, y, ys)
        picture = _people_picture(*photos_of(x, y))
        scored = family_scorer.score_images([picture], ["image"], prompt=pc.prompt)
        likeness = xyz_hooks.CellScores(family_scorer, scored, [picture], axes.state_of(pc).info(), prompt=pc.prompt, seeds=[7])
        return SimpleNamespace(images=[picture], likeness=likeness, index_of_first_image=0)

    processed = xyz_hooks.wrap_draw_xyz_grid(_fake_draw_xyz_grid)(
        SimpleNamespace(), xs, ys, [""], [axes.format_epoch(None, None, x) for x in xs], [f"strength {y:g}" for y in ys], [""],
        cell, True, True, False, "x", "y", 0)
    return xyz_hooks.grid_of(processed.images[0]), processed


def test_scored_xyz_grid_with_named_folders_recommends_for_the_worst_served_person(lora_dir, family_scorer, tmp_path):
    from lora_likeness.people_sweep import recommend_people_records

    # X: epoch (None, e1, e2), Y: strength (0.5, 1). The floor: bush alone; e1 @0.5 obama twice (bush missing,
    # blended); e1 @1 both (held-out photos); e2 @0.5 obama alone; e2 @1 both (their own reference photos: best for both).
    xs, ys = ["None", "jx-000001", "jx-000002"], [0.5, 1.0]
    photos = {("None", 0.5): (BUSH[0], None), ("None", 1.0): (BUSH[0], None), ("jx-000001", 0.5): (OBAMA[-1], OBAMA[-1]),
              ("jx-000001", 1.0): (OBAMA[-1], BUSH[0]), ("jx-000002", 0.5): (OBAMA[-1], None), ("jx-000002", 1.0): (OBAMA[0], BUSH[1])}

    scores, processed = _scored_family_grid(family_scorer, xs, ys, lambda x, y: photos[(x, y)])
    people = scores.people_recommendation()
    # The core's answer over the grid's own records: the extension makes one call, it does not decide.
    cells = {key: c for key, c in scores.cells.items()}
    choices, _ = recommendation.lora_choices({key: c.prompt for key, c in cells.items()})
    records = recommendation.grid_records(cells, choices)
    expected = recommend_people_records(family_scorer.people, records, seed=0, n_boot=family_scorer.settings.n_boot)
    assert people.as_dict() == expected.as_dict() and people.best.cell.label == "jx e2 @ 1"
    e1_half = people.result_for("jx e1", 0.5).stats
    assert e1_half.people["bush"].presence_rate == 0.0 and e1_half.blend_rate == 1.0

    # The band: the family's answer first, then each cell's per-person scores.
    assert scores.caption()[0] == people.sentence() and scores.caption()[0].startswith("Best for the whole family: jx e2 @ 1")
    lines = scores.people_lines()
    assert len(lines) == 6 and any(line.endswith("bush – (0%) · all 0% · blend 100%") for line in lines)
    # Each cell's badge names each person's score.
    e1_key = next(key for key, c in cells.items() if "jx-000001:0.5" in c.prompt)
    assert re.fullmatch(r"obama \.\d\d · bush –", cells[e1_key].people_note())

    xyz_hooks.finish(scores, processed, fallback_dir=str(tmp_path))
    assert processed.comments.splitlines()[1] == people.sentence()
    infotext = processed.infotexts[0]
    best = people.best.stats
    assert "Likeness recommendation: jx e2 @ 1" in infotext
    assert f"Likeness people: {json.dumps(xyz_hooks.people_scores_text(best))}" in infotext
    assert xyz_hooks.people_scores_text(best).startswith(f"obama {best.people['obama'].mean:.3f} (100%), bush ")
    report = json.loads(next(tmp_path.glob("xyz_grid-*-likeness_scores.json")).read_text())
    assert report["people_recommendation"] == json.loads(json.dumps(people.as_dict()))
    assert report["people_recommendation"]["best"]["checkpoint"] == "jx e2"


def test_grid_without_a_lora_axis_gets_no_recommendation(obama_scorer, tmp_path):
    picture = _square(OBAMA[-1], 96)
    scored = obama_scorer.score_images([picture], ["image"])

    def cell(x, y, z, ix, iy, iz):  # a CFG x steps grid: the same LoRA everywhere
        likeness = xyz_hooks.CellScores(obama_scorer, list(scored), [picture], prompt="photo, <lora:jx:1>", seeds=[1])
        return SimpleNamespace(images=[picture], likeness=likeness, index_of_first_image=0)

    processed = xyz_hooks.wrap_draw_xyz_grid(_fake_draw_xyz_grid)(SimpleNamespace(), [5, 7], [10], [""], ["5", "7"], ["10"],
                                                                  [""], cell, True, True, False, "x", "y", 0)
    scores = xyz_hooks.grid_of(processed.images[0])
    assert scores.recommendation() is None and scores.advice_reason is None
    assert processed.images[0].size == processed.images[1].size  # no caption band
    xyz_hooks.finish(scores, processed, fallback_dir=str(tmp_path))
    assert "Recommend" not in processed.comments and "recommendation" not in processed.infotexts[0]
    report = json.loads(next(tmp_path.glob("xyz_grid-*-likeness_scores.json")).read_text())
    assert report["recommendation"] is None


class NansException(Exception):
    """Stands for A1111's ``modules.devices.NansException`` (same name, same message)."""


NAN_MESSAGE = "A tensor with NaNs was produced in Unet. Use --disable-nan-check commandline argument to disable this check."


def test_a_cell_that_fails_in_a1111_is_reported_as_missing_with_its_reason(lora_dir, obama_scorer, tmp_path):
    # As A1111's X/Y/Z runs a cell: the axes change a copy of p, process_images(pc) runs our always-on script's
    # process() and then raises (A1111's NaN check), the script catches it and goes on with an empty Processed.
    xs, ys = ["None", "jx-000001", "jx-000002"], [0.5, 1.0]
    photos = {("None", 0.5): BUSH[1], ("None", 1.0): BUSH[1], ("jx-000001", 0.5): BUSH[0], ("jx-000001", 1.0): BUSH[0],
              ("jx-000002", 0.5): OBAMA[-1], ("jx-000002", 1.0): OBAMA[-1]}
    failing = ("jx-000002", 1.0)  # would tie with e2 @ 0.5 for the best cell

    def process_images(pc):
        state = axes.state_of(pc)
        pc.likeness_cell = xyz_hooks.CellScores(obama_scorer, lora=state.info(), prompt=pc.prompt)  # our process()
        if pc.likeness_key == failing:
            raise NansException(NAN_MESSAGE)
        picture = _square(photos[pc.likeness_key], 128)
        pc.likeness_cell.images = obama_scorer.score_images([picture], ["image"])
        pc.likeness_cell.pil_images, pc.likeness_cell.seeds = [picture], [7]
        return SimpleNamespace(images=[picture], likeness=pc.likeness_cell, index_of_first_image=0, infotexts=["cell"])

    wrapped = xyz_hooks.wrap_process_images(process_images)

    def cell(x, y, z, ix, iy, iz):
        pc = SimpleNamespace(prompt="photo of jx, <lora:jx:1>", batch_size=1, n_iter=1, likeness_key=(x, y))
        axes.apply_epoch(pc, x, xs)
        axes.apply_strength(pc, y, ys)
        try:
            return wrapped(pc)
        except Exception:  # A1111: errors.display(e, "generating image for xyz plot"); Processed(p, [], p.seed, "")
            return SimpleNamespace(images=[], infotexts=[], prompt="photo of jx, <lora:jx:1>", seed=7, index_of_first_image=0)

    p = SimpleNamespace()
    processed = xyz_hooks.wrap_draw_xyz_grid(_fake_draw_xyz_grid)(
        p, xs, ys, [""], [axes.format_epoch(None, None, x) for x in xs], [f"strength {y:g}" for y in ys], [""], cell,
        True, True, False, "x", "y", 0)
    scores = xyz_hooks.grid_of(processed.images[0])
    label, reason = "jx e2 | strength 1", f"NansException: {NAN_MESSAGE}"
    assert [cell.failure for cell in scores.failed.values()] == [xyz_hooks.CellFailure(reason, 1)]
    made = [cell.values[0] for key, cell in scores.cells.items() if key != (2, 1, 0)]
    assert scores.cells[(2, 1, 0)].values == [] and scores.mean == pytest.approx(np.mean(made))  # in no mean
    assert scores.axis_means(1)[1] == pytest.approx(np.mean([scores.cells[(0, 1, 0)].values[0], scores.cells[(1, 1, 0)].values[0]]))

    # The recommendation does not score the failed cell: it is in the table, not eligible, with the reason.
    advice = scores.recommendation()
    by_label = {result.label: result for result in advice.cells}
    failed = by_label["jx e2 @ 1"]
    assert not failed.eligible and failed.rank is None and failed.reason == f"no image was made ({reason})"
    assert (failed.stats.n_images, failed.stats.n_errors, failed.stats.n_faces, failed.stats.no_face_rate) == (1, 1, 0, None)
    assert advice.best.label == "jx e2 @ 0.5" and advice.runner_up.label == "jx e1 @ 0.5"

    # The grid shows "no image" where A1111 drew a black cell, and the band under it says which cell and why.
    side = 128
    main, sub = processed.images[0], processed.images[1]
    placeholder = np.asarray(xyz_hooks.core_grid.draw_no_image((side, side), "NansException: A tensor with NaNs was produced in Unet."))
    assert (np.asarray(sub)[side:2 * side, 2 * side:3 * side] == placeholder).all()
    assert (np.asarray(processed.images[2 + 5]) == 0).all()  # the lone image stays what A1111 made
    line = f"{label}: no image (NansException: A tensor with NaNs was produced in Unet.); its 1 image(s) count as missing, not as 'no face'"
    assert scores.caption() == [*xyz_hooks.recommendation_lines(advice), f"Warning: {line}"]
    band = np.asarray(main)[sub.height:].reshape(-1, 3).astype(int)
    amber = np.abs(band - np.array(xyz_hooks.core_grid.CAPTION_WARNING)).sum(axis=1) < 60
    assert main.height > sub.height and amber.sum() > 20

    # The reports: the cell's image is an error row (missing), not a "no face" one; the JSON names the cell and why.
    if os.environ.get("LIKENESS_SCREENSHOT_DIR"):
        main.save(Path(os.environ["LIKENESS_SCREENSHOT_DIR"]) / "xyz_grid_failed_cell.png")
    xyz_hooks.finish(scores, processed, fallback_dir=str(tmp_path))
    assert f"Warning: {line}" in processed.comments  # under the gallery and in the console
    report = json.loads(next(tmp_path.glob("xyz_grid-*-likeness_scores.json")).read_text())
    assert report["failed_cells"] == [{"cell": label, "x": 2, "y": 1, "z": 0, "missing_images": 1, "reason": reason}]
    group = next(g for g in report["groups"] if g["label"] == label)
    assert (group["n_images"], group["n_errors"], group["n_faces"], group["no_face_rate"]) == (1, 1, 0, None)
    [row] = [image for image in report["images"] if image["group"] == label]
    assert row["error"] == f"no image: {reason}" and row["path"] == f"{label} #1 (no image)"
    assert line in report["warnings"] and not any("could not be read" in w for w in report["warnings"])
    assert report["recommendation"]["best"] == "jx e2 @ 0.5"
    csv_text = next(tmp_path.glob("xyz_grid-*-likeness_scores.csv")).read_text()
    assert f"no image: {reason}" in csv_text and len(csv_text.strip().splitlines()) == 1 + 6


def test_a_grid_whose_cells_all_fail_still_reports_them(lora_dir, obama_scorer, tmp_path):
    def process_images(pc):
        pc.likeness_cell = xyz_hooks.CellScores(obama_scorer, lora=axes.state_of(pc).info(), prompt=pc.prompt)
        raise NansException(NAN_MESSAGE)

    wrapped = xyz_hooks.wrap_process_images(process_images)

    def cell(x, y, z, ix, iy, iz):
        pc = SimpleNamespace(prompt="photo, <lora:jx:1>", batch_size=2, n_iter=1)
        axes.apply_epoch(pc, x, ["jx-000001", "jx-000002"])
        try:
            return wrapped(pc)
        except Exception:
            return SimpleNamespace(images=[], infotexts=[], prompt=pc.prompt, seed=1, index_of_first_image=0)

    def draw(p, xs, ys, zs, x_labels, y_labels, z_labels, cell, *rest):  # A1111 with no image at all: black cells of p's size
        results = [cell(x, y, z, ix, iy, iz) for iz, z in enumerate(zs) for iy, y in enumerate(ys) for ix, x in enumerate(xs)]
        cells = [r.images[0] if r.images else Image.new("RGB", (p.width, p.height)) for r in results]
        grid = Image.new("RGB", (p.width * len(xs), p.height), (255, 255, 255))
        return SimpleNamespace(images=[grid, grid.copy(), *cells], infotexts=["grid"] * 4, comments="", info="")

    processed = xyz_hooks.wrap_draw_xyz_grid(draw)(SimpleNamespace(width=64, height=64), ["jx-000001", "jx-000002"], [""], [""],
                                                   ["jx e1", "jx e2"], [""], [""], cell, True, True, False, "x", "y", 0)
    scores = xyz_hooks.grid_of(processed.images[0])
    assert len(scores.failed) == 2 and scores.mean is None
    assert scores.recommendation().reason == "no LoRA cell produced an image"
    xyz_hooks.finish(scores, processed, fallback_dir=str(tmp_path))
    report = json.loads(next(tmp_path.glob("xyz_grid-*-likeness_scores.json")).read_text())
    assert [c["missing_images"] for c in report["failed_cells"]] == [2, 2]  # batch size 2: both images of each cell
    assert len(report["images"]) == 4 and all(image["error"].startswith("no image: NansException") for image in report["images"])


# --- registering in each host's shape ---------------------------------------------------------------


def _host_modules(monkeypatch, tmp_path, shape: str) -> tuple[ModuleType, dict]:
    """``modules.*`` and the loaded X/Y/Z script module in the shape of one host, registered in ``sys.modules``.

    ``a1111``: A1111 1.10 (``class Script`` in ``scripts/xyz_grid.py``, ``AxisOption`` and ``axis_options``
    defined there, ``script_callbacks.on_…(callback, *, name=None)``). ``forge-classic``: Forge Classic / Neo
    (``class XYZ`` in ``extensions-builtin/xyz/scripts/xyz_grid.py``, ``AxisOption`` in ``lib_xyz.classes``,
    the list in ``lib_xyz.builtins.builtin_options``, ``script_callbacks.on_…(callback)`` with no ``name``).
    The Forge Classic shape here is the harshest: its script module also stops re-exporting the two names
    (the real one still does; tests/integration/test_forge_host.py checks the real files)."""
    callbacks: dict[str, list] = {"callbacks_before_image_saved": [], "callbacks_image_saved": [], "callbacks_ui_tabs": []}
    Callback = namedtuple("ScriptCallback", ["script", "callback"])  # noqa: PYI024 - as the hosts define it
    script_callbacks = ModuleType("modules.script_callbacks")
    script_callbacks.callback_map = callbacks

    def register_as(key):
        if shape == "a1111":
            def on(callback, *, name=None):
                callbacks[key].append(Callback(name, callback))
        else:
            def on(callback):
                callbacks[key].append(Callback("file", callback))
        return on

    script_callbacks.on_before_image_saved = register_as("callbacks_before_image_saved")
    script_callbacks.on_image_saved = register_as("callbacks_image_saved")
    script_callbacks.on_ui_tabs = register_as("callbacks_ui_tabs")
    paths = ModuleType("modules.paths")
    paths.models_path = str(tmp_path / "models")
    scripts_module = ModuleType("modules.scripts")

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
            self.label, self.type, self.apply, self.format_value, self.confirm, self.choices = label, type, apply, format_value, confirm, choices

    xyz = ModuleType("xyz_grid.py")
    class_name = "Script" if shape == "a1111" else "XYZ"
    host_class = type(class_name, (), {"__module__": "xyz_grid.py", "run": lambda self, p: "ran", "title": lambda self: "X/Y/Z Plot"})
    setattr(xyz, class_name, host_class)
    xyz.draw_xyz_grid = lambda *args, **kwargs: None
    xyz.process_images = lambda p: None
    builtin_options = [AxisOption("Nothing", str, None)]
    if shape == "a1111":
        xyz.AxisOption, xyz.axis_options = AxisOption, builtin_options
    else:
        lib_xyz = ModuleType("lib_xyz")
        classes = ModuleType("lib_xyz.classes")
        classes.AxisOption = AxisOption
        builtins_module = ModuleType("lib_xyz.builtins")
        builtins_module.builtin_options = builtin_options
        monkeypatch.setitem(sys.modules, "lib_xyz", lib_xyz)
        monkeypatch.setitem(sys.modules, "lib_xyz.classes", classes)
        monkeypatch.setitem(sys.modules, "lib_xyz.builtins", builtins_module)
    scripts_module.scripts_data = [SimpleNamespace(script_class=host_class, module=xyz)]
    modules = ModuleType("modules")
    modules.__path__ = []
    for name, module in (("script_callbacks", script_callbacks), ("paths", paths), ("scripts", scripts_module)):
        setattr(modules, name, module)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    monkeypatch.setitem(sys.modules, "modules", modules)
    return xyz, {"callbacks": callbacks, "host_class": host_class, "axis_options": builtin_options, "AxisOption": AxisOption}


@pytest.mark.parametrize("shape", ["a1111", "forge-classic"])
def test_register_installs_axes_hooks_and_callbacks_in_each_hosts_shape(monkeypatch, tmp_path, shape):
    from lora_likeness import faces

    xyz, host = _host_modules(monkeypatch, tmp_path, shape)
    monkeypatch.setattr(faces, "register_models_dir", lambda folder, label: None)
    adapter = _adapter()
    original_run = host["host_class"].run
    try:
        adapter.register()
        adapter.register()  # a UI reload loads us again: nothing doubles
        labels = [option.label for option in host["axis_options"]]
        assert labels == ["Nothing", axes.EPOCH_AXIS, axes.STRENGTH_AXIS]
        assert all(type(option) is host["AxisOption"] for option in host["axis_options"])
        assert getattr(host["host_class"].run, xyz_hooks.WRAPPED_MARK) is original_run
        assert getattr(xyz.draw_xyz_grid, xyz_hooks.WRAPPED_MARK) is not None
        assert getattr(xyz.process_images, xyz_hooks.WRAPPED_MARK) is not None
        registered = {key: [c.callback for c in value] for key, value in host["callbacks"].items()}
        assert registered == {
            "callbacks_before_image_saved": [xyz_hooks.on_before_image_saved],
            "callbacks_image_saved": [xyz_hooks.on_image_saved],
            "callbacks_ui_tabs": [tab.build_tab],
        }
    finally:
        host["host_class"].run = original_run


def test_register_reports_an_xyz_script_of_unknown_shape_and_still_registers_the_rest(monkeypatch, tmp_path, capsys):
    from lora_likeness import faces

    xyz, host = _host_modules(monkeypatch, tmp_path, "forge-classic")
    monkeypatch.delitem(sys.modules, "lib_xyz.classes")
    monkeypatch.setattr(faces, "register_models_dir", lambda folder, label: None)
    _adapter().register()
    assert "no AxisOption in the X/Y/Z script module 'xyz_grid.py' nor in lib_xyz.classes" in capsys.readouterr().err
    assert [c.callback for c in host["callbacks"]["callbacks_ui_tabs"]] == [tab.build_tab]


def test_scored_xyz_grid_where_a_person_never_appears_recommends_no_cell(lora_dir, family_scorer, tmp_path):
    # Every cell shows obama alone although the prompt names obama and bush: no cell serves the family.
    xs, ys = ["jx-000001", "jx-000002"], [0.5, 1.0]

    scores, processed = _scored_family_grid(family_scorer, xs, ys, lambda x, y: (OBAMA[-1], None))
    people = scores.people_recommendation()
    assert people.best is None and people.reason == "no cell shows every person: bush never appears"
    assert scores.caption()[0] == people.sentence()
    assert people.sentence().startswith("No recommendation for the whole family: no cell shows every person: bush never appears.")
    assert "bush missing (0%) in every cell" in people.sentence()
    xyz_hooks.finish(scores, processed, fallback_dir=str(tmp_path))
    assert processed.comments.splitlines()[1] == people.sentence()
    assert "Likeness recommendation" not in processed.infotexts[0] and "Likeness people" not in processed.infotexts[0]
    report = json.loads(next(tmp_path.glob("xyz_grid-*-likeness_scores.json")).read_text())
    assert report["people_recommendation"]["best"] is None
    assert report["people_recommendation"]["best_per_person"]["obama"]["checkpoint"] in {"jx e1", "jx e2"}


def _diffusers_lora(path: Path) -> None:
    """A LoRA as ai-toolkit / diffusers write it for Flux: ``transformer.`` keys, PEFT's ``lora_A``/``lora_B``."""
    import numpy as np
    from safetensors.numpy import save_file

    key = "transformer.single_transformer_blocks.0.attn.to_k"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{key}.lora_A.weight": np.zeros((4, 64), np.float16), f"{key}.lora_B.weight": np.zeros((64, 4), np.float16)},
              str(path), metadata={"training_info": '{"step": 250, "epoch": 0}'})


def _fake_host_packages(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text("")
    return folder


@pytest.mark.parametrize("packages, listed", [
    ((), False),                                  # A1111: its Lora extension maps Kohya keys only
    (("modules_forge",), False),                  # Forge Classic: ldm_patched's key map has no lora_A/lora_B
    (("modules_forge", "backend"), True),         # lllyasviel's Forge, Forge Neo: ComfyUI's key map takes them
])
def test_the_epoch_axis_lists_diffusers_layout_loras_where_the_host_loader_takes_them(lora_dir, tmp_path, monkeypatch, packages, listed):
    _diffusers_lora(lora_dir / "flux" / "me_000000250.safetensors")
    _diffusers_lora(lora_dir / "flux" / "me_000000500.safetensors")
    _diffusers_lora(lora_dir / "exp_e1" / "pytorch_lora_weights.safetensors")  # a folder LoRA: the host cannot name it
    monkeypatch.syspath_prepend(str(_fake_host_packages(tmp_path / "host", *packages)))
    for name in ("modules_forge", "backend"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    choices = axes.epoch_choices()
    assert "jx-000001" in choices and "pytorch_lora_weights" not in choices
    assert (["me_000000250", "me_000000500"] == [c for c in choices if c.startswith("me_")]) is listed
    if not listed:
        assert not any(c.startswith("me_") for c in choices)
