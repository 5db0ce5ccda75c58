"""Sharded-checkpoint index and config coherence checks.

This module owns the repo-level verdict on a sharded safetensors checkpoint: that
``model.safetensors.index.json`` is strict JSON of the shape transformers needs, that it points only at bare
shard names in its own folder, that every listed shard is present and structurally valid, and that the index
and the shards' headers agree tensor by tensor (``docs/safetensors.md`` §3.4). It also checks that the
number of layers in the weights matches the config. It reads the index and, for shards whose headers the
caller did not pass, their headers (through :func:`vcache.checks.safetensors.read_header`); it never reads
tensor data, never follows a shard name out of the index's folder, never fixes or moves a file, and never
raises on bad input: every problem is a :class:`~vcache.report.Finding`. Findings about a shard's own
structure belong to that shard's file report; here a broken shard appears once, as ``index.invalid_shard``.

Finding codes (each message names the index, the shard file and the tensor concerned):

=================================  ====  ==================================================================
``index.unreadable``               fail  the index file is missing, unreadable or larger than 256 MiB
``index.invalid_json``             fail  not UTF-8, not JSON (NaN/Infinity included), or not an object
``index.duplicate_key``            fail  a key twice anywhere in the index (Python silently keeps the last)
``index.missing_weight_map``       fail  ``weight_map`` absent or empty
``index.invalid_weight_map``       fail  ``weight_map`` not an object of strings
``index.missing_metadata``         fail  ``metadata`` absent or not an object (transformers needs it)
``index.unsafe_shard_name``        fail  a shard name that is not a bare ``*.safetensors`` file name
``index.missing_shard``            fail  a listed shard is not in the folder
``index.shard_not_fetched``        info  a listed shard is absent because this pull could not fetch it
``index.invalid_shard``            fail  a listed shard failed the structural check
``index.tensor_missing``           fail  a tensor listed for shard S is not in S's header
``index.tensor_in_multiple_shards``  fail  one tensor name in several shards' headers
``index.unlisted_tensor``          warn  a shard holds a tensor the index does not list there
``index.invalid_total_size``       warn  ``metadata.total_size`` is not a non-negative number
``index.total_size_mismatch``      warn  ``total_size`` differs from the shards' tensor bytes
``index.total_parameters_mismatch``  warn  ``total_parameters`` differs from the shards' element count
``index.shard_count``              warn  ``-of-N`` disagrees with the shards listed, or numbers have gaps
``index.stale_shard``              warn  a shard-named ``*.safetensors`` file no index in the folder lists
``index.both_single_and_index``    warn  ``model.safetensors`` sits next to its index
``config.layer_count_mismatch``    fail  the weights hold a different set of layers than the config says
=================================  ====  ==================================================================

``index.internal_error`` (fail) is the guard that keeps a bug in this module from raising; it should never
appear.

A stale shard is an unreferenced file named like a shard (``…-00002-of-00004.safetensors``); other
unreferenced ``.safetensors`` files (variants such as ``model.fp16.safetensors``, other components) are
standalone checkpoints and are not reported.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path, PureWindowsPath
from typing import Any, Final

from vcache.checks.safetensors import SafetensorsHeader, read_header
from vcache.report import Finding, Severity, fail, info, warn

__all__ = ["INDEX_NAME", "check_config_coherence", "check_index"]

#: The standard index file name (variants insert a tag: ``model.fp16.safetensors.index.json``).
INDEX_NAME: Final = "model.safetensors.index.json"
#: Larger index files are refused unread (a 1.3M-tensor model's index is about 80 MB).
MAX_INDEX_BYTES: Final = 256 * 1024 * 1024

_INDEX_SUFFIX: Final = ".index.json"
_SHARD_RE: Final = re.compile(r"^(?P<prefix>.*?)[-_](?P<i>\d{1,9})-of-(?P<n>\d{1,9})\.safetensors$")
# Layer-stack naming: "model.layers.12.", "transformer.h.3.", "backbone.blocks.0." (first occurrence wins).
_LAYER_RE: Final = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d{1,9})(?:\.|$)")
_LAYER_KEYS: Final = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# How many tensor names one aggregated finding lists in its detail.
_LIST_LIMIT: Final = 20


class _JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers the keys it saw more than once (Python keeps the last)."""

    duplicates: dict[str, list[Any]]


