"""Every weight format, end to end: what ``verify``, ``scan`` and ``pull`` recognise, check and report.

Files are written by the real writers (``gguf.GGUFWriter``, ``torch.save`` zip and legacy, ``torch.jit.save``,
``onnx`` with external data, ``safetensors``), served by the local Hub, and judged through the command line
(real subprocesses for exit codes) and the Python API.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
onnx = pytest.importorskip("onnx")

from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFReader, GGUFWriter  # noqa: E402
from gguf.quants import quantize  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from vcache.cache import CacheRepo  # noqa: E402
from vcache.checks import COMPLETE_CHECKS, coverage  # noqa: E402
from vcache.pull import pull  # noqa: E402
from vcache.testing.hub import HubServer  # noqa: E402
from vcache.testing.models import repo_from_folder  # noqa: E402

F16_NAN = 0x7E00

#: The clean files and the format each is recognised as (names that do not say the format, on purpose).
CLEAN = {
    "model.safetensors": "safetensors",
    "llama.gguf": "gguf",
    "pytorch_model.bin": "pytorch-zip",
    "legacy.pt": "pytorch-legacy",
    "scripted.pt": "torchscript",
    "stats.pkl": "pickle",
    "onnx/model.onnx": "onnx",
    "config.json": "json",
    "tokenizer.model": "other",
}


def write_gguf(path: Path, *, q4_block_scale: int | None = None) -> Path:
    """A small llama.cpp-style GGUF: F16, F32, Q4_0 and Q8_0 tensors. ``q4_block_scale`` replaces the f16
    scale ``d`` of the Q4_0 tensor's first block (the damage of the issue's NaN-scale example)."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(path, "llama")
    w.add_name("tiny")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello"] * 20)
    w.add_tensor("token_embd.weight", (rng.standard_normal((64, 256)) * 0.02).astype(np.float16))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, np.float32))
    q4 = quantize((rng.standard_normal((256, 256)) * 0.02).astype(np.float32), T.Q4_0)
    w.add_tensor("blk.0.attn_q.weight", q4, raw_dtype=T.Q4_0)
    q8 = quantize((rng.standard_normal((256, 256)) * 0.02).astype(np.float32), T.Q8_0)
    w.add_tensor("blk.0.attn_k.weight", q8, raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if q4_block_scale is not None:
        start = next(int(t.data_offset) for t in GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight")
        with open(path, "r+b") as f:
            f.seek(start)
            f.write(q4_block_scale.to_bytes(2, "little"))
    return path


def onnx_model(folder: Path) -> Path:
    """A one-Gemm ONNX model whose weight lives in external data next to it (``model.onnx.data``)."""
    weight = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(weight, "w")],
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        helper.make_model(graph),
        str(path),
        save_as_external_data=True,
        location="model.onnx.data",
        all_tensors_to_one_file=True,
        size_threshold=0,
    )
    return path


class Scripted(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Evil:
    """Pickles to a call of ``os.system``: what a malicious checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


@dataclass
class TrainingConfig:
    """User code a checkpoint pickles (as Lightning checkpoints do with their hyperparameters)."""

    lr: float = 0.1


def state_dict() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {"layer.weight": torch.randn(16, 8, generator=g), "layer.bias": torch.randn(16, generator=g)}


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean file of each format (and the ONNX model's external data)."""
    folder = tmp_path_factory.mktemp("formats")
    save_file(
        {"w": np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32)},
        folder / "model.safetensors",
    )
    write_gguf(folder / "llama.gguf")
    torch.save(state_dict(), folder / "pytorch_model.bin")
    torch.save(state_dict(), folder / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.script(Scripted()), str(folder / "scripted.pt"))
    (folder / "stats.pkl").write_bytes(pickle.dumps({"steps": [1, 2, 3], "loss": 0.5}, protocol=4))
    onnx_model(folder / "onnx")
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.model").write_bytes(bytes(range(256)) * 8)
    return folder


