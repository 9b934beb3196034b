"""Decoding photos robustly into RGB arrays, listing image folders, and atomic file writes.

Every photo a user points us at is decoded the same way: EXIF orientation applied, any mode
(RGBA, LA, P, CMYK, I;16, I, F, 1) turned into 8-bit RGB, and the decode bounded in size so a
60-megapixel phone photo or a decompression bomb cannot exhaust memory. A file that cannot be read
becomes a :class:`LoadedImage` whose ``error`` says why; it never raises, so one bad file never
stops a run.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif", ".jfif"}
)

#: Longest side, in pixels, an image is decoded to. Faces stay far above the detector's needs
#: (it looks at 640 px at most) and the contact sheet's thumbnails.
DEFAULT_MAX_SIDE = 2048
#: Face analysis decodes JPEGs at the smallest DCT scale that keeps the detector's 640 px, and
#: bounds every image at 1280 px: the aligned crops come from 640-1280 px images, far more than
#: the recogniser's 112 px for any face that matters, at a fraction of a full decode's cost.
ANALYSIS_DRAFT_SIDE = 640
ANALYSIS_MAX_SIDE = 1280
#: Largest source image, in megapixels, we agree to open at all (JPEGs are reduced while decoding,
#: so this only bounds formats that must be decoded whole).
MAX_SOURCE_MEGAPIXELS = 120.0

_HEIF_CHECKED = False


def _register_optional_plugins() -> None:
    """Enable HEIC/AVIF decoding when pillow-heif is installed (optional extra ``heif``)."""
    global _HEIF_CHECKED
    if _HEIF_CHECKED:
        return
    _HEIF_CHECKED = True
    try:
        from pillow_heif import register_heif_opener  # type: ignore[import-not-found]
    except ImportError:
        return
    register_heif_opener()


@dataclass
class LoadedImage:
    """One decoded image, or the reason it could not be decoded.

    Attributes:
        path: where it came from (``None`` for in-memory images from a host).
        rgb: ``(H, W, 3)`` uint8 RGB array, possibly downscaled; ``None`` when ``error`` is set.
        original_size: ``(width, height)`` of the source in pixels after EXIF rotation.
        scale: source pixels per decoded pixel (>= 1); multiply decoded coordinates by it to get
            coordinates in the source image.
        sha256: hex digest of the file's bytes (or of the array for in-memory images).
        error: a sentence for the user when the file could not be read.
    """

    path: Path | None
    rgb: np.ndarray | None
    original_size: tuple[int, int]
    scale: float
    sha256: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def array_sha256(rgb: np.ndarray) -> str:
    digest = hashlib.sha256(str(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an ``(H, W, 3)`` uint8 RGB array."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: PIL's convert("RGB") clips at 255, which turns 16-bit photos white.
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            values = values / 257.0
        elif values.size and values.max() > 255:
            top = 65535.0 if values.max() <= 65535 else values.max()
            values = values / top * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        # Transparent areas become white, as the photo looks in a viewer.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "RGB":
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def decode_image(
    source: Path | bytes,
    max_side: int = DEFAULT_MAX_SIDE,
    name: str | None = None,
    sha256: str | None = None,
    draft_side: int | None = None,
) -> LoadedImage:
    """Decode a file path or encoded bytes into a :class:`LoadedImage`; never raises for bad data.

    Args:
        source: a path, or the file's bytes.
        max_side: longest side of the returned array in pixels; larger images are reduced
            (JPEGs already while decoding, which is much faster than decoding then resizing).
        name: how to call the source in error messages (defaults to the path).
        sha256: the bytes' digest when the caller already has it.
        draft_side: for JPEGs, decode straight from the DCT data at the smallest 1/2, 1/4 or 1/8
            scale whose long side is still at least this (default ``max_side``); only what is then
            still above ``max_side`` is resized.
    """
    _register_optional_plugins()
    path = Path(source) if not isinstance(source, (bytes, bytearray)) else None
    label = name or (str(path) if path is not None else "image")
    try:
        data = path.read_bytes() if path is not None else bytes(source)
    except FileNotFoundError:
        return _failed(path, f"{label}: file not found")
    except IsADirectoryError:
        return _failed(path, f"{label}: is a folder, not an image")
    except PermissionError:
        return _failed(path, f"{label}: permission denied")
    except OSError as exc:
        return _failed(path, f"{label}: cannot be read ({exc.strerror or exc})")
    sha = sha256 or hashlib.sha256(data).hexdigest()
    if not data:
        return _failed(path, f"{label}: empty file (0 bytes)", sha)
    try:
        return _decode_bytes(data, path, sha, max_side, draft_side or max_side)
    except Image.DecompressionBombError as exc:
        return _failed(path, f"{label}: image too large to open safely ({exc})", sha)
    except UnidentifiedImageError:
        return _failed(path, f"{label}: not an image file Pillow can read (unknown or corrupt format)", sha)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError/SyntaxError/ValueError.
        return _failed(path, f"{label}: corrupt or truncated image ({exc})", sha)
    except MemoryError:
        return _failed(path, f"{label}: not enough memory to decode this image", sha)


def _decode_bytes(data: bytes, path: Path | None, sha: str, max_side: int, draft_side: int) -> LoadedImage:
    # Pillow warns (DecompressionBombWarning) above ~89 megapixels and refuses above twice that;
    # JPEGs are reduced while decoding, other formats are bounded by MAX_SOURCE_MEGAPIXELS.
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        orientation = _exif_orientation(image)
        swapped = orientation in (5, 6, 7, 8)
        source_size = (height, width) if swapped else (width, height)
        megapixels = width * height / 1e6
        longest = max(width, height)
        if image.format == "JPEG" and longest > draft_side:
            image.draft("RGB", (max(1, width * draft_side // longest), max(1, height * draft_side // longest)))
        elif megapixels > MAX_SOURCE_MEGAPIXELS:
            raise Image.DecompressionBombError(
                f"{width}x{height} is {megapixels:.0f} megapixels; the limit is {MAX_SOURCE_MEGAPIXELS:.0f}"
            )
        image.load()
        if orientation not in (None, 1):
            image = ImageOps.exif_transpose(image)
        if max(image.size) > max_side:
            image = image.copy()
            # Pillow's bilinear filter widens its support when shrinking (antialiased), and
            # reducing_gap first shrinks by whole factors: 3x faster than Lanczos, same faces.
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        rgb = _to_rgb_array(image)
    rgb = np.ascontiguousarray(rgb)
    scale = source_size[0] / rgb.shape[1] if rgb.shape[1] else 1.0
    return LoadedImage(path=path, rgb=rgb, original_size=source_size, scale=max(scale, 1.0), sha256=sha)


def _exif_orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(0x0112)
    except Exception:  # a malformed EXIF block must not make the photo unreadable
        return None
    return int(value) if isinstance(value, int) else None


def _failed(path: Path | None, message: str, sha: str = "") -> LoadedImage:
    return LoadedImage(path=path, rgb=None, original_size=(0, 0), scale=1.0, sha256=sha, error=message)


def from_array(rgb: np.ndarray, name: str | None = None) -> LoadedImage:
    """Wrap an in-memory ``(H, W, 3)`` RGB image (uint8, or float in 0..1) from a host."""
    array = np.asarray(rgb)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        return _failed(None, f"{name or 'image'}: expected an (H, W, 3) array, got shape {array.shape}")
    if array.shape[2] == 4:
        array = _to_rgb_array(Image.fromarray(array, "RGBA"))
    array = np.ascontiguousarray(array)
    return LoadedImage(
        path=Path(name) if name else None,
        rgb=array,
        original_size=(array.shape[1], array.shape[0]),
        scale=1.0,
        sha256=array_sha256(array),
    )


def list_images(folder: Path, recursive: bool = True, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """Image files under ``folder`` in natural order (``img2`` before ``img10``).

    Hidden files and folders are skipped, as are the folders in ``exclude`` (the report folder,
    say, so a second run does not score its own contact sheet).
    """
    folder = Path(folder)
    excluded = [p.resolve() for p in exclude]
    found: list[Path] = []
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, dirs, files in walker:
        root_path = Path(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and (root_path / d).resolve() not in excluded]
        for name in files:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(root_path / name)
    return sorted(found, key=lambda p: natural_key(str(p.relative_to(folder))))


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``e2 < e10 < e100``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Write ``path`` through a temporary file in the same folder, renamed into place on success.

    A crash or an exception leaves the previous file (if any) untouched and no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as stream:
        stream.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "w") as stream:
        stream.write(text)


def save_png_atomic(image: Image.Image, path: Path, **params) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    write_bytes_atomic(path, buffer.getvalue())

