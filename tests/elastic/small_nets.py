"""A small MLP, its data and its relative error: what the tests of deployed sizes share."""

from __future__ import annotations

import torch
from torch import nn


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


def small_data(n: int = 10, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 16, generator=g) for _ in range(n)]


def rel_error(model: nn.Module, net: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = net(x)
        return float(((model(x) - ref) ** 2).mean() / (ref ** 2).mean())
