"""ONNX model checks: recognition, structure, external-data references and tensor content.

This module owns the verdict on one ONNX model file (a protobuf ``ModelProto``): whether its first bytes
look like one (:func:`looks_like_onnx`), whether the reference reader (the optional ``onnx`` package, the
``vcache[onnx]`` extra) parses it, whether every external-data reference names a file inside the snapshot
and a byte range inside that file of exactly the size its tensor needs, and the values of every tensor the
model holds or references, judged by the content scan of ``checks/tensors.py`` (the same bit rules and the
same zero-fill policy as for safetensors). It never loads external data through ``onnx``, never opens a
file a reference names before the reference passed the path rules below, never judges the graph's
operators (``onnx.checker`` judges a model's semantics, not the file's integrity), never modifies, moves or
deletes a file, and never raises on bad input: every problem is a :class:`~vcache.report.Finding`.

Finding codes (``tensor.*`` findings of the content scan come on top, see ``checks/tensors.py``; those about
an external data file name it in ``detail["file"]``):

==================================  ========  =================================================================
code                                severity  when
==================================  ========  =================================================================
``onnx.unchecked``                  info      the ``onnx`` package is not installed: structure, references
                                              and content were not checked (only the first bytes were)
``onnx.unreadable``                 fail      the model file cannot be opened or read, or is not a regular file
``onnx.not_onnx``                   fail      the first bytes are not those of a ``ModelProto`` (rule below)
``onnx.too_large``                  fail      the file is over 2 GiB - 1 bytes, protobuf's limit for one
                                              message: no reader can parse it (big models keep their weights
                                              in external data)
``onnx.invalid_protobuf``           fail      the reference reader refuses the bytes (truncated or corrupt)
``onnx.no_graph``                   fail      the model parses but has no graph
``onnx.invalid_tensor``             fail      a tensor with a negative dimension
``onnx.unknown_dtype``              warn      a tensor's ``data_type`` this module does not know: its size was
                                              not checked and its values were not scanned
``onnx.tensor_size_mismatch``       fail      ``raw_data``, packed ``float_data`` / ``double_data`` or the
                                              external range is not exactly what dims × data type need
``onnx.external_invalid``           fail      external-data entries without a ``location``, a key given twice
                                              with different values, an ``offset`` / ``length`` that is not a
                                              plain decimal integer, or ``data_location`` EXTERNAL without entries
``onnx.external_unknown_key``       warn      an external-data key other than location, offset, length,
                                              checksum, basepath (readers ignore it)
``onnx.external_unsafe_path``       fail      a ``location`` that is absolute, has a ``..`` component, a
                                              backslash, a NUL or a drive prefix, or is empty
``onnx.external_outside``           fail      a ``location`` that leads out of the snapshot through a symlink
``onnx.external_missing``           fail      the file a ``location`` names does not exist or is not a regular file
``onnx.external_out_of_bounds``     fail      ``offset`` or ``offset + length`` past the end of that file
``onnx.content_unchecked``          info      float tensors whose values sit in fields the scan cannot read in
                                              place (``int32_data`` varints, unpacked or split ``float_data``)
``onnx.internal_error``             fail      the guard that keeps a bug here from raising; should never appear
==================================  ========  =================================================================

**Recognising ONNX.** A ``ModelProto`` has no magic bytes. Every writer (protobuf serialises fields in
field-number order) starts it with field 1, ``ir_version``, a varint: byte ``0x08`` followed by the version.
:func:`looks_like_onnx` walks the top-level fields in the first bytes: content alone is enough when the
first field is ``ir_version`` in 1..:data:`MAX_IR_VERSION` and it is followed by at least one more field,
every field read being a known ``ModelProto`` field with its wire type (this rejects safetensors, whose
little-endian length prefix can begin with ``0x08``, and every other format). A ``.onnx`` name is the hint
that relaxes the rule: then any sequence of well-formed known fields will do, in any order.

**External-data paths.** onnx and onnxruntime resolve a ``location`` against the directory of the model
path they were given, and an unchecked one reads any file on the machine (the path-traversal class of
CVE-2022-25882 and CVE-2024-27318: ``../`` locations). A location is accepted only when all of these hold:

1. it is a relative POSIX path: not empty, not absolute, no ``..`` component, no backslash (a separator on
   Windows), no NUL, no drive prefix (``C:``). So, joined to the model's directory *as the model was
   named* (its path under ``root``, not where a symlink to it leads), it stays lexically inside ``root``;
2. every directory between ``root`` and the file is a real directory, not a symlink (a symlinked directory
   could lead anywhere, and a Hugging Face cache never makes one);
3. the file may be a symlink, since the Hugging Face cache makes every snapshot file one
   (``snapshots/<revision>/model.onnx.data`` → ``../../blobs/<hash>``), but its fully resolved target must
   lie inside ``root`` or, when ``root`` is a cache snapshot (``…/snapshots/<revision>``), inside that
   repo's ``blobs/``;
4. the target exists and is a regular file (a FIFO or a device would block the reader or never end).

**What is scanned.** Every tensor the model holds: graph initializers, sparse initializers, tensors in node
and function attributes, in subgraphs at any depth, and in training-info graphs. Their ``raw_data`` and
packed ``float_data`` / ``double_data`` are scanned in place in the model file, and external ranges in
the file they name, each file in one chunked pass of :func:`~vcache.checks.tensors.scan_tensors` (memory is
one chunk, whatever the sizes). Float types (FLOAT, FLOAT16, BFLOAT16, DOUBLE, COMPLEX64, the FLOAT8 and
FLOAT4 types) get the NaN / Inf / zero-fill checks; integer and BOOL tensors the zero-fill and BOOL checks;
types without bit rules (COMPLEX128, 2-, 4- and 6-bit types) only the zero-run accounting, with the scan's
``tensor.unchecked``. ``vouched`` (a publisher digest matched the model and its data files) turns zero-fill
damage from a failure into a warning, as for safetensors. The ``checksum`` key is not verified: the
format leaves its meaning loose and no reader checks it.

**Cost.** The model file (at most 2 GiB) is read into memory once and parsed by ``onnx`` (which holds its
own copy, so about twice the file's size at the peak); the tensors are then located by a small protobuf
walk over the same bytes (so their file offsets are known), the parse is dropped, and the content is read
from disk in chunks. External data is never read into memory.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final

from vcache.checks.safetensors import SafetensorsHeader, TensorEntry
from vcache.checks.tensors import scan_tensors
from vcache.report import Finding, fail, info, warn

__all__ = [
    "EXTERNAL_DATA_KEYS",
    "MAX_IR_VERSION",
    "MAX_MODEL_BYTES",
    "ONNX_DTYPES",
    "OnnxDtype",
    "check_onnx",
    "looks_like_onnx",
]

MAX_MODEL_BYTES: Final = 2**31 - 1
"""protobuf's limit for one serialised message: a larger file cannot be a ``ModelProto`` any reader parses."""

