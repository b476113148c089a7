"""The stages as file-to-file steps (warm-up, embed, featurize, pre-select, score), each resumable
and each usable alone from the CLI; ``pipeline.select`` chains them."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntk_selector.config import (DataConfig, FeatureConfig, LoraSettings, ModelConfig, PreselectConfig, RunConfig,
                                 ScoreConfig, TrainConfig, to_dict)
from ntk_selector.data import RESPONSE_TOKENS, collate, encode
from ntk_selector.embed import mean_pooled
from ntk_selector.errors import UserError
from ntk_selector.gradients import NTK_OBJECTIVES, GradientFeaturizer
from ntk_selector.models import (adapter_lora_settings, fingerprint_folder, load_base_model, load_tokenizer,
                                 model_fingerprint, model_path, resolve_device, resolve_dtype, with_lora)
from ntk_selector.preselect import PreselectResult, default_m_k, reverse_knn
from ntk_selector.projection import PROJECTION_KIND
from ntk_selector.records import Records  # noqa: F401  (re-exported for the stages' callers)
from ntk_selector import distributed
from ntk_selector.runner import fill_store, run_rows, run_texts
from ntk_selector.score import block_rows_for, domain_direction, max_cosine_rows, score_rows
from ntk_selector.files import atomic_open, folder_lock
from ntk_selector.store import (DONE, RowStore, check_same_features, describe_differences, open_store,
                                  write_json_atomic)
from ntk_selector.training import check_adapter_folder, save_adapter_atomic, train_lora
from ntk_selector.train_checkpoint import TrainCheckpoint


@dataclass
class Session:
    """The model (base + LoRA) and tokenizer, loaded once and shared by the stages of a run."""

    model_cfg: ModelConfig
    lora: LoraSettings
    run: RunConfig
    model: torch.nn.Module | None = None
    tokenizer: Any = None
    adapter: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _described: dict[str, dict[str, Any]] = field(default_factory=dict)

    def load(self, adapter: str | None) -> "Session":
        """(Re)attach LoRA: the given adapter, or a fresh seeded one."""
        if self.model is None:
            base, self.tokenizer = load_base_model(self.model_cfg, quiet=self.run.quiet)
        else:
            base = self.model.unload() if hasattr(self.model, "unload") else self.model
        self.model = with_lora(base, self.lora, adapter, self.run.seed)
        self.adapter = adapter
        return self

    def load_tokenizer(self) -> Any:
        """The tokenizer alone (no model): for checks that must come before any model work."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(model_path(self.model_cfg, quiet=self.run.quiet))
        return self.tokenizer

    def describe(self) -> dict[str, Any]:
        """What defines the model side of a result (goes into store definitions); cached per adapter."""
        key = self.adapter or ""
        if key not in self._described:
            path = model_path(self.model_cfg, quiet=True)
            lora = adapter_lora_settings(self.adapter) if self.adapter else self.lora
            device = resolve_device(self.model_cfg.device)
            self._described[key] = {
                "model": path, "model_fingerprint": model_fingerprint(path),
                "tokenizer_fingerprint": fingerprint_folder(path, TOKENIZER_FILES),
                "adapter_fingerprint": adapter_content_fingerprint(self.adapter), "lora": to_dict(lora),
                "compute_dtype": str(resolve_dtype(self.model_cfg.dtype, device)).replace("torch.", ""),
            }
        return dict(self._described[key])


def adapter_content_fingerprint(adapter: str | None) -> str | None:
    """sha256 of an adapter's settings (order-free: PEFT writes target_modules from a set) and weights."""
    if not adapter or not Path(adapter).is_dir():
        return None
    cfg_path = Path(adapter) / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    canonical = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in cfg.items()}
    h = hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode())
    h.update(str(fingerprint_folder(adapter, ("adapter_model.safetensors", "adapter_model.bin"))).encode())
    return h.hexdigest()[:16]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")


