"""Blob locks: the mode chosen per filesystem, flock and lease holds, bounded waits, takeover of dead holders."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import filelock
import pytest
from filelock._soft import encode_marker
from tests.cluster.conftest import finish, spawn, wait_for_files

from vcache.errors import LockTimeout, UsageError
from vcache.locks import (
    LockMode,
    blob_lock,
    ensure_lock_dir,
    filesystem_type,
    flock_trusted,
    lease_path,
    lock_policy,
    mount_fs_type,
)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:40 / /scratch rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw,localflock
41 27 0:41 / /home rw,relatime - nfs4 filer:/home rw,vers=4.2
42 41 0:42 / /home/alice/fast rw,relatime - xfs /dev/nvme0n1 rw
43 27 0:43 / /mnt/with\\040space rw - fuse.sshfs alice@host:/ rw
44 27 0:44 / /gpfs rw - gpfs gpfs0 rw
"""


@pytest.mark.parametrize(
    ("path", "fs_type"),
    [
        ("/scratch/hf/hub", "lustre"),
        ("/home/alice/.cache/huggingface", "nfs4"),
        ("/home/alice/fast/cache", "xfs"),  # a local disk mounted inside an NFS home
        ("/mnt/with space/cache", "fuse.sshfs"),  # \040 in mountinfo is a space
        ("/gpfs/projects/x", "gpfs"),
        ("/var/tmp/x", "ext4"),
        ("/scratchy", "ext4"),  # a prefix of a mount point's name is not inside it
    ],
)
def test_mount_fs_type_from_mountinfo(path: str, fs_type: str) -> None:
    assert mount_fs_type(path, MOUNTINFO) == fs_type


def test_filesystem_type_of_a_path_not_yet_created(tmp_path: Path) -> None:
    here = filesystem_type(tmp_path)
    assert here not in ("", "unknown")
    assert filesystem_type(tmp_path / "not" / "yet" / "there") == here
    assert filesystem_type(tmp_path, mountinfo=str(tmp_path / "absent")) == "unknown"


@pytest.mark.parametrize(
    ("fs_type", "trusted"),
    [
        ("ext4", True),
        ("xfs", True),
        ("tmpfs", True),
        ("lustre", False),
        ("nfs4", False),
        ("fuse.rclone", False),
    ],
)
def test_flock_trusted(fs_type: str, trusted: bool) -> None:
    assert flock_trusted(fs_type) is trusted


def test_lock_policy_by_filesystem_and_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCACHE_LOCK_MODE", raising=False)
    monkeypatch.setattr("vcache.locks.filesystem_type", lambda _p: "lustre")
    policy = lock_policy(tmp_path)
    assert policy.mode is LockMode.LEASE and "lustre" in policy.reason
    monkeypatch.setattr("vcache.locks.filesystem_type", lambda _p: "ext4")
    assert lock_policy(tmp_path).mode is LockMode.FLOCK
    for value, mode in (("lease", LockMode.LEASE), ("none", LockMode.NONE), ("FLOCK", LockMode.FLOCK)):
        monkeypatch.setenv("VCACHE_LOCK_MODE", value)
        assert lock_policy(tmp_path).mode is mode
    monkeypatch.setenv("VCACHE_LOCK_MODE", "fcntl")
    with pytest.raises(UsageError, match="VCACHE_LOCK_MODE='fcntl'"):
        lock_policy(tmp_path)


def test_flock_mode_uses_huggingface_hubs_path_and_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VCACHE_LOCK_MODE", "flock")
    path = tmp_path / ".locks" / "models--a--b" / "abc.lock"
    with blob_lock(path, timeout=1) as held:
        assert held
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
        assert not lease_path(path).exists()
        # Held: another taker (a separate open file description) times out.
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(str(path)).acquire(timeout=0.05)
    assert path.exists()  # like huggingface_hub's, the lock file stays


def test_lease_mode_uses_a_sibling_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCACHE_LOCK_MODE", "lease")
    path = tmp_path / ".locks" / "models--a--b" / "abc.lock"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # huggingface_hub's leftover, never deleted: must not block a lease
    with blob_lock(path, timeout=1) as held:
        assert held
        marker = lease_path(path)
        assert marker.name == "abc.lease"
        owner = filelock.SoftFileLease(str(marker)).owner
        assert owner is not None and owner.pid == os.getpid() and owner.mode == "lease"
    assert not lease_path(path).exists()
    assert path.read_bytes() == b""


def test_mode_none_and_read_only_take_no_lock_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ".locks" / "models--a--b" / "abc.lock"
    monkeypatch.setenv("VCACHE_LOCK_MODE", "none")
    with blob_lock(path) as held:
        assert held is False
    monkeypatch.setenv("VCACHE_LOCK_MODE", "flock")
    monkeypatch.setattr("vcache.locks.is_writable_dir", lambda _p: False)
    with blob_lock(path) as held:
        assert held is False
    assert not (tmp_path / ".locks").exists()


