"""Quarantine: failing files moved aside with a report, out of every load path, never deleted.

An entry is ``<repo_folder>/.vcache/quarantine/<id>/`` holding the file's bytes (``data``) and
``report.json`` (repo, commit, path, expected and actual digest, findings, time). Only :func:`purge`
deletes, and only when asked. :func:`restore` puts a file back where it came from (an explicit override
by the user, recorded as such in the ledger) or copies it out.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcache.cache import (
    CacheRepo,
    entry_kind,
    iter_repo_folders,
    read_state,
    translate_os_error,
    write_atomic,
)
from vcache.errors import DiskFull, TransferError, UsageError
from vcache.ledger import Ledger
from vcache.report import Finding, findings_from_json

DATA_NAME = "data"
REPORT_NAME = "report.json"


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined file and why."""

    id: str
    folder: Path
    repo_id: str
    repo_type: str
    commit: str | None
    path: str
    etag: str | None
    expected_digest: str | None
    actual_digest: str | None
    size: int | None
    findings: tuple[Finding, ...]
    quarantined_at: float
    source: str

    @property
    def data(self) -> Path:
        """The quarantined bytes."""
        return self.folder / DATA_NAME

    def to_json(self) -> dict[str, Any]:
        """The ``report.json`` form."""
        return {
            "id": self.id,
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "commit": self.commit,
            "path": self.path,
            "etag": self.etag,
            "expected_digest": self.expected_digest,
            "actual_digest": self.actual_digest,
            "size": self.size,
            "findings": [f.to_json() for f in self.findings],
            "quarantined_at": self.quarantined_at,
            "quarantined_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.quarantined_at)),
            "source": self.source,
        }


def quarantine_file(
    repo: CacheRepo,
    data_path: Path,
    *,
    path: str,
    commit: str | None,
    etag: str | None,
    expected_digest: str | None,
    actual_digest: str | None,
    findings: Sequence[Finding],
    source: str,
) -> QuarantineEntry:
    """Move ``data_path`` into a new quarantine entry of ``repo`` and write its report.

    ``source`` says where the bytes came from (``"download"``, ``"cache"``). The move is a rename on the
    same filesystem; the bytes are kept exactly as they were.
    """
    now = time.time()
    qid = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{(etag or 'noetag')[:12]}-{secrets.token_hex(2)}"
    folder = repo.quarantine_dir / qid
    try:
        folder.mkdir(parents=True)
        size = os.lstat(data_path).st_size  # a symlink is moved as it is, never followed
        os.replace(data_path, folder / DATA_NAME)
    except OSError as exc:
        raise translate_os_error(exc, f"quarantining {path}") from exc
    entry = QuarantineEntry(
        id=qid,
        folder=folder,
        repo_id=repo.repo_id,
        repo_type=repo.repo_type,
        commit=commit,
        path=path,
        etag=etag,
        expected_digest=expected_digest,
        actual_digest=actual_digest,
        size=size,
        findings=tuple(findings),
        quarantined_at=now,
        source=source,
    )
    write_atomic(folder / REPORT_NAME, json.dumps(entry.to_json(), indent=1).encode())
    return entry