def data_definition(records: Records, data_cfg: DataConfig) -> dict[str, Any]:
    return {"data_fingerprint": records.fingerprint, "data_rows": len(records), "max_length": data_cfg.max_length,
            "chat_template": not data_cfg.no_chat_template, "prompt_field": data_cfg.prompt_field,
            "response_field": data_cfg.response_field, "messages_field": data_cfg.messages_field,
            "response_tokens": RESPONSE_TOKENS, "format": records.format}


# ----------------------------------------------------------------------------- warm-up


def check_response_tokens(data: list[Records], tokenizer: Any, data_cfg: DataConfig, warn: bool = True) -> int:
    """Before any model work: warn (on stderr) about rows whose whole response is truncated away by
    --max-length, and refuse when no row has a response token left. Returns the usable rows."""
    usable = 0
    for records in data:
        encoded = encode(records.conversations, tokenizer, data_cfg)
        lost = [i for i, (e, c) in enumerate(zip(encoded, records.conversations))
                if e.n_response_tokens == 0 and c.response.strip()]
        usable += sum(e.n_response_tokens > 0 for e in encoded)
        if lost and warn:
            print(f"WARNING: {len(lost)} of {len(records)} rows of {records.path} lose their whole response to "
                  f"--max-length {data_cfg.max_length} (first at line {records.line(lost[0])}) and are skipped; "
                  f"raise --max-length to keep them", file=sys.stderr, flush=True)
    if usable == 0:
        names = ", ".join(str(r.path) for r in data)
        raise UserError(f"{names}: no example has response tokens left (empty responses, or all truncated away at "
                        f"--max-length {data_cfg.max_length}); raise --max-length")
    return usable


def warmup(session: Session, domain: Records, out: Path, data_cfg: DataConfig, train_cfg: TrainConfig,
           checked: bool = False) -> dict[str, Any]:
    """Train a fresh LoRA on the domain and save it to ``out`` (skipped when already there with the same setup).

    Only our files are written into ``out`` (see training.check_adapter_folder), under the folder's lock.
    ``checked``: the caller already ran check_response_tokens on the domain.
    """
    check_adapter_folder(out, session.run.overwrite)
    with folder_lock(out):
        return _warmup_locked(session, domain, out, data_cfg, train_cfg, checked)


def _warmup_locked(session: Session, domain: Records, out: Path, data_cfg: DataConfig, train_cfg: TrainConfig,
                   checked: bool) -> dict[str, Any]:
    definition = {"stage": "warmup", **session.describe(), **data_definition(domain, data_cfg), "train": to_dict(train_cfg),
                  "seed": session.run.seed}
    state_file = out / "ntk_selector_warmup.json"
    if state_file.exists():
        try:
            state = json.loads(state_file.read_text())
        except (ValueError, UnicodeDecodeError):
            state = {}  # damaged outside our atomic write: redo the warm-up
        if state.get("definition") == json.loads(json.dumps(definition, default=str)) and \
                (out / "adapter_config.json").exists():
            return state["stats"]
        if state and not session.run.overwrite:
            raise UserError(f"{out} holds a warm-up of another setup "
                            f"({describe_differences(state.get('definition', {}), json.loads(json.dumps(definition, default=str)))}); "
                            f"use --overwrite or another output folder")
    check_response_tokens([domain], session.load_tokenizer(), data_cfg, warn=not checked)
    session.load(None)
    checkpoint = TrainCheckpoint(out, definition, session.run.checkpoint_every, session.run.overwrite)
    state_file.unlink(missing_ok=True)  # the marker goes first and comes back last: a half-saved adapter never looks finished
    stats = train_lora(session.model, session.tokenizer, domain.conversations, data_cfg, train_cfg, session.run.seed,
                       quiet=session.run.quiet, desc="warm-up", checkpoint=checkpoint)
    save_adapter_atomic(session.model, out)
    checkpoint.discard()
    write_json_atomic(state_file, {"definition": definition, "stats": stats})
    return stats


