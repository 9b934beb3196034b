"""Which group an image belongs to: its folder, or the LoRA recorded in its own metadata.

Generated images carry their recipe: A1111 writes a ``parameters`` PNG text chunk (or an EXIF
UserComment in JPEG/WebP) whose prompt holds ``<lora:name-000010:0.8>``; ComfyUI writes its API
graph as a ``prompt`` PNG text chunk, with ``LoraLoader`` nodes naming ``lora_name`` and
``strength_model``. Kohya's sd-scripts name epoch checkpoints ``name-000010.safetensors`` and the
final one ``name.safetensors``, and store ``ss_epoch`` in the safetensors metadata.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable

from PIL import Image

from .images import natural_key, relative_name
from .trainer_outputs import parse_checkpoint_stem, progress_from_metadata, sample_label, seed_from_metadata

NO_LORA = "no LoRA"

_A1111_LORA = re.compile(r"<(?:lora|lyco):([^:>]+)((?::[^:>]*)*)>", re.IGNORECASE)
_LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


@dataclass(frozen=True)
class LoraUse:
    """One LoRA applied to an image.

    Attributes:
        name: the LoRA file's stem (``jx265-000010``).
        strength: UNet multiplier (A1111's first number, ComfyUI's ``strength_model``).
        run: training-run name (``jx265``).
        epoch: epoch from the Kohya suffix; ``None`` for the final file or an unknown scheme.
        step: step from a ``-stepNNNNNNNN`` suffix, when saved by steps.
    """

    name: str
    strength: float = 1.0
    run: str = ""
    epoch: int | None = None
    step: int | None = None

    @property
    def label(self) -> str:
        if self.epoch is not None:
            checkpoint = f"e{self.epoch}"
        elif self.step is not None:
            checkpoint = f"step {self.step}"
        else:
            checkpoint = "final"
        return f"{self.run} {checkpoint} @{self.strength:g}"


def lora_stem(name: str) -> str:
    """``subdir\\jx265-000010.safetensors`` -> ``jx265-000010``."""
    text = name.strip()
    base = PureWindowsPath(text).name if "\\" in text else PurePosixPath(text).name
    lower = base.lower()
    for suffix in _LORA_SUFFIXES:
        if lower.endswith(suffix):
            return base[: -len(suffix)]
    return base


def parse_kohya_name(name: str) -> tuple[str, int | None, int | None]:
    """Split a checkpoint name into ``(run, epoch, step)`` (every trainer's layout: :mod:`.trainer_outputs`).

    ``jx265-000010`` -> ``("jx265", 10, None)``; ``jx265-step00001000`` -> ``("jx265", None, 1000)``;
    ``jx265_000000250`` (ai-toolkit) -> ``("jx265", None, 250)``; ``jx265`` (the final file) -> ``("jx265", None, None)``.
    """
    parsed = parse_checkpoint_stem(lora_stem(name))
    return parsed.run, parsed.epoch, parsed.step


def make_lora_use(name: str, strength: float = 1.0) -> LoraUse:
    stem = lora_stem(name)
    run, epoch, step = parse_kohya_name(stem)
    return LoraUse(name=stem, strength=float(strength), run=run, epoch=epoch, step=step)


def parse_a1111_loras(parameters: str) -> list[LoraUse]:
    """LoRAs named in A1111 infotext / prompt text: ``<lora:name>``, ``<lora:name:0.8>``,
    ``<lora:name:0.8:0.5>`` (te, unet) and ``<lora:name:unet=0.7:te=1>``; strength 0 means unused."""
    uses: list[LoraUse] = []
    prompt = parameters.split("\nNegative prompt:", 1)[0]
    for name, arguments in _A1111_LORA.findall(prompt):
        values = [a for a in arguments.split(":") if a != ""]
        strength = 1.0
        positional = [v for v in values if "=" not in v]
        named = dict(v.split("=", 1) for v in values if "=" in v)
        try:
            if "unet" in named:
                strength = float(named["unet"])
            elif positional:
                strength = float(positional[-1] if len(positional) >= 2 else positional[0])
            elif "te" in named:
                strength = float(named["te"])
        except ValueError:
            continue
        if strength != 0:
            uses.append(make_lora_use(name, strength))
    return uses


def parse_comfy_prompt(prompt: str | dict) -> list[LoraUse]:
    """LoRAs loaded by a ComfyUI API graph (the ``prompt`` PNG text chunk): any node with a
    ``lora_name`` input and a model strength (``strength_model`` / ``strength`` / ``lora_strength``)."""
    try:
        graph = json.loads(prompt) if isinstance(prompt, str) else prompt
    except json.JSONDecodeError:
        return []
    if not isinstance(graph, dict):
        return []
    uses: list[LoraUse] = []
    for node_id in sorted(graph, key=natural_key):
        node = graph[node_id]
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict) or not isinstance(inputs.get("lora_name"), str):
            continue
        strength = next(
            (inputs[k] for k in ("strength_model", "strength", "lora_strength", "model_strength") if k in inputs), 1.0
        )
        if not isinstance(strength, (int, float)):
            strength = 1.0  # linked from another node: not knowable from the file
        if strength != 0 and inputs["lora_name"] not in ("None", ""):
            uses.append(make_lora_use(inputs["lora_name"], float(strength)))
    return uses


def read_generation_text(path: Path) -> dict[str, str]:
    """Text metadata hosts embed in an image: PNG text chunks and the EXIF UserComment that A1111
    writes into JPEG/WebP (as ``parameters``). Returns ``{}`` for unreadable files."""
    try:
        with Image.open(path) as image:
            texts = {k: v for k, v in image.info.items() if isinstance(v, str)}
            if "parameters" not in texts:
                comment = _exif_user_comment(image)
                if comment:
                    texts["parameters"] = comment
    except Exception:  # metadata is optional; an unreadable file is reported by the decoder
        return {}
    return texts


def _exif_user_comment(image: Image.Image) -> str | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(0x8769).get(0x9286) if hasattr(exif, "get_ifd") else None
    except Exception:
        return None
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    data = bytes(raw)
    prefix, body = data[:8], data[8:]
    if prefix.startswith(b"UNICODE"):
        # piexif (A1111) writes UTF-16 big-endian; some tools write little-endian. The right one
        # is the decoding that reads as mostly ASCII (prompts are).
        decoded = [body.decode(encoding, errors="replace") for encoding in ("utf-16-be", "utf-16-le")]
        return max(decoded, key=lambda text: sum(ch < "\x80" for ch in text))
    return body.decode("utf-8", errors="replace") if prefix.startswith(b"ASCII") else data.decode("utf-8", errors="replace")


def loras_from_metadata(texts: dict[str, str]) -> list[LoraUse]:
    """LoRAs from host metadata, preferring ComfyUI's graph (exact) over prompt text."""
    if "prompt" in texts:
        uses = parse_comfy_prompt(texts["prompt"])
        if uses:
            return uses
    if "parameters" in texts:
        return parse_a1111_loras(texts["parameters"])
    return []


_PROMPT_KEYS = ("text", "text_g", "text_l", "prompt")


def a1111_prompt(parameters: str) -> str:
    """The positive prompt of A1111 infotext (what Likeness sweeps also write): the text before
    ``Negative prompt:`` or, without one, before the ``Steps:`` line."""
    prompt = parameters.split("\nNegative prompt:", 1)[0]
    lines = prompt.split("\n")
    if len(lines) > 1 and lines[-1].startswith("Steps:"):
        lines = lines[:-1]
    return "\n".join(lines).strip()


def comfy_prompt_text(prompt: str | dict) -> str | None:
    """The positive prompt text of a ComfyUI API graph: the text nodes a sampler's ``positive``
    input links to, else every text-encoder node's text; ``None`` when there is none."""
    try:
        graph = json.loads(prompt) if isinstance(prompt, str) else prompt
    except json.JSONDecodeError:
        return None
    if not isinstance(graph, dict):
        return None

    def texts_of(node_id: str, seen: set[str]) -> list[str]:
        # Follows links upstream (conditioning combiners, concat nodes) to the text that made them.
        node = graph.get(str(node_id))
        if node_id in seen or not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            return []
        seen.add(node_id)
        found = [v for k, v in node["inputs"].items() if k in _PROMPT_KEYS and isinstance(v, str)]
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)):
                found += texts_of(str(value[0]), seen)
        return found

    positive: list[str] = []
    for node_id in sorted(graph, key=natural_key):
        node = graph[node_id]
        link = node.get("inputs", {}).get("positive") if isinstance(node, dict) and isinstance(node.get("inputs"), dict) else None
        if isinstance(link, list) and link:
            positive += texts_of(str(link[0]), set())
    if not positive:
        positive = [v for node in graph.values() if isinstance(node, dict) and "CLIPTextEncode" in str(node.get("class_type", ""))
                    for k, v in (node.get("inputs") or {}).items() if k in _PROMPT_KEYS and isinstance(v, str)]
    return "\n".join(dict.fromkeys(positive)) if positive else None


