"""Who is using which revision of a cached repo, and when each revision was last used.

What this module owns: :func:`use` (registering a use: pull, verify, ``from_pretrained`` and any reader that
wraps itself in ``with vcache.use(...)``), :func:`live_uses` (who holds one now), the per-repo gc lock that
``lifecycle`` holds while it removes anything (:func:`gc_lock`), and the last-used record (:func:`touch_used`,
:func:`last_used`).

Layout (use markers live with the other locks, so the repo folder stays exactly huggingface_hub's)::

    <cache>/.locks/<repo_folder>/uses/<revision>+<id>.lock   one per registered use, flocked while in use
                                     <revision>+<id>.lease   (a heartbeat lease instead, in lease mode)
    <cache>/.locks/<repo_folder>/gc.lock (gc.lease)          held by gc / rm while they change the repo
    <cache>/<repo_folder>/.vcache/used/<commit>              an empty file; its mtime is the last use

A use marker is held through :func:`vcache.locks.blob_lock`, so it takes the lock mode the blob locks take
(``VCACHE_LOCK_MODE``, else by filesystem type): a ``flock`` the kernel drops when its holder dies, or a filelock
lease whose heartbeat keeps it fresh, so gc on one node respects a use held on another even where ``flock`` lies.
``<revision>`` is the revision as the user named it, percent-encoded (empty for the default branch); ``<id>`` is
unique to the use.

The protocol that keeps a use and a removal from overlapping:

* a user holds its marker first, then passes through the repo's gc lock (takes it and lets go at once), and only
  then reads refs, snapshots or blobs;
* gc and rm take the repo's gc lock, then list the live markers, and remove only what no live marker covers, all
  before they let go.

When the locks exclude (``flock`` on a local disk, leases anywhere), either the user passed the gc lock first —
its marker then existed before gc listed the markers, and gc leaves what it covers alone — or gc held the lock
first — the user then waits until gc is done and finds the repo as gc left it (a pull fetches again what was
removed, an offline load says it is missing). A registered reader never sees a file disappear under it.

What a marker covers: a commit hash covers that revision; anything else (a branch, a tag, the default) covers
every revision of the repo, since it may resolve to any of them or to one being pulled right now. While any use
of a repo is live no blob of it is deleted: a pull may be about to link one that a removed revision shared.

With ``VCACHE_LOCK_MODE=none`` nothing is recorded, so gc cannot tell what is in use. Readers that do not
register (huggingface_hub, plain transformers) are not protected. On a read-only cache nothing is written.

What it must never do: read or change blobs, snapshots or refs; hold the gc lock longer than it takes to pass;
decide what to remove (that is ``lifecycle``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from vcache.cache import CacheRepo
from vcache.config import REPO_TYPES, default_cache_dir
from vcache.errors import UsageError
from vcache.hub import COMMIT_RE, validate_repo_id, validate_revision
from vcache.locks import LockMode, blob_lock, describe_holder, is_writable_dir, lease_path, lock_is_held

USES_DIR = "uses"
GC_LOCK = "gc.lock"
_SEPARATOR = "+"  # quote(..., safe="") escapes it, so the last one in a name ends the revision


@dataclass(frozen=True)
class Use:
    """A registered use, as :func:`use` yields it; ``marker`` is None when nothing could be recorded (lock
    mode ``none``, a read-only cache)."""

    repo_id: str
    repo_type: str
    revision: str | None
    marker: Path | None


@dataclass(frozen=True)
class LiveUse:
    """A use some live process holds: the revision it named (None: the default branch), its marker, and who
    holds it as far as can be told."""

    revision: str | None
    marker: Path
    holder: str

    def covers(self, commit: str) -> bool:
        """Whether this use protects ``commit``: a commit use its own commit, any other use every commit."""
        return self.revision is None or not COMMIT_RE.fullmatch(self.revision) or self.revision == commit


def uses_dir(repo: CacheRepo) -> Path:
    """``<cache>/.locks/<repo_folder>/uses``: the repo's use markers."""
    return repo.locks_dir / USES_DIR


def gc_lock_path(repo: CacheRepo) -> Path:
    """``<cache>/.locks/<repo_folder>/gc.lock``: held while gc or rm changes the repo."""
    return repo.locks_dir / GC_LOCK


@contextlib.contextmanager
def gc_lock(repo: CacheRepo, *, timeout: float | None = None) -> Iterator[bool]:
    """Hold the repo's gc lock for the block (yields whether a lock is held; see :func:`~vcache.locks.blob_lock`).

    Raises :class:`~vcache.errors.LockTimeout` after ``timeout`` seconds (default ``VCACHE_LOCK_TIMEOUT``).
    """
    with blob_lock(
        gc_lock_path(repo),
        timeout=timeout,
        what=f"the gc lock of {repo.repo_id}",
        lost="continuing; a new use of this repo may start before gc is done",
    ) as held:
        yield held


