"""Our Kohya LoRA files against the real loaders, on a full-size SD1.5 (random weights).

Each test skips only when its checkout variable is unset:

* ``COMFYUI_DIR`` (+ ``COMFYUI_PYTHON``, default: the interpreter running pytest): a random full-size
  SD1.5 single file from ``../shared/tools/make_random_sd15.py`` is trained on for one step at 64 px by
  the built-in trainer (loading the single file offline with the built-in SD1.5 configs), then
  ComfyUI's own ``comfy.sd.load_checkpoint_guess_config`` + ``comfy.sd.load_lora_for_models`` load
  both; every LoRA key must map (no ``lora key not loaded``) and patch one weight each. The same for SDXL:
  a LoRA with all 986 modules the core names on a full-size SDXL (meta-device models from the family's
  configs, random weights; ``full_size_models.py``) against ComfyUI's SDXL model built from the random
  full-size SDXL checkpoint (``$LIKENESS_SDXL_CKPT`` or ``~/.cache/likeness-tests/sdxl_random_fp16.safetensors``),
  loaded in fp16 and under ``$LIKENESS_BIGMEM_LOCK`` when that is set.
* ``A1111_DIR``: A1111's ``extensions-builtin/Lora/networks.py`` imports gradio, torch and A1111's
  ``modules`` at module level, so its name conversion is taken from the checkout's source with ``ast``
  (``convert_diffusers_name_to_compvis`` and the tables it reads) and run on every key of a LoRA over
  all of sd-scripts' SD1.5 targets; A1111's ``network_layer_mapping`` is rebuilt from the SD1.5
  checkpoint's module names (``make_random_sd15.py --list-keys``) as ``assign_network_names_to_compvis_modules``
  does. The lookup lines we mirror are checked to be in the source. SDXL: A1111's own ``load_network``
  (its whole key lookup: the conversion, the ``_q_proj`` fallback onto OpenCLIP's attention, the SDXL
  ``lora_unet`` / ``lora_te1_text_model`` fallbacks), taken from the source with ``ast`` and run with
  stand-ins for its A1111 imports, reads an SDXL LoRA with every module the core names on a full-size SDXL
  (meta-device models from the family's configs, random weights) against the ``network_layer_mapping``
  ``assign_network_names_to_compvis_modules`` builds for A1111's SDXL model (``sgm`` ``DiffusionEngine``
  with its ``conditioner.embedders[i].wrapped``), rebuilt from the random SDXL's key names
  (``make_random_sdxl.py --list-keys``): every key must match a module.
* ``SD_SCRIPTS_DIR`` (+ ``SD_SCRIPTS_ACCELERATE``, default: found as ``likeness train`` finds it; ``SD_SCRIPTS_PYTHON``,
  default: the python beside that accelerate): the
  ``--print-command`` arguments are parsed by ``train_network.setup_parser()`` and the dataset .toml is
  validated by ``library.config_util.ConfigSanitizer``, both sd-scripts' own code; then a real CPU run
  (2 steps at 64 px on a random full-size SD1.5) goes through ``--backend sd-scripts`` and the module
  names in sd-scripts' own file must equal ours. Needs sd-scripts' requirements in its venv (see the README).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from full_size_models import bigmem, full_size_targets, sdxl_checkpoint, write_random_lora

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LIKENESS_SHARED", REPO.parent / "shared"))
MAKER = SHARED / "tools" / "make_random_sd15.py"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"
RESULT_TAG = "LIKENESS_RESULT "


def _checkout(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set")
    folder = Path(value)
    assert folder.is_dir(), f"{variable}={value} is not a folder"
    return folder


def _full_size_targets(family_name: str = "sd1"):
    """The core's LoRA targets (sd-scripts' modules and names) on the full-size diffusers models of
    ``family_name`` (``sd1``, ``sdxl``), built on the meta device (``full_size_models.py``)."""
    return full_size_targets(family_name)


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len(RESULT_TAG):])


# -- ComfyUI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_sd15(tmp_path_factory) -> Path:
    _checkout("COMFYUI_DIR")
    folder = tmp_path_factory.mktemp("sd15")
    path = folder / "sd15_random.safetensors"
    subprocess.run([sys.executable, str(MAKER), str(path), "--dtype", "fp16", "--seed", "0"], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def trained_full_size_lora(random_sd15, tmp_path_factory) -> Path:
    """One training step of the built-in trainer on the full-size random SD1.5 at 64 px (single file, offline)."""
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.tiny import write_training_folder
    from lora_likeness.training.trainer import train_lora

    folder = tmp_path_factory.mktemp("full-lora")
    data = write_training_folder(folder / "data", n_images=1, size=(64, 64), repeats=1)
    config = TrainConfig(base=random_sd15, data=data, out=folder / "out", name="full", epochs=1, rank=4, alpha=2, resolution=64,
                         buckets=False, mixed_precision="no", tokenizer=TOKENIZER, device="cpu", gradient_checkpointing=True)
    result = train_lora(config)
    return result.final


COMFY_SCRIPT = r"""
import json, logging, sys
sys.path.insert(0, sys.argv[1])
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)
import comfy.cli_args
comfy.cli_args.args.cpu = True  # as `main.py --cpu`
if "--fp16" in sys.argv:  # as `--fp16-unet --fp16-text-enc`: the key map is the same, the memory half (full-size SDXL)
    comfy.cli_args.args.fp16_unet = comfy.cli_args.args.fp16_text_enc = True
