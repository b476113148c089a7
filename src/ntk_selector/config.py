"""Typed configs: the single source of defaults, types, ranges and help for CLI flags, YAML and the API.

Every field of every section maps to one command-line flag (``proj_dim`` -> ``--proj-dim``) and
one YAML key, so a flag means the same thing in every subcommand. Section field names are
unique across sections, which keeps YAML files flat (sectioned YAML is accepted too).

Validation lives here, in one place: ``check_setting`` types and range-checks one value (from
the command line, a YAML file or the API), and every section checks all its fields, plus the
rules between them, in ``__post_init__``, so a wrong setting is refused with its flag or key
before any model work. Values are read as the user meant them: a YAML ``lr: 1e-4`` (a string to
PyYAML) is the float 1e-4, a quoted ``rank: '4'`` is 4 as it would be on the command line,
``overwrite: 'false'`` is False, a single ``target_modules: q_proj`` is a one-element list;
anything else of the wrong type is refused naming the key. Unknown YAML keys are refused with
the closest valid key.

Why not transformers' ``HfArgumentParser``: it builds argparse flags from dataclasses too, but
it neither checks ranges nor reads YAML values as typed above (its ``parse_yaml_file`` passes
PyYAML's strings straight into the dataclass), has no notion of one subcommand using several
sections with a subcommand's own defaults, and would make the CLI's behaviour depend on a
transformers version. Keeping the dataclasses with this small validation layer keeps the configs
the one source of defaults, and keeps ``to_dict`` and ``load_yaml`` symmetric: a YAML file
written from ``to_dict`` (flat, or sectioned by the names in ``SECTION_NAMES``) reads back to
the same configs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ntk_selector.errors import UserError


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its CLI help text and its rules (``min``, ``gt``, ``max``, ``lt``,
    ``choices``, ``pattern``) attached."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    """The model and where it runs (``--model``, ``--adapter``, ``--device``, ``--dtype``).

    Args:
        model: An HF model folder or hub id; None for the packaged SmolLM2-135M-Instruct.
        adapter: A PEFT adapter folder, as ``save_pretrained`` writes it.
        device: ``auto`` (a CUDA GPU when there is one, else the CPU), ``cpu``, ``mps``, ``cuda``, ``cuda:N``.
        dtype: Compute dtype of the frozen base: ``auto`` (bf16 on a GPU, fp32 on a CPU), ``float32``,
            ``bfloat16`` or ``float16``. LoRA weights, per-sample products and the projection stay fp32.

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    model: str | None = _f(None, "HF model folder or hub id (default: packaged SmolLM2-135M-Instruct)")
    adapter: str | None = _f(None, "PEFT adapter folder (as save_pretrained writes it)")
    device: str = _f("auto", "torch device: auto, cpu, cuda, cuda:1 …", pattern=r"auto|cpu|mps|cuda(:\d+)?")
    dtype: str = _f(
        "auto",
        "compute dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16",
        choices=("auto", "float32", "bfloat16", "float16"),
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class DataConfig:
    """How records are read, tokenized and batched.

    Args:
        prompt_field: The record field holding the prompt (prompt-response format).
        response_field: The record field holding the response.
        messages_field: The record field holding a chat list (messages format).
        format: ``auto`` (found per file from its fields), ``prompt-response``, ``prompt-completion``,
            ``messages``, ``sharegpt`` or ``alpaca``.
        split: The split of a hub dataset or saved DatasetDict (needed when it has several).
        subset: The subset (configuration name) of a hub dataset.
        max_length: Tokenized rows are truncated to this many tokens.
        no_chat_template: Tokenize prompt + response + EOS instead of using the chat template.
        token_budget: The most padded tokens in a batch (rows x longest row).
        max_batch_size: The most rows in a batch.

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    prompt_field: str = _f("prompt", "record field holding the prompt")
    response_field: str = _f("response", "record field holding the response")
    messages_field: str = _f("messages", "record field holding a chat list (the messages format)")
    format: str = _f(
        "auto",
        "record format: auto (found per file from its fields), prompt-response, prompt-completion, messages, "
        "sharegpt, alpaca",
        choices=("auto", "prompt-response", "prompt-completion", "messages", "sharegpt", "alpaca"),
    )
    split: str | None = _f(None, "split of a hub dataset or saved DatasetDict (needed when it has several)")
    subset: str | None = _f(None, "subset (configuration name) of a hub dataset")
    max_length: int = _f(512, "truncate tokenized examples to this many tokens", min=2)
    no_chat_template: bool = _f(False, "tokenize prompt + response + EOS instead of the chat template")
    token_budget: int | str = _f(
        "auto",
        "max padded tokens per batch (batch size x longest row), or auto: 2048 on a CPU, sized to the free memory "
        "on a GPU (measured on the first batch, halved on out-of-memory)",
        min=1,
        words=("auto",),
    )
    max_batch_size: int = _f(64, "max rows per batch", min=1)

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class LoraSettings:
    """The LoRA adapter of the warm-up, the features and the fine-tune.

    Args:
        rank: The LoRA rank r (``--lora-rank``; ``--rank`` also works).
        lora_alpha: The LoRA alpha.
        lora_dropout: The LoRA dropout, in [0, 1).
        target_modules: The modules that get LoRA (default: q/k/v/o projections).

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    rank: int = _f(8, "LoRA rank r", min=1, flag="--lora-rank", aliases=("--rank",))
    lora_alpha: float = _f(16.0, "LoRA alpha", gt=0)
    lora_dropout: float = _f(0.0, "LoRA dropout", min=0, lt=1)
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "modules that get LoRA")

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class RunConfig:
    """Seeds, logging, overwriting, checkpoints and distributed waiting, shared by every command.

    Args:
        seed: Seed for shuffling, projections and the random baselines.
        quiet: No progress bars (ours, transformers', datasets') or summaries.
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        debug: Show tracebacks on errors.
        overwrite: Discard an existing output of another configuration.
        work_dir: Folder for intermediate stage outputs (default ``OUT/stages``).
        checkpoint_every: Train and warm-up save a resumable state every this many steps (0: never).
        dist_timeout: Minutes the ranks of a torchrun job wait for each other.

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    seed: int = _f(0, "seed for shuffling, projections and random baselines", min=0, max=2**32 - 1)
    quiet: bool = _f(False, "no progress bars (ours, transformers', datasets') or summaries")
    log_level: str = _f(
        "warning", "log messages at and above this level", choices=("debug", "info", "warning", "error")
    )
    debug: bool = _f(False, "show tracebacks on errors")
    overwrite: bool = _f(False, "discard an existing output of another configuration")
    work_dir: str | None = _f(
        None,
        "folder for intermediate stage outputs (default OUT/stages); select runs of several methods on the same "
        "data can share one",
    )
    checkpoint_every: int = _f(
        100,
        "train and warm-up: save a resumable state every this many optimizer steps (0: never); a rerun on the same "
        "output resumes from it",
        min=0,
    )
    dist_timeout: float = _f(
        360.0, "minutes ranks of a torchrun job wait for each other (rank 0 alone runs the warm-up)", gt=0
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class TrainConfig:
    """The warm-up's and the fine-tune's optimisation.

    Args:
        epochs: Training epochs (full passes; fractions allowed).
        lr: The AdamW learning rate; 0 leaves the LoRA at its start.
        batch_size: Rows per training batch.
        weight_decay: AdamW weight decay.
        warmup_ratio: Share of the steps with a linear learning-rate warm-up.
        loss_mean: ``token`` (mean over all response tokens of a batch) or ``example`` (mean over rows
            of each row's token mean).

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    epochs: float = _f(1.0, "training epochs (fractions allowed)", gt=0)
    lr: float = _f(
        1e-4, "learning rate (AdamW); 0 leaves the LoRA at its start (a warm-up that changes nothing)", min=0
    )
    batch_size: int = _f(8, "training batch size", min=1)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0)
    warmup_ratio: float = _f(0.0, "share of steps with linear learning-rate warm-up", min=0, max=1)
    loss_mean: str = _f(
        "token",
        "training loss: token (mean over all response tokens of a batch) or example (mean over rows of each row's "
        "token mean)",
        choices=("token", "example"),
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class FeatureConfig:
    """The NTK features: objective, projection and storage.

    Args:
        proj_dim: The projected feature dimension p; 0 stores the raw LoRA gradient.
        objective: ``ntk`` (mean summed logits over the response positions), ``ntk-all`` (over every
            position), ``ntk-content`` (the response positions but the end-of-turn one) or ``ce``
            (the mean response cross-entropy, as LESS).
        logits: ``auto`` (the summed-logit shortcut when the head is linear), ``full`` (real logits)
            or ``shortcut``.
        store_dtype: ``float32`` or ``float16`` for the stored features.
        projection_cache_mb: Megabytes of projection matrices kept on the device (0: a quarter of the
            device's free memory, 1 GiB on a CPU): all of them in fp32 when they fit, else the ±1 signs
            (int8) of as many layers as fit; the rest are regenerated per batch.
        projection_dtype: ``float32`` (exact to float rounding) or ``bfloat16``: the projection's
            products take bf16 gradients with fp32 accumulation and bf16 results (faster on GPUs with
            bf16 tensor cores; in tests/test_projection.py at p = 256, features within 2.2e-3 relative
            of fp32 and inner products within 4e-4 of the norms' product). Part of a store's definition.

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    proj_dim: int = _f(8192, "projected feature dimension p (0 stores the raw LoRA gradient)", min=0)
    objective: str = _f(
        "ntk",
        "ntk: gradient of the mean summed logits over response positions; ntk-all: over all positions (prompt "
        "too); ntk-content: over the response positions but the one predicting the end-of-turn token; ce: of the "
        "mean response cross-entropy (LESS)",
        choices=("ntk", "ntk-all", "ntk-content", "ce"),
    )
    logits: str = _f(
        "auto",
        "auto: summed-logit shortcut u.h when the head is linear; full: real logits",
        choices=("auto", "full", "shortcut"),
    )
    store_dtype: str = _f("float32", "dtype of stored features: float32 or float16", choices=("float32", "float16"))
    projection_cache_mb: int = _f(
        0,
        "megabytes of projection matrices kept on the device (all in fp32 when they fit, else the +-1 signs of as "
        "many layers as fit, as int8); the rest are regenerated per batch; 0: a quarter of the device's free memory",
        min=0,
    )
    projection_dtype: str = _f(
        "float32",
        "dtype of the projection's products: float32, or bfloat16 (bf16 inputs, fp32 accumulation, bf16 "
        "results; approximate, part of the store's definition)",
        choices=("float32", "bfloat16"),
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class PreselectConfig:
    """How many rows to select, and the reverse-kNN pre-selection.

    Args:
        n: The number of pool rows to select, N (``--n`` or ``-n``).
        m: The pre-selected candidates M (None: 4N, capped at the pool size); at least N.
        k: The neighbours each domain row votes for (None: M/4).
        knn_search: ``flat`` (exact, streamed), ``ivf`` or ``hnsw`` (FAISS, approximate), or ``auto``
            (flat up to 2e9 domain x pool pairs, else ivf).

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    n: int = _f(
        0,
        "number of pool examples to select (-n N also works, e.g. after torchrun, whose launcher rejects --n)",
        short="-n",
        min=0,
    )
    m: int | None = _f(None, "pre-selected candidates M (default 4N, capped at the pool size)", min=1)
    k: int | None = _f(None, "neighbours each domain row votes for (default M/4)", min=1)
    knn_search: str = _f(
        "auto",
        "neighbour search: flat (exact, streamed over the pool), hnsw or ivf (FAISS, approximate); auto: flat up "
        "to 2e9 domain x pool pairs, else ivf",
        choices=("auto", "flat", "hnsw", "ivf"),
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class IndexConfig:
    """Selecting against a pool index built by ``index``.

    Args:
        index: An index folder; the pool is then scored from it and never run through the model again.
        index_mode: ``features`` (the index pre-selects and scores; no warm-up) or ``preselect`` (the
            index pre-selects; the warm model featurizes the M candidates).

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    index: str | None = _f(
        None,
        "select: an index folder from `ntk-selector index`; the pool is scored from it and never run through the "
        "model again",
    )
    index_mode: str = _f(
        "features",
        "select --index: features (index embeddings pre-select, index features score: no warm-up) or preselect "
        "(index pre-selects, warm model featurizes the M candidates)",
        choices=("features", "preselect"),
    )

    def __post_init__(self) -> None:
        check_section(self)
        if self.index_mode != "features" and not self.index:
            raise ConfigError(
                f"--index-mode {self.index_mode} needs --index (an index folder from `ntk-selector index`); "
                f"without it select runs the whole pipeline"
            )


@dataclass
class EmbedConfig:
    """The pre-selection embeddings.

    Args:
        embedder: ``model`` (the mean-pooled final hidden state) or ``minilm`` (the packaged
            all-MiniLM-L6-v2 sentence encoder).
        embed_max_length: Embed only the first this many tokens of each row (0: the whole row).

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    embedder: str = _f(
        "model",
        "pre-selection embeddings: model (mean-pooled final hidden state) or minilm (the packaged all-MiniLM-L6-v2 "
        "sentence encoder)",
        choices=("model", "minilm"),
    )
    embed_max_length: int = _f(
        0, "embed only the first this many tokens of each row (0: the whole row as tokenized)", min=0
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class ScoreConfig:
    """How pool rows are scored against the domain.

    Args:
        cosine: Score by the mean cosine instead of the mean inner product.
        score_block_mb: Megabytes of features read per block (memory does not grow with the pool).
        answer_mix: ``select`` only (beyond the paper): ``off`` (the plain top N by score), ``keep``
            (the top N whose rows answering with one of D's labels give each label D's share) or the
            path of a JSON file of target shares per label; the quota rule is
            ``selection.answer_mix.constrained_top_n``'s.

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    cosine: bool = _f(False, "score with mean cosine instead of the mean inner product")
    score_block_mb: int = _f(
        256, "megabytes of features read per block when scoring (memory does not grow with the pool)", min=1
    )
    answer_mix: str = _f(
        "off",
        "the label mix of the selection (beyond the paper): off = the plain top N by score; keep = the top N under "
        "the constraint that the selected rows answering with one of D's labels (D a classification task: at most "
        "20 distinct answers, each about twice or more) give each label D's share, rows answering otherwise "
        'unconstrained; FILE.json = target shares instead ({"label": share, ...}, summing to 1). Rule: the plain '
        "top N's N-m rows with other answers stay; its m rows with D's labels are re-divided by largest-remainder "
        "rounding of share x m into per-label quotas, each filled with the label's best-scored candidates; a label "
        "with too few candidates gives all it has and the other labels fill its place. Methods that rank by a "
        "score only (ntk, less, embedding)",
        metavar="off|keep|FILE.json",
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class PoolFilterConfig:
    """Pool rows that are reported and never selected.

    Args:
        dedupe: Fold repeated pool rows (same prompt and response): only the first copy can be
            selected (on by default; ``--keep-duplicates`` turns it off). Duplicates are counted in
            the summary and run.json either way.
        keep_domain_copies: Let pool rows that are exact copies of a domain row be selected (by
            default they are left out and counted).
        decontaminate: Test-set records; pool rows sharing an n-gram with any of them are excluded.
        ngram: The n of the whitespace-token n-grams of ``decontaminate``.

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    dedupe: bool = _f(
        True,
        "fold identical pool rows (same prompt and response): only the first copy can be selected; the count is "
        "printed and in run.json (--keep-duplicates: any copy may be selected, the earlier behaviour)",
        off_flag="--keep-duplicates",
    )
    keep_domain_copies: bool = _f(
        False,
        "let pool rows that are exact copies of a domain row (same prompt and response) be selected; by default "
        "they are left out, counted in the summary and run.json",
    )
    decontaminate: str | None = _f(
        None, "test-set records: pool rows sharing an n-gram with any of them are reported and never selected"
    )
    ngram: int = _f(
        13, "n of the whitespace-token n-grams of --decontaminate (texts shorter than n match as a whole)", min=1
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class OutputConfig:
    """Extra output files of ``select``.

    Args:
        output_format: ``records`` (selected.jsonl only), ``prompt-completion`` or ``messages`` (also
            the selection as TRL rows).
    """

    output_format: str = _f(
        "records",
        "besides selected.jsonl, write the selection as TRL rows: prompt-completion "
        "(selected_prompt_completion.jsonl) or messages (selected_messages.jsonl); records: selected.jsonl only",
        choices=("records", "prompt-completion", "messages"),
    )


@dataclass
class DiagnoseConfig:
    """The checks of ``diagnose``: NTK stability, approximation and projection.

    Args:
        probe_rows: Rows of the stability and projection probe (half domain, half pool, seeded).
        stability_points: Warm-up steps at which the probe kernel is measured (plus step 0).
        kernel_proj_dim: Features of the stability kernel: 0 for raw LoRA gradients (exact), p > 0
            to project (for large models; skips the projection check).
        approx_rows: Rows of the exact-eNTK probe (every sampled output costs a backward over them).
        approx_outputs: Output logits in the exact eNTK: all V when V is at most this (or 0), else a
            seeded sample of this many, scaled by V/sample.
        projection_dims: The projection dims compared with the raw gradient.
        projection_seeds: Projection seeds averaged per dim.
        projection_top: The share of the probe's pool rows that counts as the top N in the overlap.
        checks: Which of ``stability``, ``approximation``, ``projection`` to run.
        warn_stability: Warn when the NTK stability falls below this.
        warn_spearman: Warn when the exact vs Jacobian-free score rank correlation falls below this.

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    probe_rows: int = _f(64, "rows of the stability / projection probe (half domain, half pool, seeded)", min=2)
    stability_points: int = _f(
        8, "warm-up steps at which the probe kernel is measured (evenly spaced, plus step 0)", min=1
    )
    kernel_proj_dim: int = _f(
        0,
        "features of the stability kernel: 0 = raw LoRA gradients (exact); p > 0 projects (large models; skips the "
        "projection check)",
        min=0,
    )
    approx_rows: int = _f(
        16,
        "rows of the exact-eNTK probe (half domain, half pool; every sampled output costs a backward over them)",
        min=2,
    )
    approx_outputs: int = _f(
        64,
        "output logits in the exact eNTK: all V when V is at most this (or 0), else a seeded sample of this many, "
        "scaled by V/sample",
        min=0,
    )
    projection_dims: list[int] = _f(
        [256, 512, 1024, 2048, 4096, 8192], "projection dims compared with the raw gradient", min=1
    )
    projection_seeds: int = _f(3, "projection seeds averaged per dim", min=1)
    projection_top: float = _f(
        0.25, "share of the probe's pool rows that counts as the top-N in the overlap", gt=0, max=1
    )
    checks: list[str] = _f(
        ["stability", "approximation", "projection"],
        "diagnostics to run",
        choices=("stability", "approximation", "projection"),
    )
    warn_stability: float = _f(0.95, "warn when the NTK stability falls below this", min=-1, max=1)
    warn_spearman: float = _f(
        0.8, "warn when exact vs Jacobian-free score rank correlation falls below this", min=-1, max=1
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class PredictConfig:
    """Kernel ridge regression of ``predict``.

    Args:
        ridge: The ridge regularisation, relative to the mean kernel diagonal.
        predict_cosine: Use the cosine-normalized kernel.

    Raises:
        ConfigError: A field has a wrong type or is out of range (the message names its flag).
    """

    ridge: float = _f(1e-3, "kernel ridge regularisation, relative to the mean kernel diagonal", min=0)
    predict_cosine: bool = _f(False, "use the cosine-normalized kernel")

    def __post_init__(self) -> None:
        check_section(self)


SECTIONS: tuple[type, ...] = (
    ModelConfig,
    DataConfig,
    LoraSettings,
    RunConfig,
    TrainConfig,
    FeatureConfig,
    PreselectConfig,
    IndexConfig,
    EmbedConfig,
    ScoreConfig,
    PoolFilterConfig,
    OutputConfig,
    DiagnoseConfig,
    PredictConfig,
)


def _check_unique_names() -> None:
    seen: dict[str, type] = {}
    for sec in SECTIONS:
        for f in dataclasses.fields(sec):
            assert f.name not in seen, f"config field {f.name} in {sec.__name__} and {seen[f.name].__name__}"
            seen[f.name] = sec


_check_unique_names()


class ConfigError(UserError, ValueError):
    """A config file or value that cannot be used."""


# Sectioned YAML: these names group settings (the attribute names of run_record.SelectConfigs, as
# run.json's "config" writes them, and the argument groups of --help).
SECTION_NAMES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraSettings,
    "run": RunConfig,
    "train": TrainConfig,
    "feature": FeatureConfig,
    "preselect": PreselectConfig,
    "score": ScoreConfig,
    "filters": PoolFilterConfig,
    "poolfilter": PoolFilterConfig,
    "diagnose": DiagnoseConfig,
    "predict": PredictConfig,
    "index": IndexConfig,
    "embed": EmbedConfig,
    "output": OutputConfig,
}
# select's inputs: not settings, but a config file may hold them (a run.json does, in its "select"
# section, so `select --config run.json` replays the run)
INPUT_KEYS = {"domain", "pool", "method"}
KEY_ALIASES = {"lora_rank": "rank"}  # the --lora-rank flag's name, also accepted as a key

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_info(name: str) -> dataclasses.Field:
    for sec in SECTIONS:
        for f in dataclasses.fields(sec):
            if f.name == name:
                return f
    raise ConfigError(f"unknown setting '{name}'{did_you_mean(name)}")


def did_you_mean(name: str, candidates: Any = None) -> str:
    pool = sorted(candidates if candidates is not None else known_names() | set(SECTION_NAMES))
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(kind: str, value: Any, where: str) -> Any:
    """One value of a base type, read as the user meant it (strings parsed as on the command line)."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where} must be true or false, got {_describe(value)}")
    if kind == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a whole number, got {_describe(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise ConfigError(f"{where} must be a whole number, got {_describe(value)}")
    if kind == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {_describe(value)}")
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {_describe(value)}") from None
        else:
            raise ConfigError(f"{where} must be a number, got {_describe(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number, got {_describe(value)}")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be text, got {_describe(value)}")
    if not value.strip():
        raise ConfigError(f"{where} must not be empty")
    return value


def _in_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{where} must be one of {', '.join(map(str, meta['choices']))}, got {_describe(value)}"
            f"{did_you_mean(str(value), meta['choices'])}"
        )
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        raise ConfigError(f"{where} must match {meta['pattern']} (e.g. cpu, cuda, cuda:1), got {_describe(value)}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where} must be at least {meta['min']}, got {_describe(value)}")
    if "gt" in meta and value <= meta["gt"]:
        raise ConfigError(f"{where} must be greater than {meta['gt']}, got {_describe(value)}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where} must be at most {meta['max']}, got {_describe(value)}")
    if "lt" in meta and value >= meta["lt"]:
        raise ConfigError(f"{where} must be less than {meta['lt']}, got {_describe(value)}")


def check_setting(name: str, value: Any, where: str | None = None) -> Any:
    """``value`` typed and range-checked for setting ``name``; ConfigError naming ``where`` (default: the flag)."""
    f = _field_info(name)
    where = where or flag(name)
    kind = str(f.type).replace(" ", "")
    words = f.metadata.get("words", ())
    if words:  # a number, or one of these words (token_budget: a number or auto)
        if isinstance(value, str) and value.strip().lower() in words:
            return value.strip().lower()
        kind = kind.removesuffix("|str")
    optional = kind.endswith("|None")
    kind = kind.removesuffix("|None")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} needs a value, got nothing (null)")
    if kind.startswith("list["):
        item = kind[len("list[") : -1]
        items = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError(
                f"{where} must be a non-empty list of {'text' if item == 'str' else 'whole numbers'}, "
                f"got {_describe(value)}"
            )
        out = [_scalar(item, v, where) for v in items]
        for v in out:
            _in_range(v, f.metadata, where)
        return out
    if isinstance(value, (list, tuple, dict)):
        raise ConfigError(
            f"{where} must be a single {'number' if kind in ('int', 'float') else 'value'}, got {_describe(value)}"
        )
    try:
        out = _scalar(kind, value, where)
    except ConfigError as e:
        if not words:
            raise
        raise ConfigError(
            str(e).replace(" must be a whole number,", f" must be a whole number or {' or '.join(words)},")
        ) from None
    _in_range(out, f.metadata, where)
    return out


def check_section(config: Any) -> None:
    """Type and range-check every field of a config section in place, then the rules between fields."""
    for f in dataclasses.fields(config):
        setattr(config, f.name, check_setting(f.name, getattr(config, f.name)))
    if isinstance(config, PreselectConfig) and config.m is not None and config.n > 0 and config.m < config.n:
        raise ConfigError(
            f"--m {config.m} is smaller than --n {config.n}: pre-selection must keep at least the N "
            f"rows to select (leave --m unset for 4N)"
        )


def check_together(*configs: Any) -> None:
    """Rules between settings of different sections (each section checks its own in __post_init__)."""
    by_type = {type(c): c for c in configs}
    feature, lora = by_type.get(FeatureConfig), by_type.get(LoraSettings)
    if feature is not None and lora is not None and 0 < feature.proj_dim < lora.rank:
        raise ConfigError(
            f"--proj-dim {feature.proj_dim} is smaller than --rank {lora.rank}: the projection needs at "
            f"least as many dims as the LoRA rank (raise --proj-dim, or 0 for raw gradients)"
        )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config: flat ``key: value`` or sectioned ``section: {key: value}``; every value checked.

    Unknown keys and sections are refused with the closest valid name; values are typed and
    range-checked by ``check_setting`` (the message names the file and the key). A ``run.json``
    that ``select`` wrote is read too: its ``config`` holds every resolved setting and the inputs.
    """
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            if str(path).endswith(".json"):
                raw = json.load(fh, object_pairs_hook=_json_object_once(path))
            else:
                raw = yaml.load(fh, Loader=_KeysOnceLoader)  # noqa: S506 - a SafeLoader that refuses repeated keys
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value lines)")
    if isinstance(raw.get("config"), dict) and "versions" in raw:  # a select run.json
        _note_other_release(path, raw.get("versions"))
        raw = raw["config"]
    names = known_names()
    flat: dict[str, Any] = {}
    unknown: list[str] = []

    def put(key: Any, value: Any, prefix: str = "") -> None:
        name = str(key).replace("-", "_")
        name = KEY_ALIASES.get(name, name)
        if name in INPUT_KEYS and isinstance(value, str):
            flat[name] = value
            return
        if name not in names:
            unknown.append(f"'{prefix}{key}'{did_you_mean(name)}")
            return
        if name in flat:
            raise ConfigError(f"{path}: setting '{name}' is given twice")
        flat[name] = check_setting(name, value, f"{path}: {prefix}{key}")

    for key, value in raw.items():
        section = str(key).replace("-", "_")
        if section in SECTION_NAMES and section not in names and not isinstance(value, dict):
            raise ConfigError(
                f"{path}: section '{key}' must be a mapping of settings (indented key: value lines), "
                f"got {'a list' if isinstance(value, list) else _describe(value)}"
            )
        if isinstance(value, dict):
            if str(key).replace("-", "_") not in SECTION_NAMES and key != "select":
                unknown.append(f"section '{key}'{did_you_mean(str(key), SECTION_NAMES)}")
                continue
            for k, v in value.items():
                put(k, v, f"{key}.")
        else:
            put(key, value)
    if unknown:
        raise ConfigError(f"{path}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    return flat


class _KeysOnceLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is refused (PyYAML keeps the last)."""


def _mapping_once(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise ConfigError(f"{loader.name}: setting '{key}' is given twice (lines {seen[key]} and {line}); keep one")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_KeysOnceLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def _json_object_once(path: str | Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ConfigError(f"{path}: setting '{key}' is given twice; keep one")
            out[key] = value
        return out

    return hook


_NOTED_RELEASES: set[str] = set()


def _note_other_release(path: str | Path, versions: Any) -> None:
    """One line when a replayed run.json was written by another release (once per file and process)."""
    import sys

    from ntk_selector.version import __version__

    theirs = versions.get("ntk_selector") if isinstance(versions, dict) else None
    if theirs and theirs != __version__ and str(path) not in _NOTED_RELEASES:
        _NOTED_RELEASES.add(str(path))
        print(
            f"WARNING: {path} was written by ntk-selector {theirs}; this is {__version__}: its settings are replayed, "
            f"but defaults and results may differ",
            file=sys.stderr,
            flush=True,
        )


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
