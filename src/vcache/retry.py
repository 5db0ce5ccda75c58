"""When to try again, how long to wait first, and when to give up: :class:`RetryPolicy` and :class:`ProgressWatch`.

Modelled on urllib3's ``Retry``: a policy is a frozen value; :meth:`RetryPolicy.increment` returns a new
policy with one more :class:`RetryEvent` in its history, or raises :class:`~vcache.errors.RetriesExhausted`
when the budget is spent. The budget counts *consecutive failures without progress*: a caller that sees
bytes arrive calls :meth:`RetryPolicy.reset`, so a long download over a flaky link is never failed for
failures spread over hours, while a dead server is given up on after ``total`` retries.

A policy counts one request's failures; it cannot see that the whole server has gone quiet. That is the
:class:`ProgressWatch`: one give-up budget per pull, shared by every request and every connection, that
counts seconds without a sign of life and ends every wait once they reach ``give_up``. Per-request budgets
alone multiply: 16 connections each allowed 10 retries, or files queued behind a connection cap each
starting their own, kept a dead server's pull going for minutes.

Time is injected through the :class:`Clock` protocol so that tests never sleep through a real backoff
(:class:`FakeClock` advances instantly).

This module owns the arithmetic of retrying and giving up (budget, backoff, jitter, ``Retry-After``,
silence). It never performs I/O, never sleeps by itself, starts no thread, and never decides *what* is
retryable beyond the status list it is given.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from vcache.errors import RateLimited, RetriesExhausted, RetryEvent

__all__ = [
    "DEFAULT_GIVE_UP",
    "SYSTEM_CLOCK",
    "Clock",
    "FakeClock",
    "ProgressWatch",
    "RetryEvent",
    "RetryPolicy",
    "SystemClock",
    "describe_failure",
    "exhausted",
    "parse_retry_after",
    "start_jitter",
]

_log = logging.getLogger(__name__)

#: Seconds without a sign of life from the server before a pull gives up (``VCACHE_GIVE_UP_SECONDS``).
DEFAULT_GIVE_UP = 45.0


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


def describe_failure(error: BaseException | None, status: int | None) -> str:
    """A failed attempt in words: ``"TimeoutError: read timed out"``, ``"HTTP 503"``."""
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
        event = RetryEvent(cause or describe_failure(error, status), status, retry_after)
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


def exhausted(
    what: str, error: RetriesExhausted, *, server: str | None = None, **context: Any
) -> RetriesExhausted | RateLimited:
    """The error that ends a request whose retry budget is spent: the one wording of it.

    ``error`` is what :meth:`RetryPolicy.increment` raised (how many attempts failed, the last cause);
    ``what`` (the request or file) opens the message, ``server`` names where the attempts went, and a
    sentence says what to do next. A last failure that was a 429 makes it a
    :class:`~vcache.errors.RateLimited`. ``context`` joins the error's own (``reason``, ``status``,
    ``history``).
    """
    fields = {**error.context, **context}
    told = f"{what}: {error.message}" + (f" (from {server})" if server else "")
    if fields.get("status") == 429:
        return RateLimited(f"{told}; wait and run again, or with fewer parallel downloads", **fields)
    return RetriesExhausted(f"{told}; check the network or HF_ENDPOINT and run again", **fields)


class ProgressWatch:
    """When a pull stops waiting for a server that has gone quiet: one budget for all its requests.

    * **Silence** is time on the clock while at least one request waits (inside :meth:`waiting`) and none
      brought a sign of life (:meth:`progress`: body bytes, or an answer other than a retryable failure).
      It starts when the first wait begins, or at the last sign of life. Time when nothing waits (a lock,
      local hashing) is not silence; a wait that ends in failures hands its silence on to the next one.
    * **Giving up**: :meth:`check` raises :class:`~vcache.errors.RetriesExhausted` once the silence reaches
      ``give_up``, and keeps raising at once, for every later wait, until something progresses: a server
      that is gone is gone for the whole pull, not only for the request that noticed.
    * **Bounded waits**: ``left = start + give_up - now``; a socket timeout ``t`` becomes
      ``timeout(t) = min(t, max(last_chance, left))`` and a backoff ``d`` becomes ``pause(d) = min(d, left)``,
      with ``last_chance = min(2, give_up / 10)``. A pull that hears nothing therefore ends within
      :attr:`worst_case` ``= give_up + last_chance`` seconds (47 s with the defaults).
    * **Retry-After** is an answer: :meth:`respite` starts the silence only after the wait the server asked for.
    * **Notices**: once the silence reaches ``notice_after = min(5, give_up / 4)`` seconds, :meth:`tick`
      passes ``notify`` one line (what is awaited, the last cause, when vcache gives up), then at most one
      every ``notice_every`` (10) seconds. Callers tick after each failure and, while requests are in
      flight, from a thread of their own; ``notify`` defaults to a ``logging`` warning.

    Thread-safe; time comes from ``clock``.
    """

    def __init__(
        self,
        give_up: float = DEFAULT_GIVE_UP,
        *,
        clock: Clock = SYSTEM_CLOCK,
        notify: Callable[[str], None] | None = None,
        notice_every: float = 10.0,
    ) -> None:
        if not give_up > 0:
            raise ValueError("give_up must be > 0 seconds")
        self.give_up = float(give_up)
        self.last_chance = min(2.0, self.give_up / 10)
        self.notice_after = min(5.0, self.give_up / 4)
        self.notice_every = notice_every
        self.clock = clock
        self._notify = notify or _log.warning
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._waits: dict[int, tuple[str, str]] = {}  # token -> (host, what), oldest first
        self._since: float | None = None  # when the current silence began (None: nothing waits)
        self._failures = 0  # failed attempts since the last sign of life
        self._last: tuple[str, str, str] | None = None  # (host, what, cause) of the latest failure
        self._gave_up = False
        self._noticed: float | None = None

    @property
    def worst_case(self) -> float:
        """The longest a pull keeps waiting for a server that says nothing: ``give_up + last_chance``."""
        return self.give_up + self.last_chance

    @contextlib.contextmanager
    def waiting(self, host: str, what: str) -> Iterator[None]:
        """Mark a wait for ``host`` (``what``: the request or file, for messages) while the block runs."""
        with self._lock:
            token = next(self._tokens)
            self._waits[token] = (host, what)
            if self._since is None:
                self._since = self.clock.monotonic()
        try:
            yield
        finally:
            with self._lock:
                del self._waits[token]
                if not self._waits and not self._failures and not self._gave_up:
                    self._since = None

    def progress(self, *, ago: float = 0.0) -> None:
        """A sign of life ``ago`` seconds before now: the silence (and any give-up) is over.

        ``ago`` dates bytes that waited in a buffer; a sign older than the current silence's start is no news.
        """
        at = self.clock.monotonic() - max(0.0, ago)
        with self._lock:
            if self._since is not None and at < self._since:
                return
            self._since = at if self._waits else None
            self._failures = 0
            self._last = None
            self._gave_up = False
            self._noticed = None

    def failed(self, host: str, what: str, cause: str) -> None:
        """Record one failed attempt (for the notices and the give-up message)."""
        with self._lock:
            self._failures += 1
            self._last = (host, what, cause)

    def respite(self, seconds: float) -> None:
        """The server asked to wait ``seconds``: the silence starts counting after that."""
        start = self.clock.monotonic() + max(0.0, seconds)
        with self._lock:
            self._since = start if self._since is None else max(self._since, start)

    def left(self) -> float:
        """Seconds before the give-up (the full budget when nothing is silent yet)."""
        now = self.clock.monotonic()
        with self._lock:
            since = now if self._since is None else self._since
        return since + self.give_up - now

    def timeout(self, seconds: float) -> float:
        """A socket timeout of ``seconds``, cut so the wait ends near the give-up (never below ``last_chance``)."""
        return min(seconds, max(self.last_chance, self.left()))

    def pause(self, seconds: float) -> float:
        """A backoff of ``seconds``, cut so it does not sleep past the give-up."""
        return max(0.0, min(seconds, self.left()))

    def check(self, what: str, *, repo_id: str | None = None, path: str | None = None) -> None:
        """Raise :class:`~vcache.errors.RetriesExhausted` (naming ``repo_id`` or ``path``) once the budget is
        spent."""
        now = self.clock.monotonic()
        with self._lock:
            if self._since is None or (not self._gave_up and now - self._since < self.give_up):
                return
            self._gave_up = True
            silent, failures, last = now - self._since, self._failures, self._last
            waits = list(self._waits.values())
        host = last[0] if last else waits[0][0] if waits else "the server"
        cause = last[2] if last else "no answer"
        tried = f"{_failed_attempts(failures)}; " if failures else ""
        raise RetriesExhausted(
            f"{what}: gave up after {silent:.0f} s without progress from {host} ({tried}last: {cause}). "
            "Check the network or HF_ENDPOINT and run again; on a slow or flaky link set "
            f"VCACHE_GIVE_UP_SECONDS above {self.give_up:g}",
            reason=cause,
            repo_id=repo_id,
            path=path,
        )

    def tick(self) -> None:
        """Pass ``notify`` a line about the wait, when one is due (see the class docstring)."""
        now = self.clock.monotonic()
        with self._lock:
            if not self._waits or self._since is None or self._gave_up:
                return
            silent = now - self._since
            if silent < self.notice_after or (
                self._noticed is not None and now - self._noticed < self.notice_every
            ):
                return
            self._noticed = now
            if self._last is not None:
                host, what, cause = self._last
                detail = f"{what}: {cause}, {_failed_attempts(self._failures)}"
            else:
                host, what = next(iter(self._waits.values()))
                detail = f"{what}: nothing received for {silent:.0f} s"
            left = self._since + self.give_up - now
        self._notify(f"waiting for {host} ({detail}); giving up in {max(0.0, left):.0f} s")


def _failed_attempts(n: int) -> str:
    return f"{n} failed attempt{'s' if n != 1 else ''}"


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


_jitter_lock = threading.Lock()
_jitter_done = False


def start_jitter(spread: float, *, sleep: bool = True) -> float:
    """Sleep a random ``0..spread`` seconds, once per process; return the delay chosen.

    Call it before the first Hub request, so that N processes started together (a cluster job) do not all ask
    the Hub at once. Later calls return 0 at once, so a process that pulls many repos waits only once.
    ``spread`` 0 or less: no delay. The clock of this wait is the real one: it happens before any request.
    """
    global _jitter_done
    with _jitter_lock:
        if _jitter_done or spread <= 0:
            return 0.0
        _jitter_done = True
        delay = random.uniform(0.0, spread)
    if sleep:
        time.sleep(delay)
    return delay
