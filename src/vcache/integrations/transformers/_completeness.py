"""Completeness: does the checkpoint hold every tensor the model expects, judged from headers alone.

What this module owns: :func:`check_model_completeness` and the ``model.*`` / ``config.layer_count_mismatch``
findings it makes (table in the package docstring): which weights file transformers would open, the
safetensors headers and index read as a :class:`_Checkpoint`, the model built on the meta device, and the
comparison of the two the way transformers matches keys (its renames and conversions, ``base_model_prefix``,
tied weights, keys it ignores), with whole missing or extra layers reported as one finding per layer stack.

What it must never do: read tensor data (headers and the index only), follow a shard name out of the
snapshot, build a model anywhere but on the meta device, remember or look up a verdict (``_remembered``),
import torch or transformers at import time.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcache.integrations.transformers._messages import _INDEX_LIMIT, _ranges, _with_detail
from vcache.report import Finding, Severity, fail, info, warn

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


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
    """The completeness verdict: its findings, and where each parameter loaded by a plain rename comes from."""

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
        try:
            config = AutoConfig.from_pretrained(
                str(base), local_files_only=True, trust_remote_code=trust_remote_code
            )
        except Exception as exc:  # an architecture transformers does not know, say
            result.findings.append(_config_unreadable(exc))
            return result
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


def _config_unreadable(exc: Exception) -> Finding:
    """The check cannot run because transformers cannot read the config (its error, first line, is named)."""
    said = (str(exc).strip().splitlines() or [""])[0]
    return _skipped(f"transformers cannot read the config ({type(exc).__name__}: {said or 'no message'})")


def _add_variant(name: str, variant: str | None) -> str:
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _natural_key(key: str) -> list[Any]:
    """Sort ``layers.10`` after ``layers.9``."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]
