"""Settings: explicit arguments > ``VCACHE_*`` / ``HF_*`` environment > defaults.

What this module owns: every read of the environment in vcache (a test keeps it so). What is read where:

- a pull's :class:`Settings` (endpoint, cache, token, offline, workers), by :func:`resolve_settings`;
- the lock mode, lock wait and lease length, as :class:`LockSettings` by :func:`lock_settings`, each time a
  lock is taken or the doctor looks (``VCACHE_LOCK_MODE``, ``VCACHE_LOCK_TIMEOUT``, ``VCACHE_LEASE_SECONDS``);
- single values where they are used: :func:`give_up_seconds`, :func:`symlinks_disabled`,
  :func:`node_variable`, :func:`endpoint_variable`, :func:`hf_token_path`, :func:`xet_disabled`,
  :func:`offline_variable`, :func:`resolve_lock_path` (``VCACHE_LOCK``, the lockfile a pull applies), and
  :func:`environment_values` for the doctor's comparison with ``vcache.env``.

Not here: the proxy variables (``HTTP(S)_PROXY``, ``NO_PROXY``), which the HTTP libraries read themselves
(``urllib.request`` in ``transfer``, httpx in ``hub``), and what huggingface_hub reads in :func:`resolve_token`.

The environment is read when these are called (not at import, unlike huggingface_hub's constants), so a
process can change it between calls — tests do. This module never creates directories or touches the
network. It writes the environment only where the command line asks: :func:`limit_blas_threads`, and
:func:`environment_applied` for ``vcache cluster init``'s check of the settings it wrote.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from vcache.errors import UsageError
from vcache.retry import DEFAULT_GIVE_UP, SYSTEM_CLOCK, Clock, ProgressWatch, RetryPolicy

if TYPE_CHECKING:
    import ssl

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_TYPES = ("model", "dataset", "space")
DEFAULT_LOCK_TIMEOUT = 600.0
DEFAULT_LEASE_SECONDS = 30.0
#: Where a process learns its node, first match wins (torchrun sets ``GROUP_RANK``, Slurm ``SLURM_NODEID``).
NODE_ID_VARIABLES = ("VCACHE_NODE_ID", "GROUP_RANK", "SLURM_NODEID")
_TRUE = {"1", "ON", "YES", "TRUE"}


def env_true(*names: str) -> bool:
    """True when any of the variables is set to 1/ON/YES/TRUE (case-insensitive)."""
    return any(os.environ.get(n, "").strip().upper() in _TRUE for n in names)


def env_float(name: str, default: float) -> float:
    """A float from the environment, or ``default`` when unset or unparsable."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def start_jitter_seconds() -> float:
    """The spread of the random delay before a process's first Hub request (``VCACHE_START_JITTER``, default
    0: none)."""
    return env_float("VCACHE_START_JITTER", 0.0)


def give_up_seconds() -> float:
    """Seconds a pull waits for a Hub that says nothing before it gives up (``VCACHE_GIVE_UP_SECONDS``).

    Default 45; at least 1. Raise it for slow or flaky links (see :class:`~vcache.retry.ProgressWatch`).
    """
    return max(1.0, env_float("VCACHE_GIVE_UP_SECONDS", DEFAULT_GIVE_UP))


@dataclass(frozen=True)
class LockSettings:
    """How blob locks are taken: ``VCACHE_LOCK_MODE``, ``VCACHE_LOCK_TIMEOUT``, ``VCACHE_LEASE_SECONDS``.

    ``mode`` is the variable as written, lower-cased (``auto`` when unset): :func:`vcache.locks.lock_policy`
    refuses what is not a mode, so a typo fails the pull that would lock (and shows in the doctor) without
    failing every reader of the lease length. ``timeout`` is seconds to wait for a lock (default 600),
    ``lease_seconds`` the lease duration (default 30, at least 1).
    """

    mode: str
    timeout: float
    lease_seconds: float


