"""MkDocs hooks (mkdocs.yml, ``hooks:``): pages whose text comes from the repository.

- ``benchmarks/index.md`` shows BENCHMARKS.md, the one source of the benchmark summary, with its
  links rewritten from the repository root to the docs folder.
- ``configuration.md`` gets the table of every setting, generated from the typed configs in
  ``src/ntk_selector/config.py`` (flag, YAML section, default, help), so it cannot drift from
  ``--help``.

It also holds ``FieldDefaults``, a griffe extension (mkdocs.yml, mkdocstrings ``extensions:``) that
shows a config field's default as its value rather than the ``_f(default, help, ...)`` call that
declares it.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MARK = "<!-- BENCHMARKS.md -->"
SETTINGS_MARK = "<!-- settings table -->"


def benchmarks_summary() -> str:
    """BENCHMARKS.md without its title, links made relative to docs/benchmarks/."""
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    text = text.split("\n", 1)[1]  # the page has its own title
    text = text.replace("](docs/benchmarks/", "](")
    return re.sub(r"\]\(docs/", "](../", text)


def settings_table() -> str:
    """One table per config section: flag, YAML key section, default, help."""
    sys.path.insert(0, str(ROOT / "src"))
    from ntk_selector import config
    from ntk_selector.settings import SUBCOMMAND_DEFAULTS

    names = {}
    for name, section in config.SECTION_NAMES.items():
        names.setdefault(section, name)
    out = []
    for section in config.SECTIONS:
        out += [
            f"### `{section.__name__}` (YAML section `{names[section]}:`)",
            "",
            "| flag | default | what it sets |",
            "|---|---|---|",
        ]
        for f in dataclasses.fields(section):
            meta = f.metadata
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            flags = [
                meta.get("flag", config.flag(f.name)),
                *meta.get("aliases", ()),
                *([meta["short"]] if "short" in meta else []),
            ]
            text = meta["help"].replace("|", "\\|")
            if "choices" in meta and not all(str(c) in text for c in meta["choices"]):
                text += f" (one of: {', '.join(map(str, meta['choices']))})"
            out.append(f"| {', '.join(f'`{x}`' for x in flags)} | `{default!r}` | {text} |")
        out.append("")
    own = "; ".join(
        f"`{cmd}`: " + ", ".join(f"`{config.flag(k)} {v}`" for k, v in values.items())
        for cmd, values in SUBCOMMAND_DEFAULTS.items()
    )
    out.append(f"Commands with defaults of their own (their `--help` shows them): {own}.")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (the hook's signature)
    if BENCHMARKS_MARK in markdown:
        markdown = markdown.replace(BENCHMARKS_MARK, benchmarks_summary())
    if SETTINGS_MARK in markdown:
        markdown = markdown.replace(SETTINGS_MARK, settings_table())
    return markdown


class FieldDefaults(griffe.Extension):
    """A config field declared as ``name: T = _f(default, help, ...)`` shows ``default``."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs) -> None:  # noqa: ARG002
        value = attr.value
        if isinstance(value, griffe.ExprCall) and str(value.function) == "_f" and value.arguments:
            attr.value = value.arguments[0]
