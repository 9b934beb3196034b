"""The LoRA checkpoints of training runs in a ``loras`` folder, in epoch order.

Two layouts are understood:

* Kohya (sd-scripts, ``likeness train``): one file per epoch, ``name-000001.safetensors`` … , and the
  final one as ``name.safetensors`` (``ss_epoch`` in its metadata says which epoch it is); saving by
  steps gives ``name-step00000500.safetensors``. A *run* is the set of files sharing one ``name`` in one
  folder.
* diffusers / PEFT: one folder per checkpoint holding a file with a fixed name
  (``pytorch_lora_weights.safetensors`` from diffusers' training scripts, ``adapter_model.safetensors``
  from PEFT), e.g. ``output/exp_e10/…`` … ``output/exp_e50/…`` or ``output/checkpoint-500/…`` beside the
  final ``output/pytorch_lora_weights.safetensors``. The folder name gives the label: an epoch
  (``exp_e10``, ``epoch_10``, ``epoch-10``, ``e10``), else a step (``checkpoint-500``), else the name
  itself. Sibling folders under one parent form one run: ``<parent>/<name prefix>`` (``output/exp``), or
  the parent alone when the names have no prefix (``checkpoint-500`` → run ``output``).

:attr:`LoraCheckpoint.format` tells the key layout apart (``kohya``, ``diffusers``, ``peft``): the sweep
loads all three; A1111 loads only Kohya files (``likeness convert`` writes one).

Everything here reads safetensors headers only: no tensor is loaded, nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .families.base import ARCHITECTURE_NAMES  # human names of what lora_architecture returns
from .images import natural_key
from .labels import LoraUse, parse_kohya_name
from .trainer_outputs import progress_from_metadata

LORA_SUFFIX = ".safetensors"
TRAINING_STATE_SUFFIX = "-state.safetensors"

#: File names diffusers' training scripts (``save_lora_weights``) and PEFT (``save_pretrained``) give
#: every checkpoint: the folder around the file is what names it.
FOLDER_LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")

#: LoRA files in Python's pickle format (old Kohya/A1111 ``.ckpt``/``.pt``/``.pth``, diffusers/PEFT ``.bin``).
#: They are never loaded: unpickling a file can run any code it holds. A sweep names them instead.
PICKLE_LORA_SUFFIXES = (".ckpt", ".pt", ".pth")
PICKLE_FOLDER_LORA_FILES = ("pytorch_lora_weights.bin", "adapter_model.bin")

#: Key layouts :func:`lora_format` tells apart.
FORMATS = ("kohya", "diffusers", "peft", "unknown")

# ``exp_e10``, ``epoch_10``, ``epoch-10``, ``e10``, ``run-ep5``: the epoch marker starts the name or follows a separator.
_EPOCH_FOLDER = re.compile(r"^(?:(?P<prefix>.*?)[_\-. ])?(?:epoch|ep|e)[_\-]?(?P<number>\d+)$", re.IGNORECASE)
# ``checkpoint-500`` (diffusers / accelerate, transformers' Trainer), ``step_500``, ``exp_step500``.
_STEP_FOLDER = re.compile(r"^(?:(?P<prefix>.*?)[_\-. ])?(?:checkpoint|ckpt|steps?)[_\-]?(?P<number>\d+)$", re.IGNORECASE)


# Context width of the UNet's cross-attention = the text encoder's hidden size.
_CONTEXT_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class LoraCheckpoint:
    """One LoRA file of a training run.

    Attributes:
        path: the file.
        name: path relative to the scanned loras folder, posix, with suffix (ComfyUI's ``lora_name``).
        run: run key, the relative folder plus the Kohya run name (``people/jx265``; ``jx265`` at top level).
        epoch: ``ss_epoch`` metadata, else the ``-NNNNNN`` suffix (Kohya) or the folder name (diffusers/PEFT:
            ``exp_e10``); ``None`` when unknown.
        step: from a ``-stepNNNNNNNN`` suffix, or a ``checkpoint-500`` folder.
        final: the run's file without an epoch or step suffix (diffusers/PEFT: the file in the run folder itself,
            beside its ``checkpoint-N`` folders).
        format: key layout of the file: ``kohya``, ``diffusers``, ``peft`` or ``unknown`` (unreadable or no
            LoRA keys); see :func:`lora_format`.
        title: label override: the folder name of a diffusers/PEFT checkpoint whose folder names no epoch or
            step, or a name that keeps two labels of one run apart.
        by_step: the run saves by step (its name or folder says the step: ``-step00000500``, ai-toolkit's
            ``_000000500``, OneTrainer's ``-save-500-…``, ``checkpoint-500``): labelled and ordered by step even
            when the metadata also records an epoch.
    """

    path: Path
    name: str
    run: str
    epoch: int | None
    step: int | None
    final: bool
    format: str = "kohya"
    title: str | None = None
    by_step: bool = False

    @property
    def stem(self) -> str:
        """The file's stem: what A1111's ``<lora:stem:weight>`` names."""
        return PurePosixPath(self.name).stem

    @property
    def run_name(self) -> str:
        return PurePosixPath(self.run).name

    @property
    def label(self) -> str:
        """Short label for a grid axis: ``e10``, ``final``, ``final (e20)``, ``step 500``, or the folder name."""
        if self.title:
            return self.title
        if self.final:
            return f"final (e{self.epoch})" if self.epoch is not None else "final"
        if self.by_step and self.step is not None:
            return f"step {self.step}"
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
        if self.by_step and self.step is not None:
            progress = self.step
        else:
            progress = self.epoch if self.epoch is not None else (self.step if self.step is not None else float("inf"))
        return (self.final, progress, natural_key(self.title or self.stem))


def is_folder_lora(path: Path | str) -> bool:
    """A diffusers/PEFT checkpoint file whose fixed name says nothing: its folder names it."""
    return PurePosixPath(str(path).replace("\\", "/")).name.lower() in FOLDER_LORA_FILES


def lora_format(header: dict) -> str:
    """Key layout of a LoRA from its safetensors header: ``kohya``, ``diffusers``, ``peft`` or ``unknown``.

    * ``kohya``: ``lora_unet_…`` / ``lora_te_…`` (``lora_te1_``/``lora_te2_`` for SDXL) module keys;
    * ``diffusers``: ``unet.…`` / ``text_encoder.…`` prefixed keys with ``lora_A``/``lora_B`` (PEFT names),
      ``lora.down``/``lora.up`` or ``lora_linear_layer.down``/``.up`` (older diffusers spellings);
    * ``peft``: PEFT's ``save_pretrained`` keys, ``base_model.model.…lora_A.weight``, or bare module paths
      with ``lora_A``/``lora_B``.
    """
    keys = [k for k in header if k != "__metadata__"]
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    lora_keys = [k for k in keys if re.search(r"(^|\.)(lora_[AB]|lora\.(down|up)|lora_linear_layer\.(down|up)|\w+_lora\.(down|up))(\.|$)", k)]
    if not lora_keys:
        return "unknown"
    if any(k.startswith("base_model.model.") for k in lora_keys):
        return "peft"
    if any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.", "transformer.")) for k in lora_keys):
        return "diffusers"
    return "peft"


def _folder_label(name: str) -> tuple[str, int | None, int | None]:
    """``exp_e10`` -> ``("exp", 10, None)``; ``checkpoint-500`` -> ``("", None, 500)``; ``alice`` -> ``("", None, None)``."""
    match = _EPOCH_FOLDER.match(name)
    if match:
        return (match["prefix"] or "").strip("_-. "), int(match["number"]), None
    match = _STEP_FOLDER.match(name)
    if match:
        return (match["prefix"] or "").strip("_-. "), None, int(match["number"])
    return "", None, None


def _read_facts(path: Path) -> tuple[int | None, str, int | None]:
    """``(ss_epoch, format, step)`` from the file's header (the step from ``ss_steps`` or ai-toolkit's
    ``training_info``, see :func:`~.trainer_outputs.progress_from_metadata`); ``(None, "unknown", None)``
    when it cannot be read."""
    try:
        header = _read_header(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None, "unknown", None
    metadata = header.get("__metadata__") if isinstance(header.get("__metadata__"), dict) else {}
    value = metadata.get("ss_epoch")
    epoch = int(value) if value is not None and str(value).strip().isdigit() else None
    return epoch, lora_format(header), progress_from_metadata(metadata)[1]


def _checkpoint(path: Path, root: Path) -> LoraCheckpoint:
    relative = path.relative_to(root).as_posix()
    run_name, epoch, step = parse_kohya_name(path.name)
    final = epoch is None and step is None
    by_step = step is not None
    ss_epoch, layout, saved_step = _read_facts(path)
    if ss_epoch is not None:
        epoch = ss_epoch
    if step is None:
        step = saved_step
    folder = PurePosixPath(relative).parent
    run = run_name if str(folder) == "." else f"{folder.as_posix()}/{run_name}"
    return LoraCheckpoint(path=path, name=relative, run=run, epoch=epoch, step=step, final=final, format=layout,
                          by_step=by_step)


def _join(parent: str, name: str) -> str:
    return name if parent in (".", "") else f"{parent}/{name}"


def _folder_checkpoints(paths: list[Path], root: Path) -> list[LoraCheckpoint]:
    """diffusers/PEFT checkpoints labelled and grouped by their folders (see the module docstring)."""
    root_name = Path(root).resolve().name or "lora"
    found = []
    for path in paths:
        relative = path.relative_to(root).as_posix()
        folder = PurePosixPath(relative).parent
        ss_epoch, layout, saved_step = _read_facts(path)
        if str(folder) == ".":  # the file in the scanned folder itself: that folder's final checkpoint
            found.append(LoraCheckpoint(path, relative, root_name, ss_epoch, saved_step, True, layout))
            continue
        prefix, epoch, step = _folder_label(folder.name)
        parent = folder.parent.as_posix()
        run = _join(parent, prefix) if prefix else (root_name if parent == "." else parent)
        title = folder.name if epoch is None and step is None else None
        found.append(LoraCheckpoint(path, relative, run, ss_epoch if epoch is None else epoch,
                                    saved_step if step is None else step, False, layout, title, by_step=step is not None))
    # A file in a folder whose own checkpoint-N / eN sub-folders form a run is that run's final file.
    runs = {c.run for c in found}
    out = []
    for checkpoint in found:
        folder = PurePosixPath(checkpoint.name).parent.as_posix()
        if folder != "." and folder in runs and checkpoint.title is not None and checkpoint.run != folder:
            checkpoint = dataclasses.replace(checkpoint, run=folder, final=True, title=None)
        out.append(checkpoint)
    return out


def _lora_files(root: Path, max_depth: int | None = None) -> list[Path]:
    """LoRA files under ``root``; ``max_depth`` bounds how many folders down (0: ``root`` itself only), so that
    a look around a trainer's output folder never walks a whole disk."""
    if max_depth is None:
        found = [p for p in root.rglob(f"*{LORA_SUFFIX}") if p.is_file()]
    else:
        found = []
        for folder, subfolders, names in os.walk(root):
            depth = len(Path(folder).relative_to(root).parts)
            if depth >= max_depth:
                subfolders[:] = []
            found.extend(Path(folder) / n for n in names if n.endswith(LORA_SUFFIX) and (Path(folder) / n).is_file())
    files = [
        p
        for p in found
        if not p.name.endswith(TRAINING_STATE_SUFFIX)  # an earlier version's training state, not a LoRA
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    files.sort(key=lambda p: natural_key(p.relative_to(root).as_posix()))
    return files


def pickle_lora_files(root: Path) -> list[Path]:
    """LoRA-looking pickle files under ``root`` (see :data:`PICKLE_LORA_SUFFIXES`), in natural order;
    hidden folders and the optimizer/state files of a training state are not among them."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p for p in root.rglob("*")
        if p.is_file()
        and (p.suffix.lower() in PICKLE_LORA_SUFFIXES or p.name.lower() in PICKLE_FOLDER_LORA_FILES)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def no_lora_found_message(root: Path) -> str:
    """Why a folder gives no LoRA to sweep: nothing at all, or only pickle files (named, with what to do)."""
    root = Path(root)
    message = f"no LoRA (.safetensors) file found in {root}"
    pickles = pickle_lora_files(root)
    if not pickles:
        return message
    shown = ", ".join(p.relative_to(root).as_posix() for p in pickles[:3])
    more = f" and {len(pickles) - 3} more" if len(pickles) > 3 else ""
    return (f"{message}; it holds {len(pickles)} pickle file(s) ({shown}{more}), which are never loaded because "
            f"unpickling a file can run any code it holds. Convert them to .safetensors (where they were made, or, for files "
            f"you trust, with torch.load(path, weights_only=True) and safetensors.torch.save_file) and run again")


def scan_loras(root: Path, max_depth: int | None = None) -> list[LoraCheckpoint]:
    """Every ``*.safetensors`` under ``root`` (recursively; at most ``max_depth`` folders down when given), in
    natural name order.

    Kohya files are named by their file names; diffusers/PEFT files with a fixed name
    (:data:`FOLDER_LORA_FILES`) by their folders.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    files = _lora_files(root, max_depth)
    kohya = {p: _checkpoint(p, root) for p in files if not is_folder_lora(p)}
    taken = {c.run for c in kohya.values()}
    folders = {}
    for checkpoint in _folder_checkpoints([p for p in files if is_folder_lora(p)], root):
        if checkpoint.run in taken:  # output/exp-000010.safetensors beside output/exp_e10/: two runs, not one
            checkpoint = dataclasses.replace(checkpoint, run=f"{checkpoint.run} ({checkpoint.format})")
        folders[checkpoint.path] = checkpoint
    return [folders[p] if p in folders else kohya[p] for p in files]


def list_runs(root: Path, max_depth: int | None = None) -> dict[str, list[LoraCheckpoint]]:
    """Run key -> its checkpoints in epoch order (final last), runs in natural order (``max_depth``: see :func:`scan_loras`)."""
    runs: dict[str, list[LoraCheckpoint]] = {}
    for checkpoint in scan_loras(root, max_depth):
        runs.setdefault(checkpoint.run, []).append(checkpoint)
    return {run: sorted(runs[run], key=LoraCheckpoint.sort_key) for run in sorted(runs, key=natural_key)}


def _find_run(runs: dict[str, list[LoraCheckpoint]], run: str) -> str | None:
    """The run key ``run`` names: a key, the last part of exactly one key (``exp`` for ``output/exp``),
    or a Kohya file name of the run (``jx265-000003.safetensors``)."""
    key = run.strip().replace("\\", "/").rstrip("/")
    if key in runs:
        return key
    by_name = [k for k in runs if PurePosixPath(k).name == key]
    if len(by_name) == 1:
        return by_name[0]
    stem = PurePosixPath(key).name.removesuffix(LORA_SUFFIX)
    folder = PurePosixPath(key).parent
    prefix = "" if str(folder) == "." else f"{folder.as_posix()}/"
    key = prefix + parse_kohya_name(stem)[0]
    return key if key in runs else None


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
    the final one included; ``include_final=False`` drops the final file. A run saved by step
    (:func:`range_unit` is ``"step"``) has its range read in steps: ``first_epoch=500, last_epoch=1000``
    keeps ``step 500`` … ``step 1000`` (an sd-scripts step file's ``ss_epoch`` is the epoch in progress,
    which would otherwise be compared).

    Raises:
        ValueError: no such run (the message lists the runs found).
    """
    runs = list_runs(root)
    key = _find_run(runs, run)
    if key is None:
        found = ", ".join(runs) or "none"
        raise ValueError(f"no LoRA training run named {run!r} in {root} (runs found: {found})")
    by_step = range_unit(runs[key]) == "step"
    selected = []
    for checkpoint in runs[key]:
        if checkpoint.final and not include_final:
            continue
        position = checkpoint.step if by_step else checkpoint.epoch
        if position is not None:
            if first_epoch is not None and position < first_epoch:
                continue
            if last_epoch is not None and position > last_epoch:
                continue
        selected.append(checkpoint)
    return selected


def range_unit(checkpoints: list[LoraCheckpoint]) -> str:
    """``"step"`` for a run saved by step only (every file but the final one names its step: ``-step00000500``,
    ai-toolkit's ``_000000500``, OneTrainer's ``-save-500-…``, ``checkpoint-500``), else ``"epoch"``: the unit an
    epoch range over the run (:func:`run_checkpoints`, ComfyUI's LoRA Checkpoints) is read in."""
    saved = [c for c in checkpoints if not c.final]
    return "step" if saved and all(c.by_step for c in saved) else "epoch"


def _unique_labels(checkpoints: list[LoraCheckpoint]) -> list[LoraCheckpoint]:
    """Give checkpoints whose labels collide (``exp_e10`` and ``exp-e10`` are both ``e10``) their folder or file name."""
    counts = Counter(c.label for c in checkpoints)
    out = []
    for checkpoint in checkpoints:
        if counts[checkpoint.label] > 1:
            name = PurePosixPath(checkpoint.name)
            title = name.parent.name if is_folder_lora(name) and str(name.parent) != "." else checkpoint.stem
            checkpoint = dataclasses.replace(checkpoint, title=title)
        out.append(checkpoint)
    counts = Counter(c.label for c in out)
    # Still equal (same folder name at two depths): the relative path always differs.
    return [dataclasses.replace(c, title=c.name) if counts[c.label] > 1 else c for c in out]


def sweep_checkpoints(root: Path, run: str | None = None, base: str | None = "sd1") -> list[LoraCheckpoint]:
    """The checkpoints one sweep compares: one run, in epoch order (final last), each with a unique label.

    Args:
        root: a LoRA file, a Kohya run folder, or a folder of diffusers/PEFT checkpoint folders
            (``output/exp_e10/pytorch_lora_weights.safetensors`` …); searched recursively.
        run: which run when ``root`` holds several (a key of :func:`list_runs`, its last part, or a
            Kohya file name of the run); ``None`` when there is only one.
        base: architecture of the model the LoRAs will be applied to (a key of :data:`ARCHITECTURE_NAMES`);
            a LoRA for another one is refused. ``None`` skips the check.

    Raises:
        ValueError: nothing found, several runs and no ``run`` (the message lists them and says to pass
            ``--run NAME``), no such run, or a file that is not a safetensors file.
        ArchitectureMismatch: a checkpoint made for another architecture than ``base``.
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() != LORA_SUFFIX:
            raise ValueError(f"{root} is not a .safetensors file: LoRAs are loaded from safetensors only (a pickle file "
                             f"such as .ckpt/.pt/.bin is never loaded: unpickling can run any code it holds); convert it to .safetensors")
        # Scan from far enough up that a diffusers/PEFT folder name (exp_e10) still labels the file.
        scan_root = root.parent.parent if is_folder_lora(root) and root.parent != root.parent.parent else root.parent
        if is_folder_lora(root):
            checkpoints = _folder_checkpoints([root], scan_root)
        else:
            checkpoints = [_checkpoint(root, scan_root)]
    elif root.is_dir():
        runs = list_runs(root)
        if not runs:
            raise ValueError(no_lora_found_message(root))
        if run is None:
            if len(runs) > 1:
                listed = "; ".join(f"{key} ({len(items)} checkpoint{'s' if len(items) != 1 else ''}: "
                                   f"{', '.join(c.label for c in items)})" for key, items in runs.items())
                raise ValueError(f"{root} holds {len(runs)} LoRA training runs: {listed}. Pass --run NAME to pick one.")
            checkpoints = next(iter(runs.values()))
        else:
            key = _find_run(runs, run)
            if key is None:
                raise ValueError(f"no LoRA training run named {run!r} in {root} (runs found: {', '.join(runs)}); "
                                 "pass --run with one of those names")
            checkpoints = runs[key]
    else:
        raise ValueError(f"{root} does not exist")
    if base is not None:
        for checkpoint in checkpoints:
            check_architecture(checkpoint.path, base)
    return _unique_labels(sorted(checkpoints, key=LoraCheckpoint.sort_key))


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
        raise ValueError(f"{path}: not a safetensors file")  # noqa: TRY004 -- callers catch ValueError for any unreadable file
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
        cross_key = "attn2_to_k" in key or "attn2.to_k" in key or "attn2.processor.to_k" in key
        if cross_key and ("lora_down" in key or "lora_A" in key or "lora.down" in key or "lora_linear_layer.down" in key):
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
