"""The user's own module at the current sizes: what :meth:`IntegralModel.to_discrete` returns.

:func:`torchinn.convert` keeps a *template* of the user's module: a deep copy whose tensors that
the integral model owns are on the ``meta`` device (so it costs no memory), plus the example
inputs. :func:`rebuild` deep-copies the template and puts the sampled tensors into it:

* every parameter and buffer gets its sampled tensor (same name, same ``requires_grad``);
* every attribute that describes a size follows its tensors (``in/out_features``,
  ``in/out_channels`` and ``groups`` of convolutions, ``num_features``, ``normalized_shape``,
  ``num_groups``, ``embed_dim``/``num_heads``/``head_dim`` of ``nn.MultiheadAttention``) and, on the
  user's own classes, integer attributes with a size-like name (``num_heads``, ``head_dim``, ...)
  that equal a resized size of the module's tensors (see :data:`SIZE_ATTRS`);
* a batch norm that conversion folded into the layer before it comes back as a batch norm that
  does nothing (weight 1, mean 0, variance ``1 - eps``) after the folded layer, and the folded
  bias goes to the layer's bias (or the norm's when the layer has none);
* a contraction between activations (``q @ k.T`` over a resized head size) is scaled in the
  integral model; the scale is moved into the weight that produces the scaled operand.

:func:`run_check` then runs the copy and the graph module on the example inputs; the caller falls
back to the graph module when the copy fails or differs (:func:`user_line` names the line).
"""

from __future__ import annotations

import copy
import math
import operator
import os
import traceback
from collections.abc import Mapping
from itertools import chain
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from ..graph.adapters import caches_off
from ..graph.fuse import Folded
from ..graph.trace import clone_inputs
from .hf_config import update_config
from ..maths.structured import DimPlan, plan_size
from .tolerance import relative_error

__all__ = ["Original", "RebuildError", "SIZE_ATTRS", "example_for", "make_original", "rebuild", "relative_error",
           "run_check", "user_line"]

aten = torch.ops.aten

#: integer attributes of the user's own modules that describe a size: updated when they equal
#: exactly one resized size (an atom or a segment of a channel plan) of the module's tensors
SIZE_ATTRS = frozenset({
    "num_heads", "heads", "n_heads", "n_head", "head_dim", "head_size", "attention_head_size", "all_head_size",
    "num_attention_heads", "num_key_value_heads", "hidden_size", "intermediate_size", "embed_dim", "dim", "hidden_dim",
    "inner_dim", "d_model", "d_head", "in_features", "out_features", "in_channels", "out_channels",
    "channels", "num_features", "hidden_features", "width", "nf",
})
#: size attributes that count attention heads, and that hold a head's size
HEAD_COUNTS = frozenset({"num_heads", "heads", "num_attention_heads", "num_key_value_heads", "n_head", "n_heads"})
HEAD_SIZES = frozenset({"head_dim", "head_size", "attention_head_size", "d_head"})
#: integer attributes that hold the piece size of a ``split`` in the module's forward (GPT-2's
#: ``split_size`` cuts the fused c_attn output into q, k, v): they take the split's current size
SPLIT_ATTRS = frozenset({"split_size"})


class RebuildError(Exception):
    """The user's module cannot carry the current sizes (the message says which part and why)."""


class Original:
    """The user's module as a template (tensors of the integral model on ``meta``) and the example
    inputs it was converted on. Deep copies keep it; pickling (``torch.save``) drops it, since the
    user's class may not be importable where the file is loaded."""

    def __init__(self, module: nn.Module | None, example: tuple | None,
                 kwargs: dict[str, Any] | None = None) -> None:
        self.module, self.example, self.kwargs = module, example, dict(kwargs or {})

    def __deepcopy__(self, memo: dict) -> Original:
        return Original(copy.deepcopy(self.module, memo), copy.deepcopy(self.example, memo),
                        copy.deepcopy(self.kwargs, memo))

    def __getstate__(self) -> dict:
        return {"module": None, "example": None, "kwargs": {}}

    def __setstate__(self, state: dict) -> None:
        self.module, self.example = state.get("module"), state.get("example")
        self.kwargs = dict(state.get("kwargs") or {})


