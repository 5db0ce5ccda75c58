"""Where bytes are hashed: streaming sha256 (LFS files) and git blob sha1 (regular files).

The Hub names every blob by a digest: the sha256 of the content for LFS files, and the git blob id
(``sha1(b"blob <size>\\0" + content)``) for regular files. :class:`Digest` is that expected value;
:class:`StreamHasher` computes the same kind of digest incrementally as bytes are written, so no file is
read twice. This module never decides what to do about a mismatch.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

Algorithm = Literal["sha256", "gitsha1"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")


class _Hash(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class Digest:
    """An expected or computed digest: the algorithm and the lowercase hex value."""

    algorithm: Algorithm
    hexdigest: str

    def __post_init__(self) -> None:
        pattern = _HEX64 if self.algorithm == "sha256" else _HEX40
        if not pattern.fullmatch(self.hexdigest):
            raise ValueError(f"not a {self.algorithm} hex digest: {self.hexdigest!r}")

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``"sha256:<hex>"`` / ``"gitsha1:<hex>"``, or a bare 64/40-hex value."""
        algo, sep, value = text.partition(":")
        if sep:
            if algo not in ("sha256", "gitsha1"):
                raise ValueError(f"unknown digest algorithm {algo!r}")
            return cls(algo, value.lower())  # type: ignore[arg-type]
        value = text.lower()
        return cls("sha256" if len(value) == 64 else "gitsha1", value)

    @classmethod
    def from_etag(cls, etag: str) -> Digest:
        """The digest an HF blob name implies: 64 hex is sha256 (LFS), 40 hex is a git blob id."""
        return cls.parse(etag)

    def hasher(self, size: int) -> StreamHasher:
        """A fresh streaming hasher of this digest's kind for a file of ``size`` bytes."""
        return StreamHasher(self.algorithm, size)


class StreamHasher:
    """Incremental digest of one file's bytes, fed in order.

    For git blob ids the ``blob <size>\\0`` prefix needs the final size up front; it is the size the
    publisher announced, and a file of another size fails the separate size check anyway.
    """

    __slots__ = ("_h", "algorithm", "fed")

    def __init__(self, algorithm: Algorithm, size: int) -> None:
        self.algorithm: Algorithm = algorithm
        self.fed = 0
        if algorithm == "sha256":
            self._h: _Hash = hashlib.sha256()
        else:
            self._h = hashlib.sha1(usedforsecurity=False)
            self._h.update(b"blob %d\0" % size)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the file."""
        self._h.update(data)
        self.fed += len(data)

    def digest(self) -> Digest:
        """The digest of everything fed so far."""
        return Digest(self.algorithm, self._h.hexdigest())


HASH_CHUNK = 8 * 1024 * 1024


def hash_file(path: str | os.PathLike[str], algorithm: Algorithm, *, size: int | None = None) -> Digest:
    """Hash a whole file from disk (used for verify ``--deep`` and for resumed prefixes)."""
    with open(path, "rb", buffering=0) as f:
        total = os.fstat(f.fileno()).st_size if size is None else size
        hasher = StreamHasher(algorithm, total)
        hash_stream_into(f.fileno(), hasher, 0, total)
    return hasher.digest()


def sha256_hex(path: str | os.PathLike[str], known: Digest | None = None) -> str:
    """The sha256 of the file at ``path``: ``known``'s value when it is a sha256 of these very bytes (no read),
    else hashed now (small files named by a git blob sha1, whose sha256 a lockfile pins)."""
    if known is not None and known.algorithm == "sha256":
        return known.hexdigest
    return hash_file(path, "sha256").hexdigest


def hash_stream_into(
    fd: int,
    hasher: StreamHasher,
    start: int,
    end: int,
    *,
    buffer: bytearray | None = None,
    on_chunk: Callable[[int, memoryview], None] | None = None,
) -> None:
    """Feed bytes ``[start, end)`` of an open file descriptor to ``hasher`` (positional reads).

    ``buffer`` is reused for the reads when given (callers that hash a growing file in many small steps
    pass one, so no step allocates); otherwise one is allocated for this call. ``on_chunk(offset, view)``
    sees every chunk just hashed, in order (the view is valid only during the call).
    """
    buf = buffer if buffer else bytearray(min(HASH_CHUNK, max(end - start, 1)))
    view = memoryview(buf)
    pos = start
    while pos < end:
        n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
        if n == 0:
            raise EOFError(f"file ended at byte {pos}, expected {end}")
        hasher.update(view[:n])
        if on_chunk is not None:
            on_chunk(pos, view[:n])
        pos += n


def sha256_of_git_file(path: str | os.PathLike[str], blob_id: Digest) -> Digest | None:
    """The sha256 of a file stored in git (not LFS), whose verified digest is its git blob id ``blob_id``.

    One read feeds both hashes, so the sha256 is of the very bytes whose blob id is checked again here. None
    when those bytes no longer hash to ``blob_id`` (the file changed since it was verified). Meant for the
    small files git holds (configs, tokenizers); an LFS file's sha256 is its verified digest already.
    """
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        sha256 = StreamHasher("sha256", size)
        git = StreamHasher("gitsha1", size)
        hash_stream_into(f.fileno(), sha256, 0, size, on_chunk=lambda _pos, view: git.update(view))
    return sha256.digest() if git.digest() == blob_id else None


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub uses as ETag for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
