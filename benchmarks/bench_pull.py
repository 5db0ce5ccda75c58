"""Benchmark: `vcache pull` (every check on) against `huggingface_hub.snapshot_download` and other downloaders.

Generates the repos and runs each client as a separate process, alternately, on a cold cache (the source
files stay in the page cache for every client). Every client process is timed whole, from spawning it to
its exit (interpreter start-up and imports included); figures are medians with their spread (min–max) over
``--runs`` alternating runs, and the ratio of medians (with the spread of the per-run ratios). Peak memory
is the larger of the highest ``VmHWM`` and the highest summed PSS (``/proc/<pid>/smaps_rollup``) of the
client's whole process tree, polled every 20 ms.

Scenarios (a)–(d) serve their repos from a test Hub (``vcache.testing.hub``) inside this process:

  (a) 4 x 256 MiB safetensors shards + small files, unthrottled
  (b) the same with a 50 MB/s per-connection cap (a CDN-like limit)
  (c) one 1 GiB shard with the cap, plus ``aria2c -x 8 -s 8`` as a peer when it is installed
  (d) SIGKILL at about half of (c)'s time, then pull again: body bytes / file size (from the server log)

Scenarios (e)–(h) follow an independent measurement of vcache: each runs against a test Hub in its own
process (``python -m vcache.testing.hub --root DIR --control [--throttle BPS]``), which writes file bodies
with ``os.sendfile`` (paced in chunks when capped) and counts every byte it writes to its sockets; the
script reads the counts from the server's ``/_testhub/`` routes.

  (e) 4 x 128 MiB safetensors + small files, unthrottled, vs ``snapshot_download``:
      target >= 1.5x, and vcache's peak memory <= 150 MiB
  (f) one 512 MiB shard at 50 MB/s per connection vs ``snapshot_download``: target >= 6x
  (g) SIGKILL when the server has written 50 % of a 256 MiB shard (50 MB/s per connection), then pull again:
      every byte the server wrote to its sockets (send buffers included, headers and API calls too) over both
      pulls / file size: target <= 1.05x
  (h) one 512 MiB shard, unthrottled, vs hf_transfer (``max_files=8``, 10 MiB chunks, no checks) on the
      shard's CDN URL (the test Hub's LFS redirect target): vcache's speed / hf_transfer's, target >= 0.5

It also times interpreter start-up (``python -c pass``), ``python -c "import vcache.pull"`` and
``vcache --version`` (medians of 5), and prints the load average before and after (the machine's noise).

    python benchmarks/bench_pull.py [--runs 5] [--only a,b,c,d,e,f,g,h] [--scale 1] [--work /tmp/vcache-bench]
                                    [--settle 0] [--warmup 1]

``--scale F`` multiplies every file size (e.g. ``--scale 0.05`` to check the script quickly; the ratios are
only meaningful at 1). hf_transfer comes with ``pip install 'vcache[bench]'``; without it (h) is skipped.

``--settle S`` waits S seconds between deleting a client's cache and starting it. On a VM that hands freed
memory back to its host (virtio-balloon free page reporting, as on this Firecracker machine), memory that
stayed free for a few seconds must be faulted in again by the host when the page cache reuses it: about
1.5-2 CPU-seconds more per GiB written, for every client. ``--settle 5`` measures that "cold memory" case
on purpose; the default measures whatever state the machine is in (often warm, since each run frees the
previous run's files just before).

``--warmup N`` (default 1) runs each client N times untimed before a scenario's timed runs, so that what the
previous scenario left behind (a large deletion's memory taken back by the host, a page cache full of other
files) is not paid by whichever client happens to run first.

vcache runs with all its checks: digest, sniff, strict safetensors structure and the tensor content scan.
Timings are not asserted anywhere; the ratios are what the README reports.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

MiB = 1 << 20
CAP = 50_000_000  # bytes/s per connection
HF_TRANSFER = (
    "import sys, hf_transfer; hf_transfer.download(url=sys.argv[1], filename=sys.argv[2], max_files=8, "
    "chunk_size=10 * 1024 * 1024, parallel_failures=3, max_retries=5)"
)


def scaled(mib: int, scale: float) -> int:
    """``mib`` MiB times ``scale``, in whole MiB (at least one)."""
    return max(1, round(mib * scale)) * MiB


def label(nbytes: int) -> str:
    """A size for titles: ``256 MiB``, ``1 GiB``."""
    mib = round(nbytes / MiB)
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def make_shard(path: Path, nbytes: int, seed: int) -> None:
    """A safetensors file of ``nbytes`` of random F32 weights in tensors of up to 64 MiB (real data for the
    scan)."""
    from safetensors.numpy import save_file

    if path.exists() and nbytes <= path.stat().st_size <= nbytes + MiB:
        return
    rng = np.random.default_rng(seed)
    per = min(64 * MiB, nbytes)
    tensors = {
        f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal(per // 4, dtype=np.float32).reshape(
            -1, 1024
        )
        for i in range(nbytes // per)
    }
    save_file(tensors, str(path), metadata={"format": "pt"})


def small_files(folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 1024}))
    (folder / "tokenizer.json").write_text(
        json.dumps({"version": "1.0", "vocab": {str(i): i for i in range(5000)}})
    )
    (folder / "README.md").write_text("# bench\n")


def build_repos(root: Path, scale: float) -> dict[str, Path]:
    """The folders of (a)–(d): four 256 MiB shards with small files, and one 1 GiB shard."""
    four = root / "bench" / "four-shards"
    four.mkdir(parents=True, exist_ok=True)
    for k in range(4):
        make_shard(four / f"model-{k + 1:05d}-of-00004.safetensors", scaled(256, scale), seed=k)
    small_files(four)
    one = root / "bench" / "one-gib"
    one.mkdir(parents=True, exist_ok=True)
    make_shard(one / "model.safetensors", scaled(1024, scale), seed=9)
    (one / "config.json").write_text("{}")
    return {"four": four, "one": one}


def build_hub_root(root: Path, kind: str, scale: float) -> Path:
    """A ``--root`` folder for a Hub process of (e)–(h), holding the one repo ``bench/<kind>``."""
    folder = root / kind / "bench" / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "four-128":
        for k in range(4):
            make_shard(folder / f"model-{k + 1:05d}-of-00004.safetensors", scaled(128, scale), seed=20 + k)
        small_files(folder)
    else:
        mib = {"one-512": 512, "one-256": 256}[kind]
        make_shard(folder / "model.safetensors", scaled(mib, scale), seed=mib)
        (folder / "config.json").write_text("{}")
    return root / kind


# ---------------------------------------------------------------------------------------------------------
# Running a client: whole-process time and the peak memory of its process tree


@dataclass(frozen=True)
class Run:
    secs: float
    peak_kib: int
    status: int


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from each process's parent in ``/proc/<pid>/stat``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, i = [root], 0
    while i < len(tree):
        tree.extend(parents.get(tree[i], []))
        i += 1
    return tree


def _kib_field(path: str, name: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Polls a process tree: the highest VmHWM of any of its processes and the highest sum of their PSS.

    VmHWM is each process's own peak since exec (``wait4``'s ru_maxrss would count the forked parent); the
    summed PSS counts every process the client starts, each shared page once. The tree is re-read every
    5th sample (about 0.1 s): a scan of ``/proc`` costs more than a sample.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.hwm = 0
        self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        tree, n = [self.pid], 0
        while not self._stop.is_set():
            if n % 5 == 0:
                tree = _descendants(self.pid)
            n += 1
            pss = 0
            for pid in tree:
                self.hwm = max(self.hwm, _kib_field(f"/proc/{pid}/status", "VmHWM:"))
                pss += _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")
            self.pss = max(self.pss, pss)
            self._stop.wait(0.02)

    def stop(self) -> int:
        """Stop polling; the peak in KiB."""
        self._stop.set()
        self._thread.join()
        return max(self.hwm, self.pss)


def run_client(
    argv: list[str],
    env: dict[str, str],
    *,
    kill_after: float | None = None,
    kill_when: Callable[[], bool] | None = None,
) -> Run:
    """Run a client to its exit, or SIGKILL it after ``kill_after`` s or once ``kill_when()`` holds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    memory = TreeMemory(proc.pid)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read() if proc.stderr else b""))
    reader.start()
    killed = False
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        killed = True
    elif kill_when is not None:
        while proc.poll() is None:
            if kill_when():
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.01)
    status = proc.wait()
    elapsed = time.perf_counter() - t0
    reader.join()
    peak = memory.stop()
    if status != 0 and not killed:
        err = b"".join(stderr).decode(errors="replace")
        print(f"  client failed ({status}): {' '.join(argv[:4])}\n{err[-2000:]}", file=sys.stderr)
    return Run(elapsed, peak, status)


