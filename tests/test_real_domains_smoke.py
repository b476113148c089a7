"""Smoke test of benchmarks/quality/real_domains/real_domains.py: a domain given as files, every method
and ablation end to end on the tiny model, the table with its bootstrap intervals, and a rerun that
recomputes nothing."""

from __future__ import annotations

import json
import random
import shutil

from conftest import synthetic_rows, write_jsonl


def load_script():
    from benchmarks.quality.real_domains import real_domains

    return real_domains


def labelled(n: int, seed: int, labels=("yes", "no", "meh")) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": "Q: " + r["prompt"][:40], "response": rng.choice(labels)} for r in synthetic_rows(n, seed, ("dom",))
    ]


def test_one_domain_from_files_end_to_end_and_resumes(tiny_model_dir, tmp_path, one_thread):
    write_jsonl(tmp_path / "d.jsonl", labelled(6, 1))
    write_jsonl(tmp_path / "bal.jsonl", labelled(6, 5))
    write_jsonl(tmp_path / "v.jsonl", labelled(6, 2))
    write_jsonl(tmp_path / "t.jsonl", labelled(12, 3))
    pool = (
        synthetic_rows(40, 4)
        + [{"prompt": "Q: x y z", "response": "yes", "task": "dom-like"}] * 2
        + [{"prompt": f"Q: is {w} a word?", "response": "Yes.", "task": "dom-like"} for w in ("ab", "cd", "ef")]
        + [
            {"prompt": f"Q: {w} or not?", "response": a, "task": "dom-like"}
            for w, a in zip("ghij", ("no", "no", "meh", "Meh."), strict=True)
        ]
    )
    write_jsonl(tmp_path / "pool.jsonl", pool)
    results, cache = tmp_path / "results", tmp_path / "cache"
    args = [
        "--name",
        "toy",
        "--domain-train",
        str(tmp_path / "d.jsonl"),
        "--domain-valid",
        str(tmp_path / "v.jsonl"),
        "--domain-test",
        str(tmp_path / "t.jsonl"),
        "--domain-balanced",
        str(tmp_path / "bal.jsonl"),
        "--pool",
        str(tmp_path / "pool.jsonl"),
        "--model",
        str(tiny_model_dir),
        "--seeds",
        "0",
        "1",
        "--lrs",
        "1e-3",
        "3e-3",
        "--epochs",
        "1",
        "--max-length",
        "96",
        "--proj-dim",
        "32",
        "--rank",
        "4",
        "--n-factor",
        "2",
        "--results",
        str(results),
        "--cache",
        str(cache),
    ]
    mod = load_script()
    assert mod.main(args) == 0
    evals = {p.stem: json.loads(p.read_text()) for p in (results / "eval").glob("*.json")}
    # the settings sweep ran on valid only, once per learning rate
    assert {k for k in evals if k.startswith("toy_natural_domain_ft0_") and k.endswith("_token__valid")} == {
        "toy_natural_domain_ft0_lr0.001_token__valid",
        "toy_natural_domain_ft0_lr0.003_token__valid",
    }
    chosen = mod.chosen_lrs(evals, ["toy"], mod.Settings(lrs=(1e-3, 3e-3)))["toy"][0]
    want = min(
        (
            -round(evals[f"toy_natural_domain_ft0_lr{lr:g}_token__valid"]["balanced_accuracy"], 6),
            evals[f"toy_natural_domain_ft0_lr{lr:g}_token__valid"]["gold_nll"],
            lr,
        )
        for lr in (1e-3, 3e-3)
    )[2]
    assert chosen == want
    for m in mod.METHODS:
        arms = mod.group(evals, "toy", m, "test", lr=chosen)
        assert len(arms) == (1 if m == "base" else 2), (m, len(arms))
        for e in arms:
            assert e["n"] == 12 and len(e["predicted"]) == 12 and "calibrated" in e and e["gold_nll"] > 0
    for variant in ("example-loss", "balanced"):
        for m in mod.ABLATION_METHODS:
            assert len(mod.group(evals, "toy", m, "test", variant, chosen)) == 1, (variant, m)
    # selections: deterministic methods once, random per seed; N = 2 x |D|
    sels = {p.stem: json.loads(p.read_text()) for p in (results / "select").glob("*.json")}
    assert {
        "toy_natural_ntk_sel0",
        "toy_natural_random_sel0",
        "toy_natural_random_sel1",
        "toy_balanced_ntk_sel0",
    } <= set(sels)
    assert "toy_natural_ntk_sel1" not in sels and all(len(s["pool_index"]) == 12 for s in sels.values())
    assert {"embed_pool", "features_domain"} <= set(sels["toy_natural_ntk_sel0"]["store_seconds"])
    # answers counted like D's labels: "Yes." is "yes"; the exact count does not see it
    d_labels = {json.loads(line)["response"] for line in (tmp_path / "d.jsonl").read_text().splitlines()}
    assert "yes" in d_labels
    for key, s in sels.items():
        if "_natural_" not in key:
            continue
        exact, like = s["answers_in_d_labels"], s["answers_like_d_labels"]
        assert sum(like.values()) >= sum(exact.values()) and set(like) <= d_labels
        yes_dot = sum(i in (42, 43, 44) for i in s["pool_index"])  # the pool's "Yes." rows
        yes_exact = sum(i in (40, 41) for i in s["pool_index"])
        assert like.get("yes", 0) == yes_dot + yes_exact and exact.get("yes", 0) == yes_exact, key
    assert any(i in (42, 43, 44) for k, s in sels.items() if "_natural_" in k for i in s["pool_index"])
    assert mod.label_key(" Yes. ") == "yes" and mod.label_key("C.") == "c"
    # the index arm: one index of the pool for the domain, ntk against it with seed 0 only
    assert [p.stem for p in (results / "index").glob("*.json")] == ["pool"]
    built = json.loads((results / "index" / "pool.json").read_text())
    assert built["index"] == str(cache / "index" / "pool_len96")
    # another benchmark with longer rows (the generative one) shares the build through --index-max-length
    other = mod.Bench(
        mod.Settings(model=str(tiny_model_dir), max_length=128, index_max_length=96, proj_dim=32, rank=4),
        {},
        tmp_path / "other_results",
        cache,
    )
    shared = other.pool_index(tmp_path / "pool.jsonl")
    assert shared["index"] == built["index"] and shared["report"]["computed"] == 0
    assert shared["report"]["meta"] == built["report"]["meta"]
    assert len(mod.group(evals, "toy", mod.INDEX_METHOD, "test", lr=chosen)) == 1
    assert "toy_natural_ntk-index_sel0" in sels and "toy_natural_ntk-index_sel1" not in sels
    agree = sels["toy_natural_ntk-index_sel0"]["agreement_with_ntk"]
    overlap = len(
        set(sels["toy_natural_ntk-index_sel0"]["pool_index"]) & set(sels["toy_natural_ntk_sel0"]["pool_index"])
    )
    assert agree["top_n_overlap"] == overlap / 12
    assert all(
        0 <= agree[k] <= 1 for k in ("recall_in_preselected", "preselected_overlap", "minilm_recall_in_preselected")
    )
    assert -1 <= agree["spearman_on_paper_candidates"] <= 1
    # the variant arm: seed 0 only, its own features over the same warm-up and pre-selected M as ntk
    assert len(mod.group(evals, "toy", mod.CONTENT_METHOD, "test", lr=chosen)) == 1
    assert len(mod.group(evals, "toy", mod.CONTENT_METHOD, "valid", lr=chosen)) == 1
    content, paper = sels["toy_natural_ntk-content_sel0"], sels["toy_natural_ntk_sel0"]
    assert "toy_natural_ntk-content_sel1" not in sels and content["preselected"] == paper["preselected"]
    features = sorted(k for k in content["store_seconds"] if k.startswith("features"))
    assert features[0] == "features_ntk-content_domain" and features[1].startswith("features_ntk-content_pool_")
    assert len(features) == 2 and content["preselected_scores"] != paper["preselected_scores"]
    assert all(content["store_seconds"][k] == paper["store_seconds"][k] for k in ("embed_domain", "embed_pool"))
    # the cosine variant: ntk's stores (warm-up, embeddings, pre-selection, features) scored by the mean cosine
    cosine = sels["toy_natural_ntk-cosine_sel0"]
    assert len(mod.group(evals, "toy", mod.COSINE_METHOD, "test", lr=chosen)) == 1
    assert cosine["store_seconds"] == paper["store_seconds"] and cosine["preselected"] == paper["preselected"]
    assert cosine["preselected_scores"] != paper["preselected_scores"] and len(cosine["pool_index"]) == 12
    # the label-mix arms: ntk's stores and pre-selection, the top N picked under the constraint, on both Ds
    for d_variant, variant in (("natural", "main"), ("balanced", "balanced")):
        ntk = sels[f"toy_{d_variant}_ntk_sel0"]
        for m in mod.MIX_METHODS:
            mix = sels[f"toy_{d_variant}_{m}_sel0"]
            assert f"toy_{d_variant}_{m}_sel1" not in sels
            assert mix["store_seconds"] == ntk["store_seconds"] and mix["preselected"] == ntk["preselected"]
            assert len(mix["pool_index"]) == 12 and set(mix["pool_index"]) <= set(mix["preselected"])
            record = mix["answer_mix"]["constraint"]
            assert record["setting"] == (
                "keep" if m == mod.KEEP_METHOD else str(cache / "answer_mix" / f"toy_{d_variant}_valid.json")
            )
            # the constraint only re-divides the plain top N's rows that answer with D's labels
            assert sum(record["before"]["labels"].values()) == sum(record["after"]["labels"].values())
            plain = ntk["answers_like_d_labels"]
            assert record["before"]["labels"] == {k: plain.get(k, 0) for k in record["before"]["labels"]}
            assert mix["answers_like_d_labels"] == {k: v for k, v in record["after"]["labels"].items() if v}
            if m == mod.KEEP_METHOD:  # D's own labels: every labelled slot is filled by its label's quota
                assert record["after"]["labels"] == record["quota"]
            assert len(mod.group(evals, "toy", m, "test", variant, chosen, seed=0)) == 1
    shares = json.loads((cache / "answer_mix" / "toy_natural_valid.json").read_text())
    valid = [json.loads(line)["response"] for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    d_answers = {json.loads(line)["response"] for line in (tmp_path / "d.jsonl").read_text().splitlines()}
    in_d = [a for a in valid if a in d_answers]
    assert shares == {label: in_d.count(label) / len(in_d) for label in sorted(d_answers)}
    # the bootstrap: hand-made arms whose difference is known
    a = [{"truth": "0000", "predicted": "0000"}]
    b = [{"truth": "0000", "predicted": "0011"}]
    diff, lo, hi = mod.paired_bootstrap(a, b)
    assert diff == 0.5 and 0 <= lo <= 0.5 <= hi <= 1
    table = (results / "table.md").read_text()
    assert "| ntk | 2 |" in table and "ablations" in table
    assert all(f"ntk − {m}" in table for m in ("random", "less", "embedding", "preselect-random", "domain"))
    assert "| ntk-index | 1 |" in table and "ntk-index − ntk" in table and "shared with ntk" in table
    assert "| ntk-content | 1 |" in table and "ntk-content − ntk" in table
    assert "share of test rows predicted as each label" in table and "| ntk | meh " in table
    assert "selection under a label-mix constraint" in table and "balanced D: ntk-mix-keep − random" in table
    assert (results / "balanced_accuracy.png").exists()
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*.json") if p.name != "settings.json"}
    assert mod.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json") if p.name != "settings.json"} == before
    # results outlive the cache (a new machine has none): a lost eval is redone, its selected rows
    # rewritten from the cached pool indices and its adapter refitted, and nothing else is recomputed
    shutil.rmtree(cache)
    lost = results / "eval" / f"toy_natural_ntk_sel0_ft0_lr{chosen:g}_token__test.json"
    old = json.loads(lost.read_text())
    lost.unlink()
    del before[lost]
    assert mod.main(args) == 0
    assert {
        p: p.stat().st_mtime_ns for p in results.rglob("*.json") if p.name not in ("settings.json", lost.name)
    } == before
    redone = json.loads(lost.read_text())
    assert redone["definition"] == old["definition"]
    assert (redone["predicted"], redone["gold_nll"]) == (
        old["predicted"],
        old["gold_nll"],
    )  # one thread: the same refit
    selected = [json.loads(line) for line in open(sels["toy_natural_ntk_sel0"]["selected_file"])]
    assert selected == [pool[i] for i in sels["toy_natural_ntk_sel0"]["pool_index"]]


def small_domain(tmp_path, model_dir, results, cache, seeds=("0",)) -> list[str]:
    """A 6-row D, 6 valid and 8 test rows, a 30-row pool: the arguments of a tiny one-domain run."""
    write_jsonl(tmp_path / "d.jsonl", labelled(6, 1))
    write_jsonl(tmp_path / "v.jsonl", labelled(6, 2))
    write_jsonl(tmp_path / "t.jsonl", labelled(8, 3))
    write_jsonl(tmp_path / "pool.jsonl", synthetic_rows(30, 4))
    return [
        "--name",
        "toy",
        "--domain-train",
        str(tmp_path / "d.jsonl"),
        "--domain-valid",
        str(tmp_path / "v.jsonl"),
        "--domain-test",
        str(tmp_path / "t.jsonl"),
        "--pool",
        str(tmp_path / "pool.jsonl"),
        "--model",
        str(model_dir),
        "--seeds",
        *seeds,
        "--lrs",
        "1e-3",
        "--epochs",
        "1",
        "--max-length",
        "96",
        "--proj-dim",
        "32",
        "--rank",
        "4",
        "--n-factor",
        "2",
        "--results",
        str(results),
        "--cache",
        str(cache),
    ]


def test_methods_filter_runs_only_those_cells(tiny_model_dir, tmp_path, one_thread):
    results = tmp_path / "results"
    args = small_domain(tmp_path, tiny_model_dir, results, tmp_path / "c", seeds=("0", "1")) + [
        "--phases",
        "seeds",
        "--methods",
        "random",
    ]
    assert load_script().main(args) == 0
    # the settings sweep (always first), then seed 1 of random only: no model-based selection ran
    assert sorted(p.stem for p in (results / "select").glob("*.json")) == ["toy_natural_random_sel1"]
    assert sorted(p.stem for p in (results / "eval").glob("*.json")) == [
        "toy_natural_domain_ft0_lr0.001_token__valid",
        "toy_natural_random_sel1_ft1_lr0.001_token__test",
        "toy_natural_random_sel1_ft1_lr0.001_token__valid",
    ]


def test_select_only_computes_selections_and_no_fine_tunes(tiny_model_dir, tmp_path, one_thread):
    results = tmp_path / "results"
    args = small_domain(tmp_path, tiny_model_dir, results, tmp_path / "c") + [
        "--phases",
        "seed0",
        "--methods",
        "base",
        "embedding",
        "preselect-random",
        "--select-only",
    ]
    mod = load_script()
    assert mod.main(args) == 0
    sels = {p.stem: json.loads(p.read_text()) for p in (results / "select").glob("*.json")}
    assert sorted(sels) == ["toy_natural_embedding_sel0", "toy_natural_preselect-random_sel0"]
    assert all(len(s["pool_index"]) == 12 for s in sels.values())
    # the pre-selection is shared: both draw from the same M rows
    assert sels["toy_natural_embedding_sel0"]["preselected"] == sels["toy_natural_preselect-random_sel0"]["preselected"]
    # no fine-tune beyond the settings sweep that picks the learning rate
    assert sorted(p.stem for p in (results / "train").glob("*.json")) == ["toy_natural_domain_ft0_lr0.001_token"]
    assert sorted(p.stem for p in (results / "eval").glob("*.json")) == ["toy_natural_domain_ft0_lr0.001_token__valid"]


def test_ranks_select_and_index_equal_one_process(tiny_model_dir, tmp_path, one_thread, capfd):
    """--ranks 2: the selections' and the index's model work under torchrun, the same picks as in-process."""
    mod = load_script()
    picks = {}
    for ranks in (1, 2):
        results = tmp_path / f"results{ranks}"
        args = small_domain(tmp_path, tiny_model_dir, results, tmp_path / f"c{ranks}") + [
            "--phases",
            "seed0",
            "index",
            "--methods",
            "ntk",
            mod.INDEX_METHOD,
            "--select-only",
            "--ranks",
            str(ranks),
        ]
        assert mod.main(args) == 0
        logged = capfd.readouterr()
        for command in ("select", "index"):  # the torchrun path ran only when asked for
            assert (f"{command} under torchrun, 2 ranks" in logged.out + logged.err) == (ranks == 2)
        picks[ranks] = {p.stem: json.loads(p.read_text())["pool_index"] for p in (results / "select").glob("*.json")}
        index = json.loads((results / "index" / "pool.json").read_text())
        assert index["report"]["meta"]["rows"] == 30 and index["work_seconds"] > 0
    assert sorted(picks[2]) == ["toy_natural_ntk-index_sel0", "toy_natural_ntk_sel0"]
    assert picks[1] == picks[2]


def test_table_intervals_are_the_differences_of_the_named_arms(tmp_path):
    """The table's paired intervals on hand-made evaluations whose arms differ: a swapped or
    misattributed arm changes the printed number (the toy run above cannot see that: its arms agree)."""
    mod = load_script()
    truth = "abcabcabca"
    arms = {  # run key (without the lr/loss tail) -> predictions over the 10 test rows
        "toy_natural_domain_ft0": "aaaaaaaaaa",
        "toy_natural_domain_ft1": "aaaaaaaaab",
        "toy_natural_ntk_sel0_ft0": "abcabcaaaa",
        "toy_natural_ntk_sel0_ft1": "abcabcabaa",
        "toy_natural_random_sel0_ft0": "abcaaaaaaa",
        "toy_natural_random_sel1_ft1": "abcabcabca",
    }
    (tmp_path / "eval").mkdir()

    def record(predicted: str) -> dict:
        acc = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
        return {
            "n": len(truth),
            "truth": truth,
            "predicted": predicted,
            "accuracy": acc,
            "balanced_accuracy": acc,
            "macro_f1": acc,
            "gold_nll": 1 - acc,
            "calibrated": {"accuracy": acc, "balanced_accuracy": acc},
        }

    (tmp_path / "eval" / "toy_natural_domain_ft0_lr0.001_token__valid.json").write_text(
        json.dumps(record("abcabcabca"))
    )
    for key, predicted in arms.items():
        (tmp_path / "eval" / f"{key}_lr0.001_token__test.json").write_text(json.dumps(record(predicted)))
    table = mod.build_table(tmp_path, mod.Settings(lrs=(1e-3,)))
    # per row, correctness averaged over the two seeds: ntk 0.85, domain 0.35, random 0.8 of the rows
    assert "| ntk | 2 | 85.0 ± 7.1 |" in table and "| domain | 2 | 35.0 ± 7.1 |" in table
    assert "ntk − domain: +50.0 points" in table and "ntk − random: +5.0 points" in table
    # arms without evaluations print no interval
    assert all(f"ntk − {m}" not in table for m in ("less", "embedding", "preselect-random"))
    # preselect-random at 0.9 of the rows against ntk's 0.85: the isolating comparison, with its sign
    (tmp_path / "eval" / "toy_natural_preselect-random_sel0_ft0_lr0.001_token__test.json").write_text(
        json.dumps(record("abcabcabcb"))
    )
    table = mod.build_table(tmp_path, mod.Settings(lrs=(1e-3,)))
    assert "ntk − preselect-random: -5.0 points" in table
    assert "ablations" not in table  # no ablation arm yet: no ablation section
    # an ablation sits beside the main setting's seed-0 runs (ntk 80%, random 60% of the rows), not the seed means
    for key, predicted in (("toy_natural_ntk_sel0_ft0", "abcabcabca"), ("toy_natural_random_sel0_ft0", "aaaaaaaaaa")):
        (tmp_path / "eval" / f"{key}_lr0.001_example__test.json").write_text(json.dumps(record(predicted)))
    table = mod.build_table(tmp_path, mod.Settings(lrs=(1e-3,)))
    assert (
        "| main (token mean, natural D) | ntk | 80.0 |" in table
        and "| main (token mean, natural D) | random | 60.0 |" in table
    )
    assert "| per-example loss mean | ntk | 100.0 |" in table and "| per-example loss mean | random | 40.0 |" in table
    assert "- main (token mean, natural D): ntk − random +20.0 points" in table
    assert "- per-example loss mean: ntk − random +60.0 points" in table and "balanced D" not in table
