"""``likeness convert``: diffusers/PEFT LoRAs written by their own writers (diffusers' save_lora_weights, PEFT's
save_pretrained) on a tiny SD1-shaped model become Kohya files whose keys our Kohya loader knows and that give
the same UNet and text-encoder outputs as the original when diffusers applies both."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from training_stack import require_training_stack

torch = require_training_stack()  # the `train` extra; CI installs it through `test`

from lora_likeness.checkpoints import list_runs
from lora_likeness.sweep.convert import ConversionError, convert_to_kohya, kohya_module_key, split_key
from lora_likeness.training import kohya_format as kf

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"

# What diffusers' train_dreambooth_lora.py targets, and all of sd-scripts' default targets (a superset).
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_TARGETS = ATTENTION + ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from lora_likeness.training.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("convert") / "base", TOKENIZER)


def _components(base: Path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(base / "unet", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", local_files_only=True)
    return unet.eval(), text_encoder.eval()


def _lora_components(unet, text_encoder):
    from lora_likeness.families import FAMILIES

    return FAMILIES["sd1"].lora_components({"unet": unet, "text_encoder": text_encoder})


def _inputs():
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn((1, 4, 8, 8), generator=generator)
    context = torch.randn((1, 77, 32), generator=generator)
    ids = torch.randint(0, 49406, (1, 77), generator=generator)
    return latents, context, ids


@torch.no_grad()
def _outputs(unet, text_encoder) -> tuple:
    latents, context, ids = _inputs()
    return unet(latents, 500, context).sample, text_encoder(ids)[0]


def _randomise_lora(model, seed: int) -> None:
    """A trained-looking LoRA: non-zero up matrices (peft starts them at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _unet_config(targets=UNET_TARGETS, patterns: bool = True, **extra):
    """Rank 4 and alpha 8 (scale 2); with ``patterns`` also a rank and an alpha pattern, so per-module scales differ."""
    from peft import LoraConfig

    if patterns:
        extra.update(rank_pattern={"attn2.to_k": 2}, alpha_pattern={"attn1.to_q": 3.0})
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=True, **extra)


def _add_lora(model, config) -> None:
    """LoRA layers as ``add_adapter`` adds them (adapter ``default``), through peft itself: transformers' own
    ``add_adapter`` refuses peft releases it was not built against, a pairing Likeness never uses."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name="default")


def write_diffusers_lora(base: Path, folder: Path, targets=ATTENTION, diffusers_names: bool = True, metadata: bool = True,
                         patterns: bool = True, seed: int = 1):
    """A LoRA saved by diffusers' own writer, the way its training scripts save it (train_dreambooth_lora.py's
    save hook: ``convert_state_dict_to_diffusers(get_peft_model_state_dict(model))`` → ``save_lora_weights``;
    ``diffusers_names=False`` skips the renaming, as newer scripts do).

    With ``metadata`` the LoraConfigs go into the header (diffusers ≥ 0.34) and alpha != rank; without it
    the alphas equal the ranks, as those scripts train (``lora_alpha=rank``), since the file stores no alpha.
    Returns ``(file, (UNet output, text-encoder output) of the live model, peft state dicts)``.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet, text_encoder = _components(base)
    if metadata:
        unet_config = _unet_config(targets, patterns)
        text_config = LoraConfig(r=4, lora_alpha=2, target_modules=TEXT_TARGETS, init_lora_weights=True)
    else:
        unet_config = LoraConfig(r=4, lora_alpha=4, target_modules=targets)
        text_config = LoraConfig(r=4, lora_alpha=4, target_modules=TEXT_TARGETS)
    _add_lora(unet, unet_config)
    _add_lora(text_encoder, text_config)
    _randomise_lora(unet, seed)
    _randomise_lora(text_encoder, seed + 1)
    expected = _outputs(unet, text_encoder)
    states = {"unet": get_peft_model_state_dict(unet), "text_encoder": get_peft_model_state_dict(text_encoder)}
    rename = convert_state_dict_to_diffusers if diffusers_names else dict
    extra = {"unet_lora_adapter_metadata": unet_config.to_dict(), "text_encoder_lora_adapter_metadata": text_config.to_dict()} if metadata else {}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=rename(states["unet"]),
                                              text_encoder_lora_layers=rename(states["text_encoder"]), **extra)
    return folder / "pytorch_lora_weights.safetensors", expected, states


