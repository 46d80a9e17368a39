"""Sizes, calibration statistics and surgery shared by the LLM pruning baselines
(:mod:`benchmarks.llm_baselines`) on a ``transformers.LlamaForCausalLM``: key/value groups and MLP
channels, their parameter costs, the uniform split rule, one-pass input moments and Block
Influence, and the pruning of a decoder layer with FLAP's bias compensation."""

from __future__ import annotations

import copy

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


def geometry(layer) -> tuple[int, int, int]:
    """(key/value groups, query heads per group, head_dim) of a decoder layer."""
    attn = layer.self_attn
    hd = attn.head_dim
    groups = attn.k_proj.out_features // hd
    return groups, attn.q_proj.out_features // hd // groups, hd


def has_bias(lin: nn.Linear) -> int:
    return 1 if lin.bias is not None else 0


def group_cost(layer) -> int:
    """Parameters of one key/value group (its q/k/v rows with biases and its o_proj columns)."""
    a = layer.self_attn
    _, qpk, hd = geometry(layer)
    return (qpk * hd * (a.q_proj.in_features + has_bias(a.q_proj)) + hd * (a.k_proj.in_features + has_bias(a.k_proj))
            + hd * (a.v_proj.in_features + has_bias(a.v_proj)) + qpk * hd * a.o_proj.out_features)


def channel_cost(layer) -> int:
    """Parameters of one MLP channel (gate and up rows with biases, the down column)."""
    m = layer.mlp
    return (m.gate_proj.in_features + has_bias(m.gate_proj) + m.up_proj.in_features + has_bias(m.up_proj)
            + m.down_proj.out_features)


def check_removed(removed, maximum: int, method: str, what: str) -> None:
    if isinstance(removed, bool) or not isinstance(removed, int) or not 0 <= removed <= maximum:
        raise ValueError(f"{method}: removed must be an integer in [0, {maximum}] ({what}), got {removed!r}")


def uniform_max(layers) -> int:
    return sum((geometry(l)[0] - 1) * group_cost(l) + (l.mlp.down_proj.in_features - 1) * channel_cost(l)
               for l in layers)


def uniform_split(layers, removed: int) -> tuple[int, list[int]]:
    """How a uniform method splits ``removed`` over ``layers`` (identical in shape): the same number
    ``h`` of key/value groups in every layer, ``h = round(r * groups)`` with ``r = removed / (the
    layers' prunable parameters)`` (at most ``groups - 1``, and never more than ``removed``), then
    the rest in MLP channels, ``ceil(rest / channel cost)`` of them spread as evenly as possible
    (layer ``i`` gets one more while ``i < remainder``). Returns ``(h, channels per layer)``."""
    n = len(layers)
    g, _, _ = geometry(layers[0])
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


def batches(calibration):
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


class Moments:
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
def collect(model, calibration) -> tuple[list[Moments], list[Moments], Tensor]:
    """One pass of ``model`` over ``calibration``: the input moments of every ``o_proj`` and
    ``down_proj``, and every decoder layer's Block Influence (``1 - mean cosine``)."""
    layers = list(model.model.layers)
    attn, mlp = [Moments() for _ in layers], [Moments() for _ in layers]
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
        for ids, mask in batches(calibration):
            state["mask"] = mask.bool()
            count[0] += int(mask.sum())
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return attn, mlp, (1 - cos_sum / count[0]).float()


# ----------------------------------------------------------------------------------------------
# surgery


def new_linear(w: Tensor, b: Tensor | None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def keep_rows(lin: nn.Linear, idx: Tensor) -> nn.Linear:
    return new_linear(lin.weight[idx], None if lin.bias is None else lin.bias[idx])


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
    return new_linear(w[:, keep], b)


def prune_layer(layer, keep_groups: Tensor, keep_channels: Tensor, attn_mean=None, mlp_mean=None) -> None:
    """Keep the key/value groups ``keep_groups`` and the MLP channels ``keep_channels`` of a decoder
    layer in place (with bias compensation from the input means if given)."""
    a, m = layer.self_attn, layer.mlp
    g, qpk, hd = geometry(layer)
    keep_groups, keep_channels = keep_groups.sort().values, keep_channels.sort().values
    if len(keep_groups) < g:
        kv = (keep_groups[:, None] * hd + torch.arange(hd)).reshape(-1)
        q = ((keep_groups[:, None] * qpk + torch.arange(qpk))[..., None] * hd + torch.arange(hd)).reshape(-1)
        a.q_proj, a.k_proj, a.v_proj = keep_rows(a.q_proj, q), keep_rows(a.k_proj, kv), keep_rows(a.v_proj, kv)
        a.o_proj = compensate(a.o_proj, q, attn_mean)
        a.num_key_value_heads, a.num_heads = len(keep_groups), len(keep_groups) * qpk
    if len(keep_channels) < m.down_proj.in_features:
        m.gate_proj, m.up_proj = keep_rows(m.gate_proj, keep_channels), keep_rows(m.up_proj, keep_channels)
        m.down_proj = compensate(m.down_proj, keep_channels, mlp_mean)
        m.intermediate_size = len(keep_channels)


def sync_config(model) -> None:
    """The config's sizes from the layers when every layer has the same ones."""
    layers = model.model.layers
    cfg = model.config
    cfg.head_dim = layers[0].self_attn.head_dim
    shapes = {(geometry(l)[0], l.mlp.down_proj.in_features) for l in layers}
    if len(shapes) == 1:
        (g, inter), = shapes
        cfg.num_key_value_heads, cfg.num_attention_heads = g, g * geometry(layers[0])[1]
        cfg.intermediate_size = inter
    cfg.num_hidden_layers = len(layers)
    for i, l in enumerate(layers):
        l.self_attn.layer_idx = i


def lowest(scores: Tensor, k: int) -> Tensor:
    """Indices kept when the ``k`` lowest of ``scores`` go."""
    order = torch.argsort(scores, stable=True)
    return order[k:]


def finish(model, original: int, removed: int, method: str):
    sync_config(model)
    got = original - non_embedding_params(model)
    if not removed <= got <= removed + 0.005 * (original - removed):
        raise RuntimeError(f"{method}: removed {got} parameters for a target of {removed}")
    return model.eval()

def prepare(model, calibration, removed, method, maximum, what):
    check_removed(removed, maximum, method, what)
    list(batches(calibration))     # validate before the work
    return copy.deepcopy(model).eval(), non_embedding_params(model)


def fill_mlp(model, calibration, rest: int, method: str) -> None:
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
        prune_layer(layer, torch.arange(geometry(layer)[0]), lowest(cs, channels // n + (i < channels % n)))
