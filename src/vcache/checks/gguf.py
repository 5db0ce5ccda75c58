"""Strict GGUF (llama.cpp) header and layout parser, and the content scan of GGUF tensor data.

This module owns the verdict on one GGUF file (versions 2 and 3, little-endian): :func:`read_gguf_header`
walks the header (magic, version, counts, key/value metadata, tensor infos) through a bounded read window,
checking every count and length against the bytes the file really has *before* using it, then checks the
tensor layout; :func:`scan_gguf` and :class:`GGUFStream` judge the tensor data. It never allocates by a size
the file claims (memory is one read window plus what the header really holds), never interprets metadata
beyond ``general.alignment``, never diagnoses what a non-GGUF file is (that is ``checks/sniff.py``), never
moves, fixes or deletes a file, and never raises on bad input: every problem is a
:class:`~vcache.report.Finding`.

The type tables (metadata value types, ggml tensor types and their block sizes) come from the ``gguf``
package, llama.cpp's own Python reader and writer, imported only when a file is checked. The rules follow
llama.cpp's C reader, which nearly every GGUF consumer loads files with: a ``fail`` below is a file that
reader refuses or crashes on, except the one marked *strict*.

Structure (all ``fail`` unless marked):

=================================  =====================================================================
``gguf.unreadable``                the file cannot be opened or is not a regular file
``gguf.bad_magic``                 the file does not start with ``GGUF``
``gguf.bad_version``               a version other than 2 or 3 (1 is obsolete, others unknown)
``gguf.truncated``                 the file ends inside the header, or before the end of the tensor data
                                   the header describes (an interrupted download)
``gguf.count_too_large``           tensor and key/value counts that cannot fit in the file (each entry
                                   needs at least 24 / 13 bytes)
``gguf.bad_kv_type``               a metadata value type (or array element type) that is not 0-12
``gguf.string_out_of_bounds``      a string (key, value or tensor name) longer than the bytes left
``gguf.array_out_of_bounds``       an array whose element count cannot fit in the bytes left
``gguf.value_too_large``           a string over 64 MiB or an array over 64 Mi elements (llama.cpp's
                                   limits), or (*strict*) a key or tensor name over 64 KiB
``gguf.nested_array``              an array of arrays (the format allows it, llama.cpp refuses it)
``gguf.duplicate_key``             a metadata key twice
``gguf.empty_key``                 an empty metadata key (llama.cpp aborts on it)
``gguf.bad_alignment``             ``general.alignment`` not a u32 power of two of at most 1 MiB
``gguf.name_too_long``             a tensor name of 64 bytes or more (ggml keeps 63)
``gguf.duplicate_tensor``          a tensor name twice
``gguf.bad_rank``                  more than 4 dimensions
``gguf.bad_dimension``             a dimension of 2^63 or more (negative to llama.cpp)
``gguf.unknown_type``              a ggml type the gguf package does not know (or a removed one)
``gguf.block_mismatch``            the first dimension is not a multiple of the type's block size
``gguf.size_overflow``             2^63 or more elements, or 2^64 or more bytes
``gguf.misaligned``                a tensor offset not a multiple of the alignment
``gguf.tensor_out_of_bounds``      a tensor that ends past the end of the file (layout not contiguous)
``gguf.overlap``                   two tensors sharing bytes
``gguf.offset_mismatch``           a tensor not where llama.cpp expects it: each must start where the
                                   one before it (in header order) ends, padded to the alignment
``gguf.invalid_utf8``              warn: a key or tensor name that is not UTF-8 (the gguf package's
                                   reader raises on it)
``gguf.trailing_bytes``            warn: bytes after the padded end of the last tensor
``gguf.unchecked``                 info: a big-endian GGUF; its structure and content were not checked
``gguf.internal_error``            the guard that keeps a bug here from raising; it should never appear
=================================  =====================================================================

Content (:func:`scan_gguf`; ``vouched`` is True when a publisher digest matched the bytes):

- F32, F16, BF16 (and F64, I8-I64) tensors get the safetensors content scan of ``checks/tensors.py``, with
  its codes: ``tensor.nan``, ``tensor.inf``, ``tensor.all_zero``, ``tensor.zero_rows``,
  ``tensor.zero_columns`` (shapes are given to it in numpy order, the reverse of GGUF's).
- Block-quantized tensors: every block's floating-point scale fields (:data:`SCALE_FIELDS`) are read as
  raw bits through strided numpy views; ``gguf.scale_nan`` (``fail``) and ``gguf.scale_inf`` (``fail``)
  name the tensor, the fields and the first blocks. Types whose scales have no non-finite encoding in ggml
  (MXFP4, NVFP4) get ``tensor.unchecked`` (``info``).
- Every tensor byte: ``tensor.zero_fill`` for a run of at least :data:`DEFAULT_ZERO_RUN_BYTES` zero bytes
  (``fail`` unvouched, ``warn`` vouched), ``tensor.read_error`` when the file changes under the scan.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from vcache.checks.safetensors import SafetensorsHeader, TensorEntry
from vcache.checks.sniff import GGUF_MAGIC, looks_like_gguf
from vcache.checks.tensors import (
    _BITS,
    DEFAULT_CHUNK_BYTES,
    _Bits,
    _describe,
    _FileScan,
    _Hits,
    _provenance,
    default_allow_inf,
    open_for_scan,
)
from vcache.checks.tensors import TensorStream as _TensorStream
from vcache.report import Finding, Severity, fail, info, warn

__all__ = [
    "DEFAULT_ZERO_RUN_BYTES",
    "GGUF_MAGIC",
    "SCALE_FIELDS",
    "GGUFLayout",
    "GGUFStream",
    "GGUFTensor",
    "looks_like_gguf",
    "parse_gguf_header_bytes",
    "read_gguf_header",
    "scan_gguf",
]

_SUPPORTED_VERSIONS: Final = (2, 3)
_DEFAULT_ALIGNMENT: Final = 32  # when the file has no general.alignment
_MAX_ALIGNMENT: Final = 1 << 20  # llama.cpp's limits from here on
_MAX_DIMS: Final = 4  # GGML_MAX_DIMS
_MAX_NAME_BYTES: Final = 63  # GGML_MAX_NAME is 64 with the terminating NUL
_MAX_STRING_BYTES: Final = 64 << 20
_MAX_ARRAY_ELEMENTS: Final = 64 << 20

DEFAULT_ZERO_RUN_BYTES: Final = 64 << 10
"""A run of at least this many zero bytes in the tensor data is ``tensor.zero_fill``."""

SCALE_FIELDS: Final[Mapping[tuple[str, int], tuple[tuple[str, int, str], ...]]] = MappingProxyType(
    {
        # (ggml type, bytes per block): ((field, byte offset in the block, encoding), ...)
        ("Q4_0", 18): (("d", 0, "f16"),),
        ("Q4_1", 20): (("d", 0, "f16"), ("m", 2, "f16")),
        ("Q5_0", 22): (("d", 0, "f16"),),
        ("Q5_1", 24): (("d", 0, "f16"), ("m", 2, "f16")),
        ("Q8_0", 34): (("d", 0, "f16"),),
        # ggml's block is 36 bytes (f16 d, s); the gguf package's size table still has the older 40-byte
        # block (f32 d, s). Whichever size the table gives, the matching layout is used.
        ("Q8_1", 36): (("d", 0, "f16"), ("s", 2, "f16")),
        ("Q8_1", 40): (("d", 0, "f32"), ("s", 4, "f32")),
        ("Q2_K", 84): (("d", 80, "f16"), ("dmin", 82, "f16")),
        ("Q3_K", 110): (("d", 108, "f16"),),
        ("Q4_K", 144): (("d", 0, "f16"), ("dmin", 2, "f16")),
        ("Q5_K", 176): (("d", 0, "f16"), ("dmin", 2, "f16")),
        ("Q6_K", 210): (("d", 208, "f16"),),
        ("Q8_K", 292): (("d", 0, "f32"),),
        ("IQ2_XXS", 66): (("d", 0, "f16"),),
        ("IQ2_XS", 74): (("d", 0, "f16"),),
        ("IQ3_XXS", 98): (("d", 0, "f16"),),
        ("IQ1_S", 50): (("d", 0, "f16"),),
        ("IQ4_NL", 18): (("d", 0, "f16"),),
        ("IQ3_S", 110): (("d", 0, "f16"),),
        ("IQ2_S", 82): (("d", 0, "f16"),),
        ("IQ4_XS", 136): (("d", 0, "f16"),),
        # No d field: the f16 scale is the top nibble of each of the four u16 words of scales[8].
        ("IQ1_M", 56): (("d", 48, "iq1m"),),
        ("TQ1_0", 54): (("d", 52, "f16"),),
        ("TQ2_0", 66): (("d", 64, "f16"),),
        ("Q1_0", 18): (("d", 0, "f16"),),
    }
)
"""Where each block-quantized ggml type keeps its floating-point scales, as in ggml's block structs.

