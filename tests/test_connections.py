"""vcache's connection pool and the Hub client's transport over it (``vcache.connections``)."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import httpcore2
import pytest

from transfer_helpers import ScriptedServer, http_response, self_signed_tls
from vcache.connections import Origin, Pool, PoolTransport
from vcache.errors import HubError, RetriesExhausted
from vcache.hub import MAX_API_ANSWER, HubClient, HubUnreachable
from vcache.retry import FakeClock, RetryPolicy

SRC = Path(__file__).resolve().parents[1] / "src"
SHA = "a" * 40


def _revision(req: Any, sock: Any) -> bool:
    body = json.dumps({"sha": SHA}).encode()
    sock.sendall(
        http_response(200, {"Content-Length": str(len(body)), "Content-Type": "application/json"}, body)
    )
    return True


def _tls(tmp_path: Path) -> tuple[Any, Any]:
    tls = self_signed_tls(tmp_path)
    if tls is None:
        pytest.skip("needs the openssl command to make a certificate")
    return tls


def test_a_pool_makes_one_tls_context_for_all_its_https_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old behaviour: ``ssl.create_default_context()`` for every new HTTPS connection, ~0.035 s of CPU each
    (16 connections on a capped link: over half a second). Now one per pool, from huggingface_hub's trust
    store."""
    server_ctx, client_ctx = _tls(tmp_path)
    made: list[int] = []

    def default_ssl_context(**_: Any) -> Any:
        made.append(1)
        return client_ctx

    monkeypatch.setattr(httpcore2, "default_ssl_context", default_ssl_context)
    with ScriptedServer(_revision, tls=server_ctx) as srv:
        port = int(srv.endpoint.rsplit(":", 1)[1])
        pool = Pool(5.0, None, trust_env=False, max_idle=4)
        conns = [pool.get(Origin("https", "127.0.0.1", port), new=True) for _ in range(4)]
        try:
            assert len(made) == 1
            assert all(c.sock is not None for c in conns)
        finally:
            for c in conns:
                c.close()
            pool.close()


def test_a_plain_http_pool_makes_no_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**_: Any) -> Any:
        raise AssertionError("a TLS context was made for a plain-HTTP origin")

    monkeypatch.setattr(httpcore2, "default_ssl_context", refuse)
    with ScriptedServer(_revision) as srv:
        client = HubClient(srv.endpoint, None)
        with client:
            assert client.resolve_commit("o/n", None) == SHA


def test_the_hub_client_keeps_one_connection_for_its_calls_and_asks_for_uncompressed_answers() -> None:
    with ScriptedServer(_revision) as srv, HubClient(srv.endpoint, "tok") as client:
        for _ in range(3):
            assert client.resolve_commit("o/n", "main") == SHA
        assert len(srv._conns) == 1  # keep-alive: one connection for the three calls
        assert [r.target for r in srv.requests] == ["/api/models/o/n/revision/main"] * 3
        assert srv.requests[0].headers["authorization"] == "Bearer tok"
        assert srv.requests[0].headers["host"] == srv.endpoint.split("//", 1)[1]
        assert srv.requests[0].headers["accept-encoding"] == "identity"


def _endless(req: Any, sock: Any) -> bool:
    """A hostile answer: a JSON string that never ends (chunked), 1 MiB per chunk."""
    chunk = b"a" * (1 << 20)
    try:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        )
        sock.sendall(b'2\r\n["\r\n')
        while True:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        return False


def _gzip_bomb(req: Any, sock: Any) -> bool:
    """A compressed answer nobody asked for: 200 KiB that expand to 200 MiB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing, compressed piece by piece
    chunk = b"a" * (1 << 20)
    body = z.compress(b'["') + b"".join(z.compress(chunk) for _ in range(200)) + z.compress(b'"]') + z.flush()
    headers = {
        "Content-Length": str(len(body)),
        "Content-Encoding": "gzip",
        "Content-Type": "application/json",
    }
    sock.sendall(http_response(200, headers, body))
    return True


@pytest.mark.parametrize("script", [_endless, _gzip_bomb], ids=["endless", "gzip-bomb"])
def test_an_api_answer_too_large_to_be_one_is_refused_without_reading_it_all(script: Any) -> None:
    """Old behaviour: the whole answer was read into memory, however large (an endless one until the process
    ran out of memory, a compressed one after decoding). Now at most ``MAX_API_ANSWER`` bytes, uncompressed,
    are read; beyond, a HubError (not retried: the server is not a Hub)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with (
        ScriptedServer(script) as srv,
        HubClient(srv.endpoint, None) as client,
        pytest.raises(HubError) as info,
    ):
        endpoint = srv.endpoint
        client.resolve_commit("o/n", None)
    message = str(info.value)
    assert endpoint in message and "HF_ENDPOINT" in message
    assert len(srv.requests) == 1  # not retried
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 3 * MAX_API_ANSWER / (1 << 20) + 64


