"""One file's bytes from the Hub (or its CDN) into a resumable partial on disk, hashed as they arrive.

:class:`Transfer` owns the HTTP machinery of one pull: a keep-alive connection pool per origin, the
Transfer-wide connection cap and the shared rate-limit gate. :meth:`Transfer.fetch` moves one file:

* **Bodies**: ``http.client`` sends the request and parses the headers; the body is read with
  ``readinto1`` into a reused buffer per connection and written with ``os.pwrite`` of the same memoryview,
  so no Python ``bytes`` object is made per chunk (httpx2 reads 64 KiB at a time through several copies and
  is the bottleneck there; it is not used on this path). Reading ``recv`` by ``recv`` in Python, rather than
  ``HTTPResponse.readinto``'s C loop, keeps the bytes that arrived before a reset, so a resume starts exactly
  where the data stopped.
* **Hashing** runs in the calling thread, over the contiguous prefix of completed bytes, read back with
  ``pread`` while it is still in the page cache: receiving and writing on one core, hashing on another
  pipeline well (one 1 GiB file unthrottled: 1.57-1.61 s against 1.9-2.2 s hashed in the receiving
  thread), and the same code re-hashes a resumed prefix and follows parts that complete out of order.
  When at least as many files are being fetched as there are CPUs, the other files keep the CPUs busy and
  a worker whose bytes are the next to hash hashes them from its buffer instead (no read-back; see
  ``_Fetch._hash_inline``). An ``observer`` (the content scan) sees the same bytes either way. Parts are
  handed out lowest first, so the digest is ready moments after the last byte (measured: 0.0-0.1 s
  unthrottled, at most ~0.5 s with 16 capped connections).
* **Writes** go out in 256 KiB pieces (see ``_WRITE_PIECE``).
* **Parts**: files of at least ``min_multipart_size`` are cut into parts fetched over several connections
  with ``Range``; an idle connection steals the upper half of the largest unfinished part, so there is no
  slow tail. With ``connections_per_file=None`` the number of connections ramps up (1, 4, 16) while the
  connections spend most of their time waiting for bytes, some CPU is idle (so they wait for the link,
  not for a CPU), two measuring windows in a row agree, and each step raises the throughput: capped CDN
  connections get many (1 GiB at a 50 MB/s cap per connection: ~390 MB/s on 2 cores), an unthrottled
  loopback or several files at once on a busy machine stay at one per file (extra connections there only
  cost CPU); a file held back is measured again half a second later. Extra connections give their slot
  back at a part boundary whenever another fetch of the Transfer is waiting for its first one.
* **Retries**: each part has its own :class:`~vcache.retry.RetryPolicy` budget, reset whenever that part
  makes progress. 429 / 503 ``Retry-After`` closes a gate that every connection of this Transfer waits at.
  Over all of them, one :class:`~vcache.retry.ProgressWatch` (shared with the pull's Hub calls) gives up
  once no byte has arrived anywhere for its budget, however many parts, connections or queued files wait.
* **Never two versions**: every 206 must start where asked and report the expected total; an ETag or
  ``X-Linked-Etag`` other than the expected one discards the partial and raises
  :class:`~vcache.errors.RemoteChanged`; a CDN whose ETag changes between requests does the same; a 200
  answer to a ranged request restarts the file from byte zero on that very response.
* **Bounded waits**: connect, read (first byte) and stall (no byte for ``stall_timeout``) timeouts are
  socket timeouts, each cut to what is left of the watch's budget; every retry is budgeted; every sleep
  uses the injected clock.
* **Token**: sent only to the endpoint's own origin (scheme, host, port); never logged, never in errors.

This module never decides whether bytes are *right* (the caller compares :attr:`FetchResult.actual` with
the expected digest and runs the checks), never writes into ``blobs/`` or ``snapshots/``, and never
retries a refusal (401/403/404) from the Hub.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import errno
import http.client
import json
import logging
import os
import re
import select
import shutil
import socket
import ssl
import struct
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import unquote, urljoin, urlsplit

try:
    import fcntl
    import termios
except ImportError:  # not on Windows: no backlog probe there
    fcntl = termios = None  # type: ignore[assignment]

from vcache._version import __version__
from vcache.errors import (
    AuthError,
    CacheNotWritable,
    DiskFull,
    EntryNotFound,
    GatedRepo,
    HubError,
    RateLimited,
    RemoteChanged,
    RepoNotFound,
    RetriesExhausted,
    RevisionNotFound,
    TransferError,
)
from vcache.hashing import Digest, StreamHasher, hash_stream_into

# One definition of an origin for the whole package: the token rule (invariant 7) must not have twins.
from vcache.hub import Origin as _Origin
from vcache.hub import host_of as _host_of
from vcache.hub import origin_of as _origin_of
from vcache.partial import (
    DEFAULT_STALE_AFTER,
    Partial,
    PartialMeta,
    RangeSet,
    open_partial,
    remove_partial,
)
from vcache.retry import (
    SYSTEM_CLOCK,
    Clock,
    ProgressWatch,
    RetryEvent,
    RetryPolicy,
    SystemClock,
    parse_retry_after,
)

__all__ = ["ByteObserver", "FetchResult", "FetchSpec", "Transfer"]

_log = logging.getLogger(__name__)

MiB = 1 << 20
#: Read buffer of a file's first connection (extra ones get a sixteenth). Each fill is one inline hash and
#: scan step and one commit (written in ``_WRITE_PIECE`` pieces). Measured on the 2-core VM (4 x 256 MiB
#: unthrottled, 3 runs each): 1 MiB 1.51-1.52 s, 2 MiB 1.50-1.51 s, 4 MiB 1.44-1.51 s.
BUFFER_SIZE = 4 * MiB
#: How much the hasher reads per step (it re-checks for restarts and new work between steps).
HASH_STEP = 8 * MiB
MAX_REDIRECTS = 10
DEFAULT_CONNECTIONS = 16
MIN_PART = 16 * MiB
MAX_PART = 64 * MiB
#: A whole-body answer of another length than expected is kept for the checks to diagnose (an LFS
#: pointer, an HTML page, a truncated file) when it is no longer than this or than the expected size.
SNIFF_LIMIT = 1 * MiB
_RAMP_INTERVAL = 0.1  # seconds of steady flow (every connection receiving) a ramp decision looks at
_RAMP_STEP = 4  # connections are multiplied by this at each step (1, 4, 16): capped links reach speed fast
_RAMP_GAIN = 1.2  # a step must raise the throughput by this factor to earn the next one
_RAMP_RECHECK = 0.5  # seconds before connections that were not link-bound are measured again
#: Below this share of idle CPU (the whole machine, over the measuring window) connections are not added:
#: they would wait for a CPU, not for the link. Measured on 2 cores with the server on the same machine
#: (4 x 256 MiB unthrottled): 1 connection per file 1.48-1.56 s, ramped to 4 per file 1.57-2.20 s.
_CPU_IDLE_MIN = 0.15
_RAMP_VOTES = 2  # measuring windows in a row that must call for a step before it is taken
#: Connections that spend at least this share of their time waiting for bytes are limited by the link,
#: and more of them help. Measured: ~100% on a capped link; 50-65% on an unthrottled loopback, where the
#: rest is the client's own copying and writing and more connections only add CPU work.
_LINK_BOUND = 0.8
# Checkpoints are frequent so a kill loses little (at 500 MB/s, 0.025 s is ~12 MB) and never wait for the
# disk: they go to the partial's progress file, overwritten in place. Once a second another thread runs
# fdatasync and then replaces the sidecar atomically, recording those ranges as durable (the ones trusted
# after a reboot). A rename can wait 0.1-0.2 s behind a running fdatasync on ext4, which is why the
# frequent checkpoints are not renames.
_CHECKPOINT_INTERVAL = 0.025
_SYNC_INTERVAL = 1.0
_HEARTBEAT = 5.0  # rewrite an unchanged sidecar this often so other processes see a live writer
_ALIGN = 64 * 1024
#: A buffer is written out once it is full or once this long has passed since it began to fill: on a slow
#: link a 4 MiB buffer would otherwise hold 80 ms of data (at 50 MB/s), which a kill loses and which makes
#: the ramp-up's 0.1 s measuring windows see zero, one or two fills (waiting shares of 60-170 %).
_FILL_TIME = 0.02
#: When a file is fetched over several connections, one whose kernel receive queue holds at least this
#: much after each of ``_BEHIND_READS`` reads in a row is limited by this client (CPU, disk), not by the
#: link: its receive buffer is clamped to this size. A larger window cannot speed up a reader that is
#: already behind, and every byte waiting in the kernel is lost if the process is killed (measured on the
#: 1 GiB capped benchmark: 25-50 MiB queued over 16 connections at a SIGKILL without the clamp). Should
#: the clamp ever make a connection link-bound, the ramp-up adds connections. A lone connection keeps the
#: window TCP gives it (clamping it cost 5-15% on the unthrottled 4-file benchmark).
_BACKLOG_CLAMP = 256 * 1024
_BEHIND_READS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*/(\d+)\s*", re.IGNORECASE)
_DIGITS = re.compile(r"\s*\d{1,19}\s*")


# --------------------------------------------------------------------------------------------------------
# Public values


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


# --------------------------------------------------------------------------------------------------------
# URLs, origins and connections


def _clean(text: str | None, limit: int = 200) -> str:
    """Server-supplied text made safe for a message: printable, one line, bounded."""
    if not text:
        return ""
    out = "".join(c if c.isprintable() else " " for c in text).strip()
    return out[:limit] + ("…" if len(out) > limit else "")


def _normalize_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').strip().lower()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class _Proxy(NamedTuple):
    host: str
    port: int
    authorization: str | None


def _parse_proxy(url: str) -> _Proxy | None:
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    auth = None
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(creds).decode("ascii")
    return _Proxy(parts.hostname, parts.port or 80, auth)


class _Conn:
    """One keep-alive connection to an origin (directly or through an HTTP proxy)."""

    def __init__(self, origin: _Origin, http_conn: http.client.HTTPConnection, proxy: _Proxy | None) -> None:
        self.origin = origin
        self.http = http_conn
        self.proxy = proxy
        self.reused = False
        # http.client drops ``http.sock`` as soon as a response says "Connection: close", while that
        # response is still being read from it: keep our own reference for timeouts and shutdown.
        self.sock: socket.socket | None = http_conn.sock
        self.behind = 0  # reads in a row after which bytes were still queued in the kernel
        self.clamped = False

    def note_backlog(self) -> None:
        """After a read: clamp the receive buffer once the kernel queue stays long (see _BACKLOG_CLAMP)."""
        if self.clamped or self.sock is None or fcntl is None:
            return
        try:
            raw = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            queued = struct.unpack("i", raw)[0]
        except (OSError, ValueError):
            return
        self.behind = self.behind + 1 if queued >= _BACKLOG_CLAMP else 0
        if self.behind >= _BEHIND_READS:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BACKLOG_CLAMP)
            self.clamped = True
            _log.debug(
                "%s:%s: this client is behind the link; receive buffer clamped",
                self.origin.host,
                self.origin.port,
            )

    def target(self, url: str) -> str:
        """The request target: absolute-form through a plain-HTTP proxy, origin-form otherwise."""
        if self.proxy is not None and self.origin.scheme == "http":
            return url.split("#", 1)[0]
        parts = urlsplit(url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def settimeout(self, seconds: float) -> None:
        """Set the socket timeout for the next reads and writes."""
        if self.sock is not None:
            self.sock.settimeout(seconds)

    def shutdown(self) -> None:
        """Wake a thread blocked on this connection (it then sees an error or EOF)."""
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the connection (and any response still open on it)."""
        with contextlib.suppress(OSError):
            self.http.close()
        self.sock = None


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket was closed by the server (an idle socket that is readable is
    either at EOF or holds bytes nobody asked for: useless either way)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Pool:
    """Idle keep-alive connections per origin. Thread-safe."""

    def __init__(
        self, connect_timeout: float, ssl_context: ssl.SSLContext | None, trust_env: bool, max_idle: int
    ) -> None:
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[_Conn]] = {}
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self._proxies = urllib.request.getproxies_environment() if trust_env else {}
        self._closed = False

    def _proxy_for(self, origin: _Origin) -> _Proxy | None:
        if not self._proxies or _is_loopback(origin.host):
            return None  # a proxy never serves loopback (the test Hub, a local mirror)
        if urllib.request.proxy_bypass(origin.host):  # NO_PROXY
            return None
        url = self._proxies.get(origin.scheme) or self._proxies.get("all")
        return _parse_proxy(url) if url else None

    def get(self, origin: _Origin, *, new: bool = False, connect_timeout: float | None = None) -> _Conn:
        """An idle connection to ``origin`` (unless ``new``), or a newly connected one (see ``.reused``).

        ``connect_timeout`` replaces the pool's for this connection (the caller's budget may be shorter).
        """
        with self._lock:
            if self._closed:
                raise TransferError("the Transfer is closed")
            idle = None if new else self._idle.get(origin)
            while idle:
                conn = idle.pop()
                if conn.http.sock is not None and not _dropped(conn.http.sock):
                    conn.reused = True
                    return conn
                conn.close()
        proxy = self._proxy_for(origin)
        timeout = self._connect_timeout if connect_timeout is None else connect_timeout
        http_conn: http.client.HTTPConnection
        target_host, target_port = (proxy.host, proxy.port) if proxy else (origin.host, origin.port)
        if origin.scheme == "https":
            context = self._ssl_context or ssl.create_default_context()
            http_conn = http.client.HTTPSConnection(
                target_host, target_port, timeout=timeout, context=context
            )
            if proxy is not None:
                tunnel_headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                http_conn.set_tunnel(origin.host, origin.port, headers=tunnel_headers)
        else:
            http_conn = http.client.HTTPConnection(target_host, target_port, timeout=timeout)
        http_conn.connect()
        conn = _Conn(origin, http_conn, proxy)
        if conn.sock is not None:
            # The request goes out in one write, but keep small writes from waiting on delayed ACKs.
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def discard_idle(self, origin: _Origin) -> None:
        """Close every idle connection to ``origin`` (one turned out stale: the others likely are too)."""
        with self._lock:
            conns = self._idle.pop(origin, [])
        for conn in conns:
            conn.close()

    def put(self, conn: _Conn) -> None:
        """Return a connection whose response was read to the end."""
        if conn.http.sock is None:
            return
        with self._lock:
            idle = self._idle.setdefault(conn.origin, [])
            if not self._closed and len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


