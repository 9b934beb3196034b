"""X/Y/Z plot axes "Likeness: LoRA epoch" and "Likeness: LoRA strength".

Epoch x strength without Prompt S/R: the epoch axis puts ``<lora:<checkpoint stem>:<strength>>``
into each cell's prompt in place of any tag of the same training run (or appends it), the strength
axis sets that tag's multiplier. A1111's own Lora extra network then loads and applies the file,
exactly as if the user had typed the tag. The two axes may come in any order: each records its
value on the cell's processing object and the tag is rewritten from both. The epoch value ``None``
removes the run's tags: the base model alone, the floor the recommendation compares against.

The axis objects are built from the xyz module's own ``AxisOption`` class and appended to its
``axis_options`` when our script file is imported: under ``--nowebui`` A1111 builds the X/Y/Z UI
(which fixes the list the API's axis indexes refer to) before ``on_before_ui`` callbacks run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from lora_likeness.checkpoints import FOLDER_LORA_FILES, LoraCheckpoint, list_runs, scan_loras
from lora_likeness.recommend import NO_LORA

from .prompt_loras import find_lora_tags, remove_loras, same_run, set_lora, set_strength

EPOCH_AXIS = "Likeness: LoRA epoch"
STRENGTH_AXIS = "Likeness: LoRA strength"
STATE_ATTRIBUTE = "likeness_lora"
NO_LORA_VALUE = "None"
"""Epoch-axis value for the base model without the run's LoRA (``none`` and ``no LoRA`` work too)."""


def _a1111_lora_dir() -> Path:
    from modules import shared  # A1111's --lora-dir (default models/Lora)

    return Path(shared.cmd_opts.lora_dir)


#: Where the LoRA files are; A1111's ``--lora-dir`` unless a test or host sets another provider.
lora_dir: Callable[[], Path] = _a1111_lora_dir


def _extra_lora_dirs() -> list[Path]:
    """Forge Neo's ``--lora-dirs`` (folders its Lora loader lists besides ``--lora-dir``); none elsewhere."""
    try:
        from modules import shared

        extra = getattr(shared.cmd_opts, "lora_dirs", None)
    except ImportError:  # outside A1111 / Forge
        return []
    return [Path(folder) for folder in extra if folder] if isinstance(extra, (list, tuple)) else []


def lora_roots() -> list[Path]:
    """Every folder the host lists LoRA networks from, ``--lora-dir`` first, existing ones only."""
    roots: list[Path] = []
    for root in [lora_dir(), *_extra_lora_dirs()]:
        if root.is_dir() and root.resolve() not in {r.resolve() for r in roots}:
            roots.append(root)
    return roots


def _scan(roots: list[Path]) -> list[LoraCheckpoint]:
    return [checkpoint for root in roots for checkpoint in scan_loras(root)]


@dataclass
class LoraAxisState:
    """What the LoRA axes chose for one cell (kept on the cell's processing object)."""

    stem: str | None = None
    run_name: str | None = None
    epoch: int | None = None
    final: bool = False
    strength: float | None = None
    pending_strength: bool = False
    no_lora: bool = False

    def info(self) -> dict:
        """Group fields for :func:`lora_likeness.labels.group_sort_key` (run, epoch, strength)."""
        return {"run": self.run_name, "epoch": self.epoch, "strength": self.strength}


def state_of(p) -> LoraAxisState:
    """The cell's state; X/Y/Z cells are shallow copies of one object, so only the cell's own
    ``__dict__`` counts."""
    state = vars(p).get(STATE_ATTRIBUTE)
    if state is None:
        state = LoraAxisState()
        setattr(p, STATE_ATTRIBUTE, state)
    return state


def is_no_lora(value) -> bool:
    """The epoch-axis value for "no LoRA": ``None``, ``none``, ``no LoRA``."""
    return str(value).strip().lower() in ("none", "no lora")


def epoch_choices() -> list[str]:
    """``None`` (no LoRA), then every checkpoint stem in the Lora folder: run by run, each run in
    epoch order, final last."""
    roots = lora_roots()
    if not roots:
        return []
    layouts = host_lora_layouts()
    return [NO_LORA_VALUE] + [checkpoint.stem for root in roots for run in list_runs(root).values() for checkpoint in run
                              if checkpoint.format in layouts and checkpoint.path.name not in FOLDER_LORA_FILES]


