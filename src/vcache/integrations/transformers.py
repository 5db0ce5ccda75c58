"""The verified ``from_pretrained`` path for transformers.

What this module owns: turning a repo id into a loaded transformers object only after

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
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vcache.errors import UsageError, VerificationFailed
from vcache.report import Finding, PullReport, Severity, fail, info, warn

if TYPE_CHECKING:
    import torch

    from vcache.ledger import Ledger

log = logging.getLogger(__name__)
# Warnings reach users through warnings.warn; how (and whether) the log is shown is theirs to set up.
log.addHandler(logging.NullHandler())

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

#: Files a transformers (PyTorch) load never reads; skipped by default so that, e.g., Llama's ``original/``
#: consolidated checkpoint is not downloaded twice. Pass ``ignore_patterns=()`` to fetch everything.
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.mlmodel",
    "*.gguf",
    "original/*",
    "onnx/*",
    "coreml/*",
    "openvino/*",
)

#: Weight files, which a tokenizer, config or processor load never reads: not fetched for those by default.
WEIGHT_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    "*.pth",
    "*.ckpt",
)

#: What all-zero rows in a Linear weight break, said in every ``model.zero_rows`` finding.
DORA_HAZARD = "PEFT DoRA divides by this weight's row norm; these rows give NaN at adapter initialisation"

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

#: How many findings a refusal message spells out before summarising the rest.
_MESSAGE_LIMIT = 12
#: How many indexes a finding lists (rows, flat positions, layers).
_INDEX_LIMIT = 10
#: Rows re-checked exactly at a time when a cheap row sum flagged them.
_ROW_CHUNK = 1024
#: Elements counted at a time when a parameter holds NaN/Inf (bounds the temporaries).
_ELEMENT_CHUNK = 1 << 22
#: Parameters up to this size that need only the NaN/Inf check are checked together (see check_loaded_model).
_BATCH_ELEMENTS = 1 << 16


class VcacheWarning(UserWarning):
    """A verification warning from vcache; ``finding`` is the :class:`~vcache.report.Finding` behind it."""

    def __init__(self, message: str, finding: Finding | None = None) -> None:
        super().__init__(message)
        self.finding = finding


# --------------------------------------------------------------------------------------------------------------
# from_pretrained


def from_pretrained(
    cls: Any,
    repo_id: str,
    *,
    revision: str | None = None,
    strict: bool = False,
    check_after_load: bool = True,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    allow_patterns: str | Sequence[str] | None = None,
    ignore_patterns: str | Sequence[str] | None = DEFAULT_IGNORE_PATTERNS,
    max_workers: int | None = None,
    **kwargs: Any,
) -> Any:
    """Pull and verify ``repo_id``, refuse anything incomplete or damaged, then ``cls.from_pretrained`` it.

    ``cls`` is any transformers class with a ``from_pretrained`` classmethod: an ``AutoModel*`` class, a
    concrete model class, ``AutoTokenizer``, ``AutoConfig``, ``AutoProcessor``, ... The steps:

    1. ``vcache.pull`` the snapshot (offline with ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``: no
       network, blobs verified from their ledger records). If any file failed, raise
       :class:`~vcache.errors.VerificationFailed` naming the files and findings; nothing is loaded.
    2. For model classes: :func:`check_model_completeness` on the snapshot, from headers only. A missing
       tensor, shard or layer, or a shape mismatch, raises ``VerificationFailed`` before any weight bytes are
       read.
    3. ``cls.from_pretrained(<snapshot path>, local_files_only=True, **kwargs)``.
    4. Unless ``check_after_load=False``: :func:`check_loaded_model` (NaN/Inf, all-zero Linear rows).

    Warnings are issued as :class:`VcacheWarning` and logged; with ``strict=True`` any warning raises
    ``VerificationFailed`` instead (before loading when it came from steps 1-2). ``strict`` does not change
    what ``pull`` quarantines: a file the publisher shipped with warnings stays in the cache, it just is not
    loaded. ``kwargs`` go to ``cls.from_pretrained`` unchanged (``dtype``, ``device_map``, ``subfolder``,
    ``variant``, ``config``, ``trust_remote_code``, ...).

    By default files that a PyTorch load never reads (:data:`DEFAULT_IGNORE_PATTERNS`; for tokenizers,
    configs and processors also the weight files, :data:`WEIGHT_PATTERNS`) are not fetched; pass
    ``ignore_patterns=None`` to fetch every file of the revision.
    """
    if not callable(getattr(cls, "from_pretrained", None)):
        raise UsageError(
            f"{cls!r} has no from_pretrained method; pass a transformers class such as "
            "AutoModelForCausalLM, AutoTokenizer or AutoConfig"
        )
    force_download = bool(kwargs.pop("force_download", False))
    for hub_only in ("proxies", "resume_download"):
        kwargs.pop(hub_only, None)  # meaningless for a verified local snapshot
    from vcache.pull import pull

    model_class = _is_model_class(cls)
    if ignore_patterns is DEFAULT_IGNORE_PATTERNS:
        ignore_patterns = _default_ignore(model_class, kwargs.get("gguf_file"))
    report = pull(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        endpoint=endpoint,
        token=token,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
        local_files_only=local_files_only,
        strict=False,  # strictness decides what we load, not what pull quarantines
        max_workers=max_workers,
        force_download=force_download,
    )
    where = _describe_source(repo_id, report)
    cls_name = getattr(cls, "__name__", repr(cls))
    if not report.ok or report.snapshot_path is None:
        raise _pull_refusal(repo_id, where, report)
    pull_warnings = [
        _with_file(f, fr.path) for fr in report.files for f in fr.findings if f.severity is Severity.WARN
    ]
    snapshot = Path(report.snapshot_path)

    completeness = _Completeness()
    if model_class:
        slot = _RememberedVerdict.for_load(cls, report, snapshot, kwargs)
        remembered = slot.lookup() if slot is not None else None
        if remembered is not None:
            completeness = remembered
        else:
            unchanged = slot.folder_state() if slot is not None else None
            subfolder = str(kwargs.get("subfolder") or "")
            # _config_for reads this one when no config is passed (the only case a verdict is remembered for)
            probed = [(snapshot / subfolder if subfolder else snapshot) / "config.json"]
            config = _config_for(snapshot, kwargs)
            completeness = _completeness(
                snapshot,
                config,
                cls,
                subfolder=subfolder,
                variant=kwargs.get("variant"),
                key_mapping=kwargs.get("key_mapping"),
                use_safetensors=kwargs.get("use_safetensors"),
                gguf_file=kwargs.get("gguf_file"),
                trust_remote_code=kwargs.get("trust_remote_code"),
                config_overrides=_config_overrides(config, kwargs) if "config" not in kwargs else None,
                probed=probed,
            )
            if slot is not None and unchanged is not None:
                slot.remember(completeness, probed, unchanged)
    before = pull_warnings + completeness.findings
    blocking = [f for f in before if _blocks(f, strict)]
    if blocking:
        raise _refusal(
            f"vcache refused to load {where} with {cls_name}: "
            + _headline(blocking, strict)
            + " Nothing was loaded (transformers read no weights).",
            blocking,
            _advice(blocking, strict),
            repo_id=repo_id,
            report=report,
        )
    _emit(before, where)

    loaded = cls.from_pretrained(str(snapshot), local_files_only=True, **kwargs)

    model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
    if check_after_load and _is_torch_module(model):
        seen = {(f.tensor, _kind(f.code)) for f in pull_warnings if f.tensor is not None}
        scanned = _scanned_by_pull(model, completeness.loaded_from, report)
        after = [f for f in check_loaded_model(model, skip=scanned) if (f.tensor, _kind(f.code)) not in seen]
        blocking = [f for f in after if _blocks(f, strict)]
        if blocking:
            raise _refusal(
                f"vcache refused the model loaded from {where} into {cls_name}: "
                + _headline(blocking, strict)
                + " The loaded model was discarded.",
                blocking,
                _advice(blocking, strict),
                repo_id=repo_id,
                report=report,
            )
        _emit(after, where)
    return loaded


def load_model(repo_id: str, **kwargs: Any) -> Any:
    """``from_pretrained(AutoModelForCausalLM, repo_id, **kwargs)``: the verified causal-LM load in one call."""
    from transformers import AutoModelForCausalLM

    return from_pretrained(AutoModelForCausalLM, repo_id, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Completeness, from headers only


@dataclass
class _Checkpoint:
    """What the safetensors files transformers would open hold, read from their headers and the index."""

    index_name: str | None = None
    #: tensor name -> (shard file name, shape, safetensors dtype), merged as transformers does (later shards win)
    tensors: dict[str, tuple[str, tuple[int, ...], str]] = field(default_factory=dict)
    #: tensor name -> shard, as the index claims (empty for a single file)
    weight_map: dict[str, str] = field(default_factory=dict)
    #: shards the index lists that cannot be read: name -> the finding that says why
    bad_shards: dict[str, Finding] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


def check_model_completeness(
    snapshot_dir: str | Path,
    config: Any = None,
    cls: Any = None,
    *,
    subfolder: str = "",
    variant: str | None = None,
    key_mapping: Mapping[str, str] | None = None,
    use_safetensors: bool | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Check that the checkpoint in ``snapshot_dir`` holds every tensor ``cls`` built from ``config`` expects.

    Reads only the safetensors headers and ``model.safetensors.index.json`` (never tensor data), builds the
    model on the meta device, and compares the two the way transformers 5 matches checkpoint keys to
    parameters (its key renames and ``base_model_prefix`` stripping/adding, tied weights,
    ``_keys_to_ignore_on_load_missing``/``_unexpected``; non-persistent buffers are never expected).

    ``config`` defaults to the snapshot's ``config.json``; ``cls`` defaults to the class named by the config's
    ``architectures`` (else ``AutoModel``). Findings:

    - ``model.missing_shard`` (fail): a shard the index lists is absent; its tensors are named.
    - ``model.bad_shard`` / ``model.bad_index`` (fail): a header or the index cannot be read.
    - ``config.layer_count_mismatch`` (fail): the config's ``num_hidden_layers`` and the layers present in the
      weights disagree; the missing (or extra) layer indexes are named.
    - ``model.missing_tensor`` (fail): transformers would silently initialise it at random.
    - ``model.shape_mismatch`` (fail).
    - ``model.unexpected_tensor`` (warn): in the checkpoint, not in the model; transformers drops it.
    - ``model.completeness_skipped`` (warn): the check could not run (no safetensors weights, a quantized
      config, a model that cannot be built on the meta device); the reason is in the message.
    """
    return _completeness(
        snapshot_dir,
        config,
        cls,
        subfolder=subfolder,
        variant=variant,
        key_mapping=key_mapping,
        use_safetensors=use_safetensors,
        gguf_file=gguf_file,
        trust_remote_code=trust_remote_code,
        config_overrides=config_overrides,
    ).findings


