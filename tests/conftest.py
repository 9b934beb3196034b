"""Shared fixtures: the real face pack and photos in ../shared (see ../shared/README.md).

They are test assets with research-only terms: read from ../shared, never copied into the repo.
"""

from __future__ import annotations

import pytest

from likeness_assets import FACES, PACK_DIR


def pytest_configure(config):
    missing = [p for p in (PACK_DIR, FACES) if not p.is_dir()]
    if missing:
        raise pytest.UsageError(
            f"test assets not found: {', '.join(map(str, missing))}. The tests need ../shared beside the "
            f"checkout (or LIKENESS_SHARED pointing at it)."
        )


@pytest.fixture(scope="session")
def engine():
    from lora_likeness.faces import FaceEngine

    return FaceEngine.load(PACK_DIR, providers="cpu")


@pytest.fixture()
def cache(tmp_path):
    from lora_likeness.cache import FaceCache

    return FaceCache(tmp_path / "cache")


@pytest.fixture(autouse=True)
def _isolated_cache_dir(tmp_path, monkeypatch):
    # Never touch the developer's real ~/.cache from a test.
    monkeypatch.setenv("LIKENESS_CACHE_DIR", str(tmp_path / "default-cache"))