def test_lock_dir_inherits_the_shared_group_bits(tmp_path: Path) -> None:
    locks = tmp_path / ".locks"
    locks.mkdir()
    os.chmod(locks, 0o2775)
    old = os.umask(0o022)
    try:
        ensure_lock_dir(locks / "models--a--b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((locks / "models--a--b").stat().st_mode) == 0o2775


def test_nested_lock_dirs_inherit_the_shared_group_bits_at_every_level(tmp_path: Path) -> None:
    locks = tmp_path / ".locks"
    locks.mkdir()
    os.chmod(locks, 0o2775)
    old = os.umask(0o022)
    try:
        ensure_lock_dir(locks / "models--a--b" / "uses")  # the repo's folder did not exist yet either
    finally:
        os.umask(old)
    for level in (locks / "models--a--b", locks / "models--a--b" / "uses"):
        assert stat.S_IMODE(level.stat().st_mode) == 0o2775, level


HOLD = """
import sys, time
from pathlib import Path
from vcache.locks import blob_lock
with blob_lock(Path(sys.argv[1]), timeout=5) as held:
    print("held" if held else "unlocked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_in_child(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = spawn(HOLD, str(path), str(seconds))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("mode", ["flock", "lease"])
def test_wait_is_bounded_and_names_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("VCACHE_LOCK_MODE", mode)
    monkeypatch.setenv("VCACHE_LEASE_SECONDS", "1")
    path = tmp_path / ".locks" / "models--a--b" / "abc.lock"
    proc = _hold_in_child(path, 30)
    try:
        t0 = time.monotonic()
        # Longer than the lease: a live holder's heartbeat must keep its lease from being taken over.
        with pytest.raises(LockTimeout) as exc, blob_lock(path, timeout=1.6, what="acme/x/model.safetensors"):
            pass
        assert 1.5 <= time.monotonic() - t0 < 5
        msg = str(exc.value)
        assert "acme/x/model.safetensors" in msg and "waited 2s" in msg
        if mode == "lease":
            assert f"pid {proc.pid} on {socket.gethostname()}" in msg
        else:
            assert f"fuser -v {path}" in msg and "VCACHE_LOCK_MODE=lease" in msg
    finally:
        proc.kill()
        proc.wait()


def test_lease_of_a_killed_holder_on_this_host_is_taken_over_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VCACHE_LOCK_MODE", "lease")
    monkeypatch.setenv("VCACHE_LEASE_SECONDS", "30")
    path = tmp_path / ".locks" / "models--a--b" / "abc.lock"
    proc = _hold_in_child(path, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lease_path(path).exists()  # the dead holder's marker is still there
    t0 = time.monotonic()
    with blob_lock(path, timeout=5) as held:
        assert held
    assert time.monotonic() - t0 < 2  # its PID is gone: no need to wait out the 30 s lease


def test_lease_of_a_silent_holder_elsewhere_expires_even_with_another_duration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VCACHE_LOCK_MODE", "lease")
    monkeypatch.setenv("VCACHE_LEASE_SECONDS", "1")
    path = tmp_path / ".locks" / "models--a--b" / "abc.lock"
    marker = lease_path(path)
    marker.parent.mkdir(parents=True)
    # A holder on another node that stopped renewing, configured with a 1.5 s lease.
    record = filelock.OwnerRecord(
        pid=4242, hostname="node-17", mode="lease", token="f" * 32, lease_duration=1.5
    )
    marker.write_bytes(encode_marker(record))
    t0 = time.monotonic()
    with blob_lock(path, timeout=10) as held:
        assert held
        owner = filelock.SoftFileLease(str(marker)).owner
        assert owner is not None and owner.pid == os.getpid() and owner.lease_duration == 1.5
    assert 1.4 <= time.monotonic() - t0 < 5
    assert "VCACHE_LEASE_SECONDS=1.5" in caplog.text


EXCLUSION = """
import os, sys, time
from pathlib import Path
from vcache.locks import blob_lock
lock, inside, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
open(f"{sys.argv[4]}.ready.{os.getpid()}", "w").close()
while not os.path.exists(sys.argv[4]):
    time.sleep(0.001)
overlaps = 0
for _ in range(rounds):
    with blob_lock(lock, timeout=30):
        try:
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlaps += 1
            time.sleep(0.003)
            continue
        os.close(fd)
        time.sleep(0.003)
        os.unlink(inside)
print(overlaps)
"""


@pytest.mark.parametrize(
    ("mode", "noop_flock", "excludes"),
    # A lease never calls flock, so it excludes just the same where flock does nothing.
    [("flock", False, True), ("flock", True, False), ("lease", True, True)],
)
def test_exclusion_across_processes(
    tmp_path: Path, noop_flock_env: dict[str, str], mode: str, noop_flock: bool, excludes: bool
) -> None:
    env = dict(noop_flock_env if noop_flock else os.environ)
    env["VCACHE_LOCK_MODE"] = mode
    path = tmp_path / ".locks" / "models--a--b" / "abc.lock"
    go = tmp_path / "go"
    procs = [spawn(EXCLUSION, str(path), str(tmp_path / "inside"), "30", str(go), env=env) for _ in range(2)]
    wait_for_files(tmp_path, "go.ready.*", len(procs), procs)
    go.touch()
    overlaps = sum(int(finish(p)) for p in procs)
    assert (overlaps == 0) is excludes, overlaps
