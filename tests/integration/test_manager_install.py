"""ComfyUI-Manager's install of the pack on a host that has onnxruntime-gpu: it stays single-runtime.

Needs ``LIKENESS_ONNXRUNTIME_GPU``: what to hand pip for onnxruntime-gpu (``onnxruntime-gpu`` from the
registry, or a downloaded wheel file); the test then downloads and installs about 1 GB into a throw-away
venv (see tests/integration/README.md for the time it takes).

The steps are ComfyUI-Manager's (``glob/manager_core.py``, ``execute_install_script``): the registry's
archive (tests/test_packaging.py's rebuild of ``comfy node publish``'s zip) unpacked as
``custom_nodes/lora-likeness``; then, in that folder, for each line of ``requirements.txt`` (a line whose
first character is ``#`` skipped, a trailing ``# comment`` cut off) ``[python, -m, pip, install, <line>]``
(``manager_util.make_pip_cmd``), then ``[python, install.py]``. Each must exit 0. The venv has no torch:
ComfyUI's torch plays no part in which onnxruntime install.py keeps (an installed, working variant is
kept unless ``--fix-onnxruntime`` asks otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from test_packaging import build_comfy_archive

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LIKENESS_SHARED", REPO.parent / "shared"))


def manager_requirement_lines(requirements: Path) -> list[str]:
    """``execute_install_script``'s reading of requirements.txt (ComfyUI-Manager, glob/manager_core.py)."""
    packages = []
    for line in requirements.read_text(encoding="utf-8").splitlines(keepends=True):
        if "#" in line:
            if line.strip()[0] == "#":
                continue
            line = line.split("#")[0].strip()
        package_name = line.strip()
        if package_name and not package_name.startswith("#"):
            packages.append(package_name)
    return packages


ONNXRUNTIME_VARIANTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-silicon",
                        "onnxruntime-rocm")

INSPECT = r"""
import importlib.metadata as md, json, sys
names = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
import onnxruntime
print("RESULT " + json.dumps({"installed": names, "providers": onnxruntime.get_available_providers(),
                              "onnxruntime_file": onnxruntime.__file__}))
"""


def _run(command: list[str], cwd: Path, log: list[str], timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    log.append(f"$ {' '.join(command)}  (exit {result.returncode})\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def test_manager_install_keeps_onnxruntime_gpu_alone_and_the_pack_scores(tmp_path: Path) -> None:
    gpu = os.environ.get("LIKENESS_ONNXRUNTIME_GPU")
    if not gpu:
        pytest.skip("LIKENESS_ONNXRUNTIME_GPU is not set (onnxruntime-gpu, or the path of its wheel; see tests/integration/README.md)")
    log: list[str] = []
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = str(tmp_path / "venv" / "bin" / "python")
    assert _run([python, "-m", "pip", "install", "-q", gpu], tmp_path, log).returncode == 0, "\n".join(log)

    pack = tmp_path / "ComfyUI" / "custom_nodes" / "lora-likeness"
    with zipfile.ZipFile(build_comfy_archive(tmp_path / "node.zip")) as archive:
        archive.extractall(pack)
    lines = manager_requirement_lines(pack / "requirements.txt")
    assert lines, "requirements.txt lists nothing"
    for line in lines:  # ComfyUI-Manager: one pip process per line, in the pack's folder
        assert _run([python, "-m", "pip", "install", line], pack, log).returncode == 0, "\n".join(log)
    assert _run([python, "install.py"], pack, log).returncode == 0, "\n".join(log)

    inspected = _run([python, "-c", INSPECT], tmp_path, log)
    assert inspected.returncode == 0, "\n".join(log)
    found = json.loads(next(line for line in inspected.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    variants = sorted(name for name in found["installed"] if name in ONNXRUNTIME_VARIANTS)
    assert variants == ["onnxruntime-gpu"], "\n".join(log)
    assert "insightface" in found["installed"] and "CUDAExecutionProvider" in found["providers"]

    # The pack works with that runtime (on this CPU-only machine through onnxruntime-gpu's CPU provider).
    refs, photos = SHARED / "faces" / "people" / "obama", SHARED / "faces"
    pack_dir = SHARED / "models" / "insightface" / "models" / "likeness_test"
    score = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('lora_likeness_bootstrap', {str(pack / 'likeness_bootstrap.py')!r})\n"
        "bootstrap = importlib.util.module_from_spec(spec); sys.modules[spec.name] = bootstrap; spec.loader.exec_module(bootstrap)\n"
        "bootstrap.load_core()\n"
        "from lora_likeness.cli import main\n"
        f"sys.exit(main(['score', '--refs', {str(refs)!r}, '--images', {str(photos)!r}, '--pack', {str(pack_dir)!r},"
        f" '--out', {str(tmp_path / 'report')!r}]))\n"
    )
    assert _run([python, "-c", score], tmp_path, log).returncode == 0, "\n".join(log)
    assert (tmp_path / "report" / "report.json").is_file()

    # Why insightface is not in requirements.txt: here, beside onnxruntime-gpu, the Manager's step
    # `pip install insightface` would add the CPU onnxruntime (insightface 2.x declares it).
    dry = _run([python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(tmp_path / "dry.json"), "insightface"],
               tmp_path, log)
    assert dry.returncode == 0, "\n".join(log)
    would_install = [item["metadata"]["name"].lower() for item in json.loads((tmp_path / "dry.json").read_text())["install"]]
    print(f"`pip install insightface` would install here: {would_install}", file=sys.stderr)
    assert "onnxruntime" in would_install, "insightface no longer brings the CPU onnxruntime: it could go into requirements.txt"