def _pipeline(base: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(base, local_files_only=True, safety_checker=None)


def _unet_output_with(base: Path, lora: Path):
    """The UNet output after diffusers' own LoRA reader (``lora_state_dict``: names, alphas, metadata) and UNet
    loader applied ``lora``. The text-encoder half of ``load_lora_weights`` goes through transformers'
    ``load_adapter``, which refuses peft releases transformers was not built against; the product never uses
    it, so the text encoder is checked against the saved model and the A1111/ComfyUI-style merge instead."""
    pipe = _pipeline(base)
    state, alphas, metadata = pipe.lora_state_dict(str(lora), return_lora_metadata=True)
    pipe.load_lora_into_unet({k: v for k, v in state.items() if k.startswith("unet.")}, network_alphas=alphas, unet=pipe.unet,
                             adapter_name="x", metadata=metadata)
    assert any(".lora_A." in n for n, _ in pipe.unet.named_parameters())
    return _outputs(pipe.unet.eval(), pipe.text_encoder.eval())[0]


@torch.no_grad()
def _outputs_like_a1111(base: Path, lora: Path) -> tuple:
    """UNet and text-encoder outputs with a Kohya file applied the way A1111 and ComfyUI apply one:
    ``W += up @ down × alpha / rank`` on the module its key names (names resolved by our Kohya map)."""
    from safetensors.torch import load_file

    unet, text_encoder = _components(base)
    targets = kf.target_map(kf.find_targets(_lora_components(unet, text_encoder)))
    state = load_file(str(lora))
    for key in {k.split(".", 1)[0] for k in state}:
        target = targets[key]
        module = (unet if target.component == "unet" else text_encoder).get_submodule(target.path)
        down, up = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"]
        scale = float(state[f"{key}.alpha"]) / down.shape[0]
        module.weight += (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape) * scale
    return _outputs(unet, text_encoder)


def _close(a, b) -> bool:
    # float32 rounding of merged weights vs LoRA layers is ~1e-5; a wrong alpha or a missing module is ~1e-1.
    return torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def _check_keys(target: Path, states: dict, base: Path) -> dict:
    """(a) every module maps, and our Kohya loader takes the file back with no unknown key and the same tensors."""
    from safetensors.torch import load_file

    converted = load_file(str(target))
    modules = {kohya_module_key(c, split_key(f"{c}.{name}")[1]) for c, state in states.items() for name in state}
    assert {k.split(".", 1)[0] for k in converted} == modules
    assert len(converted) == 3 * len(modules) and 2 * len(modules) == sum(len(state) for state in states.values())
    unet, text_encoder = _components(base)
    tensors, alphas, unknown = kf.kohya_to_peft(converted, kf.target_map(kf.find_targets(_lora_components(unet, text_encoder))))
    assert unknown == []
    for component, state in states.items():
        assert tensors[component].keys() == state.keys()
        assert all(torch.equal(tensors[component][k], state[k]) for k in state)
    return alphas


def test_diffusers_lora_converts_to_the_same_model(base, tmp_path):
    original, expected, states = write_diffusers_lora(base, tmp_path / "exp_e10")
    target = convert_to_kohya(original, tmp_path / "kohya" / "exp-000010.safetensors")
    alphas = _check_keys(target, states, base)
    # alpha = scale × rank: lora_alpha 8 at rank 4; attn2.to_k has rank 2 and keeps alpha 8; attn1.to_q has alpha 3.
    assert alphas["unet"]["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"] == 8.0
    assert alphas["unet"]["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == 8.0
    assert alphas["unet"]["up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q"] == 3.0
    assert set(alphas["text_encoder"].values()) == {2.0}

    # (b) diffusers applies the original as the saved model was; the Kohya file applied as A1111/ComfyUI apply it
    # gives the same outputs. (diffusers' own Kohya loader would not: it drops per-module alphas that differ from
    # the most common one, see test_peft_names_on_all_kohya_targets for the uniform case it gets right.)
    plain = _outputs(*_components(base))
    diffusers_unet = _unet_output_with(base, original)
    assert _close(diffusers_unet, expected[0]), float((diffusers_unet - expected[0]).abs().max())
    for b, c, d in zip(_outputs_like_a1111(base, target), expected, plain):
        assert _close(b, c), float((b - c).abs().max())
        assert not _close(b, d)  # and the LoRA does change the output

    meta = kf.read_metadata(target)
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"]) == ("networks.lora", "4", "8.0")
    assert (meta["ss_base_model_version"], meta["ss_epoch"], meta["likeness_converted_from"]) == \
        ("sd_v1", "10", "exp_e10/pytorch_lora_weights.safetensors")
    assert meta["likeness_alpha_source"] == "file metadata"
    from safetensors.torch import load_file

    ss_only = {k: v for k, v in meta.items() if k.startswith("ss_")}
    assert meta["sshs_model_hash"] == kf.precalculate_hashes(load_file(str(target)), ss_only)[0]


def test_peft_names_on_all_kohya_targets(base, tmp_path):
    """proj_in/proj_out (1×1 convolutions in SD1) and the feed-forward layers too, saved with PEFT's names."""
    original, expected, states = write_diffusers_lora(base, tmp_path / "e5", targets=UNET_TARGETS, diffusers_names=False,
                                                      patterns=False, seed=3)
    target = convert_to_kohya(original, tmp_path / "all.safetensors")
    alphas = _check_keys(target, states, base)
    assert alphas["unet"]["down_blocks.0.attentions.0.proj_in"] == 8.0
    # One alpha for every module: diffusers' loader reads the original and the Kohya file alike.
    a, b = _unet_output_with(base, original), _unet_output_with(base, target)
    assert _close(a, expected[0]) and _close(b, expected[0]), [float((x - expected[0]).abs().max()) for x in (a, b)]
    for c, d in zip(_outputs_like_a1111(base, target), expected):
        assert _close(c, d), float((c - d).abs().max())


def test_without_stored_alphas_the_scale_stays_one(base, tmp_path):
    # convert_state_dict_to_diffusers renames only attention layers, so proj_in/ff keep PEFT's names: mixed spellings.
    original, expected, states = write_diffusers_lora(base, tmp_path / "checkpoint-500", targets=UNET_TARGETS, metadata=False, seed=5)
    target = convert_to_kohya(original, tmp_path / "out.safetensors")
    _check_keys(target, states, base)
    meta = kf.read_metadata(target)
    assert (meta["ss_network_alpha"], meta["likeness_alpha_source"], meta["ss_steps"]) == ("4.0", "rank (scale 1.0)", "500")
    assert "ss_epoch" not in meta
    a = _unet_output_with(base, target)
    assert _close(a, expected[0]), float((a - expected[0]).abs().max())
    for b, c in zip(_outputs_like_a1111(base, target), expected):
        assert _close(b, c), float((b - c).abs().max())
    # --alpha says what the file does not: every module's Kohya alpha, the matrices unchanged.
    from safetensors.torch import load_file

    doubled = convert_to_kohya(original, tmp_path / "doubled.safetensors", alpha=8)
    assert kf.read_metadata(doubled)["likeness_alpha_source"] == "argument"
    one, two = load_file(str(target)), load_file(str(doubled))
    assert one.keys() == two.keys()
    assert all(float(two[k]) == 8.0 and float(one[k]) == 4.0 for k in one if k.endswith(".alpha"))
    assert all(torch.equal(one[k], two[k]) for k in one if not k.endswith(".alpha"))


def test_peft_adapter_with_its_config(base, tmp_path):
    """PEFT's own save_pretrained: base_model.model.… keys, alphas in adapter_config.json beside the file."""
    from peft import get_peft_model

    unet, _ = _components(base)
    model = get_peft_model(unet, _unet_config(use_rslora=True))  # all Kohya targets, patterns, alpha/√r
    _randomise_lora(model, 11)
    expected = _outputs(model.base_model.model, _components(base)[1])[0]
    model.save_pretrained(tmp_path / "adapter" / "epoch_3")
    source = tmp_path / "adapter" / "epoch_3" / "adapter_model.safetensors"
    assert (source.parent / "adapter_config.json").is_file()
    assert next(iter(list_runs(tmp_path / "adapter").values()))[0].format == "peft"
    target = convert_to_kohya(source, tmp_path / "peft.safetensors")
    meta = kf.read_metadata(target)
    assert (meta["likeness_alpha_source"], meta["ss_epoch"], meta["likeness_converted_format"]) == ("adapter_config.json", "3", "peft")
    got = _outputs_like_a1111(base, target)[0]
    assert _close(got, expected), float((got - expected).abs().max())  # rsLoRA's scale alpha/√r, written as alpha·√r


def test_refuses_to_overwrite_and_never_writes_the_source(base, tmp_path):
    original, _, _ = write_diffusers_lora(base, tmp_path / "run", metadata=False)
    from safetensors.torch import load_file

    target = convert_to_kohya(original, tmp_path / "lora.safetensors")
    before = {k: v.clone() for k, v in load_file(str(target)).items()}  # copies: load_file maps the file, rewritten below
    target.write_bytes(b"user's own file")
    with pytest.raises(ConversionError, match="already exists: pass --force"):
        convert_to_kohya(original, target)
    assert target.read_bytes() == b"user's own file"
    convert_to_kohya(original, target, overwrite=True)
    after = load_file(str(target))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    source_bytes = original.read_bytes()
    with pytest.raises(ConversionError, match="is the source file"):
        convert_to_kohya(original, original, overwrite=True)
    assert original.read_bytes() == source_bytes
    with pytest.raises(ConversionError, match="already a Kohya LoRA"):
        convert_to_kohya(target, tmp_path / "again.safetensors")


def test_dora_and_unknown_files_are_refused_clearly(base, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet, _ = _components(base)
    _add_lora(unet, _unet_config(use_dora=True))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "dora", unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    dora = tmp_path / "dora" / "pytorch_lora_weights.safetensors"
    with pytest.raises(ConversionError, match="DoRA LoRA .*Kohya's networks.lora has no DoRA"):
        convert_to_kohya(dora, tmp_path / "dora.safetensors")
    assert not (tmp_path / "dora.safetensors").exists()

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(ConversionError, match="holds no LoRA tensors .* not a diffusers or PEFT LoRA"):
        convert_to_kohya(tmp_path / "checkpoint.safetensors", tmp_path / "x.safetensors")
    (tmp_path / "pytorch_lora_weights.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ConversionError, match=r"not a \.safetensors file .*never loaded"):
        convert_to_kohya(tmp_path / "pytorch_lora_weights.bin", tmp_path / "y.safetensors")
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 32, 1, 1)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(ConversionError, match="proj_in has no up \\(lora_B\\) matrix"):
        convert_to_kohya(tmp_path / "half.safetensors", tmp_path / "z.safetensors")
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 3072),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 2)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(ConversionError, match="Flux"):
        convert_to_kohya(tmp_path / "flux.safetensors", tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


def test_key_names_of_sdxl_and_of_diffusers_old_text_encoder_format():
    from lora_likeness.families import get_family

    sdxl = get_family("sdxl")
    component, path, part, _ = split_key("unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.lora_A.weight")
    assert sdxl.kohya_module_key(component, path) == "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k"
    component, path, part, _ = split_key("text_encoder_2.text_model.encoder.layers.31.mlp.fc2.lora.up.weight")
    assert (sdxl.kohya_module_key(component, path), part) == ("lora_te2_text_model_encoder_layers_31_mlp_fc2", "up")
    assert sdxl.kohya_module_key("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj") == \
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    # diffusers before peft (and its lora_state_dict today): attention LoRAs per projection, alphas by the down matrix.
    assert split_key("text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.down.weight")[:3] == \
        ("text_encoder", "text_model.encoder.layers.0.self_attn.out_proj", "down")
    assert split_key("text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight.alpha")[1:3] == \
        ("text_model.encoder.layers.0.self_attn.q_proj", "alpha")
    assert split_key("unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight.alpha")[1:3] == \
        ("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0", "alpha")
    assert split_key("unet.mid_block.attentions.0.proj_in.lora.down.weight.alpha")[1:3] == ("mid_block.attentions.0.proj_in", "alpha")
    with pytest.raises(ConversionError, match="second text encoder .* an SDXL LoRA"):
        kohya_module_key("text_encoder_2", "text_model.encoder.layers.0.self_attn.q_proj")


def test_key_names():
    assert split_key("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight") == \
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert kohya_module_key("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") == \
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    te = split_key("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.up.weight")
    assert te[:3] == ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", "up")
    assert kohya_module_key("text_encoder", te[1]) == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert split_key("text_encoder.encoder.layers.1.mlp.fc1.lora_linear_layer.down.weight")[1] == "text_model.encoder.layers.1.mlp.fc1"
    assert split_key("base_model.model.mid_block.attentions.0.proj_out.lora_B.weight")[:3] == ("unet", "mid_block.attentions.0.proj_out", "up")
    assert split_key("base_model.model.text_model.encoder.layers.0.mlp.fc2.lora_A.weight")[0] == "text_encoder"
    assert split_key("up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight")[1] == \
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0"
    assert split_key("unet.down_blocks.0.resnets.0.conv1.lora_A.default.weight")[1:3] == ("down_blocks.0.resnets.0.conv1", "down")
    assert split_key("unet.mid_block.attentions.0.proj_in.alpha")[2] == "alpha"
    from lora_likeness.sweep.convert import convert_state_dict

    resnet = convert_state_dict({"unet.down_blocks.0.resnets.0.conv1.lora_A.weight": torch.ones(2, 32, 3, 3),
                                 "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": torch.ones(32, 2, 1, 1)})
    assert list(resnet.tensors) == ["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
                                    "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", "lora_unet_down_blocks_0_resnets_0_conv1.alpha"]
    assert "outside sd-scripts' default LoRA targets" in resnet.notes[0] and float(resnet.tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 2
    with pytest.raises(ConversionError, match="UNet or the text encoder"):
        split_key("something.lora_A.weight")


def _cli(argv: list[str]) -> int:
    from lora_likeness.sweep.convert_command import register

    parser = argparse.ArgumentParser(prog="likeness")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_converts_a_folder_of_runs_into_a_kohya_run(base, tmp_path, capsys):
    original, _, _ = write_diffusers_lora(base, tmp_path / "seed", metadata=False)
    output = tmp_path / "output"
    for epoch in (10, 20, 30):
        (output / f"exp_e{epoch}").mkdir(parents=True)
        shutil.copyfile(original, output / f"exp_e{epoch}" / "pytorch_lora_weights.safetensors")
    assert _cli(["convert", str(output)]) == 0
    kohya = tmp_path / "output-kohya"
    assert sorted(p.name for p in kohya.iterdir()) == ["exp-000010.safetensors", "exp-000020.safetensors", "exp-000030.safetensors"]
    assert "wrote" in capsys.readouterr().out
    runs = list_runs(kohya)
    assert list(runs) == ["exp"] and [c.label for c in runs["exp"]] == ["e10", "e20", "e30"]
    assert {c.format for c in runs["exp"]} == {"kohya"}

    before = {p.name: p.stat().st_mtime_ns for p in kohya.iterdir()}
    assert _cli(["convert", str(output), "--out", str(kohya)]) == 2
    assert "exp-000010.safetensors already exists: pass --force" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in kohya.iterdir()} == before  # nothing half done
    assert _cli(["convert", str(output), "--out", str(kohya), "--force", "--alpha", "2"]) == 0
    assert kf.read_metadata(kohya / "exp-000020.safetensors")["ss_network_alpha"] == "2.0"

    # One file: the same name in the same place as when its folder is converted.
    (kohya / "exp-000020.safetensors").unlink()
    assert _cli(["convert", str(output / "exp_e20" / "pytorch_lora_weights.safetensors")]) == 0
    assert kf.read_metadata(kohya / "exp-000020.safetensors")["ss_epoch"] == "20"
    assert _cli(["convert", str(output / "exp_e30" / "pytorch_lora_weights.safetensors"), "--out", str(tmp_path / "one.safetensors")]) == 0
    assert kf.read_metadata(tmp_path / "one.safetensors")["ss_epoch"] == "30"
    # A Kohya file among the folders is skipped with a note, and is a run of its own.
    shutil.copyfile(kohya / "exp-000010.safetensors", output / "exp-000010.safetensors")
    assert list(list_runs(output)) == ["exp", "exp (diffusers)"]
    capsys.readouterr()
    assert _cli(["convert", str(output), "--out", str(tmp_path / "again")]) == 0
    assert "exp-000010.safetensors: already a Kohya LoRA, skipped" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["exp-000010.safetensors", "exp-000020.safetensors", "exp-000030.safetensors"]
    assert _cli(["convert", str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
