"""Faults the test Hub can inject, and the table that decides which one a request gets.

Owns the :class:`Fault` values and their bookkeeping: which (repo, path) a fault is armed for, which kinds of
request it matches, and how many uses it has left. It never touches a socket; :mod:`vcache.testing.hub`
carries the chosen fault out.

Selection rule: a request gets at most one *delivery* fault, the first one armed for its (repo id, path)
that matches the request and has uses left, and that use is spent. ``new_version`` is not a delivery fault
but a change of the file's content, so it composes with one: the first matching ``new_version`` also applies
(and is spent). Faults armed for path ``"*"`` match every path of the repo and its ``/api/`` calls.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from vcache.testing._hubrepo import RepoFile

__all__ = ["Fault", "FaultKind", "FaultOn", "FaultTable", "RequestKind", "Shape"]

FaultOn = Literal["get", "head", "api", "any"]
FaultKind = Literal[
    "drop_after",
    "stall",
    "status",
    "ignore_range",
    "wrong_content_range",
    "flip_byte",
    "zero_fill",
    "short_body",
    "truncate",
    "lfs_pointer",
    "html_page",
    "api_body",
    "new_version",
]
#: What a request is, for matching ``Fault.on``. A hub GET answered with a redirect to the CDN is
#: ``"redirect"``: it serves no body, so only ``on="any"`` faults reach it.
RequestKind = Literal["get", "head", "api", "redirect"]
#: What the response carries: file content (GET or HEAD), a redirect, or an API document.
Shape = Literal["file", "redirect", "api"]

_ON_VALUES = ("get", "head", "api", "any")


@dataclass(frozen=True)
class Fault:
    """One misbehaviour of the server, armed with :meth:`HubServer.fault`.

    Build it with the classmethods. ``times`` is how many matching requests it affects (``None``: every
    one); ``on`` picks the requests: ``"get"`` body GETs (hub resolve or CDN), ``"head"`` HEADs (hub
    resolve or CDN), ``"api"`` ``/api/`` calls of the repo (arm those for path ``"*"``), ``"any"`` all of
    them, including the hub GET that only redirects an LFS file to the CDN. Byte
    positions of body faults are absolute file offsets, so they hold for Range requests too. On a response
    without a body (a HEAD), ``drop_after`` and ``stall`` act before the status line.
    """

    kind: FaultKind
    times: int | None = 1
    on: FaultOn = "get"
    n: int = 0
    offset: int = 0
    length: int = 0
    shift: int = 0
    seconds: float = 0.0
    code: int = 0
    retry_after: int | str | None = None
    error_code: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 1:
            raise ValueError(f"times must be >= 1 or None, got {self.times}")
        if self.on not in _ON_VALUES:
            raise ValueError(f"on must be one of {_ON_VALUES}, got {self.on!r}")
        if min(self.n, self.offset, self.length, self.seconds) < 0:
            raise ValueError("byte counts, offsets and durations must not be negative")

    @classmethod
    def drop_after(cls, n: int, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """Send the headers and ``n`` body bytes, then reset the connection (RST)."""
        return cls("drop_after", times, on, n=n)

    @classmethod
    def stall(
        cls, after: int = 0, seconds: float = 30.0, *, times: int | None = 1, on: FaultOn = "get"
    ) -> Fault:
        """Send ``after`` body bytes, then nothing for ``seconds`` (less if the server stops), then close."""
        return cls("stall", times, on, n=after, seconds=seconds)

    @classmethod
    def status(
        cls,
        code: int,
        times: int | None = 1,
        retry_after: int | str | None = None,
        error_code: str | None = None,
        *,
        on: FaultOn = "get",
    ) -> Fault:
        """Answer ``code`` with a JSON error body, plus ``Retry-After`` / ``X-Error-Code`` when given."""
        if not 100 <= code <= 599:
            raise ValueError(f"not an HTTP status: {code}")
        return cls("status", times, on, code=code, retry_after=retry_after, error_code=error_code)

    @classmethod
    def ignore_range(cls, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """Answer 200 with the whole body even when a Range was asked for."""
        return cls("ignore_range", times, on)

    @classmethod
    def wrong_content_range(cls, shift: int, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """Answer 206, but start the data and the ``Content-Range`` ``shift`` bytes later than asked."""
        return cls("wrong_content_range", times, on, shift=shift)

    @classmethod
    def flip_byte(cls, offset: int, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """XOR 0xFF the byte at file offset ``offset`` when it is within what is sent."""
        return cls("flip_byte", times, on, offset=offset)

    @classmethod
    def zero_fill(cls, start: int, length: int, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """Send the file bytes in ``[start, start + length)`` as zeros."""
        return cls("zero_fill", times, on, offset=start, length=length)

    @classmethod
    def short_body(cls, n: int, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """Announce the normal ``Content-Length`` but close the connection after ``n`` body bytes."""
        return cls("short_body", times, on, n=n)

    @classmethod
    def truncate(cls, n: int, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """Serve only the first ``n`` bytes of the file, with an honest ``Content-Length``."""
        return cls("truncate", times, on, n=n)

    @classmethod
    def lfs_pointer(cls, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """Serve the file's git-LFS pointer text instead of its content."""
        return cls("lfs_pointer", times, on)

    @classmethod
    def html_page(cls, *, times: int | None = 1, on: FaultOn = "get") -> Fault:
        """Serve a 200 ``text/html`` maintenance page (as a proxy would) instead of the content."""
        return cls("html_page", times, on)

    @classmethod
    def api_body(cls, data: bytes, *, times: int | None = 1) -> Fault:
        """Answer a repo ``/api/`` call 200 ``application/json`` with ``data`` instead of the real document
        (JSON of the wrong shape, JSON nested too deep to parse, or not JSON at all)."""
        return cls("api_body", times, "api", data=bytes(data))

    @classmethod
    def new_version(cls, data: bytes, *, times: int | None = None, on: FaultOn = "any") -> Fault:
        """The file now holds ``data``: new size, new ETag, new bytes, on HEAD, GET, redirect and API."""
        return cls("new_version", times, on, data=bytes(data))

    def applies_to(self, shape: Shape, has_body: bool) -> bool:
        """Whether this fault can act on a response of this shape."""
        match self.kind:
            case "status" | "drop_after" | "stall":
                return True
            case "short_body":
                return has_body
            case "html_page":
                return shape in ("file", "api")
            case "truncate" | "lfs_pointer":
                return shape == "file"
            case "api_body":
                return shape == "api"
            case "new_version":
                return shape in ("file", "redirect")
            case _:
                return shape == "file" and has_body

    def matches(self, kind: RequestKind) -> bool:
        """Whether ``on`` selects requests of this kind."""
        return self.on == "any" or self.on == kind


