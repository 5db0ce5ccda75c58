"""Quick throughput probe for the transfer engine (not the official benchmark; a starting point for it).

Serves one file from ``vcache.testing.hub.HubServer`` in a separate process (so the client's CPU time and
peak RSS are its own), then downloads it in fresh client processes, each scenario ``--repeat`` times:

* ``vcache``      : ``Transfer.fetch`` with its defaults (adaptive connections), sha256 of every byte;
* ``vcache-1``    : the same with ``connections_per_file=1``;
* ``official``    : ``huggingface_hub.hf_hub_download`` 2.4.0 (no digest), for the ratio;

unthrottled and, with ``--throttle``, with a per-connection cap (bytes/s). Prints one JSON line per run
and a summary (median and best MB/s, CPU seconds, peak RSS of the client process).

    PYTHONPATH=src .venv/bin/python benchmarks/transfer_probe.py --size-mib 1024 --repeat 3 \\
        --scenarios vcache,vcache-1,official --throttle 50e6

On a VM that hands out memory lazily (Firecracker), first-touch page-cache writes can run at ~400 MB/s and
dominate; ``--warm-gib N`` touches N GiB once first so that every scenario starts from the same state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = "acme/probe"
FILE = "model.safetensors"


def _serve(path: str, lfs_style: str, conn: Any) -> None:
    import socketserver

    # socketserver listens with a backlog of 5: a burst of new connections then loses SYNs and waits the
    # 1 s SYN retransmit, which measures the test server, not the client. Real CDNs have deep backlogs.
    socketserver.TCPServer.request_queue_size = 128
    from vcache.testing.hub import HubServer, Repo

    repo = Repo(REPO)
    commit = repo.commit({FILE: Path(path)}, lfs={FILE: True})
    with HubServer([repo], lfs_style=lfs_style) as hub:  # type: ignore[arg-type]
        conn.send((hub.endpoint, commit))
        while True:
            msg = conn.recv()
            if msg == "stop":
                return
            hub.throttle_bps = msg


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _wait_until_quiet(max_busy: float, timeout: float) -> float:
    """Wait (up to ``timeout``) until the machine is at most ``max_busy`` busy; return the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        b0, t0 = _cpu_ticks()
        time.sleep(0.5)
        b1, t1 = _cpu_ticks()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy <= max_busy or time.monotonic() > deadline:
            return busy


def _client(args: argparse.Namespace) -> None:
    """One download in this (fresh) process; prints a JSON line."""
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.environ.update(
        HF_ENDPOINT=args.endpoint,
        HF_HOME=str(out / "hf"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    # Import before the clock starts: only the download is measured.
    from huggingface_hub import hf_hub_download

    from vcache.hashing import Digest
    from vcache.transfer import FetchSpec, Transfer

    t0, c0 = time.perf_counter(), os.times()
    ok: bool | None
    if args.client == "official":
        hf_hub_download(REPO, FILE, revision=args.commit, cache_dir=str(out / "cache"))
        ok = None  # the official client does not hash
        connections = 1
    else:
        spec = FetchSpec(
            url=f"{args.endpoint}/{REPO}/resolve/{args.commit}/{FILE}",
            etag=args.sha256,
            size=args.size,
            expected=Digest("sha256", args.sha256),
            commit=args.commit,
            path=FILE,
        )
        per_file = 1 if args.client == "vcache-1" else None
        with Transfer(endpoint=args.endpoint, token=None, connections_per_file=per_file) as t:
            result = t.fetch(spec, out / "partials")
        ok = result.actual == spec.expected
        connections = result.attempts
    dt = time.perf_counter() - t0
    c1 = os.times()
    print(
        json.dumps(
            {
                "client": args.client,
                "mb_s": round(args.size / dt / 1e6, 1),
                "seconds": round(dt, 3),
                "cpu_s": round((c1.user - c0.user) + (c1.system - c0.system), 2),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "digest_ok": ok,
                "requests": connections,
            }
        ),
        flush=True,
    )
    shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    """Run the probe (or, with ``--client``, one download in this process)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--file", type=Path, help="serve this file instead of generating random bytes")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scenarios", default="vcache,vcache-1,official")
    p.add_argument("--throttle", type=float, default=None, help="also run with this per-connection cap")
    p.add_argument("--throttle-scenarios", help="scenarios for the throttled runs (default: --scenarios)")
    p.add_argument("--skip-unthrottled", action="store_true")
    p.add_argument("--lfs-style", choices=("redirect", "direct"), default="redirect")
    p.add_argument("--warm-gib", type=float, default=0.0)
    p.add_argument(
        "--quiet",
        type=float,
        default=0.15,
        help="before each run, wait until the machine is at most this busy",
    )
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--commit", help=argparse.SUPPRESS)
    p.add_argument("--sha256", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        _client(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="vcache-probe-"))
    try:
        source = args.file
        if source is None:
            source = work / "blob.bin"
            with open(source, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(1 << 20))
        size = source.stat().st_size
        h = hashlib.sha256()
        with open(source, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        sha = h.hexdigest()
        if args.warm_gib:
            block = bytearray(int(args.warm_gib * (1 << 30)))
            del block
        parent, child = mp.Pipe()
        server = mp.Process(target=_serve, args=(str(source), args.lfs_style, child), daemon=True)
        server.start()
        endpoint, commit = parent.recv()
        results: dict[str, list[dict[str, Any]]] = {}
        rounds = [] if args.skip_unthrottled else [(None, args.scenarios)]
        if args.throttle:
            rounds.append((args.throttle, args.throttle_scenarios or args.scenarios))
        for throttle, scenarios in rounds:
            parent.send(throttle)
            for _ in range(args.repeat):
                for scenario in scenarios.split(","):
                    cmd = [
                        sys.executable, __file__, "--client", scenario, "--endpoint", endpoint,
                        "--commit", commit, "--sha256", sha, "--size", str(size), "--out", str(work / "out"),
                    ]  # fmt: skip
                    idle_before = _wait_until_quiet(args.quiet, timeout=120)
                    b0, _ = _cpu_ticks()
                    line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
                    b1, _ = _cpu_ticks()
                    row = json.loads(line.splitlines()[-1])
                    row["throttle"] = throttle
                    row["machine_busy_before"] = round(idle_before, 2)
                    # every CPU-second the machine spent during the run (client + server + anyone else)
                    row["machine_cpu_s"] = round((b1 - b0) / os.sysconf("SC_CLK_TCK"), 2)
                    print(json.dumps(row), flush=True)
                    results.setdefault(f"{scenario} throttle={throttle}", []).append(row)
        parent.send("stop")
        server.join(5)
        print("\nsummary (MB/s median / best, CPU s median, peak RSS MiB max):")
        for key, rows in results.items():
            speeds = [r["mb_s"] for r in rows]
            print(
                f"  {key:32s} {statistics.median(speeds):8.0f} / {max(speeds):6.0f}   "
                f"cpu {statistics.median(r['cpu_s'] for r in rows):5.2f}   "
                f"rss {max(r['peak_rss_mib'] for r in rows):6.1f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
