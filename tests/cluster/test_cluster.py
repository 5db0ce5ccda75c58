"""`vcache cluster init` / `doctor`, the start jitter, and read-only consumers of a shared cache."""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import filelock
import pytest
from click.testing import CliRunner
from filelock._soft import encode_marker
from tests.cluster.conftest import finish, spawn, tree_listing

from vcache import cluster, retry
from vcache.cluster import SharedLayout, doctor, format_finding, init_shared_cache, probe_lock_exclusion
from vcache.cluster_cli import cluster as cluster_group
from vcache.locks import LockMode, lease_path
from vcache.report import Finding, Severity


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cluster_group, list(args), env=env, catch_exceptions=False)


def by_code(findings: list[Finding]) -> dict[str, Finding]:
    return {f.code: f for f in findings}


def lines_of(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith(("OK ", "WARN ", "FAIL "))]


@pytest.fixture
def shared_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a job gets after sourcing vcache.env, minus what each test sets itself."""
    for name in (
        "VCACHE_LOCK_MODE",
        "VCACHE_LEASE_SECONDS",
        "VCACHE_START_JITTER",
        "HF_TOKEN_PATH",
        "HF_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_init_creates_a_shared_cache_and_env_file(tmp_path: Path, shared_env: None) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    old = os.umask(0o022)  # a careless umask must not matter to init
    try:
        result = init_shared_cache(tmp_path / "shared", group=group)
    finally:
        os.umask(old)
    cache = tmp_path / "shared" / "hub"
    assert result.cache == cache and result.env_file == tmp_path / "shared" / "vcache.env"
    for d in (tmp_path / "shared", cache, cache / ".locks"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o2775, d
    assert (cache / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    env = cluster.read_env_file(result.env_file)
    assert env["HF_HUB_CACHE"] == str(cache)
    assert env["VCACHE_LOCK_MODE"] == "flock"  # a local disk
    assert env["VCACHE_LEASE_SECONDS"] == "30"
    assert not env["HF_TOKEN_PATH"].startswith(str(tmp_path))  # the token lives outside the shared tree
    assert "HF_HUB_DISABLE_XET" not in env  # no mirror: Xet may stay on
    assert stat.S_IMODE(result.env_file.stat().st_mode) == 0o664


def test_init_on_lustre_writes_lease_and_a_mirror_turns_xet_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_env: None
) -> None:
    monkeypatch.setattr("vcache.locks.filesystem_type", lambda _p: "lustre")
    result = init_shared_cache(tmp_path / "s", endpoint="https://hf-mirror.example.org")
    env = cluster.read_env_file(result.env_file)
    assert env["VCACHE_LOCK_MODE"] == "lease"
    assert env["HF_ENDPOINT"] == "https://hf-mirror.example.org" and env["HF_HUB_DISABLE_XET"] == "1"


def test_init_on_an_existing_cache_repairs_and_keeps_the_env_file_out_of_it(tmp_path: Path) -> None:
    from huggingface_hub import scan_cache_dir

    cache = tmp_path / "hf" / "hub"
    snap = cache / "models--acme--x" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (cache / "models--acme--x" / "refs").mkdir()
    (snap / "config.json").write_text("{}")
    os.chmod(snap / "config.json", 0o600)  # huggingface_hub's mkstemp files are 0600
    lock = cache / ".locks" / "models--acme--x" / "abc.lock"
    lock.parent.mkdir(parents=True)
    lock.touch(mode=0o644)
    os.chmod(lock, 0o644)  # written by a huggingface_hub before 1.4 (``docs/design.md`` §5.2)
    result = init_shared_cache(cache)
    assert result.cache == cache and result.env_file == tmp_path / "hf" / "vcache.env"
    assert stat.S_IMODE((snap / "config.json").stat().st_mode) & 0o044 == 0o044
    assert stat.S_IMODE(lock.stat().st_mode) & stat.S_IWGRP
    assert stat.S_IMODE(snap.stat().st_mode) == 0o2775
    assert any("config.json" in r for r in result.repaired)
    # Nothing vcache wrote makes huggingface_hub's scan complain.
    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    assert SharedLayout.locate(tmp_path / "hf").cache == cache


def test_init_unknown_group_is_a_usage_error(tmp_path: Path) -> None:
    res = run("init", str(tmp_path / "s"), "--group", "no-such-group-xyz", "--no-probe")
    assert res.exit_code == 2 and "no-such-group-xyz" in res.output


def test_cli_init_then_doctor_one_line_per_finding(shared_root: Path, shared_env: None) -> None:
    tmp_path = shared_root
    res = run("init", str(tmp_path / "s"))
    assert res.exit_code == 0, res.output
    lines = lines_of(res.output)
    assert lines and all(ln.split()[0] in ("OK", "WARN", "FAIL") for ln in lines)
    assert not [ln for ln in lines if ln.startswith("FAIL")], res.output
    text = "\n".join(lines)
    assert "OK    filesystem: " in text and "blob locks: flock" in text
    assert "OK    flock (in use): two processes never held it at once" in text
    assert "OK    lease (not in use): two processes never held it at once" in text
    assert "setgid and group-writable" in text
    assert "this environment matches" in text  # init checks with the settings it just wrote
    # Only the probe's files were ever in .locks, and they are gone.
    assert list((tmp_path / "s" / "hub" / ".locks").iterdir()) == []
    res = run("doctor", str(tmp_path / "s"), "--no-probe")
    assert res.exit_code == 0 and "differs from" in res.output  # this shell did not source vcache.env


def test_doctor_flags_a_flock_that_excludes_nobody(
    shared_root: Path, monkeypatch: pytest.MonkeyPatch, noop_flock_env: dict[str, str], shared_env: None
) -> None:
    tmp_path = shared_root
    init_shared_cache(tmp_path / "s")
    monkeypatch.setenv("PYTHONPATH", noop_flock_env["PYTHONPATH"])  # the probe processes inherit it
    monkeypatch.setenv("VCACHE_LOCK_MODE", "flock")
    found = by_code(doctor(tmp_path / "s"))
    bad = found["cluster.lock_probe.flock"]
    assert bad.severity is Severity.FAIL and "does NOT exclude" in bad.message
    assert "VCACHE_LOCK_MODE=lease" in bad.message
    assert found["cluster.lock_probe.lease"].severity is Severity.INFO  # leases still work there
    # With leases in use the same filesystem is fine: the broken flock is only a warning.
    monkeypatch.setenv("VCACHE_LOCK_MODE", "lease")
    found = by_code(doctor(tmp_path / "s"))
    assert found["cluster.lock_probe.flock"].severity is Severity.WARN
    assert cluster.is_safe(list(found.values()))


def test_probe_counts_overlaps_with_real_processes(tmp_path: Path, noop_flock_env: dict[str, str]) -> None:
    assert probe_lock_exclusion(tmp_path, LockMode.FLOCK, rounds=10).excludes
    assert probe_lock_exclusion(tmp_path, LockMode.LEASE, rounds=10).excludes
    assert list(tmp_path.iterdir()) == []


def test_doctor_permissions_and_the_hf_home_0700_trap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_env: None
) -> None:
    home = tmp_path / "hf_home"
    cache = init_shared_cache(home).cache  # HF_HOME itself shared, the classic mistake
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    os.chmod(home, 0o700)  # what `hf auth login` does to HF_HOME (huggingface_hub PR #4234)
    (cache / "models--acme--x" / "blobs").mkdir(parents=True)
    os.chmod(cache / "models--acme--x", 0o755)  # made with umask 022
    blob = cache / "models--acme--x" / "blobs" / "abc"
    blob.write_text("x")
    os.chmod(blob, 0o600)
    open_blob = cache / "models--acme--x" / "blobs" / "def"
    open_blob.write_text("y")
    os.chmod(open_blob, 0o664)  # what umask 0002 gives a published blob
    found = by_code(doctor(cache, probe=False))
    assert found["cluster.permissions.traverse"].severity is Severity.FAIL
    assert "HF_HOME" in found["cluster.permissions.traverse"].message
    assert found["cluster.token_path"].severity is Severity.WARN
    assert "models--acme--x (755)" in found["cluster.permissions.dirs"].message
    assert found["cluster.permissions.unreadable"].severity is Severity.FAIL
    assert "blobs/abc (600)" in found["cluster.permissions.unreadable"].message
    assert "blobs/def (664)" in found["cluster.permissions.writable_blobs"].message
    res = run("doctor", str(cache), "--no-probe")
    assert res.exit_code == 1


def test_doctor_reports_stale_leases_xet_and_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_env: None
) -> None:
    result = init_shared_cache(tmp_path / "s")
    lock = result.cache / ".locks" / "models--acme--x" / "abc.lock"
    lock.parent.mkdir()
    marker = lease_path(lock)
    # A holder on another node that stopped renewing 10 minutes ago.
    record = filelock.OwnerRecord(
        pid=4242, hostname="node-17", mode="lease", token="f" * 32, lease_duration=30.0
    )
    marker.write_bytes(encode_marker(record))
    old = time.time() - 600
    os.utime(marker, (old, old))
    # An unfinished download whose writer went away (half of it recorded in its sidecar).
    from vcache.hashing import Digest
    from vcache.partial import PartialMeta, RangeSet, open_partial

    etag = "ab" * 32
    meta = PartialMeta(etag, 1000, Digest.from_etag(etag), "c" * 40, "model.safetensors")
    partial = open_partial(result.cache / "models--acme--x" / ".vcache" / "partials", meta)
    os.pwrite(partial.fd, b"x" * 500, 0)
    partial.save(RangeSet([(0, 500)]))
    partial.close()
    real_now = time.time
    monkeypatch.setattr(cluster, "_now", lambda: real_now() + 120)  # two minutes later, no sleeping
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.org")
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    monkeypatch.setattr(cluster, "_xet_installed", lambda: True)
    found = by_code(doctor(tmp_path / "s", probe=False, warn_free_bytes=1 << 62))
    stale = found["cluster.stale_leases"]
    assert stale.severity is Severity.WARN and "pid 4242 on node-17" in stale.message
    assert (
        found["cluster.xet"].severity is Severity.WARN
        and "HF_HUB_DISABLE_XET=1" in found["cluster.xet"].message
    )
    assert found["cluster.free_space"].severity is Severity.WARN
    partials = found["cluster.stale_partials"]
    assert partials.severity is Severity.WARN and "acme/x/model.safetensors" in partials.message
    assert "1 unfinished downloads (500 B)" in partials.message
    assert marker.exists()  # the doctor reports; it does not delete
    for f in found.values():
        assert "\n" not in format_finding(f)


def test_doctor_on_a_missing_path_fails(tmp_path: Path) -> None:
    res = run("doctor", str(tmp_path / "nope"))
    assert res.exit_code == 1 and "cluster init" in res.output


def test_start_jitter_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "_jitter_done", False)
    monkeypatch.setenv("VCACHE_START_JITTER", "0")
    assert cluster.start_jitter(sleep=False) == 0.0
    monkeypatch.setenv("VCACHE_START_JITTER", "5")
    first = cluster.start_jitter(sleep=False)
    assert 0.0 <= first <= 5.0
    assert cluster.start_jitter(sleep=False) == 0.0  # later pulls in the same process do not wait again


# -- read-only consumers -----------------------------------------------------------------------------------------

# Runs as a separate process, on a read-only view of the cache: a read-only bind mount in a private mount
# namespace where that works, else (``simulate``) with every write under the cache refused by an audit hook,
# as a read-only filesystem would. Either way the audit hook records every attempt to write there.
# In ``simulate`` mode ``os.access`` also answers as on a read-only filesystem (audit hooks cannot change it).
_READ_ONLY_PRELUDE = """
import errno, json, os, sys
cache, mode = sys.argv[1:3]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
WRITE_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.chmod",
                "os.chown", "os.truncate", "os.utime", "tempfile.mkstemp", "tempfile.mkdtemp"}
