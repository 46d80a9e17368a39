"""The user's own class back from an :class:`~torchinn.IntegralModel` (what ``to_discrete()`` and
``module_from()`` return): :mod:`torchinn.discrete.rebuild` rebuilds it, and here it is checked
against the graph module, with a ``UserWarning`` and the graph module where it fails.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, fx, nn

from ..discrete.heads import fix_heads
from ..discrete.rebuild import RebuildError, example_for, rebuild, run_check, user_line
from ..discrete.tolerance import float_noise, judge
from ..maths.structured import plan_size

__all__ = ["user_module"]


def user_module(imodel: Any, gm: fx.GraphModule, named: dict[str, Tensor], caller: str,
                sampled: bool = False, share: bool = False) -> nn.Module:
    """A copy of the converted module with ``named`` tensors, checked against ``gm`` (or
    ``gm`` with a warning); layers off the traced forward that read resized channels are
    resized with them (``sampled``: ``named`` was sampled on the partitions) or named in a
    warning (:mod:`torchinn.discrete.heads`). ``share``: the module holds ``named`` themselves
    where it can, not copies."""
    tensors = list(named.values())
    sizes = imodel.sizes()
    for n, plan in imodel.plans().items():
        want = tuple(plan_size(dim_plan, sizes) for dim_plan in plan)
        if n in named and tuple(named[n].shape) != want:
            raise ValueError(f"{caller}: tensor {n!r} has shape {tuple(named[n].shape)}, but at the model's "
                             f"current sizes it has {want}: resize the model to the sizes of the graph "
                             "module first")
    original = getattr(imodel, "_original", None)
    if original is None or original.module is None:
        warnings.warn(f"{caller}: this IntegralModel does not hold the module it was converted "
                      "from (it was loaded from a file), so it returns the graph module; pass "
                      "graph=True to ask for it", UserWarning, stacklevel=3)
        return gm
    try:
        module = rebuild(original, named, gm, getattr(imodel, "folded_norms", []), imodel.plans(), imodel.sizes(),
                         share=share)
    except RebuildError as err:
        warnings.warn(f"{caller}: cannot give back {type(original.module).__name__} at the current "
                      f"sizes ({err}); returning the graph module instead (graph=True asks for it)",
                      UserWarning, stacklevel=3)
        return gm
    mode = gm.training
    error, failure = run_check(module, gm, original, named)
    gm.train(mode)
    like = next((t for t in tensors if t.is_floating_point()), None)
    name = type(original.module).__name__
    if failure is not None:
        where = user_line(failure)
        warnings.warn(f"{caller}: {name} fails at the current sizes"
                      f"{f' at {where}' if where else ''} ({type(failure).__name__}: {failure}); a size "
                      "there does not follow the module's attributes (e.g. x.view(-1, 1024) instead of "
                      "x.flatten(1)). Returning the graph module instead (graph=True asks for it)",
                      UserWarning, stacklevel=3)
        return gm
    ok, tol = judge(error, None if like is None else like.dtype,
                    lambda: float_noise(module, *example_for(original, named)))
    if not ok:
        warnings.warn(f"{caller}: {name} at the current sizes differs from the integral model by "
                      f"{error:.2g} (relative; at most {tol:g} allowed): a size its forward uses "
                      "does not follow its attributes. Returning the graph module instead (graph=True "
                      "asks for it)", UserWarning, stacklevel=3)
        return gm
    blocks = [b for f in imodel.functions.values() for b in f.blocks]
    folded = {n for f in getattr(imodel, "folded_norms", []) for n in (f.mean, f.var, f.weight, f.bias) if n}
    for message in fix_heads(module, set(imodel.tensor_names) | folded, imodel.plans(), imodel.partition_map(),
                             blocks[0].kind if blocks else "cubic", can_sample=sampled):
        warnings.warn(f"{caller}: {message}", UserWarning, stacklevel=3)
    return module.train(mode)
