"""Tests for vcache.checks.index: the sharded index against its shards, and config coherence.

Each rule of ``docs/safetensors.md`` §3.4 gets a small sharded checkpoint whose shards are written by
safetensors' numpy front end and whose index is written by hand (as text where the rule needs JSON that
Python's json would not produce, such as duplicate keys).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from vcache.checks import index as index_module
from vcache.checks.index import INDEX_NAME, check_config_coherence, check_index
from vcache.checks.safetensors import read_header
from vcache.report import Finding, Severity

SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
LAYERS = 4


def model_tensors() -> dict[str, dict[str, np.ndarray]]:
    """A tiny Llama-shaped model in three shards: embeddings, layers 0-3, norm and head."""
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    layers = [
        {
            f"model.layers.{i}.self_attn.q_proj.weight": w(8, 8),
            f"model.layers.{i}.mlp.down_proj.weight": w(8, 16),
            f"model.layers.{i}.input_layernorm.weight": w(8),
        }
        for i in range(LAYERS)
    ]
    return {
        SHARDS[0]: {"model.embed_tokens.weight": w(32, 8), **layers[0], **layers[1]},
        SHARDS[1]: {**layers[2], **layers[3]},
        SHARDS[2]: {"model.norm.weight": w(8), "lm_head.weight": w(32, 8)},
    }


def write_checkpoint(
    folder: Path,
    shards: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    *,
    weight_map: Mapping[str, Any] | None = None,
    metadata: Any = None,
    index_name: str = INDEX_NAME,
) -> Path:
    """Write the shards with safetensors and an index (default: the correct one) with json.dump(indent=2)."""
    shards = model_tensors() if shards is None else shards
    for shard, tensors in shards.items():
        safetensors.numpy.save_file(dict(tensors), str(folder / shard), metadata={"format": "pt"})
    if weight_map is None:
        weight_map = {name: shard for shard, tensors in shards.items() for name in tensors}
    if metadata is None:
        tensors = [a for t in shards.values() for a in t.values()]
        metadata = {
            "total_size": sum(a.nbytes for a in tensors),
            "total_parameters": sum(a.size for a in tensors),
        }
    write_index(folder, {"metadata": metadata, "weight_map": dict(weight_map)}, index_name)
    return folder


def write_index(folder: Path, index: Any, index_name: str = INDEX_NAME) -> None:
    text = index if isinstance(index, str) else json.dumps(index, indent=2, sort_keys=True)
    (folder / index_name).write_text(text, encoding="utf-8")


def codes(findings: list[Finding], severity: Severity | None = None) -> set[str]:
    return {f.code for f in findings if severity is None or f.severity is severity}


def only(findings: list[Finding], code: str) -> Finding:
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, [f.message for f in findings]
    return matching[0]


# ---------------------------------------------------------------------------------------------------------
# A correct checkpoint.


def test_valid_checkpoint_has_no_findings(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    assert check_index(tmp_path) == []
    assert check_index(tmp_path, config={"num_hidden_layers": LAYERS}) == []


def test_variant_index_name(tmp_path: Path) -> None:
    shards = {name.replace("model-", "model.fp16-"): t for name, t in model_tensors().items()}
    write_checkpoint(tmp_path, shards, index_name="model.fp16.safetensors.index.json")
    assert check_index(tmp_path, "model.fp16.safetensors.index.json") == []


def test_given_headers_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path)
    headers = {shard: read_header(tmp_path / shard)[0] for shard in SHARDS}

    def no_reading(path: object) -> object:
        raise AssertionError(f"read {path} again")

    monkeypatch.setattr(index_module, "read_header", no_reading)
    assert check_index(tmp_path, headers=headers) == []


# ---------------------------------------------------------------------------------------------------------
# The index file itself.


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "index.invalid_json"),
        (b'{"weight_map": {', "index.invalid_json"),
        (b"\xff\xfe{\x00}\x00", "index.invalid_json"),
        (b'{"metadata": {"total_size": NaN}, "weight_map": {}}', "index.invalid_json"),
        (b"[]", "index.invalid_json"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "index.invalid_json"),
        (b"<!DOCTYPE html><html></html>", "index.invalid_json"),
        (b'{"metadata": {}}', "index.missing_weight_map"),
        (b'{"metadata": {}, "weight_map": {}}', "index.missing_weight_map"),
        (b'{"metadata": {}, "weight_map": []}', "index.invalid_weight_map"),
        (b'{"metadata": {}, "weight_map": {"a": 1}}', "index.invalid_weight_map"),
    ],
)
def test_index_file_problems(tmp_path: Path, raw: bytes, code: str) -> None:
    (tmp_path / INDEX_NAME).write_bytes(raw)
    findings = check_index(tmp_path)
    assert codes(findings) == {code}
    assert all(f.severity is Severity.FAIL and f.message.startswith(INDEX_NAME) for f in findings)


def test_missing_index_is_unreadable(tmp_path: Path) -> None:
    (f,) = check_index(tmp_path)
    assert f.code == "index.unreadable" and f.severity is Severity.FAIL


def test_duplicate_tensor_in_weight_map(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    text = (tmp_path / INDEX_NAME).read_text()
    text = text.replace(
        '"lm_head.weight": "model-00003-of-00003.safetensors",',
        '"lm_head.weight": "model-00001-of-00003.safetensors",\n'
        '    "lm_head.weight": "model-00003-of-00003.safetensors",',
    )
    write_index(tmp_path, text)
    f = only(check_index(tmp_path), "index.duplicate_key")
    assert f.severity is Severity.FAIL and f.tensor == "lm_head.weight"
    assert "model-00001-of-00003.safetensors" in f.message and "model-00003-of-00003.safetensors" in f.message


def test_duplicate_key_elsewhere(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    text = (tmp_path / INDEX_NAME).read_text()
    write_index(tmp_path, text.replace('"metadata": {', '"metadata": {"total_size": 1,', 1))
    f = only(check_index(tmp_path), "index.duplicate_key")
    assert "metadata.total_size" in f.message


@pytest.mark.parametrize("metadata", ["absent", [], None, "x"])
def test_missing_or_invalid_metadata(tmp_path: Path, metadata: Any) -> None:
    write_checkpoint(tmp_path)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    if metadata == "absent":
        del index["metadata"]
    else:
        index["metadata"] = metadata
    write_index(tmp_path, index)
    findings = check_index(tmp_path)
    assert codes(findings) == {"index.missing_metadata"}  # and the shards are still checked (they are fine)


# ---------------------------------------------------------------------------------------------------------
# Shard names and shards.


@pytest.mark.parametrize(
    "shard",
    [
        "../outside.safetensors",
        "/etc/outside.safetensors",
        "sub/model.safetensors",
        "sub\\model.safetensors",
        "C:model.safetensors",
        "\\\\server\\share\\model.safetensors",
        "model.bin",
        "model.safetensors\0.txt",
        "",
    ],
)
def test_unsafe_shard_names_are_not_followed(tmp_path: Path, shard: str) -> None:
    folder = tmp_path / "repo"
    folder.mkdir()
    safetensors.numpy.save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "outside.safetensors"))
    shards = model_tensors()
    weight_map = {name: s for s, tensors in shards.items() for name in tensors}
    weight_map["lm_head.weight"] = shard
    write_checkpoint(folder, shards, weight_map=weight_map)
    findings = check_index(folder)
    f = only(findings, "index.unsafe_shard_name")
    assert f.severity is Severity.FAIL and f.tensor == "lm_head.weight"
    assert f.detail is not None and f.detail["shard"] == shard
    # The safe shards are still checked: shard 3 now holds a tensor weight_map puts elsewhere.
    assert codes(findings) == {"index.unsafe_shard_name", "index.unlisted_tensor"}


def test_missing_shard(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    (tmp_path / SHARDS[1]).unlink()
    f = only(check_index(tmp_path), "index.missing_shard")
    assert f.severity is Severity.FAIL
    assert SHARDS[1] in f.message and f.tensor is not None and f.tensor.startswith("model.layers.")
    assert f.detail is not None and f.detail["count"] == 6


def test_broken_symlink_shard_is_missing(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    (tmp_path / SHARDS[2]).unlink()
    (tmp_path / SHARDS[2]).symlink_to(tmp_path / "blobs" / "gone")
    assert codes(check_index(tmp_path)) == {"index.missing_shard"}


def test_truncated_shard_is_invalid(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    path = tmp_path / SHARDS[0]
    path.write_bytes(path.read_bytes()[:-10])
    f = only(check_index(tmp_path), "index.invalid_shard")
    assert f.severity is Severity.FAIL and SHARDS[0] in f.message
    assert f.detail is not None and f.detail["codes"] == ["safetensors.incomplete_buffer"]
    assert "truncated" in f.message


def test_shard_given_as_failed_header(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    findings = check_index(tmp_path, headers={SHARDS[2]: None})
    f = only(findings, "index.invalid_shard")
    assert SHARDS[2] in f.message and f.tensor in {"model.norm.weight", "lm_head.weight"}


def test_lfs_pointer_shard(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    (tmp_path / SHARDS[1]).write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
    f = only(check_index(tmp_path), "index.invalid_shard")
    assert f.detail is not None and f.detail["codes"] == ["safetensors.header_too_large"]


# ---------------------------------------------------------------------------------------------------------
# Tensors: index against headers.


def test_tensor_listed_but_absent(tmp_path: Path) -> None:
    shards = model_tensors()
    weight_map = {name: s for s, tensors in shards.items() for name in tensors}
    weight_map["model.layers.9.self_attn.q_proj.weight"] = SHARDS[1]
    write_checkpoint(tmp_path, shards, weight_map=weight_map)
    f = only(check_index(tmp_path), "index.tensor_missing")
    assert f.severity is Severity.FAIL
    assert f.tensor == "model.layers.9.self_attn.q_proj.weight" and SHARDS[1] in f.message


def test_tensor_in_two_shards(tmp_path: Path) -> None:
    shards = model_tensors()
    shards[SHARDS[2]]["model.norm.weight"] = shards[SHARDS[2]]["model.norm.weight"]
    shards[SHARDS[0]]["model.norm.weight"] = np.ones(8, np.float32)
    weight_map = {name: s for s, tensors in shards.items() for name in tensors}
    weight_map["model.norm.weight"] = SHARDS[2]
    write_checkpoint(tmp_path, shards, weight_map=weight_map)
    findings = check_index(tmp_path)
    f = only(findings, "index.tensor_in_multiple_shards")
    assert f.severity is Severity.FAIL and f.tensor == "model.norm.weight"
    assert SHARDS[0] in f.message and SHARDS[2] in f.message
    # Shard 1 also holds it while the index lists it for shard 3.
    assert only(findings, "index.unlisted_tensor").detail["shard"] == SHARDS[0]  # type: ignore[index]


def test_tensor_in_shard_but_not_in_index(tmp_path: Path) -> None:
    shards = model_tensors()
    weight_map = {name: s for s, tensors in shards.items() for name in tensors}
    del weight_map["lm_head.weight"]
    write_checkpoint(tmp_path, shards, weight_map=weight_map, metadata={"total_size": 0})
    findings = check_index(tmp_path)
    f = only(findings, "index.unlisted_tensor")
    assert f.severity is Severity.WARN and f.tensor == "lm_head.weight" and SHARDS[2] in f.message


def test_tensor_listed_for_the_wrong_shard(tmp_path: Path) -> None:
    shards = model_tensors()
    weight_map = {name: s for s, tensors in shards.items() for name in tensors}
    weight_map["lm_head.weight"] = SHARDS[0]
    write_checkpoint(tmp_path, shards, weight_map=weight_map)
    findings = check_index(tmp_path)
    assert codes(findings) == {"index.tensor_missing", "index.unlisted_tensor"}
    assert only(findings, "index.tensor_missing").detail["shard"] == SHARDS[0]  # type: ignore[index]
    assert only(findings, "index.unlisted_tensor").detail["shard"] == SHARDS[2]  # type: ignore[index]


def test_findings_are_bounded_for_a_wrong_index(tmp_path: Path) -> None:
    shards = {SHARDS[0]: {f"t{i}": np.zeros(1, np.uint8) for i in range(500)}}
    weight_map = {f"u{i}": SHARDS[0] for i in range(500)}
    write_checkpoint(tmp_path, shards, weight_map=weight_map, metadata={})
    findings = check_index(tmp_path)
    assert len(findings) <= 4
    missing = only(findings, "index.tensor_missing")
    assert (
        missing.detail is not None and missing.detail["count"] == 500 and len(missing.detail["tensors"]) == 20
    )


# ---------------------------------------------------------------------------------------------------------
# Metadata totals.


def _sizes(folder: Path) -> tuple[int, int]:
    shards = model_tensors()
    tensor_bytes = sum(a.nbytes for t in shards.values() for a in t.values())
    file_bytes = sum((folder / s).stat().st_size for s in SHARDS)
    return tensor_bytes, file_bytes


def test_total_size_mismatch_reports_the_delta(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, metadata={"total_size": 1000})
    tensor_bytes, _ = _sizes(tmp_path)
    f = only(check_index(tmp_path), "index.total_size_mismatch")
    assert f.severity is Severity.WARN
    assert f.detail is not None and f.detail["delta"] == 1000 - tensor_bytes
    assert f.detail["equals_file_sizes"] is False


def test_total_size_equal_to_file_sizes_is_named(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, metadata={"total_size": 0})
    _, file_bytes = _sizes(tmp_path)
    write_checkpoint(tmp_path, metadata={"total_size": file_bytes})
    f = only(check_index(tmp_path), "index.total_size_mismatch")
    assert f.detail is not None and f.detail["equals_file_sizes"] is True
    assert "whole files" in f.message


def test_total_size_old_bool_rule_is_accepted(tmp_path: Path) -> None:
    shards = {SHARDS[0]: {"w": np.zeros(4, np.float32), "mask": np.ones(16, np.bool_)}}
    write_checkpoint(tmp_path, shards, metadata={"total_size": 16 + 2})  # bool counted as 1/8 byte
    assert "index.total_size_mismatch" not in codes(check_index(tmp_path))


@pytest.mark.parametrize("total", ["1000", -1, True, None, [1]])
def test_invalid_total_size(tmp_path: Path, total: Any) -> None:
    write_checkpoint(tmp_path, metadata={"total_size": total})
    assert codes(check_index(tmp_path)) == {"index.invalid_total_size"}


def test_total_parameters_mismatch(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, metadata={"total_size": 0})
    tensor_bytes, _ = _sizes(tmp_path)
    write_checkpoint(tmp_path, metadata={"total_size": tensor_bytes, "total_parameters": 12})
    f = only(check_index(tmp_path), "index.total_parameters_mismatch")
    assert f.severity is Severity.WARN and f.detail is not None and f.detail["total_parameters"] == 12


def test_totals_skipped_when_a_shard_is_missing(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, metadata={"total_size": 5})
    (tmp_path / SHARDS[0]).unlink()
    assert codes(check_index(tmp_path)) == {"index.missing_shard"}


# ---------------------------------------------------------------------------------------------------------
# Shard numbering and the folder.


def test_shard_count_disagrees_with_names(tmp_path: Path) -> None:
    shards = {name.replace("-of-00003", "-of-00004"): t for name, t in model_tensors().items()}
    write_checkpoint(tmp_path, shards)
    f = only(check_index(tmp_path), "index.shard_count")
    assert (
        f.severity is Severity.WARN
        and "4 shards" in f.message
        and "numbers 4 are never referenced" in f.message
    )


def test_shard_numbering_gap(tmp_path: Path) -> None:
    t = model_tensors()
    shards = {
        "model-00001-of-00003.safetensors": t[SHARDS[0]],
        "model-00003-of-00003.safetensors": {**t[SHARDS[1]], **t[SHARDS[2]]},
    }
    write_checkpoint(tmp_path, shards)
    f = only(check_index(tmp_path), "index.shard_count")
    assert f.detail is not None and f.detail["missing"] == [2]


def test_mixed_shard_counts(tmp_path: Path) -> None:
    t = model_tensors()
    shards = {SHARDS[0]: t[SHARDS[0]], "model-00002-of-00002.safetensors": {**t[SHARDS[1]], **t[SHARDS[2]]}}
    write_checkpoint(tmp_path, shards)
    assert codes(check_index(tmp_path)) == {"index.shard_count"}


def test_other_shard_names_are_not_judged(tmp_path: Path) -> None:
    t = model_tensors()
    shards = {
        "pytorch_model_part_a.safetensors": {**t[SHARDS[0]], **t[SHARDS[1]]},
        "head.safetensors": t[SHARDS[2]],
    }
    write_checkpoint(tmp_path, shards)
    assert check_index(tmp_path) == []


def test_stale_shard(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    safetensors.numpy.save_file(
        {"x": np.zeros(1, np.float32)}, str(tmp_path / "model-00004-of-00004.safetensors")
    )
    safetensors.numpy.save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.fp16.safetensors"))
    f = only(check_index(tmp_path), "index.stale_shard")
    assert f.severity is Severity.WARN and "model-00004-of-00004.safetensors" in f.message
    assert f.detail == {"shard": "model-00004-of-00004.safetensors"}


def test_shards_of_another_index_are_not_stale(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    fp16 = {name.replace("model-", "model.fp16-"): t for name, t in model_tensors().items()}
    write_checkpoint(tmp_path, fp16, index_name="model.fp16.safetensors.index.json")
    assert check_index(tmp_path) == []
    assert check_index(tmp_path, "model.fp16.safetensors.index.json") == []


def test_single_file_beside_index(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    safetensors.numpy.save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    f = only(check_index(tmp_path), "index.both_single_and_index")
    assert f.severity is Severity.WARN and "model.safetensors" in f.message


def test_every_tensor_finding_names_shard_and_tensor(tmp_path: Path) -> None:
    shards = model_tensors()
    weight_map = {name: s for s, tensors in shards.items() for name in tensors}
    weight_map["lm_head.weight"] = SHARDS[0]
    weight_map["ghost.weight"] = "model-00009-of-00003.safetensors"
    write_checkpoint(tmp_path, shards, weight_map=weight_map)
    findings = check_index(tmp_path)
    per_tensor = [f for f in findings if f.code != "index.shard_count"]
    assert {f.code for f in per_tensor} == {
        "index.tensor_missing",
        "index.unlisted_tensor",
        "index.missing_shard",
    }
    for f in per_tensor:
        assert f.tensor is not None and f.detail is not None and f.detail["shard"] in f.message


# ---------------------------------------------------------------------------------------------------------
# Config coherence.


def test_config_layer_count_mismatch_through_the_index(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    f = only(check_index(tmp_path, config={"num_hidden_layers": 6}), "config.layer_count_mismatch")
    assert f.severity is Severity.FAIL
    assert "num_hidden_layers=6" in f.message and "missing layers 4–5" in f.message
    assert f.detail is not None and f.detail["missing"] == [4, 5]


def test_config_truncated_checkpoint_names_the_missing_range() -> None:
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(42)] + ["lm_head.weight"]
    (f,) = check_config_coherence({"num_hidden_layers": 78}, names)
    assert "hold 42 layers under 'model.layers.' (0–41)" in f.message
    assert "missing layers 42–77" in f.message
    assert f.tensor == "model.layers.42"


def test_config_more_layers_than_declared() -> None:
    names = [f"transformer.h.{i}.attn.c_attn.weight" for i in range(14)]
    (f,) = check_config_coherence({"n_layer": 12}, names)
    assert "unexpected layers 12–13" in f.message and f.detail is not None and f.detail["key"] == "n_layer"


def test_config_gap_in_layers() -> None:
    names = [f"backbone.blocks.{i}.mixer.weight" for i in range(8) if i != 5]
    (f,) = check_config_coherence({"num_layers": 8}, names)
    assert "missing layers 5" in f.message


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"num_hidden_layers": 2}, ["model.layers.0.w", "model.layers.1.w", "lm_head.weight"]),
        ({"n_layer": 2}, ["h.0.attn.weight", "h.1.attn.weight"]),
        ({"num_hidden_layers": 2}, ["model.layers.0.w", "model.layers.1.w", "visual.blocks.0.w"]),
        (
            {"num_hidden_layers": 2},
            ["model.encoder.layers.0.w", "model.encoder.layers.1.w", "model.decoder.layers.0.w"],
        ),
        ({"num_hidden_layers": 2, "num_nextn_predict_layers": 1}, [f"model.layers.{i}.w" for i in range(3)]),
        ({"num_hidden_layers": 2, "num_nextn_predict_layers": 1}, [f"model.layers.{i}.w" for i in range(2)]),
        ({"num_hidden_layers": 3}, ["encoder.block.0.layer.0.w"]),  # T5 naming: not judged
        ({"num_hidden_layers": 3}, []),
        ({"hidden_size": 8}, ["model.layers.0.w"]),
        ({"num_hidden_layers": True}, ["model.layers.0.w"]),
        ({"num_hidden_layers": "2"}, ["model.layers.0.w"]),
        ({"num_hidden_layers": 1}, ["model.mtp_layers.3.w", "model.layers.0.w"]),
        ({"num_hidden_layers": 1}, ["model.layers.0.w", "model.layers." + "9" * 5000 + ".w"]),
    ],
)
def test_config_coherent_or_not_applicable(config: dict[str, Any], names: list[str]) -> None:
    assert check_config_coherence(config, names) == []


@pytest.mark.parametrize("config", [None, [], "config", {"num_hidden_layers": "2", "n_layer": [2]}])
def test_config_of_the_wrong_shape_is_not_judged(tmp_path: Path, config: Any) -> None:
    assert check_config_coherence(config, ["model.layers.0.w", "model.layers.1.w"]) == []
    write_checkpoint(tmp_path)
    assert check_index(tmp_path, config=config) == []


def test_config_check_for_a_single_file_model(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    tensors = {f"model.layers.{i}.w": np.zeros(1, np.float32) for i in range(3)}
    safetensors.numpy.save_file(tensors, str(path))
    hdr, _ = read_header(path)
    assert hdr is not None
    (f,) = check_config_coherence({"num_hidden_layers": 4}, (t.name for t in hdr.tensors))
    assert f.code == "config.layer_count_mismatch" and "missing layers 3" in f.message


def test_a_shard_the_caller_could_not_fetch_is_noted_not_failed(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    (tmp_path / SHARDS[1]).unlink()
    findings = check_index(tmp_path, not_fetched={SHARDS[1]}, config={"num_hidden_layers": LAYERS})
    f = only(findings, "index.shard_not_fetched")
    assert f.severity is Severity.INFO and SHARDS[1] in f.message
    assert f.detail is not None and f.detail["count"] == 6
    assert codes(findings) == {"index.shard_not_fetched"}  # no config mismatch or total_size from its absence
    # A shard that was fetched but is absent all the same, or that is present, is judged as usual.
    assert codes(check_index(tmp_path, not_fetched={SHARDS[0]})) == {"index.missing_shard"}
    write_checkpoint(tmp_path)
    assert codes(check_index(tmp_path, not_fetched={SHARDS[1]})) == set()
