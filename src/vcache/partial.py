"""The on-disk state of an unfinished download: a data file plus a JSON sidecar, resumable by a later process.

Layout, inside the ``partial_dir`` the caller chooses (``<repo folder>/.vcache/partials/``)::

    <etag>.<writer_id>/          one writer's partial; the directory is the unit of ownership
        data                     the bytes, written at their final offsets (possibly sparse)
        sidecar.json             what the bytes are, and which ranges of them are complete (replaced atomically)
        progress.json            the ranges written since, rewritten in place many times a second
    .trash-<random>/             a partial being deleted (claimed by rename, then removed)

``writer_id`` is ``<pid>-<unix time>-<random>``: unique per process and attempt, and it tells when its owner
took the partial. Every change of owner is **one** atomic ``os.rename`` of the directory: adoption renames it
to the adopter's writer id, deletion renames it to ``.trash-*`` first. When two processes race for the same
partial exactly one rename succeeds and the other process starts fresh or picks another partial; a partial
is never half-moved, and the new name's time marks it live at the very moment it changes hands.

Only partials untouched for ``stale_after`` seconds are adopted or deleted (the latest of the time in the
writer id, the files' modification times and the sidecar's ``updated_at``), so a live writer is not robbed
when locks silently do nothing (NFS, Lustre); a live writer's checkpoints double as its heartbeat.

Trust rules (everything on disk may be the leftover of a crash):

* only the ranges the sidecar records are trusted; bytes written after the last checkpoint are fetched
  again;
* the sidecar records two range lists and the kernel's boot id: ``ranges`` (written; in the page cache, which
  outlives a killed or crashed process) and ``durable`` (covered by an ``fdatasync``). After a reboot or
  power cut (another boot id) only ``durable`` is trusted;
* ``progress.json`` is a hint for a restart within the same boot: the writer overwrites it in place with
  ``pwrite`` (an atomic rename can wait behind the journal while an ``fdatasync`` runs, for 0.1-0.2 s on
  ext4), so checkpoints every few tens of milliseconds never wait for the disk and a SIGKILL loses little.
  It is used only when its writer and boot id match the sidecar's, and anything unreadable in it is
  ignored (a torn write can only happen at a power cut, which changes the boot id anyway);
* a sidecar that does not parse, does not match the expected etag / size / digest, claims ranges outside
  the file, or whose data file is shorter than its ranges claim, is ignored (and removed once stale, or at
  once when its writer is known dead);
* the final digest check (by the caller) is the real guarantee; this module only saves work.

This module owns naming, the sidecar format and adoption. It never talks to the network, never hashes
content, and never takes a lock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcache.cache import read_state, translate_os_error
from vcache.hashing import Digest

__all__ = [
    "DATA_NAME",
    "DEFAULT_STALE_AFTER",
    "SIDECAR_NAME",
    "SIDECAR_VERSION",
    "Partial",
    "PartialInfo",
    "PartialMeta",
    "RangeSet",
    "list_partials",
    "new_writer_id",
    "open_partial",
    "remove_partial",
    "remove_stale",
]

SIDECAR_VERSION = 1
SIDECAR_FORMAT = "vcache-partial"
DATA_NAME = "data"
SIDECAR_NAME = "sidecar.json"
PROGRESS_NAME = "progress.json"
_TMP_NAME = SIDECAR_NAME + ".tmp"
_TRASH_PREFIX = ".trash-"
DEFAULT_STALE_AFTER = 30.0
_MAX_SIDECAR_BYTES = 1 << 20  # a sidecar is small; never slurp a huge foreign file

_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_DIR = re.compile(r"(?P<etag>[0-9a-f]{40}|[0-9a-f]{64})\.(?P<writer>[0-9A-Za-z_-]{1,64})")
_WRITER_TIME = re.compile(r"\d+-(\d{1,12})-[0-9a-f]+")


def _read_boot_id() -> str | None:
    """This boot of the kernel (Linux); ``None`` where the system does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


_BOOT_ID = _read_boot_id()


