"""``diagnose``: checks of the two assumptions NTK-Selector rests on, on a user's own model and data.

- NTK stability: the kernel (Gram) matrix of a probe set barely moves over the LoRA warm-up
  (Frobenius cosine between step t and step 0; the paper reports > 0.99).
- Approximation: the Jacobian-free kernel ranks pool rows like the exact eNTK summed over outputs
  (see entk.py): size of the cross terms, mean cosine between output gradients, Spearman of scores.
- Projection: how far projected Gram matrices and top-N picks are from the raw gradients'.

Writes ``OUT/diagnostics.json`` and a report page with plots (selection/report.py). Warns, with what to try,
when stability or the rank correlation is low.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ntk_selector.analysis.entk import choose_outputs, exact_entk, output_head
from ntk_selector.config import DataConfig, DiagnoseConfig, LoraSettings, ModelConfig, RunConfig, TrainConfig, to_dict
from ntk_selector.errors import UserError
from ntk_selector.features.budget import resolve_setting
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.features.kernels import (
    cosine_normalize,
    finite,
    frobenius_cosine,
    gram,
    mean_kernel_scores,
    relative_error,
    rows_features,
    spearman,
    top_overlap,
)
from ntk_selector.features.projection import make_projector
from ntk_selector.io.files import refuse_replacing
from ntk_selector.io.records import Records
from ntk_selector.io.store import write_json_atomic
from ntk_selector.io.tokens import Encoded, collate, encode, plan_batches
from ntk_selector.model.loading import lora_parameters, model_path
from ntk_selector.model.session import Session
from ntk_selector.training.loop import epoch_batches, train_lora
from ntk_selector.version import __version__

CHECKS = ("stability", "approximation", "projection")

# the plots diagnose writes beside diagnostics.json (selection/report.py draws them)
DIAG_PLOTS = ("diag_stability.png", "diag_projection.png", "diag_approximation.png", "diag_seconds.png")


@dataclass
class Probe:
    """Probe rows: domain rows first, then pool rows (only rows with response tokens)."""

    encoded: list[Encoded]
    is_domain: np.ndarray  # bool per probe row
    rows: np.ndarray  # row index in its own file

    @property
    def domain(self) -> np.ndarray:
        return np.flatnonzero(self.is_domain)

    @property
    def pool(self) -> np.ndarray:
        return np.flatnonzero(~self.is_domain)

    def take(self, keep: np.ndarray) -> Probe:
        return Probe([self.encoded[i] for i in keep], self.is_domain[keep], self.rows[keep])

    def head(self, n_domain: int, n_pool: int) -> Probe:
        """The first rows of each part (a smaller probe drawn from the same seeded order)."""
        return self.take(np.concatenate([self.domain[:n_domain], self.pool[:n_pool]]))

    def describe(self) -> dict[str, Any]:
        return {
            "rows": len(self.encoded),
            "domain_rows": self.rows[self.is_domain].tolist(),
            "pool_rows": self.rows[~self.is_domain].tolist(),
        }


def _pick(
    records: Records, want: int, seed: int, salt: int, tokenizer: Any, data_cfg: DataConfig
) -> list[tuple[int, Encoded]]:
    """Up to ``want`` seeded rows with response tokens (tokenizes only as many as needed)."""
    order = np.random.default_rng([seed, salt]).permutation(len(records))
    picked: list[tuple[int, Encoded]] = []
    step = max(64, 2 * want)
    for start in range(0, len(order), step):
        if len(picked) >= want:
            break
        chunk = order[start : start + step]
        for i, e in zip(chunk, encode([records.conversations[j] for j in chunk], tokenizer, data_cfg), strict=True):
            if e.n_response_tokens > 0 and len(picked) < want:
                picked.append((int(i), e))
    return picked


def choose_probe(domain: Records, pool: Records, rows: int, seed: int, tokenizer: Any, data_cfg: DataConfig) -> Probe:
    """Half domain, half pool, seeded; a short side is filled from the other."""
    want_d = rows // 2
    dom = _pick(domain, want_d, seed, 101, tokenizer, data_cfg)
    pl = _pick(pool, rows - len(dom), seed, 202, tokenizer, data_cfg)
    if len(dom) + len(pl) < rows:
        dom = _pick(domain, rows - len(pl), seed, 101, tokenizer, data_cfg)
    if not dom or not pl:
        raise UserError("the probe needs domain and pool rows with response tokens (check the files and --max-length)")
    items = dom + pl
    return Probe(
        [e for _, e in items], np.array([True] * len(dom) + [False] * len(pl)), np.array([i for i, _ in items])
    )


# ----------------------------------------------------------------------------- stability


def probe_kernel_features(feat: GradientFeaturizer, probe: Probe, pad_id: int, data_cfg: DataConfig) -> torch.Tensor:
    return rows_features(
        feat.features,
        probe.encoded,
        pad_id,
        data_cfg.token_budget,
        data_cfg.max_batch_size,
        device=next(feat.model.parameters()).device,
        stage="probe features",
        quiet=True,
    )


def stability_steps(total_steps: int, points: int) -> list[int]:
    """Step 0, the last step and evenly spaced steps between (``points`` after step 0 at most)."""
    points = max(1, min(points, total_steps))
    return sorted({int(round(x)) for x in np.linspace(0, total_steps, points + 1)})


def ntk_stability(
    model: torch.nn.Module,
    tokenizer: Any,
    domain: Records,
    probe: Probe,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    diag: DiagnoseConfig,
    seed: int,
    quiet: bool = False,
) -> tuple[list[dict[str, Any]], torch.Tensor, dict[str, Any]]:
    """Warm up the (fresh) LoRA of ``model`` on the domain as the ``warmup`` stage does, measuring the
    probe kernel along the way. Returns the curve, the probe features at the last step, and training stats."""
    encoded = encode(domain.conversations, tokenizer, data_cfg)  # once: the count and the warm-up share it
    n_train = sum(e.n_response_tokens > 0 for e in encoded)
    total = len(epoch_batches(n_train, train_cfg.batch_size, train_cfg.epochs, seed)) if n_train else 0
    measure = set(stability_steps(total, diag.stability_points))
    pad = tokenizer.pad_token_id
    state: dict[str, Any] = {}
    curve: list[dict[str, Any]] = []
    probe_batch = collate(probe.encoded[:2], pad)
    with GradientFeaturizer(model, diag.kernel_proj_dim, seed, "ntk", "auto", probe_batch) as feat:

        def on_step(step: int, m: torch.nn.Module) -> None:
            if step not in measure:
                return
            f = probe_kernel_features(feat, probe, pad, data_cfg)
            k = gram(f)
            scores = mean_kernel_scores(k, probe.pool, probe.domain)
            if step == 0:
                state["k0"], state["s0"] = k, scores
            curve.append(
                {
                    "step": step,
                    "frobenius_cosine": frobenius_cosine(k, state["k0"]),
                    "score_spearman": finite(spearman(scores, state["s0"])),
                }
            )
            state["features"] = f

        stats = train_lora(
            model,
            tokenizer,
            domain.conversations,
            data_cfg,
            train_cfg,
            seed,
            quiet=quiet,
            desc="warm-up (stability)",
            on_step=on_step,
            encoded=encoded,
        )
    for point in curve:
        point["loss"] = stats["losses"][point["step"] - 1] if point["step"] > 0 else None
    return curve, state["features"], {k: v for k, v in stats.items() if k != "losses"}


# ----------------------------------------------------------------------------- approximation


def approximation(
    model: torch.nn.Module,
    probe: Probe,
    pad_id: int,
    diag: DiagnoseConfig,
    seed: int,
    token_budget: int | str,
    quiet: bool = False,
) -> dict[str, Any]:
    """Exact (or output-sampled) eNTK vs the Jacobian-free kernel on a few probe rows."""
    vocab = int(output_head(model).weight.shape[0])
    total = len(choose_outputs(vocab, diag.approx_outputs, seed))
    with tqdm(total=total, desc="exact eNTK (outputs)", unit="out", disable=quiet, dynamic_ncols=True) as bar:

        def progress(done: int, _: int) -> None:
            bar.update(done - bar.n)

        # small length-bucketed batches: every output costs a backward over all rows, padding included
        groups = plan_batches([e.length for e in probe.encoded], resolve_setting(token_budget), 4)
        probe = probe.take(np.concatenate(groups))  # rows in batch order
        bounds = np.cumsum([0] + [len(g) for g in groups])
        batches = [collate(probe.encoded[a:b], pad_id) for a, b in itertools.pairwise(bounds)]
        res = exact_entk(model, batches, diag.approx_outputs, seed, progress=progress)
    pool, dom = probe.pool, probe.domain
    s_exact = mean_kernel_scores(res.k_exact, pool, dom)
    s_jf = mean_kernel_scores(res.k_jf, pool, dom)
    cos_exact = mean_kernel_scores(cosine_normalize(res.k_exact), pool, dom)
    cos_jf = mean_kernel_scores(cosine_normalize(res.k_jf), pool, dom)
    sampled = len(res.outputs) < res.vocab
    out = {
        "rows": len(probe.encoded),
        "domain_rows": len(dom),
        "pool_rows": len(pool),
        "vocab": res.vocab,
        "outputs": int(len(res.outputs)),
        "sampled_outputs": sampled,
        "scale": res.scale,
        "logits_mode": res.logits_mode,
        "cross_term_share": finite(relative_error(res.k_jf, res.k_exact)),
        "mean_output_cosine": finite(res.mean_output_cosine),
        "kernel_cosine": finite(frobenius_cosine(res.k_jf, res.k_exact)),
        "spearman": finite(spearman(s_exact, s_jf)),
        "spearman_cosine": finite(spearman(cos_exact, cos_jf)),
        "sampling_spearman": None,
        "scores": {"exact": s_exact.tolist(), "jacobian_free": s_jf.tolist()},
    }
    if sampled and len(res.outputs) >= 4:
        half_a = mean_kernel_scores(res.k_halves[0], pool, dom)
        half_b = mean_kernel_scores(res.k_halves[1], pool, dom)
        out["sampling_spearman"] = finite(spearman(half_a, half_b))
    return out


# ----------------------------------------------------------------------------- projection


def project_raw(raw: torch.Tensor, shapes: Sequence[tuple[str, tuple[int, ...]]], dim: int, seed: int) -> torch.Tensor:
    """Project raw gradient rows (``named_parameters()`` layout) with the featurizer's projector."""
    projector = make_projector(shapes, dim, seed)
    out = torch.zeros(raw.shape[0], projector.out_dim, dtype=torch.float32)
    pos = 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        projector.accumulate(name, raw[:, pos : pos + size].reshape(raw.shape[0], *shape), out)
        pos += size
    projector.flush(out)
    if pos != raw.shape[1]:
        raise ValueError(f"raw features have {raw.shape[1]} columns, the LoRA parameters {pos}")
    return out


