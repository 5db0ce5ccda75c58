import ast
from pathlib import Path

import pytest

import vcache
from vcache.config import (
    LockSettings,
    default_cache_dir,
    environment_applied,
    environment_values,
    lock_settings,
    resolve_settings,
)
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


def test_lock_settings_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VCACHE_LOCK_MODE", "VCACHE_LOCK_TIMEOUT", "VCACHE_LEASE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    assert lock_settings() == LockSettings(mode="auto", timeout=600.0, lease_seconds=30.0)
    monkeypatch.setenv("VCACHE_LOCK_MODE", " Lease ")
    monkeypatch.setenv("VCACHE_LOCK_TIMEOUT", "2.5")
    monkeypatch.setenv("VCACHE_LEASE_SECONDS", "0.1")  # at least one second
    assert lock_settings() == LockSettings(mode="lease", timeout=2.5, lease_seconds=1.0)
    monkeypatch.setenv("VCACHE_LOCK_MODE", "flokc")  # kept as written: locks.lock_policy refuses it
    monkeypatch.setenv("VCACHE_LOCK_TIMEOUT", "soon")  # unparsable: the default
    assert lock_settings() == LockSettings(mode="flokc", timeout=600.0, lease_seconds=1.0)


def test_environment_applied_restores_what_was_there(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VCACHE_LOCK_MODE", "flock")
    monkeypatch.delenv("VCACHE_LEASE_SECONDS", raising=False)
    monkeypatch.setenv("VCACHE_TEST_ROOT", str(tmp_path))
    with environment_applied({"VCACHE_LOCK_MODE": "lease", "VCACHE_LEASE_SECONDS": "$VCACHE_TEST_ROOT/x"}):
        assert environment_values(["VCACHE_LOCK_MODE", "VCACHE_LEASE_SECONDS"]) == {
            "VCACHE_LOCK_MODE": "lease",
            "VCACHE_LEASE_SECONDS": f"{tmp_path}/x",
        }
    assert environment_values(["VCACHE_LOCK_MODE", "VCACHE_LEASE_SECONDS"]) == {
        "VCACHE_LOCK_MODE": "flock",
        "VCACHE_LEASE_SECONDS": None,
    }


# -- every read of the environment is in config.py ---------------------------------------------------------------

_ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _environment_uses(path: Path) -> list[str]:
    """``line: code`` for each use of the process environment through ``os`` (any alias) in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    aliases = {"os"} | {
        a.asname
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for a in n.names
        if a.name == "os" and a.asname
    }
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in _ENV_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(a.name in _ENV_NAMES for a in node.names)
        ):
            out.append((node.lineno, f"{node.lineno}: {ast.unparse(node)}"))
    return [text for _line, text in sorted(out)]


def test_only_config_reads_the_environment() -> None:
    src = Path(vcache.__file__).parent
    found = {
        str(path.relative_to(src)): uses
        for path in sorted(src.rglob("*.py"))
        if path.name != "config.py" or path.parent != src
        if (uses := _environment_uses(path))
    }
    assert _environment_uses(src / "config.py"), "the scan must see config.py's own reads"
    assert found == {}, f"move these environment reads into vcache.config: {found}"


def test_the_environment_scan_sees_every_spelling(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nimport os as _o\nfrom os import getenv\n"
        "a = os.environ.get('X')\nb = _o.getenv('Y')\nos.environ.setdefault('Z', '1')\n"
    )
    assert [line.split(":")[0] for line in _environment_uses(sample)] == ["3", "4", "5", "6"]
