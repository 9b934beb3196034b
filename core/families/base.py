"""The contract every model family (SD1, SDXL, later Flux …) fulfils, and the parts they share.

A family answers every "what is different about this model" question in one module: how its
checkpoints are recognised, which published configs and tokenizers load it offline, how prompts
become the denoiser's conditioning, which modules a Kohya LoRA patches and what the keys are
called, which defaults and metadata it uses. The trainer, the sweep, ``likeness run`` and the hosts
ask the family; none of them branches on its name.

A subclass sets the class attributes and overrides the methods whose behaviour differs; the
loading code here is generic over :attr:`ModelFamily.components`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..safetensors_header import Header
from ..training.kohya_format import PREFIX_UNET, LoraComponent, kohya_key
from .errors import ModelLoadError
from .tokenizers import TOKENIZER_FILES, copy_tokenizer_files, is_tokenizer_dir, resolve_tokenizer_dir  # noqa: F401 - TOKENIZER_FILES: re-exported


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a family: its pipeline attribute, its tokenizer's, and its Kohya key prefix."""

    component: str
    """``text_encoder``, ``text_encoder_2`` (the diffusers pipeline attribute and sub-folder)."""
    tokenizer: str
    """``tokenizer``, ``tokenizer_2``."""
    kohya_prefix: str
    """``lora_te`` (SD1), ``lora_te1`` / ``lora_te2`` (SDXL)."""
    model_class: str = "CLIPTextModel"
    """transformers class of the encoder."""
    pad_token: str | None = None
    """Pad token the family's tokenizer uses when it differs from the CLIP-L files (SDXL's second: ``!``)."""


@dataclass(frozen=True)
class FamilyDefaults:
    """What a run uses when the user does not say: pixels, steps, guidance."""

    resolution: int
    """Training resolution (the side of a square of the same area as every bucket)."""
    min_bucket_reso: int
    max_bucket_reso: int
    width: int
    """Sweep image width."""
    height: int
    steps: int
    cfg: float
    prepare_size: int
    """Crop size of ``likeness prepare``."""
    train_text_encoders: bool = True
    """Whether a LoRA trains the text encoders unless told (``text_encoder_lr`` unset): SD1.x LoRAs usually do;
    SDXL LoRAs usually train the UNet only (sd-scripts' advice for SDXL; its encoders' outputs are then cached)."""


@dataclass(frozen=True)
class Detection:
    """What a base checkpoint (file or diffusers folder) is, and whether it can be trained on and swept."""

    architecture: str
    """``sd1``, ``sd2``, ``sdxl``, ``sd3``, ``flux``, ``lora``, ``unknown`` (a key of :data:`ARCHITECTURE_NAMES`)."""
    variant: str = "base"
    """``base``, ``inpainting``, ``refiner``, ``unet-only`` …"""
    problem: str | None = None
    """Why it cannot be used as a base model here (``None``: it can)."""


#: The first UNet convolution of an original-layout checkpoint: its input channels tell an inpainting model (9).
INPUT_CONV = "model.diffusion_model.input_blocks.0.0.weight"


def inpainting_problem(title: str) -> str:
    return (f"is an {title} inpainting checkpoint (its UNet takes 9 input channels: image, mask and latents); "
            f"train and sweep on the {title} base model it was made from")


ARCHITECTURE_NAMES = {
    "sd1": "SD1.x",
    "sd2": "SD2.x",
    "sdxl": "SDXL",
    "sd3": "SD3",
    "flux": "Flux",
    "lora": "LoRA",
    "unknown": "unknown",
}


@dataclass(frozen=True)
class ImageGeometry:
    """Where a training image's pixels came from, in pixels as ``(height, width)`` / ``(top, left)``:
    its original size, the top-left corner of the crop taken from it after scaling to cover the bucket,
    and the bucket (target) size. SDXL is conditioned on all three (``add_time_ids``)."""

    original_hw: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_hw: tuple[int, int]


@dataclass
class Conditioning:
    """The text conditioning of a batch.

    ``hidden``: ``[B, 77, width]`` token states the denoiser cross-attends to (SDXL: both encoders'
    states concatenated, 768 + 1280 = 2048 wide); ``pooled``: ``[B, P]`` pooled embedding or ``None``.
    """

    hidden: Any
    pooled: Any = None

    def to(self, device=None, dtype=None) -> Conditioning:
        return Conditioning(self.hidden.to(device=device, dtype=dtype),
                            None if self.pooled is None else self.pooled.to(device=device, dtype=dtype))

    @staticmethod
    def stack(items: Sequence[Conditioning]) -> Conditioning:
        """Batch single-caption conditionings (``[1, …]`` each) into one."""
        import torch

        pooled = None if items[0].pooled is None else torch.cat([c.pooled for c in items])
        return Conditioning(torch.cat([c.hidden for c in items]), pooled)


