"""File checks: what is wrong with a file, as findings.

``sniff`` (pointer / HTML / zero-filled files), one checker per weight format — ``safetensors`` (strict header
and layout), ``gguf`` (llama.cpp), ``pytorch`` with ``pickles`` (``torch.save`` checkpoints, plain pickles,
TorchScript), ``onnx`` — the content scan on raw bits they share (``tensors``), and ``index`` (sharded index
and config coherence). This module recognises which format a file is and runs its checker
(:func:`check_file`), and feeds the content scan while a download is hashed (:class:`StreamingCheck`);
``judge`` decides a file's findings and verdict from them and from its size and digest, for every caller.
Checks only read; they never move, delete or fix a file, and they never raise on bad input: every problem is
a Finding.

A format is recognised by the file's content (magic bytes, the layout of its first bytes) with its name as a
hint: safetensors has no magic and is recognised by a ``.safetensors`` name (the sniff confirming the bytes
are not something else), a ``.gguf`` or ``.onnx`` name gets that format's checker even when the bytes
disagree (which it then reports), and GGUF, PyTorch, pickle, TorchScript and ONNX bytes are recognised under
any name. Adding a format is one entry in ``_CHECKERS`` plus a line in :func:`_recognise`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from vcache.report import Finding

if TYPE_CHECKING:
    from vcache.checks.gguf import GGUFStream
    from vcache.checks.safetensors import SafetensorsHeader
    from vcache.checks.tensors import TensorStream

_log = logging.getLogger(__name__)

JSON_SUFFIXES = (".json",)

#: What :attr:`FileCheck.format` can be: the format the bytes were checked as.
FORMATS: Final = (
    "safetensors",
    "gguf",
    "pytorch-zip",
    "pytorch-legacy",
    "pickle",
    "torchscript",
    "onnx",
    "json",
    "other",
)

#: What a complete check of each format runs (a digest comes on top when one is known). A file whose
#: ``checks`` lack one of these was only partly checked; ``other`` has no checks beyond the sniff.
COMPLETE_CHECKS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "safetensors": frozenset({"sniff", "structure", "content"}),
        "gguf": frozenset({"sniff", "structure", "content"}),
        "onnx": frozenset({"sniff", "structure", "content"}),
        "pytorch-zip": frozenset({"sniff", "structure", "content", "imports"}),
        "pytorch-legacy": frozenset({"sniff", "structure", "content", "imports"}),
        "torchscript": frozenset({"sniff", "structure", "content", "imports"}),
        "pickle": frozenset({"sniff", "structure", "imports"}),
        "json": frozenset({"sniff"}),  # the sniff parses it
    }
)


def coverage(format: str | None, checks: Collection[str]) -> str:
    """How completely a file was checked, in a word or two: ``"full"`` (every check its format has ran),
    ``"partial"`` (some did: a damaged structure stops the content scan, say), ``"digest only"`` (its format
    has no checks, or none ran, but the publisher's digest matched) or ``"unchecked"`` (not even that)."""
    complete = COMPLETE_CHECKS.get(format or "")
    ran = set(checks)
    if complete is not None and complete <= ran:
        return "full"
    if complete is not None and ran & (complete - {"sniff"}):
        return "partial"
    return "digest only" if "digest" in ran else "unchecked"


def expected_kind(name: str) -> str | None:
    """What a file should be, judged by its name: ``"safetensors"``, ``"json"``, ``"gguf"``, ``"onnx"`` or
    None (anything; its content decides)."""
    lower = name.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(JSON_SUFFIXES):
        return "json"
    if lower.endswith(".gguf"):
        return "gguf"
    if lower.endswith(".onnx"):
        return "onnx"
    return None


@dataclass(frozen=True)
class FileCheck:
    """The findings for one file, and its parsed safetensors header when it has a sound one.

    ``format`` is what the bytes were checked as (one of :data:`FORMATS`): the kind the name implies
    (``"safetensors"``, ``"json"``, ``"gguf"``, ``"onnx"``) unless the sniff found the bytes to be something
    else, else the format their content shows, else ``"other"``. ``checks`` names what ran, in order, from
    ``"sniff"``, ``"structure"``, ``"content"`` and ``"imports"`` (pickles: every global checked against
    the allowlist).
    """

    findings: tuple[Finding, ...]
    header: SafetensorsHeader | None = None
    format: str = "other"
    checks: tuple[str, ...] = ("sniff",)


@dataclass(frozen=True)
class _Subject:
    """One file to check and what the checkers need to know about it."""

    path: Path
    name: str
    root: Path | None
    vouched: bool
    content: bool
    content_findings: Sequence[Finding] | None
    allow_imports: Collection[str]
    sniffed: tuple[Finding, ...]


def check_file(
    path: Path,
    name: str,
    *,
    vouched: bool,
    content: bool = True,
    content_findings: Sequence[Finding] | None = None,
    allow_imports: Collection[str] = (),
    root: Path | None = None,
) -> FileCheck:
    """Run every file-level check in order: sniff, then the checker of the file's format (module docstring).

    ``name`` is the repo path (a hint of what the file should be); ``vouched`` says whether a publisher digest
    matched these bytes (it turns zero-fill damage from a failure into a warning). ``content=False`` skips
    the tensor scan of safetensors and GGUF files (structure only; the PyTorch and ONNX checkers read the
    content in the same pass as the structure and always scan it). ``content_findings`` are the findings of
    a content scan already made over exactly these bytes (a :class:`StreamingCheck` fed while they were
    hashed), used instead of scanning the file again. ``allow_imports`` (``module.name`` entries) widens the
    allowlist of pickle globals. ``root`` is the folder the repo's files are in (a snapshot, a local folder)
    when the bytes at ``path`` are ``root/name``'s, possibly read from elsewhere (a download not yet
    published, a blob): ONNX external-data references resolve there; None: the file's own folder. Never
    raises for bad data.
    """
    from vcache.checks.sniff import HEAD_BYTES, sniff
    from vcache.report import Severity

    kind = expected_kind(name)
    findings = tuple(sniff(path, expect=kind))
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        head = b""  # the sniff said why
    if any(f.severity is Severity.FAIL for f in findings):
        # The bytes are something else: no parser is shown them. Their format, when the sniff named one.
        named = {"sniff.zip", "sniff.pickle"} & {f.code for f in findings}
        return FileCheck(findings, format=_content_format(path, head) if named else "other")
    if kind == "json":
        return FileCheck(findings, format="json")
    family = kind or _recognise(head, name)
    checker = _CHECKERS.get(family or "")
    if checker is None:
        return FileCheck(findings, format="other")
    subject = _Subject(path, name, root, vouched, content, content_findings, tuple(allow_imports), findings)
    return checker(subject)


def _recognise(head: bytes, name: str) -> str | None:
    """The checker for bytes whose name implies no format: by their first bytes."""
    from vcache.checks.sniff import looks_like_gguf

    if looks_like_gguf(head):
        return "gguf"
    if _maybe_pytorch(head):
        return "pytorch"
    # An ONNX ModelProto starts with field 1 (tag 0x08), or is named .onnx: only then load its checker
    # (which loads numpy).
    if head[:1] == b"\x08" or name.lower().endswith(".onnx"):
        from vcache.checks.onnx import looks_like_onnx

        if looks_like_onnx(head, name):
            return "onnx"
    return None


def _maybe_pytorch(head: bytes) -> bool:
    """A zip, or what may be a pickle (protocol 2-5, or the opcodes protocol 0/1 start with): the PyTorch
    checker's recognition decides from the whole file."""
    return head.startswith(b"PK") or head[:1] == b"\x80" or (head[:1] != b"" and head[0] in b"(c]})iN")


def _content_format(path: Path, head: bytes) -> str:
    """What the bytes are, by content alone (a zip or pickle the sniff found under a safetensors name)."""
    from vcache.checks.pytorch import sniff_format

    return sniff_format(path) if _maybe_pytorch(head) else "other"


def _checks(*groups: Collection[str]) -> tuple[str, ...]:
    """The checks that ran, each once, in the canonical order."""
    ran = {c for g in groups for c in g}
    return tuple(c for c in ("sniff", "structure", "content", "imports") if c in ran)


def _safetensors(s: _Subject) -> FileCheck:
    from vcache.checks.safetensors import read_header
    from vcache.checks.tensors import scan_tensors

    header, structural = read_header(s.path)
    findings = [*s.sniffed, *structural]
    if header is None or not s.content:
        return FileCheck(tuple(findings), header, "safetensors", ("sniff", "structure"))
    if s.content_findings is not None:
        findings.extend(s.content_findings)
    else:
        findings.extend(scan_tensors(s.path, header, vouched=s.vouched))
    return FileCheck(tuple(findings), header, "safetensors", ("sniff", "structure", "content"))


def _gguf(s: _Subject) -> FileCheck:
    from vcache.checks import gguf

    layout, structural = gguf.read_gguf_header(s.path)
    findings = [*s.sniffed, *structural]
    if any(f.code == "gguf.unchecked" for f in structural):  # big-endian: neither structure nor content
        return FileCheck(tuple(findings), format="gguf", checks=("sniff",))
    if layout is None or not s.content:
        return FileCheck(tuple(findings), format="gguf", checks=("sniff", "structure"))
    if s.content_findings is not None:
        findings.extend(s.content_findings)
    else:
        findings.extend(gguf.scan_gguf(s.path, layout, vouched=s.vouched))
    return FileCheck(tuple(findings), format="gguf", checks=("sniff", "structure", "content"))


def _pytorch(s: _Subject) -> FileCheck:
    from vcache.checks.pytorch import check_pytorch, sniff_format

    if sniff_format(s.path) == "other":  # a zip of something else, bytes that only began like a pickle
        return FileCheck(s.sniffed, format="other")
    fmt, findings, checks = check_pytorch(s.path, vouched=s.vouched, allow_imports=s.allow_imports)
    return FileCheck((*s.sniffed, *findings), format=fmt, checks=_checks(("sniff",), checks))


def _onnx(s: _Subject) -> FileCheck:
    from vcache.checks.onnx import check_onnx

    try:
        if s.root is not None:
            findings, checks = check_onnx(s.path, root=s.root, vouched=s.vouched, name=s.name)
        else:
            findings, checks = check_onnx(s.path, root=s.path.parent, vouched=s.vouched)
    except ValueError:  # a name that is not a path inside root: the file is judged in its own folder
        findings, checks = check_onnx(s.path, root=s.path.parent, vouched=s.vouched)
    return FileCheck((*s.sniffed, *findings), format="onnx", checks=_checks(("sniff",), checks))


#: The checker of each format family (``pytorch`` covers the zip and legacy checkpoints, pickles and
#: TorchScript, which its checker tells apart).
_CHECKERS: Final[Mapping[str, Callable[[_Subject], FileCheck]]] = MappingProxyType(
    {"safetensors": _safetensors, "gguf": _gguf, "pytorch": _pytorch, "onnx": _onnx}
)

#: A GGUF header longer than this is not held in memory while streaming (the file is scanned afterwards).
_MAX_STREAMED_GGUF_HEADER: Final = 64 << 20
_FIRST_GGUF_PARSE: Final = 64 << 10


class StreamingCheck:
    """The tensor content scan of a safetensors or GGUF file, fed its bytes in order while they are hashed.

    A download's digest reads every byte back once; feeding the same buffers here makes the content scan
    ride on that read instead of a second pass over the file (and its findings are ready moments after
    the digest). It recognises the format as :func:`check_file` does (safetensors by name, GGUF by its
    magic), parses the header from the first bytes, then drives a
    :class:`~vcache.checks.tensors.TensorStream` or a :class:`~vcache.checks.gguf.GGUFStream`. Anything
    unexpected (another format, a bad header, an error inside the scan) just turns it off: :meth:`findings`
    then returns ``None`` and the caller scans the file as usual, so this can only save work, never change a
    verdict. The findings are those of a scan with ``vouched=True``: use them only when the digest matched.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.reset()

    def reset(self) -> None:
        """Forget everything: the bytes will be fed again from offset 0 (a download restarted)."""
        self._head = bytearray()
        self._stream: TensorStream | GGUFStream | None = None
        kind = expected_kind(self.name)
        self._safetensors = kind == "safetensors"
        self._off = kind not in ("safetensors", "gguf", None)
        self._next_parse = _FIRST_GGUF_PARSE

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
            self._head = bytearray()

    def _feed(self, offset: int, data: memoryview) -> None:
        if self._stream is not None:
            self._stream.feed(offset, data)
            return
        if offset != len(self._head):  # ``_head`` holds the file's first bytes: [0, len(head))
            raise ValueError("bytes out of order")
        if self._safetensors:
            self._feed_safetensors(offset, data)
        else:
            self._feed_gguf(data)

    def _feed_safetensors(self, offset: int, data: memoryview) -> None:
        from vcache.checks.safetensors import MAX_HEADER_SIZE, parse_header_bytes
        from vcache.checks.tensors import TensorStream

        head = self._head  # ``data`` starts at ``offset`` == len(head)
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
        stream = TensorStream(header, vouched=True)
        self._stream = stream
        self._head = bytearray()
        if used < len(data):
            stream.feed(offset + used, data[used:])

    def _feed_gguf(self, data: memoryview) -> None:
        from vcache.checks.sniff import looks_like_gguf

        head = self._head
        if len(head) < 4:
            take = 4 - len(head)
            head += data[:take]
            data = data[take:]
            if len(head) < 4:
                return
            if not looks_like_gguf(head):
                raise ValueError("not a format the download's read scans")  # checked after the download
        from vcache.checks.gguf import GGUFStream, parse_gguf_header_bytes  # loads numpy: a GGUF file only

        head += data
        if len(head) < min(self._next_parse, self.size):
            return
        parsed = parse_gguf_header_bytes(head, self.size, label=self.name)
        if parsed is None:  # the header goes on: parse again with twice the bytes (linear work in all)
            if len(head) >= _MAX_STREAMED_GGUF_HEADER:
                raise ValueError("the header is too long to hold while streaming")
            self._next_parse = 2 * len(head)
            return
        layout, _ = parsed
        if layout is None:
            raise ValueError("the header is not valid")  # the structure check will say why
        stream = GGUFStream(layout, vouched=True)
        self._stream = stream
        self._head = bytearray()
        stream.feed(0, head)  # the header and padding are skipped, the first tensor bytes judged

    def findings(self, path: Path) -> list[Finding] | None:
        """The content findings once every byte was fed (``path`` holds those bytes), else ``None``."""
        if self._off or self._stream is None or not self._stream.complete:
            return None
        return self._stream.finish(path)
