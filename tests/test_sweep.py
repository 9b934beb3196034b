"""The sweep on a tiny random SD1-shaped model (CPU): LoRA switching against diffusers' own loader and the
base weights, the full grid of images with their parameters, resuming, a changed setting, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_stack import require_training_stack

torch = require_training_stack()  # the `train` extra; CI installs it through `test`

from lora_likeness.progress import Cancelled, Progress
from lora_likeness.sweep.config import SweepConfig, SweepConfigError, parse_seeds
from lora_likeness.sweep.loras import LoraLoadError, LoraSwitcher
from lora_likeness.training.config import TrainConfig
from lora_likeness.training.trainer import train_lora

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"
PACK = SHARED / "models" / "insightface" / "models" / "likeness_test"
OBAMA = SHARED / "faces" / "people" / "obama"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny diffusers base and a Kohya run of it: me-000001, me-000002 and the final me.safetensors (epoch 3)."""
    from lora_likeness.training.tiny import write_tiny_model, write_training_folder

    root = tmp_path_factory.mktemp("sweep")
    base = write_tiny_model(root / "base", TOKENIZER)
    data = write_training_folder(root / "data", n_images=4, size=(48, 40), repeats=1)
    config = TrainConfig(base=base, data=data, out=root / "loras", name="me", epochs=3, rank=4, alpha=2, lr=5e-3, resolution=32,
                         min_bucket_reso=32, max_bucket_reso=64, bucket_reso_steps=8, batch_size=2, mixed_precision="no",
                         save_precision="float", seed=3, device="cpu")
    train_lora(config)
    return base, root / "loras"


def _components(pipe):
    from lora_likeness.families import FAMILIES

    return FAMILIES["sd1"].lora_components({"unet": pipe.unet, "text_encoder": pipe.text_encoder})