def make_original(model: nn.Module, example_inputs: tuple, names: set[str],
                  kwargs: dict[str, Any] | None = None) -> Original:
    """A template of ``model`` whose tensors named in ``names`` (or tied to one that is) are on the
    meta device, and the example inputs (``kwargs``: keyword ones); ``model`` is not modified."""
    aliases: dict[int, list[str]] = {}
    tensors: dict[int, Tensor] = {}
    for name, t in chain(model.named_parameters(remove_duplicate=False),
                         model.named_buffers(remove_duplicate=False)):
        aliases.setdefault(id(t), []).append(name)
        tensors[id(t)] = t
    memo: dict[int, Any] = {}
    for key, alias in aliases.items():
        if any(a in names for a in alias):
            t = tensors[key]
            meta = torch.empty_like(t, device="meta")
            memo[key] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    module = copy.deepcopy(model, memo)
    example, kwargs = pytree.tree_map(lambda x: x.detach().clone() if isinstance(x, Tensor) else x,
                                      (example_inputs, dict(kwargs or {})))
    return Original(module, example, kwargs)


# -- tensors --------------------------------------------------------------------------------------
_VIEWS = {
    aten.view, aten.reshape, aten._unsafe_view, aten.permute, aten.transpose, aten.t, aten.unsqueeze,
    aten.squeeze, aten.select, aten.slice, aten.unflatten, aten.flatten, aten.unbind, aten.split,
    aten.split_with_sizes, aten.chunk, aten.contiguous, aten.clone, aten.expand, aten.alias,
    aten.detach, aten.movedim, aten.narrow,
}
_PRODUCERS = {aten.linear: -1, aten.conv1d: 1, aten.conv2d: 1, aten.conv3d: 1}


def _packet(node: fx.Node) -> Any:
    return getattr(node.target, "overloadpacket", node.target)


def _attr_name(arg: Any) -> str | None:
    return arg.target if isinstance(arg, fx.Node) and arg.op == "get_attr" else None


