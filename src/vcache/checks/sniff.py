"""File sniffing: is this file what its name says, or something that commonly replaces it?

This module owns the cheap identity checks run on every downloaded file before any format parser sees
it: an empty file, a git-LFS pointer, an HTML/XML error page, a file of zeros, a pickle or zip where
safetensors was expected, a text document where safetensors was expected, and (for JSON files) a body
that does not parse. These are the usual causes behind safetensors' ``HeaderTooLarge`` /
``header too large`` errors, and naming them turns a cryptic error into a fix.

It reads only the first few KiB, plus a sparse sample when the head is zero (a full read only to
confirm a file that looks entirely zero, or to parse a JSON file of at most :data:`MAX_JSON_BYTES`). It
never modifies the file, never judges safetensors structure (that is ``checks.safetensors``) and never
raises on bad data: every problem is a :class:`~vcache.report.Finding`. Its :func:`read_json` is how the rest
of vcache reads a repo's JSON files (``config.json``, a sharded index) without raising on hostile bytes.

=======================  ========  ===========================================================
code                     severity  when
=======================  ========  ===========================================================
``sniff.empty``          fail      0 bytes where content was expected (info when ``expect`` is None)
``sniff.lfs_pointer``    fail      a git-LFS pointer file (``oid`` / ``size`` in detail)
``sniff.html``           fail      an HTML or XML document (error page, S3 ``<Error>``), unless the
                                   name is a markup/text name (``.xml``, ``.html``, ``.md``…) and
                                   ``expect`` is None
``sniff.zero_filled``    fail      every byte of the file is zero
``sniff.pickle``         fail      a pickle where safetensors was expected
``sniff.zip``            fail      a zip archive (e.g. ``torch.save``) where safetensors was expected
``sniff.text``           fail      a text document (e.g. a JSON error body) where safetensors was expected
``sniff.invalid_json``   fail      a ``.json`` file that does not parse as JSON
``sniff.unreadable``     fail      the file could not be opened or read
=======================  ========  ===========================================================

At most one finding is returned: the first thing the file turns out to be.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Final

from vcache.report import Finding, fail, info

__all__ = ["HEAD_BYTES", "MAX_JSON_BYTES", "InvalidJson", "read_json", "sniff"]

HEAD_BYTES = 4096
"""How much of the start of a file is read to recognise it."""

MAX_JSON_BYTES = 64 << 20
"""``.json`` files larger than this are not parsed (tokenizer.json files are tens of MiB at most)."""

_SAMPLE_BYTES = 64 << 10
_SAMPLE_STRIDES = 16
_CONFIRM_CHUNK = 4 << 20
_SAFETENSORS_MAX_HEADER = 100_000_000

_LFS_VERSIONS = (b"version https://git-lfs.github.com/spec/", b"version https://hawser.github.com/spec/")
_MARKUP_STARTS = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body", b"<error>", b"<!--")
# Names whose content may legitimately be markup (OpenVINO IR is model.xml), when nothing else is expected.
_MARKUP_SUFFIXES = frozenset({".html", ".htm", ".xhtml", ".xml", ".svg", ".md", ".txt"})
_PICKLE_START = re.compile(rb"\x80[\x02-\x05]")
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_S3_CODE = re.compile(rb"<Code>(.*?)</Code>", re.DOTALL)
_S3_MESSAGE = re.compile(rb"<Message>(.*?)</Message>", re.DOTALL)

_HEADER_TOO_LARGE = (
    "This is the usual cause of safetensors' 'HeaderTooLarge' / 'header too large' error when loading it."
)

_ZERO_SAFETENSORS = (
    "safetensors reports such a file as 'invalid JSON in header: EOF while parsing a value' "
    "(InvalidHeaderDeserialization), since its header length reads as 0. "
)


def sniff(path: str | Path, *, expect: str | None = None) -> list[Finding]:
    """Recognise what the file at ``path`` really is, from its first few KiB.

    ``expect`` is the kind its name implies: ``"safetensors"``, ``"json"`` (config.json, tokenizer.json,
    ``*.index.json``), another format (``"gguf"``, ``"onnx"``: then only an empty file is judged differently
    than with None) or None. Returns at most one failing finding naming what the file is instead (an
    empty list when it looks like what it should be). An unreadable file is reported, not raised.
    """
    name = Path(path).name
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEAD_BYTES)
            if size == 0:
                return [_empty(name, expect)]
            found = _identify(name, head, size, expect)
            if found is None and not any(head) and _all_zero(f, size):
                found = fail(
                    "sniff.zero_filled",
                    f"{name} is {size} bytes of zeros: the space was allocated but the content never written "
                    "(an interrupted download or a failed disk write). "
                    + (_ZERO_SAFETENSORS if expect == "safetensors" else "")
                    + "Re-download it with vcache pull.",
                    size=size,
                )
            if found is None and expect == "json":
                found = _check_json(name, f, size)
    except OSError as exc:
        return [fail("sniff.unreadable", f"could not read {name} ({exc}); re-download it with vcache pull.")]
    return [found] if found is not None else []


def _empty(name: str, expect: str | None) -> Finding:
    if expect is None:
        return info(
            "sniff.empty", f"{name} is empty (0 bytes); fine if the repository lists it as empty.", size=0
        )
    return fail(
        "sniff.empty",
        f"{name} is empty (0 bytes) where a {expect} file was expected: the download was cut off before any "
        "byte arrived, or the file was truncated on disk. Re-download it with vcache pull.",
        size=0,
    )


def _identify(name: str, head: bytes, size: int, expect: str | None) -> Finding | None:
    """The identity checks that need only the head of the file."""
    if head.startswith(_LFS_VERSIONS):
        return _lfs_pointer(name, head, size, expect)
    text_start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    markup_expected = expect is None and Path(name).suffix.lower() in _MARKUP_SUFFIXES
    if text_start.startswith(_MARKUP_STARTS) and not markup_expected:
        return _markup(name, head, size, expect)
    if expect != "safetensors" or _plausible_safetensors(head, size):
        return None
    if head.startswith(_ZIP_STARTS):
        return fail(
            "sniff.zip",
            f"{name} is a zip archive, not safetensors: most likely a PyTorch checkpoint written by torch.save "
            "(pytorch_model.bin format) saved under a .safetensors name, or a compressed archive of the "
            f"model. {_HEADER_TOO_LARGE} Download the real .safetensors file, or convert the checkpoint.",
            size=size,
        )
    if _PICKLE_START.match(head):
        return fail(
            "sniff.pickle",
            f"{name} is a Python pickle (protocol {head[1]}), not safetensors: a legacy torch.save "
            f"checkpoint saved under a .safetensors name. {_HEADER_TOO_LARGE} Download the real .safetensors "
            "file, or convert the checkpoint (never unpickle files you do not trust).",
            size=size,
            protocol=head[1],
        )
    declared = int.from_bytes(head[:8].ljust(8, b"\0"), "little")
    first_line = _first_line(head)
    if declared > _SAFETENSORS_MAX_HEADER and first_line is not None:
        return fail(
            "sniff.text",
            f"{name} is a text document, not safetensors; it begins {first_line!r}. This is typically an error "
            f"message from a server or proxy saved in place of the file. {_HEADER_TOO_LARGE} Re-download it "
            "with vcache pull.",
            size=size,
            first_line=first_line,
        )
    return None


def _plausible_safetensors(head: bytes, size: int) -> bool:
    """True when the first 8 bytes are a header length that fits the file and the header opens with ``{``.

    Guards the other checks: a real safetensors file can begin with ``\\x80\\x02`` (a 640-byte header).
    """
    if len(head) < 9:
        return False
    declared = int.from_bytes(head[:8], "little")
    return 2 <= declared <= min(size - 8, _SAFETENSORS_MAX_HEADER) and head[8:].lstrip(b" \t\r\n")[:1] == b"{"


def _lfs_pointer(name: str, head: bytes, size: int, expect: str | None) -> Finding:
    fields: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        if key in ("version", "oid", "size"):
            fields[key] = value.strip()
    oid = fields.get("oid")
    declared = fields.get("size", "")
    real_size = int(declared) if declared.isdigit() else None
    what = f"the {real_size}-byte file" if real_size is not None else "the file"
    tail = f" {_HEADER_TOO_LARGE}" if expect == "safetensors" else ""
    return fail(
        "sniff.lfs_pointer",
        f"{name} is a git-LFS pointer ({size} bytes of text), not {what} it points to: the download went "
        "through git without LFS, or a proxy served the pointer. Re-download it with vcache pull." + tail,
        oid=oid,
        size=real_size,
        pointer_size=size,
        version=fields.get("version"),
    )


def _markup(name: str, head: bytes, size: int, expect: str | None) -> Finding:
    code = _S3_CODE.search(head)
    message = _S3_MESSAGE.search(head)
    title = _TITLE.search(head)
    detail: dict[str, Any] = {"size": size}
    if code is not None:
        detail["error_code"] = _clean(code.group(1))
        said = f"an XML error from the storage server: {detail['error_code']}"
        if message is not None:
            detail["error_message"] = _clean(message.group(1))
            said += f" ({detail['error_message']})"
    elif title is not None:
        detail["title"] = _clean(title.group(1))
        said = f"an HTML page titled {detail['title']!r}"
    else:
        detail["first_line"] = _first_line(head) or ""
        said = f"an HTML/XML document beginning {detail['first_line']!r}"
    tail = f" {_HEADER_TOO_LARGE}" if expect == "safetensors" else ""
    return fail(
        "sniff.html",
        f"{name} is {said}, not the file: a server, proxy or captive portal answered with a page and it was "
        "saved in place of the content (check access to the repository, the token, and any proxy). "
        f"Re-download it with vcache pull.{tail}",
        **detail,
    )


def _clean(raw: bytes) -> str:
    return " ".join(html.unescape(raw.decode("utf-8", "replace")).split())[:200]


def _first_line(head: bytes) -> str | None:
    """The first non-empty line when the head reads as printable UTF-8 text; None for binary data."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end of the head is still text
        if exc.start < len(head) - 3:
            return None
        text = head[: exc.start].decode("utf-8")
    if any(c not in "\t\r\n" and not c.isprintable() for c in text):
        return None
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return None


def _all_zero(f: io.BufferedReader, size: int) -> bool:
    """Whether every byte is zero: a sparse sample first, then a full read only if the sample is all zero."""
    offsets = {max(0, size - _SAMPLE_BYTES)}
    offsets.update(size * k // _SAMPLE_STRIDES for k in range(1, _SAMPLE_STRIDES))
    for off in sorted(offsets):
        f.seek(off)
        if any(f.read(_SAMPLE_BYTES)):
            return False
    import numpy as np  # only here: a pull of text files never loads numpy (0.1 s)

    f.seek(0)
    buf = bytearray(_CONFIRM_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        if np.frombuffer(view[:n], np.uint8).any():
            return False
    return True


GGUF_MAGIC: Final = b"GGUF"
"""The first four bytes of every GGUF file."""


def looks_like_gguf(head: bytes | bytearray | memoryview) -> bool:
    """True when ``head`` (the first bytes of a file) starts with the GGUF magic.

    Here rather than in :mod:`vcache.checks.gguf` so that recognising a file does not load numpy.
    """
    return bytes(head[:4]) == GGUF_MAGIC


class InvalidJson(ValueError):
    """A repo file's bytes are not JSON that Python can load: ``why`` says what is wrong, ``where`` where
    (None when there is no one place, as for nesting too deep)."""

    def __init__(self, why: str, where: str | None) -> None:
        super().__init__(f"{why}, at {where}" if where else why)
        self.why = why
        self.where = where


def _parse_json(data: bytes) -> Any:
    """``json.loads`` of a repo file's bytes that raises nothing but :class:`InvalidJson`."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidJson("it is not UTF-8 text", f"byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        why = exc.msg
        if exc.pos >= len(data.rstrip()) or exc.msg.startswith("Unterminated string"):
            why += "; the text ends early, as a truncated download does"
        raise InvalidJson(why, f"line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # Python's parser recurses once per level and gives up near 1000 levels
        raise InvalidJson("it is nested more deeply than Python's json module can read", None) from None
    except ValueError as exc:  # int() refuses more than 4300 digits
        raise InvalidJson(f"it holds a number Python refuses to read ({exc})", None) from None


def read_json(path: str | Path) -> Any:
    """The parsed content of the repo JSON file at ``path`` (config.json and the like: untrusted input).

    Raises :class:`InvalidJson` (a ``ValueError``) when the file is larger than :data:`MAX_JSON_BYTES`, not
    UTF-8, not JSON, or JSON Python cannot load (nested too deeply, a number of thousands of digits), and
    ``OSError`` when it cannot be read. Nothing else, whatever the bytes.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise InvalidJson(f"it is larger than {MAX_JSON_BYTES:,} bytes", None)
    return _parse_json(data)


def _check_json(name: str, f: io.BufferedReader, size: int) -> Finding | None:
    if size > MAX_JSON_BYTES:
        return None
    f.seek(0)
    data = f.read()
    try:
        _parse_json(data)
    except InvalidJson as exc:
        why, where = exc.why, exc.where
    else:
        return None
    if where is None:  # not a cut-off or a page saved in its place: bytes no loader can read
        return fail(
            "sniff.invalid_json",
            f"{name} cannot be loaded as JSON ({why}), so transformers and tokenizers will refuse to load "
            "it. Re-download it with vcache pull; if the publisher's digest vouches for these bytes, the "
            "published file itself is broken: tell the publisher.",
            size=size,
            error=why,
        )
    return fail(
        "sniff.invalid_json",
        f"{name} is not valid JSON ({why}, at {where}): a truncated download, or an error page saved under "
        "this name. transformers and tokenizers will refuse to load it. Re-download it with vcache pull.",
        size=size,
        error=why,
        position=where,
    )
