"""The core is importable the three ways Likeness is deployed, and nothing else gets imported.

1. ComfyUI: ``custom_nodes/ComfyUI-Likeness`` imported as a package, mirroring
   ``nodes.load_custom_node`` (ComfyUI 0.3.64): ``spec_from_file_location`` on ``<dir>/__init__.py``
   under the name ``module_path.replace(".", "_x_")`` (the folder's full path), registered in
   ``sys.modules`` before ``exec_module``; then its V3 branch: ``comfy_entrypoint()`` and the
   extension's node list, each node's schema (outside ComfyUI the nodes run on ``comfy_nodes.standin``).
2. A1111 / Forge: ``scripts/likeness.py`` loaded by path, mirroring
   ``modules/script_loading.load_module`` (module named ``os.path.basename(path)``, i.e.
   ``"likeness.py"``, not put in ``sys.modules``) inside ``modules/scripts.load_scripts``'s
   ``sys.path = [extension root] + sys.path`` / restore, while another extension's ``core`` and
   ``scripts`` sit on ``sys.path`` and in ``sys.modules``.
3. ``pip install -e .``: ``import lora_likeness`` resolves into this checkout's ``core/`` from any
   working directory and the ``likeness`` console script is installed; neither ``lora_likeness``
   nor any of its modules imports onnxruntime, insightface, matplotlib or torch at import time.

Every load runs in a fresh interpreter (subprocess): importing the pack here would leave
``lora_likeness`` and friends in this process's ``sys.modules`` and leak into other tests.
The host checkouts themselves are exercised by ``tests/integration/``.
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

REPO = Path(__file__).resolve().parents[1]
CORE_INIT = REPO / "core" / "__init__.py"
DIST_NAME = "lora-likeness"

# Importing lora_likeness (or loading the pack) must not pull any of these in: both hosts import
# every extension at start-up.
HEAVY = ("onnxruntime", "insightface", "matplotlib", "torch")

# Top-level names this repository has as folders or modules. Another extension may ship any of
# them; a bare ``import <name>`` from our bootstrap would pick up theirs.
OUR_TOP_LEVEL_NAMES = ("core", "scripts", "comfy_nodes", "a1111_extension", "likeness_bootstrap")

# What a host copy of the repository needs; everything else (venvs, caches, VCS) stays behind.
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".venv-*", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", "build",
    "dist", "likeness-out", ".whl", ".gl", "tests",
)

RESULT_TAG = "LIKENESS_RESULT "


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep __pycache__ out of the checkout
    return env


def run_python(code: str, cwd: Path, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter (this one's executable) and return its JSON result.

    The script prints one line ``LIKENESS_RESULT {json}``; anything else it prints is kept for the
    failure message.
    """
    script = cwd / "_likeness_probe.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        pytest.fail(
            f"subprocess failed (rc={proc.returncode})\n--- stdout ---\n{proc.stdout}\n"
            f"--- stderr ---\n{proc.stderr}"
        )
    return json.loads(lines[-1][len(RESULT_TAG):])


def make_decoy(root: Path, marker: Path) -> Path:
    """An "other extension" folder with our top-level names, each of which records and raises.

    The marker file catches an import even where a caller swallowed the exception.
    """
    root.mkdir(parents=True)
    body = (
        "with open({marker!r}, 'a', encoding='utf-8') as f:\n"
        "    f.write(__name__ + '\\n')\n"
        "raise ImportError('decoy ' + __name__ + ' imported from ' + __file__)\n"
    )
    files = {
        "core/__init__.py",
        "scripts/__init__.py",
        "scripts/likeness.py",
        "comfy_nodes/__init__.py",
        "a1111_extension/__init__.py",
        "likeness_bootstrap.py",
    }
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body.format(marker=str(marker)), encoding="utf-8")
    return root


