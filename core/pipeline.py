"""Score a folder of images against reference photos: what ``likeness score`` runs.

Two layers: :func:`analyze_paths` turns files into :class:`FaceResult` (cache lookup, else decode
+ detect + embed, a few images in flight at once), and :func:`score_results` turns face results
plus labels into a :class:`ScoreRun` with per-image scores and per-group statistics (pure).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import __version__
from .cache import FaceCache
from .faces import FaceEngine, FaceResult
from .images import ANALYSIS_DRAFT_SIDE, ANALYSIS_MAX_SIDE, ImageScan, decode_image, from_array, relative_name, scan_images
from .labels import folder_group, group_sort_key, lora_group, loras_from_metadata, prompt_from_metadata, read_generation_text, step_group
from .people import PeopleGroupStats, PeopleInImage, PeopleSet, expected_from_prompt, people_group_statistics, people_in_image
from .progress import Progress
from .references import NoReferencesError, ReferencePhoto, ReferenceSet, reference_names
from .scoring import AGGREGATIONS, FACE_CHOICES, GroupStats, ImageScore, group_statistics, reference_baseline, score_faces
from .steps import epoch_steps, samples_checkpoints, step_verdict

GROUP_BY = ("folder", "lora", "step", "none")


@dataclass
class ScoreSettings:
    """How images are scored and grouped.

    Attributes:
        aggregation: ``max`` | ``mean`` | ``ism`` — which per-image score the group statistics use.
        face_choice: ``largest`` | ``best`` — which face of a multi-face image is scored.
        group_by: ``folder`` | ``lora`` | ``step`` (a trainer's sample images, by the step their names or
            metadata say: :mod:`~.trainer_outputs`) | ``none``.
        seed: bootstrap seed (same seed, same confidence intervals).
        n_boot: bootstrap resamples.
    """

    aggregation: str = "max"
    face_choice: str = "largest"
    group_by: str = "folder"
    seed: int = 0
    n_boot: int = 2000

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("aggregation", self.aggregation, AGGREGATIONS),
            ("face_choice", self.face_choice, FACE_CHOICES),
            ("group_by", self.group_by, GROUP_BY),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class ScoredImage:
    """One image's outcome: where it came from, its group, its faces and its score."""

    path: str
    group: str
    result: FaceResult
    score: ImageScore
    people: PeopleInImage | None = None
    """Who is in the image, when the run scores several people (:class:`~lora_likeness.people.PeopleSet`)."""
    expected_from: str | None = None
    """Where the expected people came from: ``prompt``, ``--expect`` or ``everyone``."""

    @property
    def error(self) -> str | None:
        return self.result.error

    def as_dict(self, ref_paths: Sequence[str]) -> dict:
        """``ref_paths``: :meth:`ReferenceSet.used_paths`, to name the best reference."""
        score = self.score.score
        face = self.result.faces[self.score.face_index] if self.score.face_index is not None else None
        return {
            "path": self.path,
            "group": self.group,
            "face_found": self.score.face_found,
            "n_faces": self.score.n_faces,
            "face_index": self.score.face_index,
            "score_max": score.score_max if score else None,
            "score_mean": score.score_mean if score else None,
            "score_ism": score.score_ism if score else None,
            "best_ref": score.best_ref if score else None,
            "best_ref_path": ref_paths[score.best_ref] if score else None,
            "memorised": self.score.memorised,
            "box": [round(float(v), 1) for v in face.box] if face is not None else None,
            "det_score": round(face.det_score, 4) if face is not None else None,
            "error": self.error,
            **(self.people_dict() if self.people is not None else {}),
        }

    def people_dict(self) -> dict:
        """``people`` (name -> found / score / face_index …), ``blended`` and the rest of the image's people part."""
        data = self.people.as_dict()
        data["expected_from"] = self.expected_from
        data["face_boxes"] = [[round(float(v), 1) for v in face.box] for face in self.result.faces]
        return data


