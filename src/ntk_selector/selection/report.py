"""The run report, written by ``select`` (run_record.finish_run) and by ``diagnose``
(analysis/diagnostics.py), so it lives in the lower of their two layers: a self-contained
``report.html`` with PNG plots beside it (relative links, inline CSS, nothing fetched from the
network), from whatever a folder holds: a ``select`` output (run.json, scores.csv, selected.jsonl)
and/or ``diagnose`` output (diagnostics.json)."""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MAX_TEXT = 300
EXAMPLES_SHOWN = 5

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;
  margin:2em auto;max-width:1100px;color:#222;background:#fff}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:2px solid #4a6f8a;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef3f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff3cd;border-left:6px solid #e0a800;padding:.6em 1em;margin:.6em 0}
.ok{background:#e7f5e9;border-left:6px solid #2ca02c;padding:.6em 1em;margin:.6em 0}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
.text{font-family:ui-monospace,monospace;font-size:.85em;white-space:pre-wrap}
"""


# ----------------------------------------------------------------------------- inputs


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        return None


def _selected(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    from ntk_selector.io.outputs import our_fields, user_record

    with open(path, encoding="utf-8") as fh:
        # the report's view of a line: the user's record with our fields on top (wherever they were
        # written), the score under "score" whatever the method named it
        return [
            {**user_record(obj), **_score_as_score(our_fields(obj))} for obj in map(json.loads, filter(str.strip, fh))
        ]


def _score_as_score(ours: dict[str, Any]) -> dict[str, Any]:
    return {"score": next(v for k, v in ours.items() if k != "pool_index"), "pool_index": ours["pool_index"]}


def read_scores(path: Path) -> dict[str, Any] | None:
    """The columns of a `select` run's scores.csv (NaN where a row has no score), or None. The last
    column, named by what it holds (``ntk_score``, ``less_max_cosine``, ...), comes back as "score"."""
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        rows = list(reader)
    if not header or not rows:
        return None
    return {
        "pool_index": np.array([int(r[0]) for r in rows]),
        "votes": np.array([int(r[1]) for r in rows]),
        "preselected": np.array([r[2] == "1" for r in rows]),
        "score": np.array([float(r[3]) if r[3] else np.nan for r in rows]),
        "score_name": header[3],
    }


# ----------------------------------------------------------------------------- plots


def _figure(path: Path, draw: Callable[[Any], None], size: tuple[float, float] = (7.0, 4.0)) -> str:
    """Draw on a fresh Agg figure and save it as a PNG beside the report; return its relative name.

    Every label is plain text (``text.parse_math`` off): a task named ``50% off $$`` is drawn as
    written, never parsed as math."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ntk_selector.io.files import atomic_open

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        fig = Figure(figsize=size, dpi=100)
        FigureCanvasAgg(fig)
        draw(fig)
        fig.tight_layout()
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png")
    return path.name


def _plot_scores(out: Path, scores: dict[str, Any], chosen: np.ndarray) -> str | None:
    s = scores["score"]
    ok = np.isfinite(s)
    if not ok.any():
        return None
    cut = float(np.nanmin(s[chosen])) if len(chosen) and np.isfinite(s[chosen]).any() else None

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ax.hist(
            s[ok], bins=min(60, max(10, int(ok.sum() // 10))), color="#1f77b4", alpha=0.85, label="scored pool rows"
        )
        if cut is not None:
            ax.axvline(cut, color="#d62728", lw=2, ls="--", label=f"cut-off ({len(chosen)} selected)")
        ax.set_xlabel(scores.get("score_name", "score"))
        ax.set_ylabel("pool rows")
        ax.set_title("Score distribution of the scored (pre-selected) pool rows")
        ax.legend()

    return _figure(out / "report_scores.png", draw)


def _plot_votes(out: Path, scores: dict[str, Any], chosen: np.ndarray) -> str | None:
    s, v = scores["score"], scores["votes"]
    ok = np.isfinite(s)
    if not ok.any() or not (v > 0).any():
        return None
    sel = np.zeros(len(s), dtype=bool)
    sel[chosen] = True

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        rest = ok & ~sel
        ax.scatter(v[rest], s[rest], s=10, color="#1f77b4", alpha=0.5, label="scored, not selected")
        ax.scatter(v[ok & sel], s[ok & sel], s=14, color="#ff7f0e", alpha=0.9, label="selected")
        ax.set_xlabel("reverse-kNN votes")
        ax.set_ylabel(scores.get("score_name", "score"))
        ax.set_title(f"Votes (embedding pre-selection) vs {scores.get('score_name', 'score')}")
        ax.legend()

    return _figure(out / "report_votes.png", draw)


def _plot_tasks(out: Path, pool_tasks: dict[str, int], selected_tasks: dict[str, int]) -> str | None:
    if not pool_tasks or set(pool_tasks) == {"(none)"}:
        return None
    tasks = list(pool_tasks)[:30]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        y = np.arange(len(tasks))
        total_sel = max(1, sum(selected_tasks.values()))
        total_pool = max(1, sum(pool_tasks.values()))
        ax.barh(
            y - 0.2, [pool_tasks[t] / total_pool for t in tasks], height=0.4, color="#1f77b4", label="share of pool"
        )
        ax.barh(
            y + 0.2,
            [selected_tasks.get(t, 0) / total_sel for t in tasks],
            height=0.4,
            color="#ff7f0e",
            label="share of selected",
        )
        ax.set_yticks(y, tasks)
        ax.invert_yaxis()
        ax.set_xlabel("share of rows")
        ax.set_title("Selected rows per pool task")
        ax.legend()

    return _figure(out / "report_tasks.png", draw, (7.0, max(3.0, 0.45 * len(tasks) + 1.5)))


def _plot_seconds(out: Path, seconds: dict[str, float], name: str, title: str) -> str | None:
    if not seconds:
        return None
    items = list(seconds.items())

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ax.barh([k for k, _ in items], [v for _, v in items], color="#2ca02c")
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title(title)

    return _figure(out / name, draw, (7.0, max(2.5, 0.4 * len(items) + 1.2)))


def _plot_stability(out: Path, curve: list[dict[str, Any]], warn: float) -> str:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        steps = [p["step"] for p in curve]
        ax.plot(
            steps, [p["frobenius_cosine"] for p in curve], "o-", color="#1f77b4", label="Frobenius cosine with step 0"
        )
        ax.axhline(warn, color="#d62728", ls="--", lw=1, label=f"warning threshold {warn}")
        ax.set_xlabel("warm-up step")
        ax.set_ylabel("kernel Frobenius cosine")
        ax.set_title("NTK stability over the warm-up")
        losses = [(p["step"], p["loss"]) for p in curve if p.get("loss") is not None]
        if losses:
            ax2 = ax.twinx()
            ax2.plot(*zip(*losses, strict=True), "s:", color="#ff7f0e", label="training loss")
            ax2.set_ylabel("training loss")
            ax2.legend(loc="lower right")
        ax.legend(loc="lower left")

    return _figure(out / "diag_stability.png", draw)


def _plot_projection(out: Path, proj: dict[str, Any]) -> str:
    ladder = [e for e in proj["ladder"] if e["proj_dim"] != "raw"]

    def draw(fig: Any) -> None:
        a, b = fig.subplots(1, 2)
        p = [e["proj_dim"] for e in ladder]
        a.errorbar(
            p,
            [e["relative_gram_error"] for e in ladder],
            yerr=[e["relative_gram_error_std"] for e in ladder],
            fmt="o-",
            color="#1f77b4",
        )
        a.set_xscale("log", base=2)
        a.set_xlabel("projection dim p")
        a.set_ylabel("relative Frobenius error of the Gram matrix")
        a.set_title("Gram error vs raw gradients")
        b.plot(p, [e["top_overlap"] for e in ladder], "o-", color="#ff7f0e")
        b.set_xscale("log", base=2)
        b.set_ylim(0, 1.05)
        b.set_xlabel("projection dim p")
        b.set_ylabel(f"overlap with raw top-{proj['top_n']}")
        b.set_title("Top-N agreement")

    return _figure(out / "diag_projection.png", draw, (9.0, 3.8))


def _plot_approximation(out: Path, approx: dict[str, Any]) -> str:
    from ntk_selector.features.kernels import ranks

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ex = np.array(approx["scores"]["exact"])
        jf = np.array(approx["scores"]["jacobian_free"])
        ax.scatter(ranks(ex), ranks(jf), color="#9467bd", s=30)
        ax.plot([1, len(ex)], [1, len(ex)], color="#888", lw=1, ls="--")
        ax.set_xlabel("rank by exact eNTK score")
        ax.set_ylabel("rank by Jacobian-free score")
        rho = approx.get("spearman")
        ax.set_title(
            "Exact vs Jacobian-free scores of probe pool rows" + (f" (Spearman {rho:.3f})" if rho is not None else "")
        )

    return _figure(out / "diag_approximation.png", draw, (6.0, 4.5))


# ----------------------------------------------------------------------------- HTML pieces


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _short(text: Any) -> str:
    s = str(text) if text is not None else ""
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + " …"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "n/a" if x is None else str(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{_esc(_fmt(c))}</td>"
            if isinstance(c, (int, float)) or c is None
            else f"<td>{_esc(c)}</td>"
            for c in r
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(name: str | None, alt: str) -> str:
    return f"<div><img src='{_esc(name)}' alt='{_esc(alt)}'></div>" if name else ""


def _example_text(rec: dict[str, Any], data_cfg: dict[str, Any]) -> tuple[str, str]:
    """Prompt and response of a selected record, whatever its format (formats.py)."""
    from ntk_selector.config import DataConfig, build
    from ntk_selector.io.formats import to_conversation

    try:
        conv = to_conversation(rec, build(DataConfig, data_cfg))
    except Exception:  # a record the run read is always convertible; this only guards odd reports
        pass
    else:
        turns = conv.prompt_messages
        prompt = (
            turns[0]["content"]
            if len(turns) == 1 and turns[0]["role"] == "user"
            else "\n".join(f"{m['role']}: {m['content']}" for m in turns)
        )
        return prompt, conv.response
    msgs = rec.get(data_cfg.get("messages_field", "messages"))
    if data_cfg.get("prompt_field", "prompt") not in rec and isinstance(msgs, list) and msgs:
        turns = [m for m in msgs if isinstance(m, dict)]
        last = max((i for i, m in enumerate(turns) if m.get("role") == "assistant"), default=len(turns))
        prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in turns[:last])
        return prompt, str(turns[last].get("content")) if last < len(turns) else ""
    return str(rec.get(data_cfg.get("prompt_field", "prompt"), "")), str(
        rec.get(data_cfg.get("response_field", "response"), "")
    )


def _examples(title: str, recs: list[tuple[int, dict[str, Any]]], data_cfg: dict[str, Any]) -> str:
    rows = []
    for rank, rec in recs:
        prompt, response = _example_text(rec, data_cfg)
        score = rec.get("score")
        rows.append(
            f"<tr><td class='num'>{rank}</td><td class='num'>{_esc(rec.get('pool_index'))}</td>"
            f"<td class='num'>{_esc(_fmt(score))}</td><td>{_esc(rec.get('task', ''))}</td>"
            f"<td class='text'>{_esc(_short(prompt))}</td><td class='text'>{_esc(_short(response))}</td></tr>"
        )
    head = "<tr><th>rank</th><th>pool row</th><th>score</th><th>task</th><th>prompt</th><th>response</th></tr>"
    return f"<h3>{_esc(title)}</h3><table>{head}{''.join(rows)}</table>"


def _select_section(
    out: Path, run: dict[str, Any] | None, scores: dict[str, np.ndarray] | None, selected: list[dict[str, Any]]
) -> str:
    parts = ["<h2>Selection</h2>"]
    if run:
        c = run.get("counts", {})
        parts.append(
            _table(
                ["method", "domain rows", "pool rows", "pre-selected", "selected", "pool rows without response tokens"],
                [
                    [
                        run.get("method"),
                        c.get("domain"),
                        c.get("pool"),
                        c.get("preselected"),
                        c.get("selected"),
                        c.get("pool_no_response_tokens"),
                    ]
                ],
            )
        )
    chosen = np.array([int(r["pool_index"]) for r in selected], dtype=np.int64)
    if scores is not None:
        parts.append(_img(_plot_scores(out, scores, chosen), "score distribution with the cut-off"))
        parts.append(_img(_plot_votes(out, scores, chosen), "votes vs score"))
    if run:
        pool_tasks, sel_tasks = run.get("pool_per_task") or {}, run.get("selected_per_task") or {}
        img = _plot_tasks(out, pool_tasks, sel_tasks)
        if img:
            parts.append("<h3>Per pool task</h3>" + _img(img, "selected per pool task"))
            parts.append(
                _table(
                    ["task", "pool rows", "selected", "share selected"],
                    [
                        [t, n, sel_tasks.get(t, 0), f"{sel_tasks.get(t, 0) / max(1, sum(sel_tasks.values())):.1%}"]
                        for t, n in pool_tasks.items()
                    ],
                )
            )
        mix = run.get("answer_mix")
        if mix:
            parts.append("<h3>Domain labels among the selected answers</h3>")
            parts += [f"<div class='warn'><b>Warning.</b> {_esc(w)}</div>" for w in mix.get("warnings", [])]
            c = mix.get("constraint")
            if c:  # --answer-mix: the plain top N's counts beside the constrained pick's
                parts.append(
                    f"<p>--answer-mix {_esc(str(c['setting']))}: {c['rows_replaced']} rows of the plain top N "
                    f"replaced so that the rows with the domain's labels have the target shares.</p>"
                )
                parts.append(
                    _table(
                        [
                            "domain label",
                            "domain rows",
                            "target share",
                            "plain top N",
                            "selected rows with this answer",
                        ],
                        [
                            [
                                label,
                                v["domain"],
                                f"{c['target_share'].get(label, 0):.1%}",
                                c["before"]["labels"].get(label, 0),
                                v["selected"],
                            ]
                            for label, v in mix["labels"].items()
                        ]
                        + [["(other answers)", "", "", c["before"]["other"], mix["selected_other"]]],
                    )
                )
            else:
                parts.append(
                    _table(
                        ["domain label", "domain rows", "selected rows with this answer"],
                        [[label, v["domain"], v["selected"]] for label, v in mix["labels"].items()]
                        + [["(other answers)", "", mix["selected_other"]]],
                    )
                )
    if selected:
        data_cfg = ((run or {}).get("config") or {}).get("data") or {}
        ranked = list(enumerate(selected, start=1))
        parts.append(_examples(f"Top {min(EXAMPLES_SHOWN, len(ranked))} selected", ranked[:EXAMPLES_SHOWN], data_cfg))
        if len(ranked) > EXAMPLES_SHOWN:
            parts.append(
                _examples(
                    f"Bottom {min(EXAMPLES_SHOWN, len(ranked) - EXAMPLES_SHOWN)} selected (closest to the cut-off)",
                    ranked[max(EXAMPLES_SHOWN, len(ranked) - EXAMPLES_SHOWN) :],
                    data_cfg,
                )
            )
    if run and run.get("seconds"):
        parts.append("<h3>Seconds per stage</h3>")
        parts.append(
            _img(_plot_seconds(out, run["seconds"], "report_seconds.png", "Seconds per stage"), "seconds per stage")
        )
        parts.append(_table(["stage", "seconds"], [[k, float(v)] for k, v in run["seconds"].items()]))
    return "".join(parts)


def _diagnostics_section(out: Path, diag: dict[str, Any]) -> str:
    parts = ["<h2>Diagnostics</h2>"]
    warns = diag.get("warnings") or []
    parts += [f"<div class='warn'><b>Warning.</b> {_esc(w)}</div>" for w in warns]
    if not warns:
        parts.append(
            "<div class='ok'>No warnings: the kernel stayed stable and the Jacobian-free scores rank like the "
            "exact eNTK on the probe.</div>"
        )
    warn = float(((diag.get("config") or {}).get("diagnose") or {}).get("warn_stability", 0.95))
    curve = diag.get("ntk_stability")
    if curve:
        parts.append("<h3>NTK stability</h3>")
        parts.append(_img(_plot_stability(out, curve, warn), "NTK stability over the warm-up"))
        parts.append(
            _table(
                ["step", "Frobenius cosine with step 0", "score Spearman with step 0", "loss"],
                [[p["step"], f"{p['frobenius_cosine']:.6f}", p.get("score_spearman"), p.get("loss")] for p in curve],
            )
        )
    approx = diag.get("approximation")
    if approx:
        parts.append("<h3>Exact eNTK vs Jacobian-free kernel</h3>")
        parts.append(
            _table(
                [
                    "probe rows",
                    "outputs used",
                    "vocab",
                    "cross-term share",
                    "mean output cosine",
                    "kernel cosine",
                    "Spearman",
                    "Spearman (cosine scores)",
                    "sampling Spearman",
                ],
                [
                    [
                        approx["rows"],
                        approx["outputs"],
                        approx["vocab"],
                        approx["cross_term_share"],
                        approx["mean_output_cosine"],
                        approx.get("kernel_cosine"),
                        approx["spearman"],
                        approx.get("spearman_cosine"),
                        approx.get("sampling_spearman"),
                    ]
                ],
            )
        )
        parts.append(_img(_plot_approximation(out, approx), "exact vs Jacobian-free score ranks"))
    proj = diag.get("projection")
    if proj and "ladder" in proj:
        parts.append(f"<h3>Projection (raw dimension {proj['raw_dim']}, {proj['rows']} probe rows)</h3>")
        parts.append(_img(_plot_projection(out, proj), "projection error"))
        parts.append(
            _table(
                ["p", "relative Gram error", f"top-{proj['top_n']} overlap", "Spearman"],
                [[e["proj_dim"], e["relative_gram_error"], e["top_overlap"], e["spearman"]] for e in proj["ladder"]],
            )
        )
    elif proj:
        parts.append(f"<h3>Projection</h3><p>{_esc(proj.get('skipped', ''))}</p>")
    if diag.get("seconds"):
        parts.append(_img(_plot_seconds(out, diag["seconds"], "diag_seconds.png", "Seconds per diagnostic"), "seconds"))
    return "".join(parts)


def write_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` (and its PNGs) from the select and/or diagnose outputs there."""
    out = Path(out_dir)
    run = _json(out / "run.json")
    diag = _json(out / "diagnostics.json")
    scores = read_scores(out / "scores.csv")
    selected = _selected(out / "selected.jsonl")
    body = []
    if run or scores is not None or selected:
        body.append(_select_section(out, run, scores, selected))
    if diag:
        body.append(_diagnostics_section(out, diag))
    if not body:
        body.append("<p>Nothing to report: no run.json, scores.csv, selected.jsonl or diagnostics.json here.</p>")
    title = "ntk-selector report"
    subtitle = []
    src = run.get("inputs") if run else (diag.get("inputs") if diag else None)
    if src:
        subtitle.append(f"domain {src.get('domain')} · pool {src.get('pool')}")
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{CSS}</style></head><body><h1>{title}</h1>"
        + "".join(f"<p>{_esc(s)}</p>" for s in subtitle)
        + "".join(body)
        + "</body></html>\n"
    )
    path = out / "report.html"
    from ntk_selector.io.files import write_text_atomic

    write_text_atomic(path, page)
    return path
