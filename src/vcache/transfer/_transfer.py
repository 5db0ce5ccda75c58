"""The Transfer: one per pull, the owner of everything its fetches share.

:class:`Transfer` holds the HTTP machinery of one pull (a keep-alive connection pool per origin, :mod:`vcache.connections`),
the Transfer-wide connection cap (``_shared._Slots``) and the shared rate-limit gate (``_gate``), and hands
them to each :meth:`Transfer.fetch` explicitly as one :class:`~vcache.transfer._shared._Shared` value.
:meth:`Transfer.fetch` opens (or adopts) the file's partial, checks the free space, and runs one
:class:`~vcache.transfer._fetch._Fetch`.

This module never reads a body or hashes a byte, and never writes into ``blobs/`` or ``snapshots/``.
"""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path

from vcache._version import __version__
from vcache.connections import Pool as _Pool
from vcache.errors import DiskFull, TransferError
from vcache.hub import host_of as _host_of
from vcache.hub import origin_of as _origin_of
from vcache.partial import DEFAULT_STALE_AFTER, PartialMeta, open_partial, remove_partial
from vcache.retry import SYSTEM_CLOCK, Clock, ProgressWatch, RetryPolicy
from vcache.transfer._fetch import _Fetch
from vcache.transfer._gate import _Gate
from vcache.transfer._shared import _Shared, _Slots
from vcache.transfer._values import ByteObserver, FetchResult, FetchSpec

MiB = 1 << 20
#: Read buffer of a file's first connection (extra ones get a sixteenth). Each fill is one inline hash and
#: scan step and one commit (written in ``_WRITE_PIECE`` pieces). Measured on the 2-core VM (4 x 256 MiB
#: unthrottled, 3 runs each): 1 MiB 1.51-1.52 s, 2 MiB 1.50-1.51 s, 4 MiB 1.44-1.51 s.
BUFFER_SIZE = 4 * MiB


