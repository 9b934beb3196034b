"""``prepare_dataset``: real photos of a person -> a Kohya training folder. What ``likeness prepare``,
the ComfyUI "Prepare Dataset" node and the A1111 tab all call.

Steps (each photo that drops out gets one rejection code and a sentence, see
:data:`~lora_likeness.dataset.records.REJECTION_CODES`):

1. read every photo once (EXIF rotation, HEIC/AVIF with pillow-heif; unreadable files are recorded)
   and find faces with the shared :class:`~lora_likeness.faces.FaceEngine` (and its cache);
2. decide who is in each photo: faces matching the ``--subject`` / ``--identity`` reference
   photos, faces marked by imported face boxes, or else the largest identity cluster;
3. quality filters on those faces (size, sharpness, pose, exposure; thresholds in
   :class:`~lora_likeness.dataset.config.QualityThresholds`);
4. crop planning per framing (never cutting the face, keeping other people out, padding rather
   than stretching);
5. near-duplicates (same file, perceptual hash, or near-identical face embedding) keep the best;
6. identity outliers are flagged and ranked last; the best ``max_images`` are kept with a spread
   of framings;
7. crops, captions, ``reg/``, ``dataset.toml``, ``report.json`` / ``report.html`` and contact
   sheets are written to a staging folder and then moved into ``--out``: a re-run with the same
   input leaves the output untouched, a different earlier output moves to ``previous/<time>/``.
   Source photos are only ever read.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..cache import FaceCache
from ..faces import FaceEngine
from ..families import get_family
from ..images import ANALYSIS_DRAFT_SIDE, ANALYSIS_MAX_SIDE, decode_image, list_images, write_bytes_atomic, write_text_atomic
from ..progress import Progress
from ..scoring import normalize
from . import kohya
from .boxes import FaceBox, load_face_boxes, match_boxes
from .captions import Tagger, build_caption
from .config import FRAMINGS, PrepareConfig, PrepareConfigError
from .framing import output_size, photo_aspect, plan_window, render_crop
from .identity import assign_faces, coverage_matrix, find_clusters, outliers
from .quality import face_problem, measure_face, perceptual_hash, quality_score
from .records import FaceInfo, KeptImage, PhotoRecord, PrepareResult, Rejection

#: Files and folders of ``--out`` that a run owns (and moves to ``previous/`` when they change).
MANAGED = ("img", "reg", "dataset.toml", "report.json", "report.html", "contact_kept.jpg", "contact_rejected.jpg")
THUMB_SIDE = 192
#: Regularisation images are shown once per epoch (sd-scripts balances them against the training
#: images itself).
REG_REPEATS = 1
JPEG_QUALITY = 95
_STAGING_PREFIX = ".likeness-staging-"
HEIF_SUFFIXES = (".heic", ".heif", ".avif")
#: Crops enlarged more than this (output pixels per source pixel) are named in a warning.
UPSCALE_WARNING = 2.0
#: Transparent parts of a photo (a cut-out's background) are laid on this neutral grey (RGB), not on
#: white: a white surround would teach the LoRA a studio backdrop and wash out soft edges.
TRANSPARENT_BACKGROUND = (128, 128, 128)
#: A photo whose pixels are this much (share of the image) half-transparent is rejected: its colours
#: are a mix with whatever background, washed out on any of them.
HALF_TRANSPARENT_LIMIT = 0.25


# --------------------------------------------------------------------------------------------
# 1. Reading photos
# --------------------------------------------------------------------------------------------


def _examine(engine: FaceEngine, fingerprint: str, path: Path, rel: str, cache: FaceCache | None) -> PhotoRecord:
    """Worker step: read the file once; decode at the analysis size; faces from the cache or the
    engine; per-face quality measures, a perceptual hash and a thumbnail while the pixels are here."""
    from PIL import Image

    record = PhotoRecord(path=path, rel=rel)
    try:
        data = path.read_bytes()
    except OSError:
        data = None
    record.sha256 = hashlib.sha256(data).hexdigest() if data else ""
    if data:
        loaded = decode_image(data, ANALYSIS_MAX_SIDE, name=rel, sha256=record.sha256, draft_side=ANALYSIS_DRAFT_SIDE,
                              background=TRANSPARENT_BACKGROUND)
    else:
        loaded = decode_image(path, ANALYSIS_MAX_SIDE, name=rel, background=TRANSPARENT_BACKGROUND)
    loaded.path = path
    if loaded.error is not None or loaded.rgb is None:
        record.error = loaded.error or f"{rel}: cannot be decoded"
        if path.suffix.lower() in HEIF_SUFFIXES and "unknown" in record.error and not _heif_available():
            record.error += "; HEIC/AVIF photos need the pillow-heif plugin: pip install pillow-heif"
        return record
    record.size = loaded.original_size
    record.transparent_share, record.half_transparent_share = loaded.transparent_share, loaded.half_transparent_share
    if record.half_transparent_share > HALF_TRANSPARENT_LIMIT:
        return record  # rejected by screen(); no need to look for faces
    result = cache.get(record.sha256, fingerprint) if cache is not None else None
    if result is None:
        result = engine.analyze(loaded)
        if cache is not None:
            cache.put(result, fingerprint)
    for face in result.faces:
        measures = measure_face(loaded.rgb, face.box, face.kps, loaded.scale) if face.embedding is not None else None
        record.faces.append(FaceInfo(box=np.asarray(face.box, np.float64), kps=np.asarray(face.kps, np.float64), det_score=face.det_score,
                                     embedding=None if face.embedding is None else np.asarray(face.embedding, np.float64), measures=measures))
    record.phash = perceptual_hash(loaded.rgb)
    thumb = Image.fromarray(loaded.rgb)
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    record.thumb = _jpeg_bytes(thumb)
    return record


def _heif_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pillow_heif") is not None


def _jpeg_bytes(image) -> bytes:
    """A thumbnail kept for the contact sheet as JPEG bytes (~6 KB, not 110 KB of pixels per photo)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def examine_photos(
    engine: FaceEngine,
    paths: Sequence[Path],
    rels: Sequence[str],
    cache: FaceCache | None = None,
    progress: Progress | None = None,
) -> list[PhotoRecord]:
    """:func:`_examine` every photo, ``engine.workers`` at once, in order; checks for cancellation
    between photos."""
    progress = progress or Progress()
    fingerprint = engine.fingerprint
    progress.start(len(paths), "photos")
    records: list[PhotoRecord] = []
    jobs = [(_examine, engine, fingerprint, Path(path), rel, cache) for path, rel in zip(paths, rels)]
    for record in _in_order(jobs, engine.workers, progress, "likeness-prepare"):
        records.append(record)
        progress.advance(1, record.rel)
    progress.finish()
    return records


