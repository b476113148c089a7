"""diagnose on the tiny model: stability against the real warm-up stage, its dependence on the
learning rate, the projection ladder, and the command end to end."""

import itertools
import json

import numpy as np
import pytest
import torch

from ntk_selector.analysis.diagnostics import (
    choose_probe,
    ntk_stability,
    probe_kernel_features,
    project_raw,
    projection_ladder,
)
from ntk_selector.cli.commands import main
from ntk_selector.config import DataConfig, DiagnoseConfig, LoraSettings, ModelConfig, RunConfig, TrainConfig
from ntk_selector.features.gradients import GradientFeaturizer
from ntk_selector.io.records import Records
from ntk_selector.io.tokens import collate
from ntk_selector.model.loading import lora_parameters
from ntk_selector.model.session import Session
from ntk_selector.selection.stages import warmup

DATA = DataConfig(max_length=160)


def session_for(model_dir):
    return Session(ModelConfig(model=str(model_dir)), LoraSettings(rank=4), RunConfig(seed=0, quiet=True))


def raw_kernel(session, probe):
    pad = session.tokenizer.pad_token_id
    with GradientFeaturizer(session.model, 0, 0, "ntk", "auto", collate(probe.encoded[:2], pad)) as feat:
        f = probe_kernel_features(feat, probe, pad, DATA).double().numpy()
    return f @ f.T


def stability_curve(model_dir, domain_path, pool_path, lr, points=4):
    s = session_for(model_dir).load(None)
    domain, pool = Records.load(domain_path, DATA), Records.load(pool_path, DATA)
    probe = choose_probe(domain, pool, 8, 0, s.tokenizer, DATA)
    train = TrainConfig(epochs=2, lr=lr, batch_size=4)
    curve, _, stats = ntk_stability(
        s.model, s.tokenizer, domain, probe, DATA, train, DiagnoseConfig(stability_points=points), 0, True
    )
    return curve, stats, probe, train


def test_stability_matches_the_warmup_stage(tiny_model_dir, small_files, tmp_path):
    domain_path, pool_path = small_files
    curve, stats, probe, train = stability_curve(tiny_model_dir, domain_path, pool_path, 3e-2)
    assert [p["step"] for p in curve] == [0, 1, 2, 3, 4] and stats["steps"] == 4
    assert curve[0]["frobenius_cosine"] == pytest.approx(1.0, abs=1e-12)
    # independent reference: the kernel of the adapter the warm-up stage saves vs a fresh LoRA
    s = session_for(tiny_model_dir)
    warmup(s, Records.load(domain_path, DATA), tmp_path / "warm", DATA, train)
    k0 = raw_kernel(s.load(None), probe)
    kt = raw_kernel(s.load(str(tmp_path / "warm")), probe)
    ref = float(np.sum(k0 * kt) / (np.linalg.norm(k0) * np.linalg.norm(kt)))
    assert curve[-1]["frobenius_cosine"] == pytest.approx(ref, abs=1e-5)
    assert ref < 1 - 1e-6  # the kernel moved at all


def test_stability_drops_with_a_large_learning_rate(tiny_model_dir, small_files):
    domain_path, pool_path = small_files
    small, _, _, _ = stability_curve(tiny_model_dir, domain_path, pool_path, 1e-5, points=1)
    large, _, _, _ = stability_curve(tiny_model_dir, domain_path, pool_path, 3e-1, points=1)
    assert small[0]["frobenius_cosine"] == pytest.approx(1.0) == large[0]["frobenius_cosine"]
    assert small[-1]["frobenius_cosine"] > 0.999
    assert large[-1]["frobenius_cosine"] < small[-1]["frobenius_cosine"] - 0.01
    assert min(p["frobenius_cosine"] for p in large) < 0.99