@dataclass
class ScoreRun:
    """Everything one scoring run produced; :meth:`as_dict` is the ``report.json`` shape."""

    settings: ScoreSettings
    model: dict
    references: ReferenceSet
    images: list[ScoredImage]
    groups: list[GroupStats]
    warnings: list[str] = field(default_factory=list)
    images_root: str | None = None
    timings: dict = field(default_factory=dict)
    # In-memory images (host tensors) when the run did not read files: the contact sheet draws these.
    arrays: list | None = field(default=None, repr=False, compare=False)
    people: PeopleSet | None = None
    """The people scored, when several are (``references`` then holds all their photos together)."""
    people_groups: dict[str, PeopleGroupStats] = field(default_factory=dict)
    """Per group label: per-person statistics, all-present rate, blend rate, worst-served person."""
    # Groups that are checkpoints or training steps (``--group-by lora|step``): the recommendation over them
    # (a :class:`~.steps.StepVerdict`, set by the caller), ``recommendation`` in the JSON report.
    verdict: object | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        ref_paths = self.references.used_paths()
        groups = [g.as_dict() for g in self.groups]
        for group in groups:
            if group["label"] in self.people_groups:
                group.update(self.people_groups[group["label"]].as_dict())
        data = {
            "tool": "likeness",
            "version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {
                "aggregation": self.settings.aggregation,
                "face_choice": self.settings.face_choice,
                "group_by": self.settings.group_by,
                "seed": self.settings.seed,
                "n_boot": self.settings.n_boot,
                "images_root": self.images_root,
            },
            "model": self.model,
            "references": self.references.as_dict(),
            "groups": groups,
            "images": [i.as_dict(ref_paths) for i in self.images],
            "warnings": list(self.warnings),
            "timings": self.timings,
            **({"recommendation": self.verdict.as_dict()} if self.verdict is not None else {}),
        }
        if self.people is not None:
            data["people"] = self.people.as_dict()
        return data


# --------------------------------------------------------------------------------------------
# Analysis: files -> FaceResult
# --------------------------------------------------------------------------------------------


def _analyze_one(engine: FaceEngine, fingerprint: str, path: Path, cache: FaceCache | None, max_side: int) -> FaceResult:
    """Worker step: read the file once, take the cached result for its content, else decode +
    analyse (and cache)."""
    try:
        data = path.read_bytes()
    except OSError:
        data = None
    sha = hashlib.sha256(data).hexdigest() if data else ""
    result = cache.get(sha, fingerprint) if cache is not None else None
    if result is None:
        # Unreadable or empty files go to the decoder by path so that it words the error.
        if data:
            loaded = decode_image(data, max_side, name=str(path), sha256=sha, draft_side=min(max_side, ANALYSIS_DRAFT_SIDE))
        else:
            loaded = decode_image(path, max_side)
        loaded.path = path
        result = engine.analyze(loaded)
        if cache is not None:
            cache.put(result, fingerprint)
    result.path = path
    return result


def analyze_paths(
    engine: FaceEngine,
    paths: Sequence[Path],
    cache: FaceCache | None = None,
    progress: Progress | None = None,
    max_side: int = ANALYSIS_MAX_SIDE,
    description: str = "faces",
) -> list[FaceResult]:
    """Detect and embed faces in every file, in order; unreadable files become error results.

    ``engine.workers`` images are in flight at once (decoding, onnxruntime and OpenCV release the
    GIL), and files whose content is cached skip decoding and the models entirely.
    """
    progress = progress or Progress()
    fingerprint = engine.fingerprint  # hashes the model files once, before the workers start
    progress.start(len(paths), description)
    results: list[FaceResult] = []
    with ThreadPoolExecutor(max_workers=engine.workers, thread_name_prefix="likeness-faces") as pool:
        window = engine.workers * 2  # bounded look-ahead: memory stays at a few decoded images
        pending: deque = deque()
        queue = iter(paths)
        try:
            while True:
                while len(pending) < window:
                    path = next(queue, None)
                    if path is None:
                        break
                    pending.append(pool.submit(_analyze_one, engine, fingerprint, Path(path), cache, max_side))
                if not pending:
                    break
                progress.check()
                result = pending.popleft().result()
                results.append(result)
                progress.advance(1, result.path.name if result.path else None)
        finally:
            for future in pending:
                future.cancel()
    progress.finish()
    return results


def _analyze_array_one(engine: FaceEngine, fingerprint: str, rgb, name: str, cache: FaceCache | None) -> FaceResult:
    loaded = from_array(rgb, name)
    result = cache.get(loaded.sha256, fingerprint) if cache is not None and loaded.ok else None
    if result is None:
        result = engine.analyze(loaded)
        if cache is not None and loaded.ok:
            cache.put(result, fingerprint)
    result.path = Path(name)
    return result


