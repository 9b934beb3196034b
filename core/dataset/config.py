"""Settings of a dataset preparation run: one :class:`PrepareConfig` holding plain values.

Hosts (the ComfyUI node, the A1111 tab) and the CLI build the same dataclass; every threshold the
pipeline applies lives in :class:`QualityThresholds` / :class:`SelectionSettings` with its unit,
and is written into ``report.json`` so a run can be explained afterwards.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Framings, widest last. Each crop shows one of them; the caption names it.
FRAMINGS = ("close-up", "head-and-shoulders", "half-body")
#: Caption words per framing (common booru-style tags, so the base model already knows them).
FRAMING_WORDS = {"close-up": "close-up", "head-and-shoulders": "head and shoulders", "half-body": "upper body"}
SIZES = (512, 768, 1024)
IMAGE_FORMATS = ("png", "jpg")
_TOKEN = re.compile(r"^[^\s,/\\:*?\"<>|]+$")


class PrepareConfigError(ValueError):
    """A setting the user must fix (missing folder, bad trigger word, ...); the message says which."""


@dataclass
class IdentitySpec:
    """One person of a multi-identity dataset.

    Attributes:
        name: the person's trigger word (a rare token such as ``ohwxdad``); it starts their part of
            every caption and names their Kohya folder.
        refs: folder (or single file) of reference photos showing this person alone.
        class_word: their class word (``man``, ``woman``, ``boy``, ...); defaults to the run's.
    """

    name: str
    refs: Path
    class_word: str | None = None


@dataclass
class QualityThresholds:
    """Filters on the subject's face. A photo failing one is rejected with that reason.

    Attributes:
        min_face_px: smallest face, in source pixels, as the larger side of the detector's box
            (a close-up of a 96 px face is already upscaled 2.7x at 512).
        min_sharpness: variance of the Laplacian of the face resized to 128x128 grey; below it the
            face is blurry. Measured here: sharp photos 150-1200, LFW's soft 250 px photos 30-130,
            a face blurred with a Gaussian of 1% of its height about 20-40, of 2% about 10.
        max_yaw_deg: head turn from frontal, estimated from the nose's offset from the eyes'
            midpoint (``atan(offset / half eye distance)``, a rough model where the nose tip sits
            half an eye distance in front of the eyes). 3/4 views (~45) are useful; profiles are not.
        max_pitch_deg: head tilt up/down, from the nose's height between the eye and mouth lines
            (neutral at 0.58 of the way down; ``atan((ratio - 0.58) / 0.5)``).
        min_brightness / max_brightness: mean luminance (0-255) of the face region.
        max_clipped: largest share of face pixels at <= 5 or >= 250 (crushed shadows or blown
            highlights) before the face counts as under- or over-exposed.
    """

    min_face_px: float = 96.0
    min_sharpness: float = 20.0
    max_yaw_deg: float = 60.0
    max_pitch_deg: float = 45.0
    min_brightness: float = 40.0
    max_brightness: float = 215.0
    max_clipped: float = 0.4


@dataclass
class SelectionSettings:
    """Identity matching, duplicates, framing geometry and ranking.

    Attributes:
        match_threshold: cosine similarity of a face to an identity's mean embedding at or above
            which it is that person (test pack: same person 0.80-0.94 to the mean, others <= 0.21;
            buffalo_l is similar). Also the clustering threshold when no references are given.
        duplicate_similarity: two kept faces at or above this cosine similarity are the same shot
            (burst, re-crop, re-encode); different photos of one person measured at most 0.88.
        duplicate_hash_distance: two photos whose 64-bit perceptual hashes (DCT of the 32x32 grey
            image) differ in at most this many bits are the same picture, whatever the faces say.
        other_face_ratio: another person's face at least this fraction of the subject's face size
            must lie entirely outside the crop (smaller background faces are ignored).
        max_padding: largest share of a crop's area that may lie outside the photo (filled with the
            photo's mean border colour) rather than stretch or cut the face.
        min_framing_scale: a framing's window may shrink to this fraction of its ideal size to fit
            the photo or avoid another face.
        outlier_mad: a kept face whose similarity to the subject's mean lies more than
            ``max(0.15, outlier_mad * 1.4826 * MAD)`` below the median is flagged as an identity outlier.
        box_iou: a detected face is the one an imported face box marks when their IoU is at least this.
    """

    match_threshold: float = 0.35
    duplicate_similarity: float = 0.93
    duplicate_hash_distance: int = 6
    other_face_ratio: float = 0.35
    max_padding: float = 0.15
    min_framing_scale: float = 0.8
    outlier_mad: float = 3.0
    box_iou: float = 0.3


#: One line per threshold for the report (units and what it applies to; details in the docstrings).
THRESHOLD_NOTES = {
    "min_face_px": "smallest face: larger side of the face box, source pixels",
    "min_sharpness": "variance of the Laplacian of the face at 128x128 grey",
    "max_yaw_deg": "largest head turn from frontal, degrees (from keypoints)",
    "max_pitch_deg": "largest head tilt up/down, degrees (from keypoints)",
    "min_brightness": "darkest mean face luminance, 0-255",
    "max_brightness": "brightest mean face luminance, 0-255",
    "max_clipped": "largest share of face pixels crushed (<=5) or blown (>=250)",
    "match_threshold": "cosine similarity to the person's mean embedding that counts as them",
    "duplicate_similarity": "face similarity at which two photos are the same shot",
    "duplicate_hash_distance": "perceptual-hash bits (of 64) within which two photos are the same picture",
    "other_face_ratio": "other faces at least this fraction of the subject's size are kept out of crops",
    "max_padding": "largest share of a crop's area outside the photo (padded)",
    "min_framing_scale": "smallest window as a fraction of the framing's ideal size",
    "outlier_mad": "robust z-score (MAD units, floor 0.15) below the median similarity that flags an outlier",
    "box_iou": "overlap with an imported face box that identifies a detected face",
}


@dataclass
class PrepareConfig:
    """Everything ``likeness prepare`` needs, as plain values (paths, strings, numbers).

    Attributes:
        photos: folder of photos, searched recursively (hidden files and ``out`` are skipped).
        out: output folder (Kohya ``img/``, ``reg/``, ``dataset.toml``, ``report.*``).
        trigger: the rare trigger word of a single-person dataset (``ohwx``); unused with identities.
        class_word: class word (``man``, ``woman``, ``person``, ...).
        family: the model family the dataset is for (``sd1``, ``sdxl``; see :mod:`lora_likeness.families`):
            it sets the default ``size`` and the bucket limits written to ``dataset.toml``.
        size: side of the square crops in pixels (512, 768 or 1024), or the target area's side
            when ``keep_aspect`` is set; default (``None``): the family's (512 SD1.x, 1024 SDXL).
        keep_aspect: keep each photo's aspect ratio (area ``size**2``) for sd-scripts' bucketing
            instead of square crops.
        framings: which framings to produce, a spread across them is kept.
        max_images: keep at most this many photos (the best ones).
        target_steps: wished steps per epoch; chooses the repeats (see :func:`kohya.repeats_for`).
        repeats: fixed repeats instead of ``target_steps``.
        batch_size: training batch size written to ``dataset.toml`` (and used for the repeats).
        subject_refs: reference photos of the subject; without them the largest identity cluster
            (or the faces of ``face_boxes``) is the subject.
        identities: several people in one dataset (each photo is labelled with who is in it).
        face_boxes: CSV/JSON of ``file,x,y,w,h[,name]`` in relative coordinates marking faces.
        reg_dir: regularisation photos, written to ``reg/1_<class>/``.
        image_format: ``png`` (lossless) or ``jpg`` (quality 95).
        tagger_dir: a WD14-style ONNX tagger folder (``model.onnx`` + ``selected_tags.csv``) whose
            tags are appended to captions; optional.
        tag_threshold: tagger probability needed for a tag.
        exclude_tags: tags never written (identity-intrinsic ones should bind to the trigger).
        cache_dir / use_cache: face cache (as ``likeness score``).
    """

    photos: Path
    out: Path
    trigger: str | None = None
    class_word: str = "person"
    family: str = "sd1"
    size: int | None = None
    keep_aspect: bool = False
    framings: tuple[str, ...] = FRAMINGS
    max_images: int = 50
    target_steps: int = 200
    repeats: int | None = None
    batch_size: int = 1
    subject_refs: Path | None = None
    identities: list[IdentitySpec] = field(default_factory=list)
    face_boxes: Path | None = None
    reg_dir: Path | None = None
    image_format: str = "png"
    tagger_dir: Path | None = None
    tag_threshold: float = 0.35
    exclude_tags: tuple[str, ...] = ("1girl", "1boy", "solo", "realistic", "photorealistic")
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    cache_dir: Path | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        self.photos = Path(self.photos)
        self.out = Path(self.out)
        if self.size is None:
            from ..families import FAMILIES

            if self.family in FAMILIES:  # an unknown family is reported by validate()
                self.size = FAMILIES[self.family].defaults.prepare_size
        self.framings = tuple(self.framings)
        # Hosts may pass plain dicts (from JSON or a UI) for the nested settings.
        self.identities = [
            i if isinstance(i, IdentitySpec) else IdentitySpec(**i) for i in self.identities
        ]
        for identity in self.identities:
            identity.refs = Path(identity.refs)
        if isinstance(self.quality, dict):
            self.quality = QualityThresholds(**self.quality)
        if isinstance(self.selection, dict):
            self.selection = SelectionSettings(**self.selection)
        for name in ("subject_refs", "face_boxes", "reg_dir", "tagger_dir", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))

    @property
    def multi(self) -> bool:
        return bool(self.identities)

    def validate(self) -> None:
        """Raise :class:`PrepareConfigError` for settings that cannot work (including a ``photos``
        folder without any image file and an ``out`` that cannot be written); returns nothing."""
        if not self.photos.is_dir():
            raise PrepareConfigError(f"--photos {self.photos} is not a folder")
        photos, out = self.photos.resolve(), self.out.resolve()
        from ..outputs import OutputError, check_output_folder

        try:
            check_output_folder(self.out)
        except OutputError as exc:
            raise PrepareConfigError(str(exc)) from None
        if out == photos:
            raise PrepareConfigError("--out must not be the photos folder itself (a sub-folder of it is fine)")
        for managed in ("img", "reg", "previous"):
            if photos == out / managed or (out / managed) in photos.parents:
                raise PrepareConfigError(
                    f"--photos {self.photos} lies inside {out / managed}, which a re-run moves away; "
                    f"choose another --out"
                )
        from ..families import FAMILIES

        if self.family not in FAMILIES:
            raise PrepareConfigError(f"--family must be one of {', '.join(FAMILIES)}, not {self.family!r}")
        if self.size not in SIZES:
            raise PrepareConfigError(f"--size must be one of {', '.join(map(str, SIZES))}, not {self.size}")
        unknown = [f for f in self.framings if f not in FRAMINGS]
        if unknown or not self.framings:
            raise PrepareConfigError(f"framings must be among {', '.join(FRAMINGS)}; got {', '.join(self.framings) or 'none'}")
        if self.max_images < 1:
            raise PrepareConfigError("--max-images must be at least 1")
        if self.batch_size < 1:
            raise PrepareConfigError("--batch-size must be at least 1")
        if self.repeats is not None and self.repeats < 1:
            raise PrepareConfigError("--repeats must be at least 1")
        if self.repeats is None and self.target_steps < 1:
            raise PrepareConfigError("--target-steps must be at least 1")
        if self.image_format not in IMAGE_FORMATS:
            raise PrepareConfigError(f"image format must be png or jpg, not {self.image_format!r}")
        _check_token(self.class_word, "--class")
        if self.multi:
            if self.subject_refs is not None:
                raise PrepareConfigError("--subject and --identity exclude each other: with identities, each has its own references")
            names = [i.name for i in self.identities]
            if len({n.lower() for n in names}) != len(names):
                raise PrepareConfigError(f"identity names must differ: {', '.join(names)}")
            for identity in self.identities:
                _check_token(identity.name, "identity name")
                if identity.class_word is not None:
                    _check_token(identity.class_word, f"class of identity {identity.name}")
                if not identity.refs.exists():
                    raise PrepareConfigError(f"reference photos of identity {identity.name}: {identity.refs} does not exist")
        else:
            if not self.trigger:
                raise PrepareConfigError("--trigger is required (a rare word such as ohwx), unless --identity is given")
            _check_token(self.trigger, "--trigger")
            if self.subject_refs is not None and not Path(self.subject_refs).exists():
                raise PrepareConfigError(f"--subject {self.subject_refs} does not exist")
        if self.face_boxes is not None and not Path(self.face_boxes).is_file():
            raise PrepareConfigError(f"--face-boxes {self.face_boxes} is not a file")
        if self.reg_dir is not None and not Path(self.reg_dir).is_dir():
            raise PrepareConfigError(f"--reg {self.reg_dir} is not a folder")
        if self.tagger_dir is not None and not Path(self.tagger_dir).is_dir():
            raise PrepareConfigError(f"--tagger {self.tagger_dir} is not a folder")
        _check_has_photos(self.photos, exclude=self.out)

    def as_dict(self) -> dict:
        """JSON-ready settings (paths as strings), for ``report.json``. The face cache's settings
        are left out: they change how fast, not what, so they must not make a re-run's report differ."""
        data = asdict(self)
        for name in ("cache_dir", "use_cache"):
            data.pop(name)

        def plain(value):
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return plain(data)


