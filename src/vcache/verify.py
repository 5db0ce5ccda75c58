"""Verification of files already on disk: cache snapshots (trusting the ledger where it may), any folder,
and the whole cache (``vcache scan``). Offline by construction: nothing here touches the network.

What it decides is what a pull decides for fresh bytes (the same :func:`~vcache.checks.judge.judge`); the
difference is only where the expected digest comes from (the blob name, the tree cache, or nowhere for
folders that never came from a Hub) and whether a failing file may be moved (cache blobs are quarantined;
a user's own folder is only reported on).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcache.cache import CacheRepo, entry_kind, iter_repo_folders
from vcache.checks.judge import (
    Judgement,
    judge,
    lock_digest_mismatch,
    lock_size_mismatch,
    parsed_headers,
    still_stands,
)
from vcache.checks.safetensors import SafetensorsHeader
from vcache.errors import IncompleteSnapshot, OfflineError, UsageError
from vcache.hashing import Digest, hash_file, sha256_hex
from vcache.hub import COMMIT_RE
from vcache.ledger import EntryState, Ledger, entry_state, states_from_json
from vcache.lockfile import LockedFile, LockedRepo, missing_file
from vcache.partial import PartialInfo
from vcache.report import (
    FileReport,
    Finding,
    PullReport,
    Verdict,
    fail,
    findings_from_json,
    human_bytes,
    info,
    warn,
)

log = logging.getLogger(__name__)

INDEX_SUFFIX = ".safetensors.index.json"


def blob_not_regular(repo: CacheRepo, path: str, etag: str, kind: str) -> Finding:
    """The finding for a blob that is not a regular file (a symlink, a directory, a fifo...): never trusted,
    whatever it leads to, since what a symlink points to can change without the blob's stat changing."""
    blob = repo.blob_path(etag)
    what = kind
    if kind == "symlink":
        with contextlib.suppress(OSError):
            what = f"symlink to {os.readlink(blob)}"
    return fail(
        "cache.blob_not_regular",
        f"{path}: its blob {repo.folder_name}/blobs/{etag} is a {what}, not a regular file, so vcache does not "
        f"trust it (what it holds or points to can change unseen); run `vcache pull {repo.repo_id}` to set it "
        "aside and replace it with a verified copy",
        blob=str(blob),
        kind=kind,
    )


@dataclass(frozen=True)
class _Expected:
    path: str
    size: int | None
    etag: str | None


def _expected_files(repo: CacheRepo, commit: str) -> list[_Expected]:
    tree = repo.read_tree(commit)
    if tree is not None:
        return [_Expected(p, size, sha or blob) for p, (size, blob, sha) in sorted(tree.items())]
    snap = repo.snapshot_dir(commit)
    out = []
    for dirpath, _dirs, names in os.walk(snap):
        for n in names:
            full = Path(dirpath) / n
            rel = full.relative_to(snap).as_posix()
            out.append(_Expected(rel, None, None))
    return sorted(out, key=lambda e: e.path)


def resolve_cached_commit(repo: CacheRepo, revision: str | None) -> str:
    """The commit a revision names in the cache (offline), else :class:`OfflineError`."""
    if revision and COMMIT_RE.fullmatch(revision):
        if repo.snapshot_dir(revision).is_dir():
            return revision
        raise OfflineError(
            f"{repo.repo_id}@{revision[:12]} is not in the cache at {repo.cache_dir}; pull it first"
        )
    commit = repo.read_ref(revision or "main")
    if commit is None:
        # A snapshot folder no ref names is not taken for the revision (huggingface_hub does not either): it
        # may be an interrupted pull's (refs are written only once every file verified) or another commit.
        rev = revision or "main"
        snaps = repo.snapshots()
        held = ""
        if snaps:
            shown = ", ".join(c[:12] for c in snaps[:3]) + (", ..." if len(snaps) > 3 else "")
            held = (
                f"; the cache holds snapshot(s) {shown} that no ref names (a download by commit, or a pull "
                "that did not finish): pass --revision <commit> to use one on purpose"
            )
        raise OfflineError(
            f"{repo.repo_id}@{rev} is not in the cache at {repo.cache_dir} (no refs/{rev}){held}; "
            "or run `vcache pull` with network access first",
            repo_id=repo.repo_id,
        )
    return commit


