"""The command line: exit codes, one-line errors, JSON output, and the README's demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vcache.cli import main
from vcache.report import human_bytes
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


# -- progress output: the bar's total is the plan, messages stand on their own lines ---------------------------
_FRAME = re.compile(r"file\(s\):.*\|\s*([\d.]+\w*)/([\d.]+\w*) \[([^\]]*)\]")
REFETCH_NOTE = f"{SHARD1}: attempt 1 failed verification"


def _planned(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _frames(raw: str) -> list[re.Match[str]]:
    """Every bar frame drawn, in order (frames are separated by carriage returns or newlines)."""
    return [m for seg in re.split(r"[\r\n]", raw) if (m := _FRAME.search(seg))]


def _assert_bar_kept_its_plan(raw: str, planned: int, refetched: int) -> None:
    from tqdm import tqdm

    frames = _frames(raw)
    assert frames, raw
    total = tqdm.format_sizeof(planned, divisor=1024)
    assert {m.group(2) for m in frames} == {total}, raw  # never grown by the bytes fetched again
    assert frames[-1].group(1) == total  # ... and filled exactly
    assert f"refetched {human_bytes(refetched)}" in frames[-1].group(3)  # shown apart


def test_progress_keeps_the_planned_total_and_prints_messages_on_their_own_line(
    hub: Any, cache_dir: Path, llama_folder: Path
) -> None:
    hub.fault(REPO, SHARD1, Fault.flip_byte(100))
    res = run("pull", REPO, "--cache-dir", str(cache_dir), env={"HF_ENDPOINT": hub.endpoint})
    assert res.exit_code == 0, res.output
    _assert_bar_kept_its_plan(res.stderr, _planned(llama_folder), (llama_folder / SHARD1).stat().st_size)
    # stderr is not a terminal here (a log file, a notebook cell): carriage returns do not clear a line, so
    # a message written after a frame would share the frame's line.
    lines = [ln for ln in res.stderr.split("\n") if REFETCH_NOTE in ln]
    assert len(lines) == 1 and lines[0].startswith(REFETCH_NOTE), res.stderr


def _render(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: carriage return to column 0, newline down, CSI sequences ignored."""
    screen, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", raw):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            if row == len(screen):
                screen.append("")
        elif not token.startswith("\x1b"):
            line = screen[row].ljust(col)
            screen[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [ln.rstrip() for ln in screen]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_on_a_terminal_writes_messages_above_the_bar(
    hub: Any, cache_dir: Path, llama_folder: Path
) -> None:
    import fcntl
    import pty
    import struct
    import termios

    hub.fault(REPO, SHARD1, Fault.flip_byte(100))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint}
    cmd = [sys.executable, "-m", "vcache", "pull", REPO, "--cache-dir", str(cache_dir)]
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave, env=env) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        assert proc.wait(timeout=60) == 0
    raw = b"".join(chunks).decode()
    _assert_bar_kept_its_plan(raw, _planned(llama_folder), (llama_folder / SHARD1).stat().st_size)
    screen = [ln for ln in _render(raw) if ln]
    notes = [ln for ln in screen if REFETCH_NOTE in ln]
    assert len(notes) == 1 and notes[0].startswith(REFETCH_NOTE), screen
    assert _FRAME.search(screen[-1]) and screen.index(notes[0]) < len(screen) - 1  # the bar stays below
@pytest.mark.parametrize("repo_id", ["", "a/b/c", "/abs", "org/..", f"{REPO}\t", "acme/--x"])
def test_invalid_repo_ids_exit_2_before_any_request(hub: Any, cache_dir: Path, repo_id: str) -> None:
    res = run("pull", repo_id, "--cache-dir", str(cache_dir), "--quiet", env={"HF_ENDPOINT": hub.endpoint})
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert (
        len(lines) == 1
        and lines[0].startswith("vcache: error: invalid repo id")
        and repr(repo_id) in lines[0]
    )
    assert hub.log == []  # refused locally: the server never heard of it
    assert not cache_dir.exists()


@pytest.mark.parametrize(
    "revision", ["../../../../../../victim.txt", "a/../../b", "..", "main\t", "x@{1}", ""]
)
def test_invalid_revisions_exit_2_before_any_request(hub: Any, cache_dir: Path, revision: str) -> None:
    env = {"HF_ENDPOINT": hub.endpoint}
    res = run("pull", REPO, "--revision", revision, "--cache-dir", str(cache_dir), "--quiet", env=env)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vcache: error: invalid revision"), lines
    assert hub.log == []
    assert not cache_dir.exists()


def test_crafted_revision_reads_no_ref_outside_the_cache_offline_or_in_verify(
    hub: Any, tmp_path: Path
) -> None:
    """A file outside the cache that holds a real commit id must not be taken for ``refs/<revision>``."""
    cache_dir = tmp_path / "cache"
    assert (
        run("pull", REPO, "--cache-dir", str(cache_dir), "-q", env={"HF_ENDPOINT": hub.endpoint}).exit_code
        == 0
    )
    commit = (cache_dir / "models--acme--tiny-llama" / "refs" / "main").read_text()
    (tmp_path / "outside").write_text(commit)
    crafted = "../../../outside"  # refs/ -> repo folder -> cache -> tmp_path
    assert (cache_dir / "models--acme--tiny-llama" / "refs" / crafted).resolve() == tmp_path / "outside"
    res = run("verify", REPO, "--revision", crafted, "--cache-dir", str(cache_dir))
    assert res.exit_code == 2 and "invalid revision" in res.output, res.output
    res = run("pull", REPO, "--revision", crafted, "--cache-dir", str(cache_dir), env={"HF_HUB_OFFLINE": "1"})
    assert res.exit_code == 2 and "invalid revision" in res.output, res.output


def test_verify_accepts_a_one_segment_repo_id(cache_dir: Path, llama_folder: Path) -> None:
    repo = repo_from_folder("gpt2", llama_folder)
    with HubServer([repo]) as hub:
        assert (
            run(
                "pull", "gpt2", "--cache-dir", str(cache_dir), "-q", env={"HF_ENDPOINT": hub.endpoint}
            ).exit_code
            == 0
        )
    res = run("verify", "gpt2", "--cache-dir", str(cache_dir))
    assert res.exit_code == 0, res.output
    assert "gpt2@" in res.output
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
