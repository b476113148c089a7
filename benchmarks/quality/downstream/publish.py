"""Where the downstream benchmark's results go: ``downstream.md`` and its plots beside the unit JSONs, a git
commit of them all (``--commit-every``), and the downstream section of BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

from benchmarks.common import count_units, git_commit, log, write_text

from .settings import Settings
from .table import build_table, load_units

SECTION = "## Downstream accuracy (drug-review sentiment)"
DESIGN_NOTES = """Setup: the demo's drug-review sentiment domain (|D| = 100 balanced training reviews; the 379
test reviews; `domain_valid` = 100 other training reviews), a pool of 5,000 rows from seven other
tasks, SmolLM2-135M-Instruct, N = 5·|D|. Accuracy = the label (negative / neutral / positive)
with the highest summed log-likelihood after the prompt (`ntk-selector evaluate`). Settings were
fixed before any test accuracy was seen: max length 256 (every domain row, 251 tokens at most,
keeps its label; test prompts are scored untruncated at 320), 3 epochs (the paper), LoRA r 8 on
q/k/v/o, batch 8 with length-grouped batches, and the learning rate with the best domain-only
accuracy on `domain_valid`. ntk, embedding and less select once (selection seed 0: the warm-up
makes them deterministic) and fine-tune with seeds 0-2; random draws with each seed;
preselect-random draws N of the seed-0 pre-selected M with each seed. Base is deterministic (one
evaluation). Balanced accuracy (mean recall over the three labels) and macro-F1 come from the same
evaluations; they were added to the table after seed 0's confusion matrices showed that D (balanced)
and the test set (65% positive) have different label mixes. Cost (`--estimate`): about 53 h on an
idle 2-core CPU (settings 0.3 h, seed 0 of all methods 3.0 h, seeds 1-2 4.1 h, ablations 8.9 h,
curves 24 h, then 13 h for the |D| curve with a natural-mix D); with other jobs on the
machine units ran 4-6x slower."""


def publish(s: Settings, results: Path, cache: Path, commit: bool) -> None:
    """Rebuild the table and plots; commit them with the result JSONs when asked."""
    try:
        text = build_table(s, results, cache)
    except Exception as e:  # a table bug must never stop the run
        log(f"table failed: {type(e).__name__}: {e}")
        return
    write_text(results / "downstream.md", text)
    if commit:
        git_commit([results], f"downstream benchmark: results so far ({count_units(results)} units)")


def update_benchmarks_md(path: Path, table: str, command: str, results: Path) -> None:
    """Replace the downstream section of BENCHMARKS.md (up to the next ## heading)."""
    text = path.read_text()
    n_eval = len(load_units(results, "eval"))
    body = (
        f"{SECTION}\n\nCommand: `{command}` (resumable: a rerun skips finished units, and "
        "`benchmarks/quality/downstream/run_downstream.sh` reruns it in the background after a crash; `--only-table "
        "--update-benchmarks-md BENCHMARKS.md` rebuilds this section from the cached results).\n"
        f"Machine: 2-core CPU ({platform.machine()}), no GPU, at times shared with other jobs while it ran. "
        f"Date: {dt.date.today():%Y-%m-%d}; {n_eval} evaluations finished so far.\n\n"
        f"{DESIGN_NOTES}\n\n{table}\n"
    )
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + body + (rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + body
    write_text(path, text)