class _Gate:
    """The Transfer-wide rate-limit gate: while it is closed, no connection starts a request."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._until = float("-inf")

    def close_for(self, seconds: float) -> None:
        """Keep the gate closed for at least ``seconds`` from now."""
        with self._lock:
            self._until = max(self._until, self._clock.monotonic() + seconds)

    def wait(self, cancel: threading.Event) -> None:
        """Return once the gate is open (or as soon as ``cancel`` is set)."""
        while not cancel.is_set():
            with self._lock:
                remaining = self._until - self._clock.monotonic()
            if remaining <= 0:
                return
            _pause(self._clock, remaining, cancel)


def _pause(clock: Clock, seconds: float, cancel: threading.Event) -> None:
    """Wait ``seconds`` on ``clock``; on the real clock a ``cancel`` cuts the wait short.

    An injected clock (tests) gets exactly one ``sleep(seconds)`` call, so its record of sleeps reads as
    the backoff sequence itself.
    """
    if isinstance(clock, SystemClock):
        cancel.wait(seconds)
    else:
        clock.sleep(seconds)


# --------------------------------------------------------------------------------------------------------
# Internal control flow


class _Retry(Exception):
    """An attempt failed in a way another attempt may cure."""

    def __init__(
        self,
        cause: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        cdn_refusal: bool = False,
    ) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status
        self.retry_after = retry_after
        self.cdn_refusal = cdn_refusal


class _Cancelled(Exception):
    """This worker's part was taken away (restart from zero, or the fetch failed elsewhere)."""


class _Part:
    """A byte range ``[start, end)`` of the file; ``pos`` is how far its owner got. ``end`` may shrink."""

    __slots__ = ("end", "generation", "hwm", "pos", "start")

    def __init__(self, start: int, end: int, generation: int) -> None:
        self.start = start
        self.pos = start
        self.end = end
        self.hwm = start  # the furthest this part ever got: progress beyond it resets the retry budget
        self.generation = generation


