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