def base_env(endpoint: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_ENABLE_HF_TRANSFER", None)
    return env


Argv = Callable[[Path], list[str]]  # a client's command line, given its (fresh) cache folder


def vcache_argv(repo_id: str) -> Argv:
    return lambda cache: [
        sys.executable,
        "-m",
        "vcache",
        "pull",
        repo_id,
        "--cache-dir",
        str(cache),
        "--quiet",
    ]


def official_argv(repo_id: str) -> Argv:
    return lambda cache: [
        sys.executable,
        "-c",
        f"from huggingface_hub import snapshot_download; snapshot_download({repo_id!r}, cache_dir={str(cache)!r})",
    ]


def aria_argv(url: str) -> Argv:
    return lambda cache: [
        "aria2c",
        *("-x", "8", "-s", "8", "-k", "16M", "--file-allocation=none", "-q"),
        *("-d", str(cache), "-o", "model.safetensors", url),
    ]


def hf_transfer_argv(url: str) -> Argv:
    return lambda cache: [sys.executable, "-c", HF_TRANSFER, url, str(cache / "model.safetensors")]


def alternate(
    name: str,
    size: int,
    clients: dict[str, Argv],
    env: dict[str, str],
    work: Path,
    runs: int,
    settle: float = 0.0,
    warmup: int = 1,
) -> dict[str, list[Run]]:
    """Run the clients in turn, ``runs`` times; the first two swap places every other run.

    Before them, each client runs ``warmup`` times untimed: the first runs after another scenario otherwise
    pay for what that one left (memory the hypervisor took back after a large deletion, a page cache full of
    other files), and which client pays depends only on who runs first.

    Each run starts on an empty cache folder: the client's previous output is deleted just before, so the
    memory it frees is reused at once. (Deleting it right after the run instead left the memory free for the
    other client's run, long enough for this VM's host to take it back: hf_transfer, which mostly fills the
    page cache, then took 1.00 s instead of 0.63 s for 512 MiB, while vcache hardly changed; see --settle.)
    A run that fails (or, for a client writing one file, leaves it short) is reported and left out.
    """
    results: dict[str, list[Run]] = {client: [] for client in clients}
    names = list(clients)
    for _ in range(warmup):
        for client in names:
            cache = work / "cache" / client
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            run_client(clients[client](cache), env)
            shutil.rmtree(cache, ignore_errors=True)
    if warmup:
        print(f"  {name}: {warmup} untimed warm-up run(s) of each client done", flush=True)
    for r in range(runs):
        order = names if r % 2 == 0 else [*names[:2][::-1], *names[2:]]
        for client in order:
            cache = work / "cache" / client
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            if settle:
                time.sleep(settle)
            run = run_client(clients[client](cache), env)
            single = cache / "model.safetensors"
            if single.exists() and single.stat().st_size != size:
                print(f"  {client} wrote {single.stat().st_size} bytes of {size}", file=sys.stderr)
                run = Run(run.secs, run.peak_kib, -1)
            if run.status == 0:
                results[client].append(run)
            print(
                f"  {name} run {r + 1} {client:<16} {run.secs:7.2f} s  {size / run.secs / 1e6:8.1f} MB/s  "
                f"peak memory {run.peak_kib / 1024:6.0f} MiB",
                flush=True,
            )
    return results


# ---------------------------------------------------------------------------------------------------------
# The table


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}"


