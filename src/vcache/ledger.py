"""Per-blob verification records, so a later verify or load of an unchanged blob need not re-hash it.

One JSON file per blob under ``<repo_folder>/.vcache/ledger/<etag>.json``, written atomically. Besides the
digest the blob was checked against, a record keeps the sha256 of the bytes (for LFS blobs that is the same
digest; for small files named by their git blob sha1 it is computed once, when they are verified), which is
what a lockfile pins. Records written before the sha256 was kept have none and stay valid. A record is
trusted only while the blob is a regular file whose *stat token* (inode, size, mtime, ctime) is unchanged and
the record was written by checks at least as new as these (``CHECKS_VERSION``); anything else means "verify
again". A blob that is a symlink (to a file that may sit outside the cache and change at will), a directory or
anything else is never vouched for. ``st_ctime`` is in the token because ``os.utime`` can put size and mtime
back after an in-place edit, never the ctime. This module never decides a verdict; it remembers one.

Two derived kinds of record save the work that is done again on every offline verify or load of an unchanged
snapshot, never any hashing (each is only a shortcut to what the per-blob records and the files say):

- ``.vcache/ledger/snapshots/<commit>.json``: per snapshot file, what its per-blob record said, and the repo
  checks' findings (sharded index / config coherence) for the folder as it was;
- ``.vcache/ledger/models/<key>.json``: the transformers completeness verdict for one commit, class and
  set of architecture-relevant arguments.

Each names the files its content was derived from with their :func:`entry_state` (link target, stat token
and whether it leads straight to a regular file, or absent), and is trusted only while every one of them is
unchanged, and only by the same vcache version and ``CHECKS_VERSION`` that wrote it
(:meth:`Ledger.read_derived` refuses anything else). Whoever writes one captures the states before and after
deriving the content, and writes nothing when they differ.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from vcache._version import __version__
from vcache.cache import entry_kind, read_state, write_atomic
from vcache.hashing import hash_file
from vcache.report import Finding, findings_from_json

_HEX64 = re.compile(r"[0-9a-f]{64}")

#: Bump when the checks change in a way that should make old records untrusted. 2: GGUF, PyTorch, pickle,
#: TorchScript and ONNX files are checked (a pickle importing ``os.system`` passed version 1).
CHECKS_VERSION = 2
#: Bump when the layout of the derived (snapshot, model) records changes.
DERIVED_FORMAT = 1


class EntryState(NamedTuple):
    """What :func:`entry_state` found at a path that has something: the link target (None when the path is not
    a symlink), the stat token of what it resolves to (``ino``, ``size``, ``mtime_ns``, ``ctime_ns``; None for a
    dangling link; no ``st_dev``, see :class:`StatToken`) and whether that is a regular file reached in at most
    one hop.

    A derived record stores it as the JSON list of these six fields in this order (how ``json`` writes a
    tuple); :meth:`from_json` reads it back, so a stored state compares equal to a fresh one.
    """

    link: str | None
    ino: int | None
    size: int | None
    mtime_ns: int | None
    ctime_ns: int | None
    regular: bool

    @classmethod
    def from_json(cls, value: Any) -> EntryState | None:
        """A state as a record holds it (a six-item list, or null for "nothing there"); raises
        :class:`ValueError` for anything else."""
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != len(cls._fields):
            raise ValueError(f"not an entry state: {value!r:.80}")
        link, ino, size, mtime_ns, ctime_ns, regular = value
        numbers = (ino, size, mtime_ns, ctime_ns)
        if (
            not isinstance(link, str | None)
            or not all(n is None or (isinstance(n, int) and not isinstance(n, bool)) for n in numbers)
            or not isinstance(regular, bool)
        ):
            raise ValueError(f"not an entry state: {value!r:.80}")
        return cls(link, ino, size, mtime_ns, ctime_ns, regular)


def states_from_json(value: Any) -> dict[str, EntryState | None]:
    """A ``{name: state}`` mapping as a record holds it (see :meth:`EntryState.from_json`); raises
    :class:`ValueError` for anything else."""
    if not isinstance(value, dict):
        raise ValueError(f"not a mapping of entry states: {value!r:.80}")
    return {str(name): EntryState.from_json(state) for name, state in value.items()}


@dataclass(frozen=True)
class StatToken:
    """What must not change for a record to stay valid: inode, size, mtime and ctime (``os.utime`` can put
    the mtime back after an in-place edit; nothing but the kernel sets the ctime).

    The device number is kept for diagnosis but not compared: NFS/Lustre clients see different ``st_dev``
    for the same file, and comparing it would make every node of a shared cache re-verify every blob.
    """

    dev: int = field(compare=False)
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> StatToken:
        """The token of the regular file at ``path`` (a symlink is not followed).

        Raises :class:`OSError` when ``path`` is missing or is not a regular file: only a regular file's own
        stat says whether its bytes changed.
        """
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({entry_kind(path)})", str(path))
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def entry_state(path: str | os.PathLike[str]) -> EntryState | None:
    """What is at ``path`` now: None when nothing is, else its link target (None when it is not a symlink), the
    stat token of what it resolves to (stat fields None for a dangling link), and whether that is a regular file
    reached in at most one hop (a snapshot link straight to a blob that is a regular file; False when the blob
    is itself a symlink, even to the very inode that was verified).

    Raises :class:`OSError` when it cannot tell (no permission, a link loop): callers then trust nothing.
    """
    try:
        link: str | None = os.readlink(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: there is something, and it is not a symlink
            raise
        link = None
    # The link's one hop, resolved by the kernel from the folder the link is in (not normalised: ".." after
    # a symlinked folder must mean what it means to the kernel).
    hop = path if link is None else os.path.join(os.path.dirname(path), link)
    try:
        st = os.lstat(hop)
        regular = stat.S_ISREG(st.st_mode)
        if not regular:
            st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None if link is None else EntryState(link, None, None, None, None, False)
    return EntryState(link, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, regular)


@dataclass(frozen=True)
class LedgerRecord:
    """A remembered verification of one blob: its findings, the format it was checked as and the checks
    that ran (None and empty for a record that does not know them, such as a restored quarantine entry)."""

    etag: str
    digest: str
    size: int
    stat: StatToken
    findings: tuple[Finding, ...]
    vcache_version: str
    checks_version: int
    verified_at: float
    restored: bool = False
    sha256: str | None = None
    format: str | None = None
    checks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The on-disk form (``sha256`` only when known)."""
        out: dict[str, Any] = {
            "etag": self.etag,
            "digest": self.digest,
            "size": self.size,
            "stat": {
                "dev": self.stat.dev,
                "ino": self.stat.ino,
                "size": self.stat.size,
                "mtime_ns": self.stat.mtime_ns,
                "ctime_ns": self.stat.ctime_ns,
            },
            "findings": [f.to_json() for f in self.findings],
            "vcache_version": self.vcache_version,
            "checks_version": self.checks_version,
            "verified_at": self.verified_at,
            "restored": self.restored,
            "format": self.format,
            "checks": list(self.checks),
        }
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerRecord:
        """Parse the on-disk form (raises KeyError/TypeError/ValueError when malformed, or written before the
        token held the ctime: such a record is not trusted, the blob is verified again)."""
        st = data["stat"]
        return cls(
            etag=str(data["etag"]),
            digest=str(data["digest"]),
            size=int(data["size"]),
            stat=StatToken(
                int(st["dev"]), int(st["ino"]), int(st["size"]), int(st["mtime_ns"]), int(st["ctime_ns"])
            ),
            findings=findings_from_json(data.get("findings", [])),
            vcache_version=str(data.get("vcache_version", "")),
            checks_version=int(data.get("checks_version", 0)),
            verified_at=float(data.get("verified_at", 0.0)),
            restored=bool(data.get("restored", False)),
            sha256=_sha256_or_none(data.get("sha256")),
            format=None if data.get("format") is None else str(data["format"]),
            checks=tuple(str(c) for c in data.get("checks", [])),
        )


