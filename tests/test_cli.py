"""The command line: exit codes, one-line errors, JSON output, and the README's demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from transfer_helpers import KiB, MiB, blob, closed_endpoint, silent_server
from vcache.cli import main
from vcache.testing.hub import Fault, HubServer, Repo
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


# -- a Hub that stops answering: exit 3 within the give-up budget, after a line saying what vcache waits for --

GIVE_UP = 3.0
#: What a run may take beyond the budget: interpreter start-up and imports (~1 s), the last attempt's grace.
MARGIN = 4.0


def start_cli(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``python -m vcache ARGS`` in a real process with VCACHE_GIVE_UP_SECONDS=3; (process, stdout, stderr)."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    full = {**os.environ, "VCACHE_GIVE_UP_SECONDS": str(GIVE_UP), **env}
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "vcache", *args], env=full, stdout=o, stderr=e)
    return proc, out, err


def assert_gave_up(proc: subprocess.Popen[bytes], out: Path, err: Path, since: float, host: str) -> None:
    """Exit 3 within the budget, the waiting line on stderr first, an error naming the setting, no traceback."""
    try:
        code = proc.wait(timeout=GIVE_UP + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"vcache still running {GIVE_UP + 30:.0f} s later (give-up budget {GIVE_UP:g} s)")
    elapsed = time.monotonic() - since
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 3, stdout + stderr
    assert elapsed < GIVE_UP + MARGIN, f"gave up after {elapsed:.1f} s"
    waiting = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.startswith(f"waiting for {host}")]
    assert waiting and "giving up in" in waiting[0], stderr
    assert "VCACHE_GIVE_UP_SECONDS" in stdout + stderr and "Traceback" not in stderr


def test_refusing_endpoint_gives_up_within_the_budget(tmp_path: Path, cache_dir: Path) -> None:
    endpoint = closed_endpoint()
    started = time.monotonic()
    proc, out, err = start_cli(
        tmp_path, "pull", REPO, "--cache-dir", str(cache_dir), env={"HF_ENDPOINT": endpoint}
    )
    assert_gave_up(proc, out, err, started, endpoint.removeprefix("http://"))
    assert (
        err.read_text().strip().splitlines()[-1].startswith("vcache: error: resolving acme/tiny-llama@main")
    )


def test_api_that_accepts_and_never_answers_gives_up_within_the_budget(
    tmp_path: Path, cache_dir: Path
) -> None:
    with silent_server() as srv:
        started = time.monotonic()
        env = {"HF_ENDPOINT": srv.endpoint}
        proc, out, err = start_cli(tmp_path, "pull", REPO, "--cache-dir", str(cache_dir), env=env)
        assert_gave_up(proc, out, err, started, srv.endpoint.removeprefix("http://"))
        assert len(srv.requests) >= 1


def _bytes_landed(cache_dir: Path) -> bool:
    return any(p.stat().st_blocks > 0 for p in cache_dir.glob("*/.vcache/partials/*/data"))


@pytest.mark.parametrize(
    ("how", "max_connections"), [("killed", None), ("killed", "2"), ("stalled", None), ("stalled", "2")]
)
def test_hub_that_stops_mid_download_gives_up_within_the_budget(
    tmp_path: Path, cache_dir: Path, how: str, max_connections: str | None
) -> None:
    """Six files at once, through 2 or 16 connections: the budget is the pull's, not each file's or part's."""
    files = {f"w{i}.bin": blob(2 * MiB, seed=i) for i in range(6)}
    repo = Repo("acme/slow")
    repo.commit(files)
    with HubServer([repo], lfs_style="direct", throttle_bps=256 * KiB) as hub:
        if how == "stalled":  # alive but silent: some bytes, then nothing, and nothing to every retry
            for path in files:
                hub.fault(
                    "acme/slow", path, Fault.stall(after=64 * KiB, seconds=60), Fault.stall(0, 60, times=None)
                )
        env = {"HF_ENDPOINT": hub.endpoint}
        if max_connections:
            env["VCACHE_MAX_CONNECTIONS"] = max_connections
        started = time.monotonic()
        proc, out, err = start_cli(tmp_path, "pull", "acme/slow", "--cache-dir", str(cache_dir), env=env)
        deadline = time.monotonic() + 20
        while not _bytes_landed(cache_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _bytes_landed(cache_dir), err.read_text()
        if how == "killed":
            hub.stop()
            started = time.monotonic()
        assert_gave_up(proc, out, err, started, hub.endpoint.removeprefix("http://"))
    assert "ERROR w" in out.read_text()  # the table names the files that could not be fetched
