"""The layout stays readable: short functions, thin stage entry points."""

from __future__ import annotations

import ast

from conftest import REPO

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
