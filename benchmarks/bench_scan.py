"""Benchmark: the content scans (safetensors and GGUF) against hashlib.sha256 on the same bytes.

Writes one F32 and one BF16 safetensors file of random normal weights (``--size-mib`` each, in 64 MiB
[4096, N] tensors), then for each file, with the page cache warm and after one warm-up pass, times
``scan_tensors`` and a chunked sha256 over the same file, and prints GB/s (1 GB = 1e9 bytes).

Two data variants: ``clean`` (no exact zeros, the fast path) and ``sparse-zeros`` (one exact zero in
about every 50,000 elements, like trained BF16 weights, so every block also takes the zero row/column
and zero-run path).

When torch is installed, the same weights are also written with ``torch.save`` (the zip format) and
``vcache.checks.pytorch.check_pytorch`` is timed on them: the zip structure, the CRC-32 of every member, the
pickle walk and the content scan, in one pass.
Then the same for GGUF files written by ``gguf.GGUFWriter`` (``scan_gguf``, timed with its header parse):
F16 weights (``gguf-zeros``: sparse zeros as above), and Q8_0 and Q4_0 blocks (``gguf-blocks``: random
quants with finite, non-zero f16 scales, so every block's scale is read and judged).

    python benchmarks/bench_scan.py                 # 1 GiB per file in a temp dir
    python benchmarks/bench_scan.py --size-mib 256 --dir /tmp/bench --repeat 5
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import resource
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vcache.checks.gguf import read_gguf_header, scan_gguf
from vcache.checks.pytorch import check_pytorch
from vcache.checks.safetensors import SafetensorsHeader, TensorEntry
from vcache.checks.tensors import scan_tensors
from vcache.report import Finding

MiB = 1 << 20
TENSOR_BYTES = 64 * MiB
COLS = 4096


def write_file(
    path: Path, dtype: str, size: int, *, zero_every: int | None, seed: int = 0
) -> SafetensorsHeader:
    """Random normal weights of ``dtype`` (F32 or BF16), ``size`` bytes of tensor data in all."""
    itemsize = 4 if dtype == "F32" else 2
    row_bytes = COLS * itemsize
    entries: list[TensorEntry] = []
    offset = 0
    k = 0
    while offset < size:
        rows = max(1, min(TENSOR_BYTES, size - offset) // row_bytes)
        entries.append(
            TensorEntry(
                f"model.layers.{k}.mlp.down_proj.weight",
                dtype,
                (rows, COLS),
                offset,
                offset + rows * row_bytes,
            )
        )
        offset += rows * row_bytes
        k += 1
    header = {
        t.name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.begin, t.end]} for t in entries
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for t in entries:
            values = rng.standard_normal(t.nbytes // itemsize, dtype=np.float32)
            values *= 0.02
            if zero_every:
                values[rng.integers(0, zero_every) :: zero_every] = 0.0
            f.write(
                values.tobytes()
                if dtype == "F32"
                else (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
            )
    return SafetensorsHeader(len(text), tuple(entries), None, path.stat().st_size)


def write_pytorch_zip(path: Path, dtype: str, size: int, *, zero_every: int | None, seed: int = 0) -> None:
    """The weights :func:`write_file` writes, saved with ``torch.save`` (zip format) instead."""
    import torch

    st_path = path.with_suffix(".safetensors")
    header = write_file(st_path, dtype, size, zero_every=zero_every, seed=seed)
    raw = np.fromfile(st_path, np.uint8, offset=header.data_start)
    st_path.unlink()
    state: dict[str, object] = {}
    for t in header.tensors:
        chunk = raw[t.begin : t.end]
        if dtype == "F32":
            tensor = torch.from_numpy(chunk.view(np.float32).reshape(t.shape))
        else:
            tensor = torch.from_numpy(chunk.view(np.int16).reshape(t.shape)).view(torch.bfloat16)
        state[t.name] = tensor
    torch.save(state, path)


def bench_pytorch_zip(tmp: str, size_mib: int, repeat: int) -> None:
    """The PyTorch-zip rows: check_pytorch against sha256 over the same file."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("pytorch-zip rows skipped: torch is not installed")
        return
    print("torch.save zip, check_pytorch (zip structure + CRC-32 of every member + pickle walk + content):")
    for dtype in ("F32", "BF16"):
        for variant, zero_every in (("clean", None), ("sparse-zeros", 50_000)):
            path = Path(tmp) / f"{dtype}-{variant}.pt"
            write_pytorch_zip(path, dtype, size_mib * MiB, zero_every=zero_every)
            fmt, findings, checks = check_pytorch(path, vouched=True)
            assert fmt == "pytorch-zip" and "content" in checks, (fmt, checks)
            assert not [f for f in findings if f.severity != "info"], [f.message for f in findings]
            size = path.stat().st_size
            best, median = rate(functools.partial(check_pytorch, path, vouched=True), size, repeat)
            sha_best, _ = rate(functools.partial(sha256_file, path), size, repeat)
            print(
                f"{dtype:<5} {variant:<12} {size / MiB:>5.0f} MiB {best:>6.2f} GB/s {median:>7.2f} GB/s "
                f"{sha_best:>7.2f} GB/s {best / sha_best:>8.2f}x"
            )
            path.unlink()


