"""The verified from_pretrained path: completeness from headers, the after-load check, and end to end via a Hub.

The end-to-end tests serve a tiny sharded Llama (built offline with transformers) from a local HubServer and
load it through ``vcache.integrations.transformers.from_pretrained``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
)

from vcache.errors import VerificationFailed  # noqa: E402
from vcache.integrations.transformers import (  # noqa: E402
    DORA_HAZARD,
    VcacheWarning,
    check_loaded_model,
    check_model_completeness,
    from_pretrained,
    load_model,
)
from vcache.report import Severity  # noqa: E402

from .conftest import O_PROJ, REPO_ID, ZERO_ROWS, TinyLlama, tensor_rows_range, zero_rows_in_place  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def codes(findings: Any) -> list[str]:
    return [f.code for f in findings]


def drop_tensor(folder: Path, tensor: str, *, from_index: bool) -> str:
    """Rewrite the shard holding ``tensor`` without it; optionally drop it from the index too."""
    from safetensors.torch import load_file, save_file

    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"][tensor]
    tensors = load_file(folder / shard)
    del tensors[tensor]
    save_file(tensors, folder / shard, metadata={"format": "pt"})
    if from_index:
        del index["weight_map"][tensor]
        index_path.write_text(json.dumps(index, indent=2))
    return str(shard)


def set_config(folder: Path, **values: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config, indent=2))


# ----------------------------------------------------------------------------------------------------------
# Completeness from headers (local folders, no Hub)


def test_clean_checkpoint_is_complete(tiny_llama: TinyLlama) -> None:
    assert check_model_completeness(tiny_llama.folder) == []
    assert check_model_completeness(tiny_llama.folder, cls=AutoModelForCausalLM) == []
    assert check_model_completeness(tiny_llama.folder, cls=LlamaForCausalLM) == []


def test_base_model_from_causal_checkpoint_strips_prefix_and_warns_about_the_head(
    tiny_llama: TinyLlama,
) -> None:
    findings = check_model_completeness(tiny_llama.folder, cls=AutoModel)
    assert codes(findings) == ["model.unexpected_tensor"]
    assert findings[0].tensor == "lm_head.weight"
    assert findings[0].severity is Severity.WARN


def test_causal_model_from_base_checkpoint_adds_prefix_and_misses_only_the_head(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64,
    )  # fmt: skip
    LlamaModel(config).save_pretrained(tmp_path / "base")
    findings = check_model_completeness(tmp_path / "base", cls=AutoModelForCausalLM)
    assert [(f.code, f.tensor) for f in findings] == [("model.missing_tensor", "lm_head.weight")]


def test_tied_lm_head_is_not_expected_in_the_file(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tied", max_shard_size="20KB")
    index = json.loads((tmp_path / "tied" / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    assert check_model_completeness(tmp_path / "tied") == []


def test_missing_shard_is_named_with_its_tensors(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = tiny_llama.copy(tmp_path / "m")
    shard = tiny_llama.shard_of(O_PROJ)
    (folder / shard).unlink()
    findings = check_model_completeness(folder)
    assert codes(findings) == ["model.missing_shard"]
    assert shard in findings[0].message and O_PROJ in findings[0].message
    assert findings[0].severity is Severity.FAIL


@pytest.mark.parametrize("from_index", [False, True], ids=["index-lists-it", "index-omits-it"])
def test_missing_tensor_is_named_with_the_shard_the_index_promises(
    tiny_llama: TinyLlama, tmp_path: Path, from_index: bool
) -> None:
    folder = tiny_llama.copy(tmp_path / "m")
    shard = drop_tensor(folder, O_PROJ, from_index=from_index)
    findings = check_model_completeness(folder)
    assert [(f.code, f.tensor, f.severity) for f in findings] == [
        ("model.missing_tensor", O_PROJ, Severity.FAIL)
    ]
    assert "at random" in findings[0].message
    if from_index:
        assert "does not list it" in findings[0].message
    else:
        assert shard in findings[0].message


def test_config_with_more_layers_than_the_weights_names_the_missing_layers(
    tiny_llama: TinyLlama, tmp_path: Path
) -> None:
    folder = tiny_llama.copy(tmp_path / "m")
    set_config(folder, num_hidden_layers=6)
    findings = check_model_completeness(folder)
    assert codes(findings) == ["config.layer_count_mismatch"]  # one finding, not 36 missing tensors
    f = findings[0]
    assert f.severity is Severity.FAIL
    assert "num_hidden_layers = 6" in f.message and "layers 2-5 are missing" in f.message
    assert f.detail is not None and f.detail["missing_layers"] == [2, 3, 4, 5]


def test_config_with_fewer_layers_than_the_weights_is_a_truncated_model(
    tiny_llama: TinyLlama, tmp_path: Path
) -> None:
    folder = tiny_llama.copy(tmp_path / "m")
    set_config(folder, num_hidden_layers=1)
    findings = check_model_completeness(folder)
    assert codes(findings) == ["config.layer_count_mismatch"]
    assert findings[0].severity is Severity.FAIL and "layers 1 under model.layers" in findings[0].message


def test_layers_dropped_on_purpose_by_a_config_override_are_only_info(tiny_llama: TinyLlama) -> None:
    findings = check_model_completeness(tiny_llama.folder, config_overrides={"num_hidden_layers": 1})
    assert [(f.code, f.severity) for f in findings] == [("config.layer_count_mismatch", Severity.INFO)]
    assert "you passed num_hidden_layers=1" in findings[0].message


def test_shape_mismatch_fails(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = tiny_llama.copy(tmp_path / "m")
    set_config(folder, intermediate_size=96)
    findings = check_model_completeness(folder)
    assert set(codes(findings)) == {"model.shape_mismatch"}
    assert len(findings) == 2 * 3  # gate/up/down in both layers
    assert all(f.severity is Severity.FAIL for f in findings)


def test_an_index_pointing_outside_the_snapshot_is_not_followed(
    tiny_llama: TinyLlama, tmp_path: Path
) -> None:
    folder = tiny_llama.copy(tmp_path / "m")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][O_PROJ] = "../../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    findings = check_model_completeness(folder)
    assert codes(findings) == ["model.bad_index"] and "plain file names" in findings[0].message


def test_an_index_nested_too_deeply_to_parse_is_a_finding(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = tiny_llama.copy(tmp_path / "m")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 990 + "]" * 990 + "}")
    findings = check_model_completeness(folder)
    assert codes(findings) == ["model.bad_index"] and "nested" in findings[0].message


def test_quantized_or_pickle_checkpoints_are_reported_as_not_checked(
    tiny_llama: TinyLlama, tmp_path: Path
) -> None:
    folder = tiny_llama.copy(tmp_path / "m")
    for p in folder.glob("model*.safetensors*"):
        p.unlink()
    assert codes(check_model_completeness(folder)) == ["model.completeness_skipped"]


@pytest.mark.parametrize("damage", ["none", "drop-tensor", "more-layers", "base-class"])
def test_agrees_with_transformers_own_loading_report(
    tiny_llama: TinyLlama, tmp_path: Path, damage: str
) -> None:
    """The names we call missing/unexpected are the ones transformers itself reports after loading."""
    folder = tiny_llama.copy(tmp_path / "m")
    cls: Any = AutoModelForCausalLM
    if damage == "drop-tensor":
        drop_tensor(folder, O_PROJ, from_index=True)
    elif damage == "more-layers":
        set_config(folder, num_hidden_layers=3)
    elif damage == "base-class":
        cls = AutoModel
    findings = check_model_completeness(folder, cls=cls)
    _, loading = cls.from_pretrained(folder, output_loading_info=True)
    missing = {f.tensor for f in findings if f.code == "model.missing_tensor"}
    for f in findings:  # whole missing layers are one finding; expand it to compare
        if f.code == "config.layer_count_mismatch" and f.detail is not None:
            layers = tuple(f"model.layers.{i}." for i in f.detail["missing_layers"])
            in_layers = {k for k in loading["missing_keys"] if k.startswith(layers)}
            assert len(in_layers) == f.detail["missing_tensor_count"]
            missing |= in_layers
    unexpected = {f.tensor for f in findings if f.code == "model.unexpected_tensor"}
    assert missing == set(loading["missing_keys"])
    assert unexpected == set(loading["unexpected_keys"])


# ----------------------------------------------------------------------------------------------------------
# The after-load check


def test_clean_model_has_no_after_load_findings(tiny_llama: TinyLlama) -> None:
    assert check_loaded_model(AutoModelForCausalLM.from_pretrained(tiny_llama.folder)) == []


def test_after_load_check_names_zero_rows_nan_and_inf(tiny_llama: TinyLlama) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama.folder)
    with torch.no_grad():
        model.get_parameter(O_PROJ)[list(ZERO_ROWS)] = 0
        model.get_parameter("model.layers.0.mlp.up_proj.weight")[3, 5] = float("nan")
        model.get_parameter("model.norm.weight")[7] = float("inf")
        model.get_parameter("model.embed_tokens.weight")[0] = 0  # a padding row: not a Linear, not flagged
    findings = {f.code: f for f in check_loaded_model(model)}
    assert set(findings) == {"model.zero_rows", "model.nan", "model.inf"}
    zero = findings["model.zero_rows"]
    assert zero.tensor == O_PROJ and zero.severity is Severity.WARN
    assert (
        zero.detail is not None and zero.detail["first_rows"] == list(ZERO_ROWS) and zero.detail["count"] == 4
    )
    assert DORA_HAZARD in zero.message and "8, 9, 10, 11" in zero.message
    nan = findings["model.nan"]
    assert nan.tensor == "model.layers.0.mlp.up_proj.weight" and nan.detail is not None
    assert nan.detail["count"] == 1 and nan.detail["first_indexes"] == [3 * 64 + 5]
    assert findings["model.inf"].tensor == "model.norm.weight"


def test_after_load_check_has_no_false_alarm_when_an_fp16_row_sum_overflows() -> None:
    layer = torch.nn.Linear(64, 4).half()
    with torch.no_grad():
        layer.weight.fill_(60000.0)  # each row sums past fp16's max, yet every value is finite
        layer.weight[1, :32] = 1.0
        layer.weight[1, 32:] = -1.0  # sums to exactly zero without being zero
        layer.bias.zero_()
    assert check_loaded_model(torch.nn.Sequential(layer)) == []


def test_small_parameters_checked_together_give_the_same_findings_in_the_same_order(
    tiny_llama: TinyLlama, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vcache.integrations.transformers._after_load as integration

    model = AutoModelForCausalLM.from_pretrained(tiny_llama.folder)
    with torch.no_grad():
        model.get_parameter("model.layers.0.input_layernorm.weight")[3] = float("nan")
        model.get_parameter("model.layers.1.post_attention_layernorm.weight")[5] = float("-inf")
        model.get_parameter("model.layers.0.mlp.up_proj.weight")[3, 5] = float("nan")
        model.get_parameter(O_PROJ)[list(ZERO_ROWS)] = 0
        model.get_parameter("model.norm.weight").fill_(
            60000.0
        )  # finite: only a sum could overflow (fp32: no)
    expected = [
        f
        for name, p in model.named_parameters()
        for f in integration._parameter_findings(
            name, p.detach(), isinstance(model.get_submodule(name.rsplit(".", 1)[0]), torch.nn.Linear)
        )
    ]
    assert [(f.code, f.tensor) for f in expected] == [
        ("model.nan", "model.layers.0.mlp.up_proj.weight"),
        ("model.nan", "model.layers.0.input_layernorm.weight"),
        ("model.zero_rows", O_PROJ),
        ("model.inf", "model.layers.1.post_attention_layernorm.weight"),
    ]
    assert check_loaded_model(model) == expected
    monkeypatch.setattr(integration, "_ELEMENT_CHUNK", 100)  # runs of a few parameters each
    assert check_loaded_model(model) == expected
    half = AutoModelForCausalLM.from_pretrained(tiny_llama.folder, dtype=torch.float16)
    with torch.no_grad():
        half.get_parameter("model.norm.weight").fill_(60000.0)  # the fp16 sum overflows, no value is Inf
    assert check_loaded_model(half) == []


def test_after_load_check_skips_meta_and_integer_parameters() -> None:
    with torch.device("meta"):
        meta = torch.nn.Linear(8, 8)
    model = torch.nn.Sequential(meta)
    model.register_parameter(
        "codes", torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.int8), requires_grad=False)
    )
    assert check_loaded_model(model) == []


# ----------------------------------------------------------------------------------------------------------
# End to end through a local Hub (vcache.pull)


def hub_kwargs(hub: Any, tmp_path: Path) -> dict[str, Any]:
    return {"endpoint": hub.endpoint, "cache_dir": tmp_path / "hub"}


def test_verified_model_tokenizer_and_config_equal_plain_transformers(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, logits_of: Callable[[Any], Any]
) -> None:
    hub = serve(tiny_llama.folder)
    kw = hub_kwargs(hub, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VcacheWarning)
        model = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
        tokenizer = from_pretrained(AutoTokenizer, REPO_ID, **kw)
        config = from_pretrained(AutoConfig, REPO_ID, **kw)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama.folder)
    assert torch.equal(logits_of(model), logits_of(reference))
    text = "the quick brown fox jumps over a lazy dog"
    assert tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(tiny_llama.folder)(text)["input_ids"]
    plain_config = AutoConfig.from_pretrained(tiny_llama.folder)
    assert config.to_diff_dict() | {"_name_or_path": ""} == plain_config.to_diff_dict() | {
        "_name_or_path": ""
    }
    # the snapshot transformers loaded is the verified one in the vcache-written HF cache
    assert "models--acme--tiny-llama" in model.config._name_or_path
    # the short form reads naturally and gives the same model
    assert torch.equal(logits_of(load_model(REPO_ID, **kw)), logits_of(reference))


def test_rows_zeroed_in_transit_are_refetched_and_the_model_loads_clean(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, logits_of: Callable[[Any], Any]
) -> None:
    from vcache.testing.hub import Fault

    shard = tiny_llama.shard_of(O_PROJ)
    start, length = tensor_rows_range(tiny_llama.folder / shard, O_PROJ, ZERO_ROWS)
    hub = serve(tiny_llama.folder)
    hub.fault(REPO_ID, shard, Fault.zero_fill(start, length))
    with warnings.catch_warnings():
        warnings.simplefilter("error", VcacheWarning)  # clean: not even a warning
        model = from_pretrained(AutoModelForCausalLM, REPO_ID, strict=True, **hub_kwargs(hub, tmp_path))
    assert len(hub.body_requests(REPO_ID, shard)) == 2  # the damaged body, then the good one
    assert bool(model.get_parameter(O_PROJ)[list(ZERO_ROWS)].abs().sum() > 0)
    assert torch.equal(logits_of(model), logits_of(AutoModelForCausalLM.from_pretrained(tiny_llama.folder)))


def test_zero_rows_shipped_by_the_publisher_warn_and_strict_refuses(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path
) -> None:
    folder = tiny_llama.copy(tmp_path / "published")
    shard = tiny_llama.shard_of(O_PROJ)
    zero_rows_in_place(folder / shard, O_PROJ, ZERO_ROWS)  # the digest the Hub announces matches these bytes
    hub = serve(folder)
    kw = hub_kwargs(hub, tmp_path)

    with pytest.warns(VcacheWarning) as record:
        model = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    assert len(hub.body_requests(REPO_ID, shard)) == 1  # downloading again cannot help: not retried
    about = [str(w.message) for w in record if O_PROJ in str(w.message)]
    assert about, [str(w.message) for w in record]
    assert any("zero" in m and "DoRA" in m and "11" in m for m in about), about
    assert bool((model.get_parameter(O_PROJ)[list(ZERO_ROWS)] == 0).all())

    with pytest.raises(VerificationFailed) as excinfo:
        from_pretrained(AutoModelForCausalLM, REPO_ID, strict=True, **kw)
    assert O_PROJ in str(excinfo.value) and "strict" in str(excinfo.value)
    assert any(f.tensor == O_PROJ for f in excinfo.value.findings)
    # strict decides what is loaded, not what is kept: the publisher's file is still in the cache
    assert from_pretrained(AutoConfig, REPO_ID, **kw) is not None
    with pytest.warns(VcacheWarning):
        from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)


def test_an_architecture_transformers_does_not_know_meets_vcache_first(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path
) -> None:
    folder = tiny_llama.copy(tmp_path / "published")
    zero_rows_in_place(folder / tiny_llama.shard_of(O_PROJ), O_PROJ, ZERO_ROWS)  # a warn-level finding
    set_config(folder, model_type="vcache-unknown-arch", architectures=["VcacheUnknownForCausalLM"])
    hub = serve(folder)
    kw = hub_kwargs(hub, tmp_path)

    # strict: vcache refuses before transformers parses the config it cannot read
    with pytest.raises(VerificationFailed) as excinfo:
        from_pretrained(AutoModelForCausalLM, REPO_ID, strict=True, **kw)
    assert any(f.tensor == O_PROJ for f in excinfo.value.findings)
    skipped = [f for f in excinfo.value.findings if f.code == "model.completeness_skipped"]
    assert len(skipped) == 1 and "vcache-unknown-arch" in skipped[0].message

    # not strict: vcache's warnings are out before transformers' own error
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="does not recognize this architecture") as raised:
            from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    assert not isinstance(raised.value, VerificationFailed)
    ours = [str(w.message) for w in record if issubclass(w.category, VcacheWarning)]
    assert any(O_PROJ in m and "zero" in m for m in ours), ours
    assert any("model.completeness_skipped" in m for m in ours), ours


def test_zero_rows_are_reported_once_as_a_warning_and_on_the_log(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tiny_llama.copy(tmp_path / "published")
    zero_rows_in_place(folder / tiny_llama.shard_of(O_PROJ), O_PROJ, ZERO_ROWS)
    hub = serve(folder)
    kw = hub_kwargs(hub, tmp_path)
    # cast to fp16, so the after-load check looks at o_proj too: it must not repeat what pull reported
    with (
        pytest.warns(VcacheWarning) as record,
        caplog.at_level("WARNING", "vcache.integrations.transformers"),
    ):
        from_pretrained(AutoModelForCausalLM, REPO_ID, dtype=torch.float16, **kw)
    zero_row_warnings = [
        str(w.message) for w in record if O_PROJ in str(w.message) and "zero" in str(w.message)
    ]
    assert len(zero_row_warnings) == 1, [str(w.message) for w in record]
    assert [r for r in caplog.records if O_PROJ in r.getMessage()], caplog.records


def test_a_cast_that_overflows_is_caught_after_load(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path
) -> None:
    """fp32 1e5 is a fine value (pull's scan has nothing to say); cast to fp16 it becomes Inf."""
    from safetensors.torch import load_file, save_file

    folder = tiny_llama.copy(tmp_path / "published")
    name = "model.layers.0.mlp.down_proj.weight"
    shard = folder / tiny_llama.shard_of(name)
    tensors = load_file(shard)
    tensors[name][2, 3] = 1e5
    save_file(tensors, shard, metadata={"format": "pt"})
    hub = serve(folder)
    kw = hub_kwargs(hub, tmp_path)

    with warnings.catch_warnings():
        warnings.simplefilter("error", VcacheWarning)
        from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)  # as stored: clean
        from_pretrained(AutoModelForCausalLM, REPO_ID, dtype=torch.bfloat16, **kw)  # bf16 holds 1e5
    with pytest.warns(VcacheWarning, match=r"model\.inf.*down_proj"):
        from_pretrained(AutoModelForCausalLM, REPO_ID, dtype=torch.float16, **kw)
    with pytest.raises(VerificationFailed, match="infinite"):
        from_pretrained(AutoModelForCausalLM, REPO_ID, dtype=torch.float16, strict=True, **kw)


