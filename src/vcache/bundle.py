"""Air-gapped transfer: verified snapshots carried as one plain tar file (a *bundle*), imported as if pulled.

A bundle is an uncompressed POSIX tar, written and read as a stream (so ``vcache export org/name -o - | ssh
host vcache import -`` works), laid out as ``docs/bundle.md`` describes:

1. ``vcache-bundle.json``, the manifest, first: for each repo and commit, the refs that named it, the Hub's
   tree listing when the source cache had one, and every carried file's path, size, sha256 and blob name;
2. one member per blob, ``<repo_folder>/blobs/<blob name>``, holding a verified blob's bytes.

Export (:func:`plan_export`, then :func:`write_bundle`) carries only revisions that verify (through the ledger:
an unchanged verified blob is not hashed again) and reads the bytes from their blobs.

Import (:func:`import_bundle`) trusts nothing in the bundle. Every name is validated before it is used; every
member must be a regular file that the manifest names exactly once, with the manifest's size; every byte is
hashed (against the blob name, and against the manifest's sha256) and content-scanned while it is written to
a temporary file in the repo's ``.vcache/tmp/``, and each file is judged as a pull judges a download
(:func:`~vcache.checks.judge.judge`) as soon as its last byte is in. Only when the stream has ended with every
member complete is anything published: blob, ledger record and snapshot link for a file that passed,
quarantine for one that failed; refs and the tree listing for a revision whose every file verified. A bundle
that is truncated, altered, or holds unsafe names or links is refused (:class:`~vcache.errors.BadBundle`) and
nothing of it is published. A blob already verified in the cache is not written again (its member is read
past), so importing a bundle twice does no work the second time.

This module never extracts a member under the member's own name (no ``tarfile.extract``): the only paths it
writes are those :class:`~vcache.cache.CacheRepo` builds from validated names. It never deletes a blob or a
quarantined file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from vcache._version import __version__
from vcache.cache import CacheRepo, entry_kind, translate_os_error, written_in_place
from vcache.checks import StreamingCheck
from vcache.checks.judge import Judgement, digest_mismatch, judge, parsed_headers
from vcache.config import REPO_TYPES, default_cache_dir
from vcache.errors import (
    BadBundle,
    IncompleteSnapshot,
    OfflineError,
    TransferError,
    UnsafePath,
    UsageError,
    VerificationFailed,
)
from vcache.hashing import Digest, hash_file
from vcache.hub import COMMIT_RE, validate_repo_id, validate_repo_path, validate_revision
from vcache.ledger import Ledger
from vcache.lockfile import Lock, LockedRepo
from vcache.locks import blob_lock
from vcache.pull import LockArg, Progress, lock_in_effect, publish_verified, set_aside_blob
from vcache.quarantine import quarantine_file
from vcache.report import (
    NOT_FETCHED,
    FileReport,
    Finding,
    PullReport,
    Severity,
    Verdict,
    fail,
    info,
    verdict_of,
)
from vcache.verify import attach_repo_findings, resolve_cached_commit, verify_locked, verify_snapshot

FORMAT = "vcache-bundle"
#: The bundle format version this vcache writes and reads.
VERSION = 1
MANIFEST_NAME = "vcache-bundle.json"
#: A manifest larger than this is refused unread (one of a repo with 100,000 files is about 25 MiB).
MAX_MANIFEST_BYTES = 64 << 20
#: Bytes per read, hash, scan and write while importing: large enough that per-call costs vanish, small
#: enough that the hash, the content scan and the write find the chunk still in the CPU cache (measured
#: fastest; 1 MiB and up costs 20-100 % more CPU).
IMPORT_CHUNK = 256 << 10
#: tarfile's stream buffer and copy size when writing: it concatenates bytes objects, which costs several
#: times more per byte with larger chunks.
EXPORT_CHUNK = 64 << 10
#: Chunks an import's hashing or writing thread may lag behind its reading (4 MiB).
QUEUED_CHUNKS = 16
#: An import starts a background ``fdatasync`` of the file it writes every this many bytes.
SYNC_EVERY = 64 << 20

#: ``(size, blob_id, lfs_sha256)`` per path: a tree listing as :meth:`CacheRepo.read_tree` gives it.
Tree = Mapping[str, tuple[int, str, str | None]]


# -- the manifest -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleFile:
    """One carried file of a revision: its repo path, size, sha256 and blob name (``etag``: the LFS sha256,
    or the git blob id of a small file, as the Hub names it)."""

    path: str
    size: int
    sha256: str
    etag: str

    @property
    def digest(self) -> Digest:
        """The publisher's digest, which the blob name is."""
        return Digest.from_etag(self.etag)


@dataclass(frozen=True)
class BundleRevision:
    """One commit of a repo: the refs that named it on export, the files carried, and the Hub's tree listing
    of the commit (None when the source cache had none; it may list files that were not carried)."""

    commit: str
    refs: tuple[str, ...]
    files: tuple[BundleFile, ...]
    tree: Tree | None = None


