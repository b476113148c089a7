"""``index``: the pool paid for once, as a pool index (``PoolIndex``, a folder). One pass over the
pool stores, per row, the pre-selection embedding and the NTK feature of the base model with a
seeded LoRA initialisation (no domain involved), so that ``select --index`` can pick rows for any
number of new domains without running a pool row through the model again.

With the model embedder the embedding is the mean-pooled final hidden state of the very forward
whose backward gives the feature (caught by a hook on the decoder), so a row costs one forward and
one backward. The features are those ``featurize`` writes for the same rows with no adapter: a
fresh PEFT LoRA has B = 0, so the gradients of the A factors are zero at the start and the feature
lives in the B factors (``delta (A x)^T``); the embedding equals the base model's (B = 0 adds nothing).

Layout of an index folder:
- ``embeddings/``, ``features/``  row stores (store.py), row i = pool row i
- ``index.json``  the pool, the definitions of both stores, and completion
Both stores are resumable per row and sharded over ``torchrun`` ranks like every stage; reopening
one with another model, seed, projection, LoRA or data setting is refused (``--overwrite`` starts over).

Three other things are not this: the FAISS structures of the approximate neighbour search
(preselect.build_ann_search, chosen with ``--knn-search``, built in memory per query), the
``pool_index`` field of ``selected.jsonl`` and ``scores.csv`` (a record's 0-based row in the pool
file), and the neighbour search's old flag name ``--index`` (now ``--knn-search``; ``--index flat``
and the like are told so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntk_selector import distributed
from ntk_selector.config import DataConfig, EmbedConfig, FeatureConfig
from ntk_selector.errors import UserError
from ntk_selector.features.embed import pool_hidden
from ntk_selector.features.runner import fill_with, run_rows
from ntk_selector.io.files import ensure_folder, refuse_replacing
from ntk_selector.io.records import Records
from ntk_selector.io.store import DONE, EMPTY, PENDING, RowStore, open_store, read_meta, write_json_atomic
from ntk_selector.io.tokens import Batch
from ntk_selector.model.heads import decoder_of
from ntk_selector.model.session import Session
from ntk_selector.selection.stages import (
    embed,
    embedding_definition,
    feature_definition,
    featurize,
    featurizer_for,
    probe_head,
)

INDEX_META = "index.json"
EMBEDDINGS, FEATURES = "embeddings", "features"
FORMAT = 1
# definition keys that describe the rows themselves (and where a file keeps them), not the space
# they are mapped into; logits_mode follows from the model and --logits, which are compared
DATA_KEYS = (
    "stage",
    "data_fingerprint",
    "data_rows",
    "prompt_field",
    "response_field",
    "messages_field",
    "logits_mode",
)


class PairStore:
    """Two row stores written together: ``write`` takes [features | embedding] columns; a row is done
    once both are (the embedding is written first, so a crash in between recomputes the row)."""

    def __init__(self, embeddings: RowStore, features: RowStore):
        self.embeddings, self.features = embeddings, features

    def status(self) -> np.ndarray:
        e, f = self.embeddings.status(), self.features.status()
        return np.where((e == PENDING) | (f == PENDING), PENDING, f).astype(np.uint8)

    def write(self, rows: np.ndarray, values: np.ndarray, empty: np.ndarray | None = None) -> None:
        p = self.features.dim
        self.embeddings.write(rows, values[:, p:], empty)
        self.features.write(rows, values[:, :p], empty)

    def sync(self) -> None:
        self.embeddings.sync()
        self.features.sync()

    def finish(self, extra: dict[str, Any] | None = None) -> bool:
        return self.embeddings.finish() & self.features.finish(extra)

    def close(self) -> None:
        self.embeddings.close()
        self.features.close()

    def __enter__(self) -> PairStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class HiddenCatcher:
    """Keeps the final hidden states of the decoder's last forward (a forward hook, removed on close)."""

    def __init__(self, model: torch.nn.Module):
        self.hidden: torch.Tensor | None = None
        self._handle = decoder_of(model).register_forward_hook(self._on_forward)

    def _on_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        self.hidden = hidden.detach()

    def close(self) -> None:
        self._handle.remove()


