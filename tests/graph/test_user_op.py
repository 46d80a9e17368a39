"""A user's op taught with one ``register_op(..., kind=...)`` works everywhere (issue 22, done
when): convert, resize, to_discrete (the user's class back), prune(..., "reconstruct") (its layer
refit) and compress, on a network whose middle layer is a ``torch.library`` op torchinn has
never seen. Nothing in torchinn names the op: everything reads the table of kinds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchinn as inn
from torchinn.compression.baselines import prune
from torchinn.graph.kinds import KINDS, Kind, check_kind, kind_of
from torchinn.graph.registry import OPS, VIEWS


@torch.library.custom_op("torchinn_test::scaled_linear", mutates_args=())
def scaled_linear(x: Tensor, w: Tensor, b: Tensor, s: Tensor) -> Tensor:
    """``F.linear(x, w, b) * s``, ``s`` one scale per output channel."""
    return F.linear(x, w, b) * s


@scaled_linear.register_fake
def _(x: Tensor, w: Tensor, b: Tensor, s: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], w.shape[0])


def _backward(ctx, g: Tensor):  # noqa: ANN001
    x, w, s = ctx.saved_tensors
    gs = g * s
    return gs @ w, gs.flatten(0, -2).T @ x.flatten(0, -2), gs.flatten(0, -2).sum(0), None


def _setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x, w, _, s = inputs
    ctx.save_for_backward(x, w, s)


scaled_linear.register_autograd(_backward, setup_context=_setup)
OP = torch.ops.torchinn_test.scaled_linear


class ScaledLinear(nn.Module):
    """The user's layer: a linear map then a fixed per-channel scale, in one op."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(out_features))
        self.register_buffer("scale", 0.5 + torch.rand(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return OP(x, self.weight, self.bias, self.scale)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 16), ScaledLinear(16, 12), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _handler(an, node):  # noqa: ANN001, ANN202 - what F.linear does, and the scale follows the outputs
    x, w = an.tensor_label(node.args[0]), an.tensor_label(node.args[1])
    an.unify(x[-1], w[-1], node)
    an.integrate(node, 1, 1, 0, len(x) - 1)
    for i in (2, 3):
        an.unify(an.tensor_label(node.args[i])[0], w[0], node)
    return list(x[:-1]) + [w[0]]


@pytest.fixture
def registered():
    ops, views, kinds = dict(OPS), dict(VIEWS), dict(KINDS)
    inn.register_op(OP, kind="linear")(_handler)
    yield
    for table, saved in ((OPS, ops), (VIEWS, views), (KINDS, kinds)):
        table.clear()
        table.update(saved)


def _error(y: Tensor, ref: Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


def test_the_kind_is_registered_with_the_handler(registered) -> None:
    assert kind_of(OP.default) == Kind("linear", input=0, weight=1, bias=2, exact=False)
    with pytest.raises(ValueError, match=r"op torchinn_test\.scaled_linear already has the kind Kind\(name='linear', "
                                         r".*\); pass override=True to replace it"):
        check_kind([OP], Kind("conv"))
    assert check_kind([OP], "linear") == kind_of(OP)  # the same kind again is no conflict
    with pytest.raises(ValueError, match=r"kind must be a torchinn\.graph\.Kind or one of \('linear', 'mm', 'matmul', "
                                         r"'conv', 'conv_transpose', 'view', 'batch_norm'\), got 'dense'"):
        inn.register_op(torch.ops.aten.logcumsumexp, kind="dense")
    with pytest.raises(ValueError, match=r"Kind\.bias is an argument position \(an int >= 0\) or None, got 'b'"):
        Kind("linear", bias="b")
    assert OPS.get(torch.ops.aten.logcumsumexp) is None and kind_of(torch.ops.aten.logcumsumexp) is None


def test_convert_resize_to_discrete_prune_and_compress(registered) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(32, 6)
    with torch.no_grad():
        ref = net(x)
    imodel = inn.convert(net, (x,))
    assert imodel.sizes() == {"a.weight:0": 16, "b.weight:0": 12}
    with torch.no_grad():
        assert _error(imodel(x), ref) < 1e-5  # exact at full size

    imodel.resize(0.5)
    small = imodel.to_discrete()
    assert type(small) is Net and type(small.b) is ScaledLinear  # the user's class, not a graph module
    assert small.b.weight.shape == (6, 8) and small.b.scale.shape == (6,)
    assert (small.b.in_features, small.b.out_features) == (8, 6)
    with torch.no_grad():
        assert _error(small(x), imodel(x)) < 1e-5

    # prune + reconstruct: the user's layer reads pruned channels of "a" and is refit on its map
    # F.linear(x, w, b) (the kind is not exact: the scale stays the op's)
    # (only "b" reads pruned channels: without its refit the two networks would be equal)
    cal = [torch.randn(64, 6) for _ in range(4)]
    sizes = {"a.weight:0": 8, "b.weight:0": 12}
    refit = prune(imodel, sizes, "reconstruct", calibration=cal)
    selected = prune(imodel, sizes, "l1")
    assert refit.get_parameter("b.weight").shape == (12, 8)
    assert not torch.equal(refit.get_parameter("b.weight"), selected.get_parameter("b.weight"))
    assert torch.equal(refit.get_parameter("c.weight"), selected.get_parameter("c.weight"))
    assert torch.equal(refit.get_buffer("b.scale"), selected.get_buffer("b.scale"))
    held_out = torch.randn(256, 6)
    with torch.no_grad():
        full = net(held_out)
        assert _error(refit(held_out), full) < 0.8 * _error(selected(held_out), full)

    # compress: the importance scores read the user's layer too (its op has a backward)
    small, rep = inn.compress(net, (x,), target=0.5, calibration=cal, tune=False)
    assert type(small) is Net and type(small.b) is ScaledLinear
    assert rep.params_after == sum(t.numel() for t in small.parameters()) <= 0.5 * rep.params_before
    assert rep.skipped == []
    with torch.no_grad():
        assert _error(small(x), ref) < 0.5