def lock_settings() -> LockSettings:
    """The lock settings in the environment now (see :class:`LockSettings`)."""
    return LockSettings(
        mode=os.environ.get("VCACHE_LOCK_MODE", "").strip().lower() or "auto",
        timeout=env_float("VCACHE_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT),
        lease_seconds=max(1.0, env_float("VCACHE_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)),
    )


def symlinks_disabled() -> bool:
    """True when ``HF_HUB_DISABLE_SYMLINKS`` asks for copies instead of snapshot symlinks."""
    return env_true("HF_HUB_DISABLE_SYMLINKS")


def node_variable() -> tuple[str, str] | None:
    """The first of :data:`NODE_ID_VARIABLES` that is set (not empty), with its value; None when none is."""
    for name in NODE_ID_VARIABLES:
        value = os.environ.get(name)
        if value:
            return name, value
    return None


def endpoint_variable() -> str | None:
    """``HF_ENDPOINT`` as set (None when unset or empty): the mirror a user chose, without a default or a
    check (:func:`resolve_endpoint` adds both)."""
    return os.environ.get("HF_ENDPOINT") or None


def xet_disabled() -> bool:
    """True when ``HF_HUB_DISABLE_XET`` turns huggingface_hub's Xet transfers off (vcache never uses Xet)."""
    return env_true("HF_HUB_DISABLE_XET")


def offline_variable() -> str | None:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``, whichever turns offline mode on (in that order); None
    when neither does."""
    return next((name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if env_true(name)), None)


def environment_values(names: Iterable[str]) -> dict[str, str | None]:
    """Each variable in ``names`` exactly as this process's environment has it (None when unset).

    For comparisons with what a file says the environment should be (``vcache cluster doctor`` and
    ``vcache.env``); settings themselves come from the typed accessors above.
    """
    return {name: os.environ.get(name) for name in names}


def limit_blas_threads() -> None:
    """Set ``OPENBLAS_NUM_THREADS=1`` unless the environment sets it already; the command line calls it.

    The command line uses numpy only for elementwise bit checks, never BLAS: OpenBLAS's thread pool (one
    thread per core, started at import) would only take CPU from the download. Call it before anything
    imports numpy. The library API leaves the environment alone.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@contextlib.contextmanager
def environment_applied(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in this process's environment (``$VAR`` references expanded) for the ``with`` block,
    then put back what was there: how ``vcache cluster init`` checks a cache with the settings it wrote."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: os.path.expandvars(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def default_hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``."""
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface"


def hf_token_path() -> Path:
    """Where huggingface_hub keeps the login token: ``$HF_TOKEN_PATH``, else ``<HF_HOME>/token``."""
    return Path(os.environ.get("HF_TOKEN_PATH") or default_hf_home() / "token")


def default_cache_dir() -> Path:
    """The hub cache root exactly as huggingface_hub finds it (``HF_HUB_CACHE`` > legacy > ``HF_HOME/hub``)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(name)
        if value:
            return Path(os.path.expandvars(os.path.expanduser(value)))
    return default_hf_home() / "hub"


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to 1/ON/YES/TRUE."""
    return env_true("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def resolve_endpoint(endpoint: str | None) -> str:
    """The Hub endpoint without a trailing slash; argument > ``HF_ENDPOINT`` > huggingface.co."""
    value = (endpoint or endpoint_variable() or DEFAULT_ENDPOINT).rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"invalid Hub endpoint {value!r}: expected http(s)://host[:port]")
    return value


def resolve_token(token: str | bool | None) -> str | None:
    """The token to send: an explicit string, none for ``False``, else huggingface_hub's discovery.

    Discovery is huggingface_hub's own (``HF_TOKEN``, the token file, ...), so vcache sees exactly the
    token ``hf auth login`` stored. ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` turns implicit discovery off.
    """
    if token is False:
        return None
    if isinstance(token, str):
        return token or None
    if env_true("HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        return None
    from huggingface_hub import get_token

    return get_token()


def resolve_lock_path(lock: str | os.PathLike[str] | None) -> Path | None:
    """The lockfile a pull applies: the argument, else ``VCACHE_LOCK``, else none.

    Only the path is resolved here; reading and checking the file is :mod:`vcache.lockfile`'s business.
    """
    if lock is not None:
        return Path(lock).expanduser()
    value = os.environ.get("VCACHE_LOCK", "").strip()
    return Path(os.path.expandvars(os.path.expanduser(value))) if value else None


@dataclass(frozen=True)
class Settings:
    """Everything a pull needs to know about its environment, resolved once: the Hub, the cache, the token,
    and the typed parts for the transfer (:class:`TransferSettings`) and the locks (:class:`LockSettings`)."""

    endpoint: str
    cache_dir: Path
    token: str | None
    offline: bool
    max_workers: int
    repo_type: str
    transfer: TransferSettings
    locks: LockSettings

    def __repr__(self) -> str:  # never show the token
        return (
            f"Settings(endpoint={self.endpoint!r}, cache_dir={str(self.cache_dir)!r}, "
            f"token={'***' if self.token else None}, offline={self.offline}, "
            f"max_workers={self.max_workers}, repo_type={self.repo_type!r}, transfer={self.transfer!r}, "
            f"locks={self.locks!r})"
        )


def resolve_settings(
    *,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    max_workers: int | None = None,
    repo_type: str | None = None,
    transfer: TransferSettings | None = None,
) -> Settings:
    """Resolve settings from arguments, then the environment, then defaults (``transfer``: the transfer's
    settings as given, else :func:`resolve_transfer_settings`)."""
    rtype = repo_type or "model"
    if rtype not in REPO_TYPES:
        raise UsageError(f"invalid repo type {rtype!r}: expected one of {', '.join(REPO_TYPES)}")
    workers = max_workers if max_workers is not None else int(env_float("VCACHE_MAX_WORKERS", 8))
    if workers < 1:
        raise UsageError(f"max_workers must be at least 1, got {workers}")
    offline = local_files_only or is_offline()
    return Settings(
        endpoint=resolve_endpoint(endpoint),
        cache_dir=Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(),
        token=None if offline else resolve_token(token),
        offline=offline,
        max_workers=workers,
        repo_type=rtype,
        transfer=transfer if transfer is not None else resolve_transfer_settings(),
        locks=lock_settings(),
    )


# -- transfer settings --------------------------------------------------------------------------------------
# The knobs of vcache.transfer.Transfer as one typed value, and where a pull's come from.

DEFAULT_MAX_CONNECTIONS = 16


def lease_seconds() -> float:
    """Lease duration in seconds (``VCACHE_LEASE_SECONDS``, default 30; at least 1).

    Every process sharing a cache must use the same value: filelock refuses to contend with a lease of another
    duration, and vcache then adopts the duration the current holder recorded (with a warning). It is also how
    long a dead writer's partial must sit untouched before another process adopts it, so that whoever takes a
    lease over resumes the partial rather than starting again (see ``partial``).
    """
    return lock_settings().lease_seconds


@dataclass(frozen=True)
class TransferSettings:
    """How a pull's :class:`~vcache.transfer.Transfer` moves bytes: every knob it takes but the endpoint and
    token, typed, with the same defaults (see ``Transfer`` for what each means).

    Build one with :func:`resolve_transfer_settings` (which reads the environment) and change a knob with
    :func:`dataclasses.replace`; pass it as ``PullOptions(transfer=...)``.
    """

    policy: RetryPolicy | None = None
    clock: Clock = SYSTEM_CLOCK
    watch: ProgressWatch | None = None  # None: the pull's own give-up budget
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    stall_timeout: float = 30.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    connections_per_file: int | None = None
    part_size: int | None = None
    min_multipart_size: int = 64 << 20
    user_agent: str | None = None
    check_free_space: bool = True
    stale_after: float = 30.0
    buffer_size: int = 4 << 20
    trust_env: bool = True
    ssl_context: ssl.SSLContext | None = None


def resolve_transfer_settings(
    *, max_connections: int | None = None, stale_after: float | None = None
) -> TransferSettings:
    """A pull's transfer settings: the arguments, else the environment, else the defaults.

    ``max_connections`` (``VCACHE_MAX_CONNECTIONS``, when set to 1 or more) caps this process's connections to
    the Hub, so N processes on one node open at most N times that many. ``stale_after`` is the lease length
    (:func:`lease_seconds`): a partial nobody has touched for a lease is adoptable, so whoever takes a dead
    writer's lease resumes its partial instead of starting again. Every other knob keeps its default.
    """
    if max_connections is None:
        cap = int(env_float("VCACHE_MAX_CONNECTIONS", 0))
        max_connections = cap if cap >= 1 else DEFAULT_MAX_CONNECTIONS
    return TransferSettings(
        max_connections=max_connections, stale_after=lease_seconds() if stale_after is None else stale_after
    )
