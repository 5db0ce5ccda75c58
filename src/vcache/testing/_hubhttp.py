"""The wire side of the test Hub: reading requests, choosing answers, and writing them.

Owns the two listeners (the hub origin and the CDN origin), the per-connection handler that routes
``/api/...``, ``/{prefix}{repo}/resolve/...`` and CDN paths, Range/If-Range, authentication, the request
record, throttling, and carrying out the fault that :mod:`vcache.testing._hubfaults` chose for a request.
:class:`vcache.testing.hub.HubServer` is the public face; nothing here is public API.

Bodies of unfaulted files never pass through Python byte by byte: a file goes out with ``os.sendfile``
(in 1 MiB calls, or in chunks paced to the per-connection cap when throttled), in-memory content with
``send`` of a memoryview, and a fault only splits the body into such segments. Every byte written to a
socket is counted, per request and in the server's live total.
A request is logged just before the last byte of its response goes out, so a client that has read a whole
response always finds its record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http
import json
import logging
import mimetypes
import os
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from vcache.testing._hubfaults import Fault, FaultTable, RequestKind, Shape
from vcache.testing._hubrepo import Commit, Repo, RepoFile, RepoType, lfs_pointer

__all__ = ["Exchange", "LfsStyle", "Listener", "Origin", "RequestRecord"]


class HubServer(Protocol):
    """What the wire side uses of :class:`vcache.testing.hub.HubServer` (named here as a protocol, so that
    this module never imports the one that imports it)."""

    lfs_style: LfsStyle
    page_size: int
    tokens: frozenset[str] | None
    throttle_bps: float | None
    digests: bool
    control: bool
    _faults: FaultTable
    _stopping: threading.Event

    @property
    def endpoint(self) -> str: ...

    @property
    def cdn_endpoint(self) -> str: ...

    @property
    def log(self) -> list[RequestRecord]: ...

    def clear_log(self) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def _repo(self, repo_type: RepoType, repo_id: str) -> Repo | None: ...

    def _count_sent(self, ex: Exchange, total: int, *, exact: bool = False) -> None: ...

    def _responses_begun(self, n: int) -> None: ...

    def _record(
        self, ex: Exchange, slot: tuple[int, int] | None = None, unsent: int = 0, unsent_head: int = 0
    ) -> tuple[int, int]: ...

    def _tree_id(self, commit: Commit, directory: str) -> str: ...


_logger = logging.getLogger("vcache.testing.hub")
_logger.addHandler(logging.NullHandler())

LfsStyle = Literal["redirect", "direct"]
Origin = Literal["hub", "cdn"]

_TYPE_PLURAL: dict[RepoType, str] = {"model": "models", "dataset": "datasets", "space": "spaces"}
_TYPE_SINGULAR: dict[str, RepoType] = {v: k for k, v in _TYPE_PLURAL.items()}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_REQUEST_BODY = 16 * 1024 * 1024
_ZEROS = memoryview(bytes(1 << 20))
# Largest single write of an unthrottled body: the live byte count moves at least this often.
_WRITE_CHUNK = 1 << 20
_CONTROL = "_testhub"
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Temporarily Unavailable</title></head>\n"
    b"<body><h1>We'll be right back</h1><p>The site is down for scheduled maintenance.</p></body></html>\n"
)


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered, as it arrived and as it was answered.

    ``raw_path`` keeps the percent-escapes; ``headers`` has lower-case keys; ``file_path`` is the decoded
    repo file path of resolve and CDN requests. ``status`` is 0 when the connection was reset or stalled
    before a status line went out; ``body_bytes`` counts body bytes actually written (handed to the
    kernel). ``wire_bytes`` counts the body bytes that reached the client's machine: for a connection cut
    mid-body (the client killed, say) the body bytes its TCP acknowledged, which excludes what was still in
    this server's send buffer (Linux ``TCP_INFO``; elsewhere, and for complete answers, ``body_bytes``).
    ``sent_bytes`` counts every byte of the response written to the socket, status line and headers
    included: what a client that was killed mid-body cost the server, its send buffer included (the sum of
    the ``send``/``sendfile`` return values). ``time`` is the wall-clock arrival time and ``duration`` the
    seconds until the response was complete or cut.
    """

    method: str
    origin: Origin
    raw_path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    range: str | None
    if_range: str | None
    authorization: str | None
    status: int
    body_bytes: int
    repo_id: str | None
    file_path: str | None
    time: float
    duration: float = 0.0
    wire_bytes: int = 0
    sent_bytes: int = 0


# --------------------------------------------------------------------------------------------------------
# Response bodies: segments of memory, of a file (sent with sendfile), or of zeros.


@dataclass(frozen=True)
class _Mem:
    view: memoryview

    def __len__(self) -> int:
        return len(self.view)


@dataclass(frozen=True)
class _Span:
    source: Path
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class _Zeros:
    length: int

    def __len__(self) -> int:
        return self.length


_Segment = _Mem | _Span | _Zeros


