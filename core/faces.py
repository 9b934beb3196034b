"""FaceEngine: find an insightface pack, load only its detector and recogniser, detect -> align -> embed.

A pack is a folder of ONNX files (``buffalo_l``: ``det_10g.onnx`` + ``w600k_r50.onnx`` + three models
we do not need). Only the detector (SCRFD / RetinaFace) and the recogniser (ArcFace-style, 112x112
aligned crop) are loaded; landmark and gender/age models cost start-up time and memory for nothing.

The engine uses only the insightface API that 0.7.3 (still common in hosts) and 2.x share:
``model_zoo.get_model(path, providers=...)``, ``SCRFD.prepare/detect`` and ``face_align.norm_crop``.
Images are fed in BGR order, which is what insightface's models expect (feeding RGB shifts scores).

Search order for a pack named ``<pack>``: an explicit folder path; ``$LIKENESS_MODELS_DIR/<pack>``;
ComfyUI's ``models/insightface/models/<pack>``; A1111's ``models/insightface/models/<pack>``;
``~/.insightface/models/<pack>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .images import LoadedImage

log = logging.getLogger("lora_likeness")

DEFAULT_PACK = "buffalo_l"
#: Bumped when detection, alignment or the analysis decode (images.ANALYSIS_*) change in a way
#: that changes embeddings: it is part of the cache key.
ALGORITHM_VERSION = 3

PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_ACCELERATED = ("CUDAExecutionProvider", "ROCMExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider")

_DETECTOR_HINTS = ("det_", "scrfd", "retinaface", "det10g", "det2.5g", "det500m")
_RECOGNIZER_HINTS = ("w600k", "glint", "arcface", "mobilefacenet", "webface", "ms1m", "r100", "r50", "r34", "r18", "antelope", "recognition")
_SKIP_HINTS = ("1k3d68", "2d106", "genderage", "inswapper", "landmark", "attribute")


@dataclass(frozen=True)
class PackAdvice:
    """How one front door tells the user to provide a missing pack: the end of :class:`PackNotFoundError`'s
    message. ``{pack}`` in the texts is replaced by the pack's name.

    The core's own wording (:data:`NEUTRAL_PACK_ADVICE`) names no command-line flag and no host; the CLI,
    ComfyUI and A1111 phrase it with their own options and folders (:meth:`PackNotFoundError.phrased`).
    """

    install: str
    """Where to put the pack's files: ``"a folder named '{pack}' in one of those places"``."""
    point_to_folder: str
    """How to use a pack folder that is anywhere else: ``"or give the pack's folder itself"``."""
    folder_missing: str
    """What to do when the folder the user gave does not exist."""
    download: str | None = None
    """How this front door fetches a public pack, if it can."""


NEUTRAL_PACK_ADVICE = PackAdvice(
    install="a folder named '{pack}' in one of those places",
    point_to_folder="or give the pack's folder itself",
    folder_missing="Give a folder that holds the pack's .onnx files (e.g. .../models/insightface/models/buffalo_l), or a pack name.",
)


class PackNotFoundError(LookupError):
    """No usable face-model pack was found; the message says where we looked and what to do.

    The facts are attributes, so a front door can say what to do in its own terms (:meth:`phrased`):
    ``pack`` (the name, or the folder's name), ``folder`` (the folder the user gave, when it does not
    exist; ``None`` when a name was searched), ``searched`` (``(label, folder)`` per place looked in, in
    order) and ``unusable`` (``(folder, problems)`` of candidates without a detector or recogniser).
    """

    def __init__(self, pack: str, searched: Sequence[tuple[str, Path]] = (), unusable: Sequence[tuple[Path, str]] = (),
                 folder: Path | None = None, advice: PackAdvice = NEUTRAL_PACK_ADVICE) -> None:
        self.pack = pack
        self.searched = list(searched)
        self.unusable = list(unusable)
        self.folder = folder
        self.advice = advice
        super().__init__(self.message(advice))

    def message(self, advice: PackAdvice) -> str:
        if self.folder is not None:
            return f"Face-model pack folder {self.folder} does not exist. " + advice.folder_missing.format(pack=self.pack)
        lines = [f"Face-model pack '{self.pack}' was not found. Searched, in order:"]
        lines += [f"  - {folder}  ({label})" for label, folder in self.searched]
        if self.unusable:
            lines += ["Found but not usable:", *[f"  - {folder}: {problems}" for folder, problems in self.unusable]]
        advice_text = f"Put the pack's .onnx files in {advice.install}, {advice.point_to_folder}."
        if advice.download:
            advice_text += f" {advice.download}"
        lines.append(advice_text.format(pack=self.pack))
        return "\n".join(lines)

    def phrased(self, advice: PackAdvice) -> PackNotFoundError:
        """The same error, its advice in a front door's terms (raise it ``from`` this one)."""
        return PackNotFoundError(self.pack, self.searched, self.unusable, self.folder, advice)

    def __reduce__(self):  # keeps the facts when pickled (multiprocessing, a host's worker)
        return (PackNotFoundError, (self.pack, self.searched, self.unusable, self.folder, self.advice))