class Transfer:
    """One per pull: owns the HTTP machinery, the global connection cap and the shared rate-limit gate.

    Thread-safe: several files may be fetched at once from different threads. Parameters:

    * ``endpoint`` / ``token``: the Hub origin and the token sent to it (and only to it).
    * ``policy``: the retry budget of each part; ``clock``: time for backoff and the rate-limit gate.
    * ``watch``: the give-up budget over every fetch of this Transfer (pass the pull's, shared with its Hub
      calls); by default one of :data:`~vcache.retry.DEFAULT_GIVE_UP` seconds on ``clock``.
    * ``connect_timeout``, ``read_timeout`` (until the response headers), ``stall_timeout`` (no body byte).
    * ``max_connections``: cap over all files; ``connections_per_file``: ``None`` ramps up to 16 while it
      pays off, a number uses exactly that many from the start; ``part_size``: ``None`` picks 16-64 MiB.
    * ``min_multipart_size``: smaller files use one request.
    * ``stale_after``: a partial untouched this long may be adopted by this process.
    * ``check_free_space``: refuse to start (:class:`~vcache.errors.DiskFull`) without room for the file.
    * ``trust_env``: honour ``HTTP(S)_PROXY`` / ``NO_PROXY`` (never for loopback).

    :class:`vcache.config.TransferSettings` holds these knobs (all but ``endpoint`` and ``token``) as one
    typed value, resolved from the environment for a pull.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        token: str | None,
        policy: RetryPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        watch: ProgressWatch | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        stall_timeout: float = 30.0,
        max_connections: int = 16,
        connections_per_file: int | None = None,
        part_size: int | None = None,
        min_multipart_size: int = 64 * MiB,
        user_agent: str | None = None,
        check_free_space: bool = True,
        stale_after: float = DEFAULT_STALE_AFTER,
        buffer_size: int = BUFFER_SIZE,
        trust_env: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if connections_per_file is not None and connections_per_file < 1:
            raise ValueError("connections_per_file must be >= 1 or None")
        if part_size is not None and part_size < 1:
            raise ValueError("part_size must be >= 1 or None")
        if min(connect_timeout, read_timeout, stall_timeout) <= 0:
            raise ValueError("timeouts must be > 0")
        self.endpoint = endpoint.rstrip("/")
        hub_origin = _origin_of(self.endpoint)
        self._token = token or None
        self.policy = policy if policy is not None else RetryPolicy()
        self.clock = clock
        self.watch = watch if watch is not None else ProgressWatch(clock=clock)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.stall_timeout = stall_timeout
        self.max_connections = max_connections
        self.connections_per_file = connections_per_file
        self.part_size = part_size
        self.min_multipart_size = min_multipart_size
        self.user_agent = user_agent or f"vcache/{__version__}"
        self.check_free_space = check_free_space
        self.stale_after = stale_after
        self.buffer_size = max(64 * 1024, buffer_size)
        self._slots = _Slots(max_connections, os.cpu_count() or 1)
        self._pool = _Pool(connect_timeout, ssl_context, trust_env, max_idle=max_connections)
        self._shared = _Shared(
            hub_origin=hub_origin,
            token=self._token,
            user_agent=self.user_agent,
            policy=self.policy,
            clock=clock,
            watch=self.watch,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            stall_timeout=stall_timeout,
            max_connections=max_connections,
            connections_per_file=connections_per_file,
            part_size=part_size,
            min_multipart_size=min_multipart_size,
            buffer_size=self.buffer_size,
            pool=self._pool,
            gate=_Gate(clock),
            slots=self._slots,
        )

    def __repr__(self) -> str:  # never show the token
        return f"Transfer(endpoint={self.endpoint!r}, token={'***' if self._token else None})"

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _cpus(self) -> int:
        """The CPU count the inline-hashing choice compares running fetches with (tests lower it)."""
        return self._slots.cpus

    @_cpus.setter
    def _cpus(self, value: int) -> None:
        self._slots.cpus = value

    def close(self) -> None:
        """Close every idle connection; the Transfer cannot be used afterwards."""
        self._pool.close()

    def discard(self, result_or_partial_path: FetchResult | str | os.PathLike[str]) -> None:
        """Delete a partial (data file and sidecar): after a rejected result, or to tidy up after publishing."""
        if isinstance(result_or_partial_path, FetchResult):
            remove_partial(result_or_partial_path.data_path)
        else:
            remove_partial(result_or_partial_path)

    def fetch(
        self,
        spec: FetchSpec,
        partial_dir: str | os.PathLike[str],
        *,
        fresh: bool = False,
        on_progress: Callable[[int], None] | None = None,
        observer: ByteObserver | None = None,
    ) -> FetchResult:
        """Download ``spec`` into a partial in ``partial_dir``, resuming what an earlier attempt left.

        ``fresh=True`` ignores earlier partials (after a digest mismatch the bytes on disk are suspect).
        ``on_progress(delta)`` is called from worker threads with the number of newly completed bytes (the
        bytes reused from an earlier partial first; negative when a restart from zero drops bytes).
        ``observer`` sees every byte of the file in order, from the hasher's own buffers (the bytes on
        disk, read once for the digest), so a content check needs no second pass.

        Raises :class:`~vcache.errors.RemoteChanged` (partial discarded), :class:`~vcache.errors.HubError`
        subclasses for refusals, :class:`~vcache.errors.RateLimited` /
        :class:`~vcache.errors.RetriesExhausted` when the budget is spent, :class:`~vcache.errors.DiskFull`
        / :class:`~vcache.errors.CacheNotWritable` for disk trouble (partial kept, resumable).
        """
        if spec.size < 0:
            raise ValueError("spec.size must be >= 0")
        try:
            _origin_of(spec.url)
        except ValueError as exc:
            raise TransferError(f"{spec.path}: {exc}", path=spec.path) from None
        meta = PartialMeta(spec.etag, spec.size, spec.expected, spec.commit, spec.path)
        partial = open_partial(partial_dir, meta, fresh=fresh, stale_after=self.stale_after)
        try:
            if self.check_free_space:
                self._check_space(spec, Path(partial_dir), spec.size - partial.completed.total)
        except BaseException:
            if partial.adopted_from is None:
                partial.remove()  # nothing worth keeping was in it
            else:
                partial.close()
            raise
        self._slots.started()
        try:
            # Waiting for a connection slot counts too: files queued behind a dead server's fetches do not
            # each start a budget of their own.
            with self.watch.waiting(_host_of(spec.url), spec.path):
                return _Fetch(self._shared, spec, partial, on_progress, observer).run()
        finally:
            self._slots.stopped()

    def _check_space(self, spec: FetchSpec, partial_dir: Path, missing: int) -> None:
        if missing <= 0:
            return
        try:
            free = shutil.disk_usage(partial_dir).free
        except OSError:
            return  # cannot tell: let the writes decide
        if free < missing:
            raise DiskFull(
                f"{spec.path}: needs {missing:,} more bytes in {partial_dir}, but only {free:,} are free",
                path=spec.path,
                needed=missing,
                free=free,
            )