import comfy.sd, comfy.utils, comfy.lora
model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(sys.argv[2], output_vae=True, output_clip=True)
lora = comfy.utils.load_torch_file(sys.argv[3], safe_load=True)
key_map = comfy.lora.model_lora_keys_unet(model.model, {})
key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora) if hasattr(comfy, "lora_convert") else lora, key_map)
new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
print("LIKENESS_RESULT " + json.dumps({
    "model_type": type(model.model).__name__, "config": type(model.model.model_config).__name__,
    "lora_modules": len({k.split(".")[0] for k in lora}), "patched_weights": len(patches),
    "not_loaded": [m for m in records if "lora key not loaded" in m],
    "unet_patches": len(new_model.patches), "clip_patches": len(new_clip.patcher.patches),
    "clip_patch_prefixes": sorted({k.split(".")[0] for k in new_clip.patcher.patches}),
}))
"""


def _run_comfy_check(checkpoint: Path, lora: Path, tmp_path: Path, *extra: str) -> dict:
    """COMFY_SCRIPT in ComfyUI's interpreter: ComfyUI's own loaders on ``checkpoint`` and ``lora``."""
    comfy_dir = _checkout("COMFYUI_DIR")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    script = tmp_path / "check_comfy_lora.py"
    script.write_text(COMFY_SCRIPT, encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([python, str(script), str(comfy_dir), str(checkpoint), str(lora), *extra], cwd=comfy_dir,
                         capture_output=True, text=True, env=env, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    return _result(run.stdout)


def test_comfyui_maps_every_key_on_full_size_sd15(random_sd15, trained_full_size_lora, tmp_path):
    result = _run_comfy_check(random_sd15, trained_full_size_lora, tmp_path)
    expected = {t.key for t in _full_size_targets()}
    from safetensors import safe_open

    with safe_open(str(trained_full_size_lora), "pt") as handle:
        keys = {k.split(".")[0] for k in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert keys == expected and len(expected) == 192 + 72  # 16 transformers x 12 + 12 layers x 6
    assert result["config"] == "SD15" and result["not_loaded"] == []
    assert result["lora_modules"] == result["patched_weights"] == len(expected)
    assert result["unet_patches"] == 192 and result["clip_patches"] == 72


def test_comfyui_maps_every_key_of_an_sdxl_lora_on_full_size_sdxl(tmp_path):
    """An SDXL LoRA with every module our trainer names (both text encoders and the UNet, sd-scripts' SDXL layout)
    loads into ComfyUI's SDXL model, built from the random full-size SDXL checkpoint, with no unmapped key."""
    _checkout("COMFYUI_DIR")
    checkpoint = sdxl_checkpoint(os.environ.get("COMFYUI_PYTHON"))
    targets = full_size_targets("sdxl")
    lora = write_random_lora(tmp_path / "xl.safetensors", targets, {"ss_base_model_version": "sdxl_base_v1-0"})
    with bigmem():  # ComfyUI holds the whole SDXL (fp16 here: about 7 GB)
        result = _run_comfy_check(checkpoint, lora, tmp_path, "--fp16")
    by_component = {name: sum(t.component == name for t in targets) for name in ("unet", "text_encoder", "text_encoder_2")}
    assert by_component == {"unet": 722, "text_encoder": 72, "text_encoder_2": 192}  # sd-scripts' SDXL LoRA: 722 + 72 + 192
    assert result["config"] == "SDXL" and result["not_loaded"] == []
    assert result["lora_modules"] == result["patched_weights"] == len(targets) == 986
    assert result["unet_patches"] == 722 and result["clip_patches"] == 72 + 192
    assert result["clip_patch_prefixes"] == ["clip_g", "clip_l"]  # lora_te1_ -> CLIP-L, lora_te2_ -> OpenCLIP bigG


# -- A1111 ------------------------------------------------------------------------------------------


def _a1111_conversion(a1111_dir: Path):
    """``convert_diffusers_name_to_compvis`` and its tables, taken from the checkout's networks.py."""
    path = a1111_dir / "extensions-builtin" / "Lora" / "networks.py"
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    wanted = {"re_digits", "re_x_proj", "re_compiled", "suffix_conversion", "convert_diffusers_name_to_compvis"}
    nodes = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in wanted)
             or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in wanted for t in n.targets))]
    assert {getattr(n, "name", None) or n.targets[0].id for n in nodes} == wanted, "networks.py changed shape"
    namespace: dict = {"re": re}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 - A1111's own code
    return namespace, source


