"""Lockfiles: the exact bytes of pinned Hub repos, so that a pull can be checked without trusting any server.

What this module owns: the lockfile format (written and parsed here, nowhere else), the typed values it
holds (:class:`Lock`, :class:`LockedRepo`, :class:`LockedFile`) and saying what an update changed
(:class:`LockDiff`). Making a repo's entry from a verified pull (:func:`vcache.pull.lock_repo`) and what a
lock means for a pull (``vcache pull --lock``) are :mod:`vcache.pull`'s business, and for the cache
(``vcache verify --lock``) :mod:`vcache.verify`'s; this module never downloads or judges bytes itself, never
imports the modules that do, and never writes anything but the lockfile it is asked to write.

The format is TOML (parsed with the standard library's ``tomllib``), written by hand in one canonical form
so that a diff shows exactly what moved: repos sorted by id then type, files sorted by path, one file per
line, no timestamps. Locking the same state twice gives the same bytes, and changing one repo leaves every
line of the others as it was::

    # vcache lockfile: the exact files of pinned Hugging Face Hub repos.
    # Written by `vcache lock`; `vcache pull --lock` fetches these bytes, `vcache verify --lock` checks them.
    version = 1

    [[repo]]
    id = "acme/tiny-llama"
    type = "model"
    revision = "main"
    commit = "3c1d0c3e0f7f2a4b5d6e7f8091a2b3c4d5e6f708"
    include = ["*.json", "*.safetensors"]
    exclude = []
    files = [
      { path = "config.json", size = 655, sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" },
      { path = "model.safetensors", size = 1048664, sha256 = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752" },
    ]

Per repo: ``id``, ``type`` (model, dataset or space), ``revision`` (what was asked for: a branch, tag or
commit), ``commit`` (what it resolved to: the pull fetches this commit, never the branch), ``include`` /
``exclude`` (the glob patterns that chose the files, re-applied by ``vcache lock --update``), ``signature``
(only when the repo was locked with ``--verify-signature METHOD``: that METHOD, which every locked pull of
the repo then requires; see :mod:`vcache.signing`) and ``files``.
Per file: ``path``, ``size`` and ``sha256``: the sha256 of *every* file, small ones included, computed by
vcache from bytes it verified (the Hub names small files by their git blob sha1, which is weaker and which a
mirror may not send at all).

Finding codes of a check against a lock (``lock.size_mismatch`` and ``lock.digest_mismatch`` are made by
:func:`vcache.checks.judge.judge`, like the publisher-digest ones; the others here):

=========================  =====  ==============================================================================
code                       level  meaning
=========================  =====  ==============================================================================
``lock.digest_mismatch``   fail   the bytes do not hash to the locked sha256 (quarantined when downloaded)
``lock.size_mismatch``     fail   the size is not the locked one (a pull does not download such a file at all)
``lock.missing_file``      fail   a locked file the server does not have, or the cache does not hold
``lock.unlisted``          info   a file the server lists at the locked commit but the lock does not: not fetched
``lock.server_digest``     info   the bytes match the lock but not the digest the server named them by: they are
                                  stored under their locked sha256
=========================  =====  ==============================================================================

Reading is strict: an unknown key, a missing one, a version other than :data:`LOCK_VERSION`, a malformed
sha256 or commit, a path that could escape the repo, a path or repo listed twice are all refused with a
:class:`~vcache.errors.UsageError` naming the lockfile and the entry (TOML syntax errors also name the line).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vcache.config import REPO_TYPES
from vcache.errors import UsageError
from vcache.hashing import Digest
from vcache.hub import COMMIT_RE, validate_repo_id, validate_repo_path, validate_revision
from vcache.report import Finding, fail, info

if TYPE_CHECKING:
    from vcache.signing import SignatureMethod

__all__ = [
    "DEFAULT_LOCKFILE",
    "LOCK_VERSION",
    "Lock",
    "LockDiff",
    "LockedFile",
    "LockedRepo",
    "canonical_patterns",
    "missing_file",
    "read_lock",
    "server_digest",
    "unlisted",
]

#: The format version this vcache writes and reads.
LOCK_VERSION = 1
#: Where ``vcache lock`` writes when no ``-o`` is given.
DEFAULT_LOCKFILE = "vcache.lock"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEADER = (
    "# vcache lockfile: the exact files of pinned Hugging Face Hub repos.\n"
    "# Written by `vcache lock`; `vcache pull --lock` fetches these bytes, `vcache verify --lock` checks them.\n"
)
_REPO_KEYS = ("id", "type", "revision", "commit", "include", "exclude", "signature", "files")
_FILE_KEYS = ("path", "size", "sha256")


@dataclass(frozen=True)
class LockedFile:
    """One pinned file: its path in the repo, its size and the sha256 of its bytes (64 lowercase hex)."""

    path: str
    size: int
    sha256: str

    @property
    def digest(self) -> Digest:
        """The sha256 as a :class:`~vcache.hashing.Digest` (what a locked pull computes on the bytes)."""
        return Digest("sha256", self.sha256)


@dataclass(frozen=True)
class LockedRepo:
    """One pinned repo: what was asked for (``revision``, patterns), what it resolved to, and its files.
    ``signature`` is the signature METHOD (``str()`` of a :class:`~vcache.signing.SignatureMethod`) a locked
    pull of the repo requires, None when it was locked without one."""

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    files: tuple[LockedFile, ...] = ()
    signature: str | None = None

    @cached_property
    def _by_path(self) -> dict[str, LockedFile]:
        return {f.path: f for f in self.files}

    def file(self, path: str) -> LockedFile | None:
        """The locked file at ``path``, or None when the lock does not list it."""
        return self._by_path.get(path)

    def selects(self, path: str) -> bool:
        """Whether the recorded include/exclude patterns choose ``path`` (as they chose the locked files)."""
        from huggingface_hub.utils._paths import filter_repo_objects

        return bool(
            list(
                filter_repo_objects(
                    [path],
                    allow_patterns=list(self.include) or None,
                    ignore_patterns=list(self.exclude) or None,
                )
            )
        )

    @property
    def name(self) -> str:
        """``org/name`` for models, ``datasets/org/name`` and ``spaces/org/name`` otherwise (for messages)."""
        return self.repo_id if self.repo_type == "model" else f"{self.repo_type}s/{self.repo_id}"

    def signature_method(
        self, given: str | SignatureMethod | None, lockfile: str
    ) -> str | SignatureMethod | None:
        """The signature method a pull of this repo under the lock requires: ``given`` (``verify_signature``,
        ``--verify-signature``) or the one the lock records, None when neither. Both given and trusting
        different things: a :class:`UsageError` naming ``lockfile``."""
        if given is None or self.signature is None:
            return given if given is not None else self.signature
        from vcache.signing import SignatureMethod, parse_method

        asked, recorded = parse_method(given), SignatureMethod.parse(self.signature)
        if not asked.same_trust(recorded):
            raise UsageError(
                f"--verify-signature {asked} was asked for {self.name}, but the lockfile {lockfile} requires "
                f"{recorded}; nothing was downloaded. Drop --verify-signature to use the locked method, or "
                f"lock the repo again with `vcache lock {self.repo_id} --verify-signature {asked} -o {lockfile}`",
                repo_id=self.repo_id,
                lockfile=lockfile,
            )
        return asked


@dataclass(frozen=True)
class Lock:
    """A lockfile's content: its repos, in canonical order. ``source`` is where it was read from (messages)."""

    repos: tuple[LockedRepo, ...] = ()
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.repos, key=lambda r: (r.repo_id, r.repo_type)))
        if ordered != self.repos:
            object.__setattr__(self, "repos", ordered)

    @property
    def where(self) -> str:
        """The lockfile's path for messages (``<in-memory lock>`` when it was never read from a file)."""
        return str(self.source) if self.source is not None else "<in-memory lock>"

    def find(self, repo_id: str, repo_type: str = "model") -> LockedRepo | None:
        """The entry of ``repo_id`` (of ``repo_type``), or None."""
        return next((r for r in self.repos if r.repo_id == repo_id and r.repo_type == repo_type), None)

    def require(self, repo_id: str, repo_type: str = "model") -> LockedRepo:
        """The entry of ``repo_id``; a :class:`UsageError` naming the lockfile when it has none."""
        found = self.find(repo_id, repo_type)
        if found is None:
            kind = "" if repo_type == "model" else f" ({repo_type})"
            pinned = ", ".join(r.name for r in self.repos) or "no repo"
            raise UsageError(
                f"{repo_id}{kind} is not in the lockfile {self.where} (it pins {pinned}); nothing was "
                f"downloaded. Add it with `vcache lock {repo_id}"
                f"{'' if repo_type == 'model' else f' --repo-type {repo_type}'} -o {self.where}`, or pull "
                "it without the lock (unset VCACHE_LOCK)",
                repo_id=repo_id,
                lockfile=self.where,
            )
        return found

    def with_repo(self, entry: LockedRepo) -> Lock:
        """A lock with ``entry`` added, or replacing the entry of the same repo; every other entry unchanged."""
        kept = [r for r in self.repos if (r.repo_id, r.repo_type) != (entry.repo_id, entry.repo_type)]
        return Lock((*kept, entry), self.source)

    def render(self) -> str:
        """The canonical text of the lockfile (see the module docstring)."""
        parts = [_HEADER, f"version = {LOCK_VERSION}\n"]
        for r in self.repos:
            lines = [
                "",
                "[[repo]]",
                f"id = {_string(r.repo_id)}",
                f"type = {_string(r.repo_type)}",
                f"revision = {_string(r.revision)}",
                f"commit = {_string(r.commit)}",
                f"include = {_strings(r.include)}",
                f"exclude = {_strings(r.exclude)}",
            ]
            if r.signature is not None:
                lines.append(f"signature = {_string(r.signature)}")
            if r.files:
                lines.append("files = [")
                lines.extend(
                    f"  {{ path = {_string(f.path)}, size = {f.size}, sha256 = {_string(f.sha256)} }},"
                    for f in sorted(r.files, key=lambda f: f.path)
                )
                lines.append("]")
            else:
                lines.append("files = []")
            parts.append("\n".join(lines) + "\n")
        return "".join(parts)

    def to_document(self) -> dict[str, Any]:
        """The lockfile's content as plain data (the keys and values of its TOML text, optional ones left out
        when unset); :meth:`from_document` reads it back."""
        repos: list[dict[str, Any]] = []
        for r in self.repos:
            entry: dict[str, Any] = {
                "id": r.repo_id,
                "type": r.repo_type,
                "revision": r.revision,
                "commit": r.commit,
                "include": list(r.include),
                "exclude": list(r.exclude),
            }
            if r.signature is not None:
                entry["signature"] = r.signature
            entry["files"] = [
                {"path": f.path, "size": f.size, "sha256": f.sha256}
                for f in sorted(r.files, key=lambda f: f.path)
            ]
            repos.append(entry)
        return {"version": LOCK_VERSION, "repo": repos}

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the canonical text to ``path`` atomically (nothing else is touched); returns the path. A device
        or a fifo (``-o /dev/stdout``) is written into, never replaced."""
        from vcache.cache import write_atomic, written_in_place

        target = Path(path)
        try:
            if written_in_place(target):
                with open(target, "wb") as out:
                    out.write(self.render().encode("utf-8"))
            else:
                write_atomic(target, self.render().encode("utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot write the lockfile {target}: {exc.strerror or exc}") from exc
        return target

    @classmethod
    def parse(cls, text: str, source: str | os.PathLike[str] | None = None) -> Lock:
        """Parse lockfile text strictly; :class:`UsageError` naming ``source`` and the entry on any problem."""
        where = f"lockfile {source}" if source is not None else "the lockfile"
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _bad(where, f"is not valid TOML: {exc}") from None
        return cls.from_document(doc, where, source)

    @classmethod
    def from_document(cls, doc: object, where: str, source: str | os.PathLike[str] | None = None) -> Lock:
        """A lock from its parsed document (the tables of the TOML text, or the same keys in JSON, as a bundle
        manifest carries them: :meth:`to_document`), checked as strictly as :meth:`parse` checks the text;
        :class:`UsageError` naming ``where`` (``lockfile <path>``) and the entry on any problem."""
        if not isinstance(doc, dict):
            raise _bad(where, "is not a table of `version` and [[repo]] entries")
        _only_keys(doc, ("version", "repo"), where, "the top level")
        version = doc.get("version")
        if type(version) is not int:
            raise _bad(
                where, f"has no integer `version` (found {version!r}); it must say version = {LOCK_VERSION}"
            )
        if version != LOCK_VERSION:
            raise _bad(
                where,
                f"is format version {version}, and this vcache reads version {LOCK_VERSION}"
                + (" (a newer vcache wrote it: upgrade vcache)" if version > LOCK_VERSION else ""),
            )
        raw_repos = doc.get("repo", [])
        if not isinstance(raw_repos, list):
            raise _bad(where, "has a `repo` that is not a list of [[repo]] tables")
        repos: list[LockedRepo] = []
        seen: set[tuple[str, str]] = set()
        for i, raw in enumerate(raw_repos, start=1):
            entry = _parse_repo(raw, where, i)
            key = (entry.repo_id, entry.repo_type)
            if key in seen:
                raise _bad(where, f"lists repo {entry.name} twice (repo {i}); keep one entry per repo")
            seen.add(key)
            repos.append(entry)
        return cls(tuple(repos), Path(source) if source is not None else None)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Lock:
        """Read and parse the lockfile at ``path``; a missing or unreadable file is a :class:`UsageError`."""
        target = Path(path)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise UsageError(
                f"no lockfile at {target}; create one with `vcache lock REPO_ID -o {target}`",
                lockfile=str(target),
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot read the lockfile {target}: {exc.strerror or exc}") from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad(f"lockfile {target}", f"is not UTF-8 text (byte {exc.start})") from None
        return cls.parse(text, target)


def read_lock(lock: str | os.PathLike[str] | Lock) -> Lock:
    """A :class:`Lock` from a path (read strictly) or the lock itself."""
    return lock if isinstance(lock, Lock) else Lock.read(lock)


# -- findings ------------------------------------------------------------------------------------------------


def missing_file(message: str, *, path: str) -> Finding:
    """``lock.missing_file``: a locked file that is not there (on the server, or in the cache)."""
    return fail("lock.missing_file", message, path=path)


def unlisted(path: str, lockfile: str, name: str) -> Finding:
    """``lock.unlisted``: a file the server lists at the locked commit that the lock does not pin."""
    return info(
        "lock.unlisted",
        f"{path}: the server lists it at the locked commit of {name}, but {lockfile} does not pin it; not "
        "downloaded",
    )


def server_digest(path: str, named: str, sha256: str) -> Finding:
    """``lock.server_digest``: bytes that match the lock, stored under their sha256 instead of the name the
    server gave them (a mirror that sends no LFS digest, or a wrong one)."""
    return info(
        "lock.server_digest",
        f"{path}: the server names this file {named}, but its bytes are the locked ones (sha256 {sha256}); "
        f"stored as blobs/{sha256}",
        server_etag=named,
        sha256=sha256,
    )


# -- parsing -------------------------------------------------------------------------------------------------


def _bad(where: str, problem: str) -> UsageError:
    """The error for a lockfile that cannot be used; ``where`` is ``lockfile <path>`` or ``the lockfile``."""
    return UsageError(f"{where} {problem}; fix it, or write it again with `vcache lock`")


def _only_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str, what: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _bad(
            where,
            f"has unknown key(s) {', '.join(map(repr, unknown))} in {what} (allowed: {', '.join(allowed)}); "
            "a newer vcache may have written it, or it was edited by hand",
        )


def _parse_repo(raw: Any, where: str, i: int) -> LockedRepo:
    if not isinstance(raw, dict):
        raise _bad(where, f"has a repo entry {i} that is not a table")
    label = f"repo {i}" + (f" ({raw['id']})" if isinstance(raw.get("id"), str) else "")
    _only_keys(raw, _REPO_KEYS, where, label)
    for key in ("id", "type", "revision", "commit", "files"):
        if key not in raw:
            raise _bad(where, f"has no `{key}` in {label}")
    text = {k: raw[k] for k in ("id", "type", "revision", "commit")}
    for key, value in text.items():
        if not isinstance(value, str):
            raise _bad(where, f"has a `{key}` that is not a string in {label}")
    try:
        validate_repo_id(text["id"])
        validate_revision(text["revision"])
    except UsageError as exc:
        raise _bad(where, f"{label}: {exc.message}") from None
    if text["type"] not in REPO_TYPES:
        raise _bad(where, f"{label}: type {text['type']!r} is not one of {', '.join(REPO_TYPES)}")
    if not COMMIT_RE.fullmatch(text["commit"]):
        raise _bad(where, f"{label}: commit {text['commit']!r} is not a 40-hex commit id")
    patterns = {k: _pattern_list(raw.get(k, []), where, f"{label} `{k}`") for k in ("include", "exclude")}
    signature = _signature(raw.get("signature"), where, label)
    files_raw = raw["files"]
    if not isinstance(files_raw, list):
        raise _bad(where, f"{label}: `files` is not a list")
    files: list[LockedFile] = []
    seen: set[str] = set()
    for j, f in enumerate(files_raw, start=1):
        locked = _parse_file(f, where, f"{label}, file {j}")
        if locked.path in seen:
            raise _bad(where, f"{label}: lists {locked.path!r} twice (file {j}); a path is locked once")
        seen.add(locked.path)
        files.append(locked)
    return LockedRepo(
        repo_id=text["id"],
        repo_type=text["type"],
        revision=text["revision"],
        commit=text["commit"],
        include=patterns["include"],
        exclude=patterns["exclude"],
        files=tuple(sorted(files, key=lambda f: f.path)),
        signature=signature,
    )


def _signature(value: Any, where: str, label: str) -> str | None:
    """A recorded signature METHOD, checked as text (the key or certificate is read by the pull that uses it)."""
    if value is None:
        return None
    from vcache.signing import SignatureMethod

    if not isinstance(value, str):
        raise _bad(where, f"{label}: `signature` is not a string")
    try:
        return str(SignatureMethod.parse(value))
    except UsageError:
        raise _bad(
            where,
            f"{label}: signature {value!r} is not a METHOD (key:PUBLIC_KEY.pem, certificate:CHAIN.pem or "
            "sigstore:IDENTITY@ISSUER)",
        ) from None


def _pattern_list(value: Any, where: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise _bad(where, f"{what} is not a list of non-empty glob strings")
    return tuple(value)


def _parse_file(raw: Any, where: str, label: str) -> LockedFile:
    if not isinstance(raw, dict):
        raise _bad(where, f"{label} is not a {{ path, size, sha256 }} table")
    path = raw.get("path")
    if isinstance(path, str):
        label = f"{label} ({path!r})"
    _only_keys(raw, _FILE_KEYS, where, label)
    for key in _FILE_KEYS:
        if key not in raw:
            raise _bad(where, f"has no `{key}` in {label}")
    if not isinstance(path, str):
        raise _bad(where, f"{label}: `path` is not a string")
    try:
        validate_repo_path(path)
    except ValueError:
        raise _bad(
            where,
            f"{label}: the path could escape the repo folder (absolute, '..', empty or '.' segments, a "
            "backslash or a control character); it was not written by vcache",
        ) from None
    size, sha256 = raw["size"], raw["sha256"]
    if type(size) is not int or size < 0:
        raise _bad(where, f"{label}: size {size!r} is not a non-negative integer")
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise _bad(where, f"{label}: sha256 {sha256!r} is not 64 lowercase hex digits")
    return LockedFile(path, size, sha256)


# -- writing -------------------------------------------------------------------------------------------------


def _string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, everything else literal."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _strings(values: Iterable[str]) -> str:
    return "[" + ", ".join(_string(v) for v in values) + "]"


def canonical_patterns(values: str | Sequence[str] | None) -> tuple[str, ...]:
    """Patterns in canonical form (sorted, without repeats), so that the same request locks the same text."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    for p in items:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"pattern {p!r} is not valid UTF-8 text") from None
    return tuple(sorted(set(items)))


