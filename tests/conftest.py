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


# The installed versions against the ranges pyproject's `train` and `test` extras are tested with.
# Merely outside a range is a warning, at the start and again under the results: the suite itself is
# what shows whether that release works (and lets the range grow). A stack that does not import
# stops the session when a test module that needs it is collected (tests/training_stack.py): every
# such test would fail, and one message naming the conflict says more than their tracebacks.

def _untested_versions() -> str | None:
    from lora_likeness import dependencies  # standard library only: cheap at start-up

    outside = dependencies.extra_findings(("train", "test"), include_missing=False)
    if not outside:
        return None
    return ("WARNING: untested versions, failures may come from them: "
            + "; ".join(finding.message() for finding in outside)
            + ' (pip install -e ".[test]" installs tested ones)')


def pytest_report_header(config):
    from lora_likeness import dependencies

    return "training stack: " + ", ".join(dependencies.stack_versions())


def pytest_sessionstart(session):
    warning = _untested_versions()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if warning and reporter is not None:
        reporter.write_line(warning, yellow=True, bold=True)


def pytest_terminal_summary(terminalreporter):
    warning = _untested_versions()
    if warning:
        terminalreporter.write_line(warning, yellow=True, bold=True)


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


@pytest.fixture()
def drawn_text(monkeypatch):
    """Every text ``lora_likeness.grid`` draws, as ``(text, (left, top, right, bottom), canvas size)``.

    The box is the text's ink box where ``grid._text`` puts it (the same textbbox arithmetic), so a
    test can check that labels stay clear of each other and of the cells they name."""
    from lora_likeness import grid

    drawn: list[tuple[str, tuple[float, float, float, float], tuple[int, int]]] = []
    original = grid._text

    def recording(draw, xy, text, face, fill, anchor="lt"):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
        width, height = right - left, bottom - top
        x = xy[0] - {"l": 0, "m": width / 2, "r": width}[anchor[0]]
        y = xy[1] - {"t": 0, "m": height / 2, "d": height}[anchor[1]]
        drawn.append((text, (x, y, x + width, y + height), draw.im.size))
        return original(draw, xy, text, face, fill, anchor)

    monkeypatch.setattr(grid, "_text", recording)
    return drawn
