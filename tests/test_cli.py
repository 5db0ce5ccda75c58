"""The command line: exit codes, one-line errors, JSON output, and the README's demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vcache.cli import main
from vcache.testing.hub import Fault, HubServer
from vcache.testing.models import repo_from_folder

REPO = "acme/tiny-llama"
SHARD1 = "model-00001-of-00002.safetensors"


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_pull_exit_0_table_and_json(hub: Any, cache_dir: Path) -> None:
    env = {"HF_ENDPOINT": hub.endpoint}
    res = run("pull", REPO, "--cache-dir", str(cache_dir), env=env)
    assert res.exit_code == 0, res.output
    assert "snapshot:" in res.output and SHARD1 in res.output
    assert "OK" in next(ln for ln in res.stdout.splitlines() if SHARD1 in ln)
    res = run("pull", REPO, "--cache-dir", str(cache_dir), "--json", env=env)
    assert res.exit_code == 0
    doc = json.loads(res.output)
    assert doc["verdict"] == "ok" and doc["repo_id"] == REPO and len(doc["commit"]) == 40
    for f in doc["files"]:
        assert {"path", "verdict", "findings", "size", "digest", "attempts", "bytes_transferred"} <= set(f)
        assert f["cached"] is True and f["bytes_transferred"] == 0


def test_pull_failure_exit_1_names_file_and_digests(hub: Any, cache_dir: Path) -> None:
    hub.fault(REPO, SHARD1, Fault.flip_byte(100, times=None))
    env = {"HF_ENDPOINT": hub.endpoint, "VCACHE_RETRY_BACKOFF": "0"}
    res = run("pull", REPO, "--cache-dir", str(cache_dir), "--quiet", env=env)
    assert res.exit_code == 1, res.output
    assert any(SHARD1 in ln and "FAIL" in ln for ln in res.output.splitlines())
    line = next(ln for ln in res.output.splitlines() if "[digest_mismatch]" in ln)
    assert SHARD1 in line and line.count("sha256:") == 2
    assert "quarantined as" in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("acme/does-not-exist",), "not found"),
        ((REPO, "--revision", "nope"), "revision not found"),
    ],
)
def test_hub_errors_exit_3_one_line(hub: Any, cache_dir: Path, args: tuple[str, ...], needle: str) -> None:
    res = run("pull", *args, "--cache-dir", str(cache_dir), "--quiet", env={"HF_ENDPOINT": hub.endpoint})
    assert res.exit_code == 3
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vcache: error:") and needle in lines[0]


def test_usage_errors_exit_2(cache_dir: Path) -> None:
    assert run("pull", REPO, "--workers", "0").exit_code == 2
    assert run("pull").exit_code == 2
    assert run("quarantine", "purge", "--cache-dir", str(cache_dir)).exit_code == 2


def test_token_never_printed(llama_folder: Path, cache_dir: Path) -> None:
    token = "hf_TOPSECRET987"
    repo = repo_from_folder(REPO, llama_folder, private=True)
    with HubServer([repo], tokens={token}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint}
        res = run("-vv", "pull", REPO, "--cache-dir", str(cache_dir), "--token", token, "--json", env=env)
        assert res.exit_code == 0, res.output
        assert token not in res.output
        res = run("pull", REPO, "--cache-dir", str(cache_dir / "other"), "--token", "hf_wrong", env=env)
        assert res.exit_code == 3 and "hf_wrong" not in res.output


def test_demo_runs_offline() -> None:
    res = run("demo")
    assert res.exit_code == 0, res.output
    assert "Caught:" in res.output and "Verified snapshot:" in res.output


@pytest.mark.parametrize(
    "fault",
    [Fault.status(403, times=None), Fault.status(404, times=None, error_code="RevisionNotFound", on="any")],
    ids=["403_forever", "revision_vanished"],
)
def test_a_shard_that_cannot_be_fetched_exits_3_not_1(hub: Any, cache_dir: Path, fault: Fault) -> None:
    hub.fault(REPO, SHARD1, fault)
    res = run("pull", REPO, "--cache-dir", str(cache_dir), "--quiet", env={"HF_ENDPOINT": hub.endpoint})
    assert res.exit_code == 3, res.output
    assert "index.missing_shard" not in res.output
    assert any(ln.strip().startswith(f"ERROR {SHARD1}:") for ln in res.output.splitlines())


def test_bad_bytes_exit_1_even_when_another_file_cannot_be_fetched(hub: Any, cache_dir: Path) -> None:
    hub.fault(REPO, SHARD1, Fault.flip_byte(100, times=None))
    hub.fault(REPO, "model-00002-of-00002.safetensors", Fault.status(403, times=None))
    res = run("pull", REPO, "--cache-dir", str(cache_dir), "--quiet", env={"HF_ENDPOINT": hub.endpoint})
    assert res.exit_code == 1, res.output
    assert "[digest_mismatch]" in res.output and "ERROR model-00002-of-00002.safetensors:" in res.output


def test_an_include_pattern_that_matches_nothing_exits_2_and_writes_nothing(
    hub: Any, cache_dir: Path
) -> None:
    env = {"HF_ENDPOINT": hub.endpoint}
    res = run("pull", REPO, "--cache-dir", str(cache_dir), "--include", "[", "--quiet", env=env)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vcache: error:") and "'['" in lines[0]
    assert "snapshot:" not in res.output
    assert not cache_dir.exists()  # no refs/main, no trees/, no snapshot folder
    assert run("pull", REPO, "--cache-dir", str(cache_dir), "--quiet", env=env).exit_code == 0
    assert run("verify", REPO, "--cache-dir", str(cache_dir)).exit_code == 0
