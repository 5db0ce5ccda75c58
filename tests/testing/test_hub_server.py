"""The test Hub on the wire: repo model, resolve/API protocol, errors, auth, the log, every fault, throttling,
shutdown and the command line, checked with a raw ``http.client`` so that nothing is hidden by a client."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from vcache.testing.hub import Fault, HubServer, Repo, RepoFile, repos_from_directory

from .conftest import TOKEN, Fetch, Resp, Tiny, request

# ---------------------------------------------------------------------------------------------------------
# Helpers


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve_url(hub: HubServer, path: str, rev: str = "main", repo: str = "acme/tiny") -> str:
    return f"{hub.endpoint}/{repo}/resolve/{quote(rev, safe='')}/{quote(path)}"


def cdn_url(hub: HubServer, path: str, rev: str = "main") -> str:
    """The CDN link the hub hands out for an LFS file."""
    resp = request(resolve_url(hub, path, rev), "HEAD")
    assert resp.status == 302, resp
    return resp.headers["location"]


def open_stream(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> http.client.HTTPResponse:
    """Send a GET and return the response with its body unread (to watch faults byte by byte)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    conn.request("GET", parts.path, headers=headers or {})
    return conn.getresponse()


def read_until_error(resp: http.client.HTTPResponse) -> tuple[bytes, BaseException | None]:
    """Read the body in small pieces; return what arrived and the error that ended it (if any)."""
    got = bytearray()
    try:
        while chunk := resp.read1(65536):
            got += chunk
    except (OSError, http.client.HTTPException) as e:
        return bytes(got), e
    if resp.length:  # a clean EOF before Content-Length was reached
        return bytes(got), http.client.IncompleteRead(bytes(got), resp.length)
    return bytes(got), None


# ---------------------------------------------------------------------------------------------------------
# The repository model


def test_commit_ids_are_deterministic_and_depend_on_parent_files_and_message() -> None:
    def build(message: str) -> tuple[str, str]:
        repo = Repo("acme/x")
        first = repo.commit({"a.txt": b"a", "b/c.txt": b"c"}, message=message)
        return first, repo.commit({"a.txt": b"changed"}, message="second")

    one, two = build("init"), build("init")
    assert one == two
    assert all(len(c) == 40 and c == c.lower() and int(c, 16) >= 0 for c in one)
    assert build("other")[0] != one[0]
    assert one[1] != one[0]


def test_commit_inherits_deletes_and_reports_digests(blob_dir: Path) -> None:
    repo = Repo("acme/x")
    c1 = repo.commit(
        {
            "keep.txt": b"keep",
            "gone.txt": b"bye",
            "dir/a.txt": b"a",
            "dir/b.txt": b"b",
            "w.safetensors": blob_dir / "weights.safetensors",
        }
    )
    c2 = repo.commit({"new.txt": b"new"}, delete=["gone.txt", "dir"], message="tidy")
    assert set(repo.files_at(c1)) == {"keep.txt", "gone.txt", "dir/a.txt", "dir/b.txt", "w.safetensors"}
    assert set(repo.files_at(c2)) == {"keep.txt", "new.txt", "w.safetensors"}
    assert repo.files_at(c2)["keep.txt"] is repo.files_at(c1)["keep.txt"]

    keep = repo.files_at("main")["keep.txt"]
    assert (keep.size, keep.blob_id, keep.sha256, keep.lfs, keep.etag) == (
        4,
        git_blob(b"keep"),
        None,
        False,
        git_blob(b"keep"),
    )

    lfs = repo.files_at("main")["w.safetensors"]
    content = (blob_dir / "weights.safetensors").read_bytes()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(content)}\nsize {len(content)}\n".encode()
    assert lfs.lfs and lfs.sha256 == sha256(content) == lfs.etag and lfs.size == len(content)
    assert lfs.pointer == pointer
    assert lfs.blob_id == git_blob(pointer)  # git stores the pointer, so that is the LFS file's git id
    assert lfs.source == blob_dir / "weights.safetensors" and lfs.data is None  # served in place
    assert lfs.read_bytes() == content and lfs.read_at(10, 5) == content[10:15]

    with pytest.raises(KeyError):
        repo.commit({}, delete=["never-there.txt"])


def test_lfs_decision_by_pattern_size_and_override() -> None:
    repo = Repo("acme/x")
    big = b"\x01" * (10 * 1024 * 1024)
    repo.commit(
        {
            "a.safetensors": b"x",
            "deep/b.bin": b"x",
            "c.tar.gz": b"x",
            "d.gguf": b"x",
            "notes.txt": b"x",
            "big.txt": big,
            "forced.txt": b"x",
            "unforced.bin": b"x",
        },
        lfs={"forced.txt": True, "unforced.bin": False},
    )
    lfs = {path for path, f in repo.files_at("main").items() if f.lfs}
    assert lfs == {"a.safetensors", "deep/b.bin", "c.tar.gz", "d.gguf", "big.txt", "forced.txt"}
    assert repo.files_at("main")["big.txt"].sha256 == sha256(big)


def test_resolve_and_refs(tiny: Tiny) -> None:
    repo = tiny.repo
    assert repo.resolve("main") == tiny.main
    assert repo.resolve("refs/heads/main") == tiny.main
    assert repo.resolve("v1.0") == repo.resolve("refs/tags/v1.0") == tiny.init
    assert repo.resolve("dev") == tiny.dev
    assert repo.resolve("refs/pr/1") == tiny.pr
    assert repo.resolve(tiny.init) == tiny.init
    for unknown in ("nope", tiny.init[:12], "0" * 40, "refs/pr/2"):
        with pytest.raises(KeyError):
            repo.resolve(unknown)
    assert "pr.txt" in repo.files_at("refs/pr/1") and "pr.txt" not in repo.files_at("main")
    assert "dev-only.txt" in repo.files_at("dev")
    snapshot = repo.files_at("main")
    snapshot.clear()
    assert repo.files_at("main")  # callers get a copy


@pytest.mark.parametrize("bad", ["", "a/b/c", "-x", "a b", "/x"])
def test_invalid_repo_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Repo(bad)


@pytest.mark.parametrize("bad", ["/abs", "a//b", "a/../b", "./a", "dir/"])
def test_invalid_file_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Repo("x").commit({bad: b""})


