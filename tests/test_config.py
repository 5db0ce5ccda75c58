from pathlib import Path

import pytest

from vcache.config import default_cache_dir, resolve_settings
from vcache.errors import UsageError


def test_env_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1234/")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    s = resolve_settings()
    assert s.endpoint == "http://127.0.0.1:1234"
    assert s.cache_dir == tmp_path / "c"
    assert s.token == "hf_secret_value"
    assert "hf_secret_value" not in repr(s)
    assert resolve_settings(token=False).token is None
    assert resolve_settings(endpoint="http://x:1", cache_dir=tmp_path).endpoint == "http://x:1"


def test_offline_and_cache_fallbacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    s = resolve_settings()
    assert s.offline and s.token is None


@pytest.mark.parametrize("kw", [{"endpoint": "ftp://x"}, {"repo_type": "modle"}, {"max_workers": 0}])
def test_bad_settings_are_usage_errors(kw: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        resolve_settings(**kw)  # type: ignore[arg-type]
