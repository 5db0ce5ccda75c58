"""Property tests for vcache.checks.safetensors.

Valid files (written byte-exactly here, and by the safetensors library) always pass and parse to what was
written. Corrupted files (bit flips, truncations, insertions, overwritten length prefixes, JSON-significant
byte swaps) never make the parser raise or take more than a second, and its verdict always matches the
official reader's (``safetensors.deserialize`` runs the same ``read_metadata`` as ``safe_open``), except
for the strict extras, which only this parser fails.
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcache.checks.safetensors import DTYPE_BITS, SafetensorsHeader, parse_header_bytes
from vcache.report import Finding, Severity

STRICT_EXTRAS = {"safetensors.duplicate_key", "safetensors.absurd_dimension", "safetensors.nonstandard_entry"}
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

Tensor = tuple[str, str, list[int]]


@st.composite
def tensor_specs(draw: st.DrawFn) -> list[Tensor]:
    names = draw(
        st.lists(
            st.text(max_size=10).filter(lambda n: n != "__metadata__"), min_size=0, max_size=6, unique=True
        )
    )
    specs: list[Tensor] = []
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPE_BITS)))
        shape = draw(
            st.lists(st.integers(0, 5), max_size=3)
            | st.lists(st.sampled_from([1, 1, 1, 2, 0]), min_size=9, max_size=14)  # long ranks
        )
        if math.prod(shape) * DTYPE_BITS[dtype] % 8:
            shape.append(8)  # sub-byte dtypes need a whole number of bytes
        specs.append((name, dtype, shape))
    return specs


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[bytes, list[Tensor], list[tuple[int, int]]]:
    """A valid file with random JSON order, data order, escaping, spacing and padding."""
    specs = draw(tensor_specs())
    order = draw(st.permutations(range(len(specs))))
    spans: list[tuple[int, int]] = [(0, 0)] * len(specs)
    at = 0
    for i in order:
        _, dtype, shape = specs[i]
        size = math.prod(shape) * DTYPE_BITS[dtype] // 8
        spans[i] = (at, at + size)
        at += size
    metadata = draw(st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3))
    obj: dict[str, Any] = {}
    if metadata is not None:
        obj["__metadata__"] = metadata
    for (name, dtype, shape), (begin, end) in zip(specs, spans, strict=True):
        fields = [("dtype", dtype), ("shape", shape), ("data_offsets", [begin, end])]
        obj[name] = dict(draw(st.permutations(fields)))
    items = list(obj.items())
    items = draw(st.permutations(items))
    compact = draw(st.booleans())
    text = json.dumps(
        dict(items),
        ensure_ascii=draw(st.booleans()),
        separators=(",", ":") if compact else (", ", ": "),
    )
    text = draw(st.sampled_from(["", " ", "\n", "\t\r\n "])) + text
    size = len(text.encode("utf-8"))
    text += draw(st.sampled_from([" " * (-size % 8), "", "\n", "  \t"]))
    raw = text.encode("utf-8")
    data = random.Random(draw(st.integers(0, 2**32))).randbytes(at)
    return struct.pack("<Q", len(raw)) + raw + data, specs, spans


def fail_codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings if f.severity is Severity.FAIL}


def library_view(data: bytes) -> dict[str, tuple[str, tuple[int, ...], int]] | None:
    try:
        tensors = safetensors.deserialize(data)
    except Exception:  # the official reader's verdict, whatever it raises
        return None
    return {name: (v["dtype"], tuple(v["shape"]), len(v["data"])) for name, v in tensors}


def our_view(hdr: SafetensorsHeader) -> dict[str, tuple[str, tuple[int, ...], int]]:
    return {t.name: (t.dtype, t.shape, t.nbytes) for t in hdr.tensors}


@settings(FAST, max_examples=150)
@given(valid_files())
def test_valid_files_pass(case: tuple[bytes, list[Tensor], list[tuple[int, int]]]) -> None:
    data, specs, spans = case
    hdr, findings = parse_header_bytes(data, len(data))
    assert hdr is not None, [f.message for f in findings]
    assert fail_codes(findings) == set()
    expected = {name: (dtype, tuple(shape), spans[i]) for i, (name, dtype, shape) in enumerate(specs)}
    assert {t.name: (t.dtype, t.shape, (t.begin, t.end)) for t in hdr.tensors} == expected
    assert [(t.begin, t.end) for t in hdr.tensors] == sorted((t.begin, t.end) for t in hdr.tensors)
    assert library_view(data) == our_view(hdr)


NUMPY_DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
NUMPY_DTYPES += ["float16", "float32", "float64", "complex64"]


@settings(FAST, max_examples=60)
@given(
    st.dictionaries(
        st.text(max_size=8).filter(lambda n: n != "__metadata__"),
        st.tuples(st.sampled_from(NUMPY_DTYPES), st.lists(st.integers(0, 4), max_size=3)),
        max_size=5,
    ),
    st.integers(0, 2**32),
)
def test_library_written_files_pass(spec: dict[str, tuple[str, list[int]]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = {
        name: rng.integers(0, 100, size=shape).astype(dtype) if shape else np.asarray(7, dtype=dtype)
        for name, (dtype, shape) in spec.items()
    }
    data = safetensors.numpy.save(arrays, metadata={"format": "pt"})
    hdr, findings = parse_header_bytes(data, len(data))
    assert hdr is not None and findings == []
    assert our_view(hdr) == library_view(data)


# ---------------------------------------------------------------------------------------------------------
# Corruptions: never raise, never slow, and agree with the official reader.

JSON_BYTES = b'{}[]":,0123456789-+.eE \t\n\x00\\ufNIa\xff'


@st.composite
def corruptions(draw: st.DrawFn) -> bytes:
    data, _, _ = draw(valid_files())
    n = struct.unpack("<Q", data[:8])[0]
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "length", "swap", "swap", "delete"]))
    buf = bytearray(data)
    if kind == "flip":
        i = draw(st.integers(0, min(len(buf), 8 + n + 8) - 1))
        buf[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del buf[draw(st.integers(0, len(buf) - 1)) :]
    elif kind == "insert":
        i = draw(st.integers(8, 8 + n))
        chunk = draw(st.lists(st.sampled_from(list(JSON_BYTES)), min_size=1, max_size=6))
        buf[i:i] = bytes(chunk)
        if draw(st.booleans()):  # keep the prefix consistent so the JSON itself is what breaks
            buf[:8] = struct.pack("<Q", n + len(chunk))
    elif kind == "delete":
        i = draw(st.integers(8, max(8, 8 + n - 1)))
        j = draw(st.integers(i, min(i + 4, 8 + n)))
        del buf[i:j]
        if draw(st.booleans()):
            buf[:8] = struct.pack("<Q", n - (j - i))
    elif kind == "length":
        new = draw(st.integers(0, 2**64 - 1) | st.integers(max(0, n - 9), n + 9))
        buf[:8] = struct.pack("<Q", new)
    else:  # swap one header byte for a JSON-significant one
        i = draw(st.integers(8, max(8, 8 + n - 1)))
        if i < len(buf):
            buf[i] = draw(st.sampled_from(list(JSON_BYTES)))
    return bytes(buf)


@settings(FAST, max_examples=500)
@given(corruptions())
def test_corruptions_agree_with_the_official_reader(data: bytes) -> None:
    start = time.perf_counter()
    hdr, findings = parse_header_bytes(data, len(data))
    assert time.perf_counter() - start < 1.0
    codes = fail_codes(findings)
    assert "safetensors.internal_error" not in codes
    assert (hdr is None) == bool(codes)
    lib = library_view(data)
    assert (lib is not None) == (not codes - STRICT_EXTRAS), [f.message for f in findings]
    if hdr is not None:
        assert our_view(hdr) == lib


@settings(FAST, max_examples=300)
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_arbitrary_bytes_never_raise(data: bytes, file_size: int) -> None:
    start = time.perf_counter()
    hdr, findings = parse_header_bytes(data, file_size)
    assert time.perf_counter() - start < 1.0
    assert "safetensors.internal_error" not in fail_codes(findings)
    assert (hdr is None) == bool(fail_codes(findings))
