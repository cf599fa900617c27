"""The architecture as checks: the layers and the core's libraries (import-linter's contracts in
pyproject.toml), no import cycles among rnnjax's modules (grimp), modules under 500 lines,
functions of at most 8 parameters, and test modules that import no other test module."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest
from conftest import ROOT

PACKAGE = ROOT / "rnnjax"
MAX_LINES = 500
MAX_PARAMETERS = 8
# What a test module may import from tests/ besides pytest's conftest: shared helpers and the
# independent references (numpy_*.py, references.py, *_reference.py).
SHARED = ("conftest", "helpers", "references")


def sources(folder: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_import_linter_contracts_are_kept():
    """pyproject.toml's [tool.importlinter] contracts: layers (cli > report : bench > sweeps >
    app > core), a core free of hydra/omegaconf/pandas/matplotlib/seaborn, acyclic siblings."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.is_file():
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]' (import-linter)")
    proc = subprocess.run([str(lint), "--no-cache", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, capture_output=True, text=True)
    report = proc.stdout[proc.stdout.find("Contracts"):]
    assert proc.returncode == 0, report + proc.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]
    assert f"{len(contracts)} kept, 0 broken" in proc.stdout  # every contract was checked


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, without
    recursion): every import cycle lies within one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            step = next(successors, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.find_modules_directly_imported_by(
                        step)))))
                elif step in on_stack:
                    low[module] = min(low[module], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_import_cycles_are_found():
    graph = grimp.ImportGraph()
    for a, b in [("p", "p.a"), ("p.a", "p.b"), ("p.b", "p"), ("p.c", "p.a"), ("q", "q.x"),
                 ("q.x", "q")]:
        graph.add_import(importer=a, imported=b)
    assert sorted(import_cycles(graph)) == [["p", "p.a", "p.b"], ["q", "q.x"]]
    graph.remove_import(importer="q.x", imported="q")
    assert import_cycles(graph) == [["p", "p.a", "p.b"]]


def test_no_import_cycles_among_rnnjax_modules():
    """Imports inside functions count too; so does a package's __init__ importing a submodule
    that imports the package."""
    graph = grimp.build_graph("rnnjax", cache_dir=None)
    assert import_cycles(graph) == []


def test_no_module_over_500_lines():
    long = {relative(p): n for p in sources() if (n := len(p.read_text().splitlines()))
            > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: split them by responsibility"


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """A function's named parameters, positional and keyword-only, without self or cls (nor
    *args and **kwargs)."""
    args = fn.args
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def many_parameters(path: Path, name: str) -> dict[str, int]:
    """`name:line function` -> its parameter count, for every function of the module at `path`
    with more than MAX_PARAMETERS."""
    tree = ast.parse(path.read_text(), str(path))
    return {f"{name}:{node.lineno} {node.name}": len(parameters(node))
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and len(parameters(node)) > MAX_PARAMETERS}


def test_parameter_count_excludes_self_and_star_arguments(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("class A:\n    def m(self, a, b, c, d, e, f, g, h, *args, **kw): pass\n"
                 "def g(a, b, c, d, e, f, g, h, *, i): pass\n"
                 "def h(a, /, b, c, d, e, f, g, h): pass\n"
                 "async def k(cls, a, b, c, d, e, f, g, h, i): pass\n")
    assert many_parameters(f, "m") == {"m:3 g": 9, "m:5 k": 9}


def test_no_function_over_8_parameters():
    found = {k: n for p in sources() for k, n in many_parameters(p, relative(p)).items()}
    assert found == {}, f"functions over {MAX_PARAMETERS} parameters: pass one value instead"


def test_modules_imported(tmp_path):
    f = tmp_path / "test_x.py"
    f.write_text("import os\nfrom conftest import ROOT\nfrom test_y import z\nimport test_w\n"
                 "from helpers import a\nfrom numpy_gru import b\n")
    assert local_imports(f, {"conftest", "test_y", "test_w", "helpers", "numpy_gru"}) == [
        "test_y", "test_w"]


def local_imports(path: Path, local: set[str]) -> list[str]:
    """The modules of tests/ (`local`) that a test module imports and may not: everything but
    SHARED, numpy_*.py and *_reference.py."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module
                 and not node.level else [])
        for name in names:
            top = name.split(".")[0]
            if top in local and not (top in SHARED or top.startswith("numpy_")
                                     or top.endswith("_reference")):
                found.append(top)
    return found


def test_no_test_module_imports_another():
    tests = ROOT / "tests"
    local = {p.stem for p in tests.glob("*.py")}
    found = {p.name: bad for p in sorted(tests.glob("test_*.py"))
             if (bad := local_imports(p, local))}
    assert found == {}, "shared fixtures and helpers go in tests/helpers.py or conftest.py"


def test_rnnjax_imports_no_hydra_plugin():
    """The Hydra plugins (hydra_plugins/rnnjax_sweeper) import rnnjax, never the other way
    round: rnnjax registers them by the class names its configs give."""
    graph = grimp.build_graph("rnnjax", include_external_packages=True, cache_dir=None)
    assert "hydra_plugins" not in graph.modules
    plugins = ROOT / "hydra_plugins" / "rnnjax_sweeper"
    assert any("from rnnjax." in p.read_text() for p in plugins.glob("*.py"))
