"""The exact empirical NTK over output logits vs the Jacobian-free kernel, on a small probe.

With ``zbar_k(x)`` = mean over response positions of logit k and ``J_k(x) = grad_theta zbar_k(x)``
(LoRA parameters only):
- exact eNTK, summed over outputs: ``K_exact(x,x') = sum_k <J_k(x), J_k(x')>``;
- Jacobian-free (the method's kernel): ``K_jf(x,x') = <sum_k J_k(x), sum_l J_l(x')>``
  ``= K_exact + sum_{k != l} <J_k(x), J_l(x')>`` (the cross terms).
When V is too large for one backward pass per output, ``K_exact`` is estimated from a seeded
sample S of output rows, scaled by V/|S| (unbiased); ``K_jf`` is always exact (one backward).

One forward pass is kept (``retain_graph``) and each output costs one backward over the probe
batch; per-sample gradients come from hooks on the LoRA linears (``sum_t delta_t x_t^T``).
With a plain linear head, ``zbar_k = w_k . hbar`` (hbar = mean response hidden state, the bias has
no gradient), so the V x d head product is never formed; other heads use the real logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ntk_selector.features.collector import LoraGradientCollector
from ntk_selector.features.gradients import full_logits, last_hidden, shortcut_applies
from ntk_selector.io.tokens import Batch
from ntk_selector.model.loading import lora_parameters


class PerSampleGradients:
    """Raw per-sample gradients of the LoRA weights (``named_parameters()`` order), for several
    backward passes over one retained forward graph (the collector's raw consumer)."""

    def __init__(self, model: torch.nn.Module):
        self._buffer: torch.Tensor | None = None
        self.collector = LoraGradientCollector(model, self._store)
        self.params = self.collector.params
        self.offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for name, p in self.params:
            self.offsets[name] = (pos, pos + p.numel())
            pos += p.numel()
        self.dim = pos

    def _store(self, name: str, grad: torch.Tensor) -> None:
        if self._buffer is not None:
            a, b = self.offsets[name]
            self._buffer[:, a:b] += grad.reshape(grad.shape[0], -1)

    def forward(self, run: Callable[[], Any]) -> Any:
        """Run a forward pass whose LoRA activations are tracked for later backward passes."""
        with self.collector.track():
            return run()

    def grads(self, per_row: torch.Tensor) -> torch.Tensor:
        """``[B, P]``: row b holds the gradient of ``per_row[b]`` (rows do not interact)."""
        self._buffer = torch.zeros(per_row.shape[0], self.dim, dtype=torch.float32, device=per_row.device)
        try:
            torch.autograd.grad(per_row.sum(), self.collector.tensors, retain_graph=True, allow_unused=True)
            return self._buffer
        finally:
            self._buffer = None

    def close(self) -> None:
        self.collector.close()


@dataclass
class ENTKResult:
    k_exact: np.ndarray  # [n, n] exact (or sampled, scaled) eNTK summed over outputs
    k_jf: np.ndarray  # [n, n] Jacobian-free kernel
    k_halves: tuple[np.ndarray, np.ndarray]  # K_exact from the even / odd sampled outputs (scaled alike)
    mean_output_cosine: float  # mean over rows of the mean signed cosine between J_k(x), J_l(x), k != l
    outputs: np.ndarray  # indices of the output logits used
    vocab: int
    logits_mode: str  # shortcut (w_k . hbar) or full (real logits)

    @property
    def scale(self) -> float:
        return self.vocab / len(self.outputs)


def choose_outputs(vocab: int, max_outputs: int, seed: int) -> np.ndarray:
    """All V output rows when V <= max_outputs (or max_outputs <= 0), else a seeded sample."""
    if max_outputs <= 0 or vocab <= max_outputs:
        return np.arange(vocab)
    return np.sort(np.random.default_rng([seed, 7]).choice(vocab, size=max_outputs, replace=False))


def logits_mode(model: torch.nn.Module, batch: Batch, logits: str) -> str:
    """shortcut (``w_k . hbar``) when the head is a plain linear map, else full (real logits)."""
    if logits not in ("auto", "shortcut", "full"):
        raise ValueError(f"unknown logits mode '{logits}' (auto, shortcut, full)")
    if logits == "auto":
        return "shortcut" if shortcut_applies(model, batch) else "full"
    return logits


def _objectives(model: torch.nn.Module, batch: Batch, mode: str) -> tuple[Callable[[int], torch.Tensor], torch.Tensor]:
    """(per-output objective k -> [B], Jacobian-free objective [B]) on one tracked forward pass."""
    target = batch.target_mask
    n_resp = target.sum(1).clamp_min(1).float()[:, None]
    if mode == "shortcut":
        w = output_head(model).weight.detach().float()  # [V, d]
        hbar = (last_hidden(model, batch).float() * target[..., None]).sum(1) / n_resp  # [B, d]
        u = w.sum(0)
        return (lambda k: hbar @ w[k]), hbar @ u
    zbar = (full_logits(model, batch).float() * target[..., None]).sum(1) / n_resp  # [B, V]
    return (lambda k: zbar[:, k]), zbar.sum(1)


def _first_rows(batch: Batch, n: int) -> Batch:
    return Batch(*(t[:n] for t in (batch.input_ids, batch.attention_mask, batch.target_mask, batch.labels)))


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The LM head (output embeddings) under any PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_output_embeddings()


def exact_entk(
    model: torch.nn.Module,
    batches: Batch | Sequence[Batch],
    max_outputs: int,
    seed: int,
    logits: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> ENTKResult:
    """Exact (or output-sampled) eNTK and Jacobian-free kernel of the rows of the given batches
    (rows in batch order; several length-bucketed batches waste less compute on padding)."""
    batches = [batches] if isinstance(batches, Batch) else list(batches)
    vocab = int(output_head(model).weight.shape[0])
    outputs = choose_outputs(vocab, max_outputs, seed)
    device = next(p for _, p in lora_parameters(model)).device
    batches = [b.to(device) for b in batches]
    mode = logits_mode(model, _first_rows(batches[0], 2), logits)
    collector = PerSampleGradients(model)
    try:
        objectives = [collector.forward(lambda b=b: _objectives(model, b, mode)) for b in batches]

        def grads(pick: Callable[[Any], torch.Tensor]) -> torch.Tensor:
            return torch.cat([collector.grads(pick(o)) for o in objectives]).double()

        n = sum(b.input_ids.shape[0] for b in batches)
        k_exact = np.zeros((n, n))
        halves = (np.zeros((n, n)), np.zeros((n, n)))
        unit_sum = torch.zeros(n, collector.dim, dtype=torch.float64, device=device)
        nonzero = torch.zeros(n, dtype=torch.float64, device=device)
        for j, k in enumerate(outputs):
            g = grads(lambda o, k=k: o[0](int(k)))
            kk = (g @ g.T).cpu().numpy()
            k_exact += kk
            halves[j % 2][...] += kk
            norms = g.norm(dim=1)
            ok = norms > 0
            unit_sum[ok] += g[ok] / norms[ok, None]
            nonzero += ok.double()
            if progress is not None:
                progress(j + 1, len(outputs))
        g_jf = grads(lambda o: o[1])
        k_jf = (g_jf @ g_jf.T).cpu().numpy()
    finally:
        collector.close()
    scale = vocab / len(outputs)
    # mean_{k != l} cos(J_k, J_l) = (|sum_k J_k/|J_k||^2 - m) / (m (m - 1)) per row
    m = nonzero
    per_row = ((unit_sum * unit_sum).sum(1) - m) / (m * (m - 1)).clamp_min(1)
    valid = m > 1
    mean_cos = float(per_row[valid].mean()) if bool(valid.any()) else float("nan")
    sizes = (len(outputs[0::2]), max(1, len(outputs[1::2])))
    k_halves = (halves[0] * (vocab / sizes[0]), halves[1] * (vocab / sizes[1]))
    return ENTKResult(k_exact * scale, k_jf, k_halves, mean_cos, outputs, vocab, mode)
