"""The cache after the download: what is cached (listing), removing revisions (``vcache rm``), and garbage
collection (``vcache gc``).

What this module owns: :func:`list_cache` (repos and their revisions with size on disk, file count, refs, last
verified and last used; quarantined files, partials and other tools' ``.incomplete`` files), :func:`plan_removal`
/ :func:`plan_gc` (what would go, and why) and :func:`run_plan` (doing it), :func:`remove_revision` (both at
once), and :func:`parse_size` / :func:`parse_duration` for their arguments.

**Listing reads metadata only**: directory listings, ``lstat`` and ``readlink``, refs, and vcache's small JSON
records (ledger records, quarantine reports, partial sidecars). It never opens a blob, so it stays fast on a
cache of thousands of files. Sizes are ``st_size`` of the blobs, each counted once per repo however many
revisions link it (a revision's own size counts every blob it links), as huggingface_hub's ``scan_cache_dir``
counts them.

**Removing a revision**, holding the repo's gc lock (see :mod:`vcache.usage`), only when no live use covers it,
in this order:

1. every ``refs/*`` that names the commit is deleted, so nothing resolves to the revision any more, and a ref
   never names a missing snapshot (huggingface_hub's ``scan_cache_dir`` would report it);
2. ``snapshots/<commit>`` is renamed into ``.vcache/trash/`` — one atomic rename, so a reader sees the whole
   snapshot or none of it, never a half-deleted one — and ``trees/<commit>.json``, the ledger's snapshot record
   and the last-used record are deleted;
3. when no use of the repo is live, each blob the removed snapshot linked that no remaining snapshot links is
   deleted while holding that blob's lock (a blob whose lock is held is being written: it stays), with its
   ledger record and lock files;
4. the trash is deleted, and a repo folder with nothing left in it is removed.

**Why a pull racing gc ends with a verified snapshot or a clear error, never a broken symlink.** A pull
registers its use before it reads anything, and passes through the repo's gc lock first (waiting while gc holds
it); gc decides and removes while holding that lock. So either gc saw the pull's marker — then it deletes no blob
of the repo and no revision the marker covers (a branch covers them all, including a commit being pulled) — or
the pull waited until gc was done and then finds each blob either there or absent, never going away under it: it
links what is there and fetches what is not, and publishing and linking happen under the blob's lock, which gc
would have to hold to delete it. Blobs are deleted only after the snapshots that linked them are gone and only
when no remaining snapshot links them, so no link is left pointing at nothing. A wait that runs out is a
:class:`~vcache.errors.LockTimeout` naming the holder.

huggingface_hub's own readers and writers do not register uses. For them gc deletes a blob only while holding
its lock (huggingface_hub's lock file), and leaves orphaned blobs and ``.incomplete`` files younger than a grace
period (a download in progress links its blob just after writing it); a reader that does not register can still
find a revision gone (wrap it in ``vcache.use``).

What it must never do: remove a revision a live use covers or a blob of a repo in use, read blob bytes, delete a
quarantined file unless asked, delete a partial a live writer may still write, or touch anything outside the
cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcache.cache import CacheRepo, iter_repo_folders, translate_os_error
from vcache.errors import LockTimeout, UsageError
from vcache.hub import COMMIT_RE, validate_repo_id, validate_revision
from vcache.ledger import Ledger
from vcache.locks import LockMode, blob_lock, lease_path, lease_seconds, lock_policy
from vcache.partial import list_partials, remove_stale
from vcache.quarantine import QuarantineEntry, list_entries
from vcache.quarantine import purge as purge_quarantine_entry
from vcache.report import human_bytes, verdict_of
from vcache.usage import LiveUse, gc_lock, last_used, live_uses

#: Orphaned blobs and ``.incomplete`` files younger than this are kept by default: another tool may be about to
#: link the blob it just wrote, or still be writing.
DEFAULT_GRACE = 3600.0

_KEY_PREFIX = "path:"  # a snapshot entry that is not a link into blobs/ (a copy) is keyed by its path


# -- parsing ------------------------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")
_DURATION_UNITS = {
    "": 1,
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
}


def parse_size(text: str) -> int:
    """Bytes from ``500MiB``, ``10G``, ``1.5TB``, ``0``: ``K/M/G/T`` and ``KiB…TiB`` are powers of 1024 (as ``du``
    and ``df -h`` print them), ``KB…TB`` powers of 1000, no unit means bytes. Raises :class:`UsageError`."""
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise UsageError(
            f"invalid size {text!r}: expected a number with an optional unit, e.g. 500MiB, 10G, 1.5TB or 0"
        )
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    """Seconds from ``30d``, ``12h``, ``1d12h``, ``90m``, ``45s``, ``2w`` (no unit: seconds). Raises
    :class:`UsageError`."""
    stripped = text.strip()
    parts = _DURATION_PART.findall(stripped)
    if not stripped or "".join(n + u for n, u in parts) != stripped.replace(" ", ""):
        parts = []
    if not parts or any(u.lower() not in _DURATION_UNITS for _n, u in parts):
        raise UsageError(f"invalid duration {text!r}: expected e.g. 30d, 12h, 1d12h, 90m, 45s or 2w")
    return sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)


# -- listing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevisionInfo:
    """One cached revision (a ``snapshots/<commit>`` folder).

    ``size_on_disk`` counts each blob the snapshot links once; ``nb_files`` is the number of files in the
    snapshot. ``last_used`` is vcache's record of the last use (``vcache.use``, pull, verify, ``from_pretrained``),
    else the latest access or modification time of its blobs and folder. ``verdict`` is ``ok`` or ``warn`` when
    the ledger vouches for every file (``last_verified`` is then when the least recently verified of them was
    hashed), else ``unverified`` (a file vcache never verified, or changed since: ``vcache verify`` checks it).
    ``blobs`` names what the snapshot links: blob names, or ``path:<path>`` for an entry that is not a link
    into ``blobs/``.
    """

    commit: str
    refs: tuple[str, ...]
    size_on_disk: int
    nb_files: int
    last_used: float | None
    last_verified: float | None
    verdict: str
    verified_files: int
    path: Path
    blobs: frozenset[str] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The ``vcache ls --json`` form."""
        return {
            "commit": self.commit,
            "refs": list(self.refs),
            "size_on_disk": self.size_on_disk,
            "nb_files": self.nb_files,
            "last_used": self.last_used,
            "last_verified": self.last_verified,
            "verdict": self.verdict,
            "verified_files": self.verified_files,
            "snapshot_path": str(self.path),
        }


