"""Forge Classic / Forge Neo (``Haoming02/sd-webui-forge-classic``, branches ``classic`` and ``neo``): the
extension registers and scores its X/Y/Z grids there.

Needs ``FORGE_DIR`` (a checkout of branch ``classic``) and/or ``FORGE_NEO_DIR`` (branch ``neo``), extracted
outside this repository (see tests/integration/README.md); each host's tests skip only when its variable
is unset. lllyasviel's Forge keeps A1111's layout and is tested by test_a1111_host.py with ``A1111_DIR``.

The two branches differ where the extension hooks in: Classic moved the X/Y/Z script to
``extensions-builtin/xyz`` (``class XYZ``, ``lib_xyz.classes.AxisOption``, ``lib_xyz.main.draw_xyz_grid``,
``on_…(callback)`` without ``name``); Neo keeps A1111's ``scripts/xyz_grid.py`` (``class Script``,
``AxisOption`` and ``draw_xyz_grid`` in the module, ``on_…(callback, *, name)``) and its ``run`` re-lays a
one-axis main grid of 4+ values into rows after drawing it.

The loader layer, in a subprocess whose working directory and ``sys.path[0]`` are the checkout:
what is Forge's own code and runs here as it is: ``modules/script_loading.py`` (loads the script
files, as ``modules.scripts.load_scripts`` does with the extension folder in front of ``sys.path``),
``modules/script_callbacks.py`` (where the callbacks are registered, and, on Neo, the image-save
callbacks are called), ``modules/errors.py``, ``modules/timer.py``, the X/Y/Z script (Classic: the whole
``extensions-builtin/xyz``; Neo: ``scripts/xyz_grid.py`` with ``backend/logging.py``), whose
``draw_xyz_grid`` lays out the grid twice through our wrapper; on Neo also its ``Script.run`` over a
one-axis epoch sweep (its row re-layout and grid save). What is stood in for: the modules that need
torch, a model or gradio (``modules.shared``, ``sd_models``, ``sd_samplers``, ``processing``, ``images``
…) by permissive stand-ins; ``images.image_grid`` pastes the cells like Forge's, ``images.save_image``
calls Forge's callbacks around the save as Forge's does. The server layer (a running Forge with a model)
is test_a1111_host.py with ``A1111_DIR`` at Forge Classic (see the README).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LIKENESS_SHARED", REPO.parent / "shared"))
RESULT_TAG = "LIKENESS_RESULT "


#: (environment variable, branch, where its X/Y/Z script lives) per Forge of sd-webui-forge-classic.
HOSTS = {
    "classic": ("FORGE_DIR", "classic", Path("extensions-builtin") / "xyz" / "scripts" / "xyz_grid.py"),
    "neo": ("FORGE_NEO_DIR", "neo", Path("scripts") / "xyz_grid.py"),
}


@pytest.fixture(scope="module", params=sorted(HOSTS))
def forge(request) -> tuple[str, Path]:
    """``(branch, checkout)`` of each Forge whose variable is set."""
    variable, branch, xyz_file = HOSTS[request.param]
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set (path to a sd-webui-forge-classic checkout, branch {branch}; "
                    "see tests/integration/README.md)")
    path = Path(value).resolve()
    assert (path / xyz_file).is_file(), f"{variable}={path} has no {xyz_file} (is it Forge {branch.title()}?)"
    if branch == "neo":
        assert (path / "backend").is_dir(), f"FORGE_NEO_DIR={path} has no backend/ (is it Forge Neo?)"
    return branch, path


def test_forge_xyz_still_has_what_our_hooks_wrap(forge: tuple[str, Path]) -> None:
    """The names a1111_extension/xyz_hooks.py and axes.py rely on in Forge's X/Y/Z script."""
    branch, forge_dir = forge
    if branch == "classic":
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
        }
    else:
        expected = {
            forge_dir / "scripts" / "xyz_grid.py": [
                "class Script(scripts.Script):", "class AxisOption:", "axis_options = [",
                ("def draw_xyz_grid(p, xs, ys, zs, x_labels, y_labels, z_labels, cell, draw_legend, include_lone_images, "
                 "include_sub_grids, first_axes_processed, second_axes_processed, margin_size):"),
                "processed: Processed = cell(x, y, z, ix, iy, iz)", "res = process_images(pc)",
                'res = Processed(p, [], p.seed, "")', "processed = draw_xyz_grid(",
                # the re-layout after drawing and the save of its result, which the band waits for
                "processed.images[0] = rearrange_image(processed.images[0], target_count)",
                'images.save_image(processed.images[g], p.outpath_grids, "xyz_grid"',
            ],
            forge_dir / "modules" / "script_callbacks.py": ["def on_before_image_saved(callback, *, name=None):"],
            forge_dir / "modules" / "images.py": ["script_callbacks.before_image_saved_callback(params)", "image = params.image"],
            # the LoRA folders its loader lists, which the epoch axis lists too
            forge_dir / "modules" / "cmd_args.py": ['parser.add_argument("--lora-dirs"', 'action="append"'],
            forge_dir / "extensions-builtin" / "sd_forge_lora" / "networks.py": [
                "for _dir in [shared.cmd_opts.lora_dir, *shared.cmd_opts.lora_dirs]:",
                "name = os.path.splitext(os.path.basename(filename))[0]"],
        }
    expected[forge_dir / "modules" / "script_loading.py"] = [
        "module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)"]
    for path, lines in expected.items():
        source = path.read_text(encoding="utf-8")
        for line in lines:
            assert line in source, f"{path.relative_to(forge_dir)} no longer has `{line}`: check a1111_extension/xyz_hooks.py / axes.py"


