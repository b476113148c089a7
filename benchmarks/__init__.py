"""The benchmarks of ntk-selector, one package per study (benchmarks/README.md lists them), each
script run as a module from the repository root, e.g. ``python -m benchmarks.speed.featurize_speed``.

``RESULTS`` holds the committed results, laid out like the packages; ``CACHE`` the ignored big
intermediates. Kept free of heavy imports: a GPU machine with only torch runs the speed scripts.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "cache"
