"""Finding a CLIP tokenizer offline.

Every text encoder of SD1 and SDXL reads the same CLIP BPE vocabulary (49,408 tokens); SDXL's second
tokenizer only pads with ``!`` instead of the end token, which the family sets when it loads the files.
So one folder with ``vocab.json`` + ``merges.txt`` serves every family here. It is looked for, in order:

1. the folder the caller passes (``--tokenizer``; hosts pass the one they already use);
2. the base model folder's own ``tokenizer/`` (``tokenizer_2/``) sub-folder;
3. ComfyUI's bundled ``comfy/sd1_tokenizer`` (running inside ComfyUI, or ``$COMFYUI_PATH``/``$COMFYUI_DIR``,
   or this pack cloned into ``ComfyUI/custom_nodes/``);
4. ``openai/clip-vit-large-patch14`` in the offline Hugging Face cache (where A1111 keeps it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from .errors import ModelLoadError


def is_tokenizer_dir(folder: Path | None) -> bool:
    """A CLIP BPE tokenizer folder: vocab.json + merges.txt, or a fast tokenizer's tokenizer.json."""
    if folder is None:
        return False
    folder = Path(folder)
    return ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (folder / "tokenizer.json").is_file()


TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json")


def copy_tokenizer_files(tokenizer_dir: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copyfile(Path(tokenizer_dir) / name, target / name)
    return target


CLIP_L_ID = "openai/clip-vit-large-patch14"


def comfyui_tokenizer_dir() -> Path | None:
    """ComfyUI's bundled SD1 tokenizer, when ComfyUI is importable or ``$COMFYUI_PATH`` names it (imports nothing)."""
    candidates = []
    try:
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "sd1_tokenizer" for p in spec.submodule_search_locations]
    for variable in ("COMFYUI_PATH", "COMFYUI_DIR"):
        if os.environ.get(variable):
            candidates.append(Path(os.environ[variable]) / "comfy" / "sd1_tokenizer")
    # Cloned into ComfyUI/custom_nodes/<us>/: ComfyUI is the folder above custom_nodes/ (<us>/core/families/this file).
    here = Path(__file__).resolve()
    if len(here.parents) > 4:
        candidates.append(here.parents[4] / "comfy" / "sd1_tokenizer")
    return next((c for c in candidates if is_tokenizer_dir(c)), None)


def huggingface_cache_tokenizer_dir() -> Path | None:
    """``openai/clip-vit-large-patch14``'s tokenizer in the local Hugging Face cache (A1111 keeps it there)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(CLIP_L_ID, local_files_only=True, allow_patterns=list(TOKENIZER_FILES))
    except Exception:  # noqa: BLE001 - not cached (or no huggingface_hub): try the next place
        return None
    return Path(folder) if is_tokenizer_dir(Path(folder)) else None


def resolve_tokenizer_dir(explicit: Path | None = None, base: Path | None = None, subfolder: str = "tokenizer") -> Path:
    """The first usable CLIP tokenizer folder (see the module docstring).

    Raises:
        ModelLoadError: an explicit folder that is not a tokenizer, or none found; the message lists where it looked.
    """
    if explicit is not None:
        if not is_tokenizer_dir(Path(explicit)):
            raise ModelLoadError(f"tokenizer {explicit} has no vocab.json + merges.txt (a CLIP tokenizer folder)")
        return Path(explicit)
    tried = []
    if base is not None and Path(base).is_dir():
        tried.append(Path(base) / subfolder)
        if is_tokenizer_dir(tried[-1]):
            return tried[-1]
    found = comfyui_tokenizer_dir()
    if found is not None:
        return found
    tried.append(Path("ComfyUI/comfy/sd1_tokenizer"))
    found = huggingface_cache_tokenizer_dir()
    if found is not None:
        return found
    tried.append(Path(f"Hugging Face cache: {CLIP_L_ID}"))
    raise ModelLoadError(
        "no CLIP tokenizer found offline (looked in: " + ", ".join(map(str, tried)) + "). Pass --tokenizer DIR "
        "(a folder with vocab.json and merges.txt, e.g. ComfyUI/comfy/sd1_tokenizer), or use a diffusers folder as --base."
    )
