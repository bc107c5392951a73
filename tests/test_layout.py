"""The house rules of src/dpstudy that a reader relies on: no module over 400 lines, no function
over 60, and every room (subpackage) says in its docstring what it holds."""

from __future__ import annotations

import ast

import pytest

from dpstudy.codebase import SRC

MODULES = sorted((SRC / "dpstudy").rglob("*.py"))
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in MODULES if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert not long, f"split these modules by concern: {long}"


def test_no_function_is_over_60_lines():
    long = {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(SRC)}:{node.lineno} {node.name}"] = lines
    assert not long, f"cut these functions into named steps: {long}"


@pytest.mark.parametrize("room", sorted(p.parent.name for p in (SRC / "dpstudy").glob("*/__init__.py")))
def test_every_room_says_what_it_holds(room):
    assert ast.get_docstring(ast.parse((SRC / "dpstudy" / room / "__init__.py").read_text())), room
