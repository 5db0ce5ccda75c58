"""The rate-limit gate of one Transfer: a 429 or 503 ``Retry-After`` closes it, and every connection of the
Transfer waits at it before its next request (not just the connection that was told to wait).

Time comes from the injected clock; this module never decides how long to wait (the retry policy does).
"""

from __future__ import annotations

import threading

from vcache.retry import Clock, SystemClock


class _Gate:
    """The Transfer-wide rate-limit gate: while it is closed, no connection starts a request."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._until = float("-inf")

    def close_for(self, seconds: float) -> None:
        """Keep the gate closed for at least ``seconds`` from now."""
        with self._lock:
            self._until = max(self._until, self._clock.monotonic() + seconds)

    def wait(self, cancel: threading.Event) -> None:
        """Return once the gate is open (or as soon as ``cancel`` is set)."""
        while not cancel.is_set():
            with self._lock:
                remaining = self._until - self._clock.monotonic()
            if remaining <= 0:
                return
            _pause(self._clock, remaining, cancel)


def _pause(clock: Clock, seconds: float, cancel: threading.Event) -> None:
    """Wait ``seconds`` on ``clock``; on the real clock a ``cancel`` cuts the wait short.

    An injected clock (tests) gets exactly one ``sleep(seconds)`` call, so its record of sleeps reads as
    the backoff sequence itself.
    """
    if isinstance(clock, SystemClock):
        cancel.wait(seconds)
    else:
        clock.sleep(seconds)
