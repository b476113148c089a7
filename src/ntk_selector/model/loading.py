"""Model, tokenizer and LoRA loading, plus the fingerprints stores use to refuse mismatched resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ntk_selector.config import LoraSettings, ModelConfig
from ntk_selector.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(
            f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device auto or cpu"
        )
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"--device {name}: MPS is not available here; use --device auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise UserError(f"unknown dtype '{name}' (use auto, float32, bfloat16 or float16)") from None


def model_path(cfg: ModelConfig, quiet: bool = False) -> str:
    """The model folder / hub id to load; the packaged SmolLM2 when none is given."""
    if cfg.model:
        return cfg.model
    from ntk_selector.model.default_model import default_model_dir

    return str(default_model_dir(quiet=quiet))


def quiet_transformers() -> None:
    """Our own progress bars report the work; transformers' per-load bars are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise UserError(f"cannot load a tokenizer from '{path}': {_first_line(e)}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_base_model(cfg: ModelConfig, quiet: bool = False) -> tuple[torch.nn.Module, Any]:
    """Base causal LM (frozen) and its tokenizer, on the configured device and dtype."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    path = model_path(cfg, quiet)
    if _looks_like_path(path) and not Path(path).exists():
        raise UserError(f"model path not found: {path}")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:
        raise UserError(f"cannot load model '{path}': {_first_line(e)}") from e
    tok = load_tokenizer(path)
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def lora_config(lora: LoraSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def with_lora(model: torch.nn.Module, lora: LoraSettings, adapter: str | None, seed: int) -> torch.nn.Module:
    """Load a PEFT adapter folder, or attach a fresh seeded LoRA (B = 0) when none is given."""
    from peft import PeftModel, get_peft_model

    if adapter:
        if not (Path(adapter) / "adapter_config.json").exists():
            raise UserError(f"adapter folder not found or not a PEFT adapter: {adapter}")
        try:
            peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        except Exception as e:
            raise UserError(f"adapter {adapter} does not fit the model: {_first_line(e)}") from e
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model = get_peft_model(model, lora_config(lora))
    peft_model.eval()
    return peft_model


def lora_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable LoRA parameters in ``named_parameters()`` order (A then B per module)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


def adapter_lora_settings(adapter: str) -> LoraSettings:
    """The LoRA settings an adapter folder was trained with (for meta.json)."""
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return LoraSettings(
        rank=cfg["r"],
        lora_alpha=float(cfg["lora_alpha"]),
        lora_dropout=float(cfg.get("lora_dropout", 0.0)),
        target_modules=sorted(cfg["target_modules"])
        if isinstance(cfg["target_modules"], list)
        else [cfg["target_modules"]],
    )


def _looks_like_path(s: str) -> bool:
    """Hub ids look like 'org/name'; anything else with a slash or a leading ./ ~ is a path."""
    return s.startswith((".", "/", "~")) or s.count("/") > 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
