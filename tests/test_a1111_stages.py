"""The A1111 tab's "Dataset" and "Train" actions without gradio or A1111: real photos and the real
face pack through ``prepare_dataset_action``; the tiny SD1-shaped model through ``train_lora_action``
(32 px, CPU); A1111's ``shared.state`` drawn and its Interrupt honoured by :class:`A1111Progress`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from likeness_assets import PACK_DIR, PEOPLE, SHARED
from test_a1111_adapter import _adapter

_adapter()
from lora_likeness_a1111 import stages

TOKENIZER = SHARED / "tokenizers" / "sd1_clip"
BUSH = min((PEOPLE / "lfw_george_w_bush").iterdir())


def _state(**values) -> SimpleNamespace:
    return SimpleNamespace(**{"interrupted": False, "sampling_step": 0, "sampling_steps": 0, "textinfo": "", **values})


def test_a1111_progress_draws_in_shared_state_and_interrupt_cancels():
    state = _state()
    progress = stages.A1111Progress(state)
    progress.start(4, "photos")
    progress.advance(detail="a.jpg")
    assert (state.sampling_steps, state.sampling_step) == (4, 1)
    assert "photos 1/4" in state.textinfo and "a.jpg" in state.textinfo
    progress.check()  # not interrupted: nothing happens
    state.interrupted = True
    with pytest.raises(stages.Cancelled):
        progress.check()


def _photos(root: Path) -> Path:
    """Obama's four photos and one of George W. Bush."""
    root.mkdir()
    for photo in sorted((PEOPLE / "obama").iterdir()):
        shutil.copy(photo, root / photo.name)
    shutil.copy(BUSH, root / BUSH.name)  # another person: rejected as not the subject
    return root


def test_prepare_dataset_action_writes_a_kohya_dataset_and_summarises_it(tmp_path):
    photos = _photos(tmp_path / "photos")
    state = _state()
    outcome = stages.prepare_dataset_action(str(photos), "ohwx", "man", "", 512, 10, 40, str(PEOPLE / "obama"),
                                            str(PACK_DIR), outputs_root=tmp_path / "outputs",
                                            progress=stages.A1111Progress(state))
    out = tmp_path / "outputs" / "likeness" / "datasets" / "ohwx"
    assert outcome.out == out, outcome.message
    report = json.loads((out / "report.json").read_text())
    kept, rejected = report["summary"]["kept"], report["summary"]["rejected"]
    assert kept >= 2 and kept + rejected == len(list(photos.iterdir()))
    assert f"**Kept {kept}** of {kept + rejected} photo(s)" in outcome.message
    assert f"Repeats {report['summary']['repeats']}" in outcome.message and str(out) in outcome.message
    for code, n in report["summary"]["rejected_by_reason"].items():
        assert f"{code} {n}" in outcome.message
    assert len(outcome.gallery) == kept and all(Path(p).is_file() and Path(p).with_suffix(".txt").is_file() for p in outcome.gallery)
    assert all(Path(p).parent.parent == out / "img" for p in outcome.gallery)
    assert state.sampling_steps > 0 and state.textinfo.startswith("Likeness:")


def test_prepare_dataset_action_reports_bad_settings_and_interrupt(tmp_path):
    photos = _photos(tmp_path / "photos")
    assert "Set the folder" in stages.prepare_dataset_action("", "ohwx").message
    assert "trigger" in stages.prepare_dataset_action(str(photos), "two words", pack=str(PACK_DIR), outputs_root=tmp_path).message
    assert "size" in stages.prepare_dataset_action(str(photos), "ohwx", size=300, pack=str(PACK_DIR), outputs_root=tmp_path).message
    assert "pack" in stages.prepare_dataset_action(str(photos), "ohwx", pack=str(tmp_path / "nopack"), outputs_root=tmp_path).message.lower()
    interrupted = stages.prepare_dataset_action(str(photos), "ohwx", size=512, pack=str(PACK_DIR), outputs_root=tmp_path,
                                                progress=stages.A1111Progress(_state(interrupted=True)))
    assert interrupted.message.startswith("Cancelled") and interrupted.out is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")  # the `train` extra; CI installs it through `test`
    from lora_likeness.training.tiny import write_tiny_model, write_training_folder

    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_model(root / "base", TOKENIZER), write_training_folder(root / "data", n_images=2, size=(48, 40), repeats=1)


