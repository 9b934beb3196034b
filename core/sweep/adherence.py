"""Prompt adherence: how well a generated image matches its prompt, by CLIP (optional, offline only).

A face LoRA trained too long makes every image the training photos again, whatever the prompt says;
identity then rises while the prompt is ignored. CLIP puts an image and a text in one embedding space;
the cosine similarity of the two embeddings measures their agreement.

Score scale: cosine similarity in [-1, 1] (for real CLIP models, image-prompt pairs fall around 0.15-0.40).
The "CLIPScore" that papers and torchmetrics report is ``100 × max(cos, 0)`` (:func:`clip_score`).
Scores from different CLIP models are not on the same scale: compare cells of one sweep only.

The model comes from a folder on disk (``--clip DIR``) or from the offline Hugging Face cache
(:data:`CLIP_REPOS`); nothing is downloaded. Only safetensors weights are loaded (a folder with only
``pytorch_model.bin``, a pickle, is refused). transformers and torch are imported when a model is loaded;
the code runs on transformers 4.30 (A1111's pin) and 5.x.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Hugging Face repositories searched in the offline cache, in order of preference.
CLIP_REPOS = ("openai/clip-vit-large-patch14", "openai/clip-vit-base-patch32")


class ClipModelError(ValueError):
    """A CLIP model folder that cannot be used; the message says what is missing."""


def clip_score(cosine: float) -> float:
    """CLIPScore as torchmetrics and most papers report it: ``100 × max(cos, 0)`` (0-100)."""
    return 100.0 * max(float(cosine), 0.0)


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub resolves it (``HF_HUB_CACHE``, ``HF_HOME``, …)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "huggingface" / "hub"


def clip_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable CLIP model (``None`` when it is): a ``config.json`` of a full CLIPModel
    (text and vision), safetensors weights, tokenizer files and an image-processor config."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a folder"
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{folder} has no config.json"
    except (OSError, json.JSONDecodeError) as exc:
        return f"{config_path} cannot be read ({exc})"
    if not isinstance(config, dict) or "text_config" not in config or "vision_config" not in config:
        return f"{config_path} is not a CLIPModel config (it needs both text_config and vision_config)"
    weights = [p for p in folder.glob("*.safetensors") if p.is_file()]  # is_file follows the cache's symlinks
    if not weights:
        if any(p.is_file() for p in folder.glob("*.bin")):
            return (f"{folder} holds only .bin weights (pickles, which Likeness never loads): "
                    "download the model.safetensors of the same repository into it")
        return f"{folder} has no .safetensors weights"
    if not (folder / "tokenizer.json").is_file() and not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return f"{folder} has no tokenizer files (vocab.json and merges.txt, or tokenizer.json)"
    if not (folder / "preprocessor_config.json").is_file():
        return f"{folder} has no preprocessor_config.json (the image processor's settings)"
    return None


def _snapshots(repo_folder: Path) -> list[Path]:
    """A cached repository's snapshots, the one ``refs/main`` names first, then the newest."""
    snapshots = repo_folder / "snapshots"
    if not snapshots.is_dir():
        return []
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    main = repo_folder / "refs" / "main"
    if main.is_file():
        revision = main.read_text(encoding="utf-8").strip()
        found.sort(key=lambda p: p.name != revision)
    return found


def find_clip_model(explicit: Path | None = None, cache: Path | None = None) -> Path | None:
    """The CLIP model folder to use: ``explicit`` when given, else the first usable snapshot of
    :data:`CLIP_REPOS` in the offline Hugging Face cache (``cache``, default :func:`hf_hub_cache`).

    Returns ``None`` when ``explicit`` is not usable (the reason is logged as a warning; callers that want it
    in their own message call :func:`clip_folder_problem`, best before a long sweep starts) or, without
    ``explicit``, when no usable model is cached: prompt adherence is then skipped.
    """
    if explicit is not None:
        folder = Path(explicit).expanduser()
        problem = clip_folder_problem(folder)
        if problem:
            logger.warning("--clip: %s; prompt adherence is skipped", problem)
            return None
        return folder
    root = Path(cache) if cache is not None else hf_hub_cache()
    for repo in CLIP_REPOS:
        for snapshot in _snapshots(root / f"models--{repo.replace('/', '--')}"):
            if clip_folder_problem(snapshot) is None:
                return snapshot
    return None


