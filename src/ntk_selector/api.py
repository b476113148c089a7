"""The library's front door, for notebooks and scripts: ``select`` returns the selection itself,
``index`` indexes a pool once for many domains, and ``embed``, ``featurize``, ``load_features``,
``score``, ``train`` and ``evaluate`` run one stage each.

Settings are keyword arguments named like the command line's flags (``proj_dim=1024`` is
``--proj-dim 1024``; ``config="settings.yaml"`` is ``--config``), turned into the typed configs by
the same code as the flags (settings.py), and checked before any work: a wrong name or value is a
UserError that names the setting. Each function is a thin layer over the stage functions the
command line calls, so both give the same files for the same settings.

Records may be given as a path (anything ``--domain`` / ``--data`` takes), a list of dicts, a
``datasets.Dataset`` or a ``datasets.DatasetDict`` (its split chosen by ``split=``, as ``--split``).
In-memory records are saved to a temporary folder first (a Dataset as Arrow, a list of dicts as
JSONL); the same records give the same files and so the same fingerprint, so resuming and the output
files work exactly as for files. An error in such records names the argument and the record's
0-based index (``pool[10]: missing field 'response'``), never the temporary file.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector import distributed
from ntk_selector.analysis.evaluate import run_evaluate
from ntk_selector.config import (
    SECTIONS,
    DataConfig,
    EmbedConfig,
    FeatureConfig,
    LoraSettings,
    ModelConfig,
    RunConfig,
    ScoreConfig,
    TrainConfig,
)
from ntk_selector.errors import UserError
from ntk_selector.io.files import write_text_atomic
from ntk_selector.io.outputs import our_fields, user_record
from ntk_selector.io.records import Records, datasets_quiet
from ntk_selector.io.store import open_store
from ntk_selector.model.session import Session
from ntk_selector.selection import stages
from ntk_selector.selection.index import build_pool_index
from ntk_selector.selection.index_select import select_with_index
from ntk_selector.selection.pipeline import select as run_pipeline
from ntk_selector.selection.run_record import SelectConfigs
from ntk_selector.settings import MODEL_SECTIONS, configs_from_settings
from ntk_selector.training.finetune import finetune

# ----------------------------------------------------------------------------- select


@dataclass
class Selection:
    """What ``select`` picked. Everything is held in memory, so a Selection outlives its folder.

    ``scores`` holds what the method ranks by (the last column of scores.csv, named by what it
    holds): the mean NTK inner product (or cosine) for ``ntk`` (``ntk_score``), reverse-kNN votes for
    ``embedding`` (``embedding_votes``), the maximum cosine for ``less`` (``less_max_cosine``), and
    NaN for the random methods (``no_score``). ``len(sel)`` is N.

    Attributes:
        indices: int64 [N], the selected 0-based pool rows, best first.
        scores: float64 [N], each selected row's score.
        votes: int64 [N], each selected row's reverse-kNN votes.
        records: The selected pool records as given (every field unchanged), best first.
        summary: The run's ``run.json``: settings, versions, counts, seconds per stage.
        out: The output folder; None when ``select`` ran in a temporary folder (since removed).
        pool_scores: float64 [pool], every pool row's score (NaN: not scored).
        pool_votes: int64 [pool], every pool row's reverse-kNN votes.
        preselected: bool [pool], whether the reverse-kNN pre-selection kept the row.
    """

    indices: np.ndarray  # int64 [N]: 0-based pool rows, best first
    scores: np.ndarray  # float64 [N]: each selected row's score
    votes: np.ndarray  # int64 [N]: each selected row's reverse-kNN votes
    records: list[dict[str, Any]]  # the selected pool records as given, best first
    summary: dict[str, Any]  # run.json
    out: Path | None  # the output folder; None when select ran in a temporary folder (since removed)
    pool_scores: np.ndarray = field(repr=False)  # float64 [pool]: every pool row's score (NaN: not scored)
    pool_votes: np.ndarray = field(repr=False)  # int64 [pool]
    preselected: np.ndarray = field(repr=False)  # bool [pool]: kept by the reverse-kNN pre-selection

    def __len__(self) -> int:
        return len(self.indices)

    def to_jsonl(self, path: str | Path) -> Path:
        """Write the selected records, as given, one JSON object a line (e.g. for ``train``).

        Args:
            path: The JSONL file to write; its folder is created if needed.

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records))
        return path

    def to_dataset(self) -> Any:
        """The selected records as a ``datasets.Dataset``.

        Returns:
            A ``datasets.Dataset`` with one row per selected record, best first.

        Raises:
            UserError: The ``datasets`` package is not installed.
        """
        try:
            import datasets
        except ImportError:
            raise UserError("Selection.to_dataset needs the datasets package (pip install datasets)") from None
        return datasets.Dataset.from_list(self.records)