def _now() -> float:
    return time.time()


class RangeSet:
    """A set of byte offsets kept as sorted, merged, half-open ``[start, end)`` intervals."""

    __slots__ = ("_spans",)

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self._spans: list[tuple[int, int]] = []
        for start, end in spans:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with touching or overlapping intervals."""
        if end <= start:
            return
        spans = self._spans
        # Fast path: the common case is extending the last interval (in-order writes).
        if spans and spans[-1][0] <= start <= spans[-1][1]:
            if end > spans[-1][1]:
                spans[-1] = (spans[-1][0], end)
                # may now touch nothing further: it was the last one
            return
        out: list[tuple[int, int]] = []
        placed = False
        for s, e in spans:
            if e < start:
                out.append((s, e))
            elif end < s:
                if not placed:
                    out.append((start, end))
                    placed = True
                out.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        if not placed:
            out.append((start, end))
        self._spans = out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(self._spans))

    def __len__(self) -> int:
        return len(self._spans)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._spans == other._spans

    def __repr__(self) -> str:
        return f"RangeSet({self._spans!r})"

    def copy(self) -> RangeSet:
        """An independent copy."""
        new = RangeSet()
        new._spans = list(self._spans)
        return new

    @property
    def total(self) -> int:
        """How many bytes the set covers."""
        return sum(e - s for s, e in self._spans)

    @property
    def end(self) -> int:
        """One past the highest covered offset (0 when empty)."""
        return self._spans[-1][1] if self._spans else 0

    def prefix(self) -> int:
        """Length of the contiguous run starting at offset 0."""
        return self._spans[0][1] if self._spans and self._spans[0][0] == 0 else 0

    def covers(self, start: int, end: int) -> bool:
        """Whether every offset of ``[start, end)`` is in the set."""
        return end <= start or any(s <= start and end <= e for s, e in self._spans)

    def missing(self, size: int) -> list[tuple[int, int]]:
        """The gaps in ``[0, size)``, in order."""
        gaps: list[tuple[int, int]] = []
        pos = 0
        for s, e in self._spans:
            if s > pos:
                gaps.append((pos, min(s, size)))
            pos = max(pos, e)
            if pos >= size:
                break
        if pos < size:
            gaps.append((pos, size))
        return [(s, e) for s, e in gaps if e > s]

    def to_json(self) -> list[list[int]]:
        """The intervals as ``[[start, end], ...]``."""
        return [[s, e] for s, e in self._spans]


@dataclass(frozen=True)
class PartialMeta:
    """What a partial is a partial *of*: enough to decide whether another process may resume it."""

    etag: str
    size: int
    expected: Digest
    commit: str
    path: str

    def __post_init__(self) -> None:
        # The etag becomes a file name: only a hex blob name may (invariant 8, server data is untrusted).
        if not _ETAG.fullmatch(self.etag):
            raise ValueError(f"not a blob etag (40 or 64 lowercase hex): {self.etag!r}")
        if self.size < 0:
            raise ValueError("size must be >= 0")


@dataclass(frozen=True)
class PartialInfo:
    """One partial found on disk, for ``vcache scan`` / doctor.

    ``path`` is the partial's directory (what to delete), ``data_path`` / ``sidecar_path`` its main files,
    ``repo_path`` the repo file it belongs to (from the sidecar), ``ranges`` what a resume would trust. ``valid`` is False (and ``problem`` says
    why) when the sidecar is missing, unreadable or inconsistent. ``updated_at`` is the latest sign of life.
    """

    etag: str
    writer_id: str
    size: int | None
    completed: int
    updated_at: float
    path: Path
    data_path: Path
    sidecar_path: Path
    valid: bool
    problem: str | None = None
    repo_path: str | None = None
    commit: str | None = None
    ranges: RangeSet | None = None


def new_writer_id() -> str:
    """``<pid>-<unix time>-<random>``: unique to this process and attempt, and dated."""
    return f"{os.getpid()}-{int(_now())}-{secrets.token_hex(4)}"


class _SidecarError(ValueError):
    pass


def _read_sidecar(path: Path) -> dict[str, Any]:
    doc = read_state(path, max_bytes=_MAX_SIDECAR_BYTES)
    if doc is None:
        raise _SidecarError(
            "sidecar is missing" if not os.path.lexists(path) else "sidecar is not a readable JSON object"
        )
    if doc.get("format") != SIDECAR_FORMAT or doc.get("version") != SIDECAR_VERSION:
        raise _SidecarError(f"unknown sidecar format {doc.get('format')!r} version {doc.get('version')!r}")
    return doc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_ranges(raw: object, size: int, what: str) -> RangeSet:
    if not isinstance(raw, list):
        raise _SidecarError(f"sidecar has no {what} list")
    ranges = RangeSet()
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and all(_is_int(x) for x in item)):
            raise _SidecarError(f"malformed range {item!r}")
        start, end = item
        if not 0 <= start < end <= size:
            raise _SidecarError(f"range {start}-{end} lies outside a file of {size} bytes")
        ranges.add(start, end)
    return ranges


def _validate(directory: Path, doc: dict[str, Any], meta: PartialMeta | None) -> tuple[RangeSet, RangeSet]:
    """``(trusted, durable)`` ranges of the partial in ``directory`` whose sidecar is ``doc``.

    Within the boot that wrote them, the sidecar's ranges plus its progress file's are trusted; after a
    reboot only the fdatasync'ed (durable) ones are.
    """
    size = doc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _SidecarError("sidecar has no valid size")
    if meta is not None:
        if doc.get("etag") != meta.etag:
            raise _SidecarError("sidecar is for another etag")
        if size != meta.size:
            raise _SidecarError(f"sidecar size {size} differs from the expected {meta.size}")
        if doc.get("expected") != str(meta.expected):
            raise _SidecarError("sidecar expects another digest")
    ranges = _parse_ranges(doc.get("ranges"), size, "range")
    if "durable" not in doc:
        return ranges, RangeSet()  # written before durable ranges were recorded: trust it as before
    durable = _parse_ranges(doc.get("durable"), size, "durable range")
    boot = doc.get("boot")
    if boot is None or _BOOT_ID is None or boot == _BOOT_ID:
        # Same boot (or unknowable): the page cache still holds what was written.
        return _with_progress(directory, doc, ranges), durable
    return durable, durable


def _with_progress(directory: Path, doc: dict[str, Any], ranges: RangeSet) -> RangeSet:
    """``ranges`` plus what the writer's progress file adds, when it is from this boot and this writer."""
    if _BOOT_ID is None or doc.get("boot") != _BOOT_ID:
        return ranges
    hint = read_state(directory / PROGRESS_NAME, max_bytes=_MAX_SIDECAR_BYTES)
    if hint is None or hint.get("writer") != doc.get("writer") or hint.get("boot") != _BOOT_ID:
        return ranges
    try:
        extra = _parse_ranges(hint.get("ranges"), doc["size"], "progress range")
    except _SidecarError:
        return ranges
    out = ranges.copy()
    for start, end in extra:
        out.add(start, end)
    return out


