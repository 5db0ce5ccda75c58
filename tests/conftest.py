"""Shared fixtures: an isolated HF environment per test, generated checkpoints, and a local Hub."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vcache.testing.models import LlamaShape, write_llama_checkpoint

# Nothing in the suite may reach a real host: the default endpoint points at a closed loopback port,
# so a test that forgets `endpoint=` fails fast instead of going online.
CLOSED_ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def isolated_hf_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME / HF_HUB_CACHE in a fresh temp dir, telemetry and Xet off, no token, online."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_ENDPOINT)
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
        "VCACHE_LOCK_TIMEOUT",
        "VCACHE_LOCK",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A fresh HF cache root."""
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Llama-shaped checkpoint: 2 safetensors shards + index + config (session-wide, read-only)."""
    folder = tmp_path_factory.mktemp("llama") / "tiny-llama"
    shape = LlamaShape(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, vocab=512)
    return write_llama_checkpoint(
        folder, shape, shards=2, extra_files={"sub/dir/notes.txt": b"nested file\n"}
    )


@pytest.fixture
def hub(llama_folder: Path) -> Iterator[object]:
    """A local Hub serving ``acme/tiny-llama`` (LFS via a CDN redirect) with the checkpoint above."""
    from vcache.testing.hub import HubServer
    from vcache.testing.models import repo_from_folder

    repo = repo_from_folder("acme/tiny-llama", llama_folder)
    with HubServer([repo]) as server:
        yield server


@pytest.fixture
def dead_writer_partial() -> Callable[..., Path]:
    """Make a pull process that was killed mid-download: ``(cache_dir, repo_id, path, data, upto)`` leaves the
    partial of ``path`` (content ``data``, LFS etag = its sha256) holding its first ``upto`` bytes, with a
    checkpointed sidecar, written by a real process that then dies; returns the partial's directory."""
    import hashlib
    import multiprocessing as mp
    import os

    from vcache.cache import CacheRepo
    from vcache.hashing import Digest
    from vcache.partial import PartialMeta, RangeSet, list_partials, open_partial

    def make(
        cache_dir: Path, repo_id: str, path: str, data: bytes, upto: int, commit: str = "0" * 40
    ) -> Path:
        sha = hashlib.sha256(data).hexdigest()
        meta = PartialMeta(sha, len(data), Digest("sha256", sha), commit, path)
        partials = CacheRepo(cache_dir, repo_id).partials

        def write_and_die() -> None:
            part = open_partial(partials, meta)
            os.pwrite(part.fd, data[:upto], 0)
            part.save(RangeSet([(0, upto)]))
            os._exit(0)  # no cleanup, like SIGKILL

        proc = mp.get_context("fork").Process(target=write_and_die)
        proc.start()
        proc.join()
        assert proc.exitcode == 0
        (info,) = [
            p for p in list_partials(partials) if p.etag == sha and p.writer_id.startswith(f"{proc.pid}-")
        ]
        assert info.valid and info.completed == upto
        return info.path

    return make
