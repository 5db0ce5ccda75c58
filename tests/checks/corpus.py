"""Byte-exact safetensors files for the checks' tests.

Everything here writes exactly the bytes asked for: the header text is used verbatim (no re-serialising, so
duplicate keys, escapes, odd whitespace and invalid JSON survive), the length prefix is the header's real
length unless overridden, and the data section is what the caller passes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vcache.checks.safetensors import DTYPE_BITS

U64_MAX = 2**64 - 1

#: A git-LFS pointer, as a clone without git-lfs leaves it in place of the weights.
LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4f1c2e9d3b0a7c6e5f4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d\n"
    b"size 4976698672\n"
)
#: An HTML error page saved as the file (a proxy's or the Hub's error response).
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head>\n"
    b"<body><h1>Service Unavailable</h1></body></html>\n"
)
#: The start of a pickle zip (torch.save) mistaken for safetensors.
PICKLE_ZIP = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"archive/data.pkl" + bytes(40)


def blob(header: str | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """The file: 8-byte little-endian length (the header's, or ``length``), the header verbatim, the data."""
    raw = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def entry(dtype: str, shape: Sequence[int], begin: int, end: int) -> str:
    """One tensor entry as compact JSON, fields in the writer's order."""
    return json.dumps(
        {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}, separators=(",", ":")
    )


def header(*entries: tuple[str, str], metadata: Mapping[str, str] | None = None, pad: bool = True) -> str:
    """A header from (name, entry JSON) pairs kept in order (so names may repeat), space-padded to 8."""
    parts = []
    if metadata is not None:
        parts.append('"__metadata__":' + json.dumps(dict(metadata), separators=(",", ":")))
    parts += [json.dumps(name) + ":" + text for name, text in entries]
    text = "{" + ",".join(parts) + "}"
    return pad_to_8(text) if pad else text


def pad_to_8(text: str) -> str:
    """Pad with spaces to a multiple of 8 bytes, as the standard writer does."""
    size = len(text.encode("utf-8"))
    return text + " " * (-size % 8)


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes a tensor of this dtype and shape takes (whole bytes assumed)."""
    return math.prod(shape) * DTYPE_BITS[dtype] // 8


def layout(
    tensors: Iterable[tuple[str, str, Sequence[int]]],
    *,
    metadata: Mapping[str, str] | None = None,
    data_order: Sequence[int] | None = None,
    fill: int = 0,
) -> bytes:
    """A valid file: tensors (name, dtype, shape) in JSON order, laid out contiguously in ``data_order``
    (indices into ``tensors``; JSON order by default), data bytes all ``fill``."""
    items = list(tensors)
    order = list(range(len(items))) if data_order is None else list(data_order)
    offsets: dict[int, tuple[int, int]] = {}
    at = 0
    for i in order:
        _, dtype, shape = items[i]
        offsets[i] = (at, at + nbytes(dtype, shape))
        at += nbytes(dtype, shape)
    text = header(
        *((name, entry(dtype, shape, *offsets[i])) for i, (name, dtype, shape) in enumerate(items)),
        metadata=metadata,
    )
    return blob(text, bytes([fill]) * at)


def write(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name`` and return the path."""
    path = folder / name
    path.write_bytes(data)
    return path
