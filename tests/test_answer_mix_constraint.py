"""``--answer-mix``: the top N by score whose rows with the domain's labels keep the domain's (or a
file's) label shares. Exact picks worked out by hand on hand-made scores, the target file's checks,
and the option end to end on the tiny model (every method with a score, and select --index)."""

import csv
import json
from fractions import Fraction

import numpy as np
import pytest
from conftest import synthetic_rows, write_jsonl

from ntk_selector.cli.commands import main
from ntk_selector.errors import UserError
from ntk_selector.selection.answer_mix import (
    constrained_top_n,
    format_answer_mix,
    largest_remainder,
    mix_target,
    normalise_answer,
    with_constraint,
)
from ntk_selector.selection.score import top_n

pytestmark = pytest.mark.usefixtures("one_thread")


def pick(scores, answers, n, shares):
    """Pool rows picked from hand-made scores: rank them as select does, then the constrained pick."""
    scores = np.asarray(scores, dtype=float)
    ranking = top_n(scores, len(scores))
    positions, record = constrained_top_n([answers[i] for i in ranking], n, shares)
    return ranking[positions].tolist(), record


def keep(domain):
    return mix_target("keep", domain, "d.jsonl")


# ----------------------------------------------------------------------------- hand-made scores


def test_keep_moves_slots_between_labels_and_leaves_other_answers_alone():
    shares = keep(["positive"] * 4 + ["negative"] * 2 + ["neutral"] * 2)  # 1/2, 1/4, 1/4
    assert shares == {"negative": Fraction(1, 4), "neutral": Fraction(1, 4), "positive": Fraction(1, 2)}
    rows = [
        (0.90, "positive"),
        (0.80, "Positive."),
        (0.85, "a free answer"),
        (0.70, "positive"),
        (0.65, "negative"),
        (0.60, "positive"),
        (0.50, "neutral"),
        (0.40, "neutral"),
        (0.30, "another answer"),
        (0.20, "negative"),
        (0.75, "positive"),
        (0.10, "neutral"),
    ]
    scores, answers = [s for s, _ in rows], [a for _, a in rows]
    # by score: 0 pos, 2 other, 1 pos, 10 pos, 3 pos, 4 neg | 5 pos, 6 neu, 7 neu, 8 other, 9 neg, 11 neu
    # plain top 6: m = 5 labelled rows (pos 4, neg 1, neu 0) and row 2 with another answer.
    # quotas: 5 x (1/2, 1/4, 1/4) = 2.5, 1.25, 1.25 -> floors 2, 1, 1; the slot left goes to the largest
    # remainder (positive, .5): positive 3, negative 1, neutral 1.
    # picks: positive's best 3 (0, 1, 10), negative's best (4), neutral's best (6), the other answer (2).
    got, record = pick(scores, answers, 6, shares)
    assert got == [0, 2, 1, 10, 4, 6]  # in rank order
    assert record["labelled_rows"] == 5
    assert record["quota"] == {"negative": 1, "neutral": 1, "positive": 3}
    assert record["before"] == {"labels": {"negative": 1, "neutral": 0, "positive": 4}, "other": 1}
    assert record["after"] == {"labels": {"negative": 1, "neutral": 1, "positive": 3}, "other": 1}
    assert record["rows_replaced"] == 1 and record["warnings"] == []
    assert record["candidates"] == {"negative": 2, "neutral": 3, "positive": 5}


def test_ties_in_score_and_in_remainder():
    shares = keep(["a", "a", "b", "b"])  # 1/2 each
    scores = [0.5, 0.9, 0.5, 0.9, 0.5, 0.1]
    answers = ["a", "a", "a", "a", "b", "b"]
    # equal scores rank by row: 1, 3 (0.9), 0, 2, 4 (0.5), 5. Plain top 3 = 1, 3, 0: all "a", m = 3.
    # 3 x 1/2 = 1.5 each: floors 1, 1; the remainders and shares tie, so the slot left goes to the
    # label whose next candidate ranks higher: a's second (row 3, place 1) beats b's second (row 5,
    # place 5). a: rows 1, 3; b: its best, row 4 (tied at 0.5 with rows 0 and 2, which answer "a").
    got, record = pick(scores, answers, 3, shares)
    assert got == [1, 3, 4]
    assert record["quota"] == {"a": 2, "b": 1}
    # the same scores with the answers swapped around give the mirrored pick
    got, record = pick(scores, ["b", "b", "b", "b", "a", "a"], 3, shares)
    assert got == [1, 3, 4] and record["quota"] == {"a": 1, "b": 2}


