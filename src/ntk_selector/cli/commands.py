"""Command line: one subcommand per stage plus ``select``, ``train``, ``evaluate`` and ``demo``.

Flags come from the dataclass configs (config.py), so each flag has one name, one default and one
help text everywhere; ``--config file.yaml`` supplies values below the command line's.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ntk_selector.cli.diagnose import register_cli as register_diagnose
from ntk_selector.cli.evaluate import register_cli as register_evaluate
from ntk_selector.cli.predict import register_cli as register_predict
from ntk_selector.cli.train import register_cli as register_train
from ntk_selector.config import (
    INPUT_KEYS,
    DataConfig,
    EmbedConfig,
    FeatureConfig,
    IndexConfig,
    LoraSettings,
    ModelConfig,
    OutputConfig,
    PoolFilterConfig,
    PreselectConfig,
    RunConfig,
    ScoreConfig,
    TrainConfig,
    load_yaml,
)
from ntk_selector.errors import UserError
from ntk_selector.selection.methods import method_help
from ntk_selector.settings import MODEL_SECTIONS, SUBCOMMAND_DEFAULTS
from ntk_selector.settings import configs_from_args as _configs

SELECT_SECTIONS = (
    ModelConfig,
    DataConfig,
    LoraSettings,
    RunConfig,
    TrainConfig,
    PreselectConfig,
    IndexConfig,
    EmbedConfig,
    FeatureConfig,
    ScoreConfig,
    PoolFilterConfig,
    OutputConfig,
)


# Option groups, by the stage that reads them; the warm-up's training settings say so on select.
GROUP_TITLES: dict[str, str] = {
    "ModelConfig": "model",
    "DataConfig": "data (records, formats, tokens, batches)",
    "LoraSettings": "LoRA adapter",
    "RunConfig": "run",
    "TrainConfig": "training",
    "FeatureConfig": "NTK features (featurize)",
    "PreselectConfig": "pre-selection (embedding reverse kNN)",
    "ScoreConfig": "scoring",
    "PoolFilterConfig": "pool filters",
    "OutputConfig": "outputs",
    "IndexConfig": "index (select --index)",
    "EmbedConfig": "embeddings (pre-selection)",
    "DiagnoseConfig": "diagnostics",
    "PredictConfig": "kernel prediction",
}
WARMUP_COMMANDS = {"select", "demo", "warmup"}
# Settings a subcommand's sections hold but the subcommand never reads: left out of its --help.
UNUSED: dict[str, set[str]] = {
    "select": {"n"},
    "demo": set(),  # select shows --n among its required inputs
    "warmup": {"work_dir", "dist_timeout"},
    "embed": {"work_dir", "checkpoint_every"},
    "featurize": {"work_dir", "checkpoint_every"},
    "preselect": {"work_dir", "checkpoint_every", "dist_timeout"},
    "score": {"work_dir", "checkpoint_every", "dist_timeout", "seed", "m", "k", "knn_search", "answer_mix"},
    "index": {"work_dir", "checkpoint_every"},
    # one process each: no torchrun timeout; train batches by --batch-size, not a token budget
    "train": {"work_dir", "dist_timeout", "token_budget", "max_batch_size"},
    "evaluate": {"work_dir", "dist_timeout", "checkpoint_every"},  # --seed stays: a flag every subcommand shares
    "predict": {"work_dir", "dist_timeout", "checkpoint_every"},
    "diagnose": {"work_dir", "dist_timeout", "checkpoint_every"},
}
UNUSED_ELSEWHERE = {"work_dir"}  # subcommands registered by other modules


class OneSpelling(argparse.Action):
    """Store the value, refusing one setting given under two of its spellings with different values
    (``--rank 4 --lora-rank 2``); one flag given twice keeps its last value, as argparse does."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        seen = namespace.__dict__.setdefault("_spellings", {})
        earlier = seen.get(self.dest)
        if earlier is not None and earlier[0] != option_string and earlier[1] != values:

            def shown(v):
                return " ".join(map(str, v)) if isinstance(v, list) else str(v)

            parser.error(
                f"{earlier[0]} {shown(earlier[1])} and {option_string} {shown(values)} set the same setting; "
                f"give one of them"
            )
        seen[self.dest] = (option_string, values)
        setattr(namespace, self.dest, values)


