"""The harm the zero-row check prevents: PEFT DoRA on an ``o_proj`` with all-zero rows gives NaN.

DoRA keeps a magnitude per output row initialised to the row's L2 norm, and scales by ``magnitude / norm``;
an all-zero row makes that ``0 / 0``. This is the failure that started vcache (Llama-3.1-8B, peft #2049).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from transformers import AutoModelForCausalLM  # noqa: E402

# peft 0.21 calls a transformers 5 method that is deprecated; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

from vcache.integrations.transformers import DORA_HAZARD, check_loaded_model  # noqa: E402

from .conftest import O_PROJ, ZERO_ROWS, TinyLlama, zero_rows_in_place  # noqa: E402


def dora(model: Any) -> Any:
    config = peft.LoraConfig(
        r=4, lora_alpha=8, use_dora=True, target_modules=["o_proj"], init_lora_weights=True
    )
    return peft.get_peft_model(model, config)


def forward(model: Any) -> Any:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 9, 17, 42, 99, 200, 2]])).logits


def magnitude_of(peft_model: Any) -> Any:
    layer = peft_model.get_submodule("base_model.model." + O_PROJ.removesuffix(".weight"))
    return layer.lora_magnitude_vector["default"].weight


def test_dora_on_zero_rows_gives_nan_and_vcache_flags_them(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    damaged = tiny_llama.copy(tmp_path / "damaged")
    zero_rows_in_place(damaged / tiny_llama.shard_of(O_PROJ), O_PROJ, ZERO_ROWS)
    base = AutoModelForCausalLM.from_pretrained(damaged)

    findings = [f for f in check_loaded_model(base) if f.code == "model.zero_rows"]  # what vcache says first
    assert [f.tensor for f in findings] == [O_PROJ]
    assert DORA_HAZARD in findings[0].message

    model = dora(base)
    magnitude = magnitude_of(model)
    assert bool((magnitude[list(ZERO_ROWS)] == 0).all())  # the weight norm DoRA will divide by
    assert bool(torch.isnan(forward(model)).any())  # 0 / 0 at initialisation: NaN straight away


def test_dora_on_clean_weights_is_finite(tiny_llama: TinyLlama) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_llama.folder)
    assert check_loaded_model(base) == []
    model = dora(base)
    assert bool((magnitude_of(model) > 0).all())
    logits = forward(model)
    assert bool(torch.isfinite(logits).all())
    # a fresh DoRA adapter is an identity: the output equals the base model's
    torch.testing.assert_close(logits, forward(AutoModelForCausalLM.from_pretrained(tiny_llama.folder)))
