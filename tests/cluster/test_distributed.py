"""`vcache.distributed.pull` in a real 4-process gloo group on CPU: one download per cache, errors for all."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.conftest import SIX_SHARDS

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, endpoint: str, shared: str, node_caches: str, out_dir: str) -> None:
    """One rank: three calls, in the same order on every rank, as the helper requires."""
    import torch.distributed as dist

    import vcache.distributed
    from vcache.errors import RepoNotFound

    # Two simulated nodes of two ranks each; torchrun would set GROUP_RANK the same way.
    os.environ["GROUP_RANK"] = str(rank // 2)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    result: dict[str, Any] = {}
    try:
        # 1. One cache everyone sees: detected, global rank 0 downloads.
        result["shared"] = vcache.distributed.pull(
            SIX_SHARDS, endpoint=endpoint, cache_dir=shared, timeout=60
        )
        # 2. A node-local cache per node (detected: each node's ranks see only their own markers).
        local = str(Path(node_caches) / f"node{rank // 2}")
        result["local"] = vcache.distributed.pull(
            SIX_SHARDS + "-b", endpoint=endpoint, cache_dir=local, timeout=60
        )
        # 3. The same, stated by the caller, and a downloader that fails: every rank gets its error.
        try:
            vcache.distributed.pull(
                "acme/does-not-exist", endpoint=endpoint, cache_dir=local, shared_cache=False, timeout=60
            )
            result["missing"] = "no error"
        except RepoNotFound as exc:
            result["missing"] = str(exc)
        # Rank 0 hosts the store (tcp:// init): leaving before the slowest rank has read its last keys
        # would take the store away from it. Training scripts meet again in collectives; this one ends.
        dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def test_one_download_per_cache_and_errors_reach_every_rank(
    tmp_path: Path, six_shard_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.multiprocessing as mp

    from vcache.testing.hub import HubServer
    from vcache.testing.models import repo_from_folder

    monkeypatch.setenv("VCACHE_LOCK_MODE", "none")  # the helper alone must keep it to one download
    repos = [
        repo_from_folder(SIX_SHARDS, six_shard_folder),
        repo_from_folder(SIX_SHARDS + "-b", six_shard_folder),
    ]
    shared, node_caches = tmp_path / "shared", tmp_path / "nodes"
    with HubServer(repos) as hub:
        mp.spawn(
            _worker,
            args=(_free_port(), hub.endpoint, str(shared), str(node_caches), str(tmp_path)),
            nprocs=WORLD,
            join=True,
        )
        sizes = {
            p.relative_to(six_shard_folder).as_posix(): p.stat().st_size for p in six_shard_folder.rglob("*")
        }
        shared_log = {path: hub.body_requests(SIX_SHARDS, path) for path in sizes}
        local_log = {path: hub.body_requests(SIX_SHARDS + "-b", path) for path in sizes}

    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    # Shared cache: one body per file for the whole job, and every rank got the same verified snapshot.
    for path, size in sizes.items():
        assert [r.body_bytes for r in shared_log[path]] == [size], path
    assert len({r["shared"] for r in results}) == 1
    assert Path(results[0]["shared"]).parents[2] == shared
    # Node-local caches: one body per file per node, and each node's ranks share their node's path.
    for path, size in sizes.items():
        assert [r.body_bytes for r in local_log[path]] == [size, size], path
    assert results[0]["local"] == results[1]["local"] != results[2]["local"] == results[3]["local"]
    assert "node0" in results[0]["local"] and "node1" in results[2]["local"]
    # The downloader's failure, raised on every rank as the same error class, naming who failed.
    for rank, r in enumerate(results):
        assert "acme/does-not-exist" in r["missing"], (rank, r["missing"])
        if rank % 2:
            assert f"rank {rank - 1}, which downloads acme/does-not-exist" in r["missing"]


def test_outside_a_process_group_is_a_usage_error() -> None:
    import vcache.distributed
    from vcache.errors import UsageError

    with pytest.raises(UsageError, match="init_process_group"):
        vcache.distributed.pull(SIX_SHARDS)
