"""The real ComfyUI server imports the pack from ``custom_nodes/ComfyUI-Likeness``.

Needs ``COMFYUI_DIR`` (a ComfyUI checkout, see tests/integration/README.md) and an interpreter
with ComfyUI's requirements: ``COMFYUI_PYTHON``, else the one running pytest. The server runs on
CPU on a free loopback port, with a throw-away ``--base-directory`` whose ``custom_nodes/`` holds
a symlink to this repository, and is always killed at the end.

What it checks, beyond the unit mirror in tests/test_loading.py:
- ComfyUI's "Import times for custom nodes" block lists our folder, without "(IMPORT FAILED)",
  and no "Cannot import ... ComfyUI-Likeness" warning was logged;
- ``lora_likeness`` in the server process is the file in this repository's ``core/`` (asked
  through a probe route that a second, test-only custom node registers), the A1111 adapter was
  not loaded, and nothing heavy of ours (onnxruntime, insightface, matplotlib) was imported;
- a decoy ``core`` / ``scripts`` / ... on the server's PYTHONPATH (as a node pack that puts its
  own folder on ``sys.path`` would leave) was never imported.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-Likeness"
STARTUP_TIMEOUT_S = 120
# Ours, and not imported by ComfyUI itself (torch is, so it is not checked here).
HEAVY_OF_OURS = ("onnxruntime", "insightface", "matplotlib")
DECOY_NAMES = ("core", "scripts", "comfy_nodes", "a1111_extension", "likeness_bootstrap")

PROBE_NODE = '''
"""Test-only custom node: reports, at request time, what the server process has imported."""
import json, sys
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


@PromptServer.instance.routes.get("/likeness_probe")
async def likeness_probe(request):
    ll = sys.modules.get("lora_likeness")
    return web.json_response({
        "lora_likeness_file": getattr(ll, "__file__", None),
        "lora_likeness_path": list(getattr(ll, "__path__", []) or []),
        "a1111_loaded": "lora_likeness_a1111" in sys.modules,
        "modules": sorted(n for n in %(names)r if n in sys.modules),
        "pack_modules": sorted(n for n in sys.modules if n.endswith("%(pack)s") or "%(pack)s." in n),
    })
''' % {"names": HEAVY_OF_OURS + DECOY_NAMES, "pack": PACK_NAME}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
        return json.loads(resp.read().decode("utf-8"))


def _make_decoy(root: Path, marker: Path) -> Path:
    body = (
        f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
        "raise ImportError('decoy ' + __name__ + ' imported')\n"
    )
    for rel in ("core/__init__.py", "scripts/__init__.py", "comfy_nodes/__init__.py",
                "a1111_extension/__init__.py", "likeness_bootstrap.py"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return root


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: it and its children only
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def comfyui_server(tmp_path_factory):
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("COMFYUI_DIR is not set (path to a ComfyUI checkout; see tests/integration/README.md)")
    comfy_dir = Path(comfy_dir).resolve()
    assert (comfy_dir / "main.py").is_file(), f"COMFYUI_DIR={comfy_dir} has no main.py"
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable

    tmp = tmp_path_factory.mktemp("comfyui")
    base = tmp / "base"
    (base / "models").mkdir(parents=True)
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir()
    pack = custom_nodes / PACK_NAME
    pack.symlink_to(REPO, target_is_directory=True)
    (custom_nodes / "likeness_probe.py").write_text(PROBE_NODE, encoding="utf-8")
    marker = tmp / "decoy-imports.txt"
    decoy = _make_decoy(tmp / "decoy-site", marker)

    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(decoy)
    # Nothing here may reach the internet: a stray HTTP call fails fast and shows in the log.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", no_proxy="127.0.0.1,localhost",
               NO_PROXY="127.0.0.1,localhost")
    cmd = [
        python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base), "--disable-api-nodes", "--disable-auto-launch",
        # The default database lives in <checkout>/user/; keep the checkout untouched.
        "--database-url", "sqlite:///:memory:",
    ]
    log_path = tmp / "comfyui.log"
    log = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(cmd, cwd=comfy_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        object_info = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                object_info = _get(url + "/object_info", timeout=10)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1)
        log.flush()
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if object_info is None:
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"no /object_info within {STARTUP_TIMEOUT_S}s"
            pytest.fail(f"ComfyUI did not come up ({why}); command: {' '.join(cmd)}\n--- log tail ---\n{text[-6000:]}")
        probe = _get(url + "/likeness_probe")
        yield {"log": text, "pack": pack, "object_info": object_info, "probe": probe,
               "marker": marker.read_text() if marker.exists() else ""}
    finally:
        _stop(proc)
        log.close()


def _import_time_lines(log: str) -> list[str]:
    """The lines of ComfyUI's 'Import times for custom nodes:' block."""
    lines = log.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if "Import times for custom nodes:" in line)
    except StopIteration:
        return []
    block = []
    for line in lines[start + 1:]:
        if not re.search(r"\d+\.\d seconds", line):
            break
        block.append(line)
    return block


def test_pack_imported_without_failure(comfyui_server) -> None:
    log, pack = comfyui_server["log"], comfyui_server["pack"]
    block = _import_time_lines(log)
    assert block, f"no 'Import times for custom nodes' block in the log:\n{log[-6000:]}"
    ours = [line for line in block if line.rstrip().endswith(os.sep + PACK_NAME)]
    assert len(ours) == 1, f"{PACK_NAME} not in the import-times block:\n" + "\n".join(block)
    assert "IMPORT FAILED" not in ours[0], ours[0]
    assert str(pack) in ours[0], ours[0]
    assert f"Cannot import {pack}" not in log, log[-6000:]


def test_core_loaded_from_this_repository(comfyui_server) -> None:
    probe = comfyui_server["probe"]
    assert probe["lora_likeness_file"], f"lora_likeness not in the server's sys.modules: {probe}"
    assert Path(probe["lora_likeness_file"]).resolve() == REPO / "core" / "__init__.py"
    assert [Path(p).resolve() for p in probe["lora_likeness_path"]] == [REPO / "core"]
    assert not probe["a1111_loaded"], "the A1111 adapter was loaded inside ComfyUI"
    # ComfyUI's own name for the pack: its full path, "." replaced by "_x_".
    assert str(comfyui_server["pack"]).replace(".", "_x_") in probe["pack_modules"], probe["pack_modules"]


def test_nothing_else_imported(comfyui_server) -> None:
    probe = comfyui_server["probe"]
    assert comfyui_server["marker"] == "", f"decoys imported:\n{comfyui_server['marker']}"
    assert probe["modules"] == [], f"imported in the server process: {probe['modules']}"


def test_object_info_answers(comfyui_server) -> None:
    info = comfyui_server["object_info"]
    assert isinstance(info, dict) and "CheckpointLoaderSimple" in info
