"""The cache's life: ls, rm, gc and quarantine purge, on caches huggingface_hub and vcache wrote together, with
uses held by other real processes (another node's included) and gc racing pulls and loads."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vcache
from vcache.cache import CacheRepo
from vcache.cli import main
from vcache.errors import UsageError
from vcache.hashing import Digest
from vcache.lifecycle import list_cache, parse_duration, parse_size, plan_gc, plan_removal, run_plan
from vcache.partial import PartialMeta, list_partials, open_partial
from vcache.quarantine import list_entries, quarantine_file
from vcache.testing.hub import HubServer, Repo
from vcache.testing.models import LlamaShape, write_llama_checkpoint
from vcache.usage import live_uses

MODEL = "acme/model"


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama transformers can load (2 shards + index + config)."""
    folder = tmp_path_factory.mktemp("lifecycle") / "model"
    return write_llama_checkpoint(folder, LlamaShape(), shards=2)


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def two_revisions(model_folder: Path) -> tuple[Repo, str, str]:
    """``acme/model``: v1 (tag) and main, which changes one small file and adds one; the shards are shared."""
    repo = Repo(MODEL)
    v1 = repo.commit(_files(model_folder), message="v1")
    repo.tag("v1", v1)
    main_commit = repo.commit(
        {
            "generation_config.json": b'{"bos_token_id": 1, "eos_token_id": 2, "max_length": 64}\n',
            "README.md": b"# hi\n",
        }
    )
    return repo, v1, main_commit


def _small_repo(repo_id: str, size: int, seed: int) -> Repo:
    repo = Repo(repo_id)
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    repo.commit({"config.json": json.dumps({"seed": seed}).encode(), "weights.bin": data[:size]})
    return repo


def _blob_sizes(cache: Path, repo_id: str) -> dict[str, int]:
    blobs = CacheRepo(cache, repo_id).blobs
    return {p.name: p.stat().st_size for p in blobs.iterdir() if not p.name.endswith(".incomplete")}


def _linked_blobs(snapshot: Path) -> set[str]:
    return {os.path.basename(os.readlink(p)) for p in snapshot.rglob("*") if p.is_symlink()}


def _set_last_used(cache: Path, repo_id: str, when: float) -> None:
    repo = CacheRepo(cache, repo_id)
    for commit in repo.snapshots():
        marker = repo.used_dir / commit
        assert marker.exists(), "vcache.pull records the last use"
        os.utime(marker, (when, when))


# -- parsing ------------------------------------------------------------------------------------------------------


def test_sizes_and_durations_parse_and_bad_ones_are_usage_errors() -> None:
    assert (
        parse_size("10G") == 10 << 30 and parse_size("500MiB") == 500 << 20 and parse_size("1.5TB") == 1.5e12
    )
    assert parse_size("0") == 0 and parse_size("2kb") == 2000 and parse_size("3 K") == 3072
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200
    assert parse_duration("1d12h") == 129600 and parse_duration("90m") == 5400 and parse_duration("0s") == 0
    for bad in ("", "ten", "5X", "-1G"):
        with pytest.raises(UsageError, match="invalid size"):
            parse_size(bad)
    for bad in ("", "5y", "d", "1d x", "-3h"):
        with pytest.raises(UsageError, match="invalid duration"):
            parse_duration(bad)
    assert run("gc", "--max-size", "lots", "--dry-run").exit_code == 2
    assert run("gc", "--older-than", "soon", "--dry-run").exit_code == 2


# -- ls -----------------------------------------------------------------------------------------------------------