@dataclass
class LoadedModel:
    """The parts of a diffusion model the trainer and the sweep need, as diffusers/transformers modules."""

    family: ModelFamily
    unet: Any
    vae: Any
    text_encoders: dict[str, Any]
    """Pipeline attribute → encoder (``text_encoder``, ``text_encoder_2``), in the family's order."""
    tokenizers: dict[str, Any]
    """Pipeline attribute → tokenizer (``tokenizer``, ``tokenizer_2``)."""
    noise_scheduler: Any
    """The DDPM training scheduler with the base model's betas."""
    source: Path
    tokenizer_dirs: dict[str, Path] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def text_encoder(self):
        """The first text encoder (SD1's only one)."""
        return next(iter(self.text_encoders.values()))

    @property
    def tokenizer(self):
        return next(iter(self.tokenizers.values()))

    def modules(self) -> dict[str, Any]:
        """``unet`` and every text encoder, by pipeline attribute (what LoRA targets are found in)."""
        return {"unet": self.unet, **self.text_encoders}


def training_scheduler(config: Mapping[str, Any]):
    """A DDPM scheduler with the base model's betas and prediction type (what sd-scripts trains with)."""
    from diffusers import DDPMScheduler

    keep = {k: config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
            if k in config}
    keep["clip_sample"] = False
    return DDPMScheduler.from_config(keep)


