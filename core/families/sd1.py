"""Stable Diffusion 1.x (SD1.5 and its fine-tunes): what is particular to it.

* one text encoder, CLIP ViT-L/14 (768 wide, 77 tokens); the UNet cross-attends to its last hidden
  states (``clip_skip`` N > 1: the N-th last layer, final-layer-normed, as A1111 and sd-scripts do);
* epsilon prediction on a scaled-linear DDPM schedule (1000 steps, betas 0.00085 … 0.012);
* VAE latents scaled by 0.18215; trained at 512 px, buckets 256 … 1024;
* Kohya keys: ``lora_te_…`` for the text encoder, ``lora_unet_…`` spelled with diffusers' own paths
  (sd-scripts' SD1 UNet mirrors diffusers' module names);
* checkpoints: ``model.diffusion_model.*`` + ``cond_stage_model.transformer.*`` (CLIP-L); an
  inpainting UNet has 9 input channels; SD2.x has an OpenCLIP encoder (``cond_stage_model.model.*``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..safetensors_header import Header
from .base import (
    INPUT_CONV,
    Conditioning,
    Detection,
    FamilyDefaults,
    LoadedModel,
    ModelFamily,
    TextEncoderSlot,
    inpainting_problem,
    module_device,
    tokenize,
)

# diffusers' configs of runwayml/stable-diffusion-v1-5 (the values every SD1.x checkpoint shares).
UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": False,
}
VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, "hidden_act": "quick_gelu",
    "hidden_size": 768, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
    "projection_dim": 768, "vocab_size": 49408,
}
SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None], "image_encoder": [None, None],
    "requires_safety_checker": False, "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}

UNET_KEY = "model.diffusion_model."
CLIP_L_KEY = "cond_stage_model.transformer."
OPENCLIP_KEY = "cond_stage_model.model."


class SD1(ModelFamily):
    name = "sd1"
    title = "SD1.x"
    pipeline_class = "StableDiffusionPipeline"
    text_encoder_slots = (TextEncoderSlot("text_encoder", "tokenizer", "lora_te"),)
    defaults = FamilyDefaults(resolution=512, min_bucket_reso=256, max_bucket_reso=1024, width=512, height=768, steps=25, cfg=7.0,
                              prepare_size=512)
    configs = {"model_index.json": MODEL_INDEX, "unet/config.json": UNET, "vae/config.json": VAE,
               "text_encoder/config.json": TEXT_ENCODER, "scheduler/scheduler_config.json": SCHEDULER}
    ss_base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    modelspec_implementation = "diffusers"
    sd_scripts_script = "train_network.py"
    sd_scripts_tokenizers = {"tokenizer": "openai/clip-vit-large-patch14"}  # strategy_sd.TOKENIZER_ID

    def detect_checkpoint(self, header: Header) -> Detection | None:
        if not header.has_prefix(CLIP_L_KEY) or header.has_prefix("conditioner."):
            return None
        shape = header.shape(INPUT_CONV)
        if shape is not None and len(shape) == 4 and shape[1] == 9:
            return Detection("sd1", "inpainting", inpainting_problem(self.title))
        if not header.has_prefix(UNET_KEY):
            return Detection("sd1", "text-encoder-only", f"holds an {self.title} text encoder but no UNet (model.diffusion_model.*); "
                                                          "use the full checkpoint")
        return Detection("sd1")

    def detect_folder(self, model_index: Mapping[str, Any], unet_config: Mapping[str, Any]) -> Detection | None:
        # SD2.x shares the pipeline class; its UNet cross-attends to OpenCLIP-H's 1024-wide states.
        if unet_config.get("addition_embed_type") or int(unet_config.get("cross_attention_dim") or 0) == 1024:
            return None
        if model_index.get("_class_name", "StableDiffusionPipeline") not in ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline"):
            return None
        if int(unet_config.get("in_channels", 4)) == 9:
            return Detection("sd1", "inpainting", inpainting_problem(self.title))
        return Detection("sd1")

    def encode_prompts(self, model: LoadedModel, captions: list[str], clip_skip: int = 1) -> Conditioning:
        """CLIP hidden states ``[B, 77, 768]``; with ``clip_skip`` > 1 the N-th last layer, final-layer-normed."""
        encoder = model.text_encoder
        ids = tokenize(model.tokenizer, captions, module_device(encoder))
        if clip_skip <= 1:
            return Conditioning(encoder(ids)[0])
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
        return Conditioning(getattr(encoder, "text_model", encoder).final_layer_norm(hidden))

    def pipeline_kwargs(self) -> dict:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def single_file_kwargs(self) -> dict:
        return {"safety_checker": None, "requires_safety_checker": False}

    def sd_scripts_arguments(self, config, fixed_captions: bool) -> list[str]:
        # train_network.py reads the clip_skip-th last layer, final-layer-normed, as encode_prompts does.
        return [f"--clip_skip={config.clip_skip}"]
