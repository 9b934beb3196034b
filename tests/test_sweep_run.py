"""``likeness run`` end to end on real photos and a tiny random SD1-shaped base (CPU): prepare → train →
sweep → report with every stage kept, a re-run that skips what is done, and a changed setting that keeps
the earlier training instead of overwriting it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training_stack import require_training_stack

require_training_stack()  # the `train` extra; CI installs it through `test`

from lora_likeness.sweep.run import RunConfig, RunError, run_all

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"
PACK = SHARED / "models" / "insightface" / "models" / "likeness_test"
OBAMA = SHARED / "faces" / "people" / "obama"

# Small and fast: 2 epochs of a few steps at 32 px, then 64 px images with 2 sampling steps.
TRAIN = {"repeats": 1, "rank": 4, "alpha": 2, "lr": 1e-3, "resolution": 32, "min_bucket_reso": 32, "max_bucket_reso": 64,
         "bucket_reso_steps": 8, "batch_size": 2, "mixed_precision": "no", "save_precision": "float", "device": "cpu"}
SWEEP = {"seeds": [1, 2], "strengths": [0.5, 1.0], "steps": 2, "width": 64, "height": 64, "sampler": "euler", "device": "cpu",
         "adherence": False}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from lora_likeness.training.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("run") / "base", TOKENIZER)


def _config(base: Path, out: Path, **changes) -> RunConfig:
    values = {"photos": OBAMA, "trigger": "ohwx", "class_word": "man", "base": base, "out": out, "pack": str(PACK), "providers": "cpu",
                  "epochs": 2, "resolution": 512, "train_overrides": dict(TRAIN), "sweep_overrides": dict(SWEEP)}
    values.update(changes)
    return RunConfig(**values)


def test_run_prepares_trains_sweeps_and_a_rerun_skips_what_is_done(base, tmp_path):
    out = tmp_path / "run"
    photos_before = {p.name: p.read_bytes() for p in OBAMA.iterdir()}
    first = run_all(_config(base, out))

    assert len(first.dataset.kept) == 4  # Obama's four photos are the dataset
    assert [p.name for p in first.training.checkpoints] == ["ohwx-000001.safetensors"]
    assert first.training.final.name == "ohwx.safetensors"
    sweep = first.sweep
    assert [c.label for c in sweep.checkpoints] == ["e1", "final (e2)"]
    assert len(sweep.images) == (1 + 2 * 2) * 2 and sweep.generated == len(sweep.images)
    assert {r.prompt for r in sweep.images} == {"photo of ohwx man"}
    for folder, name in (("dataset", "dataset.toml"), ("training", "ohwx-loss.csv"), ("sweep", "report.html"), ("sweep", "recommendation.json")):
        assert (out / folder / name).is_file(), f"{folder}/{name}"
    record = json.loads((out / "run.json").read_text())
    assert set(record) >= {"prepare", "train", "sweep", "result"}
    assert {p.name: p.read_bytes() for p in OBAMA.iterdir()} == photos_before  # the user's photos are untouched

    lora_bytes = (out / "training" / "ohwx.safetensors").read_bytes()
    again = run_all(_config(base, out))
    assert again.skipped == ["prepare", "train"]
    assert (again.sweep.generated, again.sweep.reused) == (0, len(sweep.images))
    assert (out / "training" / "ohwx.safetensors").read_bytes() == lora_bytes

    # Another training setting: the earlier training is kept beside the new one, and the sweep follows the new LoRA.
    changed = run_all(_config(base, out, epochs=3))
    assert "train" not in changed.skipped
    assert [c.label for c in changed.sweep.checkpoints] == ["e1", "e2", "final (e3)"]
    kept = [p for p in out.iterdir() if p.name.startswith("training.")]
    assert len(kept) == 1 and (kept[0] / "ohwx.safetensors").read_bytes() == lora_bytes
    assert any("kept as" in note for note in changed.notes)
    assert changed.sweep.generated >= 2 * 2 * 2  # e2 and the new final are new cells


def test_run_checks_its_inputs(base, tmp_path):
    with pytest.raises(RunError, match="--photos .* does not exist"):
        run_all(_config(base, tmp_path / "o", photos=tmp_path / "missing"))
    with pytest.raises(RunError, match="--trigger is required"):
        run_all(_config(base, tmp_path / "o", trigger=" "))
    (tmp_path / "a-file").write_text("not a folder\n")
    with pytest.raises(RunError, match="--out .*a-file/run: .*a-file is a file, not a folder"):
        run_all(_config(base, tmp_path / "a-file" / "run"))
    # No usable photo: said after prepare, with the reasons, instead of a trainer error about an empty dataset.
    photos = tmp_path / "no-faces"
    photos.mkdir()
    y, x = np.mgrid[0:200, 0:300]
    Image.fromarray(np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8)).save(photos / "gradient.png")
    with pytest.raises(RunError, match=r"no photo was kept of 1: 1 no_face: no face was detected; every file and its reason: .*report\.html"):
        run_all(_config(base, tmp_path / "o", photos=photos))
    assert not (tmp_path / "o" / "training").exists()


def test_cli_run(base, tmp_path, capsys):
    from lora_likeness.cli import main

    train_toml = tmp_path / "train.toml"
    train_toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in TRAIN.items() if k != "device") + "\n")
    out = tmp_path / "cli"
    argv = ["run", "--photos", str(OBAMA), "--trigger", "ohwx", "--class", "man", "--base", str(base), "--out", str(out),
            "--pack", str(PACK), "--providers", "cpu", "--epochs", "1", "--train-config", str(train_toml), "--seeds", "1",
            "--strengths", "1.0", "--steps", "1", "--width", "64", "--height", "64", "--device", "cpu", "--no-adherence", "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # One epoch: the final file is the one checkpoint the sweep uses (it used to say "0 checkpoint(s)").
    assert "dataset: 4 photo(s) kept" in printed and f"training: 1 checkpoint (final) in {out / 'training'}" in printed
    assert "2 image(s) generated, 0 reused" in printed
    assert main(argv) == 0
    assert "already done, skipped: prepare, train" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# SDXL: the same run on a tiny SDXL-shaped base; the family's defaults picked by itself
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory):
    from lora_likeness.training.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("run-sdxl") / "base", TOKENIZER, family="sdxl",
                            tokenizer_2_dir=SHARED / "tokenizers" / "sdxl_clip_g")


def test_an_sdxl_base_picks_sdxl_defaults_by_itself(sdxl_base, base, tmp_path):
    from lora_likeness.families import detect_family
    from lora_likeness.sweep.run import sweep_config, train_config

    config = RunConfig(photos=OBAMA, trigger="ohwx", class_word="man", base=sdxl_base, out=tmp_path / "o")
    family = detect_family(sdxl_base)
    train = train_config(config, tmp_path / "dataset", family)
    sweep = sweep_config(config, tmp_path / "training", family)
    assert (train.family, train.resolution, train.min_bucket_reso, train.max_bucket_reso) == ("sdxl", 1024, 512, 2048)
    assert (sweep.family, sweep.width, sweep.height) == ("sdxl", 1024, 1024)
    sd1 = RunConfig(photos=OBAMA, trigger="ohwx", class_word="man", base=base, out=tmp_path / "o1")
    assert train_config(sd1, tmp_path / "dataset", detect_family(base)).resolution == 512
    assert (sweep_config(sd1, tmp_path / "training", detect_family(base)).width, 768) == (512, 768)


def test_run_on_an_sdxl_base_end_to_end(sdxl_base, tmp_path):
    from lora_likeness.training import kohya_format as kf

    out = tmp_path / "run"
    result = run_all(_config(sdxl_base, out, resolution=None))
    assert len(result.dataset.kept) == 4
    meta = kf.read_metadata(result.training.final)
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora")
    modules = {k.split(".", 1)[0] for k in kf.lora_header_keys(result.training.final)}
    assert modules and all(m.startswith("lora_unet_input_blocks_") or m.startswith("lora_unet_output_blocks_")
                           or m.startswith("lora_unet_middle_block_") for m in modules)  # SDXL: the UNet only, unless told
    sweep = result.sweep
    assert [c.label for c in sweep.checkpoints] == ["e1", "final (e2)"] and sweep.config.family == "sdxl"
    assert len(sweep.images) == (1 + 2 * 2) * 2 and sweep.generated == len(sweep.images)
    assert (out / "sweep" / "report.html").is_file() and (out / "sweep" / "recommendation.json").is_file()
    # The dataset was cropped at SDXL's 1024 (the family's size, since --resolution was not given).
    toml = (out / "dataset" / "dataset.toml").read_text()
    assert "1024" in toml
    again = run_all(_config(sdxl_base, out, resolution=None))
    assert again.skipped == ["prepare", "train"] and again.sweep.generated == 0


def test_loras_of_one_family_are_refused_on_the_other_before_generating(base, sdxl_base, tmp_path):
    from lora_likeness.sweep.config import SweepConfig, SweepConfigError
    from lora_likeness.sweep.engine import run_sweep

    import torch
    from safetensors.torch import save_file

    sd1_run = run_all(_config(base, tmp_path / "sd1", epochs=1))
    sdxl_loras = tmp_path / "sdxl-loras"
    sdxl_loras.mkdir()
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 16),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(64, 4)},
              str(sdxl_loras / "me-000001.safetensors"), {"ss_base_model_version": "sdxl_base_v1-0", "ss_epoch": "1"})
    for lora_dir, other, lora_title, base_title in ((sd1_run.training.out, sdxl_base, "SD1.x", "SDXL"),
                                                    (sdxl_loras, base, "SDXL", "SD1.x")):
        config = SweepConfig(base=other, loras=lora_dir, refs=OBAMA, out=tmp_path / "sweep", prompts=["photo of ohwx man"],
                             pack=str(PACK), providers="cpu", **SWEEP)
        with pytest.raises(SweepConfigError, match=f"is a {lora_title} LoRA but the loaded model is {base_title}"):
            run_sweep(config)
        assert not (tmp_path / "sweep" / "images").exists()  # refused before any image