def _recorded_time(doc: dict[str, Any]) -> float | None:
    value = doc.get("updated_at")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


_HOST = socket.gethostname()


def _writer_dead(doc: dict[str, Any]) -> bool:
    """True when the sidecar's writer ran on this host and its process is gone (killed, crashed, Ctrl-C).

    Such a partial need not wait ``stale_after`` before another process resumes it. A writer on another
    host, a recycled pid, or a zombie not yet reaped all count as alive: waiting is the safe mistake.
    """
    pid = doc.get("pid")
    if doc.get("host") != _HOST or type(pid) is not int or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _last_sign_of_life(directory: Path, writer: str, recorded: float | None = None) -> float:
    """The latest of: the time in the writer id, the files' mtimes, the sidecar's ``updated_at``."""
    stamps = [recorded] if recorded is not None and math.isfinite(recorded) else []
    m = _WRITER_TIME.fullmatch(writer)
    if m:
        stamps.append(float(m[1]))
    for p in (
        directory,
        directory / DATA_NAME,
        directory / SIDECAR_NAME,
        directory / _TMP_NAME,
        directory / PROGRESS_NAME,
    ):
        with contextlib.suppress(OSError):
            stamps.append(p.stat().st_mtime)
    return max(stamps, default=0.0)


def _discard_dir(directory: Path) -> bool:
    """Delete a partial directory, claiming it first by rename so no adopter can be holding it."""
    trash = directory.parent / f"{_TRASH_PREFIX}{secrets.token_hex(6)}"
    try:
        os.rename(directory, trash)
    except FileNotFoundError:
        return False  # someone else adopted or removed it first
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _clear_trash(pdir: Path) -> None:
    # A .trash-* directory was claimed for deletion by a process that died before finishing: garbage.
    with contextlib.suppress(OSError):
        for entry in os.scandir(pdir):
            if entry.name.startswith(_TRASH_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)


