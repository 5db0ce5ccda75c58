"""File checks: what is wrong with a file, as findings.

``sniff`` (pointer / HTML / zero-filled files), ``safetensors`` (strict header and layout), ``tensors``
(content scan on raw bits) and ``index`` (sharded index and config coherence); ``judge`` decides a file's
findings and verdict from them and from its size and digest, for every caller. Checks only read; they
never move, delete or fix a file, and they never raise on bad input: every problem is a Finding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vcache.report import Finding

if TYPE_CHECKING:
    from vcache.checks.safetensors import SafetensorsHeader
    from vcache.checks.tensors import TensorStream

_log = logging.getLogger(__name__)

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
    """The findings for one file, and its parsed safetensors header when it has a sound one.

    ``format`` is what the bytes were checked as: the kind the name implies (``"safetensors"``, ``"json"``)
    unless the sniff found them to be something else, else ``"other"``. ``checks`` names what ran, in order:
    ``"sniff"``, then for safetensors ``"structure"`` and (with a sound header) ``"content"``.
    """

    findings: tuple[Finding, ...]
    header: SafetensorsHeader | None = None
    format: str = "other"
    checks: tuple[str, ...] = ("sniff",)


def check_file(
    path: Path,
    name: str,
    *,
    vouched: bool,
    content: bool = True,
    content_findings: Sequence[Finding] | None = None,
) -> FileCheck:
    """Run every file-level check in order: sniff, then (for safetensors) strict structure, then content.

    ``name`` is the repo path (decides what the file should be); ``vouched`` says whether a publisher digest
    matched these bytes (it turns zero-fill damage from a failure into a warning). ``content=False`` skips
    the tensor scan (structure only). ``content_findings`` are the findings of a content scan already made
    over exactly these bytes (a :class:`StreamingCheck` fed while they were hashed), used instead of
    scanning the file again. Never raises for bad data.
    """
    from vcache.checks.safetensors import read_header
    from vcache.checks.sniff import sniff
    from vcache.checks.tensors import scan_tensors
    from vcache.report import Severity

    kind = expected_kind(name)
    findings = list(sniff(path, expect=kind))
    if any(f.severity is Severity.FAIL for f in findings):
        return FileCheck(tuple(findings))  # the bytes are something else: no parser is shown them
    if kind != "safetensors":
        return FileCheck(tuple(findings), format=kind or "other")
    header, structural = read_header(path)
    findings.extend(structural)
    if header is None or not content:
        return FileCheck(tuple(findings), header, "safetensors", ("sniff", "structure"))
    if content_findings is not None:
        findings.extend(content_findings)
    else:
        findings.extend(scan_tensors(path, header, vouched=vouched))
    return FileCheck(tuple(findings), header, "safetensors", ("sniff", "structure", "content"))


class StreamingCheck:
    """The tensor content scan of a safetensors file, fed its bytes in order while they are hashed.

    A download's digest reads every byte back once; feeding the same buffers here makes the content scan
    ride on that read instead of a second pass over the file (and its findings are ready moments after
    the digest). It parses the header from the first bytes, then drives a
    :class:`~vcache.checks.tensors.TensorStream`. Anything unexpected (a bad header, an error inside the
    scan) just turns it off: :meth:`findings` then returns ``None`` and the caller scans the file as usual,
    so this can only save work, never change a verdict. The findings are those of a scan with
    ``vouched=True``: use them only when the digest matched.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.reset()

    def reset(self) -> None:
        """Forget everything: the bytes will be fed again from offset 0 (a download restarted)."""
        self._head = bytearray()
        self._stream: TensorStream | None = None
        self._off = expected_kind(self.name) != "safetensors"

    def feed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Take the file bytes ``[offset, offset + len(data))``, continuing the previous feed."""
        if self._off:
            return
        try:
            self._feed(offset, memoryview(data))
        except Exception as exc:  # never let a scan problem break the download: scan the file later
            _log.debug("%s: streaming content check turned off (%s)", self.name, exc)
            self._off = True
            self._stream = None

    def _feed(self, offset: int, data: memoryview) -> None:
        if self._stream is not None:
            self._stream.feed(offset, data)
            return
        from vcache.checks.safetensors import MAX_HEADER_SIZE, parse_header_bytes
        from vcache.checks.tensors import TensorStream

        head = self._head  # the file's first bytes: [0, len(head)); ``data`` starts at ``offset``
        if offset != len(head):
            raise ValueError("bytes out of order")
        head += data[: max(0, 8 - len(head))]
        if len(head) < 8:
            return
        n = int.from_bytes(head[:8], "little")
        if n > MAX_HEADER_SIZE or 8 + n > self.size:
            raise ValueError("the header length is impossible")  # the structure check will say so
        head += data[len(head) - offset : len(head) - offset + max(0, 8 + n - len(head))]
        if len(head) < 8 + n:
            return
        header, _ = parse_header_bytes(head, self.size, label=self.name)
        if header is None:
            raise ValueError("the header is not valid")  # the structure check will say why
        used = len(head) - offset  # bytes of ``data`` that completed the header
        self._stream = TensorStream(header, vouched=True)
        self._head = bytearray()
        if used < len(data):
            self._stream.feed(offset + used, data[used:])

    def findings(self, path: Path) -> list[Finding] | None:
        """The content findings once every byte was fed (``path`` holds those bytes), else ``None``."""
        if self._off or self._stream is None or not self._stream.complete:
            return None
        return self._stream.finish(path)
