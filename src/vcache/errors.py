"""The errors vcache raises.

One root, :class:`VcacheError`. Each branch also subclasses the builtin it means, so a caller's
existing ``except OSError`` / ``except ValueError`` / ``except TimeoutError`` still catches it; the errors
``vcache.snapshot_download`` / ``vcache.hf_hub_download`` share with huggingface_hub's functions are also
huggingface_hub's class for that case (in brackets), so code written for those keeps catching them::

    VcacheError
    ├── UsageError(ValueError)             bad arguments (CLI exit 2)
    │   └── InvalidRepoId                  not ``name`` or ``org/name`` [HFValidationError]
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

Every error carries context where it has any, as keyword arguments that are typed attributes of the class
that takes them (None when not given; ``history`` empty): ``repo_id`` and ``path`` on all of them,
``url``, ``status`` and ``content_type`` on Hub errors, ``status`` and ``errno`` on transfer errors,
``reason`` and ``history`` when retries ran out, and the rest where the tree's classes declare them.
``.context`` holds the ones given, for logs and JSON. The message says what happened, to which file, and
what to do next. Tokens never appear in messages.
The huggingface_hub HTTP errors' own attributes (``response``, ``request_id``, ``server_message``) are
``None``: vcache raises them without an HTTP response at hand.

Warnings are not errors: :class:`VcacheWarning` (a ``UserWarning``) is what the verified
``from_pretrained`` issues for a warning finding it loads anyway; ``finding`` is the finding behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# Cheap: it needs only httpx2, which vcache's Hub client imports anyway.
from huggingface_hub import errors as _hf

if TYPE_CHECKING:
    from vcache.report import Finding, PullReport


@dataclass(frozen=True)
class RetryEvent:
    """One failed attempt: what went wrong (a short description), the status and ``Retry-After`` if any.

    Kept with the errors, which carry them (``history``); :mod:`vcache.retry` records them.
    """

    cause: str
    status: int | None = None
    retry_after: float | None = None


class VcacheError(Exception):
    """Root of every error vcache raises.

    ``repo_id`` is the repository concerned, ``path`` the file (in the repository, or on disk); subclasses
    declare more. ``context`` maps the context given (not None) by name, for logs and JSON.
    """

    def __init__(self, message: str, *, repo_id: str | None = None, path: str | None = None) -> None:
        # Not super().__init__: huggingface_hub's HTTP errors, which some subclasses also are, demand a
        # response object there. The builtin bases (OSError, ValueError, ...) need nothing beyond this.
        Exception.__init__(self, message)
        self.message = message
        self.context: dict[str, Any] = {}
        self.repo_id = repo_id
        self.path = path
        self._keep(repo_id=repo_id, path=path)

    def _keep(self, **given: Any) -> None:
        """Add the context that was given (not None) to ``context``."""
        self.context.update((key, value) for key, value in given.items() if value is not None)

    def __str__(self) -> str:
        return self.message


class UsageError(VcacheError, ValueError):
    """The caller asked for something that cannot be done as asked (``revision``, ``allow_patterns`` and
    ``ignore_patterns`` name the argument at fault, when it is one of those; ``lockfile`` the lockfile that
    does not allow it, or cannot be used)."""

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        path: str | None = None,
        revision: str | None = None,
        allow_patterns: Sequence[str] | None = None,
        ignore_patterns: Sequence[str] | None = None,
        lockfile: str | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, path=path)
        self.revision = revision
        self.allow_patterns = allow_patterns
        self.ignore_patterns = ignore_patterns
        self.lockfile = lockfile
        self._keep(
            revision=revision,
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
            lockfile=lockfile,
        )


class InvalidRepoId(UsageError, _hf.HFValidationError):
    """A repo id that is not ``name`` or ``org/name`` by huggingface_hub's rules, refused before any request."""


class HubError(VcacheError, OSError):
    """The Hub (or mirror) refused a request in a way that retrying will not fix.

    ``url`` is the request (without credentials), ``status`` the HTTP status, ``content_type`` what came back
    when it was not the API's JSON.
    """

    # huggingface_hub's HfHubHTTPError attributes, for the subclasses that are also one (see the tree).
    response: Any = None
    request_id: str | None = None
    server_message: str | None = None
    _request: Any = None  # behind httpx2.HTTPError.request, which raises while it is None

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        path: str | None = None,
        url: str | None = None,
        status: int | None = None,
        content_type: str | None = None,
    ) -> None:
        VcacheError.__init__(self, message, repo_id=repo_id, path=path)
        self.url = url
        self.status = status
        self.content_type = content_type
        self._keep(url=url, status=status, content_type=content_type)

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
    """The server kept answering 429 after the retry budget was spent; ``reason`` and ``history`` as for
    :class:`RetriesExhausted` when a download's retries ran out."""

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        path: str | None = None,
        status: int | None = None,
        reason: str | None = None,
        history: tuple[RetryEvent, ...] = (),
    ) -> None:
        super().__init__(message, repo_id=repo_id, path=path, status=status)
        self.reason = reason
        self.history = history
        self._keep(reason=reason, history=history or None)


