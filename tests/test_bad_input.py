"""Bad input: each case gives one line on stderr naming the problem, a non-zero exit and no
traceback (--debug shows it); rows that cannot be used are reported in run.json, never selected."""

import json
import os
import subprocess
import sys

import pytest
from conftest import write_jsonl

from ntk_selector.cli.commands import main

pytestmark = pytest.mark.usefixtures("one_thread")


def error_line(capsys, argv, rc=2):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == rc
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ntk-selector: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("x.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": "a", \n', "x.jsonl:2: malformed JSON"),
        ("x.jsonl", b'{"prompt": "a", "response": "b"}\n\n{"prompt": "a"}\n', "x.jsonl:3: missing field 'response'"),
        ("x.jsonl", b'{"prompt": "a", "response": ["b"]}\n', "x.jsonl:1: field 'response' must be a string, got list"),
        ("x.jsonl", b"", "x.jsonl: no records (empty file)"),
        ("x.jsonl", b"\n  \n", "x.jsonl: no records (empty file)"),
        (
            "x.jsonl",
            b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff", "response": "b"}\n',
            "x.jsonl:2: bytes that are not UTF-8",
        ),
        (
            "x.jsonl",
            b'{"messages": [{"role": "user", "content": "a"}]}\n',
            "x.jsonl:1: field 'messages' has no assistant turn",
        ),
        ("x.csv", b"prompt,response\na,b\nc,\xe9t\xe9\n", "x.csv:3: bytes that are not UTF-8"),
        ("x.csv", b"prompt,answer\na,b\n", "x.csv:2: missing field 'response'"),
        ("x.csv", b"prompt,response\na,b,c\n", "x.csv:2: more values than header columns"),
        ("x.txt", b"hello\n", "unknown format '.txt'"),
    ],
)
def test_bad_records_one_line_with_file_line_and_field(tmp_path, capsys, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    err = error_line(capsys, ["featurize", "--data", path, "--out", tmp_path / "o", "--model", tmp_path / "no-model"])
    assert needle in err and str(tmp_path) in err


def test_missing_file_and_unknown_model(tmp_path, small_files, capsys):
    domain, _ = small_files
    err = error_line(capsys, ["featurize", "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "o"])
    assert "nope.jsonl: file not found" in err
    err = error_line(
        capsys, ["featurize", "--data", domain, "--out", tmp_path / "o", "--model", tmp_path / "no-such-model"]
    )
    assert "model path not found" in err and "no-such-model" in err


def test_adapter_that_does_not_fit_the_model(tiny_model_dir, small_files, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    domain, _ = small_files
    wide = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    get_peft_model(wide, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "wide")
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    other.model.layers[0].self_attn.add_module("w_extra", __import__("torch").nn.Linear(32, 32))
    get_peft_model(other, LoraConfig(r=4, target_modules=["w_extra"])).save_pretrained(tmp_path / "foreign")
    base = ["featurize", "--data", domain, "--model", tiny_model_dir, "--proj-dim", "16"]
    for name in ("wide", "foreign"):
        err = error_line(capsys, [*base, "--out", tmp_path / f"o_{name}", "--adapter", tmp_path / name])
        assert f"adapter {tmp_path / name} does not fit the model" in err
    err = error_line(capsys, [*base, "--out", tmp_path / "o", "--adapter", tmp_path / "missing"])
    assert "not a PEFT adapter" in err


def test_n_larger_than_the_pool(small_files, tmp_path, capsys):
    domain, pool = small_files
    err = error_line(
        capsys,
        [
            "select",
            "--domain",
            domain,
            "--pool",
            pool,
            "--out",
            tmp_path / "o",
            "--n",
            "41",
            "--model",
            tmp_path / "unused",
        ],
    )
    assert "--n 41 is larger than the pool (40 usable rows" in err


def test_output_folder_holding_another_run(tiny_model_dir, small_files, tmp_path, capsys):
    domain, pool = small_files
    args = [
        "select",
        "--domain",
        domain,
        "--pool",
        pool,
        "--out",
        tmp_path / "o",
        "--model",
        tiny_model_dir,
        "--proj-dim",
        "16",
        "--rank",
        "4",
        "--quiet",
    ]
    assert main([str(a) for a in args + ["--n", "4"]]) == 0
    before = (tmp_path / "o" / "selected.jsonl").read_text()
    err = error_line(capsys, args + ["--n", "5"])
    assert f"{tmp_path / 'o'} holds another run" in err and "n: 4 -> 5" in err and "--overwrite" in err
    err = error_line(capsys, args + ["--n", "4", "--pool", domain])
    assert "pool_fingerprint" in err
    assert (tmp_path / "o" / "selected.jsonl").read_text() == before
    # a feature store is not a select run folder
    store = tmp_path / "o" / "stages" / "features_pool"
    err = error_line(capsys, [*args[:6], store, *args[7:], "--n", "4"])
    assert "holds a feature store" in err
    assert main([str(a) for a in args + ["--n", "5", "--overwrite"]]) == 0
    assert len((tmp_path / "o" / "selected.jsonl").read_text().splitlines()) == 5


def test_domain_without_response_tokens(tiny_model_dir, tmp_path, capsys):
    domain = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a b", "response": " "}, {"prompt": "c", "response": ""}])
    pool = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}", "response": "r"} for i in range(5)])
    err = error_line(
        capsys,
        ["select", "--domain", domain, "--pool", pool, "--out", tmp_path / "o", "--n", "2", "--model", tiny_model_dir],
    )
    assert "d.jsonl: no example has response tokens left" in err


# ----------------------------------------------------------------------------- rows reported, never selected

TEST_TEXT = "the quick brown fox jumps over the lazy dog near the river bank"  # 13 tokens


def hygiene_files(tmp_path):
    normal = [{"prompt": f"q{i} good bad", "response": f"r{i} ok", "kind": "normal"} for i in range(16)]
    rows = list(normal)
    rows += [{"prompt": "x1", "response": "", "kind": "empty"}, {"prompt": "x2", "response": "  ", "kind": "empty"}]
    # longer than --max-length: the prompt loses its middle, the response stays, the row stays usable
    rows += [{"prompt": "long " * 60 + str(i), "response": "cut", "kind": "long"} for i in range(2)]
    rows += [{**normal[i], "kind": "duplicate"} for i in (0, 1, 2)]
    rows += [
        {"prompt": f"tell me: {TEST_TEXT}", "response": "sure", "kind": "contaminated"},
        {"prompt": "story", "response": f"{TEST_TEXT.upper()} and then", "kind": "contaminated"},
    ]
    near_miss = " ".join(TEST_TEXT.split()[:12])
    rows += [{"prompt": f"{near_miss}.", "response": "no", "kind": "normal"}]  # 12 tokens + a changed 13th: clean
    order = list(range(len(rows)))
    __import__("random").Random(3).shuffle(order)
    rows = [rows[i] for i in order]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    domain = write_jsonl(tmp_path / "dom.jsonl", [{"prompt": f"d{i} good", "response": "fine"} for i in range(6)])
    test = write_jsonl(
        tmp_path / "test.jsonl", [{"question": f"{TEST_TEXT} today", "label": "yes"}, {"question": "hm"}]
    )
    return domain, pool, test, rows


def test_unusable_duplicate_and_contaminated_rows_are_reported_and_never_selected(tiny_model_dir, tmp_path, capsys):
    domain, pool, test, rows = hygiene_files(tmp_path)
    kinds = [r["kind"] for r in rows]
    usable = {i for i, k in enumerate(kinds) if k in ("normal", "long")}
    dups = {i for i, k in enumerate(kinds) if k == "duplicate"}

    # which copy comes first decides which one is "the duplicate": count the later copy of each pair
    def key(r):
        return (r["prompt"], r["response"])

    first = {}
    later = set()
    for i, r in enumerate(rows):
        if key(r) in first:
            later.add(i)
        first.setdefault(key(r), i)
    usable_deduped = (usable | dups) - later
    common = [
        "select",
        "--domain",
        domain,
        "--pool",
        pool,
        "--model",
        tiny_model_dir,
        "--max-length",
        "96",
        "--proj-dim",
        "16",
        "--rank",
        "4",
        "--quiet",
        "--decontaminate",
        test,
    ]
    n = len(usable_deduped)
    assert main([str(a) for a in common + ["--out", tmp_path / "a", "--n", n, "--dedupe"]]) == 0
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    picked = {json.loads(line)["pool_index"] for line in open(tmp_path / "a" / "selected.jsonl")}
    assert picked == usable_deduped
    assert run["counts"]["pool_no_response_tokens"] == 2
    assert sorted(run["pool_rows_without_response_tokens"]) == sorted(i for i, k in enumerate(kinds) if k == "empty")
    assert run["counts"]["pool_duplicates"] == 3 and run["pool_filter"]["duplicates"]["excluded"] is True
    assert {a for a, _ in run["pool_filter"]["duplicates"]["pairs"]} == later
    deco = run["pool_filter"]["decontamination"]
    assert deco["rows"] == 2 and set(deco["pool_indices"]) == {i for i, k in enumerate(kinds) if k == "contaminated"}
    assert deco["ngram"] == 13
    # with --keep-duplicates (the behaviour before dedupe became the default) duplicates are reported
    # but may be selected; the rest stays out
    n2 = len(usable | dups)
    assert main([str(a) for a in common + ["--out", tmp_path / "b", "--n", n2, "--keep-duplicates"]]) == 0
    picked = {json.loads(line)["pool_index"] for line in open(tmp_path / "b" / "selected.jsonl")}
    assert picked == usable | dups
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["counts"]["pool_duplicates"] == 3 and run["pool_filter"]["duplicates"]["excluded"] is False
    err = error_line(capsys, common + ["--out", tmp_path / "c", "--n", n2 + 1, "--keep-duplicates"])
    assert f"--n {n2 + 1} is larger than the pool ({n2} usable rows" in err


def test_ngram_filter_against_a_direct_check():
    from ntk_selector.io.formats import Conversation
    from ntk_selector.selection.filters import ngrams, overlapping_rows

    grams = ngrams("a b c d e f", 3)
    assert grams == {"a b c", "b c d", "c d e", "d e f"}
    convs = [
        Conversation([{"role": "user", "content": "x B C D y"}], "z"),
        Conversation([{"role": "user", "content": "b c"}], "x"),
        Conversation([{"role": "user", "content": "q"}], "e f"),
        Conversation([{"role": "user", "content": "hi"}], ""),
    ]
    assert overlapping_rows(convs, grams, 3).tolist() == [True, False, False, False]
    assert overlapping_rows(convs, ngrams("hi", 3), 3).tolist() == [
        False,
        False,
        False,
        True,
    ]  # short texts match whole


def test_no_traceback_in_a_real_process_and_debug_shows_it(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{oops}\n')
    cmd = [sys.executable, "-m", "ntk_selector", "featurize", "--data", str(bad), "--out", str(tmp_path / "o")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ntk-selector: error: {bad}:2: malformed JSON (Expecting property name enclosed in double quotes at column 2)"
    ]
    proc = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr and "DataError" in proc.stderr


def test_filtered_pool_rows_are_printed_and_counted(tiny_model_dir, tmp_path, capsys):
    """Folded duplicates and left-out copies of domain rows are said in the summary, not only in run.json."""
    from conftest import synthetic_rows

    domain_rows = synthetic_rows(6, 1, ("dom",))
    rows = synthetic_rows(20, 2)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows + rows[:3] + domain_rows[:2])
    domain = write_jsonl(tmp_path / "dom.jsonl", domain_rows)
    common = ["select", "--domain", domain, "--pool", pool, "--model", tiny_model_dir, "--method", "random"]
    capsys.readouterr()
    assert main([str(a) for a in common + ["--out", tmp_path / "a", "--n", 20]]) == 0
    out = capsys.readouterr().out
    assert "3 duplicate pool rows folded" in out and "2 pool rows are exact copies of domain rows: left out" in out
    counts = json.loads((tmp_path / "a" / "run.json").read_text())["counts"]
    assert counts["pool_duplicates"] == 3 and counts["pool_domain_copies"] == 2 and counts["pool_excluded"] == 5
    # 20 usable rows: one more is refused, naming what was left out
    err = error_line(capsys, common + ["--out", tmp_path / "b", "--n", 21])
    assert "--n 21 is larger than the pool (20 usable rows" in err and "copies of domain rows" in err
    # both flags restore the earlier behaviour: all 25 rows may be selected
    assert (
        main(
            [
                str(a)
                for a in common
                + ["--out", tmp_path / "c", "--n", 25, "--keep-duplicates", "--keep-domain-copies", "--quiet"]
            ]
        )
        == 0
    )
    run = json.loads((tmp_path / "c" / "run.json").read_text())
    assert run["counts"]["pool_excluded"] == 0 and run["counts"]["selected"] == 25
    assert run["config"]["filters"] == {**run["config"]["filters"], "dedupe": False, "keep_domain_copies": True}


def test_select_help_names_the_switches_that_restore_old_behaviour(capsys):
    assert main(["select", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--keep-duplicates" in text and "--keep-domain-copies" in text


def test_one_conversation_text_for_the_embedder_and_the_overlap_filter():
    """The MiniLM embedder reads conversation_text (one turn a line; stored embeddings depend on it) and
    the overlap filter takes its n-grams, which do not depend on the separator, so a gram still spans turns."""
    from ntk_selector.io.formats import Conversation, conversation_text
    from ntk_selector.selection.filters import ngrams, overlapping_rows

    conv = Conversation([{"role": "system", "content": "be brief"}, {"role": "user", "content": "add 2 and 3"}], "5")
    assert conversation_text(conv) == "be brief\nadd 2 and 3\n5"
    assert ngrams(conversation_text(conv), 3) == ngrams("be brief add 2 and 3 5", 3)
    assert overlapping_rows([conv], ngrams("and 3 5", 3), 3).tolist() == [True]