def test_a1111_name_conversion_accepts_every_key():
    a1111_dir = _checkout("A1111_DIR")
    namespace, source = _a1111_conversion(a1111_dir)
    # The lookup in load_network that we mirror below:
    for line in ('key = convert_diffusers_name_to_compvis(key_network_without_network_parts, is_sd2)',
                 'sd_module = shared.sd_model.network_layer_mapping.get(key, None)',
                 'key = key_network_without_network_parts.replace("lora_unet", "diffusion_model")',
                 "network_name = name.replace(\".\", \"_\")"):
        assert line in source, f"A1111's networks.py no longer has: {line}"

    listing = subprocess.run([sys.executable, str(MAKER), "--list-keys"], capture_output=True, text=True, check=True).stdout
    mapping = set()
    for line in listing.splitlines():
        key = line.split()[0] if line.strip() else ""
        if not key.endswith(".weight"):
            continue
        module = key[: -len(".weight")]
        # A1111: sd_model.model.named_modules() and cond_stage_model.wrapped.named_modules(), "." -> "_"
        if module.startswith("model."):
            mapping.add(module[len("model."):].replace(".", "_"))
        elif module.startswith("cond_stage_model."):
            mapping.add(module[len("cond_stage_model."):].replace(".", "_"))
    assert "diffusion_model_input_blocks_1_1_proj_in" in mapping
    assert "transformer_text_model_encoder_layers_0_self_attn_q_proj" in mapping

    convert = namespace["convert_diffusers_name_to_compvis"]
    targets = _full_size_targets()
    failed = []
    for target in targets:
        key = convert(target.key, False)
        if key not in mapping:
            fallback = target.key.replace("lora_unet", "diffusion_model")
            if fallback not in mapping:
                failed.append((target.key, key))
    assert len(targets) == 264 and failed == []


SDXL_MAKER = SHARED / "tools" / "make_random_sdxl.py"


class _Recorded:
    """What A1111's ``load_network`` builds (``network.Network``, ``network.NetworkWeights``), kept as given."""

    def __init__(self, *args, **kwargs):
        self.args, self.modules = args, {}
        vars(self).update(kwargs)


