"""Kohya LoRA file format: module selection and key names, file names, ``ss_*`` metadata hashes.

One place for the naming both ways, so the trainer (writing) and the sweep (loading Kohya files onto a
diffusers pipeline) agree with sd-scripts' ``networks.lora``:

* targets: in the UNet every ``Linear`` and 1×1 ``Conv2d`` inside a ``Transformer2DModel`` (attention
  q/k/v/out, feed-forward, ``proj_in``/``proj_out``); in each CLIP text encoder every ``Linear`` inside
  ``CLIPAttention`` (q/k/v/out_proj) and ``CLIPMLP`` (fc1/fc2). Which components a model has, their key
  prefixes and how sd-scripts spells a module's path is the model family's business
  (:meth:`lora_likeness.families.ModelFamily.lora_components`); this module walks what it is given;
* key of a module: prefix + its sd-scripts path with ``.`` → ``_``, e.g. SD1's
  ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``, SDXL's
  ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`` and ``lora_te1_…``/``lora_te2_…``;
  text-encoder paths are spelled from ``text_model.`` as in transformers 4 (transformers 5 dropped that level);
* tensors per module: ``<key>.lora_down.weight`` ``[rank, in(, 1, 1)]``, ``<key>.lora_up.weight``
  ``[out, rank(, 1, 1)]``, ``<key>.alpha`` (scalar); the update is ``up @ down * alpha / rank``.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# sd-scripts' LoRANetwork.LORA_PREFIX_*: SD1/SD2 have one text encoder (lora_te), SDXL two (lora_te1, lora_te2).
PREFIX_UNET = "lora_unet"
PREFIX_TEXT_ENCODER = "lora_te"
PREFIX_TEXT_ENCODER_1 = "lora_te1"
PREFIX_TEXT_ENCODER_2 = "lora_te2"
NETWORK_MODULE = "networks.lora"
EPOCH_FILE_NAME = "{}-{:06d}"  # sd-scripts' train_util.EPOCH_FILE_NAME
_PEFT_PARTS = re.compile(r"(^|\.)(base_layer|lora_A|lora_B|lora_dropout|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")


def _same_path(path: str) -> str:
    return path


@dataclass(frozen=True)
class LoraComponent:
    """One model part a Kohya LoRA has modules in, as the model family describes it."""

    name: str
    """Pipeline attribute: ``unet``, ``text_encoder``, ``text_encoder_2``."""
    prefix: str
    """Kohya key prefix: ``lora_unet``, ``lora_te``, ``lora_te1``, ``lora_te2``."""
    module: Any
    """The torch module."""
    target_classes: tuple[str, ...]
    """Class names whose ``Linear``/1×1 ``Conv2d`` children get a LoRA."""
    kohya_path: Callable[[str], str] = field(default=_same_path)
    """diffusers path inside ``module`` → the path sd-scripts names (SDXL's UNet is spelled in its original layout)."""


@dataclass(frozen=True)
class LoraTarget:
    """One module that gets a LoRA: its Kohya key, which component, its path there, its shapes."""

    key: str
    """Kohya module key, e.g. ``lora_te_text_model_encoder_layers_0_mlp_fc1``."""
    component: str
    """``unet``, ``text_encoder`` or ``text_encoder_2``."""
    path: str
    """Dotted module path inside that component (as ``named_modules`` spells it)."""
    in_features: int
    out_features: int
    conv: bool
    """A 1×1 ``Conv2d`` (``proj_in``/``proj_out`` of SD1.x) rather than a ``Linear``."""


def kohya_key(prefix: str, path: str) -> str:
    """``("lora_unet", "mid_block.attentions.0.proj_in")`` → ``lora_unet_mid_block_attentions_0_proj_in``."""
    return f"{prefix}.{path}".replace(".", "_")


def text_encoder_kohya_path(path: str, flattened: bool) -> str:
    """The path sd-scripts sees: transformers 5's ``CLIPTextModel`` has no ``text_model`` level."""
    return f"text_model.{path}" if flattened else path


def _is_flattened_clip(text_encoder) -> bool:
    return not hasattr(text_encoder, "text_model") and hasattr(text_encoder, "encoder")


def find_targets(components: Iterable[LoraComponent]) -> list[LoraTarget]:
    """The modules sd-scripts' ``networks.lora`` (default settings) puts a LoRA on, component by component.

    Works on plain models and on models that already carry peft LoRA layers (the wrapper counts, its
    ``base_layer`` and ``lora_A``/``lora_B`` children do not).
    """
    targets: list[LoraTarget] = []
    for component in components:
        seen: set[str] = set()
        root = component.module
        flattened = component.name != "unet" and _is_flattened_clip(root)
        for name, module in root.named_modules():
            if type(module).__name__ not in component.target_classes:
                continue
            for child_name, child in module.named_modules():
                if not child_name or _PEFT_PARTS.search(child_name):
                    continue
                base = getattr(child, "base_layer", child)
                kind = type(base).__name__
                conv = kind == "Conv2d"
                if kind != "Linear" and not (conv and tuple(base.kernel_size) == (1, 1)):
                    continue
                path = f"{name}.{child_name}" if name else child_name
                if path in seen:
                    continue
                seen.add(path)
                kohya_path = text_encoder_kohya_path(path, flattened) if component.name != "unet" else component.kohya_path(path)
                in_f = base.in_channels if conv else base.in_features
                out_f = base.out_channels if conv else base.out_features
                targets.append(LoraTarget(kohya_key(component.prefix, kohya_path), component.name, path, in_f, out_f, conv))
    return targets


def module_key_of(tensor_key: str) -> str:
    """``lora_unet_x.lora_down.weight`` → ``lora_unet_x``."""
    return tensor_key.split(".", 1)[0]


def target_map(targets: Iterable[LoraTarget]) -> dict[str, LoraTarget]:
    """Kohya module key → target: the Kohya → diffusers direction (``_`` alone is ambiguous)."""
    return {t.key: t for t in targets}


def kohya_to_peft(state_dict: Mapping[str, Any], targets: Mapping[str, LoraTarget]) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """Split a Kohya LoRA into per-component peft-style tensors for a diffusers pipeline.

    ``targets`` is :func:`target_map` of the model's :func:`find_targets`. Returns ``(tensors, alphas,
    unknown)``: ``tensors[component]`` maps ``<path>.lora_A.weight`` / ``<path>.lora_B.weight`` to the
    file's tensors, ``alphas[component][path]`` is the module's alpha (for peft's ``alpha_pattern``), and
    ``unknown`` lists module keys that match no target module.
    """
    components = dict.fromkeys(t.component for t in targets.values())
    tensors: dict[str, dict] = {c: {} for c in components}
    alphas: dict[str, dict] = {c: {} for c in components}
    unknown = []
    for key, value in state_dict.items():
        module_key, _, kind = key.partition(".")
        target = targets.get(module_key)
        if target is None:
            if module_key not in unknown:
                unknown.append(module_key)
            continue
        if kind == "lora_down.weight":
            tensors[target.component][f"{target.path}.lora_A.weight"] = value
        elif kind == "lora_up.weight":
            tensors[target.component][f"{target.path}.lora_B.weight"] = value
        elif kind == "alpha":
            alphas[target.component][target.path] = float(value.item() if hasattr(value, "item") else value)
    return tensors, alphas, unknown


# ------------------------------------------------------------------------------------------------
# file names
# ------------------------------------------------------------------------------------------------


def epoch_file_name(name: str, epoch: int) -> str:
    """sd-scripts' per-epoch name: ``name-000003.safetensors``."""
    return EPOCH_FILE_NAME.format(name, epoch) + ".safetensors"


def final_file_name(name: str) -> str:
    return f"{name}.safetensors"


# ------------------------------------------------------------------------------------------------
# hashes and metadata (as sd-scripts' train_util)
# ------------------------------------------------------------------------------------------------


def addnet_hash_safetensors(data: bytes) -> str:
    """sha256 of a safetensors file's bytes after its header (sd-webui-additional-networks' hash)."""
    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length:]).hexdigest()


