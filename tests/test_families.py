"""The model-family contract, run on every registered family's tiny random model (CPU):
detect → load → train (a Kohya file per epoch) → the file's keys are sd-scripts' for that family →
in-place switching gives diffusers' own loader's image and leaves the base weights bit-identical.

Plus what is special to SDXL (prompt encoding equal to diffusers' SDXL pipeline, ``add_time_ids`` from
each image's size and crop, sgm key names) and the detection of what cannot be used as a base
(inpainting, refiner, SD2, Flux, a LoRA, a truncated file) before anything is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training_stack import require_training_stack

torch = require_training_stack()  # the `train` extra; CI installs it through `test`

from lora_likeness.families import FAMILIES, ImageGeometry, ModelLoadError, detect, detect_family, get_family, load_base
from lora_likeness.safetensors_header import HeaderError, read_header
from lora_likeness.sweep.loras import LoraSwitcher
from lora_likeness.training import kohya_format as kf
from lora_likeness.training.config import FAMILY_CHOICES, TrainConfig
from lora_likeness.training.trainer import train_lora

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"
TOKENIZER_G = SHARED / "tokenizers" / "sdxl_clip_g"

# What sd-scripts names each family's modules (networks/lora.py, SDXL on its original-layout UNet).
KOHYA_PREFIXES = {"sd1": {"lora_te", "lora_unet"}, "sdxl": {"lora_te1", "lora_te2", "lora_unet"}}
UNET_KEY_START = {"sd1": ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_"),
                  "sdxl": ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")}
BASE_VERSION = {"sd1": ("sd_v1", "stable-diffusion-v1/lora"), "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora")}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory):
    """``(family name, tiny base folder, TrainResult)``: two epochs of a rank-4 LoRA on UNet and text encoders
    (asked for explicitly: SDXL's default is the UNet only)."""
    from lora_likeness.training.tiny import write_tiny_model, write_training_folder

    name = request.param
    root = tmp_path_factory.mktemp(name)
    base = write_tiny_model(root / "base", TOKENIZER, family=name, tokenizer_2_dir=TOKENIZER_G)
    data = write_training_folder(root / "data", n_images=4, size=(48, 40), repeats=1)
    config = TrainConfig(base=base, data=data, out=root / "loras", name="me", epochs=2, rank=4, alpha=2, lr=5e-3, text_encoder_lr=5e-3, resolution=32,
                         min_bucket_reso=32, max_bucket_reso=64, bucket_reso_steps=8, batch_size=2, mixed_precision="no",
                         save_precision="float", seed=3, device="cpu")
    return name, base, train_lora(config)


def _pipe(family: str, base: Path):
    import diffusers

    spec = get_family(family)
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(base, **spec.pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _modules(pipe, family: str) -> dict:
    return {"unet": pipe.unet, **{s.component: getattr(pipe, s.component) for s in get_family(family).text_encoder_slots}}


def _image(pipe):
    generator = torch.Generator().manual_seed(7)
    return pipe("photo of ohwx person", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np").images


def _base_weights(module) -> dict:
    """The base model's tensors by their plain names (peft's wrappers keep the original as ``base_layer``)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in module.state_dict().items() if "lora_" not in k}


@torch.no_grad()
def _merge_text_encoders(pipe, family: str, state: dict, strength: float) -> None:
    """Apply the text-encoder half of a Kohya file the way A1111 does: ``W += strength·up@down·alpha/rank`` on the module
    whose dotted path, with ``.`` → ``_`` behind the prefix, is the key (names resolved here, not by our target map)."""
    for slot in get_family(family).text_encoder_slots:
        encoder = getattr(pipe, slot.component)
        flattened = not hasattr(encoder, "text_model")
        by_key = {}
        for path, module in encoder.named_modules():
            spelled = f"text_model.{path}" if flattened else path
            by_key[f"{slot.kohya_prefix}_{spelled.replace('.', '_')}"] = module
        keys = {k.split(".", 1)[0] for k in state if k.startswith(slot.kohya_prefix + "_")}
        assert keys, slot.kohya_prefix
        for key in keys:
            module = by_key[key]
            down, up = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"]
            module.weight += (up @ down) * float(state[f"{key}.alpha"]) / down.shape[0] * strength


# ------------------------------------------------------------------------------------------------
# the contract
# ------------------------------------------------------------------------------------------------


def test_detects_and_loads_its_own_family(trained):
    name, base, _ = trained
    assert detect(base).architecture == name and detect_family(base).name == name
    model = load_base(base, tokenizer=TOKENIZER)
    assert model.family.name == name
    assert list(model.text_encoders) == [s.component for s in model.family.text_encoder_slots]
    conditioning = model.family.encode_prompts(model, ["photo of ohwx person", "a dog"])
    assert conditioning.hidden.shape[:2] == (2, 77)
    assert conditioning.hidden.shape[2] == model.unet.config.cross_attention_dim
    other = next(n for n in FAMILIES if n != name)
    with pytest.raises(ModelLoadError, match=f"is an {get_family(name).title} model, not {get_family(other).title}"):
        detect_family(base, other)


def test_checkpoints_carry_the_familys_kohya_names_and_metadata(trained):
    name, base, result = trained
    assert [p.name for p in result.checkpoints] == ["me-000001.safetensors"] and result.final.name == "me.safetensors"
    state = kf.read_metadata(result.final)
    assert (state["ss_base_model_version"], state["modelspec.architecture"]) == BASE_VERSION[name]
    assert state["ss_network_module"] == "networks.lora" and state["ss_epoch"] == "2"
    keys = kf.lora_header_keys(result.final)
    modules = {k.split(".", 1)[0] for k in keys}
    prefixes = {next((p for p in KOHYA_PREFIXES[name] if m.startswith(p + "_")), m) for m in modules}
    assert prefixes == KOHYA_PREFIXES[name]
    unet_keys = [m for m in modules if m.startswith("lora_unet_")]
    assert unet_keys and all(m.startswith(UNET_KEY_START[name]) for m in unet_keys), sorted(unet_keys)[:3]
    # Every module sd-scripts would train is there, with down, up and alpha.
    pipe = _pipe(name, base)
    expected = {t.key for t in kf.find_targets(get_family(name).lora_components(_modules(pipe, name)))}
    assert modules == expected
    assert len(keys) == 3 * len(expected)


def test_switching_equals_diffusers_and_leaves_the_base_untouched(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    name, base, result = trained
    state = load_file(str(result.final))
    unet_only = tmp_path / "unet_only.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("lora_unet_")}, str(unet_only))

    pipe = _pipe(name, base)
    plain = _image(pipe)
    before = {c: _base_weights(m) for c, m in _modules(pipe, name).items()}
    switcher = LoraSwitcher(get_family(name).lora_components(_modules(pipe, name)))
    assert switcher.apply(switcher.load(unet_only), 0.8) == "injected"
    ours_unet = _image(pipe)
    # diffusers' own reader and UNet loader (its text-encoder half goes through transformers' PEFT integration,
    # which Likeness never uses: the text encoders are checked against a merge below).
    reference = _pipe(name, base)
    reference.load_lora_weights(load_file(str(unet_only)), adapter_name="ref")
    reference.set_adapters(["ref"], [0.8])
    assert abs(_image(reference) - ours_unet).max() < 1e-5
    assert abs(ours_unet - plain).max() > 1e-4  # the LoRA does change the image

    switcher.apply(switcher.load(result.final), 0.8)  # another shape (text encoders too): fresh layers
    ours_full = _image(pipe)
    merged = _pipe(name, base)
    merged.load_lora_weights(load_file(str(unet_only)), adapter_name="ref")
    merged.set_adapters(["ref"], [0.8])
    _merge_text_encoders(merged, name, state, 0.8)
    assert abs(_image(merged) - ours_full).max() < 1e-4
    assert abs(ours_full - ours_unet).max() > 1e-4  # the text-encoder LoRA does something too

    switcher.disable()
    assert (_image(pipe) == plain).all()
    switcher.remove()
    for component, module in _modules(pipe, name).items():
        after = _base_weights(module)
        assert after.keys() == before[component].keys()
        assert all(torch.equal(before[component][k], after[k]) for k in after), component


def test_a_diffusers_format_lora_is_swept_and_converted_as_its_kohya_twin(trained, tmp_path):
    """What diffusers' training scripts save (``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` keys, diffusers' UNet
    paths): the sweep reads it onto the same modules as the Kohya file, and ``likeness convert`` writes the Kohya names
    sd-scripts gives the family. The diffusers-format file is made by diffusers' own Kohya reader (``lora_state_dict``),
    so both directions of the renaming are not ours."""
    import diffusers
    from safetensors.torch import load_file, save_file

    from lora_likeness.checkpoints import sweep_checkpoints
    from lora_likeness.sweep.convert import convert_to_kohya

    name, base, result = trained
    spec = get_family(name)
    kohya = load_file(str(result.final))
    pipeline_class = getattr(diffusers, spec.pipeline_class)
    pipe = _pipe(name, base)
    converted = pipeline_class.lora_state_dict(dict(kohya), unet_config=pipe.unet.config)  # the config maps SDXL's sgm names
    state, alphas = converted[:2] if isinstance(converted, tuple) else (converted, {})
    assert any(k.startswith("text_encoder.") for k in state) and any(k.startswith("unet.") for k in state)
    if name == "sdxl":
        assert any(k.startswith("text_encoder_2.") for k in state)
    tensors = {k: v.contiguous() for k, v in state.items()}
    tensors.update({k: torch.tensor(float(v)) for k, v in (alphas or {}).items()})
    run = tmp_path / "diffusers_run" / "exp_e2"
    run.mkdir(parents=True)
    save_file(tensors, str(run / "pytorch_lora_weights.safetensors"))

    found = sweep_checkpoints(tmp_path / "diffusers_run", base=name)  # its family is told from its keys and shapes
    assert [(c.format, c.epoch) for c in found] == [("diffusers", 2)]
    switcher = LoraSwitcher(spec.lora_components(_modules(pipe, name)))
    ours, twin = switcher.load(found[0].path, found[0].format), switcher.load(result.final)
    assert not ours.unknown and ours.shape == twin.shape
    for component, paths in twin.tensors.items():
        for path, (down, up) in paths.items():
            assert torch.equal(ours.tensors[component][path][0], down) and torch.equal(ours.tensors[component][path][1], up)
    assert ours.alphas == twin.alphas

    written = convert_to_kohya(found[0].path, tmp_path / "me-000002.safetensors")
    back = load_file(str(written))
    assert back.keys() == kohya.keys()
    assert all(torch.allclose(back[k].float(), kohya[k].float()) for k in kohya)
    assert kf.read_metadata(written)["ss_base_model_version"] == BASE_VERSION[name][0]


def test_every_registered_family_is_offered_by_the_cli_and_config():
    assert set(FAMILY_CHOICES) == {"auto", *FAMILIES}
    # Unless told, SD1.x LoRAs train the text encoder and SDXL LoRAs the UNet only; told, both do what they are told.
    assert TrainConfig().for_family(get_family("sd1")).train_text_encoder
    assert not TrainConfig().for_family(get_family("sdxl")).train_text_encoder
    assert TrainConfig(text_encoder_lr=1e-5).for_family(get_family("sdxl")).train_text_encoder
    assert not TrainConfig(text_encoder_lr=0).for_family(get_family("sd1")).train_text_encoder
    for family in FAMILIES.values():
        assert family.defaults.resolution % 64 == 0 and family.defaults.width % 8 == 0
        assert set(family.configs) >= {"model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"}
        assert {f"{s.component}/config.json" for s in family.text_encoder_slots} <= set(family.configs)


# ------------------------------------------------------------------------------------------------
# SDXL specifics
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from lora_likeness.training.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("sdxl") / "base", TOKENIZER, family="sdxl", tokenizer_2_dir=TOKENIZER_G)


def test_sdxl_prompts_are_encoded_as_diffusers_sdxl_pipeline_does(tiny_sdxl):
    model = load_base(tiny_sdxl, tokenizer=TOKENIZER)
    assert model.tokenizers["tokenizer_2"].pad_token == "!"  # SDXL's second tokenizer pads with '!', not the end token
    pipe = _pipe("sdxl", tiny_sdxl)
    captions = ["photo of ohwx person, smiling", "a red car"]
    with torch.no_grad():
        ours = model.family.encode_prompts(model, captions)
        embeds, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
        ours_skip = model.family.encode_prompts(model, captions, clip_skip=2)
        embeds_skip, _, _, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, clip_skip=1)
    assert ours.hidden.shape == (2, 77, 32) and ours.pooled.shape == (2, 32)
    assert torch.allclose(ours.hidden, embeds, atol=1e-6) and torch.allclose(ours.pooled, pooled, atol=1e-6)
    assert torch.allclose(ours_skip.hidden, embeds_skip, atol=1e-6) and not torch.allclose(ours_skip.hidden, ours.hidden)


def test_sdxl_time_ids_come_from_each_images_size_and_crop(tiny_sdxl):
    from lora_likeness.training.data import Item, cover_crop

    model = load_base(tiny_sdxl, tokenizer=TOKENIZER)
    family = model.family
    # A 300x200 photo in a 64x32 bucket: scaled to 64x43 (cover), cropped 5 px from the top.
    item = Item(Path("x.png"), "c", 0, False, size=(300, 200), bucket=(64, 32))
    assert cover_crop(item.size, item.bucket) == ((64, 43), (0, 5))
    assert item.geometry == ImageGeometry(original_hw=(200, 300), crop_top_left=(5, 0), target_hw=(32, 64))
    conditioning = family.encode_prompts(model, ["a", "b"])
    inputs = family.unet_inputs(model, conditioning, [item.geometry, ImageGeometry((1024, 768), (0, 0), (1024, 768))])
    assert inputs["added_cond_kwargs"]["time_ids"].tolist() == [[200, 300, 5, 0, 32, 64], [1024, 768, 0, 0, 1024, 768]]
    # The same order diffusers' SDXL pipeline builds for (original_size, crops_coords_top_left, target_size).
    pipe = _pipe("sdxl", tiny_sdxl)
    built = pipe._get_add_time_ids((200, 300), (5, 0), (32, 64), dtype=torch.float32,
                                   text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert built.tolist() == [[200, 300, 5, 0, 32, 64]]
    # And the UNet's output depends on them (a wrong order or a missing crop would train the wrong thing).
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        one = model.unet(latents, 10, **inputs).sample
        inputs["added_cond_kwargs"]["time_ids"] = inputs["added_cond_kwargs"]["time_ids"].flip(0)
        two = model.unet(latents, 10, **inputs).sample
    assert not torch.allclose(one, two)


def test_sdxl_training_resumes_exactly_with_checkpointing_min_snr_noise_offset_and_samples(tiny_sdxl, tmp_path):
    """Ctrl-C and --resume on SDXL give the uninterrupted run's weights bit for bit, with the generic options on;
    the samples are drawn by the SDXL pipeline each epoch. Unless told, only the UNet trains (text states cached)."""
    from lora_likeness.progress import Progress
    from lora_likeness.training.tiny import write_training_folder
    from lora_likeness.training.trainer import TrainingCancelled

    class CancelAfter(Progress):
        def advance(self, count: int = 1, detail: str | None = None) -> None:
            super().advance(count, detail)
            if self.description.startswith("training") and self.done >= 1:
                self.cancel()

    data = write_training_folder(tmp_path / "data", n_images=4, size=(48, 40), repeats=1)

    def config(out: Path) -> TrainConfig:
        return TrainConfig(base=tiny_sdxl, data=data, out=out, name="me", epochs=2, rank=4, alpha=2, lr=5e-3, resolution=32,
                           min_bucket_reso=32, max_bucket_reso=64, bucket_reso_steps=8, batch_size=2, mixed_precision="no",
                           save_precision="float", seed=5, device="cpu", gradient_checkpointing=True, min_snr_gamma=5.0,
                           noise_offset=0.05, sample_every_n_epochs=1, sample_steps=2)

    whole = train_lora(config(tmp_path / "whole"))
    assert sorted(whole.samples) == [1, 2] and all(p.is_file() for paths in whole.samples.values() for p in paths)
    with pytest.raises(TrainingCancelled):
        train_lora(config(tmp_path / "parts"), CancelAfter())
    resumed = train_lora(config(tmp_path / "parts"), resume=True)
    assert resumed.steps == whole.steps == 4
    from safetensors.torch import load_file

    for name in ("me-000001.safetensors", "me.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "parts" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not any(k.startswith("lora_te") for k in a)


def test_sdxl_vae_runs_in_float32_under_fp16_unless_it_is_the_fp16_fix():
    """The original SDXL VAE overflows in fp16 (NaN latents): with fp16 weights it runs in float32, unless its
    config says force_upcast false (madebyollin's fp16-fix VAE); SD1's VAE runs in the weights' dtype."""
    from types import SimpleNamespace

    original, fixed = SimpleNamespace(config=SimpleNamespace(force_upcast=True)), SimpleNamespace(config=SimpleNamespace(force_upcast=False))
    sdxl, sd1 = get_family("sdxl"), get_family("sd1")
    assert sdxl.vae_dtype(original, torch.float16) == torch.float32
    assert sdxl.vae_dtype(fixed, torch.float16) == torch.float16
    assert sdxl.vae_dtype(original, torch.bfloat16) == torch.bfloat16 and sd1.vae_dtype(original, torch.float16) == torch.float16


def test_sgm_names_of_the_full_size_sdxl_unet():
    """The published SDXL UNet: 722 LoRA modules named as in sd-scripts / A1111 / ComfyUI (input_blocks 4, 5, 7, 8,
    middle_block, output_blocks 0–5), from the built-in config with no weights allocated."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from lora_likeness.families.sdxl import UNET, sgm_unet_path

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config({k: v for k, v in UNET.items() if not k.startswith("_")})
    targets = kf.find_targets(get_family("sdxl").lora_components({"unet": unet}, text_encoders=False))
    assert len(targets) == 722  # sd-scripts: "create LoRA for U-Net: 722 modules"
    blocks = sorted({".".join(t.key.split("_")[2:5]) for t in targets})
    assert blocks == sorted({"input.blocks.4", "input.blocks.5", "input.blocks.7", "input.blocks.8", "middle.block.1",
                             "output.blocks.0", "output.blocks.1", "output.blocks.2", "output.blocks.3", "output.blocks.4",
                             "output.blocks.5"})
    assert sgm_unet_path("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k", 2) == "input_blocks.8.1.transformer_blocks.9.attn2.to_k"
    assert sgm_unet_path("up_blocks.1.attentions.2.proj_out", 2) == "output_blocks.5.1.proj_out"
    assert sgm_unet_path("mid_block.attentions.0.transformer_blocks.0.ff.net.2", 2) == "middle_block.1.transformer_blocks.0.ff.net.2"


# ------------------------------------------------------------------------------------------------
# what cannot be a base, said before anything is loaded
# ------------------------------------------------------------------------------------------------


def _checkpoint(path: Path, keys: dict[str, tuple]) -> Path:
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    return path


SD1_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1), "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)}
SDXL_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1),
             "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (4,),
             "conditioner.embedders.1.model.ln_final.weight": (4,)}


@pytest.mark.parametrize(("keys", "architecture", "variant", "message"), [
    (SD1_KEYS, "sd1", "base", None),
    (SDXL_KEYS, "sdxl", "base", None),
    ({**SD1_KEYS, "model.diffusion_model.input_blocks.0.0.weight": (8, 9, 1, 1)}, "sd1", "inpainting", "is an SD1.x inpainting checkpoint"),
    ({**SDXL_KEYS, "model.diffusion_model.input_blocks.0.0.weight": (8, 9, 1, 1)}, "sdxl", "inpainting", "is an SDXL inpainting checkpoint"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1), "conditioner.embedders.0.model.ln_final.weight": (4,)},
     "sdxl", "refiner", "is an SDXL refiner checkpoint"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1), "cond_stage_model.model.ln_final.weight": (4,)},
     "sd2", "base", "SD2.x is not supported"),
    ({"double_blocks.0.img_attn.qkv.weight": (4, 4)}, "flux", "base", "Flux is not supported yet"),
    ({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 8)}, "lora", "lora", "is a LoRA, not a base model"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1)}, "unknown", "unet-only", "a UNet-only file"),
])
def test_what_a_checkpoint_is(tmp_path, keys, architecture, variant, message):
    path = _checkpoint(tmp_path / "model.safetensors", keys)
    found = detect(path)
    assert (found.architecture, found.variant) == (architecture, variant)
    if message is None:
        assert found.problem is None and detect_family(path).name == architecture
    else:
        with pytest.raises(ModelLoadError, match=message) as error:
            detect_family(path)
        assert str(error.value).startswith("base model.safetensors ")


def test_truncated_and_pickled_bases_are_refused_with_the_reason(tmp_path):
    path = _checkpoint(tmp_path / "big.safetensors", {**SDXL_KEYS, "model.diffusion_model.out.2.weight": (64, 64)})
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-1000])
    with pytest.raises(HeaderError, match=r"truncated: its tensors need [\d,]+ bytes but the file has [\d,]+"):
        read_header(cut)
    with pytest.raises(ModelLoadError, match="base cut.safetensors: truncated"):
        detect_family(cut)
    (tmp_path / "head.safetensors").write_bytes(data[:20])
    with pytest.raises(ModelLoadError, match="truncated: the file ends inside its header"):
        detect_family(tmp_path / "head.safetensors")
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04 pickle")
    with pytest.raises(ModelLoadError, match="need unpickling"):
        detect_family(tmp_path / "model.ckpt")
    with pytest.raises(ModelLoadError, match="does not exist"):
        detect_family(tmp_path / "missing.safetensors")