class FaceModelError(RuntimeError):
    """A pack exists but cannot be used (missing detector or recogniser, broken ONNX file)."""


# --------------------------------------------------------------------------------------------
# Pack discovery
# --------------------------------------------------------------------------------------------

_REGISTERED_DIRS: list[tuple[str, Path]] = []
_REGISTER_LOCK = threading.Lock()


def register_models_dir(folder: str | os.PathLike, label: str) -> None:
    """Add a folder that holds packs (``<folder>/<pack>/*.onnx``), searched before ``~/.insightface``.

    Hosts call this with their own model folders (ComfyUI's ``folder_paths`` entries, for one),
    so ``extra_model_paths.yaml`` and similar settings are honoured without the core importing them.
    """
    entry = (label, Path(folder).expanduser())
    with _REGISTER_LOCK:
        if entry not in _REGISTERED_DIRS:
            _REGISTERED_DIRS.append(entry)


def _host_dirs_from_layout() -> list[tuple[str, Path]]:
    """ComfyUI / A1111 model folders inferred from where this repository was cloned."""
    repo = Path(__file__).resolve().parent.parent
    found: list[tuple[str, Path]] = []
    if repo.parent.name == "custom_nodes":
        found.append(("ComfyUI models folder", repo.parent.parent / "models" / "insightface" / "models"))
    if repo.parent.name == "extensions":
        found.append(("A1111 models folder", repo.parent.parent / "models" / "insightface" / "models"))
    return found


def pack_search_dirs() -> list[tuple[str, Path]]:
    """Folders searched for ``<pack>`` subfolders, in order, each with a label for messages."""
    dirs: list[tuple[str, Path]] = []
    env_dir = os.environ.get("LIKENESS_MODELS_DIR")
    if env_dir:
        root = Path(env_dir).expanduser()
        dirs.append(("$LIKENESS_MODELS_DIR", root))
        dirs.append(("$LIKENESS_MODELS_DIR/insightface/models", root / "insightface" / "models"))
    with _REGISTER_LOCK:
        dirs.extend(_REGISTERED_DIRS)
    for variable in ("COMFYUI_PATH", "COMFYUI_DIR"):
        value = os.environ.get(variable)
        if value:
            dirs.append((f"ComfyUI models folder (${variable})", Path(value).expanduser() / "models" / "insightface" / "models"))
    dirs.extend(_host_dirs_from_layout())
    dirs.append(("insightface default (~/.insightface/models)", Path("~/.insightface/models").expanduser()))
    unique: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for label, path in dirs:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            unique.append((label, path))
    return unique


@dataclass(frozen=True)
class PackLocation:
    """A usable pack: its folder and the two ONNX files we load from it."""

    name: str
    path: Path
    detector: Path
    recognizer: Path
    source: str  # which search location it came from


def _role_from_name(filename: str) -> str | None:
    lower = filename.lower()
    if any(hint in lower for hint in _SKIP_HINTS):
        return "other"
    if any(hint in lower for hint in _DETECTOR_HINTS):
        return "detection"
    if any(hint in lower for hint in _RECOGNIZER_HINTS):
        return "recognition"
    return None


