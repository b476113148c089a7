"""Typed configs: the single source of defaults for the CLI flags, YAML files and the API.

Every field of every section maps to one command-line flag (``proj_dim`` -> ``--proj-dim``) and
one YAML key, so a flag means the same thing in every subcommand. Section field names are
unique across sections, which keeps YAML files flat (sectioned YAML is accepted too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its CLI help text attached."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    model: str | None = _f(None, "HF model folder or hub id (default: packaged SmolLM2-135M-Instruct)")
    adapter: str | None = _f(None, "PEFT adapter folder (as save_pretrained writes it)")
    device: str = _f("auto", "torch device: auto, cpu, cuda, cuda:1 …")
    dtype: str = _f("auto", "compute dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")


@dataclass
class DataConfig:
    prompt_field: str = _f("prompt", "record field holding the prompt")
    response_field: str = _f("response", "record field holding the response")
    messages_field: str = _f("messages", "record field holding a chat list (used when present)")
    max_length: int = _f(512, "truncate tokenized examples to this many tokens")
    no_chat_template: bool = _f(False, "tokenize prompt + response + EOS instead of the chat template")
    token_budget: int = _f(2048, "max padded tokens per batch (batch size x longest row); backward memory grows ~1 MB per token for a 135M model")
    max_batch_size: int = _f(64, "max rows per batch")


@dataclass
class LoraSettings:
    rank: int = _f(8, "LoRA rank r")
    lora_alpha: float = _f(16.0, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "modules that get LoRA")


@dataclass
class RunConfig:
    seed: int = _f(0, "seed for shuffling, projections and random baselines")
    quiet: bool = _f(False, "no progress bars or summaries")
    debug: bool = _f(False, "show tracebacks on errors")
    overwrite: bool = _f(False, "discard an existing output of another configuration")
    work_dir: str | None = _f(None, "folder for intermediate stage outputs (default OUT/stages); select runs of several methods on the same data can share one")
    checkpoint_every: int = _f(100, "train and warm-up: save a resumable state every this many optimizer steps (0: never); a rerun on the same output resumes from it")
    dist_timeout: float = _f(360.0, "minutes ranks of a torchrun job wait for each other (rank 0 alone runs the warm-up)")


@dataclass
class TrainConfig:
    epochs: float = _f(1.0, "training epochs (fractions allowed)")
    lr: float = _f(1e-4, "learning rate (AdamW)")
    batch_size: int = _f(8, "training batch size")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_ratio: float = _f(0.0, "share of steps with linear learning-rate warm-up")
    loss_mean: str = _f("token", "training loss: token (mean over all response tokens of a batch) or example (mean over rows of each row's token mean)")


@dataclass
class FeatureConfig:
    proj_dim: int = _f(8192, "projected feature dimension p (0 stores the raw LoRA gradient)")
    objective: str = _f("ntk", "ntk: gradient of the mean summed logits over response positions; ntk-all: over all positions (prompt too); ce: of the mean response cross-entropy (LESS)")
    logits: str = _f("auto", "auto: summed-logit shortcut u.h when the head is linear; full: real logits")
    store_dtype: str = _f("float32", "dtype of stored features: float32 or float16")
    projection_cache_mb: int = _f(0, "megabytes of +-1 projection matrices kept (int8) on the device; the rest are regenerated per batch; 0: a quarter of the device's free memory")


@dataclass
class PreselectConfig:
    n: int = _f(0, "number of pool examples to select (-n N also works, e.g. after torchrun, whose launcher rejects --n)", short="-n")
    m: int | None = _f(None, "pre-selected candidates M (default 4N, capped at the pool size)")
    k: int | None = _f(None, "neighbours each domain row votes for (default M/4)")
    knn_search: str = _f("auto", "neighbour search: flat (exact, streamed over the pool), hnsw or ivf (FAISS, approximate); auto: flat up to 2e9 domain x pool pairs, else ivf")


@dataclass
class IndexConfig:
    index: str | None = _f(None, "select: an index folder from `ntk-selector index`; the pool is scored from it and never run through the model again")
    index_mode: str = _f("features", "select --index: features (index embeddings pre-select, index features score: no warm-up) or preselect (index pre-selects, warm model featurizes the M candidates)")


@dataclass
class EmbedConfig:
    embedder: str = _f("model", "pre-selection embeddings: model (mean-pooled final hidden state) or minilm (the packaged all-MiniLM-L6-v2 sentence encoder)")
    embed_max_length: int = _f(0, "embed only the first this many tokens of each row (0: the whole row as tokenized)")


@dataclass
class ScoreConfig:
    cosine: bool = _f(False, "score with mean cosine instead of the mean inner product")
    score_block_mb: int = _f(256, "megabytes of features read per block when scoring (memory does not grow with the pool)")


@dataclass
class PoolFilterConfig:
    dedupe: bool = _f(False, "drop repeated pool rows (same prompt and response) from selection; duplicates are always reported")
    decontaminate: str | None = _f(None, "test-set records: pool rows sharing an n-gram with any of them are reported and never selected")
    ngram: int = _f(13, "n of the whitespace-token n-grams of --decontaminate (texts shorter than n match as a whole)")


@dataclass
class DiagnoseConfig:
    probe_rows: int = _f(64, "rows of the stability / projection probe (half domain, half pool, seeded)")
    stability_points: int = _f(8, "warm-up steps at which the probe kernel is measured (evenly spaced, plus step 0)")
    kernel_proj_dim: int = _f(0, "features of the stability kernel: 0 = raw LoRA gradients (exact); p > 0 projects (large models; skips the projection check)")
    approx_rows: int = _f(16, "rows of the exact-eNTK probe (half domain, half pool; every sampled output costs a backward over them)")
    approx_outputs: int = _f(64, "output logits in the exact eNTK: all V when V is at most this (or 0), else a seeded sample of this many, scaled by V/sample")
    projection_dims: list[int] = _f([256, 512, 1024, 2048, 4096, 8192], "projection dims compared with the raw gradient")
    projection_seeds: int = _f(3, "projection seeds averaged per dim")
    projection_top: float = _f(0.25, "share of the probe's pool rows that counts as the top-N in the overlap")
    checks: list[str] = _f(["stability", "approximation", "projection"], "diagnostics to run")
    warn_stability: float = _f(0.95, "warn when the NTK stability falls below this")
    warn_spearman: float = _f(0.8, "warn when exact vs Jacobian-free score rank correlation falls below this")


@dataclass
class PredictConfig:
    ridge: float = _f(1e-3, "kernel ridge regularisation, relative to the mean kernel diagonal")
    predict_cosine: bool = _f(False, "use the cosine-normalized kernel")


SECTIONS: tuple[type, ...] = (
    ModelConfig, DataConfig, LoraSettings, RunConfig, TrainConfig, FeatureConfig, PreselectConfig, IndexConfig,
    EmbedConfig, ScoreConfig, PoolFilterConfig, DiagnoseConfig, PredictConfig,
)


def _check_unique_names() -> None:
    seen: dict[str, type] = {}
    for sec in SECTIONS:
        for f in dataclasses.fields(sec):
            assert f.name not in seen, f"config field {f.name} in {sec.__name__} and {seen[f.name].__name__}"
            seen[f.name] = sec


_check_unique_names()


class ConfigError(ValueError):
    """A config file or value that cannot be used."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config: flat ``key: value`` or sectioned ``section: {key: value}``."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key.replace("-", "_")] = value
    return flat


def build(section: type, values: Mapping[str, Any]) -> Any:
    """Instantiate one section from a flat mapping, ignoring other sections' keys."""
    names = {f.name for f in dataclasses.fields(section)}
    return section(**{k: v for k, v in values.items() if k in names})


def known_names(sections: tuple[type, ...] = SECTIONS) -> set[str]:
    return {f.name for s in sections for f in dataclasses.fields(s)}


def to_dict(*configs: Any) -> dict[str, Any]:
    """Flat dict of several config sections (for run.json / meta.json)."""
    out: dict[str, Any] = {}
    for c in configs:
        out.update(dataclasses.asdict(c))
    return out
