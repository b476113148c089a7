"""``evaluate``: how well a model (+ adapter) answers a test set, written to ``DIR/eval.json``.

The task is chosen from the gold answers (``choose_task``; ``--task`` overrides): label scoring when
they look like labels, free-text metrics otherwise (``analysis.text_metrics``: per-token NLL of the
gold response, perplexity, and with ``--generate`` ROUGE-L, chrF and exact match). ``eval.json``
says which was used and why (``task``, ``task_reason``).

Classification: every allowed label (the distinct responses of the test file, or
``--labels``) is scored by the model's summed log-likelihood of the label's response tokens after
the prompt, tokenized exactly as in training (chat template, response masks), and the best label
wins (ties: the first label). The response tokens include the template's end-of-turn tokens, which
are the same for every label. All labels of one example share one forward pass: the prompt is
followed by every label's tokens, each label attending only to the prompt and to itself (a block
attention mask, positions restarting after the prompt), so a test row costs one prompt's tokens
instead of one per label. ``--generate``: greedy generation and exact match after stripping.

Besides accuracy, balanced accuracy and macro-F1, label scoring reports ``gold_nll``: the mean over
rows of the gold label's negative log-likelihood (nats, summed over its response tokens), a
low-variance signal of what a small model learned. ``--calibrate`` adds the same scores after
contextual calibration ("Calibrate Before Use", Zhao et al. 2021): each label's log-likelihood
on content-free prompts (the test prompts' shared text around "N/A", "" and "[MASK]") is
subtracted, which separates what the model learned about the task from its label prior.

Prompts too long for ``--max-length`` (with the longest label) lose tokens from their middle: the
start (instructions, the text) and the end (the question and the assistant header) are kept.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig, to_dict
from ntk_selector.errors import UserError
from ntk_selector.features.budget import TokenBudget
from ntk_selector.io.files import refuse_replacing, write_text_atomic
from ntk_selector.io.formats import Conversation
from ntk_selector.io.records import Records
from ntk_selector.io.store import write_json_atomic
from ntk_selector.io.tokens import Encoded, encode, plan_batches
from ntk_selector.model.session import Session

OTHER = "(other)"  # generated answers outside the label set
MAX_MATRIX_LABELS = 100  # free answers can have a label per row: no confusion matrix then


# ----------------------------------------------------------------------------- tokenizing


def middle_truncate(ids: np.ndarray, budget: int) -> np.ndarray:
    """Keep the first and last tokens of a too-long prompt, dropping the middle."""
    if len(ids) <= budget:
        return ids
    tail = budget // 2
    return np.concatenate([ids[: budget - tail], ids[len(ids) - tail :]]) if tail else ids[:budget]


def prompt_and_label_ids(
    conversations: Sequence[Conversation], labels: Sequence[str], tokenizer: Any, data_cfg: DataConfig
) -> tuple[list[np.ndarray], list[list[np.ndarray]], int]:
    """Per example: prompt ids (middle-truncated to fit) and each label's response ids; plus the truncation count."""
    whole = dataclasses.replace(data_cfg, max_length=1 << 30)
    pairs = [Conversation(c.prompt_messages, label) for c in conversations for label in labels]
    encoded = encode(pairs, tokenizer, whole)
    k = len(labels)
    prompts: list[np.ndarray] = []
    label_ids: list[list[np.ndarray]] = []
    truncated = 0
    for i in range(len(conversations)):
        group = encoded[i * k : (i + 1) * k]
        prompt = group[0].input_ids[: group[0].response_start]
        for e in group[1:]:
            if e.response_start != len(prompt) or not np.array_equal(e.input_ids[: e.response_start], prompt):
                raise UserError("the chat template renders the prompt differently per label; use --no-chat-template")
        labs = [e.input_ids[e.response_start :] for e in group]
        budget = data_cfg.max_length - max(len(r) for r in labs)
        if budget < 2:
            raise UserError(f"--max-length {data_cfg.max_length} leaves no room for the prompt next to the labels")
        truncated += len(prompt) > budget
        prompts.append(middle_truncate(prompt, budget))
        label_ids.append(labs)
    return prompts, label_ids, truncated


