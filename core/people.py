"""Several people in one image (a family LoRA): who is there, how much each looks like themselves,
and whether faces blended. Pure functions over embeddings: no files, no models.

A :class:`PeopleSet` holds one :class:`~lora_likeness.references.ReferenceSet` per person and what
the references say about telling them apart:

* ``genuine_low[p]``: the lowest leave-one-out similarity among person *p*'s own photos
  (the least a real photo of *p* is like the other photos of *p*);
* ``impostor_high[p]``: the highest similarity of another person's reference photo to *p*'s
  references (the most a real photo of someone else in the set is like *p*);
* the acceptance threshold ``threshold[p]`` halfway between the two: a face is accepted as *p*
  when it is more like *p* than that. With one person there is nobody to tell apart and the
  threshold is half of ``genuine_low`` (a face half as like *p* as *p*'s least typical photo);
  with one photo of *p* there is no ``genuine_low`` and the threshold is ``impostor_high``.

Per image, every embedded face is scored against every person (``(F, P)`` similarities, each the
run's aggregation over that person's references) and faces are assigned one-to-one to people by
an optimal assignment (:func:`scipy.optimize.linear_sum_assignment`) that maximises the summed
margin ``similarity - threshold`` over accepted pairs. Then:

* a person is **found** when a face was assigned to them (its similarity is their **score**);
* a face that clears nobody's threshold **matches nobody**;
* a face that clears the thresholds of two people is a **blend** of them: by construction no real
  photo of one of them clears the other's threshold;
* a person whose threshold several faces clear is **duplicated** (everyone wears dad's face);
* an image is **blended** when it has a blend face or a duplicated person.

Similarities are cosine similarities in -1..1 of the face pack's embeddings; thresholds are on that
scale and so are specific to the pack, which is why they come from the references and not from
constants.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .references import ReferenceSet
from .scoring import bootstrap_ci, normalize

#: A person's name: what ``--person NAME=DIR`` and the folders of ``--people DIR`` give.
NAME_PATTERN = re.compile(r"^[^\s=,/\\][^=,/\\]*$")

#: Box colours of people, in order (RGB); a face that matches nobody is grey.
PERSON_COLOURS: tuple[tuple[int, int, int], ...] = (
    (66, 135, 245), (245, 130, 48), (60, 180, 75), (230, 25, 75), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)
NOBODY_COLOUR = (150, 150, 150)


class PeopleError(ValueError):
    """People references that cannot be used (duplicate or empty names, no people): the message says why."""


def person_colour(index: int) -> tuple[int, int, int]:
    """The box colour of the ``index``-th person (cycles after ten people)."""
    return PERSON_COLOURS[index % len(PERSON_COLOURS)]


def check_person_name(name: str) -> str:
    """``name`` stripped, or :class:`PeopleError` when it cannot name a person (empty, ``=``, ``,``, slashes)."""
    cleaned = name.strip()
    if not cleaned or not NAME_PATTERN.match(cleaned):
        raise PeopleError(f"{name!r} cannot name a person: use letters, digits, '_' or '-' (no '=', ',' or slashes)")
    return cleaned


def parse_person_option(text: str) -> tuple[str, Path]:
    """``--person NAME=FOLDER`` -> ``(name, folder)``; the name is also the person's trigger word.

    Raises:
        PeopleError: no ``=``, an empty side, or a name that cannot name a person.
    """
    name, separator, folder = text.partition("=")
    if not separator or not folder.strip():
        raise PeopleError(f"--person {text!r}: write NAME=FOLDER, e.g. --person ohwxdad=refs/dad (the name is the person's trigger word)")
    return check_person_name(name), Path(folder.strip()).expanduser()


def parse_people_text(text: str) -> list[tuple[str, Path]] | None:
    """Named reference folders in one text field (a host's setting): ``dad=/photos/dad; mum=/photos/mum``
    (``;`` or new lines between people) -> ``[(name, folder), …]``; ``None`` when the text names no
    person (a plain folder of one person's photos).

    Raises:
        PeopleError: a part without ``=`` among named ones, or a bad name.
    """
    parts = [part.strip() for part in re.split(r"[;\n]", text or "") if part.strip()]
    if not parts or not any("=" in part for part in parts):
        return None
    return [parse_person_option(part) for part in parts]


def _person_similarities(embeddings: np.ndarray, references: np.ndarray, aggregation: str) -> np.ndarray:
    """Similarity of each row of ``embeddings (N, D)`` to one person's ``references (R, D)`` as
    ``aggregation`` says (``max`` | ``mean`` | ``ism``): shape ``(N,)``."""
    faces = normalize(np.atleast_2d(embeddings))
    refs = normalize(np.atleast_2d(references))
    if aggregation == "ism":
        return faces @ normalize(refs.mean(axis=0))
    sims = faces @ refs.T
    return sims.max(axis=1) if aggregation == "max" else sims.mean(axis=1)


@dataclass
class PeopleSet:
    """The people of a family LoRA and how to tell them apart.

    Attributes:
        names: ``P`` person names, in the order given.
        references: one reference set per person.
        aggregation: how a face is scored against a person's references (``max`` | ``mean`` | ``ism``).
        genuine_low: ``(P,)`` lowest leave-one-out similarity of each person's own photos (NaN with one photo).
        impostor_high: ``(P,)`` highest similarity of another person's photo to each person (NaN with one person).
        cross: ``(P, P)`` ``cross[p, q]`` = mean similarity of person *q*'s photos to person *p*'s references
            (the diagonal is each person's baseline mean); how alike the people are (siblings are).
        thresholds: ``(P,)`` acceptance thresholds (see the module docstring).
        warnings: sentences about people who are hard to tell apart.
    """

    names: list[str]
    references: list[ReferenceSet]
    aggregation: str
    genuine_low: np.ndarray
    impostor_high: np.ndarray
    cross: np.ndarray
    thresholds: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    @classmethod
    def build(cls, people: Mapping[str, ReferenceSet] | Sequence[tuple[str, ReferenceSet]], aggregation: str = "max") -> "PeopleSet":
        """Thresholds and cross-similarities of ``people`` (name -> reference set, in order).

        Raises:
            PeopleError: no people, or a name given twice.
        """
        items = list(people.items()) if isinstance(people, Mapping) else list(people)
        if not items:
            raise PeopleError("no people given: name at least one person and their reference photos")
        names = [check_person_name(name) for name, _ in items]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise PeopleError(f"person name(s) given twice: {', '.join(repeated)}")
        refs = [reference for _, reference in items]
        count = len(names)
        genuine_low = np.full(count, np.nan)
        impostor_high = np.full(count, np.nan)
        cross = np.full((count, count), np.nan)
        for p, reference in enumerate(refs):
            # The same aggregation as faces are scored with, so that thresholds and scores share a scale.
            loo = [float(_person_similarities(reference.embeddings[i], np.delete(reference.embeddings, i, axis=0), aggregation)[0])
                   for i in range(reference.n)] if reference.n >= 2 else []
            if loo:
                genuine_low[p] = min(loo)
                cross[p, p] = float(np.mean(loo))
            others = []
            for q, other in enumerate(refs):
                if q == p:
                    continue
                sims = _person_similarities(other.embeddings, reference.embeddings, aggregation)
                cross[p, q] = float(sims.mean())
                others.append(float(sims.max()))
            if others:
                impostor_high[p] = max(others)
        thresholds = np.array([_threshold(genuine_low[p], impostor_high[p]) for p in range(count)])
        warnings: list[str] = []
        for p in range(count):
            if np.isnan(thresholds[p]):
                raise PeopleError(
                    f"{names[p]} has a single usable reference photo and nobody else to tell them apart from: "
                    f"give at least two photos of {names[p]} so that an acceptance threshold can be derived"
                )
            if refs[p].n < 2:
                warnings.append(f"{names[p]} has one usable reference photo: a face is accepted as {names[p]} when it is more like "
                                f"{names[p]} than anyone else's photo is ({thresholds[p]:.3f}); 5-20 photos are better")
            if not np.isnan(impostor_high[p]) and not np.isnan(genuine_low[p]) and impostor_high[p] >= genuine_low[p]:
                q = int(np.nanargmax(np.where(np.arange(count) == p, np.nan, cross[p])))
                warnings.append(
                    f"a reference photo of another person (most alike: {names[q]}) is as like {names[p]} as {names[p]}'s own least "
                    f"typical photo ({impostor_high[p]:.3f} vs {genuine_low[p]:.3f}): faces of these two cannot be told apart "
                    f"reliably, so their assignments and blends are uncertain"
                )
        return cls(names, refs, aggregation, genuine_low, impostor_high, cross, thresholds, warnings)

    def similarities(self, embeddings: Sequence[np.ndarray]) -> np.ndarray:
        """Each face against each person: ``(F, P)`` for ``F`` embeddings ``(D,)``."""
        if len(embeddings) == 0:
            return np.zeros((0, self.n))
        stacked = np.stack([np.asarray(e, dtype=np.float64) for e in embeddings])
        return np.stack([_person_similarities(stacked, r.embeddings, self.aggregation) for r in self.references], axis=1)

    def as_dict(self) -> dict:
        """The people part of ``report.json``'s ``references``."""
        def number(value: float) -> float | None:
            return None if np.isnan(value) else round(float(value), 6)

        return {
            "names": list(self.names),
            "aggregation": self.aggregation,
            "people": {
                name: {
                    "n": self.references[p].n,
                    "baseline_mean": self.references[p].baseline.mean,
                    "genuine_low": number(self.genuine_low[p]),
                    "impostor_high": number(self.impostor_high[p]),
                    "threshold": number(self.thresholds[p]),
                    "colour": "#%02x%02x%02x" % person_colour(p),
                    "similar_to": {self.names[q]: number(self.cross[p, q]) for q in range(self.n) if q != p},
                }
                for p, name in enumerate(self.names)
            },
            "warnings": list(self.warnings),
        }


def _threshold(genuine_low: float, impostor_high: float) -> float:
    """Acceptance threshold from the two reference statistics (NaN when neither is known)."""
    if np.isnan(impostor_high):
        return genuine_low / 2.0
    if np.isnan(genuine_low):
        return impostor_high
    return (genuine_low + impostor_high) / 2.0


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonInImage:
    """One person's outcome in one image. ``score`` is the assigned face's similarity (None when missing)."""

    name: str
    expected: bool
    found: bool
    score: float | None = None
    face_index: int | None = None
    also_faces: tuple[int, ...] = ()
    """Other faces that clear this person's threshold (the person is duplicated when there are any)."""
    memorised: bool = False
    """The assigned face is closer to one of *this person's* reference photos than any two of their
    photos are to each other (their ``pairwise_max``): possibly a training photo reproduced."""

    def as_dict(self) -> dict:
        return {
            "found": self.found,
            "expected": self.expected,
            "score": None if self.score is None else round(self.score, 6),
            "face_index": self.face_index,
            "duplicate_faces": list(self.also_faces),
            "memorised": self.memorised,
        }


@dataclass(frozen=True)
class FaceAssignment:
    """One face's outcome: who it was assigned to, and everyone whose threshold it clears."""

    index: int
    person: str | None
    similarity: float | None
    accepted_by: tuple[str, ...]

    @property
    def blend(self) -> bool:
        return len(self.accepted_by) >= 2


@dataclass(frozen=True)
class PeopleInImage:
    """Who is in one image. ``faces`` has one entry per embedded face, in the image's face order."""

    people: dict[str, PersonInImage]
    faces: list[FaceAssignment]
    expected: tuple[str, ...]

    @property
    def unmatched_faces(self) -> list[int]:
        """Faces that clear nobody's threshold (strangers, or faces too far from everyone)."""
        return [f.index for f in self.faces if not f.accepted_by]

    @property
    def blend_faces(self) -> list[int]:
        return [f.index for f in self.faces if f.blend]

    @property
    def duplicated(self) -> list[str]:
        return [name for name, person in self.people.items() if person.also_faces]

    @property
    def blended(self) -> bool:
        return bool(self.blend_faces or self.duplicated)

    @property
    def all_present(self) -> bool:
        return all(self.people[name].found for name in self.expected)

    @property
    def memorised(self) -> list[str]:
        """People whose assigned face is possibly a reproduced reference photo of that same person."""
        return [name for name, person in self.people.items() if person.memorised]

    def as_dict(self) -> dict:
        return {
            "people": {name: person.as_dict() for name, person in self.people.items()},
            "blended": self.blended,
            "expected": list(self.expected),
            "all_present": self.all_present,
            "memorised_people": self.memorised,
            "unmatched_faces": self.unmatched_faces,
            "blend_faces": [{"face_index": f.index, "people": list(f.accepted_by)} for f in self.faces if f.blend],
        }


def assign_faces(similarities: np.ndarray, thresholds: np.ndarray) -> list[tuple[int, int]]:
    """Optimal one-to-one ``(face, person)`` pairs among accepted ones.

    Args:
        similarities: ``(F, P)`` cosine similarities.
        thresholds: ``(P,)`` acceptance thresholds.

    Returns:
        pairs sorted by face, each with ``similarities[f, p] > thresholds[p]``, maximising the summed
        margin ``similarities - thresholds`` (so one face is never given to two people, and a
        person's best face may go to the person it fits better still).
    """
    from scipy.optimize import linear_sum_assignment

    sims = np.asarray(similarities, dtype=np.float64)
    if sims.size == 0:
        return []
    margin = sims - np.asarray(thresholds, dtype=np.float64)[None, :]
    gain = np.where(margin > 0, margin, 0.0)  # a pair below threshold gains nothing and is dropped below
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return sorted((int(f), int(p)) for f, p in zip(rows, cols) if margin[f, p] > 0)


def _memorised(embedding: np.ndarray, reference: ReferenceSet) -> bool:
    """The single-person rule, for one person: the face ``(D,)`` is closer to one of the person's own
    reference photos than any two of them are to each other (never with fewer than two photos)."""
    threshold = reference.baseline.pairwise_max
    if threshold is None:
        return False
    return bool(_person_similarities(embedding, reference.embeddings, "max")[0] > threshold)


def people_in_image(people: PeopleSet, embeddings: Sequence[np.ndarray | None], expected: Sequence[str] | None = None) -> PeopleInImage:
    """Assign the faces of one image (``embeddings`` in face order; ``None`` for a face without one)
    to ``people``. ``expected`` names the people the prompt asked for (default: everyone)."""
    expected_names = tuple(people.names if expected is None else [n for n in people.names if n in set(expected)])
    usable = [(i, e) for i, e in enumerate(embeddings) if e is not None]
    sims = people.similarities([e for _, e in usable]) if usable else np.zeros((0, people.n))
    pairs = assign_faces(sims, people.thresholds)
    accepted = sims > people.thresholds[None, :]
    assigned_face = {p: f for f, p in pairs}
    assigned_person = {f: p for f, p in pairs}
    faces = [
        FaceAssignment(
            index=face_index,
            person=people.names[assigned_person[row]] if row in assigned_person else None,
            similarity=float(sims[row, assigned_person[row]]) if row in assigned_person else None,
            accepted_by=tuple(people.names[p] for p in np.flatnonzero(accepted[row])),
        )
        for row, (face_index, _) in enumerate(usable)
    ]
    result: dict[str, PersonInImage] = {}
    for p, name in enumerate(people.names):
        row = assigned_face.get(p)
        others = tuple(usable[r][0] for r in np.flatnonzero(accepted[:, p]) if r != row) if row is not None else ()
        memorised = row is not None and _memorised(usable[row][1], people.references[p])
        result[name] = PersonInImage(
            name=name,
            expected=name in expected_names,
            found=row is not None,
            score=float(sims[row, p]) if row is not None else None,
            face_index=usable[row][0] if row is not None else None,
            also_faces=others,
            memorised=memorised,
        )
    return PeopleInImage(people=result, faces=faces, expected=expected_names)


# --------------------------------------------------------------------------------------------
# Expected people from the prompt
# --------------------------------------------------------------------------------------------


def expected_from_prompt(prompt: str | None, triggers: Mapping[str, str]) -> list[str] | None:
    """The people whose trigger word the ``prompt`` names, in ``triggers`` order; ``None`` when
    there is no prompt. ``triggers``: person name -> trigger word (matched as a whole word, any case).
    """
    if prompt is None:
        return None
    found = []
    for name, trigger in triggers.items():
        if trigger and re.search(r"(?<![\w])" + re.escape(trigger) + r"(?![\w])", prompt, flags=re.IGNORECASE):
            found.append(name)
    return found


# --------------------------------------------------------------------------------------------
# One group of images
# --------------------------------------------------------------------------------------------


@dataclass
class PersonStats:
    """One person over a group's readable images that expected them.

    ``presence_rate``: share of those images where the person was found; ``mean``/``ci95``: score
    statistics where found; ``served``: mean over those images of the score, counting a missing
    person as 0 (an unrelated face's cosine similarity): likeness and presence in one number.
    """

    name: str
    n_expected: int
    n_found: int
    presence_rate: float | None
    mean: float | None
    ci95: tuple[float, float] | None
    served: float | None
    n_duplicated: int = 0

    def as_dict(self) -> dict:
        return {
            "n_expected": self.n_expected,
            "n_found": self.n_found,
            "presence_rate": self.presence_rate,
            "mean": self.mean,
            "ci95": list(self.ci95) if self.ci95 is not None else None,
            "served": self.served,
            "n_duplicated": self.n_duplicated,
        }


@dataclass
class PeopleGroupStats:
    """The people part of one group's statistics."""

    people: dict[str, PersonStats]
    all_present_rate: float | None
    blend_rate: float | None
    worst_served: str | None

    def as_dict(self) -> dict:
        return {
            "people": {name: stats.as_dict() for name, stats in self.people.items()},
            "all_present_rate": self.all_present_rate,
            "blend_rate": self.blend_rate,
            "worst_served": self.worst_served,
        }


def people_group_statistics(people: PeopleSet, images: Sequence[PeopleInImage], seed: int = 0, n_boot: int = 2000) -> PeopleGroupStats:
    """Per-person mean / 95% CI / presence rate, all-present rate, blend rate and the worst-served
    person over the readable images of one group (``images``)."""
    stats: dict[str, PersonStats] = {}
    for name in people.names:
        wanted = [image.people[name] for image in images if name in image.expected]
        scores = [p.score for p in wanted if p.found and p.score is not None]
        stats[name] = PersonStats(
            name=name,
            n_expected=len(wanted),
            n_found=len(scores),
            presence_rate=len(scores) / len(wanted) if wanted else None,
            mean=float(np.mean(scores)) if scores else None,
            ci95=bootstrap_ci(scores, n_boot=n_boot, seed=seed),
            served=float(np.mean([p.score if p.found and p.score is not None else 0.0 for p in wanted])) if wanted else None,
            n_duplicated=sum(bool(p.also_faces) for p in wanted),
        )
    count = len(images)
    return PeopleGroupStats(
        people=stats,
        all_present_rate=sum(image.all_present for image in images) / count if count else None,
        blend_rate=sum(image.blended for image in images) / count if count else None,
        worst_served=worst_served(people, stats),
    )


def relative_served(people: PeopleSet, stats: PersonStats) -> float | None:
    """``served`` as a share of the person's own baseline (their photos' mean leave-one-out
    similarity), so people whose photos agree more are not favoured; plain ``served`` without one."""
    if stats.served is None:
        return None
    baseline = people.cross[people.index(stats.name), people.index(stats.name)]
    return stats.served / baseline if not np.isnan(baseline) and baseline > 0 else stats.served


def worst_served(people: PeopleSet, stats: Mapping[str, PersonStats]) -> str | None:
    """The expected person with the lowest :func:`relative_served` (``None`` when nobody was expected)."""
    ranked = [(relative_served(people, s), name) for name, s in stats.items() if s.served is not None]
    return min(ranked)[1] if ranked else None


# --------------------------------------------------------------------------------------------
# Tables and labels of group statistics (CSV columns, compact cell labels)
# --------------------------------------------------------------------------------------------


def people_columns(names: Sequence[str]) -> list[str]:
    """The per-person CSV columns of a group or sweep cell, for people ``names`` in order:
    ``<name>_mean``, ``<name>_ci95_low``, ``<name>_ci95_high``, ``<name>_presence_rate`` per person,
    then ``all_present_rate``, ``blend_rate`` and ``worst_served``."""
    columns = [f"{name}_{part}" for name in names for part in ("mean", "ci95_low", "ci95_high", "presence_rate")]
    return columns + ["all_present_rate", "blend_rate", "worst_served"]


def people_values(stats: PeopleGroupStats | None, names: Sequence[str]) -> dict:
    """One row of :func:`people_columns` (``None`` where a value is unknown: nobody expected, nobody found)."""
    row: dict = {column: None for column in people_columns(names)}
    if stats is None:
        return row
    for name in names:
        person = stats.people.get(name)
        if person is None:
            continue
        low, high = person.ci95 if person.ci95 is not None else (None, None)
        row.update({f"{name}_mean": person.mean, f"{name}_ci95_low": low, f"{name}_ci95_high": high,
                    f"{name}_presence_rate": person.presence_rate})
    row.update(all_present_rate=stats.all_present_rate, blend_rate=stats.blend_rate, worst_served=stats.worst_served)
    return row


def compact_people_text(stats: PeopleGroupStats, digits: int = 2, rates: bool = True) -> str:
    """A group's people in one short line for a grid cell or an axis: ``dad .61 (90%) · mum .48 (70%)
    · all 65% · blend 10%``; a person expected but never found reads ``mum –``; people nobody
    expected are left out. Without ``rates``: ``dad .61 · mum .48``."""
    def score(value: float | None) -> str:
        if value is None:
            return "–"
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("0.") else text.replace("-0.", "-.", 1)

    def rate(value: float | None) -> str:
        return "–" if value is None else f"{value:.0%}"

    parts = [f"{name} {score(p.mean)}" + (f" ({rate(p.presence_rate)})" if rates else "")
             for name, p in stats.people.items() if p.n_expected]
    if rates:
        parts += [f"all {rate(stats.all_present_rate)}", f"blend {rate(stats.blend_rate)}"]
    return " · ".join(parts)