def vcache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``vcache ARGS`` in a process of its own: the real exit code, stdout and stderr (never a traceback)."""
    done = subprocess.run(
        [sys.executable, "-m", "vcache", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def by_path(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["files"]}


def codes(entry: dict[str, Any]) -> list[str]:
    return [x["code"] for x in entry["findings"]]


def table_line(stdout: str, path: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if f"  {path}  " in ln]
    return line


# ------------------------------------------------------------------------------------------------------
# verify: every format recognised and checked, or honestly marked unchecked.


def test_a_clean_file_of_each_format_is_ok_with_every_check_of_its_format(clean_folder: Path) -> None:
    done = vcache("verify", str(clean_folder), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    files = by_path(json.loads(done.stdout))
    for path, fmt in CLEAN.items():
        entry = files[path]
        assert entry["format"] == fmt, (path, entry)
        assert set(entry["checks"]) == set(COMPLETE_CHECKS.get(fmt, {"sniff"})), (path, entry["checks"])
        if fmt == "torchscript":  # its code runs when it is loaded: always said
            assert (entry["verdict"], codes(entry)) == ("warn", ["torchscript.code", "torchscript.imports"])
        else:
            assert entry["verdict"] == "ok", (path, entry["findings"])
    for fmt in ("safetensors", "gguf", "pytorch-zip", "pytorch-legacy", "torchscript", "onnx"):
        assert {"structure", "content"} <= set(files[next(p for p, f in CLEAN.items() if f == fmt)]["checks"])
    for path in ("pytorch_model.bin", "legacy.pt", "scripted.pt", "stats.pkl"):
        assert "imports" in files[path]["checks"]
    # The external data file holds only bytes: checked through the model that references it.
    assert (files["onnx/model.onnx.data"]["format"], files["onnx/model.onnx.data"]["checks"]) == (
        "other",
        ["sniff"],
    )


def test_the_table_says_how_completely_each_file_was_checked(clean_folder: Path) -> None:
    done = vcache("verify", str(clean_folder))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[gguf: full]" in table_line(done.stdout, "llama.gguf")
    assert "[pytorch-zip: full]" in table_line(done.stdout, "pytorch_model.bin")
    assert table_line(done.stdout, "llama.gguf").endswith("verified")
    # No record, no digest, a format vcache has no checks for: said so, never "verified".
    unknown = table_line(done.stdout, "tokenizer.model")
    assert "[other: unchecked]" in unknown and "verified" not in unknown.lower()


def test_truncated_gguf_and_nan_block_scale_fail_verify(tmp_path: Path) -> None:
    """The issue's opening examples: both got "ok" with zero findings before."""
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut" / "model-Q4_0.gguf"
    cut.parent.mkdir()
    cut.write_bytes(whole[: len(whole) * 6 // 10])
    (tmp_path / "nan").mkdir()
    nan = write_gguf(tmp_path / "nan" / "model.gguf", q4_block_scale=F16_NAN)
    for target, code in ((cut, "gguf.truncated"), (nan, "gguf.scale_nan")):
        done = vcache("verify", str(target.parent), "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        (entry,) = json.loads(done.stdout)["files"]
        assert entry["verdict"] == "fail" and entry["format"] == "gguf" and code in codes(entry), entry
        table = vcache("verify", str(target))
        assert table.returncode == 1 and f"[{code}]" in table_line(table.stdout, target.name)


def test_a_damaged_pytorch_checkpoint_fails_verify_under_any_name(tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"
    torch.save({"w": torch.ones(64)}, path)
    data = bytearray(path.read_bytes())
    data[data.index(np.float32(1).tobytes() * 4) + 1] ^= 0xFF  # a flipped byte in the storage
    path.write_bytes(bytes(data))
    done = vcache("verify", str(path), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    (entry,) = json.loads(done.stdout)["files"]
    assert entry["format"] == "pytorch-zip" and "zip.crc_mismatch" in codes(entry)


def test_coverage_words() -> None:
    assert coverage("gguf", ("digest", "sniff", "structure", "content")) == "full"
    assert coverage("gguf", ("sniff", "structure")) == "partial"
    assert coverage("other", ("digest", "sniff")) == "digest only"
    assert coverage("onnx", ("digest", "sniff")) == "digest only"  # the onnx extra is missing
    assert coverage("other", ("sniff",)) == "unchecked"
    assert coverage(None, ()) == "unchecked"


# ------------------------------------------------------------------------------------------------------
# pull: the same checks on the way in; failures quarantined.


@pytest.fixture
def served(clean_folder: Path, tmp_path: Path) -> Iterator[tuple[HubServer, Path]]:
    """The clean files, plus a repo whose ``pytorch_model.bin`` calls ``os.system`` and one that pickles a
    third-party class; the marker file the payload would create."""
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({**state_dict(), "payload": Evil(f"touch {marker}")}, evil / "pytorch_model.bin")
    (evil / "config.json").write_text("{}")
    lightning = tmp_path / "lightning"
    lightning.mkdir()
    torch.save({"state_dict": state_dict(), "hparams": TrainingConfig()}, lightning / "last.ckpt")
    repos = [
        repo_from_folder("acme/formats", clean_folder),
        repo_from_folder("acme/evil", evil),
        repo_from_folder("acme/lightning", lightning),
    ]
    with HubServer(repos) as hub:
        yield hub, marker


def test_pull_checks_every_format_and_the_ledger_remembers_what_ran(
    served: tuple[HubServer, Path], cache_dir: Path
) -> None:
    hub, _ = served
    env = {"HF_ENDPOINT": hub.endpoint}
    done = vcache("pull", "acme/formats", "--cache-dir", str(cache_dir), "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    pulled = by_path(json.loads(done.stdout))
    for path, fmt in CLEAN.items():
        assert pulled[path]["format"] == fmt, (path, pulled[path])
        assert pulled[path]["checks"][0] == "digest"
        assert set(pulled[path]["checks"]) == {"digest", *COMPLETE_CHECKS.get(fmt, {"sniff"})}, path
    # The ONNX model was judged after its external data was in the snapshot (else external_missing).
    assert pulled["onnx/model.onnx"]["verdict"] == "ok", pulled["onnx/model.onnx"]
    # A file vcache has no checks for got its digest checked, and says only that.
    table = vcache("pull", "acme/formats", "--cache-dir", str(cache_dir), env=env)
    line = table_line(table.stdout, "tokenizer.model")
    assert "[other: digest only]" in line and "verified" not in line.lower()
    # Cached and remembered reports (ledger, snapshot record) and a scan say the same.
    for args in (
        ("pull", "acme/formats", "--cache-dir", str(cache_dir), "--json"),
        ("verify", "acme/formats", "--cache-dir", str(cache_dir), "--json"),
        ("verify", "acme/formats", "--cache-dir", str(cache_dir), "--json"),
        ("verify", "acme/formats", "--cache-dir", str(cache_dir), "--json", "--deep"),
    ):
        again = by_path(json.loads(vcache(*args, env=env).stdout))
        for path in CLEAN:
            assert (again[path]["format"], again[path]["checks"], again[path]["verdict"]) == (
                pulled[path]["format"],
                pulled[path]["checks"],
                pulled[path]["verdict"],
            ), (args, path)


def test_scan_and_verify_judge_every_format_alike_in_a_cache_vcache_did_not_write(
    clean_folder: Path, tmp_path: Path
) -> None:
    from huggingface_hub import snapshot_download

    folder = tmp_path / "repo"
    shutil.copytree(clean_folder, folder)
    whole = (folder / "llama.gguf").read_bytes()
    (folder / "llama.gguf").write_bytes(whole[: len(whole) * 6 // 10])  # what a cut download leaves
    theirs = tmp_path / "theirs"
    with HubServer([repo_from_folder("acme/formats", folder)]) as hub:
        snapshot_download("acme/formats", cache_dir=theirs, endpoint=hub.endpoint)  # checks nothing
    scanned = vcache("scan", "--cache-dir", str(theirs), "--json")
    verified = vcache("verify", "acme/formats", "--cache-dir", str(theirs), "--json")
    assert scanned.returncode == verified.returncode == 1, scanned.stdout + verified.stdout
    scan_files, verify_files = by_path(json.loads(scanned.stdout)), by_path(json.loads(verified.stdout))
    for path, fmt in CLEAN.items():
        assert scan_files[path]["format"] == verify_files[path]["format"] == fmt
        assert scan_files[path]["checks"] == verify_files[path]["checks"]
        assert codes(scan_files[path]) == codes(verify_files[path])
    assert "gguf.truncated" in codes(scan_files["llama.gguf"])
    text = vcache("scan", "--cache-dir", str(theirs))
    (problem,) = [ln for ln in text.stdout.splitlines() if ln.startswith("FAIL")]
    assert "llama.gguf: [gguf.truncated]" in problem


def test_a_checkpoint_that_calls_os_system_is_quarantined_and_never_runs(
    served: tuple[HubServer, Path], cache_dir: Path
) -> None:
    hub, marker = served
    done = vcache(
        "pull", "acme/evil", "--cache-dir", str(cache_dir), "--json", env={"HF_ENDPOINT": hub.endpoint}
    )
    assert done.returncode == 1, done.stdout + done.stderr
    entry = by_path(json.loads(done.stdout))["pytorch_model.bin"]
    assert entry["verdict"] == "fail" and entry["quarantine_id"] and entry["format"] == "pytorch-zip"
    (unsafe,) = [x for x in entry["findings"] if x["code"] == "pickle.unsafe_import"]
    assert unsafe["detail"]["imports"] == ["posix.system"] and "os.system" in unsafe["message"]
    repo = CacheRepo(cache_dir, "acme/evil")
    snapshots = list((repo.root / "snapshots").glob("*/*"))
    assert [p.name for p in snapshots] == ["config.json"]  # nothing else reached the snapshot
    assert not (repo.root / "refs" / "main").exists()
    assert not marker.exists()  # the payload never ran
    # Allowing os.system is refused too: it can never be allowed.
    again = vcache(
        "pull", "acme/evil", "--cache-dir", str(cache_dir), "--allow-import", "posix.system",
        env={"HF_ENDPOINT": hub.endpoint},
    )  # fmt: skip
    assert again.returncode == 1 and "[pickle.unsafe_import]" in again.stdout
    assert not marker.exists()


def test_allow_import_passes_a_checkpoint_with_a_third_party_class(
    served: tuple[HubServer, Path], cache_dir: Path
) -> None:
    hub, _ = served
    env = {"HF_ENDPOINT": hub.endpoint}
    refused = vcache("pull", "acme/lightning", "--cache-dir", str(cache_dir), "--json", env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    (unsafe,) = [
        x
        for x in by_path(json.loads(refused.stdout))["last.ckpt"]["findings"]
        if x["code"] == "pickle.unsafe_import"
    ]
    named = unsafe["detail"]["imports"]
    assert f"{TrainingConfig.__module__}.TrainingConfig" in named and "--allow-import" in unsafe["message"]

    allow = [a for name in named for a in ("--allow-import", name)]
    done = vcache("pull", "acme/lightning", "--cache-dir", str(cache_dir), "--json", *allow, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    entry = by_path(json.loads(done.stdout))["last.ckpt"]
    assert entry["verdict"] == "ok" and codes(entry) == ["pickle.allowed_import"]
    assert "imports" in entry["checks"]
    snapshot = Path(json.loads(done.stdout)["snapshot_path"])
    assert (snapshot / "last.ckpt").is_file()
    # With the same allowance the cached record answers; without it, the file fails as it would fresh.
    assert vcache("verify", "acme/lightning", "--cache-dir", str(cache_dir), *allow).returncode == 0
    assert vcache("scan", "--cache-dir", str(cache_dir), *allow).returncode == 0
    scan = vcache("scan", "--cache-dir", str(cache_dir))
    assert scan.returncode == 1 and "last.ckpt: [pickle.unsafe_import]" in scan.stdout
    # The Python API takes the same allowance.
    report = pull("acme/lightning", endpoint=hub.endpoint, cache_dir=cache_dir, allow_imports=named)
    assert report.ok, [(f.path, f.findings) for f in report.files]


def test_a_malformed_allow_import_is_a_usage_error(cache_dir: Path) -> None:
    for args in (("verify", str(cache_dir)), ("scan", "--cache-dir", str(cache_dir)), ("pull", "acme/x")):
        cache_dir.mkdir(exist_ok=True)
        done = vcache(*args, "--allow-import", "TrainingConfig")
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "MODULE.NAME" in done.stderr
