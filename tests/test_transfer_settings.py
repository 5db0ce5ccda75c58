"""The typed transfer settings: the same knobs and defaults as Transfer, resolved arguments > env > defaults."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from vcache.config import TransferSettings, resolve_transfer_settings
from vcache.transfer import Transfer


def test_transfer_settings_are_the_transfer_knobs_with_the_same_defaults() -> None:
    params = inspect.signature(Transfer).parameters
    knobs = {name: p.default for name, p in params.items() if name not in ("endpoint", "token")}
    defaults = {f.name: getattr(TransferSettings(), f.name) for f in dataclasses.fields(TransferSettings)}
    assert defaults == knobs


def test_the_environment_decides_the_connection_cap_and_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCACHE_MAX_CONNECTIONS", raising=False)
    monkeypatch.delenv("VCACHE_LEASE_SECONDS", raising=False)
    assert resolve_transfer_settings() == TransferSettings()
    monkeypatch.setenv("VCACHE_MAX_CONNECTIONS", "3")
    monkeypatch.setenv("VCACHE_LEASE_SECONDS", "12")
    assert (resolve_transfer_settings().max_connections, resolve_transfer_settings().stale_after) == (3, 12.0)
    given = resolve_transfer_settings(max_connections=5, stale_after=7.0)  # arguments win
    assert (given.max_connections, given.stale_after) == (5, 7.0)
    monkeypatch.setenv("VCACHE_MAX_CONNECTIONS", "0")  # not a cap: the default
    monkeypatch.setenv("VCACHE_LEASE_SECONDS", "0.1")  # a lease is at least a second
    assert (resolve_transfer_settings().max_connections, resolve_transfer_settings().stale_after) == (16, 1.0)


def test_transfer_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TransferSettings().max_connections = 2  # type: ignore[misc]