@dataclass
class _Completeness:
    findings: list[Finding] = field(default_factory=list)
    #: model key -> (checkpoint key, safetensors dtype) for tensors loaded by a plain rename (bytes unchanged)
    loaded_from: dict[str, tuple[str, str]] = field(default_factory=dict)


def _completeness(
    snapshot_dir: str | Path,
    config: Any,
    cls: Any,
    *,
    subfolder: str,
    variant: str | None,
    key_mapping: Mapping[str, str] | None,
    use_safetensors: bool | None,
    gguf_file: str | None,
    trust_remote_code: bool | None,
    config_overrides: Mapping[str, Any] | None,
    probed: list[Path] | None = None,
) -> _Completeness:
    """The completeness check; ``probed`` (when given) collects every path it looked at or read."""
    result = _Completeness()
    base = Path(snapshot_dir) / subfolder if subfolder else Path(snapshot_dir)
    probes: list[Path] = probed if probed is not None else []
    if config is None:
        from transformers import AutoConfig

        probes.append(base / "config.json")
        config = AutoConfig.from_pretrained(
            str(base), local_files_only=True, trust_remote_code=trust_remote_code
        )
    if config_overrides:
        config = copy.deepcopy(config)
        for key, value in config_overrides.items():
            setattr(config, key, value)
    if getattr(config, "quantization_config", None):
        result.findings.append(
            _skipped(
                "the config has a quantization_config; quantized checkpoints store tensors the unquantized "
                "model does not have, so names and shapes cannot be compared"
            )
        )
        return result
    if gguf_file:
        result.findings.append(
            _skipped(f"weights come from the GGUF file {gguf_file}, which this check does not read")
        )
        return result

    weights = _locate_weights(base, config, variant, use_safetensors, probes)
    if isinstance(weights, Finding):
        result.findings.append(weights)
        return result
    ckpt = _read_checkpoint(weights, probes)
    findings = result.findings
    findings += ckpt.findings
    if any(f.code == "model.bad_index" for f in ckpt.findings):
        return result  # without the index there is nothing to compare the model with

    try:
        model = _build_meta_model(cls, config, trust_remote_code)
    except Exception as exc:  # a model class may do anything in __init__; the check then cannot run
        findings.append(
            _skipped(f"the model could not be built on the meta device ({type(exc).__name__}: {exc})")
        )
        return result
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    model_name = type(model).__name__
    renamer = _key_renamer(model, key_mapping)

    # Which model keys each checkpoint key feeds, exactly as transformers' loading loop decides it.
    covered: set[str] = set()
    unexpected: dict[str, str] = {}  # model-side name -> checkpoint key
    for key in sorted(ckpt.tensors, key=_natural_key):
        shard, shape, dtype = ckpt.tensors[key]
        target, fanout = renamer(key, expected)
        if target in expected:
            if fanout is None:
                covered.add(target)
                result.loaded_from[target] = (key, dtype)
                if shape != expected[target]:
                    findings.append(
                        fail(
                            "model.shape_mismatch",
                            f"{key} in {shard} has shape {list(shape)} but {model_name} expects "
                            f"{list(expected[target])} for {target} (from the config). transformers would refuse "
                            "or re-initialise it. The config and the weights come from different models or "
                            "revisions; check the revision, or the config you passed.",
                            tensor=key,
                            shard=shard,
                            shape=list(shape),
                            expected_shape=list(expected[target]),
                        )
                    )
            else:  # a fusing/splitting conversion: shapes change on the way, only presence is comparable
                covered.update(t for t in fanout if t in expected)
                covered.add(target)
        else:
            for t in fanout or [target]:
                unexpected.setdefault(t, key)

    # Tensors listed in the index whose shard is missing or unreadable: known to exist, just not here.
    lost: dict[str, str] = {}  # model-side name -> shard
    for key, shard in ckpt.weight_map.items():
        if shard in ckpt.bad_shards and key not in ckpt.tensors:
            target, fanout = renamer(key, expected)
            for t in fanout or [target]:
                lost[t] = shard

    missing = set(expected) - covered
    missing -= _satisfied_by_tying(model, missing)
    missing = {k for k in missing if not _ignored(k, _patterns(model, "_keys_to_ignore_on_load_missing"))}
    ignore_unexpected = _patterns(model, "_keys_to_ignore_on_load_unexpected") | _implicit_unexpected(model)
    unexpected = {k: v for k, v in unexpected.items() if not _ignored(k, ignore_unexpected)}

    for shard, finding in ckpt.bad_shards.items():
        names = sorted((k for k, s in lost.items() if s == shard and k in missing), key=_natural_key)
        findings.append(_with_detail(finding, tensors=names[:_INDEX_LIMIT], tensor_count=len(names)))
    missing -= set(lost)

    folded_missing, folded_unexpected, layer_findings = _layer_findings(
        model, config, missing, unexpected, expected, ckpt, renamer, config_overrides or {}
    )
    findings += layer_findings
    missing -= folded_missing

    for name in sorted(missing, key=_natural_key):
        findings.append(_missing_tensor(name, expected[name], model_name, model, ckpt))
    for name in sorted(set(unexpected) - folded_unexpected, key=_natural_key):
        key = unexpected[name]
        shard = ckpt.tensors[key][0]
        findings.append(
            warn(
                "model.unexpected_tensor",
                f"{key} in {shard} has no place in {model_name}; transformers will ignore it. Usually harmless "
                "(a head the class does not use, or an older layout); if you expected it to be used, load "
                "with the class named in config.json's 'architectures'.",
                tensor=key,
                shard=shard,
            )
        )
    return result