# ----------------------------------------------------------------------------- label scores


def _supports_logits_to_keep(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _packed_batch(
    prompts: Sequence[np.ndarray], labels: Sequence[Sequence[np.ndarray]], pad_id: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded rows [pad, prompt, label_1, …, label_K] with a block mask: each label sees the prompt and itself."""
    lengths = [len(p) + sum(len(r) for r in labs) for p, labs in zip(prompts, labels, strict=True)]
    B, T = len(prompts), max(lengths)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    allowed = torch.zeros((B, T, T), dtype=torch.bool)
    idx = torch.arange(T)
    allowed[:, idx, idx] = True  # padding rows attend to themselves only (no all-masked rows)
    for b, (p, labs) in enumerate(zip(prompts, labels, strict=True)):
        s = T - lengths[b]
        n = len(p)
        ids[b, s : s + n] = torch.from_numpy(p)
        pos[b, s : s + n] = torch.arange(n)
        allowed[b, s : s + n, s : s + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
        start = s + n
        for r in labs:
            m = len(r)
            ids[b, start : start + m] = torch.from_numpy(r)
            pos[b, start : start + m] = torch.arange(n, n + m)
            allowed[b, start : start + m, s : s + n] = True
            allowed[b, start : start + m, start : start + m] = torch.tril(torch.ones(m, m, dtype=torch.bool))
            start += m
    mask = torch.zeros((B, 1, T, T), dtype=dtype).masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return ids, pos, mask


@torch.inference_mode()
def label_log_likelihoods(
    model: torch.nn.Module,
    prompts: Sequence[np.ndarray],
    labels: Sequence[Sequence[np.ndarray]],
    pad_id: int,
    data_cfg: DataConfig,
    *,
    quiet: bool = True,
) -> np.ndarray:
    """[n, K] summed log-probabilities of each label's response tokens after each prompt."""
    n, k = len(prompts), len(labels[0]) if labels else 0
    out = np.zeros((n, k), dtype=np.float64)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype if param.dtype.is_floating_point else torch.float32
    keep_arg = _supports_logits_to_keep(model)
    lengths = [len(p) + sum(len(r) for r in labs) for p, labs in zip(prompts, labels, strict=True)]
    budget = TokenBudget(data_cfg.token_budget, device, "evaluate", quiet=quiet)

    def run(members: list[int]) -> np.ndarray:
        """[len(members), K] label log-likelihoods of these rows (one forward)."""
        ps, ls = [prompts[i] for i in members], [labels[i] for i in members]
        ids, pos, mask = _packed_batch(ps, ls, pad_id, dtype)
        tails = [sum(len(r) for r in labs) for labs in ls]
        keep = max(tails) + 1  # every label token's predictor lies in the last `keep` positions
        kwargs = {"logits_to_keep": keep} if keep_arg else {}
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=pos.to(device),
            use_cache=False,
            **kwargs,
        ).logits[:, -keep:]
        rows, cols, targets = [], [], []
        for b, labs in enumerate(ls):
            last_prompt = keep - tails[b] - 1  # index in the kept window
            start = last_prompt + 1
            for r in labs:
                preds = [last_prompt] + list(range(start, start + len(r) - 1))
                rows.extend([b] * len(r))
                cols.extend(preds)
                targets.extend(r.tolist())
                start += len(r)
        picked = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)].float()
        lp = torch.log_softmax(picked, dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
        lp = lp.double().cpu().numpy()
        got = np.zeros((len(members), k), dtype=np.float64)
        at = 0
        for b, labs in enumerate(ls):
            for j, r in enumerate(labs):
                got[b, j] = lp[at : at + len(r)].sum()
                at += len(r)
        return got

    batches = plan_batches(lengths, budget.resolve(lengths, run), data_cfg.max_batch_size) if n else []
    for members in tqdm(batches, desc="evaluate", unit="batch", disable=quiet, dynamic_ncols=True):
        for piece, got in budget.run(members, lengths, run):
            out[piece] = got
    return out


# ----------------------------------------------------------------------------- generation


def stop_token_ids(tokenizer: Any, data_cfg: DataConfig) -> list[int]:
    """EOS plus the special tokens the template puts after a response (e.g. ``<|im_end|>``)."""
    probe = encode(
        [Conversation([{"role": "user", "content": "q"}], "x")],
        tokenizer,
        dataclasses.replace(data_cfg, max_length=1 << 30),
    )[0]
    suffix = probe.input_ids[probe.response_start :].tolist()
    special = set(tokenizer.all_special_ids)
    ids = [t for t in suffix if t in special]
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return list(dict.fromkeys(int(t) for t in ids))


@torch.inference_mode()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[np.ndarray],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    data_cfg: DataConfig,
    *,
    quiet: bool = True,
) -> list[str]:
    """Greedy continuation of every prompt, cut at the first stop token and decoded without special tokens."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    texts = [""] * len(prompts)
    lengths = [len(p) + max_new_tokens for p in prompts]
    budget = TokenBudget(data_cfg.token_budget, device, "generate", quiet=quiet)

    def run(members: list[int]) -> list[str]:
        T = max(len(prompts[i]) for i in members)
        ids = torch.full((len(members), T), pad, dtype=torch.long)
        attn = torch.zeros((len(members), T), dtype=torch.long)
        for b, i in enumerate(members):
            p = torch.from_numpy(prompts[i])
            ids[b, T - len(p) :] = p
            attn[b, T - len(p) :] = 1
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(stop_ids),
            pad_token_id=pad,
        )
        got = []
        for b in range(len(members)):
            new = out[b, T:].tolist()
            cut = next((t for t, tok in enumerate(new) if tok in stop_ids), len(new))
            got.append(tokenizer.decode(new[:cut], skip_special_tokens=True))
        return got

    batches = plan_batches(lengths, budget.resolve(lengths, run), data_cfg.max_batch_size) if prompts else []
    for members in tqdm(batches, desc="generate", unit="batch", disable=quiet, dynamic_ncols=True):
        for piece, got in budget.run(members, lengths, run):
            for i, text in zip(piece, got, strict=True):
                texts[i] = text
    return texts


# ----------------------------------------------------------------------------- accuracy


def confusion(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str], matrix: bool = True
) -> dict[str, Any]:
    """Accuracy, per-class counts and the confusion matrix (rows: true label, columns: prediction)."""
    cols = list(labels) + ([OTHER] if any(p not in labels for p in predicted) else [])
    col = {c: j for j, c in enumerate(cols)}
    row = {c: j for j, c in enumerate(labels)}
    counts = np.zeros((len(labels), len(cols)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        counts[row[t], col.get(p, col.get(OTHER, 0))] += 1
    correct = int(sum(t == p for t, p in zip(truth, predicted, strict=True)))
    per_class = {}
    for c in labels:
        n_c = int(counts[row[c]].sum())
        ok = int(counts[row[c], col[c]])
        per_class[c] = {
            "n": n_c,
            "correct": ok,
            "predicted": int(counts[:, col[c]].sum()),
            "accuracy": ok / n_c if n_c else None,
        }
    n = len(truth)
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "labels": list(labels),
        "per_class": per_class,
        **class_balanced_scores(per_class),
        "confusion": {"rows": list(labels), "columns": cols, "matrix": counts.tolist()} if matrix else None,
    }


def class_balanced_scores(per_class: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Balanced accuracy (mean recall over the classes present) and macro-F1 (over the same classes).

    Plain accuracy on a skewed test set rewards predicting the majority class; these two do not,
    which matters when the domain set D has another label mix than the test set.
    """
    present = [c for c in per_class.values() if c["n"]]
    if not present:
        return {"balanced_accuracy": None, "macro_f1": None}
    recall = [c["correct"] / c["n"] for c in present]
    f1 = [2 * c["correct"] / (c["n"] + c["predicted"]) for c in present]  # 2TP / (2TP + FN + FP)
    return {"balanced_accuracy": float(np.mean(recall)), "macro_f1": float(np.mean(f1))}


