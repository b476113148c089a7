"""Downstream benchmark: does fine-tuning on D ∪ S, with S picked by NTK-Selector, beat the alternatives?

Domain: drug-review sentiment from the packaged demo (``ntk_selector.io.demo_data.build_demo``): |D| = 100
balanced training reviews, the 379 test reviews as the test set, ``domain_valid`` (100 other
training reviews) for choosing settings. Pool: 5,000 rows of seven other tasks (movie sentiment,
plot-or-review, headline completion, debate party, dialogue, ShareGPT, code); nothing from drug
reviews. Model: the packaged SmolLM2-135M-Instruct. N = 5·|D|.

Methods: base (no fine-tune), domain only, random, embedding, preselect-random, less, ntk; three
seeds. ntk, embedding and less are deterministic given the warm-up, so they select once (selection
seed 0) and only the fine-tune seed varies; random draws with each seed; preselect-random draws N of
the seed-0 pre-selected M with each seed (seed 0 through ``select``, seeds 1-2 here, with the same
``numpy.random.default_rng(seed).choice``). The methods of one |D| share the warm-up, embeddings and
pre-selection through ``select --work-dir``. Curves: N ∈ {1, 5, 10}·|D| and |D| ∈ {50, 100, 400}
for ntk vs random.

Settings are fixed before any test number is seen: max length 256 (the longest domain row has 251
tokens, so every domain label survives truncation; test prompts are scored at length 320, never
truncated), 3 epochs (the paper), LoRA r 8 on q/k/v/o, batch 8, length-grouped batches; the
learning rate is picked on ``domain_valid`` by fine-tuning on D alone with each candidate (phase 0).

Every unit (a selection, a fine-tune, an evaluation) writes one JSON under
``benchmarks/results/downstream/`` (adapters and selections under the ignored
``benchmarks/cache/downstream/``); a rerun skips finished units, so ``python benchmarks/downstream.py``
resumes (a fine-tune in flight goes on from its last checkpoint). Work runs most informative first:
the settings sweep, seed 0 of all methods, seeds 1-2, the method variants, seed 0 of the curves
(N and |D| curves with the balanced D, then the |D| curve with D in the train split's label mix),
then seeds 1-2 of the same curves. ``--only-table``
rebuilds ``benchmarks/results/downstream.md`` and the plots from the cached JSONs;
``--update-benchmarks-md`` also writes the table into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load_ablations() -> Any:
    """benchmarks/downstream_ablations.py, found next to this file however this file was loaded."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("downstream_ablations", Path(__file__).with_name("downstream_ablations.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


ABLATIONS = _load_ablations()
METHODS = ("base", "domain", "random", "embedding", "preselect-random", "less", "ntk")
SELECTING = ("ntk", "random", "embedding", "preselect-random", "less")
DETERMINISTIC = ("ntk", "embedding", "less")  # one selection (seed 0), fine-tune seeds vary
SHARED_STAGES = ("warmup", "load model", "embed")  # computed once per |D| in the shared work dir
SECTION = "## Downstream accuracy (drug-review sentiment)"
DESIGN_NOTES = """Setup: the demo's drug-review sentiment domain (|D| = 100 balanced training reviews; the 379
test reviews; `domain_valid` = 100 other training reviews), a pool of 5,000 rows from seven other
tasks, SmolLM2-135M-Instruct, N = 5·|D|. Accuracy = the label (negative / neutral / positive)
with the highest summed log-likelihood after the prompt (`ntk-selector evaluate`). Settings were
fixed before any test accuracy was seen: max length 256 (every domain row, 251 tokens at most,
keeps its label; test prompts are scored untruncated at 320), 3 epochs (the paper), LoRA r 8 on
q/k/v/o, batch 8 with length-grouped batches, and the learning rate with the best domain-only
accuracy on `domain_valid`. ntk, embedding and less select once (selection seed 0: the warm-up
makes them deterministic) and fine-tune with seeds 0-2; random draws with each seed;
preselect-random draws N of the seed-0 pre-selected M with each seed. Base is deterministic (one
evaluation). Balanced accuracy (mean recall over the three labels) and macro-F1 come from the same
evaluations; they were added to the table after seed 0's confusion matrices showed that D (balanced)
and the test set (65% positive) have different label mixes. Cost (`--estimate`): about 53 h on an
idle 2-core CPU (settings 0.3 h, seed 0 of all methods 3.0 h, seeds 1-2 4.1 h, ablations 8.9 h,
curves 24 h, then 13 h for the |D| curve with a natural-mix D); with other jobs on the
machine units ran 4-6x slower."""


