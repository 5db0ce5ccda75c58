"""When to try again, and how long to wait first: :class:`RetryPolicy`, an immutable value.

Modelled on urllib3's ``Retry``: a policy is a frozen value; :meth:`RetryPolicy.increment` returns a new
policy with one more :class:`RetryEvent` in its history, or raises :class:`~vcache.errors.RetriesExhausted`
when the budget is spent. The budget counts *consecutive failures without progress*: a caller that sees
bytes arrive calls :meth:`RetryPolicy.reset`, so a long download over a flaky link is never failed for
failures spread over hours, while a dead server is given up on after ``total`` retries.

Time is injected through the :class:`Clock` protocol so that tests never sleep through a real backoff
(:class:`FakeClock` advances instantly).

This module owns the arithmetic of retrying (budget, backoff, jitter, ``Retry-After``). It never performs
I/O, never sleeps by itself, and never decides *what* is retryable beyond the status list it is given.
"""

from __future__ import annotations

import datetime
import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from vcache.errors import RetriesExhausted

__all__ = [
    "SYSTEM_CLOCK",
    "Clock",
    "FakeClock",
    "RetryEvent",
    "RetryPolicy",
    "SystemClock",
    "parse_retry_after",
]


class Clock(Protocol):
    """Where time comes from: a monotonic reading and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (or advance a fake clock by that much)."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.sleep`."""

    def monotonic(self) -> float:
        """Seconds from :func:`time.monotonic`."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class FakeClock:
    """A clock for tests: ``sleep`` returns at once and advances ``monotonic`` by the amount asked.

    Thread-safe; every sleep is recorded in :attr:`sleeps` (in call order) so tests can assert the
    backoff sequence without waiting for it.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The current fake time."""
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance the fake time by ``seconds`` (never backwards)."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Move the fake time forward without recording a sleep."""
        with self._lock:
            self._now += max(0.0, seconds)


@dataclass(frozen=True)
class RetryEvent:
    """One failed attempt: what went wrong (a short description), the status and ``Retry-After`` if any."""

    cause: str
    status: int | None = None
    retry_after: float | None = None


def _describe(error: BaseException | None, status: int | None) -> str:
    if error is not None:
        text = str(error) or type(error).__name__
        return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text
    if status is not None:
        return f"HTTP {status}"
    return "unknown failure"


@dataclass(frozen=True)
class RetryPolicy:
    """An immutable retry budget with exponential backoff, jitter and ``Retry-After`` support.

    * ``total``: how many retries are allowed in a row without progress; the ``total + 1``-th consecutive
      failure raises. :meth:`reset` (called when bytes arrive) restores the full budget.
    * backoff before the *n*-th retry: ``min(backoff_max, backoff_factor * 2 ** (n - 1))``, scaled by a
      random factor in ``[1 - jitter, 1 + jitter]`` so that many clients do not retry in lockstep.
    * a server's ``Retry-After`` replaces the backoff (never shortened by jitter, only lengthened); a
      ``Retry-After`` longer than ``retry_after_max`` gives up at once rather than hanging for it.
    * ``rand`` returns a float in ``[0, 1)``; inject a constant in tests.
    """

    total: int = 10
    backoff_factor: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.25
    status_forcelist: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
    retry_after_max: float = 300.0
    history: tuple[RetryEvent, ...] = ()
    consecutive: int = 0
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.total < 0:
            raise ValueError("total must be >= 0")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if self.backoff_factor < 0 or self.backoff_max < 0 or self.retry_after_max < 0:
            raise ValueError("backoff_factor, backoff_max and retry_after_max must be >= 0")

    def is_retryable_status(self, status: int) -> bool:
        """Whether an HTTP status is worth another attempt under this policy."""
        return status in self.status_forcelist

    def increment(
        self,
        *,
        error: BaseException | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        cause: str | None = None,
    ) -> RetryPolicy:
        """Record one failed attempt and return the policy to use for the next one.

        ``cause`` describes the failure in words (default: derived from ``error`` or ``status``).
        Raises :class:`~vcache.errors.RetriesExhausted` (``.reason`` = the last cause, ``.history`` = every
        event) when the budget is spent, or when the server asks to wait longer than ``retry_after_max``.
        """
        event = RetryEvent(cause or _describe(error, status), status, retry_after)
        new = replace(self, history=(*self.history, event), consecutive=self.consecutive + 1)
        if retry_after is not None and retry_after > self.retry_after_max:
            raise RetriesExhausted(
                f"server asked to wait {retry_after:.0f} s (more than the {self.retry_after_max:.0f} s allowed); "
                f"last cause: {event.cause}",
                reason=event.cause,
                status=status,
                history=new.history,
            )
        if new.consecutive > self.total:
            raise RetriesExhausted(
                f"gave up after {new.consecutive} failed attempts in a row; last cause: {event.cause}",
                reason=event.cause,
                status=status,
                history=new.history,
            )
        return new

    def backoff(self) -> float:
        """Seconds to wait before the next attempt (0 before any failure)."""
        if self.consecutive == 0:
            return 0.0
        last = self.history[-1]
        if last.retry_after is not None:
            # Honour the server: never earlier than asked, a little later to spread a crowd of clients.
            return last.retry_after * (1.0 + self.jitter * self.rand())
        base = min(self.backoff_max, self.backoff_factor * 2.0 ** (self.consecutive - 1))
        return max(0.0, base * (1.0 + self.jitter * (2.0 * self.rand() - 1.0)))

    def reset(self) -> RetryPolicy:
        """The policy after progress: full budget again, history kept for the report."""
        if self.consecutive == 0:
            return self
        return replace(self, consecutive=0)

    @property
    def last_event(self) -> RetryEvent | None:
        """The most recent failure, if any."""
        return self.history[-1] if self.history else None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP date (relative to wall time ``now``).

    Returns seconds to wait (``>= 0``), or ``None`` when the header is absent or malformed (the value is
    untrusted input, so garbage is ignored rather than raised).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # An HTTP date is always GMT; servers that drop the zone still mean GMT.
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return max(0.0, parsed.timestamp() - now)
