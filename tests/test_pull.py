"""End-to-end pulls against the local Hub: the cache vcache writes, what it refuses, and what it fetches."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import vcache
from vcache.cache import CacheRepo
from vcache.errors import EntryNotFound, RepoNotFound, RevisionNotFound, VerificationFailed
from vcache.pull import PullOptions, pull
from vcache.report import Severity, Verdict
from vcache.testing.hub import Fault, HubServer, Repo
from vcache.testing.models import repo_from_folder

REPO = "acme/tiny-llama"
SHARD1 = "model-00001-of-00002.safetensors"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _blob_names(cache_dir: Path, repo_id: str = REPO) -> set[str]:
    blobs = CacheRepo(cache_dir, repo_id).blobs
    return {p.name for p in blobs.iterdir()} if blobs.is_dir() else set()


def fast_options(**transfer: Any) -> PullOptions:
    """Transfer knobs for tests: short timeouts and a clock that never really sleeps."""
    from dataclasses import replace

    from vcache.config import resolve_transfer_settings
    from vcache.retry import RetryPolicy

    class InstantClock:
        def __init__(self) -> None:
            self.t = 0.0
            self.sleeps: list[float] = []

        def monotonic(self) -> float:
            import time

            return time.monotonic() + self.t

        def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            self.t += seconds

    opts = {
        "clock": InstantClock(),
        "stall_timeout": 1.0,
        "read_timeout": 2.0,
        "policy": RetryPolicy(backoff_factor=0.01),
    }
    opts.update(transfer)
    return PullOptions(transfer=replace(resolve_transfer_settings(), **opts))


@pytest.mark.parametrize("lfs_style", ["redirect", "direct"])
def test_pull_writes_a_verified_hf_cache(llama_folder: Path, cache_dir: Path, lfs_style: str) -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download

    repo = repo_from_folder(REPO, llama_folder)
    with HubServer([repo], lfs_style=lfs_style) as hub:
        report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert report.verdict is Verdict.OK, report.to_json()
    assert report.commit == repo.resolve("main")  # type: ignore[attr-defined]
    snap = Path(report.snapshot_path or "")
    expected = _files(llama_folder)
    assert {f.path for f in report.files} == set(expected)
    for path, data in expected.items():
        assert (snap / path).read_bytes() == data
        assert (snap / path).is_symlink() and not os.path.isabs(os.readlink(snap / path))
    sha = hashlib.sha256(expected[SHARD1]).hexdigest()
    assert sha in _blob_names(cache_dir)
    by_path = {f.path: f for f in report.files}
    assert by_path[SHARD1].digest == f"sha256:{sha}" and by_path[SHARD1].bytes_transferred == len(
        expected[SHARD1]
    )
    assert by_path["config.json"].digest.startswith("gitsha1:")

    # Interop: huggingface_hub reads the cache unchanged.
    assert snapshot_download(REPO, cache_dir=cache_dir, local_files_only=True) == str(snap)
    info = scan_cache_dir(cache_dir)
    assert info.warnings == [] and [r.repo_id for r in info.repos] == [REPO]
    assert (CacheRepo(cache_dir, REPO).root / "trees" / f"{report.commit}.json").exists()


def test_transformers_reads_the_cache_offline(llama_folder: Path, cache_dir: Path) -> None:
    pytest.importorskip("transformers")
    with HubServer([repo_from_folder(REPO, llama_folder)]) as hub:
        assert pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir).ok
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir)}
    code = (
        f"from transformers import AutoConfig; c = AutoConfig.from_pretrained({REPO!r}); print(c.hidden_size)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "128"


def test_second_pull_transfers_no_bodies(hub: Any, cache_dir: Path) -> None:
    first = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert first.ok and first.bytes_transferred > 0
    hub.clear_log()
    second = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert second.ok and second.bytes_transferred == 0
    assert all(f.cached for f in second.files)
    assert hub.body_requests() == []


def test_same_size_corruption_in_transit_is_fetched_again(
    hub: Any, cache_dir: Path, llama_folder: Path
) -> None:
    hub.fault(REPO, SHARD1, Fault.flip_byte(5000))
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, options=fast_options())
    assert report.ok
    shard = next(f for f in report.files if f.path == SHARD1)
    assert any(x.code == "transfer.refetched" for x in shard.findings)
    assert (Path(report.snapshot_path or "") / SHARD1).read_bytes() == (llama_folder / SHARD1).read_bytes()
    assert len(hub.body_requests(REPO, SHARD1)) == 2


def test_every_attempt_corrupt_fails_and_nothing_is_published(
    hub: Any, cache_dir: Path, llama_folder: Path
) -> None:
    hub.fault(REPO, SHARD1, Fault.flip_byte(5000, times=None))
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, options=fast_options())
    assert not report.ok
    bad, index = report.failed  # the index fails too: a shard it lists is missing
    assert bad.path == SHARD1 and bad.quarantine_id
    assert index.path == "model.safetensors.index.json"
    assert any(x.code == "index.missing_shard" and SHARD1 in x.message for x in index.findings)
    codes = {x.code for x in bad.findings}
    assert "digest_mismatch" in codes
    good = hashlib.sha256((llama_folder / SHARD1).read_bytes()).hexdigest()
    mismatch = next(x for x in bad.findings if x.code == "digest_mismatch")
    assert (
        good in mismatch.message and bad.actual_digest and bad.actual_digest.split(":")[1] in mismatch.message
    )
    assert good not in _blob_names(cache_dir)
    snap = Path(report.snapshot_path or "")
    assert not os.path.lexists(snap / SHARD1)
    assert (snap / "config.json").exists()  # other files still complete
    repo = CacheRepo(cache_dir, REPO)
    assert not (repo.root / "refs" / "main").exists()  # the snapshot is not whole
    qdir = repo.quarantine_dir / bad.quarantine_id
    assert json.loads((qdir / "report.json").read_text())["path"] == SHARD1
    with pytest.raises(VerificationFailed) as err:
        vcache.snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert SHARD1 in str(err.value)


@pytest.fixture
def big_shard_hub(tmp_path: Path) -> Any:
    """A repo with one 12 MiB shard, so a cut leaves whole write buffers behind to resume from."""
    import numpy as np
    from safetensors.numpy import save_file

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(1)
    save_file({"w": rng.standard_normal((3072, 1024), dtype=np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    with HubServer([repo_from_folder("acme/big", folder)]) as server:
        yield server, folder


def test_connection_cut_resumes_with_range(big_shard_hub: Any, cache_dir: Path) -> None:
    hub, folder = big_shard_hub
    size = (folder / "model.safetensors").stat().st_size
    hub.fault("acme/big", "model.safetensors", Fault.drop_after(9 << 20))
    report = pull("acme/big", endpoint=hub.endpoint, cache_dir=cache_dir, options=fast_options())
    assert report.ok
    reqs = hub.body_requests("acme/big", "model.safetensors")
    assert len(reqs) == 2 and reqs[0].range is None
    resumed_at = int(reqs[1].range.removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_at <= 9 << 20  # resumed from what was written, not restarted
    assert sum(r.body_bytes for r in reqs) < size + (9 << 20)
    snap = Path(report.snapshot_path or "")
    assert (snap / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_range_ignored_restarts_cleanly(hub: Any, cache_dir: Path, llama_folder: Path) -> None:
    hub.fault(REPO, SHARD1, Fault.drop_after(200_000), Fault.ignore_range())
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, options=fast_options())
    assert report.ok
    assert (Path(report.snapshot_path or "") / SHARD1).read_bytes() == (llama_folder / SHARD1).read_bytes()


class RecordingProgress(vcache.Progress):
    """Adds up what a pull reports (from several threads)."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.planned_bytes = -1
        self.advanced = 0
        self.peak = 0
        self.again = 0

    def planned(self, total_bytes: int, files: int) -> None:
        self.planned_bytes = total_bytes

    def advance(self, nbytes: int) -> None:
        with self.lock:
            assert nbytes > 0
            self.advanced += nbytes
            self.peak = max(self.peak, self.advanced)

    def refetched(self, nbytes: int) -> None:
        with self.lock:
            assert nbytes > 0
            self.again += nbytes