DRIVER = r'''
import json, os, sys, types
from unittest import mock
BRANCH, FORGE_DIR, REPO, PACK, REFS, PHOTOS, LORA_DIR, LORA_DIRS, GRIDS_DIR, RESULT_TAG = {consts}
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
        self.all_prompts, self.all_seeds = [self.prompt] * len(images_list), [seed] * len(images_list)
        self.comments, self.index_of_first_image = "", 0

class StableDiffusionProcessingTxt2Img:  # only isinstance() is asked of it
    pass

def image_grid(imgs, batch_size=1, rows=None):  # Forge's modules/images.image_grid, without its options
    cols = (len(imgs) + rows - 1) // rows
    w, h = imgs[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(imgs):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid

saved = []

def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, grid=False, p=None, **_):
    # Forge's modules/images.save_image around the file: ImageSaveParams, before_image_saved_callback,
    # then `image = params.image`, the file, image_saved_callback
    from modules import script_callbacks
    filename = os.path.join(path, f"{{basename}}-{{len(saved):04}}.{{extension}}")
    params = script_callbacks.ImageSaveParams(image, p, filename, {{"parameters": info}})
    script_callbacks.before_image_saved_callback(params)
    image = params.image
    os.makedirs(path, exist_ok=True)
    image.save(params.filename)
    saved.append({{"file": params.filename, "parameters": params.pnginfo.get("parameters"), "size": list(image.size)}})
    script_callbacks.image_saved_callback(params)
    return params.filename, None

class Script:  # modules.scripts.Script: what subclasses need at class level
    def elem_id(self, item_id):
        return item_id

class Opts(types.SimpleNamespace):  # modules.shared.opts: the settings the X/Y/Z run reads, MagicMock for others
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return mock.MagicMock(name=f"opts.{{name}}")

process_cell = None  # set below: what a cell's process_images makes

for name in ("fastapi", "gradio"):
    try:
        __import__(name)
    except ImportError:
        stand_in(name)
stand_in("modules.shared", cmd_opts=types.SimpleNamespace(lora_dir=LORA_DIR, lora_dirs=LORA_DIRS, adv_samplers=False),
         opts=Opts(return_grid=True, img_max_size_mp=200, grid_save=True, grid_format="png", forge_additional_modules=[]),
         state=types.SimpleNamespace(interrupted=False, stopping_generation=False, job="", job_count=0))
for name in ("modules.sd_models", "modules.sd_vae", "modules.sd_samplers", "modules.sd_samplers_kdiffusion", "modules.ui_components",
             "modules.sd_schedulers", "modules.extensions", "modules.util"):
    stand_in(name)
stand_in("modules.processing", Processed=Processed, StableDiffusionProcessingTxt2Img=StableDiffusionProcessingTxt2Img,
         process_images=lambda p: process_cell(p), create_infotext=lambda p, *a, **k: f"{{p.prompt}}\nSteps: 2, Seed: {{p.seed}}")
stand_in("modules.images", image_grid=image_grid, draw_grid_annotations=lambda im, *a, **k: im,
         GridAnnotation=lambda *a, **k: None, save_image=save_image)
stand_in("modules.paths", models_path=os.path.join(FORGE_DIR, "models"))
scripts = stand_in("modules.scripts", Script=Script, scripts_data=[])

from modules import script_loading, script_callbacks  # Forge's own
real = {{name: sys.modules[name].__file__ for name in ("modules.script_loading", "modules.script_callbacks", "modules.errors")}}

def load_scripts_like_forge(basedir, only=None):
    loaded = []
    scripts_dir = os.path.join(basedir, "scripts")
    for filename in sorted(os.listdir(scripts_dir)):
        if only is not None and filename != only:
            continue
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

if BRANCH == "classic":  # builtins load first
    (xyz,) = load_scripts_like_forge(os.path.join(FORGE_DIR, "extensions-builtin", "xyz"))
    import lib_xyz.classes, lib_xyz.main
    xyz_class, axis_class, real_draw = xyz.XYZ, lib_xyz.classes.AxisOption, lib_xyz.main.draw_xyz_grid
    real.update({{"lib_xyz.main": lib_xyz.main.__file__, "lib_xyz.classes": lib_xyz.classes.__file__}})
else:  # Neo: the webui's own scripts folder
    (xyz,) = load_scripts_like_forge(FORGE_DIR, only="xyz_grid.py")
    xyz_class, axis_class, real_draw = xyz.Script, xyz.AxisOption, xyz.draw_xyz_grid
    real["backend.logging"] = sys.modules["backend.logging"].__file__
original_run = xyz_class.run
load_scripts_like_forge(REPO)  # scripts/likeness.py: registers the axes, hooks and callbacks
load_scripts_like_forge(REPO)  # a UI reload loads every script again

from lora_likeness_a1111 import axes, xyz_hooks, scorer as likeness_scorer
from lora_likeness_a1111.recommendation import caption_below
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
    processed = Processed(pc, [picture], 7, "photo\nSteps: 2, Seed: 7")
    processed.likeness = xyz_hooks.CellScores(score, scored, [picture], axes.state_of(pc).info(), prompt=pc.prompt, seeds=[7])
    return processed

p = types.SimpleNamespace(prompt="photo of jx, <lora:zimg:1>", width=128, height=128, seed=7, n_iter=1, batch_size=1)
processed = xyz.draw_xyz_grid(p, xs=xs, ys=ys, zs=[""], x_labels=[ours_axes[0].format_value(p, ours_axes[0], x) for x in xs],
                              y_labels=[ours_axes[1].format_value(p, ours_axes[1], y) for y in ys], z_labels=[""], cell=cell,
                              draw_legend=True, include_lone_images=False, include_sub_grids=False,
                              first_axes_processed="x", second_axes_processed="y", margin_size=0)
grid_scores = xyz_hooks.grid_of(processed.images[0])
advice = grid_scores.recommendation()
found = {{
    "real": real, "xyz_module": xyz.__name__, "xyz_file": xyz.__file__,
    "axis_option_class": f"{{type(ours_axes[0]).__module__}}.{{type(ours_axes[0]).__name__}}",
    "is_host_axis_class": type(ours_axes[0]) is axis_class,
    "labels_tail": labels[-3:], "likeness_axes": len(ours_axes),
    "run_wrapped": getattr(xyz_class.run, xyz_hooks.WRAPPED_MARK, None) is original_run,
    "draw_wrapped_real": getattr(xyz.draw_xyz_grid, xyz_hooks.WRAPPED_MARK, None) is real_draw,
    "callbacks": {{key: [c.callback.__qualname__ for c in script_callbacks.callback_map[key]]
                  for key in ("callbacks_before_image_saved", "callbacks_image_saved", "callbacks_ui_tabs")}},
    "epoch_choices": ours_axes[0].choices(),
    "prompts": {{f"{{k[0]}},{{k[1]}}": v for k, v in sorted(cells_prompts.items())}},
    "cells_scored": len(grid_scores.cells), "grid_images": len(processed.images),
    "best": advice.best.label if advice.best else None,
    "main_taller_than_sub": processed.images[0].height > processed.images[1].height,
}}

if BRANCH == "neo":
    # Neo's own Script.run over one epoch axis of 4 values: it re-lays the main grid in 2 rows of 2 after
    # draw_xyz_grid returned, then saves it; the band must be under that image, whole, and the saved file
    # must carry the grid mean and have the reports beside it.
    epochs = ["None", "zimg-000001", "zimg-000002", "zimg-000003"]
    photo_of_epoch = {{"None": PHOTOS[-1], "zimg-000001": PHOTOS[-2], "zimg-000002": PHOTOS[-2], "zimg-000003": PHOTOS[0]}}

    def process_cell(pc):  # process_images with our always-on script: the image and its scores
        stem = axes.state_of(pc).stem or "None"
        picture = square(photo_of_epoch[stem])
        result = Processed(pc, [picture], pc.seed, f"{{pc.prompt}}\nSteps: 2, Seed: {{pc.seed}}")
        result.likeness = xyz_hooks.CellScores(score, score.score_images([picture], ["image"]), [picture],
                                               axes.state_of(pc).info(), prompt=pc.prompt, seeds=[pc.seed])
        return result

    script = xyz.Script()
    script.current_axis_options = list(xyz.axis_options)
    run_p = types.SimpleNamespace(prompt="photo of jx, <lora:zimg:1>", negative_prompt="", styles=[], seed=7, steps=2, width=128,
                                  height=128, n_iter=1, batch_size=1, outpath_grids=GRIDS_DIR, extra_generation_params={{}},
                                  all_prompts=[], all_seeds=[], all_subseeds=[], override_settings={{}})
    x_type = [o.label for o in script.current_axis_options].index(axes.EPOCH_AXIS)
    # run(p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values, z_values_dropdown,
    #     draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z,
    #     row_count (0: automatic), margin_size, csv_mode)
    result = script.run(run_p, x_type, "", epochs, 0, "", [], 0, "", [], True, False, False, True, False, False, False, 0, 0, False)
    main = result.images[0]
    run_scores = xyz_hooks.grid_of(main)
    band = caption_below(Image.new("RGB", (main.width, 1)), run_scores.caption()).height - 1 if run_scores else None
    found["neo_run"] = {{
        "main_size": list(main.size), "band": band, "saved": saved, "infotext": result.infotexts[0],
        "reports": sorted(name for name in os.listdir(GRIDS_DIR) if name.endswith((".csv", ".json"))),
        "cells_scored": len(run_scores.cells) if run_scores else 0,
    }}
    # The same with grid_save off: nothing saved, the band goes on the grid run returns
    sys.modules["modules.shared"].opts.grid_save = False
    result = script.run(run_p, x_type, "", epochs, 0, "", [], 0, "", [], True, False, False, True, False, False, False, 0, 0, False)
    unsaved = result.images[0]
    found["neo_run_unsaved"] = {{"main_size": list(unsaved.size), "known": xyz_hooks.grid_of(unsaved) is not None,
                                "infotext": result.infotexts[0], "saved": len(saved)}}
print(RESULT_TAG + json.dumps(found))
'''


