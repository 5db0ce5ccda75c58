"""Per-blob locks — hints that save duplicate work, never correctness.

What this module owns: the one entry point :func:`blob_lock`, and the choice of *how* a blob is locked:

``flock``
    ``filelock.FileLock(<cache>/.locks/<repo_folder>/<etag>.lock, mode=0o664)``: huggingface_hub's own path and
    mode, so vcache and huggingface_hub never fetch one blob at once on a local disk. The kernel drops a flock
    when its holder dies, so it is never stale.
``lease``
    ``filelock.SoftFileLease`` at the sibling path ``<etag>.lease``, refreshed by a heartbeat thread. Used where
    ``flock`` cannot be trusted (NFS, Lustre, GPFS, BeeGFS, CIFS, FUSE, ...: docs/design.md §5.1), detected from the
    filesystem type of the lock directory in ``/proc/self/mountinfo``. A holder that died is taken over: at once
    when it ran on this host (its PID is gone), otherwise once its marker has not been refreshed for
    :func:`lease_seconds`. The lease lives *beside* huggingface_hub's ``.lock`` rather than in it because
    huggingface_hub never deletes its ``.lock`` files and opens them ``O_RDWR|O_TRUNC`` to ``flock`` them: an
    empty leftover ``.lock`` would read as a live legacy marker (never taken over), and huggingface_hub would
    truncate a live lease's owner record. In lease mode vcache therefore does not exclude huggingface_hub
    processes; both write private temporary files and rename atomically, so that costs bandwidth only.
``none``
    No lock at all (``VCACHE_LOCK_MODE=none``): every process downloads; the result is still correct.

``VCACHE_LOCK_MODE=auto|flock|lease|none`` overrides the detection. Waits are bounded
(``VCACHE_LOCK_TIMEOUT``) and end in :class:`~vcache.errors.LockTimeout` naming the holder when it is known.
Where the lock directory is not writable (a read-only cache), no lock is attempted at all — not even a failing
``open`` — and the caller proceeds unlocked.

What it must never do: make correctness depend on a lock (docs/design.md §2.2: per-writer partials, digest
checks and atomic publish carry it), wait without a bound, or write anywhere but ``<cache>/.locks/``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock

from vcache.config import DEFAULT_LEASE_SECONDS, DEFAULT_LOCK_TIMEOUT, lease_seconds, lock_settings
from vcache.errors import LockTimeout, UsageError

log = logging.getLogger(__name__)

#: How often a waiter says it is still waiting (huggingface_hub logs every 10 s; a cluster log needs less).
_WAIT_LOG_INTERVAL = 30.0

#: Filesystem types on which ``flock`` may succeed without excluding anyone on another node (docs/design.md §5.1),
#: or where it is emulated per client. Matched exactly, or as a ``fuse.*`` subtype.
UNTRUSTED_FLOCK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "panfs",
        "wekafs",
        "glusterfs",
        "orangefs",
        "pvfs2",
        "virtiofs",
        "fuse",
        "fuseblk",
    }
)


class LockMode(enum.StrEnum):
    """How blob locks are taken."""

    FLOCK = "flock"
    LEASE = "lease"
    NONE = "none"


@dataclass(frozen=True)
class LockPolicy:
    """The lock mode for a directory and why it was chosen (shown by ``vcache cluster doctor``)."""

    mode: LockMode
    fs_type: str
    reason: str


def lock_timeout() -> float:
    """Seconds to wait for a blob lock (``VCACHE_LOCK_TIMEOUT``, default 600)."""
    return lock_settings().timeout


# -- filesystem detection ----------------------------------------------------------------------------------------


def _unescape_mount_field(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as \ooo (octal).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def filesystem_type(path: Path, *, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The filesystem type (``ext4``, ``nfs4``, ``lustre``, ``fuse.sshfs``, ...) holding ``path``, or ``unknown``.

    ``path`` need not exist yet: its nearest existing ancestor decides (symlinks resolved). ``unknown`` where
    ``/proc/self/mountinfo`` is unavailable (not Linux).
    """
    target = os.path.realpath(_existing_ancestor(path))
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return "unknown"
    return mount_fs_type(target, text)


