"""How Likeness is packed for the places users install it from.

* Comfy Registry (``comfy node publish``): pyproject's fields as comfy-cli reads and validates them
  (``comfy_cli/registry/config_parser.py``), and the archive it uploads, built the way comfy-cli's
  ``zip_files`` builds it (``comfy_cli/file_utils.py``: every ``git ls-files`` path that the
  ``.comfyignore`` gitwildmatch patterns do not match). The archive is unpacked as a ComfyUI
  ``custom_nodes`` folder and the pack loaded from it, with every way of starting a process watched.
  tests/integration/test_comfy_registry.py runs comfy-cli's own code on the same checkout.
* ComfyUI-Manager / ``comfy node install``: ``requirements.txt`` (one ``pip install <line>`` per line,
  then ``python install.py``) must never bring in an onnxruntime; tests/integration/test_manager_install.py
  runs the Manager's steps in a venv that has onnxruntime-gpu.
* ComfyUI's node help: one page per node in the pack's ``WEB_DIRECTORY``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pathspec
import pytest
from comfy_pack import load_node_pack
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

#: What the node pack needs at the archive's top level (everything else is left out by .comfyignore).
PACK_TOP_LEVEL = {"__init__.py", "likeness_bootstrap.py", "install.py", "requirements.txt", "pyproject.toml", "README.md",
                  "LICENSE", "core", "comfy_nodes", "web", "workflows"}

# comfy-cli's checks (comfy_cli/registry/config_parser.py), copied as they are there.
COMFY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
COMFY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend", "GPU :: Apple Metal"}
COMFY_VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")


def comfy_archive_names(repo: Path = REPO) -> list[str]:
    """The paths ``comfy node publish`` / ``comfy node pack`` would zip: comfy-cli's ``zip_files`` with
    no ``includes`` (pyproject has none): ``git ls-files`` minus the ``.comfyignore`` patterns."""
    tracked = subprocess.run(["git", "-C", str(repo), "ls-files"], capture_output=True, text=True, check=True).stdout.splitlines()
    ignore = repo / ".comfyignore"
    patterns = [line.strip() for line in ignore.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")] if ignore.is_file() else []
    with warnings.catch_warnings():  # pathspec 1.x deprecates the name comfy-cli still uses
        warnings.simplefilter("ignore", DeprecationWarning)
        spec = pathspec.PathSpec.from_lines("gitwildmatch", patterns) if patterns else None
        return [name for name in tracked if name.strip() and not (spec and spec.match_file(name)) and (repo / name).exists()]


def build_comfy_archive(target: Path, repo: Path = REPO) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in comfy_archive_names(repo):
            archive.write(repo / name, name)
    return target


# --- Comfy Registry metadata ------------------------------------------------------------------------


def test_pyproject_has_what_comfy_node_publish_reads():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", project["name"]), "the registry's node id: lowercase, digits and dashes"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "comfy node publish refuses an empty version"
    assert len(project["description"]) > 40
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "Permission is hereby granted, free of charge" in license_text
    repository = project["urls"]["Repository"]
    assert repository.startswith("https://github.com/")
    classifiers = project["classifiers"]
    systems = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")]
    assert systems and all(s.startswith(COMFY_OS_PREFIXES) for s in systems)
    assert accelerators and set(accelerators) <= COMFY_ACCELERATORS
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert all(COMFY_VERSION_PART.match(part.strip()) for part in comfy["requires-comfyui"].split(","))
    assert comfy.get("includes", []) == []  # nothing outside git's files is packed


def test_registry_icon_is_a_square_image_in_this_repository():
    icon_url = PYPROJECT["tool"]["comfy"]["Icon"]
    repository = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repository}/main/"
    assert icon_url.startswith(prefix), f"the icon should be served from this repository: {icon_url}"
    path = REPO / icon_url.removeprefix(prefix)
    with Image.open(path) as icon:
        assert icon.format == "PNG" and icon.width == icon.height and 128 <= icon.width <= 512
    assert path.relative_to(REPO).as_posix() not in comfy_archive_names(), "the registry fetches the icon by URL"


def test_publish_workflow_runs_the_registry_action_with_the_token():
    workflow = (REPO / ".github" / "workflows" / "publish_action.yml").read_text(encoding="utf-8")
    assert "uses: Comfy-Org/publish-node-action@v1" in workflow
    assert "personal_access_token: ${{ secrets.REGISTRY_ACCESS_TOKEN }}" in workflow
    assert '- "pyproject.toml"' in workflow  # a version bump publishes


# --- the archive ------------------------------------------------------------------------------------


def test_comfy_archive_holds_only_what_the_pack_needs():
    names = comfy_archive_names()
    top = {name.split("/", 1)[0] for name in names}
    assert top == PACK_TOP_LEVEL, f"left out by .comfyignore: {sorted(top - PACK_TOP_LEVEL)}; missing: {sorted(PACK_TOP_LEVEL - top)}"
    assert not [n for n in names if n.endswith((".png", ".safetensors", ".onnx"))]
    tracked_python = [n for n in subprocess.run(["git", "-C", str(REPO), "ls-files", "core", "comfy_nodes"],
                                                capture_output=True, text=True, check=True).stdout.splitlines()]
    assert set(tracked_python) <= set(names)


PACK_LOADER = r"""
import asyncio, importlib.util, json, os, subprocess, sys
started = []
def refuse(*args, **kwargs):
    started.append(repr(args[:1])[:200])
    raise RuntimeError("the node pack started a process while loading")
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_call = subprocess.check_output = refuse
os.system = refuse
if hasattr(os, "posix_spawn"):
    os.posix_spawn = refuse
