"""Lockfiles: `vcache lock`, locked pulls (`pull --lock`, `lock=`, `VCACHE_LOCK`) and `verify --lock`.

Every test runs against the local Hub (`vcache.testing.hub`) serving real safetensors files; a server that
changes a file under a commit, moves a branch, forgets a commit or sends no digest is modelled with its
faults and knobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from test_cli import REPO, SHARD1, one_error_line, run, vcache
from vcache.cache import CacheRepo
from vcache.errors import UsageError, VerificationFailed
from vcache.hub import HubClient
from vcache.lockfile import Lock, LockedFile, LockedRepo
from vcache.pull import pull, snapshot_download
from vcache.quarantine import list_entries
from vcache.testing.hub import Fault, HubServer, Repo
from vcache.testing.models import repo_from_folder

SHARD2 = "model-00002-of-00002.safetensors"
OTHER = "acme/other"
NO_BACKOFF = {"VCACHE_RETRY_BACKOFF": "0"}


def lock_cli(hub: HubServer, lockfile: Path, cache: Path, *args: str) -> Any:
    res = run(
        "lock", *args, "-o", str(lockfile), "--cache-dir", str(cache), "-q", env={"HF_ENDPOINT": hub.endpoint}
    )
    assert res.exit_code == 0, res.output
    return res


def changed_shard(folder: Path, name: str = SHARD1) -> bytes:
    """The shard with every value of its first tensor negated: valid safetensors, same layout and size."""
    from safetensors.numpy import load_file, save

    tensors = load_file(folder / name)
    first = sorted(tensors)[0]
    tensors[first] = -tensors[first]
    data = save(tensors, metadata={"format": "pt"})
    assert len(data) == (folder / name).stat().st_size and data != (folder / name).read_bytes()
    return data


def flip_byte(path: Path, offset: int) -> None:
    """Flip one byte of a (read-only) cache file in place: bit rot, or a careless edit."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entries(text: str) -> dict[str, str]:
    """The lockfile text of each repo entry, by repo id."""
    out = {}
    for block in text.split("[[repo]]")[1:]:
        repo_id = re.search(r'^id = "([^"]+)"', block, re.M)
        assert repo_id is not None
        out[repo_id.group(1)] = block
    return out


@pytest.fixture
def lockfile(hub: HubServer, tmp_path: Path) -> Path:
    """`vcache lock acme/tiny-llama` against the fixture Hub, made in a cache of its own."""
    path = tmp_path / "vcache.lock"
    lock_cli(hub, path, tmp_path / "locking-cache", REPO)
    return path


# -- the lockfile ----------------------------------------------------------------------------------------------


