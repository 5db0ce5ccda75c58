"""Per-blob locks at huggingface_hub's own lock path — hints that save duplicate work, never correctness.

Two tools (or two vcache processes) taking the same ``<cache>/.locks/<repo_folder>/<etag>.lock`` do not fetch
the same blob at once. Waits are bounded and end in :class:`~vcache.errors.LockTimeout`. Where the lock
cannot even be created (a read-only cache), the caller proceeds without it: correctness rests on per-writer
partials, digest checks and atomic publish, never on this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import filelock

from vcache.config import env_float
from vcache.errors import LockTimeout

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 600.0


def lock_timeout() -> float:
    """Seconds to wait for a blob lock (``VCACHE_LOCK_TIMEOUT``, default 600)."""
    return env_float("VCACHE_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT)


@contextlib.contextmanager
def blob_lock(path: Path, *, timeout: float | None = None, what: str = "") -> Iterator[bool]:
    """Hold the per-blob lock for the duration of the block; yields whether a lock is actually held.

    Raises :class:`LockTimeout` after ``timeout`` seconds. A lock that cannot be created (read-only or
    permission-denied cache) yields ``False`` and the caller goes on unlocked.
    """
    wait = lock_timeout() if timeout is None else timeout
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(path), mode=0o664, timeout=wait)
        lock.acquire()
    except filelock.Timeout as exc:
        raise LockTimeout(
            f"waited {wait:.0f}s for the lock on {what or path.name} ({path}); another process is "
            "downloading it. If no process is, the lock is stale: remove it, or raise VCACHE_LOCK_TIMEOUT",
            path=str(path),
        ) from exc
    except OSError as exc:
        log.debug("lock %s unavailable (%s); continuing without it", path, exc)
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            lock.release()


def is_writable_dir(path: Path) -> bool:
    """True when ``path`` (or its nearest existing parent) accepts new files for this user."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return os.access(p, os.W_OK | os.X_OK)
