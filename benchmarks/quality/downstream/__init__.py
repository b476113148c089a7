"""Downstream: drug-review sentiment from the packaged demo (docs/benchmarks/downstream.md); the command line is
downstream.py."""
