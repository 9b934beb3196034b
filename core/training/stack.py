"""Does the training stack (torch, diffusers, transformers, peft) work here? If not, say why in one message.

The built-in trainer, the sweep and ``likeness convert``'s checks import these packages deep inside
their work; a broken combination (say a transformers release that refuses the installed peft) would
surface there as an ImportError traceback, after a dataset was prepared. :func:`require_training_stack`
imports what they import, up front, and turns a failure into :class:`TrainingStackError` whose
message names what failed and every installed package outside the ranges ``lora-likeness[train]``
is tested with (``lora_likeness.dependencies``). Importing this module imports nothing heavy.
"""

from __future__ import annotations

import importlib

from .. import dependencies

#: (module, names) that the built-in trainer, the model families (SD1, SDXL), the sweep and the CLIP
#: adherence score import.
ENTRY_POINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torch", ()),
    ("safetensors.torch", ("load_file", "save")),
    ("huggingface_hub", ("snapshot_download",)),
    ("transformers", ("CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer")),
    ("diffusers", ("AutoencoderKL", "DDPMScheduler", "EulerDiscreteScheduler", "StableDiffusionPipeline",
                   "StableDiffusionXLPipeline", "UNet2DConditionModel")),
    ("diffusers.optimization", ("get_scheduler",)),
    ("diffusers.models.attention_processor", ("AttnProcessor",)),
    ("peft", ("LoraConfig", "inject_adapter_in_model")),
)


class TrainingStackError(RuntimeError):
    """The training stack cannot be imported; the message names the conflict and the fix."""


def import_failure() -> str | None:
    """None when every entry point imports, else what failed: ``from peft import LoraConfig: ImportError: …``."""
    for module_name, names in ENTRY_POINTS:
        statement = f"from {module_name} import {', '.join(names)}" if names else f"import {module_name}"
        try:
            module = importlib.import_module(module_name)
            for name in names:
                getattr(module, name)  # diffusers and transformers import lazily: this is the real import
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding (ImportError, RuntimeError, AttributeError, …)
            if module_name == "torch" and isinstance(exc, ModuleNotFoundError) and exc.name == "torch":
                return "torch is not installed (install the torch build for your machine first; Likeness never installs torch)"
            # diffusers and transformers wrap the real ImportError in "Failed to import …, look up to see its traceback"
            return f"{statement}: {_first_line(_root_cause(exc))}"
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def require_training_stack() -> None:
    """Raise :class:`TrainingStackError` when the training stack cannot be imported."""
    failure = import_failure()
    if failure is not None:
        raise TrainingStackError(dependencies.training_stack_conflict(failure))


def describe_import_error(error: ImportError) -> str:
    """The conflict message for an ImportError caught while training or sweeping."""
    return dependencies.training_stack_conflict(f"{type(error).__name__}: {error}")
