"""Per-row features: tokenization, the per-sample gradient collector, projection, embeddings, the batch
runner, kernels."""
