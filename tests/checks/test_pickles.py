"""Tests for vcache.checks.pickles and vcache.checks.pytorch: PyTorch checkpoints, TorchScript and pickles.

Every file is written by the real writer: ``torch.save`` (zip, and ``_use_new_zipfile_serialization=False``),
``torch.jit.save``, ``pickle.dumps``; damaged variants are made by flipping bytes in place or by rewriting the
archive with ``zipfile`` (which computes fresh CRCs). A malicious pickle is proven to run its payload under a
real ``torch.load(weights_only=False)`` in a subprocess, and proven not to run under the check.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcache.checks.pickles import WEIGHTS_ONLY_GLOBALS, import_allowed, walk_pickle
from vcache.checks.pytorch import FORMATS, check_pytorch, sniff_format
from vcache.report import Finding, Severity, Verdict, verdict_of
from vcache.testing.models import LlamaShape

torch = pytest.importorskip("torch")

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None, max_examples=60)


# ------------------------------------------------------------------------------------------------------
# Helpers.


def codes(findings: list[Finding], severity: Severity | None = None) -> set[str]:
    return {f.code for f in findings if severity is None or f.severity is severity}


def only(findings: list[Finding], code: str) -> Finding:
    found = [f for f in findings if f.code == code]
    assert len(found) == 1, [f.code for f in findings]
    return found[0]


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is not Severity.INFO]


def state_dict() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(16, 8, generator=g),
        "layer.bias": torch.zeros(16),
        "half.weight": torch.randn(4, 4, generator=g).half(),
        "bf16.weight": torch.randn(4, 4, generator=g).bfloat16(),
        "steps": torch.arange(5),
        "fp8.weight": torch.randn(8, generator=g).to(torch.float8_e4m3fn),
    }


def save(obj: Any, path: Path, *, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def member_data_offset(path: Path, name: str) -> int:
    """Absolute offset of a zip member's bytes (after its local header)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def rewrite_zip(
    src: Path,
    dst: Path,
    *,
    replace: Mapping[str, bytes | None] = {},
    add: Mapping[str, bytes] = {},
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """Copy the archive member by member with fresh CRCs; ``replace`` maps names to new bytes (None
    drops the member); ``add`` appends members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in add.items():
            zout.writestr(name, data)
    return dst


def archive_name(path: Path, suffix: str) -> str:
    with zipfile.ZipFile(path) as zf:
        return next(n for n in zf.namelist() if n.endswith(suffix))


def check(path: Path, **kwargs: Any) -> tuple[str, list[Finding], tuple[str, ...]]:
    kwargs.setdefault("vouched", False)
    fmt, findings, checks = check_pytorch(path, **kwargs)
    assert fmt in FORMATS
    assert "pytorch.internal_error" not in codes(findings), findings
    return fmt, findings, checks


class Evil:
    """Pickles to a call of os.system: what a malicious checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


@dataclass
class TrainingConfig:
    """A class of user code that a checkpoint pickles (as Lightning checkpoints do with their configs)."""

    lr: float = 0.1


# ------------------------------------------------------------------------------------------------------
# Clean files from the real writers.


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_clean_torch_save_is_ok_with_every_check(tmp_path: Path, legacy: bool) -> None:
    path = save(state_dict(), tmp_path / "model.pt", legacy=legacy)
    fmt, findings, checks = check(path)
    assert fmt == ("pytorch-legacy" if legacy else "pytorch-zip")
    assert sniff_format(path) == fmt
    assert problems(findings) == []
    assert checks == ("sniff", "structure", "content", "imports")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_clean_transformers_state_dict_is_ok(tmp_path: Path, legacy: bool) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LlamaShape().config()))
    path = save(model.state_dict(), tmp_path / "pytorch_model.bin", legacy=legacy)
    fmt, findings, checks = check(path)
    assert fmt == ("pytorch-legacy" if legacy else "pytorch-zip")
    assert verdict_of(findings) is Verdict.OK, [f.message for f in problems(findings)]
    assert checks == ("sniff", "structure", "content", "imports")


