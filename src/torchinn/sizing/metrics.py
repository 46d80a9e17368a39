"""What a budget counts of a plain network: FLOPs of one forward pass (in all, and by the
parameter each op multiplies by) and its median latency. :mod:`torchinn.compression.budget` models them as
functions of the group sizes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from ..options import check_number

__all__ = ["Metric", "count_flops", "flops_by_tensor", "measure_latency"]

#: what a budget counts (:func:`torchinn.choose_sizes`, :func:`torchinn.compress`)
Metric = Literal["params", "flops", "latency"]


def _kwargs(inputs: tuple) -> dict[str, Any]:
    """The keyword inputs of a :class:`torchinn.model.inputs.Inputs` (a tuple carrying them in
    ``.kwargs``), none for a plain tuple."""
    return dict(getattr(inputs, "kwargs", None) or {})


def count_flops(model: nn.Module, inputs: tuple) -> int:
    """FLOPs of one forward pass, counted by ``torch.utils.flop_counter``."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs, **_kwargs(inputs))
    return counter.get_total_flops()


def measure_latency(model: nn.Module, inputs: tuple, *, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one forward pass."""
    check_number(repeats, "repeats", 1, integer=True)
    check_number(warmup, "warmup", 0, integer=True)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(*inputs, **_kwargs(inputs))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def flops_by_tensor(model: nn.Module, inputs: tuple) -> tuple[dict[str, int], int]:
    """FLOPs of one forward pass attributed to the parameter or buffer each counted op multiplies
    by (by name), and the FLOPs of ops between activations only."""
    owners = {t.untyped_storage().data_ptr(): n
              for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    mode = _FlopsByTensor(owners)
    with mode, torch.no_grad():
        model(*inputs, **_kwargs(inputs))
    return mode.by_tensor, mode.other


class _FlopsByTensor(TorchDispatchMode):
    """Attribute the FLOPs of each counted op to the parameter it multiplies by."""

    def __init__(self, owners: Mapping[int, str]) -> None:
        super().__init__()
        self.owners = owners
        self.by_tensor: dict[str, int] = {}
        self.other = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            flops = flop_registry[packet](*args, **kwargs, out_val=out)
            # the largest owned operand is the weight (addmm(bias, x, weight.t()) lists the bias first)
            owner, largest = None, -1
            for a in pytree.tree_leaves((args, kwargs)):
                if isinstance(a, Tensor) and a.untyped_storage().data_ptr() in self.owners and a.numel() > largest:
                    owner, largest = self.owners[a.untyped_storage().data_ptr()], a.numel()
            if owner is None:
                self.other += flops
            else:
                self.by_tensor[owner] = self.by_tensor.get(owner, 0) + flops
        return out