# ----------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Everything that defines the numbers (stored with each unit; a mismatch recomputes it)."""

    model: str | None = None
    pool_size: int = 5000
    domain_size: int = 100
    n_factor: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    max_length: int = 256
    eval_max_length: int = 320
    epochs: float = 3.0
    batch_size: int = 8
    rank: int = 8
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    proj_dim: int = 8192
    group_by_length: bool = True
    curve_n_factors: tuple[int, ...] = (1, 5, 10)
    curve_domain_sizes: tuple[int, ...] = (50, 100, 400)
    curve_methods: tuple[str, ...] = ("random", "ntk")
    data_dir: str | None = None  # prebuilt domain/domain_valid/test/pool files instead of the demo (smoke test)
    token_budget: int = 2048  # padded tokens per batch in select and evaluate (the package default; ~1 MB of backward activations per token)

    def model_flags(self) -> list[str]:
        return ["--model", self.model] if self.model else []


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Settings()
    ap.add_argument("--model", default=None, help="model folder (default: packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--pool-size", type=int, default=d.pool_size)
    ap.add_argument("--domain-size", type=int, default=d.domain_size)
    ap.add_argument("--n-factor", type=int, default=d.n_factor, help="N = factor x |D|")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    ap.add_argument("--max-length", type=int, default=d.max_length)
    ap.add_argument("--eval-max-length", type=int, default=d.eval_max_length)
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--rank", type=int, default=d.rank)
    ap.add_argument("--lrs", type=float, nargs="+", default=list(d.lrs), help="learning rates tried on domain_valid")
    ap.add_argument("--proj-dim", type=int, default=d.proj_dim)
    ap.add_argument("--no-group-by-length", action="store_true", help="plain shuffled batches in the fine-tune")
    ap.add_argument("--curve-n-factors", type=int, nargs="*", default=list(d.curve_n_factors))
    ap.add_argument("--curve-domain-sizes", type=int, nargs="*", default=list(d.curve_domain_sizes))
    ap.add_argument("--data-dir", default=None, help="use these domain/domain_valid/test/pool .jsonl instead of the demo")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="folder of result JSONs, table, plots")
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / "cache" / "downstream"), help="folder of big intermediates")
    ap.add_argument("--only-table", action="store_true", help="rebuild the table and plots from cached results")
    ap.add_argument("--update-benchmarks-md", default=None, metavar="FILE",
                    help="also replace the downstream section of this BENCHMARKS.md")
    ap.add_argument("--commit-every", type=int, default=0, help="git-commit the results every K finished units (0: never)")
    ap.add_argument("--phases", nargs="+",
                    default=["settings", "seed0", "seeds", "ablations", "curves0", "curves-natural0", "curves",
                             "curves-natural"],
                    help="phases to run, in order")
    ap.add_argument("--estimate", action="store_true", help="print the cost estimate and stop")
    ap.add_argument("--rate-train", type=float, default=180.0, help="tokens/s of LoRA forward+backward (for the estimate)")
    ap.add_argument("--rate-forward", type=float, default=575.0, help="tokens/s of a forward pass (for the estimate)")
    args = ap.parse_args(argv)
    s = Settings(model=args.model, pool_size=args.pool_size, domain_size=args.domain_size, n_factor=args.n_factor,
                 seeds=tuple(args.seeds), max_length=args.max_length, eval_max_length=args.eval_max_length,
                 epochs=args.epochs, batch_size=args.batch_size, rank=args.rank, lrs=tuple(args.lrs),
                 proj_dim=args.proj_dim, group_by_length=not args.no_group_by_length,
                 curve_n_factors=tuple(args.curve_n_factors), curve_domain_sizes=tuple(args.curve_domain_sizes),
                 data_dir=args.data_dir)
    return s, args


# ----------------------------------------------------------------------------- small helpers


def log(text: str) -> None:
    print(f"[{dt.datetime.now():%Y-%m-%d %H:%M:%S}] {text}", flush=True)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def lr_tag(lr: float) -> str:
    return f"{lr:g}"


