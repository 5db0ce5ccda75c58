"""Tests for vcache.checks.gguf: the strict GGUF parser and the GGUF content scan.

Every file is written by the real writer (``gguf.GGUFWriter``, quantized data by ``gguf.quants``), then
damaged byte-exactly where the test says. Header fields are located with the gguf package's own reader
(``GGUFReader``), which is also the reference the clean files are compared with; on damaged files the
tests show what that reader does instead (raise, or read garbage).
"""

from __future__ import annotations

import itertools
import struct
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcache.checks.gguf import (
    DEFAULT_ZERO_RUN_BYTES,
    GGUF_MAGIC,
    SCALE_FIELDS,
    GGUFLayout,
    GGUFStream,
    looks_like_gguf,
    parse_gguf_header_bytes,
    read_gguf_header,
    scan_gguf,
)
from vcache.report import Finding, Severity

MiB = 1 << 20
F16_NAN = 0x7E00
F16_INF = 0x7C00

# ------------------------------------------------------------------------------------------------------
# Writing files with the real writer, and finding their fields with the real reader.

Tensor = tuple[str, np.ndarray[Any, Any], T | None]


def write_gguf(
    path: Path,
    tensors: Sequence[Tensor],
    *,
    kv: Callable[[GGUFWriter], None] | None = None,
    endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
    vocab: int = 50,
) -> Path:
    """A GGUF written by ``GGUFWriter``: a small vocabulary and the given tensors (raw bytes when typed)."""
    w = GGUFWriter(path, "llama", endianess=endianess)
    w.add_name("tiny test model")
    w.add_context_length(128)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "wörld"] * vocab)
    w.add_array("tokenizer.ggml.scores", [0.5] * 4 * vocab)
    if kv is not None:
        kv(w)
    for name, array, raw_dtype in tensors:
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def weights(shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.02).astype(np.float32)


def quantized(shape: tuple[int, ...], qtype: T, seed: int = 0) -> Tensor:
    return (f"blk.0.{qtype.name.lower()}.weight", quantize(weights(shape, seed), qtype), qtype)


def model(path: Path, **kw: Any) -> Path:
    """F32, F16 and quantized tensors, like a small llama.cpp conversion."""
    return write_gguf(
        path,
        [
            ("token_embd.weight", weights((64, 256)).astype(np.float16), None),
            ("blk.0.attn_norm.weight", np.ones(256, np.float32), None),
            ("blk.0.attn_q.weight", quantize(weights((256, 256), 1), T.Q4_0), T.Q4_0),
            ("blk.0.attn_k.weight", quantize(weights((256, 256), 2), T.Q8_0), T.Q8_0),
            ("output.weight", weights((64, 256), 3), None),
        ],
        **kw,
    )


def info_field(path: Path, tensor: str, part: str) -> int:
    """File offset of one part of a tensor info (``name_len``, ``name``, ``n_dims``, ``dims``, ``type``,
    ``offset``), located by GGUFReader."""
    reader = GGUFReader(path)
    (t,) = [t for t in reader.tensors if t.name == tensor]
    starts = itertools.accumulate((int(p.nbytes) for p in t.field.parts), initial=t.field.offset)
    return dict(zip(("name_len", "name", "n_dims", "dims", "type", "offset"), starts, strict=False))[part]


def kv_field(path: Path, key: str, part: int) -> int:
    """File offset of part ``part`` of a metadata entry (0 key length, 1 key, 2 type, 3... the value)."""
    f = GGUFReader(path).fields[key]
    return list(itertools.accumulate((int(p.nbytes) for p in f.parts), initial=f.offset))[part]


def data_at(path: Path, tensor: str) -> int:
    """File offset of a tensor's first data byte, by GGUFReader."""
    return next(t.data_offset for t in GGUFReader(path).tensors if t.name == tensor)


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def check(path: Path) -> tuple[GGUFLayout | None, list[Finding]]:
    """read_gguf_header, also checked against the parse from the file's bytes."""
    layout, findings = read_gguf_header(path)
    assert parse_gguf_header_bytes(path.read_bytes(), path.stat().st_size, label=path.name) == (
        layout,
        findings,
    )
    return layout, findings


