"""Tests for vcache.checks.sniff: what a file really is, from byte-exact inputs."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vcache.checks.sniff import MAX_JSON_BYTES, sniff
from vcache.report import Finding, Severity

LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 4976698672\n"
)
HF_HTML = (
    b'<!DOCTYPE html>\n<html class="" lang="en">\n<head>\n<meta charset="utf-8" />\n'
    b"<title>Hugging Face &ndash; The AI community building the future.</title>\n</head>\n"
    b"<body><h1>503</h1><p>Service Unavailable</p></body>\n</html>\n"
)
NGINX_HTML = b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n</body>\r\n</html>\r\n"
S3_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message><RequestId>X1</RequestId></Error>"
)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def one(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [f.code for f in findings]
    return findings[0]


def safetensors_bytes(header: dict[str, object] | None = None, data: bytes = b"\0" * 16) -> bytes:
    header = header or {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


# ------------------------------------------------------------------------------------------------------
# Files that are what they should be.


@pytest.mark.parametrize("expect", ["safetensors", None])
def test_a_real_safetensors_file_gives_nothing(tmp_path: Path, expect: str | None) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(path), metadata={"format": "pt"})
    assert sniff(path, expect=expect) == []


def test_a_safetensors_file_whose_length_prefix_looks_like_a_pickle_gives_nothing(tmp_path: Path) -> None:
    """A 640-byte header starts the file with 0x80 0x02, the pickle protocol-2 opcode."""
    header = {"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "__metadata__": {"k": "x" * 560}}
    data = safetensors_bytes(header, b"\1\2\3\4")
    assert data[:2] == b"\x80\x02"
    assert sniff(write(tmp_path, "m.safetensors", data), expect="safetensors") == []


def test_a_safetensors_file_of_zero_tensor_data_is_not_zero_filled(tmp_path: Path) -> None:
    data = safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [4096], "data_offsets": [0, 16384]}}, bytes(16384)
    )
    assert sniff(write(tmp_path, "m.safetensors", data), expect="safetensors") == []


@pytest.mark.parametrize(
    "name,data",
    [
        ("config.json", b'{"model_type": "llama", "hidden_size": 64}\n'),
        ("tokenizer.json", json.dumps({"model": {"vocab": {"a": 0}}, "x": "\u00e9"}).encode()),
        ("model.safetensors.index.json", b'{"metadata": {"total_size": 1}, "weight_map": {}}'),
        ("config.json", b'{"rope_scaling": null, "x": NaN}'),  # Python and transformers accept NaN
    ],
)
def test_valid_json_gives_nothing(tmp_path: Path, name: str, data: bytes) -> None:
    assert sniff(write(tmp_path, name, data), expect="json") == []


def test_other_files_give_nothing(tmp_path: Path) -> None:
    assert sniff(write(tmp_path, "README.md", b"# Model card\n\nSome <b>html</b> later.\n")) == []
    assert sniff(write(tmp_path, "tokenizer.model", bytes(range(1, 256)) * 10)) == []


# ------------------------------------------------------------------------------------------------------
# Empty and zero-filled files.


def test_empty_file_fails_where_content_was_expected(tmp_path: Path) -> None:
    path = write(tmp_path, "model.safetensors", b"")
    f = one(sniff(path, expect="safetensors"))
    assert (f.code, f.severity) == ("sniff.empty", Severity.FAIL)
    assert f.detail == {"size": 0}
    assert one(sniff(write(tmp_path, "config.json", b""), expect="json")).severity is Severity.FAIL
    # with no expectation an empty file may be legitimate (.gitkeep, an empty __init__.py)
    assert one(sniff(path)).severity is Severity.INFO


@pytest.mark.parametrize("size", [1, 4096, 70_000, 3 << 20])
def test_zero_filled_file_fails(tmp_path: Path, size: int) -> None:
    f = one(sniff(write(tmp_path, "model.safetensors", bytes(size)), expect="safetensors"))
    assert (f.code, f.severity) == ("sniff.zero_filled", Severity.FAIL)
    assert f.detail == {"size": size}
    assert "invalid JSON in header" in f.message


@pytest.mark.parametrize("where", [4096, 1 << 20, (3 << 20) - 1])
def test_a_single_non_zero_byte_anywhere_means_not_zero_filled(tmp_path: Path, where: int) -> None:
    data = bytearray(3 << 20)
    data[where] = 1  # between the sampled windows for 1 MiB: found by the confirming full read
    assert sniff(write(tmp_path, "model.safetensors", bytes(data)), expect="safetensors") == []


def test_zero_filled_json_is_zero_filled_not_invalid_json(tmp_path: Path) -> None:
    f = one(sniff(write(tmp_path, "config.json", bytes(600)), expect="json"))
    assert f.code == "sniff.zero_filled"


# ------------------------------------------------------------------------------------------------------
# Pointers and pages saved in place of the file.


@pytest.mark.parametrize("expect", ["safetensors", "json", None])
def test_lfs_pointer_fails_with_oid_and_size(tmp_path: Path, expect: str | None) -> None:
    f = one(sniff(write(tmp_path, "model-00001-of-00004.safetensors", LFS_POINTER), expect=expect))
    assert (f.code, f.severity) == ("sniff.lfs_pointer", Severity.FAIL)
    assert f.detail == {
        "oid": "sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393",
        "size": 4976698672,
        "pointer_size": len(LFS_POINTER),
        "version": "https://git-lfs.github.com/spec/v1",
    }
    assert "git-LFS pointer" in f.message and "vcache pull" in f.message
    assert ("HeaderTooLarge" in f.message) is (expect == "safetensors")


@pytest.mark.parametrize(
    "data,detail",
    [
        (HF_HTML, {"title": "Hugging Face – The AI community building the future."}),
        (NGINX_HTML, {"title": "504 Gateway Time-out"}),
        (S3_XML, {"error_code": "AccessDenied", "error_message": "Request has expired"}),
        (
            b"\n  <!doctype html><p>Blocked by proxy</p>",
            {"first_line": "<!doctype html><p>Blocked by proxy</p>"},
        ),
        (b"<Error><Code>NoSuchKey</Code></Error>", {"error_code": "NoSuchKey"}),
    ],
)
def test_html_and_xml_pages_fail_naming_the_page(tmp_path: Path, data: bytes, detail: dict[str, str]) -> None:
    f = one(sniff(write(tmp_path, "model.safetensors", data), expect="safetensors"))
    assert (f.code, f.severity) == ("sniff.html", Severity.FAIL)
    assert f.detail == {"size": len(data), **detail}
    assert next(iter(detail.values())) in f.message
    assert "HeaderTooLarge" in f.message and "header too large" in f.message


def test_html_in_a_json_file_is_html_not_invalid_json(tmp_path: Path) -> None:
    f = one(sniff(write(tmp_path, "config.json", NGINX_HTML), expect="json"))
    assert f.code == "sniff.html" and "HeaderTooLarge" not in f.message


# ------------------------------------------------------------------------------------------------------
# Other formats where safetensors was expected.


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_where_safetensors_was_expected_fails(tmp_path: Path, protocol: int) -> None:
    data = pickle.dumps({"model.embed_tokens.weight": list(range(100))}, protocol=protocol)
    f = one(sniff(write(tmp_path, "model.safetensors", data), expect="safetensors"))
    assert (f.code, f.severity) == ("sniff.pickle", Severity.FAIL)
    assert f.detail == {"size": len(data), "protocol": protocol}
    assert "HeaderTooLarge" in f.message
    assert sniff(write(tmp_path, "pytorch_model.bin", data)) == []  # a pickle is fine where expected


def test_zip_where_safetensors_was_expected_fails(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # the layout torch.save writes
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        z.writestr("archive/data/0", b"\0" * 64)
    f = one(sniff(write(tmp_path, "model.safetensors", buf.getvalue()), expect="safetensors"))
    assert (f.code, f.severity) == ("sniff.zip", Severity.FAIL)
    assert "torch.save" in f.message and "HeaderTooLarge" in f.message


@pytest.mark.parametrize(
    "data,first_line",
    [
        (b'{"error":"Repository Not Found for url: https://huggingface.co/x/y."}', None),
        (b"Access denied\n", "Access denied"),
        (b"Entry not found", "Entry not found"),
    ],
)
def test_a_text_body_where_safetensors_was_expected_fails(
    tmp_path: Path, data: bytes, first_line: str | None
) -> None:
    f = one(sniff(write(tmp_path, "model.safetensors", data), expect="safetensors"))
    assert (f.code, f.severity) == ("sniff.text", Severity.FAIL)
    assert f.detail is not None and f.detail["first_line"] == (first_line or data.decode())
    assert "HeaderTooLarge" in f.message


def test_binary_garbage_is_left_to_the_header_parser(tmp_path: Path) -> None:
    data = b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4
    assert sniff(write(tmp_path, "model.safetensors", data), expect="safetensors") == []


# ------------------------------------------------------------------------------------------------------
# JSON files.


@pytest.mark.parametrize(
    "data,where,why",
    [
        (b'{"model_type": "llama", "hidden_si', "line 1 column 25", "text ends early"),
        (b'{"a": 1,}', "line 1 column 9", "Expecting property name"),
        (b'\xef\xbb\xbf{"a": 1}', "line 1 column 1", "BOM"),
        (b'{"a": "\xff"}', "byte 7", "not UTF-8"),
        (b"", None, None),
    ],
)
def test_invalid_json_fails_with_the_position(
    tmp_path: Path, data: bytes, where: str | None, why: str | None
) -> None:
    f = one(sniff(write(tmp_path, "config.json", data), expect="json"))
    if where is None:
        assert f.code == "sniff.empty"
        return
    assert (f.code, f.severity) == ("sniff.invalid_json", Severity.FAIL)
    assert f.detail is not None and f.detail["position"] == where
    assert why is not None and why in f.message
    assert "config.json" in f.message


@pytest.mark.parametrize(
    "data,why",
    [
        (b"[" * 990 + b"]" * 990, "nested"),  # Python's parser gives up near 1000 levels (RecursionError)
        (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "nested"),
        (b'{"vocab_size": ' + b"9" * 5000 + b"}", "digits"),  # int() refuses over 4300 digits (ValueError)
    ],
)
def test_json_python_cannot_parse_is_invalid_json_not_a_crash(tmp_path: Path, data: bytes, why: str) -> None:
    f = one(sniff(write(tmp_path, "config.json", data), expect="json"))
    assert (f.code, f.severity) == ("sniff.invalid_json", Severity.FAIL)
    assert "config.json" in f.message and why in f.message


def test_json_above_the_size_cap_is_not_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vcache.checks.sniff as sniff_module

    monkeypatch.setattr(sniff_module, "MAX_JSON_BYTES", 10)
    assert MAX_JSON_BYTES == 64 << 20
    assert sniff(write(tmp_path, "tokenizer.json", b'{"broken": '), expect="json") == []


def test_unreadable_file_is_a_finding(tmp_path: Path) -> None:
    f = one(sniff(tmp_path / "missing.safetensors", expect="safetensors"))
    assert (f.code, f.severity) == ("sniff.unreadable", Severity.FAIL)


def test_markup_is_fine_in_markup_files_when_nothing_else_is_expected(tmp_path: Path) -> None:
    openvino_ir = b'<?xml version="1.0"?>\n<net name="Model0" version="11">\n<layers>\n</layers>\n</net>\n'
    assert sniff(write(tmp_path, "openvino_model.xml", openvino_ir)) == []
    assert one(sniff(write(tmp_path, "pytorch_model.bin", HF_HTML))).code == "sniff.html"
