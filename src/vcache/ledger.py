"""Per-blob verification records, so a later verify or load of an unchanged blob need not re-hash it.

One JSON file per blob under ``<repo_folder>/.vcache/ledger/<etag>.json``, written atomically. A record is
trusted only while the blob's *stat token* (device, inode, size, mtime) is unchanged and the record was
written by checks at least as new as these (``CHECKS_VERSION``); anything else means "verify again". This
module never decides a verdict; it remembers one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcache._version import __version__
from vcache.cache import write_atomic
from vcache.report import Finding, findings_from_json

#: Bump when the checks change in a way that should make old records untrusted.
CHECKS_VERSION = 1


@dataclass(frozen=True)
class StatToken:
    """What must not change for a record to stay valid."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> StatToken:
        """The token of the file ``path`` points to (symlinks followed)."""
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class LedgerRecord:
    """A remembered verification of one blob."""

    etag: str
    digest: str
    size: int
    stat: StatToken
    findings: tuple[Finding, ...]
    vcache_version: str
    checks_version: int
    verified_at: float
    restored: bool = False

    def to_json(self) -> dict[str, Any]:
        """The on-disk form."""
        return {
            "etag": self.etag,
            "digest": self.digest,
            "size": self.size,
            "stat": {
                "dev": self.stat.dev,
                "ino": self.stat.ino,
                "size": self.stat.size,
                "mtime_ns": self.stat.mtime_ns,
            },
            "findings": [f.to_json() for f in self.findings],
            "vcache_version": self.vcache_version,
            "checks_version": self.checks_version,
            "verified_at": self.verified_at,
            "restored": self.restored,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerRecord:
        """Parse the on-disk form (raises KeyError/TypeError/ValueError when malformed)."""
        st = data["stat"]
        return cls(
            etag=str(data["etag"]),
            digest=str(data["digest"]),
            size=int(data["size"]),
            stat=StatToken(int(st["dev"]), int(st["ino"]), int(st["size"]), int(st["mtime_ns"])),
            findings=findings_from_json(data.get("findings", [])),
            vcache_version=str(data.get("vcache_version", "")),
            checks_version=int(data.get("checks_version", 0)),
            verified_at=float(data.get("verified_at", 0.0)),
            restored=bool(data.get("restored", False)),
        )


class Ledger:
    """The records of one repo folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, etag: str) -> Path:
        return self.directory / f"{etag}.json"

    def record(
        self, etag: str, blob: Path, digest: str, findings: Sequence[Finding], *, restored: bool = False
    ) -> LedgerRecord:
        """Remember that ``blob`` (now at its final path) was verified with these findings."""
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
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(etag), json.dumps(rec.to_json(), indent=1).encode())
        return rec

    def get(self, etag: str) -> LedgerRecord | None:
        """The stored record for ``etag``, valid or not (None when absent or unreadable)."""
        try:
            return LedgerRecord.from_json(json.loads(self._path(etag).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def lookup(self, etag: str, blob: Path) -> LedgerRecord | None:
        """The record for ``etag`` if it still describes ``blob`` exactly; None means verify again."""
        rec = self.get(etag)
        if rec is None or rec.etag != etag or rec.checks_version < CHECKS_VERSION:
            return None
        try:
            current = StatToken.of(blob)
        except OSError:
            return None
        return rec if current == rec.stat else None

    def forget(self, etag: str) -> None:
        """Drop the record (the blob was quarantined or replaced)."""
        with contextlib.suppress(FileNotFoundError):
            self._path(etag).unlink()