Keyed by (type name, bytes per block); each field is (name, byte offset in the block, encoding), the
encoding being ``f16`` or ``f32`` (little-endian IEEE) or ``iq1m`` (an f16 assembled from the top four bits
of four u16 words). A NaN or ±Inf there turns every weight of the block into NaN or ±Inf when dequantized.
"""

_KV_MIN_BYTES: Final = 13  # u64 key length, (empty key), u32 value type, a 1-byte value
_TENSOR_INFO_MIN_BYTES: Final = 24  # u64 name length, (empty name), u32 rank, u32 type, u64 offset
_FIXED_HEADER_BYTES: Final = 24  # magic, u32 version, u64 tensor count, u64 key/value count
_WINDOW: Final = 1 << 20  # bytes read at a time while parsing the header
_MIN_CHUNK_BYTES: Final = 4096  # holds a whole block of every ggml type (the largest, Q8_K, is 292 bytes)
_MAX_KEY_BYTES: Final = 64 << 10  # keys and tensor names longer than this are absurd (strict)
_MAX_KEPT_STRING: Final = 1024  # string metadata values up to this long are kept in GGUFLayout.metadata
_MAX_NESTING: Final = 8  # arrays of arrays deeper than this are not walked (they fail anyway)
_LIST_LIMIT: Final = 20  # names listed in one aggregated finding's detail
_U64: Final = struct.Struct("<Q")
_I64_MAX: Final = 2**63 - 1
_U64_MAX: Final = 2**64 - 1

_ALIGNMENT_KEY: Final = "general.alignment"
# struct formats of the fixed-size metadata value types, by GGUFValueType name
_SCALAR_FORMATS: Final = {
    "UINT8": "<B",
    "INT8": "<b",
    "UINT16": "<H",
    "INT16": "<h",
    "UINT32": "<I",
    "INT32": "<i",
    "FLOAT32": "<f",
    "BOOL": "<?",
    "UINT64": "<Q",
    "INT64": "<q",
    "FLOAT64": "<d",
}

_REDOWNLOAD: Final = "Re-download the file; if the problem persists, the published file is broken."
_REFUSED: Final = (
    "llama.cpp refuses this file, so it is corrupt or was written by a tool that does not follow the "
    "format. Re-download it; if the problem persists, report it to the publisher."
)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor info of a GGUF header.

    ``dims`` is in GGUF order (``dims[0]`` varies fastest, like ggml's ``ne``); :attr:`shape` is the
    numpy order. ``offset`` is relative to the data section (:attr:`GGUFLayout.data_start`).
    """

    name: str
    type_name: str
    ggml_type: int
    dims: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The dimensions in numpy (row-major) order: ``dims`` reversed."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        """Number of elements (1 for a rank-0 tensor)."""
        return math.prod(self.dims)


@dataclass(frozen=True)
class GGUFLayout:
    """A structurally valid GGUF header: its tensors in header order, and its scalar metadata.

    ``metadata`` holds the scalar key/values (strings up to 1 KiB); arrays and longer strings are left out.
    """

    version: int
    alignment: int
    data_start: int
    file_size: int
    kv_count: int
    tensors: tuple[GGUFTensor, ...]
    metadata: Mapping[str, bool | int | float | str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def data_size(self) -> int:
        """Bytes from the start of the data section to the end of the file."""
        return self.file_size - self.data_start


# --------------------------------------------------------------------------------------------------------
# Type tables, from the gguf package (imported on first use: it imports numpy and takes ~0.2 s).


@dataclass(frozen=True)
class _Tables:
    scalar: Mapping[int, struct.Struct]  # the fixed-size metadata value types
    string: int
    array: int
    uint32: int
    value_names: Mapping[int, str]
    ggml: Mapping[int, tuple[str, int, int]]  # ggml type -> (name, elements per block, bytes per block)


@functools.cache
def _tables() -> _Tables:
    from gguf import GGML_QUANT_SIZES, GGUFValueType

    return _Tables(
        scalar={
            int(v): struct.Struct(_SCALAR_FORMATS[v.name]) for v in GGUFValueType if v.name in _SCALAR_FORMATS
        },
        string=int(GGUFValueType.STRING),
        array=int(GGUFValueType.ARRAY),
        uint32=int(GGUFValueType.UINT32),
        value_names={int(v): v.name.lower() for v in GGUFValueType},
        ggml={int(t): (t.name, blck, size) for t, (blck, size) in GGML_QUANT_SIZES.items()},
    )


# --------------------------------------------------------------------------------------------------------
# Reading the header.


class _Stop(Exception):
    """A problem after which the header cannot be walked further."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