folder = sys.argv[1]
name = os.path.basename(folder)
# ComfyUI's nodes.load_custom_node: the folder imported as a package under its own name
spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
extension = asyncio.run(module.comfy_entrypoint())
nodes = asyncio.run(extension.get_node_list())
print("RESULT " + json.dumps({
    "nodes": [node.define_schema().node_id for node in nodes],
    "web": os.path.abspath(os.path.join(folder, module.WEB_DIRECTORY)),
    "started": started,
    "core": sys.modules["lora_likeness"].__file__,
    "pip_modules": sorted(m for m in sys.modules if m in ("pip", "lora_likeness.doctor_command", "lora_likeness.dependencies")),
}))
"""


def test_the_archive_unpacked_into_custom_nodes_loads_every_node_without_starting_a_process(tmp_path):
    archive = build_comfy_archive(tmp_path / "node.zip")
    folder = tmp_path / "custom_nodes" / "lora-likeness"  # the registry's node id is the folder name
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(folder)
    result = subprocess.run([sys.executable, "-c", PACK_LOADER, str(folder)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert Path(found["core"]).is_relative_to(folder), "the core must come from the archive, not this checkout"
    assert found["nodes"] == [node.define_schema().node_id for node in load_node_pack().NODES]
    assert found["started"] == [] and found["pip_modules"] == []
    web = Path(found["web"])
    for node_id in found["nodes"]:
        assert (web / "docs" / f"{node_id}.md").is_file() or (web / "docs" / node_id / "en.md").is_file(), node_id


#: Where the pack may run pip, and why that is not a run-time install: install.py is what ComfyUI-Manager
#: runs at install time; `likeness doctor --fix-onnxruntime` is a command the user types (no node imports it).
PIP_ALLOWED = {"install.py": "install time", "core/doctor_command.py": "`likeness doctor --fix-onnxruntime`"}
_PROCESS_CALLS = {"run", "call", "check_call", "check_output", "Popen", "system", "spawnv", "spawnl", "execv", "execl", "run_pip"}


def _runs_pip(tree: ast.AST) -> bool:
    """Whether a function (or the module level) both starts a process and names pip."""
    scopes = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]
    for scope in scopes:
        calls = [n for n in ast.walk(scope) if isinstance(n, ast.Call)]
        starts = any((isinstance(c.func, ast.Attribute) and c.func.attr in _PROCESS_CALLS)
                     or (isinstance(c.func, ast.Name) and c.func.id in _PROCESS_CALLS) for c in calls)
        names_pip = any(isinstance(n, ast.Constant) and isinstance(n.value, str) and re.search(r"(^|\s|-m\s)pip(\s|$)", n.value)
                        for n in ast.walk(scope))
        if starts and names_pip:
            return True
    return False


def test_no_code_in_the_archive_pip_installs_at_run_time():
    """The registry's standards forbid runtime package installs through subprocess (and eval/exec)."""
    found = {}
    for name in comfy_archive_names():
        if not name.endswith(".py"):
            continue
        tree = ast.parse((REPO / name).read_text(encoding="utf-8"), filename=name)
        if _runs_pip(tree):
            found[name] = True
        builtins_called = {c.func.id for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
        assert not builtins_called & {"eval", "exec"}, f"{name} calls eval/exec"
    assert set(found) == set(PIP_ALLOWED), f"pip is run from {sorted(found)}; allowed: {PIP_ALLOWED}"
    # the check itself: a node that pip-installs is caught, a node that starts a trainer is not
    node = "import subprocess, sys\ndef execute(self):\n    subprocess.check_call([sys.executable, '-m', 'pip', 'install', 'x'])\n"
    assert _runs_pip(ast.parse(node))
    assert not _runs_pip(ast.parse("import subprocess\ndef train():\n    subprocess.Popen(['accelerate', 'launch'])\n"))


# --- ComfyUI-Manager's requirements.txt ------------------------------------------------------------


def _requirement_lines() -> list[str]:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def test_requirements_txt_never_brings_an_onnxruntime():
    """ComfyUI-Manager runs ``pip install <line>`` for each line: insightface (2.x requires the CPU
    onnxruntime) or any onnxruntime here would sit beside a host's onnxruntime-gpu. install.py does those."""
    lines = _requirement_lines()
    names = [re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower() for line in lines]
    assert not [n for n in names if n.startswith(("onnxruntime", "insightface"))]
    dependencies = [d for d in PYPROJECT["project"]["dependencies"] if not d.lower().startswith("insightface")]
    assert lines == dependencies, "requirements.txt is pyproject's dependencies without insightface"


# --- node help pages --------------------------------------------------------------------------------


def test_every_node_has_a_help_page_in_the_web_directory():
    source = (REPO / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^\s*WEB_DIRECTORY = "([^"]+)"', source, re.MULTILINE)
    assert match, "the root __init__.py must export WEB_DIRECTORY for ComfyUI to serve the help pages"
    docs = (REPO / match.group(1)) / "docs"
    node_ids = [node.define_schema().node_id for node in load_node_pack().NODES]
    for node_id in node_ids:
        page = docs / f"{node_id}.md"
        assert page.is_file(), f"no help page for {node_id}: {page}"
        text = page.read_text(encoding="utf-8")
        assert text.startswith("# ") and "## Inputs" in text and len(text) > 400, node_id
    assert sorted(p.stem for p in docs.glob("*.md")) == sorted(node_ids), "a help page for a node that does not exist"


