"""Benchmark: `vcache pull` (every check on) against `huggingface_hub.snapshot_download`, side by side.

Generates the repos, serves them from a local Hub (``vcache.testing.hub``) in this process, and runs each
client as a separate process, alternately, on a cold cache (the source files stay in the page cache for
both). Reports medians, the ratio, and peak RSS (``wait4`` rusage of the client process):

  (a) 4 x 256 MiB safetensors shards + small files, unthrottled
  (b) the same with a 50 MB/s per-connection cap (a CDN-like limit)
  (c) one 1 GiB shard with the cap, plus ``aria2c -x 8 -s 8`` as a peer when it is installed
  (d) SIGKILL at about half of (c), then pull again: total body bytes / file size (from the server log)

    python benchmarks/bench_pull.py [--runs 3] [--work /tmp/vcache-bench] [--only a,b,c,d] [--settle 0]

``--settle S`` waits S seconds between deleting a client's cache and starting it. On a VM that hands freed
memory back to its host (virtio-balloon free page reporting, as on this Firecracker machine), memory that
stayed free for a few seconds must be faulted in again by the host when the page cache reuses it: about
1.5-2 CPU-seconds more per GiB written, for every client. ``--settle 5`` measures that "cold memory" case
on purpose; the default measures whatever state the machine is in (often warm, since each run frees the
previous run's 1 GiB just before).

vcache runs with all its checks: digest, sniff, strict safetensors structure and the tensor content scan.
Timings are not asserted anywhere; the ratios are what the README reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

MiB = 1 << 20
CAP = 50_000_000  # bytes/s per connection


def make_shard(path: Path, nbytes: int, seed: int) -> None:
    """A safetensors file of ``nbytes`` of random F32 weights in 64 MiB tensors (real data for the scan)."""
    from safetensors.numpy import save_file

    if path.exists() and path.stat().st_size >= nbytes:
        return
    rng = np.random.default_rng(seed)
    per = 64 * MiB
    tensors = {
        f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal(per // 4, dtype=np.float32).reshape(
            -1, 1024
        )
        for i in range(nbytes // per)
    }
    save_file(tensors, str(path), metadata={"format": "pt"})


def build_repos(work: Path) -> dict[str, Path]:
    four = work / "src" / "bench" / "four-shards"
    four.mkdir(parents=True, exist_ok=True)
    for k in range(4):
        make_shard(four / f"model-{k + 1:05d}-of-00004.safetensors", 256 * MiB, seed=k)
    (four / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 1024}))
    (four / "tokenizer.json").write_text(
        json.dumps({"version": "1.0", "vocab": {str(i): i for i in range(5000)}})
    )
    (four / "README.md").write_text("# bench\n")
    one = work / "src" / "bench" / "one-gib"
    one.mkdir(parents=True, exist_ok=True)
    make_shard(one / "model.safetensors", 1024 * MiB, seed=9)
    (one / "config.json").write_text("{}")
    return {"four": four, "one": one}


def _peak_rss_kib(pid: int, stop: threading.Event, out: list[int]) -> None:
    """Poll VmHWM (peak RSS since exec) of a child; wait4's ru_maxrss would count the forked parent."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out.append(int(line.split()[1]))
        except OSError:
            return
        stop.wait(0.02)


