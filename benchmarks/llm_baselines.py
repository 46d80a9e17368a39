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

All statistics come from the unpruned model in one pass (FLAP does the same; Wanda's layer-by-layer
re-propagation through already pruned layers is not done).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------
# counting and structure sizes


def non_embedding_params(model: nn.Module) -> int:
    """Parameters of ``model`` except the input embedding and the output head (``lm_head``)."""
    skip = {id(p) for p in model.model.embed_tokens.parameters()}
    if getattr(model, "lm_head", None) is not None:
        skip |= {id(p) for p in model.lm_head.parameters()}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in skip and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _geometry(layer) -> tuple[int, int, int]:
    """(key/value groups, query heads per group, head_dim) of a decoder layer."""
    attn = layer.self_attn
    hd = attn.head_dim
    groups = attn.k_proj.out_features // hd
    return groups, attn.q_proj.out_features // hd // groups, hd


def _nb(lin: nn.Linear) -> int:
    return 1 if lin.bias is not None else 0


def group_cost(layer) -> int:
    """Parameters of one key/value group (its q/k/v rows with biases and its o_proj columns)."""
    a = layer.self_attn
    _, qpk, hd = _geometry(layer)
    return (qpk * hd * (a.q_proj.in_features + _nb(a.q_proj)) + hd * (a.k_proj.in_features + _nb(a.k_proj))
            + hd * (a.v_proj.in_features + _nb(a.v_proj)) + qpk * hd * a.o_proj.out_features)


def channel_cost(layer) -> int:
    """Parameters of one MLP channel (gate and up rows with biases, the down column)."""
    m = layer.mlp
    return m.gate_proj.in_features + _nb(m.gate_proj) + m.up_proj.in_features + _nb(m.up_proj) + m.down_proj.out_features


def _check_removed(removed, maximum: int, method: str, what: str) -> None:
    if isinstance(removed, bool) or not isinstance(removed, int) or not 0 <= removed <= maximum:
        raise ValueError(f"{method}: removed must be an integer in [0, {maximum}] ({what}), got {removed!r}")


def _uniform_max(layers) -> int:
    return sum((_geometry(l)[0] - 1) * group_cost(l) + (l.mlp.down_proj.in_features - 1) * channel_cost(l)
               for l in layers)


def uniform_split(layers, removed: int) -> tuple[int, list[int]]:
    """How a uniform method splits ``removed`` over ``layers`` (identical in shape): the same number
    ``h`` of key/value groups in every layer, ``h = round(r * groups)`` with ``r = removed / (the
    layers' prunable parameters)`` (at most ``groups - 1``, and never more than ``removed``), then
    the rest in MLP channels, ``ceil(rest / channel cost)`` of them spread as evenly as possible
    (layer ``i`` gets one more while ``i < remainder``). Returns ``(h, channels per layer)``."""
    n = len(layers)
    g, _, _ = _geometry(layers[0])
    inter = layers[0].mlp.down_proj.in_features
    cg, cc = group_cost(layers[0]), channel_cost(layers[0])
    r = removed / (n * (g * cg + inter * cc))
    h = min(round(r * g), g - 1, removed // (n * cg))
    while True:
        channels = -(-(removed - n * h * cg) // cc)
        if channels <= n * (inter - 1) or h >= g - 1:
            break
        h += 1
    if channels > n * (inter - 1):
        raise ValueError(f"removed={removed} does not fit in {n} layers")
    return h, [channels // n + (i < channels % n) for i in range(n)]


# ----------------------------------------------------------------------------------------------
# calibration statistics


def _batches(calibration):
    if not isinstance(calibration, (list, tuple)) or not calibration:
        raise ValueError("calibration must be a non-empty list of (input_ids,) tuples or dicts with input_ids")
    for b in calibration:
        if isinstance(b, dict):
            ids, mask = b["input_ids"], b.get("attention_mask")
        elif isinstance(b, Tensor):
            ids, mask = b, None
        else:
            ids, mask = b[0], None
        if not isinstance(ids, Tensor) or ids.dim() != 2:
            raise ValueError(f"calibration input_ids must be a LongTensor [B, L], got {type(ids).__name__}")
        yield ids, (torch.ones_like(ids) if mask is None else mask).to(torch.int64)


class _Moments:
    """Per-channel count, sum, sum of squares (float64) of a Linear's input, padded tokens left out."""

    def __init__(self):
        self.n, self.s, self.s2 = 0, 0.0, 0.0

    def add(self, x: Tensor) -> None:
        x = x.detach().double()
        self.n += x.shape[0]
        self.s = self.s + x.sum(0)
        self.s2 = self.s2 + (x * x).sum(0)

    def mean(self) -> Tensor:
        return (self.s / self.n).float()

    def var(self) -> Tensor:
        return ((self.s2 - self.s * self.s / self.n) / max(self.n - 1, 1)).clamp_min(0).float()

    def norm(self) -> Tensor:
        return self.s2.sqrt().float()


@torch.no_grad()
def collect(model, calibration) -> tuple[list[_Moments], list[_Moments], Tensor]:
    """One pass of ``model`` over ``calibration``: the input moments of every ``o_proj`` and
    ``down_proj``, and every decoder layer's Block Influence (``1 - mean cosine``)."""
    layers = list(model.model.layers)
    attn, mlp = [_Moments() for _ in layers], [_Moments() for _ in layers]
    cos_sum, count = torch.zeros(len(layers), dtype=torch.float64), [0]
    state = {}
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, i=i: attn[i].add(a[0][state["mask"]])))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: mlp[i].add(a[0][state["mask"]])))

        def block(m, args, kwargs, out, i=i):
            hin = args[0] if args else kwargs["hidden_states"]
            hout = out[0] if isinstance(out, (tuple, list)) else out
            c = nn.functional.cosine_similarity(hin[state["mask"]].double(), hout[state["mask"]].double(), dim=-1)
            cos_sum[i] += c.sum()
        hooks.append(layer.register_forward_hook(block, with_kwargs=True))
    try:
        model.eval()
        for ids, mask in _batches(calibration):
            state["mask"] = mask.bool()
            count[0] += int(mask.sum())
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return attn, mlp, (1 - cos_sum / count[0]).float()