def verify_snapshot(
    repo: CacheRepo,
    commit: str,
    *,
    deep: bool = False,
    strict: bool = False,
    quarantine: bool = True,
    only: Iterable[str] | None = None,
    revision: str | None = None,
    allow_imports: Collection[str] = (),
) -> PullReport:
    """Verify a cached snapshot offline: trust unchanged ledger records unless ``deep``; quarantine failures.

    Files the tree listing names but the snapshot lacks are failures (``snapshot.missing_file``), and so are
    blobs that are not regular files (``cache.blob_not_regular``: reported, never hashed or moved; a pull sets
    them aside and fetches the file again). Blobs without a valid record (written by another tool, changed
    since, or ``deep``) are re-hashed against their blob name and re-checked, and the record is written when
    they pass.

    Unless ``deep``, the snapshot record (``.vcache/ledger/snapshots/<commit>.json``) answers for every file
    whose link, blob and per-blob record are all unchanged since it was written, and remembers the repo
    checks' findings for an unchanged folder; it holds nothing the per-blob records and the files do not say,
    so the report is the same as without it. It is (re)written when the cache is writable.

    ``allow_imports`` (``module.name`` entries) widens the allowlist of pickle globals; a record whose verdict
    relied on globals allowed then but not now is not trusted (the file is judged again).
    """
    import time

    t0 = time.monotonic()
    ledger = Ledger(repo.ledger_dir)
    wanted = set(only) if only is not None else None
    expected = [e for e in _expected_files(repo, commit) if wanted is None or e.path in wanted]
    remembered = None if deep else _read_snapshot_record(ledger, commit)
    reports = _remembered_reports(
        repo, ledger, commit, expected, remembered, strict=strict, allow_imports=allow_imports
    )
    files_known = reports is not None
    judged: list[Judgement] = []
    if reports is None:
        reports = []
        for exp in expected:
            report, judgement = _verify_cached_file(
                repo,
                ledger,
                commit,
                exp,
                deep=deep,
                strict=strict,
                quarantine=quarantine,
                allow_imports=allow_imports,
            )
            reports.append(report)
            if judgement is not None:
                judged.append(judgement)
    snapshot = repo.snapshot_dir(commit)
    reports, repo_entry = _attach_remembered(
        snapshot, reports, strict=strict, remembered=remembered, headers=parsed_headers(judged)
    )
    if not deep and (not files_known or repo_entry is not None) and _writable(repo):
        _write_snapshot_record(repo, ledger, commit, remembered, repo_entry, refresh_files=not files_known)
    return PullReport(
        repo_id=repo.repo_id,
        repo_type=repo.repo_type,
        revision=revision,
        commit=commit,
        snapshot_path=str(snapshot),
        files=tuple(reports),
        elapsed=time.monotonic() - t0,
        strict=strict,
    )


# -- the snapshot record -------------------------------------------------------------------------------------
#
# ``files``: path -> {"state": entry_state of the snapshot entry (a link into blobs/), "etag", "record":
# entry_state of the per-blob record file, and the report fields that record gave: "size", "digest",
# "findings", "format", "checks"}. An entry answers only while the entry and the record file are both unchanged, so it says
# exactly what the per-blob record would (same record file, same blob stat token).
#
# ``repo``: a few {"key", "folder", "extra"} entries: the findings attach_repo_findings added (per path), for
# reports of that shape (key) and that folder (every top-level name with its entry_state; the repo checks
# read only top-level files and the listing).

#: Repo-check entries kept per snapshot record (one per set of files verified together, newest first).
_REPO_ENTRIES = 4


def _read_snapshot_record(ledger: Ledger, commit: str) -> dict[str, Any] | None:
    data = ledger.read_derived(ledger.snapshot_record_path(commit))
    return data if data is not None and data.get("commit") == commit else None


def _remembered_reports(
    repo: CacheRepo,
    ledger: Ledger,
    commit: str,
    expected: Sequence[_Expected],
    remembered: Mapping[str, Any] | None,
    *,
    strict: bool,
    allow_imports: Collection[str],
) -> list[FileReport] | None:
    """The reports the per-blob records give, when the snapshot record vouches for every expected file (and
    their verdicts stand under ``allow_imports``)."""
    files = remembered.get("files") if remembered is not None else None
    if not isinstance(files, dict) or not expected:
        return None
    # Plain strings, as CacheRepo.snapshot_file computes them (this runs on every offline load).
    base = os.path.normpath(repo.snapshot_dir(commit))
    out: list[FileReport] = []
    try:
        for exp in expected:
            entry = files.get(exp.path)
            if entry is None:
                return None
            snap = os.path.normpath(os.path.join(base, exp.path))
            if not snap.startswith(base + os.sep):
                return None  # the slow path names the unsafe path
            if entry_state(snap) != EntryState.from_json(entry["state"]):
                return None
            if ledger.record_state(entry["etag"]) != EntryState.from_json(entry["record"]):
                return None
            findings = findings_from_json(entry["findings"])
            if not still_stands(findings, allow_imports):
                return None
            out.append(
                FileReport(
                    exp.path,
                    entry["size"],
                    entry["digest"],
                    findings=findings,
                    cached=True,
                    location=snap,
                    strict=strict,
                    format=None if entry["format"] is None else str(entry["format"]),
                    checks=tuple(str(c) for c in entry["checks"]),
                )
            )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return out