_SMALL = {"min_bucket_reso": 32, "max_bucket_reso": 64, "bucket_reso_steps": 8, "mixed_precision": "no", "save_precision": "float",
          "device": "cpu"}


def test_train_lora_action_writes_checkpoints_into_the_lora_folder_and_frees_vram_first(tiny, tmp_path):
    base, data = tiny
    calls = []
    outcome = stages.train_lora_action(str(base), str(data), "me", epochs=2, save_every=1, rank=4, alpha=2, lr=1e-3,
                                       resolution=32, seed=1, lora_root=tmp_path / "Lora",
                                       free_vram=lambda: calls.append("freed") or "Unloaded the model.", extra=_SMALL)
    out = tmp_path / "Lora" / "me"
    assert outcome.out == out and calls == ["freed"], outcome.message
    assert (out / "me-000001.safetensors").is_file() and (out / "me.safetensors").is_file()
    assert outcome.message.startswith("Unloaded the model.") and "**Trained 2 epoch(s)**" in outcome.message
    assert "me-000001.safetensors" in outcome.message and str(outcome.result.loss_csv) in outcome.message
    assert outcome.result.loss_csv.is_file()
    assert Path(outcome.loss_plot).is_file() and outcome.loss_plot in outcome.message


def test_train_lora_action_outputs_get_the_mode_the_umask_gives(tiny, tmp_path):
    # A1111's own outputs follow the process umask; ours did not (LoRAs 0644 whatever the umask, reports 0600).
    # 0o002 (a shared group's umask) tells honouring it apart from a fixed 0644.
    import os
    import stat

    base, data = tiny
    before = os.umask(0o002)
    try:
        outcome = stages.train_lora_action(str(base), str(data), "me", epochs=1, rank=4, alpha=2, lr=1e-3, resolution=32,
                                           lora_root=tmp_path / "Lora", extra=_SMALL)
    finally:
        os.umask(before)
    out = tmp_path / "Lora" / "me"
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert "**Trained 1 epoch(s)**" in outcome.message and out / "me.safetensors" in files, outcome.message
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o664) for p in files}
    assert stat.S_IMODE(out.stat().st_mode) == 0o775


def test_train_lora_action_refuses_ckpt_and_says_resume_after_interrupt(tiny, tmp_path):
    base, data = tiny
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not unpickled")
    assert ".safetensors" in stages.train_lora_action(str(ckpt), str(data), "me", lora_root=tmp_path).message
    assert "does not exist" in stages.train_lora_action(str(base), str(tmp_path / "none"), "me", lora_root=tmp_path).message
    assert "name" in stages.train_lora_action(str(base), str(data), "a/b", lora_root=tmp_path, extra=_SMALL).message
    early = stages.train_lora_action(str(base), str(data), "me", epochs=1, rank=4, resolution=32, lora_root=tmp_path / "Lora",
                                     progress=stages.A1111Progress(_state(interrupted=True)), extra=_SMALL)
    assert "Cancelled before training started" in early.message, early.message

    class InterruptAfterOneStep(stages.A1111Progress):  # the user presses Interrupt during training
        def advance(self, count=1, detail=None):
            super().advance(count, detail)
            if self.description.startswith("training"):
                self.state.interrupted = True

    outcome = stages.train_lora_action(str(base), str(data), "me", epochs=2, rank=4, resolution=32, lora_root=tmp_path / "Lora",
                                       progress=InterruptAfterOneStep(_state()), extra=_SMALL)
    assert "Training cancelled after 1 step(s)" in outcome.message and "Resume" in outcome.message, outcome.message
    assert Path(outcome.result.state).is_file()
    resumed = stages.train_lora_action(str(base), str(data), "me", epochs=2, rank=4, resolution=32, resume=True,
                                       lora_root=tmp_path / "Lora", extra=_SMALL)
    assert "**Trained 2 epoch(s)**" in resumed.message and (tmp_path / "Lora" / "me" / "me.safetensors").is_file(), resumed.message