def task_counts(rows: list[dict[str, Any]], field: str = "task") -> dict[str, int]:
    """Rows per value of ``field``, most frequent first."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get(field, "(none)"))] = counts.get(str(r.get(field, "(none)")), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True)
class Run:
    """One fine-tune-and-evaluate cell: domain size, N, method, selection seed, fine-tune seed, learning rate,
    and how D was drawn (``balanced`` over labels, the main table; ``natural``: the train split's mix)."""

    d: int
    n: int
    method: str
    sel: int
    ft: int
    lr: float
    prior: str = "balanced"

    @property
    def dtag(self) -> str:
        return d_tag(self.d, self.prior)

    @property
    def sel_key(self) -> str:
        return selection_key(self.d, self.n, self.method, self.sel, self.prior)

    @property
    def key(self) -> str:
        if self.method == "base":
            return f"{self.dtag}_base"
        return f"{self.dtag}_n0_domain_ft{self.ft}_lr{lr_tag(self.lr)}" if self.method == "domain" else \
            f"{self.sel_key}_ft{self.ft}_lr{lr_tag(self.lr)}"


def d_tag(d: int, prior: str = "balanced") -> str:
    """``d100`` for the main (balanced) D, ``d100natural`` for a D with the natural label mix."""
    return f"d{d}" if prior == "balanced" else f"d{d}{prior}"


def selection_key(d: int, n: int, method: str, sel: int, prior: str = "balanced") -> str:
    """Name of a selection's result JSON and cache folder."""
    return f"{d_tag(d, prior)}_n{n}_{method}_sel{sel}"


def selection_seed(method: str, seed: int) -> int:
    return 0 if method in DETERMINISTIC else seed


# ----------------------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    s: Settings
    results: Path
    cache: Path
    commit_every: int = 0
    finished: int = 0
    _eval_session: Any = None
    _data: dict[tuple[int, str], dict[str, Path]] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.results / "downstream"

    # -- units -----------------------------------------------------------------

    def unit(self, path: Path, definition: dict[str, Any], compute: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
        """The cached JSON at ``path`` when its definition matches; otherwise compute, store, count."""
        definition = json.loads(json.dumps(definition, default=str))
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("definition") == definition:
                return old
            log(f"{what}: cached result has another definition, recomputing")
        log(f"{what} ...")
        start = time.perf_counter()
        result = compute()
        result.update({"definition": definition, "unit_seconds": round(time.perf_counter() - start, 1),
                       "finished": dt.datetime.now().isoformat(timespec="seconds")})
        write_json(path, result)
        log(f"{what}: done in {result['unit_seconds']:.0f} s" +
            (f", accuracy {result['accuracy']:.4f}" if "accuracy" in result else ""))
        self.finished += 1
        if self.commit_every and self.finished % self.commit_every == 0:
            self.publish()
        return result

    def data(self, d: int, prior: str = "balanced") -> dict[str, Path]:
        """domain / domain_valid / test / pool files for a domain size (built once, deterministic).

        ``prior``: ``balanced`` (D balanced over labels) or ``natural`` (a uniform draw); with
        ``--data-dir`` both are the first d rows of its domain file."""
        if (d, prior) in self._data:
            return self._data[(d, prior)]
        folder = self.cache / "data" / d_tag(d, prior)
        names = ("domain", "domain_valid", "test", "pool")
        paths = {k: folder / f"{k}.jsonl" for k in names}
        if not all(p.exists() for p in paths.values()):
            if self.s.data_dir:
                src = Path(self.s.data_dir)
                domain = read_jsonl(src / "domain.jsonl")
                if len(domain) < d:
                    raise SystemExit(f"{src / 'domain.jsonl'} has {len(domain)} rows, fewer than |D| = {d}")
                write_jsonl(paths["domain"], domain[:d])
                for k in names[1:]:
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / f"{k}.jsonl", paths[k])
            else:
                from ntk_selector.io.demo_data import build_demo

                built = build_demo(folder, n_domain=d, pool_size=self.s.pool_size, seed=0,
                                   balanced_domain=prior == "balanced")
                assert {k: getattr(built, k) for k in names} == paths
        self._data[(d, prior)] = paths
        return paths

    def common_flags(self) -> list[str]:
        return [*self.s.model_flags(), "--max-length", str(self.s.max_length), "--quiet", "--debug",
                "--token-budget", str(self.s.token_budget)]

    def selection(self, d: int, n: int, method: str, sel: int, prior: str = "balanced") -> dict[str, Any]:
        key = selection_key(d, n, method, sel, prior)
        definition = {"kind": "select", "d": d, "n": n, "method": method, "sel_seed": sel, "model": self.s.model,
                      "max_length": self.s.max_length, "proj_dim": self.s.proj_dim, "pool_size": self.s.pool_size,
                      "data_dir": self.s.data_dir}
        if prior != "balanced":  # (the main table's definitions stay as they were cached)
            definition["prior"] = prior
        return self.unit(self.out / "select" / f"{key}.json", definition,
                         lambda: self._select(d, n, method, sel, prior), f"select {key}")

    def _select(self, d: int, n: int, method: str, sel: int, prior: str = "balanced") -> dict[str, Any]:
        out = self.cache / "select" / selection_key(d, n, method, sel, prior)
        if method == "preselect-random" and sel != 0:
            if prior != "balanced":
                raise ValueError("preselect-random draws with seeds > 0 exist for the balanced D only")
            return self._draw_from_preselection(d, n, sel, out)
        if method.startswith(ABLATIONS.PREFIX):
            return ABLATIONS.select_variant(self, d, n, method, out)
        work = self.cache / "work" / d_tag(d, prior)
        seed_flags = ["--seed", str(sel)] if method == "random" else ["--seed", "0", "--work-dir", str(work)]
        return self.run_select(d, n, method, out, seed_flags, prior)

    def run_select(self, d: int, n: int, method: str, out: Path, flags: list[str],
                   prior: str = "balanced") -> dict[str, Any]:
        """``ntk-selector select`` on the |D| = d files with these extra flags; the unit's summary."""
        from ntk_selector.cli.commands import main as cli

        data = self.data(d, prior)
        args = ["select", "--domain", str(data["domain"]), "--pool", str(data["pool"]), "--out", str(out),
                "--n", str(n), "--method", method, "--proj-dim", str(self.s.proj_dim), "--rank", str(self.s.rank),
                *flags, *self.common_flags()]
        rc = cli(args)
        if rc != 0:
            raise RuntimeError(f"select failed (exit {rc}): {' '.join(args)}")
        run = json.loads((out / "run.json").read_text())
        selected = read_jsonl(out / "selected.jsonl")
        return {"selected_file": str(out / "selected.jsonl"), "pool_index": [r["pool_index"] for r in selected],
                "selected_per_task": run["selected_per_task"], "stage_seconds": run["seconds"],
                "warmup": run.get("warmup")}

    def _draw_from_preselection(self, d: int, n: int, sel: int, out: Path) -> dict[str, Any]:
        """preselect-random with another seed: N uniformly from the seed-0 pre-selected set (no model work)."""
        from ntk_selector.selection.report import read_scores

        base = self.selection(d, n, "preselect-random", 0)
        scores = read_scores(Path(base["selected_file"]).with_name("scores.csv"))
        pre = scores["pool_index"][scores["preselected"]]
        chosen = np.random.default_rng(sel).choice(pre, size=min(n, len(pre)), replace=False)
        return {**self.write_selection(d, chosen, out), "stage_seconds": {"draw": 0.0}, "drawn_from": base["selected_file"]}

    def write_selection(self, d: int, chosen: np.ndarray, out: Path) -> dict[str, Any]:
        """``out/selected.jsonl`` with these pool rows (of the balanced |D| = d pool), and the unit's summary of it."""
        pool = read_jsonl(self.data(d)["pool"])
        rows = [{**pool[int(i)], "pool_index": int(i)} for i in chosen]
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "selected.jsonl", rows)
        return {"selected_file": str(out / "selected.jsonl"), "pool_index": [int(i) for i in chosen],
                "selected_per_task": task_counts(rows)}

    def train(self, run: Run) -> dict[str, Any]:
        files = [self.data(run.d, run.prior)["domain"]]
        if run.method not in ("base", "domain"):
            files.append(Path(self.selection(run.d, run.n, run.method, run.sel, run.prior)["selected_file"]))
        definition = {"kind": "train", "run": run.key, "files": [str(f) for f in files], "model": self.s.model,
                      "max_length": self.s.max_length, "epochs": self.s.epochs, "batch_size": self.s.batch_size,
                      "rank": self.s.rank, "lr": run.lr, "seed": run.ft, "group_by_length": self.s.group_by_length}
        return self.unit(self.out / "train" / f"{run.key}.json", definition, lambda: self._train(run, files),
                         f"train {run.key}")

    def _train(self, run: Run, files: list[Path]) -> dict[str, Any]:
        from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig, TrainConfig
        from ntk_selector.training.finetune import finetune

        adapter = self.cache / "adapters" / run.key
        state = finetune(files, adapter, ModelConfig(model=self.s.model),
                         DataConfig(max_length=self.s.max_length, token_budget=self.s.token_budget),
                         LoraSettings(rank=self.s.rank, lora_alpha=2.0 * self.s.rank),
                         RunConfig(seed=run.ft, quiet=True, overwrite=True),
                         TrainConfig(epochs=self.s.epochs, lr=run.lr, batch_size=self.s.batch_size),
                         group_by_length=self.s.group_by_length)
        losses = state["losses"]
        return {"adapter": str(adapter), "examples": state["examples"], "steps": state["steps"],
                "seconds": state["seconds"], "loss_first": state["loss_first"], "loss_last": state["loss_last"],
                "loss_curve": [round(float(np.mean(losses[i : i + 10])), 4) for i in range(0, len(losses), 10)]}

    def evaluate(self, run: Run, split: str) -> dict[str, Any]:
        adapter = None if run.method == "base" else self.train(run)["adapter"]
        path = self.data(run.d, run.prior)["test" if split == "test" else "domain_valid"]
        definition = {"kind": "evaluate", "run": run.key, "split": split, "data": str(path), "model": self.s.model,
                      "adapter": adapter, "max_length": self.s.eval_max_length,
                      "train_finished": None if adapter is None else
                      json.loads((self.out / "train" / f"{run.key}.json").read_text())["finished"]}
        return self.unit(self.out / "eval" / f"{run.key}__{split}.json", definition,
                         lambda: self._evaluate(run, adapter, path, split), f"evaluate {run.key} on {split}")

    def _evaluate(self, run: Run, adapter: str | None, path: Path, split: str) -> dict[str, Any]:
        from ntk_selector.analysis.evaluate import run_evaluate
        from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig
        from ntk_selector.model.session import Session

        model_cfg = ModelConfig(model=self.s.model, adapter=adapter)
        if self._eval_session is None:
            self._eval_session = Session(model_cfg, LoraSettings(), RunConfig(quiet=True))
        summary = run_evaluate(path, self.cache / "eval" / f"{run.key}__{split}", model_cfg,
                               DataConfig(max_length=self.s.eval_max_length, token_budget=self.s.token_budget),
                               RunConfig(quiet=True), session=self._eval_session)
        keep = ("accuracy", "n", "correct", "labels", "per_class", "confusion", "truncated_prompts", "seconds", "mode")
        return {k: summary[k] for k in keep}

    def cell(self, run: Run, splits: tuple[str, ...] = ("test", "valid")) -> None:
        if run.method.startswith(ABLATIONS.PREFIX):
            picked = set(self.selection(run.d, run.n, run.method, run.sel)["pool_index"])
            if picked == set(self.selection(run.d, run.n, "ntk", 0)["pool_index"]):
                log(f"{run.key}: the same rows as ntk, nothing to fine-tune")  # the table says so
                return
        for split in splits:
            self.evaluate(run, split)

    # -- phases ----------------------------------------------------------------

    def chosen_lr(self) -> float:
        """The learning rate with the best domain-only accuracy on domain_valid (ties: the smaller)."""
        scores = []
        for lr in self.s.lrs:
            r = self.evaluate(Run(self.s.domain_size, 0, "domain", 0, 0, lr), "valid")
            scores.append((-r["accuracy"], lr))
        return min(scores)[1]

    def main_runs(self, seeds: tuple[int, ...], lr: float) -> Iterator[Run]:
        d, n = self.s.domain_size, self.s.n_factor * self.s.domain_size
        order = ("base", "domain", "ntk", "random", "embedding", "preselect-random", "less")
        for seed in seeds:
            for m in order:
                if m == "base" and seed != seeds[0]:
                    continue
                yield Run(d, n if m in SELECTING else 0, m, selection_seed(m, seed), seed, lr)

    def curve_runs(self, seeds: tuple[int, ...], lr: float) -> Iterator[Run]:
        d0 = self.s.domain_size
        for seed in seeds:
            for f in self.s.curve_n_factors:
                for m in self.s.curve_methods:
                    yield Run(d0, f * d0, m, selection_seed(m, seed), seed, lr)
            for d in self.s.curve_domain_sizes:
                yield from self.domain_size_runs(d, seed, lr)
                if seed == seeds[0]:
                    yield Run(d, 0, "base", 0, 0, lr)

    def domain_size_runs(self, d: int, seed: int, lr: float, prior: str = "balanced") -> Iterator[Run]:
        """One point of a |D| curve: domain only and the curve's methods with N = n_factor·|D|."""
        for m in ("domain",) + tuple(self.s.curve_methods):
            yield Run(d, self.s.n_factor * d if m in SELECTING else 0, m, selection_seed(m, seed), seed, lr, prior)

    def natural_curve_runs(self, seeds: tuple[int, ...], lr: float) -> Iterator[Run]:
        """The |D| curve again with D drawn in the train split's label mix, which, unlike a balanced D, every
        |D| can have (at 400 the train split runs out of neutral and negative rows). |D| = 100 is the
        natural-prior ablation's runs."""
        for seed in seeds:
            for d in self.s.curve_domain_sizes:
                if d != self.s.domain_size:
                    yield from self.domain_size_runs(d, seed, lr, "natural")

    def ablation_runs(self, lr: float) -> Iterator[Run]:
        d, n = self.s.domain_size, self.s.n_factor * self.s.domain_size
        for item in ABLATIONS.PLAN:
            if item == ABLATIONS.NATURAL:  # the same comparison with a D of the natural label mix, every seed
                for seed in self.s.seeds:
                    for m in ABLATIONS.NATURAL_METHODS:
                        if m != "base" or seed == self.s.seeds[0]:
                            yield Run(d, n if m not in ("base", "domain") else 0, m, selection_seed(m, seed), seed, lr,
                                      "natural")
            else:
                yield Run(d, n, ABLATIONS.PREFIX + item, 0, 0, lr)

    def run(self, phases: list[str]) -> None:
        lr = self.chosen_lr()  # phase "settings": always first, every later run uses its choice
        log(f"learning rate chosen on domain_valid: {lr:g}")
        seeds = self.s.seeds
        plan = {"seed0": list(self.main_runs(seeds[:1], lr)), "seeds": list(self.main_runs(seeds[1:], lr)),
                "ablations": list(self.ablation_runs(lr)),
                "curves0": list(self.curve_runs(seeds[:1], lr)), "curves": list(self.curve_runs(seeds[1:], lr)),
                "curves-natural0": list(self.natural_curve_runs(seeds[:1], lr)),
                "curves-natural": list(self.natural_curve_runs(seeds[1:], lr))}
        for phase in phases:
            for run in plan.get(phase, []):
                self.cell(run, ("valid", "test") if phase == "ablations" else
                          ("test", "valid") if run.d == self.s.domain_size else ("test",))
            self.publish(commit=bool(self.commit_every))
        log("all requested phases done")

    # -- output ----------------------------------------------------------------

    def publish(self, commit: bool = True) -> None:
        """Rebuild the table and plots; commit them with the result JSONs when asked."""
        try:
            text = build_table(self.s, self.results, self.cache)
        except Exception as e:  # a table bug must never stop the run
            log(f"table failed: {type(e).__name__}: {e}")
            return
        write_text(self.results / "downstream.md", text)
        if commit and self.commit_every:
            git_commit([self.out, self.results / "downstream.md", *sorted(self.results.glob("downstream_*.png"))],
                       f"downstream benchmark: results so far ({count_units(self.out)} units)")