attempts = []

def under_cache(path):
    try:
        return os.path.abspath(os.fsdecode(path)).startswith(cache + os.sep)
    except TypeError:
        return False  # a file descriptor

def audit(event, args):
    if event == "open":
        path, fmode, flags = args
        writes = (isinstance(flags, int) and flags & WRITE_FLAGS) or (isinstance(fmode, str) and set(fmode) & set("wax+"))
        if not (writes and under_cache(path)):
            return
    elif not (event in WRITE_EVENTS and args and under_cache(args[0])):
        return
    attempts.append([event, os.fsdecode(args[0])])
    if mode == "simulate":
        raise OSError(errno.EROFS, "Read-only file system (simulated)", os.fsdecode(args[0]))

sys.addaudithook(audit)
if mode == "mount":
    probe = os.path.join(cache, ".ro-probe")
    try:
        open(probe, "w")
        sys.exit("the cache is writable: the bind mount did not take")
    except OSError as exc:
        assert exc.errno == errno.EROFS, exc
    attempts.clear()
else:
    _access = os.access
    def _read_only_access(path, how, **kwargs):
        if how & os.W_OK and not isinstance(path, int) and under_cache(path):
            return False
        return _access(path, how, **kwargs)
    os.access = _read_only_access
"""

READ_ONLY_CONSUMER = (
    _READ_ONLY_PRELUDE
    + """