def test_weights_the_pull_scanned_are_not_scanned_again(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vcache.integrations.transformers._load as integration

    skipped: list[set[str]] = []
    real = integration.check_loaded_model

    def spy(model: Any, *, skip: Any = ()) -> Any:
        skipped.append(set(skip))
        return real(model, skip=skip)

    monkeypatch.setattr(integration, "check_loaded_model", spy)
    hub = serve(tiny_llama.folder)
    model = from_pretrained(AutoModelForCausalLM, REPO_ID, **hub_kwargs(hub, tmp_path))
    matrices = {name for name, p in model.named_parameters() if p.dim() == 2}
    assert skipped == [matrices]  # the very bytes pull scanned: not again (only the tiny norm vectors are)
    from_pretrained(AutoModelForCausalLM, REPO_ID, dtype=torch.float16, **hub_kwargs(hub, tmp_path))
    assert skipped[-1] == set()  # a cast to fp16 can overflow: everything is checked


def _refused(folder: Path, serve: Callable[..., Any], tmp_path: Path, spy: list[str]) -> VerificationFailed:
    hub = serve(folder)
    with pytest.raises(VerificationFailed) as excinfo:
        from_pretrained(AutoModelForCausalLM, REPO_ID, **hub_kwargs(hub, tmp_path))
    assert not [c for c in spy if c.startswith(("safe_open", "from_pretrained"))], spy  # no weight bytes read
    return excinfo.value


def test_snapshot_missing_a_shard_is_refused_before_weights_are_read(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, spy_weight_reads: list[str]
) -> None:
    folder = tiny_llama.copy(tmp_path / "published")
    shard = tiny_llama.shard_of(O_PROJ)
    (folder / shard).unlink()  # the publisher never uploaded it; the index still lists it
    error = _refused(folder, serve, tmp_path, spy_weight_reads)
    assert shard in str(error)
    assert [f.code.rsplit(".", 1)[-1] for f in error.findings] == ["missing_shard"]


@pytest.mark.parametrize(
    ("from_index", "code"),
    [
        (True, "model.missing_tensor"),  # a coherent index: only the model knows the tensor is missing
        (False, "index.tensor_missing"),  # the index still lists it: pull's index check sees it first
    ],
    ids=["index-omits-it", "index-lists-it"],
)
def test_shard_missing_a_tensor_is_refused_before_weights_are_read(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    spy_weight_reads: list[str],
    from_index: bool,
    code: str,
) -> None:
    folder = tiny_llama.copy(tmp_path / "published")
    drop_tensor(folder, O_PROJ, from_index=from_index)
    error = _refused(folder, serve, tmp_path, spy_weight_reads)
    assert O_PROJ in str(error) and "random" in str(error)
    assert [f.code for f in error.findings] == [code]


def test_config_with_more_layers_than_weights_is_refused_before_weights_are_read(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, spy_weight_reads: list[str]
) -> None:
    folder = tiny_llama.copy(tmp_path / "published")
    set_config(folder, num_hidden_layers=5)
    error = _refused(folder, serve, tmp_path, spy_weight_reads)
    # pull's index/config coherence check or ours, whichever sees it first: both name the missing layers
    assert re.search(r"num_hidden_layers ?= ?5", str(error)) and re.search(r"layers 2[-–]4", str(error)), (
        error
    )
    assert [f.code for f in error.findings] == ["config.layer_count_mismatch"]


def test_tokenizer_and_config_skip_model_checks_and_fetch_no_weights(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, spy_weight_reads: list[str]
) -> None:
    folder = tiny_llama.copy(tmp_path / "published")
    set_config(folder, num_hidden_layers=5)  # would refuse a model, not a tokenizer
    hub = serve(folder)
    kw = hub_kwargs(hub, tmp_path)
    assert from_pretrained(AutoTokenizer, REPO_ID, **kw) is not None
    assert from_pretrained(AutoConfig, REPO_ID, **kw).num_hidden_layers == 5
    assert spy_weight_reads == []
    fetched = {r.file_path for r in hub.body_requests(REPO_ID)}
    assert fetched and not [p for p in fetched if p and p.endswith(".safetensors")], fetched


def test_offline_load_makes_no_request_and_reads_the_ledger_instead_of_hashing(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logits_of: Callable[[Any], Any],
) -> None:
    import vcache.hashing
    import vcache.ledger

    hub = serve(tiny_llama.folder)
    kw = hub_kwargs(hub, tmp_path)
    first = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    requests_before = len(hub.log)

    hashed: list[int] = []
    lookups: list[str] = []
    real_update = vcache.hashing.StreamHasher.update
    real_lookup = vcache.ledger.Ledger.lookup

    def update(self: Any, data: Any) -> None:
        hashed.append(len(data))
        real_update(self, data)

    def lookup(self: Any, etag: str, blob: Path) -> Any:
        record = real_lookup(self, etag, blob)
        lookups.append(etag if record is not None else f"miss {etag}")
        return record

    monkeypatch.setattr(vcache.hashing.StreamHasher, "update", update)
    monkeypatch.setattr(vcache.ledger.Ledger, "lookup", lookup)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)

    assert len(hub.log) == requests_before  # no network request at all
    assert hashed == []  # nothing re-hashed
    n_files = len([p for p in tiny_llama.folder.iterdir() if p.is_file()])
    assert len(lookups) >= n_files and not [x for x in lookups if x.startswith("miss")]
    assert torch.equal(logits_of(again), logits_of(first))


