"""torchinn.graph.trace: a model that torch.export cannot trace with dynamic shapes is traced
again with static ones, and a channel shuffle converts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from torchinn.graph.trace import trace

from .helpers import check_converts


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class Shuffle(nn.Module):
    """1x1 conv, channel shuffle, depthwise conv, 1x1 conv (a grouped conv after the shuffle
    would pin the channels: its groups and the shuffled order cannot shrink together)."""

    def __init__(self, groups: int = 2, shuffle_input: bool = False) -> None:
        super().__init__()
        self.groups, self.shuffle_input = groups, shuffle_input
        self.a = nn.Conv2d(4, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.b = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        if self.shuffle_input:
            x = channel_shuffle(x, self.groups)
        return self.b(self.dw(channel_shuffle(torch.relu(self.a(x)), self.groups)))


@pytest.mark.parametrize("shuffle_input,batch,groups", [(False, 2, 2), (True, 1, 2), (False, 1, 4)])
def test_channel_shuffle_converts(shuffle_input, batch, groups) -> None:
    torch.manual_seed(0)
    imodel = check_converts(Shuffle(groups, shuffle_input), torch.randn(batch, 4, 6, 6), 0.5)
    # 8 channels viewed as (groups, 8 // groups): the inner axis is the group, each of its
    # channels kept or dropped in all the outer blocks together
    assert {n: g.max_size for n, g in imodel.groups.items()} == {"a.weight:0": 8 // groups}
    assert imodel.sizes() == {"a.weight:0": 4 // groups}


class StaticOnly(nn.Module):
    """Refuses symbolic sizes: torch.export fails with dynamic shapes, succeeds with static ones."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        if not all(is_concrete_int(d) for d in x.shape):
            raise RuntimeError("this model needs static sizes")
        return self.b(self.a(x))


class StaticImage(StaticOnly):
    """Takes any batch but needs a static image size (a reshape to sizes of its own, a resize read
    from a constant): exported with its batch dynamic."""

    def forward(self, x):
        if not all(is_concrete_int(d) for d in x.shape[1:]):
            raise RuntimeError("this model needs a static image size")
        return self.b(self.a(x))


@pytest.mark.parametrize("batch", [1, 3])
def test_a_static_image_size_keeps_the_batch_dynamic(batch) -> None:
    torch.manual_seed(0)
    model = StaticImage().eval()
    imodel = check_converts(model, torch.randn(batch, 3, 5, 5), 0.5)
    assert imodel.input_shapes == [(None, 3, 5, 5)]
    x = torch.randn(7, 3, 5, 5)  # another batch than the one traced: the resized network and its discrete one
    with torch.no_grad():
        y = imodel(x)
        assert y.shape == (7, 4, 5, 5)
        assert torch.allclose(imodel.to_discrete()(x), y, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"converted for inputs of shape \(any, 3, 5, 5\)"):
        imodel(torch.randn(2, 3, 6, 6))


def test_export_retries_with_static_shapes() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    traced = trace(StaticOnly(), (x,))
    (inp,) = traced.inputs
    assert all(is_concrete_int(d) for d in inp.meta["val"].shape)
    imodel = check_converts(StaticOnly(), x, 0.5)
    assert imodel.input_shapes == [(2, 3, 5, 5)]
    with pytest.raises(ValueError, match=r"converted for inputs of shape \(2, 3, 5, 5\)"):
        imodel(torch.randn(2, 3, 6, 6))


class ScaledBy(nn.Module):
    """Upsamples by factors read from a tensor's values in Python, as onnx2torch's Resize does."""

    def __init__(self, read: str) -> None:
        super().__init__()
        self.read = read

    def forward(self, x, scales):
        factors = scales.tolist() if self.read == "tolist" else [float(v) for v in scales.numpy()]
        if factors[:2] != [1, 1]:
            raise NotImplementedError("cannot scale the batch or the channels")
        return F.interpolate(x, scale_factor=factors[2:], mode="nearest")


class ConstantScales(nn.Module):
    def __init__(self, read: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = ScaledBy(read)
        self.register_buffer("scales", torch.tensor([1.0, 1.0, 2.0, 2.0]))

    def forward(self, x):
        return self.up(self.conv(x), self.scales)


class LeafScaledBy(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ScaledBy) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("read", ["tolist", "numpy"])
def test_reading_a_constant_buffer_in_python_is_named(read) -> None:
    model = ConstantScales(read).eval()
    x = torch.randn(2, 3, 6, 6)
    reads = (r"(?s)could not trace ConstantScales: .*the forward reads the values of a tensor in Python "
             r"at .*test_trace\.py:\d+ in forward .*even a constant buffer's values cannot be read")
    with pytest.raises(RuntimeError, match=reads):
        trace(model, (x,))
    # an fx.GraphModule (what onnx2torch makes): the message names the module
    gm = fx.GraphModule(model, LeafScaledBy().trace(model))
    with pytest.raises(RuntimeError, match=r"reads the values of a tensor in Python in module 'up' \(\.item\(\)"):
        trace(gm, (x,))