@dataclass(frozen=True)
class BundleRepo:
    """One repo of a bundle and the revisions carried."""

    repo_id: str
    repo_type: str
    revisions: tuple[BundleRevision, ...]

    def member(self, etag: str) -> str:
        """The tar member that holds blob ``etag``: ``<repo_folder>/blobs/<etag>``."""
        return f"{CacheRepo(Path(), self.repo_id, self.repo_type).folder_name}/blobs/{etag}"


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds; its JSON form is the first member, ``vcache-bundle.json``. ``lock`` holds the lock
    entries of its repos when it was exported under a lockfile (``vcache export --lock``), else None."""

    repos: tuple[BundleRepo, ...]
    created_by: str = f"vcache {__version__}"
    lock: Lock | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``vcache-bundle.json`` form (``docs/bundle.md``)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "created_by": self.created_by,
            "repos": [
                {
                    "repo_id": r.repo_id,
                    "repo_type": r.repo_type,
                    "revisions": [
                        {
                            "commit": rev.commit,
                            "refs": list(rev.refs),
                            "files": [
                                {"path": f.path, "size": f.size, "sha256": f.sha256, "etag": f.etag}
                                for f in rev.files
                            ],
                            "tree": None
                            if rev.tree is None
                            else {
                                p: {"size": size, "blob_id": blob_id, "lfs_sha256": sha}
                                for p, (size, blob_id, sha) in rev.tree.items()
                            },
                        }
                        for rev in r.revisions
                    ],
                }
                for r in self.repos
            ],
            **({} if self.lock is None else {"lock": self.lock.to_document()}),
        }

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Parse and check a manifest; :class:`ValueError` saying what is wrong with it (every name is checked
        as a cache path would be, every digest's form, every size, and that the files agree with the tree)."""
        top = _obj(data, "the manifest")
        if top.get("format") != FORMAT:
            raise ValueError(f"its manifest is not a {FORMAT} manifest")
        if top.get("version") != VERSION:
            raise ValueError(
                f"it is bundle format version {top.get('version')!r}; this vcache ({__version__}) reads version "
                f"{VERSION}: import it with the vcache version that exported it, or a newer one"
            )
        repos: list[BundleRepo] = []
        seen: set[tuple[str, str]] = set()
        for r in _list(top.get("repos"), "repos"):
            r = _obj(r, "a repo")
            repo_id = _text(r.get("repo_id"), "repo_id")
            try:
                validate_repo_id(repo_id)
            except UsageError as exc:
                raise ValueError(f"its manifest names an invalid repo id {repo_id!r}") from exc
            repo_type = r.get("repo_type")
            if repo_type not in REPO_TYPES:
                raise ValueError(f"{repo_id}: repo_type {repo_type!r} is none of {', '.join(REPO_TYPES)}")
            assert isinstance(repo_type, str)
            if (repo_id, repo_type) in seen:
                raise ValueError(f"its manifest lists {repo_id} twice")
            seen.add((repo_id, repo_type))
            revisions = [_revision(repo_id, x) for x in _list(r.get("revisions"), f"{repo_id}: revisions")]
            if len({x.commit for x in revisions}) != len(revisions):
                raise ValueError(f"its manifest lists a commit of {repo_id} twice")
            repos.append(BundleRepo(repo_id, repo_type, tuple(revisions)))
        lock = None
        if top.get("lock") is not None:
            try:
                lock = Lock.from_document(top["lock"], "the lock entries of its manifest")
            except UsageError as exc:
                raise ValueError(exc.message) from None
        return cls(tuple(repos), str(top.get("created_by", "")), lock)


def _revision(repo_id: str, data: object) -> BundleRevision:
    rev = _obj(data, f"a revision of {repo_id}")
    commit = _text(rev.get("commit"), f"{repo_id}: commit")
    if not COMMIT_RE.fullmatch(commit):
        raise ValueError(f"{repo_id}: {commit[:80]!r} is not a commit id")
    where = f"{repo_id}@{commit[:12]}"
    refs = tuple(_text(x, f"{where}: ref") for x in _list(rev.get("refs"), f"{where}: refs"))
    for ref in refs:
        try:
            validate_revision(ref)
        except UsageError as exc:
            raise ValueError(f"{where}: {ref[:80]!r} is not a valid ref name") from exc
    files: list[BundleFile] = []
    for x in _list(rev.get("files"), f"{where}: files"):
        entry = _obj(x, f"a file of {where}")
        path = _safe_path(_text(entry.get("path"), f"{where}: path"), where)
        size, sha256, etag = entry.get("size"), entry.get("sha256"), entry.get("etag")
        if type(size) is not int or size < 0:
            raise ValueError(f"{where}: {path}: size {size!r} is not a byte count")
        if not _is_digest(sha256, "sha256"):
            raise ValueError(f"{where}: {path}: sha256 {sha256!r} is not a sha256")
        if not (_is_digest(etag, "sha256") or _is_digest(etag, "gitsha1")):
            raise ValueError(f"{where}: {path}: blob name {etag!r} is neither a sha256 nor a git blob id")
        assert isinstance(sha256, str) and isinstance(etag, str)
        if len(etag) == 64 and etag != sha256:
            raise ValueError(
                f"{where}: {path}: its blob name {etag} is an LFS sha256 but its sha256 is {sha256}"
            )
        files.append(BundleFile(path, size, sha256, etag))
    if len({f.path for f in files}) != len(files):
        raise ValueError(f"{where}: a path is listed twice")
    tree = None if rev.get("tree") is None else _tree(rev.get("tree"), where)
    if tree is not None:
        for f in files:
            listed = tree.get(f.path)
            if listed is None or listed[0] != f.size or f.etag not in (listed[1], listed[2]):
                raise ValueError(
                    f"{where}: {f.path} (blob {f.etag}, {f.size} bytes) disagrees with the tree listing"
                )
    return BundleRevision(commit, refs, tuple(files), tree)


def _tree(data: object, where: str) -> dict[str, tuple[int, str, str | None]]:
    out: dict[str, tuple[int, str, str | None]] = {}
    for path, e in _obj(data, f"{where}: tree").items():
        _safe_path(path, where)
        e = _obj(e, f"{where}: tree entry of {path}")
        size, blob_id, sha = e.get("size"), e.get("blob_id"), e.get("lfs_sha256")
        if type(size) is not int or size < 0 or not _is_digest(blob_id, "gitsha1"):
            raise ValueError(f"{where}: the tree entry of {path} has no valid size and blob id")
        if sha is not None and not _is_digest(sha, "sha256"):
            raise ValueError(f"{where}: the tree entry of {path} has an invalid LFS sha256 {sha!r}")
        assert isinstance(blob_id, str)
        out[path] = (size, blob_id, sha)
    return out


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a JSON list")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string")
    return value


def _is_digest(value: object, algorithm: str) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return Digest.parse(f"{algorithm}:{value}").hexdigest == value
    except ValueError:
        return False


def _safe_path(path: str, where: str) -> str:
    try:
        return validate_repo_path(path)
    except UnsafePath as exc:
        raise ValueError(f"{where}: path {path[:200]!r} is unsafe ({getattr(exc, 'reason', exc)})") from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("its manifest names a key twice in one object")
    return out


