"""Tensor content scan on raw bits: NaN, ±Inf, zero-fill damage, zero rows/columns, bad scales.

This module owns the one pass over a safetensors file's data section that judges the *values*: it reads
the bytes in fixed-size chunks into a reused buffer, views them as unsigned integers of the dtype's width
and classifies them with the bit rules of ``docs/safetensors.md`` §4 (no framework decodes anything).
Memory is O(chunk + columns of the widest checked matrix), whatever the file size.

It reads with positioned ``readinto`` calls rather than an mmap: the resident set stays at one chunk (an
mmap's pages count towards RSS until the scan ends), and a file truncated while it is being scanned gives a
short read, reported as ``tensor.read_error``, instead of a SIGBUS that kills the process.

It must never modify, move or delete the file, never decode through torch, never hold a whole tensor in
memory, and never raise on bad data: every problem is a :class:`~vcache.report.Finding`.

Finding codes (``vouched`` is True when a publisher digest matched the bytes):

=======================  ===========================  ======================================================
code                     severity                     when
=======================  ===========================  ======================================================
``tensor.nan``           fail                         any NaN in a floating tensor
``tensor.inf``           fail; warn if allow-listed   any ±Inf; ``allow_inf(name)`` (default
                                                      :func:`default_allow_inf`: masks) makes it a warning
``tensor.bool_invalid``  fail                         a BOOL byte other than 0x00 / 0x01
``tensor.bad_scale``     fail (zeros in 8-bit block   a quantisation scale (:data:`SCALE_NAME`) that is
                         scales: warn)                negative, non-finite or zero
``tensor.all_zero``      fail unvouched, else warn    a whole tensor of zeros: >= :data:`ALL_ZERO_MIN_BYTES`,
                                                      or a weight matrix of >= :data:`ALL_ZERO_MIN_MATRIX_ELEMENTS`
                                                      elements; never BOOL, E8M0 or :data:`LEGIT_ZERO_NAME`
``tensor.zero_fill``     fail unvouched, else warn    >= ``zero_run_bytes`` consecutive zero bytes in the data
                                                      section, not explained by tensors reported above
``tensor.zero_rows``     warn                         all-zero rows of a float matrix (rank >= 2)
``tensor.zero_columns``  warn                         all-zero columns of a float matrix (rank >= 2)
``tensor.stats``         info                         with ``stats=True``: min/max/mean of finite values
``tensor.unchecked``     info                         a dtype this scan has no bit rules for
``tensor.read_error``    fail                         the bytes could not be read (file changed or vanished)
=======================  ===========================  ======================================================
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from vcache.checks.safetensors import SafetensorsHeader, TensorEntry
from vcache.report import Finding, fail, info, warn

__all__ = [
    "ALL_ZERO_MIN_BYTES",
    "ALL_ZERO_MIN_MATRIX_ELEMENTS",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_ZERO_RUN_BYTES",
    "INF_ALLOWED_NAME",
    "LEGIT_ZERO_NAME",
    "MAX_COLUMNS_CHECKED",
    "MAX_REPORTED_INDEXES",
    "MAX_ZERO_RUN_FINDINGS",
    "SCALE_NAME",
    "ZERO_GRANULE_BYTES",
    "TensorStream",
    "default_allow_inf",
    "scan_tensors",
]

DEFAULT_CHUNK_BYTES = 16 << 20
"""Bytes read per ``readinto`` call."""

DEFAULT_ZERO_RUN_BYTES = 1 << 20
"""A run of at least this many zero bytes in the data section is ``tensor.zero_fill``, aligned or not."""

ZERO_GRANULE_BYTES = 64 << 10
"""Zero runs are found as runs of all-zero granules of this size (absolute file offsets), then their ends are
refined to the exact byte, so an unaligned run of exactly :data:`DEFAULT_ZERO_RUN_BYTES` is still found."""

ALL_ZERO_MIN_BYTES = 1 << 20
"""An all-zero tensor at least this large is ``tensor.all_zero`` whatever its name (unless legitimately zero)."""

ALL_ZERO_MIN_MATRIX_ELEMENTS = 1024
"""Smaller tensors are ``tensor.all_zero`` only when they are weight matrices (rank >= 2, name ending in
``weight``) with at least this many elements; rank-1 tensors (biases, norms) under 1 MiB never are."""

MAX_REPORTED_INDEXES = 32
"""How many row / column / element indexes a finding lists (the count is always exact)."""

MAX_COLUMNS_CHECKED = 1 << 20
"""Matrices with more columns than this get no column check (it needs one accumulator per column)."""

MAX_ZERO_RUN_FINDINGS = 16
"""Zero runs beyond this many are summarised in one more finding."""

LEGIT_ZERO_NAME = re.compile(r"bias|norm|lora_b|lora_embedding_b|mask|position_ids|inv_freq", re.IGNORECASE)
"""Names of tensors that are legitimately all zero (biases, norms, LoRA B at initialisation, masks,
buffers): never ``tensor.all_zero``, no row/column check, and their bytes do not count as zero fill."""

INF_ALLOWED_NAME = re.compile(
    r"mask|alibi|(^|[._])(attn|attention|causal|masked)_bias($|[._])", re.IGNORECASE
)
""":func:`default_allow_inf`: masks and attention-bias buffers, which legitimately hold ``-inf``."""

SCALE_NAME = re.compile(r"weight_scale|scale_inv|input_scale", re.IGNORECASE)
"""Quantisation scales (FP8 ``weight_scale`` / ``weight_scale_inv``, ``input_scale``): must be finite and > 0."""

_EMBEDDING_NAME = re.compile(r"embed|wte|lm_head|(^|\.)shared\.weight$|(^|\.)output\.weight$", re.IGNORECASE)

_BLOCK_BYTES = 1 << 20
"""Each chunk is processed in blocks of about this size, so a block and its masked copy stay in L2."""

_AnyArray = npt.NDArray[Any]


def default_allow_inf(name: str) -> bool:
    """True for tensors allowed to hold ±Inf by default: masks and attention-bias buffers (:data:`INF_ALLOWED_NAME`).

    Causal masks and ALiBi / attention-bias buffers are stored with ``-inf`` on purpose; a weight is not.
    """
    return INF_ALLOWED_NAME.search(name) is not None


# --------------------------------------------------------------------------------------------------------
# Bit rules per dtype (docs/safetensors.md §4.2).


@dataclass(frozen=True)
class _Bits:
    """How one safetensors dtype is judged as raw little-endian unsigned integers ("units").

    The *key* of a unit is ``unit & mag_mask`` (the raw unit when ``mag_mask`` is None): for every dtype
    here a zero element has key 0, and a non-finite one has key >= ``nonfinite_min`` (of which exactly
    ``inf_key`` is ±Inf and the rest NaN). FNUZ types have one NaN pattern, ``nan_exact``, instead.
    """

    unit: np.dtype[Any]
    elem_bits: int
    mag_mask: int | None = None
    nonfinite_min: int | None = None
    inf_key: int | None = None
    nan_exact: int | None = None
    has_zero: bool = True
    is_float: bool = True
    is_bool: bool = False

    @property
    def unit_bytes(self) -> int:
        return self.unit.itemsize


_U1, _U2, _U4, _U8 = (np.dtype(f"<u{n}") for n in (1, 2, 4, 8))

_BITS: dict[str, _Bits] = {
    "F64": _Bits(_U8, 64, 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000, 0x7FF0_0000_0000_0000),
    "F32": _Bits(_U4, 32, 0x7FFF_FFFF, 0x7F80_0000, 0x7F80_0000),
    "F16": _Bits(_U2, 16, 0x7FFF, 0x7C00, 0x7C00),
    "BF16": _Bits(_U2, 16, 0x7FFF, 0x7F80, 0x7F80),
    # Two F32 halves per element: a unit is one half; an element is zero when both halves are.
    "C64": _Bits(_U4, 64, 0x7FFF_FFFF, 0x7F80_0000, 0x7F80_0000),
    "F8_E5M2": _Bits(_U1, 8, 0x7F, 0x7C, 0x7C),
    # = torch float8_e4m3fn: no Inf, NaN only at 0x7F / 0xFF (not ml_dtypes.float8_e4m3).
    "F8_E4M3": _Bits(_U1, 8, 0x7F, 0x7F),
    # FNUZ: 0x80 is the only NaN (not -0), 0x00 the only zero.
    "F8_E4M3FNUZ": _Bits(_U1, 8, nan_exact=0x80),
    "F8_E5M2FNUZ": _Bits(_U1, 8, nan_exact=0x80),
    # E8M0 has no zero (0x00 is 2^-127) and one NaN, 0xFF.
    "F8_E8M0": _Bits(_U1, 8, nonfinite_min=0xFF, has_zero=False),
    # Two E2M1 nibbles per byte; a byte is two zeros when both magnitudes are 0.
    "F4": _Bits(_U1, 4, 0x77),
    # Four 6-bit values per 3 bytes, bit order not standardised: only all-zero bytes count as zero.
    "F6_E2M3": _Bits(_U1, 6),
    "F6_E3M2": _Bits(_U1, 6),
    "BOOL": _Bits(_U1, 8, is_float=False, is_bool=True),
    "U8": _Bits(_U1, 8, is_float=False),
    "I8": _Bits(_U1, 8, is_float=False),
    "U16": _Bits(_U2, 16, is_float=False),
    "I16": _Bits(_U2, 16, is_float=False),
    "U32": _Bits(_U4, 32, is_float=False),
    "I32": _Bits(_U4, 32, is_float=False),
    "U64": _Bits(_U8, 64, is_float=False),
    "I64": _Bits(_U8, 64, is_float=False),
}


def _minifloat_table(exp_bits: int, man_bits: int, bias: int, *, kind: str) -> npt.NDArray[np.float64]:
    """Values of all 256 byte patterns of an 8-bit float (``kind``: ``ieee``, ``fn``, ``fnuz``)."""
    out = np.empty(256, np.float64)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        e = (b >> man_bits) & ((1 << exp_bits) - 1)
        m = b & ((1 << man_bits) - 1)
        e_max = (1 << exp_bits) - 1
        if kind == "fnuz" and b == 0x80:
            out[b] = math.nan
        elif kind == "ieee" and e == e_max:
            out[b] = sign * math.inf if m == 0 else math.nan
        elif kind == "fn" and e == e_max and m == (1 << man_bits) - 1:
            out[b] = math.nan
        elif e == 0:
            out[b] = sign * m * 2.0 ** (1 - bias - man_bits)
        else:
            out[b] = sign * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
    return out


def _e8m0_table() -> npt.NDArray[np.float64]:
    out = np.array([2.0 ** (e - 127) for e in range(256)], np.float64)
    out[0xFF] = math.nan
    return out


_BYTE_TABLES: dict[str, npt.NDArray[np.float64]] = {
    "F8_E5M2": _minifloat_table(5, 2, 15, kind="ieee"),
    "F8_E4M3": _minifloat_table(4, 3, 7, kind="fn"),
    "F8_E4M3FNUZ": _minifloat_table(4, 3, 8, kind="fnuz"),
    "F8_E5M2FNUZ": _minifloat_table(5, 2, 16, kind="fnuz"),
    "F8_E8M0": _e8m0_table(),
}
# E2M1, bias 1, no Inf/NaN: one entry per nibble.
_F4_TABLE = np.array([s * v for s in (1.0, -1.0) for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)], np.float64)


def _decode(dtype: str, u: _AnyArray) -> npt.NDArray[np.floating[Any]] | None:
    """Float values of a block of units (only for stats and scale checks; allocates a block-sized array)."""
    if dtype == "F64":
        return u.view("<f8")
    if dtype in ("F32", "C64"):
        return u.view("<f4")
    if dtype == "F16":
        return u.view("<f2").astype(np.float32)
    if dtype == "BF16":
        return (u.astype(np.uint32) << 16).view(np.float32)
    if dtype in _BYTE_TABLES:
        return _BYTE_TABLES[dtype][u]
    if dtype == "F4":
        return np.concatenate((_F4_TABLE[u & 0xF], _F4_TABLE[u >> 4]))
    return None


# --------------------------------------------------------------------------------------------------------
# Wording shared by findings.


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _describe(t: TensorEntry) -> str:
    return f"'{t.name}' ({t.dtype} {list(t.shape)})"


def _ranges(indexes: Sequence[int], total: int) -> str:
    """``[0, 1, 2, 7]`` → ``0-2, 7`` (with ``…`` when only the first of ``total`` are listed)."""
    parts: list[str] = []
    start = prev = -2
    for i in [*indexes, -2]:
        if i == prev + 1:
            prev = i
            continue
        if start >= 0:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    text = ", ".join(parts)
    return text + ", …" if total > len(indexes) else text


def _position(t: TensorEntry, flat: int) -> str:
    if len(t.shape) <= 1:
        return f"index {flat}"
    return f"flat index {flat}, {[int(i) for i in np.unravel_index(flat, t.shape)]}"


def _provenance(vouched: bool) -> str:
    if vouched:
        return (
            "The bytes match the publisher's digest, so the publisher shipped them this way and downloading "
            "again cannot help; check with the publisher before using this file."
        )
    return (
        "No publisher digest vouched for these bytes, so transport or disk damage is the likely cause: "
        "re-download the file with vcache pull (if the same bytes come back, the publisher shipped them)."
    )


def _zero_verdict(vouched: bool) -> Callable[..., Finding]:
    return warn if vouched else fail


# --------------------------------------------------------------------------------------------------------
# Per-tensor state.


@dataclass
class _Hits:
    """A count of matching elements and the first few flat indexes."""

    count: int = 0
    first: list[int] = field(default_factory=list)

    def add(self, flat_indexes: npt.NDArray[np.intp]) -> None:
        self.count += int(flat_indexes.size)
        room = MAX_REPORTED_INDEXES - len(self.first)
        if room > 0:
            self.first.extend(int(i) for i in flat_indexes[:room])


class _ZeroLines:
    """All-zero rows and columns of a matrix viewed as ``[rows, row_units]`` units, fed in order.

    Keeps the zero rows found so far, the running maximum of a row split across blocks, and a per-column
    running maximum (O(columns)); once every column has been seen non-zero the column work stops.
    """

    def __init__(self, row_units: int, lanes: int, unit: np.dtype[Any], check_columns: bool) -> None:
        self.row_units = row_units
        self.lanes = lanes
        self.rows = _Hits()
        self._row_max = 0
        self._col_max: _AnyArray | None = np.zeros(row_units, unit) if check_columns else None
        self._col_block: _AnyArray | None = np.empty(row_units, unit) if check_columns else None

    def feed(self, u0: int, key: _AnyArray, has_zero: bool) -> None:
        """Account units ``[u0, u0 + key.size)``; ``has_zero`` is False when no key in the block is 0."""
        width = self.row_units
        row, col = divmod(u0, width)
        n = key.size
        i = 0
        if col:  # finish a row begun in an earlier block
            i = min(width - col, n)
            self._partial(col, key[:i], has_zero)
            if col + i == width:
                self._end_row(row)
                row += 1
        full = (n - i) // width
        if full:
            rows = key[i : i + full * width].reshape(full, width)
            if has_zero:
                self.rows.add(row + np.flatnonzero(np.maximum.reduce(rows, axis=1) == 0))
                if self._col_max is not None and self._col_block is not None:
                    np.maximum.reduce(rows, axis=0, out=self._col_block)
                    np.maximum(self._col_max, self._col_block, out=self._col_max)
                    if self._col_max.min():
                        self._col_max = self._col_block = None
            else:  # every element non-zero: no zero row here, and every column has a non-zero
                self._col_max = self._col_block = None
            row += full
            i += full * width
        if i < n:  # begin a row that continues in the next block
            self._row_max = 0
            self._partial(0, key[i:], has_zero)

    def _partial(self, col: int, seg: _AnyArray, has_zero: bool) -> None:
        self._row_max = max(self._row_max, int(seg.max()) if has_zero else 1)
        if self._col_max is not None:
            cols = self._col_max[col : col + seg.size]
            if has_zero:
                np.maximum(cols, seg, out=cols)
            else:
                cols[:] = 1

    def _end_row(self, row: int) -> None:
        if self._row_max == 0:
            self.rows.add(np.array([row], np.intp))
        self._row_max = 0

    def zero_columns(self) -> _Hits:
        """The columns (elements, not units) that never held a non-zero value."""
        hits = _Hits()
        if self._col_max is not None:
            per_col = self._col_max.reshape(-1, self.lanes).max(axis=1)
            hits.add(np.flatnonzero(per_col == 0))
        return hits


@dataclass
class _Stats:
    minimum: float = math.inf
    maximum: float = -math.inf
    total: float = 0.0
    finite: int = 0
    zeros: int = 0

    def add(self, values: npt.NDArray[np.floating[Any]], *, all_finite: bool) -> None:
        finite = values if all_finite else values[np.isfinite(values)]
        if finite.size:
            self.minimum = min(self.minimum, float(finite.min()))
            self.maximum = max(self.maximum, float(finite.max()))
            self.total += float(finite.sum(dtype=np.float64))
            self.finite += int(finite.size)
            self.zeros += int(np.count_nonzero(finite == 0))


@dataclass
class _ScaleCheck:
    zero: _Hits = field(default_factory=_Hits)
    negative: _Hits = field(default_factory=_Hits)
    nonfinite: _Hits = field(default_factory=_Hits)

    def add(self, values: npt.NDArray[np.floating[Any]], e0: int) -> None:
        if not np.all(values > 0) or np.isinf(values).any():
            self.zero.add(e0 + np.flatnonzero(values == 0))
            self.negative.add(e0 + np.flatnonzero(values < 0))
            self.nonfinite.add(e0 + np.flatnonzero(~np.isfinite(values)))


class _TensorScan:
    """The checks for one tensor, fed block by block in order."""

    def __init__(self, t: TensorEntry, bits: _Bits, *, stats: bool) -> None:
        self.t = t
        self.bits = bits
        self.nonzero = False
        self.nan = _Hits()
        self.inf = _Hits()
        self.bool_bad = _Hits()
        self.bool_values: set[int] = set()
        self.is_scale = bits.is_float and SCALE_NAME.search(t.name) is not None
        self.scale = _ScaleCheck() if self.is_scale and bits.elem_bits >= 8 and t.dtype != "C64" else None
        self.stats = _Stats() if stats and bits.is_float and t.dtype not in ("F6_E2M3", "F6_E3M2") else None
        self._mask = None if bits.mag_mask is None else bits.unit.type(bits.mag_mask)
        self.lines = self._lines()
        # Units per element (C64: 2) or elements per unit (F4: 2), for turning unit offsets into indexes.
        self._elem_num, self._elem_den = (bits.unit_bytes * 8, bits.elem_bits)

    def _lines(self) -> _ZeroLines | None:
        t, bits = self.t, self.bits
        if not (bits.is_float and bits.has_zero) or self.is_scale or LEGIT_ZERO_NAME.search(t.name):
            return None
        if len(t.shape) < 2:
            return None
        rows, cols = t.shape[0], math.prod(t.shape[1:])
        if rows < 2 or cols < 2 or (cols * bits.elem_bits) % (bits.unit_bytes * 8):
            return None
        row_units = cols * bits.elem_bits // (bits.unit_bytes * 8)
        whole_units = bits.elem_bits % (bits.unit_bytes * 8) == 0
        lanes = bits.elem_bits // (bits.unit_bytes * 8) if whole_units else 1
        check_columns = whole_units and cols <= MAX_COLUMNS_CHECKED
        return _ZeroLines(row_units, lanes, bits.unit, check_columns)

    @property
    def row_bytes(self) -> int | None:
        """Bytes per row when rows are checked (blocks are cut on row boundaries when a row fits)."""
        return None if self.lines is None else self.lines.row_units * self.bits.unit_bytes

    def element(self, unit_index: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """Flat element indexes of (sorted) unit indexes, each element once (C64 has two units each)."""
        elements = unit_index * self._elem_num // self._elem_den
        return np.unique(elements) if self._elem_num < self._elem_den else elements

    def feed(self, u0: int, u: _AnyArray, scratch: _AnyArray, flags: npt.NDArray[np.bool_]) -> bool:
        """Judge units ``[u0, u0 + u.size)``; True when some unit key is zero (a zero-byte run may be here)."""
        bits = self.bits
        if self._mask is None:
            key = u
        else:
            key = scratch.view(bits.unit)[: u.size]
            np.bitwise_and(u, self._mask, out=key)
        top = int(key.max())
        if top:
            self.nonzero = True
        nonfinite = False
        if bits.nonfinite_min is not None and top >= bits.nonfinite_min:
            nonfinite = True
            at = np.flatnonzero(key >= bits.nonfinite_min)
            if bits.inf_key is None:
                self.nan.add(self.element(u0 + at))
            else:
                is_inf = key[at] == bits.inf_key
                self.inf.add(self.element(u0 + at[is_inf]))
                self.nan.add(self.element(u0 + at[~is_inf]))
        if bits.nan_exact is not None:
            hit = flags[: u.size]
            np.equal(u, bits.nan_exact, out=hit)
            if hit.any():
                nonfinite = True
                self.nan.add(self.element(u0 + np.flatnonzero(hit)))
        if bits.is_bool and top > 1:
            at = np.flatnonzero(u > 1)
            self.bool_bad.add(u0 + at)
            if len(self.bool_values) < 8:
                self.bool_values.update(int(v) for v in np.unique(u[at])[:8])
        has_zero = int(key.min()) == 0
        if self.lines is not None:
            self.lines.feed(u0, key, has_zero)
        if self.stats is not None or self.scale is not None:
            values = _decode(self.t.dtype, u)
            if values is not None:
                if self.stats is not None:
                    self.stats.add(values, all_finite=not nonfinite)
                if self.scale is not None:
                    self.scale.add(values, u0)
        return has_zero

    @property
    def all_zero(self) -> bool:
        """Every element is zero (never for E8M0, which has no zero)."""
        return self.bits.has_zero and not self.nonzero

    def findings(self, *, vouched: bool, allow_inf: Callable[[str], bool]) -> list[Finding]:
        """What this tensor's scan found, worst first."""
        t, out = self.t, []
        what = _describe(t)
        if self.nan.count:
            out.append(
                fail(
                    "tensor.nan",
                    f"tensor {what} holds {self.nan.count} NaN value(s), first at {_position(t, self.nan.first[0])}. "
                    "NaN spreads to every activation it touches. " + _provenance(vouched),
                    tensor=t.name,
                    count=self.nan.count,
                    first_index=self.nan.first[0],
                    indexes=self.nan.first,
                )
            )
        if self.inf.count:
            allowed = allow_inf(t.name)
            text = f"tensor {what} holds {self.inf.count} ±Inf value(s), first at {_position(t, self.inf.first[0])}. "
            if allowed:
                text += (
                    "Allowed by the Inf allow-list (by default masks and attention-bias buffers, which hold "
                    "-inf on purpose), so this is only a warning."
                )
            else:
                text += "A weight with Inf gives Inf/NaN activations. " + _provenance(vouched)
            out.append(
                (warn if allowed else fail)(
                    "tensor.inf",
                    text,
                    tensor=t.name,
                    count=self.inf.count,
                    first_index=self.inf.first[0],
                    indexes=self.inf.first,
                    allowed=allowed,
                )
            )
        if self.bool_bad.count:
            out.append(
                fail(
                    "tensor.bool_invalid",
                    f"BOOL tensor {what} holds {self.bool_bad.count} byte(s) that are neither 0 nor 1 "
                    f"(values {sorted(self.bool_values)}), first at {_position(t, self.bool_bad.first[0])}; "
                    "torch reads them as undefined booleans. " + _provenance(vouched),
                    tensor=t.name,
                    count=self.bool_bad.count,
                    first_index=self.bool_bad.first[0],
                    values=sorted(self.bool_values),
                )
            )
        out.extend(self._scale_findings(vouched))
        if _all_zero_applies(t, self) and not self.is_scale:
            out.append(
                _zero_verdict(vouched)(
                    "tensor.all_zero",
                    f"tensor {what}, {_fmt_bytes(t.nbytes)}, is entirely zero. " + _provenance(vouched),
                    tensor=t.name,
                    nbytes=t.nbytes,
                    shape=list(t.shape),
                    vouched=vouched,
                )
            )
        if self.lines is not None and self.nonzero:
            out.extend(self._line_findings(vouched))
        if self.stats is not None and self.stats.finite:
            s = self.stats
            mean = s.total / s.finite
            out.append(
                info(
                    "tensor.stats",
                    f"tensor {what}: min {s.minimum:.6g}, max {s.maximum:.6g}, mean {mean:.6g} "
                    f"over {s.finite} finite value(s), {s.zeros} zero(s).",
                    tensor=t.name,
                    min=s.minimum,
                    max=s.maximum,
                    mean=mean,
                    finite=s.finite,
                    zeros=s.zeros,
                )
            )
        return out

    def _scale_findings(self, vouched: bool) -> list[Finding]:
        t, sc = self.t, self.scale
        if sc is None:
            return []
        what = _describe(t)
        if t.dtype == "F8_E8M0" and not self.nonzero:
            return [
                fail(
                    "tensor.bad_scale",
                    f"scale tensor {what} is all 0x00 bytes (2^-127 in E8M0: zero-filled), which zeroes the "
                    "weight it scales. " + _provenance(vouched),
                    tensor=t.name,
                    zero=t.nbytes,
                    negative=0,
                    nonfinite=0,
                )
            ]
        if not (sc.zero.count or sc.negative.count or sc.nonfinite.count):
            return []
        # An all-zero block has scale 0 in 8-bit block-scaled formats (NVFP4), so zeros alone there only warn.
        zeros_only = not (sc.negative.count or sc.nonfinite.count)
        severity = warn if zeros_only and self.bits.elem_bits == 8 and self.nonzero else fail
        first = min(h.first[0] for h in (sc.zero, sc.negative, sc.nonfinite) if h.count)
        return [
            severity(
                "tensor.bad_scale",
                f"scale tensor {what} holds {sc.zero.count} zero, {sc.negative.count} negative and "
                f"{sc.nonfinite.count} non-finite value(s), first at {_position(t, first)}; a scale must be "
                "finite and > 0 (a zero scale zeroes what it scales, a non-finite one makes it NaN). "
                + _provenance(vouched),
                tensor=t.name,
                zero=sc.zero.count,
                negative=sc.negative.count,
                nonfinite=sc.nonfinite.count,
                first_index=first,
            )
        ]

    def _line_findings(self, vouched: bool) -> list[Finding]:
        assert self.lines is not None
        t = self.t
        what = _describe(t)
        matrix = [t.shape[0], math.prod(t.shape[1:])]
        embedding = _EMBEDDING_NAME.search(t.name) is not None
        if vouched:
            origin = "The file matches the publisher's digest, so these are as published."
        else:
            origin = (
                "No publisher digest vouched for the file: re-download it to rule out a damaged transfer."
            )
        out: list[Finding] = []
        rows = self.lines.rows
        if rows.count:
            if embedding:
                hazard = (
                    "Reserved or padding tokens are a common legitimate cause in embeddings and output heads; "
                    "they break only code that normalises rows (PEFT DoRA divides by the row norm)."
                )
            else:
                hazard = "PEFT DoRA divides by the weight's row norm; zero rows give NaN at adapter initialisation."
            out.append(
                warn(
                    "tensor.zero_rows",
                    f"tensor {what} has {rows.count} all-zero row(s) of {matrix[0]}: {_ranges(rows.first, rows.count)}. "
                    f"{hazard} {origin}",
                    tensor=t.name,
                    count=rows.count,
                    indexes=rows.first,
                    shape=list(t.shape),
                )
            )
        cols = self.lines.zero_columns()
        if cols.count:
            out.append(
                warn(
                    "tensor.zero_columns",
                    f"tensor {what} has {cols.count} all-zero column(s) of {matrix[1]}: "
                    f"{_ranges(cols.first, cols.count)}. The layer ignores those input features (in o_proj a "
                    "head_dim-wide block of them is a dead attention head), and weight-norm adapters that "
                    f"normalise per input channel divide by zero there. {origin}",
                    tensor=t.name,
                    count=cols.count,
                    indexes=cols.first,
                    shape=list(t.shape),
                )
            )
        return out


