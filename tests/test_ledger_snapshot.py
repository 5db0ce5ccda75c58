"""The snapshot record (``.vcache/ledger/snapshots/<commit>.json``): an offline verify of an unchanged snapshot
is answered from it with exactly the report the per-blob records give, and nothing it depends on can change
without it being ignored.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vcache.checks.index
from vcache.cache import CacheRepo
from vcache.ledger import Ledger
from vcache.pull import pull
from vcache.report import PullReport, warn
from vcache.testing.hub import HubServer
from vcache.testing.models import repo_from_folder
from vcache.verify import verify_snapshot

#: the module (``vcache.verify`` is also the name of the package's verify function)
verify_module = importlib.import_module("vcache.verify")

REPO = "acme/tiny-llama"
INDEX = "model.safetensors.index.json"
SHARD1 = "model-00001-of-00002.safetensors"


@pytest.fixture
def published(llama_folder: Path, tmp_path: Path) -> Path:
    """The test checkpoint with an index whose total_size is off: a repo-check finding to remember."""
    folder = tmp_path / "published"
    shutil.copytree(llama_folder, folder)
    index = json.loads((folder / INDEX).read_text())
    index["metadata"]["total_size"] += 4
    (folder / INDEX).write_text(json.dumps(index, indent=2))
    return folder


@pytest.fixture
def served(published: Path) -> Iterator[HubServer]:
    with HubServer([repo_from_folder(REPO, published)]) as server:
        yield server


@pytest.fixture
def pulled(served: HubServer, cache_dir: Path) -> CacheRepo:
    """The snapshot pulled (verified, per-blob records written) and nothing derived yet."""
    assert pull(REPO, endpoint=served.endpoint, cache_dir=cache_dir).ok
    repo = CacheRepo(cache_dir, REPO)
    assert not Ledger(repo.ledger_dir).snapshot_record_path(_commit(repo)).parent.exists()
    return repo


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """What the slow way does: per-blob record lookups, hashing+checking, the repo checks."""
    calls: dict[str, list[str]] = {"lookup": [], "assess": [], "check_index": []}
    real_lookup, real_assess = Ledger.lookup, verify_module.judge
    real_check_index = vcache.checks.index.check_index

    def lookup(self: Ledger, etag: str, blob: Path) -> Any:
        calls["lookup"].append(etag)
        return real_lookup(self, etag, blob)

    def assess(path: Path, name: str, **kwargs: Any) -> Any:
        calls["assess"].append(name)
        return real_assess(path, name, **kwargs)

    def check_index(folder: Path, index_name: str = INDEX, **kwargs: Any) -> Any:
        calls["check_index"].append(index_name)
        return real_check_index(folder, index_name, **kwargs)

    monkeypatch.setattr(Ledger, "lookup", lookup)
    monkeypatch.setattr(verify_module, "judge", assess)
    monkeypatch.setattr(vcache.checks.index, "check_index", check_index)
    return calls


def _commit(repo: CacheRepo) -> str:
    commit = repo.read_ref("main")
    assert commit
    return commit


def _doc(report: PullReport) -> dict[str, Any]:
    doc = report.to_json()
    doc.pop("elapsed")
    return doc


def _clear(calls: dict[str, list[str]]) -> None:
    for v in calls.values():
        v.clear()


def _codes(report: PullReport, path: str) -> list[str]:
    return [f.code for f in next(r for r in report.files if r.path == path).findings]


def test_a_second_verify_is_answered_from_the_snapshot_record(
    pulled: CacheRepo, served: HubServer, spy: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = _commit(pulled)
    first = verify_snapshot(pulled, commit)
    assert spy["lookup"] and spy["check_index"] == [INDEX]
    assert _codes(first, INDEX) == ["index.total_size_mismatch"]
    record = pulled.ledger_dir / "snapshots" / f"{commit}.json"
    assert record.is_file()
    # nothing derived outside .vcache/: not at the cache root, in refs/ or snapshots/
    assert sorted(p.name for p in pulled.cache_dir.iterdir()) == [
        ".locks",
        "CACHEDIR.TAG",
        pulled.folder_name,
    ]
    assert sorted(p.name for p in (pulled.root / "refs").iterdir()) == ["main"]
    assert [p.name for p in (pulled.root / "snapshots").iterdir()] == [commit]

    _clear(spy)
    second = verify_snapshot(pulled, commit)
    assert spy == {"lookup": [], "assess": [], "check_index": []}
    assert _doc(second) == _doc(first)
    assert second.files == first.files

    # the offline pull (HF_HUB_OFFLINE=1) goes through the same record, without a request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    served.clear_log()
    for allow in (None, ["config.json", "*.safetensors"], ["config.json"]):
        offline = pull(REPO, cache_dir=pulled.cache_dir, allow_patterns=allow)
        assert offline.ok
    assert served.log == []
    assert spy["lookup"] == [] and spy["assess"] == []


def test_answers_equal_the_slow_way_for_every_file_selection(
    pulled: CacheRepo, spy: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for allow in (None, ["*.json"], [SHARD1, INDEX], ["sub/*"], ["config.json"]):
        shutil.rmtree(pulled.ledger_dir / "snapshots", ignore_errors=True)
        _clear(spy)
        slow = pull(REPO, cache_dir=pulled.cache_dir, allow_patterns=allow)
        assert spy["lookup"], allow
        _clear(spy)
        remembered = pull(REPO, cache_dir=pulled.cache_dir, allow_patterns=allow)
        assert spy == {"lookup": [], "assess": [], "check_index": []}, allow
        assert _doc(remembered) == _doc(slow), allow
    for strict in (False, True):  # strict changes verdicts, not what is remembered
        slow_doc = _doc(verify_snapshot(pulled, _commit(pulled), strict=strict, deep=True))
        assert _doc(verify_snapshot(pulled, _commit(pulled), strict=strict)) == slow_doc


def test_a_touched_blob_is_verified_again(pulled: CacheRepo, spy: dict[str, list[str]]) -> None:
    commit = _commit(pulled)
    first = verify_snapshot(pulled, commit)
    blob = (pulled.snapshot_dir(commit) / SHARD1).resolve()
    st = blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _clear(spy)
    again = verify_snapshot(pulled, commit)
    assert spy["assess"] == [SHARD1]  # re-hashed and re-checked: the record no longer describes it
    assert _doc(again) == _doc(first)
    _clear(spy)
    verify_snapshot(pulled, commit)
    assert spy["lookup"] == [] and spy["assess"] == []  # remembered again, for the blob as it is now


def test_a_changed_per_blob_record_wins_over_the_snapshot_record(
    pulled: CacheRepo, spy: dict[str, list[str]]
) -> None:
    commit = _commit(pulled)
    verify_snapshot(pulled, commit)
    ledger = Ledger(pulled.ledger_dir)
    etag = pulled.linked_etag(commit, "config.json")
    assert etag
    rec = ledger.lookup(etag, pulled.blob_path(etag))
    assert rec is not None
    # e.g. `vcache quarantine restore`: same blob (same stat token), a record with other findings
    ledger.record(etag, pulled.blob_path(etag), rec.digest, [warn("test.remark", "config.json: restored")])
    assert _codes(verify_snapshot(pulled, commit), "config.json") == ["test.remark"]
    ledger.forget(etag)
    _clear(spy)
    assert _codes(verify_snapshot(pulled, commit), "config.json") == []
    assert spy["assess"] == ["config.json"]  # no record: hashed again


def test_a_changed_folder_runs_the_repo_checks_again(pulled: CacheRepo, spy: dict[str, list[str]]) -> None:
    commit = _commit(pulled)
    verify_snapshot(pulled, commit)
    stale = pulled.snapshot_dir(commit) / "model-00003-of-00003.safetensors"
    shutil.copyfile(pulled.snapshot_dir(commit) / SHARD1, stale)  # a leftover no index lists
    _clear(spy)
    report = verify_snapshot(pulled, commit)
    assert spy["check_index"] == [INDEX] and spy["lookup"] == []  # files remembered, repo checks not
    assert _codes(report, INDEX) == ["index.total_size_mismatch", "index.stale_shard"]
    stale.unlink()
    assert _codes(verify_snapshot(pulled, commit), INDEX) == ["index.total_size_mismatch"]


def test_deep_ignores_the_snapshot_record(pulled: CacheRepo, spy: dict[str, list[str]]) -> None:
    commit = _commit(pulled)
    verify_snapshot(pulled, commit)
    _clear(spy)
    deep = verify_snapshot(pulled, commit, deep=True)
    assert sorted(spy["assess"]) == sorted(f.path for f in deep.files)


def test_a_record_from_other_checks_or_another_commit_is_ignored(
    pulled: CacheRepo, spy: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = _commit(pulled)
    first = verify_snapshot(pulled, commit)
    path = Ledger(pulled.ledger_dir).snapshot_record_path(commit)
    data = json.loads(path.read_text())
    for field, value in (("checks_version", 0), ("vcache_version", "0.0.0"), ("commit", "0" * 40)):
        path.write_text(json.dumps({**data, field: value}))
        _clear(spy)
        assert _doc(verify_snapshot(pulled, commit)) == _doc(first)
        assert spy["lookup"], field
    path.write_text("{not json")
    assert _doc(verify_snapshot(pulled, commit)) == _doc(first)


# -- a read-only cache -------------------------------------------------------------------------------------


def _as_reader(fn: Callable[[], Any], folder: Path) -> Any:
    """``fn()`` where ``folder`` cannot be written: as an unprivileged user (forked) when we are root, else
    with the write bits taken off for the call."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if not p.is_symlink()}
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode) & ~0o222)
        try:
            return fn()
        finally:
            for p, mode in modes.items():
                p.chmod(stat.S_IMODE(mode))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        try:
            os.setgid(65534)
            os.setuid(65534)
            queue.put(("ok", fn()))
        except BaseException as exc:  # report anything to the parent
            queue.put(("error", f"{type(exc).__name__}: {exc}"))

    proc = ctx.Process(target=child)
    proc.start()
    status, value = queue.get(timeout=60)
    proc.join(10)
    assert status == "ok", value
    return value