def test_projection_error_shrinks_with_p(lora_model):
    torch.manual_seed(0)
    shapes = [(n, tuple(p.shape)) for n, p in lora_parameters(lora_model)]
    dim = sum(int(np.prod(s)) for _, s in shapes)
    raw = torch.randn(12, dim)
    from ntk_selector.analysis.diagnostics import Probe

    probe = Probe([None] * 12, np.array([True] * 4 + [False] * 8), np.arange(12))
    res = projection_ladder(raw, shapes, probe, [64, 256, 1024, 4096], seeds=3, top_share=0.25, seed=0)
    errs = [e["relative_gram_error"] for e in res["ladder"][:-1]]
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 0.5 * errs[0]
    assert res["ladder"][-1] == {
        "proj_dim": "raw",
        "relative_gram_error": 0.0,
        "relative_gram_error_std": 0.0,
        "top_overlap": 1.0,
        "spearman": 1.0,
    }
    # projecting raw rows equals featurizing with the projector directly (same layout and seed)
    e = torch.zeros(1, dim)
    e[0, 5] = 1.0
    direct = project_raw(e, shapes, 256, 7)
    again = project_raw(e, shapes, 256, 7)
    assert torch.equal(direct, again) and direct.abs().sum() > 0


def test_diagnose_command(tiny_model_dir, small_files, tmp_path, capsys):
    domain, pool = small_files
    out = tmp_path / "diag"
    rc = main(
        [
            "diagnose",
            "--domain",
            str(domain),
            "--pool",
            str(pool),
            "--out",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--rank",
            "4",
            "--batch-size",
            "4",
            "--lr",
            "0.5",
            "--epochs",
            "2",
            "--max-length",
            "160",
            "--probe-rows",
            "12",
            "--approx-rows",
            "6",
            "--approx-outputs",
            "16",
            "--projection-dims",
            "64",
            "512",
            "--stability-points",
            "2",
        ]
    )
    assert rc == 0
    d = json.loads((out / "diagnostics.json").read_text())
    assert d["probe"]["rows"] == 12 and len(d["probe"]["domain_rows"]) == 6
    assert [p["step"] for p in d["ntk_stability"]] == [0, 2, 4]
    assert d["ntk_stability"][0]["frobenius_cosine"] == pytest.approx(1.0)
    a = d["approximation"]
    assert a["rows"] == 6 and a["outputs"] == 16 and a["sampled_outputs"] and a["cross_term_share"] > 0
    assert -1 <= a["spearman"] <= 1 and -1 <= a["mean_output_cosine"] <= 1
    assert [e["proj_dim"] for e in d["projection"]["ladder"]] == [64, 512, "raw"]
    # lr 0.5 moves the kernel: a warning that says what to try, printed and stored
    assert d["stability_min"] < 0.95
    assert any("lower learning rate" in w for w in d["warnings"])
    assert "WARNING" in capsys.readouterr().err
    for png in ("diag_stability.png", "diag_projection.png", "diag_approximation.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "diag_stability.png" in (out / "report.html").read_text()


def test_diagnose_without_warmup_uses_the_initial_lora(tiny_model_dir, small_files, tmp_path, capsys):
    domain, pool = small_files
    out = tmp_path / "diag"
    common = [
        "--domain",
        str(domain),
        "--pool",
        str(pool),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--rank",
        "4",
        "--max-length",
        "160",
        "--probe-rows",
        "8",
        "--approx-rows",
        "4",
        "--quiet",
    ]
    assert (
        main(
            [
                "diagnose",
                *common,
                "--checks",
                "approximation",
                "projection",
                "--projection-dims",
                "128",
                "--approx-outputs",
                "32",
            ]
        )
        == 0
    )
    d = json.loads((out / "diagnostics.json").read_text())
    assert "ntk_stability" not in d and d["kernel_model"] == "LoRA at init"
    assert d["approximation"]["outputs"] == 32 and d["approximation"]["scale"] == pytest.approx(
        d["approximation"]["vocab"] / 32
    )
    assert d["projection"]["rows"] == 8 and not (out / "diag_stability.png").exists()
    assert main(["diagnose", *common, "--checks", "speed"]) == 2
    assert "--checks must be one of stability, approximation, projection, got 'speed'" in capsys.readouterr().err
