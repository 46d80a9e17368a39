"""make_elastic on a transformers model fed dict batches of keyword inputs (input_ids=, attention_mask=):
the sandwich rule calls the network with them."""

from __future__ import annotations

import pytest
import torch

import torchinn as inn

tf = pytest.importorskip("transformers")


def test_make_elastic_trains_a_llama_on_keyword_batches() -> None:
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tf.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 64, (2, 12), generator=g),
                "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(5)]
    net, report = inn.make_elastic(model, batches[0], batches, steps=3, lr=1e-4, full_tolerance=1.0)
    assert report.steps == 3 and 0 < report.train_seconds < report.seconds  # the conversion is not training
    net.resize(target=0.6)
    small = net.to_discrete(graph=True)
    with torch.no_grad():
        logits = small(**batches[0]).logits
    assert logits.shape == (2, 12, 64) and torch.isfinite(logits).all()
    assert sum(p.numel() for p in small.parameters()) <= 0.6 * sum(p.numel() for p in model.parameters())
