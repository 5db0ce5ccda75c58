"""Shared caches on clusters: setting one up (``init``), checking one (``doctor``), and starting gently.

What this module owns:

* :func:`init_shared_cache` — a cache directory many users and nodes can share: setgid, group-writable
  directories (``.locks`` ``2775``), and ``vcache.env``, the environment every job sources;
* :func:`doctor` — one :class:`~vcache.report.Finding` per question a shared cache raises: the filesystem type,
  whether locks really exclude (probed with two real processes), permissions, free space, stale leases and
  partials, Xet and offline settings. ``INFO`` findings print as ``OK``;
* :func:`start_jitter` — a random delay before a process's first Hub request (``VCACHE_START_JITTER``), so N
  nodes started together do not arrive together (``docs/design.md`` §5.3).

What it must never do: change or delete anything in a repo folder (blobs, snapshots, partials and the ledger
belong to the pull; ``init`` only adds permission bits), delete anything but the doctor's own probe directory,
or make correctness depend on what it finds: a broken lock costs bandwidth, never bytes (docs/design.md §2.2).
``doctor`` writes nothing at all to a read-only cache.
"""

from __future__ import annotations

import contextlib
import grp
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vcache.cache import CACHEDIR_TAG, default_file_mode, iter_repo_folders, write_atomic
from vcache.config import (
    DEFAULT_ENDPOINT,
    default_hf_home,
    endpoint_variable,
    environment_values,
    hf_token_path,
    offline_variable,
    start_jitter_seconds,
    xet_disabled,
)
from vcache.errors import UsageError
from vcache.locks import (
    LockMode,
    LockPolicy,
    flock_trusted,
    lease_is_stale,
    lease_seconds,
    lock_policy,
    lock_timeout,
)
from vcache.report import Finding, Severity, fail, human_bytes, info, warn
from vcache.retry import start_jitter as _start_jitter

ENV_FILE = "vcache.env"
LOCKS_DIR = ".locks"
#: Directories of a shared cache: setgid (new entries inherit the group), group-writable, world-readable.
SHARED_DIR_MODE = 0o2775
#: Free space below this fails the doctor; below ``WARN_FREE_BYTES`` it warns.
FAIL_FREE_BYTES = 1 << 30
WARN_FREE_BYTES = 20 << 30
#: How many offending paths a permission finding names before it summarises.
_EXAMPLES = 3

# -- start jitter ------------------------------------------------------------------------------------------------


def start_jitter(*, sleep: bool = True) -> float:
    """Sleep a random ``0..VCACHE_START_JITTER`` seconds, once per process; return the delay chosen
    (:func:`vcache.retry.start_jitter` with the configured spread)."""
    return _start_jitter(start_jitter_seconds(), sleep=sleep)


# -- lock probes -------------------------------------------------------------------------------------------------

# Runs in two fresh interpreters. Self-contained (only filelock), so a probe costs one interpreter start, and
# so whatever the environment does to fcntl (a FUSE mount, a test's no-op flock) applies to it as to a pull.
_PROBE_WORKER = r"""
import json, os, sys, time
import filelock
mode, workdir, rounds, hold, lease = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
if mode == "lease":
    lock = filelock.SoftFileLease(os.path.join(workdir, "probe.lease"), lease_duration=lease, poll_interval=0.001)
else:
    lock = filelock.FileLock(os.path.join(workdir, "probe.lock"), mode=0o664, poll_interval=0.001)
open(os.path.join(workdir, "ready.%d" % os.getpid()), "w").close()
deadline = time.monotonic() + 30
while not os.path.exists(os.path.join(workdir, "go")):
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.001)
overlaps = 0
inside = os.path.join(workdir, "inside")
for _ in range(rounds):
    with lock.acquire(timeout=60):
        try:
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlaps += 1  # the other process holds the same lock right now
            time.sleep(hold)
            continue
        os.close(fd)
        time.sleep(hold)
        os.unlink(inside)
    time.sleep(0.0005)
print(json.dumps({"overlaps": overlaps, "rounds": rounds}))
"""