def analyze_arrays(
    engine: FaceEngine,
    arrays: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    cache: FaceCache | None = None,
    progress: Progress | None = None,
    description: str = "faces",
) -> list[FaceResult]:
    """Detect and embed faces in in-memory images, in order.

    Args:
        arrays: RGB images ``(H, W, 3)``, uint8 or float in 0..1 (a host's tensors converted once).
        names: one name per image for messages and reports (default ``image 1``, ``image 2``, …).
        cache: looked up by the array's content hash, so re-running a graph on the same images is free.
    """
    progress = progress or Progress()
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(arrays))]
    if len(names) != len(arrays):
        raise ValueError(f"{len(names)} names for {len(arrays)} images")
    fingerprint = engine.fingerprint
    progress.start(len(arrays), description)
    results: list[FaceResult] = []
    # engine.workers images in flight, as analyze_paths does: each worker has cores // workers threads.
    with ThreadPoolExecutor(max_workers=engine.workers, thread_name_prefix="likeness-faces") as pool:
        pending: deque = deque()
        queue = iter(zip(arrays, names))
        try:
            while True:
                while len(pending) < engine.workers * 2:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending.append((item[1], pool.submit(_analyze_array_one, engine, fingerprint, item[0], item[1], cache)))
                if not pending:
                    break
                progress.check()
                name, future = pending.popleft()
                results.append(future.result())
                progress.advance(1, name)
        finally:
            for _, future in pending:
                future.cancel()
    progress.finish()
    return results


# --------------------------------------------------------------------------------------------
# Scoring: FaceResult + labels -> ScoreRun
# --------------------------------------------------------------------------------------------


def image_groups(paths: Sequence[Path], root: Path | None, group_by: str,
                 epoch_steps: dict[int, int] | None = None) -> list[tuple[str, dict]]:
    """Group label and sort fields for each image path (``epoch_steps``: see :func:`~.labels.step_group`)."""
    if group_by == "none":
        return [("all", {}) for _ in paths]
    if group_by == "folder":
        if root is None:
            return [(Path(p).parent.name or "all", {}) for p in paths]
        return [(folder_group(Path(p), root), {}) for p in paths]
    if group_by == "step":
        return [step_group(Path(p), root if root is not None else Path(p).parent, epoch_steps) for p in paths]
    return [lora_group(loras_from_metadata(read_generation_text(Path(p)))) for p in paths]


def score_result(result: FaceResult, references: ReferenceSet, settings: ScoreSettings, people: PeopleInImage | None = None) -> ImageScore:
    """One analysed image's score; memorisation is judged against the references' pairwise maximum.

    In a people run (``people``: the image's assignment) memorisation is judged per person instead:
    the image is flagged only when a face assigned to someone is closer to one of *that person's*
    photos than any two of their photos are to each other (everyone's photos pooled would compare
    a face of one person against the spread of another's)."""
    embeddings = [f.embedding for f in result.faces] if result.ok else []
    score = score_faces(embeddings, references.embeddings, settings.face_choice, settings.aggregation, references.baseline.pairwise_max)
    if people is not None:
        score = replace(score, memorised=bool(people.memorised))
    return score


