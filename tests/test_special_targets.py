"""An output path that is a device or a named pipe is written into, never replaced.

``vcache export -o /dev/null`` (to time an export) and ``vcache quarantine restore ID --to /dev/stdout`` are
natural commands; run as root, a write-to-a-temporary-then-rename would put a regular file where the device
was, for every process on the machine. The tests use a null device and a fifo made in the test's own folder,
never the real ``/dev/null``.
"""

from __future__ import annotations

import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest

import vcache
from vcache.bundle import MANIFEST_NAME, plan_export, write_bundle_file
from vcache.cache import CacheRepo
from vcache.quarantine import quarantine_file, restore
from vcache.testing.hub import HubServer, Repo

REPO = "acme/special"


def _fifo_reader(path: Path) -> tuple[threading.Thread, bytearray]:
    got = bytearray()

    def read() -> None:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                got.extend(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


def _null_device(folder: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    node = folder / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return node


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Path]:
    repo = Repo(REPO)
    repo.commit({"config.json": b'{"model_type": "llama"}\n', "weights.bin": b"\x07" * 10_000})
    cache_dir = tmp_path / "cache"
    with HubServer([repo]) as hub:
        vcache.snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, token=False)
    yield cache_dir


def _written_through(target: Path, write: Callable[[], object]) -> bytes:
    """Run ``write`` into the fifo ``target`` while a reader drains it; the bytes the reader got."""
    reader, got = _fifo_reader(target)
    write()
    reader.join(10)
    assert not reader.is_alive()
    return bytes(got)


def test_export_into_a_device_or_a_fifo_writes_into_it(cache: Path, tmp_path: Path) -> None:
    null = _null_device(tmp_path)
    write_bundle_file(plan_export([REPO], cache_dir=cache), null)
    assert stat.S_ISCHR(os.lstat(null).st_mode)  # still the device
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = _written_through(fifo, lambda: write_bundle_file(plan_export([REPO], cache_dir=cache), fifo))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with tarfile.open(fileobj=BytesIO(data), mode="r|") as tar:
        assert next(iter(tar)).name == MANIFEST_NAME


def test_quarantine_restore_into_a_device_or_a_fifo_writes_into_it(cache: Path, tmp_path: Path) -> None:
    repo = CacheRepo(cache, REPO)
    evidence = repo.root / "evidence.bin"
    evidence.write_bytes(b"quarantined bytes")
    entry = quarantine_file(
        repo,
        evidence,
        path="weights.bin",
        commit=None,
        etag=None,
        expected_digest=None,
        actual_digest=None,
        findings=[],
        source="cache",
    )
    null = _null_device(tmp_path)
    restore(cache, entry.id, to=null)
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert _written_through(fifo, lambda: restore(cache, entry.id, to=fifo)) == b"quarantined bytes"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert entry.data.read_bytes() == b"quarantined bytes"  # the quarantined copy stays


def test_a_lockfile_written_to_a_device_or_a_fifo_is_written_into_it(tmp_path: Path) -> None:
    from vcache.lockfile import Lock

    lock = Lock.parse("version = 1\n")
    null = _null_device(tmp_path)
    lock.write(null)
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert _written_through(fifo, lambda: lock.write(fifo)).decode() == lock.render()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
