"""What the command line prints: the per-file table of a report and the progress bar of a pull.

What this module owns: :func:`print_table` (one line per file, its most important finding first) and
:class:`TqdmProgress` (a :class:`~vcache.pull.Progress` drawn with tqdm on stderr). ``cli`` and ``demo``
both print through it, so neither imports the other.

What it must never do: decide a verdict or an exit code (``cli`` owns exit codes), or print a token.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import click

from vcache.pull import Progress
from vcache.report import FileReport, PullReport, Severity, Verdict, human_bytes


def _coverage(f: FileReport) -> str:
    """The table's coverage column: the format and how completely it was checked (``gguf: full``,
    ``other: digest only``, ``unchecked``)."""
    from vcache.checks import coverage

    level = coverage(f.format, f.checks)
    return level if f.format is None else f"{f.format}: {level}"


def _first_note(f: FileReport, strict: bool) -> str:
    from vcache.checks import COMPLETE_CHECKS, coverage

    order = {Severity.FAIL: 0, Severity.WARN: 1, Severity.INFO: 2}
    relevant = [
        x for x in f.findings if x.code not in ("transfer.refetched",) and x.severity is not Severity.INFO
    ]
    if relevant:
        x = sorted(relevant, key=lambda x: order[x.severity])[0]
        more = f" (+{len(relevant) - 1} more)" if len(relevant) > 1 else ""
        return f"[{x.code}] {x.message}{more}"
    unlisted = next((x for x in f.findings if x.code == "lock.unlisted"), None)
    if unlisted is not None:  # not downloaded: nothing was checked, and that is the point
        return f"[{unlisted.code}] {unlisted.message}"
    level = coverage(f.format, f.checks)
    if level == "digest only":
        what = (
            "vcache has no checks for its format"
            if f.format in (None, "other")
            else "its format was not checked"
        )
        return f"digest matched; {what}"
    if level == "unchecked":
        return "unchecked: no publisher digest to compare, and vcache has no checks for its format"
    if level == "partial":
        missing = sorted(COMPLETE_CHECKS[f.format or ""] - set(f.checks))
        return f"partly checked: {', '.join(missing)} did not run"
    refetched = [x for x in f.findings if x.code == "transfer.refetched"]
    if refetched:
        return f"verified after {len(refetched) + 1} attempts (damaged in transit before)"
    return "cached, verified earlier" if f.cached else "verified"


def print_table(report: PullReport, *, title: str | None = None) -> None:
    """A short per-file summary: verdict, size, format and how completely it was checked, and the most
    important finding (or, without one, what the checks amount to)."""
    if title:
        click.echo(title)
    for f in report.files:
        verdict = f.verdict.value.upper()
        click.echo(
            f"  {verdict:<4}  {f.path}  {human_bytes(f.size)}  [{_coverage(f)}]  {_first_note(f, report.strict)}"
        )
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


class TqdmProgress(Progress):
    """Progress for the command line: one total bar (bytes and rate) on stderr and event lines above it.

    Pass :attr:`sink` (the object itself) as a pull's ``progress``; call :meth:`close` when the pull returns.
    ``quiet`` shows nothing at all.
    """

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._bar: Any = None
        self._lock = threading.Lock()
        self._tty = False
        self._again = 0  # bytes fetched again: shown beside the bar, never added to its planned total

    @property
    def sink(self) -> Progress:
        """What to pass as a pull's ``progress``: this object."""
        return self

    def planned(self, total_bytes: int, files: int) -> None:
        """Start the bar at the planned total (nothing when quiet or when nothing is to be fetched)."""
        if self._quiet or files == 0:
            return
        from tqdm import tqdm

        self._tty = sys.stderr.isatty()
        self._bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            desc=f"{files} file(s)",
            dynamic_ncols=True,
            leave=True,
        )

    def advance(self, nbytes: int) -> None:
        """Move the bar on by planned bytes that arrived."""
        if self._bar is not None:
            with self._lock:
                self._bar.update(nbytes)

    def refetched(self, nbytes: int) -> None:
        """Count bytes fetched again beside the bar, never in its planned total."""
        if self._bar is not None:
            with self._lock:
                self._again += nbytes
                self._bar.set_postfix_str(f"refetched {human_bytes(self._again)}", refresh=False)
                self._bar.update(0)  # redraws at the bar's own rate, also when the plan is already complete

    def message(self, text: str) -> None:
        """Print an event line above the bar (on a line of its own when stderr is not a terminal)."""
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
        """Close the bar (its last frame stays)."""
        if self._bar is not None:
            self._bar.close()


__all__ = ["TqdmProgress", "print_table"]
