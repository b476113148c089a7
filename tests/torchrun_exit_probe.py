"""Run the command line like ``python -m ntk_selector``, then report which gloo threads are still alive.

Used as the torchrun entry in test_distributed: a process group that ``destroy_process_group`` could
not free keeps its worker threads into interpreter shutdown, where they can abort a finished run.
"""

import json
import os
import sys

from ntk_selector.cli.commands import main

rc = main(sys.argv[1:])
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
rank = int(os.environ.get("RANK", 0))
# one file per rank: the ranks' stdout lines interleave under torchrun
with open(os.path.join(os.environ["EXIT_PROBE_DIR"], f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "gloo_threads": [n for n in names if "gloo" in n]}, f)
raise SystemExit(rc)
