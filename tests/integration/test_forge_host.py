"""Forge Classic / Forge Neo (``Haoming02/sd-webui-forge-classic``): the extension registers and scores its
X/Y/Z grids there.

Needs ``FORGE_DIR``: a checkout of sd-webui-forge-classic (branch ``classic``, or ``neo``), extracted
outside this repository (see tests/integration/README.md). lllyasviel's Forge keeps A1111's layout and is
tested by test_a1111_host.py with ``A1111_DIR`` pointing at it.

The loader layer, in a subprocess whose working directory and ``sys.path[0]`` are the checkout:
what is Forge's own code and runs here as it is: ``modules/script_loading.py`` (loads both script
files, as ``modules.scripts.load_scripts`` does with the extension folder in front of ``sys.path``),
``modules/script_callbacks.py`` (where the callbacks are registered), ``modules/errors.py``,
``modules/timer.py``, and the whole X/Y/Z extension ``extensions-builtin/xyz`` (``scripts/xyz_grid.py``
with ``class XYZ``, ``lib_xyz.classes.AxisOption``, ``lib_xyz.builtins.builtin_options`` and
``lib_xyz.main.draw_xyz_grid``, which lays out the grid twice through our wrapper). What is stood in
for: the modules that need torch, a model or gradio (``modules.shared``, ``sd_models``, ``sd_samplers``,
``processing``, ``images`` …) by permissive stand-ins; ``images.image_grid`` pastes the cells like
Forge's. The server layer (a running Forge with a model) needs Forge's venv and has not run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LIKENESS_SHARED", REPO.parent / "shared"))
RESULT_TAG = "LIKENESS_RESULT "


@pytest.fixture(scope="module")
def forge_dir() -> Path:
    value = os.environ.get("FORGE_DIR")
    if not value:
        pytest.skip("FORGE_DIR is not set (path to a sd-webui-forge-classic checkout, branch classic or neo; "
                    "see tests/integration/README.md)")
    path = Path(value).resolve()
    assert (path / "extensions-builtin" / "xyz" / "scripts" / "xyz_grid.py").is_file(), (
        f"FORGE_DIR={path} has no extensions-builtin/xyz/scripts/xyz_grid.py (is it Forge Classic / Neo?)")
    return path


def test_forge_xyz_still_has_what_our_hooks_wrap(forge_dir: Path) -> None:
    """The names a1111_extension/xyz_hooks.py and axes.py rely on in Forge's X/Y/Z extension."""
    xyz = forge_dir / "extensions-builtin" / "xyz"
    expected = {
        xyz / "scripts" / "xyz_grid.py": [
            "class XYZ(scripts.Script):",
            "from lib_xyz.classes import AxisOption",
            "axis_options = builtins.builtin_options",
            "res = process_images(pc)",
            'res = Processed(p, [], p.seed, "")',
            "processed = draw_xyz_grid(",
        ],
        xyz / "lib_xyz" / "main.py": [
            "def draw_xyz_grid(", "    include_sub_grids,", "    margin_size,", "processed: Processed = cell(x, y, z, ix, iy, iz)",
        ],
        xyz / "lib_xyz" / "classes.py": ["class AxisOption:"],
        forge_dir / "modules" / "script_loading.py": ["module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)"],
    }
    for path, lines in expected.items():
        source = path.read_text(encoding="utf-8")
        for line in lines:
            assert line in source, f"{path.relative_to(forge_dir)} no longer has `{line}`: check a1111_extension/xyz_hooks.py / axes.py"


