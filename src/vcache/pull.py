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
from typing import TYPE_CHECKING, Any

from huggingface_hub.utils._paths import filter_repo_objects

from vcache.cache import CacheRepo, entry_kind, translate_os_error
from vcache.cluster import start_jitter
from vcache.config import (
    Settings,
    TransferSettings,
    give_up_seconds,
    resolve_settings,
)
from vcache.errors import (
    CacheNotWritable,
    DiskFull,
    EntryNotFound,
    IncompleteSnapshot,
    RemoteChanged,
    TransferError,
    UsageError,
    VcacheError,
    VerificationFailed,
)
from vcache.hashing import Digest
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
from vcache.ledger import Ledger
from vcache.locks import blob_lock, is_writable_dir, lease_seconds, lock_timeout, wait_for_other_writer
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
from vcache.retry import ProgressWatch
from vcache.usage import use

if TYPE_CHECKING:  # what the first request does not need is imported when used (see _import_later)
    from vcache.checks.judge import Judgement
    from vcache.quarantine import QuarantineEntry
    from vcache.signing import SignatureCheck, SignatureMethod
    from vcache.transfer import FetchResult, Transfer

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
    """
    validate_repo_id(repo_id)
    if revision is not None:
        validate_revision(revision)
    if files is not None and not files:
        raise UsageError(f"no file of {repo_id} was asked for (files=[]); name at least one path")
    signature = None
    if verify_signature is not None:
        from vcache.signing import prepare as prepare_signature

        signature = prepare_signature(verify_signature)
    opts = options or PullOptions()
    opts.strict = opts.strict or strict
    wanted = (*opts.allow_imports, *allow_imports)
    if wanted:  # none: the pickle module is not needed before the first request
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
    # Registered before anything is read, so gc leaves the repo's revisions and blobs alone (see usage).
    with use(repo_id, revision, cache_dir=settings.cache_dir, repo_type=settings.repo_type):
        if settings.offline:
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
        puller = _Puller(settings, repo, opts, progress or Progress(), force_download, signature)
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
    from vcache.verify import require_complete, resolve_cached_commit, verify_snapshot

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


def _import_later() -> None:
    """Import what a pull needs after its first request (the transfer, the checks, numpy for the content
    scan) while the Hub answers, not in the middle of the first downloads."""
    import importlib

    # numpy (imported by the tensor scan) last: the transfer is needed first.
    for name in (
        "vcache.transfer",
        "vcache.checks.judge",
        "vcache.verify",
        "vcache.quarantine",
        "vcache.checks.tensors",
    ):
        importlib.import_module(name)


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
    ):
        self.settings = settings
        self.signature = signature
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.force = force
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
        # The transfer and the checks (the content scan needs numpy) are imported while the Hub answers the
        # listing, not in the middle of the first downloads (where numpy takes 0.1-0.2 s of CPU the transfer's
        # ramp-up would misread).
        threading.Thread(target=_import_later, name="vcache-import", daemon=True).start()
        start_jitter()  # VCACHE_START_JITTER: N nodes started together do not all ask the Hub at once
        # The metadata client shares the transfer's retry policy and clock (tests inject a fake clock).
        ts = self.transfer_settings
        with HubClient(s.endpoint, s.token, watch=self.watch, policy=ts.policy, clock=ts.clock) as hub:
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
            sig = self.signature.signature_file if self.signature is not None else None
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
                listing: list[RemoteFile] | None = None
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
                    remote += [f for f in listing if f.path == sig]  # checked whatever the patterns select
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
            from vcache.transfer import Transfer

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
        snapshot = self.repo.snapshot_dir(commit)
        from vcache.checks.judge import parsed_headers
        from vcache.verify import attach_repo_findings

        ordered_reports = attach_repo_findings(
            snapshot,
            ordered_reports,
            strict=self.opts.strict,
            headers=parsed_headers(judged),
            not_fetched=not_fetched,
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
        if report.ok and not self.read_only:
            # Written only when they change (a cache shared read-only by its readers is not written to).
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

    # -- planning ---------------------------------------------------------------------------------------------
    def _cached_report(self, commit: str, f: RemoteFile) -> FileReport | None:
        """A report for a file already verified in the cache (linking it if needed), else None (fetch it)."""
        from vcache.checks.judge import still_stands

        if self.force:
            return None
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
        return FileReport(
            f.path,
            f.size,
            str(f.digest),
            rec.findings,
            cached=True,
            location=str(self.repo.snapshot_file(commit, f.path)),
            strict=self.opts.strict,
            format=rec.format,
            checks=rec.checks,
        )

    def _verified_in_place(self, commit: str, f: RemoteFile) -> FileReport | None:
        """On a read-only cache: the file the snapshot serves, hashed against the listing's digest and checked
        where it is (nothing written or moved); None when the snapshot does not serve it."""
        from vcache.verify import verify_in_place

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

    # -- one file ---------------------------------------------------------------------------------------------
    def _fetch_one(
        self, transfer: Transfer, commit: str, f: RemoteFile
    ) -> tuple[FileReport, Judgement | None]:
        """Settle one file not verified in the cache: adopt the blob already there, or download it. Returns
        its report and, when its bytes were judged now and published, the judgement (with their header)."""
        repo = self.repo
        what = f"{repo.repo_id}/{f.path}"
        with blob_lock(repo.lock_path(f.etag), what=what) as held:
            blob = repo.blob_path(f.etag)
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
                self._set_aside(commit, f, kind)
            elif kind == "file" and not self.force:
                settled = self._adopt_existing_blob(commit, f, blob)
                if settled is not None:
                    return settled
            return self._download(transfer, commit, f)

    def _set_aside(self, commit: str, f: RemoteFile, kind: str) -> None:
        """A blob that is not a regular file: set aside (:func:`set_aside_blob`) and the file fetched again."""
        entry = set_aside_blob(self.repo, commit, f.path, f.etag, f.digest, kind)
        self.progress.message(
            f"{f.path}: its blob is a {kind}, not a regular file; set aside as {entry.id}, fetching again"
        )

    def _adopt_existing_blob(
        self, commit: str, f: RemoteFile, blob: Path
    ) -> tuple[FileReport, Judgement | None] | None:
        """A blob is already there (another process, or huggingface_hub): trust it only after checking it.
        None when it failed (it is quarantined: fetch the file)."""
        from vcache.checks.judge import judge, still_stands
        from vcache.quarantine import quarantine_file

        rec = self.ledger.lookup(f.etag, blob)
        judgement = None
        if rec is not None and still_stands(rec.findings, self.opts.allow_imports):
            findings: Sequence[Finding] = rec.findings
            fmt, checks = rec.format, rec.checks
        else:
            judgement = judge(
                blob,
                f.path,
                expected_size=f.size,
                expected_digest=f.digest,
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
                    etag=f.etag,
                    expected_digest=str(f.digest),
                    actual_digest=str(actual) if actual else None,
                    findings=findings,
                    source="cache",
                )
                self.repo.unlink(commit, f.path)
                self.progress.message(
                    f"{f.path}: cached copy failed verification; quarantined as {entry.id}, fetching again"
                )
                return None
            self.ledger.record(f.etag, blob, str(actual), findings, format=fmt, checks=checks)
        self.repo.link(commit, f.path, f.etag)
        report = FileReport(
            f.path,
            f.size,
            str(f.digest),
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
        from vcache.checks import StreamingCheck
        from vcache.checks.judge import judge
        from vcache.quarantine import quarantine_file
        from vcache.transfer import FetchSpec

        repo, s = self.repo, self.settings
        spec = FetchSpec(
            url=resolve_url(s.endpoint, repo.repo_id, commit, f.path, s.repo_type),
            etag=f.etag,
            size=f.size,
            expected=f.digest,
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
                expected_digest=f.digest,
                actual_size=result.size,
                actual_digest=result.actual,
                streamed=stream,
                strict=self.opts.strict,
                allow_imports=self.opts.allow_imports,
                root=repo.snapshot_dir(commit),
            )
            findings = judgement.findings
            if not judgement.mismatch and judgement.verdict is not Verdict.FAIL:
                report = self._publish(commit, f, result, judgement, history, attempts, transferred)
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
            expected_digest=str(f.digest),
            actual_digest=str(result.actual),
            findings=findings,
            source="download",
        )
        transfer.discard(result)  # the bytes moved to the quarantine; drop the partial's sidecar
        repo.unlink(commit, f.path)
        self.progress.message(f"{f.path}: FAILED verification; quarantined as {entry.id}")
        report = FileReport(
            f.path,
            f.size,
            str(f.digest),
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

    def _publish(
        self,
        commit: str,
        f: RemoteFile,
        result: FetchResult,
        judgement: Judgement,
        history: Sequence[Finding],
        attempts: int,
        transferred: int,
    ) -> FileReport:
        repo = self.repo
        findings = judgement.findings
        publish_verified(
            repo,
            self.ledger,
            result.data_path,
            f.etag,
            str(result.actual),
            findings,
            f.path,
            format=judgement.format,
            checks=judgement.checks,
        )
        repo.link(commit, f.path, f.etag)
        return FileReport(
            f.path,
            f.size,
            str(f.digest),
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
    from vcache.quarantine import quarantine_file
    from vcache.verify import blob_not_regular

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
) -> Path:
    """Publish bytes that passed their judgement as ``blobs/<etag>`` and record the verification in the
    ledger (``actual`` is the digest they hashed to); returns the blob path. ``path`` names the file in
    errors; ``format`` and ``checks`` are what the judgement recognised and ran. Linking it into a snapshot is
    the caller's next step."""
    blob = repo.publish_blob(data_path, etag)
    try:
        ledger.record(etag, blob, actual, findings, format=format, checks=checks)
    except OSError as exc:
        raise translate_os_error(exc, f"recording {path}") from exc
    return blob