class ModelFamily:
    """One model family. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    """Registry key: ``sd1``, ``sdxl``."""
    title: ClassVar[str]
    """Human name: ``SD1.x``, ``SDXL``."""
    pipeline_class: ClassVar[str]
    """diffusers pipeline used for sampling and single-file loading."""
    text_encoder_slots: ClassVar[tuple[TextEncoderSlot, ...]]
    defaults: ClassVar[FamilyDefaults]
    configs: ClassVar[dict[str, dict]]
    """Published diffusers configs (no weights), by path in a config folder: ``model_index.json``,
    ``unet/config.json`` … — what makes a single-file checkpoint load offline."""
    ss_base_model_version: ClassVar[str]
    """sd-scripts' ``ss_base_model_version`` (``sd_v1``, ``sdxl_base_v1-0``)."""
    modelspec_architecture: ClassVar[str]
    """Stability's ModelSpec id of a LoRA for this family (``stable-diffusion-v1/lora`` …)."""
    modelspec_implementation: ClassVar[str]
    sd_scripts_script: ClassVar[str]
    """sd-scripts' LoRA training script for this family."""
    sd_scripts_tokenizers: ClassVar[dict[str, str]] = {}
    """The Hub id sd-scripts loads each tokenizer from, by pipeline attribute (``tokenizer`` …). Its
    ``--tokenizer_cache_dir`` is looked in first, at ``<dir>/<id with / as _>/``; what is not there is downloaded."""
    sd_scripts_bucket_multiple: ClassVar[int] = 64
    """sd-scripts' script refuses a ``bucket_reso_steps`` that is not a multiple of this (``assert_extra_args``)."""
    unet_target_classes: ClassVar[tuple[str, ...]] = ("Transformer2DModel",)
    text_encoder_target_classes: ClassVar[tuple[str, ...]] = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")

    # -- detection -------------------------------------------------------------------------------

    def detect_checkpoint(self, header: Header) -> Detection | None:
        """This family's verdict on a single-file checkpoint (``None``: not one of ours)."""
        raise NotImplementedError

    def detect_folder(self, model_index: Mapping[str, Any], unet_config: Mapping[str, Any]) -> Detection | None:
        """This family's verdict on a diffusers folder (``model_index.json`` and ``unet/config.json``)."""
        raise NotImplementedError

    # -- loading ---------------------------------------------------------------------------------

    def resolve_tokenizers(self, explicit: Mapping[str, Path | None], base: Path | None) -> dict[str, Path]:
        """The tokenizer folder of every text encoder, found offline (see :mod:`.tokenizers`)."""
        out: dict[str, Path] = {}
        first: Path | None = None
        for slot in self.text_encoder_slots:
            given = explicit.get(slot.tokenizer)
            in_base = Path(base) / slot.tokenizer if base is not None and Path(base).is_dir() else None
            if given is None and is_tokenizer_dir(in_base):
                found = in_base
            elif given is None and first is not None:
                found = first  # every CLIP encoder of SD1/SDXL shares one BPE vocabulary; the pad token differs
            else:
                found = resolve_tokenizer_dir(given, base, subfolder=slot.tokenizer)
            out[slot.tokenizer] = found
            first = first or found
        return out

    def write_config_dir(self, folder: Path, tokenizer_dirs: Mapping[str, Path]) -> Path:
        """A diffusers config folder (configs only, no weights) with the tokenizers copied in."""
        folder = Path(folder)
        for rel, content in self.configs.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        for slot in self.text_encoder_slots:
            copy_tokenizer_files(tokenizer_dirs[slot.tokenizer], folder / slot.tokenizer)
        return folder

    def load(self, base: Path, tokenizer_dirs: Mapping[str, Path | None] | None = None, config_dir: Path | None = None,
             dtype=None) -> LoadedModel:
        """Load the family's parts from a diffusers folder or a single ``.safetensors`` checkpoint, offline.

        Args:
            base: the model.
            tokenizer_dirs: tokenizer folders by pipeline attribute (``tokenizer``, ``tokenizer_2``) that the
                caller already located; the rest is looked for (see :mod:`.tokenizers`).
            config_dir: for a single file, a diffusers config folder to use instead of the built-in configs.
            dtype: torch dtype of the weights (default float32).

        Raises:
            ModelLoadError: what to pass or fix.
        """
        import torch

        dtype = dtype or torch.float32
        base = Path(base)
        explicit = dict(tokenizer_dirs or {})
        if base.is_dir():
            return self._load_folder(base, explicit, dtype)
        return self._load_single_file(base, explicit, config_dir, dtype)

    def _load_folder(self, base: Path, explicit: dict, dtype) -> LoadedModel:
        import diffusers
        import transformers

        tok_dirs = self.resolve_tokenizers(explicit, base)
        kwargs = {"local_files_only": True, "torch_dtype": dtype}
        try:
            unet = diffusers.UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kwargs)
            vae = diffusers.AutoencoderKL.from_pretrained(base, subfolder="vae", **kwargs)
            encoders = {slot.component: getattr(transformers, slot.model_class).from_pretrained(base, subfolder=slot.component, **kwargs)
                        for slot in self.text_encoder_slots}
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the diffusers model {base}: {exc}") from exc
        scheduler_file = base / "scheduler" / "scheduler_config.json"
        scheduler_config = json.loads(scheduler_file.read_text(encoding="utf-8")) if scheduler_file.is_file() else self.configs["scheduler/scheduler_config.json"]
        return self._assemble(base, unet, vae, encoders, tok_dirs, scheduler_config, {"format": "diffusers"})

    def _load_single_file(self, base: Path, explicit: dict, config_dir: Path | None, dtype) -> LoadedModel:
        import diffusers

        with tempfile.TemporaryDirectory(prefix=f"likeness-{self.name}-config-") as scratch:
            if config_dir is None:
                tok_dirs = self.resolve_tokenizers(explicit, None)
                config_dir = self.write_config_dir(Path(scratch) / "config", tok_dirs)
            else:
                tok_dirs = self.resolve_tokenizers(explicit, Path(config_dir))
                copy = Path(scratch) / "config"
                shutil.copytree(config_dir, copy)
                for slot in self.text_encoder_slots:
                    if not is_tokenizer_dir(copy / slot.tokenizer):
                        copy_tokenizer_files(tok_dirs[slot.tokenizer], copy / slot.tokenizer)
                config_dir = copy
            scheduler_config = json.loads((Path(config_dir) / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
            try:
                pipe = getattr(diffusers, self.pipeline_class).from_single_file(
                    str(base), config=str(config_dir), local_files_only=True, torch_dtype=dtype, **self.single_file_kwargs())
            except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds; the user needs the reason
                raise ModelLoadError(f"cannot load the checkpoint {base.name}: {exc}") from exc
        encoders = {slot.component: getattr(pipe, slot.component) for slot in self.text_encoder_slots}
        return self._assemble(base, pipe.unet, pipe.vae, encoders, tok_dirs, scheduler_config, {"format": "single-file"})

    def single_file_kwargs(self) -> dict:
        """Extra ``from_single_file`` arguments of the family's pipeline."""
        return {}

    def _assemble(self, base: Path, unet, vae, encoders: dict, tok_dirs: dict[str, Path], scheduler_config: Mapping,
                  info: dict) -> LoadedModel:
        from transformers import CLIPTokenizer

        tokenizers = {}
        for slot in self.text_encoder_slots:
            extra = {"pad_token": slot.pad_token} if slot.pad_token else {}
            tokenizer = CLIPTokenizer.from_pretrained(tok_dirs[slot.tokenizer], **extra)
            tokenizers[slot.tokenizer] = fit_tokenizer(tokenizer, encoders[slot.component])
        return LoadedModel(self, unet, vae, encoders, tokenizers, training_scheduler(scheduler_config), base, dict(tok_dirs),
                           {**info, "family": self.name})

    # -- prompts and the denoiser's inputs --------------------------------------------------------

    def encode_prompts(self, model: LoadedModel, captions: list[str], clip_skip: int = 1) -> Conditioning:
        """The denoiser's text conditioning for ``captions`` (on the text encoders' device)."""
        raise NotImplementedError

    def unet_inputs(self, model: LoadedModel, conditioning: Conditioning, geometry: Sequence[ImageGeometry]) -> dict:
        """Keyword arguments of ``unet(noisy, timesteps, **inputs)`` besides the latents and timesteps."""
        return {"encoder_hidden_states": conditioning.hidden}

    def vae_dtype(self, vae, weight_dtype):
        """The dtype to run the VAE in when the rest runs in ``weight_dtype``."""
        return weight_dtype

    # -- LoRA ------------------------------------------------------------------------------------

    def kohya_unet_path(self, path: str, unet_config: Mapping[str, Any] | None = None) -> str:
        """The dotted path sd-scripts gives the UNet module that diffusers calls ``path`` (``unet_config``: the
        loaded UNet's config; by default the family's published one)."""
        return path

    def kohya_module_key(self, component: str, path: str) -> str | None:
        """The Kohya module key of the module diffusers calls ``path`` inside ``component`` (a pipeline attribute:
        ``unet``, ``text_encoder``, ``text_encoder_2``), from the published configs: how a diffusers/PEFT LoRA file
        is renamed without a model. ``None``: the family has no such component."""
        if component == "unet":
            return kohya_key(PREFIX_UNET, self.kohya_unet_path(path))
        for slot in self.text_encoder_slots:
            if slot.component == component:
                return kohya_key(slot.kohya_prefix, path)
        return None

    def lora_components(self, modules: Mapping[str, Any], text_encoders: bool = True) -> list[LoraComponent]:
        """Where a Kohya LoRA of this family has modules: the UNet and (``text_encoders``) each text encoder."""
        out = []
        for slot in self.text_encoder_slots if text_encoders else ():
            if modules.get(slot.component) is not None:
                out.append(LoraComponent(slot.component, slot.kohya_prefix, modules[slot.component], self.text_encoder_target_classes))
        unet = modules["unet"]
        out.append(LoraComponent("unet", PREFIX_UNET, unet, self.unet_target_classes, lambda path, unet=unet: self.kohya_unet_path(path, unet.config)))
        return out

    def lora_metadata(self, resolution: tuple[int, int], title: str, started_at: float, prediction_type: str = "epsilon") -> dict:
        """The ``ss_base_model_version`` / ``ss_v2`` and ModelSpec keys sd-scripts writes for a LoRA of this family."""
        import datetime

        return {
            "ss_base_model_version": self.ss_base_model_version,
            "ss_v2": False,
            "modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": self.modelspec_architecture,
            "modelspec.implementation": self.modelspec_implementation,
            "modelspec.title": title,
            "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
            "modelspec.date": datetime.datetime.fromtimestamp(int(started_at)).isoformat(),
            "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        }

    # -- sampling --------------------------------------------------------------------------------

    def pipeline(self, model: LoadedModel, scheduler):
        """A diffusers pipeline over the loaded parts (nothing is copied), progress bars off."""
        import diffusers

        parts = {"unet": model.unet, "vae": model.vae, "scheduler": scheduler, **model.text_encoders, **model.tokenizers}
        pipe = getattr(diffusers, self.pipeline_class)(**parts, **self.pipeline_kwargs())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pipeline_kwargs(self) -> dict:
        return {}

    # -- sd-scripts ------------------------------------------------------------------------------

    def sd_scripts_arguments(self, config, fixed_captions: bool) -> list[str]:
        """Arguments this family's sd-scripts script needs beyond the shared ones, so that it trains what the
        built-in trainer trains for ``config``.

        Args:
            config: the :class:`~lora_likeness.training.config.TrainConfig`, filled for this family.
            fixed_captions: every image keeps one caption in every epoch (no subset shuffles its tags).

        Raises:
            ConfigError: a setting the family's script cannot do as the built-in trainer does (the message says
                which and what to do).
        """
        return []

    def __repr__(self) -> str:
        return f"<model family {self.name}>"


def fit_tokenizer(tokenizer, text_encoder):
    """Pad and truncate prompts to the text encoder's positions (77 for CLIP): ComfyUI's bundled
    ``sd1_tokenizer`` declares ``model_max_length`` 8192, which CLIP's 77 position embeddings reject."""
    positions = int(getattr(text_encoder.config, "max_position_embeddings", 77))
    if not tokenizer.model_max_length or tokenizer.model_max_length > positions:
        tokenizer.model_max_length = positions
    return tokenizer


def tokenize(tokenizer, captions: list[str], device):
    """``[B, 77]`` token ids, padded and truncated to the tokenizer's length."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def module_device(module):
    return next(module.parameters()).device
