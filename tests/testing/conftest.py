"""Fixtures for the test-Hub tests: a small repo with every kind of file and revision, a running server,
and a raw HTTP/1.1 client that shows exactly what went over the wire."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from vcache.testing.hub import HubServer, Repo

TOKEN = "hf_good"


@dataclass(frozen=True)
class Resp:
    """A whole HTTP response: status, headers with lower-case names, and the body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> Resp:
    """One request on a fresh connection (``http.client``: no redirects followed, nothing decoded)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


Fetch = Callable[..., Resp]


@dataclass(frozen=True)
class Tiny:
    """``acme/tiny`` and what it holds: commit ids and the content of ``main``."""

    repo: Repo
    init: str  # first commit on main; also tag v1.0
    main: str  # head of main
    dev: str  # head of branch dev
    pr: str  # refs/pr/1
    files: dict[str, bytes]  # content at main
    weights: Path  # the file behind model.safetensors


@pytest.fixture(scope="session")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files served by path (read-only for every test)."""
    folder = tmp_path_factory.mktemp("blobs")
    (folder / "weights.safetensors").write_bytes(os.urandom(300_000))
    return folder


def make_tiny(blob_dir: Path) -> Tiny:
    """A model with a regular file, a path-backed LFS file, an in-memory LFS file, nested paths and a
    space in a name; plus a tag, a branch with its own commit, and a PR ref."""
    weights = blob_dir / "weights.safetensors"
    shard = os.urandom(70_000)
    repo = Repo("acme/tiny")
    init = repo.commit(
        {
            "config.json": b'{"model_type": "tiny"}\n',
            "model.safetensors": weights,
            "weights/shard.bin": shard,
            "sub/dir/notes.txt": b"nested notes\n",
            "docs/read me.txt": b"a space in the name\n",
        },
        message="init",
    )
    repo.tag("v1.0", init)
    repo.branch("dev", init)
    dev = repo.commit({"dev-only.txt": b"only on dev\n"}, branch="dev", message="dev work")
    main = repo.commit({"config.json": b'{"model_type": "tiny", "v": 2}\n'}, message="bump config")
    repo.branch("pr-source", main)
    pr = repo.commit({"pr.txt": b"proposed\n"}, branch="pr-source", message="proposal")
    repo.pr(1, pr)
    files = {path: f.read_bytes() for path, f in repo.files_at("main").items()}
    return Tiny(repo, init, main, dev, pr, files, weights)


@pytest.fixture
def tiny(blob_dir: Path) -> Tiny:
    """A fresh ``acme/tiny`` (see :func:`make_tiny`)."""
    return make_tiny(blob_dir)


@pytest.fixture
def extra_repos() -> list[Repo]:
    """A one-segment model, a dataset, a space, a private and a gated model."""
    gpt = Repo("tinygpt")
    gpt.commit({"config.json": b"{}", "pytorch_model.bin": b"\x00" * 1000})
    ds = Repo("acme/ds", repo_type="dataset")
    c = ds.commit({"data/train.txt": b"a\nb\n", "README.md": b"# ds\n"})
    ds.ref("refs/convert/parquet", c)
    space = Repo("acme/app", repo_type="space")
    space.commit({"app.py": b"print('hi')\n"})
    secret = Repo("acme/secret", private=True)
    secret.commit({"config.json": b"{}", "model.safetensors": os.urandom(5000)})
    gated = Repo("acme/gated", gated=True)
    gated.commit({"config.json": b"{}"})
    return [gpt, ds, space, secret, gated]


@pytest.fixture
def hub(tiny: Tiny, extra_repos: list[Repo]) -> Iterator[HubServer]:
    """A running server (LFS via CDN redirect) with ``acme/tiny`` and the extra repos; token ``hf_good``."""
    with HubServer([tiny.repo, *extra_repos], tokens={TOKEN}) as server:
        yield server


@pytest.fixture
def direct_hub(tiny: Tiny, extra_repos: list[Repo]) -> Iterator[HubServer]:
    """Like ``hub`` but serving LFS bodies from the hub origin itself."""
    with HubServer([tiny.repo, *extra_repos], lfs_style="direct", tokens={TOKEN}) as server:
        yield server


@pytest.fixture
def fetch() -> Fetch:
    """:func:`request` as a fixture: ``fetch(url, method="GET", headers=None, body=None)``."""
    return request
