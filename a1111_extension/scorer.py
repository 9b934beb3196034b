"""One face engine and one reference set per setting, kept for the life of the A1111 process.

A1111 calls the script once per generated image; loading the face models and analysing the
reference photos once per (pack, folder, aggregation) keeps that to one detect + embed per image.
Generated images are cached in memory by content (the X/Y/Z hook looks at the same images again);
reference photos go through the core's on-disk face cache, so a restart does not redo them.
No A1111 import: the script hands PIL images in.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lora_likeness import faces as core_faces
from lora_likeness import pipeline
from lora_likeness.cache import FaceCache
from lora_likeness.faces import FaceEngine, FaceResult, PackNotFoundError
from lora_likeness.people import PeopleError, PeopleInImage, PeopleSet, parse_people_text, people_in_image
from lora_likeness.references import NoReferencesError, ReferenceSet
from lora_likeness.scoring import AGGREGATIONS, ImageScore

DEFAULT_PACK = core_faces.DEFAULT_PACK


class LikenessSetupError(RuntimeError):
    """The settings cannot work (no pack, no reference photos, …); the message says what to do."""


class MemoryFaceCache:
    """In-memory stand-in for :class:`lora_likeness.cache.FaceCache` (same ``get``/``put``),
    bounded to the most recent ``capacity`` images: generated images are scored once per hook and
    looked at again by the X/Y/Z hook, never worth a disk write."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], FaceResult] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.disabled_reason: str | None = None

    def get(self, sha256: str, engine: str) -> FaceResult | None:
        with self._lock:
            result = self._items.get((sha256, engine))
            if result is None:
                self.misses += 1
                return None
            self._items.move_to_end((sha256, engine))
            self.hits += 1
            return result

    def put(self, result: FaceResult, engine: str) -> None:
        with self._lock:
            self._items[(result.sha256, engine)] = result
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


@dataclass
class ScoredImage:
    """One generated image's analysis and score (``value`` under the chosen aggregation)."""

    name: str
    result: FaceResult
    score: ImageScore
    aggregation: str
    people: PeopleInImage | None = None
    """With named reference folders: who is in the image (expected: the people its prompt names)."""
    prompt: str | None = None

    @property
    def value(self) -> float | None:
        return self.score.value(self.aggregation)

    @property
    def box(self) -> list[float] | None:
        """The scored face's box ``x1, y1, x2, y2`` in the image's pixels."""
        if self.score.face_index is None:
            return None
        return [float(v) for v in self.result.faces[self.score.face_index].box]

    @property
    def note(self) -> str | None:
        return "memorised?" if self.score.memorised else None

    @property
    def people_text(self) -> str | None:
        """``obama 0.820, jolie -, blended``: the infotext's per-person scores (``None`` for one person)."""
        if self.people is None:
            return None
        parts = [f"{name} {p.score:.3f}" if p.found else f"{name} -" for name, p in self.people.people.items() if p.expected or p.found]
        return ", ".join(parts + (["blended"] if self.people.blended else []))


class Scorer:
    """Scores PIL images against one reference set with one engine."""

    def __init__(self, engine: FaceEngine, references: ReferenceSet, settings: pipeline.ScoreSettings, refs_folder: Path,
                 people: PeopleSet | None = None) -> None:
        self.engine = engine
        self.references = references
        self.settings = settings
        self.refs_folder = refs_folder
        self.people = people
        self.memory = _MEMORY

    @property
    def baseline(self) -> float | None:
        return self.references.baseline.mean

    def analyze(self, images: Sequence, names: Sequence[str]) -> list[FaceResult]:
        arrays = [np.asarray(image.convert("RGB")) for image in images]
        return pipeline.analyze_arrays(self.engine, arrays, names, cache=self.memory)

    def score_result(self, result: FaceResult, name: str, prompt: str | None = None) -> ScoredImage:
        people = None
        if self.people is not None and result.ok:
            expected, _ = pipeline.expected_people(self.people, prompt, None)
            people = people_in_image(self.people, [f.embedding for f in result.faces], expected)
        score = pipeline.score_result(result, self.references, self.settings, people=people)  # memorised per person with people
        return ScoredImage(name=name, result=result, score=score, aggregation=self.settings.aggregation, people=people, prompt=prompt)

    def missing_image(self, name: str, error: str) -> ScoredImage:
        """An image that was never made (its generation failed): an error result, which the core's
        statistics count as missing, not as an image without a face."""
        return self.score_result(FaceResult(path=None, sha256="", size=(0, 0), error=error), name)

    def score_images(self, images: Sequence, names: Sequence[str], prompt: str | None = None) -> list[ScoredImage]:
        """Detect, embed and score each PIL image (any mode); ``prompt`` says who is expected with people."""
        return [self.score_result(r, n, prompt) for r, n in zip(self.analyze(images, names), names)]

    def run(self, scored: Sequence[ScoredImage], groups: Sequence[tuple[str, dict]]) -> pipeline.ScoreRun:
        """The core's :class:`ScoreRun` (report.json shape) over already analysed images; with people,
        per-person fields in every image and group (the CSV/JSON next to the grid carry them)."""
        run = pipeline.score_results(
            [s.result for s in scored], [s.name for s in scored], list(groups), self.references,
            self.settings, self.engine.describe(), people=self.people, prompts=[s.prompt for s in scored],
        )
        run.warnings = list(self.engine.warnings) + run.warnings
        return run