def test_a_tampered_cached_blob_is_refused_offline(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = serve(tiny_llama.folder)
    kw = hub_kwargs(hub, tmp_path)
    model = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    shard = tiny_llama.shard_of(O_PROJ)
    blob = (Path(model.config._name_or_path) / shard).resolve()
    start, length = tensor_rows_range(blob, O_PROJ, ZERO_ROWS)
    with open(blob, "r+b") as f:  # bit rot / a bad copy after the fact: the ledger's stat token changes
        f.seek(start)
        f.write(bytes(length))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VerificationFailed) as excinfo:
        from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    assert shard in str(excinfo.value)


def test_not_a_transformers_class_is_a_usage_error() -> None:
    from vcache.errors import UsageError

    with pytest.raises(UsageError):
        from_pretrained(object, REPO_ID)


def test_importing_vcache_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys, vcache, vcache.integrations, vcache.integrations.transformers\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------------------
# The remembered completeness verdict (.vcache/ledger/models/) and the snapshot record


@pytest.fixture
def spy_completeness(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count what computing the completeness verdict does: config loads, header reads, meta-model builds."""
    import vcache.integrations.transformers._completeness as completeness
    import vcache.integrations.transformers._load as integration

    counts = {"config": 0, "header": 0, "meta": 0}

    def counting(kind: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def spy(*args: Any, **kwargs: Any) -> Any:
            counts[kind] += 1
            return real(*args, **kwargs)

        return spy

    monkeypatch.setattr(integration, "_config_for", counting("config", integration._config_for))
    monkeypatch.setattr(completeness, "_read_header", counting("header", completeness._read_header))
    monkeypatch.setattr(completeness, "_build_meta_model", counting("meta", completeness._build_meta_model))
    return counts


def derived_records(cache: Path) -> dict[str, list[str]]:
    """The derived records in the repo folder, by kind (relative to ``.vcache/ledger``)."""
    ledger = cache / "models--acme--tiny-llama" / ".vcache" / "ledger"
    return {
        kind: sorted(p.name for p in (ledger / kind).glob("*.json")) if (ledger / kind).is_dir() else []
        for kind in ("models", "snapshots")
    }


def swap_in(snapshot: Path, path: str, data: bytes) -> None:
    """Point ``snapshot/path`` at a new, ledger-recorded blob holding ``data`` (as if another verified commit's
    blob were linked there): the pull still passes, only what the file says has changed."""
    import hashlib

    from vcache.ledger import Ledger

    repo_folder = snapshot.parents[1]
    digest = hashlib.sha256(data).hexdigest()
    blob = repo_folder / "blobs" / digest
    blob.write_bytes(data)
    Ledger(repo_folder / ".vcache" / "ledger").record(digest, blob, f"sha256:{digest}", [])
    entry = snapshot / path
    entry.unlink()
    entry.symlink_to(os.path.relpath(blob, entry.parent))
    # ... and the commit's listing names it, so the snapshot is consistent (verify checks links against it).
    from vcache.cache import CacheRepo

    cache_dir, folder, commit = snapshot.parents[2], repo_folder.name, snapshot.name
    rtype, _, rest = folder.partition("--")
    repo = CacheRepo(cache_dir, rest.replace("--", "/"), rtype[:-1])
    tree = repo.read_tree(commit)
    if tree is not None:
        _size, blob_id, _sha = tree[path]
        tree[path] = (len(data), blob_id, digest)
        repo.write_tree(commit, tree)


def test_an_unchanged_snapshot_reuses_the_remembered_verdict(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spy_completeness: dict[str, int],
    logits_of: Callable[[Any], Any],
) -> None:
    import vcache.hashing
    import vcache.integrations.transformers._load as integration
    import vcache.ledger

    hub = serve(tiny_llama.folder)
    kw = hub_kwargs(hub, tmp_path)
    first = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    assert spy_completeness["meta"] == 1 and spy_completeness["header"] >= 3
    records = derived_records(kw["cache_dir"])
    assert len(records["models"]) == 1
    commit = Path(first.config._name_or_path).name
    assert records["models"][0].startswith(commit[:12])

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)  # the first offline load writes the snapshot record
    assert derived_records(kw["cache_dir"])["snapshots"] == [f"{commit}.json"]

    skipped: list[set[str]] = []
    real_check = integration.check_loaded_model

    def check(model: Any, *, skip: Any = ()) -> Any:
        skipped.append(set(skip))
        return real_check(model, skip=skip)

    calls: list[str] = []
    for owner, name in (
        (vcache.ledger.Ledger, "lookup"),
        (vcache.hashing.StreamHasher, "update"),
    ):
        real = getattr(owner, name)
        monkeypatch.setattr(
            owner, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    monkeypatch.setattr(integration, "check_loaded_model", check)
    spy_completeness.update(config=0, header=0, meta=0)
    requests_before = len(hub.log)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VcacheWarning)
        again = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)

    assert spy_completeness == {"config": 0, "header": 0, "meta": 0}  # nothing recomputed
    assert calls == []  # no per-blob record read, nothing hashed: the snapshot record answered
    assert len(hub.log) == requests_before
    matrices = {name for name, p in again.named_parameters() if p.dim() == 2}
    assert skipped == [matrices]  # the remembered loaded_from gives the same after-load skip set
    assert torch.equal(logits_of(again), logits_of(first))
    assert derived_records(kw["cache_dir"]) == {"models": records["models"], "snapshots": [f"{commit}.json"]}
    repo_folder = kw["cache_dir"] / "models--acme--tiny-llama"
    # derived records live under .vcache/ only: nothing new at the cache root, in refs/ or snapshots/
    assert sorted(p.name for p in kw["cache_dir"].iterdir()) == [
        ".locks",
        "CACHEDIR.TAG",
        "models--acme--tiny-llama",
    ]
    assert sorted(p.name for p in (repo_folder / "refs").iterdir()) == ["main"]
    assert [p.name for p in (repo_folder / "snapshots").iterdir()] == [commit]


def _shape_changed_shard(path: Path, tensor: str) -> bytes:
    """The shard's bytes with ``tensor`` one row shorter (names unchanged: the index stays coherent)."""
    from safetensors.torch import load_file, save

    tensors = load_file(path)
    tensors[tensor] = tensors[tensor][:-1].clone()
    return bytes(save(tensors, metadata={"format": "pt"}))


@pytest.mark.parametrize(
    "change", ["blob_touched", "blob_ctime_changed", "config_changed", "shard_replaced", "class_differs"]
)
def test_the_remembered_verdict_is_not_trusted_when_what_decides_it_changed(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spy_completeness: dict[str, int],
    change: str,
) -> None:
    hub = serve(tiny_llama.folder)
    kw = hub_kwargs(hub, tmp_path)
    snapshot = Path(from_pretrained(AutoModelForCausalLM, REPO_ID, **kw).config._name_or_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    assert spy_completeness["meta"] == 1  # remembered from the first load
    shard = tiny_llama.shard_of(O_PROJ)

    cls: Any = AutoModelForCausalLM
    expect: list[str] = []
    if change == "blob_touched":
        blob = (snapshot / shard).resolve()
        st = blob.stat()
        os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "blob_ctime_changed":  # what an in-place edit with its mtime put back leaves to see
        blob = (snapshot / shard).resolve()
        mode = blob.stat().st_mode
        os.chmod(blob, 0o600)
        os.chmod(blob, mode)
    elif change == "config_changed":
        config = json.loads((snapshot / "config.json").read_text())
        config["intermediate_size"] = 96  # every MLP weight now has the wrong shape for this config
        swap_in(snapshot, "config.json", json.dumps(config, indent=2).encode())
        expect = ["model.shape_mismatch"]
    elif change == "shard_replaced":
        swap_in(snapshot, shard, _shape_changed_shard(snapshot / shard, O_PROJ))
        expect = ["model.shape_mismatch"]
    else:
        cls = AutoModel
        expect = ["model.unexpected_tensor"]  # the causal LM head has no place in the base model

    if "model.shape_mismatch" in expect:
        with pytest.raises(VerificationFailed) as excinfo:
            from_pretrained(cls, REPO_ID, **kw)
        assert "model.shape_mismatch" in {f.code for f in excinfo.value.findings}
    elif expect:
        with pytest.warns(VcacheWarning) as record:
            from_pretrained(cls, REPO_ID, **kw)
        assert [w.message.finding.code for w in record if isinstance(w.message, VcacheWarning)] == expect
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", VcacheWarning)
            from_pretrained(cls, REPO_ID, **kw)
    assert spy_completeness["meta"] == 2  # computed again, not answered from the record
    if not expect:  # the recomputed verdict is remembered again for the file as it is now
        from_pretrained(cls, REPO_ID, **kw)
        assert spy_completeness["meta"] == 2


def test_arguments_that_change_the_architecture_are_part_of_the_key(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spy_completeness: dict[str, int],
) -> None:
    hub = serve(tiny_llama.folder)
    kw = hub_kwargs(hub, tmp_path)
    from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VerificationFailed, match="layer"):
        from_pretrained(AutoModelForCausalLM, REPO_ID, num_hidden_layers=3, **kw)
    assert spy_completeness["meta"] == 2
    config = AutoConfig.from_pretrained(tiny_llama.folder)
    from_pretrained(AutoModelForCausalLM, REPO_ID, config=config, **kw)  # a config object: never remembered
    from_pretrained(AutoModelForCausalLM, REPO_ID, config=config, **kw)
    assert spy_completeness["meta"] == 4
    from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)  # the plain load is still remembered
    assert spy_completeness["meta"] == 4