# -- export -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportPlan:
    """What :func:`write_bundle` writes: the manifest, the verify report of every revision, and for each blob
    member (in member order) the file its bytes are read from and their size."""

    manifest: Manifest
    reports: tuple[PullReport, ...]
    sources: Mapping[str, tuple[Path, int]]

    @property
    def size(self) -> int:
        """Bytes of file content the bundle carries (each blob once)."""
        return sum(size for _path, size in self.sources.values())


def parse_target(text: str) -> tuple[str, str | None]:
    """``org/name`` or ``org/name@revision`` as ``(repo_id, revision)``; :class:`UsageError` when invalid."""
    repo_id, at, revision = text.partition("@")
    validate_repo_id(repo_id)
    if at:
        validate_revision(revision)
    return repo_id, revision if at else None


def plan_export(
    targets: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    repo_type: str = "model",
    lock: LockArg = None,
) -> ExportPlan:
    """Verify each ``REPO_ID[@REVISION]`` target in the cache (offline, trusting unchanged ledger records) and
    plan the bundle of its files.

    Under a lock (``lock``: a lockfile path or :class:`~vcache.lockfile.Lock`; default ``VCACHE_LOCK``,
    ``False`` for none) each target must be a repo the lock pins, at its locked commit (no revision: the
    locked commit), else a :class:`UsageError` naming the lockfile; exactly the locked files are carried, each
    checked against the lock's size and sha256 as ``vcache verify --lock`` checks it, and the manifest carries
    the lock entries of the exported repos.

    The files carried are those the snapshot holds (of those its tree listing names, when there is one).
    Raises :class:`~vcache.errors.VerificationFailed` (with ``reports``, every revision's verify report) when a
    file fails: nothing is exported then, and nothing is moved (``vcache verify`` quarantines it);
    :class:`~vcache.errors.OfflineError` / :class:`~vcache.errors.IncompleteSnapshot` when a target is not in
    the cache; :class:`UsageError` for invalid targets. Targets naming one commit share its entry (their refs
    are merged); revisions of a repo share its blob members.
    """
    if repo_type not in REPO_TYPES:
        raise UsageError(f"repo type {repo_type!r} is none of {', '.join(REPO_TYPES)}")
    if not targets:
        raise UsageError("name at least one REPO_ID[@REVISION] to export")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parsed = [parse_target(t) for t in targets]  # every target checked before any is read
    held = lock_in_effect(lock)
    entries = {repo_id: held.require(repo_id, repo_type) for repo_id, _ in parsed} if held is not None else {}
    revisions: dict[str, dict[str, tuple[list[str], tuple[BundleFile, ...], Tree | None]]] = {}
    reports: list[PullReport] = []
    sources: dict[str, tuple[Path, int]] = {}
    for repo_id, revision in parsed:
        repo = CacheRepo(root, repo_id, repo_type)
        if not repo.root.is_dir():
            raise OfflineError(
                f"{repo_id} is not in the cache at {root}; pull it there first (`vcache pull {repo_id}`), or "
                "point --cache-dir at the cache that holds it",
                repo_id=repo_id,
            )
        locked = entries.get(repo_id)
        commit = (
            _locked_commit(repo, revision, locked, held) if locked else resolve_cached_commit(repo, revision)
        )
        ref = revision if revision and not COMMIT_RE.fullmatch(revision) else None
        if revision is None:
            implied = locked.revision if locked and not COMMIT_RE.fullmatch(locked.revision) else "main"
            ref = implied if repo.read_ref(implied) == commit else None
        elif locked and ref and repo.read_ref(ref) != commit:
            ref = None  # the lock's commit, not what the ref names in this cache: no ref is carried
        commits = revisions.setdefault(repo_id, {})
        if commit in commits:
            if ref and ref not in commits[commit][0]:
                commits[commit][0].append(ref)
            continue
        files, tree, report = _verified_files(repo, commit, revision, locked, held)
        reports.append(report)
        commits[commit] = ([ref] if ref else [], files, tree)
        for f in files:
            sources.setdefault(_member(repo, f.etag), (_source(repo, commit, f), f.size))
    failed = [r for r in reports if not r.ok]
    if failed:
        lines = [
            f"  {r.repo_id}@{(r.commit or '')[:12]}: {f.path}: "
            + "; ".join(f"[{x.code}] {x.message}" for x in f.findings if x.severity is Severity.FAIL)
            for r in failed
            for f in r.failed
        ]
        raise VerificationFailed(
            f"{sum(len(r.failed) for r in failed)} file(s) failed verification, so nothing was exported:\n"
            + "\n".join(lines)
            + f"\nRun `vcache verify {' '.join(sorted({str(r.repo_id) for r in failed}))}` to quarantine them, "
            "then `vcache pull` to fetch verified copies, and export again.",
            [x for r in failed for f in r.failed for x in f.findings if x.severity is Severity.FAIL],
            reports=tuple(reports),
        )
    manifest = Manifest(
        tuple(
            BundleRepo(
                repo_id,
                repo_type,
                tuple(
                    BundleRevision(commit, tuple(refs), files, tree)
                    for commit, (refs, files, tree) in commits.items()
                ),
            )
            for repo_id, commits in revisions.items()
        ),
        lock=None if held is None else Lock(tuple(entries.values())),
    )
    return ExportPlan(manifest, tuple(reports), sources)


def _locked_commit(repo: CacheRepo, revision: str | None, locked: LockedRepo, lock: Lock | None) -> str:
    """The commit to export of a locked repo: the locked one, which the target must name (no revision, the
    locked revision, or a revision that resolves to the locked commit in the cache) and the cache must hold;
    a :class:`UsageError` naming the lockfile otherwise."""
    where = lock.where if lock is not None else "the lockfile"
    if revision is not None and revision not in (locked.revision, locked.commit):
        commit = resolve_cached_commit(repo, revision)
        if commit != locked.commit:
            raise UsageError(
                f"{repo.repo_id}@{revision} is commit {commit} in the cache, but the lockfile {where} pins "
                f"{locked.name}@{locked.revision} (commit {locked.commit}); export {repo.repo_id}@"
                f"{locked.commit}, or move the lock with `vcache lock {repo.repo_id}@{revision} -o {where}`",
                repo_id=repo.repo_id,
                lockfile=where,
            )
    if not repo.snapshot_dir(locked.commit).is_dir():
        raise UsageError(
            f"{locked.name} is locked at commit {locked.commit} in the lockfile {where}, which the cache at "
            f"{repo.cache_dir} does not hold; nothing was exported. Fetch it with `vcache pull --lock {where} "
            f"{repo.repo_id}`, then export again",
            repo_id=repo.repo_id,
            lockfile=where,
        )
    return locked.commit


