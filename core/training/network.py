"""The LoRA network: peft LoRA layers on exactly the modules sd-scripts' ``networks.lora`` targets.

peft's ``lora_A``/``lora_B`` are Kohya's ``lora_down``/``lora_up`` (same shapes, same initialisation:
Kaiming-uniform down, zero up; same scale ``alpha / rank``), so a Kohya file is a renaming of the
adapter's tensors (:mod:`.kohya_format` holds the names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .kohya_format import LoraComponent, LoraTarget, find_targets

ADAPTER = "likeness"


@dataclass
class LoraNetwork:
    """LoRA layers attached to a model's components (the UNet, and the text encoders when they are trained)."""

    modules: dict[str, Any]
    """Component name (``unet``, ``text_encoder``, ``text_encoder_2``) → its torch module."""
    targets: list[LoraTarget]
    rank: int
    alpha: float

    def _layer(self, target: LoraTarget):
        return self.modules[target.component].get_submodule(target.path)

    @property
    def components(self) -> list[str]:
        """Components that carry LoRA layers, in target order."""
        return list(dict.fromkeys(t.component for t in self.targets))

    def pairs(self, *components: str):
        """``(target, down_weight, up_weight)`` per target (the live parameters), of ``components`` (default all)."""
        for target in self.targets:
            if components and target.component not in components:
                continue
            layer = self._layer(target)
            yield target, layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight

    def parameters(self, *components: str) -> list:
        out = []
        for _, down, up in self.pairs(*components):
            out += [down, up]
        return out

    def named_parameters(self) -> list[tuple[str, object]]:
        """Stable names (the Kohya tensor names) for every trainable parameter, in a fixed order."""
        out = []
        for target, down, up in self.pairs():
            out += [(f"{target.key}.lora_down.weight", down), (f"{target.key}.lora_up.weight", up)]
        return out

    def kohya_state_dict(self, dtype=None) -> dict:
        """Kohya tensors on CPU: ``lora_down``/``lora_up`` per module and its ``alpha`` (all in ``dtype``)."""
        import torch

        out = {}
        for target, down, up in self.pairs():
            tensor_dtype = dtype or down.dtype
            out[f"{target.key}.lora_down.weight"] = down.detach().to("cpu", tensor_dtype).clone()
            out[f"{target.key}.lora_up.weight"] = up.detach().to("cpu", tensor_dtype).clone()
            out[f"{target.key}.alpha"] = torch.tensor(float(self.alpha), dtype=tensor_dtype)
        return out

    def load_kohya_state_dict(self, state: dict) -> None:
        """Copy Kohya tensors into the live parameters (resume); every module must be present."""
        import torch

        missing = []
        with torch.no_grad():
            for target, down, up in self.pairs():
                for name, param in ((f"{target.key}.lora_down.weight", down), (f"{target.key}.lora_up.weight", up)):
                    if name not in state:
                        missing.append(name)
                        continue
                    param.copy_(state[name].to(param.device, param.dtype))
        if missing:
            raise ValueError(f"saved state lacks {len(missing)} LoRA tensors (first: {missing[0]}); it belongs to another network shape")


def attach_lora(components: Sequence[LoraComponent], rank: int, alpha: float) -> LoraNetwork:
    """Add peft LoRA layers (float32, trainable) to the Kohya target modules of ``components`` (from the model
    family's :meth:`~lora_likeness.families.ModelFamily.lora_components`); their base weights are frozen."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    targets = find_targets(components)
    for component in components:
        component.module.requires_grad_(False)
        paths = [t.path for t in targets if t.component == component.name]
        if not paths:
            continue
        # A full-match regex over exact paths: peft's list form also matches suffixes.
        pattern = "^(?:" + "|".join(p.replace(".", r"\.") for p in paths) + ")$"
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern, lora_dropout=0.0, init_lora_weights=True, bias="none")
        inject_adapter_in_model(config, component.module, adapter_name=ADAPTER)
    network = LoraNetwork({c.name: c.module for c in components}, targets, rank, alpha)
    for param in network.parameters():
        param.data = param.data.to(torch.float32)
        param.requires_grad_(True)
    return network


def initialise_like_kohya(network: LoraNetwork, seed: int) -> None:
    """Re-draw the down weights from a generator seeded by ``seed`` (Kaiming-uniform, a=√5) and zero the up
    weights: the initial LoRA depends on the seed only, not on how much random state loading used."""
    import math

    import torch

    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, down, up in network.pairs():
            fan_in = down[0].numel()
            gain = math.sqrt(2.0 / (1 + 5))  # kaiming_uniform_ with a = sqrt(5)
            bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)
            values = torch.rand(down.shape, generator=generator, dtype=torch.float32) * (2 * bound) - bound
            down.copy_(values.to(down.device, down.dtype))
            up.zero_()
