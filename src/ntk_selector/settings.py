"""Settings -> typed config sections: the one path from flags, YAML files and API keyword
arguments to the dataclass configs of config.py, shared by the command line and the API.

Precedence, lowest first: dataclass defaults < subcommand defaults < an index's settings (select
with ``index``) < the YAML file (``config``) < the command line or the API's keyword arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from collections.abc import Mapping
from typing import Any

from ntk_selector.config import (
    SECTIONS,
    DataConfig,
    LoraSettings,
    ModelConfig,
    RunConfig,
    build,
    check_setting,
    check_together,
    known_names,
    load_yaml,
)
from ntk_selector.errors import UserError

# Subcommand-specific defaults: the final fine-tune trains longer than the warm-up; the demo caps
# rows at 256 tokens and pre-selects with the packaged MiniLM sentence encoder (6x faster than
# embedding the pool with the model, 95% of the paper mode's top N kept; docs/benchmarks/demo.md and
# docs/benchmarks/index_once.md) so it finishes in under 5 minutes on a 2-core CPU. `demo --embedder model`
# runs the paper's mode.
SUBCOMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {"epochs": 3.0},
    "demo": {"max_length": 256, "embedder": "minilm"},
}

MODEL_SECTIONS = (ModelConfig, DataConfig, LoraSettings, RunConfig)


def settings_values(
    given: Mapping[str, Any], command: str, sections: tuple[type, ...], config_file: str | None = None
) -> dict[str, Any]:
    """Dataclass defaults < subcommand defaults (< an index's settings for select --index) < YAML < ``given``."""
    values: dict[str, Any] = dict(SUBCOMMAND_DEFAULTS.get(command, {}))
    from_yaml: dict[str, Any] = {}
    if config_file:
        from_yaml = load_yaml(config_file)  # unknown keys and wrong values are refused there, naming the key
    given = {
        **{k: v for k, v in from_yaml.items() if k in known_names(sections)},
        **{k: v for k, v in given.items() if k in known_names(sections)},
    }
    if command == "select" and given.get("index"):
        from ntk_selector.selection.index import pool_index_settings

        values.update(pool_index_settings(given["index"]))  # the index's settings, below the file and flags
    values.update(given)
    return values


def build_configs(
    given: Mapping[str, Any], command: str, sections: tuple[type, ...], config_file: str | None = None
) -> dict[type, Any]:
    """One config object per section, from the layered values."""
    values = settings_values(given, command, sections, config_file)
    configs = {s: build(s, values) for s in sections}  # each section checks its fields' types and ranges
    check_together(*configs.values())  # and the rules between sections
    return configs


def configs_from_args(args: argparse.Namespace, sections: tuple[type, ...]) -> dict[type, Any]:
    """The command line's configs: parsed flags (argparse has already typed them) over ``--config``."""
    return build_configs(vars(args), args.command, sections, getattr(args, "config", None))


def configs_from_settings(
    settings: Mapping[str, Any], command: str, sections: tuple[type, ...] = SECTIONS
) -> dict[type, Any]:
    """The API's configs: keyword settings named like the flags (``proj_dim=1024``), checked first
    the way the command line checks its flags, so a wrong name or value is a UserError naming it."""
    settings = dict(settings)
    config_file = settings.pop("config", None)
    allowed = known_names(sections)
    checked = {}
    for name, value in settings.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown setting '{name}'{hint}")
        checked[name] = check_value(name, value)
    return build_configs(checked, command, sections, None if config_file is None else str(config_file))


def check_value(name: str, value: Any) -> Any:
    """``value`` for the API's keyword ``name``: config.check_setting's types and ranges (the one
    place settings are checked), with two API rules on top: a switch must be True or False (not
    text), and a path object stands for its text."""
    if _kind(name) == "bool" and not isinstance(value, bool):
        raise UserError(f"setting '{name}' must be True or False, got {value!r}")
    if hasattr(value, "__fspath__"):
        value = os.fspath(value)
    return check_setting(name, value, f"setting '{name}'")


def _kind(name: str) -> str:
    field = next(f for s in SECTIONS for f in dataclasses.fields(s) if f.name == name)
    return str(field.type).replace(" ", "").removesuffix("|None")