def only(findings: Sequence[Finding], code: str) -> Finding:
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, f"expected one {code}, got {[(f.code, f.message) for f in findings]}"
    return hits[0]


def problems(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is not Severity.INFO]


#: Feed sizes for the streamed scan: odd, tiny and large, so blocks straddle feeds in every way.
STREAM_FEEDS = (1, 7, 4096 + 3, 1 << 20, (1 << 20) + 5, 8 << 20, 100_003)


def streamed(path: Path, layout: GGUFLayout, *, vouched: bool, **kw: Any) -> list[Finding]:
    stream = GGUFStream(layout, vouched=vouched, **kw)
    data = memoryview(path.read_bytes())
    pos, k = 0, 0
    while pos < len(data):
        n = STREAM_FEEDS[k % len(STREAM_FEEDS)]
        stream.feed(pos, data[pos : pos + n])
        pos, k = pos + n, k + 1
    assert stream.complete
    return stream.finish(path)


def scan(path: Path, *, vouched: bool = False, **kw: Any) -> list[Finding]:
    """Header, then the pull-mode scan; also checks the streamed scan finds exactly the same."""
    layout, findings = check(path)
    assert layout is not None, [f.message for f in findings]
    found = scan_gguf(path, layout, vouched=vouched, **kw)
    kw.pop("chunk_bytes", None)
    assert streamed(path, layout, vouched=vouched, **kw) == found
    return found


# ------------------------------------------------------------------------------------------------------
# Clean files agree with the reference reader.


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16, T.TQ2_0])
def test_clean_file_agrees_with_the_reference_reader_and_scans_ok(tmp_path: Path, qtype: T) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        [
            ("token_embd.weight", weights((32, 256)).astype(np.float16), None),
            ("blk.0.attn_norm.weight", np.ones(256, np.float32), None),
            quantized((256, 256), qtype),
            ("blk.0.ids", np.arange(64, dtype=np.int32), None),
        ],
        kv=lambda w: w.add_custom_alignment(64),
    )
    layout, findings = check(path)
    assert findings == []
    assert layout is not None
    reader = GGUFReader(path)
    assert (layout.data_start, layout.alignment, layout.version) == (reader.data_offset, 64, 3)
    assert [
        (t.name, t.type_name, list(t.dims), t.n_elements, t.nbytes, layout.data_start + t.offset)
        for t in layout.tensors
    ] == [
        (t.name, t.tensor_type.name, [int(d) for d in t.shape], t.n_elements, t.n_bytes, t.data_offset)
        for t in reader.tensors
    ]
    assert layout.kv_count == len([k for k in reader.fields if not k.startswith("GGUF.")])
    assert layout.metadata["general.name"] == "tiny test model"
    assert layout.metadata["general.alignment"] == 64
    assert "tokenizer.ggml.tokens" not in layout.metadata  # arrays are walked, not kept
    assert problems(scan(path)) == []


def test_clean_k_quant_and_iq_tensors_scan_ok(tmp_path: Path) -> None:
    """Types the gguf package cannot quantize: random blocks with finite scales written as raw bytes."""
    rng = np.random.default_rng(5)
    tensors: list[Tensor] = []
    for (name, size), fields in SCALE_FIELDS.items():
        if gguf.GGML_QUANT_SIZES[T[name]][1] != size:
            continue
        blocks = rng.integers(0, 256, (64, size), dtype=np.uint8)
        for _, offset, encoding in fields:
            _set_scale(blocks, offset, encoding, 0.01)
        tensors.append((f"blk.{name}.weight", blocks, T[name]))
    path = write_gguf(tmp_path / "k.gguf", tensors)
    layout, findings = check(path)
    assert findings == [] and layout is not None
    assert {t.type_name for t in layout.tensors} == {n for (n, s) in SCALE_FIELDS if s != 40}
    assert problems(scan(path)) == []


