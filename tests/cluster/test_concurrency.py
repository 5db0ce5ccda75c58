"""Many real processes on one cache: one transfer per blob, takeover of a killed writer, locks that lie.

Every process here is a real ``python`` child talking to the test Hub over loopback; the Hub's request log is
the witness for what was transferred.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import filelock
import pytest
from tests.cluster.conftest import SIX_SHARDS, finish, spawn, wait_for_files

from vcache.cache import CacheRepo
from vcache.partial import list_partials

# Start together (a ready file, then wait for the go file), pull, print the report's essentials.
PULL = """
import json, os, sys, time
from pathlib import Path
import vcache
from dataclasses import replace
from vcache.config import resolve_transfer_settings
from vcache.pull import PullOptions
repo_id, endpoint, cache, go = sys.argv[1:5]
files = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
knobs = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
Path(f"{go}.ready.{os.getpid()}").touch()
while not os.path.exists(go):
    time.sleep(0.002)
report = vcache.pull(repo_id, endpoint=endpoint, cache_dir=cache, files=files, options=PullOptions(transfer=replace(resolve_transfer_settings(), **knobs)))
print(json.dumps({
    "ok": report.ok,
    "errors": list(report.errors),
    "snapshot": report.snapshot_path,
    "files": {f.path: {"bytes": f.bytes_transferred, "cached": f.cached} for f in report.files},
}))
"""

# Poll the snapshot folder until told to stop; hash every file that can be opened.
READER = """
import hashlib, json, os, sys, time
root, expected_file, stop = sys.argv[1:4]
expected = json.load(open(expected_file))
seen, bad, rounds = set(), [], 0
while not os.path.exists(stop) or rounds < 1:
    rounds += 1
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).split(os.sep, 1)[1]  # drop <commit>/
            # The cache links through a moment-lived ".<name>.<8 hex>.tmp" symlink renamed into place; judge
            # it by the file it becomes.
            head, _, tail = rel.rpartition("/")
            if tail.startswith(".") and tail.endswith(".tmp"):
                tail = tail[1:].rsplit(".", 2)[0]
                rel = f"{head}/{tail}" if head else tail
            try:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            except FileNotFoundError:
                continue  # a link whose blob is not there yet is not a file anyone can open
            seen.add(rel)
            if digest != expected.get(rel):
                bad.append(rel)
    time.sleep(0.005)
