"""Asking for a file's bytes and judging the answer: requests, redirects, the token rule, identity checks.

* **Requests**: one ``GET`` per part, ``Range`` for all but a whole-file request, ``Accept-Encoding:
  identity``; redirects are followed (at most ``MAX_REDIRECTS``), and once the Hub redirects to a CDN, later
  parts go straight there. A CDN link that is refused (401/403/404/410) is resolved again once.
* **Bodies**: ``http.client`` sends the request and parses the headers; the body is read with
  ``readinto1`` into the caller's buffer (:func:`_receive`), so no Python ``bytes`` object is made per
  chunk (httpx2 reads 64 KiB at a time through several copies and is the bottleneck there; it is not used
  on this path). Reading ``recv`` by ``recv`` in Python, rather than ``HTTPResponse.readinto``'s C loop,
  keeps the bytes that arrived before a reset, so a resume starts exactly where the data stopped.
* **Never two versions**: every 206 must start where asked and report the expected total; an ETag or
  ``X-Linked-Etag`` other than the expected one raises :class:`~vcache.errors.RemoteChanged`; a CDN whose
  ETag changes between requests does the same; a 200 answer to a ranged request is handed back as a whole
  body (the fetch restarts the file from byte zero on that very response).
* **Refusals**: the Hub's 401/403/404/410 become vcache's errors through :func:`vcache.hub.refusal_error`
  (never retried); statuses the retry policy lists become :class:`_Retry`.
* **Token**: sent only to the endpoint's own origin (scheme, host, port); never logged, never in errors.

This module never writes a byte to disk, never sleeps and never decides when to give up (that is the
fetch's retry loop); it keeps no connection beyond the request (the pool does).
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import time
from typing import NamedTuple
from urllib.parse import urljoin

from vcache.connections import Connection as _Conn
from vcache.errors import HubError, RemoteChanged, TransferError
from vcache.hub import Origin as _Origin
from vcache.hub import origin_of as _origin_of
from vcache.hub import refusal_detail, refusal_error
from vcache.hub import server_text as _clean
from vcache.retry import parse_retry_after
from vcache.transfer._shared import _Shared
from vcache.transfer._state import _Cancelled
from vcache.transfer._values import FetchSpec

MAX_REDIRECTS = 10
#: A whole-body answer of another length than expected is kept for the checks to diagnose (an LFS
#: pointer, an HTML page, a truncated file) when it is no longer than this or than the expected size.
SNIFF_LIMIT = 1 << 20
#: A buffer is written out once it is full or once this long has passed since it began to fill: on a slow
#: link a 4 MiB buffer would otherwise hold 80 ms of data (at 50 MB/s), which a kill loses and which makes
#: the ramp-up's 0.1 s measuring windows see zero, one or two fills (waiting shares of 60-170 %).
_FILL_TIME = 0.02
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*/(\d+)\s*", re.IGNORECASE)
_DIGITS = re.compile(r"\s*\d{1,19}\s*")


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


class _Body(NamedTuple):
    """A validated response about to be read: its bytes are file offsets ``[first, stop)``."""

    conn: _Conn
    resp: http.client.HTTPResponse
    first: int
    stop: int
    whole: bool  # a 200: the representation from byte 0
    length: int | None  # Content-Length of a whole body (None when chunked)


def _normalize_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').strip().lower()


def _describe_net(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "body cut short"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection"
    text = _clean(str(exc), 120)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _receive(
    resp: http.client.HTTPResponse, view: memoryview, pos: int, stall: float
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
        stalled = f"no data for {stall:.3g} s (stalled) at byte {pos + n:,}"
        return n, _Retry(stalled), arrived
    except (OSError, http.client.HTTPException) as exc:
        return n, _Retry(f"connection lost at byte {pos + n:,} ({_describe_net(exc)})"), arrived


class _Requests:
    """The requests of one fetch: where they go (the Hub, then its CDN), the connections they hold, and
    whether each answer is about the planned version of the file. Thread-safe (the fetch's workers share it).
    """

    def __init__(self, shared: _Shared, spec: FetchSpec) -> None:
        self.shared = shared
        self.spec = spec
        self.location: str | None = None  # where body requests go after a redirect off the hub
        self.requests = 0
        self._lock = threading.Lock()  # guards the fields below and ``requests``
        self._foreign_etags: dict[_Origin, str] = {}
        self._conns: set[_Conn] = set()
        self._closed = False  # the fetch failed: no new connection may start

    def shutdown_all(self) -> None:
        """Refuse new requests and wake every thread blocked on a connection (it then sees an error or EOF)."""
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        for conn in conns:
            conn.shutdown()

    def others(self, keep: _Conn) -> list[_Conn]:
        """The connections in use now, except ``keep``."""
        with self._lock:
            return [c for c in self._conns if c is not keep]

    def finish(self, conn: _Conn, reusable: bool) -> None:
        """Done with ``conn``: back to the pool when its response was read to the end, else closed."""
        if reusable:
            self._release(conn)
        else:
            self._drop(conn)

    def open(self, start: int, end: int, ranged: bool) -> _Body:
        """Send the GET (following redirects) and validate the answer; errors become _Retry or fatal."""
        url = self.location or self.spec.url
        with self._lock:
            self.requests += 1
        for _hop in range(MAX_REDIRECTS + 1):
            origin = _origin_of(url)
            is_hub = origin == self.shared.hub_origin
            headers = {"User-Agent": self.shared.user_agent, "Accept-Encoding": "identity"}
            if ranged:
                headers["Range"] = f"bytes={start}-{end - 1}"
                validator = f'"{self.spec.etag}"' if is_hub else self._foreign_etags.get(origin)
                if validator:
                    headers["If-Range"] = validator
            if self._token_for(origin):
                headers["Authorization"] = f"Bearer {self.shared.token}"
            conn, resp = self._request(url, origin, headers)
            status = resp.status
            if status >= 400 and not self.shared.policy.is_retryable_status(status):
                # A final "no" is a sign of life. Headers or a redirect are not: a server that answers
                # them and then sends no byte must not restart the give-up budget on every retry.
                self.shared.watch.progress()
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
                if target != self.shared.hub_origin:
                    self.location = url  # the CDN: later parts go straight there
                continue
            if status in (200, 206):
                return self._validated(conn, resp, start, end, ranged)
            self._refused(conn, resp, is_hub)
        raise TransferError(f"{self.spec.path}: more than {MAX_REDIRECTS} redirects", path=self.spec.path)

    def _token_for(self, origin: _Origin) -> bool:
        # Same scheme, host and port as the endpoint, and nothing else: not the CDN, not an http downgrade.
        return self.shared.token is not None and origin == self.shared.hub_origin

    def _request(
        self, url: str, origin: _Origin, headers: dict[str, str]
    ) -> tuple[_Conn, http.client.HTTPResponse]:
        watch = self.shared.watch
        for fresh in (False, True):
            try:
                conn = self.shared.pool.get(
                    origin, new=fresh, connect_timeout=watch.timeout(self.shared.connect_timeout)
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
            with self._lock:
                if self._closed:
                    conn.close()
                    raise _Cancelled
                self._conns.add(conn)
            limit = watch.timeout(self.shared.read_timeout)
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
                    self.shared.pool.discard_idle(origin)
                    continue
                raise _Retry(f"request failed ({_describe_net(exc)})") from None
        raise AssertionError("unreachable")

    def _drop(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)
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
        with self._lock:
            self._conns.discard(conn)
        self.shared.pool.put(conn)

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
        with self._lock:
            seen = self._foreign_etags.setdefault(origin, etag.strip())
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
        code = resp.getheader("X-Error-Code")
        message = resp.getheader("X-Error-Message")
        body = self._finish_small(conn, resp)
        detail = refusal_detail(status, code, message, body)
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
            raise self._refusal(status, code, detail)
        if self.shared.policy.is_retryable_status(status):
            raise _Retry(detail, status=status, retry_after=retry_after)
        raise TransferError(f"{spec.path}: the server answered {detail}", path=spec.path, status=status)

    def cdn_refused(self, failure: _Retry) -> HubError:
        """The error after a CDN refused a freshly resolved link too."""
        detail = f"{failure.cause}, also for a freshly resolved link"
        return self._refusal(failure.status or 403, None, detail)

    def _refusal(self, status: int, code: str | None, detail: str) -> HubError:
        spec = self.spec
        where = f"{spec.path} at {spec.commit[:12]}"
        error = refusal_error(status, code, detail, where=where, path=spec.path)
        assert error is not None  # 401, 403, 404 and 410 are always refusals
        return error

    def expect_end(self, resp: http.client.HTTPResponse, buf: memoryview, stall: float) -> bool:
        """After the expected size of a body without a length: True when it ends there (RemoteChanged when
        more follows, False when the connection failed instead)."""
        n, failure, _ = _receive(resp, buf[:1], self.spec.size, stall)
        if n:
            raise RemoteChanged(
                f"{self.spec.path}: the server sent more than the expected {self.spec.size:,} bytes; "
                "the file changed: plan again",
                path=self.spec.path,
            )
        return failure is None
