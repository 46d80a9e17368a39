"""How close a network built by torchinn must come to the one it reproduces.

Two checks compare two float32 computations of the same function done in a different order:
conversion (the integral model at full size against the user's network, batch norms folded on
one side only) and :meth:`~torchinn.IntegralModel.to_discrete` (the user's class rebuilt at the
current sizes against the graph module). A fixed relative tolerance is too tight for deep
networks: torchvision's MobileNetV2 differs by 2.7e-05 from itself computed another way, which is
float32 rounding, not a wrong size. So when the fixed floor fails, the tolerance follows the
network's own float noise: the float32 network against the same network computed in float64 on
the same inputs (one forward, every op widened as it runs, so no float64 copy of the weights),
times :data:`NOISE_FACTOR`. 16-bit models keep a fixed number of ulps.

>>> relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.002]))
0.001000046730041504
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from ..graph.adapters import caches_off
from ..graph.trace import clone_inputs

__all__ = ["DISCRETE_FLOOR", "CONVERT_FLOOR", "NOISE_FACTOR", "float_noise", "judge", "relative_error"]

#: fixed relative tolerance of to_discrete()'s check (float32 and float64 models)
DISCRETE_FLOOR = 1e-5
#: fixed relative tolerance of conversion's full-size check: folding batch norms rounds differently
CONVERT_FLOOR = 1e-4
#: the tolerance above the floor is this many times the network's float32 error against float64.
#: Each side of a check is a float32 computation whose error against the exact result is of the
#: order of that noise, so their difference is up to about twice it; its maximum over the outputs
#: moves with the inputs, the CPU and the thread count (reduction order), so 10 leaves a factor of
#: 5 of margin. A size that really is wrong (a hard-coded view, a stale channel count) changes
#: the output by 1e-2 or more, orders of magnitude above 10 x float32 noise (1e-6 to 1e-5).
NOISE_FACTOR = 10.0
#: float_noise copies a module to float64 only when its float64 run op by op fails, and only up to
#: this size (a copy doubles the memory of the model)
COPY_BYTES = 256 * 2**20


def relative_error(ref: Any, got: Any) -> float:
    """Largest ``max|ref - got| / max|ref|`` over the floating leaves (``inf`` when the outputs do
    not match in structure or shape)."""
    a, b = pytree.tree_leaves(ref), pytree.tree_leaves(got)
    if len(a) != len(b):
        return math.inf
    worst = 0.0
    for r, g in zip(a, b):
        if isinstance(r, Tensor):
            if not isinstance(g, Tensor) or r.shape != g.shape:
                return math.inf
            if r.is_floating_point() and r.numel():
                worst = max(worst, float((r.double() - g.double()).abs().max()) / (float(r.abs().max()) or 1.0))
            elif not r.is_floating_point() and not torch.equal(r, g):
                return math.inf
    return worst


class _Wide(TorchFunctionMode):
    """Every torch function computes in float64: its float16/32 tensor arguments (the module's
    weights included, one call at a time) are widened on the way in, and its results on the way
    out (so a cast to float32 inside the network does not round the reference)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        def wide(x: Any) -> Any:
            return x.double() if isinstance(x, Tensor) and x.dtype in _NARROW else x
        args, kwargs = pytree.tree_map(wide, (args, kwargs or {}))
        # and on the way out: a cast back to float32 inside the network (Hugging Face's RMSNorm
        # computes "in float32") would round the reference where float64 is meant
        return pytree.tree_map(wide, func(*args, **kwargs))


_NARROW = (torch.float16, torch.bfloat16, torch.float32)


def float_noise(module: nn.Module, args: tuple, kwargs: dict[str, Any] | None = None) -> float:
    """The relative error of ``module`` (float32, eval mode) against the same module computed in
    float64 on copies of ``(args, kwargs)``; ``module`` and the inputs are not modified. The
    float64 run widens every op's arguments as it is called (:class:`_Wide`), so it holds one
    layer's weights in float64 at a time, not a float64 copy of the network (which would double
    the memory of a large model); where that run fails (a module that reads a dtype back, say),
    a float64 copy of a module of at most :data:`COPY_BYTES` is used instead. ``inf`` when
    neither can run."""
    kwargs = dict(kwargs or {})

    def wide(x: Any) -> Any:
        return x.double() if isinstance(x, Tensor) and x.is_floating_point() else x

    modes = [m.training for m in module.modules()]
    got = ref = None
    try:
        module.eval()
        with torch.no_grad(), caches_off(module):
            a, kw = clone_inputs((args, kwargs))
            got = module(*a, **kw)
            a, kw = pytree.tree_map(wide, clone_inputs((args, kwargs)))
            try:
                with _Wide():
                    ref = module(*a, **kw)
            except Exception:  # noqa: BLE001 - try the copy below
                ref = None
            if ref is None or not _widened(ref):
                size = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
                if size > COPY_BYTES:
                    return math.inf
                wide_module = copy.deepcopy(module).double().eval()
                with caches_off(wide_module):
                    ref = wide_module(*a, **kw)
    except Exception:  # noqa: BLE001 - a module that cannot run in float64: no noise estimate
        return math.inf
    finally:
        for m, mode in zip(module.modules(), modes):
            m.training = mode
    noise = relative_error(ref, got)
    return noise if math.isfinite(noise) else math.inf


def _widened(output: Any) -> bool:
    """Every floating leaf of ``output`` came out in float64."""
    leaves = [t for t in pytree.tree_leaves(output) if isinstance(t, Tensor) and t.is_floating_point()]
    return bool(leaves) and all(t.dtype == torch.float64 for t in leaves)


def judge(error: float, dtype: torch.dtype | None, noise: Callable[[], float],
          floor: float | None = None) -> tuple[bool, float]:
    """Whether ``error`` (relative) passes, and the tolerance it was judged against: ``floor``
    (16 ulps for 16-bit dtypes), else, for float32/64 only, ``NOISE_FACTOR`` times ``noise()``
    (called only when the floor fails and ``error`` is finite); ``floor`` defaults to
    :data:`DISCRETE_FLOOR`."""
    floor = DISCRETE_FLOOR if floor is None else floor
    if dtype is not None and dtype.is_floating_point and torch.finfo(dtype).bits <= 16:
        tol = 16 * torch.finfo(dtype).eps
        return error <= tol, tol
    if error <= floor or not math.isfinite(error):
        return error <= floor, floor
    measured = noise()
    tol = max(floor, NOISE_FACTOR * measured) if math.isfinite(measured) else floor
    return error <= tol, tol
