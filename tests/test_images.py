"""The bad-input matrix: every odd file decodes to RGB or becomes a recorded per-file error."""

from __future__ import annotations

import io
import os
import shutil
import stat
import warnings

import numpy as np
import pytest
from PIL import Image

from likeness_assets import FACES
from lora_likeness import images
from lora_likeness.images import decode_image, from_array, list_images

OBAMA = FACES / "people" / "obama" / "obama_01_official_portrait.jpg"


def _jpeg_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **params)
    return buffer.getvalue()


def test_unreadable_files_become_errors_with_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    whole = OBAMA.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "folder.jpg").mkdir()
    cases = {
        "empty.jpg": "empty file",
        "notes.jpg": "not an image",
        "truncated.jpg": "truncated",
        "folder.jpg": "folder",
        "missing.jpg": "not found",
    }
    for name, reason in cases.items():
        loaded = decode_image(tmp_path / name)
        assert loaded.rgb is None and not loaded.ok, name
        assert reason in loaded.error and name in loaded.error


@pytest.mark.parametrize(
    "mode",
    ["CMYK", "RGBA", "LA", "L", "1", "P", "I;16", "I", "F"],
)
def test_every_mode_becomes_8bit_rgb(tmp_path, mode):
    base = Image.open(OBAMA).convert("RGB").resize((120, 150))
    if mode == "I;16":
        gray = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        image = Image.fromarray(gray)  # a 16-bit grayscale PNG
    elif mode in ("I", "F"):
        image = base.convert("L").convert(mode)
    else:
        image = base.convert(mode)
    suffix = {"CMYK": "jpg", "I": "tif", "F": "tif"}.get(mode, "png")
    path = tmp_path / f"photo_{mode.replace(';', '')}.{suffix}"
    image.save(path)
    loaded = decode_image(path)
    assert loaded.ok, loaded.error
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (150, 120, 3)
    # Brightness survives the conversion (a clipped 16-bit image would be almost all white).
    reference = np.asarray(base.convert("L"), dtype=np.float64).mean()
    if mode != "1":
        assert abs(loaded.rgb.mean() - reference) < 25, (mode, loaded.rgb.mean(), reference)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[:5, :, :] = (255, 0, 0, 255)  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    rgb = decode_image(tmp_path / "alpha.png").rgb
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[9, 9]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.open(OBAMA).convert("RGB").resize((200, 300))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes, 300x200
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    loaded = decode_image(path)
    assert loaded.original_size == (200, 300) and loaded.rgb.shape == (300, 200, 3)
    difference = np.abs(loaded.rgb.astype(int) - np.asarray(upright, dtype=int)).mean()
    assert difference < 12


def test_tiny_and_unicode_paths(tmp_path):
    Image.new("RGB", (2, 2), (10, 200, 30)).save(tmp_path / "tiny.png")
    assert decode_image(tmp_path / "tiny.png").rgb.shape == (2, 2, 3)
    folder = tmp_path / "фото 写真 é"
    folder.mkdir()
    shutil.copy(OBAMA, folder / "Обама ☀.jpg")
    loaded = decode_image(folder / "Обама ☀.jpg")
    assert loaded.ok and loaded.rgb.shape[2] == 3
    assert list_images(tmp_path) == [tmp_path / "tiny.png", folder / "Обама ☀.jpg"]


