"""Settings: explicit arguments > ``VCACHE_*`` / ``HF_*`` environment > defaults.

The environment is read when :func:`resolve_settings` is called (not at import, unlike huggingface_hub's
constants), so a process can change it between calls — tests do. This module only reads; it never creates
directories or touches the network.
"""

from __future__ import annotations

import os
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


def give_up_seconds() -> float:
    """Seconds a pull waits for a Hub that says nothing before it gives up (``VCACHE_GIVE_UP_SECONDS``).

    Default 45; at least 1. Raise it for slow or flaky links (see :class:`~vcache.retry.ProgressWatch`).
    """
    return max(1.0, env_float("VCACHE_GIVE_UP_SECONDS", DEFAULT_GIVE_UP))


def default_hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``."""
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface"


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
    value = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
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


@dataclass(frozen=True)
class Settings:
    """Everything a pull needs to know about its environment, resolved once."""

    endpoint: str
    cache_dir: Path
    token: str | None
    offline: bool
    max_workers: int
    repo_type: str

    def __repr__(self) -> str:  # never show the token
        return (
            f"Settings(endpoint={self.endpoint!r}, cache_dir={str(self.cache_dir)!r}, "
            f"token={'***' if self.token else None}, offline={self.offline}, "
            f"max_workers={self.max_workers}, repo_type={self.repo_type!r})"
        )


def resolve_settings(
    *,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    max_workers: int | None = None,
    repo_type: str | None = None,
) -> Settings:
    """Resolve settings from arguments, then the environment, then defaults."""
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
    )


# -- transfer settings --------------------------------------------------------------------------------------
# The knobs of vcache.transfer.Transfer as one typed value, and where a pull's come from.

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_CONNECTIONS = 16


def lease_seconds() -> float:
    """Lease duration in seconds (``VCACHE_LEASE_SECONDS``, default 30; at least 1).

    Every process sharing a cache must use the same value: filelock refuses to contend with a lease of another
    duration, and vcache then adopts the duration the current holder recorded (with a warning). It is also how
    long a dead writer's partial must sit untouched before another process adopts it, so that whoever takes a
    lease over resumes the partial rather than starting again (see ``partial``).
    """
    return max(1.0, env_float("VCACHE_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))


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
