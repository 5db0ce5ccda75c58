"""The public API list is sorted and complete (copied from httpx's test of the same name)."""

import vcache


def test_all_is_sorted_and_complete() -> None:
    members = [m for m in dir(vcache) if not m.startswith("_") or m == "__version__"]
    public = {m for m in members if not m.startswith("_") and m not in {"annotations"}}
    modules = {m for m in public if type(getattr(vcache, m)).__name__ == "module"}
    assert vcache.__all__ == sorted(vcache.__all__)
    assert set(vcache.__all__) - {"__version__"} == public - modules


def test_import_does_not_pull_in_torch() -> None:
    import subprocess
    import sys

    code = "import vcache, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