def _check_has_photos(photos: Path, exclude: Path) -> None:
    """At least one image file under ``photos`` (what ``prepare`` reads); else say what is there."""
    from ..images import IMAGE_SUFFIXES

    skip = Path(exclude).resolve()
    others: list[str] = []
    n_others = 0
    for root, dirs, files in os.walk(photos):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip)
        for name in sorted(files):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                return
            n_others += 1
            if len(others) < 3:
                others.append((Path(root) / name).relative_to(photos).as_posix())
    kinds = ", ".join(sorted(IMAGE_SUFFIXES))
    found = (f"; it holds {n_others} other file(s) ({', '.join(others)}{', ...' if n_others > len(others) else ''}): "
             f"convert photos to JPEG or PNG" if n_others else "; it is empty")
    raise PrepareConfigError(f"--photos {photos} holds no photo: no image file ({kinds}) under it (searched recursively, "
                             f"hidden files skipped){found}")


def _check_token(value: str | None, label: str) -> None:
    if not value or not _TOKEN.match(value):
        raise PrepareConfigError(
            f"{label} must be one word without spaces, commas or path characters; got {value!r}"
        )


def parse_identity(text: str) -> IdentitySpec:
    """Parse ``NAME[:CLASS]=REF_DIR`` (the CLI's ``--identity``)."""
    name, sep, refs = text.partition("=")
    if not sep or not name or not refs:
        raise PrepareConfigError(f"--identity takes NAME=REF_DIR or NAME:CLASS=REF_DIR, not {text!r}")
    name, _, class_word = name.partition(":")
    return IdentitySpec(name=name.strip(), refs=Path(refs.strip()), class_word=class_word.strip() or None)