def test_huge_jpeg_is_decoded_reduced_and_other_formats_are_bounded(tmp_path, monkeypatch):
    big = Image.new("RGB", (6000, 4000), (90, 120, 150))
    (tmp_path / "big.jpg").write_bytes(_jpeg_bytes(big))
    loaded = decode_image(tmp_path / "big.jpg")
    assert loaded.ok and max(loaded.rgb.shape) <= images.DEFAULT_MAX_SIDE
    assert loaded.original_size == (6000, 4000) and loaded.scale == pytest.approx(6000 / loaded.rgb.shape[1])
    Image.new("RGB", (1500, 1000)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_SOURCE_MEGAPIXELS", 1.0)
    refused = decode_image(tmp_path / "big.png")
    assert not refused.ok and "too large" in refused.error and "1500x1000" in refused.error


def test_bytes_and_host_arrays():
    loaded = decode_image(OBAMA.read_bytes(), name="upload")
    assert loaded.ok and loaded.path is None
    floats = np.random.default_rng(0).random((8, 6, 3)).astype(np.float32)
    wrapped = from_array(floats)
    assert wrapped.rgb.dtype == np.uint8 and wrapped.rgb.shape == (8, 6, 3)
    assert from_array(floats).sha256 == wrapped.sha256
    assert not from_array(np.zeros((4, 4, 2))).ok


def test_list_images_is_natural_and_skips_hidden_and_excluded(tmp_path):
    for name in ("e10/a.png", "e2/a.png", "e100/a.PNG", ".hidden/a.png", "report/x.png", "e2/.thumb.png", "e2/notes.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, exclude=(tmp_path / "report",))]
    assert found == ["e2/a.png", "e10/a.png", "e100/a.PNG"]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with images.atomic_write(target, "w") as stream:
            stream.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_symlinks_keep_their_own_names_and_broken_ones_and_loops_say_why(tmp_path):
    folder, outside = tmp_path / "images", tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(OBAMA, folder / "real.jpg")
    shutil.copy(OBAMA, outside / "far.jpg")
    (folder / "inside.jpg").symlink_to("real.jpg")
    (folder / "outside.jpg").symlink_to(outside / "far.jpg")
    (folder / "broken.jpg").symlink_to("gone.jpg")  # a target inside the folder that does not exist
    (folder / "a.jpg").symlink_to("b.jpg")
    (folder / "b.jpg").symlink_to("a.jpg")
    (folder / "sub" / "up").symlink_to("..")  # a folder loop
    (folder / "linked").symlink_to(outside)  # a linked folder is scanned, under the link's name

    scan = images.scan_images(folder)
    names = [images.relative_name(p, folder) for p in scan.paths]
    assert names == ["a.jpg", "b.jpg", "broken.jpg", "inside.jpg", "linked/far.jpg", "outside.jpg", "real.jpg"]
    assert any("sub/up" in note and "already scanned" in note for note in scan.notes)

    broken = decode_image(folder / "broken.jpg")
    assert not broken.ok and "broken link to gone.jpg" in broken.error
    loop = decode_image(folder / "a.jpg")
    assert not loop.ok and "symlink loop" in loop.error
    assert decode_image(folder / "outside.jpg").ok and decode_image(folder / "linked" / "far.jpg").ok


def test_scan_skips_our_own_report_files_when_the_report_folder_is_the_image_folder(tmp_path):
    shutil.copy(OBAMA, tmp_path / "photo.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "contact_sheet.png")
    (tmp_path / "previous" / "20240101-000000").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "previous" / "20240101-000000" / "scores.png")
    (tmp_path / "e1").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "e1" / "contact_sheet.png")  # not ours: same name, other folder
    scan = images.scan_images(tmp_path, exclude=(tmp_path, tmp_path / "previous", tmp_path / "contact_sheet.png", tmp_path / "scores.png"))
    assert [p.relative_to(tmp_path).as_posix() for p in scan.paths] == ["e1/contact_sheet.png", "photo.jpg"]
    assert sorted(p.name for p in scan.excluded) == ["contact_sheet.png", "previous"]


def test_pillow_decompression_bomb_warning_becomes_our_note(tmp_path, monkeypatch):
    Image.new("RGB", (300, 200), (90, 120, 150)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 60,000 px: above it, below twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = decode_image(tmp_path / "big.png", max_side=100)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert loaded.ok and max(loaded.rgb.shape) == 100
    assert "300x200" in loaded.note and "megapixels" in loaded.note

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # more than twice: Pillow refuses to open it
    refused = decode_image(tmp_path / "big.png")
    assert not refused.ok and "too large to open safely" in refused.error and "megapixels" in refused.error


def test_other_warnings_while_opening_are_passed_on(monkeypatch):
    original = Image.open

    def noisy_open(*args, **kwargs):
        warnings.warn("a plugin's own warning", UserWarning)
        return original(*args, **kwargs)

    monkeypatch.setattr(Image, "open", noisy_open)
    with pytest.warns(UserWarning, match="a plugin's own warning"):
        assert decode_image(OBAMA).ok


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        images.write_text_atomic(tmp_path / "scores.csv", "a,b\n")
        images.write_bytes_atomic(tmp_path / "lora.safetensors", b"x")
        plain = tmp_path / "plain.txt"
        plain.write_text("as any program writes it")
    finally:
        os.umask(before)
    assert images.process_umask() == before
    for name in ("scores.csv", "lora.safetensors", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