# ----------------------------------------------------------------------------------------------
# surgery


def _linear(w: Tensor, b: Tensor | None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def _rows(lin: nn.Linear, idx: Tensor) -> nn.Linear:
    return _linear(lin.weight[idx], None if lin.bias is None else lin.bias[idx])


def compensate(lin: nn.Linear, keep: Tensor, mean: Tensor | None) -> nn.Linear:
    """``lin`` with only the input columns ``keep``; with ``mean`` (the mean input of every column),
    the removed columns' mean contribution ``W[:, removed] @ mean[removed]`` becomes (is added to)
    the bias (FLAP's bias compensation: exact where the removed inputs are constant)."""
    w = lin.weight.detach()
    drop = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    drop[keep] = False
    b = None if lin.bias is None else lin.bias.detach().clone()
    if mean is not None and bool(drop.any()):
        extra = w[:, drop] @ mean[drop].to(w.dtype)
        b = extra if b is None else b + extra
    return _linear(w[:, keep], b)


def prune_layer(layer, keep_groups: Tensor, keep_channels: Tensor, attn_mean=None, mlp_mean=None) -> None:
    """Keep the key/value groups ``keep_groups`` and the MLP channels ``keep_channels`` of a decoder
    layer in place (with bias compensation from the input means if given)."""
    a, m = layer.self_attn, layer.mlp
    g, qpk, hd = _geometry(layer)
    keep_groups, keep_channels = keep_groups.sort().values, keep_channels.sort().values
    if len(keep_groups) < g:
        kv = (keep_groups[:, None] * hd + torch.arange(hd)).reshape(-1)
        q = ((keep_groups[:, None] * qpk + torch.arange(qpk))[..., None] * hd + torch.arange(hd)).reshape(-1)
        a.q_proj, a.k_proj, a.v_proj = _rows(a.q_proj, q), _rows(a.k_proj, kv), _rows(a.v_proj, kv)
        a.o_proj = compensate(a.o_proj, q, attn_mean)
        a.num_key_value_heads, a.num_heads = len(keep_groups), len(keep_groups) * qpk
    if len(keep_channels) < m.down_proj.in_features:
        m.gate_proj, m.up_proj = _rows(m.gate_proj, keep_channels), _rows(m.up_proj, keep_channels)
        m.down_proj = compensate(m.down_proj, keep_channels, mlp_mean)
        m.intermediate_size = len(keep_channels)


def _sync_config(model) -> None:
    """The config's sizes from the layers when every layer has the same ones."""
    layers = model.model.layers
    cfg = model.config
    cfg.head_dim = layers[0].self_attn.head_dim
    shapes = {(_geometry(l)[0], l.mlp.down_proj.in_features) for l in layers}
    if len(shapes) == 1:
        (g, inter), = shapes
        cfg.num_key_value_heads, cfg.num_attention_heads = g, g * _geometry(layers[0])[1]
        cfg.intermediate_size = inter
    cfg.num_hidden_layers = len(layers)
    for i, l in enumerate(layers):
        l.self_attn.layer_idx = i


def _lowest(scores: Tensor, k: int) -> Tensor:
    """Indices kept when the ``k`` lowest of ``scores`` go."""
    order = torch.argsort(scores, stable=True)
    return order[k:]


def _finish(model, original: int, removed: int, method: str):
    _sync_config(model)
    got = original - non_embedding_params(model)
    if not removed <= got <= removed + 0.005 * (original - removed):
        raise RuntimeError(f"{method}: removed {got} parameters for a target of {removed}")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# the methods


def _uniform(model, removed, scores, layer_ids=None):
    """Prune ``layer_ids`` uniformly by ``scores(layer index) -> (group scores, channel scores)``."""
    layers = model.model.layers
    ids = list(range(len(layers))) if layer_ids is None else list(layer_ids)
    h, channels = uniform_split([layers[i] for i in ids], removed) if ids else (0, [])
    for i, c in zip(ids, channels):
        gs, cs = scores(i)
        prune_layer(layers[i], _lowest(gs, h), _lowest(cs, c))
    return model


def _wanda_scores(layer, attn: _Moments, mlp: _Moments) -> tuple[Tensor, Tensor]:
    g, qpk, hd = _geometry(layer)
    o = (layer.self_attn.o_proj.weight.detach().abs() * attn.norm()).sum(0)
    d = (layer.mlp.down_proj.weight.detach().abs() * mlp.norm()).sum(0)
    return o.reshape(g, qpk * hd).sum(1), d


def _prepare(model, calibration, removed, method, maximum, what):
    _check_removed(removed, maximum, method, what)
    list(_batches(calibration))     # validate before the work
    return copy.deepcopy(model).eval(), non_embedding_params(model)


def prune_wanda_sp(model, calibration, removed: int):
    """Wanda-sp: ``|W| * ||X||`` per structure, the same amount in every layer (module docstring)."""
    layers = list(model.model.layers)
    model, original = _prepare(model, calibration, removed, "wanda-sp", _uniform_max(layers),
                               "all key/value groups and MLP channels but one of each per layer")
    if removed:
        attn, mlp, _ = collect(model, calibration)
        _uniform(model, removed, lambda i: _wanda_scores(model.model.layers[i], attn[i], mlp[i]))
    return _finish(model, original, removed, "wanda-sp")


def _standardize(x: Tensor) -> Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-12)


