"""Generative domains: free-text answers, and the kernel check against answer length
(docs/benchmarks/generative_domains.md)."""
