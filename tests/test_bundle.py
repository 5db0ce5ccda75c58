"""Air-gapped transfer: `vcache export` on one cache, `vcache import` into another, and hostile bundles.

The source cache is filled by a real pull from the local test Hub; bundles are real tar files, written by the
exporter or crafted here with the standard tarfile module; the CLI runs as real processes (exit codes, pipes).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from vcache.bundle import MANIFEST_NAME, import_bundle, plan_export, write_bundle_file
from vcache.cache import CacheRepo
from vcache.errors import BadBundle
from vcache.pull import pull
from vcache.quarantine import list_entries
from vcache.report import Verdict

REPO = "acme/tiny-llama"
SHARD1 = "model-00001-of-00002.safetensors"
FOLDER = "models--acme--tiny-llama"


def vcache(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``vcache ARGS`` in a process of its own: the real exit code; never a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "vcache", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    return done


@pytest.fixture
def source(hub: Any, tmp_path: Path) -> Path:
    """A cache holding ``acme/tiny-llama`` at main, verified by a real pull."""
    cache = tmp_path / "source"
    assert pull(REPO, endpoint=hub.endpoint, cache_dir=cache).ok
    return cache


@pytest.fixture
def bundle(source: Path, tmp_path: Path) -> Path:
    """The bundle of ``acme/tiny-llama`` exported from ``source``."""
    path = tmp_path / "tiny.tar"
    write_bundle_file(plan_export([REPO], cache_dir=source), path)
    return path


def commit_of(cache: Path) -> str:
    commit = CacheRepo(cache, REPO).read_ref("main")
    assert commit is not None
    return commit


def blob_member(folder: Path, path: str) -> str:
    """The member holding an LFS file (its blob name is its sha256)."""
    return f"{FOLDER}/blobs/{hashlib.sha256((folder / path).read_bytes()).hexdigest()}"


def manifest_of(bundle: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(members(bundle)[0][1])
    return data


def member_of(bundle: bytes, path: str) -> str:
    """The member holding ``path``'s blob, as the manifest says."""
    (f,) = [f for f in manifest_of(bundle)["repos"][0]["revisions"][0]["files"] if f["path"] == path]
    return f"{FOLDER}/blobs/{f['etag']}"