def _pipe(base: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe):
    generator = torch.Generator().manual_seed(7)
    return pipe("photo of ohwx person", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np").images


def _base_weights(model) -> dict:
    # peft wraps a target as <path>.base_layer: the same tensor under its original name
    return {name.replace(".base_layer", ""): value.detach().clone() for name, value in model.named_parameters()}


def test_switching_applies_what_diffusers_applies_and_never_touches_the_base(tiny):
    from safetensors.torch import load_file

    base, loras = tiny
    files = [loras / "me-000001.safetensors", loras / "me-000002.safetensors"]
    pipe = _pipe(base)
    plain = _image(pipe)
    before = {"unet": _base_weights(pipe.unet), "text_encoder": _base_weights(pipe.text_encoder)}

    switcher = LoraSwitcher(_components(pipe))
    first = switcher.load(files[0])
    assert first.n_modules > 0 and not first.unknown
    assert switcher.apply(first, 1.0) == "injected"
    with_first = _image(pipe)
    assert switcher.apply(switcher.load(files[1]), 0.5) == "copied"  # same run, same shape: tensors copied in place
    with_second_half = _image(pipe)
    assert switcher.apply(first, 1.0) == "copied"
    assert (_image(pipe) == with_first).all()  # switching back gives the same image again

    for path, strength, ours in ((files[0], 1.0, with_first), (files[1], 0.5, with_second_half)):
        reference = _pipe(base)
        reference.load_lora_weights(load_file(str(path)), adapter_name="ref")
        reference.set_adapters(["ref"], [strength])
        assert abs(_image(reference) - ours).max() < 1e-5, path.name
    assert abs(with_first - plain).max() > 1e-4  # the LoRA does change the image

    switcher.disable()
    assert (_image(pipe) == plain).all()  # no LoRA: exactly the base model
    switcher.remove()
    for component, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        after = _base_weights(model)
        assert after.keys() == before[component].keys()
        assert all(torch.equal(before[component][k], after[k]) for k in after), component


def test_a_lora_of_another_rank_gets_fresh_layers(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    base, loras = tiny
    state = load_file(str(loras / "me-000002.safetensors"))
    smaller = {}
    for key, value in state.items():  # rank 4 -> 2: the first two directions of every module
        if key.endswith("lora_down.weight"):
            value = value[:2].contiguous()
        elif key.endswith("lora_up.weight"):
            value = value[:, :2].contiguous()
        smaller[key] = value
    path = tmp_path / "rank2.safetensors"
    save_file(smaller, str(path))

    pipe = _pipe(base)
    switcher = LoraSwitcher(_components(pipe))
    switcher.apply(switcher.load(loras / "me-000001.safetensors"), 1.0)
    assert switcher.apply(switcher.load(path), 0.8) == "injected"
    ours = _image(pipe)
    reference = _pipe(base)
    reference.load_lora_weights(smaller, adapter_name="ref")
    reference.set_adapters(["ref"], [0.8])
    assert abs(_image(reference) - ours).max() < 1e-5


def test_a_lora_for_another_model_is_refused_clearly(tiny, tmp_path):
    from safetensors.torch import save_file

    base, _ = tiny
    path = tmp_path / "sdxl_like.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(path))
    pipe = _pipe(base)
    with pytest.raises(LoraLoadError, match="none of its 1 modules exist"):
        LoraSwitcher(_components(pipe)).load(path)
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(LoraLoadError, match="only .safetensors"):
        LoraSwitcher(_components(pipe)).load(pickle)


# ------------------------------------------------------------------------------------------------
# the whole sweep
# ------------------------------------------------------------------------------------------------


def _config(tiny, out: Path, **changes) -> SweepConfig:
    base, loras = tiny
    config = SweepConfig(base=base, loras=loras, refs=OBAMA, out=out, prompts=["photo of ohwx person"], seeds=[1, 2],
                         strengths=[0.5, 1.0], steps=2, width=64, height=64, sampler="euler", pack=str(PACK), providers="cpu",
                         device="cpu", adherence=False)
    return config.replace(**changes)


class StopAfter(Progress):
    """Cancels (like Ctrl-C) once ``images`` images were generated."""

    def __init__(self, images: int) -> None:
        super().__init__()
        self.images = images

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        if self.description == "generating" and self.done >= self.images:
            self.cancel()


def test_sweep_makes_the_full_grid_then_resumes_and_reuses(tiny, tmp_path):
    from lora_likeness.sweep.engine import PNG_KEY, run_sweep

    out = tmp_path / "sweep"
    cells = 1 + 3 * 2  # no LoRA + 3 checkpoints x 2 strengths
    total = cells * 2  # x 2 seeds
    with pytest.raises(Cancelled):
        run_sweep(_config(tiny, out, batch_size=2), StopAfter(4))
    assert len(list((out / "images").rglob("*.png"))) == 4  # two whole batches were saved before the stop

    result = run_sweep(_config(tiny, out, batch_size=2))
    assert (result.generated, result.reused) == (total - 4, 4)
    assert len(result.images) == total
    layout = {(r.checkpoint, r.strength) for r in result.images}
    assert layout == {("no LoRA", None)} | {(c, s) for c in ("e1", "e2", "final (e3)") for s in (0.5, 1.0)}
    assert [c.label for c in result.checkpoints] == ["e1", "e2", "final (e3)"]
    for record in result.images:
        assert record.path.is_file() and record.path.is_relative_to(out / "images")
    assert result.recommendation is not None and result.recommendation.headline()
    for name in ("report.html", "recommendation.json", "sweep.json"):
        assert (out / name).is_file(), name

    from PIL import Image

    sample = next(r for r in result.images if r.checkpoint == "e2" and r.strength == 0.5 and r.seed == 2)
    with Image.open(sample.path) as image:
        assert image.size == (64, 64)
        recorded = json.loads(image.info[PNG_KEY])
        parameters = image.info["parameters"]
    assert recorded["lora"] == "me-000002.safetensors" and recorded["strength"] == 0.5 and recorded["seed"] == 2
    assert recorded["steps"] == 2 and recorded["sampler"] == "euler" and recorded["epoch"] == 2
    assert "<lora:me-000002:0.5>" in parameters and "Seed: 2" in parameters and "Size: 64x64" in parameters

    stamps = {r.path: r.path.stat().st_mtime_ns for r in result.images}
    again = run_sweep(_config(tiny, out, batch_size=2))
    assert (again.generated, again.reused) == (0, total)
    assert {r.path: r.path.stat().st_mtime_ns for r in again.images} == stamps  # nothing rewritten

    # Another setting is another image: the earlier files are kept beside the new ones, never lost.
    changed = run_sweep(_config(tiny, out, batch_size=2, steps=3))
    assert (changed.generated, changed.reused) == (total, 0)
    kept = [p for p in (out / "images").rglob("*.png") if p not in stamps]
    assert len(kept) == total
    assert any("made with other settings" in w for w in changed.recommendation.warnings)


def test_same_seed_same_noise_in_every_cell(tiny, tmp_path):
    """The no-LoRA image and a strength-0 LoRA image of one seed are the same picture (the pairing the recommendation relies on)."""
    from lora_likeness.sweep.engine import run_sweep

    result = run_sweep(_config(tiny, tmp_path / "s", strengths=[0.0], seeds=[5], batch_size=1))
    import numpy as np
    from PIL import Image

    pictures = {r.checkpoint: np.asarray(Image.open(r.path), dtype=np.int16) for r in result.images}
    assert np.abs(pictures["no LoRA"] - pictures["e1"]).max() <= 1
    assert np.abs(pictures["no LoRA"] - pictures["final (e3)"]).max() <= 1


def test_sweep_settings_are_checked(tiny, tmp_path):
    with pytest.raises(SweepConfigError, match="--prompt is required"):
        _config(tiny, tmp_path, prompts=[" "]).validate()
    with pytest.raises(SweepConfigError, match="multiple of 8"):
        _config(tiny, tmp_path, width=100).validate()
    with pytest.raises(SweepConfigError, match="--sampler must be one of"):
        _config(tiny, tmp_path, sampler="karras_magic").validate()
    with pytest.raises(SweepConfigError, match="does not exist"):
        _config(tiny, tmp_path, loras=tmp_path / "nope").validate()
    with pytest.raises(SweepConfigError, match="repeats a seed"):
        _config(tiny, tmp_path, seeds=[1, 1]).validate()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    with pytest.raises(SweepConfigError, match="--out .* is a file, not a folder"):  # it used to generate, then fail to save
        _config(tiny, blocker).validate()
    assert parse_seeds("1236,1237 1240-1242") == [1236, 1237, 1240, 1241, 1242]
    with pytest.raises(SweepConfigError, match="cannot read 'x'"):
        parse_seeds("1,x")


def test_cli_sweep(tiny, tmp_path, capsys):
    from lora_likeness.cli import main

    base, loras = tiny
    out = tmp_path / "cli"
    argv = ["sweep", "--base", str(base), "--loras", str(loras), "--refs", str(OBAMA), "--prompt", "photo of ohwx person",
            "--seeds", "3", "--strengths", "1.0", "--steps", "1", "--width", "64", "--height", "64", "--sampler", "ddim",
            "--pack", str(PACK), "--providers", "cpu", "--device", "cpu", "--no-adherence", "--out", str(out), "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 image(s) generated, 0 reused" in printed
    assert (out / "report.html").is_file()
    assert main(argv) == 0
    assert "0 image(s) generated, 4 reused" in capsys.readouterr().out
    assert main(argv[:4] + [str(tmp_path / "missing")] + argv[5:]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_sweep_over_diffusers_run_folders_matches_the_kohya_files(tiny, tmp_path):
    """``output/exp_e1 … exp_e2/pytorch_lora_weights.safetensors`` (saved by diffusers' own writer) are one run
    labelled by epoch, and each gives the image its Kohya original gives."""
    import numpy as np
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from lora_likeness.sweep.engine import run_sweep
    from peft import get_peft_model_state_dict
    from PIL import Image
    from safetensors.torch import load_file

    base, loras = tiny
    output = tmp_path / "output"
    for epoch in (1, 2):
        pipe = _pipe(base)
        pipe.load_lora_weights(load_file(str(loras / f"me-00000{epoch}.safetensors")), adapter_name="default")
        # With the adapters' LoraConfigs in the header (diffusers >= 0.34), as its training scripts save them:
        # alpha (2) differs from the rank (4) here, so a wrong alpha would show.
        StableDiffusionPipeline.save_lora_weights(
            output / f"exp_e{epoch}",
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name="default")),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder, adapter_name="default")),
            unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
            text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["default"].to_dict(),
        )
    settings = {"strengths": [1.0], "seeds": [4], "batch_size": 1, "baseline": False}
    folders = run_sweep(_config(tiny, tmp_path / "from_folders", loras=output, **settings))
    assert [(c.label, c.format) for c in folders.checkpoints] == [("e1", "diffusers"), ("e2", "diffusers")]
    kohya = run_sweep(_config(tiny, tmp_path / "from_kohya", **settings))
    by_epoch = {r.epoch: np.asarray(Image.open(r.path), dtype=np.int16) for r in kohya.images}
    between_epochs = np.abs(by_epoch[1] - by_epoch[2]).mean()
    for record in folders.images:
        ours = np.asarray(Image.open(record.path), dtype=np.int16)
        difference = np.abs(ours - by_epoch[record.epoch])
        assert difference.max() <= 1, record.checkpoint
    assert between_epochs > 0.1  # the two epochs do differ


def test_prompt_adherence_is_measured_with_a_local_clip_model(tiny, tmp_path):
    import csv

    from lora_likeness.sweep.engine import run_sweep
    from test_adherence import write_tiny_clip

    clip = write_tiny_clip(tmp_path / "clip")
    prompts = ["photo of ohwx person", "a red car on a beach"]
    result = run_sweep(_config(tiny, tmp_path / "s", strengths=[1.0], seeds=[1], prompts=prompts, clip=clip, adherence=True))
    values = {(r.checkpoint, r.prompt_index): r.adherence for r in result.images}
    assert all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in values.values())
    assert values[("e1", 0)] != values[("e1", 1)]  # the score depends on the prompt
    assert all(c.adherence is not None for c in result.recommendation.cells)
    with open(tmp_path / "s" / "images.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(result.images) and all(row["adherence"] for row in rows)
    with pytest.raises(SweepConfigError, match="--clip: "):  # a folder asked for by name must be usable, checked before generating
        run_sweep(_config(tiny, tmp_path / "s2", prompts=prompts, clip=tmp_path / "no-clip", adherence=True))
    assert not (tmp_path / "s2" / "images").exists()
