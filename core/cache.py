"""On-disk cache of face results keyed by file content hash + engine fingerprint.

Re-scoring the same references (every run of a sweep) or the same generated images (a second look
with another grouping or aggregation) then skips decoding, detection and embedding entirely.
The cache is one SQLite file: safe with concurrent readers and writers, atomic per entry, and it
stores only numbers (``np.load(allow_pickle=False)``), never pickles.

Location: ``$LIKENESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/lora-likeness``, else
``~/.cache/lora-likeness``.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np

from .faces import DetectedFace, FaceResult

SCHEMA_VERSION = 1


def default_cache_dir() -> Path:
    explicit = os.environ.get("LIKENESS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path("~/.cache").expanduser()) / "lora-likeness"


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


def _pack(result: FaceResult) -> bytes:
    count = len(result.faces)
    dim = next((len(f.embedding) for f in result.faces if f.embedding is not None), 0)
    boxes = np.zeros((count, 4), np.float32)
    kps = np.zeros((count, 5, 2), np.float32)
    scores = np.zeros((count,), np.float32)
    embeddings = np.full((count, dim), np.nan, np.float32)
    for i, face in enumerate(result.faces):
        boxes[i], kps[i], scores[i] = face.box, face.kps, face.det_score
        if face.embedding is not None:
            embeddings[i] = face.embedding
    buffer = io.BytesIO()
    np.savez(buffer, boxes=boxes, kps=kps, scores=scores, embeddings=embeddings, size=np.asarray(result.size, np.int64))
    return buffer.getvalue()


def _unpack(blob: bytes, sha256: str) -> FaceResult:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        boxes, kps, scores, embeddings, size = (data[k] for k in ("boxes", "kps", "scores", "embeddings", "size"))
    faces = []
    for i in range(len(boxes)):
        vector = embeddings[i] if embeddings.shape[1] and not np.isnan(embeddings[i]).any() else None
        faces.append(DetectedFace(box=boxes[i], kps=kps[i], det_score=float(scores[i]), embedding=vector))
    return FaceResult(path=None, sha256=sha256, size=(int(size[0]), int(size[1])), faces=faces)


class FaceCache:
    """Face results by ``(content sha256, engine fingerprint)``.

    One connection per thread; a corrupt or unwritable cache degrades to no cache with a warning
    rather than failing the run.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.path = self.folder / f"faces-v{SCHEMA_VERSION}.sqlite"
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.disabled_reason: str | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._connect() as connection:
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS faces (sha256 TEXT NOT NULL, engine TEXT NOT NULL, "
                    "data BLOB NOT NULL, PRIMARY KEY (sha256, engine))"
                )
        except (OSError, sqlite3.Error) as exc:
            self.disabled_reason = f"face cache disabled ({self.path}: {exc})"

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    def get(self, sha256: str, engine: str) -> FaceResult | None:
        if self.disabled_reason or not sha256:
            return None
        try:
            row = self._connect().execute(
                "SELECT data FROM faces WHERE sha256 = ? AND engine = ?", (sha256, engine)
            ).fetchone()
            result = _unpack(row[0], sha256) if row else None
        except (sqlite3.Error, ValueError, OSError, KeyError):
            result = None
        with self._count_lock:  # workers look up concurrently
            if result is None:
                self.misses += 1
            else:
                self.hits += 1
        return result

    def put(self, result: FaceResult, engine: str) -> None:
        if self.disabled_reason or result.error is not None or not result.sha256:
            return
        try:
            with self._connect() as connection:
                connection.execute(
                    "INSERT OR REPLACE INTO faces (sha256, engine, data) VALUES (?, ?, ?)",
                    (result.sha256, engine, _pack(result)),
                )
        except sqlite3.Error as exc:
            self.disabled_reason = f"face cache disabled ({self.path}: {exc})"
