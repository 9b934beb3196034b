"""Sweeps of a family LoRA: one prompt per group of people the dataset covers, and the cell that is
best for the worst-served person.

A dataset made by ``likeness prepare --identity`` records its people (trigger word, reference photos,
class word) and its coverage matrix (how many kept photos show exactly each subset of them) in its
``report.json``; :func:`read_dataset_people` reads them back and :func:`subset_prompts` writes one
sweep prompt per covered subset (each person, each pair, all). :func:`recommend_for_people` ranks the
sweep's cells by their worst-served person (:func:`~lora_likeness.people.relative_served`), so the
checkpoint it picks is the one the whole family can use, not the one that is best for dad alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .people import PeopleGroupStats, PeopleInImage, PeopleSet, PersonStats, people_group_statistics, relative_served
from .recommend import NO_FACE_RISE, NO_FACE_RISE_MIN_RATE, NO_LORA

#: Blending that climbs by this much (absolute, 0..1) from the first checkpoint to the last at one
#: strength, ending at least this high, is flagged: the same rule as a rising no-face rate.
BLEND_RISE = NO_FACE_RISE
BLEND_RISE_MIN_RATE = NO_FACE_RISE_MIN_RATE


@dataclass(frozen=True)
class DatasetPeople:
    """The people of a multi-identity dataset.

    Attributes:
        names: trigger words, in the dataset's order.
        refs: each person's reference photos (folder or file), as the dataset was prepared with.
        class_words: each person's class word (``man``, ``woman``, ``girl``…), ``""`` when none.
        covered: the subsets with at least one kept photo showing exactly them, singles first.
    """

    names: tuple[str, ...]
    refs: dict[str, Path]
    class_words: dict[str, str]
    covered: tuple[tuple[str, ...], ...]


def read_dataset_people(dataset: Path) -> DatasetPeople | None:
    """The people recorded in ``dataset/report.json`` by ``likeness prepare --identity``; ``None``
    for a single-person dataset or a folder without that report. Relative reference folders are
    taken relative to where ``prepare`` ran, as recorded, else to the dataset's parent."""
    try:
        report = json.loads((Path(dataset) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    identities = (report.get("settings") or {}).get("identities") or []
    if not isinstance(identities, list) or len(identities) < 2:
        return None
    names, refs, classes = [], {}, {}
    default_class = (report.get("settings") or {}).get("class_word") or ""
    for item in identities:
        if not isinstance(item, dict) or not item.get("name"):
            continue
        name = str(item["name"])
        names.append(name)
        folder = Path(str(item.get("refs") or ""))
        if not folder.is_absolute() and not folder.exists():
            folder = Path(dataset).resolve().parent / folder
        refs[name] = folder
        classes[name] = str(item.get("class_word") or default_class)
    covered = tuple(tuple(row["identities"]) for row in report.get("coverage") or []
                    if isinstance(row, dict) and row.get("exactly", 0) > 0 and set(row.get("identities", ())) <= set(names))
    return DatasetPeople(tuple(names), refs, classes, covered)


def people_phrase(names: Sequence[str], class_words: dict[str, str] | None = None) -> str:
    """``ohwxdad man``, ``ohwxdad man and ohwxmum woman``, ``a, b and c``: how a prompt names people."""
    parts = [f"{name} {class_words[name]}".strip() if class_words and class_words.get(name) else name for name in names]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def subset_prompts(people: DatasetPeople, template: str = "photo of {people}") -> list[str]:
    """One prompt per covered subset (``template``'s ``{people}`` is :func:`people_phrase`); every
    subset of one or more people when the dataset records no coverage."""
    subsets = people.covered or tuple((name,) for name in people.names) + (tuple(people.names),)
    return [template.format(people=people_phrase(subset, people.class_words)) for subset in subsets]


# --------------------------------------------------------------------------------------------
# Recommendation
# --------------------------------------------------------------------------------------------


@dataclass
class PeopleCell:
    """One sweep cell's images, as people: ``images`` holds each readable image's assignment."""

    checkpoint: str
    strength: float | None
    epoch: int | None
    order: int
    images: list[PeopleInImage] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.checkpoint if self.strength is None else f"{self.checkpoint} @ {self.strength:g}"


@dataclass
class PeopleCellResult:
    """A cell's per-person statistics and its worst-served person's relative served score."""

    cell: PeopleCell
    stats: PeopleGroupStats
    worst_relative: float | None

    def as_dict(self) -> dict:
        return {"checkpoint": self.cell.checkpoint, "strength": self.cell.strength, "epoch": self.cell.epoch,
                "n_images": len(self.cell.images), "worst_relative": self.worst_relative, **self.stats.as_dict()}


@dataclass
class PeopleRecommendation:
    """The cell best for the worst-served person, every cell's breakdown, and warnings.

    ``best`` is ``None`` with a ``reason`` when no cell can be recommended for the whole family (no
    LoRA cell expects anyone, or no cell shows every person it expects); ``best_per_person`` then
    still says, as information, which cell serves each person best."""

    best: PeopleCellResult | None
    results: list[PeopleCellResult]
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None
    """Why there is no recommendation, when there is none."""
    best_per_person: dict[str, PeopleCellResult] = field(default_factory=dict)
    """Each expected person's best LoRA cell by their own relative served score (information, not a pick)."""

    def as_dict(self) -> dict:
        per_person = {name: {"checkpoint": r.cell.checkpoint, "strength": r.cell.strength, "epoch": r.cell.epoch,
                             "served": r.stats.people[name].served, "mean": r.stats.people[name].mean,
                             "presence_rate": r.stats.people[name].presence_rate}
                      for name, r in self.best_per_person.items()}
        return {"best": self.best.as_dict() if self.best else None, "reason": self.reason, "best_per_person": per_person,
                "cells": [r.as_dict() for r in self.results], "warnings": list(self.warnings)}

    def lines(self, warning_prefix: str = "warning: ") -> list[str]:
        """:meth:`sentence`, then one line per warning (what a host shows under its grid)."""
        return [self.sentence(), *[f"{warning_prefix}{warning}" for warning in self.warnings]]

    def result_for(self, checkpoint: str, strength: float | None) -> PeopleCellResult | None:
        """The result of the cell made with ``checkpoint`` at ``strength`` (``None``: the no-LoRA cell)."""
        for result in self.results:
            if result.cell.strength == strength and (strength is None or result.cell.checkpoint == checkpoint):
                return result
        return None

    def sentence(self) -> str:
        """One line: the recommended cell with every expected person (a missing one named as missing),
        or why there is none and each person's best cell."""
        if self.best is None:
            text = f"No recommendation for the whole family: {self.reason}"
            per_person = []
            for name in self._expected_names():
                best = self.best_per_person.get(name)
                per_person.append(f"{name} {best.cell.label} ({_person_text(best.stats.people[name])})" if best
                                  else f"{name} missing (0%) in every cell")
            return text + (f". Best cell per person: {', '.join(per_person)}." if per_person else ".")
        stats = self.best.stats
        parts = [f"{name} {_person_text(p)}" for name, p in stats.people.items() if p.n_expected]
        return (f"Best for the whole family: {self.best.cell.label}; its worst-served person is {stats.worst_served} at "
                f"{self.best.worst_relative:.0%} of their own photos' likeness. Per person: {', '.join(parts)}; "
                f"all present in {stats.all_present_rate:.0%}, blended in {stats.blend_rate:.0%} of images.")

    def _expected_names(self) -> list[str]:
        """People expected in at least one LoRA cell, in the people's order."""
        lora = [r for r in self.results if r.cell.strength is not None]
        names = list(lora[0].stats.people) if lora else []
        return [n for n in names if any(r.stats.people[n].n_expected for r in lora)]


def _person_text(stats: PersonStats) -> str:
    """``0.796 (present 100%)``, or ``missing (0%)`` for an expected person never found."""
    if stats.mean is None or not stats.n_found:
        return f"missing ({stats.presence_rate or 0:.0%})"
    return f"{stats.mean:.3f} (present {stats.presence_rate:.0%})"


def _field(record, key: str):
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def people_cells_from_records(records: Iterable) -> list[PeopleCell]:
    """Sweep cells of people from flat per-image records (what hosts hold; the shape of
    :func:`~lora_likeness.recommend.cells_from_records`): ``checkpoint``, ``strength`` (``None``: no
    LoRA), optional ``epoch`` and ``order``, and ``people``, the image's
    :class:`~lora_likeness.people.PeopleInImage` (``None`` for an image that could not be read or was
    never made: it is in no statistic). Cells come out no-LoRA first, then in first-seen checkpoint
    order (or ``order`` when given), strengths ascending, as :func:`recommend_for_people` wants them."""
    cells: dict[tuple, PeopleCell] = {}
    for record in records:
        strength = _field(record, "strength")
        strength = None if strength is None else float(strength)
        checkpoint = NO_LORA if strength is None else str(_field(record, "checkpoint"))
        order = _field(record, "order")
        key = (checkpoint, strength)
        if key not in cells:
            seen = len({c.checkpoint for c in cells.values() if c.strength is not None})
            known = next((c.order for c in cells.values() if c.checkpoint == checkpoint and c.strength is not None), None)
            rank = -1 if strength is None else known if known is not None else int(order) if isinstance(order, int) else seen
            cells[key] = PeopleCell(checkpoint, strength, _field(record, "epoch"), rank)
        assigned = _field(record, "people")
        if assigned is not None:
            cells[key].images.append(assigned)
    return sorted(cells.values(), key=lambda c: (c.strength is not None, c.order, c.strength or 0.0))


def recommend_people_records(people: PeopleSet, records: Iterable, seed: int = 0, n_boot: int = 2000) -> PeopleRecommendation:
    """The family recommendation of a host's grid: :func:`recommend_for_people` over
    :func:`people_cells_from_records` (the one call the ComfyUI and A1111 grids make)."""
    return recommend_for_people(people, people_cells_from_records(records), seed=seed, n_boot=n_boot)


def recommend_for_people(people: PeopleSet, cells: Sequence[PeopleCell], seed: int = 0, n_boot: int = 2000) -> PeopleRecommendation:
    """Rank LoRA cells (``strength`` not ``None``) by the relative served score of their worst-served
    person, ties broken by the all-present rate then by a lower blend rate.

    Warnings: a person expected in the sweep who never appears in any LoRA cell; blending that rises
    with epochs at one strength (:data:`BLEND_RISE`)."""
    results = []
    for cell in cells:
        stats = people_group_statistics(people, cell.images, seed=seed, n_boot=n_boot)
        worst = stats.people.get(stats.worst_served) if stats.worst_served else None
        results.append(PeopleCellResult(cell, stats, relative_served(people, worst) if worst else None))
    candidates = [r for r in results if r.cell.strength is not None and r.worst_relative is not None]
    warnings: list[str] = []
    lora_results = [r for r in results if r.cell.strength is not None]
    for name in people.names:
        expected = sum(r.stats.people[name].n_expected for r in lora_results)
        if expected and not any(r.stats.people[name].n_found for r in lora_results):
            warnings.append(f"{name} never appears: expected in {expected} image(s) over every checkpoint and strength, found in none "
                            f"(the LoRA has not learnt {name}, or another person's face takes their place)")
    warnings.extend(_rising_blend_warnings(lora_results))
    if not candidates:
        return PeopleRecommendation(None, results, warnings, reason="no LoRA cell has an image that expects anyone")
    per_person = _best_per_person(people, candidates)
    # A cell where someone it expects never appears serves them 0: with that in every cell all cells
    # tie at 0 and no cell serves the whole family, so none is picked.
    complete = [r for r in candidates if all(p.n_found for p in r.stats.people.values() if p.n_expected)]
    if not complete:
        return PeopleRecommendation(None, results, warnings, reason=_nobody_complete_reason(candidates), best_per_person=per_person)
    best = max(complete, key=lambda r: (r.worst_relative, r.stats.all_present_rate or 0.0, -(r.stats.blend_rate or 0.0)))
    return PeopleRecommendation(best, results, warnings, best_per_person=per_person)


def _best_per_person(people: PeopleSet, candidates: Sequence[PeopleCellResult]) -> dict[str, PeopleCellResult]:
    """Each person's best cell by their own relative served score (first cell on ties); a person
    found in no cell has none."""
    best: dict[str, PeopleCellResult] = {}
    for name in people.names:
        scored = [(relative_served(people, r.stats.people[name]), r) for r in candidates if r.stats.people[name].n_found]
        if scored:
            best[name] = max(scored, key=lambda item: item[0])[1]
    return best


def _nobody_complete_reason(candidates: Sequence[PeopleCellResult]) -> str:
    """``no cell shows every person: obama never appears`` (or who each cell misses)."""
    missing = {r.cell.label: [n for n, p in r.stats.people.items() if p.n_expected and not p.n_found] for r in candidates}
    names = list(candidates[0].stats.people)
    never = [n for n in names if any(r.stats.people[n].n_expected for r in candidates) and not any(r.stats.people[n].n_found for r in candidates)]
    if never:
        return f"no cell shows every person: {' and '.join(never)} never appear{'s' if len(never) == 1 else ''}"
    return "no cell shows every person: " + "; ".join(f"{label} misses {', '.join(names)}" for label, names in missing.items())


def _rising_blend_warnings(results: Sequence[PeopleCellResult]) -> list[str]:
    by_strength: dict[float, list[PeopleCellResult]] = {}
    for result in results:
        if result.stats.blend_rate is not None:
            by_strength.setdefault(result.cell.strength, []).append(result)
    warnings = []
    for strength, series in sorted(by_strength.items()):
        series.sort(key=lambda r: r.cell.order)
        if len(series) < 2:
            continue
        first, last = series[0], series[-1]
        if last.stats.blend_rate - first.stats.blend_rate >= BLEND_RISE - 1e-9 and last.stats.blend_rate >= BLEND_RISE_MIN_RATE - 1e-9:
            warnings.append(f"blending rises with training at strength {strength:g}: {first.stats.blend_rate:.0%} at {first.cell.checkpoint}, "
                            f"{last.stats.blend_rate:.0%} at {last.cell.checkpoint} (faces merge into one another; an earlier checkpoint "
                            f"or more photos of each person alone help)")
    return warnings