def run_client(
    argv: list[str], env: dict[str, str], kill_after: float | None = None
) -> tuple[float, int, int]:
    """Run a client; returns (seconds, peak RSS KiB, exit status)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop, samples = threading.Event(), [0]
    watcher = threading.Thread(target=_peak_rss_kib, args=(proc.pid, stop, samples), daemon=True)
    watcher.start()
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    status = proc.wait()
    elapsed = time.perf_counter() - t0
    stop.set()
    watcher.join()
    if status != 0 and kill_after is None:
        print(f"  client failed ({status}): {' '.join(argv[:3])}\n{err[-2000:]}", file=sys.stderr)
    return elapsed, max(samples), status


def clients(repo_id: str, cache: Path, endpoint: str) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "vcache": [py, "-m", "vcache", "pull", repo_id, "--cache-dir", str(cache), "--quiet"],
        "huggingface_hub": [
            py,
            "-c",
            f"from huggingface_hub import snapshot_download; snapshot_download({repo_id!r}, cache_dir={str(cache)!r})",
        ],
    }


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
    return env


def scenario(
    name: str,
    hub,
    repo_id: str,
    size: int,
    work: Path,
    runs: int,
    throttle: float | None,
    aria: bool,
    settle: float = 0.0,
) -> dict[str, list[tuple[float, int]]]:
    hub.throttle_bps = throttle
    env = base_env(hub.endpoint, work / "home")
    results: dict[str, list[tuple[float, int]]] = {}
    for r in range(runs):
        order = ["vcache", "huggingface_hub"] if r % 2 == 0 else ["huggingface_hub", "vcache"]
        if aria and shutil.which("aria2c"):
            order.append("aria2c")
        for client in order:
            cache = work / "cache" / client
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            if settle:
                time.sleep(settle)
            if client == "aria2c":
                url = f"{hub.endpoint}/{repo_id}/resolve/main/model.safetensors"
                argv = [
                    "aria2c",
                    "-x",
                    "8",
                    "-s",
                    "8",
                    "-k",
                    "16M",
                    "--file-allocation=none",
                    "-q",
                    "-d",
                    str(cache),
                    "-o",
                    "model.safetensors",
                    url,
                ]
            else:
                argv = clients(repo_id, cache, hub.endpoint)[client]
            secs, rss, status = run_client(argv, env)
            if status == 0:
                results.setdefault(client, []).append((secs, rss))
            print(
                f"  {name} run {r + 1} {client:<16} {secs:7.2f} s  {size / secs / 1e6:8.1f} MB/s  "
                f"peak RSS {rss / 1024:6.0f} MiB",
                flush=True,
            )
    return results


def summarize(name: str, size: int, res: dict[str, list[tuple[float, int]]]) -> list[str]:
    lines = []
    base = statistics.median(s for s, _ in res.get("huggingface_hub", [(float("nan"), 0)]))
    for client, vals in res.items():
        med = statistics.median(s for s, _ in vals)
        rss = max(r for _, r in vals) / 1024
        ratio = base / med if med else float("nan")
        lines.append(
            f"| {name} | {client} | {size / med / 1e6:.0f} MB/s | {med:.2f} s | {ratio:.2f}x | {rss:.0f} MiB |"
        )
    return lines


def kill_resume(hub, repo_id: str, size: int, work: Path) -> str:
    hub.throttle_bps = CAP
    env = base_env(hub.endpoint, work / "home")
    cache = work / "cache" / "kill"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    argv = clients(repo_id, cache, hub.endpoint)["vcache"]
    hub.clear_log()
    # Run once to learn the duration, then kill at about half of it.
    probe, _, _ = run_client(argv, env)
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    hub.clear_log()
    run_client(argv, env, kill_after=probe / 2)
    # The server logs an exchange when it ends: wait until the killed connections have all been noticed.
    first, settled = -1, 0
    while settled < 3:
        time.sleep(0.1)
        now = sum(r.body_bytes for r in hub.body_requests(repo_id, "model.safetensors"))
        settled = settled + 1 if now == first else 0
        first = now
    # What crossed the wire: bytes still in the server's send buffer at the kill never reached the client.
    delivered = sum(r.wire_bytes for r in hub.body_requests(repo_id, "model.safetensors"))
    from vcache.partial import list_partials

    recorded = sum(i.completed for d in cache.glob("*/.vcache/partials") for i in list_partials(d) if i.valid)
    secs, _, status = run_client(argv, env)
    requests = hub.body_requests(repo_id, "model.safetensors")
    total = sum(r.body_bytes for r in requests)
    wire = sum(r.wire_bytes for r in requests)
    return (
        f"SIGKILL at {probe / 2:.1f} s of {probe:.1f} s: {delivered / MiB:.0f} MiB delivered before the kill "
        f"({first / MiB:.0f} MiB written to the server's sockets), {recorded / MiB:.0f} MiB of it recorded "
        f"in the partial, {(wire - delivered) / MiB:.0f} MiB after; total delivered {wire / size:.3f} x the "
        f"file size ({total / size:.3f} x counting the server's send buffers; restart took {secs:.1f} s, "
        f"exit {status})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vcache-bench"))
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--settle", type=float, default=0.0, help="seconds between cache deletion and a run")
    args = ap.parse_args()
    from vcache.testing.hub import HubServer
    from vcache.testing.models import repo_from_folder

    only = set(args.only.split(","))
    # Both clients start from compiled bytecode, as an installed package does (pip compiles wheels at install
    # time, huggingface_hub's files are compiled here). An editable checkout run with PYTHONDONTWRITEBYTECODE
    # would otherwise compile vcache's sources in every client process (~60-100 ms of each run).
    import compileall

    import vcache

    compileall.compile_dir(str(Path(vcache.__file__).parent), quiet=1)
    folders = build_repos(args.work)
    four_size = sum(p.stat().st_size for p in folders["four"].iterdir())
    one_size = (folders["one"] / "model.safetensors").stat().st_size
    repos = [
        repo_from_folder("bench/four-shards", folders["four"]),
        repo_from_folder("bench/one-gib", folders["one"]),
    ]
    table = [
        "| scenario | client | throughput | median time | speed vs official | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    with HubServer(repos) as hub:
        scenarios = [
            ("a", "(a) 4x256 MiB", "bench/four-shards", four_size, None, False),
            ("b", "(b) 4x256 MiB @50MB/s/conn", "bench/four-shards", four_size, CAP, False),
            ("c", "(c) 1 GiB @50MB/s/conn", "bench/one-gib", one_size, CAP, True),
        ]
        for key, title, repo_id, size, throttle, aria in scenarios:
            if key in only:
                print(title)
                results = scenario(key, hub, repo_id, size, args.work, args.runs, throttle, aria, args.settle)
                table += summarize(title, size, results)
        kill_line = kill_resume(hub, "bench/one-gib", one_size, args.work) if "d" in only else ""
    print()
    print("\n".join(table))
    if kill_line:
        print()
        print("(d) " + kill_line)


if __name__ == "__main__":
    main()
