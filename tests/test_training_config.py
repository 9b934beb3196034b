"""Training without a model: config layering, the Kohya layout / dataset.toml reader, buckets, epoch
order, Kohya names and hashes, the state file, and the sd-scripts backend against a stand-in
``accelerate`` (the real sd-scripts parser is checked in tests/integration/test_lora_compat.py)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from lora_likeness.families import FAMILIES
from lora_likeness.training import data as tdata
from lora_likeness.training import kohya_format as kf
from lora_likeness.training.config import ConfigError, TrainConfig, config_from_mapping, load_config_file
from PIL import Image

TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers" / "sd1_clip"
SD1 = FAMILIES["sd1"]


def _sd1_file(path: Path) -> Path:
    """A file with an SD1.x checkpoint's header (key names and shapes are what the family is told by)."""
    from safetensors.numpy import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((8, 4, 1, 1), np.float16),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros(4, np.float16)}, str(path))
    return path


def _image(path: Path, size=(40, 30), colour=(120, 80, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _layout(root: Path, reg: bool = True) -> Path:
    train = root / "img" / "3_ohwx woman"
    _image(train / "a.png", size=(60, 30))
    (train / "a.txt").write_text("ohwx woman, smiling, outdoors\n", encoding="utf-8")
    _image(train / "b.jpg", size=(30, 60))  # no caption: falls back to the folder's tokens
    (root / "img" / "notes").mkdir()  # not <repeats>_...: skipped with a warning
    if reg:
        _image(root / "reg" / "1_woman" / "r1.png")
        _image(root / "reg" / "1_woman" / "r2.png")
        _image(root / "reg" / "1_woman" / "r3.png")
    return root


# -- config -----------------------------------------------------------------------------------------


def test_toml_config_layers_aliases_and_relative_paths(tmp_path):
    toml = tmp_path / "cfg" / "train.toml"
    toml.parent.mkdir()
    toml.write_text('rank = 32\nsave_every = 2\nbase = "models/sd15.safetensors"\nsample_prompt = "photo of ohwx"\n'
                    'gradient_checkpointing = true\nlr = 2e-4\n', encoding="utf-8")
    config = load_config_file(toml)
    assert config.rank == 32 and config.save_every_n_epochs == 2 and config.gradient_checkpointing is True
    assert config.base == toml.parent / "models" / "sd15.safetensors"
    assert config.sample_prompts == ["photo of ohwx"] and config.lr == pytest.approx(2e-4)
    # explicit values win, None means "not given"
    merged = config.replace(rank=8, alpha=None)
    assert merged.rank == 8 and merged.alpha == 16.0


def test_toml_unknown_key_names_the_closest(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("rnak = 8\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown setting 'rnak'.*'rank'"):
        load_config_file(toml)
    with pytest.raises(ConfigError, match="must be a number"):
        config_from_mapping({"epochs": "ten"})


@pytest.mark.parametrize("changes, message", [
    ({"base": "model.ckpt"}, "unpickling"),
    ({"optimizer": "Lion"}, "optimizer 'Lion'"),
    ({"rank": 0}, "rank must be at least 1"),
    ({"resolution": 500}, "multiple of 8"),
    ({"name": "a/b"}, "plain file name"),
    ({"keep_best": True}, "keep_best needs score_refs"),
    ({"unet_lr": 0.0}, "unet_lr must be > 0"),
])
def test_validate_names_the_setting(tmp_path, changes, message):
    config = TrainConfig(base=tmp_path / "m.safetensors", data=tmp_path, out=tmp_path / "o")
    config = config_from_mapping(changes, config)
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    """It was a FileExistsError traceback (--out a file) or a PermissionError one (read-only)."""
    from lora_likeness.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("the user's file\n")
    config = TrainConfig(base=tmp_path / "m.safetensors", data=tmp_path, out=blocker)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        config.validate()
    with pytest.raises(ConfigError, match=f"run: {blocker} is a file, not a folder"):
        config.replace(out=blocker / "run").validate()
    assert main(["train", "--base", str(tmp_path / "m.safetensors"), "--data", str(tmp_path), "--out", str(blocker), "-q"]) == 2
    assert f"--out {blocker} is a file, not a folder" in " ".join(capsys.readouterr().err.split())
    assert blocker.read_text() == "the user's file\n"


def test_text_encoder_lr_zero_means_unet_only():
    config = TrainConfig(lr=1e-4, text_encoder_lr=0.0)
    assert not config.train_text_encoder and config.effective_unet_lr == pytest.approx(1e-4)
    assert TrainConfig(alpha=0, rank=8).effective_alpha == 8.0


def test_cli_flags_override_the_toml(tmp_path):
    from lora_likeness.cli import build_parser
    from lora_likeness.training.command import config_from_args

    toml = tmp_path / "t.toml"
    toml.write_text("rank = 32\nepochs = 20\n", encoding="utf-8")
    args = build_parser().parse_args(["train", "--config", str(toml), "--rank", "8", "--base", "m.safetensors", "--data", "d",
                                      "--out", "o", "--no-cache-latents", "--sample-prompt", "a", "--sample-prompt", "b"])
    config = config_from_args(args)
    assert (config.rank, config.epochs, config.cache_latents, config.sample_prompts) == (8, 20, False, ["a", "b"])
    assert args.handler.__name__ == "command_train"


# -- data -------------------------------------------------------------------------------------------


def test_kohya_layout_captions_reg_and_tag_frequency(tmp_path):
    root = _layout(tmp_path / "ds")
    info = tdata.load_dataset(TrainConfig(data=root, resolution=64, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=16))
    assert [s.image_dir.name for s in info.subsets] == ["3_ohwx woman", "1_woman"]
    assert [(s.num_repeats, s.class_tokens, s.is_reg) for s in info.subsets] == [(3, "ohwx woman", False), (1, "woman", True)]
    captions = {i.path.name: i.caption for i in info.items}
    assert captions == {"a.png": "ohwx woman, smiling, outdoors", "b.jpg": "ohwx woman", "r1.png": "woman", "r2.png": "woman", "r3.png": "woman"}
    assert info.num_train_images == 6 and info.num_reg_images == 3
    assert any("notes" in w for w in info.warnings)
    assert info.tag_frequency() == {"3_ohwx woman": {"ohwx woman": 2, "smiling": 1, "outdoors": 1}}
    assert info.dirs_info(reg=False) == {"3_ohwx woman": {"n_repeats": 3, "img_count": 2}}
    # 2:1 landscape and 1:2 portrait: the buckets of about 64x64 pixels closest in aspect (80x48: 1.67; 64x64: 1.0)
    buckets = {i.path.name: i.bucket for i in info.items}
    assert buckets["a.png"] == (80, 48) and buckets["b.jpg"] == (48, 80)


def test_repeats_override_and_missing_training_folder(tmp_path):
    root = _layout(tmp_path / "ds", reg=False)
    info = tdata.load_dataset(TrainConfig(data=root, repeats=5).for_family(SD1))
    assert info.subsets[0].num_repeats == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="<repeats>_<trigger> <class>"):
        tdata.load_dataset(TrainConfig(data=empty).for_family(SD1))


def test_broken_images_are_found_before_training_and_missing_captions_are_named(tmp_path):
    """A JPEG cut short has a valid header: only a full decode finds it (it used to stop the run after the
    model loaded, OSError: image file is truncated). Images without a caption are named, per folder."""
    root = _layout(tmp_path / "ds", reg=True)
    train = root / "img" / "3_ohwx woman"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(train / "cut.jpg", quality=95)
    data = (train / "cut.jpg").read_bytes()
    (train / "cut.jpg").write_bytes(data[: len(data) // 2])
    (train / "cut.txt").write_text("ohwx woman, cut\n", encoding="utf-8")
    (train / "empty.png").write_bytes(b"")
    for name in ("c.png", "d.png", "e.png"):
        _image(train / name)
    (train / "d.txt").write_text("   \n", encoding="utf-8")  # an empty caption file counts as none
    info = tdata.load_dataset(TrainConfig(data=root).for_family(SD1))
    assert sorted(i.path.name for i in info.train_items) == ["a.png", "b.jpg", "c.png", "d.png", "e.png"]
    assert any(w.startswith(f"skipped {train / 'cut.jpg'}: corrupt or truncated image (image file is truncated") for w in info.warnings)
    assert any(w.startswith(f"skipped {train / 'empty.png'}: ") for w in info.warnings)
    uncaptioned = [w for w in info.warnings if "have no caption" in w]
    assert uncaptioned == [f"4 of 7 image(s) in {train} have no caption (no .txt file beside them, or an empty one: b.jpg, c.png, d.png "
                           f"and 1 more); they train on the folder's tokens 'ohwx woman' alone"]  # reg images: no warning
    for name in ("a.png", "b.jpg", "c.png", "d.png", "e.png"):
        (train / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"no readable training image under .*: skipped .*a\.png: corrupt or truncated .*; and 4 more"):
        tdata.load_dataset(TrainConfig(data=root).for_family(SD1))


def test_sd_scripts_dataset_toml_inheritance(tmp_path):
    root = _layout(tmp_path / "ds")
    (root / "img" / "3_ohwx woman" / "a.caption").write_text("from caption file", encoding="utf-8")
    toml = root / "dataset.toml"
    toml.write_text(textwrap.dedent("""
        [general]
        shuffle_caption = true
        keep_tokens = 1

        [[datasets]]
        resolution = [64, 64]
        batch_size = 2
        enable_bucket = false

          [[datasets.subsets]]
          image_dir = 'img/3_ohwx woman'
          class_tokens = 'ohwx woman'
          num_repeats = 4

          [[datasets.subsets]]
          is_reg = true
          image_dir = 'reg/1_woman'
          class_tokens = 'woman'
          caption_extension = '.txt'
          keep_tokens = 0
        """), encoding="utf-8")
    info = tdata.load_dataset(TrainConfig(data=toml).for_family(SD1))
    train, reg = info.subsets
    # caption_extension defaults to sd-scripts' ".caption"; keep_tokens / shuffle come from [general]
    assert (train.num_repeats, train.caption_extension, train.keep_tokens, train.shuffle_caption) == (4, ".caption", 1, True)
    assert (reg.is_reg, reg.keep_tokens, reg.num_repeats) == (True, 0, 1)
    assert train.image_dir == root / "img" / "3_ohwx woman"
    assert {i.path.name: i.caption for i in info.items if not i.is_reg} == {"a.png": "from caption file", "b.jpg": "ohwx woman"}
    assert info.batch_size == 2 and info.resolution == (64, 64) and {i.bucket for i in info.items} == {(64, 64)}


def test_bucket_resolutions_match_sd_scripts():
    buckets = tdata.make_bucket_resolutions((512, 512), 256, 1024, 64)
    # hand-computed from sd-scripts' make_bucket_resolutions: width w -> height (262144 // w) // 64 * 64
    for pair in [(512, 512), (384, 640), (640, 384), (448, 576), (256, 1024), (1024, 256), (704, 320)]:
        assert pair in buckets
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert tdata.choose_bucket((400, 600), buckets) == (384, 640)
    assert tdata.choose_bucket((1000, 1000), buckets) == (512, 512)


def test_training_image_covers_and_centre_crops(tmp_path):
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, 20:60] = 255  # white centre band, black sides
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = tdata.load_training_image(tmp_path / "wide.png", (32, 32))
    assert out.shape == (32, 32, 3)
    assert out[:, 4:28].mean() > 240  # the centre was kept, the black sides cropped away


def test_epoch_order_is_a_function_of_seed_and_epoch(tmp_path):
    root = _layout(tmp_path / "ds")
    info = tdata.load_dataset(TrainConfig(data=root, resolution=64, buckets=False, batch_size=2))
    first = tdata.epoch_batches(info, 1, seed=7, prior_loss_weight=0.5)
    assert first == tdata.epoch_batches(info, 1, seed=7, prior_loss_weight=0.5)
    assert first != tdata.epoch_batches(info, 2, seed=7, prior_loss_weight=0.5)
    flat = [s for batch in first for s in batch]
    train = [s for s in flat if not info.items[s.item].is_reg]
    reg = [s for s in flat if info.items[s.item].is_reg]
    assert len(train) == 6 and len(reg) == 6  # 2 images x 3 repeats; reg fills as many slots
    assert {s.weight for s in reg} == {0.5} and {s.weight for s in train} == {1.0}
    assert sorted(info.items[s.item].path.name for s in train) == ["a.png"] * 3 + ["b.jpg"] * 3


def test_shuffle_caption_keeps_the_first_tokens():
    rng = np.random.default_rng(0)
    caption = "ohwx woman, a, b, c, d, e, f"
    seen = {tdata.shuffle_caption(caption, 1, rng) for _ in range(20)}
    assert len(seen) > 1 and all(s.startswith("ohwx woman, ") for s in seen)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in seen)


# -- Kohya format -----------------------------------------------------------------------------------


def test_kohya_names_and_files():
    assert kf.kohya_key("lora_unet", "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0") == \
        "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0"
    assert kf.text_encoder_kohya_path("encoder.layers.3.mlp.fc1", flattened=True) == "text_model.encoder.layers.3.mlp.fc1"
    assert kf.epoch_file_name("me", 7) == "me-000007.safetensors" and kf.final_file_name("me") == "me.safetensors"


def test_sshs_hashes_cover_tensors_and_ss_metadata_only(tmp_path):
    import torch

    tensors = {"lora_unet_x.lora_down.weight": torch.ones(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_x.alpha": torch.tensor(4.0)}
    data = kf.serialize_lora(tensors, {"ss_network_dim": 4, "ss_tag_frequency": {"a": {"b": 1}}, "other": "x"})
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    meta = kf.read_metadata(path)
    assert meta["ss_network_dim"] == "4" and json.loads(meta["ss_tag_frequency"]) == {"a": {"b": 1}}
    # sd-scripts' rule: the hash is over the file written with only its ss_* metadata, after the header
    from safetensors.torch import save

    reference = save(tensors, {"ss_network_dim": "4", "ss_tag_frequency": '{"a": {"b": 1}}'})
    header = int.from_bytes(reference[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(reference[8 + header:]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(reference[0x100000:0x110000]).hexdigest()[:8]
    saved = kf.save_lora_file(tmp_path / "y.safetensors", tensors, {"ss_network_dim": 4})
    assert stat.S_IMODE(saved.stat().st_mode) & 0o044  # readable by others, like any model file
    assert not list(tmp_path.glob(".y.safetensors*"))  # no temporary left behind


def test_legacy_model_hash_is_a1111s(tmp_path):
    blob = bytes(range(256)) * 5000
    (tmp_path / "m.safetensors").write_bytes(blob)
    assert kf.legacy_model_hash(tmp_path / "m.safetensors") == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


# -- state ------------------------------------------------------------------------------------------


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    import torch
    from lora_likeness.training import state

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW([{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}])
    for _ in range(3):
        (params[0].sum() ** 2 + params[1].pow(3).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors, document = state.optimizer_to_parts(optimizer)
    state.save_state(tmp_path / "s.safetensors", tensors, {"optimizer": document, "epoch": 2})
    loaded_tensors, loaded = state.load_state(tmp_path / "s.safetensors")
    fresh = torch.optim.AdamW([{"params": [torch.nn.Parameter(p.detach().clone())], "lr": 1.0} for p in params])
    state.optimizer_from_parts(fresh, loaded_tensors, loaded["optimizer"])
    assert loaded["epoch"] == 2 and [g["lr"] for g in fresh.param_groups] == [0.1, 0.01]
    for index in (0, 1):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state_dict()["state"][index][name], optimizer.state_dict()["state"][index][name])
    (tmp_path / "not-state.safetensors").write_bytes(kf.serialize_lora({"a": torch.zeros(1)}, {}))
    with pytest.raises(ValueError, match="not a Likeness training state"):
        state.load_state(tmp_path / "not-state.safetensors")


# -- sd-scripts backend -------------------------------------------------------------------------------


def _fake_checkout(root: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """A folder shaped like sd-scripts and an ``accelerate`` stand-in that prints what sd-scripts prints."""
    checkout = root / "sd-scripts"
    (checkout / "networks").mkdir(parents=True)
    (checkout / "train_network.py").write_text("# stand-in\n")
    (checkout / "networks" / "lora.py").write_text("# stand-in\n")
    accelerate = checkout / "venv" / "bin" / "accelerate"
    accelerate.parent.mkdir(parents=True)
    accelerate.write_text(f"""#!{sys.executable}
import sys, os, pathlib, json
args = sys.argv[1:]
out = pathlib.Path(next(a.split("=", 1)[1] for a in args if a.startswith("--output_dir=")))
name = next(a.split("=", 1)[1] for a in args if a.startswith("--output_name="))
(out / "argv.json").write_text(json.dumps({{"args": args, "cwd": os.getcwd()}}))
sys.stderr.write("steps:   0%|          | 0/4 [00:00<?, ?it/s]\\r")
for epoch in (1, 2):
    print(f"\\nepoch {{epoch}}/2", flush=True)
    for step in (1, 2):
        n = (epoch - 1) * 2 + step
        sys.stderr.write(f"steps:  {{n*25}}%|##| {{n}}/4 [00:0{{n}}<00:00,  2.50it/s, avr_loss=0.{{9-n}}]\\r")
        sys.stderr.flush()
    ckpt = out / (f"{{name}}-{{epoch:06d}}.safetensors" if epoch < 2 else f"{{name}}.safetensors")
    ckpt.write_bytes(b"x")
    if epoch < 2:
        (out / f"{{name}}-{{epoch:06d}}-state").mkdir()
    print(f"\\nsaving checkpoint: {{ckpt}}", flush=True)
sys.exit({exit_code})
""")
    accelerate.chmod(0o755)
    return checkout, accelerate


def _recording_progress():
    from lora_likeness.progress import Progress

    class Recording(Progress):
        def __init__(self):
            super().__init__()
            self.details = []

        def advance(self, count=1, detail=None):
            super().advance(count, detail)
            self.details.append(detail)

    return Recording()


@pytest.mark.skipif(os.name != "posix", reason="the stand-in accelerate is a POSIX script")
def test_sd_scripts_backend_runs_follows_and_collects(tmp_path, monkeypatch):
    from lora_likeness.training.trainer import train_lora

    monkeypatch.delenv("SD_SCRIPTS_DIR", raising=False)
    checkout, _ = _fake_checkout(tmp_path)
    root = _layout(tmp_path / "ds")
    out = tmp_path / "out"
    config = TrainConfig(base=_sd1_file(tmp_path / "sd15.safetensors"), data=root, out=out, name="me", epochs=2, rank=8, alpha=4,
                         text_encoder_lr=0, backend="sd-scripts", sd_scripts=checkout, tokenizer=TOKENIZER)
    progress = _recording_progress()
    result = train_lora(config, progress)
    assert [p.name for p in result.checkpoints] == ["me-000001.safetensors"] and result.final == out / "me.safetensors"
    assert progress.total == 4 and progress.done == 4 and "2.50 it/s" in progress.details[-1] and "ep 2/2" in progress.details[-1]
    recorded = json.loads((out / "argv.json").read_text())
    args = recorded["args"]
    assert recorded["cwd"] == str(checkout) and args[:2] == ["launch", "--num_cpu_threads_per_process"]
    assert str(checkout / "train_network.py") in args
    for expected in ("--network_module=networks.lora", "--network_dim=8", "--network_alpha=4.0", "--network_train_unet_only",
                     "--max_train_epochs=2", "--output_name=me", f"--dataset_config={(out / 'me-dataset.toml').resolve()}", "--save_state"):
        assert expected in args
    assert not any(a.startswith("--text_encoder_lr") for a in args)
    # the tokenizer is handed over where sd-scripts' --tokenizer_cache_dir looks, so it needs no network
    cache = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--tokenizer_cache_dir=")))
    assert (cache / "openai_clip-vit-large-patch14" / "vocab.json").is_file()
    from lora_likeness.training.config import read_toml

    written = read_toml(out / "me-dataset.toml")
    subsets = written["datasets"][0]["subsets"]
    assert [(s["num_repeats"], s["class_tokens"], s["is_reg"]) for s in subsets] == [(3, "ohwx woman", False), (1, "woman", True)]
    assert (out / "me-sd-scripts.log").read_text().count("saving checkpoint") == 2
    # resume passes the newest saved state folder
    from lora_likeness.training.sd_scripts import prepare

    command, _, _ = prepare(config, resume=True, write=False)
    assert f"--resume={out / 'me-000001-state'}" in command


@pytest.mark.skipif(os.name != "posix", reason="the stand-in accelerate is a POSIX script")
def test_sd_scripts_failure_and_missing_pieces_are_clear(tmp_path, monkeypatch):
    from lora_likeness.training.sd_scripts import SdScriptsError, find_accelerate, find_checkout
    from lora_likeness.training.trainer import train_lora

    monkeypatch.delenv("SD_SCRIPTS_DIR", raising=False)
    with pytest.raises(SdScriptsError, match="--sd-scripts DIR or set SD_SCRIPTS_DIR"):
        find_checkout(TrainConfig())
    with pytest.raises(SdScriptsError, match="not an sd-scripts checkout"):
        find_checkout(TrainConfig(sd_scripts=tmp_path))
    checkout, _ = _fake_checkout(tmp_path / "bad", exit_code=3)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    bare, _ = _fake_checkout(tmp_path / "bare")
    import shutil

    shutil.rmtree(bare / "venv")
    with pytest.raises(SdScriptsError, match="accelerate not found"):
        find_accelerate(TrainConfig(), bare)
    config = TrainConfig(base=_sd1_file(tmp_path / "m.safetensors"), data=_layout(tmp_path / "ds"), out=tmp_path / "out", epochs=2,
                         backend="sd-scripts", sd_scripts=checkout, tokenizer=TOKENIZER)
    with pytest.raises(SdScriptsError, match="exited with code 3"):
        train_lora(config, _recording_progress())


def test_print_command_without_a_checkout(tmp_path, monkeypatch, capsys):
    from lora_likeness.cli import main

    monkeypatch.delenv("SD_SCRIPTS_DIR", raising=False)
    root = _layout(tmp_path / "ds")
    code = main(["train", "--base", str(_sd1_file(tmp_path / "sd15.safetensors")), "--data", str(root), "--out", str(tmp_path / "o"),
                 "--name", "me", "--rank", "8", "--print-command", "--tokenizer", str(TOKENIZER)])
    captured = capsys.readouterr()
    assert code == 0
    line = captured.out.strip().splitlines()[-1]
    assert line.startswith("accelerate launch ") and "train_network.py" in line and "--network_dim=8" in line
    assert "placeholder" in captured.err and (tmp_path / "o" / "me-dataset.toml").is_file()


# -- sd-scripts backend on an SDXL base ----------------------------------------------------------------


def _sdxl_file(path: Path) -> Path:
    """A file with an SDXL checkpoint's header: its UNet, CLIP-L and OpenCLIP-bigG key names."""
    from safetensors.numpy import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((8, 4, 1, 1), np.float16),
               "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": np.zeros(4, np.float16),
               "conditioner.embedders.1.model.ln_final.weight": np.zeros(4, np.float16)}, str(path))
    return path


def _sd_scripts_command(tmp_path: Path, base: Path, data: Path | None = None, **settings) -> tuple[list[str], dict, Path]:
    from lora_likeness.training.sd_scripts import prepare

    checkout = tmp_path / "sd-scripts"
    if not checkout.exists():
        checkout, _ = _fake_checkout(tmp_path)
    out = tmp_path / "out"
    config = TrainConfig(base=base, data=data or _layout(tmp_path / "ds"), out=out, name="me", backend="sd-scripts", sd_scripts=checkout,
                         **{"tokenizer": TOKENIZER, **settings})
    command, _, info = prepare(config.validate(), write=True)
    return command, info, out


def test_sd_scripts_trains_an_sdxl_base_with_sdxl_train_network(tmp_path):
    from lora_likeness.training.config import read_toml
    from transformers import CLIPTokenizer

    base = _sdxl_file(tmp_path / "sdxl.safetensors")
    command, info, out = _sd_scripts_command(tmp_path, base, text_encoder_lr=0)
    script = command.index(str(tmp_path / "sd-scripts" / "sdxl_train_network.py"))
    args = command[script + 1:]
    assert info["family"] == "sdxl" and f"--pretrained_model_name_or_path={base.resolve()}" in args
    for expected in ("--network_train_unet_only", "--cache_text_encoder_outputs", "--no_half_vae", "--cache_latents", "--save_state"):
        assert expected in args
    assert not any(a.startswith(("--clip_skip", "--v2", "--v_parameterization", "--text_encoder_lr")) for a in args)
    # the dataset: SDXL's resolution and buckets
    written = read_toml(out / "me-dataset.toml")["datasets"][0]
    assert (written["resolution"], written["min_bucket_reso"], written["max_bucket_reso"], written["bucket_reso_steps"]) == (1024, 512, 2048, 64)
    # both tokenizers where strategy_sdxl looks for them, so sd-scripts never goes to the Hub
    cache = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--tokenizer_cache_dir=")))
    first = CLIPTokenizer.from_pretrained(cache / "openai_clip-vit-large-patch14")
    second = CLIPTokenizer.from_pretrained(cache / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k")
    assert first.pad_token == "<|endoftext|>" and second.pad_token == "!" and second.pad_token_id == 0
    assert first.model_max_length == second.model_max_length == 77 and first.get_vocab() == second.get_vocab()
    assert len(second("ohwx woman", padding="max_length", max_length=second.model_max_length).input_ids) == 77


def test_sd_scripts_sdxl_flags_follow_the_settings(tmp_path):
    base = _sdxl_file(tmp_path / "sdxl.safetensors")
    # trained text encoders: one rate for both, and their outputs cannot be cached
    command, _, _ = _sd_scripts_command(tmp_path / "a", base, text_encoder_lr=5e-5)
    assert "--text_encoder_lr=5e-05" in command and "--cache_text_encoder_outputs" not in command
    assert "--network_train_unet_only" not in command
    # shuffled captions (sd-scripts refuses to cache their encodings) and bf16 (no VAE overflow to avoid)
    command, _, _ = _sd_scripts_command(tmp_path / "b", base, text_encoder_lr=0, shuffle_caption=True, mixed_precision="bf16")
    assert "--network_train_unet_only" in command and "--cache_text_encoder_outputs" not in command and "--no_half_vae" not in command
    # a dataset .toml whose subset shuffles its captions counts too
    ds = _layout(tmp_path / "c" / "ds")
    toml = tmp_path / "c" / "dataset.toml"
    toml.write_text(textwrap.dedent(f"""\
        [[datasets]]
        resolution = 768
        batch_size = 2
          [[datasets.subsets]]
          image_dir = "{(ds / 'img' / '3_ohwx woman').as_posix()}"
          num_repeats = 3
          shuffle_caption = true
          keep_tokens = 1
        """))
    command, _, out = _sd_scripts_command(tmp_path / "c", base, data=toml, text_encoder_lr=0)
    assert "--cache_text_encoder_outputs" not in command
    from lora_likeness.training.config import read_toml

    written = read_toml(out / "me-dataset.toml")["datasets"][0]
    # what the .toml sets is what the built-in trainer trains with, so sd-scripts gets it too
    assert (written["resolution"], written["batch_size"], written["min_bucket_reso"]) == (768, 2, 512)
    assert tdata.load_dataset(TrainConfig(data=toml).for_family(FAMILIES["sdxl"])).resolution == (768, 768)


def test_sd_scripts_refuses_what_sdxl_train_network_cannot_do_as_the_builtin_trainer(tmp_path):
    base = _sdxl_file(tmp_path / "sdxl.safetensors")
    with pytest.raises(ConfigError, match="clip_skip 2: sd-scripts' SDXL trainer always conditions on the penultimate layer"):
        _sd_scripts_command(tmp_path / "a", base, clip_skip=2)
    with pytest.raises(ConfigError, match=r"bucket_reso_steps 48: sd-scripts' sdxl_train_network.py needs a multiple of 32 for SDXL"):
        _sd_scripts_command(tmp_path / "b", base, bucket_reso_steps=48)
    command, _, _ = _sd_scripts_command(tmp_path / "c", base, bucket_reso_steps=96)  # fine for SDXL ...
    assert "--network_train_unet_only" in command and "--cache_text_encoder_outputs" in command  # (SDXL's default: UNet only)
    with pytest.raises(ConfigError, match="multiple of 64 for SD1.x"):  # ... not for SD1.x
        _sd_scripts_command(tmp_path / "d", _sd1_file(tmp_path / "sd15.safetensors"), bucket_reso_steps=96)
    command, info, _ = _sd_scripts_command(tmp_path / "e", base, buckets=False, bucket_reso_steps=48, sample_every_n_epochs=1, keep_best=False)
    assert any("sample images and identity scores" in w for w in info["warnings"])


def test_sd_scripts_sd1_tokenizer_cache_and_clip_skip(tmp_path):
    """SD1.x keeps --clip_skip; a tokenizer that declares more positions than CLIP's 77 (ComfyUI's bundled one
    says 8192) is handed over with 77, or sd-scripts would pad every caption to 8192 tokens."""
    from lora_likeness.training.sd_scripts import prepare

    comfy_like = tmp_path / "sd1_tokenizer"
    comfy_like.mkdir()
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        (comfy_like / name).write_bytes((TOKENIZER / name).read_bytes())
    settings = json.loads((TOKENIZER / "tokenizer_config.json").read_text())
    (comfy_like / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 8192}))
    checkout, _ = _fake_checkout(tmp_path)
    config = TrainConfig(base=_sd1_file(tmp_path / "sd15.safetensors"), data=_layout(tmp_path / "ds"), out=tmp_path / "out",
                         backend="sd-scripts", sd_scripts=checkout, tokenizer=comfy_like, clip_skip=2).validate()
    command, _, info = prepare(config)
    assert str(checkout / "train_network.py") in command and "--clip_skip=2" in command
    assert "--no_half_vae" not in command and "--cache_text_encoder_outputs" not in command
    cache = Path(next(a.split("=", 1)[1] for a in command if a.startswith("--tokenizer_cache_dir=")))
    assert sorted(p.name for p in cache.iterdir()) == ["openai_clip-vit-large-patch14"]
    written = json.loads((cache / "openai_clip-vit-large-patch14" / "tokenizer_config.json").read_text())
    assert written["model_max_length"] == 77 and written["pad_token"] == settings["pad_token"]


def test_sd_scripts_sdxl_diffusers_folder_with_v_prediction(tmp_path):
    """A diffusers SDXL folder: its own tokenizer folders are handed over, and a v-prediction scheduler (which the
    built-in trainer trains with) becomes --v_parameterization."""
    from lora_likeness.families.sdxl import MODEL_INDEX, SCHEDULER, UNET

    base = tmp_path / "sdxl-vpred"
    for rel, content in (("model_index.json", MODEL_INDEX), ("unet/config.json", UNET),
                         ("scheduler/scheduler_config.json", {**SCHEDULER, "prediction_type": "v_prediction"})):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(json.dumps(content))
    for sub in ("tokenizer", "tokenizer_2"):
        (base / sub).mkdir()
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
            (base / sub / name).write_bytes((TOKENIZER / name).read_bytes())
    command, info, _ = _sd_scripts_command(tmp_path, base, tokenizer=None)
    assert str(tmp_path / "sd-scripts" / "sdxl_train_network.py") in command and "--v_parameterization" in command
    assert info["tokenizer_dirs"] == {"tokenizer": base / "tokenizer", "tokenizer_2": base / "tokenizer_2"}
    cache = Path(next(a.split("=", 1)[1] for a in command if a.startswith("--tokenizer_cache_dir=")))
    second = json.loads((cache / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k" / "special_tokens_map.json").read_text())
    assert second["pad_token"] == "!"