@pytest.mark.parametrize(
    ("faults", "again"),
    [
        ((Fault.flip_byte(5000),), "shard"),  # damaged: the whole shard is fetched again
        ((Fault.drop_after(200_000), Fault.ignore_range()), "some"),  # restart from byte 0
        ((Fault.drop_after(200_000),), "none"),  # resumed: nothing is fetched twice
    ],
    ids=["refetch", "restart", "resume"],
)
def test_progress_counts_the_plan_once_and_bytes_fetched_again_apart(
    hub: Any, cache_dir: Path, llama_folder: Path, faults: tuple[Fault, ...], again: str
) -> None:
    progress = RecordingProgress()
    hub.fault(REPO, SHARD1, *faults)
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, progress=progress, options=fast_options())
    assert report.ok
    planned = sum(len(b) for b in _files(llama_folder).values())
    assert progress.planned_bytes == planned
    assert progress.advanced == progress.peak == planned  # never past the plan, never taken back
    shard = (llama_folder / SHARD1).stat().st_size
    if again == "shard":
        assert progress.again == shard
    elif again == "some":
        assert 0 < progress.again <= 200_000
    else:
        assert progress.again == 0


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, 7)])
def test_503_and_429_are_retried(hub: Any, cache_dir: Path, status: int, retry_after: int | None) -> None:
    opts = fast_options()
    hub.fault(REPO, SHARD1, Fault.status(status, times=2, retry_after=retry_after))
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, options=opts)
    assert report.ok
    statuses = [r.status for r in hub.log if r.file_path == SHARD1 and r.method == "GET"]
    assert statuses.count(status) == 2 and statuses[-1] in (200, 206)
    if retry_after:
        assert any(s >= retry_after for s in opts.transfer.clock.sleeps)