def write_gguf(path: Path, kind: str, size: int, *, seed: int = 0) -> None:
    """A GGUF of ``size`` bytes of tensor data in 64 MiB [N, 4096] tensors: F16 weights (one exact zero
    in about every 50,000), or Q8_0 / Q4_0 blocks of random quants with f16 scales in [1e-4, 1e-2)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    qtype = GGMLQuantizationType[kind]
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    row_bytes = COLS // block * block_bytes
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(path, "llama")
    sizes = []
    offset = 0
    while offset < size:
        rows = max(1, min(TENSOR_BYTES, size - offset) // row_bytes)
        sizes.append(rows)
        offset += rows * row_bytes
    for k, rows in enumerate(sizes):
        name = f"blk.{k}.ffn_down.weight"
        if kind == "F16":
            writer.add_tensor_info(name, (rows, COLS), np.dtype(np.float16), rows * row_bytes)
        else:
            writer.add_tensor_info(
                name, (rows, row_bytes), np.dtype(np.uint8), rows * row_bytes, raw_dtype=qtype
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for rows in sizes:
        if kind == "F16":
            values = rng.standard_normal((rows, COLS), dtype=np.float32) * 0.02
            values.reshape(-1)[rng.integers(0, 50_000) :: 50_000] = 0.0
            writer.write_tensor_data(values.astype(np.float16))
        else:
            blocks = rng.integers(0, 256, (rows * COLS // block, block_bytes), dtype=np.uint8)
            scales = rng.uniform(1e-4, 1e-2, len(blocks)).astype(np.float16)
            blocks[:, :2] = scales.view(np.uint8).reshape(-1, 2)
            writer.write_tensor_data(blocks.reshape(rows, row_bytes))
    writer.close()


def sha256_file(path: Path, chunk: int = 16 * MiB) -> str:
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def rate(fn: Callable[[], object], nbytes: int, repeat: int) -> tuple[float, float]:
    """(best, median) GB/s over ``repeat`` timed runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return nbytes / min(times) / 1e9, nbytes / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="tensor data per file (default 1024)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the files (default: a temp dir)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (default 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(
            f"{'dtype':<5} {'data':<12} {'size':>9} {'scan best':>10} {'scan median':>12} {'sha256 best':>12} {'scan/sha':>9}"
        )
        for dtype in ("F32", "BF16"):
            for variant, zero_every in (("clean", None), ("sparse-zeros", 50_000)):
                path = Path(tmp) / f"{dtype}-{variant}.safetensors"
                header = write_file(path, dtype, args.size_mib * MiB, zero_every=zero_every)
                findings = scan_tensors(path, header, vouched=True)
                assert not [f for f in findings if f.severity != "info"], [f.message for f in findings]
                size = path.stat().st_size
                best, median = rate(
                    functools.partial(scan_tensors, path, header, vouched=True), size, args.repeat
                )
                sha_best, _ = rate(functools.partial(sha256_file, path), size, args.repeat)
                print(
                    f"{dtype:<5} {variant:<12} {size / MiB:>5.0f} MiB {best:>6.2f} GB/s {median:>7.2f} GB/s "
                    f"{sha_best:>7.2f} GB/s {best / sha_best:>8.2f}x"
                )
                path.unlink()
        bench_pytorch_zip(tmp, args.size_mib, args.repeat)
        for kind, variant in (("F16", "zeros"), ("Q8_0", "blocks"), ("Q4_0", "blocks")):
            path = Path(tmp) / f"{kind}.gguf"
            write_gguf(path, kind, args.size_mib * MiB)

            def header_and_scan(path: Path = path) -> list[Finding]:
                layout, findings = read_gguf_header(path)
                assert layout is not None, [f.message for f in findings]
                return [*findings, *scan_gguf(path, layout, vouched=True)]

            findings = header_and_scan()
            assert not [f for f in findings if f.severity != "info"], findings
            size = path.stat().st_size
            best, median = rate(header_and_scan, size, args.repeat)
            sha_best, _ = rate(functools.partial(sha256_file, path), size, args.repeat)
            print(
                f"{kind:<5} {'gguf-' + variant:<12} {size / MiB:>5.0f} MiB {best:>6.2f} GB/s {median:>7.2f} GB/s "
                f"{sha_best:>7.2f} GB/s {best / sha_best:>8.2f}x"
            )
            path.unlink()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process, including generating the files: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