def _member(repo: CacheRepo, etag: str) -> str:
    return BundleRepo(repo.repo_id, repo.repo_type, ()).member(etag)


def _verified_files(
    repo: CacheRepo,
    commit: str,
    revision: str | None,
    locked: LockedRepo | None = None,
    lock: Lock | None = None,
) -> tuple[tuple[BundleFile, ...], Tree | None, PullReport]:
    """The files of a cached revision with their sizes, sha256 and blob names, once they verified (an empty
    tuple when some did not: the report says which). With ``locked``, exactly its files, verified against
    the lock too."""
    tree = repo.read_tree(commit)
    snapshot = repo.snapshot_dir(commit)
    if locked is not None:
        paths = [f.path for f in locked.files]
    elif tree is not None:
        paths = [p for p in sorted(tree) if os.path.lexists(repo.snapshot_file(commit, p))]
    else:
        paths = sorted(
            (Path(d) / n).relative_to(snapshot).as_posix()
            for d, _dirs, names in os.walk(snapshot)
            for n in names
        )
    where = f"{repo.repo_id}@{revision or commit[:12]}"
    if not paths:
        raise IncompleteSnapshot(
            f"{where} has no files in the cache at {repo.cache_dir}; pull it there first (`vcache pull "
            f"{repo.repo_id}`)",
            snapshot_path=str(snapshot),
        )
    if locked is not None:
        where = lock.where if lock is not None else "the lockfile"
        report = verify_locked(repo, locked, quarantine=False, lockfile=where)
    else:
        report = verify_snapshot(repo, commit, only=paths, quarantine=False, revision=revision)
    if not report.ok:
        return (), tree, report
    files: list[BundleFile] = []
    for path in paths:
        etag = repo.linked_etag(commit, path)
        if etag is None and tree is not None:
            _size, blob_id, sha = tree[path]
            etag = sha or blob_id
        if etag is None or not (_is_digest(etag, "sha256") or _is_digest(etag, "gitsha1")):
            raise IncompleteSnapshot(
                f"{where}: cannot tell which blob {path} is (its snapshot entry is not a link into blobs/ and no "
                f"tree listing names it); pull it again with `vcache pull {repo.repo_id}`",
                snapshot_path=str(snapshot),
            )
        source = _source(repo, commit, BundleFile(path, 0, "", etag))
        pinned = locked.file(path) if locked is not None else None
        try:
            size = os.stat(source).st_size
            if pinned is not None:  # verified against the lock just now
                sha256 = pinned.sha256
            else:
                sha256 = etag if len(etag) == 64 else hash_file(source, "sha256").hexdigest
        except OSError as exc:
            raise translate_os_error(exc, f"reading {where}: {path}") from exc
        files.append(BundleFile(path, size, sha256, etag))
    return tuple(files), tree, report


def _source(repo: CacheRepo, commit: str, f: BundleFile) -> Path:
    """Where a verified file's bytes are read from: its blob, or the snapshot's own copy (no symlinks)."""
    if repo.linked_etag(commit, f.path) == f.etag:
        return repo.blob_path(f.etag)
    return repo.snapshot_file(commit, f.path)


class Sink(Protocol):
    """Where a bundle is written: anything with ``write`` that takes every byte (see :class:`FdSink`)."""

    def write(self, data: bytes, /) -> object: ...