def _locate_weights(
    base: Path, config: Any, variant: str | None, use_safetensors: bool | None, probed: list[Path]
) -> Path | Finding:
    """The file transformers would load for this folder, in its order of preference, or why there is none."""
    explicit = getattr(config, "transformers_weights", None)
    if isinstance(explicit, str) and explicit:
        if not explicit.endswith((".safetensors", ".safetensors.index.json")):
            return _skipped(f"config.json names {explicit!r} as the weights file, which is not safetensors")
        return base / explicit
    if use_safetensors is not False:
        for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME):
            candidate = base / _add_variant(name, variant)
            probed.append(candidate)
            if candidate.is_file():
                return candidate
    return _skipped(
        f"no {_add_variant(SAFE_WEIGHTS_NAME, variant)} or {_add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)} in "
        f"{base}; pickle checkpoints (*.bin) cannot be inspected without loading them"
    )


def _read_checkpoint(weights: Path, probed: list[Path]) -> _Checkpoint:
    """Headers of the file(s) transformers would open; never the tensor data."""
    from vcache.checks.sniff import read_json

    ckpt = _Checkpoint()
    probed.append(weights)
    if weights.name.endswith(".index.json"):
        ckpt.index_name = weights.name
        try:
            weight_map = read_json(weights)["weight_map"]
            if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
            ):
                raise TypeError("weight_map is not an object of strings")
            unsafe = sorted({v for v in weight_map.values() if not _is_plain_file_name(v)})
            if unsafe:  # the index is untrusted: never follow it out of the snapshot
                raise ValueError(f"shard names must be plain file names, got {unsafe[:3]}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            ckpt.findings.append(
                fail(
                    "model.bad_index",
                    f"{weights.name} cannot be read as a sharded index ({type(exc).__name__}: {exc}); "
                    "transformers cannot load this snapshot. Pull it again, or report it to the publisher.",
                    path=weights.name,
                )
            )
            return ckpt
        ckpt.weight_map = dict(weight_map)
        shards = sorted(set(weight_map.values()))  # the order transformers opens (and merges) them in
    else:
        shards = [weights.name]
    for shard in shards:
        path = weights.parent / shard
        probed.append(path)
        if not path.is_file():
            listed = "the index lists it" if ckpt.index_name else "config.json names it"
            ckpt.bad_shards[shard] = fail(
                "model.missing_shard",
                f"{shard} is absent from the snapshot although {listed}; transformers would fail to open it "
                "(or, through some loaders, run with those weights uninitialised). The upload is incomplete "
                "or the file was removed from the cache: pull again, and if the Hub lacks it, tell the publisher.",
                path=shard,
            )
            continue
        header, header_findings = _read_header(path)
        if header is None:
            reasons = "; ".join(f.message for f in header_findings if f.severity is Severity.FAIL)
            ckpt.bad_shards[shard] = fail(
                "model.bad_shard",
                f"{shard} has no readable safetensors header ({reasons or 'unreadable'}); transformers cannot "
                "load it. Run `vcache verify` on the snapshot, or pull again.",
                path=shard,
            )
            continue
        for entry in header.tensors:
            ckpt.tensors[entry.name] = (shard, tuple(entry.shape), entry.dtype)
    return ckpt


