"""Tests for vcache.checks.tensors: the content scan on raw bits.

Files are written byte-exactly by a small local writer (numpy has no BF16/F8 dtypes), checked once against
the safetensors library, and their headers are read by a local JSON helper into the shared
``SafetensorsHeader`` type. Bit classifications are checked against two independent references: a decoder
written from the format definitions here, and torch's float8/bfloat16 dtypes when torch is installed.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcache.checks.safetensors import SafetensorsHeader, TensorEntry
from vcache.checks.tensors import (
    DEFAULT_ZERO_RUN_BYTES,
    ZERO_GRANULE_BYTES,
    TensorStream,
    default_allow_inf,
    scan_tensors,
)
from vcache.report import Finding, Severity

MiB = 1 << 20

# ------------------------------------------------------------------------------------------------------
# Writing and reading files.

Entry = tuple[str, str, Sequence[int], bytes]


def write_safetensors(path: Path, entries: Sequence[Entry], *, pad: bool = True) -> Path:
    """Write a safetensors file from raw tensor bytes, in the given order (offsets need not be aligned)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(e[3] for e in entries))
    return path


def header_of(path: Path) -> SafetensorsHeader:
    """The local stand-in for the strict parser: JSON-parse the header into the shared types."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = json.loads(f.read(n))
    tensors = tuple(
        sorted(
            (
                TensorEntry(k, v["dtype"], tuple(v["shape"]), v["data_offsets"][0], v["data_offsets"][1])
                for k, v in raw.items()
                if k != "__metadata__"
            ),
            key=lambda t: (t.begin, t.end),
        )
    )
    return SafetensorsHeader(n, tensors, raw.get("__metadata__"), path.stat().st_size)


#: Feed sizes for the streamed scan: odd, tiny and large, so blocks straddle feeds in every way.
STREAM_FEEDS = (1, 7, 4096 + 3, 1 << 20, (1 << 20) + 5, 8 << 20, 100_003)


def streamed(path: Path, header: SafetensorsHeader, *, vouched: bool, **kw: Any) -> list[Finding]:
    """The push-mode scan (TensorStream), fed the whole file in irregular pieces."""
    stream = TensorStream(header, vouched=vouched, **kw)
    data = memoryview(path.read_bytes())
    pos, k = 0, 0
    while pos < len(data):
        n = STREAM_FEEDS[k % len(STREAM_FEEDS)]
        stream.feed(pos, data[pos : pos + n])
        pos, k = pos + n, k + 1
    return stream.finish(path)


def scan(path: Path, *, vouched: bool = False, **kw: Any) -> list[Finding]:
    """The pull-mode scan; every test through here also checks that the streamed scan finds the same."""
    header = header_of(path)
    found = scan_tensors(path, header, vouched=vouched, **kw)
    kw.pop("chunk_bytes", None)  # the stream's blocks do not depend on a chunk size
    assert streamed(path, header, vouched=vouched, **kw) == found
    return found


def detail(f: Finding) -> Mapping[str, Any]:
    assert f.detail is not None, f
    return f.detail


def problems(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is not Severity.INFO]


def only(findings: Sequence[Finding], code: str, tensor: str | None = None) -> Finding:
    hits = [f for f in findings if f.code == code and (tensor is None or f.tensor == tensor)]
    assert len(hits) == 1, f"expected one {code} for {tensor}, got {[(f.code, f.tensor) for f in findings]}"
    return hits[0]


# ------------------------------------------------------------------------------------------------------
# Reference decoding, written from the format definitions (docs/safetensors.md §4.2), independent
# of vcache's tables.

UNIT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
BYTES = {
    "F16": 2,
    "BF16": 2,
    "F32": 4,
    "F64": 8,
    "C64": 8,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "F8_E8M0": 1,
}
FLOAT_DTYPES = list(BYTES)
SMALL_FLOATS = ["F16", "BF16", "F8_E5M2", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"]
# (exponent bits, mantissa bits, bias, flavour) of the 8-bit formats with a sign bit.
MINIFLOATS = {
    "F8_E5M2": (5, 2, 15, "ieee"),
    "F8_E4M3": (4, 3, 7, "fn"),
    "F8_E4M3FNUZ": (4, 3, 8, "fnuz"),
    "F8_E5M2FNUZ": (5, 2, 16, "fnuz"),
}


def ref_value(dtype: str, p: int) -> float:
    """The value of bit pattern ``p`` (8- and 16-bit dtypes)."""
    if dtype == "F16":
        return float(struct.unpack("<e", p.to_bytes(2, "little"))[0])
    if dtype == "BF16":
        return float(struct.unpack("<f", (p << 16).to_bytes(4, "little"))[0])
    if dtype == "F8_E8M0":
        return math.nan if p == 0xFF else math.ldexp(1.0, p - 127)
    e_bits, m_bits, bias, flavour = MINIFLOATS[dtype]
    negative = bool(p & 0x80)
    exp = (p & 0x7F) >> m_bits
    man = p & ((1 << m_bits) - 1)
    top = (1 << e_bits) - 1
    if flavour == "fnuz" and p == 0x80:
        return math.nan
    if flavour == "ieee" and exp == top:
        return math.nan if man else (-math.inf if negative else math.inf)
    if flavour == "fn" and exp == top and man == (1 << m_bits) - 1:
        return math.nan
    frac = man / (1 << m_bits)
    mag = math.ldexp(frac, 1 - bias) if exp == 0 else math.ldexp(1.0 + frac, exp - bias)
    return -mag if negative else mag


def ref_table(dtype: str) -> np.ndarray:
    return np.array([ref_value(dtype, p) for p in range(1 << (8 * BYTES[dtype]))])


def torch_table(dtype: str) -> np.ndarray:
    torch = pytest.importorskip("torch")
    kind = {
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F8_E5M2": torch.float8_e5m2,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
        "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
        "F8_E8M0": torch.float8_e8m0fnu,
    }[dtype]
    bits = torch.from_numpy(np.arange(1 << (8 * BYTES[dtype]), dtype=UNIT[BYTES[dtype]]))
    return np.asarray(bits.view(kind).double().numpy(), np.float64)


def finite_nonzero(dtype: str, n: int, rng: np.random.Generator) -> bytes:
    """``n`` random elements of ``dtype`` that are finite and non-zero, as raw bytes."""
    if dtype in ("F32", "F64", "C64"):
        f = np.float64 if dtype == "F64" else np.float32
        k = 2 * n if dtype == "C64" else n
        values = rng.standard_normal(k).astype(f)
        values[values == 0] = 1.0
        return values.tobytes()
    table = ref_table(dtype)
    good = np.flatnonzero(np.isfinite(table) & (table != 0))
    return rng.choice(good, n).astype(UNIT[BYTES[dtype]]).tobytes()


NAN = {
    "F16": 0x7E00,
    "BF16": 0xFFC1,
    "F32": 0x7FC00000,
    "F64": 0xFFF8000000000001,
    "C64": 0x7FC00000,
    "F8_E5M2": 0xFD,
    "F8_E4M3": 0xFF,
    "F8_E4M3FNUZ": 0x80,
    "F8_E5M2FNUZ": 0x80,
    "F8_E8M0": 0xFF,
}
INF = {
    "F16": 0xFC00,
    "BF16": 0x7F80,
    "F32": 0xFF800000,
    "F64": 0x7FF0000000000000,
    "C64": 0x7F800000,
    "F8_E5M2": 0x7C,
}
NEG_ZERO = {
    "F16": 0x8000,
    "BF16": 0x8000,
    "F32": 0x80000000,
    "F64": 1 << 63,
    "C64": 0x80000000,
    "F8_E5M2": 0x80,
    "F8_E4M3": 0x80,
}


class Matrix:
    """A [rows, cols] tensor of one float dtype as a mutable array of units (C64: two units per element)."""

    def __init__(self, dtype: str, rows: int, cols: int, seed: int = 0) -> None:
        self.dtype = dtype
        self.lanes = 2 if dtype == "C64" else 1
        unit = UNIT[BYTES[dtype] // self.lanes]
        raw = finite_nonzero(dtype, rows * cols, np.random.default_rng(seed))
        self.u = np.frombuffer(raw, unit).reshape(rows, cols * self.lanes).copy()

    def set(self, row: int | slice, col: int | slice, pattern: int, lane: int | None = None) -> None:
        if isinstance(col, int):
            start = col * self.lanes
            sel = slice(start, start + self.lanes) if lane is None else slice(start + lane, start + lane + 1)
        else:
            sel = slice(None)
            assert col == slice(None)
        self.u[row, sel] = pattern

    def entry(self, name: str) -> Entry:
        return (name, self.dtype, (self.u.shape[0], self.u.shape[1] // self.lanes), self.u.tobytes())


# ------------------------------------------------------------------------------------------------------
# The helpers themselves.


def test_writer_output_is_accepted_by_the_safetensors_library(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    path = write_safetensors(
        tmp_path / "m.safetensors",
        [Matrix(d, 4, 4).entry(f"t.{d}") for d in FLOAT_DTYPES] + [("odd", "U8", (3,), b"abc")],
    )
    with safetensors.safe_open(str(path), "np") as f:
        assert sorted(f.keys()) == sorted([f"t.{d}" for d in FLOAT_DTYPES] + ["odd"])


def test_header_helper_reads_files_from_the_safetensors_library(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"b": np.ones((2, 3), np.float32), "a": np.zeros(5, np.int64)}, str(tmp_path / "x.safetensors"))
    header = header_of(tmp_path / "x.safetensors")
    assert [t.name for t in header.tensors] == ["a", "b"]
    assert header.data_start + header.tensors[-1].end == header.file_size


def test_the_strict_parser_gives_the_same_header_and_findings(tmp_path: Path) -> None:
    from vcache.checks import safetensors as parser

    read_header = getattr(parser, "read_header", None)
    if read_header is None:
        pytest.skip("the strict header parser is not written yet")
    m = Matrix("BF16", 64, 64)
    m.set(3, slice(None), 0)
    m.set(5, 5, NAN["BF16"])
    path = write_safetensors(tmp_path / "m.safetensors", [m.entry("model.layers.0.self_attn.o_proj.weight")])
    header, header_findings = read_header(path)
    assert header is not None, header_findings
    assert (header.tensors, header.data_start) == (header_of(path).tensors, header_of(path).data_start)
    assert scan_tensors(path, header, vouched=False) == scan(path)


# ------------------------------------------------------------------------------------------------------
# Bit classification: every pattern of the 8- and 16-bit float types, through the public scan.


def classify_by_scan(tmp_path: Path, dtype: str) -> tuple[set[int], set[int], set[int]]:
    """NaN, Inf and zero patterns as the scan sees them.

    Patterns go 32 to a tensor (findings list up to 32 indexes, so every hit is named), and once more as
    the rows of a [patterns, 2] matrix whose zero rows are the zero patterns.
    """
    n = 1 << (8 * BYTES[dtype])
    unit = UNIT[BYTES[dtype]]
    patterns = np.arange(n, dtype=unit)
    entries: list[Entry] = [
        (f"p{k:05d}", dtype, (32,), patterns[k : k + 32].tobytes()) for k in range(0, n, 32)
    ]
    entries.append(("enum.weight", dtype, (n, 2), np.repeat(patterns, 2).tobytes()))
    findings = scan(write_safetensors(tmp_path / f"{dtype}.safetensors", entries))
    nan: set[int] = set()
    inf: set[int] = set()
    for f in findings:
        if f.tensor and f.tensor.startswith("p") and f.code in ("tensor.nan", "tensor.inf"):
            assert f.detail is not None and f.detail["count"] == len(f.detail["indexes"])
            base = int(f.tensor[1:])
            (nan if f.code == "tensor.nan" else inf).update(base + i for i in f.detail["indexes"])
    zero_rows = [f for f in findings if f.code == "tensor.zero_rows"]
    zero = set(zero_rows[0].detail["indexes"]) if zero_rows and zero_rows[0].detail else set()
    if zero_rows and zero_rows[0].detail:
        assert zero_rows[0].detail["count"] == len(zero)
    return nan, inf, zero


@pytest.mark.parametrize("reference", ["first-principles", pytest.param("torch", marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", SMALL_FLOATS)
def test_every_bit_pattern_is_classified_like_the_reference(
    tmp_path: Path, dtype: str, reference: str
) -> None:
    table = ref_table(dtype) if reference == "first-principles" else torch_table(dtype)
    nan, inf, zero = classify_by_scan(tmp_path, dtype)
    assert nan == set(np.flatnonzero(np.isnan(table)).tolist())
    assert inf == set(np.flatnonzero(np.isinf(table)).tolist())
    assert zero == set(np.flatnonzero(table == 0).tolist())


def test_reference_tables_agree_with_the_documented_counts() -> None:
    """§4's counts, as a check on the test's own decoder."""
    f16, bf16 = ref_table("F16"), ref_table("BF16")
    assert np.isnan(f16).sum() == 2046 and np.isnan(bf16).sum() == 254
    assert [int(np.isnan(ref_table(d)).sum()) for d in MINIFLOATS] == [6, 2, 1, 1]
    assert np.flatnonzero(np.isnan(ref_table("F8_E4M3"))).tolist() == [0x7F, 0xFF]
    assert np.nanmax(ref_table("F8_E4M3")) == 448 and np.nanmax(ref_table("F8_E4M3FNUZ")) == 240
    assert not (ref_table("F8_E8M0") == 0).any()


# ------------------------------------------------------------------------------------------------------
# Each float dtype: clean data, injected NaN / Inf, zero rows and columns, zero-filled ranges.


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_clean_random_data_gives_no_problem(tmp_path: Path, dtype: str) -> None:
    path = write_safetensors(
        tmp_path / "m.safetensors",
        [
            Matrix(dtype, 96, 80, seed=1).entry("model.layers.0.mlp.down_proj.weight"),
            Matrix(dtype, 7, 3).entry("x"),
        ],
    )
    findings = scan(path, stats=True)
    assert problems(findings) == []
    assert only(findings, "tensor.stats", "x").severity is Severity.INFO


@pytest.mark.parametrize("chunk_bytes", [16 * MiB, 200])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nan_is_reported_with_tensor_count_and_first_index(
    tmp_path: Path, dtype: str, chunk_bytes: int
) -> None:
    m = Matrix(dtype, 64, 48)
    m.set(5, 7, NAN[dtype])
    m.set(40, 0, NAN[dtype], lane=1 if dtype == "C64" else None)  # C64: the imaginary half alone
    path = write_safetensors(tmp_path / "m.safetensors", [("a", "U8", (3,), b"\1\2\3"), m.entry("w.weight")])
    f = only(scan(path, chunk_bytes=chunk_bytes), "tensor.nan", "w.weight")
    assert f.severity is Severity.FAIL
    assert f.detail is not None and f.detail["count"] == 2
    assert f.detail["indexes"] == [5 * 48 + 7, 40 * 48]
    assert "'w.weight'" in f.message and "[5, 7]" in f.message


@pytest.mark.parametrize("dtype", sorted(INF))
def test_inf_fails_in_weights_and_warns_in_masks(tmp_path: Path, dtype: str) -> None:
    m = Matrix(dtype, 16, 16)
    m.set(9, 1, INF[dtype])
    path = write_safetensors(tmp_path / "m.safetensors", [m.entry("w"), m.entry("model.causal_mask")])
    findings = scan(path)
    weight = only(findings, "tensor.inf", "w")
    assert weight.severity is Severity.FAIL and weight.detail is not None
    assert weight.detail["first_index"] == 9 * 16 + 1 and weight.detail["count"] == 1
    mask = only(findings, "tensor.inf", "model.causal_mask")
    assert mask.severity is Severity.WARN and "mask" in mask.message
    assert not [f for f in findings if f.code == "tensor.nan"]


def test_allow_inf_callable_replaces_the_default(tmp_path: Path) -> None:
    m = Matrix("F32", 4, 4)
    m.set(0, 0, INF["F32"])
    path = write_safetensors(tmp_path / "m.safetensors", [m.entry("attn_mask"), m.entry("buf.weight")])
    findings = scan(path, allow_inf=lambda name: name == "buf.weight")
    assert only(findings, "tensor.inf", "attn_mask").severity is Severity.FAIL
    assert only(findings, "tensor.inf", "buf.weight").severity is Severity.WARN
    assert default_allow_inf("model.layers.0.attn.masked_bias") and default_allow_inf("alibi_slopes")
    assert not default_allow_inf("model.layers.0.self_attn.o_proj.bias")


@pytest.mark.parametrize("chunk_bytes", [16 * MiB, 136, 40])
@pytest.mark.parametrize("dtype", [d for d in FLOAT_DTYPES if d != "F8_E8M0"])
def test_zero_rows_and_columns_are_located(tmp_path: Path, dtype: str, chunk_bytes: int) -> None:
    m = Matrix(dtype, 40, 24)
    m.set(3, slice(None), 0)
    m.set(17, slice(None), NEG_ZERO.get(dtype, 0))  # sign-only zeros are zeros in IEEE types
    m.set(slice(None), 11, 0)
    m.set(slice(None), 12, NEG_ZERO.get(dtype, 0))
    path = write_safetensors(tmp_path / "m.safetensors", [m.entry("enc.layer.0.proj.weight")])
    findings = scan(path, chunk_bytes=chunk_bytes)
    rows = only(findings, "tensor.zero_rows")
    assert rows.severity is Severity.WARN and rows.tensor == "enc.layer.0.proj.weight"
    assert rows.detail == {"count": 2, "indexes": [3, 17], "shape": [40, 24]}
    cols = only(findings, "tensor.zero_columns")
    assert cols.severity is Severity.WARN
    assert cols.detail == {"count": 2, "indexes": [11, 12], "shape": [40, 24]}
    assert "11-12" in cols.message and "3, 17" in rows.message
    assert problems(findings) == [rows, cols]


def test_negative_zero_is_not_zero_in_fnuz_types(tmp_path: Path) -> None:
    m = Matrix("F8_E4M3FNUZ", 8, 8)
    m.set(2, slice(None), 0x80)  # NaN in FNUZ, not -0
    findings = scan(write_safetensors(tmp_path / "m.safetensors", [m.entry("w.weight")]))
    assert detail(only(findings, "tensor.nan"))["count"] == 8
    assert not [f for f in findings if f.code == "tensor.zero_rows"]


def test_c64_element_is_zero_only_when_both_halves_are(tmp_path: Path) -> None:
    m = Matrix("C64", 6, 5)
    for c in range(5):
        m.set(1, c, 0, lane=0)  # real parts zero, imaginary parts not: not a zero row
        m.set(4, c, 0)
    m.set(slice(None), 2, 0)
    findings = scan(write_safetensors(tmp_path / "m.safetensors", [m.entry("c.weight")]))
    assert detail(only(findings, "tensor.zero_rows"))["indexes"] == [4]
    assert detail(only(findings, "tensor.zero_columns"))["indexes"] == [2]


def test_rank_above_two_is_viewed_as_first_dim_by_the_rest(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((6, 4, 3)).astype(np.float32)
    x[2] = 0
    x[:, 1, 2] = 0  # column 1*3 + 2 = 5 of the [6, 12] view
    entry = ("conv.weight", "F32", (6, 4, 3), x.tobytes())
    findings = scan(write_safetensors(tmp_path / "m.safetensors", [entry]))
    assert only(findings, "tensor.zero_rows").detail == {"count": 1, "indexes": [2], "shape": [6, 4, 3]}
    assert detail(only(findings, "tensor.zero_columns"))["indexes"] == [5]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_zero_filled_range_is_zero_fill_damage(tmp_path: Path, dtype: str) -> None:
    width = BYTES[dtype]
    name, _, shape, data = Matrix(dtype, 3 * 1024, 1024 // width).entry("w")
    raw = bytearray(data)
    start = 100_003  # not aligned to anything
    raw[start : start + MiB + 5] = bytes(MiB + 5)
    path = write_safetensors(
        tmp_path / "m.safetensors", [("first", "U8", (5,), b"\1" * 5), (name, dtype, shape, bytes(raw))]
    )
    at = header_of(path).data_start + 5 + start
    for vouched, severity in ((False, Severity.FAIL), (True, Severity.WARN)):
        f = only(scan(path, vouched=vouched), "tensor.zero_fill")
        assert f.severity is severity and f.tensor == "w"
        assert f.detail is not None
        # exact ends, possibly wider by zero bytes of the neighbouring (non-zero) elements
        assert at - width < f.detail["offset"] <= at
        assert at + MiB + 5 <= f.detail["end"] < at + MiB + 5 + width
        assert f.detail["tensors"] == ["w"] and f.detail["vouched"] is vouched
        assert ("downloading again cannot help" in f.message) is vouched


# ------------------------------------------------------------------------------------------------------
# Zero runs on raw bytes.


def _zero_run_file(tmp_path: Path, run_start: int, run_len: int, *, total: int = 3 * MiB) -> Path:
    """Two U8 tensors of random non-zero bytes with zeros at data-section bytes [run_start, +run_len)."""
    rng = np.random.default_rng(3)
    data = bytearray(rng.integers(1, 256, total, dtype=np.uint8).tobytes())
    data[run_start : run_start + run_len] = bytes(run_len)
    split = total // 2 + 7
    return write_safetensors(
        tmp_path / "z.safetensors",
        [
            ("a.qweight", "U8", (split,), bytes(data[:split])),
            ("b.qweight", "U8", (total - split,), bytes(data[split:])),
        ],
    )


@pytest.mark.parametrize("chunk_bytes", [16 * MiB, 64 * 1024 + 24, 5000])
@pytest.mark.parametrize("run_start", [0, 12_345, ZERO_GRANULE_BYTES * 3, 3 * MiB - DEFAULT_ZERO_RUN_BYTES])
def test_a_zero_run_of_exactly_the_threshold_is_found_with_exact_offsets(
    tmp_path: Path, run_start: int, chunk_bytes: int
) -> None:
    path = _zero_run_file(tmp_path, run_start, DEFAULT_ZERO_RUN_BYTES)
    header = header_of(path)
    f = only(scan_tensors(path, header, vouched=False, chunk_bytes=chunk_bytes), "tensor.zero_fill")
    assert f.detail is not None
    assert (f.detail["offset"], f.detail["length"]) == (header.data_start + run_start, DEFAULT_ZERO_RUN_BYTES)
    split = 3 * MiB // 2 + 7
    covers = [
        n
        for n, (b, e) in {"a.qweight": (0, split), "b.qweight": (split, 3 * MiB)}.items()
        if b < run_start + MiB and e > run_start
    ]
    assert f.detail["tensors"] == covers and f.tensor == covers[0]


def test_a_zero_run_one_byte_short_is_not_reported(tmp_path: Path) -> None:
    path = _zero_run_file(tmp_path, 70_001, DEFAULT_ZERO_RUN_BYTES - 1)
    assert problems(scan(path)) == []


def test_many_zero_runs_are_summarised(tmp_path: Path) -> None:
    data = bytearray(np.random.default_rng(0).integers(1, 256, 40 * 4096, dtype=np.uint8).tobytes())
    for k in range(20):
        data[k * 8192 : k * 8192 + 4096] = bytes(4096)
    path = write_safetensors(tmp_path / "z.safetensors", [("q", "U8", (len(data),), bytes(data))])
    findings = [f for f in scan(path, zero_run_bytes=4096) if f.code == "tensor.zero_fill"]
    assert len(findings) == 17
    assert findings[-1].detail is not None and findings[-1].detail["runs"] == 4


# ------------------------------------------------------------------------------------------------------
# All-zero tensors.


def test_all_zero_projection_weight_fails_unvouched_and_warns_vouched(tmp_path: Path) -> None:
    path = write_safetensors(
        tmp_path / "m.safetensors",
        [
            ("model.layers.0.self_attn.o_proj.weight", "BF16", (64, 64), bytes(64 * 64 * 2)),
            Matrix("F32", 4, 4).entry("x"),
        ],
    )
    unvouched = only(scan(path, vouched=False), "tensor.all_zero")
    assert (
        unvouched.severity is Severity.FAIL and unvouched.tensor == "model.layers.0.self_attn.o_proj.weight"
    )
    assert "re-download" in unvouched.message
    vouched = only(scan(path, vouched=True), "tensor.all_zero")
    assert vouched.severity is Severity.WARN and "downloading again cannot help" in vouched.message
    # the row/column checks leave an entirely zero tensor to all_zero
    assert not [f for f in scan(path) if f.code in ("tensor.zero_rows", "tensor.zero_columns")]


def test_sign_only_zeros_are_an_all_zero_tensor(tmp_path: Path) -> None:
    data = np.full(64 * 64, 0x8000, np.uint16).tobytes()
    path = write_safetensors(tmp_path / "m.safetensors", [("lm.down_proj.weight", "F16", (64, 64), data)])
    assert only(scan(path), "tensor.all_zero").severity is Severity.FAIL


def test_large_all_zero_tensor_of_any_rank_and_integer_weights(tmp_path: Path) -> None:
    path = write_safetensors(
        tmp_path / "m.safetensors",
        [("buffer_x", "F32", (MiB // 4,), bytes(MiB)), ("q.qweight", "I32", (32, 64), bytes(32 * 64 * 4))],
    )
    findings = scan(path)
    assert only(findings, "tensor.all_zero", "buffer_x").severity is Severity.FAIL
    assert only(findings, "tensor.all_zero", "q.qweight").severity is Severity.FAIL
    # the zero run covers only tensors already reported as all zero: not reported twice
    assert not [f for f in findings if f.code == "tensor.zero_fill"]


def test_legitimately_zero_tensors_do_not_trigger(tmp_path: Path) -> None:
    entries: list[Entry] = [
        (
            "base_model.model.layers.0.q_proj.lora_B.weight",
            "F32",
            (4096, 64),
            bytes(MiB),
        ),  # LoRA B at init, 1 MiB
        ("model.layers.0.mlp.down_proj.bias", "F32", (4096,), bytes(4 * 4096)),
        ("model.norm.weight", "BF16", (64,), bytes(128)),
        ("small.weight", "F32", (16, 16), bytes(1024)),  # under ALL_ZERO_MIN_MATRIX_ELEMENTS
        ("mx.block_exponents", "F8_E8M0", (64, 64), bytes(64 * 64)),  # E8M0: 0x00 is 2^-127, not zero
        ("attention_mask", "BOOL", (64, 64), bytes(64 * 64)),
        Matrix("F32", 8, 8).entry("w.weight"),
    ]
    findings = scan(write_safetensors(tmp_path / "m.safetensors", entries))
    assert problems(findings) == []


# ------------------------------------------------------------------------------------------------------
# BOOL, integers, scales, odd layouts.


def test_bool_bytes_other_than_zero_and_one_fail(tmp_path: Path) -> None:
    good = bytes([0, 1] * 8)
    bad = bytes([0, 1, 2, 1, 0, 255])
    path = write_safetensors(
        tmp_path / "m.safetensors", [("ok", "BOOL", (16,), good), ("bad", "BOOL", (2, 3), bad)]
    )
    findings = scan(path)
    f = only(findings, "tensor.bool_invalid")
    assert f.severity is Severity.FAIL and f.tensor == "bad"
    assert f.detail == {"count": 2, "first_index": 2, "values": [2, 255]}
    assert problems(findings) == [f]


def test_integer_tensors_have_no_nan_inf_or_line_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(-(2**31), 2**31, (32, 32), dtype=np.int32)
    q[4] = 0
    q[:, 1] = 0x7FC00000  # would be NaN as F32
    path = write_safetensors(tmp_path / "m.safetensors", [("q.qweight", "I32", (32, 32), q.tobytes())])
    assert problems(scan(path)) == []


def test_scale_tensors_must_be_positive_and_finite(tmp_path: Path) -> None:
    good = np.linspace(0.01, 2, 16, dtype=np.float32)
    zero = good.copy()
    zero[3] = 0
    negative = good.copy()
    negative[0] = -1
    e4m3_blocks = np.full(16, 0x38, np.uint8)
    e4m3_blocks[5] = 0x00  # an all-zero block has scale 0 in NVFP4: warn only
    entries: list[Entry] = [
        ("a.weight_scale", "F32", (16,), good.tobytes()),
        ("b.weight_scale", "F32", (16,), zero.tobytes()),
        ("c.weight_scale_inv", "F32", (4, 4), negative.tobytes()),
        ("d.weight_scale", "BF16", (1,), struct.pack("<H", 0x7FC0)),
        ("e.weight_scale", "F8_E4M3", (16,), e4m3_blocks.tobytes()),
        ("f.weight_scale", "F32", (1,), bytes(4)),
        ("g.weight_scale", "F8_E8M0", (8,), bytes([127] * 7 + [255])),
        ("h.weight_scale", "F8_E8M0", (4, 4), bytes(16)),  # all 0x00: 2^-127, a zero-filled scale
    ]
    findings = scan(write_safetensors(tmp_path / "m.safetensors", entries))
    bad = {f.tensor: f for f in findings if f.code == "tensor.bad_scale"}
    assert set(bad) == {f"{c}.weight_scale" for c in "bdefgh"} | {"c.weight_scale_inv"}
    assert (
        bad["b.weight_scale"].severity is Severity.FAIL and detail(bad["b.weight_scale"])["first_index"] == 3
    )
    assert detail(bad["c.weight_scale_inv"])["negative"] == 1
    assert detail(bad["d.weight_scale"])["nonfinite"] == 1
    assert bad["e.weight_scale"].severity is Severity.WARN
    assert bad["f.weight_scale"].severity is Severity.FAIL  # a zero per-tensor scale zeroes the weight
    assert bad["g.weight_scale"].severity is Severity.FAIL
    assert bad["h.weight_scale"].severity is Severity.FAIL and "zero-filled" in bad["h.weight_scale"].message
    assert not [f for f in findings if f.code == "tensor.all_zero"]  # f is a scale: bad_scale says it


def test_unaligned_tensor_data_is_read_correctly(tmp_path: Path) -> None:
    m = Matrix("F32", 8, 8)
    m.set(6, 5, NAN["F32"])
    m.set(2, slice(None), 0)
    path = write_safetensors(tmp_path / "m.safetensors", [("b", "U8", (3,), b"xyz"), m.entry("w.weight")])
    assert header_of(path).data_start % 8 == 0  # so the F32 data starts 3 bytes past an aligned offset
    findings = scan(path)
    assert detail(only(findings, "tensor.nan"))["first_index"] == 6 * 8 + 5
    assert detail(only(findings, "tensor.zero_rows"))["indexes"] == [2]


def test_sub_byte_types_get_all_zero_and_row_checks(tmp_path: Path) -> None:
    f4 = bytearray(np.full(64 * 32, 0x22, np.uint8).tobytes())  # [64, 64] F4: 32 bytes a row
    f4[5 * 32 : 6 * 32] = bytes([0x88] * 32)  # sign-only zeros in both nibbles
    f6 = bytearray(b"\x41" * (16 * 12))  # [16, 16] F6: 12 bytes a row
    f6[7 * 12 : 8 * 12] = bytes(12)
    entries: list[Entry] = [
        ("a.weight", "F4", (64, 64), bytes(f4)),
        ("b.weight", "F6_E2M3", (16, 16), bytes(f6)),
    ]
    findings = scan(write_safetensors(tmp_path / "m.safetensors", entries), stats=True)
    assert detail(only(findings, "tensor.zero_rows", "a.weight"))["indexes"] == [5]
    assert detail(only(findings, "tensor.zero_rows", "b.weight"))["indexes"] == [7]
    stats = only(findings, "tensor.stats", "a.weight").detail
    assert stats is not None and stats["max"] == 1.0 and stats["zeros"] == 64


def test_stats_report_min_max_mean_of_finite_values(tmp_path: Path) -> None:
    x = np.array([1.0, -2.0, 3.0, np.inf, np.nan, 0.0], np.float32)
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)
    path = write_safetensors(
        tmp_path / "m.safetensors",
        [("m_mask", "F32", (6,), x.tobytes()), ("b_mask", "BF16", (6,), bf16.tobytes())],
    )
    for name in ("m_mask", "b_mask"):
        d = only(scan(path, stats=True), "tensor.stats", name).detail
        assert d == {"min": -2.0, "max": 3.0, "mean": 0.5, "finite": 4, "zeros": 1}


def test_unknown_dtype_and_zero_size_tensors(tmp_path: Path) -> None:
    path = write_safetensors(
        tmp_path / "m.safetensors", [("x", "F128", (2,), bytes(range(1, 33))), ("empty", "F32", (0, 4), b"")]
    )
    findings = scan(path)
    assert [(f.code, f.severity) for f in findings] == [("tensor.unchecked", Severity.INFO)]


def test_a_file_shorter_than_its_header_is_a_finding_not_an_exception(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", [Matrix("F32", 64, 64).entry("w")])
    header = header_of(path)
    with open(path, "r+b") as f:
        f.truncate(header.file_size - 100)
    findings = scan_tensors(path, header, vouched=True)
    assert [(f.code, f.severity) for f in findings] == [("tensor.read_error", Severity.FAIL)]
    missing = scan_tensors(tmp_path / "gone.safetensors", header, vouched=True)
    assert [f.code for f in missing] == ["tensor.read_error"]


def test_findings_are_json_serialisable(tmp_path: Path) -> None:
    m = Matrix("BF16", 32, 32)
    m.set(1, 1, NAN["BF16"])
    m.set(3, slice(None), 0)
    findings = scan(write_safetensors(tmp_path / "m.safetensors", [m.entry("w.weight")]), stats=True)
    json.dumps([f.to_json() for f in findings])


# ------------------------------------------------------------------------------------------------------
# Chunking never changes the answer.


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    dtype=st.sampled_from(["F32", "BF16", "C64", "F8_E4M3", "F16"]),
    rows=st.integers(2, 40),
    cols=st.integers(2, 40),
    chunk=st.integers(8, 3000),
)
def test_chunk_size_does_not_change_findings(
    tmp_path: Path, data: st.DataObject, dtype: str, rows: int, cols: int, chunk: int
) -> None:
    m = Matrix(dtype, rows, cols, seed=rows * cols)
    for r in data.draw(st.lists(st.integers(0, rows - 1), max_size=3)):
        m.set(r, slice(None), 0)
    for c in data.draw(st.lists(st.integers(0, cols - 1), max_size=3)):
        for r in range(rows):
            m.set(r, c, 0)
    for _ in range(data.draw(st.integers(0, 2))):
        m.set(data.draw(st.integers(0, rows - 1)), data.draw(st.integers(0, cols - 1)), NAN[dtype])
    pad = data.draw(st.integers(0, 7))
    path = write_safetensors(
        tmp_path / f"h{rows}x{cols}.safetensors",
        [("p", "U8", (pad,), b"\1" * pad), m.entry("w.weight")],
        pad=False,
    )
    header = header_of(path)

    def run(chunk_bytes: int) -> list[dict[str, Any]]:
        return [
            f.to_json()
            for f in scan_tensors(path, header, vouched=False, chunk_bytes=chunk_bytes, zero_run_bytes=64)
        ]

    assert run(chunk) == run(16 * MiB)


# ------------------------------------------------------------------------------------------------------
# The seed case: zero rows in a Llama o_proj.


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_seed_case_llama_o_proj_with_zero_rows_warns_about_dora(tmp_path: Path, dtype: str) -> None:
    name = "model.layers.13.self_attn.o_proj.weight"
    m = Matrix(dtype, 256, 256)
    for r in (0, 1, 2, 3, 77, 200):
        m.set(r, slice(None), 0)
    others = [
        Matrix(dtype, 256, 256, seed=k).entry(f"model.layers.13.self_attn.{p}_proj.weight")
        for k, p in enumerate("kqv")
    ]
    path = write_safetensors(tmp_path / "model-00002-of-00004.safetensors", [*others, m.entry(name)])
    findings = scan(path, vouched=True)
    f = only(findings, "tensor.zero_rows")
    assert f.severity is Severity.WARN and f.tensor == name
    assert f.detail == {"count": 6, "indexes": [0, 1, 2, 3, 77, 200], "shape": [256, 256]}
    assert name in f.message and "0-3, 77, 200" in f.message
    assert (
        "PEFT DoRA divides by the weight's row norm; zero rows give NaN at adapter initialisation"
        in f.message
    )
    assert problems(findings) == [f]


def test_zero_rows_in_embeddings_mention_reserved_tokens(tmp_path: Path) -> None:
    m = Matrix("BF16", 128, 64)
    m.set(0, slice(None), 0)
    f = only(
        scan(write_safetensors(tmp_path / "m.safetensors", [m.entry("model.embed_tokens.weight")])),
        "tensor.zero_rows",
    )
    assert "Reserved or padding tokens" in f.message


@pytest.mark.slow
def test_seed_case_on_a_real_tiny_llama(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    path = tmp_path / "model.safetensors"
    header = header_of(path)
    assert problems(scan_tensors(path, header, vouched=True)) == []

    target = next(t for t in header.tensors if t.name == "model.layers.1.self_attn.o_proj.weight")
    row_bytes = target.nbytes // target.shape[0]
    with open(path, "r+b") as fh:
        for r in (5, 6, 40):
            fh.seek(header.data_start + target.begin + r * row_bytes)
            fh.write(bytes(row_bytes))
    findings = scan_tensors(path, header, vouched=False)
    f = only(findings, "tensor.zero_rows")
    assert f.tensor == target.name and f.detail is not None and f.detail["indexes"] == [5, 6, 40]
    assert "DoRA" in f.message and "re-download" in f.message
    assert problems(findings) == [f]


# ------------------------------------------------------------------------------------------------------
# Memory stays at one chunk.


def _big_file(path: Path, nbytes: int) -> Path:
    """``nbytes`` of F32 ones in [4096, ...] weights, with sparse zeros so the row/column path runs too."""
    cols = 4096
    rows = nbytes // (4 * cols) // 4
    block = np.ones((rows, cols), np.float32)
    block.reshape(-1)[::997] = 0
    raw = block.tobytes()
    return write_safetensors(path, [(f"layer.{k}.weight", "F32", (rows, cols), raw) for k in range(4)])


def test_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    path = _big_file(tmp_path / "big.safetensors", 64 * MiB)
    header = header_of(path)
    chunk = 4 * MiB
    tracemalloc.start()
    try:
        findings = scan_tensors(path, header, vouched=False, chunk_bytes=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problems(findings) == []
    assert peak < chunk + 4 * MiB, f"peak traced allocation {peak / MiB:.1f} MiB"


@pytest.mark.slow
def test_resident_memory_stays_small_on_a_256_mib_file(tmp_path: Path) -> None:
    path = _big_file(tmp_path / "big.safetensors", 256 * MiB)
    header = header_of(path)
    spec = {
        "header_len": header.header_len,
        "file_size": header.file_size,
        "tensors": [[t.name, t.dtype, list(t.shape), t.begin, t.end] for t in header.tensors],
    }
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        sys.path[:0] = {sys.path!r}
        from vcache.checks.safetensors import SafetensorsHeader, TensorEntry
        from vcache.checks.tensors import scan_tensors
        spec = json.loads({json.dumps(spec)!r})
        tensors = tuple(TensorEntry(n, d, tuple(s), b, e) for n, d, s, b, e in spec["tensors"])
        header = SafetensorsHeader(spec["header_len"], tensors, None, spec["file_size"])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        findings = scan_tensors({str(path)!r}, header, vouched=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps([len(findings), before, after]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    n, before, after = json.loads(out.stdout)
    assert n == 0
    growth_mib = (after - before) / 1024  # ru_maxrss is in KiB on Linux
    assert growth_mib < 48, f"RSS grew by {growth_mib:.0f} MiB scanning a 256 MiB file"


# ------------------------------------------------------------------------------------------------------
# The streamed scan as a download feeds it (StreamingCheck).


def _feed_all(check: Any, data: bytes, step: int = 1 << 20) -> None:
    for pos in range(0, len(data), step):
        check.feed(pos, memoryview(data)[pos : pos + step])


def test_streaming_check_matches_a_scan_of_the_file(tmp_path: Path) -> None:
    from vcache.checks import StreamingCheck, check_file

    rng = np.random.default_rng(3)
    w = rng.standard_normal((512, 256)).astype(np.float32)
    w[5] = np.nan
    path = write_safetensors(tmp_path / "m.safetensors", [("w.weight", "F32", [512, 256], w.tobytes())])
    data = path.read_bytes()
    check = StreamingCheck("m.safetensors", len(data))
    _feed_all(check, data[:5000], step=333)
    assert check.findings(path) is None  # not every byte yet
    check.reset()  # a restart from byte zero
    _feed_all(check, data, step=4099)
    streamed = check.findings(path)
    assert streamed is not None and any(f.code == "tensor.nan" for f in streamed)
    assert list(check_file(path, "m.safetensors", vouched=True).findings) == [
        *check_file(path, "m.safetensors", vouched=True, content=False).findings,
        *streamed,
    ]


@pytest.mark.parametrize("trouble", ["bad_header", "out_of_order", "not_safetensors"])
def test_streaming_check_turns_itself_off_and_leaves_the_scan_to_the_file(
    tmp_path: Path, trouble: str
) -> None:
    from vcache.checks import StreamingCheck

    w = np.ones((64, 64), np.float32)
    path = write_safetensors(tmp_path / "m.safetensors", [("w.weight", "F32", [64, 64], w.tobytes())])
    data = bytearray(path.read_bytes())
    name = "m.safetensors"
    if trouble == "bad_header":
        data[8] = ord("[")  # not a JSON object
    elif trouble == "not_safetensors":
        name = "notes.bin"
    check = StreamingCheck(name, len(data))
    if trouble == "out_of_order":
        check.feed(0, memoryview(data)[:100])
        check.feed(200, memoryview(data)[200:])
    else:
        _feed_all(check, bytes(data), step=1000)
    assert check.findings(path) is None
