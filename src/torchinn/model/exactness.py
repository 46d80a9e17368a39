"""The check at the end of :func:`torchinn.convert`: the integral model at full size is the network.

Outputs are compared in units of the tolerance of their dtype (:mod:`torchinn.discrete.tolerance`);
above the floor, against the network's own float noise. torch.export traces batch sizes as >= 2,
so a separate run at batch 1 tells whether the network branches on it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..discrete.tolerance import CONVERT_FLOOR, NOISE_FACTOR, float_noise, judge
from ..graph.trace import clone_inputs
from .integral_model import IntegralModel

__all__ = ["check_exact", "same_at_batch_one"]


def _worst_error(ref: object, got: object) -> float:
    """Largest relative difference between two outputs over their floating leaves, in units of
    the tolerance for their dtype (1.0: at the limit; inf when shapes differ)."""
    worst = 0.0
    for r, g in zip(torch.utils._pytree.tree_leaves(ref), torch.utils._pytree.tree_leaves(got)):
        if isinstance(r, Tensor) and r.is_floating_point():
            if not isinstance(g, Tensor) or r.shape != g.shape:
                return math.inf
            err = float((r - g).abs().max()) / (float(r.abs().max()) or 1.0) if r.numel() else 0.0
            # folding batch norms rounds differently from running them: allow a few 16-bit ulps
            tol = CONVERT_FLOOR if torch.finfo(r.dtype).bits > 16 else 16 * torch.finfo(r.dtype).eps
            worst = max(worst, err / tol)
    return worst


def same_at_batch_one(model: nn.Module, imodel: IntegralModel, example_inputs: tuple[tuple, dict]) -> bool:
    """torch.export traces dynamic sizes as >= 2, so a branch on ``batch == 1`` leaves no guard:
    run the network and the integral model on the first sample of the example (when every tensor
    input has a dynamic batch dimension) and tell whether they agree."""
    leaves = torch.utils._pytree.tree_leaves(example_inputs)
    shapes = [s for x, s in zip(leaves, imodel.input_shapes) if isinstance(x, Tensor)]
    if not shapes or any(s is None or not s or s[0] is not None for s in shapes):
        return True
    one = torch.utils._pytree.tree_map(lambda x: x[:1] if isinstance(x, Tensor) else x, example_inputs)
    try:
        ref, got = _both(model, imodel, one)
    except Exception:  # noqa: BLE001 - refused at batch 1 by a guard, or the model cannot run it
        return True
    worst = _worst_error(ref, got)
    if worst <= 1.0 or not math.isfinite(worst):
        return worst <= 1.0
    # above the floor: a deep network's float32 rounding (a random 1 B Llama: 1.2e-4) is no branch
    # on the batch size; judge it against the same comparison at the traced batch (a branch
    # changes the outputs by orders of magnitude more), not a float64 copy of a big network
    if min(x.shape[0] for x in leaves if isinstance(x, Tensor)) < 2:
        return False
    ref, got = _both(model, imodel, example_inputs)
    return worst <= max(1.0, NOISE_FACTOR * _worst_error(ref, got))


def _both(model: nn.Module, imodel: IntegralModel, inputs: tuple[tuple, dict]) -> tuple[object, object]:
    """The network's outputs (in eval mode; its own mode given back) and the integral model's,
    on copies of ``(args, kwargs)`` (a ``forward`` may write to its inputs)."""
    was_training = model.training
    (args, kwargs), (args2, kwargs2) = clone_inputs(inputs), clone_inputs(inputs)
    try:
        model.eval()
        with torch.no_grad():
            return model(*args, **kwargs), imodel(*args2, **kwargs2)
    finally:
        model.train(was_training)


def check_exact(model: nn.Module, imodel: IntegralModel, example_inputs: tuple[tuple, dict]) -> None:
    """Raise when the integral model at full size is not the network (beyond its float noise), or
    when its output shapes change at smaller sizes."""
    ref, got = _both(model, imodel, example_inputs)
    worst = _worst_error(ref, got)
    like = next((r.dtype for r in torch.utils._pytree.tree_leaves(ref)
                 if isinstance(r, Tensor) and r.is_floating_point()), None)
    if not worst <= 1.0 and like is not None and torch.finfo(like).bits > 16:
        # above the floor: judged against the network's own float noise (see torchinn.discrete.tolerance)
        _, tol = judge(worst * CONVERT_FLOOR, like, lambda: float_noise(model, *example_inputs), CONVERT_FLOOR)
        worst *= CONVERT_FLOOR / tol
    if not worst <= 1.0:
        groups = list(imodel.sizes())
        raise RuntimeError(f"internal error: the integral model differs from the network at full "
                           f"size ({worst:.2g} times the tolerance). Most likely the channels of a group were "
                           "reordered where the network uses their order: an op uses them as "
                           "positions (a spatial axis, kernel taps, a window) and torchinn's analysis "
                           f"missed it. Groups: {groups[:8]}{'...' if len(groups) > 8 else ''}; keep "
                           "the one at fault at full size with ConvertConfig(keep_discrete=[name of its "
                           "tensor]), and please report this model")
    sizes = imodel.sizes()
    try:
        imodel.resize(0.75)
        with torch.no_grad():
            args, kwargs = clone_inputs(example_inputs)
            small = imodel(*args, **kwargs)
        for r, s in zip(torch.utils._pytree.tree_leaves(ref), torch.utils._pytree.tree_leaves(small)):
            if isinstance(r, Tensor) and r.shape != s.shape:
                raise RuntimeError(f"internal error: output shape {tuple(s.shape)} at smaller sizes, "
                                   f"expected {tuple(r.shape)}")
    finally:
        imodel.resize(sizes)
        imodel.clear_samples()  # the smaller sizes' samples, not kept after the check