MAX_IR_VERSION: Final = 255
"""The largest ``ir_version`` :func:`looks_like_onnx` accepts from content alone (onnx 1.23 writes 14)."""

EXTERNAL_DATA_KEYS: Final = frozenset({"location", "offset", "length", "checksum", "basepath"})
"""The external-data keys readers know (``onnx.external_data_helper``); others are ignored by them."""


@dataclass(frozen=True)
class OnnxDtype:
    """One ``TensorProto.DataType``: its name, bits per element (None: no fixed size) and the content scan's
    dtype name (a safetensors dtype with the same bit rules, or the ONNX name when there is none)."""

    name: str
    bits: int | None
    scan_dtype: str


ONNX_DTYPES: Final[Mapping[int, OnnxDtype]] = MappingProxyType(
    {
        1: OnnxDtype("FLOAT", 32, "F32"),
        2: OnnxDtype("UINT8", 8, "U8"),
        3: OnnxDtype("INT8", 8, "I8"),
        4: OnnxDtype("UINT16", 16, "U16"),
        5: OnnxDtype("INT16", 16, "I16"),
        6: OnnxDtype("INT32", 32, "I32"),
        7: OnnxDtype("INT64", 64, "I64"),
        8: OnnxDtype("STRING", None, "STRING"),
        9: OnnxDtype("BOOL", 8, "BOOL"),
        10: OnnxDtype("FLOAT16", 16, "F16"),
        11: OnnxDtype("DOUBLE", 64, "F64"),
        12: OnnxDtype("UINT32", 32, "U32"),
        13: OnnxDtype("UINT64", 64, "U64"),
        14: OnnxDtype("COMPLEX64", 64, "C64"),
        15: OnnxDtype("COMPLEX128", 128, "COMPLEX128"),
        16: OnnxDtype("BFLOAT16", 16, "BF16"),
        17: OnnxDtype("FLOAT8E4M3FN", 8, "F8_E4M3"),
        18: OnnxDtype("FLOAT8E4M3FNUZ", 8, "F8_E4M3FNUZ"),
        19: OnnxDtype("FLOAT8E5M2", 8, "F8_E5M2"),
        20: OnnxDtype("FLOAT8E5M2FNUZ", 8, "F8_E5M2FNUZ"),
        21: OnnxDtype("UINT4", 4, "UINT4"),
        22: OnnxDtype("INT4", 4, "INT4"),
        23: OnnxDtype("FLOAT4E2M1", 4, "F4"),
        24: OnnxDtype("FLOAT8E8M0", 8, "F8_E8M0"),
        25: OnnxDtype("UINT2", 2, "UINT2"),
        26: OnnxDtype("INT2", 2, "INT2"),
        27: OnnxDtype("FLOAT6E2M3", 6, "FLOAT6E2M3"),
        28: OnnxDtype("FLOAT6E3M2", 6, "FLOAT6E3M2"),
    }
)
"""Every ``TensorProto.DataType`` of onnx 1.23, by number."""

