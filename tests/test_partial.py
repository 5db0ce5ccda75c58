"""Partials on disk: range bookkeeping, the sidecar, adoption by rename, staleness, and clean restarts."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vcache.partial
from vcache.errors import CacheNotWritable
from vcache.hashing import Digest
from vcache.partial import (
    Partial,
    PartialMeta,
    RangeSet,
    list_partials,
    open_partial,
    remove_partial,
    remove_stale,
)

ETAG = "ab" * 32
META = PartialMeta(ETAG, 1000, Digest("sha256", ETAG), "c" * 40, "model.safetensors")


@contextlib.contextmanager
def clock_shifted(seconds: float) -> Iterator[None]:
    """Make the partial module believe it is ``seconds`` later (negative: earlier) than it is."""
    real = vcache.partial._now
    vcache.partial._now = lambda: time.time() + seconds
    try:
        yield
    finally:
        vcache.partial._now = real


def backdate(directory: Path, age: float = 3600.0) -> None:
    """Set the modification times of a partial directory and its files ``age`` seconds back."""
    past = time.time() - age
    for p in (*directory.iterdir(), directory):
        os.utime(p, (past, past))


def write_partial(
    pdir: Path, ranges: list[tuple[int, int]], meta: PartialMeta = META, age: float = 0.0
) -> Partial:
    """A partial holding byte ``i % 251`` at offset ``i`` over ``ranges``, checkpointed and closed.

    ``age > 0`` makes it look as if its writer died ``age`` seconds ago (dated writer id, sidecar, mtimes).
    """
    with clock_shifted(-age):
        partial = open_partial(pdir, meta, stale_after=math.inf)  # adopt nothing while setting up
        done = RangeSet()
        for start, end in ranges:
            os.pwrite(partial.fd, bytes(i % 251 for i in range(start, end)), start)
            done.add(start, end)
        partial.save(done)
        partial.close()
    if age:
        backdate(partial.path, age)
    return partial


# -- RangeSet -----------------------------------------------------------------------------------------


def test_rangeset_merges_touching_and_overlapping_spans() -> None:
    r = RangeSet()
    r.add(10, 20)
    r.add(30, 40)
    r.add(20, 25)  # touches the first
    r.add(0, 5)
    r.add(35, 50)  # overlaps the last
    r.add(7, 7)  # empty: ignored
    assert r.to_json() == [[0, 5], [10, 25], [30, 50]]
    assert r.total == 5 + 15 + 20 and r.end == 50 and r.prefix() == 5
    assert r.missing(60) == [(5, 10), (25, 30), (50, 60)]
    assert r.covers(12, 24) and not r.covers(24, 31)
    r.add(4, 31)
    assert r.to_json() == [[0, 50]] and r.prefix() == 50


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=30))
def test_rangeset_matches_a_set_of_offsets(spans: list[tuple[int, int]]) -> None:
    r = RangeSet()
    model: set[int] = set()
    for start, length in spans:
        r.add(start, start + length)
        model.update(range(start, start + length))
    covered = {i for s, e in r for i in range(s, e)}
    assert covered == model
    items = list(r)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(items))  # sorted, disjoint, not touching
    assert r.total == len(model)
    gaps = {i for s, e in r.missing(300) for i in range(s, e)}
    assert gaps == set(range(300)) - model


# -- sidecar and adoption ----------------------------------------------------------------------------


def test_sidecar_round_trip_and_adoption(tmp_path: Path) -> None:
    old = write_partial(tmp_path, [(0, 300), (500, 600)], age=3600)
    doc = json.loads(old.sidecar_path.read_text())
    assert doc["etag"] == ETAG and doc["size"] == 1000 and doc["expected"] == str(META.expected)
    assert doc["commit"] == "c" * 40 and doc["path"] == "model.safetensors"
    assert doc["ranges"] == [[0, 300], [500, 600]] and doc["version"] == 1

    adopted = open_partial(tmp_path, META, stale_after=30)
    try:
        assert adopted.adopted_from == old.writer_id and adopted.writer_id != old.writer_id
        assert adopted.completed.to_json() == [[0, 300], [500, 600]]
        assert not old.path.exists() and adopted.data_path.exists()
        assert os.pread(adopted.fd, 300, 0) == bytes(i % 251 for i in range(300))
    finally:
        adopted.close()
    assert [p.writer_id for p in list_partials(tmp_path)] == [adopted.writer_id]


def _progress_partial(pdir: Path, saved: list[tuple[int, int]], noted: list[tuple[int, int]]) -> Partial:
    """A dead writer's partial: ``saved`` in the sidecar (nothing durable), ``noted`` in its progress file."""
    with clock_shifted(-3600):
        partial = open_partial(pdir, META, stale_after=math.inf)
        os.pwrite(partial.fd, bytes(i % 251 for i in range(1000)), 0)
        partial.save(RangeSet(saved), durable=RangeSet(saved[:1]))
        partial.note_progress(RangeSet(noted))
        partial.close()
    backdate(partial.path)
    return partial