def host_lora_layouts() -> tuple[str, ...]:
    """The LoRA key layouts the host's own loader applies (:attr:`LoraCheckpoint.format` values).

    A1111's Lora extension maps Kohya keys only: a diffusers/PEFT file loads with no matching keys, so
    ``likeness convert`` turns it into a Kohya file first; so does Forge Classic (its ``ldm_patched`` key map
    has no ``lora_A``/``lora_B``). lllyasviel's Forge (``packages_3rdparty/comfyui_lora_collection``) and
    Forge Neo (``modules_forge/packages/comfy``) load LoRAs with ComfyUI's key map, which also takes
    diffusers/PEFT names (``unet.``, ``transformer.``, ``diffusion_model.``, ``lora_A``/``lora_B``): what
    ai-toolkit and diffusers' scripts write for Flux, Z-Image and SDXL. Folder
    LoRAs (``pytorch_lora_weights`` / ``adapter_model``) stay out everywhere: the host names a network by its
    file stem, and every epoch's file has the same one."""
    import importlib.util

    try:  # lllyasviel's Forge and Forge Neo: modules_forge + backend; Forge Classic has ldm_patched instead of backend
        forge_backend = importlib.util.find_spec("modules_forge") is not None and importlib.util.find_spec("backend") is not None
    except (ImportError, ValueError):
        forge_backend = False
    return ("kohya", "diffusers", "peft") if forge_backend else ("kohya",)


def _runs_text(roots: list[Path]) -> str:
    where = ", ".join(str(root) for root in roots) or str(lora_dir())
    runs = {key: checkpoints for root in roots for key, checkpoints in list_runs(root).items()}
    if not runs:
        return f"no .safetensors LoRA files were found in {where}"
    parts = [f"{key} ({', '.join(c.label for c in checkpoints)})" for key, checkpoints in runs.items()]
    return f"the runs in {where} are: " + "; ".join(parts)


def resolve_checkpoint(value: str, root: Path | None = None) -> LoraCheckpoint:
    """The checkpoint an axis value names: its stem (``jx265-000010``), or its path relative to the
    Lora folder (any of the host's LoRA folders: :func:`lora_roots`) with or without ``.safetensors``.

    Raises:
        RuntimeError: unknown or ambiguous value; the message lists the runs that exist.
    """
    roots = [root] if root is not None else lora_roots()
    text = str(value).strip()
    bare = text[: -len(".safetensors")] if text.lower().endswith(".safetensors") else text
    found = [c for c in _scan([r for r in roots if r.is_dir()]) if c.stem == bare or c.name[: -len(".safetensors")] == bare.replace("\\", "/")]
    if not found:
        raise RuntimeError(f"{EPOCH_AXIS}: no LoRA checkpoint named {text!r}; {_runs_text([r for r in roots if r.is_dir()])}")
    if len({c.path for c in found}) > 1:
        names = ", ".join(c.name for c in found)
        where = " or ".join(str(r) for r in roots)
        raise RuntimeError(f"{EPOCH_AXIS}: {text!r} names several files ({names}); give the path relative to {where}")
    return found[0]


def rewrite_prompt(p) -> None:
    """Write the cell's LoRA choice into ``p.prompt`` (A1111 parses extra networks from it)."""
    state = state_of(p)
    if state.no_lora:  # the run's tags are gone: no strength to set
        state.pending_strength = False
        return
    if state.stem is not None:
        p.prompt = set_lora(p.prompt, state.stem, state.strength, same_run(state.run_name or state.stem))
        state.pending_strength = False
        return
    if state.strength is None:
        return
    tags = find_lora_tags(p.prompt)
    if len(tags) == 1:
        p.prompt = set_strength(p.prompt, tags[0], state.strength)
        state.pending_strength = False
    else:  # the epoch axis (applied later) may still name the LoRA; checked before processing
        state.pending_strength = True


def apply_epoch(p, x, xs) -> None:
    state = state_of(p)
    if is_no_lora(x):
        # The runs the axis' other values name lose their tags in this cell (other LoRAs stay).
        runs = {resolve_checkpoint(value).run_name for value in xs if not is_no_lora(value)}
        p.prompt = remove_loras(p.prompt, lambda tag: any(same_run(run)(tag) for run in runs))
        state.no_lora, state.stem, state.run_name, state.epoch, state.final = True, None, None, None, False
        rewrite_prompt(p)
        return
    checkpoint = resolve_checkpoint(x)
    state.stem, state.run_name = checkpoint.stem, checkpoint.run_name
    state.epoch, state.final = checkpoint.epoch, checkpoint.final
    rewrite_prompt(p)