def test_looks_like_gguf() -> None:
    assert looks_like_gguf(GGUF_MAGIC + b"\x03\x00\x00\x00")
    assert not looks_like_gguf(b"GGML")
    assert not looks_like_gguf(b"")


def test_an_empty_file_and_another_format_are_bad_magic(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "st.gguf").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for name in ("empty.gguf", "st.gguf"):
        layout, findings = check(tmp_path / name)
        assert layout is None
        assert only(findings, "gguf.bad_magic").severity is Severity.FAIL


def test_unreadable_path_is_a_finding(tmp_path: Path) -> None:
    layout, findings = read_gguf_header(tmp_path)
    assert layout is None and only(findings, "gguf.unreadable").severity is Severity.FAIL
    layout, findings = read_gguf_header(tmp_path / "missing.gguf")
    assert layout is None and only(findings, "gguf.unreadable").severity is Severity.FAIL


# ------------------------------------------------------------------------------------------------------
# Structural damage: each a named failure, none raising, none allocating by claimed sizes.


def test_truncated_file_fails_where_the_reference_reader_raises(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ValueError):
        GGUFReader(path)
    layout, findings = check(path)
    assert layout is None
    f = only(findings, "gguf.truncated")
    assert f.severity is Severity.FAIL and "truncated" in f.message
    assert f.detail is not None and f.detail["actual"] < f.detail["expected"]


@pytest.mark.parametrize("keep", [3, 10, 30, 200, 900])
def test_file_cut_inside_the_header_is_truncated(tmp_path: Path, keep: int) -> None:
    path = model(tmp_path / "m.gguf")
    path.write_bytes(path.read_bytes()[:keep])
    layout, findings = check(path)
    assert layout is None
    # where the cut falls decides which bound trips first; every one of them says the file may be truncated
    (f,) = findings
    assert f.severity is Severity.FAIL and "truncated" in f.message
    assert f.code in {
        "gguf.truncated",
        "gguf.count_too_large",
        "gguf.string_out_of_bounds",
        "gguf.array_out_of_bounds",
    }