def test_missing_repo_revision_file(hub: Any, cache_dir: Path) -> None:
    with pytest.raises(RepoNotFound):
        pull("acme/nope", endpoint=hub.endpoint, cache_dir=cache_dir)
    with pytest.raises(RevisionNotFound):
        pull(REPO, revision="no-such-branch", endpoint=hub.endpoint, cache_dir=cache_dir)
    with pytest.raises(EntryNotFound):
        vcache.hf_hub_download(REPO, "missing.txt", endpoint=hub.endpoint, cache_dir=cache_dir)


def test_hf_hub_download_one_file(hub: Any, cache_dir: Path, llama_folder: Path) -> None:
    path = vcache.hf_hub_download(REPO, "sub/dir/notes.txt", endpoint=hub.endpoint, cache_dir=cache_dir)
    assert Path(path).read_bytes() == (llama_folder / "sub/dir/notes.txt").read_bytes()
    assert [r.file_path for r in hub.body_requests()] == ["sub/dir/notes.txt"]


def test_revisions_branch_tag_commit_pr(tmp_path: Path, cache_dir: Path) -> None:
    repo = Repo("acme/revs")
    c1 = repo.commit({"a.txt": b"one", "w.safetensors": b"x" * 10}, branch="main")
    c2 = repo.commit({"a.txt": b"two"}, branch="main")
    repo.tag("v1", c1)
    repo.branch("dev", c1)
    repo.pr(1, c2)
    with HubServer([repo]) as hub:
        for rev, commit, text in [
            ("v1", c1, b"one"),
            ("dev", c1, b"one"),
            (c1, c1, b"one"),
            ("refs/pr/1", c2, b"two"),
            (None, c2, b"two"),
        ]:
            report = pull(
                "acme/revs", revision=rev, endpoint=hub.endpoint, cache_dir=cache_dir, allow_patterns="*.txt"
            )
            assert report.commit == commit
            assert (Path(report.snapshot_path or "") / "a.txt").read_bytes() == text
    refs = CacheRepo(cache_dir, "acme/revs").root / "refs"
    assert (refs / "refs" / "pr" / "1").read_text() == c2
    assert (refs / "v1").read_text() == c1


def test_include_exclude_patterns(hub: Any, cache_dir: Path) -> None:
    report = pull(
        REPO,
        endpoint=hub.endpoint,
        cache_dir=cache_dir,
        allow_patterns=["*.json"],
        ignore_patterns=["generation_config.json"],
    )
    assert {f.path for f in report.files} == {"config.json", "model.safetensors.index.json"}


def test_token_goes_only_to_the_endpoint_origin(llama_folder: Path, cache_dir: Path, capsys: Any) -> None:
    token = "hf_SECRETTOKEN123"
    repo = repo_from_folder(REPO, llama_folder, private=True)
    with HubServer([repo], tokens={token}) as hub:
        report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, token=token)
        assert report.ok
        log = hub.log
    cdn = [r for r in log if r.origin == "cdn"]
    assert cdn and all(r.authorization is None for r in cdn)
    assert all(r.authorization == f"Bearer {token}" for r in log if r.origin == "hub")
    assert token not in json.dumps(report.to_json())
    blob_dir = CacheRepo(cache_dir, REPO).root
    for p in blob_dir.rglob("*.json"):
        assert token not in p.read_text(errors="replace")


