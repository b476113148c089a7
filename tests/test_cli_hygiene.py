"""Command-line hygiene: --version, per-subcommand help, --lora-rank, logging, --quiet; select's
--output-format, replay from run.json, and --estimate."""

from __future__ import annotations

import json
import re

import pytest
from conftest import write_jsonl

from ntk_selector import __version__
from ntk_selector.cli.commands import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")


def help_of(command: str) -> str:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return sub.format_help()


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ntk-selector {__version__}"


@pytest.mark.parametrize(
    "command, absent, present",
    [
        (
            "train",
            ("--work-dir", "--dist-timeout", "--token-budget", "--max-batch-size"),
            ("--batch-size", "--checkpoint-every"),
        ),
        (
            "evaluate",
            ("--work-dir", "--dist-timeout", "--checkpoint-every"),
            ("--token-budget", "--seed", "--calibrate"),
        ),
        ("predict", ("--work-dir", "--dist-timeout", "--checkpoint-every"), ("--ridge", "--seed")),
        ("diagnose", ("--work-dir", "--dist-timeout", "--checkpoint-every"), ("--probe-rows", "--seed")),
        ("index", ("--work-dir", "--checkpoint-every"), ("--dist-timeout", "--proj-dim")),
    ],
)
def test_other_subcommands_list_only_the_flags_they_read(command, absent, present):
    text = help_of(command)
    assert not [f for f in absent if f + " " in text], command
    assert all(f in text for f in present), command


def test_help_lists_only_used_flags_grouped_by_stage():
    select = help_of("select")
    assert select.startswith("usage: ntk-selector select --domain D --pool C --n N --out DIR")
    for title in (
        "model:",
        "data (records, formats, tokens, batches):",
        "LoRA adapter:",
        "warm-up (LoRA training",
        "pre-selection (embedding reverse kNN):",
        "NTK features (featurize):",
        "scoring:",
        "pool filters:",
        "outputs:",
    ):
        assert title in select, title
    # diagnose / predict settings are not select's
    for flag in ("--probe-rows", "--ridge", "--stability-points"):
        assert flag not in select
    assert select.count("--n N, -n N") == 1  # once, among the required inputs
    # the warm-up's training flags say they are the warm-up's
    for flag in ("--lr", "--epochs", "--batch-size"):
        assert "warm-up" in select[select.index(flag + " ") : select.index(flag + " ") + 200], flag
    score = help_of("score")
    for flag in ("--work-dir", "--checkpoint-every", "--m M", "--knn-search", "--lr"):
        assert flag not in score, flag
    embed = help_of("embed")
    assert "--work-dir" not in embed and "--checkpoint-every" not in embed and "--lr" not in embed
    train = help_of("train")
    assert "warm-up (LoRA training" not in train and "--lr" in train


def test_lora_rank_with_rank_alias():
    from ntk_selector.cli.commands import _configs
    from ntk_selector.config import LoraSettings

    p = build_parser()
    for argv in (["--lora-rank", "3"], ["--rank", "3"]):
        args = p.parse_args(["embed", "--data", "x", "--out", "y", *argv])
        assert _configs(args, (LoraSettings,))[LoraSettings].rank == 3
    assert "--lora-rank LORA_RANK, --rank LORA_RANK" in help_of("embed")


def test_lora_rank_key_in_config_file(tmp_path):
    from ntk_selector.cli.commands import _configs
    from ntk_selector.config import LoraSettings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora_rank: 5\n")
    args = build_parser().parse_args(["embed", "--data", "x", "--out", "y", "--config", str(cfg)])
    assert _configs(args, (LoraSettings,))[LoraSettings].rank == 5


def test_log_level_shows_our_info_messages(small_files, tmp_path, capsys):
    domain, _ = small_files
    main(
        [
            "embed",
            "--data",
            str(domain),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "missing"),
            "--log-level",
            "info",
        ]
    )
    err = capsys.readouterr().err
    assert re.search(r"INFO ntk_selector.io.records: .*domain.jsonl: 8 records, format prompt-response", err), err