# --- the PyPI wheel ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel CI built (``LIKENESS_WHEEL``, .ci/run), else one built here from the git-tracked files
    (as from a fresh clone: nothing untracked or ignored can slip in)."""
    given = os.environ.get("LIKENESS_WHEEL")
    if given:
        return Path(given)
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    for name in subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True).stdout.splitlines():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    (built,) = (tmp / "dist").glob("lora_likeness-*.whl")
    return built


def test_wheel_carries_every_module_and_package_file(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "core"], capture_output=True, text=True, check=True).stdout.splitlines()
    # every file of core/ the code may load (modules, report.schema.json), under the import name
    expected = {"lora_likeness/" + name.removeprefix("core/") for name in tracked}
    assert expected - names == set(), f"missing from the wheel: {sorted(expected - names)}"
    ours = {n for n in names if not n.startswith("lora_likeness/") and ".dist-info/" not in n}
    assert ours == set(), f"the wheel carries files outside the package: {sorted(ours)}"
    assert "likeness = lora_likeness.cli:main" in entry_points
    assert "License-Expression: MIT" in metadata and any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Requires-Dist: insightface" in metadata and "Requires-Dist: torch" not in metadata


# --- the A1111 extension index ------------------------------------------------------------------------

#: tags.json of AUTOMATIC1111/stable-diffusion-webui-extensions (956826ec, 2026-05-25); "installed" is the
#: webui's own and not for entries.
A1111_INDEX_TAGS = {"script", "localization", "tab", "dropdown", "ads", "training", "models", "UI related", "prompting",
                    "editing", "manipulations", "online", "animation", "query", "science", "extras"}


def test_a1111_index_entry_passes_the_index_validation():
    """The checks of the index's .github/scripts/validate.py (validate_entry) on docs/a1111/extension-index/."""
    (entry_file,) = (REPO / "docs" / "a1111" / "extension-index").glob("*.json")
    entry = json.loads(entry_file.read_text(encoding="utf-8"))
    assert set(entry) == {"name", "url", "description", "tags"}, "`added` is filled in by the index after the merge"
    assert entry["tags"] and set(entry["tags"]) <= A1111_INDEX_TAGS
    assert "online" not in entry["tags"] and "ads" not in entry["tags"]  # neither applies: the extension never goes online
    assert re.match(r"(https://[^ ]+?)(?:(?:\.git)$|$)", entry["url"])
    assert entry["url"] == PYPROJECT["project"]["urls"]["Repository"] + ".git"
    assert entry_file.stem == entry["url"].rsplit("/", 1)[1].removesuffix(".git")
