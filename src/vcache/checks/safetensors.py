"""Strict safetensors header and layout parser.

This module owns the structural verdict on one ``.safetensors`` file: it reads the 8-byte length prefix and
the JSON header (never the tensor data), reimplements the official reader's checks in the same order
(``SafeTensors::read_metadata`` in safetensors 0.8.0, steps 1-10 of ``docs/safetensors.md`` §1.2), and
then adds the strict checks the official reader lets through. It never reads tensor values (that is
``checks/tensors.py``), never diagnoses *what* a non-safetensors file is (that is ``checks/sniff.py``), never
moves, fixes or deletes a file, and never raises on bad input: every problem is a :class:`~vcache.report.Finding`.

Finding codes, in the order the official reader checks (all ``fail``; the parenthesised text is the official
reader's error for the same file, so a ``fail`` here is exactly a file ``safe_open`` refuses):

==========================================  ======================================================================
step 1  ``safetensors.header_too_small``     file shorter than 8 bytes (``header too small``)
step 2-3 ``safetensors.header_too_large``    declared header length > 100,000,000 (``header too large``)
step 4-5 ``safetensors.invalid_header_length``  8 + header length > file size (``invalid header length``)
step 6  ``safetensors.invalid_utf8``         header bytes are not UTF-8 (``invalid UTF-8 in header``)
step 7  ``safetensors.invalid_json``         syntax error, trailing characters (NUL padding, BOM, form feed...),
                                             top level not an object, nesting of 128 containers or more,
                                             number out of range, NaN/Infinity, lone surrogate, control character
step 7  ``safetensors.duplicate_field``      a field twice in one tensor entry, or ``__metadata__`` twice
step 7  ``safetensors.invalid_metadata``     ``__metadata__`` neither null nor an object of strings
step 7  ``safetensors.invalid_entry``        tensor entry not an object, or a field missing
step 7  ``safetensors.unknown_dtype``        dtype not a string naming a safetensors 0.8.0 dtype
step 7  ``safetensors.invalid_shape``        shape not a list of integers in [0, 2^64-1] (floats, ``-0``, bools...)
step 7  ``safetensors.invalid_data_offsets``  data_offsets not exactly two integers in [0, 2^64-1]
step 9  ``safetensors.invalid_offset``       sorted offsets not contiguous from 0, or end < begin
step 9  ``safetensors.overflow``             element count or bit count overflows 64 bits
step 9  ``safetensors.misaligned_slice``     a sub-byte (F4/F6) tensor that does not end on a byte
step 9  ``safetensors.tensor_size_mismatch``  end - begin differs from what dtype and shape need
step 10 ``safetensors.incomplete_buffer``    data section shorter (truncated) or longer (trailing bytes)
==========================================  ======================================================================

All step-7 codes are the one serde error ``InvalidHeaderDeserialization`` split by cause; step-9 codes mirror
the reader's rule that the first tensor in (begin, end) order decides, and within a tensor the offset check
comes before the size checks. Step 8 (sorting) has no outcome of its own. When step 7 fails, steps 8-10 are
not run, as in the official reader.

Strict extras the official reader accepts (``fail``):

- ``safetensors.duplicate_key``: a tensor name twice (also ``"a"`` vs ``"\\u0061"``), a key twice inside
  ``__metadata__``, or any other repeated key in the header. serde keeps the last silently; what loads then
  depends on the parser.
- ``safetensors.absurd_dimension``: a dimension >= 2^48 (the format schema's limit; no CPU or accelerator can
  hold it), or a zero-size shape whose non-zero dimensions multiply past 2^64-1 (``[0, 2^40, 2^40]``, which
  the official reader accepts because its left fold reaches 0 first). Such shapes are crafted or corrupt.
- ``safetensors.nonstandard_entry``: a tensor entry written as a JSON array (``["F32", [1], [0, 4]]``) or a
  dtype written as a map (``{"F32": null}``); serde's derive accepts both, every other reader rejects them.

Warnings (``warn``): ``safetensors.misaligned`` (header length not a multiple of 8, or a tensor's absolute
start not divisible by its element size: torch may fail to load), ``safetensors.leading_whitespace``,
``safetensors.noncanonical_padding``, ``safetensors.unknown_field`` (extra keys in a tensor entry),
``safetensors.large_header`` (> 25,000,000 bytes: huggingface_hub's metadata parser refuses it) and
``safetensors.metadata_format`` (``__metadata__`` present without ``format`` in pt/tf/flax/mlx: transformers
4.x refuses the file).

:func:`read_header` adds ``safetensors.unreadable`` (``fail``) when the file cannot be opened or is not a
regular file. ``safetensors.internal_error`` (``fail``) is the guard that keeps a bug in this module from
raising; it should never appear.

Python's ``json`` is laxer than serde (NaN literals, duplicate keys, ``-0`` as an integer, lone surrogates,
bools as integers, unbounded integers); the parser closes each gap (``docs/safetensors.md`` §6.2). The cost
is linear in the header size; the garbage collector is paused while a header's objects are built, because
its passes over millions of fresh containers otherwise triple the time.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any, Final

from vcache.report import Finding, Severity, fail, warn

__all__ = [
    "DTYPE_BITS",
    "HUB_MAX_HEADER_SIZE",
    "KNOWN_FORMATS",
    "MAX_DIMENSION",
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "TensorEntry",
    "parse_header_bytes",
    "read_header",
]

#: Bits per element for every dtype the official reader (0.8.0) knows. Names are case-sensitive.
DTYPE_BITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "BOOL": 8,
        "F4": 4,
        "F6_E2M3": 6,
        "F6_E3M2": 6,
        "U8": 8,
        "I8": 8,
        "F8_E5M2": 8,
        "F8_E4M3": 8,
        "F8_E8M0": 8,
        "F8_E4M3FNUZ": 8,
        "F8_E5M2FNUZ": 8,
        "I16": 16,
        "U16": 16,
        "F16": 16,
        "BF16": 16,
        "I32": 32,
        "U32": 32,
        "F32": 32,
        "C64": 64,
        "F64": 64,
        "I64": 64,
        "U64": 64,
    }
)

#: The official reader's cap on the declared header length (accepted when equal).
MAX_HEADER_SIZE: Final = 100_000_000
#: huggingface_hub's cap (``SAFETENSORS_MAX_HEADER_LENGTH``) for its own metadata parser.
HUB_MAX_HEADER_SIZE: Final = 25_000_000
#: Dimensions at or above this are absurd (the format schema's ``size_t`` maximum is 2^48 - 1).
MAX_DIMENSION: Final = 2**48
#: ``__metadata__["format"]`` values transformers 4.x accepts.
KNOWN_FORMATS: Final = frozenset({"pt", "tf", "flax", "mlx"})

_U64_MAX: Final = 2**64 - 1
# serde_json's recursion limit: the 128th nested container is refused. The top-level object and a tensor
# entry are two of them, so an unknown field's value may nest at most 125 deep.
_MAX_NESTING: Final = 127
_UNKNOWN_VALUE_MAX_DEPTH: Final = _MAX_NESTING - 2
# How many leading bytes a header_too_large message shows.
_PREVIEW_BYTES: Final = 32
# How many offending tensor names one aggregated finding lists in its detail.
_LIST_LIMIT: Final = 20
_FIELDS: Final = ("dtype", "shape", "data_offsets")
_JSON_WS: Final = " \t\n\r"
# A bare ``-0`` integer token (Python reads it as int 0, serde as float -0.0). May also match inside a
# string; then the slower exact parse runs, nothing worse.
_NEG_ZERO_HINT: Final = re.compile(r"-0(?![0-9.eE])")
# A \u escape in the surrogate range; its presence triggers the exact lone-surrogate check.
_SURROGATE_HINT: Final = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

_STEP7_ADVICE: Final = (
    "The official safetensors reader rejects this file ('invalid JSON in header'). "
    "Re-download it; if the problem persists, the published file is broken."
)
_LAYOUT_ADVICE: Final = (
    "The official safetensors reader rejects this file. The header's layout is corrupt; re-download it."
)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header; ``begin``/``end`` are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes this tensor occupies in the data section."""
        return self.end - self.begin

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar, 0 when any dimension is 0)."""
        return math.prod(self.shape)

    @property
    def bits(self) -> int:
        """Bits per element of :attr:`dtype`."""
        return DTYPE_BITS[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, structurally valid header: tensors in data-offset order."""

    header_len: int
    tensors: tuple[TensorEntry, ...]
    metadata: Mapping[str, str] | None
    file_size: int

    @property
    def data_start(self) -> int:
        """Absolute file offset of the data section (8 + header length)."""
        return 8 + self.header_len

    @property
    def data_size(self) -> int:
        """Bytes in the data section (equal to the last tensor's ``end`` in a valid file)."""
        return self.file_size - self.data_start

    @cached_property
    def by_name(self) -> Mapping[str, TensorEntry]:
        """The tensors keyed by name."""
        return MappingProxyType({t.name: t for t in self.tensors})


