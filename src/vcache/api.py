"""Entry points that pick the right verification for what the user pointed at (repo id, snapshot, path)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from vcache.cache import CacheRepo, iter_repo_folders
from vcache.checks.pickles import parse_allow_imports
from vcache.config import default_cache_dir
from vcache.errors import UsageError
from vcache.hub import COMMIT_RE, validate_repo_id, validate_revision
from vcache.lockfile import Lock, LockedRepo, read_lock
from vcache.report import PullReport
from vcache.usage import use
from vcache.verify import resolve_cached_commit, verify_locked, verify_path, verify_snapshot

_SNAPSHOT_RE = re.compile(r"^(models|datasets|spaces)--(.+)$")


def _in_cache_snapshot(path: Path) -> tuple[CacheRepo, str, str | None] | None:
    """If ``path`` lies in ``<cache>/<type>s--org--name/snapshots/<commit>[/file]``, say where."""
    resolved = Path(os.path.abspath(path))
    parts = resolved.parts
    for i in range(len(parts) - 2):
        m = _SNAPSHOT_RE.match(parts[i])
        if m and parts[i + 1] == "snapshots" and i + 2 < len(parts):
            cache_dir = Path(*parts[:i])
            repo = CacheRepo(cache_dir, m.group(2).replace("--", "/"), m.group(1)[:-1])
            rel = "/".join(parts[i + 3 :]) or None
            return repo, parts[i + 2], rel
    return None


def verify(
    targets: Sequence[str | os.PathLike[str]] = (),
    *,
    revision: str | None = None,
    repo_type: str = "model",
    cache_dir: str | os.PathLike[str] | None = None,
    deep: bool = False,
    strict: bool = False,
    allow_imports: Collection[str] = (),
    lock: str | os.PathLike[str] | Lock | None = None,
) -> list[PullReport]:
    """Verify each target offline and return one report per target.

    A target is a repo id present in the cache (its ``revision``, default ``main``), a snapshot folder or
    a file inside one (ledger-aware; failing blobs are quarantined), or any other file or folder (structure
    and content only; nothing is moved). No targets: every snapshot of every repo in the cache.
    ``allow_imports`` (``module.name`` entries) widens the allowlist of pickle globals (as for ``pull``).

    With ``lock`` (a lockfile path or :class:`~vcache.lockfile.Lock`), each locked repo (the targets: repo
    ids the lock pins; none: all of them) is checked against the lock instead: its locked commit's snapshot
    must hold every locked file with the locked sha256 (see :func:`~vcache.verify.verify_locked`). A signature
    method the lock records for a repo is checked too when its snapshot holds the signature file: a key or a
    certificate offline, as a locked pull checks it (``signature.*`` findings); a sigstore identity needs the
    network and gets a ``signature.not_checked`` warning instead.
    """
    if revision is not None:
        validate_revision(revision)
    try:
        allowed = parse_allow_imports(allow_imports)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if lock is not None:
        if revision is not None:
            raise UsageError(
                "--revision/revision= cannot be combined with a lockfile: the lock names the commit"
            )
        return _verify_against_lock(
            read_lock(lock), targets, repo_type, root, deep=deep, strict=strict, allow_imports=allowed
        )
    reports: list[PullReport] = []
    if not targets:
        for rtype, repo_id, _ in iter_repo_folders(root):
            repo = CacheRepo(root, repo_id, rtype)
            for commit in repo.snapshots():
                with _use(repo, commit):
                    reports.append(
                        verify_snapshot(repo, commit, deep=deep, strict=strict, allow_imports=allowed)
                    )
        return reports
    for target in targets:
        path = Path(target)
        located = _in_cache_snapshot(path) if path.exists() or os.path.lexists(path) else None
        if located is not None:
            repo, commit, rel = located
            only = None
            if rel is not None:
                only = [rel] if not path.is_dir() else _files_under(repo.snapshot_dir(commit), rel)
            with _use(repo, commit):
                reports.append(
                    verify_snapshot(repo, commit, deep=deep, strict=strict, only=only, allow_imports=allowed)
                )
        elif path.exists():
            reports.append(verify_path(path, strict=strict, allow_imports=allowed))
        elif isinstance(target, str) and _is_repo_id(target):
            repo = CacheRepo(root, target, repo_type)
            if not repo.root.is_dir():
                raise UsageError(f"{target!r} is neither a path nor a repo in the cache at {root}")
            with use(target, revision, cache_dir=root, repo_type=repo_type):
                commit = resolve_cached_commit(repo, revision)
                reports.append(
                    verify_snapshot(
                        repo, commit, deep=deep, strict=strict, revision=revision, allow_imports=allowed
                    )
                )
        else:
            raise UsageError(f"{str(target)!r} is neither a path nor a repo id")
    return reports


def _use(repo: CacheRepo, commit: str) -> contextlib.AbstractContextManager[object]:
    """Register the use of a snapshot found on disk (names that could not come from the Hub register nothing)."""
    if _is_repo_id(repo.repo_id) and COMMIT_RE.fullmatch(commit):
        return use(repo.repo_id, commit, cache_dir=repo.cache_dir, repo_type=repo.repo_type)
    return contextlib.nullcontext()


def _is_repo_id(target: str) -> bool:
    try:
        validate_repo_id(target)
    except UsageError:
        return False
    return True


def _files_under(snapshot: Path, rel: str) -> list[str]:
    base = snapshot / rel
    return [
        (Path(d) / n).relative_to(snapshot).as_posix() for d, _dirs, names in os.walk(base) for n in names
    ]


def _verify_against_lock(
    lock: Lock,
    targets: Sequence[str | os.PathLike[str]],
    repo_type: str,
    root: Path,
    *,
    deep: bool,
    strict: bool,
    allow_imports: Collection[str],
) -> list[PullReport]:
    """One report per locked repo (those named in ``targets``, else all), checked against the lock, each
    while its use of the locked commit is registered."""
    entries = []
    for target in targets:
        name = str(target)
        validate_repo_id(name)
        entries.append(lock.require(name, repo_type))
    reports = []
    for entry in entries or lock.repos:
        repo = CacheRepo(root, entry.repo_id, entry.repo_type)
        with use(entry.repo_id, entry.commit, cache_dir=root, repo_type=entry.repo_type):
            report = verify_locked(
                repo, entry, deep=deep, strict=strict, lockfile=lock.where, allow_imports=allow_imports
            )
            reports.append(_with_locked_signature(repo, entry, report, lock.where))
    return reports


def _with_locked_signature(
    repo: CacheRepo, entry: LockedRepo, report: PullReport, lockfile: str
) -> PullReport:
    """``report`` with the signature method the lock records for the repo checked, offline: a key or certificate
    against the snapshot's signature file (as a locked pull checks it); a sigstore identity, which needs the
    network, is said not to have been checked (``signature.not_checked``, a warning), never passed silently."""
    if entry.signature is None:
        return report
    from vcache.signing import SIGNATURE_FILE, SignatureMethod, not_checked, prepare

    method = SignatureMethod.parse(entry.signature)
    if method.kind == "sigstore":
        return not_checked(
            report,
            method,
            f"{entry.name}: {lockfile} requires the signature {method}, which cannot be checked offline "
            "(sigstore needs its transparency log and trust root), so it was not checked. Check it with network "
            f"access: `vcache pull --lock {lockfile} {entry.repo_id}`",
        )
    if not os.path.lexists(repo.snapshot_file(entry.commit, SIGNATURE_FILE)):
        return report  # a locked signature file the snapshot lacks already fails (lock.missing_file)
    tree = repo.read_tree(entry.commit)
    return prepare(method).check(report, listed=tree.keys() if tree is not None else None)