def _a1111_load_network(a1111_dir: Path, mapping: dict[str, str]):
    """A1111's own ``load_network`` from the checkout's networks.py, with stand-ins for what it imports from
    A1111 (``shared.sd_model`` holding ``mapping``: layer name -> module, ``sd_models.read_state_dict``, the
    module types); returns it, the log records it wrote and the module types it asked."""
    import logging
    from types import SimpleNamespace

    namespace, source = _a1111_conversion(a1111_dir)
    tree = ast.parse(source)
    [function] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "load_network"]
    asked = []

    class LoraType:  # A1111's ModuleTypeLora accepts exactly these weights (checked in the source below)
        def create_module(self, net, weights):
            asked.append(weights)
            return ("lora", weights.sd_module) if all(x in weights.w for x in ("lora_up.weight", "lora_down.weight")) else None

    def read_state_dict(filename):
        from safetensors.numpy import load_file

        return load_file(filename)

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger()
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    namespace.update(
        os=os, logging=logging, network=SimpleNamespace(Network=_Recorded, NetworkWeights=_Recorded),
        shared=SimpleNamespace(sd_model=SimpleNamespace(network_layer_mapping=mapping, is_sdxl=True)),
        sd_models=SimpleNamespace(read_state_dict=read_state_dict), module_types=[LoraType()],
        textual_inversion=None, BundledTIHash=str,
    )
    code = compile(ast.Module(body=[function], type_ignores=[]), str(a1111_dir / "extensions-builtin" / "Lora" / "networks.py"), "exec")
    exec(code, namespace)  # noqa: S102 - A1111's own code (the noqa must sit on the line ruff reports)
    return namespace["load_network"], records, asked


def _sdxl_layer_mapping() -> dict[str, str]:
    """A1111's ``network_layer_mapping`` for its SDXL model (``assign_network_names_to_compvis_modules``: every module
    of ``conditioner.embedders[i].wrapped`` as ``{i}_<name>``, of ``model`` as ``<name>``, dots -> ``_``), rebuilt
    from the module names of the random full-size SDXL (the sgm layout A1111 loads)."""
    listing = subprocess.run([sys.executable, str(SDXL_MAKER), "--list-keys"], capture_output=True, text=True, check=True).stdout
    mapping = {}
    for line in listing.splitlines():
        parts = line.split(".")[:-1] if line.strip() else []  # the parameter's module, then every module above it
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            if module.startswith("conditioner.embedders."):
                index, _, rest = module[len("conditioner.embedders."):].partition(".")
                if rest:
                    mapping[f"{index}_{rest.replace('.', '_')}"] = module
            elif module.startswith("model."):
                mapping[module[len("model."):].replace(".", "_")] = module
    return mapping


def test_a1111_loads_every_key_of_an_sdxl_lora_on_its_sdxl_model(tmp_path):
    a1111_dir = _checkout("A1111_DIR")
    source = (a1111_dir / "extensions-builtin" / "Lora" / "networks.py").read_text(encoding="utf-8")
    for line in ("if shared.sd_model.is_sdxl:", "for i, embedder in enumerate(shared.sd_model.conditioner.embedders):",
                 "for name, module in embedder.wrapped.named_modules():", "network_name = f'{i}_{name.replace(\".\", \"_\")}'",
                 "for name, module in shared.sd_model.model.named_modules():"):
        assert line in source, f"A1111's assign_network_names_to_compvis_modules no longer has: {line}"
    lora_types = (a1111_dir / "extensions-builtin" / "Lora" / "network_lora.py").read_text(encoding="utf-8")
    assert 'if all(x in weights.w for x in ["lora_up.weight", "lora_down.weight"]):' in lora_types

    mapping = _sdxl_layer_mapping()
    assert mapping["diffusion_model_input_blocks_4_1_transformer_blocks_0_attn1_to_q"] == (
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q")
    assert "0_transformer_text_model_encoder_layers_11_mlp_fc2" in mapping
    assert "1_model_transformer_resblocks_31_attn" in mapping  # OpenCLIP's attention: one in_proj, no q/k/v modules

    targets = _full_size_targets("sdxl")
    lora = write_random_lora(tmp_path / "xl.safetensors", targets, {"ss_base_model_version": "sdxl_base_v1-0"})
    load_network, records, asked = _a1111_load_network(a1111_dir, mapping)
    net = load_network("xl", _Recorded(filename=str(lora)))
    assert [r for r in records if "didn't match keys" in r] == [], records[-1:]
    assert len(asked) == len(net.modules) == len(targets) == 722 + 72 + 192
    # Which module each key landed on: the UNet and CLIP-L one module each, OpenCLIP's q/k/v on its attention.
    landed = {weights.network_key.split(".")[0]: weights.sd_module for weights in asked}  # the mapping's values: module paths
    assert landed["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"] == (
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q")
    assert landed["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] == (
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj")
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert landed[f"lora_te2_text_model_encoder_layers_31_self_attn_{proj}"] == "conditioner.embedders.1.model.transformer.resblocks.31.attn"
    assert landed["lora_te2_text_model_encoder_layers_31_mlp_fc1"] == "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc"


# -- sd-scripts -------------------------------------------------------------------------------------


SD1_HEADER = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1),
              "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)}
SDXL_HEADER = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1),
               "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (4,),
               "conditioner.embedders.1.model.ln_final.weight": (4,)}