def _damage_summary(findings: Sequence[Finding]) -> str:
    """``digest_mismatch; tensor.zero_rows in <tensor>``: the transport failure and what the bytes showed."""
    from vcache.checks.judge import MISMATCH_CODES

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
    **_ignored: Any,
) -> str:
    """Drop-in for ``huggingface_hub.snapshot_download`` that verifies every file; returns the snapshot path.

    Raises :class:`~vcache.errors.VerificationFailed` (a ``ValueError``) naming every failed file and its
    findings, instead of returning a folder that holds bad or missing files. Hub refusals and offline
    misses raise the errors huggingface_hub raises there too (see :mod:`vcache.errors`). Extra keyword
    arguments huggingface_hub accepts (``tqdm_class``, ``etag_timeout``, …) are accepted and ignored.
    ``verify_signature`` requires the publisher's model signature, as in :func:`pull`.
    ``allow_imports`` widens the allowlist of pickle globals, as for :func:`pull`.
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
    **_ignored: Any,
) -> str:
    """Drop-in for ``huggingface_hub.hf_hub_download``: one verified file; returns its path in the snapshot.
    ``allow_imports`` widens the allowlist of pickle globals, as for :func:`pull`."""
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
    from vcache.verify import require_complete

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


__all__ = ["Progress", "PullOptions", "hf_hub_download", "pull", "raise_for_report", "snapshot_download"]