print(json.dumps({"seen": sorted(seen), "bad": bad, "rounds": rounds}))
"""


def _sha256s(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _assert_cache_correct(cache: Path, folder: Path, repo_id: str = SIX_SHARDS) -> None:
    expected = _sha256s(folder)
    snaps = list((CacheRepo(cache, repo_id).root / "snapshots").iterdir())
    assert len(snaps) == 1
    assert _sha256s(snaps[0]) == expected
    # Nothing left half-done (a published download's data file became the blob).
    assert not [p for p in list_partials(CacheRepo(cache, repo_id).partials) if p.data_path.exists()]


def _start_pullers(
    n: int, tmp_path: Path, hub: Any, cache: Path, env: dict[str, str], files: list[str] | None = None
) -> list[subprocess.Popen[str]]:
    go = tmp_path / "go"
    args = [SIX_SHARDS, hub.endpoint, str(cache), str(go)] + ([json.dumps(files)] if files else [])
    procs = [spawn(PULL, *args, env=env) for _ in range(n)]
    wait_for_files(tmp_path, "go.ready.*", n, procs)
    return procs


def test_eight_processes_one_transfer_per_blob_and_readers_never_see_partial_files(
    tmp_path: Path, six_hub: Any, six_shard_folder: Path
) -> None:
    cache = tmp_path / "cache"
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(_sha256s(six_shard_folder)))
    snapshots = CacheRepo(cache, SIX_SHARDS).root / "snapshots"
    snapshots.mkdir(parents=True)
    stop = tmp_path / "stop"
    reader = spawn(READER, str(snapshots), str(expected), str(stop))
    env = dict(os.environ, VCACHE_LOCK_MODE="auto")
    procs = _start_pullers(8, tmp_path, six_hub, cache, env)
    (tmp_path / "go").touch()
    results = [json.loads(finish(p)) for p in procs]
    stop.touch()
    seen = json.loads(finish(reader))

    assert all(r["ok"] and not r["errors"] for r in results), results
    assert len({r["snapshot"] for r in results}) == 1
    sizes = {
        p.relative_to(six_shard_folder).as_posix(): p.stat().st_size for p in six_shard_folder.rglob("*")
    }
    for path, size in sizes.items():
        requests = six_hub.body_requests(SIX_SHARDS, path)
        # Exactly one whole-body GET for each blob across all eight processes.
        assert len(requests) == 1, (path, requests)
        assert requests[0].range is None and requests[0].status == 200
        assert requests[0].body_bytes == size
        assert sum(r["files"][path]["bytes"] for r in results) == size
    _assert_cache_correct(cache, six_shard_folder)
    # The reader looked throughout and every file it could open already had its final bytes.
    assert seen["bad"] == [] and seen["rounds"] > 1
    assert set(seen["seen"]) == set(sizes)


@pytest.mark.parametrize("broken", ["VCACHE_LOCK_MODE=none", "flock does nothing"])
def test_locks_that_do_nothing_cost_duplicates_never_correctness(
    tmp_path: Path, six_hub: Any, six_shard_folder: Path, noop_flock_env: dict[str, str], broken: str
) -> None:
    cache = tmp_path / "cache"
    if broken == "flock does nothing":
        env = dict(noop_flock_env, VCACHE_LOCK_MODE="flock")
    else:
        env = dict(os.environ, VCACHE_LOCK_MODE="none")
    six_hub.throttle_bps = 4 << 20  # slow enough that the three downloads overlap
    procs = _start_pullers(3, tmp_path, six_hub, cache, env)
    (tmp_path / "go").touch()
    results = [json.loads(finish(p)) for p in procs]
    assert all(r["ok"] and not r["errors"] for r in results), results
    _assert_cache_correct(cache, six_shard_folder)
    for p in six_shard_folder.rglob("*"):
        requests = six_hub.body_requests(SIX_SHARDS, p.relative_to(six_shard_folder).as_posix())
        assert 1 <= len(requests) <= 3 and all(r.body_bytes == p.stat().st_size for r in requests)


def _hostname_namespace_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-u", "sh", "-c", "hostname vcache-probe"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("holder", ["this host", "another host"])
def test_a_killed_writer_is_taken_over_and_its_partial_resumed(
    tmp_path: Path, six_hub: Any, six_shard_folder: Path, holder: str
) -> None:
    """SIGKILL a writer mid-shard; the next process takes its lease over and resumes its partial.

    "this host": the dead PID frees the lease at once, and the taker waits (under the lease) until the partial
    has gone a lease length untouched, then adopts it. "another host": the killed writer ran under another
    hostname (its own UTS namespace), so its PID cannot be checked from here and the lease must expire first.
    The taker is started (and its imports paid for) before the kill, so that without those waits it would
    reach the partial while it still looked alive and start from zero.
    """
    if holder == "another host" and not _hostname_namespace_available():
        pytest.skip("needs `unshare -u` (root or user namespaces) to run the writer under another hostname")
    shard = "model-00002-of-00006.safetensors"
    size = (six_shard_folder / shard).stat().st_size
    cache = tmp_path / "cache"
    partials = CacheRepo(cache, SIX_SHARDS).partials
    # A short lease: the test waits it out twice (lease expiry, then the partial going stale).
    env = dict(os.environ, VCACHE_LOCK_MODE="lease", VCACHE_LEASE_SECONDS="1.5")
    six_hub.throttle_bps = 256 * 1024  # the shard takes seconds: time to kill it mid-way
    # Written (and checkpointed) in 64 KiB chunks rather than the default 4 MiB, larger than this shard.
    chunk = 64 * 1024
    knobs = [json.dumps([shard]), json.dumps({"buffer_size": chunk})]
    writer_args = [SIX_SHARDS, six_hub.endpoint, str(cache), str(tmp_path / "go"), *knobs]
    if holder == "another host":
        script = 'hostname node-b && exec "$0" "$@"'
        cmd = ["unshare", "-u", "sh", "-c", script, sys.executable, "-c", PULL, *writer_args]
        writer = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    else:
        writer = spawn(PULL, *writer_args, env=env)
    taker = spawn(PULL, SIX_SHARDS, six_hub.endpoint, str(cache), str(tmp_path / "later"), *knobs, env=env)
    wait_for_files(tmp_path, "go.ready.*", 1, [writer])
    wait_for_files(tmp_path, "later.ready.*", 1, [taker])
    (tmp_path / "go").touch()
    # Kill it once its sidecar records a good part of the shard (the checkpoints are what a taker trusts).
    deadline = time.monotonic() + 30
    have = 0
    while have < size // 4:
        assert time.monotonic() < deadline, "the writer never got going"
        assert writer.poll() is None, finish(writer)
        have = max((p.completed for p in list_partials(partials) if p.valid), default=0)
        time.sleep(0.02)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    lease_marker = next((cache / ".locks").glob("*/*.lease"))  # the dead writer's lease is still there
    owner = filelock.SoftFileLease(str(lease_marker)).owner
    assert owner is not None and owner.hostname.startswith("node-b" if holder == "another host" else "")
    recorded = max(p.completed for p in list_partials(partials) if p.valid)
    assert have <= recorded < size

    six_hub.throttle_bps = None
    started = time.time()
    (tmp_path / "later").touch()
    result = json.loads(finish(taker))
    assert result["ok"], result
    # The killed writer's own request is logged when the server notices the dead connection: leave it out.
    requests = [r for r in six_hub.body_requests(SIX_SHARDS, shard) if r.time >= started]
    transferred = sum(r.body_bytes for r in requests)
    # Resumed, not restarted: only the remainder crossed the wire, asked for with a Range.
    assert requests and all(r.range for r in requests), requests
    assert transferred == result["files"][shard]["bytes"]
    assert transferred <= size - recorded + chunk, (transferred, size, recorded)
    blob = CacheRepo(cache, SIX_SHARDS).blob_path(
        hashlib.sha256((six_shard_folder / shard).read_bytes()).hexdigest()
    )
    assert blob.read_bytes() == (six_shard_folder / shard).read_bytes()
    assert not [p for p in list_partials(partials) if p.data_path.exists()]
    assert not lease_marker.exists()