@dataclass(frozen=True)
class QuarantinedFile:
    """A file of the repo in the quarantine (``vcache quarantine show ID``)."""

    id: str
    path: str
    size: int | None
    quarantined_at: float

    def to_json(self) -> dict[str, Any]:
        """The ``vcache ls --json`` form."""
        return {"id": self.id, "path": self.path, "size": self.size, "quarantined_at": self.quarantined_at}


@dataclass(frozen=True)
class PartialFile:
    """An unfinished vcache download. ``live`` when it was written less than a lease length ago (its writer may be
    running); otherwise a later pull resumes it, or gc removes it."""

    path: Path
    etag: str
    repo_path: str | None
    size: int | None
    completed: int
    on_disk: int
    updated_at: float
    live: bool

    def to_json(self) -> dict[str, Any]:
        """The ``vcache ls --json`` form."""
        return {
            "path": str(self.path),
            "file": self.repo_path,
            "etag": self.etag,
            "size": self.size,
            "completed": self.completed,
            "on_disk": self.on_disk,
            "updated_at": self.updated_at or None,
            "live": self.live,
        }


@dataclass(frozen=True)
class IncompleteFile:
    """Another tool's unfinished download (``blobs/<etag>.incomplete``, huggingface_hub's)."""

    path: Path
    size: int
    modified: float

    def to_json(self) -> dict[str, Any]:
        """The ``vcache ls --json`` form."""
        return {"path": str(self.path), "size": self.size, "modified": self.modified}


