"""benchmarks/ as benchmarks/README.md documents it: every module it names imports and answers
``--help`` when run as ``python -m`` from the repository root, every script of the folder is in it,
every results path and page it names exists, and no file reaches into another through sys.path."""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
README = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
MODULES = sorted(set(re.findall(r"python -m (benchmarks(?:\.\w+)+)", README)))


def _own_files(*patterns: str) -> list[Path]:
    """The benchmarks' own files (not the results they wrote or the cache)."""
    skip = {BENCHMARKS / "results", BENCHMARKS / "cache"}
    return sorted(
        p
        for pattern in patterns
        for p in BENCHMARKS.rglob(pattern)
        if not any(s in p.parents for s in skip) and "__pycache__" not in p.parts
    )


def test_the_readme_names_every_script():
    assert len(MODULES) >= 16, MODULES
    scripts = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in _own_files("*.py")
        if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")
    }
    assert scripts == set(MODULES)
    for sh in _own_files("*.sh"):
        assert str(sh.relative_to(BENCHMARKS)) in README, sh


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports(module):
    importlib.import_module(module)


def test_each_module_answers_help_from_the_repository_root():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(module: str) -> tuple[str, subprocess.CompletedProcess]:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        return module, proc

    with ThreadPoolExecutor(max_workers=4) as pool:
        for module, proc in pool.map(run, MODULES):
            assert proc.returncode == 0 and proc.stdout.startswith("usage:"), (module, proc.stderr[-2000:])


def test_no_file_edits_sys_path():
    for p in _own_files("*.py", "*.sh", "*.md"):
        assert "sys.path" not in p.read_text(encoding="utf-8"), p


def test_every_results_path_and_page_it_names_exists():
    results = set(re.findall(r"`(benchmarks/results/[^`\s]*)`", README))
    assert len(results) >= 20, results
    for path in results:
        assert glob.glob(str(ROOT / path)), path
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", README) if not re.match(r"[a-z]+:", link)]
    assert any("docs/benchmarks/" in link for link in links)
    for link in links:
        assert (BENCHMARKS / link.partition("#")[0]).exists(), link


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every ``python -m benchmarks.…`` command in the READMEs, BENCHMARKS.md and docs/: (module, its arguments)."""
    files = [
        ROOT / "README.md",
        ROOT / "BENCHMARKS.md",
        BENCHMARKS / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
    ]
    commands = set()
    for f in files:
        text = f.read_text(encoding="utf-8").replace("\\\n", " ")
        for module, rest in re.findall(r"python -m (benchmarks(?:\.\w+)+)([^\n`|]*)", text):
            args = shlex.split(rest)
            for i, tok in enumerate(args):  # the command ends where the shell takes over
                if tok in {">", ">>", "&&", ";", "2>&1", "&"} or tok.startswith((">", "2>")):
                    args = args[:i]
                    break
            commands.add((module, tuple(args)))
    return sorted((m, list(a)) for m, a in commands)


class _Parsed(Exception):
    """Raised in place of running a benchmark once its command line has parsed."""


@pytest.mark.parametrize("module,args", _documented_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_documented_command_parses(module, args, monkeypatch):
    """The flags of every benchmark command in the docs are the script's own (stops before any work)."""
    original_args = argparse.ArgumentParser.parse_args
    original_known = argparse.ArgumentParser.parse_known_args
    depth = [0]

    def parse_args(self, args=None, namespace=None):
        depth[0] += 1
        try:
            ns = original_args(self, args, namespace)
        finally:
            depth[0] -= 1
        raise _Parsed(ns)

    def parse_known_args(self, args=None, namespace=None):
        out = original_known(self, args, namespace)
        if depth[0] == 0:
            raise _Parsed(out[0])
        return out

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(SystemExit if "--help" in args else _Parsed) as stop:
        importlib.import_module(module).main()
    assert "--help" not in args or stop.value.code == 0