class _Body(NamedTuple):
    """A validated response about to be read: its bytes are file offsets ``[first, stop)``."""

    conn: _Conn
    resp: http.client.HTTPResponse
    first: int
    stop: int
    whole: bool  # a 200: the representation from byte 0
    length: int | None  # Content-Length of a whole body (None when chunked)


def _plan_parts(missing: list[tuple[int, int]], part_size: int | None) -> list[tuple[int, int]]:
    if part_size is None:
        return missing
    out: list[tuple[int, int]] = []
    for start, end in missing:
        out.extend((s, min(s + part_size, end)) for s in range(start, end, part_size))
    return out


def _default_part_size(size: int, connections: int) -> int:
    """About two parts per connection, each 16-64 MiB.

    Big enough that a request's round trip is small against its transfer time, small enough that the
    hashing lag (at most one part per connection) stays in the page cache; stealing removes the tail.
    """
    return max(MIN_PART, min(MAX_PART, -(-size // (2 * connections))))


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) CPU time of the whole machine in clock ticks (Linux ``/proc/stat``), else ``None``."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != b"cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    return ticks[3] + (ticks[4] if len(ticks) > 4 else 0), sum(ticks[:8])  # idle + iowait; no guest


def _cpu_idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time that was idle between two :func:`_cpu_times` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


#: Writes go to the file in pieces of at most this size. The page cache sizes its folios by the write: a
#: 2 MiB pwrite gets 2 MiB folios, whose high-order allocations on a VM with free page reporting
#: (virtio-balloon, this Firecracker machine) come from memory the host has taken back and must fault in
#: again. Measured (4 x 256 MiB, 2 MiB buffers, in-process, 3 runs each): whole-buffer writes 2.4-2.75 s
#: wall with 2.7-3.0 s of system time; 64-512 KiB pieces 1.42-1.70 s with 0.7-0.8 s, memory warm or cold.
#: The extra system calls cost a few milliseconds per GiB.
_WRITE_PIECE = 256 * 1024


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        # may be short, e.g. at RLIMIT_FSIZE (the next call then gets EFBIG)
        n = os.pwrite(fd, view[:_WRITE_PIECE], offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
        offset += n


# --------------------------------------------------------------------------------------------------------
# The Transfer


class Transfer:
    """One per pull: owns the HTTP machinery, the global connection cap and the shared rate-limit gate.

    Thread-safe: several files may be fetched at once from different threads. Parameters:

    * ``endpoint`` / ``token``: the Hub origin and the token sent to it (and only to it).
    * ``policy``: the retry budget of each part; ``clock``: time for backoff and the rate-limit gate.
    * ``watch``: the give-up budget over every fetch of this Transfer (pass the pull's, shared with its Hub
      calls); by default one of :data:`~vcache.retry.DEFAULT_GIVE_UP` seconds on ``clock``.
    * ``connect_timeout``, ``read_timeout`` (until the response headers), ``stall_timeout`` (no body byte).
    * ``max_connections``: cap over all files; ``connections_per_file``: ``None`` ramps up to 16 while it
      pays off, a number uses exactly that many from the start; ``part_size``: ``None`` picks 16-64 MiB.
    * ``min_multipart_size``: smaller files use one request.
    * ``stale_after``: a partial untouched this long may be adopted by this process.
    * ``check_free_space``: refuse to start (:class:`~vcache.errors.DiskFull`) without room for the file.
    * ``trust_env``: honour ``HTTP(S)_PROXY`` / ``NO_PROXY`` (never for loopback).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        token: str | None,
        policy: RetryPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        watch: ProgressWatch | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        stall_timeout: float = 30.0,
        max_connections: int = 16,
        connections_per_file: int | None = None,
        part_size: int | None = None,
        min_multipart_size: int = 64 * MiB,
        user_agent: str | None = None,
        check_free_space: bool = True,
        stale_after: float = DEFAULT_STALE_AFTER,
        buffer_size: int = BUFFER_SIZE,
        trust_env: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if connections_per_file is not None and connections_per_file < 1:
            raise ValueError("connections_per_file must be >= 1 or None")
        if part_size is not None and part_size < 1:
            raise ValueError("part_size must be >= 1 or None")
        if min(connect_timeout, read_timeout, stall_timeout) <= 0:
            raise ValueError("timeouts must be > 0")
        self.endpoint = endpoint.rstrip("/")
        self._hub_origin = _origin_of(self.endpoint)
        self._token = token or None
        self.policy = policy if policy is not None else RetryPolicy()
        self.clock = clock
        self.watch = watch if watch is not None else ProgressWatch(clock=clock)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.stall_timeout = stall_timeout
        self.max_connections = max_connections
        self.connections_per_file = connections_per_file
        self.part_size = part_size
        self.min_multipart_size = min_multipart_size
        self.user_agent = user_agent or f"vcache/{__version__}"
        self.check_free_space = check_free_space
        self.stale_after = stale_after
        self.buffer_size = max(64 * 1024, buffer_size)
        self._slots = threading.BoundedSemaphore(max_connections)
        # Fetches waiting for their first connection: while there are any, no fetch adds a connection,
        # and extra connections give theirs up at the next part, so one big file never starves the rest.
        self._first_waiters = 0
        self._fetching = 0  # fetches running now (for the inline-hashing choice)
        self._waiters_lock = threading.Lock()
        self._cpus = os.cpu_count() or 1
        self._gate = _Gate(clock)
        self._pool = _Pool(connect_timeout, ssl_context, trust_env, max_idle=max_connections)

    def __repr__(self) -> str:  # never show the token
        return f"Transfer(endpoint={self.endpoint!r}, token={'***' if self._token else None})"

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle connection; the Transfer cannot be used afterwards."""
        self._pool.close()

    def discard(self, result_or_partial_path: FetchResult | str | os.PathLike[str]) -> None:
        """Delete a partial (data file and sidecar): after a rejected result, or to tidy up after publishing."""
        if isinstance(result_or_partial_path, FetchResult):
            remove_partial(result_or_partial_path.data_path)
        else:
            remove_partial(result_or_partial_path)

    def fetch(
        self,
        spec: FetchSpec,
        partial_dir: str | os.PathLike[str],
        *,
        fresh: bool = False,
        on_progress: Callable[[int], None] | None = None,
        observer: ByteObserver | None = None,
    ) -> FetchResult:
        """Download ``spec`` into a partial in ``partial_dir``, resuming what an earlier attempt left.

        ``fresh=True`` ignores earlier partials (after a digest mismatch the bytes on disk are suspect).
        ``on_progress(delta)`` is called from worker threads with the number of newly completed bytes (the
        bytes reused from an earlier partial first; negative when a restart from zero drops bytes).
        ``observer`` sees every byte of the file in order, from the hasher's own buffers (the bytes on
        disk, read once for the digest), so a content check needs no second pass.

        Raises :class:`~vcache.errors.RemoteChanged` (partial discarded), :class:`~vcache.errors.HubError`
        subclasses for refusals, :class:`~vcache.errors.RateLimited` /
        :class:`~vcache.errors.RetriesExhausted` when the budget is spent, :class:`~vcache.errors.DiskFull`
        / :class:`~vcache.errors.CacheNotWritable` for disk trouble (partial kept, resumable).
        """
        if spec.size < 0:
            raise ValueError("spec.size must be >= 0")
        try:
            _origin_of(spec.url)
        except ValueError as exc:
            raise TransferError(f"{spec.path}: {exc}", path=spec.path) from None
        meta = PartialMeta(spec.etag, spec.size, spec.expected, spec.commit, spec.path)
        partial = open_partial(partial_dir, meta, fresh=fresh, stale_after=self.stale_after)
        try:
            if self.check_free_space:
                self._check_space(spec, Path(partial_dir), spec.size - partial.completed.total)
        except BaseException:
            if partial.adopted_from is None:
                partial.remove()  # nothing worth keeping was in it
            else:
                partial.close()
            raise
        with self._waiters_lock:
            self._fetching += 1
        try:
            # Waiting for a connection slot counts too: files queued behind a dead server's fetches do not
            # each start a budget of their own.
            with self.watch.waiting(_host_of(spec.url), spec.path):
                return _Fetch(self, spec, partial, on_progress, observer).run()
        finally:
            with self._waiters_lock:
                self._fetching -= 1

    def _check_space(self, spec: FetchSpec, partial_dir: Path, missing: int) -> None:
        if missing <= 0:
            return
        try:
            free = shutil.disk_usage(partial_dir).free
        except OSError:
            return  # cannot tell: let the writes decide
        if free < missing:
            raise DiskFull(
                f"{spec.path}: needs {missing:,} more bytes in {partial_dir}, but only {free:,} are free",
                path=spec.path,
                needed=missing,
                free=free,
            )


# --------------------------------------------------------------------------------------------------------
# One fetch


class _Fetch:
    """The state of one :meth:`Transfer.fetch`: parts, workers, the hasher and the checkpointer.

    Locking: ``cv`` guards the part table, ``done``, ``generation``, ``size`` and the counters. A restart
    from zero bumps ``generation``; a worker commits bytes only under ``cv`` and only for the generation it
    read them in, and the restart waits for in-flight writes (``inflight``) before it truncates the file, so
    bytes of an abandoned generation can never be recorded as complete.
    """

    def __init__(
        self,
        t: Transfer,
        spec: FetchSpec,
        partial: Partial,
        on_progress: Callable[[int], None] | None,
        observer: ByteObserver | None = None,
    ) -> None:
        self.t = t
        self.observer = observer
        self.spec = spec
        self.partial = partial
        self.fd = partial.fd
        self.on_progress = on_progress
        self.cv = threading.Condition()
        self.hash_lock = threading.Lock()
        self.ckpt_lock = threading.Lock()
        self.ckpt_stop = threading.Event()
        self.done = partial.completed.copy()
        self.durable = partial.durable.copy()  # what the last fdatasync covered
        self.resumed_from = self.done.total
        # The digest state, under hash_lock: which generation and size it is for, and how far it got.
        self.h_key = (0, spec.size)
        self.h_hasher = StreamHasher(spec.expected.algorithm, spec.size)
        self.hashed = 0
        self.hashed_inline = 0  # bytes hashed from the workers' buffers (the rest was read back)
        if observer is not None:
            observer.reset()
        self.size = spec.size
        self.generation = 0
        self.inflight = 0
        self.error: BaseException | None = None
        self.cancel = threading.Event()  # set together with ``error``: interrupts waits and sleeps
        self.single = False  # no stealing and no ramp (after a restart from zero)
        self.location: str | None = None  # where body requests go after a redirect off the hub
        self.foreign_etags: dict[_Origin, str] = {}
        self.conns: set[_Conn] = set()
        self.received = 0
        self.waited = 0.0  # seconds workers spent waiting for body bytes (summed over workers)
        self.last_byte_at = time.monotonic()
        self.requests = 0
        self.events: list[RetryEvent] = []
        self.running = 0
        self.warm = 0  # running workers that have received body bytes
        self.local = threading.local()
        self.threads: list[threading.Thread] = []
        self.checkpointer = threading.Thread(target=self._checkpointer, name="vcache-checkpoint", daemon=True)
        self.syncer = threading.Thread(target=self._syncer, name="vcache-fdatasync", daemon=True)
        self.noted: RangeSet | None = None  # last ranges in the progress file
        self.saved: tuple[RangeSet, RangeSet] | None = None  # last (ranges, durable) in the sidecar

        missing = self.done.missing(self.size)
        multipart = self.size >= t.min_multipart_size and t.connections_per_file != 1
        self.adaptive = multipart and t.connections_per_file is None
        self.cap = min(t.connections_per_file or DEFAULT_CONNECTIONS, t.max_connections) if multipart else 1
        part_size = t.part_size or _default_part_size(self.size, self.cap)
        self.part_size = part_size if multipart else None
        self.steal_min = max(_ALIGN, min(4 * MiB, part_size // 4)) if multipart else 0
        self.queue: collections.deque[_Part] = collections.deque(
            _Part(s, e, 0) for s, e in _plan_parts(missing, self.part_size)
        )
        self.parts: list[_Part] = []
        self.target = 1 if self.adaptive else self.cap
        self.ramp_frozen = not self.adaptive
        self.ramp_prev: float | None = None
        self.ramp_hold_until = 0.0
        self.ramp_votes = 0  # windows in a row that asked for more connections
        self.ramp_warmed = False  # the first measuring window has passed
        self.ramp_open = False  # a measuring window is running (it starts after warm-up and holds)
        self.ramp_cpu: tuple[int, int] | None = None
        self.ramp_strikes = 0
        self.ramp_t = time.monotonic()
        self.ramp_bytes = 0
        self.ramp_waited = 0.0

    # -- the calling thread: start workers, hash, supervise ------------------------------------------

    def run(self) -> FetchResult:
        try:
            if self.resumed_from and self.on_progress:
                self.on_progress(self.resumed_from)
            if self.queue:
                self._acquire_first_slot()
                self._spawn()
                self.checkpointer.start()
                self.syncer.start()
            actual = self._hash_until_complete()
            hashed_at = time.monotonic()
            # Every byte is in, but a worker may still be checking that its body really ended there (and
            # find it did not): wait for all of them, which their socket timeouts bound, and look again.
            self._join_workers(timeout=None)
            if self.error is not None:
                raise self.error
            self._stop_checkpointer()
            try:
                if os.fstat(self.fd).st_size > self.size:
                    os.ftruncate(self.fd, self.size)  # never publish stray bytes past the end
                os.fsync(self.fd)
            except OSError as exc:
                raise self._disk_error(exc) from exc
            _log.debug(
                "%s: last byte %.2f s before the digest (%.0f%% hashed as it arrived), fsync took %.2f s",
                self.spec.path,
                hashed_at - self.last_byte_at,
                100 * self.hashed_inline / max(1, self.size),
                time.monotonic() - hashed_at,
            )
            if self.size == self.spec.size:
                with self.ckpt_lock:
                    whole = RangeSet([(0, self.size)])
                    self.partial.save(whole, whole)
            if not self.partial.is_ours():
                raise TransferError(
                    f"{self.spec.path}: another process adopted this partial while this one was paused; "
                    "fetch again",
                    path=self.spec.path,
                )
        except BaseException as exc:
            self._abandon(exc)
            raise
        self.partial.close()
        return FetchResult(
            data_path=self.partial.data_path,
            actual=actual,
            size=self.size,
            bytes_transferred=self.received,
            attempts=self.requests,
            resumed_from=self.resumed_from,
            sidecar_path=self.partial.sidecar_path,
            retries=tuple(self.events),
        )

    def _hash_until_complete(self) -> Digest:
        """Hash what the workers did not hash inline (out-of-order parts, a resumed prefix), in order."""
        buffer = bytearray(HASH_STEP)
        feed = None if self.observer is None else self.observer.feed
        while True:
            with self.cv:
                self._supervise()
                while True:
                    if self.error is not None:
                        raise self.error
                    frontier = min(self.done.prefix(), self.size)
                    if self.h_key != (self.generation, self.size) or frontier > self.hashed:
                        break
                    if self.hashed >= self.size:
                        with self.hash_lock:
                            if self.h_key == (self.generation, self.size) and self.hashed >= self.size:
                                return self.h_hasher.digest()
                        continue
                    self._supervise()
                    self.cv.wait(_RAMP_INTERVAL / 2)
            with self.hash_lock:
                # A restart truncates the file under hash_lock, so these bytes are at worst stale (and
                # then dropped when the key changes), never a short read.
                if self.h_key != (self.generation, self.size):
                    self._reset_hash()
                    continue
                start = self.hashed
                stop = min(frontier, start + HASH_STEP)
                if stop <= start:
                    continue  # a worker hashed it inline meanwhile
                try:
                    hash_stream_into(self.fd, self.h_hasher, start, stop, buffer=buffer, on_chunk=feed)
                except EOFError as exc:
                    raise TransferError(
                        f"{self.spec.path}: the partial file shrank under the download ({exc}); "
                        "another process may be writing it",
                        path=self.spec.path,
                    ) from None
                self.hashed = stop

    def _reset_hash(self) -> None:
        """Under ``hash_lock``: hash the current generation of the file from byte 0."""
        self.h_key = (self.generation, self.size)
        self.h_hasher = StreamHasher(self.spec.expected.algorithm, self.size)
        self.hashed = 0
        if self.observer is not None:
            self.observer.reset()

    def _hash_inline(self, generation: int, view: memoryview, pos: int) -> None:
        """Hash bytes a worker has just written when they are exactly the next ones to hash.

        The bytes in the worker's buffer are the bytes now in the file's page cache, so the digest need not
        read them back. That pays only while other fetches keep the other CPUs busy: measured on the 2-core
        reference machine, 4 x 256 MiB at once took 1.50-1.59 s inline against 1.57-1.68 s read back (and
        0.3 CPU-s less per GiB), but one 1 GiB file took 1.9-2.2 s inline against 1.57-1.61 s read back,
        where receiving on one core and hashing on the other pipeline. So: inline only while at least as
        many fetches run as there are CPUs. A worker never waits for the hash lock: if the hasher thread
        holds it, that thread reads the bytes back instead.
        """
        if (
            pos != self.hashed
            or self.t._fetching < self.t._cpus
            or not self.hash_lock.acquire(blocking=False)
        ):
            return
        try:
            end = pos + len(view)
            if self.h_key == (generation, self.size) and self.hashed == pos and end <= self.size:
                self.h_hasher.update(view)
                if self.observer is not None:
                    self.observer.feed(pos, view)
                self.hashed = end
                self.hashed_inline += len(view)
        finally:
            self.hash_lock.release()

    def _supervise(self) -> None:
        """Under ``cv``: ramp up, top up workers, and notice when every worker is gone too early."""
        now = time.monotonic()
        if not self.ramp_frozen and not self.single:
            if self.warm < self.running or now < self.ramp_hold_until:
                # Connections still being set up (DNS, TCP, TLS, redirect) would make any rate look low:
                # the measuring window starts once every connection is receiving (and after a hold).
                self.ramp_open = False
            elif not self.ramp_open:
                self._ramp_window(now)
            elif now - self.ramp_t >= _RAMP_INTERVAL:
                self._ramp(now)
        if self.running < self.target and self._work_left():
            self._spawn_locked()
        if (
            self.error is None
            and self.running == 0
            and self.done.prefix() < self.size
            and not self._work_left()
        ):
            self.error = TransferError(
                f"{self.spec.path}: every connection stopped with bytes still missing", path=self.spec.path
            )

    def _ramp(self, now: float) -> None:
        """Add connections while it pays: they mostly wait for bytes, and the last step raised the rate."""
        elapsed = now - self.ramp_t
        rate = (self.received - self.ramp_bytes) / elapsed
        waiting = (self.waited - self.ramp_waited) / (elapsed * max(1, self.running))
        idle = _cpu_idle_share(self.ramp_cpu, _cpu_times())
        self._ramp_window(now)
        if not self.ramp_warmed:
            # The first window after the connections start receiving sees TCP slow start and the start-up
            # of the whole pull (imports, other files' first bytes): it decides nothing.
            self.ramp_warmed = True
            return
        helped = self.ramp_prev is None or rate > _RAMP_GAIN * self.ramp_prev
        if waiting < _LINK_BOUND or (idle is not None and idle < _CPU_IDLE_MIN):
            # The link is not the limit now (loopback, LAN, a busy disk, or this process busy hashing a
            # resumed partial), or no CPU is idle (connections then wait for a CPU, not for the link:
            # several files at once, or a server on this machine): more connections would only cost
            # CPU. Look again in a while.
            self.ramp_hold_until = now + _RAMP_RECHECK
            self.ramp_votes = 0
        elif helped and self.ramp_votes + 1 < _RAMP_VOTES:
            self.ramp_votes += 1  # one window may be a passing moment (a disk flush, a GC pause): confirm
        elif helped:
            self.ramp_votes = 0
            self.ramp_prev = rate
            self.target = min(self.cap, self.target * _RAMP_STEP)
            self.ramp_frozen = self.target >= self.cap
            self.ramp_strikes = 0
        else:
            self.ramp_strikes += 1  # one slow interval may be noise; two in a row are the answer
            self.ramp_frozen = self.ramp_strikes >= 2
        _log.debug(
            "%s: %.0f MB/s over %d connections, waiting for bytes %.0f%% of the time, CPU idle %s; "
            "target %d%s",
            self.spec.path,
            rate / 1e6,
            self.running,
            100 * waiting,
            "unknown" if idle is None else f"{100 * idle:.0f}%",
            self.target,
            " (final)" if self.ramp_frozen else "",
        )

    def _ramp_window(self, now: float) -> None:
        """Start a new measuring window for the ramp-up."""
        self.ramp_t, self.ramp_bytes, self.ramp_waited = now, self.received, self.waited
        self.ramp_cpu = _cpu_times()
        self.ramp_open = True

    def _work_left(self) -> bool:
        if self.queue:
            return True
        if self.single:
            return False
        return any(p.end - p.pos - self.t.buffer_size >= 2 * self.steal_min for p in self.parts)

    def _acquire_first_slot(self) -> None:
        # Every fetch needs one connection. Waiting for it is bounded: extra connections of other fetches
        # hand theirs over at their next part boundary.
        t = self.t
        if not t._slots.acquire(blocking=False):
            with t._waiters_lock:
                t._first_waiters += 1
            try:
                t._slots.acquire()
            finally:
                with t._waiters_lock:
                    t._first_waiters -= 1
        with self.cv:
            self._start_worker()

    def _spawn(self) -> None:
        with self.cv:
            self._spawn_locked()

    def _spawn_locked(self) -> None:
        if self.t._first_waiters and self.threads:
            return  # another fetch is waiting for its first connection: it goes first
        while self.running < self.target and self._work_left() and self.t._slots.acquire(blocking=False):
            self._start_worker()

    def _start_worker(self) -> None:
        self.running += 1
        # Extra connections exist because each one is slow (a capped CDN): a sixteenth of the buffer fills
        # just as well there (in ~5 ms at 50 MB/s), keeps 16 connections from holding 64 MiB, and bounds
        # what a kill loses from the buffers to a few MiB.
        extra = bool(self.threads)
        size = max(_ALIGN, self.t.buffer_size // 16) if extra else self.t.buffer_size
        t = threading.Thread(
            target=self._work, args=(size, extra), name=f"vcache-fetch-{len(self.threads)}", daemon=True
        )
        self.threads.append(t)
        t.start()

    def _join_workers(self, timeout: float | None = 5.0) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self.threads):
            if t is not threading.current_thread():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _abandon(self, exc: BaseException) -> None:
        """Stop every worker; keep what is complete (or discard it all when the remote changed)."""
        self._fail(exc)
        self._join_workers()
        self._stop_checkpointer()
        if isinstance(self.error, RemoteChanged) or isinstance(exc, RemoteChanged):
            self.partial.remove()
            return
        try:
            self._checkpoint(sync=True, force=True)
        except Exception:
            # fdatasync failed (ENOSPC surfaces there with delayed allocation): still record the ranges,
            # which a crash-free resume can use; after a power cut the final digest check catches them.
            with contextlib.suppress(Exception):
                self._checkpoint(sync=False, force=True)
        self.partial.close()

    # -- the checkpointer thread ----------------------------------------------------------------------

    def _checkpointer(self) -> None:
        """Every ``_CHECKPOINT_INTERVAL``: write the completed ranges to the progress file if they changed."""
        while not self.ckpt_stop.wait(_CHECKPOINT_INTERVAL):
            if self.error is not None:
                return  # the calling thread writes the last checkpoint itself
            try:
                with self.cv:
                    snapshot, generation = self.done.copy(), self.generation
                if snapshot == self.noted or self.size != self.spec.size:
                    continue
                with self.ckpt_lock:
                    with self.cv:
                        if generation != self.generation:
                            continue
                    self.partial.note_progress(snapshot)
                    self.noted = snapshot
            except BaseException as exc:
                self._fail(exc)
                return

    def _syncer(self) -> None:
        """Every ``_SYNC_INTERVAL``: fdatasync, then record the ranges it covered in the sidecar."""
        last_save = time.monotonic()
        while not self.ckpt_stop.wait(_SYNC_INTERVAL):
            if self.error is not None:
                return
            now = time.monotonic()
            try:
                if self._checkpoint(sync=True, force=now - last_save >= _HEARTBEAT):
                    last_save = now
            except BaseException as exc:
                self._fail(exc)
                return

    def _checkpoint(self, *, sync: bool, force: bool) -> bool:
        """Replace the sidecar with the completed ranges (after an fdatasync with ``sync``: then durable too).

        Returns whether the sidecar was written (it is not when nothing changed, unless ``force``).
        """
        with self.cv:
            snapshot, generation, size = self.done.copy(), self.generation, self.size
        if size != self.spec.size:
            return False  # a whole-body answer of another length: nothing worth resuming
        if sync and snapshot != self.durable:
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                raise self._disk_error(exc) from exc
            with self.cv:
                if generation == self.generation:
                    self.durable = snapshot
        with self.cv:
            state = (snapshot, self.durable.copy())
        if not force and state == self.saved:
            return False
        with self.ckpt_lock:
            with self.cv:
                if generation != self.generation:
                    return False
            self.partial.save(*state)
            self.saved, self.noted = state, snapshot
        return True

    def _stop_checkpointer(self) -> None:
        self.ckpt_stop.set()
        for thread in (self.checkpointer, self.syncer):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(10.0)

    # -- worker threads ---------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Stop the whole fetch with ``exc``: wake sleepers and blocked reads in every worker."""
        with self.cv:
            if self.error is None:
                self.error = exc
            conns = list(self.conns)
            self.cv.notify_all()
        self.cancel.set()
        for conn in conns:
            conn.shutdown()

    def _work(self, buffer_size: int, extra: bool) -> None:
        buf = memoryview(bytearray(buffer_size))
        try:
            while (part := self._next_part()) is not None:
                self._run_part(part, buf)
                if extra and self.t._first_waiters:
                    break  # hand this connection to a fetch that has none
        except _Cancelled:
            pass
        except BaseException as exc:
            self._fail(exc)
        finally:
            with self.cv:
                self.running -= 1
                if getattr(self.local, "warm", False):
                    self.warm -= 1
                self.cv.notify_all()
            self.t._slots.release()

    def _next_part(self) -> _Part | None:
        with self.cv:
            if self.error is not None:
                return None
            if self.queue:
                part = self.queue.popleft()
                part.generation = self.generation
                self.parts.append(part)
                return part
            if self.single:
                return None
            # Nothing queued: take the upper half of the largest unfinished part (no slow tail).
            victim = max(
                (p for p in self.parts if p.generation == self.generation),
                key=lambda p: p.end - p.pos,
                default=None,
            )
            if victim is None:
                return None
            # The owner may already be reading one buffer ahead: split only what lies beyond that.
            reserved = victim.pos + self.t.buffer_size
            if victim.end - reserved < 2 * self.steal_min:
                return None
            mid = reserved + (victim.end - reserved) // 2
            mid -= mid % _ALIGN
            if mid <= reserved:
                return None
            part = _Part(mid, victim.end, self.generation)
            victim.end = mid
            self.parts.append(part)
            return part

    def _run_part(self, part: _Part, buf: memoryview) -> None:
        policy = self.t.policy
        watch = self.t.watch
        cdn_refusals = 0
        while True:
            with self.cv:
                if self.error is not None or part.generation != self.generation:
                    raise _Cancelled
                if part.pos >= part.end:
                    self.parts.remove(part)
                    return
            self.t._gate.wait(self.cancel)
            watch.check(self.spec.path, path=self.spec.path)
            try:
                self._attempt(part, buf)
                cdn_refusals = 0
            except _Retry as failure:
                if part.pos > part.hwm:
                    part.hwm, policy, cdn_refusals = part.pos, policy.reset(), 0
                watch.failed(_host_of(self.location or self.spec.url), self.spec.path, failure.cause)
                if failure.cdn_refusal:
                    cdn_refusals += 1
                    if cdn_refusals > 1:
                        raise self._cdn_refused(failure) from None
                policy = self._count(policy, failure)
                delay = policy.backoff()
                _log.info("%s: %s; retrying in %.1f s", self.spec.path, failure.cause, delay)
                if failure.status == 429 or failure.retry_after is not None:
                    watch.respite(delay)  # the server answered, asking for this wait
                    self.t._gate.close_for(delay)  # everyone waits, not just this connection
                else:
                    self._sleep(watch.pause(delay))
                watch.tick()
                continue
            if part.pos > part.hwm:
                part.hwm, policy = part.pos, policy.reset()

    def _count(self, policy: RetryPolicy, failure: _Retry) -> RetryPolicy:
        """The policy after one more failure, or the error that ends the fetch when the budget is spent."""
        with self.cv:
            self.events.append(RetryEvent(failure.cause, failure.status, failure.retry_after))
        try:
            return policy.increment(
                status=failure.status, retry_after=failure.retry_after, cause=failure.cause
            )
        except RetriesExhausted as exc:
            if failure.retry_after is not None and failure.retry_after > policy.retry_after_max:
                what = (
                    f"the server asked to wait {failure.retry_after:.0f} s, more than the "
                    f"{policy.retry_after_max:.0f} s allowed"
                )
            else:
                what = f"gave up after {policy.consecutive + 1} failed attempts in a row"
            message = f"{self.spec.path}: {what}; last cause: {failure.cause}"
            if failure.status == 429:
                raise RateLimited(
                    f"{message}; try again later or with fewer parallel downloads",
                    path=self.spec.path,
                    status=failure.status,
                    reason=failure.cause,
                    history=exc.history,
                ) from None
            raise RetriesExhausted(
                message, path=self.spec.path, status=failure.status, reason=failure.cause, history=exc.history
            ) from None

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and not self.cancel.is_set():
            _pause(self.t.clock, seconds, self.cancel)

    # -- one attempt: request, validate, read -----------------------------------------------------------

    def _attempt(self, part: _Part, buf: memoryview) -> None:
        with self.cv:
            # The part's own generation, never the fetch's: a part from before a restart must not start
            # committing under the new one.
            generation, start, end = part.generation, part.pos, part.end
            if generation != self.generation:
                raise _Cancelled
            if start >= end:
                return
        ranged = not (start == 0 and end >= self.spec.size)
        body = self._open(start, end, ranged)
        conn = body.conn
        reusable = False
        try:
            if body.whole and (ranged or body.length not in (None, self.spec.size)):
                # The server ignores ranges (or sends another length): restart the file from byte zero on
                # this very response, so no byte of another answer is ever mixed in.
                new_size = body.length if body.length is not None else self.spec.size
                self._restart_from_zero(part, generation, new_size, keep=conn, ignored_range=ranged)
                generation = part.generation
                start = 0
            reusable = self._read_body(part, generation, body, start, buf)
        finally:
            with self.cv:
                self.conns.discard(conn)
            if reusable:
                self.t._pool.put(conn)
            else:
                conn.close()

    def _read_body(self, part: _Part, generation: int, body: _Body, start: int, buf: memoryview) -> bool:
        """Read the body into the file; True when the response was consumed to its end."""
        conn, resp = body.conn, body.resp
        self.local.stall = self.t.watch.timeout(self.t.stall_timeout)
        conn.settimeout(self.local.stall)
        pos = start
        open_ended = body.whole and body.length is None  # chunked, or delimited by the connection's end
        stop = self.spec.size if open_ended else body.stop
        while pos < stop:
            with self.cv:
                if self.error is not None or generation != self.generation:
                    raise _Cancelled
                limit = min(stop, part.end)
            if pos >= limit:
                return False  # the rest of this part was stolen: drop the connection, not the bytes
            began = time.monotonic()
            n, failure, arrived = self._receive(resp, buf[: min(len(buf), limit - pos)], pos)
            now = time.monotonic()
            if n:  # keep what arrived, even before a failure
                self._write(part, generation, buf[:n], pos, now - began, now - arrived)
                pos += n
                if self.running > 1:  # each of several connections needs only a share of the window
                    conn.note_backlog()
            if failure is not None:
                raise failure
            if n == 0:
                if open_ended:
                    self._resize(part, generation, pos)  # a complete body, shorter than planned
                    return True
                raise _Retry(
                    f"body ended at byte {pos:,} of {stop:,} (connection closed before Content-Length)"
                )
        if open_ended:
            return self._expect_end(resp, buf)
        resp.close()  # read exactly to its Content-Length: the connection is ready for the next request
        return pos >= body.stop

    def _receive(
        self, resp: http.client.HTTPResponse, view: memoryview, pos: int
    ) -> tuple[int, _Retry | None, float]:
        """Fill ``view`` from the body: (bytes read, the failure that stopped it early, if any, and when the
        last of those bytes arrived: before a stall that is the stall's length ago).

        ``HTTPResponse.readinto`` loops over ``recv`` in C and drops what it already read when a reset
        or a timeout interrupts it; this loop keeps those bytes, so a resume starts exactly where the
        data stopped. Chunked bodies still go through ``http.client`` for the framing.
        """
        n = 0
        arrived = time.monotonic()
        try:
            if resp.chunked:
                return resp.readinto(view), None, time.monotonic()
            assert resp.fp is not None
            deadline = arrived + _FILL_TIME
            while n < len(view):
                got = resp.fp.readinto1(view[n:])  # one recv at most: what has arrived so far
                if not got:
                    break
                n += got
                arrived = time.monotonic()
                if arrived >= deadline:
                    break  # a slow link: write (and account for) what arrived so far
            return n, None, arrived
        except http.client.IncompleteRead as exc:
            return (
                len(exc.partial),
                _Retry(f"connection lost at byte {pos + len(exc.partial):,} (body cut short)"),
                time.monotonic(),
            )
        except TimeoutError:
            waited = getattr(self.local, "stall", self.t.stall_timeout)
            stalled = f"no data for {waited:.3g} s (stalled) at byte {pos + n:,}"
            return n, _Retry(stalled), arrived
        except (OSError, http.client.HTTPException) as exc:
            return n, _Retry(f"connection lost at byte {pos + n:,} ({_describe_net(exc)})"), arrived

    def _expect_end(self, resp: http.client.HTTPResponse, buf: memoryview) -> bool:
        n, failure, _ = self._receive(resp, buf[:1], self.spec.size)
        if n:
            raise RemoteChanged(
                f"{self.spec.path}: the server sent more than the expected {self.spec.size:,} bytes; "
                "the file changed: plan again",
                path=self.spec.path,
            )
        return failure is None

    def _write(
        self, part: _Part, generation: int, view: memoryview, pos: int, waited: float, late: float = 0.0
    ) -> None:
        """pwrite ``view`` at ``pos`` and record it complete (unless a restart or a thief got there first).

        ``waited`` is how long the bytes took to arrive, for the ramp-up's link-bound test; ``late`` is how
        long ago the last of them arrived (the give-up budget counts from then, not from this write).
        """
        with self.cv:
            if self.error is not None or generation != self.generation:
                raise _Cancelled
            self.inflight += 1
        committed = 0
        try:
            _pwrite_all(self.fd, view, pos)
        except OSError as exc:
            with self.cv:
                self.inflight -= 1
                self.cv.notify_all()
            raise self._disk_error(exc) from exc
        self._hash_inline(generation, view, pos)
        with self.cv:
            self.inflight -= 1
            self.received += len(view)
            self.waited += waited
            self.last_byte_at = time.monotonic()
            if not getattr(self.local, "warm", False):
                self.local.warm = True
                self.warm += 1
            if generation == self.generation:
                # A thief may have taken the tail of this part meanwhile: record only what is still ours.
                hi = min(pos + len(view), part.end)
                if hi > pos:
                    self.done.add(pos, hi)
                    part.pos = max(part.pos, hi)
                    committed = hi - pos
            self.cv.notify_all()
        self.t.watch.progress(ago=late)
        if committed and self.on_progress is not None:
            self.on_progress(committed)

    def _restart_from_zero(
        self, part: _Part, generation: int, new_size: int, keep: _Conn, ignored_range: bool
    ) -> None:
        with self.cv:
            if self.error is not None or generation != self.generation:
                raise _Cancelled
            self.generation += 1
            lost = self.done.total
            self.done = RangeSet()
            self.durable = RangeSet()
            self.queue.clear()
            self.parts = [part]
            self.single = True
            self.size = new_size
            part.start = part.pos = 0
            part.end = new_size
            part.hwm = max(part.hwm, lost)  # the budget resets only once it gets further than before
            part.generation = self.generation
            others = [c for c in self.conns if c is not keep]
            while self.inflight:
                self.cv.wait()
            self.cv.notify_all()
        for conn in others:
            conn.shutdown()
        if ignored_range:
            _log.info("%s: the server ignored a range request; restarting from byte 0", self.spec.path)
        else:
            _log.info("%s: the server sent %d bytes, not %d", self.spec.path, new_size, self.spec.size)
        with self.ckpt_lock:
            if self.spec.size == new_size:
                self.partial.save(RangeSet())
        with self.hash_lock:
            try:
                self.partial.truncate()
            except OSError as exc:
                raise self._disk_error(exc) from exc
        if lost and self.on_progress is not None:
            self.on_progress(-lost)

    def _resize(self, part: _Part, generation: int, new_size: int) -> None:
        with self.cv:
            if generation != self.generation:
                raise _Cancelled
            self.size = new_size
            part.end = new_size
            self.cv.notify_all()

    # -- requests ---------------------------------------------------------------------------------------

    def _open(self, start: int, end: int, ranged: bool) -> _Body:
        """Send the GET (following redirects) and validate the answer; errors become _Retry or fatal."""
        url = self.location or self.spec.url
        with self.cv:
            self.requests += 1
        for _hop in range(MAX_REDIRECTS + 1):
            origin = _origin_of(url)
            is_hub = origin == self.t._hub_origin
            headers = {"User-Agent": self.t.user_agent, "Accept-Encoding": "identity"}
            if ranged:
                headers["Range"] = f"bytes={start}-{end - 1}"
                validator = f'"{self.spec.etag}"' if is_hub else self.foreign_etags.get(origin)
                if validator:
                    headers["If-Range"] = validator
            if self._token_for(origin):
                headers["Authorization"] = f"Bearer {self.t._token}"
            conn, resp = self._request(url, origin, headers)
            status = resp.status
            if status >= 400 and not self.t.policy.is_retryable_status(status):
                # A final "no" is a sign of life. Headers or a redirect are not: a server that answers
                # them and then sends no byte must not restart the give-up budget on every retry.
                self.t.watch.progress()
            try:
                self._check_identity(resp, origin, is_hub)
            except BaseException:
                self._drop(conn)
                raise
            if status in _REDIRECTS:
                location = resp.getheader("Location")
                self._finish_small(conn, resp)
                if not location:
                    raise _Retry(f"HTTP {status} redirect without a Location", status=status)
                try:
                    url = urljoin(url, location.strip())
                    target = _origin_of(url)
                except ValueError:
                    raise TransferError(
                        f"{self.spec.path}: redirected to an unusable location {_clean(location, 80)!r}",
                        path=self.spec.path,
                    ) from None
                if target != self.t._hub_origin:
                    self.location = url  # the CDN: later parts go straight there
                continue
            if status in (200, 206):
                return self._validated(conn, resp, start, end, ranged)
            self._refused(conn, resp, is_hub)
        raise TransferError(f"{self.spec.path}: more than {MAX_REDIRECTS} redirects", path=self.spec.path)

    def _token_for(self, origin: _Origin) -> bool:
        # Same scheme, host and port as the endpoint, and nothing else: not the CDN, not an http downgrade.
        return self.t._token is not None and origin == self.t._hub_origin

    def _request(
        self, url: str, origin: _Origin, headers: dict[str, str]
    ) -> tuple[_Conn, http.client.HTTPResponse]:
        watch = self.t.watch
        for fresh in (False, True):
            try:
                conn = self.t._pool.get(
                    origin, new=fresh, connect_timeout=watch.timeout(self.t.connect_timeout)
                )
            except TimeoutError:
                raise _Retry(f"cannot connect to {origin.host}:{origin.port} (timed out)") from None
            except ssl.SSLCertVerificationError as exc:
                raise TransferError(
                    f"{self.spec.path}: TLS certificate of {origin.host} rejected ({exc.verify_message})",
                    path=self.spec.path,
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(
                    f"cannot connect to {origin.host}:{origin.port} ({_describe_net(exc)})"
                ) from None
            with self.cv:
                if self.error is not None:
                    conn.close()
                    raise _Cancelled
                self.conns.add(conn)
            limit = watch.timeout(self.t.read_timeout)
            try:
                conn.settimeout(limit)
                conn.http.request("GET", conn.target(url), headers=headers)
                return conn, conn.http.getresponse()
            except TimeoutError:
                self._drop(conn)
                raise _Retry(f"no response within {limit:.3g} s") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                if conn.reused and not fresh:
                    # The server closed an idle keep-alive connection: not a failure of this attempt.
                    self.t._pool.discard_idle(origin)
                    continue
                raise _Retry(f"request failed ({_describe_net(exc)})") from None
        raise AssertionError("unreachable")

    def _drop(self, conn: _Conn) -> None:
        with self.cv:
            self.conns.discard(conn)
        conn.close()

    def _finish_small(self, conn: _Conn, resp: http.client.HTTPResponse, limit: int = 64 * 1024) -> bytes:
        """Read a small body (redirect, error) so the connection can be reused; close it otherwise."""
        data = b""
        try:
            length = resp.length
            if length is not None and length <= limit:
                data = resp.read()
                if resp.will_close:
                    self._drop(conn)
                else:
                    self._release(conn)
                return data
            data = resp.read(4096) if not resp.isclosed() else b""
        except (OSError, http.client.HTTPException):
            pass
        self._drop(conn)
        return data

    def _release(self, conn: _Conn) -> None:
        with self.cv:
            self.conns.discard(conn)
        self.t._pool.put(conn)

    def _check_identity(self, resp: http.client.HTTPResponse, origin: _Origin, is_hub: bool) -> None:
        """Raise RemoteChanged when the answer is about another version of the file than planned."""
        spec = self.spec
        linked = resp.getheader("X-Linked-Etag")
        if linked is not None and _normalize_etag(linked) != spec.etag:
            raise self._changed(f"etag {_clean(_normalize_etag(linked), 80)}")
        linked_size = resp.getheader("X-Linked-Size")
        if linked_size is not None and _DIGITS.fullmatch(linked_size) and int(linked_size) != spec.size:
            raise self._changed(f"size {int(linked_size):,}")
        if resp.status not in (200, 206) or linked is not None:
            return  # a redirect's own ETag is the pointer's, not the content's
        etag = resp.getheader("ETag")
        if not etag:
            return
        if is_hub:
            if _normalize_etag(etag) != spec.etag:
                raise self._changed(f"etag {_clean(_normalize_etag(etag), 80)}")
            return
        # A CDN names objects its own way; what matters is that it does not change between requests.
        with self.cv:
            seen = self.foreign_etags.setdefault(origin, etag.strip())
        if seen != etag.strip():
            raise self._changed(f"CDN etag {_clean(etag, 80)} (was {_clean(seen, 80)})")

    def _changed(self, what: str) -> RemoteChanged:
        return RemoteChanged(
            f"{self.spec.path}: the server now has another version ({what}; expected etag {self.spec.etag}, "
            f"{self.spec.size:,} bytes); the partial was discarded: plan the download again",
            path=self.spec.path,
            etag=self.spec.etag,
        )

    def _validated(
        self, conn: _Conn, resp: http.client.HTTPResponse, start: int, end: int, ranged: bool
    ) -> _Body:
        spec = self.spec
        try:
            encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("identity", ""):
                raise TransferError(
                    f"{spec.path}: the server sent a {_clean(encoding, 40)}-encoded body although none "
                    "was accepted",
                    path=spec.path,
                )
            raw_length = resp.getheader("Content-Length")
            length = int(raw_length) if raw_length and _DIGITS.fullmatch(raw_length) else None
            if resp.status == 206:
                return self._validated_range(conn, resp, start, length)
            if ranged and length is not None and length != spec.size:
                # A proxy's error page or similar answering a range request: transient, keep the partial.
                kind = _clean(resp.getheader("Content-Type"), 60) or "unknown type"
                raise _Retry(f"a range request was answered with a whole {length:,}-byte body ({kind})")
            if length is not None and length != spec.size and length > max(spec.size, SNIFF_LIMIT):
                raise self._changed(f"a {length:,}-byte body")
            return _Body(conn, resp, 0, length if length is not None else spec.size, True, length)
        except BaseException:
            self._drop(conn)
            raise

    def _validated_range(
        self, conn: _Conn, resp: http.client.HTTPResponse, start: int, length: int | None
    ) -> _Body:
        spec = self.spec
        content_range = resp.getheader("Content-Range") or ""
        m = _CONTENT_RANGE.fullmatch(content_range)
        if m is None:
            raise _Retry(f"206 with an unusable Content-Range {_clean(content_range, 60)!r}")
        first, last, total = int(m[1]), int(m[2]), m[3]
        if total != "*" and int(total) != spec.size:
            raise self._changed(f"a total of {int(total):,} bytes in Content-Range")
        if first != start:
            raise _Retry(f"asked for bytes from {start:,}, the server sent bytes from {first:,}")
        if last < first or last >= spec.size:
            raise _Retry(f"206 with an impossible Content-Range {_clean(content_range, 60)!r}")
        if length is not None and length != last - first + 1:
            raise _Retry(
                f"Content-Length {length:,} disagrees with Content-Range {_clean(content_range, 60)!r}"
            )
        return _Body(conn, resp, first, last + 1, False, None)

    def _refused(self, conn: _Conn, resp: http.client.HTTPResponse, is_hub: bool) -> None:
        """Turn an error status into _Retry or a fatal error (always raises)."""
        spec = self.spec
        status = resp.status
        retry_after = parse_retry_after(resp.getheader("Retry-After"), time.time())
        code = _clean(resp.getheader("X-Error-Code"), 60)
        message = _clean(resp.getheader("X-Error-Message"), 200)
        body = self._finish_small(conn, resp)
        if not message and body:
            message = _error_from_body(body)
        detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status == 416:
            unsatisfied = _UNSATISFIED_RANGE.fullmatch(resp.getheader("Content-Range") or "")
            if unsatisfied and int(unsatisfied[1]) != spec.size:
                raise self._changed(f"a total of {int(unsatisfied[1]):,} bytes")
            raise _Retry(detail, status=status)
        if not is_hub and status in (401, 403, 404, 410):
            # A CDN link can expire during a long download: ask the Hub for a fresh one.
            self.location = None
            raise _Retry(f"CDN answered {detail}", status=status, cdn_refusal=True)
        if status in (401, 403, 404, 410):
            raise _hub_refusal(spec, status, code, detail)
        if self.t.policy.is_retryable_status(status):
            raise _Retry(detail, status=status, retry_after=retry_after)
        raise TransferError(f"{spec.path}: the server answered {detail}", path=spec.path, status=status)

    def _cdn_refused(self, failure: _Retry) -> HubError:
        detail = f"{failure.cause}, also for a freshly resolved link"
        return _hub_refusal(self.spec, failure.status or 403, "", detail)

    def _disk_error(self, exc: OSError) -> TransferError:
        spec, where = self.spec, self.partial.partial_dir
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            try:
                free = f"{shutil.disk_usage(where).free:,} bytes free"
            except OSError:
                free = "free space unknown"
            why = "file size limit reached" if exc.errno == errno.EFBIG else os.strerror(exc.errno)
            return DiskFull(
                f"{spec.path}: cannot write into {where} ({why}; {free}); the partial is kept and the "
                "download resumes from it next time",
                path=spec.path,
                errno=exc.errno,
            )
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return CacheNotWritable(
                f"{spec.path}: cannot write into {where} ({os.strerror(exc.errno)})",
                path=spec.path,
                errno=exc.errno,
            )
        return TransferError(f"{spec.path}: writing into {where} failed ({exc})", path=spec.path)


def _describe_net(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "body cut short"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection"
    text = _clean(str(exc), 120)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_from_body(body: bytes) -> str:
    try:
        doc = json.loads(body[:4096])
    except (ValueError, RecursionError):  # not JSON, or nested too deeply for Python's parser
        return ""
    return (
        _clean(doc.get("error"), 200) if isinstance(doc, dict) and isinstance(doc.get("error"), str) else ""
    )


def _hub_refusal(spec: FetchSpec, status: int, code: str, detail: str) -> HubError:
    where = f"{spec.path} at {spec.commit[:12]}"
    if code == "GatedRepo":
        return GatedRepo(
            f"{where}: the repository is gated ({detail}); request access on the Hub",
            path=spec.path,
            status=status,
        )
    if code == "RepoNotFound":
        return RepoNotFound(
            f"{where}: repository not found or not visible with this token ({detail})",
            path=spec.path,
            status=status,
        )
    if code == "RevisionNotFound":
        return RevisionNotFound(f"{where}: revision not found ({detail})", path=spec.path, status=status)
    if code == "EntryNotFound" or status in (404, 410):
        return EntryNotFound(f"{where}: file not found ({detail})", path=spec.path, status=status)
    return AuthError(
        f"{where}: access refused ({detail}); check the token (HF_TOKEN or `hf auth login`)",
        path=spec.path,
        status=status,
    )