endpoint, full_repo, partial_repo, missing = sys.argv[3:7]
import vcache
from transformers import AutoModelForCausalLM
from vcache.cluster import doctor

out = {}
def step(name, fn):
    before = len(attempts)
    try:
        out[name] = fn()
    except Exception as exc:
        out[name] = {"error": type(exc).__name__, "message": str(exc)}
    out[name + ".attempts"] = attempts[before:]

step("offline", lambda: vcache.pull(full_repo, cache_dir=cache, local_files_only=True).ok)
step("online", lambda: vcache.pull(full_repo, cache_dir=cache, endpoint=endpoint).ok)
step("verify", lambda: [r.ok for r in vcache.verify([full_repo], cache_dir=cache)])
step("load", lambda: type(vcache.from_pretrained(AutoModelForCausalLM, full_repo, cache_dir=cache, local_files_only=True)).__name__)
step("missing_online", lambda: vcache.pull(partial_repo, cache_dir=cache, endpoint=endpoint).ok)
step("missing_offline", lambda: vcache.hf_hub_download(partial_repo, missing, cache_dir=cache, local_files_only=True))
step("doctor", lambda: [[f.code, f.severity.value, f.message] for f in doctor(cache)])
print(json.dumps(out))
"""
)


def _run_read_only(cache: Path, script: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``script`` (which starts with ``_READ_ONLY_PRELUDE``) on a read-only view of ``cache``: a read-only
    bind mount where one can be made, else simulated. Returns the JSON its last output line holds."""
    mode = "mount" if _read_only_mount_works(cache.parent) else "simulate"
    if mode == "mount":
        script_args = [str(cache), mode, *args]
        shell = 'mount --bind -o ro "$0" "$0" && exec "$1" -c "$2" "$0" "${@:3}"'
        cmd = ["unshare", "-m", "bash", "-c", shell, str(cache), sys.executable, script, *script_args[1:]]
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    else:
        child = spawn(script, str(cache), mode, *args, env=env)
    return json.loads(finish(child, timeout=120).splitlines()[-1])


