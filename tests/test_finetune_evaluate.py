"""train and evaluate on the tiny model: adapters, determinism, label scores vs a plain loop, accuracy bookkeeping."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, write_jsonl

from ntk_selector.analysis.evaluate import (
    confusion,
    greedy_generate,
    label_log_likelihoods,
    middle_truncate,
    prompt_and_label_ids,
    stop_token_ids,
)
from ntk_selector.cli.commands import main
from ntk_selector.config import DataConfig
from ntk_selector.io.formats import Conversation

LABELS = ("positive", "negative", "neutral")


def labelled_rows(n: int, seed: int, labels=LABELS) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": r["prompt"], "response": rng.choice(labels)} for r in synthetic_rows(n, seed)]


def train(tiny_model_dir, out, *data, extra=()):
    args = ["train", "--out", str(out), "--model", str(tiny_model_dir), "--quiet", "--rank", "4", "--batch-size", "4"]
    for d in data:
        args += ["--data", str(d)]
    return main(args + list(extra))


def load(tiny_model_dir, adapter=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), tok


def chat_ids(tok, prompt: str, response: str | None) -> tuple[list[int], list[int]]:
    """Reference tokenization: the chat template's prompt text, and the response content followed by the
    one end-of-turn token that closes it (not the template's newline after it), tokenized apart."""
    msgs = [{"role": "user", "content": prompt}]
    p = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if response is None:
        return tok(p, add_special_tokens=False)["input_ids"], []
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    assert full == p + response + "<|im_end|>\n"
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    return tok(p, add_special_tokens=False)["input_ids"], tok(response, add_special_tokens=False)["input_ids"] + [
        end_of_turn
    ]


@torch.no_grad()
def reference_log_likelihood(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """One unpadded sequence, plain causal forward, sum of log p(response token | everything before)."""
    ids = torch.tensor([prompt_ids + response_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + t, tok_id] for t, tok_id in enumerate(response_ids)))


def mean_response_loss(model, tok, rows) -> float:
    total, count = 0.0, 0
    for r in rows:
        p, resp = chat_ids(tok, r["prompt"], r["response"])
        total -= reference_log_likelihood(model, p, resp)
        count += len(resp)
    return total / count


# ----------------------------------------------------------------------------- train


def test_train_writes_loadable_adapter_and_lowers_loss(tiny_model_dir, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", labelled_rows(12, 1))
    b = write_jsonl(tmp_path / "b.jsonl", synthetic_rows(12, 2))
    out = tmp_path / "adapter"
    assert train(tiny_model_dir, out, a, b, extra=["--lr", "5e-3"]) == 0
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    state = json.loads((out / "training_state.json").read_text())
    assert state["examples"] == 24 and state["steps"] == 3 * 6  # 3 epochs (train's default) of 24 rows / 4
    assert len(state["losses"]) == state["steps"] and state["seconds"] > 0
    rows = [json.loads(line) for f in (a, b) for line in open(f)]
    base, tok = load(tiny_model_dir)
    before = mean_response_loss(base, tok, rows)
    tuned, _ = load(tiny_model_dir, out)
    after = mean_response_loss(tuned, tok, rows)
    assert after < before - 0.1, (before, after)


def test_train_is_seed_deterministic_and_reruns_skip(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", labelled_rows(10, 3))
    runs = {}
    for name, seed in (("s0", "0"), ("s0b", "0"), ("s1", "1")):
        assert (
            train(tiny_model_dir, tmp_path / name, data, extra=["--epochs", "1", "--lr", "1e-3", "--seed", seed]) == 0
        )
        runs[name] = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    assert runs["s0"].keys() == runs["s1"].keys()
    assert all(torch.equal(runs["s0"][k], runs["s0b"][k]) for k in runs["s0"])
    assert any(not torch.equal(runs["s0"][k], runs["s1"][k]) for k in runs["s0"])
    weights = tmp_path / "s0" / "adapter_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert train(tiny_model_dir, tmp_path / "s0", data, extra=["--epochs", "1", "--lr", "1e-3", "--seed", "0"]) == 0
    assert weights.stat().st_mtime_ns == before
    # another setup on the same folder is refused with a one-line error
    assert train(tiny_model_dir, tmp_path / "s0", data, extra=["--epochs", "2", "--lr", "1e-3"]) == 2


# ----------------------------------------------------------------------------- label scores


def test_label_scores_equal_a_plain_per_example_loop(lora_model, tok):
    rng = random.Random(0)
    convs = [
        Conversation(
            [{"role": "user", "content": " ".join(rng.choice("abc def ghij k".split()) for _ in range(n))}], "x"
        )
        for n in (1, 4, 9, 17, 2, 30, 6)
    ]
    labels = ["yes", "no", "maybe so"]
    cfg = DataConfig(max_length=4096, token_budget=300, max_batch_size=3)  # several batches, padded rows
    prompts, label_ids, truncated = prompt_and_label_ids(convs, labels, tok, cfg)
    assert truncated == 0
    got = label_log_likelihoods(lora_model, prompts, label_ids, tok.pad_token_id, cfg)
    want = np.zeros_like(got)
    for i, c in enumerate(convs):
        for j, lab in enumerate(labels):
            p, r = chat_ids(tok, c.prompt_messages[0]["content"], lab)
            assert prompts[i].tolist() == p and label_ids[i][j].tolist() == r
            want[i, j] = reference_log_likelihood(lora_model, p, r)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # the same scores when each example is alone in its batch
    alone = label_log_likelihoods(
        lora_model, prompts, label_ids, tok.pad_token_id, DataConfig(token_budget=1, max_batch_size=1)
    )
    np.testing.assert_allclose(alone, want, rtol=1e-5, atol=1e-4)


def test_long_prompts_lose_their_middle(tok):
    ids = np.arange(10)
    assert middle_truncate(ids, 20).tolist() == list(range(10))
    assert middle_truncate(ids, 5).tolist() == [0, 1, 2, 8, 9]
    conv = [Conversation([{"role": "user", "content": "w" * 200}], "x")]
    cfg = DataConfig(max_length=64)
    prompts, labels, truncated = prompt_and_label_ids(conv, ["yes", "no"], tok, cfg)
    full, _ = chat_ids(tok, "w" * 200, "yes")
    assert truncated == 1 and len(prompts[0]) + len(labels[0][0]) == 64
    budget = 64 - len(labels[0][0])  # the longer label ("yes" + end of turn)
    assert prompts[0].tolist() == full[: budget - budget // 2] + full[len(full) - budget // 2 :]


def test_confusion_counts_on_a_hand_made_case():
    truth = ["a", "a", "b", "c", "c", "c"]
    pred = ["a", "b", "b", "c", "a", "zzz"]
    s = confusion(truth, pred, ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(3 / 6) and s["correct"] == 3 and s["n"] == 6
    assert s["confusion"]["columns"] == ["a", "b", "c", "(other)"]
    assert s["confusion"]["matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1]]
    assert s["per_class"]["c"] == {"n": 3, "correct": 1, "predicted": 1, "accuracy": pytest.approx(1 / 3)}
    # recalls a 1/2, b 1, c 1/3; F1 a 2*1/(2+2)=1/2, b 2*1/(1+2)=2/3, c 2*1/(3+1)=1/2
    assert s["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert s["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)


def test_balanced_scores_ignore_majority_guessing():
    truth = ["pos"] * 8 + ["neg"] * 2
    always_pos = confusion(truth, ["pos"] * 10, ["pos", "neg"])
    assert always_pos["accuracy"] == pytest.approx(0.8)
    assert always_pos["balanced_accuracy"] == pytest.approx(0.5)
    assert always_pos["macro_f1"] == pytest.approx((2 * 8 / 18 + 0) / 2)
    perfect = confusion(truth, truth, ["pos", "neg"])
    assert perfect["balanced_accuracy"] == perfect["macro_f1"] == pytest.approx(1.0)


def test_evaluate_bookkeeping_is_consistent(tiny_model_dir, tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", labelled_rows(15, 4))
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(test), "--out", str(out), "--model", str(tiny_model_dir), "--quiet"]) == 0
    s = json.loads((out / "eval.json").read_text())
    preds = [json.loads(line) for line in open(out / "predictions.jsonl")]
    rows = [json.loads(line) for line in open(test)]
    assert s["n"] == len(rows) == len(preds) and s["labels"] == sorted(LABELS)
    m = np.array(s["confusion"]["matrix"])
    assert m.sum() == s["n"] and np.trace(m) == s["correct"]
    assert s["accuracy"] == pytest.approx(s["correct"] / s["n"])
    for k, lab in enumerate(s["labels"]):
        assert s["per_class"][lab]["n"] == sum(r["response"] == lab for r in rows) == m[k].sum()
        assert s["per_class"][lab]["predicted"] == sum(p["prediction"] == lab for p in preds) == m[:, k].sum()
    for p, r in zip(preds, rows, strict=True):
        ll = p["log_likelihood"]
        assert p["prediction"] == max(s["labels"], key=lambda lab: ll[lab]) and p["response"] == r["response"]
    # unknown labels are refused, restricting the set works
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(test),
                "--out",
                str(out),
                "--model",
                str(tiny_model_dir),
                "--quiet",
                "--labels",
                "positive",
                "negative",
            ]
        )
        == 2
    )


def test_a_model_trained_on_one_label_predicts_it(confident_model_dir, tmp_path):
    tiny_model_dir = confident_model_dir
    train_rows = labelled_rows(24, 5, labels=("dog",))
    data = write_jsonl(tmp_path / "train.jsonl", train_rows)
    adapter = tmp_path / "adapter"
    assert train(tiny_model_dir, adapter, data, extra=["--epochs", "10", "--lr", "1e-2", "--rank", "8"]) == 0
    test_rows = labelled_rows(12, 6, labels=("cat", "dog", "owl"))
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    share = sum(r["response"] == "dog" for r in test_rows) / len(test_rows)
    assert 0 < share < 1
    for mode in ([], ["--generate", "--max-new-tokens", "12"]):
        out = tmp_path / ("gen" if mode else "ll")
        assert (
            main(
                [
                    "evaluate",
                    "--data",
                    str(test),
                    "--out",
                    str(out),
                    "--model",
                    str(tiny_model_dir),
                    "--adapter",
                    str(adapter),
                    "--quiet",
                    *mode,
                ]
            )
            == 0
        )
        s = json.loads((out / "eval.json").read_text())
        preds = [json.loads(line)["prediction"] for line in open(out / "predictions.jsonl")]
        assert set(preds) == {"dog"}, (mode, preds)
        assert s["accuracy"] == pytest.approx(share)
        assert s["mode"] == ("generate" if mode else "log-likelihood")


def test_greedy_generation_matches_a_token_by_token_loop(lora_model, tok):
    convs = [
        Conversation([{"role": "user", "content": t}], "x")
        for t in ("hello there", "a", "some longer prompt text here")
    ]
    cfg = DataConfig()
    prompts, _, _ = prompt_and_label_ids(convs, ["x"], tok, cfg)
    stops = stop_token_ids(tok, cfg)
    assert stops == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    got = greedy_generate(lora_model, tok, prompts, 6, stops, cfg)
    for p, text in zip(prompts, got, strict=True):
        ids = p.tolist()
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(lora_model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt in stops:
                    break
                new.append(nxt)
        assert text == tok.decode(new, skip_special_tokens=True)


def test_length_grouped_batches_cover_each_epoch_and_cut_padding():
    from ntk_selector.training.loop import epoch_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=1000)
    plain = epoch_batches(1000, 8, 2.0, seed=3)
    grouped = epoch_batches(1000, 8, 2.0, seed=3, lengths=lengths)
    assert len(grouped) == len(plain) == 250
    for epoch in (grouped[:125], grouped[125:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(1000))

    def padded(steps):
        return sum(len(b) * lengths[b].max() for b in steps)

    assert padded(grouped) < 0.7 * padded(plain)
    assert all(
        np.array_equal(a, b) for a, b in zip(grouped, epoch_batches(1000, 8, 2.0, seed=3, lengths=lengths), strict=True)
    )
    # without lengths the plan is the plain seeded shuffle
    assert np.array_equal(plain[0], np.random.default_rng([3, 0]).permutation(1000)[:8])


@pytest.mark.parametrize("grouped", [False, True])
def test_whole_epochs_are_full_passes(grouped):
    """3 epochs of 100 rows in batches of 8 are 3 x 13 steps, every row exactly once per epoch (the
    last batch of each epoch holds 4 rows); a half epoch is 7 of one epoch's 13 steps."""
    from ntk_selector.training.loop import epoch_batches

    lengths = np.random.default_rng(1).integers(5, 50, size=100) if grouped else None
    steps = epoch_batches(100, 8, 3.0, seed=0, lengths=lengths)
    assert len(steps) == 39
    for e in range(3):
        assert sorted(np.concatenate(steps[13 * e : 13 * (e + 1)]).tolist()) == list(range(100))
    assert len(epoch_batches(100, 8, 0.5, seed=0, lengths=lengths)) == 7


def test_example_mean_loss_weighs_rows_equally(lora_model, tok):
    """loss_mean='example' is the mean over rows of each row's mean token cross-entropy (a per-row loop
    reference); 'token' is the mean over all response tokens, so it differs when lengths differ."""
    import torch.nn.functional as F

    from ntk_selector.config import DataConfig
    from ntk_selector.io.formats import to_conversation
    from ntk_selector.io.tokens import collate, encode
    from ntk_selector.training.loop import response_loss

    rows = [{"prompt": "q one", "response": "a"}, {"prompt": "q two", "response": "a much longer answer here"}]
    enc = encode([to_conversation(r, DataConfig()) for r in rows], tok, DataConfig())
    batch = collate(enc, tok.pad_token_id)
    per_row = []
    with torch.no_grad():
        for e in enc:
            one = collate([e], tok.pad_token_id)
            logits = lora_model(input_ids=one.input_ids).logits[0]
            m = one.labels[0] != -100
            per_row.append(F.cross_entropy(logits[m].float(), one.labels[0][m]).item())
        example = response_loss(lora_model, batch, "example").item()
        token = response_loss(lora_model, batch, "token").item()
    assert example == pytest.approx(sum(per_row) / 2, rel=1e-5)
    counts = [e.n_response_tokens for e in enc]
    assert token == pytest.approx(
        sum(loss * c for loss, c in zip(per_row, counts, strict=True)) / sum(counts), rel=1e-5
    )
    assert abs(example - token) > 1e-3


def test_train_group_by_length_flag(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", labelled_rows(10, 3))
    out = tmp_path / "grouped"
    assert train(tiny_model_dir, out, data, extra=["--epochs", "1", "--group-by-length"]) == 0
    state = json.loads((out / "training_state.json").read_text())
    assert state["definition"]["group_by_length"] is True and state["steps"] == 3


def test_content_free_prompts_keep_the_shared_text():
    from ntk_selector.analysis.evaluate import CONTENT_FREE, content_free_conversations

    convs = [
        Conversation(
            [{"role": "system", "content": "sys"}, {"role": "user", "content": f"Review: {t}\nSentiment?"}], "x"
        )
        for t in ("great film", "grim film", "fine")
    ]
    free = content_free_conversations(convs)
    assert [c.prompt_messages[-1]["content"] for c in free] == [f"Review: {cf}\nSentiment?" for cf in CONTENT_FREE]
    assert all(c.prompt_messages[0] == {"role": "system", "content": "sys"} for c in free)
    # no shared text: the content-free inputs alone
    free = content_free_conversations([Conversation([{"role": "user", "content": t}], "x") for t in ("ab", "cd")])
    assert [c.prompt_messages[-1]["content"] for c in free] == list(CONTENT_FREE)


def test_gold_nll_and_calibration_against_a_per_prompt_reference(tiny_model_dir, tmp_path):
    """gold_nll is the mean gold-label NLL of a plain forward per row; calibrated predictions are the argmax
    of log p(label | prompt) - log mean_cf softmax_label(log p(label | content-free prompt)), with the
    content-free prompts' likelihoods taken from an unbatched reference forward."""
    rows = [{"prompt": f"Review: {r['prompt']}\nSentiment?", "response": r["response"]} for r in labelled_rows(12, 7)]
    test = write_jsonl(tmp_path / "test.jsonl", rows)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(test),
                "--out",
                str(out),
                "--model",
                str(tiny_model_dir),
                "--quiet",
                "--calibrate",
            ]
        )
        == 0
    )
    s = json.loads((out / "eval.json").read_text())
    preds = [json.loads(line) for line in open(out / "predictions.jsonl")]
    model, tok = load(tiny_model_dir)
    labels = s["labels"]
    gold = [reference_log_likelihood(model, *chat_ids(tok, r["prompt"], r["response"])) for r in rows]
    assert s["gold_nll"] == pytest.approx(-np.mean(gold), rel=1e-5)
    free = [f"Review: {cf}\nSentiment?" for cf in ("N/A", "", "[MASK]")]
    assert s["calibrated"]["content_free_prompts"] == free
    ll = np.array([[reference_log_likelihood(model, *chat_ids(tok, f, lab)) for lab in labels] for f in free])
    prior = np.exp(ll - ll.max(1, keepdims=True))
    prior = (prior / prior.sum(1, keepdims=True)).mean(0)
    np.testing.assert_allclose([s["calibrated"]["label_prior"][lab] for lab in labels], prior, rtol=1e-4)
    for p in preds:
        want = max(labels, key=lambda lab: p["log_likelihood"][lab] - np.log(prior[labels.index(lab)]))
        assert p["calibrated_prediction"] == want
    assert s["calibrated"]["accuracy"] == pytest.approx(
        np.mean([p["calibrated_prediction"] == p["response"] for p in preds])
    )
