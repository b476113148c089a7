"""The stages as file-to-file steps (warm-up, embed, featurize, pre-select, score), each resumable
and each usable alone from the CLI; ``pipeline.select`` chains them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector import distributed
from ntk_selector.config import DataConfig, FeatureConfig, PreselectConfig, ScoreConfig, TrainConfig, to_dict
from ntk_selector.errors import UserError
from ntk_selector.features.embed import mean_pooled
from ntk_selector.features.gradients import NTK_OBJECTIVES, GradientFeaturizer
from ntk_selector.features.projection import PROJECTION_KIND
from ntk_selector.features.runner import fill_store, run_rows, run_texts
from ntk_selector.io.definitions import canonical, describe_differences, read_state, reuse_or_refuse
from ntk_selector.io.files import atomic_open, folder_lock
from ntk_selector.io.records import Records
from ntk_selector.io.store import (
    DONE,
    RowStore,
    check_same_features,
    open_store,
    read_meta,
    write_json_atomic,
)
from ntk_selector.io.tokens import Encoded, collate, data_definition, encode, encode_checked
from ntk_selector.model.loading import resolve_device
from ntk_selector.model.session import Session
from ntk_selector.selection.preselect import PreselectResult, default_m_k, reverse_knn, warn_clamped
from ntk_selector.selection.score import block_rows_for, domain_direction, max_cosine_rows, score_rows
from ntk_selector.training.checkpoint import TrainCheckpoint
from ntk_selector.training.loop import check_adapter_folder, save_adapter_atomic, train_lora

# ----------------------------------------------------------------------------- warm-up


def warmup(
    session: Session,
    domain: Records,
    out: Path,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    encoded: list[Encoded] | None = None,
) -> dict[str, Any]:
    """Train a fresh LoRA on the domain and save it to ``out`` (skipped when already there with the same setup).

    Only our files are written into ``out`` (see training.check_adapter_folder), under the folder's lock.
    ``encoded``: the domain's encodings, when the caller already checked them (tokens.encode_checked):
    the warm-up trains on them instead of tokenizing the domain again.
    """
    check_adapter_folder(out, session.run.overwrite)
    with folder_lock(out):
        return _warmup_locked(session, domain, out, data_cfg, train_cfg, encoded)


def _warmup_locked(
    session: Session,
    domain: Records,
    out: Path,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    encoded: list[Encoded] | None,
) -> dict[str, Any]:
    definition = {
        "stage": "warmup",
        **session.describe(),
        **data_definition(domain, data_cfg),
        "train": to_dict(train_cfg),
        "seed": session.run.seed,
    }
    state_file = out / "ntk_selector_warmup.json"
    state = read_state(state_file) or {}  # absent, or damaged outside our atomic write: redo the warm-up
    if reuse_or_refuse(
        state.get("definition"),
        definition,
        f"{out} holds a warm-up of another setup",
        ready=(out / "adapter_config.json").exists(),
        overwrite=session.run.overwrite,
    ):
        return state["stats"]
    if encoded is None:
        encoded = encode_checked([domain], session.load_tokenizer(), data_cfg)[0]
    session.load(None)
    checkpoint = TrainCheckpoint(out, definition, session.run.checkpoint_every, session.run.overwrite)
    state_file.unlink(
        missing_ok=True
    )  # the marker goes first and comes back last: a half-saved adapter never looks finished
    stats = train_lora(
        session.model,
        session.tokenizer,
        domain.conversations,
        data_cfg,
        train_cfg,
        session.run.seed,
        quiet=session.run.quiet,
        desc="warm-up",
        checkpoint=checkpoint,
        encoded=encoded,
    )
    save_adapter_atomic(session.model, out)
    checkpoint.discard()
    write_json_atomic(state_file, {"definition": definition, "stats": stats})
    return stats


# ----------------------------------------------------------------------------- embed / featurize


def model_device(model: Any) -> Any:
    """The device a model's parameters are on (where a stage's batches run)."""
    return next(model.parameters()).device


EMBEDDERS = ("model", "minilm")


def embedding_definition(
    session: Session, records: Records, data_cfg: DataConfig, embedder: str = "model", embed_max_length: int = 0
) -> dict[str, Any]:
    """What determines an embedding store's numbers (the embedder keys only when not the default, so
    stores written before they existed still resume)."""
    if embedder not in EMBEDDERS:
        raise UserError(f"unknown embedder '{embedder}' (choose from {', '.join(EMBEDDERS)})")
    definition = {"stage": "embed", **session.describe(), **data_definition(records, data_cfg)}
    if embedder != "model":
        from ntk_selector.model.sentence_encoder import SentenceEncoder

        definition.update(embedder=embedder, encoder_fingerprint=SentenceEncoder.fingerprint())
    if embed_max_length > 0:
        definition["embed_max_length"] = int(embed_max_length)
    return definition


def embed(
    session: Session,
    records: Records,
    out: Path,
    data_cfg: DataConfig,
    desc: str = "embed",
    embedder: str = "model",
    embed_max_length: int = 0,
) -> int:
    """Pre-selection embeddings of every row into a store at ``out`` (resumes; shards over ranks):
    the model's mean-pooled final hidden states, or the MiniLM sentence encoder's. Returns the rows
    computed by this process."""
    definition = embedding_definition(session, records, data_cfg, embedder, embed_max_length)
    if embedder == "minilm":
        from ntk_selector.io.formats import conversation_text
        from ntk_selector.model.sentence_encoder import BATCH_ROWS, SentenceEncoder

        encoder = SentenceEncoder(resolve_device(session.model_cfg.device), embed_max_length)

        def work_text(store: RowStore, d: distributed.Dist) -> int:
            return run_texts(
                records.conversations,
                session.tokenizer,
                data_cfg,
                store,
                lambda convs: encoder.embed([conversation_text(c) for c in convs]),
                BATCH_ROWS,
                desc=desc,
                quiet=session.run.quiet,
                rank=d.rank,
                world=d.world,
            )

        return fill_store(out, len(records), encoder.dim, "float32", definition, session.run.overwrite, work_text)
    dim = int(session.model.config.hidden_size)

    def work(store: RowStore, d: distributed.Dist) -> int:
        return run_rows(
            records.conversations,
            session.tokenizer,
            data_cfg,
            store,
            lambda b: mean_pooled(session.model, b, embed_max_length),
            desc=desc,
            quiet=session.run.quiet,
            rank=d.rank,
            world=d.world,
            device=model_device(session.model),
        )

    return fill_store(out, len(records), dim, "float32", definition, session.run.overwrite, work)


def probe_head(session: Session, records: Records, data_cfg: DataConfig, feat_cfg: FeatureConfig) -> list[Encoded]:
    """Encodings of the first rows when the featurizer needs a probe batch (to find whether the head is
    linear), else none; the stage's run reuses them (run_rows ``known``) instead of encoding them again."""
    if feat_cfg.logits == "auto" and feat_cfg.objective in NTK_OBJECTIVES:
        return encode(records.conversations[:2], session.tokenizer, data_cfg)
    return []