def verdict(value: float, target: float, at_least: bool) -> str:
    met = value >= target if at_least else value <= target
    return "met" if met else "**missed**"


def rows(
    title: str,
    size: int,
    res: dict[str, list[Run]],
    baseline: str,
    *,
    speed_target: float | None = None,
    memory_target_mib: float | None = None,
) -> list[str]:
    """Table rows: per client the median time (spread), throughput, speed vs ``baseline`` (the ratio of
    medians, and the spread of the per-run ratios), peak memory (median, spread); targets apply to vcache."""
    lines = []
    base = [r.secs for r in res.get(baseline, [])]
    for client, runs in res.items():
        if not runs:
            lines.append(f"| {title} | {client} | every run failed | | | | |")
            continue
        times = [r.secs for r in runs]
        med = statistics.median(times)
        peaks = [r.peak_kib / 1024 for r in runs]
        if base:
            ratio = statistics.median(base) / med
            pairs = [b / t for b, t in zip(base, times, strict=False)]
            speed = f"{ratio:.2f}× ({spread(pairs, '{:.2f}')})"
        else:
            ratio, speed = float("nan"), "—"
        targets = []
        if client == "vcache" and speed_target is not None:
            targets.append(f"≥ {speed_target:g}× {verdict(ratio, speed_target, True)}")
        if client == "vcache" and memory_target_mib is not None:
            targets.append(
                f"≤ {memory_target_mib:g} MiB {verdict(statistics.median(peaks), memory_target_mib, False)}"
            )
        lines.append(
            f"| {title} | {client} | {med:.2f} s ({spread(times, '{:.2f}')}) | {size / med / 1e6:.0f} MB/s | "
            f"{speed} | {', '.join(targets) or '—'} | {statistics.median(peaks):.0f} MiB "
            f"({spread(peaks, '{:.0f}')}) |"
        )
        title = ""
    return lines


