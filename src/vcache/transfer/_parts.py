"""The part table of one fetch: how a file is cut into byte ranges, who fetches which, and work stealing.

Files of at least ``min_multipart_size`` are cut into parts fetched over several connections with
``Range`` (about two per connection, each 16-64 MiB); smaller ones, and every file fetched over one
connection, are one part per missing range. Parts are handed out lowest first, so the digest is ready
moments after the last byte (measured: 0.0-0.1 s unthrottled, at most ~0.5 s with 16 capped connections).
An idle connection steals the upper half of the largest unfinished part, so there is no slow tail. After a
restart from zero the table holds a single part and nothing is stolen.

The table is plain data guarded by the fetch's lock (``_State.cv``): every method expects the caller to
hold it. This module does no I/O and never decides how many connections run (that is the ramp-up).
"""

from __future__ import annotations

import collections
from typing import NamedTuple

MiB = 1 << 20
DEFAULT_CONNECTIONS = 16
MIN_PART = 16 * MiB
MAX_PART = 64 * MiB
_ALIGN = 64 * 1024


class _Part:
    """A byte range ``[start, end)`` of the file; ``pos`` is how far its owner got. ``end`` may shrink."""

    __slots__ = ("end", "generation", "hwm", "pos", "start")

    def __init__(self, start: int, end: int, generation: int) -> None:
        self.start = start
        self.pos = start
        self.end = end
        self.hwm = start  # the furthest this part ever got: progress beyond it resets the retry budget
        self.generation = generation


class _Plan(NamedTuple):
    """How one file is fetched: over how many connections, and in parts of what size."""

    cap: int  # connections this file may use
    adaptive: bool  # start with one and ramp up to ``cap`` while it pays
    part_size: int | None  # None: one part per missing range
    steal_min: int  # a thief takes at least this much (0: no stealing)


def _plan(
    size: int,
    *,
    min_multipart_size: int,
    connections_per_file: int | None,
    max_connections: int,
    part_size: int | None,
) -> _Plan:
    """The plan for a file of ``size`` bytes under the Transfer's settings."""
    multipart = size >= min_multipart_size and connections_per_file != 1
    adaptive = multipart and connections_per_file is None
    cap = min(connections_per_file or DEFAULT_CONNECTIONS, max_connections) if multipart else 1
    chosen = part_size or _default_part_size(size, cap)
    steal_min = max(_ALIGN, min(4 * MiB, chosen // 4)) if multipart else 0
    return _Plan(cap, adaptive, chosen if multipart else None, steal_min)


def _plan_parts(missing: list[tuple[int, int]], part_size: int | None) -> list[tuple[int, int]]:
    if part_size is None:
        return missing
    out: list[tuple[int, int]] = []
    for start, end in missing:
        out.extend((s, min(s + part_size, end)) for s in range(start, end, part_size))
    return out


def _default_part_size(size: int, connections: int) -> int:
    """About two parts per connection, each 16-64 MiB.

    Big enough that a request's round trip is small against its transfer time, small enough that the
    hashing lag (at most one part per connection) stays in the page cache; stealing removes the tail.
    """
    return max(MIN_PART, min(MAX_PART, -(-size // (2 * connections))))


class _Parts:
    """Parts not yet started (``queue``, lowest first) and parts being fetched (``active``)."""

    def __init__(self, missing: list[tuple[int, int]], plan: _Plan, buffer_size: int) -> None:
        self.queue: collections.deque[_Part] = collections.deque(
            _Part(s, e, 0) for s, e in _plan_parts(missing, plan.part_size)
        )
        self.active: list[_Part] = []
        self.single = False  # no stealing (after a restart from zero)
        self.steal_min = plan.steal_min
        self.buffer_size = buffer_size  # how far ahead of ``pos`` an owner may already be reading

    def take(self, generation: int) -> _Part | None:
        """The next part to fetch for ``generation``: the lowest queued one, else half of another's."""
        if self.queue:
            part = self.queue.popleft()
            part.generation = generation
            self.active.append(part)
            return part
        if self.single:
            return None
        # Nothing queued: take the upper half of the largest unfinished part (no slow tail).
        victim = max(
            (p for p in self.active if p.generation == generation),
            key=lambda p: p.end - p.pos,
            default=None,
        )
        if victim is None:
            return None
        # The owner may already be reading one buffer ahead: split only what lies beyond that.
        reserved = victim.pos + self.buffer_size
        if victim.end - reserved < 2 * self.steal_min:
            return None
        mid = reserved + (victim.end - reserved) // 2
        mid -= mid % _ALIGN
        if mid <= reserved:
            return None
        part = _Part(mid, victim.end, generation)
        victim.end = mid
        self.active.append(part)
        return part

    def work_left(self) -> bool:
        """Whether another connection would find something to fetch (queued, or worth stealing)."""
        if self.queue:
            return True
        if self.single:
            return False
        return any(p.end - p.pos - self.buffer_size >= 2 * self.steal_min for p in self.active)

    def finish(self, part: _Part) -> None:
        """``part`` is complete."""
        self.active.remove(part)

    def restart(self, part: _Part) -> None:
        """Everything is fetched again from byte zero, as ``part`` alone, over one connection."""
        self.queue.clear()
        self.active = [part]
        self.single = True
