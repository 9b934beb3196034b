"""install.py and core/dependencies.py: the plan on synthetic environments, torch detection without
importing torch, and install.py end to end in throwaway venvs (plain, dry run, and through an
A1111-style ``launch`` module).

No test here installs anything from a package index: the throwaway venvs are made without pip and
hold hand-written ``*.dist-info`` folders, which is all ``importlib.metadata`` reads.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_PY = REPO / "install.py"


def _load_dependencies():
    # The way install.py loads it: by path, under its own name, before anything is installed.
    name = "lora_likeness_dependencies"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "core" / "dependencies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


deps = _load_dependencies()

# A host where everything fits: ComfyUI-like, CPU torch, ReActor's insightface 0.7.3.
SATISFIED = {
    "torch": "2.4.1+cpu",
    "numpy": "2.1.3",
    "Pillow": "10.4.0",
    "insightface": "0.7.3",
    "matplotlib": "3.9.2",
    "rich": "13.9.4",
    "scipy": "1.14.1",
    "onnxruntime": "1.19.2",
}


def facts(installed=None, *, torch="cpu", cuda=None, platform="linux", python=(3, 11, 7), drop=()):
    dists = dict(SATISFIED if installed is None else installed)
    for name in drop:
        dists.pop(name, None)
    return deps.Facts(python=python, platform=platform, installed=dists, torch=torch, torch_cuda=cuda)


def installs(actions):
    return [action for action in actions if action.kind == "install"]


def install_names(actions):
    return [deps.parse_requirement(text).key for action in installs(actions) for text in action.packages]


# --- pyproject ------------------------------------------------------------------------------------

def test_requirements_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert list(deps.REQUIREMENTS) == project["dependencies"]
    assert deps.REQUIRES_PYTHON == project["requires-python"]
    assert project["optional-dependencies"]["gpu"] == [deps.GPU_REQUIREMENT]
    assert {name: project["optional-dependencies"][name] for name in deps.EXTRAS} == {
        name: list(requirements) for name, requirements in deps.EXTRAS.items()
    }
    # onnxruntime is chosen by install.py, never listed (see pyproject's comment).
    listed = {deps.parse_requirement(text).key for text in project["dependencies"]}
    assert not listed & set(deps.ONNXRUNTIME_VARIANTS)
    assert "torch" not in listed


# --- versions -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "version, specifier, expected",
    [
        ("1.26.2", ">=1.26,<3", True),
        ("1.25.2", ">=1.26,<3", False),
        ("3.0.0", ">=1.26,<3", False),
        ("3.0.0rc1", ">=1.26,<3", False),  # "<3" admits no pre-release of 3
        ("2.0.0rc1", ">=1.26,<3", True),
        ("0.7.3", ">=0.7.3", True),
        ("0.7.2", ">=0.7.3", False),
        ("13", ">=13", True),
        ("12.6.0", ">=13", False),
        ("2.1.2+cu121", "==2.1.2", True),
        ("2.1.2+cu121", "==2.1.2+cpu", False),
        ("4.11.0.86", "<=4.11.0.86", True),
        ("4.12.0.88", "<=4.11.0.86", False),
        ("1.26.4", "==1.26.*", True),
        ("1.27.0", "==1.26.*", False),
        ("1.18.1", ">=1.17,<1.19", True),
        ("1.19.0", ">=1.17,<1.19", False),
        ("1.7.post1", ">1.7", False),
        ("2.2", "~=2.1", True),
        ("3.0", "~=2.1", False),
        ("1.0", "", True),
    ],
)
def test_satisfies(version, specifier, expected):
    assert deps.satisfies(version, specifier) is expected


def test_parse_requirement_styles():
    assert deps.parse_requirement("numpy>=1.26,<3") == deps.Requirement("numpy", ">=1.26,<3", None, "numpy>=1.26,<3")
    old_style = deps.parse_requirement("onnx (>=1.13)")
    assert (old_style.key, old_style.specifier) == ("onnx", ">=1.13")
    marked = deps.parse_requirement('scikit-learn; extra == "gui"')
    assert (marked.key, marked.specifier, marked.marker) == ("scikit-learn", "", 'extra == "gui"')
    assert deps.parse_requirement("onnxruntime_gpu==1.17.1").key == "onnxruntime-gpu"


# --- plan: onnxruntime ------------------------------------------------------------------------------

def test_cuda_torch_wants_onnxruntime_gpu():
    actions = deps.plan(facts(torch="cuda", cuda="12.1", drop=["onnxruntime"]))
    assert [a.kind for a in actions] == ["install"]
    assert actions[0].packages == ("onnxruntime-gpu>=1.17",)
    assert "CUDA 12.1" in actions[0].reason


def test_cuda11_torch_gets_an_onnxruntime_gpu_built_for_cuda11():
    actions = deps.plan(facts(torch="cuda", cuda="11.8", drop=["onnxruntime"]))
    assert actions[0].packages == ("onnxruntime-gpu>=1.17,<1.19",)


def test_cpu_torch_wants_onnxruntime():
    actions = deps.plan(facts(torch="cpu", drop=["onnxruntime"]))
    assert [a.kind for a in actions] == ["install"]
    assert actions[0].packages == ("onnxruntime",)


def test_no_torch_and_macos_want_the_cpu_build():
    assert deps.want_onnxruntime(facts(torch=None)).name == "onnxruntime"
    assert deps.want_onnxruntime(facts(torch=None, platform="darwin")).name == "onnxruntime"
    # onnxruntime-gpu has no macOS build: --gpu there still means the standard (CoreML) build.
    assert deps.want_onnxruntime(facts(platform="darwin"), prefer="gpu").name == "onnxruntime"
    assert deps.want_onnxruntime(facts(torch="rocm")).name == "onnxruntime"


@pytest.mark.parametrize("torch, wanted", [("cuda", "onnxruntime-gpu==1.18.1"), ("cpu", "onnxruntime==1.19.2")])
def test_clash_uninstalls_every_variant_then_installs_the_wanted_one(torch, wanted):
    installed = {**SATISFIED, "onnxruntime": "1.19.2", "onnxruntime-gpu": "1.18.1"}
    actions = deps.plan(facts(installed, torch=torch, cuda="12.1" if torch == "cuda" else None))
    assert [a.kind for a in actions] == ["uninstall", "install"]
    assert set(actions[0].packages) == {"onnxruntime", "onnxruntime-gpu"}
    assert "clash" in actions[0].reason
    # The wanted variant comes back at the version the host had.
    assert actions[1].packages == (wanted,)
    assert deps.onnxruntime_variants(installed) == ({"onnxruntime": "1.19.2", "onnxruntime-gpu": "1.18.1"}, True)


def test_a_working_variant_is_kept_unless_a_switch_is_asked_for():
    installed = {**facts(drop=["onnxruntime"]).installed, "onnxruntime-gpu": "1.18.1"}
    kept = deps.plan(facts(installed, torch="cpu"))
    assert [a.kind for a in kept] == ["note", "nothing"]
    assert "--fix-onnxruntime" in kept[0].reason
    switched = deps.plan(facts(installed, torch="cpu"), fix_onnxruntime=True)
    assert [(a.kind, a.packages) for a in switched] == [("uninstall", ("onnxruntime-gpu",)), ("install", ("onnxruntime",))]
    asked = deps.plan(facts(torch="cpu"), prefer="gpu")
    assert [(a.kind, a.packages) for a in asked] == [("uninstall", ("onnxruntime",)), ("install", ("onnxruntime-gpu>=1.17",))]


def test_windows_without_cuda_keeps_directml_even_through_a_clash_repair():
    alone = {**SATISFIED, "onnxruntime-directml": "1.19.0"}
    del alone["onnxruntime"]
    assert [a.kind for a in deps.plan(facts(alone, platform="win32"))] == ["nothing"]
    clash = {**alone, "onnxruntime": "1.19.2"}
    actions = deps.plan(facts(clash, platform="win32"))
    assert set(actions[0].packages) == {"onnxruntime", "onnxruntime-directml"}
    assert actions[1].packages == ("onnxruntime-directml==1.19.0",)
    # On Linux the same pair is repaired to the CPU build (DirectML is Windows only).
    assert deps.plan(facts(clash, platform="linux"))[1].packages == ("onnxruntime==1.19.2",)


# --- plan: host pins, cv2, insightface ------------------------------------------------------------

def test_numpy1_host_pins_numpy_and_keeps_opencv_at_4_11():
    # A1111 1.10: numpy 1.26.2, protobuf 3.20.0; insightface not installed yet.
    installed = {**SATISFIED, "numpy": "1.26.2", "protobuf": "3.20.0", "torch": "2.1.2+cu121"}
    del installed["insightface"]
    actions = deps.plan(facts(installed, torch="cuda", cuda="12.1"))
    (install,) = [a for a in installs(actions) if not a.no_deps]
    assert "numpy==1.26.2" in install.constraints
    assert "protobuf==3.20.0" in install.constraints
    assert "torch==2.1.2+cu121" in install.constraints
    assert "opencv-python<=4.11.0.86" in install.constraints
    assert "numpy" not in install_names(actions)  # 1.26.2 already fits
    assert deps.host_constraints({"numpy": "2.1.3"}) == ["numpy==2.1.3"]


def test_opencv_headless_host_gets_insightface_with_no_deps_and_no_opencv_python():
    installed = {**SATISFIED, "opencv-python-headless": "4.10.0.84"}
    del installed["insightface"]
    actions = deps.plan(facts(installed))
    (only,) = installs(actions)
    assert only.no_deps is True
    assert only.packages == ("insightface>=0.7.3,<3",)
    assert "opencv-python" in only.exclude
    assert "opencv-python-headless==4.10.0.84" in only.constraints
    assert "opencv-python" not in install_names(actions)
    assert "--no-deps" in deps.pip_arguments(only, "c.txt")
    assert "opencv-python-headless" in only.reason


def test_opencv_python_host_installs_insightface_normally_under_its_pin():
    # opencv-python itself installed: the constraint holds it, pip makes no second cv2.
    installed = {**SATISFIED, "opencv-python": "4.11.0.86", "numpy": "1.26.2"}
    del installed["insightface"]
    (install,) = installs(deps.plan(facts(installed)))
    assert install.no_deps is False
    assert install.packages == ("insightface>=0.7.3,<3",)
    assert "opencv-python==4.11.0.86" in install.constraints
    assert "opencv-python<=4.11.0.86" not in install.constraints


def test_gpu_onnxruntime_host_gets_insightface_without_the_cpu_onnxruntime():
    installed = {**SATISFIED, "onnxruntime-gpu": "1.18.1"}
    del installed["onnxruntime"], installed["insightface"]
    (install,) = installs(deps.plan(facts(installed, torch="cuda", cuda="12.1")))
    assert install.no_deps and install.exclude == ("onnxruntime",)


def test_everything_satisfied_means_nothing_to_do():
    actions = deps.plan(facts())
    assert [a.kind for a in actions] == ["nothing"]
    assert not any(a.changes for a in actions)
    # ReActor's insightface 0.7.3 fits insightface>=0.7.3: it is neither upgraded nor reinstalled.
    assert "insightface" not in install_names(deps.plan(facts(drop=["rich"])))
    assert install_names(deps.plan(facts(drop=["rich"]))) == ["rich"]


def test_what_cannot_fit_the_host_is_reported_not_forced():
    old_numpy = deps.plan(facts({**SATISFIED, "numpy": "1.24.4"}))
    assert [a.kind for a in old_numpy] == ["blocked"]
    assert "numpy>=1.26,<3" in old_numpy[0].reason and "1.24.4" in old_numpy[0].reason
    old_pillow = deps.plan(facts({**SATISFIED, "Pillow": "9.0.1"}))
    assert [a.kind for a in old_pillow] == ["blocked"]
    py313 = deps.plan(facts(python=(3, 13, 0), drop=["insightface"]))
    assert [a.kind for a in py313] == ["blocked"]
    assert "3.13" in py313[0].reason
    # Nothing to install on 3.13: said, but nothing blocked.
    assert [a.kind for a in deps.plan(facts(python=(3, 13, 0)))] == ["note", "nothing"]


def test_torch_is_never_installed_or_uninstalled():
    variants = [
        {},
        {"onnxruntime": "1.19.2"},
        {"onnxruntime-gpu": "1.18.1"},
        {"onnxruntime": "1.19.2", "onnxruntime-gpu": "1.18.1"},
        {"onnxruntime-directml": "1.19.0", "onnxruntime": "1.19.2"},
    ]
    extras = [{}, {"opencv-python-headless": "4.10.0.84"}, {"opencv-python": "4.11.0.86"}]
    bases = [
        {"torch": "2.1.2+cu121", "torchvision": "0.16.2+cu121", "numpy": "1.26.2"},
        {"torch": "2.4.1+cpu", "numpy": "2.1.3", "Pillow": "10.4.0", "insightface": "0.7.3"},
        {},
    ]
    seen = 0
    for ort, extra, base, kind, platform, prefer, fix in itertools.product(
        variants, extras, bases, ["cuda", "cpu", "rocm", None], ["linux", "win32", "darwin"], [None, "gpu", "cpu"], [False, True]
    ):
        actions = deps.plan(facts({**base, **ort, **extra}, torch=kind, platform=platform), prefer=prefer, fix_onnxruntime=fix)
        for action in actions:
            if action.changes:
                seen += 1
                names = {deps.parse_requirement(text).key for text in action.packages} | set(action.exclude)
                assert not names & {"torch", "torchvision", "torchaudio"}, action
                assert not (action.kind == "install" and not action.packages)
    assert seen > 100


def test_pip_report_helpers_drop_excluded_and_torch():
    report = {
        "install": [
            {"metadata": {"name": "insightface", "version": "1.0.1"}, "download_info": {"url": "https://x/insightface-1.0.1-py3-none-any.whl"}},
            {"metadata": {"name": "opencv-python", "version": "4.11.0.86"}, "download_info": {"url": "https://x/opencv.whl"}},
            {"metadata": {"name": "onnxruntime", "version": "1.26.0"}, "download_info": {"url": "https://x/ort.whl"}},
            {"metadata": {"name": "torch", "version": "2.5.0"}, "download_info": {"url": "https://x/torch.whl"}},
            {"metadata": {"name": "onnx", "version": "1.12.0"}, "download_info": {"url": "https://x/onnx-1.12.0.tar.gz"}},
        ]
    }
    pins = deps.report_installs(report, exclude=("opencv-python", "onnxruntime"))
    assert pins == ["insightface==1.0.1", "onnx==1.12.0"]
    assert deps.report_source_builds(report) == ["onnx==1.12.0"]
    assert deps.insightface_fallback_requirements(("opencv-python", "onnxruntime")) == list(
        deps.INSIGHTFACE_FALLBACK_REQUIREMENTS
    )


def test_unmet_declared_requirements_accept_our_substitutes():
    declared = ["numpy", "onnx>=1.13", "onnxruntime", "opencv-python", "tqdm", 'Pillow>=9.1; extra == "gui"']
    env = {"numpy": "1.26.2", "onnx": "1.16.0", "onnxruntime-gpu": "1.18.1", "opencv-python-headless": "4.10.0.84", "tqdm": "4.66"}
    assert deps.unmet_declared_requirements(declared, env) == []
    assert deps.unmet_declared_requirements(declared, {**env, "onnx": "1.12.0"}) == ["onnx>=1.13 (have 1.12.0)"]
    missing_ort = {k: v for k, v in env.items() if k != "onnxruntime-gpu"}
    assert deps.unmet_declared_requirements(declared, missing_ort) == ["onnxruntime (not installed)"]


# --- torch detection --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "version, expected",
    [
        ("2.1.2+cu121", ("cuda", "12.1")),
        ("2.0.1+cu118", ("cuda", "11.8")),
        ("2.7.0+cu128", ("cuda", "12.8")),
        ("2.2.0+cpu", ("cpu", None)),
        ("2.1.0+cpu.cxx11.abi", ("cpu", None)),
        ("2.3.1+rocm6.0", ("rocm", None)),
        ("2.5.1", (None, None)),  # PyPI wheels carry no label: version.py decides
    ],
)
def test_torch_kind_from_version_label(version, expected):
    assert deps.torch_kind_from_version(version) == expected


def _fake_torch(site: Path, version: str, version_py: str | None) -> Path:
    dist = site / f"torch-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n", encoding="utf-8")
    if version_py is not None:
        (site / "torch").mkdir()
        (site / "torch" / "__init__.py").write_text("raise RuntimeError('torch must not be imported')\n", encoding="utf-8")
        (site / "torch" / "version.py").write_text(version_py, encoding="utf-8")
    return site


@pytest.mark.parametrize(
    "version, version_py, expected",
    [
        # torch 2.8 style (typed) and torch 2.0 style (plain assignments)
        ("2.8.0", "from typing import Optional\n__version__ = '2.8.0'\ncuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n", ("cuda", "12.8")),
        ("2.8.0", "from typing import Optional\n__version__ = '2.8.0'\ncuda: Optional[str] = None\nhip: Optional[str] = None\n", ("cpu", None)),
        ("2.0.1", "__version__ = '2.0.1'\ndebug = False\ncuda = None\ngit_version = 'e9ebda2'\nhip = None\n", ("cpu", None)),
        ("2.0.1", "__version__ = '2.0.1'\ncuda = '11.7'\nhip = None\n", ("cuda", "11.7")),
        ("2.3.1", "__version__ = '2.3.1'\ncuda: Optional[str] = None\nhip: Optional[str] = '6.0.32830'\n", ("rocm", None)),
        ("2.1.2+cu121", None, ("cuda", "12.1")),  # the label is enough; version.py is not read
        ("2.5.1", None, ("unknown", None)),  # installed, but nothing tells
    ],
)
def test_detect_torch_in_a_fake_site_dir(tmp_path, version, version_py, expected):
    site = _fake_torch(tmp_path / "site", version, version_py)
    assert deps.detect_torch([str(site)]) == expected
    assert deps.torch_kind([str(site)]) == expected[0]


def test_detect_torch_absent(tmp_path):
    (tmp_path / "empty").mkdir()
    assert deps.detect_torch([str(tmp_path / "empty")]) == (None, None)
    assert deps.torch_kind([str(tmp_path / "empty")]) is None


def test_detecting_the_real_torch_does_not_import_it():
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("d", {str(REPO / "core" / "dependencies.py")!r})
        module = importlib.util.module_from_spec(spec); sys.modules["d"] = module; spec.loader.exec_module(module)
        facts = module.gather_facts()
        heavy = [m for m in ("torch", "numpy", "onnxruntime", "insightface", "cv2") if m in sys.modules]
        print(facts.torch, heavy)
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- install.py end to end in throwaway venvs ---------------------------------------------------------

def _venv(path: Path) -> tuple[Path, Path]:
    """A clean venv without pip (nothing may be installed from an index here) -> (python, site)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()
    return python, Path(site)


