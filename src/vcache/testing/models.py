"""Generated checkpoints for tests, benchmarks and ``vcache demo`` — written by the real safetensors library.

:func:`write_llama_checkpoint` writes a Llama-shaped checkpoint with numpy only (no torch needed): a
transformers-compatible ``config.json``, safetensors shards in the layout ``save_pretrained`` produces, and
``model.safetensors.index.json``. transformers can load it with ``AutoModelForCausalLM``. Helpers locate
a tensor's bytes in a file so tests can damage exactly the rows they mean to.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vcache.testing.hub import Repo


@dataclass(frozen=True)
class LlamaShape:
    """The few numbers that decide a tiny Llama's tensors."""

    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 256

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.hidden // self.heads

    def config(self) -> dict[str, object]:
        """A transformers ``LlamaConfig`` as JSON."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
        }

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name and shape, in transformers' naming."""
        h, i, d = self.hidden, self.intermediate, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, h)}
        for n in range(self.layers):
            p = f"model.layers.{n}"
            shapes[f"{p}.self_attn.q_proj.weight"] = (self.heads * d, h)
            shapes[f"{p}.self_attn.k_proj.weight"] = (self.kv_heads * d, h)
            shapes[f"{p}.self_attn.v_proj.weight"] = (self.kv_heads * d, h)
            shapes[f"{p}.self_attn.o_proj.weight"] = (h, self.heads * d)
            shapes[f"{p}.mlp.gate_proj.weight"] = (i, h)
            shapes[f"{p}.mlp.up_proj.weight"] = (i, h)
            shapes[f"{p}.mlp.down_proj.weight"] = (h, i)
            shapes[f"{p}.input_layernorm.weight"] = (h,)
            shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        shapes["model.norm.weight"] = (h,)
        shapes["lm_head.weight"] = (self.vocab, h)
        return shapes


def llama_tensors(shape: LlamaShape, *, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Random weights (norms are ones) for every tensor of ``shape``."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, dims in shape.tensor_shapes().items():
        if name.endswith("norm.weight"):
            arr = np.ones(dims, dtype=np.float32)
        else:
            arr = (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float32)
        out[name] = arr.astype(dtype)
    return out


def write_llama_checkpoint(
    folder: Path,
    shape: LlamaShape | None = None,
    *,
    shards: int = 2,
    seed: int = 0,
    extra_files: Mapping[str, bytes] | None = None,
    tensors: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a Llama-shaped checkpoint into ``folder`` (created) and return it.

    ``shards > 1`` writes ``model-0000i-of-0000n.safetensors`` plus an index the way transformers does;
    ``shards == 1`` writes ``model.safetensors``. ``tensors`` overrides the generated weights (to ship
    damaged ones on purpose).
    """
    from safetensors.numpy import save_file

    shape = shape or LlamaShape()
    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tensors) if tensors is not None else llama_tensors(shape, seed=seed)
    names = list(weights)
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2, sort_keys=True) + "\n")
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    if shards <= 1:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        groups = _split(names, shards)
        weight_map: dict[str, str] = {}
        total = 0
        for k, group in enumerate(groups, start=1):
            fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            part = {n: weights[n] for n in group}
            save_file(part, str(folder / fname), metadata={"format": "pt"})
            for n in group:
                weight_map[n] = fname
                total += weights[n].nbytes
        params = sum(int(np.prod(w.shape)) for w in weights.values())
        index = {"metadata": {"total_parameters": params, "total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2, sort_keys=True) + "\n"
        )
    for name, data in (extra_files or {}).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


def _split(names: list[str], n: int) -> list[list[str]]:
    n = max(1, min(n, len(names)))
    size = -(-len(names) // n)
    return [names[i : i + size] for i in range(0, len(names), size)]


def tensor_location(path: Path, name: str) -> tuple[int, int, str, tuple[int, ...]]:
    """``(absolute start, absolute end, dtype, shape)`` of tensor ``name``'s bytes in a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    entry = header[name]
    begin, end = entry["data_offsets"]
    return 8 + n + begin, 8 + n + end, entry["dtype"], tuple(entry["shape"])


def row_byte_range(path: Path, name: str, rows: Iterable[int]) -> tuple[int, int]:
    """Absolute ``(start, length)`` covering the given contiguous rows of a 2-D tensor."""
    start, _end, dtype, shape = tensor_location(path, name)
    itemsize = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[dtype]
    rows = sorted(rows)
    if rows != list(range(rows[0], rows[-1] + 1)):
        raise ValueError("rows must be contiguous")
    row_bytes = int(np.prod(shape[1:])) * itemsize
    return start + rows[0] * row_bytes, len(rows) * row_bytes


def zero_rows_in_file(path: Path, name: str, rows: Iterable[int]) -> None:
    """Overwrite the given rows of tensor ``name`` with zeros, in place (a publisher-shipped defect)."""
    rows = list(rows)
    start, _end, dtype, shape = tensor_location(path, name)
    itemsize = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[dtype]
    row_bytes = int(np.prod(shape[1:])) * itemsize
    with open(path, "r+b") as f:
        for r in rows:
            f.seek(start + r * row_bytes)
            f.write(b"\0" * row_bytes)


def repo_from_folder(repo_id: str, folder: Path, **repo_kwargs: Any) -> Repo:
    """A :class:`vcache.testing.hub.Repo` with one commit on ``main`` holding every file under ``folder``."""
    from vcache.testing.hub import Repo

    repo = Repo(repo_id, **repo_kwargs)
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    repo.commit(files, branch="main", message="initial upload")
    return repo
