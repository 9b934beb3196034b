"""Loading an SD1.x base model offline: a diffusers folder or a single-file ``.safetensors`` checkpoint.

Single files are converted by diffusers' ``from_single_file`` with a config folder written from the
built-in SD1.5 configs below (published values; no weights) and a locally found CLIP tokenizer, so
nothing is fetched from the Hugging Face Hub. The tokenizer is looked for, in order: the folder the
caller passes (hosts pass the one they already use), the base folder's ``tokenizer/``, ComfyUI's
bundled ``comfy/sd1_tokenizer`` (when running inside ComfyUI, or ``$COMFYUI_PATH``), and
``openai/clip-vit-large-patch14`` in the offline Hugging Face cache (where A1111 keeps it).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json")
CLIP_L_ID = "openai/clip-vit-large-patch14"

# diffusers' configs of runwayml/stable-diffusion-v1-5 (the values every SD1.x checkpoint shares).
SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": False,
}
SD15_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, "hidden_act": "quick_gelu",
    "hidden_size": 768, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
    "projection_dim": 768, "vocab_size": 49408,
}
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None], "image_encoder": [None, None],
    "requires_safety_checker": False, "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer cannot be loaded; the message says what to do."""


@dataclass
class BaseModel:
    """The parts of an SD1.x pipeline the trainer needs."""

    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    noise_scheduler: object
    source: Path
    tokenizer_dir: Path | None = None
    info: dict = field(default_factory=dict)


def _is_tokenizer_dir(folder: Path | None) -> bool:
    """A CLIP BPE tokenizer folder: vocab.json + merges.txt, or a fast tokenizer's tokenizer.json."""
    if folder is None:
        return False
    folder = Path(folder)
    return ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (folder / "tokenizer.json").is_file()


def comfyui_tokenizer_dir() -> Path | None:
    """ComfyUI's bundled SD1 tokenizer, when ComfyUI is importable or ``$COMFYUI_PATH`` names it (imports nothing)."""
    import importlib.util

    candidates = []
    try:
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "sd1_tokenizer" for p in spec.submodule_search_locations]
    for variable in ("COMFYUI_PATH", "COMFYUI_DIR"):
        if os.environ.get(variable):
            candidates.append(Path(os.environ[variable]) / "comfy" / "sd1_tokenizer")
    # Cloned into ComfyUI/custom_nodes/<us>/: the checkout is three levels up from core/training.
    candidates.append(Path(__file__).resolve().parents[3] / "comfy" / "sd1_tokenizer")
    return next((c for c in candidates if _is_tokenizer_dir(c)), None)


def huggingface_cache_tokenizer_dir() -> Path | None:
    """``openai/clip-vit-large-patch14``'s tokenizer in the local Hugging Face cache (A1111 keeps it there)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(CLIP_L_ID, local_files_only=True, allow_patterns=list(TOKENIZER_FILES))
    except Exception:  # noqa: BLE001 - not cached (or no huggingface_hub): try the next place
        return None
    return Path(folder) if _is_tokenizer_dir(Path(folder)) else None


def resolve_tokenizer_dir(explicit: Path | None = None, base: Path | None = None) -> Path:
    """The first usable CLIP tokenizer folder (see module docstring); raises :class:`ModelLoadError`."""
    if explicit is not None:
        if not _is_tokenizer_dir(Path(explicit)):
            raise ModelLoadError(f"tokenizer {explicit} has no vocab.json + merges.txt (a CLIP tokenizer folder)")
        return Path(explicit)
    tried = []
    if base is not None and Path(base).is_dir():
        tried.append(Path(base) / "tokenizer")
        if _is_tokenizer_dir(tried[-1]):
            return tried[-1]
    found = comfyui_tokenizer_dir()
    if found is not None:
        return found
    tried.append(Path("ComfyUI/comfy/sd1_tokenizer"))
    found = huggingface_cache_tokenizer_dir()
    if found is not None:
        return found
    tried.append(Path(f"Hugging Face cache: {CLIP_L_ID}"))
    raise ModelLoadError(
        "no CLIP tokenizer found offline (looked in: " + ", ".join(map(str, tried)) + "). Pass --tokenizer DIR "
        "(a folder with vocab.json and merges.txt, e.g. ComfyUI/comfy/sd1_tokenizer), or use a diffusers folder as --base."
    )


def write_sd15_config_dir(folder: Path, tokenizer_dir: Path) -> Path:
    """A diffusers SD1.5 config folder (configs only, no weights) with the tokenizer copied in."""
    folder = Path(folder)
    files = {"model_index.json": SD15_MODEL_INDEX, "unet/config.json": SD15_UNET, "vae/config.json": SD15_VAE,
             "text_encoder/config.json": SD15_TEXT_ENCODER, "scheduler/scheduler_config.json": SD15_SCHEDULER}
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    write_sd15_tokenizer(folder, tokenizer_dir)
    return folder


def checkpoint_kind(path: Path) -> str:
    """``sd1`` / ``sd2`` / ``sdxl`` / ``unknown`` from a single file's tensor names (header only)."""
    from .kohya_format import lora_header_keys

    keys = lora_header_keys(path)
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys) or any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd1"
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "lora"
    return "unknown"


