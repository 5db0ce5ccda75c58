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
from vcache.report import PullReport
from vcache.usage import use
from vcache.verify import resolve_cached_commit, verify_path, verify_snapshot

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
) -> list[PullReport]:
    """Verify each target offline and return one report per target.

    A target is a repo id present in the cache (its ``revision``, default ``main``), a snapshot folder or
    a file inside one (ledger-aware; failing blobs are quarantined), or any other file or folder (structure
    and content only; nothing is moved). No targets: every snapshot of every repo in the cache.
    ``allow_imports`` (``module.name`` entries) widens the allowlist of pickle globals (as for ``pull``).
    """
    if revision is not None:
        validate_revision(revision)
    try:
        allowed = parse_allow_imports(allow_imports)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
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