def test_private_repo_without_token_is_repo_not_found(llama_folder: Path, cache_dir: Path) -> None:
    repo = repo_from_folder(REPO, llama_folder, private=True)
    with HubServer([repo], tokens={"hf_good"}) as hub, pytest.raises(RepoNotFound):
        pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, token=False)


def test_offline_pull_uses_cache_without_network(
    hub: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    hub.clear_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    second = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert second.ok and second.snapshot_path == first.snapshot_path
    assert hub.log == []


def test_offline_a_snapshot_no_ref_names_is_not_taken_for_main(
    hub: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old behaviour: with no ``refs/main`` and one snapshot folder, an offline pull (and so an offline
    ``from_pretrained``) used that folder, even when it was an interrupted pull's (refs and the tree listing are
    written only once every file verified): a partial model passed as the repo. Now, as huggingface_hub does,
    ``main`` needs ``refs/main``; the message names the snapshot and how to use it on purpose."""
    first = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    repo = CacheRepo(cache_dir, REPO)
    commit = first.commit
    # What a pull killed before its last file leaves: some files linked, no ref, no tree listing.
    repo.ref_path("main").unlink()
    repo.tree_path(commit).unlink()
    shards = sorted(p for p in repo.snapshot_dir(commit).iterdir() if p.suffix == ".safetensors")
    shards[-1].unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(vcache.OfflineError) as info:
        pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    message = str(info.value)
    assert "refs/main" in message and commit[:12] in message and "--revision" in message
    # Named on purpose, the snapshot is the user's choice (and its files are still verified).
    named = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, revision=commit)
    assert named.commit == commit


def test_local_dir_export(hub: Any, cache_dir: Path, tmp_path: Path, llama_folder: Path) -> None:
    out = tmp_path / "local"
    path = vcache.snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, local_dir=out)
    assert path == str(out)
    for rel, data in _files(llama_folder).items():
        assert (out / rel).read_bytes() == data
        assert (out / ".cache" / "huggingface" / "download" / f"{rel}.metadata").exists()


def test_unreachable_hub_falls_back_to_the_verified_cache(hub: Any, cache_dir: Path) -> None:
    import socket

    first = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert first.ok
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    second = pull(REPO, endpoint=dead, cache_dir=cache_dir)
    assert second.ok and second.snapshot_path == first.snapshot_path
    with pytest.raises(vcache.TransferError):
        pull("acme/other", endpoint=dead, cache_dir=cache_dir, options=fast_options())


@pytest.mark.parametrize("hostile", ["../escape.txt", "/etc/passwd", "sub\\evil.txt", "a\x00b", "ok/../../x"])
def test_server_supplied_unsafe_paths_are_refused_before_anything_is_written(
    cache_dir: Path, hostile: str
) -> None:
    """A hostile server (not our HubServer, which refuses such names) lists a path that would escape."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    commit = "a" * 40
    tree = [
        {"type": "file", "oid": "b" * 40, "size": 2, "path": "config.json"},
        {"type": "file", "oid": "c" * 40, "size": 4, "path": hostile},
    ]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(
                {"id": "evil/repo", "sha": commit} if "/revision/" in self.path else tree
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(vcache.UnsafePath):
            pull("evil/repo", endpoint=f"http://127.0.0.1:{server.server_port}", cache_dir=cache_dir)
    finally:
        server.shutdown()
    assert not cache_dir.exists()


def test_token_never_reaches_the_logs(
    llama_folder: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    token = "hf_LOGSECRET456"
    repo = repo_from_folder(REPO, llama_folder, private=True)
    caplog.set_level(logging.DEBUG)
    with HubServer([repo], tokens={token}) as hub:
        hub.fault(REPO, SHARD1, Fault.drop_after(1000), Fault.status(503))
        assert pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, token=token, options=fast_options()).ok
        with pytest.raises(vcache.AuthError) as err:
            pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir / "x", token="hf_WRONG789")
    assert caplog.records  # debug logging really was captured
    assert (
        token not in caplog.text and "hf_WRONG789" not in caplog.text and "hf_WRONG789" not in str(err.value)
    )


@pytest.mark.parametrize("fault", ["none", "cut", "range_ignored"])
def test_the_content_scan_rides_on_the_digest_read(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A pull reads each shard back once (for its digest) and the tensor scan is fed those same bytes:
    the file is never scanned a second time, and the verdict is the one a fresh scan of the cache gives,
    also when the download was resumed or restarted from byte zero."""
    import numpy as np
    from safetensors.numpy import save_file

    import vcache.checks.tensors
    from vcache.checks import check_file

    folder = tmp_path / "src"
    folder.mkdir()
    rng = np.random.default_rng(7)
    o_proj = rng.standard_normal((2048, 1024), dtype=np.float32)
    o_proj[[3, 700, 2047]] = 0  # shipped that way by the publisher: a warning naming the rows
    save_file(
        {"model.layers.0.self_attn.o_proj.weight": o_proj, "model.norm.weight": np.ones(1024, np.float32)},
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text("{}")
    calls: list[str] = []
    real = vcache.checks.tensors.scan_tensors

    def spy(path: Any, *args: Any, **kw: Any) -> Any:
        calls.append(str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(vcache.checks.tensors, "scan_tensors", spy)
    with HubServer([repo_from_folder("acme/rows", folder)]) as hub:
        if fault == "cut":
            hub.fault("acme/rows", "model.safetensors", Fault.drop_after(5 << 20))
        elif fault == "range_ignored":
            hub.fault("acme/rows", "model.safetensors", Fault.drop_after(3 << 20), Fault.ignore_range())
        report = pull("acme/rows", endpoint=hub.endpoint, cache_dir=cache_dir, options=fast_options())
        assert len(hub.body_requests("acme/rows", "model.safetensors")) == (1 if fault == "none" else 2)
    assert report.ok and calls == []
    (shard,) = [r for r in report.files if r.path == "model.safetensors"]
    rows = [f for f in shard.findings if f.code == "tensor.zero_rows"]
    assert len(rows) == 1 and rows[0].tensor == "model.layers.0.self_attn.o_proj.weight"
    monkeypatch.setattr(vcache.checks.tensors, "scan_tensors", real)
    cached = Path(report.snapshot_path or "") / "model.safetensors"
    fresh = check_file(cached, "model.safetensors", vouched=True)
    assert list(shard.findings) == list(fresh.findings)


@pytest.mark.parametrize("fault", ["none", "cut", "range_ignored"])
def test_the_gguf_content_scan_rides_on_the_digest_read(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """The same for a GGUF file (recognised by its magic, not its name): its header is parsed from the first
    bytes the download hashes and its tensors are judged from the same buffers, never read again."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    import vcache.checks.gguf
    from vcache.checks import check_file

    folder = tmp_path / "src"
    folder.mkdir()
    rng = np.random.default_rng(7)
    ffn = rng.standard_normal((2048, 1024), dtype=np.float32)
    ffn[100:132] = 0  # 128 KiB of zeros, shipped that way by the publisher: warnings naming the tensor
    writer = GGUFWriter(folder / "model-q4.bin", "llama")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hi"] * 1000)
    writer.add_tensor("blk.0.ffn_down.weight", ffn)
    q4 = quantize(rng.standard_normal((256, 1024), dtype=np.float32), GGMLQuantizationType.Q4_0)
    writer.add_tensor("blk.0.attn_q.weight", q4, raw_dtype=GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    calls: list[str] = []
    real = vcache.checks.gguf.scan_gguf

    def spy(path: Any, *args: Any, **kw: Any) -> Any:
        calls.append(str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(vcache.checks.gguf, "scan_gguf", spy)
    with HubServer([repo_from_folder("acme/gguf", folder)]) as hub:
        if fault == "cut":
            hub.fault("acme/gguf", "model-q4.bin", Fault.drop_after(5 << 20))
        elif fault == "range_ignored":
            hub.fault("acme/gguf", "model-q4.bin", Fault.drop_after(3 << 20), Fault.ignore_range())
        report = pull("acme/gguf", endpoint=hub.endpoint, cache_dir=cache_dir, options=fast_options())
        assert len(hub.body_requests("acme/gguf", "model-q4.bin")) == (1 if fault == "none" else 2)
    assert report.ok and calls == []
    (model,) = report.files
    assert model.format == "gguf" and model.checks == ("digest", "sniff", "structure", "content")
    assert [f.code for f in model.findings if f.tensor == "blk.0.ffn_down.weight"]
    monkeypatch.setattr(vcache.checks.gguf, "scan_gguf", real)
    fresh = check_file(Path(report.snapshot_path or "") / "model-q4.bin", "model-q4.bin", vouched=True)
    assert list(model.findings) == list(fresh.findings) and calls == []


def test_the_index_check_takes_the_headers_the_judgements_parsed(
    hub: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each shard's header is parsed once, when the shard is judged, and handed to the sharded-index check
    with the judgement: for a fresh download, for a blob already in the cache (checked before it is
    adopted), for ``verify --deep`` and for a folder verified as it is."""
    import vcache.checks.index
    from vcache.verify import verify_path, verify_snapshot

    reads: list[str] = []
    given: list[list[str]] = []
    real_read, real_check = vcache.checks.index.read_header, vcache.checks.index.check_index

    def read_header(path: Any) -> Any:
        reads.append(Path(path).name)
        return real_read(path)

    def check_index(folder: Path, index_name: str, **kw: Any) -> Any:
        given.append(sorted(kw.get("headers") or {}))
        return real_check(folder, index_name, **kw)

    monkeypatch.setattr(vcache.checks.index, "read_header", read_header)
    monkeypatch.setattr(vcache.checks.index, "check_index", check_index)
    shards = [SHARD1, "model-00002-of-00002.safetensors"]
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert report.ok and given == [shards] and reads == []
    repo = CacheRepo(cache_dir, REPO)
    for record in repo.ledger_dir.glob("*.json"):
        record.unlink()  # the blobs stay, vouched for by nothing: the next pull checks them where they are
    given.clear()
    again = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert again.ok and all(f.cached for f in again.files) and len(hub.body_requests(REPO, SHARD1)) == 1
    assert given == [shards] and reads == []
    given.clear()
    assert report.commit and verify_snapshot(repo, report.commit, deep=True).ok
    assert verify_path(Path(report.snapshot_path or "")).ok
    assert given == [shards, shards] and reads == []


def _kill_when_requested(hub: Any, path: str) -> threading.Thread:
    """Stop ``hub`` (both origins) as soon as a GET for ``path`` has been logged: a server killed mid-pull."""
    import time

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(r.method == "GET" and r.file_path == path for r in hub.log):
                break
            time.sleep(0.005)
        hub.stop()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "case", ["403_forever", "503_forever", "revision_vanished", "reset_forever", "server_killed"]
)
def test_a_shard_that_cannot_be_fetched_is_a_transfer_error_not_a_verification_failure(
    hub: Any, cache_dir: Path, case: str
) -> None:
    """Exit-code precedence: no file's bytes were judged bad, so the pull is a transfer failure (exit 3),
    and the index check does not turn the shard that was never fetched into a failure of its own."""
    from vcache.cli import EXIT_TRANSFER, _exit_code
    from vcache.pull import raise_for_report

    faults = {
        "403_forever": Fault.status(403, times=None),
        "503_forever": Fault.status(503, times=None),
        # the revision is deleted between the resolve and the file's GET
        "revision_vanished": Fault.status(404, times=None, error_code="RevisionNotFound", on="any"),
        "reset_forever": Fault.drop_after(0, times=None),
        "server_killed": Fault.stall(after=1000, seconds=30, times=None),
    }
    hub.fault(REPO, SHARD1, faults[case])
    killer = _kill_when_requested(hub, SHARD1) if case == "server_killed" else None
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, options=fast_options())
    if killer is not None:
        killer.join()
    assert report.errors and any(e.startswith(f"{SHARD1}:") for e in report.errors)
    assert not any(e.startswith(f"{SHARD1}: {SHARD1}:") for e in report.errors)  # the path is named once
    assert all({x.code for x in f.findings} == {"transfer.failed"} for f in report.failed)
    assert SHARD1 in {f.path for f in report.failed}
    index = next(f for f in report.files if f.path == "model.safetensors.index.json")
    assert not any(x.code == "index.missing_shard" for x in index.findings)
    if not any(x.code == "transfer.failed" for x in index.findings):  # the index itself arrived
        note = next(x for x in index.findings if x.code == "index.shard_not_fetched")
        assert note.severity is Severity.INFO and SHARD1 in note.message
    assert _exit_code([report]) == EXIT_TRANSFER
    with pytest.raises(vcache.TransferError) as err:
        raise_for_report(report)
    assert not isinstance(err.value, VerificationFailed) and SHARD1 in str(err.value)
    assert not (CacheRepo(cache_dir, REPO).root / "refs" / "main").exists()


def test_bad_bytes_in_one_shard_win_over_another_that_cannot_be_fetched(hub: Any, cache_dir: Path) -> None:
    from vcache.cli import EXIT_FAILED, _exit_code
    from vcache.pull import raise_for_report

    shard2 = "model-00002-of-00002.safetensors"
    hub.fault(REPO, SHARD1, Fault.flip_byte(5000, times=None))
    hub.fault(REPO, shard2, Fault.status(403, times=None))
    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, options=fast_options())
    by_path = {f.path: f for f in report.failed}
    assert by_path[SHARD1].quarantine_id and {x.code for x in by_path[shard2].findings} == {"transfer.failed"}
    index = by_path["model.safetensors.index.json"]  # the quarantined shard is missing: its bytes were bad
    missing = [x for x in index.findings if x.code == "index.missing_shard"]
    assert len(missing) == 1 and SHARD1 in missing[0].message and shard2 not in missing[0].message
    assert _exit_code([report]) == EXIT_FAILED
    with pytest.raises(VerificationFailed):
        raise_for_report(report)


@pytest.mark.parametrize(
    ("allow", "ignore"), [("[", None), (["*.bin", "nothing/*"], None), (None, "*"), ("*.json", "*.json")]
)
def test_patterns_that_select_no_file_are_a_usage_error_and_write_nothing(
    hub: Any, cache_dir: Path, allow: Any, ignore: Any
) -> None:
    with pytest.raises(vcache.UsageError) as err:
        pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, allow_patterns=allow, ignore_patterns=ignore)
    for pattern in [allow, ignore]:
        for p in [pattern] if isinstance(pattern, str) else pattern or []:
            assert repr(p) in str(err.value)
    assert REPO in str(err.value)
    assert not cache_dir.exists()
    with pytest.raises(vcache.UsageError):
        vcache.snapshot_download(
            REPO, endpoint=hub.endpoint, cache_dir=cache_dir, allow_patterns=allow, ignore_patterns=ignore
        )
    assert not cache_dir.exists()


def test_an_empty_file_list_is_a_usage_error_and_a_missing_file_stays_entry_not_found(
    hub: Any, cache_dir: Path
) -> None:
    with pytest.raises(vcache.UsageError):
        pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, files=[])
    with pytest.raises(EntryNotFound):
        vcache.hf_hub_download(REPO, "missing.txt", endpoint=hub.endpoint, cache_dir=cache_dir)
    assert not cache_dir.exists()


def test_offline_patterns_that_select_no_cached_file_are_a_usage_error(
    hub: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir).ok
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(vcache.UsageError) as err:
        pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, allow_patterns="[")
    assert "'['" in str(err.value)


@pytest.mark.parametrize("force", [False, True])
def test_a_partial_shorter_than_its_sidecar_is_discarded(
    big_shard_hub: Any, cache_dir: Path, dead_writer_partial: Any, force: bool
) -> None:
    from vcache.partial import list_partials

    hub, folder = big_shard_hub
    data = (folder / "model.safetensors").read_bytes()
    old = dead_writer_partial(cache_dir, "acme/big", "model.safetensors", data, 9 << 20)
    os.truncate(old / "data", 1 << 20)  # the sidecar claims 9 MiB
    report = pull(
        "acme/big", endpoint=hub.endpoint, cache_dir=cache_dir, force_download=force, options=fast_options()
    )
    assert report.ok
    assert not old.exists() and list_partials(CacheRepo(cache_dir, "acme/big").partials) == []


def test_force_fetches_the_whole_file_again_and_clears_its_partials(
    big_shard_hub: Any, cache_dir: Path, dead_writer_partial: Any
) -> None:
    from vcache.partial import list_partials

    hub, folder = big_shard_hub
    assert pull("acme/big", endpoint=hub.endpoint, cache_dir=cache_dir).ok
    data = (folder / "model.safetensors").read_bytes()
    old = dead_writer_partial(cache_dir, "acme/big", "model.safetensors", data, 5 << 20)
    hub.clear_log()
    report = pull("acme/big", endpoint=hub.endpoint, cache_dir=cache_dir, force_download=True)
    assert report.ok
    (req,) = hub.body_requests("acme/big", "model.safetensors")
    assert req.range is None  # from byte 0, not resumed from the earlier partial
    assert not old.exists() and list_partials(CacheRepo(cache_dir, "acme/big").partials) == []


# A pull in a child process whose audit hook records every name it creates: symlinks made, files opened for
# writing, and renames (os.replace).
AUDITED_PULL = r"""
import json, os, sys
events = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def audit(event, args):
    if event == "os.symlink":
        events.append(["created", os.fsdecode(args[1])])
    elif event == "os.rename":
        events.append(["renamed", os.fsdecode(args[0]), os.fsdecode(args[1])])
    elif event == "open" and not isinstance(args[0], int):
        path, mode, flags = args
        if (isinstance(flags, int) and flags & WRITE_FLAGS) or (isinstance(mode, str) and set(mode) & set("wax+")):
            events.append(["created", os.path.abspath(os.fsdecode(os.fspath(path)))])

sys.addaudithook(audit)
import vcache
report = vcache.pull(sys.argv[1], cache_dir=sys.argv[2], endpoint=sys.argv[3])
print(json.dumps({"ok": report.ok, "events": events}))
"""


@pytest.mark.parametrize("symlinks", [True, False])
def test_readers_never_see_a_temporary_name_in_snapshots_or_refs(
    hub: Any, cache_dir: Path, llama_folder: Path, symlinks: bool
) -> None:
    """Snapshot links (or copies) and refs are made elsewhere in the repo folder and renamed into place: a
    reader listing ``snapshots/<commit>/`` or ``refs/`` during a pull sees only final names."""
    env = dict(os.environ)
    if not symlinks:
        env["HF_HUB_DISABLE_SYMLINKS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", AUDITED_PULL, REPO, str(cache_dir), hub.endpoint],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["ok"]
    repo = CacheRepo(cache_dir, REPO)
    watched = [str(repo.root / "snapshots") + os.sep, str(repo.root / "refs") + os.sep]
    final = sorted(str(p) for folder in watched for p in Path(folder).rglob("*") if not p.is_dir())
    assert len(final) == len(_files(llama_folder)) + 1  # every file, and refs/main
    appeared = [e[-1] for e in out["events"] if e[-1].startswith(tuple(watched))]
    assert sorted(appeared) == final  # each final name appeared once, and no other name did
    made_there = [e for e in out["events"] if e[0] == "created" and e[1].startswith(tuple(watched))]
    assert made_there == []  # every entry arrived by one rename from outside those folders


def test_numpy_is_loaded_by_the_first_check_that_needs_it_not_up_front(cache_dir: Path) -> None:
    """Old behaviour: every pull imported numpy (0.1 s of CPU) on a thread of its own as it started, holding the
    GIL while the pull made its first Hub requests, even for a repo of text files that no check reads with
    numpy. Now a pull of config files never loads it, and a pull with a safetensors shard loads it for the
    content scan, which still runs (an all-zero row is found)."""
    import numpy as np
    from safetensors.numpy import save

    weights = np.ones((4, 8), dtype=np.float32)
    weights[2] = 0.0
    repo = Repo("acme/text")
    repo.commit(
        {
            "config.json": b'{"model_type": "llama"}',
            "tokenizer_config.json": b"{}",
            "README.md": b"# text\n",
        },
        branch="main",
    )
    shard = Repo("acme/shard")
    shard.commit({"config.json": b"{}", "model.safetensors": save({"o_proj.weight": weights})}, branch="main")
    child = (
        "import json, sys, vcache\n"
        "report = vcache.pull(sys.argv[1], cache_dir=sys.argv[2], endpoint=sys.argv[3])\n"
        "codes = sorted({f.code for r in report.files for f in r.findings})\n"
        "print(json.dumps({'numpy': 'numpy' in sys.modules, 'codes': codes}))\n"
    )
    with HubServer([repo, shard]) as hub:
        seen = {}
        for repo_id in ("acme/text", "acme/shard"):
            done = subprocess.run(
                [sys.executable, "-c", child, repo_id, str(cache_dir), hub.endpoint],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            seen[repo_id] = json.loads(done.stdout.splitlines()[-1])
    assert seen["acme/text"]["numpy"] is False, seen
    assert seen["acme/shard"]["numpy"] is True
    assert any("zero_rows" in code for code in seen["acme/shard"]["codes"]), seen