# ----------------------------------------------------------------------------- embed / featurize


EMBEDDERS = ("model", "minilm")


def embedding_definition(session: Session, records: Records, data_cfg: DataConfig, embedder: str = "model",
                         embed_max_length: int = 0) -> dict[str, Any]:
    """What determines an embedding store's numbers (the embedder keys only when not the default, so
    stores written before they existed still resume)."""
    if embedder not in EMBEDDERS:
        raise UserError(f"unknown embedder '{embedder}' (choose from {', '.join(EMBEDDERS)})")
    definition = {"stage": "embed", **session.describe(), **data_definition(records, data_cfg)}
    if embedder != "model":
        from ntk_selector.sentence_encoder import SentenceEncoder

        definition.update(embedder=embedder, encoder_fingerprint=SentenceEncoder.fingerprint())
    if embed_max_length > 0:
        definition["embed_max_length"] = int(embed_max_length)
    return definition


def embed(session: Session, records: Records, out: Path, data_cfg: DataConfig, desc: str = "embed",
          embedder: str = "model", embed_max_length: int = 0) -> int:
    """Pre-selection embeddings of every row into a store at ``out`` (resumes; shards over ranks):
    the model's mean-pooled final hidden states, or the MiniLM sentence encoder's. Returns the rows
    computed by this process."""
    definition = embedding_definition(session, records, data_cfg, embedder, embed_max_length)
    if embedder == "minilm":
        from ntk_selector.sentence_encoder import BATCH_ROWS, SentenceEncoder, conversation_text

        encoder = SentenceEncoder(resolve_device(session.model_cfg.device), embed_max_length)

        def work_text(store: RowStore, d: distributed.Dist) -> int:
            return run_texts(records.conversations, session.tokenizer, data_cfg, store,
                             lambda convs: encoder.embed([conversation_text(c) for c in convs]), BATCH_ROWS,
                             desc=desc, quiet=session.run.quiet, rank=d.rank, world=d.world)

        return fill_store(out, len(records), encoder.dim, "float32", definition, session.run.overwrite, work_text)
    dim = int(session.model.config.hidden_size)

    def work(store: RowStore, d: distributed.Dist) -> int:
        return run_rows(records.conversations, session.tokenizer, data_cfg, store,
                        lambda b: mean_pooled(session.model, b, embed_max_length),
                        desc=desc, quiet=session.run.quiet, rank=d.rank, world=d.world)

    return fill_store(out, len(records), dim, "float32", definition, session.run.overwrite, work)


def featurizer_for(session: Session, records: Records, data_cfg: DataConfig, feat_cfg: FeatureConfig) -> GradientFeaturizer:
    probe = None
    if feat_cfg.logits == "auto" and feat_cfg.objective in NTK_OBJECTIVES:
        probe = collate(encode(records.conversations[:2], session.tokenizer, data_cfg), session.tokenizer.pad_token_id)
    cache = feat_cfg.projection_cache_mb * (1 << 20) if feat_cfg.projection_cache_mb > 0 else None
    return GradientFeaturizer(session.model, feat_cfg.proj_dim, session.run.seed, feat_cfg.objective, feat_cfg.logits, probe,
                              cache_bytes=cache)


def feature_definition(session: Session, records: Records, data_cfg: DataConfig, feat_cfg: FeatureConfig) -> dict[str, Any]:
    return {"stage": "featurize", **session.describe(), **data_definition(records, data_cfg),
            "objective": feat_cfg.objective, "logits": feat_cfg.logits, "projection": PROJECTION_KIND[feat_cfg.proj_dim == 0],
            "proj_dim": feat_cfg.proj_dim, "seed": session.run.seed}