def members(bundle: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Every member of a bundle with its bytes, in order."""
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        out = []
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out.append((m, f.read() if f is not None else b""))
        return out


def make_tar(items: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar of these members, as anyone's tar writer would make it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root`` with its inode, mtime and ctime: any write shows."""
    return {
        str(p.relative_to(root)): (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        for p in sorted(root.rglob("*"))
        for st in [p.lstat()]
    }


# -- export, carry, import ------------------------------------------------------------------------------------


def test_export_then_import_into_an_empty_cache_loads_offline_and_verifies(
    source: Path, tmp_path: Path, llama_folder: Path
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from huggingface_hub import scan_cache_dir
    from safetensors.numpy import load_file

    out = tmp_path / "carry" / "tiny.tar"
    out.parent.mkdir()
    done = vcache("export", REPO, "-o", str(out), "--cache-dir", str(source))
    assert done.returncode == 0, done.stderr.decode()
    assert "verified" in done.stdout.decode() and REPO in done.stdout.decode()

    # The air-gapped side: another HF_HOME, no network at all.
    dest = tmp_path / "elsewhere" / "hub"
    offline = {"HF_HOME": str(tmp_path / "elsewhere"), "HF_HUB_CACHE": str(dest), "HF_HUB_OFFLINE": "1"}
    done = vcache("import", str(out), "--json", env=offline)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["verdict"] == "ok" and report["commit"] == commit_of(source)
    assert {f["path"] for f in report["files"]} == {
        p.relative_to(llama_folder).as_posix() for p in llama_folder.rglob("*") if p.is_file()
    }
    assert all(not f["cached"] and f["verdict"] == "ok" for f in report["files"])

    repo = CacheRepo(dest, REPO)
    assert repo.read_ref("main") == commit_of(source)
    assert repo.read_tree(commit_of(source)) == CacheRepo(source, REPO).read_tree(commit_of(source))
    assert scan_cache_dir(dest).warnings == []
    assert list(repo.tmp_dir.iterdir()) == []  # no temporary file left

    code = (
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({REPO!r})\n"
        "print(repr(float(m.model.embed_tokens.weight.double().sum())))\n"
    )
    load = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **offline},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert load.returncode == 0, load.stderr
    index = json.loads((llama_folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.embed_tokens.weight"]
    expected = load_file(str(llama_folder / shard))["model.embed_tokens.weight"].astype("float64").sum()
    assert float(load.stdout.strip().splitlines()[-1]) == pytest.approx(float(expected), rel=1e-9)

    for extra in ((), ("--deep",)):
        done = vcache("verify", REPO, *extra, env=offline)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_export_piped_into_import_through_two_processes(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    base = {**os.environ, "HF_HUB_OFFLINE": "1"}
    exporter = subprocess.Popen(
        [sys.executable, "-m", "vcache", "export", REPO, "-o", "-", "--cache-dir", str(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base,
    )
    importer = subprocess.Popen(
        [sys.executable, "-m", "vcache", "import", "-", "--cache-dir", str(dest)],
        stdin=exporter.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base,
    )
    assert exporter.stdout is not None
    exporter.stdout.close()  # the importer holds the read end now
    out, err = importer.communicate(timeout=120)
    export_err = exporter.communicate(timeout=120)[1]
    assert exporter.returncode == 0, export_err.decode()
    assert importer.returncode == 0, err.decode()
    assert b"Traceback" not in err + export_err
    assert "6 file(s) of 1 revision(s)" in out.decode()
    assert REPO in export_err.decode()  # with -o -, the summary goes to stderr
    done = vcache("verify", REPO, "--cache-dir", str(dest), env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout.decode()


def test_export_to_a_reader_that_goes_away_exits_3_with_one_line(source: Path) -> None:
    exporter = subprocess.Popen(
        [sys.executable, "-m", "vcache", "export", REPO, "-o", "-", "--cache-dir", str(source), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert exporter.stdout is not None and exporter.stderr is not None
    assert exporter.stdout.read(512)  # the bundle (1.6 MiB) does not fit in the pipe: the exporter waits
    exporter.stdout.close()
    err = exporter.stderr.read().decode()
    assert exporter.wait(timeout=60) == 3
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "reader closed the pipe" in lines[0] and "Traceback" not in err, err


def test_importing_the_same_bundle_twice_does_no_work_the_second_time(bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    first = import_bundle(io.BytesIO(bundle.read_bytes()), cache_dir=dest)
    assert [r.verdict for r in first] == [Verdict.OK]
    carried = manifest_of(bundle.read_bytes())["repos"][0]["revisions"][0]["files"]
    assert first[0].bytes_transferred == sum(f["size"] for f in carried) > 0
    before = tree_state(dest)

    # Through a pipe: the import must still read the whole stream, or the writer would block forever.
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with open(write_fd, "wb") as w:
            w.write(bundle.read_bytes())

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with open(read_fd, "rb") as r:
        second = import_bundle(r, cache_dir=dest)
    writer.join(timeout=30)
    assert not writer.is_alive()

    assert [r.verdict for r in second] == [Verdict.OK]
    assert all(f.cached and f.bytes_transferred == 0 for f in second[0].files)
    assert tree_state(dest) == before  # no blob, ledger record, link, ref or temporary file was written


def test_an_import_records_the_sha256_of_small_files_in_the_ledger(bundle: Path, tmp_path: Path) -> None:
    from vcache.ledger import Ledger

    dest = tmp_path / "dest"
    (report,) = import_bundle(io.BytesIO(bundle.read_bytes()), cache_dir=dest)
    assert report.ok
    repo = CacheRepo(dest, REPO)
    ledger = Ledger(repo.ledger_dir)
    carried = manifest_of(bundle.read_bytes())["repos"][0]["revisions"][0]["files"]
    small = [f for f in carried if len(f["etag"]) == 40]  # git blob ids: no sha256 in their name
    assert small
    for f in small:
        rec = ledger.get(f["etag"])
        # kept from the import's own check against the manifest (what a lockfile pins), not hashed later
        assert rec is not None and rec.sha256 == f["sha256"], f["path"]


def test_export_merges_targets_naming_one_commit_and_carries_each_blob_once(
    source: Path, tmp_path: Path
) -> None:
    commit = commit_of(source)
    plan = plan_export([REPO, f"{REPO}@{commit}", f"{REPO}@main"], cache_dir=source)
    (repo,) = plan.manifest.repos
    (revision,) = repo.revisions
    assert revision.commit == commit and revision.refs == ("main",)
    assert len(plan.sources) == len({f.etag for f in revision.files}) == len(revision.files)
    path = tmp_path / "b.tar"
    write_bundle_file(plan, path)
    names = [m.name for m, _ in members(path.read_bytes())]
    assert names[0] == MANIFEST_NAME and len(names) == len(set(names)) == 1 + len(plan.sources)
    manifest = json.loads(members(path.read_bytes())[0][1])
    for f in manifest["repos"][0]["revisions"][0]["files"]:  # sha256 for every file, small ones included
        data = (Path(CacheRepo(source, REPO).snapshot_dir(commit)) / f["path"]).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["size"] == len(data)


def test_export_refuses_a_revision_that_does_not_verify(
    source: Path, tmp_path: Path, llama_folder: Path
) -> None:
    blob = source / blob_member(llama_folder, SHARD1)
    blob.chmod(0o644)
    with open(blob, "r+b") as f:  # one byte, in place: the ledger's record no longer matches
        f.seek(blob.stat().st_size // 2)
        f.write(b"\x7f")
    out = tmp_path / "b.tar"
    done = vcache("export", REPO, "-o", str(out), "--cache-dir", str(source))
    assert done.returncode == 1
    err = done.stderr.decode()
    assert SHARD1 in err and "digest_mismatch" in err and "nothing was exported" in err
    assert not out.exists() and list(tmp_path.glob(".b.tar*")) == []
    assert blob.exists()  # export only reads: `vcache verify` is what quarantines


# -- damaged and hostile bundles --------------------------------------------------------------------------------


def test_a_flipped_byte_quarantines_that_file_and_exits_1(
    bundle: Path, tmp_path: Path, llama_folder: Path
) -> None:
    data = bytearray(bundle.read_bytes())
    (target,) = [m for m, _ in members(bytes(data)) if m.name == blob_member(llama_folder, SHARD1)]
    data[target.offset_data + target.size // 2] ^= 0x01
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    dest = tmp_path / "dest"

    done = vcache("import", str(damaged), "--cache-dir", str(dest), "--json")
    assert done.returncode == 1, done.stderr.decode()
    files = {f["path"]: f for f in json.loads(done.stdout)["files"]}
    assert files[SHARD1]["verdict"] == "fail" and files[SHARD1]["quarantine_id"]
    assert {x["code"] for x in files[SHARD1]["findings"]} >= {"digest_mismatch", "bundle.damaged"}
    (entry,) = list_entries(dest)
    assert (
        entry.path == SHARD1
        and entry.source == "bundle"
        and entry.data.read_bytes() == bytes(data[target.offset_data : target.offset_data + target.size])
    )
    repo = CacheRepo(dest, REPO)
    assert not (repo.blobs / Path(blob_member(llama_folder, SHARD1)).name).exists()
    assert (repo.snapshot_dir(commit_of_bundle(bundle)) / "config.json").read_bytes() == (
        llama_folder / "config.json"
    ).read_bytes()
    assert repo.read_ref("main") is None  # refs only for a revision whose every file verified
    assert list(repo.tmp_dir.iterdir()) == []


def commit_of_bundle(bundle: Path) -> str:
    manifest = json.loads(members(bundle.read_bytes())[0][1])
    commit: str = manifest["repos"][0]["revisions"][0]["commit"]
    return commit


def _cut_points(bundle: bytes) -> dict[str, int]:
    items = [m for m, _ in members(bundle)]
    last = items[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    return {
        "inside the manifest": items[0].offset_data + 100,
        "inside a blob": items[3].offset_data + items[3].size // 2,
        "at a member boundary": items[3].offset,
        "before the end-of-archive marker": end,
        "inside the end-of-archive marker": end + 512,
    }


@pytest.mark.parametrize(
    "where",
    [
        "inside the manifest",
        "inside a blob",
        "at a member boundary",
        "before the end-of-archive marker",
        "inside the end-of-archive marker",
    ],
)
def test_a_truncated_bundle_is_refused_and_nothing_is_published(
    bundle: Path, tmp_path: Path, where: str
) -> None:
    data = bundle.read_bytes()
    dest = tmp_path / "dest"
    done = vcache("import", "-", "--cache-dir", str(dest), stdin=data[: _cut_points(data)[where]])
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "truncated" in err and "Nothing of it was published" in err, err
    assert not dest.exists()  # not a blob, link, ref, ledger record, temporary file or empty folder


def test_the_whole_bundle_imports_from_stdin(bundle: Path, tmp_path: Path) -> None:
    done = vcache("import", "-", "--cache-dir", str(tmp_path / "dest"), stdin=bundle.read_bytes())
    assert done.returncode == 0, done.stderr.decode()


HOSTILE = {
    "a ../ name": lambda outside: regular("../../evil", b"pwned"),
    "an absolute name": lambda outside: regular(str(outside / "evil"), b"pwned"),
    "a backslash name": lambda outside: regular(f"{FOLDER}\\..\\..\\evil", b"pwned"),
    "a symlink": lambda outside: special(f"{FOLDER}/blobs/evil", tarfile.SYMTYPE, str(outside / "evil")),
    "a hard link": lambda outside: special(f"{FOLDER}/blobs/evil", tarfile.LNKTYPE, str(outside / "evil")),
    "a device": lambda outside: special(f"{FOLDER}/blobs/evil", tarfile.CHRTYPE),
    "a fifo": lambda outside: special(f"{FOLDER}/blobs/evil", tarfile.FIFOTYPE),
    "a directory": lambda outside: special("evil", tarfile.DIRTYPE),
}


@pytest.mark.parametrize("position", ["first", "last"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_unsafe_names_and_links_are_refused_and_nothing_is_written_outside(
    bundle: Path, tmp_path: Path, kind: str, position: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    items = members(bundle.read_bytes())
    hostile = HOSTILE[kind](outside)
    items.insert(1 if position == "first" else len(items), hostile)
    crafted = tmp_path / "crafted.tar"
    crafted.write_bytes(make_tar(items))
    work = tmp_path / "work" / "deep" / "er"
    work.mkdir(parents=True)
    dest = work / "cache"

    done = vcache("import", str(crafted), "--cache-dir", str(dest), cwd=work)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "refusing bundle" in err and "Nothing of it was published" in err, err
    assert not dest.exists()
    assert [p for p in tmp_path.rglob("*evil*")] == []
    assert list(outside.iterdir()) == []


def _tampered(bundle: bytes, how: str) -> bytes:
    items = members(bundle)
    config = next(i for i, (m, _) in enumerate(items) if m.name == member_of(bundle, "config.json"))
    if how == "a member the manifest does not list":
        items.append(regular(f"{FOLDER}/blobs/{'0' * 64}", b"extra"))
    elif how == "a member twice":
        items.append(items[config])
    elif how == "a member of another size":
        info, data = items[config]
        items[config] = (info, data + b" ")
    elif how == "a manifest the members disagree with":
        manifest = json.loads(items[0][1])
        for f in manifest["repos"][0]["revisions"][0]["files"]:
            if f["path"] == "config.json":
                f["size"] += 1
                manifest["repos"][0]["revisions"][0]["tree"]["config.json"]["size"] += 1
        items[0] = (items[0][0], json.dumps(manifest).encode())
    elif how == "a manifest with a ../ path":
        manifest = json.loads(items[0][1])
        manifest["repos"][0]["revisions"][0]["files"][0]["path"] = "../../evil"
        manifest["repos"][0]["revisions"][0]["tree"] = None
        items[0] = (items[0][0], json.dumps(manifest).encode())
    elif how == "the manifest not first":
        items[0], items[1] = items[1], items[0]
    elif how == "a gzipped bundle":
        return gzip.compress(bundle)
    elif how == "not a tar at all":
        return os.urandom(4096)
    return make_tar(items)


@pytest.mark.parametrize(
    "how",
    [
        "a member the manifest does not list",
        "a member twice",
        "a member of another size",
        "a manifest the members disagree with",
        "a manifest with a ../ path",
        "the manifest not first",
        "a gzipped bundle",
        "not a tar at all",
    ],
)
def test_a_tampered_bundle_is_refused_and_nothing_is_published(
    bundle: Path, tmp_path: Path, how: str
) -> None:
    crafted = _tampered(bundle.read_bytes(), how)
    dest = tmp_path / "dest"
    with pytest.raises(BadBundle, match="Nothing of it was published"):
        import_bundle(io.BytesIO(crafted), cache_dir=dest, name="crafted.tar")
    assert not dest.exists()
    assert [p for p in tmp_path.rglob("*evil*")] == []


def test_the_lock_hook_pins_sha256_before_any_byte_is_written(bundle: Path, tmp_path: Path) -> None:
    commit = commit_of_bundle(bundle)
    dest = tmp_path / "dest"
    with pytest.raises(BadBundle, match=r"config\.json has sha256 .* in the lock"):
        import_bundle(
            io.BytesIO(bundle.read_bytes()), cache_dir=dest, pins={(REPO, commit, "config.json"): "0" * 64}
        )
    assert not dest.exists()
    manifest = json.loads(members(bundle.read_bytes())[0][1])
    pins = {(REPO, commit, f["path"]): f["sha256"] for f in manifest["repos"][0]["revisions"][0]["files"]}
    (report,) = import_bundle(io.BytesIO(bundle.read_bytes()), cache_dir=dest, pins=pins)
    assert report.ok


def test_an_import_records_format_and_checks_in_the_ledger_as_a_pull_does(
    source: Path, bundle: Path, tmp_path: Path
) -> None:
    from vcache.ledger import Ledger

    dest = tmp_path / "dest"
    (report,) = import_bundle(io.BytesIO(bundle.read_bytes()), cache_dir=dest)
    assert report.ok
    pulled, imported = Ledger(CacheRepo(source, REPO).ledger_dir), Ledger(CacheRepo(dest, REPO).ledger_dir)
    carried = manifest_of(bundle.read_bytes())["repos"][0]["revisions"][0]["files"]
    for f in carried:
        want, got = pulled.get(f["etag"]), imported.get(f["etag"])
        assert want is not None and got is not None and want.format is not None, f["path"]
        assert (got.format, got.checks) == (want.format, want.checks), f["path"]
    assert {f.path: f.format for f in report.files}[SHARD1] == "safetensors"

    # verify reads them from the ledger (no re-hash) and reports them
    done = vcache("verify", REPO, "--cache-dir", str(dest), "--json")
    assert done.returncode == 0, done.stderr.decode()
    files = {f["path"]: f for f in json.loads(done.stdout)["files"]}
    assert files[SHARD1]["format"] == "safetensors" and "digest" in files[SHARD1]["checks"]


# -- bundles under a lockfile ------------------------------------------------------------------------------------


def lock_repo_cli(hub: Any, lockfile: Path, cache: Path) -> None:
    """`vcache lock acme/tiny-llama -o LOCKFILE`, pulling into ``cache``."""
    done = vcache(
        "lock", REPO, "-o", str(lockfile), "--cache-dir", str(cache), "-q", env={"HF_ENDPOINT": hub.endpoint}
    )
    assert done.returncode == 0, done.stderr.decode()


def test_export_under_a_lock_carries_its_entries_and_imports_under_it_offline(
    hub: Any, tmp_path: Path
) -> None:
    from vcache.lockfile import Lock

    lockfile, locked_cache = tmp_path / "vcache.lock", tmp_path / "locking-cache"
    lock_repo_cli(hub, lockfile, locked_cache)
    lock = Lock.read(lockfile)
    out = tmp_path / "tiny.tar"
    done = vcache("export", REPO, "-o", str(out), "--cache-dir", str(locked_cache), "--lock", str(lockfile))
    assert done.returncode == 0, done.stderr.decode()

    manifest = manifest_of(out.read_bytes())
    assert Lock.from_document(manifest["lock"], "the manifest") == lock  # the exported repos' entries
    (revision,) = manifest["repos"][0]["revisions"]
    assert revision["commit"] == lock.repos[0].commit and revision["refs"] == ["main"]
    assert {(f["path"], f["size"], f["sha256"]) for f in revision["files"]} == {
        (f.path, f.size, f.sha256) for f in lock.repos[0].files
    }

    hub.stop()  # the air-gapped side: nothing can be asked
    dest = tmp_path / "dest"
    done = vcache("import", str(out), "--cache-dir", str(dest), "--lock", str(lockfile), "--json")
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["verdict"] == "ok"
    done = vcache("verify", "--lock", str(lockfile), "--cache-dir", str(dest))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    # the bundle holds itself to the entries it carries: importing it with no lock passes too
    assert [
        r.ok for r in import_bundle(io.BytesIO(out.read_bytes()), cache_dir=tmp_path / "d2", lock=False)
    ] == [True]
    doc = manifest_of(out.read_bytes())
    doc["lock"]["repo"][0]["files"][0]["sha256"] = "0" * 64  # its own entries no longer agree with its files
    items = members(out.read_bytes())
    items[0] = (tarfile.TarInfo(MANIFEST_NAME), json.dumps(doc).encode())
    with pytest.raises(BadBundle, match="the lock entries of its own manifest"):
        import_bundle(io.BytesIO(make_tar(items)), cache_dir=tmp_path / "d3", lock=False)
    assert not (tmp_path / "d3").exists()


def test_a_bundle_whose_file_differs_from_the_lock_is_refused_naming_it(
    hub: Any, llama_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_lock import changed_shard
    from vcache.testing.hub import Fault

    lockfile = tmp_path / "vcache.lock"
    lock_repo_cli(hub, lockfile, tmp_path / "locking-cache")
    hub.fault(REPO, SHARD1, Fault.new_version(changed_shard(llama_folder)))  # same commit, other bytes
    other = tmp_path / "other"
    assert pull(REPO, endpoint=hub.endpoint, cache_dir=other, lock=False).ok  # consistent with itself
    out = tmp_path / "changed.tar"
    write_bundle_file(plan_export([REPO], cache_dir=other, lock=False), out)

    dest = tmp_path / "dest"
    done = vcache("import", str(out), "--cache-dir", str(dest), "--lock", str(lockfile))
    assert done.returncode == 1, done.stderr.decode()
    err = done.stderr.decode()
    assert SHARD1 in err and str(lockfile) in err and "Nothing of it was published" in err, err
    assert not dest.exists()

    # VCACHE_LOCK applies as it does to a pull, in the Python API as on the command line
    monkeypatch.setenv("VCACHE_LOCK", str(lockfile))
    with pytest.raises(BadBundle, match=re.escape(SHARD1)):
        import_bundle(io.BytesIO(out.read_bytes()), cache_dir=dest)
    assert not dest.exists()
    done = vcache("import", str(out), "--cache-dir", str(dest))
    assert done.returncode == 1 and SHARD1 in done.stderr.decode() and not dest.exists()

    # and exporting that cache under the lock fails verification against it: nothing is written
    monkeypatch.delenv("VCACHE_LOCK")
    again = tmp_path / "again.tar"
    done = vcache("export", REPO, "-o", str(again), "--cache-dir", str(other), "--lock", str(lockfile))
    assert done.returncode == 1, done.stderr.decode()
    assert SHARD1 in done.stderr.decode() and "lock.digest_mismatch" in done.stderr.decode()
    assert not again.exists()


def test_a_lock_of_another_commit_refuses_the_export_and_the_import(hub: Any, tmp_path: Path) -> None:
    lockfile = tmp_path / "vcache.lock"
    lock_repo_cli(hub, lockfile, tmp_path / "locking-cache")
    server_repo = hub._repo("model", REPO)
    locked = server_repo.resolve("main")
    moved = server_repo.commit({"config.json": b'{"moved": true}\n'}, message="main moved on")
    newer = tmp_path / "newer"
    assert pull(REPO, endpoint=hub.endpoint, cache_dir=newer, lock=False).ok

    out = tmp_path / "b.tar"
    for target in (REPO, f"{REPO}@main", f"{REPO}@{moved}"):
        done = vcache("export", target, "-o", str(out), "--cache-dir", str(newer), "--lock", str(lockfile))
        assert done.returncode == 2, (target, done.stderr.decode())
        assert str(lockfile) in done.stderr.decode() and locked in done.stderr.decode(), target
        assert not out.exists()

    write_bundle_file(plan_export([REPO], cache_dir=newer, lock=False), out)
    dest = tmp_path / "dest"
    done = vcache("import", str(out), "--cache-dir", str(dest), "--lock", str(lockfile))
    assert done.returncode == 1, done.stderr.decode()
    err = done.stderr.decode()
    assert moved in err and locked in err and str(lockfile) in err, err
    assert not dest.exists()

    # VCACHE_LOCK applies to export as it does to a pull
    done = vcache(
        "export", REPO, "-o", str(out), "--cache-dir", str(newer), env={"VCACHE_LOCK": str(lockfile)}
    )
    assert done.returncode == 2 and str(lockfile) in done.stderr.decode()

    # a repo the lock does not pin: exit 2 naming the lock on export
    done = vcache(
        "export", "acme/unlocked", "-o", str(out), "--cache-dir", str(newer), "--lock", str(lockfile)
    )
    assert done.returncode == 2 and str(lockfile) in done.stderr.decode()
