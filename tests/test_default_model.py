"""The packaged SmolLM2 converts once into an HF folder that reloads fast and generates text."""

import time

import pytest

from ntk_selector.default_model import default_encoder_dir, default_model_dir


@pytest.mark.slow
def test_conversion_and_reload(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_dir(tmp_path, quiet=True)
    assert default_model_dir(tmp_path, quiet=True) == path  # cached: no second conversion
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert time.perf_counter() - t0 < 5
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert tok.chat_template and tok.pad_token_id is not None
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])


def test_encoder_folder_is_packaged():
    pytest.importorskip("transformers")
    path = default_encoder_dir()
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
