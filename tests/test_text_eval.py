"""evaluate on free-text answers: the task choice, the metrics against hand-computed reference values,
the response NLL against a plain per-row loop, truncation that keeps the response, CLI == API."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, write_jsonl

from ntk_selector.analysis.evaluate import choose_task
from ntk_selector.analysis.text_metrics import chrf, generation_summary, rouge_l
from ntk_selector.cli.commands import main
from ntk_selector.config import DataConfig
from ntk_selector.io.formats import to_conversation
from ntk_selector.io.tokens import encode, fit_to_length

SENTENCES = (
    "the cat sat on the mat",
    "a dog ran home fast",
    "rain fell over the quiet town",
    "she read two long books",
    "birds sing at dawn",
    "the river is cold today",
)


def text_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows whose answers are all different sentences: free text, not labels."""
    rows = synthetic_rows(n, seed)
    return [{"prompt": r["prompt"], "response": f"{SENTENCES[i % len(SENTENCES)]} {i}"} for i, r in enumerate(rows)]


# ----------------------------------------------------------------------------- metrics: reference values


def test_rouge_l_matches_a_hand_computed_lcs():
    # LCS of "the cat sat on the mat" / "the cat was on the mat" is "the cat on the mat": 5 of 6 words each side
    assert rouge_l(["the cat sat on the mat"], ["the cat was on the mat"]) == [pytest.approx(5 / 6)]
    # stemming: "running" and "runs" both stem to "run"; P = 2/2, R = 2/3 -> F = 0.8
    assert rouge_l(["dogs running"], ["the dog runs"]) == [pytest.approx(0.8)]
    assert rouge_l(["", "x y"], ["a b", "x y"]) == [0.0, 1.0]


def test_chrf_matches_hand_computed_character_ngram_scores():
    # "ab"/"ac": 1-grams P = R = 1/2, 2-grams 0 -> mean 1/4 -> F = 25
    # "abc"/"abd": 1-grams 2/3, 2-grams 1/2, 3-grams 0 -> mean 7/18 -> F = 38.89
    corpus, per_row = chrf(["ab", "abc"], ["ac", "abd"])
    assert per_row == [pytest.approx(25.0), pytest.approx(700 / 18)]
    # corpus statistics are pooled: 1-grams 3/5, 2-grams 1/3, 3-grams 0/1 -> 31.11
    assert corpus == pytest.approx(100 * (3 / 5 + 1 / 3 + 0) / 3)