def apply_strength(p, x, xs) -> None:
    state_of(p).strength = float(x)
    rewrite_prompt(p)


def describe_checkpoints(names) -> dict[str, tuple[str, int | None]]:
    """``name -> (axis label, epoch)`` for the LoRA tag names that are one file of the Lora folder
    (``jx265-000010`` -> ``("jx265 e10", 10)``; the final file's epoch from ``ss_epoch``), read in
    one scan of the folder; other names are left out."""
    try:
        roots = lora_roots()
    except ImportError:  # outside A1111
        return {}
    by_stem: dict[str, list[LoraCheckpoint]] = {}
    for checkpoint in _scan(roots):
        by_stem.setdefault(checkpoint.stem, []).append(checkpoint)
    described = {}
    for name in names:
        found = by_stem.get(name, [])
        if len(found) == 1:
            described[name] = (f"{found[0].run_name} {found[0].label}", found[0].epoch)
    return described


def check_before_processing(p) -> None:
    """Called by our always-on script before a cell is processed.

    Raises:
        RuntimeError: the strength axis found no single LoRA to act on.
    """
    state = vars(p).get(STATE_ATTRIBUTE)
    if state is not None and state.pending_strength:
        tags = [t.name for t in find_lora_tags(p.prompt)]
        which = f"the prompt has {len(tags)} LoRAs ({', '.join(tags)})" if tags else "the prompt has no <lora:…> tag"
        raise RuntimeError(
            f"{STRENGTH_AXIS}: {which}; put exactly one LoRA in the prompt or add the {EPOCH_AXIS} axis to choose it"
        )


def confirm_epochs(p, xs) -> None:
    for x in xs:
        if not is_no_lora(x):
            resolve_checkpoint(x)


def format_epoch(p, opt, x) -> str:
    """``jx265 e10`` / ``jx265 final (e20)`` / ``no LoRA``."""
    if is_no_lora(x):
        return NO_LORA
    try:
        checkpoint = resolve_checkpoint(x)
    except RuntimeError:
        return str(x)
    return f"{checkpoint.run_name} {checkpoint.label}"


def format_strength(p, opt, x) -> str:
    return f"strength {float(x):g}"


def axis_option_class(xyz: ModuleType) -> type:
    """The host's ``AxisOption``: the xyz module's name (A1111, Forge, Forge Classic import it there), else
    ``lib_xyz.classes.AxisOption`` (Forge Classic / Neo define it there)."""
    found = getattr(xyz, "AxisOption", None) or getattr(sys.modules.get("lib_xyz.classes"), "AxisOption", None)
    if found is None:
        raise LookupError(f"no AxisOption in the X/Y/Z script module {xyz.__name__!r} nor in lib_xyz.classes")
    return found


def install_axes(xyz: ModuleType) -> list:
    """Append our two axes to the X/Y/Z script's ``axis_options`` list (once per list) and return them.

    The list is ``xyz.axis_options``; in Forge Classic / Neo that name is ``lib_xyz.builtins.builtin_options``
    (the same list object), looked up there if the script module stops exporting it."""
    axis_options = getattr(xyz, "axis_options", None)
    if axis_options is None:
        axis_options = getattr(sys.modules.get("lib_xyz.builtins"), "builtin_options", None)
    if axis_options is None:
        raise LookupError(f"no axis_options in the X/Y/Z script module {xyz.__name__!r} nor in lib_xyz.builtins")
    existing = {option.label: option for option in axis_options}
    if EPOCH_AXIS in existing and STRENGTH_AXIS in existing:
        return [existing[EPOCH_AXIS], existing[STRENGTH_AXIS]]
    axis_option = axis_option_class(xyz)
    options = [
        axis_option(EPOCH_AXIS, str, apply_epoch, format_value=format_epoch, confirm=confirm_epochs, choices=epoch_choices),
        axis_option(STRENGTH_AXIS, float, apply_strength, format_value=format_strength),
    ]
    axis_options.extend(option for option in options if option.label not in existing)
    return options
