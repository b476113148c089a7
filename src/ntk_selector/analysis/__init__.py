"""After (or beside) a selection: evaluation, kernel-regression prediction, diagnostics, the run report."""
