"""Prepare Dataset and Train LoRA, called directly as ComfyUI calls them.

In CI ComfyUI is absent, so the nodes run on ``comfy_nodes.standin``; ComfyUI's folders (checkpoints,
loras, output) are the ``host`` functions, which the tests point at temporary folders. With ComfyUI's
folder on ``PYTHONPATH`` the same tests run on its real node API.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from comfy_pack import load_node_pack
from likeness_assets import FACES, PACK_DIR, PEOPLE

torch = pytest.importorskip("torch", reason="IMAGE tensors need torch (the project venv has the CPU build)")

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "tokenizers" / "sd1_clip"


pack = load_node_pack()
host = sys.modules[pack.__name__ + ".host"]
faces_nodes = sys.modules[pack.__name__ + ".faces"]
dataset_nodes = sys.modules[pack.__name__ + ".dataset"]
training_nodes = sys.modules[pack.__name__ + ".training"]
sweep_nodes = sys.modules[pack.__name__ + ".sweep"]


@pytest.fixture(autouse=True)
def _comfyui_folders(tmp_path, monkeypatch):
    """Output (and, on the real API, temp) folders in tmp_path: never the checkout or ComfyUI's own."""
    monkeypatch.setattr(host, "output_directory", lambda: tmp_path / "comfy-output")
    if host.IN_COMFYUI:
        import folder_paths

        saved = folder_paths.get_temp_directory()
        folder_paths.set_temp_directory(str(tmp_path / "comfy-temp"))
        yield
        folder_paths.set_temp_directory(saved)
    else:
        yield


# --------------------------------------------------------------------------------------------
# Prepare Dataset