def test_a_body_cut_short_is_a_protocol_error_not_a_short_answer() -> None:
    def short(req: Any, sock: Any) -> bool:
        sock.sendall(http_response(200, {"Content-Length": "100"}, b'{"sha": "'))
        return False

    policy = RetryPolicy(total=0)
    with (
        ScriptedServer(short) as srv,
        HubClient(srv.endpoint, None, policy=policy, clock=FakeClock()) as client,
        pytest.raises(RetriesExhausted, match="before the end of the body"),
    ):
        client.resolve_commit("o/n", None)


def test_the_hub_client_retries_once_on_a_keep_alive_connection_the_server_closed() -> None:
    def one_per_connection(req: Any, sock: Any) -> bool:
        _revision(req, sock)
        return False  # close after every answer, without saying so

    with ScriptedServer(one_per_connection) as srv, HubClient(srv.endpoint, None) as client:
        assert client.resolve_commit("o/n", None) == SHA
        assert client.resolve_commit("o/n", None) == SHA
        assert len(srv.requests) == 2 and len(srv._conns) == 2


def test_the_hub_client_speaks_https_with_the_given_context_and_refuses_an_unknown_certificate(
    tmp_path: Path,
) -> None:
    server_ctx, client_ctx = _tls(tmp_path)
    with ScriptedServer(_revision, tls=server_ctx) as srv:
        with HubClient(srv.endpoint, None, ssl_context=client_ctx) as client:
            assert client.resolve_commit("o/n", None) == SHA
        # The default trust store does not know this self-signed certificate.
        with HubClient(srv.endpoint, None) as client, pytest.raises(HubUnreachable, match="CERTIFICATE"):
            client.resolve_commit("o/n", None, fail_fast=True)


def test_a_garbled_answer_is_retried_then_named_on_one_line() -> None:
    def garbage(req: Any, sock: Any) -> bool:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        return False

    policy = RetryPolicy(total=2, backoff_factor=0.0)
    with (
        ScriptedServer(garbage) as srv,
        HubClient(srv.endpoint, None, policy=policy, clock=FakeClock()) as client,
        pytest.raises(RetriesExhausted) as info,
    ):
        client.resolve_commit("o/n", None)
    assert len(srv.requests) == 3
    message = str(info.value)
    assert "RemoteProtocolError" in message and "NOT HTTP AT ALL" in message
    assert "\r" not in message and "\n" not in message.split("(from")[0]  # the server's bytes, one line


def test_the_hub_client_uses_the_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedServer(_revision) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with HubClient("http://hub.invalid", "tok") as client:
            assert client.resolve_commit("o/n", None) == SHA
        assert proxy.requests[0].target == "http://hub.invalid/api/models/o/n/revision/main"
        assert proxy.requests[0].headers["host"] == "hub.invalid"


def test_a_hub_client_for_a_plain_http_endpoint_does_not_import_httpcore2() -> None:
    """httpcore2 costs 0.035 s to import; only an HTTPS connection needs it (for its trust store)."""
    code = (
        "import sys; from vcache.hub import HubClient; "
        "HubClient('http://127.0.0.1:9', None).close(); "
        "print('httpcore2' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(SRC)}
    )
    assert out.stdout.strip() == "False", out.stderr


def test_without_trust_env_the_hub_client_ignores_the_proxy_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    remote = Origin("http", "hub.invalid", 80)
    for trust_env, proxied in ((True, True), (False, False)):
        with HubClient("http://hub.invalid", None, trust_env=trust_env) as client:
            transport = client._client._transport
            assert isinstance(transport, PoolTransport)
            assert (transport.pool._proxy_for(remote) is not None) == proxied
