"""``vcache demo``: the whole story offline in a few seconds.

A local Hub (``vcache.testing.hub``) serves a generated Llama-shaped checkpoint; the first transfer of one
shard arrives with rows of an ``o_proj`` weight zeroed — right size, no error, the case that started
vcache. vcache catches it by digest, fetches the shard again, verifies everything and prints the snapshot
path. Everything happens in a temporary folder (or ``--keep DIR``); the user's real cache is not touched.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

REPO_ID = "vcache-demo/tiny-llama"
DAMAGED_TENSOR = "model.layers.1.self_attn.o_proj.weight"


def run_demo(keep: Path | None = None) -> int:
    """Run the demo; returns the process exit code (0 when vcache caught and repaired the damage)."""
    from vcache.console import TqdmProgress, print_table
    from vcache.pull import pull
    from vcache.testing.hub import Fault, HubServer
    from vcache.testing.models import LlamaShape, repo_from_folder, row_byte_range, write_llama_checkpoint

    # The folder outlives the demo so the snapshot path and the load hint it prints stay valid; a default
    # run reuses (and first clears) one fixed folder instead of piling up temp dirs.
    work = Path(keep) if keep else Path(tempfile.gettempdir()) / "vcache-demo"
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    shape = LlamaShape(hidden=512, intermediate=1024, layers=4, heads=8, kv_heads=4, vocab=2048)
    src = write_llama_checkpoint(work / "publisher", shape, shards=2)
    shard = next(p for p in sorted(src.glob("model-*.safetensors")) if _holds(p, DAMAGED_TENSOR))
    start, length = row_byte_range(shard, DAMAGED_TENSOR, range(8, 16))
    repo = repo_from_folder(REPO_ID, src)
    cache = work / "hub-cache"
    size = sum(p.stat().st_size for p in src.iterdir())
    with HubServer([repo]) as hub:
        click.echo("vcache demo: everything below runs locally, offline.\n")
        click.echo(
            f"1. Generated a Llama-shaped checkpoint ({size / 2**20:.1f} MiB, 2 shards) and started a "
            f"local Hub at {hub.endpoint}"
        )
        hub.fault(REPO_ID, shard.name, Fault.zero_fill(start, length))
        click.echo(
            f"2. The Hub will zero rows 8-15 of {DAMAGED_TENSOR} in the first transfer of\n"
            f"   {shard.name}: same size, no error (what the official client accepts)."
        )
        click.echo(f"3. vcache pull {REPO_ID}\n")
        progress = TqdmProgress(quiet=False)
        report = pull(REPO_ID, endpoint=hub.endpoint, cache_dir=cache, progress=progress.sink)
        progress.close()
        print_table(report, title=f"\n{REPO_ID}@{(report.commit or '')[:12]}: {report.verdict.value}")
        gets = len(hub.body_requests(REPO_ID, shard.name))
    caught = report.ok and gets >= 2
    click.echo("")
    if caught:
        click.echo(
            f"4. Caught: {shard.name} failed its sha256 on the first transfer, was fetched again "
            f"({gets} body requests) and verified."
        )
        click.echo(f"\nVerified snapshot: {report.snapshot_path}")
        click.echo(
            "Load it with:\n"
            f'  HF_HUB_CACHE={cache} HF_HUB_OFFLINE=1 python -c "import vcache, transformers; '
            f"m = vcache.from_pretrained(transformers.AutoModelForCausalLM, '{REPO_ID}')\"\n"
            "  (needs `pip install 'vcache[transformers]'`)"
        )
    else:
        click.echo("The demo did not go as expected: see the table above.")
    click.echo(f"(Everything the demo made is in {work}; delete it when you are done.)")
    return 0 if caught else 1


def _holds(path: Path, tensor: str) -> bool:
    from vcache.testing.models import tensor_location

    try:
        tensor_location(path, tensor)
    except KeyError:
        return False
    return True