def test_largest_remainder_is_exact_and_sums_to_the_slots():
    third = {"x": Fraction(1, 3), "y": Fraction(1, 3), "z": Fraction(1, 3)}
    assert largest_remainder(third, 3) == {"x": 1, "y": 1, "z": 1}  # exact thirds: no float residue
    assert largest_remainder(third, 4) == {"x": 2, "y": 1, "z": 1}  # full tie: alphabetical
    assert largest_remainder({"x": Fraction(1, 10), "y": Fraction(9, 10)}, 4) == {"x": 0, "y": 4}  # .4 vs 3.6
    assert largest_remainder({"x": Fraction(1, 2), "y": Fraction(1, 2)}, 0) == {"x": 0, "y": 0}
    for slots in range(12):
        assert (
            sum(largest_remainder({"x": Fraction(2, 7), "y": Fraction(3, 7), "z": Fraction(2, 7)}, slots).values())
            == slots
        )


def test_a_label_with_too_few_candidates_gives_all_it_has_and_the_others_fill_its_place():
    shares = keep(["a", "a", "b", "b", "c", "c"])  # 1/3 each
    answers = ["a", "a", "a", "a", "x", "a", "b", "a", "c"]
    scores = [9, 8, 7, 6, 5, 4, 3, 2, 1]
    # plain top 6: a a a a x a -> m = 5; 5/3 each: floors 1, 1, 1; two slots left, remainders tie,
    # a's next candidate ranks first, then b and c have none (alphabetical): a 2, b 2, c 1.
    # b has 1 candidate: it gives it; 4 slots left for a, c: 2 each; c has 1: it gives it; a takes 3.
    got, record = pick(scores, answers, 6, shares)
    assert got == [0, 1, 2, 4, 6, 8]
    assert record["quota"] == {"a": 3, "b": 1, "c": 1}
    assert record["after"]["labels"] == {"a": 3, "b": 1, "c": 1} and record["after"]["other"] == 1
    assert len(got) == 6  # the selection keeps its size
    (warning,) = record["warnings"]
    assert "'b' should have 2 of the 5" in warning and "only 1 pre-selected candidates" in warning


def test_a_label_with_no_candidate_and_no_labelled_row_in_the_plain_top_n():
    shares = keep(["a", "a", "b", "b"])
    got, record = pick([3, 2, 1, 0], ["a", "a", "a", "x"], 2, shares)
    assert got == [0, 1] and record["quota"] == {"a": 2, "b": 0}  # b has nothing to give
    got, record = pick([3, 2, 1], ["x", "y", "a"], 2, shares)
    assert got == [0, 1] and record["labelled_rows"] == 0 and record["rows_replaced"] == 0
    assert "nothing to rebalance" in record["warnings"][0]


