"""RetryPolicy: budget, backoff, jitter, Retry-After, reset on progress, immutability."""

from __future__ import annotations

import dataclasses
import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vcache.errors import RetriesExhausted, TransferError
from vcache.retry import FakeClock, RetryPolicy, parse_retry_after


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
