"""The public values of a transfer: what to fetch (:class:`FetchSpec`), what came of it (:class:`FetchResult`),
and who may watch the bytes go by (:class:`ByteObserver`).

Plain values: this module does no I/O and holds no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vcache.hashing import Digest
from vcache.retry import RetryEvent


class ByteObserver(Protocol):
    """Sees a file's bytes in order as they are hashed (for checks that ride on that read)."""

    def reset(self) -> None:
        """The bytes will be seen again from offset 0 (the download restarted)."""

    def feed(self, offset: int, data: memoryview) -> None:
        """Bytes ``[offset, offset + len(data))``, continuing the previous call; ``data`` is only valid
        during the call. Must not raise."""


@dataclass(frozen=True)
class FetchSpec:
    """What to fetch: a resolve URL pinned to a commit, and what the bytes must turn out to be."""

    url: str
    etag: str
    size: int
    expected: Digest
    commit: str
    path: str


@dataclass(frozen=True)
class FetchResult:
    """A finished partial, ready for the caller to check and publish with ``os.replace``.

    After publishing (or rejecting) it, call :meth:`Transfer.discard` with it: that removes the sidecar
    (and the data file, if it is still there).
    """

    data_path: Path
    actual: Digest
    size: int
    bytes_transferred: int
    attempts: int
    resumed_from: int
    sidecar_path: Path | None = None
    retries: tuple[RetryEvent, ...] = ()