class _Truncated(Exception):
    """A fixed-size field runs past the end of the file."""


class _NeedMore(Exception):
    """Prefix mode: the header continues past the bytes given."""


class _Source:
    """The file's bytes ``[0, size)``, read forward through a bounded window (or from a given prefix)."""

    def __init__(self, size: int, fh: io.FileIO | None = None, prefix: memoryview | None = None) -> None:
        self.size = size
        self.fh = fh
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.buf = memoryview(b"") if prefix is None else prefix[:size]

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes (``n`` is small: a number, a key or a name)."""
        off = self.pos - self.base
        if off < 0 or off + n > len(self.buf):
            self._fill(n)
            off = self.pos - self.base
        self.pos += n
        return self.buf[off : off + n]

    def skip(self, n: int) -> None:
        if n > self.size - self.pos:
            raise _Truncated
        self.pos += n

    def skip_strings(self, i: int, count: int, limit: int) -> int:
        """Skip length-prefixed strings ``i, i + 1, ...`` while they lie in the window and are at most
        ``limit`` bytes; returns the index of the first one not skipped (``count`` when all were)."""
        buf, base, size = self.buf, self.base, self.size
        off = self.pos - base
        last = len(buf) - 8
        unpack = _U64.unpack_from
        while i < count and 0 <= off <= last:
            (n,) = unpack(buf, off)
            if n > limit or n > size - base - off - 8:
                break
            off += 8 + n
            i += 1
        self.pos = base + off
        return i

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def _fill(self, n: int) -> None:
        if n > self.size - self.pos:
            raise _Truncated
        if self.fh is None:
            raise _NeedMore
        want = min(max(n, _WINDOW), self.size - self.pos)
        self.fh.seek(self.pos)
        data = bytearray(want)
        view = memoryview(data)
        got = 0
        while got < want:
            k = self.fh.readinto(view[got:])
            if not k:
                break
            got += k
        if got < n:
            raise _Truncated  # the file shrank while it was read
        self.buf = view[:got]
        self.base = self.pos


_SEVERITY: Final[Mapping[str, Callable[..., Finding]]] = {
    "gguf.invalid_utf8": warn,
    "gguf.trailing_bytes": warn,
    "gguf.unchecked": info,
}


class _Problems:
    """Findings aggregated by code: the first occurrence's message, a count and the names involved."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[str | None, str, dict[str, Any]]] = {}
        self.counts: dict[str, int] = {}
        self.names: dict[str, list[str]] = {}

    def add(self, code: str, tensor: str | None, message: str, **detail: Any) -> None:
        if code not in self.first:
            self.first[code] = (tensor, message, detail)
            self.counts[code] = 0
            self.names[code] = []
        self.counts[code] += 1
        if tensor is not None and len(self.names[code]) < _LIST_LIMIT:
            self.names[code].append(tensor)

    def findings(self, where: str) -> list[Finding]:
        out = []
        for code, (tensor, message, detail) in self.first.items():
            count = self.counts[code]
            more = f" ({count - 1:,} more like it)" if count > 1 else ""
            extra = dict(detail)
            if count > 1:
                extra["count"] = count
                if self.names[code]:
                    extra["tensors"] = self.names[code]
            make: Callable[..., Finding] = _SEVERITY.get(code, fail)
            out.append(make(code, f"{where}{message}{more}. {_advice(code)}", tensor=tensor, **extra))
        return out


