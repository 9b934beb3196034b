"""Switching LoRAs on a loaded pipeline (any model family) without touching (or reloading) the base model.

The LoRA sits in peft layers wrapped around the Kohya target modules (:mod:`..training.kohya_format`
names them, the same mapping the trainer writes with): the base weights stay where they are, bit for
bit, and a LoRA's effect is ``strength · alpha / rank · up @ down`` added to each module's output.

* A LoRA with the same modules and ranks as the one loaded (every epoch of one run) is switched by
  copying its tensors into the existing layers: no module is created, nothing is re-allocated.
* Another shape (another run, another rank) gets fresh layers; the old ones are deleted first.
* The strength is the layers' ``scaling``; no LoRA (the baseline) disables the layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..training.kohya_format import LoraComponent, find_targets, kohya_to_peft, target_map


class LoraLoadError(ValueError):
    """A LoRA file that cannot be applied to this base model; the message says why."""


@dataclass
class LoadedLora:
    """A LoRA file's tensors, mapped onto the base model's modules.

    ``tensors[component][path]`` is ``(down, up)`` (``[rank, in(,1,1)]``, ``[out, rank(,1,1)]``),
    ``alphas[component][path]`` the module's alpha; ``unknown`` lists module keys the base model lacks.
    """

    path: Path
    tensors: dict[str, dict[str, tuple]]
    alphas: dict[str, dict[str, float]]
    unknown: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple:
        """Which modules at which rank: equal shapes can be switched by copying tensors."""
        return tuple(sorted((c, p, int(d.shape[0])) for c, paths in self.tensors.items() for p, (d, _) in paths.items()))

    @property
    def n_modules(self) -> int:
        return sum(len(v) for v in self.tensors.values())


def read_lora_tensors(path: Path, fmt: str = "kohya", naming=None) -> dict:
    """A LoRA file's tensors in Kohya naming (diffusers/PEFT files are renamed by :mod:`.convert`, with ``naming``:
    the Kohya key of a (component, module path); default SD1.x's)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LoraLoadError(f"{path.name}: only .safetensors LoRAs are loaded (other formats would need unpickling)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # any unreadable file: say which and why
        raise LoraLoadError(f"{path.name}: not a readable safetensors file ({exc})") from exc
    if fmt != "kohya":
        from ..training.kohya_format import read_metadata
        from .convert import ConversionError, convert_state_dict, read_lora_settings

        try:
            settings, source = read_lora_settings(path, read_metadata(path))
            tensors = convert_state_dict(tensors, settings, settings_source=source, source_format=fmt, naming=naming).tensors
        except ConversionError as exc:
            raise LoraLoadError(f"{path.name}: {exc}") from exc
    return tensors