def test_a_read_only_cache_verifies_without_writing(served: HubServer) -> None:
    base = Path(tempfile.mkdtemp(prefix="vcache-ro-"))
    try:
        base.chmod(0o755)
        cache = base / "cache"
        assert pull(REPO, endpoint=served.endpoint, cache_dir=cache).ok
        repo = CacheRepo(cache, REPO)
        commit = _commit(repo)
        for p in [cache, *cache.rglob("*")]:  # readable by anyone (pytest's umask may be tighter)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))

        def verify_twice() -> dict[str, Any]:
            lookups: list[str] = []
            real = Ledger.lookup
            Ledger.lookup = lambda self, etag, blob: lookups.append(etag) or real(self, etag, blob)  # type: ignore[method-assign]
            try:
                docs = [_doc(verify_snapshot(repo, commit)) for _ in range(2)]
            finally:
                Ledger.lookup = real  # type: ignore[method-assign]
            return {"docs": docs, "lookups": len(lookups)}

        without = _as_reader(verify_twice, cache)
        assert not (repo.ledger_dir / "snapshots").exists()  # nothing written, nothing failed
        assert without["docs"][0] == without["docs"][1] and without["lookups"] >= 2 * 5
        expected = _doc(verify_snapshot(repo, commit))  # writable again: the record is written
        assert without["docs"][0] == expected
        for p in (repo.ledger_dir / "snapshots").rglob("*"):
            p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))
        (repo.ledger_dir / "snapshots").chmod(0o755)
        with_record = _as_reader(verify_twice, cache)
        assert with_record == {"docs": [expected, expected], "lookups": 0}  # a read-only cache still uses it
    finally:
        for p in [base, *base.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)


def test_copies_instead_of_links_are_verified_the_slow_way_without_rewriting_the_record(
    served: HubServer, cache_dir: Path, spy: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_SYMLINKS", "1")  # the snapshot holds copies: nothing to remember
    assert pull(REPO, endpoint=served.endpoint, cache_dir=cache_dir).ok
    repo = CacheRepo(cache_dir, REPO)
    commit = _commit(repo)
    assert not (repo.snapshot_dir(commit) / "config.json").is_symlink()
    writes: list[Path] = []
    real_write = Ledger.write_derived
    monkeypatch.setattr(
        Ledger, "write_derived", lambda self, path, body: writes.append(path) or real_write(self, path, body)
    )
    docs = [_doc(verify_snapshot(repo, commit)) for _ in range(3)]
    assert docs[0] == docs[1] == docs[2]
    assert len(writes) <= 2  # the record settles (copies re-recorded once); not a rewrite per verify
    _clear(spy)
    writes.clear()
    assert _doc(verify_snapshot(repo, commit)) == docs[0]
    assert writes == [] and spy["check_index"] == []  # the repo checks are still remembered