def _advice(code: str) -> str:
    if code == "gguf.invalid_utf8":
        return "llama.cpp loads it, but the gguf Python reader fails on it."
    if code == "gguf.trailing_bytes":
        return "The tensors may be intact, but this is not what the writer produced; re-download it."
    if code == "gguf.unchecked":
        return "vcache checks little-endian GGUF files only."
    if code in ("gguf.truncated", "gguf.tensor_out_of_bounds"):
        return "Typically an interrupted download. " + _REDOWNLOAD
    if code in ("gguf.count_too_large", "gguf.string_out_of_bounds", "gguf.array_out_of_bounds"):
        return "The file is truncated (an interrupted download) or its header is corrupt. " + _REDOWNLOAD
    if code == "gguf.value_too_large":
        return "No real model has this; the header is corrupt or crafted. " + _REDOWNLOAD
    return _REFUSED


def _q(name: str) -> str:
    return repr(name) if len(name) <= 80 else repr(name[:80]) + f"... ({len(name):,} characters)"


class _Parser:
    def __init__(self, src: _Source, where: str) -> None:
        self.src = src
        self.where = where
        self.t = _tables()
        self.problems = _Problems()

    def run(self) -> tuple[GGUFLayout | None, list[Finding]]:
        try:
            layout = self._parse()
        except _Stop as stop:
            self.problems.add(stop.code, None, stop.message, **stop.detail)
            layout = None
        except _Truncated:
            self.problems.add(
                "gguf.truncated",
                None,
                f"the file is truncated: it ends at byte {self.src.size:,}, inside the header (a field at "
                f"byte {self.src.pos:,} runs past the end)",
                file_size=self.src.size,
                offset=self.src.pos,
            )
            layout = None
        findings = self.problems.findings(self.where)
        if any(f.severity is Severity.FAIL for f in findings):
            layout = None
        return layout, findings

    # -- the fixed header -------------------------------------------------------------------------------

    def _parse(self) -> GGUFLayout | None:
        src = self.src
        head = bytes(src.take(min(4, src.size)))
        if head != GGUF_MAGIC[: len(head)] or not head:
            starts = f"starts with {head!r}" if head else "is empty"
            raise _Stop(
                "gguf.bad_magic",
                f"the file {starts}, not the GGUF magic b'GGUF': it is not a GGUF file",
                magic=head.hex(),
            )
        if len(head) < 4:
            raise _Truncated
        version = src.u32()
        if version not in _SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in _SUPPORTED_VERSIONS:
                self.problems.add(
                    "gguf.unchecked",
                    None,
                    f"this is a big-endian GGUF (version {swapped}, for hosts such as s390x); its structure "
                    "and content were not checked",
                    version=swapped,
                )
                return None
            why = "version 1 is obsolete" if version == 1 else "vcache and llama.cpp know versions 2 and 3"
            raise _Stop("gguf.bad_version", f"the GGUF version is {version:,} ({why})", version=version)
        n_tensors = src.u64()
        n_kv = src.u64()
        room = src.size - _FIXED_HEADER_BYTES
        if n_tensors * _TENSOR_INFO_MIN_BYTES + n_kv * _KV_MIN_BYTES > room:
            raise _Stop(
                "gguf.count_too_large",
                f"the header declares {n_tensors:,} tensors and {n_kv:,} metadata entries, which need at "
                f"least {n_tensors * _TENSOR_INFO_MIN_BYTES + n_kv * _KV_MIN_BYTES:,} bytes; the file has "
                f"{max(room, 0):,} after the fixed header",
                tensor_count=n_tensors,
                kv_count=n_kv,
                file_size=src.size,
            )
        metadata, alignment = self._kv_section(n_kv)
        infos = self._tensor_infos(n_tensors)
        if alignment is None or infos is None:
            return None
        header_end = src.pos
        data_start = _pad(header_end, alignment)
        tensors = self._layout(infos, alignment, data_start)
        if tensors is None:
            return None
        return GGUFLayout(
            version=version,
            alignment=alignment,
            data_start=data_start,
            file_size=src.size,
            kv_count=n_kv,
            tensors=tensors,
            metadata=MappingProxyType(metadata),
        )

    # -- metadata ---------------------------------------------------------------------------------------

    def _kv_section(self, n_kv: int) -> tuple[dict[str, bool | int | float | str], int | None]:
        src = self.src
        seen: set[bytes] = set()
        metadata: dict[str, bool | int | float | str] = {}
        alignment: tuple[int, Any] | None = None
        for i in range(n_kv):
            at = src.pos
            raw = self._name(f"metadata key #{i}", at)
            key = self._text(raw, "metadata key", at)
            if not raw:
                self.problems.add(
                    "gguf.empty_key", None, f"metadata entry #{i} (at byte {at:,}) has an empty key"
                )
            elif raw in seen:
                self.problems.add(
                    "gguf.duplicate_key", None, f"the metadata key {_q(key)} appears twice", key=key
                )
            seen.add(raw)
            vtype = src.u32()
            value = self._value(vtype, key, at)
            if value is not None:
                metadata[key] = value
            if key == _ALIGNMENT_KEY:
                alignment = (vtype, value)
        return metadata, self._alignment(alignment)

    def _alignment(self, found: tuple[int, Any] | None) -> int | None:
        if found is None:
            return _DEFAULT_ALIGNMENT
        vtype, value = found
        if vtype != self.t.uint32:
            reason = f"has type {self.t.value_names.get(vtype, vtype)}, not uint32"
        elif value == 0 or value & (value - 1):
            reason = f"is {value:,}, not a power of two"
        elif value > _MAX_ALIGNMENT:
            reason = f"is {value:,}, more than llama.cpp's limit of {_MAX_ALIGNMENT:,}"
        else:
            return int(value)
        self.problems.add("gguf.bad_alignment", None, f"{_ALIGNMENT_KEY} {reason}")
        return None

    def _value(self, vtype: int, key: str, at: int) -> bool | int | float | str | None:
        """Walk one value of type ``vtype``; returns it when it is a scalar worth keeping."""
        src = self.src
        scalar = self.t.scalar.get(vtype)
        if scalar is not None:
            value: bool | int | float = scalar.unpack(src.take(scalar.size))[0]
            return value
        if vtype == self.t.string:
            n = self._length(key, at)
            if n <= _MAX_KEPT_STRING:
                return bytes(src.take(n)).decode("utf-8", "replace")
            src.skip(n)
            return None
        if vtype == self.t.array:
            self._array(key, at, 0)
            return None
        raise _Stop(
            "gguf.bad_kv_type",
            f"the metadata key {_q(key)} (at byte {at:,}) has value type {vtype:,}, which is not a GGUF type "
            "(0-12)",
            key=key,
            value_type=vtype,
        )

    def _array(self, key: str, at: int, depth: int) -> None:
        src = self.src
        etype = src.u32()
        count = src.u64()
        scalar = self.t.scalar.get(etype)
        size = None if scalar is None else scalar.size
        if size is None and etype not in (self.t.string, self.t.array):
            raise _Stop(
                "gguf.bad_kv_type",
                f"the metadata key {_q(key)} (at byte {at:,}) is an array of type {etype:,}, which is not a "
                "GGUF type (0-12)",
                key=key,
                value_type=etype,
            )
        least = size if size is not None else (8 if etype == self.t.string else 12)
        if count * least > src.remaining:
            raise _Stop(
                "gguf.array_out_of_bounds",
                f"the metadata key {_q(key)} (at byte {at:,}) is an array of {count:,} "
                f"{self.t.value_names[etype]} elements, which need at least {count * least:,} bytes; "
                f"{src.remaining:,} are left in the file",
                key=key,
                count=count,
            )
        if count > _MAX_ARRAY_ELEMENTS:
            raise _Stop(
                "gguf.value_too_large",
                f"the metadata key {_q(key)} is an array of {count:,} elements, more than llama.cpp's limit "
                f"of {_MAX_ARRAY_ELEMENTS:,}",
                key=key,
                count=count,
            )
        if size is not None:
            src.skip(count * size)
        elif etype == self.t.string:
            i = 0
            while i < count:  # the fast loop stops at a length that needs a look, or at the window's end
                i = src.skip_strings(i, count, _MAX_STRING_BYTES)
                if i < count:
                    src.skip(self._length(key, at))
                    i += 1
        else:
            if depth == 0:
                self.problems.add(
                    "gguf.nested_array",
                    None,
                    f"the metadata key {_q(key)} holds an array of arrays, which llama.cpp cannot read",
                    key=key,
                )
            if depth + 1 >= _MAX_NESTING:
                raise _Stop(
                    "gguf.nested_array",
                    f"the metadata key {_q(key)} nests arrays more than {_MAX_NESTING} deep",
                    key=key,
                )
            for _ in range(count):
                self._array(key, at, depth + 1)

    def _length(self, key: str, at: int) -> int:
        """A string's u64 length, checked against the bytes left and llama.cpp's limit."""
        src = self.src
        n = src.u64()
        if n > src.remaining:
            raise _Stop(
                "gguf.string_out_of_bounds",
                f"a string in the metadata key {_q(key)} (at byte {at:,}) claims {n:,} bytes but only "
                f"{src.remaining:,} are left in the file",
                key=key,
                length=n,
                remaining=src.remaining,
            )
        if n > _MAX_STRING_BYTES:
            raise _Stop(
                "gguf.value_too_large",
                f"a string in the metadata key {_q(key)} is {n:,} bytes long, more than llama.cpp's limit of "
                f"{_MAX_STRING_BYTES:,}",
                key=key,
                length=n,
            )
        return n

    def _name(self, what: str, at: int) -> bytes:
        """A key or tensor name: u64 length and bytes, bounded by the file and by :data:`_MAX_KEY_BYTES`."""
        src = self.src
        n = src.u64()
        if n > src.remaining:
            raise _Stop(
                "gguf.string_out_of_bounds",
                f"{what} (at byte {at:,}) claims {n:,} bytes but only {src.remaining:,} are left in the file",
                length=n,
                remaining=src.remaining,
            )
        if n > _MAX_KEY_BYTES:
            raise _Stop(
                "gguf.value_too_large",
                f"{what} (at byte {at:,}) is {n:,} bytes long; no real key or tensor name is longer than "
                f"{_MAX_KEY_BYTES:,}",
                length=n,
            )
        return bytes(src.take(n))

    def _text(self, raw: bytes, what: str, at: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "replace")
            self.problems.add(
                "gguf.invalid_utf8", None, f"the {what} {_q(text)} (at byte {at:,}) is not UTF-8"
            )
            return text

    # -- tensor infos -----------------------------------------------------------------------------------

    def _tensor_infos(self, n_tensors: int) -> list[tuple[str, int, tuple[int, ...], int, int]] | None:
        """(name, ggml type, dims, offset, bytes) per tensor, or None when any of them is invalid."""
        src = self.src
        out: list[tuple[str, int, tuple[int, ...], int, int]] = []
        names: set[bytes] = set()
        ok = True
        add = self.problems.add
        for i in range(n_tensors):
            at = src.pos
            raw = self._name(f"the name of tensor #{i}", at)
            name = self._text(raw, "tensor name", at)
            if len(raw) > _MAX_NAME_BYTES:
                ok = False
                add(
                    "gguf.name_too_long",
                    name,
                    f"tensor {_q(name)} has a name of {len(raw):,} bytes; ggml keeps "
                    f"at most {_MAX_NAME_BYTES}",
                    length=len(raw),
                )
            if raw in names:
                ok = False
                add("gguf.duplicate_tensor", name, f"the tensor name {_q(name)} appears twice")
            names.add(raw)
            n_dims = src.u32()
            if n_dims > _MAX_DIMS:
                ok = False
                add(
                    "gguf.bad_rank",
                    name,
                    f"tensor {_q(name)} has {n_dims:,} dimensions; ggml allows at most {_MAX_DIMS}",
                    rank=n_dims,
                )
                src.skip(8 * n_dims)
                dims: tuple[int, ...] = ()
            else:
                dims = tuple(src.u64() for _ in range(n_dims))
            gtype = src.u32()
            offset = src.u64()
            if n_dims > _MAX_DIMS:
                continue
            if any(d > _I64_MAX for d in dims):
                ok = False
                add(
                    "gguf.bad_dimension",
                    name,
                    f"tensor {_q(name)} has dimensions {list(dims)}: one is 2^63 or "
                    "more, which llama.cpp reads as negative",
                    dims=list(dims),
                )
                continue
            spec = self.t.ggml.get(gtype)
            if spec is None:
                ok = False
                add(
                    "gguf.unknown_type",
                    name,
                    f"tensor {_q(name)} has ggml type {gtype:,}, which is not a "
                    "ggml type the gguf package knows (or one ggml removed)",
                    ggml_type=gtype,
                )
                continue
            type_name, blck, type_size = spec
            n_el = math.prod(dims)
            first = dims[0] if dims else 1
            if n_el > _I64_MAX:
                ok = False
                add(
                    "gguf.size_overflow",
                    name,
                    f"tensor {_q(name)} ({type_name} {list(dims)}) has {n_el:,} "
                    "elements, more than fit in 63 bits",
                    dims=list(dims),
                )
                continue
            if first % blck:
                ok = False
                add(
                    "gguf.block_mismatch",
                    name,
                    f"tensor {_q(name)} ({type_name} {list(dims)}) has {first:,} "
                    f"elements per row, not a multiple of the {type_name} block of {blck}",
                    dims=list(dims),
                )
                continue
            nbytes = n_el // blck * type_size
            if nbytes > _U64_MAX:
                ok = False
                add(
                    "gguf.size_overflow",
                    name,
                    f"tensor {_q(name)} ({type_name} {list(dims)}) needs "
                    f"{nbytes:,} bytes, more than fit in 64 bits",
                    dims=list(dims),
                )
                continue
            out.append((name, gtype, dims, offset, nbytes))
        return out if ok else None

    # -- layout -----------------------------------------------------------------------------------------

    def _layout(
        self, infos: list[tuple[str, int, tuple[int, ...], int, int]], alignment: int, data_start: int
    ) -> tuple[GGUFTensor, ...] | None:
        add = self.problems.add
        size = self.src.size
        have = size - data_start  # bytes of tensor data in the file (negative: the padding is cut)
        tensors = tuple(
            GGUFTensor(name, self.t.ggml[gtype][0], gtype, dims, offset, nbytes)
            for name, gtype, dims, offset, nbytes in infos
        )
        expected = 0
        canonical = True
        for t in tensors:
            canonical = canonical and t.offset == expected
            expected += _pad(t.nbytes, alignment)
        ok = True
        for t in tensors:
            if t.offset % alignment:
                ok = False
                add(
                    "gguf.misaligned",
                    t.name,
                    f"tensor {_q(t.name)} starts at data offset {t.offset:,}, not a "
                    f"multiple of the alignment {alignment}",
                    offset=t.offset,
                    alignment=alignment,
                )
        past = [t for t in tensors if t.offset + t.nbytes > have and (t.nbytes or t.offset > have)]
        if past and canonical:
            needed = max(t.offset + t.nbytes for t in tensors)
            add(
                "gguf.truncated",
                None,
                f"the header describes {needed:,} bytes of tensor data but the file "
                f"holds {max(have, 0):,} ({needed - max(have, 0):,} missing, {size:,} bytes in all): the file "
                "is truncated",
                expected=needed,
                actual=max(have, 0),
                file_size=size,
            )
            return None
        for t in past:
            ok = False
            add(
                "gguf.tensor_out_of_bounds",
                t.name,
                f"tensor {_q(t.name)} ({t.type_name}, {t.nbytes:,} bytes "
                f"at data offset {t.offset:,}) ends at file byte {data_start + t.offset + t.nbytes:,}, past the "
                f"end of the file ({size:,} bytes)",
                offset=t.offset,
                nbytes=t.nbytes,
                file_size=size,
            )
        ranked = sorted((t for t in tensors if t.nbytes), key=lambda t: (t.offset, t.offset + t.nbytes))
        last: GGUFTensor | None = None
        for t in ranked:
            if last is not None and t.offset < last.offset + last.nbytes:
                ok = False
                add(
                    "gguf.overlap",
                    t.name,
                    f"tensor {_q(t.name)} (data bytes {t.offset:,}-"
                    f"{t.offset + t.nbytes:,}) overlaps tensor {_q(last.name)} (bytes {last.offset:,}-"
                    f"{last.offset + last.nbytes:,})",
                    other=last.name,
                )
            if last is None or t.offset + t.nbytes > last.offset + last.nbytes:
                last = t
        if not ok:
            return None
        expected = 0
        for t in tensors:
            if t.offset != expected:
                add(
                    "gguf.offset_mismatch",
                    t.name,
                    f"tensor {_q(t.name)} is at data offset {t.offset:,}; "
                    f"llama.cpp expects {expected:,}, right after the tensor before it (padded to "
                    f"{alignment})",
                    offset=t.offset,
                    expected=expected,
                )
                return None
            expected += _pad(t.nbytes, alignment)
        if have > expected:
            add(
                "gguf.trailing_bytes",
                None,
                f"{have - expected:,} bytes follow the end of the tensor data",
                extra=have - expected,
            )
        return tensors