def _fake_dist(site: Path, name: str, version: str) -> None:
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")


def _dists(site: Path) -> set[str]:
    return {entry.name for entry in site.glob("*.dist-info")}


def _run_install(python: Path, *args: str, env_extra: dict | None = None, cwd: Path | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(env_extra or {})
    return subprocess.run(
        [str(python), str(INSTALL_PY), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_install_dry_run_reports_the_clash_and_plans_the_repair(tmp_path):
    python, site = _venv(tmp_path / "venv")
    _fake_dist(site, "onnxruntime", "1.0")
    _fake_dist(site, "onnxruntime-gpu", "1.0")
    _fake_dist(site, "torch", "2.1.2+cu121")
    before = _dists(site)

    result = _run_install(python, "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("[Likeness] ") for line in lines), result.stdout
    assert "torch: cuda 12.1" in lines[0]
    uninstall = [line for line in lines if line.startswith("[Likeness] uninstall ")]
    assert len(uninstall) == 1 and "onnxruntime, onnxruntime-gpu" in uninstall[0] and "clash" in uninstall[0]
    install = [line for line in lines if line.startswith("[Likeness] install ")]
    # The wanted variant (CUDA torch -> onnxruntime-gpu) comes back after the uninstall...
    assert lines.index(uninstall[0]) < lines.index(install[0])
    assert "onnxruntime-gpu==1.0" in install[0]
    # ...and insightface cannot bring the CPU onnxruntime back: --no-deps, leaving it out.
    assert any("insightface>=0.7.3,<3 with --no-deps" in line and "leaving out onnxruntime" in line for line in install)
    # What the actions work on (before the reason) never names torch.
    assert not any("torch" in line.split(": ", 1)[0] for line in install + uninstall)
    assert _dists(site) == before  # a dry run changes nothing


FAKE_LAUNCH = '''
"""Stand-in for A1111's launch.py, only for this test: the real one (modules/launch_utils.py) is
A1111 itself, and importing it needs A1111's whole checkout. It keeps the real signatures of
is_installed / run_pip / run, records every call into LIKENESS_FAKE_LAUNCH_LOG, and does to the
venv's dist-info folders what pip would do, so install.py's verification sees the result."""
import importlib.metadata, json, os, re, shlex, sys, sysconfig, types
from pathlib import Path

python = sys.executable
args = types.SimpleNamespace(skip_install=False)
SITE = Path(sysconfig.get_paths()["purelib"])


def _log(**entry):
    with open(os.environ["LIKENESS_FAKE_LAUNCH_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\\n")


def _canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def is_installed(package):
    _log(call="is_installed", package=package)
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def run_pip(command, desc=None, live=False):
    tokens = shlex.split(command)
    constraints = None
    if "-c" in tokens:
        constraints = Path(tokens[tokens.index("-c") + 1]).read_text(encoding="utf-8").split()
    _log(call="run_pip", command=command, desc=desc, constraints=constraints)
    if os.environ.get("LIKENESS_FAKE_LAUNCH_FAIL"):
        raise RuntimeError(f"Couldn't install {desc}.\\nCommand: pip {command}\\nError code: 1")
    for token in tokens:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\\S+)", token)
        if match and tokens[0] == "install":
            dist = SITE / f"{match[1].replace('-', '_')}-{match[2]}.dist-info"
            dist.mkdir()
            (dist / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: {match[1]}\\nVersion: {match[2]}\\n")
    return ""


def run(command, desc=None, errdesc=None, custom_env=None, live=False):
    tokens = shlex.split(command)
    _log(call="run", command=command, desc=desc)
    if tokens[1:5] == ["-m", "pip", "uninstall", "-y"]:
        for name in tokens[5:]:
            for dist in SITE.glob("*.dist-info"):
                if _canon(dist.name.split("-")[0]) == _canon(name):
                    for f in dist.iterdir():
                        f.unlink()
                    dist.rmdir()
    return ""
'''


def _a1111_venv(tmp_path: Path):
    python, site = _venv(tmp_path / "venv")
    for name, version in {
        **SATISFIED,
        "numpy": "1.26.2",
        "torch": "2.1.2+cu121",
        "onnxruntime": "1.16.3",
        "onnxruntime-gpu": "1.17.1",
    }.items():
        _fake_dist(site, name, version)
    webui = tmp_path / "webui"
    webui.mkdir()
    (webui / "launch.py").write_text(FAKE_LAUNCH, encoding="utf-8")
    log = tmp_path / "launch-calls.jsonl"
    # As A1111's run_extension_installer: PYTHONPATH = the webui root, cwd = the webui root.
    env = {"PYTHONPATH": str(webui), "LIKENESS_FAKE_LAUNCH_LOG": str(log)}
    return python, site, webui, log, env


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def test_install_under_a1111_goes_through_launch_run_pip(tmp_path):
    python, site, webui, log, env = _a1111_venv(tmp_path)
    result = _run_install(python, env_extra=env, cwd=webui)
    # The venv has no pip at all: had install.py run `python -m pip` itself, it would have failed.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "via A1111's launch.run_pip" in result.stdout
    calls = _calls(log)
    uninstalls = [c for c in calls if c["call"] == "run"]
    assert len(uninstalls) == 1
    assert uninstalls[0]["command"].endswith("-m pip uninstall -y onnxruntime onnxruntime-gpu")
    pips = [c for c in calls if c["call"] == "run_pip"]
    assert len(pips) == 1
    assert pips[0]["command"].startswith("install -c ") and pips[0]["command"].endswith(" onnxruntime-gpu==1.17.1")
    assert "--prefer-binary" not in pips[0]["command"]  # A1111's run_pip adds it itself
    assert {"torch==2.1.2+cu121", "numpy==1.26.2", "Pillow==10.4.0", "opencv-python<=4.11.0.86"} <= set(pips[0]["constraints"])
    tokens = pips[0]["command"].split()
    del tokens[tokens.index("-c") + 1]  # the constraints file's path
    assert not any("torch" in token for token in tokens)
    assert {"call": "is_installed", "package": "onnxruntime-gpu"} in calls
    # What pip would have left: only the GPU build.
    assert not any(name.startswith("onnxruntime-") for name in _dists(site))
    assert "onnxruntime_gpu-1.17.1.dist-info" in _dists(site)
    assert "[Likeness] done" in result.stdout


def test_install_under_a1111_reports_a_pip_failure(tmp_path):
    python, site, webui, log, env = _a1111_venv(tmp_path)
    result = _run_install(python, env_extra={**env, "LIKENESS_FAKE_LAUNCH_FAIL": "1"}, cwd=webui)
    assert result.returncode == 1
    assert "[Likeness] ERROR: pip failed" in result.stderr
    assert "onnxruntime-gpu==1.17.1" in result.stderr


def test_install_without_a1111_runs_this_interpreters_pip_and_fails_clearly(tmp_path):
    python, site = _venv(tmp_path / "venv")  # no pip in it: `python -m pip` must fail at once
    _fake_dist(site, "torch", "2.4.1+cpu")
    result = _run_install(python, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"via pip of {python}" in result.stdout
    assert "No module named pip" in result.stderr
    assert "[Likeness] ERROR: pip failed, stopping here" in result.stderr
    assert f"{python} -m pip install" in result.stderr


def test_install_refuses_what_cannot_fit_and_changes_nothing(tmp_path):
    python, site = _venv(tmp_path / "venv")
    _fake_dist(site, "numpy", "1.24.4")  # older than Likeness's numpy>=1.26, and the host's
    before = _dists(site)
    result = _run_install(python, cwd=tmp_path)
    assert result.returncode == 2
    assert "[Likeness] ERROR: cannot install: Likeness needs numpy>=1.26,<3, but numpy 1.24.4" in result.stderr
    assert _dists(site) == before


def test_dry_run_in_the_project_venv_touches_nothing_and_imports_nothing_heavy():
    freeze = [sys.executable, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"]
    before = subprocess.run(freeze, capture_output=True, text=True, check=True, timeout=60).stdout
    code = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = [{str(INSTALL_PY)!r}, "--dry-run"]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as exit:
            code = exit.code
        heavy = [m for m in ("lora_likeness", "torch", "numpy", "onnxruntime", "insightface") if m in sys.modules]
        assert code == 0, code
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[Likeness] dry run: nothing will be changed" in result.stdout
    after = subprocess.run(freeze, capture_output=True, text=True, check=True, timeout=60).stdout
    assert after == before


# --- A1111 1.10 on Python 3.11: protobuf 3.20.0 leaves no onnx wheel ---------------------------------

def _load_install_py():
    spec = importlib.util.spec_from_file_location("likeness_install_py", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


A1111_110 = {"torch": "2.1.2+cu121", "numpy": "1.26.2", "Pillow": "9.5.0", "protobuf": "3.20.0",
             "transformers": "4.30.2", "opencv-python": "4.11.0.86", "matplotlib": "3.9.2"}


@pytest.mark.parametrize(
    "python, extra, blocked",
    [
        ((3, 11, 7), {}, True),                      # A1111 1.10 as it is, on Python 3.11
        ((3, 10, 6), {}, False),                     # A1111's recommended Python: onnx 1.12 has wheels
        ((3, 11, 7), {"protobuf": "3.20.3"}, False),  # the user allowed the bug-fix release
        ((3, 11, 7), {"onnx": "1.14.1"}, False),      # onnx is already there (another extension)
        ((3, 11, 7), {"insightface": "0.7.3", "onnx": "1.14.1", "rich": "13.9.4", "onnxruntime-gpu": "1.17.1"}, False),
    ],
    ids=["py311", "py310", "protobuf-3.20.3", "onnx-present", "nothing-to-install"],
)
def test_protobuf_pin_that_leaves_no_onnx_wheel_is_named_before_pip_runs(python, extra, blocked):
    install = _load_install_py()
    environment = facts({**A1111_110, **extra}, torch="cuda", cuda="12.1", python=python)
    message = install.protobuf_blocker(deps, environment, deps.plan(environment))
    if not blocked:
        assert message is None
        return
    assert "protobuf>=3.20.2" in message and "protobuf is 3.20.0" in message
    assert "Python 3.10" in message and "-m pip install protobuf==3.20.3" in message


def test_install_under_a1111_on_python311_refuses_before_pip_and_changes_nothing(tmp_path):
    python, site = _venv(tmp_path / "venv")  # this interpreter's version: 3.11 in CI
    if sys.version_info[:2] < (3, 11):
        pytest.fail("this test needs Python 3.11+ (the case it covers); CI runs 3.11")
    for name, version in {**A1111_110, "torch": "2.13.0+cpu"}.items():
        _fake_dist(site, name, version)
    webui = tmp_path / "webui"
    webui.mkdir()
    (webui / "launch.py").write_text(FAKE_LAUNCH, encoding="utf-8")
    log = tmp_path / "launch-calls.jsonl"
    before = _dists(site)
    result = _run_install(python, env_extra={"PYTHONPATH": str(webui), "LIKENESS_FAKE_LAUNCH_LOG": str(log)}, cwd=webui)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "[Likeness] ERROR: cannot install: insightface needs onnx" in result.stderr
    assert "protobuf is 3.20.0" in result.stderr and "nothing was changed" in result.stderr
    assert [c for c in _calls(log) if c["call"] in ("run_pip", "run")] == []  # pip never ran
    assert _dists(site) == before


def test_newer_than_tested_is_noted_and_left_alone_never_downgraded():
    # A host (or another extension) with a newer release than Likeness is tested with keeps it: install.py
    # says so and still installs what is missing, instead of refusing everything or downgrading.
    newer = deps.plan(facts({**SATISFIED, "Pillow": "14.0.0", "insightface": "3.0.1"}, drop=["rich"]))
    assert [a.kind for a in newer] == ["note", "note", "install"]
    assert "Pillow 14.0.0 is newer than Likeness is tested with (Pillow>=9.5,<14)" in newer[0].reason
    assert "insightface 3.0.1" in newer[1].reason
    assert install_names(newer) == ["rich"]


# --- the extras' tested ranges ------------------------------------------------------------------------

# 2026-12-06: a fresh `pip install -e ".[test]"` resolved these (the README's first command).
FRESH_TRAINING_STACK = {**SATISFIED, "torch": "2.13.0+cpu", "diffusers": "0.42.1", "transformers": "5.25.0",
                        "peft": "0.21.2", "safetensors": "0.8.0", "pytest": "9.2.0", "jsonschema": "4.26.0",
                        "pathspec": "1.1.1"}


def test_the_fresh_install_of_today_is_inside_the_tested_ranges():
    assert deps.extra_findings(("train", "test"), FRESH_TRAINING_STACK, python=(3, 11, 7)) == []


def test_a_package_outside_the_tested_range_is_named_with_the_range_and_the_extra():
    stack = {**FRESH_TRAINING_STACK, "peft": "1.0.0", "transformers": "4.30.2"}  # A1111 1.10 pins transformers 4.30.2
    findings = deps.extra_findings(("train", "test"), stack, python=(3, 11, 7))
    assert [f.message() for f in findings] == [
        "transformers 4.30.2 is outside the tested range >=4.35.2,<6 of lora-likeness[train]",
        "peft 1.0.0 is outside the tested range >=0.13,<1 of lora-likeness[train]",
    ]
    no_pytest = {k: v for k, v in FRESH_TRAINING_STACK.items() if k != "pytest"}
    (finding,) = deps.extra_findings(("test",), no_pytest, python=(3, 11, 7))
    assert finding.missing and finding.message() == "pytest is not installed (lora-likeness[test] needs pytest>=7.4,<10)"
    assert deps.extra_findings(("test",), no_pytest, python=(3, 11, 7), include_missing=False) == []


def test_tomli_is_required_only_below_python_311():
    assert [f.name for f in deps.extra_findings(("train",), FRESH_TRAINING_STACK, python=(3, 10, 14))] == ["tomli"]
    assert deps.extra_findings(("train",), FRESH_TRAINING_STACK, python=(3, 11, 0)) == []
    assert deps.marker_applies("python_version < '3.11'", (3, 10, 14)) is True
    assert deps.marker_applies("python_version < '3.11'", (3, 12, 1)) is False
    assert deps.marker_applies("python_version >= '3.10' and python_version < '3.11'", (3, 10, 0)) is True
    assert deps.marker_applies('sys_platform == "win32"', (3, 11, 0)) is True  # not evaluated: checked, not ignored


def test_the_test_extra_includes_the_train_extra_once():
    names = [(extra, req.key) for extra, req in deps.extra_requirements("test", python=(3, 10, 0))]
    assert names == [("test", "pytest"), ("test", "jsonschema"), ("test", "safetensors"), ("test", "pathspec"), ("train", "diffusers"),
                     ("train", "transformers"), ("train", "peft"), ("train", "tomli")]


def test_the_conflict_message_names_the_import_error_the_packages_outside_and_the_fix():
    stack = {**FRESH_TRAINING_STACK, "peft": "1.2.0"}
    message = deps.training_stack_conflict("ImportError: cannot import name 'X' from 'transformers'", stack, (3, 11, 7))
    assert message.startswith("The training stack (diffusers, transformers, peft) failed to import: ImportError: cannot import name 'X'")
    assert "peft 1.2.0 is outside the tested range >=0.13,<1 of lora-likeness[train]" in message
    assert 'pip install "diffusers>=0.28,<0.43" "transformers>=4.35.2,<6" "peft>=0.13,<1" "safetensors>=0.4,<1"' in message
    inside = deps.training_stack_conflict("ImportError: boom", FRESH_TRAINING_STACK, (3, 11, 7))
    assert "Installed: torch 2.13.0+cpu, diffusers 0.42.1, transformers 5.25.0, peft 0.21.2, safetensors 0.8.0" in inside
    assert "Every version of lora-likeness[train] is inside the tested ranges: this combination is untested" in inside
    # What the installed packages declare and do not get is named too (pip check's view).
    requires = {"peft": ["transformers", "accelerate>=0.21.0", 'pytest; extra == "test"'], "diffusers": ["huggingface-hub>=0.20.2"]}
    disagree = deps.training_stack_conflict(
        "ImportError: boom", {**FRESH_TRAINING_STACK, "accelerate": "0.20.3", "huggingface-hub": "0.25.2"}, (3, 11, 7),
        requires_of=lambda name: requires.get(name, []),
    )
    assert "Installed packages disagree: peft 0.21.2 needs accelerate>=0.21.0 (have 0.20.3)." in disagree


# --- the CLI names a broken training stack instead of an ImportError traceback ---------------------------

@pytest.fixture()
def broken_peft(monkeypatch):
    """peft fails to import the way a release that transformers refuses would (None in sys.modules makes
    `import peft` raise ImportError); only peft is probed, so the test does not import diffusers."""
    from lora_likeness.training import stack

    monkeypatch.setattr(stack, "ENTRY_POINTS", (("peft", ("LoraConfig", "inject_adapter_in_model")),))
    monkeypatch.setitem(sys.modules, "peft", None)
    return stack


def _cli(capsys, *argv):
    from lora_likeness.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())  # rich wraps long lines


def test_likeness_train_names_the_broken_training_stack(broken_peft, capsys, tmp_path):
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"not a model: the stack must be checked before the base is read")
    (tmp_path / "data").mkdir()
    code, text = _cli(capsys, "train", "--base", str(base), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "-q")
    assert code == 2
    assert ("The training stack (diffusers, transformers, peft) failed to import: from peft import LoraConfig, "
            "inject_adapter_in_model: ModuleNotFoundError: import of peft halted") in text
    assert 'pip install "diffusers>=0.28,<0.43"' in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_likeness_sweep_and_run_name_the_broken_training_stack_before_any_work(broken_peft, capsys, tmp_path):
    for name in ("base.safetensors", "loras", "refs", "photos"):
        (tmp_path / name).mkdir()
    from safetensors.numpy import save_file  # a LoRA to sweep: --loras is checked (headers only) before the stack

    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": np.zeros((4, 320), np.float32)},
              str(tmp_path / "loras" / "me.safetensors"), metadata={"ss_epoch": "1"})
    code, text = _cli(capsys, "sweep", "--base", str(tmp_path / "base.safetensors"), "--loras", str(tmp_path / "loras"),
                      "--refs", str(tmp_path / "refs"), "--prompt", "photo of ohwx man", "--out", str(tmp_path / "sweep"), "-q")
    assert code == 2 and "failed to import: from peft import" in text and "Install tested versions" in text
    assert not (tmp_path / "sweep").exists()
    code, text = _cli(capsys, "run", "--photos", str(tmp_path / "photos"), "--trigger", "ohwx", "--class", "man",
                      "--base", str(tmp_path / "base.safetensors"), "--out", str(tmp_path / "run"), "-q")
    assert code == 2 and "failed to import: from peft import" in text and "Install tested versions" in text
    assert not (tmp_path / "run").exists()  # the dataset was not prepared first


def test_an_import_error_deep_in_training_is_named_too(monkeypatch, capsys, tmp_path):
    from lora_likeness.training import stack, trainer

    def train_lora(*args, **kwargs):
        raise ImportError("cannot import name 'FancyAttnProcessor' from 'diffusers.models.attention_processor'")

    monkeypatch.setattr(stack, "ENTRY_POINTS", ())
    monkeypatch.setattr(trainer, "train_lora", train_lora)
    (tmp_path / "data").mkdir()
    code, text = _cli(capsys, "train", "--base", str(tmp_path / "b.safetensors"), "--data", str(tmp_path / "data"),
                      "--out", str(tmp_path / "out"), "-q")
    assert code == 2
    assert "failed to import: ImportError: cannot import name 'FancyAttnProcessor'" in text and "Traceback" not in text


def test_doctor_reports_the_training_stack_against_its_tested_ranges(broken_peft, capsys, monkeypatch):
    from lora_likeness import dependencies

    installed = {**FRESH_TRAINING_STACK, "peft": "1.3.0"}
    monkeypatch.setattr(dependencies, "installed_distributions", lambda paths=None: dict(installed))
    code, text = _cli(capsys, "doctor", "--pack", "no-such-pack")
    assert code == 1
    assert "peft 1.3.0 >=0.13,<1 OUTSIDE the tested range" in text
    assert "diffusers 0.42.1 >=0.28,<0.43 ok" in text
    assert "PROBLEM: The training stack (diffusers, transformers, peft) failed to import: from peft import" in text
    assert "peft 1.3.0 is outside the tested range >=0.13,<1 of lora-likeness[train]" in text


# --- the test session: untested versions warn, a stack that does not import stops it --------------------

def _pytest_with(tmp_path, site: Path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_test_session_warns_about_untested_versions_at_the_start_and_under_the_results(tmp_path):
    site = tmp_path / "site"
    _fake_dist(site, "peft", "9.0.0")  # first on sys.path: what importlib.metadata reports
    result = _pytest_with(tmp_path, site, "tests/test_labels.py", "-k", "kohya")
    lines = result.stdout.splitlines()
    warnings = [i for i, line in enumerate(lines) if line.startswith("WARNING: untested versions")]
    assert result.returncode == 0, result.stdout + result.stderr
    # first line of the session, and again after the tests ran (next to the results)
    assert len(warnings) == 2 and warnings[0] == 0 and "[100%]" in " ".join(lines[warnings[0]:warnings[1]]), result.stdout
    assert "peft 9.0.0 is outside the tested range >=0.13,<1 of lora-likeness[train]" in lines[0]


def test_a_training_stack_that_does_not_import_stops_the_session_with_the_conflict(tmp_path):
    # A torch that is installed but broken (a CUDA build without its libraries): importorskip used to
    # skip every training test and let the session pass.
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text('raise ImportError("libtorch_cuda.so: cannot open shared object file")\n')
    result = _pytest_with(tmp_path, site, "tests/test_sweep_run.py", "tests/test_labels.py", "-k", "kohya or run")
    out = " ".join(result.stdout.split())
    assert result.returncode == 2, result.stdout + result.stderr
    assert ("The training stack (diffusers, transformers, peft) failed to import: import torch: ImportError: "
            "libtorch_cuda.so: cannot open shared object file") in out
    assert "Install tested versions with: pip install" in out
    assert "Interrupted: 1 error during collection" in out and " passed" not in out


def test_the_import_failure_names_the_real_error_under_a_wrapper(tmp_path, monkeypatch):
    # diffusers 0.37.1 + peft 0.21.2 beside A1111's accelerate 0.21.0: diffusers' lazy import wraps the
    # ImportError in "RuntimeError: Failed to import diffusers.loaders.peft ... (look up to see its traceback)".
    from lora_likeness.training import stack

    (tmp_path / "likeness_fake_diffusers.py").write_text(textwrap.dedent("""
        try:
            from likeness_no_such_module import clear_device_cache
        except ImportError as error:
            raise RuntimeError("Failed to import diffusers.loaders.peft because of the following error "
                               "(look up to see its traceback):\\nno clear_device_cache") from error
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(stack, "ENTRY_POINTS", (("likeness_fake_diffusers", ("AutoencoderKL",)),))
    assert stack.import_failure() == (
        "from likeness_fake_diffusers import AutoencoderKL: ModuleNotFoundError: No module named 'likeness_no_such_module'"
    )
