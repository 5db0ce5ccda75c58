"""The ``vcache`` command line: pull, verify, scan, quarantine, demo, cluster.

Exit codes (documented in the README): 0 nothing failed, 1 a file failed verification, 2 usage error,
3 transfer or Hub error. Progress goes to stderr; results (tables or ``--json``) go to stdout. The token
is never printed.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from vcache._version import __version__
from vcache.config import limit_blas_threads
from vcache.console import TqdmProgress, print_table
from vcache.errors import HubError, TransferError, UsageError, VcacheError
from vcache.report import PullReport, Severity, Verdict, human_bytes

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


_allow_import_opt = click.option(
    "--allow-import",
    "allow_imports",
    multiple=True,
    metavar="MODULE.NAME",
    help="Accept this pickle global beyond what torch.load(weights_only=True) accepts, for a repo you trust "
    "(repeatable). Globals that run code (os.system, builtins.eval...) are never accepted.",
)


@main.command()
@click.argument("repo_id")
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
def pull(
    repo_id: str,
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
) -> None:
    """Download REPO_ID, verifying every file; exit 1 if any file fails verification."""
    from vcache.pull import pull as do_pull

    progress = TqdmProgress(quiet or as_json)
    try:
        report = do_pull(
            repo_id,
            revision=revision,
            repo_type=repo_type,
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
        )
    except UsageError as exc:
        progress.close()
        _die(exc, EXIT_USAGE)
    except (HubError, TransferError, VcacheError, OSError) as exc:
        progress.close()
        _die(exc, EXIT_TRANSFER)
    progress.close()
    _finish([report], as_json, quiet, pull_summary=True)


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
@_allow_import_opt
def verify(
    targets: tuple[str, ...],
    revision: str | None,
    repo_type: str,
    cache_dir: Path | None,
    deep: bool,
    strict: bool,
    as_json: bool,
    allow_imports: tuple[str, ...],
) -> None:
    """Verify repos in the cache, snapshot folders, or any files/folders (offline).

    TARGET is a repo id in the cache (org/name), a snapshot folder, or any file or folder on disk.
    With no TARGET, every repo in the cache is verified.
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


from vcache.cluster_cli import cluster  # noqa: E402  (the group lives with the cluster code)

main.add_command(cluster)

if __name__ == "__main__":  # pragma: no cover
    main()