@dataclass(frozen=True)
class RepoInfo:
    """One repo folder of the cache, whichever tool wrote it.

    ``size_on_disk`` counts every blob its revisions link once; ``nb_files`` is how many distinct blobs that
    is. ``orphaned_blobs`` are blobs no snapshot links (``orphaned_size`` bytes, not in ``size_on_disk``);
    ``orphaned_records`` are ledger records (relative to ``.vcache/ledger``) of blobs or snapshots that are
    gone. ``uses`` are the uses live processes hold right now.
    """

    @property
    def in_use(self) -> tuple[str, ...]:
        """Who holds a use of the repo right now (empty: nobody registered)."""
        return tuple(u.holder for u in self.uses)

    repo_id: str
    repo_type: str
    path: Path
    revisions: tuple[RevisionInfo, ...]
    size_on_disk: int
    nb_files: int
    last_used: float | None
    quarantined: tuple[QuarantinedFile, ...]
    partials: tuple[PartialFile, ...]
    incomplete: tuple[IncompleteFile, ...]
    orphaned_blobs: tuple[str, ...]
    orphaned_size: int
    orphaned_records: tuple[str, ...]
    uses: tuple[LiveUse, ...]
    blob_sizes: Mapping[str, int] = field(repr=False, compare=False)
    blob_changed: Mapping[str, float] = field(repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The ``vcache ls --json`` form."""
        return {
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "path": str(self.path),
            "size_on_disk": self.size_on_disk,
            "nb_files": self.nb_files,
            "last_used": self.last_used,
            "in_use": [{"revision": u.revision, "holder": u.holder} for u in self.uses],
            "revisions": [r.to_json() for r in self.revisions],
            "quarantined": [q.to_json() for q in self.quarantined],
            "partials": [p.to_json() for p in self.partials],
            "incomplete": [i.to_json() for i in self.incomplete],
            "orphaned_blobs": {"count": len(self.orphaned_blobs), "size": self.orphaned_size},
        }


@dataclass(frozen=True)
class CacheListing:
    """Every repo of a cache (:func:`list_cache`)."""

    cache_dir: Path
    repos: tuple[RepoInfo, ...]

    @property
    def size_on_disk(self) -> int:
        """The repos' sizes added up (blobs in different repos are different files)."""
        return sum(r.size_on_disk for r in self.repos)

    def to_json(self) -> dict[str, Any]:
        """The ``vcache ls --json`` document (its schema is in the README)."""
        return {
            "cache_dir": str(self.cache_dir),
            "size_on_disk": self.size_on_disk,
            "repos": [r.to_json() for r in self.repos],
        }


def list_cache(
    cache_dir: str | os.PathLike[str], repo_id: str | None = None, *, repo_type: str | None = None
) -> CacheListing:
    """What the cache at ``cache_dir`` holds: every repo any tool wrote (or only ``repo_id``, of any type unless
    ``repo_type`` is given), from metadata only. A cache that does not exist is empty."""
    root = Path(cache_dir)
    quarantined: dict[tuple[str, str], list[QuarantineEntry]] = {}
    for entry in list_entries(root):
        quarantined.setdefault((entry.repo_type, entry.repo_id), []).append(entry)
    repos = tuple(
        _list_repo(CacheRepo(root, rid, rtype), quarantined.get((rtype, rid), []), time.time())
        for rtype, rid, _folder in iter_repo_folders(root)
        if (repo_id is None or rid == repo_id) and (repo_type is None or rtype == repo_type)
    )
    return CacheListing(root, repos)


def _blob_stats(repo: CacheRepo) -> tuple[dict[str, os.stat_result], list[IncompleteFile]]:
    stats: dict[str, os.stat_result] = {}
    incomplete: list[IncompleteFile] = []
    try:
        entries = list(os.scandir(repo.blobs))
    except OSError:
        return stats, incomplete
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if entry.name.endswith(".incomplete"):
            incomplete.append(IncompleteFile(Path(entry.path), st.st_size, st.st_mtime))
        else:
            stats[entry.name] = st
    return stats, sorted(incomplete, key=lambda f: f.path.name)


def _read_refs(repo: CacheRepo) -> dict[str, str]:
    """``{ref name: commit}`` for every file under ``refs/`` (``refs/pr/1`` nests, as in huggingface_hub)."""
    refs_dir = repo.root / "refs"
    out: dict[str, str] = {}
    for dirpath, _dirs, names in os.walk(refs_dir):
        for name in names:
            path = Path(dirpath) / name
            with contextlib.suppress(OSError, UnicodeDecodeError):
                out[path.relative_to(refs_dir).as_posix()] = path.read_text().strip()
    return out


def _snapshot_entries(repo: CacheRepo, commit: str) -> list[tuple[str, str]]:
    """``(path in snapshot, key)`` for every file of ``snapshots/<commit>``: the key is the blob name for a link
    into ``blobs/`` (first hop, as huggingface_hub resolves it), else ``path:<absolute first hop>``."""
    snap = os.path.abspath(repo.snapshot_dir(commit))
    blobs = os.path.normpath(os.path.abspath(repo.blobs))
    out: list[tuple[str, str]] = []
    for dirpath, _dirs, names in os.walk(snap):
        for name in names:
            full = os.path.join(dirpath, name)
            try:
                target = os.readlink(full)
            except OSError:
                hop = full  # a copy (symlinks disabled), or unreadable
            else:
                hop = os.path.normpath(os.path.join(dirpath, target))
            rel = os.path.relpath(full, snap).replace(os.sep, "/")
            key = os.path.basename(hop) if os.path.dirname(hop) == blobs else _KEY_PREFIX + hop
            out.append((rel, key))
    return out


def _linked_keys(repo: CacheRepo) -> set[str]:
    """Everything the repo's snapshots link now."""
    return {key for commit in repo.snapshots() for _rel, key in _snapshot_entries(repo, commit)}


def _key_stat(repo: CacheRepo, key: str, blobs: Mapping[str, os.stat_result]) -> os.stat_result | None:
    if not key.startswith(_KEY_PREFIX):
        return blobs.get(key)
    try:
        return os.stat(key[len(_KEY_PREFIX) :])
    except OSError:
        return None


def _list_repo(
    repo: CacheRepo,
    quarantined: Sequence[QuarantineEntry],
    now: float,
    uses: tuple[LiveUse, ...] | None = None,
) -> RepoInfo:
    blob_stats, incomplete = _blob_stats(repo)
    commits_of: dict[str, list[str]] = {}
    for ref, commit in _read_refs(repo).items():
        commits_of.setdefault(commit, []).append(ref)
    ledger = Ledger(repo.ledger_dir)
    verdicts: dict[str, tuple[float, str] | None] = {}
    sizes: dict[str, int] = {}
    changed: dict[str, float] = {}
    revisions: list[RevisionInfo] = []
    for commit in repo.snapshots():
        entries = _snapshot_entries(repo, commit)
        keys = frozenset(key for _rel, key in entries)
        times: list[float] = []
        for key in keys:
            st = _key_stat(repo, key, blob_stats)
            if st is not None:
                sizes[key] = st.st_size
                times.append(max(st.st_atime, st.st_mtime))
        with contextlib.suppress(OSError):
            times.append(repo.snapshot_dir(commit).stat().st_mtime)
        verified: list[tuple[float, str]] = []
        for _rel, key in entries:
            if key not in verdicts:
                verdicts[key] = _verification(repo, ledger, key)
            known = verdicts[key]
            if known is not None:
                verified.append(known)
        complete = bool(entries) and len(verified) == len(entries)
        verdict = "unverified"
        if complete:
            verdict = "warn" if any(v == "warn" for _t, v in verified) else "ok"
        revisions.append(
            RevisionInfo(
                commit=commit,
                refs=tuple(sorted(commits_of.get(commit, []))),
                size_on_disk=sum(sizes.get(k, 0) for k in keys),
                nb_files=len(entries),
                last_used=_last_use(repo, commit, times),
                last_verified=min(t for t, _v in verified) if complete else None,
                verdict=verdict,
                verified_files=len(verified),
                path=repo.snapshot_dir(commit),
                blobs=keys,
            )
        )
    linked = set().union(*(r.blobs for r in revisions)) if revisions else set()
    orphans = sorted(name for name in blob_stats if name not in linked)
    for name in orphans:
        sizes[name] = blob_stats[name].st_size
    for name, st in blob_stats.items():
        changed[name] = max(st.st_mtime, st.st_ctime)  # ctime: when it was renamed into blobs/
    stale_after = lease_seconds()
    partials = tuple(
        PartialFile(
            path=p.path,
            etag=p.etag,
            repo_path=p.repo_path,
            size=p.size,
            completed=p.completed,
            on_disk=_size_of(p.data_path),
            updated_at=p.updated_at,
            live=now - p.updated_at < stale_after,
        )
        for p in list_partials(repo.partials)
    )
    return RepoInfo(
        repo_id=repo.repo_id,
        repo_type=repo.repo_type,
        path=repo.root,
        revisions=tuple(revisions),
        size_on_disk=sum(sizes[k] for k in linked if k in sizes),
        nb_files=len(linked),
        last_used=max((r.last_used for r in revisions if r.last_used is not None), default=None),
        quarantined=tuple(QuarantinedFile(e.id, e.path, e.size, e.quarantined_at) for e in quarantined),
        partials=partials,
        incomplete=tuple(incomplete),
        orphaned_blobs=tuple(orphans),
        orphaned_size=sum(blob_stats[name].st_size for name in orphans),
        orphaned_records=_orphaned_records(repo, set(blob_stats), set(commits_of) | set(repo.snapshots())),
        uses=live_uses(repo) if uses is None else uses,
        blob_sizes=sizes,
        blob_changed=changed,
    )


def _last_use(repo: CacheRepo, commit: str, fallback: Sequence[float]) -> float | None:
    """vcache's record of the last use, else the latest access or modification time seen."""
    recorded = last_used(repo, commit)
    return recorded if recorded is not None else max(fallback, default=None)


def _verification(repo: CacheRepo, ledger: Ledger, key: str) -> tuple[float, str] | None:
    """``(verified_at, "ok"|"warn")`` when the ledger vouches for this blob as it is now, else None."""
    if key.startswith(_KEY_PREFIX):
        return None
    try:
        rec = ledger.lookup(key, repo.blob_path(key))
    except (OSError, ValueError):
        return None
    if rec is None:
        return None
    verdict = verdict_of(rec.findings).value
    return (rec.verified_at, verdict) if verdict in ("ok", "warn") else None


def _orphaned_records(repo: CacheRepo, blobs: set[str], commits: set[str]) -> tuple[str, ...]:
    """Ledger records (relative to ``.vcache/ledger``) whose blob or snapshot is gone."""
    out: list[str] = []
    directory = repo.ledger_dir
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json") and name[: -len(".json")] not in blobs:
                out.append(name)
    snapshots = set(repo.snapshots())
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(directory / "snapshots")):
            if name.endswith(".json") and name[: -len(".json")] not in snapshots:
                out.append(f"snapshots/{name}")
    prefixes = {c[:12] for c in snapshots}
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(directory / "models")):
            if name.endswith(".json") and name.split("-", 1)[0] not in prefixes:
                out.append(f"models/{name}")
    return tuple(out)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- plans --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """One thing removed (or, in a plan, to be removed).

    ``kind``: ``revision`` (``name`` is the commit; ``detail`` its refs and why), ``blob`` (the blob name),
    ``ledger`` (a record, relative to ``.vcache/ledger``), ``partial`` (a vcache partial's folder name),
    ``incomplete`` (another tool's ``.incomplete`` file), ``quarantine`` (an entry id), ``repo`` (the whole
    folder, once nothing was left in it). ``size`` is the bytes it frees.
    """

    kind: str
    repo_id: str
    repo_type: str
    name: str
    size: int = 0
    detail: str = ""


