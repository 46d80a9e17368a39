"""The shipped Llama (:mod:`torchinn_demo.lm`) re-declared in plain PyTorch, as nanoGPT- or
litgpt-style code writes it.

Same function as ``transformers.LlamaForCausalLM`` at the shipped configuration, written the way
hand-written transformers are: RMSNorm as a small module, the RoPE frequencies from
``torch.outer(positions, inv_freq)`` then ``cos`` / ``sin``, grouped-query attention whose keys
and values are expanded with ``repeat_interleave(n_rep, dim=1)``, a SwiGLU MLP, and an untied
(or tied) output head. The head count is read from the projections (``view(B, T, -1, head_dim)``),
so a model with fewer heads is the same class with smaller ``nn.Linear``s.

:func:`load` gives the shipped checkpoint in this class (its tensors are the
``LlamaForCausalLM``'s, renamed by :func:`from_hf_state_dict`); no ``transformers`` needed.

>>> model = HandwrittenLlama(vocab_size=16, dim=8, n_layers=1, n_head=2, n_kv_head=1, hidden_dim=12)
>>> model(torch.zeros(1, 3, dtype=torch.long)).shape
torch.Size([1, 3, 16])
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lm import CHECKPOINT

__all__ = ["HandwrittenLlama", "from_config", "from_hf_state_dict", "load"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Causal self-attention with ``n_kv_head`` key/value heads, each shared by ``n_rep`` query heads."""

    def __init__(self, dim: int, n_head: int, n_kv_head: int, head_dim: int) -> None:
        super().__init__()
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        self.head_dim = head_dim
        self.n_rep = n_head // n_kv_head
        self.wq = nn.Linear(dim, n_head * head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_head * head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_head * head_dim, bias=False)
        self.wo = nn.Linear(n_head * head_dim, dim, bias=False)

    @property
    def n_head(self) -> int:
        return self.wq.out_features // self.head_dim

    @property
    def n_kv_head(self) -> int:
        return self.wk.out_features // self.head_dim

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        k = self.wk(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, head_dim)
        v = self.wv(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(self.n_rep, dim=1)  # query head h reads key/value head h // n_rep
        v = v.repeat_interleave(self.n_rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: int, head_dim: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(dim, eps)
        self.attention = Attention(dim, n_head, n_kv_head, head_dim)
        self.ffn_norm = RMSNorm(dim, eps)
        self.feed_forward = MLP(dim, hidden_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class HandwrittenLlama(nn.Module):
    """A Llama decoder: token ids ``(B, T)`` to logits ``(B, T, vocab_size)``."""

    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_head: int, n_kv_head: int, hidden_dim: int,
                 head_dim: int | None = None, eps: float = 1e-5, rope_theta: float = 10000.0,
                 tie_embeddings: bool = False) -> None:
        super().__init__()
        head_dim = head_dim or dim // n_head
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(Block(dim, n_head, n_kv_head, head_dim, hidden_dim, eps) for _ in range(n_layers))
        self.norm = RMSNorm(dim, eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.tok_embeddings

    def forward(self, idx: Tensor) -> Tensor:
        t = torch.arange(idx.shape[1], device=idx.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)  # (T, head_dim / 2): position x frequency
        emb = torch.cat((freqs, freqs), dim=-1)
        x = self.tok_embeddings(idx)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.output(self.norm(x))


def from_config(config: dict[str, Any]) -> HandwrittenLlama:
    """A :class:`HandwrittenLlama` of a ``LlamaConfig``'s keyword arguments (as :data:`lm.CONFIG`)."""
    rope = config.get("rope_parameters") or {}
    return HandwrittenLlama(
        vocab_size=config["vocab_size"], dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
        n_head=config["num_attention_heads"],
        n_kv_head=config.get("num_key_value_heads") or config["num_attention_heads"],
        hidden_dim=config["intermediate_size"], head_dim=config.get("head_dim"),
        eps=config.get("rms_norm_eps", 1e-6), rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)))


_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
          "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
          "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
          "post_attention_layernorm": "ffn_norm"}


def from_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ``LlamaForCausalLM`` state dict with this module's names."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = name.replace("model.embed_tokens.", "tok_embeddings.").replace("model.norm.", "norm.")
        new = new.replace("lm_head.", "output.").replace("model.layers.", "layers.")
        for hf, mine in _NAMES.items():
            new = new.replace(f".{hf}.", f".{mine}.")
        out[new] = t
    return out


def load(path: str | Path | None = None) -> tuple[HandwrittenLlama, dict[str, Any]]:
    """The shipped model of :mod:`torchinn_demo.lm` as a :class:`HandwrittenLlama` (float32, eval
    mode) and its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        path = resources.files("torchinn_demo") / "checkpoints" / CHECKPOINT
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    model = from_config(meta["config"])
    state = from_hf_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    model.load_state_dict(state, strict=not meta["config"].get("tie_word_embeddings", False))
    return model.eval(), meta
