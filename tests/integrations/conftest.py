"""Fixtures for the transformers integration: a tiny sharded Llama + tokenizer built offline, and a local Hub.

torch and transformers are imported inside the fixtures, never at module level, so a machine without them
still collects (and skips) the test modules cleanly.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: The damaged tensor in every scenario (the motivating case: Llama-3.1-8B's o_proj).
O_PROJ = "model.layers.1.self_attn.o_proj.weight"
#: Rows zeroed in it (contiguous, so one byte range covers them).
ZERO_ROWS = (8, 9, 10, 11)
REPO_ID = "acme/tiny-llama"


@dataclass(frozen=True)
class TinyLlama:
    """The reference checkpoint folder and what the tests need to know about it."""

    folder: Path

    @property
    def index(self) -> dict[str, Any]:
        """The parsed ``model.safetensors.index.json``."""
        data: dict[str, Any] = json.loads((self.folder / "model.safetensors.index.json").read_text())
        return data

    def shard_of(self, tensor: str) -> str:
        """The shard file the index puts ``tensor`` in."""
        shard: str = self.index["weight_map"][tensor]
        return shard

    def copy(self, dest: Path) -> Path:
        """A private, writable copy of the folder."""
        shutil.copytree(self.folder, dest)
        return dest


def tensor_rows_range(path: Path, tensor: str, rows: tuple[int, ...]) -> tuple[int, int]:
    """Absolute ``(start, length)`` of the given contiguous rows of a 2-D F32 tensor, from the header offsets."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    entry = header[tensor]
    assert entry["dtype"] == "F32", entry
    begin, _end = entry["data_offsets"]
    row_bytes = 4 * entry["shape"][1]
    assert list(rows) == list(range(rows[0], rows[-1] + 1)), "rows must be contiguous"
    return 8 + n + begin + rows[0] * row_bytes, len(rows) * row_bytes


def zero_rows_in_place(path: Path, tensor: str, rows: tuple[int, ...]) -> None:
    """Overwrite rows of ``tensor`` with zeros in the file itself (damage the publisher ships)."""
    start, length = tensor_rows_range(path, tensor, rows)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(length))


def build_tiny_llama(folder: Path) -> Path:
    """Save a seeded tiny Llama sharded into several safetensors files + index, and a tiny tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="100KB")  # v5 writes safetensors only
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "hello", "world"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyLlama:
    """The reference tiny Llama folder (session-wide; copy it before changing anything)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    folder = build_tiny_llama(tmp_path_factory.mktemp("reference") / "tiny-llama")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 3, shards  # several shards, so the index matters
    return TinyLlama(folder)


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """``serve(folder, repo_id=REPO_ID) -> HubServer``: a local Hub holding the folder as one commit on main."""
    from vcache.testing.hub import HubServer, Repo

    servers: list[Any] = []

    def start(folder: Path, repo_id: str = REPO_ID) -> Any:
        repo = Repo(repo_id)
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        repo.commit(files, branch="main", message="upload")
        hub = HubServer([repo]).start()
        servers.append(hub)
        return hub

    yield start
    for hub in servers:
        hub.stop()


@pytest.fixture
def spy_weight_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every safetensors open by transformers and every ``from_pretrained`` of a model class."""
    import safetensors
    import transformers
    import transformers.modeling_utils as modeling_utils
    from transformers import LlamaForCausalLM

    calls: list[str] = []
    real_safe_open = modeling_utils.safe_open

    def safe_open(*args: Any, **kwargs: Any) -> Any:
        calls.append(f"safe_open {args[0]}")
        return real_safe_open(*args, **kwargs)

    real_from_pretrained = LlamaForCausalLM.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy_from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"from_pretrained {cls.__name__}")
        return real_from_pretrained(cls, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_open", safe_open)
    monkeypatch.setattr(safetensors, "safe_open", safe_open)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(spy_from_pretrained))
    return calls


@pytest.fixture
def logits_of() -> Callable[[Any], Any]:
    """``logits_of(model)``: logits for a fixed batch, computed deterministically."""

    def run(model: Any) -> Any:
        import torch

        ids = torch.tensor([[1, 5, 9, 17, 42, 99, 200, 2]])
        with torch.no_grad():
            return model(input_ids=ids).logits

    return run