def test_quiet_silences_third_party_progress_bars(tiny_model_dir, tmp_path, capfd, monkeypatch):
    """A folder read like a hub dataset shows the datasets library's bars, unless --quiet."""
    import datasets
    import huggingface_hub.utils

    datasets.enable_progress_bars()  # an earlier --quiet run in this process turned them off
    huggingface_hub.utils.enable_progress_bars()
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(6)]
    for name in ("loud", "hushed"):
        (tmp_path / name / "data").mkdir(parents=True)
        write_jsonl(tmp_path / name / "data" / "train.jsonl", rows)
    base = ["embed", "--model", str(tiny_model_dir)]
    capfd.readouterr()
    assert main([*base, "--data", str(tmp_path / "loud"), "--out", str(tmp_path / "o1")]) == 0
    loud = capfd.readouterr().err
    assert "Generating train split" in loud and "embed" in loud  # the datasets library's bar and ours
    assert main([*base, "--data", str(tmp_path / "hushed"), "--out", str(tmp_path / "o2"), "--quiet"]) == 0
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    datasets.enable_progress_bars()


# ----------------------------------------------------------------------------- select: outputs, replay, estimate


def select_args(tiny_model_dir, domain, pool, out, *extra):
    return [
        "select",
        "--domain",
        str(domain),
        "--pool",
        str(pool),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--n",
        "4",
        "--proj-dim",
        "32",
        "--quiet",
        "--lora-rank",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        *extra,
    ]


def test_output_formats_and_replay_from_run_json(tiny_model_dir, tmp_path):
    """--output-format writes TRL rows that match the selected records; select --config run.json
    replays the run (inputs and every setting) and selects the same rows."""
    domain = write_jsonl(
        tmp_path / "d.jsonl",
        [{"instruction": f"Classify review {i}.", "input": f"text {i} good", "output": "positive"} for i in range(6)],
    )
    pool = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "sys"},
                    {"from": "human", "value": f"pool question {i}"},
                    {"from": "gpt", "value": f"pool answer {i % 3}"},
                ],
                "id": i,
            }
            for i in range(20)
        ],
    )
    a = tmp_path / "a"
    assert (
        main(select_args(tiny_model_dir, domain, pool, a, "--output-format", "prompt-completion", "--seed", "3")) == 0
    )
    selected = [json.loads(line) for line in open(a / "selected.jsonl")]
    trl = [json.loads(line) for line in open(a / "selected_prompt_completion.jsonl")]
    assert len(selected) == len(trl) == 4
    for s, t in zip(selected, trl, strict=True):
        i = s["pool_index"]
        assert s["id"] == i and s["conversations"][1]["value"] == f"pool question {i}"
        assert t == {
            "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"pool question {i}"}],
            "completion": [{"role": "assistant", "content": f"pool answer {i % 3}"}],
        }
    run = json.loads((a / "run.json").read_text())
    assert run["config"]["select"]["pool"] == str(pool.resolve()) and run["config"]["run"]["seed"] == 3

    b = tmp_path / "b"
    assert main(["select", "--config", str(a / "run.json"), "--out", str(b), "--output-format", "messages"]) == 0
    assert (b / "selected.jsonl").read_text() == (a / "selected.jsonl").read_text()
    replay = json.loads((b / "run.json").read_text())
    assert replay["inputs"]["settings"] == run["inputs"]["settings"]
    msgs = [json.loads(line) for line in open(b / "selected_messages.jsonl")]
    assert [m["messages"][-1] for m in msgs] == [t["completion"][0] for t in trl]
    # a different seed on top of the replayed config changes what is selected (the replay is not a no-op)
    c = tmp_path / "c"
    assert main(["select", "--config", str(a / "run.json"), "--out", str(c), "--seed", "4", "--method", "random"]) == 0
    assert json.loads((c / "run.json").read_text())["method"] == "random"


def test_select_without_inputs_is_a_clear_error(tmp_path, capsys):
    assert main(["select", "--out", str(tmp_path / "o"), "--n", "3"]) == 2
    assert "select needs --domain and --pool" in capsys.readouterr().err


def test_estimate_prints_each_stage_and_writes_nothing(tiny_model_dir, small_files, tmp_path, capsys):
    domain, pool = small_files
    out = tmp_path / "est"
    capsys.readouterr()
    assert main(select_args(tiny_model_dir, domain, pool, out, "--estimate")) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    assert "8 domain rows, 40 pool rows" in text and "M = 16" in text
    for stage in ("warm-up", "embed", "preselect", "featurize", "score", "total"):
        assert re.search(rf"^  {stage}\s", text, re.M), stage
    # rows per stage: embed covers domain + pool, featurize domain + M
    assert re.search(r"^  embed\s+48\s", text, re.M) and re.search(r"^  featurize\s+24\s", text, re.M)
    # disk: featurize stores (8 + 16) rows x 32 float32 dims (+ 1 status byte a row)
    assert re.search(r"^  featurize\s+24\s+\d+\s+\S+ \S+\s+3\.1 KB$", text, re.M), text