def test_target_file_shares_and_a_label_targeted_at_zero(tmp_path):
    domain = ["pos"] * 5 + ["neg"] * 5
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"POS.": 0.75, "neg": 0.25}))
    shares = mix_target(str(path), domain, "d.jsonl")
    assert shares == {"neg": Fraction(1, 4), "pos": Fraction(3, 4)}
    # plain top 4: neg neg pos neg -> m = 4 -> pos 3, neg 1
    got, _ = pick([8, 7, 6, 5, 4, 3, 2], ["neg", "neg", "pos", "neg", "pos", "pos", "pos"], 4, shares)
    assert got == [0, 2, 4, 5]
    # pos only: the plain top 3 (neg neg pos) has m = 3 labelled rows but pos has 1 candidate; the
    # slots left go to the next rows with other answers (row 3), then to neg's best (row 0)
    path.write_text(json.dumps({"pos": 1, "neg": 0}))
    shares = mix_target(str(path), domain, "d.jsonl")
    got, record = pick([5, 4, 3, 2, 1], ["neg", "neg", "pos", "free", "neg"], 3, shares)
    assert got == [0, 2, 3] and record["quota"] == {"neg": 0, "pos": 1}
    assert record["after"] == {"labels": {"neg": 1, "pos": 1}, "other": 1}
    # shares are read as written (0.6 is 3/5, so 0.6 x 5 = 3 exactly, with no remainder left to round)
    path.write_text(json.dumps({"pos": 0.6, "neg": 0.4}))
    shares = mix_target(str(path), domain, "d.jsonl")
    assert shares == {"neg": Fraction(2, 5), "pos": Fraction(3, 5)}
    assert largest_remainder(shares, 5) == {"neg": 2, "pos": 3}
    # a label the file leaves out is targeted at 0
    path.write_text(json.dumps({"pos": 1.0}))
    assert mix_target(str(path), domain, "d.jsonl") == {"neg": 0, "pos": 1}
    # shares within the tolerance are renormalised to sum to 1
    path.write_text(json.dumps({"pos": 0.3334, "neg": 0.6666}))
    assert sum(mix_target(str(path), domain, "d.jsonl").values()) == 1


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"pos": 0.5, "maybe": 0.5}', "'maybe' is not one of the domain's labels (neg, pos)"),
        ('{"pos": -0.5, "neg": 1.5}', "the share of 'pos' must be a non-negative number, got -0.5"),
        ('{"pos": "half", "neg": 0.5}', "the share of 'pos' must be a non-negative number, got \"half\""),
        ('{"pos": true, "neg": 0}', "must be a non-negative number, got true"),
        ('{"pos": 0.5, "neg": 0.4}', "the shares sum to 0.9, not 1 (within 0.001)"),
        ('{"pos": 0.5, "Pos.": 0.5}', "'pos' and 'Pos.' are the same label"),
        ("[0.5, 0.5]", "must hold a JSON object of target shares per label"),
        ("{}", "must hold a JSON object of target shares per label"),
        ('{"pos": 0.5,', "is not valid JSON"),
    ],
)
def test_bad_target_files_are_refused_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "mix.json"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        mix_target(str(path), ["pos", "neg"] * 3, "d.jsonl")
    assert str(e.value).startswith(f"{path}: ") and needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="file not found"):
        mix_target(str(tmp_path / "absent.json"), ["pos", "neg"] * 3, "d.jsonl")


def test_keep_needs_a_classification_domain():
    assert mix_target("off", [f"free answer {i}" for i in range(10)], "d.jsonl") is None
    with pytest.raises(
        UserError,
        match=r"--answer-mix keep needs a classification domain, and d.jsonl is not one: "
        r"10 distinct answers in 10 rows",
    ):
        keep([f"free answer {i}" for i in range(10)])
    with pytest.raises(UserError, match="needs a classification domain"):
        mix_target("mix.json", [str(i % 25) for i in range(100)], "d.jsonl")  # more than 20 labels


def test_run_json_record():
    mix = {"labels": {"a": {"domain": 2, "selected": 1}}, "selected_other": 0, "warnings": ["w"]}
    assert with_constraint(mix, "off", None) is mix
    out = with_constraint(mix, "keep", {"quota": {"a": 1}, "warnings": ["short"]})
    assert out["constraint"] == {"setting": "keep", "quota": {"a": 1}} and out["warnings"] == ["short", "w"]


# ----------------------------------------------------------------------------- end to end on the tiny model

LABELS = ("positive", "negative", "neutral")


@pytest.fixture(scope="module")
def labelled_files(tmp_path_factory):
    """A three-label domain (balanced) and a pool whose answers are mostly two of those labels, rarely
    the third, and free text."""
    tmp = tmp_path_factory.mktemp("mix")
    domain = synthetic_rows(12, 1, ("dom",))
    for i, row in enumerate(domain):
        row["response"] = LABELS[i % 3]
    pool = synthetic_rows(40, 2)
    for i, row in enumerate(pool):
        if i % 8 in (0, 1, 2):
            row["response"] = "Positive."
        elif i % 8 in (3, 4):
            row["response"] = "negative"
        elif i in (5, 13, 29):
            row["response"] = "neutral"
    return write_jsonl(tmp / "domain.jsonl", domain), write_jsonl(tmp / "pool.jsonl", pool), tmp


