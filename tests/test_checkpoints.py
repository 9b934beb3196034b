"""LoRA checkpoints of training runs: discovery, epoch order, ranges and architecture from headers."""

from __future__ import annotations

import json
import struct

import pytest
from lora_likeness.checkpoints import (
    ArchitectureMismatch,
    check_architecture,
    list_runs,
    lora_architecture,
    range_unit,
    run_checkpoints,
    scan_loras,
)


def write_header_only(path, tensors: dict[str, list[int]], metadata: dict | None = None) -> None:
    """A valid safetensors file with zero-filled float16 tensors of the given shapes."""
    header, offset = {}, 0
    for key, shape in tensors.items():
        size = 2
        for dim in shape:
            size *= dim
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


SD1_KEYS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 768],
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": [320, 4],
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 768],
}


def make_run(root, name="jx265", epochs=(1, 2, 10), final_epoch=12, sub=""):
    folder = root / sub if sub else root
    for epoch in epochs:
        write_header_only(folder / f"{name}-{epoch:06d}.safetensors", SD1_KEYS, {"ss_epoch": str(epoch)})
    write_header_only(folder / f"{name}.safetensors", SD1_KEYS, {"ss_epoch": str(final_epoch)})


def test_runs_in_epoch_order_with_final_last(tmp_path):
    make_run(tmp_path)
    make_run(tmp_path, name="other", epochs=(3,), sub="people")
    (tmp_path / "notes.txt").write_text("not a LoRA")
    write_header_only(tmp_path / "jx265-state.safetensors", SD1_KEYS)  # likeness train's resumable state
    runs = list_runs(tmp_path)
    assert list(runs) == ["jx265", "people/other"]
    labels = [c.label for c in runs["jx265"]]
    assert labels == ["e1", "e2", "e10", "final (e12)"]  # natural order: e10 after e2
    final = runs["jx265"][-1]
    assert final.final and final.stem == "jx265" and final.name == "jx265.safetensors"
    nested = runs["people/other"][0]
    assert nested.name == "people/other-000003.safetensors" and nested.run_name == "other"
    use = runs["jx265"][2].use(0.8)
    assert (use.run, use.epoch, use.strength) == ("jx265", 10, 0.8)


def test_epoch_from_name_when_metadata_is_missing(tmp_path):
    write_header_only(tmp_path / "run-000007.safetensors", SD1_KEYS)
    write_header_only(tmp_path / "run-step00000500.safetensors", SD1_KEYS)
    checkpoints = scan_loras(tmp_path)
    by_stem = {c.stem: c for c in checkpoints}
    assert by_stem["run-000007"].epoch == 7
    assert by_stem["run-step00000500"].step == 500 and by_stem["run-step00000500"].label == "step 500"


def test_range_and_lookup_by_file_name(tmp_path):
    make_run(tmp_path)
    picked = run_checkpoints(tmp_path, "jx265", first_epoch=2, last_epoch=10)
    assert [c.epoch for c in picked] == [2, 10]  # the final (e12) is outside the range
    assert [c.epoch for c in run_checkpoints(tmp_path, "jx265-000002.safetensors", include_final=False)] == [1, 2, 10]
    with pytest.raises(ValueError, match="runs found: jx265"):
        run_checkpoints(tmp_path, "nobody")


def test_range_of_a_run_saved_by_steps_is_in_steps(tmp_path):
    # sd-scripts --save_every_n_steps: ss_epoch is the epoch in progress; the final file records its ss_steps.
    for step in (250, 500, 750, 1000):
        write_header_only(tmp_path / f"kx-step{step:08d}.safetensors", SD1_KEYS, {"ss_steps": str(step), "ss_epoch": "1"})
    write_header_only(tmp_path / "kx.safetensors", SD1_KEYS, {"ss_steps": "1100", "ss_epoch": "2"})
    assert range_unit(list_runs(tmp_path)["kx"]) == "step"
    picked = run_checkpoints(tmp_path, "kx", first_epoch=500, last_epoch=750)
    assert [c.label for c in picked] == ["step 500", "step 750"]
    assert [c.step for c in run_checkpoints(tmp_path, "kx", first_epoch=1000)] == [1000, 1100]  # the final one by its ss_steps
    make_run(tmp_path / "epochs")  # a run with epoch files keeps its range in epochs
    assert range_unit(list_runs(tmp_path / "epochs")["jx265"]) == "epoch"