def select(
    domain: Any,
    pool: Any,
    n: int,
    *,
    method: str = "ntk",
    model: str | Path | None = None,
    out: str | Path | None = None,
    **settings: Any,
) -> Selection | None:
    """Pick ``n`` rows of ``pool`` for the domain; the same run as ``ntk-selector select``.

    ``out`` receives selected.jsonl, scores.csv, run.json, the report and stages/; a rerun there
    resumes. With ``out=None`` the run happens in a temporary folder that is removed before this
    returns: the Selection copies what it holds out of it first, and its ``out`` is None (pass
    ``out`` to keep the files, or to run under torchrun, where ranks other than 0 get None).

    Args:
        domain: The domain set D: a path (anything ``--domain`` takes), a list of dicts or a
            ``datasets.Dataset``.
        pool: The pool C, in the same forms; None with ``index=``, where the pool is the indexed file.
        n: How many pool rows to select (N).
        method: ``ntk`` (the paper's method), ``random``, ``embedding``, ``preselect-random`` or ``less``.
        model: An HF model folder or hub id; None for the packaged SmolLM2-135M-Instruct.
        out: The output folder; None for a temporary one.
        **settings: Any setting by its flag's name (``proj_dim=4096``, ``max_length=1024``,
            ``index="stores/pool-index"``, ``config="settings.yaml"``); see the configuration page.

    Returns:
        The Selection; None on ranks other than 0 of a torchrun job.

    Raises:
        UserError: A setting has an unknown name or a wrong value, an input cannot be read (a
            ``DataError`` names the file, line and field), or ``out`` holds a run of another
            configuration (``overwrite=True`` starts over).
    """
    settings = dict(settings, n=n)
    if model is not None:
        settings["model"] = model
    cfg = SelectConfigs.from_sections(configs_from_settings(settings, "select", SECTIONS), method=method)
    if out is not None:
        return _select_into(domain, pool, Path(out), cfg, keep=True)
    with tempfile.TemporaryDirectory(prefix="ntk-selector-") as tmp:
        return _select_into(domain, pool, Path(tmp), cfg, keep=False)


def select_files(
    domain_path: str | Path, pool_path: str | Path | None, out_dir: str | Path, cfg: SelectConfigs
) -> dict[str, Any] | None:
    """The select run on record files: against an index when ``cfg.index.index`` names one, else the
    full pipeline; returns run.json's summary (None on ranks other than 0). The CLI's entry too."""
    if cfg.index.index:
        return select_with_index(domain_path, pool_path, out_dir, cfg)
    return run_pipeline(domain_path, pool_path, out_dir, cfg)


