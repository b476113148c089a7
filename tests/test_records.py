"""Data the way users hold it: hub datasets (a local folder standing in, offline, through the same
``load_dataset`` path), local files of every kind, saved datasets and DatasetDicts, Dataset objects,
and each record format on a hand-made file, including ambiguous and malformed ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntk_selector.config import DataConfig
from ntk_selector.errors import DataError
from ntk_selector.io.records import Records, read_records

ROWS = [{"prompt": f"question {i}", "response": f"answer {i}", "task": "t" + str(i % 2)} for i in range(5)]
EXPECTED = [([{"role": "user", "content": f"question {i}"}], f"answer {i}") for i in range(5)]


def convs(records: Records) -> list[tuple[list[dict[str, str]], str]]:
    return [(c.prompt_messages, c.response) for c in records.conversations]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- sources


def test_local_files_of_every_kind_read_the_same(tmp_path):
    import datasets
    import pyarrow as pa

    ds = datasets.Dataset.from_list(ROWS)
    write_jsonl(tmp_path / "r.jsonl", ROWS)
    (tmp_path / "r.json").write_text(json.dumps(ROWS))  # a JSON array file
    (tmp_path / "r.csv").write_text(
        "prompt,response,task\n" + "".join(f"{r['prompt']},{r['response']},{r['task']}\n" for r in ROWS)
    )
    ds.to_parquet(str(tmp_path / "r.parquet"))
    with pa.OSFile(str(tmp_path / "r.arrow"), "wb") as sink, pa.ipc.new_stream(sink, ds.data.table.schema) as w:
        w.write_table(ds.data.table)
    for name in ("r.jsonl", "r.json", "r.csv", "r.parquet", "r.arrow"):
        rec = Records.load(tmp_path / name, DataConfig())
        assert convs(rec) == EXPECTED, name
        assert rec.rows_at([3, 1]) == [ROWS[3], ROWS[1]], name
        assert rec.format == "prompt-response"


def test_csv_values_stay_text(tmp_path):
    """No number guessed from '1' and no NaN from an empty cell: CSV cells are strings."""
    path = tmp_path / "n.csv"
    path.write_text("prompt,response\n2+2,4\nempty answer,\n")
    assert read_records(path) == [{"prompt": "2+2", "response": "4"}, {"prompt": "empty answer", "response": ""}]


def test_hub_layout_folder_with_split_and_subset(tmp_path):
    """A folder laid out like a hub dataset repo, read offline through load_dataset: --split and --subset."""
    repo = tmp_path / "org_dataset"
    write_jsonl(repo / "alpha" / "train.jsonl", ROWS[:3])
    write_jsonl(repo / "alpha" / "test.jsonl", ROWS[3:])
    write_jsonl(repo / "beta" / "train.jsonl", [{"prompt": "b", "response": "beta"}])
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: alpha\n  data_files:\n  - split: train\n    path: alpha/train.jsonl\n"
        "  - split: test\n    path: alpha/test.jsonl\n- config_name: beta\n  data_files:\n  - split: train\n"
        "    path: beta/train.jsonl\n---\n"
    )
    test = Records.load(repo, DataConfig(subset="alpha", split="test"))
    assert convs(test) == EXPECTED[3:]
    train = Records.load(repo, DataConfig(subset="alpha", split="train"))
    assert convs(train) == EXPECTED[:3] and train.fingerprint != test.fingerprint
    assert convs(Records.load(repo, DataConfig(subset="beta"))) == [([{"role": "user", "content": "b"}], "beta")]
    with pytest.raises(DataError, match="has splits train, test: choose one with --split"):
        Records.load(repo, DataConfig(subset="alpha"))
    with pytest.raises(DataError, match="no split 'valid'|valid"):
        Records.load(repo, DataConfig(subset="alpha", split="valid"))


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(
        DataError, match="HuggingFaceH4/ultrachat_200k: not a local file, and the hub dataset cannot be loaded"
    ):
        Records.load("HuggingFaceH4/ultrachat_200k", DataConfig(split="train_sft"))


def test_hub_id_goes_through_load_dataset(monkeypatch):
    """A hub id is handed to datasets.load_dataset with the subset and split (stubbed: no network)."""
    import datasets

    seen = {}

    def fake_load(path, name=None, split=None, **kw):
        seen.update(path=path, name=name, split=split)
        return datasets.DatasetDict(
            {"train_sft": datasets.Dataset.from_list(ROWS), "test_sft": datasets.Dataset.from_list(ROWS[:1])}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(DataError, match="has splits train_sft, test_sft: choose one with --split"):
        Records.load("HuggingFaceH4/ultrachat_200k", DataConfig(subset="default"))
    assert seen == {"path": "HuggingFaceH4/ultrachat_200k", "name": "default", "split": None}


def test_hub_id_split(monkeypatch):
    import datasets

    seen = {}

    def fake_load(path, name=None, split=None, **kw):
        seen.update(path=path, name=name, split=split)
        return datasets.Dataset.from_list(ROWS[:2])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    rec = Records.load("HuggingFaceH4/ultrachat_200k", DataConfig(subset="default", split="train_sft"))
    assert seen == {"path": "HuggingFaceH4/ultrachat_200k", "name": "default", "split": "train_sft"}
    assert convs(rec) == EXPECTED[:2] and str(rec.path) == "HuggingFaceH4/ultrachat_200k"


def test_saved_dataset_and_datasetdict_folders(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert convs(Records.load(tmp_path / "one", DataConfig())) == EXPECTED
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:2]), "test": datasets.Dataset.from_list(ROWS[2:])}
    ).save_to_disk(str(tmp_path / "dd"))
    assert convs(Records.load(tmp_path / "dd", DataConfig(split="test"))) == EXPECTED[2:]
    with pytest.raises(DataError, match="has splits train, test: choose one with --split"):
        Records.load(tmp_path / "dd", DataConfig())


def test_dataset_objects_from_python():
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    rec = Records.load(ds, DataConfig())
    assert convs(rec) == EXPECTED and rec.fingerprint == ds._fingerprint
    dd = datasets.DatasetDict({"a": ds, "b": ds.select([0])})
    assert convs(Records.load(dd, DataConfig(split="b"))) == EXPECTED[:1]


def test_subset_views_and_field_values(tmp_path):
    rec = Records.load(write_jsonl(tmp_path / "r.jsonl", ROWS), DataConfig())
    sub = rec.subset([4, 0, 2], "fp")
    assert convs(sub) == [EXPECTED[4], EXPECTED[0], EXPECTED[2]]
    assert sub.rows_at([1, 0]) == [ROWS[0], ROWS[4]]
    assert list(sub.field_values("task")) == ["t0", "t0", "t0"]
    assert list(rec.field_values("task")) == [r["task"] for r in ROWS]
    assert list(rec.field_values("nope", [0, 1])) == [None, None]


# ----------------------------------------------------------------------------- formats


FORMAT_FILES = {
    "prompt-response": (
        [{"q": "What is 2+2?", "a": "4"}],
        DataConfig(prompt_field="q", response_field="a"),
        [([{"role": "user", "content": "What is 2+2?"}], "4")],
    ),
    "prompt-completion": (
        [{"prompt": "Say hi", "completion": "hi"}],
        DataConfig(),
        [([{"role": "user", "content": "Say hi"}], "hi")],
    ),
    "prompt-completion conversational": (
        [
            {
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Capital of France?"},
                ],
                "completion": [{"role": "assistant", "content": "Paris."}],
            }
        ],
        DataConfig(),
        [([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}], "Paris.")],
    ),
    "messages": (
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "bye"},
                    {"role": "assistant", "content": "ciao"},
                ]
            }
        ],
        DataConfig(),
        [
            (
                [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "bye"},
                ],
                "ciao",
            )
        ],
    ),
    "sharegpt": (
        [
            {
                "id": "x1",
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "H1"},
                    {"from": "gpt", "value": "G1"},
                    {"from": "human", "value": "H2"},
                    {"from": "gpt", "value": "G2"},
                ],
            }
        ],
        DataConfig(),
        [
            (
                [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "H1"},
                    {"role": "assistant", "content": "G1"},
                    {"role": "user", "content": "H2"},
                ],
                "G2",
            )
        ],
    ),
    "alpaca": (
        [
            {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
            {"instruction": "Name a colour.", "input": "", "output": "red"},
        ],
        DataConfig(),
        [
            ([{"role": "user", "content": "Translate to French.\n\ncat"}], "chat"),
            ([{"role": "user", "content": "Name a colour."}], "red"),
        ],
    ),
}


@pytest.mark.parametrize("name", list(FORMAT_FILES))
def test_each_format_detected_from_its_fields(tmp_path, name):
    rows, cfg, expected = FORMAT_FILES[name]
    rec = Records.load(write_jsonl(tmp_path / "f.jsonl", rows), cfg)
    assert rec.format == name.split()[0]
    assert convs(rec) == expected


def test_alpaca_input_is_not_dropped(tmp_path):
    rows = [{"instruction": "Sum the numbers.", "input": "3 5 8", "output": "16"}]
    rec = Records.load(write_jsonl(tmp_path / "a.jsonl", rows), DataConfig())
    assert "3 5 8" in rec.conversations[0].prompt_messages[0]["content"]


def test_ambiguous_file_is_refused_and_format_names_it(tmp_path):
    rows = [
        {
            "prompt": "p",
            "response": "r",
            "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "m"}],
        }
    ]
    path = write_jsonl(tmp_path / "amb.jsonl", rows)
    with pytest.raises(DataError) as e:
        Records.load(path, DataConfig())
    assert "amb.jsonl" in str(e.value) and "messages" in str(e.value) and "prompt-response" in str(e.value)
    assert "--format" in str(e.value)
    assert Records.load(path, DataConfig(format="messages")).conversations[0].response == "m"
    assert Records.load(path, DataConfig(format="prompt-response")).conversations[0].response == "r"


def test_unknown_format_name():
    from ntk_selector.config import ConfigError

    with pytest.raises(ConfigError, match="--format must be one of auto, prompt-response, .*got 'chatml'"):
        DataConfig(format="chatml")


@pytest.mark.parametrize(
    "rows,needle",
    [
        (
            [
                {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
                {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
            ],
            "bad.jsonl:2: field 'conversations': unknown speaker 'robot'",
        ),
        (
            [{"conversations": [{"from": "human", "value": "only a question"}]}],
            "bad.jsonl:1: field 'conversations' has no assistant turn",
        ),
        (
            [{"instruction": "i", "input": "x", "output": "o"}, {"instruction": "i", "input": 7, "output": "o"}],
            "bad.jsonl:2: field 'input' must be a string, got int",
        ),
        ([{"instruction": "i", "output": "o"}, {"instruction": "j"}], "bad.jsonl:2: missing field 'output'"),
        (
            [
                {
                    "prompt": [{"role": "user", "content": "q"}],
                    "completion": [{"role": "user", "content": "not an answer"}],
                }
            ],
            "bad.jsonl:1: field 'completion' has no assistant turn",
        ),
        (
            [{"prompt": "q", "completion": "c"}, {"prompt": "q", "completion": 5}],
            "bad.jsonl:2: field 'completion' must be a list",
        ),
        (
            [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]}],
            "bad.jsonl:1: field 'messages': each message needs string 'role' and 'content'",
        ),
        (
            [{"messages": [{"role": "assistant", "content": "no question"}]}],
            "bad.jsonl:1: field 'messages' starts with the assistant turn",
        ),
        (
            [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "\ud800"}]}],
            "bad.jsonl:1: field 'conversations' holds a lone surrogate",
        ),
        ([{"instruction": "i", "input": "\udfff", "output": "o"}], "bad.jsonl:1: field 'input' holds a lone surrogate"),
        (
            [{"prompt": "p", "response": "r"}, {"prompt": "p", "response": "r", "meta": "\ud800"}],
            "bad.jsonl:2: a lone surrogate escape (\\ud800)",
        ),
    ],
)
def test_malformed_rows_name_file_line_and_problem(tmp_path, rows, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError) as e:
        Records.load(path, DataConfig())
    assert needle in str(e.value)


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n\n{"prompt": "a", "response": ["x"]}\n')
    with pytest.raises(DataError, match=r"gaps.jsonl:4: field 'response' must be a string, got list"):
        Records.load(path, DataConfig())