def _header_file(path: Path, keys: dict[str, tuple]) -> Path:
    """Enough of a checkpoint for ``likeness train --print-command``: its key names (the family is read from them)."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({key: np.zeros(shape, np.float16) for key, shape in keys.items()}, str(path))
    return path


SD_SCRIPTS_CHECK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import train_network
from library import config_util
args = json.loads(sys.argv[2])
parsed = train_network.setup_parser().parse_args(args)
sanitizer = config_util.ConfigSanitizer(True, True, False, True)
user = config_util.load_user_config(sys.argv[3])
blueprint = config_util.BlueprintGenerator(sanitizer).generate(user, parsed)
subsets = [s.params for d in blueprint.dataset_group.datasets for s in d.subsets]
print("LIKENESS_RESULT " + json.dumps({
    "network_module": parsed.network_module, "network_dim": parsed.network_dim, "network_alpha": parsed.network_alpha,
    "unet_only": parsed.network_train_unet_only, "max_train_epochs": parsed.max_train_epochs, "cache_latents": parsed.cache_latents,
    "sdpa": parsed.sdpa, "save_every_n_epochs": parsed.save_every_n_epochs, "optimizer_type": parsed.optimizer_type,
    "mixed_precision": parsed.mixed_precision, "tokenizer_cache_dir": parsed.tokenizer_cache_dir, "save_state": parsed.save_state,
    "resolution": [list(d.params.resolution) for d in blueprint.dataset_group.datasets],
    "subsets": [[s.image_dir, s.num_repeats, s.class_tokens, s.is_reg, s.caption_extension] for s in subsets],
}))
"""


