"""Structured-pruning baselines for Llama-architecture language models (issue 23), implemented from
their papers and checked against the authors' reference code, on a Hugging Face
``transformers.LlamaForCausalLM`` (grouped-query attention allowed).

Every method has the signature ``prune_<method>(model, calibration, removed) -> LlamaForCausalLM``:

* ``calibration``: a list of ``(input_ids,)`` tuples (LongTensor ``[B, L]``), or of dicts with
  ``input_ids`` and ``attention_mask`` (padded positions are left out of every statistic and of
  the LLM-Pruner loss);
* ``removed``: how many non-embedding parameters to remove (:func:`non_embedding_params`: every
  parameter but the input embedding and the output head ``lm_head``, tied or not). The result has
  ``original - removed - 0.5 % <= count <= original - removed``;
* the input model is never modified (the methods prune a deep copy); the result is the same class
  with smaller ``nn.Linear`` layers (or fewer decoder layers), which ``generate()`` runs with its
  KV cache.

Structures: attention is pruned in whole key/value groups (one key/value head with the query heads
that share it: its ``q_proj``/``k_proj``/``v_proj`` rows and ``o_proj`` columns), the MLP in
channels (a ``gate_proj``/``up_proj`` row and the ``down_proj`` column). Every layer keeps at least
one group and one channel (a Llama attention with no head does not run). Where a layer's sizes
differ from the config (adaptive methods), the attention module carries its own ``num_heads`` /
``num_key_value_heads``; the config is updated only when every layer has the same sizes.

Methods (``METHODS``):

* ``wanda-sp`` (FLAP paper's Wanda-sp baseline; reference ``prune_wanda_sp`` of
  CASIA-IVA-Lab/FLAP): score of a structure = sum over its input channels ``j`` of the output
  projection (``o_proj`` for a group, ``down_proj`` for a channel) of ``|W_ij| * ||X_j||_2``
  (``X_j``: that channel's input over all calibration tokens). As in the reference code the
  ``q/k/v/gate/up`` rows are not scored. The same amount is pruned in every layer (see
  :func:`uniform_split` for how ``removed`` is split between groups and channels).
* ``flap`` (An et al. 2024, "Fluctuation-based adaptive structured pruning"): per input channel of
  ``o_proj``/``down_proj`` the sample variance of the input over all calibration tokens times the
  squared norm of its weight column ("WIFV"); for attention that score is squared (as the
  reference code does), standardized over the layer's channels (per layer and kind), averaged over
  a group's channels; MLP channels are standardized per layer. One ranking across all layers and
  both kinds ("AL-AM"); the lowest are removed, costed in parameters, until ``removed`` is reached
  (bias parameters included). Bias compensation: the removed channels' mean input times their
  weight columns becomes a bias of ``o_proj``/``down_proj`` (:func:`compensate`). The variance is
  the exact one (the reference code's running update aliases the old mean).
* ``llm-pruner`` (Ma et al. 2023): element-wise first-order Taylor importance ``|w * dL/dw|``
  summed over the weights of a coupled structure (group: q/k/v rows and o columns; channel: gate
  and up rows and the down column), ``L`` the next-token loss summed over the calibration batches'
  gradients. The same amount in every pruned layer; as the paper keeps LLaMA-7B's layers outside
  4..29 of 32 unpruned, layers ``round(4 L / 32) .. round(30 L / 32) - 1`` are pruned (SmolLM2, 30
  layers: 4..27) and take all of ``removed``. No LoRA recovery here (the benchmark tunes apart).
* ``shortgpt`` (Men et al. 2024): Block Influence ``BI_i = 1 - mean cos(h_in, h_out)`` of decoder
  layer ``i`` over calibration tokens; the ``k`` lowest-BI layers are deleted, ``k`` the most whose
  parameters fit in ``removed``. Since a layer is coarse, the remainder is removed by uniform
  Wanda-sp on MLP channels of the remaining layers (statistics taken again on the shortened model).

* ``slicegpt`` (Ashkboos et al. 2024), one-rotation variant (:mod:`benchmarks.llm_slicegpt`): the
  hidden size shrinks by one PCA rotation of the whole residual stream instead of the paper's one
  per block with ``Q_i^T Q_{i+1}`` shortcut matrices (which need a new decoder-layer module); the
  result stays a plain ``LlamaForCausalLM`` (output head untied, not counted); the remainder below
  one unit of hidden size goes in uniform Wanda-sp MLP channels.

Saving: the uniform methods, ShortGPT and SliceGPT update the config, so ``save_pretrained`` /
``from_pretrained`` should round-trip (not tested here); FLAP's per-layer sizes and its
``o_proj``/``down_proj`` biases do not fit a ``LlamaConfig`` (the per-layer round-trip is another
item of issue 23).

All statistics come from the unpruned model in one pass (FLAP does the same; Wanda's layer-by-layer
re-propagation through already pruned layers is not done).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .llm_slicegpt import prune_slicegpt, slice_hidden
from .llm_structures import (Moments, batches, channel_cost, collect, compensate, fill_mlp, finish, geometry,
                             group_cost, lowest, non_embedding_params, prepare, prune_layer, sync_config,
                             uniform_max, uniform_split)

__all__ = ["METHODS", "non_embedding_params", "collect", "compensate", "prune_layer", "group_cost", "channel_cost",
           "uniform_split", "slice_hidden", "prune_wanda_sp", "prune_flap", "prune_llm_pruner", "prune_shortgpt",
           "prune_slicegpt"]

# ----------------------------------------------------------------------------------------------
# the methods


def _uniform(model, removed, scores, layer_ids=None):
    """Prune ``layer_ids`` uniformly by ``scores(layer index) -> (group scores, channel scores)``."""
    layers = model.model.layers
    ids = list(range(len(layers))) if layer_ids is None else list(layer_ids)
    h, channels = uniform_split([layers[i] for i in ids], removed) if ids else (0, [])
    for i, c in zip(ids, channels):
        gs, cs = scores(i)
        prune_layer(layers[i], lowest(gs, h), lowest(cs, c))
    return model


def _wanda_scores(layer, attn: Moments, mlp: Moments) -> tuple[Tensor, Tensor]:
    g, qpk, hd = geometry(layer)
    o = (layer.self_attn.o_proj.weight.detach().abs() * attn.norm()).sum(0)
    d = (layer.mlp.down_proj.weight.detach().abs() * mlp.norm()).sum(0)
    return o.reshape(g, qpk * hd).sum(1), d



def prune_wanda_sp(model, calibration, removed: int):
    """Wanda-sp: ``|W| * ||X||`` per structure, the same amount in every layer (module docstring)."""
    layers = list(model.model.layers)
    model, original = prepare(model, calibration, removed, "wanda-sp", uniform_max(layers),
                               "all key/value groups and MLP channels but one of each per layer")
    if removed:
        attn, mlp, _ = collect(model, calibration)
        _uniform(model, removed, lambda i: _wanda_scores(model.model.layers[i], attn[i], mlp[i]))
    return finish(model, original, removed, "wanda-sp")


def _standardize(x: Tensor) -> Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-12)


def flap_select(model, attn, mlp, removed: int) -> tuple[list[Tensor], list[Tensor]]:
    """FLAP's global choice: per layer the kept groups and channels (module docstring)."""
    layers = model.model.layers
    hidden = model.config.hidden_size
    items = []   # (score, layer, kind 0 group / 1 channel, index, cost)
    for i, layer in enumerate(layers):
        g, qpk, hd = geometry(layer)
        o, d = layer.self_attn.o_proj.weight.detach(), layer.mlp.down_proj.weight.detach()
        sa = _standardize((attn[i].var() * o.pow(2).sum(0)) ** 2).reshape(g, qpk * hd).mean(1)
        sm = _standardize(mlp[i].var() * d.pow(2).sum(0))
        items += [(float(s), i, 0, j, group_cost(layer)) for j, s in enumerate(sa)]
        items += [(float(s), i, 1, j, channel_cost(layer)) for j, s in enumerate(sm)]
    items.sort(key=lambda t: t[0])
    left = [[geometry(l)[0], l.mlp.down_proj.in_features] for l in layers]
    drop = [[set(), set()] for _ in layers]
    total = 0
    for _, i, kind, j, cost in items:
        if total >= removed:
            break
        if left[i][kind] == 1:
            continue
        lin = layers[i].self_attn.o_proj if kind == 0 else layers[i].mlp.down_proj
        extra = cost - (hidden if not drop[i][kind] and lin.bias is None else 0)   # a new bias costs
        if kind == 0 and total + extra > removed:
            continue            # a group would overshoot: the channels make up the rest
        drop[i][kind].add(j)
        left[i][kind] -= 1
        total += extra
    keep = [[torch.tensor(sorted(set(range(n)) - d), dtype=torch.int64) for n, d in
             zip((geometry(l)[0], l.mlp.down_proj.in_features), dr)] for l, dr in zip(layers, drop)]
    if total < removed:
        raise ValueError(f"flap: removed={removed} is more than it can remove ({total})")
    return [k[0] for k in keep], [k[1] for k in keep]


