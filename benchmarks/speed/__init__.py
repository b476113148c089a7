"""Speed: featurize, embed and projection against plain baselines on CPU and GPU, bf16, and the cost
estimate against the run it predicts (docs/benchmarks/speed.md)."""
