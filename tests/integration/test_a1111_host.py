"""A1111's own loader imports ``scripts/likeness.py`` beside an extension that ships ``core``.

Needs ``A1111_DIR`` (a stable-diffusion-webui checkout, see tests/integration/README.md). The
interpreter is ``A1111_PYTHON`` if set, else the one running pytest: the parts of A1111 used here
run in the project's venv (see below), so no A1111 venv is needed.

In a subprocess whose working directory and ``sys.path[0]`` are the checkout (as for
``python launch.py``), with a throw-away extensions folder holding
- ``aaa-other-extension``: a ``preload.py`` that puts its own root at the front of ``sys.path``
  for good (run by A1111's real ``script_loading.preload_extensions``) and a script that imports its
  own ``core`` and ``scripts.other_helper``, so both stay in ``sys.modules``; it also carries
  ``likeness_bootstrap.py``, ``a1111_extension/`` and ``comfy_nodes/`` that record and raise;
- ``sd-webui-likeness``: a copy of this repository (a copy, so that an editable install of this
  checkout could not pass for it);
each extension's scripts are loaded in A1111's order with A1111's real
``modules/script_loading.load_module``, inside the ``sys.path`` handling of
``modules/scripts.load_scripts``.

What is real and what is mirrored: ``modules.script_loading`` imports only ``modules.errors``,
whose module level is stdlib only, so ``load_module`` and ``preload_extensions`` are A1111's own
code here. ``modules.scripts`` (``load_scripts``) is not: it imports gradio and ``modules.shared``
(and so torch and most of A1111), which needs A1111's own venv. Its per-script
``sys.path = [scriptfile.basedir] + sys.path`` / ``finally: sys.path = syspath`` is mirrored, and
``test_load_scripts_still_does_what_we_mirror`` fails when the checkout's source stops matching.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RESULT_TAG = "LIKENESS_RESULT "
HEAVY = ("onnxruntime", "insightface", "matplotlib", "torch")
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".venv-*", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", "build",
    "dist", "likeness-out", ".whl", ".gl", "tests",
)


@pytest.fixture(scope="module")
def a1111_dir() -> Path:
    value = os.environ.get("A1111_DIR")
    if not value:
        pytest.skip("A1111_DIR is not set (path to a stable-diffusion-webui checkout; see tests/integration/README.md)")
    path = Path(value).resolve()
    assert (path / "modules" / "script_loading.py").is_file(), f"A1111_DIR={path} has no modules/script_loading.py"
    return path


def test_load_scripts_still_does_what_we_mirror(a1111_dir: Path) -> None:
    source = (a1111_dir / "modules" / "scripts.py").read_text(encoding="utf-8")
    for line in (
        "syspath = sys.path",
        "sys.path = [scriptfile.basedir] + sys.path",
        "script_module = script_loading.load_module(scriptfile.path)",
        "sys.path = syspath",
    ):
        assert line in source, f"modules/scripts.py no longer has `{line}`: update the mirror below"
    loading = (a1111_dir / "modules" / "script_loading.py").read_text(encoding="utf-8")
    assert "spec_from_file_location(os.path.basename(path), path)" in loading


def _write_other_extension(root: Path, forbidden_marker: Path, core_marker: Path) -> None:
    files = {
        "preload.py": """
            import os, sys
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for good, as some do

            def preload(parser):
                pass
        """,
        "core/__init__.py": f"""
            open({str(core_marker)!r}, "a").write(__name__ + "\\n")
            WHO = "aaa-other-extension"
        """,
        "scripts/other_helper.py": "HELPER = True\n",
        "scripts/other.py": """
            import core                  # its own, by the bare name
            import scripts.other_helper  # likewise
            assert core.WHO == "aaa-other-extension"
        """,
    }
    raising = f"""
        open({str(forbidden_marker)!r}, "a").write(__name__ + "\\n")
        raise ImportError("other extension's " + __name__ + " imported")
    """
    for rel in ("likeness_bootstrap.py", "a1111_extension/__init__.py", "comfy_nodes/__init__.py"):
        files[rel] = raising
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body), encoding="utf-8")


DRIVER = """
import json, os, sys
A1111_DIR, EXTENSIONS, FORBIDDEN, CORE_MARKER, HEAVY, RESULT_TAG = {consts}
sys.path.insert(0, A1111_DIR)  # `python launch.py` from the checkout
os.chdir(A1111_DIR)

before = set(sys.modules)
from modules import script_loading  # A1111's real loader
script_loading_pulls = sorted(set(sys.modules) - before)

# launch: every extension's preload.py (A1111's real preload_extensions)
import argparse
script_loading.preload_extensions(EXTENSIONS, argparse.ArgumentParser())