def test_lock_pins_every_file_with_its_sha256_and_the_same_state_locks_byte_identical(
    hub: HubServer, llama_folder: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.lock", tmp_path / "b.lock"
    res = lock_cli(hub, first, tmp_path / "cache-a", REPO)
    assert REPO in res.output and f"wrote {first}" in res.output
    lock_cli(hub, second, tmp_path / "cache-b", REPO)  # another cache, the same state
    assert first.read_bytes() == second.read_bytes()
    lock_cli(hub, second, tmp_path / "cache-b", REPO)  # again, from the cache: still the same bytes
    assert first.read_bytes() == second.read_bytes()

    (entry,) = Lock.read(first).repos
    assert (entry.repo_id, entry.repo_type, entry.revision) == (REPO, "model", "main")
    assert entry.commit == hub._repo("model", REPO).resolve("main")  # type: ignore[union-attr]
    on_disk = sorted(p.relative_to(llama_folder).as_posix() for p in llama_folder.rglob("*") if p.is_file())
    assert [f.path for f in entry.files] == on_disk
    for f in entry.files:  # small files too: sha256 of the bytes, not the Hub's git sha1
        assert (f.size, f.sha256) == ((llama_folder / f.path).stat().st_size, sha256(llama_folder / f.path))


def test_update_moves_one_repo_prints_the_change_and_leaves_the_other_repos_lines(
    llama_folder: Path, tmp_path: Path
) -> None:
    other = Repo(OTHER)
    first = other.commit({"a.txt": b"a\n", "b.txt": b"b\n", "c.json": b"{}\n"})
    with HubServer([repo_from_folder(REPO, llama_folder), other]) as hub:
        lockfile, cache = tmp_path / "vcache.lock", tmp_path / "cache"
        lock_cli(hub, lockfile, cache, REPO, OTHER, "--exclude", "*.md")
        before = lockfile.read_text()
        assert list(entries(before)) == [OTHER, REPO]  # sorted by id, so a diff does not move entries

        second = other.commit({"b.txt": b"B\n", "d.txt": b"d\n"}, delete=["a.txt"])
        res = lock_cli(hub, lockfile, cache, "--update", OTHER)
        assert f"{OTHER}: {first[:12]} -> {second[:12]} (1 added, 1 removed, 1 changed)" in res.output
        assert "  + d.txt" in res.output and "  - a.txt" in res.output and "  ~ b.txt" in res.output

        after = lockfile.read_text()
        assert entries(after)[REPO] == entries(before)[REPO]  # byte for byte
        updated = Lock.read(lockfile).find(OTHER)
        assert updated is not None and updated.commit == second and updated.exclude == ("*.md",)
        assert [f.path for f in updated.files] == ["b.txt", "c.json", "d.txt"]
        assert "unchanged" in lock_cli(hub, lockfile, cache, "--update", OTHER).output
        assert lockfile.read_text() == after


def _valid_lock_text() -> str:
    entry = LockedRepo(
        REPO,
        "model",
        "main",
        "a" * 40,
        files=(LockedFile("config.json", 2, "0" * 64), LockedFile("w.bin", 3, "1" * 64)),
    )
    return Lock((entry,)).render()


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("version = 1", "version = 2", "version 2"),
        ('sha256 = "' + "1" * 64, 'sha256 = "' + "1" * 63 + "Z", "64 lowercase hex"),
        ('path = "w.bin"', 'path = "config.json"', "twice"),
        ('path = "w.bin"', 'path = "../../outside"', "escape"),
        ('path = "w.bin"', 'path = "/etc/passwd"', "escape"),
        ("exclude = []", 'exclude = []\nsigned = "yes"', "unknown key"),
        ("exclude = []", 'exclude = []\nsignature = "pgp:me"', "is not a METHOD"),
    ],
    ids=["version", "sha256", "duplicate-path", "dotdot-path", "absolute-path", "unknown-key", "signature"],
)
def test_an_invalid_lockfile_is_refused_with_exit_2_naming_it(
    tmp_path: Path, old: str, new: str, needle: str
) -> None:
    text = _valid_lock_text()
    assert old in text
    path = tmp_path / "bad.lock"
    path.write_text(text.replace(old, new, 1))
    done = vcache("pull", "--lock", str(path), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 2
    line = one_error_line(done)
    assert str(path) in line and needle in line, line
    with pytest.raises(UsageError, match=re.escape(needle)):
        Lock.read(path)


def test_the_lockfile_round_trips_names_that_need_escaping() -> None:
    entry = LockedRepo(
        REPO,
        "dataset",
        "refs/pr/1",
        "b" * 40,
        include=('we"ird\\*', "ünï/*"),
        files=(LockedFile('dir/a "quoted" näme #1.txt', 0, "2" * 64),),
        signature='key:keys/pub "1".pem',
    )
    lock = Lock((entry,))
    assert Lock.parse(lock.render()) == lock
    assert Lock.parse(lock.render()).render() == lock.render()


# -- locked pulls ----------------------------------------------------------------------------------------------


def test_changed_bytes_under_the_same_commit_fail_the_locked_pull_and_pass_without_it(
    hub: HubServer, llama_folder: Path, lockfile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_bytes = changed_shard(llama_folder)
    hub.fault(REPO, SHARD1, Fault.new_version(new_bytes))  # the server's own digest follows the new bytes
    listed = {
        f.path: f for f in HubClient(hub.endpoint, None).list_files(REPO, Lock.read(lockfile).repos[0].commit)
    }
    assert listed[SHARD1].lfs_sha256 == hashlib.sha256(new_bytes).hexdigest()  # consistent with itself

    cache = tmp_path / "ci-cache"
    env = {"HF_ENDPOINT": hub.endpoint, **NO_BACKOFF}
    done = vcache("pull", "--lock", str(lockfile), "--cache-dir", str(cache), "-q", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    line = next(ln for ln in done.stdout.splitlines() if "[lock.digest_mismatch]" in ln)
    assert SHARD1 in line

    (entry,) = [e for e in list_entries(cache) if e.path == SHARD1]
    assert entry.data.read_bytes() == new_bytes  # quarantined, not deleted
    repo = CacheRepo(cache, REPO)
    commit = Lock.read(lockfile).repos[0].commit
    assert not os.path.lexists(repo.snapshot_file(commit, SHARD1))
    assert not repo.blob_path(hashlib.sha256(new_bytes).hexdigest()).exists()  # nothing published
    assert repo.read_ref("main") is None and repo.read_tree(commit) is None  # refs untouched

    # The Python API refuses the same way, with the lock given or from VCACHE_LOCK.
    with pytest.raises(VerificationFailed, match=re.escape(SHARD1)):
        snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache, lock=lockfile)
    with monkeypatch.context() as env_lock:
        env_lock.setenv("VCACHE_LOCK", str(lockfile))
        report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache)
        failing = [x.code for fr in report.failed for x in fr.findings if x.code.startswith("lock.")]
        assert SHARD1 in [fr.path for fr in report.failed] and failing == ["lock.digest_mismatch"]
        assert pull(REPO, endpoint=hub.endpoint, cache_dir=tmp_path / "c2", lock=False).ok  # an opt-out

    # Without the lock the server is consistent with itself, so the same pull succeeds.
    assert run("pull", REPO, "--cache-dir", str(cache), "-q", env=env).exit_code == 0
    # And the cache the lock was made in still matches it: nothing is fetched, it passes.
    before = len(hub.body_requests(REPO, SHARD1))
    res = run("pull", "--lock", str(lockfile), "--cache-dir", str(tmp_path / "locking-cache"), "-q", env=env)
    assert res.exit_code == 0, res.output
    assert len(hub.body_requests(REPO, SHARD1)) == before


def test_a_repo_the_lock_does_not_pin_is_a_usage_error_naming_the_lock(
    hub: HubServer, lockfile: Path, tmp_path: Path
) -> None:
    done = vcache(
        "pull",
        OTHER,
        "--lock",
        str(lockfile),
        "--cache-dir",
        str(tmp_path / "c"),
        env={"HF_ENDPOINT": hub.endpoint},
    )
    assert done.returncode == 2
    line = one_error_line(done)
    assert OTHER in line and str(lockfile) in line
    with pytest.raises(UsageError, match="pins acme/tiny-llama@main"):
        pull(REPO, revision="v2", endpoint=hub.endpoint, cache_dir=tmp_path / "c", lock=lockfile)
    assert not (tmp_path / "c").exists()  # refused before anything was asked or written


def test_a_force_pushed_branch_still_pulls_the_locked_commit_and_a_lost_commit_exits_3(
    llama_folder: Path, tmp_path: Path
) -> None:
    repo = repo_from_folder(REPO, llama_folder)
    with HubServer([repo]) as hub:
        lockfile = tmp_path / "vcache.lock"
        lock_cli(hub, lockfile, tmp_path / "locking-cache", REPO)
        locked = repo.resolve("main")
        repo.commit({"config.json": b'{"rewritten": true}\n'}, branch="rewrite", message="history rewritten")
        repo.branch("main", "rewrite")  # a force-push: main no longer contains the locked commit
        assert repo.resolve("main") != locked

        cache = tmp_path / "cache"
        res = run(
            "pull",
            "--lock",
            str(lockfile),
            "--cache-dir",
            str(cache),
            "--json",
            env={"HF_ENDPOINT": hub.endpoint},
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["commit"] == locked
        cached = CacheRepo(cache, REPO)
        assert cached.read_ref("main") == locked
        assert (
            cached.snapshot_file(locked, "config.json").read_bytes()
            == (llama_folder / "config.json").read_bytes()
        )
        assert not (cached.root / "snapshots" / repo.resolve("main")).exists()

        gone = Repo(REPO)  # the server lost the locked commit (garbage-collected after the force-push)
        gone.commit({"config.json": b"{}\n"})
        hub.add_repo(gone)
        done = vcache(
            "pull",
            "--lock",
            str(lockfile),
            "--cache-dir",
            str(tmp_path / "fresh"),
            env={"HF_ENDPOINT": hub.endpoint},
        )
        assert done.returncode == 3
        assert locked in one_error_line(done)


def test_a_server_that_sends_no_digest_is_checked_byte_for_byte_against_the_lock(
    hub: HubServer, llama_folder: Path, lockfile: Path, tmp_path: Path
) -> None:
    hub.digests = False  # a mirror: no lfs sha256 in listings, no ETag / X-Linked-Etag anywhere
    commit = Lock.read(lockfile).repos[0].commit
    assert all(f.lfs_sha256 is None for f in HubClient(hub.endpoint, None).list_files(REPO, commit))
    env = {"HF_ENDPOINT": hub.endpoint, **NO_BACKOFF}

    cache = tmp_path / "mirror-cache"
    res = run("pull", "--lock", str(lockfile), "--cache-dir", str(cache), "--json", env=env)
    assert res.exit_code == 0, res.output
    files = {f["path"]: f for f in json.loads(res.output)["files"]}
    for path, f in files.items():
        assert f["digest"] == f"sha256:{sha256(llama_folder / path)}" and f["verdict"] == "ok"
    # LFS files, which the mirror names by their pointer's git id, are stored under their locked sha256,
    # so the cache stays consistent for every tool: a plain verify (no lock) passes.
    assert "lock.server_digest" in [x["code"] for x in files[SHARD1]["findings"]]
    assert CacheRepo(cache, REPO).linked_etag(commit, SHARD1) == sha256(llama_folder / SHARD1)
    assert run("verify", REPO, "--cache-dir", str(cache), env=env).exit_code == 0

    hub.fault(REPO, SHARD2, Fault.flip_byte(4096, times=None))  # one byte, every time
    done = vcache("pull", "--lock", str(lockfile), "--cache-dir", str(tmp_path / "flipped"), "-q", env=env)
    assert done.returncode == 1
    line = next(ln for ln in done.stdout.splitlines() if "[lock.digest_mismatch]" in ln)
    assert SHARD2 in line


# -- verify --lock ---------------------------------------------------------------------------------------------


def test_verify_lock_offline_passes_then_catches_a_flipped_byte_and_a_missing_repo(
    hub: HubServer, lockfile: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    online = {"HF_ENDPOINT": hub.endpoint}
    assert run("pull", "--lock", str(lockfile), "--cache-dir", str(cache), "-q", env=online).exit_code == 0
    hub.stop()  # offline from here on: nothing can be asked
    offline = {"HF_HUB_OFFLINE": "1"}
    done = vcache("verify", "--lock", str(lockfile), "--cache-dir", str(cache), env=offline)
    assert done.returncode == 0, done.stdout + done.stderr

    commit = Lock.read(lockfile).repos[0].commit
    blob = CacheRepo(cache, REPO).snapshot_file(commit, SHARD2).resolve()
    flip_byte(blob, 4096)  # changes the ctime: the ledger no longer vouches for the blob
    done = vcache("verify", "--lock", str(lockfile), "--cache-dir", str(cache), env=offline)
    assert done.returncode == 1
    assert any(SHARD2 in ln and "FAIL" in ln for ln in done.stdout.splitlines()), done.stdout

    done = vcache("verify", "--lock", str(lockfile), "--cache-dir", str(tmp_path / "empty"), env=offline)
    assert done.returncode == 1
    assert f"{REPO}@{commit[:12]}: fail" in done.stdout and "not in the cache" in done.stdout


def test_verify_lock_deep_rehashes_what_the_ledger_vouches_for(
    hub: HubServer, lockfile: Path, tmp_path: Path
) -> None:
    from vcache.ledger import Ledger

    cache = tmp_path / "cache"
    assert (
        run(
            "pull",
            "--lock",
            str(lockfile),
            "--cache-dir",
            str(cache),
            "-q",
            env={"HF_ENDPOINT": hub.endpoint},
        ).exit_code
        == 0
    )
    repo = CacheRepo(cache, REPO)
    commit = Lock.read(lockfile).repos[0].commit
    etag = repo.linked_etag(commit, "config.json")
    assert etag is not None and len(etag) == 40  # a small file: named by its git sha1, locked by sha256
    blob = repo.blob_path(etag)
    flip_byte(blob, 3)
    # A ledger record that vouches for the changed bytes (say, written by a buggy tool): the fast path
    # believes it, --deep does not.
    ledger = Ledger(repo.ledger_dir)
    old = ledger.get(etag)
    assert old is not None and old.sha256 is not None
    ledger.record(etag, blob, old.digest, old.findings, sha256=old.sha256)
    offline = {"HF_HUB_OFFLINE": "1"}
    assert run("verify", "--lock", str(lockfile), "--cache-dir", str(cache), env=offline).exit_code == 0
    res = run("verify", "--lock", str(lockfile), "--cache-dir", str(cache), "--deep", env=offline)
    assert res.exit_code == 1
    assert any("config.json" in ln and "FAIL" in ln for ln in res.output.splitlines()), res.output


def test_the_ledger_keeps_the_sha256_of_small_files_and_reads_old_records(
    hub: HubServer, cache_dir: Path
) -> None:
    from vcache.ledger import Ledger, LedgerRecord

    report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir)
    assert report.ok
    repo = CacheRepo(cache_dir, REPO)
    ledger = Ledger(repo.ledger_dir)
    etag = repo.linked_etag(report.commit or "", "config.json")
    assert etag is not None
    rec = ledger.get(etag)
    assert rec is not None and rec.sha256 == sha256(repo.blob_path(etag))
    # A record written before the sha256 was kept still reads, and the sha256 is filled in once.
    legacy = rec.to_json()
    del legacy["sha256"]
    assert LedgerRecord.from_json(legacy).sha256 is None
    (repo.ledger_dir / f"{etag}.json").write_text(json.dumps(legacy))
    assert ledger.lookup(etag, repo.blob_path(etag)) is not None
    assert ledger.sha256(etag, repo.blob_path(etag)) == rec.sha256
    again = ledger.get(etag)
    assert again is not None and again.sha256 == rec.sha256


def test_a_locked_file_the_server_lacks_fails_and_a_file_the_lock_lacks_is_not_fetched(
    hub: HubServer, lockfile: Path, tmp_path: Path
) -> None:
    (entry,) = Lock.read(lockfile).repos
    notes = "sub/dir/notes.txt"
    kept = tuple(f for f in entry.files if f.path != notes)
    ghost = LockedFile("ghost.json", 3, "3" * 64)
    edited = Lock((replace(entry, files=(*kept, ghost)),)).write(tmp_path / "edited.lock")
    hub.clear_log()

    res = run(
        "pull",
        "--lock",
        str(edited),
        "--cache-dir",
        str(tmp_path / "c"),
        "--json",
        env={"HF_ENDPOINT": hub.endpoint},
    )
    assert res.exit_code == 1, res.output
    files = {f["path"]: f for f in json.loads(res.output)["files"]}
    assert [x["code"] for x in files["ghost.json"]["findings"]] == ["lock.missing_file"]
    assert [x["code"] for x in files[notes]["findings"]] == ["lock.unlisted"]
    assert hub.body_requests(REPO, notes) == [] and hub.body_requests(REPO, "ghost.json") == []
    assert all(files[f.path]["verdict"] == "ok" for f in kept)


def test_a_cached_blob_is_trusted_under_a_lock_only_when_its_verified_sha256_is_the_locked_one(
    hub: HubServer, llama_folder: Path, lockfile: Path, tmp_path: Path
) -> None:
    original = (llama_folder / "config.json").read_bytes()
    config = original.replace(b'"silu"', b'"gelu"')  # same size: the bytes must be fetched to be refused
    assert config != original and len(config) == len(original)
    hub.fault(REPO, "config.json", Fault.new_version(config))
    cache = tmp_path / "cache"
    env = {"HF_ENDPOINT": hub.endpoint, **NO_BACKOFF}
    assert run("pull", REPO, "--cache-dir", str(cache), "-q", env=env).exit_code == 0  # the server's version
    repo = CacheRepo(cache, REPO)
    commit = Lock.read(lockfile).repos[0].commit
    served = repo.snapshot_file(commit, "config.json")
    assert served.read_bytes() == config

    hub.clear_log()
    res = run("pull", "--lock", str(lockfile), "--cache-dir", str(cache), "--json", env=env)
    assert res.exit_code == 1
    files = {f["path"]: f for f in json.loads(res.output)["files"]}
    assert "lock.digest_mismatch" in [x["code"] for x in files["config.json"]["findings"]]
    assert files[SHARD1]["cached"] and files[SHARD1]["verdict"] == "ok"  # these match the lock: not fetched
    assert {r.file_path for r in hub.body_requests(REPO)} == {"config.json"}
    assert served.read_bytes() == config  # the snapshot the plain pull made is left as it was


# -- signatures ------------------------------------------------------------------------------------------------


def test_a_lock_made_with_a_signature_method_requires_it_in_every_locked_pull(
    llama_folder: Path, tmp_path: Path
) -> None:
    pytest.importorskip("model_signing", reason="needs the signing extra: pip install 'vcache[signing]'")
    import shutil

    from test_signing import REPO as SIGNED  # (test_signing imports model_signing: skipped above without it)
    from test_signing import key_method, make_key, sign_folder
    from vcache.signing import SIGNATURE_FILE

    publisher, other = make_key(tmp_path, "publisher"), make_key(tmp_path, "other")
    model = Path(shutil.copytree(llama_folder, tmp_path / "model"))
    sign_folder(model, key=publisher)
    method, wrong = key_method(publisher), key_method(other)
    with HubServer([repo_from_folder(SIGNED, model)]) as hub:
        env = {"HF_ENDPOINT": hub.endpoint}
        lockfile, unsigned_lock = tmp_path / "vcache.lock", tmp_path / "unsigned.lock"
        lock_cli(hub, lockfile, tmp_path / "locking-cache", SIGNED, "--verify-signature", method)
        (entry,) = Lock.read(lockfile).repos
        assert entry.signature == method and f'signature = "{method}"' in lockfile.read_text()
        assert entry.file(SIGNATURE_FILE) is not None  # locked with the other files

        # A locked pull that names no method checks the recorded one, online and offline.
        cache = tmp_path / "cache"
        report = pull(SIGNED, endpoint=hub.endpoint, cache_dir=cache, lock=lockfile)
        assert report.ok, report.to_json()
        verified = [x for fr in report.files for x in fr.findings if x.code == "signature.verified"]
        assert verified and verified[0].detail["method"] == method
        offline = pull(SIGNED, cache_dir=cache, local_files_only=True, lock=lockfile)
        assert offline.ok and any(x.code == "signature.verified" for fr in offline.files for x in fr.findings)
        # The same method given again is fine.
        assert pull(SIGNED, endpoint=hub.endpoint, cache_dir=cache, lock=lockfile, verify_signature=method).ok

        # The recorded method is required: a lock recording another key fails the pull (exit 1, no ref).
        other_lock = tmp_path / "other.lock"
        other_lock.write_text(lockfile.read_text().replace(method, wrong))
        res = run("pull", "--lock", str(other_lock), "--cache-dir", str(tmp_path / "c2"), "-q", env=env)
        assert res.exit_code == 1, res.output
        assert "[signature.untrusted]" in res.output
        assert CacheRepo(tmp_path / "c2", SIGNED).read_ref("main") is None

        # A different --verify-signature than the lock records: exit 2 naming the lock, nothing asked.
        requests = len(hub.log)
        done = vcache(
            "pull",
            "--lock",
            str(lockfile),
            "--verify-signature",
            wrong,
            "--cache-dir",
            str(tmp_path / "c3"),
            env=env,
        )
        assert done.returncode == 2
        line = one_error_line(done)
        assert str(lockfile) in line and method in line and wrong in line
        with pytest.raises(UsageError, match="requires"):
            pull(
                SIGNED,
                endpoint=hub.endpoint,
                cache_dir=tmp_path / "c3",
                lock=lockfile,
                verify_signature=wrong,
            )
        assert len(hub.log) == requests and not (tmp_path / "c3").exists()

        # --update re-applies the recorded method, and refuses another one.
        lock_cli(hub, lockfile, tmp_path / "locking-cache", "--update", SIGNED)
        assert Lock.read(lockfile).repos[0].signature == method
        res = run(
            "lock",
            "--update",
            SIGNED,
            "--verify-signature",
            wrong,
            "-o",
            str(lockfile),
            "--cache-dir",
            str(tmp_path / "locking-cache"),
            "-q",
            env=env,
        )
        assert res.exit_code == 2 and Lock.read(lockfile).repos[0].signature == method

        # A lock without the signature file cannot check a signature: a usage error naming the file.
        lock_cli(hub, unsigned_lock, tmp_path / "locking-cache", SIGNED, "--exclude", SIGNATURE_FILE)
        assert Lock.read(unsigned_lock).repos[0].signature is None
        with pytest.raises(UsageError, match=re.escape(SIGNATURE_FILE)):
            pull(SIGNED, endpoint=hub.endpoint, cache_dir=cache, lock=unsigned_lock, verify_signature=method)
