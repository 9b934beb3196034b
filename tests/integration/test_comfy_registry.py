"""comfy-cli's own code on this checkout: what ``comfy node publish`` / ``comfy node pack`` would read and zip.

Needs ``COMFYUI_PYTHON``: an interpreter with comfy-cli installed (ComfyUI's venv; see
tests/integration/README.md). It runs comfy-cli's ``extract_node_configuration`` (what ``publish`` sends to
the registry, with its warnings for classifiers, versions and the license) and ``zip_files`` (the archive
``publish`` uploads) after ``validate_node_for_publishing`` (its ruff run for exec, eval and one-line
statement chains over the checkout), and compares the archive with tests/test_packaging.py's rebuild of it, which the
unit tests check without comfy-cli. Files must be tracked by git (``git add``) to be packed.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from test_packaging import PYPROJECT, comfy_archive_names

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

DRIVER = r"""
import contextlib, io, json, sys
from comfy_cli import file_utils
from comfy_cli.registry import config_parser
out = io.StringIO()
from comfy_cli.command.custom_nodes.command import validate_node_for_publishing
with contextlib.redirect_stdout(out):
    validate_node_for_publishing()  # what `comfy node publish` checks first: the config and ruff S102,S307,E702
    config = config_parser.extract_node_configuration("pyproject.toml")
    file_utils.zip_files(sys.argv[1], includes=config.tool_comfy.includes)
import comfy_cli, importlib.metadata
print("RESULT " + json.dumps({
    "version": importlib.metadata.version("comfy-cli"),
    "printed": out.getvalue(),
    "name": config.project.name, "version_of_node": config.project.version,
    "license": [config.project.license.text, config.project.license.file],
    "repository": config.project.urls.repository,
    "os": config.project.supported_os, "accelerators": config.project.supported_accelerators,
    "comfyui": config.project.supported_comfyui_version,
    "publisher": config.tool_comfy.publisher_id, "display_name": config.tool_comfy.display_name,
    "icon": config.tool_comfy.icon, "dependencies": config.project.dependencies,
}))
"""


@pytest.fixture(scope="module")
def comfy_cli_python() -> str:
    value = os.environ.get("COMFYUI_PYTHON")
    if not value:
        pytest.skip("COMFYUI_PYTHON is not set (ComfyUI's interpreter, with comfy-cli installed; see tests/integration/README.md)")
    return value


def test_comfy_cli_reads_our_pyproject_and_zips_what_the_unit_tests_expect(comfy_cli_python: str, tmp_path: Path) -> None:
    target = tmp_path / "node.zip"
    result = subprocess.run([comfy_cli_python, "-c", DRIVER, str(target)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    found = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert "Warning" not in found["printed"], found["printed"]  # comfy-cli warns about classifiers, versions, license
    assert "All validation checks passed" in found["printed"] and "Security warnings" not in found["printed"], found["printed"]
    project = PYPROJECT["project"]
    assert (found["name"], found["version_of_node"]) == (project["name"], project["version"])
    assert found["license"][0] == "MIT" and found["repository"] == project["urls"]["Repository"]
    assert found["os"] == ["OS Independent"] and found["accelerators"] == ["GPU :: NVIDIA CUDA"]
    assert found["comfyui"] == PYPROJECT["tool"]["comfy"]["requires-comfyui"]
    assert found["publisher"] == "likeness" and found["icon"].endswith("/docs/images/icon.png")
    with zipfile.ZipFile(target) as archive:
        zipped = sorted(archive.namelist())
    assert zipped == sorted(comfy_archive_names()), f"comfy-cli {found['version']} packs another set of files"
