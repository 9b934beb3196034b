"""The built-in trainer on a tiny SD1-shaped model (32 px, CPU): loss falls, a Kohya checkpoint per
epoch with ss_* metadata, diffusers loads the files, Ctrl-C + resume equals an uninterrupted run,
single-file bases load offline, samples are scored and early stopping / keep-best act on the scores."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from training_stack import require_training_stack

torch = require_training_stack()  # the `train` extra; CI installs it through `test`

from lora_likeness.progress import Progress
from lora_likeness.training import kohya_format as kf
from lora_likeness.training.config import ConfigError, TrainConfig
from lora_likeness.training.trainer import TrainingCancelled, train_lora

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny diffusers SD1-style model and a Kohya folder (4 images, 1 repeat, 2 regularisation images)."""
    from lora_likeness.training.tiny import write_tiny_model, write_training_folder

    root = tmp_path_factory.mktemp("tiny")
    base = write_tiny_model(root / "base", TOKENIZER)
    data = write_training_folder(root / "data", n_images=4, size=(48, 40), repeats=1, reg=2)
    return base, data


def _config(tiny, out: Path, **changes) -> TrainConfig:
    base, data = tiny
    config = TrainConfig(base=base, data=data, out=out, name="me", epochs=3, rank=4, alpha=2, lr=2e-3, resolution=32,
                         min_bucket_reso=32, max_bucket_reso=64, bucket_reso_steps=8, batch_size=2, mixed_precision="no",
                         save_precision="float", seed=3, device="cpu")
    return config.replace(**changes)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