class LoraSwitcher:
    """Applies one LoRA at a time, at a given strength, to a model's components (in place).

    ``components`` come from the model family's :meth:`~lora_likeness.families.ModelFamily.lora_components`:
    the UNet and every text encoder, with their Kohya prefixes and names.
    """

    def __init__(self, components: list[LoraComponent], device=None, dtype=None) -> None:
        self.modules = {c.name: c.module for c in components}
        self.components = {c.name: c for c in components}
        self.device = device
        self.dtype = dtype
        self.targets = target_map(find_targets(components))
        self.current: LoadedLora | None = None
        self.adapter: str | None = None
        self.strength = 0.0
        self._serial = 0
        self.switches = {"copied": 0, "injected": 0}

    # -- loading --------------------------------------------------------------------------------

    def kohya_module_key(self, component: str, path: str) -> str | None:
        """The Kohya key of the module diffusers calls ``path`` in ``component`` of this model (how a diffusers/PEFT
        file is renamed); ``None`` when the model has no such component."""
        from ..training.kohya_format import kohya_key

        found = self.components.get(component)
        return None if found is None else kohya_key(found.prefix, found.kohya_path(path))

    def load(self, path: Path, fmt: str = "kohya") -> LoadedLora:
        """Read ``path`` and map it onto this model's modules (nothing is applied yet).

        Raises:
            LoraLoadError: unreadable, or not one module of it exists in this model (another architecture).
        """
        state = read_lora_tensors(path, fmt, naming=self.kohya_module_key)
        flat, alphas, unknown = kohya_to_peft(state, targets=self.targets)
        tensors: dict[str, dict[str, tuple]] = {}
        for component, named in flat.items():
            for name, value in named.items():
                module, kind = name.rsplit(".lora_", 1)
                pair = tensors.setdefault(component, {}).setdefault(module, [None, None])
                pair[0 if kind.startswith("A") else 1] = value
        incomplete = [m for c in tensors.values() for m, (d, u) in c.items() if d is None or u is None]
        tensors = {component: {m: (d, u) for m, (d, u) in paths.items() if d is not None and u is not None}
                   for component, paths in tensors.items()}
        loaded = LoadedLora(Path(path), tensors, alphas, unknown + incomplete)
        if not loaded.n_modules:
            raise LoraLoadError(f"{Path(path).name}: none of its {len(unknown)} modules exist in this base model "
                                f"(first: {unknown[0] if unknown else 'none'}); is it a LoRA for this model family, in Kohya or diffusers format?")
        return loaded

    # -- applying -------------------------------------------------------------------------------

    def apply(self, lora: LoadedLora, strength: float) -> str:
        """Make ``lora`` the active LoRA at ``strength``; returns ``"copied"`` or ``"injected"``."""
        import torch

        if self.current is not None and self.current.shape == lora.shape and self.adapter is not None:
            how = "copied"
            with torch.no_grad():
                for component, path, down, up in self._items(lora):
                    layer = self._module(component, path)
                    layer.lora_A[self.adapter].weight.copy_(down)
                    layer.lora_B[self.adapter].weight.copy_(up)
        else:
            how = "injected"
            self.remove()
            self._inject(lora)
        self.current = lora
        self.set_strength(strength)
        self.switches[how] += 1
        return how

    def set_strength(self, strength: float) -> None:
        """Scale the active LoRA (``strength`` 1.0 = as trained); layers are enabled again if disabled."""
        if self.current is None or self.adapter is None:
            raise LoraLoadError("no LoRA is loaded")
        for component, path, down, _ in self._items(self.current):
            layer = self._module(component, path)
            alpha = self.current.alphas.get(component, {}).get(path, float(down.shape[0]))
            layer.scaling[self.adapter] = float(strength) * alpha / int(down.shape[0])
            layer.enable_adapters(True)
        self.strength = float(strength)

    def disable(self) -> None:
        """Generate with the base model alone (the layers stay, switched off)."""
        if self.current is None:
            return
        for component, path, _, _ in self._items(self.current):
            self._module(component, path).enable_adapters(False)

    def remove(self) -> None:
        """Delete the LoRA layers' adapter (the peft wrappers stay, with no adapter they are the base layer)."""
        if self.current is None or self.adapter is None:
            return
        for component, path, _, _ in self._items(self.current):
            self._module(component, path).delete_adapter(self.adapter)
        self.current, self.adapter = None, None

    # -- internals ------------------------------------------------------------------------------

    def _items(self, lora: LoadedLora):
        for component, paths in lora.tensors.items():
            for path, (down, up) in paths.items():
                yield component, path, down, up

    def _root(self, component: str):
        return self.modules[component]

    def _module(self, component: str, path: str):
        return self._root(component).get_submodule(path)

    def _inject(self, lora: LoadedLora) -> None:
        import re
        import warnings

        import torch
        from peft import LoraConfig, inject_adapter_in_model

        self._serial += 1
        adapter = f"likeness_sweep_{self._serial}"
        for component, paths in lora.tensors.items():
            if not paths:
                continue
            ranks = {path: int(down.shape[0]) for path, (down, _) in paths.items()}
            common = max(set(ranks.values()), key=list(ranks.values()).count)
            pattern = "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"
            rank_pattern = {f"^{re.escape(p)}$": r for p, r in ranks.items() if r != common}
            config = LoraConfig(r=common, lora_alpha=common, target_modules=pattern, rank_pattern=rank_pattern,
                                lora_dropout=0.0, bias="none", init_lora_weights=False)
            with warnings.catch_warnings():
                # A second run's layers join the first's peft_config on purpose (the old adapter is already deleted).
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                inject_adapter_in_model(config, self._root(component), adapter_name=adapter)
        self.adapter = adapter
        with torch.no_grad():
            for component, path, down, up in self._items(lora):
                layer = self._module(component, path)
                base = layer.get_base_layer().weight
                for holder, tensor in ((layer.lora_A[adapter], down), (layer.lora_B[adapter], up)):
                    holder.to(device=self.device or base.device, dtype=self.dtype or base.dtype)
                    holder.weight.requires_grad_(False)
                    holder.weight.copy_(tensor)
