"""The verified ``from_pretrained`` path for transformers (the code is in ``_completeness`` until it is split)."""

from __future__ import annotations

from vcache.integrations.transformers._completeness import (
    DEFAULT_IGNORE_PATTERNS,
    DORA_HAZARD,
    WEIGHT_PATTERNS,
    VcacheWarning,
    check_loaded_model,
    check_model_completeness,
    from_pretrained,
    load_model,
)

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "DORA_HAZARD",
    "WEIGHT_PATTERNS",
    "VcacheWarning",
    "check_loaded_model",
    "check_model_completeness",
    "from_pretrained",
    "load_model",
]
