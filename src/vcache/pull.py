"""The pull: resolve, plan, fetch, check, publish or quarantine, report.

Data flows one way (``docs/design.md`` §4):

1. resolve the revision to a commit (offline: ``refs/<rev>`` in the cache);
2. plan: the files at that commit with size and digest, filtered, paths validated before anything is written;
3. fetch each missing file (bounded parallelism) under its blob lock, into a resumable partial, hashed as
   written (``transfer``);
4. judge the finished partial: size, digest, sniff, the structure of its format (safetensors, GGUF,
   PyTorch/pickle/TorchScript, ONNX), tensor content, pickle imports (``checks.judge``, given what the
   transfer computed while writing it); ONNX models last, once the files their external data is in are
   published;
5. publish (fsync + ``os.replace`` into ``blobs/``, ledger record, snapshot link) or, when the failure is in
   transport, discard and fetch again a bounded number of times; otherwise quarantine with a report;
6. repo checks (sharded index and config coherence), and the publisher's signature when one is required
   (``signing``: compared with the digests verified above, no file hashed again);
7. report; ``refs/`` and ``trees/`` are written only when every requested file is verified.

Under a lockfile (``lock=``, ``VCACHE_LOCK``; see :mod:`vcache.lockfile`) the commit comes from the lock,
only the locked files are planned, and every file is checked against the lock's size and sha256 on the bytes
(the transfer computes the sha256 whatever the server sends), so a server that sends a wrong digest, or
none, cannot pass other bytes off. A verified blob is named as the server names it when its bytes hash to
that name (the HF cache convention), and by its locked sha256 otherwise.

Invariant: nothing reaches ``blobs/`` or ``snapshots/`` unless it passed its checks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from huggingface_hub.utils._paths import filter_repo_objects

from vcache.cache import CacheRepo, entry_kind, translate_os_error
from vcache.checks import StreamingCheck
from vcache.checks.judge import (
    MISMATCH_CODES,
    Judgement,
    judge,
    lock_size_mismatch,
    parsed_headers,
    still_stands,
)
from vcache.config import (
    Settings,
    TransferSettings,
    give_up_seconds,
    resolve_lock_path,
    resolve_settings,
    start_jitter_seconds,
)
from vcache.errors import (
    CacheNotWritable,
    DiskFull,
    EntryNotFound,
    IncompleteSnapshot,
    OfflineError,
    RemoteChanged,
    RevisionNotFound,
    TransferError,
    UsageError,
    VcacheError,
    VerificationFailed,
)
from vcache.hashing import Digest, hash_file, sha256_hex
from vcache.hub import (
    COMMIT_RE,
    HubClient,
    HubUnreachable,
    RemoteFile,
    check_unique_paths,
    resolve_url,
    validate_repo_id,
    validate_revision,
)
from vcache.ledger import Ledger, LedgerRecord
from vcache.lockfile import (
    Lock,
    LockedFile,
    LockedRepo,
    canonical_patterns,
    missing_file,
    read_lock,
    server_digest,
    unlisted,
)
from vcache.locks import blob_lock, is_writable_dir, lease_seconds, lock_timeout, wait_for_other_writer
from vcache.quarantine import QuarantineEntry, quarantine_file
from vcache.report import (
    NOT_FETCHED,
    FileReport,
    Finding,
    PullReport,
    Severity,
    Verdict,
    fail,
    info,
)
from vcache.retry import ProgressWatch, start_jitter
from vcache.signing import SignatureCheck, SignatureMethod, parse_method
from vcache.signing import prepare as prepare_signature
from vcache.transfer import FetchResult, FetchSpec, Transfer
from vcache.usage import use
from vcache.verify import (
    attach_repo_findings,
    blob_not_regular,
    require_complete,
    resolve_cached_commit,
    verified_sha256,
    verify_in_place,
    verify_locked,
    verify_snapshot,
)

log = logging.getLogger(__name__)

#: How many times a file whose bytes failed in transport (size/digest) is fetched before quarantine.
MAX_INTEGRITY_ATTEMPTS = 3


class Progress:
    """Receives progress events; the CLI subclasses it with tqdm. The default does nothing."""

    def planned(self, total_bytes: int, files: int) -> None:
        """Called once with what will be transferred (bytes not already in the cache)."""

    def advance(self, nbytes: int) -> None:
        """Planned bytes arrived (may be called from several threads); they never add up past ``planned``."""

    def refetched(self, nbytes: int) -> None:
        """Bytes fetched again (a damaged attempt, a restart from byte 0): not part of the planned total."""

    def file_done(self, report: FileReport) -> None:
        """A file is settled (published, cached, or failed)."""

    def message(self, text: str) -> None:
        """A human-readable event worth showing (a refetch, a quarantine, a wait for a silent Hub)."""


class _FileMeter:
    """Splits one file's transfer progress into planned bytes (at most its size, once) and bytes fetched again.

    The transfer reports deltas per attempt, negative when a restart drops bytes; whatever an attempt
    receives below what the plan already counted for this file is a refetch.
    """

    def __init__(self, progress: Progress, size: int) -> None:
        self._progress = progress
        self._size = size
        self._lock = threading.Lock()
        self._attempt = 0  # bytes the current attempt holds
        self._counted = 0  # bytes counted toward the plan: the attempts' high-water mark, capped at the size

    def new_attempt(self) -> None:
        """The next fetch starts from an empty partial, or resumes (its reused bytes are reported first)."""
        with self._lock:
            self._attempt = 0

    def __call__(self, delta: int) -> None:
        with self._lock:
            self._attempt += delta
            planned = max(0, min(self._attempt, self._size) - self._counted)
            self._counted += planned
            again = max(0, delta - planned)
        if planned:
            self._progress.advance(planned)
        if again:
            self._progress.refetched(again)


@dataclass
class PullOptions:
    """Knobs below the public API (tests inject a fake clock or small timeouts through ``transfer``).

    ``transfer``: the transfer settings; ``None`` resolves them from the environment
    (:func:`~vcache.config.resolve_transfer_settings`).
    ``allow_imports``: pickle globals (``module.name``) accepted beyond ``torch.load(weights_only=True)``'s
    allowlist (:func:`pull`'s ``allow_imports`` adds to them).
    """

    strict: bool = False
    max_integrity_attempts: int = MAX_INTEGRITY_ATTEMPTS
    transfer: TransferSettings | None = None
    allow_imports: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Pin:
    """The lock entry a pull follows, and the lockfile it came from (for messages)."""

    repo: LockedRepo
    lockfile: str


#: What ``lock=`` accepts: a lockfile path, a parsed :class:`~vcache.lockfile.Lock`, None (``VCACHE_LOCK``
#: if set) or False (no lock, whatever ``VCACHE_LOCK`` says).
LockArg = str | os.PathLike[str] | Lock | Literal[False] | None


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    allow_patterns: str | Sequence[str] | None = None,
    ignore_patterns: str | Sequence[str] | None = None,
    token: str | bool | None = None,
    max_workers: int | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    endpoint: str | None = None,
    strict: bool = False,
    files: Sequence[str] | None = None,
    progress: Progress | None = None,
    options: PullOptions | None = None,
    verify_signature: str | SignatureMethod | None = None,
    allow_imports: Collection[str] = (),
    lock: LockArg = None,
) -> PullReport:
    """Download and verify a repo snapshot into the HF cache; return what happened to every file.

    Every file is checked against the publisher's digest while it is written, then sniffed and, by the
    format its content shows (safetensors, GGUF, PyTorch checkpoint, pickle, TorchScript, ONNX), checked
    for structure and content, and a pickle for what it imports (never unpickled); failures are fetched
    again when downloading again might help, and quarantined otherwise. Offline (``HF_HUB_OFFLINE`` or
    ``local_files_only``) the cached snapshot is verified from the ledger instead. ``files`` limits the
    pull to exact paths. ``allow_imports`` (``module.name`` entries, e.g. a training config class) widens
    the allowlist of pickle globals for a user who trusts the repo; a global that runs code (``os.system``,
    ``builtins.eval``) is never allowed.
    Raises :class:`~vcache.errors.HubError` subclasses for repo/revision/file errors and
    :class:`~vcache.errors.TransferError` subclasses for disk problems; per-file verification failures are
    in the report (``report.ok``), not raised. An invalid ``repo_id`` or ``revision`` raises
    :class:`~vcache.errors.UsageError` before anything is asked or read.

    ``verify_signature`` (``"key:PUBLIC_KEY.pem"``, ``"certificate:CHAIN.pem"``,
    ``"sigstore:IDENTITY@ISSUER"`` or a :class:`~vcache.signing.SignatureMethod`) also requires the repo's
    ``model.sig`` (model-signing, the ``vcache[signing]`` extra) to come from that key or identity and to match
    every pulled file; its ``signature.*`` findings fail the report, and no ref is written. The method is
    loaded before anything is downloaded (see :func:`vcache.signing.prepare` for its errors).

    ``lock`` (a lockfile path or :class:`~vcache.lockfile.Lock`; default ``VCACHE_LOCK``, ``False`` for
    none) pins the repo: its locked commit is pulled whatever the branch says now, only its locked files
    (narrowed by the patterns or ``files``), each checked on the bytes against the lock's size and sha256
    (``lock.*`` findings). A repo the lock does not pin, or a revision other than the locked one, is a
    :class:`~vcache.errors.UsageError` naming the lockfile; a locked commit the server no longer has, a
    :class:`~vcache.errors.RevisionNotFound` naming it. Offline, the cache is checked against the lock. A
    signature method the lock records for the repo is required as if given as ``verify_signature`` (giving
    a different one is a :class:`~vcache.errors.UsageError`).
    """
    validate_repo_id(repo_id)
    if revision is not None:
        validate_revision(revision)
    if files is not None and not files:
        raise UsageError(f"no file of {repo_id} was asked for (files=[]); name at least one path")
    opts = options or PullOptions()
    opts.strict = opts.strict or strict
    wanted = (*opts.allow_imports, *allow_imports)
    if wanted:  # none given: the pickle checks are not needed before the first request
        from vcache.checks.pickles import parse_allow_imports

        try:
            wanted = parse_allow_imports(wanted)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    opts.allow_imports = wanted
    settings = resolve_settings(
        endpoint=endpoint,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        max_workers=max_workers,
        repo_type=repo_type,
        transfer=opts.transfer,
    )
    repo = CacheRepo(settings.cache_dir, repo_id, settings.repo_type)
    pin = _pin_for(lock, repo_id, settings.repo_type, revision)
    # The method is loaded (key read, sigstore's trust root fetched) before anything is downloaded.
    method = (
        pin.repo.signature_method(verify_signature, pin.lockfile) if pin is not None else verify_signature
    )
    signature = prepare_signature(method) if method is not None else None
    if pin is not None and signature is not None:
        _require_locked_signature_file(pin, signature)
    # Registered before anything is read, so gc leaves the repo's revisions and blobs alone (see usage).
    used = pin.repo.commit if pin is not None else revision
    with use(repo_id, used, cache_dir=settings.cache_dir, repo_type=settings.repo_type):
        if settings.offline:
            if pin is not None:
                return _pull_offline_locked(
                    repo,
                    pin,
                    allow_patterns,
                    ignore_patterns,
                    files,
                    opts.strict,
                    opts.allow_imports,
                    signature,
                )
            return _pull_offline(
                repo,
                revision,
                allow_patterns,
                ignore_patterns,
                files,
                opts.strict,
                opts.allow_imports,
                signature,
            )
        puller = _Puller(settings, repo, opts, progress or Progress(), force_download, signature, pin)
        with _ticking(puller.watch):
            return puller.run(revision, allow_patterns, ignore_patterns, files, local_dir)


#: How often (real seconds) a pull asks its watch whether a "waiting for …" line is due.
_TICK = 0.5


@contextlib.contextmanager
def _ticking(watch: ProgressWatch) -> Iterator[None]:
    """While the block runs, tick ``watch`` from a thread: a request that hangs gets its notice too."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(_TICK):
            watch.tick()

    ticker = threading.Thread(target=tick, name="vcache-waiting", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()


def lock_in_effect(lock: LockArg) -> Lock | None:
    """The lock a call applies: ``lock`` itself, the lockfile at that path, else the one ``VCACHE_LOCK`` names;
    None for ``False`` or when there is none. A lockfile that cannot be read or is invalid: :class:`UsageError`."""
    if lock is False:
        return None
    if isinstance(lock, Lock):
        return lock
    path = resolve_lock_path(lock)
    return read_lock(path) if path is not None else None


def _pin_for(lock: LockArg, repo_id: str, repo_type: str, revision: str | None) -> _Pin | None:
    """The lock entry this pull follows (None: no lock); UsageError when the lock does not pin the request."""
    parsed = lock_in_effect(lock)
    if parsed is None:
        return None
    entry = parsed.require(repo_id, repo_type)
    if revision is not None and revision not in (entry.revision, entry.commit):
        raise UsageError(
            f"{repo_id}@{revision} was asked for, but the lockfile {parsed.where} pins {entry.name}@"
            f"{entry.revision} (commit {entry.commit}); drop the revision to pull the locked one, or move the "
            f"lock with `vcache lock {repo_id}@{revision} -o {parsed.where}`",
            repo_id=repo_id,
            lockfile=parsed.where,
        )
    return _Pin(entry, parsed.where)


def _require_locked_signature_file(pin: _Pin, signature: SignatureCheck) -> None:
    """A locked pull fetches only locked files: a required signature needs its signature file locked."""
    name = signature.signature_file
    if pin.repo.file(name) is None:
        raise UsageError(
            f"{pin.repo.name}: the signature ({signature.method}) cannot be checked under the lockfile "
            f"{pin.lockfile}, which does not pin {name}, and a locked pull fetches only locked files; nothing "
            f"was downloaded. Lock the repo with its signature: `vcache lock {pin.repo.repo_id} "
            f"--verify-signature {signature.method} -o {pin.lockfile}`",
            repo_id=pin.repo.repo_id,
            path=name,
            lockfile=pin.lockfile,
        )


def _locked_selection(
    pin: _Pin,
    allow: str | Sequence[str] | None,
    ignore: str | Sequence[str] | None,
    files: Sequence[str] | None,
    signature_file: str | None = None,
) -> list[LockedFile]:
    """The locked files this pull asks for: ``files`` (each must be locked), else the lock's files narrowed by
    the patterns; and ``signature_file`` (when a signature is required, and locked) whatever they select."""
    chosen = _locked_choice(pin, allow, ignore, files)
    locked_sig = pin.repo.file(signature_file) if signature_file is not None else None
    if locked_sig is not None and locked_sig not in chosen:
        chosen.append(locked_sig)
    return chosen


def _locked_choice(
    pin: _Pin,
    allow: str | Sequence[str] | None,
    ignore: str | Sequence[str] | None,
    files: Sequence[str] | None,
) -> list[LockedFile]:
    entry = pin.repo
    if files is not None:
        chosen = []
        for path in files:
            locked = entry.file(path)
            if locked is None:
                raise UsageError(
                    f"{path!r} of {entry.name} is not pinned in the lockfile {pin.lockfile}; nothing was "
                    "downloaded. Lock it (`vcache lock --update` re-applies the recorded patterns) or fetch it "
                    "without the lock",
                    repo_id=entry.repo_id,
                    path=path,
                    lockfile=pin.lockfile,
                )
            chosen.append(locked)
        return chosen
    chosen = list(
        filter_repo_objects(
            entry.files, allow_patterns=_pat(allow), ignore_patterns=_pat(ignore), key=lambda f: f.path
        )
    )
    if not chosen and (allow or ignore):
        raise _selects_nothing(f"{entry.name} as locked in {pin.lockfile}", allow, ignore, len(entry.files))
    return chosen


def _pull_offline_locked(
    repo: CacheRepo,
    pin: _Pin,
    allow: str | Sequence[str] | None,
    ignore: str | Sequence[str] | None,
    files: Sequence[str] | None,
    strict: bool,
    allow_imports: Collection[str],
    signature: SignatureCheck | None,
) -> PullReport:
    """Offline under a lock: the locked commit's snapshot, checked against the lock (ledger fast path), and
    against the signature when one is required."""
    sig = signature.signature_file if signature is not None else None
    wanted = _locked_selection(pin, allow, ignore, files, sig)
    if not repo.snapshot_dir(pin.repo.commit).is_dir():
        raise OfflineError(
            f"{pin.repo.name}@{pin.repo.commit[:12]} (locked in {pin.lockfile}) is not in the cache at "
            f"{repo.cache_dir}; run `vcache pull --lock {pin.lockfile} {pin.repo.repo_id}` with network "
            "access first"
        )
    writable = os.access(repo.root, os.W_OK)
    report = verify_locked(
        repo,
        pin.repo,
        strict=strict,
        quarantine=writable,
        only={f.path for f in wanted},
        lockfile=pin.lockfile,
        allow_imports=allow_imports,
    )
    if signature is not None:
        tree = repo.read_tree(pin.repo.commit)
        report = signature.check(report, listed=tree.keys() if tree is not None else None)
    return report


def _pull_offline(
    repo: CacheRepo,
    revision: str | None,
    allow: str | Sequence[str] | None,
    ignore: str | Sequence[str] | None,
    files: Sequence[str] | None,
    strict: bool,
    allow_imports: Collection[str],
    signature: SignatureCheck | None = None,
) -> PullReport:
    commit = resolve_cached_commit(repo, revision)
    tree = repo.read_tree(commit)
    only: list[str] | None = None
    if files is not None:
        only = list(files)
    elif tree is not None and (allow or ignore):
        only = list(
            filter_repo_objects(tree.keys(), allow_patterns=_pat(allow), ignore_patterns=_pat(ignore))
        )
        if not only:
            raise _selects_nothing(f"{repo.repo_id}@{revision or commit[:12]}", allow, ignore, len(tree))
    sig = signature.signature_file if signature is not None else None
    if sig is not None and only is not None and sig not in only and (tree is None or sig in tree):
        only.append(sig)  # the signature is checked whatever the patterns select
    writable = os.access(repo.root, os.W_OK)
    report = verify_snapshot(
        repo,
        commit,
        strict=strict,
        only=only,
        revision=revision,
        quarantine=writable,
        allow_imports=allow_imports,
    )
    if only is not None:
        missing = set(only) - {f.path for f in report.files}
        if missing:
            raise IncompleteSnapshot(
                f"{repo.repo_id}@{revision or commit[:12]}: {', '.join(sorted(missing))} not in the cache; "
                "pull with network access first",
                snapshot_path=report.snapshot_path,
            )
        require_complete(report)  # listed for the commit but absent: missing, not damaged
    if signature is not None:
        report = signature.check(report, listed=tree.keys() if tree is not None else None)
    return report


def _judged_last(path: str) -> bool:
    """Files fetched after the others: ONNX models (by name), whose external-data references are judged
    against the files already in the snapshot."""
    return path.lower().endswith(".onnx")


def _pat(p: str | Sequence[str] | None) -> list[str] | None:
    if p is None:
        return None
    return [p] if isinstance(p, str) else list(p)


def _selects_nothing(
    where: str, allow: str | Sequence[str] | None, ignore: str | Sequence[str] | None, total: int
) -> UsageError:
    """The error for include/exclude patterns that leave no file of the ``total`` listed at ``where``."""
    parts = []
    if allow:
        parts.append(f"--include/allow_patterns {', '.join(map(repr, _pat(allow) or []))}")
    if ignore:
        parts.append(f"--exclude/ignore_patterns {', '.join(map(repr, _pat(ignore) or []))}")
    return UsageError(
        f"{' with '.join(parts)} select none of the {total} file(s) of {where}; nothing was downloaded or "
        "written. Patterns are globs matched against the whole path in the repo (e.g. '*.safetensors', "
        "'sub/*'); check their spelling.",
        allow_patterns=_pat(allow),
        ignore_patterns=_pat(ignore),
    )


class _Puller:
    """One pull's state: settings, the cache repo, the shared transfer, the ledger."""

    def __init__(
        self,
        settings: Settings,
        repo: CacheRepo,
        opts: PullOptions,
        progress: Progress,
        force: bool,
        signature: SignatureCheck | None = None,
        pin: _Pin | None = None,
    ):
        self.settings = settings
        self.signature = signature
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.force = force
        self.pin = pin
        self.ledger = Ledger(repo.ledger_dir)
        self.read_only = False
        # One give-up budget for the whole pull: its Hub calls and every file's connections share it.
        self.transfer_settings = settings.transfer
        self.watch: ProgressWatch = self.transfer_settings.watch or ProgressWatch(
            give_up_seconds(), clock=self.transfer_settings.clock, notify=self._waiting
        )

    def _waiting(self, text: str) -> None:
        """A "waiting for …" line from the watch: shown above the progress bar, logged at INFO."""
        log.info("%s", text)
        self.progress.message(text)

    def run(
        self,
        revision: str | None,
        allow: str | Sequence[str] | None,
        ignore: str | Sequence[str] | None,
        files: Sequence[str] | None,
        local_dir: str | os.PathLike[str] | None,
    ) -> PullReport:
        t0 = time.monotonic()
        s = self.settings
        # numpy (0.1 s of CPU, under the GIL) is imported by the first check that needs it, not up front on a
        # thread of its own: that thread held the GIL while this one went through its Hub requests, and the
        # first body request went out 30-40 ms later (A/B medians of 12 alternating runs: one 512 MiB shard
        # unthrottled 0.99 vs 1.03 s, 4 x 128 MiB 0.94 vs 0.99 s; but one 512 MiB shard at 50 MB/s per
        # connection 1.62 vs 1.56 s, where the import now lands in the ramp-up's first windows).
        start_jitter(start_jitter_seconds())  # N nodes started together do not all ask the Hub at once
        # The metadata client shares the transfer's retry policy and clock (tests inject a fake clock).
        ts = self.transfer_settings
        # Under a lock: locked files refused before any byte moved, and lock.unlisted notes (after the repo
        # checks).
        refused: dict[str, FileReport] = {}
        extra: list[FileReport] = []
        listing: list[RemoteFile] | None
        sig = self.signature.signature_file if self.signature is not None else None
        with HubClient(
            s.endpoint,
            s.token,
            watch=self.watch,
            policy=ts.policy,
            clock=ts.clock,
            ssl_context=ts.ssl_context,
            trust_env=ts.trust_env,
        ) as hub:
            if self.pin is not None:
                commit, revision = self.pin.repo.commit, self.pin.repo.revision
                listing = self._locked_listing(hub, commit)
                remote, refused, extra = self._locked_plan(listing, allow, ignore, files)
            else:
                if revision and COMMIT_RE.fullmatch(revision):
                    commit = revision
                else:
                    try:
                        commit = hub.resolve_commit(self.repo.repo_id, revision, s.repo_type, fail_fast=True)
                    except HubUnreachable as exc:
                        fallback = self._cached_fallback(revision, allow, ignore, files, exc)
                        if fallback is not None:
                            return fallback
                        commit = hub.resolve_commit(self.repo.repo_id, revision, s.repo_type)
                if files is not None:
                    # The signature file is asked for too (it may be absent: signature.missing, not an error).
                    asked = [*files, sig] if sig is not None and sig not in files else list(files)
                    remote = hub.paths_info(self.repo.repo_id, commit, asked, s.repo_type)
                    found = {f.path for f in remote}
                    for want in files:
                        if want not in found:
                            raise EntryNotFound(
                                f"{want!r} does not exist in {self.repo.repo_id}@{revision or commit[:12]}",
                                repo_id=self.repo.repo_id,
                                path=want,
                            )
                    listing = None
                else:
                    listing = hub.list_files(self.repo.repo_id, commit, s.repo_type)
                    remote = list(
                        filter_repo_objects(
                            listing,
                            allow_patterns=_pat(allow),
                            ignore_patterns=_pat(ignore),
                            key=lambda f: f.path,
                        )
                    )
                    if not remote and (allow or ignore):
                        where = f"{self.repo.repo_id}@{revision or commit[:12]}"
                        raise _selects_nothing(where, allow, ignore, len(listing))
                    if sig is not None and all(f.path != sig for f in remote):
                        remote += [
                            f for f in listing if f.path == sig
                        ]  # checked whatever the patterns select
        check_unique_paths(remote)
        self.read_only = not (is_writable_dir(self.repo.cache_dir) and is_writable_dir(self.repo.root))
        plan = [(f, self._cached_report(commit, f)) for f in remote]
        to_fetch = [f for f, rep in plan if rep is None]
        if to_fetch and self.read_only:
            # Nothing can be written here (no ledger record, ref, lock or link): what is present is hashed and
            # checked where it is, and only what is absent is missing.
            plan = [(f, rep or self._verified_in_place(commit, f)) for f, rep in plan]
            to_fetch = [f for f, rep in plan if rep is None]
            if to_fetch:
                raise CacheNotWritable(
                    f"the cache at {self.repo.cache_dir} is read-only and lacks "
                    f"{', '.join(f.path for f in to_fetch[:5])}{' ...' if len(to_fetch) > 5 else ''} of "
                    f"{self.repo.repo_id}; pull it once where the cache is writable, or point HF_HUB_CACHE "
                    "at a writable cache",
                    repo_id=self.repo.repo_id,
                    missing=[f.path for f in to_fetch],
                )
        if to_fetch:
            self.repo.ensure_layout()
        self.progress.planned(sum(f.size for f in to_fetch), len(to_fetch))
        reports: dict[str, FileReport] = {f.path: rep for f, rep in plan if rep is not None}
        for rep in reports.values():
            self.progress.file_done(rep)
        errors: list[str] = []
        not_fetched: set[str] = set()
        judged: list[Judgement] = []  # files judged now and published: their headers go to the repo checks
        if to_fetch:
            # partial staleness = the lease length; the give-up budget is the pull's, not the Transfer's own
            with Transfer(
                endpoint=s.endpoint,
                token=s.token,
                policy=ts.policy,
                clock=ts.clock,
                watch=self.watch,
                connect_timeout=ts.connect_timeout,
                read_timeout=ts.read_timeout,
                stall_timeout=ts.stall_timeout,
                max_connections=ts.max_connections,
                connections_per_file=ts.connections_per_file,
                part_size=ts.part_size,
                min_multipart_size=ts.min_multipart_size,
                user_agent=ts.user_agent,
                check_free_space=ts.check_free_space,
                stale_after=ts.stale_after,
                buffer_size=ts.buffer_size,
                trust_env=ts.trust_env,
                ssl_context=ts.ssl_context,
            ) as transfer:
                workers = min(s.max_workers, len(to_fetch))
                # Largest first: the long pole starts early and small files fill the gaps. ONNX models in
                # a second wave: the files their external data is in must be published when they are judged.
                ordered = sorted(to_fetch, key=lambda f: -f.size)
                waves = [
                    [f for f in ordered if not _judged_last(f.path)],
                    [f for f in ordered if _judged_last(f.path)],
                ]
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vcache-pull") as pool:
                    for wave in waves:
                        futures = {f.path: pool.submit(self._fetch_one, transfer, commit, f) for f in wave}
                        for path, fut in futures.items():
                            try:
                                rep, judgement = fut.result()
                            except (DiskFull, CacheNotWritable):
                                raise
                            except VcacheError as exc:
                                why = _naming(path, exc)
                                errors.append(why)
                                not_fetched.add(path)
                                judgement = None
                                rep = FileReport(
                                    path,
                                    findings=(fail(NOT_FETCHED, why),),
                                    strict=self.opts.strict,
                                )
                            if judgement is not None:
                                judged.append(judgement)
                            reports[path] = rep
                            self.progress.file_done(rep)
        ordered_reports = [reports[f.path] for f in remote]
        if refused:
            ordered_reports = sorted([*ordered_reports, *refused.values()], key=lambda r: r.path)
        snapshot = self.repo.snapshot_dir(commit)
        ordered_reports = attach_repo_findings(
            snapshot,
            ordered_reports,
            strict=self.opts.strict,
            headers=parsed_headers(judged),
            not_fetched=not_fetched | refused.keys(),
        )
        report = PullReport(
            repo_id=self.repo.repo_id,
            repo_type=s.repo_type,
            revision=revision,
            commit=commit,
            snapshot_path=str(snapshot),
            files=tuple(ordered_reports),
            elapsed=time.monotonic() - t0,
            strict=self.opts.strict,
            errors=tuple(errors),
        )
        if self.signature is not None:
            listed = {f.path for f in listing} if listing is not None else None
            report = self.signature.check(report, listed=listed)
        if extra:  # (after the signature check: these files were not pulled, there is nothing to compare)
            report = replace(report, files=report.files + tuple(extra))
        if self.pin is not None:
            remote = [self._as_published(commit, f) for f in remote]
            if listing is not None:
                published = {f.path: f for f in remote}
                listing = [published.get(f.path, f) for f in listing]
        if report.ok and not self.read_only:
            # Written only when they change (a cache shared read-only by its readers is not written to).
            # Under a lock, refs/<revision> names the locked commit: tools that load by branch name offline
            # get the locked snapshot.
            tree = (
                {f.path: (f.size, f.blob_id, f.lfs_sha256) for f in listing} if listing is not None else None
            )
            if tree is not None and self.repo.read_tree(commit) != tree:
                self.repo.write_tree(commit, tree)
            if revision and not COMMIT_RE.fullmatch(revision) and self.repo.read_ref(revision) != commit:
                self.repo.write_ref(revision, commit)
            elif revision is None and self.repo.read_ref("main") != commit:
                self.repo.write_ref("main", commit)
        if local_dir is not None and report.ok:
            report = replace(
                report, snapshot_path=str(export_local_dir(self.repo, commit, remote, Path(local_dir)))
            )
        return report

    def _cached_fallback(
        self,
        revision: str | None,
        allow: str | Sequence[str] | None,
        ignore: str | Sequence[str] | None,
        files: Sequence[str] | None,
        exc: HubUnreachable,
    ) -> PullReport | None:
        """The Hub cannot be reached: answer from the cache when it holds the revision (as huggingface_hub does)."""
        if self.repo.read_ref(revision or "main") is None:
            return None
        message = f"{self.settings.endpoint} could not be reached ({exc}); using the cached snapshot"
        log.warning("%s", message)
        self.progress.message(message)
        return _pull_offline(
            self.repo,
            revision,
            allow,
            ignore,
            files,
            self.opts.strict,
            self.opts.allow_imports,
            self.signature,
        )

    # -- planning under a lock -------------------------------------------------------------------------------
    def _locked_listing(self, hub: HubClient, commit: str) -> list[RemoteFile]:
        """The server's listing of the locked commit; a clear error naming the commit when it is gone."""
        assert self.pin is not None
        entry, s = self.pin.repo, self.settings
        try:
            return hub.list_files(self.repo.repo_id, commit, s.repo_type)
        except RevisionNotFound as exc:
            raise RevisionNotFound(
                f"{entry.name}: the locked commit {commit} ({entry.revision} in {self.pin.lockfile}) is not on "
                f"{s.endpoint}: the branch was force-pushed and the commit deleted, or this server never had it. "
                "Nothing was downloaded. Point HF_ENDPOINT at a server that has it, or review the current "
                f"revision and move the lock with `vcache lock --update {entry.repo_id} -o {self.pin.lockfile}`",
                repo_id=self.repo.repo_id,
            ) from exc

    def _locked_plan(
        self,
        listing: Sequence[RemoteFile],
        allow: str | Sequence[str] | None,
        ignore: str | Sequence[str] | None,
        files: Sequence[str] | None,
    ) -> tuple[list[RemoteFile], dict[str, FileReport], list[FileReport]]:
        """What to settle under the lock: the server's entry of each wanted locked file; the locked files
        refused before any byte moves (``lock.missing_file``: the server lacks it; ``lock.size_mismatch``: it
        lists another size, so the bytes cannot be the locked ones and are not downloaded); and a
        ``lock.unlisted`` note for each file the server lists, the patterns select, and the lock lacks."""
        assert self.pin is not None
        pin, strict = self.pin, self.opts.strict
        by_path = {f.path: f for f in listing}
        remote: list[RemoteFile] = []
        refused: dict[str, FileReport] = {}
        sig = self.signature.signature_file if self.signature is not None else None
        for lf in _locked_selection(pin, allow, ignore, files, sig):
            f = by_path.get(lf.path)
            if f is None:
                finding = missing_file(
                    f"{lf.path}: locked in {pin.lockfile}, but the server does not list it at commit "
                    f"{pin.repo.commit[:12]}; the server is not serving the locked repo",
                    path=lf.path,
                )
            elif f.size != lf.size:
                finding = lock_size_mismatch(lf.path, lf.size, f.size)
            else:
                remote.append(f)
                continue
            refused[lf.path] = FileReport(lf.path, lf.size, str(lf.digest), (finding,), strict=strict)
        notes: list[FileReport] = []
        if files is None:
            candidates = filter_repo_objects(
                listing, allow_patterns=_pat(allow), ignore_patterns=_pat(ignore), key=lambda f: f.path
            )
            for f in candidates:
                if pin.repo.file(f.path) is None and pin.repo.selects(f.path):
                    note = unlisted(f.path, pin.lockfile, pin.repo.name)
                    notes.append(FileReport(f.path, f.size, findings=(note,), strict=strict))
        return remote, refused, notes

    def _locked(self, f: RemoteFile) -> LockedFile | None:
        """The lock's entry for ``f`` (None when the pull is not locked)."""
        if self.pin is None:
            return None
        lf = self.pin.repo.file(f.path)
        assert lf is not None  # only locked files are planned
        return lf

    def _blob_name(self, f: RemoteFile) -> str:
        """The blob a file is looked for under: the server's etag, except that under a lock a file the server
        calls LFS is named by its locked sha256 (what an honest server's LFS etag is)."""
        lf = self._locked(f)
        return lf.sha256 if lf is not None and f.is_lfs else f.etag

    def _as_published(self, commit: str, f: RemoteFile) -> RemoteFile:
        """Under a lock, ``f`` as the cache holds it: named by the locked sha256 where its blob is (see
        :meth:`_published_name`), for the tree listing and a ``local_dir`` copy."""
        lf = self._locked(f)
        if lf is None:
            return f
        linked = self.repo.linked_etag(commit, f.path)
        if linked is None and self.repo.blob_path(lf.sha256).exists():
            linked = lf.sha256  # a copy, not a link (symlinks disabled)
        return replace(f, lfs_sha256=lf.sha256) if linked == lf.sha256 else f

    # -- planning --------------------------------------------------------------------------------------------
    def _cached_report(self, commit: str, f: RemoteFile) -> FileReport | None:
        """A report for a file already verified in the cache (linking it if needed), else None (fetch it)."""
        if self.force:
            return None
        lf = self._locked(f)
        if lf is not None:
            return self._cached_locked(commit, f, lf)
        blob = self.repo.blob_path(f.etag)
        if not blob.exists():
            return None
        rec = self.ledger.lookup(f.etag, blob)
        if rec is None or not still_stands(rec.findings, self.opts.allow_imports):
            return None  # present but not verified by vcache (or not for this allowlist): checked first
        if self.repo.linked_etag(commit, f.path) != f.etag:
            if self.read_only:
                return None  # cannot link it: only what the snapshot serves counts
            self.repo.link(commit, f.path, f.etag)
        return self._remembered(commit, f.path, f.size, str(f.digest), rec)

    def _cached_locked(self, commit: str, f: RemoteFile, lf: LockedFile) -> FileReport | None:
        """Under a lock: a blob the ledger vouches for whose verified sha256 is the locked one (under the
        server's name or the locked sha256), linked into the snapshot; else None (fetch it)."""
        for name in dict.fromkeys((self._blob_name(f), lf.sha256)):
            blob = self.repo.blob_path(name)
            rec = self.ledger.lookup(name, blob)
            if rec is None or not still_stands(rec.findings, self.opts.allow_imports):
                continue  # not verified by vcache (or not for this allowlist)
            if self.ledger.sha256(name, blob) != lf.sha256:
                continue  # verified as another version of the file
            if self.repo.linked_etag(commit, f.path) != name:
                if self.read_only:
                    continue
                self.repo.link(commit, f.path, name)
            return self._remembered(commit, f.path, lf.size, str(lf.digest), rec)
        return None

    def _remembered(self, commit: str, path: str, size: int, digest: str, rec: LedgerRecord) -> FileReport:
        """The report of a file linked from a blob its ledger record vouches for (nothing read)."""
        return FileReport(
            path,
            size,
            digest,
            rec.findings,
            cached=True,
            location=str(self.repo.snapshot_file(commit, path)),
            strict=self.opts.strict,
            format=rec.format,
            checks=rec.checks,
        )

    def _verified_in_place(self, commit: str, f: RemoteFile) -> FileReport | None:
        """On a read-only cache: the file the snapshot serves, hashed against the listing's digest (under a
        lock: the lock's) and checked where it is (nothing written or moved); None when the snapshot does not
        serve it."""
        lf = self._locked(f)
        if lf is not None:
            snap = self.repo.snapshot_file(commit, f.path)
            if not snap.exists():
                return None
            judgement = judge(
                snap,
                f.path,
                expected_size=lf.size,
                expected_digest=lf.digest,
                strict=self.opts.strict,
                against_lock=True,
                allow_imports=self.opts.allow_imports,
                root=self.repo.snapshot_dir(commit),
            )
            actual = judgement.actual_digest
            return FileReport(
                f.path,
                judgement.size,
                str(lf.digest),
                judgement.findings,
                actual_digest=str(actual) if actual is not None else None,
                cached=True,
                location=str(snap),
                strict=self.opts.strict,
                format=judgement.format,
                checks=judgement.checks,
            )
        rep = verify_in_place(
            self.repo,
            commit,
            f.path,
            size=f.size,
            etag=f.etag,
            strict=self.opts.strict,
            allow_imports=self.opts.allow_imports,
        )
        if any(x.code in ("snapshot.missing_file", "snapshot.broken_link") for x in rep.findings):
            return None
        return rep

    # -- one file --------------------------------------------------------------------------------------------
    def _fetch_one(
        self, transfer: Transfer, commit: str, f: RemoteFile
    ) -> tuple[FileReport, Judgement | None]:
        """Settle one file not verified in the cache: adopt the blob already there, or download it. Returns
        its report and, when its bytes were judged now and published, the judgement (with their header)."""
        repo = self.repo
        what = f"{repo.repo_id}/{f.path}"
        name = self._blob_name(f)
        with blob_lock(repo.lock_path(name), what=what) as held:
            blob = repo.blob_path(name)
            if held and not self.force:
                # A fresh partial under our lock: its writer died moments ago (wait until it is stale, then
                # resume it) or takes no lock (wait for its blob instead of fetching it twice).
                wait_for_other_writer(
                    repo.partials,
                    f.etag,
                    blob,
                    stale_after=lease_seconds(),
                    timeout=lock_timeout(),
                    what=what,
                )
            kind = entry_kind(blob)
            if kind not in (None, "file"):
                self._set_aside(commit, f, name, kind)
            elif kind == "file" and not self.force:
                settled = self._adopt_existing_blob(commit, f, name)
                if settled is not None:
                    return settled
            return self._download(transfer, commit, f)

    def _set_aside(self, commit: str, f: RemoteFile, name: str, kind: str) -> None:
        """``blobs/<name>`` is not a regular file: set aside (:func:`set_aside_blob`) and the file fetched
        again."""
        entry = set_aside_blob(self.repo, commit, f.path, name, Digest.from_etag(name), kind)
        self.progress.message(
            f"{f.path}: its blob is a {kind}, not a regular file; set aside as {entry.id}, fetching again"
        )

    def _adopt_existing_blob(
        self, commit: str, f: RemoteFile, name: str
    ) -> tuple[FileReport, Judgement | None] | None:
        """A blob is already there (another process, or huggingface_hub): trust it only after checking it
        against its name. None when it failed (it is quarantined: fetch the file), or, under a lock, when it is
        sound but not the locked version (it stays: another snapshot may use it; fetch the locked bytes)."""
        blob = self.repo.blob_path(name)
        expected = Digest.from_etag(name)
        rec = self.ledger.lookup(name, blob)
        judgement = None
        if rec is not None and still_stands(rec.findings, self.opts.allow_imports):
            findings: Sequence[Finding] = rec.findings
            fmt, checks = rec.format, rec.checks
        else:
            judgement = judge(
                blob,
                f.path,
                expected_size=f.size,
                expected_digest=expected,
                strict=self.opts.strict,
                allow_imports=self.opts.allow_imports,
                root=self.repo.snapshot_dir(commit),
            )
            findings, actual = judgement.findings, judgement.actual_digest
            fmt, checks = judgement.format, judgement.checks
            if judgement.verdict is Verdict.FAIL:
                entry = quarantine_file(
                    self.repo,
                    blob,
                    path=f.path,
                    commit=commit,
                    etag=name,
                    expected_digest=str(expected),
                    actual_digest=str(actual) if actual else None,
                    findings=findings,
                    source="cache",
                )
                self.repo.unlink(commit, f.path)
                self.progress.message(
                    f"{f.path}: cached copy failed verification; quarantined as {entry.id}, fetching again"
                )
                return None
            self.ledger.record(
                name,
                blob,
                str(actual),
                findings,
                sha256=sha256_hex(blob, actual),
                format=fmt,
                checks=checks,
            )
        lf = self._locked(f)
        if lf is not None and self.ledger.sha256(name, blob) != lf.sha256:
            return None
        self.repo.link(commit, f.path, name)
        report = FileReport(
            f.path,
            f.size,
            str(lf.digest if lf is not None else f.digest),
            tuple(findings),
            cached=True,
            location=str(self.repo.snapshot_file(commit, f.path)),
            strict=self.opts.strict,
            format=fmt,
            checks=checks,
        )
        return report, judgement

    def _download(
        self, transfer: Transfer, commit: str, f: RemoteFile
    ) -> tuple[FileReport, Judgement | None]:
        repo, s = self.repo, self.settings
        lf = self._locked(f)
        # Under a lock the transfer hashes every file with sha256 and the bytes are judged against the lock,
        # whatever digest the server gave (or did not give); its etag only keeps the transfer's identity checks.
        expected = lf.digest if lf is not None else f.digest
        spec = FetchSpec(
            url=resolve_url(s.endpoint, repo.repo_id, commit, f.path, s.repo_type),
            etag=f.etag,
            size=f.size,
            expected=expected,
            commit=commit,
            path=f.path,
        )
        attempts = 0
        transferred = 0
        history: list[Finding] = []
        result: FetchResult | None = None
        judgement: Judgement | None = None
        findings: Sequence[Finding] = ()
        changed_once = False
        meter = _FileMeter(self.progress, f.size)
        n = 0
        while n < self.opts.max_integrity_attempts:
            n += 1
            try:
                stream = StreamingCheck(f.path, f.size)  # the content scan rides on the digest's read
                meter.new_attempt()
                # --force starts over: the file's earlier partials are cleared, not resumed.
                result = transfer.fetch(
                    spec, repo.partials, fresh=n > 1 or self.force, on_progress=meter, observer=stream
                )
            except RemoteChanged:
                if changed_once:
                    raise
                changed_once = True
                n -= 1
                continue
            attempts += result.attempts
            transferred += result.bytes_transferred
            judgement = judge(
                result.data_path,
                f.path,
                expected_size=f.size,
                expected_digest=expected,
                actual_size=result.size,
                actual_digest=result.actual,
                streamed=stream,
                strict=self.opts.strict,
                against_lock=lf is not None,
                allow_imports=self.opts.allow_imports,
                root=repo.snapshot_dir(commit),
            )
            findings = judgement.findings
            if not judgement.mismatch and judgement.verdict is not Verdict.FAIL:
                name, note = self._published_name(f, result)
                if note is not None:
                    history.append(note)
                report = self._publish(commit, f, result, name, judgement, history, attempts, transferred)
                transfer.discard(result)  # the bytes moved to blobs/; drop the partial's sidecar
                return report, judgement
            if not judgement.mismatch:
                break  # the publisher's own bytes fail: downloading again cannot help
            if n >= self.opts.max_integrity_attempts:
                break
            history.append(
                info(
                    "transfer.refetched",
                    f"{f.path}: attempt {n} arrived damaged ({_damage_summary(findings)}); fetched again",
                    attempt=n,
                    actual=str(result.actual),
                )
            )
            self.progress.message(
                f"{f.path}: attempt {n} failed verification ({_damage_summary(findings)}); fetching again"
            )
            transfer.discard(result.data_path)
        assert result is not None and judgement is not None
        entry = quarantine_file(
            repo,
            result.data_path,
            path=f.path,
            commit=commit,
            etag=f.etag,
            expected_digest=str(expected),
            actual_digest=str(result.actual),
            findings=findings,
            source="download",
        )
        transfer.discard(result)  # the bytes moved to the quarantine; drop the partial's sidecar
        if lf is None or not repo.snapshot_file(commit, f.path).exists():
            # (under a lock, a link to a sound blob of the server's version stays: the snapshot is untouched)
            repo.unlink(commit, f.path)
        self.progress.message(f"{f.path}: FAILED verification; quarantined as {entry.id}")
        report = FileReport(
            f.path,
            f.size,
            str(expected),
            tuple(history) + tuple(findings),
            attempts=attempts,
            bytes_transferred=transferred,
            actual_digest=str(result.actual),
            quarantine_id=entry.id,
            strict=self.opts.strict,
            format=judgement.format,
            checks=judgement.checks,
        )
        return report, None  # the index check must see this shard as missing: no header of it

    def _published_name(self, f: RemoteFile, result: FetchResult) -> tuple[str, Finding | None]:
        """The blob name for bytes that passed: the server's etag, unless under a lock the bytes (which are
        the locked ones) do not hash to it. Then they are named by their locked sha256, with a
        ``lock.server_digest`` note: a server that names LFS files wrongly, or sends no LFS digest (so that its
        etag is the git id of the LFS pointer), cannot put bytes under a name they do not hash to."""
        lf = self._locked(f)
        if lf is None:
            return f.etag, None
        name = self._blob_name(f)
        if name == lf.sha256:
            return name, None if f.etag == lf.sha256 else server_digest(f.path, f.etag, lf.sha256)
        # A git blob id: cheap to check, since a real Hub stores only small files in git.
        if hash_file(result.data_path, "gitsha1").hexdigest == name:
            return name, None
        return lf.sha256, server_digest(f.path, f.etag, lf.sha256)

    def _publish(
        self,
        commit: str,
        f: RemoteFile,
        result: FetchResult,
        name: str,
        judgement: Judgement,
        history: Sequence[Finding],
        attempts: int,
        transferred: int,
    ) -> FileReport:
        """Move verified bytes to ``blobs/<name>``, record them in the ledger (with their sha256) and link
        them into the snapshot."""
        repo = self.repo
        lf = self._locked(f)
        findings = judgement.findings
        # The sha256 of the bytes, which a lockfile pins: the lock's, or the digest computed while they
        # arrived when it is one, else hashed now.
        try:
            sha256 = lf.sha256 if lf is not None else sha256_hex(result.data_path, result.actual)
        except OSError as exc:
            raise translate_os_error(exc, f"hashing {f.path}") from exc
        publish_verified(
            repo,
            self.ledger,
            result.data_path,
            name,
            str(Digest.from_etag(name)),
            findings,
            f.path,
            format=judgement.format,
            checks=judgement.checks,
            sha256=sha256,
        )
        repo.link(commit, f.path, name)
        return FileReport(
            f.path,
            f.size,
            str(lf.digest if lf is not None else f.digest),
            tuple(history) + tuple(findings),
            attempts=attempts,
            bytes_transferred=transferred,
            location=str(repo.snapshot_file(commit, f.path)),
            strict=self.opts.strict,
            format=judgement.format,
            checks=judgement.checks,
        )


def _naming(path: str, exc: BaseException) -> str:
    """``<path>: <error>``, without naming the path twice when the error's message already starts with it."""
    text = str(exc)
    return text if text.startswith(f"{path}: ") else f"{path}: {text}"


def set_aside_blob(
    repo: CacheRepo, commit: str, path: str, etag: str, expected: Digest, kind: str
) -> QuarantineEntry:
    """Quarantine ``blobs/<etag>`` when it is not a regular file (a symlink, maybe to outside the cache; a
    directory), so a verified copy can take its place: never followed or trusted, it is moved as it is (the
    link itself moves; whatever it points to is left alone), and ``path``'s snapshot entry is removed first
    so no reader gets what it leads to meanwhile."""
    finding = blob_not_regular(repo, path, etag, kind)
    repo.unlink(commit, path)
    return quarantine_file(
        repo,
        repo.blob_path(etag),
        path=path,
        commit=commit,
        etag=etag,
        expected_digest=str(expected),
        actual_digest=None,
        findings=[finding],
        source="cache",
    )


def publish_verified(
    repo: CacheRepo,
    ledger: Ledger,
    data_path: Path,
    etag: str,
    actual: str,
    findings: Sequence[Finding],
    path: str,
    *,
    format: str | None = None,
    checks: Sequence[str] = (),
    sha256: str | None = None,
) -> Path:
    """Publish bytes that passed their judgement as ``blobs/<etag>`` and record the verification in the
    ledger (``actual`` is the digest they hashed to); returns the blob path. ``path`` names the file in
    errors; ``format`` and ``checks`` are what the judgement recognised and ran, ``sha256`` the sha256 of the
    bytes when known (the ledger keeps it; see :meth:`~vcache.ledger.Ledger.record`). Linking it into a
    snapshot is the caller's next step."""
    blob = repo.publish_blob(data_path, etag)
    try:
        ledger.record(etag, blob, actual, findings, format=format, checks=checks, sha256=sha256)
    except OSError as exc:
        raise translate_os_error(exc, f"recording {path}") from exc
    return blob


def _damage_summary(findings: Sequence[Finding]) -> str:
    """``digest_mismatch; tensor.zero_rows in <tensor>``: the transport failure and what the bytes showed."""
    codes = [x.code for x in findings if x.code in MISMATCH_CODES]
    forensic = next((x for x in findings if x.tensor and x.severity is not Severity.INFO), None)
    if forensic is None:
        forensic = next((x for x in findings if x.code.startswith(("sniff.", "safetensors."))), None)
    if forensic is not None:
        codes.append(f"{forensic.code} in {forensic.tensor}" if forensic.tensor else forensic.code)
    return "; ".join(codes) or "unknown"


def export_local_dir(repo: CacheRepo, commit: str, files: Sequence[RemoteFile], local_dir: Path) -> Path:
    """Copy a verified snapshot's files into ``local_dir`` with huggingface_hub's local-dir metadata.

    The files are copied from verified blobs (never from the network), then the same
    ``.cache/huggingface/download/<path>.metadata`` records huggingface_hub writes are created so its
    ``local_dir`` mode recognises them as up to date.
    """
    import shutil

    meta_root = local_dir / ".cache" / "huggingface"
    for f in files:
        dest = local_dir / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.vcache.tmp")
        shutil.copyfile(repo.blob_path(f.etag), tmp)
        os.replace(tmp, dest)
        meta = meta_root / "download" / f"{f.path}.metadata"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(f"{commit}\n{f.etag}\n{time.time()}\n")
    (meta_root / ".gitignore").write_text("*")
    return local_dir


def snapshot_download(
    repo_id: str,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    allow_patterns: str | Sequence[str] | None = None,
    ignore_patterns: str | Sequence[str] | None = None,
    token: str | bool | None = None,
    max_workers: int = 8,
    force_download: bool = False,
    local_files_only: bool = False,
    endpoint: str | None = None,
    strict: bool = False,
    verify_signature: str | SignatureMethod | None = None,
    allow_imports: Collection[str] = (),
    lock: LockArg = None,
    **_ignored: Any,
) -> str:
    """Drop-in for ``huggingface_hub.snapshot_download`` that verifies every file; returns the snapshot path.

    Raises :class:`~vcache.errors.VerificationFailed` (a ``ValueError``) naming every failed file and its
    findings, instead of returning a folder that holds bad or missing files. Hub refusals and offline
    misses raise the errors huggingface_hub raises there too (see :mod:`vcache.errors`). Extra keyword
    arguments huggingface_hub accepts (``tqdm_class``, ``etag_timeout``, …) are accepted and ignored.
    ``verify_signature`` requires the publisher's model signature, as in :func:`pull`.
    ``allow_imports`` widens the allowlist of pickle globals, as for :func:`pull`.
    ``lock`` (default ``VCACHE_LOCK``) pins the repo to a lockfile's commit and bytes, as in :func:`pull`.
    """
    report = pull(
        repo_id,
        revision=revision,
        repo_type=repo_type,
        cache_dir=cache_dir,
        local_dir=local_dir,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
        token=token,
        max_workers=max_workers,
        force_download=force_download,
        local_files_only=local_files_only,
        endpoint=endpoint,
        strict=strict,
        verify_signature=verify_signature,
        allow_imports=allow_imports,
        lock=lock,
    )
    raise_for_report(report)
    assert report.snapshot_path is not None
    return report.snapshot_path


def hf_hub_download(
    repo_id: str,
    filename: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    repo_type: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    endpoint: str | None = None,
    strict: bool = False,
    allow_imports: Collection[str] = (),
    lock: LockArg = None,
    **_ignored: Any,
) -> str:
    """Drop-in for ``huggingface_hub.hf_hub_download``: one verified file; returns its path in the snapshot.

    ``allow_imports`` widens the allowlist of pickle globals, as for :func:`pull`. ``lock`` (default
    ``VCACHE_LOCK``) pins it to a lockfile's commit and bytes, as in :func:`pull`.
    """
    path = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
    report = pull(
        repo_id,
        revision=revision,
        repo_type=repo_type,
        cache_dir=cache_dir,
        local_dir=local_dir,
        token=token,
        force_download=force_download,
        local_files_only=local_files_only,
        endpoint=endpoint,
        strict=strict,
        files=[path],
        allow_imports=allow_imports,
        lock=lock,
    )
    raise_for_report(report)
    assert report.snapshot_path is not None
    return str(Path(report.snapshot_path) / path)


def raise_for_report(report: PullReport) -> None:
    """Raise :class:`VerificationFailed` (or the transfer error) when the report has failures; log warnings.

    Same precedence as the CLI's exit codes: :class:`VerificationFailed` when some file's bytes were judged
    bad, otherwise :class:`TransferError` when some file could not be fetched. Files that are only absent
    (offline, not in the cache) raise :class:`IncompleteSnapshot` instead, as huggingface_hub raises its
    ``IncompleteSnapshotError`` there: nothing's bytes were judged bad.
    """
    if report.errors and not report.judged_bad:
        raise TransferError("; ".join(report.errors), repo_id=report.repo_id)
    failed = report.failed

    def failing(fr: FileReport) -> list[Finding]:
        return [
            x
            for x in fr.findings
            if x.severity is Severity.FAIL or (report.strict and x.severity is Severity.WARN)
        ]

    if failed and all(x.code == "snapshot.missing_file" for fr in failed for x in failing(fr)):
        require_complete(report)
    if failed:
        lines = []
        findings: list[Finding] = []
        for fr in failed:
            bad = failing(fr)
            findings.extend(bad)
            where = f" (quarantined as {fr.quarantine_id})" if fr.quarantine_id else ""
            lines.append(f"  {fr.path}{where}: " + "; ".join(f"[{x.code}] {x.message}" for x in bad[:3]))
        raise VerificationFailed(
            f"{report.repo_id}: {len(failed)} file(s) failed verification:\n" + "\n".join(lines),
            findings,
            repo_id=report.repo_id,
        )
    for fr in report.files:
        for x in fr.findings:
            if x.severity is Severity.WARN:
                log.warning("%s: [%s] %s", fr.path, x.code, x.message)


def lock_repo(
    repo_id: str,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    max_workers: int | None = None,
    progress: Progress | None = None,
    verify_signature: str | SignatureMethod | None = None,
    allow_imports: Collection[str] = (),
) -> tuple[LockedRepo | None, PullReport]:
    """Pull ``repo_id`` (verified, without any lock) and make its lock entry from the verified bytes.

    Returns the entry (None when some file failed: nothing may be locked then) and the pull's report. The
    sha256 of a file comes from what vcache verified: the blob name of an LFS file, the sha256 the ledger
    recorded when a small file was verified (or the blob hashed while its ledger record still vouches for
    it). With ``verify_signature`` the pull also requires the publisher's signature (see
    :func:`pull`), the signature file is locked with the other files, and the entry records the
    method, so that every locked pull of the repo requires it too. ``allow_imports`` widens the allowlist of
    pickle globals for this pull, as for :func:`pull` (it is not recorded). Raises what
    :func:`pull` raises.
    """
    inc, exc = canonical_patterns(include), canonical_patterns(exclude)
    method = parse_method(verify_signature) if verify_signature is not None else None
    report = pull(
        repo_id,
        revision=revision,
        repo_type=repo_type,
        cache_dir=cache_dir,
        endpoint=endpoint,
        token=token,
        allow_patterns=list(inc) or None,
        ignore_patterns=list(exc) or None,
        max_workers=max_workers,
        progress=progress,
        lock=False,
        verify_signature=method,
        allow_imports=allow_imports,
    )
    if not report.ok or report.commit is None:
        return None, report
    settings = resolve_settings(cache_dir=cache_dir, repo_type=repo_type, local_files_only=True)
    repo = CacheRepo(settings.cache_dir, repo_id, settings.repo_type)
    ledger = Ledger(repo.ledger_dir)
    files = []
    for fr in report.files:
        sha256 = verified_sha256(repo, ledger, report.commit, fr.path)
        size = fr.size if fr.size is not None else os.stat(repo.snapshot_file(report.commit, fr.path)).st_size
        files.append(LockedFile(fr.path, size, sha256))
    entry = LockedRepo(
        repo_id=repo_id,
        repo_type=settings.repo_type,
        revision=revision or "main",
        commit=report.commit,
        include=inc,
        exclude=exc,
        files=tuple(sorted(files, key=lambda f: f.path)),
        signature=str(method) if method is not None else None,
    )
    return entry, report


__all__ = [
    "LockArg",
    "Progress",
    "PullOptions",
    "hf_hub_download",
    "lock_in_effect",
    "lock_repo",
    "pull",
    "raise_for_report",
    "snapshot_download",
]