CONTENT_FREE = ("N/A", "", "[MASK]")


def _word_boundary_prefix(texts: Sequence[str]) -> str:
    """The longest common prefix of the texts, cut back to end at a whitespace (never mid-word)."""
    import os.path

    prefix = os.path.commonprefix(list(texts))
    if all(len(t) == len(prefix) for t in texts):
        return prefix
    cut = max(prefix.rfind(c) for c in " \n\t")
    return prefix[: cut + 1] if cut >= 0 else ""


def content_free_conversations(conversations: Sequence[Conversation]) -> list[Conversation]:
    """The test prompts' shared text (common prefix and suffix of the last prompt turn) around each
    content-free input, with the same earlier turns as the first test row."""
    texts = [c.prompt_messages[-1]["content"] for c in conversations]
    prefix = _word_boundary_prefix(texts)
    rest = [t[len(prefix) :] for t in texts]
    suffix = _word_boundary_prefix([r[::-1] for r in rest])[::-1]
    head = conversations[0].prompt_messages[:-1]
    last = conversations[0].prompt_messages[-1]
    return [Conversation(head + [{**last, "content": prefix + cf + suffix}], "") for cf in CONTENT_FREE]


def content_free_prior(
    session: Session, conversations: Sequence[Conversation], label_set: Sequence[str], data_cfg: DataConfig
) -> tuple[np.ndarray, list[str]]:
    """Mean over content-free prompts of the label distribution (softmax of label log-likelihoods)."""
    free = content_free_conversations(conversations)
    prompts, label_ids, _ = prompt_and_label_ids(free, label_set, session.tokenizer, data_cfg)
    ll = label_log_likelihoods(session.model, prompts, label_ids, session.tokenizer.pad_token_id, data_cfg)
    probs = np.exp(ll - ll.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return probs.mean(0), [c.prompt_messages[-1]["content"] for c in free]


TASKS = ("auto", "classification", "generation")
DEFAULT_MAX_NEW_TOKENS = 32  # classification with --generate: a label is a few tokens
MAX_GENERATION_TOKENS = 512  # generation: the longest gold response's tokens, at most this many


def choose_task(truth: Sequence[str], task: str = "auto", labels: Sequence[str] | None = None) -> tuple[str, str]:
    """``classification`` or ``generation`` for these gold answers, and why.

    Label scoring when the answers look like labels (the select summary's answer-mix rule: at most
    20 distinct answers, each about twice or more), free text otherwise; ``task`` overrides."""
    from ntk_selector.selection.answer_mix import MAX_LABELS, answer_mix

    if task not in TASKS:
        raise UserError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    if task != "auto":
        return task, f"--task {task}"
    if labels:
        return "classification", "--labels given"
    distinct = len(set(truth))
    if answer_mix(truth, []) is not None:
        return "classification", (
            f"{distinct} distinct answers over {len(truth)} rows look like labels (at most "
            f"{MAX_LABELS}, each about twice or more)"
        )
    return "generation", (
        f"{distinct} distinct answers over {len(truth)} rows are free text (labels: at most "
        f"{MAX_LABELS} distinct answers, each about twice or more)"
    )


def evaluate(
    session: Session,
    test: Records,
    data_cfg: DataConfig,
    *,
    labels: Sequence[str] | None = None,
    generate: bool = False,
    max_new_tokens: int | None = None,
    calibrate: bool = False,
    task: str = "auto",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Summary and per-row predictions of the session's model on the test records: label scores
    (accuracy, ...) for a classification test set, response NLL (and with ``generate`` ROUGE-L, chrF,
    exact match) for free-text answers. ``max_new_tokens`` None: 32 for labels, the longest gold
    response for free text."""
    start = time.perf_counter()
    truth = [c.response.strip() for c in test.conversations]
    chosen, reason = choose_task(truth, task, labels)
    if chosen == "generation":
        if labels:
            raise UserError("--labels is for classification; drop it or use --task classification")
        if calibrate:
            raise UserError("--calibrate is for classification (label scores); drop it for free-text answers")
        summary, rows = evaluate_text(session, test, data_cfg, generate=generate, max_new_tokens=max_new_tokens)
    else:
        summary, rows = evaluate_labels(
            session,
            test,
            data_cfg,
            truth,
            labels=labels,
            generate=generate,
            max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            calibrate=calibrate,
        )
    summary.update({"task": chosen, "task_reason": reason, "seconds": round(time.perf_counter() - start, 3)})
    return summary, rows


def evaluate_text(
    session: Session, test: Records, data_cfg: DataConfig, *, generate: bool, max_new_tokens: int | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Free-text answers: the gold response's NLL per token; with ``generate``, greedy answers and their metrics."""
    from ntk_selector.analysis.text_metrics import generation_summary, nll_summary

    tok, model, quiet = session.tokenizer, session.model, session.run.quiet
    encoded = encode(test.conversations, tok, data_cfg)
    empty = [i for i, e in enumerate(encoded) if e.n_response_tokens == 0]
    if empty:
        raise UserError(
            f"{test.path}: line {test.line(empty[0])} has an empty response: a free-text test set needs a "
            f"gold answer on every row ({len(empty)} rows without)"
        )
    nll = response_nll(model, encoded, tok.pad_token_id, data_cfg, quiet=quiet)
    summary, rows = nll_summary(nll, encoded)
    truth = [c.response.strip() for c in test.conversations]
    rows = [{"row": i, "response": t, **r} for i, (t, r) in enumerate(zip(truth, rows, strict=True))]
    summary.update({"n": len(rows), "mode": "nll", "accuracy": None})
    if generate:
        longest = max(e.n_response_tokens for e in encoded)
        limit = max_new_tokens or min(MAX_GENERATION_TOKENS, longest)
        prompts = [e.input_ids[: e.response_start] for e in encoded]
        texts = greedy_generate(model, tok, prompts, limit, stop_token_ids(tok, data_cfg), data_cfg, quiet=quiet)
        gen_summary, gen_rows = generation_summary(texts, truth)
        summary.update(
            {**gen_summary, "accuracy": gen_summary["exact_match"], "mode": "nll+generate", "max_new_tokens": limit}
        )
        rows = [{**r, **g} for r, g in zip(rows, gen_rows, strict=True)]
    return summary, rows


def response_nll(
    model: Any, encoded: Sequence[Encoded], pad_id: int, data_cfg: DataConfig, *, quiet: bool = True
) -> np.ndarray:
    """Summed negative log-likelihood (nats) of each row's response tokens given its prompt."""
    prompts = [e.input_ids[: e.response_start] for e in encoded]
    responses = [[e.input_ids[e.response_start :]] for e in encoded]
    return -label_log_likelihoods(model, prompts, responses, pad_id, data_cfg, quiet=quiet)[:, 0]


def evaluate_labels(
    session: Session,
    test: Records,
    data_cfg: DataConfig,
    truth: list[str],
    *,
    labels: Sequence[str] | None,
    generate: bool,
    max_new_tokens: int,
    calibrate: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Label answers: accuracy, balanced accuracy, macro-F1 and gold NLL by label scores (or --generate)."""
    label_set = [s.strip() for s in labels] if labels else sorted(set(truth))
    if any(not s for s in label_set):
        raise UserError("labels must be non-empty strings")
    if len(set(label_set)) != len(label_set):
        raise UserError("labels must be distinct")
    unknown = sorted(set(truth) - set(label_set))
    if unknown:
        raise UserError(f"{test.path}: responses not among --labels: {', '.join(map(repr, unknown[:5]))}")
    tok, model, quiet = session.tokenizer, session.model, session.run.quiet
    # generation needs only the prompts (a one-token stand-in label reserves room for the answer's start)
    prompts, label_ids, truncated = prompt_and_label_ids(
        test.conversations, ["x"] if generate else label_set, tok, data_cfg
    )
    if generate:
        texts = greedy_generate(
            model, tok, prompts, max_new_tokens, stop_token_ids(tok, data_cfg), data_cfg, quiet=quiet
        )
        predicted = [t.strip() for t in texts]
        rows = [
            {"row": i, "response": t, "prediction": p, "correct": t == p}
            for i, (t, p) in enumerate(zip(truth, predicted, strict=True))
        ]
    else:
        scores = label_log_likelihoods(model, prompts, label_ids, tok.pad_token_id, data_cfg, quiet=quiet)
        predicted = [label_set[int(j)] for j in scores.argmax(1)]
        rows = [
            {
                "row": i,
                "response": t,
                "prediction": p,
                "correct": t == p,
                "log_likelihood": dict(zip(label_set, map(float, scores[i]), strict=True)),
            }
            for i, (t, p) in enumerate(zip(truth, predicted, strict=True))
        ]
    summary = confusion(truth, predicted, label_set, matrix=len(label_set) <= MAX_MATRIX_LABELS)
    if not generate:
        gold = np.array([label_set.index(t) for t in truth])
        summary["gold_nll"] = float(-scores[np.arange(len(truth)), gold].mean())
    if calibrate and not generate:
        prior, free_prompts = content_free_prior(session, test.conversations, label_set, data_cfg)
        calibrated = scores - np.log(prior)[None, :]
        cal_pred = [label_set[int(j)] for j in calibrated.argmax(1)]
        for row, p in zip(rows, cal_pred, strict=True):
            row["calibrated_prediction"] = p
        summary["calibrated"] = {
            **confusion(truth, cal_pred, label_set, matrix=len(label_set) <= MAX_MATRIX_LABELS),
            "label_prior": dict(zip(label_set, map(float, prior), strict=True)),
            "content_free_prompts": free_prompts,
        }
    summary.update({"mode": "generate" if generate else "log-likelihood", "truncated_prompts": truncated})
    if generate:
        summary["max_new_tokens"] = max_new_tokens
    return summary, rows


def run_evaluate(
    data_path: str | Path,
    out: str | Path,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    run: RunConfig,
    *,
    labels: Sequence[str] | None = None,
    generate: bool = False,
    max_new_tokens: int | None = None,
    calibrate: bool = False,
    task: str = "auto",
    session: Session | None = None,
) -> dict[str, Any]:
    """Evaluate and write ``eval.json`` and ``predictions.jsonl`` atomically into ``out``."""
    refuse_replacing(out, ("eval.json", "predictions.jsonl"), (("eval.json", "data_fingerprint"),), run.overwrite)
    test = Records.load(data_path, data_cfg)
    if session is None:
        session = Session(model_cfg, LoraSettings(), run)
    session.load(model_cfg.adapter)  # no adapter: a fresh LoRA with B = 0, i.e. the base model
    summary, rows = evaluate(
        session,
        test,
        data_cfg,
        labels=labels,
        generate=generate,
        max_new_tokens=max_new_tokens,
        calibrate=calibrate,
        task=task,
    )
    summary.update(
        {
            "data": str(data_path),
            "data_fingerprint": test.fingerprint,
            **session.describe(),
            "adapter": model_cfg.adapter,
            "data_config": to_dict(data_cfg),
        }
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json_atomic(out / "eval.json", summary)
    return summary
