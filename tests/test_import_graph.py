"""No module of vcache imports, at any level, a module that imports it back.

The rule the graph is built by:

- Every ``import`` / ``from ... import`` statement that runs counts: at module level, inside a function or a
  method, under ``try`` or ``if``. A function-level import is still a dependency; it only hides the circle
  until the function runs.
- Imports under ``if TYPE_CHECKING:`` count too: they never run, but a circle through them is still two
  modules that each need the other to be understood. Where one module only names a type of the other, the
  type moves to the module that owns the value (``RetryEvent`` lives with the errors that carry it) or is
  described by a protocol (the test Hub's wire side names what it uses of ``HubServer``).
- A statement depends on the module it names: ``from vcache.a import b`` on ``vcache.a.b`` when that is a
  module, otherwise on ``vcache.a`` (its ``__init__``), so a submodule taking a name from its own package's
  ``__init__`` counts. The parent packages Python runs first to reach a module do not: every submodule would
  otherwise depend on ``vcache/__init__``, which re-exports the public API.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

import vcache

SRC = Path(vcache.__file__).parent


def _modules(root: Path) -> dict[str, Path]:
    """Every module under the package directory ``root``, by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: Mapping[str, Path]) -> Iterator[tuple[str, int]]:
    """The modules of ``modules`` that ``name`` (at ``path``) imports, with the line of each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            if target in modules and target != name:
                yield target, node.lineno


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: line of the first such import}, for the package directory ``root``."""
    modules = _modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(name, path, modules):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph: Mapping[str, Mapping[str, int]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None when the graph has none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        trail: list[str] = []
        on_trail: set[str] = set()
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        trail.append(start)
        on_trail.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                trail.pop()
                on_trail.discard(node)
                done.add(node)
            elif child in on_trail:
                return [*trail[trail.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                trail.append(child)
                on_trail.add(child)
    return None


def _describe(cycle: list[str], graph: Mapping[str, Mapping[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)) + f" -> {cycle[-1]}"


def test_vcache_has_no_import_circles() -> None:
    graph = import_graph(SRC)
    assert "vcache.demo" in graph["vcache.cli"]  # a function-level import, seen
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle: {_describe(cycle, graph)}"


def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_checker_sees_function_level_and_package_init_circles(tmp_path: Path) -> None:
    # A function-level import closes a circle as surely as a module-level one.
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import f\n",
            "b.py": "def f():\n    from pkg import a\n    return a\n",
        },
    )
    cycle = find_cycle(import_graph(root))
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"pkg.a", "pkg.b"}
    # A submodule taking a name from its package's __init__, which imports the submodule.
    root = _package(
        tmp_path / "2",
        {
            "__init__.py": "from pkg.sub.x import X\n",
            "sub/__init__.py": "from .x import X\nY = 1\n",
            "sub/x.py": "X = 1\n\ndef g():\n    from . import Y\n    return Y\n",
        },
    )
    cycle = find_cycle(import_graph(root))
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"pkg.sub", "pkg.sub.x"}


def test_the_checker_counts_type_checking_imports(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import f\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
        },
    )
    graph = import_graph(root)
    assert graph["pkg.b"] == {"pkg.a": 3} and find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
