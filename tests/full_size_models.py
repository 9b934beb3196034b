"""Full-size models for host tests: the random SDXL checkpoint, the memory lock it is loaded under, and Kohya
LoRA files for full-size SD1.5 / SDXL with every module sd-scripts trains and random weights.

The module set and key names are the core's own: the family's :meth:`~lora_likeness.families.ModelFamily.lora_components`
over the family's published configs, instantiated on the meta device (no weights, no memory), walked by
:func:`~lora_likeness.training.kohya_format.find_targets` — what ``likeness train`` names on a real model.
Training a full-size SDXL on this machine's CPU does not fit beside a host; for key maps these files are
what a trained one is, up to the values.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from likeness_assets import SHARED


def cache_dir() -> Path:
    """``~/.cache/likeness-tests`` (``$XDG_CACHE_HOME`` honoured): one copy of each random checkpoint per machine."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "likeness-tests"


def sdxl_checkpoint(python: str | None = None) -> Path:
    """The random full-size SDXL 1.0 base checkpoint (6.9 GB fp16): ``$LIKENESS_SDXL_CKPT``, else made once by
    ``../shared/tools/make_random_sdxl.py`` into :func:`cache_dir` (about 80 s and 9.4 GB of memory, under
    :func:`bigmem`)."""
    explicit = os.environ.get("LIKENESS_SDXL_CKPT")
    if explicit:
        path = Path(explicit)
        assert path.is_file(), f"LIKENESS_SDXL_CKPT={path} does not exist"
        return path
    path = cache_dir() / "sdxl_random_fp16.safetensors"
    if not path.is_file():
        tool = SHARED / "tools" / "make_random_sdxl.py"
        assert tool.is_file(), f"{tool} is missing (../shared/tools)"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.parent / f"sdxl_random_fp16.{os.getpid()}.partial"
        with bigmem():
            proc = subprocess.run([python or sys.executable, str(tool), str(partial), "--dtype", "fp16", "--seed", "0"],
                                  check=False, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"make_random_sdxl.py failed:\n{proc.stdout}\n{proc.stderr}"
        partial.replace(path)
    return path


@contextlib.contextmanager
def bigmem():
    """Hold ``$LIKENESS_BIGMEM_LOCK`` (an exclusive ``flock``) while a full-size SDXL is in memory, so that two
    such jobs on one shared machine never load at once; without the variable, nothing is locked."""
    lock = os.environ.get("LIKENESS_BIGMEM_LOCK")
    if not lock:
        yield
        return
    with open(lock, "a+") as handle:  # a lock file, kept open while held
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def full_size_targets(family_name: str) -> list:
    """The core's LoRA targets on the full-size model of ``family_name`` (``sd1``, ``sdxl``), built on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from lora_likeness.families import FAMILIES
    from lora_likeness.training.kohya_format import find_targets
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = FAMILIES[family_name]
    configs = {rel.split("/")[0]: config for rel, config in family.configs.items()}

    def text_encoder(config: dict):
        model_class = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in config.get("architectures", []) else CLIPTextModel
        return model_class(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"}))

    with torch.device("meta"):
        modules = {"unet": UNet2DConditionModel.from_config({k: v for k, v in configs["unet"].items() if not k.startswith("_")})}
        for slot in family.text_encoder_slots:
            modules[slot.component] = text_encoder(configs[slot.component])
    return find_targets(family.lora_components(modules))


def write_random_lora(path: Path, targets, metadata: dict[str, str], seed: int = 0, rank: int = 4, std: float = 0.05) -> Path:
    """A Kohya ``networks.lora`` file over ``targets`` with random fp16 weights (large enough to change the images)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for target in targets:
        down, up = (rank, target.in_features), (target.out_features, rank)
        if target.conv:
            down, up = (*down, 1, 1), (*up, 1, 1)
        tensors[f"{target.key}.lora_down.weight"] = rng.normal(0, std, down).astype(np.float16)
        tensors[f"{target.key}.lora_up.weight"] = rng.normal(0, std, up).astype(np.float16)
        tensors[f"{target.key}.alpha"] = np.array(float(rank), dtype=np.float16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path