class CancelAfter(Progress):
    """Cancels (like the stop button) once ``steps`` training steps are done."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        if self.description.startswith("training") and self.done >= self.steps:
            self.cancel()


def _fixed_eval_loss(pipe, latents, captions) -> float:
    """Denoising MSE on fixed noise and timesteps (the same numbers for every model)."""
    generator = torch.Generator().manual_seed(123)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(100, 900, (latents.shape[0],), generator=generator)
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0]
        prediction = pipe.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, hidden).sample
    return float(torch.nn.functional.mse_loss(prediction, noise))


def test_training_writes_kohya_checkpoints_and_the_loss_falls(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline
    from lora_likeness.families import FAMILIES
    from lora_likeness.training.data import load_dataset, load_training_image
    from lora_likeness.training.kohya_format import find_targets

    config = _config(tiny, tmp_path / "out", epochs=4, lr=5e-3)
    result = train_lora(config)
    out = tmp_path / "out"
    assert [p.name for p in result.checkpoints] == ["me-000001.safetensors", "me-000002.safetensors", "me-000003.safetensors"]
    assert result.final == out / "me.safetensors" and result.steps == 4 * 4 and not result.cancelled

    # Keys: exactly sd-scripts' networks.lora targets of this model, text encoder included.
    pipe = StableDiffusionPipeline.from_pretrained(tiny[0], local_files_only=True, safety_checker=None)
    expected = {t.key for t in find_targets(FAMILIES["sd1"].lora_components({"unet": pipe.unet, "text_encoder": pipe.text_encoder}))}
    final = _tensors(result.final)
    assert {k.split(".")[0] for k in final} == expected
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in final)
    assert final["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (4, 32, 1, 1)
    assert final["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"].shape == (32, 4)
    assert float(final["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"]) == 2.0

    # Metadata as sd-scripts writes it, epoch by epoch.
    epochs = [int(kf.read_metadata(p)["ss_epoch"]) for p in result.checkpoints + [result.final]]
    assert epochs == [1, 2, 3, 4]
    meta = kf.read_metadata(result.checkpoints[1])
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_steps"]) == ("networks.lora", "4", "2.0", "8")
    assert json.loads(meta["ss_tag_frequency"]) == {"1_ohwx person": {"ohwx person": 4, "photo": 4, "tag0": 2, "tag1": 2}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"1_ohwx person": {"n_repeats": 1, "img_count": 4}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 2}}
    assert meta["ss_num_train_images"] == "4" and meta["ss_num_reg_images"] == "2"
    ss_only = {k: v for k, v in meta.items() if k.startswith("ss_")}
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == kf.precalculate_hashes(_tensors(result.checkpoints[1]), ss_only)

    # Loss log: one row per step, and a plot.
    rows = (out / "me-loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss") and len(rows) == 1 + 16
    assert (out / "me-loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # diffusers' own Kohya loader takes the file; on the training images the LoRA denoises better.
    info = load_dataset(config)
    images = [load_training_image(i.path, i.bucket) for i in info.train_items]
    pixels = torch.from_numpy(__import__("numpy").stack(images)).float().permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    captions = [i.caption for i in info.train_items]
    before = _fixed_eval_loss(pipe, latents, captions)
    pipe.load_lora_weights(str(result.final), adapter_name="me")
    loaded = [n for n, _ in pipe.unet.named_parameters() if ".lora_A." in n]
    assert len(loaded) == len([k for k in expected if k.startswith("lora_unet_")])
    after = _fixed_eval_loss(pipe, latents, captions)
    print(f"fixed-batch denoising loss: base {before:.4f} -> with the LoRA {after:.4f}")
    assert after < 0.9 * before, (before, after)


def test_cancel_and_resume_equal_an_uninterrupted_run(tiny, tmp_path):
    whole = train_lora(_config(tiny, tmp_path / "whole", epochs=2))

    out = tmp_path / "parts"
    with pytest.raises(TrainingCancelled) as cancelled:
        train_lora(_config(tiny, out, epochs=2), CancelAfter(2))  # mid epoch 1
    assert cancelled.value.result.state == out / "me.likeness-state" and cancelled.value.result.steps == 2
    assert not (out / "me-000001.safetensors").exists()
    with pytest.raises(TrainingCancelled):
        train_lora(_config(tiny, out, epochs=2), CancelAfter(6), resume=True)  # mid epoch 2, after epoch 1 was saved
    assert (out / "me-000001.safetensors").exists() and not (out / "me.safetensors").exists()
    resumed = train_lora(_config(tiny, out, epochs=2), resume=True)

    assert resumed.steps == whole.steps == 8
    for name in ("me-000001.safetensors", "me.safetensors"):
        a, b = _tensors(tmp_path / "whole" / name), _tensors(out / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    csv = lambda folder: [line.split(",")[:3] for line in (folder / "me-loss.csv").read_text().splitlines()]
    assert csv(tmp_path / "whole") == csv(out)
    assert kf.read_metadata(out / "me.safetensors")["ss_session_id"] == kf.read_metadata(out / "me-000001.safetensors")["ss_session_id"]

    with pytest.raises(ConfigError, match="already finished"):
        train_lora(_config(tiny, out, epochs=2), resume=True)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train_lora(_config(tiny, out, epochs=2))  # never overwrites an earlier run


# What the hosts' LoRA lists take, by extension: ComfyUI's folder_paths.supported_pt_extensions and A1111's
# Lora lister (extensions-builtin/Lora/networks.py); the ComfyUI node tests check the real list too.
LORA_LISTER_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


def test_state_is_no_lora_file_and_an_earlier_versions_state_resumes(tiny, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingCancelled) as cancelled:
        train_lora(_config(tiny, out, epochs=2), CancelAfter(6))  # mid epoch 2: epoch 1's LoRA is saved
    state = cancelled.value.result.state
    assert state.is_file() and state.suffix not in LORA_LISTER_EXTENSIONS
    listed = sorted(p.name for p in out.iterdir() if p.suffix.lower() in LORA_LISTER_EXTENSIONS)
    assert listed == ["me-000001.safetensors"], listed  # a LoRA loader in this folder offers the LoRA, not the state

    # A run interrupted by an earlier version saved <name>-state.safetensors: it still resumes, and the
    # state it leaves is the new file (the old one, which loaders list, is gone).
    legacy = out / "me-state.safetensors"
    state.rename(legacy)
    with pytest.raises(ConfigError, match="already holds checkpoints or a training state named 'me' .*me-000001"):
        train_lora(_config(tiny, out, epochs=2))
    resumed = train_lora(_config(tiny, out, epochs=2), resume=True)
    assert resumed.steps == 8 and (out / "me.safetensors").is_file()
    assert not legacy.exists() and resumed.state == out / "me.likeness-state" and resumed.state.is_file()
    assert sorted(p.name for p in out.iterdir() if p.suffix.lower() in LORA_LISTER_EXTENSIONS) == ["me-000001.safetensors", "me.safetensors"]


def test_resume_refuses_changed_settings(tiny, tmp_path):
    with pytest.raises(TrainingCancelled):
        train_lora(_config(tiny, tmp_path, epochs=2), CancelAfter(2))
    with pytest.raises(ConfigError, match="rank was 4 in the saved run but is 8 now"):
        train_lora(_config(tiny, tmp_path, epochs=2, rank=8), resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_lora(_config(tiny, tmp_path / "fresh", epochs=2), resume=True)


def test_unet_only_with_memory_and_loss_options(tiny, tmp_path):
    config = _config(tiny, tmp_path, epochs=1, text_encoder_lr=0.0, gradient_accumulation=3, min_snr_gamma=5.0, noise_offset=0.05,
                     gradient_checkpointing=True, cache_latents=False, sdpa=False, clip_skip=2, shuffle_caption=True, keep_tokens=1,
                     prior_loss_weight=0.5, scheduler="cosine", warmup_steps=1, save_precision="fp16")
    result = train_lora(config)
    final = _tensors(result.final)
    assert final and all(k.startswith("lora_unet_") for k in final)
    assert {v.dtype for v in final.values()} == {torch.float16}
    assert result.steps == 2  # 4 batches, 3 per optimizer step: 3 + 1
    meta = kf.read_metadata(result.final)
    assert (meta["ss_text_encoder_lr"], meta["ss_min_snr_gamma"], meta["ss_gradient_accumulation_steps"], meta["ss_clip_skip"]) == \
        ("0.0", "5.0", "3", "2")
    assert any(float(v.abs().sum()) > 0 for k, v in final.items() if k.endswith("lora_up.weight"))  # it trained


def _tiny_single_file(tmp_path: Path) -> Path:
    """The tiny model's architecture in the original single-file (LDM) layout, from shared/tools/make_random_sd15.py."""
    spec = importlib.util.spec_from_file_location("make_random_sd15", SHARED / "tools" / "make_random_sd15.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    maker.UNET.update(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(1,), context_dim=32)
    maker.VAE.update(ch=16, ch_mult=(1, 2), num_res_blocks=1)
    maker.CLIP.update(hidden=32, layers=2, heads=4, intermediate=64)
    state, _ = maker.build_state_dict(dtype=torch.float32, seed=1)
    from safetensors.torch import save_file

    path = tmp_path / "tiny-sd1.safetensors"
    save_file(dict(state), str(path))
    return path


def test_single_file_base_loads_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = _tiny_single_file(tmp_path)
    config_dir = tmp_path / "config"  # the tiny model's configs only: no weights, no tokenizer
    for rel in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"):
        (config_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny[0] / rel, config_dir / rel)
    config = _config(tiny, tmp_path / "out", base=checkpoint, base_config=config_dir, tokenizer=TOKENIZER, epochs=1)
    result = train_lora(config)
    meta = kf.read_metadata(result.final)
    assert meta["ss_sd_model_name"] == "tiny-sd1.safetensors"
    assert meta["ss_new_sd_model_hash"] == kf.file_sha256(checkpoint) and meta["ss_sd_model_hash"] == kf.legacy_model_hash(checkpoint)

    from lora_likeness.families import ModelLoadError, detect, load_base

    assert detect(checkpoint).architecture == "sd1" and detect(result.final).architecture == "lora"
    with pytest.raises(ModelLoadError, match="is a LoRA, not a base model"):
        load_base(result.final)
    with pytest.raises(ModelLoadError, match="vocab.json"):
        load_base(checkpoint, tokenizer=tmp_path)


#: What transformers / diffusers printed into `likeness train` (issue 12): nothing a user can act on.
THIRD_PARTY_NOISE = ("requires torchvision", "should be kept in float32", "Loading pipeline components", "Loading weights",
                     "it/s]", "s/it]")


def test_cli_train_prints_our_messages_and_no_third_party_noise(tiny, tmp_path):
    """A real ``likeness`` process: a single-file base (diffusers' "Loading pipeline components" bar,
    transformers' "Loading weights" bar and its torchvision notice) cast to bf16 (diffusers' "should be kept in
    float32" for every model). Only our own lines may reach the terminal; an error of ours still does."""
    import os
    import subprocess
    import sys

    checkpoint = _tiny_single_file(tmp_path)
    config_dir = tmp_path / "config"
    for rel in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"):
        (config_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny[0] / rel, config_dir / rel)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY") and k not in ("PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["HF_HUB_OFFLINE"] = "1"
    entry_point = "import sys; from lora_likeness.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", entry_point, "train", "--base", str(checkpoint), "--base-config", str(config_dir), "--tokenizer",
            str(TOKENIZER), "--data", str(tiny[1]), "--out", str(tmp_path / "out"), "--name", "quiet", "--epochs", "1", "--rank", "2",
            "--alpha", "1", "--resolution", "32", "--mixed-precision", "bf16", "--device", "cpu", "--batch-size", "4", "--no-buckets"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert f"final      {tmp_path / 'out' / 'quiet.safetensors'}" in done.stdout
    for noise in THIRD_PARTY_NOISE:
        assert noise not in done.stdout + done.stderr, noise
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 2 and "error: " in again.stderr and "already holds checkpoints" in again.stderr


def test_samples_are_scored_and_keep_best_picks_the_best_epoch(tiny, tmp_path, monkeypatch):
    from lora_likeness.training import samples

    scores = {1: 0.30, 2: 0.55, 3: 0.50}

    class FakeScorer:
        def __init__(self, config, progress=None):
            pass

        def score(self, epoch, images):
            assert len(images) == 2 and images[0].shape == (32, 32, 3)
            return samples.EpochScore(epoch, scores[epoch], len(images), len(images))

    monkeypatch.setattr(samples, "SampleScorer", FakeScorer)
    config = _config(tiny, tmp_path, epochs=3, batch_size=4, score_refs=tmp_path, keep_best=True, sample_steps=2, samples_per_prompt=2,
                     sample_prompts=["photo of ohwx person"])
    result = train_lora(config)
    assert result.scores == scores and result.best_epoch == 2 and not result.stopped_early
    assert sorted(p.name for p in (tmp_path / "samples").iterdir())[:2] == ["me-000001_00_00.png", "me-000001_00_01.png"]
    from PIL import Image

    with Image.open(result.samples[2][0]) as image:
        assert "<lora:me-000002:1>" in image.info["parameters"]  # `likeness score --group-by lora` reads the epoch
    final, epoch2 = _tensors(result.final), _tensors(tmp_path / "me-000002.safetensors")
    assert all(torch.equal(final[k].float(), epoch2[k].float()) for k in final)
    assert kf.read_metadata(result.final)["ss_epoch"] == "2"


def test_early_stop_with_the_real_scorer(tiny, tmp_path):
    """Noise samples have no face: the score never improves, so patience 1 stops after the first scored epoch."""
    refs = SHARED / "faces" / "people" / "obama"
    pack = SHARED / "models" / "insightface" / "models" / "likeness_test"
    config = _config(tiny, tmp_path, epochs=3, batch_size=4, score_refs=refs, score_pack=str(pack), early_stop_patience=1, sample_steps=1)
    result = train_lora(config)
    assert result.stopped_early and result.epochs_done == 1 and result.scores == {1: None}
    assert [p.name for p in result.checkpoints] == ["me-000001.safetensors"] and result.final.is_file()
    assert kf.read_metadata(result.final)["ss_epoch"] == "1"


def test_cli_train_and_interrupt_handler(tiny, tmp_path, capsys):
    from lora_likeness.cli import main
    from lora_likeness.console import interrupt_cancels

    base, data = tiny
    code = main(["train", "--base", str(base), "--data", str(data), "--out", str(tmp_path), "--name", "cli", "--epochs", "2",
                 "--rank", "2", "--alpha", "1", "--resolution", "32", "--mixed-precision", "no", "--device", "cpu",
                 "--batch-size", "4", "--no-buckets", "--json", "-"])
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads(captured.out)
    assert [Path(p).name for p in report["checkpoints"]] == ["cli-000001.safetensors"] and report["steps"] == 4
    assert kf.read_metadata(tmp_path / "cli.safetensors")["ss_network_dim"] == "2"
    code = main(["train", "--base", str(base), "--data", str(data), "--out", str(tmp_path), "--name", "cli", "-q"])
    assert code == 2 and "already holds checkpoints" in capsys.readouterr().err

    import signal

    progress = Progress()
    before = signal.getsignal(signal.SIGINT)
    with interrupt_cancels(progress):
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # first Ctrl-C: cancel between steps
        assert progress.cancelled()
        with pytest.raises(KeyboardInterrupt):  # second: stop at once
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is before  # Python's handler is back


def test_cli_train_skips_a_truncated_image_and_names_uncaptioned_ones(tiny, tmp_path, capsys):
    """A JPEG cut short used to stop ``likeness train`` after the model loaded (OSError: image file is
    truncated); now it is skipped with its reason, and images without a caption are named."""
    import numpy as np
    from lora_likeness.cli import main
    from PIL import Image

    base, data = tiny
    copy = shutil.copytree(data, tmp_path / "data")
    folder = next((copy / "img").iterdir())
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "cut.jpg", quality=95)  # the header survives the cut: only a full decode fails
    encoded = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(encoded[: len(encoded) // 2])
    (folder / "cut.txt").write_text("ohwx person, cut\n", encoding="utf-8")
    (folder / "photo1.txt").unlink()
    code = main(["train", "--base", str(base), "--data", str(copy), "--out", str(tmp_path / "out"), "--name", "cut", "--epochs", "1",
                 "--rank", "2", "--alpha", "1", "--resolution", "32", "--mixed-precision", "no", "--device", "cpu", "--batch-size", "4",
                 "--no-buckets", "-q"])
    printed = " ".join(capsys.readouterr().out.split())
    assert code == 0 and (tmp_path / "out" / "cut.safetensors").is_file()
    assert f"warning: skipped {folder / 'cut.jpg'}: corrupt or truncated image (" in printed
    assert f"warning: 1 of 5 image(s) in {folder} have no caption (no .txt file beside them, or an empty one: photo1.png)" in printed


def test_a_tokenizer_declaring_8192_positions_is_fitted_to_clips_77(tiny, tmp_path):
    """ComfyUI's bundled sd1_tokenizer says model_max_length 8192; CLIP has 77 positions."""
    from lora_likeness.families import load_base

    tokenizer_dir = tmp_path / "sd1_tokenizer"
    shutil.copytree(TOKENIZER, tokenizer_dir)
    settings = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    settings["model_max_length"] = 8192
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(settings))
    base, _ = tiny
    model = load_base(base, tokenizer=tokenizer_dir)
    positions = model.text_encoder.config.max_position_embeddings
    assert model.tokenizer.model_max_length == positions
    hidden = model.family.encode_prompts(model, ["ohwx person, close-up"], 1).hidden
    assert hidden.shape[1] == positions
