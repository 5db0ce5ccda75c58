"""RetryPolicy: budget, backoff, jitter, Retry-After, reset on progress, immutability; ProgressWatch: the give-up."""

from __future__ import annotations

import dataclasses
import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vcache.config import give_up_seconds
from vcache.errors import RetriesExhausted, TransferError
from vcache.retry import DEFAULT_GIVE_UP, FakeClock, ProgressWatch, RetryPolicy, parse_retry_after


def fixed(value: float) -> RetryPolicy:
    """A policy whose jitter draw is always ``value``."""
    return RetryPolicy(rand=lambda: value)


def test_backoff_sequence_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(total=12, backoff_factor=0.5, backoff_max=30.0, jitter=0.25, rand=lambda: 0.5)
    assert policy.backoff() == 0.0  # no failure yet
    sleeps = []
    for _ in range(9):
        policy = policy.increment(status=503)
        sleeps.append(policy.backoff())
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


@given(draw=st.floats(min_value=0.0, max_value=0.999999), failures=st.integers(min_value=1, max_value=12))
def test_jitter_stays_within_bounds(draw: float, failures: int) -> None:
    policy = RetryPolicy(total=20, backoff_factor=0.5, backoff_max=30.0, jitter=0.25, rand=lambda: draw)
    for _ in range(failures):
        policy = policy.increment(error=ConnectionResetError())
    base = min(30.0, 0.5 * 2 ** (failures - 1))
    assert base * 0.75 <= policy.backoff() <= base * 1.25


def test_jitter_extremes() -> None:
    low = RetryPolicy(rand=lambda: 0.0).increment(status=500)
    high = RetryPolicy(rand=lambda: 0.9999999).increment(status=500)
    assert low.backoff() == pytest.approx(0.375)
    assert high.backoff() == pytest.approx(0.625, rel=1e-5)


def test_retry_after_replaces_backoff_and_is_never_shortened() -> None:
    policy = fixed(0.0).increment(status=429, retry_after=7.0)
    assert policy.backoff() == 7.0
    policy = fixed(0.9999).increment(status=429, retry_after=7.0)
    assert 7.0 <= policy.backoff() <= 7.0 * 1.25


def test_retry_after_beyond_the_maximum_gives_up_at_once() -> None:
    policy = RetryPolicy(retry_after_max=60.0)
    with pytest.raises(RetriesExhausted) as info:
        policy.increment(status=429, retry_after=3600.0)
    assert "3600" in str(info.value)
    assert info.value.reason == "HTTP 429"


def test_budget_is_spent_after_total_retries_and_error_carries_the_reason() -> None:
    policy = RetryPolicy(total=3)
    for _ in range(3):
        policy = policy.increment(error=TimeoutError("read timed out"))
    with pytest.raises(RetriesExhausted) as info:
        policy.increment(status=502)
    err = info.value
    assert isinstance(err, TransferError) and isinstance(err, OSError)
    assert err.reason == "HTTP 502"
    assert len(err.history) == 4
    assert err.history[0].cause == "TimeoutError: read timed out"
    assert "HTTP 502" in str(err)


def test_total_zero_means_no_retry() -> None:
    with pytest.raises(RetriesExhausted):
        RetryPolicy(total=0).increment(status=500)


def test_reset_on_progress_restores_the_budget_and_keeps_history() -> None:
    policy = RetryPolicy(total=2)
    policy = policy.increment(status=500).increment(status=500)
    policy = policy.reset()
    assert policy.consecutive == 0 and policy.backoff() == 0.0
    policy = policy.increment(status=500).increment(status=500)  # two more allowed
    assert len(policy.history) == 4
    with pytest.raises(RetriesExhausted):
        policy.increment(status=500)
    assert RetryPolicy().reset() == RetryPolicy()


def test_policy_is_immutable() -> None:
    original = RetryPolicy(total=5)
    after = original.increment(status=503, cause="custom words")
    assert original.history == () and original.consecutive == 0
    assert after is not original and after.history[0].cause == "custom words"
    with pytest.raises(dataclasses.FrozenInstanceError):
        original.total = 1  # type: ignore[misc]


