"""After (or beside) a selection: evaluation, kernel-regression prediction, diagnostics, the exact eNTK.
The run report that diagnose draws lives in selection/report.py, below this layer, because select
writes it too."""
