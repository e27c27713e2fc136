"""The layout stays readable: short functions, thin stage entry points."""

from __future__ import annotations

import ast
from pathlib import Path

from bplab.testing.scratch import REPO

LONGEST_FUNCTION = 60  # lines, docstring included


def _functions(path):
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_in_src_is_longer_than_a_screen() -> None:
    lengths = {f"{path.relative_to(REPO)}:{node.lineno} {node.name}": node.end_lineno - node.lineno + 1
               for path in sorted((REPO / "src").rglob("*.py")) for node in _functions(path)}
    assert len(lengths) > 100  # the scan sees the library
    assert {where: n for where, n in lengths.items() if n > LONGEST_FUNCTION} == {}


def test_stage_entry_points_only_parse_and_call_the_library() -> None:
    for path in sorted((REPO / "stages").glob("*.py")):
        functions = _functions(path)
        assert [f.name for f in functions] == ["main"], path.name
        assert functions[0].end_lineno - functions[0].lineno < 15, path.name


MOST_TOP_LEVEL_MODULES = 12  # files directly in src/bplab besides __init__.py; families are packages


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the bplab modules it imports, anywhere in its code (inside functions and under
    ``TYPE_CHECKING`` too: a lazy import still ties the two modules together)."""
    modules = {".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): path
               for path in src.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                           else node.module for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_circles_are_found_where_modules_import_each_other(tmp_path: Path) -> None:
    """The check below can fail: a lazy import back from b to a, and a TYPE_CHECKING one from c to b, are circles."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import g\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.d\n")
    (package / "d.py").write_text("from pkg import c\n")
    assert circles(import_graph(tmp_path)) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph(REPO / "src")
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the scan sees the library's imports
    assert circles(graph) == []


def test_families_are_packages_and_few_modules_sit_at_the_top() -> None:
    top = sorted(path.name for path in (REPO / "src" / "bplab").glob("*.py") if path.name != "__init__.py")
    assert len(top) <= MOST_TOP_LEVEL_MODULES, top
    packages = {path.parent.name for path in (REPO / "src" / "bplab").glob("*/__init__.py")}
    assert {"data", "models", "train", "tracking", "pipeline", "sweep", "commands", "testing"} <= packages


def test_only_tests_and_bench_import_the_testing_helpers() -> None:
    graph = import_graph(REPO / "src")
    outside = {name: sorted(t for t in targets if t.startswith("bplab.testing"))
               for name, targets in graph.items() if not name.startswith("bplab.testing")}
    assert {name: targets for name, targets in outside.items() if targets} == {
        "bplab.timings": ["bplab.testing.faults"],  # only when BPLAB_KILL_AT is set (the fault campaign)
    }


TIERS = ("unit", "integration", "e2e")


def test_every_test_file_sits_in_a_tier_and_none_imports_a_conftest() -> None:
    test_files = sorted((REPO / "tests").rglob("test_*.py"))
    assert len(test_files) > 40
    assert [str(p.relative_to(REPO)) for p in test_files if p.relative_to(REPO / "tests").parts[0] not in TIERS] == []
    importing = []
    for path in test_files:
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[-1] == "conftest" or name.split(".")[-1].startswith("test_") for name in modules):
                importing.append(str(path.relative_to(REPO)))
    assert importing == []  # shared code lives in tests/support or bplab.testing
