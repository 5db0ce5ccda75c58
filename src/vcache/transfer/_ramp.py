"""The ramp-up: how many connections one file uses when ``connections_per_file`` is ``None``.

A file starts with one connection. The ramp measures windows of ``_RAMP_INTERVAL`` seconds of steady flow
(every connection receiving) and multiplies the connections by ``_RAMP_STEP`` (1, 4, 16) only while

* the connections spend most of their time waiting for bytes (``_LINK_BOUND``: they wait for the link),
* some CPU is idle (``_CPU_IDLE_MIN``: so they do not wait for a CPU instead),
* two measuring windows in a row agree (``_RAMP_VOTES``), and
* the last step raised the throughput by at least ``_RAMP_GAIN``.

The first window after the connections start receiving decides nothing (TCP slow start, the pull's own
start-up). A file held back because it was not link-bound, or no CPU was idle, is measured again
``_RAMP_RECHECK`` seconds later; a step that did not pay twice in a row ends the ramp.

Connections that wait for bytes nearly all the time (``_LINK_STRONG``) cost almost no CPU: a capped link.
Such a window counts as a vote even when it is the first; and when the last step multiplied the throughput
nearly by the number of connections it added (``_RAMP_FLAT``: each connection kept its rate) while they
still waited for bytes nearly all the time, the next step goes straight to the cap without a second vote,
busy CPU or not (more connections demonstrably brought more bytes; the idle-CPU test is only a proxy for that). A 512 MiB file at
50 MB/s per connection is over in ~1.5 s: its connections must be open within the first 0.2-0.3 s. So capped
CDN connections get many (1 GiB at a 50 MB/s cap per connection: ~390 MB/s on 2 cores), while an unthrottled
loopback, or several files at once on a busy machine, stay at one per file (extra connections there only
cost CPU).

:class:`_Ramp` decides the target number of connections from the counters it is shown; time comes from an
injected clock and the CPU reading from an injected reader, so it can be driven alone. It never starts a
connection (the fetch does) and does no I/O beyond reading ``/proc/stat``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vcache.retry import SYSTEM_CLOCK, Clock

_log = logging.getLogger(__name__)

_RAMP_INTERVAL = 0.1  # seconds of steady flow (every connection receiving) a ramp decision looks at
_RAMP_STEP = 4  # connections are multiplied by this at each step (1, 4, 16): capped links reach speed fast
_RAMP_GAIN = 1.2  # a step must raise the throughput by this factor to earn the next one
_RAMP_RECHECK = 0.5  # seconds before connections that were not link-bound are measured again
#: Below this share of idle CPU (the whole machine, over the measuring window) connections are not added:
#: they would wait for a CPU, not for the link. Measured on 2 cores with the server on the same machine
#: (4 x 256 MiB unthrottled): 1 connection per file 1.48-1.56 s, ramped to 4 per file 1.57-2.20 s.
_CPU_IDLE_MIN = 0.15
_RAMP_VOTES = 2  # measuring windows in a row that must call for a step before it is taken
#: Connections that spend at least this share of their time waiting for bytes are limited by the link,
#: and more of them help. Measured: ~100% on a capped link; 50-65% on an unthrottled loopback, where the
#: rest is the client's own copying and writing and more connections only add CPU work.
_LINK_BOUND = 0.8
#: At least this share: the link is the limit beyond doubt (a capped link waits ~100%), so the first window
#: counts as a vote.
_LINK_STRONG = 0.97
#: A step whose throughput grew by at least this share of the connections it multiplied (4 connections: 3.2x)
#: left each connection its rate: the next step goes to the cap at once.
_RAMP_FLAT = 0.8

CpuTimes = Callable[[], tuple[int, int] | None]


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) CPU time of the whole machine in clock ticks (Linux ``/proc/stat``), else ``None``."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != b"cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    return ticks[3] + (ticks[4] if len(ticks) > 4 else 0), sum(ticks[:8])  # idle + iowait; no guest


def _cpu_idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time that was idle between two :func:`_cpu_times` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


class _Ramp:
    """The target number of connections of one file (see the module docstring).

    ``adaptive=False`` fixes the target at ``cap``. Call :meth:`observe` often (the fetch does, under its
    lock) with the fetch's running counters; read :attr:`target`. Not thread-safe on its own.
    """

    def __init__(
        self,
        cap: int,
        adaptive: bool,
        *,
        name: str = "",
        clock: Clock = SYSTEM_CLOCK,
        cpu_times: CpuTimes | None = None,
    ) -> None:
        self.cap = cap
        self.name = name  # for the log
        self._clock = clock
        self._cpu_times = cpu_times  # None: this module's _cpu_times, looked up at each reading
        self.target = 1 if adaptive else cap
        self.frozen = not adaptive
        self.prev: float | None = None  # the rate that earned the last step
        self.hold_until = 0.0
        self.votes = 0  # windows in a row that asked for more connections
        self.warmed = False  # the first measuring window has passed
        self.open = False  # a measuring window is running (it starts after warm-up and holds)
        self.cpu: tuple[int, int] | None = None
        self.strikes = 0
        self.t = clock.monotonic()
        self.bytes = 0
        self.waited = 0.0

    def observe(self, running: int, warm: int, received: int, waited: float) -> None:
        """Look at the fetch: ``running`` connections, ``warm`` of them receiving, ``received`` bytes and
        ``waited`` seconds spent waiting for bytes (both summed over all connections, ever)."""
        if self.frozen:
            return
        now = self._clock.monotonic()
        if warm < running or now < self.hold_until:
            # Connections still being set up (DNS, TCP, TLS, redirect) would make any rate look low:
            # the measuring window starts once every connection is receiving (and after a hold).
            self.open = False
        elif not self.open:
            self._window(now, received, waited)
        elif now - self.t >= _RAMP_INTERVAL:
            self._decide(now, running, received, waited)

    def _read_cpu(self) -> tuple[int, int] | None:
        return (self._cpu_times or _cpu_times)()

    def _decide(self, now: float, running: int, received: int, waited: float) -> None:
        """Add connections while it pays: they mostly wait for bytes, and the last step raised the rate."""
        elapsed = now - self.t
        rate = (received - self.bytes) / elapsed
        waiting = (waited - self.waited) / (elapsed * max(1, running))
        idle = _cpu_idle_share(self.cpu, self._read_cpu())
        self._window(now, received, waited)
        strong = waiting >= _LINK_STRONG
        if not self.warmed:
            # The first window after the connections start receiving sees TCP slow start and the start-up
            # of the whole pull (imports, other files' first bytes): it decides nothing, but connections
            # waiting for the link nearly all the time count as a first vote (the next window confirms).
            self.warmed = True
            self.votes = 1 if strong and not (idle is not None and idle < _CPU_IDLE_MIN) else 0
            return
        helped = self.prev is None or rate > _RAMP_GAIN * self.prev
        # Each connection kept its rate through the last step, waiting for the link nearly all the time: a
        # per-connection cap, straight to the cap. Not with ``waiting >= _LINK_BOUND`` alone: that reached 16
        # connections one window sooner (0.1 s less for 512 MiB at 50 MB/s per connection) while this
        # 2-core machine was still busy with the pull's start-up, the server's send buffers filled, and a
        # SIGKILL then lost 12-18 % of a 256 MiB file instead of 2-3 % in about half the runs (3 of 15
        # before). That trade is not worth it.
        flat = strong and self.prev is not None and rate >= _RAMP_FLAT * _RAMP_STEP * self.prev
        if waiting < _LINK_BOUND or (not flat and idle is not None and idle < _CPU_IDLE_MIN):
            # The link is not the limit now (loopback, LAN, a busy disk, or this process busy hashing a
            # resumed partial), or no CPU is idle (connections then wait for a CPU, not for the link:
            # several files at once, or a server on this machine): more connections would only cost
            # CPU. Look again in a while.
            self.hold_until = now + _RAMP_RECHECK
            self.votes = 0
        elif helped and not flat and self.votes + 1 < _RAMP_VOTES:
            self.votes += 1  # one window may be a passing moment (a disk flush, a GC pause): confirm
        elif helped:
            self.votes = 0
            self.prev = rate
            self.target = self.cap if flat else min(self.cap, self.target * _RAMP_STEP)
            self.frozen = self.target >= self.cap
            self.strikes = 0
        else:
            self.strikes += 1  # one slow interval may be noise; two in a row are the answer
            self.frozen = self.strikes >= 2
        _log.debug(
            "%s: %.0f MB/s over %d connections, waiting for bytes %.0f%% of the time, CPU idle %s; "
            "target %d%s",
            self.name,
            rate / 1e6,
            running,
            100 * waiting,
            "unknown" if idle is None else f"{100 * idle:.0f}%",
            self.target,
            " (final)" if self.frozen else "",
        )

    def _window(self, now: float, received: int, waited: float) -> None:
        """Start a new measuring window."""
        self.t, self.bytes, self.waited = now, received, waited
        self.cpu = self._read_cpu()
        self.open = True
