"""Tests for vcache.checks.onnx: ONNX models written by the real onnx writer, then damaged or crafted.

Models are built with ``onnx.helper`` / ``onnx.numpy_helper`` and saved with ``onnx.save_model`` (with
``save_as_external_data=True`` for external data); crafted references are made by editing a saved model's
``external_data`` entries through the onnx API and saving it again.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vcache.checks import onnx as onnx_check  # noqa: E402
from vcache.checks.onnx import ONNX_DTYPES, check_onnx, looks_like_onnx  # noqa: E402
from vcache.report import Finding, Severity, Verdict, verdict_of  # noqa: E402

MiB = 1 << 20
RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------------------
# Writing models.


def weights(rows: int = 64, cols: int = 32, dtype: type[np.generic] = np.float32) -> np.ndarray:
    return RNG.standard_normal((rows, cols)).astype(dtype)


def make_model(initializers: Sequence[TensorProto], nodes: Sequence[onnx.NodeProto] = ()) -> onnx.ModelProto:
    """A one-Gemm graph over the first initializer (shape [64, 32]) plus whatever else is passed."""
    node = helper.make_node("Gemm", ["x", initializers[0].name], ["y"])
    graph = helper.make_graph(
        [node, *nodes],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        list(initializers),
    )
    return helper.make_model(graph)


def save_external(model: onnx.ModelProto, root: Path, name: str = "model.onnx") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        location=path.name + ".data",
        all_tensors_to_one_file=True,
        size_threshold=0,
    )
    return path


def save_inline(model: onnx.ModelProto, root: Path, name: str = "model.onnx") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def edit_external(path: Path, change: Callable[[TensorProto], None]) -> None:
    """Apply ``change`` to every tensor with external data, and save the model again (data files untouched)."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            change(tensor)
    path.write_bytes(model.SerializeToString())


def set_entry(key: str, value: str) -> Callable[[TensorProto], None]:
    def change(tensor: TensorProto) -> None:
        for entry in tensor.external_data:
            if entry.key == key:
                entry.value = value
                return
        tensor.external_data.add(key=key, value=value)

    return change


def codes(findings: Sequence[Finding]) -> list[str]:
    return [f.code for f in findings]


def only(findings: Sequence[Finding], code: str) -> Finding:
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, findings
    return hits[0]


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    root = tmp_path / "snapshot"
    root.mkdir()
    return root


@pytest.fixture
def clean_external(snapshot: Path) -> Path:
    model = make_model([numpy_helper.from_array(weights(), "fc.weight")])
    return save_external(model, snapshot)


# ------------------------------------------------------------------------------------------------------
# Clean models.


def test_clean_model_with_external_data_is_ok(clean_external: Path, snapshot: Path) -> None:
    assert (snapshot / "model.onnx.data").stat().st_size == 64 * 32 * 4
    findings, checks = check_onnx(clean_external, root=snapshot, vouched=False)
    assert findings == []
    assert checks == ("sniff", "structure", "content")


def test_clean_inline_model_of_every_float_dtype_is_ok(snapshot: Path) -> None:
    tensors = [
        numpy_helper.from_array(weights(), "fc.weight"),
        numpy_helper.from_array(weights(dtype=np.float16), "half.weight"),
        numpy_helper.from_array(weights(dtype=np.float64), "double.weight"),
        helper.make_tensor("bf.weight", TensorProto.BFLOAT16, [64, 32], bf16_bytes(weights()), raw=True),
        helper.make_tensor("typed.weight", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0]),  # float_data
        numpy_helper.from_array(np.zeros(32, np.float32), "fc.bias"),  # legitimately zero
    ]
    path = save_inline(make_model(tensors), snapshot)
    findings, checks = check_onnx(path, root=snapshot, vouched=False)
    assert findings == []
    assert checks == ("sniff", "structure", "content")


