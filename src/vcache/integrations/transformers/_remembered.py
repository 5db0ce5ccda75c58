"""Remembered verdicts: the completeness verdict of one verified load, kept in the repo's ledger folder.

What this module owns: :class:`_RememberedVerdict` (the record's key, where it lives, the state of every file
the check read, and when a record may answer instead of computing the verdict again), and
:func:`_runtime_registrations` (when a load cannot be keyed exactly and so is never remembered).

What it must never do: compute a verdict itself (that is ``_completeness``), answer when any file the verdict
read changed or its key differs, write anywhere but through the :class:`~vcache.ledger.Ledger`'s derived
records, import torch or transformers at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vcache.integrations.transformers._completeness import _Completeness
from vcache.report import PullReport

if TYPE_CHECKING:
    from vcache.ledger import EntryState, Ledger

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
        from vcache.ledger import EntryState, entry_state
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
                if entry_state(os.path.join(root, rel)) != EntryState.from_json(state):
                    return None
            return _Completeness(
                findings=list(findings_from_json(record["findings"])),
                loaded_from={str(k): (str(v[0]), str(v[1])) for k, v in record["loaded_from"].items()},
            )
        except (OSError, KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None

    def folder_state(self) -> dict[str, EntryState | None] | None:
        """Every name in the folder the check reads, with its entry_state, taken before the check runs."""
        from vcache.ledger import entry_state

        try:
            return {name: entry_state(self.base / name) for name in os.listdir(self.base)}
        except OSError:
            return None

    def remember(
        self, result: _Completeness, probed: Sequence[Path], before: Mapping[str, EntryState | None]
    ) -> None:
        """Write the record, if the verdict may be remembered and nothing it read changed while it ran."""
        from vcache.ledger import entry_state
        from vcache.report import findings_from_json

        if any(f.code == "model.completeness_skipped" for f in result.findings):
            return  # could not run (a missing optional package, say): try again next time
        deps: dict[str, EntryState | None] = {}
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
