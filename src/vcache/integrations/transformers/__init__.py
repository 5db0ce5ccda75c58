"""The verified ``from_pretrained`` path for transformers.

What this package owns: turning a repo id into a loaded transformers object only after

1. ``vcache.pull`` fetched and verified every file of the snapshot (offline: from the ledger records), and
   nothing failed;
2. for model classes, the checkpoint was shown to hold every tensor the model expects, with the shape it
   expects, judged from the safetensors headers and the index alone (:func:`check_model_completeness`), so an
   incomplete upload is refused before any weight bytes are read, where transformers would silently initialise
   the missing weights at random;
3. after loading, the parameters were checked for NaN/Inf and every ``nn.Linear`` weight for all-zero rows,
   the PEFT DoRA hazard (:func:`check_loaded_model`).

Finding codes (besides the pull's own, which are passed through):

==============================  ========  ==========================================================
``model.missing_shard``         fail      a shard the index lists is absent (its tensors are named)
``model.bad_shard``             fail      a listed shard has no readable safetensors header
``model.bad_index``             fail      the index cannot be read, or names a shard outside the folder
``config.layer_count_mismatch`` fail      the config's layer count and the layers in the weights differ
                                          (info when the caller overrode the count on purpose)
``model.missing_tensor``        fail      the model expects it, no shard has it (transformers would
                                          initialise it at random); names the shard the index promised
``model.shape_mismatch``        fail      header shape differs from the model's
``model.unexpected_tensor``     warn      in the checkpoint, no place in the model (dropped)
``model.completeness_skipped``  warn      the completeness check could not run (why is in the message)
``model.nan`` / ``model.inf``   warn      after load: NaN / ±Inf in a parameter
``model.zero_rows``             warn      after load: all-zero rows in an ``nn.Linear`` weight (DoRA)
==============================  ========  ==========================================================

``strict=True`` makes every warning refuse the load. What it must never do: import torch or transformers at
import time (``import vcache`` stays light; both are
imported inside the functions that need them); read tensor data before the completeness check passed; fetch,
modify or quarantine anything itself (that is ``vcache.pull``); configure logging.

The modules, one job each (data flows from ``_load`` through the checks to ``_messages``, never back):

- ``_load``: :func:`from_pretrained` / :func:`load_model`, the order of the steps above, what is fetched.
- ``_completeness``: step 2, :func:`check_model_completeness` (headers, index, meta-device model).
- ``_remembered``: step 2's verdict kept in the ledger folder, and when it may answer again.
- ``_after_load``: step 3, :func:`check_loaded_model`.
- ``_messages``: refusal texts, :class:`~vcache.errors.VcacheWarning` and log records.
"""

from __future__ import annotations

from vcache.errors import VcacheWarning
from vcache.integrations.transformers._after_load import DORA_HAZARD, check_loaded_model
from vcache.integrations.transformers._completeness import check_model_completeness
from vcache.integrations.transformers._load import (
    DEFAULT_IGNORE_PATTERNS,
    WEIGHT_PATTERNS,
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
