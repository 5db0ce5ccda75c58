"""Keep-alive HTTP connections of one Transfer: one pool of idle connections per origin, proxies, sockets.

* **Connections**: ``http.client`` connections, directly or through an HTTP(S) proxy from ``HTTP(S)_PROXY``
  (honoured only with ``trust_env``, never for loopback, and not for hosts in ``NO_PROXY``). A plain-HTTP
  proxy gets absolute-form request targets; HTTPS goes through a ``CONNECT`` tunnel.
* **Reuse**: a connection goes back to the pool only once its response was read to the end; an idle one
  the server has closed is dropped, not reused.
* **Receive buffers**: a connection that stays behind the link gets a clamped receive buffer (see
  ``_BACKLOG_CLAMP``).

This module never sends a request, never reads a body and never sees a token: that is ``_http``.
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
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

try:
    import fcntl
    import termios
except ImportError:  # not on Windows: no backlog probe there
    fcntl = termios = None  # type: ignore[assignment]

from vcache.errors import TransferError
from vcache.hub import Origin as _Origin

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
