"""vcache: verified, resumable downloads from the Hugging Face Hub into a standard HF cache.

The public API is re-exported here; :func:`use` registers a reader of the cache so that ``vcache gc`` and
``vcache rm`` leave what it reads alone. Importing vcache never imports torch or transformers: the
transformers integration is loaded on first use of :func:`from_pretrained` / :func:`load_model`.
"""

from __future__ import annotations

import importlib as _importlib
import logging as _logging
import sys as _sys
import types as _types
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from vcache._version import __version__

if _TYPE_CHECKING:
    from vcache.api import verify
    from vcache.errors import (
        AuthError,
        BadBundle,
        CacheNotWritable,
        DiskFull,
        EntryNotFound,
        GatedRepo,
        HubError,
        IncompleteSnapshot,
        IntegrityError,
        InvalidRepoId,
        LockTimeout,
        OfflineError,
        RateLimited,
        RemoteChanged,
        RepoNotFound,
        RetriesExhausted,
        RevisionNotFound,
        TransferError,
        UnsafePath,
        UsageError,
        VcacheError,
        VerificationFailed,
    )
    from vcache.hashing import Digest
    from vcache.pull import Progress, hf_hub_download, pull, snapshot_download
    from vcache.report import FileReport, Finding, PullReport, Severity, Verdict
    from vcache.usage import use

# The public API is imported on first use of a name (PEP 562), so that ``vcache --version`` or a pull's first
# request does not wait for modules it does not need yet. Name -> the module that owns it.
_LAZY = {
    **dict.fromkeys(
        [
            "AuthError",
            "BadBundle",
            "CacheNotWritable",
            "DiskFull",
            "EntryNotFound",
            "GatedRepo",
            "HubError",
            "IncompleteSnapshot",
            "IntegrityError",
            "InvalidRepoId",
            "LockTimeout",
            "OfflineError",
            "RateLimited",
            "RemoteChanged",
            "RepoNotFound",
            "RetriesExhausted",
            "RevisionNotFound",
            "TransferError",
            "UnsafePath",
            "UsageError",
            "VcacheError",
            "VerificationFailed",
        ],
        "vcache.errors",
    ),
    "Digest": "vcache.hashing",
    "verify": "vcache.api",
    **dict.fromkeys(["Progress", "hf_hub_download", "pull", "snapshot_download"], "vcache.pull"),
    **dict.fromkeys(["FileReport", "Finding", "PullReport", "Severity", "Verdict"], "vcache.report"),
    "use": "vcache.usage",
}


def __getattr__(name: str) -> _Any:
    owner = _LAZY.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(owner), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(_types.ModuleType):
    """``vcache.pull`` and ``vcache.verify`` stay the functions once their submodules are imported."""

    def __setattr__(self, name: str, value: _Any) -> None:
        if name in ("pull", "verify") and isinstance(value, _types.ModuleType):
            return  # the import system binding the submodule: the function keeps the name (see __getattr__)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

# A library never configures logging; the application decides where vcache's records go.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())


def from_pretrained(cls: _Any, repo_id: str, **kwargs: _Any) -> _Any:
    """Pull and verify ``repo_id``, then ``cls.from_pretrained`` the verified snapshot (see integrations)."""
    from vcache.integrations.transformers import from_pretrained as impl

    return impl(cls, repo_id, **kwargs)


def load_model(repo_id: str, **kwargs: _Any) -> _Any:
    """Short form of :func:`from_pretrained` with ``AutoModelForCausalLM``."""
    from vcache.integrations.transformers import load_model as impl

    return impl(repo_id, **kwargs)


__all__ = [
    "AuthError",
    "BadBundle",
    "CacheNotWritable",
    "Digest",
    "DiskFull",
    "EntryNotFound",
    "FileReport",
    "Finding",
    "GatedRepo",
    "HubError",
    "IncompleteSnapshot",
    "IntegrityError",
    "InvalidRepoId",
    "LockTimeout",
    "OfflineError",
    "Progress",
    "PullReport",
    "RateLimited",
    "RemoteChanged",
    "RepoNotFound",
    "RetriesExhausted",
    "RevisionNotFound",
    "Severity",
    "TransferError",
    "UnsafePath",
    "UsageError",
    "VcacheError",
    "Verdict",
    "VerificationFailed",
    "__version__",
    "from_pretrained",
    "hf_hub_download",
    "load_model",
    "pull",
    "snapshot_download",
    "use",
    "verify",
]
