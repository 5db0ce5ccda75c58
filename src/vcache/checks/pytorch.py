"""PyTorch checkpoints, TorchScript archives and plain pickles: format, layout, storages and content.

This module owns the verdict on a file that ``torch.save``, ``torch.jit.save`` or ``pickle.dump`` wrote, whatever
its name (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``...). :func:`check_pytorch` recognises the format by
content, then checks:

- the zip structure: member names, local headers, overlaps, compression ratios, and the CRC-32 of every member;
- the pickles, walked by ``checks/pickles.py`` without running them: every import must be one
  ``torch.load(weights_only=True)`` accepts (or one the caller allows);
- the storages the pickle references (persistent ids ``('storage', <type>, key, location, numel)``): each must
  exist (``<archive>/data/<key>``, or in the legacy file's storage section) at the byte size its dtype and
  element count need, and every tensor view must lie inside its storage;
- the content of every storage of a dtype with bit rules, with the scan of ``checks/tensors.py`` (NaN, Inf,
  zero-fill damage), fed in the same sequential pass that computes the CRCs.

It never executes or imports what a pickle names, never imports torch, never extracts a member to disk, never
allocates by a size the file claims (members are streamed in chunks, decompression stops at the declared size,
and ratios past :data:`MAX_COMPRESSION_RATIO` are not inflated), never modifies the file, and never raises on
bad input: every problem is a :class:`~vcache.report.Finding`.

=============================  ========  ========================================================================
code                           severity  when
=============================  ========  ========================================================================
``zip.invalid``                fail      a zip whose central directory cannot be read (truncated, damaged)
``zip.unsafe_name``            fail      a member name with a ``..`` component, an absolute path, or a NUL
``zip.duplicate_name``         fail      two members with the same name (which one loads depends on the reader)
``zip.bad_member``             fail      a damaged or unreadable local header, data past the central directory,
                                         encryption, or a compression method torch cannot read
``zip.overlap``                fail      two members share bytes (the construction of overlapping zip bombs)
``zip.bomb``                   fail      a member that claims to inflate over :data:`MAX_COMPRESSION_RATIO` times
                                         its size (not inflated, so its CRC is not checked)
``zip.crc_mismatch``           fail      a member's bytes do not match the CRC-32 in the central directory
``pytorch.layout``             fail      an archive or legacy file torch.load refuses: no ``data.pkl``, first
                                         member not in a folder, a bad ``byteorder`` record, a wrong magic
                                         number/protocol version, a malformed storage key list
``pytorch.bad_persistent_id``  fail      a persistent id torch's loader refuses, or two that disagree on a key
``pytorch.missing_storage``    fail      a storage the pickle references is not in the file
``pytorch.storage_size``       fail      a storage's bytes differ from element count x element size
``pytorch.tensor_bounds``      fail      a tensor's offset, sizes or strides reach outside its storage, or are
                                         not non-negative integers
``pytorch.truncated``          fail      a legacy file that ends inside its storage section
``pytorch.trailing_data``      warn      bytes after the last storage of a legacy file
``pytorch.not_scanned``        info      storages whose values were not scanned (compressed, big-endian, or a
                                         dtype without bit rules)
``torchscript.code``           warn      a TorchScript archive: it carries code that runs when it is loaded
``torchscript.imports``        info      the globals a TorchScript archive's pickles name (resolved by the
                                         TorchScript loader, not imported as Python)
``pytorch.unreadable``         fail      the file cannot be opened or read
``pytorch.internal_error``     fail      a bug in this module (the guard that keeps it from raising)
=============================  ========  ========================================================================

Pickle findings (``pickle.*``) come from ``checks/pickles.py``; content findings (``tensor.*``) from
``checks/tensors.py``, with the same zero-fill policy (``vouched``).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

from vcache.checks.pickles import (
    Call,
    Global,
    Opaque,
    PersistentRef,
    PickleDict,
    PickleSet,
    PickleWalk,
    import_findings,
    walk_pickle,
)
from vcache.checks.safetensors import DTYPE_BITS, SafetensorsHeader, TensorEntry
from vcache.checks.sniff import _plausible_safetensors
from vcache.checks.tensors import TensorStream, scan_tensors
from vcache.report import Finding, fail, info, warn

__all__ = [
    "FORMATS",
    "LEGACY_MAGIC_NUMBER",
    "LEGACY_PROTOCOL_VERSION",
    "MAX_COMPRESSION_RATIO",
    "MAX_PICKLE_BYTES",
    "check_pytorch",
    "sniff_format",
]

#: What :func:`check_pytorch` and :func:`sniff_format` report: ``other`` is anything else.
FORMATS: Final = ("pytorch-zip", "pytorch-legacy", "torchscript", "pickle", "other")

LEGACY_MAGIC_NUMBER: Final = 0x1950A86A20F9469CFC6C
"""The first pickle of a legacy (non-zip) ``torch.save`` file."""

LEGACY_PROTOCOL_VERSION: Final = 1001
"""The second pickle of a legacy ``torch.save`` file."""

MAX_COMPRESSION_RATIO: Final = 200
"""A deflated member declaring more than this many times its compressed size (and over 64 MiB) is a zip bomb."""

MAX_PICKLE_BYTES: Final = 256 << 20
"""Pickle members larger than this are not walked (``pickle.too_large``); a state dict's is a few MiB at most."""

_CHUNK: Final = 16 << 20
_HEAD: Final = 4096
_BOMB_MIN_BYTES: Final = 64 << 20
_LIST_LIMIT: Final = 50
_ZIP_STARTS: Final = (b"PK\x03\x04", b"PK\x05\x06")
_LOCAL_HEADER: Final = struct.Struct("<4s2B4HL2L2H")
# First bytes of protocol 0/1 pickles: MARK, GLOBAL, EMPTY_LIST, EMPTY_DICT, EMPTY_TUPLE, INST, NONE.
_TEXT_PICKLE_OPENERS: Final = frozenset(b"(c]})iN")
_PROBE_OPCODES: Final = 16
_CODE_NAME: Final = re.compile(r"/code/")