def score_results(
    results: Sequence[FaceResult],
    names: Sequence[str],
    groups: Sequence[tuple[str, dict]],
    references: ReferenceSet,
    settings: ScoreSettings,
    model: dict,
    images_root: str | None = None,
    people: PeopleSet | None = None,
    prompts: Sequence[str | None] | None = None,
    expect: Sequence[str] | None = None,
) -> ScoreRun:
    """Score analysed images and compute group statistics (no I/O).

    With ``people`` (several people; ``references`` is then :func:`people_references`), every image's
    faces are also assigned to the people (:func:`~lora_likeness.people.people_in_image`). The people
    expected in an image are those whose name (their trigger word) its prompt names (``prompts``, one
    per image, ``None`` when an image carries none); else ``expect``; else everyone.
    """
    scored = [
        ScoredImage(path=name, group=label, result=result, score=score_result(result, references, settings))
        for result, name, (label, _) in zip(results, names, groups)
    ]
    if people is not None:
        prompts = list(prompts) if prompts is not None else [None] * len(scored)
        for item, prompt in zip(scored, prompts):
            if not item.result.ok:
                continue  # an unreadable image says nothing about who is in it
            expected, item.expected_from = expected_people(people, prompt, expect)
            item.people = people_in_image(people, [f.embedding for f in item.result.faces], expected)
            item.score = score_result(item.result, references, settings, people=item.people)

    by_group: dict[str, list[ScoredImage]] = {}
    infos: dict[str, dict] = {}
    for item, (label, info) in zip(scored, groups):
        by_group.setdefault(label, []).append(item)
        infos.setdefault(label, info)
    stats = []
    for label in sorted(by_group, key=lambda key: group_sort_key(key, infos[key])):
        members = by_group[label]
        readable = [m for m in members if m.error is None]
        stats.append(
            group_statistics(
                label,
                [m.score.value(settings.aggregation) for m in readable],
                n_errors=len(members) - len(readable),
                n_memorised=sum(m.score.memorised for m in members),
                seed=settings.seed,
                n_boot=settings.n_boot,
                info={k: v for k, v in infos[label].items() if v is not None},
            )
        )
    warnings = list(references.warnings)
    warnings.extend(f"{s.path}: {s.result.note}" for s in scored if s.result.note)
    errors = [s for s in scored if s.error is not None]
    if errors:
        warnings.append(f"{len(errors)} image(s) could not be read; they are listed with the reason in the report")
    faceless = [s for s in scored if s.error is None and not s.score.face_found]
    if faceless and len(faceless) == len(scored) - len(errors):
        warnings.append("no face was found in any readable image: every score is missing")
    memorised = sum(s.score.memorised for s in scored)
    if memorised:
        warnings.append(
            f"{memorised} image(s) are closer to one reference photo than any two reference photos are to each "
            f"other (possible memorisation of a training photo)"
        )
    run = ScoreRun(settings=settings, model=model, references=references, images=scored, groups=stats, warnings=warnings, images_root=images_root)
    if people is not None:
        run.people = people
        for group in stats:
            readable = [m.people for m in by_group[group.label] if m.error is None and m.people is not None]
            run.people_groups[group.label] = people_group_statistics(people, readable, seed=settings.seed, n_boot=settings.n_boot)
        run.warnings.extend(people_warnings(people, run))
    return run


def expected_people(people: PeopleSet, prompt: str | None, expect: Sequence[str] | None) -> tuple[list[str], str]:
    """The people expected in one image and where that came from (``prompt`` | ``--expect`` | ``everyone``)."""
    named = expected_from_prompt(prompt, {name: name for name in people.names})
    if named:
        return named, "prompt"
    if expect:
        return [name for name in people.names if name in set(expect)], "--expect"
    return list(people.names), "everyone"


def people_warnings(people: PeopleSet, run: ScoreRun) -> list[str]:
    """Sentences about the people: someone expected who never appears, images where faces blended."""
    warnings = [f"people: {w}" for w in people.warnings]
    images = [i.people for i in run.images if i.people is not None and i.error is None]
    for name in people.names:
        expected = [i for i in images if name in i.expected]
        if expected and not any(i.people[name].found for i in expected):
            warnings.append(f"{name} is expected in {len(expected)} image(s) but never appears in any")
    blended = sum(i.blended for i in images)
    if blended:
        warnings.append(f"{blended} of {len(images)} image(s) show blended faces (a face like two people, or one person's face on several)")
    return warnings


def people_references(people: PeopleSet) -> ReferenceSet:
    """Every person's reference photos as one set (``name/photo`` paths): the classic per-image score
    of a people run is the best match to anyone in the family; the per-person scores are in ``people``."""
    photos: list[ReferencePhoto] = []
    rows: list[np.ndarray] = []
    warnings: list[str] = []
    for name, reference in zip(people.names, people.references):
        for photo in reference.photos:
            row = None
            if photo.row is not None:
                row = len(rows)
                rows.append(reference.embeddings[photo.row])
            photos.append(ReferencePhoto(path=f"{name}/{photo.path}", n_faces=photo.n_faces, error=photo.error, row=row,
                                         face_index=photo.face_index, loo=photo.loo, outlier=photo.outlier))
        warnings.extend(f"{name}: {w}" for w in reference.warnings)
    embeddings = np.stack(rows).astype(np.float32)
    return ReferenceSet(embeddings=embeddings, photos=photos, baseline=reference_baseline(embeddings, people.aggregation), warnings=warnings)