def test_content_scan_names_tensors_from_the_pickle(tmp_path: Path) -> None:
    """A storage is reported under the state-dict key that uses it, with its shape."""
    sd = state_dict()
    sd["layer.weight"][3, 2] = float("nan")
    _, findings, _ = check(save(sd, tmp_path / "model.pt"))
    f = only(findings, "tensor.nan")
    assert f.tensor == "layer.weight" and "[16, 8]" in f.message and f.detail is not None
    assert f.detail["first_index"] == 3 * 8 + 2


def test_nested_checkpoint_and_parameters_are_named(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight[1, 1] = float("inf")
    ckpt = {"state_dict": model.state_dict(), "params": list(model.parameters()), "epoch": 3}
    _, findings, _ = check(save(ckpt, tmp_path / "last.ckpt"))
    assert only(findings, "tensor.inf").tensor == "state_dict.weight"


class Scripted(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


def test_torchscript_is_recognised_with_a_code_warning_and_its_imports(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(Scripted()), path)
    fmt, findings, checks = check(path)
    assert fmt == "torchscript" == sniff_format(path)
    assert checks == ("sniff", "structure", "content", "imports")
    code = only(findings, "torchscript.code")
    assert code.severity is Severity.WARN and "runs" in code.message and code.detail is not None
    assert any(name.endswith(".py") for name in code.detail["code_files"])
    listed = only(findings, "torchscript.imports")
    assert listed.severity is Severity.INFO and listed.detail is not None
    assert "torch._utils._rebuild_tensor_v2" in listed.detail["imports"]
    assert any(name.startswith("__torch__") for name in listed.detail["imports"])
    assert codes(findings, Severity.FAIL) == set()
    assert verdict_of(findings) is Verdict.WARN


def test_torchscript_storage_damage_is_found(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    module = Scripted()
    with torch.no_grad():
        module.linear.weight[0, 0] = float("nan")
    torch.jit.save(torch.jit.script(module), path)
    _, findings, _ = check(path)
    assert "tensor.nan" in codes(findings, Severity.FAIL)


# ------------------------------------------------------------------------------------------------------
# Damage.


def test_flipped_byte_in_a_storage_fails_its_crc(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    storage = archive_name(path, "/data/0")
    at = member_data_offset(path, storage) + 5
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    fmt, findings, _ = check(path)
    f = only(findings, "zip.crc_mismatch")
    assert fmt == "pytorch-zip" and f.severity is Severity.FAIL
    assert f.detail is not None and f.detail["members"] == [storage]
    assert "re-download" in f.message


def test_crc_damage_with_a_publisher_digest_says_downloading_again_cannot_help(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    at = member_data_offset(path, archive_name(path, "/data.pkl")) + 3
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\xff")
    _, findings, _ = check(path, vouched=True)
    assert "cannot help" in only(findings, "zip.crc_mismatch").message


def test_missing_storage_fails(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    gone = archive_name(path, "/data/0")
    damaged = rewrite_zip(path, tmp_path / "damaged.pt", replace={gone: None})
    _, findings, _ = check(damaged)
    f = only(findings, "pytorch.missing_storage")
    assert f.severity is Severity.FAIL and f.tensor == "layer.weight"
    assert f.detail is not None and f.detail["expected"] == gone
    assert "zip.crc_mismatch" not in codes(findings)


def test_storage_of_the_wrong_size_fails(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    name = archive_name(path, "/data/0")
    with zipfile.ZipFile(path) as zf:
        short = zf.read(name)[:-4]
    _, findings, _ = check(rewrite_zip(path, tmp_path / "short.pt", replace={name: short}))
    f = only(findings, "pytorch.storage_size")
    assert f.detail is not None and (f.detail["expected_bytes"], f.detail["actual_bytes"]) == (512, 508)


def test_nan_in_a_float_storage_with_a_fresh_crc_fails(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    name = archive_name(path, "/data/0")  # layer.weight, float32
    with zipfile.ZipFile(path) as zf:
        values = np.frombuffer(zf.read(name), "<f4").copy()
    values[10] = np.nan
    damaged = rewrite_zip(path, tmp_path / "nan.pt", replace={name: values.tobytes()})
    _, findings, _ = check(damaged)
    assert codes(findings, Severity.FAIL) == {"tensor.nan"}
    assert only(findings, "tensor.nan").tensor == "layer.weight"


def test_nan_in_bf16_and_half_storages_of_a_legacy_file_fails(tmp_path: Path) -> None:
    sd = state_dict()
    sd["half.weight"][0, 0] = float("nan")
    sd["bf16.weight"][1, 1] = float("-inf")
    _, findings, _ = check(save(sd, tmp_path / "model.bin", legacy=True))
    assert only(findings, "tensor.nan").tensor == "half.weight"
    assert only(findings, "tensor.inf").tensor == "bf16.weight"


def test_zero_filled_storage_fails_unless_vouched(tmp_path: Path) -> None:
    sd = {"mlp.down_proj.weight": torch.zeros(64, 64)}
    path = save(sd, tmp_path / "model.pt")
    assert only(check(path)[1], "tensor.all_zero").severity is Severity.FAIL
    assert only(check(path, vouched=True)[1], "tensor.all_zero").severity is Severity.WARN


def test_tensor_view_outside_its_storage_fails(tmp_path: Path) -> None:
    path = save({"w": torch.ones(4)}, tmp_path / "model.pt")
    name = archive_name(path, "/data.pkl")
    with zipfile.ZipFile(path) as zf:
        data = zf.read(name)
    assert data.count(b"K\x04\x85") == 1  # the size tuple (4,): BININT1 4, TUPLE1
    patched = data.replace(b"K\x04\x85", b"K\x05\x85")
    _, findings, _ = check(rewrite_zip(path, tmp_path / "bounds.pt", replace={name: patched}))
    f = only(findings, "pytorch.tensor_bounds")
    assert f.tensor == "w" and "need 5 elements" in f.message


def test_truncated_legacy_file_fails(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.bin", legacy=True)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    fmt, findings, _ = check(path)
    assert fmt == "pytorch-legacy"
    assert "pytorch.truncated" in codes(findings, Severity.FAIL)


def test_trailing_bytes_after_a_legacy_file_warn(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.bin", legacy=True)
    with open(path, "ab") as f:
        f.write(b"extra")
    _, findings, _ = check(path)
    assert codes(problems(findings)) == {"pytorch.trailing_data"}


def test_truncated_zip_is_invalid_and_still_recognised(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
    fmt, findings, checks = check(path)
    assert fmt == "pytorch-zip" and codes(findings) == {"zip.invalid"}
    assert "imports" not in checks and "content" not in checks


def test_missing_data_pkl_is_a_layout_failure(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    damaged = rewrite_zip(path, tmp_path / "nopkl.pt", replace={archive_name(path, "/data.pkl"): None})
    fmt, findings, checks = check(damaged)
    assert fmt == "pytorch-zip" and "pytorch.layout" in codes(findings, Severity.FAIL)
    assert "imports" not in checks and "content" not in checks


def test_deflated_archive_has_its_crcs_checked_and_says_what_it_did_not_scan(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    deflated = rewrite_zip(path, tmp_path / "deflated.pt", compression=zipfile.ZIP_DEFLATED)
    fmt, findings, _ = check(deflated)
    assert fmt == "pytorch-zip" and problems(findings) == []
    assert only(findings, "pytorch.not_scanned").severity is Severity.INFO
    # Damage inside a deflated member is still caught, by inflating it.
    name = archive_name(deflated, "/data/0")
    with zipfile.ZipFile(deflated) as zf:
        info = zf.getinfo(name)
    at = member_data_offset(deflated, name) + info.compress_size // 2
    with open(deflated, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert "zip.crc_mismatch" in codes(check(deflated)[1], Severity.FAIL)


def test_zip_member_names_that_escape_are_flagged(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    for bad in ("../../evil.sh", "/etc/cron.d/evil", "archive/../../x"):
        damaged = rewrite_zip(path, tmp_path / "escape.pt", add={bad: b"echo hi\n"})
        fmt, findings, _ = check(damaged)
        f = only(findings, "zip.unsafe_name")
        assert fmt == "pytorch-zip" and f.severity is Severity.FAIL and bad in f.message


def test_duplicate_member_names_are_flagged(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    name = archive_name(path, "/data/0")
    with pytest.warns(UserWarning, match="Duplicate name"):
        damaged = rewrite_zip(path, tmp_path / "dup.pt", add={name: bytes(512)})
    assert "zip.duplicate_name" in codes(check(damaged)[1], Severity.FAIL)


def test_zip_bomb_is_not_inflated(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("archive/data/0", bytes(80 << 20))
    fmt, findings, _ = check(path)
    assert fmt == "pytorch-zip" and "zip.bomb" in codes(findings, Severity.FAIL)


def test_overlapping_members_are_flagged(tmp_path: Path) -> None:
    path = save(state_dict(), tmp_path / "model.pt")
    data = bytearray(path.read_bytes())
    first = data.find(b"PK\x01\x02")  # the first central directory entry (data.pkl)
    for field_offset in (20, 24):  # compressed and uncompressed size: now reaching into the next member
        (n,) = struct.unpack_from("<L", data, first + field_offset)
        struct.pack_into("<L", data, first + field_offset, n + 200)
    path.write_bytes(bytes(data))
    _, findings, _ = check(path)
    assert "zip.overlap" in codes(findings, Severity.FAIL)


# ------------------------------------------------------------------------------------------------------
# Imports: the pickle is never run.


def test_allowlist_is_what_torch_weights_only_accepts() -> None:
    from torch._weights_only_unpickler import _get_allowed_globals

    assert frozenset(_get_allowed_globals()) == WEIGHTS_ONLY_GLOBALS


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_os_system_is_an_unsafe_import_and_nothing_runs(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "MARKER"
    ckpt = {"weight": torch.ones(3), "payload": Evil(f"touch {marker}")}
    path = save(ckpt, tmp_path / "pytorch_model.bin", legacy=legacy)

    fmt, findings, checks = check(path)
    assert fmt == ("pytorch-legacy" if legacy else "pytorch-zip")
    f = only(findings, "pickle.unsafe_import")
    assert f.severity is Severity.FAIL
    assert "posix.system (os.system)" in f.message and "never" in f.message
    assert f.detail is not None and f.detail["imports"] == ["posix.system"]
    assert "imports" in checks
    assert not marker.exists()
    # Allowing it explicitly does not help: os/posix are never allowed.
    f2 = only(check(path, allow_imports=["posix.system"])[1], "pickle.unsafe_import")
    assert f2.detail is not None and f2.detail["never_allowed"] == ["posix.system"]
    assert not marker.exists()

    # The file really is malicious: a real unpickler runs the payload.
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
        check=True,
        capture_output=True,
    )
    assert marker.exists()


def test_every_offending_global_is_named(tmp_path: Path) -> None:
    ckpt = {
        "w": torch.ones(2),
        "a": Evil("true"),
        "b": TrainingConfig(),
        "c": np.arange(3),
    }
    _, findings, _ = check(save(ckpt, tmp_path / "model.pt"))
    f = only(findings, "pickle.unsafe_import")
    assert f.detail is not None
    named = set(f.detail["imports"])
    assert {"posix.system", f"{TrainingConfig.__module__}.TrainingConfig"} <= named
    assert any(n.startswith("numpy.") and n.endswith("_reconstruct") for n in named)
    for name in named:
        assert name in f.message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_third_party_class_fails_and_passes_when_allowed(tmp_path: Path, legacy: bool) -> None:
    ckpt = {"w": torch.ones(2), "config": TrainingConfig(), "mean": np.zeros(2, np.float32)}
    path = save(ckpt, tmp_path / "last.ckpt", legacy=legacy)
    f = only(check(path)[1], "pickle.unsafe_import")
    assert f.detail is not None
    named = f.detail["imports"]
    assert f"{TrainingConfig.__module__}.TrainingConfig" in named and "--allow-import" in f.message
    _, findings, checks = check(path, allow_imports=named)
    assert problems(findings) == [] and "imports" in checks
    # Allowing only some of them names the rest.
    rest = only(check(path, allow_imports=named[:1])[1], "pickle.unsafe_import")
    assert rest.detail is not None and rest.detail["imports"] == named[1:]


def test_plain_pickles_are_walked(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    clean = tmp_path / "clean.pkl"
    clean.write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "b": {1, 2}}, protocol=4))
    fmt, findings, checks = check(clean)
    assert fmt == "pickle" and problems(findings) == [] and checks == ("sniff", "structure", "imports")
    for protocol in range(6):
        evil = tmp_path / f"evil{protocol}.pkl"
        evil.write_bytes(pickle.dumps(Evil(f"touch {marker}"), protocol=protocol))
        fmt, findings, _ = check(evil)
        assert fmt == "pickle", protocol
        f = only(findings, "pickle.unsafe_import")
        assert f.detail is not None and f.detail["imports"] == ["posix.system"], protocol
    assert not marker.exists()


def test_a_second_pickle_in_the_same_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "two.pkl"
    first = pickle.dumps([1, 2], protocol=2)
    path.write_bytes(first + pickle.dumps(Evil("true"), protocol=2))
    f = only(check(path)[1], "pickle.unsafe_import")
    assert f.detail is not None and f.detail["pickles"] == [f"pickle 2 (from byte {len(first)})"]


def test_stack_global_is_resolved_through_the_memo() -> None:
    # module and name pushed, memoized, popped, then fetched back with BINGET before STACK_GLOBAL.
    data = (
        b"\x80\x04"
        + b"\x8c\x05posix\x94"  # SHORT_BINUNICODE 'posix', MEMOIZE -> 0
        + b"\x8c\x06system\x94"  # MEMOIZE -> 1
        + b"00"  # POP POP
        + b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        + b"\x8c\x04true\x85R."  # ('true',) REDUCE STOP
    )
    walk = walk_pickle(data)
    assert walk.complete and [g.full for g in walk.imports] == ["posix.system"]


def test_unresolvable_stack_global_and_computed_calls_fail() -> None:
    from vcache.checks.pickles import import_findings

    # STACK_GLOBAL whose module is the result of a call: only running it would tell.
    data = b"\x80\x04\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R\x8c\x01x\x93)R."
    walk = walk_pickle(data)
    assert walk.complete
    assert codes(import_findings([("p", walk)])) == {"pickle.unresolved_import"}
    # REDUCE on a value computed while loading (here an OrderedDict instance) is not an import to judge.
    walk = walk_pickle(b"\x80\x02ccollections\nOrderedDict\n)R)R.")
    f = only(import_findings([("p", walk)]), "pickle.unsafe_call")
    assert "collections.OrderedDict(...)" in f.message
    # EXT codes name a global through the loading process's copyreg registry.
    walk = walk_pickle(b"\x80\x02\x82\x01)R.")
    assert codes(import_findings([("p", walk)])) == {"pickle.unresolved_import"}


def test_build_on_an_imported_class_is_an_unsafe_call() -> None:
    from vcache.checks.pickles import import_findings

    # c torch\nTensor\n then BUILD (None, {'__add__': ...}): would set a class attribute.
    data = b"\x80\x02ctorch\nTensor\nN}X\x07\x00\x00\x00__add__K\x01s\x86b."
    findings = import_findings([("p", walk_pickle(data))])
    assert codes(findings) == {"pickle.unsafe_call"}


def test_python2_names_are_mapped_like_the_unpickler_does() -> None:
    walk = walk_pickle(b"c__builtin__\nset\n)R.")
    assert [(g.full, g.written) for g in walk.imports] == [("builtins.set", "__builtin__.set")]
    assert import_allowed("builtins.set") and not import_allowed("builtins.eval", ["builtins.eval"])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80\x02]q\x00(K\x01K\x02e", "truncated"),  # no STOP
        (b"\x80\x02X\xff\xff\xff\x7fabc.", "truncated"),  # string length past the end
        (b"\x80\x02t.", "MARK"),  # TUPLE without MARK
        (b"\x80\x02h\x07.", "memo"),  # BINGET of a key never stored
        (b"\x80\x02\xfe.", "unknown"),  # not an opcode
    ],
)
def test_malformed_pickles_are_invalid(data: bytes, why: str) -> None:
    walk = walk_pickle(data)
    assert walk.error is not None and why in walk.error


def test_huge_claimed_lengths_are_never_allocated(tmp_path: Path) -> None:
    path = tmp_path / "huge.pkl"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x" * 100)  # BINBYTES8 of 4 EiB
    fmt, findings, _ = check(path)
    assert fmt == "pickle" and "truncated" in only(findings, "pickle.invalid").message


def test_protocol_0_text_is_only_a_pickle_when_it_parses(tmp_path: Path) -> None:
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    assert sniff_format(evil) == "pickle"
    assert only(check(evil)[1], "pickle.unsafe_import").detail == {
        "imports": ["os.system"],
        "never_allowed": ["os.system"],
        "pickles": ["the pickle"],
        "offsets": [0],
    }
    text = tmp_path / "notes.txt"
    text.write_bytes(b"(a parenthesis opens this note)\n")
    assert check(text) == ("other", [], ("sniff",))


def test_non_torch_files_are_other(tmp_path: Path) -> None:
    import safetensors.numpy

    st_path = tmp_path / "x.safetensors"
    safetensors.numpy.save_file({"w": np.ones((4, 4), np.float32)}, st_path)
    assert check(st_path) == ("other", [], ("sniff",))
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert check(plain) == ("other", [], ("sniff", "structure"))
    missing = check(tmp_path / "nope.bin")
    assert missing[0] == "other" and codes(missing[1]) == {"pytorch.unreadable"}


# ------------------------------------------------------------------------------------------------------
# Random damage never raises.


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("samples")
    small = {"w": torch.randn(8, 4), "b": torch.zeros(3).half(), "n": torch.arange(3)}
    out = {
        "zip": save(small, folder / "z.pt").read_bytes(),
        "legacy": save(small, folder / "l.pt", legacy=True).read_bytes(),
        "pickle": pickle.dumps({"x": [1, 2, (3, "y")], "s": {1}}, protocol=2),
    }
    torch.jit.save(torch.jit.script(Scripted()), folder / "ts.pt")
    out["torchscript"] = (folder / "ts.pt").read_bytes()
    return out


# pickletools warns about invalid escapes in damaged protocol-0 strings; harmless here.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@FAST
@given(data=st.data())
def test_random_corruption_never_raises(
    samples: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    kind = data.draw(st.sampled_from(sorted(samples)))
    blob = bytearray(samples[kind])
    action = data.draw(st.sampled_from(["flip", "truncate", "insert", "zero"]))
    at = data.draw(st.integers(0, len(blob) - 1))
    if action == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del blob[at:]
    elif action == "insert":
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        blob[at : at + 64] = bytes(len(blob[at : at + 64]))
    path = tmp_path_factory.mktemp("corrupt") / "model.pt"
    path.write_bytes(bytes(blob))
    _, _, checks = check(path)
    assert checks[:1] == ("sniff",)
    assert sniff_format(path) in FORMATS


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_byte_flips_everywhere_in_a_legacy_file_never_raise(
    tmp_path: Path, samples: dict[str, bytes]
) -> None:
    rng = random.Random(0)
    blob = samples["legacy"]
    path = tmp_path / "l.pt"
    for i in range(0, len(blob), max(1, len(blob) // 300)):
        damaged = bytearray(blob)
        damaged[i] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(damaged))
        check(path)


def test_pickle_reader_works_on_a_stream_and_leaves_it_after_stop() -> None:
    stream = io.BytesIO(pickle.dumps(1, protocol=2) + pickle.dumps([2], protocol=2))
    assert walk_pickle(stream).root == 1
    assert walk_pickle(stream).root == [2]


def test_torch_is_not_imported_by_the_checker() -> None:
    code = textwrap.dedent(
        """
        import sys
        import vcache.checks.pytorch, vcache.checks.pickles
        assert "torch" not in sys.modules, "torch imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