# Storage classes (module ``torch`` or ``torch.cuda``): safetensors dtype name for the content scan (None: no
# bit rules) and element size. ``torch.storage.UntypedStorage`` holds bytes; its dtype comes from the tensor.
_STORAGE_TYPES: Final[Mapping[str, tuple[str | None, int]]] = {
    "DoubleStorage": ("F64", 8),
    "FloatStorage": ("F32", 4),
    "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2),
    "LongStorage": ("I64", 8),
    "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2),
    "CharStorage": ("I8", 1),
    "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
    "ComplexFloatStorage": ("C64", 8),
    "ComplexDoubleStorage": (None, 16),
    "QInt8Storage": (None, 1),
    "QUInt8Storage": (None, 1),
    "QInt32Storage": (None, 4),
    "QUInt4x2Storage": (None, 1),
    "QUInt2x4Storage": (None, 1),
}
_UNTYPED: Final = "torch.storage.UntypedStorage"

# torch dtypes (as ``_rebuild_tensor_v3`` names them): safetensors dtype name and element size in bytes.
_TENSOR_DTYPES: Final[Mapping[str, tuple[str | None, int]]] = {
    "torch.float64": ("F64", 8),
    "torch.float32": ("F32", 4),
    "torch.float16": ("F16", 2),
    "torch.bfloat16": ("BF16", 2),
    "torch.complex64": ("C64", 8),
    "torch.complex128": (None, 16),
    "torch.complex32": (None, 4),
    "torch.int64": ("I64", 8),
    "torch.int32": ("I32", 4),
    "torch.int16": ("I16", 2),
    "torch.int8": ("I8", 1),
    "torch.uint8": ("U8", 1),
    "torch.uint16": ("U16", 2),
    "torch.uint32": ("U32", 4),
    "torch.uint64": ("U64", 8),
    "torch.bool": ("BOOL", 1),
    "torch.float8_e5m2": ("F8_E5M2", 1),
    "torch.float8_e4m3fn": ("F8_E4M3", 1),
    "torch.float8_e5m2fnuz": ("F8_E5M2FNUZ", 1),
    "torch.float8_e4m3fnuz": ("F8_E4M3FNUZ", 1),
    "torch.float8_e8m0fnu": ("F8_E8M0", 1),
    "torch.float4_e2m1fn_x2": ("F4", 1),
    "torch.bits8": (None, 1),
    "torch.bits16": (None, 2),
    "torch.bits1x8": (None, 1),
    "torch.bits2x4": (None, 1),
    "torch.bits4x2": (None, 1),
}

_REBUILD_TENSOR: Final = frozenset(
    {
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_qtensor",
    }
)
_REBUILD_WRAPPER: Final = frozenset(
    {"torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"}
)
_REBUILD_FROM_TYPE: Final = "torch._tensor._rebuild_from_type_v2"
_MAX_TREE_NODES: Final = 5_000_000


# --------------------------------------------------------------------------------------------------------
# Entry points.