def projection_ladder(
    raw: torch.Tensor,
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    probe: Probe,
    dims: Sequence[int],
    seeds: int,
    top_share: float,
    seed: int,
) -> dict[str, Any]:
    """Relative Gram error and top-N overlap (pool rows ranked by mean kernel with domain rows) per p."""
    k_raw = gram(raw)
    pool, dom = probe.pool, probe.domain
    s_raw = mean_kernel_scores(k_raw, pool, dom)
    top = max(1, int(round(top_share * len(pool))))
    ladder = []
    for p in dims:
        errs, overlaps, rhos = [], [], []
        for s in range(max(1, seeds)):
            k = gram(project_raw(raw, shapes, p, seed + s))
            sc = mean_kernel_scores(k, pool, dom)
            errs.append(relative_error(k, k_raw))
            overlaps.append(top_overlap(sc, s_raw, top))
            rhos.append(spearman(sc, s_raw))
        ladder.append(
            {
                "proj_dim": int(p),
                "relative_gram_error": float(np.mean(errs)),
                "relative_gram_error_std": float(np.std(errs)),
                "top_overlap": float(np.mean(overlaps)),
                "spearman": finite(np.mean(rhos)),
            }
        )
    ladder.append(
        {
            "proj_dim": "raw",
            "relative_gram_error": 0.0,
            "relative_gram_error_std": 0.0,
            "top_overlap": 1.0,
            "spearman": 1.0,
        }
    )
    return {
        "raw_dim": int(raw.shape[1]),
        "rows": int(raw.shape[0]),
        "top_n": top,
        "seeds": max(1, seeds),
        "ladder": ladder,
    }


