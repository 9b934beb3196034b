"""Kohya sd-scripts' dataset conventions: ``<repeats>_<class tokens>`` folders, repeats, and the
``dataset.toml`` of its ``--dataset_config``.

sd-scripts (``library/config_util.py``) reads a folder named ``10_ohwx man`` as 10 repeats with
class tokens ``ohwx man`` (everything after the first ``_``), takes each image's caption from the
``.txt`` file beside it (``caption_extension``), and validates ``dataset.toml`` against a fixed
schema, so only keys it knows are written: ``[general]`` shuffle_caption / keep_tokens /
caption_extension, ``[[datasets]]`` resolution / batch_size / enable_bucket / min_bucket_reso /
max_bucket_reso / bucket_reso_steps, ``[[datasets.subsets]]`` image_dir / num_repeats /
class_tokens / keep_tokens / is_reg.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CAPTION_EXTENSION = ".txt"
#: sd-scripts' globbing (train_util.IMAGE_EXTENSIONS): files it will train on.
KOHYA_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BUCKET_STEP = 64


def repeats_for(n_images: int, target_steps: int, batch_size: int = 1) -> int:
    """Repeats so that one epoch is about ``target_steps`` optimiser steps.

    One epoch shows each image ``repeats`` times in batches of ``batch_size``:
    ``steps = ceil(n_images * repeats / batch_size)``, hence
    ``repeats = max(1, ceil(target_steps * batch_size / n_images))``.
    """
    if n_images <= 0:
        return 1
    return max(1, math.ceil(target_steps * batch_size / n_images))


def steps_per_epoch(images_times_repeats: int, batch_size: int = 1) -> int:
    """``ceil(sum of images x repeats / batch_size)`` (bucketing can add a few partial batches)."""
    return math.ceil(images_times_repeats / max(1, batch_size))


def subset_folder_name(repeats: int, identities: Sequence[tuple[str, str]]) -> str:
    """``"10_ohwx man"``; several people: ``"10_ohwxa man, ohwxb woman"`` (the class tokens sd-scripts
    uses for an image without a caption file)."""
    return f"{int(repeats)}_" + ", ".join(f"{trigger} {class_word}" for trigger, class_word in identities)


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """sd-scripts' reading of a subset folder name: ``(repeats, class tokens)``, or ``None`` when
    the part before the first ``_`` is not a number (sd-scripts then ignores the folder)."""
    head, _, tail = name.partition("_")
    try:
        return int(head), tail
    except ValueError:
        return None


@dataclass
class Subset:
    """One ``[[datasets.subsets]]`` entry."""

    image_dir: Path
    num_repeats: int
    class_tokens: str
    keep_tokens: int = 1
    is_reg: bool = False


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def bucket_limits(resolution: int, family) -> tuple[int, int]:
    """``(min_bucket_reso, max_bucket_reso)`` in pixels for crops of side ``resolution`` trained on ``family``:
    the family's own limits (SD1.x 256–1024, SDXL 512–2048: what its trainer defaults to), widened for crops
    smaller or larger than the family's resolution so that every aspect ratio keeps a bucket of their area
    (smallest side at most half the crop side, largest at least twice it)."""
    defaults = family.defaults
    return min(defaults.min_bucket_reso, resolution // 2), max(defaults.max_bucket_reso, 2 * resolution)


def dataset_toml(
    subsets: Sequence[Subset],
    resolution: int,
    batch_size: int = 1,
    enable_bucket: bool = True,
    shuffle_caption: bool = True,
    keep_tokens: int = 1,
    comment: str = "",
    min_bucket_reso: int = 256,
    max_bucket_reso: int | None = None,
) -> str:
    """``dataset.toml`` for sd-scripts' ``--dataset_config`` (and the built-in trainer).

    ``image_dir`` is written as an absolute path: sd-scripts resolves it against its working
    directory, not the TOML's folder. Buckets span ``min_bucket_reso .. max_bucket_reso`` (default
    ``2 * resolution``; :func:`bucket_limits` gives a family's) in steps of 64.
    """
    lines = [f"# {line}" for line in comment.splitlines()] + [
        "",
        "[general]",
        f"shuffle_caption = {_value(shuffle_caption)}",
        f"keep_tokens = {_value(keep_tokens)}",
        f"caption_extension = {_value(CAPTION_EXTENSION)}",
        "",
        "[[datasets]]",
        f"resolution = {_value(int(resolution))}",
        f"batch_size = {_value(int(batch_size))}",
        f"enable_bucket = {_value(enable_bucket)}",
        f"min_bucket_reso = {_value(int(min_bucket_reso))}",
        f"max_bucket_reso = {_value(int(max_bucket_reso or 2 * int(resolution)))}",
        f"bucket_reso_steps = {_value(BUCKET_STEP)}",
    ]
    for subset in subsets:
        lines += [
            "",
            "  [[datasets.subsets]]",
            f"  image_dir = {_value(Path(subset.image_dir).resolve().as_posix())}",
            f"  num_repeats = {_value(int(subset.num_repeats))}",
            f"  class_tokens = {_value(subset.class_tokens)}",
            f"  keep_tokens = {_value(int(subset.keep_tokens))}",
            f"  is_reg = {_value(subset.is_reg)}",
        ]
    return "\n".join(lines).lstrip("\n") + "\n"
