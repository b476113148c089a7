"""Fixtures on the tiny random Llama + byte-level tokenizer with a ChatML template and the small JSONL
domain/pool files of benchmarks/tiny.py (built in-process, no downloads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# No network in tests, and the datasets library's Arrow cache in a throw-away folder.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ntk-selector-datasets-"))

import pytest
import torch

from benchmarks.tiny import make_model, make_tokenizer, synthetic_rows, write_jsonl

__all__ = ["make_model", "make_tokenizer", "synthetic_rows", "write_jsonl"]  # imported by the test modules


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model + tokenizer folder usable as --model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = make_tokenizer()
    model = make_model(len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def confident_model_dir(tmp_path_factory):
    """The tiny model with a 30x larger LM head: at the default init its logits stay within about +-1, too flat
    to learn a fixed answer that greedy decoding reproduces; LoRA still trains only q/k/v/o."""
    path = tmp_path_factory.mktemp("confident-llama")
    tok = make_tokenizer()
    model = make_model(len(tok))
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture()
def one_thread():
    """Tiny models run several times faster on one thread when the cores are shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def tok():
    return make_tokenizer()


@pytest.fixture()
def lora_model(tok):
    """Tiny model with a random (non-zero B) LoRA on q/k/v/o."""
    from peft import LoraConfig, get_peft_model

    model = make_model(len(tok))
    torch.manual_seed(1)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, cfg)
    peft_model.eval()
    return peft_model


@pytest.fixture()
def small_files(tmp_path) -> tuple[Path, Path]:
    domain = write_jsonl(tmp_path / "domain.jsonl", synthetic_rows(8, 1, ("dom",)))
    pool = write_jsonl(tmp_path / "pool.jsonl", synthetic_rows(40, 2))
    return domain, pool
