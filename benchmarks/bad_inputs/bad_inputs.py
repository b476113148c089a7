"""Bad inputs: run the case table of bad_input_cases.py (beside this file) and count the outcomes.

Each case is what a new user might type or feed (a wrong setting, a damaged file, an output
folder holding their own files, a full disk...). Outcomes: clear (expected exit code, one line
naming the place, correct outputs), silently wrong (exit 0 where an error was due, or wrong
outputs), lost (a user file or record field changed), unclear (anything else). Runs on tiny
random models built here, in a temporary folder; a couple of minutes on 2 cores.

    PYTHONPATH=src .venv/bin/python -m benchmarks.bad_inputs.bad_inputs \\
        [--json benchmarks/results/bad_inputs/bad_inputs.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

OUTCOMES = ("clear", "wrong", "lost", "unclear")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the per-case outcomes here")
    parser.add_argument("-k", default="", help="only cases whose id contains this")
    args = parser.parse_args()

    import torch

    from benchmarks.tiny import make_model, make_tokenizer

    from .bad_input_cases import CASES, run_case

    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny-llama"
        tok = make_tokenizer()
        make_model(len(tok)).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        for i, case in enumerate(c for c in CASES if args.k in c.id):
            outcome, detail = run_case(case, Path(tmp) / f"case{i}", model_dir)
            results.append({"id": case.id, "group": case.group, "outcome": outcome, "detail": detail})
            print(f"{outcome:8} {case.group:8} {case.id}" + (f"  ({detail[:160]})" if detail else ""), flush=True)
    by_group: dict[str, Counter] = {}
    for r in results:
        by_group.setdefault(r["group"], Counter())[r["outcome"]] += 1
    total = Counter(r["outcome"] for r in results)
    print("\n| group | tried | clear | silently wrong | lost | unclear |\n|---|---:|---:|---:|---:|---:|")
    for group, counts in list(by_group.items()) + [("all", total)]:
        print(f"| {group} | {sum(counts.values())} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": datetime.date.today().isoformat(),
                    "command": " ".join(sys.argv),
                    "totals": {o: total[o] for o in OUTCOMES},
                    "tried": len(results),
                    "cases": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if total["wrong"] == total["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