_FLOAT_TYPES: Final = frozenset({1, 10, 11, 14, 15, 16, 17, 18, 19, 20, 23, 24, 27, 28})
_UNCHECKED: Final = "onnx.unchecked"
_LIST_LIMIT: Final = 20
_HEAD_BYTES: Final = 4096
_MAX_DEPTH: Final = 128  # nested messages; protobuf's own parser stops at 100
_DECIMAL: Final = re.compile(r"[0-9]+")
_DRIVE: Final = re.compile(r"^[A-Za-z]:")

# protobuf wire types
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
# ModelProto fields (onnx.proto) and their wire types.
_MODEL_FIELDS: Final = MappingProxyType(
    {
        1: _VARINT,
        2: _LEN,
        3: _LEN,
        4: _LEN,
        5: _VARINT,
        6: _LEN,
        7: _LEN,
        8: _LEN,
        14: _LEN,
        20: _LEN,
        25: _LEN,
        26: _LEN,
    }
)

_INSTALL: Final = "pip install 'vcache[onnx]'"


# --------------------------------------------------------------------------------------------------------
# Recognition.


def looks_like_onnx(head: bytes, name: str) -> bool:
    """Whether ``head`` (the first bytes of a file, a few KiB) starts like an ONNX ``ModelProto``.

    Content alone: field 1 (``ir_version``, tag ``0x08``) in 1..:data:`MAX_IR_VERSION` first, then at least
    one more field, every field read being a known ``ModelProto`` field with its wire type. With a ``.onnx``
    ``name`` any non-empty sequence of such fields will do. See the module docstring for why.
    """
    fields = _head_fields(bytes(head[:_HEAD_BYTES]))
    if fields is None or not fields:
        return False
    number, value = fields[0]
    if number == 1 and 1 <= value <= MAX_IR_VERSION and len(fields) >= 2:
        return True
    return name.lower().endswith(".onnx")


def _head_fields(head: bytes) -> list[tuple[int, int]] | None:
    """The top-level ``(field, varint value or 0)`` pairs that fit in ``head``; None when one is not a known
    ``ModelProto`` field with its wire type. A length-delimited field running past ``head`` ends the list."""
    out: list[tuple[int, int]] = []
    pos, end = 0, len(head)
    try:
        while pos < end:
            key, pos = _varint(head, pos, end)
            number, wire = key >> 3, key & 7
            if _MODEL_FIELDS.get(number) != wire:
                return None
            if wire == _VARINT:
                value, pos = _varint(head, pos, end)
                out.append((number, value))
                continue
            length, pos = _varint(head, pos, end)
            out.append((number, 0))
            pos += length
    except _Truncated:  # a varint cut off by the end of the head
        return out
    except _Malformed:
        return None
    return out


# --------------------------------------------------------------------------------------------------------
# A small protobuf walk that finds every TensorProto and where its data bytes lie in the file.


class _Malformed(Exception):
    pass


class _Truncated(_Malformed):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Malformed("a varint longer than 10 bytes")
    raise _Truncated("a varint runs past the end of its message")


