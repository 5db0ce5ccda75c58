"""One download per cache inside a ``torch.distributed`` job: :func:`pull`.

What this module owns: deciding which rank downloads for which cache, and telling the others, through the
c10d key-value store only. For each cache (one shared cache, or one node-local cache per node) the lowest rank
that sees it downloads and verifies with :func:`vcache.pull.pull`; the other ranks poll the store
with their own bounded timeout, then verify the same commit offline from the ledger (``local_files_only``) and
return its snapshot path. A failure on the downloader is stored under the call's key and raised on every waiter
as the same vcache error class.

Which ranks share a cache is found out, not assumed: every rank drops a marker file named by a token from rank
0 into ``<cache>/.locks/`` and reads which markers it can see (a shared filesystem shows all of them; a
node-local disk only its node's). ``shared_cache=True`` makes global rank 0 the only downloader;
``shared_cache=False`` elects the lowest rank per node (``VCACHE_NODE_ID``, else torchrun's ``GROUP_RANK``,
else ``SLURM_NODEID``, else the hostname).

What it must never do: call a collective (``barrier``, ``broadcast``, ...): an NCCL or gloo collective has its
own timeout, which a long download trips, and it would tie this helper to the job's backend. Every wait here
is a store poll with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcache import errors
from vcache.config import default_cache_dir, node_variable
from vcache.errors import LockTimeout, TransferError, UsageError, VcacheError
from vcache.locks import ensure_lock_dir

log = logging.getLogger(__name__)

#: Seconds a waiting rank waits for its downloader by default (a large checkpoint on a slow link takes hours).
DEFAULT_TIMEOUT = 3 * 3600.0
#: How often a waiting rank logs that it is still waiting.
_LOG_EVERY = 60.0

# Calls are numbered so that repeated calls in one job use fresh keys; every rank must make the same calls in
# the same order, as with any collective.
_calls = 0


@dataclass(frozen=True)
class Plan:
    """Who downloads for this rank's cache, and how that was decided."""

    rank: int
    leader: int
    members: tuple[int, ...]
    how: str

    @property
    def is_leader(self) -> bool:
        """True on the rank that downloads."""
        return self.rank == self.leader


def _poll(store: Any, key: str, timeout: float, waiting_for: str) -> bytes:
    """``store.get(key)`` once it exists; :class:`LockTimeout` after ``timeout`` seconds (never a collective)."""
    t0 = time.monotonic()
    last_log = t0
    delay = 0.005
    while not store.check([key]):
        now = time.monotonic()
        if now - t0 >= timeout:
            raise LockTimeout(
                f"waited {now - t0:.0f}s for {waiting_for}; the downloading rank may have died or the download "
                "is slower than the timeout: check its log, or pass a larger timeout= to vcache.distributed.pull",
                key=key,
            )
        if now - last_log >= _LOG_EVERY:
            log.info("still waiting (%.0fs) for %s", now - t0, waiting_for)
            last_log = now
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    value: bytes = store.get(key)
    return value


def _poll_all(store: Any, keys: Sequence[str], timeout: float, what: str) -> list[bytes]:
    deadline = time.monotonic() + timeout
    return [_poll(store, k, max(0.0, deadline - time.monotonic()), what) for k in keys]


def node_id() -> str:
    """This process's node: ``VCACHE_NODE_ID``, ``GROUP_RANK`` (torchrun), ``SLURM_NODEID``, else the hostname."""
    found = node_variable()
    if found is not None:
        return f"{found[0]}={found[1]}"
    return socket.gethostname()


def _cache_identity(cache_dir: Path) -> str:
    # Used only where no marker can be written (a read-only cache): device and inode are per host on NFS, so
    # the hostname keeps two nodes' "same" numbers apart; a read-only cache is then treated as node-local.
    try:
        st = os.stat(cache_dir)
        return f"{socket.gethostname()}:{st.st_dev}:{st.st_ino}"
    except OSError:
        return f"{socket.gethostname()}:missing:{cache_dir}"