def prompt_from_metadata(texts: dict[str, str]) -> str | None:
    """The positive prompt an image carries (ComfyUI graph, else A1111 / Likeness sweep infotext);
    ``None`` when it carries none."""
    if "prompt" in texts:
        text = comfy_prompt_text(texts["prompt"])
        if text is not None:
            return text
    if "parameters" in texts:
        return a1111_prompt(texts["parameters"])
    return None


def lora_group(uses: Iterable[LoraUse]) -> tuple[str, dict]:
    """Group label and sortable fields for the LoRAs of one image."""
    uses = list(uses)
    if not uses:
        return NO_LORA, {"run": None, "epoch": None, "strength": None}
    label = " + ".join(use.label for use in uses)
    first = uses[0]
    return label, {"run": first.run, "epoch": first.epoch, "step": first.step, "strength": first.strength}


def step_group(path: Path, root: Path, epoch_steps: dict[int, int] | None = None) -> tuple[str, dict]:
    """Group label and sort fields of a trainer's sample image: ``("step 500", {"step": 500, "epoch": 2})``
    (see :func:`~.trainer_outputs.sample_label`; the seed comes from the image's metadata when its name has none).

    ``epoch_steps`` (epoch -> the step it ended at, from the run's checkpoints: ``ss_epoch``/``ss_steps``) puts
    sd-scripts' end-of-epoch samples (``NAME_e000003_…``), which name no step, on the step axis."""
    found = step_label(path, root)
    step = found.step
    if step is None and found.epoch is not None and epoch_steps:
        step = epoch_steps.get(found.epoch)
    info = {"step": step, "epoch": found.epoch}
    return (found.label if step == found.step else f"step {step}"), info