def test_model_in_a_hugging_face_cache_snapshot_with_blob_symlinks_is_ok(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--net"
    snapshot = repo / "snapshots" / "0123abcd"
    built = save_external(make_model([numpy_helper.from_array(weights(), "fc.weight")]), tmp_path / "build")
    (repo / "blobs").mkdir(parents=True)
    (snapshot / "onnx").mkdir(parents=True)
    for name, blob in (("model.onnx", "aaaa"), ("model.onnx.data", "bbbb")):
        (repo / "blobs" / blob).write_bytes((built.parent / name).read_bytes())
        os.symlink(f"../../../blobs/{blob}", snapshot / "onnx" / name)
    findings, checks = check_onnx(snapshot / "onnx" / "model.onnx", root=snapshot, vouched=True)
    assert findings == []
    assert checks == ("sniff", "structure", "content")


# ------------------------------------------------------------------------------------------------------
# External-data references.


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("../../etc/passwd", "'..' component"),
        ("/etc/passwd", "absolute path"),
        ("sub/../../../etc/passwd", "'..' component"),
        ("..\\..\\etc\\passwd", "backslash"),
        ("C:/Windows/win.ini", "drive letter"),
        ("model.onnx.data\x00.txt", "NUL"),
        ("", "empty"),
    ],
)
def test_unsafe_location_fails_and_is_never_opened(
    clean_external: Path, snapshot: Path, location: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit_external(clean_external, set_entry("location", location))
    scanned: list[Path] = []
    real_scan = onnx_check.scan_tensors

    def spy(path: Path, *args: object, **kwargs: object) -> list[Finding]:
        scanned.append(Path(path))
        return real_scan(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_check, "scan_tensors", spy)
    findings, checks = check_onnx(clean_external, root=snapshot, vouched=False)
    hit = only(findings, "onnx.external_unsafe_path")
    assert hit.severity is Severity.FAIL
    assert hit.tensor == "fc.weight"
    assert reason in hit.message
    assert "model.onnx" in hit.message
    assert all(p.name != "passwd" for p in scanned)
    assert verdict_of(findings) is Verdict.FAIL
    assert "structure" in checks


def test_absolute_location_naming_a_real_file_fails(
    clean_external: Path, snapshot: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes((snapshot / "model.onnx.data").read_bytes())  # would even have the right size
    edit_external(clean_external, set_entry("location", str(secret)))
    findings, _ = check_onnx(clean_external, root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.external_unsafe_path"]


def test_symlink_leading_out_of_the_snapshot_fails(
    clean_external: Path, snapshot: Path, tmp_path: Path
) -> None:
    data = snapshot / "model.onnx.data"
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(data.read_bytes())
    data.unlink()
    os.symlink(outside, data)
    findings, _ = check_onnx(clean_external, root=snapshot, vouched=False)
    hit = only(findings, "onnx.external_outside")
    assert hit.severity is Severity.FAIL
    assert "symlink" in hit.message


def test_symlinked_directory_on_the_way_fails(snapshot: Path, tmp_path: Path) -> None:
    model = make_model([numpy_helper.from_array(weights(), "fc.weight")])
    built = save_external(model, tmp_path / "build")
    edit_external(built, set_entry("location", "weights/model.onnx.data"))
    (tmp_path / "elsewhere").mkdir()
    (built.parent / "model.onnx.data").rename(tmp_path / "elsewhere" / "model.onnx.data")
    (snapshot / "model.onnx").write_bytes(built.read_bytes())
    os.symlink(tmp_path / "elsewhere", snapshot / "weights")
    findings, _ = check_onnx(snapshot / "model.onnx", root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.external_outside"]
    assert "symlinked directory" in findings[0].message


def test_external_data_in_a_subdirectory_is_ok(snapshot: Path, tmp_path: Path) -> None:
    built = save_external(make_model([numpy_helper.from_array(weights(), "fc.weight")]), tmp_path / "build")
    edit_external(built, set_entry("location", "./weights/model.onnx.data"))
    (snapshot / "weights").mkdir()
    (built.parent / "model.onnx.data").rename(snapshot / "weights" / "model.onnx.data")
    (snapshot / "model.onnx").write_bytes(built.read_bytes())
    findings, _ = check_onnx(snapshot / "model.onnx", root=snapshot, vouched=False)
    assert findings == []


def test_offset_past_the_end_of_the_data_file_fails(clean_external: Path, snapshot: Path) -> None:
    size = (snapshot / "model.onnx.data").stat().st_size
    edit_external(clean_external, set_entry("offset", str(size + 4096)))
    findings, _ = check_onnx(clean_external, root=snapshot, vouched=False)
    hit = only(findings, "onnx.external_out_of_bounds")
    assert hit.severity is Severity.FAIL
    assert hit.detail is not None and hit.detail["file_size"] == size
    assert str(size) in hit.message


def test_range_running_past_the_end_fails(clean_external: Path, snapshot: Path) -> None:
    data = snapshot / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])  # a truncated data file
    findings, _ = check_onnx(clean_external, root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.external_out_of_bounds"]


def test_length_that_does_not_match_dims_fails(clean_external: Path, snapshot: Path) -> None:
    edit_external(clean_external, set_entry("length", str(64 * 32 * 4 - 4)))
    findings, _ = check_onnx(clean_external, root=snapshot, vouched=False)
    hit = only(findings, "onnx.tensor_size_mismatch")
    assert hit.detail is not None and hit.detail["expected"] == 64 * 32 * 4
    assert hit.detail["size"] == 64 * 32 * 4 - 4


def test_missing_external_file_fails(clean_external: Path, snapshot: Path) -> None:
    (snapshot / "model.onnx.data").unlink()
    findings, checks = check_onnx(clean_external, root=snapshot, vouched=False)
    hit = only(findings, "onnx.external_missing")
    assert hit.severity is Severity.FAIL
    assert "model.onnx.data" in hit.message
    assert checks == ("sniff", "structure", "content")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (set_entry("offset", "-4"), "not a plain decimal integer"),
        (set_entry("offset", "0x10"), "not a plain decimal integer"),
        (set_entry("length", " 8192"), "not a plain decimal integer"),
        (lambda t: t.external_data.add(key="location", value="other.data"), "given 2 times"),
        (lambda t: t.ClearField("external_data"), "no external_data entries"),
    ],
)
def test_malformed_external_entries_fail(
    clean_external: Path, snapshot: Path, change: Callable[[TensorProto], None], problem: str
) -> None:
    edit_external(clean_external, change)
    findings, _ = check_onnx(clean_external, root=snapshot, vouched=False)
    hit = only(findings, "onnx.external_invalid")
    assert problem in hit.message


def test_unknown_external_key_warns(clean_external: Path, snapshot: Path) -> None:
    edit_external(clean_external, set_entry("compression", "zstd"))
    findings, _ = check_onnx(clean_external, root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.external_unknown_key"]
    assert verdict_of(findings) is Verdict.WARN


def test_stray_external_entry_is_judged_even_when_readers_ignore_it(
    clean_external: Path, snapshot: Path
) -> None:
    def change(tensor: TensorProto) -> None:
        tensor.data_location = TensorProto.DEFAULT
        tensor.raw_data = weights().tobytes()
        set_entry("location", "../../etc/shadow")(tensor)

    edit_external(clean_external, change)
    findings, _ = check_onnx(clean_external, root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.external_unsafe_path"]


# ------------------------------------------------------------------------------------------------------
# Content.


def bf16_bytes(values: np.ndarray) -> bytes:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def test_nan_in_an_inline_initializer_fails(snapshot: Path) -> None:
    w = weights()
    w[3, 5] = np.nan
    path = save_inline(make_model([numpy_helper.from_array(w, "fc.weight")]), snapshot)
    findings, checks = check_onnx(path, root=snapshot, vouched=True)
    hit = only(findings, "tensor.nan")
    assert hit.severity is Severity.FAIL
    assert hit.tensor == "fc.weight"
    assert hit.detail is not None and hit.detail["first_index"] == 3 * 32 + 5
    assert "content" in checks


def test_nan_in_external_data_fails_and_names_the_data_file(snapshot: Path) -> None:
    w = weights()
    w[10, 0] = np.nan
    path = save_external(make_model([numpy_helper.from_array(w, "fc.weight")]), snapshot)
    findings, _ = check_onnx(path, root=snapshot, vouched=True)
    hit = only(findings, "tensor.nan")
    assert hit.tensor == "fc.weight"
    assert hit.detail is not None and hit.detail["file"] == "model.onnx.data"
    assert hit.detail["first_index"] == 10 * 32
    assert "model.onnx.data" in hit.message


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE])
@pytest.mark.parametrize("external", [False, True])
def test_inf_in_every_float_dtype_fails(snapshot: Path, dtype: int, external: bool) -> None:
    w = weights()
    w[0, 7] = np.inf
    raw = {
        TensorProto.FLOAT16: w.astype(np.float16).tobytes(),
        TensorProto.BFLOAT16: bf16_bytes(w),
        TensorProto.DOUBLE: w.astype(np.float64).tobytes(),
    }[dtype]
    first = numpy_helper.from_array(weights(), "fc.weight")
    tensor = helper.make_tensor("other.weight", dtype, [64, 32], raw, raw=True)
    model = make_model([first, tensor])
    path = save_external(model, snapshot) if external else save_inline(model, snapshot)
    findings, _ = check_onnx(path, root=snapshot, vouched=False)
    hit = only(findings, "tensor.inf")
    assert hit.tensor == "other.weight"
    assert hit.detail is not None and hit.detail["first_index"] == 7


def test_nan_in_packed_float_data_fails(snapshot: Path) -> None:
    typed = helper.make_tensor("typed.weight", TensorProto.FLOAT, [2, 2], [1.0, float("nan"), 3.0, 4.0])
    assert not typed.raw_data and len(typed.float_data) == 4
    path = save_inline(make_model([numpy_helper.from_array(weights(), "fc.weight"), typed]), snapshot)
    findings, _ = check_onnx(path, root=snapshot, vouched=False)
    assert only(findings, "tensor.nan").detail == {"count": 1, "first_index": 1, "indexes": [1]}


def test_nan_in_a_constant_node_and_in_a_subgraph_fails(snapshot: Path) -> None:
    bad = np.array([1.0, np.nan], np.float32)
    constant = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(bad, "const.value"))
    branch = helper.make_graph(
        [helper.make_node("Identity", ["inner.weight"], ["o"])],
        "branch",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(bad, "inner.weight")],
    )
    cond = helper.make_node("If", ["flag"], ["z"], then_branch=branch, else_branch=branch)
    path = save_inline(
        make_model([numpy_helper.from_array(weights(), "fc.weight")], [constant, cond]), snapshot
    )
    findings, _ = check_onnx(path, root=snapshot, vouched=False)
    assert sorted(f.tensor or "" for f in findings if f.code == "tensor.nan") == [
        "const.value",
        "inner.weight",
        "inner.weight",
    ]


