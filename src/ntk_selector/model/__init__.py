"""The model side: loading models and tokenizers, the packaged default model, LoRA heads, the sentence encoder."""