# --- the Train section on SDXL ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    pytest.importorskip("torch")
    from lora_likeness.training.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny_sdxl") / "base", TOKENIZER, family="sdxl",
                            tokenizer_2_dir=SHARED / "tokenizers" / "sdxl_clip_g")


def test_train_lora_action_trains_an_sdxl_base_into_the_lora_folder(tiny, tiny_sdxl, tmp_path):
    _, data = tiny
    outcome = stages.train_lora_action(str(tiny_sdxl), str(data), "xl", epochs=1, rank=4, alpha=2, lr=1e-3, resolution="32",
                                       lora_root=tmp_path / "Lora", extra=_SMALL)
    final = tmp_path / "Lora" / "xl" / "xl.safetensors"
    assert final.is_file() and "**Trained 1 epoch(s)**" in outcome.message, outcome.message
    assert outcome.message.startswith("Base: SDXL (base); training at 32 px."), outcome.message
    from safetensors import safe_open

    with safe_open(str(final), "np") as handle:
        metadata, keys = handle.metadata(), list(handle.keys())  # noqa: SIM118 - safe_open is not a dict
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["ss_resolution"] == "(32, 32)"
    assert keys and all(k.startswith("lora_unet_") for k in keys)  # SDXL's default: the UNet only


def test_train_resolution_auto_is_the_base_familys_default(tiny, tiny_sdxl, tmp_path, monkeypatch):
    import lora_likeness.training as training
    from lora_likeness.families import FAMILIES

    seen = []

    def train_lora(config, progress=None, resume=False):  # the settings the tab hands the core
        seen.append(config)
        raise stages.Cancelled("stop before loading")

    monkeypatch.setattr(training, "train_lora", train_lora)
    _, data = tiny
    for base, family in ((tiny[0], "sd1"), (tiny_sdxl, "sdxl")):
        outcome = stages.train_lora_action(str(base), str(data), "me", resolution=stages.AUTO_RESOLUTION, lora_root=tmp_path)
        defaults = FAMILIES[family].defaults
        assert f"training at {defaults.resolution} px (the family's default)." in outcome.message, outcome.message
        config = seen[-1]
        assert (config.family, config.resolution, config.min_bucket_reso, config.max_bucket_reso) == (family, None, None, None)
        filled = config.for_family(FAMILIES[family])
        assert (filled.resolution, filled.min_bucket_reso, filled.max_bucket_reso) == (
            defaults.resolution, defaults.min_bucket_reso, defaults.max_bucket_reso)
    assert [c.family for c in seen] == ["sd1", "sdxl"] and FAMILIES["sdxl"].defaults.resolution == 1024
    # A chosen resolution is kept, with buckets that hold it.
    stages.train_lora_action(str(tiny_sdxl), str(data), "me", resolution="768", lora_root=tmp_path)
    assert (seen[-1].resolution, seen[-1].min_bucket_reso, seen[-1].max_bucket_reso) == (768, 512, 2048)
    assert "resolution must be" in stages.train_lora_action(str(tiny_sdxl), str(data), "me", resolution="big", lora_root=tmp_path).message
    assert stages.resolution_label() == "Resolution (auto: 512 px for SD1.x, 1024 px for SDXL)"
    assert stages.resolution_choices()[0] == stages.AUTO_RESOLUTION


def test_train_lora_action_refuses_a_base_of_an_unsupported_family_before_freeing_vram(tiny, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    sd2 = tmp_path / "sd2.safetensors"  # SD2.x: OpenCLIP-H text encoder
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((8, 4, 1, 1), np.float16),
               "cond_stage_model.model.ln_final.weight": np.zeros(4, np.float16)}, str(sd2))
    calls = []
    outcome = stages.train_lora_action(str(sd2), str(tiny[1]), "me", lora_root=tmp_path, free_vram=lambda: calls.append(1) or "x")
    assert outcome.message.startswith("Could not train: base sd2.safetensors is an SD2.x checkpoint") and calls == [], outcome.message
