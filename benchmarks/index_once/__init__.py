"""Index once: the pool index against the paper's mode, and the index at pool scale (docs/benchmarks/index_once.md)."""
