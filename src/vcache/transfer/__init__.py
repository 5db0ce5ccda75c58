"""One file's bytes from the Hub (or its CDN) into a resumable partial on disk, hashed as they arrive.

:class:`Transfer` owns the HTTP machinery of one pull: a keep-alive connection pool per origin
(:mod:`vcache.connections`, shared with the Hub client's transport), the
Transfer-wide connection cap and the shared rate-limit gate. :meth:`Transfer.fetch` moves one file:

* **Bodies** are read with ``readinto1`` into a reused buffer per connection and written with ``os.pwrite``
  of the same memoryview, in 256 KiB pieces: no Python ``bytes`` object per chunk.
* **Hashing** runs in the calling thread over the contiguous prefix of completed bytes, read back while
  still in the page cache, or inline from a worker's buffer when other files keep the CPUs busy; an
  ``observer`` (the content scan) sees the same bytes either way.
* **Parts**: big files are cut into ranges fetched over several connections; an idle connection steals
  half of the largest unfinished part. With ``connections_per_file=None`` the connections ramp up
  (1, 4, 16) only while that pays.
* **Retries**: a budget per part, reset on progress; a 429 closes a gate every connection waits at; one
  give-up budget (shared with the pull's Hub calls) ends a pull whose server has gone quiet.
* **Never two versions**: every answer must be about the planned version of the file; a change discards
  the partial and raises :class:`~vcache.errors.RemoteChanged`.
* **Resumable**: progress is checkpointed every 25 ms, made durable every second.
* **Token**: sent only to the endpoint's own origin (scheme, host, port); never logged, never in errors.

The modules, one concept each (each docstring says what it owns and must never do):

=================  ==========================================================================================
``_transfer``      :class:`Transfer`: the settings, and what every fetch shares
``_fetch``         ``_Fetch``, one file's coordinator: workers, retries per part, restart from zero
``_shared``        what the fetches of one Transfer share, handed to them explicitly; the connection slots
``_state``         what the threads of one fetch share, and the lock that guards it
``_parts``         the part table: planning, handing out, work stealing
``_ramp``          the ramp-up of connections per file (driven by an injected clock and CPU reading)
``_http``          requests, redirects, the token rule, identity and ``Content-Range`` checks, refusals
``_gate``          the rate-limit gate
``_hashing``       the hashing frontier (the one place a download's bytes are hashed)
``_checkpoint``    the checkpointer and syncer threads (progress file, sidecar)
``_disk``          writing into the partial, and what a failed write means
``_values``        the public values :class:`FetchSpec`, :class:`FetchResult`, :class:`ByteObserver`
=================  ==========================================================================================

This package never decides whether bytes are *right* (the caller compares :attr:`FetchResult.actual` with
the expected digest and runs the checks), never writes into ``blobs/`` or ``snapshots/``, and never
retries a refusal (401/403/404) from the Hub.
"""

from vcache.transfer._transfer import Transfer
from vcache.transfer._values import ByteObserver, FetchResult, FetchSpec

__all__ = ["ByteObserver", "FetchResult", "FetchSpec", "Transfer"]
