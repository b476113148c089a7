"""The downstream benchmark's units: a selection, a fine-tune, an evaluation, each one cached JSON under
``--results``/{select,train,eval}/ (benchmarks.common.cached_unit) with its big files under the cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import cached_unit, finetune_summary, log, read_jsonl, run_select, task_counts, write_jsonl

from . import ablations
from .data import data_files
from .publish import publish
from .settings import Run, Settings, d_tag, selection_key


@dataclass
class Bench:
    s: Settings
    results: Path
    cache: Path
    commit_every: int = 0
    finished: int = 0
    _eval_session: Any = None
    _data: dict[tuple[int, str], dict[str, Path]] = field(default_factory=dict)

    # -- units -----------------------------------------------------------------

    def unit(
        self, path: Path, definition: dict[str, Any], compute: Callable[[], dict[str, Any]], what: str
    ) -> dict[str, Any]:
        """The cached JSON at ``path`` when its definition matches; otherwise compute, store, count."""
        result, computed = cached_unit(path, definition, compute, what)
        if not computed:
            return result
        self.finished += 1
        if self.commit_every and self.finished % self.commit_every == 0:
            publish(self.s, self.results, self.cache, commit=True)
        return result

    def data(self, d: int, prior: str = "balanced") -> dict[str, Path]:
        """domain / domain_valid / test / pool files for a domain size (data.py), built once."""
        if (d, prior) not in self._data:
            self._data[(d, prior)] = data_files(self.s, self.cache, d, prior)
        return self._data[(d, prior)]

    def selection(self, d: int, n: int, method: str, sel: int, prior: str = "balanced") -> dict[str, Any]:
        key = selection_key(d, n, method, sel, prior)
        definition = {
            "kind": "select",
            "d": d,
            "n": n,
            "method": method,
            "sel_seed": sel,
            "model": self.s.model,
            "max_length": self.s.max_length,
            "proj_dim": self.s.proj_dim,
            "pool_size": self.s.pool_size,
            "data_dir": self.s.data_dir,
        }
        if prior != "balanced":  # (the main table's definitions stay as they were cached)
            definition["prior"] = prior
        return self.unit(
            self.results / "select" / f"{key}.json",
            definition,
            lambda: self._select(d, n, method, sel, prior),
            f"select {key}",
        )

    def _select(self, d: int, n: int, method: str, sel: int, prior: str = "balanced") -> dict[str, Any]:
        out = self.cache / "select" / selection_key(d, n, method, sel, prior)
        if method == "preselect-random" and sel != 0:
            if prior != "balanced":
                raise ValueError("preselect-random draws with seeds > 0 exist for the balanced D only")
            return self._draw_from_preselection(d, n, sel, out)
        if method.startswith(ablations.PREFIX):
            return ablations.select_variant(self, d, n, method, out)
        work = self.cache / "work" / d_tag(d, prior)
        seed_settings = {"seed": sel} if method == "random" else {"seed": 0, "work_dir": str(work)}
        return self.run_select(d, n, method, out, seed_settings, prior)

    def run_select(
        self, d: int, n: int, method: str, out: Path, settings: dict[str, Any], prior: str = "balanced"
    ) -> dict[str, Any]:
        """``ntk_selector.select`` on the |D| = d files with these extra settings; the unit's summary."""
        data = self.data(d, prior)
        chosen, run = run_select(
            data["domain"],
            data["pool"],
            out,
            n,
            method,
            model=self.s.model or None,
            proj_dim=self.s.proj_dim,
            rank=self.s.rank,
            max_length=self.s.max_length,
            token_budget=self.s.token_budget,
            **settings,
        )
        return {
            "selected_file": str(out / "selected.jsonl"),
            "pool_index": chosen,
            "selected_per_task": run["selected_per_task"],
            "stage_seconds": run["seconds"],
            "warmup": run.get("warmup"),
        }

    def _draw_from_preselection(self, d: int, n: int, sel: int, out: Path) -> dict[str, Any]:
        """preselect-random with another seed: N uniformly from the seed-0 pre-selected set (no model work)."""
        from ntk_selector.selection.report import read_scores

        base = self.selection(d, n, "preselect-random", 0)
        scores = read_scores(Path(base["selected_file"]).with_name("scores.csv"))
        pre = scores["pool_index"][scores["preselected"]]
        chosen = np.random.default_rng(sel).choice(pre, size=min(n, len(pre)), replace=False)
        return {
            **self.write_selection(d, chosen, out),
            "stage_seconds": {"draw": 0.0},
            "drawn_from": base["selected_file"],
        }

    def write_selection(self, d: int, chosen: np.ndarray, out: Path) -> dict[str, Any]:
        """``out/selected.jsonl`` with these pool rows (of the balanced |D| = d pool), and the unit's summary of it."""
        pool = read_jsonl(self.data(d)["pool"])
        rows = [{**pool[int(i)], "pool_index": int(i)} for i in chosen]
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "selected.jsonl", rows)
        return {
            "selected_file": str(out / "selected.jsonl"),
            "pool_index": [int(i) for i in chosen],
            "selected_per_task": task_counts(rows),
        }

    def train(self, run: Run) -> dict[str, Any]:
        files = [self.data(run.d, run.prior)["domain"]]
        if run.method not in ("base", "domain"):
            files.append(Path(self.selection(run.d, run.n, run.method, run.sel, run.prior)["selected_file"]))
        definition = {
            "kind": "train",
            "run": run.key,
            "files": [str(f) for f in files],
            "model": self.s.model,
            "max_length": self.s.max_length,
            "epochs": self.s.epochs,
            "batch_size": self.s.batch_size,
            "rank": self.s.rank,
            "lr": run.lr,
            "seed": run.ft,
            "group_by_length": self.s.group_by_length,
        }
        return self.unit(
            self.results / "train" / f"{run.key}.json", definition, lambda: self._train(run, files), f"train {run.key}"
        )

    def _train(self, run: Run, files: list[Path]) -> dict[str, Any]:
        return finetune_summary(
            files,
            self.cache / "adapters" / run.key,
            model=self.s.model,
            max_length=self.s.max_length,
            token_budget=self.s.token_budget,
            rank=self.s.rank,
            seed=run.ft,
            epochs=self.s.epochs,
            lr=run.lr,
            batch_size=self.s.batch_size,
            group_by_length=self.s.group_by_length,
        )

    def evaluate(self, run: Run, split: str) -> dict[str, Any]:
        adapter = None if run.method == "base" else self.train(run)["adapter"]
        path = self.data(run.d, run.prior)["test" if split == "test" else "domain_valid"]
        definition = {
            "kind": "evaluate",
            "run": run.key,
            "split": split,
            "data": str(path),
            "model": self.s.model,
            "adapter": adapter,
            "max_length": self.s.eval_max_length,
            "train_finished": None
            if adapter is None
            else json.loads((self.results / "train" / f"{run.key}.json").read_text())["finished"],
        }
        return self.unit(
            self.results / "eval" / f"{run.key}__{split}.json",
            definition,
            lambda: self._evaluate(run, adapter, path, split),
            f"evaluate {run.key} on {split}",
        )

    def _evaluate(self, run: Run, adapter: str | None, path: Path, split: str) -> dict[str, Any]:
        from ntk_selector.analysis.evaluate import run_evaluate
        from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig
        from ntk_selector.model.session import Session

        model_cfg = ModelConfig(model=self.s.model, adapter=adapter)
        if self._eval_session is None:
            self._eval_session = Session(model_cfg, LoraSettings(), RunConfig(quiet=True))
        summary = run_evaluate(
            path,
            self.cache / "eval" / f"{run.key}__{split}",
            model_cfg,
            DataConfig(max_length=self.s.eval_max_length, token_budget=self.s.token_budget),
            RunConfig(quiet=True),
            session=self._eval_session,
        )
        keep = ("accuracy", "n", "correct", "labels", "per_class", "confusion", "truncated_prompts", "seconds", "mode")
        return {k: summary[k] for k in keep}

    def cell(self, run: Run, splits: tuple[str, ...] = ("test", "valid")) -> None:
        if run.method.startswith(ablations.PREFIX):
            picked = set(self.selection(run.d, run.n, run.method, run.sel)["pool_index"])
            if picked == set(self.selection(run.d, run.n, "ntk", 0)["pool_index"]):
                log(f"{run.key}: the same rows as ntk, nothing to fine-tune")  # the table says so
                return
        for split in splits:
            self.evaluate(run, split)
