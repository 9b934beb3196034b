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
  own folder on ``sys.path`` would leave) was never imported;
- every Likeness node is in ``/object_info``, the face pack comes from an ``extra_model_paths.yaml``
  ``insightface:`` entry, and the template browser's endpoint lists ``workflows/``;
- each example workflow, converted to API format with that ``/object_info`` (comfy-cli's converter),
  runs through ``/prompt`` to completion on a randomly initialised full-size SD1.5 checkpoint and the
  shared face pack, and writes its report; the errors users hit come back as clear node errors;
  Stop interrupts an Epoch Sweep.

The SD1.5 checkpoint (2.1 GB) is ``$LIKENESS_SD15_CKPT`` if set, else made once by
``../shared/tools/make_random_sd15.py`` into ``~/.cache/likeness-tests/sd15_random_fp16.safetensors``
(``$XDG_CACHE_HOME`` honoured; the A1111 test uses the same file), about 25 s. The workflow conversion runs in ``COMFYUI_PYTHON``,
which needs ``comfy-cli`` (``pip install comfy-cli``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
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
from full_size_models import bigmem, full_size_targets, sdxl_checkpoint, write_random_lora
from likeness_assets import PACK_DIR, PEOPLE, SHARED

PACK_NAME = "ComfyUI-Likeness"
STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 600
LIKENESS_NODES = {
    "LikenessFaceModel": "Face Model",
    "LikenessReferenceFaces": "Reference Faces",
    "LikenessPeople": "People (family LoRA)",
    "LikenessScoreImages": "Score Images",
    "LikenessScoreTrainingSamples": "Score Training Samples",
    "LikenessLoraCheckpoints": "LoRA Checkpoints",
    "LikenessEpochSweep": "Epoch Sweep",
    "LikenessScoredGrid": "Scored Grid",
    "LikenessPrepareDataset": "Prepare Dataset",
    "LikenessTrainLora": "Train LoRA",
}
RUN = "testface"        # an SD1.5 training run: testface-000001, -000002, testface (ss_epoch 3)
XL_RUN = "otherxl"      # an SDXL LoRA, for the architecture error
SDXL_RUN = "xlface"     # an SDXL training run with every module of a full-size SDXL LoRA: xlface-000001, xlface (ss_epoch 2)
SD15_CKPT, SDXL_CKPT = "sd15_random.safetensors", "sdxl_random.safetensors"
# Ours, and not imported by ComfyUI itself (torch is, so it is not checked here).
HEAVY_OF_OURS = ("onnxruntime", "insightface", "matplotlib")
DECOY_NAMES = ("core", "scripts", "comfy_nodes", "a1111_extension", "likeness_bootstrap")

PROBE_NODE = '''
"""Test-only custom node: reports, at request time, what the server process has imported; and a
node that stands in for Epoch Sweep with real photos (random weights draw no faces)."""
import json, sys
from aiohttp import web
from server import PromptServer


class LikenessTestGrid:
    """Real photos (or grey images, path null) with Epoch Sweep's labels: [[path, label, info], ...]."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"layout": ("STRING", {"multiline": True, "default": "[]"})}}

    RETURN_TYPES = ("IMAGE", "LIKENESS_LABELS")
    FUNCTION = "make"
    CATEGORY = "likeness_test"

    def make(self, layout):
        import numpy as np
        import torch
        from PIL import Image

        frames, labels = [], []
        for path, label, info in json.loads(layout):
            image = Image.open(path).convert("RGB") if path else Image.new("RGB", (250, 250), (128, 128, 128))
            frames.append(np.asarray(image.resize((250, 250)), np.float32) / 255.0)
            labels.append((label, info))
        return (torch.from_numpy(np.stack(frames)), labels)


NODE_CLASS_MAPPINGS = {"LikenessTestGrid": LikenessTestGrid}
NODE_DISPLAY_NAME_MAPPINGS = {}


@PromptServer.instance.routes.get("/likeness_probe")
async def likeness_probe(request):
    ll = sys.modules.get("lora_likeness")
    return web.json_response({
        "lora_likeness_file": getattr(ll, "__file__", None),
        "lora_likeness_path": list(getattr(ll, "__path__", []) or []),
        "a1111_loaded": "lora_likeness_a1111" in sys.modules,
        "pid": __import__("os").getpid(),
        "modules": sorted(n for n in NAMES if n in sys.modules),
        "pack_modules": sorted(n for n in sys.modules if n.endswith(PACK) or PACK + "." in n),
    })
'''.replace("NAMES", repr(HEAVY_OF_OURS + DECOY_NAMES)).replace("PACK", repr(PACK_NAME))


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


# --------------------------------------------------------------------------------------------
# What the server gets: a checkpoint, a LoRA training run, the face pack, photos


def _sd15_checkpoint() -> Path:
    """The random full-size SD1.5 checkpoint, made once per machine (2.1 GB, about 25 s)."""
    explicit = os.environ.get("LIKENESS_SD15_CKPT")
    if explicit:
        path = Path(explicit)
        assert path.is_file(), f"LIKENESS_SD15_CKPT={path} does not exist"
        return path
    # The same file test_a1111_host.py makes: one 2.1 GB copy per machine.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "likeness-tests"
    path = cache / "sd15_random_fp16.safetensors"
    if not path.is_file():
        tool = SHARED / "tools" / "make_random_sd15.py"
        assert tool.is_file(), f"{tool} is missing (../shared/tools)"
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f"sd15_random_fp16.{os.getpid()}.partial"
        proc = subprocess.run([os.environ.get("COMFYUI_PYTHON") or sys.executable, str(tool), str(partial),
                               "--dtype", "fp16", "--seed", "0"], check=False, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"make_random_sd15.py failed:\n{proc.stdout}\n{proc.stderr}"
        partial.replace(path)
    return path


# Kohya-named SD1.5 LoRA weights (UNet cross-attention + text encoder), rank 4.
SD1_LORA = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v": (320, 768),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q": (1280, 1280),
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2": (320, 1280),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
}
SDXL_LORA = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
}


def write_lora(path: Path, modules: dict[str, tuple[int, int]], metadata: dict[str, str], seed: int) -> None:
    """A Kohya-format LoRA with random weights large enough to change the images."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, (out_features, in_features) in modules.items():
        tensors[f"{name}.lora_down.weight"] = rng.normal(0, 0.5, (4, in_features)).astype(np.float16)
        tensors[f"{name}.lora_up.weight"] = rng.normal(0, 0.5, (out_features, 4)).astype(np.float16)
        tensors[f"{name}.alpha"] = np.array(4.0, dtype=np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def _populate(base: Path, tmp: Path) -> dict:
    """Models, photos and the extra_model_paths.yaml the server starts with."""
    import numpy as np
    from PIL import Image

    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / SD15_CKPT).symlink_to(_sd15_checkpoint())
    (checkpoints / SDXL_CKPT).symlink_to(sdxl_checkpoint(os.environ.get("COMFYUI_PYTHON")))  # loaded only by the SDXL tests
    loras = base / "models" / "loras"
    for epoch, name in ((1, f"{RUN}-000001"), (2, f"{RUN}-000002"), (3, RUN)):
        write_lora(loras / f"{name}.safetensors", SD1_LORA, {"ss_epoch": str(epoch), "ss_base_model_version": "sd_v1"}, epoch)
    write_lora(loras / f"{XL_RUN}.safetensors", SDXL_LORA, {"ss_epoch": "1", "ss_base_model_version": "sdxl_base_v1-0"}, 9)
    # Full-size SDXL LoRAs as the core names them (986 modules: both text encoders and the UNet), random weights.
    xl_targets = full_size_targets("sdxl")
    for epoch, name in ((1, f"{SDXL_RUN}-000001"), (2, SDXL_RUN)):
        write_random_lora(loras / SDXL_RUN / f"{name}.safetensors", xl_targets,
                          {"ss_epoch": str(epoch), "ss_base_model_version": "sdxl_base_v1-0"}, seed=epoch)

    # The face pack is found through extra_model_paths.yaml, as users with a shared models folder do.
    extra = tmp / "extra_model_paths.yaml"
    extra.write_text(f"likeness_test_assets:\n  base_path: {PACK_DIR.parents[1]}\n  insightface: .\n", encoding="utf-8")

    # Reference photos: four of Colin Powell. "Generated" images: two other photos of him, three of
    # George W. Bush and a blank one (no face), of different sizes (Score Images reads the folder itself).
    powell = sorted((PEOPLE / "lfw_colin_powell").glob("*.jpg"))
    bush = sorted((PEOPLE / "lfw_george_w_bush").glob("*.jpg"))
    refs = tmp / "refs_powell"
    refs.mkdir()
    for photo in powell[:4]:
        shutil.copy(photo, refs / photo.name)
    generated = base / "input" / "generated"
    generated.mkdir(parents=True)
    for photo in powell[4:6] + bush[:3]:
        shutil.copy(photo, generated / photo.name)
    with Image.open(bush[2]) as photo:  # a 200x230 crop around the face: photos rarely share one size
        photo.crop((25, 10, 225, 240)).save(generated / bush[2].name, quality=95)
    Image.fromarray(np.full((120, 180, 3), 128, np.uint8)).save(generated / "zz_blank.png")
    no_face_refs = tmp / "refs_no_face"
    no_face_refs.mkdir()
    Image.fromarray(np.full((250, 250, 3), 90, np.uint8)).save(no_face_refs / "wall.png")
    return {"extra_paths": extra, "refs": refs, "no_face_refs": no_face_refs,
            "generated": sorted(p.name for p in generated.iterdir())}


@contextlib.contextmanager
def _comfyui(comfy_dir: Path, python: str, base: Path, extra_paths: Path, log_path: Path, env: dict, *flags: str):
    """A ComfyUI server on a free loopback port over ``base``, in its own process group, always killed
    at the end: yields ``(url, object_info)``."""
    port = _free_port()
    cmd = [
        python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base), "--disable-api-nodes", "--disable-auto-launch",
        # The default database lives in <checkout>/user/; keep the checkout untouched.
        "--database-url", "sqlite:///:memory:",
        "--extra-model-paths-config", str(extra_paths), *flags,
    ]
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - the server writes it until the end
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
        if object_info is None:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"no /object_info within {STARTUP_TIMEOUT_S}s"
            pytest.fail(f"ComfyUI did not come up ({why}); command: {' '.join(cmd)}\n--- log tail ---\n{text[-6000:]}")
        yield url, object_info
    finally:
        _stop(proc)
        log.close()


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
    assets = _populate(base, tmp)
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir()
    pack = custom_nodes / PACK_NAME
    pack.symlink_to(REPO, target_is_directory=True)
    (custom_nodes / "likeness_probe.py").write_text(PROBE_NODE, encoding="utf-8")
    marker = tmp / "decoy-imports.txt"
    decoy = _make_decoy(tmp / "decoy-site", marker)

    env = dict(os.environ)
    env["PYTHONPATH"] = str(decoy)
    # Nothing here may reach the internet: a stray HTTP call fails fast and shows in the log.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", no_proxy="127.0.0.1,localhost",
               NO_PROXY="127.0.0.1,localhost")
    log_path = tmp / "comfyui.log"
    with _comfyui(comfy_dir, python, base, assets["extra_paths"], log_path, env) as (url, object_info):
        probe = _get(url + "/likeness_probe")
        yield {"log": log_path.read_text(encoding="utf-8", errors="replace"), "pack": pack, "object_info": object_info,
               "probe": probe, "marker": marker.read_text() if marker.exists() else "", "url": url, "base": base,
               "log_path": log_path, "python": python, "comfy_dir": comfy_dir, "env": env, "tmp": tmp, **assets}


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


# --------------------------------------------------------------------------------------------
# The nodes, the templates and the example workflows, for real

CONVERT = """
import json, sys
try:
    from comfy_cli.workflow_to_api import convert_ui_to_api
except ImportError as exc:
    sys.exit("comfy-cli is not installed in this interpreter (pip install comfy-cli): %s" % exc)
data = json.load(sys.stdin)
json.dump(convert_ui_to_api(data["workflow"], data["object_info"]), sys.stdout)
"""


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # loopback only
            body = resp.read().decode("utf-8")
            return json.loads(body) if body.strip() else {}  # /interrupt answers with an empty 200
    except urllib.error.HTTPError as exc:  # /prompt answers 400 with the validation errors
        raise AssertionError(f"POST {url} -> {exc.code}: {exc.read().decode('utf-8', 'replace')[:4000]}") from None


def to_api(server: dict, name: str) -> dict:
    """workflows/<name>.json converted to API format with the server's own /object_info."""
    workflow = json.loads((REPO / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    proc = subprocess.run([server["python"], "-c", CONVERT], check=False, input=json.dumps(
        {"workflow": workflow, "object_info": _get(server["url"] + "/object_info", timeout=30)}),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"converting {name}.json failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def set_input(prompt: dict, class_type: str, **values) -> None:
    nodes = [n for n in prompt.values() if n["class_type"] == class_type]
    assert nodes, f"no {class_type} node in the prompt"
    for node in nodes:
        for key, value in values.items():
            assert key in node["inputs"], f"{class_type} has no input {key}: {sorted(node['inputs'])}"
            node["inputs"][key] = value


def run_prompt(server: dict, prompt: dict, timeout: float = RUN_TIMEOUT_S) -> dict:
    """Queue an API prompt and wait for its history entry (success or error)."""
    prompt_id = _post(server["url"] + "/prompt", {"prompt": prompt, "client_id": "likeness-test"})["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = _get(f"{server['url']}/history/{prompt_id}", timeout=10)
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and entry["status"].get("status_str"):
            return entry
        time.sleep(1)
    log = server["log_path"].read_text(encoding="utf-8", errors="replace")
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout}s\n--- log tail ---\n{log[-4000:]}")


def error_of(entry: dict) -> dict:
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return data
    raise AssertionError(f"no execution_error in {entry['status']}")


def _succeeded(entry: dict, server: dict) -> None:
    status = entry["status"]
    if status.get("status_str") != "success":
        log = server["log_path"].read_text(encoding="utf-8", errors="replace")
        raise AssertionError(f"prompt failed: {json.dumps(status)[:4000]}\n--- log tail ---\n{log[-4000:]}")


def _report_folder(server: dict, entry: dict) -> Path:
    """The report folder Scored Grid wrote, from its UI output (subfolder of output/)."""
    shown = [image for node in entry["outputs"].values() for image in node.get("images", [])
             if image.get("filename") == "grid.png"]
    assert len(shown) == 1, f"Scored Grid showed no grid.png: {entry['outputs']}"
    assert shown[0]["type"] == "output"
    return server["base"] / "output" / shown[0]["subfolder"]


def test_every_likeness_node_in_object_info(comfyui_server) -> None:
    info = comfyui_server["object_info"]
    ours = {name: node for name, node in info.items() if node.get("category") == "Likeness"}
    assert {name: node["display_name"] for name, node in ours.items()} == LIKENESS_NODES
    assert ours["LikenessScoredGrid"]["output_node"] is True
    assert ours["LikenessScoreImages"]["output_is_list"] == [True, False, False, False]
    assert ours["LikenessScoreImages"]["output"] == ["FLOAT", "STRING", "IMAGE", "LIKENESS_SCORES"]
    assert ours["LikenessEpochSweep"]["output"] == ["IMAGE", "LIKENESS_LABELS"]
    # New outputs and inputs come last, so saved workflows keep their links and widget values.
    assert ours["LikenessScoredGrid"]["output"] == ["IMAGE", "STRING", "STRING"]
    assert ours["LikenessScoredGrid"]["output_name"] == ["grid", "summary", "recommend"]
    assert ours["LikenessEpochSweep"]["input"]["optional"]["include_baseline"][0] == "BOOLEAN"
    assert ours["LikenessEpochSweep"]["input"]["optional"]["include_baseline"][1]["default"] is True
    # The pack list comes from folder_paths' "insightface" entries (extra_model_paths.yaml here).
    pack = ours["LikenessFaceModel"]["input"]["required"]["pack"]
    assert pack[1]["options"] == ["likeness_test"], pack
    runs = ours["LikenessLoraCheckpoints"]["input"]["required"]["run"][1]["options"]
    assert runs == [XL_RUN, RUN, f"{SDXL_RUN}/{SDXL_RUN}"], runs
    # Score Images reads a folder itself, then who is expected with People (its last inputs, in the order they
    # were added); Train LoRA's resolution 0 is the model family's.
    assert ours["LikenessScoreImages"]["input"]["optional"]["folder"][0] == "STRING"
    assert ours["LikenessScoreImages"]["input_order"]["optional"][-2:] == ["folder", "expect"]
    assert ours["LikenessPeople"]["output"] == ["LIKENESS_REFERENCES", "STRING"]
    assert ours["LikenessTrainLora"]["input"]["required"]["resolution"][1]["default"] == 0
    samplers = ours["LikenessEpochSweep"]["input"]["required"]["sampler_name"][1]["options"]
    assert samplers == info["KSampler"]["input"]["required"]["sampler_name"][0]


def test_template_browser_lists_the_workflows(comfyui_server) -> None:
    url = comfyui_server["url"]
    templates = _get(url + "/workflow_templates")
    assert sorted(templates.get(PACK_NAME, [])) == ["epoch_sweep", "epoch_sweep_sdxl", "score_folder"], templates
    for name in ("epoch_sweep", "epoch_sweep_sdxl", "score_folder"):
        served = _get(f"{url}/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert served == json.loads((REPO / "workflows" / f"{name}.json").read_text(encoding="utf-8"))


def test_node_help_pages_are_served_where_the_frontend_looks(comfyui_server) -> None:
    """ComfyUI_frontend's nodeHelpService: ``/extensions/<pack folder>/docs/<node>/<locale>.md``, then
    ``/extensions/<pack folder>/docs/<node>.md``, from the pack's WEB_DIRECTORY."""
    url = comfyui_server["url"]
    for name in LIKENESS_NODES:
        with urllib.request.urlopen(f"{url}/extensions/{PACK_NAME}/docs/{name}.md", timeout=10) as response:
            served = response.read().decode("utf-8")
        assert served == (REPO / "web" / "docs" / f"{name}.md").read_text(encoding="utf-8"), name


def test_score_folder_workflow(comfyui_server) -> None:
    server = comfyui_server
    prompt = to_api(server, "score_folder")
    set_input(prompt, "LikenessFaceModel", pack="likeness_test", provider="cpu")
    set_input(prompt, "LikenessReferenceFaces", folder=str(server["refs"]))
    # A folder name is looked up in ComfyUI's input folder; its photos have different sizes.
    set_input(prompt, "LikenessScoreImages", folder="generated")
    entry = run_prompt(server, prompt)
    _succeeded(entry, server)

    folder = _report_folder(server, entry)
    for name in ("scores.csv", "summary.csv", "report.json", "report.md", "scores.png", "contact_sheet.png", "grid.png"):
        assert (folder / name).is_file(), f"{name} missing in {folder}"
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert report["references"]["n"] == 4 and report["references"]["baseline_mean"] > 0.4
    images = report["images"]
    # Every image by its file name, in name order (not "image 1..6" in os.listdir order); the blank one has no face.
    assert [i["path"] for i in images] == server["generated"] and len(images) == 6
    generated = server["base"] / "input" / "generated"
    assert report["settings"]["images_root"] == str(generated)
    assert f"- images: `{generated}` (6 files)" in (folder / "report.md").read_text(encoding="utf-8")
    found = [i for i in images if i["face_found"]]
    assert len(found) == 5 and [i["path"] for i in images if not i["face_found"]] == ["zz_blank.png"]
    best = sorted(found, key=lambda i: -i["score_max"])
    assert {i["path"] for i in best[:2]} == {n for n in server["generated"] if n.startswith("Colin_Powell")}
    assert best[1]["score_max"] > 0.4 > best[2]["score_max"], [i["score_max"] for i in best]  # two Powell photos on top

    # Reference Faces and Scored Grid show their previews; the summary reaches Preview Any.
    outputs = entry["outputs"]
    texts = [t for node in outputs.values() for t in node.get("text", [])]
    assert any("| generated | 6 | 5 | 17% |" in t for t in texts), texts
    previews = [n for n in outputs.values() if any(i.get("type") == "temp" for i in n.get("images", []))]
    assert previews, f"no node preview in {outputs}"


def test_epoch_sweep_workflow(comfyui_server) -> None:
    server = comfyui_server
    prompt = to_api(server, "epoch_sweep")
    set_input(prompt, "CheckpointLoaderSimple", ckpt_name=SD15_CKPT)
    set_input(prompt, "LikenessLoraCheckpoints", run=RUN)
    set_input(prompt, "LikenessEpochSweep", strengths="0.5, 1", seeds="1, 2", steps=3, width=64, height=64, cfg=5.0)
    set_input(prompt, "LikenessFaceModel", pack="likeness_test", provider="cpu")
    set_input(prompt, "LikenessReferenceFaces", folder=str(server["refs"]))
    started = time.monotonic()
    entry = run_prompt(server, prompt)
    _succeeded(entry, server)
    elapsed = time.monotonic() - started

    folder = _report_folder(server, entry)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    groups = [(g["label"], g["n_images"], g["n_faces"]) for g in report["groups"]]
    # The no-LoRA baseline (include_baseline is on by default), then 3 checkpoints x 2 strengths,
    # 2 seeds each, in epoch then strength order. A random SD1.5 draws noise, so no image has a
    # face: every score is missing and the run still completes.
    assert groups == [("no LoRA", 2, 0)] + [(f"{RUN} {e} @{s}", 2, 0) for e in ("e1", "e2", "e3") for s in ("0.5", "1")], groups
    assert any("no face was found in any readable image" in w for w in report["warnings"])
    layout = json.loads((folder / "grid.json").read_text(encoding="utf-8"))
    assert layout["rows"] == ["no LoRA", "e1", "e2", "final (e3)"] and layout["columns"] == ["@0", "@0.5", "@1"]
    assert [(c["row"], c["column"], c["n"], c["mean"]) for c in layout["cells"]] == [("no LoRA", "@0", 2, None)] + [
        (r, c, 2, None) for r in ("e1", "e2", "final (e3)") for c in ("@0.5", "@1")]
    from PIL import Image

    with Image.open(folder / "grid.png") as picture:  # 3 columns of 2 seeds x 4 rows of 64 px images
        assert picture.width >= 3 * 2 * 64 and picture.height >= 4 * 64
    # No face anywhere: no cell can be recommended, and the recommend output (shown by the
    # workflow's second Preview Any) and recommendation.json say so.
    advice = json.loads((folder / "recommendation.json").read_text(encoding="utf-8"))
    assert advice["best"] is None and advice["reason"], advice
    assert [c["label"] for c in advice["cells"]][:2] == ["no LoRA", "e1 @ 0.5"], advice["cells"]
    assert layout["recommended"] is None
    texts = [t for node in entry["outputs"].values() for t in node.get("text", [])]
    assert any(t.startswith("No recommendation: ") and advice["reason"] in t for t in texts), texts

    log = server["log_path"].read_text(encoding="utf-8", errors="replace")
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-4000:]
    print(f"epoch sweep workflow: 12 images (3 steps, 64x64) scored and reported in {elapsed:.0f}s")


def test_scored_grid_recommends_a_cell_of_the_grid(comfyui_server) -> None:
    """Scored Grid's recommend output and recommendation.json through /prompt, on real photos laid
    out as a sweep by the test-only LikenessTestGrid node: two Powell photos in e2 @0.5, a Bush
    photo beside each Powell photo elsewhere, Bush photos as the no-LoRA floor."""
    server = comfyui_server
    photos = {name: str(server["base"] / "input" / "generated" / name) for name in server["generated"]}
    powell = [photos[n] for n in server["generated"] if n.startswith("Colin_Powell")]
    bush = [photos[n] for n in server["generated"] if n.startswith("George_W_Bush")]
    assert len(powell) == 2 and len(bush) == 3, server["generated"]

    def label(row, epoch, strength, seed):
        if row == "no LoRA":
            return "no LoRA", {"run": None, "epoch": None, "step": None, "strength": 0.0, "seed": seed, "lora": None,
                               "row": "no LoRA", "column": "@0"}
        return f"{RUN} {row} @{strength:g}", {"run": RUN, "epoch": epoch, "step": None, "strength": strength, "seed": seed,
                                              "lora": f"{RUN}.safetensors", "row": row, "column": f"@{strength:g}"}

    cells = [(("no LoRA", None, 0.0), (bush[1], bush[2])), (("e1", 1, 0.5), (bush[0], None)),
             (("e1", 1, 1.0), (powell[1], bush[2])), (("e2", 2, 0.5), (powell[0], powell[1])),
             (("e2", 2, 1.0), (powell[0], bush[1]))]
    layout = [[path, *label(*cell, seed)] for cell, paths in cells for seed, path in zip((1, 2), paths)]
    prompt = {
        "1": {"class_type": "LikenessTestGrid", "inputs": {"layout": json.dumps(layout)}},
        "2": {"class_type": "LikenessFaceModel", "inputs": {"pack": "likeness_test", "provider": "cpu"}},
        "3": {"class_type": "LikenessReferenceFaces", "inputs": {"face_model": ["2", 0], "aggregation": "max",
                                                                  "folder": str(server["refs"])}},
        "4": {"class_type": "LikenessScoreImages", "inputs": {"images": ["1", 0], "references": ["3", 0], "face": "largest",
                                                               "labels": ["1", 1]}},
        "5": {"class_type": "LikenessScoredGrid", "inputs": {"images": ["1", 0], "score_run": ["4", 3], "labels": ["1", 1],
                                                              "filename_prefix": "likeness/recommend"}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}},
    }
    entry = run_prompt(server, prompt)
    _succeeded(entry, server)
    folder = _report_folder(server, entry)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    advice = json.loads((folder / "recommendation.json").read_text(encoding="utf-8"))
    grid = json.loads((folder / "grid.json").read_text(encoding="utf-8"))

    # The winner is a cell of the grid, and grid.json says where it is.
    assert advice["best"] == "e2 @ 0.5", advice["headline"]
    assert grid["recommended"] == {"row": "e2", "column": "@0.5"}
    assert grid["recommended"]["row"] in grid["rows"] and grid["recommended"]["column"] in grid["columns"]
    # Floor: the baseline images' mean; ceiling: the reference photos' baseline.
    scores = [image["score_max"] for image in report["images"]]
    assert advice["floor"] == pytest.approx((scores[0] + scores[1]) / 2, abs=1e-6)
    assert advice["ceiling"] == pytest.approx(report["references"]["baseline_mean"], abs=1e-6)
    assert advice["paired"] is True  # e2 @0.5 and the runner-up share seeds 1 and 2
    # The recommend output reached Preview Any: the headline first, then the warnings.
    texts = [t for node in entry["outputs"].values() for t in node.get("text", [])]
    shown = [t for t in texts if t.startswith("Recommended: ")]
    assert shown and shown[0].splitlines()[0] == advice["headline"], texts
    assert shown[0].splitlines()[1:] == [f"warning: {w}" for w in advice["warnings"]]
    assert advice["headline"].startswith("Recommended: e2 @ 0.5 — identity "), advice["headline"]


def test_score_training_samples_workflow(comfyui_server) -> None:
    """Score Training Samples through /prompt on an sd-scripts output folder (real photos standing in for samples,
    the target's share rising to step 750 and falling after it): the verdict reaches Preview Any."""
    from trainer_layouts import BEST_STEP, LAYOUTS

    server = comfyui_server
    samples = LAYOUTS["sd-scripts"](server["tmp"] / "trainer")
    prompt = {
        "1": {"class_type": "LikenessFaceModel", "inputs": {"pack": "likeness_test", "provider": "cpu"}},
        "2": {"class_type": "LikenessReferenceFaces", "inputs": {"face_model": ["1", 0], "aggregation": "max",
                                                                  "folder": str(server["refs"])}},
        "3": {"class_type": "LikenessScoreTrainingSamples", "inputs": {"references": ["2", 0], "folder": str(samples),
                                                                        "face": "largest"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }
    entry = run_prompt(server, prompt)
    _succeeded(entry, server)
    texts = [t for node in entry["outputs"].values() for t in node.get("text", [])]
    summary = next(t for t in texts if "best so far" in t)
    assert f"Recommended: step {BEST_STEP}" in summary and "likely over-training" in summary, summary
    assert "closest saved checkpoint: jx_face-step00000500.safetensors" in summary
    assert str(BEST_STEP) in texts, texts  # the best_step output


def test_clear_node_errors(comfyui_server) -> None:
    server = comfyui_server
    # An SDXL LoRA on an SD1.5 model: stopped before the first image, with both names in the message.
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}},
        "2": {"class_type": "LikenessLoraCheckpoints", "inputs": {"run": XL_RUN, "first_epoch": 0, "last_epoch": 0, "include_final": True}},
        "3": {"class_type": "LikenessEpochSweep", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "checkpoints": ["2", 0], "positive": "a photo",
            "negative": "", "strengths": "1", "seeds": "1", "steps": 1, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "width": 64, "height": 64}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    error = error_of(run_prompt(server, prompt))
    assert error["node_type"] == "LikenessEpochSweep"
    assert "is a SDXL LoRA but the loaded model is SD1.x" in error["exception_message"], error["exception_message"]

    # References without a face: the message names the photo.
    prompt = {
        "1": {"class_type": "LikenessFaceModel", "inputs": {"pack": "likeness_test", "provider": "cpu"}},
        "2": {"class_type": "LikenessReferenceFaces", "inputs": {"face_model": ["1", 0], "aggregation": "max",
                                                                  "folder": str(server["no_face_refs"])}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    error = error_of(run_prompt(server, prompt))
    assert error["node_type"] == "LikenessReferenceFaces"
    assert "No reference photo has a usable face" in error["exception_message"] and "wall.png" in error["exception_message"]

    # No pack where the user pointed: the message says where packs go.
    prompt["1"]["inputs"]["pack_path"] = str(server["base"] / "models" / "insightface" / "models" / "buffalo_l")
    error = error_of(run_prompt(server, prompt))
    assert error["node_type"] == "LikenessFaceModel"
    assert "does not exist" in error["exception_message"] and "buffalo_l" in error["exception_message"]


def test_stop_interrupts_the_sweep(comfyui_server) -> None:
    server = comfyui_server
    prompt = to_api(server, "epoch_sweep")
    set_input(prompt, "CheckpointLoaderSimple", ckpt_name=SD15_CKPT)
    set_input(prompt, "LikenessLoraCheckpoints", run=RUN)
    # 3 x 4 x 5 = 60 images of 20 steps: minutes of work if Stop did not stop it.
    set_input(prompt, "LikenessEpochSweep", strengths="0.25, 0.5, 0.75, 1", seeds="1, 2, 3, 4, 5", steps=20,
              width=64, height=64)
    set_input(prompt, "LikenessFaceModel", pack="likeness_test", provider="cpu")
    set_input(prompt, "LikenessReferenceFaces", folder=str(server["refs"]))
    prompt_id = _post(server["url"] + "/prompt", {"prompt": prompt, "client_id": "likeness-test"})["prompt_id"]
    log_path = server["log_path"]
    sampling = re.compile(r"\|\s*\d+/20 \[")  # comfy.sample's tqdm bar for 20 steps
    before = len(sampling.findall(log_path.read_text(encoding="utf-8", errors="replace")))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until the sweep is sampling
        if len(sampling.findall(log_path.read_text(encoding="utf-8", errors="replace"))) > before:
            break
        time.sleep(0.5)
    _post(server["url"] + "/interrupt", {})
    stopped = time.monotonic()
    entry = None
    while time.monotonic() < stopped + 120:
        entry = _get(f"{server['url']}/history/{prompt_id}", timeout=10).get(prompt_id)
        if entry and entry["status"].get("status_str"):
            break
        time.sleep(0.5)
    assert entry is not None and entry["status"].get("status_str"), "the sweep did not stop within 120 s of Stop"
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    print(f"sweep stopped {time.monotonic() - stopped:.1f}s after Stop")


def test_unit_tests_pass_on_the_real_node_api(tmp_path) -> None:
    """tests/test_comfy_nodes.py runs on comfy_nodes.standin in CI; here it runs on ComfyUI's own
    comfy_api (same node code, real io/ui classes), so the stand-in cannot drift from the real API."""
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("COMFYUI_DIR is not set (path to a ComfyUI checkout; see tests/integration/README.md)")
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    # This checkout's core, whatever copy of lora_likeness that interpreter has installed (an editable install of
    # another checkout would otherwise test the nodes against that core).
    shim = tmp_path / "this-checkout"
    shim.mkdir()
    (shim / "lora_likeness").symlink_to(REPO / "core", target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(comfy_dir).resolve()), str(shim)]), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_comfy_nodes.py"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "No module named pytest" not in out, f"{python} needs pytest (pip install pytest) to run the unit tests"
    assert proc.returncode == 0, out[-6000:]
    assert re.search(r"\b\d+ passed\b", out) and " skipped" not in out, out[-2000:]


# --------------------------------------------------------------------------------------------
# SDXL: the random full-size SDXL checkpoint on a server of its own, one prompt at a time, last


def _free(server: dict) -> None:
    """Ask ComfyUI to unload its models and drop its cached node outputs (POST /free), and give it time to."""
    _post(server["url"] + "/free", {"unload_models": True, "free_memory": True})
    time.sleep(5)  # the prompt worker frees between prompts


def _peak_rss_gb(pid: int) -> str:
    """A process's peak resident memory so far (VmHWM), for the test's output."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "unknown"
    kb = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmHWM:")), None)
    return f"{kb / 1024 / 1024:.1f} GB" if kb else "unknown"


@pytest.fixture(scope="module")
def sdxl_server(comfyui_server):
    """A second server over the same folders for the full-size SDXL, started once the first has dropped its
    SD1.5 and under ``$LIKENESS_BIGMEM_LOCK`` (when set) until it is stopped.

    ``--fp16-unet``: ComfyUI keeps a copy of every weight a LoRA patches, and a full-size SDXL LoRA patches most
    of the UNet and both text encoders; in float32 (ComfyUI's CPU default) that came to 23 GB here, in float16
    storage (computed in float32 all the same on CPU) about half. The text encoders are float16 on CPU already.
    """
    first = comfyui_server
    with bigmem():
        _free(first)
        log_path = first["tmp"] / "comfyui-sdxl.log"
        with _comfyui(first["comfy_dir"], first["python"], first["base"], first["extra_paths"], log_path, first["env"],
                      "--fp16-unet") as (url, object_info):
            server = {**first, "url": url, "object_info": object_info, "log_path": log_path}
            yield server
            print(f"SDXL server peak RSS {_peak_rss_gb(_get(url + '/likeness_probe')['pid'])}")


def test_epoch_sweep_sdxl_workflow(sdxl_server) -> None:
    """workflows/epoch_sweep_sdxl.json on ComfyUI's own SDXL model (the random full-size checkpoint) with SDXL
    LoRAs that have every module the core names: all keys load, and the sweep and its report complete."""
    server = sdxl_server
    prompt = to_api(server, "epoch_sweep_sdxl")
    set_input(prompt, "CheckpointLoaderSimple", ckpt_name=SDXL_CKPT)
    set_input(prompt, "LikenessLoraCheckpoints", run=f"{SDXL_RUN}/{SDXL_RUN}")
    set_input(prompt, "LikenessEpochSweep", strengths="0.5, 1", seeds="1", steps=2, width=64, height=64, cfg=5.0)
    set_input(prompt, "LikenessFaceModel", pack="likeness_test", provider="cpu")
    set_input(prompt, "LikenessReferenceFaces", folder=str(server["refs"]))
    started = time.monotonic()
    entry = run_prompt(server, prompt, timeout=1800)
    _succeeded(entry, server)
    elapsed = time.monotonic() - started

    folder = _report_folder(server, entry)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    groups = [(g["label"], g["n_images"]) for g in report["groups"]]
    assert groups == [("no LoRA", 1)] + [(f"{SDXL_RUN} {e} @{s}", 1) for e in ("e1", "e2") for s in ("0.5", "1")], groups
    layout = json.loads((folder / "grid.json").read_text(encoding="utf-8"))
    assert layout["rows"] == ["no LoRA", "e1", "final (e2)"] and layout["columns"] == ["@0", "@0.5", "@1"]
    log = server["log_path"].read_text(encoding="utf-8", errors="replace")
    assert "model_type EPS" in log and "Requested to load SDXL" in log, log[-4000:]
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-4000:]
    pid = _get(server["url"] + "/likeness_probe")["pid"]
    print(f"SDXL epoch sweep workflow: 5 images (2 steps, 64x64) in {elapsed:.0f}s; SDXL server peak RSS {_peak_rss_gb(pid)}")


def test_sd1_lora_on_sdxl_is_a_clear_node_error(sdxl_server) -> None:
    """The SD1.x run on the SDXL model, and (test_clear_node_errors) the reverse: both named."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SDXL_CKPT}},
        "2": {"class_type": "LikenessLoraCheckpoints", "inputs": {"run": RUN, "first_epoch": 0, "last_epoch": 0, "include_final": True}},
        "3": {"class_type": "LikenessEpochSweep", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "checkpoints": ["2", 0], "positive": "a photo",
            "negative": "", "strengths": "1", "seeds": "1", "steps": 1, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "width": 64, "height": 64}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    error = error_of(run_prompt(sdxl_server, prompt))
    assert error["node_type"] == "LikenessEpochSweep"
    message = error["exception_message"]
    assert f"{RUN}-000001.safetensors is a SD1.x LoRA but the loaded model is SDXL" in message, message
