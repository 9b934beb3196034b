"""Grouping: Kohya names, A1111 infotext, ComfyUI prompt graphs, safetensors metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from lora_likeness.labels import (
    NO_LORA,
    checkpoint_epoch,
    folder_group,
    group_sort_key,
    lora_group,
    loras_from_metadata,
    parse_a1111_loras,
    parse_comfy_prompt,
    parse_kohya_name,
    read_generation_text,
    read_safetensors_metadata,
)
from lora_likeness.pipeline import image_groups


@pytest.mark.parametrize(
    "name, expected",
    [
        ("jx265-000010", ("jx265", 10, None)),
        ("jx265-000010.safetensors", ("jx265", 10, None)),
        ("loras/sub\\my-run-000003.safetensors", ("my-run", 3, None)),
        ("jx265", ("jx265", None, None)),
        ("jx265-step00001500", ("jx265", None, 1500)),
        ("exp-e10", ("exp-e10", None, None)),
    ],
)
def test_kohya_names(name, expected):
    assert parse_kohya_name(name) == expected


def test_a1111_infotext_loras_positive_prompt_only():
    text = (
        "photo of jx265 man <lora:jx265-000010:0.8>, <lora:detail:0>, <lora:style>\n"
        "Negative prompt: <lora:badhands:1>\nSteps: 20, Sampler: Euler a, Seed: 1236"
    )
    uses = parse_a1111_loras(text)
    assert [(u.name, u.strength, u.epoch) for u in uses] == [("jx265-000010", 0.8, 10), ("style", 1.0, None)]
    assert parse_a1111_loras("<lora:a:1:0.6>")[0].strength == 0.6  # te, unet
    assert parse_a1111_loras("<lora:a:unet=0.7:te=1>")[0].strength == 0.7
    assert lora_group(uses[:1])[0] == "jx265 e10 @0.8"


def test_comfyui_prompt_graph():
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "people\\jx265-000020.safetensors", "strength_model": 0.6, "strength_clip": 1.0, "model": ["4", 0]}},
        "11": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "jx265.safetensors", "strength_model": 0.0, "model": ["10", 0]}},
    }
    uses = parse_comfy_prompt(json.dumps(graph))
    assert [(u.name, u.run, u.epoch, u.strength) for u in uses] == [("jx265-000020", "jx265", 20, 0.6)]
    assert parse_comfy_prompt("{not json") == []


def test_metadata_read_from_png_text_and_jpeg_exif(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a photo <lora:run-000005:1>\nSteps: 4")
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    assert lora_group(loras_from_metadata(read_generation_text(tmp_path / "a1111.png")))[0] == "run e5 @1"

    exif = Image.Exif()
    comment = "portrait <lora:run:0.9>\nNegative prompt: ugly"
    # What A1111 (piexif) writes into JPEG and WebP: the Exif IFD's UserComment, UTF-16 big-endian.
    # (Set as a nested dict: Pillow 9.5's get_ifd() hands back a detached dict for a new IFD.)
    exif[0x8769] = {0x9286: b"UNICODE\x00" + comment.encode("utf-16-be")}
    for suffix in ("jpg", "webp"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"a1111.{suffix}", exif=exif)
        assert lora_group(loras_from_metadata(read_generation_text(tmp_path / f"a1111.{suffix}")))[0] == "run final @0.9"

    comfy = PngImagePlugin.PngInfo()
    comfy.add_text("prompt", json.dumps({"3": {"class_type": "LoraLoader", "inputs": {"lora_name": "run-000002.safetensors", "strength_model": 1.0}}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "comfy.png", pnginfo=comfy)
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    (tmp_path / "broken.png").write_bytes(b"nope")
    paths = [tmp_path / n for n in ("a1111.png", "a1111.jpg", "comfy.png", "plain.png", "broken.png")]
    labels = [label for label, _ in image_groups(paths, tmp_path, "lora")]
    assert labels == ["run e5 @1", "run final @0.9", "run e2 @1", NO_LORA, NO_LORA]


def test_group_order_is_no_lora_then_epochs_then_final():
    groups = [lora_group(loras_from_metadata({"parameters": p})) for p in (
        "<lora:r:0.8>", "<lora:r-000010:1>", "<lora:r-000002:1>", "plain", "<lora:r-000010:0.6>")]
    ordered = [label for label, info in sorted(groups, key=lambda g: group_sort_key(*g))]
    assert ordered == [NO_LORA, "r e2 @1", "r e10 @0.6", "r e10 @1", "r final @0.8"]


def test_folder_groups(tmp_path):
    (tmp_path / "exp_e10").mkdir()
    assert folder_group(tmp_path / "exp_e10" / "0001.png", tmp_path) == "exp_e10"
    assert folder_group(tmp_path / "0001.png", tmp_path) == tmp_path.name


def test_safetensors_metadata_and_epoch(tmp_path):
    from safetensors.numpy import save_file

    save_file({"lora_unet_x.lora_down.weight": np.zeros((4, 8), np.float32)}, str(tmp_path / "odd-name.safetensors"), metadata={"ss_epoch": "7", "ss_network_dim": "16"})
    assert read_safetensors_metadata(tmp_path / "odd-name.safetensors")["ss_network_dim"] == "16"
    assert checkpoint_epoch(tmp_path / "odd-name.safetensors") == 7
    (tmp_path / "run-000004.safetensors").write_bytes(b"\x00" * 4)
    assert checkpoint_epoch(tmp_path / "run-000004.safetensors") == 4  # unreadable header: the name decides
    with pytest.raises(ValueError):
        read_safetensors_metadata(tmp_path / "run-000004.safetensors")
