"""The recommendation under a scored X/Y/Z grid: which LoRA checkpoint at which strength to use.

The core decides (:func:`lora_likeness.recommend.recommend`); this module only turns the grid's
cells into the core's per-image records and draws the answer under the grid image.

Which LoRA a cell used is read from the cell's prompt, where every way of sweeping LoRAs in A1111
ends up: our "Likeness: LoRA epoch" / "LoRA strength" axes write ``<lora:stem:strength>`` into it,
and Prompt S/R swaps the user's own tags. Tags that are the same in every cell (a detail LoRA)
are ignored; the one tag left that differs between cells is the swept LoRA. A cell without it, or
with it at strength 0 (an epoch value ``None``, a strength ``0``, an S/R value without the tag), is
the no-LoRA floor. A grid where no LoRA changes between cells gets no recommendation.

Pairing key of an image: the indexes of the axes that do not change the LoRA (a CFG or seed axis),
then its seed and its position among the cell's images of that seed: equal keys in two cells are the
same noise and settings with another LoRA.

With named reference folders (several people, a family LoRA) the answer is the core's worst-served
one (:func:`lora_likeness.people_sweep.recommend_people_records`, as ``likeness sweep --people``
gives) over the same records, each carrying who is in the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lora_likeness import grid as core_grid
from lora_likeness.labels import parse_kohya_name
from lora_likeness.people import PeopleSet
from lora_likeness.people_sweep import PeopleRecommendation, recommend_people_records
from lora_likeness.recommend import NO_LORA, Recommendation, cells_from_records, recommend

from .prompt_loras import find_lora_tags

Position = tuple[int, int, int]
#: LoRA name (file stem as in the tag) -> (checkpoint label, epoch); ``None`` where it is not a file we know.
Describe = Callable[[Sequence[str]], Mapping[str, tuple[str, int | None]]]

# The band under the grid is drawn by the core (the ComfyUI grid carries the same band).
caption_below = core_grid.caption_below


@dataclass(frozen=True)
class LoraChoice:
    """The LoRA one cell used: checkpoint label, strength (``None`` = the no-LoRA floor), epoch."""

    checkpoint: str
    strength: float | None
    epoch: int | None = None
    step: int | None = None
    """The training step its name says (``-step00000500``, ai-toolkit's ``_000000500``): the order of a run
    saved by steps, which has no epochs."""

    @property
    def is_floor(self) -> bool:
        return self.strength is None


FLOOR = LoraChoice(NO_LORA, None)


def describe_by_name(names: Sequence[str]) -> dict[str, tuple[str, int | None]]:
    """Labels from the names alone (Kohya's ``run-0000NN`` suffix): ``run e10``; the final file keeps its name."""
    described = {}
    for name in names:
        run, epoch, step = parse_kohya_name(name)
        label = f"{run} e{epoch}" if epoch is not None else f"{run} step {step}" if step is not None else name
        described[name] = (label, epoch)
    return described


def lora_choices(prompts: Mapping[Position, str], describe: Describe = describe_by_name,
                 ) -> tuple[dict[Position, LoraChoice] | None, str | None]:
    """The LoRA each cell used, from the cells' prompts; ``(None, reason)`` when the grid does not
    sweep one LoRA (``reason`` None: no LoRA changes between cells, so there is nothing to recommend)."""
    tags = {position: find_lora_tags(prompt or "") for position, prompt in prompts.items()}
    if not tags:
        return None, None
    signatures = [{(tag.name, tag.strength) for tag in found} for found in tags.values()]
    everywhere = set.intersection(*signatures)
    swept = {position: [t for t in found if (t.name, t.strength) not in everywhere] for position, found in tags.items()}
    if not any(swept.values()):
        return None, None
    for position, found in swept.items():
        if len({tag.name for tag in found}) > 1:
            names = ", ".join(sorted({tag.name for tag in found}))
            return None, f"a cell changes several LoRAs at once ({names}): the recommendation compares one LoRA's checkpoints"
    names = sorted({found[0].name for found in swept.values() if found})
    described = {**describe_by_name(names), **dict(describe(names))}
    choices = {}
    for position, found in swept.items():
        if not found or found[0].strength == 0:
            choices[position] = FLOOR
        else:
            label, epoch = described[found[0].name]
            step = parse_kohya_name(found[0].name)[2]
            choices[position] = LoraChoice(label, float(found[0].strength), None if step is not None else epoch, step)
    return choices, None


def lora_axes(choices: Mapping[Position, LoraChoice]) -> set[int]:
    """The axes (0 = x, 1 = y, 2 = z) along which the LoRA choice changes somewhere."""
    axes = set()
    for axis in range(3):
        seen: dict[tuple, LoraChoice] = {}
        for position, choice in choices.items():
            rest = tuple(index for a, index in enumerate(position) if a != axis)
            if seen.setdefault(rest, choice) != choice:
                axes.add(axis)
                break
    return axes


def _progress(choice: LoraChoice) -> float:
    """Where a cell's checkpoint sits in training: its epoch, else its step (a run saved by steps), else last."""
    if choice.epoch is not None:
        return choice.epoch
    return math.inf if choice.step is None else choice.step


def grid_records(cells: Mapping[Position, object], choices: Mapping[Position, LoraChoice]) -> list[dict]:
    """The core's per-image records (see :func:`lora_likeness.recommend.cells_from_records`), the
    floor first, then by epoch (a run saved by steps: by step; unknown last), then in grid order. ``cells`` are the xyz hooks'
    ``CellScores`` (``images``: their ``value`` and ``score.memorised``; ``seeds``: one per image).

    The floor may be several cells with the same images (``None`` at every strength, or strength
    0 at every epoch: the same base model, seeds and settings): its repeats are left out.

    A cell that produced no image (``failure``: its reason and how many images it was to make) gives
    one ``missing`` record per image, which the core counts as missing rather than as "no face"; a
    failed floor cell only where no other floor cell made those images.
    """
    swept = lora_axes(choices)
    order = sorted(cells, key=lambda position: (
        not choices[position].is_floor,
        _progress(choices[position]),
        position[2], position[1], position[0],
    ))
    records, floor_keys, failed_floor = [], set(), {}
    for position in order:
        cell, choice = cells[position], choices[position]
        fixed = tuple(index for axis, index in enumerate(position) if axis not in swept)
        failure = getattr(cell, "failure", None)
        if failure is not None:
            missing = [{"checkpoint": choice.checkpoint, "strength": choice.strength, "epoch": choice.epoch,
                        "missing": failure.reason}] * failure.expected
            if choice.is_floor:
                failed_floor.setdefault(fixed, missing)
            else:
                records += missing
            continue
        seeds = list(getattr(cell, "seeds", None) or [])
        taken: dict = {}
        for index, image in enumerate(cell.images):
            seed = seeds[index] if index < len(seeds) else None
            key = (*fixed, seed, taken.get(seed, 0))
            taken[seed] = key[-1] + 1
            if choice.is_floor:
                if key in floor_keys:
                    continue
                floor_keys.add(key)
            records.append({
                "checkpoint": choice.checkpoint, "strength": choice.strength, "epoch": choice.epoch,
                "score": image.value, "key": key, "memorised": int(bool(image.score.memorised)),
                "people": getattr(image, "people", None),  # who is in the image, with named reference folders
            })
    made = {key[:-2] for key in floor_keys}  # (fixed axes, seed, index) -> fixed axes
    floor = [record for fixed, missing in failed_floor.items() if fixed not in made for record in missing]
    return floor + records if floor else records


def recommend_grid(cells: Mapping[Position, object], prompts: Mapping[Position, str], ceiling: float | None,
                   describe: Describe = describe_by_name) -> tuple[Recommendation | None, str | None]:
    """The core's recommendation for a scored grid, or ``(None, reason)`` (see :func:`lora_choices`)."""
    choices, reason = lora_choices(prompts, describe)
    if choices is None:
        return None, reason
    return recommend(cells_from_records(grid_records(cells, choices)), ceiling=ceiling), None


def recommend_people_grid(cells: Mapping[Position, object], prompts: Mapping[Position, str], people: PeopleSet,
                          describe: Describe = describe_by_name, seed: int = 0, n_boot: int = 2000,
                          ) -> tuple[PeopleRecommendation | None, str | None]:
    """The core's family recommendation for a grid scored against named reference folders: the cell
    best for the worst-served person, or ``(None, reason)`` as :func:`recommend_grid` says."""
    choices, reason = lora_choices(prompts, describe)
    if choices is None:
        return None, reason
    return recommend_people_records(people, grid_records(cells, choices), seed=seed, n_boot=n_boot), None


def recommendation_lines(recommendation: Recommendation) -> list[str]:
    """The headline, then one line per warning."""
    return recommendation.lines(warning_prefix="Warning: ")