def _is_plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and ":" not in name


def _read_header(path: Path) -> tuple[Any, list[Finding]]:
    from vcache.checks.safetensors import read_header

    header, findings = read_header(path)
    return header, list(findings)


def _build_meta_model(cls: Any, config: Any, trust_remote_code: bool | None) -> Any:
    """The model ``cls`` would build from ``config``, with every tensor on the meta device (no memory, no init)."""
    import torch
    import transformers

    if cls is None:
        archs = getattr(config, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        cls = cls if cls is not None else transformers.AutoModel
    contexts: list[Any] = [torch.device("meta")]
    with contextlib.suppress(ImportError, AttributeError):
        from transformers import initialization

        contexts += [initialization.no_init_weights(), initialization.meta_device_safe_creation_ops()]
    with contextlib.ExitStack() as stack:
        for ctx in contexts:
            stack.enter_context(ctx)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            build: Any = cls._from_config  # untyped in transformers
            return build(config)
        extra = {"trust_remote_code": trust_remote_code} if trust_remote_code is not None else {}
        return cls.from_config(config, **extra)


_Renamer = Callable[[str, dict[str, tuple[int, ...]]], tuple[str, list[str] | None]]


def _key_renamer(model: Any, key_mapping: Mapping[str, str] | None) -> _Renamer:
    """Map a checkpoint key to the model key transformers would load it into.

    Returns ``(target, fanout)``: ``fanout`` is None for a plain rename, else every model key a converting
    transform (fusing or splitting tensors) feeds from this checkpoint key.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model, dict(key_mapping) if key_mapping else None, None)
    except (ImportError, AttributeError, TypeError):  # an older or newer transformers: prefix handling only
        return lambda key, expected: (_prefix_rename(key, prefix, expected), None)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}

    cache: dict[str, tuple[str, list[str] | None]] = {}  # one model, one expected set per renamer

    def rename(key: str, expected: dict[str, tuple[int, ...]]) -> tuple[str, list[str] | None]:
        if key in cache:
            return cache[key]
        cache[key] = renamed = _rename(key, expected)
        return renamed

    def _rename(key: str, expected: dict[str, tuple[int, ...]]) -> tuple[str, list[str] | None]:
        target, pattern = rename_source_key(key, renamings, converters, prefix or None, expected)
        if target not in expected and key in expected:
            # as transformers: the key should not have been renamed (prefix handling only)
            target, pattern = rename_source_key(key, [], [], prefix or None, expected)
        if pattern is None:
            return target, None
        targets = list(by_pattern[pattern].target_patterns)
        return target, [target.replace(targets[0], t) for t in targets]

    return rename


def _prefix_rename(key: str, prefix: str, expected: Mapping[str, tuple[int, ...]]) -> str:
    if not prefix:
        return key
    stripped = key.removeprefix(prefix + ".")
    if key.startswith(prefix) and stripped != key and stripped in expected:
        return stripped
    if f"{prefix}.{key}" in expected:
        return f"{prefix}.{key}"
    return key


def _satisfied_by_tying(model: Any, missing: set[str]) -> set[str]:
    """Missing keys that transformers fills by tying them to a present tensor (e.g. ``lm_head.weight``)."""
    tied: Mapping[str, str] = getattr(model, "all_tied_weights_keys", None) or {}
    groups: dict[str, set[str]] = {}
    for target, source in tied.items():
        groups.setdefault(source, {source}).add(target)
    satisfied: set[str] = set()
    for members in groups.values():
        if members - missing:  # at least one member is in the checkpoint: the rest are tied to it
            satisfied |= members & missing
    return satisfied


def _patterns(model: Any, attribute: str) -> set[str]:
    return set(getattr(model, attribute, None) or ())


def _implicit_unexpected(model: Any) -> set[str]:
    """Legacy buffers transformers silently drops (as in its ``_adjust_missing_and_unexpected_keys``)."""
    patterns: set[str] = set()
    buffers = [name for name, _ in model.named_buffers()]
    if any(b.endswith("rotary_emb.inv_freq") for b in buffers):
        patterns.add(r"rotary_emb\.inv_freq")
    if any(b.endswith("position_ids") for b in buffers):
        patterns.add(r"(^|\.)position_ids$")
    return patterns


def _ignored(key: str, patterns: set[str]) -> bool:
    return any(re.search(p, key) for p in patterns)


def _layer_findings(
    model: Any,
    config: Any,
    missing: set[str],
    unexpected: Mapping[str, str],
    expected: dict[str, tuple[int, ...]],
    ckpt: _Checkpoint,
    renamer: _Renamer,
    overrides: Mapping[str, Any],
) -> tuple[set[str], set[str], list[Finding]]:
    """Whole layers absent from (or extra in) the weights, compared with the config's layer count.

    Returns the missing and unexpected names these findings account for, so they are not reported one by one.
    """
    n_layers, attr = _configured_layers(config)
    if n_layers is None:
        return set(), set(), []
    containers = _layer_containers(model, n_layers)
    if not containers:
        return set(), set(), []
    # Every tensor the checkpoint holds or the index promises, by model-side name.
    known = {renamer(k, expected)[0] for k in (*ckpt.tensors, *ckpt.weight_map)}
    folded_missing: set[str] = set()
    folded_unexpected: set[str] = set()
    findings: list[Finding] = []
    for container in containers:
        layer_re = re.compile(rf"^{re.escape(container)}\.(\d+)\.")
        present = {int(m.group(1)) for k in known if (m := layer_re.match(k))}
        absent = [i for i in range(n_layers) if i not in present]
        extra = sorted(i for i in present if i >= n_layers)
        if not absent and not extra:
            continue
        absent_set = set(absent)
        in_absent = {k for k in missing if (m := layer_re.match(k)) and int(m.group(1)) in absent_set}
        in_extra = {k for k in unexpected if (m := layer_re.match(k)) and int(m.group(1)) >= n_layers}
        folded_missing |= in_absent
        folded_unexpected |= in_extra
        held = sorted(i for i in present if i < n_layers)
        says = (
            f"you passed {attr}={n_layers}" if attr in overrides else f"config.json says {attr} = {n_layers}"
        )
        if absent:
            findings.append(
                fail(
                    "config.layer_count_mismatch",
                    f"{says} but the weights hold {len(held)} of those layers "
                    f"({_ranges(held) or 'none'}) under {container}; layers {_ranges(absent)} are missing "
                    f"({len(in_absent)} tensors). transformers would initialise them at random and only log a "
                    "warning. The upload is incomplete or the config belongs to another model: check the "
                    "revision and tell the publisher.",
                    container=container,
                    configured=n_layers,
                    present=len(held),
                    missing_layers=absent[: _INDEX_LIMIT * 10],
                    missing_tensor_count=len(in_absent),
                )
            )
        if extra:
            make = info if attr in overrides else fail
            findings.append(
                make(
                    "config.layer_count_mismatch",
                    f"the weights hold layers {_ranges(extra)} under {container} but {says}; transformers "
                    f"would silently drop those {len(in_extra)} tensors and run a truncated model"
                    + (
                        " (as you asked)."
                        if attr in overrides
                        else ". The config belongs to another model or revision: check the revision."
                    ),
                    container=container,
                    configured=n_layers,
                    extra_layers=extra[: _INDEX_LIMIT * 10],
                    extra_tensor_count=len(in_extra),
                )
            )
    return folded_missing, folded_unexpected, findings


def _configured_layers(config: Any) -> tuple[int | None, str]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, attr
    return None, ""


def _layer_containers(model: Any, n_layers: int) -> list[str]:
    """Names of the ``nn.ModuleList``s holding ``n_layers`` blocks with parameters (the decoder layers)."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if name
        and isinstance(module, torch.nn.ModuleList)
        and len(module) == n_layers
        and any(True for _ in module.parameters())
    ]