def _remembered_file(repo: CacheRepo, ledger: Ledger, commit: str, path: str) -> dict[str, Any] | None:
    """The snapshot-record entry for one file: what its valid per-blob record says now (None: none)."""
    snap = repo.snapshot_file(commit, path)
    state = entry_state(snap)
    etag = repo.linked_etag(commit, path) if state is not None and state.link is not None else None
    if not etag:
        return None  # not a link into blobs/: always verified the slow way
    record_state = ledger.record_state(etag)
    rec = ledger.lookup(etag, repo.blob_path(etag))
    if rec is None or entry_state(snap) != state or ledger.record_state(etag) != record_state:
        return None  # no valid record, or something moved while we looked
    findings = [f.to_json() for f in rec.findings]
    if not _round_trips(rec.findings, findings):
        return None
    expected = _digest_for(etag)
    return {
        "state": state,
        "etag": etag,
        "record": record_state,
        "size": rec.size,
        "digest": str(expected) if expected else rec.digest,
        "findings": findings,
        "format": rec.format,
        "checks": list(rec.checks),
    }


def _round_trips(findings: Sequence[Finding], as_json: Sequence[Mapping[str, Any]]) -> bool:
    """True when the JSON form reads back as exactly these findings (else they are not remembered)."""
    try:
        return findings_from_json(json.loads(json.dumps(list(as_json)))) == tuple(findings)
    except (TypeError, ValueError):
        return False


def _write_snapshot_record(
    repo: CacheRepo,
    ledger: Ledger,
    commit: str,
    old: Mapping[str, Any] | None,
    repo_entry: dict[str, Any] | None,
    *,
    refresh_files: bool,
) -> None:
    files: dict[str, Any] = {}
    if refresh_files or old is None or not isinstance(old.get("files"), dict):
        for exp in _expected_files(repo, commit):  # every file of the commit, not only those asked for
            try:
                entry = _remembered_file(repo, ledger, commit, exp.path)
            except (OSError, ValueError):
                entry = None
            if entry is not None:
                files[exp.path] = entry
    else:
        files = dict(old["files"])
    entries = [e for e in (old or {}).get("repo", []) if isinstance(e, dict)]
    if repo_entry is not None:
        entries = [repo_entry] + [e for e in entries if e.get("key") != repo_entry["key"]]
    try:
        body = json.loads(json.dumps({"commit": commit, "files": files, "repo": entries[:_REPO_ENTRIES]}))
    except (TypeError, ValueError):
        return
    if old is not None and all(old.get(k) == v for k, v in body.items()):
        return  # e.g. a file that is never remembered (a copy, not a link): no rewrite on every verify
    ledger.write_derived(ledger.snapshot_record_path(commit), body)


def _folder_state(folder: Path) -> dict[str, EntryState | None]:
    """Every top-level name in ``folder`` with its entry_state (raises OSError when it cannot tell)."""
    base = os.fspath(folder)
    return {name: entry_state(os.path.join(base, name)) for name in sorted(os.listdir(base))}


def _same_states(stored: Any, now: Mapping[str, EntryState | None]) -> bool:
    """True when a record's ``{name: state}`` (as JSON gives it back) is exactly ``now``."""
    try:
        return states_from_json(stored) == now
    except ValueError:
        return False


def _repo_check_key(reports: Sequence[FileReport]) -> dict[str, Any]:
    """What of the reports attach_repo_findings looks at (besides the folder)."""
    names = {r.path for r in reports}
    return {
        "indexes": [
            r.path
            for r in reports
            if r.path.endswith(INDEX_SUFFIX) and "/" not in r.path and r.verdict.value != "fail"
        ],
        "any_index": any(n.endswith(INDEX_SUFFIX) for n in names),
        "single": "model.safetensors" in names,
    }