@dataclass
class _Armed:
    repo_id: str
    path: str
    fault: Fault
    remaining: int | None
    version: RepoFile | None = None  # new_version's content, described once per base file

    def version_of(self, base: RepoFile) -> RepoFile:
        if self.version is None or self.version.path != base.path or self.version.lfs != base.lfs:
            assert self.fault.data is not None
            self.version = RepoFile.from_bytes(base.path, self.fault.data, lfs=base.lfs)
        return self.version


@dataclass(frozen=True)
class Selection:
    """The faults one request gets: at most one delivery fault and the content version to serve."""

    fault: Fault | None = None
    version: RepoFile | None = None


class FaultTable:
    """Armed faults in the order they were added, with their remaining uses. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []

    def add(self, repo_id: str, path: str, faults: tuple[Fault, ...]) -> None:
        """Arm ``faults`` for (``repo_id``, ``path``), after those already armed."""
        with self._lock:
            self._armed.extend(_Armed(repo_id, path, f, f.times) for f in faults)

    def clear(self) -> None:
        """Disarm everything."""
        with self._lock:
            self._armed.clear()

    def pending(self, repo_id: str | None = None, path: str | None = None) -> list[Fault]:
        """Faults with uses left, optionally only those armed for this repo and/or path."""
        with self._lock:
            return [
                a.fault
                for a in self._armed
                if (repo_id is None or a.repo_id == repo_id) and (path is None or a.path == path)
            ]

    def take(
        self,
        repo_id: str,
        path: str | None,
        kind: RequestKind,
        shape: Shape,
        has_body: bool,
        base: RepoFile | None = None,
    ) -> Selection:
        """Choose (and spend) the faults for one request; ``base`` is the file, if the request has one."""
        chosen: Fault | None = None
        version: RepoFile | None = None
        with self._lock:
            for armed in self._armed:
                f = armed.fault
                if (
                    armed.repo_id != repo_id
                    or not (armed.path == "*" or armed.path == path)
                    or not f.matches(kind)
                    or not f.applies_to(shape, has_body)
                ):
                    continue
                if f.kind == "new_version":
                    if version is None and base is not None:
                        version = armed.version_of(base)
                        self._spend(armed)
                elif chosen is None:
                    chosen = f
                    self._spend(armed)
            self._armed = [a for a in self._armed if a.remaining is None or a.remaining > 0]
        return Selection(chosen, version)

    def peek_version(self, repo_id: str, base: RepoFile) -> RepoFile | None:
        """The content an API listing should describe for ``base`` under an ``api``/``any`` new_version.

        Listings only look: they never spend a use, so a ``times``-limited version is spent by downloads.
        """
        with self._lock:
            for armed in self._armed:
                f = armed.fault
                if (
                    f.kind == "new_version"
                    and armed.repo_id == repo_id
                    and armed.path == base.path
                    and f.on in ("api", "any")
                ):
                    return armed.version_of(base)
        return None

    @staticmethod
    def _spend(armed: _Armed) -> None:
        if armed.remaining is not None:
            armed.remaining -= 1