def _missing_tensor(
    name: str, shape: tuple[int, ...], model_name: str, model: Any, ckpt: _Checkpoint
) -> Finding:
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [name, f"{prefix}.{name}", name.removeprefix(prefix + ".")] if prefix else [name]
    listed = next((ckpt.weight_map[c] for c in candidates if c in ckpt.weight_map), None)
    if listed is not None:
        where = f"{ckpt.index_name} says it is in {listed}, but that shard's header does not contain it"
    elif ckpt.index_name:
        where = f"no shard holds it and {ckpt.index_name} does not list it"
    else:
        where = f"{next(iter({t[0] for t in ckpt.tensors.values()}), 'the weights file')} does not hold it"
    return fail(
        "model.missing_tensor",
        f"{name} (shape {list(shape)}) is expected by {model_name} but missing: {where}. transformers would "
        "initialise it at random and only log a warning. The upload is incomplete: check the revision and tell "
        "the publisher.",
        tensor=name,
        shard=listed,
        expected_shape=list(shape),
    )


def _skipped(reason: str) -> Finding:
    return warn(
        "model.completeness_skipped",
        f"the completeness check did not run: {reason}. Missing weights would only show as transformers' "
        "'newly initialized' warning.",
    )


def _add_variant(name: str, variant: str | None) -> str:
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _natural_key(key: str) -> list[Any]:
    """Sort ``layers.10`` after ``layers.9``."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]


# --------------------------------------------------------------------------------------------------------------
# The remembered completeness verdict

#: Bump when what a model record holds, or what its key is made of, changes.
_MODEL_RECORD_VERSION = 1


@dataclass
class _RememberedVerdict:
    """Where the completeness verdict of one verified load is remembered, and what decides it.

    The record (``<repo>/.vcache/ledger/models/<commit12>-<digest>.json``) holds the key below, the
    :func:`~vcache.ledger.entry_state` of every file the check looked at or read (config, weights candidates,
    index, shards: link target and blob stat token, or absent), and the findings and ``loaded_from``. It answers
    only when the key is equal (commit, class, subfolder, variant, use_safetensors, key_mapping, every int/bool
    keyword argument, the transformers/torch/vcache versions and ``CHECKS_VERSION``) and every one of those
    files is as it was: the same rule as the per-blob ledger records. Loads it cannot key exactly are never
    remembered: a ``config`` argument, ``trust_remote_code``, GGUF, a class from outside transformers, or auto
    classes with runtime registrations; nor are verdicts where the check could not run.
    """

    ledger: Ledger
    path: Path
    key: dict[str, Any]
    snapshot: Path
    base: Path

    @classmethod
    def for_load(
        cls, model_cls: Any, report: PullReport, snapshot: Path, kwargs: Mapping[str, Any]
    ) -> _RememberedVerdict | None:
        """The slot for this load, or None when its verdict must always be computed."""
        import hashlib

        import torch
        import transformers

        from vcache.cache import CacheRepo
        from vcache.ledger import CHECKS_VERSION, Ledger

        if (
            "config" in kwargs
            or kwargs.get("trust_remote_code")
            or kwargs.get("gguf_file")
            or not report.commit
            or not report.repo_id
        ):
            return None
        module = getattr(model_cls, "__module__", "") or ""
        if not module.startswith("transformers.") or _runtime_registrations(model_cls):
            return None
        subfolder = str(kwargs.get("subfolder") or "")
        parts = Path(subfolder).parts
        if Path(subfolder).is_absolute() or any(p in ("..", ".") for p in parts):
            return None
        variant, use_safetensors = kwargs.get("variant"), kwargs.get("use_safetensors")
        key_mapping = kwargs.get("key_mapping")
        if not isinstance(variant, (str, type(None))) or not isinstance(use_safetensors, (bool, type(None))):
            return None
        if key_mapping is not None and not (
            isinstance(key_mapping, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in key_mapping.items())
        ):
            return None
        try:
            repo = CacheRepo(snapshot.parents[2], report.repo_id, report.repo_type)
            if repo.snapshot_dir(report.commit) != snapshot:
                return None
        except (IndexError, ValueError):
            return None
        key = {
            "record": _MODEL_RECORD_VERSION,
            "checks_version": CHECKS_VERSION,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "commit": report.commit,
            "class": f"{module}.{model_cls.__qualname__}",
            "subfolder": subfolder,
            "variant": variant,
            "use_safetensors": use_safetensors,
            "key_mapping": sorted(key_mapping.items()) if key_mapping is not None else None,
            # a superset of the config overrides _config_overrides picks (int/bool values naming attributes)
            "int_bool_kwargs": sorted(
                [name, type(value).__name__, int(value)]
                for name, value in kwargs.items()
                if isinstance(value, (int, bool))
            ),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        ledger = Ledger(repo.ledger_dir)
        key = json.loads(json.dumps(key))  # the form a record reads back as (tuples become lists)
        return cls(
            ledger,
            ledger.model_record_path(f"{report.commit[:12]}-{digest[:32]}"),
            key,
            snapshot,
            snapshot / subfolder if subfolder else snapshot,
        )

    def lookup(self) -> _Completeness | None:
        """The remembered verdict, when its key is this one and every file it read is unchanged."""
        from vcache.ledger import entry_state
        from vcache.report import findings_from_json

        record = self.ledger.read_derived(self.path)
        if record is None or record.get("key") != self.key:
            return None
        try:
            deps = record["deps"]
            if not isinstance(deps, dict) or not deps:
                return None
            root = os.fspath(self.snapshot)
            for rel, state in deps.items():
                if entry_state(os.path.join(root, rel)) != state:
                    return None
            return _Completeness(
                findings=list(findings_from_json(record["findings"])),
                loaded_from={str(k): (str(v[0]), str(v[1])) for k, v in record["loaded_from"].items()},
            )
        except (OSError, KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None

    def folder_state(self) -> dict[str, Any] | None:
        """Every name in the folder the check reads, with its entry_state, taken before the check runs."""
        from vcache.ledger import entry_state

        try:
            return {name: entry_state(self.base / name) for name in os.listdir(self.base)}
        except OSError:
            return None

    def remember(self, result: _Completeness, probed: Sequence[Path], before: Mapping[str, Any]) -> None:
        """Write the record, if the verdict may be remembered and nothing it read changed while it ran."""
        from vcache.ledger import entry_state
        from vcache.report import findings_from_json

        if any(f.code == "model.completeness_skipped" for f in result.findings):
            return  # could not run (a missing optional package, say): try again next time
        deps: dict[str, Any] = {}
        try:
            for path in probed:
                if path.parent != self.base:
                    return  # only files beside the config are captured before the check
                state = entry_state(path)
                if state != before.get(path.name):
                    return
                deps[path.relative_to(self.snapshot).as_posix()] = state
        except (OSError, ValueError):
            return
        findings = [f.to_json() for f in result.findings]
        loaded_from = {k: list(v) for k, v in result.loaded_from.items()}
        try:
            if findings_from_json(json.loads(json.dumps(findings))) != tuple(result.findings):
                return  # a finding JSON cannot carry exactly
        except (TypeError, ValueError):
            return
        self.ledger.write_derived(
            self.path, {"key": self.key, "deps": deps, "findings": findings, "loaded_from": loaded_from}
        )


def _runtime_registrations(cls: Any) -> bool:
    """True when what the check builds or renames may not follow transformers' own tables (an auto class,
    config or checkpoint conversion mapping was registered at run time), or when that cannot be told."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:
        return True
    if getattr(CONFIG_MAPPING, "_extra_content", None) != {}:
        return True
    try:
        from transformers import conversion_mapping
    except ImportError:
        pass  # no conversion mappings at all: only prefix renames, fixed by the version
    else:
        if getattr(conversion_mapping, "USER_REGISTERED_MAPPINGS", None) != set():
            return True
    mapping = getattr(cls, "_model_mapping", None)
    if mapping is not None and getattr(mapping, "_extra_content", None) != {}:
        return True
    from transformers import PreTrainedModel

    return mapping is None and not (isinstance(cls, type) and issubclass(cls, PreTrainedModel))