def _in_order(jobs: Sequence[tuple], workers: int, progress: Progress, name: str):
    """Yield ``function(*args)`` for each ``(function, *args)`` job, in order, ``workers`` at once
    with a bounded look-ahead (memory stays at a few photos), checking for cancellation before each."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        pending: deque = deque()
        queue = iter(jobs)
        try:
            while True:
                while len(pending) < workers * 2:
                    job = next(queue, None)
                    if job is None:
                        break
                    pending.append(pool.submit(*job))
                if not pending:
                    break
                progress.check()
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# --------------------------------------------------------------------------------------------
# 2. Who is in each photo
# --------------------------------------------------------------------------------------------


def _identity_list(config: PrepareConfig) -> list[tuple[str, str]]:
    """``(trigger, class word)`` per identity, in config order."""
    if config.multi:
        return [(i.name, i.class_word or config.class_word) for i in config.identities]
    return [(config.trigger, config.class_word)]


def _reference_centroids(engine, config: PrepareConfig, cache, progress, warnings: list[str]) -> tuple[dict[str, np.ndarray], list[dict]]:
    from ..pipeline import build_references
    from ..references import NoReferencesError

    sources = [(i.name, i.refs) for i in config.identities] if config.multi else (
        [(config.trigger, Path(config.subject_refs))] if config.subject_refs is not None else []
    )
    centroids: dict[str, np.ndarray] = {}
    info: list[dict] = []
    for name, refs in sources:
        try:
            reference_set = build_references(engine, refs, cache=cache, progress=progress)
        except NoReferencesError as exc:
            raise PrepareConfigError(f"reference photos of {name} ({refs}): {exc}") from exc
        centroids[name] = normalize(reference_set.embeddings.mean(axis=0))
        warnings.extend(f"{name}: {w}" for w in reference_set.warnings)
        info.append({"name": name, "refs": str(refs), "n_references": reference_set.n, "baseline_mean": reference_set.baseline.mean})
    return centroids, info


def _apply_boxes(records: Sequence[PhotoRecord], boxes: dict[str, list[FaceBox]], config: PrepareConfig, warnings: list[str]) -> dict[int, dict[str, int]]:
    """Faces marked by imported boxes: record index -> {identity: face index}."""
    from .boxes import iou

    names = {i.name.lower(): i.name for i in config.identities}
    marked: dict[int, dict[str, int]] = {}
    unnamed, unknown, undetected = 0, set(), 0
    for index, record in enumerate(records):
        for box in boxes.get(record.rel, []):
            if not record.faces or record.error:
                undetected += 1
                continue
            pixels = box.to_pixels(record.size)
            overlaps = [iou(pixels, f.box) if f.embedding is not None else 0.0 for f in record.faces]
            face = int(np.argmax(overlaps))
            if overlaps[face] < config.selection.box_iou:
                undetected += 1
                continue
            if config.multi:
                if box.name is None:
                    unnamed += 1
                    continue
                name = names.get(box.name.lower())
                if name is None:
                    unknown.add(box.name)
                    continue
            else:
                name = config.trigger
            marked.setdefault(index, {})[name] = face
    if undetected:
        warnings.append(f"{undetected} imported face box(es) match no detected face (IoU < {config.selection.box_iou}); those photos were matched by embeddings")
    if unnamed:
        warnings.append(f"{unnamed} imported face box(es) have no name; with --identity each box needs the identity's name")
    if unknown:
        warnings.append(f"imported face boxes name people without an --identity: {', '.join(sorted(unknown))} (ignored)")
    return marked


def label_identities(records: Sequence[PhotoRecord], config: PrepareConfig, centroids: dict[str, np.ndarray],
                     marked: dict[int, dict[str, int]], warnings: list[str]) -> dict[str, np.ndarray]:
    """Fill each record's ``identities`` / ``similarity``; returns the identity centroids used.

    Single person without references: the faces marked by boxes define the subject, else the
    largest identity cluster does (with a warning when a second person is nearly as frequent).
    """
    threshold = config.selection.match_threshold
    centroids = dict(centroids)
    if not config.multi and not centroids:
        if marked:
            chosen = [records[i].faces[f].embedding for i, faces in marked.items() for f in faces.values()]
            centroids[config.trigger] = normalize(np.mean(chosen, axis=0))
        else:
            keys, vectors = [], []
            for i, record in enumerate(records):
                for j, face in enumerate(record.faces):
                    if face.embedding is not None:
                        keys.append((i, j))
                        vectors.append(face.embedding)
            if not vectors:
                return centroids
            clusters = find_clusters(np.asarray(vectors), keys, threshold, count=2)
            centroids[config.trigger] = clusters[0].centroid
            if len(clusters) > 1 and len(clusters[1].members) >= max(3, 0.6 * len(clusters[0].members)):
                warnings.append(
                    f"two people appear about equally often ({len(clusters[0].members)} and {len(clusters[1].members)} photos); "
                    f"the more frequent one was taken as the subject. Pass --subject with a few photos of the person to be sure."
                )
    for index, record in enumerate(records):
        embedded = [(j, f.embedding) for j, f in enumerate(record.faces) if f.embedding is not None]
        if record.error or not embedded:
            continue
        assigned, best = assign_faces([e for _, e in embedded], centroids, threshold)
        record.similarity = best
        record.identities = {name: embedded[k][0] for name, k in assigned.items()}
        if index in marked:  # imported boxes override the embedding match
            record.boxed = True
            for name, face in marked[index].items():
                record.identities = {n: f for n, f in record.identities.items() if n != name and f != face}
                record.identities[name] = face
        for name, face in record.identities.items():
            record.similarity[name] = float(record.faces[face].embedding @ centroids[name])
        order = list(centroids)
        record.identities = dict(sorted(record.identities.items(), key=lambda item: order.index(item[0])))
    return centroids


# --------------------------------------------------------------------------------------------
# 3-6. Filters, framing, duplicates, ranking
# --------------------------------------------------------------------------------------------


def _reject(record: PhotoRecord, code: str, reason: str) -> None:
    record.code, record.reason = code, reason


def screen(records: Sequence[PhotoRecord], config: PrepareConfig) -> None:
    """Unreadable / no face / not the subject / quality / framing: set ``code`` and ``reason`` of
    each record that fails, ``windows`` and ``score`` of each that passes."""
    threshold = config.selection.match_threshold
    for record in records:
        if record.error is not None:
            _reject(record, "unreadable", record.error)
            continue
        if record.half_transparent_share > HALF_TRANSPARENT_LIMIT:
            _reject(record, "half_transparent", f"{record.half_transparent_share:.0%} of the photo is half-transparent (more than "
                                                f"{HALF_TRANSPARENT_LIMIT:.0%}): its colours would be washed out on any background; "
                                                f"save it without transparency (e.g. as JPEG)")
            continue
        if not record.faces:
            _reject(record, "no_face", "no face detected")
            continue
        if not record.identities:
            best = ", ".join(f"{name} {value:.2f}" for name, value in record.similarity.items() if not math.isnan(value))
            who = "none of the identities is" if config.multi else "the subject is not"
            _reject(record, "not_subject", f"{who} in this photo (best face similarity: {best or 'n/a'}; needed {threshold:.2f})")
            continue
        problem = None
        for name, face in record.identities.items():
            measures = record.faces[face].measures
            found = face_problem(measures, config.quality) if measures is not None else ("face_too_small", "face not measurable")
            if found is not None:
                problem = (found[0], (f"{name}: " if config.multi else "") + found[1])
                break
        if problem is not None:
            _reject(record, *problem)
            continue
        framed = [record.faces[f].box for f in record.identities.values()]
        subject_size = min(record.faces[f].size for f in record.identities.values())
        foreign = [f.box for j, f in enumerate(record.faces)
                   if j not in record.identities.values() and f.size >= config.selection.other_face_ratio * subject_size]
        aspect = photo_aspect(record.size) if config.keep_aspect else 1.0
        reasons = set()
        for framing in config.framings:
            window, why = plan_window(record.size, framed, framing, foreign, aspect=aspect,
                                      max_padding=config.selection.max_padding, min_scale=config.selection.min_framing_scale)
            if window is not None:
                record.windows[framing] = window
            else:
                reasons.add(why)
        if not record.windows:
            if "foreign" in reasons:
                _reject(record, "other_face", f"another person's face ({len(foreign)} nearby) would be cut or shown in every framing")
            else:
                _reject(record, "no_framing", f"the photo is too small around the face: every framing would need more than "
                                              f"{config.selection.max_padding:.0%} padding (--keep-aspect or a larger --max-padding "
                                              f"would keep it)")
            continue
        scores = [quality_score(record.faces[f].measures, config.quality, record.similarity[name], threshold, config.size)
                  for name, f in record.identities.items()]
        record.score = float(min(scores))


def _primary_face(record: PhotoRecord) -> np.ndarray:
    face = max(record.identities.values(), key=lambda f: record.faces[f].size)
    return record.faces[face].embedding


def remove_duplicates(records: Sequence[PhotoRecord], config: PrepareConfig) -> None:
    """Among passing photos, best first: a photo that is the same file, the same picture
    (perceptual hash) or the same shot (face embedding, same people) as one already kept is rejected.

    Vectorised over the photos kept so far, so thousands of photos stay well under a second.
    """
    survivors = sorted((r for r in records if r.code is None), key=lambda r: (-r.score, r.rel))
    by_sha: dict[str, PhotoRecord] = {}
    accepted: list[PhotoRecord] = []
    hashes: list[int] = []
    by_people: dict[frozenset, tuple[list[PhotoRecord], list[np.ndarray]]] = {}
    for record in survivors:
        duplicate_of, why = by_sha.get(record.sha256), "the same file"
        if duplicate_of is None and hashes:
            distances = hash_distances(np.array(hashes, dtype=np.uint64), record.phash)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= config.selection.duplicate_hash_distance:
                duplicate_of, why = accepted[nearest], f"the same picture (perceptual hash distance {int(distances[nearest])} of 64)"
        people = frozenset(record.identities)
        same_people, faces = by_people.get(people, ([], []))
        if duplicate_of is None and same_people:
            similarity = np.asarray(faces) @ _primary_face(record)
            best = int(np.argmax(similarity))
            if similarity[best] >= config.selection.duplicate_similarity:
                duplicate_of, why = same_people[best], f"the same shot (face similarity {similarity[best]:.3f})"
        if duplicate_of is not None:
            _reject(record, "duplicate", f"near-duplicate of {duplicate_of.rel}: {why}; the better one was kept")
            continue
        accepted.append(record)
        by_sha[record.sha256] = record
        hashes.append(record.phash)
        same_people.append(record)
        faces.append(_primary_face(record))
        by_people[people] = (same_people, faces)


def hash_distances(hashes: np.ndarray, value: int) -> np.ndarray:
    """Hamming distances between ``value`` and each 64-bit hash in ``hashes`` (uint64 array)."""
    xor = np.bitwise_xor(hashes, np.uint64(value))
    return np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def flag_outliers(records: Sequence[PhotoRecord], config: PrepareConfig, warnings: list[str]) -> None:
    """Per identity: a passing photo whose face is far less like the person than the others is
    flagged (kept, ranked after the rest) with a warning."""
    names = {name for r in records if r.code is None for name in r.identities}
    for name in sorted(names):
        members = [r for r in records if r.code is None and name in r.identities]
        for index in outliers([r.similarity[name] for r in members], config.selection.outlier_mad):
            record = members[index]
            record.outlier = True
            warnings.append(f"{record.rel}: {name}'s face looks less like the other photos of {name} "
                            f"(similarity {record.similarity[name]:.3f}); check that it is the right person")


def _framing_cost(window) -> float:
    return (1.0 - window.scale) + 2.0 * window.padding


def select(records: Sequence[PhotoRecord], config: PrepareConfig) -> list[tuple[PhotoRecord, str]]:
    """The best ``max_images`` passing photos with a spread of framings: ``(record, framing)``.

    Rank by score (identity outliers last). First pass, best first: a photo is taken when one of
    its possible framings is still below its share (``ceil(max_images / len(framings))``); second
    pass: fill the remaining places by rank. Each photo gets the possible framing with the fewest
    images so far (ties: the one closest to its ideal window, then the wider one).
    """
    ranked = sorted((r for r in records if r.code is None), key=lambda r: (r.outlier, -r.score, r.rel))
    limit = config.max_images
    quota = math.ceil(limit / len(config.framings))
    counts = {f: 0 for f in config.framings}
    chosen: dict[int, str] = {}
    order = {f: FRAMINGS.index(f) for f in config.framings}

    def pick(record: PhotoRecord, below_quota: bool) -> str | None:
        options = [f for f in record.windows if not below_quota or counts[f] < quota]
        if not options:
            return None
        return min(options, key=lambda f: (counts[f], round(_framing_cost(record.windows[f]), 6), -order[f]))

    for below_quota in (True, False):
        for index, record in enumerate(ranked):
            if len(chosen) >= limit:
                break
            if index in chosen:
                continue
            framing = pick(record, below_quota)
            if framing is not None:
                chosen[index] = framing
                counts[framing] += 1
    for index, record in enumerate(ranked):
        if index not in chosen:
            _reject(record, "over_limit", f"not among the best {limit} photos (rank {index + 1} of {len(ranked)}, score {record.score:.3f})")
    return [(ranked[i], chosen[i]) for i in sorted(chosen)]


# --------------------------------------------------------------------------------------------
# 7. Writing
# --------------------------------------------------------------------------------------------


def _safe_stem(text: str, limit: int = 60) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "photo"
    return stem[:limit]


def _encode(image, image_format: str) -> bytes:
    import io

    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        # zlib level 1: 3.6x faster than Pillow's default 6 on 1024 px photos, 16% larger files.
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _tree_digest(root: Path, names: Sequence[str]) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under the managed ``names`` of ``root``."""
    digest: dict[str, str] = {}
    for name in names:
        top = root / name
        if top.is_file():
            digest[name] = hashlib.sha256(top.read_bytes()).hexdigest()
        elif top.is_dir():
            for folder, _, files in os.walk(top):
                for file in files:
                    path = Path(folder) / file
                    digest[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def _default_permissions(staging: Path) -> None:
    """Atomic writes go through private (0600) temporary files; give the dataset the permissions
    any new file gets here (umask), so a trainer running as another user can read it."""
    probe = staging / ".permissions-probe"
    probe.touch()
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for folder, _, files in os.walk(staging):
        for name in files:
            os.chmod(Path(folder) / name, mode)


def _commit(staging: Path, out: Path) -> tuple[bool, Path | None]:
    """Move the staged output into ``out``. Returns ``(unchanged, previous)``: nothing is touched
    when ``out`` already holds exactly the staged files; otherwise the managed items already there
    move to ``out/previous/<time>/`` first."""
    from ..report import preserve_previous

    staged = [n for n in MANAGED if (staging / n).exists()]
    _default_permissions(staging)
    if _tree_digest(staging, MANAGED) == _tree_digest(out, MANAGED):
        return True, None
    previous = preserve_previous(out, MANAGED)
    for name in staged:
        os.replace(staging / name, out / name)
    return False, previous


def _render_one(record: PhotoRecord, framing: str, config: PrepareConfig):
    """Worker step: the crop, how much it was enlarged, and its encoded file (encoding releases
    the GIL, so it runs in parallel here rather than in the writing loop)."""
    window = record.windows[framing]
    size = output_size(config.size, window, config.keep_aspect)
    image, upscale = render_crop(record.path, window, size, record.size, background=TRANSPARENT_BACKGROUND)
    return image, upscale, (_encode(image, config.image_format) if image is not None else None)


def prepare_dataset(
    engine: FaceEngine,
    config: PrepareConfig,
    progress: Progress | None = None,
    cache: FaceCache | None = None,
    tagger: Tagger | None = None,
) -> PrepareResult:
    """Turn ``config.photos`` into a Kohya dataset in ``config.out`` (see the module docstring).

    Args:
        engine: a loaded :class:`FaceEngine` (hosts keep one per process).
        config: plain settings; :meth:`PrepareConfig.validate` is called here.
        progress: receives ``start/advance`` for "reference photos", "photos" and "crops", and is
            checked for cancellation between photos (:class:`~lora_likeness.progress.Cancelled`).
        cache: face cache; by default the one ``config.cache_dir`` names (unless ``use_cache`` is off).
        tagger: ``rgb -> tags`` for captions; by default a :class:`WD14Tagger` when
            ``config.tagger_dir`` is set, else none.

    Raises:
        PrepareConfigError: a setting the user must fix (message says which).
    """
    config.validate()
    progress = progress or Progress()
    started = time.perf_counter()
    warnings: list[str] = list(engine.warnings)
    if config.multi and config.trigger:
        warnings.append(f"the trigger {config.trigger!r} is not used: with identities, each identity's name is its trigger")
    if cache is None and config.use_cache:
        cache = FaceCache(config.cache_dir)
    if tagger is None and config.tagger_dir is not None:
        from .captions import WD14Tagger

        try:
            tagger = WD14Tagger(config.tagger_dir, config.tag_threshold)
        except (OSError, ValueError) as exc:
            raise PrepareConfigError(f"--tagger {config.tagger_dir}: {exc}") from exc
    out = config.out
    photos_root = config.photos
    exclude = [out] + ([cache.folder] if cache is not None else [])
    paths = list_images(photos_root, recursive=True, exclude=tuple(exclude))
    rels = [p.relative_to(photos_root).as_posix() for p in paths]

    boxes_by_photo: dict[str, list[FaceBox]] = {}
    if config.face_boxes is not None:
        from .boxes import FaceBoxError

        try:
            boxes = load_face_boxes(config.face_boxes)
        except FaceBoxError as exc:
            raise PrepareConfigError(str(exc)) from exc
        names = {b.name for b in boxes if b.name}
        if not config.multi and len(names) > 1:
            raise PrepareConfigError(
                f"{config.face_boxes} names several people ({', '.join(sorted(names)[:6])}); keep only the subject's rows "
                f"or give each person with --identity NAME=REF_DIR"
            )
        boxes_by_photo, box_warnings = match_boxes(boxes, rels)
        warnings.extend(box_warnings)

    centroids, identity_info = _reference_centroids(engine, config, cache, progress, warnings)
    refs_done = time.perf_counter()
    records = examine_photos(engine, paths, rels, cache=cache, progress=progress)
    analysed = time.perf_counter()
    marked = _apply_boxes(records, boxes_by_photo, config, warnings) if boxes_by_photo else {}
    centroids = label_identities(records, config, centroids, marked, warnings)
    if not identity_info and centroids:
        source = "imported face boxes" if marked else "the largest identity cluster"
        identity_info = [{"name": config.trigger, "refs": source, "n_references": None, "baseline_mean": None}]
    screen(records, config)
    remove_duplicates(records, config)
    flag_outliers(records, config, warnings)
    selected = select(records, config)

    identities = _identity_list(config)
    classes = dict(identities)
    n_kept = len(selected)
    repeats = config.repeats or kohya.repeats_for(n_kept, config.target_steps, config.batch_size)

    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out))
    except OSError as exc:
        raise PrepareConfigError(f"cannot write to --out {out}: {exc.strerror or exc}") from exc
    try:
        kept, sheet_kept = _write_images(selected, config, identities, classes, repeats, staging, tagger, progress)
        reg_count, reg_warnings = _write_reg(config, staging)
        warnings.extend(reg_warnings)
        rendered = time.perf_counter()

        subsets, subset_rows = _subsets(kept, identities, classes, repeats, out, config, reg_count)
        steps = kohya.steps_per_epoch(len(kept) * repeats, config.batch_size)
        coverage = coverage_matrix([n for n, _ in identities], [frozenset(k.identities) for k in kept]) if config.multi else []
        for row in coverage:
            if row.exactly == 0:
                warnings.append(f"no kept image shows exactly {' + '.join(row.identities)}: the LoRA gets no example of that combination")
        if kept and len(kept) < 10:
            warnings.append(f"only {len(kept)} images were kept; 15-50 good photos train a face LoRA far better")
        kept_sources = {k.source for k in kept}
        composited = [r.rel for r in records if r.rel in kept_sources and r.transparent_share > 0]
        if composited:
            warnings.append(f"{len(composited)} kept photo(s) have transparent parts (e.g. {composited[0]}); they were laid on a "
                            f"neutral grey background (RGB {', '.join(map(str, TRANSPARENT_BACKGROUND))})")
        enlarged = [k for k in kept if k.upscale > UPSCALE_WARNING]
        if enlarged:
            warnings.append(f"{len(enlarged)} image(s) were enlarged more than {UPSCALE_WARNING:g}x (small faces or photos, e.g. "
                            f"{enlarged[0].source}); they look soft at {config.size} px: a smaller --size or larger photos help")
        for name, _ in identities:
            present = sum(1 for k in kept if name in k.identities)
            if config.multi and present == 0:
                warnings.append(f"no kept image shows {name}")
        rejected = [Rejection(source=r.rel, code=r.code, reason=r.reason, n_faces=len(r.faces)) for r in records if r.code is not None]
        if cache is not None and cache.disabled_reason:
            warnings.append(cache.disabled_reason)
        result = PrepareResult(
            out=out, kept=kept, rejected=rejected, identities=identity_info, coverage=coverage, repeats=repeats,
            steps_per_epoch=steps, subsets=subset_rows, reg_images=reg_count, settings=config.as_dict(),
            model=engine.describe(), warnings=warnings, n_photos=len(records),
        )
        if result.nothing_kept:
            warnings.insert(0, f"{result.nothing_kept} (report.html names every file and its reason)")
        toml_comment = (
            f"Written by likeness prepare from {config.photos}.\n"
            f"repeats = max(1, ceil(target_steps {config.target_steps} x batch_size {config.batch_size} / {n_kept} images)) = {repeats}"
            if config.repeats is None else f"Written by likeness prepare from {config.photos}; repeats {repeats} as given."
        )
        if kept:  # a dataset.toml without subsets would only fail later, in the trainer
            min_bucket, max_bucket = kohya.bucket_limits(config.size, get_family(config.family))
            write_text_atomic(staging / "dataset.toml", kohya.dataset_toml(
                subsets, resolution=config.size, batch_size=config.batch_size, enable_bucket=True,
                keep_tokens=1, comment=toml_comment, min_bucket_reso=min_bucket, max_bucket_reso=max_bucket,
            ))
        from .report import write_reports

        write_reports(result, records, sheet_kept, staging)
        result.unchanged, result.previous = _commit(staging, out)
        if result.previous is not None:
            result.warnings.append(f"the earlier, different output in {out} was moved to {result.previous}")
    except OSError as exc:  # disk full, permissions changed mid-run: a message, not a traceback
        raise PrepareConfigError(f"cannot write to --out {out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.files = {name: out / name for name in MANAGED if (out / name).exists()}
    finished = time.perf_counter()
    result.timings = {
        "references_s": round(refs_done - started, 3),
        "photos_s": round(analysed - refs_done, 3),
        "crops_s": round(rendered - analysed, 3),
        "total_s": round(finished - started, 3),
        "photos": len(records),
        "photos_per_s": round(len(records) / max(finished - started, 1e-9), 3),
        "cache_hits": cache.hits if cache is not None else 0,
        "cache_misses": cache.misses if cache is not None else 0,
    }
    return result


def _write_images(selected, config: PrepareConfig, identities, classes, repeats: int, staging: Path, tagger, progress: Progress):
    """Render, caption and write the kept crops into ``staging/img/<repeats>_<...>/``."""
    from PIL import Image

    progress.start(len(selected), "crops")
    kept: list[KeptImage] = []
    thumbs: list[tuple[bytes, str, str]] = []
    order = [name for name, _ in identities]
    workers = max(1, min(4, os.cpu_count() or 1))
    jobs = [(_render_one, record, framing, config) for record, framing in selected]
    for (record, framing), (image, upscale, encoded) in zip(selected, _in_order(jobs, workers, progress, "likeness-crops")):
        if image is None:
            _reject(record, "render_failed", f"the crop could not be made: {upscale}")
            progress.advance(1, record.rel)
            continue
        present = [n for n in order if n in record.identities]
        folder = kohya.subset_folder_name(repeats, [(n, classes[n]) for n in present])
        tags = tagger(np.asarray(image)) if tagger is not None else []
        caption = build_caption([(n, classes[n]) for n in present], framing, tags, config.exclude_tags)
        stem = f"{_safe_stem(Path(record.rel).with_suffix('').as_posix().replace('/', '-'))}-{record.sha256[:8]}"
        relative = f"img/{folder}/{stem}.{config.image_format}"
        write_bytes_atomic(staging / relative, encoded)
        write_text_atomic((staging / relative).with_suffix(kohya.CAPTION_EXTENSION), caption + "\n")
        window = record.windows[framing]
        kept.append(KeptImage(
            source=record.rel, output=relative, caption=caption, identities=present, framing=framing, window=window,
            faces={n: [round(float(v), 1) for v in record.faces[record.identities[n]].box] for n in present},
            similarity={n: record.similarity[n] for n in present}, score=record.score, upscale=float(upscale),
            outlier=record.outlier, measures={n: record.faces[record.identities[n]].measures.as_dict() for n in present},
            from_box=record.boxed,
        ))
        thumb = image.copy()
        thumb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
        thumbs.append((_jpeg_bytes(thumb), f"{framing} {record.score:.2f}" + (" outlier?" if record.outlier else ""), record.rel))
        progress.advance(1, record.rel)
    progress.finish()
    return kept, thumbs


def _write_reg(config: PrepareConfig, staging: Path) -> tuple[int, list[str]]:
    """Regularisation photos -> ``reg/1_<class>/``: the same size and format as the training
    crops (a centred square, or the photo's aspect at ``size**2`` pixels), captioned with the class."""
    from PIL import Image

    if config.reg_dir is None:
        return 0, []
    warnings: list[str] = []
    folder = f"reg/{REG_REPEATS}_{config.class_word}"
    count = 0
    for path in list_images(Path(config.reg_dir), recursive=True):
        loaded = decode_image(path, max_side=4 * config.size, background=TRANSPARENT_BACKGROUND)
        if loaded.rgb is None:
            warnings.append(f"regularisation image skipped: {loaded.error}")
            continue
        image = Image.fromarray(loaded.rgb)
        if config.keep_aspect:
            aspect = float(np.clip(image.width / image.height, 0.5, 2.0))
            target = (max(8, round(config.size * math.sqrt(aspect) / 8) * 8), max(8, round(config.size / math.sqrt(aspect) / 8) * 8))
        else:
            target = (config.size, config.size)
        from PIL import ImageOps

        fitted = ImageOps.fit(image, target, Image.Resampling.LANCZOS)  # centred cover crop: no stretching
        rel = Path(path).relative_to(config.reg_dir).with_suffix("").as_posix().replace("/", "-")
        name = f"{folder}/{_safe_stem(rel)}-{loaded.sha256[:8]}.{config.image_format}"
        write_bytes_atomic(staging / name, _encode(fitted, config.image_format))
        write_text_atomic((staging / name).with_suffix(kohya.CAPTION_EXTENSION), config.class_word + "\n")
        count += 1
    if count == 0:
        warnings.append(f"no usable regularisation image in {config.reg_dir}")
    return count, warnings


def _subsets(kept: Sequence[KeptImage], identities, classes, repeats: int, out: Path, config: PrepareConfig, reg_count: int):
    """``dataset.toml`` subsets (one per set of people) and their report rows."""
    groups: dict[str, list[KeptImage]] = {}
    for item in kept:
        groups.setdefault(Path(item.output).parent.name, []).append(item)
    order = [name for name, _ in identities]

    def sort_key(folder: str):
        people = groups[folder][0].identities
        return (len(people), [order.index(n) for n in people])

    subsets, rows = [], []
    for folder in sorted(groups, key=sort_key):
        people = groups[folder][0].identities
        class_tokens = ", ".join(f"{n} {classes[n]}" for n in people)
        subsets.append(kohya.Subset(image_dir=out / "img" / folder, num_repeats=repeats, class_tokens=class_tokens, keep_tokens=len(people)))
        rows.append({"folder": f"img/{folder}", "images": len(groups[folder]), "num_repeats": repeats, "class_tokens": class_tokens,
                     "keep_tokens": len(people), "is_reg": False})
    if reg_count:
        folder = f"{REG_REPEATS}_{config.class_word}"
        subsets.append(kohya.Subset(image_dir=out / "reg" / folder, num_repeats=REG_REPEATS, class_tokens=config.class_word, keep_tokens=1, is_reg=True))
        rows.append({"folder": f"reg/{folder}", "images": reg_count, "num_repeats": REG_REPEATS, "class_tokens": config.class_word,
                     "keep_tokens": 1, "is_reg": True})
    return subsets, rows