def featurizer_for(
    session: Session, records: Records, data_cfg: DataConfig, feat_cfg: FeatureConfig, head: list[Encoded] | None = None
) -> GradientFeaturizer:
    """The stage's featurizer; ``head``: probe_head's encodings when the caller keeps them."""
    head = probe_head(session, records, data_cfg, feat_cfg) if head is None else head
    probe = collate(head, session.tokenizer.pad_token_id) if head else None
    cache = feat_cfg.projection_cache_mb * (1 << 20) if feat_cfg.projection_cache_mb > 0 else None
    return GradientFeaturizer(
        session.model,
        feat_cfg.proj_dim,
        session.run.seed,
        feat_cfg.objective,
        feat_cfg.logits,
        probe,
        cache_bytes=cache,
        projection_dtype=feat_cfg.projection_dtype,
    )


def feature_definition(
    session: Session, records: Records, data_cfg: DataConfig, feat_cfg: FeatureConfig
) -> dict[str, Any]:
    """What determines a feature store's numbers (``projection_dtype`` only when not the default float32,
    so stores written before it existed still resume)."""
    definition = {
        "stage": "featurize",
        **session.describe(),
        **data_definition(records, data_cfg),
        "objective": feat_cfg.objective,
        "logits": feat_cfg.logits,
        "projection": PROJECTION_KIND[feat_cfg.proj_dim == 0],
        "proj_dim": feat_cfg.proj_dim,
        "seed": session.run.seed,
    }
    if feat_cfg.proj_dim > 0 and feat_cfg.projection_dtype != "float32":
        definition["projection_dtype"] = feat_cfg.projection_dtype
    return definition


def featurize(
    session: Session,
    records: Records,
    out: Path,
    data_cfg: DataConfig,
    feat_cfg: FeatureConfig,
    desc: str = "featurize",
) -> dict[str, Any]:
    """Projected per-sample gradient features of every row into a store at ``out`` (resumes; shards over ranks)."""
    definition = feature_definition(session, records, data_cfg, feat_cfg)
    head = probe_head(session, records, data_cfg, feat_cfg)
    with featurizer_for(session, records, data_cfg, feat_cfg, head) as feat:
        # the resolved head mode (shortcut or real logits) changes the numbers, so it is part of the definition
        definition["logits_mode"] = feat.logits_mode

        def work(store: RowStore, d: distributed.Dist) -> int:
            return run_rows(
                records.conversations,
                session.tokenizer,
                data_cfg,
                store,
                feat.features,
                desc=desc,
                quiet=session.run.quiet,
                rank=d.rank,
                world=d.world,
                device=model_device(session.model),
                known=head,
            )

        computed = fill_store(
            out,
            len(records),
            feat.out_dim,
            feat_cfg.store_dtype,
            definition,
            session.run.overwrite,
            work,
            extra={"logits_mode": feat.logits_mode, "parameters": [n for n, _ in feat.params]},
        )
        return {"logits_mode": feat.logits_mode, "dim": feat.out_dim, "computed": computed}


