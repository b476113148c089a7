"""Free-text evaluation: how well a model (+ adapter) predicts and writes the gold answers of a test set.

Why a second mode: a test set whose answers are free text (a conclusion, a summary, a reply) has no
label set to score; treating every distinct answer as a label is slow and meaningless. What users of
generative fine-tunes measure instead:

- the per-token negative log-likelihood of each gold response, over exactly the response tokens the
  training loss uses (the content and the one token that closes the turn), and its perplexity. It
  needs no generation, has low variance and is the benchmark's primary metric;
- with generation (greedy, cut at the end-of-turn token): ROUGE-L (``rouge-score``, F-measure with
  Porter stemming, the usual summarization setting), chrF (``sacrebleu``) and exact match after
  stripping whitespace. The metrics come from those well-kept libraries, not our own code.

Rows longer than ``max_length`` keep their response: the prompt loses tokens from its middle first
(``io.tokens.fit_to_length``), and the counts of shortened prompts and cut responses are reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ntk_selector.io.tokens import TRUNCATION, Encoded

# rouge-score's own name for the longest-common-subsequence score over the whole text
ROUGE_TYPE = "rougeL"


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per row ROUGE-L F-measure in [0, 1] (rouge-score, Porter stemmer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([ROUGE_TYPE], use_stemmer=True)
    return [
        float(scorer.score(ref, pred)[ROUGE_TYPE].fmeasure) for pred, ref in zip(predictions, references, strict=True)
    ]


def chrf(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, list[float]]:
    """Corpus chrF and per row sentence chrF, both in [0, 100] (sacrebleu's defaults: character 6-grams, beta 2)."""
    import sacrebleu

    corpus = float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)
    return corpus, [float(sacrebleu.sentence_chrf(p, [r]).score) for p, r in zip(predictions, references, strict=True)]


def nll_summary(nll: np.ndarray, encoded: Sequence[Encoded]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pooled and per-row NLL per token, perplexity, and how many rows were cut to fit."""
    tokens = np.array([e.n_response_tokens for e in encoded], dtype=np.int64)
    total = int(tokens.sum())
    pooled = float(nll.sum() / total) if total else float("nan")
    per_row = np.divide(nll, tokens, out=np.full(len(tokens), np.nan), where=tokens > 0)
    rows = [
        {
            "nll": float(v),
            "response_tokens": int(t),
            "nll_per_token": float(r) if t else None,
            "prompt_cut": e.prompt_cut,
            "response_cut": e.response_cut,
        }
        for v, t, r, e in zip(nll, tokens, per_row, encoded, strict=True)
    ]
    summary = {
        "nll_per_token": pooled,
        "perplexity": math.exp(pooled) if math.isfinite(pooled) else None,
        "mean_row_nll_per_token": float(np.nanmean(per_row)) if (tokens > 0).any() else None,
        "response_tokens": total,
        "truncated_prompts": int(sum(e.prompt_cut > 0 for e in encoded)),
        "cut_responses": int(sum(e.response_cut > 0 for e in encoded)),
        "truncation": TRUNCATION,
    }
    return summary, rows


def generation_summary(
    predictions: Sequence[str], references: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """ROUGE-L, chrF and exact match of generated answers against the gold ones (both stripped)."""
    preds = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    rouge = rouge_l(preds, refs)
    corpus_chrf, sentence_chrf = chrf(preds, refs)
    exact = [p == r for p, r in zip(preds, refs, strict=True)]
    n = len(refs)
    summary = {
        "rouge_l": float(np.mean(rouge)) if n else None,
        "chrf": corpus_chrf,
        "chrf_sentence_mean": float(np.mean(sentence_chrf)) if n else None,
        "exact_match": float(np.mean(exact)) if n else None,
    }
    rows = [
        {"prediction": p, "rouge_l": r, "chrf": c, "exact_match": e}
        for p, r, c, e in zip(preds, rouge, sentence_chrf, exact, strict=True)
    ]
    return summary, rows
