"""The repository model behind the test Hub: commits, refs, and the files each revision holds.

Owns what :mod:`vcache.testing.hub` serves: which files a revision has, their sizes, their git blob ids and
sha256 digests, which of them are LFS, and how branch/tag/PR names resolve to commits. Digests are computed
here with :mod:`hashlib` directly and never with vcache's own hashing code, so that a bug there cannot hide
behind the same bug here. This module does no network I/O and never copies a file it was given by path.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal

__all__ = [
    "LFS_PATTERNS",
    "LFS_SIZE_THRESHOLD",
    "Commit",
    "Repo",
    "RepoFile",
    "RepoType",
    "git_blob_id",
    "git_tree_ids",
    "is_lfs_path",
    "lfs_pointer",
    "repos_from_directory",
]

RepoType = Literal["model", "dataset", "space"]

#: The name patterns of the default ``.gitattributes`` of a new Hub repo that decide which files are LFS.
LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.onnx",
    "*.gguf",
    "*.msgpack",
    "*.npz",
    "*.tflite",
    "*.ot",
    "*.model",
    "*.zip",
    "*.tar.gz",
)

#: Files at least this large are stored in LFS whatever their name (the Hub rejects larger plain git blobs).
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HASH_CHUNK = 8 * 1024 * 1024


def git_blob_id(data: bytes) -> str:
    """The git blob id of ``data``: ``sha1(b"blob <size>\\0" + data)``."""
    h = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file that git stores in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class RepoFile:
    """One file of one revision, as the Hub describes it.

    ``blob_id`` is the git object id the Hub reports as ``oid``/``blobId``: for a regular file the git blob
    id of its content, for an LFS file the git blob id of its *pointer* (that is what git stores). The id a
    client names the cached blob by, and checks the content against, is :attr:`etag`: the git blob id for
    regular files and ``sha256`` for LFS files. The bytes live either in ``data`` or in the file at
    ``source``, which is served in place.
    """

    path: str
    size: int
    blob_id: str
    sha256: str | None
    lfs: bool
    data: bytes | None = field(default=None, repr=False)
    source: Path | None = None

    @property
    def etag(self) -> str:
        """The unquoted ETag the Hub sends for this file (sha256 for LFS, git blob id otherwise)."""
        if self.lfs:
            assert self.sha256 is not None
            return self.sha256
        return self.blob_id

    @property
    def pointer(self) -> bytes | None:
        """The LFS pointer text of an LFS file, else ``None``."""
        return lfs_pointer(self.sha256, self.size) if self.lfs and self.sha256 else None

    def read_bytes(self) -> bytes:
        """The whole content (read from ``source`` for file-backed entries)."""
        if self.data is not None:
            return self.data
        assert self.source is not None
        return self.source.read_bytes()

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes of content from ``offset`` (fewer at the end of the file)."""
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self.source is not None
        with self.source.open("rb") as f:
            return os.pread(f.fileno(), length, offset)

    @classmethod
    def from_bytes(cls, path: str, data: bytes, *, lfs: bool) -> RepoFile:
        """Describe in-memory content, hashing it with the digest its kind needs."""
        if lfs:
            sha256 = hashlib.sha256(data).hexdigest()
            return cls(path, len(data), git_blob_id(lfs_pointer(sha256, len(data))), sha256, True, data=data)
        return cls(path, len(data), git_blob_id(data), None, False, data=data)

    @classmethod
    def from_source(cls, path: str, source: Path, *, lfs: bool | None) -> RepoFile:
        """Describe a file on disk served in place; ``lfs=None`` applies the default LFS rules."""
        st = source.stat()
        is_lfs = is_lfs_path(path, st.st_size) if lfs is None else lfs
        key = (str(source.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, is_lfs)
        with _digest_lock:
            digest = _digest_cache.get(key)
        if digest is None:
            digest = _hash_file(source, st.st_size, is_lfs)
            with _digest_lock:
                _digest_cache[key] = digest
        if is_lfs:
            return cls(
                path, st.st_size, git_blob_id(lfs_pointer(digest, st.st_size)), digest, True, source=source
            )
        return cls(path, st.st_size, digest, None, False, source=source)


# A file committed to several repos or commits is hashed once; the key changes when the file does.
_digest_cache: dict[tuple[str, int, int, int, bool], str] = {}
_digest_lock = threading.Lock()


def _hash_file(source: Path, size: int, lfs: bool) -> str:
    h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    with source.open("rb", buffering=0) as f:
        buf = bytearray(_HASH_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def is_lfs_path(path: str, size: int) -> bool:
    """Whether the default Hub ``.gitattributes`` put this file in LFS (by name pattern or by size)."""
    name = posixpath.basename(path)
    return size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatchcase(name, p) for p in LFS_PATTERNS)


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot: the files at this commit and where each was last changed."""

    id: str
    parent: str | None
    message: str
    date: datetime
    files: Mapping[str, RepoFile]
    last_changed: Mapping[str, str]


def _commit_id(parent: str | None, files: Mapping[str, RepoFile], message: str) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    h.update(f"parent {parent or ''}\n".encode())
    for path in sorted(files):
        h.update(f"{path}\0{files[path].blob_id}\n".encode())
    h.update(f"message {message}".encode())
    return h.hexdigest()


def _clean_path(path: str) -> str:
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise ValueError(f"invalid repo file path {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid repo file path {path!r}")
    return path


def _check_no_dir_conflicts(paths: Iterable[str]) -> None:
    files = set(paths)
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in files:
                raise ValueError(f"{prefix!r} is both a file and a directory")


class Repo:
    """A Hub repository held in memory: commits, branches, tags and PR refs.

    Safe to mutate while a server is serving it: every commit is an immutable snapshot and refs are
    swapped under a lock, so a request sees one revision or the next, never a mix.
    """

    def __init__(
        self,
        repo_id: str,
        repo_type: RepoType = "model",
        *,
        private: bool = False,
        gated: bool | Literal["auto", "manual"] = False,
    ) -> None:
        parts = repo_id.split("/")
        if not 1 <= len(parts) <= 2 or not all(_REPO_NAME.fullmatch(p) for p in parts):
            raise ValueError(f"invalid repo id {repo_id!r}: expected 'name' or 'org/name'")
        if repo_type not in ("model", "dataset", "space"):
            raise ValueError(f"invalid repo type {repo_type!r}")
        self.repo_id = repo_id
        self.repo_type: RepoType = repo_type
        self.private = private
        self.gated: bool | Literal["auto", "manual"] = gated
        self.created = datetime.now(UTC)
        self._lock = threading.Lock()
        self._commits: dict[str, Commit] = {}
        self._refs: dict[str, str] = {}  # full ref name ("refs/heads/main") -> commit id
        self._by_sha256: dict[str, RepoFile] = {}

    def __repr__(self) -> str:
        return f"Repo({self.repo_id!r}, repo_type={self.repo_type!r})"

    @property
    def default_branch(self) -> str:
        """The branch an unqualified request means (always ``main``)."""
        return "main"

    def commit(
        self,
        files: Mapping[str, bytes | Path],
        *,
        branch: str = "main",
        message: str = "Upload files",
        delete: Iterable[str] = (),
        lfs: Mapping[str, bool] | None = None,
    ) -> str:
        """Commit ``files`` on top of ``branch`` and move the branch; returns the 40-hex commit id.

        Files not named are inherited from the branch head (a branch that does not exist yet starts
        empty). ``delete`` removes paths, or whole folders when a path names one. ``lfs`` overrides the
        LFS decision per path. Values are bytes, or a :class:`~pathlib.Path` that is served in place and
        hashed once here.
        """
        overrides = dict(lfs or {})
        new_files = {}
        for raw_path, value in files.items():
            path = _clean_path(raw_path)
            if isinstance(value, Path):
                new_files[path] = RepoFile.from_source(path, value, lfs=overrides.get(path))
            elif isinstance(value, bytes | bytearray | memoryview):
                data = bytes(value)
                is_lfs = overrides.get(path, is_lfs_path(path, len(data)))
                new_files[path] = RepoFile.from_bytes(path, data, lfs=is_lfs)
            else:
                raise TypeError(f"{path}: expected bytes or Path, got {type(value).__name__}")
        with self._lock:
            parent_id = self._refs.get(f"refs/heads/{branch}")
            parent = self._commits[parent_id] if parent_id else None
            merged = dict(parent.files) if parent else {}
            for target in delete:
                target = _clean_path(target)
                doomed = [p for p in merged if p == target or p.startswith(target + "/")]
                if not doomed:
                    raise KeyError(f"cannot delete {target!r}: not in {branch!r}")
                for p in doomed:
                    del merged[p]
            merged.update(new_files)
            _check_no_dir_conflicts(merged)
            commit_id = _commit_id(parent_id, merged, message)
            last_changed = {
                p: (
                    parent.last_changed[p]
                    if parent and p in parent.files and parent.files[p].blob_id == f.blob_id
                    else commit_id
                )
                for p, f in merged.items()
            }
            self._commits[commit_id] = Commit(
                id=commit_id,
                parent=parent_id,
                message=message,
                date=datetime.now(UTC),
                files=MappingProxyType(merged),
                last_changed=MappingProxyType(last_changed),
            )
            for f in new_files.values():
                if f.sha256:
                    self._by_sha256.setdefault(f.sha256, f)
            self._refs[f"refs/heads/{branch}"] = commit_id
        return commit_id

    def branch(self, name: str, rev: str) -> str:
        """Create or move branch ``name`` to ``rev``; returns the commit id."""
        return self.ref(f"refs/heads/{name}", rev)

    def tag(self, name: str, rev: str) -> str:
        """Create or move tag ``name`` to ``rev``; returns the commit id."""
        return self.ref(f"refs/tags/{name}", rev)

    def pr(self, number: int, rev: str) -> str:
        """Point ``refs/pr/<number>`` at ``rev``; returns the commit id."""
        return self.ref(f"refs/pr/{number}", rev)

    def ref(self, ref: str, rev: str) -> str:
        """Point any full ref (e.g. ``refs/convert/parquet``) at ``rev``; returns the commit id."""
        if not ref.startswith("refs/") or any(p in ("", ".", "..") for p in ref.split("/")):
            raise ValueError(f"invalid ref {ref!r}")
        commit_id = self.resolve(rev)
        with self._lock:
            self._refs[ref] = commit_id
        return commit_id

    def resolve(self, rev: str) -> str:
        """The commit id ``rev`` names: a branch, tag, full ref (``refs/pr/1``) or a full commit id.

        Raises :class:`KeyError` when it names nothing.
        """
        with self._lock:
            for candidate in (rev, f"refs/heads/{rev}", f"refs/tags/{rev}"):
                if candidate in self._refs:
                    return self._refs[candidate]
            if _HEX40.fullmatch(rev) and rev in self._commits:
                return rev
        raise KeyError(rev)

    def get_commit(self, rev: str) -> Commit:
        """The commit ``rev`` resolves to (:class:`KeyError` if unknown)."""
        commit_id = self.resolve(rev)
        with self._lock:
            return self._commits[commit_id]

    def files_at(self, rev: str) -> dict[str, RepoFile]:
        """The files of revision ``rev``, by path (:class:`KeyError` if ``rev`` is unknown)."""
        return dict(self.get_commit(rev).files)

    def refs(self) -> dict[str, str]:
        """Every ref, by full name (``refs/heads/main``, ``refs/tags/v1``, ``refs/pr/1``), to its commit."""
        with self._lock:
            return dict(self._refs)

    def history(self, rev: str) -> list[Commit]:
        """The commits reachable from ``rev``, newest first."""
        out = []
        commit: Commit | None = self.get_commit(rev)
        with self._lock:
            while commit is not None:
                out.append(commit)
                commit = self._commits[commit.parent] if commit.parent else None
        return out

    def find_lfs(self, sha256: str, path: str | None = None) -> RepoFile | None:
        """An LFS file of any commit with this sha256 (preferring one at ``path``), or ``None``."""
        with self._lock:
            if path is not None:
                for commit in self._commits.values():
                    f = commit.files.get(path)
                    if f is not None and f.sha256 == sha256:
                        return f
            return self._by_sha256.get(sha256)


def git_tree_ids(files: Mapping[str, RepoFile]) -> dict[str, str]:
    """The git tree object id of every directory (``""`` is the root) of a file listing."""
    children: dict[str, dict[str, tuple[str, str]]] = {"": {}}
    for path, f in files.items():
        parts = path.split("/")
        for i in range(len(parts) - 1):
            parent, name = "/".join(parts[:i]), parts[i]
            children.setdefault(parent, {})[name] = ("40000", "")
            children.setdefault("/".join(parts[: i + 1]), {})
        children["/".join(parts[:-1])][parts[-1]] = ("100644", f.blob_id)
    ids: dict[str, str] = {}
    for directory in sorted(children, key=lambda d: d.count("/") + bool(d), reverse=True):
        entries = children[directory]
        # git orders a tree's entries by name, with directory names compared as if they ended in "/".
        order = sorted(entries, key=lambda n: n + "/" if entries[n][0] == "40000" else n)
        body = b""
        for name in order:
            mode, oid = entries[name]
            if mode == "40000":
                oid = ids["/".join(filter(None, (directory, name)))]
            body += f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid)
        ids[directory] = hashlib.sha1(b"tree %d\0" % len(body) + body, usedforsecurity=False).hexdigest()
    return ids


def repos_from_directory(root: Path) -> list[Repo]:
    """One repo per folder under ``root``, each with one commit on ``main`` of every file in it.

    ``root/<org>/<name>/`` is the model ``org/name``; a folder that directly holds a file is a repo
    itself, so ``root/<name>/`` is the one-segment model ``name``. ``root/datasets/…`` and
    ``root/spaces/…`` hold datasets and spaces the same way. Hidden files and folders are skipped. Files
    are served in place, never copied.
    """
    repos: list[Repo] = []
    for top in sorted(_visible_dirs(root)):
        if top.name in ("datasets", "spaces") and not _has_files(top):
            repo_type: RepoType = "dataset" if top.name == "datasets" else "space"
            for first in sorted(_visible_dirs(top)):
                repos.extend(_repos_at(first, repo_type))
        else:
            repos.extend(_repos_at(top, "model"))
    return repos


def _repos_at(folder: Path, repo_type: RepoType) -> list[Repo]:
    # A folder holding files is a one-segment repo; otherwise it is an org and its folders are repos.
    if _has_files(folder):
        return [_repo_from_folder(folder.name, folder, repo_type)]
    return [
        _repo_from_folder(f"{folder.name}/{sub.name}", sub, repo_type)
        for sub in sorted(_visible_dirs(folder))
    ]


def _repo_from_folder(repo_id: str, folder: Path, repo_type: RepoType) -> Repo:
    files: dict[str, bytes | Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                full = Path(dirpath, name)
                files[full.relative_to(folder).as_posix()] = full
    repo = Repo(repo_id, repo_type)
    repo.commit(files, message=f"Import {folder.name}")
    return repo


def _visible_dirs(folder: Path) -> Iterable[Path]:
    return (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_files(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir())
