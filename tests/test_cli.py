"""The command line: exit codes, one-line errors, JSON output, and the README's demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from transfer_helpers import KiB, MiB, blob, closed_endpoint, silent_server
from vcache.api import verify
from vcache.cache import CacheRepo
from vcache.cli import main
from vcache.hashing import Digest
from vcache.ledger import Ledger
from vcache.partial import PartialMeta, RangeSet, open_partial
from vcache.pull import pull
from vcache.quarantine import quarantine_file
from vcache.report import human_bytes
from vcache.testing.hub import Fault, HubServer, Repo
from vcache.testing.models import repo_from_folder

REPO = "acme/tiny-llama"
SHARD1 = "model-00001-of-00002.safetensors"
#: JSON nested deeper than Python's parser goes (it raises RecursionError near 1000 levels).
DEEP_JSON = "[" * 990 + "]" * 990


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def vcache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``vcache ARGS`` in a process of its own, as a user runs it: the real exit code, stdout and stderr.

    Whatever happens, it must not end in a Python traceback.
    """
    done = subprocess.run(
        [sys.executable, "-m", "vcache", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``vcache: error:`` line a failed command prints on stderr."""
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vcache: error:"), done.stderr
    return lines[0]


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


# ---- no tracebacks: hostile JSON, unreadable state, a Hub that is not one, bad --to targets --------------


def test_json_nested_too_deeply_is_a_finding_in_pull_verify_and_scan(
    llama_folder: Path, tmp_path: Path
) -> None:
    from huggingface_hub import snapshot_download

    deep = tmp_path / "deep"
    shutil.copytree(llama_folder, deep)
    (deep / "config.json").write_text(DEEP_JSON)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    with HubServer([repo_from_folder("acme/deep", deep), repo_from_folder(REPO, llama_folder)]) as hub:
        res = vcache(
            "pull", "acme/deep", "--cache-dir", str(ours), "--quiet", env={"HF_ENDPOINT": hub.endpoint}
        )
        assert res.returncode == 1, res.stdout + res.stderr
        assert any("config.json" in ln and "[sniff.invalid_json]" in ln for ln in res.stdout.splitlines())
        for repo_id in ("acme/deep", REPO):  # huggingface_hub checks nothing on the way in
            snapshot_download(repo_id, cache_dir=theirs, endpoint=hub.endpoint)

    res = vcache("scan", "--cache-dir", str(theirs))
    assert res.returncode == 1, res.stdout + res.stderr
    (problem,) = [ln for ln in res.stdout.splitlines() if ln.startswith(("FAIL", "WARN"))]
    assert "acme/deep@" in problem and "config.json: [sniff.invalid_json]" in problem
    assert "scanned 2 repo(s)" in res.stdout  # the scan went on to the other repo

    for args in (("verify", str(deep)), ("verify", "acme/deep", "--cache-dir", str(theirs))):
        res = vcache(*args)
        assert res.returncode == 1, res.stdout + res.stderr
        assert any("config.json" in ln and "[sniff.invalid_json]" in ln for ln in res.stdout.splitlines())


OWN_STATE = ["ledger record", "snapshot record", "tree", "quarantine report", "sidecar", "progress"]


@pytest.mark.parametrize("which", OWN_STATE)
def test_own_state_too_deep_to_read_is_ignored_with_a_warning(hub: Any, cache_dir: Path, which: str) -> None:
    env = {"HF_ENDPOINT": hub.endpoint}
    cache = ("--cache-dir", str(cache_dir))
    assert pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir).ok
    assert verify([REPO], cache_dir=cache_dir)[0].ok  # remembers the snapshot's verify
    repo = CacheRepo(cache_dir, REPO)
    commit = repo.read_ref("main")
    assert commit is not None
    etag = repo.linked_etag(commit, SHARD1)
    assert etag is not None
    commands: list[tuple[tuple[str, ...], dict[str, str]]] = [
        (("pull", REPO, "--quiet"), {**env, "HF_HUB_OFFLINE": "1"}),
        (("verify", REPO), env),
        (("scan",), env),
        (("quarantine", "list"), env),
        (("pull", REPO, "--quiet"), env),
    ]
    if which == "ledger record":
        target = repo.ledger_dir / f"{etag}.json"
    elif which == "snapshot record":
        target = Ledger(repo.ledger_dir).snapshot_record_path(commit)
    elif which == "tree":
        target = repo.root / "trees" / f"{commit}.json"
    elif which == "quarantine report":
        evidence = repo.root / "evidence.bin"
        evidence.write_bytes(b"kept for the record")
        entry = quarantine_file(
            repo,
            evidence,
            path="notes.bin",
            commit=commit,
            etag=None,
            expected_digest=None,
            actual_digest=None,
            findings=[],
            source="cache",
        )
        target = entry.folder / "report.json"
    else:  # a resumable partial of the shard, as a killed pull leaves it; `pull --force` fetches that file
        size = repo.blob_path(etag).stat().st_size
        meta = PartialMeta(etag, size, Digest("sha256", etag), commit, SHARD1)
        partial = open_partial(repo.partials, meta)
        partial.save(RangeSet([(0, 100)]), durable=RangeSet())
        partial.note_progress(RangeSet([(0, 200)]))
        partial.close()
        target = partial.sidecar_path if which == "sidecar" else partial.path / "progress.json"
        commands = [(("scan",), env), (("pull", REPO, "--force", "--quiet"), env)]
    assert target.is_file()
    target.write_text(DEEP_JSON)

    stderr = ""
    for args, command_env in commands:
        res = vcache(*args, *cache, env=command_env)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        stderr += res.stderr
    assert str(target) in stderr  # the warning names the file it ignored


def test_a_hub_answer_that_is_not_json_exits_3_naming_the_url_and_type(hub: Any, cache_dir: Path) -> None:
    hub.fault(REPO, "*", Fault.html_page(on="api"))  # a login proxy's page, 200 text/html
    res = vcache("pull", REPO, "--cache-dir", str(cache_dir), "--quiet", env={"HF_ENDPOINT": hub.endpoint})
    assert res.returncode == 3
    line = one_error_line(res)
    assert f"{hub.endpoint}/api/models/{REPO}/revision/main" in line and "text/html" in line


def test_quarantine_restore_to_folders_and_bad_targets(cache_dir: Path, tmp_path: Path) -> None:
    payload = b"quarantined bytes"
    repo = CacheRepo(cache_dir, REPO)
    repo.ensure_layout()
    evidence = repo.root / "evidence.bin"
    evidence.write_bytes(payload)
    entry = quarantine_file(
        repo,
        evidence,
        path="sub/model.safetensors",
        commit=None,
        etag=None,
        expected_digest=None,
        actual_digest=None,
        findings=[],
        source="cache",
    )

    def restore_to(to: str) -> subprocess.CompletedProcess[str]:
        return vcache("quarantine", "restore", entry.id, "--to", to, "--cache-dir", str(cache_dir))

    # an existing folder (with or without the slash): the file goes inside, under its own name
    out = tmp_path / "out"
    out.mkdir()
    for to in (str(out), f"{out}/"):
        res = restore_to(to)
        assert res.returncode == 0, res.stderr
        assert (out / "model.safetensors").read_bytes() == payload
        (out / "model.safetensors").unlink()
    # a file path in an existing folder: that file
    assert restore_to(str(tmp_path / "copy.bin")).returncode == 0
    assert (tmp_path / "copy.bin").read_bytes() == payload

    # a folder that does not exist, named as a folder: refused, and no file of that name appears
    res = restore_to(f"{tmp_path / 'missing_dir'}/")
    assert res.returncode == 2 and "missing_dir" in one_error_line(res)
    assert not (tmp_path / "missing_dir").exists()
    # a file in a folder that does not exist, or under a file
    (tmp_path / "afile").write_bytes(b"mine")
    for to in (tmp_path / "nope" / "x.bin", tmp_path / "afile" / "x.bin"):
        res = restore_to(str(to))
        assert res.returncode == 2 and str(to.parent) in one_error_line(res)
    assert not (tmp_path / "nope").exists() and (tmp_path / "afile").read_bytes() == b"mine"
    # a folder nothing may be written to (sysfs refuses new files, even to root)
    res = restore_to("/sys/")
    assert res.returncode == 3 and "/sys" in one_error_line(res)

    # quarantine never deletes: the entry and its bytes are all still there
    assert entry.data.read_bytes() == payload
    assert entry.id in vcache("quarantine", "list", "--cache-dir", str(cache_dir)).stdout
    # an entry whose bytes are gone: said so, and nothing is written at the target
    entry.data.unlink()
    res = restore_to(str(out))
    assert res.returncode == 3 and "quarantined bytes" in one_error_line(res)
    assert list(out.iterdir()) == []


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
