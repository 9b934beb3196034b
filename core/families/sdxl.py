"""Stable Diffusion XL 1.0 (base, and fine-tunes such as Juggernaut, RealVisXL, Pony, Illustrious): what is
particular to it.

* two text encoders: CLIP ViT-L/14 (768 wide, Kohya prefix ``lora_te1``) and OpenCLIP ViT-bigG/14
  (1280 wide, with a text projection; ``lora_te2``). The UNet cross-attends to both encoders' penultimate
  hidden states concatenated (``[B, 77, 2048]``); the second encoder's pooled, projected embedding
  (``[B, 1280]``) joins the timestep embedding. Its tokenizer pads with ``!`` (id 0), not the end token;
* micro-conditioning: ``add_time_ids`` = original size (h, w), crop top-left (top, left), target size
  (h, w) of each image, as sd-scripts' ``get_size_embeddings`` reads them;
* epsilon prediction, the SD1 betas; VAE latents scaled by 0.13025. The original VAE overflows in
  fp16 (NaN latents), so it runs in float32 when the rest runs in fp16 unless its config says
  ``force_upcast: false`` (the fp16-fix VAE);
* trained at 1024 px, buckets 512 … 2048;
* Kohya keys: ``lora_unet_`` + the UNet paths of the original (sgm) layout, e.g.
  ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`` for diffusers'
  ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``: sd-scripts trains SDXL on its copy of
  the original UNet, and A1111 and ComfyUI key SDXL LoRAs that way;
* checkpoints: ``conditioner.embedders.0.transformer.*`` (CLIP-L) + ``conditioner.embedders.1.model.*``
  (bigG). The refiner has only ``conditioner.embedders.0.model.*`` (bigG) and a 1280-wide context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..safetensors_header import Header
from .base import (
    INPUT_CONV,
    Conditioning,
    Detection,
    FamilyDefaults,
    ImageGeometry,
    LoadedModel,
    ModelFamily,
    TextEncoderSlot,
    inpainting_problem,
    module_device,
    tokenize,
)

# diffusers' configs of stabilityai/stable-diffusion-xl-base-1.0 (published values; no weights).
UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}
VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "bos_token_id": 0, "eos_token_id": 2,
    "pad_token_id": 1, "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408,
}
TEXT_ENCODER_2 = {
    "architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model", "bos_token_id": 0, "eos_token_id": 2,
    "pad_token_id": 1, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280, "vocab_size": 49408,
}
SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"], "feature_extractor": [None, None], "image_encoder": [None, None],
}

CLIP_L_KEY = "conditioner.embedders.0.transformer."
BIG_G_KEY = "conditioner.embedders.1.model."
REFINER_BIG_G_KEY = "conditioner.embedders.0.model."

_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")


def sgm_unet_path(path: str, layers_per_block: int) -> str:
    """diffusers' path of a module inside a UNet attention block → the original (sgm) layout's path.

    Each down block holds ``layers_per_block`` (resnet, attention) pairs and a downsampler, after the
    input convolution ``input_blocks.0``; each up block one pair more and an upsampler. The attention
    is the second entry (``.1``) of its block; names inside the transformer are the same in both layouts.
    """
    if match := _DOWN.match(path):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"input_blocks.{1 + block * (layers_per_block + 1) + layer}.1.{rest}"
    if match := _MID.match(path):
        return f"middle_block.1.{match[1]}"
    if match := _UP.match(path):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"output_blocks.{block * (layers_per_block + 1) + layer}.1.{rest}"
    return path


def refiner_problem() -> str:
    return ("is an SDXL refiner checkpoint: it only refines the last steps of another model's images and has no "
            "CLIP-L encoder; train and sweep on the SDXL base (or a fine-tune of it)")


class SDXL(ModelFamily):
    name = "sdxl"
    title = "SDXL"
    pipeline_class = "StableDiffusionXLPipeline"
    text_encoder_slots = (
        TextEncoderSlot("text_encoder", "tokenizer", "lora_te1"),
        TextEncoderSlot("text_encoder_2", "tokenizer_2", "lora_te2", "CLIPTextModelWithProjection", pad_token="!"),
    )
    defaults = FamilyDefaults(resolution=1024, min_bucket_reso=512, max_bucket_reso=2048, width=1024, height=1024, steps=25, cfg=7.0,
                              prepare_size=1024, train_text_encoders=False)
    configs = {"model_index.json": MODEL_INDEX, "unet/config.json": UNET, "vae/config.json": VAE, "text_encoder/config.json": TEXT_ENCODER,
               "text_encoder_2/config.json": TEXT_ENCODER_2, "scheduler/scheduler_config.json": SCHEDULER}
    ss_base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    sd_scripts_script = "sdxl_train_network.py"
    # library/strategy_sdxl.py: TOKENIZER1_PATH, TOKENIZER2_PATH (it sets the second's pad token id to 0, "!")
    sd_scripts_tokenizers = {"tokenizer": "openai/clip-vit-large-patch14", "tokenizer_2": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"}
    sd_scripts_bucket_multiple = 32  # SdxlNetworkTrainer.assert_extra_args: verify_bucket_reso_steps(32)

    def detect_checkpoint(self, header: Header) -> Detection | None:
        if header.has_prefix(REFINER_BIG_G_KEY) and not header.has_prefix(CLIP_L_KEY):
            return Detection("sdxl", "refiner", refiner_problem())
        if not header.has_prefix(BIG_G_KEY):
            return None
        shape = header.shape(INPUT_CONV)
        if shape is not None and len(shape) == 4 and shape[1] == 9:
            return Detection("sdxl", "inpainting", inpainting_problem(self.title))
        if not header.has_prefix(CLIP_L_KEY):
            return Detection("sdxl", "incomplete", "has SDXL's OpenCLIP encoder but not its CLIP-L encoder "
                                                   "(conditioner.embedders.0.transformer.*); use the full SDXL checkpoint")
        if not header.has_prefix("model.diffusion_model."):
            return Detection("sdxl", "text-encoder-only", "holds SDXL's text encoders but no UNet (model.diffusion_model.*); "
                                                          "use the full checkpoint")
        return Detection("sdxl")

    def detect_folder(self, model_index: Mapping[str, Any], unet_config: Mapping[str, Any]) -> Detection | None:
        if unet_config.get("addition_embed_type") != "text_time":
            return None
        if int(unet_config.get("cross_attention_dim") or 0) == 1280 or ("text_encoder" in model_index and not model_index.get("text_encoder", [None])[0]):
            return Detection("sdxl", "refiner", refiner_problem())
        if int(unet_config.get("in_channels", 4)) == 9:
            return Detection("sdxl", "inpainting", inpainting_problem(self.title))
        return Detection("sdxl")

    def encode_prompts(self, model: LoadedModel, captions: list[str], clip_skip: int = 1) -> Conditioning:
        """Both encoders' hidden states ``clip_skip`` layers before the last (1: the penultimate, SDXL's own),
        concatenated ``[B, 77, 768 + 1280]``, and the second encoder's projected pooled output ``[B, 1280]``."""
        import torch

        hidden, pooled = [], None
        for slot in self.text_encoder_slots:
            encoder = model.text_encoders[slot.component]
            ids = tokenize(model.tokenizers[slot.tokenizer], captions, module_device(encoder))
            output = encoder(ids, output_hidden_states=True)
            hidden.append(output.hidden_states[-(clip_skip + 1)])
            pooled = output[0]  # the last encoder's text_embeds (CLIPTextModelWithProjection)
        return Conditioning(torch.cat(hidden, dim=-1), pooled)

    def unet_inputs(self, model: LoadedModel, conditioning: Conditioning, geometry: Sequence[ImageGeometry]) -> dict:
        import torch

        hidden = conditioning.hidden
        time_ids = torch.tensor([[*g.original_hw, *g.crop_top_left, *g.target_hw] for g in geometry], dtype=hidden.dtype,
                                device=hidden.device)
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": conditioning.pooled, "time_ids": time_ids}}

    def vae_dtype(self, vae, weight_dtype):
        import torch

        if weight_dtype == torch.float16 and getattr(vae.config, "force_upcast", True):
            return torch.float32
        return weight_dtype

    def kohya_unet_path(self, path: str, unet_config=None) -> str:
        return sgm_unet_path(path, int((unet_config or UNET)["layers_per_block"]))

    def pipeline_kwargs(self) -> dict:
        # No invisible watermark: it needs an extra package and alters the pixels the faces are scored on.
        return {"add_watermarker": False}

    def single_file_kwargs(self) -> dict:
        return {"add_watermarker": False}

    def sd_scripts_arguments(self, config, fixed_captions: bool) -> list[str]:
        """sdxl_train_network.py's own arguments (checked against sd-scripts' code):

        * no ``--clip_skip``: its SDXL text encoding always takes the penultimate layer of both encoders
          (``strategy_sdxl``: ``hidden_states[11]`` and ``[-2]``) and only warns about the flag; that is
          ``clip_skip`` 1 here, any other value is refused;
        * ``--no_half_vae`` under fp16: SDXL's VAE overflows in fp16, and the built-in trainer runs it in
          float32 then (:meth:`vae_dtype`; a diffusers folder whose VAE says ``force_upcast: false`` stays fp16
          there, sd-scripts still encodes in float32, which only rounds less); under bf16 both keep it in bf16;
        * ``--cache_text_encoder_outputs`` when the encoders are frozen and no caption is shuffled: frozen
          encoders give the same states for the same caption (the built-in trainer caches them too), and
          sd-scripts refuses the cache with trained encoders or shuffled captions.
        """
        from ..training.config import ConfigError

        if config.clip_skip != 1:
            raise ConfigError(f"clip_skip {config.clip_skip}: sd-scripts' SDXL trainer always conditions on the penultimate "
                              "layer of both text encoders (clip_skip 1 here, SDXL's own) and ignores --clip_skip; "
                              "use clip_skip 1, or the built-in backend for another layer")
        args = []
        if config.mixed_precision == "fp16":
            args.append("--no_half_vae")
        if not config.train_text_encoder and fixed_captions:
            args.append("--cache_text_encoder_outputs")
        return args
