"""Model families: one module per family answers what is different about it (see :mod:`.base`).

    family = detect_family(path)          # sd1 / sdxl from a single file's keys and shapes or a diffusers folder
    model = family.load(path, dtype=...)  # offline: built-in configs, tokenizers found locally

Registered: :mod:`.sd1` (SD1.x), :mod:`.sdxl` (SDXL 1.0 base and fine-tunes). Adding a family is a new
module with a :class:`~.base.ModelFamily` subclass and a line in :data:`FAMILIES`. Architectures that are
recognised but not supported (SD2.x, SD3, Flux until its module exists, LoRA files) get a message that says
so before anything is loaded.

Importing this package imports nothing heavy (no torch, diffusers or transformers).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..safetensors_header import Header, HeaderError, read_header
from .base import (
    ARCHITECTURE_NAMES,
    Conditioning,
    Detection,
    FamilyDefaults,
    ImageGeometry,
    LoadedModel,
    ModelFamily,
    TextEncoderSlot,
)
from .errors import ModelLoadError
from .sd1 import SD1
from .sdxl import SDXL

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SD1(), SDXL())}

__all__ = [
    "ARCHITECTURE_NAMES", "FAMILIES", "Conditioning", "Detection", "FamilyDefaults", "ImageGeometry", "LoadedModel",
    "ModelFamily", "ModelLoadError", "TextEncoderSlot", "detect", "detect_family", "get_family", "load_base", "supported_titles",
]


def supported_titles() -> str:
    return ", ".join(f.title for f in FAMILIES.values())


def get_family(name: str) -> ModelFamily:
    """The registered family ``name`` (``sd1``, ``sdxl``).

    Raises:
        ModelLoadError: not a registered family (the message lists them).
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelLoadError(f"model family {name!r} is not one of: {', '.join(FAMILIES)}") from None


def _unsupported(header: Header) -> Detection:
    """What a checkpoint no registered family claims is, for the message."""
    keys = header.keys
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys) or any(".lora_A." in k or ".lora_down." in k for k in keys):
        return Detection("lora", "lora", "is a LoRA, not a base model")
    if header.has_prefix("cond_stage_model.model."):
        return Detection("sd2", problem="is an SD2.x checkpoint (OpenCLIP-H text encoder); SD2.x is not supported")
    joined = "\n".join(keys[:5000])
    if "double_blocks." in joined or "single_blocks." in joined or "single_transformer_blocks." in joined:
        return Detection("flux", problem="is a Flux model; Flux is not supported yet")
    if "joint_blocks." in joined:
        return Detection("sd3", problem="is an SD3 model; SD3 is not supported")
    if header.has_prefix("model.diffusion_model.") or header.has_prefix("input_blocks.", "down_blocks."):
        return Detection("unknown", "unet-only", "holds a UNet but no text encoder (a UNet-only file); use the full checkpoint "
                                                 "with its text encoders")
    return Detection("unknown", problem="is not a Stable Diffusion checkpoint this version knows")


def read_json_object(path: Path) -> dict:
    """A diffusers config file (``model_index.json``, ``unet/config.json`` …) as a dict; ``{}`` when missing or not a JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def detect(path: Path | str) -> Detection:
    """What the base model at ``path`` is: a single ``.safetensors`` file (header only) or a diffusers folder.

    Raises:
        ModelLoadError: missing, unreadable, truncated, or a format that would need unpickling.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"base model {path} does not exist")
    if path.is_dir():
        model_index = read_json_object(path / "model_index.json")
        unet_config = read_json_object(path / "unet" / "config.json")
        if not unet_config:
            raise ModelLoadError(f"base {path} is a folder but not a diffusers model (no unet/config.json)")
        for family in FAMILIES.values():
            found = family.detect_folder(model_index, unet_config)
            if found is not None:
                return found
        if int(unet_config.get("cross_attention_dim") or 0) == 1024:
            return Detection("sd2", problem="is an SD2.x model (OpenCLIP-H text encoder); SD2.x is not supported")
        return Detection("unknown", problem=f"is a diffusers {model_index.get('_class_name', 'model')} that this version does not "
                                             f"support (supported: {supported_titles()})")
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"base {path.name}: only .safetensors checkpoints or diffusers folders are loaded (.ckpt/.pt files need "
                             "unpickling, which can run code; convert it to .safetensors)")
    try:
        header = read_header(path)
    except HeaderError as exc:
        raise ModelLoadError(f"base {exc}") from None
    for family in FAMILIES.values():
        found = family.detect_checkpoint(header)
        if found is not None:
            return found
    return _unsupported(header)


def detect_family(path: Path | str, expected: str | None = None) -> ModelFamily:
    """The family of the base model at ``path``, which must be usable as a base for LoRA training and sweeps.

    Args:
        expected: a family name the caller was told to use (``--family``); a base of another family is refused.

    Raises:
        ModelLoadError: missing/truncated file, an unsupported architecture or variant (inpainting, refiner),
            or not the expected family; the message names the file and what to use instead.
    """
    found = detect(path)
    name = Path(path).name
    if found.problem:
        raise ModelLoadError(f"base {name} {found.problem}")
    family = get_family(found.architecture)
    if expected not in (None, "auto") and expected != family.name:
        raise ModelLoadError(f"base {name} is an {family.title} model, not {get_family(expected).title} as asked")
    return family


def load_base(base: Path | str, family: str | None = "auto", tokenizer: Path | None = None, tokenizer_2: Path | None = None,
              config_dir: Path | None = None, dtype=None) -> LoadedModel:
    """Detect the family of ``base`` and load it offline (see :meth:`.base.ModelFamily.load`).

    Raises:
        ModelLoadError: what to pass or fix.
    """
    found = detect_family(base, family)
    return found.load(Path(base), {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2}, config_dir, dtype=dtype)
