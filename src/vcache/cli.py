"""The ``vcache`` command line: pull, verify, scan, quarantine, demo, lock, cluster.

Exit codes (documented in the README): 0 nothing failed, 1 a file failed verification, 2 usage error,
3 transfer or Hub error. Progress goes to stderr; results (tables or ``--json``) go to stdout. The token
is never printed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

# The command line uses numpy only for elementwise bit checks, never BLAS: OpenBLAS's thread pool (one
# thread per core, started at import) would only take CPU from the download. Set before anything imports
# numpy; an explicit setting in the environment wins. (The library API leaves the environment alone.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from vcache._version import __version__
from vcache.errors import HubError, TransferError, UsageError, VcacheError
from vcache.report import FileReport, PullReport, Severity, Verdict, human_bytes

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TRANSFER = 0, 1, 2, 3


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


def _first_note(f: FileReport, strict: bool) -> str:
    order = {Severity.FAIL: 0, Severity.WARN: 1, Severity.INFO: 2}
    relevant = [
        x for x in f.findings if x.code not in ("transfer.refetched",) and x.severity is not Severity.INFO
    ]
    if relevant:
        x = sorted(relevant, key=lambda x: order[x.severity])[0]
        more = f" (+{len(relevant) - 1} more)" if len(relevant) > 1 else ""
        return f"[{x.code}] {x.message}{more}"
    unlisted = next((x for x in f.findings if x.code == "lock.unlisted"), None)
    if unlisted is not None:
        return f"[{unlisted.code}] {unlisted.message}"
    refetched = [x for x in f.findings if x.code == "transfer.refetched"]
    if refetched:
        return f"verified after {len(refetched) + 1} attempts (damaged in transit before)"
    return "cached, verified earlier" if f.cached else "verified"


def print_table(report: PullReport, *, title: str | None = None) -> None:
    """A short per-file summary: verdict, size, attempts, and the most important finding."""
    if title:
        click.echo(title)
    for f in report.files:
        verdict = f.verdict.value.upper()
        click.echo(f"  {verdict:<4}  {f.path}  {human_bytes(f.size)}  {_first_note(f, report.strict)}")
        if f.verdict is Verdict.FAIL:
            fails = [x for x in f.findings if x.severity is Severity.FAIL]
            for x in fails[1:]:
                click.echo(f"        [{x.code}] {x.message}")
        if f.quarantine_id:
            click.echo(
                f"        quarantined as {f.quarantine_id} (see `vcache quarantine show {f.quarantine_id}`)"
            )
    for e in report.errors:
        click.echo(f"  ERROR {e}")


class _TqdmProgress:
    """Progress sink for the CLI: one total bar (bytes and rate) and event lines above it."""

    def __init__(self, quiet: bool) -> None:
        from vcache.pull import Progress

        self._quiet = quiet
        self._bar: Any = None
        self._lock = threading.Lock()
        self._tty = False
        self._again = 0  # bytes fetched again: shown beside the bar, never added to its planned total
        outer = self

        class _P(Progress):
            def planned(self, total_bytes: int, files: int) -> None:
                outer._start(total_bytes, files)

            def advance(self, nbytes: int) -> None:
                outer._advance(nbytes)

            def refetched(self, nbytes: int) -> None:
                outer._refetched(nbytes)

            def message(self, text: str) -> None:
                outer._message(text)

        self.sink = _P()

    def _start(self, total: int, files: int) -> None:
        if self._quiet or files == 0:
            return
        from tqdm import tqdm

        self._tty = sys.stderr.isatty()
        self._bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            desc=f"{files} file(s)",
            dynamic_ncols=True,
            leave=True,
        )

    def _advance(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def _refetched(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._again += n
                self._bar.set_postfix_str(f"refetched {human_bytes(self._again)}", refresh=False)
                self._bar.update(0)  # redraws at the bar's own rate, also when the plan is already complete

    def _message(self, text: str) -> None:
        if self._quiet:
            return
        if self._bar is None:
            click.echo(text, err=True)
        elif self._tty:
            self._bar.write(text, file=sys.stderr)  # clears the bar, writes the line, draws the bar below it
        else:
            # A log file or a notebook cell does not clear a line on a carriage return: end the bar's line
            # (its last frame stays as a record) so that the message starts a line of its own.
            with self._bar.get_lock():
                self._bar.fp.write(f"\n{text}\n")
                self._bar.refresh(nolock=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


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
@click.option("--json", "as_json", is_flag=True, help="Print the PullReport as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
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
    as_json: bool,
    quiet: bool,
    lockfile: Path | None,
) -> None:
    """Download REPO_ID, verifying every file; exit 1 if any file fails verification.

    Under a lockfile (--lock or VCACHE_LOCK) every file is checked against the lock's sha256, the locked
    commit is pulled whatever the branch says now, and with no REPO_ID every locked repo is pulled.
    """
    from vcache.config import resolve_lock_path
    from vcache.lockfile import read_lock
    from vcache.pull import pull as do_pull

    progress = _TqdmProgress(quiet or as_json)
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
def scan(cache_dir: Path | None, deep: bool, as_json: bool) -> None:
    """Check the whole HF cache (any tool's repos): one line per problem, exit 1 if anything failed."""
    from vcache.config import default_cache_dir
    from vcache.verify import scan_cache

    root = cache_dir or default_cache_dir()
    if not root.is_dir():
        _die(UsageError(f"no cache at {root}"), EXIT_USAGE)
    reports = scan_cache(root, deep=deep)
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
    click.echo(
        f"scanned {len({r.repo_id for r in reports})} repo(s), {files} file(s) in {root}: "
        f"{problems} problem(s)"
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
@_cache_opt
def q_purge(qid: str | None, purge_all: bool, cache_dir: Path | None) -> None:
    """Delete a quarantined file (ID) or all of them (--all). The only command that deletes."""
    from vcache.quarantine import purge

    if (qid is None) == (not purge_all):
        _die(UsageError("give exactly one of ID or --all"), EXIT_USAGE)
    try:
        ids = purge(_cache(cache_dir), None if purge_all else qid)
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
    quiet: bool,
) -> None:
    """Pin repos: pull them (verified) and write each file's size and sha256 to a lockfile.

    `vcache pull --lock` then fetches exactly these bytes from any server, and `vcache verify --lock`
    checks the cache against them. With --update, REPO_IDs already in the lockfile move to the current
    commit of their recorded revision, and what changed is printed. Nothing is written unless every file
    verified (exit 1 otherwise).
    """
    from vcache.lockfile import Lock, LockDiff, lock_repo

    progress = _TqdmProgress(quiet)
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

if __name__ == "__main__":  # pragma: no cover
    main()