def _scalings(gm: fx.GraphModule, env: Mapping[fx.Node, Any]) -> list[tuple[fx.Node, Tensor, str]]:
    """(operand, factor broadcastable to it, where) for every scaling of an activation that the
    user's module does not do itself: a contraction scale (a ``mul`` by ``contraction_scale_i``),
    and the query of a ``scaled_dot_product_attention`` whose default scale conversion pinned at
    its full-size value (the user's call computes it from the current head size)."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target).startswith("contraction_scale_"):
            scale = gm.get_buffer(str(node.target))
            for user in node.users:
                other = [a for a in user.args if isinstance(a, fx.Node) and a is not node]
                if _packet(user) is not aten.mul or len(other) != 1:
                    raise RebuildError(f"contraction scale {node.target} is used by {user.target}")
                out.append((other[0], scale, user.name))
        elif node.op == "call_function" and node.meta.get("torchinn_pinned_scale"):
            q = node.args[0]
            pinned = node.kwargs.get("scale")
            head = env[q].shape[-1]
            factor = pinned * math.sqrt(head)
            if abs(factor - 1.0) > 1e-12:
                if _packet(q) is aten.mul and any(str(_attr_name(a)).startswith("contraction_scale_")
                                                  for a in q.args):  # scaled above: scale its input
                    q = next(a for a in q.args if isinstance(a, fx.Node) and _attr_name(a) is None)
                out.append((q, torch.tensor(factor, dtype=torch.float64), node.name))
    return [(op, v, where) for op, v, where in out
            if not torch.allclose(v.double(), torch.ones((), dtype=torch.float64, device=v.device), rtol=0, atol=1e-7)]


def fold_scales(gm: fx.GraphModule, tensors: dict[str, Tensor], example: tuple,
                kwargs: dict[str, Any] | None = None) -> None:
    """Move every scaling of an activation that the user's module does not do (see
    :func:`_scalings`) into the rows of the linear or conv weight (and bias) that produce that
    activation, in place in ``tensors``. Only paths of pure view operations between the producer
    and the scaled activation are followed; anything else raises :class:`RebuildError`."""
    if not any(n.op == "get_attr" and str(n.target).startswith("contraction_scale_") or
               n.meta.get("torchinn_pinned_scale") for n in gm.graph.nodes):
        return
    interp = fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interp.run(*pytree.tree_leaves((example, dict(kwargs or {}))))
    env = interp.env
    for operand, factor, where in _scalings(gm, env):
        path, node = [], operand
        while isinstance(node, fx.Node) and node.op == "call_function" and (
                _packet(node) in _VIEWS or node.target is operator.getitem):
            path.append(node)
            node = node.args[0]
        if not isinstance(node, fx.Node) or _packet(node) not in _PRODUCERS:
            raise RebuildError(f"the activation scaled at {where} does not come from a linear or conv "
                               "layer through view operations only")
        w_name = _attr_name(node.args[1])
        b_name = _attr_name(node.args[2]) if len(node.args) > 2 else _attr_name(node.kwargs.get("bias"))
        if w_name is None or w_name not in tensors:
            raise RebuildError(f"the layer producing the activation scaled at {where} has no named weight")
        out = env[node]
        axis = _PRODUCERS[_packet(node)] % out.ndim
        n_out = out.shape[axis]
        shape = [1] * out.ndim
        shape[axis] = n_out
        idx: dict[fx.Node, Any] = {node: torch.arange(n_out, dtype=torch.float64, device=out.device)
                                   .reshape(shape).expand(out.shape)}
        for p in reversed(path):
            args = fx.node.map_arg(p.args, lambda n: idx[n] if n in idx else env[n])
            kwargs = fx.node.map_arg(p.kwargs, lambda n: idx[n] if n in idx else env[n])
            idx[p] = p.target(*args, **kwargs)
        rows = idx[operand].long()
        vals = torch.broadcast_to(factor.to(device=out.device, dtype=torch.float64), rows.shape)
        scale = torch.ones(n_out, dtype=torch.float64, device=out.device)
        scale[rows.flatten()] = vals.flatten()
        if not torch.allclose(scale[rows], vals, rtol=1e-6, atol=0):
            raise RebuildError(f"the scale at {where} differs between positions of one channel of {w_name}")
        w = tensors[w_name]
        tensors[w_name] = (w.double() * scale.to(w.device).reshape([-1] + [1] * (w.ndim - 1))).to(w.dtype)
        if b_name is not None and b_name in tensors:
            b = tensors[b_name]
            tensors[b_name] = (b.double() * scale.to(b.device)).to(b.dtype)


def unfold_norms(folded: list[Folded], tensors: dict[str, Tensor], own: set[str]) -> None:
    """Give every folded norm tensors that make it the identity after its folded layer, in place in
    ``tensors``; ``own`` holds the names of the user's tensors (a bias the folding added is not
    one: it moves to the norm)."""
    for f in folded:
        w = tensors[f.producer_weight]
        n = w.shape[f.axis]
        bias = tensors.pop(f.producer_bias) if f.bias_added else None
        dtype = w.dtype
        if not f.eps < 1:
            raise RebuildError(f"batch norm {f.mean.rsplit('.', 1)[0]!r} has eps={f.eps} >= 1")
        tensors[f.var] = torch.full((n,), 1.0 - f.eps, dtype=dtype, device=w.device)
        tensors[f.mean] = torch.zeros(n, dtype=dtype, device=w.device)
        if f.weight is not None:
            tensors[f.weight] = torch.ones(n, dtype=dtype, device=w.device)
        if f.bias is not None:
            tensors[f.bias] = torch.zeros(n, dtype=dtype, device=w.device)
        if bias is not None:
            if f.producer_bias in own:  # unlikely: the user's layer has that name after all
                tensors[f.producer_bias] = bias
            elif f.bias is not None:
                tensors[f.bias] = bias
            else:  # (y - mean) / 1 with mean = -bias
                tensors[f.mean] = -bias


def _assign(module: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Put ``tensors`` into ``module``'s parameters and buffers by name (tied tensors stay tied);
    a tensor left on the meta device raises :class:`RebuildError`."""
    new: dict[int, Any] = {}
    names: dict[int, list[str]] = {}
    for name, t in chain(module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)):
        names.setdefault(id(t), []).append(name)
    for prefix, mod in module.named_modules():
        for store in (mod._parameters, mod._buffers):
            for leaf, old in list(store.items()):
                if old is None:
                    continue
                if id(old) not in new:
                    value = next((tensors[a] for a in names[id(old)] if a in tensors), None)
                    if value is None:
                        if old.is_meta:
                            full = f"{prefix}.{leaf}" if prefix else leaf
                            raise RebuildError(f"tensor {full!r} has no value at the new sizes")
                        new[id(old)] = old
                    else:
                        value = value.detach().clone(memory_format=torch.contiguous_format)
                        new[id(old)] = (nn.Parameter(value, requires_grad=old.requires_grad)
                                        if isinstance(old, nn.Parameter) else value)
                store[leaf] = new[id(old)]
    for name, t in tensors.items():  # plain tensor attributes (constants) of the user's modules
        *path, leaf = name.split(".")
        try:
            mod = module.get_submodule(".".join(path))
        except AttributeError:
            continue
        if leaf not in mod._parameters and leaf not in mod._buffers and isinstance(getattr(mod, leaf, None), Tensor):
            setattr(mod, leaf, t.detach().clone())


