"""LoRA training: one typed config, a built-in diffusers + peft trainer and an sd-scripts backend,
both writing Kohya-format checkpoints per epoch (``likeness train``)."""