def featurize(session: Session, records: Records, out: Path, data_cfg: DataConfig, feat_cfg: FeatureConfig,
              desc: str = "featurize") -> dict[str, Any]:
    """Projected per-sample gradient features of every row into a store at ``out`` (resumes; shards over ranks)."""
    definition = feature_definition(session, records, data_cfg, feat_cfg)
    with featurizer_for(session, records, data_cfg, feat_cfg) as feat:
        # the resolved head mode (shortcut or real logits) changes the numbers, so it is part of the definition
        definition["logits_mode"] = feat.logits_mode

        def work(store: RowStore, d: distributed.Dist) -> int:
            return run_rows(records.conversations, session.tokenizer, data_cfg, store, feat.features, desc=desc,
                            quiet=session.run.quiet, rank=d.rank, world=d.world)

        computed = fill_store(out, len(records), feat.out_dim, feat_cfg.store_dtype, definition, session.run.overwrite, work,
                              extra={"logits_mode": feat.logits_mode, "parameters": [n for n, _ in feat.params]})
        return {"logits_mode": feat.logits_mode, "dim": feat.out_dim, "computed": computed}


# ----------------------------------------------------------------------------- pre-select / score


def preselect(domain_store: Path, pool_store: Path, pre_cfg: PreselectConfig, seed: int,
              exclude: np.ndarray | None = None) -> PreselectResult:
    """Reverse-kNN votes of the domain embeddings over the pool's (rows in ``exclude`` never get votes)."""
    d_emb, d_status, d_meta = open_store(domain_store)
    p_emb, p_status, p_meta = open_store(pool_store)
    check_same_features(domain_store, d_meta, pool_store, p_meta)
    pool_valid = p_status == DONE
    if exclude is not None:
        pool_valid &= ~exclude
    if not (d_status == DONE).any():
        raise UserError(f"{domain_store}: no domain row has response tokens: nothing to vote with")
    m, k = default_m_k(pre_cfg.n, int(pool_valid.sum()), pre_cfg.m, pre_cfg.k)
    return reverse_knn(d_emb, p_emb, m, k, pool_valid=pool_valid, domain_valid=d_status == DONE,
                       index_kind=pre_cfg.knn_search, seed=seed)


def save_preselect(result: PreselectResult, out: Path) -> None:
    with atomic_open(out, "wb") as fh:
        np.savez(fh, votes=result.votes, best_sim=result.best_sim, order=result.order)


def load_preselect(path: Path) -> PreselectResult:
    with np.load(path) as z:
        return PreselectResult(votes=z["votes"], best_sim=z["best_sim"], order=z["order"])


def ntk_scores(domain_store: Path, pool_store: Path, score_cfg: ScoreConfig) -> np.ndarray:
    """Mean inner product (or cosine) of each pool row with the domain rows, read in blocks."""
    d_feat, d_status, d_meta = open_store(domain_store)
    p_feat, p_status, p_meta = open_store(pool_store)
    check_same_features(domain_store, d_meta, pool_store, p_meta)
    if d_feat.shape[1] != p_feat.shape[1]:
        raise UserError(f"{domain_store} has {d_feat.shape[1]} dims but {pool_store} has {p_feat.shape[1]}: featurize both the same way")
    if not (d_status == DONE).any():
        raise UserError(f"{domain_store}: no domain row has response tokens: nothing to score against")
    rows = block_rows_for(d_feat.shape[1], score_cfg.score_block_mb)
    direction = domain_direction(d_feat, d_status, score_cfg.cosine, rows)
    return score_rows(p_feat, p_status, direction, score_cfg.cosine, rows)


def max_cosine_scores(domain_store: Path, pool_store: Path, block_mb: int = 256) -> np.ndarray:
    """LESS-style scores of two checked stores (the rule is score.max_cosine_rows)."""
    d_feat, d_status, d_meta = open_store(domain_store)
    p_feat, p_status, p_meta = open_store(pool_store)
    check_same_features(domain_store, d_meta, pool_store, p_meta)
    if not (d_status == DONE).any():
        raise UserError(f"{domain_store}: no domain row has response tokens: nothing to score against")
    return max_cosine_rows(p_feat, p_status, d_feat, d_status, block_mb)
