"""The face cache: exact round trip of boxes, keypoints, scores and embeddings; a damaged or old entry is a
miss, never an error; many threads reading at once (what analysis does) get the same results."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from lora_likeness.cache import FaceCache
from lora_likeness.faces import DetectedFace, FaceResult


def _result(seed: int, faces: int = 2, dim: int = 128) -> FaceResult:
    rng = np.random.default_rng(seed)
    detected = [DetectedFace(box=rng.random(4, dtype=np.float32) * 500, kps=rng.random((5, 2), dtype=np.float32) * 500,
                             det_score=float(rng.random()), embedding=rng.standard_normal(dim).astype(np.float32) if i else None)
                for i in range(faces)]
    return FaceResult(path=None, sha256=f"{seed:064x}", size=(640 + seed, 480), faces=detected)


def _same(a: FaceResult, b: FaceResult) -> bool:
    if a.size != b.size or len(a.faces) != len(b.faces):
        return False
    for x, y in zip(a.faces, b.faces):
        if not (np.array_equal(x.box, y.box) and np.array_equal(x.kps, y.kps) and np.float32(x.det_score) == np.float32(y.det_score)):
            return False
        if (x.embedding is None) != (y.embedding is None) or (x.embedding is not None and not np.array_equal(x.embedding, y.embedding)):
            return False
    return True


def test_round_trip_is_exact_and_a_face_without_embedding_stays_without(tmp_path):
    cache = FaceCache(tmp_path)
    for seed, faces in ((1, 2), (2, 0), (3, 5)):
        original = _result(seed, faces)
        cache.put(original, "engine-a")
        back = cache.get(original.sha256, "engine-a")
        assert back is not None and _same(original, back), seed
        assert cache.get(original.sha256, "engine-b") is None  # another engine's faces are another entry
    assert _result(2, 0).faces == [] and cache.get(_result(2, 0).sha256, "engine-a").faces == []


def test_a_damaged_entry_is_a_miss(tmp_path):
    cache = FaceCache(tmp_path)
    original = _result(7)
    cache.put(original, "engine")
    with sqlite3.connect(cache.path) as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master where type='table'")]
        table = tables[0]
        columns = [row[1] for row in db.execute(f"pragma table_info({table})")]
        blob_column = next(c for c in columns if c not in ("sha256", "fingerprint", "engine", "created"))
        db.execute(f"update {table} set {blob_column} = ?", (b"PK\x03\x04 an old .npz entry",))
    assert FaceCache(tmp_path).get(original.sha256, "engine") is None


def test_many_threads_read_at_once(tmp_path):
    cache = FaceCache(tmp_path)
    originals = [_result(seed) for seed in range(40)]
    for result in originals:
        cache.put(result, "engine")
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(5):
            found = list(pool.map(lambda r: cache.get(r.sha256, "engine"), originals))
            assert all(back is not None and _same(o, back) for o, back in zip(originals, found))
