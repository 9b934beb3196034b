"""The header of a ``.safetensors`` file: tensor names, dtypes, shapes and the ``__metadata__`` strings.

Read without loading a tensor (a few KB at the start of the file), so model families can be told
apart, LoRAs sorted and metadata shown for multi-GB files in milliseconds. The layout: 8 bytes
little-endian header length ``N``, ``N`` bytes of JSON (``{name: {"dtype", "shape", "data_offsets"}}``
plus an optional ``"__metadata__"`` of strings), then the tensor bytes.

A file that ends before its last tensor (an interrupted download or copy) is reported as truncated
with both sizes, instead of failing later inside a loader with an opaque message.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class HeaderError(ValueError):
    """Not a readable safetensors file; the message says why (too short, no JSON header, truncated)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: dtype name (``F16``, ``F32``, ``BF16``, ``I64`` …), shape, byte range in the data part."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """A safetensors header: ``tensors`` by name, ``metadata`` (``str → str``), where the data starts, file size."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0
    file_size: int | None = None

    @property
    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...] | None:
        info = self.tensors.get(key)
        return info.shape if info is not None else None

    def has_prefix(self, *prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in self.tensors)

    @property
    def data_end(self) -> int:
        """Bytes the file needs: header plus the end of its last tensor."""
        return self.data_start + max((t.end for t in self.tensors.values()), default=0)


def _parse(raw: bytes, name: str) -> dict:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HeaderError(f"{name}: not a safetensors file (its header is not JSON: {exc})") from None
    if not isinstance(document, dict):
        raise HeaderError(f"{name}: not a safetensors file (its header is not a JSON object)")
    return document


def _tensors(document: dict, name: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    metadata = document.get("__metadata__") if isinstance(document.get("__metadata__"), dict) else {}
    tensors = {}
    for key, entry in document.items():
        if key == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in entry["data_offsets"])
            tensors[key] = TensorInfo(str(entry["dtype"]), tuple(int(d) for d in entry["shape"]), start, end)
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"{name}: not a safetensors file (entry {key!r} has no dtype/shape/data_offsets)") from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def read_header(source: Path | str | bytes, check_size: bool = True) -> Header:
    """The header of a safetensors file (a path) or of its bytes.

    Args:
        source: the file, or its bytes (at least the header).
        check_size: for a path, raise when the file is shorter than its header says (truncated).

    Raises:
        HeaderError: too short, not JSON, malformed entries, or truncated; the message names the file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) < 8:
            raise HeaderError("not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", data[:8])
        if not 0 < length <= MAX_HEADER_BYTES or len(data) < 8 + length:
            raise HeaderError("not a safetensors file (bad header length)")
        tensors, metadata = _tensors(_parse(data[8:8 + length], "data"), "data")
        return Header(tensors, metadata, 8 + length, len(data))
    path = Path(source)
    name = path.name
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as stream:
            head = stream.read(8)
            if len(head) < 8:
                raise HeaderError(f"{name}: not a safetensors file ({size} bytes, shorter than a header)")
            (length,) = struct.unpack("<Q", head)
            if not 0 < length <= MAX_HEADER_BYTES:
                raise HeaderError(f"{name}: not a safetensors file (header length {length} is impossible)")
            raw = stream.read(length)
    except OSError as exc:
        raise HeaderError(f"{name}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) < length:
        raise HeaderError(f"{name}: truncated: the file ends inside its header ({size:,} bytes); copy or download it again")
    tensors, metadata = _tensors(_parse(raw, name), name)
    header = Header(tensors, metadata, 8 + length, size)
    if check_size and header.data_end > size:
        raise HeaderError(f"{name}: truncated: its tensors need {header.data_end:,} bytes but the file has {size:,}; "
                          "copy or download it again")
    return header