# --------------------------------------------------------------------------------------------------------------
# After load


def check_loaded_model(model: Any, *, skip: Collection[str] = ()) -> list[Finding]:
    """Check a loaded model's weights: NaN/Inf in any parameter, all-zero rows in every ``nn.Linear`` weight.

    Findings (all warnings; ``from_pretrained(strict=True)`` turns them into a refusal):

    - ``model.nan`` / ``model.inf``: counts and the first flat indexes of the parameter.
    - ``model.zero_rows``: a Linear weight (``[out, in]``) with rows that are exactly zero, with the count, the
      first row indexes and what that breaks: :data:`DORA_HAZARD`.

    Cheap: one row-sum reduction per parameter (no temporary the size of the tensor); only rows the sum flags
    (zero or non-finite) are re-checked exactly. Small parameters that need only the NaN/Inf check (norms,
    biases) are first checked together, elementwise, in bounded runs; only a run with a NaN/Inf is checked
    parameter by parameter, so the findings are the same. Parameters on the meta device (offloaded), non-floating
    (quantized) parameters and the names in ``skip`` (values already scanned elsewhere, e.g. by the pull's
    content scan of the very same bytes) are not checked.
    """
    import torch

    linear_weights: set[int] | None = None  # found on the first 2-D parameter (none may need it)
    found: list[list[Finding]] = []  # per checked parameter, in named_parameters order
    # Small parameters that only need the NaN/Inf check (norms, biases), by (device, dtype): one elementwise
    # isfinite over all of them. A row with a NaN/Inf always has a non-finite sum, so when none of their
    # elements is NaN/Inf the per-parameter check finds nothing; otherwise each one is checked on its own.
    small: dict[tuple[Any, Any], list[tuple[int, str, torch.Tensor]]] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (
                name in skip
                or param.device.type == "meta"
                or not param.is_floating_point()
                or param.numel() == 0
            ):
                continue
            t = param.detach()
            if t.dim() == 2 and linear_weights is None:
                linear_weights = {
                    id(module.weight)
                    for module in model.modules()
                    if isinstance(module, torch.nn.Linear) and getattr(module, "weight", None) is not None
                }
            is_linear = t.dim() == 2 and linear_weights is not None and id(param) in linear_weights
            found.append([])
            if not is_linear and t.numel() <= _BATCH_ELEMENTS:
                small.setdefault((t.device, t.dtype), []).append((len(found) - 1, name, t))
            else:
                found[-1] = _parameter_findings(name, t, is_linear)
        for group in _chunks(small.values(), _ELEMENT_CHUNK):
            try:
                clean = bool(torch.isfinite(torch.cat([t.reshape(-1) for _, _, t in group])).all())
            except (RuntimeError, TypeError):  # a tensor subclass that does not concatenate
                clean = False
            if not clean:
                for position, name, t in group:
                    found[position] = _parameter_findings(name, t, False)
    return [f for findings in found for f in findings]


