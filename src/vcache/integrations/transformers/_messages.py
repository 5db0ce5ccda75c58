"""Messages: how the integration's findings are worded, refused and warned about.

What this module owns: the text of a refusal (headline, the findings listed up to :data:`_MESSAGE_LIMIT`,
advice) and the :class:`~vcache.errors.VerificationFailed` carrying it, the refusal of a pull that failed,
warnings issued as :class:`~vcache.errors.VcacheWarning` and logged, and the small formatting helpers the
checks share (counts, index ranges, a finding's file or tensor names added to its message).

What it must never do: decide whether a finding blocks a load (``_load`` does), judge anything, import torch
or transformers, configure logging (a ``NullHandler`` only).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from vcache.errors import VcacheWarning, VerificationFailed
from vcache.report import Finding, PullReport, Severity

# The package's name, as before the split into modules: callers filter and set levels on it.
log = logging.getLogger("vcache.integrations.transformers")
# Warnings reach users through warnings.warn; how (and whether) the log is shown is theirs to set up.
log.addHandler(logging.NullHandler())

#: How many findings a refusal message spells out before summarising the rest.
_MESSAGE_LIMIT = 12
#: How many indexes a finding lists (rows, flat positions, layers).
_INDEX_LIMIT = 10


def _describe_source(repo_id: str, report: PullReport) -> str:
    return f"{repo_id}@{report.commit[:12]}" if report.commit else repo_id


def _with_file(finding: Finding, path: str) -> Finding:
    """The finding with its file named in the message (pull's findings are per file)."""
    if finding.message.startswith(path) or path in finding.message:
        return finding
    return Finding(
        finding.code, finding.severity, f"{path}: {finding.message}", finding.tensor, finding.detail
    )


def _with_detail(finding: Finding, **extra: Any) -> Finding:
    detail = {**(finding.detail or {}), **extra}
    message = finding.message
    names = extra.get("tensors")
    if names:
        more = f" and {extra['tensor_count'] - len(names)} more" if extra["tensor_count"] > len(names) else ""
        message += f" It holds {', '.join(names)}{more}."
    return Finding(finding.code, finding.severity, message, finding.tensor, detail)


def _headline(findings: Sequence[Finding], strict: bool) -> str:
    fails = sum(f.severity is Severity.FAIL for f in findings)
    warns = len(findings) - fails
    parts = []
    if fails:
        parts.append(f"{fails} failing finding{'s' * (fails != 1)}")
    if warns:
        parts.append(f"{warns} warning{'s' * (warns != 1)} (strict=True)")
    return " and ".join(parts) + "."


def _advice(findings: Sequence[Finding], strict: bool) -> str:
    lines = []
    if any(f.code.startswith(("model.missing", "config.layer")) for f in findings):
        lines.append(
            "transformers itself would have loaded this checkpoint and initialised the missing weights at random."
        )
    if strict and any(f.severity is Severity.WARN for f in findings):
        lines.append("Pass strict=False to load with warnings instead.")
    return " ".join(lines)


def _format(findings: Iterable[Finding]) -> Iterator[str]:
    items = list(findings)
    for f in items[:_MESSAGE_LIMIT]:
        yield f"  - [{f.code}] {f.message}"
    if len(items) > _MESSAGE_LIMIT:
        yield f"  ... and {len(items) - _MESSAGE_LIMIT} more (see the exception's .findings)"


def _refusal(
    headline: str, findings: Sequence[Finding], advice: str, *, repo_id: str, report: PullReport
) -> VerificationFailed:
    text = "\n".join([headline, *_format(findings)] + ([advice] if advice else []))
    return VerificationFailed(text, findings, repo_id=repo_id, report=report)


def _pull_refusal(repo_id: str, where: str, report: PullReport) -> VerificationFailed:
    findings = [
        _with_file(f, fr.path) for fr in report.failed for f in fr.findings if f.severity is Severity.FAIL
    ]
    names = ", ".join(fr.path for fr in report.failed) or "none"
    lines = [f"vcache refused to load {where}: {len(report.failed)} file(s) failed verification ({names})."]
    lines += list(_format(findings))
    lines += [f"  - {e}" for e in report.errors]
    lines.append(
        "Nothing was loaded. Failing files were quarantined, not deleted. Damage in transit is cured by "
        "pulling again; if the same file fails again, the publisher's copy is bad."
    )
    return VerificationFailed("\n".join(lines), findings, repo_id=repo_id, report=report)


def _emit(findings: Iterable[Finding], where: str) -> None:
    """Warnings as :class:`VcacheWarning` and on the log; info on the log only."""
    for f in findings:
        if f.severity is Severity.WARN:
            text = f"{where}: [{f.code}] {f.message}"
            log.warning("%s", text)
            warnings.warn(VcacheWarning(text, f), stacklevel=3)
        elif f.severity is Severity.INFO:
            log.info("%s: [%s] %s", where, f.code, f.message)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ranges(indexes: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    runs: list[list[int]] = []
    for i in sorted(set(indexes)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
