"""A tiny, randomly initialised SD1-shaped model (diffusers folder) for tests, benchmarks and smoke runs.

Same module structure as SD1.5 (CrossAttn down/up blocks with ``Transformer2DModel``s and 1×1
``proj_in``/``proj_out``, a CLIP text encoder with the real SD1 vocabulary size) but a few hundred
thousand parameters, so a training step takes milliseconds on a CPU. Images from it are noise.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_components(seed: int = 0, cross_attention_dim: int = 32):
    """``(unet, vae, text_encoder)`` with random weights drawn from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8, sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=cross_attention_dim, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        hidden_act="quick_gelu", projection_dim=cross_attention_dim,
    ))
    return unet, vae, text_encoder


def write_tiny_model(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Write a tiny diffusers SD1-style folder (unet, vae, text_encoder, tokenizer, scheduler) to ``folder``."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from .models import SD15_SCHEDULER

    unet, vae, text_encoder = build_tiny_components(seed)
    scheduler = PNDMScheduler.from_config({k: v for k, v in SD15_SCHEDULER.items() if not k.startswith("_")})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    from .models import write_sd15_tokenizer

    write_sd15_tokenizer(Path(folder), Path(tokenizer_dir))  # the classic vocab.json + merges.txt files, as real models ship
    return Path(folder)


def write_training_folder(folder: Path, n_images: int = 4, size: tuple[int, int] = (48, 40), trigger: str = "ohwx person",
                          repeats: int = 2, reg: int = 0, seed: int = 0) -> Path:
    """A small Kohya layout with smooth synthetic images: ``folder/img/<repeats>_<trigger>/`` (+ ``reg/1_person``)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    train = folder / "img" / f"{repeats}_{trigger}"
    train.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    for i in range(n_images):
        colour = rng.uniform(40, 215, size=3)
        wave = np.sin(xs / (3 + i) + i)[..., None] * 30 + np.cos(ys / (4 + i))[..., None] * 20
        pixels = np.clip(colour + wave, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(train / f"photo{i}.png")
        (train / f"photo{i}.txt").write_text(f"{trigger}, photo, tag{i % 2}\n", encoding="utf-8")
    if reg:
        reg_dir = folder / "reg" / "1_person"
        reg_dir.mkdir(parents=True, exist_ok=True)
        for i in range(reg):
            pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(reg_dir / f"reg{i}.png")
    return folder