# ----------------------------------------------------------------------------- warnings


def warnings_for(result: dict[str, Any], diag: DiagnoseConfig) -> list[str]:
    """Plain-language warnings with what to try."""
    out = []
    curve = result.get("ntk_stability") or []
    if curve:
        worst = min(curve, key=lambda p: p["frobenius_cosine"])
        if worst["frobenius_cosine"] < diag.warn_stability:
            out.append(
                f"NTK stability fell to {worst['frobenius_cosine']:.3f} at warm-up step {worst['step']} "
                f"(below {diag.warn_stability}): the kernel moved during the warm-up, so scores from the warm "
                "model may not reflect the start. Try a shorter warm-up (--epochs), a lower learning rate "
                "(--lr), or cosine scores (--cosine)."
            )
    approx = result.get("approximation") or {}
    rho = approx.get("spearman")
    if rho is not None and rho < diag.warn_spearman:
        out.append(
            f"Jacobian-free scores rank the probe's pool rows unlike the exact eNTK (Spearman {rho:.3f}, "
            f"below {diag.warn_spearman}). Try cosine scores (--cosine), a lower learning rate (--lr) or a "
            "shorter warm-up (--epochs); more probe rows or sampled outputs (--approx-rows, "
            "--approx-outputs) make this estimate firmer."
        )
    return out


