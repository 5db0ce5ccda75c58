"""Keep-alive HTTP connections: one pool of idle connections per origin, proxies, TLS, sockets.

Both halves of a pull speak HTTP through a :class:`Pool`: the transfer's workers directly (see
``vcache.transfer``), and the Hub's metadata calls through :class:`PoolTransport`, an ``httpx2`` transport,
so that :class:`vcache.hub.HubClient` keeps the httpx API (redirects, decoding, responses) without
``httpcore2``'s start-up (0.035 s to import, and 0.035 s for a TLS context even for a plain-HTTP endpoint).

* **Origins**: :class:`Origin` (scheme, host, port) is the unit connections are pooled by and the unit the
  token rule speaks of.
* **TLS**: one context per pool, made on the first HTTPS connection: the one given, or the same trust store
  huggingface_hub's client uses (``httpcore2.default_ssl_context``: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, else
  the system's certificates). Making a context reads the whole certificate store (~0.035 s of CPU), so it is
  never made per connection.
* **Connections**: ``http.client`` connections, directly or through an HTTP(S) proxy from ``HTTP(S)_PROXY``
  (honoured only with ``trust_env``, never for loopback, and not for hosts in ``NO_PROXY``). A plain-HTTP
  proxy gets absolute-form request targets; HTTPS goes through a ``CONNECT`` tunnel.
* **Reuse**: a connection goes back to the pool only once its response was read to the end; an idle one
  the server has closed is dropped, not reused.
* **Receive buffers**: a connection that stays behind the link gets a clamped receive buffer (see
  ``_BACKLOG_CLAMP``).

The pool never sends a request and never sees a token (the transfer's ``_http`` and the Hub client do);
:class:`PoolTransport` sends exactly the request httpx built and hands back the raw answer.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import select
import socket
import ssl
import struct
import threading
import urllib.request
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import httpx2

try:
    import fcntl
    import termios
except ImportError:  # not on Windows: no backlog probe there
    fcntl = termios = None  # type: ignore[assignment]

from vcache.errors import HubError, TransferError

_log = logging.getLogger(__name__)

#: When a file is fetched over several connections, one whose kernel receive queue holds at least this
#: much after each of ``_BEHIND_READS`` reads in a row is limited by this client (CPU, disk), not by the
#: link: its receive buffer is clamped to this size. A larger window cannot speed up a reader that is
#: already behind, and every byte waiting in the kernel is lost if the process is killed (measured on the
#: 1 GiB capped benchmark: 25-50 MiB queued over 16 connections at a SIGKILL without the clamp). Should
#: the clamp ever make a connection link-bound, the ramp-up adds connections. A lone connection keeps the
#: window TCP gives it (clamping it cost 5-15% on the unthrottled 4-file benchmark).
_BACKLOG_CLAMP = 256 * 1024
_BEHIND_READS = 3


class Origin(NamedTuple):
    """Scheme, host and port of a URL: the unit the token rule speaks of."""

    scheme: str
    host: str
    port: int


def redact_url(url: str) -> str:
    """The URL without credentials and query string (signed CDN URLs carry secrets there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")
    except ValueError:
        return "<unparsable URL>"


def server_text(text: str | None, limit: int = 200) -> str:
    """Server-supplied text made safe for a message: printable, one line, bounded."""
    if not text:
        return ""
    out = "".join(c if c.isprintable() else " " for c in text).strip()
    return out[:limit] + ("…" if len(out) > limit else "")


def origin_of(url: str) -> Origin:
    """The origin of an http(s) URL (default ports filled in); ValueError for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {redact_url(url)}")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"URL has no host: {redact_url(url)}")
    port = parts.port or (443 if scheme == "https" else 80)
    return Origin(scheme, host, port)


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


class Connection:
    """One keep-alive connection to an origin (directly or through an HTTP proxy)."""

    def __init__(self, origin: Origin, http_conn: http.client.HTTPConnection, proxy: _Proxy | None) -> None:
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


class Pool:
    """Idle keep-alive connections per origin. Thread-safe."""

    def __init__(
        self, connect_timeout: float, ssl_context: ssl.SSLContext | None, trust_env: bool, max_idle: int
    ) -> None:
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context  # made on the first HTTPS connection when None (see _tls)
        self._idle: dict[Origin, list[Connection]] = {}
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self._proxies = urllib.request.getproxies_environment() if trust_env else {}
        self._closed = False

    def _proxy_for(self, origin: Origin) -> _Proxy | None:
        if not self._proxies or _is_loopback(origin.host):
            return None  # a proxy never serves loopback (the test Hub, a local mirror)
        if urllib.request.proxy_bypass(origin.host):  # NO_PROXY
            return None
        url = self._proxies.get(origin.scheme) or self._proxies.get("all")
        return _parse_proxy(url) if url else None

    def get(self, origin: Origin, *, new: bool = False, connect_timeout: float | None = None) -> Connection:
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
            context = self._tls()
            http_conn = http.client.HTTPSConnection(
                target_host, target_port, timeout=timeout, context=context
            )
            if proxy is not None:
                tunnel_headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                http_conn.set_tunnel(origin.host, origin.port, headers=tunnel_headers)
        else:
            http_conn = http.client.HTTPConnection(target_host, target_port, timeout=timeout)
        http_conn.connect()
        conn = Connection(origin, http_conn, proxy)
        if conn.sock is not None:
            # The request goes out in one write, but keep small writes from waiting on delayed ACKs.
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _tls(self) -> ssl.SSLContext:
        """The pool's TLS context, made once (see the module docstring)."""
        with self._lock:
            if self._ssl_context is None:
                import httpcore2  # only for HTTPS: 0.035 s to import

                self._ssl_context = httpcore2.default_ssl_context()
            return self._ssl_context

    def discard_idle(self, origin: Origin) -> None:
        """Close every idle connection to ``origin`` (one turned out stale: the others likely are too)."""
        with self._lock:
            conns = self._idle.pop(origin, [])
        for conn in conns:
            conn.close()

    def put(self, conn: Connection) -> None:
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
        """Close every idle connection; later requests are refused."""
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


class PoolTransport(httpx2.BaseTransport):
    """An ``httpx2`` transport over a :class:`Pool`: one request, one pooled connection, the raw answer.

    httpx builds the request (headers, body) and does everything above the wire: redirects (each hop is a
    new request here), decoding, timeouts it passes in ``request.extensions``. Failures become the httpx
    exceptions the client already handles: ``ConnectError`` / ``ConnectTimeout`` before the request is
    sent, ``ReadTimeout``, ``WriteError``/``ReadError`` and ``RemoteProtocolError`` after. A keep-alive
    connection the server closed while idle is retried once on a new one (nothing was processed).
    """

    def __init__(self, pool: Pool, *, max_body: int | None = None) -> None:
        self.pool = pool
        # With a limit, a body is read only up to it, and only uncompressed (a compressed body's size after
        # decoding is not known until it is decoded): either is a HubError, not retried.
        self.max_body = max_body

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` and return the response with its body still to be read."""
        url = request.url
        try:
            origin = origin_of(str(url))
        except ValueError as exc:
            raise httpx2.UnsupportedProtocol(str(exc), request=request) from None
        timeouts = request.extensions.get("timeout", {})
        connect_timeout = timeouts.get("connect")
        read_timeout = timeouts.get("read")
        body = request.read()
        for fresh in (False, True):
            conn = self._connect(origin, fresh, connect_timeout, request)
            sent = False
            try:
                conn.settimeout(read_timeout)
                conn.http.putrequest(
                    request.method, conn.target(str(url)), skip_host=True, skip_accept_encoding=True
                )
                for name, value in request.headers.raw:
                    conn.http.putheader(name, value)
                conn.http.endheaders(body or None)
                sent = True
                resp = conn.http.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if conn.reused and not fresh and not isinstance(exc, TimeoutError):
                    # The server closed an idle keep-alive connection: not a failure of this request.
                    self.pool.discard_idle(origin)
                    continue
                raise _mapped(exc, request, sending=not sent) from None
            if self.max_body is not None:
                self._check_size(conn, resp, str(url))
            return httpx2.Response(
                resp.status,
                headers=resp.getheaders(),
                stream=_BodyStream(self.pool, conn, resp, request, self.max_body),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": resp.reason.encode("latin-1")},
                request=request,
            )
        raise AssertionError("unreachable")

    def _check_size(self, conn: Connection, resp: http.client.HTTPResponse, url: str) -> None:
        assert self.max_body is not None
        encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
        length = resp.length
        problem = None
        if encoding not in ("identity", ""):
            problem = f"{encoding}-compressed although an uncompressed answer was asked for"
        elif length is not None and length > self.max_body:
            problem = f"of {length:,} bytes"
        if problem is not None:
            resp.close()
            conn.close()
            raise too_large(url, problem)

    def _connect(
        self, origin: Origin, fresh: bool, timeout: float | None, request: httpx2.Request
    ) -> Connection:
        try:
            return self.pool.get(origin, new=fresh, connect_timeout=timeout)
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(str(exc) or "timed out", request=request) from None
        except (OSError, http.client.HTTPException) as exc:
            # A rejected TLS certificate (ssl.SSLCertVerificationError) lands here too, as with httpx.
            raise httpx2.ConnectError(str(exc) or type(exc).__name__, request=request) from None

    def close(self) -> None:
        """Close the pool's idle connections."""
        self.pool.close()


class _BodyStream(httpx2.SyncByteStream):
    """A response body read from its pooled connection; the connection goes back once it is read to the end."""

    def __init__(
        self,
        pool: Pool,
        conn: Connection,
        resp: http.client.HTTPResponse,
        request: httpx2.Request,
        limit: int | None,
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._resp = resp
        self._request = request
        self._limit = limit
        self._complete = False  # the body was read to its end
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        resp = self._resp
        read = 0
        while True:
            try:
                chunk = resp.read1(64 * 1024)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise _mapped(exc, self._request, sending=False) from None
            if not chunk:
                break
            read += len(chunk)
            if self._limit is not None and read > self._limit:
                self.close()
                raise too_large(str(self._request.url), f"of more than {self._limit:,} bytes")
            yield chunk
        if resp.length:  # http.client's read1 ends quietly when the connection closes early
            self.close()
            raise httpx2.RemoteProtocolError(
                f"the connection closed {resp.length:,} bytes before the end of the body",
                request=self._request,
            )
        self._complete = True

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        self._resp.close()
        if self._complete and not self._resp.will_close:
            self._pool.put(self._conn)  # read to the end: reusable
        else:
            self._conn.close()


def too_large(url: str, problem: str) -> HubError:
    """The error for an answer a Hub API would never send (see :class:`PoolTransport`'s ``max_body``)."""
    return HubError(
        f"{redact_url(url)} sent an answer {problem}, which a Hub API never sends: HF_ENDPOINT does not point "
        "at a Hub, or something else answered in its place. Check HF_ENDPOINT and the network, then run again",
        url=redact_url(url),
    )


def _mapped(exc: BaseException, request: httpx2.Request, *, sending: bool) -> httpx2.TransportError:
    """The httpx exception for a failure after the connection was made."""
    text = server_text(str(exc)) or type(exc).__name__  # server bytes can reach it (a garbled status line)
    if isinstance(exc, TimeoutError):
        return httpx2.ReadTimeout(text, request=request)
    if isinstance(exc, http.client.HTTPException):
        return httpx2.RemoteProtocolError(text, request=request)
    return httpx2.WriteError(text, request=request) if sending else httpx2.ReadError(text, request=request)