def build_pool_index(
    session: Session, pool: Records, out: Path, data_cfg: DataConfig, feat_cfg: FeatureConfig, embed_cfg: EmbedConfig
) -> dict[str, Any]:
    """Embeddings and base-model NTK features of every pool row into the index at ``out``."""
    if session.model_cfg.adapter:
        raise UserError(
            "index maps the pool with the base model and a seeded LoRA initialisation; --adapter is not used"
        )
    refuse_replacing(out, (INDEX_META,), ((INDEX_META, "definitions"),), session.run.overwrite)  # the user's index.json
    ensure_folder(out)
    if session.run.overwrite and distributed.current().is_main:
        (out / INDEX_META).unlink(missing_ok=True)  # a rebuilt index is advertised again only once complete
    session.load(None)
    emb_def = embedding_definition(session, pool, data_cfg, embed_cfg.embedder, embed_cfg.embed_max_length)
    feat_def = feature_definition(session, pool, data_cfg, feat_cfg)
    quiet = session.run.quiet
    if embed_cfg.embedder == "model":
        head = probe_head(session, pool, data_cfg, feat_cfg)
        with featurizer_for(session, pool, data_cfg, feat_cfg, head) as feat:
            feat_def["logits_mode"] = feat.logits_mode
            catcher = HiddenCatcher(session.model)
            hidden_dim = int(session.model.config.hidden_size)

            def compute(batch: Batch) -> torch.Tensor:
                features = feat.features(batch)
                assert catcher.hidden is not None
                pooled = pool_hidden(
                    catcher.hidden, batch.attention_mask.to(catcher.hidden.device), embed_cfg.embed_max_length
                )
                catcher.hidden = None
                return torch.cat([features, pooled.to(features.device)], 1)

            def open_pair(writer: bool) -> PairStore:
                overwrite = session.run.overwrite and writer
                emb = RowStore(
                    out / EMBEDDINGS, len(pool), hidden_dim, "float32", emb_def, overwrite=overwrite, writer=writer
                )
                try:
                    fs = RowStore(
                        out / FEATURES,
                        len(pool),
                        feat.out_dim,
                        feat_cfg.store_dtype,
                        feat_def,
                        overwrite=overwrite,
                        writer=writer,
                    )
                except BaseException:
                    emb.close()
                    raise
                return PairStore(emb, fs)

            def work(store: PairStore, d: distributed.Dist) -> int:
                return run_rows(
                    pool.conversations,
                    session.tokenizer,
                    data_cfg,
                    store,
                    compute,
                    desc="index pool",
                    quiet=quiet,
                    rank=d.rank,
                    world=d.world,
                    device=next(session.model.parameters()).device,
                    known=head,
                )

            try:
                computed = fill_with(
                    open_pair, work, extra={"logits_mode": feat.logits_mode, "parameters": [n for n, _ in feat.params]}
                )
            finally:
                catcher.close()
    else:
        info = featurize(session, pool, out / FEATURES, data_cfg, feat_cfg, desc="index pool features")
        feat_def["logits_mode"] = info["logits_mode"]
        computed = info["computed"]
        embed(
            session,
            pool,
            out / EMBEDDINGS,
            data_cfg,
            desc="index pool embeddings",
            embedder=embed_cfg.embedder,
            embed_max_length=embed_cfg.embed_max_length,
        )

    def record() -> dict[str, Any]:
        _, status, meta_f = open_store(out / FEATURES)
        seconds = [float(m.get("work_seconds", 0.0)) for m in (meta_f, read_meta(out / EMBEDDINGS))]
        # one pass fills both stores at once with the model embedder; the other embedders run after it
        work_seconds = max(seconds) if embed_cfg.embedder == "model" else sum(seconds)
        meta = {
            "work_seconds": round(work_seconds, 3),
            "format": FORMAT,
            "pool": str(pool.path.resolve()) if pool.path.exists() else str(pool.path),
            "pool_fingerprint": pool.fingerprint,
            "rows": len(pool),
            "embedder": embed_cfg.embedder,
            "embed_max_length": embed_cfg.embed_max_length,
            "definitions": {EMBEDDINGS: emb_def, FEATURES: feat_def},
            "counts": {
                "rows": len(pool),
                "done": int((status == DONE).sum()),
                "no_response_tokens": int((status == EMPTY).sum()),
            },
            "complete": True,
        }
        write_json_atomic(out / INDEX_META, meta)
        return meta

    meta = distributed.on_main(record)
    return {"computed": computed, "meta": meta}


@dataclass
class PoolIndex:
    """A finished pool index, read-only: memmapped embeddings and features, row status, its record."""

    path: Path
    meta: dict[str, Any]
    embeddings: np.ndarray
    features: np.ndarray
    status: np.ndarray

    @property
    def model(self) -> str:
        return self.meta["definitions"][FEATURES]["model"]


def open_pool_index(path: str | Path) -> PoolIndex:
    import json

    path = Path(path)
    if not (path / INDEX_META).exists():
        if not path.exists() and str(path) in ("auto", "flat", "hnsw", "ivf"):
            raise UserError(f"--index names an index folder; the neighbour search ('{path}') is set with --knn-search")
        if path.exists() and (path / EMBEDDINGS).exists():
            raise UserError(f"{path}: index is incomplete; rerun `ntk-selector index` with the same settings to resume")
        raise UserError(
            f"{path}: not an index (no {INDEX_META}); build one with `ntk-selector index --pool P --out {path}`"
        )
    meta = json.loads((path / INDEX_META).read_text())
    emb, emb_status, _ = open_store(path / EMBEDDINGS)
    feat, status, _ = open_store(path / FEATURES)
    if len(emb) != len(feat) or not np.array_equal(emb_status, status):
        raise UserError(f"{path}: its embeddings and features do not cover the same rows; rerun `ntk-selector index`")
    return PoolIndex(path, meta, emb, feat, status)


def pool_index_settings(path: str | Path) -> dict[str, Any]:
    """The settings an index was built with, as config values (``select --index`` starts from them,
    below a config file and the command line). Empty when the folder holds no finished index."""
    import json

    meta_path = Path(path) / INDEX_META
    if not meta_path.exists():
        return {}
    meta = json.loads(meta_path.read_text())
    feat = meta["definitions"][FEATURES]
    lora = feat["lora"]
    return {
        "model": feat["model"],
        "rank": lora["rank"],
        "lora_alpha": lora["lora_alpha"],
        "lora_dropout": lora["lora_dropout"],
        "target_modules": list(lora["target_modules"]),
        "seed": feat["seed"],
        "proj_dim": feat["proj_dim"],
        "projection_dtype": feat.get("projection_dtype", "float32"),
        "objective": feat["objective"],
        "logits": feat["logits"],
        "max_length": feat["max_length"],
        "no_chat_template": not feat["chat_template"],
        "embedder": meta["embedder"],
        "embed_max_length": meta["embed_max_length"],
    }


def space_differences(index_definition: dict[str, Any], mine: dict[str, Any]) -> str:
    """What maps rows differently in ``mine`` than in the index (the rows themselves aside)."""
    from ntk_selector.io.definitions import describe_differences

    a = {k: v for k, v in index_definition.items() if k not in DATA_KEYS}
    b = {k: v for k, v in mine.items() if k not in DATA_KEYS}
    return describe_differences(a, b)
