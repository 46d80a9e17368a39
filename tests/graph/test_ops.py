"""Handlers of torchinn.graph.ops: F.normalize (a norm's order is not its dims), in-place
pointwise ops through the generic pointwise rule, and ops that work along one dimension."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from .helpers import check_converts


class Normalized(nn.Module):
    """conv -> conv -> F.normalize over ``dim`` -> conv: the first group stays free whatever ``dim``."""

    def __init__(self, dim: int | tuple[int, ...], p: float = 2.0) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 4, 1)
        self.dim, self.p = dim, p

    def forward(self, x):
        return self.c(F.normalize(self.b(F.relu(self.a(x))), p=self.p, dim=self.dim))


@settings(max_examples=6, deadline=None)
@given(dim=st.sampled_from([1, (2, 3), -1]), p=st.sampled_from([1.0, 2.0, 3.0]),
       ratio=st.floats(0.2, 0.9))
def test_normalize_converts_exactly_and_resizes(dim, p, ratio) -> None:
    torch.manual_seed(0)
    imodel = check_converts(Normalized(dim, p), torch.randn(2, 3, 8, 8), ratio)
    assert "a.weight:0" in imodel.groups  # the group before the norm is free
    if dim == 1:  # a norm over channels keeps them whole (it is not an integral over them)
        assert "b.weight:0" not in imodel.groups
        assert any(k.startswith("b.weight:0") and "linalg_vector_norm" in why
                   for k, why in imodel.pinned.items())
    else:  # over positions: the channels stay free
        assert imodel.groups["b.weight:0"].size < 6


def test_vector_norm_with_keyword_dims() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y / torch.linalg.vector_norm(y, ord=3, dim=(2, 3), keepdim=True))

    torch.manual_seed(0)
    imodel = check_converts(M(), torch.randn(2, 3, 6, 6), 0.5)
    assert imodel.sizes() == {"a.weight:0": 4}


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.relu6 = nn.ReLU6(inplace=True)
        self.hswish = nn.Hardswish(inplace=True)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.hswish(self.relu6(self.a(x)))
        y = torch.sigmoid_(self.b(y))
        return self.c(y.mul_(2.0).add_(y))


def test_in_place_pointwise_ops_keep_their_groups() -> None:
    torch.manual_seed(0)
    imodel = check_converts(InPlace(), torch.randn(2, 3, 8, 8), {"a.weight:0": 3, "b.weight:0": 5})
    assert imodel.sizes() == {"a.weight:0": 3, "b.weight:0": 5}
    assert all(why.startswith("network ") for why in imodel.pinned.values())  # only the input and output


@pytest.mark.parametrize("op", ["relu6_", "hardtanh_", "leaky_relu_", "elu_", "sigmoid_", "tanh_", "exp_",
                                "neg_", "abs_", "clamp_"])
def test_aten_in_place_ops_directly(op) -> None:
    """In-place variants called as ATen ops (none of them is in a list)."""
    fn = getattr(torch.ops.aten, op)

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 3)

        def forward(self, x):
            y = self.a(x)
            return self.b(fn(y, -1.0) if op == "clamp_" else fn(y))

    torch.manual_seed(0)
    imodel = check_converts(M(), torch.randn(4, 5), 0.5)
    assert imodel.sizes() == {"a.weight:0": 4}


def test_topk_and_sort_along_positions() -> None:
    """topk's ``k`` is not a dim; sort and topk along positions keep the channels free."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv1d(3, 8, 1), nn.Conv1d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            top = torch.topk(y, 3, dim=-1).values
            return self.b(top + torch.sort(y, dim=-1).values[..., :3])

    torch.manual_seed(0)
    imodel = check_converts(M(), torch.randn(2, 3, 7), 0.5)
    assert imodel.sizes() == {"a.weight:0": 4}
