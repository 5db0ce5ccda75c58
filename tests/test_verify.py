"""Verification after the fact: verify --deep, quarantine restore/purge, scan of a huggingface_hub cache."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import vcache
from vcache.cache import CacheRepo
from vcache.cli import main
from vcache.pull import pull
from vcache.report import Verdict
from vcache.testing.hub import Fault, HubServer, Repo
from vcache.testing.models import LlamaShape, repo_from_folder, tensor_location, write_llama_checkpoint

REPO = "acme/tiny-llama"
SHARD1 = "model-00001-of-00002.safetensors"


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _damage_keep_stat(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes in place and put the mtime back: only a re-hash can notice."""
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_verify_deep_quarantine_refetch_restore_purge(hub: Any, cache_dir: Path, llama_folder: Path) -> None:
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert report.ok
    snap = Path(report.snapshot_path or "")
    blob = (snap / SHARD1).resolve()
    start, _end, _dt, _shape = tensor_location(blob, "model.layers.0.self_attn.o_proj.weight")
    _damage_keep_stat(blob, start, b"\x7f\xc0\x00\x00" * 16)  # NaNs, same size, same mtime

    # No ledger shortcut: the mtime is back, but st_ctime (which utime cannot set) changed, so even a
    # verify without --deep hashes the file again.
    res = run("verify", REPO, "--cache-dir", str(cache_dir), "--json")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.output)
    bad = next(f for f in doc["files"] if f["path"] == SHARD1)
    assert bad["verdict"] == "fail" and {x["code"] for x in bad["findings"]} >= {"digest_mismatch"}
    assert bad["quarantine_id"]
    assert not os.path.lexists(snap / SHARD1) and not blob.exists()

    res = run("quarantine", "list", "--cache-dir", str(cache_dir))
    assert bad["quarantine_id"] in res.output and SHARD1 in res.output
    res = run("quarantine", "show", bad["quarantine_id"], "--cache-dir", str(cache_dir))
    shown = json.loads(res.output.split("\nbytes:")[0])
    assert shown["path"] == SHARD1 and shown["expected_digest"] != shown["actual_digest"]

    hub.clear_log()
    again = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert again.ok and [r.file_path for r in hub.body_requests()] == [SHARD1]
    assert (snap / SHARD1).read_bytes() == (llama_folder / SHARD1).read_bytes()
    assert run("verify", REPO, "--cache-dir", str(cache_dir), "--deep").exit_code == 0

    # restore refuses while a good blob is in place; --to copies the bytes out; purge deletes.
    res = run("quarantine", "restore", bad["quarantine_id"], "--cache-dir", str(cache_dir))
    assert res.exit_code == 2 and "already has a blob" in res.output
    out = cache_dir.parent / "evidence.safetensors"
    res = run("quarantine", "restore", bad["quarantine_id"], "--to", str(out), "--cache-dir", str(cache_dir))
    assert res.exit_code == 0 and out.stat().st_size == blob.stat().st_size
    res = run("quarantine", "purge", bad["quarantine_id"], "--cache-dir", str(cache_dir))
    assert res.exit_code == 0 and "purged 1" in res.output
    assert "quarantine is empty" in run("quarantine", "list", "--cache-dir", str(cache_dir)).output


def test_restore_puts_the_file_back(hub: Any, cache_dir: Path) -> None:
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    snap = Path(report.snapshot_path or "")
    blob = (snap / SHARD1).resolve()
    _damage_keep_stat(blob, 100, b"\xff")
    (rep,) = vcache.verify([str(snap)], cache_dir=cache_dir, deep=True)
    qid = next(f.quarantine_id for f in rep.files if f.path == SHARD1)
    assert qid and not blob.exists()
    res = run("quarantine", "restore", qid, "--cache-dir", str(cache_dir))
    assert res.exit_code == 0, res.output
    assert (snap / SHARD1).exists() and blob.exists()
    assert "quarantine is empty" in run("quarantine", "list", "--cache-dir", str(cache_dir)).output


