"""Handlers of torchinn.graph.ops.core: F.normalize (a norm's order is not its dims), in-place
pointwise ops through the generic pointwise rule, and ops that work along one dimension."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchinn as inn

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


# -- channels that become positions ----------------------------------------------------------
# DNSMOS: the frequency bins are the output channels of a fixed layer, then the width of a
# Conv2d. Such channels are positions to the later op: they must stay at full size, in order.

class Positions(nn.Module):
    """``a`` (a Conv1d, a buffer or a plain tensor attribute used with F.conv1d) makes ``cout``
    channels; they become the width or height of a Conv2d, the length of a Conv1d, or the
    length an average pooling windows over."""

    def __init__(self, source: str, where: str, cin: int = 6, cout: int = 16, length: int = 10) -> None:
        super().__init__()
        w = torch.randn(cout, cin, 1)
        if source == "module":
            self.a = nn.Conv1d(cin, cout, 1, bias=False)
        elif source == "buffer":
            self.register_buffer("a", w)
        else:
            self.a = w
        self.source, self.where = source, where
        self.c = (nn.Conv2d(1, 4, 3, padding=1) if where in ("width", "height")
                  else nn.Conv1d(length, 4, 3 if where == "length" else 1, padding=int(where == "length")))
        self.l = nn.Linear(4, 2)

    def forward(self, x):
        f = (self.a(x) if self.source == "module" else F.conv1d(x, self.a)) ** 2  # (B, cout, L)
        if self.where == "width":
            y = self.c(f.transpose(1, 2)[:, None])
        elif self.where == "height":
            y = self.c(f[:, None])
        elif self.where == "length":
            y = self.c(f.transpose(1, 2))
        else:
            y = self.c(F.avg_pool1d(f.transpose(1, 2), 2))
        return self.l(torch.relu(y).flatten(2).amax(-1))


def _kept_as_positions(imodel, source: str) -> list[str]:
    name = "a.weight:0" if source == "module" else "a:0"
    return [why for k, why in imodel.pinned.items() if k == name]


@pytest.mark.parametrize("batch", [2, 1])
def test_channels_that_become_the_width_of_a_conv_are_kept(batch) -> None:
    """The issue's repro: converted at batch 2 and 1, exact at full size, ``a`` kept whole."""
    torch.manual_seed(0)
    model, x = Positions("module", "width").eval(), torch.randn(batch, 6, 10)
    imodel = check_converts(model, x, {"c.weight:0": 2})
    assert imodel.sizes() == {"c.weight:0": 2}
    assert [why.split(" at node")[0] for why in _kept_as_positions(imodel, "module")] == [
        "a spatial axis of a convolution"]
    imodel.resize(1.0)
    with torch.no_grad():
        assert (imodel.to_discrete()(x) - model(x)).abs().max() <= 1e-5 * model(x).abs().max()


@settings(max_examples=12, deadline=None)
@given(source=st.sampled_from(["module", "buffer", "attribute"]),
       where=st.sampled_from(["width", "height", "length", "pool"]),
       cout=st.integers(4, 12), length=st.integers(4, 9), batch=st.sampled_from([1, 3]))
def test_channels_that_become_positions_are_kept(source, where, cout, length, batch) -> None:
    torch.manual_seed(0)
    model = Positions(source, where, cout=2 * cout, length=length)
    imodel = check_converts(model, torch.randn(batch, 6, length), 0.5)
    assert imodel.sizes() == {"c.weight:0": 2}  # the conv's own channels still resize
    why = _kept_as_positions(imodel, source)
    assert len(why) == 1 and "a spatial axis of" in why[0], imodel.pinned


def test_a_missed_position_axis_is_named_at_batch_one_and_two(monkeypatch) -> None:
    """If a handler ever lets channels through as positions, the full-size check says so (and a
    batch-1 example does not blame a branch on the batch size)."""
    from torchinn.graph import registry

    # a conv2d handler that forgets everything: c's output channels become a free group whose
    # order the network's output depends on
    monkeypatch.setitem(registry.OPS, torch.ops.aten.conv2d,
                        lambda an, node: an.fixed_label(node.meta["val"]))
    for batch in (2, 1):
        torch.manual_seed(0)
        with pytest.raises(RuntimeError, match=r"differs from the network at full size .*Most likely "
                                               r"the channels of a group were reordered.*'c\.weight:0'"
                                               r".*keep_discrete"):
            inn.convert(Positions("module", "width").eval(), torch.randn(batch, 6, 10))


class BroadcastMax(nn.Module):
    """onnx2torch's element-wise ``Max``/``Min`` of several inputs: each broadcast with
    ``Tensor.broadcast_to`` to the common shape, stacked, reduced over the stack (openWakeWord's
    embedding network, whose ReLUs are written ``Max(x, 0)`` with a one-element constant, takes
    this path). ``floor_channels``: 1 (one number for every channel) or 8 (one per channel)."""

    def __init__(self, floor_channels: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("floor", torch.linspace(-0.2, 0.3, floor_channels).reshape(1, -1, 1, 1))

    def forward(self, x):
        y = self.a(x)
        shape = torch.broadcast_shapes(y.shape, self.floor.shape)
        y = torch.amax(torch.stack([y.broadcast_to(shape), self.floor.broadcast_to(shape)]), dim=0)
        return self.b(y)


@pytest.mark.parametrize("floor_channels", [1, 8])
def test_broadcast_to_follows_the_channels_it_keeps(floor_channels) -> None:
    torch.manual_seed(0)
    imodel = check_converts(BroadcastMax(floor_channels), torch.randn(2, 3, 6, 6), 0.5)
    assert imodel.sizes() == {"a.weight:0": 4}
    assert not [why for why in imodel.pinned.values() if "stack" in why or "broadcast" in why]