COMMON = ["--proj-dim", "32", "--quiet", "--rank", "4", "--batch-size", "4", "--lr", "1e-3", "--max-batch-size", "8"]


def run_select(model, domain, pool, out, *extra):
    return main(
        [
            "select",
            "--domain",
            str(domain),
            "--pool",
            str(pool),
            "--out",
            str(out),
            "--model",
            str(model),
            "-n",
            "10",
            *COMMON,
            *map(str, extra),
        ]
    )


def read_outputs(out):
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    with open(out / "scores.csv") as fh:
        table = list(csv.DictReader(fh))
    return selected, table, json.loads((out / "run.json").read_text())


def score_ranking(table, score_name):
    """The pre-selected rows by score, best first, from scores.csv (select breaks ties by pre-selection
    order, which scores.csv does not hold: the scores here must not tie)."""
    cand = [r for r in table if r["preselected"] == "1" and r[score_name] != ""]
    scores = [float(r[score_name]) for r in cand]
    assert len(set(scores)) == len(scores)
    return [int(r["pool_index"]) for r in sorted(cand, key=lambda r: -float(r[score_name]))]


def check_constrained_pick(selected, ranking, run, pool_rows, n=10):
    """The selection against the rule, from the files alone: the plain top N of the ranking, its rows
    with other answers kept, each label's best candidates up to its quota, and quotas from
    largest-remainder rounding of D's shares (thirds) x m when no label is short of candidates."""
    mix = run["answer_mix"]["constraint"]
    answer = {i: normalise_answer(pool_rows[i]["response"]) for i in ranking}
    plain = ranking[:n]
    labelled = [i for i in plain if answer[i] in LABELS]
    m = len(labelled)
    assert mix["labelled_rows"] == m and mix["before"]["other"] == n - m
    assert mix["before"]["labels"] == {lb: sum(answer[i] == lb for i in plain) for lb in sorted(LABELS)}
    picked = [s["pool_index"] for s in selected]
    assert len(picked) == n and len(set(picked)) == n
    assert [i for i in picked if answer[i] not in LABELS] == [i for i in plain if answer[i] not in LABELS]
    assert picked == [i for i in ranking if i in set(picked)]  # in rank order
    for lb in LABELS:
        mine = [i for i in picked if answer[i] == lb]
        assert mine == [i for i in ranking if answer[i] == lb][: len(mine)]  # the label's best candidates
        assert len(mine) == mix["quota"][lb] == mix["after"]["labels"][lb]
    assert sum(mix["quota"].values()) == m
    candidates = {lb: sum(answer[i] == lb for i in ranking) for lb in LABELS}
    if all(c >= m for c in candidates.values()):  # no label short: plain largest remainder of thirds
        assert sorted(mix["quota"].values(), reverse=True) == [m // 3 + (k < m % 3) for k in range(3)]
    assert run["answer_mix"]["labels"] == {lb: {"domain": 4, "selected": mix["quota"][lb]} for lb in sorted(LABELS)}
    return plain, picked


@pytest.mark.parametrize(
    "method,score_name", [("ntk", "ntk_score"), ("less", "less_max_cosine"), ("embedding", "embedding_votes")]
)
def test_select_keep_end_to_end(tiny_model_dir, labelled_files, method, score_name):
    from ntk_selector.io.records import read_records

    domain, pool, tmp = labelled_files
    work = tmp / f"work_{method}"  # the plain and the constrained run share their stages
    plain_out, keep_out = tmp / f"{method}_plain", tmp / f"{method}_keep"
    assert run_select(tiny_model_dir, domain, pool, plain_out, "--method", method, "--work-dir", work) == 0
    assert (
        run_select(
            tiny_model_dir, domain, pool, keep_out, "--method", method, "--work-dir", work, "--answer-mix", "keep"
        )
        == 0
    )
    plain_sel, _, plain_run = read_outputs(plain_out)
    selected, table, run = read_outputs(keep_out)
    assert "constraint" not in plain_run["answer_mix"]  # off: today's run.json
    assert (plain_out / "scores.csv").read_text() == (keep_out / "scores.csv").read_text()  # same scores
    if method == "embedding":  # votes tie: the ranking is the pre-selection's order (ties by similarity)
        from ntk_selector.selection.stages import load_preselect

        ranking = load_preselect(work / "preselect.npz").order.tolist()
    else:
        ranking = score_ranking(table, score_name)
    plain, picked = check_constrained_pick(selected, ranking, run, read_records(pool))
    assert [s["pool_index"] for s in plain_sel] == plain  # the default is the plain top N
    assert picked != plain or run["answer_mix"]["constraint"]["rows_replaced"] == 0
    page = (keep_out / "report.html").read_text()
    assert f"{run['answer_mix']['constraint']['rows_replaced']} rows of the plain top N replaced" in page
    assert "<th>plain top N</th>" in page and "<td>neutral</td><td class='num'>4</td><td>33.3%</td>" in page
    lines = format_answer_mix(run["answer_mix"])
    c = run["answer_mix"]["constraint"]
    assert lines[1] == (
        f"  --answer-mix keep: selected rows per label negative {c['before']['labels']['negative']}, neutral "
        f"{c['before']['labels']['neutral']}, positive {c['before']['labels']['positive']} (plain top N) -> "
        f"negative {c['quota']['negative']}, neutral {c['quota']['neutral']}, positive "
        f"{c['quota']['positive']}; {c['rows_replaced']} rows replaced"
    )
    assert run["config"]["score"]["answer_mix"] == "keep"


def test_select_default_output_is_unchanged_and_off_is_the_default(tiny_model_dir, labelled_files):
    domain, pool, tmp = labelled_files
    default, off = tmp / "default", tmp / "off"
    assert run_select(tiny_model_dir, domain, pool, default, "--work-dir", tmp / "work_off") == 0
    assert run_select(tiny_model_dir, domain, pool, off, "--work-dir", tmp / "work_off", "--answer-mix", "off") == 0
    for name in ("selected.jsonl", "scores.csv"):
        assert (default / name).read_text() == (off / name).read_text()
    selected, table, run = read_outputs(default)
    cand = sorted((r for r in table if r["ntk_score"]), key=lambda r: -float(r["ntk_score"]))
    assert [s["pool_index"] for s in selected] == [int(r["pool_index"]) for r in cand[:10]]
    assert run["config"]["score"]["answer_mix"] == "off" and "constraint" not in run["answer_mix"]


def test_select_with_a_target_file_and_refusals(tiny_model_dir, labelled_files, capsys):
    from ntk_selector.io.records import read_records

    domain, pool, tmp = labelled_files
    target = tmp / "target.json"
    target.write_text(json.dumps({"positive": 0.2, "negative": 0.2, "neutral": 0.6}))
    out = tmp / "file"
    assert run_select(tiny_model_dir, domain, pool, out, "--work-dir", tmp / "work_off", "--answer-mix", target) == 0
    selected, table, run = read_outputs(out)
    mix = run["answer_mix"]["constraint"]
    assert mix["setting"] == str(target) and mix["target_share"] == {"negative": 0.2, "neutral": 0.6, "positive": 0.2}
    assert mix["candidates"]["neutral"] <= 3 and len(selected) == 10
    pool_rows = read_records(pool)
    got = {lb: sum(normalise_answer(pool_rows[s["pool_index"]]["response"]) == lb for s in selected) for lb in LABELS}
    assert got == mix["after"]["labels"] == {lb: mix["quota"][lb] for lb in LABELS}
    if mix["quota"]["neutral"] < round(0.6 * mix["labelled_rows"]):  # short of neutral rows: said so
        assert any("'neutral' should have" in w for w in run["answer_mix"]["warnings"])
    # refusals: one line, before any model work
    capsys.readouterr()
    assert run_select(tiny_model_dir, domain, pool, tmp / "r1", "--method", "random", "--answer-mix", "keep") == 2
    assert "--method random draws at random" in capsys.readouterr().err
    free = write_jsonl(tmp / "free.jsonl", synthetic_rows(8, 3, ("dom",)))
    assert run_select(tiny_model_dir, free, pool, tmp / "r2", "--answer-mix", "keep") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a classification domain" in err and "free.jsonl" in err
    bad = tmp / "bad.json"
    bad.write_text(json.dumps({"positive": 0.5, "mixed": 0.5}))
    assert run_select(tiny_model_dir, domain, pool, tmp / "r3", "--answer-mix", bad) == 2
    assert f"{bad}: 'mixed' is not one of the domain's labels" in capsys.readouterr().err
    assert not (tmp / "r2" / "stages").exists() and not (tmp / "r3" / "stages").exists()


def test_select_index_keep(tiny_model_dir, labelled_files):
    from ntk_selector.io.records import read_records

    domain, pool, tmp = labelled_files
    index = tmp / "idx"
    assert (
        main(
            [
                "index",
                "--pool",
                str(pool),
                "--out",
                str(index),
                "--model",
                str(tiny_model_dir),
                "--proj-dim",
                "32",
                "--rank",
                "4",
                "--max-batch-size",
                "8",
                "--quiet",
            ]
        )
        == 0
    )
    plain_out, keep_out = tmp / "idx_plain", tmp / "idx_keep"
    assert (
        main(["select", "--index", str(index), "--domain", str(domain), "-n", "10", "--out", str(plain_out), "--quiet"])
        == 0
    )
    assert (
        main(
            [
                "select",
                "--index",
                str(index),
                "--domain",
                str(domain),
                "-n",
                "10",
                "--out",
                str(keep_out),
                "--quiet",
                "--answer-mix",
                "keep",
            ]
        )
        == 0
    )
    plain_sel, _, _ = read_outputs(plain_out)
    selected, table, run = read_outputs(keep_out)
    plain, _ = check_constrained_pick(selected, score_ranking(table, "ntk_score"), run, read_records(pool))
    assert [s["pool_index"] for s in plain_sel] == plain


def test_api_select_takes_answer_mix(tiny_model_dir, labelled_files):
    from ntk_selector import select

    domain, pool, tmp = labelled_files
    sel = select(
        domain,
        pool,
        10,
        model=tiny_model_dir,
        out=tmp / "api",
        work_dir=str(tmp / "work_off"),
        answer_mix="keep",
        proj_dim=32,
        quiet=True,
        rank=4,
        batch_size=4,
        lr=1e-3,
        max_batch_size=8,
    )
    cli = tmp / "cli_keep"
    assert run_select(tiny_model_dir, domain, pool, cli, "--work-dir", tmp / "work_off", "--answer-mix", "keep") == 0
    assert sel.indices.tolist() == [s["pool_index"] for s in read_outputs(cli)[0]]
    assert sel.summary["answer_mix"]["constraint"]["setting"] == "keep"
    free = [{"prompt": f"question {i}", "response": f"a free answer {i}"} for i in range(8)]
    with pytest.raises(UserError, match="needs a classification domain"):
        select(free, pool, 10, model=tiny_model_dir, answer_mix="keep", proj_dim=32, quiet=True, rank=4)


def test_a_run_from_before_the_option_resumes_and_another_mix_is_another_run(tiny_model_dir, labelled_files, capsys):
    domain, pool, tmp = labelled_files
    out = tmp / "old"
    assert run_select(tiny_model_dir, domain, pool, out, "--work-dir", tmp / "work_off") == 0
    run = json.loads((out / "run.json").read_text())
    del run["inputs"]["settings"]["answer_mix"]  # as a run.json written before --answer-mix existed
    (out / "run.json").write_text(json.dumps(run))
    before = (out / "selected.jsonl").read_text()
    assert run_select(tiny_model_dir, domain, pool, out, "--work-dir", tmp / "work_off") == 0
    assert (out / "selected.jsonl").read_text() == before
    capsys.readouterr()
    assert run_select(tiny_model_dir, domain, pool, out, "--work-dir", tmp / "work_off", "--answer-mix", "keep") == 2
    assert "holds another run (settings.answer_mix: 'off' -> 'keep')" in capsys.readouterr().err