def collect_images(folder: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Images to score in ``folder`` (recursively), or the single file given."""
    return scan_folder(folder, exclude).paths


def scan_folder(folder: Path, exclude: Sequence[Path] = ()) -> ImageScan:
    """:func:`collect_images` with what was left out and why (see :class:`ImageScan`)."""
    folder = Path(folder)
    if folder.is_file():
        return ImageScan(paths=[folder])
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist")
    return scan_images(folder, recursive=True, exclude=tuple(exclude))


def build_references(
    engine: FaceEngine,
    refs: Path | Sequence[Path],
    cache: FaceCache | None = None,
    progress: Progress | None = None,
    aggregation: str = "max",
) -> ReferenceSet:
    """Analyse the reference photos (a folder or a list of files) into a :class:`ReferenceSet`."""
    if isinstance(refs, (str, Path)):
        root = Path(refs)
        paths = collect_images(root)
        root = root if root.is_dir() else None
    else:
        paths, root = [Path(p) for p in refs], None
    results = analyze_paths(engine, paths, cache=cache, progress=progress, description="reference photos")
    return ReferenceSet.from_results(results, reference_names(paths, root), aggregation=aggregation)


def references_from_arrays(
    engine: FaceEngine,
    arrays: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    cache: FaceCache | None = None,
    aggregation: str = "max",
    progress: Progress | None = None,
) -> ReferenceSet:
    """A :class:`ReferenceSet` from in-memory photos (``(H, W, 3)`` RGB).

    Raises:
        NoReferencesError: no photo has a usable face (the message names each one and why).
    """
    names = list(names) if names is not None else [f"reference {i + 1}" for i in range(len(arrays))]
    results = analyze_arrays(engine, arrays, names, cache=cache, progress=progress, description="reference photos")
    return ReferenceSet.from_results(results, names, aggregation=aggregation)


def score_arrays(
    engine: FaceEngine,
    references: ReferenceSet,
    arrays: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    groups: Sequence[tuple[str, dict]] | None = None,
    settings: ScoreSettings | None = None,
    cache: FaceCache | None = None,
    progress: Progress | None = None,
    people: PeopleSet | None = None,
    prompts: Sequence[str | None] | None = None,
    expect: Sequence[str] | None = None,
) -> ScoreRun:
    """Score in-memory images against ``references``: the same :class:`ScoreRun` as :func:`score_folder`.

    With ``people`` (and ``references`` = :func:`people_references` of them), every person is scored
    in every image; ``prompts`` (one per image, or ``None``) and ``expect`` say who is expected.

    Args:
        arrays: RGB images ``(H, W, 3)``, uint8 or float in 0..1.
        names: one per image (default ``image 1``, …).
        groups: ``(label, info)`` per image; ``info`` may carry ``run``/``epoch``/``step``/``strength``
            so groups sort by run, epoch and strength. Default: one group ``all``.
    """
    settings = settings or ScoreSettings(group_by="none")
    started = time.perf_counter()
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(arrays))]
    groups = list(groups) if groups is not None else [("all", {}) for _ in arrays]
    if len(groups) != len(arrays):
        raise ValueError(f"{len(groups)} labels for {len(arrays)} images")
    results = analyze_arrays(engine, arrays, names, cache=cache, progress=progress, description="images")
    run = score_results(results, names, groups, references, settings, engine.describe(), people=people, prompts=prompts, expect=expect)
    run.arrays = list(arrays)
    run.warnings = list(engine.warnings) + run.warnings
    run.timings = {
        "images_s": round(time.perf_counter() - started, 3),
        "n_references": len(references.photos),
        "n_images": len(arrays),
        "cache_hits": cache.hits if cache is not None else 0,
        "cache_misses": cache.misses if cache is not None else 0,
    }
    return run


def score_image_folder(
    engine: FaceEngine,
    references: ReferenceSet,
    images: Path,
    settings: ScoreSettings | None = None,
    cache: FaceCache | None = None,
    progress: Progress | None = None,
    exclude: Sequence[Path] = (),
    people: PeopleSet | None = None,
    expect: Sequence[str] | None = None,
) -> ScoreRun:
    """Score every image file under ``images`` (recursively; or the one file given) against ``references``.

    With ``people``, each image's prompt (its A1111 / ComfyUI / Likeness sweep metadata) says who is
    expected in it (see :func:`score_results`).

    Files of any size and format are read (:func:`~lora_likeness.images.decode_image`); each image keeps
    its name, the path relative to ``images``, in natural order, and is grouped as ``settings.group_by``
    says (by sub-folder by default, as ``likeness score`` does). The run's ``images_root`` is the folder.

    Raises:
        FileNotFoundError: ``images`` does not exist.
    """
    settings = settings or ScoreSettings()
    started = time.perf_counter()
    images = Path(images)
    root = images if images.is_dir() else images.parent
    scan = scan_folder(images, exclude=exclude)
    paths = scan.paths
    results = analyze_paths(engine, paths, cache=cache, progress=progress, description="images")
    names = [relative_name(p, root) for p in paths]
    # A trainer's checkpoints beside its samples: the one closest to the best step, and the step each epoch ended at.
    checkpoints = samples_checkpoints(root) if settings.group_by == "step" else []
    groups = image_groups(paths, root, settings.group_by, epoch_steps(checkpoints))
    prompts = [prompt_from_metadata(read_generation_text(p)) for p in paths] if people is not None else None
    run = score_results(results, names, groups, references, settings, engine.describe(), images_root=str(root),
                        people=people, prompts=prompts, expect=expect)
    run.warnings = list(engine.warnings) + run.warnings
    if scan.excluded:
        shown = [relative_name(p, root) + ("/" if p.is_dir() else "") for p in scan.excluded]
        run.warnings.append(f"not scored, being this tool's own output: {', '.join(shown[:5])}{', …' if len(shown) > 5 else ''} (under {images})")
    run.warnings.extend(scan.notes)
    if cache is not None and cache.disabled_reason:
        run.warnings.append(cache.disabled_reason)
    if not paths:
        run.warnings.append(f"no image files found under {images}")
    if settings.group_by in ("step", "lora"):
        # The groups are checkpoints or training steps: the sweep's recommendation over them, with the saved
        # checkpoint closest to the best step.
        run.verdict = step_verdict(run, checkpoints)
    run.timings = {
        "images_s": round(time.perf_counter() - started, 3),
        "n_references": len(references.photos),
        "n_images": len(paths),
        "cache_hits": cache.hits if cache is not None else 0,
        "cache_misses": cache.misses if cache is not None else 0,
    }
    return run


def build_people(
    engine: FaceEngine,
    folders: Mapping[str, Path] | Sequence[tuple[str, Path]],
    cache: FaceCache | None = None,
    progress: Progress | None = None,
    aggregation: str = "max",
) -> PeopleSet:
    """One :class:`ReferenceSet` per person (name -> folder or file of their photos) and the
    thresholds that tell them apart (:meth:`PeopleSet.build`).

    Raises:
        NoReferencesError: a person's photos hold no usable face (the message names the person).
        PeopleError: names given twice, or a person who cannot be given a threshold.
    """
    items = list(folders.items()) if isinstance(folders, Mapping) else list(folders)
    sets: list[tuple[str, ReferenceSet]] = []
    for name, folder in items:
        try:
            sets.append((name, build_references(engine, Path(folder), cache=cache, progress=progress, aggregation=aggregation)))
        except NoReferencesError as exc:
            raise NoReferencesError(f"{name}: {exc}") from exc
    return PeopleSet.build(sets, aggregation=aggregation)


def people_folders(root: Path) -> list[tuple[str, Path]]:
    """``--people DIR``: one person per sub-folder (its name is the person's name and trigger word),
    in natural order; sub-folders without images are left out by the caller's reference check.

    Raises:
        PeopleError: ``root`` has no sub-folder.
    """
    from .images import natural_key
    from .people import PeopleError

    root = Path(root)
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
    if not folders:
        raise PeopleError(f"{root} has no sub-folders: --people needs one folder of photos per person (e.g. {root}/dad, {root}/mum)")
    return [(p.name, p) for p in folders]


def score_folder(
    engine: FaceEngine,
    refs: Path | Sequence[Path] | None,
    images: Path,
    settings: ScoreSettings | None = None,
    cache: FaceCache | None = None,
    progress: Progress | None = None,
    exclude: Sequence[Path] = (),
    people: Mapping[str, Path] | Sequence[tuple[str, Path]] | None = None,
    expect: Sequence[str] | None = None,
) -> ScoreRun:
    """Score every image under ``images`` against the reference photos ``refs``, or, with
    ``people`` (name -> photos), every person in every image."""
    settings = settings or ScoreSettings()
    started = time.perf_counter()
    people_set = None
    if people is not None:
        people_set = build_people(engine, people, cache=cache, progress=progress, aggregation=settings.aggregation)
        references = people_references(people_set)
    else:
        references = build_references(engine, refs, cache=cache, progress=progress, aggregation=settings.aggregation)
    refs_done = time.perf_counter()
    run = score_image_folder(engine, references, images, settings, cache=cache, progress=progress, exclude=exclude,
                             people=people_set, expect=expect)
    run.timings = {"references_s": round(refs_done - started, 3), **run.timings}
    return run
