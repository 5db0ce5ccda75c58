"""The syncer of a fetch: bytes reach the disk while the file downloads, not all at the end."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from vcache.hashing import Digest
from vcache.partial import PartialMeta, RangeSet, open_partial
from vcache.transfer import _checkpoint
from vcache.transfer._checkpoint import _Checkpointer
from vcache.transfer._state import _State

ETAG = "e" * 64
SIZE = 8 * (1 << 20)


def test_the_syncer_syncs_as_soon_as_enough_bytes_are_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old behaviour: one fdatasync a second, so a file that downloads in 0.5 s was synced only by the
    fsync before publishing (0.18-0.20 s for 512 MiB after its last byte). Now the syncer follows the bytes."""
    monkeypatch.setattr(_checkpoint, "_SYNC_BYTES", 1 << 20)
    # The once-a-second sync pushed far away: any sync seen here is the byte trigger's.
    monkeypatch.setattr(_checkpoint, "_SYNC_INTERVAL", 3600.0)
    synced: list[int] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(_checkpoint.os, "fdatasync", spy)
    meta = PartialMeta(ETAG, SIZE, Digest("sha256", ETAG), "c" * 40, "model.safetensors")
    partial = open_partial(tmp_path, meta, stale_after=30)
    state = _State(SIZE, RangeSet(), RangeSet())
    failures: list[BaseException] = []
    checkpointer = _Checkpointer(state, partial, SIZE, "model.safetensors", failures.append)
    checkpointer.start()
    try:
        started = time.monotonic()
        os.pwrite(partial.fd, b"\1" * (2 << 20), 0)
        with state.cv:
            state.done.add(0, 2 << 20)
        deadline = started + 30  # generous: a loaded machine may schedule the syncer late
        while not synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert synced, "no fdatasync after 2 MiB completed (the threshold is 1 MiB)"
        # The sidecar then records those bytes as durable: they survive a reboot.
        while time.monotonic() < deadline + 1:
            doc = json.loads(partial.sidecar_path.read_text())
            if doc.get("durable") == [[0, 2 << 20]]:
                break
            time.sleep(0.01)
        assert doc.get("durable") == [[0, 2 << 20]], doc
        # Below the threshold, nothing more is synced until the interval passes.
        count = len(synced)
        with state.cv:
            state.done.add(2 << 20, (2 << 20) + 1000)
        time.sleep(0.2)
        assert len(synced) == count
    finally:
        checkpointer.stop()
        partial.close()
    assert not failures
