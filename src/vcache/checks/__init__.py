"""File checks: what is wrong with a file, as findings.

``sniff`` (pointer / HTML / zero-filled files), ``safetensors`` (strict header and layout), ``tensors``
(content scan on raw bits) and ``index`` (sharded index and config coherence). Checks only read; they
never move, delete or fix a file, and they never raise on bad input: every problem is a Finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vcache.report import Finding

if TYPE_CHECKING:
    from vcache.checks.safetensors import SafetensorsHeader

JSON_SUFFIXES = (".json",)


def expected_kind(name: str) -> str | None:
    """What a file should be, judged by its name: ``"safetensors"``, ``"json"`` or None (anything)."""
    lower = name.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(JSON_SUFFIXES):
        return "json"
    return None


@dataclass(frozen=True)
class FileCheck:
    """The findings for one file, and its parsed safetensors header when it has a sound one."""

    findings: tuple[Finding, ...]
    header: SafetensorsHeader | None = None


def check_file(path: Path, name: str, *, vouched: bool, content: bool = True) -> FileCheck:
    """Run every file-level check in order: sniff, then (for safetensors) strict structure, then content.

    ``name`` is the repo path (decides what the file should be); ``vouched`` says whether a publisher digest
    matched these bytes (it turns zero-fill damage from a failure into a warning). ``content=False`` skips
    the tensor scan (structure only). Never raises for bad data.
    """
    from vcache.checks.safetensors import read_header
    from vcache.checks.sniff import sniff
    from vcache.checks.tensors import scan_tensors
    from vcache.report import Severity

    kind = expected_kind(name)
    findings = list(sniff(path, expect=kind))
    if any(f.severity is Severity.FAIL for f in findings) or kind != "safetensors":
        return FileCheck(tuple(findings))
    header, structural = read_header(path)
    findings.extend(structural)
    if header is not None and content:
        findings.extend(scan_tensors(path, header, vouched=vouched))
    return FileCheck(tuple(findings), header)
