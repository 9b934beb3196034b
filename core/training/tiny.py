"""Tiny, randomly initialised SD1- and SDXL-shaped models (diffusers folders) for tests, benchmarks and smoke runs.

Same module structure as the real families (CrossAttn down/up blocks with ``Transformer2DModel``s, CLIP
text encoders with the real vocabulary size; SDXL's ``text_time`` additional embedding and a second
encoder with a projection) but a few hundred thousand parameters, so a training step takes milliseconds
on a CPU. Images from them are noise.
"""

from __future__ import annotations

from pathlib import Path


def _clip_config(width: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=width, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu",
        projection_dim=projection or width,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8, sample_size=32,
    )


def build_tiny_components(seed: int = 0, cross_attention_dim: int = 32):
    """SD1-shaped ``(unet, vae, text_encoder)`` with random weights drawn from ``seed``."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8,
    )
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_clip_config(cross_attention_dim))
    return unet, vae, text_encoder


def build_tiny_sdxl_components(seed: int = 0):
    """SDXL-shaped ``(unet, vae, text_encoder, text_encoder_2)``: a UNet (32, 64) with ``addition_embed_type="text_time"``,
    a CLIP-L-like encoder (16 wide) and a projected bigG-like one (16 wide, projection 32); context 16 + 16 = 32;
    ``add_time_ids`` embedded 8 wide: 32 + 6 × 8 = 80 inputs to the added embedding, like SDXL's 1280 + 6 × 256."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=32, norm_num_groups=8,
    )
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_clip_config(16))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(16, projection=32))
    return unet, vae, text_encoder, text_encoder_2


def write_tiny_model(folder: Path, tokenizer_dir: Path, seed: int = 0, family: str = "sd1", tokenizer_2_dir: Path | None = None) -> Path:
    """Write a tiny diffusers folder of ``family`` (``sd1`` or ``sdxl``: unet, vae, text encoder(s), tokenizer(s),
    scheduler) to ``folder``; SDXL's second tokenizer defaults to ``tokenizer_dir`` with the ``!`` pad token."""
    from transformers import CLIPTokenizer

    from ..families import get_family
    from ..families.tokenizers import copy_tokenizer_files

    spec = get_family(family)
    scheduler_config = spec.configs["scheduler/scheduler_config.json"]
    import diffusers

    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config({k: v for k, v in scheduler_config.items() if not k.startswith("_")})
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    if family == "sdxl":
        unet, vae, text_encoder, text_encoder_2 = build_tiny_sdxl_components(seed)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_2_dir or tokenizer_dir, pad_token="!")
        parts = {"text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2}
    else:
        unet, vae, text_encoder = build_tiny_components(seed)
        parts = {}
    pipe = getattr(diffusers, spec.pipeline_class)(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                                   **parts, **spec.pipeline_kwargs())
    pipe.save_pretrained(folder, safe_serialization=True)
    # The classic vocab.json + merges.txt files, as real models ship them.
    copy_tokenizer_files(Path(tokenizer_dir), Path(folder) / "tokenizer")
    if family == "sdxl":
        copy_tokenizer_files(Path(tokenizer_2_dir or tokenizer_dir), Path(folder) / "tokenizer_2")
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