def test_ls_lists_what_huggingface_hub_and_vcache_wrote_from_metadata_only(
    two_revisions: tuple[Repo, str, str],
    cache_dir: Path,
    dead_writer_partial: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download

    repo, v1, main_commit = two_revisions
    other = _small_repo("acme/other", 20_000, 1)
    with HubServer([repo, other]) as hub:
        assert vcache.pull(MODEL, revision="v1", endpoint=hub.endpoint, cache_dir=cache_dir).ok
        assert vcache.pull(MODEL, endpoint=hub.endpoint, cache_dir=cache_dir).ok
        snapshot_download("acme/other", cache_dir=cache_dir, endpoint=hub.endpoint)
    # Something in the quarantine and an unfinished download, which ls shows too.
    bad = cache_dir / "bad.bin"
    bad.write_bytes(b"x" * 100)
    quarantine_file(
        CacheRepo(cache_dir, MODEL), bad, path="README.md", commit=main_commit, etag=None,
        expected_digest=None, actual_digest=None, findings=[], source="test",
    )  # fmt: skip
    dead_writer_partial(cache_dir, MODEL, "later.bin", b"y" * 5000, 1000)

    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_os_open(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", spy_open)
        m.setattr(io, "open", spy_open)
        m.setattr(os, "open", spy_os_open)
        listing = list_cache(cache_dir)
    assert not [p for p in opened if "/blobs/" in p], "ls read a blob"

    by_id = {r.repo_id: r for r in listing.repos}
    assert set(by_id) == {MODEL, "acme/other"}
    hf = {r.repo_id: r for r in scan_cache_dir(cache_dir).repos}
    for repo_id, info in by_id.items():
        sizes = _blob_sizes(cache_dir, repo_id)
        assert info.size_on_disk == sum(sizes.values()) == hf[repo_id].size_on_disk
        assert info.nb_files == len(sizes)
        for rev in info.revisions:
            assert rev.size_on_disk == sum(sizes[b] for b in _linked_blobs(rev.path))
    assert listing.size_on_disk == sum(r.size_on_disk for r in by_id.values())
    revs = {r.commit: r for r in by_id[MODEL].revisions}
    shared = _linked_blobs(revs[v1].path) & _linked_blobs(revs[main_commit].path)
    assert shared and by_id[MODEL].size_on_disk < revs[v1].size_on_disk + revs[main_commit].size_on_disk
    assert revs[v1].refs == ("v1",) and revs[main_commit].refs == ("main",)
    assert all(r.verdict == "ok" and r.last_verified is not None for r in revs.values())
    assert revs[main_commit].nb_files == len(_files(Path(revs[main_commit].path)))
    (theirs,) = by_id["acme/other"].revisions
    assert theirs.verdict == "unverified" and theirs.last_verified is None and theirs.last_used is not None
    assert [q.path for q in by_id[MODEL].quarantined] == ["README.md"]
    (partial,) = by_id[MODEL].partials
    assert partial.repo_path == "later.bin" and partial.completed == 1000 and not partial.live

    res = run("ls", "--cache-dir", str(cache_dir), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["size_on_disk"] == listing.size_on_disk
    for r in doc["repos"]:
        assert {"repo_id", "repo_type", "size_on_disk", "last_used", "revisions"} <= set(r)
        for rev in r["revisions"]:
            assert {"commit", "refs", "size_on_disk", "last_verified", "verdict"} <= set(rev)
    assert {r["repo_id"]: r["size_on_disk"] for r in doc["repos"]} == {
        k: v.size_on_disk for k, v in by_id.items()
    }
    res = run("ls", MODEL, "--cache-dir", str(cache_dir))
    assert res.exit_code == 0 and v1[:12] in res.output and "quarantined: 1 file(s)" in res.output
    assert "acme/other" not in res.output
    assert run("ls", "acme/missing", "--cache-dir", str(cache_dir)).exit_code == 2


# -- rm -----------------------------------------------------------------------------------------------------------


def test_rm_one_of_two_revisions_keeps_shared_blobs_and_the_other_still_loads_offline(
    two_revisions: tuple[Repo, str, str], cache_dir: Path
) -> None:
    pytest.importorskip("transformers")
    from huggingface_hub import scan_cache_dir

    repo, v1, main_commit = two_revisions
    with HubServer([repo]) as hub:
        assert vcache.pull(MODEL, revision="v1", endpoint=hub.endpoint, cache_dir=cache_dir).ok
        assert vcache.pull(MODEL, endpoint=hub.endpoint, cache_dir=cache_dir).ok
    cached = CacheRepo(cache_dir, MODEL)
    old, new = _linked_blobs(cached.snapshot_dir(v1)), _linked_blobs(cached.snapshot_dir(main_commit))
    only_old = old - new
    assert only_old and old & new
    before = sorted(p.relative_to(cache_dir) for p in cache_dir.rglob("*"))

    # A script without --yes is refused (stdin is not a terminal), and a dry run changes nothing.
    env = {**os.environ, "HF_HUB_CACHE": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "vcache", "rm", f"{MODEL}@v1"], env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--yes" in proc.stderr, proc.stderr
    res = run("rm", f"{MODEL}@v1", "--cache-dir", str(cache_dir), "--dry-run")
    assert res.exit_code == 0 and f"would remove revision {MODEL}@{v1[:12]} (v1)" in res.output
    assert sorted(p.relative_to(cache_dir) for p in cache_dir.rglob("*")) == before

    res = run("rm", f"{MODEL}@v1", "--cache-dir", str(cache_dir), "--yes")
    assert res.exit_code == 0, res.output
    assert f"removed revision {MODEL}@{v1[:12]}" in res.output and "freed" in res.output
    assert cached.snapshots() == [main_commit]
    assert not cached.ref_path("v1").exists() and not cached.tree_path(v1).exists()
    assert {p.name for p in cached.blobs.iterdir()} == new
    for etag in only_old:  # its ledger record and lock file went with it
        assert not (cached.ledger_dir / f"{etag}.json").exists() and not cached.lock_path(etag).exists()
    assert all((cached.ledger_dir / f"{etag}.json").exists() for etag in new)
    info = scan_cache_dir(cache_dir)
    assert info.warnings == [] and [r.commit_hash for r in next(iter(info.repos)).revisions] == [main_commit]

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    code = (
        "from transformers import AutoModelForCausalLM; "
        f"m = AutoModelForCausalLM.from_pretrained({MODEL!r}); print(type(m).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=offline, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LlamaForCausalLM"
    assert run("verify", MODEL, "--cache-dir", str(cache_dir)).exit_code == 0

    # The last revision: the repo folder goes whole; the quarantine would have kept it.
    res = run("rm", MODEL, "--cache-dir", str(cache_dir), "--yes")
    assert res.exit_code == 0, res.output
    assert not cached.root.exists() and scan_cache_dir(cache_dir).warnings == []
    assert run("rm", f"{MODEL}@v1", "--cache-dir", str(cache_dir), "--yes").exit_code == 2


# -- gc: least recently used ----------------------------------------------------------------------------------------


def test_gc_max_size_evicts_least_recently_used_first(cache_dir: Path) -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download

    repos = {name: _small_repo(name, 30_000 + i, i) for i, name in enumerate(["acme/a", "acme/b", "acme/c"])}
    theirs = _small_repo("acme/theirs", 30_000, 9)
    with HubServer([*repos.values(), theirs]) as hub:
        for name in repos:
            assert vcache.pull(name, endpoint=hub.endpoint, cache_dir=cache_dir).ok
        snapshot_download("acme/theirs", cache_dir=cache_dir, endpoint=hub.endpoint)
    now = time.time()
    # acme/c was used last, acme/a first; huggingface_hub's repo has no vcache record: its blobs' times count.
    for age, name in ((300, "acme/a"), (200, "acme/b"), (100, "acme/c")):
        _set_last_used(cache_dir, name, now - age)
    theirs_repo = CacheRepo(cache_dir, "acme/theirs")
    for p in [
        *theirs_repo.blobs.iterdir(),
        *theirs_repo.snapshot_dir(theirs_repo.snapshots()[0]).parent.iterdir(),
    ]:
        os.utime(p, (now - 1000, now - 1000))
    sizes = {r.repo_id: r.size_on_disk for r in list_cache(cache_dir).repos}

    budget = sizes["acme/b"] + sizes["acme/c"]
    res = run("gc", "--max-size", str(budget), "--cache-dir", str(cache_dir), "--dry-run")
    assert res.exit_code == 0 and "would remove revision acme/theirs@" in res.output
    assert {r.repo_id for r in list_cache(cache_dir).repos} == set(sizes)  # dry run
    res = run("gc", "--max-size", str(budget), "--cache-dir", str(cache_dir), "--yes")
    assert res.exit_code == 0, res.output
    assert {r.repo_id for r in list_cache(cache_dir).repos} == {"acme/b", "acme/c"}
    assert f"freed {vcache.report.human_bytes(sizes['acme/theirs'] + sizes['acme/a'])}" in res.output

    res = run(
        "gc", "--max-size", str(sizes["acme/c"] + sizes["acme/b"] - 1), "--cache-dir", str(cache_dir), "-y"
    )
    assert res.exit_code == 0, res.output
    assert {r.repo_id for r in list_cache(cache_dir).repos} == {"acme/c"}
    assert scan_cache_dir(cache_dir).warnings == []
    res = run("gc", "--max-size", "1G", "--cache-dir", str(cache_dir), "--yes")
    assert res.exit_code == 0 and "nothing to remove" in res.output
    # --older-than: acme/c was last used 100 s ago
    assert run("gc", "--older-than", "1h", "--cache-dir", str(cache_dir), "--yes").exit_code == 0
    assert [r.repo_id for r in list_cache(cache_dir).repos] == ["acme/c"]
    assert run("gc", "--older-than", "1m", "--cache-dir", str(cache_dir), "--yes").exit_code == 0
    assert list_cache(cache_dir).repos == ()


# -- gc and rm on a cache others use --------------------------------------------------------------------------------

HOLD_USE = """
import os, sys, time
import vcache
repo_id, cache, ready, stop = sys.argv[1:5]
with vcache.use(repo_id, cache_dir=cache) as u:
    open(ready, "w").write(str(u.marker))
    while not os.path.exists(stop):
        time.sleep(0.02)
"""

HOLD_LOAD = """
import os, sys, time
import vcache
repo_id, cache, ready, stop, endpoint = sys.argv[1:6]

class SlowReader:
    # stands for a transformers class: from_pretrained reads the verified snapshot, slowly
    def from_pretrained(self, path, **kwargs):
        open(ready, "w").write(path)
        while not os.path.exists(stop):
            time.sleep(0.02)
        return sorted(os.listdir(path))

print(vcache.from_pretrained(SlowReader(), repo_id, cache_dir=cache, endpoint=endpoint, check_after_load=False))
"""

OTHER_NODE = """
import socket
socket.gethostname = lambda: "node-b"
"""


def _start(code: str, *args: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[str]:
    """A child process; with ``log`` its output goes to that file (a pipe nobody reads meanwhile could fill)."""
    out: Any = subprocess.PIPE if log is None else log.open("w")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"holder exited early: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


@pytest.mark.parametrize("mode", ["flock", "lease"])
def test_gc_leaves_what_other_processes_use_and_frees_what_a_dead_one_held(
    mode: str,
    cache_dir: Path,
    tmp_path: Path,
    holders: list[subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """flock: uses held on this host. lease: the ``vcache.use`` holder runs as another node (its own hostname, so
    its PID cannot be checked from here), and gc runs after three lease lengths: only the holder's heartbeat
    keeps its use alive."""
    monkeypatch.setenv("VCACHE_LOCK_MODE", mode)
    monkeypatch.setenv("VCACHE_LEASE_SECONDS", "1")
    names = ["acme/used", "acme/loading", "acme/dead", "acme/free"]
    repos = [_small_repo(name, 20_000, i) for i, name in enumerate(names)]
    env = dict(os.environ)
    node_env = dict(env)
    if mode == "lease":
        site = tmp_path / "node-b"
        site.mkdir()
        (site / "sitecustomize.py").write_text(OTHER_NODE)
        node_env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
        node_env["VCACHE_NODE_ID"] = "node-b"
    with HubServer(repos) as hub:
        for name in names:
            assert vcache.pull(name, endpoint=hub.endpoint, cache_dir=cache_dir).ok
        stop = tmp_path / "stop"
        holders.append(
            _start(HOLD_USE, "acme/used", str(cache_dir), str(tmp_path / "r1"), str(stop), env=node_env)
        )
        holders.append(
            _start(
                HOLD_LOAD,
                "acme/loading",
                str(cache_dir),
                str(tmp_path / "r2"),
                str(stop),
                hub.endpoint,
                env=env,
            )
        )
        holders.append(
            _start(HOLD_USE, "acme/dead", str(cache_dir), str(tmp_path / "r3"), str(stop), env=env)
        )
        for i, proc in enumerate(holders, start=1):
            _wait_for(tmp_path / f"r{i}", proc)
        os.kill(holders[2].pid, signal.SIGKILL)  # dies holding its use: nothing protects acme/dead any more
        holders[2].communicate()
        if mode == "lease":
            time.sleep(3.5)  # > 3 lease lengths: a use from another node that were not renewed would be stale
        used = {u.holder for u in live_uses(CacheRepo(cache_dir, "acme/used"))}
        assert len(used) == 1 and (("node-b" in used.pop()) if mode == "lease" else True)

        res = run("gc", "--max-size", "0", "--cache-dir", str(cache_dir), "--yes")
        assert res.exit_code == 0, res.output
        left = {r.repo_id for r in list_cache(cache_dir).repos}
        assert left == {"acme/used", "acme/loading"}, res.output
        assert "kept acme/used: in use by" in res.output and "kept acme/loading: in use by" in res.output
        for name in left:  # untouched: every file still reads back
            snap = CacheRepo(cache_dir, name).snapshot_dir(CacheRepo(cache_dir, name).snapshots()[0])
            assert (snap / "weights.bin").read_bytes() and (snap / "config.json").read_bytes()
        # rm says why it keeps a revision in use, and exits 3
        res = run("rm", "acme/used", "--cache-dir", str(cache_dir), "--yes")
        assert res.exit_code == 3 and "in use by" in res.output, res.output

        stop.touch()
        for proc in holders[:2]:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        assert "config.json" in out  # the slow load finished reading its snapshot
    assert all(not live_uses(CacheRepo(cache_dir, n)) for n in names)
    assert run("gc", "--max-size", "0", "--cache-dir", str(cache_dir), "--yes").exit_code == 0
    assert list_cache(cache_dir).repos == ()
    assert not [
        p for p in (cache_dir / ".locks").rglob("*") if p.suffix in (".lease",) or p.parent.name == "uses"
    ]


# -- gc: leftovers --------------------------------------------------------------------------------------------------


def test_gc_removes_dead_writers_partials_and_leftovers_but_not_a_live_writer_or_the_quarantine(
    cache_dir: Path, dead_writer_partial: Callable[..., Path]
) -> None:
    repo = _small_repo("acme/x", 10_000, 3)
    with HubServer([repo]) as hub:
        assert vcache.pull("acme/x", endpoint=hub.endpoint, cache_dir=cache_dir).ok
    cached = CacheRepo(cache_dir, "acme/x")
    dead = dead_writer_partial(cache_dir, "acme/x", "dead.bin", b"d" * 4000, 1000)
    live_data = b"l" * 4000
    sha = hashlib.sha256(live_data).hexdigest()
    live = open_partial(cached.partials, PartialMeta(sha, 4000, Digest("sha256", sha), "0" * 40, "live.bin"))
    # huggingface_hub's leftovers: an old .incomplete and a fresh one; an orphaned blob with its lock file and
    # a ledger record whose blob is gone.
    old_incomplete, new_incomplete = (
        cached.blobs / ("a" * 64 + ".incomplete"),
        cached.blobs / ("b" * 64 + ".incomplete"),
    )
    old_incomplete.write_bytes(b"o" * 700)
    new_incomplete.write_bytes(b"n" * 700)
    past = time.time() - 7200
    os.utime(old_incomplete, (past, past))
    orphan = cached.blobs / ("c" * 40)
    orphan.write_bytes(b"orphan")
    cached.lock_path("c" * 40).write_bytes(b"")
    (cached.ledger_dir / ("d" * 40 + ".json")).write_text("{}")
    bad = cache_dir / "bad.bin"
    bad.write_bytes(b"q" * 50)
    quarantine_file(
        cached, bad, path="config.json", commit=None, etag=None, expected_digest=None, actual_digest=None,
        findings=[], source="test",
    )  # fmt: skip
    try:
        res = run("gc", "--cache-dir", str(cache_dir), "--grace", "0s", "--yes")
        assert res.exit_code == 0, res.output
        assert "removed partial download acme/x of dead.bin" in res.output and "freed" in res.output
        assert not dead.exists()
        assert [p.repo_path for p in list_partials(cached.partials)] == ["live.bin"]
        assert not orphan.exists() and not cached.lock_path("c" * 40).exists()
        assert not (cached.ledger_dir / ("d" * 40 + ".json")).exists()
        assert not old_incomplete.exists() and not new_incomplete.exists()  # --grace 0s: both
        assert len(list_entries(cache_dir)) == 1  # the quarantine is kept
        assert list_cache(cache_dir).repos[0].revisions  # nothing asked for a revision
        new_incomplete.write_bytes(b"n")
        res = run("gc", "--cache-dir", str(cache_dir), "--purge-quarantine", "--yes")
        assert res.exit_code == 0 and "removed quarantined acme/x config.json" in res.output, res.output
        assert list_entries(cache_dir) == [] and new_incomplete.exists()  # younger than the 1 h default grace
    finally:
        live.close()
    assert [p.repo_path for p in list_partials(cached.partials)] == ["live.bin"]


def test_quarantine_purge_older_than(cache_dir: Path) -> None:
    cached = CacheRepo(cache_dir, "acme/q")
    cached.ensure_layout()
    for age, name in ((10 * 86400, "old.bin"), (60, "new.bin")):
        data = cache_dir / name
        data.write_bytes(b"z")
        entry = quarantine_file(
            cached, data, path=name, commit=None, etag=None, expected_digest=None, actual_digest=None,
            findings=[], source="test",
        )  # fmt: skip
        report = json.loads((entry.folder / "report.json").read_text())
        report["quarantined_at"] -= age
        (entry.folder / "report.json").write_text(json.dumps(report))
    assert (
        run("quarantine", "purge", "--all", "--older-than", "1d", "--cache-dir", str(cache_dir)).exit_code
        == 2
    )
    res = run("quarantine", "purge", "--older-than", "1d", "--cache-dir", str(cache_dir))
    assert res.exit_code == 0 and "purged 1 entry" in res.output
    assert [e.path for e in list_entries(cache_dir)] == ["new.bin"]


# -- the race -------------------------------------------------------------------------------------------------------

WORKER = """
import json, os, random, sys, time
import vcache
endpoint, cache, sources, seconds, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
expected = {repo: {p: open(os.path.join(folder, p), "rb").read() for p in files} for repo, (folder, files) in sources.items()}
result = {"ok": 0, "clear": [], "broken": [], "wrong": []}

class Reader:
    # a stand-in for a transformers class: reads every file of the verified snapshot
    def __init__(self, repo):
        self.repo = repo
    def from_pretrained(self, path, **kwargs):
        for name, data in expected[self.repo].items():
            with open(os.path.join(path, name), "rb") as f:
                if f.read() != data:
                    result["wrong"].append(f"{self.repo}/{name}")
        return True

random.seed(os.getpid())
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    repo = random.choice(sorted(expected))
    try:
        vcache.from_pretrained(Reader(repo), repo, cache_dir=cache, endpoint=endpoint, ignore_patterns=None,
                               check_after_load=False)
        result["ok"] += 1
    except vcache.VcacheError as exc:
        result["clear"].append(f"{type(exc).__name__}: {exc}")
    except OSError as exc:  # a broken symlink, a file gone under the reader
        result["broken"].append(f"{type(exc).__name__}: {exc}")
    time.sleep(random.uniform(0, 0.05))
with open(out, "w") as f:  # not stdout: nobody reads the pipe while the race runs
    json.dump(result, f)
"""


@pytest.mark.parametrize("seconds", [pytest.param(30.0, marks=pytest.mark.slow), 8.0])
def test_gc_in_a_loop_racing_four_processes_that_pull_and_load(
    seconds: float, tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    """gc --max-size 0 over and over while 4 processes pull and read two repos through ``from_pretrained``: gc removes
    each repo whenever nobody holds it, and every load reads exactly the publisher's bytes — never a broken link or a
    wrong byte. (A load could also fail with a clear vcache error, such as a LockTimeout after a long wait; none is
    expected here, and none may be an OSError.)"""
    from huggingface_hub import scan_cache_dir

    cache = tmp_path / "cache"
    sources: dict[str, tuple[str, list[str]]] = {}
    repos = []
    for i in range(2):
        folder = tmp_path / f"src{i}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"i": i}))
        (folder / "weights.bin").write_bytes(hashlib.sha256(str(i).encode()).digest() * 8000)
        (folder / "shared.bin").write_bytes(b"s" * 50_000)  # same bytes in both repos (separate blobs)
        repo = Repo(f"acme/race{i}")
        repo.commit(_files(folder))
        repos.append(repo)
        sources[repo.repo_id] = (str(folder), sorted(_files(folder)))
    with HubServer(repos) as hub:
        for repo in repos:
            assert vcache.pull(repo.repo_id, endpoint=hub.endpoint, cache_dir=cache).ok
        for n in range(4):
            holders.append(
                _start(WORKER, hub.endpoint, str(cache), json.dumps(sources), str(seconds), str(tmp_path / f"result{n}.json"),
                       env=dict(os.environ), log=tmp_path / f"log{n}.txt")
            )  # fmt: skip
        removed = 0
        rounds = 0
        while any(p.poll() is None for p in holders):
            report = run_plan(plan_gc(cache, max_size=0, grace=0.0))
            removed += sum(r.kind == "revision" for r in report.removed)
            rounds += 1
            time.sleep(0.02)  # the Hub's threads live in this process too
        results = []
        for n, p in enumerate(holders):
            p.communicate()
            assert p.returncode == 0, (tmp_path / f"log{n}.txt").read_text()
            results.append(json.loads((tmp_path / f"result{n}.json").read_text()))
    assert removed > 0 and rounds > 10, (removed, rounds)  # gc really ran between the loads
    assert all(r["broken"] == [] and r["wrong"] == [] for r in results), results
    assert all(r["clear"] == [] and r["ok"] >= 5 for r in results), results
    assert scan_cache_dir(cache).warnings == []
    for info in list_cache(cache).repos:  # what is left is whole and verified
        assert all(rev.verdict == "ok" for rev in info.revisions)


def test_plan_removal_refuses_unknown_revisions(cache_dir: Path) -> None:
    repo = _small_repo("acme/one", 1000, 5)
    with HubServer([repo]) as hub:
        assert vcache.pull("acme/one", endpoint=hub.endpoint, cache_dir=cache_dir).ok
    commit = CacheRepo(cache_dir, "acme/one").snapshots()[0]
    assert [
        r.name for r in plan_removal(cache_dir, "acme/one", commit[:7]).removals if r.kind == "revision"
    ] == [commit]
    with pytest.raises(UsageError, match="not in the cache"):
        plan_removal(cache_dir, "acme/one", "nope")
    with pytest.raises(UsageError, match="not in the cache"):
        plan_removal(cache_dir, "acme/none")
    assert run("rm", "acme/one@", "--cache-dir", str(cache_dir), "--yes").exit_code == 2


def test_a_repo_pulled_again_after_rm_gets_its_tree_listing_back_and_offline_misses_are_clear(
    cache_dir: Path,
) -> None:
    """huggingface_hub keeps every tree listing it read in memory for the life of the process; after rm deleted
    ``trees/<commit>.json``, a pull in the same process must still write it again (offline verify relies on it)."""
    repo = _small_repo("acme/again", 5000, 7)
    with HubServer([repo]) as hub:
        assert vcache.pull("acme/again", endpoint=hub.endpoint, cache_dir=cache_dir).ok
        commit = CacheRepo(cache_dir, "acme/again").snapshots()[0]
        assert run_plan(plan_removal(cache_dir, "acme/again")).removed
        with pytest.raises(vcache.OfflineError):
            vcache.pull("acme/again", cache_dir=cache_dir, local_files_only=True)
        assert vcache.pull("acme/again", endpoint=hub.endpoint, cache_dir=cache_dir).ok
    assert CacheRepo(cache_dir, "acme/again").tree_path(commit).is_file()
    assert vcache.pull("acme/again", cache_dir=cache_dir, local_files_only=True).ok