def test_generation_summary_strips_and_averages():
    s, rows = generation_summary([" the cat sat on the mat ", "abc"], ["the cat sat on the mat", "abd"])
    assert s["exact_match"] == 0.5 and [r["exact_match"] for r in rows] == [True, False]
    assert s["rouge_l"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["chrf_sentence_mean"] == pytest.approx((100.0 + 700 / 18) / 2)


# ----------------------------------------------------------------------------- the task choice


def test_choose_task():
    assert choose_task(["yes", "no", "yes", "no"])[0] == "classification"
    assert choose_task([f"answer {i}" for i in range(10)])[0] == "generation"
    assert choose_task([f"answer {i}" for i in range(10)], "classification")[0] == "classification"
    assert choose_task(["yes", "no", "yes", "no"], "generation") == ("generation", "--task generation")
    assert choose_task(["a", "b", "c"], labels=["a", "b", "c"])[0] == "classification"
    assert "free text" in choose_task([f"answer {i}" for i in range(30)])[1]


# ----------------------------------------------------------------------------- truncation keeps the response


@pytest.mark.parametrize("p,r,limit", [(10, 3, 20), (30, 5, 20), (30, 18, 20), (3, 40, 20), (0, 40, 20), (25, 25, 8)])
def test_fit_to_length(p, r, limit):
    prompt, response = list(range(p)), list(range(100, 100 + r))
    fp, fr = fit_to_length(prompt, response, limit)
    assert len(fp) + len(fr) == min(p + r, limit)
    if p + r <= limit:
        assert (fp, fr) == (prompt, response)
        return
    if r <= limit - min(p, limit // 4):
        assert fr == response  # the response whole; the prompt lost its middle only
        keep = limit - r
        assert fp == prompt[: keep - keep // 2] + (prompt[p - keep // 2 :] if keep // 2 else [])
    else:
        assert len(fp) == min(p, limit // 4) and fr == response[: limit - len(fp)]


def test_long_prompts_are_cut_not_the_response(tok):
    cfg = DataConfig(max_length=24)
    conv = to_conversation({"prompt": " ".join(["word"] * 60), "response": "the final answer"}, cfg)
    whole = encode([conv], tok, DataConfig(max_length=1 << 20))[0]
    cut = encode([conv], tok, cfg)[0]
    assert cut.length == 24 and cut.prompt_cut == whole.length - 24 and cut.response_cut == 0
    assert cut.input_ids[cut.response_start :].tolist() == whole.input_ids[whole.response_start :].tolist()
    # the start and the end of the prompt (its template header and the assistant header) are kept
    keep = cut.response_start
    assert cut.input_ids[: keep - keep // 2].tolist() == whole.input_ids[: keep - keep // 2].tolist()
    assert (
        cut.input_ids[keep - keep // 2 : keep].tolist()
        == whole.input_ids[whole.response_start - keep // 2 : whole.response_start].tolist()
    )


# ----------------------------------------------------------------------------- NLL against a plain loop


def loop_nll(model_dir, rows, cfg):
    """Per row: summed NLL of the response tokens, one row at a time, with plain causal attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for e in encode([to_conversation(r, cfg) for r in rows], tok, cfg):
        ids = torch.from_numpy(e.input_ids)[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        s = e.response_start
        out.append((-logp[s - 1 : e.length - 1].gather(1, ids[0, s:, None])[:, 0].sum().item(), e.length - s))
    return out


def test_free_text_evaluate_matches_a_loop_and_the_api(tiny_model_dir, tmp_path):
    import ntk_selector

    rows = text_rows(14)
    rows[3]["prompt"] = " ".join(["filler"] * 120)  # longer than --max-length: its prompt is cut, its answer kept
    test = write_jsonl(tmp_path / "test.jsonl", rows)
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--data",
        str(test),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--quiet",
        "--max-length",
        "200",
        "--token-budget",
        "600",
    ]
    assert main(args) == 0
    s = json.loads((out / "eval.json").read_text())
    preds = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert s["task"] == "generation" and "free text" in s["task_reason"] and s["mode"] == "nll"
    assert s["truncated_prompts"] == 1 and s["cut_responses"] == 0 and preds[3]["prompt_cut"] > 0
    ref = loop_nll(tiny_model_dir, rows, DataConfig(max_length=200))
    for p, (nll, n) in zip(preds, ref, strict=True):
        assert p["nll"] == pytest.approx(nll, rel=1e-4) and p["response_tokens"] == n
        assert p["nll_per_token"] == pytest.approx(nll / n, rel=1e-4)
    total = sum(n for _, n in ref)
    assert s["response_tokens"] == total
    assert s["nll_per_token"] == pytest.approx(sum(v for v, _ in ref) / total, rel=1e-4)
    assert s["perplexity"] == pytest.approx(math.exp(s["nll_per_token"]))
    assert s["mean_row_nll_per_token"] == pytest.approx(np.mean([v / n for v, n in ref]), rel=1e-4)
    # batches do not change the numbers
    other = tmp_path / "eval-b1"
    assert main(args[:4] + [str(other)] + args[5:-1] + ["200"]) == 0
    s1 = json.loads((other / "eval.json").read_text())
    assert s1["nll_per_token"] == pytest.approx(s["nll_per_token"], rel=1e-5)
    # the Python API returns the same numbers
    api = ntk_selector.evaluate(
        test, tmp_path / "eval-api", model=tiny_model_dir, quiet=True, max_length=200, token_budget=600
    )
    assert api["nll_per_token"] == pytest.approx(s["nll_per_token"], rel=1e-6) and api["task"] == "generation"


def test_free_text_flags_that_do_not_apply_are_refused(tiny_model_dir, tmp_path, capsys):
    test = write_jsonl(tmp_path / "test.jsonl", text_rows(10))
    base = ["evaluate", "--data", str(test), "--out", str(tmp_path / "e"), "--model", str(tiny_model_dir), "--quiet"]
    assert main(base + ["--calibrate"]) == 2
    assert "--calibrate is for classification" in capsys.readouterr().err


def test_generation_metrics_of_a_model_that_learned_the_answer(tmp_path, confident_model_dir):
    """A model fine-tuned to always answer one sentence writes it: exact match 1, ROUGE-L 1, chrF 100;
    the base model does not. Every answer is the same, so --task generation overrides the label rule."""
    answer = "big dog"
    rows = [{"prompt": r["prompt"], "response": answer} for r in synthetic_rows(24, 5)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    adapter = tmp_path / "adapter"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(adapter),
                "--model",
                str(confident_model_dir),
                "--quiet",
                "--epochs",
                "30",
                "--lr",
                "1e-2",
                "--batch-size",
                "4",
                "--rank",
                "8",
            ]
        )
        == 0
    )
    test = write_jsonl(
        tmp_path / "test.jsonl", [{"prompt": r["prompt"], "response": answer} for r in synthetic_rows(6, 9)]
    )
    results = {}
    for name, extra in (("tuned", ["--adapter", str(adapter)]), ("base", [])):
        out = tmp_path / name
        assert (
            main(
                [
                    "evaluate",
                    "--data",
                    str(test),
                    "--out",
                    str(out),
                    "--model",
                    str(confident_model_dir),
                    "--quiet",
                    "--task",
                    "generation",
                    "--generate",
                    *extra,
                ]
            )
            == 0
        )
        results[name] = json.loads((out / "eval.json").read_text())
        preds = [json.loads(line) for line in open(out / "predictions.jsonl")]
        assert [p["rouge_l"] for p in preds] == pytest.approx(rouge_l([p["prediction"] for p in preds], [answer] * 6))
    tuned, base = results["tuned"], results["base"]
    assert tuned["task_reason"] == "--task generation" and tuned["mode"] == "nll+generate"
    assert tuned["exact_match"] == tuned["accuracy"] == 1.0 and tuned["rouge_l"] == 1.0 and tuned["chrf"] == 100.0
    assert base["exact_match"] == 0.0 and base["rouge_l"] < 0.5
    assert tuned["nll_per_token"] < base["nll_per_token"]