class Partial:
    """A partial owned by this writer: the open data file and the sidecar it checkpoints to.

    ``completed`` is what was trusted when it was opened (after adoption, the recorded ranges). Writers
    call :meth:`save` with the ranges they have written (and, for power-loss safety, fsynced); the sidecar
    is replaced atomically. Thread-safe.
    """

    def __init__(
        self,
        partial_dir: Path,
        meta: PartialMeta,
        writer_id: str,
        fd: int,
        completed: RangeSet,
        adopted_from: str | None,
        durable: RangeSet | None = None,
    ) -> None:
        self.partial_dir = partial_dir
        self.meta = meta
        self.writer_id = writer_id
        self.fd = fd
        self.completed = completed
        self.durable = durable if durable is not None else RangeSet()
        self.adopted_from = adopted_from
        self.path = partial_dir / f"{meta.etag}.{writer_id}"
        self.data_path = self.path / DATA_NAME
        self.sidecar_path = self.path / SIDECAR_NAME
        self._lock = threading.Lock()
        self._progress_fd = -1
        self._progress_len = 0

    def save(self, ranges: RangeSet, durable: RangeSet | None = None) -> None:
        """Atomically replace the sidecar so that it records ``ranges`` as complete.

        ``durable`` are the ranges an ``fdatasync`` has covered (default: none); only they are trusted
        after a reboot. The sidecar itself is not fsynced: after a power cut an older one is just as valid.
        """
        doc = {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "etag": self.meta.etag,
            "size": self.meta.size,
            "expected": str(self.meta.expected),
            "commit": self.meta.commit,
            "path": self.meta.path,
            "writer": self.writer_id,
            "host": _HOST,
            "pid": os.getpid(),
            "boot": _BOOT_ID,
            "ranges": ranges.to_json(),
            "durable": (durable if durable is not None else RangeSet()).to_json(),
            "completed": ranges.total,
            "updated_at": _now(),
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        tmp = self.path / _TMP_NAME
        self.note_progress(ranges)  # first: after a restart from zero no older, larger progress may remain
        with self._lock:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                os.replace(tmp, self.sidecar_path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise translate_os_error(exc, f"writing the sidecar of {self.meta.path}") from exc

    def note_progress(self, ranges: RangeSet) -> None:
        """Record ``ranges`` as written, in place and without waiting for the disk.

        A hint for a restart within this boot (see the module docstring); cheap enough to call many
        times a second. :meth:`save` calls it too.
        """
        doc = {"writer": self.writer_id, "boot": _BOOT_ID, "ranges": ranges.to_json()}
        data = json.dumps(doc, separators=(",", ":")).encode()
        with self._lock:
            try:
                if self._progress_fd < 0:
                    self._progress_fd = os.open(
                        self.path / PROGRESS_NAME, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666
                    )
                # Never shorter than before: the tail of a longer earlier record must not survive.
                data = data.ljust(self._progress_len)
                os.pwrite(self._progress_fd, data, 0)
                self._progress_len = len(data)
            except OSError as exc:
                raise translate_os_error(exc, f"writing the progress of {self.meta.path}") from exc

    def truncate(self) -> None:
        """Drop every byte of the data file (a clean restart from zero)."""
        os.ftruncate(self.fd, 0)

    def is_ours(self) -> bool:
        """Whether ``data_path`` is still the file this writer has open (not adopted by another process)."""
        try:
            on_disk = os.stat(self.data_path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self.fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def close(self) -> None:
        """Close the data file (keeps everything on disk)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with self._lock:
            if self._progress_fd >= 0:
                os.close(self._progress_fd)
                self._progress_fd = -1

    def remove(self) -> None:
        """Close and delete the partial."""
        self.close()
        _discard_dir(self.path)


def _create(pdir: Path, meta: PartialMeta) -> Partial:
    writer_id = new_writer_id()
    directory = pdir / f"{meta.etag}.{writer_id}"
    try:
        directory.mkdir()
        fd = os.open(directory / DATA_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise translate_os_error(exc, f"creating a partial in {pdir}") from exc
    partial = Partial(pdir, meta, writer_id, fd, RangeSet(), None)
    try:
        partial.save(RangeSet())
    except BaseException:
        partial.remove()
        raise
    return partial


def _adopt(pdir: Path, meta: PartialMeta, old_writer: str) -> Partial | None:
    writer_id = new_writer_id()
    old = pdir / f"{meta.etag}.{old_writer}"
    new = pdir / f"{meta.etag}.{writer_id}"
    try:
        os.rename(old, new)  # the claim: atomic, exactly one adopter wins, and the new name is dated now
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise translate_os_error(exc, f"adopting a partial in {pdir}") from exc
    # Re-read what we now own: the copy read before the rename could have been replaced meanwhile.
    try:
        doc = _read_sidecar(new / SIDECAR_NAME)
        ranges, durable = _validate(new, doc, meta)
        fd = os.open(new / DATA_NAME, os.O_RDWR)
    except (_SidecarError, OSError):
        _discard_dir(new)
        return None
    if os.fstat(fd).st_size < ranges.end:
        os.close(fd)
        _discard_dir(new)
        return None
    partial = Partial(pdir, meta, writer_id, fd, ranges, old_writer, durable)
    partial.save(ranges, durable)
    return partial


def _writers(pdir: Path, etag: str | None = None) -> list[tuple[str, str]]:
    """(etag, writer_id) of every partial directory, optionally of one etag."""
    try:
        names = sorted(e.name for e in os.scandir(pdir) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _DIR.fullmatch(name)
        if m and (etag is None or m["etag"] == etag):
            out.append((m["etag"], m["writer"]))
    return out


def open_partial(
    partial_dir: str | os.PathLike[str],
    meta: PartialMeta,
    *,
    fresh: bool = False,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> Partial:
    """Open a partial for ``meta``: adopt the best stale, valid partial of the same etag, or create one.

    Invalid partials of this etag are removed once stale (at once when their writer is known dead), and so
    are valid ones that lost to a better candidate. ``fresh=True`` adopts nothing (after a digest mismatch
    the bytes on disk are suspect, and ``--force`` starts over) and removes every partial of this etag that
    no live writer may still be writing.

    Raises :class:`~vcache.errors.CacheNotWritable` / :class:`~vcache.errors.DiskFull` when the directory
    cannot be written.
    """
    pdir = Path(partial_dir)
    try:
        pdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise translate_os_error(exc, f"creating {pdir}") from exc
    _clear_trash(pdir)
    now = _now()
    usable: list[tuple[int, str]] = []
    for _, writer in _writers(pdir, meta.etag):
        directory = pdir / f"{meta.etag}.{writer}"
        recorded: float | None = None
        doc = None
        try:
            doc = _read_sidecar(directory / SIDECAR_NAME)
            recorded = _recorded_time(doc)
            ranges, _ = _validate(directory, doc, meta)
            if (directory / DATA_NAME).stat().st_size < ranges.end:
                raise _SidecarError("data file is shorter than its sidecar claims")
        except FileNotFoundError:
            # A sidecar without its data: the data was published (or quarantined) and moved out. A live
            # writer creates its data file before its sidecar, so this is never a partial in progress.
            _discard_dir(directory)
            continue
        except (_SidecarError, OSError):
            # Untrustworthy: gone once stale, or at once when its writer is known dead (nothing will ever
            # make it match its sidecar, and no later open of this etag may come to remove it).
            dead = doc is not None and _writer_dead(doc)
            if dead or now - _last_sign_of_life(directory, writer, recorded) >= stale_after:
                _discard_dir(directory)
            continue
        if not _writer_dead(doc) and now - _last_sign_of_life(directory, writer, recorded) < stale_after:
            continue  # a live writer (or one elsewhere that died moments ago): leave it alone
        usable.append((ranges.total, writer))
    usable.sort(reverse=True)
    if fresh:
        for _, writer in usable:
            _discard_dir(pdir / f"{meta.etag}.{writer}")
        return _create(pdir, meta)
    for index, (_, writer) in enumerate(usable):
        adopted = _adopt(pdir, meta, writer)
        if adopted is not None:
            for _, other in usable[index + 1 :]:
                _discard_dir(pdir / f"{meta.etag}.{other}")
            return adopted
    return _create(pdir, meta)


def list_partials(partial_dir: str | os.PathLike[str]) -> list[PartialInfo]:
    """Every partial in ``partial_dir`` (valid or not), sorted by etag and writer id."""
    pdir = Path(partial_dir)
    out: list[PartialInfo] = []
    for etag, writer in _writers(pdir):
        directory = pdir / f"{etag}.{writer}"
        size: int | None = None
        completed = 0
        recorded: float | None = None
        dead = False
        problem: str | None = None
        repo_path: str | None = None
        commit: str | None = None
        ranges: RangeSet | None = None
        try:
            doc = _read_sidecar(directory / SIDECAR_NAME)
            recorded = _recorded_time(doc)
            dead = _writer_dead(doc)
            ranges, _ = _validate(directory, doc, None)
            size = doc["size"]
            completed = ranges.total
            repo_path = doc["path"] if isinstance(doc.get("path"), str) else None
            commit = doc["commit"] if isinstance(doc.get("commit"), str) else None
            if doc.get("etag") != etag:
                problem = "sidecar names another etag"
            elif not (directory / DATA_NAME).exists():
                problem = "data file is missing"
            elif (directory / DATA_NAME).stat().st_size < ranges.end:
                problem = "data file is shorter than its sidecar claims"
        except _SidecarError as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"unreadable ({exc.strerror})"
        out.append(
            PartialInfo(
                etag=etag,
                writer_id=writer,
                size=size,
                completed=completed,
                updated_at=0.0 if dead else _last_sign_of_life(directory, writer, recorded),
                path=directory,
                data_path=directory / DATA_NAME,
                sidecar_path=directory / SIDECAR_NAME,
                valid=problem is None,
                problem=problem,
                ranges=ranges,
                repo_path=repo_path,
                commit=commit,
            )
        )
    return out


def remove_stale(partial_dir: str | os.PathLike[str], older_than: float) -> list[Path]:
    """Delete every partial (valid or not) untouched for ``older_than`` seconds; return their directories.

    Live writers' partials are never touched; leftovers of interrupted deletions always go.
    """
    pdir = Path(partial_dir)
    _clear_trash(pdir)
    now = _now()
    removed: list[Path] = []
    for info in list_partials(pdir):
        if now - info.updated_at >= older_than and _discard_dir(info.path):
            removed.append(info.path)
    return removed


def remove_partial(path: str | os.PathLike[str]) -> None:
    """Delete a partial given its directory, data file or sidecar path (already gone is fine)."""
    p = Path(path)
    for candidate in (p, p.parent):
        if _DIR.fullmatch(candidate.name):
            _discard_dir(candidate)
            return
    raise ValueError(f"not a partial: {p}")