def test_retryable_statuses() -> None:
    policy = RetryPolicy()
    assert all(policy.is_retryable_status(s) for s in (408, 429, 500, 502, 503, 504))
    assert not any(policy.is_retryable_status(s) for s in (200, 400, 401, 403, 404, 416))
    assert RetryPolicy(status_forcelist=frozenset({418})).is_retryable_status(418)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(total=-1)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)


def test_parse_retry_after_seconds_and_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    later = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(later, now) == pytest.approx(90.0)
    earlier = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0
    zoneless = later.replace(" GMT", "")
    assert parse_retry_after(zoneless, now) == pytest.approx(90.0)
    for garbage in (None, "", "soon", "-5", "1.5", "Wed, 99 Foo 2015"):
        assert parse_retry_after(garbage, now) is None


def test_fake_clock_advances_only_when_sleeping() -> None:
    clock = FakeClock(start=10.0)
    assert clock.monotonic() == 10.0
    clock.sleep(2.5)
    clock.sleep(-1)  # never backwards
    clock.advance(1.0)
    assert clock.monotonic() == 13.5
    assert clock.sleeps == [2.5, -1]


# -- ProgressWatch: one give-up budget for a pull whose server stops answering ---------------------------------


def watch(give_up: float = 45.0, start: float = 1000.0) -> tuple[ProgressWatch, FakeClock, list[str]]:
    clock = FakeClock(start)
    lines: list[str] = []
    return ProgressWatch(give_up, clock=clock, notify=lines.append), clock, lines


def test_silence_past_the_budget_gives_up_naming_host_cause_and_the_setting() -> None:
    w, clock, _ = watch(45.0)
    with w.waiting("hub.example:443", "resolving acme/m@main"):
        w.check("resolving acme/m@main")
        clock.advance(44.0)
        w.failed("hub.example:443", "resolving acme/m@main", "ConnectError: connection refused")
        w.check("resolving acme/m@main")  # 44 s of silence: not yet
        clock.advance(1.0)
        with pytest.raises(RetriesExhausted) as info:
            w.check("resolving acme/m@main")
    message = str(info.value)
    assert "resolving acme/m@main" in message and "hub.example:443" in message
    assert "connection refused" in message and "45 s" in message and "VCACHE_GIVE_UP_SECONDS" in message
    assert isinstance(info.value, TransferError)


def test_progress_restarts_the_budget() -> None:
    w, clock, _ = watch(10.0)
    with w.waiting("h", "f"):
        for _ in range(5):
            clock.advance(9.0)
            w.progress()  # bytes keep arriving, slowly: never a give-up
            w.check("f")
        clock.advance(10.0)
        with pytest.raises(RetriesExhausted):
            w.check("f")


def test_time_with_nothing_waiting_is_not_silence() -> None:
    """A pull that waits for a lock or hashes between two requests has not been ignored by the server."""
    w, clock, _ = watch(10.0)
    with w.waiting("h", "a"):
        w.progress()
    clock.advance(300.0)
    with w.waiting("h", "b"):
        w.check("b")
        clock.advance(9.0)
        w.check("b")


def test_after_a_give_up_every_later_wait_fails_at_once_until_progress() -> None:
    """N files behind a connection cap must not each wait out their own budget."""
    w, clock, _ = watch(10.0)
    with w.waiting("h", "a"):
        w.failed("h", "a", "refused")
        clock.advance(10.0)
        with pytest.raises(RetriesExhausted):
            w.check("a")
    for name in ("b", "c"):
        with w.waiting("h", name), pytest.raises(RetriesExhausted, match=name):
            w.check(name)
    with w.waiting("h", "d"):
        w.progress()  # the server is back
        w.check("d")


def test_failures_carry_the_silence_from_one_wait_to_the_next() -> None:
    """A fail-fast attempt followed by the real one is one wait, not two budgets."""
    w, clock, _ = watch(10.0)
    with w.waiting("h", "resolve (fail fast)"):
        clock.advance(6.0)
        w.failed("h", "resolve (fail fast)", "ConnectTimeout")
    with w.waiting("h", "resolve"):
        clock.advance(4.0)
        with pytest.raises(RetriesExhausted):
            w.check("resolve")


