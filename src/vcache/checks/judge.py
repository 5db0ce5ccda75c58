"""The judgement: is this file good? One decision for every caller (pull, verify, scan, from_pretrained).

A file is judged from what is known about it: its repo path (which decides what it should be), the local
path of its bytes, the publisher's size and digest when they are known, and whatever was already computed
while the bytes streamed past (the byte count, the digest, a :class:`~vcache.checks.StreamingCheck`).
:func:`judge` computes only what is missing — it hashes the file only when a digest is expected and none
was computed — and returns a frozen :class:`Judgement`: the findings, the verdict they imply, the parsed
safetensors header (so the repo-level checks never parse it again), and what ran.

The policy, in one place:

- the size and the digest are compared first (``size_mismatch``, ``digest_mismatch``: fail; against a
  lockfile's size and sha256 instead of the publisher's, ``lock.size_mismatch``, ``lock.digest_mismatch``);
- the bytes are *vouched* for only when a publisher digest is known and both matched; the content scan
  then reports zero-fill damage as a warning (the publisher shipped it), otherwise as a failure;
- a content scan already made while the bytes were hashed is used instead of reading the file again, but
  only when the digest matched (it was made as vouched);
- the file checks (:func:`~vcache.checks.check_file`: sniff, structure, content) come first in the
  findings: what the bytes are says more than "the hash differs";
- the verdict is derived from the findings (:func:`~vcache.report.verdict_of`), never stored.

It only reads: moving, quarantining or recording a file is the caller's business. It raises only
:class:`OSError` when the file cannot even be stat'ed or hashed; every problem with its content is a finding.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vcache.checks import StreamingCheck, check_file
from vcache.hashing import Digest, hash_file
from vcache.report import Finding, Verdict, fail, verdict_of

if TYPE_CHECKING:
    from vcache.checks.safetensors import SafetensorsHeader

__all__ = [
    "MISMATCH_CODES",
    "Judgement",
    "digest_mismatch",
    "judge",
    "lock_digest_mismatch",
    "lock_size_mismatch",
    "parsed_headers",
    "size_mismatch",
    "still_stands",
]

#: The codes that say the bytes are not the expected ones, the publisher's or the lockfile's (as opposed to
#: the expected bytes being bad): fetching again may help.
MISMATCH_CODES = ("size_mismatch", "digest_mismatch", "lock.size_mismatch", "lock.digest_mismatch")


@dataclass(frozen=True)
class Judgement:
    """What was decided about one file.

    ``findings`` are every file-level finding, in report order; ``verdict`` derives from them (with
    ``strict`` every warning fails). ``size`` is the byte count judged (received, or on disk);
    ``actual_digest`` what the bytes hash to (None when no digest was expected or given: nothing hashed).
    ``vouched`` says a publisher digest matched. ``header`` is the parsed safetensors header when the
    structure check found a sound one. ``format`` is what the bytes were judged as (one of
    :data:`~vcache.checks.FORMATS`, recognised by content with the name as a hint; see
    :func:`~vcache.checks.check_file`). ``checks`` names what ran, in order, from ``"digest"``, ``"sniff"``,
    ``"structure"``, ``"content"``, ``"imports"``.
    """

    name: str
    findings: tuple[Finding, ...]
    size: int
    actual_digest: Digest | None
    vouched: bool
    format: str
    checks: tuple[str, ...]
    strict: bool = False
    header: SafetensorsHeader | None = field(default=None, repr=False)

    @property
    def verdict(self) -> Verdict:
        """The verdict the findings imply (``strict``: warnings fail too)."""
        return verdict_of(self.findings, strict=self.strict)

    @property
    def mismatch(self) -> bool:
        """The bytes are not the publisher's (size or digest differ): fetching again may help."""
        return any(f.code in MISMATCH_CODES for f in self.findings)


