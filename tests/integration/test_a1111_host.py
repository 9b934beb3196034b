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

import base64
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
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


def test_xyz_grid_still_has_what_our_hooks_wrap(a1111_dir: Path) -> None:
    """xyz_hooks wraps the X/Y/Z script's module-level ``draw_xyz_grid`` and the ``process_images`` name its
    cells call, and relies on a failing cell being caught there (an empty ``Processed``, a black cell)."""
    source = (a1111_dir / "scripts" / "xyz_grid.py").read_text(encoding="utf-8")
    for line in (
        "def draw_xyz_grid(p, xs, ys, zs, x_labels, y_labels, z_labels, cell, draw_legend, include_lone_images, "
        "include_sub_grids, first_axes_processed, second_axes_processed, margin_size):",
        "from modules.processing import process_images, Processed",
        "res = process_images(pc)",
        'errors.display(e, "generating image for xyz plot")',
        'res = Processed(p, [], p.seed, "")',
        "processed_result.images[idx] = Image.new(cell_mode, cell_size)",
    ):
        assert line in source, f"scripts/xyz_grid.py no longer has `{line}`: check a1111_extension/xyz_hooks.py"


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
    proc = subprocess.run([python, str(driver)], check=False, cwd=a1111_dir, env=env, capture_output=True,
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


# ==================================================================================================
# A1111 itself, offline on CPU: the always-on script, the X/Y/Z hooks and the LoRA axes end to end
# ==================================================================================================
#
# Needs A1111_DIR with repositories/ filled and A1111_PYTHON = a venv with A1111's requirements and
# Likeness's (see tests/integration/README.md). Starts `launch.py --nowebui --api` on CPU with a
# random full-size SD1.5 checkpoint (shared/tools/make_random_sd15.py; cached outside the repo),
# three tiny Kohya LoRA files of one run in the Lora folder, and a test-only extension that puts a
# real photo in place of each generated image (random weights draw no faces). That extension picks
# the photo by the LoRA A1111's own Lora extension has loaded for the image, and logs the loaded
# networks with their multipliers, so the test sees that the axes really drove A1111's LoRA loading.


SHARED = Path(os.environ.get("LIKENESS_SHARED", REPO.parent / "shared"))
PACK = SHARED / "models" / "insightface" / "models" / "likeness_test"
OBAMA = sorted((SHARED / "faces" / "people" / "obama").iterdir())
BUSH = sorted((SHARED / "faces" / "people" / "lfw_george_w_bush").iterdir())
RUN = "jxtest"
STEMS = [f"{RUN}-000001", f"{RUN}-000002", RUN]  # epochs 1, 2 and the final file (ss_epoch 3)

FACE_INJECTOR = '''
"""Test-only A1111 extension: replaces each generated image by the photo mapped to the LoRA that
A1111's Lora extension loaded for it, and logs what A1111 parsed and loaded.

When the control file names a LoRA and multiplier (``{"nan_for": [name, multiplier]}``), the cell that
loaded exactly that LoRA gets all-NaN latents after sampling with A1111's NaN check switched on for it,
so A1111's own ``devices.test_for_nans`` raises its ``NansException``, as a LoRA that overflows does
without ``--disable-nan-check``. The check is switched off again before the next generation. On a host
without that check (Forge Classic) the same cell's latents raise the same exception when ``process_images``
reads them.

Forge keeps the strengths it applied on the model (``current_lora_hash``), not on the loaded networks.
"""
import ast, json, os, sys
from PIL import Image
from modules import scripts, shared

FACES = json.loads(os.environ["LIKENESS_TEST_FACES"])
LOG = os.environ["LIKENESS_TEST_LOG"]
CONTROL = os.environ["LIKENESS_TEST_CONTROL"]


def _loaded(p):
    networks = sys.modules["networks"]  # A1111's built-in Lora extension
    # Forge (lllyasviel's, Classic, Neo) leaves each loaded network's te/unet_multiplier at 1.0 and applies the
    # strengths it keeps on the model: current_lora_hash = str([[filename, unet, te, ...], ...]), set by its
    # load_networks for the networks it just loaded. A1111 has no such field and sets the multipliers.
    applied = {}
    targets = getattr(getattr(p, "sd_model", None), "current_lora_hash", None)
    if isinstance(targets, str) and targets.startswith("["):
        applied = {t[0]: (t[2], t[1]) for t in ast.literal_eval(targets) if isinstance(t, list) and len(t) >= 3}
    loaded = []
    for n in networks.loaded_networks:
        te, unet = applied.get(getattr(getattr(n, "network_on_disk", None), "filename", None), (n.te_multiplier, n.unet_multiplier))
        loaded.append([n.name, te, unet, len(n.modules)])
    return loaded


class _NaNLatents:
    @property
    def already_decoded(self):
        from modules import devices
        raise devices.NansException("A tensor with NaNs was produced in Unet. Use --disable-nan-check commandline "
                                    "argument to disable this check.")


def _host_checks_nans():
    """A1111 raises NansException on NaN latents (unless --disable-nan-check); Forge Classic's
    devices.test_for_nans returns without looking."""
    import torch
    from modules import devices
    try:
        devices.test_for_nans(torch.full((1,), float("nan")), "unet")
    except devices.NansException:
        return True
    return False


class Script(scripts.Script):
    def title(self):
        return "Likeness test faces"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def before_process(self, p, *args):
        shared.cmd_opts.disable_nan_check = True  # as the server was started (a NaN cell switched it on)

    def post_sample(self, p, ps, *args):
        try:
            with open(CONTROL, encoding="utf-8") as handle:
                name, multiplier = json.load(handle)["nan_for"]
        except (OSError, ValueError, KeyError):
            return
        if [[n[0], n[2]] for n in _loaded(p)] == [[name, multiplier]]:
            shared.cmd_opts.disable_nan_check = False  # A1111's own check runs on these latents next
            ps.samples = ps.samples * float("nan")
            if not _host_checks_nans():
                # Forge Classic: no NaN check, and an exception raised in a script hook is caught and logged there.
                # These latents raise what A1111's check would when process_images itself reads them next
                # (its `getattr(samples, "already_decoded", False)`), so the cell fails out of process_images as on A1111.
                ps.samples = _NaNLatents()

    def postprocess_image(self, p, pp, *args):
        loaded = [n[:3] for n in _loaded(p)]
        modules = {n[0]: n[3] for n in _loaded(p)}
        parsed = {k: [x.items for x in v] for k, v in (p.extra_network_data or {}).items()}
        path = FACES.get(loaded[0][0] if loaded else "")  # "": the photo for images without a LoRA
        if path:
            pp.image = Image.open(path).convert("RGB")
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps({"prompt": p.prompt, "loaded": loaded, "modules": modules, "parsed": parsed, "photo": path,
                                  "is_sdxl": bool(getattr(shared.sd_model, "is_sdxl", False))}) + "\\n")
'''


def _umask() -> int:
    """This process's umask (the server inherits it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _a1111_python() -> str:
    python = os.environ.get("A1111_PYTHON")
    if not python:
        pytest.fail("A1111_PYTHON is not set: the host tests need A1111's venv (see tests/integration/README.md)")
    return python


def _square_photo(source: Path, target: Path, side: int = 256) -> Path:
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        ImageOps.fit(ImageOps.exif_transpose(image).convert("RGB"), (side, side)).save(target)
    return target


def _write_lora(path: Path, epoch: int, seed: int) -> None:
    """A tiny SD1.5 Kohya LoRA: one UNet and one text-encoder module, alpha, ss_* metadata."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for key, width in (("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320),
                       ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768)):
        tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((4, width)) * 0.01).astype(np.float16)
        tensors[f"{key}.lora_up.weight"] = (rng.standard_normal((width, 4)) * 0.01).astype(np.float16)
        tensors[f"{key}.alpha"] = np.array(4.0, dtype=np.float16)
    metadata = {"ss_epoch": str(epoch), "ss_output_name": RUN, "ss_base_model_version": "sd_v1",
                "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "4"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def _sd15_checkpoint(python: str) -> Path:
    given = os.environ.get("A1111_CKPT")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "likeness-tests"
    path = cache / "sd15_random_fp16.safetensors"
    if not path.exists():  # 2.1 GB, about 25 s; kept for later runs
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        subprocess.run([python, str(SHARED / "tools" / "make_random_sd15.py"), str(partial), "--dtype", "fp16", "--seed", "0"],
                       check=True, timeout=600)
        os.replace(partial, path)
    return path


def _hf_home(root: Path) -> Path:
    """An offline Hugging Face cache holding only the CLIP tokenizer and config A1111 reads."""
    snapshot = "0" * 40
    model = root / "hub" / "models--openai--clip-vit-large-patch14"
    (model / "refs").mkdir(parents=True)
    (model / "refs" / "main").write_text(snapshot, encoding="utf-8")
    files = model / "snapshots" / snapshot
    files.mkdir(parents=True)
    for source in (SHARED / "tokenizers" / "sd1_clip").iterdir():
        shutil.copy(source, files / source.name)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class A1111Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path, data: Path, test_log: Path, faces: dict):
        self.url, self.process, self.log, self.data, self.test_log, self.faces = url, process, log, data, test_log, faces

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 900) -> dict:
        request = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            pytest.fail(f"{method} {path}: HTTP {error.code}: {error.read()[:2000]!r}\n--- server log ---\n{self.tail()}")

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-n:] if self.log.exists() else ""


