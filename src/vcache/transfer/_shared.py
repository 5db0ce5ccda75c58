"""What every fetch of one Transfer shares: the settings, the connection pool, the rate-limit gate and the
connection slots.

:class:`_Shared` is handed to each fetch (and to the request machinery of each fetch) explicitly: nothing
reaches into the Transfer. :class:`_Slots` is the Transfer-wide connection cap, with the rule that keeps
one big file from starving the rest: while a fetch waits for its first connection, no fetch adds one, and
extra connections give theirs back at their next part boundary.

This module does no I/O and decides nothing about bytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from vcache.connections import Pool as _Pool
from vcache.hub import Origin
from vcache.retry import Clock, ProgressWatch, RetryPolicy
from vcache.transfer._gate import _Gate


class _Slots:
    """The Transfer-wide connection cap, and the count of fetches (thread-safe)."""

    def __init__(self, max_connections: int, cpus: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        # Fetches waiting for their first connection: while there are any, no fetch adds a connection,
        # and extra connections give theirs up at the next part, so one big file never starves the rest.
        self.first_waiters = 0
        self.fetching = 0  # fetches running now (for the inline-hashing choice)
        self.cpus = cpus

    def acquire_first(self) -> None:
        """Take a fetch's first connection slot, waiting (as a first waiter) until one is free.

        Every fetch needs one connection. Waiting for it is bounded: extra connections of other fetches
        hand theirs over at their next part boundary.
        """
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.first_waiters += 1
            try:
                self._slots.acquire()
            finally:
                with self._lock:
                    self.first_waiters -= 1

    def try_acquire(self) -> bool:
        """Take a slot for an extra connection if one is free now."""
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        """Give a slot back."""
        self._slots.release()

    def started(self) -> None:
        """A fetch began."""
        with self._lock:
            self.fetching += 1

    def stopped(self) -> None:
        """A fetch ended."""
        with self._lock:
            self.fetching -= 1

    def crowded(self) -> bool:
        """At least as many fetches run as there are CPUs (the other files keep the CPUs busy)."""
        return self.fetching >= self.cpus


@dataclass(frozen=True)
class _Shared:
    """The Transfer's settings and machinery, as its fetches see them."""

    hub_origin: Origin
    token: str | None = field(repr=False)  # sent to ``hub_origin`` only
    user_agent: str
    policy: RetryPolicy
    clock: Clock
    watch: ProgressWatch
    connect_timeout: float
    read_timeout: float
    stall_timeout: float
    max_connections: int
    connections_per_file: int | None
    part_size: int | None
    min_multipart_size: int
    buffer_size: int
    pool: _Pool
    gate: _Gate
    slots: _Slots
