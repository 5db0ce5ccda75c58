"""Fixtures for the cluster tests: real child processes, a filesystem whose flock does nothing, a 6-shard Hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from vcache.testing.models import LlamaShape, write_llama_checkpoint

SIX_SHARDS = "acme/six-shards"

# A sitecustomize that makes every flock succeed without excluding anyone: what Lustre with localflock or
# GPFS does across nodes (docs/design.md §5.1), reproduced inside one node for the child processes that load it.
_NOOP_FLOCK = """
import fcntl

def _flock_that_does_nothing(fd, operation):
    return None

fcntl.flock = _flock_that_does_nothing
"""


@pytest.fixture
def noop_flock_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose Python processes get a no-op ``fcntl.flock`` (via ``sitecustomize``)."""
    site = tmp_path_factory.mktemp("noop_flock")
    (site / "sitecustomize.py").write_text(_NOOP_FLOCK)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A fresh directory every user could reach (pytest's own tmp dirs sit under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="vcache-shared-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def spawn(code: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` with stdout/stderr captured (text)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=dict(env if env is not None else os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """Wait for ``proc``; return its stdout, failing the test with its stderr when it did not exit 0."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child did not finish in {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"child exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def wait_for_files(
    directory: Path, pattern: str, count: int, procs: list[subprocess.Popen[str]], timeout: float = 30.0
) -> None:
    """Wait until ``count`` files match ``pattern`` in ``directory`` (children say they are ready that way)."""
    deadline = time.monotonic() + timeout
    while len(list(directory.glob(pattern))) < count:
        for p in procs:
            if p.poll() is not None:
                finish(p)  # a child that died early: show why
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(list(directory.glob(pattern)))} of {count} children got ready")
        time.sleep(0.01)


@pytest.fixture(scope="session")
def six_shard_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-shaped checkpoint in 6 safetensors shards (~2.6 MiB in all) plus index and config."""
    folder = tmp_path_factory.mktemp("six") / "six-shards"
    shape = LlamaShape(hidden=128, intermediate=384, layers=6, heads=4, kv_heads=2, vocab=512)
    return write_llama_checkpoint(folder, shape, shards=6)


@pytest.fixture
def six_hub(six_shard_folder: Path) -> Iterator[Any]:
    """A local Hub serving ``acme/six-shards``."""
    from vcache.testing.hub import HubServer
    from vcache.testing.models import repo_from_folder

    repo = repo_from_folder(SIX_SHARDS, six_shard_folder)
    with HubServer([repo]) as server:
        yield server


def tree_listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root`` (symlinks not followed): relative path -> (mode, size, mtime_ns)."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