DRIVER = r'''
import json, os, sys, types
from unittest import mock
FORGE_DIR, REPO, PACK, REFS, PHOTOS, LORA_DIR, RESULT_TAG = {consts}
sys.path.insert(0, FORGE_DIR)  # `python launch.py` from the checkout
os.chdir(FORGE_DIR)


class Permissive(types.ModuleType):
    """A stand-in for a module that needs torch, a model or gradio: any other name is a MagicMock."""
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=f"{{self.__name__}}.{{name}}")
        setattr(self, name, value)
        return value


def stand_in(name, **attributes):
    module = Permissive(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


from PIL import Image

class Processed:
    def __init__(self, p, images_list, seed=-1, info="", **_):
        self.images, self.seed, self.info = images_list, seed, info
        self.prompt = getattr(p, "prompt", "")
        self.width, self.height = getattr(p, "width", 64), getattr(p, "height", 64)
        self.infotexts = [info] * len(images_list)
        self.all_prompts, self.all_seeds, self.comments, self.index_of_first_image = [], [], "", 0

def image_grid(imgs, batch_size=1, rows=None):  # Forge's modules/images.image_grid, without its options
    cols = (len(imgs) + rows - 1) // rows
    w, h = imgs[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(imgs):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid

class Script:  # modules.scripts.Script: what subclasses need at class level
    def elem_id(self, item_id):
        return item_id

for name in ("fastapi", "gradio"):
    try:
        __import__(name)
    except ImportError:
        stand_in(name)
stand_in("modules.shared", cmd_opts=types.SimpleNamespace(lora_dir=LORA_DIR),
         state=types.SimpleNamespace(interrupted=False, stopping_generation=False, job="", job_count=0))
for name in ("modules.sd_models", "modules.sd_vae", "modules.sd_samplers", "modules.sd_samplers_kdiffusion", "modules.ui_components"):
    stand_in(name)
stand_in("modules.processing", Processed=Processed, process_images=lambda p: None)  # the cell below makes the image
stand_in("modules.images", image_grid=image_grid, draw_grid_annotations=lambda im, *a, **k: im,
         GridAnnotation=lambda *a, **k: None)
stand_in("modules.paths", models_path=os.path.join(FORGE_DIR, "models"))
scripts = stand_in("modules.scripts", Script=Script, scripts_data=[])

from modules import script_loading, script_callbacks  # Forge's own
real = {{name: sys.modules[name].__file__ for name in ("modules.script_loading", "modules.script_callbacks", "modules.errors")}}

def load_scripts_like_forge(basedir):
    loaded = []
    scripts_dir = os.path.join(basedir, "scripts")
    for filename in sorted(os.listdir(scripts_dir)):
        path = os.path.join(scripts_dir, filename)
        syspath = sys.path
        try:
            sys.path = [basedir] + sys.path
            module = script_loading.load_module(path)
        finally:
            sys.path = syspath
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Script) and value is not Script:
                scripts.scripts_data.append(types.SimpleNamespace(script_class=value, path=path, basedir=basedir, module=module))
        loaded.append(module)
    return loaded

(xyz,) = load_scripts_like_forge(os.path.join(FORGE_DIR, "extensions-builtin", "xyz"))  # builtins load first
original_run = xyz.XYZ.run
load_scripts_like_forge(REPO)  # scripts/likeness.py: registers the axes, hooks and callbacks
load_scripts_like_forge(REPO)  # a UI reload loads every script again

import lib_xyz.classes, lib_xyz.main
from lora_likeness_a1111 import axes, xyz_hooks, scorer as likeness_scorer
labels = [option.label for option in xyz.axis_options]
ours_axes = [o for o in xyz.axis_options if o.label.startswith("Likeness")]

# The epoch x strength axes over LoRA files of other families than SD1.5 (Forge Neo loads them all).
xs = ["None", "zimg-000001", "zimg-000002"]
ys = [0.5, 1.0]
cells_prompts = {{}}
score = likeness_scorer.get_scorer(REFS, PACK, "max")

def square(path, side=128):
    from PIL import ImageOps
    return ImageOps.fit(Image.open(path).convert("RGB"), (side, side))

photo_of = {{("None", 0.5): PHOTOS[-1], ("None", 1.0): PHOTOS[-1], ("zimg-000001", 0.5): PHOTOS[-2],
            ("zimg-000001", 1.0): PHOTOS[-2], ("zimg-000002", 0.5): PHOTOS[-2], ("zimg-000002", 1.0): PHOTOS[0]}}

def cell(x, y, z, ix, iy, iz):  # as XYZ.run's cell: a copy of p, the axes applied, process_images
    pc = types.SimpleNamespace(prompt="photo of jx, <lora:zimg:1>", width=128, height=128, seed=7)
    ours_axes[0].apply(pc, x, xs)
    ours_axes[1].apply(pc, y, ys)
    cells_prompts[(ix, iy)] = pc.prompt
    picture = square(photo_of[(x, y)])
    scored = score.score_images([picture], ["image"])
    processed = xyz.process_images(pc) or Processed(pc, [picture], 7, "photo\nSteps: 2, Seed: 7")
    processed.likeness = xyz_hooks.CellScores(score, scored, [picture], axes.state_of(pc).info(), prompt=pc.prompt, seeds=[7])
    return processed

p = types.SimpleNamespace(prompt="photo of jx, <lora:zimg:1>", width=128, height=128, seed=7, n_iter=1, batch_size=1)
processed = xyz.draw_xyz_grid(p, xs=xs, ys=ys, zs=[""], x_labels=[ours_axes[0].format_value(p, ours_axes[0], x) for x in xs],
                              y_labels=[ours_axes[1].format_value(p, ours_axes[1], y) for y in ys], z_labels=[""], cell=cell,
                              draw_legend=True, include_lone_images=False, include_sub_grids=False,
                              first_axes_processed="x", second_axes_processed="y", margin_size=0)
grid_scores = xyz_hooks.grid_of(processed.images[0])
advice = grid_scores.recommendation()
print(RESULT_TAG + json.dumps({{
    "real": {{**real, "lib_xyz.main": lib_xyz.main.__file__, "lib_xyz.classes": lib_xyz.classes.__file__}},
    "xyz_module": xyz.__name__, "xyz_file": xyz.__file__,
    "axis_option_class": f"{{type(ours_axes[0]).__module__}}.{{type(ours_axes[0]).__name__}}",
    "is_lib_xyz_class": type(ours_axes[0]) is lib_xyz.classes.AxisOption,
    "labels_tail": labels[-3:], "likeness_axes": len(ours_axes),
    "run_wrapped": getattr(xyz.XYZ.run, xyz_hooks.WRAPPED_MARK, None) is original_run,
    "draw_wrapped_real": getattr(xyz.draw_xyz_grid, xyz_hooks.WRAPPED_MARK, None) is lib_xyz.main.draw_xyz_grid,
    "callbacks": {{key: [c.callback.__qualname__ for c in script_callbacks.callback_map[key]]
                  for key in ("callbacks_before_image_saved", "callbacks_image_saved", "callbacks_ui_tabs")}},
    "epoch_choices": ours_axes[0].choices(),
    "prompts": {{f"{{k[0]}},{{k[1]}}": v for k, v in sorted(cells_prompts.items())}},
    "cells_scored": len(grid_scores.cells), "grid_images": len(processed.images),
    "best": advice.best.label if advice.best else None,
    "main_taller_than_sub": processed.images[0].height > processed.images[1].height,
}}))
'''


