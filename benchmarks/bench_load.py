"""What the verified from_pretrained path costs over a plain transformers load of the same snapshot.

Builds a Llama checkpoint of a few hundred MB (hidden 1024, 8 layers, fp32, sharded), serves it from a local
HubServer, pulls it once into a fresh cache (download + full verification), then times, median of N
alternating runs on the already-verified, page-cached snapshot:

- plain:    ``AutoModelForCausalLM.from_pretrained(<snapshot path>)``
- verified: ``vcache.integrations.transformers.from_pretrained(AutoModelForCausalLM, repo_id)`` offline
            (``HF_HUB_OFFLINE=1``: ledger lookups, no re-hash), and once online against the local Hub
            (revision resolved over HTTP, then the same);

each as a bare load (fp32 as stored), a load plus the first forward pass (transformers 5 maps the shards
lazily, so a bare load reads almost no weight bytes; the first forward reads them all), and a load cast to
bf16 (every weight is read and converted); then the first offline load after a pull (the snapshot record
and the remembered completeness verdict under ``.vcache/ledger/{snapshots,models}/`` removed before each
run, so they are derived and written again), and the parts of the verified path on their own. Target:
verified-offline overhead < 10 %.

Run: ``python benchmarks/bench_load.py [--runs 15] [--layers 8] [--hidden 1024] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ID = "bench/llama-1024"


def build_checkpoint(folder: Path, *, hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """Save a seeded Llama, sharded; returns the bytes of weights written."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 256,
        vocab_size=vocab,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="200MB")
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