@dataclass(frozen=True)
class Skip:
    """Something kept although it was asked for or eligible, and why (``kind`` as in :class:`Removal`)."""

    kind: str
    repo_id: str
    repo_type: str
    name: str
    reason: str


@dataclass(frozen=True)
class Cleanup:
    """What besides the chosen revisions is removed in a repo.

    ``orphans``: blobs no snapshot links (changed at least ``grace`` seconds ago) and orphaned ledger records;
    ``partials``: vcache partials nobody wrote for a lease length (``partial``'s own rule for a writer that is
    gone; kept while the repo is in use, since its pull may resume them); ``incomplete``: other tools' ``.incomplete``
    files untouched for ``grace`` seconds; ``quarantine_older_than``: quarantine entries at least that old
    (None keeps them all).
    """

    orphans: bool = False
    partials: bool = False
    incomplete: bool = False
    quarantine_older_than: float | None = None
    grace: float = DEFAULT_GRACE


@dataclass(frozen=True)
class RepoTarget:
    """The revisions to remove from one repo, and its cleanup."""

    repo_id: str
    repo_type: str
    commits: frozenset[str]
    cleanup: Cleanup
    reasons: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Plan:
    """What :func:`run_plan` would remove (``removals``) and keep (``skipped``), judged now; :func:`run_plan`
    decides again, holding each repo's gc lock, before removing anything."""

    cache_dir: Path
    targets: tuple[RepoTarget, ...]
    removals: tuple[Removal, ...]
    skipped: tuple[Skip, ...]
    lock_mode: LockMode

    @property
    def freed(self) -> int:
        """Bytes the removals would free."""
        return sum(r.size for r in self.removals)


