"""LoRA training: one typed config, a built-in diffusers + peft trainer and an sd-scripts backend,
both writing Kohya-format checkpoints per epoch (``likeness train``).

Front doors call one function::

    from lora_likeness.training import TrainConfig, train_lora
    result = train_lora(TrainConfig(base=..., data=..., out=..., name="me", tokenizer=host_tokenizer_dir), progress)

Modules: ``config`` (TrainConfig, TOML), ``data`` (Kohya layout, dataset.toml, buckets), ``network``
(peft LoRA on Kohya's modules), ``kohya_format`` (key names both ways, file names, ss_*/sshs metadata),
``trainer`` (the loop, resume), ``result`` (TrainResult, TrainingCancelled: what either backend returns), ``state``, ``loss_log``, ``samples`` (sample images, identity scores,
early stop), ``sd_scripts`` (the sd-scripts backend), ``command`` (the CLI). Loading a base model and
everything particular to SD1.x or SDXL lives in :mod:`lora_likeness.families`. Importing this package
imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingCancelled", "load_config_file", "train_lora"]


def __getattr__(name: str):
    # Lazy: hosts import every extension at start-up; torch/diffusers load only when training starts.
    if name in ("ConfigError", "TrainConfig", "load_config_file"):
        from . import config

        return getattr(config, name)
    if name in ("TrainResult", "TrainingCancelled"):
        from . import result

        return getattr(result, name)
    if name == "train_lora":
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