@contextlib.contextmanager
def offline(on: bool) -> Iterator[None]:
    old = os.environ.get("HF_HUB_OFFLINE")
    if on:
        os.environ["HF_HUB_OFFLINE"] = "1"
    else:
        os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def plain_load(snapshot: str, **extra: Any) -> Callable[[], Any]:
    """``AutoModelForCausalLM.from_pretrained(snapshot, **extra)`` as a thunk."""

    def load() -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(snapshot, **extra)

    return load


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in DIR and leave it (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from vcache.cache import CacheRepo
    from vcache.integrations.transformers import check_loaded_model, check_model_completeness, from_pretrained
    from vcache.integrations.transformers._after_load import _scanned_by_pull
    from vcache.integrations.transformers._remembered import _RememberedVerdict
    from vcache.pull import pull
    from vcache.testing.hub import HubServer, Repo

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.simplefilter("ignore")

    work = args.keep or Path(tempfile.mkdtemp(prefix="vcache-bench-load-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        folder = work / "published"
        if not (folder / "config.json").exists():
            t = time.perf_counter()
            nbytes = build_checkpoint(
                folder,
                hidden=args.hidden,
                layers=args.layers,
                intermediate=args.intermediate,
                vocab=args.vocab,
            )
            print(f"built checkpoint: {nbytes / 2**20:.0f} MiB in {time.perf_counter() - t:.1f} s")
        nbytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        shards = len(list(folder.glob("*.safetensors")))
        cache = work / "hub"
        shutil.rmtree(cache, ignore_errors=True)

        repo = Repo(REPO_ID)
        repo.commit({p.name: p for p in sorted(folder.iterdir()) if p.is_file()})
        with HubServer([repo]) as hub:
            kw: dict[str, Any] = {"endpoint": hub.endpoint, "cache_dir": cache}
            t = time.perf_counter()
            with offline(False):
                report = pull(REPO_ID, **kw)
            first = time.perf_counter() - t
            assert report.ok and report.snapshot_path, report.to_json()
            snapshot = report.snapshot_path
            print(
                f"first pull (download + verify): {first:.2f} s for {nbytes / 2**20:.0f} MiB in {shards} shards "
                f"({nbytes / first / 1e6:.0f} MB/s)"
            )
            print(f"torch threads: {torch.get_num_threads()}; runs: {args.runs} (median, alternating order)")

            forward_ids = torch.tensor([[1, 5, 9, 17, 42, 99, 200, 2]])

            def first_forward(model: Any) -> Any:
                with torch.no_grad():
                    return model(input_ids=forward_ids).logits

            def verified(online: bool = False, **extra: Any) -> Any:
                with offline(not online):
                    return from_pretrained(AutoModelForCausalLM, REPO_ID, **kw, **extra)

            loaded = AutoModelForCausalLM.from_pretrained(snapshot)
            first_forward(loaded)
            ledger_dir = CacheRepo(cache, REPO_ID).ledger_dir

            def verified_first() -> Any:
                """The first offline load after a pull: nothing derived remembered yet."""
                for derived in ("snapshots", "models"):
                    shutil.rmtree(ledger_dir / derived, ignore_errors=True)
                return verified()

            def pull_offline() -> Any:
                with offline(True):
                    return pull(REPO_ID, **kw)

            with offline(True):
                offline_report = pull(REPO_ID, **kw)
                verified()  # derive and write the records the timed runs use

            def remembered_verdict() -> Any:
                slot = _RememberedVerdict.for_load(AutoModelForCausalLM, offline_report, Path(snapshot), {})
                assert slot is not None
                verdict = slot.lookup()
                assert verdict is not None, "the completeness verdict was not remembered"
                return verdict

            scanned = _scanned_by_pull(loaded, remembered_verdict().loaded_from, offline_report)

            # (label, plain variant, verified variant); the verified figure's overhead is against the plain one
            pairs: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
                ("load, dtype as stored (fp32)", plain_load(snapshot), verified),
                (
                    "load + first forward",
                    lambda: first_forward(plain_load(snapshot)()),
                    lambda: first_forward(verified()),
                ),
                (
                    "load cast to bf16",
                    plain_load(snapshot, dtype=torch.bfloat16),
                    lambda: verified(dtype=torch.bfloat16),
                ),
                ("load, online (local Hub)", plain_load(snapshot), lambda: verified(online=True)),
                ("load, first offline load (records derived)", plain_load(snapshot), verified_first),
            ]
            parts: dict[str, Callable[[], Any]] = {
                "pull, offline (snapshot record)": pull_offline,
                "completeness, remembered verdict (key + lookup)": remembered_verdict,
                "completeness, computed (headers + meta model)": lambda: check_model_completeness(
                    snapshot, cls=AutoModelForCausalLM
                ),
                "after-load check, unscanned parameters (fp32)": lambda: (
                    _scanned_by_pull(loaded, remembered_verdict().loaded_from, offline_report),
                    check_loaded_model(loaded, skip=scanned),
                ),
                "after-load check, every parameter": lambda: check_loaded_model(loaded),
            }
            jobs: dict[str, Callable[[], Any]] = {}
            for label, plain, ver in pairs:
                jobs[f"plain    | {label}"] = plain
                jobs[f"verified | {label}"] = ver
            jobs.update({f"part     | {k}": v for k, v in parts.items()})
            for fn in jobs.values():  # warm the page cache and every import
                timed(fn)
            times: dict[str, list[float]] = {name: [] for name in jobs}
            for i in range(args.runs):
                order = list(jobs.items())
                if i % 2:
                    order.reverse()
                for name, fn in order:
                    gc.collect()
                    times[name].append(timed(fn))

        med = {name: statistics.median(values) for name, values in times.items()}
        low = {name: min(values) for name, values in times.items()}
        print(f"\n{'':60} {'median':>9} {'min':>9} {'overhead (median / min)':>24}")
        for name in times:
            over = ""
            if name.startswith("verified"):
                plain_name = "plain    " + name.removeprefix("verified ")
                over = (
                    f"{(med[name] / med[plain_name] - 1) * 100:+7.1f}% / "
                    f"{(low[name] / low[plain_name] - 1) * 100:+7.1f}%"
                )
            print(f"{name:60} {med[name] * 1e3:7.2f}ms {low[name] * 1e3:7.2f}ms {over:>24}")
        fixed = (
            med["verified | load, dtype as stored (fp32)"] - med["plain    | load, dtype as stored (fp32)"]
        )
        print(
            f"\nfixed cost of the verified path on a verified cache (offline): {fixed * 1e3:.1f} ms; "
            f"overhead {(fixed / med['plain    | load, dtype as stored (fp32)']) * 100:+.1f}% (target < 10%)"
        )
        # The overhead per run, paired: each verified run against the plain run next to it (same moment).
        paired = [
            v - p
            for v, p in zip(
                times["verified | load, dtype as stored (fp32)"],
                times["plain    | load, dtype as stored (fp32)"],
                strict=True,
            )
        ]
        print(
            f"paired (verified - plain, same round): median {statistics.median(paired) * 1e3:.1f} ms, "
            f"min {min(paired) * 1e3:.1f} ms"
        )
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