def flap_select(model, attn, mlp, removed: int) -> tuple[list[Tensor], list[Tensor]]:
    """FLAP's global choice: per layer the kept groups and channels (module docstring)."""
    layers = model.model.layers
    hidden = model.config.hidden_size
    items = []   # (score, layer, kind 0 group / 1 channel, index, cost)
    for i, layer in enumerate(layers):
        g, qpk, hd = _geometry(layer)
        o, d = layer.self_attn.o_proj.weight.detach(), layer.mlp.down_proj.weight.detach()
        sa = _standardize((attn[i].var() * o.pow(2).sum(0)) ** 2).reshape(g, qpk * hd).mean(1)
        sm = _standardize(mlp[i].var() * d.pow(2).sum(0))
        items += [(float(s), i, 0, j, group_cost(layer)) for j, s in enumerate(sa)]
        items += [(float(s), i, 1, j, channel_cost(layer)) for j, s in enumerate(sm)]
    items.sort(key=lambda t: t[0])
    left = [[_geometry(l)[0], l.mlp.down_proj.in_features] for l in layers]
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
             zip((_geometry(l)[0], l.mlp.down_proj.in_features), dr)] for l, dr in zip(layers, drop)]
    if total < removed:
        raise ValueError(f"flap: removed={removed} is more than it can remove ({total})")
    return [k[0] for k in keep], [k[1] for k in keep]


def _flap_max(layers) -> int:
    out = 0
    for l in layers:
        hidden = l.self_attn.o_proj.out_features
        g, inter = _geometry(l)[0], l.mlp.down_proj.in_features
        out += max((g - 1) * group_cost(l) - (hidden if g > 1 and l.self_attn.o_proj.bias is None else 0), 0)
        out += max((inter - 1) * channel_cost(l) - (hidden if inter > 1 and l.mlp.down_proj.bias is None else 0), 0)
    return out