@contextlib.contextmanager
def use(
    repo_id: str,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    repo_type: str = "model",
) -> Iterator[Use]:
    """Register that this process is using ``repo_id`` at ``revision`` for the block.

    While the block runs, ``vcache gc`` and ``vcache rm`` (on this node or any other sharing the cache) leave
    what the use covers alone: the revision when ``revision`` is a commit hash, every revision of the repo
    otherwise (a branch may move to a commit being pulled right now), and every blob of the repo. Entering
    waits while a gc or rm is changing the repo (at most ``VCACHE_LOCK_TIMEOUT``, then
    :class:`~vcache.errors.LockTimeout`). The revision's last-used time is recorded on entry and exit.

    ``vcache.pull``, ``vcache.verify`` and ``vcache.from_pretrained`` register their own use; wrap any other
    reader of the cache (plain transformers, a training loop that opens files later) in it::

        with vcache.use("org/name"):
            model = AutoModelForCausalLM.from_pretrained("org/name")

    Raises :class:`~vcache.errors.UsageError` for an invalid repo id, revision or repo type. Nothing is
    recorded (and the yielded :class:`Use` has no marker) where the cache is read-only, where the cache
    directory does not exist yet, and with ``VCACHE_LOCK_MODE=none``.
    """
    validate_repo_id(repo_id)
    if revision is not None:
        validate_revision(revision)
    if repo_type not in REPO_TYPES:
        raise UsageError(f"invalid repo type {repo_type!r}: expected one of {', '.join(REPO_TYPES)}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    repo = CacheRepo(root, repo_id, repo_type)
    name = f"{quote(revision or '', safe='')}{_SEPARATOR}{os.getpid()}-{secrets.token_hex(6)}.lock"
    marker = uses_dir(repo) / name
    # A cache that does not exist yet holds nothing to protect, and an error before the first download must
    # leave no trace of it (the pull creates the cache when it has something to write).
    holding = (
        blob_lock(
            marker, what=f"the use marker of {repo_id}", lost="continuing; gc may now treat this use as ended"
        )
        if root.is_dir()
        else contextlib.nullcontext(False)
    )
    with holding as held:
        try:
            if held:
                with gc_lock(repo):
                    pass  # the turnstile: wait while a gc or rm is changing the repo
            touch_used(repo, revision)
            recorded = (lease_path(marker) if lease_path(marker).exists() else marker) if held else None
            yield Use(repo_id, repo_type, revision, recorded)
        finally:
            touch_used(repo, revision)
            if held:
                with contextlib.suppress(OSError):
                    marker.unlink()  # the flock file (a lease marker goes when the lease is released)


def live_uses(repo: CacheRepo, *, clear_stale: bool = False) -> tuple[LiveUse, ...]:
    """The uses of ``repo`` that live processes hold, oldest marker name first.

    A marker whose holder is gone (its flock dropped, its lease not renewed for three lease lengths, or its
    process dead on this host) is not a use; with ``clear_stale`` it is deleted too. Nothing is created.
    """
    directory = uses_dir(repo)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return ()
    out: list[LiveUse] = []
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        if not dot or suffix not in ("lock", "lease") or _SEPARATOR not in stem:
            continue  # filelock's own temporary names, or anything else
        path = directory / name
        if not lock_is_held(path, remove_if_free=clear_stale):
            continue
        encoded = stem.rpartition(_SEPARATOR)[0]
        mode = LockMode.LEASE if suffix == "lease" else LockMode.FLOCK
        out.append(LiveUse(unquote(encoded) or None, path, describe_holder(path, mode)))
    return tuple(out)


def _used_commit(repo: CacheRepo, revision: str | None) -> str | None:
    if revision is not None and COMMIT_RE.fullmatch(revision):
        return revision
    return repo.read_ref(revision or "main")


def touch_used(repo: CacheRepo, revision: str | None) -> None:
    """Record now as the last use of the revision ``revision`` resolves to in the cache (best effort: nothing
    happens when it is not cached or the cache is read-only)."""
    commit = _used_commit(repo, revision)
    if (
        commit is None
        or not COMMIT_RE.fullmatch(commit)  # a ref file's content is not trusted to name a path
        or not repo.snapshot_dir(commit).is_dir()
        or not is_writable_dir(repo.state)
    ):
        return
    path = repo.used_dir / commit
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
        os.utime(path)


def last_used(repo: CacheRepo, commit: str) -> float | None:
    """When vcache last used ``commit`` (None when it never recorded a use)."""
    try:
        return (repo.used_dir / commit).stat().st_mtime
    except (OSError, ValueError):
        return None


__all__ = [
    "GC_LOCK",
    "USES_DIR",
    "LiveUse",
    "Use",
    "gc_lock",
    "gc_lock_path",
    "last_used",
    "live_uses",
    "touch_used",
    "use",
    "uses_dir",
]