def judge(
    path: Path,
    name: str,
    *,
    expected_size: int | None = None,
    expected_digest: Digest | None = None,
    actual_size: int | None = None,
    actual_digest: Digest | None = None,
    streamed: StreamingCheck | None = None,
    strict: bool = False,
    against_lock: bool = False,
    allow_imports: Collection[str] = (),
    root: Path | None = None,
) -> Judgement:
    """Judge the file at ``path`` whose repo path is ``name``; see the module docstring for the policy.

    ``expected_size`` / ``expected_digest`` are the publisher's (None: unknown, nothing to compare).
    ``actual_size`` is the byte count received while the bytes streamed in (None: the size on disk, and
    a mismatch is worded as a file truncated or overwritten on disk); ``actual_digest`` the digest computed
    meanwhile (None: the file is hashed here when a digest is expected). ``streamed`` is the content scan
    fed those same bytes, used when the digest matched. ``against_lock`` says the expected size and digest
    are a lockfile's (a sha256 pinned by the user), not the publisher's: the same comparison, reported with
    the ``lock.*`` codes. ``allow_imports`` (``module.name`` entries) widens the allowlist of pickle globals
    for a user who trusts the repo; ``root`` is the folder the repo's files are in when the bytes at ``path``
    are ``root/name``'s (see :func:`~vcache.checks.check_file`).
    """
    size = os.stat(path).st_size if actual_size is None else actual_size
    mismatches: list[Finding] = []
    if expected_size is not None and size != expected_size:
        if against_lock:
            mismatches.append(lock_size_mismatch(name, expected_size, size))
        else:
            mismatches.append(size_mismatch(name, expected_size, size, received=actual_size is not None))
    checks: tuple[str, ...] = ()
    if expected_digest is not None:
        if actual_digest is None:
            actual_digest = hash_file(path, expected_digest.algorithm)
        checks = ("digest",)
        if actual_digest != expected_digest:
            mismatch = lock_digest_mismatch if against_lock else digest_mismatch
            mismatches.append(mismatch(name, expected_digest, actual_digest))
    vouched = expected_digest is not None and not mismatches
    # The streamed scan judged these very bytes as vouched; when they are not, the file is scanned again.
    content = streamed.findings(path) if vouched and streamed is not None else None
    check = check_file(
        path, name, vouched=vouched, content_findings=content, allow_imports=allow_imports, root=root
    )
    return Judgement(
        name=name,
        # What the bytes are (a pointer, a truncated header) says more than "the hash differs": listed first.
        findings=(*check.findings, *mismatches),
        size=size,
        actual_digest=actual_digest,
        vouched=vouched,
        format=check.format,
        checks=checks + check.checks,
        strict=strict,
        header=check.header,
    )


def still_stands(findings: Iterable[Finding], allow_imports: Collection[str]) -> bool:
    """Whether the findings of an earlier judgement (a ledger record) still stand for a caller that allows
    ``allow_imports``: not when that judgement passed pickle globals only because they were allowed then and
    this caller does not allow them, nor when it refused globals this caller allows. The file is then judged
    again, under this caller's allowlist."""
    from vcache.checks.pickles import allowlist_agrees

    return allowlist_agrees(findings, allow_imports)


def parsed_headers(judgements: Iterable[Judgement]) -> dict[str, SafetensorsHeader]:
    """The safetensors headers these judgements parsed, by repo path: what the repo-level checks (sharded
    index, config coherence) take instead of parsing those files again. Pass only judgements of files the
    folder still holds; a file without a sound header is left out, so those checks read it themselves and
    say why it is broken."""
    return {j.name: j.header for j in judgements if j.header is not None}


def size_mismatch(name: str, expected: int, actual: int, *, received: bool) -> Finding:
    """The finding for a file whose byte count is not the publisher's: ``received`` while downloading, or
    found on disk (then it was truncated or overwritten there)."""
    if received:
        message = f"{name}: received {actual} bytes, the publisher's file has {expected}"
    else:
        message = (
            f"{name}: {actual} bytes on disk, the publisher's file has {expected}; "
            "it is truncated or overwritten — fetch it again with `vcache pull`"
        )
    return fail("size_mismatch", message, expected=expected, actual=actual)


def digest_mismatch(name: str, expected: Digest, actual: Digest) -> Finding:
    """The finding for bytes that do not hash to the publisher's digest."""
    return fail(
        "digest_mismatch",
        f"{name}: content hashes to {actual} but the publisher's digest is {expected}; "
        "the bytes were damaged in transit or on disk — fetch it again with `vcache pull`",
        expected=str(expected),
        actual=str(actual),
    )


def lock_size_mismatch(name: str, expected: int, actual: int) -> Finding:
    """The finding for a file whose byte count is not the one the lockfile pins."""
    return fail(
        "lock.size_mismatch",
        f"{name}: {actual} bytes, the lockfile pins {expected}; these are not the locked bytes (the server "
        "changed the file, or it was damaged in transit or on disk)",
        expected=expected,
        actual=actual,
    )


def lock_digest_mismatch(name: str, expected: Digest, actual: Digest) -> Finding:
    """The finding for bytes that do not hash to the sha256 the lockfile pins."""
    return fail(
        "lock.digest_mismatch",
        f"{name}: content hashes to {actual} but the lockfile pins {expected}; these are not the locked bytes "
        "(the server changed the file, or it was damaged in transit or on disk). If the change is intended, "
        "review it and move the lock with `vcache lock --update`",
        expected=str(expected),
        actual=str(actual),
    )