def test_float16_in_int32_data_is_reported_unchecked(snapshot: Path) -> None:
    typed = helper.make_tensor("half.weight", TensorProto.FLOAT16, [2], [1.0, 2.0])
    assert typed.int32_data and not typed.raw_data
    path = save_inline(make_model([numpy_helper.from_array(weights(), "fc.weight"), typed]), snapshot)
    findings, _ = check_onnx(path, root=snapshot, vouched=False)
    hit = only(findings, "onnx.content_unchecked")
    assert hit.severity is Severity.INFO
    assert "half.weight" in hit.message


def test_zero_filled_external_range_follows_the_vouched_policy(snapshot: Path) -> None:
    w = RNG.standard_normal((1024, 768)).astype(np.float32)  # 3 MiB
    w[256:768] = 0  # 1.5 MiB of zeros in the middle
    path = save_external(make_model([numpy_helper.from_array(w, "fc.weight")]), snapshot)
    unvouched, _ = check_onnx(path, root=snapshot, vouched=False)
    vouched, _ = check_onnx(path, root=snapshot, vouched=True)
    assert only(unvouched, "tensor.zero_fill").severity is Severity.FAIL
    assert only(vouched, "tensor.zero_fill").severity is Severity.WARN
    assert only(vouched, "tensor.zero_fill").detail["file"] == "model.onnx.data"  # type: ignore[index]