# -- sizes ----------------------------------------------------------------------------------------
class _Calls:
    """The calls of the graph module by the tensor they use and by the module they come from."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.by_tensor: dict[str, list[fx.Node]] = {}
        self.by_module: dict[str, list[fx.Node]] = {}
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            for a in chain(node.args, node.kwargs.values()):
                name = _attr_name(a)
                if name is not None:
                    self.by_tensor.setdefault(name, []).append(node)
            stack = node.meta.get("nn_module_stack")
            if stack:
                path = list(stack.values())[-1][0]
                self.by_module.setdefault(path, []).append(node)

    def first(self, packets: tuple, tensor: str | None = None, module: str | None = None) -> fx.Node | None:
        nodes = self.by_tensor.get(tensor, []) if tensor is not None else self.by_module.get(module or "", [])
        return next((n for n in nodes if _packet(n) in packets), None)


def _arg(node: fx.Node | None, i: int, default: Any) -> Any:
    if node is None:
        return default
    value = node.args[i] if len(node.args) > i else default
    return value if not isinstance(value, fx.Node) else default


_CONVS = (aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution)
_TCONVS = (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)


def _resize_conv(name: str, m: nn.modules.conv._ConvNd, calls: _Calls) -> None:
    w = m.weight
    if m.transposed:
        node = calls.first(_TCONVS, f"{name}.weight" if name else "weight")
        m.groups = int(_arg(node, 6, m.groups))
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
    else:
        node = calls.first(_CONVS, f"{name}.weight" if name else "weight")
        m.groups = int(_arg(node, 8 if node is not None and _packet(node) is aten.convolution else 6, m.groups))
        m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups


def _resize_mha(name: str, m: nn.MultiheadAttention, atoms: _Atoms) -> None:
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


class _Atoms:
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


def resize_modules(module: nn.Module, calls: _Calls, atoms: _Atoms) -> None:
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


def rebuild(original: Original, tensors: dict[str, Tensor], gm: fx.GraphModule, folded: list[Folded],
            plans: Mapping[str, tuple[DimPlan, ...]], sizes: Mapping[str, int]) -> nn.Module:
    """A copy of the user's module carrying ``tensors`` (sampled at ``sizes``; ``gm`` is the graph
    module at those sizes, whose contraction scales are folded into the tensors)."""
    if original.module is None:
        raise RebuildError("the original module is not stored (the integral model was loaded from a file)")
    tensors = dict(tensors)
    fold_scales(gm, tensors, _cast(original.example, tensors), _cast(original.kwargs, tensors))
    module = copy.deepcopy(original.module)
    own = {n for n, _ in chain(module.named_parameters(remove_duplicate=False),
                               module.named_buffers(remove_duplicate=False))}
    unfold_norms(folded, tensors, own)
    _assign(module, tensors)
    resize_modules(module, _Calls(gm), _Atoms(plans, sizes))
    resized: dict[int, set[int]] = {}
    for plan in plans.values():
        for atom in (a for dim in plan for seg in dim for a in seg if a.group is not None):
            resized.setdefault(atom.size, set()).add(sizes[atom.group])
    update_config(module, resized)  # a Hugging Face config, when the sizes are uniform
    like = next(iter(tensors.values()), None)
    if like is not None and any(t.device != like.device for t in chain(module.parameters(), module.buffers())):
        module.to(like.device)
    return module


# -- checking -------------------------------------------------------------------------------------
def _cast(example: Any, tensors: Mapping[str, Tensor]) -> Any:
    """The example inputs on the tensors' device, floating ones in their dtype."""
    if example is None:
        raise RebuildError("no example inputs are stored")
    like = next((t for t in tensors.values() if t.is_floating_point()), None)
    if like is None:
        return example

    def move(x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        return x.to(like.device, like.dtype if x.is_floating_point() else x.dtype)
    return pytree.tree_map(move, example)


def user_line(err: BaseException) -> str | None:
    """``file:line `code``` of the innermost frame of ``err``'s traceback outside torch and
    torchinn (the user's code that failed), or ``None``."""
    skip = [os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
            os.path.dirname(os.path.abspath(__file__)) + os.sep]
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = os.path.abspath(frame.filename)
        if frame.filename.startswith("<") or any(path.startswith(s) for s in skip):
            continue
        return f"{frame.filename}:{frame.lineno} `{(frame.line or '').strip()}`"
    return None


def example_for(original: Original, tensors: Mapping[str, Tensor]) -> tuple[Any, dict[str, Any]]:
    """The stored example ``(args, kwargs)`` on the device and floating dtype of ``tensors``."""
    return _cast(original.example, tensors), _cast(original.kwargs, tensors)


def run_check(module: nn.Module, gm: fx.GraphModule, original: Original,
              tensors: Mapping[str, Tensor]) -> tuple[float, BaseException | None]:
    """Run ``module`` and ``gm`` in eval mode on the example inputs: the relative error of
    ``module``, and the exception it raised (then the error is ``inf``). Each runs on its own copy
    of the inputs (the user's ``forward`` may write to them)."""
    example, kwargs = example_for(original, tensors)
    mine = clone_inputs((example, kwargs))
    example, kwargs = clone_inputs((example, kwargs))
    modes = [m.training for m in module.modules()]
    try:
        module.eval()
        gm.eval()
        with torch.no_grad():
            ref = gm(*example, **kwargs)
            try:
                with caches_off(module):  # traced without a key/value cache (graph.adapters)
                    got = module(*mine[0], **mine[1])
            except Exception as err:  # noqa: BLE001 - reported by the caller with its line
                return math.inf, err
        return relative_error(ref, got), None
    finally:
        for m, mode in zip(module.modules(), modes):
            m.training = mode