def _role_from_graph(path: Path) -> str:
    """Mirror insightface's ModelRouter: >= 5 outputs is a detector; a square input of 112+ px
    (multiple of 16) with one output is a recogniser."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(outputs) >= 5:
        return "detection"
    shape = inputs[0].shape
    if (
        len(inputs) == 1
        and len(outputs) == 1
        and len(shape) == 4
        and isinstance(shape[2], int)
        and shape[2] == shape[3]
        and shape[2] >= 112
        and shape[2] % 16 == 0
    ):
        return "recognition"
    return "other"


def inspect_pack(folder: Path) -> tuple[Path | None, Path | None, list[str]]:
    """Pick the detector and recogniser ONNX files of a pack folder.

    Returns ``(detector, recognizer, problems)``; ``problems`` explains what is missing or broken.
    """
    folder = Path(folder)
    problems: list[str] = []
    if not folder.is_dir():
        return None, None, [f"{folder} is not a folder"]
    onnx_files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".onnx" and p.is_file())
    if not onnx_files:
        return None, None, [f"{folder} holds no .onnx files"]
    roles: dict[str, list[Path]] = {"detection": [], "recognition": []}
    for onnx_file in onnx_files:
        role = _role_from_name(onnx_file.name)
        if role is None:
            try:
                role = _role_from_graph(onnx_file)
            except Exception as exc:  # a broken file is a problem to report, not a crash
                problems.append(f"{onnx_file.name}: cannot be opened by onnxruntime ({exc})")
                continue
        if role in roles:
            roles[role].append(onnx_file)
    detector = roles["detection"][0] if roles["detection"] else None
    recognizer = roles["recognition"][0] if roles["recognition"] else None
    if detector is None:
        problems.append(f"{folder} has no face detector (det_*.onnx / scrfd*.onnx)")
    if recognizer is None:
        problems.append(f"{folder} has no face recogniser (e.g. w600k_r50.onnx, glintr100.onnx)")
    return detector, recognizer, problems


def _looks_like_path(pack: str | os.PathLike) -> bool:
    text = str(pack)
    return isinstance(pack, Path) or os.sep in text or (os.altsep or "/") in text or text.startswith(("~", "."))


def find_pack(pack: str | os.PathLike = DEFAULT_PACK) -> PackLocation:
    """Locate a pack by name (searched in :func:`pack_search_dirs`) or by folder path.

    Raises:
        PackNotFoundError: listing every place searched and where to put the files.
        FaceModelError: the pack exists but lacks a detector or a recogniser.
    """
    if _looks_like_path(pack):
        folder = Path(pack).expanduser()
        if not folder.is_dir():
            raise PackNotFoundError(folder.name or DEFAULT_PACK, folder=folder)
        detector, recognizer, problems = inspect_pack(folder)
        if detector is None or recognizer is None:
            raise FaceModelError("Face-model pack is not usable: " + "; ".join(problems))
        return PackLocation(folder.name, folder.resolve(), detector, recognizer, "explicit path")

    name = str(pack)
    searched: list[tuple[str, Path]] = []
    unusable: list[tuple[Path, str]] = []
    for label, root in pack_search_dirs():
        candidate = root / name
        searched.append((label, candidate))
        if not candidate.is_dir():
            continue
        detector, recognizer, problems = inspect_pack(candidate)
        if detector is not None and recognizer is not None:
            return PackLocation(name, candidate.resolve(), detector, recognizer, label)
        unusable.append((candidate, "; ".join(problems)))
    raise PackNotFoundError(name, searched, unusable)


def download_pack(name: str, root: Path | None = None) -> Path:
    """Download a public insightface pack into ``root/models/<name>`` (opt-in, needs internet)."""
    from insightface.utils import ensure_available

    target_root = Path(root or "~/.insightface").expanduser()
    return Path(ensure_available("models", name, root=str(target_root)))


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------


def resolve_providers(requested: str | Sequence[str] = "auto") -> list[str]:
    """Turn ``auto``/``cuda``/``coreml``/``directml``/``cpu`` (or provider names) into an ORT list.

    ``auto`` takes the first accelerated provider this onnxruntime build offers, then CPU.
    """
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if isinstance(requested, str):
        names = [part.strip() for part in requested.split(",") if part.strip()] or ["auto"]
    else:
        names = list(requested)
    chosen: list[str] = []
    for name in names:
        if name.lower() == "auto":
            chosen.extend(p for p in _ACCELERATED if p in available and p not in chosen)
            chosen = chosen[:1]
        else:
            chosen.append(PROVIDER_ALIASES.get(name.lower(), name))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def short_provider(name: str) -> str:
    for alias, full in PROVIDER_ALIASES.items():
        if full == name and alias != "dml":
            return alias
    return name


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class DetectedFace:
    """One detected face, in source-image pixel coordinates.

    Attributes:
        box: ``(4,)`` float32 ``x1, y1, x2, y2``.
        kps: ``(5, 2)`` float32 keypoints (eyes, nose, mouth corners).
        det_score: detector confidence in 0..1.
        embedding: ``(D,)`` float32 unit-length identity embedding, or ``None`` when not computed.
    """

    box: np.ndarray
    kps: np.ndarray
    det_score: float
    embedding: np.ndarray | None = None

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass
class FaceResult:
    """What the engine found in one image. ``faces`` is sorted largest first."""

    path: Path | None
    sha256: str
    size: tuple[int, int]
    faces: list[DetectedFace] = field(default_factory=list)
    error: str | None = None
    # A sentence about an image that was read all the same (LoadedImage.note); not cached.
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


def _has_static_shape_sessions() -> bool:
    """Whether this insightface's SCRFD takes ``static_shape_sessions`` (2.x does, 0.7.3 does not)."""
    import inspect

    from insightface.model_zoo.scrfd import SCRFD

    return "static_shape_sessions" in inspect.signature(SCRFD.__init__).parameters