def test_raw_data_of_the_wrong_size_fails(snapshot: Path) -> None:
    tensor = numpy_helper.from_array(weights(), "fc.weight")
    tensor.raw_data = tensor.raw_data[:-8]
    path = save_inline(make_model([tensor]), snapshot)
    findings, _ = check_onnx(path, root=snapshot, vouched=False)
    hit = only(findings, "onnx.tensor_size_mismatch")
    assert hit.detail is not None and hit.detail["field"] == "raw_data"


def test_negative_dimension_fails(snapshot: Path) -> None:
    tensor = numpy_helper.from_array(weights(), "fc.weight")
    tensor.dims[0] = -64
    path = save_inline(make_model([tensor]), snapshot)
    findings, _ = check_onnx(path, root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.invalid_tensor"]


def test_types_without_bit_rules_are_reported_by_the_scan_and_unknown_types_warn(snapshot: Path) -> None:
    int4 = helper.make_tensor("q.weight", TensorProto.INT4, [8], b"\x12\x34\x56\x78", raw=True)
    future = helper.make_tensor("future.weight", TensorProto.FLOAT, [4], b"\x00" * 16, raw=True)
    future.data_type = 99
    path = save_inline(make_model([numpy_helper.from_array(weights(), "fc.weight"), int4, future]), snapshot)
    findings, checks = check_onnx(path, root=snapshot, vouched=False)
    assert only(findings, "tensor.unchecked").tensor == "q.weight"
    assert only(findings, "onnx.unknown_dtype").tensor == "future.weight"
    assert verdict_of(findings) is Verdict.WARN
    assert checks == ("sniff", "structure", "content")


# ------------------------------------------------------------------------------------------------------
# Recognition, structure, and the optional extra.


def test_without_the_onnx_package_structure_is_reported_unchecked(
    clean_external: Path, snapshot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    findings, checks = check_onnx(clean_external, root=snapshot, vouched=False)
    hit = only(findings, "onnx.unchecked")
    assert hit.severity is Severity.INFO
    assert "structure" in hit.message and "pip install 'vcache[onnx]'" in hit.message
    assert checks == ("sniff",)
    assert len(findings) == 1


def test_looks_like_onnx_by_content_with_the_name_as_a_hint(clean_external: Path, tmp_path: Path) -> None:
    head = clean_external.read_bytes()[:4096]
    assert head[0] == 0x08
    assert looks_like_onnx(head, "model.onnx")
    assert looks_like_onnx(head, "weights.bin")  # content alone is enough
    # No ir_version first: only the .onnx name makes it plausible.
    model = onnx.load(str(clean_external), load_external_data=False)
    model.ClearField("ir_version")
    no_version = model.SerializeToString()[:4096]
    assert looks_like_onnx(no_version, "model.onnx")
    assert not looks_like_onnx(no_version, "weights.bin")
    others = [
        b"\x08\x01\x00\x00\x00\x00\x00\x00"
        + b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',  # safetensors
        b"GGUF\x03\x00\x00\x00" + bytes(16),
        b"PK\x03\x04" + bytes(26),
        b"\x80\x02}q\x00.",
        b"<!DOCTYPE html><html></html>",
        b"",
        b"\x08",
    ]
    for other in others:
        assert not looks_like_onnx(other, "weights.bin"), other
        assert not looks_like_onnx(other, "model.onnx") or other == b"\x08", other


def test_file_that_is_not_onnx_fails(snapshot: Path) -> None:
    path = snapshot / "model.onnx"
    path.write_bytes(b"<!DOCTYPE html><html><title>503</title></html>")
    findings, checks = check_onnx(path, root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.not_onnx"]
    assert checks == ("sniff",)


def test_truncated_model_fails_to_parse(snapshot: Path) -> None:
    path = save_inline(make_model([numpy_helper.from_array(weights(), "fc.weight")]), snapshot)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    findings, checks = check_onnx(path, root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.invalid_protobuf"]
    assert checks == ("sniff", "structure")


def test_file_over_the_protobuf_limit_fails_without_being_read(snapshot: Path) -> None:
    path = save_inline(make_model([numpy_helper.from_array(weights(), "fc.weight")]), snapshot)
    assert path.stat().st_size > 4096  # the head is the start of a real model
    with open(path, "r+b") as fh:
        fh.truncate(2**31)  # sparse: no disk space used
    findings, checks = check_onnx(path, root=snapshot, vouched=False)
    assert codes(findings) == ["onnx.too_large"]
    assert checks == ("sniff", "structure")


def test_model_outside_root_is_a_usage_error(clean_external: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not inside"):
        check_onnx(clean_external, root=tmp_path / "other", vouched=False)


def test_dtype_table_matches_onnx() -> None:
    for number, dtype in ONNX_DTYPES.items():
        assert TensorProto.DataType.Name(number) == dtype.name
        np_dtype = helper.tensor_dtype_to_np_dtype(number)
        if dtype.bits is not None and dtype.bits >= 8:
            assert np_dtype.itemsize * 8 == dtype.bits, dtype


@pytest.mark.parametrize("external", [False, True])
def test_random_corruption_never_raises(snapshot: Path, external: bool) -> None:
    tensors = [
        numpy_helper.from_array(weights(), "fc.weight"),
        numpy_helper.from_array(weights(8, 8, np.float16), "half.weight"),
        helper.make_tensor("typed.weight", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]),
    ]
    model = make_model(tensors)
    path = save_external(model, snapshot) if external else save_inline(model, snapshot)
    original = path.read_bytes()
    rng = random.Random(7)
    for _ in range(300):
        data = bytearray(original)
        kind = rng.randrange(3)
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:  # truncate
            del data[rng.randrange(1, len(data)) :]
        else:  # splice random bytes in
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        path.write_bytes(bytes(data))
        findings, checks = check_onnx(path, root=snapshot, vouched=False)
        assert all(isinstance(f, Finding) for f in findings)
        assert "onnx.internal_error" not in codes(findings), findings
        assert checks[:1] == ("sniff",)


def test_importing_the_check_does_not_import_onnx() -> None:
    import subprocess

    code = "import vcache.checks.onnx, sys; assert 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