@dataclass(frozen=True)
class CleanupReport:
    """What :func:`run_plan` removed and kept."""

    removed: tuple[Removal, ...]
    skipped: tuple[Skip, ...]

    @property
    def freed(self) -> int:
        """Bytes freed."""
        return sum(r.size for r in self.removed)


def _decide(
    info: RepoInfo, target: RepoTarget, uses: Sequence[LiveUse], now: float
) -> tuple[list[Removal], list[Skip]]:
    """The one place that decides what goes from one repo, given its listing and its live uses."""
    rid, rtype = info.repo_id, info.repo_type
    removals: list[Removal] = []
    skips: list[Skip] = []
    removed: set[str] = set()
    for rev in info.revisions:
        if rev.commit not in target.commits:
            continue
        holders = [u.holder for u in uses if u.covers(rev.commit)]
        if holders:
            skips.append(Skip("revision", rid, rtype, rev.commit, f"in use by {holders[0]}"))
            continue
        why = ", ".join(filter(None, [", ".join(rev.refs), target.reasons.get(rev.commit, "")]))
        removals.append(Removal("revision", rid, rtype, rev.commit, 0, why))
        removed.add(rev.commit)
    still_linked: set[str] = set()
    for rev in info.revisions:
        if rev.commit not in removed:
            still_linked |= rev.blobs
    freed = {
        key
        for rev in info.revisions
        if rev.commit in removed
        for key in rev.blobs
        if key not in still_linked and not key.startswith(_KEY_PREFIX)
    }
    cleanup = target.cleanup
    orphans = set()
    if cleanup.orphans:
        orphans = {b for b in info.orphaned_blobs if now - info.blob_changed.get(b, now) >= cleanup.grace}
    blobs = sorted((freed | orphans) & set(info.blob_changed))
    if uses and blobs:
        skips.append(
            Skip(
                "blob",
                rid,
                rtype,
                f"{len(blobs)} blob(s)",
                f"kept while the repo is in use by {uses[0].holder}",
            )
        )
    elif blobs:
        removals.extend(Removal("blob", rid, rtype, b, info.blob_sizes.get(b, 0)) for b in blobs)
    if cleanup.orphans and not uses:
        removals.extend(Removal("ledger", rid, rtype, name) for name in info.orphaned_records)
    if cleanup.partials and not uses:  # a pull of the repo in progress may be about to resume one
        for p in info.partials:
            if not p.live:
                what = p.repo_path or p.etag
                removals.append(Removal("partial", rid, rtype, p.path.name, p.on_disk, f"of {what}"))
    if cleanup.incomplete:
        for f in info.incomplete:
            if now - f.modified >= cleanup.grace:
                removals.append(Removal("incomplete", rid, rtype, f.path.name, f.size))
    if cleanup.quarantine_older_than is not None:
        for q in info.quarantined:
            if now - q.quarantined_at >= cleanup.quarantine_older_than:
                removals.append(Removal("quarantine", rid, rtype, q.id, q.size or 0, q.path))
    return removals, skips