def test_architecture_from_metadata_keys_and_shapes(tmp_path):
    sd1 = tmp_path / "sd1.safetensors"
    write_header_only(sd1, SD1_KEYS)
    sd2 = tmp_path / "sd2.safetensors"
    write_header_only(sd2, {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 1024]})
    sdxl = tmp_path / "sdxl.safetensors"
    write_header_only(sdxl, {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 2048],
                             "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 768]})
    flux = tmp_path / "flux.safetensors"
    write_header_only(flux, {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": [4, 3072]})
    tagged = tmp_path / "tagged.safetensors"
    write_header_only(tagged, SD1_KEYS, {"ss_base_model_version": "sdxl_base_v1-0"})
    assert [lora_architecture(p) for p in (sd1, sd2, sdxl, flux, tagged)] == ["sd1", "sd2", "sdxl", "flux", "sdxl"]
    check_architecture(sd1, "sd1")
    check_architecture(sd1, "unknown")
    with pytest.raises(ArchitectureMismatch, match="SDXL LoRA but the loaded model is SD1"):
        check_architecture(sdxl, "sd1")


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="safetensors"):
        lora_architecture(bad)
    assert scan_loras(tmp_path)[0].epoch is None  # listed, not fatal


# ---------------------------------------------------------------------------------------------
# diffusers / PEFT checkpoint folders and the sweep's choice of one run
# ---------------------------------------------------------------------------------------------

DIFFUSERS_KEYS = {  # save_lora_weights after convert_state_dict_to_diffusers (train_dreambooth_lora)
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight": [4, 768],
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora.up.weight": [320, 4],
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": [4, 768],
}
DIFFUSERS_PEFT_KEYS = {  # save_lora_weights with PEFT names (newer scripts)
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": [4, 768],
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": [320, 4],
}
PEFT_KEYS = {  # PeftModel.save_pretrained -> adapter_model.safetensors
    "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": [4, 768],
    "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": [320, 4],
}


def test_format_from_header_keys(tmp_path):
    from lora_likeness.checkpoints import _read_header, lora_format

    cases = {"kohya": SD1_KEYS, "diffusers": DIFFUSERS_KEYS, "peft": PEFT_KEYS, "unknown": {"model.diffusion_model.x.weight": [4]}}
    for expected, keys in cases.items():
        write_header_only(tmp_path / f"{expected}.safetensors", keys)
        assert lora_format(_read_header(tmp_path / f"{expected}.safetensors")) == expected
    write_header_only(tmp_path / "new.safetensors", DIFFUSERS_PEFT_KEYS)
    assert lora_format(_read_header(tmp_path / "new.safetensors")) == "diffusers"
    assert lora_architecture(tmp_path / "diffusers.safetensors") == "sd1"  # attn2.to_k reads 768-wide context
    assert lora_architecture(tmp_path / "peft.safetensors") == "sd1"


def test_diffusers_run_folders_are_one_run_in_epoch_order(tmp_path):
    from lora_likeness.checkpoints import sweep_checkpoints

    output = tmp_path / "output"
    for epoch in (50, 10, 20, 40, 30):  # created out of order on purpose
        write_header_only(output / f"exp_e{epoch}" / "pytorch_lora_weights.safetensors", DIFFUSERS_KEYS)
    runs = list_runs(tmp_path)
    assert list(runs) == ["output/exp"]  # not a run named "pytorch_lora_weights"
    found = runs["output/exp"]
    assert [c.label for c in found] == ["e10", "e20", "e30", "e40", "e50"]
    assert {c.format for c in found} == {"diffusers"} and found[0].name == "output/exp_e10/pytorch_lora_weights.safetensors"
    # The folder itself as root: the run is named by the folders' common prefix.
    picked = sweep_checkpoints(output)
    assert [c.epoch for c in picked] == [10, 20, 30, 40, 50] and picked[0].run == "exp"
    # One file: still labelled by its folder.
    single = sweep_checkpoints(output / "exp_e20" / "pytorch_lora_weights.safetensors")
    assert [(c.label, c.epoch, c.format) for c in single] == [("e20", 20, "diffusers")]


def test_folder_names_epoch_step_or_name(tmp_path):
    from lora_likeness.checkpoints import _folder_label

    assert _folder_label("exp_e10") == ("exp", 10, None)
    assert _folder_label("epoch_10") == ("", 10, None)
    assert _folder_label("epoch-7") == ("", 7, None)
    assert _folder_label("e3") == ("", 3, None)
    assert _folder_label("my-run_epoch12") == ("my-run", 12, None)
    assert _folder_label("checkpoint-500") == ("", None, 500)
    assert _folder_label("pipeline10") == ("", None, None)  # "e10" inside a word is not an epoch
    assert _folder_label("alice") == ("", None, None)


def test_checkpoint_folders_and_the_final_file(tmp_path):
    """diffusers' train_dreambooth_lora: output/checkpoint-N/ while training, output/pytorch_lora_weights at the end."""
    from lora_likeness.checkpoints import sweep_checkpoints

    output = tmp_path / "runs" / "output"
    for step in (1000, 500):
        write_header_only(output / f"checkpoint-{step}" / "pytorch_lora_weights.safetensors", DIFFUSERS_PEFT_KEYS)
    write_header_only(output / "pytorch_lora_weights.safetensors", DIFFUSERS_PEFT_KEYS)
    found = sweep_checkpoints(tmp_path)
    assert [c.label for c in found] == ["step 500", "step 1000", "final"]
    assert {c.run for c in found} == {"runs/output"} and found[-1].final
    # PEFT adapters, folder names without a number: one run labelled by folder name.
    for name in ("high_lr", "low_lr"):
        write_header_only(tmp_path / "peft" / name / "adapter_model.safetensors", PEFT_KEYS)
        (tmp_path / "peft" / name / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 4}')
    peft = sweep_checkpoints(tmp_path / "peft")
    assert [(c.label, c.format) for c in peft] == [("high_lr", "peft"), ("low_lr", "peft")]


def test_sweep_needs_a_run_when_there_are_several(tmp_path):
    from lora_likeness.checkpoints import sweep_checkpoints

    make_run(tmp_path / "loras", epochs=(2, 1))
    for epoch in (10, 20):
        write_header_only(tmp_path / "loras" / "output" / f"exp_e{epoch}" / "pytorch_lora_weights.safetensors", DIFFUSERS_KEYS)
    with pytest.raises(ValueError, match=r"2 LoRA training runs: jx265 \(3 checkpoints: e1, e2, final \(e12\)\); "
                                         r"output/exp \(2 checkpoints: e10, e20\)\. Pass --run NAME"):
        sweep_checkpoints(tmp_path / "loras")
    assert [c.label for c in sweep_checkpoints(tmp_path / "loras", run="jx265")] == ["e1", "e2", "final (e12)"]
    assert [c.label for c in sweep_checkpoints(tmp_path / "loras", run="exp")] == ["e10", "e20"]  # last part of the key
    assert [c.label for c in sweep_checkpoints(tmp_path / "loras", run="output/exp")] == ["e10", "e20"]
    with pytest.raises(ValueError, match="no LoRA training run named 'bob'.*runs found: jx265, output/exp"):
        sweep_checkpoints(tmp_path / "loras", run="bob")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no LoRA"):
        sweep_checkpoints(tmp_path / "empty")


def test_sweep_labels_are_unique_and_other_architectures_are_refused(tmp_path):
    from lora_likeness.checkpoints import sweep_checkpoints

    write_header_only(tmp_path / "o" / "exp_e10" / "pytorch_lora_weights.safetensors", DIFFUSERS_KEYS)
    write_header_only(tmp_path / "o" / "exp-e10" / "pytorch_lora_weights.safetensors", DIFFUSERS_KEYS)
    write_header_only(tmp_path / "o" / "exp_e20" / "pytorch_lora_weights.safetensors", DIFFUSERS_KEYS)
    labels = [c.label for c in sweep_checkpoints(tmp_path / "o")]
    assert sorted(labels) == ["e20", "exp-e10", "exp_e10"] and labels[-1] == "e20"

    xl = tmp_path / "xl"
    write_header_only(xl / "sdxl-000001.safetensors", {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 2048]})
    with pytest.raises(ArchitectureMismatch, match="SDXL LoRA but the loaded model is SD1"):
        sweep_checkpoints(xl)
    assert len(sweep_checkpoints(xl, base=None)) == 1
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes.txt is not a \.safetensors file"):
        sweep_checkpoints(tmp_path / "notes.txt")
    (xl / "sdxl-000002.safetensors").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="sdxl-000002.safetensors: not a safetensors file"):
        sweep_checkpoints(xl, base="sdxl")