def _pad(n: int, alignment: int) -> int:
    return n + (-n % alignment)


def _label(path: str | os.PathLike[str]) -> str:
    return os.path.basename(os.fspath(path)) or os.fspath(path)


def _internal_error(where: str, exc: BaseException) -> tuple[None, list[Finding]]:
    return None, [
        fail(
            "gguf.internal_error",
            f"{where}the GGUF check itself failed ({type(exc).__name__}: {exc}); this is a vcache bug, please "
            "report it. The file was not verified.",
            error=repr(exc),
        )
    ]


def read_gguf_header(path: str | os.PathLike[str]) -> tuple[GGUFLayout | None, list[Finding]]:
    """Read and check the header and tensor layout of the GGUF file at ``path``.

    Reads the header in bounded windows (never the tensor data), checking every count and length against
    the file size before using it. Returns the layout (``None`` when any finding is a failure, or for a
    big-endian file, which is not checked) and the findings; never raises on a bad or unreadable file.
    """
    label = _label(path)
    where = f"{label}: "
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, [
                fail(
                    "gguf.unreadable",
                    f"{where}not a regular file, so it cannot be a GGUF file; re-download it.",
                )
            ]
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            return _Parser(_Source(size, fh=fh), where).run()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        return None, [
            fail(
                "gguf.unreadable",
                f"{where}cannot read the file ({reason}); check the path and permissions.",
                error=reason,
            )
        ]
    except Exception as exc:  # a bug here must become a finding, never an exception in the caller
        return _internal_error(where, exc)