def _chunks(
    groups: Iterable[list[tuple[int, str, torch.Tensor]]], limit: int
) -> Iterator[list[tuple[int, str, torch.Tensor]]]:
    """Each group cut into runs of at most ``limit`` elements (bounds the concatenated temporary)."""
    for group in groups:
        run: list[tuple[int, str, torch.Tensor]] = []
        size = 0
        for item in group:
            n = item[2].numel()
            if run and size + n > limit:
                yield run
                run, size = [], 0
            run.append(item)
            size += n
        if run:
            yield run


def _parameter_findings(name: str, t: torch.Tensor, is_linear: bool) -> list[Finding]:
    """NaN/Inf in one parameter, and all-zero rows when it is a Linear weight."""
    import torch

    findings: list[Finding] = []
    rows = t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    sums = rows.sum(dim=1)  # NaN/Inf propagate; an all-zero row sums to exactly zero
    if not bool(torch.isfinite(sums).all()):
        findings += _nonfinite_findings(name, t, rows, (~torch.isfinite(sums)).nonzero().flatten())
    if is_linear:
        candidates = (sums == 0).nonzero().flatten()
        if candidates.numel():
            zero = _exactly_zero_rows(rows, candidates)
            if zero:
                findings.append(_zero_rows_finding(name, zero, rows.shape[0], rows.shape[1]))
    return findings


def _exactly_zero_rows(rows: torch.Tensor, candidates: torch.Tensor) -> list[int]:
    import torch

    zero: list[int] = []
    for start in range(0, candidates.numel(), _ROW_CHUNK):
        idx = candidates[start : start + _ROW_CHUNK]
        nonzero = torch.count_nonzero(rows.index_select(0, idx), dim=1)
        zero += idx[nonzero == 0].tolist()
    return zero


