"""SliceGPT (Ashkboos et al. 2024) for :mod:`benchmarks.llm_baselines`, the one-rotation variant:
RMSNorm scales folded into the linears that read them, one orthogonal ``Q`` from the PCA of the
residual stream, the hidden size sliced, the result a plain ``LlamaForCausalLM`` with a smaller
``hidden_size`` and an untied output head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .llm_structures import batches, fill_mlp, finish, has_bias, new_linear, non_embedding_params, prepare

# ----------------------------------------------------------------------------------------------
# SliceGPT with one rotation


def _readers(model) -> list[nn.Linear]:
    out = []
    for l in model.model.layers:
        out += [l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj, l.mlp.gate_proj, l.mlp.up_proj]
    return out + [model.lm_head]


def _writers(model) -> list[nn.Linear]:
    return [m for l in model.model.layers for m in (l.self_attn.o_proj, l.mlp.down_proj)]


def _per_hidden(model) -> int:
    """Non-embedding parameters per unit of hidden size."""
    norms = 2 * len(model.model.layers) + 1
    return (sum(m.out_features for m in _readers(model)[:-1]) + norms
            + sum(m.in_features + has_bias(m) for m in _writers(model)))


@torch.no_grad()
def _fold_norms(model) -> None:
    """Untie the output head and fold every RMSNorm scale into the linears that read it."""
    model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.config.tie_word_embeddings = False
    pairs = [(l.input_layernorm, (l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj))
             for l in model.model.layers]
    pairs += [(l.post_attention_layernorm, (l.mlp.gate_proj, l.mlp.up_proj)) for l in model.model.layers]
    pairs.append((model.model.norm, (model.lm_head,)))
    for norm, lins in pairs:
        for lin in lins:
            lin.weight.mul_(norm.weight[None])
        norm.weight.fill_(1.0)


@torch.no_grad()
def _stream_covariance(model, calibration) -> Tensor:
    """``sum x x^T`` over the inputs of every RMSNorm (the residual stream at every block), each
    token scaled to unit RMS (the norms make every block see only the direction)."""
    hidden = model.config.hidden_size
    cov = torch.zeros(hidden, hidden, dtype=torch.float64)
    state = {}

    def add(m, a):
        x = a[0][state["mask"]].double()
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        cov.add_(x.T @ x)
    norms = [n for l in model.model.layers for n in (l.input_layernorm, l.post_attention_layernorm)]
    hooks = [n.register_forward_pre_hook(add) for n in norms + [model.model.norm]]
    try:
        for ids, mask in batches(calibration):
            state["mask"] = mask.bool()
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return cov


@torch.no_grad()
def slice_hidden(model, calibration, width: int):
    """SliceGPT's rotate-and-slice in place with one orthogonal ``Q`` for the whole residual stream:
    norms folded, ``Q`` the eigenvectors of :func:`_stream_covariance` (largest first), the
    embedding and every linear that writes the stream (o/down) rotated by ``Q[:, :width]^T``,
    every linear that reads it (q/k/v/gate/up/lm_head) by ``Q[:, :width]``; the RMSNorms keep
    dividing by the original width (their scale becomes ``sqrt(hidden / width)``)."""
    hidden = model.config.hidden_size
    _fold_norms(model)
    cov = _stream_covariance(model, calibration)
    _, vecs = torch.linalg.eigh(cov)
    q = vecs.flip(1)[:, :width].float()
    emb = model.model.embed_tokens
    emb.weight = nn.Parameter(emb.weight.detach() @ q)
    emb.embedding_dim = width
    for lin in _readers(model):
        new = new_linear(lin.weight.detach() @ q, None if lin.bias is None else lin.bias.detach())
        _replace(model, lin, new)
    for lin in _writers(model):
        new = new_linear(q.T @ lin.weight.detach(), None if lin.bias is None else q.T @ lin.bias.detach())
        _replace(model, lin, new)
    for norm in [n for l in model.model.layers for n in (l.input_layernorm, l.post_attention_layernorm)] + [
            model.model.norm]:
        norm.weight = nn.Parameter(torch.full((width,), math.sqrt(hidden / width)))
    model.config.hidden_size = width
    return model


def _replace(model, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)


def prune_slicegpt(model, calibration, removed: int):
    """SliceGPT, one-rotation variant (:func:`slice_hidden`): the hidden size ``d`` is the smallest
    whose count is at most ``original - removed`` plus less than one unit of hidden size, the rest
    removed as uniform Wanda-sp MLP channels (as ShortGPT's remainder). The output head is untied
    (it is not counted). Differs from the paper: one ``Q`` for all layers instead of one per block
    with ``Q_i^T Q_{i+1}`` shortcut matrices in the residual (those need a new decoder-layer
    module; with one ``Q`` the result stays a plain ``LlamaForCausalLM`` with a smaller
    ``hidden_size``); no shortcut parameters to count either."""
    per = _per_hidden(model)
    original = non_embedding_params(model)
    fixed = original - per * model.config.hidden_size
    model, original = prepare(model, calibration, removed, "slicegpt", original - fixed - per,
                               "all of the hidden size but one unit")
    if removed:
        width = -(-(original - removed - fixed) // per)
        slice_hidden(model, calibration, width)
        fill_mlp(model, calibration, non_embedding_params(model) - (original - removed), "slicegpt")
    return finish(model, original, removed, "slicegpt")