def load_base_model(base: Path, tokenizer_dir: Path | None = None, config_dir: Path | None = None, dtype=None) -> BaseModel:
    """Load the SD1.x parts from a diffusers folder or a single ``.safetensors`` checkpoint, offline.

    Raises:
        ModelLoadError: missing path, not SD1.x, no tokenizer found; the message says what to pass.
    """
    import torch

    dtype = dtype or torch.float32
    base = Path(base)
    if not base.exists():
        raise ModelLoadError(f"base model {base} does not exist")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if base.is_dir():
        if not (base / "unet").is_dir() or not (base / "text_encoder").is_dir():
            raise ModelLoadError(f"base {base} is a folder but not a diffusers model (no unet/ and text_encoder/ sub-folders)")
        tok_dir = resolve_tokenizer_dir(tokenizer_dir, base)
        kwargs = {"local_files_only": True}
        try:
            unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype, **kwargs)
            vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=dtype, **kwargs)
            text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", torch_dtype=dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the diffusers model {base}: {exc}") from exc
        scheduler_dir = base / "scheduler"
        noise_scheduler = (DDPMScheduler.from_pretrained(base, subfolder="scheduler") if scheduler_dir.is_dir()
                           else DDPMScheduler.from_config(SD15_SCHEDULER))
        tokenizer = _fit_tokenizer(CLIPTokenizer.from_pretrained(tok_dir), text_encoder)
        return BaseModel(tokenizer, text_encoder, vae, unet, _training_scheduler(noise_scheduler), base, tok_dir, {"format": "diffusers"})

    if base.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"base {base.name}: expected a diffusers folder or a .safetensors checkpoint")
    kind = checkpoint_kind(base)
    if kind != "sd1":
        what = {"sdxl": "an SDXL checkpoint", "sd2": "an SD2.x checkpoint", "lora": "a LoRA, not a base model"}.get(kind, "not a Stable Diffusion checkpoint")
        raise ModelLoadError(f"base {base.name} is {what}; LoRA training here supports SD1.x base models")
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="likeness-sd15-config-") as scratch:
        if config_dir is None:
            tok_dir = resolve_tokenizer_dir(tokenizer_dir, None)
            config_dir = write_sd15_config_dir(Path(scratch) / "config", tok_dir)
        else:
            tok_dir = resolve_tokenizer_dir(tokenizer_dir, Path(config_dir))
            if not (Path(config_dir) / "tokenizer" / "vocab.json").is_file():
                import shutil

                copy = Path(scratch) / "config"
                shutil.copytree(config_dir, copy)
                write_sd15_tokenizer(copy, tok_dir)
                config_dir = copy
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(base), config=str(config_dir), local_files_only=True, torch_dtype=dtype,
                safety_checker=None, requires_safety_checker=False,
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load the checkpoint {base.name}: {exc}") from exc
    noise_scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    return BaseModel(_fit_tokenizer(pipe.tokenizer, pipe.text_encoder), pipe.text_encoder, pipe.vae, pipe.unet, _training_scheduler(noise_scheduler), base, tok_dir,
                     {"format": "single-file"})


def _fit_tokenizer(tokenizer, text_encoder):
    """Pad and truncate prompts to the text encoder's positions (77 for SD1): ComfyUI's bundled
    ``sd1_tokenizer`` declares ``model_max_length`` 8192, which CLIP's 77 position embeddings reject."""
    positions = int(getattr(text_encoder.config, "max_position_embeddings", 77))
    if not tokenizer.model_max_length or tokenizer.model_max_length > positions:
        tokenizer.model_max_length = positions
    return tokenizer


def write_sd15_tokenizer(config_dir: Path, tokenizer_dir: Path) -> None:
    """Copy the tokenizer files into ``<config_dir>/tokenizer``."""
    copy_tokenizer_files(tokenizer_dir, Path(config_dir) / "tokenizer")


def copy_tokenizer_files(tokenizer_dir: Path, target: Path) -> Path:
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copyfile(Path(tokenizer_dir) / name, target / name)
    return target


def _training_scheduler(scheduler):
    """A DDPM scheduler with the base model's betas (what sd-scripts trains with)."""
    from diffusers import DDPMScheduler

    config = dict(scheduler.config)
    keep = {k: config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
            if k in config}
    keep["clip_sample"] = False
    return DDPMScheduler.from_config(keep)