def _ceil_to(value: float, multiple: int) -> int:
    return int(-(-int(round(value)) // multiple) * multiple)


def detector_input_size(width: int, height: int, max_side: int = 640) -> tuple[int, int]:
    """Detector input ``(w, h)`` for an image of ``width x height`` pixels.

    The long side is ``max_side`` (insightface's usual 640: small images are enlarged, which makes
    keypoints, and so the aligned crop, more precise); the short side is the smallest of 1, 3/4,
    2/3 or 1/2 of it that keeps the aspect ratio, so a 512x768 image is not padded to 640x640
    (a third of the detector's work for nothing) while faces keep exactly the scale they would
    have had. Both are multiples of 32, as SCRFD's strides need, and there are only a handful of
    distinct sizes (insightface 2.x builds one ONNX session per size).
    """
    longest = max(width, height, 1)
    ratio = min(width, height) / longest
    short_fraction = next((f for f in (0.5, 2 / 3, 0.75) if ratio <= f + 1e-6), 1.0)
    short_side = min(max_side, _ceil_to(max_side * short_fraction, 32))
    return (max_side, short_side) if width >= height else (short_side, max_side)


_DIGEST_MEMO: dict[tuple[str, int, int], str] = {}


def model_file_digest(path: Path) -> str:
    """sha256 of a model file, memoised per (path, size, mtime) for this process."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGEST_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _DIGEST_MEMO[key] = digest.hexdigest()
    return _DIGEST_MEMO[key]


class FaceEngine:
    """Detector + recogniser of one pack, loaded once and reused for every image.

    Build it with :meth:`load`. :meth:`analyze` may be called from several threads at once;
    :attr:`workers` says how many pay off. On CPU two images in flight with half the cores each
    beat one image on all cores: these models are too small for onnxruntime to keep every core busy,
    and decoding and pre/post-processing then overlap with inference.
    """

    def __init__(
        self,
        location: PackLocation,
        providers: Sequence[str] | str = "auto",
        det_thresh: float = 0.5,
        det_max_side: int = 640,
        max_faces: int = 16,
        retry_padded: bool = True,
        workers: int | None = None,
    ) -> None:
        import onnxruntime
        from insightface.model_zoo import model_zoo

        self.location = location
        self.det_thresh = float(det_thresh)
        self.det_max_side = int(det_max_side)
        self.max_faces = int(max_faces)
        self.retry_padded = bool(retry_padded)
        # insightface's alignment calls a scikit-image API that newer releases deprecate; the
        # warning is theirs, not the user's, and catch_warnings is not thread-safe.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"insightface\.utils\.face_align")
        self.requested_providers = resolve_providers(providers)
        self.warnings: list[str] = []
        cores = os.cpu_count() or 1
        self.workers = max(1, int(workers)) if workers else min(2, cores)
        options = onnxruntime.SessionOptions()
        # SCRFD graphs declare 640x640 output shapes; other input sizes compute correctly but
        # onnxruntime would log a shape warning per output per image.
        options.log_severity_level = 3
        if self.requested_providers[0] == "CPUExecutionProvider":
            options.intra_op_num_threads = max(1, cores // self.workers)
        detector_options = {}
        if _has_static_shape_sessions() and self.requested_providers[0] != "CoreMLExecutionProvider":
            # insightface 2.x builds a rewritten fixed-shape session per input size; on CPU and
            # CUDA the dynamic session gives the same boxes (max difference 6e-5 px measured)
            # twice as fast, without a session build per size. CoreML needs the fixed shapes.
            detector_options["static_shape_sessions"] = False
        chatter = io.StringIO()
        # insightface 0.7.3 print()s "Applied providers: ..." while loading, which would land in
        # `likeness score --json -` output; keep it for the debug log instead.
        with contextlib.redirect_stdout(chatter):
            try:
                self.detector = model_zoo.get_model(
                    str(location.detector), providers=self.requested_providers, sess_options=options, **detector_options
                )
                self.recognizer = model_zoo.get_model(str(location.recognizer), providers=self.requested_providers, sess_options=options)
            except Exception as exc:
                raise FaceModelError(f"Cannot load the face models of pack '{location.name}' from {location.path}: {exc}") from exc
            if self.detector is None or getattr(self.detector, "taskname", None) != "detection":
                raise FaceModelError(f"{location.detector} is not a face detector insightface recognises")
            if self.recognizer is None or getattr(self.recognizer, "taskname", None) != "recognition":
                raise FaceModelError(f"{location.recognizer} is not a face recogniser insightface recognises")
            self.detector.prepare(0, input_size=(det_max_side, det_max_side), det_thresh=self.det_thresh)
            self.recognizer.prepare(0)
        if chatter.getvalue().strip():
            log.debug("insightface: %s", chatter.getvalue().strip())
        shape = list(self.detector.input_shape)
        self._fixed_det_size = (shape[3], shape[2]) if all(isinstance(v, int) for v in shape[2:4]) else None
        rec_shape = list(self.recognizer.input_shape)
        self._rec_batched = not isinstance(rec_shape[0], int)
        self.crop_size = int(self.recognizer.input_size[0])
        self.embedding_dim = int(self.recognizer.session.get_outputs()[0].shape[-1])
        self.providers = list(self.recognizer.session.get_providers())
        self._check_providers()
        self._fingerprint: str | None = None

    @classmethod
    def load(
        cls,
        pack: str | os.PathLike = DEFAULT_PACK,
        providers: Sequence[str] | str = "auto",
        download: bool = False,
        **options,
    ) -> "FaceEngine":
        """Find ``pack`` (name or folder), optionally download it, and load its two models."""
        try:
            location = find_pack(pack)
        except PackNotFoundError:
            if not download or _looks_like_path(pack):
                raise
            download_pack(str(pack))
            location = find_pack(pack)
        return cls(location, providers=providers, **options)

    # ---- identity -------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """Identifies everything that shapes an embedding: model bytes and detection settings."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for part in (
                model_file_digest(self.location.detector),
                model_file_digest(self.location.recognizer),
                f"thresh={self.det_thresh:.4f}",
                f"side={self.det_max_side}",
                f"retry={self.retry_padded}",
                f"algo={ALGORITHM_VERSION}",
            ):
                digest.update(part.encode())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    def describe(self) -> dict:
        return {
            "pack": self.location.name,
            "path": str(self.location.path),
            "detector": self.location.detector.name,
            "recognizer": self.location.recognizer.name,
            "embedding_dim": self.embedding_dim,
            "providers": [short_provider(p) for p in self.providers],
            "det_thresh": self.det_thresh,
            "det_max_side": self.det_max_side,
            "fingerprint": self.fingerprint,
        }

    def _check_providers(self) -> None:
        wanted = self.requested_providers[0]
        got = self.providers[0] if self.providers else "none"
        if wanted != got:
            self.warnings.append(
                f"asked onnxruntime for {short_provider(wanted)} but it runs on {short_provider(got)}: "
                f"this onnxruntime build cannot use it (see `likeness doctor`)."
            )
        elif got == "CPUExecutionProvider":
            from . import dependencies

            # torch's +cuXXX label only says how it was built; the note is for machines with a GPU to use.
            if dependencies.torch_kind() == "cuda" and dependencies.cuda_device_count() > 0:
                self.warnings.append(
                    "face models run on CPU although this machine has a CUDA GPU that torch can use: install "
                    "onnxruntime-gpu instead of onnxruntime (`python install.py` or `likeness doctor --fix-onnxruntime`)."
                )
        for message in self.warnings:
            log.warning(message)

    # ---- analysis -------------------------------------------------------------------------

    def analyze(self, image: LoadedImage) -> FaceResult:
        """Detect every face in ``image`` and embed the ``max_faces`` largest ones."""
        result = FaceResult(path=image.path, sha256=image.sha256, size=image.original_size, error=image.error, note=image.note)
        if image.error is not None or image.rgb is None:
            return result
        import cv2

        bgr = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR)  # insightface's models take BGR
        boxes, kpss = self._detect(bgr)
        if len(boxes) == 0 and self.retry_padded:
            boxes, kpss = self._detect_padded(bgr)
        order = np.argsort(-((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), kind="stable") if len(boxes) else []
        faces = [
            DetectedFace(box=boxes[i, :4].astype(np.float32), kps=kpss[i].astype(np.float32), det_score=float(boxes[i, 4]))
            for i in order
        ]
        embed = faces[: self.max_faces]
        if embed:
            for face, vector in zip(embed, self._embed(bgr, [f.kps for f in embed])):
                face.embedding = vector
        for face in faces:  # back to source-image pixels
            face.box = face.box * np.float32(image.scale)
            face.kps = face.kps * np.float32(image.scale)
        result.faces = faces
        return result

    def _detect(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = bgr.shape[:2]
        size = self._fixed_det_size or detector_input_size(width, height, self.det_max_side)
        boxes, kpss = self.detector.detect(bgr, input_size=size, max_num=0, metric="default")
        if kpss is None:
            raise FaceModelError(f"{self.location.detector.name} gives no keypoints; a 5-keypoint detector is needed to align faces")
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 5), np.asarray(kpss, dtype=np.float32).reshape(-1, 5, 2)

    def _detect_padded(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Second look for a face that fills the whole frame (SD close-ups): the detector's largest
        anchors miss faces as big as its input, so shrink the face by padding the image."""
        height, width = bgr.shape[:2]
        pad = max(height, width) // 4
        if pad < 8:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        padded = np.zeros((height + 2 * pad, width + 2 * pad, 3), dtype=np.uint8)
        padded[pad : pad + height, pad : pad + width] = bgr
        boxes, kpss = self._detect(padded)
        boxes[:, :4] -= pad
        kpss -= pad
        return boxes, kpss

    def _embed(self, bgr: np.ndarray, keypoints: Sequence[np.ndarray]) -> list[np.ndarray]:
        from insightface.utils import face_align

        crops = [face_align.norm_crop(bgr, landmark=kps, image_size=self.crop_size) for kps in keypoints]
        if self._rec_batched:
            features = np.asarray(self.recognizer.get_feat(crops), dtype=np.float32)
        else:
            features = np.concatenate([np.asarray(self.recognizer.get_feat(crop), dtype=np.float32) for crop in crops])
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.maximum(norms, 1e-12)
        return list(features)

    def analyze_array(self, rgb: np.ndarray, name: str | None = None) -> FaceResult:
        """Analyse an in-memory RGB image (hosts' tensors converted to ``(H, W, 3)``)."""
        from .images import from_array

        return self.analyze(from_array(rgb, name))



# --------------------------------------------------------------------------------------------
# One engine per pack and providers for the whole process (hosts keep running between jobs)
# --------------------------------------------------------------------------------------------

_SHARED_ENGINES: dict[tuple[str, str], FaceEngine] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(pack: str | os.PathLike = DEFAULT_PACK, providers: str = "auto") -> FaceEngine:
    """The engine for ``pack`` (name or folder) and ``providers``, loaded once per process.

    Host front doors call this for every job: several nodes or tab actions, or a re-run after a
    host dropped its own cache, reuse the loaded ONNX sessions.

    Raises:
        PackNotFoundError: no such pack (the message lists every folder searched).
        FaceModelError: the pack is unusable.
    """
    location = find_pack(pack)
    key = (str(location.path), providers)
    with _SHARED_LOCK:
        engine = _SHARED_ENGINES.get(key)
        if engine is None:
            engine = FaceEngine(location, providers=providers)
            _SHARED_ENGINES[key] = engine
    return engine