def parse_gguf_header_bytes(
    prefix: bytes | bytearray | memoryview, file_size: int, *, label: str | None = None
) -> tuple[GGUFLayout | None, list[Finding]] | None:
    """Check a GGUF header given the file's first bytes and its total size (for bytes being downloaded).

    Returns what :func:`read_gguf_header` returns for the file, or ``None`` when ``prefix`` ends before
    the header does and the file is longer: call again with more bytes (doubling the prefix each time
    keeps the total work linear). Bytes beyond ``file_size`` are ignored. Never raises on bad input.
    """
    where = f"{label}: " if label else ""
    try:
        view = memoryview(prefix).cast("B")
        return _Parser(_Source(file_size, prefix=view), where).run()
    except _NeedMore:
        return None
    except Exception as exc:
        return _internal_error(where, exc)


# --------------------------------------------------------------------------------------------------------
# Content.


@dataclass(frozen=True)
class _Quant:
    """How one block-quantized type is scanned."""

    name: str
    block_elements: int
    block_bytes: int
    fields: tuple[tuple[str, int, str], ...]


@functools.cache
def _quants() -> Mapping[str, _Quant]:
    return MappingProxyType(
        {
            name: _Quant(name, blck, size, SCALE_FIELDS.get((name, size), ()))
            for name, blck, size in _tables().ggml.values()
            if name not in _BITS
        }
    )