def mount_fs_type(target: str, mountinfo: str) -> str:
    """The type of the mount that holds the absolute, resolved path ``target``, per ``mountinfo``'s text."""
    best, best_type = "", "unknown"
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount_point = _unescape_mount_field(fields[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # Later lines win ties: a mount stacked over the same point hides the earlier one.
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def flock_trusted(fs_type: str) -> bool:
    """Whether ``flock`` on this filesystem type excludes every process that shares it."""
    base = fs_type.split(".", 1)[0]
    return fs_type not in UNTRUSTED_FLOCK_FILESYSTEMS and base not in UNTRUSTED_FLOCK_FILESYSTEMS


def lock_policy(directory: Path) -> LockPolicy:
    """The lock mode for blobs whose locks live in ``directory``: ``VCACHE_LOCK_MODE``, else by filesystem type."""
    fs_type = filesystem_type(directory)
    raw = lock_settings().mode
    if raw != "auto":
        try:
            return LockPolicy(LockMode(raw), fs_type, "set by VCACHE_LOCK_MODE")
        except ValueError:
            raise UsageError(
                f"VCACHE_LOCK_MODE={raw!r} is not one of auto, flock, lease, none; "
                "fix the variable (see `vcache cluster doctor`)"
            ) from None
    if flock_trusted(fs_type):
        return LockPolicy(LockMode.FLOCK, fs_type, f"{fs_type}: flock is reliable here")
    return LockPolicy(
        LockMode.LEASE, fs_type, f"{fs_type}: flock may not exclude other nodes, so leases are used"
    )


def lease_path(lock_path: Path) -> Path:
    """Where the lease for huggingface_hub's ``<etag>.lock`` lives: the sibling ``<etag>.lease``."""
    return lock_path.with_name(lock_path.stem + ".lease")


def is_writable_dir(path: Path) -> bool:
    """True when ``path`` (or its nearest existing parent) accepts new files for this user."""
    return os.access(_existing_ancestor(path), os.W_OK | os.X_OK)


def ensure_lock_dir(directory: Path) -> None:
    """Create ``directory`` (under ``.locks``) with its parent's group bits, so other users can lock there too.

    A shared cache's ``.locks`` is ``2775``; a user whose umask is ``022`` would otherwise create
    ``.locks/<repo_folder>`` as ``0755`` and lock everyone else out of it (``docs/design.md`` §5.2). Missing
    parents (``.locks/<repo_folder>`` for ``.locks/<repo_folder>/uses``) get the same treatment, level by level.
    """
    if directory.is_dir():
        return
    if ".locks" in directory.parent.parts:
        ensure_lock_dir(directory.parent)
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        parent_mode = stat.S_IMODE(directory.parent.stat().st_mode)
        if parent_mode & stat.S_IWGRP:
            mode = stat.S_IMODE(directory.stat().st_mode)
            os.chmod(directory, mode | (parent_mode & (stat.S_IRWXG | stat.S_ISGID)))


# -- the lock ----------------------------------------------------------------------------------------------------


#: What a blob lease taken over by another process means (see :func:`blob_lock`'s ``lost``).
_BLOB_LEASE_LOST = "continuing, another process may fetch the same blob"


def _make_lock(
    path: Path, mode: LockMode, duration: float, lost_means: str = _BLOB_LEASE_LOST
) -> filelock.BaseFileLock:
    if mode is LockMode.LEASE:

        def lost(compromise: filelock.LeaseCompromise) -> None:
            # Another process took the lease (our heartbeat stalled past the lease). For a blob both may now
            # download; each writes its own partial and publishes atomically: duplicate work, not damage.
            log.warning(
                "lease %s was taken over (%s); %s", compromise.lock_file, compromise.reason, lost_means
            )

        return filelock.SoftFileLease(
            str(lease_path(path)),
            lease_duration=duration,
            on_compromise=lost,
            poll_interval=min(0.5, duration / 10),
        )
    return filelock.FileLock(str(path), mode=0o664)


def describe_holder(path: Path, mode: LockMode) -> str:
    """Who holds the lock at ``path`` as far as can be told (lease markers record pid and host)."""
    if mode is LockMode.LEASE:
        marker = lease_path(path)
        owner = filelock.SoftFileLease(str(marker)).owner
        if owner is None:
            return f"a process that left no readable owner record in {marker}"
        try:
            age = time.time() - marker.stat().st_mtime
        except OSError:
            return f"pid {owner.pid} on {owner.hostname} (the lease was just released)"
        return f"pid {owner.pid} on {owner.hostname}, lease renewed {age:.0f}s ago"
    return f"another process on this host (see `fuser -v {path}`)"


def _acquire(lock: filelock.BaseFileLock, path: Path, mode: LockMode, wait: float, what: str) -> None:
    """Acquire with a bounded wait, logging every ``_WAIT_LOG_INTERVAL`` seconds; LockTimeout at the end."""
    t0 = time.monotonic()
    while True:
        left = wait - (time.monotonic() - t0)
        try:
            lock.acquire(timeout=max(0.0, min(left, _WAIT_LOG_INTERVAL)))
            return
        except filelock.Timeout:
            waited = time.monotonic() - t0
            if waited >= wait:
                break
            log.info("still waiting for %s (%.0fs): held by %s", what, waited, describe_holder(path, mode))
    holder = describe_holder(path, mode)
    if mode is LockMode.LEASE:
        advice = (
            "its holder is alive and renewing the lease, so it is still downloading: wait for it, or raise "
            "VCACHE_LOCK_TIMEOUT. A dead holder's lease is taken over after VCACHE_LEASE_SECONDS without you "
            "doing anything"
        )
    else:
        advice = (
            "the kernel releases a flock when its holder exits, so a live process still holds it: wait for "
            "it, raise VCACHE_LOCK_TIMEOUT, or stop that process. On a shared filesystem set "
            "VCACHE_LOCK_MODE=lease"
        )
    raise LockTimeout(
        f"waited {time.monotonic() - t0:.0f}s for the {mode.value} lock on {what} ({path}); it is held by "
        f"{holder}; {advice}",
        path=str(path),
        holder=holder,
    )


@contextlib.contextmanager
def blob_lock(
    path: Path, *, timeout: float | None = None, what: str = "", lost: str = _BLOB_LEASE_LOST
) -> Iterator[bool]:
    """Hold the per-blob lock at huggingface_hub's ``path`` for the block; yields whether a lock is held.

    The mode (flock, lease or none) comes from :func:`lock_policy` for ``path``'s directory. Raises
    :class:`~vcache.errors.LockTimeout` after ``timeout`` seconds (default ``VCACHE_LOCK_TIMEOUT``). Yields
    ``False`` without touching the disk when locking is off or the cache is not writable, and ``False`` when
    the lock cannot be created; the caller then goes on unlocked, which can only cost duplicate work.

    Any other lock under ``.locks`` is taken the same way (``usage``'s use markers and per-repo gc lock);
    ``lost`` says what a lease taken over by another process means for it (logged as a warning).
    """
    wait = lock_timeout() if timeout is None else timeout
    what = what or path.name
    policy = lock_policy(path.parent)
    if policy.mode is LockMode.NONE or not is_writable_dir(path.parent):
        yield False
        return
    duration = lease_seconds()
    try:
        ensure_lock_dir(path.parent)
        lock = _make_lock(path, policy.mode, duration, lost)
        try:
            _acquire(lock, path, policy.mode, wait, what)
        except filelock.LeaseSettingsMismatch:
            # The holder runs with another VCACHE_LEASE_SECONDS; contend on its terms rather than fail.
            owner = filelock.SoftFileLease(str(lease_path(path))).owner
            if owner is None or owner.lease_duration is None:
                raise
            log.warning(
                "%s: the lease holder uses VCACHE_LEASE_SECONDS=%s, this process %s; set the same value on "
                "every node (vcache.env)",
                what,
                owner.lease_duration,
                duration,
            )
            lock = _make_lock(path, policy.mode, owner.lease_duration, lost)
            _acquire(lock, path, policy.mode, wait, what)
    except LockTimeout:
        raise
    except OSError as exc:
        log.debug("lock %s unavailable (%s); continuing without it", path, exc)
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            lock.release()


def lease_is_stale(marker: Path, lease: float, *, now: float | None = None) -> tuple[bool, str]:
    """Whether the holder of the lease ``marker`` is gone, and who it was (for messages).

    Gone means: it ran on this host and its process no longer exists (filelock's own test, PID and start time),
    or its marker has not been renewed for three lease lengths (its recorded length, else ``lease``; three leave
    room for clock skew between nodes: ``now`` is this node's wall clock, the mtime the file server's). A marker
    without a readable owner record is gone after three lease lengths too.
    """
    owner = filelock.SoftFileLease(str(marker)).owner
    try:
        age = (time.time() if now is None else now) - marker.stat().st_mtime
    except OSError:
        return False, ""
    if owner is None:
        return age > 3 * lease, f"{marker.name} (no readable owner, {age:.0f}s old)"
    who = f"{marker.parent.name}/{marker.name} (pid {owner.pid} on {owner.hostname}, renewed {age:.0f}s ago)"
    duration = owner.lease_duration or lease
    try:
        # filelock's own liveness test (PID and start time on this host); private, so optional.
        from filelock._identity import owner_is_stale

        if owner_is_stale(owner.pid, owner.hostname, owner.start):
            return True, who
    except ImportError:
        pass
    return age > 3 * duration, who


def lock_is_held(path: Path, *, remove_if_free: bool = False) -> bool:
    """Whether a live process holds the lock at ``path``, judged without waiting and without creating anything.

    ``<name>.lease`` is a lease marker (:func:`lease_is_stale` decides); any other file is a ``flock`` lock file,
    probed with a non-blocking ``flock`` of its own (the kernel drops a dead holder's flock). A file that is
    already gone is not held. With ``remove_if_free``, a file whose holder is gone is deleted (a flock file while
    the probe holds it: a process that opened it meanwhile finds the inode unlinked and makes a new one, as
    filelock does).
    """
    if path.suffix == ".lease":
        stale, _who = lease_is_stale(path, lease_seconds())
        if stale and remove_if_free:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return not stale and path.exists()
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        if remove_if_free:
            with contextlib.suppress(OSError):
                if os.path.samestat(os.lstat(path), os.fstat(fd)):
                    path.unlink()
        return False
    finally:
        os.close(fd)  # drops the probe's flock


def wait_for_other_writer(
    partial_dir: Path, etag: str, blob: Path, *, stale_after: float, timeout: float, what: str = ""
) -> bool:
    """Holding a blob's lock, wait while another process's partial of that blob is still being written.

    Under the lock no cooperating writer is active, so a partial touched less than ``stale_after`` seconds
    ago belongs to a writer that died moments ago (wait until it is stale, then the caller adopts and resumes
    it instead of starting again) or to one that takes no lock (``VCACHE_LOCK_MODE=none``, a lying ``flock``:
    wait for its blob rather than download it twice). Returns True when ``blob`` appeared. Gives up after
    ``timeout`` seconds, and the caller downloads anyway: this wait only saves work.
    """
    from vcache.partial import list_partials

    t0 = time.monotonic()
    announced = False
    while True:
        if blob.exists():
            return True
        now = time.time()
        live = [p for p in list_partials(partial_dir) if p.etag == etag and now - p.updated_at < stale_after]
        if not live:
            return False
        waited = time.monotonic() - t0
        if waited >= timeout:
            log.info("%s: gave up after %.0fs waiting for %s", what or etag, waited, live[0].path)
            return False
        if not announced:
            # A user who re-runs a pull right after stopping one sees why it pauses.
            log.info(
                "%s: %s was written %.0fs ago; waiting until it is %.0fs old (VCACHE_LEASE_SECONDS) to resume "
                "it, or for its writer to finish",
                what or etag,
                live[0].path,
                now - live[0].updated_at,
                stale_after,
            )
            announced = True
        time.sleep(min(0.25, stale_after / 8))


__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_LOCK_TIMEOUT",
    "UNTRUSTED_FLOCK_FILESYSTEMS",
    "LockMode",
    "LockPolicy",
    "blob_lock",
    "describe_holder",
    "ensure_lock_dir",
    "filesystem_type",
    "flock_trusted",
    "is_writable_dir",
    "lease_is_stale",
    "lease_path",
    "lease_seconds",
    "lock_is_held",
    "lock_policy",
    "lock_timeout",
    "mount_fs_type",
    "wait_for_other_writer",
]