def step_label(path: Path, root: Path):
    """The :class:`~.trainer_outputs.SampleLabel` of a sample image under ``root``."""
    relative = relative_name(Path(path), root)
    parsed = sample_label(relative)
    if parsed.seed is None:  # only then is the metadata worth reading
        try:
            info = os.stat(path)
            seed = _metadata_seed(str(path), info.st_size, info.st_mtime_ns)
        except OSError:
            seed = None
        if seed is not None:
            parsed = sample_label(relative, {"parameters": f"Seed: {seed}"})
    return parsed


@functools.lru_cache(maxsize=4096)
def _metadata_seed(path: str, size: int, mtime_ns: int) -> int | None:
    """The seed in an image's metadata, read once per file version (``likeness watch`` labels every sample each round)."""
    return seed_from_metadata(read_generation_text(Path(path)))


def folder_group(path: Path, root: Path) -> str:
    """The image's folder relative to ``root`` (``exp_e10``), or the root's own name.

    Links are not followed: a symlinked image belongs to the folder the link is in.
    """
    relative = Path(relative_name(Path(path).parent, root))
    return relative.as_posix() if relative.parts and relative.as_posix() != "." else Path(root).resolve().name


def group_sort_key(label: str, info: dict) -> tuple:
    """Order groups by run, then epoch (final last), then strength; others naturally by label."""
    if info.get("run") is None and label == NO_LORA:
        return (0, ())
    if info.get("run") is None and ("step" in info or "epoch" in info):
        # A trainer's sample rounds (``--group-by step``): by step; end-of-epoch samples without a step by
        # epoch after them; see :class:`~.trainer_outputs.SampleLabel`.
        step, epoch = info.get("step"), info.get("epoch")
        progress = (0, step, epoch or 0) if step is not None else ((1, epoch, 0) if epoch is not None else (2, 0, 0))
        return (1, (), progress, 0.0, natural_key(label))
    if info.get("run") is not None:
        epoch = info.get("epoch")
        step = info.get("step")
        progress = epoch if epoch is not None else (step if step is not None else float("inf"))
        return (1, natural_key(str(info["run"])), progress, info.get("strength") or 0.0, natural_key(label))
    return (2, natural_key(label))


# --------------------------------------------------------------------------------------------
# safetensors metadata (read from the header; no tensor is loaded, nothing is unpickled)
# --------------------------------------------------------------------------------------------

_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` string map of a ``.safetensors`` file (``{}`` when absent).

    Raises:
        ValueError: the file is not a valid safetensors file.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length <= 0 or length > _MAX_HEADER:
            raise ValueError(f"{path}: not a safetensors file (header length {length})")
        header = json.loads(handle.read(length).decode("utf-8"))
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def checkpoint_epoch(path: Path) -> int | None:
    """A LoRA file's epoch: ``ss_epoch`` metadata when present, else its Kohya name suffix."""
    try:
        value = read_safetensors_metadata(path).get("ss_epoch")
        if value is not None and str(value).strip().isdigit():
            return int(value)
    except (OSError, ValueError):
        pass
    return parse_kohya_name(Path(path).name)[1]


def checkpoint_step(path: Path) -> int | None:
    """A LoRA file's training step: from its name (``-step00000500``, ai-toolkit's ``_000000500``, OneTrainer's
    ``-save-500-…``), else its metadata (``ss_steps``, ai-toolkit's ``training_info``); ``None`` when unknown."""
    step = parse_kohya_name(Path(path).name)[2]
    if step is not None:
        return step
    try:
        return progress_from_metadata(read_safetensors_metadata(path))[1]
    except (OSError, ValueError):
        return None
