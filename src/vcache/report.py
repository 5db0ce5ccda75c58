"""Findings, per-file reports and pull reports, and their JSON form.

A :class:`Finding` is one observation about one file (a code, a severity, a message a person can act on,
optionally the tensor it concerns and structured detail). A file's verdict is derived from its findings
by :func:`verdict_of`; it is never stored separately, so it cannot disagree with them.

This module owns the JSON shape documented in the README; it never decides what is wrong with a file.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.StrEnum):
    """How much a finding matters: ``fail`` blocks the file, ``warn`` is reported, ``info`` is context."""

    FAIL = "fail"
    WARN = "warn"
    INFO = "info"


class Verdict(enum.StrEnum):
    """The outcome for a file or a whole report."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


#: The finding code of a file a pull could not download (its error is also in ``PullReport.errors``).
NOT_FETCHED = "transfer.failed"


@dataclass(frozen=True)
class Finding:
    """One observation about a file.

    ``code`` is stable and dotted (``digest_mismatch``, ``safetensors.header_too_large``, ``tensor.nan``);
    match on it, never on ``message``, whose wording may improve.
    """

    code: str
    severity: Severity
    message: str
    tensor: str | None = None
    detail: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The finding as the README's JSON object (optional keys omitted when empty)."""
        out: dict[str, Any] = {"code": self.code, "severity": str(self.severity), "message": self.message}
        if self.tensor is not None:
            out["tensor"] = self.tensor
        if self.detail:
            out["detail"] = dict(self.detail)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_json`."""
        return cls(
            code=str(data["code"]),
            severity=Severity(data["severity"]),
            message=str(data["message"]),
            tensor=data.get("tensor"),
            detail=data.get("detail"),
        )


def fail(code: str, message: str, *, tensor: str | None = None, **detail: Any) -> Finding:
    """Shorthand for a failing finding."""
    return Finding(code, Severity.FAIL, message, tensor, detail or None)


def warn(code: str, message: str, *, tensor: str | None = None, **detail: Any) -> Finding:
    """Shorthand for a warning."""
    return Finding(code, Severity.WARN, message, tensor, detail or None)


def info(code: str, message: str, *, tensor: str | None = None, **detail: Any) -> Finding:
    """Shorthand for an informational finding."""
    return Finding(code, Severity.INFO, message, tensor, detail or None)


def verdict_of(findings: Iterable[Finding], *, strict: bool = False) -> Verdict:
    """The verdict the findings imply; with ``strict`` every warning counts as a failure."""
    verdict = Verdict.OK
    for f in findings:
        if f.severity is Severity.FAIL or (strict and f.severity is Severity.WARN):
            return Verdict.FAIL
        if f.severity is Severity.WARN:
            verdict = Verdict.WARN
    return verdict


def combine_verdicts(verdicts: Iterable[Verdict]) -> Verdict:
    """The worst of several verdicts (``ok`` when there are none)."""
    order = {Verdict.OK: 0, Verdict.WARN: 1, Verdict.FAIL: 2}
    return max(verdicts, key=order.__getitem__, default=Verdict.OK)


@dataclass(frozen=True)
class FileReport:
    """What happened to one file: where it is, what it should be, and what was found.

    ``digest`` is the expected digest as ``"sha256:<hex>"`` or ``"gitsha1:<hex>"`` (None for files that
    never came with one); ``actual_digest`` is what the bytes hashed to when that differs or is known.
    ``format`` is the format the bytes were checked as (``safetensors``, ``gguf``, ``pytorch-zip``,
    ``pytorch-legacy``, ``pickle``, ``torchscript``, ``onnx``, ``json`` or ``other``; None when they were
    never read: missing, not fetched) and ``checks`` what ran on them, from ``digest``, ``sniff``,
    ``structure``, ``content`` and ``imports`` (empty: nothing did).
    """

    path: str
    size: int | None = None
    digest: str | None = None
    findings: tuple[Finding, ...] = ()
    attempts: int = 0
    bytes_transferred: int = 0
    actual_digest: str | None = None
    cached: bool = False
    quarantine_id: str | None = None
    location: str | None = None
    strict: bool = False
    format: str | None = None
    checks: tuple[str, ...] = ()

    @property
    def verdict(self) -> Verdict:
        """Derived from the findings (and ``strict``)."""
        return verdict_of(self.findings, strict=self.strict)

    def to_json(self) -> dict[str, Any]:
        """The README's per-file JSON object."""
        out: dict[str, Any] = {
            "path": self.path,
            "verdict": str(self.verdict),
            "format": self.format,
            "checks": list(self.checks),
            "findings": [f.to_json() for f in self.findings],
        }
        if self.size is not None:
            out["size"] = self.size
        if self.digest is not None:
            out["digest"] = self.digest
        if self.actual_digest is not None and self.actual_digest != self.digest:
            out["actual_digest"] = self.actual_digest
        out["attempts"] = self.attempts
        out["bytes_transferred"] = self.bytes_transferred
        out["cached"] = self.cached
        if self.quarantine_id is not None:
            out["quarantine_id"] = self.quarantine_id
        if self.location is not None:
            out["location"] = self.location
        return out


@dataclass(frozen=True)
class PullReport:
    """The result of a pull or a verify: one :class:`FileReport` per file, plus where they ended up."""

    repo_id: str | None
    files: tuple[FileReport, ...]
    repo_type: str = "model"
    revision: str | None = None
    commit: str | None = None
    snapshot_path: str | None = None
    elapsed: float = 0.0
    strict: bool = False
    errors: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> Verdict:
        """The worst file verdict; a report with errors (files that could not be fetched) fails."""
        if self.errors:
            return Verdict.FAIL
        return combine_verdicts(f.verdict for f in self.files)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return self.verdict is not Verdict.FAIL

    @property
    def bytes_transferred(self) -> int:
        """Total body bytes received over the network for this report."""
        return sum(f.bytes_transferred for f in self.files)

    @property
    def failed(self) -> tuple[FileReport, ...]:
        """The files whose verdict is ``fail``."""
        return tuple(f for f in self.files if f.verdict is Verdict.FAIL)

    @property
    def judged_bad(self) -> tuple[FileReport, ...]:
        """The failed files whose bytes (or the repo checks) failed, not those that could not be fetched.

        Their presence makes a pull a verification failure (CLI exit 1) even when other files could not
        be fetched (``errors``, exit 3 otherwise).
        """
        return tuple(f for f in self.failed if not any(x.code == NOT_FETCHED for x in f.findings))

    def to_json(self) -> dict[str, Any]:
        """The README's JSON document for ``--json``."""
        return {
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "revision": self.revision,
            "commit": self.commit,
            "snapshot_path": self.snapshot_path,
            "verdict": str(self.verdict),
            "elapsed": round(self.elapsed, 3),
            "bytes_transferred": self.bytes_transferred,
            "errors": list(self.errors),
            "files": [f.to_json() for f in self.files],
        }


def human_bytes(n: float | None) -> str:
    """``1.5 GiB``-style sizes for messages and tables (``-`` for unknown)."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def findings_from_json(items: Sequence[Mapping[str, Any]]) -> tuple[Finding, ...]:
    """Parse a list of JSON findings (as written by :meth:`Finding.to_json`)."""
    return tuple(Finding.from_json(x) for x in items)
