"""Benchmark: `vcache export | vcache import` (every check on) against `tar c | tar x` of the same snapshot.

Generates a repo of safetensors shards of random F32 weights (``--size`` MiB in all, 256 MiB shards, plus
small files), pulls it once from a local Hub (``vcache.testing.hub``) into a source cache, then alternately:

- vcache: ``vcache export REPO -o - | vcache import -`` into an empty cache: two processes and a pipe, as
  ``export -o - | ssh host vcache import -`` runs them. The import hashes every byte against the blob name
  (and small files against the manifest's sha256 too), runs the content scan in the same pass, judges,
  fsyncs and publishes each blob, writes ledger records, links the snapshot and runs the repo checks; the
  export verifies the revision (from the ledger) first;
- tar: ``tar -chf - -C <snapshot> . | tar -xf - -C <empty dir>`` (``-h``: the snapshot's symlinks
  dereferenced, so the same bytes cross the pipe; no checks, no fsync).

Both start from a source whose files are in the page cache, and write into a freshly emptied folder after a
``sync`` (so neither inherits the other's writeback; tar's output is still dirty in memory when it is timed,
vcache's is on disk: the import fsyncs every blob before publishing it). Reports
the medians, the ratio of throughputs (vcache / tar; the issue's target is at least 0.5), and the CPU seconds
each pair of processes used (user + system, from ``wait4``), which is steadier than wall time on a machine
that other work shares; the load average is printed before and after.

    python benchmarks/bench_bundle.py [--size 1024] [--runs 3] [--work /tmp/vcache-bench-bundle]

Timings are not asserted anywhere; the ratio is what the README reports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pull import MiB, base_env, make_shard

REPO = "bench/bundle"


def build_repo(work: Path, size_mib: int) -> Path:
    folder = work / "src" / f"bundle-{size_mib}"
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(1, size_mib // 256)
    for k in range(shards):
        make_shard(
            folder / f"model-{k + 1:05d}-of-{shards:05d}.safetensors", size_mib * MiB // shards, seed=k
        )
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 1024}))
    (folder / "README.md").write_text("# bench\n")
    return folder


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run a shell pipeline; (wall seconds, CPU seconds of its processes, exit status)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        print(f"  failed ({done.returncode}): {argv[-1][:200]}\n{done.stderr[-2000:]}", file=sys.stderr)
    return wall, cpu, done.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="MiB of shards (256 MiB each)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vcache-bench-bundle"))
    args = ap.parse_args()

    import compileall

    import vcache
    from vcache.cache import CacheRepo
    from vcache.pull import pull
    from vcache.testing.hub import HubServer
    from vcache.testing.models import repo_from_folder

    # Both vcache processes start from compiled bytecode, as an installed package does.
    compileall.compile_dir(str(Path(vcache.__file__).parent), quiet=1)
    work = args.work
    folder = build_repo(work, args.size)
    source = work / "source-cache"
    with HubServer([repo_from_folder(REPO, folder)]) as hub:
        report = pull(REPO, endpoint=hub.endpoint, cache_dir=source)
    assert report.ok, report.to_json()
    size = sum(f.size or 0 for f in report.files)
    snapshot = CacheRepo(source, REPO).snapshot_dir(report.commit or "")
    env = base_env("http://127.0.0.1:9", work / "home")
    env["HF_HUB_OFFLINE"] = "1"
    py = shlex.quote(sys.executable)
    dest_cache, dest_tar = work / "dest-cache", work / "dest-tar"
    src, snap, cache, out = (shlex.quote(str(p)) for p in (source, snapshot, dest_cache, dest_tar))
    pipelines = {
        "vcache": (
            dest_cache,
            f"{py} -m vcache export {REPO} -o - --cache-dir {src} -q | {py} -m vcache import - --cache-dir {cache} -q",
        ),
        "tar": (dest_tar, f"tar -chf - -C {snap} . | tar -xf - -C {out}"),
    }
    # Warm the source's page cache (both read it).
    subprocess.run(["sh", "-c", f"tar -chf - -C {snap} . > /dev/null"], check=True)
    print(f"{size / MiB:.0f} MiB in {len(report.files)} files; load average before: {os.getloadavg()}")
    results: dict[str, list[tuple[float, float]]] = {"vcache": [], "tar": []}
    for r in range(args.runs):
        for name in ("vcache", "tar") if r % 2 == 0 else ("tar", "vcache"):
            dest, line = pipelines[name]
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            # Neither pipeline inherits the other's writeback: tar leaves its 1 GiB dirty in the page cache
            # (the kernel writes it out later, during whatever runs next); vcache fsyncs what it publishes.
            os.sync()
            wall, cpu, status = timed(["bash", "-o", "pipefail", "-c", line], env)
            if status == 0:
                results[name].append((wall, cpu))
            print(
                f"  run {r + 1} {name:<7} {wall:6.2f} s  {size / wall / 1e6:7.1f} MB/s  CPU {cpu:5.2f} s",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()}")
    med = {name: statistics.median(w for w, _ in vals) for name, vals in results.items() if vals}
    cpu = {name: statistics.median(c for _, c in vals) for name, vals in results.items() if vals}
    print()
    print("| pipeline | throughput | median time | CPU (both processes) | speed vs tar |")
    print("|---|---|---|---|---|")
    for name in med:
        print(
            f"| {name} | {size / med[name] / 1e6:.0f} MB/s | {med[name]:.2f} s | {cpu[name]:.2f} s | "
            f"{med['tar'] / med[name]:.2f}x |"
        )


if __name__ == "__main__":
    main()