def test_sd_scripts_accepts_the_command_and_dataset_config(tmp_path, capsys):
    sd_dir = _checkout("SD_SCRIPTS_DIR")
    from lora_likeness.cli import main
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.sd_scripts import find_accelerate, python_of
    from lora_likeness.training.tiny import write_training_folder

    data = write_training_folder(tmp_path / "data", n_images=2, repeats=5, reg=1)
    accelerate = os.environ.get("SD_SCRIPTS_ACCELERATE")
    code = main(["train", "--base", str(_header_file(tmp_path / "sd15.safetensors", SD1_HEADER)), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--name", "me", "--rank", "8", "--alpha", "4", "--epochs", "12", "--save-every", "2", "--text-encoder-lr", "0",
                 "--gradient-checkpointing", "--optimizer", "AdamW8bit", "--tokenizer", str(TOKENIZER), "--sd-scripts", str(sd_dir),
                 "--print-command", *(["--accelerate", accelerate] if accelerate else [])])
    assert code == 0
    command = capsys.readouterr().out.strip().splitlines()[-1]
    import shlex

    argv = shlex.split(command)
    script = argv.index(str(sd_dir / "train_network.py"))
    assert argv[1] == "launch" and Path(argv[0]).name.startswith("accelerate")
    python = os.environ.get("SD_SCRIPTS_PYTHON") or python_of(Path(accelerate) if accelerate else find_accelerate(TrainConfig(), sd_dir))
    run = subprocess.run([python, "-c", SD_SCRIPTS_CHECK, str(sd_dir), json.dumps(argv[script + 1:]), str(tmp_path / "out" / "me-dataset.toml")],
                         cwd=sd_dir, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    result = _result(run.stdout)
    assert result["network_module"] == "networks.lora" and result["network_dim"] == 8 and result["network_alpha"] == 4.0
    assert result["unet_only"] is True and result["max_train_epochs"] == 12 and result["save_every_n_epochs"] == 2
    assert result["cache_latents"] and result["sdpa"] and result["save_state"] and result["optimizer_type"] == "AdamW8bit"
    assert result["mixed_precision"] == "fp16" and (Path(result["tokenizer_cache_dir"]) / "openai_clip-vit-large-patch14" / "vocab.json").is_file()
    assert result["resolution"] == [[512, 512]]
    train_dir = str((data / "img" / "5_ohwx person").resolve())
    reg_dir = str((data / "reg" / "1_person").resolve())
    assert result["subsets"] == [[train_dir, 5, "ohwx person", False, ".txt"], [reg_dir, 1, "person", True, ".txt"]]


SDXL_CHECK = r"""
import json, logging, sys
sys.path.insert(0, sys.argv[1])
records = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            records.append(record.getMessage())
import sdxl_train_network
from library import config_util, strategy_base, train_util
logging.getLogger().addHandler(Keep())
# what sdxl_train_network.py's __main__ and NetworkTrainer.train() do before loading the model
parser = sdxl_train_network.setup_parser()
args = parser.parse_args(json.loads(sys.argv[2]))
train_util.verify_command_line_training_args(args)
args = train_util.read_config_from_file(args, parser)
train_util.verify_training_args(args)
train_util.prepare_dataset_args(args, True)
trainer = sdxl_train_network.SdxlNetworkTrainer()
tokenize_strategy = trainer.get_tokenize_strategy(args)
strategy_base.TokenizeStrategy.set_strategy(tokenize_strategy)
strategy_base.LatentsCachingStrategy.set_strategy(trainer.get_latents_caching_strategy(args))
blueprint = config_util.BlueprintGenerator(config_util.ConfigSanitizer(True, True, args.masked_loss, True)).generate(
    config_util.load_user_config(args.dataset_config), args)
group, val_group = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
assert len(group) > 0
if args.cache_latents:
    assert group.is_latent_cacheable()
trainer.assert_extra_args(args, group, val_group)  # verify_sdxl_training_args, text-encoder caching, bucket steps
ids1, ids2 = tokenize_strategy.tokenize("ohwx person, close-up")
t1, t2 = tokenize_strategy.tokenizer1, tokenize_strategy.tokenizer2
dataset = group.datasets[0]
print("LIKENESS_RESULT " + json.dumps({
    "unet_only": args.network_train_unet_only, "cache_te": args.cache_text_encoder_outputs, "no_half_vae": args.no_half_vae,
    "clip_skip": args.clip_skip, "v2": args.v2, "v_parameterization": args.v_parameterization, "cache_latents": args.cache_latents,
    "network_dim": args.network_dim, "text_encoder_lr": args.text_encoder_lr, "sdpa": args.sdpa, "save_state": args.save_state,
    "tokenizers": [[t.name_or_path, t.pad_token, t.pad_token_id, t.model_max_length] for t in (t1, t2)],
    "ids": [list(ids1.shape), list(ids2.shape), int(ids2.flatten()[-1]), int(ids1.flatten()[-1])],
    "resolution": [dataset.width, dataset.height], "buckets": [dataset.enable_bucket, dataset.min_bucket_reso, dataset.max_bucket_reso,
                                                            dataset.bucket_reso_steps],
    "te_cacheable": group.is_text_encoder_output_cacheable(), "warnings": records,
}))
"""


@pytest.mark.parametrize("text_encoder_lr", ["0", "5e-5"])
def test_sd_scripts_sdxl_accepts_our_command_and_tokenizers(tmp_path, capsys, text_encoder_lr):
    """Our SDXL command line goes through sdxl_train_network.py's own parser and checks (argument names, the
    SDXL rules on cached text-encoder outputs and bucket steps, the dataset config), and its SDXL tokenize
    strategy loads both tokenizers from our --tokenizer_cache_dir with the Hub switched off."""
    sd_dir = _checkout("SD_SCRIPTS_DIR")
    import shlex

    from lora_likeness.cli import main
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.sd_scripts import find_accelerate, python_of
    from lora_likeness.training.tiny import write_training_folder

    data = write_training_folder(tmp_path / "data", n_images=2, repeats=5, reg=1)
    accelerate = os.environ.get("SD_SCRIPTS_ACCELERATE")
    code = main(["train", "--base", str(_header_file(tmp_path / "sdxl.safetensors", SDXL_HEADER)), "--data", str(data), "--out",
                 str(tmp_path / "out"), "--name", "me", "--rank", "8", "--text-encoder-lr", text_encoder_lr, "--tokenizer", str(TOKENIZER),
                 "--sd-scripts", str(sd_dir), "--print-command", *(["--accelerate", accelerate] if accelerate else [])])
    assert code == 0
    argv = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    script = argv.index(str(sd_dir / "sdxl_train_network.py"))
    python = os.environ.get("SD_SCRIPTS_PYTHON") or python_of(Path(accelerate) if accelerate else find_accelerate(TrainConfig(), sd_dir))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([python, "-c", SDXL_CHECK, str(sd_dir), json.dumps(argv[script + 1:])], cwd=sd_dir, capture_output=True,
                         text=True, env=env, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    result = _result(run.stdout)
    frozen = text_encoder_lr == "0"
    assert result["unet_only"] is frozen and result["cache_te"] is frozen and result["te_cacheable"]
    assert result["text_encoder_lr"] == (None if frozen else [5e-5])
    assert result["no_half_vae"] and result["cache_latents"] and result["sdpa"] and result["save_state"] and result["network_dim"] == 8
    assert result["clip_skip"] is None and not result["v2"] and not result["v_parameterization"]
    cache = tmp_path / "out" / ".tokenizer-cache"
    assert result["tokenizers"] == [[str(cache / "openai_clip-vit-large-patch14"), "<|endoftext|>", 49407, 77],
                                    [str(cache / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"), "!", 0, 77]]
    assert result["ids"] == [[1, 1, 77], [1, 1, 77], 0, 49407]  # the second tokenizer pads with "!" (id 0), the first with its end token
    assert result["resolution"] == [1024, 1024] and result["buckets"] == [True, 512, 2048, 64]
    assert not [w for w in result["warnings"] if "clip_skip" in w or "download" in w.lower()], result["warnings"]


def test_sd_scripts_trains_with_our_command_and_names_modules_as_we_do(tmp_path):
    """A real (CPU, 64 px, 2 steps) sd-scripts run through ``--backend sd-scripts`` on a random full-size SD1.5:
    progress is followed, checkpoints collected, and sd-scripts' own module names equal ours."""
    sd_dir = _checkout("SD_SCRIPTS_DIR")
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.tiny import write_training_folder
    from lora_likeness.training.trainer import train_lora
    from safetensors import safe_open

    checkpoint = tmp_path / "sd15_random.safetensors"
    subprocess.run([sys.executable, str(MAKER), str(checkpoint), "--dtype", "fp16"], check=True, capture_output=True)
    data = write_training_folder(tmp_path / "data", n_images=1, size=(64, 64), repeats=1)
    accelerate = os.environ.get("SD_SCRIPTS_ACCELERATE")
    config = TrainConfig(base=checkpoint, data=data, out=tmp_path / "out", name="sd", epochs=2, rank=4, alpha=2, resolution=64,
                         buckets=False, mixed_precision="no", text_encoder_lr=0.0, tokenizer=TOKENIZER, backend="sd-scripts",
                         sd_scripts=sd_dir, accelerate=Path(accelerate) if accelerate else None)

    from lora_likeness.progress import Progress

    class Recording(Progress):
        def __init__(self):
            super().__init__()
            self.details = []

        def advance(self, count=1, detail=None):
            super().advance(count, detail)
            self.details.append(detail)

    progress = Recording()
    result = train_lora(config, progress)
    assert [p.name for p in result.checkpoints] == ["sd-000001.safetensors"] and result.final == tmp_path / "out" / "sd.safetensors"
    assert progress.total == progress.done == 2 and "ep 2/2" in progress.details[-1]
    with safe_open(str(result.final), "pt") as handle:
        modules = {k.split(".")[0] for k in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert modules == {t.key for t in _full_size_targets() if t.component == "unet"}


def _sdxl_checkpoint() -> Path:
    """The full-size random SDXL (6.9 GB fp16): ``$LIKENESS_SDXL_CKPT``, else ``~/.cache/likeness-tests/``, made once."""
    given = os.environ.get("LIKENESS_SDXL_CKPT")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "likeness-tests"
    path = cache / "sdxl_random_fp16.safetensors"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_random_sdxl.py"), str(partial), "--dtype", "fp16", "--seed", "0"],
                       check=True, timeout=1800)
        os.replace(partial, path)
    return path


def _full_size_sdxl_components():
    """The full-size SDXL UNet and both text encoders from the family's configs, without weights (meta device)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from lora_likeness.families import FAMILIES
    from lora_likeness.families.sdxl import TEXT_ENCODER, TEXT_ENCODER_2, UNET
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(values):
        return CLIPTextConfig(**{k: v for k, v in values.items() if k != "architectures"})

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config({k: v for k, v in UNET.items() if not k.startswith("_")})
        encoders = {"text_encoder": CLIPTextModel(text_config(TEXT_ENCODER)),
                    "text_encoder_2": CLIPTextModelWithProjection(text_config(TEXT_ENCODER_2))}
    return FAMILIES["sdxl"].lora_components({"unet": unet, **encoders})


def test_sd_scripts_trains_a_full_size_sdxl_lora_that_our_switcher_reads(tmp_path, monkeypatch):
    """A real CPU run of sdxl_train_network.py through ``--backend sd-scripts`` on the full-size random SDXL: 2 steps
    at 64 px, rank 4, UNet only, latents and text-encoder outputs cached, tokenizers from our cache with the Hub off.
    Every module of the LoRA it writes maps onto the SDXL modules our LoraSwitcher knows (none unknown).

    Memory: sd-scripts builds the UNet and text encoders in float32 whatever the mixed precision. Measured with
    ``/usr/bin/time -v``, three times: peak RSS 15.4, 18.4 and 21.2 GB (counting pages of the memory-mapped 6.9 GB
    file, which stay resident when nothing else needs the memory; the machine's available memory fell by 14 and 11 GB
    in the first two), 1 min 25 s to 3 min 40 s on 2 CPU cores (2 steps of ~35 s when shared). On a shared machine
    run it alone."""
    sd_dir = _checkout("SD_SCRIPTS_DIR")
    from lora_likeness.progress import Progress
    from lora_likeness.sweep.loras import LoraSwitcher
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.tiny import write_training_folder
    from lora_likeness.training.trainer import train_lora
    from safetensors import safe_open

    data = write_training_folder(tmp_path / "data", n_images=1, size=(64, 64), repeats=1)
    accelerate = os.environ.get("SD_SCRIPTS_ACCELERATE")
    config = TrainConfig(base=_sdxl_checkpoint(), data=data, out=tmp_path / "out", name="xl", epochs=2, rank=4, alpha=2, resolution=64,
                         buckets=False, mixed_precision="no", text_encoder_lr=0.0, gradient_checkpointing=True, tokenizer=TOKENIZER,
                         backend="sd-scripts", sd_scripts=sd_dir, accelerate=Path(accelerate) if accelerate else None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # inherited by sd-scripts: a tokenizer we did not hand over fails here
    result = train_lora(config, Progress())
    assert "sdxl_train_network.py" in " ".join(result.command) and "--cache_text_encoder_outputs" in result.command
    assert [p.name for p in result.checkpoints] == ["xl-000001.safetensors"] and result.final == tmp_path / "out" / "xl.safetensors"
    with safe_open(str(result.final), "pt") as handle:
        metadata = handle.metadata()
        modules = {k.split(".")[0] for k in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["ss_network_dim"] == "4"
    switcher = LoraSwitcher(_full_size_sdxl_components())
    loaded = switcher.load(result.final)
    assert loaded.unknown == [] and loaded.n_modules == len(modules) == 722  # sd-scripts: "create LoRA for U-Net: 722 modules"
    assert set(loaded.tensors) == {"unet"}
