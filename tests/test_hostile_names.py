"""Hostile names: revision names, repo ids, and the paths and commit ids a server supplies.

Whatever the input, everything vcache writes or links stays inside the cache, and the command ends with
exit 0, 1, 2 or 3, never a traceback. The server here is deliberately not the test Hub (which refuses
such names): it resolves any revision name to the commit id it is told to, and lists whatever paths it
is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from vcache.cli import main

GOOD_COMMIT = "c0ffee" + "0" * 34
# The cache sits this deep inside the per-run folder, so a revision of up to DEPTH "../" still lands inside
# that folder, where the test can see what it wrote.
DEPTH = 14


@dataclass
class Answers:
    """What the hostile server says: the commit id any revision resolves to, and the files it lists."""

    sha: Any = GOOD_COMMIT
    files: dict[str, bytes] = field(default_factory=lambda: {"config.json": b"{}"})
    requests: list[str] = field(default_factory=list)


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        a = self.server.answers  # type: ignore[attr-defined]
        a.requests.append(self.path)
        raw = urlsplit(self.path).path
        body: bytes | None
        if raw.startswith("/api/") and "/revision/" in raw:
            body = json.dumps({"id": "evil/repo", "sha": a.sha}).encode()
        elif raw.startswith("/api/") and "/tree/" in raw:
            tree = [
                {"type": "file", "oid": _git_blob_id(data), "size": len(data), "path": path}
                for path, data in a.files.items()
            ]
            body = json.dumps(tree).encode()
        elif "/resolve/" in raw:
            # /{repo}/resolve/{commit}/{path}
            path = unquote(raw.split("/resolve/", 1)[1].split("/", 1)[1])
            body = a.files.get(path)
        else:
            body = None
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[str, Answers]]:
    """A server that resolves any revision name and lists any path (module-wide; reset per use)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.answers = Answers()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server.answers  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def _snapshot(root: Path, cache: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry under ``root`` outside ``cache``: its mode and content (or link target)."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == cache or cache in here.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            if p == cache:
                continue
            st = p.lstat()
            content: bytes | str | None = None
            if p.is_symlink():
                content = os.readlink(p)
            elif p.is_file():
                content = p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mode, content)
    return out


def _assert_links_stay_inside(cache: Path) -> None:
    real_cache = os.path.realpath(cache)
    for dirpath, dirnames, filenames in os.walk(cache):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                target = os.path.realpath(p)
                assert target == real_cache or target.startswith(real_cache + os.sep), (p, target)


