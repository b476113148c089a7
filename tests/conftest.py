"""Tiny random Llama + byte-level tokenizer with a ChatML template, built inside the tests
(no downloads), and small JSONL domain/pool files."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from types import ModuleType

# No network in tests, and the datasets library's Arrow cache in a throw-away folder.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ntk-selector-datasets-"))

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(script: str, module_name: str) -> ModuleType:
    """A script of benchmarks/ (not part of the package) loaded as a module, registered in sys.modules
    under ``module_name`` because dataclasses look their module up while the file runs."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    spec.loader.exec_module(mod)
    return mod


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(chat_template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        tok.chat_template = CHATML
    return tok


def make_model(vocab_size: int, seed: int = 0, tie: bool = False, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


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


WORDS = (
    "good bad great awful fine poor nice terrible okay superb dull bright code python movie drug pain sleep "
    "headline market debate vote chat hello answer question"
).split()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def synthetic_rows(n: int, seed: int, tasks: tuple[str, ...] = ("a", "b", "c")) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        prompt = f"[{task}] " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
        rows.append({"prompt": prompt, "response": response, "task": task})
    return rows


@pytest.fixture()
def small_files(tmp_path) -> tuple[Path, Path]:
    domain = write_jsonl(tmp_path / "domain.jsonl", synthetic_rows(8, 1, ("dom",)))
    pool = write_jsonl(tmp_path / "pool.jsonl", synthetic_rows(40, 2))
    return domain, pool
