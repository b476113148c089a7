"""The model session of a run (base model, LoRA, tokenizer, loaded once and shared by the stages)
and every fingerprint that says which model, tokenizer and adapter a result was made with."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ntk_selector.config import LoraSettings, ModelConfig, RunConfig, to_dict
from ntk_selector.model.loading import (
    adapter_lora_settings,
    load_base_model,
    load_tokenizer,
    model_path,
    resolve_device,
    resolve_dtype,
    with_lora,
)


@dataclass
class Session:
    """The model (base + LoRA) and tokenizer, loaded once and shared by the stages of a run."""

    model_cfg: ModelConfig
    lora: LoraSettings
    run: RunConfig
    model: torch.nn.Module | None = None
    tokenizer: Any = None
    adapter: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _described: dict[str, dict[str, Any]] = field(default_factory=dict)

    def load(self, adapter: str | None) -> Session:
        """(Re)attach LoRA: the given adapter, or a fresh seeded one."""
        if self.model is None:
            base, self.tokenizer = load_base_model(self.model_cfg, quiet=self.run.quiet)
        else:
            base = self.model.unload() if hasattr(self.model, "unload") else self.model
        self.model = with_lora(base, self.lora, adapter, self.run.seed)
        self.adapter = adapter
        return self

    def load_tokenizer(self) -> Any:
        """The tokenizer alone (no model): for checks that must come before any model work."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(model_path(self.model_cfg, quiet=self.run.quiet))
        return self.tokenizer

    def describe(self) -> dict[str, Any]:
        """What defines the model side of a result (goes into store definitions); cached per adapter."""
        key = self.adapter or ""
        if key not in self._described:
            path = model_path(self.model_cfg, quiet=True)
            lora = adapter_lora_settings(self.adapter) if self.adapter else self.lora
            device = resolve_device(self.model_cfg.device)
            self._described[key] = {
                "model": path,
                "model_fingerprint": model_fingerprint(path),
                "tokenizer_fingerprint": fingerprint_folder(path, TOKENIZER_FILES),
                "adapter_fingerprint": adapter_content_fingerprint(self.adapter),
                "lora": to_dict(lora),
                "compute_dtype": str(resolve_dtype(self.model_cfg.dtype, device)).replace("torch.", ""),
            }
        return dict(self._described[key])


def adapter_content_fingerprint(adapter: str | None) -> str | None:
    """sha256 of an adapter's settings (order-free: PEFT writes target_modules from a set) and weights."""
    if not adapter or not Path(adapter).is_dir():
        return None
    cfg_path = Path(adapter) / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    canonical = {
        k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in cfg.items()
    }
    h = hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode())
    h.update(str(fingerprint_folder(adapter, ("adapter_model.safetensors", "adapter_model.bin"))).encode())
    return h.hexdigest()[:16]


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)


def fingerprint_folder(path: str | None, names: tuple[str, ...]) -> str | None:
    """sha256 over the named files of a folder (a model's config, an adapter's weights)."""
    if not path or not Path(path).is_dir():
        return None
    h = hashlib.sha256()
    for name in names:
        f = Path(path) / name
        if f.exists():
            h.update(name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def model_fingerprint(path: str) -> str:
    return fingerprint_folder(path, ("config.json", "model.safetensors", "model.safetensors.index.json")) or path
