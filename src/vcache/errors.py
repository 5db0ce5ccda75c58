"""The errors vcache raises.

One root, :class:`VcacheError`. Each branch also subclasses the builtin it means, so a caller's
existing ``except OSError`` / ``except ValueError`` / ``except TimeoutError`` still catches it; the errors
``vcache.snapshot_download`` / ``vcache.hf_hub_download`` share with huggingface_hub's functions are also
huggingface_hub's class for that case (in brackets), so code written for those keeps catching them::

    VcacheError
    ├── UsageError(ValueError)             bad arguments (CLI exit 2)
    ├── HubError(OSError)                  the Hub answered, and the answer is "no" (CLI exit 3)
    │   ├── RepoNotFound                   [RepositoryNotFoundError]
    │   ├── RevisionNotFound               [RevisionNotFoundError]
    │   ├── EntryNotFound                  [RemoteEntryNotFoundError, an EntryNotFoundError]
    │   ├── GatedRepo                      [GatedRepoError, a RepositoryNotFoundError as in huggingface_hub]
    │   ├── AuthError                      401/403 that is not one of the above
    │   ├── RateLimited                    429 after the retry budget was spent
    │   └── OfflineError                   HF_HUB_OFFLINE is set and the cache cannot answer
    │                                      [LocalEntryNotFoundError, a FileNotFoundError]
    ├── TransferError(OSError)             bytes could not be moved (CLI exit 3)
    │   ├── RetriesExhausted               every attempt failed; ``.reason`` is the last cause
    │   ├── RemoteChanged                  the remote file changed under a resume (etag/size)
    │   ├── DiskFull                       ENOSPC / EDQUOT / RLIMIT_FSIZE, or the free-space pre-check
    │   └── CacheNotWritable               read-only cache or permission denied
    ├── IntegrityError(ValueError)         bytes arrived, but they are not the publisher's (CLI exit 1)
    │   ├── VerificationFailed             a file failed its checks; carries the findings
    │   └── BadBundle                      a bundle is truncated, altered, or holds unsafe names or links;
    │                                      nothing of it was published (``vcache import``)
    ├── UnsafePath(ValueError)             a server-supplied path would escape the cache
    ├── LockTimeout(TimeoutError)          a bounded wait for a lock or lease ran out
    └── IncompleteSnapshot(OSError)        offline and the cache does not hold the whole snapshot
                                           [IncompleteSnapshotError, a LocalEntryNotFoundError]

Every error carries context where it has any (``repo_id``, ``path``, ``url``, ``status``) and its
message says what happened, to which file, and what to do next. Tokens never appear in messages.
The huggingface_hub HTTP errors' own attributes (``response``, ``request_id``, ``server_message``) are
``None``: vcache raises them without an HTTP response at hand.

Warnings are not errors: :class:`VcacheWarning` (a ``UserWarning``) is what the verified
``from_pretrained`` issues for a warning finding it loads anyway; ``finding`` is the finding behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# Cheap: it needs only httpx2, which vcache's Hub client imports anyway.
from huggingface_hub import errors as _hf

if TYPE_CHECKING:
    from vcache.report import Finding


class VcacheError(Exception):
    """Root of every error vcache raises."""

    def __init__(self, message: str, **context: Any) -> None:
        # Not super().__init__: huggingface_hub's HTTP errors, which some subclasses also are, demand a
        # response object there. The builtin bases (OSError, ValueError, ...) need nothing beyond this.
        Exception.__init__(self, message)
        self.message = message
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class UsageError(VcacheError, ValueError):
    """The caller asked for something that cannot be done as asked."""


class HubError(VcacheError, OSError):
    """The Hub (or mirror) refused a request in a way that retrying will not fix."""

    # huggingface_hub's HfHubHTTPError attributes, for the subclasses that are also one (see the tree).
    response: Any = None
    request_id: str | None = None
    server_message: str | None = None
    _request: Any = None  # behind httpx2.HTTPError.request, which raises while it is None

    def __init__(self, message: str, **context: Any) -> None:
        VcacheError.__init__(self, message, **context)

    def append_to_message(self, additional_message: str) -> None:
        """What huggingface_hub's ``HfHubHTTPError.append_to_message`` does, kept in ``message`` too."""
        self.message += additional_message
        self.args = (self.message, *self.args[1:])

    def __reduce_ex__(self, protocol: Any) -> Any:
        # HfHubHTTPError's own rebuilds the error from its response and drops vcache's context.
        return Exception.__reduce_ex__(self, protocol)


class RepoNotFound(HubError, _hf.RepositoryNotFoundError):
    """The repository does not exist, is private, or the token cannot see it."""


class RevisionNotFound(HubError, _hf.RevisionNotFoundError):
    """The revision (branch, tag, commit, ``refs/pr/N``) does not exist."""


class EntryNotFound(HubError, _hf.RemoteEntryNotFoundError):
    """The file does not exist at that revision."""


class GatedRepo(HubError, _hf.GatedRepoError):
    """The repository is gated and the token has not been granted access."""


class AuthError(HubError):
    """The server rejected the credentials."""


class RateLimited(HubError):
    """The server kept answering 429 after the retry budget was spent."""


class OfflineError(HubError, _hf.LocalEntryNotFoundError):
    """Offline mode is on and the cache cannot answer the request."""


class TransferError(VcacheError, OSError):
    """Bytes could not be transferred."""

    def __init__(self, message: str, **context: Any) -> None:
        VcacheError.__init__(self, message, **context)


class RetriesExhausted(TransferError):
    """Every attempt failed; ``reason`` holds the last cause."""


class RemoteChanged(TransferError):
    """The remote file changed while a download was being resumed."""


class DiskFull(TransferError):
    """Not enough space for the download (checked up front, or ENOSPC while writing)."""


class CacheNotWritable(TransferError):
    """The cache directory is read-only or not writable by this user."""


class IntegrityError(VcacheError, ValueError):
    """Bytes arrived but they are not what the publisher published."""


class VerificationFailed(IntegrityError):
    """A file (or snapshot) failed verification; ``findings`` says why."""

    def __init__(self, message: str, findings: Sequence[Finding] = (), **context: Any) -> None:
        super().__init__(message, **context)
        self.findings = tuple(findings)


class BadBundle(IntegrityError):
    """A bundle was refused (truncated, altered, unsafe names or links, not a vcache bundle); nothing of it was
    published. ``bundle`` names it."""


class UnsafePath(VcacheError, ValueError):
    """A path from the server would escape the target directory or is otherwise unsafe."""


class LockTimeout(VcacheError, TimeoutError):
    """A bounded wait for a lock or lease ran out."""


class IncompleteSnapshot(VcacheError, _hf.IncompleteSnapshotError):
    """Offline, and the cache does not hold every file of the snapshot."""

    # The cached snapshot folder (huggingface_hub's attribute); None when there is none to name.
    snapshot_path: str | None = None  # type: ignore[assignment]


class VcacheWarning(UserWarning):
    """A verification warning from vcache; ``finding`` is the :class:`~vcache.report.Finding` behind it."""

    def __init__(self, message: str, finding: Finding | None = None) -> None:
        super().__init__(message)
        self.finding = finding


__all__ = [
    "AuthError",
    "BadBundle",
    "CacheNotWritable",
    "DiskFull",
    "EntryNotFound",
    "GatedRepo",
    "HubError",
    "IncompleteSnapshot",
    "IntegrityError",
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
    "VcacheWarning",
    "VerificationFailed",
]