_MEMORY = MemoryFaceCache()
_LOCK = threading.Lock()
_REFERENCES: dict[tuple, ReferenceSet] = {}


def _folder_signature(paths: Sequence[Path]) -> tuple:
    """Changes when a reference photo is added, removed or replaced."""
    signature = []
    for path in paths:
        try:
            stat = path.stat()
            signature.append((str(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            signature.append((str(path), None, None))
    return tuple(signature)


def load_engine(pack: str) -> FaceEngine:
    """The engine for ``pack`` (name or folder), loaded once per process."""
    pack = (pack or DEFAULT_PACK).strip()
    try:
        return core_faces.shared_engine(pack)
    except (PackNotFoundError, core_faces.FaceModelError) as error:
        raise LikenessSetupError(f"Likeness: {error}") from error


def get_scorer(refs: str, pack: str, aggregation: str = "max", face_choice: str = "largest") -> Scorer:
    """A :class:`Scorer` for the reference folder ``refs``; references are analysed again only
    when a file in the folder changed.

    Raises:
        LikenessSetupError: the folder is missing or empty, no reference has a face, the pack is
            missing or unusable, or the aggregation is unknown.
    """
    if aggregation not in AGGREGATIONS:
        raise LikenessSetupError(f"Likeness: aggregation must be one of {', '.join(AGGREGATIONS)}, not {aggregation!r}")
    text = (refs or "").strip().strip('"')
    if not text:
        raise LikenessSetupError("Likeness: set the reference folder (real photos of the person) to score images")
    try:
        named = parse_people_text(text)
    except PeopleError as error:
        raise LikenessSetupError(f"Likeness: {error} (several people: name=folder; name=folder)") from error
    if named is not None:
        return _people_scorer(named, pack, aggregation, face_choice)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise LikenessSetupError(f"Likeness: the reference folder {folder} does not exist (or is not a folder)")
    paths = pipeline.collect_images(folder)
    if not paths:
        raise LikenessSetupError(f"Likeness: the reference folder {folder} holds no image files")
    engine = load_engine(pack)
    settings = pipeline.ScoreSettings(aggregation=aggregation, face_choice=face_choice, group_by="none")
    key = (str(folder.resolve()), engine.fingerprint, aggregation, _folder_signature(paths))
    with _LOCK:
        references = _REFERENCES.get(key)
    if references is None:
        try:
            references = pipeline.build_references(engine, folder, cache=FaceCache(), aggregation=aggregation)
        except NoReferencesError as error:
            raise LikenessSetupError(f"Likeness: no usable reference face in {folder}: {error}") from error
        with _LOCK:
            _REFERENCES[key] = references
    return Scorer(engine, references, settings, folder)


def _people_scorer(named: list[tuple[str, Path]], pack: str, aggregation: str, face_choice: str) -> Scorer:
    """A :class:`Scorer` for named reference folders (a family LoRA): each person's references as
    :func:`get_scorer` keeps them, joined into one people set."""
    sets = []
    for name, folder in named:
        single = get_scorer(str(folder), pack, aggregation, face_choice)  # cached per folder; says what is wrong
        sets.append((name, single.references))
    try:
        people = PeopleSet.build(sets, aggregation=aggregation)
    except PeopleError as error:
        raise LikenessSetupError(f"Likeness: {error}") from error
    settings = pipeline.ScoreSettings(aggregation=aggregation, face_choice=face_choice, group_by="none")
    return Scorer(single.engine, pipeline.people_references(people), settings, Path(named[0][1]), people=people)


def available_packs() -> list[str]:
    """Names of the usable packs in every folder Likeness searches (for the pack dropdown)."""
    names: list[str] = []
    for _label, root in core_faces.pack_search_dirs():
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name not in names:
                detector, recognizer, _problems = core_faces.inspect_pack(child)
                if detector is not None and recognizer is not None:
                    names.append(child.name)
    return names