# ----------------------------------------------------------------------------- pre-select / score


def preselect(
    domain_store: Path, pool_store: Path, pre_cfg: PreselectConfig, seed: int, exclude: np.ndarray | None = None
) -> PreselectResult:
    """Reverse-kNN votes of the domain embeddings over the pool's (rows in ``exclude`` never get votes)."""
    d_emb, d_status, d_meta = open_store(domain_store)
    p_emb, p_status, p_meta = open_store(pool_store)
    check_same_features(domain_store, d_meta, pool_store, p_meta)
    pool_valid = p_status == DONE
    if exclude is not None:
        pool_valid &= ~exclude
    if not (d_status == DONE).any():
        raise UserError(f"{domain_store}: no domain row has response tokens: nothing to vote with")
    warn_clamped(int(pool_valid.sum()), pre_cfg.m, pre_cfg.k)
    m, k = default_m_k(pre_cfg.n, int(pool_valid.sum()), pre_cfg.m, pre_cfg.k)
    return reverse_knn(
        d_emb,
        p_emb,
        m,
        k,
        pool_valid=pool_valid,
        domain_valid=d_status == DONE,
        knn_search=pre_cfg.knn_search,
        seed=seed,
    )


def preselect_definition(domain_store: Path, pool_store: Path, pre_cfg: PreselectConfig, seed: int) -> dict[str, Any]:
    """What a pre-selection was made from: both embedding stores' definitions, the settings and the seed."""
    return canonical(
        {
            "stage": "preselect",
            "domain": store_definition(domain_store),
            "pool": store_definition(pool_store),
            "preselect": to_dict(pre_cfg),
            "seed": seed,
        }
    )


def store_definition(store: Path) -> Any:
    """A store's recorded definition, or a one-line error when ``store`` is not a store."""
    if not (Path(store) / "meta.json").is_file():
        raise UserError(f"{store}: not a store (no meta.json); make it with the stage that writes it")
    return read_meta(store).get("definition")


def _saved_definition(path: Path) -> dict[str, Any] | None:
    """The definition a pre-selection file of ours holds ({} for one written before definitions were
    saved); None when the file is not one of ours."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not {"votes", "best_sim", "order"} <= set(z.files):
                return None
            return json.loads(str(z["definition"])) if "definition" in z.files else {}
    except Exception:  # noqa: BLE001 - whatever else the file is, it is not ours
        return None


def check_preselect_out(out: Path, definition: dict[str, Any], overwrite: bool) -> None:
    """preselect writes one file: refuse a folder, a dangling link, a file we did not write, or a
    pre-selection of other settings (unless ``overwrite``), before any work."""
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a symbolic link to a missing target; remove the link or give a new file path")
    if out.is_dir():
        raise UserError(
            f"--out {out} is a folder; preselect writes one .npz file: give a file path such as {out / 'preselect.npz'}"
        )
    if not out.exists() or overwrite:
        return
    saved = _saved_definition(out)
    if saved is None:
        raise UserError(
            f"--out {out} already exists and was not written by preselect; choose another file name, "
            f"or --overwrite to replace it"
        )
    if saved != definition:
        what = describe_differences(saved, definition) if saved else "its settings were not recorded"
        raise UserError(
            f"--out {out} holds a pre-selection of other settings ({what}); choose another file name, "
            f"or --overwrite to replace it"
        )


def save_preselect(result: PreselectResult, out: Path, definition: dict[str, Any] | None = None) -> None:
    extra = {} if definition is None else {"definition": np.array(json.dumps(definition, sort_keys=True))}
    with atomic_open(out, "wb") as fh:
        np.savez(fh, votes=result.votes, best_sim=result.best_sim, order=result.order, **extra)


def load_preselect(path: Path) -> PreselectResult:
    with np.load(path) as z:
        return PreselectResult(votes=z["votes"], best_sim=z["best_sim"], order=z["order"])


def ntk_scores(domain_store: Path, pool_store: Path, score_cfg: ScoreConfig) -> np.ndarray:
    """Mean inner product (or cosine) of each pool row with the domain rows, read in blocks."""
    d_feat, d_status, d_meta = open_store(domain_store)
    p_feat, p_status, p_meta = open_store(pool_store)
    check_same_features(domain_store, d_meta, pool_store, p_meta)
    if d_feat.shape[1] != p_feat.shape[1]:
        raise UserError(
            f"{domain_store} has {d_feat.shape[1]} dims but {pool_store} has {p_feat.shape[1]}: featurize both the "
            "same way"
        )
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
