"""Configs: dataclass defaults < YAML < command line; every flag has one name; CI contract."""

import os
import re
import subprocess
from pathlib import Path

from ntk_selector.cli.commands import build_parser
from ntk_selector.config import FeatureConfig, LoraSettings, PreselectConfig, TrainConfig
from ntk_selector.settings import configs_from_args

ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    return build_parser().parse_args(argv)


def test_defaults_come_from_dataclasses():
    args = parse(["featurize", "--data", "x.jsonl", "--out", "o"])
    c = configs_from_args(args, (FeatureConfig, LoraSettings))
    assert c[FeatureConfig] == FeatureConfig() and c[LoraSettings] == LoraSettings()
    assert c[FeatureConfig].proj_dim == 8192 and c[LoraSettings].target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]


def test_yaml_then_command_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("proj_dim: 1024\nrank: 4\ntrain:\n  lr: 0.001\n")
    args = parse(
        ["select", "--domain", "d", "--pool", "p", "--out", "o", "--config", str(cfg), "--rank", "16", "--n", "3"]
    )
    c = configs_from_args(args, (FeatureConfig, LoraSettings, TrainConfig, PreselectConfig))
    assert c[FeatureConfig].proj_dim == 1024  # from YAML
    assert c[LoraSettings].rank == 16  # command line wins
    assert c[TrainConfig].lr == 0.001  # sectioned YAML
    assert c[PreselectConfig].n == 3


def test_unknown_yaml_key_is_a_clear_error(tmp_path):
    from ntk_selector.cli.commands import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("proj_dimm: 3\n")
    assert main(["featurize", "--data", "x", "--out", "o", "--config", str(cfg)]) == 2


def test_train_subcommand_defaults_to_three_epochs():
    from ntk_selector.settings import SUBCOMMAND_DEFAULTS

    assert SUBCOMMAND_DEFAULTS["train"]["epochs"] == 3.0
    assert TrainConfig().epochs == 1.0  # the warm-up stays light
    assert SUBCOMMAND_DEFAULTS["demo"]["embedder"] == "minilm"  # the demo's fast coarse stage; select keeps the model
    from ntk_selector.config import EmbedConfig

    assert EmbedConfig().embedder == "model"


def test_shared_flags_have_one_name_everywhere():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        flags = {s for a in p._actions for s in a.option_strings}
        if "--proj-dim" in flags or "--adapter" in flags:
            assert {"--model", "--max-length", "--seed", "--no-chat-template", "--quiet", "--config"} <= flags, name


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    setup_and_run, tests = readme_commands()[:2]
    test_cmd = tests.split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci
    assert "scripts/setup.sh" in setup_and_run and "ntk-selector demo" in setup_and_run


def test_ci_fails_when_no_test_is_collected(tmp_path):
    """.ci/run turns pytest's 'no tests collected' (exit 5) into a failure."""
    env = dict(os.environ, CI_SKIP_SETUP="1", CI_PYTEST_ARGS="-k no_test_has_this_name_at_all")
    r = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode != 0
    assert "no tests were collected" in r.stderr