def test_progress_file_adds_the_ranges_written_since_the_sidecar(tmp_path: Path) -> None:
    old = _progress_partial(tmp_path, [(0, 100), (500, 600)], [(0, 400), (500, 700)])
    assert json.loads(old.sidecar_path.read_text())["ranges"] == [[0, 100], [500, 600]]
    (info,) = list_partials(tmp_path)
    assert (
        info.completed == 600 and info.ranges is not None and info.ranges.to_json() == [[0, 400], [500, 700]]
    )
    adopted = open_partial(tmp_path, META, stale_after=30)
    try:
        assert adopted.completed.to_json() == [[0, 400], [500, 700]]
        assert adopted.durable.to_json() == [[0, 100]]
        # The adopter's own sidecar now records all of it, under its own writer id.
        doc = json.loads(adopted.sidecar_path.read_text())
        assert doc["ranges"] == [[0, 400], [500, 700]] and doc["writer"] == adopted.writer_id
    finally:
        adopted.close()


@pytest.mark.parametrize("damage", ["torn", "too_deep", "other_writer", "outside", "missing"])
def test_unusable_progress_file_falls_back_to_the_sidecar(tmp_path: Path, damage: str) -> None:
    old = _progress_partial(tmp_path, [(0, 100), (500, 600)], [(0, 400), (500, 700)])
    progress = old.path / vcache.partial.PROGRESS_NAME
    doc = json.loads(progress.read_text())
    if damage == "torn":
        progress.write_bytes(progress.read_bytes()[:25])
    elif damage == "too_deep":  # Python's json raises RecursionError near 1000 levels
        progress.write_text("[" * 990 + "]" * 990)
    elif damage == "other_writer":
        progress.write_text(json.dumps({**doc, "writer": "1-2-dead"}))
    elif damage == "outside":
        progress.write_text(json.dumps({**doc, "ranges": [[0, 5000]]}))
    else:
        progress.unlink()
    backdate(old.path)
    adopted = open_partial(tmp_path, META, stale_after=30)
    try:
        assert adopted.completed.to_json() == [[0, 100], [500, 600]]
    finally:
        adopted.close()


def test_after_a_reboot_only_durable_ranges_are_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _progress_partial(tmp_path, [(0, 100), (500, 600)], [(0, 400), (500, 700)])
    monkeypatch.setattr(vcache.partial, "_BOOT_ID", "another-boot")  # the page cache did not survive
    (info,) = list_partials(tmp_path)
    assert info.ranges is not None and info.ranges.to_json() == [[0, 100]]
    adopted = open_partial(tmp_path, META, stale_after=30)
    try:
        assert adopted.completed.to_json() == [[0, 100]] and adopted.durable.to_json() == [[0, 100]]
    finally:
        adopted.close()


def test_live_partial_is_not_adopted(tmp_path: Path) -> None:
    live = write_partial(tmp_path, [(0, 300)])
    mine = open_partial(tmp_path, META, stale_after=30)
    mine.close()
    assert mine.adopted_from is None and mine.completed.total == 0
    assert live.data_path.exists()  # untouched
    assert len(list_partials(tmp_path)) == 2


def test_adoption_prefers_most_progress_and_clears_the_rest(tmp_path: Path) -> None:
    small = write_partial(tmp_path, [(0, 100)], age=3600)
    big = write_partial(tmp_path, [(0, 700)], age=3600)
    adopted = open_partial(tmp_path, META, stale_after=30)
    adopted.close()
    assert adopted.adopted_from == big.writer_id and adopted.completed.total == 700
    assert not small.path.exists()