def _image_processor_class():
    """transformers 5 names its PIL-based CLIP image processor ``CLIPImageProcessorPil`` (the default one wants
    torchvision); transformers 4 has only ``CLIPImageProcessor`` (PIL/numpy). Both give the same pixels."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def _embedding(output) -> Any:
    """``get_*_features`` returns the projected embeddings (transformers 4) or an output whose
    ``pooler_output`` holds them (transformers 5)."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


@dataclass
class PromptAdherence:
    """A loaded CLIP model that scores image–prompt pairs (see the module docstring for the scale).

    Build it with :meth:`load`.
    """

    model: Any
    tokenizer: Any
    processor: Any
    device: str
    folder: Path
    batch_size: int = 16
    _text_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """``openai/clip-vit-large-patch14`` for a cache snapshot, else the folder's name."""
        parts = self.folder.parts
        for index, part in enumerate(parts):
            if part.startswith("models--") and index + 2 < len(parts) and parts[index + 1] == "snapshots":
                return part[len("models--"):].replace("--", "/")
        return self.folder.name

    @classmethod
    def load(cls, folder: Path, device: str = "cpu", batch_size: int = 16) -> PromptAdherence:
        """Load CLIP from ``folder`` (safetensors only, no network).

        Raises:
            ClipModelError: the folder is not usable (see :func:`clip_folder_problem`).
        """
        folder = Path(folder)
        problem = clip_folder_problem(folder)
        if problem:
            raise ClipModelError(problem)
        import torch
        from transformers import CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        processor = _image_processor_class().from_pretrained(folder, local_files_only=True)
        model = model.to(device=device, dtype=torch.float32).eval()  # transformers 5 may load in the stored dtype
        return cls(model, tokenizer, processor, str(device), folder, batch_size)

    def text_embeddings(self, prompts: Sequence[str]):
        """Unit-length text embeddings ``[len(prompts), projection_dim]`` (float32, CPU); prompts past CLIP's
        77 tokens are truncated, as the diffusion model's own text encoder truncates them."""
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            tokens = self.tokenizer(chunk, padding="max_length", truncation=True, max_length=limit, return_tensors="pt")
            with torch.no_grad():
                features = _embedding(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                                   attention_mask=tokens["attention_mask"].to(self.device)))
            features = torch.nn.functional.normalize(features.float(), dim=-1).cpu()
            for prompt, vector in zip(chunk, features):
                self._text_cache[prompt] = vector
        return torch.stack([self._text_cache[p] for p in prompts])

    def image_embeddings(self, images: Sequence):
        """Unit-length image embeddings ``[len(images), projection_dim]`` of RGB uint8 ``H×W×3`` arrays."""
        import numpy as np
        import torch
        from PIL import Image

        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = []
            for image in images[start:start + self.batch_size]:
                array = np.asarray(image)
                if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                    raise ValueError(f"expected an RGB uint8 H×W×3 image, got shape {array.shape} dtype {array.dtype}")
                chunk.append(Image.fromarray(array))
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.no_grad():
                features = _embedding(self.model.get_image_features(pixel_values=pixels))
            out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros((0, int(self.model.config.projection_dim)))

    def score(self, images: Sequence, prompts: Sequence[str]) -> list[float]:
        """Cosine similarity of each image with its prompt (``prompts[i]`` for ``images[i]``; one prompt is
        used for every image). Range -1..1; :func:`clip_score` gives the 0-100 CLIPScore.

        Raises:
            ValueError: the numbers of images and prompts differ (and there is more than one prompt), or an
                image is not RGB uint8 ``H×W×3``.
        """
        prompts = list(prompts)
        if len(prompts) == 1 and len(images) != 1:
            prompts = prompts * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image, or one for all")
        if not images:
            return []
        similarity = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(dim=-1)
        return [float(v) for v in similarity]