@pytest.fixture(scope="module")
def face_model():
    return faces_nodes.FaceModel.execute(pack="likeness_test", provider="cpu", pack_path=str(PACK_DIR)).args[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Obama's four photos and one photo of Biden."""
    root = tmp_path_factory.mktemp("photos") / "me"
    root.mkdir()
    for path in sorted((PEOPLE / "obama").iterdir()):
        shutil.copy(path, root / path.name)
    shutil.copy(FACES / "others" / "biden_01.jpg", root / "biden_01.jpg")
    return root


def test_prepare_dataset_writes_a_kohya_folder(face_model, photos, tmp_path):
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    out = dataset_nodes.PrepareDataset.execute(face_model, str(photos), "ohwx", "man", str(tmp_path / "ds"), "512",
                                               max_images=10, target_steps=40)
    folder, summary, preview = out.args
    assert folder == str(tmp_path / "ds")
    subsets = [p for p in (tmp_path / "ds" / "img").iterdir() if p.is_dir()]
    assert len(subsets) == 1 and subsets[0].name.endswith("_ohwx man")
    repeats = int(subsets[0].name.split("_")[0])
    images = sorted(subsets[0].glob("*.png"))
    captions = sorted(subsets[0].glob("*.txt"))
    assert len(images) == len(captions) >= 3
    assert all(c.read_text(encoding="utf-8").startswith("ohwx man") for c in captions)
    assert (tmp_path / "ds" / "dataset.toml").is_file() and (tmp_path / "ds" / "report.json").is_file()
    kept = len(images)
    assert f"kept {kept} of 5 photo(s); rejected {5 - kept}" in summary
    assert "not_subject: 1" in summary  # Biden
    assert f"repeats {repeats}," in summary and repeats * kept >= 40 - kept
    assert preview.shape == (kept, 192, 192, 3) and preview.dtype == torch.float32
    assert out.ui is not None
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # photos are only read


def test_prepare_dataset_default_folder_and_errors(face_model, photos, tmp_path):
    folder = dataset_nodes.PrepareDataset.execute(face_model, str(photos), "sks", "man", "", "512", max_images=2).args[0]
    assert Path(folder) == tmp_path / "comfy-output" / "likeness" / "datasets" / "sks"
    assert len(list((Path(folder) / "img").glob("*/*.png"))) == 2
    with pytest.raises(ValueError, match=r"Prepare Dataset: --photos .*nowhere is not a folder"):
        dataset_nodes.PrepareDataset.execute(face_model, str(tmp_path / "nowhere"), "sks", "man", "", "512")
    with pytest.raises(ValueError, match="Prepare Dataset: --subject .* does not exist"):
        dataset_nodes.PrepareDataset.execute(face_model, str(photos), "sks", "man", "", "512",
                                             subject_refs=str(tmp_path / "nobody"))
    with pytest.raises(ValueError, match="type the path of a folder of photos"):
        dataset_nodes.PrepareDataset.execute(face_model, " ", "sks", "man", "", "512")


# --------------------------------------------------------------------------------------------
# Train LoRA


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny diffusers SD1-style base and a Kohya folder of 2 images (1 repeat)."""
    from lora_likeness.training.tiny import write_tiny_model, write_training_folder

    root = tmp_path_factory.mktemp("tiny")
    base = write_tiny_model(root / "base", TOKENIZER)
    data = write_training_folder(root / "data", n_images=2, size=(48, 40), repeats=1)
    return base, data


@pytest.fixture()
def comfy_models(tiny, tmp_path, monkeypatch):
    """ComfyUI's checkpoints entry -> the tiny base; the first loras folder in tmp_path."""
    loras = tmp_path / "loras"
    monkeypatch.setattr(host, "checkpoint_path", lambda name: tiny[0] if name == "tiny" else Path("/missing") / name)
    monkeypatch.setattr(host, "lora_roots", lambda: [loras])
    return loras


TRAIN = {"epochs": 2, "save_every": 1, "rank": 4, "alpha": 2.0, "learning_rate": 1e-3, "resolution": 32, "seed": 3}


def test_train_lora_writes_a_run_lora_checkpoints_lists(tiny, comfy_models):
    run, summary = training_nodes.TrainLora.execute("tiny", str(tiny[1]), "me", **TRAIN).args
    assert run == "me/me"
    folder = comfy_models / "me"
    assert (folder / "me-000001.safetensors").is_file() and (folder / "me.safetensors").is_file()
    assert "LoRA run me/me: 1 epoch file(s) + final me.safetensors" in summary and "2 epoch(s), 4 step(s)" in summary
    items, _ = sweep_nodes.LoraCheckpoints.execute(run).args
    assert [c.label for c in items] == ["e1", "final (e2)"]


def test_train_lora_stop_saves_state_and_resume_finishes(tiny, comfy_models, monkeypatch):
    calls = {"n": 0}

    def stop_on_third_check():  # Stop pressed while the third check runs
        calls["n"] += 1
        return calls["n"] == 3

    monkeypatch.setattr(host, "take_interruption", stop_on_third_check)
    with pytest.raises(RuntimeError, match=r"Train LoRA stopped after .* Queue again with 'resume' on"):
        training_nodes.TrainLora.execute("tiny", str(tiny[1]), "me", **TRAIN)
    assert not (comfy_models / "me" / "me.safetensors").exists()
    assert list((comfy_models / "me").glob("*state*"))
    _run, summary = training_nodes.TrainLora.execute("tiny", str(tiny[1]), "me", resume=True, **TRAIN).args
    assert (comfy_models / "me" / "me.safetensors").is_file() and "2 epoch(s), 4 step(s)" in summary


def test_train_lora_errors(tiny, comfy_models):
    with pytest.raises(ValueError, match="Train LoRA: name 'a/b' must be a plain file name"):
        training_nodes.TrainLora.execute("tiny", str(tiny[1]), "a/b", **TRAIN)
    with pytest.raises(ValueError, match="Train LoRA: resolution must be a multiple of 8"):
        training_nodes.TrainLora.execute("tiny", str(tiny[1]), "me", **{**TRAIN, "resolution": 36})
    with pytest.raises(ValueError, match="connect Prepare Dataset's dataset output"):
        training_nodes.TrainLora.execute("tiny", "", "me", **TRAIN)
    with pytest.raises(FileNotFoundError, match="models/checkpoints"):
        training_nodes.TrainLora.execute(training_nodes.NO_CHECKPOINTS, str(tiny[1]), "me", **TRAIN)