# webui: load_scripts, scripts of every extension in order, each with its root in front
def load_scripts_like_a1111(basedir):
    loaded = []
    scripts_dir = os.path.join(basedir, "scripts")
    for filename in sorted(os.listdir(scripts_dir)):
        path = os.path.join(scripts_dir, filename)
        if not (filename.endswith(".py") and os.path.isfile(path)):
            continue
        syspath = sys.path
        try:
            sys.path = [basedir] + sys.path
            loaded.append(script_loading.load_module(path))
        finally:
            sys.path = syspath
    return loaded

for name in sorted(os.listdir(EXTENSIONS)):
    load_scripts_like_a1111(os.path.join(EXTENSIONS, name))

ours = os.path.join(EXTENSIONS, "sd-webui-likeness", "scripts", "likeness.py")
first = script_loading.loaded_scripts[ours]
again = script_loading.load_module(ours)  # a UI reload loads every script again

import lora_likeness, lora_likeness_a1111  # by their unique names, extension root off sys.path

core = sys.modules.get("core")
others = [sys.modules.get(n) for n in ("core", "scripts", "scripts.other_helper")]
ours_modules = [first, lora_likeness, lora_likeness_a1111] + [
    m for n, m in list(sys.modules.items()) if n.startswith(("lora_likeness.", "lora_likeness_a1111."))]
refs_to_other = sorted(
    getattr(m, "__name__", "?") + "." + k
    for m in ours_modules for k, v in vars(m).items() if any(v is o for o in others if o is not None))
print(RESULT_TAG + json.dumps({{
    "script_loading_pulls": script_loading_pulls,
    "module_name": first.__name__,
    "lora_likeness_file": lora_likeness.__file__,
    "lora_likeness_path": list(lora_likeness.__path__),
    "a1111_file": lora_likeness_a1111.__file__,
    "script_attrs": [first.lora_likeness.__file__, first.lora_likeness_a1111.__file__],
    "same_after_reload": again.lora_likeness is first.lora_likeness is lora_likeness
                         and again.lora_likeness_a1111 is first.lora_likeness_a1111,
    "core_is_other": getattr(core, "WHO", None),
    "other_helper": getattr(sys.modules.get("scripts.other_helper"), "__file__", None),
    "forbidden": open(FORBIDDEN).read() if os.path.exists(FORBIDDEN) else "",
    "core_imports": open(CORE_MARKER).read() if os.path.exists(CORE_MARKER) else "",
    "refs_to_other": refs_to_other,
    "heavy": sorted(m for m in HEAVY if m in sys.modules),
    "sys_path_head": sys.path[:3],
}}))
"""


def test_a1111_loader_imports_our_script(a1111_dir: Path, tmp_path: Path) -> None:
    python = os.environ.get("A1111_PYTHON") or sys.executable
    extensions = tmp_path / "data" / "extensions"
    other = extensions / "aaa-other-extension"
    ours = extensions / "sd-webui-likeness"
    forbidden, core_marker = tmp_path / "forbidden.txt", tmp_path / "core-imports.txt"
    _write_other_extension(other, forbidden, core_marker)
    shutil.copytree(REPO, ours, ignore=_COPY_IGNORE)

    consts = (str(a1111_dir), str(extensions), str(forbidden), str(core_marker), HEAVY, RESULT_TAG)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(consts=repr(consts)), encoding="utf-8")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run([python, str(driver)], cwd=a1111_dir, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    r = json.loads(lines[-1][len(RESULT_TAG):])

    # The loader really is A1111's, and it needs no more of A1111 than modules.errors.
    assert "modules.script_loading" in r["script_loading_pulls"]
    assert not [m for m in r["script_loading_pulls"] if m.startswith("modules.") and m not in (
        "modules.script_loading", "modules.errors")], r["script_loading_pulls"]
    assert r["module_name"] == "likeness.py"

    # The other extension is in front of sys.path for good and owns `core` and `scripts`...
    assert Path(r["sys_path_head"][0]) == other
    assert r["core_is_other"] == "aaa-other-extension"
    assert r["core_imports"] == "core\n"
    assert Path(r["other_helper"]) == other / "scripts" / "other_helper.py"
    # ... and ours still came from our folder, under its unique names.
    assert Path(r["lora_likeness_file"]) == ours / "core" / "__init__.py"
    assert [Path(p) for p in r["lora_likeness_path"]] == [ours / "core"]
    assert Path(r["a1111_file"]) == ours / "a1111_extension" / "__init__.py"
    assert r["script_attrs"] == [r["lora_likeness_file"], r["a1111_file"]]
    assert r["same_after_reload"]
    assert r["refs_to_other"] == [], f"our modules hold the other extension's modules: {r['refs_to_other']}"
    assert r["forbidden"] == "", f"the other extension's modules were imported:\n{r['forbidden']}"
    assert r["heavy"] == [], f"heavy modules imported: {r['heavy']}"
