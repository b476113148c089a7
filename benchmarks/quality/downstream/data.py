"""The downstream benchmark's input files: domain / domain_valid / test / pool for one |D| and label prior.

Built once into the cache folder and reused, so every unit of a |D| reads the same rows: from the
packaged demo (``ntk_selector.demo.data.build_demo``), or from ``--data-dir`` (the smoke test).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.common import read_jsonl, write_jsonl

from .settings import Settings, d_tag

NAMES = ("domain", "domain_valid", "test", "pool")


def data_files(s: Settings, cache: Path, d: int, prior: str = "balanced") -> dict[str, Path]:
    """The four files for domain size ``d`` (built when missing; deterministic).

    ``prior``: ``balanced`` (D balanced over labels) or ``natural`` (a uniform draw); with
    ``--data-dir`` both are the first d rows of its domain file."""
    folder = cache / "data" / d_tag(d, prior)
    paths = {k: folder / f"{k}.jsonl" for k in NAMES}
    if all(p.exists() for p in paths.values()):
        return paths
    if s.data_dir:
        src = Path(s.data_dir)
        domain = read_jsonl(src / "domain.jsonl")
        if len(domain) < d:
            raise SystemExit(f"{src / 'domain.jsonl'} has {len(domain)} rows, fewer than |D| = {d}")
        write_jsonl(paths["domain"], domain[:d])
        for k in NAMES[1:]:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / f"{k}.jsonl", paths[k])
    else:
        from ntk_selector.demo.data import build_demo

        built = build_demo(folder, n_domain=d, pool_size=s.pool_size, seed=0, balanced_domain=prior == "balanced")
        assert {k: getattr(built, k) for k in NAMES} == paths
    return paths
