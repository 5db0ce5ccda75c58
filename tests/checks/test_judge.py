"""Tests for vcache.checks.judge: one decision of a file's findings and verdict from what is known about it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

import vcache.checks.judge as judge_module
import vcache.checks.tensors
from vcache.checks import StreamingCheck, check_file
from vcache.checks.judge import Judgement, judge, parsed_headers
from vcache.hashing import Digest
from vcache.report import Severity, Verdict

NAME = "model.safetensors"


def codes(j: Judgement) -> list[str]:
    return [f.code for f in j.findings]


def sha256(path: Path) -> Digest:
    return Digest("sha256", hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A real safetensors file whose ``zero.weight`` matrix is all zeros: a warning when a publisher digest
    vouches for the bytes, a failure when nothing (or a mismatching digest) does."""
    rng = np.random.default_rng(11)
    path = tmp_path / NAME
    save_file(
        {
            "w.weight": rng.standard_normal((64, 32)).astype(np.float32),
            "zero.weight": np.zeros((64, 32), np.float32),
        },
        str(path),
    )
    return path


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Who read the file: ``hash`` (whole-file hashing) and ``scan`` (a content scan of the file, with its
    ``vouched``)."""
    calls: dict[str, list[Any]] = {"hash": [], "scan": []}
    real_hash, real_scan = judge_module.hash_file, vcache.checks.tensors.scan_tensors

    def hash_file(path: Any, algorithm: Any, **kw: Any) -> Any:
        calls["hash"].append(algorithm)
        return real_hash(path, algorithm, **kw)

    def scan_tensors(path: Any, header: Any, **kw: Any) -> Any:
        calls["scan"].append(kw.get("vouched"))
        return real_scan(path, header, **kw)

    monkeypatch.setattr(judge_module, "hash_file", hash_file)
    monkeypatch.setattr(vcache.checks.tensors, "scan_tensors", scan_tensors)
    return calls


def streamed(path: Path) -> StreamingCheck:
    """A content scan fed the file's bytes in order, as a download feeds it while hashing."""
    data = path.read_bytes()
    check = StreamingCheck(path.name, len(data))
    for pos in range(0, len(data), 1000):
        check.feed(pos, memoryview(data)[pos : pos + 1000])
    return check


def test_matching_digest_vouches_for_the_bytes(model: Path, spies: dict[str, list[Any]]) -> None:
    j = judge(model, NAME, expected_size=model.stat().st_size, expected_digest=sha256(model))
    assert j.vouched and not j.mismatch and j.actual_digest == sha256(model)
    assert codes(j) == ["tensor.all_zero"] and j.findings[0].severity is Severity.WARN
    assert j.verdict is Verdict.WARN
    assert spies == {"hash": ["sha256"], "scan": [True]}
    assert judge(model, NAME, expected_digest=sha256(model), strict=True).verdict is Verdict.FAIL


@pytest.mark.parametrize("received", [False, True])
def test_size_mismatch(model: Path, received: bool) -> None:
    size = model.stat().st_size
    j = judge(
        model,
        NAME,
        expected_size=size + 1,
        expected_digest=sha256(model),
        actual_size=size if received else None,
    )
    assert codes(j)[-1] == "size_mismatch" and j.mismatch and not j.vouched and j.verdict is Verdict.FAIL
    mismatch = j.findings[-1]
    assert mismatch.detail == {"expected": size + 1, "actual": size}
    wording = f"received {size} bytes" if received else f"{size} bytes on disk"
    assert mismatch.message.startswith(f"{NAME}: {wording}, the publisher's file has {size + 1}")
    # The digest matched but the byte count did not: nothing vouches, so the zeros fail.
    assert j.findings[0].code == "tensor.all_zero" and j.findings[0].severity is Severity.FAIL


def test_digest_mismatch_scans_the_content_again_unvouched(model: Path, spies: dict[str, list[Any]]) -> None:
    wrong = Digest("sha256", "0" * 64)
    j = judge(
        model,
        NAME,
        expected_size=model.stat().st_size,
        expected_digest=wrong,
        actual_size=model.stat().st_size,
        actual_digest=sha256(model),
        streamed=streamed(model),
    )
    # What the bytes are comes first, the hash after; the streamed scan (made as vouched) is not used.
    assert codes(j) == ["tensor.all_zero", "digest_mismatch"] and j.mismatch and not j.vouched
    assert j.findings[0].severity is Severity.FAIL and j.verdict is Verdict.FAIL
    assert j.findings[1].detail == {"expected": str(wrong), "actual": str(sha256(model))}
    assert spies == {"hash": [], "scan": [False]}  # the given digest is not computed again
    assert j.actual_digest == sha256(model)


def test_streamed_findings_are_used_when_the_digest_matched(model: Path, spies: dict[str, list[Any]]) -> None:
    j = judge(
        model,
        NAME,
        expected_size=model.stat().st_size,
        expected_digest=sha256(model),
        actual_size=model.stat().st_size,
        actual_digest=sha256(model),
        streamed=streamed(model),
    )
    assert spies == {"hash": [], "scan": []}  # neither hashed nor scanned: both rode on the download's read
    assert j.checks == ("digest", "sniff", "structure", "content")
    assert list(j.findings) == list(check_file(model, NAME, vouched=True).findings)


def test_an_unfinished_stream_leaves_the_scan_to_the_file(model: Path, spies: dict[str, list[Any]]) -> None:
    data = model.read_bytes()
    partial = StreamingCheck(NAME, len(data))
    partial.feed(0, data[:100])
    j = judge(model, NAME, expected_digest=sha256(model), actual_digest=sha256(model), streamed=partial)
    assert spies["scan"] == [True] and "content" in j.checks and j.verdict is Verdict.WARN