def sniff_format(path: str | os.PathLike[str]) -> str:
    """The format of the file at ``path``, from its content: one of :data:`FORMATS`.

    A zip is ``pytorch-zip`` or ``torchscript`` by its member names (``other`` for any other zip); a pickle
    whose first value is :data:`LEGACY_MAGIC_NUMBER` is ``pytorch-legacy``; another pickle is ``pickle``.
    Never raises: an unreadable file is ``other``.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEAD)
            if head.startswith(_ZIP_STARTS):
                try:
                    with zipfile.ZipFile(f) as zf:
                        return _classify_zip(zf.infolist()).format
                except Exception:
                    return _guess_broken_zip(head)
            return _classify_stream(f, head, size)
    except (OSError, ValueError):
        return "other"


def check_pytorch(
    path: str | os.PathLike[str], *, vouched: bool, allow_imports: Collection[str] = ()
) -> tuple[str, list[Finding], tuple[str, ...]]:
    """Check the PyTorch checkpoint, TorchScript archive or pickle at ``path``.

    Returns ``(format, findings, checks)``: the format recognised from the content (one of :data:`FORMATS`),
    the findings (module docstring; plus ``pickle.*`` and ``tensor.*``), and which checks ran, from
    ``sniff``, ``structure``, ``content`` and ``imports``. ``vouched`` says whether a publisher digest matched
    these bytes (zero-fill damage then warns instead of failing). ``allow_imports`` (``module.name`` entries)
    widens the allowlist of pickle globals for a user who trusts the file's publisher.

    Reads the file sequentially once for the CRCs and the content, plus the pickles and local headers; memory
    stays at one chunk plus the pickle's symbolic values. Never raises on a bad or unreadable file.
    """
    label = os.path.basename(os.fspath(path)) or os.fspath(path)
    job = _Job(os.fspath(path), label, vouched, frozenset(allow_imports))
    try:
        job.run()
    except Exception as exc:  # a bug here must become a finding, never an exception in the caller
        job.findings.append(
            fail(
                "pytorch.internal_error",
                f"{label}: the check itself failed ({type(exc).__name__}: {exc}); this is a vcache bug, please "
                "report it. The file was not verified: do not unpickle it unless you trust its publisher.",
                error=repr(exc),
            )
        )
    return (
        job.format,
        job.findings,
        tuple(c for c in ("sniff", "structure", "content", "imports") if c in job.ran),
    )


# --------------------------------------------------------------------------------------------------------
# Recognition.


@dataclass(frozen=True)
class _ZipKind:
    format: str
    prefix: str  # the archive folder, with its trailing slash ("" for a non-torch zip)
    problem: str | None = None  # why torch.load would refuse the layout


def _classify_zip(infos: list[zipfile.ZipInfo]) -> _ZipKind:
    """torch's reader takes the archive folder from the first member's name and finds records inside it."""
    names = {i.filename for i in infos}
    first = infos[0].filename if infos else ""
    folder, slash, _ = first.partition("/")
    prefix = folder + "/" if slash else ""
    if prefix and (f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names)):
        return _ZipKind("torchscript", prefix)
    if prefix and f"{prefix}data.pkl" in names:
        return _ZipKind("pytorch-zip", prefix)
    pickles = sorted(n for n in names if n.count("/") == 1 and n.endswith("/data.pkl"))
    if pickles:
        return _ZipKind(
            "pytorch-zip",
            pickles[0][: -len("data.pkl")],
            f"the first member, {first!r}, is not in the archive folder {pickles[0].split('/')[0]!r}, so "
            "torch.load looks for its records elsewhere and refuses the file",
        )
    records = {"version", "byteorder", ".format_version", ".data/serialization_id"}
    if prefix and (
        len({n[len(prefix) :] for n in names if n.startswith(prefix)} & records) >= 2
        or any(re.fullmatch(re.escape(prefix) + r"data/\d+", n) for n in names)
    ):
        return _ZipKind(
            "pytorch-zip", prefix, f"it has no {prefix}data.pkl, the pickle that describes the tensors"
        )
    return _ZipKind("other", "")


def _guess_broken_zip(head: bytes) -> str:
    """A zip whose central directory is unreadable: guess from the member names near the start."""
    if b"/constants.pkl" in head or b"/code/" in head:
        return "torchscript"
    if b"/data.pkl" in head or b"/data/" in head:
        return "pytorch-zip"
    return "other"


def _classify_stream(f: BinaryIO, head: bytes, size: int) -> str:
    """``pytorch-legacy``, ``pickle`` or ``other`` for a file that is not a zip (positioned anywhere)."""
    if _plausible_safetensors(head, size):  # a safetensors header length can begin with \x80\x02
        return "other"
    f.seek(0)
    first = walk_pickle(f, available=size, max_opcodes=_PROBE_OPCODES)
    if first.complete and type(first.root) is int and first.root == LEGACY_MAGIC_NUMBER:
        return "pytorch-legacy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head[:1] and head[0] in _TEXT_PICKLE_OPENERS:
        f.seek(0)
        if walk_pickle(f, available=size).complete:  # protocol 0/1: a pickle only if it reads as one
            return "pickle"
    return "other"


# --------------------------------------------------------------------------------------------------------
# Zip members.


@dataclass
class _Member:
    info: zipfile.ZipInfo
    data_offset: int | None = None  # None: the local header is unusable
    crc: int = 0

    @property
    def name(self) -> str:
        return self.info.filename

    @property
    def stored(self) -> bool:
        return self.info.compress_type == zipfile.ZIP_STORED

    @property
    def data_end(self) -> int:
        return (self.data_offset or 0) + self.info.compress_size


def _unsafe_name(raw: str) -> str | None:
    if "\0" in raw:
        return "holds a NUL character"
    if raw.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", raw):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", raw):
        return "has a '..' component"
    return None


# --------------------------------------------------------------------------------------------------------
# Storages and tensors, as the pickle declares them.


@dataclass(frozen=True)
class _View:
    name: str
    offset: Any
    size: Any
    stride: Any
    dtype: str | None  # the tensor's torch dtype name for _rebuild_tensor_v3, else None


@dataclass
class _Storage:
    key: str
    type_name: str
    numel: int
    dtype: str | None  # safetensors dtype for the content scan (None: no bit rules)
    itemsize: int
    views: list[_View] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


def _storage_type(value: Any) -> tuple[str, str | None, int] | None:
    if not isinstance(value, Global):
        return None
    if value.full == _UNTYPED:
        return value.full, None, 1
    if value.module in ("torch", "torch.cuda") and value.name in _STORAGE_TYPES:
        dtype, itemsize = _STORAGE_TYPES[value.name]
        return value.full, dtype, itemsize
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):  # Python 2 pickles loaded with encoding="bytes"
        return value.decode("ascii", "replace")
    return None


@dataclass
class _Declared:
    """The storages one pickle references, and what is wrong with its persistent ids."""

    storages: dict[str, _Storage] = field(default_factory=dict)
    bad_ids: list[str] = field(default_factory=list)
    bad_views: list[str] = field(default_factory=list)


def _declared_storages(walk: PickleWalk, *, legacy: bool) -> _Declared:
    """Storages keyed by storage key, from the persistent ids, with the tensor views that use them."""
    out = _Declared()
    arity = 6 if legacy else 5
    for ref in walk.persistent_ids:
        pid = ref.pid
        where = f"at byte {ref.offset}"
        if not (isinstance(pid, tuple) and len(pid) == arity and _text(pid[0]) == "storage"):
            out.bad_ids.append(f"{where}: not a ('storage', type, key, location, size) tuple ({_short(pid)})")
            continue
        kind, key, numel = _storage_type(pid[1]), _text(pid[2]), pid[4]
        if kind is None:
            out.bad_ids.append(f"{where}: {_short(pid[1])} is not a storage type torch knows")
            continue
        if key is None or type(numel) is not int or numel < 0:
            out.bad_ids.append(f"{where}: the key {_short(pid[2])} or the size {_short(numel)} is malformed")
            continue
        type_name, dtype, itemsize = kind
        old = out.storages.get(key)
        if old is None:
            out.storages[key] = _Storage(key, type_name, numel, dtype, itemsize)
        elif (old.type_name, old.numel) != (type_name, numel):
            out.bad_ids.append(
                f"{where}: storage {key!r} is declared as {old.type_name} of {old.numel} and as {type_name} "
                f"of {numel}"
            )
        # A legacy view (pid[5]) lies inside its root storage, so checking tensors against the root is sound.
    for name, call in _tensor_calls(walk.root):
        _attach_view(name, call, out)
    return out


def _attach_view(name: str, call: Call, out: _Declared) -> None:
    args = call.args if isinstance(call.args, tuple) else ()
    if len(args) < 4 or not isinstance(args[0], PersistentRef):
        return  # a tensor without storage (meta, wrapper subclass): nothing to check
    key = _text(args[0].pid[2]) if isinstance(args[0].pid, tuple) and len(args[0].pid) > 2 else None
    storage = out.storages.get(key) if key is not None else None
    if storage is None:
        return
    dtype = None
    if isinstance(call.func, Global) and call.func.name == "_rebuild_tensor_v3" and len(args) > 6:
        dtype = args[6].full if isinstance(args[6], Global) else _short(args[6])
    storage.views.append(_View(name, args[1], args[2], args[3], dtype))


def _tensor_calls(root: Any) -> list[tuple[str, Call]]:
    """Every tensor-rebuilding call in the object tree, with a dotted name (``model.layers.0.weight``)."""
    out: list[tuple[str, Call]] = []
    seen: set[int] = set()
    todo: list[tuple[Any, str]] = [(root, "")]
    budget = _MAX_TREE_NODES
    while todo and budget > 0:
        budget -= 1
        value, path = todo.pop()
        if isinstance(value, Call | PickleDict | PickleSet | list | tuple):
            if id(value) in seen:
                continue
            seen.add(id(value))
        children: list[tuple[Any, str]] = []
        if isinstance(value, Call):
            func = value.func.full if isinstance(value.func, Global) else None
            args = value.args if isinstance(value.args, tuple) else ()
            if func in _REBUILD_TENSOR:
                out.append((path, value))
                continue
            if func in _REBUILD_WRAPPER and args:
                todo.append((args[0], path))
                continue
            if func == _REBUILD_FROM_TYPE and len(args) >= 3:
                todo.append((Call(args[0], args[2], "REDUCE", value.offset), path))
                continue
            children.extend((v, _join(path, k)) for k, v in value.items)
            if value.state is not None:
                children.append((value.state, path))
            children.extend((v, path) for v in value.appended)
            if args:
                children.append((args, path))
        elif isinstance(value, PickleDict):
            children.extend((v, _join(path, k)) for k, v in value.items)
        elif isinstance(value, list | tuple):
            children.extend((v, _join(path, i) if len(value) > 1 else path) for i, v in enumerate(value))
        elif isinstance(value, PickleSet):
            children.extend((v, path) for v in value.items)
        todo.extend(reversed(children))
    return out


def _join(path: str, key: Any) -> str:
    part = key if isinstance(key, str) else str(key) if isinstance(key, int) else _short(key)
    return f"{path}.{part}" if path else part


def _short(value: Any) -> str:
    if isinstance(value, Global):
        return value.full
    if isinstance(value, Opaque):
        return f"<{value.kind}>"
    if isinstance(value, Call | PersistentRef | PickleDict | PickleSet):
        return f"<{type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _view_problem(view: _View, storage: _Storage) -> str | None:
    """Why ``view`` does not fit in ``storage`` (element counts in the tensor's dtype), or None."""
    itemsize = storage.itemsize
    if view.dtype is not None:
        known = _TENSOR_DTYPES.get(view.dtype)
        if known is None:
            return f"its dtype {view.dtype} is not one torch defines"
        itemsize = known[1]
    offset, size, stride = view.offset, view.size, view.stride
    ints = isinstance(size, tuple | list) and isinstance(stride, tuple | list)
    if not (ints and type(offset) is int and all(type(v) is int for v in (*size, *stride))):
        return f"offset {_short(offset)}, size {_short(size)}, stride {_short(stride)} are not integers"
    if len(size) != len(stride) or offset < 0 or min((*size, *stride), default=0) < 0:
        return f"offset {offset}, size {list(size)}, stride {list(stride)} are not a valid view"
    available = storage.nbytes // itemsize
    if 0 in size:
        return None
    needed = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if needed > available:
        return (
            f"offset {offset}, size {list(size)}, stride {list(stride)} need {needed:,} elements; the storage "
            f"holds {available:,}"
        )
    return None


def _content_entry(storage: _Storage, begin: int) -> TensorEntry | None:
    """The storage as one tensor for the content scan (``begin`` relative to the scan's base), or None when
    its dtype has no bit rules."""
    dtype = storage.dtype
    if storage.type_name == _UNTYPED:
        dtypes = {v.dtype for v in storage.views}
        only = dtypes.pop() if len(dtypes) == 1 else None
        known = _TENSOR_DTYPES.get(only) if only is not None else None
        dtype = known[0] if known else None
    if dtype is None or storage.nbytes == 0:
        return None
    elements = storage.nbytes * 8 // DTYPE_BITS[dtype]
    shape: tuple[int, ...] = (elements,)
    named = [v for v in storage.views if v.name]
    if len(storage.views) == 1 and _contiguous_whole(storage.views[0], elements):
        shape = tuple(storage.views[0].size)
    name = named[0].name if named else f"storage {storage.key}"
    return TensorEntry(name, dtype, shape, begin, begin + storage.nbytes)


def _contiguous_whole(view: _View, elements: int) -> bool:
    size, stride = view.size, view.stride
    if view.offset != 0 or not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        return False
    if not all(type(v) is int and v > 0 for v in size) or math.prod(size) != elements:
        return False
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=False):
        if s != expected and n != 1:
            return False
        expected *= n
    return True