def _flap_max(layers) -> int:
    out = 0
    for l in layers:
        hidden = l.self_attn.o_proj.out_features
        g, inter = geometry(l)[0], l.mlp.down_proj.in_features
        out += max((g - 1) * group_cost(l) - (hidden if g > 1 and l.self_attn.o_proj.bias is None else 0), 0)
        out += max((inter - 1) * channel_cost(l) - (hidden if inter > 1 and l.mlp.down_proj.bias is None else 0), 0)
    return out


def prune_flap(model, calibration, removed: int):
    """FLAP: fluctuation metric, global adaptive ranking, bias compensation (module docstring)."""
    model, original = prepare(model, calibration, removed, "flap", _flap_max(list(model.model.layers)),
                               "all key/value groups and MLP channels but one of each per layer, less the "
                               "compensation biases")
    if removed:
        attn, mlp, _ = collect(model, calibration)
        kg, kc = flap_select(model, attn, mlp, removed)
        for i, layer in enumerate(model.model.layers):
            prune_layer(layer, kg[i], kc[i], attn[i].mean(), mlp[i].mean())
    return finish(model, original, removed, "flap")


def llm_pruner_layers(n: int) -> range:
    """The layers LLM-Pruner prunes: its LLaMA-7B range 4..29 of 32 scaled to ``n`` layers."""
    return range(round(4 * n / 32), round(30 * n / 32))