def _read_only_mount_works(tmp_path: Path) -> bool:
    target = tmp_path / "ro-probe"
    target.mkdir()
    cmd = f'mount --bind -o ro "{target}" "{target}" && ! touch "{target}/x" 2>/dev/null'
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and not (target / "x").exists()


def test_read_only_cache_serves_verify_and_load_and_writes_nothing(
    shared_root: Path, six_shard_folder: Path, monkeypatch: pytest.MonkeyPatch, shared_env: None
) -> None:
    import vcache
    from vcache.testing.hub import HubServer, Repo
    from vcache.testing.models import repo_from_folder

    cache = init_shared_cache(shared_root / "s").cache
    full = repo_from_folder("acme/full", six_shard_folder)
    part = Repo("acme/part")
    missing = "notes/extra.bin"
    part.commit({"config.json": six_shard_folder / "config.json", missing: b"\x01" * 4096})
    with HubServer([full, part]) as hub:
        # Filled once by a writer: one repo whole, the other without one file.
        assert vcache.pull("acme/full", cache_dir=cache, endpoint=hub.endpoint).ok
        assert vcache.pull(
            "acme/part", cache_dir=cache, endpoint=hub.endpoint, ignore_patterns=["notes/*"]
        ).ok
        before = tree_listing(cache)
        t0 = time.monotonic()
        out = _run_read_only(cache, READ_ONLY_CONSUMER, hub.endpoint, "acme/full", "acme/part", missing)
        assert time.monotonic() - t0 < 60  # nothing waited on a lock it could not take
        hub_requests = len(hub.log)
    assert hub_requests > 0  # the online pull did ask the Hub, and answered from the ledger

    assert out["offline"] is True and out["online"] is True and out["verify"] == [True], out
    assert out["load"] == "LlamaForCausalLM", out["load"]
    # What is missing is a clear error naming the file, not a hang or a half-written cache.
    assert out["missing_online"]["error"] == "CacheNotWritable", out["missing_online"]
    assert "read-only and lacks" in out["missing_online"]["message"]
    assert missing in out["missing_online"]["message"]
    assert out["missing_offline"]["error"] == "IncompleteSnapshot", out["missing_offline"]
    assert missing in out["missing_offline"]["message"]
    doctor_found = {code: (severity, message) for code, severity, message in out["doctor"]}
    assert "read-only" in doctor_found["cluster.writable"][1]
    # No lock probe on a read-only cache: nothing there takes locks.
    assert not any(code.startswith("cluster.lock_probe") for code in doctor_found)
    assert doctor_found["cluster.offline"][0] == "warn"  # consumers should set HF_HUB_OFFLINE=1
    # Not one write was even attempted, and the tree is exactly as it was (names, modes, sizes, mtimes).
    for key, value in out.items():
        if key.endswith(".attempts"):
            assert value == [], (key, value)
    assert tree_listing(cache) == before