def prune_flap(model, calibration, removed: int):
    """FLAP: fluctuation metric, global adaptive ranking, bias compensation (module docstring)."""
    model, original = _prepare(model, calibration, removed, "flap", _flap_max(list(model.model.layers)),
                               "all key/value groups and MLP channels but one of each per layer, less the "
                               "compensation biases")
    if removed:
        attn, mlp, _ = collect(model, calibration)
        kg, kc = flap_select(model, attn, mlp, removed)
        for i, layer in enumerate(model.model.layers):
            prune_layer(layer, kg[i], kc[i], attn[i].mean(), mlp[i].mean())
    return _finish(model, original, removed, "flap")


def llm_pruner_layers(n: int) -> range:
    """The layers LLM-Pruner prunes: its LLaMA-7B range 4..29 of 32 scaled to ``n`` layers."""
    return range(round(4 * n / 32), round(30 * n / 32))


def _taylor_scores(layer) -> tuple[Tensor, Tensor]:
    a, m = layer.self_attn, layer.mlp
    g, qpk, hd = _geometry(layer)

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
    model, original = _prepare(model, calibration, removed, "llm-pruner",
                               _uniform_max([model.model.layers[i] for i in ids]),
                               f"all key/value groups and MLP channels but one of each in layers {ids.start}.."
                               f"{ids.stop - 1}")
    if removed:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(True)
        for ids_, mask in _batches(calibration):
            labels = ids_.masked_fill(mask == 0, -100)
            model(input_ids=ids_, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        with torch.no_grad():
            _uniform(model, removed, lambda i: _taylor_scores(model.model.layers[i]), ids)
        model.zero_grad(set_to_none=True)
    return _finish(model, original, removed, "llm-pruner")


def _layer_params(layer) -> int:
    return sum(p.numel() for p in layer.parameters())


def prune_shortgpt(model, calibration, removed: int):
    """ShortGPT: delete the lowest-Block-Influence layers, then uniform Wanda-sp on MLP channels of
    the remaining layers for what a whole layer cannot match (module docstring)."""
    layers = list(model.model.layers)
    lc, cc, inter = _layer_params(layers[0]), channel_cost(layers[0]), layers[0].mlp.down_proj.in_features
    maximum = (len(layers) - 1) * lc + (inter - 1) * cc
    model, original = _prepare(model, calibration, removed, "shortgpt", maximum,
                               "all decoder layers but one and that one's MLP channels but one")
    if removed:
        _, _, bi = collect(model, calibration)
        k = min(removed // lc, len(layers) - 1)
        gone = set(torch.argsort(bi, stable=True)[:k].tolist())
        model.model.layers = nn.ModuleList([l for i, l in enumerate(model.model.layers) if i not in gone])
        _sync_config(model)
        _fill_mlp(model, calibration, removed - k * lc, "shortgpt")
        model.shortgpt_removed_layers = sorted(gone)
    return _finish(model, original, removed, "shortgpt")


def _fill_mlp(model, calibration, rest: int, method: str) -> None:
    """Remove ``rest`` more parameters as MLP channels, uniform Wanda-sp over all layers (statistics
    taken again on ``model``)."""
    if rest <= 0:
        return
    _, mlp, _ = collect(model, calibration)
    layers = model.model.layers
    n, cc, inter = len(layers), channel_cost(layers[0]), layers[0].mlp.down_proj.in_features
    channels = -(-rest // cc)
    if channels > n * (inter - 1):
        raise ValueError(f"{method}: {rest} parameters left to remove, more than the MLP channels of the {n} layers")
    for i, layer in enumerate(layers):
        cs = (layer.mlp.down_proj.weight.detach().abs() * mlp[i].norm()).sum(0)   # Wanda-sp on channels
        prune_layer(layer, torch.arange(_geometry(layer)[0]), _lowest(cs, channels // n + (i < channels % n)))


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
            + sum(m.in_features + _nb(m) for m in _writers(model)))


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
        for ids, mask in _batches(calibration):
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
        new = _linear(lin.weight.detach() @ q, None if lin.bias is None else lin.bias.detach())
        _replace(model, lin, new)
    for lin in _writers(model):
        new = _linear(q.T @ lin.weight.detach(), None if lin.bias is None else q.T @ lin.bias.detach())
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
    model, original = _prepare(model, calibration, removed, "slicegpt", original - fixed - per,
                               "all of the hidden size but one unit")
    if removed:
        width = -(-(original - removed - fixed) // per)
        slice_hidden(model, calibration, width)
        _fill_mlp(model, calibration, non_embedding_params(model) - (original - removed), "slicegpt")
    return _finish(model, original, removed, "slicegpt")


METHODS = {"wanda-sp": prune_wanda_sp, "flap": prune_flap, "llm-pruner": prune_llm_pruner,
           "shortgpt": prune_shortgpt, "slicegpt": prune_slicegpt}
