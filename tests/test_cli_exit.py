"""How the ``vcache`` process ends: ``cli.run`` skips the interpreter's teardown but keeps everything a caller
sees (exit status, every byte of output, exit handlers, threads that are still working)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vcache

SRC = Path(__file__).resolve().parents[1] / "src"


def _python(code: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


RUN = "import sys; sys.argv = ['vcache', *sys.argv[1:]]; from vcache.cli import run; run()"


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["--version"], 0),
        (["pull", "not a repo id"], 2),  # vcache's usage error
        (["pull", "--no-such-option"], 2),  # click's usage error
        (["verify", "/nonexistent/vcache-test-path"], 2),
    ],
)
def test_the_exit_status_is_the_commands(args: list[str], status: int, tmp_path: Path) -> None:
    out = _python(RUN, *args, tmp_path=tmp_path)
    assert out.returncode == status, out.stderr
    assert "Traceback" not in out.stderr
    if args == ["--version"]:
        assert vcache.__version__ in out.stdout


def test_all_output_reaches_a_pipe_and_exit_handlers_run(tmp_path: Path) -> None:
    """``ls --json`` of a cache with many repos: every byte arrives (nothing lost in a buffer)."""
    cache = tmp_path / "cache"
    for i in range(300):
        (cache / f"models--org--repo-{i:04d}" / "snapshots").mkdir(parents=True)
    code = "import atexit, sys; atexit.register(lambda: sys.stderr.write('handler ran\\n'))\n" + RUN.replace(
        "; ", "\n"
    )
    out = _python(code, "ls", "--json", "--cache-dir", str(cache), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert sorted(r["repo_id"] for r in listed["repos"]) == [f"org/repo-{i:04d}" for i in range(300)]
    assert out.stderr.strip().endswith("handler ran")


def test_a_thread_still_working_is_waited_for(tmp_path: Path) -> None:
    code = (
        "import sys, threading, time\n"
        "t = threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', flush=True)))\n"
        "t.start()\n" + RUN.replace("; ", "\n")
    )
    out = _python(code, "--version", tmp_path=tmp_path)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "thread done", out


def test_sys_exit_with_a_message_prints_it_and_exits_1(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom vcache import cli\n"
        "@cli.main.command('boom')\ndef boom() -> None:\n    sys.exit('it broke')\n" + RUN.replace("; ", "\n")
    )
    out = _python(code, "boom", tmp_path=tmp_path)
    assert out.returncode == 1 and out.stderr.strip() == "it broke", out


def test_python_dash_m_vcache_and_the_console_script_use_run() -> None:
    main = (SRC / "vcache" / "__main__.py").read_text()
    assert "run()" in main
    pyproject = (SRC.parent / "pyproject.toml").read_text()
    assert 'vcache = "vcache.cli:run"' in pyproject