def count_units(out: Path) -> int:
    return sum(1 for _ in out.rglob("*.json"))


def git_commit(paths: list[Path], message: str) -> None:
    """Commit only these paths (retrying while another commit holds the index lock)."""
    rel = [str(p.relative_to(ROOT)) for p in paths if p.exists()]
    for attempt in range(10):
        add = subprocess.run(["git", "add", "--", *rel], cwd=ROOT, capture_output=True, text=True)
        if add.returncode == 0:
            staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *rel], cwd=ROOT)
            if staged.returncode == 0:
                return  # nothing new since the last commit
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, capture_output=True, text=True)
            if done.returncode == 0:
                log(f"committed: {message}")
                return
            err = done.stderr or done.stdout
        else:
            err = add.stderr
        if "index.lock" not in err:
            log(f"git commit skipped: {err.strip().splitlines()[-1] if err.strip() else 'unknown error'}")
            return
        time.sleep(5 + 5 * attempt)
    log("git commit skipped: index stayed locked")


# ----------------------------------------------------------------------------- table and plots


def load_units(results: Path, kind: str) -> list[dict[str, Any]]:
    folder = results / "downstream" / kind
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    m = float(np.mean(values))
    return f"{100 * m:.1f} ± {100 * float(np.std(values, ddof=1)):.1f}" if len(values) > 1 else f"{100 * m:.1f}"