# ----------------------------------------------------------------------------- the command


def diagnose(
    domain_path: str | Path,
    pool_path: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    lora: LoraSettings,
    run: RunConfig,
    train_cfg: TrainConfig,
    diag: DiagnoseConfig,
) -> dict[str, Any]:
    """Run the chosen checks; write ``diagnostics.json`` and the report into ``out_dir``."""
    checks = [str(c) for c in diag.checks]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise UserError(f"unknown check(s) {', '.join(unknown)} (choose from {', '.join(CHECKS)})")
    dims = [int(p) for p in diag.projection_dims]
    if diag.probe_rows < 4 or diag.approx_rows < 2:
        raise UserError("--probe-rows must be at least 4 and --approx-rows at least 2")
    out = Path(out_dir)
    # diagnose may share a select run's folder (one report for both): either run's record makes the files ours
    refuse_replacing(
        out,
        ("diagnostics.json", "report.html", *DIAG_PLOTS),
        (("diagnostics.json", "checks"), ("run.json", "inputs")),
        run.overwrite,
    )
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    domain = Records.load(domain_path, data_cfg)
    pool = Records.load(pool_path, data_cfg)
    session = Session(model_cfg, lora, run)
    session.load(None if "stability" in checks else model_cfg.adapter)
    tok = session.tokenizer
    probe = choose_probe(domain, pool, diag.probe_rows, run.seed, tok, data_cfg)
    seconds["load"] = time.perf_counter() - t0
    result: dict[str, Any] = {
        "model": model_path(model_cfg, quiet=True),
        "adapter": model_cfg.adapter,
        "inputs": {
            "domain": str(domain.path),
            "pool": str(pool.path),
            "domain_fingerprint": domain.fingerprint,
            "pool_fingerprint": pool.fingerprint,
        },
        "config": {
            "model": to_dict(model_cfg),
            "data": to_dict(data_cfg),
            "lora": to_dict(lora),
            "run": to_dict(run),
            "train": to_dict(train_cfg),
            "diagnose": to_dict(diag),
        },
        "probe": probe.describe(),
        "checks": checks,
    }
    raw: torch.Tensor | None = None
    if "stability" in checks:
        t = time.perf_counter()
        curve, last, stats = ntk_stability(
            session.model, tok, domain, probe, data_cfg, train_cfg, diag, run.seed, run.quiet
        )
        result["ntk_stability"] = curve
        result["stability_final"] = curve[-1]["frobenius_cosine"]
        result["stability_min"] = min(p["frobenius_cosine"] for p in curve)
        result["warmup"] = stats
        if diag.kernel_proj_dim == 0:
            raw = last
        seconds["stability"] = time.perf_counter() - t
        if model_cfg.adapter:
            session.load(model_cfg.adapter)
            raw = None
    result["kernel_model"] = model_cfg.adapter or ("end of the warm-up" if "stability" in checks else "LoRA at init")
    if "projection" in checks:
        t = time.perf_counter()
        if diag.kernel_proj_dim and "stability" in checks:
            result["projection"] = {"skipped": "the stability kernel is projected (--kernel-proj-dim > 0)"}
        else:
            if raw is None:
                with GradientFeaturizer(
                    session.model, 0, run.seed, "ntk", "auto", collate(probe.encoded[:2], tok.pad_token_id)
                ) as feat:
                    raw = probe_kernel_features(feat, probe, tok.pad_token_id, data_cfg)
            shapes = [(n, tuple(p.shape)) for n, p in lora_parameters(session.model)]
            result["projection"] = projection_ladder(
                raw, shapes, probe, dims, diag.projection_seeds, diag.projection_top, run.seed
            )
        seconds["projection"] = time.perf_counter() - t
    if "approximation" in checks:
        t = time.perf_counter()
        n_dom = min(diag.approx_rows // 2, len(probe.domain))
        small = probe.head(n_dom, min(diag.approx_rows - n_dom, len(probe.pool)))
        result["approximation"] = approximation(
            session.model, small, tok.pad_token_id, diag, run.seed, data_cfg.token_budget, run.quiet
        )
        seconds["approximation"] = time.perf_counter() - t
    result["warnings"] = warnings_for(result, diag)
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    result["machine"] = {
        "device": str(next(session.model.parameters()).device),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    result["versions"] = {"ntk_selector": __version__, "torch": torch.__version__}
    write_json_atomic(out / "diagnostics.json", result)
    from ntk_selector.selection.report import write_report

    write_report(out)
    return result
