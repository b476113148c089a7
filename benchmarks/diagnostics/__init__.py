"""Diagnostics on the demo: NTK stability, exact eNTK vs the Jacobian-free kernel, projection error
(docs/benchmarks/diagnostics.md)."""