# --------------------------------------------------------------------------------------------------------
# The check of one file.


class _Job:
    def __init__(self, path: str, label: str, vouched: bool, allow: frozenset[str]) -> None:
        self.path = path
        self.label = label
        self.vouched = vouched
        self.allow = allow
        self.format = "other"
        self.findings: list[Finding] = []
        self.ran: set[str] = set()
        self.storages_known = False  # every pickle was walked: the storage list is complete

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def run(self) -> None:
        try:
            st = os.stat(self.path)
            if not stat.S_ISREG(st.st_mode):
                self.add(fail("pytorch.unreadable", f"{self.label}: not a regular file; re-download it."))
                return
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(_HEAD)
                self.ran.add("sniff")
                if head.startswith(_ZIP_STARTS):
                    self._zip(f, head, size)
                    return
                self.format = _classify_stream(f, head, size)
                if self.format == "pytorch-legacy":
                    self._legacy(f, size)
                elif self.format == "pickle":
                    self._pickle(f, size)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
            reason = getattr(exc, "strerror", None) or str(exc)
            self.add(
                fail(
                    "pytorch.unreadable",
                    f"{self.label}: cannot read the file ({reason}); check the path and permissions, or "
                    "re-download it.",
                    error=reason,
                )
            )

    # -- provenance wording ------------------------------------------------------------------------------

    def _damage(self) -> str:
        if self.vouched:
            return (
                "The bytes match the publisher's digest, so the publisher shipped the file this way; "
                "downloading again cannot help."
            )
        return "This is transport or disk damage, or a tampered file: re-download it with vcache pull."

    # -- zip ---------------------------------------------------------------------------------------------

    def _zip(self, f: BinaryIO, head: bytes, size: int) -> None:
        self.ran.add("structure")
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except Exception as exc:  # zipfile raises many types on damaged input
            self.format = _guess_broken_zip(head)
            self.add(
                fail(
                    "zip.invalid",
                    f"{self.label}: the zip archive cannot be read ({exc}); the end of the file (the central "
                    "directory) is missing or damaged, as in a truncated download. torch.load refuses it. "
                    "Re-download it with vcache pull.",
                    error=str(exc),
                )
            )
            return
        with zf:
            infos = zf.infolist()
            kind = _classify_zip(infos)
            self.format = kind.format
            members = self._zip_members(f, infos, min(zf.start_dir, size))
        if kind.problem is not None:
            self.add(
                fail(
                    "pytorch.layout",
                    f"{self.label}: {kind.problem}. torch.load refuses it; the archive is damaged or was not "
                    "written by torch.save. Re-download it.",
                )
            )
        by_name = {m.name: m for m in members}
        storages: list[tuple[_Member, _Storage]] = []
        big_endian = False
        if kind.format in ("pytorch-zip", "torchscript"):
            storages, big_endian = self._torch_archive(f, kind, by_name)
        self._zip_pass(f, members, storages, big_endian, size)

    def _zip_members(self, f: BinaryIO, infos: list[zipfile.ZipInfo], start_dir: int) -> list[_Member]:
        members = [_Member(i) for i in infos]
        unsafe: list[str] = []
        seen: set[str] = set()
        dups: list[str] = []
        bad: list[tuple[str, str]] = []
        bombs: list[str] = []
        for m in members:
            raw = m.info.orig_filename
            why = _unsafe_name(raw)
            if why:
                unsafe.append(f"{raw!r} {why}")
            if m.name in seen:
                dups.append(m.name)
            seen.add(m.name)
            problem = self._local_header(f, m, start_dir)
            if problem:
                bad.append((m.name, problem))
            elif (
                not m.stored
                and m.info.file_size > _BOMB_MIN_BYTES
                and m.info.file_size > MAX_COMPRESSION_RATIO * max(1, m.info.compress_size)
            ):
                bombs.append(m.name)
        if unsafe:
            self.add(
                fail(
                    "zip.unsafe_name",
                    f"{self.label}: {len(unsafe)} member name(s) would write outside a folder they are "
                    f"extracted to: {'; '.join(unsafe[:_LIST_LIMIT])}. torch.save never writes such names; "
                    "do not extract this archive.",
                    members=unsafe[:_LIST_LIMIT],
                    count=len(unsafe),
                )
            )
        if dups:
            self.add(
                fail(
                    "zip.duplicate_name",
                    f"{self.label}: {len(dups)} member name(s) appear more than once ({', '.join(map(repr, dups[:_LIST_LIMIT]))}); "
                    "which copy a reader uses differs between readers, so the file is ambiguous or crafted. "
                    "Do not use it.",
                    members=dups[:_LIST_LIMIT],
                    count=len(dups),
                )
            )
        if bad:
            name, why = bad[0]
            self.add(
                fail(
                    "zip.bad_member",
                    f"{self.label}: member {name!r} {why}"
                    + (f" ({len(bad) - 1} more member(s) with problems)" if len(bad) > 1 else "")
                    + f". torch.load cannot read it. {self._damage()}",
                    members=[f"{n}: {w}" for n, w in bad[:_LIST_LIMIT]],
                    count=len(bad),
                )
            )
        if bombs:
            self.add(
                fail(
                    "zip.bomb",
                    f"{self.label}: {len(bombs)} member(s) claim to inflate to over {MAX_COMPRESSION_RATIO} "
                    f"times their compressed size ({', '.join(map(repr, bombs[:_LIST_LIMIT]))}); they were not "
                    "inflated, so their CRC was not checked. torch.save never compresses; do not extract this "
                    "archive.",
                    members=bombs[:_LIST_LIMIT],
                )
            )
            for m in members:
                if m.name in bombs:
                    m.data_offset = None
        self._overlaps(members)
        return members

    def _local_header(self, f: BinaryIO, m: _Member, start_dir: int) -> str | None:
        """Locate the member's data through its local header; why it is unusable, or None."""
        i = m.info
        if i.flag_bits & 0x1:
            return "is encrypted"
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            return f"uses compression method {i.compress_type}, which torch cannot read"
        f.seek(i.header_offset)
        header = f.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            return f"has no local header at byte {i.header_offset}"
        name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
        try:
            expected = i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437")
        except UnicodeEncodeError:
            expected = b""
        if f.read(name_len) != expected:
            return "has a local header that names a different file than the central directory"
        start = i.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if start + i.compress_size > start_dir:
            return (
                f"claims {i.compress_size:,} bytes from byte {start:,}, past the start of the central directory "
                f"at byte {start_dir:,}"
            )
        m.data_offset = start
        return None

    def _overlaps(self, members: list[_Member]) -> None:
        located = sorted(
            (m for m in members if m.data_offset is not None), key=lambda m: m.info.header_offset
        )
        pairs = [
            (a.name, b.name) for a, b in itertools.pairwise(located) if a.data_end > b.info.header_offset
        ]
        if pairs:
            self.add(
                fail(
                    "zip.overlap",
                    f"{self.label}: {len(pairs)} pair(s) of members share bytes, first {pairs[0][0]!r} and "
                    f"{pairs[0][1]!r}. No archiver writes this; it is how overlapping zip bombs are built. Do "
                    "not extract this archive.",
                    pairs=[list(p) for p in pairs[:_LIST_LIMIT]],
                )
            )

    def _member_bytes(self, f: BinaryIO, m: _Member, limit: int) -> bytes | str:
        """The member's uncompressed bytes (at most ``limit``), or why they cannot be had."""
        if m.data_offset is None:
            return "its local header is unusable"
        if m.info.file_size > limit:
            return f"{m.info.file_size:,} bytes, more than {limit:,}"
        if m.stored:
            f.seek(m.data_offset)
            data = f.read(m.info.compress_size)
            return data if len(data) == m.info.compress_size else "the file ends inside it"
        out = bytearray()
        problem = _inflate(f, m, out.extend)
        return problem if problem else bytes(out)

    def _torch_archive(
        self, f: BinaryIO, kind: _ZipKind, by_name: Mapping[str, _Member]
    ) -> tuple[list[tuple[_Member, _Storage]], bool]:
        """Walk the archive's pickles and check the storages they reference; the storages to scan."""
        prefix = kind.prefix
        if kind.format == "torchscript":
            pickles = sorted(
                n for n in by_name if n.startswith(prefix) and n.endswith((".pkl", ".debug_pkl"))
            )
        else:
            pickles = [f"{prefix}data.pkl"] if f"{prefix}data.pkl" in by_name else []
        walks: list[tuple[str, PickleWalk]] = []
        unread = False
        for name in pickles:
            pkl = by_name[name]
            if pkl.info.file_size > MAX_PICKLE_BYTES:
                walks.append((name, PickleWalk(too_large=f"{pkl.info.file_size:,} bytes of pickle")))
                continue
            data = self._member_bytes(f, pkl, MAX_PICKLE_BYTES)
            if isinstance(data, str):
                unread = True  # zip.bad_member / zip.bomb says why; its imports stay unchecked
                continue
            walks.append((name, walk_pickle(data)))
        self.storages_known = bool(walks) and not unread and all(w.complete for _, w in walks)
        if kind.format == "torchscript":
            self._torchscript(walks, by_name, prefix)
        else:
            self.findings.extend(import_findings(walks, allow_imports=self.allow, label=self.label))
            if self.storages_known:
                self.ran.add("imports")
        big_endian = self._byteorder(f, by_name.get(f"{prefix}byteorder"))
        found: list[tuple[_Member, _Storage]] = []
        for name, walk in walks:
            if not walk.complete or name.endswith(".debug_pkl"):
                continue
            folder = name[: -len(".pkl")] + "/"  # data.pkl -> data/, constants.pkl -> constants/
            declared = _declared_storages(walk, legacy=False)
            self._declared_findings(declared, name)
            for storage in declared.storages.values():
                member = by_name.get(folder + storage.key)
                if member is None:
                    self._missing(name, folder + storage.key, storage)
                elif member.info.file_size != storage.nbytes:
                    self._size(name, member.name, storage, member.info.file_size)
                else:
                    found.append((member, storage))
        return found, big_endian

    def _torchscript(
        self, walks: list[tuple[str, PickleWalk]], by_name: Mapping[str, _Member], prefix: str
    ) -> None:
        code = sorted(n for n in by_name if n.startswith(f"{prefix}code/") and n.endswith(".py"))
        self.add(
            warn(
                "torchscript.code",
                f"{self.label} is a TorchScript archive: it carries {len(code)} code file(s) (first "
                f"{code[0] if code else 'none'}) that torch.jit.load compiles and runs when it loads the model. "
                "Its weights were checked, its code was not: load it only if you trust the publisher.",
                code_files=code[:_LIST_LIMIT],
                count=len(code),
            )
        )
        imports = sorted({g.full for _, w in walks for g in w.imports})
        self.add(
            info(
                "torchscript.imports",
                f"{self.label}: its pickles name {len(imports)} global(s), resolved by the TorchScript loader "
                f"(not imported as Python): {', '.join(imports[:_LIST_LIMIT])}"
                + (f" and {len(imports) - _LIST_LIMIT} more" if len(imports) > _LIST_LIMIT else "")
                + ".",
                imports=imports,
                pickles=[name for name, _ in walks],
            )
        )
        for finding in import_findings(walks, label=self.label):
            if finding.code in ("pickle.invalid", "pickle.too_large"):
                self.add(finding)
        if self.storages_known:
            self.ran.add("imports")

    def _byteorder(self, f: BinaryIO, member: _Member | None) -> bool:
        """True when the archive declares big-endian storages (the content scan reads little-endian bits)."""
        if member is None:
            return False
        data = self._member_bytes(f, member, 64)
        if isinstance(data, str) or data not in (b"little", b"big"):
            self.add(
                fail(
                    "pytorch.layout",
                    f"{self.label}: the byteorder record holds {data if isinstance(data, str) else repr(data[:20])}, "
                    "not 'little' or 'big'; torch.load refuses the file ('Unknown endianness type'). Re-download it.",
                    member=member.name,
                )
            )
            return False
        return data == b"big"

    def _declared_findings(self, declared: _Declared, pickle_name: str) -> None:
        if declared.bad_ids:
            self.add(
                fail(
                    "pytorch.bad_persistent_id",
                    f"{self.label}: {pickle_name} references storages in {len(declared.bad_ids)} way(s) torch's "
                    f"loader refuses, first {declared.bad_ids[0]}. The checkpoint is damaged or was not written "
                    "by torch.save; re-download it.",
                    problems=declared.bad_ids[:_LIST_LIMIT],
                    count=len(declared.bad_ids),
                )
            )
        bad_views = [
            (v.name, problem, s.key)
            for s in declared.storages.values()
            for v in s.views
            if (problem := _view_problem(v, s)) is not None
        ]
        if bad_views:
            name, problem, key = bad_views[0]
            self.add(
                fail(
                    "pytorch.tensor_bounds",
                    f"{self.label}: tensor {name or '(unnamed)'!r} does not fit in storage {key!r}: {problem}"
                    + (f" ({len(bad_views) - 1} more tensor(s) like it)" if len(bad_views) > 1 else "")
                    + f". torch.load refuses it or reads memory it should not. {self._damage()}",
                    tensor=name or None,
                    tensors=[n for n, _, _ in bad_views[:_LIST_LIMIT]],
                    count=len(bad_views),
                )
            )

    def _tensor_names(self, storage: _Storage) -> str:
        names = [v.name for v in storage.views if v.name]
        return f" (tensor {names[0]!r})" if names else ""

    def _missing(self, pickle_name: str, where: str, storage: _Storage) -> None:
        self.add(
            fail(
                "pytorch.missing_storage",
                f"{self.label}: {pickle_name} references storage {storage.key!r}{self._tensor_names(storage)}, "
                f"but {where} is not in the file. torch.load fails on it (or, for legacy files, returns "
                f"uninitialised memory). {self._damage()}",
                storage=storage.key,
                tensor=next((v.name for v in storage.views if v.name), None),
                expected=where,
            )
        )

    def _size(self, pickle_name: str, where: str, storage: _Storage, actual: int) -> None:
        self.add(
            fail(
                "pytorch.storage_size",
                f"{self.label}: storage {storage.key!r}{self._tensor_names(storage)} is declared in {pickle_name} as "
                f"{storage.numel:,} x {storage.itemsize}-byte elements ({storage.type_name}), {storage.nbytes:,} "
                f"bytes, but {where} holds {actual:,} bytes. torch.load refuses it. {self._damage()}",
                storage=storage.key,
                tensor=next((v.name for v in storage.views if v.name), None),
                expected_bytes=storage.nbytes,
                actual_bytes=actual,
            )
        )

    def _zip_pass(
        self,
        f: BinaryIO,
        members: list[_Member],
        storages: list[tuple[_Member, _Storage]],
        big_endian: bool,
        size: int,
    ) -> None:
        """One sequential read of the archive: the CRC of every stored member and the content of every
        scannable storage; then deflated members are inflated (bounded) for their CRC."""
        located = [m for m in members if m.data_offset is not None]
        stored = sorted((m for m in located if m.stored), key=lambda m: m.data_offset or 0)
        ranges = [(m.data_offset or 0, s) for m, s in storages if m.stored and not big_endian]
        unscanned = [f"{s.key}: compressed member" for m, s in storages if not m.stored]
        unscanned += [f"{s.key}: big-endian" for m, s in storages if m.stored and big_endian]
        header, skipped = _content_header(ranges, size)
        unscanned += skipped
        stream: TensorStream | None = None
        if header is not None:
            try:
                stream = TensorStream(header, vouched=self.vouched)
            except ValueError:
                stream = None
        end = max((m.data_end for m in stored), default=0)
        if header is not None:
            end = max(end, header.data_start + max(t.end for t in header.tensors))
        short = _read_pass(f, stored, end, stream)
        bad_crc = [m.name for m in stored if m.crc != m.info.CRC]
        for m in located:
            if not m.stored:
                crc = 0

                def update(data: bytes) -> None:
                    nonlocal crc
                    crc = zlib.crc32(data, crc)

                problem = _inflate(f, m, update)
                if problem or crc != m.info.CRC:
                    bad_crc.append(m.name + (f" ({problem})" if problem else ""))
        if short:
            self.add(
                fail(
                    "zip.bad_member",
                    f"{self.label}: the file ended at byte {short:,} while it was read; it changed during the "
                    "check. Check it again once nothing writes to it.",
                )
            )
        if bad_crc:
            self.add(
                fail(
                    "zip.crc_mismatch",
                    f"{self.label}: {len(bad_crc)} member(s) fail their CRC-32 check, first {bad_crc[0]!r}: the "
                    f"bytes changed after the archive was written. {self._damage()}",
                    members=bad_crc[:_LIST_LIMIT],
                    count=len(bad_crc),
                )
            )
        if header is not None:
            if stream is not None and stream.complete:
                self.findings.extend(stream.finish(self.path))
            else:
                self.findings.extend(scan_tensors(self.path, header, vouched=self.vouched))
            self.ran.add("content")
        elif self.storages_known and not unscanned:
            self.ran.add("content")  # the pickles declare no storage with bytes to scan
        self._not_scanned(unscanned)

    def _not_scanned(self, unscanned: list[str]) -> None:
        if unscanned:
            self.add(
                info(
                    "pytorch.not_scanned",
                    f"{self.label}: the values of {len(unscanned)} storage(s) were not scanned for NaN, Inf or "
                    f"zero-fill damage, first {unscanned[0]}.",
                    storages=unscanned[:_LIST_LIMIT],
                    count=len(unscanned),
                )
            )

    # -- legacy ------------------------------------------------------------------------------------------

    def _legacy(self, f: BinaryIO, size: int) -> None:
        self.ran.add("structure")
        names = (
            "the magic number",
            "the protocol version",
            "the system info",
            "the main pickle",
            "the storage key list",
        )
        walks: list[tuple[str, PickleWalk]] = []
        f.seek(0)
        for name in names:
            walk = walk_pickle(f, available=size - f.tell())
            walks.append((name, walk))
            if not walk.complete:
                break
        self.findings.extend(import_findings(walks, allow_imports=self.allow, label=self.label))
        if len(walks) < len(names) or not walks[-1][1].complete:
            return  # pickle.invalid / pickle.too_large says why
        self.ran.add("imports")
        version, sys_info, keys = walks[1][1].root, walks[2][1].root, walks[4][1].root
        if type(version) is not int or version != LEGACY_PROTOCOL_VERSION:
            self._layout(f"the protocol version is {_short(version)}, not {LEGACY_PROTOCOL_VERSION}")
            return
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            self._layout(f"the storage key list is {_short(keys)}, not a list of strings")
            return
        little = True
        if isinstance(sys_info, PickleDict):
            little = (
                dict((k, v) for k, v in sys_info.items if isinstance(k, str)).get("little_endian", True)
                is not False
            )
        declared = _declared_storages(walks[3][1], legacy=True)
        self._declared_findings(declared, "the main pickle")
        ranges: list[tuple[int, _Storage]] = []
        offset = walks[4][1].end
        listed: set[str] = set()
        for key in keys:
            storage = declared.storages.get(key)
            if storage is None or key in listed:
                self._layout(
                    f"the storage key list names {key!r} {'twice' if key in listed else 'but no tensor uses it'}"
                )
                return
            listed.add(key)
            f.seek(offset)
            count = f.read(8)
            if len(count) < 8:
                self._truncated(offset, storage)
                return
            numel = int.from_bytes(count, "little", signed=True)
            start = offset + 8
            if numel != storage.numel:
                self._size(
                    "the main pickle",
                    f"the storage section (count at byte {offset:,})",
                    storage,
                    max(0, numel) * storage.itemsize,
                )
                if numel < 0 or start + numel * storage.itemsize > size:
                    return
                offset = start + numel * storage.itemsize
                continue
            if start + storage.nbytes > size:
                self._truncated(offset, storage)
                return
            ranges.append((start, storage))
            offset = start + storage.nbytes
        for key, storage in declared.storages.items():
            if key not in listed:
                self._missing("the main pickle", "the storage section", storage)
        if offset < size:
            self.add(
                warn(
                    "pytorch.trailing_data",
                    f"{self.label}: {size - offset:,} byte(s) follow the last storage (from byte {offset:,}); "
                    "torch.load ignores them. The file was altered after torch.save wrote it, or two files were "
                    "concatenated: re-download it.",
                    offset=offset,
                    length=size - offset,
                )
            )
        if not little:
            self._not_scanned([f"{s.key}: big-endian" for _, s in ranges])
            return
        header, skipped = _content_header(ranges, size)
        self._not_scanned(skipped)
        if header is not None:
            self.findings.extend(scan_tensors(self.path, header, vouched=self.vouched))
        self.ran.add("content")

    def _layout(self, why: str) -> None:
        self.add(
            fail(
                "pytorch.layout",
                f"{self.label}: a legacy torch.save file, but {why}; torch.load refuses it. Re-download it.",
            )
        )

    def _truncated(self, offset: int, storage: _Storage) -> None:
        self.add(
            fail(
                "pytorch.truncated",
                f"{self.label}: the file ends inside storage {storage.key!r}{self._tensor_names(storage)} (its "
                f"record starts at byte {offset:,} and needs {storage.nbytes + 8:,} bytes): a truncated "
                "download. Re-download it with vcache pull.",
                storage=storage.key,
                offset=offset,
            )
        )

    # -- plain pickle ------------------------------------------------------------------------------------

    def _pickle(self, f: BinaryIO, size: int) -> None:
        self.ran.add("structure")
        f.seek(0)
        walks = [("the pickle", walk_pickle(f, available=size))]
        # Files of several pickles (loaded with repeated pickle.load calls): each one that follows is checked.
        while walks[-1][1].complete and f.tell() < size:
            here = f.tell()
            if f.read(1) != b"\x80":
                break
            f.seek(here)
            walk = walk_pickle(f, available=size - here)
            if not walk.complete:
                break
            walks.append((f"pickle {len(walks) + 1} (from byte {here:,})", walk))
        self.findings.extend(import_findings(walks, allow_imports=self.allow, label=self.label))
        if all(w.complete for _, w in walks):
            self.ran.add("imports")