def _die_with_parent() -> None:
    """In the server's process before it starts: killed when the test process dies without stopping it (Linux;
    a killed pytest must not leave a 9 GB server behind on a shared machine)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def running_a1111(a1111_dir: Path, root: Path, checkpoint: Path, write_loras: Callable[[Path], None], faces: dict[str, str],
                  args: Sequence[str] = (), config: dict | None = None, ready_s: float = 420) -> Iterator[A1111Server]:
    """A1111 (``launch.py --nowebui --api``, CPU, offline) in its own process group with a throw-away data folder
    under ``root``: this repository and the face injector as extensions, ``write_loras(<Lora folder>)``'s files,
    ``faces`` (LoRA name -> photo the injector shows), the reference photos; stopped when the block ends."""
    python = _a1111_python()
    data = root / "data"
    (data / "extensions").mkdir(parents=True)
    shutil.copytree(REPO, data / "extensions" / "sd-webui-likeness", ignore=_COPY_IGNORE)
    injector = data / "extensions" / "likeness-test-faces" / "scripts" / "test_faces.py"
    injector.parent.mkdir(parents=True)
    injector.write_text(FACE_INJECTOR, encoding="utf-8")
    settings = {"live_previews_enable": False, "show_progress_every_n_steps": -1, **(config or {})}
    (data / "config.json").write_text(json.dumps(settings), encoding="utf-8")
    loras = data / "models" / "Lora" / "likeness_test"
    write_loras(loras)
    refs = root / "refs"
    refs.mkdir()
    for photo in OBAMA[:-1]:
        shutil.copy(photo, refs / photo.name)
    test_log = root / "injector.jsonl"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HOME=str(_hf_home(root / "hf")), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COMMANDLINE_ARGS="",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", no_proxy="127.0.0.1,localhost",
               LIKENESS_TEST_FACES=json.dumps(faces), LIKENESS_TEST_LOG=str(test_log), LIKENESS_CACHE_DIR=str(root / "cache"),
               LIKENESS_TEST_CONTROL=str(root / "control.json"),
               PYTHONDONTWRITEBYTECODE="1")
    command = [python, "launch.py", "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check",
               "--use-cpu", "all", "--precision", "full", "--disable-opt-split-attention", "--api", "--nowebui",
               "--server-name", "127.0.0.1", "--port", str(port), "--ckpt", str(checkpoint),
               "--data-dir", str(data), "--no-download-sd-model", "--no-hashing",
               "--disable-nan-check", *args,  # random weights: a LoRA on them can overflow to NaN
               # a fork's own flags, e.g. Forge Classic's --always-cpu on a machine without CUDA (tests/integration/README.md)
               *shlex.split(os.environ.get("A1111_EXTRA_ARGS", ""))]
    log = root / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=a1111_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    server = A1111Server(f"http://127.0.0.1:{port}", process, log, data, test_log, faces)
    server.refs, server.loras, server.control, server.cwd = refs, loras, root / "control.json", a1111_dir
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"A1111 exited with {process.returncode}\n{server.tail()}")
            try:
                with urllib.request.urlopen(server.url + "/sdapi/v1/sd-models", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"A1111 did not answer within {ready_s:g} s\n{server.tail()}")
                time.sleep(2)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _cell_faces(photos: Path, stems: Sequence[str]) -> dict[str, str]:
    """The photo the test's hook puts in place of each cell's image: epoch 1 someone else (low score), epoch 2 the
    person (not a reference photo), no LoRA someone else (the floor); the final file keeps its generated noise (no face)."""
    photos.mkdir()
    return {
        stems[0]: str(_square_photo(BUSH[0], photos / "e1_bush.png")),
        stems[1]: str(_square_photo(OBAMA[-1], photos / "e2_obama.png")),
        "": str(_square_photo(BUSH[1], photos / "no_lora_bush.png")),
    }


@pytest.fixture(scope="module")
def a1111_server(a1111_dir: Path, tmp_path_factory) -> A1111Server:
    assert (a1111_dir / "repositories" / "stable-diffusion-stability-ai" / "ldm").is_dir(), (
        f"{a1111_dir}/repositories is not filled; see tests/integration/README.md")
    root = tmp_path_factory.mktemp("a1111")

    def write_loras(folder: Path) -> None:
        for epoch, stem in enumerate(STEMS, start=1):
            _write_lora(folder / f"{stem}.safetensors", epoch, seed=epoch)

    faces = _cell_faces(root / "photos", STEMS)
    checkpoint = _sd15_checkpoint(_a1111_python())
    with running_a1111(a1111_dir, root, checkpoint, write_loras, faces, args=["--no-half"]) as server:
        yield server


def _core_scores(photos: list[str], refs: Path) -> list[float | None]:
    """What the core says for the same files, in this (pytest's) interpreter."""
    from lora_likeness import faces, pipeline

    engine = faces.FaceEngine.load(str(PACK))
    run = pipeline.score_folder(engine, refs, Path(photos[0]).parent, settings=pipeline.ScoreSettings(group_by="none"))
    by_name = {Path(image.path).name: image.score.value("max") for image in run.images}
    return [by_name[Path(p).name] for p in photos]


def _txt2img(server: A1111Server, timeout: float = 900, **extra) -> dict:
    """``/sdapi/v1/txt2img`` with small CPU defaults and ``extra`` fields; ``timeout`` in seconds for the whole call."""
    body = {"prompt": "photo of a person", "negative_prompt": "", "width": 64, "height": 64, "steps": 2, "seed": 1,
            "sampler_name": "Euler", "scheduler": "automatic", "cfg_scale": 5, "send_images": True, "save_images": False}
    body.update(extra)
    return server.call("POST", "/sdapi/v1/txt2img", body, timeout=timeout)


def _likeness(text: str) -> float | None:
    """The ``Likeness:`` value of an infotext (None for ``no face``); fails when absent."""
    match = re.search(r"(?:^|, )Likeness: ([^,\n]+)", text)
    assert match, f"no Likeness field in {text!r}"
    return None if match.group(1) == "no face" else float(match.group(1))


def _close(value: float | None, expected: float | None) -> bool:
    # Printed with 3 decimals; the core's float32 and this float64 mean may round apart.
    return value is None if expected is None else value is not None and abs(value - expected) <= 1.5e-3


def _grids_dir(server: A1111Server) -> Path:
    """Where the server saves txt2img grids: its ``outdir_grids`` / ``outdir_txt2img_grids`` options (A1111:
    ``<data>/outputs/txt2img-grids``; Forge Classic: ``<data>/output/txt2img-grids``), relative to its folder."""
    options = server.call("GET", "/sdapi/v1/options")
    folder = Path(options.get("outdir_grids") or options["outdir_txt2img_grids"])
    return folder if folder.is_absolute() else server.cwd / folder


def _likeness_args(server: A1111Server) -> dict:
    return {"likeness identity score": {"args": [True, str(server.refs), str(PACK), "max"]}}


def test_a1111_lists_the_likeness_script_and_axes(a1111_server: A1111Server) -> None:
    info = a1111_server.call("GET", "/sdapi/v1/script-info")
    ours = [s for s in info if s["name"] == "likeness identity score"]
    assert {s["is_img2img"] for s in ours} == {False, True}, [s["name"] for s in info]
    assert all(s["is_alwayson"] for s in ours)
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    choices = xyz["args"][0]["choices"]
    assert "Likeness: LoRA epoch" in choices and "Likeness: LoRA strength" in choices, choices


def test_plain_txt2img_scores_each_image_into_its_infotext(a1111_server: A1111Server) -> None:
    result = _txt2img(a1111_server, prompt=f"photo of a person, <lora:{STEMS[1]}:0.8>", batch_size=2,
                      alwayson_scripts=_likeness_args(a1111_server))
    info = json.loads(result["info"])
    expected = _core_scores([a1111_server.faces[STEMS[1]]], a1111_server.refs)[0]
    assert expected is not None and expected > 0.3
    per_image = info["infotexts"][-2:]
    for text in per_image:
        assert _close(_likeness(text), expected), text
    # The summary goes to the UI's comments (not part of the API's answer) and to the console.
    assert f"[Likeness] mean {expected:.3f} over 2 image(s), 2 with a face" in a1111_server.tail(), a1111_server.tail()


def test_img2img_scores_too(a1111_server: A1111Server) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(buffer, format="PNG")
    body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "prompt": f"photo, <lora:{STEMS[0]}:1>",
            "width": 64, "height": 64, "steps": 2, "denoising_strength": 0.5, "seed": 1, "sampler_name": "Euler",
            "cfg_scale": 5, "send_images": True, "save_images": False, "alwayson_scripts": _likeness_args(a1111_server)}
    info = json.loads(a1111_server.call("POST", "/sdapi/v1/img2img", body)["info"])
    expected = _core_scores([a1111_server.faces[STEMS[0]]], a1111_server.refs)[0]
    assert _close(_likeness(info["infotexts"][0]), expected), info["infotexts"][0]