def read_header(path: str | os.PathLike[str]) -> tuple[SafetensorsHeader | None, list[Finding]]:
    """Read and check the header of the safetensors file at ``path``.

    Reads only the 8-byte prefix and, when the declared length passes the official reader's limits, the
    header itself: never the tensor data, and never more than 8 + 100,000,000 bytes. Returns the header
    (``None`` when any finding is a failure) and the findings; never raises on a bad or unreadable file.
    """
    label = os.path.basename(os.fspath(path)) or os.fspath(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, [
                fail(
                    "safetensors.unreadable",
                    f"{label}: not a regular file, so it cannot be a safetensors file; re-download it.",
                )
            ]
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            # A few bytes more than the prefix, so a failure message can show what the file starts with.
            head = fh.read(_PREVIEW_BYTES) or b""
            n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
            if n < 0 or n > MAX_HEADER_SIZE or 8 + n > size:
                # Steps 1, 3 or 5 fail on the prefix alone: the header is never read.
                return parse_header_bytes(head, size, label=label)
            buf = bytearray(8 + n)
            got = min(len(head), 8 + n)
            buf[:got] = head[:got]
            got += _read_into(fh, memoryview(buf)[got:])
            return parse_header_bytes(memoryview(buf)[:got], size, label=label)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        return None, [
            fail(
                "safetensors.unreadable",
                f"{label}: cannot read the file ({reason}); check the path and permissions.",
                error=reason,
            )
        ]


def _read_into(fh: Any, view: memoryview) -> int:
    """Fill ``view`` from ``fh``; returns how many bytes arrived (fewer only at end of file)."""
    total = 0
    while total < len(view):
        got = fh.readinto(view[total:])
        if not got:
            break
        total += got
    return total


def parse_header_bytes(
    prefix: bytes | bytearray | memoryview, file_size: int, *, label: str | None = None
) -> tuple[SafetensorsHeader | None, list[Finding]]:
    """Check a safetensors header given the file's first bytes and its total size.

    ``prefix`` must hold the first ``8 + N`` bytes of the file (N being the declared header length), or
    everything there is when the file is shorter; extra bytes are ignored. ``file_size`` is the size of the
    whole file (the official reader's step 10 compares the data section against it). ``label`` (usually the
    file name) prefixes messages. Returns the header (``None`` when any finding is a failure) and the
    findings; never raises.
    """
    where = f"{label}: " if label else ""
    try:
        view = memoryview(prefix)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        with _gc_paused():
            return _Parser(view, file_size, where).run()
    except Exception as exc:  # a bug here must become a finding, never an exception in the caller
        return None, [
            fail(
                "safetensors.internal_error",
                f"{where}the header check itself failed ({type(exc).__name__}: {exc}); "
                "this is a vcache bug, please report it. The file was not verified.",
                error=repr(exc),
            )
        ]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a header builds millions of acyclic containers at once."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _JsonError(Exception):
    """A JSON problem serde would refuse (reported as ``safetensors.invalid_json``)."""


def _reject_constant(token: str) -> Any:
    raise _JsonError(f"'{token}' is not JSON (serde refuses NaN and Infinity)")


def _parse_int_exact(token: str) -> Any:
    # serde reads "-0" as the float -0.0, which a shape or offset refuses; so must we.
    if token == "-0":
        return -0.0
    return int(token)


def _loads(text: str) -> Any:
    """``json.loads`` made as strict as serde_json, objects as tuples of (key, value) pairs.

    Arrays stay lists, so a tuple is always a JSON object and duplicate keys stay visible. Checks that need a
    walk of the result (lone surrogates, number range, nesting inside unknown fields) are left to the caller.
    """
    parse_int = _parse_int_exact if _NEG_ZERO_HINT.search(text) else int
    try:
        return json.loads(text, object_pairs_hook=tuple, parse_constant=_reject_constant, parse_int=parse_int)
    except json.JSONDecodeError as exc:
        raise _JsonError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _JsonError(
            "nesting too deep (serde refuses 128 or more nested arrays/objects: 'recursion limit exceeded')"
        ) from None
    except ValueError:  # int() refuses more than 4300 digits; serde finds such a number out of range
        raise _JsonError("number out of range") from None


def _preview(data: bytes) -> str:
    """A short printable rendering of some bytes, for messages."""
    text = data.decode("latin-1")
    shown = "".join(c if " " <= c <= "~" else "." for c in text)
    return shown


def _describe_shape(shape: Any) -> str:
    if not isinstance(shape, (list, tuple)):
        return repr(shape)
    if len(shape) > 8:
        return "[" + ", ".join(str(d) for d in shape[:8]) + f", ... ({len(shape):,} dimensions)]"
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return "an object"
    return "an array"


def _size_or_error(shape: tuple[int, ...], bits: int) -> int | str:
    """Bytes a tensor needs, or the step-9 error code, computed as the official reader does.

    The reader folds the shape left to right with checked multiplication, so ``[2^63, 2^63, 0]`` overflows
    while ``[0, 2^63]`` does not. Ones never change the fold and nothing after a zero can overflow, so both
    are skipped in C before the Python loop: a hostile million-dimension shape costs no more than a real one.
    """
    if len(shape) > 8:
        shape = tuple(filter((1).__ne__, shape))
    if 0 in shape:
        if _fold_overflows(shape[: shape.index(0)]):
            return "safetensors.overflow"
        return 0
    n = 1
    for d in shape:
        n *= d
        if n > _U64_MAX:
            return "safetensors.overflow"
    nbits = n * bits
    if nbits > _U64_MAX:
        return "safetensors.overflow"
    if nbits % 8:
        return "safetensors.misaligned_slice"
    return nbits // 8


def _fold_overflows(dims: Iterable[int]) -> bool:
    """True when multiplying ``dims`` left to right passes 2^64 - 1 (stops at the first overflow)."""
    n = 1
    for d in dims:
        n *= d
        if n > _U64_MAX:
            return True
    return False


class _Problems:
    """Per-code aggregation of per-tensor problems, so a hostile header yields a bounded number of findings."""

    def __init__(self) -> None:
        self.items: dict[str, list[tuple[str | None, str]]] = {}
        self.counts: dict[str, int] = {}

    def add(self, code: str, tensor: str | None, reason: str) -> None:
        """Record that ``tensor`` (None: the header as a whole) has the problem ``code``."""
        count = self.counts.get(code, 0)
        self.counts[code] = count + 1
        if count < _LIST_LIMIT:
            self.items.setdefault(code, []).append((tensor, reason))


class _Parser:
    """One run of the checks over one header; holds the state the steps share."""

    def __init__(self, buf: memoryview, file_size: int, where: str) -> None:
        self.buf = buf
        self.file_size = file_size
        self.where = where
        self.findings: list[Finding] = []
        self.header_len = 0
        self.metadata: dict[str, str] | None = None
        # (begin, end, json_position, name, dtype, shape, bytes-or-error-code) per tensor, last name wins
        self.records: list[tuple[int, int, int, str, str, tuple[int, ...], int | str]] = []

    # ---- steps 1-6: the prefix --------------------------------------------------------------------------

    def run(self) -> tuple[SafetensorsHeader | None, list[Finding]]:
        text = self._read_prefix()
        if text is None:
            return None, self.findings
        try:
            top = _loads(text)
        except _JsonError as exc:
            self._json_failure(text, exc)
            return None, self.findings
        if type(top) is not tuple:
            self._fail(
                "safetensors.invalid_json",
                f"the header is {_type_name(top)}, not a JSON object. {_STEP7_ADVICE}",
            )
            return None, self.findings
        self._header_text_warnings(text)
        problems = _Problems()
        self._schema(top, problems, check_surrogates=_SURROGATE_HINT.search(text) is not None)
        self._emit(problems)
        if any(code not in _STRICT_EXTRAS for code in problems.counts):
            return None, self.findings  # serde refused the header: the official reader stops at step 7
        tensors = self._layout()
        if tensors is None or self._failed():
            return None, self.findings
        self._alignment_warnings(tensors)
        header = SafetensorsHeader(
            header_len=self.header_len,
            tensors=tensors,
            metadata=self.metadata,
            file_size=self.file_size,
        )
        return header, self.findings

    def _fail(self, code: str, message: str, *, tensor: str | None = None, **detail: Any) -> None:
        self.findings.append(fail(code, self.where + message, tensor=tensor, **detail))

    def _warn(self, code: str, message: str, *, tensor: str | None = None, **detail: Any) -> None:
        self.findings.append(warn(code, self.where + message, tensor=tensor, **detail))

    def _failed(self) -> bool:
        return any(f.severity is Severity.FAIL for f in self.findings)

    def _read_prefix(self) -> str | None:
        """Steps 1-6; returns the header text, or None after recording the failure."""
        buf, size = self.buf, self.file_size
        if size < 8:
            self._fail(
                "safetensors.header_too_small",
                f"the file is {size} bytes long, shorter than the 8-byte length prefix every safetensors "
                "file starts with: the download stopped at once or the file is empty; re-download it.",
                file_size=size,
            )
            return None
        if len(buf) < 8:
            self._fail(
                "safetensors.header_too_small",
                f"only {len(buf)} bytes could be read although the file is {size:,} bytes: it changed while "
                "being read. Check it again once it is complete.",
                file_size=size,
            )
            return None
        n = int.from_bytes(buf[:8], "little")
        self.header_len = n
        if n > MAX_HEADER_SIZE:
            self._fail(
                "safetensors.header_too_large",
                f"the first 8 bytes declare a {n:,}-byte header, over the format's 100,000,000-byte limit "
                f"(the file starts with '{_preview(bytes(buf[:_PREVIEW_BYTES]))}'). This usually means the file is a "
                "git-LFS pointer or an HTML error page saved in place of the weights; re-download it "
                "(and if it came from a git clone, run 'git lfs pull').",
                header_len=n,
                first_bytes=bytes(buf[:_PREVIEW_BYTES]).hex(),
            )
            return None
        if 8 + n > size:
            self._fail(
                "safetensors.invalid_header_length",
                f"the header is declared as {n:,} bytes but only {size - 8:,} bytes follow the length "
                "prefix: the file is cut off inside its header (an interrupted download); re-download it.",
                header_len=n,
                file_size=size,
            )
            return None
        if len(buf) < 8 + n:
            self._fail(
                "safetensors.invalid_header_length",
                f"the header is declared as {n:,} bytes but only {len(buf) - 8:,} could be read although the "
                f"file is {size:,} bytes: it changed while being read. Check it again once it is complete.",
                header_len=n,
                file_size=size,
            )
            return None
        try:
            return str(buf[8 : 8 + n], "utf-8", "strict")
        except UnicodeDecodeError as exc:
            self._fail(
                "safetensors.invalid_utf8",
                f"the header is not valid UTF-8 (byte {exc.start + 8:,} of the file: {exc.reason}). "
                "The official reader rejects it; the header is corrupt, re-download the file.",
                offset=exc.start + 8,
            )
            return None

    def _json_failure(self, text: str, exc: _JsonError) -> None:
        """Step 7 syntax failures, with the real-world signatures named."""
        stripped = text.strip(_JSON_WS)
        if not text:
            message = (
                "the header is empty (declared length 0): the file starts with zero bytes, the mark of an "
                "interrupted save or a zero-filled download. Re-download it."
            )
        elif not text.strip("\0"):
            message = (
                "the header is all zero bytes: the file is zero-filled where its header should be (an "
                "interrupted save or a zero-filled download). Re-download it."
            )
        elif stripped.endswith("\0") and stripped.rstrip("\0").endswith("}"):
            message = (
                "the JSON header is padded with NUL bytes instead of spaces (a third-party writer's bug); "
                f"serde stops there ({exc}). The official reader rejects the file; re-save it with a "
                "standard writer or re-download it."
            )
        else:
            message = f"the header is not valid JSON: {exc}. {_STEP7_ADVICE}"
        self._fail("safetensors.invalid_json", message)

    def _header_text_warnings(self, text: str) -> None:
        n = self.header_len
        if text[:1] != "{":
            self._warn(
                "safetensors.leading_whitespace",
                "the header has whitespace before its opening '{'. The official reader accepts it, but the "
                "format says the header MUST begin with '{' and other readers may reject the file.",
            )
        # The text parsed as an object, so only JSON whitespace follows its closing brace.
        end = text.rfind("}") + 1
        padding = len(text) - end
        if padding > 7 or text.count(" ", end) != padding:
            kinds = [repr(c) for c in _JSON_WS if text.find(c, end) != -1]
            self._warn(
                "safetensors.noncanonical_padding",
                f"the header ends with {padding:,} padding characters ({', '.join(kinds)}); the standard "
                "writer pads with at most 7 spaces. Readers accept it; the file was not written by the "
                "standard writer.",
                padding=padding,
            )
        if n > HUB_MAX_HEADER_SIZE:
            self._warn(
                "safetensors.large_header",
                f"the header is {n:,} bytes, over huggingface_hub's 25,000,000-byte limit: its metadata "
                "parsing (get_safetensors_metadata, parameter counts) will fail for this file. Loading "
                "with safetensors still works.",
                header_len=n,
            )

    # ---- step 7: the schema -----------------------------------------------------------------------------

    def _schema(
        self, top: tuple[tuple[str, Any], ...], problems: _Problems, *, check_surrogates: bool
    ) -> None:
        """Step 7 type checks plus the strict extras, in one pass over the top-level object."""
        if check_surrogates:
            _check_surrogates(top, problems)
        metadata_seen = False
        names = [name for name, _ in top]
        duplicated = _duplicates(names) if len(set(names)) != len(names) else {}
        records = self.records
        size_cache: dict[tuple[int, tuple[int, ...]], int | str] = {}
        unknown_fields: dict[str, int] = {}
        add = problems.add
        bits_of = DTYPE_BITS.get
        for position, (name, value) in enumerate(top):
            if name == "__metadata__":
                if metadata_seen:
                    add("safetensors.duplicate_field", None, "'__metadata__' appears twice in the header")
                metadata_seen = True
                self._metadata(value, problems)
                continue
            if type(value) is tuple:
                if (
                    len(value) == 3
                    and value[0][0] == "dtype"
                    and value[1][0] == "shape"
                    and value[2][0] == "data_offsets"
                ):
                    dtype, shape, offsets = value[0][1], value[1][1], value[2][1]
                else:
                    fields = _entry_fields(name, value, problems, unknown_fields)
                    if fields is None:
                        continue
                    dtype, shape, offsets = fields
            elif type(value) is list and len(value) == 3:
                add(
                    "safetensors.nonstandard_entry",
                    name,
                    "the entry is a JSON array ([dtype, shape, data_offsets]) instead of an object",
                )
                dtype, shape, offsets = value
            else:
                what = f"an array of {len(value)} elements" if type(value) is list else _type_name(value)
                add("safetensors.invalid_entry", name, f"the entry is {what}, not an object")
                continue

            if type(dtype) is str:
                bits = bits_of(dtype)
                if bits is None:
                    add("safetensors.unknown_dtype", name, f"dtype {dtype[:40]!r} is not a safetensors dtype")
            elif (
                type(dtype) is tuple and len(dtype) == 1 and dtype[0][1] is None and dtype[0][0] in DTYPE_BITS
            ):
                dtype = dtype[0][0]
                bits = bits_of(dtype)
                add(
                    "safetensors.nonstandard_entry",
                    name,
                    f'dtype is written as a map ({{"{dtype}": null}}) instead of a string',
                )
            else:
                bits = None
                add("safetensors.unknown_dtype", name, f"dtype is {_json_repr(dtype)}, not a dtype name")

            shape_ok = type(shape) is list
            absurd = False
            if shape_ok and len(shape) > 8:  # hostile ranks: check in C, not per dimension in Python
                shape_ok = set(map(type, shape)) == {int} and min(shape) >= 0
                largest = max(shape) if shape_ok else 0
                shape_ok = shape_ok and largest <= _U64_MAX
                absurd = largest >= MAX_DIMENSION
            elif shape_ok:
                for d in shape:
                    if type(d) is not int or d < 0 or d > _U64_MAX:
                        shape_ok = False
                        break
                    if d >= MAX_DIMENSION:
                        absurd = True
            if not shape_ok:
                add(
                    "safetensors.invalid_shape",
                    name,
                    f"shape {_json_repr(shape)} is not a list of integers in [0, 2^64-1]",
                )

            if (
                type(offsets) is list
                and len(offsets) == 2
                and type(offsets[0]) is int
                and type(offsets[1]) is int
                and 0 <= offsets[0] <= _U64_MAX
                and 0 <= offsets[1] <= _U64_MAX
            ):
                begin, end = offsets
            else:
                add(
                    "safetensors.invalid_data_offsets",
                    name,
                    f"data_offsets {_json_repr(offsets)} is not a pair of integers in [0, 2^64-1]",
                )
                continue
            if bits is None or not shape_ok:
                continue
            shape_t = tuple(shape)
            key = (bits, shape_t)
            size = size_cache.get(key)
            if size is None:
                size = size_cache[key] = _size_or_error(shape_t, bits)
            if absurd or (size == 0 and _nonzero_product_overflows(shape_t)):
                add(
                    "safetensors.absurd_dimension",
                    name,
                    f"shape {_describe_shape(shape_t)} has a dimension of 2^48 or more, or non-zero "
                    "dimensions whose product passes 2^64 with only a zero keeping it empty",
                )
            records.append((begin, end, position, name, dtype, shape_t, size))

        if duplicated:
            # serde keeps the last copy of a name: the layout is checked on what it would keep.
            last_position = {name: position for position, name in enumerate(names)}
            records[:] = [r for r in records if last_position[r[3]] == r[2]]
            _report_duplicates(top, duplicated, problems)
        if unknown_fields:
            shown = sorted(unknown_fields)[:_LIST_LIMIT]
            entries = _n(sum(unknown_fields.values()), "tensor entry", "tensor entries")
            self._warn(
                "safetensors.unknown_field",
                f"{entries} carry fields the format does not define ({', '.join(repr(k[:40]) for k in shown)}); "
                "the official reader ignores them, the format's schema forbids them.",
                fields=shown,
            )
        if metadata_seen and self.metadata is not None:
            fmt = self.metadata.get("format")
            if fmt not in KNOWN_FORMATS:
                said = "has no 'format' key" if fmt is None else f"has format={fmt[:40]!r}"
                self._warn(
                    "safetensors.metadata_format",
                    f"__metadata__ {said}, not one of pt, tf, flax, mlx: transformers 4.x refuses to load "
                    "the file ('does not contain the valid metadata'); 5.x does not check.",
                    format=fmt,
                )

    def _metadata(self, value: Any, problems: _Problems) -> None:
        if value is None:
            return
        if type(value) is not tuple:
            problems.add(
                "safetensors.invalid_metadata",
                None,
                f"__metadata__ is {_type_name(value)}, not an object of strings",
            )
            return
        metadata: dict[str, str] = {}
        for key, item in value:
            if type(item) is not str:
                problems.add(
                    "safetensors.invalid_metadata",
                    None,
                    f"__metadata__[{key[:40]!r}] is {_type_name(item)}, not a string",
                )
                return
            if key in metadata:
                problems.add(
                    "safetensors.duplicate_key",
                    None,
                    f"__metadata__ has the key {key[:40]!r} twice ({metadata[key][:40]!r} and "
                    f"{item[:40]!r}); serde keeps the last",
                )
            metadata[key] = item
        self.metadata = metadata

    # ---- steps 8-10: the layout -------------------------------------------------------------------------

    def _layout(self) -> tuple[TensorEntry, ...] | None:
        """Steps 8-10 on the records; returns the tensors in offset order, or None after a failure."""
        records = self.records
        records.sort()  # (begin, end) then JSON position: ties are never decided by name
        start = 0
        for begin, end, _, name, dtype, shape, size in records:
            if begin != start or end < begin:
                self._invalid_offset(name, begin, end, start)
                return None
            start = end
            if type(size) is str:
                self._size_error(size, name, dtype, shape)
                return None
            if end - begin != size:
                self._fail(
                    "safetensors.tensor_size_mismatch",
                    f"tensor {_q(name)} ({dtype} {_describe_shape(shape)}) needs {size:,} bytes but its "
                    f"data_offsets [{begin}, {end}] span {end - begin:,}. {_LAYOUT_ADVICE}",
                    tensor=_clip(name),
                    expected=size,
                    actual=end - begin,
                )
                return None
        data = self.file_size - 8 - self.header_len
        if start != data:
            self._incomplete(start, data)
            return None
        return tuple([TensorEntry(r[3], r[4], r[5], r[0], r[1]) for r in records])

    def _invalid_offset(self, name: str, begin: int, end: int, start: int) -> None:
        if end < begin:
            reason = f"its data_offsets [{begin}, {end}] end before they begin"
        elif start == 0:
            reason = f"it is the first tensor in the data section but starts at {begin:,}, not 0"
        elif begin > start:
            reason = f"it starts at {begin:,} but the tensor before it ends at {start:,}: a hole of {begin - start:,} bytes"
        else:
            reason = f"it starts at {begin:,}, inside the tensor before it (which ends at {start:,})"
        self._fail(
            "safetensors.invalid_offset",
            f"tensor {_q(name)}: {reason}. Tensors must tile the data section from 0 with no holes or "
            f"overlaps. {_LAYOUT_ADVICE}",
            tensor=_clip(name),
            begin=begin,
            end=end,
            expected_begin=start,
        )

    def _size_error(self, code: str, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        if code == "safetensors.overflow":
            reason = "has more elements or bits than fit in 64 bits"
        else:
            reason = (
                f"is {math.prod(shape):,} elements of {DTYPE_BITS[dtype]} bits: not a whole number of bytes"
            )
        self._fail(
            code,
            f"tensor {_q(name)} ({dtype} {_describe_shape(shape)}) {reason}. {_LAYOUT_ADVICE}",
            tensor=_clip(name),
        )

    def _incomplete(self, covered: int, data: int) -> None:
        if data < covered:
            missing = covered - data
            self._fail(
                "safetensors.incomplete_buffer",
                f"the header describes {covered:,} bytes of tensor data but the file holds {data:,} "
                f"({missing:,} missing, {self.file_size:,} bytes in all): the file is truncated, typically "
                "an interrupted download. Re-download it.",
                expected=covered,
                actual=data,
            )
        else:
            extra = data - covered
            self._fail(
                "safetensors.incomplete_buffer",
                f"{extra:,} bytes follow the last tensor (the header covers {covered:,} bytes of data, the "
                f"file holds {data:,}). The official reader rejects trailing data ('incomplete metadata, file "
                "not fully covered'); the tensors may be intact, but this is not the published file. "
                "Re-download it.",
                expected=covered,
                actual=data,
            )

    def _alignment_warnings(self, tensors: tuple[TensorEntry, ...]) -> None:
        """One ``misaligned`` warning covering the header length and every misaligned tensor start."""
        data_start = 8 + self.header_len
        bad: list[TensorEntry] = []
        count = 0
        for t in tensors:
            item = DTYPE_BITS[t.dtype] // 8
            if item > 1 and t.end > t.begin and (data_start + t.begin) % item:
                count += 1
                if len(bad) < _LIST_LIMIT:
                    bad.append(t)
        if not count and not self.header_len % 8:
            return
        parts = []
        if self.header_len % 8:
            parts.append(
                f"the header length {self.header_len:,} is not a multiple of 8 (the standard writer pads it)"
            )
        if count:
            first = bad[0]
            parts.append(
                f"{_n(count, 'tensor')} start at file offsets not divisible by their element size (first: "
                f"{_q(first.name)}, {first.dtype} at offset {data_start + first.begin:,})"
            )
        self._warn(
            "safetensors.misaligned",
            "; ".join(parts) + ". torch may fail to load such tensors ('storage_offset must be divisible by "
            "...'); numpy reads them. Re-saving with the safetensors writer aligns them.",
            tensor=_clip(bad[0].name) if bad else None,
            header_len=self.header_len,
            count=count,
            tensors=[_clip(t.name) for t in bad],
        )

    def _emit(self, problems: _Problems) -> None:
        """One finding per aggregated code, naming the first offender and how many more there are."""
        for code, items in problems.items.items():
            count = problems.counts[code]
            tensor, reason = items[0]
            subject = "" if tensor is None else f"tensor {_q(tensor)}: "
            more = f" ({count - 1} more with the same problem)" if count > 1 else ""
            named = [_clip(t) for t, _ in items if t is not None]
            detail: dict[str, Any] = {"count": count}
            if named:
                detail["tensors"] = named
            self._fail(
                code,
                f"{subject}{reason}{more}. {_ADVICE.get(code, _STEP7_ADVICE)}",
                tensor=None if tensor is None else _clip(tensor),
                **detail,
            )


# Strict extras: failures of this module that the official reader does not share; it goes on to steps 8-10.
_STRICT_EXTRAS: Final = frozenset(
    {"safetensors.duplicate_key", "safetensors.absurd_dimension", "safetensors.nonstandard_entry"}
)

_ADVICE: Final[Mapping[str, str]] = {
    "safetensors.duplicate_key": (
        "The official reader silently keeps the last copy, so what loads depends on the parser: the file is "
        "malformed or crafted. Do not use it; re-download it or report it to the publisher."
    ),
    "safetensors.absurd_dimension": (
        "No real tensor has such a shape and numpy and torch cannot create it: the header is corrupt or "
        "crafted. Re-download the file."
    ),
    "safetensors.nonstandard_entry": (
        "Only the Rust reader accepts this (a serde quirk); the format defines each entry as an object with a "
        "string dtype, and other readers (huggingface_hub, other languages) reject it. Re-export the file "
        "with a standard writer."
    ),
}


def _q(name: str) -> str:
    """A tensor name quoted for a message, shortened when absurdly long."""
    return repr(name) if len(name) <= 200 else repr(name[:200]) + f"... ({len(name):,} characters)"


def _clip(name: str) -> str:
    """A tensor name for a finding's ``tensor``/``detail`` (no real name is near this long)."""
    return name if len(name) <= 1000 else name[:1000] + "..."


def _n(count: int, noun: str, plural: str | None = None) -> str:
    """``1 tensor``, ``3 tensors``."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def _nonzero_product_overflows(shape: tuple[int, ...]) -> bool:
    """True when the shape's non-zero dimensions multiply past 2^64 - 1 (only a zero keeps it empty)."""
    return _fold_overflows(filter(None, shape))


def _json_repr(value: Any) -> str:
    """Render a parsed value back as short JSON-ish text for a message."""
    if type(value) is tuple:
        return "{" + ", ".join(f"{k!r}: ..." for k, _ in value[:4]) + ("..." if len(value) > 4 else "") + "}"
    if type(value) is list:
        inner = ", ".join(_json_repr(v) for v in value[:6])
        return "[" + inner + (", ..." if len(value) > 6 else "") + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "-0" if value == 0 and math.copysign(1, value) < 0 else repr(value)
    if isinstance(value, str):
        return repr(value[:40])
    text = str(value)
    return text if len(text) <= 30 else text[:12] + f"...({len(text)} digits)"


def _entry_summary(value: Any) -> str:
    if type(value) is tuple:
        fields = dict(value)
        return (
            f"{fields.get('dtype')!s} {_json_repr(fields.get('shape'))} at "
            f"{_json_repr(fields.get('data_offsets'))}"
        )
    return _json_repr(value)


def _entry_fields(
    name: str, value: tuple[tuple[str, Any], ...], problems: _Problems, unknown_fields: dict[str, int]
) -> tuple[Any, Any, Any] | None:
    """The slow path for an entry object that is not exactly (dtype, shape, data_offsets) in order."""
    fields: dict[str, Any] = {}
    extra: set[str] = set()
    for key, item in value:
        if key in _FIELDS:
            if key in fields:
                problems.add("safetensors.duplicate_field", name, f"the field {key!r} appears twice")
            fields[key] = item
        else:
            if key in extra:
                problems.add(
                    "safetensors.duplicate_key", name, f"the unknown field {key[:40]!r} appears twice"
                )
            extra.add(key)
            _check_unknown_value(item, name, problems)
    for key in extra:
        unknown_fields[key] = unknown_fields.get(key, 0) + 1
    missing = [k for k in _FIELDS if k not in fields]
    if missing:
        problems.add("safetensors.invalid_entry", name, f"the entry has no {', '.join(missing)}")
        return None
    return fields["dtype"], fields["shape"], fields["data_offsets"]


def _duplicates(names: list[str]) -> dict[str, int]:
    """Names that occur more than once (``__metadata__`` aside: serde's own rule covers it), with counts."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return {name: n for name, n in counts.items() if n > 1 and name != "__metadata__"}


def _report_duplicates(
    top: tuple[tuple[str, Any], ...], duplicated: Mapping[str, int], problems: _Problems
) -> None:
    """One problem per duplicated tensor name, saying what each copy declares (bounded)."""
    shown = dict.fromkeys(list(duplicated)[:_LIST_LIMIT])
    copies: dict[str, list[str]] = {name: [] for name in shown}
    for name, value in top:
        lst = copies.get(name)
        if lst is not None and len(lst) < 4:
            lst.append(_entry_summary(value))
    for name, times in duplicated.items():
        declared = "; ".join(copies.get(name, []))
        problems.add(
            "safetensors.duplicate_key",
            name,
            f"the tensor name appears {times} times ({declared}); serde silently keeps the last",
        )


def _check_unknown_value(value: Any, name: str, problems: _Problems) -> None:
    """What serde refuses inside a field it otherwise ignores (deep nesting, numbers out of range), plus keys
    repeated inside it (a strict extra)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is not tuple and kind is not list:
            if _out_of_range(item):
                problems.add("safetensors.invalid_json", name, "a number in an unknown field is out of range")
                return
            continue
        depth += 1
        if depth > _UNKNOWN_VALUE_MAX_DEPTH:
            problems.add(
                "safetensors.invalid_json",
                name,
                "an unknown field nests 128 or more arrays/objects deep in the header (serde: 'recursion "
                "limit exceeded')",
            )
            return
        if kind is tuple:
            keys = [k for k, _ in item]
            if len(set(keys)) != len(keys):
                problems.add(
                    "safetensors.duplicate_key", name, "an object inside an unknown field has a key twice"
                )
            children = [v for _, v in item]
        else:
            children = item
        kinds = set(map(type, children))
        if tuple in kinds or list in kinds or float in kinds or int in kinds:
            # Scalars other than numbers need no check; a long flat list of numbers is checked in C.
            if kinds <= {int, float}:
                if children and _out_of_range(max(map(abs, children))):
                    problems.add(
                        "safetensors.invalid_json", name, "a number in an unknown field is out of range"
                    )
                    return
                continue
            stack.extend((child, depth) for child in children if type(child) in _WALKED)


_WALKED: Final = frozenset({tuple, list, int, float})


def _out_of_range(value: Any) -> bool:
    """serde reads integers beyond the 64-bit ranges as floats and refuses those beyond the float range."""
    if type(value) is float:
        return math.isinf(value)
    if type(value) is int and not -(2**63) <= value <= _U64_MAX:
        return math.isinf(_to_float(value))
    return False


def _to_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _check_surrogates(top: tuple[tuple[str, Any], ...], problems: _Problems) -> None:
    """Python decodes a lone surrogate escape into the string; serde refuses it anywhere."""
    stack: list[Any] = [top]
    while stack:
        item = stack.pop()
        if type(item) is tuple:
            for key, value in item:
                if _SURROGATE.search(key):
                    problems.add(
                        "safetensors.invalid_json",
                        None,
                        f"the key {_escaped(key)} holds a lone surrogate escape, which serde refuses",
                    )
                    return
                stack.append(value)
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is str and _SURROGATE.search(item):
            problems.add(
                "safetensors.invalid_json",
                None,
                f"the string {_escaped(item)} holds a lone surrogate escape, which serde refuses",
            )
            return


def _escaped(text: str) -> str:
    return json.dumps(text[:60])