@pytest.fixture
def read_only_cache(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """``make_read_only(cache)``: from now on nothing under ``cache`` can be created or written (as on a
    read-only mount; the suite may run as root, which file modes do not stop)."""
    import errno
    import pathlib

    import vcache.ledger

    def make_read_only(cache: Path) -> None:
        def inside(path: Any) -> bool:
            return str(path).startswith(str(cache))

        def refuse(path: Any) -> None:
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))

        real_write, real_mkdir, real_access = vcache.ledger.write_atomic, pathlib.Path.mkdir, os.access
        monkeypatch.setattr(
            vcache.ledger, "write_atomic", lambda p, d: refuse(p) if inside(p) else real_write(p, d)
        )
        monkeypatch.setattr(
            pathlib.Path,
            "mkdir",
            lambda self, *a, **k: refuse(self) if inside(self) else real_mkdir(self, *a, **k),
        )
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode, *a, **k: False if inside(p) and mode & os.W_OK else real_access(p, mode, *a, **k),
        )

    return make_read_only


@pytest.mark.parametrize("records", ["absent", "written_before"])
def test_a_read_only_cache_loads_without_writing(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spy_completeness: dict[str, int],
    read_only_cache: Callable[[Path], None],
    logits_of: Callable[[Any], Any],
    records: str,
) -> None:
    from vcache.pull import pull

    hub = serve(tiny_llama.folder)
    kw = hub_kwargs(hub, tmp_path)
    assert pull(REPO_ID, **kw).ok  # verified, but nothing derived yet
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if records == "written_before":
        from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    before = derived_records(kw["cache_dir"])
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama.folder)
    read_only_cache(kw["cache_dir"])
    spy_completeness.update(meta=0)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("error", VcacheWarning)
            model = from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
        assert torch.equal(logits_of(model), logits_of(reference))
    assert derived_records(kw["cache_dir"]) == before
    # without a record every load computes the verdict; with one, none does
    assert spy_completeness["meta"] == (2 if records == "absent" else 0)