def _select_into(domain: Any, pool: Any, out: Path, cfg: SelectConfigs, keep: bool) -> Selection | None:
    inputs = out / "inputs"
    domain, pool = _one_split(domain, cfg.data.split, "domain"), _one_split(pool, cfg.data.split, "pool")
    domain_path = _as_file(domain, inputs, "domain")
    pool_path = None if pool is None else _as_file(pool, inputs, "pool")
    with _named_inputs({domain_path: (domain, "domain"), pool_path: (pool, "pool")}):
        summary = select_files(domain_path, pool_path, out, cfg)
    if summary is None:
        return None
    pool_votes, preselected, pool_scores = _read_scores(out / "scores.csv")
    rows = [json.loads(line) for line in (out / "selected.jsonl").read_text(encoding="utf-8").split("\n") if line]
    indices = np.array([our_fields(r)["pool_index"] for r in rows], dtype=np.int64)
    if _in_memory(pool):
        records = [dict(pool[int(i)]) for i in indices]
    else:
        records = [user_record(r) for r in rows]  # the user's fields, also ones named like ours
    return Selection(
        indices=indices,
        scores=pool_scores[indices],
        votes=pool_votes[indices],
        records=records,
        summary=summary,
        out=out if keep else None,
        pool_scores=pool_scores,
        pool_votes=pool_votes,
        preselected=preselected,
    )