def _pull(
    endpoint: str, answers: Answers, repo_id: str, revision: str | None
) -> tuple[int, str, dict[str, Any]]:
    """Run ``vcache pull`` in a fresh folder; return the exit code, the output, and what changed outside."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "victim.txt").write_text("precious")
        cache = root.joinpath(*[f"d{i}" for i in range(DEPTH)], "cache")
        cache.mkdir(parents=True)
        before = _snapshot(root, cache)
        answers.requests.clear()
        args = ["pull", repo_id, "--cache-dir", str(cache), "--quiet"]
        if revision is not None:
            args += ["--revision", revision]
        env = {"HF_ENDPOINT": endpoint, "VCACHE_RETRY_BACKOFF": "0"}
        res = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
        after = _snapshot(root, cache)
        changed = {k: after.get(k) for k in set(before) | set(after) if before.get(k) != after.get(k)}
        _assert_links_stay_inside(cache)
        return res.exit_code, res.output, changed


# From refs/<name>: refs -> repo folder -> cache -> the DEPTH folders -> the run's folder, which holds victim.txt.
_UP = "../" * (DEPTH + 3)


@pytest.mark.parametrize("revision", [f"{_UP}victim.txt", f"{_UP}made/dirs"], ids=["victim", "new-dirs"])
def test_revision_traversal_writes_nothing_outside_the_cache(
    hostile: tuple[str, Answers], revision: str
) -> None:
    """Issue 15, item 1: the server resolves the crafted name; the old code wrote ``refs/<name>`` outside
    (the commit id into victim.txt, or new folders)."""
    endpoint, answers = hostile
    answers.sha, answers.files = GOOD_COMMIT, {"config.json": b"{}"}
    code, output, changed = _pull(endpoint, answers, "evil/repo", revision)
    assert changed == {}
    assert code == 2 and "invalid revision" in output, output
    assert answers.requests == []  # refused before asking anyone


@pytest.mark.parametrize(
    "sha",
    ["../../../../victim.txt", "A" * 40, "a" * 39, "a" * 41, "g" * 40, 12, None, ["a" * 40], "a" * 40 + "\n"],
)
def test_a_commit_id_from_the_server_is_checked_before_it_names_a_folder(
    hostile: tuple[str, Answers], sha: Any
) -> None:
    endpoint, answers = hostile
    answers.sha, answers.files = sha, {"config.json": b"{}"}
    code, output, changed = _pull(endpoint, answers, "evil/repo", "main")
    assert changed == {}
    assert code == 3 and "did not return a commit" in output, output


# -- the property ---------------------------------------------------------------------------------------------

# Names made of plain parts ("a.b/c-d"): mostly valid, so that they reach the server and the disk.
_segments = st.lists(st.text("ab.-_@é ", min_size=1, max_size=5), min_size=1, max_size=3).map("/".join)
_revisions = st.one_of(
    st.sampled_from(
        [
            "main",
            "refs/pr/1",
            "v1.0",
            GOOD_COMMIT,
            f"{_UP}victim.txt",
            f"{_UP}made/dirs",
            "a/../../../b",
            "..",
            ".",
            "/abs",
            "a//b",
            "x.lock",
            "@",
            "a@{1}",
            "bad\udcffbytes",
            "",
        ]
    ),
    _segments,
    st.text("ab./-_@{}~^:?*[\\ \t\x00\x7f", max_size=3 * DEPTH),
)
_repo_ids = st.one_of(
    st.sampled_from(["evil/repo", "gpt2", "", "a/b/c", "/abs", "org/..", "evil/repo\t", "../x", "a--b/c"]),
    st.text("ab./-_\t", max_size=10),
)
_shas = st.one_of(
    st.sampled_from(["../../../../victim.txt", "A" * 40, "a" * 39, "..", "", "a" * 40 + "/x", GOOD_COMMIT]),
    st.text("0123456789abcdef./", min_size=38, max_size=42),
    st.integers(),
    st.none(),
)
_paths = st.one_of(
    st.sampled_from(
        [
            "config.json",
            "sub/dir/notes.txt",
            "../victim.txt",
            "../" * (DEPTH + 6) + "victim.txt",
            "/etc/x",
            "a/../../x",
            "a\\b",
            "a\x00b",
            ".",
            "..",
            "a//b",
            "C:x",
            "x\n",
            "bad\udcffname",
            "a" * 300,
        ]
    ),
    _segments,
    st.text("ab./\\\x00-", max_size=10),
)
_files = st.dictionaries(_paths, st.binary(max_size=8), min_size=1, max_size=3)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[str, str | None, Any, dict[str, bytes]]:
    """One hostile input (or all of them at once), the others ordinary, so that each kind is exercised."""
    hostile = draw(st.sampled_from(["repo_id", "revision", "sha", "paths", "all"]))
    every = hostile == "all"
    repo_id = (
        draw(_repo_ids) if every or hostile == "repo_id" else draw(st.sampled_from(["evil/repo", "gpt2"]))
    )
    revision = draw(_revisions) if every or hostile == "revision" else draw(st.sampled_from([None, "main"]))
    sha = draw(_shas) if every or hostile == "sha" else GOOD_COMMIT
    files = draw(_files) if every or hostile == "paths" else {"config.json": b"{}", "sub/a.txt": b"a"}
    return repo_id, revision, sha, files


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_cases())
@example(case=("evil/repo", f"{_UP}victim.txt", GOOD_COMMIT, {"config.json": b"{}"}))  # item 1 of the issue
@example(case=("evil/repo\t", None, GOOD_COMMIT, {"config.json": b"{}"}))  # was an InvalidURL traceback
@example(case=("evil/repo", None, GOOD_COMMIT, {"bad\udcffname": b""}))  # was a UnicodeEncodeError traceback
def test_whatever_the_names_writes_stay_inside_the_cache_and_exit_codes_are_documented(
    hostile: tuple[str, Answers], case: tuple[str, str | None, Any, dict[str, bytes]]
) -> None:
    endpoint, answers = hostile
    repo_id, revision, answers.sha, answers.files = case
    code, output, changed = _pull(endpoint, answers, repo_id, revision)
    event(f"exit {code}")
    assert changed == {}, output
    assert code in (0, 1, 2, 3), output
    if code == 2:
        assert answers.requests == [], output  # a usage error is found before any request