@pytest.mark.parametrize("registry", ["auto_config", "auto_model", "conversion_mapping"])
def test_runtime_registrations_turn_remembering_off(
    tiny_llama: TinyLlama,
    serve: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spy_completeness: dict[str, int],
    registry: str,
) -> None:
    """A registered class or conversion mapping can change what the check builds: never answered from a record."""
    from transformers import conversion_mapping
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    hub = serve(tiny_llama.folder)
    kw = hub_kwargs(hub, tmp_path)
    from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)  # remembered
    if registry == "auto_config":
        monkeypatch.setattr(CONFIG_MAPPING, "_extra_content", {"my-llama": object})
    elif registry == "auto_model":
        monkeypatch.setattr(AutoModelForCausalLM._model_mapping, "_extra_content", {object: object})
    else:
        monkeypatch.setattr(conversion_mapping, "USER_REGISTERED_MAPPINGS", {"llama"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    from_pretrained(AutoModelForCausalLM, REPO_ID, **kw)
    assert spy_completeness["meta"] == 3


# ----------------------------------------------------------------------------------------------------------
# Pickled checkpoints (pytorch_model.bin): never unpickled before vcache walked them


class _Payload:
    """Pickles to a call of ``os.system``: what a malicious checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def _pickled_checkpoint(tiny_llama: TinyLlama, folder: Path, **extra: Any) -> Path:
    """The tiny Llama as a single ``pytorch_model.bin`` (``torch.save`` of its state dict, plus ``extra``)."""
    from safetensors.torch import load_file

    folder.mkdir(parents=True)
    state: dict[str, Any] = {}
    for shard in sorted(tiny_llama.folder.glob("model-*.safetensors")):
        state.update(load_file(shard))
    torch.save({**state, **extra}, folder / "pytorch_model.bin")
    (folder / "config.json").write_bytes((tiny_llama.folder / "config.json").read_bytes())
    return folder


def test_an_unsafe_pickle_is_refused_before_transformers_opens_it(
    tiny_llama: TinyLlama, serve: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    evil = _pickled_checkpoint(tiny_llama, tmp_path / "evil", payload=_Payload(f"touch {marker}"))
    clean = _pickled_checkpoint(tiny_llama, tmp_path / "clean")
    loads: list[str] = []
    real_load = torch.load

    def spy_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    hub = serve(evil)
    with pytest.raises(VerificationFailed) as excinfo:
        from_pretrained(AutoModelForCausalLM, REPO_ID, **hub_kwargs(hub, tmp_path))  # strict=False
    assert "pickle.unsafe_import" in codes(excinfo.value.findings)
    assert "pytorch_model.bin" in str(excinfo.value) and "os.system" in str(excinfo.value)
    assert loads == [] and not marker.exists()  # transformers never opened it; the payload never ran
    # The same checkpoint without the payload loads, through torch.load: the spy would have seen a load.
    hub = serve(clean, repo_id="acme/clean")
    with pytest.warns(VcacheWarning, match="completeness_skipped"):  # a pickle is not inspected for that
        model = from_pretrained(AutoModelForCausalLM, "acme/clean", **hub_kwargs(hub, tmp_path))
    assert isinstance(model, LlamaForCausalLM) and loads