def _plan(cache_dir: Path, listing: CacheListing, targets: Sequence[RepoTarget], now: float) -> Plan:
    by_repo = {(r.repo_type, r.repo_id): r for r in listing.repos}
    removals: list[Removal] = []
    skips: list[Skip] = []
    for target in targets:
        info = by_repo.get((target.repo_type, target.repo_id))
        if info is None:
            continue
        r, s = _decide(info, target, info.uses, now)
        removals.extend(r)
        skips.extend(s)
    return Plan(
        cache_dir, tuple(targets), tuple(removals), tuple(skips), lock_policy(cache_dir / ".locks").mode
    )


def _resolve_commits(info: RepoInfo, revision: str) -> set[str]:
    """The cached commits ``revision`` names: a commit, a unique prefix of one (as ``ls`` prints them), or a ref."""
    commits = [r.commit for r in info.revisions]
    if COMMIT_RE.fullmatch(revision):
        return {revision} if revision in commits else set()
    by_ref = {r.commit for r in info.revisions if revision in r.refs}
    if by_ref:
        return by_ref
    if re.fullmatch(r"[0-9a-f]{4,39}", revision):
        matches = [c for c in commits if c.startswith(revision)]
        if len(matches) > 1:
            raise UsageError(
                f"{revision!r} is the start of {len(matches)} cached commits of {info.repo_id}; give more digits"
            )
        return set(matches)
    return set()


def plan_removal(
    cache_dir: str | os.PathLike[str],
    repo_id: str,
    revision: str | None = None,
    *,
    repo_type: str = "model",
    now: float | None = None,
) -> Plan:
    """What ``vcache rm REPO_ID[@REVISION]`` would remove: the revision (a commit, a commit prefix of at least 4
    digits, or a ref such as ``main``), or with ``revision=None`` every revision of the repo with its orphaned
    blobs and records, its stale partials and ``.incomplete`` files (the quarantine stays). Blobs another revision
    still links stay. Raises :class:`UsageError` when the repo or revision is not in the cache."""
    validate_repo_id(repo_id)
    if revision is not None:
        validate_revision(revision)
    root = Path(cache_dir)
    listing = list_cache(root, repo_id, repo_type=repo_type)
    if not listing.repos:
        raise UsageError(f"{repo_id} ({repo_type}) is not in the cache at {root}; see `vcache ls`")
    (info,) = listing.repos
    if revision is None:
        commits = {r.commit for r in info.revisions}
        cleanup = Cleanup(orphans=True, partials=True, incomplete=True, grace=0.0)
    else:
        commits = _resolve_commits(info, revision)
        cleanup = Cleanup()
        if not commits:
            cached = ", ".join(f"{r.commit[:12]} ({', '.join(r.refs) or 'no ref'})" for r in info.revisions)
            raise UsageError(
                f"{repo_id}@{revision} is not in the cache at {root}; cached revisions: {cached or 'none'}"
            )
    target = RepoTarget(repo_id, repo_type, frozenset(commits), cleanup)
    return _plan(root, listing, [target], time.time() if now is None else now)


def plan_gc(
    cache_dir: str | os.PathLike[str],
    *,
    max_size: int | None = None,
    older_than: float | None = None,
    purge_quarantine: bool = False,
    grace: float = DEFAULT_GRACE,
    now: float | None = None,
) -> Plan:
    """What ``vcache gc`` would remove.

    Revisions not used for ``older_than`` seconds go; then, while the repos' total size (as ``ls`` counts it) is
    above ``max_size`` bytes, the least recently used revision goes, counting what it frees (blobs no other
    revision of its repo links). A repo that a live process uses is skipped whole. Everywhere: partials of
    writers gone for a lease length, ``.incomplete`` files and orphaned blobs unchanged for ``grace`` seconds,
    orphaned ledger records; the quarantine only with ``purge_quarantine``.
    """
    root = Path(cache_dir)
    at = time.time() if now is None else now
    listing = list_cache(root)
    cleanup = Cleanup(
        orphans=True,
        partials=True,
        incomplete=True,
        quarantine_older_than=0.0 if purge_quarantine else None,
        grace=grace,
    )
    chosen: dict[tuple[str, str], dict[str, str]] = {(r.repo_type, r.repo_id): {} for r in listing.repos}
    candidates = sorted(
        (
            (rev.last_used or 0.0, repo, rev)
            for repo in listing.repos
            if not repo.uses
            for rev in repo.revisions
        ),
        key=lambda c: (c[0], c[1].repo_id, c[2].commit),
    )
    if older_than is not None:
        for used, repo, rev in candidates:
            if at - used >= older_than:
                chosen[(repo.repo_type, repo.repo_id)][rev.commit] = f"not used for {_ago(at - used)}"
    if max_size is not None:
        total = listing.size_on_disk - sum(
            _freed_by(repo, chosen[(repo.repo_type, repo.repo_id)]) for repo in listing.repos
        )
        for used, repo, rev in candidates:
            if total <= max_size:
                break
            picked = chosen[(repo.repo_type, repo.repo_id)]
            if rev.commit in picked:
                continue
            before = _freed_by(repo, picked)
            picked[rev.commit] = (
                f"least recently used (last {_ago(at - used)} ago), over {human_bytes(max_size)}"
            )
            total -= _freed_by(repo, picked) - before
    targets = []
    for r in listing.repos:
        picked = chosen[(r.repo_type, r.repo_id)]
        targets.append(RepoTarget(r.repo_id, r.repo_type, frozenset(picked), cleanup, picked))
    plan = _plan(root, listing, targets, at)
    in_use = tuple(
        Skip(
            "repo",
            r.repo_id,
            r.repo_type,
            r.path.name,
            f"in use by {r.in_use[0]}; none of its revisions removed",
        )
        for r in listing.repos
        if r.uses and r.revisions
    )
    return Plan(plan.cache_dir, plan.targets, plan.removals, in_use + plan.skipped, plan.lock_mode)


