"""``vcache cluster``: set up and check a cache shared by many users, processes and nodes.

Owns only the command-line shape of :mod:`vcache.cluster` (arguments, one line per finding, exit codes);
it decides nothing itself. Registered in ``cli.py`` with ``main.add_command(cluster)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vcache.cluster import (
    doctor,
    findings_json,
    format_finding,
    init_shared_cache,
    is_safe,
    read_env_file,
)
from vcache.config import default_cache_dir, environment_applied
from vcache.errors import UsageError
from vcache.locks import LockMode

EXIT_OK, EXIT_UNSAFE, EXIT_USAGE = 0, 1, 2


def _report(path: Path, as_json: bool, probe: bool) -> int:
    findings = doctor(path, probe=probe)
    if as_json:
        click.echo(
            json.dumps(
                {"path": str(path), "safe": is_safe(findings), "findings": findings_json(findings)}, indent=1
            )
        )
    else:
        for f in findings:
            click.echo(format_finding(f))
    return EXIT_OK if is_safe(findings) else EXIT_UNSAFE


@click.group()
def cluster() -> None:
    """Shared caches on clusters: `init` one, `doctor` one."""


@cluster.command()
@click.argument("path", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--group", "-g", help="Group that shares the cache (chgrp'd; default: keep the directory's group)."
)
@click.option(
    "--lock-mode",
    type=click.Choice([m.value for m in LockMode]),
    help="Write this VCACHE_LOCK_MODE instead of the one detected from the filesystem.",
)
@click.option(
    "--endpoint", help="A Hub mirror every job should use (also turns Xet off, which bypasses mirrors)."
)
@click.option("--no-probe", is_flag=True, help="Skip the two-process lock probes of the doctor run.")
@click.option("--json", "as_json", is_flag=True, help="Doctor findings as JSON.")
def init(
    path: Path, group: str | None, lock_mode: str | None, endpoint: str | None, no_probe: bool, as_json: bool
) -> None:
    """Create (or repair) a shared cache at PATH/hub, write PATH/vcache.env, then run the doctor.

    When PATH already is a Hugging Face cache it stays the cache and vcache.env goes beside it. Directories
    become setgid and group-writable (2775); existing files gain group read. Nothing loses a permission.
    Exit 1 if the doctor finds anything unsafe.
    """
    try:
        result = init_shared_cache(
            path, group=group, lock_mode=LockMode(lock_mode) if lock_mode else None, endpoint=endpoint
        )
    except UsageError as exc:
        click.echo(f"vcache: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        click.echo(
            f"vcache: error: cannot set up {path}: {exc.strerror or exc} ({exc.filename or path}); "
            "check that you own it or may chgrp it",
            err=True,
        )
        sys.exit(EXIT_UNSAFE)
    out = sys.stderr if as_json else sys.stdout
    print(f"shared cache ready at {result.cache}", file=out)
    for line in result.repaired:
        print(f"  repaired {line}", file=out)
    for line in result.problems:
        print(f"  could not repair {line}", file=out)
    print(f"wrote {result.env_file}; in every job: umask 0002; set -a; . {result.env_file}; set +a", file=out)
    print(file=out)
    # Check the cache as jobs will see it: with the settings just written.
    with environment_applied(read_env_file(result.env_file)):
        code = _report(result.cache, as_json, probe=not no_probe)
    sys.exit(code)


@cluster.command("doctor")
@click.argument("path", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--no-probe", is_flag=True, help="Skip the two-process lock probes.")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
def doctor_cmd(path: Path | None, no_probe: bool, as_json: bool) -> None:
    """Check a shared cache (default: HF_HUB_CACHE): one line per finding, exit 1 if anything is unsafe.

    OK is fine, WARN costs bandwidth or convenience, FAIL means users or jobs will break. See the README
    (shared caches) for what each finding means.
    """
    target = path if path is not None else default_cache_dir()
    sys.exit(_report(target, as_json, probe=not no_probe))


__all__ = ["cluster"]