def _inflate(f: BinaryIO, m: _Member, sink: Callable[[bytes], None]) -> str | None:
    """Inflate a deflated member into ``sink`` in chunks, never past its declared size; why it failed."""
    if m.data_offset is None:
        return "its local header is unusable"
    d = zlib.decompressobj(-15)
    f.seek(m.data_offset)
    left = m.info.compress_size
    produced = 0
    try:
        while left > 0:
            raw = f.read(min(_CHUNK, left))
            if not raw:
                return "the file ends inside it"
            left -= len(raw)
            while raw:
                out = d.decompress(raw, _CHUNK)
                produced += len(out)
                if produced > m.info.file_size:
                    return f"it inflates to more than its declared {m.info.file_size:,} bytes"
                sink(out)
                raw = d.unconsumed_tail
        out = d.flush()
        produced += len(out)
        sink(out)
    except zlib.error as exc:
        return f"its compressed data is corrupt ({exc})"
    if produced != m.info.file_size:
        return f"it inflates to {produced:,} bytes, not the declared {m.info.file_size:,}"
    return None


def _read_pass(f: BinaryIO, stored: list[_Member], end: int, stream: TensorStream | None) -> int | None:
    """Read bytes [0, end) in chunks: CRC of each stored member (into ``.crc``) and the content stream.
    Returns the offset where the file ended early, or None."""
    buf = bytearray(min(_CHUNK, max(end, 1)))
    view = memoryview(buf)
    f.seek(0)
    pos = 0
    first = 0  # the first member not yet fully read
    while pos < end:
        n = f.readinto(view[: min(len(buf), end - pos)])  # type: ignore[attr-defined]
        if not n:
            return pos
        chunk = view[:n]
        hi = pos + n
        i = first
        while i < len(stored) and (stored[i].data_offset or 0) < hi:
            m = stored[i]
            a, b = max(m.data_offset or 0, pos), min(m.data_end, hi)
            if b > a:
                m.crc = zlib.crc32(chunk[a - pos : b - pos], m.crc)
            i += 1
        while first < len(stored) and stored[first].data_end <= hi:
            first += 1
        if stream is not None:
            try:
                stream.feed(pos, chunk)
            except ValueError:
                stream = None  # the caller scans the file instead
        pos = hi
    return None


def _content_header(
    ranges: Iterable[tuple[int, Any]], size: int
) -> tuple[SafetensorsHeader | None, list[str]]:
    """The storages at absolute ``(offset, storage)`` as a header for the tensor scan (one tensor per storage,
    relative to the first one's offset), and the storages left out (no bit rules)."""
    entries: list[tuple[int, _Storage]] = sorted(ranges, key=lambda r: r[0])
    skipped: list[str] = []
    if not entries:
        return None, skipped
    base = entries[0][0]
    tensors: list[TensorEntry] = []
    for offset, storage in entries:
        entry = _content_entry(storage, offset - base)
        if entry is None:
            if storage.nbytes:
                skipped.append(f"{storage.key}: {storage.type_name} has no bit rules")
            continue
        tensors.append(entry)
    if not tensors:
        return None, skipped
    # The scan reads the data section at header.data_start (8 + header_len): put it at the first storage.
    return SafetensorsHeader(base - 8, tuple(tensors), None, size), skipped