def place_pack(src: Path, dst: Path, how: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if how == "symlink":
        dst.symlink_to(src, target_is_directory=True)
    else:
        shutil.copytree(src, dst, ignore=_COPY_IGNORE)


# Appended to every probe: what a load left behind.
_REPORT = """
def _report(**extra):
    ll = sys.modules.get("lora_likeness")
    out = {
        "lora_likeness_file": getattr(ll, "__file__", None),
        "lora_likeness_path": list(getattr(ll, "__path__", []) or []),
        "a1111_file": getattr(sys.modules.get("lora_likeness_a1111"), "__file__", None),
        "heavy": sorted(m for m in HEAVY if m in sys.modules),
        "bare_names": sorted(n for n in OUR_TOP_LEVEL_NAMES if n in sys.modules),
        "marker": open(MARKER, encoding="utf-8").read() if os.path.exists(MARKER) else "",
    }
    out.update(extra)
    print(RESULT_TAG + json.dumps(out))
"""


def _preamble(**consts) -> str:
    lines = ["import importlib.util, json, os, sys, types"]
    consts.setdefault("HEAVY", HEAVY)
    consts.setdefault("OUR_TOP_LEVEL_NAMES", OUR_TOP_LEVEL_NAMES)
    consts.setdefault("RESULT_TAG", RESULT_TAG)
    lines += [f"{k} = {v!r}" for k, v in consts.items()]
    return "\n".join(lines) + "\n" + _REPORT


# --------------------------------------------------------------------------------------------
# 1. ComfyUI


# How users get the pack into custom_nodes: a clone (a real folder) or a developer's symlink.
# "dotted" puts a "." in the path, which ComfyUI rewrites to "_x_" in the sys.modules name;
# the relative imports in our __init__.py must survive that name.
@pytest.mark.parametrize(
    "how, base",
    [("copy", "ComfyUI"), ("symlink", "ComfyUI"), ("copy", "ComfyUI.v0.3")],
    ids=["clone", "symlink", "dotted-path"],
)
def test_comfyui_loads_pack_as_package(tmp_path: Path, how: str, base: str) -> None:
    custom_nodes = tmp_path / base / "custom_nodes"
    pack = custom_nodes / "ComfyUI-Likeness"
    place_pack(REPO, pack, how)
    marker = tmp_path / "decoy-imports.txt"
    decoy = make_decoy(tmp_path / "decoy-site", marker)

    code = _preamble(CUSTOM_NODES=str(custom_nodes), DECOY=str(decoy), MARKER=str(marker)) + """
# Another node pack that put its own folder on sys.path (a common pattern) ships `core` etc.
sys.path.insert(0, DECOY)

# --- mirror of ComfyUI nodes.load_custom_node (0.3.64), folder case ---
module_path = os.path.join(CUSTOM_NODES, "ComfyUI-Likeness")
assert os.path.isdir(module_path)
sys_module_name = module_path.replace(".", "_x_")
module_spec = importlib.util.spec_from_file_location(sys_module_name, os.path.join(module_path, "__init__.py"))
module = importlib.util.module_from_spec(module_spec)
sys.modules[sys_module_name] = module
module_spec.loader.exec_module(module)
# --- end of mirror ---

# --- mirror of ComfyUI's V3 branch of load_custom_node (taken only without NODE_CLASS_MAPPINGS) ---
import asyncio, inspect
has_v1 = hasattr(module, "NODE_CLASS_MAPPINGS")
entrypoint = getattr(module, "comfy_entrypoint", None)
extension = asyncio.run(entrypoint()) if inspect.iscoroutinefunction(entrypoint) else entrypoint()
nodes = asyncio.run(extension.get_node_list())
schemas = [node.define_schema() for node in nodes]  # what /object_info asks each node
# --- end of mirror ---

_report(
    sys_module_name=sys_module_name,
    has_v1_mappings=has_v1,
    entrypoint_is_async=inspect.iscoroutinefunction(entrypoint),
    node_ids=[schema.node_id for schema in schemas],
    categories=sorted({schema.category for schema in schemas}),
    bootstrap_module=getattr(sys.modules.get(sys_module_name + ".likeness_bootstrap"), "__file__", None),
)
"""
    result = run_python(code, cwd=tmp_path)

    expected_core = (pack / "core").resolve()
    assert result["lora_likeness_file"], "lora_likeness was not registered in sys.modules"
    assert Path(result["lora_likeness_file"]).resolve() == expected_core / "__init__.py"
    assert [Path(p).resolve() for p in result["lora_likeness_path"]] == [expected_core]
    if how == "copy":
        # Loaded from the clone itself, not from an editable install of this checkout.
        assert not Path(result["lora_likeness_file"]).resolve().is_relative_to(REPO)
    # V3 only: ComfyUI ignores comfy_entrypoint when NODE_CLASS_MAPPINGS is there too.
    assert result["has_v1_mappings"] is False
    assert result["entrypoint_is_async"] is True
    assert result["node_ids"] == [
        "LikenessFaceModel", "LikenessReferenceFaces", "LikenessPeople", "LikenessScoreImages", "LikenessScoreTrainingSamples", "LikenessLoraCheckpoints",
        "LikenessEpochSweep", "LikenessScoredGrid", "LikenessPrepareDataset", "LikenessTrainLora",
    ]
    assert result["categories"] == ["Likeness"]
    assert result["bootstrap_module"], "root __init__ did not import the bootstrap relatively"
    assert result["a1111_file"] is None, "ComfyUI load pulled in the A1111 adapter"
    assert result["marker"] == "", f"decoy modules were imported:\n{result['marker']}"
    assert result["bare_names"] == [], f"bare top-level names imported: {result['bare_names']}"
    # Nor when ComfyUI lists the nodes (/object_info): torch, onnxruntime, ... load when a node runs.
    assert result["heavy"] == [], f"heavy modules imported at load time: {result['heavy']}"


def test_comfyui_too_old_for_the_v3_api_says_so(tmp_path: Path) -> None:
    """A ComfyUI before 0.3.48 has ``comfy_api`` but no ``comfy_api.latest``: the import fails with
    a message naming both versions (ComfyUI prints it beside IMPORT FAILED)."""
    old_comfy = tmp_path / "ComfyUI-0.3.47"
    (old_comfy / "comfy_api").mkdir(parents=True)
    (old_comfy / "comfy_api" / "__init__.py").write_text("", encoding="utf-8")
    (old_comfy / "comfyui_version.py").write_text('__version__ = "0.3.47"\n', encoding="utf-8")
    pack = tmp_path / "custom_nodes" / "ComfyUI-Likeness"
    place_pack(REPO, pack, "symlink")
    code = _preamble(PACK=str(pack), OLD=str(old_comfy), MARKER=str(tmp_path / "none")) + """
sys.path.insert(0, OLD)
spec = importlib.util.spec_from_file_location(PACK, os.path.join(PACK, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[PACK] = module
try:
    spec.loader.exec_module(module)
    error = None
except ImportError as exc:
    error = str(exc)
_report(error=error)
"""
    result = run_python(code, cwd=tmp_path)
    assert result["error"] is not None, "the pack loaded on a ComfyUI without the V3 node API"
    assert "Likeness needs ComfyUI 0.3.48 or newer" in result["error"]
    assert "this ComfyUI is 0.3.47" in result["error"]

# --------------------------------------------------------------------------------------------
# 2. A1111 / Forge


# ext-first: A1111's own order (load_scripts puts the extension root in front for the load).
# decoy-first: another extension put itself at the very front of sys.path for good.
@pytest.mark.parametrize("order", ["ext-first", "decoy-first"])
def test_a1111_loads_script_by_path(tmp_path: Path, order: str) -> None:
    ext = tmp_path / "webui" / "extensions" / "sd-webui-likeness"
    place_pack(REPO, ext, "copy")
    marker = tmp_path / "decoy-imports.txt"
    decoy = make_decoy(tmp_path / "webui" / "extensions" / "aaa-other-extension", marker)

    code = _preamble(EXT=str(ext), DECOY=str(decoy), MARKER=str(marker), ORDER=order) + """
# Another extension loaded earlier left its `core` and `scripts` in sys.modules ...
touched = []


class DecoyModule(types.ModuleType):
    # A bare `import core` that finds the module in sys.modules executes nothing, but the import
    # system reads its __spec__ (is it still initialising?); `from core import x` reads x.
    def __getattribute__(self, name):
        if name not in ("__dict__", "__class__"):
            touched.append(types.ModuleType.__getattribute__(self, "__name__") + "." + name)
        return types.ModuleType.__getattribute__(self, name)


decoy_core = DecoyModule("core")
decoy_scripts = DecoyModule("scripts")
vars(decoy_core).update(__file__=os.path.join(DECOY, "core", "__init__.py"), DECOY="core")
vars(decoy_scripts).update(__path__=[os.path.join(DECOY, "scripts")], DECOY="scripts")
sys.modules["core"] = decoy_core
sys.modules["scripts"] = decoy_scripts
before = {n: sorted(vars(sys.modules[n])) for n in ("core", "scripts")}
# ... and its folder on sys.path.
sys.path.insert(0, DECOY)


def load_module(path):  # mirror of A1111 modules/script_loading.load_module (v1.10.1)
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_script(path, basedir):  # mirror of the loop body of modules/scripts.load_scripts
    syspath = sys.path
    try:
        sys.path = [basedir] + sys.path
        if ORDER == "decoy-first":
            sys.path = [DECOY] + sys.path
        return load_module(path)
    finally:
        sys.path = syspath


script = os.path.join(EXT, "scripts", "likeness.py")
first = load_script(script, EXT)
ext_left_on_path = EXT in sys.path
second = load_script(script, EXT)  # "Reload UI" runs load_scripts again

import lora_likeness  # after the load, by its unique name, with the extension off sys.path
import lora_likeness_a1111

_report(
    module_name=first.__name__,
    script_attr_core=getattr(getattr(first, "lora_likeness", None), "__file__", None),
    script_attr_a1111=getattr(getattr(first, "lora_likeness_a1111", None), "__file__", None),
    same_after_reload=(second.lora_likeness is first.lora_likeness is lora_likeness
                       and second.lora_likeness_a1111 is first.lora_likeness_a1111 is lora_likeness_a1111),
    ext_left_on_path=ext_left_on_path,
    decoy_core_intact=sys.modules.get("core") is decoy_core and sorted(vars(decoy_core)) == before["core"],
    decoy_scripts_intact=sys.modules.get("scripts") is decoy_scripts and sorted(vars(decoy_scripts)) == before["scripts"],
    decoys_touched=touched,
    # Outside A1111 (no modules.scripts loading us) only the packages are registered: no script
    # class, no adapter module that imports A1111.
    script_class=hasattr(first, "LikenessScript"),
    adapter_submodules=sorted(m for m in sys.modules if m.startswith("lora_likeness_a1111.")),
    a1111_modules=sorted(m for m in sys.modules if m == "modules" or m.startswith("modules.")),
)
"""
    result = run_python(code, cwd=tmp_path)

    assert result["module_name"] == "likeness.py"
    assert result["lora_likeness_file"], "lora_likeness was not registered in sys.modules"
    assert Path(result["lora_likeness_file"]) == ext / "core" / "__init__.py"
    assert [Path(p) for p in result["lora_likeness_path"]] == [ext / "core"]
    assert Path(result["a1111_file"]) == ext / "a1111_extension" / "__init__.py"
    assert result["script_attr_core"] == result["lora_likeness_file"]
    assert result["script_attr_a1111"] == result["a1111_file"]
    assert result["same_after_reload"], "a second load_scripts registered new module objects"
    assert not result["ext_left_on_path"], "the extension root stayed on sys.path"
    assert result["decoy_core_intact"], "sys.modules['core'] was replaced or modified"
    assert result["decoy_scripts_intact"], "sys.modules['scripts'] was replaced or modified"
    assert result["decoys_touched"] == [], f"the decoys in sys.modules were used: {result['decoys_touched']}"
    assert result["marker"] == "", f"decoy modules were imported:\n{result['marker']}"
    assert result["bare_names"] == ["core", "scripts"], result["bare_names"]  # only the decoys
    assert result["heavy"] == [], f"heavy modules imported at load time: {result['heavy']}"
    assert not result["script_class"], "the A1111 script class was defined outside A1111"
    assert result["adapter_submodules"] == [], result["adapter_submodules"]
    assert result["a1111_modules"] == [], result["a1111_modules"]


# --------------------------------------------------------------------------------------------
# 3. pip install -e .

_INSTALL_HINT = (
    f"run `{sys.executable} -m pip install -e '.[test]'` from {REPO} "
    "(CI installs the project editable before running the tests)"
)


# Run from a temporary working directory: from the repository root, the `lora_likeness.egg-info`
# that an editable install leaves there would be found through sys.path[0] = "" and make an
# uninstalled interpreter look installed.
_INSTALL_PROBE = """
import importlib.metadata, json, sys
try:
    dist = importlib.metadata.distribution(%r)
except importlib.metadata.PackageNotFoundError:
    print(%r + json.dumps(None))
    raise SystemExit(0)
print(%r + json.dumps({
    "version": dist.version,
    "console_scripts": {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"},
}))
""" % (DIST_NAME, RESULT_TAG, RESULT_TAG)


def _installed_dist(tmp_path: Path) -> dict:
    info = run_python(_INSTALL_PROBE, cwd=tmp_path)
    if info is None:
        pytest.fail(f"{DIST_NAME} is not installed in {sys.executable}: {_INSTALL_HINT}")
    return info


def test_editable_install_resolves_into_this_checkout(tmp_path: Path) -> None:
    dist = _installed_dist(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", "import lora_likeness, sys; print(lora_likeness.__file__)"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"import lora_likeness failed:\n{proc.stderr}\n{_INSTALL_HINT}"
    found = Path(proc.stdout.strip().splitlines()[-1]).resolve()
    assert found == CORE_INIT, (
        f"lora_likeness resolves to {found}, not into this checkout's core/ "
        f"(installed {dist['version']} from elsewhere, or not editable): {_INSTALL_HINT}"
    )

    assert dist["console_scripts"].get("likeness") == "lora_likeness.cli:main"
    exe = "likeness.exe" if os.name == "nt" else "likeness"
    script = Path(sys.executable).parent / exe
    assert script.is_file(), f"console script {script} missing: {_INSTALL_HINT}"


def test_import_is_light(tmp_path: Path) -> None:
    """``import lora_likeness`` and each of its modules, every one in a fresh interpreter.

    The node pack and the A1111 script import core modules when the host starts, so no module
    of the core may import onnxruntime, insightface, matplotlib or torch at module level.
    """
    _installed_dist(tmp_path)
    modules = ["lora_likeness"] + sorted(
        f"lora_likeness.{p.stem}" for p in CORE_INIT.parent.glob("*.py") if p.stem != "__init__"
    )
    heavy_by_module = {}
    for name in modules:
        code = (
            f"import json, sys, {name}\n"
            f"print({RESULT_TAG!r} + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True,
            text=True, timeout=120,
        )
        assert proc.returncode == 0, f"import {name} failed:\n{proc.stderr}"
        heavy = json.loads(proc.stdout.strip().splitlines()[-1][len(RESULT_TAG):])
        if heavy:
            heavy_by_module[name] = heavy
    assert heavy_by_module == {}, (
        f"imported at module level: {heavy_by_module}; import them inside the functions that use them"
    )


def test_no_other_folder_shadows_the_example_workflows():
    """ComfyUI serves the first of example_workflows/, example/, examples/, workflow/, workflows/ it finds in a
    node pack under one URL (app/custom_node_manager.py): another of those names would hide workflows/ (404)."""
    root = Path(__file__).resolve().parents[1]
    served_before = ("example_workflows", "example", "examples", "workflow")
    assert (root / "workflows").is_dir()
    assert [name for name in served_before if (root / name).exists()] == []


@pytest.mark.parametrize("folder", ["lora-likeness", "ComfyUI-Likeness"])
def test_the_suite_runs_from_a_checkout_folder_of_any_name(tmp_path: Path, folder: str) -> None:
    """pytest collects the checkout root as a package (it has an ``__init__.py``) and imports it; in a folder
    whose name is no identifier the root's relative imports used to fail every test of the suite."""
    checkout = tmp_path / folder
    shutil.copytree(REPO, checkout, ignore=_COPY_IGNORE)
    (checkout / "tests").mkdir()
    shutil.copy2(REPO / "tests" / "test_labels.py", checkout / "tests" / "test_labels.py")
    shutil.copy2(REPO / "tests" / "likeness_assets.py", checkout / "tests" / "likeness_assets.py")
    shutil.copy2(REPO / "tests" / "conftest.py", checkout / "tests" / "conftest.py")
    env = _clean_env()
    env["LIKENESS_SHARED"] = str(REPO.parent / "shared")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_labels.py"],
                            cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "error" not in result.stdout.lower()
