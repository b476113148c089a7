"""The validation layer (config.py), our fields in selected.jsonl, and a report that fails."""

import dataclasses
import json

import pytest
import yaml

from ntk_selector.config import (
    SECTIONS,
    ConfigError,
    DataConfig,
    LoraSettings,
    PreselectConfig,
    RunConfig,
    TrainConfig,
    build,
    check_setting,
    load_yaml,
    to_dict,
)
from ntk_selector.io.outputs import json_line, our_fields, user_record, with_our_fields


def test_to_dict_and_load_yaml_are_symmetric(tmp_path):
    """A YAML file written from to_dict (flat or sectioned) reads back to the same configs."""
    changed = [
        DataConfig(max_length=77),
        LoraSettings(rank=3, target_modules=["q_proj"]),
        TrainConfig(lr=3e-5, epochs=0.5),
        RunConfig(overwrite=True, seed=9),
        PreselectConfig(n=5, m=7),
    ]
    configs = changed + [s() for s in SECTIONS if s not in {type(c) for c in changed}]
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(to_dict(*configs)))
    (tmp_path / "sections.yaml").write_text(
        yaml.safe_dump(
            {
                "data": to_dict(configs[0]),
                "lora": to_dict(configs[1]),
                "train": to_dict(configs[2]),
                "run": to_dict(configs[3]),
                "preselect": to_dict(configs[4]),
            }
        )
    )
    flat = load_yaml(tmp_path / "flat.yaml")
    for c in configs:
        assert build(type(c), flat) == c
    sectioned = load_yaml(tmp_path / "sections.yaml")
    for c in changed:
        assert build(type(c), sectioned) == c


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("lr", "1e-4", 1e-4),
        ("rank", "4", 4),
        ("rank", 4.0, 4),
        ("overwrite", "false", False),
        ("overwrite", "True", True),
        ("target_modules", "q_proj", ["q_proj"]),
        ("projection_dims", 64, [64]),
        ("m", None, None),
        ("epochs", 2, 2.0),
    ],
)
def test_values_are_read_as_meant(name, value, expected):
    got = check_setting(name, value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "name,value,fragment",
    [
        ("rank", True, "--rank must be a whole number, got True"),
        ("rank", 4.5, "must be a whole number"),
        ("overwrite", "nope", "must be true or false"),
        ("lr", "fast", "--lr must be a number, got 'fast'"),
        ("lr", float("inf"), "finite"),
        ("max_length", [1, 2], "must be a single number"),
        ("rank", None, "needs a value"),
        ("target_modules", [], "non-empty list"),
        ("prompt_field", "  ", "must not be empty"),
        ("checks", ["stabilty"], "(did you mean 'stability'?)"),
        ("projection_top", 0, "greater than 0"),
    ],
)
def test_wrong_values_name_the_flag(name, value, fragment):
    with pytest.raises(ConfigError) as e:
        check_setting(name, value)
    assert fragment in str(e.value)


def test_every_field_has_a_checked_type():
    """Every setting's default passes its own rules (the rules and the defaults agree)."""
    for section in SECTIONS:
        section()  # __post_init__ checks every field
        for f in dataclasses.fields(section):
            kind = str(f.type).replace(" ", "").removesuffix("|None")
            if f.metadata.get("words"):  # a number or one of these words (--token-budget auto)
                assert kind == "int|str" and isinstance(f.default, (int, str)), f.name
                continue
            assert kind in {"int", "float", "bool", "str", "list[str]", "list[int]"}, f.name


def test_the_api_checks_too():
    with pytest.raises(ConfigError, match="--max-length must be at least 2, got -1"):
        DataConfig(max_length=-1)
    with pytest.raises(ConfigError, match="--m 3 is smaller than --n 5"):
        PreselectConfig(n=5, m=3)


@pytest.mark.parametrize(
    "record,nested_key",
    [
        ({"prompt": "a"}, None),
        ({"pool_index": "x"}, "ntk_selector"),
        ({"ntk_score": 1, "ntk_selector": 2}, "_ntk_selector"),
        ({"ntk_selector": {"pool_index": 9}}, None),
        ({"__line__": 3, "ntk_score": None}, "ntk_selector"),
    ],
)
def test_our_fields_never_collide(record, nested_key):
    obj = json.loads(json_line(with_our_fields(record, 0.5, 7)))
    assert user_record(obj) == record
    assert our_fields(obj) == {"ntk_score": 0.5, "pool_index": 7}
    if nested_key is None:
        assert list(obj)[-2:] == ["ntk_score", "pool_index"]
    else:
        assert list(obj)[-1] == nested_key and obj[nested_key] == {"ntk_score": 0.5, "pool_index": 7}


def test_a_failing_report_is_a_warning(tiny_model_dir, small_files, tmp_path, capsys, monkeypatch, one_thread):
    from ntk_selector.cli.commands import main
    from ntk_selector.selection import report

    def broken(out):
        raise RuntimeError("plot exploded")

    monkeypatch.setattr(report, "write_report", broken)
    domain, pool = small_files
    rc = main(
        [
            "select",
            "--domain",
            str(domain),
            "--pool",
            str(pool),
            "--out",
            str(tmp_path / "o"),
            "--n",
            "3",
            "--model",
            str(tiny_model_dir),
            "--method",
            "random",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "WARNING: the report could not be written (RuntimeError: plot exploded)" in capsys.readouterr().err
    assert len((tmp_path / "o" / "selected.jsonl").read_text().splitlines()) == 3


def test_api_selection_keeps_user_fields_named_like_ours(tiny_model_dir, tmp_path, one_thread):
    from conftest import synthetic_rows, write_jsonl

    from ntk_selector import select

    pool = [{**r, "pool_index": f"theirs-{i}", "ntk_score": i} for i, r in enumerate(synthetic_rows(12, 4))]
    pool_path = write_jsonl(tmp_path / "pool.jsonl", pool)
    domain = write_jsonl(tmp_path / "d.jsonl", synthetic_rows(4, 5))
    sel = select(domain, pool_path, 3, method="random", model=tiny_model_dir, out=tmp_path / "o", quiet=True)
    assert sel.records == [pool[i] for i in sel.indices]
    assert all(r["pool_index"].startswith("theirs-") for r in sel.records)