def test_timeouts_and_pauses_are_capped_by_what_is_left() -> None:
    w, clock, _ = watch(45.0)
    assert w.last_chance == 2.0
    with w.waiting("h", "f"):
        assert w.timeout(60.0) == 45.0 and w.timeout(10.0) == 10.0
        clock.advance(40.0)
        w.failed("h", "f", "timed out")
        assert w.timeout(10.0) == 5.0 and w.pause(30.0) == 5.0 and w.pause(1.0) == 1.0
        clock.advance(4.5)
        assert w.timeout(10.0) == 2.0  # a last attempt still gets a real chance
        clock.advance(10.0)
        assert w.pause(30.0) == 0.0


def test_retry_after_is_an_answer_the_silence_starts_after_it() -> None:
    w, clock, _ = watch(10.0)
    with w.waiting("h", "f"):
        w.failed("h", "f", "HTTP 429")
        w.respite(60.0)  # the server asked for a minute
        clock.advance(65.0)
        w.check("f")
        clock.advance(5.0)
        with pytest.raises(RetriesExhausted):
            w.check("f")


def test_notice_after_a_few_seconds_then_at_most_every_ten() -> None:
    w, clock, lines = watch(45.0)
    with w.waiting("huggingface.co", "resolving acme/m@main"):
        w.tick()
        clock.advance(4.0)
        w.tick()
        assert lines == []
        for _ in range(3):
            w.failed(
                "huggingface.co", "resolving acme/m@main", "ConnectError: [Errno 111] Connection refused"
            )
        clock.advance(1.0)
        w.tick()
        w.tick()
        assert len(lines) == 1
        line = lines[0]
        assert line.startswith("waiting for huggingface.co")
        assert "Connection refused" in line and "3 failed attempts" in line and "giving up in 40 s" in line
        clock.advance(9.0)
        w.tick()
        assert len(lines) == 1
        clock.advance(1.0)
        w.tick()
        assert len(lines) == 2 and "giving up in 30 s" in lines[1]
    clock.advance(20.0)
    w.tick()  # nothing waits any more: silence
    assert len(lines) == 2


def test_a_request_still_in_flight_is_noticed_too() -> None:
    """A server that accepted and says nothing: no failure yet, but the user hears about it."""
    w, clock, lines = watch(45.0)
    with w.waiting("127.0.0.1:8080", "listing acme/m"):
        clock.advance(6.0)
        w.tick()
    assert lines == [
        "waiting for 127.0.0.1:8080 (listing acme/m: nothing received for 6 s); giving up in 39 s"
    ]


def test_short_budgets_scale_the_notice_and_the_last_chance() -> None:
    w, clock, lines = watch(3.0)
    assert w.last_chance == pytest.approx(0.3) and w.worst_case == pytest.approx(3.3)
    with w.waiting("h", "f"):
        clock.advance(0.75)
        w.tick()
    assert len(lines) == 1


def test_default_settings_give_up_within_a_minute_and_speak_within_ten_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound the README promises, computed from the defaults (no wall-clock wait)."""
    monkeypatch.delenv("VCACHE_GIVE_UP_SECONDS", raising=False)
    default = ProgressWatch(give_up_seconds())
    assert default.give_up == DEFAULT_GIVE_UP == 45.0
    assert default.worst_case < 60.0 and default.notice_after <= 5.0
    monkeypatch.setenv("VCACHE_GIVE_UP_SECONDS", "600")
    assert give_up_seconds() == 600.0
    monkeypatch.setenv("VCACHE_GIVE_UP_SECONDS", "nonsense")
    assert give_up_seconds() == 45.0
    monkeypatch.setenv("VCACHE_GIVE_UP_SECONDS", "0")
    assert give_up_seconds() == 1.0  # never "give up before asking"


def test_watch_rejects_a_budget_of_nothing() -> None:
    with pytest.raises(ValueError):
        ProgressWatch(0.0)