def plan_downloads(
    store: Any,
    prefix: str,
    rank: int,
    world: int,
    cache_dir: Path,
    *,
    shared_cache: bool | None,
    timeout: float,
) -> Plan:
    """Decide which rank downloads for this rank's cache (see the module docstring); a store exchange only."""
    everyone = tuple(range(world))
    if shared_cache is True:
        return Plan(rank, 0, everyone, "shared cache (stated by the caller)")
    if shared_cache is False:
        me = node_id()
        store.set(f"{prefix}/node/{rank}", me)
        nodes = [
            v.decode()
            for v in _poll_all(store, [f"{prefix}/node/{r}" for r in everyone], timeout, "node ids")
        ]
        members = tuple(r for r in everyone if nodes[r] == me)
        return Plan(rank, members[0], members, f"node-local caches (stated by the caller; node {me})")
    if rank == 0:
        store.set(f"{prefix}/token", uuid.uuid4().hex)
    token = _poll(store, f"{prefix}/token", timeout, "rank 0 to start the cache rendezvous").decode()
    locks = cache_dir / ".locks"
    marker = locks / f"vcache-rendezvous-{token}-{rank}"
    try:
        ensure_lock_dir(locks)
        marker.touch()
        identity = "marker"
    except OSError:
        identity = _cache_identity(cache_dir)
    try:
        store.set(f"{prefix}/marked/{rank}", identity)
        marks = [
            v.decode()
            for v in _poll_all(
                store, [f"{prefix}/marked/{r}" for r in everyone], timeout, "every rank's cache marker"
            )
        ]
        if identity == "marker":
            members = tuple(
                r
                for r in everyone
                if marks[r] == "marker" and (locks / f"vcache-rendezvous-{token}-{r}").exists()
            )
        else:
            members = tuple(r for r in everyone if marks[r] == identity)
        store.set(f"{prefix}/seen/{rank}", "1")
        _poll_all(
            store, [f"{prefix}/seen/{r}" for r in everyone], timeout, "every rank to look at the markers"
        )
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()
    how = "shared cache" if len(members) == world else f"{len(members)} of {world} ranks share this cache"
    return Plan(rank, members[0], members, f"{how} (detected)")


def _raise_remote(payload: dict[str, Any], leader: int, repo_id: str) -> None:
    cls = getattr(errors, str(payload.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, VcacheError)):
        cls = TransferError
    raise cls(f"rank {leader}, which downloads {repo_id} for this cache, failed: {payload.get('message')}")


def pull(
    repo_id: str,
    *,
    shared_cache: bool | None = None,
    store: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    **pull_kwargs: Any,
) -> str:
    """Download and verify ``repo_id`` once per cache in an initialised process group; return the snapshot path.

    Call it on every rank (same arguments, same order as the job's other calls). One rank per cache downloads
    with :func:`vcache.pull.pull` (``pull_kwargs`` are its keyword arguments: ``revision``, ``cache_dir``,
    ``allow_patterns``, ``token``, ``endpoint``, ...; not ``local_dir``) and raises as ``snapshot_download``
    would; the others wait on the c10d ``store`` (default: the default process group's) for at most ``timeout``
    seconds, then verify the same commit offline from the ledger. ``shared_cache``: ``True`` one download for
    the whole job, ``False`` one per node, ``None`` detect from the filesystem.

    Raises :class:`~vcache.errors.UsageError` outside a process group, :class:`~vcache.errors.LockTimeout` when
    the downloader does not report in time, and on every rank the error class the downloader failed with.
    """
    global _calls
    import torch.distributed as dist

    from vcache.pull import pull as pull_snapshot
    from vcache.pull import raise_for_report

    if not (dist.is_available() and dist.is_initialized()):
        raise UsageError(
            "vcache.distributed.pull needs an initialised process group (torch.distributed.init_process_group); "
            "in a single process call vcache.snapshot_download"
        )
    if pull_kwargs.get("local_dir") is not None:
        raise UsageError(
            "vcache.distributed.pull fills the cache and returns the snapshot path; it takes no local_dir "
            "(copy from the returned path on one rank per node if you need one)"
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    store = store if store is not None else dist.distributed_c10d._get_default_store()
    _calls += 1
    prefix = f"vcache/pull/{_calls}"
    cache_dir = Path(pull_kwargs.get("cache_dir") or default_cache_dir())
    plan = plan_downloads(store, prefix, rank, world, cache_dir, shared_cache=shared_cache, timeout=timeout)
    done_key = f"{prefix}/done/{plan.leader}"
    log.debug("rank %d: %s; rank %d downloads %s", rank, plan.how, plan.leader, repo_id)
    if plan.is_leader:
        try:
            report = pull_snapshot(repo_id, **pull_kwargs)
            raise_for_report(report)
        except BaseException as exc:
            message = str(exc) or type(exc).__name__
            store.set(done_key, json.dumps({"ok": False, "type": type(exc).__name__, "message": message}))
            raise
        assert report.snapshot_path is not None
        store.set(done_key, json.dumps({"ok": True, "commit": report.commit, "path": report.snapshot_path}))
        return report.snapshot_path
    payload = json.loads(
        _poll(
            store,
            done_key,
            timeout,
            f"rank {plan.leader} to download {repo_id} ({plan.how})",
        ).decode()
    )
    if not payload.get("ok"):
        _raise_remote(payload, plan.leader, repo_id)
    offline = {
        k: v for k, v in pull_kwargs.items() if k not in ("revision", "local_files_only", "force_download")
    }
    # Verify exactly the commit the downloader fetched, even if the branch moved since.
    report = pull_snapshot(repo_id, revision=payload["commit"], local_files_only=True, **offline)
    raise_for_report(report)
    assert report.snapshot_path is not None
    return report.snapshot_path


__all__ = ["DEFAULT_TIMEOUT", "Plan", "node_id", "plan_downloads", "pull"]
