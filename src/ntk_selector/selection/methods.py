"""The selection methods, one registry entry each: what a method needs (the warm-up, embeddings and
pre-selection; gradient features and their objective) and how it ranks the pool. ``select`` reads
these fields and never branches on a method's name, so a new baseline is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

RANKINGS = ("features", "votes", "draw")  # score features / take the top votes / draw at random
SCORE_RULES = ("ntk", "max-cosine")  # mean inner product (or cosine) with D / max cosine over D's rows


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    uses_model: bool = True  # warm-up, pool embeddings and reverse-kNN pre-selection
    ranking: str = "features"
    objective: str | None = None  # the features' objective; None: the --objective setting
    score_rule: str = "ntk"
    store_tag: str | None = None  # features store name (None: by objective), so methods can share a --work-dir
    score_name: str = "ntk_score"  # what the score column of scores.csv and selected.jsonl holds, by name

    def features_tag(self, objective: str) -> str:
        if self.store_tag:
            return self.store_tag
        return "features" if objective == "ntk" else f"features_{objective}"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ntk", "NTK-Selector: the projected NTK features of the M pre-selected rows, scored against D"),
        Method(
            "random",
            "N uniformly from the pool rows that have response tokens (no model run)",
            uses_model=False,
            ranking="draw",
            score_name="no_score",
        ),
        Method(
            "embedding",
            "the top N pre-selected rows by reverse-kNN votes",
            ranking="votes",
            score_name="embedding_votes",
        ),
        Method("preselect-random", "N uniformly from the M pre-selected rows", ranking="draw", score_name="no_score"),
        Method(
            "less",
            "LESS-style: cross-entropy gradient features, max cosine over D's rows",
            objective="ce",
            score_rule="max-cosine",
            store_tag="less_features",
            score_name="less_max_cosine",
        ),
    )
}


def method_help() -> str:
    """The --method help text, from the registry."""
    return "; ".join(f"{m.name}: {m.help}{' (the default)' if m.name == 'ntk' else ''}" for m in METHODS.values())
