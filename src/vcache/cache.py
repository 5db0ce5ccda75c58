"""The HF cache layout, written exactly as huggingface_hub 2.x writes it, and atomic publishing into it.

::

    <cache>/CACHEDIR.TAG
    <cache>/.locks/<repo_folder>/<etag>.lock          (huggingface_hub's lock path; see ``locks``)
    <cache>/.locks/<repo_folder>/{gc.lock,uses/}      (vcache's per-repo gc lock and use markers; see ``usage``)
    <cache>/<repo_folder>/blobs/<etag>
    <cache>/<repo_folder>/refs/<revision>              (commit, no newline; written only for whole snapshots)
    <cache>/<repo_folder>/snapshots/<commit>/<path>    (relative symlink to ../../blobs/<etag>)
    <cache>/<repo_folder>/trees/<commit>.json          (huggingface_hub's tree cache, for offline completeness)
    <cache>/<repo_folder>/.vcache/{partials,ledger,quarantine,tmp,used,trash}/   (vcache's own state, nowhere else)

Every path :class:`CacheRepo` builds from a name (blob name, commit, ref, snapshot path) is refused with
:class:`~vcache.errors.UnsafePath` when it would leave its folder, whoever supplied the name.

Publishing is fsync + ``os.replace`` so a reader sees either nothing or the whole verified blob. Snapshot
entries and refs are made in ``.vcache/tmp/`` (same repo folder, so the rename stays atomic) and renamed into
place: a reader listing ``snapshots/<commit>/`` or ``refs/`` never sees a temporary name. This module
never decides whether a file is good: callers publish only what passed its checks. vcache's JSON state is
written with :func:`write_atomic` and read with :func:`read_state`, which treats what it cannot use as absent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcache.config import symlinks_disabled
from vcache.errors import CacheNotWritable, DiskFull, UnsafePath

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 64 << 20
"""vcache's own JSON state files larger than this are not read (records are KiB, a snapshot record of a
repo with many files a few MiB)."""

CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by huggingface_hub (written by vcache).\n"
    "# For information about cache directory tags, see: https://bford.info/cachedir/\n"
)


def _umask() -> int:
    # os.umask can only be read by setting it; do it once per call site under the GIL.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a new file would get from the umask (huggingface_hub chmods blobs the same way)."""
    return 0o666 & ~_umask()


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a crash (best effort on odd filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def entry_kind(path: str | os.PathLike[str]) -> str | None:
    """What is at ``path``, symlinks not followed: None when nothing is, ``"file"`` for a regular file, else
    ``"symlink"``, ``"directory"``, ``"fifo"``, ``"socket"``, ``"device"`` or ``"special file"``.

    A blob is trusted only as a regular file inside the cache: anything else can change what a reader gets
    without the blob's own stat changing. Raises :class:`OSError` when it cannot tell (no permission).
    """
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "device"
    return "special file"


def translate_os_error(
    exc: OSError,
    what: str,
    *,
    where: str | os.PathLike[str] | None = None,
    then: str = "",
    **context: Any,
) -> OSError:
    """The one mapping of disk errors: ENOSPC / EDQUOT / EFBIG become :class:`~vcache.errors.DiskFull`,
    EROFS / EACCES / EPERM :class:`~vcache.errors.CacheNotWritable`; any other error comes back unchanged.

    ``what`` says what was being done (``"publishing <etag>"``); ``where`` is a directory whose free space
    the message reports; ``then`` says what became of the work (``"the partial is kept"``). ``context``
    goes on the error, with ``errno``.
    """
    why = exc.strerror or os.strerror(exc.errno or 0)
    after = f"; {then}" if then else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        if exc.errno == errno.EFBIG:
            why = "file size limit reached"
        free = ""
        if where is not None:
            try:
                free = f"; {shutil.disk_usage(where).free:,} bytes free"
            except OSError:
                free = "; free space unknown"
        return DiskFull(
            f"{what}: not enough space ({why}{free}); free space and run again{after}",
            errno=exc.errno,
            **context,
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        name = f": {exc.filename}" if exc.filename else ""
        return CacheNotWritable(
            f"{what}: the cache is not writable ({why}{name}); point --cache-dir / HF_HUB_CACHE at a "
            f"writable directory{after}",
            errno=exc.errno,
            **context,
        )
    return exc


def _stays_inside(name: object, *, nested: bool = False) -> bool:
    """True when ``name`` names an entry inside a folder: one plain name (``nested``: ``/``-separated ones)."""
    if not isinstance(name, str) or "\0" in name:
        return False
    parts = name.split("/") if nested else (name,)
    return not any(p in ("", ".", "..") or "/" in p for p in parts)


def _checked(name: str, what: str, *, nested: bool = False) -> str:
    """``name`` if it names an entry inside its folder (``nested``: a ``/``-separated relative path), else
    :class:`UnsafePath`. Every path :class:`CacheRepo` builds from a name (a blob name, a commit, a ref)
    passes here, and snapshot paths through :meth:`CacheRepo.snapshot_file`, so no caller can make it write
    or read outside the repo folder."""
    if not _stays_inside(name, nested=nested):
        raise UnsafePath(
            f"refusing {what} {name!r}: it would not name an entry inside the cache folder. Nothing was "
            "written; the name came from a hostile server, a damaged cache, or a bad argument",
            path=name,
        )
    return name


@dataclass(frozen=True)
class CacheRepo:
    """One repo's folder in an HF cache, and the operations vcache performs on it."""

    cache_dir: Path
    repo_id: str
    repo_type: str = "model"

    @property
    def folder_name(self) -> str:
        """``models--org--name`` (huggingface_hub's own naming)."""
        # huggingface_hub.file_download.repo_folder_name, spelled out: importing that module costs ~45 ms
        # of every command's start-up, and the rule is part of the cache format (a test pins the two equal).
        return "--".join([f"{self.repo_type}s", *self.repo_id.split("/")])

    @property
    def root(self) -> Path:
        """The repo folder."""
        return self.cache_dir / self.folder_name

    @property
    def blobs(self) -> Path:
        """``blobs/``."""
        return self.root / "blobs"

    @property
    def state(self) -> Path:
        """``.vcache/``: vcache's own state for this repo."""
        return self.root / ".vcache"

    @property
    def partials(self) -> Path:
        """Resumable partial downloads."""
        return self.state / "partials"

    @property
    def ledger_dir(self) -> Path:
        """Verification records, one per blob."""
        return self.state / "ledger"

    @property
    def tmp_dir(self) -> Path:
        """Where snapshot entries and refs are made before they are renamed into place."""
        return self.state / "tmp"

    @property
    def quarantine_dir(self) -> Path:
        """Files that failed verification, kept with their reports."""
        return self.state / "quarantine"

    @property
    def used_dir(self) -> Path:
        """``used/<commit>``: empty files whose mtime is when vcache last used that revision (see ``usage``)."""
        return self.state / "used"

    @property
    def trash_dir(self) -> Path:
        """Where ``lifecycle`` renames a snapshot folder before deleting it (same filesystem: atomic)."""
        return self.state / "trash"

    @property
    def locks_dir(self) -> Path:
        """``<cache>/.locks/<repo_folder>``: huggingface_hub's per-blob locks, and vcache's gc lock and use markers."""
        return self.cache_dir / ".locks" / self.folder_name

    def blob_path(self, etag: str) -> Path:
        """``blobs/<etag>``."""
        return self.blobs / _checked(etag, "blob name")

    def lock_path(self, etag: str) -> Path:
        """huggingface_hub's per-blob lock path, so the two tools never fetch one blob at once."""
        return self.locks_dir / f"{_checked(etag, 'blob name')}.lock"

    def snapshot_dir(self, commit: str) -> Path:
        """``snapshots/<commit>``."""
        return self.root / "snapshots" / _checked(commit, "commit")

    def ref_path(self, revision: str) -> Path:
        """``refs/<revision>`` (a revision such as ``refs/pr/1`` nests, as in huggingface_hub)."""
        return self.root / "refs" / _checked(revision, "revision", nested=True)

    def tree_path(self, commit: str) -> Path:
        """``trees/<commit>.json``."""
        return self.root / "trees" / f"{_checked(commit, 'commit')}.json"

    def snapshot_file(self, commit: str, path: str) -> Path:
        """Where a repo file appears in a snapshot (``path`` must already be validated)."""
        base = os.path.normpath(self.snapshot_dir(commit))
        target = Path(os.path.normpath(os.path.join(base, path)))
        if not str(target).startswith(base + os.sep):
            raise UnsafePath(f"{path!r} would escape the snapshot folder", path=path)
        return target

    def ensure_layout(self) -> None:
        """Create the folders a pull writes into, and ``CACHEDIR.TAG`` (huggingface_hub writes one too)."""
        try:
            for d in (self.blobs, self.partials, self.ledger_dir):
                d.mkdir(parents=True, exist_ok=True)
            tag = self.cache_dir / "CACHEDIR.TAG"
            if not tag.exists():
                write_atomic(tag, CACHEDIR_TAG.encode())
        except OSError as exc:
            raise translate_os_error(exc, f"preparing {self.root}") from exc

    def publish_blob(self, data_path: Path, etag: str) -> Path:
        """Move a verified, complete file into ``blobs/<etag>`` atomically; returns the blob path.

        The file is fsynced and made read-only first, so a crash leaves either no blob or the whole one,
        and nothing edits verified bytes in place by accident.
        """
        dest = self.blob_path(etag)
        try:
            fd = os.open(data_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            # Read-only for everyone: verified weights are never edited in place (the group can still
            # read them; huggingface_hub chmods to the umask default, which may be group-writable).
            os.chmod(data_path, 0o444 & ~_umask())
            os.replace(data_path, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise translate_os_error(exc, f"publishing {etag}") from exc
        return dest

    def link(self, commit: str, path: str, etag: str) -> Path:
        """Point ``snapshots/<commit>/<path>`` at ``blobs/<etag>`` (relative symlink, atomic replace).

        Where symlinks are unsupported (or ``HF_HUB_DISABLE_SYMLINKS`` is set), the blob is copied, as
        huggingface_hub does.
        """
        target = self.snapshot_file(commit, path)
        blob = self.blob_path(etag)
        tmp = self.tmp_dir / f"{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            if symlinks_disabled():
                shutil.copyfile(blob, tmp)
            else:
                try:
                    os.symlink(os.path.relpath(blob, target.parent), tmp)
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    shutil.copyfile(blob, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise translate_os_error(exc, f"linking {path}") from exc
        return target

    def unlink(self, commit: str, path: str) -> bool:
        """Remove a snapshot entry (link or copy); True if something was removed."""
        target = self.snapshot_file(commit, path)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        return True

    def linked_etag(self, commit: str, path: str) -> str | None:
        """The blob a snapshot entry points to, if it is a link into ``blobs/`` (None otherwise)."""
        target = self.snapshot_file(commit, path)
        try:
            dest = os.readlink(target)
        except OSError:
            return None
        name = os.path.basename(dest)
        return (
            name
            if os.path.dirname(os.path.normpath(os.path.join(target.parent, dest))) == str(self.blobs)
            else None
        )

    def write_ref(self, revision: str, commit: str) -> None:
        """Write ``refs/<revision>`` atomically (no trailing newline, like huggingface_hub)."""
        ref = self.ref_path(revision)
        if revision == commit:
            return
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            if ref.exists() and ref.read_text() == commit:
                return
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(ref, commit.encode(), tmp_dir=self.tmp_dir)
        except OSError as exc:
            raise translate_os_error(exc, f"writing ref {revision}") from exc

    def read_ref(self, revision: str) -> str | None:
        """The commit ``refs/<revision>`` holds, if any."""
        try:
            return self.ref_path(revision).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def write_tree(self, commit: str, entries: Mapping[str, tuple[int, str, str | None]]) -> None:
        """Write ``trees/<commit>.json`` in huggingface_hub's own format (path -> size, blob id, sha256)."""
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

        tree_file = self.tree_path(commit)  # huggingface_hub builds the same path, unchecked
        tree = {
            path: TreeCacheEntry(size=size, blob_id=blob_id, lfs_sha256=sha, lfs_size=size if sha else None)
            for path, (size, blob_id, sha) in entries.items()
        }
        write_tree_cache(str(self.root), commit, tree)
        # huggingface_hub writes it through mkstemp (0600): give it the umask default so a shared
        # cache's group can read it too.
        with contextlib.suppress(OSError):
            os.chmod(tree_file, default_file_mode())

    def read_tree(self, commit: str) -> dict[str, tuple[int, str, str | None]] | None:
        """Read ``trees/<commit>.json`` (None when absent, of another format version, unusable (see
        :func:`read_state`), or when a name in it would lead outside the repo folder)."""
        from huggingface_hub._tree_cache import TREE_CACHE_FORMAT_VERSION

        # Refuses a commit that would lead outside (huggingface_hub does not check). Read from the file every
        # time (not through huggingface_hub, which keeps every listing it read in memory): a tree gc deleted
        # since must read as absent.
        path = self.tree_path(commit)
        data = read_state(path)
        if data is None or data.get("format_version") != TREE_CACHE_FORMAT_VERSION:
            return None
        files = data.get("files")
        if not isinstance(files, dict):
            _warn_unusable_state(path, "has no file list")
            return None
        out: dict[str, tuple[int, str, str | None]] = {}
        for name, e in files.items():
            if not (
                isinstance(e, dict)
                and type(e.get("size")) is int
                and isinstance(e.get("blob_id"), str)
                and isinstance(e.get("lfs_sha256"), str | None)
            ):
                _warn_unusable_state(path, f"describes {name[:200]!r} unlike huggingface_hub writes it")
                return None
            out[name] = (e["size"], e["blob_id"], e.get("lfs_sha256"))
        if not all(
            _stays_inside(p, nested=True) and _stays_inside(blob) and (sha is None or _stays_inside(sha))
            for p, (_size, blob, sha) in out.items()
        ):
            return None
        return out

    def snapshots(self) -> list[str]:
        """Commits that have a snapshot folder."""
        try:
            return sorted(p.name for p in (self.root / "snapshots").iterdir() if p.is_dir())
        except OSError:
            return []


def write_atomic(path: Path, data: bytes, *, tmp_dir: Path | None = None) -> None:
    """Write a small file atomically: temp file (in ``tmp_dir``, which must be on the same filesystem, else in
    the same folder), fsync, ``os.replace``."""
    tmp = (tmp_dir or path.parent) / f"{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_state(path: Path, *, max_bytes: int = MAX_STATE_BYTES) -> dict[str, Any] | None:
    """One of vcache's JSON state files (a ledger record, a partial's sidecar, a quarantine report, a tree)
    as a dict; None when it is absent.

    All of it can be found out again (by hashing, by asking the Hub), so a file that cannot be used is
    treated as absent too: one that cannot be read, is larger than ``max_bytes``, is not UTF-8 JSON, is
    nested too deeply for Python's parser, or is not a JSON object. That is logged as a warning naming the
    file. Never raises, and never deletes anything.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            why = f"is larger than {max_bytes:,} bytes"
        else:
            data = json.loads(raw)
            if isinstance(data, dict):
                return data
            why = "is not a JSON object"
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        why = f"cannot be read ({exc.strerror or exc})"
    except RecursionError:  # Python's parser recurses once per level and gives up near 1000 levels
        why = "is JSON nested too deeply to read"
    except ValueError as exc:  # not UTF-8, not JSON, or a number of thousands of digits
        why = f"is not valid JSON ({exc})"
    _warn_unusable_state(path, why)
    return None


def _warn_unusable_state(path: Path, why: str) -> None:
    log.warning(
        "ignoring %s: it %s. vcache treats it as absent and works out again what it held; "
        "if this repeats, delete the file.",
        path,
        why,
    )


def iter_repo_folders(cache_dir: Path) -> Iterator[tuple[str, str, Path]]:
    """Yield ``(repo_type, repo_id, folder)`` for each repo folder in a cache (any tool's)."""
    try:
        entries = sorted(cache_dir.iterdir())
    except OSError:
        return
    for entry in entries:
        prefix, sep, rest = entry.name.partition("--")
        if not sep or not entry.is_dir() or prefix not in ("models", "datasets", "spaces"):
            continue
        yield prefix[:-1], rest.replace("--", "/"), entry
