"""The ``vcache`` command line: pull, verify, scan, quarantine, demo, lock, cluster.

Exit codes (documented in the README): 0 nothing failed, 1 a file failed verification, 2 usage error,
3 transfer or Hub error. Progress goes to stderr; results (tables or ``--json``) go to stdout. The token
is never printed.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from vcache._version import __version__
from vcache.config import limit_blas_threads
from vcache.errors import HubError, TransferError, UsageError, VcacheError
from vcache.report import PullReport, Severity, Verdict, human_bytes

if TYPE_CHECKING:
    from vcache.lifecycle import CleanupReport, Plan, Removal, Skip

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TRANSFER = 0, 1, 2, 3

# OPENBLAS_NUM_THREADS=1 unless set: before anything imports numpy, which nothing above does.
limit_blas_threads()


def _die(exc: BaseException, code: int) -> NoReturn:
    click.echo(f"vcache: error: {exc}", err=True)
    sys.exit(code)


def _exit_code(reports: Sequence[PullReport]) -> int:
    """1 when some file's bytes were judged bad; otherwise 3 when something could not be fetched; else 0."""
    if any(r.judged_bad for r in reports):
        return EXIT_FAILED
    if any(r.errors for r in reports):
        return EXIT_TRANSFER
    return EXIT_OK


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vcache")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """vcache: verified, resumable Hugging Face Hub downloads into a standard HF cache."""
    # A file-size limit (RLIMIT_FSIZE) must surface as EFBIG -> DiskFull with a resumable partial, not as
    # SIGXFSZ killing the process mid-write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def run() -> NoReturn:
    """The ``vcache`` command (the console script and ``python -m vcache``): :func:`main`, then a quick exit.

    Once the command has returned, the exit handlers have run and the output is flushed, tearing the
    interpreter down (freeing every module and object: 0.04-0.08 s after a pull, measured) does nothing for
    the user, so the process ends with ``os._exit`` and the same exit status. If a non-daemon thread is still
    running (none of vcache's are), the process exits the ordinary way instead, which waits for it.
    """
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:
        code = None
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if any(t.is_alive() for t in others):
        sys.exit(code)
    if code is None or isinstance(code, int):
        status = code or 0
    else:  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: Python would report it and exit 120
            status = status or 120
    os._exit(status & 0xFF)


_allow_import_opt = click.option(
    "--allow-import",
    "allow_imports",
    multiple=True,
    metavar="MODULE.NAME",
    help="Accept this pickle global beyond what torch.load(weights_only=True) accepts, for a repo you trust "
    "(repeatable). Globals that run code (os.system, builtins.eval...) are never accepted.",
)


@main.command()
@click.argument("repo_ids", nargs=-1, metavar="REPO_ID...")
@click.option("--revision", help="Branch, tag, commit or refs/pr/N (default: main).")
@click.option(
    "--repo-type", type=click.Choice(["model", "dataset", "space"]), default="model", show_default=True
)
@click.option("--include", "include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--exclude", "exclude", multiple=True, help="Skip files matching this glob (repeatable).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="HF cache root (default: HF_HUB_CACHE).")
@click.option("--local-dir", type=click.Path(path_type=Path), help="Also place the verified files here.")
@click.option("--workers", type=click.IntRange(1, 64), help="Files fetched in parallel (default 8).")
@click.option("--token", help="Hub token (default: HF_TOKEN / the stored login).")
@click.option("--strict", is_flag=True, help="Treat warnings as failures.")
@click.option(
    "--force",
    is_flag=True,
    help="Fetch every file again from byte 0, ignoring verified blobs and partial downloads.",
)
@click.option(
    "--verify-signature",
    "verify_signature",
    metavar="METHOD",
    help="Require the repo's model.sig (OpenSSF model signing) from key:PUBLIC_KEY.pem, "
    "certificate:CHAIN.pem or sigstore:IDENTITY@ISSUER, matching every pulled file. "
    "Needs pip install 'vcache[signing]'.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the PullReport as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_allow_import_opt
@click.option(
    "--lock",
    "lockfile",
    type=click.Path(path_type=Path),
    help="Pull the commit and bytes this lockfile pins (default: VCACHE_LOCK); no REPO_ID: every locked repo.",
)
def pull(
    repo_ids: tuple[str, ...],
    revision: str | None,
    repo_type: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    cache_dir: Path | None,
    local_dir: Path | None,
    workers: int | None,
    token: str | None,
    strict: bool,
    force: bool,
    verify_signature: str | None,
    as_json: bool,
    quiet: bool,
    allow_imports: tuple[str, ...],
    lockfile: Path | None,
) -> None:
    """Download REPO_ID, verifying every file; exit 1 if any file fails verification.

    Under a lockfile (--lock or VCACHE_LOCK) every file is checked against the lock's sha256, the locked
    commit is pulled whatever the branch says now, and with no REPO_ID every locked repo is pulled; a
    signature method the lock records for a repo is required (--verify-signature, if given, must match it).
    """
    from vcache.config import resolve_lock_path
    from vcache.console import TqdmProgress
    from vcache.lockfile import read_lock
    from vcache.pull import pull as do_pull

    progress = TqdmProgress(quiet or as_json)
    reports: list[PullReport] = []
    try:
        lock_path = resolve_lock_path(lockfile)
        lock = read_lock(lock_path) if lock_path is not None else None
        targets: list[tuple[str, str]] = [(r, repo_type) for r in repo_ids]
        if lock is None and len(targets) != 1:
            raise UsageError(
                "give one REPO_ID (or several with --lock PATH, or none to pull every locked repo)"
            )
        if lock is not None and not targets:
            targets = [(r.repo_id, r.repo_type) for r in lock.repos]
        for repo_id, rtype in targets:
            reports.append(
                do_pull(
                    repo_id,
                    revision=revision,
                    repo_type=rtype,
                    cache_dir=cache_dir,
                    local_dir=local_dir,
                    allow_patterns=list(include) or None,
                    ignore_patterns=list(exclude) or None,
                    token=token,
                    max_workers=workers,
                    force_download=force,
                    strict=strict,
                    progress=progress.sink,
                    verify_signature=verify_signature,
                    allow_imports=allow_imports,
                    lock=lock if lock is not None else False,
                )
            )
    except UsageError as exc:
        progress.close()
        _die(exc, EXIT_USAGE)
    except (HubError, TransferError, VcacheError, OSError) as exc:
        progress.close()
        _die(exc, EXIT_TRANSFER)
    progress.close()
    _finish(reports, as_json, quiet, pull_summary=True)


def _finish(reports: list[PullReport], as_json: bool, quiet: bool, *, pull_summary: bool = False) -> NoReturn:
    from vcache.console import print_table

    code = _exit_code(reports)
    if as_json:
        doc: Any = (
            reports[0].to_json()
            if len(reports) == 1
            else {
                "verdict": max(
                    (r.verdict for r in reports),
                    key=lambda v: ["ok", "warn", "fail"].index(v.value),
                    default=Verdict.OK,
                ).value,
                "reports": [r.to_json() for r in reports],
                "files": [f for r in reports for f in r.to_json()["files"]],
            }
        )
        click.echo(json.dumps(doc, indent=2))
        sys.exit(code)
    for r in reports:
        if not quiet or r.verdict is not Verdict.OK:
            title = None
            if r.repo_id:
                title = f"{r.repo_id}@{(r.commit or '')[:12]}: {r.verdict.value}"
            elif r.snapshot_path:
                title = f"{r.snapshot_path}: {r.verdict.value}"
            print_table(r, title=title)
    if pull_summary and reports and reports[0].snapshot_path:
        r = reports[0]
        moved = sum(f.bytes_transferred for f in r.files)
        click.echo(
            f"{len(r.files)} file(s), {human_bytes(moved)} transferred in {r.elapsed:.1f}s; snapshot: {r.snapshot_path}"
        )
    sys.exit(code)


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--revision", help="For repo-id targets: which revision (default: main).")
@click.option("--repo-type", type=click.Choice(["model", "dataset", "space"]), default="model")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="HF cache root (default: HF_HUB_CACHE).")
@click.option("--deep", is_flag=True, help="Re-hash and re-scan even files the ledger vouches for.")
@click.option("--strict", is_flag=True, help="Treat warnings as failures.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_allow_import_opt
@click.option(
    "--lock",
    "lockfile",
    type=click.Path(path_type=Path),
    help="Check the cache against this lockfile: every locked file present with the locked sha256.",
)
def verify(
    targets: tuple[str, ...],
    revision: str | None,
    repo_type: str,
    cache_dir: Path | None,
    deep: bool,
    strict: bool,
    as_json: bool,
    allow_imports: tuple[str, ...],
    lockfile: Path | None,
) -> None:
    """Verify repos in the cache, snapshot folders, or any files/folders (offline).

    TARGET is a repo id in the cache (org/name), a snapshot folder, or any file or folder on disk.
    With no TARGET, every repo in the cache is verified. With --lock, TARGETs are locked repo ids (none:
    every repo in the lockfile), each checked against the lock; a locked repo missing from the cache fails.
    """
    from vcache.api import verify as do_verify

    try:
        reports = do_verify(
            list(targets),
            revision=revision,
            repo_type=repo_type,
            cache_dir=cache_dir,
            deep=deep,
            strict=strict,
            allow_imports=allow_imports,
            lock=lockfile,
        )
    except UsageError as exc:
        _die(exc, EXIT_USAGE)
    except (VcacheError, OSError) as exc:
        _die(exc, EXIT_TRANSFER)
    _finish(reports, as_json, False)


@main.command()
@click.option("--cache-dir", type=click.Path(path_type=Path), help="HF cache root (default: HF_HUB_CACHE).")
@click.option("--deep", is_flag=True, help="Re-hash and re-scan every blob, ignoring the ledger.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_allow_import_opt
def scan(cache_dir: Path | None, deep: bool, as_json: bool, allow_imports: tuple[str, ...]) -> None:
    """Check the whole HF cache (any tool's repos): one line per problem, exit 1 if anything failed."""
    from vcache.checks import coverage
    from vcache.checks.pickles import parse_allow_imports
    from vcache.config import default_cache_dir
    from vcache.verify import scan_cache

    root = cache_dir or default_cache_dir()
    if not root.is_dir():
        _die(UsageError(f"no cache at {root}"), EXIT_USAGE)
    try:
        allowed = parse_allow_imports(allow_imports)
    except ValueError as exc:
        _die(UsageError(str(exc)), EXIT_USAGE)
    reports = scan_cache(root, deep=deep, allow_imports=allowed)
    if as_json:
        _finish(reports, True, False)
    problems = 0
    for r in reports:
        for f in r.files:
            notable = [x for x in f.findings if x.severity is not Severity.INFO]
            if not notable:
                continue
            problems += 1
            x = sorted(notable, key=lambda x: x.severity is not Severity.FAIL)[0]
            where = f"{r.repo_id}@{(r.commit or '')[:12]}" if r.commit else str(r.repo_id)
            click.echo(f"{x.severity.value.upper():<4}  {where}  {f.path}: [{x.code}] {x.message}")
    files = sum(len(r.files) for r in reports)
    levels = [coverage(f.format, f.checks) for r in reports if r.commit for f in r.files]
    less = [f"{levels.count(w)} {w}" for w in ("partial", "digest only", "unchecked") if w in levels]
    click.echo(
        f"scanned {len({r.repo_id for r in reports})} repo(s), {files} file(s) in {root}: "
        f"{problems} problem(s)" + (f"; not fully checked: {', '.join(less)}" if less else "")
    )
    sys.exit(_exit_code(reports))


@main.group()
def quarantine() -> None:
    """List, show, restore or purge quarantined files."""


def _cache(cache_dir: Path | None) -> Path:
    from vcache.config import default_cache_dir

    return cache_dir or default_cache_dir()


_cache_opt = click.option("--cache-dir", type=click.Path(path_type=Path), help="HF cache root.")


@quarantine.command("list")
@_cache_opt
@click.option("--json", "as_json", is_flag=True)
def q_list(cache_dir: Path | None, as_json: bool) -> None:
    """List quarantined files."""
    from vcache.quarantine import list_entries

    entries = list_entries(_cache(cache_dir))
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    if not entries:
        click.echo("quarantine is empty")
    for e in entries:
        codes = ",".join(sorted({f.code for f in e.findings if f.severity is Severity.FAIL})) or "-"
        click.echo(f"{e.id}  {e.repo_id}  {e.path}  {human_bytes(e.size)}  {codes}")


@quarantine.command("show")
@click.argument("qid")
@_cache_opt
def q_show(qid: str, cache_dir: Path | None) -> None:
    """Show one entry's report."""
    from vcache.quarantine import find_entry

    try:
        e = find_entry(_cache(cache_dir), qid)
    except UsageError as exc:
        _die(exc, EXIT_USAGE)
    click.echo(json.dumps(e.to_json(), indent=2))
    click.echo(f"bytes: {e.data}")


@quarantine.command("restore")
@click.argument("qid")
@click.option(
    "--to",
    "to",
    type=click.Path(),  # a str: a trailing slash says "a folder"
    help="Copy the bytes into this folder, or to this file, instead of back into the cache.",
)
@_cache_opt
def q_restore(qid: str, to: str | None, cache_dir: Path | None) -> None:
    """Put a quarantined file back into the cache (an explicit override), or copy it out with --to."""
    from vcache.quarantine import restore

    try:
        dest = restore(_cache(cache_dir), qid, to=to)
    except UsageError as exc:
        _die(exc, EXIT_USAGE)
    except (VcacheError, OSError) as exc:
        _die(exc, EXIT_TRANSFER)
    click.echo(f"restored to {dest}")


@quarantine.command("purge")
@click.argument("qid", required=False)
@click.option("--all", "purge_all", is_flag=True, help="Delete every entry.")
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    help="Delete entries quarantined this long ago (30d, 12h).",
)
@_cache_opt
def q_purge(qid: str | None, purge_all: bool, older_than: str | None, cache_dir: Path | None) -> None:
    """Delete a quarantined file (ID), all of them (--all), or the old ones (--older-than DURATION).

    With `vcache gc --purge-quarantine`, the only commands that delete quarantined files.
    """
    from vcache.lifecycle import parse_duration
    from vcache.quarantine import purge

    if sum([qid is not None, purge_all, older_than is not None]) != 1:
        _die(UsageError("give exactly one of ID, --all or --older-than DURATION"), EXIT_USAGE)
    try:
        age = parse_duration(older_than) if older_than is not None else None
        ids = purge(_cache(cache_dir), qid, older_than=age)
    except UsageError as exc:
        _die(exc, EXIT_USAGE)
    click.echo(f"purged {len(ids)} entr{'y' if len(ids) == 1 else 'ies'}")


@main.command()
@click.option(
    "--keep", type=click.Path(path_type=Path), help="Work in this folder and keep it (default: a temp dir)."
)
def demo(keep: Path | None) -> None:
    """Offline demo: a local Hub serves a generated model, one transfer is corrupted, vcache catches it."""
    from vcache.demo import run_demo

    sys.exit(run_demo(keep))


@main.command("lock")
@click.argument("specs", nargs=-1, required=True, metavar="REPO_ID[@REVISION]...")
@click.option("--include", "include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--exclude", "exclude", multiple=True, help="Skip files matching this glob (repeatable).")
@click.option(
    "--repo-type", type=click.Choice(["model", "dataset", "space"]), default="model", show_default=True
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("vcache.lock"),
    show_default=True,
    help="The lockfile to write (other repos in it are kept as they are).",
)
@click.option(
    "--update",
    is_flag=True,
    help="Move each named repo of the lockfile to the current commit of its recorded revision and patterns.",
)
@click.option("--cache-dir", type=click.Path(path_type=Path), help="HF cache root (default: HF_HUB_CACHE).")
@click.option("--workers", type=click.IntRange(1, 64), help="Files fetched in parallel (default 8).")
@click.option("--token", help="Hub token (default: HF_TOKEN / the stored login).")
@click.option(
    "--verify-signature",
    "verify_signature",
    metavar="METHOD",
    help="Require the repo's model.sig from key:PUBLIC_KEY.pem, certificate:CHAIN.pem or "
    "sigstore:IDENTITY@ISSUER, lock it with the other files, and record METHOD: every locked pull of the "
    "repo then requires it. Needs pip install 'vcache[signing]'.",
)
@_allow_import_opt
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def lock(
    specs: tuple[str, ...],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    repo_type: str,
    output: Path,
    update: bool,
    cache_dir: Path | None,
    workers: int | None,
    token: str | None,
    verify_signature: str | None,
    allow_imports: tuple[str, ...],
    quiet: bool,
) -> None:
    """Pin repos: pull them (verified) and write each file's size and sha256 to a lockfile.

    `vcache pull --lock` then fetches exactly these bytes from any server, and `vcache verify --lock`
    checks the cache against them. With --update, REPO_IDs already in the lockfile move to the current
    commit of their recorded revision, and what changed is printed (a signature method recorded for the
    repo is required again). Nothing is written unless every file verified (exit 1 otherwise).
    """
    from vcache.console import TqdmProgress, print_table
    from vcache.lockfile import Lock, LockDiff
    from vcache.pull import lock_repo

    progress = TqdmProgress(quiet)
    failed: list[PullReport] = []
    lines: list[str] = []
    try:
        current = Lock.read(output) if output.exists() else Lock(source=output)
        for spec in specs:
            repo_id, at, revision = spec.partition("@")
            if at and not revision:
                raise UsageError(f"{spec!r}: nothing after '@'; write REPO_ID or REPO_ID@REVISION")
            old = None
            if update:
                if revision or include or exclude:
                    raise UsageError(
                        f"--update takes bare REPO_IDs ({spec!r}): it re-applies the revision and patterns "
                        f"recorded in {output}; to change them, lock the repo again without --update"
                    )
                old = current.require(repo_id, repo_type)
            method = old.signature_method(verify_signature, str(output)) if old else verify_signature
            entry, report = lock_repo(
                repo_id,
                revision=old.revision if old is not None else revision or None,
                repo_type=repo_type,
                include=old.include if old is not None else include,
                exclude=old.exclude if old is not None else exclude,
                cache_dir=cache_dir,
                token=token,
                max_workers=workers,
                progress=progress.sink,
                verify_signature=method,
                allow_imports=allow_imports,
            )
            if entry is None:
                failed.append(report)
                continue
            current = current.with_repo(entry)
            if old is not None:
                lines += LockDiff.between(old, entry).describe()
            else:
                lines.append(
                    f"{entry.name}@{entry.revision}: {entry.commit[:12]}, {len(entry.files)} file(s) locked"
                )
        if not failed:
            current.write(output)
    except UsageError as exc:
        progress.close()
        _die(exc, EXIT_USAGE)
    except (HubError, TransferError, VcacheError, OSError) as exc:
        progress.close()
        _die(exc, EXIT_TRANSFER)
    progress.close()
    if failed:
        for r in failed:
            print_table(r, title=f"{r.repo_id}@{(r.commit or '')[:12]}: {r.verdict.value}")
        click.echo(f"nothing was written to {output}: the files above failed verification")
        sys.exit(_exit_code(failed))
    for line in lines:
        click.echo(line)
    click.echo(f"wrote {output}")


from vcache.cluster_cli import cluster  # noqa: E402  (the group lives with the cluster code)

main.add_command(cluster)

# -- the cache's life: ls, rm, gc ------------------------------------------------------------------------------------


def _when(t: float | None) -> str:
    import time

    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


@main.command("ls")
@click.argument("repo_id", required=False)
@click.option(
    "--repo-type", type=click.Choice(["model", "dataset", "space"]), help="Only repos of this type."
)
@_cache_opt
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON (schema in the README).")
def ls_command(repo_id: str | None, repo_type: str | None, cache_dir: Path | None, as_json: bool) -> None:
    """List cached repos and revisions: size on disk, files, refs, last verified and last used (any tool's repos).

    Reads only metadata (no blob is opened). Shared blobs are counted once per repo and once in the total.
    """
    from vcache.lifecycle import dumps, list_cache

    root = _cache(cache_dir)
    listing = list_cache(root, repo_id, repo_type=repo_type)
    if repo_id is not None and not listing.repos:
        _die(UsageError(f"{repo_id} is not in the cache at {root}; `vcache ls` lists what is"), EXIT_USAGE)
    if as_json:
        click.echo(dumps(listing))
        return
    for repo in listing.repos:
        kind = "" if repo.repo_type == "model" else f" ({repo.repo_type})"
        busy = f", in use by {repo.in_use[0]}" if repo.in_use else ""
        click.echo(
            f"{repo.repo_id}{kind}  {human_bytes(repo.size_on_disk)}  {len(repo.revisions)} revision(s)  "
            f"last used {_when(repo.last_used)}{busy}"
        )
        for rev in repo.revisions:
            refs = ", ".join(rev.refs) or "-"
            verified = f"{rev.verdict} {_when(rev.last_verified)}" if rev.last_verified else rev.verdict
            click.echo(
                f"  {rev.commit[:12]}  {refs:<12}  {human_bytes(rev.size_on_disk):>10}  {rev.nb_files} file(s)  "
                f"used {_when(rev.last_used)}  verified: {verified}"
            )
        if repo.quarantined:
            size = sum(q.size or 0 for q in repo.quarantined)
            click.echo(
                f"  quarantined: {len(repo.quarantined)} file(s), {human_bytes(size)} (`vcache quarantine list`)"
            )
        if repo.partials:
            live = sum(p.live for p in repo.partials)
            size = sum(p.on_disk for p in repo.partials)
            click.echo(
                f"  partial downloads: {len(repo.partials)}, {human_bytes(size)} ({live} being written)"
            )
        if repo.incomplete:
            size = sum(f.size for f in repo.incomplete)
            click.echo(f"  other tools' unfinished downloads: {len(repo.incomplete)}, {human_bytes(size)}")
        if repo.orphaned_blobs:
            click.echo(
                f"  blobs no snapshot links: {len(repo.orphaned_blobs)}, {human_bytes(repo.orphaned_size)}"
            )
    revisions = sum(len(r.revisions) for r in listing.repos)
    click.echo(
        f"{len(listing.repos)} repo(s), {revisions} revision(s), {human_bytes(listing.size_on_disk)} in {root}"
    )


def _show_plan(removals: Sequence[Removal], skipped: Sequence[Skip], *, done: bool) -> None:
    """Revisions, partials, unfinished downloads and quarantine entries one per line; blobs and records counted."""
    from vcache.lifecycle import describe

    verb = "removed" if done else "would remove"
    counted = ("blob", "ledger")
    for r in removals:
        if r.kind not in counted:
            click.echo(f"{verb} {describe(r)}")
    for kind, label in (
        ("blob", "blob(s) no remaining revision links"),
        ("ledger", "orphaned ledger record(s)"),
    ):
        picked = [r for r in removals if r.kind == kind]
        if picked:
            size = sum(r.size for r in picked)
            extra = f", {human_bytes(size)}" if size else ""
            click.echo(f"{verb} {len(picked)} {label}{extra}")
    for s in skipped:
        where = (
            s.repo_id
            if s.kind == "repo"
            else f"{s.repo_id}@{s.name[:12]}"
            if s.kind == "revision"
            else f"{s.repo_id} {s.name[:12]}"
        )
        click.echo(f"kept {where}: {s.reason}", err=True)


def _confirm_or_refuse(yes: bool, what: str) -> bool:
    """--yes, or a terminal's yes; exit 2 on a non-terminal without --yes (a script must say so)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        _die(
            UsageError(
                f"refusing to {what} without confirmation: stdin is not a terminal; add --yes "
                "(or --dry-run to see what would go)"
            ),
            EXIT_USAGE,
        )
    return click.confirm(f"{what}?", default=False)


def _carry_out(plan: Plan, yes: bool) -> CleanupReport:
    """Confirm (see :func:`_confirm_or_refuse`), remove what ``plan`` says, and print what was freed; exits 0
    when the user declines, 3 when the removal fails."""
    from vcache.lifecycle import run_plan, summarize

    if not _confirm_or_refuse(yes, f"remove {summarize(plan.removals)} ({human_bytes(plan.freed)})"):
        click.echo("nothing removed")
        sys.exit(EXIT_OK)
    try:
        report = run_plan(plan)
    except (VcacheError, OSError) as exc:
        _die(exc, EXIT_TRANSFER)
    _show_plan(report.removed, report.skipped, done=True)
    click.echo(f"freed {human_bytes(report.freed)}: {summarize(report.removed)}")
    return report


def _warn_if_unprotected(plan: Plan) -> None:
    from vcache.locks import LockMode

    if plan.lock_mode is LockMode.NONE:
        click.echo(
            "vcache: warning: VCACHE_LOCK_MODE=none records no uses, so this cannot tell what other processes "
            "are reading; make sure nothing uses the cache",
            err=True,
        )


@main.command("rm")
@click.argument("target", metavar="REPO_ID[@REVISION]")
@click.option(
    "--repo-type", type=click.Choice(["model", "dataset", "space"]), default="model", show_default=True
)
@_cache_opt
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal)."
)
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
def rm_command(target: str, repo_type: str, cache_dir: Path | None, yes: bool, dry_run: bool) -> None:
    """Remove a revision (a commit, a commit prefix, or a ref such as main), or with no @REVISION the whole repo.

    Blobs another revision links stay; so does the quarantine. A revision a process is using (pull, verify,
    from_pretrained, vcache.use) is kept and named; exit 3 when that happens.
    """
    from vcache.lifecycle import plan_removal

    repo_id, at, revision = target.partition("@")
    try:
        if at and not revision:
            raise UsageError(f"{target!r}: nothing after '@'; give a revision, or drop the '@'")
        plan = plan_removal(_cache(cache_dir), repo_id, revision or None, repo_type=repo_type)
    except UsageError as exc:
        _die(exc, EXIT_USAGE)
    _warn_if_unprotected(plan)
    if dry_run or not plan.removals:
        _show_plan(plan.removals, plan.skipped, done=False)
        click.echo(
            f"dry run: nothing removed ({human_bytes(plan.freed)} would be freed)"
            if dry_run
            else "nothing to remove"
        )
        kept = any(s.kind == "revision" for s in plan.skipped)
        sys.exit(EXIT_TRANSFER if kept and not dry_run else EXIT_OK)
    _show_plan(plan.removals, plan.skipped, done=False)
    report = _carry_out(plan, yes)
    sys.exit(EXIT_TRANSFER if any(s.kind == "revision" for s in report.skipped) else EXIT_OK)


@main.command("gc")
@click.option(
    "--max-size",
    "max_size",
    metavar="SIZE",
    help="Remove least recently used revisions until the cache holds at most SIZE (10G, 500MiB).",
)
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    help="Remove revisions not used for DURATION (30d, 12h).",
)
@click.option("--purge-quarantine", is_flag=True, help="Also delete quarantined files (kept otherwise).")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="Keep orphaned blobs and other tools' .incomplete files changed more recently (a download in progress).",
)
@_cache_opt
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal)."
)
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
def gc_command(
    max_size: str | None,
    older_than: str | None,
    purge_quarantine: bool,
    grace: str,
    cache_dir: Path | None,
    yes: bool,
    dry_run: bool,
) -> None:
    """Free space: least recently used revisions first, plus leftovers (dead writers' partials, stale
    .incomplete files, orphaned blobs and ledger records, lock files of removed blobs).

    Repos a process is using (pull, verify, from_pretrained, vcache.use, on any node) are left alone.
    """
    from vcache.lifecycle import parse_duration, parse_size, plan_gc

    root = _cache(cache_dir)
    try:
        plan = plan_gc(
            root,
            max_size=parse_size(max_size) if max_size is not None else None,
            older_than=parse_duration(older_than) if older_than is not None else None,
            purge_quarantine=purge_quarantine,
            grace=parse_duration(grace),
        )
    except UsageError as exc:
        _die(exc, EXIT_USAGE)
    _warn_if_unprotected(plan)
    _show_plan(plan.removals, plan.skipped, done=False)
    if dry_run:
        click.echo(f"dry run: nothing removed ({human_bytes(plan.freed)} would be freed)")
        sys.exit(EXIT_OK)
    if not plan.removals:
        click.echo("nothing to remove")
        sys.exit(EXIT_OK)
    _carry_out(plan, yes)


# -- air-gapped transfer: export / import ---------------------------------------------------------------------


@main.command("export")
@click.argument("targets", nargs=-1, required=True, metavar="REPO_ID[@REVISION]...")
@click.option("-o", "--output", required=True, help="The bundle file to write; - writes it to stdout.")
@click.option(
    "--repo-type", type=click.Choice(["model", "dataset", "space"]), default="model", show_default=True
)
@click.option("--cache-dir", type=click.Path(path_type=Path), help="HF cache root (default: HF_HUB_CACHE).")
@click.option("--json", "as_json", is_flag=True, help="Print what was exported as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option(
    "--lock",
    "lockfile",
    type=click.Path(path_type=Path),
    help="Export the locked commit and files of each REPO_ID, checked against this lockfile, and carry its "
    "entries in the bundle (default: VCACHE_LOCK).",
)
def export_cmd(
    targets: tuple[str, ...],
    output: str,
    repo_type: str,
    cache_dir: Path | None,
    as_json: bool,
    quiet: bool,
    lockfile: Path | None,
) -> None:
    """Write verified revisions from the cache into one tar bundle, for a machine without network.

    Only revisions whose every file verifies are exported (exit 1 otherwise, and nothing is written). Carry
    the bundle over and run `vcache import BUNDLE` there; `-o -` streams it, as in
    `vcache export org/name -o - | ssh host vcache import -`. Under a lockfile (--lock or VCACHE_LOCK) each
    REPO_ID must be locked and at its locked commit (exit 2 otherwise).
    """
    import time

    from vcache.bundle import FdSink, plan_export, write_bundle, write_bundle_file
    from vcache.console import TqdmProgress
    from vcache.errors import VerificationFailed

    to_stdout = output == "-"
    if to_stdout and as_json:
        _die(UsageError("--json prints to stdout, where -o - writes the bundle; give -o FILE"), EXIT_USAGE)
    if to_stdout and sys.stdout.isatty():
        _die(
            UsageError("refusing to write a bundle to a terminal; redirect stdout or give -o FILE"),
            EXIT_USAGE,
        )
    t0 = time.monotonic()
    try:
        plan = plan_export(list(targets), cache_dir=cache_dir, repo_type=repo_type, lock=lockfile)
    except VerificationFailed as exc:
        if as_json:
            reports = list(getattr(exc, "reports", ()))
            click.echo(json.dumps({"verdict": "fail", "reports": [r.to_json() for r in reports]}, indent=2))
        _die(exc, EXIT_FAILED)
    except UsageError as exc:
        _die(exc, EXIT_USAGE)
    except (VcacheError, OSError) as exc:
        _die(exc, EXIT_TRANSFER)
    progress = TqdmProgress(quiet or as_json)
    try:
        if to_stdout:
            sys.stdout.flush()
            write_bundle(plan, FdSink(sys.stdout.fileno()), progress=progress.sink)
        else:
            write_bundle_file(plan, output, progress=progress.sink)
    except UsageError as exc:
        progress.close()
        _die(exc, EXIT_USAGE)
    except (VcacheError, OSError) as exc:
        progress.close()
        _die(exc, EXIT_TRANSFER)
    progress.close()
    elapsed = time.monotonic() - t0
    revisions: list[dict[str, Any]] = [
        {
            "repo_id": r.repo_id,
            "repo_type": r.repo_type,
            "commit": rev.commit,
            "refs": list(rev.refs),
            "files": len(rev.files),
            "size": sum(f.size for f in rev.files),
        }
        for r in plan.manifest.repos
        for rev in r.revisions
    ]
    if as_json:
        doc = {"bundle": output, "size": plan.size, "elapsed": round(elapsed, 3), "revisions": revisions}
        click.echo(json.dumps(doc, indent=2))
        return
    if quiet:
        return
    for rev in revisions:
        refs = f" ({', '.join(rev['refs'])})" if rev["refs"] else ""
        click.echo(
            f"  {rev['repo_id']}@{rev['commit'][:12]}{refs}: {rev['files']} file(s), "
            f"{human_bytes(rev['size'])}, verified",
            err=to_stdout,
        )
    where = "stdout" if to_stdout else output
    click.echo(f"bundle: {where}, {human_bytes(plan.size)} of files in {elapsed:.1f}s", err=to_stdout)


@main.command("import")
@click.argument("bundle", metavar="BUNDLE")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="HF cache root (default: HF_HUB_CACHE).")
@click.option("--strict", is_flag=True, help="Treat warnings as failures.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only what did not verify.")
@click.option(
    "--lock",
    "lockfile",
    type=click.Path(path_type=Path),
    help="Refuse the bundle unless its repos, commits and files are those this lockfile pins "
    "(default: VCACHE_LOCK).",
)
def import_cmd(
    bundle: str, cache_dir: Path | None, strict: bool, as_json: bool, quiet: bool, lockfile: Path | None
) -> None:
    """Import a bundle made by `vcache export` into the cache, checking every byte (BUNDLE - reads stdin).

    Files are published as a pull publishes them; one that fails its checks is quarantined (exit 1). A bundle
    that is truncated, altered, or holds unsafe names or links is refused (exit 1) with nothing of it published,
    and so is one that disagrees with the lockfile (--lock or VCACHE_LOCK): every byte is held to the lock.
    """
    from vcache.bundle import import_bundle
    from vcache.config import default_cache_dir
    from vcache.console import TqdmProgress, print_table
    from vcache.errors import BadBundle

    if bundle == "-":
        if sys.stdin.isatty():
            _die(
                UsageError("BUNDLE is -, but stdin is a terminal; pipe the bundle in or name its file"),
                EXIT_USAGE,
            )
        source = open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115 - closed below
        name = "the bundle on stdin"
    else:
        try:
            source = open(bundle, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            _die(UsageError(f"cannot read the bundle {bundle}: {exc.strerror or exc}"), EXIT_USAGE)
        name = f"bundle {bundle}"
    progress = TqdmProgress(quiet or as_json)
    try:
        with source:
            reports = import_bundle(
                source, cache_dir=cache_dir, strict=strict, progress=progress.sink, name=name, lock=lockfile
            )
    except BadBundle as exc:
        progress.close()
        _die(exc, EXIT_FAILED)
    except UsageError as exc:
        progress.close()
        _die(exc, EXIT_USAGE)
    except (VcacheError, OSError) as exc:
        progress.close()
        _die(exc, EXIT_TRANSFER)
    progress.close()
    if as_json:
        _finish(reports, True, quiet)
    for r in reports:
        if not quiet or r.verdict is not Verdict.OK:
            print_table(r, title=f"{r.repo_id}@{(r.commit or '')[:12]}: {r.verdict.value}")
    if not quiet:
        files = sum(len(r.files) for r in reports)
        written = sum(r.bytes_transferred for r in reports)
        elapsed = max((r.elapsed for r in reports), default=0.0)
        click.echo(
            f"{files} file(s) of {len(reports)} revision(s), {human_bytes(written)} written in {elapsed:.1f}s "
            f"into {cache_dir or default_cache_dir()}"
        )
    sys.exit(_exit_code(reports))


if __name__ == "__main__":  # pragma: no cover
    main()
