"""Helpers for the transfer tests: content, a served repo with ready FetchSpecs, and a scripted raw server.

:class:`Served` wraps :class:`vcache.testing.hub.HubServer` with a one-repo setup. :class:`ScriptedServer` is
a tiny HTTP/1.1 listener whose answers are written by hand, byte for byte, for the faults a well-behaved
server cannot produce (bad framing, garbage status lines, lying headers, silence before the headers).
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcache.hashing import Digest, git_blob_sha1
from vcache.retry import FakeClock, RetryPolicy
from vcache.testing.hub import HubServer, Repo
from vcache.transfer import FetchSpec, Transfer

KiB = 1 << 10
MiB = 1 << 20
TOKEN = "hf_transfer_test_token_5ecret"
REPO_ID = "acme/tiny"

#: Small enough for fast tests, big enough for a dozen parts at TEST_PART_SIZE.
MULTI_SIZE = 3 * MiB + 12345
TEST_PART_SIZE = 256 * KiB


def blob(size: int, seed: int = 0) -> bytes:
    """``size`` deterministic pseudo-random bytes."""
    return np.random.default_rng(seed).bytes(size)


def spec_for(endpoint: str, repo_id: str, commit: str, path: str, data: bytes, lfs: bool) -> FetchSpec:
    """The FetchSpec a planner would build for ``data`` at ``commit``."""
    from urllib.parse import quote

    if lfs:
        digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    else:
        digest = Digest("gitsha1", git_blob_sha1(data))
    return FetchSpec(
        url=f"{endpoint}/{repo_id}/resolve/{commit}/{quote(path)}",
        etag=digest.hexdigest,
        size=len(data),
        expected=digest,
        commit=commit,
        path=path,
    )


@dataclass
class Served:
    """A running HubServer with one repo, and the specs of its files."""

    hub: HubServer
    commit: str
    files: dict[str, bytes]
    lfs: dict[str, bool]
    repo_id: str = REPO_ID

    def spec(self, path: str) -> FetchSpec:
        """The FetchSpec for ``path`` (as a planner would build it)."""
        return spec_for(self.hub.endpoint, self.repo_id, self.commit, path, self.files[path], self.lfs[path])

    def body_ranges(self, path: str, origin: str | None = None, since: float = 0.0) -> list[tuple[int, int]]:
        """Half-open file ranges of the body bytes the server sent for ``path`` (200s count from 0).

        ``since`` (wall-clock time) leaves out requests that arrived earlier, e.g. a killed process's.
        """
        out = []
        for rec in self.hub.body_requests(path=path):
            if (origin is not None and rec.origin != origin) or rec.time < since:
                continue
            start = 0
            if rec.status == 206 and rec.range:
                m = re.match(r"bytes=(\d+)-", rec.range)
                assert m is not None
                start = int(m[1])
            out.append((start, start + rec.body_bytes))
        return out


@contextlib.contextmanager
def serve(
    files: dict[str, bytes],
    *,
    lfs_style: str = "redirect",
    lfs: dict[str, bool] | None = None,
    tokens: set[str] | None = None,
    throttle_bps: float | None = None,
    gated: bool = False,
) -> Iterator[Served]:
    """Serve ``files`` as ``acme/tiny`` (LFS: everything not ending in .json unless ``lfs`` says)."""
    flags = {p: (lfs or {}).get(p, not p.endswith(".json")) for p in files}
    repo = Repo(REPO_ID)
    if gated:
        repo.gated = True
    commit = repo.commit(dict(files), lfs=flags)
    with HubServer(
        [repo],
        lfs_style=lfs_style,  # type: ignore[arg-type]
        tokens=tokens,
        throttle_bps=throttle_bps,
    ) as hub:
        yield Served(hub, commit, dict(files), flags)


def make_transfer(served: Served | None = None, *, endpoint: str | None = None, **overrides: Any) -> Transfer:
    """A Transfer with test-friendly settings: fake clock, short timeouts, small parts and buffers."""
    settings: dict[str, Any] = {
        "endpoint": endpoint or (served.hub.endpoint if served else "http://127.0.0.1:9"),
        "token": TOKEN,
        "clock": FakeClock(),
        "policy": RetryPolicy(total=6),
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "stall_timeout": 0.3,
        "min_multipart_size": 1 * MiB,
        "part_size": TEST_PART_SIZE,
        "connections_per_file": 4,
        "buffer_size": 64 * KiB,
        "stale_after": 30.0,
    }
    settings.update(overrides)
    return Transfer(**settings)


def partial_files(partial_dir: Path) -> list[str]:
    """Names in the partial dir (sorted), for asserting what was kept or discarded."""
    return sorted(p.name for p in partial_dir.iterdir()) if partial_dir.exists() else []


@contextlib.contextmanager
def hang_guard(seconds: float = 60.0) -> Iterator[None]:
    """Dump every thread's stack and exit if the block takes longer than ``seconds`` (never hang CI)."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------------------------------------
# A scripted raw HTTP server


@dataclass
class RawRequest:
    """One request as the scripted server read it."""

    method: str
    target: str
    headers: dict[str, str]
    index: int  # 0-based, over the server's lifetime


Script = Callable[[RawRequest, socket.socket], bool]
"""Writes the answer to the socket; returns True to keep the connection open for another request."""


@dataclass
class ScriptedServer:
    """An HTTP/1.1 server on 127.0.0.1 whose every answer is written by ``script``."""

    script: Script
    requests: list[RawRequest] = field(default_factory=list)
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        """``http(s)://127.0.0.1:<port>``."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            socket.create_connection(self._sock.getsockname(), timeout=1).close()
        self._thread.join(2)
        self._sock.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self._stop.is_set():
                conn.close()
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()  # e.g. a client that rejected our certificate
            return
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                line = reader.readline(65536)
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                with self._lock:
                    req = RawRequest(method, target, headers, len(self.requests))
                    self.requests.append(req)
                if not self.script(req, conn):
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()


def http_response(status: int, headers: dict[str, str], body: bytes = b"", *, reason: str = "X") -> bytes:
    """The raw bytes of a response (headers exactly as given: no Content-Length is added)."""
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + body


def parse_range(header: str | None, size: int) -> tuple[int, int]:
    """``(start, end_exclusive)`` from a ``bytes=a-b`` header (the whole file when absent)."""
    if not header:
        return 0, size
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", header)
    assert m is not None, header
    return int(m[1]), (int(m[2]) + 1 if m[2] else size)


def self_signed_tls(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(server context, client context trusting it) for 127.0.0.1, or None without the openssl CLI."""
    if shutil.which("openssl") is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


@contextlib.contextmanager
def silent_server() -> Iterator[ScriptedServer]:
    """A server that accepts every connection, reads the request, and never answers (until the block ends)."""
    done = threading.Event()

    def never_answer(req: RawRequest, sock: socket.socket) -> bool:
        done.wait(120)
        return False

    with ScriptedServer(never_answer) as srv:
        try:
            yield srv
        finally:
            done.set()


def closed_endpoint() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
