"""Resumable training state in one safetensors file: tensors + a JSON document, never pickle.

``<out>/<name>.likeness-state`` holds the LoRA weights (float32), the optimizer's tensors
(``optimizer.<param index>.<name>``) and, in its metadata under ``likeness_state``, everything else
as JSON: position (epoch, batch, step), optimizer hyper-parameters and scalar state, learning-rate
scheduler and gradient-scaler state, the loss log and sample scores. One file written atomically, so
a crash leaves the previous state, never half of one.

The file is a safetensors file, but not named ``.safetensors``: the run's folder is usually a host's
``loras`` folder, and every loader there lists files by extension — ComfyUI's ``folder_paths`` (``.safetensors``,
``.ckpt``, ``.pt``, ``.pt2``, ``.pth``, ``.bin``, ``.pkl``, ``.sft``, hidden folders included) and A1111's Lora
lister (``.safetensors``, ``.ckpt``, ``.pt``) — so a ``-state.safetensors`` file was offered as a LoRA. Earlier
versions wrote ``<name>-state.safetensors``; :func:`find_state` still finds that name, so their runs resume.

Random numbers need no saved state: every step draws from a generator seeded by ``(seed, step)``
and every epoch's order from ``(seed, epoch)``, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_KEY = "likeness_state"
STATE_VERSION = 1


#: Extension of the state file: a safetensors file that no LoRA loader lists.
STATE_SUFFIX = ".likeness-state"
#: What earlier versions called the state file: read on resume (then replaced by :func:`state_path`), never written.
LEGACY_STATE_SUFFIX = "-state.safetensors"


def state_path(out: Path, name: str) -> Path:
    """Where run ``name`` saves its state: ``<out>/<name>.likeness-state``."""
    return Path(out) / f"{name}{STATE_SUFFIX}"


def legacy_state_path(out: Path, name: str) -> Path:
    """Where earlier versions saved it: ``<out>/<name>-state.safetensors``."""
    return Path(out) / f"{name}{LEGACY_STATE_SUFFIX}"


def find_state(out: Path, name: str) -> Path | None:
    """The saved state of run ``name`` in ``out``: the current name, else the earlier one; ``None`` without one."""
    for path in (state_path(out, name), legacy_state_path(out, name)):
        if path.is_file():
            return path
    return None


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def optimizer_to_parts(optimizer) -> tuple[dict, dict]:
    """``(tensors, json)`` for ``optimizer.state_dict()``: tensors by ``optimizer.<index>.<name>``."""
    import torch

    raw = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in raw["state"].items():
        scalars[str(index)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[str(index)][name] = _to_json(value)
    return tensors, {"param_groups": _to_json(raw["param_groups"]), "scalars": scalars}


def optimizer_from_parts(optimizer, tensors: dict, document: dict) -> None:
    """Restore what :func:`optimizer_to_parts` saved (param groups must match in number and size)."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if not key.startswith("optimizer."):
            continue
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, scalars in document.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(scalars)
    groups = document["param_groups"]
    for group in groups:
        if "betas" in group and isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_state(path: Path, tensors: dict, document: dict) -> Path:
    """Write tensors + JSON document atomically as one safetensors file."""
    from safetensors.torch import save

    from ..images import write_bytes_atomic

    document = dict(document, version=STATE_VERSION)
    data = save({k: v.contiguous() for k, v in tensors.items()}, {STATE_KEY: json.dumps(_to_json(document))})
    write_bytes_atomic(Path(path), data)
    return Path(path)


def load_state(path: Path) -> tuple[dict, dict]:
    """``(tensors, document)`` of a state file; raises ``ValueError`` for a file that is not one."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if STATE_KEY not in metadata:
            raise ValueError(f"{path} is not a Likeness training state")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    document = json.loads(metadata[STATE_KEY])
    if document.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: state version {document.get('version')} is not supported by this version ({STATE_VERSION})")
    return tensors, document
