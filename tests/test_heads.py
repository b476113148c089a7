"""One numerical check decides the head shortcut for the training loss, the CE objective and the NTK
objective: a head that transforms its logits in a way no config attribute names is caught by all three."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import make_model

from ntk_selector.config import DataConfig
from ntk_selector.io.formats import to_conversation
from ntk_selector.io.tokens import collate, encode
from ntk_selector.model.heads import head_is_plain, shortcut_applies
from ntk_selector.training.loop import response_loss


class ScaledLogits(torch.nn.Module):
    """A causal LM whose forward halves the logits after a plain linear head (no config attribute says so)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def get_decoder(self):
        return self.inner.get_decoder()

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits = out.logits * 0.5
        return out


def batch_of(tok):
    rows = [{"prompt": "q one", "response": "an answer"}, {"prompt": "a longer question here", "response": "b"}]
    return collate(encode([to_conversation(r, DataConfig()) for r in rows], tok, DataConfig()), tok.pad_token_id)


def test_a_plain_head_takes_the_shortcut_and_a_scaled_one_does_not(tok):
    batch = batch_of(tok)
    plain = make_model(len(tok))
    assert head_is_plain(plain, batch) and shortcut_applies(plain, batch)
    scaled = ScaledLogits(make_model(len(tok)))
    assert not head_is_plain(scaled, batch) and not shortcut_applies(scaled, batch)


def test_training_loss_uses_the_real_logits_of_a_transformed_head(tok):
    """The loss equals cross-entropy of the model's own (halved) logits, not of head(hidden)."""
    batch = batch_of(tok)
    scaled = ScaledLogits(make_model(len(tok)))
    with torch.no_grad():
        logits = scaled(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        m = batch.labels != -100
        want = F.cross_entropy(logits[m].float(), batch.labels[m])
        unscaled = F.cross_entropy(2 * logits[m].float(), batch.labels[m])
        got = response_loss(scaled, batch)
    assert torch.allclose(got, want, rtol=1e-5) and not torch.allclose(got, unscaled, rtol=1e-3)