def _add_section(
    parser: argparse.ArgumentParser,
    section: type,
    overrides: dict[str, Any],
    command: str = "",
    skip: set[str] | None = None,
) -> None:
    title = GROUP_TITLES.get(section.__name__, section.__name__.lower())
    if section is TrainConfig and command in WARMUP_COMMANDS:
        title = "warm-up (LoRA training on the domain before selection)"
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(section):
        if skip and f.name in skip:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        flags = [flag, *f.metadata.get("aliases", ())] + ([f.metadata["short"]] if "short" in f.metadata else [])
        default = overrides.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if section is TrainConfig and command in WARMUP_COMMANDS:
            help_text = "warm-up " + help_text
        t = str(f.type)
        if t == "bool":
            group.add_argument(*flags, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
            if "off_flag" in f.metadata:  # a switch that is on by default: its flag turns it off
                group.add_argument(
                    f.metadata["off_flag"],
                    dest=f.name,
                    action="store_false",
                    default=argparse.SUPPRESS,
                    help=f"turn {flag} off",
                )
        elif t.startswith("list["):
            group.add_argument(
                *flags, dest=f.name, nargs="+", default=argparse.SUPPRESS, help=help_text, action=OneSpelling
            )
        else:
            conv: Callable[[str], Any] = int if t.startswith("int") else float if t.startswith("float") else str
            if f.metadata.get("words"):  # a number or a word (--token-budget auto): check_setting reads it
                conv = str
            metavar = f.metadata.get("metavar", flag.lstrip("-").replace("-", "_").upper())
            group.add_argument(
                *flags,
                dest=f.name,
                type=conv,
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=metavar,
                action=OneSpelling,
            )


def _inputs(args: argparse.Namespace, needs_pool: bool = True) -> dict[str, Any]:
    """select's --domain / --pool / --method: the command line, else --config (a run.json holds them)."""
    from_config = {k: v for k, v in load_yaml(args.config).items() if k in INPUT_KEYS} if args.config else {}
    got = {k: getattr(args, k, None) if getattr(args, k, None) is not None else from_config.get(k) for k in INPUT_KEYS}
    missing = [f"--{k}" for k in ("domain", "pool") if not got[k] and (k == "domain" or needs_pool)]
    if missing:
        raise UserError(f"select needs {' and '.join(missing)} (on the command line or in --config)")
    got["method"] = got["method"] or "ntk"
    return got


# ----------------------------------------------------------------------------- commands


def cmd_select(args: argparse.Namespace) -> int:
    from ntk_selector.api import select_files
    from ntk_selector.selection.run_record import SelectConfigs

    c = _configs(args, SELECT_SECTIONS)
    inputs = _inputs(args, needs_pool=not c[IndexConfig].index)
    cfg = SelectConfigs.from_sections(c, method=inputs["method"])
    if getattr(args, "estimate", False):
        from ntk_selector.selection.estimate import estimate, format_estimate

        _say(replace(cfg.run, quiet=False), format_estimate(estimate(inputs["domain"], inputs["pool"], cfg)))
        return 0
    summary = select_files(inputs["domain"], inputs["pool"], args.out, cfg)
    if summary is not None and not cfg.run.quiet:
        print_summary(summary, args.out)
    elif summary is not None:
        for w in (summary.get("answer_mix") or {}).get("warnings", []):
            print(f"WARNING: {w}", file=sys.stderr)
    return 0


def print_summary(summary: dict[str, Any], out: str | Path, compare: dict[str, int] | None = None) -> None:
    print(
        f"\nselected {summary['counts']['selected']} of {summary['counts']['pool']} pool rows "
        f"({summary['method']}); outputs in {out}/"
    )
    for line in filter_lines(summary):
        print("  " + line)
    pool_tasks = summary["pool_per_task"]
    if len(pool_tasks) > 1 or "(none)" not in pool_tasks:
        head = f"  {'pool task':<24}{'pool':>7}{'selected':>10}" + (f"{'random':>8}" if compare is not None else "")
        print(head)
        for task, n_pool in pool_tasks.items():
            line = f"  {task:<24}{n_pool:>7}{summary['selected_per_task'].get(task, 0):>10}"
            if compare is not None:
                line += f"{compare.get(task, 0):>8}"
            print(line)
    if summary.get("answer_mix"):
        from ntk_selector.selection.answer_mix import format_answer_mix

        print("\n".join(format_answer_mix(summary["answer_mix"])))
    print("  seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()))


def filter_lines(summary: dict[str, Any]) -> list[str]:
    """What the pool filters left out, in words (the counts are in run.json too)."""
    report = summary.get("pool_filter") or {}
    dup, copies = report.get("duplicates") or {}, report.get("domain_copies") or {}
    lines = []
    if dup.get("rows"):
        lines.append(
            f"{dup['rows']} duplicate pool rows "
            + (
                "folded: only the first copy of each can be selected (--keep-duplicates lets any copy be)"
                if dup.get("excluded")
                else "kept (--keep-duplicates)"
            )
        )
    if copies.get("rows"):
        lines.append(
            f"{copies['rows']} pool rows are exact copies of domain rows: "
            + (
                "left out (--keep-domain-copies keeps them)"
                if copies.get("excluded")
                else "kept (--keep-domain-copies)"
            )
        )
    return lines


def cmd_warmup(args: argparse.Namespace) -> int:
    from ntk_selector.io.records import Records
    from ntk_selector.model.session import Session
    from ntk_selector.selection.stages import warmup

    c = _configs(args, MODEL_SECTIONS + (TrainConfig,))
    session = Session(c[ModelConfig], c[LoraSettings], c[RunConfig])
    stats = warmup(session, Records.load(args.domain, c[DataConfig]), Path(args.out), c[DataConfig], c[TrainConfig])
    _say(
        c[RunConfig],
        f"warm-up: {stats['steps']} steps, loss {stats['loss_first']:.3f} -> {stats['loss_last']:.3f}; adapter in "
        f"{args.out}",
    )
    return 0


def _session_for(c: dict[type, Any]) -> Any:
    from ntk_selector.model.session import Session

    return Session(c[ModelConfig], c[LoraSettings], c[RunConfig]).load(c[ModelConfig].adapter)


def cmd_embed(args: argparse.Namespace) -> int:
    from ntk_selector import distributed
    from ntk_selector.io.records import Records
    from ntk_selector.selection.stages import embed

    c = _configs(args, MODEL_SECTIONS + (EmbedConfig,))
    records = distributed.all_ranks(lambda: Records.load(args.data, c[DataConfig]))
    computed = embed(
        distributed.all_ranks(lambda: _session_for(c)),
        records,
        Path(args.out),
        c[DataConfig],
        embedder=c[EmbedConfig].embedder,
        embed_max_length=c[EmbedConfig].embed_max_length,
    )
    _say(c[RunConfig], f"embedded {len(records)} rows ({computed} computed now{_by_this_rank()}) into {args.out}")
    return 0


def cmd_featurize(args: argparse.Namespace) -> int:
    from ntk_selector import distributed
    from ntk_selector.io.records import Records
    from ntk_selector.selection.stages import featurize

    c = _configs(args, MODEL_SECTIONS + (FeatureConfig,))
    records = distributed.all_ranks(lambda: Records.load(args.data, c[DataConfig]))
    info = featurize(
        distributed.all_ranks(lambda: _session_for(c)), records, Path(args.out), c[DataConfig], c[FeatureConfig]
    )
    _say(
        c[RunConfig],
        f"featurized {len(records)} rows ({info['dim']} dims, {info['logits_mode']} logits; "
        f"{info['computed']} computed now{_by_this_rank()}) into {args.out}",
    )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from ntk_selector import distributed
    from ntk_selector.io.records import Records
    from ntk_selector.model.session import Session
    from ntk_selector.selection.index import build_pool_index

    c = _configs(args, MODEL_SECTIONS + (FeatureConfig, EmbedConfig))
    pool = distributed.all_ranks(lambda: Records.load(args.pool, c[DataConfig]))
    session = Session(c[ModelConfig], c[LoraSettings], c[RunConfig])
    info = build_pool_index(session, pool, Path(args.out), c[DataConfig], c[FeatureConfig], c[EmbedConfig])
    _say(
        c[RunConfig],
        f"indexed {len(pool)} pool rows ({info['computed']} computed now{_by_this_rank()}) into {args.out}",
    )
    return 0


def cmd_preselect(args: argparse.Namespace) -> int:
    from ntk_selector.selection.stages import check_preselect_out, preselect, preselect_definition, save_preselect

    c = _configs(args, (PreselectConfig, RunConfig))
    if c[PreselectConfig].n <= 0:
        raise UserError("--n must be a positive number of examples to select")
    out, domain_store, pool_store = Path(args.out), Path(args.domain_store), Path(args.pool_store)
    definition = preselect_definition(domain_store, pool_store, c[PreselectConfig], c[RunConfig].seed)
    check_preselect_out(out, definition, c[RunConfig].overwrite)
    result = preselect(domain_store, pool_store, c[PreselectConfig], c[RunConfig].seed)
    save_preselect(result, out, definition)
    _say(c[RunConfig], f"pre-selected {len(result.order)} pool rows into {args.out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from ntk_selector.io.definitions import canonical, read_state, reuse_or_refuse
    from ntk_selector.io.files import check_out_folder, folder_lock, refuse_replacing, write_json_atomic
    from ntk_selector.selection.stages import ntk_scores, store_definition

    c = _configs(args, (ScoreConfig, RunConfig, PreselectConfig))
    out, domain, pool = Path(args.out), Path(args.domain_features), Path(args.pool_features)
    check_out_folder(out)
    overwrite = c[RunConfig].overwrite
    definition = canonical(
        {
            "stage": "score",
            "domain": store_definition(domain),
            "pool": store_definition(pool),
            "cosine": c[ScoreConfig].cosine,
            "n": c[PreselectConfig].n,
        }
    )

    def refuse_others() -> None:  # the user's files of our names, or scores of other stores or settings
        refuse_replacing(out, SCORE_OUTPUTS, ((SCORE_STATE, "definition"),), overwrite)
        reuse_or_refuse(
            (read_state(out / SCORE_STATE) or {}).get("definition"),
            definition,
            f"{out} holds scores of other stores or settings",
            ready=False,
            overwrite=overwrite,
        )

    refuse_others()
    scores = ntk_scores(domain, pool, c[ScoreConfig])
    with folder_lock(out):
        refuse_others()  # again, now that we hold the lock
        # the record first: a crash between the files leaves a folder a rerun of these settings may finish
        write_json_atomic(out / SCORE_STATE, {"definition": definition})
        _write_score_files(out, scores, c)
    return 0


SCORE_STATE = "score.json"
SCORE_OUTPUTS = ("scores.csv", "top.txt", SCORE_STATE)


def _write_score_files(out: Path, scores: Any, c: dict[type, Any]) -> None:
    import numpy as np

    from ntk_selector.io.files import write_text_atomic
    from ntk_selector.selection.score import top_n

    lines = ["row,ntk_score"] + [f"{i},{'' if not np.isfinite(s) else repr(float(s))}" for i, s in enumerate(scores)]
    write_text_atomic(out / "scores.csv", "\n".join(lines) + "\n")
    n = c[PreselectConfig].n or len(scores)
    write_text_atomic(out / "top.txt", "\n".join(str(int(i)) for i in top_n(scores, n)) + "\n")
    _say(c[RunConfig], f"scored {len(scores)} rows; scores.csv and top.txt (best {n} rows) in {out}")


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from ntk_selector.api import select_files
    from ntk_selector.demo.data import build_demo
    from ntk_selector.selection.run_record import SelectConfigs, task_counts

    out = Path(args.out)
    paths = build_demo(out / "data", n_domain=args.domain_size, pool_size=args.pool_size, seed=0)
    c = _configs(args, SELECT_SECTIONS)
    if c[PreselectConfig].n <= 0:
        c[PreselectConfig].n = args.domain_size
    cfg = SelectConfigs.from_sections(c, method="ntk")
    print(f"demo data in {out / 'data'}: domain {paths.domain.name} (drug-review sentiment), pool {paths.pool.name}")
    summary = select_files(paths.domain, paths.pool, out / "select", cfg)
    from ntk_selector.io.records import read_records

    pool = read_records(paths.pool)
    rng = np.random.default_rng(cfg.run.seed)
    random_pick = rng.choice(len(pool), size=summary["counts"]["selected"], replace=False)
    print_summary(summary, out / "select", compare=task_counts(pool, random_pick))
    return 0


def _say(run: RunConfig, text: str) -> None:
    from ntk_selector import distributed

    if not run.quiet and distributed.current().is_main:
        print(text)


def _by_this_rank() -> str:
    from ntk_selector import distributed

    d = distributed.current()
    return f" by rank 0 of {d.world}" if d.enabled else ""


# Subcommands that shard their rows over the ranks of a torchrun job; the others run on rank 0.
DISTRIBUTED_COMMANDS = {"embed", "featurize", "select", "index"}


def _run(args: argparse.Namespace) -> int:
    """Run the subcommand, under torchrun as one rank of the job."""
    from ntk_selector import distributed

    d = distributed.init(float(getattr(args, "dist_timeout", 360.0)))
    if not d.enabled:
        return int(args.func(args) or 0)
    if args.command in DISTRIBUTED_COMMANDS:
        rc = int(args.func(args) or 0)
    else:

        def alone() -> int:
            with distributed.solo():
                return int(args.func(args) or 0)

        rc = int(distributed.on_main(alone) or 0)
    distributed.barrier()  # leave together
    return rc


def _report(error: BaseException, text: str) -> None:
    """One line on stderr (once per job under torchrun), after which the ranks leave together."""
    from ntk_selector import distributed

    if distributed.should_report(error):
        print(distributed.error_prefix(error) + text, file=sys.stderr, flush=True)
    distributed.settle_after(error)


# ----------------------------------------------------------------------------- parser


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) like every other error."""

    def error(self, message: str) -> Any:
        self.exit(2, f"ntk-selector: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ntk_selector import __version__

    parser = OneLineParser(
        prog="ntk-selector", description="Pick auxiliary fine-tuning data for a domain with NTK-Selector."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_text: str,
        sections: tuple[type, ...],
        usage: str | None = None,
        first: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, usage=usage)
        p.set_defaults(func=func)
        if first is not None:
            first(p)
        p.add_argument(
            "--config",
            metavar="FILE.yaml",
            help="YAML file of settings (flag names, with _ or -), or a select run.json to replay",
        )
        skip = UNUSED.get(name, UNUSED_ELSEWHERE)
        for s in sections:
            _add_section(p, s, SUBCOMMAND_DEFAULTS.get(name, {}), name, skip)
        return p

    def select_inputs(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("required (on the command line, or from --config)")
        g.add_argument("--domain", help="domain (target) records: a file, a dataset folder or a hub id")
        g.add_argument(
            "--pool",
            help="candidate pool records: a file, a dataset folder or a hub id "
            "(with --index: the indexed pool, read from its recorded path by default)",
        )
        g.add_argument(
            "--n",
            "-n",
            dest="n",
            type=int,
            default=argparse.SUPPRESS,
            metavar="N",
            action=OneSpelling,
            help="number of pool examples to select (-n N also works, e.g. after torchrun, whose launcher rejects --n)",
        )
        g.add_argument("--out", required=True, help="output folder")

    p = add(
        "select",
        cmd_select,
        "the whole pipeline: warm-up, embed, pre-select, featurize, score, top N",
        SELECT_SECTIONS,
        usage="ntk-selector select --domain D --pool C --n N --out DIR [options]",
        first=select_inputs,
    )
    p.add_argument("--method", default=None, help=method_help())
    p.add_argument(
        "--estimate",
        action="store_true",
        help="time a few batches of each stage on this model and data, print rows, tokens, seconds and disk per "
        "stage, and exit",
    )

    p = add("demo", cmd_demo, "build the packaged drug-review demo and run select on it", SELECT_SECTIONS)
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--domain-size", type=int, default=100, help="domain rows (default: 100)")
    p.add_argument("--pool-size", type=int, default=2000, help="pool rows (default: 2000)")

    p = add("warmup", cmd_warmup, "train the warm-up LoRA on the domain", MODEL_SECTIONS + (TrainConfig,))
    p.add_argument("--domain", required=True, help="domain records")
    p.add_argument("--out", required=True, help="adapter folder to write")

    p = add(
        "embed",
        cmd_embed,
        "pre-selection embeddings (mean-pooled hidden states, or MiniLM) into a store",
        MODEL_SECTIONS + (EmbedConfig,),
    )
    p.add_argument("--data", required=True, help="records to embed")
    p.add_argument("--out", required=True, help="store folder")

    p = add(
        "featurize",
        cmd_featurize,
        "projected per-sample LoRA gradient features into a store",
        MODEL_SECTIONS + (FeatureConfig,),
    )
    p.add_argument("--data", required=True, help="records to featurize")
    p.add_argument("--out", required=True, help="store folder")

    p = add(
        "index",
        cmd_index,
        "embeddings and base-model NTK features of every pool row, once, for select --index",
        MODEL_SECTIONS + (FeatureConfig, EmbedConfig),
    )
    p.add_argument("--pool", required=True, help="candidate pool records")
    p.add_argument("--out", required=True, help="index folder")

    p = add(
        "preselect", cmd_preselect, "reverse-kNN pre-selection from two embedding stores", (PreselectConfig, RunConfig)
    )
    p.add_argument("--domain-store", required=True, help="embedding store of the domain")
    p.add_argument("--pool-store", required=True, help="embedding store of the pool")
    p.add_argument("--out", required=True, help="output .npz (votes, best_sim, order)")

    p = add(
        "score",
        cmd_score,
        "NTK scores of pool features against domain features",
        (ScoreConfig, RunConfig, PreselectConfig),
    )
    p.add_argument("--domain-features", required=True, help="feature store of the domain")
    p.add_argument("--pool-features", required=True, help="feature store of the pool")
    p.add_argument("--out", required=True, help="output folder (scores.csv, top.txt)")

    for register in (register_train, register_evaluate, register_diagnose, register_predict):  # one module of cli/ each
        register(sub, add)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the message."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(level: str, debug: bool, quiet: bool) -> None:
    """Our messages at ``level``; transformers' and datasets' at ``level`` too but never below
    warnings unless asked (--debug or --log-level debug/info); --quiet turns every progress bar off."""
    import warnings

    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise SystemExit(f"ntk-selector: error: unknown --log-level '{level}' (debug, info, warning, error)")
    ours = logging.getLogger("ntk_selector")
    ours.setLevel(numeric)
    if not any(isinstance(h, _StderrHandler) for h in ours.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
    third_party = numeric if (debug or numeric < logging.WARNING) else logging.ERROR
    if not debug and numeric >= logging.WARNING:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore")
    for name in ("transformers", "datasets", "huggingface_hub", "peft"):
        logging.getLogger(name).setLevel(third_party)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
        # the libraries' own switches (their environment variables are read once, at import)
        try:
            import datasets
            import huggingface_hub.utils
            import transformers

            datasets.disable_progress_bars()
            huggingface_hub.utils.disable_progress_bars()
            transformers.utils.logging.disable_progress_bar()
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    debug = bool(getattr(args, "debug", False))
    quiet = bool(getattr(args, "quiet", False))
    configure_logging(str(getattr(args, "log_level", "warning")), debug, quiet)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:
        if debug:
            traceback.print_exc()
        _report(e, f"ntk-selector: error: {e}")
        return 2
    except OSError as e:
        if debug:
            traceback.print_exc()
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = "the filesystem is read-only" if e.errno == errno.EROFS else "permission denied"
            _report(
                e,
                f"ntk-selector: error: {e.filename or 'a file'}: {why}; choose files and an --out folder "
                f"you can read and write",
            )
            return 2
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            _report(e, f"ntk-selector: error: {e} (rerun with --debug for the traceback)")
            return 1
        _report(
            e,
            f"ntk-selector: error: {e.filename or 'an output file'}: no space left on the device; free some space "
            f"and rerun the same command (finished work is kept)",
        )
        return 2
    except Exception as e:  # unexpected: still one line unless --debug
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _report(e, f"ntk-selector: error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)")
        return 1
    finally:
        from ntk_selector import distributed

        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
