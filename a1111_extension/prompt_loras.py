"""``<lora:name:multiplier>`` tags in A1111 prompts: find them, and put one training run's checkpoint in.

The syntax is A1111's extra-network syntax (``modules/extra_networks.py``: ``re_extra_net`` =
``<(\\w+):([^>]+)>``, arguments split at ``:``) as read by its built-in Lora extension
(``extensions-builtin/Lora/extra_networks_lora.py``): ``<lora:name>``, ``<lora:name:te>``,
``<lora:name:te:unet>``, named ``te=`` / ``unet=`` / ``dyn=``. A1111 itself loads and applies the
LoRA from the rewritten prompt; nothing here touches weights. Pure text, no A1111 import, so it is
tested in CI; the integration test checks A1111's own parser reads what we write.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lora_likeness.labels import parse_kohya_name

#: The pattern of A1111's ``modules.extra_networks.re_extra_net``.
EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:…>`` tag: where it is in the prompt, the network name and its UNet multiplier."""

    start: int
    end: int
    name: str
    strength: float

    @property
    def run(self) -> str:
        """Kohya run name of the network: ``jx265-000010`` -> ``jx265``."""
        return parse_kohya_name(self.name)[0]


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def find_lora_tags(prompt: str) -> list[LoraTag]:
    """Every ``<lora:…>`` / ``<lyco:…>`` tag, in order, with the UNet multiplier A1111 would use
    (``te`` positional or named, then ``unet`` positional or named; 1.0 when absent)."""
    tags = []
    for match in EXTRA_NETWORK_TAG.finditer(prompt):
        if match.group(1).lower() not in LORA_KINDS:
            continue
        items = match.group(2).split(":")
        positional = [item for item in items if "=" not in item]
        named = dict(item.split("=", 1) for item in items if "=" in item)
        te = _float(named.get("te"), _float(positional[1] if len(positional) > 1 else None, 1.0))
        unet = _float(named.get("unet"), _float(positional[2] if len(positional) > 2 else None, te))
        tags.append(LoraTag(match.start(), match.end(), positional[0] if positional else "", unet))
    return tags


def lora_tag(name: str, strength: float) -> str:
    """``<lora:name:0.8>`` (one multiplier: text encoder and UNet alike, as Prompt S/R users write it)."""
    return f"<lora:{name}:{strength:g}>"


def same_run(run_name: str) -> Callable[[LoraTag], bool]:
    """Matches tags of any checkpoint of the Kohya run ``run_name`` (``jx265``, ``jx265-000003``, …)."""
    return lambda tag: tag.run == run_name or tag.name == run_name


def replace_tags(prompt: str, tags: list[LoraTag], new: str) -> str:
    """``prompt`` with the first of ``tags`` replaced by ``new`` and the others removed, each with
    the separator before it."""
    out, position = [], 0
    for index, tag in enumerate(sorted(tags, key=lambda t: t.start)):
        piece = prompt[position:tag.start]
        out.append(piece if index == 0 else re.sub(r"\s*,?\s*$", "", piece))
        if index == 0:
            out.append(new)
        position = tag.end
    out.append(prompt[position:])
    return "".join(out)


def set_lora(prompt: str, name: str, strength: float | None, matches: Callable[[LoraTag], bool]) -> str:
    """Put ``<lora:name:strength>`` in place of the tags ``matches`` selects, or append it.

    Args:
        prompt: the positive prompt.
        name: network name as A1111 knows it (the file stem).
        strength: multiplier; ``None`` keeps the replaced tag's UNet multiplier (1.0 when appended).
        matches: which existing tags this one replaces (other runs' tags stay).
    """
    found = [tag for tag in find_lora_tags(prompt) if matches(tag)]
    if strength is None:
        strength = found[0].strength if found else 1.0
    new = lora_tag(name, strength)
    if found:
        return replace_tags(prompt, found, new)
    stripped = prompt.rstrip()
    if not stripped:
        return new
    return f"{stripped}{'' if stripped.endswith(',') else ','} {new}"


def remove_loras(prompt: str, matches: Callable[[LoraTag], bool]) -> str:
    """``prompt`` without the tags ``matches`` selects, each with the separator before it (after it
    for a tag at the very start)."""
    found = [tag for tag in find_lora_tags(prompt) if matches(tag)]
    if not found:
        return prompt
    out, position = [], 0
    for tag in found:
        out.append(re.sub(r"\s*,?\s*$", "", prompt[position:tag.start]))
        position = tag.end
    text = "".join(out) + prompt[position:]
    return re.sub(r"^\s*,\s*", "", text) if not out[0] else text


def set_strength(prompt: str, tag: LoraTag, strength: float) -> str:
    """``prompt`` with ``tag`` rewritten to ``<lora:its name:strength>``."""
    return prompt[:tag.start] + lora_tag(tag.name, strength) + prompt[tag.end:]
