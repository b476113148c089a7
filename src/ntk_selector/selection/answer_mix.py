"""How often the selected rows give each of the domain's answers, when the domain is a classification task.

Why: fine-tuning on D ∪ S moves the model's prior over D's labels toward the answers S gives. In the
downstream benchmark (docs/benchmarks/downstream.md) the similarity-based selections took only binary movie
sentiment rows ("positive"/"negative", never D's "neutral"), and how often the fine-tuned model
answered "neutral" decided its accuracy. This count makes such a mismatch visible at selection time,
and ``--answer-mix`` (``constrained_top_n``, beyond the paper) removes it: the top N by score whose
rows with D's labels give each label D's share, or the shares of a target file.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector.errors import UserError

MAX_LABELS = 20  # more distinct domain answers than this: free-form answers, not labels
MIN_SHARE = 0.1  # a label this common in D that no selected row gives is worth a warning


def normalise_answer(text: str) -> str:
    """Case, surrounding whitespace and final punctuation do not make a different label."""
    return " ".join(text.split()).lower().rstrip(".!")


def answer_mix(domain_responses: Sequence[str], selected_responses: Sequence[str]) -> dict[str, Any] | None:
    """Per domain label: rows of D and selected rows with that answer; None when D's answers are free-form.

    D counts as a classification task when it has at most ``MAX_LABELS`` distinct (normalised) answers
    and every answer occurs at least twice on average."""
    domain = domain_labels(domain_responses)
    if domain is None:
        return None
    selected = Counter(normalise_answer(r) for r in selected_responses)
    labels = sorted(domain)
    per_label = {label: {"domain": domain[label], "selected": selected.get(label, 0)} for label in labels}
    with_labels = sum(v["selected"] for v in per_label.values())
    missing = [
        label
        for label in labels
        if per_label[label]["selected"] == 0 and domain[label] >= MIN_SHARE * len(domain_responses)
    ]
    warnings = []
    if with_labels and missing:
        warnings.append(
            f"{with_labels} selected rows answer with the domain's labels, none of them with "
            f"{', '.join(repr(m) for m in missing)} "
            f"({', '.join(f'{100 * domain[m] / len(domain_responses):.0f}%' for m in missing)} "
            "of the domain): fine-tuning on this selection may make the model give that answer less often"
        )
    return {"labels": per_label, "selected_other": len(selected_responses) - with_labels, "warnings": warnings}


def format_answer_mix(mix: dict[str, Any]) -> list[str]:
    """Lines for the select summary printed on the terminal."""
    parts = ", ".join(f"{label} {v['domain']}/{v['selected']}" for label, v in mix["labels"].items())
    lines = [
        f"  domain labels (rows in domain/selected): {parts}; selected rows with other answers {mix['selected_other']}"
    ]
    if mix.get("constraint"):
        c = mix["constraint"]
        before = ", ".join(f"{label} {k}" for label, k in c["before"]["labels"].items())
        after = ", ".join(f"{label} {k}" for label, k in c["after"]["labels"].items())
        lines.append(
            f"  --answer-mix {c['setting']}: selected rows per label {before} (plain top N) -> {after}; "
            f"{c['rows_replaced']} rows replaced"
        )
    return lines + [f"  WARNING: {w}" for w in mix["warnings"]]


# ----------------------------------------------------------------------------- the constrained pick (--answer-mix)

SHARE_TOLERANCE = 1e-3  # a target file's shares must sum to 1 within this


def domain_labels(domain_responses: Sequence[str]) -> Counter | None:
    """Rows of D per (normalised) answer when D is a classification task, else None (the rule of ``answer_mix``)."""
    domain = Counter(normalise_answer(r) for r in domain_responses)
    if not domain or len(domain) > MAX_LABELS or 2 * len(domain) > len(domain_responses):
        return None
    return domain


def mix_target(setting: str, domain_responses: Sequence[str], domain_path: Any) -> dict[str, Fraction] | None:
    """The target share of each of D's labels for ``--answer-mix``: None for ``off``; D's own shares for
    ``keep``; for a JSON file, its ``{"label": share}`` (labels normalised like D's answers, a label the
    file leaves out gets share 0). Refused with one line naming the domain or the file: a domain that
    is not a classification task, a file that cannot be read, an unknown label, a negative or
    non-numeric share, or shares that do not sum to 1 (within ``SHARE_TOLERANCE``)."""
    if setting == "off":
        return None
    labels = domain_labels(domain_responses)
    if labels is None:
        n_answers = len({normalise_answer(r) for r in domain_responses})
        raise UserError(
            f"--answer-mix {setting} needs a classification domain, and {domain_path} is not one: "
            f"{n_answers} distinct answers in {len(domain_responses)} rows (labels are at most "
            f"{MAX_LABELS} distinct answers, each given twice or more on average)"
        )
    if setting == "keep":
        total = sum(labels.values())
        return {label: Fraction(labels[label], total) for label in sorted(labels)}
    return _read_target_file(Path(setting), sorted(labels))


def _read_target_file(path: Path, labels: list[str]) -> dict[str, Fraction]:
    example = '{"' + '": 0.5, "'.join(labels[:2]) + '": 0.5}'
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{path}: --answer-mix file not found (give off, keep, or a JSON file of target shares such as {example})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: --answer-mix file cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: --answer-mix file is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(
            f"{path}: --answer-mix file must hold a JSON object of target shares per label, such as {example}"
        )
    shares: dict[str, Fraction] = {label: Fraction(0) for label in labels}
    given: dict[str, str] = {}
    for key, value in raw.items():
        label = normalise_answer(str(key))
        if label not in shares:
            raise UserError(f"{path}: {key!r} is not one of the domain's labels ({', '.join(labels)})")
        if label in given:
            raise UserError(f"{path}: {given[label]!r} and {key!r} are the same label")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UserError(f"{path}: the share of {key!r} must be a non-negative number, got {json.dumps(value)}")
        given[label] = str(key)
        shares[label] = Fraction(str(value))  # as written: 0.2 is 1/5, not the float nearest to it
    total = sum(shares.values())
    if abs(float(total) - 1.0) > SHARE_TOLERANCE:
        raise UserError(f"{path}: the shares sum to {float(total):g}, not 1 (within {SHARE_TOLERANCE:g})")
    return {label: share / total for label, share in shares.items()}


def largest_remainder(
    shares: Mapping[str, Fraction], slots: int, next_rank: Callable[[str, int], float] | None = None
) -> dict[str, int]:
    """``slots`` divided in proportion to ``shares`` (renormalised to sum to 1): each label gets the floor
    of share x slots, and the slots left over go one each to the largest remainders. Ties: the larger
    share, then the label whose candidate for the extra slot ranks higher (``next_rank(label, floor)``:
    the ranking position of the label's candidate number ``floor``, counting from 0; infinite when it
    has none), then the label first in alphabetical order. Exact: shares are fractions."""
    total = sum(shares.values())
    if slots <= 0 or total <= 0:
        return {label: 0 for label in shares}
    exact = {label: share * slots / total for label, share in shares.items()}
    quota = {label: math.floor(x) for label, x in exact.items()}
    rank = next_rank or (lambda label, k: 0.0)
    order = sorted(
        shares, key=lambda label: (-(exact[label] - quota[label]), -shares[label], rank(label, quota[label]), label)
    )
    for label in order[: slots - sum(quota.values())]:
        quota[label] += 1
    return quota


def label_quotas(shares: Mapping[str, Fraction], slots: int, positions: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Quotas for ``slots`` labelled rows: ``largest_remainder`` of the shares (``positions``: each label's
    candidates' places in the ranking, best first); a label with fewer candidates than its quota gives
    all it has, and the slots it cannot fill are divided again among the labels that still have
    candidates, by their shares (repeated until every quota fits). The quotas sum to
    ``min(slots, candidates of the labels with a positive share)``."""
    available = {label: len(positions.get(label, ())) for label in shares}

    def next_rank(label: str, k: int) -> float:
        return positions[label][k] if k < available[label] else math.inf

    fixed: dict[str, int] = {}
    active = [label for label in sorted(shares) if shares[label] > 0]
    while active:
        quota = largest_remainder({label: shares[label] for label in active}, slots - sum(fixed.values()), next_rank)
        short = [label for label in active if quota[label] > available.get(label, 0)]
        if not short:
            fixed.update(quota)
            break
        for label in short:
            fixed[label] = available.get(label, 0)
        active = [label for label in active if label not in short]
    return {label: fixed.get(label, 0) for label in sorted(shares)}


