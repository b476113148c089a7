"""How often the selected rows give each of the domain's answers, when the domain is a classification task.

Why: fine-tuning on D ∪ S moves the model's prior over D's labels toward the answers S gives. In the
downstream benchmark (docs/benchmarks/downstream.md) the similarity-based selections took only binary movie
sentiment rows ("positive"/"negative", never D's "neutral"), and how often the fine-tuned model
answered "neutral" decided its accuracy. This count makes such a mismatch visible at selection time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

MAX_LABELS = 20  # more distinct domain answers than this: free-form answers, not labels
MIN_SHARE = 0.1  # a label this common in D that no selected row gives is worth a warning


def normalise_answer(text: str) -> str:
    """Case, surrounding whitespace and final punctuation do not make a different label."""
    return " ".join(text.split()).lower().rstrip(".!")


def answer_mix(domain_responses: Sequence[str], selected_responses: Sequence[str]) -> dict[str, Any] | None:
    """Per domain label: rows of D and selected rows with that answer; None when D's answers are free-form.

    D counts as a classification task when it has at most ``MAX_LABELS`` distinct (normalised) answers
    and every answer occurs at least twice on average."""
    domain = Counter(normalise_answer(r) for r in domain_responses)
    if not domain or len(domain) > MAX_LABELS or 2 * len(domain) > len(domain_responses):
        return None
    selected = Counter(normalise_answer(r) for r in selected_responses)
    labels = sorted(domain)
    per_label = {label: {"domain": domain[label], "selected": selected.get(label, 0)} for label in labels}
    with_labels = sum(v["selected"] for v in per_label.values())
    missing = [label for label in labels if per_label[label]["selected"] == 0
               and domain[label] >= MIN_SHARE * len(domain_responses)]
    warnings = []
    if with_labels and missing:
        warnings.append(
            f"{with_labels} selected rows answer with the domain's labels, none of them with "
            f"{', '.join(repr(m) for m in missing)} ({', '.join(f'{100 * domain[m] / len(domain_responses):.0f}%' for m in missing)} "
            "of the domain): fine-tuning on this selection may make the model give that answer less often")
    return {"labels": per_label, "selected_other": len(selected_responses) - with_labels, "warnings": warnings}


def format_answer_mix(mix: dict[str, Any]) -> list[str]:
    """Lines for the select summary printed on the terminal."""
    parts = ", ".join(f"{label} {v['domain']}/{v['selected']}" for label, v in mix["labels"].items())
    lines = [f"  domain labels (rows in domain/selected): {parts}; selected rows with other answers {mix['selected_other']}"]
    return lines + [f"  WARNING: {w}" for w in mix["warnings"]]