def _nonfinite_findings(
    name: str, t: torch.Tensor, rows: torch.Tensor, bad_rows: torch.Tensor
) -> list[Finding]:
    """Exact NaN/Inf counts over the rows a sum flagged (an fp16 sum can overflow without any Inf present)."""
    import torch

    width = rows.shape[1]
    step = max(1, _ELEMENT_CHUNK // max(width, 1))
    counts = {"nan": 0, "inf": 0}
    first: dict[str, list[int]] = {"nan": [], "inf": []}
    for start in range(0, bad_rows.numel(), step):
        idx = bad_rows[start : start + step]
        block = rows.index_select(0, idx)
        for kind, mask in (("nan", torch.isnan(block)), ("inf", torch.isinf(block))):
            hits = mask.nonzero()
            counts[kind] += int(hits.shape[0])
            room = _INDEX_LIMIT - len(first[kind])
            if room > 0 and hits.numel():
                first[kind] += (idx[hits[:room, 0]] * width + hits[:room, 1]).tolist()
    nan_count, inf_count = counts["nan"], counts["inf"]
    nan_at, inf_at = first["nan"], first["inf"]
    out: list[Finding] = []
    shape = list(t.shape)
    if nan_count:
        out.append(
            warn(
                "model.nan",
                f"{name} (shape {shape}) holds {_count(nan_count, 'NaN value')} (first at flat indexes {nan_at}); every "
                "forward pass through it produces NaN. The checkpoint is damaged: pull it again, and if the "
                "publisher's file has them, tell the publisher.",
                tensor=name,
                count=nan_count,
                first_indexes=nan_at,
                shape=shape,
            )
        )
    if inf_count:
        out.append(
            warn(
                "model.inf",
                f"{name} (shape {shape}) holds {_count(inf_count, 'infinite value')} (first at flat indexes {inf_at}); "
                "unless this parameter is a mask, outputs through it will overflow to Inf/NaN. Pull it again, and "
                "if the publisher's file has them, tell the publisher.",
                tensor=name,
                count=inf_count,
                first_indexes=inf_at,
                shape=shape,
            )
        )
    return out


def _zero_rows_finding(name: str, zero: list[int], n_rows: int, width: int) -> Finding:
    zero.sort()
    first = zero[:_INDEX_LIMIT]
    more = f", ... ({len(zero) - len(first)} more)" if len(zero) > len(first) else ""
    return warn(
        "model.zero_rows",
        f"{name} ({n_rows}x{width}): {len(zero)} of {n_rows} rows are all zero (rows "
        f"{', '.join(map(str, first))}{more}). {DORA_HAZARD}. Some checkpoints ship such rows on purpose "
        "(padding or reserved tokens); if this one should not, its file is damaged: pull again, or tell the "
        "publisher. Until then keep this module out of DoRA's target_modules.",
        tensor=name,
        count=len(zero),
        rows=n_rows,
        first_rows=first,
    )


# --------------------------------------------------------------------------------------------------------------
# Helpers for from_pretrained


def _is_model_class(cls: Any) -> bool:
    """True for transformers model classes (concrete or ``AutoModel*``), whose weights the checks concern."""
    if not isinstance(cls, type):
        return False
    from transformers import PreTrainedModel

    if issubclass(cls, PreTrainedModel):
        return True
    try:
        from transformers.models.auto.auto_factory import _BaseAutoModelClass
    except ImportError:
        return cls.__name__.startswith("AutoModel")
    return issubclass(cls, _BaseAutoModelClass)


def _default_ignore(model_class: bool, gguf_file: str | None) -> list[str]:
    """What a load of this kind of class never reads (see :data:`DEFAULT_IGNORE_PATTERNS`)."""
    patterns = [p for p in DEFAULT_IGNORE_PATTERNS if not (gguf_file and p == "*.gguf")]
    return patterns if model_class else patterns + list(WEIGHT_PATTERNS)


#: safetensors dtype names of the torch dtypes whose bytes a load can pass through unchanged.
_SAFETENSORS_DTYPE = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


#: (stored, loaded) dtype pairs whose cast cannot turn finite values into Inf/NaN nor a row with a normal
#: number into an all-zero row: widening casts, and fp32 -> bf16 (same exponent range; only values below
#: ~1e-40 can round to zero). Casts to fp16 are not here: |x| > 65504 overflows to Inf, |x| < 6e-8 to zero.
_PRESERVING_CASTS = {
    ("F32", "BF16"),
    ("BF16", "F32"),
    ("F16", "F32"),
    ("F16", "BF16"),
    ("F32", "F64"),
    ("BF16", "F64"),
    ("F16", "F64"),
}


def _scanned_by_pull(model: Any, loaded_from: Mapping[str, tuple[str, str]], report: PullReport) -> set[str]:
    """Parameters whose values the pull's content scan already judged (and whose findings were emitted).

    A parameter qualifies when transformers loaded it by a plain rename from a safetensors tensor (no fusing
    or splitting), in the stored dtype or through a cast in :data:`_PRESERVING_CASTS`, the scan covered that
    tensor (no ``tensor.unchecked``), and the scan's row check applies to its name. Everything else (casts to
    fp16, which can overflow to Inf; converted, initialised or tied-from-elsewhere tensors) is checked after
    load.
    """
    try:
        from vcache.checks.tensors import LEGIT_ZERO_NAME
    except ImportError:
        return set()
    unchecked = {
        f.tensor for fr in report.files for f in fr.findings if f.code == "tensor.unchecked" and f.tensor
    }
    scanned: set[str] = set()
    for name, param in model.named_parameters():
        source = loaded_from.get(name)
        if source is None or source[0] in unchecked or LEGIT_ZERO_NAME.search(name):
            continue
        loaded = _SAFETENSORS_DTYPE.get(str(param.dtype).removeprefix("torch."))
        if loaded == source[1] or (source[1], loaded) in _PRESERVING_CASTS:
            scanned.add(name)
    return scanned


def _is_torch_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _config_for(snapshot: Path, kwargs: Mapping[str, Any]) -> Any:
    """The config transformers will use: the one passed, or the snapshot's (from a path, if one is given)."""
    from transformers import AutoConfig, PretrainedConfig

    given = kwargs.get("config")
    if isinstance(given, PretrainedConfig):
        return given
    subfolder = str(kwargs.get("subfolder") or "")
    source = str(given) if given is not None else str(snapshot)
    return AutoConfig.from_pretrained(
        source,
        subfolder=subfolder if given is None else "",
        local_files_only=True,
        trust_remote_code=kwargs.get("trust_remote_code"),
    )


def _config_overrides(config: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments transformers would apply to the config (it sets any kwarg that names an attribute).

    Only integer and boolean attributes matter for which tensors a model has (layer counts, sizes, tying).
    """
    return {
        key: value
        for key, value in kwargs.items()
        if hasattr(config, key)
        and isinstance(value, (int, bool))
        and isinstance(getattr(config, key), (int, bool))
        and getattr(config, key) != value
    }


def _describe_source(repo_id: str, report: PullReport) -> str:
    return f"{repo_id}@{report.commit[:12]}" if report.commit else repo_id


def _with_file(finding: Finding, path: str) -> Finding:
    """The finding with its file named in the message (pull's findings are per file)."""
    if finding.message.startswith(path) or path in finding.message:
        return finding
    return Finding(
        finding.code, finding.severity, f"{path}: {finding.message}", finding.tensor, finding.detail
    )


def _with_detail(finding: Finding, **extra: Any) -> Finding:
    detail = {**(finding.detail or {}), **extra}
    message = finding.message
    names = extra.get("tensors")
    if names:
        more = f" and {extra['tensor_count'] - len(names)} more" if extra["tensor_count"] > len(names) else ""
        message += f" It holds {', '.join(names)}{more}."
    return Finding(finding.code, finding.severity, message, finding.tensor, detail)


def _kind(code: str) -> str:
    """``tensor.zero_rows`` and ``model.zero_rows`` are the same kind of finding."""
    return code.rsplit(".", 1)[-1]


def _blocks(finding: Finding, strict: bool) -> bool:
    return finding.severity is Severity.FAIL or (strict and finding.severity is Severity.WARN)


def _headline(findings: Sequence[Finding], strict: bool) -> str:
    fails = sum(f.severity is Severity.FAIL for f in findings)
    warns = len(findings) - fails
    parts = []
    if fails:
        parts.append(f"{fails} failing finding{'s' * (fails != 1)}")
    if warns:
        parts.append(f"{warns} warning{'s' * (warns != 1)} (strict=True)")
    return " and ".join(parts) + "."


def _advice(findings: Sequence[Finding], strict: bool) -> str:
    lines = []
    if any(f.code.startswith(("model.missing", "config.layer")) for f in findings):
        lines.append(
            "transformers itself would have loaded this checkpoint and initialised the missing weights at random."
        )
    if strict and any(f.severity is Severity.WARN for f in findings):
        lines.append("Pass strict=False to load with warnings instead.")
    return " ".join(lines)


def _format(findings: Iterable[Finding]) -> Iterator[str]:
    items = list(findings)
    for f in items[:_MESSAGE_LIMIT]:
        yield f"  - [{f.code}] {f.message}"
    if len(items) > _MESSAGE_LIMIT:
        yield f"  ... and {len(items) - _MESSAGE_LIMIT} more (see the exception's .findings)"


def _refusal(headline: str, findings: Sequence[Finding], advice: str, **context: Any) -> VerificationFailed:
    text = "\n".join([headline, *_format(findings)] + ([advice] if advice else []))
    return VerificationFailed(text, findings, **context)


def _pull_refusal(repo_id: str, where: str, report: PullReport) -> VerificationFailed:
    findings = [
        _with_file(f, fr.path) for fr in report.failed for f in fr.findings if f.severity is Severity.FAIL
    ]
    names = ", ".join(fr.path for fr in report.failed) or "none"
    lines = [f"vcache refused to load {where}: {len(report.failed)} file(s) failed verification ({names})."]
    lines += list(_format(findings))
    lines += [f"  - {e}" for e in report.errors]
    lines.append(
        "Nothing was loaded. Failing files were quarantined, not deleted. Damage in transit is cured by "
        "pulling again; if the same file fails again, the publisher's copy is bad."
    )
    return VerificationFailed("\n".join(lines), findings, repo_id=repo_id, report=report)


def _emit(findings: Iterable[Finding], where: str) -> None:
    """Warnings as :class:`VcacheWarning` and on the log; info on the log only."""
    for f in findings:
        if f.severity is Severity.WARN:
            text = f"{where}: [{f.code}] {f.message}"
            log.warning("%s", text)
            warnings.warn(VcacheWarning(text, f), stacklevel=3)
        elif f.severity is Severity.INFO:
            log.info("%s: [%s] %s", where, f.code, f.message)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ranges(indexes: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    runs: list[list[int]] = []
    for i in sorted(set(indexes)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
