"""The size attributes of a rebuilt module follow its new tensors (:func:`resize_modules`).

``in/out_features``, ``in/out_channels`` and ``groups`` of convolutions, ``num_features``,
``normalized_shape``, ``num_groups``, ``embed_dim``/``num_heads``/``head_dim`` of
``nn.MultiheadAttention``, and on the user's own classes integer attributes with a size-like name
(:data:`SIZE_ATTRS`) that equal a resized size of the module's tensors. A convolution's
``groups`` is read from the call of its weight in the graph module (the ops of kind ``"conv"`` /
``"conv_transpose"``, :mod:`torchinn.graph.kinds`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import chain
from typing import Any

import torch
from torch import fx, nn

from ..graph.kinds import node_kind
from ..maths.structured import DimPlan, plan_size
from .template import RebuildError

__all__ = ["Atoms", "Calls", "HEAD_COUNTS", "attr_name", "HEAD_SIZES", "SIZE_ATTRS", "SPLIT_ATTRS", "resize_modules"]

aten = torch.ops.aten

#: integer attributes of the user's own modules that describe a size: updated when they equal
#: exactly one resized size (an atom or a segment of a channel plan) of the module's tensors
SIZE_ATTRS = frozenset({
    "num_heads", "heads", "n_heads", "n_head", "head_dim", "head_size", "attention_head_size", "all_head_size",
    "num_attention_heads", "num_key_value_heads", "num_kv_heads", "n_kv_heads", "hidden_size", "intermediate_size", "embed_dim", "dim", "hidden_dim",
    "inner_dim", "d_model", "d_head", "in_features", "out_features", "in_channels", "out_channels",
    "channels", "num_features", "hidden_features", "width", "nf",
})
#: size attributes that count attention heads, and that hold a head's size
HEAD_COUNTS = frozenset({"num_heads", "heads", "num_attention_heads", "num_key_value_heads", "num_kv_heads",
                         "n_kv_heads", "n_head", "n_heads"})
#: grouped-query attention: the key/value head count, the query head count, and the query heads
#: per key/value head of a module that holds all three (Falcon's new decoder architecture)
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
QUERY_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
GROUPS = "num_key_value_groups"
HEAD_SIZES = frozenset({"head_dim", "head_size", "attention_head_size", "d_head"})
#: integer attributes that hold the piece size of a ``split`` in the module's forward (GPT-2's
#: ``split_size`` cuts the fused c_attn output into q, k, v): they take the split's current size
SPLIT_ATTRS = frozenset({"split_size"})


def _packet(node: fx.Node) -> Any:
    return getattr(node.target, "overloadpacket", node.target)


def attr_name(arg: Any) -> str | None:
    """The tensor name of a ``get_attr`` node, else None."""
    return arg.target if isinstance(arg, fx.Node) and arg.op == "get_attr" else None


def _kind_name(node: fx.Node) -> str | None:
    kind = node_kind(node.target, node.args)
    return kind.name if kind is not None else None


class Calls:
    """The calls of the graph module by the tensor they use and by the module they come from."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.by_tensor: dict[str, list[fx.Node]] = {}
        self.by_module: dict[str, list[fx.Node]] = {}
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            for a in chain(node.args, node.kwargs.values()):
                name = attr_name(a)
                if name is not None:
                    self.by_tensor.setdefault(name, []).append(node)
            stack = node.meta.get("nn_module_stack")
            if stack:
                path = list(stack.values())[-1][0]
                self.by_module.setdefault(path, []).append(node)

    def first(self, packets: tuple = (), tensor: str | None = None, module: str | None = None,
              kinds: tuple[str, ...] = ()) -> fx.Node | None:
        """The first call using ``tensor`` (else: from ``module``) of one of ``packets`` or of an
        op of one of ``kinds`` (:mod:`torchinn.graph.kinds`)."""
        nodes = self.by_tensor.get(tensor, []) if tensor is not None else self.by_module.get(module or "", [])
        return next((n for n in nodes if _packet(n) in packets or (kinds and _kind_name(n) in kinds)), None)


def _arg(node: fx.Node | None, i: int, default: Any) -> Any:
    if node is None:
        return default
    value = node.args[i] if len(node.args) > i else default
    return value if not isinstance(value, fx.Node) else default


def _resize_conv(name: str, m: nn.modules.conv._ConvNd, calls: Calls) -> None:
    w = m.weight
    node = calls.first(tensor=f"{name}.weight" if name else "weight",
                       kinds=("conv_transpose",) if m.transposed else ("conv",))
    kind = node_kind(node.target, node.args) if node is not None else None
    if kind is not None and kind.groups is not None:
        m.groups = int(_arg(node, kind.groups, m.groups))
    if m.transposed:
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
    else:
        m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups


