"""A small causal language model trained on the documentation text that ships with Python.

Text: ``pydoc_data.topics`` (the help topics of the Python reference, ~465 kB, in every CPython
install: nothing downloads). Every 8th topic (sorted by name) is held out; the rest is training
text. Tokens are bytes (vocabulary 256), so no tokenizer is needed and perplexity is per byte.

The model is a Hugging Face ``LlamaForCausalLM`` (grouped-query attention, RoPE, SwiGLU MLP)
trained by ``benchmarks/train_lm.py`` and shipped as
``torchinn_demo/checkpoints/lm_pydoc.safetensors`` (float16, ~2 MB; its config and training record
in the metadata). Needs ``transformers`` (the ``hf`` extra).
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

CHECKPOINT = "lm_pydoc.safetensors"
HELDOUT_EVERY = 8

#: the shipped model's configuration (LlamaConfig keyword arguments)
CONFIG: dict[str, Any] = dict(vocab_size=256, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                              pad_token_id=None)


def texts() -> tuple[bytes, bytes]:
    """(training text, held-out text) as bytes: every ``HELDOUT_EVERY``-th topic is held out."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    held = [topics[n] for i, n in enumerate(names) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    train = [topics[n] for i, n in enumerate(names) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    enc = lambda parts: "\n\n".join(parts).encode("utf-8")
    return enc(train), enc(held)


def tokens(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def windows(ids: Tensor, length: int, stride: int | None = None) -> Tensor:
    """Consecutive windows of ``length`` tokens (``stride`` apart, default ``length``)."""
    stride = stride or length
    n = (len(ids) - length) // stride + 1
    if n < 1:
        raise ValueError(f"text of {len(ids)} tokens is shorter than one window of {length}")
    return torch.stack([ids[i * stride: i * stride + length] for i in range(n)])


def build(config: dict[str, Any] | None = None) -> nn.Module:
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**(config or CONFIG)))


def load(path: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The shipped model (float32, eval mode) and its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        path = resources.files("torchinn_demo") / "checkpoints" / CHECKPOINT
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    model = build(meta["config"])
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval(), meta


@torch.no_grad()
def perplexity(model: nn.Module, ids: Tensor, length: int = 128, batch: int = 16,
               max_windows: int | None = None) -> float:
    """Per-byte perplexity of ``model`` on ``ids`` in non-overlapping windows of ``length``."""
    w = windows(ids, length)
    if max_windows is not None:
        w = w[:max_windows]
    total, count = 0.0, 0
    for i in range(0, len(w), batch):
        x = w[i:i + batch]
        out = model(x)
        logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                           x[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += x[:, 1:].numel()
    return math.exp(total / count)
