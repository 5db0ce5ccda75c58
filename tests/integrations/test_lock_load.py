"""``from_pretrained(..., lock=)``: a load pinned to a lockfile loads a cache that matches the lock and refuses
one that does not, before transformers reads a weight."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM  # noqa: E402

from vcache.errors import VerificationFailed  # noqa: E402
from vcache.integrations.transformers import from_pretrained  # noqa: E402
from vcache.lockfile import Lock  # noqa: E402
from vcache.pull import lock_repo, pull  # noqa: E402
from vcache.testing.hub import Fault  # noqa: E402

from .conftest import O_PROJ, REPO_ID, TinyLlama  # noqa: E402


def locked(hub: Any, tmp_path: Path) -> Path:
    """A lockfile of the served repo, made in a cache of its own."""
    entry, report = lock_repo(REPO_ID, endpoint=hub.endpoint, cache_dir=tmp_path / "locking-cache")
    assert entry is not None, report
    return Lock((entry,)).write(tmp_path / "vcache.lock")


def changed_shard(path: Path) -> bytes:
    """The shard with one tensor's values changed: valid safetensors, same layout and size."""
    from safetensors.numpy import load_file, save

    tensors = load_file(path)
    tensors[O_PROJ] = tensors[O_PROJ] * 2 + 1
    data = save(tensors, metadata={"format": "pt"})
    assert len(data) == path.stat().st_size and data != path.read_bytes()
    return data


def test_a_locked_load_loads_when_the_cache_matches_the_lock(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    logits_of: Callable[[Any], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = serve(tiny_llama.folder)
    lockfile = locked(hub, tmp_path)
    kw = {"endpoint": hub.endpoint, "cache_dir": tmp_path / "hub"}
    reference = logits_of(AutoModelForCausalLM.from_pretrained(tiny_llama.folder))
    model = from_pretrained(AutoModelForCausalLM, REPO_ID, lock=lockfile, **kw)
    assert torch.equal(logits_of(model), reference)
    commit = Lock.read(lockfile).repos[0].commit
    assert Path(model.config._name_or_path).name == commit

    # Offline, with the lock from VCACHE_LOCK: the cache is checked against it and the load goes ahead.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VCACHE_LOCK", str(lockfile))
    requests = len(hub.log)
    again = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    assert torch.equal(logits_of(again), reference)
    assert len(hub.log) == requests


def test_a_locked_load_refuses_other_bytes_before_transformers_reads_a_weight(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    spy_weight_reads: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = serve(tiny_llama.folder)
    lockfile = locked(hub, tmp_path)
    shard = tiny_llama.shard_of(O_PROJ)
    hub.fault(REPO_ID, shard, Fault.new_version(changed_shard(tiny_llama.folder / shard)))
    kw = {"endpoint": hub.endpoint, "cache_dir": tmp_path / "hub"}
    spy_weight_reads.clear()  # making the changed shard read the reference one

    with pytest.raises(VerificationFailed) as excinfo:
        from_pretrained(AutoModelForCausalLM, REPO_ID, lock=lockfile, **kw)
    assert shard in str(excinfo.value)
    assert "lock.digest_mismatch" in [f.code for f in excinfo.value.findings]
    assert spy_weight_reads == []  # no weight bytes read, no model built

    # A cache holding the server's changed (self-consistent) bytes at the locked commit, loaded offline.
    other = tmp_path / "other-cache"
    assert pull(REPO_ID, endpoint=hub.endpoint, cache_dir=other, lock=False).ok
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VerificationFailed) as excinfo:
        from_pretrained(AutoModelForCausalLM, REPO_ID, lock=lockfile, endpoint=hub.endpoint, cache_dir=other)
    assert shard in str(excinfo.value)
    assert "lock.digest_mismatch" in [f.code for f in excinfo.value.findings]
    assert spy_weight_reads == []