def test_xyz_over_the_likeness_axes_scores_every_cell(a1111_server: A1111Server) -> None:
    server = a1111_server
    info = server.call("GET", "/sdapi/v1/script-info")
    choices = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])["args"][0]["choices"]
    epoch_axis, strength_axis = choices.index("Likeness: LoRA epoch"), choices.index("Likeness: LoRA strength")
    server.test_log.write_text("", encoding="utf-8")
    # Dropdown axes take their values from *_values_dropdown unless csv_mode (the last argument) is on.
    script_args = [epoch_axis, "", STEMS, strength_axis, "0.5, 1", [], 0, "", [], True, True, False, False,
                   False, False, False, 0, False]
    result = _txt2img(server, prompt="photo of a person", script_name="x/y/z plot", script_args=script_args,
                      alwayson_scripts=_likeness_args(server), save_images=True)
    info = json.loads(result["info"])

    # What A1111 parsed and loaded for each cell: the axes' LoRA at the axis' strength.
    cells = [json.loads(line) for line in server.test_log.read_text(encoding="utf-8").splitlines()]
    loaded = sorted((c["loaded"][0][0], c["loaded"][0][2]) for c in cells)
    assert loaded == sorted((stem, s) for stem in STEMS for s in (0.5, 1.0)), cells
    assert all(c["parsed"]["lora"] == [[c["loaded"][0][0], f"{c['loaded'][0][2]:g}"]] for c in cells), cells

    e1, e2 = _core_scores([server.faces[STEMS[0]], server.faces[STEMS[1]]], server.refs)
    assert e1 is not None and e2 is not None and e2 > e1 + 0.2, (e1, e2)
    expected = {STEMS[0]: e1, STEMS[1]: e2, STEMS[2]: None}
    grid_mean = (2 * e1 + 2 * e2) / 4

    # 1 grid + 6 cells (include_lone_images); the grid's infotext carries the grid mean, each
    # cell's the cell's score, and the comments the summary.
    assert len(result["images"]) == 7
    texts = info["infotexts"]
    assert _close(_likeness(texts[0]), grid_mean), texts[0]
    for text in texts[1:]:
        stem = re.search(r"<lora:([^:>]+):", text).group(1)
        assert _close(_likeness(text), expected[stem]), text
    console = server.tail(20000)
    mean_line = re.search(r"\[Likeness\] Likeness \(identity score, max\): grid mean ([0-9.-]+)", console)
    assert mean_line and _close(float(mean_line.group(1)), grid_mean), console
    assert "[Likeness] | jxtest e2 | strength 1 | 1 | 1 |" in console, console

    # The grid was saved with the mean in its infotext, and the reports beside it.
    grids = sorted(_grids_dir(server).rglob("xyz_grid-*.png"))
    assert grids, "no grid saved"
    from PIL import Image

    with Image.open(grids[-1]) as saved:
        assert _close(_likeness(saved.info["parameters"]), grid_mean), saved.info["parameters"]
        assert saved.size == Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).size
    csv_path = grids[-1].with_name(grids[-1].stem + "-likeness_scores.csv")
    json_path = grids[-1].with_name(grids[-1].stem + "-likeness_scores.json")
    assert csv_path.is_file() and json_path.is_file(), sorted(p.name for p in grids[-1].parent.iterdir())
    # The reports get the permissions A1111's own files get (the umask's, 0644 under 022), not mkstemp's 0600.
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (grids[-1], csv_path, json_path)}
    assert set(modes.values()) == {0o666 & ~_umask()}, {name: oct(mode) for name, mode in modes.items()}
    report = json.loads(json_path.read_text(encoding="utf-8"))
    groups = {g["label"]: g for g in report["groups"]}
    assert set(groups) == {f"jxtest {c} | strength {s}" for c in ("e1", "e2", "final (e3)") for s in ("0.5", "1")}, groups
    for label, group in groups.items():
        value = e1 if " e1 " in label else e2 if " e2 " in label else None
        assert group["n_images"] == 1
        assert _close(group["mean"], value), (label, group)
    # Ordered by the core's group order: epoch, then strength.
    assert [g["label"] for g in report["groups"]][:2] == ["jxtest e1 | strength 0.5", "jxtest e1 | strength 1"]
    # The grid sweeps the LoRA: the core's recommendation is in the report and the grid infotext. Both
    # e2 cells hold the same photo; the tie goes to the earlier cell in sweep order.
    assert report["recommendation"]["best"] == "jxtest e2 @ 0.5", report["recommendation"]["headline"]
    assert "Likeness recommendation: jxtest e2 @ 0.5" in texts[0], texts[0]
    rows = csv_path.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("path,group,face_found") and len(rows) == 7
    # Each cell image was saved (save_images) with its score in its infotext; the report names it.
    for image in report["images"]:
        saved_cell = Path(image["path"])
        assert saved_cell.is_file() and saved_cell.parent.parent.name == "txt2img-images", image["path"]
        with Image.open(saved_cell) as cell_file:
            assert _close(_likeness(cell_file.info["parameters"]), image["score_max"]), image
    if os.environ.get("LIKENESS_SCREENSHOT_DIR"):  # README picture: the grid A1111 saved
        target = Path(os.environ["LIKENESS_SCREENSHOT_DIR"])
        shutil.copy(grids[-1], target / "xyz_grid_scored.png")
        lone = [Image.open(io.BytesIO(base64.b64decode(image))) for image in result["images"][1:]]
        _blank_photos(Image.open(grids[-1]), lone, columns=3, rows=2).save(target / "xyz_grid_scored_blanked.png")


