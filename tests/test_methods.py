"""The method registry: every method select accepts is one entry, and its fields drive what select runs."""

from __future__ import annotations

import json

from ntk_selector.cli.commands import main
from ntk_selector.selection.methods import METHODS, method_help


def test_registry_fields_decide_the_stages(tiny_model_dir, small_files, tmp_path, one_thread):
    """A method that uses no model runs no warm-up; a votes method featurizes nothing; a features method
    stores features under its own tag (so methods can share a --work-dir)."""
    domain, pool = small_files
    work = tmp_path / "work"
    seen = {}
    for name in ("random", "embedding", "less"):
        out = tmp_path / name
        assert main(["select", "--domain", str(domain), "--pool", str(pool), "-n", "4", "--out", str(out), "--method", name,
                     "--model", str(tiny_model_dir), "--proj-dim", "16", "--rank", "4", "--quiet", "--work-dir", str(work)]) == 0
        seen[name] = set(json.loads((out / "run.json").read_text())["seconds"])
    assert "warmup" not in seen["random"] and "warmup" in seen["embedding"]
    assert "featurize" not in seen["embedding"] and "featurize" in seen["less"]
    assert (work / "less_features_domain").is_dir() and not (work / "features_domain").exists()
    assert all(f"{m}:" in method_help() for m in METHODS)
