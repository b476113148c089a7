"""Quality: does fine-tuning on D and the selected rows beat the alternatives (one package per study)."""