def test_tensor_offset_past_the_end_fails(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    patch(path, info_field(path, "blk.0.attn_q.weight", "offset"), u64(1 << 40))
    layout, findings = check(path)
    assert layout is None
    f = only(findings, "gguf.tensor_out_of_bounds")
    assert f.severity is Severity.FAIL and f.tensor == "blk.0.attn_q.weight"
    # the reference reader builds a view that silently comes up short, then fails to reshape it
    with pytest.raises(ValueError):
        GGUFReader(path)


def test_misaligned_offset_fails(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    at = info_field(path, "blk.0.attn_norm.weight", "offset")
    (offset,) = struct.unpack("<Q", path.read_bytes()[at : at + 8])
    patch(path, at, u64(offset + 4))
    reader = GGUFReader(path)  # the reference reader reads the tensor 4 bytes late, without a word
    assert next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight").data_offset % 32 == 4
    layout, findings = check(path)
    assert layout is None
    f = only(findings, "gguf.misaligned")
    assert f.severity is Severity.FAIL and f.tensor == "blk.0.attn_norm.weight"


def test_overlapping_tensors_fail(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    patch(path, info_field(path, "blk.0.attn_k.weight", "offset"), u64(0))  # on top of token_embd
    GGUFReader(path)  # the reference reader reads both from the same bytes
    layout, findings = check(path)
    assert layout is None
    f = only(findings, "gguf.overlap")
    assert f.severity is Severity.FAIL
    assert {f.tensor, f.detail and f.detail["other"]} == {"token_embd.weight", "blk.0.attn_k.weight"}


def test_swapped_offsets_are_an_offset_mismatch(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf", [("a.weight", weights((8, 64)), None), ("b.weight", weights((8, 64), 1), None)]
    )
    a, b = info_field(path, "a.weight", "offset"), info_field(path, "b.weight", "offset")
    data = path.read_bytes()
    patch(path, a, data[b : b + 8])
    patch(path, b, data[a : a + 8])
    layout, findings = check(path)
    assert layout is None
    assert only(findings, "gguf.offset_mismatch").tensor == "a.weight"


@pytest.mark.parametrize("where", ["value", "key", "tensor_name", "array_element"])
def test_string_length_past_eof_fails(tmp_path: Path, where: str) -> None:
    path = model(tmp_path / "m.gguf")
    size = path.stat().st_size
    at = {
        "value": lambda: kv_field(path, "general.name", 3),
        "key": lambda: kv_field(path, "general.name", 0),
        "tensor_name": lambda: info_field(path, "output.weight", "name_len"),
        "array_element": lambda: kv_field(path, "tokenizer.ggml.tokens", 5) + 8 + 3,  # 2nd element
    }[where]()
    patch(path, at, u64(size * 4))
    with pytest.raises(IndexError):  # the reference reader runs off the end of its memory map
        GGUFReader(path)
    layout, findings = check(path)
    assert layout is None
    f = only(findings, "gguf.string_out_of_bounds")
    assert f.severity is Severity.FAIL and f"{size * 4:,} bytes" in f.message


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("tensor_count", 2**60, "gguf.count_too_large"),
        ("kv_count", 2**60, "gguf.count_too_large"),
        ("tensor_count", 2**64 - 1, "gguf.count_too_large"),
        ("array_count", 2**60, "gguf.array_out_of_bounds"),
        ("string_len", 2**63, "gguf.string_out_of_bounds"),
    ],
)
def test_absurd_counts_fail_without_allocating(tmp_path: Path, field: str, value: int, code: str) -> None:
    path = model(tmp_path / "m.gguf")
    read_gguf_header(path)  # the type tables are loaded once, outside the measurement
    at = {
        "tensor_count": 8,
        "kv_count": 16,
        "array_count": kv_field(path, "tokenizer.ggml.scores", 4),
        "string_len": kv_field(path, "general.name", 3),
    }[field]
    patch(path, at, u64(value))
    tracemalloc.start()
    try:
        layout, findings = read_gguf_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert layout is None
    assert only(findings, code).severity is Severity.FAIL
    assert peak < 2 * MiB, f"peak traced allocation {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("ggml_type", [99, 4, 2**32 - 1])  # not a type; Q4_2 (removed); garbage
def test_unknown_ggml_type_fails(tmp_path: Path, ggml_type: int) -> None:
    path = model(tmp_path / "m.gguf")
    patch(path, info_field(path, "output.weight", "type"), u32(ggml_type))
    with pytest.raises(ValueError):
        GGUFReader(path)
    layout, findings = check(path)
    assert layout is None
    f = only(findings, "gguf.unknown_type")
    assert f.tensor == "output.weight" and f.detail is not None and f.detail["ggml_type"] == ggml_type


def test_unknown_value_type_fails(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    value_type = kv_field(path, "general.name", 2)
    element_type = kv_field(path, "tokenizer.ggml.scores", 2) + 4
    patch(path, element_type, u32(77))
    with pytest.raises(ValueError):
        GGUFReader(path)
    assert only(check(path)[1], "gguf.bad_kv_type").severity is Severity.FAIL
    patch(path, value_type, u32(13))
    layout, findings = check(path)
    assert layout is None and only(findings, "gguf.bad_kv_type").detail == {
        "key": "general.name",
        "value_type": 13,
    }


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFF])
def test_unknown_versions_fail(tmp_path: Path, version: int) -> None:
    path = model(tmp_path / "m.gguf")
    patch(path, 4, u32(version))
    layout, findings = check(path)
    assert layout is None and only(findings, "gguf.bad_version").severity is Severity.FAIL