def _freed_by(repo: RepoInfo, commits: Collection[str]) -> int:
    """Bytes removing ``commits`` from ``repo`` frees: blobs they link that no other revision links."""
    gone: set[str] = set()
    kept: set[str] = set()
    for rev in repo.revisions:
        (gone if rev.commit in commits else kept).update(rev.blobs)
    return sum(repo.blob_sizes.get(k, 0) for k in gone - kept if not k.startswith(_KEY_PREFIX))


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


# -- doing it -----------------------------------------------------------------------------------------------------


def run_plan(plan: Plan) -> CleanupReport:
    """Remove what ``plan`` chose, repo by repo, each holding its gc lock and deciding again first (a use that
    started since the plan is respected; what is already gone is skipped silently). Returns what was removed and
    what was kept, and why."""
    removed: list[Removal] = []
    skipped: list[Skip] = []
    for target in plan.targets:
        try:
            r, s = _run_target(plan.cache_dir, target)
        except OSError as exc:  # EACCES, EROFS: say so plainly (a LockTimeout passes through)
            translated = translate_os_error(exc, f"removing from {target.repo_id} in {plan.cache_dir}")
            if translated is exc:
                raise
            raise translated from exc
        removed.extend(r)
        skipped.extend(s)
    return CleanupReport(tuple(removed), tuple(skipped))


def remove_revision(
    cache_dir: str | os.PathLike[str],
    repo_id: str,
    revision: str | None = None,
    *,
    repo_type: str = "model",
    dry_run: bool = False,
) -> CleanupReport:
    """Remove ``repo_id@revision`` from the cache (every revision with ``revision=None``), keeping blobs other
    revisions link, revisions in use (skipped and said so) and the quarantine; see :func:`plan_removal`. With
    ``dry_run`` nothing is removed and the report lists what would have been."""
    plan = plan_removal(cache_dir, repo_id, revision, repo_type=repo_type)
    if dry_run:
        return CleanupReport(plan.removals, plan.skipped)
    return run_plan(plan)


def _run_target(cache_dir: Path, target: RepoTarget) -> tuple[list[Removal], list[Skip]]:
    repo = CacheRepo(cache_dir, target.repo_id, target.repo_type)
    if not repo.root.is_dir():
        return [], []
    with gc_lock(repo):
        _empty_trash(repo)  # left by a gc that died mid-way
        uses = live_uses(repo, clear_stale=True)
        quarantined = [e for e in list_entries(cache_dir) if _same_repo(e, repo)]
        info = _list_repo(repo, quarantined, time.time(), uses)
        removals, skips = _decide(info, target, uses, time.time())
        done: list[Removal] = []
        refs = _read_refs(repo)
        for r in removals:
            if r.kind == "revision" and _remove_snapshot(repo, r.name, refs):
                done.append(r)
        linked = _linked_keys(repo)
        for r in removals:
            if r.kind == "blob":
                outcome = _remove_blob(repo, r.name, linked)
                if outcome is None:
                    done.append(r)
                else:
                    skips.append(Skip("blob", r.repo_id, r.repo_type, r.name, outcome))
            elif r.kind == "ledger":
                with contextlib.suppress(FileNotFoundError):
                    (repo.ledger_dir / r.name).unlink()
                    done.append(r)
            elif r.kind == "incomplete":
                outcome = _remove_incomplete(repo, r.name, target.cleanup.grace)
                if outcome is None:
                    done.append(r)
            elif r.kind == "quarantine":
                with contextlib.suppress(UsageError):
                    purge_quarantine_entry(cache_dir, r.name)
                    done.append(r)
        if any(r.kind == "partial" for r in removals):
            # partial.py's own rule (untouched for a lease length) decides again, and claims each by rename
            planned = {r.name: r for r in removals if r.kind == "partial"}
            for path in remove_stale(repo.partials, lease_seconds()):
                done.append(
                    planned.get(path.name) or Removal("partial", repo.repo_id, repo.repo_type, path.name)
                )
        _empty_trash(repo)
        if done and not uses and _nothing_left(repo):
            shutil.rmtree(repo.root, ignore_errors=True)
            done.append(Removal("repo", repo.repo_id, repo.repo_type, repo.folder_name))
    return done, skips