def _cell_area(grid, cells: list, columns: int, rows: int) -> tuple[int, int]:
    """Where A1111's image_grid + draw_grid_annotations put the first cell (no margin): the labels
    take the left and the top; below the cells may be our recommendation band, so the top is found
    by matching the upper quarter of the first cell (badges sit at the bottom) row by row."""
    import numpy as np

    width, height = max(c.width for c in cells), max(c.height for c in cells)
    left = grid.width - columns * width
    pixels = np.asarray(grid.convert("RGB")).astype(int)
    first = np.asarray(cells[0].convert("RGB")).astype(int)[: height // 4]
    tops = range(grid.height - rows * height + 1)
    top = min(tops, key=lambda y: np.abs(pixels[y:y + height // 4, left:left + first.shape[1]] - first).mean())
    return left, top


def _blank_photos(grid, cells: list, columns: int, rows: int):
    """The scored grid with the photos' own pixels greyed out, keeping what Likeness drew on them
    (the test photos may not be redistributed; the README shows this version)."""
    import numpy as np
    from PIL import Image

    out = np.asarray(grid.convert("RGB")).copy()
    width, height = max(c.width for c in cells), max(c.height for c in cells)
    left, top = _cell_area(grid, cells, columns, rows)
    for index, clean in enumerate(cells):
        x = left + (index % columns) * width + (width - clean.width) // 2
        y = top + (index // columns) * height + (height - clean.height) // 2
        region = out[y:y + clean.height, x:x + clean.width]
        drawn = np.abs(region.astype(int) - np.asarray(clean.convert("RGB")).astype(int)).sum(axis=2) > 24
        band = clean.height * 4 // 5  # the badge sits bottom-left: keep its whole box (black ground)
        ys, xs = np.nonzero(drawn[band:])
        if len(xs):
            pad = max(2, clean.height // 64)
            window = (slice(max(0, band + ys.min() - 2 * pad), None), slice(0, xs.max() + 2 * pad))
            drawn[window] |= (region[window] == 0).all(axis=2)
        region[~drawn] = 200
    return Image.fromarray(out)


def test_xyz_recommends_a_checkpoint_under_the_grid(a1111_server: A1111Server) -> None:
    """Epoch ("None" = no LoRA, e1, e2) x strength (0.5, 1) over the Likeness axes: the core's
    recommendation under the grid image, in the infotext, in the console (what the UI shows under
    the gallery) and in the JSON report, with the no-LoRA cells as its floor."""
    server = a1111_server
    info = server.call("GET", "/sdapi/v1/script-info")
    choices = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])["args"][0]["choices"]
    epoch_axis, strength_axis = choices.index("Likeness: LoRA epoch"), choices.index("Likeness: LoRA strength")
    server.test_log.write_text("", encoding="utf-8")
    values = ["None", STEMS[0], STEMS[1]]
    script_args = [epoch_axis, "", values, strength_axis, "0.5, 1", [], 0, "", [], True, True, False, False,
                   False, False, False, 0, False]
    result = _txt2img(server, prompt=f"photo of a person, <lora:{STEMS[2]}:1>", script_name="x/y/z plot",
                      script_args=script_args, alwayson_scripts=_likeness_args(server), save_images=True)
    texts = json.loads(result["info"])["infotexts"]

    # "None" took the run's tag out of the prompt: A1111 loaded no LoRA for those two cells.
    cells = [json.loads(line) for line in server.test_log.read_text(encoding="utf-8").splitlines()]
    assert len(cells) == 6 and sum(c["loaded"] == [] and "<lora:" not in c["prompt"] for c in cells) == 2, cells

    floor, e1, e2 = _core_scores([server.faces[""], server.faces[STEMS[0]], server.faces[STEMS[1]]], server.refs)
    assert floor is not None and e2 > max(floor, e1) + 0.2, (floor, e1, e2)
    grids = sorted(_grids_dir(server).rglob("xyz_grid-*.png"))
    report = json.loads(grids[-1].with_name(grids[-1].stem + "-likeness_scores.json").read_text(encoding="utf-8"))
    advice = report["recommendation"]
    assert advice["best"] == "jxtest e2 @ 0.5", advice["headline"]  # e2 @0.5 and @1: the same photo, the earlier wins
    assert _close(advice["floor"], floor) and advice["ceiling"] > 0.4
    cells_by_label = {cell["label"]: cell for cell in advice["cells"]}
    assert cells_by_label["no LoRA"]["stats"]["n_images"] == 1  # two "None" cells, the same image: counted once
    assert set(cells_by_label) == {"no LoRA"} | {f"jxtest {e} @ {s}" for e in ("e1", "e2") for s in ("0.5", "1")}

    assert "Likeness recommendation: jxtest e2 @ 0.5" in texts[0], texts[0]
    console = server.tail(20000)
    assert f"[Likeness] {advice['headline']}" in console, console
    assert advice["headline"].startswith("Recommended: jxtest e2 @ 0.5 — identity "), advice["headline"]

    # The grid image (returned and saved) has the recommendation band under the cells.
    import numpy as np
    from PIL import Image

    lone = [Image.open(io.BytesIO(base64.b64decode(image))) for image in result["images"][1:]]
    with Image.open(grids[-1]) as saved:
        assert _close(_likeness(saved.info["parameters"]), (2 * floor + 2 * e1 + 2 * e2) / 6), saved.info["parameters"]
        assert "Likeness recommendation: jxtest e2 @ 0.5" in saved.info["parameters"]
        grid = saved.convert("RGB")
    _, top = _cell_area(grid, lone, columns=3, rows=2)
    below = top + 2 * max(image.height for image in lone)
    assert grid.height - below >= 12, (grid.size, top)
    band = np.asarray(grid.convert("L"))[below:]
    assert band.min() < 60 and band.max() > 200  # dark text on a light band


def test_xyz_with_named_reference_folders_scores_each_person_and_recommends_for_the_worst_served(
        a1111_server: A1111Server, tmp_path: Path) -> None:
    """Named reference folders (``obama=…; bush=…``) over the same epoch x strength grid, prompted with both
    names: every cell's per-person scores, the family recommendation (the worst-served rule) in the JSON, the
    console and the band under the grid. The photos: no LoRA and e1 bush (obama missing), e2 obama (bush missing),
    so no cell shows the whole family: there is no family recommendation (no ``Likeness recommendation`` in
    the grid infotext), it says which cell misses whom, and each person's best cell is given instead."""
    from PIL import Image

    server = a1111_server
    bush_refs = tmp_path / "bush"
    bush_refs.mkdir()
    for photo in BUSH[2:]:  # BUSH[0] and BUSH[1] are the cells' photos: not references
        shutil.copy(photo, bush_refs / photo.name)
    named = f"obama={server.refs}; bush={bush_refs}"
    info = server.call("GET", "/sdapi/v1/script-info")
    choices = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])["args"][0]["choices"]
    epoch_axis, strength_axis = choices.index("Likeness: LoRA epoch"), choices.index("Likeness: LoRA strength")
    script_args = [epoch_axis, "", ["None", STEMS[0], STEMS[1]], strength_axis, "0.5, 1", [], 0, "", [], True, True, False, False,
                   False, False, False, 0, False]
    result = _txt2img(server, prompt=f"photo of obama and bush, <lora:{STEMS[2]}:1>", script_name="x/y/z plot",
                      script_args=script_args, save_images=True,
                      alwayson_scripts={"likeness identity score": {"args": [True, named, str(PACK), "max"]}})
    grids = sorted((server.data / "outputs" / "txt2img-grids").rglob("xyz_grid-*.png"))
    report = json.loads(grids[-1].with_name(grids[-1].stem + "-likeness_scores.json").read_text(encoding="utf-8"))
    assert report["people"]["names"] == ["obama", "bush"], report.get("people")
    family = report["people_recommendation"]
    cells = {(c["checkpoint"], c["strength"]): c for c in family["cells"]}
    assert cells[("no LoRA", None)]["n_images"] == 1  # the two "None" cells: the same image, counted once
    for strength in (0.5, 1.0):
        e1, e2 = cells[("jxtest e1", strength)], cells[("jxtest e2", strength)]
        assert e1["people"]["bush"]["presence_rate"] == 1.0 and e1["people"]["obama"]["presence_rate"] == 0.0, e1
        assert e2["people"]["obama"]["presence_rate"] == 1.0 and e2["people"]["bush"]["presence_rate"] == 0.0, e2
        assert e1["worst_served"] == "obama" and e2["worst_served"] == "bush"
    # Each LoRA cell misses someone: no cell for the whole family (an earlier rule let the first tied cell win).
    assert family["best"] is None, family["best"]
    assert "misses obama" in family["reason"] and "misses bush" in family["reason"], family["reason"]
    assert family["best_per_person"]["obama"]["checkpoint"] == "jxtest e2", family["best_per_person"]
    assert family["best_per_person"]["bush"]["checkpoint"] == "jxtest e1", family["best_per_person"]
    texts = json.loads(result["info"])["infotexts"]
    assert "Likeness recommendation:" not in texts[0], texts[0]
    console = server.tail(20000)
    assert "[Likeness] No recommendation for the whole family: " in console, console[-3000:]
    with Image.open(grids[-1]) as saved:
        assert "Likeness recommendation:" not in saved.info["parameters"], saved.info["parameters"]
        grid = saved.convert("RGB")
    lone = [Image.open(io.BytesIO(base64.b64decode(image))) for image in result["images"][1:]]
    _, top = _cell_area(grid, lone, columns=3, rows=2)
    assert grid.height - (top + 2 * max(image.height for image in lone)) >= 12 * 7  # the answer and a line per cell


def test_xyz_cell_that_fails_in_a1111_is_reported_as_missing(a1111_server: A1111Server) -> None:
    """A cell whose generation A1111 aborts (its own NaN check raising NansException for the e2 @ 1 cell):
    A1111 draws a black cell and goes on; the reports, the console and the band under the grid say which
    cell produced no image and why, its image counts as missing (not as "no face"), and the recommendation
    does not score it."""
    server = a1111_server
    info = server.call("GET", "/sdapi/v1/script-info")
    choices = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])["args"][0]["choices"]
    epoch_axis, strength_axis = choices.index("Likeness: LoRA epoch"), choices.index("Likeness: LoRA strength")
    server.test_log.write_text("", encoding="utf-8")
    script_args = [epoch_axis, "", ["None", STEMS[0], STEMS[1]], strength_axis, "0.5, 1", [], 0, "", [], True, True, False,
                   False, False, False, False, 0, False]
    server.control.write_text(json.dumps({"nan_for": [STEMS[1], 1.0]}), encoding="utf-8")
    log_start = len(server.tail(10**9))
    try:
        result = _txt2img(server, prompt=f"photo of a person, <lora:{STEMS[2]}:1>", script_name="x/y/z plot",
                          script_args=script_args, alwayson_scripts=_likeness_args(server), save_images=True)
    finally:
        server.control.unlink()
    console = server.tail(10**9)[log_start:]
    # A1111's own X/Y/Z error handling ran: its NaN check raised in that one cell, the other five were made.
    assert "generating image for xyz plot: NansException" in console, console[-6000:]
    assert "A tensor with NaNs was produced in Unet." in console
    cells = [json.loads(line) for line in server.test_log.read_text(encoding="utf-8").splitlines()]
    assert len(cells) == 5 and [STEMS[1], 1.0, 1.0] not in [c["loaded"][0] for c in cells if c["loaded"]], cells

    label = "jxtest e2 | strength 1"
    reason = ("NansException: A tensor with NaNs was produced in Unet. Use --disable-nan-check commandline argument to "
              "disable this check.")
    grids = sorted(_grids_dir(server).rglob("xyz_grid-*.png"))
    json_path = grids[-1].with_name(grids[-1].stem + "-likeness_scores.json")
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["failed_cells"] == [{"cell": label, "x": 2, "y": 1, "z": 0, "missing_images": 1, "reason": reason}]
    group = next(g for g in report["groups"] if g["label"] == label)
    assert (group["n_images"], group["n_errors"], group["n_faces"], group["no_face_rate"], group["mean"]) == (1, 1, 0, None, None)
    [row] = [image for image in report["images"] if image["group"] == label]
    assert row["error"] == f"no image: {reason}" and row["path"] == f"{label} #1 (no image)"
    line = (f"{label}: no image (NansException: A tensor with NaNs was produced in Unet.); its 1 image(s) count as missing, "
            f"not as 'no face'")
    assert line in report["warnings"] and not any("could not be read" in w for w in report["warnings"]), report["warnings"]
    csv_rows = grids[-1].with_name(grids[-1].stem + "-likeness_scores.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_rows) == 7 and sum(f"no image: {reason}" in r for r in csv_rows) == 1

    # The recommendation: e2 @ 0.5 (the same photo as e2 @ 1 would have had); the failed cell is listed, not scored.
    advice = report["recommendation"]
    assert advice["best"] == "jxtest e2 @ 0.5", advice["headline"]
    failed = next(c for c in advice["cells"] if c["label"] == "jxtest e2 @ 1")
    assert not failed["eligible"] and failed["rank"] is None and failed["reason"] == f"no image was made ({reason})"
    assert failed["stats"]["n_errors"] == 1 and failed["stats"]["no_face_rate"] is None
    assert f"[Likeness] Warning: {line}" in console, console[-6000:]

    # The grid (returned and saved): "no image" where A1111 drew the black cell, and the band saying which and why.
    import numpy as np
    from lora_likeness import grid as core_grid
    from PIL import Image

    lone = [Image.open(io.BytesIO(base64.b64decode(image))) for image in result["images"][1:]]
    assert np.asarray(lone[5].convert("RGB")).max() == 0  # A1111's own black cell, left as A1111 made it
    with Image.open(grids[-1]) as saved:
        grid = saved.convert("RGB")
    assert grid.size == Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).size
    left, top = _cell_area(grid, lone, columns=3, rows=2)
    side = lone[0].width
    drawn = np.asarray(grid)[top + side:top + 2 * side, left + 2 * side:left + 3 * side].reshape(-1, 3).astype(int)
    background = (np.abs(drawn - 32).sum(axis=1) == 0).mean()  # core_grid.draw_no_image: dark grey, red "no image"
    red = (np.abs(drawn - np.array(core_grid.score_colour(None, None))).sum(axis=1) < 60).sum()
    assert background > 0.5 and red > 5, (background, red)
    band = np.asarray(grid)[top + 2 * side:].reshape(-1, 3).astype(int)
    amber = np.abs(band - np.array(core_grid.CAPTION_WARNING)).sum(axis=1) < 60
    assert amber.sum() > 20 and band.min() < 60  # the headline in black, the warnings (this cell's among them) in amber