# ---------------------------------------------------------------------------------------------------------
# (a)–(d): the test Hub in this process


def scenario(
    name: str,
    hub: Any,
    repo_id: str,
    size: int,
    work: Path,
    runs: int,
    throttle: float | None,
    aria: bool,
    settle: float = 0.0,
    warmup: int = 1,
) -> dict[str, list[Run]]:
    hub.throttle_bps = throttle
    env = base_env(hub.endpoint, work / "home")
    clients = {"vcache": vcache_argv(repo_id), "huggingface_hub": official_argv(repo_id)}
    if aria and shutil.which("aria2c"):
        clients["aria2c"] = aria_argv(f"{hub.endpoint}/{repo_id}/resolve/main/model.safetensors")
    return alternate(name, size, clients, env, work, runs, settle, warmup)


def kill_resume(hub: Any, repo_id: str, size: int, work: Path) -> str:
    hub.throttle_bps = CAP
    env = base_env(hub.endpoint, work / "home")
    cache = work / "cache" / "kill"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    argv = vcache_argv(repo_id)(cache)
    hub.clear_log()
    # Run once to learn the duration, then kill at about half of it.
    probe = run_client(argv, env).secs
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    hub.clear_log()
    run_client(argv, env, kill_after=probe / 2)
    # Wait until the killed connections have all been noticed.
    deadline = time.monotonic() + 30
    while hub.responses_in_progress and time.monotonic() < deadline:
        time.sleep(0.05)
    first = sum(r.body_bytes for r in hub.body_requests(repo_id, "model.safetensors"))
    # What crossed the wire: bytes still in the server's send buffer at the kill never reached the client.
    delivered = sum(r.wire_bytes for r in hub.body_requests(repo_id, "model.safetensors"))
    from vcache.partial import list_partials

    recorded = sum(i.completed for d in cache.glob("*/.vcache/partials") for i in list_partials(d) if i.valid)
    run = run_client(argv, env)
    requests = hub.body_requests(repo_id, "model.safetensors")
    total = sum(r.body_bytes for r in requests)
    wire = sum(r.wire_bytes for r in requests)
    return (
        f"SIGKILL at {probe / 2:.1f} s of {probe:.1f} s: {delivered / MiB:.0f} MiB delivered before the kill "
        f"({first / MiB:.0f} MiB written to the server's sockets), {recorded / MiB:.0f} MiB of it recorded "
        f"in the partial, {(wire - delivered) / MiB:.0f} MiB after; total delivered {wire / size:.3f} x the "
        f"file size ({total / size:.3f} x counting the server's send buffers; restart took {run.secs:.1f} s, "
        f"exit {run.status})"
    )


