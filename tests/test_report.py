"""The run report: written by select (and diagnose) on the tiny model, self-contained, escaped,
and rendered by a headless browser into a page that is not blank."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import synthetic_rows, write_jsonl

from ntk_selector.cli.commands import main
from ntk_selector.selection.report import write_report


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A select output with diagnostics in the same folder."""
    base = tmp_path_factory.mktemp("report")
    domain = write_jsonl(base / "domain.jsonl", synthetic_rows(8, 1, ("dom",)))
    pool = write_jsonl(base / "pool.jsonl", synthetic_rows(40, 2))
    out = base / "out"
    common = [
        "--domain",
        str(domain),
        "--pool",
        str(pool),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--quiet",
        "--rank",
        "4",
        "--batch-size",
        "4",
        "--max-length",
        "160",
    ]
    assert main(["select", *common, "--n", "5", "--proj-dim", "64", "--lr", "1e-3"]) == 0
    assert (out / "report.html").exists()
    assert (
        main(
            [
                "diagnose",
                *common,
                "--probe-rows",
                "8",
                "--approx-rows",
                "4",
                "--approx-outputs",
                "8",
                "--projection-dims",
                "64",
                "256",
                "--stability-points",
                "2",
            ]
        )
        == 0
    )
    return out


def test_select_writes_report_with_plots(run_dir):
    page = (run_dir / "report.html").read_text()
    for png in (
        "report_scores.png",
        "report_votes.png",
        "report_tasks.png",
        "report_seconds.png",
        "diag_stability.png",
        "diag_projection.png",
        "diag_approximation.png",
    ):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"src='{png}'" in page
    selected = [json.loads(line) for line in open(run_dir / "selected.jsonl")]
    assert f">{selected[0]['pool_index']}<" in page  # the top example is listed
    assert "Seconds per stage" in page and "NTK stability" in page
    # self-contained: every image is a relative file beside the page, nothing from the network
    srcs = re.findall(r"src='([^']*)'", page)
    assert srcs and all((run_dir / s).is_file() for s in srcs)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page


def test_report_escapes_text_and_handles_missing_parts(tmp_path):
    rec = {
        "prompt": "<script>alert('x')</script> & more",
        "response": "<b>bold</b>",
        "task": "t<1>",
        "ntk_score": 1.5,
        "pool_index": 0,
    }
    write_jsonl(tmp_path / "selected.jsonl", [rec])
    (tmp_path / "scores.csv").write_text("pool_index,votes,preselected,ntk_score\n0,2,1,1.5\n1,0,0,\n")
    write_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "t&lt;1&gt;" in page
    assert (tmp_path / "report_scores.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "Nothing to report" in write_report(empty).read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (CI installs it)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    cmd = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2400",
        f"--screenshot={shot}",
        (run_dir / "report.html").as_uri(),
    ]
    subprocess.run(cmd, check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = (imread(shot)[..., :3] * 255).round().astype(np.int32)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1100
    non_white = (img < 245).any(-1).mean()
    colours = len(np.unique(img.reshape(-1, 3) @ np.array([65536, 256, 1])))
    assert non_white > 0.03 and colours > 200, (non_white, colours)
    # the plots loaded: many pixels of the plots' blue (#1f77b4) and orange (#ff7f0e), used only in the PNGs
    for rgb in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(img - np.array(rgb)).max(-1) <= 12).sum() > 5000, rgb


def test_report_shows_the_answer_mix_and_its_warning(tmp_path):
    from ntk_selector.selection.answer_mix import answer_mix

    rec = {"prompt": "p", "response": "positive", "task": "t", "ntk_score": 1.0, "pool_index": 0}
    write_jsonl(tmp_path / "selected.jsonl", [rec])
    mix = answer_mix(["positive", "<neutral>", "positive", "<neutral>"], ["positive", "free text"])
    run = {"counts": {"selected": 2}, "pool_per_task": {"t": 3}, "selected_per_task": {"t": 2}, "answer_mix": mix}
    (tmp_path / "run.json").write_text(json.dumps(run))
    page = write_report(tmp_path).read_text()
    assert "Domain labels among the selected answers" in page
    assert "<td>&lt;neutral&gt;</td><td class='num'>2</td><td class='num'>0</td>" in page
    assert "<td>(other answers)</td><td></td><td class='num'>1</td>" in page
    assert "Warning.</b> 1 selected rows answer with the domain&#x27;s labels, none of them with" in page