# ``vcache pull REPO`` (the CLI, in-process) for each repo named, on the read-only view: exit code, output and
# the write attempts of each.
READ_ONLY_PULL = (
    _READ_ONLY_PRELUDE
    + """
import contextlib, io
from vcache.cli import main
out = {}
for repo in sys.argv[3:]:
    before = len(attempts)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(["pull", repo, "--cache-dir", cache, "--json"])
            code = 0
        except SystemExit as exc:
            code = exc.code
    out[repo] = {"exit": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
                 "attempts": attempts[before:]}
print(json.dumps(out))
"""
)


def test_a_copied_read_only_cache_is_verified_in_place_by_hashing(
    shared_root: Path, llama_folder: Path, shared_env: None
) -> None:
    """A complete cache copied to a read-only place (new inodes: no ledger record describes its blobs), or
    one huggingface_hub wrote (no records at all): what is there is hashed against the Hub's listing and
    checked where it is, nothing is written, and the pull succeeds; bad bytes fail (exit 1) and only what is
    really absent is reported missing (exit 3)."""
    from huggingface_hub import snapshot_download

    import vcache
    from vcache.cache import CacheRepo
    from vcache.testing.hub import HubServer, Repo
    from vcache.testing.models import repo_from_folder

    shard = "model-00001-of-00002.safetensors"
    part = Repo("acme/part")
    part.commit({"config.json": llama_folder / "config.json", "notes/extra.bin": b"\x01" * 4096})
    repos = [repo_from_folder(name, llama_folder) for name in ("acme/vcache", "acme/hf", "acme/damaged")]
    written = shared_root / "written"
    cache = shared_root / "copy"
    with HubServer([*repos, part]) as hub:
        for name in ("acme/vcache", "acme/damaged"):
            assert vcache.pull(name, cache_dir=written, endpoint=hub.endpoint).ok
        assert vcache.pull(
            "acme/part", cache_dir=written, endpoint=hub.endpoint, ignore_patterns=["notes/*"]
        ).ok
        snapshot_download("acme/hf", cache_dir=written, endpoint=hub.endpoint)
        shutil.copytree(written, cache, symlinks=True)
        damaged_repo = CacheRepo(cache, "acme/damaged")
        blob = (damaged_repo.snapshot_dir(damaged_repo.read_ref("main") or "") / shard).resolve()
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))
        before = tree_listing(cache)
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint}
        out = _run_read_only(
            cache, READ_ONLY_PULL, "acme/vcache", "acme/hf", "acme/damaged", "acme/part", env=env
        )

    for name in ("acme/vcache", "acme/hf"):
        assert out[name]["exit"] == 0, out[name]
        doc = json.loads(out[name]["stdout"])
        assert doc["verdict"] == "ok" and len(doc["files"]) == len(list(llama_folder.rglob("*.*")))
    damaged = out["acme/damaged"]  # the copy's bytes were hashed, not taken on the copied records' word
    assert damaged["exit"] == 1, damaged
    bad = next(f for f in json.loads(damaged["stdout"])["files"] if f["path"] == shard)
    assert "digest_mismatch" in {x["code"] for x in bad["findings"]} and not bad.get("quarantine_id")
    missing = out["acme/part"]
    assert missing["exit"] == 3 and "read-only and lacks notes/extra.bin of acme/part" in missing["stderr"]
    assert "config.json" not in missing["stderr"]  # present: verified, not reported missing
    for name, result in out.items():
        assert result["attempts"] == [], (name, result["attempts"])  # no ledger record, ref, lock or link
    assert tree_listing(cache) == before