def _all_zero_applies(t: TensorEntry, scan: _TensorScan) -> bool:
    """Whether an all-zero tensor is damage worth reporting.

    Yes for tensors of at least :data:`ALL_ZERO_MIN_BYTES`, and for weight matrices (rank >= 2, name
    ending in ``weight``, e.g. ``o_proj.weight`` or ``qweight``) of at least
    :data:`ALL_ZERO_MIN_MATRIX_ELEMENTS` elements; never for BOOL, E8M0 (it has no zero) or names matching
    :data:`LEGIT_ZERO_NAME` (biases, norms, LoRA B, masks, buffers).
    """
    if not scan.all_zero or scan.bits.is_bool or LEGIT_ZERO_NAME.search(t.name):
        return False
    if t.nbytes >= ALL_ZERO_MIN_BYTES:
        return True
    is_matrix = len(t.shape) >= 2 and t.name.lower().endswith("weight")
    return is_matrix and math.prod(t.shape) >= ALL_ZERO_MIN_MATRIX_ELEMENTS


# --------------------------------------------------------------------------------------------------------
# Zero runs on raw bytes, across tensor boundaries.


class _ZeroRuns:
    """Runs of all-zero granules (aligned on absolute file offsets), fed as consecutive byte ranges.

    A granule split across blocks is zero only if every piece is. Runs of at least ``min_granules`` are
    candidates; their exact ends are found afterwards by reading the neighbouring bytes.
    """

    def __init__(self, granule: int, min_granules: int) -> None:
        self.granule = granule
        self.min_granules = min_granules
        self.candidates: list[tuple[int, int]] = []
        self._pos = -1
        self._pending: tuple[int, bool] | None = None
        self._run: tuple[int, int] | None = None

    def feed(self, start: int, raw: npt.NDArray[np.uint8], may_have_zeros: bool) -> None:
        """Account the bytes ``raw`` at absolute offset ``start``; ``may_have_zeros=False`` promises that
        every whole unit in ``raw`` is non-zero, so no whole granule inside it can be zero."""
        g = self.granule
        end = start + raw.size
        if start != self._pos:  # first feed, or a hole / overlap in the layout: do not join across it
            self._flush_pending()
            self._close()
        self._pos = end
        g0, g_last = start // g, (end - 1) // g
        if g0 == g_last:
            flags = np.array([not raw.any()])
        else:
            head, tail = (g0 + 1) * g - start, g_last * g - start
            if may_have_zeros:
                middle = np.maximum.reduce(raw[head:tail].reshape(-1, g), axis=1) == 0
            else:
                middle = np.zeros((tail - head) // g, bool)
            flags = np.concatenate(([not raw[:head].any()], middle, [not raw[tail:].any()]))
        if self._pending is not None:
            pending_g, pending_zero = self._pending
            self._pending = None
            if pending_g == g0:
                flags[0] &= pending_zero
            else:
                self._commit(pending_g, np.array([pending_zero]))
        if end % g:
            self._pending = (g_last, bool(flags[-1]))
            flags = flags[:-1]
        self._commit(g0, flags)

    def finish(self) -> list[tuple[int, int]]:
        """Close the last run; the candidate runs as ``(first_granule, end_granule)``."""
        self._flush_pending()
        self._close()
        return self.candidates

    def _flush_pending(self) -> None:
        if self._pending is not None:
            pending_g, pending_zero = self._pending
            self._pending = None
            self._commit(pending_g, np.array([pending_zero]))

    def _commit(self, g0: int, zero: npt.NDArray[np.bool_]) -> None:
        if not zero.size:
            return
        if not zero.any():
            self._close()
            return
        edges = np.flatnonzero(np.diff(np.concatenate(([0], zero.view(np.int8), [0]))))
        for s, e in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            if self._run is not None and self._run[1] == g0 + s:
                self._run = (self._run[0], g0 + e)
            else:
                self._close()
                self._run = (g0 + s, g0 + e)
            if e < zero.size:
                self._close()

    def _close(self) -> None:
        if self._run is not None and self._run[1] - self._run[0] >= self.min_granules:
            self.candidates.append(self._run)
        self._run = None


# --------------------------------------------------------------------------------------------------------
# The pass over the file.


class _ReadError(Exception):
    pass


def _read_error(exc: BaseException) -> Finding:
    return fail(
        "tensor.read_error",
        f"could not read the tensor data ({exc}); the file changed or vanished during the scan. "
        "Check it again once nothing is writing to it, or re-download it with vcache pull.",
        error=str(exc),
    )


def _atom(bits: _Bits) -> int:
    """The smallest byte count blocks are cut in: a unit, or a whole C64 element (two units)."""
    return math.lcm(bits.unit_bytes, max(1, bits.elem_bits // 8))


class _FileScan:
    def __init__(
        self,
        f: io.FileIO | None,
        header: SafetensorsHeader,
        *,
        vouched: bool,
        allow_inf: Callable[[str], bool],
        stats: bool,
        chunk_bytes: int,
        zero_run_bytes: int,
    ) -> None:
        self.f = f
        self.header = header
        self.vouched = vouched
        self.allow_inf = allow_inf
        self.stats = stats
        self.chunk_bytes = chunk_bytes
        self.zero_run_bytes = zero_run_bytes
        self.tensors = sorted(header.tensors, key=lambda t: (t.begin, t.end))
        self.block_bytes = min(_BLOCK_BYTES, chunk_bytes) // 8 * 8
        self._buffer: npt.NDArray[np.uint8] | None = None  # pull mode only
        self.scratch = np.empty(self.block_bytes, np.uint8)
        self.flags = np.empty(self.block_bytes, np.bool_)
        granule = ZERO_GRANULE_BYTES
        while granule > 1 and granule * 2 > zero_run_bytes:
            granule //= 2
        # An unaligned run of R >= 2 * granule bytes holds at least R // granule - 1 whole granules.
        self.runs = _ZeroRuns(granule, max(1, zero_run_bytes // granule - 1))
        self.explained: list[tuple[int, int]] = []  # absolute ranges of zero tensors already accounted for
        self.findings: list[Finding] = []
        self._scan: _TensorScan | None = None

    def run(self) -> list[Finding]:
        """Pull mode: read every tensor's bytes from the file, then refine the zero runs."""
        start = self.header.data_start
        try:
            for t in self.tensors:
                step = self.begin_tensor(t)
                if step is None:
                    continue
                for off, raw in self._blocks(start + t.begin, t.nbytes, step):
                    self.block(t, off, raw)
        except (OSError, _ReadError) as exc:
            return [*self.findings, _read_error(exc)]  # what the tensors read so far showed, and why it stops
        return self.finish()

    # One tensor at a time, in offset order, fed in blocks of the step ``begin_tensor`` returns (the last
    # block of a tensor may be shorter). Both the pull mode above and :class:`TensorStream` drive these.

    def begin_tensor(self, t: TensorEntry) -> int | None:
        """Start tensor ``t``; the block size to feed it in, or ``None`` when it has no bytes."""
        self._scan = None
        if t.nbytes <= 0:
            return None
        bits = _BITS.get(t.dtype)
        if bits is None or t.nbytes % _atom(bits):
            why = (
                "a dtype this scan has no bit rules for"
                if bits is None
                else "a byte length that is not a whole number of elements"
            )
            self.findings.append(
                info(
                    "tensor.unchecked",
                    f"tensor {_describe(t)} has {why}; its values were not checked (only zero-byte "
                    "runs were).",
                    tensor=t.name,
                )
            )
            return self.block_bytes  # only the zero-run accounting sees these bytes
        self._scan = _TensorScan(t, bits, stats=self.stats)
        return self._step(bits, self._scan.row_bytes)

    def block(self, t: TensorEntry, off: int, raw: npt.NDArray[np.uint8]) -> None:
        """Judge bytes ``[off, off + raw.size)`` of tensor ``t`` (relative to its first byte)."""
        where = self.header.data_start + t.begin + off
        scan = self._scan
        if scan is None:
            self.runs.feed(where, raw, True)
            return
        units = raw.view(scan.bits.unit)
        may_have_zeros = scan.feed(off // scan.bits.unit_bytes, units, self.scratch, self.flags)
        self.runs.feed(where, raw, may_have_zeros)
        if off + raw.size >= t.nbytes:
            self._end_tensor(t, scan)

    def _end_tensor(self, t: TensorEntry, scan: _TensorScan) -> None:
        tensor_findings = scan.findings(vouched=self.vouched, allow_inf=self.allow_inf)
        self.findings.extend(tensor_findings)
        accounted = any(f.code in ("tensor.all_zero", "tensor.bad_scale") for f in tensor_findings)
        if not scan.nonzero and (accounted or LEGIT_ZERO_NAME.search(t.name)):
            start = self.header.data_start
            self.explained.append((start + t.begin, start + t.end))
        self._scan = None

    def finish(self) -> list[Finding]:
        """Every tensor has been fed: the findings, zero runs refined against the file (``self.f``)."""
        try:
            runs = self._run_findings(self.runs.finish())
        except (OSError, _ReadError) as exc:
            return [*self.findings, _read_error(exc)]
        return [*self.findings, *runs]

    def _step(self, bits: _Bits, row_bytes: int | None) -> int:
        """Block size for a tensor: whole rows when a row fits in a block, else whole elements."""
        atom = _atom(bits)
        if row_bytes is not None and row_bytes <= self.block_bytes:
            return self.block_bytes // row_bytes * row_bytes
        return max(atom, self.block_bytes // atom * atom)

    def _blocks(self, begin: int, nbytes: int, step: int) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
        """``(offset, bytes)`` blocks of ``step`` bytes (the last may be shorter), read a chunk at a time."""
        chunk = step * max(1, self.chunk_bytes // step)
        if self._buffer is None:
            self._buffer = np.empty(self.chunk_bytes, np.uint8)
        buffer = self._buffer
        pos = 0
        while pos < nbytes:
            want = min(chunk, nbytes - pos)
            self._read_exact(begin + pos, buffer[:want])
            for b in range(0, want, step):
                yield pos + b, buffer[b : min(b + step, want)]
            pos += want

    def _read_exact(self, offset: int, out: npt.NDArray[np.uint8]) -> None:
        if self.f is None:
            raise _ReadError("no file to read from")
        self.f.seek(offset)
        view = out.data
        got = 0
        while got < out.size:
            n = self.f.readinto(view[got:])
            if not n:
                raise _ReadError(
                    f"file ends at byte {offset + got}, expected data up to byte {offset + out.size}"
                )
            got += n

    def _read(self, offset: int, n: int) -> npt.NDArray[np.uint8]:
        out = np.empty(n, np.uint8)
        self._read_exact(offset, out)
        return out

    def _exact_run(self, g_start: int, g_end: int, granule: int) -> tuple[int, int]:
        """Widen a run of zero granules to its exact zero-byte extent inside the data section."""
        lo_limit = self.header.data_start
        hi_limit = self.header.data_start + max((t.end for t in self.tensors), default=0)
        lo = max(lo_limit, g_start * granule)
        while lo > lo_limit:
            prev = max(lo_limit, lo - granule)
            nz = np.flatnonzero(self._read(prev, lo - prev))
            if nz.size:
                lo = prev + int(nz[-1]) + 1
                break
            lo = prev
        hi = min(hi_limit, g_end * granule)
        while hi < hi_limit:
            nxt = min(hi_limit, hi + granule)
            nz = np.flatnonzero(self._read(hi, nxt - hi))
            if nz.size:
                hi += int(nz[0])
                break
            hi = nxt
        return lo, hi

    def _run_findings(self, candidates: list[tuple[int, int]]) -> list[Finding]:
        runs: list[tuple[int, int]] = []
        for g_start, g_end in candidates:
            lo, hi = self._exact_run(g_start, g_end, self.runs.granule)
            explained = sum(max(0, min(hi, e) - max(lo, b)) for b, e in self.explained)
            if hi - lo >= self.zero_run_bytes and hi - lo - explained >= self.zero_run_bytes:
                runs.append((lo, hi))
        verdict = _zero_verdict(self.vouched)
        out: list[Finding] = []
        base = self.header.data_start
        for lo, hi in runs[:MAX_ZERO_RUN_FINDINGS]:
            covered = [t for t in self.tensors if base + t.begin < hi and base + t.end > lo]
            names = [t.name for t in covered]
            listed = ", ".join(f"'{n}'" for n in names[:4]) + (
                f" and {len(names) - 4} more" if len(names) > 4 else ""
            )
            out.append(
                verdict(
                    "tensor.zero_fill",
                    f"bytes {lo}-{hi} of the file ({_fmt_bytes(hi - lo)}) are all zero, inside tensor(s) {listed}. "
                    "A zero-filled byte range is the signature of a failed write or a damaged transfer. "
                    + _provenance(self.vouched),
                    tensor=names[0] if names else None,
                    offset=lo,
                    end=hi,
                    length=hi - lo,
                    tensors=names[:MAX_REPORTED_INDEXES],
                    tensor_count=len(names),
                    vouched=self.vouched,
                )
            )
        if len(runs) > MAX_ZERO_RUN_FINDINGS:
            rest = runs[MAX_ZERO_RUN_FINDINGS:]
            out.append(
                verdict(
                    "tensor.zero_fill",
                    f"{len(rest)} more zero-filled byte run(s), {_fmt_bytes(sum(hi - lo for lo, hi in rest))} in all. "
                    + _provenance(self.vouched),
                    runs=len(rest),
                    length=sum(hi - lo for lo, hi in rest),
                    vouched=self.vouched,
                )
            )
        return out


def open_for_scan(path: str | Path) -> io.FileIO | Finding:
    """``path`` opened unbuffered for a chunked ``readinto`` scan, or the ``tensor.read_error`` finding that
    says it could not be opened (the caller closes the file)."""
    try:
        return open(path, "rb", buffering=0)
    except OSError as exc:
        return fail(
            "tensor.read_error",
            f"could not open {path} to check its tensors ({exc}); re-download it with vcache pull.",
            error=str(exc),
        )


def scan_tensors(
    path: str | Path,
    header: SafetensorsHeader,
    *,
    vouched: bool,
    allow_inf: Callable[[str], bool] | None = None,
    stats: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    zero_run_bytes: int = DEFAULT_ZERO_RUN_BYTES,
) -> list[Finding]:
    """Check every tensor's values in one chunked pass over the data section of ``path``.

    ``header`` is the file's structurally valid header. ``vouched`` says whether a publisher digest matched
    these bytes: zero-fill damage (``tensor.all_zero``, ``tensor.zero_fill``) fails when it did not and
    only warns when it did, since downloading the publisher's bytes again cannot help. ``allow_inf(name)``
    turns ±Inf in that tensor from a failure into a warning (default :func:`default_allow_inf`). With
    ``stats`` each float tensor gets an info finding with min/max/mean of its finite values (this decodes
    every block to floats and runs at roughly a third of the plain scan's speed).

    Memory is one ``chunk_bytes`` buffer plus O(columns) per matrix, whatever the file size. Returns the
    findings (see the module docstring for codes and severities); never raises on bad data.
    """
    if chunk_bytes < 8:
        raise ValueError(f"chunk_bytes must be at least 8, got {chunk_bytes}")
    if zero_run_bytes < 1:
        raise ValueError(f"zero_run_bytes must be positive, got {zero_run_bytes}")
    f = open_for_scan(path)
    if isinstance(f, Finding):
        return [f]
    with f:
        scan = _FileScan(
            f,
            header,
            vouched=vouched,
            allow_inf=allow_inf or default_allow_inf,
            stats=stats,
            chunk_bytes=chunk_bytes,
            zero_run_bytes=zero_run_bytes,
        )
        return scan.run()


class TensorStream:
    """The checks of :func:`scan_tensors`, fed the file's bytes in order instead of reading them.

    For a file that is read anyway (a download being hashed), this makes the content scan ride on that
    read: no second pass over the data, no buffer of its own (blocks are judged in place in the caller's
    buffer; only a block split between two feeds is copied, into one block-sized carry buffer), and the
    verdict is ready moments after the last byte. Blocks are cut exactly as in :func:`scan_tensors`, so
    the findings are the same. The only reads it makes are at :meth:`finish`, to find the exact ends of
    zero runs.

    ``feed`` takes consecutive byte ranges of the file (bytes before and between tensors are skipped);
    it raises ``ValueError`` when fed out of order or when the header's tensors overlap (a header that
    passed the structure check never does): the caller then scans the file instead.
    """

    #: The scan the fed blocks go to; a format with block rules of its own (GGUF) substitutes a subclass.
    _scan_type: ClassVar[type[_FileScan]] = _FileScan

    def __init__(
        self,
        header: SafetensorsHeader,
        *,
        vouched: bool,
        allow_inf: Callable[[str], bool] | None = None,
        stats: bool = False,
        zero_run_bytes: int = DEFAULT_ZERO_RUN_BYTES,
    ) -> None:
        self._scan = self._scan_type(
            None,
            header,
            vouched=vouched,
            allow_inf=allow_inf or default_allow_inf,
            stats=stats,
            chunk_bytes=DEFAULT_CHUNK_BYTES,
            zero_run_bytes=zero_run_bytes,
        )
        self._tensors = [t for t in self._scan.tensors if t.nbytes > 0]
        for a, b in zip(self._tensors, self._tensors[1:], strict=False):
            if b.begin < a.end:
                raise ValueError("tensors overlap: scan the file instead")
        self._base = header.data_start
        self._index = 0  # the tensor being fed
        self._step: int | None = None  # its block size (None: not begun)
        self._done = 0  # bytes of it fed so far, carried ones included
        self._carry: npt.NDArray[np.uint8] | None = None
        self._carried = 0
        self._pos: int | None = None  # the file offset the next feed must start at

    @property
    def complete(self) -> bool:
        """Every tensor byte has been fed."""
        return self._index >= len(self._tensors)

    def feed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Judge the file bytes ``[offset, offset + len(data))``; ``offset`` continues the previous feed."""
        if self._pos is not None and offset != self._pos:
            raise ValueError(f"fed at byte {offset}, expected byte {self._pos}")
        arr = np.frombuffer(data, np.uint8)
        self._pos = offset + arr.size
        i = 0
        while i < arr.size and self._index < len(self._tensors):
            t = self._tensors[self._index]
            wanted = self._base + t.begin + self._done  # the file offset this tensor needs next
            here = offset + i
            if here < wanted:
                i += min(arr.size - i, wanted - here)  # the header, or bytes between tensors
                continue
            if here > wanted:
                raise ValueError(f"tensor {t.name!r} starts at byte {wanted}, before the bytes fed")
            if self._step is None:
                self._step = self._scan.begin_tensor(t) or 1
            i += self._take(t, self._step, arr[i:])
            if self._done >= t.nbytes and not self._carried:
                self._index += 1
                self._step = None
                self._done = 0

    def _take(self, t: TensorEntry, step: int, arr: npt.NDArray[np.uint8]) -> int:
        """Feed tensor ``t`` from ``arr`` (which starts at its next byte); return the bytes used."""
        used = 0
        if self._carried:  # complete the block begun in an earlier feed
            start = self._done - self._carried
            size = min(step, t.nbytes - start)
            take = min(size - self._carried, arr.size)
            assert self._carry is not None
            self._carry[self._carried : self._carried + take] = arr[:take]
            self._carried += take
            self._done += take
            used = take
            if self._carried < size:
                return used
            self._scan.block(t, start, self._carry[:size])
            self._carried = 0
        while used < arr.size and self._done < t.nbytes:
            size = min(step, t.nbytes - self._done)
            if arr.size - used < size:  # the block continues in the next feed: carry what is here
                if self._carry is None or self._carry.size < step:
                    self._carry = np.empty(step, np.uint8)
                left = arr.size - used
                self._carry[:left] = arr[used:]
                self._carried = left
                self._done += left
                return arr.size
            self._scan.block(t, self._done, arr[used : used + size])
            self._done += size
            used += size
        return used

    def finish(self, path: str | Path) -> list[Finding]:
        """The findings, once every tensor byte was fed; ``path`` (the same bytes) is read only to find
        the exact ends of zero runs. Never raises on bad data."""
        if not self.complete:
            raise ValueError("not every tensor byte was fed")
        try:
            with open(path, "rb", buffering=0) as f:
                self._scan.f = f
                return self._scan.finish()
        except OSError as exc:  # could not even open it
            return [*self._scan.findings, _read_error(exc)]
        finally:
            self._scan.f = None
