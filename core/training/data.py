"""Training data: the Kohya folder layout and sd-scripts' ``dataset.toml``, captions, aspect-ratio
buckets and the deterministic order of samples per epoch.

Layout (sd-scripts' DreamBooth method)::

    DATA/img/10_ohwx woman/photo1.png + photo1.txt      10 repeats; caption file, else "ohwx woman"
    DATA/reg/1_woman/*.png                              regularisation images (optional)

``DATA`` may also be the ``img`` folder itself (then ``reg_data`` names the regularisation folder),
or an sd-scripts dataset config (``[[datasets]]`` / ``[[datasets.subsets]]`` with ``image_dir``,
``num_repeats``, ``class_tokens``, ``is_reg``, ``caption_extension``, ``keep_tokens``, …); see
sd-scripts' ``docs/config_README-en.md``. Per epoch the order depends on ``(seed, epoch)`` only, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ConfigError, TrainConfig, read_toml

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # sd-scripts' list (case-insensitive)


@dataclass
class Subset:
    """One image folder with its repeats and caption settings (sd-scripts' DreamBooth subset)."""

    image_dir: Path
    num_repeats: int = 1
    class_tokens: str = ""
    is_reg: bool = False
    caption_extension: str = ".txt"
    keep_tokens: int = 0
    shuffle_caption: bool = False


@dataclass
class Item:
    """One image: where it is, its caption, its size and bucket ``(width, height)`` in pixels."""

    path: Path
    caption: str
    subset: int
    is_reg: bool
    size: tuple[int, int] = (0, 0)
    bucket: tuple[int, int] = (0, 0)

    @property
    def geometry(self):
        """Original size, crop corner and target size of this image as trained (SDXL's micro-conditioning)."""
        from ..families.base import ImageGeometry

        _, (left, top) = cover_crop(self.size, self.bucket)
        return ImageGeometry((self.size[1], self.size[0]), (top, left), (self.bucket[1], self.bucket[0]))


@dataclass
class DatasetInfo:
    """What the trainer reads; also feeds the ``ss_*`` metadata."""

    subsets: list[Subset]
    items: list[Item]
    resolution: tuple[int, int]
    batch_size: int
    buckets: list[tuple[int, int]]
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    enable_bucket: bool = False

    @property
    def train_items(self) -> list[Item]:
        return [i for i in self.items if not i.is_reg]

    @property
    def reg_items(self) -> list[Item]:
        return [i for i in self.items if i.is_reg]

    @property
    def num_train_images(self) -> int:
        """Images × repeats, as sd-scripts counts ``num_train_images``."""
        return sum(self.subsets[i.subset].num_repeats for i in self.train_items)

    @property
    def num_reg_images(self) -> int:
        return sum(self.subsets[i.subset].num_repeats for i in self.reg_items)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """Per training folder: how often each comma-separated tag occurs (sd-scripts' ``ss_tag_frequency``)."""
        out: dict[str, dict[str, int]] = {}
        for item in self.items:
            if item.is_reg:
                continue
            counts = out.setdefault(self.subsets[item.subset].image_dir.name, {})
            for tag in item.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
        return out

    def dirs_info(self, reg: bool) -> dict[str, dict[str, int]]:
        """``{folder name: {"n_repeats", "img_count"}}`` (sd-scripts' ``ss_dataset_dirs``)."""
        out = {}
        for index, subset in enumerate(self.subsets):
            if subset.is_reg == reg:
                count = sum(1 for i in self.items if i.subset == index)
                out[subset.image_dir.name] = {"n_repeats": subset.num_repeats, "img_count": count}
        return out

    def bucket_info(self) -> dict:
        counts: dict[str, int] = {}
        for item in self.items:
            key = f"{item.bucket[0]}x{item.bucket[1]}"
            counts[key] = counts.get(key, 0) + 1
        return {"buckets": {k: {"resolution": [int(x) for x in k.split("x")], "count": v} for k, v in sorted(counts.items())}}


# ------------------------------------------------------------------------------------------------
# subsets: Kohya folders or dataset.toml
# ------------------------------------------------------------------------------------------------


def parse_repeats_folder(name: str) -> tuple[int, str] | None:
    """``"10_ohwx woman"`` → ``(10, "ohwx woman")``; ``None`` when the name does not start with repeats_."""
    head, sep, tail = name.partition("_")
    if not sep or not head.isdigit() or int(head) < 1:
        return None
    return int(head), tail


def subsets_from_layout(folder: Path, is_reg: bool, config: TrainConfig, warnings: list[str]) -> list[Subset]:
    """Every ``<repeats>_<tokens>`` sub-folder of ``folder`` (others are skipped with a warning)."""
    subsets = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        parsed = parse_repeats_folder(sub.name)
        if parsed is None:
            warnings.append(f"skipped {sub}: folder name does not start with <repeats>_ (e.g. 10_ohwx woman)")
            continue
        repeats, tokens = parsed
        if config.repeats is not None and not is_reg:
            repeats = config.repeats
        subsets.append(Subset(sub, repeats, tokens, is_reg, config.caption_extension, config.keep_tokens, config.shuffle_caption))
    return subsets


def subsets_from_toml(path: Path, config: TrainConfig, warnings: list[str]) -> tuple[list[Subset], dict]:
    """Subsets and dataset-level settings of an sd-scripts dataset config (DreamBooth subsets only).

    Keys are looked up subset → dataset → ``[general]``, as sd-scripts does. Relative ``image_dir``
    values are taken relative to the config file's folder (sd-scripts resolves them from its working
    directory; the file's folder is what a moved dataset folder needs).
    """
    document = read_toml(path)
    general = document.get("general", {}) or {}
    datasets = document.get("datasets") or []
    if not datasets:
        raise ConfigError(f"{path}: no [[datasets]] entry")
    if len(datasets) > 1:
        warnings.append(f"{path}: {len(datasets)} [[datasets]]; only the first is trained by the built-in trainer")
    dataset = datasets[0]
    subsets = []
    for index, raw in enumerate(dataset.get("subsets") or []):
        def get(key, default=None, raw=raw):
            for level in (raw, dataset, general):
                if key in level:
                    return level[key]
            return default

        if "metadata_file" in raw and "class_tokens" not in raw:
            raise ConfigError(f"{path}: subset {index + 1} is a fine-tuning subset (metadata_file); only DreamBooth "
                              "subsets (image_dir + captions/class_tokens) are supported")
        if "image_dir" not in raw:
            raise ConfigError(f"{path}: subset {index + 1} has no image_dir")
        image_dir = Path(str(raw["image_dir"])).expanduser()
        if not image_dir.is_absolute():
            image_dir = path.parent / image_dir
        is_reg = bool(get("is_reg", False))
        repeats = int(get("num_repeats", 1))
        if config.repeats is not None and not is_reg:
            repeats = config.repeats
        extension = str(get("caption_extension", ".caption"))  # sd-scripts' default
        if extension and not extension.startswith("."):
            extension = "." + extension
        subsets.append(Subset(image_dir, repeats, str(get("class_tokens", "") or ""), is_reg, extension,
                              int(get("keep_tokens", config.keep_tokens)), bool(get("shuffle_caption", config.shuffle_caption))))
    settings = {key: dataset.get(key, general.get(key)) for key in
                ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")}
    return subsets, {k: v for k, v in settings.items() if v is not None}


def resolve_subsets(config: TrainConfig) -> tuple[list[Subset], dict, list[str], str]:
    """Find the subsets ``config.data`` (and ``reg_data``) describe: ``(subsets, toml settings, warnings, source)``."""
    warnings: list[str] = []
    data = Path(config.data)
    if not data.exists():
        raise ConfigError(f"data {data} does not exist")
    settings: dict = {}
    if data.is_file():
        if data.suffix.lower() != ".toml":
            raise ConfigError(f"data {data} is a file but not a dataset .toml")
        subsets, settings = subsets_from_toml(data, config, warnings)
        source = str(data)
    else:
        train_dir = data / "img" if (data / "img").is_dir() else data
        subsets = subsets_from_layout(train_dir, False, config, warnings)
        reg_dir = config.reg_data or (data / "reg" if (data / "reg").is_dir() and train_dir != data else None)
        if reg_dir is not None:
            if not Path(reg_dir).is_dir():
                raise ConfigError(f"reg_data {reg_dir} is not a folder")
            subsets += subsets_from_layout(Path(reg_dir), True, config, warnings)
        source = str(train_dir)
        if not [s for s in subsets if not s.is_reg]:
            raise ConfigError(f"no training folder in {train_dir}: expected sub-folders named <repeats>_<trigger> <class> "
                              "(e.g. img/10_ohwx woman/) holding the images and their .txt captions")
    if config.reg_data is not None and data.is_file():
        subsets += subsets_from_layout(Path(config.reg_data), True, config, warnings)
    for subset in subsets:
        if not subset.image_dir.is_dir():
            raise ConfigError(f"image folder {subset.image_dir} does not exist")
    return subsets, settings, warnings, source


# ------------------------------------------------------------------------------------------------
# captions
# ------------------------------------------------------------------------------------------------


def caption_from_file(image: Path, subset: Subset) -> str | None:
    """The first non-empty line of the image's caption file; ``None`` without a file or with an empty one."""
    caption_path = image.with_suffix(subset.caption_extension) if subset.caption_extension else None
    if caption_path is not None and caption_path.is_file():
        for line in caption_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return line.strip()
    return None


def read_caption(image: Path, subset: Subset) -> str:
    """The image's caption file (first non-empty line), else the subset's class tokens (sd-scripts' rule)."""
    caption = caption_from_file(image, subset)
    return subset.class_tokens if caption is None else caption


def shuffle_caption(caption: str, keep_tokens: int, rng: np.random.Generator) -> str:
    """Shuffle comma-separated tags after the first ``keep_tokens`` (sd-scripts' ``shuffle_caption``)."""
    tags = [t.strip() for t in caption.split(",")]
    fixed, rest = tags[:keep_tokens], tags[keep_tokens:]
    order = rng.permutation(len(rest))
    return ", ".join(fixed + [rest[i] for i in order])


# ------------------------------------------------------------------------------------------------
# buckets
# ------------------------------------------------------------------------------------------------


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024, divisible: int = 64) -> list[tuple[int, int]]:
    """sd-scripts' ``model_util.make_bucket_resolutions``: ``(width, height)`` pairs of about the area of
    ``max_reso``, each side a multiple of ``divisible`` within ``[min_size, max_size]``."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = set()
    width = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((width, width))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def choose_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (sd-scripts' BucketManager rule)."""
    aspect = size[0] / size[1]
    errors = [abs(w / h - aspect) for w, h in buckets]
    return buckets[int(np.argmin(errors))]


def decoded_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` in pixels after EXIF rotation, from a full decode of the file: a truncated
    or corrupt image fails here (``OSError`` / ``SyntaxError`` / ``ValueError``), not in the middle of
    training, where its header alone looked fine."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        try:
            orientation = image.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a malformed EXIF block does not make the pixels unusable
            orientation = 1
        width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _unreadable_reason(exc: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can read (unknown or corrupt format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to open safely ({exc})"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return f"cannot be read ({exc.strerror or exc})"
    return f"corrupt or truncated image ({exc})"


def _check_images(paths: Sequence[Path]) -> list[tuple[int, int] | str]:
    """Per path: its size from a full decode, or why it cannot be used (a sentence). Decodes run a
    few at a time (Pillow releases the GIL): about 10-40 ms per 512-1024 px image per core."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    def check(path: Path) -> tuple[int, int] | str:
        try:
            return decoded_size(path)
        except Exception as exc:  # noqa: BLE001 - every broken file is reported, none is fatal
            return _unreadable_reason(exc)

    if len(paths) < 2:
        return [check(p) for p in paths]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="likeness-data") as pool:
        return list(pool.map(check, paths))


def cover_crop(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(scaled size, (left, top))`` in pixels: an image of ``size`` scaled to cover ``bucket`` (both
    ``(width, height)``), then centre-cropped to it at that corner (sd-scripts' default)."""
    width, height = bucket
    scale = max(width / size[0], height / size[1])
    scaled = (max(width, round(size[0] * scale)), max(height, round(size[1] * scale)))
    return scaled, ((scaled[0] - width) // 2, (scaled[1] - height) // 2)


def load_training_image(path: Path, bucket: tuple[int, int]) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 at the bucket's size: scaled to cover it, centre-cropped (:func:`cover_crop`)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
        width, height = bucket
        new_size, (left, top) = cover_crop(image.size, bucket)
        if new_size != image.size:
            image = image.resize(new_size, Image.LANCZOS)
        image = image.crop((left, top, left + width, top + height))
        return np.asarray(image, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------


def load_dataset(config: TrainConfig) -> DatasetInfo:
    """Read subsets, captions and image sizes and assign buckets, before any model is loaded.

    Every image is fully decoded once here, so a truncated or corrupt file is skipped with its reason
    in the warnings instead of stopping the run after the model loaded. Training images without a
    caption (no caption file, or an empty one) train on their folder's class tokens: one warning per
    folder says how many.

    ``config``'s resolution and bucket limits must be set (a dataset ``.toml`` may set them instead):
    :meth:`TrainConfig.for_family` fills them from the base model's family.

    Raises:
        ConfigError: no usable training image, or a malformed folder/config.
    """
    subsets, settings, warnings, source = resolve_subsets(config)

    def setting(name: str):
        value = settings.get(name, getattr(config, name))
        if value is None:
            raise ValueError(f"{name} is not set: load the dataset with TrainConfig.for_family(family)")
        return value

    resolution = setting("resolution")
    if isinstance(resolution, (list, tuple)):
        resolution = (int(resolution[0]), int(resolution[-1]))
    else:
        resolution = (int(resolution), int(resolution))
    enable_bucket = bool(settings.get("enable_bucket", config.buckets))
    steps = int(settings.get("bucket_reso_steps", config.bucket_reso_steps))
    if enable_bucket:
        buckets = make_bucket_resolutions(resolution, int(setting("min_bucket_reso")), int(setting("max_bucket_reso")), steps)
    else:
        buckets = [resolution]
    items: list[Item] = []
    skipped: list[str] = []
    for index, subset in enumerate(subsets):
        files = sorted(p for p in subset.image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            warnings.append(f"{subset.image_dir}: no images (.png, .jpg, .jpeg, .webp, .bmp)")
        uncaptioned: list[str] = []
        for path, checked in zip(files, _check_images(files)):
            if isinstance(checked, str):
                skipped.append(f"skipped {path}: {checked}")
                continue
            caption = caption_from_file(path, subset)
            if caption is None:
                uncaptioned.append(path.name)
            items.append(Item(path, subset.class_tokens if caption is None else caption, index, subset.is_reg, checked,
                              choose_bucket(checked, buckets)))
        if uncaptioned and not subset.is_reg:  # regularisation images normally train on the class alone
            examples = ", ".join(uncaptioned[:3]) + (f" and {len(uncaptioned) - 3} more" if len(uncaptioned) > 3 else "")
            tokens = f"the folder's tokens {subset.class_tokens!r}" if subset.class_tokens else "an EMPTY caption (the subset has no class_tokens)"
            hint = ""
            if subset.caption_extension != ".txt" and any((subset.image_dir / n).with_suffix(".txt").is_file() for n in uncaptioned):
                hint = " (they have .txt files: set caption_extension = \".txt\" in the dataset config)"
            warnings.append(f"{len(uncaptioned)} of {len(files)} image(s) in {subset.image_dir} have no caption "
                            f"(no {subset.caption_extension or 'caption'} file beside them, or an empty one: {examples}); "
                            f"they train on {tokens} alone{hint}")
    warnings += skipped
    info = DatasetInfo(subsets, items, resolution, int(settings.get("batch_size", config.batch_size)), buckets, warnings, source,
                       enable_bucket)
    if not info.train_items:
        reasons = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        raise ConfigError(f"no readable training image under {source}" + (f": {reasons}" if reasons else ""))
    return info


@dataclass
class Sample:
    """One slot of a batch: which item, its caption for this epoch, and its loss weight."""

    item: int
    caption: str
    weight: float


def epoch_batches(info: DatasetInfo, epoch: int, seed: int, prior_loss_weight: float = 1.0) -> list[list[Sample]]:
    """The batches of ``epoch`` (1-based), a pure function of ``(info, epoch, seed)``.

    Every training image appears ``num_repeats`` times; regularisation images fill as many slots as
    there are training samples (cycled, like sd-scripts), with loss weight ``prior_loss_weight``.
    Batches hold one bucket each; their order is shuffled.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])
    slots: list[int] = []
    for index, item in enumerate(info.items):
        if not item.is_reg:
            slots += [index] * info.subsets[item.subset].num_repeats
    reg_pool: list[int] = []
    for index, item in enumerate(info.items):
        if item.is_reg:
            reg_pool += [index] * info.subsets[item.subset].num_repeats
    if reg_pool:
        order = rng.permutation(len(reg_pool))
        n_train = len(slots)
        slots += [reg_pool[order[i % len(reg_pool)]] for i in range(n_train)]
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index in slots:
        by_bucket.setdefault(info.items[index].bucket, []).append(index)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        members = [by_bucket[bucket][i] for i in rng.permutation(len(by_bucket[bucket]))]
        batches += [members[i:i + info.batch_size] for i in range(0, len(members), info.batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    out = []
    for batch in batches:
        samples = []
        for index in batch:
            item = info.items[index]
            subset = info.subsets[item.subset]
            caption = shuffle_caption(item.caption, subset.keep_tokens, rng) if subset.shuffle_caption else item.caption
            samples.append(Sample(index, caption, prior_loss_weight if item.is_reg else 1.0))
        out.append(samples)
    return out


def batches_per_epoch(info: DatasetInfo) -> int:
    """Number of batches per epoch (the same for every epoch: it depends on counts, not order)."""
    return len(epoch_batches(info, 1, 0))
