"""Real domains: FPB, TFNS, PubMedQA and MMLU-Med with a P3 pool (docs/benchmarks/real_domains.md);
prepare_real_domains.py writes the data of this study and of the generative one."""
