"""Settings: explicit arguments > ``VCACHE_*`` / ``HF_*`` environment > defaults.

The environment is read when :func:`resolve_settings` is called (not at import, unlike huggingface_hub's
constants), so a process can change it between calls — tests do. This module only reads; it never creates
directories or touches the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vcache.errors import UsageError

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