_ENCODING_BITS: Final[Mapping[str, _Bits]] = {"f16": _BITS["F16"], "f32": _BITS["F32"], "iq1m": _BITS["F16"]}


def _scale_bits(blocks: npt.NDArray[np.uint8], offset: int, encoding: str) -> npt.NDArray[Any]:
    """One scale field of every block, as raw little-endian unsigned integers (a strided view or, for
    IQ1_M, the f16 assembled from four nibbles)."""
    if encoding == "iq1m":
        w = blocks[:, offset : offset + 8].view("<u2")
        return (w[:, 0] >> 12) | ((w[:, 1] >> 8) & 0x00F0) | ((w[:, 2] >> 4) & 0x0F00) | (w[:, 3] & 0xF000)
    unit = _ENCODING_BITS[encoding].unit
    return blocks[:, offset : offset + unit.itemsize].view(unit)[:, 0]


class _QuantScan:
    """The scale checks of one block-quantized tensor, fed whole blocks in order."""

    def __init__(self, t: TensorEntry, q: _Quant, *, zero_hint: bool) -> None:
        self.t = t
        self.q = q
        self.zero_hint = zero_hint and bool(q.fields) and q.fields[0][2] != "iq1m"
        self.nan = {f[0]: _Hits() for f in q.fields}
        self.inf = {f[0]: _Hits() for f in q.fields}

    def feed(self, b0: int, raw: npt.NDArray[np.uint8]) -> bool:
        """Judge blocks ``b0, b0 + 1, ...`` in ``raw``; False promises no block in it is all zero bytes."""
        blocks = raw.reshape(-1, self.q.block_bytes)
        may_have_zeros = True
        for i, (name, offset, encoding) in enumerate(self.q.fields):
            bits = _ENCODING_BITS[encoding]
            u = _scale_bits(blocks, offset, encoding)
            key = u & bits.unit.type(bits.mag_mask)
            assert bits.nonfinite_min is not None
            if int(key.max()) >= bits.nonfinite_min:
                at = np.flatnonzero(key >= bits.nonfinite_min)
                is_inf = key[at] == bits.inf_key
                self.inf[name].add(b0 + at[is_inf])
                self.nan[name].add(b0 + at[~is_inf])
            if i == 0 and self.zero_hint:
                may_have_zeros = not bool(u.all())  # a block with a non-zero scale is not all zero bytes
        return may_have_zeros

    def findings(self, vouched: bool) -> list[Finding]:
        out = []
        for code, hits, effect in (
            ("gguf.scale_nan", self.nan, "NaN"),
            ("gguf.scale_inf", self.inf, "±Inf (NaN where its quant is zero)"),
        ):
            count = sum(h.count for h in hits.values())
            if not count:
                continue
            per_field = {name: h.count for name, h in hits.items() if h.count}
            first_name = min(per_field, key=lambda n: hits[n].first[0])
            first = hits[first_name].first[0]
            fields = ", ".join(f"{n} in {c:,}" for n, c in per_field.items())
            bs = self.q.block_elements
            kind = "NaN" if code == "gguf.scale_nan" else "±Inf"
            out.append(
                fail(
                    code,
                    f"tensor {_describe(self.t)} has {kind} block scales ({fields} block(s) of "
                    f"{self.t.nbytes // self.q.block_bytes:,}), first in block {first:,} (elements "
                    f"{first * bs:,}-{(first + 1) * bs - 1:,}). Every weight of such a block dequantizes to "
                    f"{effect}, which spreads through every activation it touches. " + _provenance(vouched),
                    tensor=self.t.name,
                    count=count,
                    fields=per_field,
                    first_block=first,
                    blocks=hits[first_name].first,
                )
            )
        return out