@pytest.mark.parametrize(
    "corrupt",
    [
        "garbage",
        "too_deep",
        "missing_sidecar",
        "other_digest",
        "other_size",
        "range_outside",
        "short_data",
        "bad_range",
    ],
)
def test_untrustworthy_partials_are_ignored_and_removed_when_stale(tmp_path: Path, corrupt: str) -> None:
    old = write_partial(tmp_path, [(0, 400)], age=3600)
    doc = json.loads(old.sidecar_path.read_text())
    if corrupt == "garbage":
        old.sidecar_path.write_text("{not json")
    elif corrupt == "too_deep":  # Python's json raises RecursionError near 1000 levels
        old.sidecar_path.write_text("[" * 990 + "]" * 990)
    elif corrupt == "missing_sidecar":
        old.sidecar_path.unlink()
    elif corrupt == "other_digest":
        doc["expected"] = "sha256:" + "cd" * 32
    elif corrupt == "other_size":
        doc["size"] = 999
    elif corrupt == "range_outside":
        doc["ranges"] = [[0, 1001]]
    elif corrupt == "short_data":
        os.truncate(old.data_path, 200)  # the sidecar claims 400 bytes
    elif corrupt == "bad_range":
        doc["ranges"] = [[0, "400"]]
    if corrupt in ("other_digest", "other_size", "range_outside", "bad_range"):
        old.sidecar_path.write_text(json.dumps(doc))
    backdate(old.path)

    fresh = open_partial(tmp_path, META, stale_after=30)
    fresh.close()
    assert fresh.adopted_from is None and fresh.completed.total == 0  # a clean restart, no crash
    assert not old.path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [fresh.path.name]


def test_untrustworthy_but_live_partial_is_left_alone(tmp_path: Path) -> None:
    old = write_partial(tmp_path, [(0, 400)])
    old.sidecar_path.write_text("{half written")
    fresh = open_partial(tmp_path, META, stale_after=30)
    fresh.close()
    assert fresh.adopted_from is None
    assert old.data_path.exists()  # maybe a live writer on a filesystem without locks: not ours to delete


def test_fresh_adopts_nothing_and_removes_stale_partials_of_the_etag(tmp_path: Path) -> None:
    old = write_partial(tmp_path, [(0, 400)], age=3600)
    other_meta = PartialMeta("cd" * 32, 1000, Digest("sha256", "cd" * 32), "c" * 40, "other.bin")
    other = write_partial(tmp_path, [(0, 10)], meta=other_meta, age=3600)
    fresh = open_partial(tmp_path, META, fresh=True, stale_after=30)
    fresh.close()
    assert fresh.adopted_from is None and not old.path.exists()
    assert other.data_path.exists()  # another file's partial is not this call's business


def test_etag_must_be_a_blob_name() -> None:
    with pytest.raises(ValueError):
        PartialMeta("../../etc/passwd", 1, Digest("sha256", ETAG), "c" * 40, "x")