def _mem(data: bytes) -> list[_Segment]:
    return [_Mem(memoryview(data))] if data else []


def _first_bytes(segments: Sequence[_Segment], limit: int) -> list[_Segment]:
    """The segments cut down to their first ``limit`` bytes."""
    out: list[_Segment] = []
    for seg in segments:
        if limit <= 0:
            break
        n = min(len(seg), limit)
        out.append(_cut(seg, 0, n))
        limit -= n
    return out


def _cut(seg: _Segment, start: int, stop: int) -> _Segment:
    if isinstance(seg, _Mem):
        return _Mem(seg.view[start:stop])
    if isinstance(seg, _Span):
        return _Span(seg.source, seg.offset + start, stop - start)
    return _Zeros(stop - start)


@dataclass(frozen=True)
class _Patch:
    """Replacement bytes at an absolute file offset (``data=None`` means zeros)."""

    offset: int
    length: int
    data: bytes | None


@dataclass(frozen=True)
class _Content:
    """What a file response carries: the bytes, their ETag and how they may be served."""

    size: int
    data: bytes | None
    source: Path | None
    etag: str | None
    content_type: str
    hub_headers: bool = True
    honour_range: bool = True

    @classmethod
    def of(cls, f: RepoFile, content_type: str) -> _Content:
        return cls(f.size, f.data, f.source, f.etag, content_type)

    def read_at(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self.source is not None
        with self.source.open("rb") as fh:
            return os.pread(fh.fileno(), length, offset)

    def segments(self, start: int, stop: int, patch: _Patch | None) -> list[_Segment]:
        """Bytes ``[start, stop)`` of the content, with ``patch`` laid over them."""
        if patch is None or patch.offset >= stop or patch.offset + patch.length <= start:
            return self._raw(start, stop)
        p0, p1 = max(start, patch.offset), min(stop, patch.offset + patch.length)
        middle: _Segment = (
            _Zeros(p1 - p0)
            if patch.data is None
            else _Mem(memoryview(patch.data)[p0 - patch.offset : p1 - patch.offset])
        )
        return [*self._raw(start, p0), middle, *self._raw(p1, stop)]

    def _raw(self, start: int, stop: int) -> list[_Segment]:
        if start >= stop:
            return []
        if self.data is not None:
            return [_Mem(memoryview(self.data)[start:stop])]
        assert self.source is not None
        return [_Span(self.source, start, stop - start)]


@dataclass
class _Reply:
    """A response to send: status, headers (without Content-Length), body, and a delivery fault.

    The body is always the whole body: ``Content-Length`` is its length even when a fault cuts it short.
    """

    status: int
    headers: list[tuple[str, str]]
    body: list[_Segment] = field(default_factory=list)
    fault: Fault | None = None


def _header_value(value: str) -> str:
    # Values may echo user input (a revision from the URL): never let it break the header block.
    return "".join(c if " " <= c <= "~" else "?" for c in value)


def _json(status: int, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> _Reply:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _Reply(status, [("Content-Type", "application/json; charset=utf-8"), *headers], _mem(body))


def _error(status: int, code: str | None, message: str, headers: Sequence[tuple[str, str]] = ()) -> _Reply:
    hdrs = [("X-Error-Message", _header_value(message)), *headers]
    if code:
        hdrs.insert(0, ("X-Error-Code", code))
    if status in (204, 304) or status < 200:
        return _Reply(status, hdrs)
    return _json(status, {"error": message}, hdrs)


def _route_not_found() -> _Reply:
    return _error(404, None, "Not Found")


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _content_type(path: str) -> str:
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    # A ".gz" guess comes with an encoding; the body is never re-encoded, so call it what it is: bytes.
    return guessed if guessed and not encoding else "application/octet-stream"


_UNSATISFIABLE = (-1, -1)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive, ``None`` to serve the whole body, or ``_UNSATISFIABLE``.

    A header this server cannot use (another unit, several ranges, bad syntax) is ignored, as RFC 9110
    allows, so the answer is a plain 200.
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first_s:
            suffix = int(last_s)
            if suffix < 0:
                return None
            return _UNSATISFIABLE if suffix == 0 or size == 0 else (max(0, size - suffix), size - 1)
        first = int(first_s)
        last = int(last_s) if last_s else None
    except ValueError:
        return None
    if first < 0 or (last is not None and last < first):
        return None
    if first >= size:
        return _UNSATISFIABLE
    return first, size - 1 if last is None else min(last, size - 1)


def _take_rev(parts: Sequence[str]) -> tuple[str, list[str]]:
    """The revision at the head of raw path segments, and the segments after it.

    Clients send the revision percent-encoded as one segment (``refs%2Fpr%2F1``); an unencoded
    ``refs/<kind>/<name>`` spread over three segments is accepted too.
    """
    first = unquote(parts[0])
    if first == "refs" and len(parts) >= 3:
        return f"refs/{unquote(parts[1])}/{unquote(parts[2])}", list(parts[3:])
    return first, list(parts[1:])


def _join_path(parts: Sequence[str]) -> str:
    return "/".join(unquote(p) for p in parts if p)


# --------------------------------------------------------------------------------------------------------
# Listeners and the request handler.


class Listener(ThreadingHTTPServer):
    """One origin: accepts connections and tracks them so that stop() can close them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops SYNs when a client opens many connections at once, and
    # each dropped SYN costs a 1 s retransmit: the server must not be the bottleneck.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hub: HubServer, origin: Origin) -> None:
        self.hub = hub
        self.origin: Origin = origin
        self._conns: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._track_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def accept_loop(self) -> None:
        """Accept connections until the hub stops (``serve_forever`` would poll; this wakes at once)."""
        while not self.hub._stopping.is_set():
            try:
                request, client_address = self.get_request()
            except OSError:
                self.hub._stopping.wait(0.01)  # e.g. out of file descriptors: do not spin
                continue
            if self.hub._stopping.is_set():
                request.close()
                break
            self.process_request(request, client_address)

    def wake(self) -> None:
        """Unblock ``accept_loop`` (after the stop flag is set) by connecting to it."""
        host, port = self.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(host), str(host))
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
            pass

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can hang on an offline machine.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.settimeout(None)  # os.sendfile needs a blocking socket
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self._run_handler, args=(request, client_address), daemon=True, name="vcache-testhub-conn"
        )
        with self._track_lock:
            self._conns.add(request)
            self._handlers.add(t)
        t.start()

    def _run_handler(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._track_lock:
                self._handlers.discard(threading.current_thread())

    def shutdown_request(self, request: Any) -> None:
        self.forget(request)
        super().shutdown_request(request)

    def forget(self, sock: socket.socket) -> None:
        with self._track_lock:
            self._conns.discard(sock)

    def abort_connections(self) -> None:
        with self._track_lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv or send

    def join_handlers(self, deadline: float) -> None:
        with self._track_lock:
            handlers = list(self._handlers)
        for t in handlers:
            t.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-request is routine in fault tests; never spray tracebacks on stderr.
        _logger.debug("error while handling a request from %s", client_address, exc_info=True)


class _ClientGone(Exception):
    """The connection can no longer be written to (the client left, or the server is stopping)."""


class Exchange:
    """The mutable state of one request while it is answered; becomes a :class:`RequestRecord`."""

    def __init__(self, handler: _Handler) -> None:
        target = handler.path
        if target.startswith(("http://", "https://")):
            target = urlsplit(target)._replace(scheme="", netloc="").geturl()  # absolute-form request
        raw_path, _, query = target.partition("?")
        self.method = handler.command
        self.origin: Origin = handler.server.origin
        self.raw_path = raw_path
        self.query_string = query
        self.query = parse_qs(query, keep_blank_values=True)
        headers: dict[str, str] = {}
        for key, value in handler.headers.items():
            k = key.lower()
            headers[k] = f"{headers[k]}, {value}" if k in headers else value
        self.headers = headers
        self.range = headers.get("range")
        self.if_range = headers.get("if-range")
        self.authorization = headers.get("authorization")
        self.repo_id: str | None = None
        self.file_path: str | None = None
        self.status = 0
        self.body_bytes = 0
        self.sent_bytes = 0
        self.counted = 0  # of sent_bytes, how many the hub's live total holds
        self.wire_bytes: int | None = None
        self.internal = False  # a control request: neither logged nor counted
        self.time = time.time()
        self._t0 = time.monotonic()

    def to_record(self, unsent: int = 0, unsent_head: int = 0) -> RequestRecord:
        """The record of this request, counting ``unsent`` body bytes and ``unsent_head`` bytes of the
        status line and headers that are about to be written."""
        return RequestRecord(
            method=self.method,
            origin=self.origin,
            raw_path=self.raw_path,
            query=self.query,
            headers=self.headers,
            range=self.range,
            if_range=self.if_range,
            authorization=self.authorization,
            status=self.status,
            body_bytes=self.body_bytes + unsent,
            repo_id=self.repo_id,
            file_path=self.file_path,
            time=self.time,
            duration=time.monotonic() - self._t0,
            wire_bytes=self.wire_bytes if self.wire_bytes is not None else self.body_bytes + unsent,
            sent_bytes=self.sent_bytes + unsent + unsent_head,
        )


def _bytes_acked(sock: socket.socket) -> int | None:
    """``tcpi_bytes_acked`` of a TCP socket (Linux >= 4.1; it survives a reset), else ``None``."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    return struct.unpack_from("Q", raw, 120)[0] if len(raw) >= 128 else None


class _Pacer:
    """Paces body writes to the server's current ``throttle_bps`` (re-read before every chunk)."""

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        self.rate: float | None = None
        self.t0 = 0.0
        self.sent = 0

    def chunk(self) -> int | None:
        """The next chunk size, or ``None`` when unthrottled (send everything at once)."""
        rate = self.hub.throttle_bps
        if rate != self.rate:
            self.rate, self.t0, self.sent = rate, time.monotonic(), 0
        return None if rate is None else max(1024, int(rate / 50))

    def wait_for(self, n: int) -> None:
        """Sleep until ``n`` more bytes fit the budget; raise if the server stops meanwhile."""
        if self.rate is None:
            return
        self.sent += n
        delay = self.t0 + self.sent / self.rate - time.monotonic()
        if delay > 0 and self.hub._stopping.wait(delay):
            raise _ClientGone("server stopping")


class _Handler(BaseHTTPRequestHandler):
    """Answers the requests of one connection (keep-alive) on the hub or the CDN origin."""

    protocol_version = "HTTP/1.1"
    server: Listener
    server_version = "vcache-testhub"

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s " + format, self.server.origin, *args)

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    # -- top level ------------------------------------------------------------------------------------

    def _serve(self) -> None:
        ex = Exchange(self)
        try:
            body = self._read_request_body()
        except (ValueError, OSError):
            self.close_connection = True  # the rest of the stream cannot be parsed
            self._transmit(ex, _error(400, None, "Unreadable request body"))
            return
        try:
            if ex.method not in ("GET", "HEAD", "POST"):
                reply = _error(405, None, f"Method {ex.method} not allowed")
            elif self.server.origin == "cdn":
                reply = self._cdn(ex)
            else:
                reply = self._hub(ex, body)
        except Exception:
            _logger.exception("test hub failed to answer %s %s", ex.method, ex.raw_path)
            reply = _error(500, None, "Internal error in the test hub")
        self._transmit(ex, reply)

    def _read_request_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            while self.rfile.readline(1024).strip():  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= _MAX_REQUEST_BODY:
            raise ValueError(f"request body of {length} bytes")
        return self.rfile.read(length) if length else b""

    # -- the hub origin -------------------------------------------------------------------------------

    def _hub(self, ex: Exchange, body: bytes) -> _Reply:
        segs = ex.raw_path.split("/")[1:]
        if segs and segs[0] == "api":
            return self._api(ex, segs[1:], body)
        if self.hub.control and segs and segs[0] == _CONTROL:
            ex.internal = True
            return self._control(ex, segs[1:])
        if ex.method == "POST":
            return _error(405, None, "Method POST not allowed")
        return self._resolve(ex, segs)

    def _authorize(self, ex: Exchange, repo: Repo | None, repo_type: RepoType, repo_id: str) -> _Reply | None:
        """The refusal this request gets, or ``None`` when it may proceed (the Hub's conventions)."""
        token = None
        if ex.authorization is not None:
            scheme, _, value = ex.authorization.strip().partition(" ")
            value = value.strip()
            tokens = self.hub.tokens
            if scheme.lower() != "bearer" or not value or (tokens is not None and value not in tokens):
                # No X-Error-Code: the client recognises this case by the message alone.
                return _error(401, None, "Invalid credentials in Authorization header")
            token = value
        if repo is None or (repo.private and token is None):
            # Without a token a missing and a private repo look the same (401); with one, a missing is 404.
            return _error(404 if token else 401, "RepoNotFound", "Repository not found")
        if repo.gated and token is None:
            message = (
                f"Access to {repo_type} {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            return _error(401, "GatedRepo", message)
        return None

    def _resolve(self, ex: Exchange, segs: list[str]) -> _Reply:
        parsed = _parse_resolve(segs)
        if parsed is None:
            return _route_not_found()
        repo_type, repo_id, rev, path = parsed
        ex.repo_id, ex.file_path = repo_id, path
        repo = self.hub._repo(repo_type, repo_id)
        denied = self._authorize(ex, repo, repo_type, repo_id)
        if denied is not None:
            return denied
        assert repo is not None
        try:
            commit = repo.get_commit(rev)
        except KeyError:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        commit_header = [("X-Repo-Commit", commit.id)]
        base = commit.files.get(path)
        if base is None:
            # X-Repo-Commit here lets the client record the miss (.no_exist/<commit>/<path>).
            return _error(404, "EntryNotFound", "Entry not found", commit_header)
        redirect = base.lfs and self.hub.lfs_style == "redirect"
        is_head = ex.method == "HEAD"
        kind: RequestKind = "head" if is_head else ("redirect" if redirect else "get")
        shape: Shape = "redirect" if redirect else "file"
        selection = self.hub._faults.take(repo_id, path, kind, shape, not is_head, base)
        current = selection.version or base
        fault = selection.fault
        if fault is not None and fault.kind == "status":
            return _status_reply(fault, commit_header)
        if redirect:
            return self._redirect(repo, commit, current, fault)
        return self._file(ex, _Content.of(current, _content_type(path)), fault, current, commit_header)

    def _redirect(self, repo: Repo, commit: Commit, f: RepoFile, fault: Fault | None) -> _Reply:
        assert f.sha256 is not None and f.pointer is not None
        location = f"{self.hub.cdn_endpoint}/{_TYPE_PLURAL[repo.repo_type]}/{repo.repo_id}/{f.sha256}/{quote(f.path)}"
        headers = [
            ("Location", location),
            ("X-Repo-Commit", commit.id),
            ("X-Linked-Size", str(f.size)),
            ("Content-Type", "text/plain; charset=utf-8"),
        ]
        if self.hub.digests:
            headers.insert(2, ("X-Linked-Etag", f'"{f.sha256}"'))
            headers.append(("ETag", f'"{f.blob_id}"'))  # as on the Hub: the git id of the pointer
        return _Reply(302, headers, _mem(f"Found. Redirecting to {location}".encode()), fault)

    def _file(
        self,
        ex: Exchange,
        content: _Content,
        fault: Fault | None,
        f: RepoFile,
        extra_headers: list[tuple[str, str]],
    ) -> _Reply:
        """A file body (or its HEAD) with Range, If-Range and the content faults applied."""
        kind = fault.kind if fault is not None else None
        if fault is not None and kind == "truncate":
            content = dataclasses.replace(content, size=min(fault.n, content.size))
        elif kind == "lfs_pointer":
            pointer = f.pointer or lfs_pointer(hashlib.sha256(f.read_bytes()).hexdigest(), f.size)
            content = _Content(len(pointer), pointer, None, content.etag, "text/plain; charset=utf-8")
        elif kind == "html_page":
            # What a proxy or maintenance page looks like: no Hub headers, no ETag, no ranges.
            content = _Content(
                len(_HTML_PAGE), _HTML_PAGE, None, None, "text/html; charset=utf-8", False, False
            )
        delivery = fault if kind in ("drop_after", "stall", "short_body") else None

        headers = list(extra_headers) if content.hub_headers else []
        if content.etag is not None and self.hub.digests:
            headers.append(("ETag", f'"{content.etag}"'))
        headers.append(("Content-Type", content.content_type))
        if content.honour_range:
            headers.append(("Accept-Ranges", "bytes"))

        size = content.size
        wanted = _parse_range(ex.range, size) if content.honour_range and kind != "ignore_range" else None
        if wanted is not None and ex.if_range is not None and ex.if_range.strip() != f'"{content.etag}"':
            wanted = None  # RFC 9110 If-Range: the representation changed, so send all of it
        if wanted == _UNSATISFIABLE:
            message = f"Range {ex.range} not satisfiable for {size} bytes"
            return _error(416, None, message, [*extra_headers, ("Content-Range", f"bytes */{size}")])

        patch = None
        if fault is not None and kind == "flip_byte" and fault.offset < size:
            patch = _Patch(fault.offset, 1, bytes([content.read_at(fault.offset, 1)[0] ^ 0xFF]))
        elif fault is not None and kind == "zero_fill":
            patch = _Patch(fault.offset, fault.length, None)
        if fault is not None and kind == "wrong_content_range" and size > 0:
            first, last = wanted if wanted is not None else (0, size - 1)
            wanted = (min(max(0, first + fault.shift), last), last)

        if wanted is None:
            return _Reply(200, headers, content.segments(0, size, patch), delivery)
        first, last = wanted
        headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        return _Reply(206, headers, content.segments(first, last + 1, patch), delivery)

    def _control(self, ex: Exchange, segs: list[str]) -> _Reply:
        """``/_testhub/{log,counters,clear-log}``: the log and byte counts for a benchmark in another
        process (on only with ``control=True``; these requests are neither logged nor counted)."""
        routes = {"log": "GET", "counters": "GET", "clear-log": "POST"}
        name = "/".join(segs)
        if name not in routes:
            return _route_not_found()
        if ex.method != routes[name] and not (ex.method == "HEAD" and routes[name] == "GET"):
            return _error(405, None, f"Method {ex.method} not allowed here")
        if name == "log":
            return _json(200, [dataclasses.asdict(r) for r in self.hub.log])
        if name == "clear-log":
            self.hub.clear_log()
        return _json(200, self.hub.counters())

    # -- /api -----------------------------------------------------------------------------------------

    def _api(self, ex: Exchange, segs: list[str], body: bytes) -> _Reply:
        if segs == ["agent-harnesses"]:
            return _json(200, {"standardEnvVars": [], "harnesses": {}})
        if len(segs) < 2 or segs[0] not in _TYPE_SINGULAR:
            return _route_not_found()
        repo_type = _TYPE_SINGULAR[segs[0]]
        target = self._api_target(repo_type, segs[1:])
        if target is None:
            return _route_not_found()
        repo_id, tail = target
        if tail and tail[-1] == "":  # a trailing slash
            tail = tail[:-1]
        ex.repo_id = repo_id
        repo = self.hub._repo(repo_type, repo_id)
        denied = self._authorize(ex, repo, repo_type, repo_id)
        if denied is not None:
            return denied
        assert repo is not None
        selection = self.hub._faults.take(repo_id, None, "api", "api", ex.method != "HEAD")
        fault = selection.fault
        if fault is not None and fault.kind == "status":
            return _status_reply(fault, [])
        if fault is not None and fault.kind == "html_page":
            return _Reply(200, [("Content-Type", "text/html; charset=utf-8")], _mem(_HTML_PAGE))
        if fault is not None and fault.kind == "api_body":
            assert fault.data is not None
            return _Reply(200, [("Content-Type", "application/json; charset=utf-8")], _mem(fault.data))
        reply = self._api_route(ex, repo, tail, body)
        reply.fault = fault
        return reply

    def _api_target(self, repo_type: RepoType, rest: list[str]) -> tuple[str, list[str]] | None:
        """Split ``{repo}/{tail...}`` with a repo id of one or two segments, preferring known repos."""
        candidates = []
        if len(rest) >= 2:
            candidates.append((f"{rest[0]}/{rest[1]}", rest[2:]))
        candidates.append((rest[0], rest[1:]))
        valid = [(repo_id, tail) for repo_id, tail in candidates if _valid_api_tail(tail) and repo_id]
        for repo_id, tail in valid:
            if self.hub._repo(repo_type, repo_id) is not None:
                return repo_id, tail
        return valid[0] if valid else None

    def _api_route(self, ex: Exchange, repo: Repo, tail: list[str], body: bytes) -> _Reply:
        action = tail[0] if tail else "revision"
        if (action == "paths-info") != (ex.method == "POST"):
            return _error(405, None, f"Method {ex.method} not allowed here")
        if action == "refs":
            return _json(200, self._refs_json(repo, _flag(ex.query, "include_prs")))
        rev, rest = _take_rev(tail[1:]) if len(tail) > 1 else (repo.default_branch, [])
        try:
            commit = repo.get_commit(rev)
        except KeyError:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if action == "revision":
            return _json(200, self._info_json(repo, commit, _flag(ex.query, "blobs")))
        if action == "tree":
            return self._tree(ex, repo, commit, _join_path(rest))
        if action == "commits":
            return _json(200, [_commit_json(c) for c in repo.history(commit.id)])
        return self._paths_info(ex, repo, commit, body)

    def _files(self, repo: Repo, commit: Commit) -> dict[str, RepoFile]:
        """The commit's files as listings should describe them (with any API-visible new version)."""
        out = {}
        for path, f in commit.files.items():
            out[path] = self.hub._faults.peek_version(repo.repo_id, f) or f
        return out

    def _info_json(self, repo: Repo, commit: Commit, blobs: bool) -> dict[str, Any]:
        siblings = []
        for path, f in sorted(self._files(repo, commit).items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.lfs and f.pointer is not None and self.hub.digests:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.id,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created),
            "private": repo.private,
            "gated": "auto" if repo.gated is True else repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        elif repo.repo_type == "space":
            info["sdk"] = "static"
        return info

    def _entry(self, repo: Repo, commit: Commit, f: RepoFile, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
        if f.lfs and f.pointer is not None and self.hub.digests:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
        if expand:
            last = repo.get_commit(commit.last_changed.get(f.path, commit.id))
            entry["lastCommit"] = {
                "id": last.id,
                "title": last.message.split("\n")[0],
                "date": _iso(last.date),
            }
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
        return entry

    def _dir_entry(self, commit: Commit, path: str) -> dict[str, Any]:
        return {"type": "directory", "oid": self.hub._tree_id(commit, path), "size": 0, "path": path}

    def _tree(self, ex: Exchange, repo: Repo, commit: Commit, path: str) -> _Reply:
        files = self._files(repo, commit)
        dirs = _directories(files)
        if path and path not in dirs:
            return _error(404, "EntryNotFound", f"Entry not found: {path} is not a folder at {commit.id}")
        expand = _flag(ex.query, "expand")
        prefix = f"{path}/" if path else ""
        recursive = _flag(ex.query, "recursive")
        entries: list[tuple[str, bool]] = []  # (path, is_dir), sorted by path
        for p in sorted({*files, *dirs} - {""}):
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :]):
                entries.append((p, p in dirs))
        try:
            start = int(ex.query.get("cursor", ["0"])[-1] or 0)
        except ValueError:
            return _error(400, None, "Invalid cursor")
        stop = start + self.hub.page_size
        page = [
            self._dir_entry(commit, p) if is_dir else self._entry(repo, commit, files[p], expand)
            for p, is_dir in entries[start:stop]
        ]
        headers = []
        if stop < len(entries):
            query = {**ex.query, "cursor": [str(stop)]}
            host = ex.headers.get("host")
            base = f"http://{host}" if host else self.hub.endpoint
            headers.append(("Link", f'<{base}{ex.raw_path}?{urlencode(query, doseq=True)}>; rel="next"'))
        return _json(200, page, headers)

    def _paths_info(self, ex: Exchange, repo: Repo, commit: Commit, body: bytes) -> _Reply:
        if "json" in ex.headers.get("content-type", ""):
            try:
                doc = json.loads(body or b"{}")
                paths, expand = [str(p) for p in doc.get("paths", [])], bool(doc.get("expand", False))
            except (ValueError, AttributeError, TypeError):
                return _error(400, None, "Invalid JSON body")
        else:
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            paths, expand = form.get("paths", []), _flag(form, "expand")
        files = self._files(repo, commit)
        dirs = _directories(files)
        out = []
        for p in dict.fromkeys(x.strip("/") for x in paths):
            if p in files:
                out.append(self._entry(repo, commit, files[p], expand))
            elif p in dirs:
                out.append(self._dir_entry(commit, p))
        return _json(200, out)

    def _refs_json(self, repo: Repo, include_prs: bool) -> dict[str, Any]:
        groups: dict[str, list[dict[str, str]]] = {"branches": [], "converts": [], "tags": []}
        if include_prs:
            groups["pullRequests"] = []
        for ref, commit_id in sorted(repo.refs().items()):
            _, kind, name = ref.split("/", 2)
            group = {"heads": "branches", "tags": "tags", "convert": "converts", "pr": "pullRequests"}.get(
                kind
            )
            if group in groups:
                groups[group].append({"name": name, "ref": ref, "targetCommit": commit_id})
        return groups

    # -- the CDN origin -------------------------------------------------------------------------------

    def _cdn(self, ex: Exchange) -> _Reply:
        segs = ex.raw_path.split("/")[1:]
        if ex.method == "POST":
            return _error(405, None, "Method POST not allowed")
        if len(segs) < 4 or segs[0] not in _TYPE_SINGULAR:
            return _route_not_found()
        at = next((i for i in (2, 3) if i < len(segs) and _HEX64.fullmatch(segs[i])), None)
        if at is None or at + 1 >= len(segs):
            return _route_not_found()
        repo_id, sha256, path = "/".join(segs[1:at]), segs[at], _join_path(segs[at + 1 :])
        ex.repo_id, ex.file_path = repo_id, path
        repo = self.hub._repo(_TYPE_SINGULAR[segs[0]], repo_id)
        base = repo.find_lfs(sha256, path) if repo else None
        if repo is not None and base is None:
            # The link may carry a new_version's sha256: the fault is armed on the current file.
            try:
                base = repo.files_at(repo.default_branch).get(path)
            except KeyError:
                base = None
        if repo is None or base is None:
            return _error(404, None, "NoSuchKey")
        is_head = ex.method == "HEAD"
        selection = self.hub._faults.take(
            repo_id, path, "head" if is_head else "get", "file", not is_head, base
        )
        current = selection.version or base
        if current.sha256 != sha256 and selection.version is None:
            return _error(404, None, "NoSuchKey")
        fault = selection.fault
        if fault is not None and fault.kind == "status":
            return _status_reply(fault, [])
        # A CDN knows nothing of commits or pointers: the ETag is the object's own (its sha256).
        content = _Content(
            current.size, current.data, current.source, current.sha256, "application/octet-stream"
        )
        return self._file(ex, content, fault, current, [])

    # -- writing --------------------------------------------------------------------------------------

    def _transmit(self, ex: Exchange, reply: _Reply) -> None:
        """Send ``reply``, carrying out its delivery fault, and log it before the client can see the end."""
        is_head = ex.method == "HEAD"
        body = [] if is_head else [s for s in reply.body if len(s)]
        fault = reply.fault
        if fault is not None and is_head and fault.kind in ("drop_after", "stall"):
            # A HEAD has no body to cut, so the fault strikes before the status line.
            self.hub._record(ex)
            if fault.kind == "drop_after":
                self._reset()
            else:
                self._stall_and_close(fault.seconds)
            return
        ex.status = reply.status
        headers = [*reply.headers, ("Content-Length", str(sum(len(s) for s in reply.body)))]
        if self.close_connection:
            headers.append(("Connection", "close"))
        head = memoryview(_head_bytes(reply.status, headers))
        slot = None
        acked_before = _bytes_acked(self.connection)
        if not ex.internal:
            self.hub._responses_begun(1)
        try:
            if fault is None or fault.kind not in ("drop_after", "stall", "short_body"):
                # Log just before the final byte goes out: a client holding the whole response finds its
                # record in the log, and no test has to wait for the server thread to catch up.
                if body:
                    total = sum(len(s) for s in body)
                    self._send_all(ex, [_Mem(head)], count=False)
                    self._send_all(ex, _first_bytes(body, total - 1), count=True)
                    slot = self.hub._record(ex, unsent=1)
                    last = body[-1]
                    self._send_all(ex, [_cut(last, len(last) - 1, len(last))], count=True)
                else:
                    self._send_all(ex, [_Mem(head[:-1])], count=False)
                    slot = self.hub._record(ex, unsent_head=1)
                    self._send_all(ex, [_Mem(head[-1:])], count=False)
                return
            self._send_all(ex, [_Mem(head)], count=False)
            self._send_all(ex, _first_bytes(body, fault.n), count=True)
            slot = self.hub._record(ex)
            if fault.kind == "drop_after":
                self._reset()
            elif fault.kind == "stall":
                self._stall_and_close(fault.seconds)
            else:
                self.close_connection = True
        except _ClientGone:
            self.close_connection = True
            acked = _bytes_acked(self.connection)
            if acked is not None and acked_before is not None:
                ex.wire_bytes = max(0, min(ex.body_bytes, acked - acked_before - len(head)))
            self.hub._record(ex, slot)
        finally:
            if not ex.internal:
                self.hub._responses_begun(-1)

    def _wrote(self, ex: Exchange, n: int, *, body: bool) -> None:
        """Count ``n`` bytes just handed to the socket (of the body when ``body``)."""
        ex.sent_bytes += n
        if body:
            ex.body_bytes += n
        self.hub._count_sent(ex, ex.sent_bytes)

    def _send_all(self, ex: Exchange, segments: Iterable[_Segment], *, count: bool) -> None:
        pacer = _Pacer(self.hub) if count else None
        sock = self.connection
        try:
            for seg in segments:
                if isinstance(seg, _Span):
                    self._send_span(ex, sock, seg, pacer)
                    continue
                view = seg.view if isinstance(seg, _Mem) else None
                left = len(seg)
                while left:
                    step = min(left, (pacer.chunk() if pacer else None) or _WRITE_CHUNK)
                    if view is None:
                        step = min(step, len(_ZEROS))
                    if pacer:
                        pacer.wait_for(step)
                    chunk = (
                        _ZEROS[:step] if view is None else view[len(view) - left : len(view) - left + step]
                    )
                    sent = sock.send(chunk)
                    left -= sent
                    self._wrote(ex, sent, body=count)
        except OSError as e:
            raise _ClientGone(str(e)) from e

    def _send_span(self, ex: Exchange, sock: socket.socket, span: _Span, pacer: _Pacer | None) -> None:
        fd = os.open(span.source, os.O_RDONLY)
        try:
            offset, left = span.offset, span.length
            while left:
                step = min(left, (pacer.chunk() if pacer else None) or _WRITE_CHUNK)
                if pacer:
                    pacer.wait_for(step)
                sent = os.sendfile(sock.fileno(), fd, offset, step)
                if sent == 0:
                    _logger.warning("%s shrank since it was committed; closing the connection", span.source)
                    raise _ClientGone("source file shrank")
                offset += sent
                left -= sent
                self._wrote(ex, sent, body=True)
        finally:
            os.close(fd)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a dying proxy or peer would."""
        self.close_connection = True
        sock = self.connection
        self.server.forget(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # detach() so that nothing later shuts the socket down gracefully (which would send a FIN).
            os.close(sock.detach())
        except OSError:
            pass

    def _stall_and_close(self, seconds: float) -> None:
        self.hub._stopping.wait(seconds)
        self.close_connection = True


def _head_bytes(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {status} {phrase}", "Server: vcache-testhub", f"Date: {formatdate(usegmt=True)}"]
    lines.extend(f"{k}: {_header_value(v)}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _status_reply(fault: Fault, extra: list[tuple[str, str]]) -> _Reply:
    headers = list(extra)
    if fault.retry_after is not None:
        headers.append(("Retry-After", str(fault.retry_after)))
    return _error(fault.code, fault.error_code, f"Injected fault: HTTP {fault.code}", headers)


def _parse_resolve(segs: list[str]) -> tuple[RepoType, str, str, str] | None:
    """``(type, repo_id, revision, path)`` from ``[{datasets|spaces}/]{repo}/resolve/{rev}/{path...}``."""
    repo_type: RepoType = "model"
    if segs and segs[0] in ("datasets", "spaces") and "resolve" in segs[2:4]:
        repo_type = _TYPE_SINGULAR[segs[0]]
        segs = segs[1:]
    for n in (1, 2):
        if len(segs) > n + 2 and segs[n] == "resolve" and all(segs[:n]):
            rev, rest = _take_rev(segs[n + 1 :])
            path = _join_path(rest)
            if rev and path and all(rest):
                return repo_type, "/".join(segs[:n]), rev, path
            return None
    return None


def _valid_api_tail(tail: list[str]) -> bool:
    if tail and tail[-1] == "":  # a trailing slash
        tail = tail[:-1]
    if not tail:
        return True
    head = tail[0]
    if head == "refs":
        return len(tail) == 1
    if head in ("revision", "paths-info", "commits"):
        return len(tail) == 2 or (len(tail) == 4 and unquote(tail[1]) == "refs")
    return head == "tree" and len(tail) >= 2


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name)
    return values is not None and bool(values) and values[-1].lower() in ("1", "true", "yes")


def _directories(files: Iterable[str]) -> set[str]:
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return dirs


def _commit_json(c: Commit) -> dict[str, Any]:
    title, _, rest = c.message.partition("\n")
    return {
        "id": c.id,
        "title": title,
        "message": rest.strip(),
        "authors": [{"user": "vcache-testhub"}],
        "date": _iso(c.date),
    }