def test_version_2_files_are_read(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    patch(path, 4, u32(2))  # v2 and v3 differ only in what v3 allows (big-endian files)
    layout, findings = check(path)
    assert findings == [] and layout is not None and layout.version == 2


def test_big_endian_file_is_reported_unchecked(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "be.gguf", [("a.weight", weights((4, 32)).byteswap(), None)], endianess=gguf.GGUFEndian.BIG
    )
    layout, findings = check(path)
    assert layout is None
    assert [(f.code, f.severity) for f in findings] == [("gguf.unchecked", Severity.INFO)]


def test_header_rules_llama_cpp_enforces(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        [("x" * 70, np.ones((2, 2, 2, 2, 2), np.float32), None), ("odd", np.ones((3, 33), np.float32), None)],
        kv=lambda w: w.add_array("nested", [[1, 2], [3]]),
    )
    GGUFReader(path)  # the reference reader takes all of it
    layout, findings = check(path)
    assert layout is None
    assert {f.code for f in findings} == {"gguf.nested_array", "gguf.name_too_long", "gguf.bad_rank"}
    # a block-size mismatch: Q8_0 rows of 48 elements
    path = write_gguf(tmp_path / "q.gguf", [quantized((4, 64), T.Q8_0)])
    patch(path, info_field(path, "blk.0.q8_0.weight", "dims"), u64(48) + u64(5))
    assert only(check(path)[1], "gguf.block_mismatch").severity is Severity.FAIL


@pytest.mark.parametrize(
    ("dims", "code"),
    [
        ((2**62, 4), "gguf.size_overflow"),
        ((2**63, 1), "gguf.bad_dimension"),
        ((2**32, 2**32), "gguf.size_overflow"),
    ],
)
def test_dimensions_that_overflow_fail(tmp_path: Path, dims: tuple[int, int], code: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", [("a.weight", weights((4, 32)), None)])
    patch(path, info_field(path, "a.weight", "dims"), u64(dims[0]) + u64(dims[1]))
    layout, findings = check(path)
    assert layout is None and only(findings, code).severity is Severity.FAIL


def test_duplicates_empty_key_and_invalid_utf8(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        [("a.weight", weights((4, 32)), None), ("b.weight", weights((4, 32)), None)],
        kv=lambda w: (w.add_string("general.licence", "mit"), w.add_string("general.license", "mit")),
    )
    name, key = info_field(path, "b.weight", "name"), kv_field(path, "general.licence", 1)
    patch(path, name, b"a")
    patch(path, key, b"general.license")
    layout, findings = check(path)
    assert layout is None
    assert {f.code for f in findings} == {"gguf.duplicate_tensor", "gguf.duplicate_key"}

    path = write_gguf(tmp_path / "e.gguf", [], kv=lambda w: w.add_string("x", "y"))
    patch(path, kv_field(path, "x", 0), u64(0) + u32(8) + u64(1))  # the key "", then a 1-byte string
    layout, findings = check(path)
    assert "gguf.empty_key" in {f.code for f in findings}

    path = write_gguf(tmp_path / "u.gguf", [("a.weight", weights((4, 32)), None)])
    patch(path, info_field(path, "a.weight", "name"), b"\xff")
    with pytest.raises(UnicodeDecodeError):
        GGUFReader(path)
    layout, findings = check(path)
    assert layout is not None  # llama.cpp loads it: a warning
    assert [(f.code, f.severity) for f in findings] == [("gguf.invalid_utf8", Severity.WARN)]


@pytest.mark.parametrize(
    ("adder", "reason"),
    [
        (lambda w: w.add_uint32("general.alignment", 48), "not a power of two"),
        (lambda w: w.add_uint32("general.alignment", 0), "not a power of two"),
        (lambda w: w.add_uint32("general.alignment", 1 << 21), "limit"),
        (lambda w: w.add_uint64("general.alignment", 64), "not uint32"),
    ],
)
def test_bad_alignment_fails(tmp_path: Path, adder: Callable[[GGUFWriter], None], reason: str) -> None:
    path = tmp_path / "m.gguf"
    w = GGUFWriter(path, "llama")
    adder(w)
    w.add_tensor("a.weight", weights((4, 32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    layout, findings = check(path)
    assert layout is None
    f = only(findings, "gguf.bad_alignment")
    assert f.severity is Severity.FAIL and reason in f.message


def test_trailing_bytes_warn(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    with open(path, "ab") as f:
        f.write(b"\x01" * 100)
    layout, findings = check(path)
    assert layout is not None
    assert [(f.code, f.severity) for f in findings] == [("gguf.trailing_bytes", Severity.WARN)]


def test_a_file_without_tensors_is_fine(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "vocab.gguf", [])
    layout, findings = check(path)
    assert findings == [] and layout is not None and layout.tensors == ()
    assert scan(path) == []


# ------------------------------------------------------------------------------------------------------
# Content.


def test_nan_in_an_f32_tensor_fails(tmp_path: Path) -> None:
    w = weights((64, 256), 3)
    w[7, 9] = np.nan
    path = model(tmp_path / "m.gguf")
    patch(path, data_at(path, "output.weight"), w.tobytes())
    f = only(scan(path, vouched=True), "tensor.nan")
    assert f.severity is Severity.FAIL and f.tensor == "output.weight"
    assert f.detail is not None and f.detail["first_index"] == 7 * 256 + 9
    assert "[64, 256]" in f.message  # numpy order, as the reference reader's arrays have it


def test_inf_and_nan_in_f16_and_bf16_tensors(tmp_path: Path) -> None:
    h = weights((16, 64)).astype(np.float16)
    h[3, 3] = np.inf
    b = quantize(weights((16, 64)), T.BF16)
    b.view(np.uint16)[5, 1] = 0x7FC1  # a BF16 NaN
    path = write_gguf(tmp_path / "m.gguf", [("h.weight", h, None), ("b.weight", b, T.BF16)])
    found = scan(path)
    assert only(found, "tensor.inf").tensor == "h.weight"
    assert only(found, "tensor.nan").tensor == "b.weight"


def _set_scale(
    blocks: np.ndarray[Any, Any], offset: int, encoding: str, value: float, rows: Any = None
) -> None:
    """Write ``value`` into one scale field of ``blocks`` (all rows, or ``rows``)."""
    rows = slice(None) if rows is None else rows
    if encoding == "f32":
        blocks[rows, offset : offset + 4] = np.frombuffer(np.float32(value).tobytes(), np.uint8)
        return
    bits = int(np.float16(value).view(np.uint16))
    if encoding == "f16":
        blocks[rows, offset : offset + 2] = np.frombuffer(struct.pack("<H", bits), np.uint8)
        return
    words = blocks[rows, offset : offset + 8].view("<u2").copy()  # iq1m: one nibble per word
    words &= 0x0FFF
    for k in range(4):
        words[..., k] |= ((bits >> (4 * k)) & 0xF) << 12
    blocks[rows, offset : offset + 8] = words.view(np.uint8)


@pytest.mark.parametrize(("qtype", "field"), [(T.Q4_0, "d"), (T.Q4_1, "d"), (T.Q4_1, "m"), (T.Q8_0, "d")])
@pytest.mark.parametrize(("value", "code"), [(np.nan, "gguf.scale_nan"), (np.inf, "gguf.scale_inf")])
def test_non_finite_block_scale_fails(tmp_path: Path, qtype: T, field: str, value: float, code: str) -> None:
    name, data, _ = quantized((128, 256), qtype)
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    ((_, offset, encoding),) = [f for f in SCALE_FIELDS[(qtype.name, size)] if f[0] == field]
    blocks = data.reshape(-1, size)
    bad = [37, 38, 900]
    _set_scale(blocks, offset, encoding, value, rows=bad)
    with np.errstate(invalid="ignore"):  # the reference dequantizer agrees on the damage
        values = dequantize(data, qtype).reshape(-1, 32)
    assert [i for i in range(len(values)) if not np.isfinite(values[i]).all()] == bad
    path = write_gguf(tmp_path / "m.gguf", [(name, data, qtype), ("output.weight", weights((4, 256)), None)])
    found = scan(path, vouched=True)
    f = only(found, code)
    assert f.severity is Severity.FAIL and f.tensor == name
    assert f.detail is not None
    assert (f.detail["count"], f.detail["fields"], f.detail["first_block"], f.detail["blocks"]) == (
        3,
        {field: 3},
        37,
        bad,
    )
    assert f"elements {37 * 32:,}-{38 * 32 - 1:,}" in f.message
    assert problems(found) == [f]


def test_every_scale_field_is_where_the_reference_dequantizer_reads_it() -> None:
    """For each type the gguf package can dequantize: a NaN written at the documented place turns exactly
    that block to NaN, and scaling the field scales the block."""
    rng = np.random.default_rng(11)
    checked = []
    for (name, size), fields in SCALE_FIELDS.items():
        qtype = T[name]
        blck, table_size = gguf.GGML_QUANT_SIZES[qtype]
        assert all(off >= 0 and off + {"f16": 2, "f32": 4, "iq1m": 8}[enc] <= size for _, off, enc in fields)
        if table_size != size:
            assert name == "Q8_1"  # two layouts listed; the gguf package's table picks one
            continue
        blocks = rng.integers(0, 256, (8, size), dtype=np.uint8)
        for _, offset, encoding in fields:
            _set_scale(blocks, offset, encoding, 1.0)
        try:
            base = dequantize(blocks.reshape(-1), qtype).reshape(8, blck)
        except NotImplementedError:
            continue
        assert np.isfinite(base).all(), name
        for field, offset, encoding in fields:
            damaged = blocks.copy()
            _set_scale(damaged, offset, encoding, np.nan, rows=[3])
            with np.errstate(invalid="ignore"):
                values = dequantize(damaged.reshape(-1), qtype).reshape(8, blck)
            bad = [i for i in range(8) if np.isnan(values[i]).any()]
            assert bad == [3], (name, field, bad)
        checked.append(name)
    assert {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"} <= set(checked)
    assert {"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS"} <= set(
        checked
    )


def test_scale_table_keys_are_ggml_types_with_the_package_block_size() -> None:
    for name, size in SCALE_FIELDS:
        assert gguf.GGML_QUANT_SIZES[T[name]][1] == size or name == "Q8_1"


def test_types_without_checkable_scales_are_reported_unchecked(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", [quantized((4, 64), T.MXFP4)])
    found = scan(path)
    assert [(f.code, f.severity) for f in found] == [("tensor.unchecked", Severity.INFO)]


@pytest.mark.parametrize(
    ("tensor", "length"), [("blk.0.attn_k.weight", 64 << 10), ("token_embd.weight", 65 << 10)]
)
def test_zero_filled_64k_range_fails_unvouched_and_warns_vouched(
    tmp_path: Path, tensor: str, length: int
) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        [
            ("token_embd.weight", weights((256, 256)).astype(np.float16), None),
            ("blk.0.attn_k.weight", quantize(weights((256, 1024), 2), T.Q8_0), T.Q8_0),
        ],
    )
    start = data_at(path, tensor) + 1000
    patch(path, start, bytes(length))
    for vouched, severity in ((False, Severity.FAIL), (True, Severity.WARN)):
        found = scan(path, vouched=vouched)
        f = only(found, "tensor.zero_fill")
        assert f.severity is severity and f.tensor == tensor
        assert f.detail is not None and (f.detail["offset"], f.detail["length"]) == (start, length)


def test_a_zero_run_just_under_64k_is_not_reported(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf", [("blk.0.q8_0.weight", quantize(weights((256, 1024)), T.Q8_0), T.Q8_0)]
    )
    patch(path, data_at(path, "blk.0.q8_0.weight") + 777, bytes(DEFAULT_ZERO_RUN_BYTES - 1))
    assert problems(scan(path)) == []


def test_chunk_size_does_not_change_findings(tmp_path: Path) -> None:
    name, data, qtype = quantized((256, 512), T.Q4_1)
    _set_scale(data.reshape(-1, 20), 2, "f16", np.nan, rows=[5, 4000])
    w = weights((128, 256))
    w[100:] = 0
    path = write_gguf(tmp_path / "m.gguf", [(name, data, qtype), ("output.weight", w, None)])
    patch(path, data_at(path, name) + 20 * 5000, bytes(70_000))
    reference = scan(path)
    assert {f.code for f in problems(reference)} == {"gguf.scale_nan", "tensor.zero_fill", "tensor.zero_rows"}
    for chunk in (4096, 4096 + 4, 1 << 20):
        assert scan(path, chunk_bytes=chunk) == reference


def test_streaming_matches_the_file_scan_for_every_feed_size(tmp_path: Path) -> None:
    name, data, qtype = quantized((512, 1024), T.Q8_0)
    _set_scale(data.reshape(-1, 34), 0, "f16", np.inf, rows=[1, 2, 3])
    path = write_gguf(tmp_path / "m.gguf", [(name, data, qtype), ("output.weight", weights((64, 256)), None)])
    patch(path, data_at(path, name) + 34 * 100, bytes(100_000))
    layout, _ = check(path)
    assert layout is not None
    reference = scan_gguf(path, layout, vouched=False)
    assert {f.code for f in reference} == {"gguf.scale_inf", "tensor.zero_fill"}
    raw = path.read_bytes()
    for feed in (1 << 20, 8 << 20, 4096 + 3, 7, 1):
        stream = GGUFStream(layout, vouched=False)
        start = layout.data_start if feed < 8 else 0  # 1-byte feeds over the data section only: speed
        for pos in range(start, len(raw), feed):
            stream.feed(pos, raw[pos : pos + feed])
        assert stream.complete
        assert stream.finish(path) == reference, feed


def test_stream_fed_out_of_order_raises_for_the_caller_to_fall_back(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    layout, _ = check(path)
    assert layout is not None
    stream = GGUFStream(layout, vouched=True)
    stream.feed(0, b"x" * 100)
    with pytest.raises(ValueError):
        stream.feed(200, b"x")
    assert not stream.complete


def test_header_from_a_growing_prefix(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf")
    raw = path.read_bytes()
    size = len(raw)
    expected = read_gguf_header(path)
    n = 16
    while (result := parse_gguf_header_bytes(raw[:n], size, label="m.gguf")) is None:
        n *= 2
    assert result == expected
    layout = expected[0]
    assert layout is not None and n < 2 * layout.data_start
    assert parse_gguf_header_bytes(raw[: layout.data_start - 40], size) is None


# ------------------------------------------------------------------------------------------------------
# Random damage.

_VALID: dict[str, bytes] = {}


def _valid_file(tmp: Path) -> bytes:
    if "raw" not in _VALID:
        path = write_gguf(
            tmp / "valid.gguf",
            [
                ("a.weight", weights((4, 64)), None),
                ("b.weight", weights((4, 64)).astype(np.float16), None),
                quantized((4, 64), T.Q4_0),
                quantized((4, 64), T.Q8_0),
            ],
            kv=lambda w: w.add_array("general.tags", [1, 2, 3]),
            vocab=2,
        )
        _VALID["raw"] = path.read_bytes()
    return _VALID["raw"]


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 2600),  # the header is ~600 bytes, the tensor data ~1,900
            st.one_of(
                st.binary(min_size=1, max_size=2),
                st.sampled_from([u64(2**63), u64(2**64 - 1), u64(1 << 40), u32(2**32 - 1), u64(0), u32(9)]),
            ),
        ),
        min_size=1,
        max_size=4,
    ),
    cut=st.one_of(st.none(), st.integers(0, 2600)),
)
def test_random_corruption_never_raises_and_finishes_fast(
    tmp_path: Path, edits: list[tuple[int, bytes]], cut: int | None
) -> None:
    raw = bytearray(_valid_file(tmp_path))
    for at, data in edits:
        raw[at : at + len(data)] = data
    if cut is not None:
        del raw[cut:]
    path = tmp_path / "damaged.gguf"
    path.write_bytes(raw)
    t0 = time.perf_counter()
    layout, findings = read_gguf_header(path)
    assert all(isinstance(f, Finding) for f in findings)
    assert not any(f.code == "gguf.internal_error" for f in findings), findings
    if layout is not None:
        assert not any(f.severity is Severity.FAIL for f in findings)
        scan_gguf(path, layout, vouched=False)
    else:
        assert any(f.severity is not Severity.WARN for f in findings)
    assert parse_gguf_header_bytes(bytes(raw), len(raw), label=path.name) == (layout, findings)
    assert time.perf_counter() - t0 < 1.5