@dataclass(frozen=True)
class ProbeResult:
    """What two processes contending for one lock saw."""

    mode: LockMode
    overlaps: int
    rounds: int
    error: str | None = None

    @property
    def excludes(self) -> bool:
        """True when no hold ever overlapped another (and the probe ran)."""
        return self.error is None and self.overlaps == 0


def probe_lock_exclusion(
    directory: Path, mode: LockMode, *, rounds: int = 25, hold: float = 0.004, timeout: float = 60.0
) -> ProbeResult:
    """Start two processes that take the same ``mode`` lock in ``directory`` in turns; count overlapping holds.

    Each holder creates a marker with ``O_EXCL`` while it holds the lock, so a lock that excludes nothing
    shows up as the other process finding the marker there. Both run on this node: a ``flock`` that is
    node-local (Lustre ``localflock``, GPFS) passes here and still fails across nodes, which is why the lock
    mode on such filesystems is chosen by filesystem type, not by this probe. The probe's files are removed.
    """
    workdir = directory / f".vcache-doctor-{uuid.uuid4().hex[:12]}"
    workdir.mkdir(parents=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _PROBE_WORKER,
                        mode.value,
                        str(workdir),
                        str(rounds),
                        str(hold),
                        "10",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        while len(list(workdir.glob("ready.*"))) < len(procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.005)
        (workdir / "go").touch()
        overlaps, errors = 0, []
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                errors.append(f"a probe process did not finish within {timeout:.0f}s")
                continue
            if p.returncode != 0:
                errors.append((err.strip().splitlines() or [f"exit status {p.returncode}"])[-1])
                continue
            overlaps += int(json.loads(out)["overlaps"])
        return ProbeResult(mode, overlaps, rounds * len(procs), "; ".join(errors) or None)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(workdir, ignore_errors=True)


# -- init --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitResult:
    """What ``init`` did: the cache it set up, the env file it wrote, what it repaired, what it could not."""

    cache: Path
    env_file: Path
    repaired: tuple[str, ...]
    problems: tuple[str, ...]


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise UsageError(
            f"group {group!r} does not exist on this host; create it or pass an existing group"
        ) from None


def _make_shared_dir(path: Path, gid: int | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if gid is not None:
        os.chown(path, -1, gid)
    # chmod, not mkdir(mode=...): the umask would strip the group bits mkdir is given.
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | SHARED_DIR_MODE)


def _repair_tree(root: Path, gid: int | None) -> tuple[list[str], list[str]]:
    """Add group bits to what is already in the cache; never removes a permission."""
    repaired: list[str] = []
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    continue
                if gid is not None and st.st_gid != gid:
                    os.chown(p, -1, gid)
                mode = stat.S_IMODE(st.st_mode)
                want = mode | (SHARED_DIR_MODE if stat.S_ISDIR(st.st_mode) else stat.S_IRGRP | stat.S_IROTH)
                if name.endswith(".lock") and not stat.S_ISDIR(st.st_mode):
                    want |= stat.S_IWGRP  # huggingface_hub opens lock files read-write
                if want != mode:
                    os.chmod(p, want)
                    repaired.append(f"{p.relative_to(root)}: {mode:o} -> {want:o}")
            except OSError as exc:
                problems.append(f"{p}: {exc.strerror}")
    return repaired, problems


def _is_mirror(endpoint: str | None) -> bool:
    if not endpoint:
        return False
    return urlsplit(endpoint).netloc.lower() != urlsplit(DEFAULT_ENDPOINT).netloc


def render_env_file(
    cache: Path, env_file: Path, *, lock_mode: LockMode, endpoint: str | None, lease: float
) -> str:
    """The text of ``vcache.env`` for a shared cache at ``cache`` (shell syntax, meant to be sourced)."""
    lines = [
        f"# Written by `vcache cluster init` for the shared Hugging Face cache at {cache}.",
        f"# Use in every job on every node:   umask 0002; set -a; . {env_file}; set +a",
        "# (umask 0002 keeps what a job creates writable for the group).",
        f"HF_HUB_CACHE={cache}",
        "# HF_HOME stays per user: it holds your token and Xet state, and `hf auth login` makes it 0700,",
        "# which would lock everyone else out if it were (or contained) the shared cache.",
        "HF_TOKEN_PATH=${HOME}/.config/huggingface/token",
        "# Every process that shares this cache must agree on the lock mode and lease length.",
        f"VCACHE_LOCK_MODE={lock_mode.value}",
        f"VCACHE_LEASE_SECONDS={lease:g}",
        "# Spread the first Hub request of many nodes over this many seconds (429s are per IP).",
        "VCACHE_START_JITTER=5",
    ]
    if _is_mirror(endpoint):
        lines += [
            f"HF_ENDPOINT={endpoint}",
            "# Xet transfers go to the CAS host the server names and would bypass the mirror above.",
            "HF_HUB_DISABLE_XET=1",
        ]
    else:
        lines += [
            "# Behind a mirror, also set HF_ENDPOINT=<mirror> and HF_HUB_DISABLE_XET=1 (Xet bypasses mirrors).",
        ]
    lines += [
        "# Jobs that only read a cache filled beforehand should not touch the Hub at all:",
        "# HF_HUB_OFFLINE=1",
    ]
    return "\n".join(lines) + "\n"


def _looks_like_cache(path: Path) -> bool:
    if (path / "CACHEDIR.TAG").exists() or (path / LOCKS_DIR).is_dir():
        return True
    return next(iter_repo_folders(path), None) is not None


@dataclass(frozen=True)
class SharedLayout:
    """Where a shared cache's parts are: the cache (``HF_HUB_CACHE``) and, beside it, ``vcache.env``.

    The env file sits next to the cache, never in it: huggingface_hub's ``scan_cache_dir`` reports any file
    at the cache root as a corrupted repo (docs/hub-protocol.md §7.3); docs/design.md §2.4 keeps vcache's own
    files out of the cache root.
    """

    cache: Path
    env_file: Path

    @classmethod
    def for_init(cls, path: Path) -> SharedLayout:
        """``PATH/hub`` + ``PATH/vcache.env``; or, when ``PATH`` already is an HF cache, it + ``../vcache.env``."""
        path = Path(os.path.abspath(path))
        if path.is_dir() and _looks_like_cache(path):
            return cls(path, path.parent / ENV_FILE)
        return cls(path / "hub", path / ENV_FILE)

    @classmethod
    def locate(cls, path: Path) -> SharedLayout:
        """The layout around ``path``: a root holding ``vcache.env`` (and its ``HF_HUB_CACHE``), or a cache."""
        path = Path(os.path.abspath(path))
        env_file = path / ENV_FILE
        if env_file.is_file():
            named = read_env_file(env_file).get("HF_HUB_CACHE")
            return cls(Path(named) if named else path / "hub", env_file)
        return cls(path, path.parent / ENV_FILE)


def init_shared_cache(
    path: Path, *, group: str | None = None, lock_mode: LockMode | None = None, endpoint: str | None = None
) -> InitResult:
    """Create (or repair) a shared cache under ``path`` and write the env file every job sources.

    The cache is ``PATH/hub`` and the env file ``PATH/vcache.env`` (when ``PATH`` already is an HF cache, it
    stays the cache and the env file goes beside it: see :class:`SharedLayout`). Both directories and the
    cache's ``.locks`` become setgid ``2775`` (group ``group`` when given); anything already in the cache
    gains group read (and write, for directories and lock files); nothing loses a permission. The lock mode
    written is ``lease`` where ``flock`` cannot be trusted, else ``flock``, unless ``lock_mode`` says
    otherwise. ``endpoint`` (default ``HF_ENDPOINT``) names a mirror, which also turns Xet off. Raises
    :class:`~vcache.errors.UsageError` for an unknown group, ``OSError`` when a directory cannot be set up.
    """
    layout = SharedLayout.for_init(path)
    cache = layout.cache
    gid = _group_id(group)
    _make_shared_dir(layout.env_file.parent, gid)
    _make_shared_dir(cache, gid)
    _make_shared_dir(cache / LOCKS_DIR, gid)
    tag = cache / "CACHEDIR.TAG"
    if not tag.exists():
        write_atomic(tag, CACHEDIR_TAG.encode())
    repaired, problems = _repair_tree(cache, gid)
    if lock_mode is None:
        lock_mode = LockMode.FLOCK if flock_trusted(lock_policy(cache).fs_type) else LockMode.LEASE
    text = render_env_file(
        cache,
        layout.env_file,
        lock_mode=lock_mode,
        endpoint=endpoint or endpoint_variable(),
        lease=lease_seconds(),
    )
    write_atomic(layout.env_file, text.encode())
    os.chmod(layout.env_file, 0o664)
    if gid is not None:
        os.chown(layout.env_file, -1, gid)
    return InitResult(cache, layout.env_file, tuple(repaired), tuple(problems))


def read_env_file(path: Path) -> dict[str, str]:
    """The ``KEY=value`` assignments of an env file (comments and blank lines skipped; no expansion)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        out[key.strip()] = value.strip().strip("'\"")
    return out


# -- doctor ------------------------------------------------------------------------------------------------------


def _ok(code: str, message: str) -> Finding:
    return info(f"cluster.{code}", message)


def _examples(paths: Sequence[str]) -> str:
    more = f" (+{len(paths) - _EXAMPLES} more)" if len(paths) > _EXAMPLES else ""
    return ", ".join(paths[:_EXAMPLES]) + more


def _check_filesystem(path: Path, writable: bool, policy: LockPolicy) -> list[Finding]:
    lease = f", lease {lease_seconds():g}s" if policy.mode is LockMode.LEASE else ""
    out = [
        _ok(
            "filesystem",
            f"filesystem: {policy.fs_type}; blob locks: {policy.mode.value}{lease} ({policy.reason})",
        )
    ]
    if policy.mode is LockMode.FLOCK and not flock_trusted(policy.fs_type):
        out.append(
            warn(
                "cluster.lock_mode",
                f"VCACHE_LOCK_MODE=flock on {policy.fs_type}: flock there may not exclude processes on other "
                "nodes, so nodes fetch the same blob at once (vcache stays correct; the bandwidth is wasted). "
                "Set VCACHE_LOCK_MODE=lease",
            )
        )
    elif policy.mode is LockMode.NONE:
        out.append(
            warn(
                "cluster.lock_mode",
                "VCACHE_LOCK_MODE=none: no blob locks, every process fetches what it lacks (correct, but "
                "N processes download N times); unset it unless locks hang on this filesystem",
            )
        )
    if not writable:
        out.append(_ok("writable", f"{path} is read-only for this user: consumers read it without any lock"))
    return out


def _check_lock_probes(path: Path, mode: LockMode) -> list[Finding]:
    out: list[Finding] = []
    locks = path / LOCKS_DIR
    for probed in (LockMode.FLOCK, LockMode.LEASE):
        try:
            result = probe_lock_exclusion(locks, probed)
        except OSError as exc:
            out.append(
                fail(
                    f"cluster.lock_probe.{probed.value}",
                    f"could not run the {probed.value} probe in {locks}: {exc}",
                )
            )
            continue
        in_use = probed is mode
        role = "in use" if in_use else "not in use"
        if result.error is not None:
            out.append(
                (fail if in_use else warn)(
                    f"cluster.lock_probe.{probed.value}",
                    f"{probed.value} ({role}): the probe failed: {result.error}",
                )
            )
        elif result.excludes:
            out.append(
                _ok(
                    f"lock_probe.{probed.value}",
                    f"{probed.value} ({role}): two processes never held it at once in {result.rounds} holds",
                )
            )
        elif in_use:
            out.append(
                fail(
                    f"cluster.lock_probe.{probed.value}",
                    f"{probed.value} ({role}) does NOT exclude: two processes held it at once {result.overlaps} "
                    f"times in {result.rounds} holds. vcache stays correct but every process downloads; tools "
                    "that trust the lock may not be. "
                    + (
                        "Set VCACHE_LOCK_MODE=lease"
                        if probed is LockMode.FLOCK
                        else "Exclusive create (O_EXCL) is broken here: use a node-local cache per node"
                    ),
                    overlaps=result.overlaps,
                )
            )
        else:
            out.append(
                warn(
                    f"cluster.lock_probe.{probed.value}",
                    f"{probed.value} ({role}) does not exclude here ({result.overlaps} overlapping holds in "
                    f"{result.rounds}); keep VCACHE_LOCK_MODE away from {probed.value}",
                    overlaps=result.overlaps,
                )
            )
    return out


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _iter_tree(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                st = p.lstat()
                if not stat.S_ISLNK(st.st_mode):
                    yield p, st


def _check_permissions(path: Path, writable: bool) -> list[Finding]:
    out: list[Finding] = []
    root_st = path.stat()
    mode = stat.S_IMODE(root_st.st_mode)
    try:
        group = grp.getgrgid(root_st.st_gid).gr_name
    except KeyError:
        group = str(root_st.st_gid)
    if writable:
        if mode & stat.S_ISGID and mode & stat.S_IWGRP:
            out.append(
                _ok("permissions.root", f"{path} is {mode:o}, group {group}: setgid and group-writable")
            )
        else:
            out.append(
                warn(
                    "cluster.permissions.root",
                    f"{path} is {mode:o} (group {group}): without setgid and group write (2775) other users "
                    f"cannot add to it, and what they add gets their own group. Run `vcache cluster init {path} "
                    "--group <group>`",
                )
            )
    bad_dirs: list[str] = []  # not setgid + group-writable
    bad_group: list[str] = []  # another group than the cache root
    unreadable: list[str] = []  # what loading reads, closed to the group
    unreadable_state: list[str] = []  # bookkeeping closed to the group
    bad_locks: list[str] = []  # lock files huggingface_hub cannot open read-write
    open_blobs: list[str] = []  # verified blobs others may write
    for p, st in _iter_tree(path):
        rel = str(p.relative_to(path))
        m = stat.S_IMODE(st.st_mode)
        entry = f"{rel} ({m:o})"
        if st.st_gid != root_st.st_gid:
            bad_group.append(rel)
        if stat.S_ISDIR(st.st_mode):
            if writable and not (m & stat.S_IWGRP and m & stat.S_ISGID):
                bad_dirs.append(entry)
            if not m & stat.S_IXGRP:
                unreadable.append(entry)
            continue
        if not m & stat.S_IRGRP:
            # Loading reads blobs, snapshots and refs; the rest (trees, ledger, partials) only saves work.
            loads = {"blobs", "snapshots", "refs"} & set(p.relative_to(path).parts)
            (unreadable if loads else unreadable_state).append(entry)
        if writable and p.suffix == ".lock" and not m & stat.S_IWGRP:
            bad_locks.append(entry)
        if p.parent.name == "blobs" and m & (stat.S_IWGRP | stat.S_IWOTH):
            open_blobs.append(entry)
    if bad_dirs:
        out.append(
            warn(
                "cluster.permissions.dirs",
                f"{len(bad_dirs)} directories are not setgid and group-writable (2775): {_examples(bad_dirs)}; "
                f"other users cannot add files there. Run `vcache cluster init {path}` (it only adds bits), and "
                "`umask 0002` in jobs",
            )
        )
    if bad_locks:
        out.append(
            warn(
                "cluster.permissions.lock_files",
                f"{len(bad_locks)} lock files are not group-writable: {_examples(bad_locks)}; huggingface_hub "
                "opens them read-write, so other users' downloads fail on them. "
                f"Run `vcache cluster init {path}`",
            )
        )
    if unreadable:
        out.append(
            fail(
                "cluster.permissions.unreadable",
                f"{len(unreadable)} entries are not readable by the group: {_examples(unreadable)}; other "
                f"users cannot load these files. Run `vcache cluster init {path}` (or chmod g+rX)",
            )
        )
    if unreadable_state:
        out.append(
            warn(
                "cluster.permissions.unreadable_state",
                f"{len(unreadable_state)} bookkeeping files are not readable by the group: "
                f"{_examples(unreadable_state)}; other users then verify again or lose offline completeness "
                f"checks (huggingface_hub writes trees/*.json 0600). Run `vcache cluster init {path}`",
            )
        )
    if bad_group:
        out.append(
            warn(
                "cluster.permissions.group",
                f"{len(bad_group)} entries belong to another group than {path} ({group}): "
                f"{_examples(bad_group)}; run `vcache cluster init {path} --group {group}`",
            )
        )
    if open_blobs:
        out.append(
            warn(
                "cluster.permissions.writable_blobs",
                f"{len(open_blobs)} blobs are writable by the group or others: {_examples(open_blobs)}; anyone "
                "there can change verified weights in place (vcache notices through the ledger and verifies "
                "again; other tools do not). Blobs are replaced by rename, so they need no write bit: "
                f"`chmod -R g-w,o-w {path}/*/blobs`",
            )
        )
    if not (bad_dirs or bad_locks or unreadable or unreadable_state or bad_group or open_blobs):
        out.append(
            _ok("permissions.tree", "every directory and file in the cache is shareable with the group")
        )
    out.extend(_check_traversal(path))
    if writable and not default_file_mode() & stat.S_IWGRP:
        out.append(
            warn(
                "cluster.umask",
                f"this process's umask is {0o666 & ~default_file_mode():04o}: directories it creates in the "
                "cache will not be group-writable. Run `umask 0002` before jobs that write the cache",
            )
        )
    return out


def _check_traversal(path: Path) -> list[Finding]:
    """Every ancestor must let the group in; huggingface_hub's `hf auth login` makes HF_HOME 0700."""
    out: list[Finding] = []
    hf_home = Path(os.path.abspath(default_hf_home()))
    token_path = Path(os.path.abspath(hf_token_path()))
    closed = []
    for anc in [path, *path.parents]:
        with contextlib.suppress(OSError):
            m = _mode(anc)
            if not m & (stat.S_IXGRP | stat.S_IXOTH):
                closed.append(f"{anc} ({m:o})")
    if closed:
        hint = (
            " — this is HF_HOME, which `hf auth login` sets to 0700"
            if any(c.startswith(f"{hf_home} (") for c in closed)
            else ""
        )
        out.append(
            fail(
                "cluster.permissions.traverse",
                f"other users cannot reach the cache: {', '.join(closed)} lets no group or other in{hint}. "
                "chmod g+x (or 2775) it, and set HF_TOKEN_PATH outside the shared tree (see vcache.env)",
            )
        )
    token_dir = token_path.parent
    if path == token_dir or token_dir in path.parents or path in token_path.parents:
        out.append(
            warn(
                "cluster.token_path",
                f"the token file {token_path} shares a directory tree with the cache: `hf auth login` chmods "
                f"{token_dir} to 0700, which locks other users out (huggingface_hub PR #4234). Set "
                "HF_TOKEN_PATH=${HOME}/.config/huggingface/token",
            )
        )
    return out


def _check_free_space(path: Path, fail_below: int, warn_below: int) -> Finding:
    usage = shutil.disk_usage(path)
    msg = f"free space: {human_bytes(usage.free)} of {human_bytes(usage.total)}"
    with contextlib.suppress(OSError):
        vfs = os.statvfs(path)
        if vfs.f_files:
            msg += f", {vfs.f_favail} of {vfs.f_files} inodes"
    if usage.free < fail_below:
        return fail("cluster.free_space", msg + "; downloads will fail with DiskFull — free space first")
    if usage.free < warn_below:
        return warn("cluster.free_space", msg + "; a large checkpoint may not fit")
    return _ok("free_space", msg)


def _now() -> float:
    # Wall-clock time, as the leases' and partials' modification times are; one place for tests to move it.
    return time.time()


def _check_stale_state(path: Path, lease: float) -> list[Finding]:
    out: list[Finding] = []
    stale = []
    for marker in sorted((path / LOCKS_DIR).glob("*/*.lease")):
        is_stale, who = lease_is_stale(marker, lease, now=_now())
        if is_stale:
            stale.append(who)
    if stale:
        out.append(
            warn(
                "cluster.stale_leases",
                f"{len(stale)} leases whose holder is gone: {_examples(stale)}. Harmless — the next pull of "
                "those blobs takes them over (and resumes the partial); remove them if you like",
            )
        )
    else:
        out.append(_ok("stale_leases", "no stale leases"))
    partials = _stale_partials(path, lease)
    if partials:
        total = sum(size for _, size in partials)
        out.append(
            warn(
                "cluster.stale_partials",
                f"{len(partials)} unfinished downloads ({human_bytes(total)}) nobody is writing: "
                f"{_examples([name for name, _ in partials])}. A pull of a revision that has those file versions "
                "resumes them; `vcache scan` lists them and says which no pull will resume (orphaned)",
            )
        )
    else:
        out.append(_ok("stale_partials", "no abandoned partial downloads"))
    return out


def _stale_partials(path: Path, lease: float) -> list[tuple[str, int]]:
    """``(repo/file, bytes kept)`` of partials with data that nobody has written for longer than a lease."""
    from vcache.partial import list_partials

    now = _now()
    found: list[tuple[str, int]] = []
    for _rtype, repo_id, folder in iter_repo_folders(path):
        for p in list_partials(folder / ".vcache" / "partials"):
            if now - p.updated_at >= lease and p.data_path.exists():
                found.append((f"{repo_id}/{p.repo_path or p.etag}", p.completed))
    return found


def _xet_installed() -> bool:
    return importlib.util.find_spec("hf_xet") is not None


def _check_hub_settings(writable: bool) -> list[Finding]:
    out: list[Finding] = []
    endpoint = endpoint_variable()
    xet_off = xet_disabled()
    xet_installed = _xet_installed()
    if _is_mirror(endpoint) and not xet_off and xet_installed:
        out.append(
            warn(
                "cluster.xet",
                f"HF_ENDPOINT={endpoint} but Xet is on (hf_xet is installed): huggingface_hub and transformers "
                "fetch Xet-backed files from the CAS host the server names, bypassing your mirror. Set "
                "HF_HUB_DISABLE_XET=1 (vcache itself always uses plain HTTP)",
            )
        )
    else:
        state = "off" if xet_off or not xet_installed else "on"
        where = f"mirror {endpoint}" if _is_mirror(endpoint) else "the Hub"
        out.append(_ok("xet", f"Xet {state}, endpoint {where}: nothing bypasses the endpoint"))
    which = offline_variable()
    if which is not None:
        out.append(
            _ok("offline", f"{which} is set: pulls answer from this cache only (verified from the ledger)")
        )
    elif not writable:
        out.append(
            warn(
                "cluster.offline",
                "the cache is read-only but HF_HUB_OFFLINE is not set: every process still asks the Hub for the "
                "commit (429s at scale). Set HF_HUB_OFFLINE=1 for jobs that only read it",
            )
        )
    else:
        out.append(_ok("offline", "online: missing files are fetched, each blob once per cache"))
    return out


def _check_env_file(layout: SharedLayout) -> list[Finding]:
    env_file = layout.env_file
    values = read_env_file(env_file)
    if not values:
        return [
            warn(
                "cluster.env_file",
                f"no {env_file} beside the cache: jobs on different nodes may disagree on lock mode and lease "
                f"length. Run `vcache cluster init {layout.cache}`",
            )
        ]
    differ = []
    environment = environment_values(
        ("HF_HUB_CACHE", "VCACHE_LOCK_MODE", "VCACHE_LEASE_SECONDS", "HF_HUB_DISABLE_XET", "HF_ENDPOINT")
    )
    for key, have in environment.items():
        want = values.get(key)
        if want is None:
            continue
        same = have is not None and (
            os.path.abspath(have) == os.path.abspath(want) if key == "HF_HUB_CACHE" else have == want
        )
        if not same:
            differ.append(f"{key}={have if have is not None else '<unset>'} (vcache.env: {want})")
    if differ:
        return [
            warn(
                "cluster.env_file",
                f"this environment differs from {env_file}: {'; '.join(differ)}. Jobs should source it: "
                f"set -a; . {env_file}; set +a",
            )
        ]
    return [_ok("env_file", f"this environment matches {env_file}")]


def doctor(
    path: Path,
    *,
    probe: bool = True,
    fail_free_bytes: int = FAIL_FREE_BYTES,
    warn_free_bytes: int = WARN_FREE_BYTES,
) -> list[Finding]:
    """Check a shared cache; one finding per question, ``INFO`` meaning OK. No ``FAIL`` -> safe to share.

    ``path`` is the cache, or the directory holding ``vcache.env`` (see :class:`SharedLayout`). Settings
    (lock mode, lease, Xet, offline) are read from this process's environment, so run it the way jobs run:
    after sourcing ``vcache.env``; a difference from that file is itself a finding. ``probe`` starts two
    processes per lock mode to see whether the lock really excludes. The only thing written is the probe's
    own directory under ``.locks`` (removed afterwards), and nothing at all to a read-only cache.
    """
    layout = SharedLayout.locate(path)
    cache = layout.cache
    if not cache.is_dir():
        return [
            fail(
                "cluster.missing",
                f"{cache} does not exist or is not a directory; run `vcache cluster init {path}`",
            )
        ]
    writable = os.access(cache, os.W_OK | os.X_OK)
    try:
        policy = lock_policy(cache)
    except UsageError as exc:
        out = [fail("cluster.lock_mode", str(exc))]  # a bad VCACHE_LOCK_MODE: every pull would refuse to run
    else:
        out = _check_filesystem(cache, writable, policy)
        if writable and probe:
            out.extend(_check_lock_probes(cache, policy.mode))
    out.extend(_check_permissions(cache, writable))
    out.append(_check_free_space(cache, fail_free_bytes, warn_free_bytes))
    out.extend(_check_stale_state(cache, lease_seconds()))
    out.extend(_check_hub_settings(writable))
    out.extend(_check_env_file(layout))
    out.append(_ok("lock_timeout", f"lock waits end after {lock_timeout():g}s (VCACHE_LOCK_TIMEOUT)"))
    return out


def format_finding(f: Finding) -> str:
    """``OK    message`` / ``WARN  message`` / ``FAIL  message``: the doctor's one line per finding."""
    label = {Severity.INFO: "OK", Severity.WARN: "WARN", Severity.FAIL: "FAIL"}[f.severity]
    return f"{label:<5} {f.message}"


def is_safe(findings: Sequence[Finding]) -> bool:
    """True when no finding failed."""
    return not any(f.severity is Severity.FAIL for f in findings)


def findings_json(findings: Sequence[Finding]) -> list[Mapping[str, object]]:
    """The findings as JSON objects (``severity`` ``info`` means OK)."""
    return [f.to_json() for f in findings]


__all__ = [
    "ENV_FILE",
    "SHARED_DIR_MODE",
    "InitResult",
    "ProbeResult",
    "SharedLayout",
    "doctor",
    "findings_json",
    "format_finding",
    "init_shared_cache",
    "is_safe",
    "probe_lock_exclusion",
    "read_env_file",
    "render_env_file",
    "start_jitter",
]
