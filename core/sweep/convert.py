"""Write a diffusers or PEFT LoRA as a Kohya file that A1111, Forge and ComfyUI load.

diffusers' training scripts save ``pytorch_lora_weights.safetensors`` and PEFT saves
``adapter_model.safetensors``; A1111 loads neither. The tensors are the same matrices under other names:

===============================================================  =====================================================
diffusers / PEFT                                                 Kohya (``networks.lora``, see :mod:`..training.kohya_format`)
===============================================================  =====================================================
``unet.<path>.lora_A.weight`` / ``.lora.down.weight``            ``lora_unet_<path with _>.lora_down.weight``
``unet.<path>.lora_B.weight`` / ``.lora.up.weight``              ``lora_unet_<path with _>.lora_up.weight``
``text_encoder.<path>.lora_linear_layer.down.weight``            ``lora_te_text_model_<path with _>.lora_down.weight``
``text_encoder_2.<path>…`` (SDXL)                                ``lora_te2_text_model_<path with _>…`` (and ``lora_te1_`` for the first)
``base_model.model.<path>.lora_A.weight`` (PEFT)                 as above, the component told by the path's root
``<path>.processor.to_q_lora.down.weight`` (old attention procs)  ``lora_unet_<path>_to_q.lora_down.weight``
—                                                                ``<key>.alpha`` (scalar, float32)
===============================================================  =====================================================

For SD1.x diffusers' UNet paths *are* the module paths Kohya keys spell (``down_blocks.0.attentions.0…``); SDXL's
Kohya keys spell the UNet in its original layout (``input_blocks.4.1…``), which the model family computes from its
published config (:meth:`~lora_likeness.families.ModelFamily.kohya_module_key`). Either way the mapping is a
renaming, no model needed. Text-encoder paths are spelled from ``text_model.`` as in
transformers 4 (transformers 5 saves them without that level).

**Alpha.** Both formats scale the update ``up @ down`` by ``alpha / rank`` (PEFT: ``lora_alpha / r``, or
``lora_alpha / √r`` with rsLoRA). The Kohya alpha written for a module is ``scale × rank``, its scale taken
from, in order: ``alpha=`` given by the caller (the ``lora_alpha`` the adapter was trained with), ``.alpha``
tensors in the file, diffusers' ``lora_adapter_metadata`` in the file's header or PEFT's
``adapter_config.json`` beside it (``lora_alpha``, ``r``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora``),
and otherwise ``alpha = rank``: a file that says nothing is applied by diffusers with scale 1.0 (its loader
sets ``lora_alpha = r`` when no alphas are stored, and diffusers' training scripts train with
``lora_alpha = rank``), so the Kohya file keeps scale 1.0 too.

DoRA (``lora_magnitude_vector`` / ``dora_scale``), LoRA biases and embedding LoRAs have no Kohya
``networks.lora`` equivalent and are refused with a message saying so.

torch and safetensors are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..training.kohya_format import NETWORK_MODULE, PREFIX_TEXT_ENCODER, PREFIX_UNET, kohya_key

logger = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"
#: Header metadata key under which diffusers (≥ 0.34) stores each component's LoraConfig, keys prefixed ``unet.`` / ``text_encoder.``.
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
PEFT_CONFIG_FILE = "adapter_config.json"

_UNET_ROOTS = ("down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "conv_norm_out", "time_embedding", "add_embedding")
_TEXT_ROOTS = ("text_model", "encoder", "embeddings", "final_layer_norm")
_COMPONENT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}
_OTHER_MODELS = ("text_encoder_3.", "transformer.", "prior.", "decoder.")

# (pattern, part); the first that matches names the tensor. ``path`` is the module path.
_KEY_PATTERNS: list[tuple[re.Pattern, str]] = [
    # diffusers' lora_state_dict returns alphas keyed by the down matrix (``….lora.down.weight.alpha``).
    (re.compile(r"^(?P<path>.+)\.lora\.down\.weight\.alpha$"), "alpha"),
    (re.compile(r"^(?P<path>.+)\.lora_linear_layer\.down\.weight\.alpha$"), "alpha"),
    (re.compile(r"^(?P<path>.+)\.lora_A\.weight$"), "down"),
    (re.compile(r"^(?P<path>.+)\.lora_B\.weight$"), "up"),
    (re.compile(r"^(?P<path>.+)\.lora\.down\.weight$"), "down"),
    (re.compile(r"^(?P<path>.+)\.lora\.up\.weight$"), "up"),
    (re.compile(r"^(?P<path>.+)\.lora_linear_layer\.down\.weight$"), "down"),
    (re.compile(r"^(?P<path>.+)\.lora_linear_layer\.up\.weight$"), "up"),
    (re.compile(r"^(?P<path>.+)\.lora_A\.[^.]+\.weight$"), "down"),  # an unstripped adapter name: lora_A.default.weight
    (re.compile(r"^(?P<path>.+)\.lora_B\.[^.]+\.weight$"), "up"),
    (re.compile(r"^(?P<path>.+)\.alpha$"), "alpha"),
]
# diffusers' old attention-processor format: ``…attn1.processor.to_q_lora.down.weight`` in the UNet,
# ``…self_attn.to_q_lora.down.weight`` in a text encoder (its alpha: ``….down.weight.alpha``).
_PROCESSOR_KEY = re.compile(r"^(?P<path>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\."
                            r"(?:(?P<part>down|up)\.weight|down\.weight\.(?P<alpha>alpha))$")
# Those projections' module names: diffusers' Attention (UNet) and transformers' CLIPAttention (text encoders).
_PROCESSOR_PROJ = {"unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
                   "text_encoder": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}}
_REFUSED = [
    (re.compile(r"lora_magnitude_vector|dora_scale"), ("a DoRA LoRA (magnitude vectors): Kohya's networks.lora has no DoRA; "
                                                      "A1111 and ComfyUI would drop the magnitudes and change the result")),
    (re.compile(r"lora_B(\.[^.]+)?\.bias$"), "a LoRA with biases (lora_bias): Kohya's networks.lora has no LoRA bias"),
    (re.compile(r"lora_embedding_[AB]"), "an embedding LoRA (lora_embedding_A/B): Kohya's networks.lora has no embedding LoRA"),
    (re.compile(r"modules_to_save"), "a PEFT adapter with fully trained modules (modules_to_save): they are not a LoRA"),
]


class ConversionError(ValueError):
    """The file cannot be written as a Kohya LoRA; the message says why and what to do."""


@dataclass
class KohyaConversion:
    """The result of converting one LoRA's tensors.

    Attributes:
        tensors: Kohya tensors: ``<key>.lora_down.weight`` ``[rank, in(, kh, kw)]``, ``<key>.lora_up.weight``
            ``[out, rank(, 1, 1)]``, ``<key>.alpha`` (0-d float32).
        ranks / alphas: per Kohya module key.
        alpha_source: where the alphas came from: ``argument``, ``file alphas``, ``file metadata``,
            ``adapter_config.json`` or ``rank (scale 1.0)``.
        source_format: ``diffusers`` or ``peft``.
    """

    tensors: dict[str, Any]
    ranks: dict[str, int]
    alphas: dict[str, float]
    alpha_source: str
    source_format: str
    notes: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        """The most common rank (Kohya's ``ss_network_dim``)."""
        return Counter(self.ranks.values()).most_common(1)[0][0]

    @property
    def alpha(self) -> float:
        """The most common alpha (Kohya's ``ss_network_alpha``)."""
        return Counter(self.alphas.values()).most_common(1)[0][0]


# ------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------


def split_key(key: str) -> tuple[str, str, str, str]:
    """``(component, module path, part, source path)`` of one diffusers/PEFT tensor name.

    ``component`` is ``unet``, ``text_encoder`` or ``text_encoder_2``; ``module path`` is the path Kohya spells (text encoder
    from ``text_model.``); ``part`` is ``down``, ``up`` or ``alpha``; ``source path`` is the module path as
    the file spells it (what PEFT's ``rank_pattern``/``alpha_pattern`` match).

    Raises:
        ConversionError: a tensor Kohya cannot hold (DoRA, bias, embedding), another model's key, or an
            unknown name.
    """
    for pattern, reason in _REFUSED:
        if pattern.search(key):
            raise ConversionError(f"{key}: this is {reason}")
    rest = key.removeprefix("base_model.model.")
    if rest.startswith(_OTHER_MODELS):
        raise ConversionError(f"{key}: a LoRA for another model than SD1.x's or SDXL's UNet and text encoders (SD3, Flux …)")
    component = None
    for prefix, name in _COMPONENT_PREFIXES.items():
        if rest.startswith(prefix):
            component, rest = name, rest[len(prefix):]
            break
    processor = _PROCESSOR_KEY.match(rest)
    if processor:
        path, part = processor["path"], processor["part"] or "alpha"
    else:
        for pattern, kind in _KEY_PATTERNS:
            match = pattern.match(rest)
            if match:
                path, part = match["path"], kind
                break
        else:
            raise ConversionError(f"{key}: not a LoRA tensor name this converter knows (expected lora_A/lora_B, "
                                  "lora.down/lora.up, lora_linear_layer.down/up or alpha)")
    if component is None:
        root = path.split(".", 1)[0]
        component = "unet" if root in _UNET_ROOTS else "text_encoder" if root in _TEXT_ROOTS else None
        if component is None:
            raise ConversionError(f"{key}: cannot tell whether {path!r} is in the UNet or the text encoder")
    if processor:
        path = f"{path}.{_PROCESSOR_PROJ['unet' if component == 'unet' else 'text_encoder'][processor['proj']]}"
    kohya_path = path
    if component.startswith("text_encoder") and not path.startswith("text_model."):
        kohya_path = f"text_model.{path}"  # transformers 5 dropped CLIPTextModel's text_model level
    return component, kohya_path, part, path


#: Kohya module key of (component, module path); ``None`` when the model has no such component.
KohyaNaming = Callable[[str, str], "str | None"]


def kohya_module_key(component: str, path: str) -> str:
    """SD1.x's naming: ``("unet", "down_blocks.0.attentions.0.proj_in")`` → ``lora_unet_down_blocks_0_attentions_0_proj_in``."""
    if component == "text_encoder_2":
        raise ConversionError(f"{path}: a module of a second text encoder (text_encoder_2), which SD1.x does not have: "
                              "an SDXL LoRA")
    return kohya_key(PREFIX_UNET if component == "unet" else PREFIX_TEXT_ENCODER, path)


# ------------------------------------------------------------------------------------------------
# alpha settings
# ------------------------------------------------------------------------------------------------


def read_lora_settings(source: Path, file_metadata: Mapping[str, str] | None = None) -> tuple[dict[str, dict], str | None]:
    """Each component's LoRA settings (``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora``,
    ``use_dora``) and where they came from: diffusers' ``lora_adapter_metadata`` header entry, else PEFT's
    ``adapter_config.json`` beside the file (applied to every component). ``({}, None)`` when neither exists.
    """
    source = Path(source)
    raw = (file_metadata or {}).get(DIFFUSERS_METADATA_KEY)
    if raw:
        try:
            packed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{source.name}: its {DIFFUSERS_METADATA_KEY} header entry is not JSON ({exc})") from exc
        settings: dict[str, dict] = {}
        for key, value in packed.items():
            component, _, name = key.partition(".")
            settings.setdefault(component, {})[name] = value
        return settings, "file metadata"
    config_path = source.parent / PEFT_CONFIG_FILE
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConversionError(f"{config_path}: cannot read it ({exc})") from exc
        if not isinstance(config, dict):
            raise ConversionError(f"{config_path}: not a PEFT adapter config (expected a JSON object)")
        return {"*": config}, PEFT_CONFIG_FILE
    return {}, None


def _pattern_value(patterns: Mapping[str, Any] | None, path: str):
    """PEFT's ``get_pattern_key``: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", path)``."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return None


def _scale_from_settings(config: Mapping[str, Any], path: str, rank: int) -> float | None:
    alpha = _pattern_value(config.get("alpha_pattern"), path)
    if alpha is None:
        alpha = config.get("lora_alpha")
    if alpha is None:
        return None
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(rank)
    return float(alpha) / rank


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------


def convert_state_dict(
    tensors: Mapping[str, Any],
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    alpha: float | None = None,
    settings_source: str | None = None,
    source_format: str = "diffusers",
    naming: KohyaNaming | None = None,
) -> KohyaConversion:
    """Rename a diffusers/PEFT LoRA's tensors to Kohya's and add each module's alpha (see the module docstring).

    Args:
        tensors: the file's tensors.
        settings: from :func:`read_lora_settings` (component → LoraConfig fields; ``*`` for every component).
        alpha: the ``lora_alpha`` the adapter was trained with; overrides everything the file says.
        naming: the Kohya key of each (component, module path): the model family's
            :meth:`~lora_likeness.families.ModelFamily.kohya_module_key`, or a loaded model's; default SD1.x's.

    Raises:
        ConversionError: an unconvertible tensor, a module without its down or up matrix, mismatched
            ranks, or an empty file.
    """
    import torch

    settings = settings or {}
    for component, config in settings.items():
        if config.get("use_dora"):
            where = "" if component == "*" else f" ({component})"
            raise ConversionError(f"this is a DoRA LoRA{where}: Kohya's networks.lora has no DoRA; A1111 and ComfyUI "
                                  "would drop the magnitude vectors and change the result")
    modules: dict[str, dict[str, Any]] = {}
    source_paths: dict[str, tuple[str, str]] = {}
    for key, value in tensors.items():
        component, path, part, source_path = split_key(key)
        module = (naming or kohya_module_key)(component, path)
        if module is None:
            raise ConversionError(f"{key}: this model has no {component}")
        if part in modules.setdefault(module, {}):
            raise ConversionError(f"{key}: a second {part} tensor for module {module} (two spellings of one module in one file)")
        modules[module][part] = value
        source_paths[module] = (component, source_path)
    if not modules:
        raise ConversionError("the file holds no tensors")

    out: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    used_sources = set()
    for module, parts in modules.items():
        if "down" not in parts or "up" not in parts:
            missing = "down (lora_A)" if "down" not in parts else "up (lora_B)"
            raise ConversionError(f"module {module} has no {missing} matrix: the file is incomplete")
        down, up = parts["down"], parts["up"]
        rank = int(down.shape[0])
        if int(up.shape[1]) != rank:
            raise ConversionError(f"module {module}: down has rank {rank} but up has {int(up.shape[1])} columns")
        component, source_path = source_paths[module]
        if alpha is not None:
            value, used = float(alpha), "argument"
        elif "alpha" in parts:
            stored = parts["alpha"]
            value, used = float(stored.item() if hasattr(stored, "item") else stored), "file alphas"
        else:
            config = settings.get(component) or settings.get("*")
            scale = _scale_from_settings(config, source_path, rank) if config else None
            if scale is not None:
                value, used = scale * rank, settings_source or "settings"
            else:
                value, used = float(rank), "rank (scale 1.0)"
        used_sources.add(used)
        out[f"{module}.lora_down.weight"] = down.contiguous()
        out[f"{module}.lora_up.weight"] = up.contiguous()
        out[f"{module}.alpha"] = torch.tensor(value, dtype=torch.float32)  # float32: an alpha like 0.1 stays exact
        ranks[module], alphas[module] = rank, value
    notes = []
    outside = sorted(m for m, (component, path) in source_paths.items() if not _default_target(component, path))
    if outside:
        notes.append(f"{len(outside)} module(s) outside sd-scripts' default LoRA targets (first: {outside[0]}); they are "
                     "converted by the same naming (LoCon-style keys), which not every loader applies")
    return KohyaConversion(out, ranks, alphas, " + ".join(sorted(used_sources)), source_format, notes)


def _default_target(component: str, path: str) -> bool:
    """Inside a ``Transformer2DModel`` (UNet) or a CLIP attention/MLP block: where sd-scripts' networks.lora puts LoRAs."""
    if component == "unet":
        return ".attentions." in f".{path}"
    return ".self_attn." in path or ".mlp." in path


def _source_family(source: Path):
    """``(model family, ss_v2)`` of the LoRA ``source``; refuses other architectures than SD1.x/SD2.x/SDXL. SD2.x
    LoRAs are named as SD1.x's (one text encoder, the same UNet paths)."""
    from ..checkpoints import ARCHITECTURE_NAMES, lora_architecture
    from ..families import get_family

    found = lora_architecture(source)
    if found in ("sd1", "unknown", "sd2"):
        return get_family("sd1"), found == "sd2"
    if found == "sdxl":
        return get_family("sdxl"), False
    raise ConversionError(f"{source.name} is a {ARCHITECTURE_NAMES.get(found, found)} LoRA: likeness convert writes "
                          "SD1.x/SD2.x and SDXL Kohya files only")


def _describe_source(source: Path) -> str:
    """``exp_e10/pytorch_lora_weights.safetensors``: enough to recognise, without the user's home folder."""
    from ..checkpoints import is_folder_lora

    return f"{source.parent.name}/{source.name}" if is_folder_lora(source) and source.parent.name else source.name


def convert_to_kohya(
    source: Path,
    target: Path,
    alpha: float | None = None,
    overwrite: bool = False,
    epoch: int | None = None,
    step: int | None = None,
) -> Path:
    """Write the diffusers/PEFT LoRA ``source`` (safetensors) as the Kohya file ``target``.

    Args:
        source: ``pytorch_lora_weights.safetensors``, ``adapter_model.safetensors`` (its
            ``adapter_config.json`` beside it is read) or any diffusers/PEFT LoRA file.
        target: the ``.safetensors`` file to write (atomically).
        alpha: the ``lora_alpha`` it was trained with, when the file and its config do not say (or say wrong).
        overwrite: replace an existing ``target`` (never the source itself).
        epoch / step: ``ss_epoch`` / ``ss_steps``; default: from the source's folder name (``exp_e10``,
            ``checkpoint-500``).

    Returns:
        ``target``.

    Raises:
        ConversionError: not a safetensors file, already Kohya, a DoRA or otherwise unconvertible LoRA, another
            architecture, ``target`` exists (without ``overwrite``) or is the source.
    """
    from ..checkpoints import _read_header, lora_format
    from ..training.kohya_format import save_lora_file

    source, target = Path(source), Path(target)
    if source.suffix.lower() != LORA_SUFFIX or not source.is_file():
        raise ConversionError(f"{source}: not a .safetensors file (only safetensors LoRAs are converted; "
                              ".bin files are pickles and are never loaded)")
    try:
        header = _read_header(source)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{source}: cannot read it as a safetensors file ({exc})") from exc
    layout = lora_format(header)
    if layout == "unknown":
        raise ConversionError(f"{source.name} holds no LoRA tensors this converter knows (lora_A/lora_B, lora.down/lora.up, "
                              "lora_linear_layer): it is not a diffusers or PEFT LoRA")
    if layout == "kohya":
        raise ConversionError(f"{source.name} is already a Kohya LoRA (lora_unet_/lora_te_ keys): A1111 and ComfyUI load it as it is")
    if target.suffix.lower() != LORA_SUFFIX:
        raise ConversionError(f"{target}: the Kohya file must end in .safetensors")
    if target.resolve() == source.resolve():
        raise ConversionError(f"{target} is the source file: write the Kohya file elsewhere (the source is never overwritten)")
    if target.exists() and not overwrite:
        raise ConversionError(f"{target} already exists: pass --force (overwrite=True) to replace it, or choose another --out")
    family, v2 = _source_family(source)

    from safetensors.torch import load_file

    file_metadata = header.get("__metadata__") if isinstance(header.get("__metadata__"), dict) else {}
    settings, settings_source = read_lora_settings(source, file_metadata)
    converted = convert_state_dict(load_file(str(source)), settings, alpha, settings_source, layout, naming=family.kohya_module_key)
    for note in converted.notes:
        logger.warning("%s: %s", source.name, note)

    if epoch is None and step is None:
        from ..checkpoints import sweep_checkpoints

        found = sweep_checkpoints(source, base=None)[0]
        epoch, step = found.epoch, found.step
    metadata = {
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": converted.rank,
        "ss_network_alpha": converted.alpha,
        "ss_base_model_version": "sd_v2" if v2 else family.ss_base_model_version,
        "ss_v2": v2,
        "ss_output_name": target.stem,
        "ss_training_comment": f"converted from a {layout} LoRA by likeness convert",
        "likeness_converted_from": _describe_source(source),
        "likeness_converted_format": layout,
        "likeness_alpha_source": converted.alpha_source,
    }
    if epoch is not None:
        metadata["ss_epoch"] = int(epoch)
    if step is not None:
        metadata["ss_steps"] = int(step)
    return save_lora_file(target, converted.tensors, metadata)


# ------------------------------------------------------------------------------------------------
# folders: every diffusers/PEFT checkpoint → one Kohya run per training run
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedConversion:
    """One file to convert: ``source`` → ``target``, with the epoch/step its folder names."""

    source: Path
    target: Path
    epoch: int | None
    step: int | None
    label: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "lora"


def _run_path(run: str) -> PurePosixPath:
    """A run key without the `` (diffusers)`` that :func:`..checkpoints.scan_loras` adds when a Kohya run has the same name."""
    return PurePosixPath(re.sub(r" \((?:diffusers|peft|unknown)\)$", "", run))


def kohya_file_name(run_name: str, epoch: int | None, step: int | None, final: bool, title: str | None) -> str:
    """sd-scripts' names: ``run-000010`` per epoch, ``run-step00000500`` per step, ``run`` for the final file;
    a folder named neither (``high_lr``) keeps its name."""
    run_name = _slug(run_name)
    if title:
        return f"{_slug(title)}{LORA_SUFFIX}"
    if final:
        return f"{run_name}{LORA_SUFFIX}"
    if epoch is not None:
        return f"{run_name}-{epoch:06d}{LORA_SUFFIX}"
    if step is not None:
        return f"{run_name}-step{step:08d}{LORA_SUFFIX}"
    return f"{run_name}{LORA_SUFFIX}"


def default_output(source: Path) -> Path:
    """Where ``likeness convert SOURCE`` writes without ``--out``: a ``-kohya`` folder beside the folder that holds
    the run, so converting a folder or its files one by one gives the same names:
    ``output/`` → ``output-kohya/``; ``output/exp_e10/pytorch_lora_weights.safetensors`` →
    ``output-kohya/exp-000010.safetensors``; ``loras/my.safetensors`` → ``loras-kohya/my.safetensors``."""
    from ..checkpoints import is_folder_lora

    source = Path(source)
    if source.is_dir():
        scanned = source
    elif is_folder_lora(source) and source.parent != source.parent.parent:
        scanned = source.parent.parent
    else:
        scanned = source.parent
    scanned = scanned.resolve()
    return scanned.parent / f"{scanned.name or 'lora'}-kohya"


def plan_conversions(source: Path, out: Path | None = None) -> tuple[list[PlannedConversion], list[str]]:
    """The files ``likeness convert SOURCE --out OUT`` writes, and notes on what it skips.

    A folder: every diffusers/PEFT checkpoint under it, each run to ``OUT/<run folder>/<run name>-<epoch:06d>.safetensors``
    (Kohya files already there are skipped). A file: ``OUT`` is the target file, or a folder for it.

    Raises:
        ConversionError: nothing to convert, or two sources would get the same target name.
    """
    from ..checkpoints import list_runs, sweep_checkpoints

    source = Path(source)
    out = Path(out) if out is not None else default_output(source)
    notes: list[str] = []
    plans: list[PlannedConversion] = []
    if source.is_file():
        try:
            item = sweep_checkpoints(source, base=None)[0]
        except ValueError as exc:
            raise ConversionError(str(exc)) from exc
        run_name = _run_path(item.run).name
        if out.suffix.lower() == LORA_SUFFIX:
            target = out
        else:
            target = out / kohya_file_name(run_name, item.epoch, item.step, item.final, item.title)
        plans.append(PlannedConversion(source, target, item.epoch, item.step, item.label))
    elif source.is_dir():
        if out.suffix.lower() == LORA_SUFFIX:
            raise ConversionError(f"--out {out}: SOURCE is a folder, so --out must be a folder too")
        for run, items in list_runs(source).items():
            run_path = _run_path(run)
            for item in items:
                if item.format == "kohya":
                    notes.append(f"{item.name}: already a Kohya LoRA, skipped")
                    continue
                if item.format == "unknown":
                    notes.append(f"{item.name}: not a LoRA file this converter knows, skipped")
                    continue
                name = kohya_file_name(run_path.name, item.epoch, item.step, item.final, item.title)
                folder = out / run_path.parent if str(run_path.parent) != "." else out
                plans.append(PlannedConversion(item.path, folder / name, item.epoch, item.step, item.label))
    else:
        raise ConversionError(f"{source} does not exist")
    if not plans:
        raise ConversionError(f"nothing to convert in {source}: no diffusers/PEFT LoRA (.safetensors) found"
                              + (f" ({'; '.join(notes)})" if notes else ""))
    seen: dict[Path, Path] = {}
    for plan in plans:
        if plan.target in seen:
            raise ConversionError(f"{seen[plan.target]} and {plan.source} would both be written as {plan.target}; "
                                  "convert them one at a time with --out FILE")
        seen[plan.target] = plan.source
    return plans, notes


def convert_path(source: Path, out: Path | None = None, alpha: float | None = None, overwrite: bool = False) -> tuple[list[Path], list[str]]:
    """``likeness convert``: convert a file, or every checkpoint of every run in a folder (see :func:`plan_conversions`).

    Every target is checked before anything is written, so a refusal leaves nothing half done.
    Returns the written files and notes.
    """
    plans, notes = plan_conversions(source, out)
    sources = {p.source.resolve() for p in plans}
    for plan in plans:
        if plan.target.resolve() in sources:
            raise ConversionError(f"{plan.target} is one of the source files: choose another --out (sources are never overwritten)")
        if plan.target.exists() and not overwrite:
            raise ConversionError(f"{plan.target} already exists: pass --force to replace it, or choose another --out")
    written = [convert_to_kohya(p.source, p.target, alpha=alpha, overwrite=overwrite, epoch=p.epoch, step=p.step) for p in plans]
    return written, notes