class FdSink:
    """Writes to a file descriptor (a file, a pipe, stdout) and never drops bytes: ``os.write`` may write less
    than asked to a pipe when a signal arrives, so it loops."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        widen_pipe(fd)

    def write(self, data: bytes, /) -> int:
        """Write all of ``data``."""
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.written += len(data)
        return len(data)


#: The pipe buffer asked for (Linux gives 64 KiB, and up to ``/proc/sys/fs/pipe-max-size``, 1 MiB by default,
#: when asked).
PIPE_BUFFER = 1 << 20


def widen_pipe(fd: int) -> None:
    """When ``fd`` is a pipe, ask for a :data:`PIPE_BUFFER` buffer (best effort; Linux only).

    With 64 KiB, the two ends of ``export -o - | import -`` take turns: the exporter fills the pipe and sleeps,
    the importer drains it and sleeps, once per 64 KiB — and on a busy machine every wake-up waits for a CPU.
    A larger buffer lets each side work on while the other is descheduled.
    """
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            import fcntl

            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BUFFER)
    except (OSError, ValueError):
        pass


class _Metered(io.RawIOBase):
    """A blob being read into the bundle, telling ``progress`` about every chunk."""

    def __init__(self, fd: int, progress: Progress) -> None:
        self._fd = fd
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = os.readv(self._fd, [buffer])
        self._progress.advance(n)
        return n


def write_bundle(plan: ExportPlan, out: Sink, *, progress: Progress | None = None) -> None:
    """Write the bundle ``plan`` describes to ``out`` as one tar stream: the manifest, then every blob once.

    A blob that no longer has the size it was verified with raises :class:`~vcache.errors.TransferError`
    (the stream is then incomplete, and an import refuses it).
    """
    progress = progress or Progress()
    progress.planned(plan.size, len(plan.sources))
    now = int(time.time())
    manifest = json.dumps(plan.manifest.to_json(), indent=1).encode()
    try:
        # tarfile's stream mode only ever calls ``write`` on ``out``
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=EXPORT_CHUNK) as tar:  # type: ignore[call-overload]
            tar.copybufsize = EXPORT_CHUNK
            tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest), 0o644, now), io.BytesIO(manifest))
            for member, (source, size) in plan.sources.items():
                _add_blob(tar, _tarinfo(member, size, 0o444, now), source, progress)
    except BrokenPipeError as exc:
        raise TransferError(
            "the bundle's reader closed the pipe before the end, so the bundle is incomplete (an import refuses "
            "it); see the reader's own error, then export again"
        ) from exc


def _add_blob(tar: tarfile.TarFile, info: tarfile.TarInfo, source: Path, progress: Progress) -> None:
    """Append one blob's bytes as the member ``info`` describes (its size is the verified size)."""
    try:
        fd = os.open(source, os.O_RDONLY)
    except OSError as exc:
        raise translate_os_error(exc, f"reading {source}") from exc
    try:
        if os.fstat(fd).st_size != info.size:
            raise OSError("it changed size")
        with io.BufferedReader(_Metered(fd, progress), EXPORT_CHUNK) as reader:
            tar.addfile(info, reader)
    except OSError as exc:
        if exc.errno is not None:  # the disk, or the output: said as for any write
            raise translate_os_error(exc, f"exporting {source}") from exc
        raise TransferError(  # tarfile says "unexpected end of data" when the file is shorter than its size
            f"{source} changed while it was being exported ({exc}), so the bundle is incomplete (an import "
            "refuses it); run `vcache verify` on its repo, then export again",
            path=str(source),
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def write_bundle_file(
    plan: ExportPlan, path: str | os.PathLike[str], *, progress: Progress | None = None
) -> None:
    """Write the bundle to the file ``path`` whole or not at all: into a temporary file beside it, fsynced, then
    renamed over ``path``. :class:`UsageError` when ``path``'s folder does not exist. A device or a fifo
    (``-o /dev/null``) is written into, never replaced (:func:`~vcache.cache.written_in_place`)."""
    target = Path(path)
    if written_in_place(target):
        try:
            fd = os.open(target, os.O_WRONLY)
            try:
                write_bundle(plan, FdSink(fd), progress=progress)
            finally:
                os.close(fd)
        except OSError as exc:
            raise translate_os_error(exc, f"writing {path}") from exc
        return
    if not target.parent.is_dir():
        raise UsageError(f"-o {path}: the folder {target.parent} does not exist; create it first")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            write_bundle(plan, FdSink(fd), progress=progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        raise translate_os_error(exc, f"writing {path}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _tarinfo(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, mtime
    return info


# -- import -------------------------------------------------------------------------------------------------------


class _Refused(Exception):
    """The bundle is refused; the message says why (completed into a :class:`BadBundle` by the caller)."""


@dataclass
class _Blob:
    """One blob member as the manifest describes it, and every (commit, path) that uses it."""

    repo: BundleRepo
    etag: str
    size: int
    sha256: str
    uses: list[tuple[str, str]] = field(default_factory=list)
    verified: bool = False  # already in the cache with a valid ledger record: its member is read past


@dataclass(frozen=True)
class _Received:
    """A blob member written to a temporary file and judged."""

    data_path: Path
    judgement: Judgement
    findings: tuple[Finding, ...]
    actual: str

    def fails(self, strict: bool) -> bool:
        return verdict_of(self.findings, strict=strict) is Verdict.FAIL


@dataclass(frozen=True)
class _Settled:
    """What became of a received blob: published (with the judgement that passed it) or quarantined."""

    findings: tuple[Finding, ...]
    actual: str | None = None
    judgement: Judgement | None = None
    quarantine_id: str | None = None
    cached: bool = False
    format: str | None = None
    checks: tuple[str, ...] = ()


def import_bundle(
    source: BinaryIO,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    name: str = "the bundle",
    pins: Mapping[tuple[str, str, str], str] | None = None,
    lock: LockArg = None,
) -> list[PullReport]:
    """Import a bundle read from ``source`` (a binary file object; a pipe will do) into the cache; one report
    per revision, as a pull reports it.

    ``name`` names the bundle in messages. ``pins`` maps ``(repo_id, commit, path)`` to the sha256 that file
    must have (a lock file's entries): a manifest that disagrees is refused before any byte is written, and
    since every byte is checked against the manifest, the bytes are held to the pins too.

    ``lock`` (a lockfile path or :class:`~vcache.lockfile.Lock`; default ``VCACHE_LOCK``, ``False`` for none)
    holds the bundle to a lock the same way, before any byte is written: every repo it carries must be one the
    lock pins, at the locked commit, with exactly the locked files, each with the locked size and sha256. With
    no lock, a bundle exported under one (its manifest carries lock entries) is held to those entries. An
    unreadable or invalid lockfile raises :class:`UsageError` before the bundle is read.

    Raises :class:`~vcache.errors.BadBundle` when the bundle is refused (not a vcache bundle, truncated,
    altered, unsafe names or links, or disagreeing with ``pins`` or the lock): nothing of it was published then.
    :class:`~vcache.errors.TransferError` subclasses for disk problems. Files that fail their checks are
    quarantined and reported (``report.ok`` is False), not raised; a revision's refs and tree listing are
    written only when every one of its files verified.
    """
    t0 = time.monotonic()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    progress = progress or Progress()
    held = lock_in_effect(lock)
    with contextlib.suppress(AttributeError, OSError, ValueError):
        widen_pipe(source.fileno())
    with _Staging() as staging:
        try:
            manifest, blobs, received = _receive(source, root, strict, progress, staging, pins, held)
        except _Refused as exc:
            raise BadBundle(
                f"refusing {name}: {exc}. Nothing of it was published; copy the bundle again, or export it again "
                "with `vcache export` on the connected machine",
                bundle=name,
            ) from exc.__cause__
        reports: list[PullReport] = []
        for brepo in manifest.repos:
            repo = CacheRepo(root, brepo.repo_id, brepo.repo_type)
            mine = {b.etag: b for b in blobs.values() if b.repo is brepo}
            reports.extend(_settle_repo(repo, brepo, mine, received, strict, progress, staging, t0))
    return reports


def _receive(
    source: BinaryIO,
    root: Path,
    strict: bool,
    progress: Progress,
    staging: _Staging,
    pins: Mapping[tuple[str, str, str], str] | None,
    lock: Lock | None = None,
) -> tuple[Manifest, dict[str, _Blob], dict[str, _Received]]:
    """Read the whole stream: the manifest, then every member into a judged temporary file (or past it, when
    its blob is already verified here). Raises :class:`_Refused` unless the stream was complete and sound."""
    received: dict[str, _Received] = {}
    try:
        with tarfile.open(fileobj=source, mode="r|", bufsize=IMPORT_CHUNK) as tar:
            first = tar.next()
            if (
                first is None
                or first.name != MANIFEST_NAME
                or _odd_kind(first)
                or first.size > MAX_MANIFEST_BYTES
            ):
                raise _Refused(
                    f"it does not begin with a {MANIFEST_NAME} of at most {MAX_MANIFEST_BYTES} bytes"
                )
            manifest = _parse_manifest(b"".join(_chunks(tar, first)))
            if lock is not None:
                _held_to_lock(manifest, lock, f"the lockfile {lock.where}")
            elif manifest.lock is not None:
                _held_to_lock(manifest, manifest.lock, "the lock entries of its own manifest")
            blobs = _blob_table(manifest, root, pins)
            todo = [b for b in blobs.values() if not b.verified]
            progress.planned(sum(b.size for b in todo), len(todo))
            seen: set[str] = set()
            while (member := tar.next()) is not None:  # (iterating a TarFile would start over)
                blob = _expected(member, blobs, seen)
                if blob.verified:
                    for _ in _chunks(tar, member):  # read past: the blob is already verified here
                        pass
                else:
                    received[member.name] = _receive_blob(tar, member, blob, root, strict, progress, staging)
            _read_to_the_end(tar)
    except (tarfile.TarError, EOFError, UnicodeError) as exc:
        # tarfile says "unexpected end of data" for a stream cut short, "bad checksum" and the like otherwise
        raise _Refused(f"it is truncated or is not a valid tar file ({exc})") from exc
    missing = sorted(set(blobs) - seen)
    if missing:
        raise _Refused(
            f"it is truncated or incomplete: {len(missing)} of the {len(blobs)} blob(s) its manifest lists are "
            f"missing (first: {missing[0]})"
        )
    return manifest, blobs, received


def _read_to_the_end(tar: tarfile.TarFile) -> None:
    """Read the rest of the stream (a writer on the other end of a pipe must not fail on its last bytes), and
    refuse a stream that ends before its end-of-archive marker: tarfile takes a stream that stops at a member
    boundary for a complete archive. What follows the marker is ignored, as tar ignores it."""
    marker = tar.offset  # where the header after the last member, the marker's two zero blocks, starts
    while tar.fileobj.read(IMPORT_CHUNK):
        pass
    if tar.fileobj.tell() < marker + 2 * tarfile.BLOCKSIZE:
        raise _Refused("it is truncated: it ends before its end-of-archive marker")


def _parse_manifest(raw: bytes) -> Manifest:
    try:
        return Manifest.from_json(json.loads(raw, object_pairs_hook=_no_duplicate_keys))
    except RecursionError as exc:
        raise _Refused("its manifest is JSON nested too deeply to read") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Refused(f"its manifest is not UTF-8 JSON ({exc})") from exc
    except ValueError as exc:  # what Manifest.from_json found wrong
        raise _Refused(str(exc)) from exc


def _held_to_lock(manifest: Manifest, lock: Lock, where: str) -> None:
    """:class:`_Refused` naming the repo, commit or file, unless every revision the manifest lists is a locked
    repo's locked commit with exactly its locked files, each of the locked size and sha256 (the bytes are
    then held to the lock by the import's checks against the manifest)."""
    for brepo in manifest.repos:
        locked = lock.find(brepo.repo_id, brepo.repo_type)
        if locked is None:
            raise _Refused(f"it carries {brepo.repo_id} ({brepo.repo_type}), which {where} does not pin")
        for rev in brepo.revisions:
            at = f"{locked.name}@{rev.commit[:12]}"
            if rev.commit != locked.commit:
                raise _Refused(
                    f"it carries {locked.name} at commit {rev.commit}, but {where} pins commit {locked.commit}"
                )
            carried = {f.path: f for f in rev.files}
            for f in rev.files:
                pinned = locked.file(f.path)
                if pinned is None:
                    raise _Refused(f"{at}: it carries {f.path}, which {where} does not pin")
                if (pinned.size, pinned.sha256) != (f.size, f.sha256):
                    raise _Refused(
                        f"{at}: {f.path} is {f.size} bytes with sha256 {f.sha256} in the bundle, but "
                        f"{pinned.size} bytes with sha256 {pinned.sha256} in {where}"
                    )
            absent = [f.path for f in locked.files if f.path not in carried]
            if absent:
                raise _Refused(
                    f"{at}: {where} pins {len(absent)} file(s) the bundle does not carry (first: {absent[0]})"
                )


def _blob_table(
    manifest: Manifest, root: Path, pins: Mapping[tuple[str, str, str], str] | None
) -> dict[str, _Blob]:
    """Every blob member the manifest implies, checked for agreement (one size and sha256 per blob, and the
    pins), and whether its blob is already verified in the cache."""
    blobs: dict[str, _Blob] = {}
    for brepo in manifest.repos:
        repo = CacheRepo(root, brepo.repo_id, brepo.repo_type)
        ledger = Ledger(repo.ledger_dir)
        for rev in brepo.revisions:
            for f in rev.files:
                pinned = (pins or {}).get((brepo.repo_id, rev.commit, f.path))
                if pinned is not None and pinned != f.sha256:
                    raise _Refused(
                        f"{brepo.repo_id}@{rev.commit[:12]}: {f.path} has sha256 {f.sha256} in the bundle but "
                        f"{pinned} in the lock"
                    )
                member = brepo.member(f.etag)
                blob = blobs.get(member)
                if blob is None:
                    verified = ledger.lookup(f.etag, repo.blob_path(f.etag)) is not None
                    blob = blobs[member] = _Blob(brepo, f.etag, f.size, f.sha256, verified=verified)
                elif (blob.size, blob.sha256) != (f.size, f.sha256):
                    raise _Refused(f"its manifest gives blob {f.etag} two sizes or digests")
                blob.uses.append((rev.commit, f.path))
    return blobs


def _odd_kind(member: tarfile.TarInfo) -> str | None:
    """What a member is when it is not a plain regular file (a bundle holds nothing else), else None."""
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return None
    if member.issym():
        return f"a symlink to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.isdir():
        return "a directory"
    if member.isdev():
        return "a device or fifo"
    return f"a tar member of type {member.type!r}"


def _expected(member: tarfile.TarInfo, blobs: Mapping[str, _Blob], seen: set[str]) -> _Blob:
    """The manifest's blob for this member; :class:`_Refused` for an unsafe name, a link or other non-file, a
    member the manifest does not list, one seen before, or one of another size."""
    try:
        validate_repo_path(member.name)
    except UnsafePath as exc:
        why = getattr(exc, "reason", exc)
        raise _Refused(f"member {member.name[:200]!r} has an unsafe name ({why})") from exc
    odd = _odd_kind(member)
    if odd is not None:
        raise _Refused(f"member {member.name!r} is {odd}; a bundle holds only regular files")
    blob = blobs.get(member.name)
    if blob is None:
        raise _Refused(f"member {member.name!r} is not listed in its manifest")
    if member.name in seen:
        raise _Refused(f"member {member.name!r} appears twice")
    seen.add(member.name)
    if member.size != blob.size:
        raise _Refused(f"member {member.name!r} holds {member.size} bytes, its manifest says {blob.size}")
    return blob


def _chunks(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    """The member's bytes in order, read straight from the archive stream (``extractfile`` adds two buffer
    layers, which doubles the CPU cost of an import); :class:`_Refused` when the stream ends first."""
    stream = tar.fileobj
    if stream.tell() != member.offset_data:
        raise _Refused(f"member {member.name!r} is not where its header says")
    left = member.size
    while left:
        data = stream.read(min(IMPORT_CHUNK, left))
        if not data:
            raise _Refused(f"it is truncated: it ends inside member {member.name!r}")
        left -= len(data)
        yield data


def _receive_blob(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    blob: _Blob,
    root: Path,
    strict: bool,
    progress: Progress,
    staging: _Staging,
) -> _Received:
    """Write one member to a temporary file, hashing it against its blob name (and, for a small file, against
    the manifest's sha256 too) and content-scanning it in the same pass; then judge it as a pull would."""
    repo = CacheRepo(root, blob.repo.repo_id, blob.repo.repo_type)
    digest = Digest.from_etag(blob.etag)
    hasher = digest.hasher(blob.size)
    sha = hashlib.sha256() if digest.algorithm != "sha256" else None
    _commit, path = blob.uses[0]  # the name decides which checks run
    scan = StreamingCheck(path, blob.size)
    data_path, fd = staging.new_file(repo)
    writer = _FileWriter(fd)

    def hash_chunk(data: bytes) -> None:
        hasher.update(data)
        if sha is not None:
            sha.update(data)

    offset = 0
    try:
        # Three threads over the same chunks: this one reads and content-scans, one hashes, one writes (on two
        # cores, about twice as fast as doing all three in turn).
        with (
            _Worker(writer, "vcache-import-write") as write,
            _Worker(hash_chunk, "vcache-import-hash") as hash_,
        ):
            for data in _chunks(tar, member):
                write.put(data)
                hash_.put(data)
                scan.feed(offset, data)
                offset += len(data)
                progress.advance(len(data))
    except OSError as exc:
        raise translate_os_error(exc, f"importing {blob.repo.repo_id}: {path}") from exc
    finally:
        writer.close()
        os.close(fd)
    actual = hasher.digest()
    judgement = judge(
        data_path,
        path,
        expected_size=blob.size,
        expected_digest=digest,
        actual_size=offset,
        actual_digest=actual,
        streamed=scan,
        strict=strict,
    )
    findings = judgement.findings
    if sha is not None and sha.hexdigest() != blob.sha256:
        findings += (digest_mismatch(path, Digest("sha256", blob.sha256), Digest("sha256", sha.hexdigest())),)
    if any(x.code in ("size_mismatch", "digest_mismatch") for x in findings):
        findings += (
            info(
                "bundle.damaged",
                f"{path}: the bundle's copy of this file is damaged (its bytes are not those the manifest "
                "lists); copy the bundle again, or export it again on the connected machine",
            ),
        )
    return _Received(data_path, judgement, findings, str(actual))


class _Worker:
    """Calls ``consume`` on every chunk given to :meth:`put`, in order, from a thread of its own, so that the
    work (a hash, a disk write: both release the GIL) runs while the reading thread goes on. The first
    :class:`OSError` it raises is raised again by the next :meth:`put` or on leaving the block; chunks after it
    are taken and dropped, so the reading thread never blocks on a worker that stopped."""

    def __init__(self, consume: Callable[[bytes], object], name: str) -> None:
        self._consume = consume
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> _Worker:
        self._thread.start()
        return self

    def put(self, data: bytes) -> None:
        """Queue ``data`` after everything queued before it."""
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._consume(data)
                except OSError as exc:
                    self._error = exc


class _FileWriter:
    """Appends chunks to an open file and, every :data:`SYNC_EVERY` bytes, starts an ``fdatasync`` in the
    background, so that the fsync before publishing finds little left to write. :meth:`close` waits for it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._written = self._synced = 0
        self._sync: threading.Thread | None = None

    def __call__(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(data)
        if self._written - self._synced >= SYNC_EVERY and (self._sync is None or not self._sync.is_alive()):
            self._synced = self._written
            self._sync = threading.Thread(target=_datasync, args=(self._fd,), name="vcache-import-sync")
            self._sync.start()

    def close(self) -> None:
        """Wait for the background ``fdatasync`` (the file descriptor is closed next)."""
        if self._sync is not None:
            self._sync.join()


def _datasync(fd: int) -> None:
    with contextlib.suppress(OSError):  # an early flush only saves time; the fsync before publishing reports
        os.fdatasync(fd)


def _settle_repo(
    repo: CacheRepo,
    brepo: BundleRepo,
    blobs: Mapping[str, _Blob],
    received: Mapping[str, _Received],
    strict: bool,
    progress: Progress,
    staging: _Staging,
    t0: float,
) -> list[PullReport]:
    """Publish or quarantine the repo's received blobs, link its snapshots, run the repo checks, and write the
    refs and tree listing of every revision whose files all verified."""
    repo.ensure_layout()
    ledger = Ledger(repo.ledger_dir)
    settled: dict[str, _Settled] = {}
    for etag, blob in blobs.items():
        got = received.get(brepo.member(etag))
        if got is not None:
            settled[etag] = _settle_blob(repo, ledger, blob, got, strict, progress, staging)
    reports: list[PullReport] = []
    counted: set[str] = set()
    for rev in brepo.revisions:
        files: list[FileReport] = []
        judged: list[Judgement] = []
        errors: list[str] = []
        for f in rev.files:
            outcome = settled.get(f.etag)
            location = str(repo.snapshot_file(rev.commit, f.path))
            if outcome is None:  # verified here before this import
                rec = ledger.lookup(f.etag, repo.blob_path(f.etag))
                if rec is None:
                    message = (
                        f"{f.path}: its verified blob {f.etag[:12]} left the cache during the import (removed by "
                        "another process?); import the bundle again"
                    )
                    errors.append(message)
                    files.append(FileReport(f.path, findings=(fail(NOT_FETCHED, message),), strict=strict))
                    continue
                outcome = _Settled(rec.findings, cached=True, format=rec.format, checks=rec.checks)
            if outcome.quarantine_id is not None:
                repo.unlink(rev.commit, f.path)
                files.append(
                    FileReport(
                        f.path,
                        f.size,
                        str(f.digest),
                        outcome.findings,
                        actual_digest=outcome.actual,
                        quarantine_id=outcome.quarantine_id,
                        strict=strict,
                    )
                )
            else:
                if repo.linked_etag(rev.commit, f.path) != f.etag:
                    repo.link(rev.commit, f.path, f.etag)
                if outcome.judgement is not None and outcome.judgement.name == f.path:
                    judged.append(outcome.judgement)
                fresh = not outcome.cached and f.etag not in counted
                counted.add(f.etag)
                files.append(
                    FileReport(
                        f.path,
                        f.size,
                        str(f.digest),
                        outcome.findings,
                        attempts=1 if fresh else 0,
                        bytes_transferred=f.size if fresh else 0,
                        cached=outcome.cached,
                        location=location,
                        strict=strict,
                        format=outcome.format,
                        checks=outcome.checks,
                    )
                )
            progress.file_done(files[-1])
        snapshot = repo.snapshot_dir(rev.commit)
        report = PullReport(
            repo_id=repo.repo_id,
            repo_type=repo.repo_type,
            revision=rev.refs[0] if rev.refs else None,
            commit=rev.commit,
            snapshot_path=str(snapshot),
            files=tuple(attach_repo_findings(snapshot, files, strict=strict, headers=parsed_headers(judged))),
            elapsed=time.monotonic() - t0,
            strict=strict,
            errors=tuple(errors),
        )
        if report.ok:
            if rev.tree is not None and repo.read_tree(rev.commit) != rev.tree:
                repo.write_tree(rev.commit, rev.tree)
            for ref in rev.refs:
                if repo.read_ref(ref) != rev.commit:
                    repo.write_ref(ref, rev.commit)
        reports.append(report)
    return reports


def _settle_blob(
    repo: CacheRepo,
    ledger: Ledger,
    blob: _Blob,
    got: _Received,
    strict: bool,
    progress: Progress,
    staging: _Staging,
) -> _Settled:
    """Publish a received blob that passed (under its blob lock, as a pull does) or quarantine it."""
    commit, path = blob.uses[0]
    digest = Digest.from_etag(blob.etag)
    if got.fails(strict):
        entry = quarantine_file(
            repo,
            got.data_path,
            path=path,
            commit=commit,
            etag=blob.etag,
            expected_digest=str(digest),
            actual_digest=got.actual,
            findings=got.findings,
            source="bundle",
        )
        staging.consumed(got.data_path)
        progress.message(f"{path}: FAILED verification; quarantined as {entry.id}")
        return _Settled(got.findings, got.actual, quarantine_id=entry.id)
    with blob_lock(repo.lock_path(blob.etag), what=f"{repo.repo_id}/{path}"):
        target = repo.blob_path(blob.etag)
        kind = entry_kind(target)
        if kind == "file":
            rec = ledger.lookup(blob.etag, target)
            if rec is not None:  # another process published it meanwhile: ours is not needed
                return _Settled(rec.findings, cached=True, format=rec.format, checks=rec.checks)
        elif kind is not None:
            entry = set_aside_blob(repo, commit, path, blob.etag, digest, kind)
            progress.message(f"{path}: its blob was a {kind}, not a regular file; set aside as {entry.id}")
        # (a blob that passed matched the manifest's sha256 too: the ledger keeps it, as a pull's records do)
        publish_verified(
            repo,
            ledger,
            got.data_path,
            blob.etag,
            got.actual,
            got.findings,
            path,
            format=got.judgement.format,
            checks=got.judgement.checks,
            sha256=blob.sha256,
        )
        staging.consumed(got.data_path)
    return _Settled(
        got.findings,
        got.actual,
        judgement=got.judgement,
        format=got.judgement.format,
        checks=got.judgement.checks,
    )


class _Staging:
    """The temporary files an import writes, and the folders it made for them: on the way out, every file not
    consumed (published or quarantined) is removed, and on a refusal or error so is every folder it made that
    is still empty, so a refused bundle leaves nothing behind."""

    def __init__(self) -> None:
        self._files: set[Path] = set()
        self._made: list[Path] = []

    def __enter__(self) -> _Staging:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        for path in self._files:
            with contextlib.suppress(OSError):
                path.unlink()
        if exc_type is not None:
            for folder in reversed(self._made):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: whatever another process put there stays

    def new_file(self, repo: CacheRepo) -> tuple[Path, int]:
        """A new temporary file in ``repo``'s ``.vcache/tmp/``, open for writing."""
        folder = repo.tmp_dir
        try:
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            for p in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    p.mkdir()
                    self._made.append(p)
            path = folder / f"import.{uuid.uuid4().hex[:12]}.tmp"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise translate_os_error(exc, f"importing into {repo.root}") from exc
        self._files.add(path)
        return path, fd

    def consumed(self, path: Path) -> None:
        """``path`` was moved into the cache (or is to stay): leave it alone."""
        self._files.discard(path)


__all__ = [
    "MANIFEST_NAME",
    "BundleFile",
    "BundleRepo",
    "BundleRevision",
    "ExportPlan",
    "FdSink",
    "Manifest",
    "Sink",
    "import_bundle",
    "parse_target",
    "plan_export",
    "write_bundle",
    "write_bundle_file",
]