def _lora(path: Path, epoch: int, keys: dict) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: np.zeros(shape, np.float16) for key, shape in keys.items()}, str(path), metadata={"ss_epoch": str(epoch)})


#: LoRA keys of the families Forge Neo loads besides SD1.5, in kohya's naming (musubi-tuner / sd-scripts):
#: a Z-Image LoRA (its transformer's ``layers.N``) and a Flux LoRA (``double_blocks``); the axes must find
#: and rewrite them like any other. (Files in diffusers/PEFT key layouts are left out of the epoch axis on
#: every host: see the integration README.)
ZIMAGE_KEYS = {"lora_unet_layers_0_attention_to_q.lora_down.weight": (4, 64),
               "lora_unet_layers_0_attention_to_q.lora_up.weight": (64, 4)}
FLUX_KEYS = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 64),
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (192, 4)}


def test_forge_loads_our_script_registers_axes_callbacks_and_scores_a_grid(forge_dir: Path, tmp_path: Path) -> None:
    pack = SHARED / "models" / "insightface" / "models" / "likeness_test"
    people = SHARED / "faces" / "people"
    if not pack.is_dir():
        pytest.fail(f"the shared face pack is missing: {pack}")
    refs = tmp_path / "refs"
    refs.mkdir()
    obama = sorted((people / "obama").iterdir())
    bush = sorted((people / "lfw_george_w_bush").iterdir())
    for photo in obama[:-1]:
        (refs / photo.name).write_bytes(photo.read_bytes())
    lora_dir = tmp_path / "Lora"
    _lora(lora_dir / "zimg-000001.safetensors", 1, ZIMAGE_KEYS)
    _lora(lora_dir / "zimg-000002.safetensors", 2, ZIMAGE_KEYS)
    _lora(lora_dir / "flux" / "fx-000003.safetensors", 3, FLUX_KEYS)
    photos = [str(obama[-1]), str(bush[0]), str(bush[1])]  # the person (not a reference), then someone else
    driver = DRIVER.format(consts=repr((str(forge_dir), str(REPO), str(pack), str(refs), photos, str(lora_dir), RESULT_TAG)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", driver], cwd=forge_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith(RESULT_TAG))
    found = json.loads(line[len(RESULT_TAG):])
    for name, path in found["real"].items():
        assert Path(path).resolve().is_relative_to(forge_dir), f"{name} did not come from the checkout: {path}"
    assert found["xyz_module"] == "xyz_grid.py" and Path(found["xyz_file"]).resolve().is_relative_to(forge_dir)
    assert found["is_lib_xyz_class"] and found["axis_option_class"] == "lib_xyz.classes.AxisOption"
    assert found["labels_tail"][-2:] == ["Likeness: LoRA epoch", "Likeness: LoRA strength"] and found["likeness_axes"] == 2
    assert found["run_wrapped"] and found["draw_wrapped_real"]
    assert found["callbacks"] == {"callbacks_before_image_saved": ["on_before_image_saved"],
                                  "callbacks_image_saved": ["on_image_saved"], "callbacks_ui_tabs": ["build_tab"]}
    assert "zimg-000002" in found["epoch_choices"] and "fx-000003" in found["epoch_choices"]
    assert found["prompts"]["0,0"] == "photo of jx"  # None: the run's tag removed, the base model alone
    assert found["prompts"]["2,1"] == "photo of jx, <lora:zimg-000002:1>"
    assert found["prompts"]["1,0"] == "photo of jx, <lora:zimg-000001:0.5>"
    assert found["cells_scored"] == 6 and found["grid_images"] == 2 + 6
    assert found["best"] == "zimg e2 @ 1"
    assert found["main_taller_than_sub"]  # the recommendation band under the main grid