def accuracies(results: Path, metric: str = "accuracy") -> dict[tuple[str, str], list[tuple[str, float]]]:
    """(run-without-seed, split) -> [(run key, metric)], grouping seeds.

    ``metric``: accuracy, balanced_accuracy or macro_f1 (the latter two recomputed from the per-class
    counts, so results cached before they were written still have them)."""
    from ntk_selector.analysis.evaluate import class_balanced_scores

    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for u in load_units(results, "eval"):
        key = u["definition"]["run"]
        split = u["definition"]["split"]
        group = _strip_seeds(key)
        value = u["accuracy"] if metric == "accuracy" else class_balanced_scores(u["per_class"])[metric]
        groups.setdefault((group, split), []).append((key, value))
    return groups


def mean_counts(counts: list[dict[str, int]]) -> dict[str, float]:
    """Mean count per key over several seeds' counts (a key missing from one counts 0), keys in first-seen order."""
    keys = list(dict.fromkeys(k for c in counts for k in c))
    return {k: float(np.mean([c.get(k, 0) for c in counts])) for k in keys}


def predicted_mix(results: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(run-without-seed, split) -> mean number of predictions per label over the seeds."""
    per: dict[tuple[str, str], list[dict[str, int]]] = {}
    for u in load_units(results, "eval"):
        g = (_strip_seeds(u["definition"]["run"]), u["definition"]["split"])
        per.setdefault(g, []).append({c: v["predicted"] for c, v in u["per_class"].items()})
    return {g: mean_counts(lst) for g, lst in per.items()}


def label_mix(results: Path, split: str) -> dict[str, int]:
    """Rows per true label of a split, from any cached evaluation of it."""
    for u in load_units(results, "eval"):
        if u["definition"]["split"] == split:
            return {c: v["n"] for c, v in u["per_class"].items()}
    return {}


def _strip_seeds(key: str) -> str:
    parts = [p for p in key.split("_") if not (p.startswith("sel") and p[3:].isdigit()) and not (p.startswith("ft") and p[2:].isdigit())]
    return "_".join(parts)


def group_key(d: int, n: int, method: str, lr: float, prior: str = "balanced") -> str:
    """The run key of a method's fine-tune seeds, seeds stripped: the rows of one table cell."""
    dtag = d_tag(d, prior)
    if method == "base":
        return f"{dtag}_base"
    if method == "domain":
        return f"{dtag}_n0_domain_lr{lr_tag(lr)}"
    return f"{dtag}_n{n}_{method}_lr{lr_tag(lr)}"


def selection_seconds(results: Path, d: int, n: int) -> dict[str, float]:
    """Seconds each method's selection takes on its own: shared stages counted at the time they took."""
    main = [u for u in load_units(results, "select") if u["definition"].get("prior", "balanced") == "balanced"
            and not u["definition"]["method"].startswith(ABLATIONS.PREFIX)]
    units = [u for u in main if u["definition"]["d"] == d and u["definition"]["n"] == n and u["definition"]["sel_seed"] == 0]
    shared: dict[str, float] = {}
    for u in main:
        if u["definition"]["d"] == d:
            for st in SHARED_STAGES:
                shared[st] = max(shared.get(st, 0.0), float(u["stage_seconds"].get(st, 0.0)))
    out = {}
    for u in units:
        secs = dict(u["stage_seconds"])
        if u["definition"]["method"] != "random":
            secs.update({st: shared.get(st, 0.0) for st in SHARED_STAGES})
        out[u["definition"]["method"]] = float(sum(secs.values()))
    return out


def picked_tasks(results: Path, d: int, n: int) -> dict[str, dict[str, float]]:
    """Mean number of selected rows per pool task, per method (over the selection seeds)."""
    per: dict[str, list[dict[str, int]]] = {}
    for u in load_units(results, "select"):
        if u["definition"]["d"] == d and u["definition"]["n"] == n and u["definition"].get("prior", "balanced") == "balanced":
            per.setdefault(u["definition"]["method"], []).append(u["selected_per_task"])
    return {m: mean_counts(lst) for m, lst in per.items()}


def picked_answers(results: Path, cache: Path, d: int, n: int) -> dict[str, dict[str, float]]:
    """Mean number of selected rows giving each of D's labels (and other answers), per method."""
    from ntk_selector.selection.answer_mix import answer_mix

    data = cache / "data" / f"d{d}"
    if not (data / "pool.jsonl").exists():
        return {}
    domain = [r["response"] for r in read_jsonl(data / "domain.jsonl")]
    pool = [r["response"] for r in read_jsonl(data / "pool.jsonl")]
    per: dict[str, list[dict[str, int]]] = {}
    for u in load_units(results, "select"):
        if u["definition"]["d"] == d and u["definition"]["n"] == n and u["definition"].get("prior", "balanced") == "balanced":
            mix = answer_mix(domain, [pool[i] for i in u["pool_index"]])
            if mix is not None:
                counts = {label: v["selected"] for label, v in mix["labels"].items()}
                per.setdefault(u["definition"]["method"], []).append({**counts, "other answers": mix["selected_other"]})
    return {m: mean_counts(lst) for m, lst in per.items()}


def chosen_lr_from(results: Path, s: Settings) -> tuple[float | None, dict[float, float]]:
    valid = {}
    for u in load_units(results, "eval"):
        k = u["definition"]["run"]
        if u["definition"]["split"] == "valid" and k.startswith(f"d{s.domain_size}_n0_domain_ft0_lr"):
            valid[float(k.rsplit("_lr", 1)[1])] = u["accuracy"]
    if not valid or any(lr not in valid for lr in s.lrs):
        return None, valid
    return min((-valid[lr], lr) for lr in s.lrs)[1], valid


def build_table(s: Settings, results: Path, cache: Path = ROOT / "benchmarks" / "cache" / "downstream") -> str:
    """The markdown report of everything cached so far (plots written next to it)."""
    lr, valid_lrs = chosen_lr_from(results, s)
    acc = accuracies(results)
    d, n = s.domain_size, s.n_factor * s.domain_size
    lines = [f"Model {s.model or 'SmolLM2-135M-Instruct (packaged)'}; |D| = {d}, N = {n}, pool {s.pool_size} rows; "
             f"max length {s.max_length}, {s.epochs:g} epochs, LoRA r {s.rank}, batch {s.batch_size}"
             f"{', length-grouped batches' if s.group_by_length else ''}.", ""]
    lines += ["Learning rate picked on domain_valid (domain-only fine-tune, seed 0): " +
              (", ".join(f"{k:g} → {100 * v:.1f}%" for k, v in sorted(valid_lrs.items())) or "pending") +
              (f"; chosen **{lr:g}**." if lr is not None else "."), ""]
    if lr is None:
        return "\n".join(lines + ["(no results yet)", ""])
    secs = selection_seconds(results, d, n)
    train_secs: dict[str, list[float]] = {}
    for u in load_units(results, "train"):
        g = _strip_seeds(u["definition"]["run"])
        train_secs.setdefault(g, []).append(u["seconds"])
    bal, f1 = accuracies(results, "balanced_accuracy"), accuracies(results, "macro_f1")
    predicted = predicted_mix(results)
    lines += ["| method | test accuracy % (mean ± std) | seeds | test balanced accuracy % | test macro-F1 % | "
              "test answers per label (mean) | valid accuracy % | selection s | fine-tune s |",
              "|---|---|---|---|---|---|---|---|---|"]
    plot_rows = []
    for m in METHODS:
        g = group_key(d, n, m, lr)
        test = [a for _, a in acc.get((g, "test"), [])]
        val = [a for _, a in acc.get((g, "valid"), [])]
        test_bal = [a for _, a in bal.get((g, "test"), [])]
        test_f1 = [a for _, a in f1.get((g, "test"), [])]
        ft = train_secs.get(g, [])
        sel_s = f"{secs[m]:.0f}" if m in secs else "–"
        ft_s = f"{np.mean(ft):.0f}" if ft else "–"
        answers = "/".join(f"{v:.0f}" for v in predicted[(g, "test")].values()) if (g, "test") in predicted else "–"
        lines.append(f"| {m} | {mean_std(test)} | {len(test)} | {mean_std(test_bal)} | {mean_std(test_f1)} | "
                     f"{answers} | {mean_std(val)} | {sel_s} | {ft_s} |")
        if test:
            plot_rows.append((m, test))
    mixes = {split: label_mix(results, split) for split in ("test", "valid")}
    if mixes["test"]:
        top = max(mixes["test"].values()) / sum(mixes["test"].values())
        lines += ["", "Label mix (true rows per label): D " + _mix_text(label_mix_of_domain(s.domain_size, cache)) +
                  "; domain_valid " + _mix_text(mixes["valid"]) + "; test " + _mix_text(mixes["test"]) +
                  f". Always answering the test's majority label scores {100 * top:.1f}% accuracy, "
                  f"{100 / len(mixes['test']):.1f}% balanced accuracy. Answers per label are in the order "
                  + "/".join(mixes["test"]) + "."]
    lines += ["", "Selection seconds: the method run alone (stages shared through --work-dir counted once, at the "
              "time they took); ntk, embedding and less select once, random and preselect-random per seed.", ""]
    picks = picked_tasks(results, d, n)
    if picks:
        tasks = sorted({t for p in picks.values() for t in p})
        lines += ["Pool tasks picked (rows of N, mean over selection seeds):", "",
                  "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for m in SELECTING:
            if m in picks:
                lines.append(f"| {m} | " + " | ".join(f"{picks[m].get(t, 0):.0f}" for t in tasks) + " |")
        lines.append("")
    answers = picked_answers(results, cache, d, n)
    if answers:
        cols = list(next(iter(answers.values())))
        lines += ["Answers of the selected rows (rows of N giving each of D's labels, as `select` reports them in "
                  "`answer_mix`; mean over selection seeds):", "",
                  "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {m} | " + " | ".join(f"{answers[m][c]:.0f}" for c in cols) + " |" for m in SELECTING if m in answers]
        lines.append("")
    lines += ABLATIONS.ablation_table(results, d, n, lambda m, prior="balanced": group_key(d, n, m, lr, prior),
                                       lambda m, prior="balanced": selection_key(d, n, m, 0, prior),
                                       {"accuracy": acc, "balanced_accuracy": bal}, mean_std)
    curve_n = _curve(acc, [(d, f * d) for f in s.curve_n_factors], s.curve_methods, lr)
    d_points, d_methods = [(dd, s.n_factor * dd) for dd in s.curve_domain_sizes], ("domain",) + s.curve_methods
    curve_d = _curve(acc, d_points, d_methods, lr)
    if any(curve_n.values()):
        lines += _curve_table("N (|D| = %d)" % d, [f * d for f in s.curve_n_factors], curve_n)
    if any(curve_d.values()):
        lines += _curve_table("|D| (N = %d·|D|)" % s.n_factor, list(s.curve_domain_sizes), curve_d)
        # D is drawn balanced only as far as the train split's rarest label allows: say what each size got
        d_mixes = {dd: label_mix_of_domain(dd, cache) for dd in s.curve_domain_sizes}
        short = [dd for dd, m in d_mixes.items() if m and min(m.values()) < dd // len(m)]
        lines += ["D's labels at each |D|: " + _mixes_text(d_mixes) + "."
                  + (f" At |D| = {', '.join(map(str, short))} the train split has too few rows of some label to balance D: "
                     "D holds all of them, so the label mix changes with |D| along this curve, and that D's "
                     "domain_valid has no row of those labels (the test set is the same at every |D|)." if short else ""), ""]
    curve_d_natural = _curve(acc, d_points, d_methods, lr, "natural")
    new_sizes = [i for i, dd in enumerate(s.curve_domain_sizes) if dd != d]  # |D| = d is the natural-prior ablation
    if any(vals[i] for vals in curve_d_natural.values() for i in new_sizes):
        lines += _curve_table("|D| with D in the train split's label mix (N = %d·|D|)" % s.n_factor,
                              list(s.curve_domain_sizes), curve_d_natural)
        d_mixes = {dd: label_mix_of_domain(dd, cache, "natural") for dd in s.curve_domain_sizes}
        lines += ["D's labels at each |D| (a uniform draw from the train split, which every |D| can have): "
                  + _mixes_text(d_mixes)
                  + "." + (f" |D| = {d} is the natural-prior ablation's runs." if d in s.curve_domain_sizes else ""), ""]
    _plots(results, plot_rows, s, curve_n, curve_d, curve_d_natural)
    lines += ["Plots: `benchmarks/results/downstream_accuracy.png`, `downstream_curve_n.png`, "
              "`downstream_curve_d.png`.", ""]
    return "\n".join(lines)


def label_mix_of_domain(d: int, cache: Path, prior: str = "balanced") -> dict[str, int]:
    """Rows per label of the domain file D of size d drawn with ``prior`` (from the benchmark's cache folder)."""
    path = cache / "data" / d_tag(d, prior) / "domain.jsonl"
    return dict(sorted(task_counts(read_jsonl(path), "response").items())) if path.exists() else {}


def _mix_text(mix: dict[str, int]) -> str:
    return "/".join(f"{v}" for v in mix.values()) + " (" + "/".join(mix) + ")" if mix else "(unknown)"


def _mixes_text(mixes: dict[int, dict[str, int]]) -> str:
    """Each |D|'s label mix, for the curve tables."""
    return "; ".join(f"{dd}: {_mix_text(m)}" for dd, m in mixes.items() if m)


def _curve(acc: dict, points: list[tuple[int, int]], methods: tuple[str, ...], lr: float,
           prior: str = "balanced") -> dict[str, list[list[float]]]:
    return {m: [[a for _, a in acc.get((group_key(dd, nn, m, lr, prior), "test"), [])] for dd, nn in points]
            for m in methods}


def _curve_table(label: str, xs: list[int], curve: dict[str, list[list[float]]]) -> list[str]:
    lines = [f"Test accuracy % over {label}:", "", "| method | " + " | ".join(str(x) for x in xs) + " |",
             "|---|" + "---|" * len(xs)]
    for m, vals in curve.items():
        lines.append(f"| {m} | " + " | ".join(f"{mean_std(v)} ({len(v)})" for v in vals) + " |")
    return lines + [""]


def _plots(results: Path, rows: list[tuple[str, list[float]]], s: Settings, curve_n: dict, curve_d: dict,
           curve_d_natural: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = [m for m, _ in rows]
        means = [100 * np.mean(v) for _, v in rows]
        errs = [100 * np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in rows]
        ax.bar(names, means, yerr=errs, capsize=4, color=["#999" if m in ("base", "domain") else "#4a7" for m in names])
        for i, (_, v) in enumerate(rows):
            ax.scatter([i] * len(v), [100 * x for x in v], color="k", s=8, zorder=3)
        ax.set_ylabel("test accuracy %")
        ax.set_ylim(max(0, min(means) - 15), min(100, max(means) + 10))
        ax.set_title("Drug-review sentiment after LoRA fine-tuning on D ∪ S")
        plt.setp(ax.get_xticklabels(), rotation=20)
        fig.tight_layout()
        fig.savefig(results / "downstream_accuracy.png", dpi=110)
        plt.close(fig)
    natural = {f"{m} (natural D)": v for m, v in curve_d_natural.items()}
    for name, curve, xs, xlabel in (("n", curve_n, [f * s.domain_size for f in s.curve_n_factors], "N (selected rows)"),
                                    ("d", {**curve_d, **natural}, list(s.curve_domain_sizes), "|D| (N = 5·|D|)")):
        if not any(any(v) for v in curve.values()):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m, vals in curve.items():
            pts = [(x, 100 * np.mean(v), 100 * np.std(v, ddof=1) if len(v) > 1 else 0.0) for x, v in zip(xs, vals) if v]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                            label=m, linestyle="--" if m in natural else "-")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy %")
        ax.legend()
        fig.tight_layout()
        fig.savefig(results / f"downstream_curve_{name}.png", dpi=110)
        plt.close(fig)


def run_flags(argv: list[str]) -> list[str]:
    """The flags that define the run (not the ones that only rebuild or publish the table)."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
        elif a in ("--only-table", "--estimate"):
            continue
        elif a in ("--update-benchmarks-md", "--commit-every"):
            skip = 1
        else:
            out.append(a)
    return out


def update_benchmarks_md(path: Path, table: str, command: str, results: Path) -> None:
    """Replace the downstream section of BENCHMARKS.md (up to the next ## heading)."""
    text = path.read_text()
    n_eval = len(load_units(results, "eval"))
    body = (f"{SECTION}\n\nCommand: `{command}` (resumable: a rerun skips finished units, and "
            f"`benchmarks/run_downstream.sh` reruns it in the background after a crash; `--only-table --update-benchmarks-md BENCHMARKS.md` rebuilds this section from the cached results).\n"
            f"Machine: 2-core CPU ({platform.machine()}), no GPU, at times shared with other jobs while it ran. "
            f"Date: {dt.date.today():%Y-%m-%d}; {n_eval} evaluations finished so far.\n\n"
            f"{DESIGN_NOTES}\n\n{table}\n")
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + body + (rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + body
    write_text(path, text)


# ----------------------------------------------------------------------------- cost estimate


def estimate(s: Settings, bench: Bench, rate_train: float, rate_fwd: float) -> dict[str, float]:
    """Hours per phase from token counts and throughputs (padding: length-sorted ~1.05, shuffled ~1.9)."""
    from ntk_selector.config import DataConfig, ModelConfig
    from ntk_selector.io.tokens import encode, to_conversation
    from ntk_selector.model.loading import load_tokenizer, model_path

    tok = load_tokenizer(model_path(ModelConfig(model=s.model), quiet=True))
    cfg = DataConfig(max_length=s.max_length)

    def lengths(path: Path) -> np.ndarray:
        return np.array([e.length for e in encode([to_conversation(r, cfg) for r in read_jsonl(path)], tok, cfg)])

    base = bench.data(s.domain_size)
    pool = lengths(base["pool"])
    dom_len = float(lengths(base["domain"]).mean())
    test_tokens = lengths(base["test"]).sum()
    valid_tokens = lengths(base["domain_valid"]).sum()
    pad_train = 1.05 if s.group_by_length else 1.9
    epochs = s.epochs

    def sel_cost(d: int, n: int, methods: tuple[str, ...], new_d: bool) -> float:
        dom = d * dom_len
        m = min(4 * n, len(pool))
        t = 0.0
        if new_d:
            t += dom * 1.3 / rate_train + (pool.sum() + dom) / rate_fwd  # warm-up (1 epoch) + embeddings
        t += sum((m * pool.mean() + dom) / rate_train for meth in methods if meth in ("ntk", "less"))
        return t

    def ft_cost(d: int, n: int) -> float:
        return epochs * pad_train * (d * dom_len + n * pool.mean()) / rate_train

    ev = lambda split: (test_tokens if split == "test" else valid_tokens) / rate_fwd
    d, n = s.domain_size, s.n_factor * s.domain_size
    phases = {}
    phases["settings"] = len(s.lrs) * (ft_cost(d, 0) + ev("valid"))
    main_ft = ft_cost(d, 0) + 5 * ft_cost(d, n)
    phases["seed0"] = sel_cost(d, n, ("ntk", "less"), True) + main_ft - ft_cost(d, 0) + 7 * (ev("test") + ev("valid"))
    phases["seeds"] = (len(s.seeds) - 1) * (main_ft + 6 * (ev("test") + ev("valid")))
    own_warmups = sum(v.own_work_dir for v in ABLATIONS.VARIANTS)
    phases["ablations"] = (len(ABLATIONS.VARIANTS) * (ft_cost(d, n) + ev("test") + ev("valid"))
                           + own_warmups * sel_cost(d, n, ("ntk",), True) + len(pool) * pool.mean() / rate_train
                           + sel_cost(d, n, ("ntk",), False)  # all-positions featurizes the M rows again
                           # the natural-mix D: its own selection, then base, domain, random and ntk
                           + sel_cost(d, n, ("ntk",), True)
                           + len(s.seeds) * (ft_cost(d, 0) + 2 * ft_cost(d, n) + 3 * (ev("test") + ev("valid")))
                           + ev("test") + ev("valid"))
    c = 0.0
    for f in s.curve_n_factors:
        if f != s.n_factor:
            c += sel_cost(d, f * d, ("ntk",), False) + 2 * (ft_cost(d, f * d) + ev("test"))
    for dd in s.curve_domain_sizes:
        if dd != d:
            c += sel_cost(dd, s.n_factor * dd, ("ntk",), True) + ft_cost(dd, 0) + 2 * ft_cost(dd, s.n_factor * dd) + 4 * ev("test")
    phases["curves0"] = c
    natural_points = [dd for dd in s.curve_domain_sizes if dd != d]
    natural_seed = sum(ft_cost(dd, 0) + 2 * ft_cost(dd, s.n_factor * dd) + 3 * ev("test") for dd in natural_points)
    phases["curves-natural0"] = sum(sel_cost(dd, s.n_factor * dd, ("ntk",), True) for dd in natural_points) + natural_seed
    phases["curves"] = (len(s.seeds) - 1) * c
    phases["curves-natural"] = (len(s.seeds) - 1) * natural_seed
    return {k: v / 3600 for k, v in phases.items()}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    s, args = parse_args(argv)
    results, cache = Path(args.results), Path(args.cache)
    bench = Bench(s, results, cache, commit_every=args.commit_every)
    command = " ".join(["python benchmarks/downstream.py", *run_flags(argv or [])])
    if args.estimate or not args.only_table:
        hours = estimate(s, bench, args.rate_train, args.rate_forward)
        log("estimated hours on an idle 2-core CPU: " + ", ".join(f"{k} {v:.1f}" for k, v in hours.items()) +
            f"; total {sum(hours.values()):.1f}")
        if args.estimate:
            return 0
    if not args.only_table:
        bench.run(args.phases)
    table = build_table(s, results, cache)
    write_text(results / "downstream.md", table)
    if args.update_benchmarks_md:
        update_benchmarks_md(Path(args.update_benchmarks_md), table, command, results)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
