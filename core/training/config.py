"""The training configuration: one typed object that CLI flags, a TOML file and host inputs map onto.

Every field has the name of its TOML key (``rank = 16``) and, with dashes, of its CLI flag
(``--rank 16``). :func:`load_config_file` reads a TOML file with exactly these keys (unknown keys
are an error that names them, so a typo cannot be silently ignored); :meth:`TrainConfig.replace`
layers explicit values on top. Defaults follow the seed experiments and sd-scripts' own defaults.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

OPTIMIZERS = ("AdamW", "AdamW8bit")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("fp16", "bf16", "float")
BACKENDS = ("builtin", "sd-scripts")
FAMILY_CHOICES = ("auto", "sd1", "sdxl")  # keep in step with lora_likeness.families.FAMILIES (tests check)


class ConfigError(ValueError):
    """A setting the user must fix; the message names the setting and what is allowed."""


@dataclass
class TrainConfig:
    """Everything one LoRA training run needs.

    Paths may be ``str`` or :class:`~pathlib.Path`; :meth:`validate` turns them into ``Path``.
    Learning rates are per optimizer step (after gradient accumulation); steps count optimizer steps.
    """

    # -- what to train on ------------------------------------------------------------------------
    base: Path | None = None
    """Base model (SD1.x or SDXL): a diffusers folder (``model_index.json``) or a single-file ``.safetensors``
    checkpoint as ComfyUI/A1111 keep them (``.ckpt`` is refused: it would need unpickling)."""
    family: str = "auto"
    """Model family of ``base``: ``auto`` (detected from its keys), ``sd1`` or ``sdxl`` (then another is refused)."""
    data: Path | None = None
    """Training images: a Kohya folder (``img/<repeats>_<trigger> <class>/*.png`` + ``.txt`` captions,
    optional ``reg/<repeats>_<class>/``), the ``img`` folder itself, or an sd-scripts ``dataset.toml``."""
    reg_data: Path | None = None
    """Regularisation images in the Kohya layout (``<repeats>_<class>/``); default ``<data>/reg`` if present."""
    out: Path | None = None
    """Output folder: ``<name>-000001.safetensors`` per saved epoch, ``<name>.safetensors`` at the end."""
    name: str = "lora"
    """Output name (sd-scripts' ``output_name``)."""
    tokenizer: Path | None = None
    """A CLIP tokenizer folder already located by the host (e.g. ComfyUI's ``comfy/sd1_tokenizer``);
    default: the base folder's own, ComfyUI's bundled one, then the offline Hugging Face cache."""
    tokenizer_2: Path | None = None
    """SDXL's second tokenizer folder; default: the base folder's ``tokenizer_2``, else ``tokenizer``'s files
    (the vocabulary is the same; the family sets the ``!`` pad token)."""
    base_config: Path | None = None
    """For a single-file base: a diffusers config folder of its family; default: the family's built-in configs."""

    # -- network ---------------------------------------------------------------------------------
    rank: int = 16
    """LoRA rank (``network_dim``)."""
    alpha: float = 16.0
    """LoRA alpha (``network_alpha``); the update is scaled by ``alpha / rank``. 0 means ``rank``."""

    # -- optimisation ----------------------------------------------------------------------------
    lr: float = 1e-4
    """Learning rate (used for each part whose own rate is unset)."""
    unet_lr: float | None = None
    """UNet learning rate; default ``lr``."""
    text_encoder_lr: float | None = None
    """Text-encoder learning rate; default ``lr`` for SD1.x and ``0`` for SDXL (the family's default: SDXL face
    LoRAs usually train the UNet only); ``0`` trains the UNet only (no ``lora_te…`` keys)."""
    optimizer: str = "AdamW"
    """``AdamW`` or ``AdamW8bit`` (needs bitsandbytes; falls back to AdamW with a warning)."""
    scheduler: str = "constant"
    """Learning-rate schedule: one of :data:`SCHEDULERS`."""
    warmup_steps: int = 0
    """Linear warm-up, in optimizer steps."""
    epochs: int = 10
    repeats: int | None = None
    """Override the repeats of every training folder (default: the number in each folder's name)."""
    batch_size: int = 1
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off), as sd-scripts."""
    seed: int = 42

    # -- memory and speed ------------------------------------------------------------------------
    mixed_precision: str = "fp16"
    """``no``, ``fp16`` or ``bf16``: dtype of the frozen weights and of autocast. fp16 on a CPU falls
    back to ``no`` (with a warning); LoRA weights and optimizer state always stay float32."""
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    """Encode every training image with the VAE once, before training (then the VAE leaves the GPU)."""
    sdpa: bool = True
    """PyTorch scaled-dot-product attention (else the classic attention processor)."""

    # -- loss ------------------------------------------------------------------------------------
    min_snr_gamma: float = 0.0
    """Min-SNR weighting gamma (0 = off; 5 is the paper's value)."""
    noise_offset: float = 0.0
    prior_loss_weight: float = 1.0
    """Loss weight of regularisation images."""

    # -- images and captions ---------------------------------------------------------------------
    resolution: int | None = None
    """Training resolution in pixels (square area; buckets keep about this many pixels); default: the
    family's (512 SD1.x, 1024 SDXL)."""
    buckets: bool = True
    """Aspect-ratio buckets (sd-scripts' ``enable_bucket``)."""
    min_bucket_reso: int | None = None
    """Smallest bucket side; default: the family's (256 SD1.x, 512 SDXL)."""
    max_bucket_reso: int | None = None
    """Largest bucket side; default: the family's (1024 SD1.x, 2048 SDXL)."""
    bucket_reso_steps: int = 64
    caption_extension: str = ".txt"
    shuffle_caption: bool = False
    keep_tokens: int = 0
    """With ``shuffle_caption``: the first N comma-separated tags stay in place (the trigger word)."""
    clip_skip: int = 1

    # -- saving ----------------------------------------------------------------------------------
    save_every_n_epochs: int = 1
    save_precision: str = "fp16"

    # -- samples and identity scoring -------------------------------------------------------------
    sample_every_n_epochs: int = 0
    """Generate sample images every N epochs (0 = never) into ``<out>/samples/``."""
    sample_prompts: list[str] = field(default_factory=list)
    """Prompts of the samples; default: the class tokens of the first training folder."""
    sample_negative: str = ""
    sample_seed: int = 1
    sample_steps: int = 20
    sample_cfg: float = 7.0
    sample_size: int | None = None
    """Width and height of samples (default: ``resolution``)."""
    samples_per_prompt: int = 1
    score_refs: Path | None = None
    """Reference photos: score each epoch's samples against them with the core ArcFace scorer."""
    score_pack: str = "buffalo_l"
    """Face-model pack for scoring (a name or a folder, as ``likeness score --pack``)."""
    early_stop_patience: int = 0
    """Stop when the identity score has not improved for this many scored epochs (0 = never)."""
    early_stop_min_delta: float = 0.005
    keep_best: bool = False
    """With identity scoring: the final ``<name>.safetensors`` holds the best-scoring epoch."""

    # -- backend ---------------------------------------------------------------------------------
    backend: str = "builtin"
    """``builtin`` (diffusers + peft, in this process) or ``sd-scripts`` (an existing checkout)."""
    sd_scripts: Path | None = None
    """sd-scripts checkout (default ``$SD_SCRIPTS_DIR``)."""
    accelerate: Path | None = None
    """The ``accelerate`` executable for sd-scripts (default: its venv's, then ``PATH``)."""
    device: str = "auto"
    """``auto`` (CUDA, then MPS, then CPU), or a torch device string."""

    # ---------------------------------------------------------------------------------------------

    @property
    def effective_unet_lr(self) -> float:
        return self.lr if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.lr if self.text_encoder_lr is None else self.text_encoder_lr

    @property
    def train_text_encoder(self) -> bool:
        return self.effective_text_encoder_lr > 0

    @property
    def effective_alpha(self) -> float:
        return float(self.rank) if not self.alpha else float(self.alpha)

    def for_family(self, family) -> TrainConfig:
        """A copy with the settings left unset filled from ``family``'s defaults (resolution, buckets, whether
        the text encoders train)."""
        defaults = family.defaults
        text_encoder_lr = self.text_encoder_lr
        if text_encoder_lr is None and not defaults.train_text_encoders:
            text_encoder_lr = 0.0
        return dataclasses.replace(
            self, family=family.name, text_encoder_lr=text_encoder_lr,
            resolution=self.resolution or defaults.resolution,
            min_bucket_reso=self.min_bucket_reso or defaults.min_bucket_reso,
            max_bucket_reso=self.max_bucket_reso or defaults.max_bucket_reso,
        )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (``None`` values are ignored: "not given")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-friendly values (paths as strings, unset values left out)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = str(value) if isinstance(value, Path) else (list(value) if isinstance(value, list) else value)
        return out

    def validate(self, need_paths: bool = True, need_base: bool = True) -> TrainConfig:
        """Check every value and normalise types; raises :class:`ConfigError` naming the setting."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name in _PATH_FIELDS and not isinstance(value, Path):
                setattr(self, f.name, Path(str(value)).expanduser())
        if isinstance(self.sample_prompts, str):
            self.sample_prompts = [self.sample_prompts]
        if need_paths:
            for name in ("base", "data", "out") if need_base else ("data", "out"):
                if getattr(self, name) is None:
                    raise ConfigError(f"{name} is required (--{name})")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _choice("save_precision", self.save_precision, SAVE_PRECISIONS)
        _choice("backend", self.backend, BACKENDS)
        if not self.name or any(c in self.name for c in '/\\:*?"<>|') or self.name.startswith("."):
            raise ConfigError(f"name {self.name!r} must be a plain file name (no slashes, no leading dot)")
        for name in ("rank", "epochs", "batch_size", "gradient_accumulation", "save_every_n_epochs", "bucket_reso_steps",
                     "sample_steps", "samples_per_prompt", "clip_skip"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("alpha", "lr", "warmup_steps", "noise_offset", "min_snr_gamma", "prior_loss_weight", "keep_tokens",
                     "sample_every_n_epochs", "early_stop_patience", "max_grad_norm"):
            value = getattr(self, name)
            if not math.isfinite(float(value)) or float(value) < 0:
                raise ConfigError(f"{name} must be a finite number >= 0 (got {value})")
        for name in ("unet_lr", "text_encoder_lr"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(float(value)) or float(value) < 0):
                raise ConfigError(f"{name} must be >= 0 (got {value})")
        if self.effective_unet_lr <= 0:
            raise ConfigError("unet_lr must be > 0: a LoRA that trains nothing in the UNet is not supported")
        if self.repeats is not None and self.repeats < 1:
            raise ConfigError(f"repeats must be at least 1 (got {self.repeats})")
        _choice("family", self.family, FAMILY_CHOICES)
        if self.resolution is not None and (self.resolution < 32 or self.resolution % 8):
            raise ConfigError(f"resolution must be a multiple of 8, at least 32 (got {self.resolution})")
        if self.sample_size is not None and (self.sample_size < 32 or self.sample_size % 8):
            raise ConfigError(f"sample_size must be a multiple of 8, at least 32 (got {self.sample_size})")
        if self.min_bucket_reso and self.max_bucket_reso and self.min_bucket_reso > self.max_bucket_reso:
            raise ConfigError("min_bucket_reso must not exceed max_bucket_reso")
        if self.base is not None and need_paths:
            base = Path(self.base)
            if base.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
                raise ConfigError(f"base {base.name}: only .safetensors checkpoints or diffusers folders are loaded "
                                  "(.ckpt/.pt files need unpickling, which can run code; convert it to .safetensors)")
        if self.out is not None and need_paths:
            from ..outputs import OutputError, check_output_folder

            try:
                check_output_folder(Path(self.out))
            except OutputError as exc:
                raise ConfigError(str(exc)) from None
        if self.keep_best and self.score_refs is None:
            raise ConfigError("keep_best needs score_refs (reference photos to score the samples against)")
        if self.early_stop_patience and self.score_refs is None:
            raise ConfigError("early_stop_patience needs score_refs (reference photos to score the samples against)")
        if self.score_refs is not None and not self.sample_every_n_epochs:
            self.sample_every_n_epochs = 1  # scoring needs samples: default to every epoch
        return self


# The CLI's short spellings, accepted as TOML keys too.
ALIASES = {"save_every": "save_every_n_epochs", "grad_accum": "gradient_accumulation", "sample_every": "sample_every_n_epochs",
           "sample_prompt": "sample_prompts", "pack": "score_pack", "early_stop": "early_stop_patience"}

_PATH_FIELDS = {"base", "data", "reg_data", "out", "tokenizer", "tokenizer_2", "base_config", "score_refs", "sd_scripts", "accelerate"}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is not one of: {', '.join(allowed)}")


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_toml(path: Path) -> dict:
    """Parse a TOML file (tomllib on 3.11+, tomli on 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def config_from_mapping(values: Mapping[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
    """Apply ``values`` (TOML keys / host inputs; dashes or underscores) onto ``base`` (default: defaults).

    Raises:
        ConfigError: an unknown key (with the closest known one), or a value of the wrong type.
    """
    import difflib

    known = {f.name: f for f in fields(TrainConfig)}
    changes = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in known:
            hint = difflib.get_close_matches(key, list(known), n=1)
            raise ConfigError(f"{source}: unknown setting {raw_key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        changes[key] = _coerce(key, value, source)
    return dataclasses.replace(base or TrainConfig(), **changes)


def _coerce(key: str, value: Any, source: str) -> Any:
    default = getattr(TrainConfig(), key)
    if key in _PATH_FIELDS:
        return None if value in (None, "") else Path(str(value)).expanduser()
    if key == "sample_prompts":
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{source}: sample_prompts must be a string or a list of strings")
    if value is None:
        return None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{source}: {key} must be true or false (got {value!r})")
    try:
        if key in ("unet_lr", "text_encoder_lr", "alpha", "lr") or isinstance(default, float):
            return float(value)
        if key in ("repeats", "sample_size", "resolution", "min_bucket_reso", "max_bucket_reso") or isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} must be a number (got {value!r})") from None
    return str(value)


def load_config_file(path: Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML training config: the keys of :class:`TrainConfig`, at top level or in ``[train]``.

    Relative paths in the file are taken relative to the file's folder.
    """
    path = Path(path)
    values = read_toml(path)
    if set(values) == {"train"} and isinstance(values["train"], dict):
        values = values["train"]
    config = config_from_mapping(values, base, source=str(path))
    given = {ALIASES.get(k.replace("-", "_"), k.replace("-", "_")) for k in values}
    for name in _PATH_FIELDS:
        value = getattr(config, name)
        if name in given and value is not None and not value.is_absolute():
            setattr(config, name, (path.parent / value))
    return config