def _object_hook(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    obj.duplicates = {}
    if len(obj) != len(pairs):
        seen: dict[str, list[Any]] = {}
        for key, value in pairs:
            seen.setdefault(key, []).append(value)
        obj.duplicates = {k: v for k, v in seen.items() if len(v) > 1}
    return obj


def _reject_constant(token: str) -> Any:
    raise ValueError(f"'{token}' is not JSON")


def check_index(
    folder: Path,
    index_name: str = INDEX_NAME,
    *,
    headers: Mapping[str, SafetensorsHeader | None] | None = None,
    config: Mapping[str, Any] | None = None,
    not_fetched: Collection[str] = (),
) -> list[Finding]:
    """Check the sharded index ``folder/index_name`` against its shards (and ``config`` when given).

    ``headers`` maps shard file names (as written in the weight map) to headers the caller already parsed,
    ``None`` meaning the shard failed its structural check; shards missing from it are read with
    :func:`~vcache.checks.safetensors.read_header`. ``config`` is the parsed ``config.json``; when given,
    :func:`check_config_coherence` runs on every tensor the index and the shards name. ``not_fetched`` names
    shards the caller could not download: when absent, they are noted (``index.shard_not_fetched``, info),
    not failed, since the transfer error is the caller's to report. Never raises.
    """
    return _IndexCheck(Path(folder), index_name, headers or {}, not_fetched).run(config)


def check_config_coherence(config: Mapping[str, Any], tensor_names: Iterable[str]) -> list[Finding]:
    """Check that the weights hold exactly the layers the config declares.

    Applies when the config has ``num_hidden_layers`` (or ``n_layer``, ``num_layers``, ``n_layers``) as a
    positive integer and tensor names follow ``layers.<i>.`` / ``h.<i>.`` / ``blocks.<i>.`` naming. Names are
    grouped by the prefix before that part (``model.layers.``, ``visual.blocks.``, ``model.decoder.layers.``),
    and the check passes when any group holds exactly layers 0 … N-1, or 0 … N+M-1 where M is the config's
    ``num_nextn_predict_layers`` (multi-token-prediction layers stored after the main stack, as in
    DeepSeek-V3). Otherwise ``config.layer_count_mismatch`` (fail) names the missing and unexpected layer
    indices of the largest group. Nested configs (``text_config`` …) are not searched. Never raises.
    """
    found = _layer_count(config) if isinstance(config, Mapping) else None
    if found is None:
        return []
    key, expected = found
    mtp = config.get("num_nextn_predict_layers")
    extra = mtp if type(mtp) is int and 0 < mtp < 1_000 else 0
    groups: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    for name in tensor_names:
        m = _LAYER_RE.search(name) if isinstance(name, str) else None
        if m:
            prefix = name[: m.start(1)]
            groups.setdefault(prefix, set()).add(int(m.group(1)))
            sizes[prefix] = sizes.get(prefix, 0) + 1
    if not groups:
        return []
    wanted = set(range(expected))
    if any(have == wanted or (extra and have == set(range(expected + extra))) for have in groups.values()):
        return []
    main = max(groups, key=lambda p: (sizes[p], p))
    have = groups[main]
    missing = sorted(wanted - have)
    unexpected = sorted(i for i in have if i >= expected + extra)
    parts = []
    if missing:
        parts.append(f"missing layers {_ranges(missing)}")
    if unexpected:
        parts.append(f"unexpected layers {_ranges(unexpected)}")
    return [
        fail(
            "config.layer_count_mismatch",
            f"the config says {key}={expected} but the weights hold {len(have)} layers under {main!r} "
            f"({_ranges(sorted(have))}): {'; '.join(parts)}. The download is incomplete or the config belongs "
            "to a different model; re-download the weights and config.json.",
            tensor=f"{main}{missing[0] if missing else unexpected[0]}",
            key=key,
            expected=expected,
            found=len(have),
            missing=missing[: _LIST_LIMIT * 10],
            unexpected=unexpected[: _LIST_LIMIT * 10],
        )
    ]


def _layer_count(config: Mapping[str, Any]) -> tuple[str, int] | None:
    for key in _LAYER_KEYS:
        value = config.get(key)
        if type(value) is int and 0 < value < 100_000:
            return key, value
    return None


def _ranges(values: list[int]) -> str:
    """Sorted integers as compact ranges: ``0–41, 45, 50–77`` (long lists shortened)."""
    runs: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else f"{start}–{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(runs) if len(runs) <= 12 else ", ".join(runs[:12]) + f", … ({len(runs) - 12} more runs)"


def _unsafe_reason(shard: str) -> str | None:
    """Why a weight-map value is not a safe bare shard file name, or None when it is."""
    if not shard:
        return "it is empty"
    if "\0" in shard:
        return "it contains a NUL byte"
    if "/" in shard or "\\" in shard:
        return "it contains a path separator (shards are bare names in the index's folder)"
    if PureWindowsPath(shard).drive:
        return "it has a drive prefix"
    if shard in (".", ".."):
        return "it names a directory"
    if not shard.endswith(".safetensors"):
        return "it does not end in .safetensors"
    return None


def _n(count: int, noun: str) -> str:
    """``1 tensor``, ``3 tensors``."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n[:200]) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


class _IndexCheck:
    """One run of the index checks; holds what the steps share."""

    def __init__(
        self,
        folder: Path,
        index_name: str,
        headers: Mapping[str, SafetensorsHeader | None],
        not_fetched: Collection[str] = (),
    ) -> None:
        self.folder = folder
        self.index_name = index_name
        self.given = headers
        self.not_fetched = frozenset(not_fetched)
        self.findings: list[Finding] = []

    def _fail(self, code: str, message: str, *, tensor: str | None = None, **detail: Any) -> None:
        self.findings.append(fail(code, f"{self.index_name}: {message}", tensor=tensor, **detail))

    def _warn(self, code: str, message: str, *, tensor: str | None = None, **detail: Any) -> None:
        self.findings.append(warn(code, f"{self.index_name}: {message}", tensor=tensor, **detail))

    def run(self, config: Mapping[str, Any] | None) -> list[Finding]:
        try:
            self._run(config)
        except Exception as exc:  # a bug here must become a finding, never an exception in the caller
            self._fail(
                "index.internal_error",
                f"the index check itself failed ({type(exc).__name__}: {exc}); this is a vcache bug, please "
                "report it. The index was not verified.",
            )
        return self.findings

    def _run(self, config: Mapping[str, Any] | None) -> None:
        index = self._load()
        if index is None:
            return
        self._report_duplicates(index)
        metadata = index.get("metadata")
        if "metadata" not in index:
            self._fail(
                "index.missing_metadata",
                "has no 'metadata' object; transformers requires it (KeyError: 'metadata' on load). "
                "Re-download the index.",
            )
        elif not isinstance(metadata, dict):
            self._fail(
                "index.missing_metadata",
                f"'metadata' is {_json_type(metadata)}, not an object; transformers cannot load the "
                "checkpoint. Re-download the index.",
            )
            metadata = None
        weight_map = self._weight_map(index)
        if weight_map is None:
            return
        listed: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            listed.setdefault(shard, []).append(tensor)
        safe = self._safe_shards(listed)
        headers = self._headers(safe, listed)
        self._tensors(weight_map, listed, headers)
        if metadata is not None and len(headers) == len(listed):
            self._totals(metadata, headers)
        self._shard_numbering(safe)
        self._folder_files(set(listed))
        if config is not None:
            names = set(weight_map)
            for hdr in headers.values():
                names.update(t.name for t in hdr.tensors)
            self.findings.extend(check_config_coherence(config, sorted(names)))

    # ---- the index file ------------------------------------------------------------------------------

    def _load(self) -> _JsonObject | None:
        path = self.folder / self.index_name
        try:
            size = os.stat(path).st_size
            if size > MAX_INDEX_BYTES:
                self._fail(
                    "index.unreadable",
                    f"is {size:,} bytes, over the {MAX_INDEX_BYTES:,}-byte limit for an index; it is not an "
                    "index file. Re-download it.",
                )
                return None
            raw = path.read_bytes()
        except OSError as exc:
            self._fail(
                "index.unreadable",
                f"cannot be read ({exc.strerror or exc}); the checkpoint's shards cannot be located. "
                "Re-download it.",
            )
            return None
        try:
            text = raw.decode("utf-8")
            index = json.loads(text, object_pairs_hook=_object_hook, parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            self._fail(
                "index.invalid_json",
                f"is not UTF-8 (byte {exc.start}); it is not an index file (an HTML page or a git-LFS pointer "
                "saved in its place?). Re-download it.",
            )
            return None
        except (ValueError, RecursionError) as exc:
            self._fail(
                "index.invalid_json",
                f"is not valid JSON ({exc}); it is truncated or not an index file. Re-download it.",
            )
            return None
        if not isinstance(index, _JsonObject):
            self._fail(
                "index.invalid_json",
                f"is {_json_type(index)}, not a JSON object; it is not an index file. Re-download it.",
            )
            return None
        return index

    def _report_duplicates(self, index: _JsonObject) -> None:
        weight_map = index.get("weight_map")
        stack: list[tuple[str, Any]] = [("", index)]
        while stack:
            where, obj = stack.pop()
            if isinstance(obj, _JsonObject):
                for key, values in obj.duplicates.items():
                    if obj is weight_map:
                        shards = ", ".join(repr(v) if isinstance(v, str) else _json_type(v) for v in values)
                        self._fail(
                            "index.duplicate_key",
                            f"lists tensor {key[:200]!r} {len(values)} times in weight_map ({shards}); Python's "
                            "json keeps the last silently, so loaders may look in the wrong shard. The index is "
                            "malformed; re-download it.",
                            tensor=key,
                            shards=[v for v in values if isinstance(v, str)],
                        )
                    else:
                        self._fail(
                            "index.duplicate_key",
                            f"has the key {where + key!r} {len(values)} times; Python's json keeps the last "
                            "silently. The index is malformed; re-download it.",
                            key=where + key,
                        )
                stack.extend((f"{where}{k}.", v) for k, v in obj.items() if isinstance(v, (dict, list)))
            elif isinstance(obj, list):
                stack.extend((where, v) for v in obj if isinstance(v, (dict, list)))

    def _weight_map(self, index: _JsonObject) -> dict[str, str] | None:
        weight_map = index.get("weight_map")
        if weight_map is None and "weight_map" not in index:
            self._fail(
                "index.missing_weight_map",
                "has no 'weight_map', so no tensor can be located; it is not a sharded index. "
                "Re-download it.",
            )
            return None
        if not isinstance(weight_map, dict):
            self._fail(
                "index.invalid_weight_map",
                f"'weight_map' is {_json_type(weight_map)}, not an object mapping tensor names to shard "
                "files. Re-download the index.",
            )
            return None
        bad = [k for k, v in weight_map.items() if not isinstance(v, str)]
        if bad:
            self._fail(
                "index.invalid_weight_map",
                f"'weight_map' maps {_n(len(bad), 'tensor')} to something other than a file name (first: "
                f"{bad[0][:200]!r} -> {_json_type(weight_map[bad[0]])}). Re-download the index.",
                tensor=bad[0],
                count=len(bad),
            )
            return None
        if not weight_map:
            self._fail(
                "index.missing_weight_map",
                "'weight_map' is empty: the index lists no tensors, so a loader would initialise the whole "
                "model randomly. Re-download it.",
            )
            return None
        return dict(weight_map)

    # ---- shards --------------------------------------------------------------------------------------

    def _safe_shards(self, listed: Mapping[str, list[str]]) -> list[str]:
        safe = []
        for shard, tensors in sorted(listed.items()):
            reason = _unsafe_reason(shard)
            if reason is None:
                safe.append(shard)
                continue
            self._fail(
                "index.unsafe_shard_name",
                f"weight_map points {_n(len(tensors), 'tensor')} ({_names(tensors)}) at {shard[:200]!r}, which is not "
                f"a safe shard name: {reason}. vcache will not follow it; the index is broken or malicious.",
                tensor=tensors[0],
                shard=shard,
                reason=reason,
            )
        return safe

    def _headers(self, safe: list[str], listed: Mapping[str, list[str]]) -> dict[str, SafetensorsHeader]:
        """Headers of the safe shards that are present and valid; the others become findings."""
        out: dict[str, SafetensorsHeader] = {}
        for shard in safe:
            tensors = listed[shard]
            if shard in self.given:
                hdr, codes, first = self.given[shard], [], ""  # its findings are on its own report
            else:
                path = self.folder / shard
                if not path.exists() and shard in self.not_fetched:
                    self.findings.append(
                        info(
                            "index.shard_not_fetched",
                            f"{self.index_name}: {shard} (listed for {_n(len(tensors), 'tensor')}) could not be "
                            "fetched, so the index was checked without it; the error for that file says why. "
                            "Run `vcache pull` again to fetch it.",
                            tensor=tensors[0],
                            shard=shard,
                            count=len(tensors),
                        )
                    )
                    continue
                if not path.exists():
                    self._fail(
                        "index.missing_shard",
                        f"lists {shard} for {_n(len(tensors), 'tensor')} ({_names(tensors)}) but it is not in the "
                        "folder: the download is incomplete. Re-download it.",
                        tensor=tensors[0],
                        shard=shard,
                        count=len(tensors),
                    )
                    continue
                hdr, shard_findings = read_header(path)
                failed = [f for f in shard_findings if f.severity is Severity.FAIL]
                codes = [f.code for f in failed]
                first = failed[0].message.removeprefix(f"{shard}: ") if failed else ""
            if hdr is None:
                why = (
                    f": {first}"
                    if first
                    else ": it failed its structural check (reported on the shard itself)."
                )
                self._fail(
                    "index.invalid_shard",
                    f"shard {shard}, which holds {_n(len(tensors), 'listed tensor')} ({_names(tensors)}), is "
                    f"broken, so the checkpoint cannot load{why}"
                    + ("" if first else " Re-download the shard."),
                    tensor=tensors[0],
                    shard=shard,
                    codes=codes,
                )
                continue
            out[shard] = hdr
        return out

    def _tensors(
        self,
        weight_map: Mapping[str, str],
        listed: Mapping[str, list[str]],
        headers: Mapping[str, SafetensorsHeader],
    ) -> None:
        located: dict[str, list[str]] = {}
        for shard, hdr in headers.items():
            names = hdr.by_name
            for t in hdr.tensors:
                located.setdefault(t.name, []).append(shard)
            absent = [t for t in listed[shard] if t not in names]
            if absent:
                self._fail(
                    "index.tensor_missing",
                    f"lists {_n(len(absent), 'tensor')} for {shard} that its header does not contain "
                    f"({_names(absent)}); loaders would report them missing and initialise them randomly. The "
                    "shard and the index are from different revisions; re-download both.",
                    tensor=absent[0],
                    shard=shard,
                    count=len(absent),
                    tensors=absent[:_LIST_LIMIT],
                )
            unlisted = [t.name for t in hdr.tensors if t.name not in weight_map]
            elsewhere = [t.name for t in hdr.tensors if weight_map.get(t.name, shard) != shard]
            if unlisted:
                self._warn(
                    "index.unlisted_tensor",
                    f"{shard} holds {_n(len(unlisted), 'tensor')} that weight_map does not list ({_names(unlisted)}); "
                    "transformers loads them anyway, other loaders ignore them.",
                    tensor=unlisted[0],
                    shard=shard,
                    count=len(unlisted),
                    tensors=unlisted[:_LIST_LIMIT],
                )
            if elsewhere:
                self._warn(
                    "index.unlisted_tensor",
                    f"{shard} holds {_n(len(elsewhere), 'tensor')} that weight_map assigns to another shard "
                    f"({_names(elsewhere)}, listed for {weight_map[elsewhere[0]]}); loaders disagree on which "
                    "copy they use.",
                    tensor=elsewhere[0],
                    shard=shard,
                    count=len(elsewhere),
                    tensors=elsewhere[:_LIST_LIMIT],
                )
        multiple = {name: shards for name, shards in located.items() if len(shards) > 1}
        if multiple:
            first, shards = next(iter(multiple.items()))
            self._fail(
                "index.tensor_in_multiple_shards",
                f"{_n(len(multiple), 'tensor')} stored in more than one shard (first: {first[:200]!r} in "
                f"{', '.join(shards)}); transformers silently takes the copy from the last shard in name "
                "order, other loaders differ. The checkpoint is inconsistent; re-download it.",
                tensor=first,
                shards=shards,
                count=len(multiple),
                tensors=list(multiple)[:_LIST_LIMIT],
            )

    def _totals(self, metadata: Mapping[str, Any], headers: Mapping[str, SafetensorsHeader]) -> None:
        """total_size and total_parameters against the shards (only when every shard was read)."""
        unique: dict[str, tuple[int, int, bool]] = {}
        for hdr in headers.values():
            for t in hdr.tensors:
                unique.setdefault(t.name, (t.nbytes, t.numel, t.dtype == "BOOL"))
        tensor_bytes = sum(b for b, _, _ in unique.values())
        file_bytes = sum(h.file_size for h in headers.values())
        if "total_size" in metadata:
            total = metadata["total_size"]
            if isinstance(total, bool) or not isinstance(total, (int, float)) or not total >= 0:
                self._warn(
                    "index.invalid_total_size",
                    f"metadata.total_size is {_json_type(total)} {total!r:.40}, not a non-negative number. "
                    "Nothing in transformers reads it; the index was hand-made or damaged.",
                )
            else:
                # Old transformers (shard_checkpoint) counted a bool as 1/8 byte: legitimate, not reported.
                old_rule = sum(b / 8 if is_bool else b for b, _, is_bool in unique.values())
                if total != tensor_bytes and not math.isclose(total, old_rule):
                    delta = total - tensor_bytes
                    why = (
                        ": it equals the shards' total file size, so the writer counted whole files"
                        if total == file_bytes
                        else ""
                    )
                    self._warn(
                        "index.total_size_mismatch",
                        f"metadata.total_size is {total:,} but the shards' tensors hold {tensor_bytes:,} bytes "
                        f"(delta {delta:+,}){why}. It is informational (transformers does not read it); views "
                        "into larger storages, quantizers and merge tools also cause this.",
                        total_size=total,
                        tensor_bytes=tensor_bytes,
                        delta=delta,
                        file_bytes=file_bytes,
                        equals_file_sizes=total == file_bytes,
                    )
        params = metadata.get("total_parameters")
        if type(params) is int:
            numel = sum(n for _, n, _ in unique.values())
            if params != numel:
                self._warn(
                    "index.total_parameters_mismatch",
                    f"metadata.total_parameters is {params:,} but the shards hold {numel:,} elements (delta "
                    f"{params - numel:+,}). Tied weights, buffers and quantization can explain a difference; "
                    "a large one suggests the index belongs to another model.",
                    total_parameters=params,
                    elements=numel,
                )

    def _shard_numbering(self, shards: list[str]) -> None:
        parsed = [m for m in map(_SHARD_RE.match, shards) if m]
        if not parsed:
            return
        counts = {int(m["n"]) for m in parsed}
        numbers = {int(m["i"]) for m in parsed}
        if len(counts) > 1:
            self._warn(
                "index.shard_count",
                f"shard names disagree on the shard count ({', '.join(f'of-{n}' for n in sorted(counts))}); "
                "the index mixes shards from different revisions.",
                counts=sorted(counts),
            )
            return
        (n,) = counts
        missing = sorted(set(range(1, n + 1)) - numbers) if n < 100_000 else []
        extra = sorted(i for i in numbers if not 1 <= i <= n)
        if len(shards) == n and not missing and not extra:
            return
        parts = [f"the names say {n} shards but the index lists {len(shards)}"]
        if missing:
            parts.append(f"numbers {_ranges(missing)} are never referenced")
        if extra:
            parts.append(f"numbers {_ranges(extra)} are out of range")
        self._warn(
            "index.shard_count",
            "; ".join(parts) + ". Tensors of the unreferenced shards may be missing from the index.",
            expected=n,
            listed=len(shards),
            missing=missing[:_LIST_LIMIT],
        )

    def _folder_files(self, referenced: set[str]) -> None:
        """Stale shards and a single-file checkpoint beside its index."""
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return
        indexes = [n for n in names if n.endswith(".safetensors" + _INDEX_SUFFIX)]
        known = set(referenced)
        for other in indexes:
            known.add(other[: -len(_INDEX_SUFFIX)])  # a single file beside any index is that index's business
            if other != self.index_name:
                known.update(_lenient_shards(self.folder / other))
        single = self.index_name[: -len(_INDEX_SUFFIX)] if self.index_name.endswith(_INDEX_SUFFIX) else None
        if single and single in names and single not in referenced:
            self._warn(
                "index.both_single_and_index",
                f"{single} sits beside the index: transformers loads {single}, huggingface_hub's "
                "load_torch_model loads the shards, so they may load different weights. Remove the one that "
                "is not current.",
                shard=single,
            )
        stale = [n for n in names if n.endswith(".safetensors") and n not in known and _SHARD_RE.match(n)]
        for name in stale:
            self._warn(
                "index.stale_shard",
                f"{name} is in the folder but no index references it: a leftover from another revision? "
                "Loaders ignore it; it only takes space.",
                shard=name,
            )


def _lenient_shards(path: Path) -> set[str]:
    """The shard names another index in the folder references (best effort: that index is checked on its own)."""
    try:
        if path.stat().st_size > MAX_INDEX_BYTES:
            return set()
        data = json.loads(path.read_bytes())
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if isinstance(weight_map, dict):
            return {v for v in weight_map.values() if isinstance(v, str)}
    except (OSError, ValueError, RecursionError):
        pass
    return set()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return "an array"