def test_unwritable_directory_raises_cache_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if str(path).endswith("/data"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(CacheNotWritable, match="Read-only"):
        open_partial(tmp_path, META)


# -- listing and cleanup ------------------------------------------------------------------------------


def test_list_partials_reports_valid_and_broken(tmp_path: Path) -> None:
    good = write_partial(tmp_path, [(0, 250)])
    bad = write_partial(tmp_path, [(0, 10)])
    bad.sidecar_path.write_text("nonsense")
    deep = write_partial(tmp_path, [(0, 10)])
    deep.sidecar_path.write_text("[" * 990 + "]" * 990)
    (tmp_path / "unrelated.txt").write_text("ignored")
    infos = {i.writer_id: i for i in list_partials(tmp_path)}
    assert set(infos) == {good.writer_id, bad.writer_id, deep.writer_id}
    assert not infos[deep.writer_id].valid
    g = infos[good.writer_id]
    assert g.valid and g.completed == 250 and g.size == 1000 and g.etag == ETAG
    assert g.repo_path == "model.safetensors" and g.data_path == good.data_path and g.path == good.path
    assert time.time() - g.updated_at < 60
    b = infos[bad.writer_id]
    assert not b.valid and b.problem and "JSON" in b.problem
    assert list_partials(tmp_path / "nope") == []


def test_remove_stale_removes_only_old_files(tmp_path: Path) -> None:
    old = write_partial(tmp_path, [(0, 100)], age=3600)
    broken = write_partial(tmp_path, [(0, 100)], age=3600)
    broken.sidecar_path.unlink()
    backdate(broken.path)
    young = write_partial(tmp_path, [(0, 100)])
    trash = tmp_path / ".trash-0123"  # a deletion interrupted by a crash
    (trash / "x").mkdir(parents=True)
    removed = remove_stale(tmp_path, older_than=600)
    assert set(removed) == {old.path, broken.path}
    assert young.data_path.exists() and young.sidecar_path.exists()
    assert not trash.exists()


def test_remove_partial_by_either_path(tmp_path: Path) -> None:
    a = write_partial(tmp_path, [(0, 1)])
    b = write_partial(tmp_path, [(0, 1)])
    c = write_partial(tmp_path, [(0, 1)])
    remove_partial(a.data_path)
    remove_partial(b.sidecar_path)
    remove_partial(c.path)
    remove_partial(b.sidecar_path)  # already gone: fine
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        remove_partial(tmp_path / "model.safetensors")


# -- two processes racing to adopt the same partial ---------------------------------------------------


def _racer(pdir: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    p = open_partial(pdir, META, stale_after=30)
    out.put((p.adopted_from, p.writer_id, p.completed.total))
    p.close()


def test_two_processes_racing_to_adopt_exactly_one_wins(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    for round_ in range(3):
        pdir = tmp_path / str(round_)
        old = write_partial(pdir, [(0, 600)], age=3600)
        barrier = ctx.Barrier(4)
        out = ctx.Queue()
        procs = [ctx.Process(target=_racer, args=(str(pdir), barrier, out)) for _ in range(4)]
        for proc in procs:
            proc.start()
        results = [out.get(timeout=20) for _ in procs]
        for proc in procs:
            proc.join(20)
            assert proc.exitcode == 0
        winners = [r for r in results if r[0] == old.writer_id]
        assert len(winners) == 1 and winners[0][2] == 600
        assert all(r[0] is None and r[2] == 0 for r in results if r[0] != old.writer_id)
        assert len({r[1] for r in results}) == 4  # every writer has its own files
        infos = list_partials(pdir)
        assert len(infos) == 4 and all(i.valid for i in infos)


def test_a_partial_is_live_the_moment_it_changes_hands(tmp_path: Path) -> None:
    """The adopter's new name is dated now: a third process never takes it, even before it writes a byte."""
    old = write_partial(tmp_path, [(0, 600)], age=3600)
    just_adopted = tmp_path / f"{ETAG}.{vcache.partial.new_writer_id()}"
    os.rename(old.path, just_adopted)  # the instant after another process's claim; mtimes are still old
    third = open_partial(tmp_path, META, stale_after=30)
    third.close()
    assert third.adopted_from is None and just_adopted.exists()


def test_a_partial_whose_data_was_moved_out_is_cleared_at_once(tmp_path: Path) -> None:
    """After the caller published (os.replace) the data file, the leftover sidecar goes on the next open."""
    done = write_partial(tmp_path, [(0, 1000)])
    os.replace(done.data_path, tmp_path / "published-blob")
    again = open_partial(tmp_path, META, stale_after=30)
    again.close()
    assert not done.path.exists() and again.adopted_from is None


def _write_and_die(directory: str) -> None:
    part = open_partial(Path(directory), META, stale_after=30)
    os.pwrite(part.fd, bytes(300), 0)
    part.save(RangeSet([(0, 300)]))
    os._exit(0)  # no cleanup, like SIGKILL


def test_a_dead_writer_on_this_host_is_resumed_at_once(tmp_path: Path) -> None:
    proc = mp.get_context("fork").Process(target=_write_and_die, args=(str(tmp_path),))
    proc.start()
    proc.join()  # reaped: its pid is gone
    (info,) = list_partials(tmp_path)
    assert info.updated_at == 0.0  # counts as stale for lock waiters
    adopted = open_partial(tmp_path, META, stale_after=3600)  # fresh by the clock, but its writer is dead
    try:
        assert adopted.adopted_from == info.writer_id and adopted.completed.total == 300
    finally:
        adopted.close()


def _write_part_and_die(directory: str, upto: int) -> None:
    part = open_partial(Path(directory), META, stale_after=math.inf)
    os.pwrite(part.fd, bytes(i % 251 for i in range(upto)), 0)
    part.save(RangeSet([(0, upto)]))
    os._exit(0)  # no cleanup, like SIGKILL


@pytest.mark.parametrize("corrupt", ["short_data", "other_digest"])
def test_a_dead_writers_untrustworthy_partial_is_removed_at_once(tmp_path: Path, corrupt: str) -> None:
    """Its writer is gone, so nothing will ever make it match its sidecar: it goes on the next open."""
    proc = mp.get_context("fork").Process(target=_write_part_and_die, args=(str(tmp_path), 600))
    proc.start()
    proc.join()
    (old,) = list_partials(tmp_path)
    if corrupt == "short_data":
        os.truncate(old.data_path, 100)  # the sidecar claims 600 bytes
    else:
        doc = json.loads(old.sidecar_path.read_text())
        doc["expected"] = "sha256:" + "cd" * 32
        old.sidecar_path.write_text(json.dumps(doc))
    fresh = open_partial(tmp_path, META, stale_after=3600)  # fresh by the clock, but its writer is dead
    fresh.close()
    assert fresh.adopted_from is None and fresh.completed.total == 0
    assert [p.name for p in tmp_path.iterdir()] == [fresh.path.name]