def test_unknown_digest_hashes_nothing_and_vouches_for_nothing(
    model: Path, spies: dict[str, list[Any]]
) -> None:
    j = judge(model, NAME, streamed=streamed(model))
    assert spies == {"hash": [], "scan": [False]}
    assert j.actual_digest is None and not j.vouched and not j.mismatch
    assert j.size == model.stat().st_size
    assert j.checks == ("sniff", "structure", "content")
    assert codes(j) == ["tensor.all_zero"] and j.verdict is Verdict.FAIL


def test_safetensors_format_and_header(model: Path) -> None:
    j = judge(model, NAME, expected_digest=sha256(model))
    assert j.format == "safetensors" and j.checks == ("digest", "sniff", "structure", "content")
    assert j.header is not None and sorted(t.name for t in j.header.tensors) == ["w.weight", "zero.weight"]
    assert parsed_headers([j]) == {NAME: j.header}


def test_json_format(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"num_hidden_layers": 2}')
    j = judge(path, "sub/config.json")
    assert (j.format, j.checks, j.findings, j.header) == ("json", ("sniff",), (), None)
    assert j.verdict is Verdict.OK
    path.write_text('{"num_hidden_layers": 2')  # cut off: not JSON after all
    j = judge(path, "sub/config.json")
    assert (j.format, codes(j), j.verdict) == ("other", ["sniff.invalid_json"], Verdict.FAIL)


def test_unknown_file_is_other(tmp_path: Path) -> None:
    path = tmp_path / "notes.bin"
    path.write_bytes(bytes(range(256)) * 4)
    j = judge(path, "notes.bin", expected_digest=sha256(path))
    assert (j.format, j.checks, j.findings, j.vouched) == ("other", ("digest", "sniff"), (), True)
    assert parsed_headers([j]) == {}


def test_a_safetensors_name_on_other_bytes_is_other(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(b"<!DOCTYPE html>\n<html><head><title>503</title></head></html>\n")
    j = judge(path, NAME)
    assert (j.format, j.checks, codes(j), j.header) == ("other", ("sniff",), ["sniff.html"], None)
    assert parsed_headers([j]) == {}  # the repo checks read it themselves and say why it is broken


def test_a_broken_safetensors_header_is_structure_without_content(model: Path) -> None:
    data = model.read_bytes()
    model.write_bytes(data[:-10])  # the data section ends early
    j = judge(model, NAME)
    assert j.format == "safetensors" and j.checks == ("sniff", "structure") and j.header is None
    assert j.verdict is Verdict.FAIL and any(c.startswith("safetensors.") for c in codes(j))


# ------------------------------------------------------------------------------------------------------
# Every format: recognised by content (the name a hint), its checker run, what ran said.


def small_gguf(path: Path) -> Path:
    """A GGUF written by the real writer: an F32 tensor with a NaN and a Q8_0 one."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(5)
    f32 = rng.standard_normal((64, 256)).astype(np.float32)
    f32[3, 7] = np.nan
    w = GGUFWriter(path, "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "b"] * 500)
    w.add_tensor("output.weight", f32)
    q8 = quantize(rng.standard_normal((128, 256)).astype(np.float32), GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_k.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_gguf_stream_is_used_like_a_safetensors_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vcache.checks.gguf

    path = small_gguf(tmp_path / "weights.bin")  # not a GGUF name: its magic says what it is
    fresh = check_file(path, "weights.bin", vouched=True)
    scans: list[Any] = []
    real = vcache.checks.gguf.scan_gguf
    monkeypatch.setattr(vcache.checks.gguf, "scan_gguf", lambda *a, **k: scans.append(a) or real(*a, **k))
    for step in (1, 7, 1000, 1 << 20):
        data = path.read_bytes()
        stream = StreamingCheck("weights.bin", len(data))
        for pos in range(0, len(data), step):
            stream.feed(pos, memoryview(data)[pos : pos + step])
        j = judge(
            path, "weights.bin", expected_digest=sha256(path), actual_digest=sha256(path), streamed=stream
        )
        assert scans == [], step
        assert (j.format, j.checks) == ("gguf", ("digest", "sniff", "structure", "content"))
        assert j.findings == fresh.findings and "tensor.nan" in codes(j)


def test_formats_are_recognised_by_content_with_the_name_as_a_hint(tmp_path: Path) -> None:
    import torch

    gguf_bytes = small_gguf(tmp_path / "g").read_bytes()
    torch.save({"w": torch.ones(4)}, tmp_path / "t")
    zip_bytes = (tmp_path / "t").read_bytes()
    cases = [
        ("model.q4", gguf_bytes, "gguf", ("sniff", "structure", "content")),
        ("checkpoint", zip_bytes, "pytorch-zip", ("sniff", "structure", "content", "imports")),
        # A name that contradicts the content is a finding, as before; the format is what the bytes are.
        ("model.safetensors", zip_bytes, "pytorch-zip", ("sniff",)),
        # A GGUF name gets the GGUF checker, which says the bytes are not GGUF.
        ("model.gguf", bytes(range(256)) * 4, "gguf", ("sniff", "structure")),
        ("notes.bin", bytes(range(256)) * 4, "other", ("sniff",)),
    ]
    for name, data, fmt, checks in cases:
        path = tmp_path / "case"
        path.write_bytes(data)
        j = judge(path, name)
        assert (j.format, j.checks) == (fmt, checks), name
    assert "sniff.zip" in codes(judge(tmp_path / "t", "model.safetensors"))
    path.write_bytes(bytes(range(256)) * 4)
    assert "gguf.bad_magic" in codes(judge(path, "model.gguf"))
