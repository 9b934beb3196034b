"""The LoRA checkpoints of training runs in a ``loras`` folder, in epoch order.

sd-scripts saves one file per epoch, ``name-000001.safetensors`` … , and the final one as
``name.safetensors`` (``ss_epoch`` in its metadata says which epoch it is); saving by steps gives
``name-step00000500.safetensors``. A *run* is the set of files sharing one ``name`` in one folder.

Everything here reads safetensors headers only: no tensor is loaded, nothing is unpickled.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .images import natural_key
from .labels import LoraUse, parse_kohya_name, read_safetensors_metadata

LORA_SUFFIX = ".safetensors"
TRAINING_STATE_SUFFIX = "-state.safetensors"

#: Human names of the architectures :func:`lora_architecture` returns.
ARCHITECTURE_NAMES = {
    "sd1": "SD1.x",
    "sd2": "SD2.x",
    "sdxl": "SDXL",
    "sd3": "SD3",
    "flux": "Flux",
    "unknown": "unknown",
}

# Context width of the UNet's cross-attention = the text encoder's hidden size.
_CONTEXT_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class LoraCheckpoint:
    """One LoRA file of a training run.

    Attributes:
        path: the file.
        name: path relative to the scanned loras folder, posix, with suffix (ComfyUI's ``lora_name``).
        run: run key, the relative folder plus the Kohya run name (``people/jx265``; ``jx265`` at top level).
        epoch: ``ss_epoch`` metadata, else the ``-NNNNNN`` suffix; ``None`` when unknown.
        step: from a ``-stepNNNNNNNN`` suffix.
        final: the run's file without an epoch or step suffix.
    """

    path: Path
    name: str
    run: str
    epoch: int | None
    step: int | None
    final: bool

    @property
    def stem(self) -> str:
        """The file's stem: what A1111's ``<lora:stem:weight>`` names."""
        return PurePosixPath(self.name).stem

    @property
    def run_name(self) -> str:
        return PurePosixPath(self.run).name

    @property
    def label(self) -> str:
        """Short label for a grid axis: ``e10``, ``final``, ``final (e20)``, ``step 500``."""
        if self.final:
            return f"final (e{self.epoch})" if self.epoch is not None else "final"
        if self.epoch is not None:
            return f"e{self.epoch}"
        if self.step is not None:
            return f"step {self.step}"
        return self.stem

    def use(self, strength: float = 1.0) -> LoraUse:
        """This checkpoint applied at ``strength``, for grouping and ordering with :mod:`labels`."""
        return LoraUse(name=self.stem, strength=float(strength), run=self.run_name, epoch=self.epoch, step=self.step)

    def sort_key(self) -> tuple:
        # Final last; among the rest by epoch, then step, then name.
        progress = self.epoch if self.epoch is not None else (self.step if self.step is not None else float("inf"))
        return (self.final, progress, natural_key(self.stem))


def _checkpoint(path: Path, root: Path) -> LoraCheckpoint:
    relative = path.relative_to(root).as_posix()
    run_name, epoch, step = parse_kohya_name(path.name)
    final = epoch is None and step is None
    try:
        value = read_safetensors_metadata(path).get("ss_epoch")
    except (OSError, ValueError):
        value = None
    if value is not None and str(value).strip().isdigit():
        epoch = int(value)
    folder = PurePosixPath(relative).parent
    run = run_name if str(folder) == "." else f"{folder.as_posix()}/{run_name}"
    return LoraCheckpoint(path=path, name=relative, run=run, epoch=epoch, step=step, final=final)


def scan_loras(root: Path) -> list[LoraCheckpoint]:
    """Every ``*.safetensors`` under ``root`` (recursively), in natural name order."""
    root = Path(root)
    if not root.is_dir():
        return []
    files = [
        p
        for p in root.rglob(f"*{LORA_SUFFIX}")
        if p.is_file()
        and not p.name.endswith(TRAINING_STATE_SUFFIX)  # the trainer's resumable state, not a LoRA
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    files.sort(key=lambda p: natural_key(p.relative_to(root).as_posix()))
    return [_checkpoint(p, root) for p in files]


def list_runs(root: Path) -> dict[str, list[LoraCheckpoint]]:
    """Run key -> its checkpoints in epoch order (final last), runs in natural order."""
    runs: dict[str, list[LoraCheckpoint]] = {}
    for checkpoint in scan_loras(root):
        runs.setdefault(checkpoint.run, []).append(checkpoint)
    return {run: sorted(runs[run], key=LoraCheckpoint.sort_key) for run in sorted(runs, key=natural_key)}


def run_checkpoints(
    root: Path,
    run: str,
    first_epoch: int | None = None,
    last_epoch: int | None = None,
    include_final: bool = True,
) -> list[LoraCheckpoint]:
    """The checkpoints of one run, in epoch order, optionally limited to an epoch range.

    ``run`` is a run key from :func:`list_runs`, or any file name of the run (``jx265-000003``,
    ``jx265.safetensors``). The range is inclusive and applies to every file with a known epoch,
    the final one included; ``include_final=False`` drops the final file.

    Raises:
        ValueError: no such run (the message lists the runs found).
    """
    runs = list_runs(root)
    key = run.strip().replace("\\", "/")
    if key not in runs:
        stem = PurePosixPath(key).name.removesuffix(LORA_SUFFIX)
        folder = PurePosixPath(key).parent
        prefix = "" if str(folder) == "." else f"{folder.as_posix()}/"
        key = prefix + parse_kohya_name(stem)[0]
    if key not in runs:
        found = ", ".join(runs) or "none"
        raise ValueError(f"no LoRA training run named {run!r} in {root} (runs found: {found})")
    selected = []
    for checkpoint in runs[key]:
        if checkpoint.final and not include_final:
            continue
        if checkpoint.epoch is not None:
            if first_epoch is not None and checkpoint.epoch < first_epoch:
                continue
            if last_epoch is not None and checkpoint.epoch > last_epoch:
                continue
        selected.append(checkpoint)
    return selected


# --------------------------------------------------------------------------------------------
# Architecture, from the header alone
# --------------------------------------------------------------------------------------------


class ArchitectureMismatch(ValueError):
    """A LoRA trained for another base architecture than the model it is applied to."""


def _read_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length <= 0 or length > 100 * 1024 * 1024:
            raise ValueError(f"{path}: not a safetensors file")
        header = json.loads(handle.read(length).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file")
    return header


def _from_metadata(metadata: dict) -> str | None:
    version = str(metadata.get("ss_base_model_version", "")).lower()
    spec = str(metadata.get("modelspec.architecture", "")).lower()
    for text in (version, spec):
        if not text:
            continue
        if "flux" in text:
            return "flux"
        if "sd3" in text or "stable-diffusion-3" in text:
            return "sd3"
        if "xl" in text:
            return "sdxl"
        if "v2" in text or "sd_2" in text or "stable-diffusion-v2" in text:
            return "sd2"
        if "v1" in text or "stable-diffusion-v1" in text:
            return "sd1"
    if str(metadata.get("ss_v2", "")).lower() == "true":
        return "sd2"
    return None


def _from_keys(header: dict) -> str:
    keys = [k for k in header if k != "__metadata__"]
    joined = "\n".join(keys)
    if "double_blocks" in joined or "single_blocks" in joined or "single_transformer_blocks" in joined:
        return "flux"
    if "joint_blocks" in joined or "context_block" in joined:
        return "sd3"
    if "lora_te1_" in joined or "lora_te2_" in joined or "text_encoder_2" in joined or "input_blocks" in joined:
        return "sdxl"
    # Cross-attention key/value projections read the text encoder's output: their input width tells SD1 from SD2 from SDXL.
    for key in keys:
        if ("attn2_to_k" in key or "attn2.to_k" in key) and ("lora_down" in key or "lora_A" in key or "lora.down" in key):
            shape = header[key].get("shape") if isinstance(header[key], dict) else None
            if shape and len(shape) >= 2:
                return _CONTEXT_DIM.get(int(shape[1]), "unknown")
    if "lora_te_" in joined or "lora_unet_" in joined or "down_blocks" in joined:
        return "sd1"
    return "unknown"


def lora_architecture(path: Path) -> str:
    """The base architecture a LoRA file was trained for: ``sd1``, ``sd2``, ``sdxl``, ``sd3``, ``flux`` or ``unknown``.

    Metadata (``ss_base_model_version``, ``modelspec.architecture``, ``ss_v2``) wins; otherwise key
    names, and for UNet LoRAs the width of the cross-attention inputs (768 SD1, 1024 SD2, 2048 SDXL).

    Raises:
        ValueError: not a safetensors file.
    """
    header = _read_header(Path(path))
    metadata = header.get("__metadata__") if isinstance(header.get("__metadata__"), dict) else {}
    shapes = _from_keys(header)
    declared = _from_metadata(metadata)
    # Some trainers write "sd_v1" for everything; trust shapes that clearly say SD2/SDXL.
    if declared == "sd1" and shapes in ("sd2", "sdxl"):
        return shapes
    return declared or shapes


def check_architecture(path: Path, base: str) -> None:
    """Raise :class:`ArchitectureMismatch` when ``path`` was trained for another architecture than ``base``.

    ``base`` is one of :data:`ARCHITECTURE_NAMES`' keys; ``unknown`` on either side passes (the host
    then reports unmatched keys itself).
    """
    found = lora_architecture(path)
    if base == "unknown" or found == "unknown" or found == base:
        return
    raise ArchitectureMismatch(
        f"{Path(path).name} is a {ARCHITECTURE_NAMES.get(found, found)} LoRA but the loaded model is "
        f"{ARCHITECTURE_NAMES.get(base, base)}: load a {ARCHITECTURE_NAMES.get(found, found)} checkpoint, or pick "
        f"LoRAs trained on {ARCHITECTURE_NAMES.get(base, base)}"
    )