def _lora(path: Path, epoch: int, keys: dict) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: np.zeros(shape, np.float16) for key, shape in keys.items()}, str(path), metadata={"ss_epoch": str(epoch)})


#: LoRA keys of the families Forge Neo loads besides SD1.5, in kohya's naming (musubi-tuner / sd-scripts):
#: a Z-Image LoRA (its transformer's ``layers.N``) and a Flux LoRA (``double_blocks``); the axes must find
#: and rewrite them like any other. ai-toolkit's Flux LoRA (``transformer.`` keys, PEFT's ``lora_A``/``lora_B``) is
#: listed where the host's loader takes that layout: Neo (ComfyUI's key map), not Classic (``ldm_patched``).
ZIMAGE_KEYS = {"lora_unet_layers_0_attention_to_q.lora_down.weight": (4, 64),
               "lora_unet_layers_0_attention_to_q.lora_up.weight": (64, 4)}
SDXL_KEYS = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 64),
             "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": (64, 4)}
FLUX_KEYS = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 64),
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (192, 4)}
AI_TOOLKIT_FLUX_KEYS = {"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": (4, 64),
                        "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight": (64, 4)}


def test_forge_loads_our_script_registers_axes_callbacks_and_scores_a_grid(forge: tuple[str, Path], tmp_path: Path) -> None:
    branch, forge_dir = forge
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
    for epoch in (1, 2, 3):
        _lora(lora_dir / f"zimg-{epoch:06}.safetensors", epoch, ZIMAGE_KEYS)
    _lora(lora_dir / "flux" / "fx-000003.safetensors", 3, FLUX_KEYS)
    _lora(lora_dir / "aitk" / "me_000000250.safetensors", 0, AI_TOOLKIT_FLUX_KEYS)
    photos = [str(obama[-1]), str(bush[0]), str(bush[1])]  # the person (not a reference), then someone else
    grids_dir = tmp_path / "outputs" / "txt2img-grids"
    # Neo also lists the folders of --lora-dirs (cmd_opts.lora_dirs, a list); Classic has no such option
    more_loras = tmp_path / "more-loras"
    _lora(more_loras / "sdxl-000004.safetensors", 4, SDXL_KEYS)
    lora_dirs = [str(more_loras)] if branch == "neo" else []
    driver = DRIVER.format(consts=repr((branch, str(forge_dir), str(REPO), str(pack), str(refs), photos, str(lora_dir), lora_dirs,
                                        str(grids_dir), RESULT_TAG)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", driver], cwd=forge_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith(RESULT_TAG))
    found = json.loads(line[len(RESULT_TAG):])
    for name, path in found["real"].items():
        assert Path(path).resolve().is_relative_to(forge_dir), f"{name} did not come from the checkout: {path}"
    assert found["xyz_module"] == "xyz_grid.py" and Path(found["xyz_file"]).resolve().is_relative_to(forge_dir)
    host_axis_class = "lib_xyz.classes.AxisOption" if branch == "classic" else "xyz_grid.py.AxisOption"
    assert found["is_host_axis_class"] and found["axis_option_class"] == host_axis_class
    assert found["labels_tail"][-2:] == ["Likeness: LoRA epoch", "Likeness: LoRA strength"] and found["likeness_axes"] == 2
    assert found["run_wrapped"] and found["draw_wrapped_real"]
    assert found["callbacks"] == {"callbacks_before_image_saved": ["on_before_image_saved"],
                                  "callbacks_image_saved": ["on_image_saved"], "callbacks_ui_tabs": ["build_tab"]}
    assert "zimg-000002" in found["epoch_choices"] and "fx-000003" in found["epoch_choices"]
    assert ("sdxl-000004" in found["epoch_choices"]) == (branch == "neo")
    assert ("me_000000250" in found["epoch_choices"]) == (branch == "neo")
    assert found["prompts"]["0,0"] == "photo of jx"  # None: the run's tag removed, the base model alone
    assert found["prompts"]["2,1"] == "photo of jx, <lora:zimg-000002:1>"
    assert found["prompts"]["1,0"] == "photo of jx, <lora:zimg-000001:0.5>"
    assert found["cells_scored"] == 6 and found["grid_images"] == 2 + 6
    assert found["best"] == "zimg e2 @ 1"
    assert found["main_taller_than_sub"]  # the recommendation band under the main grid
    if branch == "neo":
        run = found["neo_run"]
        assert run["cells_scored"] == 4, run
        # 4 cells of 128 px re-laid by Neo in 2 rows of 2, then one whole band under them (drawn before the
        # re-layout, the band was cut in two: 256 x 2 * (128 + band))
        assert run["band"] and run["main_size"] == [256, 256 + run["band"]], run
        (grid_file,) = run["saved"]
        assert grid_file["size"] == run["main_size"]
        assert "Likeness: " in grid_file["parameters"] and "Likeness recommendation: zimg e3" in grid_file["parameters"], grid_file
        stem = Path(grid_file["file"]).stem
        assert run["reports"] == [f"{stem}-likeness_scores.csv", f"{stem}-likeness_scores.json"], run
        assert "Likeness: " in run["infotext"], run
        unsaved = found["neo_run_unsaved"]
        assert unsaved["saved"] == 1 and unsaved["known"] and unsaved["main_size"] == run["main_size"], unsaved
        assert "Likeness recommendation: zimg e3" in unsaved["infotext"], unsaved


def test_install_from_url_runs_our_installer_through_forges_own_launch_module(forge: tuple[str, Path], tmp_path: Path) -> None:
    """"Install from URL" clones the extension; at the next start Forge's ``run_extension_installer``
    (modules/launch_utils.py, the same on Classic and Neo) runs ``python install.py`` with the Forge root on
    PYTHONPATH. Our installer must find Forge's ``launch`` module and plan through its ``run_pip`` (which
    honours ``--skip-install`` and ``--index-url``); ``--dry-run`` keeps this venv unchanged."""
    branch, forge_dir = forge
    launch_utils = (forge_dir / "modules" / "launch_utils.py").read_text(encoding="utf-8")
    # how Forge runs it: Neo puts script_path on PYTHONPATH, Classic os.path.abspath('.') (it runs from its root)
    assert re.search(r"env\[['\"]PYTHONPATH['\"]\] = f['\"]\{(script_path|os\.path\.abspath\('\.'\))\}", launch_utils), branch
    assert 'os.path.join(extension_dir, "install.py")' in launch_utils
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(forge_dir)
    result = subprocess.run([sys.executable, str(REPO / "install.py"), "--dry-run"], cwd=forge_dir, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "via A1111's launch.run_pip" in result.stdout, f"{branch}: {result.stdout[-2000:]}"