def constrained_top_n(
    answers: Sequence[str], n: int, shares: Mapping[str, Fraction]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The top ``n`` of a ranking (``answers``: the candidates' answers, best-scored first) whose rows with
    one of D's labels have the target shares. Returns positions in the ranking, best first, and the record
    for run.json.

    The rule, exact and deterministic (the ranking already breaks score ties):
    1. The plain top ``n`` has ``m`` rows answering with one of D's labels and ``n - m`` answering
       otherwise. The ``n - m`` other rows stay: they are the best-ranked rows with other answers.
    2. The ``m`` labelled slots get per-label quotas: largest-remainder rounding of share x m
       (``largest_remainder``; equal remainders go to the larger share, then to the label whose next
       candidate ranks higher); each label fills its quota with its best-ranked candidates.
    3. A label with fewer candidates than its quota gives all it has, and its unfilled slots are
       divided again among the other labels by their shares (``label_quotas``); a warning names it.
       With ``keep`` this always fills all ``m`` slots (the plain top ``n`` holds ``m`` labelled rows).
       Only a target file that gives some of D's labels share 0 can leave slots unfilled: they go to
       the next best rows with other answers, then (if the candidates hold too few) to the best rows of
       the labels targeted at 0.
    The selection is these rows in rank order: as long as the plain top ``n`` (``min(n, len(answers))``)."""
    answers = [normalise_answer(a) for a in answers]
    n = min(n, len(answers))
    labelled = [a in shares for a in answers]
    m = sum(labelled[:n])
    positions: dict[str, list[int]] = {label: [] for label in shares}
    for pos, (answer, is_label) in enumerate(zip(answers, labelled, strict=True)):
        if is_label:
            positions[answer].append(pos)
    available = {label: len(p) for label, p in positions.items()}
    quota = label_quotas(shares, m, positions)
    taken: Counter = Counter()
    others = 0
    picked: list[int] = []
    for pos, (answer, is_label) in enumerate(zip(answers, labelled, strict=True)):
        if is_label and taken[answer] < quota[answer]:
            taken[answer] += 1
            picked.append(pos)
        elif not is_label and others < n - m:
            others += 1
            picked.append(pos)
    missing = n - len(picked)
    if missing:  # labels targeted at 0 hold the only candidates left: others first, then those labels
        chosen = set(picked)
        rest = [pos for pos in range(len(answers)) if pos not in chosen]
        rest.sort(key=lambda pos: (labelled[pos], pos))
        picked += rest[:missing]
    picked.sort()
    before = Counter(a for a, is_label in zip(answers[:n], labelled[:n], strict=True) if is_label)
    after = Counter(answers[pos] for pos in picked if labelled[pos])
    warnings = []
    if m == 0:
        warnings.append(
            "--answer-mix: no row of the plain top N answers with one of the domain's labels: "
            "nothing to rebalance, the selection is the plain top N"
        )
    wanted = largest_remainder(
        {label: share for label, share in shares.items() if share > 0},
        m,
        lambda lb, k: positions[lb][k] if k < available[lb] else math.inf,
    )
    for label in sorted(wanted):
        if quota[label] < wanted[label]:
            warnings.append(
                f"--answer-mix: the label {label!r} should have {wanted[label]} of the {m} selected rows that give "
                "the domain's "
                f"labels, but only {available.get(label, 0)} pre-selected candidates answer with it; the other labels "
                f"filled its place (raise --m for more candidates)"
            )
    record = {
        "target_share": {label: round(float(shares[label]), 6) for label in sorted(shares)},
        "labelled_rows": m,
        "quota": quota,
        "candidates": {label: available.get(label, 0) for label in sorted(shares)},
        "before": {"labels": {label: before.get(label, 0) for label in sorted(shares)}, "other": n - m},
        "after": {
            "labels": {label: after.get(label, 0) for label in sorted(shares)},
            "other": len(picked) - sum(after.values()),
        },
        "rows_replaced": len(set(range(n)) - set(picked)),
        "warnings": warnings,
    }
    return np.asarray(picked, dtype=np.int64), record


def with_constraint(mix: dict[str, Any] | None, setting: str, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """run.json's ``answer_mix`` (the final selection's counts) with the constrained pick's record under
    ``constraint``, and its warnings first among the warnings."""
    if mix is None or record is None:
        return mix
    constraint = {"setting": setting, **{k: v for k, v in record.items() if k != "warnings"}}
    return {**mix, "constraint": constraint, "warnings": record["warnings"] + mix["warnings"]}


def pick_top_n(
    ranking: np.ndarray, n: int, pool: Any, shares: Mapping[str, Fraction] | None
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The selection from ``ranking`` (pool rows, best first): its first ``n`` when ``shares`` is None
    (``--answer-mix off``), else ``constrained_top_n`` over the rows' responses (``pool``: the Records)."""
    if shares is None:
        return ranking[:n], None
    answers = [c.response for c in pool.subset(ranking, "").conversations]
    positions, record = constrained_top_n(answers, n, shares)
    return ranking[positions], record
