import csv
import json

import numpy as np
import pytest
from conftest import write_jsonl

from ntk_selector.config import DataConfig
from ntk_selector.errors import DataError
from ntk_selector.io.formats import to_conversation
from ntk_selector.io.records import Records, read_records
from ntk_selector.io.tokens import BATCH_OVERHEAD_TOKENS, collate, encode, plan_batches

ROWS = [{"prompt": "What is 2+2?", "response": "4"}, {"prompt": "Say hi", "response": "hi there"}]


def test_jsonl_csv_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    j = write_jsonl(tmp_path / "x.jsonl", ROWS)
    c = tmp_path / "x.csv"
    with open(c, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "response"])
        w.writeheader()
        w.writerows(ROWS)
    p = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    for path in (j, c, p):
        got = [{k: r[k] for k in ("prompt", "response")} for r in read_records(path)]
        assert got == ROWS, path


def test_hf_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    got = [{k: r[k] for k in ("prompt", "response")} for r in read_records(tmp_path / "ds")]
    assert got == ROWS


def test_hf_arrow_stream_layout(tmp_path):
    """The on-disk layout save_to_disk writes: Arrow stream files listed in state.json."""
    import pyarrow as pa

    folder = tmp_path / "ds"
    folder.mkdir()
    table = pa.Table.from_pylist(ROWS)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    got = [{k: r[k] for k in ("prompt", "response")} for r in read_records(folder)]
    assert got == ROWS


def test_messages_last_assistant_is_response():
    rec = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    conv = to_conversation(rec, DataConfig())
    assert conv.response == "d"
    assert [m["content"] for m in conv.prompt_messages] == ["a", "b", "c"]


def test_chat_template_response_mask(tok):
    cfg = DataConfig()
    enc = encode([to_conversation(ROWS[1], cfg)], tok, cfg)[0]
    full = tok.apply_chat_template(
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}], tokenize=False
    )
    # the response is the content and the one end-of-turn token; the template's "\n" after it is not in the row
    assert full.endswith("<|im_end|>\n") and tok.decode(enc.input_ids) == full[:-1]
    assert tok.decode(enc.input_ids[enc.response_start :]) == "hi there<|im_end|>"
    b = collate([enc], tok.pad_token_id)
    # logits at t predict token t+1: target positions are exactly response_start-1 .. len-2
    t = np.flatnonzero(b.target_mask[0].numpy())
    assert t[0] == enc.response_start - 1 and t[-1] == enc.length - 2 and len(t) == enc.n_response_tokens
    assert (b.labels[0, t] == b.input_ids[0, t + 1]).all()


QWEN3_STYLE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + message['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("content", ["hi there", "m", "think", "n", "<|im_end|> not special here"])
def test_response_tokens_under_a_qwen3_style_template(tok, content):
    """The empty reasoning block the template inserts joins the prompt; the response is the content plus
    <|im_end|>, never the block nor the newline after the end-of-turn token (checked against the
    rendering, whatever characters the content shares with the template)."""
    tok.chat_template = QWEN3_STYLE
    cfg = DataConfig()
    enc = encode([to_conversation({"prompt": "Say hi", "response": content}, cfg)], tok, cfg)[0]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Say hi"}], tokenize=False, add_generation_prompt=True
    )
    assert tok.decode(enc.input_ids[: enc.response_start]) == prompt + "<think>\n\n</think>\n\n"
    response = enc.input_ids[enc.response_start :].tolist()
    assert response[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(response[:-1]) == content
    assert response[:-1] == tok(content, add_special_tokens=False)["input_ids"]


def test_chatml_and_no_template_give_the_same_response_token_count(tok):
    """Content plus one closing token under ChatML; content plus EOS without a template."""
    rows = [{"prompt": "q", "response": r} for r in ("a", "hello world", "x y z")]
    with_t = encode([to_conversation(r, DataConfig()) for r in rows], tok, DataConfig())
    without = encode([to_conversation(r, DataConfig()) for r in rows], tok, DataConfig(no_chat_template=True))
    assert [e.n_response_tokens for e in with_t] == [e.n_response_tokens for e in without]
    assert [len(tok(r["response"], add_special_tokens=False)["input_ids"]) + 1 for r in rows] == [
        e.n_response_tokens for e in with_t
    ]


def test_no_chat_template_layout(tok):
    cfg = DataConfig(no_chat_template=True)
    enc = encode([to_conversation(ROWS[0], cfg)], tok, cfg)[0]
    p = tok("What is 2+2?")["input_ids"]
    r = tok("4", add_special_tokens=False)["input_ids"]
    assert enc.input_ids.tolist() == p + r + [tok.eos_token_id]
    assert enc.response_start == len(p)


def test_truncation_keeps_the_response(tok):
    """max_length cuts the prompt first (down to a quarter of it), then the response's end; never all of it."""
    cfg = DataConfig(max_length=5)
    whole = encode([to_conversation(ROWS[0], cfg)], tok, DataConfig())[0]
    enc = encode([to_conversation(ROWS[0], cfg)], tok, cfg)[0]
    response = whole.input_ids[whole.response_start :]
    assert enc.length == 5 and enc.n_response_tokens == min(len(response), 5 - 1)
    assert enc.input_ids[enc.response_start :].tolist() == response[: enc.n_response_tokens].tolist()
    assert enc.prompt_cut == whole.response_start - enc.response_start
    assert collate([enc], tok.pad_token_id).target_mask.sum() == enc.n_response_tokens


def test_empty_response_has_no_response_tokens(tok):
    cfg = DataConfig()
    enc = encode([to_conversation({"prompt": "x", "response": "  "}, cfg)], tok, cfg)[0]
    assert enc.n_response_tokens == 0


def test_plan_batches_budget_and_cover():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=200).tolist()
    batches = plan_batches(lengths, token_budget=512, max_batch_size=16)
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(200))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 512