def _attach_remembered(
    folder: Path,
    reports: Sequence[FileReport],
    *,
    strict: bool,
    remembered: Mapping[str, Any] | None,
    headers: Mapping[str, SafetensorsHeader],
) -> tuple[list[FileReport], dict[str, Any] | None]:
    """:func:`attach_repo_findings`, answered from the snapshot record when the folder is unchanged.

    Returns the reports and, when they were computed afresh over a folder that did not change meanwhile,
    the entry to remember (else None).
    """
    from dataclasses import replace

    key = _repo_check_key(reports)
    try:
        before: dict[str, EntryState | None] | None = _folder_state(folder)
    except OSError:
        before = None
    if before is not None and remembered is not None:
        for entry in remembered.get("repo", []):
            if (
                not isinstance(entry, dict)
                or entry.get("key") != key
                or not _same_states(entry.get("folder"), before)
            ):
                continue
            try:
                extra = {path: findings_from_json(items) for path, items in entry["extra"].items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                break
            return [
                replace(r, findings=r.findings + extra[r.path]) if r.path in extra else r for r in reports
            ], None
    out = attach_repo_findings(folder, reports, strict=strict, headers=headers)
    if before is None:
        return out, None
    try:
        if _folder_state(folder) != before:
            return out, None
    except OSError:
        return out, None
    added: dict[str, list[dict[str, Any]]] = {}
    for old, new in zip(reports, out, strict=True):
        more = new.findings[len(old.findings) :]
        if more:
            added[new.path] = [f.to_json() for f in more]
            if not _round_trips(more, added[new.path]):
                return out, None
    return out, {"key": key, "folder": before, "extra": added}


# -- against a lockfile --------------------------------------------------------------------------------------


def verified_sha256(repo: CacheRepo, ledger: Ledger, commit: str, path: str, *, deep: bool = False) -> str:
    """The sha256 of the bytes ``snapshots/<commit>/<path>`` serves, for a file already verified against its
    blob name (by a pull, or by :func:`verify_snapshot`).

    A blob named by a sha256 was verified against that name: the name is the answer, nothing is read. A blob
    named by a git blob sha1 (a small file) has the sha256 its ledger record kept (unless ``deep``), else it
    is hashed now; so is a snapshot entry that is a copy rather than a link into ``blobs/``.
    """
    etag = repo.linked_etag(commit, path)
    if etag is None:
        return hash_file(repo.snapshot_file(commit, path), "sha256").hexdigest
    blob = repo.blob_path(etag)
    digest = _digest_for(etag)
    if digest is not None and digest.algorithm == "sha256":
        return digest.hexdigest
    if not deep:
        recorded = ledger.sha256(etag, blob)
        if recorded is not None:
            return recorded
    return hash_file(blob, "sha256").hexdigest


def verify_locked(
    repo: CacheRepo,
    locked: LockedRepo,
    *,
    deep: bool = False,
    strict: bool = False,
    quarantine: bool = True,
    only: Collection[str] | None = None,
    lockfile: str = "the lockfile",
    allow_imports: Collection[str] = (),
) -> PullReport:
    """Check the cached snapshot of a locked repo against its lock, offline.

    The locked commit's snapshot must hold every locked file (``only``: just these paths), each first
    verified as :func:`verify_snapshot` verifies it (the ledger fast path for an unchanged blob unless
    ``deep``; a blob that fails against its own name is quarantined when ``quarantine``), then compared with
    the lock's size and sha256 (``lock.size_mismatch``, ``lock.digest_mismatch``). A file the snapshot lacks
    fails with ``lock.missing_file`` (every file, when the repo is not in the cache at all). Files the
    snapshot holds that the lock does not list are not looked at. ``lockfile`` names the lock in messages;
    ``allow_imports`` widens the allowlist of pickle globals, as for :func:`verify_snapshot`.
    """
    import time
    from dataclasses import replace

    t0 = time.monotonic()
    commit = locked.commit
    wanted = [f for f in locked.files if only is None or f.path in only]
    snapshot = repo.snapshot_dir(commit)
    pull_hint = f"`vcache pull --lock {lockfile} {locked.repo_id}`"
    if not snapshot.is_dir():
        absent = (
            f"{locked.name}@{commit[:12]} is not in the cache at {repo.cache_dir}; fetch it with {pull_hint}"
        )
        return PullReport(
            repo_id=repo.repo_id,
            repo_type=repo.repo_type,
            revision=locked.revision,
            commit=commit,
            files=tuple(
                FileReport(
                    f.path,
                    f.size,
                    str(f.digest),
                    findings=(missing_file(f"{f.path}: {absent}", path=f.path),),
                    cached=True,
                    strict=strict,
                )
                for f in wanted
            ),
            elapsed=time.monotonic() - t0,
            strict=strict,
        )
    base = verify_snapshot(
        repo,
        commit,
        deep=deep,
        strict=strict,
        quarantine=quarantine,
        only=[f.path for f in wanted],
        revision=locked.revision,
        allow_imports=allow_imports,
    )
    by_path = {r.path: r for r in base.files}
    ledger = Ledger(repo.ledger_dir)
    reports: list[FileReport] = []
    for lf in wanted:
        report = by_path.get(lf.path)
        if report is None:  # the commit's tree listing does not name it: look at what the snapshot serves
            report = _judged_against_lock(
                repo, commit, lf, strict=strict, hint=pull_hint, allow_imports=allow_imports
            )
        elif report.verdict is not Verdict.FAIL:
            report = _compared_with_lock(repo, ledger, commit, lf, report, deep=deep)
        reports.append(report)
    return replace(base, files=tuple(reports), elapsed=time.monotonic() - t0)


def _compared_with_lock(
    repo: CacheRepo, ledger: Ledger, commit: str, lf: LockedFile, report: FileReport, *, deep: bool
) -> FileReport:
    """A passing report of a cached file, with the lock's size and sha256 compared."""
    from dataclasses import replace

    sha256 = verified_sha256(repo, ledger, commit, lf.path, deep=deep)
    size = report.size if report.size is not None else os.stat(repo.snapshot_file(commit, lf.path)).st_size
    extra: list[Finding] = []
    if size != lf.size:
        extra.append(lock_size_mismatch(lf.path, lf.size, size))
    if sha256 != lf.sha256:
        extra.append(lock_digest_mismatch(lf.path, lf.digest, Digest("sha256", sha256)))
    return replace(
        report,
        digest=str(lf.digest),
        actual_digest=None if sha256 == lf.sha256 else f"sha256:{sha256}",
        findings=report.findings + tuple(extra),
    )


def _judged_against_lock(
    repo: CacheRepo, commit: str, lf: LockedFile, *, strict: bool, hint: str, allow_imports: Collection[str]
) -> FileReport:
    """A locked file the commit's tree does not list: what the snapshot serves, judged against the lock."""
    snap = repo.snapshot_file(commit, lf.path)
    if not snap.exists():
        return FileReport(
            lf.path,
            lf.size,
            str(lf.digest),
            findings=(
                missing_file(
                    f"{lf.path} is locked but missing from the snapshot; fetch it with {hint}", path=lf.path
                ),
            ),
            cached=True,
            location=str(snap),
            strict=strict,
        )
    judgement = judge(
        snap,
        lf.path,
        expected_size=lf.size,
        expected_digest=lf.digest,
        strict=strict,
        against_lock=True,
        allow_imports=allow_imports,
        root=repo.snapshot_dir(commit),
    )
    actual = judgement.actual_digest
    return FileReport(
        lf.path,
        judgement.size,
        str(lf.digest),
        judgement.findings,
        actual_digest=str(actual) if actual is not None else None,
        cached=True,
        location=str(snap),
        strict=strict,
        format=judgement.format,
        checks=judgement.checks,
    )


def verify_in_place(
    repo: CacheRepo,
    commit: str,
    path: str,
    *,
    size: int | None,
    etag: str,
    strict: bool,
    allow_imports: Collection[str] = (),
) -> FileReport:
    """One file of a cached snapshot, hashed against the digest ``etag`` names and checked where it is (as
    :func:`verify_snapshot` does for a file without a valid ledger record), nothing moved or quarantined (a
    ledger record is written only where the cache is writable): for a cache vcache cannot write to. A file
    that is absent gets ``snapshot.missing_file`` or ``snapshot.broken_link``."""
    report, _ = _verify_cached_file(
        repo,
        Ledger(repo.ledger_dir),
        commit,
        _Expected(path, size, etag),
        deep=False,
        strict=strict,
        quarantine=False,
        allow_imports=allow_imports,
    )
    return report


def _verify_cached_file(
    repo: CacheRepo,
    ledger: Ledger,
    commit: str,
    exp: _Expected,
    *,
    deep: bool,
    strict: bool,
    quarantine: bool,
    allow_imports: Collection[str] = (),
) -> tuple[FileReport, Judgement | None]:
    """One file of a cached snapshot: its report, and the judgement made of it when it was judged now and
    is still what the snapshot serves (not answered from the ledger, not quarantined)."""
    from vcache.quarantine import quarantine_file

    snap = repo.snapshot_file(commit, exp.path)
    location = str(snap)
    if not os.path.lexists(snap):
        return FileReport(
            exp.path,
            exp.size,
            findings=(
                fail(
                    "snapshot.missing_file",
                    f"{exp.path} is listed for commit {commit[:12]} but missing from the snapshot; "
                    "run `vcache pull` to fetch it",
                ),
            ),
            location=location,
            strict=strict,
            cached=True,
        ), None
    if not snap.exists():
        return FileReport(
            exp.path,
            exp.size,
            findings=(
                fail(
                    "snapshot.broken_link",
                    f"{exp.path}: snapshot link points to a missing blob ({os.readlink(snap)}); "
                    "run `vcache pull` to fetch it again",
                ),
            ),
            location=location,
            strict=strict,
            cached=True,
        ), None
    linked = repo.linked_etag(commit, exp.path)
    if linked and exp.etag and linked != exp.etag:
        return FileReport(
            exp.path,
            exp.size,
            findings=(
                fail(
                    "snapshot.wrong_blob",
                    f"{exp.path}: the snapshot links blob {linked} but commit {commit[:12]} lists "
                    f"{exp.etag}; the snapshot was edited by hand or by a broken tool — run "
                    "`vcache pull --force` to relink it",
                    linked=linked,
                    expected=exp.etag,
                ),
            ),
            location=location,
            strict=strict,
            cached=True,
        ), None
    etag = linked or exp.etag
    blob = repo.blob_path(etag) if etag and linked else snap
    kind = entry_kind(blob)
    if linked and kind != "file":
        return FileReport(
            exp.path,
            exp.size,
            findings=(blob_not_regular(repo, exp.path, linked, str(kind)),),
            location=location,
            strict=strict,
            cached=True,
        ), None
    expected = _digest_for(etag)
    if etag and not deep:
        rec = ledger.lookup(etag, blob)
        if rec is not None and still_stands(rec.findings, allow_imports):
            return FileReport(
                exp.path,
                rec.size,
                str(expected) if expected else rec.digest,
                findings=rec.findings,
                cached=True,
                location=location,
                strict=strict,
                format=rec.format,
                checks=rec.checks,
            ), None
    judgement = judge(
        blob,
        exp.path,
        expected_size=exp.size,
        expected_digest=expected,
        strict=strict,
        allow_imports=allow_imports,
        root=repo.snapshot_dir(commit),
    )
    findings, actual = judgement.findings, judgement.actual_digest
    qid = None
    if judgement.verdict is Verdict.FAIL and quarantine and blob != snap and _writable(repo):
        entry = quarantine_file(
            repo,
            blob,
            path=exp.path,
            commit=commit,
            etag=etag,
            expected_digest=str(expected) if expected else None,
            actual_digest=str(actual) if actual else None,
            findings=findings,
            source="cache",
        )
        qid = entry.id
        ledger.forget(etag or "")
        _unlink_all(repo, etag or "")
    elif etag and expected is not None and actual == expected and kind == "file" and _writable(repo):
        # (a snapshot entry that is a symlink elsewhere, not a copy, has no record: it is hashed every time)
        ledger.record(
            etag,
            blob,
            str(actual),
            findings,
            format=judgement.format,
            checks=judgement.checks,
            sha256=sha256_hex(blob, actual),
        )
    return FileReport(
        exp.path,
        os.stat(entry.data).st_size if qid else exp.size,
        str(expected) if expected else None,
        tuple(findings),
        actual_digest=str(actual) if actual else None,
        cached=True,
        quarantine_id=qid,
        location=location,
        strict=strict,
        format=judgement.format,
        checks=judgement.checks,
    ), None if qid else judgement  # a quarantined file's bytes left the snapshot


def _digest_for(etag: str | None) -> Digest | None:
    if not etag:
        return None
    try:
        return Digest.from_etag(etag)
    except ValueError:
        return None


def _writable(repo: CacheRepo) -> bool:
    return os.access(repo.root, os.W_OK) and os.access(repo.blobs, os.W_OK)


def _unlink_all(repo: CacheRepo, etag: str) -> None:
    """Remove every snapshot entry (any commit) that points at a blob being quarantined."""
    for commit in repo.snapshots():
        snap = repo.snapshot_dir(commit)
        for dirpath, _dirs, names in os.walk(snap):
            for n in names:
                p = Path(dirpath) / n
                if p.is_symlink() and os.path.basename(os.readlink(p)) == etag:
                    p.unlink()


def attach_repo_findings(
    folder: Path,
    reports: Sequence[FileReport],
    *,
    strict: bool,
    headers: Mapping[str, SafetensorsHeader | None] | None = None,
    not_fetched: Collection[str] = (),
) -> list[FileReport]:
    """Run the sharded-index / config coherence checks over ``folder`` and attach them to the index's report.

    ``headers`` are safetensors headers already parsed by this run (keyed by repo path, as
    :func:`~vcache.checks.judge.parsed_headers` gives them), so none is parsed twice.
    ``not_fetched`` are repo paths a pull could not download: their absence is its transfer error, not a
    failure of the index (see :func:`~vcache.checks.index.check_index`).
    """
    from dataclasses import replace

    from vcache.checks.index import check_index

    out = list(reports)
    names = {r.path for r in reports}
    config = _read_json(folder / "config.json")
    for i, r in enumerate(out):
        if r.path.endswith(INDEX_SUFFIX) and "/" not in r.path and r.verdict.value != "fail":
            extra = check_index(folder, r.path, config=config, headers=headers, not_fetched=not_fetched)
            if extra:
                out[i] = replace(r, findings=r.findings + tuple(extra))
    if (
        config is not None
        and not any(n.endswith(INDEX_SUFFIX) for n in names)
        and "model.safetensors" in names
    ):
        from vcache.checks.index import check_config_coherence
        from vcache.checks.safetensors import read_header

        header = (headers or {}).get("model.safetensors") or read_header(folder / "model.safetensors")[0]
        if header is not None:
            extra = check_config_coherence(config, [t.name for t in header.tensors])
            for i, r in enumerate(out):
                if r.path == "model.safetensors" and extra:
                    out[i] = replace(r, findings=r.findings + tuple(extra))
    return out


def _read_json(path: Path) -> Mapping[str, Any] | None:
    from vcache.checks.sniff import read_json

    try:
        data = read_json(path)
    except (OSError, ValueError):  # reported as the file's own finding
        return None
    return data if isinstance(data, dict) else None


def verify_path(target: Path, *, strict: bool = False, allow_imports: Collection[str] = ()) -> PullReport:
    """Verify any file or folder on disk (no publisher digest known): structure and content, reported only.
    ``allow_imports`` (``module.name`` entries) widens the allowlist of pickle globals."""
    import time

    t0 = time.monotonic()
    if not target.exists():
        raise UsageError(f"{target} does not exist")
    if target.is_file():
        files = [(target, target.name)]
        folder = target.parent
    else:
        folder = target
        files = []
        for dirpath, dirs, names in os.walk(target):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for n in sorted(names):
                p = Path(dirpath) / n
                files.append((p, p.relative_to(target).as_posix()))
    reports = []
    judged: list[Judgement] = []
    for p, name in sorted(files, key=lambda x: x[1]):
        if not p.exists():
            reports.append(
                FileReport(
                    name,
                    findings=(fail("snapshot.broken_link", f"{name}: symlink points to a missing file"),),
                    location=str(p),
                    strict=strict,
                )
            )
            continue
        judgement = judge(p, name, strict=strict, allow_imports=allow_imports, root=folder)
        judged.append(judgement)
        reports.append(
            FileReport(
                name,
                judgement.size,
                findings=judgement.findings,
                location=str(p),
                strict=strict,
                format=judgement.format,
                checks=judgement.checks,
            )
        )
    if target.is_dir():
        reports = attach_repo_findings(folder, reports, strict=strict, headers=parsed_headers(judged))
    return PullReport(
        repo_id=None,
        files=tuple(reports),
        snapshot_path=str(target),
        elapsed=time.monotonic() - t0,
        strict=strict,
    )


def scan_cache(
    cache_dir: Path, *, deep: bool = False, strict: bool = False, allow_imports: Collection[str] = ()
) -> list[PullReport]:
    """``vcache scan``: every repo in the cache, any tool's, plus hygiene findings per repo.

    Snapshot files are verified as by :func:`verify_snapshot` (ledger trusted unless ``deep``) without
    quarantining — scan only reports. Hygiene: leftover ``.incomplete`` files in ``blobs/`` and resumable
    vcache partials.
    """
    reports = []
    for rtype, repo_id, _folder in iter_repo_folders(cache_dir):
        repo = CacheRepo(cache_dir, repo_id, rtype)
        for commit in repo.snapshots():
            reports.append(
                verify_snapshot(
                    repo, commit, deep=deep, strict=strict, quarantine=False, allow_imports=allow_imports
                )
            )
        hygiene = _hygiene(repo)
        if hygiene:
            reports.append(PullReport(repo_id=repo_id, repo_type=rtype, files=hygiene, strict=strict))
    return reports


def _hygiene(repo: CacheRepo) -> tuple[FileReport, ...]:
    out: list[FileReport] = []
    try:
        blobs = sorted(repo.blobs.iterdir())
    except OSError:
        blobs = []
    for b in blobs:
        if b.name.endswith(".incomplete"):
            size = os.stat(b).st_size
            out.append(
                FileReport(
                    f"blobs/{b.name}",
                    size,
                    findings=(
                        warn(
                            "cache.incomplete_file",
                            f"{repo.folder_name}/blobs/{b.name}: leftover partial download ({size} bytes) from an "
                            "interrupted download; `vcache pull` fetches the file again, then it can be deleted",
                        ),
                    ),
                    location=str(b),
                )
            )
    try:
        from vcache.partial import list_partials

        partials = list_partials(repo.partials)
    except (ImportError, OSError):
        partials = []
    if partials:
        used, by_path = _cached_versions(repo)
        out.extend(_partial_report(repo, p, used, by_path) for p in partials)
    return tuple(out)


def _cached_versions(repo: CacheRepo) -> tuple[set[str], dict[str, set[str]]]:
    """The blob etags the cached revisions use (tree listings and snapshot links), and each path's etags."""
    commits = set(repo.snapshots())
    with contextlib.suppress(OSError):
        commits.update(p.stem for p in (repo.root / "trees").glob("*.json") if COMMIT_RE.fullmatch(p.stem))
    used: set[str] = set()
    by_path: dict[str, set[str]] = {}
    for commit in sorted(commits):
        try:
            tree = repo.read_tree(commit) or {}
        except (OSError, ValueError):
            tree = {}
        for path, (_size, blob_id, sha) in tree.items():
            used.add(sha or blob_id)
            by_path.setdefault(path, set()).add(sha or blob_id)
        snap = repo.snapshot_dir(commit)
        for dirpath, _dirs, names in os.walk(snap):
            for n in names:
                rel = (Path(dirpath) / n).relative_to(snap).as_posix()
                etag = repo.linked_etag(commit, rel)
                if etag:
                    used.add(etag)
                    by_path.setdefault(rel, set()).add(etag)
    return used, by_path


def _partial_report(
    repo: CacheRepo, p: PartialInfo, used: set[str], by_path: Mapping[str, set[str]]
) -> FileReport:
    """``cache.partial`` (info) for a partial a pull resumes or is writing; ``cache.orphaned_partial`` (warn)
    for one no pull will ever resume, saying how to remove it."""
    import shlex
    import time

    from vcache.locks import lease_seconds

    what = p.repo_path or f"blob {p.etag[:12]}"
    where = f"{repo.folder_name}: partial download of {what} ({p.etag[:12]}"
    age = time.time() - p.updated_at
    orphaned: str | None = None
    if not p.valid:
        orphaned = f"it cannot be resumed ({p.problem})"
    elif repo.blob_path(p.etag).exists():
        orphaned = (
            f"this version of {what} is already in the cache (blobs/{p.etag[:12]}…), so no pull fetches it"
        )
    elif p.etag not in used and by_path.get(p.repo_path or "", set()) - {p.etag}:
        newer = ", ".join(sorted(e[:12] for e in by_path[p.repo_path or ""] - {p.etag}))
        orphaned = (
            f"the cached revisions have another version of {what} ({newer}), so no pull of them resumes it"
        )
    if orphaned is not None and age >= lease_seconds():
        try:
            held = os.stat(p.data_path).st_size
        except OSError:
            held = 0
        finding = warn(
            "cache.orphaned_partial",
            f"{where}, {human_bytes(held)} on disk) is orphaned: {orphaned}. It only takes space; remove it "
            f"with `rm -r {shlex.quote(str(p.path))}`",
        )
        return FileReport(f".vcache/partials/{p.path.name}", held, findings=(finding,), location=str(p.path))
    done = f"{p.completed} of {p.size} bytes" if p.size is not None else "size unknown"
    if age < lease_seconds():
        message = f"{where}, {done}) is being written (last written {age:.0f}s ago)"
    else:
        rtype = "" if repo.repo_type == "model" else f" --repo-type {repo.repo_type}"
        revision = f" --revision {p.commit}" if p.commit and COMMIT_RE.fullmatch(p.commit) else ""
        message = f"{where}, {done}); `vcache pull {repo.repo_id}{rtype}{revision}` resumes it"
    return FileReport(
        f".vcache/partials/{p.path.name}",
        p.size,
        findings=(info("cache.partial", message),),
        location=str(p.path),
    )


def require_complete(report: PullReport) -> None:
    """Raise :class:`IncompleteSnapshot` when files of the snapshot are missing."""
    missing = [f.path for f in report.files if any(x.code == "snapshot.missing_file" for x in f.findings)]
    if missing:
        raise IncompleteSnapshot(
            f"the cached snapshot of {report.repo_id} is missing {len(missing)} file(s): {', '.join(missing[:5])}; "
            "run `vcache pull` with network access",
            snapshot_path=report.snapshot_path,
        )
