"""Output folders laid out exactly as other trainers write them, with real photos standing in for samples.

Each writer below spells its names with the same format strings as the trainer's own code (cited
beside it). The "samples" are real photos from ``../shared/faces/people``: at each step, the first
``TARGET_SHARE[step]`` sample prompts show the target person (Colin Powell, not among the reference
photos' files) and the others someone else (George W. Bush), so the target's share rises to step 750
and falls after it: the best step is 750 and the last two rounds are over-trained.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from likeness_assets import PEOPLE
from PIL import Image, PngImagePlugin

TARGET = PEOPLE / "lfw_colin_powell"
OTHER = PEOPLE / "lfw_george_w_bush"
#: Reference photos of the target; the samples use the target's other photos.
REFERENCE_PHOTOS = [TARGET / f"Colin_Powell_{i:04d}.jpg" for i in (1, 2, 3)]
TARGET_SAMPLES = [TARGET / f"Colin_Powell_{i:04d}.jpg" for i in (4, 5, 6, 4)]
OTHER_SAMPLES = [OTHER / f"George_W_Bush_{i:04d}.jpg" for i in (1, 2, 3, 4)]
PROMPTS = 4
SEED = 42
#: step -> how many of the PROMPTS samples show the target.
TARGET_SHARE = {250: 1, 500: 2, 750: 4, 1000: 2, 1250: 1}
STEPS = sorted(TARGET_SHARE)
BEST_STEP = 750
#: Checkpoints saved every 500 steps (less often than samples): the closest to 750 is 500 (ties: earlier).
CHECKPOINT_STEPS = (500, 1000)
TIME = "20261207101500"


def sample_photo(step: int, prompt: int) -> Path:
    return TARGET_SAMPLES[prompt] if prompt < TARGET_SHARE[step] else OTHER_SAMPLES[prompt]


def save_as(source: Path, target: Path, metadata: dict[str, str] | None = None) -> Path:
    """``source`` re-encoded to ``target``'s format (PNG/JPEG by suffix), with PNG text chunks."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        if target.suffix.lower() == ".png":
            info = PngImagePlugin.PngInfo()
            for key, value in (metadata or {}).items():
                info.add_text(key, value)
            image.save(target, pnginfo=info)
        else:
            image.save(target, quality=92)
    return target


def write_lora(path: Path, metadata: dict[str, str], context: int = 768) -> Path:
    """A small valid LoRA safetensors file (zero tensors) with ``metadata``; ``context`` is the cross-attention
    width its ``to_k`` reads (768 SD1, 2048 SDXL), which the architecture check looks at."""
    tensors = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, context],
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": [320, 4],
    }
    header, offset = {}, 0
    for key, shape in tensors.items():
        size = 2 * shape[0] * shape[1]
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


def sd_scripts(output: Path, name: str = "jx_face", frames: bool = False) -> Path:
    """sd-scripts / kohya_ss (``frames``: musubi-tuner): ``output/sample/`` and step checkpoints.

    Names: train_util.sample_image_inference, ``f"{output_name}_{steps:06d}_{i:02d}_{ts_str}_{seed}.png"``
    (musubi-tuner's trainer_base + save_images_grid add ``_000``); train_util.get_step_ckpt_name,
    ``STEP_FILE_NAME = "{}-step{:08d}"`` with ``ss_steps``/``ss_epoch`` metadata."""
    samples = output / "sample"
    for step in STEPS:
        for prompt in range(PROMPTS):
            frame = "_000" if frames else ""
            save_as(sample_photo(step, prompt), samples / f"{name}_{step:06d}_{prompt:02d}_{TIME}_{SEED}{frame}.png")
    for step in CHECKPOINT_STEPS:
        write_lora(output / f"{name}-step{step:08d}.safetensors", {"ss_steps": str(step), "ss_epoch": str(step // 500)})
    write_lora(output / f"{name}.safetensors", {"ss_steps": "1250", "ss_epoch": "3"})
    return samples


def ai_toolkit(output: Path, job: str = "jx_face") -> Path:
    """ai-toolkit: ``output/<job>/samples/{time_ms}__{step:09d}_{count}.jpg`` (BaseSDTrainProcess.sample,
    GenerateImageConfig._get_path_no_ext) and ``<job>_{step:09d}.safetensors`` (BaseSDTrainProcess.save) with
    ``training_info`` metadata (update_training_metadata)."""
    root = output / job
    samples = root / "samples"
    for index, step in enumerate(STEPS):
        for prompt in range(PROMPTS):
            save_as(sample_photo(step, prompt), samples / f"{1765102500000 + index * 60000}__{step:09d}_{prompt}.jpg")
    (samples / ".thumbs").mkdir(parents=True, exist_ok=True)  # save_image_atomic's thumbnails: hidden, skipped
    for step in CHECKPOINT_STEPS:
        write_lora(root / f"{job}_{step:09d}.safetensors", {"training_info": json.dumps({"step": step, "epoch": 0})})
    return samples


def onetrainer(workspace: Path, prompt_text: str = "photo of sks man") -> Path:
    """OneTrainer: ``workspace/samples/{i} - {prompt}/{timestamp}-training-sample-{step}-{epoch}-{epoch_step}.png``
    (GenericTrainer.__sample_loop, TrainProgress.filename_string) and ``workspace/save/…-save-…`` (__save)."""
    samples = workspace / "samples"
    steps_per_epoch = 400
    for index, step in enumerate(STEPS):
        progress = f"{step}-{step // steps_per_epoch}-{step % steps_per_epoch}"
        for prompt in range(PROMPTS):
            folder = samples / f"{prompt} - {prompt_text} {prompt}"
            save_as(sample_photo(step, prompt), folder / f"2026-12-07_10-{index:02d}-00-training-sample-{progress}.png")
    for step in CHECKPOINT_STEPS:
        progress = f"{step}-{step // steps_per_epoch}-{step % steps_per_epoch}"
        write_lora(workspace / "save" / f"2026-12-07_11-00-00-save-{progress}.safetensors", {})
    return samples


LAYOUTS = {
    "sd-scripts": lambda root: sd_scripts(root / "output"),
    "musubi-tuner": lambda root: sd_scripts(root / "output", frames=True),
    "ai-toolkit": lambda root: ai_toolkit(root / "output"),
    "onetrainer": lambda root: onetrainer(root / "workspace"),
}


def references(root: Path) -> Path:
    refs = root / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    for photo in REFERENCE_PHOTOS:
        (refs / photo.name).write_bytes(photo.read_bytes())
    return refs