class _GGUFScan(_FileScan):
    """The safetensors scan of ``checks/tensors.py``, with block-quantized GGUF tensors handled here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._quant: _QuantScan | None = None

    def begin_tensor(self, t: TensorEntry) -> int | None:
        self._quant = None
        if t.dtype in _BITS:
            return super().begin_tensor(t)
        self._scan = None
        if t.nbytes <= 0:
            return None
        q = _quants()[t.dtype]
        if not q.fields:
            self.findings.append(
                info(
                    "tensor.unchecked",
                    f"tensor {_describe(t)}: {t.dtype} block scales have no NaN or Inf encoding in ggml, so "
                    "only zero-byte runs were checked.",
                    tensor=t.name,
                )
            )
        self._quant = _QuantScan(t, q, zero_hint=self.runs.granule >= 2 * q.block_bytes)
        return max(q.block_bytes, self.block_bytes // q.block_bytes * q.block_bytes)

    def block(self, t: TensorEntry, off: int, raw: npt.NDArray[np.uint8]) -> None:
        quant = self._quant
        if quant is None:
            super().block(t, off, raw)
            return
        may_have_zeros = quant.feed(off // quant.q.block_bytes, raw)
        self.runs.feed(self.header.data_start + t.begin + off, raw, may_have_zeros)
        if off + raw.size >= t.nbytes:
            self.findings.extend(quant.findings(self.vouched))
            self._quant = None


class _Stream(_TensorStream):
    _scan_type = _GGUFScan


def _scan_header(layout: GGUFLayout) -> SafetensorsHeader:
    """The layout as the tensor scan's header type: offsets relative to ``data_start``, numpy shapes, and
    the ggml type name as dtype (F32, F16, BF16, F64 and I8-I64 have the same names there)."""
    entries = tuple(
        TensorEntry(t.name, t.type_name, t.shape, t.offset, t.offset + t.nbytes) for t in layout.tensors
    )
    return SafetensorsHeader(layout.data_start - 8, entries, None, layout.file_size)


def scan_gguf(
    path: str | Path,
    layout: GGUFLayout,
    *,
    vouched: bool,
    allow_inf: Callable[[str], bool] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    zero_run_bytes: int = DEFAULT_ZERO_RUN_BYTES,
) -> list[Finding]:
    """Check every tensor's data in one chunked pass over the GGUF file at ``path``.

    ``layout`` is the file's structurally valid layout (:func:`read_gguf_header`). ``vouched`` says whether
    a publisher digest matched these bytes: zero-fill damage fails when it did not and only warns when it
    did. ``allow_inf(name)`` turns ±Inf in a float tensor into a warning (default: masks). Memory is one
    ``chunk_bytes`` buffer whatever the file size. Returns the findings (codes in the module docstring);
    never raises on bad data.
    """
    if chunk_bytes < _MIN_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be at least {_MIN_CHUNK_BYTES}, got {chunk_bytes}")
    if zero_run_bytes < 1:
        raise ValueError(f"zero_run_bytes must be positive, got {zero_run_bytes}")
    f = open_for_scan(path)
    if isinstance(f, Finding):
        return [f]
    with f:
        return _GGUFScan(
            f,
            _scan_header(layout),
            vouched=vouched,
            allow_inf=allow_inf or default_allow_inf,
            stats=False,
            chunk_bytes=chunk_bytes,
            zero_run_bytes=zero_run_bytes,
        ).run()


class GGUFStream:
    """The checks of :func:`scan_gguf`, fed the file's bytes in order instead of reading them.

    Rides on a read that happens anyway (a download being hashed), with the contract of
    :class:`~vcache.checks.tensors.TensorStream`: :meth:`feed` takes consecutive byte ranges from any
    offset (the header and padding are skipped), blocks are cut exactly as :func:`scan_gguf` cuts them so
    the findings are the same, and :meth:`finish` reads the file only to find the exact ends of zero runs.
    ``feed`` raises ``ValueError`` when fed out of order: the caller then scans the file instead.
    """

    def __init__(
        self,
        layout: GGUFLayout,
        *,
        vouched: bool,
        allow_inf: Callable[[str], bool] | None = None,
        zero_run_bytes: int = DEFAULT_ZERO_RUN_BYTES,
    ) -> None:
        self._stream = _Stream(
            _scan_header(layout), vouched=vouched, allow_inf=allow_inf, zero_run_bytes=zero_run_bytes
        )

    @property
    def complete(self) -> bool:
        """Every tensor byte has been fed."""
        return self._stream.complete

    def feed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Judge the file bytes ``[offset, offset + len(data))``; ``offset`` continues the previous feed."""
        self._stream.feed(offset, data)

    def finish(self, path: str | Path) -> list[Finding]:
        """The findings, once every tensor byte was fed; ``path`` holds the same bytes. Never raises on bad
        data."""
        return self._stream.finish(path)