def test_zero_fill_fails_unvouched_and_warns_vouched(tmp_path: Path, cache_dir: Path) -> None:
    shape = LlamaShape(
        hidden=128, intermediate=256, layers=1, heads=4, kv_heads=2, vocab=4096
    )  # 2 MiB embeddings
    clean = write_llama_checkpoint(tmp_path / "clean", shape, shards=2)
    shard = next(p for p in clean.glob("model-*.safetensors"))
    start, end, _dt, _shape = tensor_location(shard, "model.embed_tokens.weight")
    zero_len = 1 << 20

    # In transit, every attempt: no publisher digest vouches for the zeros -> fail, quarantined.
    with HubServer([repo_from_folder("acme/z", clean)]) as hub:
        hub.fault("acme/z", shard.name, Fault.zero_fill(start, zero_len, times=None))
        report = pull("acme/z", endpoint=hub.endpoint, cache_dir=cache_dir)
    bad = next(f for f in report.files if f.path == shard.name)
    assert bad.verdict is Verdict.FAIL and bad.quarantine_id
    zero = [x for x in bad.findings if x.code == "tensor.zero_fill"]
    assert zero and zero[0].severity.value == "fail"

    # Shipped by the publisher (the digest matches): a warning, the file is kept.
    shipped = tmp_path / "shipped"
    weights = {}
    from safetensors.numpy import load_file

    for p in clean.glob("model-*.safetensors"):
        weights.update(load_file(str(p)))
    emb = weights["model.embed_tokens.weight"].copy()
    emb.reshape(-1).view(np.uint8)[:zero_len] = 0
    weights["model.embed_tokens.weight"] = emb
    write_llama_checkpoint(shipped, shape, shards=2, tensors=weights)
    with HubServer([repo_from_folder("acme/z2", shipped)]) as hub:
        report = pull("acme/z2", endpoint=hub.endpoint, cache_dir=cache_dir)
    assert report.ok
    f = next(f for f in report.files if any(x.code == "tensor.zero_fill" for x in f.findings))
    assert f.verdict is Verdict.WARN
    assert end > start


def test_publisher_nan_is_quarantined_without_refetch(tmp_path: Path, cache_dir: Path) -> None:
    from safetensors.numpy import load_file

    folder = write_llama_checkpoint(tmp_path / "m", LlamaShape(), shards=1)
    weights = load_file(str(folder / "model.safetensors"))
    w = weights["model.layers.0.mlp.up_proj.weight"].copy()
    w[3, 5] = np.nan
    weights["model.layers.0.mlp.up_proj.weight"] = w
    write_llama_checkpoint(folder, LlamaShape(), shards=1, tensors=weights)
    with HubServer([repo_from_folder("acme/nan", folder)]) as hub:
        report = pull("acme/nan", endpoint=hub.endpoint, cache_dir=cache_dir)
        assert len(hub.body_requests("acme/nan", "model.safetensors")) == 1  # no point fetching again
    bad = next(f for f in report.files if f.path == "model.safetensors")
    assert bad.verdict is Verdict.FAIL and bad.quarantine_id
    nan = next(x for x in bad.findings if x.code == "tensor.nan")
    assert nan.tensor == "model.layers.0.mlp.up_proj.weight"