def _load(folder: Path) -> QuarantineEntry | None:
    data = read_state(folder / REPORT_NAME)
    if data is None:
        return None
    try:
        return QuarantineEntry(
            id=str(data["id"]),
            folder=folder,
            repo_id=str(data["repo_id"]),
            repo_type=str(data.get("repo_type", "model")),
            commit=data.get("commit"),
            path=str(data["path"]),
            etag=data.get("etag"),
            expected_digest=data.get("expected_digest"),
            actual_digest=data.get("actual_digest"),
            size=data.get("size"),
            findings=findings_from_json(data.get("findings", [])),
            quarantined_at=float(data.get("quarantined_at", 0.0)),
            source=str(data.get("source", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def list_entries(cache_dir: Path) -> list[QuarantineEntry]:
    """Every quarantine entry in every repo of the cache, oldest first."""
    out: list[QuarantineEntry] = []
    for _type, _repo, folder in iter_repo_folders(cache_dir):
        qdir = folder / ".vcache" / "quarantine"
        if not qdir.is_dir():
            continue
        for child in sorted(qdir.iterdir()):
            entry = _load(child)
            if entry is not None:
                out.append(entry)
    return sorted(out, key=lambda e: e.quarantined_at)


def find_entry(cache_dir: Path, qid: str) -> QuarantineEntry:
    """The entry with this id (a unique prefix is enough), else :class:`UsageError`."""
    matches = [e for e in list_entries(cache_dir) if e.id == qid or e.id.startswith(qid)]
    if len(matches) != 1:
        what = "no" if not matches else "more than one"
        raise UsageError(f"{what} quarantine entry matches {qid!r}; see `vcache quarantine list`")
    return matches[0]


def restore(cache_dir: Path, qid: str, *, to: str | os.PathLike[str] | None = None) -> Path:
    """Give a quarantined file back.

    With ``to``, copy the bytes out (the entry stays): into ``to`` under the file's own name when ``to`` is
    a folder, else to the file ``to``. A ``to`` that ends with a slash names a folder, which must exist;
    so must the folder a file path is in (:class:`UsageError` otherwise). A target that cannot be written
    raises :class:`~vcache.errors.TransferError` (:class:`~vcache.errors.DiskFull` when full), and nothing
    is left at the target. Without ``to``, move the bytes back to ``blobs/<etag>``, relink the snapshot path
    and record the override in the ledger — refused when a blob is already in place (a good copy was fetched
    since; purge the entry instead), and for an entry that holds no file's bytes (a blob that was a symlink
    or a directory, set aside by a pull).
    """
    entry = find_entry(cache_dir, qid)
    kind = entry_kind(entry.data)
    if kind is None:
        raise TransferError(
            f"cannot read the quarantined bytes {entry.data} (they are gone); nothing was restored",
            path=entry.path,
        )
    if kind != "file":
        raise UsageError(
            f"entry {entry.id} holds a {kind or 'nothing'} where {entry.path}'s blob was, not a file's bytes; "
            f"nothing to restore (it stays in {entry.folder} until `vcache quarantine purge {entry.id}`)"
        )
    if to is not None:
        return _copy_out(entry, os.fspath(to))
    if not entry.etag or not entry.commit:
        raise UsageError(f"entry {entry.id} has no blob name or commit to restore to; use --to PATH")
    repo = CacheRepo(cache_dir, entry.repo_id, entry.repo_type)
    blob = repo.blob_path(entry.etag)
    if blob.exists():
        raise UsageError(
            f"{entry.path} already has a blob in the cache ({blob}); nothing restored. "
            f"Use `vcache quarantine purge {entry.id}` to drop the quarantined copy, or --to PATH to copy it out"
        )
    repo.blobs.mkdir(parents=True, exist_ok=True)
    os.replace(entry.data, blob)
    repo.link(entry.commit, entry.path, entry.etag)
    Ledger(repo.ledger_dir).record(
        entry.etag, blob, entry.actual_digest or entry.expected_digest or "", entry.findings, restored=True
    )
    shutil.rmtree(entry.folder)
    return repo.snapshot_file(entry.commit, entry.path)


def _copy_out(entry: QuarantineEntry, to: str) -> Path:
    """Copy the entry's bytes to ``to`` (see :func:`restore`) through a temporary file beside the target."""
    target = Path(to)
    if target.is_dir():
        dest = target / Path(entry.path).name
    elif to.endswith(("/", os.sep)):
        raise UsageError(f"--to {to}: no such folder; create it first, or give a file path to copy to")
    elif not target.parent.is_dir():
        raise UsageError(f"--to {to}: the folder {target.parent} does not exist; create it first")
    else:
        dest = target
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        shutil.copyfile(entry.data, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.filename == str(entry.data):
            raise TransferError(
                f"cannot read the quarantined bytes {entry.data} ({exc.strerror or exc}); nothing was copied",
                path=entry.path,
            ) from exc
        full = translate_os_error(exc, f"copying {entry.path} to {dest}", where=dest.parent, path=entry.path)
        if isinstance(full, DiskFull):
            raise full from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            raise UsageError(f"--to {to}: cannot write {dest} ({exc.strerror})") from exc
        raise TransferError(
            f"cannot write {dest} ({exc.strerror or exc}); choose a folder you can write to with --to. "
            f"The quarantined copy is kept ({entry.data}).",
            path=entry.path,
        ) from exc
    return dest


def purge(
    cache_dir: Path, qid: str | None = None, *, older_than: float | None = None, now: float | None = None
) -> list[str]:
    """Delete one entry (``qid``) or, with ``qid=None``, all of them, or with ``older_than`` only those
    quarantined at least that many seconds ago (``now``: the current time); returns the ids deleted."""
    entries = [find_entry(cache_dir, qid)] if qid is not None else list_entries(cache_dir)
    if older_than is not None:
        at = time.time() if now is None else now
        entries = [e for e in entries if at - e.quarantined_at >= older_than]
    for e in entries:
        shutil.rmtree(e.folder)
    return [e.id for e in entries]