def test_pull_takes_its_herd_settings_from_the_environment(
    tmp_path: Path, six_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.cluster.conftest import SIX_SHARDS

    import vcache

    pull_module = sys.modules["vcache.pull"]
    seen: dict[str, Any] = {}
    real_transfer = pull_module.Transfer

    def spy(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_transfer(**kwargs)

    monkeypatch.setattr(pull_module, "Transfer", spy)
    monkeypatch.setattr(retry, "_jitter_done", False)
    monkeypatch.setenv("VCACHE_MAX_CONNECTIONS", "3")
    monkeypatch.setenv("VCACHE_LEASE_SECONDS", "12")
    monkeypatch.setenv("VCACHE_START_JITTER", "0.05")
    assert vcache.pull(SIX_SHARDS, endpoint=six_hub.endpoint, cache_dir=tmp_path / "c").ok
    assert seen["max_connections"] == 3 and seen["stale_after"] == 12.0
    assert retry._jitter_done  # the pull waited its random start once


def test_doctor_fails_on_an_unknown_lock_mode(shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_shared_cache(shared_root / "s")
    monkeypatch.setenv("VCACHE_LOCK_MODE", "posix")
    found = by_code(doctor(shared_root / "s"))
    assert found["cluster.lock_mode"].severity is Severity.FAIL
    assert "VCACHE_LOCK_MODE='posix'" in found["cluster.lock_mode"].message
