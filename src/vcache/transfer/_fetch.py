"""One :meth:`Transfer.fetch`: the coordinator of one file's workers, hasher and checkpointer.

:class:`_Fetch` plans the parts (``_parts``), keeps as many worker threads running as the ramp-up asks
(``_ramp``), lets each worker fetch parts with its own retry budget, hashes in the calling thread
(``_hashing``), and records progress (``_checkpoint``). Every request goes through ``_http``.

* **Workers**: each holds one connection slot and one buffer, and takes parts until none is left. Extra
  connections give their slot back at a part boundary whenever another fetch of the Transfer is waiting
  for its first one.
* **Retries**: each part has its own :class:`~vcache.retry.RetryPolicy` budget, reset whenever that part
  makes progress. 429 / 503 ``Retry-After`` closes the Transfer's gate (``_gate``). Over all of them, one
  :class:`~vcache.retry.ProgressWatch` (shared with the pull's Hub calls) gives up once no byte has arrived
  anywhere for its budget, however many parts, connections or queued files wait.
* **Restart from zero**: a 200 answer to a ranged request (or a whole body of another length) restarts the
  file from byte zero on that very response, as one part over one connection, so no byte of another
  answer is ever mixed in. An identity change discards the partial.
* **Bounded waits**: connect, read (first byte) and stall (no byte for ``stall_timeout``) timeouts are
  socket timeouts, each cut to what is left of the watch's budget; every retry is budgeted; every sleep
  uses the injected clock.

Locking: ``state.cv`` guards the state shared with the hasher and checkpointer (``_state``), the part table
and the counters below. This module never decides whether bytes are *right*, and never writes into
``blobs/`` or ``snapshots/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from vcache.connections import Connection as _Conn
from vcache.errors import RemoteChanged, RetriesExhausted, TransferError
from vcache.hub import host_of as _host_of
from vcache.partial import Partial, RangeSet
from vcache.retry import RetryEvent, RetryPolicy, exhausted
from vcache.transfer._checkpoint import _Checkpointer
from vcache.transfer._disk import _disk_error, _pwrite_all
from vcache.transfer._gate import _pause
from vcache.transfer._hashing import _Frontier
from vcache.transfer._http import _Body, _receive, _Requests, _Retry
from vcache.transfer._parts import _ALIGN, _Part, _Parts, _plan
from vcache.transfer._ramp import _RAMP_INTERVAL, _Ramp
from vcache.transfer._shared import _Shared
from vcache.transfer._state import _Cancelled, _State
from vcache.transfer._values import ByteObserver, FetchResult, FetchSpec

_log = logging.getLogger(__name__)


class _Fetch:
    """The state of one :meth:`Transfer.fetch`: parts, workers, the hasher and the checkpointer."""

    def __init__(
        self,
        shared: _Shared,
        spec: FetchSpec,
        partial: Partial,
        on_progress: Callable[[int], None] | None,
        observer: ByteObserver | None = None,
    ) -> None:
        self.shared = shared
        self.spec = spec
        self.partial = partial
        self.fd = partial.fd
        self.on_progress = on_progress
        self.state = _State(spec.size, partial.completed.copy(), partial.durable.copy())
        self.resumed_from = self.state.done.total
        self.frontier = _Frontier(
            self.state, spec.expected.algorithm, observer, shared.slots.crowded, spec.path
        )
        self.http = _Requests(shared, spec)
        self.checkpointer = _Checkpointer(self.state, partial, spec.size, spec.path, self._fail)
        self.cancel = threading.Event()  # set together with ``state.error``: interrupts waits and sleeps
        # Under state.cv:
        self.inflight = 0  # writes under way (a restart waits for them before it truncates)
        self.received = 0
        self.waited = 0.0  # seconds workers spent waiting for body bytes (summed over workers)
        self.last_byte_at = time.monotonic()
        self.events: list[RetryEvent] = []
        self.running = 0
        self.warm = 0  # running workers that have received body bytes
        self.local = threading.local()
        self.threads: list[threading.Thread] = []
        plan = _plan(
            spec.size,
            min_multipart_size=shared.min_multipart_size,
            connections_per_file=shared.connections_per_file,
            max_connections=shared.max_connections,
            part_size=shared.part_size,
        )
        self.parts = _Parts(self.state.done.missing(spec.size), plan, shared.buffer_size)
        self.ramp = _Ramp(plan.cap, plan.adaptive, name=spec.path)

    # -- the calling thread: start workers, hash, supervise ------------------------------------------

    def run(self) -> FetchResult:
        st = self.state
        try:
            if self.resumed_from and self.on_progress:
                self.on_progress(self.resumed_from)
            if self.parts.queue:
                self._acquire_first_slot()
                self._spawn()
                self.checkpointer.start()
            actual = self.frontier.hash_until_complete(self.fd, self._supervise, _RAMP_INTERVAL / 2)
            hashed_at = time.monotonic()
            # Every byte is in, but a worker may still be checking that its body really ended there (and
            # find it did not): wait for all of them, which their socket timeouts bound, and look again.
            self._join_workers(timeout=None)
            if st.error is not None:
                raise st.error
            self.checkpointer.stop()
            try:
                if os.fstat(self.fd).st_size > st.size:
                    os.ftruncate(self.fd, st.size)  # never publish stray bytes past the end
                os.fsync(self.fd)
            except OSError as exc:
                raise _disk_error(exc, self.spec.path, self.partial.partial_dir) from exc
            _log.debug(
                "%s: last byte %.2f s before the digest (%.0f%% hashed as it arrived, %.0f%% from handed "
                "buffers), fsync took %.2f s",
                self.spec.path,
                hashed_at - self.last_byte_at,
                100 * self.frontier.hashed_inline / max(1, st.size),
                100 * self.frontier.hashed_handed / max(1, st.size),
                time.monotonic() - hashed_at,
            )
            self.checkpointer.complete(st.size)
            if not self.partial.is_ours():
                raise TransferError(
                    f"{self.spec.path}: another process adopted this partial while this one was paused; "
                    "fetch again",
                    path=self.spec.path,
                )
        except BaseException as exc:
            self._abandon(exc)
            raise
        self.partial.close()
        return FetchResult(
            data_path=self.partial.data_path,
            actual=actual,
            size=st.size,
            bytes_transferred=self.received,
            attempts=self.http.requests,
            resumed_from=self.resumed_from,
            sidecar_path=self.partial.sidecar_path,
            retries=tuple(self.events),
        )

    def _supervise(self) -> None:
        """Under ``cv``: ramp up, top up workers, and notice when every worker is gone too early."""
        st = self.state
        if not self.parts.single:
            self.ramp.observe(self.running, self.warm, self.received, self.waited)
        if self.running < self.ramp.target and self.parts.work_left():
            self._spawn_locked()
        if (
            st.error is None
            and self.running == 0
            and st.done.prefix() < st.size
            and not self.parts.work_left()
        ):
            st.error = TransferError(
                f"{self.spec.path}: every connection stopped with bytes still missing", path=self.spec.path
            )

    def _acquire_first_slot(self) -> None:
        self.shared.slots.acquire_first()
        with self.state.cv:
            self._start_worker()

    def _spawn(self) -> None:
        with self.state.cv:
            self._spawn_locked()

    def _spawn_locked(self) -> None:
        slots = self.shared.slots
        if slots.first_waiters and self.threads:
            return  # another fetch is waiting for its first connection: it goes first
        while self.running < self.ramp.target and self.parts.work_left() and slots.try_acquire():
            self._start_worker()

    def _start_worker(self) -> None:
        self.running += 1
        # Extra connections exist because each one is slow (a capped CDN): a sixteenth of the buffer fills
        # just as well there (in ~5 ms at 50 MB/s), keeps 16 connections from holding 64 MiB, and bounds
        # what a kill loses from the buffers to a few MiB.
        extra = bool(self.threads)
        size = max(_ALIGN, self.shared.buffer_size // 16) if extra else self.shared.buffer_size
        size = min(size, max(_ALIGN, self.spec.size))  # a small file needs no 4 MiB buffer
        t = threading.Thread(
            target=self._work, args=(size, extra), name=f"vcache-fetch-{len(self.threads)}", daemon=True
        )
        self.threads.append(t)
        t.start()

    def _join_workers(self, timeout: float | None = 5.0) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self.threads):
            if t is not threading.current_thread():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _abandon(self, exc: BaseException) -> None:
        """Stop every worker; keep what is complete (or discard it all when the remote changed)."""
        self._fail(exc)
        self._join_workers()
        self.checkpointer.stop()
        if isinstance(self.state.error, RemoteChanged) or isinstance(exc, RemoteChanged):
            self.partial.remove()
            return
        try:
            self.checkpointer.checkpoint(sync=True, force=True)
        except Exception:
            # fdatasync failed (ENOSPC surfaces there with delayed allocation): still record the ranges,
            # which a crash-free resume can use; after a power cut the final digest check catches them.
            with contextlib.suppress(Exception):
                self.checkpointer.checkpoint(sync=False, force=True)
        self.partial.close()

    def _fail(self, exc: BaseException) -> None:
        """Stop the whole fetch with ``exc``: wake sleepers and blocked reads in every worker."""
        st = self.state
        with st.cv:
            if st.error is None:
                st.error = exc
            st.cv.notify_all()
        self.cancel.set()
        self.http.shutdown_all()

    # -- worker threads ---------------------------------------------------------------------------------

    def _work(self, buffer_size: int, extra: bool) -> None:
        # The worker's receive buffer; a hand-off to the hasher (see _write) swaps it for a spare.
        self.local.buf = memoryview(bytearray(buffer_size))
        try:
            while (part := self._next_part()) is not None:
                self._run_part(part)
                if extra and self.shared.slots.first_waiters:
                    break  # hand this connection to a fetch that has none
        except _Cancelled:
            pass
        except BaseException as exc:
            self._fail(exc)
        finally:
            with self.state.cv:
                self.running -= 1
                if getattr(self.local, "warm", False):
                    self.warm -= 1
                self.state.cv.notify_all()
            self.shared.slots.release()

    def _next_part(self) -> _Part | None:
        with self.state.cv:
            if self.state.error is not None:
                return None
            return self.parts.take(self.state.generation)

    def _run_part(self, part: _Part) -> None:
        st = self.state
        policy = self.shared.policy
        watch = self.shared.watch
        cdn_refusals = 0
        while True:
            with st.cv:
                if st.error is not None or part.generation != st.generation:
                    raise _Cancelled
                if part.pos >= part.end:
                    self.parts.finish(part)
                    return
            self.shared.gate.wait(self.cancel)
            watch.check(self.spec.path, path=self.spec.path)
            try:
                self._attempt(part)
                cdn_refusals = 0
            except _Retry as failure:
                if part.pos > part.hwm:
                    part.hwm, policy, cdn_refusals = part.pos, policy.reset(), 0
                watch.failed(self._host(), self.spec.path, failure.cause)
                if failure.cdn_refusal:
                    cdn_refusals += 1
                    if cdn_refusals > 1:
                        raise self.http.cdn_refused(failure) from None
                policy = self._count(policy, failure)
                delay = policy.backoff()
                _log.info("%s: %s; retrying in %.1f s", self.spec.path, failure.cause, delay)
                if failure.status == 429 or failure.retry_after is not None:
                    watch.respite(delay)  # the server answered, asking for this wait
                    self.shared.gate.close_for(delay)  # everyone waits, not just this connection
                else:
                    self._sleep(watch.pause(delay))
                watch.tick()
                continue
            if part.pos > part.hwm:
                part.hwm, policy = part.pos, policy.reset()

    def _host(self) -> str:
        """The server body requests go to now (the CDN after a redirect)."""
        return _host_of(self.http.location or self.spec.url)

    def _count(self, policy: RetryPolicy, failure: _Retry) -> RetryPolicy:
        """The policy after one more failure, or the error that ends the fetch when the budget is spent."""
        with self.state.cv:
            self.events.append(RetryEvent(failure.cause, failure.status, failure.retry_after))
        try:
            return policy.increment(
                status=failure.status, retry_after=failure.retry_after, cause=failure.cause
            )
        except RetriesExhausted as exc:
            raise exhausted(self.spec.path, exc, server=self._host(), path=self.spec.path) from None

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and not self.cancel.is_set():
            _pause(self.shared.clock, seconds, self.cancel)

    # -- one attempt: request, read, write --------------------------------------------------------------

    def _attempt(self, part: _Part) -> None:
        with self.state.cv:
            # The part's own generation, never the fetch's: a part from before a restart must not start
            # committing under the new one.
            generation, start, end = part.generation, part.pos, part.end
            if generation != self.state.generation:
                raise _Cancelled
            if start >= end:
                return
        ranged = not (start == 0 and end >= self.spec.size)
        body = self.http.open(start, end, ranged)
        conn = body.conn
        reusable = False
        try:
            if body.whole and (ranged or body.length not in (None, self.spec.size)):
                # The server ignores ranges (or sends another length): restart the file from byte zero on
                # this very response, so no byte of another answer is ever mixed in.
                new_size = body.length if body.length is not None else self.spec.size
                self._restart_from_zero(part, generation, new_size, keep=conn, ignored_range=ranged)
                generation = part.generation
                start = 0
            reusable = self._read_body(part, generation, body, start)
        finally:
            self.http.finish(conn, reusable)

    def _read_body(self, part: _Part, generation: int, body: _Body, start: int) -> bool:
        """Read the body into the file; True when the response was consumed to its end."""
        st = self.state
        conn, resp = body.conn, body.resp
        stall = self.shared.watch.timeout(self.shared.stall_timeout)
        conn.settimeout(stall)
        pos = start
        open_ended = body.whole and body.length is None  # chunked, or delimited by the connection's end
        stop = self.spec.size if open_ended else body.stop
        while pos < stop:
            with st.cv:
                if st.error is not None or generation != st.generation:
                    raise _Cancelled
                limit = min(stop, part.end)
            if pos >= limit:
                return False  # the rest of this part was stolen: drop the connection, not the bytes
            began = time.monotonic()
            buf = self.local.buf
            n, failure, arrived = _receive(resp, buf[: min(len(buf), limit - pos)], pos, stall)
            now = time.monotonic()
            if n:  # keep what arrived, even before a failure
                self._write(part, generation, buf, n, pos, now - began, now - arrived)
                pos += n
                if self.running > 1:  # each of several connections needs only a share of the window
                    conn.note_backlog()
            if failure is not None:
                raise failure
            if n == 0:
                if open_ended:
                    self._resize(part, generation, pos)  # a complete body, shorter than planned
                    return True
                raise _Retry(
                    f"body ended at byte {pos:,} of {stop:,} (connection closed before Content-Length)"
                )
        if open_ended:
            return self.http.expect_end(resp, self.local.buf, stall)
        resp.close()  # read exactly to its Content-Length: the connection is ready for the next request
        return pos >= body.stop

    def _write(
        self,
        part: _Part,
        generation: int,
        buf: memoryview,
        n: int,
        pos: int,
        waited: float,
        late: float = 0.0,
    ) -> None:
        """pwrite ``buf[:n]`` at ``pos`` and record it complete (unless a restart or a thief got there first).

        ``waited`` is how long the bytes took to arrive, for the ramp-up's link-bound test; ``late`` is how
        long ago the last of them arrived (the give-up budget counts from then, not from this write). Once
        committed, the buffer may go to the hasher (``_Frontier.hand_off``), and the worker's next reads go
        into the spare it gets back.
        """
        st = self.state
        view = buf[:n]
        with st.cv:
            if st.error is not None or generation != st.generation:
                raise _Cancelled
            self.inflight += 1
        committed = 0
        try:
            _pwrite_all(self.fd, view, pos)
        except OSError as exc:
            with st.cv:
                self.inflight -= 1
                st.cv.notify_all()
            raise _disk_error(exc, self.spec.path, self.partial.partial_dir) from exc
        self.frontier.inline(generation, view, pos)
        with st.cv:
            self.inflight -= 1
            self.received += len(view)
            self.waited += waited
            self.last_byte_at = time.monotonic()
            if not getattr(self.local, "warm", False):
                self.local.warm = True
                self.warm += 1
            if generation == st.generation:
                # A thief may have taken the tail of this part meanwhile: record only what is still ours.
                hi = min(pos + len(view), part.end)
                if hi > pos:
                    st.done.add(pos, hi)
                    part.pos = max(part.pos, hi)
                    committed = hi - pos
                if committed == n:  # all of it is the file's bytes now: the hasher may take the buffer
                    self.local.buf = self.frontier.hand_off(generation, buf, n, pos)
            st.cv.notify_all()
        self.shared.watch.progress(ago=late)
        if committed and self.on_progress is not None:
            self.on_progress(committed)

    def _restart_from_zero(
        self, part: _Part, generation: int, new_size: int, keep: _Conn, ignored_range: bool
    ) -> None:
        st = self.state
        with st.cv:
            if st.error is not None or generation != st.generation:
                raise _Cancelled
            st.generation += 1
            lost = st.done.total
            st.done = RangeSet()
            st.durable = RangeSet()
            self.parts.restart(part)
            st.size = new_size
            part.start = part.pos = 0
            part.end = new_size
            part.hwm = max(part.hwm, lost)  # the budget resets only once it gets further than before
            part.generation = st.generation
            others = self.http.others(keep)
            while self.inflight:
                st.cv.wait()
            st.cv.notify_all()
        for conn in others:
            conn.shutdown()
        if ignored_range:
            _log.info("%s: the server ignored a range request; restarting from byte 0", self.spec.path)
        else:
            _log.info("%s: the server sent %d bytes, not %d", self.spec.path, new_size, self.spec.size)
        self.checkpointer.restarted(new_size)
        with self.frontier.lock:
            try:
                self.partial.truncate()
            except OSError as exc:
                raise _disk_error(exc, self.spec.path, self.partial.partial_dir) from exc
            self.frontier.reset()  # before the new body's first buffer, so that buffer can be handed over
        if lost and self.on_progress is not None:
            self.on_progress(-lost)

    def _resize(self, part: _Part, generation: int, new_size: int) -> None:
        with self.state.cv:
            if generation != self.state.generation:
                raise _Cancelled
            self.state.size = new_size
            part.end = new_size
            self.state.cv.notify_all()
