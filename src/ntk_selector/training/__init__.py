"""LoRA fine-tuning: the training loop, its checkpoints, and the train command's driver."""