class OfflineError(HubError, _hf.LocalEntryNotFoundError):
    """Offline mode is on and the cache cannot answer the request."""


class TransferError(VcacheError, OSError):
    """Bytes could not be transferred: ``status`` is the HTTP status when the server gave one, ``errno`` (the
    builtin ``OSError`` attribute) the OS error number when a system call failed."""

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        path: str | None = None,
        status: int | None = None,
        errno: int | None = None,
    ) -> None:
        VcacheError.__init__(self, message, repo_id=repo_id, path=path)
        self.status = status
        self.errno = errno
        self._keep(status=status, errno=errno)


class RetriesExhausted(TransferError):
    """Every attempt failed; ``reason`` holds the last cause, ``history`` every failed attempt in order."""

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        path: str | None = None,
        status: int | None = None,
        reason: str | None = None,
        history: tuple[RetryEvent, ...] = (),
    ) -> None:
        super().__init__(message, repo_id=repo_id, path=path, status=status)
        self.reason = reason
        self.history = history
        self._keep(reason=reason, history=history or None)


class RemoteChanged(TransferError):
    """The remote file changed while a download was being resumed; ``etag`` is the one it was expected to have."""

    def __init__(self, message: str, *, path: str | None = None, etag: str | None = None) -> None:
        super().__init__(message, path=path)
        self.etag = etag
        self._keep(etag=etag)


class DiskFull(TransferError):
    """Not enough space for the download (checked up front, or ENOSPC while writing); ``needed`` and ``free``
    are the bytes the up-front check compared."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        errno: int | None = None,
        needed: int | None = None,
        free: int | None = None,
    ) -> None:
        super().__init__(message, path=path, errno=errno)
        self.needed = needed
        self.free = free
        self._keep(needed=needed, free=free)


class CacheNotWritable(TransferError):
    """The cache directory is read-only or not writable by this user; ``missing`` names the files a pull
    needed and could not write."""

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        path: str | None = None,
        errno: int | None = None,
        missing: Sequence[str] | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, path=path, errno=errno)
        self.missing = missing
        self._keep(missing=missing)


class IntegrityError(VcacheError, ValueError):
    """Bytes arrived but they are not what the publisher published."""


class VerificationFailed(IntegrityError):
    """A file (or snapshot) failed verification; ``findings`` says why, ``report`` is the pull's report when
    a pull refused (``reports`` when several were)."""

    def __init__(
        self,
        message: str,
        findings: Sequence[Finding] = (),
        *,
        repo_id: str | None = None,
        path: str | None = None,
        report: PullReport | None = None,
        reports: Sequence[PullReport] = (),
    ) -> None:
        super().__init__(message, repo_id=repo_id, path=path)
        self.findings = tuple(findings)
        self.report = report
        self.reports = tuple(reports)  # every report behind the refusal, when several repos were checked
        self._keep(report=report)


class BadBundle(IntegrityError):
    """A bundle was refused (truncated, altered, unsafe names or links, not a vcache bundle); nothing of it was
    published. ``bundle`` names it."""

    def __init__(self, message: str, *, bundle: str | None = None, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.bundle = bundle
        self._keep(bundle=bundle)


class UnsafePath(VcacheError, ValueError):
    """A path from the server would escape the target directory or is otherwise unsafe; ``reason`` says why."""

    def __init__(
        self, message: str, *, repo_id: str | None = None, path: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message, repo_id=repo_id, path=path)
        self.reason = reason
        self._keep(reason=reason)


class LockTimeout(VcacheError, TimeoutError):
    """A bounded wait for a lock or lease ran out: ``path`` is the lock, ``holder`` who held it when known,
    ``key`` the store key waited for (``vcache.distributed``)."""

    def __init__(
        self, message: str, *, path: str | None = None, holder: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(message, path=path)
        self.holder = holder
        self.key = key
        self._keep(holder=holder, key=key)


class IncompleteSnapshot(VcacheError, _hf.IncompleteSnapshotError):
    """Offline, and the cache does not hold every file of the snapshot; ``snapshot_path`` is the cached
    snapshot folder (huggingface_hub's attribute), None when there is none to name."""

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        path: str | None = None,
        snapshot_path: str | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, path=path)
        self.snapshot_path = snapshot_path  # type: ignore[assignment]
        self._keep(snapshot_path=snapshot_path)


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
    "InvalidRepoId",
    "LockTimeout",
    "OfflineError",
    "RateLimited",
    "RemoteChanged",
    "RepoNotFound",
    "RetriesExhausted",
    "RetryEvent",
    "RevisionNotFound",
    "TransferError",
    "UnsafePath",
    "UsageError",
    "VcacheError",
    "VcacheWarning",
    "VerificationFailed",
]
