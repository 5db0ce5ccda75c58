"""The hashing frontier of one fetch: the digest, advanced over the contiguous prefix of completed bytes.

* **Read back**: the fetch's calling thread hashes the prefix of completed bytes, read back with ``pread``
  while it is still in the page cache: receiving and writing on one core, hashing on another pipeline well
  (one 1 GiB file unthrottled: 1.57-1.61 s against 1.9-2.2 s hashed in the receiving thread), and the same
  code re-hashes a resumed prefix and follows parts that complete out of order.
* **Hand-off**: a worker that has just committed bytes at or past the digest's position may hand its
  buffer to the hashing thread and receive into a spare (at most ``_SPARES`` per fetch), so those bytes are
  hashed and scanned from memory instead of read back: the ``pread`` copy (0.10-0.15 CPU-s per 512 MiB) was
  a third of the hashing thread's work, the pipeline's slower half. Bytes nobody handed over (no spare
  free, out of order) are read back as before.
* **Inline**: when at least as many files are being fetched as there are CPUs, the other files keep the
  CPUs busy, and a worker whose bytes are the next to hash hashes them from its buffer instead (no
  read-back; see :meth:`_Frontier.inline`).
* **Observer**: a :class:`~vcache.transfer.ByteObserver` (the content scan) sees the same bytes, in order,
  either way, and is reset whenever the digest starts over.
* **Restart**: the digest is keyed by the file's generation and size; when either changes (a restart from
  zero), it starts again from byte 0.

This is the one place a download's bytes are hashed. It never decides whether the digest is *right* (the
caller of :meth:`Transfer.fetch` compares it), never writes, and never waits for a worker.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from vcache.errors import TransferError
from vcache.hashing import Algorithm, Digest, StreamHasher, hash_stream_into
from vcache.transfer._state import _State
from vcache.transfer._values import ByteObserver

#: How much the hasher reads per step (it re-checks for restarts and new work between steps).
HASH_STEP = 8 * (1 << 20)
#: Spare receive buffers per fetch, swapped for the buffers workers hand to the hasher.
_SPARES = 2


class _Handed:
    """A worker's buffer given to the hasher: ``buf[:n]`` are the committed bytes at ``pos`` (always of the
    generation the digest is for: :meth:`_Frontier.reset` empties the list whenever that changes)."""

    __slots__ = ("buf", "n", "pos")

    def __init__(self, pos: int, buf: memoryview, n: int) -> None:
        self.pos = pos
        self.buf = buf
        self.n = n

    @property
    def end(self) -> int:
        return self.pos + self.n


class _Frontier:
    """The digest of one fetch and how far it got; ``lock`` guards it (and the file's truncation)."""

    def __init__(
        self,
        state: _State,
        algorithm: Algorithm,
        observer: ByteObserver | None,
        crowded: Callable[[], bool],
        path: str,
    ) -> None:
        self.state = state
        self.lock = threading.Lock()
        self.algorithm = algorithm
        self.observer = observer
        self.crowded = crowded  # whether other fetches keep the CPUs busy (then workers hash inline)
        self.path = path  # for messages
        # Which generation and size the digest is for, and how far it got.
        self.key = (0, state.size)
        self.hasher = StreamHasher(algorithm, state.size)
        self.hashed = 0
        self.hashed_inline = 0  # bytes hashed from the workers' buffers (the rest was read back)
        # Buffers handed to the hasher, by increasing ``pos``, and the spares; ``handoff_lock`` guards both
        # (taken after ``lock`` and after the fetch's ``state.cv`` whenever those are held too).
        self.handoff_lock = threading.Lock()
        self.handed: deque[_Handed] = deque()
        self.spares: list[memoryview] = []
        self.spares_made = 0  # spares alive (in ``spares`` or given to a worker for one handed over)
        self.hashed_handed = 0  # bytes hashed from handed buffers
        if observer is not None:
            observer.reset()

    def hash_until_complete(self, fd: int, supervise: Callable[[], None], every: float) -> Digest:
        """Hash what the workers did not hash inline (out-of-order parts, a resumed prefix), in order.

        ``supervise`` runs under the fetch's lock between steps, and at least every ``every`` seconds while
        waiting for bytes.
        """
        state = self.state
        # No bigger than the file (a small file's read-back buffer was 8 MiB of zeroed, resident memory).
        buffer = bytearray(max(1, min(HASH_STEP, state.size)))
        feed = None if self.observer is None else self.observer.feed
        while True:
            with state.cv:
                supervise()
                while True:
                    if state.error is not None:
                        raise state.error
                    frontier = min(state.done.prefix(), state.size)
                    if self.key != (state.generation, state.size) or frontier > self.hashed:
                        break
                    if self.hashed >= state.size:
                        with self.lock:
                            if self.key == (state.generation, state.size) and self.hashed >= state.size:
                                return self.hasher.digest()
                        continue
                    supervise()
                    state.cv.wait(every)
            with self.lock:
                # A restart truncates the file under this lock, so these bytes are at worst stale (and
                # then dropped when the key changes), never a short read.
                if self.key != (state.generation, state.size):
                    self.reset()
                    continue
                start = self.hashed
                handed = self._handed_at(start)
                if handed is not None:
                    view = handed.buf[start - handed.pos : handed.n]
                    self.hasher.update(view)
                    if feed is not None:
                        feed(start, view)
                    self.hashed = handed.end
                    self.hashed_handed += len(view)
                    self._release(handed)
                    continue
                stop = min(frontier, start + HASH_STEP)
                with self.handoff_lock:
                    if self.handed:
                        stop = min(stop, self.handed[0].pos)  # the bytes from there are in memory
                if stop <= start:
                    continue  # a worker hashed it inline meanwhile
                try:
                    hash_stream_into(fd, self.hasher, start, stop, buffer=buffer, on_chunk=feed)
                except EOFError as exc:
                    raise TransferError(
                        f"{self.path}: the partial file shrank under the download ({exc}); "
                        "another process may be writing it",
                        path=self.path,
                    ) from None
                self.hashed = stop

    def reset(self) -> None:
        """Under ``lock``: hash the current generation of the file from byte 0.

        A restart from zero calls this itself, right after truncating the file: were it left to the hashing
        thread to notice, every buffer the worker committed meanwhile would be of a generation the digest had
        not started yet, and could not be handed over (on a loaded machine, that was a whole small file).
        """
        with self.handoff_lock:
            self.key = (self.state.generation, self.state.size)
            while self.handed:
                self.spares.append(self.handed.popleft().buf)
        self.hasher = StreamHasher(self.algorithm, self.state.size)
        self.hashed = 0
        if self.observer is not None:
            self.observer.reset()

    def hand_off(self, generation: int, buf: memoryview, n: int, pos: int) -> memoryview:
        """Right after a worker committed ``buf[:n]`` at ``pos`` (under the fetch's lock): give the buffer to
        the hasher and return a spare to receive into next, or return ``buf`` itself when that does not pay
        (workers hash inline, the bytes are already hashed or behind another hand-off, no spare is free).

        Only committed bytes may be handed over: they are exactly the file's bytes there, since no other
        connection ever writes a committed range (a thief only takes bytes beyond the owner's buffer).
        """
        if self.crowded() or pos + n <= self.hashed:
            return buf
        with self.handoff_lock:
            if self.key != (generation, self.state.size):
                return buf
            if self.handed and pos < self.handed[-1].end:
                return buf
            spare = next((b for b in self.spares if len(b) == len(buf)), None)
            if spare is not None:
                self.spares.remove(spare)
            elif self.spares_made < _SPARES:
                spare = memoryview(bytearray(len(buf)))
                self.spares_made += 1
            elif self.spares:
                # Only spares of another size (an extra connection's smaller buffers went first): replace
                # one, so the spares follow the buffers being handed over and there are never more than two.
                self.spares.pop()
                spare = memoryview(bytearray(len(buf)))
            else:
                return buf
            self.handed.append(_Handed(pos, buf, n))
            return spare

    def _handed_at(self, start: int) -> _Handed | None:
        """Under ``lock``: the handed buffer holding byte ``start``, after dropping those already hashed."""
        with self.handoff_lock:
            while self.handed:
                head = self.handed[0]
                if head.pos > start:
                    return None  # bytes before it are read back first
                if start < head.end:
                    return head
                self.spares.append(self.handed.popleft().buf)  # hashed meanwhile (inline or read back)
        return None

    def _release(self, handed: _Handed) -> None:
        with self.handoff_lock:
            if self.handed and self.handed[0] is handed:
                self.handed.popleft()
            self.spares.append(handed.buf)

    def inline(self, generation: int, view: memoryview, pos: int) -> None:
        """Hash bytes a worker has just written when they are exactly the next ones to hash.

        The bytes in the worker's buffer are the bytes now in the file's page cache, so the digest need not
        read them back. That pays only while other fetches keep the other CPUs busy: measured on the 2-core
        reference machine, 4 x 256 MiB at once took 1.50-1.59 s inline against 1.57-1.68 s read back (and
        0.3 CPU-s less per GiB), but one 1 GiB file took 1.9-2.2 s inline against 1.57-1.61 s read back,
        where receiving on one core and hashing on the other pipeline. So: inline only while at least as
        many fetches run as there are CPUs. A worker never waits for the lock: if the hasher thread holds
        it, that thread reads the bytes back instead.
        """
        if pos != self.hashed or not self.crowded() or not self.lock.acquire(blocking=False):
            return
        try:
            end = pos + len(view)
            size = self.state.size
            if self.key == (generation, size) and self.hashed == pos and end <= size:
                self.hasher.update(view)
                if self.observer is not None:
                    self.observer.feed(pos, view)
                self.hashed = end
                self.hashed_inline += len(view)
        finally:
            self.lock.release()