def test_estimate_numbers(tiny_model_dir, small_files):
    from ntk_selector.config import (
        DataConfig,
        FeatureConfig,
        LoraSettings,
        ModelConfig,
        PreselectConfig,
        RunConfig,
        ScoreConfig,
        TrainConfig,
    )
    from ntk_selector.io.records import Records
    from ntk_selector.io.tokens import encode
    from ntk_selector.model.loading import load_tokenizer
    from ntk_selector.selection.estimate import estimate
    from ntk_selector.selection.run_record import SelectConfigs

    domain, pool = small_files
    cfg = SelectConfigs(
        ModelConfig(model=str(tiny_model_dir)),
        DataConfig(),
        LoraSettings(rank=4),
        RunConfig(quiet=True),
        TrainConfig(batch_size=4, epochs=2.0),
        FeatureConfig(proj_dim=32),
        PreselectConfig(n=4),
        ScoreConfig(),
    )
    est = estimate(domain, pool, cfg)
    tok = load_tokenizer(str(tiny_model_dir))
    pool_tokens = sum(e.length for e in encode(list(Records.load(pool, DataConfig()).conversations), tok, DataConfig()))
    stages = {s["stage"]: s for s in est["stages"]}
    # the pool sample (up to 1024 rows >= 40) covers the whole pool, so tokens are exact
    assert stages["embed"]["tokens"] - round(est["mean_tokens"]["domain"] * 8) == pytest.approx(pool_tokens, abs=1)
    # warm-up: ceil(8 / 4) steps a epoch x 2 epochs; seconds: the timed rate x the steps' padded tokens
    assert est["timed"]["warmup_steps"] == 4
    assert stages["warm-up"]["seconds"] == pytest.approx(
        stages["warm-up"]["padded_tokens"] * est["timed"]["warmup_padded_token_seconds"]
    )
    # featurize: the domain's 8 rows and the M = 16 candidates, at their batch plans' padded tokens
    assert stages["featurize"]["padded_tokens"] >= stages["featurize"]["tokens"]
    assert stages["featurize"]["seconds"] == pytest.approx(
        stages["featurize"]["padded_tokens"] * est["timed"]["featurize_padded_token_seconds"], rel=1e-3
    )
    assert est["token_budget"] == {"embed": 2048, "featurize": 2048}  # auto on a CPU
    assert all(s["seconds"] >= 0 for s in est["stages"])


def test_select_from_dataset_objects_matches_files(tiny_model_dir, small_files, tmp_path):
    """datasets.Dataset objects from Python select what the same rows in JSONL files select."""
    import datasets

    from ntk_selector.config import (
        DataConfig,
        FeatureConfig,
        LoraSettings,
        ModelConfig,
        PreselectConfig,
        RunConfig,
        ScoreConfig,
        TrainConfig,
    )
    from ntk_selector.selection.pipeline import select
    from ntk_selector.selection.run_record import SelectConfigs

    domain, pool = small_files
    cfg = SelectConfigs(
        ModelConfig(model=str(tiny_model_dir)),
        DataConfig(),
        LoraSettings(rank=4),
        RunConfig(quiet=True),
        TrainConfig(batch_size=4, lr=1e-3),
        FeatureConfig(proj_dim=32),
        PreselectConfig(n=4),
        ScoreConfig(),
    )
    from_files = select(domain, pool, tmp_path / "files", cfg)
    d_ds = datasets.Dataset.from_list([json.loads(line) for line in open(domain)])
    p_ds = datasets.Dataset.from_list([json.loads(line) for line in open(pool)])
    from_objects = select(d_ds, p_ds, tmp_path / "objects", cfg)
    assert (tmp_path / "objects" / "selected.jsonl").read_text() == (tmp_path / "files" / "selected.jsonl").read_text()
    assert from_objects["inputs"]["pool_fingerprint"] == p_ds._fingerprint != from_files["inputs"]["pool_fingerprint"]
