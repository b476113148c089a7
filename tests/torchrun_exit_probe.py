"""Run the command line like ``python -m ntk_selector``, then report which gloo threads are still alive.

Used as the torchrun entry in test_distributed: a process group that ``destroy_process_group`` could
not free keeps its worker threads into interpreter shutdown, where they can abort a finished run.
"""

import json
import os
import sys

from ntk_selector.cli import main

rc = main(sys.argv[1:])
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print("EXIT_PROBE " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "gloo_threads": [n for n in names if "gloo" in n]}),
      flush=True)
raise SystemExit(rc)