# ---------------------------------------------------------------------------------------------------------
# (e)–(h): the test Hub in its own process


class HubProcess:
    """``python -m vcache.testing.hub --root ROOT --control`` in a subprocess, and its ``/_testhub/`` routes."""

    def __init__(self, root: Path, throttle: float | None, log: Path) -> None:
        argv = [sys.executable, "-m", "vcache.testing.hub", "--root", str(root), "--control"]
        if throttle is not None:
            argv += ["--throttle", str(throttle)]
        self._errors = log.open("ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._errors, text=True)
        lines: dict[str, str] = {}
        assert self.proc.stdout is not None
        while "cdn" not in lines:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the test Hub exited ({self.proc.wait()}); see {log}")
            key, _, value = line.partition(": ")
            lines[key] = value.strip()
        self.endpoint = lines["endpoint"]

    def __enter__(self) -> HubProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._errors.close()

    def _call(self, method: str, path: str) -> Any:
        conn = http.client.HTTPConnection(urlsplit(self.endpoint).netloc, timeout=30)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read()
            if method == "HEAD":
                return resp
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}")
            return json.loads(body)
        finally:
            conn.close()

    def counters(self) -> dict[str, int]:
        return dict(self._call("GET", "/_testhub/counters"))

    def log(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_testhub/log"))

    def clear_log(self) -> None:
        self._call("POST", "/_testhub/clear-log")

    def cdn_url(self, repo_id: str, path: str) -> str:
        """The URL the Hub redirects a resolve of this LFS file to (the CDN origin)."""
        resp = self._call("HEAD", f"/{repo_id}/resolve/main/{path}")
        location = resp.getheader("location")
        if resp.status != 302 or not location:
            raise RuntimeError(f"{repo_id}/{path} is not redirected to a CDN (HTTP {resp.status})")
        return str(location)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no response is being written (every connection a killed client left has been noticed)."""
        deadline = time.monotonic() + timeout
        while self.counters()["responses_in_progress"] and time.monotonic() < deadline:
            time.sleep(0.02)


def kill_resume_sent(
    hub: HubProcess, repo_id: str, size: int, work: Path, runs: int
) -> tuple[list[str], list[float], list[Run]]:
    """(g): per run, SIGKILL once the server has written half the shard, then pull again to the end.

    Returns detail lines, the ratios (every byte the server wrote to its sockets during both pulls / file
    size) and the restarts' runs.
    """
    env = base_env(hub.endpoint, work / "home")
    details, ratios, restarts = [], [], []
    for r in range(runs):
        cache = work / "cache" / "kill"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        argv = vcache_argv(repo_id)(cache)
        hub.clear_log()
        killed = run_client(argv, env, kill_when=lambda: hub.counters()["sent_bytes"] >= size / 2)
        hub.wait_idle()
        before = hub.counters()["sent_bytes"]
        before_log = hub.log()
        restart = run_client(argv, env)
        log = hub.log()
        sent = sum(rec["sent_bytes"] for rec in log)
        bodies = [
            rec
            for rec in log
            if rec["method"] == "GET"
            and rec["file_path"] == "model.safetensors"
            and rec["status"] in (200, 206)
        ]
        body = sum(rec["body_bytes"] for rec in bodies)
        acked = sum(rec["wire_bytes"] for rec in bodies)
        acked_before = sum(
            rec["wire_bytes"]
            for rec in before_log
            if rec["method"] == "GET"
            and rec["file_path"] == "model.safetensors"
            and rec["status"] in (200, 206)
        )
        if killed.status != -signal.SIGKILL or restart.status != 0:
            print(
                f"  (g) run {r + 1}: kill exit {killed.status}, restart exit {restart.status}",
                file=sys.stderr,
            )
            continue
        ratios.append(sent / size)
        restarts.append(restart)
        line = (
            f"  (g) run {r + 1}: killed at {killed.secs:.2f} s with {before / MiB:.0f} MiB written "
            f"({acked_before / MiB:.0f} MiB acknowledged by the client); restart {restart.secs:.2f} s; "
            f"written in all {sent / size:.3f} x the file size (bodies {body / size:.3f} x, "
            f"acknowledged {acked / size:.3f} x)"
        )
        print(line, flush=True)
        details.append(line.strip())
    return details, ratios, restarts


def startup(runs: int) -> list[str]:
    """Medians (and spread) of interpreter start-up, importing the pull path, and ``vcache --version``."""
    script = Path(sys.executable).with_name("vcache")
    version = [str(script)] if script.exists() else [sys.executable, "-m", "vcache"]
    commands = {
        "`python -c pass`": [sys.executable, "-c", "pass"],
        '`python -c "import vcache.pull"`': [sys.executable, "-c", "import vcache.pull"],
        "`vcache --version`": [*version, "--version"],
    }
    lines = []
    for label, argv in commands.items():
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - t0)
        lines.append(f"{label}: {statistics.median(times):.3f} s ({spread(times, '{:.3f}')})")
    return lines


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vcache-bench"))
    ap.add_argument("--only", default="a,b,c,d,e,f,g,h", help="comma-separated scenarios, e.g. e,f,g,h")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every file size (quick checks)")
    ap.add_argument("--settle", type=float, default=0.0, help="seconds between cache deletion and a run")
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed runs of each client before a scenario's runs"
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    unknown = only - set("abcdefgh")
    if unknown:
        ap.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; choose from a,b,c,d,e,f,g,h")
    # Every client starts from compiled bytecode, as an installed package does (pip compiles wheels at install
    # time, huggingface_hub's files are compiled here). An editable checkout run with PYTHONDONTWRITEBYTECODE
    # would otherwise compile vcache's sources in every client process (~60-100 ms of each run).
    import compileall

    import vcache
    from vcache.testing.hub import HubServer
    from vcache.testing.models import repo_from_folder

    compileall.compile_dir(str(Path(vcache.__file__).parent), quiet=1)
    print(f"start: {load()}", flush=True)
    data = args.work / ("src" if args.scale == 1 else f"src-x{args.scale:g}")
    table = [
        "| scenario | client | median time (min–max) | throughput | speed vs baseline (per-run) | target "
        "| peak memory (min–max) |",
        "|---|---|---|---|---|---|---|",
    ]
    kill_line = ""
    if only & set("abcd"):
        folders = build_repos(data, args.scale)
        four_size = sum(p.stat().st_size for p in folders["four"].iterdir())
        one_size = (folders["one"] / "model.safetensors").stat().st_size
        per = label(scaled(256, args.scale))
        repos = [
            repo_from_folder("bench/four-shards", folders["four"]),
            repo_from_folder("bench/one-gib", folders["one"]),
        ]
        with HubServer(repos) as hub:
            scenarios = [
                ("a", f"(a) 4×{per}", "bench/four-shards", four_size, None, False),
                ("b", f"(b) 4×{per} @50MB/s/conn", "bench/four-shards", four_size, CAP, False),
                ("c", f"(c) {label(one_size)} @50MB/s/conn", "bench/one-gib", one_size, CAP, True),
            ]
            for key, title, repo_id, size, throttle, aria in scenarios:
                if key in only:
                    print(title, flush=True)
                    results = scenario(
                        key,
                        hub,
                        repo_id,
                        size,
                        args.work,
                        args.runs,
                        throttle,
                        aria,
                        args.settle,
                        args.warmup,
                    )
                    table += rows(title, size, results, "huggingface_hub")
            kill_line = kill_resume(hub, "bench/one-gib", one_size, args.work) if "d" in only else ""

    hub_log = args.work / "testhub-stderr.log"
    g_lines: list[str] = []
    for key in "efgh":
        if key not in only:
            continue
        if key == "h":
            try:
                import hf_transfer  # noqa: F401
            except ImportError:
                print("(h) skipped: hf_transfer is not installed (pip install 'vcache[bench]')", flush=True)
                continue
        kind = {"e": "four-128", "f": "one-512", "g": "one-256", "h": "one-512"}[key]
        root = build_hub_root(data, kind, args.scale)
        repo_id = f"bench/{kind}"
        size = sum(p.stat().st_size for p in (root / repo_id).iterdir())
        shard = (root / repo_id / "model.safetensors").stat().st_size if key != "e" else size
        throttle = CAP if key in "fg" else None
        with HubProcess(root, throttle, hub_log) as hub:
            env = base_env(hub.endpoint, args.work / "home")
            if key == "e":
                title = f"(e) 4×{label(scaled(128, args.scale))}, Hub process"
                print(title, flush=True)
                clients = {"vcache": vcache_argv(repo_id), "huggingface_hub": official_argv(repo_id)}
                res = alternate(key, size, clients, env, args.work, args.runs, args.settle, args.warmup)
                table += rows(title, size, res, "huggingface_hub", speed_target=1.5, memory_target_mib=150)
            elif key == "f":
                title = f"(f) {label(shard)} @50MB/s/conn, Hub process"
                print(title, flush=True)
                clients = {"vcache": vcache_argv(repo_id), "huggingface_hub": official_argv(repo_id)}
                res = alternate(key, size, clients, env, args.work, args.runs, args.settle, args.warmup)
                table += rows(title, size, res, "huggingface_hub", speed_target=6)
            elif key == "h":
                title = f"(h) {label(shard)}, Hub process, vs hf_transfer on the CDN URL"
                print(title, flush=True)
                url = hub.cdn_url(repo_id, "model.safetensors")
                clients = {"vcache": vcache_argv(repo_id), "hf_transfer": hf_transfer_argv(url)}
                res = alternate(key, shard, clients, env, args.work, args.runs, args.settle, args.warmup)
                table += rows(title, shard, res, "hf_transfer", speed_target=0.5)
            else:
                title = f"(g) {label(shard)} @50MB/s/conn, SIGKILL at 50 %, pull again"
                print(title, flush=True)
                g_lines, ratios, restarts = kill_resume_sent(hub, repo_id, shard, args.work, args.runs)
                if ratios:
                    med = statistics.median(ratios)
                    times = [r.secs for r in restarts]
                    peaks = [r.peak_kib / 1024 for r in restarts]
                    table.append(
                        f"| {title} | vcache | restart {statistics.median(times):.2f} s "
                        f"({spread(times, '{:.2f}')}) | | {med:.3f}× the file size written to sockets "
                        f"({spread(ratios, '{:.3f}')}) | ≤ 1.05× {verdict(med, 1.05, False)} | "
                        f"{statistics.median(peaks):.0f} MiB ({spread(peaks, '{:.0f}')}) |"
                    )
                else:
                    table.append(f"| {title} | vcache | every run failed | | | | |")

    print()
    print("\n".join(table))
    if kill_line:
        print()
        print("(d) " + kill_line)
    if g_lines:
        print()
        print("\n".join(g_lines))
    print()
    print("Start-up, medians of 5: " + "; ".join(startup(5)))
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
