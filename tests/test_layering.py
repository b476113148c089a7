"""The import graph of the package: the command line is the top floor (no module but cli and
__main__ imports it) and no modules import each other in a loop. Built from the ast of every
module, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ntk_selector"
TOP_FLOOR = {"cli", "__main__"}


def imports_of(path: Path, package: str, modules: set[str]) -> set[str]:
    """Modules of ``package`` that one file imports ("__init__" for names of the package itself)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == package:
                found |= {a.name if a.name in modules else "__init__" for a in node.names}
            else:
                names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:  # relative: from . import x / from .x import y
            if node.module:
                names = [f"{package}.{node.module}"]
            else:
                found |= {a.name if a.name in modules else "__init__" for a in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("__import__", "import_module"):
            names = [node.args[0].value]
        for name in names:
            parts = name.split(".")
            if parts[0] == package:
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = {p.stem for p in package_dir.glob("*.py")}
    return {p.stem: imports_of(p, package_dir.name, modules) - {p.stem} for p in package_dir.glob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_nothing_below_the_command_line_imports_it():
    graph = import_graph(PACKAGE)
    assert "cli" in graph and "api" in graph
    offenders = sorted(m for m, deps in graph.items() if "cli" in deps and m not in TOP_FLOOR)
    assert offenders == [], f"library modules importing the CLI: {offenders}"
    assert graph["__main__"] == {"cli"}


def test_no_import_loops():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_command_line_loads_its_subcommands_with_plain_imports():
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "__import__"]
    assert calls == []
    assert {"finetune", "evaluate", "diagnostics", "predict", "settings"} <= import_graph(PACKAGE)["cli"]


def test_the_checks_find_a_loop_and_a_cli_import(tmp_path):
    """The graph sees every import form used here, so the two tests above can fail."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.api import run\n")
    (pkg / "api.py").write_text("def run():\n    from pkg import store\n")
    (pkg / "store.py").write_text("import pkg.files\n")
    (pkg / "files.py").write_text("from pkg.api import run\n")
    (pkg / "train.py").write_text("def f():\n    from pkg.cli import main\n")
    (pkg / "report.py").write_text("import importlib\nm = importlib.import_module('pkg.cli')\n")
    (pkg / "cli.py").write_text("from . import train\nfrom .report import m\n")
    graph = import_graph(pkg)
    assert graph["api"] == {"store"} and graph["store"] == {"files"} and graph["cli"] == {"train", "report"}
    assert cycles(graph) == [["api", "files", "store"], ["cli", "report", "train"]]  # a CLI import makes a loop too
    assert sorted(m for m, deps in graph.items() if "cli" in deps) == ["report", "train"]
