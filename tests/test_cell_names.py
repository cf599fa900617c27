"""Everything about a cell lives with the cell: no module outside rnnjax/core/cells names a
particular cell, in a string or in an import (docstrings and comments may)."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "rnnjax"
CELLS_DIR = PACKAGE / "core" / "cells"
# The benchmarks time one cell against its PyTorch twin (torch.nn.RNN is the vanilla RNN): the
# comparison itself is about that cell. rnnjax/__init__.py re-exports the cells package's public
# builders by name (`rnnjax.vanilla`).
EXEMPT = (PACKAGE / "bench", PACKAGE / "__init__.py")
BUILT_IN = {p.stem for p in CELLS_DIR.glob("*.py")
            if "\nSPEC = " in p.read_text() and not p.stem.endswith("_cells")}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of `tree`'s module, classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def names_of_cells(path: Path) -> list[str]:
    """'line: what' for each string constant equal to a built-in cell's name, and each import of
    a built-in cell's module, in the module at `path`."""
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in skip and node.value in BUILT_IN):
            found.append(f"{node.lineno}: {node.value!r}")
        modules = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                   else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for module in modules:
            if module.startswith("rnnjax.core.cells.") and module.split(".")[3] in BUILT_IN:
                found.append(f"{node.lineno}: import {module}")
    return found


def test_the_built_in_cells_are_found():
    assert {"vanilla", "gru", "lstm", "urnn", "lru"} <= BUILT_IN


def test_the_check_finds_a_name(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('"""vanilla in a docstring is fine."""\nfrom rnnjax.core.cells.lstm import x\n'
                 'if cell == "gru":\n    pass\n')
    assert names_of_cells(p) == ["2: import rnnjax.core.cells.lstm", "3: 'gru'"]


def test_no_module_outside_the_cells_package_names_a_cell():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(CELLS_DIR) or any(path.is_relative_to(e) for e in EXEMPT):
            continue
        if found := names_of_cells(path):
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, offenders