def _same_repo(entry: QuarantineEntry, repo: CacheRepo) -> bool:
    return entry.repo_id == repo.repo_id and entry.repo_type == repo.repo_type


def _remove_snapshot(repo: CacheRepo, commit: str, refs: Mapping[str, str]) -> bool:
    """Steps 1-2 of the module docstring; False when the snapshot is already gone."""
    snap = repo.snapshot_dir(commit)
    if not snap.is_dir():
        return False
    for name, points_to in refs.items():
        if points_to == commit:
            with contextlib.suppress(FileNotFoundError):
                repo.ref_path(name).unlink()
    repo.trash_dir.mkdir(parents=True, exist_ok=True)
    os.rename(snap, repo.trash_dir / f"{commit}.{secrets.token_hex(4)}")
    ledger = Ledger(repo.ledger_dir)
    for path in (repo.tree_path(commit), ledger.snapshot_record_path(commit), repo.used_dir / commit):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return True


def _remove_blob(repo: CacheRepo, etag: str, linked: Collection[str]) -> str | None:
    """Step 3: delete one blob with its record and lock files, holding its lock; None when done, else why not."""
    if etag in linked:
        return "a snapshot links it again"
    lock = repo.lock_path(etag)
    try:
        with blob_lock(lock, timeout=0, what=f"{repo.repo_id} blob {etag[:12]}"):
            try:
                os.unlink(repo.blob_path(etag))
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                return "it is a directory, not a blob file"
            Ledger(repo.ledger_dir).forget(etag)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)  # while held: a process that opened it meanwhile sees the inode unlinked
    except LockTimeout:
        return "another process holds its lock (writing it)"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lease_path(lock))
    return None


def _remove_incomplete(repo: CacheRepo, name: str, grace: float) -> str | None:
    path = repo.blobs / name
    etag = name[: -len(".incomplete")]
    try:
        with blob_lock(repo.lock_path(etag), timeout=0, what=f"{repo.repo_id} {name}"):
            if time.time() - path.stat().st_mtime < grace:
                return "written to since"
            path.unlink()
    except LockTimeout:
        return "another process holds its lock (writing it)"
    except FileNotFoundError:
        return "already gone"
    return None


def _empty_trash(repo: CacheRepo) -> None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(repo.trash_dir):
            shutil.rmtree(entry.path, ignore_errors=True)


def _nothing_left(repo: CacheRepo) -> bool:
    """True when the repo folder holds no snapshot, blob, quarantine entry or partial any more."""
    for directory in (repo.root / "snapshots", repo.blobs, repo.quarantine_dir, repo.partials):
        with contextlib.suppress(FileNotFoundError):
            if any(True for _ in os.scandir(directory)):
                return False
    return True


def describe(removal: Removal) -> str:
    """One line for a removal, as ``vcache rm`` and ``vcache gc`` print it."""
    where = removal.repo_id if removal.repo_type == "model" else f"{removal.repo_type}s/{removal.repo_id}"
    what = {
        "revision": f"revision {where}@{removal.name[:12]}",
        "blob": f"blob {where} {removal.name[:12]}",
        "ledger": f"ledger record {where} {removal.name}",
        "partial": f"partial download {where} {removal.detail or removal.name}",
        "incomplete": f"unfinished download {where} blobs/{removal.name}",
        "quarantine": f"quarantined {where} {removal.detail} ({removal.name})",
        "repo": f"repo folder {removal.name}",
    }.get(removal.kind, f"{removal.kind} {where} {removal.name}")
    if removal.kind == "revision" and removal.detail:
        what += f" ({removal.detail})"
    if removal.size:
        what += f", {human_bytes(removal.size)}"
    return what


def dumps(listing: CacheListing) -> str:
    """``vcache ls --json``."""
    return json.dumps(listing.to_json(), indent=2)


def summarize(removals: Iterable[Removal]) -> str:
    """``3 revision(s), 12 blob(s), 1 partial(s)``: counts by kind, in a fixed order."""
    counts: dict[str, int] = {}
    for r in removals:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    order = ("revision", "blob", "partial", "incomplete", "ledger", "quarantine", "repo")
    names = {"ledger": "ledger record", "incomplete": "unfinished download", "quarantine": "quarantined file"}
    parts = [f"{counts[k]} {names.get(k, k)}(s)" for k in order if counts.get(k)]
    return ", ".join(parts) or "nothing"


__all__ = [
    "DEFAULT_GRACE",
    "CacheListing",
    "Cleanup",
    "CleanupReport",
    "IncompleteFile",
    "PartialFile",
    "Plan",
    "QuarantinedFile",
    "Removal",
    "RepoInfo",
    "RepoTarget",
    "RevisionInfo",
    "Skip",
    "describe",
    "dumps",
    "list_cache",
    "parse_duration",
    "parse_size",
    "plan_gc",
    "plan_removal",
    "remove_revision",
    "run_plan",
    "summarize",
]
