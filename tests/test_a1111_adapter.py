"""The A1111 adapter's logic that needs no A1111: LoRA tags in prompts, the LoRA axes' prompt
rewriting over a real Lora folder, grid means and infotexts, scoring PIL images with the real face
pack, and the tab's "score a folder" action.

What needs A1111 itself (its X/Y/Z script, its Lora loader, its image saving) is tested against a
real A1111 in tests/integration/test_a1111_host.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

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
from lora_likeness_a1111 import axes, prompt_loras, scorer, tab, xyz_hooks

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
    assert axes.epoch_choices() == ["other", "jx-000001", "jx-000002", "jx-000010", "jx"]
    assert axes.format_epoch(None, None, "jx-000002") == "jx e2"
    assert axes.format_epoch(None, None, "jx") == "jx final (e12)"
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


# --- grid means and infotexts ---------------------------------------------------------------------


def test_infotext_with_score_sets_or_replaces_the_field():
    text = "photo\nNegative prompt: ugly\nSteps: 2, Seed: 1, Likeness: 0.100, Version: v1.10.1"
    assert xyz_hooks.infotext_with_score(text, 0.5731).endswith("Steps: 2, Seed: 1, Likeness: 0.573, Version: v1.10.1")
    assert xyz_hooks.infotext_with_score("photo\nSteps: 2", None) == "photo\nSteps: 2, Likeness: no face"


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


def test_score_folder_action_reports_bad_settings_as_a_message(tmp_path):
    assert "does not exist" in tab.score_folder_action(str(PEOPLE / "obama"), str(tmp_path / "missing"), str(PACK_DIR)).message
    assert "reference folder" in tab.score_folder_action("", str(tmp_path), str(PACK_DIR)).message


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