def addnet_hash_legacy(data: bytes) -> str:
    """The old 8-hex-digit hash: sha256 of 64 KiB at offset 1 MiB."""
    return hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def precalculate_hashes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` over the file as it would be with only its ``ss_*`` metadata."""
    from safetensors.torch import save

    data = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    return addnet_hash_safetensors(data), addnet_hash_legacy(data)


def legacy_model_hash(path: Path) -> str:
    """A1111's old checkpoint hash (``ss_sd_model_hash``): sha256 of 64 KiB at offset 1 MiB, 8 digits."""
    with open(path, "rb") as stream:
        stream.seek(0x100000)
        return hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_strings(metadata: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata must be ``str → str``; dicts and lists become JSON, like sd-scripts."""
    out = {}
    for key, value in metadata.items():
        if value is None:
            out[key] = "None"
        elif isinstance(value, (dict, list)):
            out[key] = json.dumps(value, ensure_ascii=False)
        else:
            out[key] = str(value)
    return out


def serialize_lora(tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> bytes:
    """The bytes of a Kohya LoRA file: tensors, ``ss_*`` metadata and the two ``sshs_*`` hashes."""
    from safetensors.torch import save

    meta = metadata_strings(metadata)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = precalculate_hashes(tensors, meta)
    return save({k: v.contiguous() for k, v in tensors.items()}, meta)


def save_lora_file(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
    """Write a Kohya LoRA atomically (a crash leaves the previous file or none, never half a file), with the
    permissions the process umask gives any new file, as the host's own model files have."""
    from ..images import write_bytes_atomic

    write_bytes_atomic(Path(path), serialize_lora(tensors, metadata))  # honours the umask (images.atomic_write)
    return Path(path)


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its header alone."""
    from ..safetensors_header import read_header

    return dict(read_header(path, check_size=False).metadata)


def lora_header_keys(data: bytes | Path) -> list[str]:
    """The tensor names in a safetensors file's header (without loading the tensors)."""
    from ..safetensors_header import read_header

    return read_header(data, check_size=False).keys
