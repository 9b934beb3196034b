"""Decoding photos robustly into RGB arrays, listing image folders, and atomic file writes.

Every photo a user points us at is decoded the same way: EXIF orientation applied, any mode
(RGBA, LA, P, CMYK, I;16, I, F, 1) turned into 8-bit RGB, and the decode bounded in size so a
60-megapixel phone photo or a decompression bomb cannot exhaust memory. A file that cannot be read
becomes a :class:`LoadedImage` whose ``error`` says why; it never raises, so one bad file never
stops a run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import tempfile
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

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
#: What transparent pixels are laid on by default: white, as the photo looks in a viewer.
WHITE = (255, 255, 255)
#: Alpha values (0..255) between these two count as half-transparent: a cut-out's soft edge has a
#: few such pixels, a photo saved half-transparent has them everywhere.
HALF_TRANSPARENT_ALPHA = (8, 247)

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
        note: a sentence for the user about a file that was read all the same (a very large one).
        transparent_share: share (0..1) of the pixels that are not fully opaque; 0 without alpha.
        half_transparent_share: share (0..1) of the pixels that are half-transparent (alpha within
            :data:`HALF_TRANSPARENT_ALPHA`); their colours are mixed with the background.
    """

    path: Path | None
    rgb: np.ndarray | None
    original_size: tuple[int, int]
    scale: float
    sha256: str
    error: str | None = None
    note: str | None = None
    transparent_share: float = 0.0
    half_transparent_share: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def array_sha256(rgb: np.ndarray) -> str:
    digest = hashlib.sha256(str(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _alpha_shares(image: Image.Image) -> tuple[float, float]:
    """``(transparent share, half-transparent share)`` of an image's pixels (see :class:`LoadedImage`)."""
    if not _has_alpha(image):
        return 0.0, 0.0
    alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    if not alpha.size:
        return 0.0, 0.0
    low, high = HALF_TRANSPARENT_ALPHA
    return float(np.mean(alpha < 255)), float(np.mean((alpha >= low) & (alpha <= high)))


def _to_rgb_array(image: Image.Image, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """Convert any PIL mode to an ``(H, W, 3)`` uint8 RGB array; transparent pixels are laid on
    ``background`` (RGB 0..255)."""
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
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
    if mode == "RGB":
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def decode_image(
    source: Path | bytes,
    max_side: int = DEFAULT_MAX_SIDE,
    name: str | None = None,
    sha256: str | None = None,
    draft_side: int | None = None,
    background: tuple[int, int, int] = WHITE,
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
        background: RGB (0..255) that transparent pixels are laid on (white, as a viewer shows them);
            how much of the image was transparent is in the result's ``transparent_share`` /
            ``half_transparent_share``.
    """
    _register_optional_plugins()
    path = Path(source) if not isinstance(source, (bytes, bytearray)) else None
    label = name or (str(path) if path is not None else "image")
    try:
        data = path.read_bytes() if path is not None else bytes(source)
    except FileNotFoundError:
        if path is not None and path.is_symlink():
            return _failed(path, f"{label}: broken link to {os.readlink(path)}")
        return _failed(path, f"{label}: file not found")
    except IsADirectoryError:
        return _failed(path, f"{label}: is a folder, not an image")
    except PermissionError:
        return _failed(path, f"{label}: permission denied")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _failed(path, f"{label}: symlink loop (the link leads back to itself)")
        return _failed(path, f"{label}: cannot be read ({exc.strerror or exc})")
    sha = sha256 or hashlib.sha256(data).hexdigest()
    if not data:
        return _failed(path, f"{label}: empty file (0 bytes)", sha)
    try:
        return _decode_bytes(data, path, sha, max_side, draft_side or max_side, background)
    except Image.DecompressionBombError as exc:
        return _failed(path, f"{label}: image too large to open safely ({_bomb_reason(exc)})", sha)
    except UnidentifiedImageError:
        return _failed(path, f"{label}: not an image file Pillow can read (unknown or corrupt format)", sha)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError/SyntaxError/ValueError.
        return _failed(path, f"{label}: corrupt or truncated image ({exc})", sha)
    except MemoryError:
        return _failed(path, f"{label}: not enough memory to decode this image", sha)


_OPEN_LOCK = threading.Lock()


def _open_quietly(data: bytes) -> tuple[Image.Image, bool]:
    """``Image.open`` without Pillow's raw DecompressionBombWarning on the user's terminal.

    Returns the opened image and whether Pillow warned (above ``Image.MAX_IMAGE_PIXELS``, about
    89 megapixels); the caller words its own warning. Other warnings raised meanwhile are passed on
    unchanged. ``catch_warnings`` swaps process-wide state, hence the lock: only the header is read
    here, so holding it is brief.
    """
    with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = Image.open(io.BytesIO(data))
    over_threshold = False
    for item in caught:
        if issubclass(item.category, Image.DecompressionBombWarning):
            over_threshold = True
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno, source=item.source)
    return image, over_threshold


def _bomb_reason(exc: Exception) -> str:
    """Pillow's decompression-bomb refusal in megapixels (its own text counts single pixels)."""
    numbers = [int(n) for n in re.findall(r"(\d+) pixels", str(exc))]
    if len(numbers) == 2:
        return f"{numbers[0] / 1e6:.0f} megapixels; Pillow opens at most {numbers[1] / 1e6:.0f}"
    return str(exc)


def _decode_bytes(data: bytes, path: Path | None, sha: str, max_side: int, draft_side: int,
                  background: tuple[int, int, int] = WHITE) -> LoadedImage:
    # Pillow warns (DecompressionBombWarning) above ~89 megapixels and refuses above twice that;
    # JPEGs are reduced while decoding, other formats are bounded by MAX_SOURCE_MEGAPIXELS.
    opened, over_threshold = _open_quietly(data)
    with opened as image:
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
        transparent, half_transparent = _alpha_shares(image)
        rgb = _to_rgb_array(image, background)
    rgb = np.ascontiguousarray(rgb)
    scale = source_size[0] / rgb.shape[1] if rgb.shape[1] else 1.0
    note = None
    if over_threshold:
        note = (
            f"very large image ({width}x{height} px, {megapixels:.0f} megapixels, above Pillow's "
            f"decompression-bomb threshold); decoded reduced to {max(rgb.shape[:2])} px"
        )
    return LoadedImage(path=path, rgb=rgb, original_size=source_size, scale=max(scale, 1.0), sha256=sha, note=note,
                       transparent_share=transparent, half_transparent_share=half_transparent)


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


@dataclass
class ImageScan:
    """What :func:`scan_images` found under a folder.

    Attributes:
        paths: image files in natural order, as reached from the folder: a symlinked file or
            folder keeps the link's own path (never its target's), so names stay inside the folder.
        excluded: entries of ``exclude`` met while scanning and left out (our own outputs).
        notes: sentences for the user about what else was left out (unreadable folders, linked
            folders already scanned).
    """

    paths: list[Path] = field(default_factory=list)
    excluded: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of what ``path`` leads to (links followed), ``None`` when it leads nowhere."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def scan_images(folder: Path, recursive: bool = True, exclude: Sequence[Path] = ()) -> ImageScan:
    """Image files under ``folder``, following symlinked folders once each (a loop ends there).

    Hidden files and folders are skipped. ``exclude`` lists folders and files never to read
    (the report folder and its ``previous/``, the face cache, the report files themselves when
    the report folder is ``folder``); ``folder`` itself is never excluded. Broken links and link
    loops named like images are listed: decoding them reports the reason per file.
    """
    folder = Path(folder)
    excluded = {key for key in map(_identity, exclude) if key is not None}
    excluded_names = {Path(p).name for p in exclude}
    scan = ImageScan()
    visited: set[tuple[int, int]] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        key = _identity(current)
        if key is None:
            continue
        if key in visited:
            scan.notes.append(f"{current.relative_to(folder).as_posix()}: a linked folder already scanned; not scanned twice")
            continue
        visited.add(key)
        try:
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            scan.notes.append(f"{current}: folder cannot be read ({exc.strerror or exc}); its images are not scored")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = current / entry.name
            try:
                is_folder = entry.is_dir()  # follows links: a linked folder is scanned too
            except OSError:  # a link loop: listed as a file when it is named like an image
                is_folder = False
            if not (is_folder and recursive) and Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if entry.name in excluded_names and _identity(path) in excluded:
                scan.excluded.append(path)
            elif is_folder:
                pending.append(path)
            else:
                scan.paths.append(path)
    scan.paths.sort(key=lambda p: natural_key(p.relative_to(folder).as_posix()))
    return scan


def list_images(folder: Path, recursive: bool = True, exclude: Sequence[Path] = ()) -> list[Path]:
    """Image files under ``folder`` in natural order (``img2`` before ``img10``); see :func:`scan_images`.

    Hidden files and folders are skipped, as are the folders in ``exclude`` (the report folder,
    say, so a second run does not score its own contact sheet).
    """
    return scan_images(folder, recursive, exclude).paths


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as written (links not followed), e.g. ``exp_e10/0001.jpg``.

    A symlinked image keeps its own name even when it points outside ``root`` or nowhere.
    """
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        pass
    try:  # one given absolute, the other relative: compare them absolute, still not following links
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``e2 < e10 < e100``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """The process's file-creation mask (``0o022`` on most systems), read without changing it
    where the system tells it (Linux), else by setting and restoring it at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def honour_umask(path: Path | str, folder: bool = False) -> None:
    """Give ``path`` the permissions a plain new file (``0o666``) or folder (``0o777``) gets here.

    ``tempfile.mkstemp`` and ``mkdtemp`` create private files (0600) and folders (0700), so
    anything written through them and then renamed into place would be unreadable to the other
    users and services (a web UI, a trainer) that read the host's own 0644 files.
    """
    if os.name != "posix":  # Windows has no mode bits to speak of; ACLs come from the folder
        return
    os.chmod(path, (0o777 if folder else 0o666) & ~process_umask())


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Write ``path`` through a temporary file in the same folder, renamed into place on success.

    A crash or an exception leaves the previous file (if any) untouched and no partial file. The
    file gets the permissions the process umask gives any new file (see :func:`honour_umask`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        honour_umask(temp_name)
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

