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


def lora_loader_lists(loras: Path) -> list[str]:
    """The files ComfyUI's LoraLoader lists in ``loras``: folder_paths' own filter on the real API, else its
    extension list (``folder_paths.supported_pt_extensions``) copied here."""
    files = [p.relative_to(loras).as_posix() for p in loras.rglob("*") if p.is_file()]
    if host.IN_COMFYUI:
        import folder_paths

        return folder_paths.filter_files_extensions(files, folder_paths.supported_pt_extensions)
    extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    return sorted(f for f in files if Path(f).suffix.lower() in extensions)


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
    assert [p.name for p in (comfy_models / "me").glob("*state*")] == ["me.likeness-state"]
    # What ComfyUI's LoraLoader would offer from this folder: no LoRA yet, and never the training state.
    assert lora_loader_lists(comfy_models) == []
    _run, summary = training_nodes.TrainLora.execute("tiny", str(tiny[1]), "me", resume=True, **TRAIN).args
    assert (comfy_models / "me" / "me.safetensors").is_file() and "2 epoch(s), 4 step(s)" in summary


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    """A tiny diffusers SDXL-shaped base (two text encoders, text_time embedding) and the same kind of dataset."""
    from lora_likeness.training.tiny import write_tiny_model, write_training_folder

    root = tmp_path_factory.mktemp("tiny-sdxl")
    base = write_tiny_model(root / "base", TOKENIZER, family="sdxl")
    data = write_training_folder(root / "data", n_images=2, size=(48, 40), repeats=1)
    return base, data


def test_train_lora_trains_sdxl_with_comfyuis_tokenizer(tiny_sdxl, tmp_path, monkeypatch):
    """An SDXL checkpoint gets an SDXL LoRA: the UNet in sd-scripts' SDXL naming (the family trains the UNet only
    unless told), with SDXL metadata; ComfyUI's bundled sd1_tokenizer feeds both text encoders."""
    from lora_likeness.checkpoints import lora_architecture
    from lora_likeness.training import kohya_format as kf
    from safetensors import safe_open

    loras = tmp_path / "loras"
    monkeypatch.setattr(host, "checkpoint_path", lambda name: tiny_sdxl[0])
    monkeypatch.setattr(host, "lora_roots", lambda: [loras])
    monkeypatch.setattr(host, "sd1_tokenizer_dir", lambda: TOKENIZER)  # ComfyUI's comfy/sd1_tokenizer holds these files
    run, summary = training_nodes.TrainLora.execute("sdxl_base.safetensors", str(tiny_sdxl[1]), "xl", **TRAIN).args
    assert run == "xl/xl" and "SDXL LoRA, trained at 32 px" in summary
    final = loras / "xl" / "xl.safetensors"
    with safe_open(str(final), "pt") as handle:
        keys = list(handle.keys())
    assert {key.split("_")[1] for key in keys} == {"unet"}
    assert any(key.startswith("lora_unet_input_blocks_") for key in keys)  # the original (sgm) layout, as ComfyUI keys SDXL
    assert lora_architecture(final) == "sdxl" and kf.read_metadata(final)["ss_base_model_version"] == "sdxl_base_v1-0"
    items, _ = sweep_nodes.LoraCheckpoints.execute(run).args
    assert [c.label for c in items] == ["e1", "final (e2)"]


def test_train_lora_resolution_follows_the_model_family(tiny, tiny_sdxl, comfy_models, monkeypatch):
    """Resolution 0 (the default) is the family's: 512 for SD1.x, 1024 for SDXL, with the family's buckets."""
    from lora_likeness import training
    from lora_likeness.families import detect_family
    from lora_likeness.training.trainer import TrainResult

    schema = {i.id: i for i in training_nodes.TrainLora.define_schema().inputs}
    assert schema["resolution"].default == 0
    seen = []

    def fake_train(config, progress=None, resume=False):
        seen.append(config)
        return TrainResult(out=config.out, name=config.name)

    monkeypatch.setattr(training, "train_lora", fake_train)
    monkeypatch.setattr(host, "sd1_tokenizer_dir", lambda: TOKENIZER)
    for base, title, side in ((tiny[0], "SD1.x", 512), (tiny_sdxl[0], "SDXL", 1024)):
        monkeypatch.setattr(host, "checkpoint_path", lambda name, base=base: base)
        settings = {k: v for k, v in TRAIN.items() if k != "resolution"}
        summary = training_nodes.TrainLora.execute("base.safetensors", str(tiny[1]), f"auto{side}", **settings).args[1]
        filled = seen[-1].for_family(detect_family(base))
        defaults = detect_family(base).defaults
        assert (filled.resolution, filled.min_bucket_reso, filled.max_bucket_reso) == (side, defaults.min_bucket_reso, defaults.max_bucket_reso)
        assert seen[-1].tokenizer == seen[-1].tokenizer_2 == TOKENIZER
        assert f"{title} LoRA, trained at {side} px" in summary


def test_train_lora_errors(tiny, comfy_models):
    with pytest.raises(ValueError, match="Train LoRA: name 'a/b' must be a plain file name"):
        training_nodes.TrainLora.execute("tiny", str(tiny[1]), "a/b", **TRAIN)
    with pytest.raises(ValueError, match="Train LoRA: resolution must be a multiple of 8"):
        training_nodes.TrainLora.execute("tiny", str(tiny[1]), "me", **{**TRAIN, "resolution": 36})
    with pytest.raises(ValueError, match="connect Prepare Dataset's dataset output"):
        training_nodes.TrainLora.execute("tiny", "", "me", **TRAIN)
    with pytest.raises(FileNotFoundError, match="models/checkpoints"):
        training_nodes.TrainLora.execute(training_nodes.NO_CHECKPOINTS, str(tiny[1]), "me", **TRAIN)


def test_train_lora_refuses_a_checkpoint_it_cannot_train_before_unloading_comfyuis_models(tiny, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    lora = tmp_path / "some_lora.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    monkeypatch.setattr(host, "checkpoint_path", lambda name: lora)
    monkeypatch.setattr(host, "lora_roots", lambda: [tmp_path / "loras"])
    freed = []
    monkeypatch.setattr(host, "free_models", lambda: freed.append(True))
    with pytest.raises(ValueError, match="Train LoRA: base .*some_lora.safetensors is a LoRA, not a base model"):
        training_nodes.TrainLora.execute("some_lora.safetensors", str(tiny[1]), "me", **TRAIN)
    assert freed == [] and not (tmp_path / "loras" / "me").exists()
