"""For test modules that train, sweep, convert or score adherence: ``torch = require_training_stack()``.

- torch not installed: the module is skipped (the core-only venv of ``.ci/oldest_pins.sh``, a host venv).
- torch installed but the stack (torch, diffusers, transformers, peft, ...) does not import: the module
  fails to collect with one message that names what failed and every package outside the tested ranges
  of ``lora-likeness[train]``, and pytest stops before running anything. ``pytest.importorskip`` would
  have skipped such a module silently and let a broken install pass.
"""

from __future__ import annotations

import importlib.util

import pytest

_failure: list[str | None] = []  # the probe runs once per session


def require_training_stack():
    """torch, once diffusers, transformers and peft are known to import (see the module docstring)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the training tests need the `test` extra and a torch build)", allow_module_level=True)
    from lora_likeness import dependencies
    from lora_likeness.training.stack import import_failure

    if not _failure:
        failure = import_failure()
        _failure.append(failure and dependencies.training_stack_conflict(failure))
    if _failure[0]:
        pytest.fail(_failure[0], pytrace=False)
    import torch

    return torch
