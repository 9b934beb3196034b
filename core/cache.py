"""On-disk cache of face results keyed by file content hash + engine fingerprint.

Re-scoring the same references (every run of a sweep) or the same generated images (a second look
with another grouping or aggregation) then skips decoding, detection and embedding entirely.
The cache is one SQLite file: safe with concurrent readers and writers, atomic per entry, and it
stores only numbers (raw float32 arrays behind a fixed header), never pickles.

Location: ``$LIKENESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/lora-likeness``, else
``~/.cache/lora-likeness``.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from pathlib import Path

import numpy as np

from .faces import DetectedFace, FaceResult

SCHEMA_VERSION = 2  # 2: plain float32 blobs instead of .npz


def default_cache_dir() -> Path:
    explicit = os.environ.get("LIKENESS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path("~/.cache").expanduser()) / "lora-likeness"


# A blob: this header, then little-endian float32 boxes [n, 4], keypoints [n, 5, 2], detector scores [n] and
# embeddings [n, dim] (NaN rows: no embedding). Plain bytes, not .npz: numpy parses .npy headers with
# ast.literal_eval, which is not thread-safe on Python 3.11.7 ("AST constructor recursion depth mismatch")
# and the cache is read from several analysis threads at once.
_HEADER = struct.Struct("<4sIIqq")  # magic, faces, embedding dim, width, height
_MAGIC = b"LKF2"
_FLOAT = np.dtype("<f4")


def _pack(result: FaceResult) -> bytes:
    count = len(result.faces)
    dim = next((len(f.embedding) for f in result.faces if f.embedding is not None), 0)
    boxes = np.zeros((count, 4), _FLOAT)
    kps = np.zeros((count, 5, 2), _FLOAT)
    scores = np.zeros((count,), _FLOAT)
    embeddings = np.full((count, dim), np.nan, _FLOAT)
    for i, face in enumerate(result.faces):
        boxes[i], kps[i], scores[i] = face.box, face.kps, face.det_score
        if face.embedding is not None:
            embeddings[i] = face.embedding
    width, height = (int(v) for v in result.size)
    return b"".join([_HEADER.pack(_MAGIC, count, dim, width, height), boxes.tobytes(), kps.tobytes(), scores.tobytes(), embeddings.tobytes()])


def _unpack(blob: bytes, sha256: str) -> FaceResult:
    magic, count, dim, width, height = _HEADER.unpack_from(blob, 0)
    expected = _HEADER.size + _FLOAT.itemsize * count * (4 + 10 + 1 + dim)
    if magic != _MAGIC or len(blob) != expected:
        raise ValueError("not a face-cache entry of this version")
    values = np.frombuffer(blob, _FLOAT, offset=_HEADER.size).astype(np.float32)  # a writable, native copy
    boxes = values[: count * 4].reshape(count, 4)
    kps = values[count * 4: count * 14].reshape(count, 5, 2)
    scores = values[count * 14: count * 15]
    embeddings = values[count * 15:].reshape(count, dim)
    faces = []
    for i in range(count):
        vector = embeddings[i] if dim and not np.isnan(embeddings[i]).any() else None
        faces.append(DetectedFace(box=boxes[i], kps=kps[i], det_score=float(scores[i]), embedding=vector))
    return FaceResult(path=None, sha256=sha256, size=(width, height), faces=faces)


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
        except (sqlite3.Error, ValueError, OSError, KeyError, struct.error):
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
