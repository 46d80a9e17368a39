"""What every converted model in these tests must do."""

from __future__ import annotations

import torch
from torch import nn

import torchinn as inn


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check_converts(model: nn.Module, x: torch.Tensor, sizes: dict[str, float] | float = 0.5,
                   config: inn.ConvertConfig | None = None) -> inn.IntegralModel:
    """Exact at full size; at ``sizes`` the discrete network equals the integral one."""
    model = model.eval()
    imodel = inn.convert(model, (x,), config or inn.ConvertConfig(tsp_time_limit=0.05))
    with torch.no_grad():
        ref = model(x)
        assert rel_err(imodel(x), ref) <= 1e-5
        imodel.resize(sizes)
        small = imodel.to_discrete()
        a, b = imodel(x), small(x)
    assert a.shape == ref.shape
    assert rel_err(b, a) <= 1e-5
    return imodel