def _resize_mha(name: str, m: nn.MultiheadAttention, atoms: Atoms) -> None:
    if m._qkv_same_embed_dim:
        inner, embed = m.in_proj_weight.shape[0] // 3, m.in_proj_weight.shape[1]
        kdim = vdim = embed
    else:
        inner, embed = m.q_proj_weight.shape
        kdim, vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]
    if inner != embed or m.out_proj.weight.shape[0] != embed:
        raise RebuildError(f"nn.MultiheadAttention {name!r} needs its heads x head size ({inner} now) "
                           f"equal to its embed_dim ({embed} now)")
    heads = atoms.new_value(name, m.num_heads)
    if heads is None or embed % heads:
        raise RebuildError(f"nn.MultiheadAttention {name!r}: cannot tell its number of heads at embed_dim={embed}")
    m.embed_dim, m.kdim, m.vdim, m.num_heads, m.head_dim = embed, kdim, vdim, heads, embed // heads
    m.out_proj.in_features, m.out_proj.out_features = m.out_proj.weight.shape[1], m.out_proj.weight.shape[0]


class Atoms:
    """Full and current sizes found in the channel plans of a module's tensors."""

    def __init__(self, plans: Mapping[str, tuple[DimPlan, ...]], sizes: Mapping[str, int]) -> None:
        self.plans, self.sizes = plans, sizes

    def pairs(self, prefix: str) -> set[tuple[int, int]]:
        out: set[tuple[int, int]] = set()
        for name, plan in self.plans.items():
            if prefix and not name.startswith(prefix + "."):
                continue
            for dim_plan in plan:
                out.add((plan_size(dim_plan), plan_size(dim_plan, self.sizes)))
                for seg in dim_plan:
                    out.add((math.prod(a.size for a in seg), plan_size((seg,), self.sizes)))
                    for a in seg:
                        out.add((a.size, self.sizes[a.group] if a.group is not None else a.size))
        return out

    def atoms(self, prefix: str, grouped: bool) -> set[tuple[int, int]]:
        """(full, current) of the group atoms (``grouped``) or the fixed atoms of the module's plans."""
        return {(a.size, self.sizes[a.group] if a.group is not None else a.size)
                for name, plan in self.plans.items() if not prefix or name.startswith(prefix + ".")
                for dim_plan in plan for seg in dim_plan for a in seg if (a.group is not None) == grouped}

    def new_value(self, prefix: str, value: int, attr: str = "") -> int | None:
        """The current size of ``value`` (a full size) among the module's tensors: the value itself
        if nothing of that size changed, ``None`` when several sizes of that value disagree. Whole
        heads are groups and head sizes stay: a head count follows the one group atom of its value
        (not the fixed ``3`` of a fused q/k/v), a head size a fixed atom of its value."""
        found = {new for full, new in self.pairs(prefix) if full == value}
        if len(found) > 1 and attr in HEAD_COUNTS:
            grouped = {new for full, new in self.atoms(prefix, True) if full == value}
            if len(grouped) == 1:
                return grouped.pop()
        if len(found) > 1 and attr in HEAD_SIZES and any(f == value for f, _ in self.atoms(prefix, False)):
            return value
        if not found:
            return value
        return found.pop() if len(found) == 1 else None


def resize_modules(module: nn.Module, calls: Calls, atoms: Atoms) -> None:
    """Make every size attribute of ``module``'s submodules follow their (new) tensors."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.conv._ConvNd):
            _resize_conv(name, m, calls)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = m.running_mean if m.running_mean is not None else m.weight
            if ref is not None:
                m.num_features = ref.shape[0]
        elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
            if m.weight is not None:
                m.normalized_shape = tuple(m.weight.shape)
            else:
                node = calls.first((aten.layer_norm, aten.rms_norm), module=name)
                m.normalized_shape = tuple(_arg(node, 1, m.normalized_shape))
        elif isinstance(m, nn.GroupNorm):
            node = calls.first((aten.group_norm,), module=name)
            m.num_groups = int(_arg(node, 1, m.num_groups))
            if m.weight is not None:
                m.num_channels = m.weight.shape[0]
        elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            m.num_embeddings, m.embedding_dim = m.weight.shape
        elif isinstance(m, nn.MultiheadAttention):
            _resize_mha(name, m, atoms)
        elif not type(m).__module__.startswith("torch."):
            before = dict(vars(m))
            for attr, value in list(vars(m).items()):
                if attr in SIZE_ATTRS and type(value) is int:
                    new = atoms.new_value(name, value, attr)
                    if new is not None:
                        setattr(m, attr, new)
                elif attr in SPLIT_ATTRS and type(value) is int:
                    node = calls.first((aten.split_with_sizes, aten.split), module=name)
                    pieces = _arg(node, 1, None)
                    pieces = [pieces] if isinstance(pieces, int) else pieces
                    if isinstance(pieces, (list, tuple)) and len(set(pieces)) == 1 and isinstance(pieces[0], int):
                        setattr(m, attr, pieces[0])
            _query_heads_follow(m, before)


def _query_heads_follow(m: nn.Module, before: Mapping[str, Any]) -> None:
    """Grouped-query attention: a removed key/value head takes its queries, so the query head
    count is the new key/value head count times the (unchanged) query heads per key/value head.
    The query count is no size of any tensor (the plans hold key/value heads x queries per head)."""
    groups = before.get(GROUPS)
    kv = next((a for a in KV_HEADS if type(before.get(a)) is int), None)
    if type(groups) is not int or kv is None or getattr(m, GROUPS) != groups:
        return
    for q in QUERY_HEADS:
        if type(before.get(q)) is int and before[q] == before[kv] * groups and getattr(m, q) == before[q]:
            setattr(m, q, getattr(m, kv) * groups)