def test_scan_finds_damage_in_a_huggingface_hub_cache(hub: Any, cache_dir: Path) -> None:
    from huggingface_hub import snapshot_download

    snap = Path(snapshot_download(REPO, cache_dir=cache_dir, endpoint=hub.endpoint))
    repo = CacheRepo(cache_dir, REPO)
    # a truncated shard
    shard1 = (snap / SHARD1).resolve()
    data = shard1.read_bytes()
    shard1.write_bytes(data[: len(data) // 2])
    # a pointer file saved as a shard
    shard2 = (snap / "model-00002-of-00002.safetensors").resolve()
    shard2.write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 123\n"
    )
    # a leftover .incomplete
    (repo.blobs / ("f" * 64 + ".abcd1234.incomplete")).write_bytes(b"\0" * 1000)
    # a broken symlink
    (snap / "config.json").resolve().unlink()

    res = run("scan", "--cache-dir", str(cache_dir))
    assert res.exit_code == 1, res.output
    lines = res.output.splitlines()

    def line_for(needle: str) -> str:
        hits = [ln for ln in lines if f"  {needle}" in ln and ln.split(needle, 1)[1].startswith(":")]
        assert len(hits) == 1, (needle, res.output)
        return hits[0]

    assert "incomplete_buffer" in line_for(SHARD1) or "size_mismatch" in line_for(SHARD1)
    assert "lfs_pointer" in line_for("model-00002-of-00002.safetensors")
    assert "incomplete" in line_for("blobs/" + "f" * 64 + ".abcd1234.incomplete")
    assert "broken" in line_for("config.json")


def test_verify_any_folder_json_shape(llama_folder: Path) -> None:
    res = run("verify", str(llama_folder), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["verdict"] in ("ok", "warn")
    for f in doc["files"]:
        assert set(f) >= {"path", "verdict", "findings"}
        for x in f["findings"]:
            assert set(x) >= {"code", "severity", "message"}


@pytest.mark.parametrize("strict", [False, True])
def test_zero_rows_warn_and_strict_fails(tmp_path: Path, strict: bool) -> None:
    from safetensors.numpy import load_file

    folder = write_llama_checkpoint(tmp_path / "m", LlamaShape(), shards=1)
    weights = load_file(str(folder / "model.safetensors"))
    w = weights["model.layers.1.self_attn.o_proj.weight"].copy()
    w[[3, 7, 8]] = 0
    weights["model.layers.1.self_attn.o_proj.weight"] = w
    write_llama_checkpoint(folder, LlamaShape(), shards=1, tensors=weights)
    args = ["verify", str(folder / "model.safetensors")] + (["--strict"] if strict else [])
    res = run(*args)
    assert res.exit_code == (1 if strict else 0), res.output
    assert "o_proj" in res.output and "zero_rows" in res.output


def test_a_snapshot_relinked_to_another_verified_blob_fails(hub: Any, cache_dir: Path) -> None:
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    snap = Path(report.snapshot_path or "")
    other = os.readlink(snap / "model-00002-of-00002.safetensors")
    (snap / SHARD1).unlink()
    os.symlink(other, snap / SHARD1)  # a verified blob, but not the one this commit lists
    (rep,) = vcache.verify([REPO], cache_dir=cache_dir)
    bad = next(f for f in rep.files if f.path == SHARD1)
    assert bad.verdict is Verdict.FAIL and bad.findings[0].code == "snapshot.wrong_blob"


def test_scan_tells_orphaned_partials_from_resumable_ones(
    tmp_path: Path, cache_dir: Path, dead_writer_partial: Any
) -> None:
    """A killed pull leaves a partial; the repo then moves on to a new version of the file. Only a partial
    some pull would resume is called resumable; the others are orphaned, with how to remove them."""
    from vcache.partial import list_partials

    v1, v2 = b"\x01" * 300_000, b"\x02" * 300_000
    repo = Repo("acme/moving")
    c1 = repo.commit({"config.json": b"{}", "weights.bin": v1})
    interrupted = dead_writer_partial(cache_dir, "acme/moving", "weights.bin", v1, 100_000, commit=c1)

    # Nothing else is cached yet: the next pull of this revision resumes it.
    res = run("scan", "--cache-dir", str(cache_dir))
    assert res.exit_code == 0, res.output
    assert "cache.orphaned_partial" not in res.output
    doc = json.loads(run("scan", "--cache-dir", str(cache_dir), "--json").output)
    (note,) = [x for f in doc["files"] for x in f["findings"] if x["code"] == "cache.partial"]
    assert "resumes it" in note["message"] and c1 in note["message"]

    # The file changes on the Hub and the new revision is pulled: no pull resumes the old version now.
    repo.commit({"weights.bin": v2})
    with HubServer([repo]) as hub:
        assert pull("acme/moving", endpoint=hub.endpoint, cache_dir=cache_dir).ok
    # Partials no pull can resume: one of the version now in blobs/, and one whose data is shorter than its
    # sidecar says.
    done = dead_writer_partial(cache_dir, "acme/moving", "weights.bin", v2, 200_000)
    short = dead_writer_partial(cache_dir, "acme/moving", "other.bin", b"\x03" * 50_000, 40_000)
    os.truncate(short / "data", 10_000)
    assert len(list_partials(CacheRepo(cache_dir, "acme/moving").partials)) == 3

    res = run("scan", "--cache-dir", str(cache_dir))
    assert res.exit_code == 0, res.output  # leftovers are warnings, not damage
    lines = [ln for ln in res.output.splitlines() if "cache.orphaned_partial" in ln]
    assert len(lines) == 3 and all(ln.startswith("WARN") for ln in lines), res.output
    for partial, why in [
        (interrupted, "another version"),
        (done, "already in the cache"),
        (short, "shorter"),
    ]:
        (line,) = [ln for ln in lines if partial.name in ln]
        assert why in line and f"rm -r {partial}" in line
    assert "`vcache pull" not in res.output  # no partial is said to be resumed


@pytest.mark.parametrize("swap", ["symlink_to_copy", "symlink_to_moved", "directory"])
def test_a_blob_that_is_not_a_regular_file_fails_verify_and_scan_and_pull_replaces_it(
    hub: Any, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    """A blob swapped for a symlink to an identical file outside the cache (any member of a group-writable
    cache can do it; or to the verified file itself, moved out), or for a directory: never trusted, whatever
    the bytes behind it say, also where a verify of the unchanged snapshot was remembered."""
    from vcache.quarantine import list_entries

    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    snap = Path(report.snapshot_path or "")
    blob = (snap / SHARD1).resolve()
    good = blob.read_bytes()
    assert run("verify", REPO, "--cache-dir", str(cache_dir)).exit_code == 0  # remembered: snapshot record
    outside = tmp_path / "elsewhere" / "weights.safetensors"
    outside.parent.mkdir()
    kind = swap.split("_")[0]
    if swap == "symlink_to_copy":
        blob.unlink()
        outside.write_bytes(good)
        os.symlink(outside, blob)  # the same bytes, outside the cache
    elif swap == "symlink_to_moved":
        os.rename(blob, outside)
        os.symlink(outside, blob)  # the very inode that was verified, now outside the cache
    else:
        blob.unlink()
        blob.mkdir()

    def assert_refused(res: Any) -> None:
        assert res.exit_code == 1, res.output
        doc = json.loads(res.output)
        bad = next(f for f in doc["files"] if f["path"] == SHARD1)
        assert bad["verdict"] == "fail" and bad["findings"][0]["code"] == "cache.blob_not_regular", bad
        message = bad["findings"][0]["message"]
        assert f"blobs/{blob.name}" in message and kind in message and "vcache pull" in message

    assert_refused(run("verify", REPO, "--cache-dir", str(cache_dir), "--json"))
    if kind == "symlink":
        # Changed in place with its mtime put back: still refused (it was never trusted).
        _damage_keep_stat(outside, 100, b"\xff")
        assert_refused(run("verify", REPO, "--cache-dir", str(cache_dir), "--json"))
    assert_refused(run("scan", "--cache-dir", str(cache_dir), "--json"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = pull(REPO, cache_dir=cache_dir)
    assert not offline.ok
    assert next(f for f in offline.files if f.path == SHARD1).findings[0].code == "cache.blob_not_regular"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert (snap / SHARD1).resolve() == blob.resolve()  # verify and scan only report; nothing moved

    hub.clear_log()
    again = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert again.ok and [r.file_path for r in hub.body_requests()] == [SHARD1]
    assert stat.S_ISREG(os.lstat(blob).st_mode) and blob.read_bytes() == good
    assert (snap / SHARD1).read_bytes() == good
    (entry,) = list_entries(cache_dir)  # the odd entry is kept aside, never deleted
    assert entry.path == SHARD1 and entry.findings[0].code == "cache.blob_not_regular"
    if kind == "symlink":
        assert os.readlink(entry.data) == str(outside) and outside.exists()  # the outside file is left alone
    else:
        assert entry.data.is_dir()
    res = run("quarantine", "restore", entry.id, "--cache-dir", str(cache_dir))
    assert res.exit_code == 2 and "nothing to restore" in res.output  # not put back as a blob
    assert run("verify", REPO, "--cache-dir", str(cache_dir)).exit_code == 0
