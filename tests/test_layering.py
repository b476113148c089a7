"""The import graph of the package: the command line is the top floor (no module outside ``cli/``
and ``__main__`` imports it), no modules import each other in a loop, and the subpackages form
layers (io, then model, then features, then selection / training / analysis, then the API, then the
command line). Built from the ast of every module, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ntk_selector"

# a subpackage may import only from its own layer or the layers below it; top-level modules
# (config, errors, distributed, version) form the ground floor that every layer may use, and
# settings (flags, YAML and keywords -> configs) and demo (its data, built from third-party packages)
# belong with the API, above the library
LAYERS = {
    "": 0,
    "io": 1,
    "model": 2,
    "features": 3,
    "training": 4,
    "selection": 5,
    "analysis": 6,
    "api": 7,
    "settings": 7,
    "demo": 7,
    "cli": 8,
    "__main__": 8,
    "__init__": 8,
}


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted names inside the package ("io.store"; a subpackage's ``__init__`` is "io") -> file."""
    names: dict[str, Path] = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(dotted: str, modules: set[str]) -> str | None:
    """The longest known module that a dotted name inside the package starts with."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return "__init__" if dotted == "" else None


def imports_of(path: Path, package: str, modules: set[str], here: str) -> set[str]:
    """Modules of ``package`` that one file imports (``here``: the file's own dotted package).
    ``from pkg.io import store`` counts as importing "io.store"; ``from pkg.io import name`` as "io"."""
    found: set[str] = set()

    def add(target: str) -> None:
        if target == package or target.startswith(package + "."):
            inner = _resolve(target[len(package) + 1 :], modules)
            if inner is not None:
                found.add(inner)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:  # relative: from . import x / from .x import y
                anchor = [p for p in here.split(".") if p]
                anchor = anchor[: max(len(anchor) - (node.level - 1), 0)]
                base = ".".join([package, *anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                inner = base[len(package) + 1 :] if base.startswith(package + ".") else ""
                name = f"{inner}.{alias.name}" if inner else alias.name
                add(f"{package}.{name}" if name in modules else base)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("__import__", "import_module")
        ):
            add(node.args[0].value)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    names = module_names(package_dir)
    graph = {}
    for name, path in names.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imports_of(path, package_dir.name, set(names), here) - {name}
    return graph


def layer_of(module: str) -> str:
    """The layer's name in LAYERS: the subpackage, or the top-level module's own name, or "" (ground)."""
    head = module.split(".")[0]
    return head if head in LAYERS else ""


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
    assert "cli.commands" in graph and "api" in graph
    assert {m for m in graph if m.startswith("cli.")} >= {"cli.train", "cli.evaluate", "cli.predict", "cli.diagnose"}
    offenders = sorted(
        m
        for m, deps in graph.items()
        if any(d == "cli" or d.startswith("cli.") for d in deps) and layer_of(m) not in ("cli", "__main__")
    )
    assert offenders == [], f"library modules importing the CLI: {offenders}"
    assert graph["__main__"] == {"cli.commands"}


def test_no_import_loops():
    assert cycles(import_graph(PACKAGE)) == []


def test_subpackages_import_only_their_own_layer_or_below():
    graph = import_graph(PACKAGE)
    upward = sorted(
        f"{m} -> {d}" for m, deps in graph.items() for d in deps if LAYERS[layer_of(d)] > LAYERS[layer_of(m)]
    )
    assert upward == [], f"imports from a higher layer: {upward}"


def test_every_module_lives_in_a_subpackage_but_the_ground_floor():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "api", "config", "distributed", "errors", "settings", "version"]
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert set(subpackages) <= set(LAYERS), f"a subpackage with no layer: {set(subpackages) - set(LAYERS)}"


def test_the_library_does_not_import_the_demo():
    graph = import_graph(PACKAGE)
    assert "demo.data" in graph and graph["demo.data"] <= {"io.files"}
    users = sorted(
        m for m, deps in graph.items() if any(d.split(".")[0] == "demo" for d in deps) and layer_of(m) != "demo"
    )
    assert users == ["cli.commands"], users


def test_the_command_line_loads_its_subcommands_with_plain_imports():
    tree = ast.parse((PACKAGE / "cli" / "commands.py").read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "__import__"]
    assert calls == []
    assert {"cli.train", "cli.evaluate", "cli.diagnose", "cli.predict", "settings"} <= import_graph(PACKAGE)[
        "cli.commands"
    ]
    for stage in ("training/finetune.py", "analysis/evaluate.py", "analysis/predict.py", "analysis/diagnostics.py"):
        source = (PACKAGE / stage).read_text(encoding="utf-8")
        assert "argparse" not in source and "def register_cli" not in source, f"{stage} still holds command-line code"


def test_the_checks_find_a_loop_a_cli_import_and_an_upward_import(tmp_path):
    """The graph sees every import form used here, so the tests above can fail."""
    pkg = tmp_path / "pkg"
    (pkg / "io").mkdir(parents=True)
    (pkg / "cli").mkdir()
    (pkg / "__init__.py").write_text("from pkg.api import run\n")
    (pkg / "api.py").write_text("def run():\n    from pkg.io import store\n")
    (pkg / "io" / "__init__.py").write_text("")
    (pkg / "io" / "store.py").write_text("import pkg.io.files\n")
    (pkg / "io" / "files.py").write_text("from pkg.api import run\n")
    (pkg / "train.py").write_text("def f():\n    from pkg.cli.commands import main\n")
    (pkg / "report.py").write_text("import importlib\nm = importlib.import_module('pkg.cli.commands')\n")
    (pkg / "cli" / "__init__.py").write_text("from .commands import main\n")
    (pkg / "cli" / "commands.py").write_text("from .. import train\nfrom ..report import m\ndef main(): pass\n")
    graph = import_graph(pkg)
    assert graph["api"] == {"io.store"} and graph["io.store"] == {"io.files"}
    assert graph["cli.commands"] == {"train", "report"} and graph["cli"] == {"cli.commands"}
    assert cycles(graph) == [["api", "io.files", "io.store"], ["cli.commands", "report", "train"]]
    assert sorted(m for m, deps in graph.items() if "cli.commands" in deps) == ["cli", "report", "train"]
    assert "io.files" in graph and LAYERS["api"] > LAYERS["io"]  # io.files -> api is an upward import