def test_file_and_folder_with_one_name_are_refused() -> None:
    repo = Repo("x")
    repo.commit({"a": b"file"})
    with pytest.raises(ValueError):
        repo.commit({"a/b": b"nested"})


def test_git_ids_match_real_git(tmp_path: Path, tiny: Tiny, hub: HubServer, fetch: Fetch) -> None:
    """Blob ids and directory tree ids are what git itself computes (LFS files stored as pointers)."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    work = tmp_path / "git"
    for path, f in tiny.repo.files_at("main").items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.pointer if f.lfs and f.pointer else f.read_bytes())
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

    def run(*args: str) -> str:
        return subprocess.run(
            [git, *args], cwd=work, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    run("init", "-q")
    run("add", "-A")
    root = run("write-tree")
    entries = fetch(f"{hub.endpoint}/api/models/acme/tiny/tree/main?recursive=true").json()
    for entry in entries:
        assert entry["oid"] == run("rev-parse", f"{root}:{entry['path']}"), entry["path"]


# ---------------------------------------------------------------------------------------------------------
# Resolve: headers, LFS styles, revision parsing


def test_regular_file_head_and_get(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    data = tiny.files["config.json"]
    url = resolve_url(hub, "config.json")
    head = fetch(url, "HEAD", {"Accept-Encoding": "identity"})
    get = fetch(url, headers={"Accept-Encoding": "gzip, deflate, br"})
    for resp in (head, get):
        assert resp.status == 200
        assert resp.headers["etag"] == f'"{git_blob(data)}"'
        assert resp.headers["x-repo-commit"] == tiny.main
        assert resp.headers["content-length"] == str(len(data))  # the true length on HEAD too
        assert resp.headers["accept-ranges"] == "bytes"
        assert "content-encoding" not in resp.headers
        assert "x-linked-etag" not in resp.headers
    assert head.body == b"" and get.body == data


def test_lfs_redirect_style(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    data = tiny.files["model.safetensors"]
    for method in ("HEAD", "GET"):
        resp = fetch(resolve_url(hub, "model.safetensors"), method)
        assert resp.status == 302
        assert resp.headers["x-linked-etag"] == f'"{sha256(data)}"'
        assert resp.headers["x-linked-size"] == str(len(data))
        assert resp.headers["x-repo-commit"] == tiny.main
        assert resp.headers["etag"].startswith('"')
        location = resp.headers["location"]
        assert location.startswith(hub.cdn_endpoint + "/")
    assert urlsplit(hub.cdn_endpoint).netloc != urlsplit(hub.endpoint).netloc
    assert (
        sha256(data) in location
        and "acme/tiny" in location
        and location.startswith(f"{hub.cdn_endpoint}/models/")
    )
    cdn = fetch(location)
    assert cdn.status == 200 and cdn.body == data
    assert cdn.headers["content-length"] == str(len(data)) and cdn.headers["accept-ranges"] == "bytes"
    assert not {"x-repo-commit", "x-linked-etag", "x-linked-size"} & set(cdn.headers)
    record = hub.log[-1]
    assert (record.origin, record.repo_id, record.file_path, record.status) == (
        "cdn",
        "acme/tiny",
        "model.safetensors",
        200,
    )


def test_lfs_direct_style(direct_hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    for path in ("model.safetensors", "weights/shard.bin"):  # served from a file, and from memory
        data = tiny.files[path]
        head = fetch(resolve_url(direct_hub, path), "HEAD")
        get = fetch(resolve_url(direct_hub, path))
        for resp in (head, get):
            assert resp.status == 200
            assert resp.headers["etag"] == f'"{sha256(data)}"'
            assert resp.headers["x-repo-commit"] == tiny.main
            assert resp.headers["content-length"] == str(len(data))
        assert get.body == data


def test_a_hub_without_digests_sends_no_sha256_etag_or_linked_etag(
    hub: HubServer, direct_hub: HubServer, tiny: Tiny, fetch: Fetch
) -> None:
    data = tiny.files["model.safetensors"]
    for server in (hub, direct_hub):
        server.digests = False
        tree = fetch(f"{server.endpoint}/api/models/acme/tiny/tree/main?recursive=true").json()
        info = fetch(f"{server.endpoint}/api/models/acme/tiny/revision/main?blobs=true").json()
        assert [e for e in tree if "lfs" in e] == [] and [s for s in info["siblings"] if "lfs" in s] == []
        entry = next(e for e in tree if e["path"] == "model.safetensors")
        assert entry["oid"] == git_blob(tiny.repo.files_at("main")["model.safetensors"].pointer or b"")
        first = fetch(resolve_url(server, "model.safetensors"))
        answers = [first, fetch(first.headers["location"])] if first.status == 302 else [first]
        assert answers[-1].status == 200 and answers[-1].body == data
        for resp in answers:
            assert not {"etag", "x-linked-etag"} & set(resp.headers), resp.headers
        server.digests = True
        assert fetch(resolve_url(server, "model.safetensors"), "HEAD").headers.get("etag")


@pytest.mark.parametrize(
    ("rev", "expected"),
    [
        ("main", "main"),
        ("v1.0", "init"),
        ("dev", "dev"),
        ("refs%2Fpr%2F1", "pr"),  # the revision as the client encodes it
        ("refs/pr/1", "pr"),  # and unencoded
        ("refs%2Fheads%2Fdev", "dev"),
        ("{init}", "init"),  # a full commit id
    ],
)
def test_revision_forms_in_resolve(hub: HubServer, tiny: Tiny, fetch: Fetch, rev: str, expected: str) -> None:
    commit = getattr(tiny, expected)
    rev = rev.format(init=tiny.init)
    resp = fetch(f"{hub.endpoint}/acme/tiny/resolve/{rev}/sub/dir/notes.txt")
    assert resp.status == 200 and resp.headers["x-repo-commit"] == commit
    assert resp.body == b"nested notes\n"
    assert hub.log[-1].raw_path == f"/acme/tiny/resolve/{rev}/sub/dir/notes.txt"
    assert hub.log[-1].file_path == "sub/dir/notes.txt"


def test_other_repo_kinds_and_escaped_names(hub: HubServer, fetch: Fetch) -> None:
    assert fetch(f"{hub.endpoint}/tinygpt/resolve/main/config.json").body == b"{}"
    ds = fetch(f"{hub.endpoint}/datasets/acme/ds/resolve/refs%2Fconvert%2Fparquet/data/train.txt")
    assert ds.status == 200 and ds.body == b"a\nb\n"
    assert fetch(f"{hub.endpoint}/spaces/acme/app/resolve/main/app.py").body == b"print('hi')\n"
    assert fetch(f"{hub.endpoint}/acme/tiny/resolve/main/docs/read%20me.txt").body == b"a space in the name\n"
    assert hub.log[-1].file_path == "docs/read me.txt"
    # A dataset is not a model of the same name.
    assert fetch(f"{hub.endpoint}/acme/ds/resolve/main/README.md").headers["x-error-code"] == "RepoNotFound"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/acme/nope/resolve/main/config.json", 401, "RepoNotFound"),
        ("/acme/tiny/resolve/nope/config.json", 404, "RevisionNotFound"),
        ("/acme/tiny/resolve/main/nope.txt", 404, "EntryNotFound"),
        ("/acme/tiny/resolve/main/sub/dir", 404, "EntryNotFound"),
        ("/api/models/acme/nope", 401, "RepoNotFound"),
        ("/api/models/acme/tiny/revision/nope", 404, "RevisionNotFound"),
        ("/api/models/acme/tiny/tree/main/nope", 404, "EntryNotFound"),
        ("/api/models/acme/tiny/tree/nope", 404, "RevisionNotFound"),
    ],
)
def test_errors_carry_code_message_and_json(
    hub: HubServer, tiny: Tiny, fetch: Fetch, path: str, status: int, code: str
) -> None:
    resp = fetch(hub.endpoint + path)
    assert resp.status == status
    assert resp.headers["x-error-code"] == code
    assert resp.headers["x-error-message"]
    assert isinstance(resp.json()["error"], str)
    if code == "EntryNotFound" and "/resolve/" in path:
        assert resp.headers["x-repo-commit"] == tiny.main  # lets the client record .no_exist


def test_range_requests(hub: HubServer, direct_hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    targets = [
        (resolve_url(hub, "config.json"), tiny.files["config.json"], git_blob(tiny.files["config.json"])),
        (
            resolve_url(direct_hub, "model.safetensors"),
            tiny.files["model.safetensors"],
            sha256(tiny.files["model.safetensors"]),
        ),
        (
            cdn_url(hub, "model.safetensors"),
            tiny.files["model.safetensors"],
            sha256(tiny.files["model.safetensors"]),
        ),
        (
            cdn_url(hub, "weights/shard.bin"),
            tiny.files["weights/shard.bin"],
            sha256(tiny.files["weights/shard.bin"]),
        ),
    ]
    for url, data, etag in targets:
        n = len(data)
        cases: list[tuple[dict[str, str], int, bytes, str | None]] = [
            ({"Range": "bytes=0-9"}, 206, data[:10], f"bytes 0-9/{n}"),
            ({"Range": "bytes=5-"}, 206, data[5:], f"bytes 5-{n - 1}/{n}"),
            ({"Range": "bytes=-4"}, 206, data[-4:], f"bytes {n - 4}-{n - 1}/{n}"),
            ({"Range": f"bytes=3-{n + 1000}"}, 206, data[3:], f"bytes 3-{n - 1}/{n}"),
            ({"Range": "bytes=0-1,4-5"}, 200, data, None),  # several ranges: ignored
            ({"Range": "bytes=2-1"}, 200, data, None),  # invalid: ignored
            ({"Range": "bytes=2-", "If-Range": f'"{etag}"'}, 206, data[2:], f"bytes 2-{n - 1}/{n}"),
            ({"Range": "bytes=2-", "If-Range": '"0000"'}, 200, data, None),
            ({"Range": "bytes=2-", "If-Range": f'W/"{etag}"'}, 200, data, None),  # weak never matches
        ]
        for headers, status, body, content_range in cases:
            resp = fetch(url, headers=headers)
            assert (resp.status, resp.body, resp.headers.get("content-range")) == (
                status,
                body,
                content_range,
            ), (url, headers)
            assert resp.headers["content-length"] == str(len(body))
        for unsatisfiable in (f"bytes={n}-", f"bytes={n + 5}-{n + 9}", "bytes=-0"):
            resp = fetch(url, headers={"Range": unsatisfiable})
            assert resp.status == 416 and resp.headers["content-range"] == f"bytes */{n}", (
                url,
                unsatisfiable,
            )


def test_keep_alive_reuses_one_connection(hub: HubServer, tiny: Tiny) -> None:
    conn = http.client.HTTPConnection(urlsplit(hub.endpoint).netloc, timeout=5)
    socks, bodies = [], []
    for method, path in [
        ("GET", "config.json"),
        ("GET", "nope.txt"),
        ("HEAD", "config.json"),
        ("GET", "model.safetensors"),
    ]:
        conn.request(method, f"/acme/tiny/resolve/main/{path}")
        bodies.append(conn.getresponse().read())
        socks.append(conn.sock)
    conn.request("POST", "/api/models/acme/tiny/paths-info/main", body=b"paths=config.json")
    assert json.loads(conn.getresponse().read())[0]["path"] == "config.json"
    socks.append(conn.sock)
    conn.close()
    assert socks[0] is not None and all(s is socks[0] for s in socks)
    assert bodies[0] == tiny.files["config.json"] and bodies[2] == b""


# ---------------------------------------------------------------------------------------------------------
# The API


def test_model_info(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    info = fetch(f"{hub.endpoint}/api/models/acme/tiny").json()
    assert info["id"] == "acme/tiny" and info["sha"] == tiny.main
    assert sorted(s["rfilename"] for s in info["siblings"]) == sorted(tiny.files)
    assert all(set(s) == {"rfilename"} for s in info["siblings"])

    blobs = fetch(f"{hub.endpoint}/api/models/acme/tiny?blobs=true").json()
    files = tiny.repo.files_at("main")
    for s in blobs["siblings"]:
        f = files[s["rfilename"]]
        assert s["size"] == f.size and s["blobId"] == f.blob_id
        if f.lfs:
            assert s["lfs"] == {
                "sha256": sha256(tiny.files[f.path]),
                "size": f.size,
                "pointerSize": len(f.pointer or b""),
            }
        else:
            assert "lfs" not in s and s["blobId"] == git_blob(tiny.files[f.path])

    for rev, commit in (
        ("v1.0", tiny.init),
        ("refs%2Fpr%2F1", tiny.pr),
        (tiny.dev, tiny.dev),
        ("main", tiny.main),
    ):
        assert fetch(f"{hub.endpoint}/api/models/acme/tiny/revision/{rev}").json()["sha"] == commit
    assert fetch(f"{hub.endpoint}/api/models/tinygpt/revision/main").json()["id"] == "tinygpt"
    ds = fetch(f"{hub.endpoint}/api/datasets/acme/ds/revision/refs%2Fconvert%2Fparquet").json()
    assert ds["id"] == "acme/ds" and len(ds["sha"]) == 40
    assert fetch(f"{hub.endpoint}/api/spaces/acme/app").json()["id"] == "acme/app"


def test_tree_listing(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    base = f"{hub.endpoint}/api/models/acme/tiny/tree"
    everything = fetch(f"{base}/main?recursive=true&expand=false").json()
    by_path = {e["path"]: e for e in everything}
    assert {p for p, e in by_path.items() if e["type"] == "file"} == set(tiny.files)
    assert {p for p, e in by_path.items() if e["type"] == "directory"} == {
        "docs",
        "sub",
        "sub/dir",
        "weights",
    }
    files = tiny.repo.files_at("main")
    for path, f in files.items():
        entry = by_path[path]
        assert entry["oid"] == f.blob_id and entry["size"] == f.size
        if f.lfs:
            assert entry["lfs"] == {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer or b"")}
        else:
            assert "lfs" not in entry
        assert "xetHash" not in entry and "lastCommit" not in entry

    top = fetch(f"{base}/main").json()
    assert sorted(e["path"] for e in top) == ["config.json", "docs", "model.safetensors", "sub", "weights"]
    assert [e["path"] for e in fetch(f"{base}/main/sub%2Fdir").json()] == ["sub/dir/notes.txt"]
    assert [e["path"] for e in fetch(f"{base}/main/sub/dir").json()] == ["sub/dir/notes.txt"]
    assert [e["path"] for e in fetch(f"{base}/main/sub?recursive=true").json()] == [
        "sub/dir",
        "sub/dir/notes.txt",
    ]
    assert "pr.txt" in {e["path"] for e in fetch(f"{base}/refs%2Fpr%2F1").json()}
    assert "dev-only.txt" not in {e["path"] for e in fetch(f"{base}/{tiny.init}").json()}

    expanded = {e["path"]: e for e in fetch(f"{base}/main?expand=true").json()}
    config = expanded["config.json"]
    assert config["lastCommit"]["id"] == tiny.main and config["lastCommit"]["title"] == "bump config"
    assert expanded["model.safetensors"]["lastCommit"]["id"] == tiny.init
    assert config["securityFileStatus"]["status"] == "safe"


def test_tree_pagination(tiny: Tiny, fetch: Fetch) -> None:
    with HubServer([tiny.repo], page_size=2) as hub:
        url: str | None = f"{hub.endpoint}/api/models/acme/tiny/tree/main?recursive=true&expand=false"
        pages = []
        while url:
            resp = fetch(url)
            assert resp.status == 200
            pages.append([e["path"] for e in resp.json()])
            link = resp.headers.get("link")
            url = None
            if link:
                assert link.endswith('>; rel="next"')
                url = link[1 : link.index(">")]
                assert url.startswith(hub.endpoint + "/api/models/acme/tiny/tree/main?")
                query = parse_qs(urlsplit(url).query)
                assert query["recursive"] == ["true"] and query["expand"] == ["false"] and "cursor" in query
        assert all(len(p) == 2 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 2
        listed = [p for page in pages for p in page]
        assert len(listed) == len(set(listed)) == len(tiny.files) + 4  # files + 4 folders
        assert fetch(f"{hub.endpoint}/api/models/acme/tiny/tree/main?cursor=bogus").status == 400


def test_paths_info(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    url = f"{hub.endpoint}/api/models/acme/tiny/paths-info/refs%2Fpr%2F1"
    form = b"paths=config.json&paths=sub%2Fdir&paths=missing.txt&paths=pr.txt&expand=false"
    resp = fetch(url, "POST", {"Content-Type": "application/x-www-form-urlencoded"}, form)
    entries = {e["path"]: e for e in resp.json()}
    assert set(entries) == {"config.json", "sub/dir", "pr.txt"}
    assert entries["sub/dir"]["type"] == "directory" and len(entries["sub/dir"]["oid"]) == 40
    assert entries["config.json"]["oid"] == git_blob(tiny.files["config.json"])
    as_json = fetch(
        url,
        "POST",
        {"Content-Type": "application/json"},
        json.dumps({"paths": ["model.safetensors"], "expand": True}).encode(),
    )
    [entry] = as_json.json()
    assert entry["lfs"]["oid"] == sha256(tiny.files["model.safetensors"]) and "lastCommit" in entry
    assert fetch(url).status == 405  # paths-info is POST-only


def test_refs_commits_and_agent_harnesses(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    refs = fetch(f"{hub.endpoint}/api/models/acme/tiny/refs?include_prs=1").json()
    assert {b["name"]: b["targetCommit"] for b in refs["branches"]} == {
        "main": tiny.main,
        "dev": tiny.dev,
        "pr-source": tiny.pr,
    }
    assert refs["tags"] == [{"name": "v1.0", "ref": "refs/tags/v1.0", "targetCommit": tiny.init}]
    assert refs["pullRequests"] == [{"name": "1", "ref": "refs/pr/1", "targetCommit": tiny.pr}]
    assert "pullRequests" not in fetch(f"{hub.endpoint}/api/models/acme/tiny/refs").json()
    commits = fetch(f"{hub.endpoint}/api/models/acme/tiny/commits/main").json()
    assert [c["id"] for c in commits] == [tiny.main, tiny.init]
    harnesses = fetch(f"{hub.endpoint}/api/agent-harnesses")
    assert harnesses.status == 200 and harnesses.json() == {"standardEnvVars": [], "harnesses": {}}


def test_no_xet_anywhere(hub: HubServer, direct_hub: HubServer, fetch: Fetch) -> None:
    responses: list[Resp] = []
    for server in (hub, direct_hub):
        for path in ("config.json", "model.safetensors", "weights/shard.bin"):
            responses.append(fetch(resolve_url(server, path), "HEAD"))
            responses.append(fetch(resolve_url(server, path)))
        responses.append(
            fetch(f"{server.endpoint}/api/models/acme/tiny/tree/main?recursive=true&expand=true")
        )
        responses.append(fetch(f"{server.endpoint}/api/models/acme/tiny?blobs=true"))
    responses.append(fetch(cdn_url(hub, "model.safetensors")))
    for resp in responses:
        assert not [h for h in resp.headers if h.startswith("x-xet")]
        assert "xet-auth" not in resp.headers.get("link", "")
        if resp.headers.get("content-type", "").startswith("application/json"):
            assert b"xetHash" not in resp.body


# ---------------------------------------------------------------------------------------------------------
# Authentication


def test_auth_rules(hub: HubServer, fetch: Fetch) -> None:
    good, bad = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer hf_wrong"}

    def status_and_code(path: str, headers: dict[str, str] | None = None) -> tuple[int, str | None]:
        resp = fetch(hub.endpoint + path, headers=headers)
        return resp.status, resp.headers.get("x-error-code")

    public, private, gated = (
        "/acme/tiny/resolve/main/config.json",
        "/acme/secret/resolve/main/config.json",
        "/acme/gated/resolve/main/config.json",
    )
    assert status_and_code(public) == (200, None)
    assert status_and_code(public, good) == (200, None)
    assert status_and_code(private) == (401, "RepoNotFound")
    assert status_and_code(private, good) == (200, None)
    assert status_and_code("/api/models/acme/secret/tree/main") == (401, "RepoNotFound")
    assert status_and_code("/api/models/acme/secret/tree/main", good) == (200, None)
    assert status_and_code(gated) == (401, "GatedRepo")
    assert status_and_code(gated, good) == (200, None)
    assert status_and_code("/acme/nope/resolve/main/x", good) == (404, "RepoNotFound")
    for path in (public, private, "/api/models/acme/tiny"):
        resp = fetch(hub.endpoint + path, headers=bad)
        assert resp.status == 401
        assert resp.headers["x-error-message"] == "Invalid credentials in Authorization header"
    assert fetch(hub.endpoint + public, headers={"Authorization": "Basic abc"}).status == 401

    # The CDN link of a private file works without any credentials, like a signed URL.
    head = fetch(hub.endpoint + "/acme/secret/resolve/main/model.safetensors", "HEAD", good)
    assert head.status == 302
    cdn = fetch(head.headers["location"])
    assert cdn.status == 200 and len(cdn.body) == 5000


def test_without_a_token_set_any_token_is_accepted(tiny: Tiny, fetch: Fetch) -> None:
    private = Repo("acme/p", private=True)
    private.commit({"a.txt": b"a"})
    with HubServer([tiny.repo, private]) as hub:
        assert (
            fetch(
                hub.endpoint + "/acme/p/resolve/main/a.txt", headers={"Authorization": "Bearer anything"}
            ).body
            == b"a"
        )
        assert fetch(hub.endpoint + "/acme/p/resolve/main/a.txt").status == 401


# ---------------------------------------------------------------------------------------------------------
# The request log


def test_request_log_fields(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    hub.clear_log()
    headers = {
        "Range": "bytes=1-3",
        "If-Range": f'"{git_blob(tiny.files["sub/dir/notes.txt"])}"',
        "Authorization": f"Bearer {TOKEN}",
        "X-Custom": "yes",
    }
    resp = fetch(
        f"{hub.endpoint}/acme/tiny/resolve/refs%2Fpr%2F1/sub/dir/notes.txt?download=true&x=1&x=2",
        headers=headers,
    )
    assert resp.status == 206
    [record] = hub.log
    assert record.method == "GET" and record.origin == "hub"
    assert record.raw_path == "/acme/tiny/resolve/refs%2Fpr%2F1/sub/dir/notes.txt"
    assert record.query == {"download": ["true"], "x": ["1", "2"]}
    assert record.headers["x-custom"] == "yes" and all(k == k.lower() for k in record.headers)
    assert record.range == "bytes=1-3" and record.if_range == headers["If-Range"]
    assert record.authorization == f"Bearer {TOKEN}"
    assert (record.status, record.body_bytes, record.wire_bytes) == (206, 3, 3)
    assert (record.repo_id, record.file_path) == ("acme/tiny", "sub/dir/notes.txt")
    assert abs(record.time - time.time()) < 5 and record.duration >= 0

    fetch(f"{hub.endpoint}/api/models/acme/tiny/tree/main")
    fetch(resolve_url(hub, "model.safetensors"), "HEAD")
    fetch(cdn_url(hub, "model.safetensors"))
    api, head, _redirect_head, cdn = hub.log[1:]
    assert (api.repo_id, api.file_path, api.range) == ("acme/tiny", None, None)
    assert (head.method, head.body_bytes, cdn.origin, cdn.file_path) == (
        "HEAD",
        0,
        "cdn",
        "model.safetensors",
    )
    assert cdn.body_bytes == len(tiny.files["model.safetensors"])
    assert [r.origin for r in hub.body_requests()] == ["hub", "cdn"]
    assert [r.file_path for r in hub.body_requests(path="model.safetensors")] == ["model.safetensors"]
    assert hub.body_requests(repo_id="acme/other") == []
    log = hub.log
    log.clear()
    assert hub.log  # a copy
    hub.clear_log()
    assert hub.log == []


# ---------------------------------------------------------------------------------------------------------
# Faults


LFS = "model.safetensors"


def test_drop_after_resets_the_connection(hub: HubServer, tiny: Tiny) -> None:
    url = cdn_url(hub, LFS)
    hub.fault("acme/tiny", LFS, Fault.drop_after(100_000))
    resp = open_stream(url)
    assert resp.status == 200 and resp.getheader("content-length") == str(len(tiny.files[LFS]))
    got, error = read_until_error(resp)
    assert got == tiny.files[LFS][:100_000]
    assert isinstance(error, ConnectionResetError)  # an RST, not a clean close
    assert hub.body_requests()[-1].body_bytes == 100_000
    assert hub.pending_faults() == []
    assert request(url).body == tiny.files[LFS]  # used up


def test_short_body_closes_cleanly_after_n_bytes(hub: HubServer, tiny: Tiny) -> None:
    data = tiny.files["config.json"]
    hub.fault("acme/tiny", "config.json", Fault.short_body(5))
    resp = open_stream(resolve_url(hub, "config.json"))
    assert resp.getheader("content-length") == str(len(data))
    got, error = read_until_error(resp)
    assert got == data[:5] and isinstance(error, http.client.IncompleteRead)
    assert hub.log[-1].body_bytes == 5


def test_stall_then_close(hub: HubServer, tiny: Tiny) -> None:
    hub.fault("acme/tiny", LFS, Fault.stall(after=1000, seconds=0.3))
    url = urlsplit(cdn_url(hub, LFS))
    assert url.hostname and url.port
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 1000:
            received += sock.recv(65536)
        head, body = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and body == tiny.files[LFS][:1000]
        started = time.monotonic()
        sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # the stall: nothing more arrives
        sock.settimeout(5)
        assert sock.recv(1) == b""  # then a clean close
        assert time.monotonic() - started >= 0.2
    assert hub.log[-1].body_bytes == 1000


def test_status_faults_in_order_with_retry_after_and_code(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    url = resolve_url(hub, "config.json")
    hub.fault(
        "acme/tiny",
        "config.json",
        Fault.drop_after(3),
        Fault.status(503, times=2, retry_after=7, error_code="Overloaded"),
    )
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        fetch(url)
    for _ in range(2):
        resp = fetch(url)
        assert resp.status == 503 and resp.headers["retry-after"] == "7"
        assert resp.headers["x-error-code"] == "Overloaded" and "error" in resp.json()
        assert resp.headers["x-repo-commit"] == tiny.main
    assert fetch(url).body == tiny.files["config.json"]
    assert [r.status for r in hub.log] == [200, 503, 503, 200]  # the dropped GET had sent its 200 headers


def test_fault_on_selects_request_kinds(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    url = resolve_url(hub, "config.json")
    hub.fault("acme/tiny", "config.json", Fault.status(500, on="head"))
    assert fetch(url).status == 200  # a GET does not match on="head"
    assert fetch(url, "HEAD").status == 500
    assert fetch(url, "HEAD").status == 200

    hub.fault("acme/tiny", "*", Fault.status(429, retry_after=1, on="api"))
    assert fetch(url).status == 200  # on="api" leaves resolve alone
    assert fetch(f"{hub.endpoint}/api/models/acme/tiny").status == 429
    assert fetch(f"{hub.endpoint}/api/models/acme/tiny").status == 200

    hub.fault("acme/tiny", "*", Fault.html_page(on="api"))
    page = fetch(f"{hub.endpoint}/api/models/acme/tiny/tree/main")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")

    hub.fault("acme/tiny", "*", Fault.api_body(b"[1, 2]"))
    assert fetch(url).status == 200  # file requests are not API calls
    odd = fetch(f"{hub.endpoint}/api/models/acme/tiny/revision/main")
    assert (odd.status, odd.body) == (200, b"[1, 2]")
    assert odd.headers["content-type"].startswith("application/json")
    assert json.loads(fetch(f"{hub.endpoint}/api/models/acme/tiny/revision/main").body)["sha"]

    hub.fault("acme/tiny", "*", Fault.status(502, times=None, on="any"))
    assert fetch(url).status == 502 and fetch(url, "HEAD").status == 502
    assert fetch(f"{hub.endpoint}/api/models/acme/tiny").status == 502
    assert fetch(f"{hub.endpoint}/tinygpt/resolve/main/config.json").status == 200  # other repos unaffected
    hub.clear_faults()
    assert fetch(url).status == 200


def test_head_faults_strike_before_the_status_line(hub: HubServer) -> None:
    hub.fault("acme/tiny", "config.json", Fault.drop_after(0, on="head"))
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        request(resolve_url(hub, "config.json"), "HEAD")
    hub.fault("acme/tiny", "config.json", Fault.stall(seconds=5, on="head"))
    with pytest.raises(TimeoutError):
        request(resolve_url(hub, "config.json"), "HEAD", timeout=0.1)
    assert [r.status for r in hub.log] == [0, 0]


def test_ignore_range_and_wrong_content_range(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    data = tiny.files[LFS]
    url = cdn_url(hub, LFS)
    hub.fault("acme/tiny", LFS, Fault.ignore_range())
    resp = fetch(url, headers={"Range": "bytes=1000-"})
    assert resp.status == 200 and resp.body == data and "content-range" not in resp.headers

    hub.fault("acme/tiny", LFS, Fault.wrong_content_range(10))
    resp = fetch(url, headers={"Range": "bytes=1000-1999"})
    assert resp.status == 206 and resp.headers["content-range"] == f"bytes 1010-1999/{len(data)}"
    assert resp.body == data[1010:2000]
    hub.fault("acme/tiny", LFS, Fault.wrong_content_range(7))
    resp = fetch(url)
    assert resp.status == 206 and resp.body == data[7:]


def test_flip_byte_and_zero_fill_use_absolute_offsets(
    hub: HubServer, direct_hub: HubServer, tiny: Tiny, fetch: Fetch
) -> None:
    data = tiny.files[LFS]
    for server, url in ((hub, cdn_url(hub, LFS)), (direct_hub, resolve_url(direct_hub, LFS))):
        server.fault("acme/tiny", LFS, Fault.flip_byte(5000))
        body = fetch(url).body
        assert len(body) == len(data) and body[5000] == data[5000] ^ 0xFF
        assert body[:5000] == data[:5000] and body[5001:] == data[5001:]

        server.fault("acme/tiny", LFS, Fault.flip_byte(5000))
        assert fetch(url, headers={"Range": "bytes=4990-5009"}).body[10] == data[5000] ^ 0xFF
        server.fault("acme/tiny", LFS, Fault.flip_byte(100))  # outside the range: bytes untouched
        assert fetch(url, headers={"Range": "bytes=4990-5009"}).body == data[4990:5010]

        server.fault("acme/tiny", LFS, Fault.zero_fill(1000, 2000))
        body = fetch(url, headers={"Range": "bytes=2500-"}).body
        assert body[:500] == bytes(500) and body[500:] == data[3000:]
        server.fault("acme/tiny", LFS, Fault.zero_fill(len(data) - 10, 1000))
        body = fetch(url).body
        assert len(body) == len(data) and body[-10:] == bytes(10) and body[:-10] == data[:-10]
    hub.fault("acme/tiny", "config.json", Fault.flip_byte(0))  # in-memory regular file
    assert fetch(resolve_url(hub, "config.json")).body[0] == tiny.files["config.json"][0] ^ 0xFF


def test_truncate_lfs_pointer_and_html_page(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    data = tiny.files[LFS]
    url = cdn_url(hub, LFS)
    hub.fault("acme/tiny", LFS, Fault.truncate(1234))
    resp = fetch(url)
    assert resp.status == 200 and resp.body == data[:1234] and resp.headers["content-length"] == "1234"

    hub.fault("acme/tiny", LFS, Fault.lfs_pointer())
    pointer = fetch(url).body
    assert (
        pointer
        == f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(data)}\nsize {len(data)}\n".encode()
    )

    hub.fault("acme/tiny", LFS, Fault.html_page())
    page = fetch(url, headers={"Range": "bytes=100-"})
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert page.body.startswith(b"<!DOCTYPE html>") and "etag" not in page.headers

    hub.fault("acme/tiny", "config.json", Fault.truncate(3, on="any"))
    head = fetch(resolve_url(hub, "config.json"), "HEAD")
    assert head.headers["content-length"] == "3" and head.headers["x-repo-commit"] == tiny.main


def test_new_version_changes_etag_body_and_listings(direct_hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    hub, path = direct_hub, "weights/shard.bin"
    old, new = tiny.files[path], b"the new content " * 100
    hub.fault("acme/tiny", path, Fault.new_version(new))
    url = resolve_url(hub, path)
    head = fetch(url, "HEAD")
    assert head.headers["etag"] == f'"{sha256(new)}"' and head.headers["content-length"] == str(len(new))
    assert fetch(url).body == new
    # A resume that still holds the old ETag gets the whole new body; one with the new ETag gets its range.
    stale = fetch(url, headers={"Range": "bytes=100-", "If-Range": f'"{sha256(old)}"'})
    assert stale.status == 200 and stale.body == new
    fresh = fetch(url, headers={"Range": "bytes=100-", "If-Range": f'"{sha256(new)}"'})
    assert fresh.status == 206 and fresh.body == new[100:]
    entry = {e["path"]: e for e in fetch(f"{hub.endpoint}/api/models/acme/tiny/tree/main/weights").json()}[
        path
    ]
    assert entry["size"] == len(new) and entry["lfs"]["oid"] == sha256(new)
    # It composes with a delivery fault: the dropped transfer already carries the new bytes.
    hub.fault("acme/tiny", path, Fault.drop_after(10))
    got, error = read_until_error(open_stream(url))
    assert got == new[:10] and error is not None
    assert [f.kind for f in hub.pending_faults()] == ["new_version"]  # times=None stays armed

    hub.fault("acme/tiny", "config.json", Fault.new_version(b"{}"))
    assert fetch(resolve_url(hub, "config.json"), "HEAD").headers["etag"] == f'"{git_blob(b"{}")}"'


def test_new_version_through_the_cdn(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    new = os.urandom(4096)
    hub.fault("acme/tiny", LFS, Fault.new_version(new))
    head = fetch(resolve_url(hub, LFS), "HEAD")
    assert head.headers["x-linked-etag"] == f'"{sha256(new)}"' and head.headers["x-linked-size"] == "4096"
    assert sha256(new) in head.headers["location"]
    cdn = fetch(head.headers["location"])
    assert cdn.body == new and cdn.headers["etag"] == f'"{sha256(new)}"'
    hub.clear_faults()
    old_link = cdn_url(hub, LFS)
    assert fetch(old_link).body == tiny.files[LFS]
    assert fetch(head.headers["location"]).status == 404  # nothing holds that content any more


def test_faults_are_per_repo_and_path(hub: HubServer, tiny: Tiny, fetch: Fetch) -> None:
    hub.fault("acme/tiny", "sub/dir/notes.txt", Fault.status(500, times=None))
    assert fetch(resolve_url(hub, "config.json")).status == 200
    assert fetch(f"{hub.endpoint}/tinygpt/resolve/main/config.json").status == 200
    assert fetch(resolve_url(hub, "sub/dir/notes.txt")).status == 500
    assert fetch(resolve_url(hub, "sub/dir/notes.txt", rev="v1.0")).status == 500
    with pytest.raises(ValueError):
        hub.fault("acme/tiny", "x")
    with pytest.raises(ValueError):
        Fault.status(200, times=0)


# ---------------------------------------------------------------------------------------------------------
# Throughput, throttling, mutation while running, shutdown


def test_throttle_is_roughly_honoured_and_changeable(tiny: Tiny, fetch: Fetch) -> None:
    repo = Repo("acme/t")
    repo.commit({"one-mib.bin": os.urandom(1 << 20)})
    with HubServer([repo], lfs_style="direct", throttle_bps=4 * (1 << 20)) as hub:
        url = resolve_url(hub, "one-mib.bin", repo="acme/t")
        started = time.monotonic()
        assert len(fetch(url).body) == 1 << 20
        assert time.monotonic() - started >= 0.15  # 0.25 s nominal
        hub.throttle_bps = None
        assert len(fetch(url).body) == 1 << 20
        assert hub.log[-1].duration < 0.1  # the server's own clock: robust to a busy test machine


def test_repos_can_change_while_serving(tiny: Tiny, fetch: Fetch) -> None:
    with HubServer() as hub:
        assert fetch(resolve_url(hub, "config.json")).status == 401
        hub.add_repo(tiny.repo)
        assert fetch(resolve_url(hub, "config.json")).body == tiny.files["config.json"]
        commit = tiny.repo.commit({"config.json": b"{}"}, message="live edit")
        resp = fetch(resolve_url(hub, "config.json"))
        assert resp.body == b"{}" and resp.headers["x-repo-commit"] == commit
        assert fetch(resolve_url(hub, "config.json", rev=tiny.main)).body == tiny.files["config.json"]


def test_stop_is_prompt_with_stalled_busy_throttled_and_idle_connections(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(64 << 20)  # sparse: cheap to make, far more than socket buffers hold
    repo = Repo("acme/big")
    repo.commit({"big.bin": big, "small.txt": b"x"}, lfs={"big.bin": False})
    threads_before = set(threading.enumerate())
    hub = HubServer([repo]).start()
    netloc = urlsplit(hub.endpoint).netloc
    host, port = netloc.split(":")

    hub.fault("acme/big", "small.txt", Fault.stall(seconds=60))
    stalled = http.client.HTTPConnection(netloc, timeout=10)
    stalled.request("GET", "/acme/big/resolve/main/small.txt")
    stalled.getresponse()  # headers arrived; the body never will
    unread = socket.create_connection((host, int(port)))
    unread.sendall(b"GET /acme/big/resolve/main/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
    idle = http.client.HTTPConnection(netloc, timeout=10)
    idle.request("GET", "/acme/big/resolve/main/small.txt")
    assert idle.getresponse().read() == b"x"  # now an idle keep-alive connection
    time.sleep(0.05)  # let the unread transfer fill the socket buffers and block
    hub.throttle_bps = 1 << 20
    throttled = http.client.HTTPConnection(netloc, timeout=10)
    throttled.request("GET", "/acme/big/resolve/main/big.bin")
    assert len(throttled.getresponse().read(1000)) == 1000  # a slow transfer in progress

    started = time.monotonic()
    hub.stop()
    assert time.monotonic() - started < 1.0
    leftover = [
        t for t in threading.enumerate() if t not in threads_before and t.name.startswith("vcache-testhub")
    ]
    assert leftover == []
    hub.stop()  # idempotent
    for conn in (stalled, idle, throttled):
        conn.close()
    unread.close()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1)


def test_odd_requests(hub: HubServer, fetch: Fetch) -> None:
    assert fetch(f"{hub.endpoint}/nothing/here").status == 404
    assert fetch(f"{hub.endpoint}/api/whatever").status == 404
    assert fetch(resolve_url(hub, "config.json"), "DELETE").status == 405
    assert fetch(resolve_url(hub, "config.json"), "POST", body=b"x").status == 405
    head = fetch(f"{hub.endpoint}/api/models/acme/tiny", "HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
    # A chunked request body, and a client that asks to close the connection.
    conn = http.client.HTTPConnection(urlsplit(hub.endpoint).netloc, timeout=5)
    conn.request(
        "POST",
        "/api/models/acme/tiny/paths-info/main",
        body=iter([b"paths=config.json", b"&paths=sub%2Fdir"]),
        headers={"Connection": "close"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert [e["path"] for e in json.loads(resp.read())] == ["config.json", "sub/dir"]
    assert resp.getheader("connection") == "close"
    conn.close()


def test_endpoint_before_start_and_restart_are_errors() -> None:
    hub = HubServer()
    with pytest.raises(RuntimeError):
        _ = hub.endpoint
    with hub, pytest.raises(RuntimeError):
        hub.start()
    with pytest.raises(ValueError):
        HubServer(lfs_style="sideways")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Repos from a folder, and the command line


def make_root(root: Path) -> None:
    for rel, data in {
        "acme/tiny/config.json": b'{"a": 1}',
        "acme/tiny/sub/notes.txt": b"notes",
        "acme/tiny/model.safetensors": b"\x00" * 64,
        "acme/tiny/.git/HEAD": b"hidden",
        "gpt2/config.json": b"{}",
        "datasets/acme/ds/data.csv": b"a,b\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_repos_from_directory(tmp_path: Path) -> None:
    make_root(tmp_path)
    repos = {(r.repo_type, r.repo_id): r for r in repos_from_directory(tmp_path)}
    assert set(repos) == {("model", "acme/tiny"), ("model", "gpt2"), ("dataset", "acme/ds")}
    files = repos[("model", "acme/tiny")].files_at("main")
    assert set(files) == {"config.json", "sub/notes.txt", "model.safetensors"}
    assert (
        files["model.safetensors"].lfs
        and files["model.safetensors"].source == tmp_path / "acme/tiny/model.safetensors"
    )


def test_command_line_serves_a_folder(tmp_path: Path) -> None:
    make_root(tmp_path)
    src = Path(__file__).resolve().parents[2] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(src)])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "vcache.testing.hub", "--root", str(tmp_path), "--lfs-style", "direct"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("endpoint: http://127.0.0.1:"), (
            line,
            proc.stderr.read() if proc.stderr else "",
        )
        endpoint = line.split(": ", 1)[1].strip()
        assert request(f"{endpoint}/acme/tiny/resolve/main/sub/notes.txt").body == b"notes"
        assert request(f"{endpoint}/gpt2/resolve/main/config.json").body == b"{}"
        assert request(f"{endpoint}/datasets/acme/ds/resolve/main/data.csv").body == b"a,b\n"
        lfs = request(f"{endpoint}/acme/tiny/resolve/main/model.safetensors", "HEAD")
        assert lfs.headers["etag"] == f'"{sha256(bytes(64))}"'
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_repo_file_constructors() -> None:
    f = RepoFile.from_bytes("a.bin", b"abc", lfs=True)
    assert f.sha256 == sha256(b"abc") and f.etag == f.sha256 and f.read_bytes() == b"abc"
    g = RepoFile.from_bytes("a.txt", b"abc", lfs=False)
    assert g.etag == g.blob_id == git_blob(b"abc") and g.pointer is None


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="wire_bytes needs Linux TCP_INFO")
def test_wire_bytes_of_a_cut_answer_exclude_the_servers_send_buffer(tmp_path: Path) -> None:
    """A client that vanishes mid-body: ``body_bytes`` counts what reached the server's socket, ``wire_bytes``
    only what the client's TCP acknowledged (what a kill-and-resume benchmark must count)."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(16 << 20))
    repo = Repo("acme/big")
    repo.commit({"big.bin": big})
    with HubServer([repo], lfs_style="direct") as hub:
        url = urlsplit(resolve_url(hub, "big.bin", repo="acme/big"))
        assert url.hostname and url.port
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # before connect: a small window
        sock.connect((url.hostname, url.port))
        sock.settimeout(10)
        sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        received = 0
        while received < 200_000:
            received += len(sock.recv(65536))
        time.sleep(0.2)  # the server fills its send buffer and blocks
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # an RST, as from a killed process
        deadline = time.monotonic() + 10
        while not hub.body_requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        (record,) = hub.body_requests()
    assert record.status == 200 and record.body_bytes < 16 << 20
    assert received - 1024 <= record.wire_bytes <= received + (1 << 20)  # header bytes are not body bytes
    assert record.wire_bytes < record.body_bytes  # the server's send buffer never crossed the wire
