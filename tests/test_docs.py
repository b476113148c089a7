"""The documents as a newcomer meets them: a short README and BENCHMARKS.md whose links resolve,
a documentation site whose every page is in its navigation, docstrings that document every argument
of the public API and every field of the config classes (the API reference is generated from them),
and CI that builds the site strictly. The build itself (`mkdocs build --strict`) runs in .ci/run."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

import ntk_selector
from ntk_selector import api, config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_FUNCTIONS = ("select", "index", "embed", "featurize", "load_features", "score", "train", "evaluate")


def test_readme_and_benchmarks_are_short_and_lead_with_the_summary():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    bench = (ROOT / "BENCHMARKS.md").read_text()
    assert len(bench.splitlines()) <= 150
    assert re.findall(r"^## .*", bench, re.M)[0] == "## Summary"
    assert "[generative domains](docs/benchmarks/generative_domains.md)" in bench


def _relative_links(text: str) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]


@pytest.mark.parametrize("name", ["README.md", "BENCHMARKS.md"])
def test_links_of_the_root_documents_resolve(name):
    for link in _relative_links((ROOT / name).read_text()):
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"{name}: {link}"
        if anchor:  # the heading exists in the target page (the slug mkdocs' toc gives it)
            headings = re.findall(r"^#+ (.*)$", target.read_text(), re.M)
            slugs = {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower()) for h in headings}
            assert anchor in slugs, f"{name}: {link}"


def _nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            out += _nav_files(value) if isinstance(value, list) else [value]
    return out


def test_every_docs_page_is_in_the_navigation():
    mkdocs = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_files(mkdocs["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    for page in (
        "getting-started.md",
        "data.md",
        "outputs.md",
        "configuration.md",
        "index-once.md",
        "stores.md",
        "distributed.md",
        "diagnostics.md",
        "finetune-evaluate.md",
        "method.md",
        "architecture.md",
        "api.md",
        "benchmarks/index.md",
        "faq.md",
    ):
        assert page in nav, page


def test_public_functions_document_their_arguments_returns_and_errors():
    for name in API_FUNCTIONS:
        func = getattr(api, name)
        doc = inspect.getdoc(func)
        for section in ("Args:", "Returns:", "Raises:"):
            assert section in doc, f"{name}: no {section}"
        args = doc.split("Args:")[1].split("Returns:")[0]
        for param in inspect.signature(func).parameters.values():
            label = f"**{param.name}" if param.kind is param.VAR_KEYWORD else param.name
            assert re.search(rf"^\s*{re.escape(label)}:", args, re.M), f"{name}: argument {param.name} undocumented"
    assert "Attributes:" in inspect.getdoc(api.Selection)
    for field in dataclasses.fields(api.Selection):
        assert re.search(rf"^\s*{field.name}:", inspect.getdoc(api.Selection), re.M), field.name


def test_config_classes_document_every_field():
    for name in ntk_selector.__all__:
        cls = getattr(config, name, None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        doc = inspect.getdoc(cls)
        assert "Args:" in doc and "Raises:" in doc, name
        for field in dataclasses.fields(cls):
            assert re.search(rf"^\s*{field.name}:", doc, re.M), f"{name}.{field.name} undocumented"


def test_the_settings_table_lists_every_setting():
    pytest.importorskip("griffe")  # docs/hooks.py needs the docs extra
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    table = hooks.settings_table()
    for section in config.SECTIONS:
        for field in dataclasses.fields(section):
            assert f"`{field.metadata.get('flag', config.flag(field.name))}`" in table, field.name
    page = hooks.on_page_markdown((DOCS / "configuration.md").read_text(), None, None, None)
    assert hooks.SETTINGS_MARK not in page and "`--proj-dim`" in page
    summary = hooks.on_page_markdown((DOCS / "benchmarks" / "index.md").read_text(), None, None, None)
    assert "](real_domains.md)" in summary and "](docs/" not in summary


def test_ci_builds_the_site_strictly():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in ci
    assert '".[test,docs]"' in (ROOT / "scripts" / "setup.sh").read_text()


def test_ci_runs_ruff_lint_and_format_check_over_the_repository():
    """ruff comes with the test extra (which scripts/setup.sh installs); .ci/run lints and checks the
    format of the whole repository, and either failing fails CI."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/ruff check .\nlint_rc=$?" in ci and ".venv/bin/ruff format --check .\nformat_rc=$?" in ci
    assert 'for step_rc in "$rc" "$docs_rc" "$lint_rc" "$format_rc"' in ci
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(d.startswith("ruff") for d in project["project"]["optional-dependencies"]["test"])
    ruff = project["tool"]["ruff"]
    assert ruff["line-length"] == 120 and {"E", "F", "I", "B", "UP"} <= set(ruff["lint"]["select"])