def _sha256_or_none(value: Any) -> str | None:
    """A recorded sha256 when it is one (64 lowercase hex); anything else is as if none was recorded."""
    return value if isinstance(value, str) and _HEX64.fullmatch(value) else None


class Ledger:
    """The records of one repo folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, etag: str) -> Path:
        return self.directory / f"{etag}.json"

    def record(
        self,
        etag: str,
        blob: Path,
        digest: str,
        findings: Sequence[Finding],
        *,
        restored: bool = False,
        sha256: str | None = None,
        format: str | None = None,
        checks: Sequence[str] = (),
    ) -> LedgerRecord:
        """Remember that ``blob`` (now at its final path) was verified with these findings, as ``format``
        with ``checks``.

        ``sha256`` is the sha256 of the verified bytes when the caller knows it (taken from ``digest`` when
        that is a sha256). Raises :class:`OSError` when ``blob`` is not a regular file: nothing else is ever
        vouched for.
        """
        if sha256 is None and digest.startswith("sha256:"):
            sha256 = digest.removeprefix("sha256:")
        stat = StatToken.of(blob)
        rec = LedgerRecord(
            etag=etag,
            digest=digest,
            size=stat.size,
            stat=stat,
            findings=tuple(findings),
            vcache_version=__version__,
            checks_version=CHECKS_VERSION,
            verified_at=time.time(),
            restored=restored,
            sha256=_sha256_or_none(sha256),
            format=format,
            checks=tuple(checks),
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(etag), json.dumps(rec.to_json(), indent=1).encode())
        return rec

    def get(self, etag: str) -> LedgerRecord | None:
        """The stored record for ``etag``, valid or not (None when absent, unreadable or malformed)."""
        data = read_state(self._path(etag))
        if data is None:
            return None
        try:
            return LedgerRecord.from_json(data)
        except (ValueError, KeyError, TypeError):
            return None

    def lookup(self, etag: str, blob: Path) -> LedgerRecord | None:
        """The record for ``etag`` if it still describes ``blob`` exactly (a regular file with the same stat
        token); None means verify again."""
        rec = self.get(etag)
        if rec is None or rec.etag != etag or rec.checks_version < CHECKS_VERSION:
            return None
        try:
            current = StatToken.of(blob)
        except OSError:
            return None
        return rec if current == rec.stat else None

    def sha256(self, etag: str, blob: Path) -> str | None:
        """The sha256 of ``blob``'s bytes as verified, when its record for ``etag`` is valid (None otherwise).

        A blob named by a sha256 was verified against that name, so the name is the answer. Otherwise it is
        the sha256 the record kept; a record written before vcache kept one has the blob hashed now and the
        record rewritten with it, provided the blob did not change meanwhile (best effort: a cache that
        cannot be written to is hashed again next time).
        """
        rec = self.lookup(etag, blob)
        if rec is None:
            return None
        if _HEX64.fullmatch(etag):
            return etag
        if rec.sha256 is not None:
            return rec.sha256
        value = hash_file(blob, "sha256").hexdigest
        again = self.lookup(etag, blob)
        if again is None or again.stat != rec.stat:
            return None  # changed while it was hashed: these are not the verified bytes
        with contextlib.suppress(OSError):
            self.record(
                etag,
                blob,
                rec.digest,
                rec.findings,
                restored=rec.restored,
                sha256=value,
                format=rec.format,
                checks=rec.checks,
            )
        return value

    def forget(self, etag: str) -> None:
        """Drop the record (the blob was quarantined or replaced)."""
        with contextlib.suppress(FileNotFoundError):
            self._path(etag).unlink()

    def record_state(self, etag: str) -> EntryState | None:
        """The state of ``etag``'s record file, as :func:`entry_state` gives it for a regular file (the link
        target is not looked at: the stat token is of the file a read gets). Records are replaced, never
        rewritten in place, so any rewrite or removal changes it."""
        try:
            st = os.stat(os.path.join(self.directory, f"{etag}.json"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return EntryState(
            None, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, stat.S_ISREG(st.st_mode)
        )

    # -- derived records (snapshots/, models/) -------------------------------------------------------------

    def snapshot_record_path(self, commit: str) -> Path:
        """``snapshots/<commit>.json``: the remembered verify of one snapshot."""
        return self.directory / "snapshots" / f"{commit}.json"

    def model_record_path(self, key: str) -> Path:
        """``models/<key>.json``: one remembered completeness verdict (``key`` is a hex digest)."""
        return self.directory / "models" / f"{key}.json"

    def read_derived(self, path: Path) -> dict[str, Any] | None:
        """A derived record written by this vcache version and these checks; None when absent, unreadable,
        malformed or written by other ones (then: derive again)."""
        data = read_state(path)
        if (
            data is None
            or data.get("format") != DERIVED_FORMAT
            or data.get("vcache_version") != __version__
            or data.get("checks_version") != CHECKS_VERSION
        ):
            return None
        return data

    def write_derived(self, path: Path, body: dict[str, Any]) -> bool:
        """Write a derived record atomically (with the format and versions it is valid for); False when the
        cache is not writable here (nothing else happens: the record only saves work).

        On a read-only cache (a read-only mount, no permission) nothing is even attempted.
        """
        if not _can_create_in(path.parent):
            return False
        data = {
            "format": DERIVED_FORMAT,
            "vcache_version": __version__,
            "checks_version": CHECKS_VERSION,
            **body,
        }
        try:
            encoded = json.dumps(data, separators=(",", ":")).encode()
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, encoded)
        except (OSError, TypeError, ValueError):
            return False
        return True


def _can_create_in(directory: Path) -> bool:
    """True when ``directory`` (or, when it does not exist yet, its nearest existing parent) accepts new files."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return os.access(candidate, os.W_OK | os.X_OK)
    return False