def _signed(value: int) -> int:
    """A varint read as protobuf int64 / int32 (two's complement on 64 bits)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class _TensorRecord:
    """One TensorProto as the walk saw it (byte ranges are absolute offsets in the model file)."""

    where: str
    index: int
    name: str = ""
    dims: list[int] = field(default_factory=list)
    data_type: int = 0
    raw: tuple[int, int] | None = None
    float_chunks: list[tuple[int, int]] = field(default_factory=list)
    double_chunks: list[tuple[int, int]] = field(default_factory=list)
    unpacked_values: bool = False
    int32_data: bool = False
    external: list[tuple[str, str]] = field(default_factory=list)
    data_location: int = 0

    @property
    def label(self) -> str:
        return f"{self.where} '{self.name}'" if self.name else f"unnamed {self.where} #{self.index}"


class _Walk:
    """Follows only the fields that can hold tensors; skips everything else by its length."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.tensors: list[_TensorRecord] = []

    def fields(self, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """``(field, wire type, a, b)``: a varint's value in ``a``, other payloads as the range ``[a, b)``."""
        buf = self.buf
        while pos < end:
            key, pos = _varint(buf, pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _Malformed("field number 0")
            if wire == _VARINT:
                value, pos = _varint(buf, pos, end)
                yield number, wire, value, pos
            elif wire in (_I64, _I32):
                size = 8 if wire == _I64 else 4
                if size > end - pos:
                    raise _Malformed("a fixed-size field runs past the end of its message")
                yield number, wire, pos, pos + size
                pos += size
            elif wire == _LEN:
                length, pos = _varint(buf, pos, end)
                if length > end - pos:
                    raise _Malformed("a length-delimited field runs past the end of its message")
                yield number, wire, pos, pos + length
                pos += length
            elif wire == _SGROUP:
                pos = self._skip_group(number, pos, end)
            else:
                raise _Malformed(f"wire type {wire}")

    def _skip_group(self, number: int, pos: int, end: int) -> int:
        open_groups = [number]
        buf = self.buf
        while open_groups:
            key, pos = _varint(buf, pos, end)
            n, wire = key >> 3, key & 7
            if wire == _VARINT:
                _, pos = _varint(buf, pos, end)
            elif wire in (_I64, _I32):
                pos += 8 if wire == _I64 else 4
            elif wire == _LEN:
                length, pos = _varint(buf, pos, end)
                pos += length
            elif wire == _SGROUP:
                open_groups.append(n)
                if len(open_groups) > _MAX_DEPTH:
                    raise _Malformed("groups nested too deep")
            elif wire == _EGROUP and n == open_groups[-1]:
                open_groups.pop()
            else:
                raise _Malformed("an unbalanced group")
            if pos > end:
                raise _Malformed("a group runs past the end of its message")
        return pos

    def model(self) -> None:
        for number, wire, a, b in self.fields(0, len(self.buf)):
            if wire != _LEN:
                continue
            if number == 7:
                self.graph(a, b, 1)
            elif number == 25:
                self.function(a, b, 1)
            elif number == 20:  # TrainingInfoProto: initialization (1) and algorithm (2) graphs
                for n, w, x, y in self.fields(a, b):
                    if w == _LEN and n in (1, 2):
                        self.graph(x, y, 2)

    def graph(self, a: int, b: int, depth: int) -> None:
        self._deeper(depth)
        for number, wire, x, y in self.fields(a, b):
            if wire != _LEN:
                continue
            if number == 1:
                self.node(x, y, depth + 1)
            elif number == 5:
                self.tensor(x, y, "initializer")
            elif number == 15:
                self.sparse(x, y, "sparse initializer")

    def function(self, a: int, b: int, depth: int) -> None:
        self._deeper(depth)
        for number, wire, x, y in self.fields(a, b):
            if wire == _LEN and number == 7:
                self.node(x, y, depth + 1)
            elif wire == _LEN and number == 11:
                self.attribute(x, y, depth + 1)

    def node(self, a: int, b: int, depth: int) -> None:
        for number, wire, x, y in self.fields(a, b):
            if wire == _LEN and number == 5:
                self.attribute(x, y, depth + 1)

    def attribute(self, a: int, b: int, depth: int) -> None:
        self._deeper(depth)
        for number, wire, x, y in self.fields(a, b):
            if wire != _LEN:
                continue
            if number in (5, 10):
                self.tensor(x, y, "attribute tensor")
            elif number in (6, 11):
                self.graph(x, y, depth + 1)
            elif number in (22, 23):
                self.sparse(x, y, "sparse attribute tensor")

    def sparse(self, a: int, b: int, where: str) -> None:
        for number, wire, x, y in self.fields(a, b):
            if wire == _LEN and number == 1:
                self.tensor(x, y, f"{where} (values)")
            elif wire == _LEN and number == 2:
                self.tensor(x, y, f"{where} (indices)")

    def tensor(self, a: int, b: int, where: str) -> None:
        t = _TensorRecord(where, len(self.tensors))
        for number, wire, x, y in self.fields(a, b):
            if number == 1 and wire == _VARINT:
                t.dims.append(_signed(x))
            elif number == 1 and wire == _LEN:  # packed dims
                pos = x
                while pos < y:
                    value, pos = _varint(self.buf, pos, y)
                    t.dims.append(_signed(value))
            elif number == 2 and wire == _VARINT:
                t.data_type = _signed(x)
            elif number == 9 and wire == _LEN:
                t.raw = (x, y - x)  # a singular field: the last one wins
            elif number == 4 and wire == _LEN:
                t.float_chunks.append((x, y - x))
            elif number == 10 and wire == _LEN:
                t.double_chunks.append((x, y - x))
            elif (number == 4 and wire == _I32) or (number == 10 and wire == _I64):
                t.unpacked_values = True
            elif number == 5:
                t.int32_data = True
            elif number == 8 and wire == _LEN:
                t.name = self.buf[x:y].decode("utf-8", "replace")
            elif number == 13 and wire == _LEN:
                t.external.append(self.entry(x, y))
            elif number == 14 and wire == _VARINT:
                t.data_location = _signed(x)
        self.tensors.append(t)

    def entry(self, a: int, b: int) -> tuple[str, str]:
        key = value = ""
        for number, wire, x, y in self.fields(a, b):
            if wire == _LEN and number in (1, 2):
                text = self.buf[x:y].decode("utf-8", "replace")
                key, value = (text, value) if number == 1 else (key, text)
        return key, value

    @staticmethod
    def _deeper(depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _Malformed(f"messages nested more than {_MAX_DEPTH} deep")


# --------------------------------------------------------------------------------------------------------
# The check.


@dataclass
class _Plan:
    """The byte ranges of one file the content scan reads, and how its findings name the file."""

    path: Path
    location: str | None  # None: the model file itself
    tensors: list[TensorEntry] = field(default_factory=list)


def check_onnx(
    path: str | Path, *, root: str | Path, vouched: bool, name: str | None = None
) -> tuple[list[Finding], tuple[str, ...]]:
    """Check the ONNX model at ``path``, inside the snapshot (or local folder) ``root``.

    Returns the findings and the checks that ran, from ``"sniff"`` (the first bytes), ``"structure"``
    (the reference parse, every tensor's size and every external-data reference) and ``"content"`` (the
    values of every tensor, inline and external). Without the ``onnx`` package only ``"sniff"`` runs and an
    ``onnx.unchecked`` info finding says so. ``vouched`` says whether publisher digests matched the model
    and its data files (zero-fill damage then only warns). External-data locations are resolved against
    ``path``'s directory as named (not through a symlink) and must stay inside ``root``; see the module
    docstring for the exact rule. ``name`` is the model's path under ``root`` when its bytes are read from
    elsewhere (a download not yet published, a cache blob): references then resolve as if the model were at
    ``root/name``. Raises ``ValueError`` only when ``path`` is not under ``root`` and no ``name`` is given,
    or ``name`` is not a relative path inside ``root``; never raises on a bad or unreadable file.
    """
    model = Path(os.path.abspath(path))
    top = Path(os.path.abspath(root))
    if name is not None:
        relative = posixpath.normpath(name)
        if not name or relative.startswith(("/", "../")) or relative in (".", ".."):
            raise ValueError(f"{name!r} is not a path inside {root}")
    else:
        try:
            relative = model.relative_to(top).as_posix()
        except ValueError:
            raise ValueError(f"{path} is not inside {root}") from None
    check = _Check(model, top, relative, vouched)
    try:
        check.run()
    except Exception as exc:  # the guard: a bug here must not take the caller down
        check.findings.append(
            fail(
                "onnx.internal_error",
                f"{check.label}: vcache's ONNX check failed unexpectedly ({type(exc).__name__}: {exc}); "
                "the file was not fully checked. Please report this.",
                error=f"{type(exc).__name__}: {exc}",
            )
        )
    return check.findings, tuple(check.checks)


class _Check:
    def __init__(self, model: Path, root: Path, label: str, vouched: bool) -> None:
        self.model = model
        self.root = root
        self.label = label
        self.vouched = vouched
        self.findings: list[Finding] = []
        self.checks: list[str] = []
        self.plans: dict[str, _Plan] = {}
        self.unscanned: list[str] = []

    def run(self) -> None:
        head_and_size = self._head()
        if head_and_size is None:
            return
        head, size = head_and_size
        self.checks.append("sniff")
        if not looks_like_onnx(head, posixpath.basename(self.label)):
            self.findings.append(
                fail(
                    "onnx.not_onnx",
                    f"{self.label}: the file does not start like an ONNX model (a ModelProto begins with "
                    f"ir_version, byte 0x08; it starts with {head[:16].hex(' ')!r}). It is damaged or another "
                    "kind of file; re-download it.",
                    head=head[:16].hex(),
                )
            )
            return
        try:
            import onnx
        except ImportError:
            self.findings.append(
                info(
                    _UNCHECKED,
                    f"{self.label}: recognised as an ONNX model, but its structure, external-data references "
                    "and tensor values were not checked: the optional onnx package is not installed. "
                    f"Install it with {_INSTALL} and verify again.",
                    unchecked=["structure", "content"],
                    install=_INSTALL,
                )
            )
            return
        self.checks.append("structure")
        if size > MAX_MODEL_BYTES:
            self.findings.append(
                fail(
                    "onnx.too_large",
                    f"{self.label}: {size} bytes, over protobuf's 2 GiB limit for one message, so no ONNX "
                    "reader can parse it (models this big keep their weights in external data files). "
                    "The file is damaged or not an ONNX model; re-download it.",
                    size=size,
                    limit=MAX_MODEL_BYTES,
                )
            )
            return
        data = self._read_all()
        if data is None:
            return
        try:
            parsed = onnx.load_model_from_string(data)
        except Exception as exc:  # DecodeError, or whatever else the reader raises on bad bytes
            self.findings.append(
                fail(
                    "onnx.invalid_protobuf",
                    f"{self.label}: the onnx reader cannot parse the file ({type(exc).__name__}: {exc}); "
                    "it is truncated or corrupt. Re-download it.",
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
            return
        has_graph = parsed.HasField("graph")
        del parsed
        if not has_graph:
            self.findings.append(
                fail(
                    "onnx.no_graph",
                    f"{self.label}: the file parses as an ONNX ModelProto but holds no graph, so there is "
                    "no model to run. It is damaged or not an ONNX model; re-download it.",
                )
            )
            return
        walk = _Walk(data)
        try:
            walk.model()
        except _Malformed as exc:
            self.findings.append(
                fail(
                    "onnx.invalid_protobuf",
                    f"{self.label}: the file's protobuf encoding is malformed ({exc}); it is corrupt. "
                    "Re-download it.",
                    error=str(exc),
                )
            )
            return
        tensors = walk.tensors
        del walk, data
        for t in tensors:
            self._tensor(t)
        if self.unscanned:
            self.findings.append(
                info(
                    "onnx.content_unchecked",
                    f"{self.label}: {len(self.unscanned)} float tensor(s) store their values in fields the "
                    "content scan cannot read in place (int32_data varints, unpacked or split float_data); "
                    f"their values were not checked: {', '.join(self.unscanned[:_LIST_LIMIT])}"
                    + (" …" if len(self.unscanned) > _LIST_LIMIT else "")
                    + ".",
                    tensors=self.unscanned[:_LIST_LIMIT],
                    count=len(self.unscanned),
                )
            )
        self._scan()

    # ---- reading the model file

    def _head(self) -> tuple[bytes, int] | None:
        try:
            st = os.stat(self.model)
            if not stat.S_ISREG(st.st_mode):
                self.findings.append(
                    fail(
                        "onnx.unreadable",
                        f"{self.label}: not a regular file, so it cannot be an ONNX model; re-download it.",
                    )
                )
                return None
            with open(self.model, "rb") as fh:
                return fh.read(_HEAD_BYTES), os.fstat(fh.fileno()).st_size
        except OSError as exc:
            self._unreadable(exc)
            return None

    def _read_all(self) -> bytes | None:
        try:
            with open(self.model, "rb") as fh:
                data = fh.read(MAX_MODEL_BYTES + 1)
        except (OSError, MemoryError) as exc:
            self._unreadable(exc)
            return None
        if len(data) > MAX_MODEL_BYTES:  # it grew since the stat
            self.findings.append(
                fail(
                    "onnx.too_large",
                    f"{self.label}: over protobuf's 2 GiB limit for one message; no ONNX reader can parse it.",
                    limit=MAX_MODEL_BYTES,
                )
            )
            return None
        return data

    def _unreadable(self, exc: BaseException) -> None:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        self.findings.append(
            fail(
                "onnx.unreadable",
                f"{self.label}: cannot read the file ({reason}); check the path and permissions.",
                error=reason,
            )
        )

    # ---- one tensor

    def _tensor(self, t: _TensorRecord) -> None:
        if any(d < 0 for d in t.dims):
            self.findings.append(
                fail(
                    "onnx.invalid_tensor",
                    f"{self.label}: {t.label} has a negative dimension {t.dims}; no reader can load it. "
                    "The file is corrupt; re-download it.",
                    tensor=t.name,
                    dims=t.dims,
                )
            )
            return
        dtype = ONNX_DTYPES.get(t.data_type)
        external = t.data_location == 1 or bool(t.external)
        if dtype is None and (external or t.raw is not None):
            self.findings.append(
                warn(
                    "onnx.unknown_dtype",
                    f"{self.label}: {t.label} has data_type {t.data_type}, which vcache does not know (a newer "
                    "ONNX type, or damage): its size was not checked and its values were not scanned.",
                    tensor=t.name,
                    data_type=t.data_type,
                )
            )
        numel = math.prod(t.dims)
        need = None if dtype is None or dtype.bits is None else (numel * dtype.bits + 7) // 8
        if external:
            self._external(t, dtype, need)
        if t.data_location == 1:
            return  # the readers ignore raw_data then
        if t.raw is not None:
            self._inline(t, dtype, need, t.raw, "raw_data", dtype.scan_dtype if dtype else None)
        elif t.float_chunks or t.double_chunks or t.unpacked_values or t.int32_data:
            self._typed(t, dtype, numel)

    def _inline(
        self,
        t: _TensorRecord,
        dtype: OnnxDtype | None,
        need: int | None,
        span: tuple[int, int],
        what: str,
        scan_dtype: str | None,
    ) -> None:
        offset, length = span
        if need is not None and length != need:
            self._size_mismatch(t, dtype, what, length, need)
            return
        if scan_dtype is not None and length:
            self._plan(self.model, None, t, scan_dtype, offset, length)

    def _typed(self, t: _TensorRecord, dtype: OnnxDtype | None, numel: int) -> None:
        """Values in typed fields: packed float_data / double_data in one chunk are scanned in place."""
        if t.data_type not in _FLOAT_TYPES:
            return  # integer typed fields: nothing the zero-fill rules would judge on small constants
        chunks = {1: t.float_chunks, 14: t.float_chunks, 11: t.double_chunks}.get(t.data_type)
        if chunks is None or len(chunks) != 1 or t.unpacked_values or t.int32_data:
            if numel:
                self.unscanned.append(t.label)
            return
        assert dtype is not None and dtype.bits is not None
        need = (numel * dtype.bits + 7) // 8
        field_name = "double_data" if t.data_type == 11 else "float_data"
        self._inline(t, dtype, need, chunks[0], field_name, dtype.scan_dtype)

    def _size_mismatch(
        self, t: _TensorRecord, dtype: OnnxDtype | None, what: str, have: int, need: int
    ) -> None:
        kind = dtype.name if dtype else str(t.data_type)
        self.findings.append(
            fail(
                "onnx.tensor_size_mismatch",
                f"{self.label}: {t.label} ({kind} {t.dims}) needs {need} bytes but its {what} holds {have}; "
                "readers refuse it or read the wrong bytes. The file is corrupt; re-download it.",
                tensor=t.name,
                dims=t.dims,
                data_type=kind,
                field=what,
                size=have,
                expected=need,
            )
        )

    # ---- external data

    def _external(self, t: _TensorRecord, dtype: OnnxDtype | None, need: int | None) -> None:
        values: dict[str, list[str]] = {}
        for key, value in t.external:
            values.setdefault(key, []).append(value)
        unknown = sorted(k for k in values if k not in EXTERNAL_DATA_KEYS)
        if unknown:
            self.findings.append(
                warn(
                    "onnx.external_unknown_key",
                    f"{self.label}: {t.label} has external-data key(s) {unknown[:_LIST_LIMIT]} that ONNX readers "
                    "ignore; they change nothing, but a correct writer does not produce them.",
                    tensor=t.name,
                    keys=unknown[:_LIST_LIMIT],
                )
            )
        problems: list[str] = []
        if t.data_location == 1 and not t.external:
            problems.append("data_location is EXTERNAL but there are no external_data entries")
        for key in ("location", "offset", "length"):
            if len(set(values.get(key, []))) > 1:
                problems.append(f"{key!r} is given {len(values[key])} times with different values")
        if t.external and "location" not in values:
            problems.append("no 'location' entry")
        numbers: dict[str, int] = {}
        for key in ("offset", "length"):
            if key in values:
                text = values[key][-1]
                if _DECIMAL.fullmatch(text) is None:
                    problems.append(f"{key} {text[:40]!r} is not a plain decimal integer")
                else:
                    numbers[key] = int(text)
        if problems:
            self.findings.append(
                fail(
                    "onnx.external_invalid",
                    f"{self.label}: {t.label} has malformed external-data entries: {'; '.join(problems)}. "
                    "Readers refuse it or disagree on what it means; the file is corrupt or crafted.",
                    tensor=t.name,
                    problems=problems,
                )
            )
        # Every location given is judged, even where readers ignore it (data_location not EXTERNAL), so a
        # crafted duplicate or a stray entry cannot hide behind a harmless one.
        target: Path | None = None
        for location in dict.fromkeys(values.get("location", [])):
            target = self._location(t, location)
        if problems or target is None or t.data_location != 1:
            return
        location = values["location"][-1]
        self._external_range(t, dtype, need, target, location, numbers)

    def _location(self, t: _TensorRecord, location: str) -> Path | None:
        """The file ``location`` names when it passes the path rules (module docstring), else None."""
        shown = location[:200]
        reason = None
        if not location:
            reason = "it is empty"
        elif "\x00" in location:
            reason = "it contains a NUL byte"
        elif "\\" in location:
            reason = "it contains a backslash (a path separator on Windows)"
        elif location.startswith("/"):
            reason = "it is an absolute path"
        elif _DRIVE.match(location):
            reason = "it starts with a drive letter"
        elif ".." in location.split("/"):
            reason = "it has a '..' component"
        if reason is not None:
            self.findings.append(
                fail(
                    "onnx.external_unsafe_path",
                    f"{self.label}: {t.label} points its external data at {shown!r}, which is refused because "
                    f"{reason}: it must be a relative path inside the repo. Loading this model with onnx or "
                    "onnxruntime could read any file on this machine (a known path-traversal attack); "
                    "do not load it.",
                    tensor=t.name,
                    location=shown,
                    reason=reason,
                )
            )
            return None
        found = self._resolve(location)
        if isinstance(found, Path):
            return found
        code, why = found
        if code == "onnx.external_outside":
            self._outside(t, location, why)
        else:
            self._missing(t, location, why)
        return None

    def _resolve(self, location: str) -> Path | tuple[str, str]:
        """Rules 2-4 for a location that passed rule 1: the file, or ``(finding code, why)``."""
        logical = posixpath.normpath(posixpath.join(posixpath.dirname(self.label), location))
        parts = logical.split("/")
        current = self.root
        for part in parts[:-1]:
            current = current / part
            shown = current.relative_to(self.root).as_posix()
            try:
                st = os.lstat(current)
            except OSError:
                return "onnx.external_missing", f"directory '{shown}' does not exist"
            if stat.S_ISLNK(st.st_mode):
                return "onnx.external_outside", f"'{shown}' is a symlinked directory"
            if not stat.S_ISDIR(st.st_mode):
                return "onnx.external_missing", f"'{shown}' is not a directory"
        target = current / parts[-1]
        try:
            st = os.lstat(target)
        except OSError:
            return "onnx.external_missing", "the file does not exist"
        if stat.S_ISLNK(st.st_mode):
            real = Path(os.path.realpath(target))
            if not any(real.is_relative_to(allowed) for allowed in self._allowed_targets()):
                return "onnx.external_outside", f"it is a symlink to {str(real)[:200]!r}"
            try:
                st = os.stat(target)
            except OSError:
                return "onnx.external_missing", "it is a dangling symlink"
        if not stat.S_ISREG(st.st_mode):
            return "onnx.external_missing", "it is not a regular file"
        return target

    def _allowed_targets(self) -> list[Path]:
        real_root = Path(os.path.realpath(self.root))
        allowed = [real_root]
        # A Hugging Face cache snapshot: its files are symlinks to ../../blobs/<hash>.
        if self.root.parent.name == "snapshots":
            allowed.append(Path(os.path.realpath(self.root.parent.parent / "blobs")))
        return allowed

    def _missing(self, t: _TensorRecord, location: str, why: str) -> None:
        self.findings.append(
            fail(
                "onnx.external_missing",
                f"{self.label}: {t.label} keeps its data in {location[:200]!r}, but {why}. The model cannot "
                "load without it: download the whole repo (the data file is a separate file), or "
                "re-download it.",
                tensor=t.name,
                location=location[:200],
                reason=why,
            )
        )

    def _outside(self, t: _TensorRecord, location: str, why: str) -> None:
        self.findings.append(
            fail(
                "onnx.external_outside",
                f"{self.label}: {t.label} keeps its data in {location[:200]!r}, which leads out of the "
                f"repo: {why}. A reader would load bytes from outside the downloaded files; do not load "
                "this model from here.",
                tensor=t.name,
                location=location[:200],
                reason=why,
            )
        )

    def _external_range(
        self,
        t: _TensorRecord,
        dtype: OnnxDtype | None,
        need: int | None,
        target: Path,
        location: str,
        numbers: Mapping[str, int],
    ) -> None:
        try:
            size = os.stat(target).st_size
        except OSError as exc:
            self._missing(t, location, f"it cannot be read ({exc.strerror or exc})")
            return
        offset = numbers.get("offset", 0)
        length = numbers.get("length")
        end = offset + (length if length is not None else max(0, size - offset))
        if offset > size or end > size:
            span = f"bytes {offset}-{end}" if length is not None else f"offset {offset}"
            self.findings.append(
                fail(
                    "onnx.external_out_of_bounds",
                    f"{self.label}: {t.label} reads {span} of {location[:200]!r}, which has only {size} bytes; "
                    "the data file is truncated or the model is corrupt. Re-download both.",
                    tensor=t.name,
                    location=location[:200],
                    offset=offset,
                    length=length,
                    file_size=size,
                )
            )
            return
        have = end - offset
        if need is not None and have != need:
            what = f"external range ({location[:200]!r}" + (
                ", to the end of the file)" if length is None else ")"
            )
            self._size_mismatch(t, dtype, what, have, need)
            return
        if dtype is not None and dtype.bits is not None and have:
            self._plan(target, location, t, dtype.scan_dtype, offset, have)

    # ---- content

    def _plan(
        self, file: Path, location: str | None, t: _TensorRecord, scan_dtype: str, offset: int, n: int
    ) -> None:
        key = os.path.realpath(file)
        plan = self.plans.setdefault(key, _Plan(file, location))
        name = t.name or f"<{t.label}>"
        plan.tensors.append(TensorEntry(name, scan_dtype, tuple(t.dims), offset, offset + n))

    def _scan(self) -> None:
        self.checks.append("content")
        for plan in self.plans.values():
            try:
                size = os.stat(plan.path).st_size
            except OSError:
                size = 0
            # header_len -8 puts the "data section" at byte 0, so the entries' offsets are absolute.
            header = SafetensorsHeader(
                header_len=-8, tensors=tuple(plan.tensors), metadata=None, file_size=size
            )
            found = scan_tensors(plan.path, header, vouched=self.vouched)
            if plan.location is None:
                self.findings.extend(found)
                continue
            for f in found:
                detail = {**(f.detail or {}), "file": plan.location}
                message = f"external data file {plan.location!r} of {self.label}: {f.message}"
                self.findings.append(replace(f, message=message, detail=detail))
