"""The user's own module at the current sizes: what :meth:`IntegralModel.to_discrete` returns.

:func:`torchinn.convert` keeps a *template* of the user's module: a deep copy whose tensors that
the integral model owns are on the ``meta`` device (so it costs no memory), plus the example
inputs. :func:`rebuild` deep-copies the template and puts the sampled tensors into it:

* every parameter and buffer gets its sampled tensor (same name, same ``requires_grad``);
* every attribute that describes a size follows its tensors (:mod:`.attributes`:
  ``in/out_features``, ``in/out_channels`` and ``groups`` of convolutions, ``num_features``, ...
  and, on the user's own classes, integer attributes with a size-like name such as ``num_heads``);
* a batch norm that conversion folded into the layer before it comes back as a batch norm that
  does nothing (weight 1, mean 0, variance ``1 - eps``) after the folded layer, and the folded
  bias goes to the layer's bias (or the norm's when the layer has none);
* a contraction between activations (``q @ k.T`` over a resized head size) is scaled in the
  integral model; the scale is moved into the weight that produces the scaled operand (an exact
  linear layer or convolution reached through views, as :mod:`torchinn.graph.kinds` says).

The template (:class:`Original`) is made at conversion by :func:`make_original` (:mod:`.template`).

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
from ..graph.kinds import Kind, is_view, node_kind
from ..graph.trace import clone_inputs
from .attributes import Atoms, Calls, attr_name, resize_modules
from .hf_config import update_config
from ..maths.structured import DimPlan
from .template import Original, RebuildError, make_original
from .tolerance import relative_error

__all__ = ["Original", "RebuildError", "example_for", "make_original", "rebuild", "relative_error",
           "run_check", "user_line"]

aten = torch.ops.aten

# -- tensors --------------------------------------------------------------------------------------
def _producer(node: Any) -> Kind | None:
    """The kind of ``node`` when it is a layer whose output channels are rows of its weight (an
    exact ``"linear"`` or ``"conv"``, :mod:`torchinn.graph.kinds`), so a scaling of them can move
    into the weight; else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    kind = node_kind(node.target, node.args)
    return kind if kind is not None and kind.exact and kind.name in ("linear", "conv") else None


def _packet(node: fx.Node) -> Any:
    return getattr(node.target, "overloadpacket", node.target)


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
                if _packet(q) is aten.mul and any(str(attr_name(a)).startswith("contraction_scale_")
                                                  for a in q.args):  # scaled above: scale its input
                    q = next(a for a in q.args if isinstance(a, fx.Node) and attr_name(a) is None)
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
                is_view(node.target) or node.target is operator.getitem):
            path.append(node)
            node = node.args[0]
        kind = _producer(node)
        if kind is None:
            raise RebuildError(f"the activation scaled at {where} does not come from a linear or conv "
                               "layer through view operations only")
        w_name = attr_name(kind.arg(node.args, "weight"))
        b_name = (attr_name(kind.arg(node.args, "bias")) if kind.bias is not None and kind.bias < len(node.args)
                  else attr_name(node.kwargs.get("bias")))
        if w_name is None or w_name not in tensors:
            raise RebuildError(f"the layer producing the activation scaled at {where} has no named weight")
        out = env[node]
        axis = kind.channel % out.ndim
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


def _assign(module: nn.Module, tensors: Mapping[str, Tensor], share: bool = False) -> None:
    """Put copies of ``tensors`` (``share``: the contiguous ones themselves) into ``module``'s
    parameters and buffers by name (tied tensors stay tied); a tensor left on the meta device
    raises :class:`RebuildError`."""
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
                        value = value.detach()
                        if not (share and value.is_contiguous()):
                            value = value.clone(memory_format=torch.contiguous_format)
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

def rebuild(original: Original, tensors: dict[str, Tensor], gm: fx.GraphModule, folded: list[Folded],
            plans: Mapping[str, tuple[DimPlan, ...]], sizes: Mapping[str, int], share: bool = False) -> nn.Module:
    """A copy of the user's module carrying ``tensors`` (sampled at ``sizes``; ``gm`` is the graph
    module at those sizes, whose contraction scales are folded into the tensors); ``share``: the
    tensors themselves where they can be, not copies."""
    if original.module is None:
        raise RebuildError("the original module is not stored (the integral model was loaded from a file)")
    tensors = dict(tensors)
    fold_scales(gm, tensors, _cast(original.example, tensors), _cast(original.kwargs, tensors))
    module = copy.deepcopy(original.module)
    own = {n for n, _ in chain(module.named_parameters(remove_duplicate=False),
                               module.named_buffers(remove_duplicate=False))}
    unfold_norms(folded, tensors, own)
    _assign(module, tensors, share)
    resize_modules(module, Calls(gm), Atoms(plans, sizes))
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