def _read_scores(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(votes, preselected, scores) of every pool row from scores.csv (an empty score is NaN)."""
    table = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.float64, ndmin=2)
    return table[:, 1].astype(np.int64), table[:, 2].astype(bool), table[:, 3]


# ----------------------------------------------------------------------------- records in memory


def _is_dataset(data: Any) -> bool:
    """A datasets.Dataset; the package is only looked at when it is already imported (it is optional)."""
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(data, datasets.Dataset)


def _in_memory(data: Any) -> bool:
    return _is_dataset(data) or isinstance(data, (list, tuple))


def _one_split(data: Any, split: str | None, name: str) -> Any:
    """A ``datasets.DatasetDict`` as its one split (``split=``, or its only split); anything else as is."""
    datasets = sys.modules.get("datasets")
    if datasets is None or not isinstance(data, datasets.DatasetDict):
        return data
    from ntk_selector.io.records import pick_split

    return pick_split(data, split, name, flag="split=")


@contextmanager
def _named_inputs(named: Mapping[Path | None, tuple[Any, str]]) -> Iterator[None]:
    """Errors that name the temporary file of in-memory records name the argument and the record's
    0-based index instead (``pool[10]: ...``): the temporary is gone when the caller reads the message."""
    try:
        yield
    except UserError as e:
        text = str(e)
        for path, (data, name) in named.items():
            if path is None or not _in_memory(data):
                continue
            # a list is written one record a line (line = index + 1); a Dataset is named by 1-based row
            text = re.sub(re.escape(str(path)) + r":(\d+)", lambda m, n=name: f"{n}[{int(m.group(1)) - 1}]", text)
            text = text.replace(str(path), name)
        if text == str(e):
            raise
        raise type(e)(text) from None


def _as_file(data: Any, folder: Path, name: str) -> Path:
    """A path as is; a ``datasets.Dataset`` saved as Arrow to ``folder/name`` (written by Arrow in
    batches, never as Python dicts, and memory-mapped again by every process that reads it); a list
    of dicts written to ``folder/name.jsonl``. The same records give the same files, hence the same
    fingerprint, so a rerun resumes."""
    if isinstance(data, (str, Path)) or hasattr(data, "__fspath__"):
        return Path(data)
    if not _in_memory(data):
        raise UserError(
            f"{name}: expected a path, a list of dicts, a datasets.Dataset or DatasetDict, got {type(data).__name__}"
        )
    if len(data) == 0:
        raise UserError(f"{name}: no records (empty list)")
    if _is_dataset(data):
        path = folder / name
        with datasets_quiet():
            data.save_to_disk(str(path))  # a selected/shuffled view is saved as its rows, in its order
        return path
    lines = []
    for i, record in enumerate(data):
        if not isinstance(record, Mapping):
            raise UserError(f"{name}: record {i} is a {type(record).__name__}, not a dict")
        try:
            lines.append(json.dumps(dict(record), ensure_ascii=False) + "\n")
        except (TypeError, ValueError) as e:
            raise UserError(f"{name}: record {i} cannot be written as JSON ({e})") from None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    write_text_atomic(path, "".join(lines))
    return path


@contextmanager
def _files(data: Any, name: str, single: bool = False, split: str | None = None) -> Iterator[list[Path]]:
    """Paths for one input or several (a list of paths / record lists / Selections); in-memory
    records live in a temporary folder for the duration (errors name them as ``name[index]``)."""
    items = [data] if not isinstance(data, (list, tuple)) or (data and isinstance(data[0], Mapping)) else list(data)
    if single and len(items) != 1:
        raise UserError(f"{name}: expected one path, list of dicts or datasets.Dataset, got {len(items)} inputs")
    items = [_one_split(item.records if isinstance(item, Selection) else item, split, name) for item in items]
    labels = [name if len(items) == 1 else f"{name}[{i}]" for i in range(len(items))]
    with tempfile.TemporaryDirectory(prefix="ntk-selector-inputs-") as tmp:
        paths = [_as_file(item, Path(tmp), f"{name}{i}") for i, item in enumerate(items)]
        with _named_inputs({p: (item, label) for p, item, label in zip(paths, items, labels, strict=True)}):
            yield paths


@contextmanager
def _records_and_session(data: Any, c: dict[type, Any]) -> Iterator[tuple[Records, Session]]:
    """One input's records and a session with the configured model (and adapter), on every rank."""
    with _files(data, "data", single=True, split=c[DataConfig].split) as (path,):
        records = distributed.all_ranks(lambda: Records.load(path, c[DataConfig]))
        yield (
            records,
            distributed.all_ranks(
                lambda: Session(c[ModelConfig], c[LoraSettings], c[RunConfig]).load(c[ModelConfig].adapter)
            ),
        )


def _with_model(settings: dict[str, Any], **given: Any) -> dict[str, Any]:
    return {**settings, **{k: v for k, v in given.items() if v is not None}}


# ----------------------------------------------------------------------------- one stage each


def featurize(
    data: Any, out: str | Path, *, model: str | Path | None = None, adapter: str | Path | None = None, **settings: Any
) -> dict[str, Any]:
    """Projected per-sample LoRA gradient features of every row into the store ``out``.

    The same as ``ntk-selector featurize``; a rerun on the same store computes only missing rows.

    Args:
        data: The records: a path, a list of dicts or a ``datasets.Dataset``.
        out: The feature store folder (``features.npy``, ``status.npy``, ``checksums.npy``, ``meta.json``).
        model: An HF model folder or hub id; None for the packaged default model.
        adapter: A PEFT adapter folder (the warm-up's); None for a fresh seeded LoRA.
        **settings: Settings by flag name (``proj_dim``, ``objective``, ``max_length``, ``seed``, ...).

    Returns:
        The store's feature dim, logits mode (shortcut or full) and the rows computed by this call.

    Raises:
        UserError: A bad setting or record, or ``out`` holds a store of another configuration.
    """
    c = configs_from_settings(
        _with_model(settings, model=model, adapter=adapter), "featurize", MODEL_SECTIONS + (FeatureConfig,)
    )
    with _records_and_session(data, c) as (records, session):
        return stages.featurize(session, records, Path(out), c[DataConfig], c[FeatureConfig])


def embed(
    data: Any, out: str | Path, *, model: str | Path | None = None, adapter: str | Path | None = None, **settings: Any
) -> int:
    """Pre-selection embeddings of every row into the store ``out``.

    The same as ``ntk-selector embed`` (resumes): the model's mean-pooled final hidden states, or with
    ``embedder="minilm"`` the packaged sentence encoder's. Read them with ``load_features(out)``.

    Args:
        data: The records: a path, a list of dicts or a ``datasets.Dataset``.
        out: The embedding store folder.
        model: An HF model folder or hub id; None for the packaged default model.
        adapter: A PEFT adapter folder (the warm-up's, for the paper's mode).
        **settings: Settings by flag name (``embedder``, ``embed_max_length``, ``max_length``, ...).

    Returns:
        The number of rows computed by this call (0 when the store was complete).

    Raises:
        UserError: A bad setting or record, or ``out`` holds a store of another configuration.
    """
    c = configs_from_settings(
        _with_model(settings, model=model, adapter=adapter), "embed", MODEL_SECTIONS + (EmbedConfig,)
    )
    with _records_and_session(data, c) as (records, session):
        return stages.embed(
            session,
            records,
            Path(out),
            c[DataConfig],
            embedder=c[EmbedConfig].embedder,
            embed_max_length=c[EmbedConfig].embed_max_length,
        )


def index(pool: Any, out: str | Path, *, model: str | Path | None = None, **settings: Any) -> dict[str, Any]:
    """Index the pool once (as ``ntk-selector index``; resumes): per row its pre-selection embedding
    and the NTK feature of the base model with a seeded LoRA, no domain involved. Then
    ``select(domain, None, n, index=out)`` serves any number of domains without running a pool row
    through the model again.

    Args:
        pool: The pool: a path, a list of dicts or a ``datasets.Dataset``.
        out: The index folder (``embeddings/`` and ``features/`` stores and the index's settings).
        model: An HF model folder or hub id; None for the packaged default model.
        **settings: Settings by flag name (``proj_dim``, ``max_length``, ``embedder``, ``seed``, ...).

    Returns:
        What the index build reports: its rows and the rows computed by this call.

    Raises:
        UserError: A bad setting or record, or ``out`` holds an index built with other settings.
    """
    c = configs_from_settings(
        _with_model(settings, model=model), "index", MODEL_SECTIONS + (FeatureConfig, EmbedConfig)
    )
    with _files(pool, "pool", single=True, split=c[DataConfig].split) as (path,):
        records = distributed.all_ranks(lambda: Records.load(path, c[DataConfig]))
        session = Session(c[ModelConfig], c[LoraSettings], c[RunConfig])
        return build_pool_index(session, records, Path(out), c[DataConfig], c[FeatureConfig], c[EmbedConfig])


def load_features(store: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A finished feature store: (features as a read-only numpy memmap [rows, dim], meta.json).

    Row i is input row i; which rows had no response tokens is in ``store/status.npy``
    (0 pending, 1 done, 2 no response tokens).

    Args:
        store: A store folder written by ``featurize``, ``embed`` or ``index``.

    Returns:
        The features as a read-only numpy memmap of shape [rows, dim], and the store's meta.json.

    Raises:
        UserError: The folder is not a store, or its rows are not all written.
    """
    features, _, meta = open_store(store)
    return features, meta


def score(domain_features: str | Path, pool_features: str | Path, **settings: Any) -> np.ndarray:
    """Each pool row's NTK score against the domain, from two feature stores.

    The mean inner product with the domain's features (``cosine=True`` for the mean cosine), as
    ``ntk-selector score``.

    Args:
        domain_features: The domain's feature store.
        pool_features: The pool's feature store.
        **settings: ``cosine``, ``score_block_mb``.

    Returns:
        float64 [pool rows]: each pool row's score; NaN for rows without response tokens.

    Raises:
        UserError: A store is incomplete or fails its checksums, or the two stores were made with a
            different model, adapter, LoRA, objective or projection (every differing field is named).
    """
    c = configs_from_settings(settings, "score", (ScoreConfig,))
    return stages.ntk_scores(Path(domain_features), Path(pool_features), c[ScoreConfig])


def train(
    data: Any,
    out: str | Path,
    *,
    model: str | Path | None = None,
    adapter: str | Path | None = None,
    group_by_length: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """LoRA fine-tune on the union of ``data`` (one input, or a list of them: paths, record lists,
    Selections), as ``ntk-selector train`` (3 epochs unless ``epochs=``). A rerun on the same ``out``
    resumes from its last checkpoint to the same adapter.

    Args:
        data: One input or a list of them: paths, lists of dicts, ``datasets.Dataset`` objects or
            Selections; training runs on their union.
        out: The adapter folder to write (PEFT ``save_pretrained`` layout).
        model: An HF model folder or hub id; None for the packaged default model.
        adapter: A PEFT adapter to start from; None for a fresh LoRA.
        group_by_length: Batch rows of similar length together (less padding).
        **settings: Settings by flag name (``epochs``, ``lr``, ``batch_size``, ``rank``, ``loss_mean``,
            ``seed``, ``checkpoint_every``, ...).

    Returns:
        The training state written to ``training_state.json``: the run's definition (data and
        settings), the rows of each input and the training loop's statistics.

    Raises:
        UserError: A bad setting or record, or ``out`` holds files other than a training run's
            (``overwrite=True`` writes beside them and never deletes them).
    """
    c = configs_from_settings(
        _with_model(settings, model=model, adapter=adapter),
        "train",
        (ModelConfig, DataConfig, LoraSettings, RunConfig, TrainConfig),
    )
    with _files(data, "data", split=c[DataConfig].split) as paths:
        return finetune(
            paths,
            out,
            c[ModelConfig],
            c[DataConfig],
            c[LoraSettings],
            c[RunConfig],
            c[TrainConfig],
            group_by_length=group_by_length,
        )


def evaluate(
    data: Any,
    out: str | Path,
    *,
    model: str | Path | None = None,
    adapter: str | Path | None = None,
    labels: Sequence[str] | None = None,
    generate: bool = False,
    max_new_tokens: int | None = None,
    calibrate: bool = False,
    task: str = "auto",
    **settings: Any,
) -> dict[str, Any]:
    """Score a test set as ``ntk-selector evaluate`` does; writes ``eval.json`` and ``predictions.jsonl``.

    Label answers are scored by each allowed label's log-likelihood after the prompt (accuracy);
    free-text answers by the NLL per response token (and with ``generate`` ROUGE-L / chrF).

    Args:
        data: The test records: a path, a list of dicts or a ``datasets.Dataset``.
        out: The folder for ``eval.json`` and ``predictions.jsonl``.
        model: An HF model folder or hub id; None for the packaged default model.
        adapter: A PEFT adapter folder (the fine-tune to evaluate); None for the base model.
        labels: The allowed labels; None for the distinct responses of the test set.
        generate: Also generate greedy answers (exact match for labels; ROUGE-L, chrF and exact match
            for free text).
        max_new_tokens: The generation length with ``generate=True``; None for the default of the task.
        calibrate: Also report contextually calibrated label scores (content-free prompts' prior
            subtracted).
        task: ``classification``, ``generation`` or ``auto`` (labels when the test answers look like
            labels); ``eval.json`` says which was used and why.
        **settings: Settings by flag name (``max_length``, ``device``, ``dtype``, ...).

    Returns:
        ``eval.json``'s contents: for labels ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
        per-class counts, the confusion matrix and ``gold_nll``; the task used and why.

    Raises:
        UserError: A bad setting or record, or ``out`` holds the evaluation of other data.
    """
    c = configs_from_settings(
        _with_model(settings, model=model, adapter=adapter), "evaluate", (ModelConfig, DataConfig, RunConfig)
    )
    with _files(data, "test", single=True, split=c[DataConfig].split) as (path,):
        return run_evaluate(
            path,
            out,
            c[ModelConfig],
            c[DataConfig],
            c[RunConfig],
            labels=labels,
            generate=generate,
            max_new_tokens=max_new_tokens,
            calibrate=calibrate,
            task=task,
        )
