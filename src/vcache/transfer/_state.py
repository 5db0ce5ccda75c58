"""What the threads of one fetch share, and the lock that guards it.

Workers, the hashing frontier and the checkpointer of one :meth:`Transfer.fetch` all look at the same few
facts: how big the file is now, which *generation* of it is being written, which bytes are complete (and
which of those an ``fdatasync`` covered), and whether the fetch has failed. :class:`_State` holds them, and
``cv`` guards them (and the part table, see ``_parts``).

A restart from zero bumps ``generation``; a worker commits bytes only under ``cv`` and only for the
generation it read them in, and the restart waits for in-flight writes before it truncates the file, so
bytes of an abandoned generation can never be recorded as complete.

This module does no I/O and starts no thread; it decides nothing.
"""

from __future__ import annotations

import threading

from vcache.partial import RangeSet


class _Cancelled(Exception):
    """This worker's part was taken away (restart from zero, or the fetch failed elsewhere)."""


class _State:
    """The facts every thread of one fetch reads; change them only while holding ``cv``."""

    def __init__(self, size: int, done: RangeSet, durable: RangeSet) -> None:
        self.cv = threading.Condition()
        self.size = size  # the expected size, until a whole-body answer of another length says otherwise
        self.generation = 0
        self.done = done  # the completed ranges
        self.durable = durable  # what the last fdatasync covered
        self.error: BaseException | None = None  # set once: the fetch has failed
