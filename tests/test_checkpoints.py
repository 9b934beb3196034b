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
