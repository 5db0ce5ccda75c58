"""The test Hub's byte counting and body path: ``sent_bytes`` per request (every byte written to the socket,
the server's send buffer included), the live counters, file bodies through ``os.sendfile`` (paced in chunks
when throttled), and the opt-in control endpoint that a benchmark uses on a Hub in another process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from vcache.testing.hub import HubServer, Repo

from .conftest import request

BIG = 16 << 20


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("counting") / "big.bin"
    path.write_bytes(os.urandom(BIG))
    return path


@pytest.fixture
def big_hub(big_file: Path) -> Iterator[HubServer]:
    """``acme/big``: one path-backed LFS file, redirected to the CDN origin, with the control endpoint on."""
    repo = Repo("acme/big")
    repo.commit({"big.bin": big_file, "config.json": b"{}"})
    with HubServer([repo], control=True) as hub:
        yield hub


def cdn_link(hub: HubServer) -> str:
    resp = request(f"{hub.endpoint}/acme/big/resolve/main/big.bin", "HEAD")
    assert resp.status == 302
    return resp.headers["location"]


def raw_get(url: str, headers: str = "") -> bytes:
    """Every byte a ``Connection: close`` GET receives, status line and headers included."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_sent_bytes_of_a_ranged_get_are_every_byte_written(big_hub: HubServer, big_file: Path) -> None:
    url = cdn_link(big_hub)
    big_hub.clear_log()
    received = raw_get(url, "Range: bytes=1000-1999999\r\n")
    head, body = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 206") and body == big_file.read_bytes()[1000:2_000_000]
    (record,) = big_hub.log
    assert record.body_bytes == record.wire_bytes == len(body)
    assert record.sent_bytes == len(received)  # status line and headers too
    assert big_hub.sent_bytes == len(received) and big_hub.responses_in_progress == 0

    # Answers without a body count their status line and headers; the live total is the log's sum.
    redirect = raw_get(f"{big_hub.endpoint}/acme/big/resolve/main/big.bin")
    assert redirect.startswith(b"HTTP/1.1 302")
    assert big_hub.log[-1].sent_bytes == len(redirect)
    assert big_hub.sent_bytes == sum(r.sent_bytes for r in big_hub.log) == len(received) + len(redirect)
    big_hub.clear_log()
    assert big_hub.sent_bytes == 0


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="wire_bytes needs Linux TCP_INFO")
def test_a_killed_client_leaves_sent_bytes_above_what_it_acknowledged(big_hub: HubServer) -> None:
    """The bytes in the server's send buffer at the kill were written to the socket: ``sent_bytes`` counts
    them (what a kill-and-resume benchmark reports), ``wire_bytes`` does not."""
    url = urlsplit(cdn_link(big_hub))
    assert url.hostname and url.port
    big_hub.clear_log()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # before connect: a small window
    sock.connect((url.hostname, url.port))
    sock.settimeout(10)
    sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    received = 0
    while received < 200_000:
        received += len(sock.recv(65536))
    # The answer is in progress and the live counter already holds more than the client has read.
    assert big_hub.responses_in_progress == 1
    wait_for(lambda: big_hub.sent_bytes > received + (64 << 10))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # an RST, as from a killed process
    wait_for(lambda: big_hub.responses_in_progress == 0 and bool(big_hub.body_requests()))
    (record,) = big_hub.body_requests()
    assert record.status == 200 and record.body_bytes < BIG
    assert record.sent_bytes > record.body_bytes > record.wire_bytes >= received - 1024
    assert big_hub.sent_bytes == record.sent_bytes


@pytest.mark.parametrize("throttle", [None, 8 << 20])
def test_file_bodies_go_out_with_sendfile(
    big_hub: HubServer, big_file: Path, monkeypatch: pytest.MonkeyPatch, throttle: int | None
) -> None:
    """Unthrottled, a file body is one or two ``sendfile`` calls; throttled, a loop of paced chunks."""
    calls: list[tuple[int, int]] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        calls.append((count, sent))
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    url = cdn_link(big_hub)
    big_hub.throttle_bps = throttle
    big_hub.clear_log()
    body = raw_get(url, "Range: bytes=0-2097151\r\n").split(b"\r\n\r\n", 1)[1]
    assert body == big_file.read_bytes()[: 2 << 20]
    assert sum(sent for _, sent in calls) == (2 << 20) == big_hub.log[-1].body_bytes
    if throttle is None:
        assert len(calls) <= 3  # the body, and its last byte after the request is logged
    else:
        assert len(calls) >= 10 and max(count for count, _ in calls) <= throttle // 50


def test_control_endpoint_serves_the_log_and_counters(big_hub: HubServer) -> None:
    url = cdn_link(big_hub)
    big_hub.clear_log()
    raw_get(url, "Range: bytes=0-99\r\n")
    counters = request(f"{big_hub.endpoint}/_testhub/counters").json()
    assert counters == {"sent_bytes": big_hub.sent_bytes, "responses_in_progress": 0}
    log = request(f"{big_hub.endpoint}/_testhub/log").json()
    assert [(r["origin"], r["status"], r["body_bytes"], r["sent_bytes"]) for r in log] == [
        ("cdn", 206, 100, big_hub.sent_bytes)
    ]
    assert request(f"{big_hub.endpoint}/_testhub/clear-log", "GET").status == 405
    cleared = request(f"{big_hub.endpoint}/_testhub/clear-log", "POST")
    assert (cleared.status, cleared.json()) == (200, {"sent_bytes": 0, "responses_in_progress": 0})
    assert big_hub.log == [] and big_hub.sent_bytes == 0  # control requests are neither logged nor counted
    assert request(f"{big_hub.endpoint}/_testhub/nothing").status == 404


def test_control_endpoint_is_off_unless_asked_for(tmp_path: Path) -> None:
    repo = Repo("acme/tiny")
    repo.commit({"config.json": b"{}"})
    with HubServer([repo]) as hub:
        assert request(f"{hub.endpoint}/_testhub/counters").status == 404
        assert request(f"{hub.endpoint}/_testhub/clear-log", "POST").status == 405
        assert len(hub.log) == 2  # answered as Hub routes, and logged


def test_command_line_with_control_and_throttle(tmp_path: Path) -> None:
    (tmp_path / "acme" / "big").mkdir(parents=True)
    (tmp_path / "acme" / "big" / "big.bin").write_bytes(os.urandom(1 << 20))
    src = Path(__file__).resolve().parents[2] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vcache.testing.hub",
            "--root",
            str(tmp_path),
            "--control",
            "--throttle",
            "4e6",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().split(": ", 1)[1].strip()
        started = time.monotonic()
        body = raw_get(f"{endpoint}/acme/big/resolve/main/big.bin", "")
        assert body.startswith(b"HTTP/1.1 302")
        location = next(
            line.split(b": ", 1)[1].decode()
            for line in body.split(b"\r\n")
            if line.lower().startswith(b"location")
        )
        assert len(request(location).body) == 1 << 20
        assert time.monotonic() - started >= 0.15  # 0.26 s at 4 MB/s
        log = request(f"{endpoint}/_testhub/log").json()
        assert (
            sum(r["sent_bytes"] for r in log) == request(f"{endpoint}/_testhub/counters").json()["sent_bytes"]
        )
        assert [r["body_bytes"] for r in log if r["origin"] == "cdn"] == [1 << 20]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