def test_a_folder_of_pickle_loras_names_them_and_says_to_convert(tmp_path, capsys):
    """It said only "no LoRA (.safetensors) file found", as if the folder were empty."""
    from lora_likeness.checkpoints import sweep_checkpoints
    from lora_likeness.cli import main

    loras = tmp_path / "loras"
    for name in ("me-000001.ckpt", "me-000002.ckpt", "me-000003.pt", "old/me.pth", "exp_e10/pytorch_lora_weights.bin"):
        (loras / name).parent.mkdir(parents=True, exist_ok=True)
        (loras / name).write_bytes(b"\x80\x04pickle")  # never opened
    state = loras / "me-state"  # an accelerate state: its optimizer.bin / random_states_0.pkl are no LoRAs
    state.mkdir()
    (state / "optimizer.bin").write_bytes(b"x")
    (state / "random_states_0.pkl").write_bytes(b"x")
    with pytest.raises(ValueError) as caught:
        sweep_checkpoints(loras)
    message = str(caught.value)
    assert f"no LoRA (.safetensors) file found in {loras}; it holds 5 pickle file(s) " in message
    assert "(exp_e10/pytorch_lora_weights.bin, me-000001.ckpt, me-000002.ckpt and 2 more)" in message
    assert "never loaded because unpickling a file can run any code it holds. Convert them to .safetensors" in message
    assert "optimizer.bin" not in message

    base = tmp_path / "base"  # an SD1 diffusers folder: its configs say the family; no weight is loaded before the LoRAs are found
    (base / "unet").mkdir(parents=True)
    (base / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (base / "unet" / "config.json").write_text('{"cross_attention_dim": 768, "in_channels": 4}')
    refs = tmp_path / "refs"
    refs.mkdir()
    code = main(["sweep", "--base", str(base), "--loras", str(loras), "--refs", str(refs), "--out", str(tmp_path / "out"),
                 "--prompt", "photo of ohwx man", "-q"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "it holds 5 pickle file(s)" in err and "Convert them to .safetensors" in err
    code = main(["sweep", "--base", str(base), "--loras", str(loras / "me-000003.pt"), "--refs", str(refs), "--out", str(tmp_path / "out"),
                 "--prompt", "photo of ohwx man", "-q"])
    assert code == 2 and "convert it to .safetensors" in " ".join(capsys.readouterr().err.split())