def _taylor_scores(layer) -> tuple[Tensor, Tensor]:
    a, m = layer.self_attn, layer.mlp
    g, qpk, hd = geometry(layer)

    def t(lin):
        return (lin.weight.detach() * lin.weight.grad).abs()
    q = t(a.q_proj).sum(1).reshape(g, -1).sum(1)
    k = t(a.k_proj).sum(1).reshape(g, -1).sum(1)
    v = t(a.v_proj).sum(1).reshape(g, -1).sum(1)
    o = t(a.o_proj).sum(0).reshape(g, -1).sum(1)
    return q + k + v + o, t(m.gate_proj).sum(1) + t(m.up_proj).sum(1) + t(m.down_proj).sum(0)


def prune_llm_pruner(model, calibration, removed: int):
    """LLM-Pruner: element-wise first-order Taylor importance, uniform over its layer range."""
    ids = llm_pruner_layers(len(model.model.layers))
    model, original = prepare(model, calibration, removed, "llm-pruner",
                               uniform_max([model.model.layers[i] for i in ids]),
                               f"all key/value groups and MLP channels but one of each in layers {ids.start}.."
                               f"{ids.stop - 1}")
    if removed:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(True)
        for ids_, mask in batches(calibration):
            labels = ids_.masked_fill(mask == 0, -100)
            model(input_ids=ids_, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        with torch.no_grad():
            _uniform(model, removed, lambda i: _taylor_scores(model.model.layers[i]), ids)
        model.zero_grad(set_to_none=True)
    return finish(model, original, removed, "llm-pruner")


def _layer_params(layer) -> int:
    return sum(p.numel() for p in layer.parameters())


def prune_shortgpt(model, calibration, removed: int):
    """ShortGPT: delete the lowest-Block-Influence layers, then uniform Wanda-sp on MLP channels of
    the remaining layers for what a whole layer cannot match (module docstring)."""
    layers = list(model.model.layers)
    lc, cc, inter = _layer_params(layers[0]), channel_cost(layers[0]), layers[0].mlp.down_proj.in_features
    maximum = (len(layers) - 1) * lc + (inter - 1) * cc
    model, original = prepare(model, calibration, removed, "shortgpt", maximum,
                               "all decoder layers but one and that one's MLP channels but one")
    if removed:
        _, _, bi = collect(model, calibration)
        k = min(removed // lc, len(layers) - 1)
        gone = set(torch.argsort(bi, stable=True)[:k].tolist())
        model.model.layers = nn.ModuleList([l for i, l in enumerate(model.model.layers) if i not in gone])
        sync_config(model)
        fill_mlp(model, calibration, removed - k * lc, "shortgpt")
        model.shortgpt_removed_layers = sorted(gone)
    return finish(model, original, removed, "shortgpt")


METHODS = {"wanda-sp": prune_wanda_sp, "flap": prune_flap, "llm-pruner": prune_llm_pruner,
           "shortgpt": prune_shortgpt, "slicegpt": prune_slicegpt}