# -- updating entries ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockDiff:
    """What moving one repo's entry changed: the commits, the files added, removed and changed, and the
    signature method required (None: none)."""

    name: str
    old_commit: str
    new_commit: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    old_signature: str | None = None
    new_signature: str | None = None

    @classmethod
    def between(cls, old: LockedRepo, new: LockedRepo) -> LockDiff:
        """The difference from ``old`` to ``new`` (two entries of the same repo)."""
        before = {f.path: f for f in old.files}
        after = {f.path: f for f in new.files}
        return cls(
            name=new.name,
            old_commit=old.commit,
            new_commit=new.commit,
            added=tuple(sorted(after.keys() - before.keys())),
            removed=tuple(sorted(before.keys() - after.keys())),
            changed=tuple(sorted(p for p in before.keys() & after.keys() if before[p] != after[p])),
            old_signature=old.signature,
            new_signature=new.signature,
        )

    @property
    def unchanged(self) -> bool:
        """True when the update moved nothing."""
        return (
            self.old_commit == self.new_commit
            and not (self.added or self.removed or self.changed)
            and self.old_signature == self.new_signature
        )

    def describe(self) -> list[str]:
        """Lines for a person: the commit move, then each added, removed and changed file."""
        if self.unchanged:
            return [f"{self.name}: unchanged at {self.new_commit[:12]}"]
        lines = [
            f"{self.name}: {self.old_commit[:12]} -> {self.new_commit[:12]} "
            f"({len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed)"
        ]
        lines += [f"  + {p}" for p in self.added]
        lines += [f"  - {p}" for p in self.removed]
        lines += [f"  ~ {p}" for p in self.changed]
        if self.old_signature != self.new_signature:
            lines.append(f"  signature: {self.old_signature or 'none'} -> {self.new_signature or 'none'}")
        return lines