TAB_DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("lora_likeness_bootstrap", sys.argv[1])
bootstrap = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bootstrap
spec.loader.exec_module(bootstrap)
bootstrap.load_a1111_adapter()
import gradio
from lora_likeness_a1111 import tab

tab.add_section("Later stage", lambda: gradio.Markdown("added by a later stage"))
[(blocks, title, elem_id)] = tab.build_tab()
config = blocks.get_config_file()
kinds = sorted({c["type"] for c in config["components"]})
labels = [c["props"].get("label") or c["props"].get("value") for c in config["components"] if c["type"] in ("tabitem", "button")]
train = {c["props"]["elem_id"]: {k: c["props"].get(k) for k in ("label", "choices", "value")}
         for c in config["components"] if str(c["props"].get("elem_id") or "").startswith("likeness_train_")}
print("LIKENESS_RESULT " + json.dumps({"gradio": gradio.__version__, "title": title, "elem_id": elem_id,
                                       "kinds": kinds, "labels": labels, "train": train}, default=str))
"""


def test_likeness_tab_builds_with_a1111s_gradio(a1111_dir: Path, tmp_path: Path) -> None:
    """The on_ui_tabs callback with the gradio A1111 pins (3.41): the tab is a container of
    sections, and a section added later lands in it."""
    driver = tmp_path / "tab_driver.py"
    driver.write_text(TAB_DRIVER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRADIO_ANALYTICS_ENABLED="False", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([_a1111_python(), str(driver), str(REPO / "likeness_bootstrap.py")], check=False, cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    r = json.loads(lines[-1][len(RESULT_TAG):])
    assert r["gradio"].startswith("3.41")
    assert (r["title"], r["elem_id"]) == ("Likeness", "likeness")
    assert {"dataframe", "image", "textbox", "dropdown", "radio", "button", "tabitem"} <= set(r["kinds"]), r["kinds"]
    assert r["labels"][:3] == ["Score a folder", "Score", "Dataset"], r["labels"]
    assert {"Prepare dataset", "Train", "Later stage"} <= set(r["labels"]), r["labels"]
    # The Train section is not SD1.5-only: the base may be SDXL, and the resolution follows its family unless chosen.
    train = r["train"]
    assert train["likeness_train_base"]["label"] == "Base checkpoint (.safetensors: SD1.x or SDXL, detected from the file)"
    resolution = train["likeness_train_resolution"]
    assert resolution["label"] == "Resolution (auto: 512 px for SD1.x, 1024 px for SDXL)" and resolution["value"] == "auto", resolution
    assert [c if isinstance(c, str) else c[0] for c in resolution["choices"]] == ["auto", "512", "768", "1024"], resolution


def test_a1111_runs_our_install_py_through_its_launcher(a1111_dir: Path, tmp_path: Path) -> None:
    """A1111's own extension-installer runner (launch_utils.run_extension_installer, as at start-up
    after "Install from URL") runs our install.py, which finds A1111's launch module; in a venv
    already set up (see the README) it changes nothing, and A1111's pins are untouched."""
    python = _a1111_python()
    ext = tmp_path / "extensions" / "sd-webui-likeness"
    shutil.copytree(REPO, ext, ignore=_COPY_IGNORE)
    versions = ("import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
                "('numpy', 'Pillow', 'protobuf', 'transformers', 'torch', 'opencv-python')}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    def pins() -> dict:
        return json.loads(subprocess.run([python, "-c", versions], check=True, capture_output=True, text=True, env=env).stdout)

    before = pins()
    code = "import sys; from modules import launch_utils; launch_utils.run_extension_installer(sys.argv[1])"
    proc = subprocess.run([python, "-c", code, str(ext)], check=False, cwd=a1111_dir, env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Error running install.py" not in out, out
    assert "via A1111's launch.run_pip" in out, out
    assert "[Likeness] nothing to do: all requirements are satisfied" in out, out
    assert pins() == before
    assert before["numpy"] == "1.26.2" and before["Pillow"] == "9.5.0" and before["transformers"] == "4.30.2", before
