"""Every fault ends in a correct blob or a clear error: never a hang, never a wrong byte passed off as right.

The first half drives the test Hub's fault injection (both LFS styles, multi-part and single-request
downloads); the second half talks raw bytes from a scripted server for framing faults no polite server makes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from transfer_helpers import (
    MULTI_SIZE,
    TEST_PART_SIZE,
    KiB,
    MiB,
    RawRequest,
    ScriptedServer,
    Served,
    blob,
    hang_guard,
    http_response,
    make_transfer,
    parse_range,
    partial_files,
    serve,
    spec_for,
)
from vcache.errors import AuthError, RateLimited, RemoteChanged, RetriesExhausted, TransferError
from vcache.partial import list_partials
from vcache.retry import SYSTEM_CLOCK, FakeClock, ProgressWatch, RetryPolicy
from vcache.testing.hub import Fault, HubServer, Repo
from vcache.transfer import FetchResult

DATA = blob(MULTI_SIZE, seed=11)
PATH = "model.safetensors"
NEW = blob(MULTI_SIZE, seed=12)


@pytest.fixture(autouse=True)
def _never_hang() -> Iterator[None]:
    with hang_guard(60):
        yield


@pytest.fixture(params=["redirect", "direct"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    with serve({PATH: DATA}, lfs_style=request.param) as s:
        yield s


MODES = {"multi": {}, "single": {"connections_per_file": 1}}


def fetch(served: Served, tmp_path: Path, mode: str = "multi", **kw: Any) -> FetchResult:
    progress = kw.pop("on_progress", None)
    with make_transfer(served, **{**MODES[mode], **kw}) as t:
        return t.fetch(served.spec(PATH), tmp_path, on_progress=progress)


def assert_exact(result: FetchResult, served: Served) -> None:
    assert Path(result.data_path).read_bytes() == DATA
    assert result.actual == served.spec(PATH).expected and result.size == MULTI_SIZE


def statuses(served: Served) -> list[int]:
    return [r.status for r in served.hub.log if r.file_path == PATH and r.status != 302]


# -- faults that a retry or a resume cures ------------------------------------------------------------------

CURABLE = {
    "reset_mid_part": [Fault.drop_after(100 * KiB, times=2)],
    "stall_mid_part": [Fault.stall(after=100 * KiB, seconds=5)],
    "short_body": [Fault.short_body(150 * KiB, times=2)],
    "http_500": [Fault.status(500, times=2)],
    "http_502": [Fault.status(502, times=2)],
    "http_503": [Fault.status(503, times=2)],
    "http_504": [Fault.status(504, times=2)],
    "wrong_content_range": [Fault.wrong_content_range(1000)],
    "cut_then_range_ignored": [Fault.drop_after(100 * KiB), Fault.ignore_range()],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", CURABLE)
def test_curable_faults_end_in_the_exact_bytes(served: Served, tmp_path: Path, fault: str, mode: str) -> None:
    served.hub.fault("acme/tiny", PATH, *CURABLE[fault])
    result = fetch(served, tmp_path, mode)
    assert_exact(result, served)
    assert served.hub.pending_faults() == []  # every fault was really hit
    # ... and really handled: retried, or (when a restart from zero overtook the cut) restarted
    assert result.retries or 200 in statuses(served)


def test_resume_after_a_cut_asks_for_the_rest_with_if_range(tmp_path: Path) -> None:
    with serve({PATH: DATA}, lfs_style="direct") as s:
        s.hub.fault("acme/tiny", PATH, Fault.short_body(1 * MiB + 5))  # a FIN keeps what was sent
        result = fetch(s, tmp_path, "single", buffer_size=256 * KiB)
        assert_exact(result, s)
        first, second = s.hub.body_requests(path=PATH)
        assert first.range is None and second.range == f"bytes={1 * MiB + 5}-{MULTI_SIZE - 1}"
        assert second.if_range == f'"{s.spec(PATH).etag}"'
        assert result.bytes_transferred == MULTI_SIZE


def test_range_ignored_restarts_the_file_from_zero_on_that_answer(served: Served, tmp_path: Path) -> None:
    served.hub.fault("acme/tiny", PATH, Fault.ignore_range())
    progress: list[int] = []
    result = fetch(served, tmp_path, on_progress=progress.append)
    assert_exact(result, served)
    assert statuses(served).count(200) == 1
    assert sum(progress) == MULTI_SIZE  # bytes dropped by the restart were reported back


def test_stalled_connection_is_abandoned_within_the_stall_timeout(served: Served, tmp_path: Path) -> None:
    served.hub.fault("acme/tiny", PATH, Fault.stall(after=10 * KiB, seconds=30))
    start = time.monotonic()
    result = fetch(served, tmp_path, stall_timeout=0.3)
    assert_exact(result, served)
    assert time.monotonic() - start < 5
    assert any("stalled" in e.cause for e in result.retries)


# -- rate limiting: the gate --------------------------------------------------------------------------------


def test_429_retry_after_closes_the_gate_for_every_connection(tmp_path: Path) -> None:
    """While rate-limited no connection of the Transfer starts a request (real clock, server log)."""
    with serve({PATH: DATA}, lfs_style="direct", throttle_bps=4e6) as s:
        s.hub.fault("acme/tiny", PATH, Fault.status(429, times=1, retry_after=1))
        started = time.monotonic()
        result = fetch(s, tmp_path, clock=SYSTEM_CLOCK)
        assert_exact(result, s)
        assert time.monotonic() - started >= 1.0
        log = [r for r in s.hub.log if r.file_path == PATH]
        (limited,) = [r for r in log if r.status == 429]
        t429 = limited.time + limited.duration
        during = [r for r in log if t429 + 0.1 < r.time < limited.time + 1.0]
        assert during == []
        after = [r for r in log if r.time >= limited.time + 1.0]
        assert len(after) >= 2  # the limited part and the others all resumed after the wait


def test_persistent_429_ends_in_rate_limited_after_the_budget(served: Served, tmp_path: Path) -> None:
    clock = FakeClock()
    served.hub.fault("acme/tiny", PATH, Fault.status(429, times=None, retry_after=2))
    with pytest.raises(RateLimited) as info:
        fetch(served, tmp_path, "single", clock=clock, policy=RetryPolicy(total=3))
    assert PATH in str(info.value) and "429" in str(info.value)
    assert sum(clock.sleeps) >= 3 * 2.0
    assert list_partials(tmp_path)  # kept for later


def test_retry_after_longer_than_allowed_gives_up_at_once(served: Served, tmp_path: Path) -> None:
    served.hub.fault("acme/tiny", PATH, Fault.status(503, times=None, retry_after=3600))
    clock = FakeClock()
    with pytest.raises(RetriesExhausted, match="3600 s"):
        fetch(served, tmp_path, "single", clock=clock)
    assert clock.sleeps == []


def test_persistent_5xx_exhausts_the_budget_naming_the_file_and_cause(served: Served, tmp_path: Path) -> None:
    served.hub.fault("acme/tiny", PATH, Fault.status(502, times=None))
    with pytest.raises(RetriesExhausted) as info:
        fetch(served, tmp_path, "single", policy=RetryPolicy(total=2))
    assert (
        PATH in str(info.value) and "HTTP 502" in str(info.value) and "3 failed attempts" in str(info.value)
    )
    assert info.value.reason.startswith("HTTP 502")


# -- a server that stops answering: one give-up budget, however many parts, connections and files wait ------

FILES = {f"f{i}.bin": blob(1 * MiB, seed=30 + i) for i in range(4)}


@pytest.mark.parametrize("how", ["killed", "headers_then_silence"])
def test_a_server_that_stops_mid_body_is_given_up_on_within_the_budget(tmp_path: Path, how: str) -> None:
    """4 files over 2 connections (the rest queue for a slot): all end within the budget, not one by one.

    The retry policy alone would allow 100 attempts per part. Each stall (0.5 s) is shorter than the budget:
    only if the answers' headers do not count as progress does the silence add up to it.
    """
    repo = Repo("acme/four")
    commit = repo.commit(FILES)
    with HubServer([repo], lfs_style="direct", throttle_bps=512 * KiB) as hub:
        if how == "headers_then_silence":  # some bytes, then every answer is headers and nothing more
            for path in FILES:
                hub.fault(
                    "acme/four", path, Fault.stall(after=64 * KiB, seconds=60), Fault.stall(0, 60, times=None)
                )
        first_bytes = threading.Event()
        lines: list[str] = []
        watch = ProgressWatch(1.5, notify=lines.append)
        settings: dict[str, Any] = {
            "clock": SYSTEM_CLOCK,
            "watch": watch,
            "policy": RetryPolicy(total=100, backoff_factor=0.05),
            "stall_timeout": 0.5,
            "max_connections": 2,
            "min_multipart_size": 512 * KiB,
        }
        with make_transfer(endpoint=hub.endpoint, **settings) as t:

            def one(path: str) -> BaseException | None:
                spec = spec_for(hub.endpoint, "acme/four", commit, path, FILES[path], lfs=True)
                try:
                    t.fetch(spec, tmp_path / path, on_progress=lambda n: first_bytes.set())
                except RetriesExhausted as exc:
                    return exc
                return None

            with ThreadPoolExecutor(len(FILES)) as pool:
                futures = [pool.submit(one, path) for path in FILES]
                assert first_bytes.wait(10)
                if how == "killed":
                    hub.stop()
                stopped = time.monotonic()
                errors = [f.result(timeout=30) for f in futures]
            elapsed = time.monotonic() - stopped
    assert all(isinstance(e, RetriesExhausted) and "without progress" in str(e) for e in errors), errors
    assert elapsed < watch.worst_case + 1.5, f"{elapsed:.1f} s"
    assert lines and lines[0].startswith(f"waiting for {hub.endpoint.removeprefix('http://')}")


def test_a_persistent_503_is_given_up_on_after_the_budget(served: Served, tmp_path: Path) -> None:
    clock = FakeClock()
    served.hub.fault("acme/tiny", PATH, Fault.status(503, times=None))
    watch = ProgressWatch(10.0, clock=clock)
    policy = RetryPolicy(total=100, rand=lambda: 0.5)
    with pytest.raises(RetriesExhausted, match=r"gave up after 10 s without progress.*HTTP 503") as info:
        fetch(served, tmp_path, "single", clock=clock, watch=watch, policy=policy)
    assert info.value.path == PATH
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 2.5]


# -- the remote changed ---------------------------------------------------------------------------------------


def test_new_version_before_the_start_raises_remote_changed(served: Served, tmp_path: Path) -> None:
    served.hub.fault("acme/tiny", PATH, Fault.new_version(NEW))
    with pytest.raises(RemoteChanged, match=PATH):
        fetch(served, tmp_path)
    assert partial_files(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_new_version_between_attempts_discards_the_partial(served: Served, tmp_path: Path, mode: str) -> None:
    progress: list[int] = []

    def arm_midway(delta: int) -> None:
        progress.append(delta)
        if sum(progress) >= 1 * MiB and not served.hub.pending_faults(path=PATH):
            served.hub.fault("acme/tiny", PATH, Fault.new_version(NEW))

    # cut the first request cleanly at 1 MiB, so that the switch always falls between two attempts
    served.hub.fault("acme/tiny", PATH, Fault.short_body(1 * MiB))
    with pytest.raises(RemoteChanged):
        fetch(served, tmp_path, mode, on_progress=arm_midway, buffer_size=256 * KiB)
    assert served.hub.pending_faults(path=PATH)  # the new version was armed
    assert partial_files(tmp_path) == []  # never mix two versions: nothing is kept


# -- wrong bytes and wrong bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["flip_byte", "zero_fill"])
def test_damaged_bytes_arrive_with_a_digest_that_says_so(served: Served, tmp_path: Path, fault: str) -> None:
    offset = 2 * MiB + 777
    damage = (
        Fault.flip_byte(offset, times=None)
        if fault == "flip_byte"
        else Fault.zero_fill(offset, 5000, times=None)
    )
    served.hub.fault("acme/tiny", PATH, damage)
    result = fetch(served, tmp_path)
    assert result.size == MULTI_SIZE and result.actual != served.spec(PATH).expected
    got = Path(result.data_path).read_bytes()
    assert got[:offset] == DATA[:offset] and got[offset + 5000 :] == DATA[offset + 5000 :]


@pytest.mark.parametrize(
    ("fault", "head"),
    [
        (Fault.lfs_pointer(), b"version https://git-lfs"),
        (Fault.html_page(), b"<!DOCTYPE html>"),
        (Fault.truncate(1000), DATA[:16]),
    ],
)
def test_a_whole_wrong_body_is_kept_for_the_checks(
    served: Served, tmp_path: Path, fault: Fault, head: bytes
) -> None:
    """A single request answered with another body: delivered as is, so the checks can say what it is."""
    served.hub.fault("acme/tiny", PATH, fault)
    result = fetch(served, tmp_path, "single")
    got = Path(result.data_path).read_bytes()
    assert got.startswith(head) and result.size == len(got) < MULTI_SIZE
    assert result.actual != served.spec(PATH).expected


def test_an_error_page_answering_a_range_request_is_retried(served: Served, tmp_path: Path) -> None:
    served.hub.fault("acme/tiny", PATH, Fault.html_page())
    result = fetch(served, tmp_path)
    assert_exact(result, served)
    assert any("byte body (text/html" in e.cause for e in result.retries)


@pytest.mark.parametrize("fault", [Fault.truncate(1000), Fault.lfs_pointer()])
def test_another_total_size_in_a_range_answer_is_remote_changed(
    served: Served, tmp_path: Path, fault: Fault
) -> None:
    served.hub.fault("acme/tiny", PATH, fault)
    with pytest.raises(RemoteChanged):
        fetch(served, tmp_path)
    assert partial_files(tmp_path) == []


# -- the CDN -------------------------------------------------------------------------------------------------


def test_an_expired_cdn_link_is_resolved_again(tmp_path: Path) -> None:
    with serve({PATH: DATA}, lfs_style="redirect") as s:
        s.hub.fault("acme/tiny", PATH, Fault.status(403, times=1))
        result = fetch(s, tmp_path, "single")
        assert_exact(result, s)
        origins = [(r.origin, r.status) for r in s.hub.log]
        assert origins[:4] == [("hub", 302), ("cdn", 403), ("hub", 302), ("cdn", 200)]


def test_a_cdn_that_keeps_refusing_is_an_auth_error(tmp_path: Path) -> None:
    with serve({PATH: DATA}, lfs_style="redirect") as s:
        s.hub.fault("acme/tiny", PATH, Fault.status(403, times=None))
        with pytest.raises(AuthError, match="freshly resolved"):
            fetch(s, tmp_path, "single")
        assert [r.origin for r in s.hub.log] == ["hub", "cdn", "hub", "cdn"]


# -- raw framing faults from a scripted server ---------------------------------------------------------------

RAW = blob(600 * KiB, seed=21)


def file_server(answer: Callable[[RawRequest, int, int], bytes | None]) -> ScriptedServer:
    """Serves RAW; ``answer(req, start, end)`` may replace the honest response (None: be honest)."""

    def script(req: RawRequest, sock: Any) -> bool:
        start, end = parse_range(req.headers.get("range"), len(RAW))
        custom = answer(req, start, end)
        if custom is not None:
            sock.sendall(custom)
            return False  # a lying answer ends the connection
        if req.headers.get("range"):
            headers = {
                "Content-Length": str(end - start),
                "Content-Range": f"bytes {start}-{end - 1}/{len(RAW)}",
            }
            sock.sendall(http_response(206, headers, RAW[start:end]))
        else:
            sock.sendall(http_response(200, {"Content-Length": str(len(RAW))}, RAW))
        return True

    return ScriptedServer(script)


def raw_fetch(srv: ScriptedServer, tmp_path: Path, **kw: Any) -> FetchResult:
    spec = spec_for(srv.endpoint, "a/b", "c" * 40, "raw.bin", RAW, lfs=True)
    with make_transfer(endpoint=srv.endpoint, connections_per_file=1, **kw) as t:
        result = t.fetch(spec, tmp_path)
    assert result.actual == spec.expected and Path(result.data_path).read_bytes() == RAW
    return result


def first_only(response: Callable[[int, int], bytes]) -> Callable[[RawRequest, int, int], bytes | None]:
    return lambda req, start, end: response(start, end) if req.index == 0 else None


def test_body_shorter_than_its_content_length_is_resumed(tmp_path: Path) -> None:
    cut = first_only(lambda s, e: http_response(200, {"Content-Length": str(len(RAW))}, RAW[: 200 * KiB]))
    with file_server(cut) as srv:
        result = raw_fetch(srv, tmp_path)
        assert srv.requests[1].headers["range"] == f"bytes={200 * KiB}-{len(RAW) - 1}"
        assert any("Content-Length" in e.cause for e in result.retries)


def test_garbage_status_line_is_retried(tmp_path: Path) -> None:
    with file_server(first_only(lambda s, e: b"HTTZ/9 what\r\n\r\n")) as srv:
        raw_fetch(srv, tmp_path)
        assert len(srv.requests) == 2


def test_chunked_body_cut_mid_chunk_is_resumed(tmp_path: Path) -> None:
    def chunked(s: int, e: int) -> bytes:
        return (
            http_response(200, {"Transfer-Encoding": "chunked"}) + b"%x\r\n" % (300 * KiB) + RAW[: 100 * KiB]
        )

    with file_server(first_only(chunked)) as srv:
        raw_fetch(srv, tmp_path)


def test_complete_chunked_body_without_a_length_is_fine(tmp_path: Path) -> None:
    def chunked(req: RawRequest, s: int, e: int) -> bytes:
        half = len(RAW) // 2
        body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, RAW[:half], len(RAW) - half, RAW[half:])
        return http_response(200, {"Transfer-Encoding": "chunked"}) + body

    with file_server(chunked) as srv:
        raw_fetch(srv, tmp_path)


def test_chunked_body_longer_than_expected_is_remote_changed(tmp_path: Path) -> None:
    def chunked(req: RawRequest, s: int, e: int) -> bytes:
        body = RAW + b"extra"
        return http_response(200, {"Transfer-Encoding": "chunked"}) + b"%x\r\n%s\r\n0\r\n\r\n" % (
            len(body),
            body,
        )

    with file_server(chunked) as srv, pytest.raises(RemoteChanged, match="more than"):
        raw_fetch(srv, tmp_path)


def test_silence_before_the_headers_hits_the_read_timeout(tmp_path: Path) -> None:
    def silent(req: RawRequest, s: int, e: int) -> bytes | None:
        if req.index == 0:
            time.sleep(1.0)
            return b""
        return None

    with file_server(silent) as srv:
        result = raw_fetch(srv, tmp_path, read_timeout=0.3)
        assert any("no response within 0.3 s" in e.cause for e in result.retries)


def test_the_budget_counts_from_the_last_byte_not_from_headers_or_a_late_write(tmp_path: Path) -> None:
    """Two pieces of 500 bytes, then silence; every retry gets headers and silence. The second piece waits in
    the read buffer until the stall timeout hands it over (at ~1 s), yet the silence began when it arrived."""
    done = threading.Event()

    def stop_after(req: RawRequest, sock: Any) -> bool:
        start, end = parse_range(req.headers.get("range"), len(RAW))
        headers = {"Content-Length": str(end - start), "Content-Range": f"bytes {start}-{end - 1}/{len(RAW)}"}
        sock.sendall(http_response(206, headers))
        if req.index == 0:
            time.sleep(0.05)  # the first piece ends one read (a buffer's fill time has passed) ...
            sock.sendall(RAW[start : start + 500])
            time.sleep(0.005)  # ... the second starts the next one, which then waits for more
            sock.sendall(RAW[start + 500 : start + 1000])
        done.wait(30)
        return False

    with ScriptedServer(stop_after) as srv:
        spec = spec_for(srv.endpoint, "a/b", "c" * 40, "raw.bin", RAW, lfs=True)
        knobs: dict[str, Any] = {"clock": SYSTEM_CLOCK, "watch": ProgressWatch(2.0), "stall_timeout": 1.0}
        policy = RetryPolicy(total=100, backoff_factor=0.01)
        with make_transfer(endpoint=srv.endpoint, connections_per_file=1, policy=policy, **knobs) as t:
            started = time.monotonic()
            with pytest.raises(RetriesExhausted, match="gave up after 2 s without progress"):
                t.fetch(spec, tmp_path)
            elapsed = time.monotonic() - started
        done.set()
    assert 1.9 < elapsed < 2.6, f"{elapsed:.2f} s"
    assert len(srv.requests) >= 2 and srv.requests[1].headers["range"] == f"bytes=1000-{len(RAW) - 1}"


def test_content_length_disagreeing_with_content_range_is_retried(tmp_path: Path) -> None:
    def lying(req: RawRequest, s: int, e: int) -> bytes | None:
        if req.index == 1:
            headers = {"Content-Length": "10", "Content-Range": f"bytes {s}-{e - 1}/{len(RAW)}"}
            return http_response(206, headers, RAW[s : s + 10])
        if req.index == 0:
            return http_response(200, {"Content-Length": str(len(RAW))}, RAW[:1000])
        return None

    with file_server(lying) as srv:
        result = raw_fetch(srv, tmp_path)
        assert any("disagrees" in e.cause for e in result.retries)


def test_unsatisfiable_range_for_another_size_is_remote_changed(tmp_path: Path) -> None:
    def shrunk(req: RawRequest, s: int, e: int) -> bytes | None:
        if req.index == 0:
            return http_response(200, {"Content-Length": str(len(RAW))}, RAW[:1000])
        return http_response(416, {"Content-Range": "bytes */500", "Content-Length": "0"})

    with file_server(shrunk) as srv, pytest.raises(RemoteChanged, match="500"):
        raw_fetch(srv, tmp_path)
    assert partial_files(tmp_path) == []


def test_an_error_body_nested_too_deeply_to_parse_is_only_not_read(tmp_path: Path) -> None:
    deep = b"[" * 990 + b"]" * 990  # Python's json raises RecursionError near 1000 levels
    busy = first_only(lambda s, e: http_response(503, {"Content-Length": str(len(deep))}, deep))
    with file_server(busy) as srv:
        result = raw_fetch(srv, tmp_path, clock=FakeClock())
    assert [e.cause for e in result.retries] == ["HTTP 503"]


def test_compressed_body_is_refused(tmp_path: Path) -> None:
    gz = lambda req, s, e: http_response(200, {"Content-Length": "5", "Content-Encoding": "gzip"}, b"xxxxx")  # noqa: E731
    with file_server(gz) as srv, pytest.raises(TransferError, match="gzip"):
        raw_fetch(srv, tmp_path)
    assert len(srv.requests) == 1


def test_idle_connection_closed_by_the_server_is_not_a_failure(tmp_path: Path) -> None:
    """A pooled keep-alive connection the server has since closed is replaced silently."""
    closes: list[int] = []

    def close_after_answer(req: RawRequest, sock: Any) -> bool:
        start, end = parse_range(req.headers.get("range"), len(RAW))
        headers = {"Content-Length": str(end - start), "Content-Range": f"bytes {start}-{end - 1}/{len(RAW)}"}
        sock.sendall(http_response(206, headers, RAW[start:end]))
        closes.append(req.index)
        return False  # hang up after every answer, without saying "Connection: close"

    with ScriptedServer(close_after_answer) as srv:
        spec = spec_for(srv.endpoint, "a/b", "c" * 40, "raw.bin", RAW, lfs=True)
        with make_transfer(endpoint=srv.endpoint, min_multipart_size=100 * KiB, part_size=100 * KiB) as t:
            result = t.fetch(spec, tmp_path)
        assert result.actual == spec.expected and result.retries == ()
        assert len(closes) == -(-len(RAW) // (100 * KiB))


def test_parts_are_small_and_many_with_the_test_settings() -> None:
    assert MULTI_SIZE // TEST_PART_SIZE >= 12  # the multi-part tests above really are multi-part