def _plan_cost(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) + BATCH_OVERHEAD_TOKENS for b in batches)


def test_plan_batches_does_not_pad_short_rows_to_a_long_one():
    lengths = [512, 50, 50, 50]
    batches = plan_batches(lengths, token_budget=2048, max_batch_size=64)
    assert batches == [[0], [1, 2, 3]]


@pytest.mark.parametrize("seed", range(5))
def test_plan_batches_is_the_cheapest_contiguous_cut(seed):
    """Against brute force over every cut of the sorted rows into budget-respecting batches."""
    import itertools

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=9).tolist()
    budget, max_rows = 600, 4
    order = sorted(range(9), key=lambda i: (-lengths[i], i))
    best = None
    for mask in itertools.product([0, 1], repeat=8):
        groups, cur = [], [order[0]]
        for bit, i in zip(mask, order[1:], strict=True):
            if bit:
                groups.append(cur)
                cur = []
            cur.append(i)
        groups.append(cur)
        if all(len(g) <= max_rows and (len(g) == 1 or len(g) * lengths[g[0]] <= budget) for g in groups):
            cost = _plan_cost(groups, lengths)
            best = cost if best is None else min(best, cost)
    batches = plan_batches(lengths, token_budget=budget, max_batch_size=max_rows)
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert _plan_cost(batches, lengths) == best


@pytest.mark.parametrize(
    "content,needle",
    [
        (b'{"prompt": "a", "response": "b"}\n{"prompt": "a", \n', "x.jsonl:2: malformed JSON"),
        (b'{"prompt": "a"}\n', "x.jsonl:1: missing field 'response'"),
        (b'{"prompt": "a", "response": 3}\n', "x.jsonl:1: field 'response' must be a string"),
        (b"", "no records"),
        (
            b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff\xfe", "response": "b"}\n',
            "x.jsonl:2: bytes that are not UTF-8",
        ),
        (b"[1, 2]\n", "x.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_input_messages(tmp_path, content, needle):
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        Records.load(path, DataConfig())
    assert needle in str(e.value)


def test_template_parts_found_once_give_the_same_rows_as_one_at_a_time(tok):
    """encode renders the marker once per sequence of prompt roles and reuses it; every row must come out as
    when it is encoded alone (including rows with a system turn, and a template whose text differs by role)."""
    tok.chat_template = QWEN3_STYLE
    cfg = DataConfig()
    rows = [
        {"prompt": "a", "response": "x"},
        {"prompt": "bb", "response": "think"},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "n"},
            ]
        },
        {"prompt": "c", "response": "<|im_end|>"},
    ]
    convs = [to_conversation(r, cfg) for r in rows]
    together = encode(convs, tok, cfg)
    alone = [encode([c], tok, cfg)[0] for c in convs]
    for a, b in zip(together, alone, strict=True):
        assert a.input_ids.tolist() == b.input_ids.tolist() and a.response_start == b.response_start
