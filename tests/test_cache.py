"""The cache layout is huggingface_hub's own: it reads what vcache writes, unchanged."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

import vcache.cache
from vcache.cache import CacheRepo, iter_repo_folders, read_state
from vcache.hashing import git_blob_sha1
from vcache.ledger import EntryState, Ledger, StatToken, entry_state, states_from_json
from vcache.report import warn


def _publish(repo: CacheRepo, commit: str, path: str, data: bytes) -> str:
    etag = git_blob_sha1(data)
    repo.ensure_layout()
    tmp = repo.partials / "x.part"
    tmp.write_bytes(data)
    repo.publish_blob(tmp, etag)
    repo.link(commit, path, etag)
    return etag


def test_layout_matches_huggingface_hub(cache_dir: Path) -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache

    repo = CacheRepo(cache_dir, "acme/tiny")
    commit = "c" * 40
    e1 = _publish(repo, commit, "config.json", b'{"a": 1}')
    e2 = _publish(repo, commit, "sub/dir/notes.txt", b"hi")
    repo.write_ref("main", commit)
    repo.write_tree(commit, {"config.json": (8, e1, None), "sub/dir/notes.txt": (2, e2, None)})

    link = repo.snapshot_dir(commit) / "sub/dir/notes.txt"
    assert link.is_symlink() and os.readlink(link) == f"../../../../blobs/{e2}"
    assert (repo.root / "refs" / "main").read_text() == commit  # no trailing newline
    assert (cache_dir / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert repo.read_tree(commit) == {"config.json": (8, e1, None), "sub/dir/notes.txt": (2, e2, None)}

    info = scan_cache_dir(cache_dir)
    assert info.warnings == []
    (r,) = info.repos
    assert r.repo_id == "acme/tiny" and r.nb_files == 2 and {x.commit_hash for x in r.revisions} == {commit}
    assert try_to_load_from_cache("acme/tiny", "config.json", cache_dir=cache_dir) == str(
        repo.snapshot_dir(commit) / "config.json"
    )
    got = snapshot_download("acme/tiny", cache_dir=cache_dir, local_files_only=True)
    assert got == str(repo.snapshot_dir(commit))


def test_vcache_state_inside_repo_is_tolerated(cache_dir: Path) -> None:
    from huggingface_hub import scan_cache_dir

    repo = CacheRepo(cache_dir, "acme/tiny")
    commit = "d" * 40
    etag = _publish(repo, commit, "a.txt", b"abc")
    Ledger(repo.ledger_dir).record(etag, repo.blob_path(etag), "gitsha1:" + etag, [])
    repo.write_ref("main", commit)
    assert (repo.root / ".vcache" / "ledger" / f"{etag}.json").exists()
    assert not (cache_dir / ".vcache").exists()
    assert scan_cache_dir(cache_dir).warnings == []


def test_link_is_atomic_replace_and_unlink(cache_dir: Path) -> None:
    repo = CacheRepo(cache_dir, "acme/tiny")
    commit = "e" * 40
    _publish(repo, commit, "a.txt", b"one")
    e2 = _publish(repo, commit, "a.txt", b"two")
    assert (repo.snapshot_dir(commit) / "a.txt").read_bytes() == b"two"
    assert repo.linked_etag(commit, "a.txt") == e2
    assert repo.unlink(commit, "a.txt") and not repo.unlink(commit, "a.txt")
    leftovers = [p for p in repo.snapshot_dir(commit).iterdir()]
    assert leftovers == []


def test_symlinks_disabled_copies(cache_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_DISABLE_SYMLINKS", "1")
    repo = CacheRepo(cache_dir, "acme/tiny")
    _publish(repo, "f" * 40, "a.txt", b"data")
    p = repo.snapshot_dir("f" * 40) / "a.txt"
    assert not p.is_symlink() and p.read_bytes() == b"data"


def test_ledger_trusts_only_unchanged_blobs(cache_dir: Path) -> None:
    repo = CacheRepo(cache_dir, "acme/tiny")
    etag = _publish(repo, "a" * 40, "w.bin", b"x" * 100)
    ledger = Ledger(repo.ledger_dir)
    blob = repo.blob_path(etag)
    rec = ledger.record(etag, blob, "gitsha1:" + etag, [warn("tensor.zero_rows", "m", tensor="t")])
    assert ledger.lookup(etag, blob) == rec and rec.findings[0].tensor == "t"
    st = os.stat(blob)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ledger.lookup(etag, blob) is None  # touched: verify again
    ledger.record(etag, blob, "gitsha1:" + etag, [])
    assert ledger.lookup(etag, blob) is not None
    (repo.ledger_dir / f"{etag}.json").write_text("{not json")
    assert ledger.lookup(etag, blob) is None
    (repo.ledger_dir / f"{etag}.json").write_text("[" * 990 + "]" * 990)  # too deep for Python's json
    assert ledger.lookup(etag, blob) is None
    derived = ledger.snapshot_record_path("a" * 40)
    assert ledger.write_derived(derived, {"files": {}})
    assert ledger.read_derived(derived) is not None
    derived.write_text("[" * 990 + "]" * 990)
    assert ledger.read_derived(derived) is None
    assert StatToken.of(blob).size == 100


def test_ledger_notices_bytes_changed_in_place_with_the_mtime_put_back(cache_dir: Path) -> None:
    """``os.utime`` can put size and mtime back, not ``st_ctime``: the unchanged-file test includes it."""
    repo = CacheRepo(cache_dir, "acme/tiny")
    commit = "a" * 40
    etag = _publish(repo, commit, "w.bin", b"x" * 100)
    ledger = Ledger(repo.ledger_dir)
    blob = repo.blob_path(etag)
    ledger.record(etag, blob, "gitsha1:" + etag, [])
    link = repo.snapshot_dir(commit) / "w.bin"
    before = entry_state(link)
    st = os.stat(blob)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"y")
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(blob).st_size, os.stat(blob).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert ledger.lookup(etag, blob) is None
    assert entry_state(link) != before  # the derived records (snapshot, transformers verdicts) see it too


def test_entry_state_reads_back_from_a_record_as_written(cache_dir: Path) -> None:
    """A state is stored as the JSON list of its fields (the form records have always had) and reads back equal."""
    repo = CacheRepo(cache_dir, "acme/tiny")
    commit = "c" * 40
    etag = _publish(repo, commit, "w.bin", b"x" * 100)
    link = repo.snapshot_dir(commit) / "w.bin"
    state = entry_state(link)
    assert state is not None and state.link == os.readlink(link) and state.regular
    blob = os.stat(repo.blob_path(etag))
    as_written = [state.link, blob.st_ino, blob.st_size, blob.st_mtime_ns, blob.st_ctime_ns, True]
    assert json.loads(json.dumps(state)) == as_written
    assert EntryState.from_json(as_written) == state and EntryState.from_json(None) is None
    assert states_from_json({"w.bin": as_written, "gone": None}) == {"w.bin": state, "gone": None}
    for bad in ([1, 2], "x", [None, "1", 1, 1, 1, True], [None, 1, 1, 1, 1, 1], {"a": 1}):
        with pytest.raises(ValueError):
            EntryState.from_json(bad)
    with pytest.raises(ValueError):
        states_from_json([as_written])


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_ledger_trusts_only_regular_files(cache_dir: Path, tmp_path: Path, kind: str) -> None:
    """A blob replaced by something that is not a regular file is never vouched for, even when it leads to
    the very inode that was verified (moved outside the cache, a symlink left in its place)."""
    repo = CacheRepo(cache_dir, "acme/tiny")
    commit = "b" * 40
    etag = _publish(repo, commit, "w.bin", b"x" * 100)
    ledger = Ledger(repo.ledger_dir)
    blob = repo.blob_path(etag)
    ledger.record(etag, blob, "gitsha1:" + etag, [])
    link = repo.snapshot_dir(commit) / "w.bin"
    before = entry_state(link)
    if kind == "symlink":
        moved = tmp_path / "moved.bin"
        os.rename(blob, moved)
        os.symlink(moved, blob)
    elif kind == "fifo":
        blob.unlink()
        os.mkfifo(blob)
    else:
        blob.unlink()
        blob.mkdir()
    assert ledger.lookup(etag, blob) is None
    assert entry_state(link) != before
    with pytest.raises(OSError, match="not a regular file"):
        ledger.record(etag, blob, "gitsha1:" + etag, [])


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"[" * 990 + b"]" * 990, "nested too deeply"),
        (b'{"etag": ' + b"[" * 100_000, "nested too deeply"),
        (b'{"size": ' + b"7" * 5000 + b"}", "not valid JSON"),  # int() refuses over 4300 digits
        (b'{"torn', "not valid JSON"),
        (b'{"a": "\xff"}', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{" + b" " * 100 + b"}", "larger than 64 bytes"),
    ],
)
def test_own_state_that_cannot_be_used_is_absent_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, why: str
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="vcache.cache"):
        assert read_state(path, max_bytes=64 if why.startswith("larger") else 1 << 20) is None
    (record,) = caplog.records
    assert str(path) in record.getMessage() and why in record.getMessage()
    assert path.read_bytes() == content  # nothing deleted


def test_absent_state_is_absent_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_bytes(b"{}")
    with caplog.at_level(logging.WARNING):
        assert read_state(tmp_path / "missing.json") is None
        assert read_state(tmp_path / "file" / "below-a-file.json") is None
        assert read_state(tmp_path / "file") == {}
    assert caplog.records == []


@pytest.mark.parametrize(
    "files",
    [
        [["config.json", 1]],
        {"config.json": {"size": "12", "blob_id": "a" * 40}},
        {"config.json": {"size": 12, "blob_id": None}},
        {"m.safetensors": {"size": 12, "blob_id": "a" * 40, "lfs_sha256": ["b" * 64]}},
    ],
)
def test_a_tree_file_of_the_wrong_shape_is_absent_with_a_warning(
    cache_dir: Path, caplog: pytest.LogCaptureFixture, files: object
) -> None:
    repo = CacheRepo(cache_dir, "acme/tiny")
    commit = "c" * 40
    repo.write_tree(commit, {"config.json": (12, "a" * 40, None), "m.safetensors": (9, "d" * 40, "b" * 64)})
    assert repo.read_tree(commit) == {
        "config.json": (12, "a" * 40, None),
        "m.safetensors": (9, "d" * 40, "b" * 64),
    }
    path = repo.root / "trees" / f"{commit}.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "files": files}))
    with caplog.at_level(logging.WARNING, logger=vcache.cache.__name__):
        assert repo.read_tree(commit) is None
    assert str(path) in caplog.text


def test_iter_repo_folders(cache_dir: Path) -> None:
    for name in ("models--a--b", "datasets--c--d", "spaces--e", ".locks", "junk", "models--x"):
        (cache_dir / name).mkdir(parents=True)
    got = {(t, r) for t, r, _ in iter_repo_folders(cache_dir)}
    assert got == {("model", "a/b"), ("dataset", "c/d"), ("space", "e"), ("model", "x")}


@pytest.mark.parametrize("repo_type", ["model", "dataset", "space"])
@pytest.mark.parametrize("repo_id", ["gpt2", "acme/tiny-llama", "org/name.with-dots_and-dashes"])
def test_repo_folder_is_huggingface_hubs_own_name(cache_dir: Path, repo_id: str, repo_type: str) -> None:
    from huggingface_hub.file_download import repo_folder_name

    expected = repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    assert CacheRepo(cache_dir, repo_id, repo_type).folder_name == expected


def _tree_outside(root: Path, cache_dir: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if cache_dir != p and cache_dir not in p.parents
    }


_PATH_BUILDERS = {
    "write_ref": lambda r, n: r.write_ref(n, "c" * 40),
    "read_ref": lambda r, n: r.read_ref(n),
    "blob_path": lambda r, n: r.blob_path(n),
    "lock_path": lambda r, n: r.lock_path(n),
    "snapshot_dir": lambda r, n: r.snapshot_dir(n),
    "link_commit": lambda r, n: r.link(n, "a.txt", "e" * 40),
    "link_etag": lambda r, n: r.link("c" * 40, "a.txt", n),
    "write_tree": lambda r, n: r.write_tree(n, {"a.txt": (1, "e" * 40, None)}),
    "read_tree": lambda r, n: r.read_tree(n),
}


@pytest.mark.parametrize(
    ("builder", "name"),
    [
        ("write_ref", "../../../outside"),
        ("write_ref", "../../../../made/dirs"),
        ("write_ref", "/abs"),
        ("write_ref", "a//b"),
        ("read_ref", "../../../outside"),
        ("blob_path", "../../../outside"),
        ("blob_path", "sub/name"),
        ("blob_path", ""),
        ("lock_path", "../../../outside"),
        ("snapshot_dir", ".."),
        ("snapshot_dir", "../../../outside"),
        ("link_commit", "../../../outside"),
        ("link_etag", "../../../outside"),
        ("write_tree", "../../../outside"),
        ("read_tree", "../../../outside"),
    ],
)
def test_every_path_the_cache_builds_stays_inside_the_repo_folder(
    tmp_path: Path, builder: str, name: str
) -> None:
    """Defence in depth: whatever name reaches CacheRepo, it refuses to build a path outside its folder."""
    from vcache.errors import UnsafePath

    cache_dir = tmp_path / "deep" / "er" / "cache"
    repo = CacheRepo(cache_dir, "acme/tiny")
    repo.ensure_layout()
    (tmp_path / "outside").write_text("precious")
    (tmp_path / "outside.json").write_text("{}")
    before = _tree_outside(tmp_path, cache_dir)
    with pytest.raises(UnsafePath) as err:
        _PATH_BUILDERS[builder](repo, name)
    assert repr(name) in str(err.value)
    assert _tree_outside(tmp_path, cache_dir) == before
    assert (tmp_path / "outside").read_text() == "precious"


def test_ref_names_with_slashes_stay_nested_in_refs(cache_dir: Path) -> None:
    repo = CacheRepo(cache_dir, "acme/tiny")
    repo.write_ref("refs/pr/1", "c" * 40)
    assert (repo.root / "refs" / "refs" / "pr" / "1").read_text() == "c" * 40
    assert repo.read_ref("refs/pr/1") == "c" * 40


@pytest.mark.parametrize(
    ("path", "blob_id"), [("a.txt", "../../../../outside"), ("../../outside", "e" * 40), ("a.txt", "x/y")]
)
def test_a_tree_file_naming_entries_outside_the_repo_folder_is_not_used(
    cache_dir: Path, path: str, blob_id: str
) -> None:
    """``trees/<commit>.json`` is read back as it was written: a damaged one must not lead anywhere."""
    import json

    from huggingface_hub._tree_cache import TREE_CACHE_FORMAT_VERSION

    repo = CacheRepo(cache_dir, "acme/tiny")
    (repo.root / "trees").mkdir(parents=True)
    good = {"ok.txt": {"size": 1, "blob_id": "e" * 40}}
    for commit, files in (("c" * 40, {**good, path: {"size": 1, "blob_id": blob_id}}), ("d" * 40, good)):
        doc = {"format_version": TREE_CACHE_FORMAT_VERSION, "files": files}
        (repo.root / "trees" / f"{commit}.json").write_text(json.dumps(doc))
    assert repo.read_tree("c" * 40) is None
    assert repo.read_tree("d" * 40) == {"ok.txt": (1, "e" * 40, None)}


def test_a_tree_file_deleted_since_it_was_read_reads_as_absent(cache_dir: Path) -> None:
    """huggingface_hub keeps every listing it read in memory; a file deleted since (by gc) is absent all the same."""
    repo = CacheRepo(cache_dir, "acme/tiny")
    commit = "f" * 40
    repo.ensure_layout()
    repo.write_tree(commit, {"a.txt": (3, git_blob_sha1(b"abc"), None)})
    assert repo.read_tree(commit) == {"a.txt": (3, git_blob_sha1(b"abc"), None)}
    repo.tree_path(commit).unlink()
    assert repo.read_tree(commit) is None
