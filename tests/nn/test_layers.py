"""Integral layers: exact at full size, equal to their discrete twins when resized, caching, errors,
and whole networks (shared partitions, to_discrete)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchinn
from conftest import RULES, rel_err
from torchinn import to_discrete
from torchinn.maths import FixedPartition, GaussLegendrePartition, Partition, TrainablePartition, UniformPartition
from torchinn.nn import IntegralConv1d, IntegralConv2d, IntegralConv3d, IntegralConvTranspose1d, IntegralConvTranspose2d, IntegralConvTranspose3d, IntegralLinear

F64 = torch.float64

# name -> (nn type, integral type, spatial input shape, kernel size)
SPECS = {
    "linear": (nn.Linear, IntegralLinear, (), None),
    "conv1d": (nn.Conv1d, IntegralConv1d, (9,), 3),
    "conv2d": (nn.Conv2d, IntegralConv2d, (6, 7), 3),
    "conv3d": (nn.Conv3d, IntegralConv3d, (4, 5, 5), (2, 3, 2)),
    "convT1d": (nn.ConvTranspose1d, IntegralConvTranspose1d, (6,), 3),
    "convT2d": (nn.ConvTranspose2d, IntegralConvTranspose2d, (4, 5), 3),
    "convT3d": (nn.ConvTranspose3d, IntegralConvTranspose3d, (3, 4, 3), (2, 3, 2)),
}
CONVS = [k for k in SPECS if k.startswith("conv")]
PLAIN_CONVS = ["conv1d", "conv2d", "conv3d"]
TRANSPOSED = ["convT1d", "convT2d", "convT3d"]


def part(rule: str, n: int, size: int | None = None) -> Partition:
    if rule == "gauss-legendre":
        return GaussLegendrePartition(n, size=size)
    return UniformPartition(n, rule, size=size)


def make_nn(name: str, cin: int, cout: int, dtype=torch.float32, **kw) -> nn.Module:
    nn_type, _, _, k = SPECS[name]
    if name == "linear":
        return nn.Linear(cin, cout, dtype=dtype, **kw)
    return nn_type(cin, cout, k, dtype=dtype, **kw)


def make_input(name: str, channels: int, batch: int = 2, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *SPECS[name][2], generator=g, dtype=dtype)


def randomize(layer: nn.Module, seed: int = 0) -> nn.Module:
    """Smooth-free random weights of order 1, so relative errors are meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


# -- exact at full size ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", list(SPECS))
def test_from_discrete_exact_at_full_size(name, rule):
    torch.manual_seed(0)
    ref = make_nn(name, 5, 7)
    layer = SPECS[name][1].from_discrete(ref, part(rule, 5), part(rule, 7))
    x = make_input(name, 5)
    assert rel_err(layer(x), ref(x)) <= 1e-6
    # and its discrete twin at full size is the same layer
    d = layer.to_discrete()
    assert type(d) is type(ref)
    torch.testing.assert_close(d.weight, ref.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(d.bias, ref.bias, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("sides", ["in", "out", "none"])
def test_from_discrete_one_side_continuous(name, sides):
    torch.manual_seed(1)
    ref = make_nn(name, 4, 6, bias=False)
    p_in = UniformPartition(4) if sides == "in" else None
    p_out = UniformPartition(6, "midpoint") if sides == "out" else None
    layer = SPECS[name][1].from_discrete(ref, p_in, p_out)
    assert layer.bias_fn is None
    assert (layer.in_partition is p_in) and (layer.out_partition is p_out)
    x = make_input(name, 4)
    assert rel_err(layer(x), ref(x)) <= 1e-6


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("kind", ["cubic", "linear"])
def test_from_discrete_float64(name, kind):
    torch.manual_seed(2)
    ref = make_nn(name, 5, 3, dtype=F64)
    layer = SPECS[name][1].from_discrete(ref, part("simpson", 5), part("trapezoid", 3), kind=kind)
    assert layer.weight_fn.blocks[0].values.dtype == F64
    x = make_input(name, 5, dtype=F64)
    assert rel_err(layer(x), ref(x)) <= 1e-13
    d = layer.to_discrete()
    assert d.weight.dtype == F64


CONV_VARIANTS = [
    dict(stride=2),
    dict(stride=(2, 1, 1), padding=(1, 0, 2)),
    dict(padding=1, dilation=2),
    dict(padding="same"),
    dict(padding="same", dilation=(1, 2, 1)),
    dict(padding="valid"),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=(1, 0, 1), padding_mode="circular"),
    dict(padding=2, padding_mode="replicate", stride=2),
    dict(padding="same", padding_mode="reflect"),
    dict(padding="same", padding_mode="circular", dilation=2),
    dict(padding="valid", padding_mode="replicate"),
    dict(padding=1, bias=False),
]


def _nd(kw: dict, n: int) -> dict:
    """Cut tuple-valued options to ``n`` dims."""
    return {k: (v[:n] if isinstance(v, tuple) else v) for k, v in kw.items()}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("kw", CONV_VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("name", PLAIN_CONVS)
def test_conv_variants_exact_and_resized(name, kw):
    n = len(SPECS[name][2])
    kw = _nd(kw, n)
    torch.manual_seed(3)
    ref = randomize(make_nn(name, 5, 7, **kw))
    p_in, p_out = UniformPartition(5), UniformPartition(7, "simpson")
    layer = SPECS[name][1].from_discrete(ref, p_in, p_out)
    x = make_input(name, 5)
    y = layer(x)
    assert y.shape == ref(x).shape
    assert rel_err(y, ref(x)) <= 1e-6
    # unbatched input works too
    assert rel_err(layer(x[0]), ref(x[0])) <= 1e-6
    # resized: equal to its own discrete twin, which keeps all the options
    p_in.resize(3)
    p_out.resize(5)
    d = layer.to_discrete()
    assert type(d) is type(ref)
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(d, attr) == getattr(ref, attr), attr
    assert d.weight.shape == (5, 3, *ref.kernel_size)
    assert (d.bias is None) == (ref.bias is None)
    x3 = x[:, :3]
    torch.testing.assert_close(layer(x3), d(x3), rtol=1e-6, atol=1e-6)


TRANSPOSED_VARIANTS = [
    dict(stride=2),
    dict(stride=(2, 3, 1), output_padding=(1, 2, 0)),
    dict(padding=1, dilation=2),
    dict(stride=2, padding=(1, 0, 1), output_padding=1, dilation=(1, 2, 2)),
    dict(bias=False, stride=3, output_padding=2),
]


@pytest.mark.parametrize("kw", TRANSPOSED_VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("name", TRANSPOSED)
def test_transposed_variants_exact_and_resized(name, kw):
    n = len(SPECS[name][2])
    kw = _nd(kw, n)
    torch.manual_seed(4)
    ref = randomize(make_nn(name, 5, 7, **kw))
    p_in, p_out = UniformPartition(5, "midpoint"), UniformPartition(7)
    layer = SPECS[name][1].from_discrete(ref, p_in, p_out)
    x = make_input(name, 5)
    assert rel_err(layer(x), ref(x)) <= 1e-6
    assert rel_err(layer(x[1]), ref(x[1])) <= 1e-6
    p_in.resize(2)
    p_out.resize(4)
    d = layer.to_discrete()
    assert type(d) is type(ref)
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "output_padding"):
        assert getattr(d, attr) == getattr(ref, attr), attr
    assert d.weight.shape == (2, 4, *ref.kernel_size)
    x2 = x[:, :2]
    torch.testing.assert_close(layer(x2), d(x2), rtol=1e-6, atol=1e-6)


# -- resized layers equal their discrete twins ---------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", list(SPECS))
def test_resized_equals_to_discrete(name, rule):
    torch.manual_seed(5)
    p_in, p_out = part(rule, 9), part(rule, 7)
    layer = SPECS[name][1].from_discrete(make_nn(name, 9, 7), p_in, p_out)
    for k_in, k_out in [(5, 3), (1, 7), (9, 1)]:
        p_in.resize(k_in)
        p_out.resize(k_out)
        assert (layer.in_size, layer.out_size) == (k_in, k_out)
        d = layer.to_discrete()
        assert type(d) is SPECS[name][0]
        if name == "linear":
            assert (d.in_features, d.out_features) == (k_in, k_out)
            assert d.weight.shape == (k_out, k_in)
        else:
            assert (d.in_channels, d.out_channels) == (k_in, k_out)
            ks = tuple(d.kernel_size)
            assert d.weight.shape == ((k_in, k_out) if name.startswith("convT") else (k_out, k_in)) + ks
        assert d.bias.shape == (k_out,)
        x = make_input(name, k_in)
        y = layer(x)
        torch.testing.assert_close(y, d(x), rtol=1e-6, atol=1e-6)
        assert y.shape[1 if name != "linear" else -1] == k_out


@settings(max_examples=20)
@given(name=st.sampled_from(list(SPECS)), k_in=st.integers(1, 6), k_out=st.integers(1, 8),
       kind=st.sampled_from(["cubic", "linear"]), seed=st.integers(0, 1000))
def test_from_scratch_resized_equals_to_discrete(name, k_in, k_out, kind, seed):
    torch.manual_seed(seed)
    p_in, p_out = UniformPartition(6, size=k_in), UniformPartition(8, "midpoint", size=k_out)
    cls = SPECS[name][1]
    layer = cls(p_in, p_out, bias=True, kind=kind) if name == "linear" else \
        cls(p_in, p_out, SPECS[name][3], kind=kind)
    d = layer.to_discrete()
    x = make_input(name, k_in, seed=seed)
    torch.testing.assert_close(layer(x), d(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "conv2d", "convT1d"])
def test_trainable_and_fixed_partitions(name):
    torch.manual_seed(6)
    ref = make_nn(name, 5, 7)
    t_in = TrainablePartition(UniformPartition(5))
    f_out = FixedPartition(torch.linspace(0, 1, 7))
    layer = SPECS[name][1].from_discrete(ref, t_in, f_out)
    x = make_input(name, 5)
    # initialised at the control points: the full-size layer up to float32 rounding of the points
    assert rel_err(layer(x), ref(x)) <= 1e-5
    with torch.no_grad():
        t_in.delta.mul_(torch.linspace(0.5, 1.5, 6))
    d = layer.to_discrete()
    torch.testing.assert_close(layer(x), d(x), rtol=1e-6, atol=1e-6)
    assert rel_err(layer(x), ref(x)) > 1e-3  # the points really moved


@pytest.mark.parametrize("name", ["linear", "conv1d", "convT2d"])
def test_composite_partitions(name):
    """Concatenated channels: each block keeps its own function; resizing one block leaves the
    other block's weights untouched (no interpolation across the seam)."""
    torch.manual_seed(14)
    a, b = UniformPartition(3), UniformPartition(4, "midpoint")
    o1, o2 = UniformPartition(2), UniformPartition(3, "simpson")
    ref = randomize(make_nn(name, 7, 5))
    layer = SPECS[name][1].from_discrete(ref, torchinn.maths.CompositePartition([a, b]),
                                         torchinn.maths.CompositePartition([o1, o2]))
    x = make_input(name, 7)
    assert rel_err(layer(x), ref(x)) <= 1e-6
    b.resize(2)
    o2.resize(1)
    assert (layer.in_size, layer.out_size) == (5, 3)
    d = layer.to_discrete()
    w, w_ref = (d.weight, ref.weight) if not name.startswith("convT") else \
        (d.weight.transpose(0, 1), ref.weight.transpose(0, 1))
    torch.testing.assert_close(w[:2, :3], w_ref[:2, :3], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(d.bias[:2], ref.bias[:2], rtol=0, atol=0)
    x5 = make_input(name, 5)
    torch.testing.assert_close(layer(x5), d(x5), rtol=1e-6, atol=1e-6)


# -- depthwise and grouped convolutions ----------------------------------------------------------

@pytest.mark.parametrize("name", CONVS)
def test_depthwise(name):
    torch.manual_seed(7)
    p = UniformPartition(6)
    nn_type, cls, _, k = SPECS[name]
    ref = randomize(nn_type(6, 6, k, groups=6, padding=1))
    layer = cls.from_discrete(ref, p, p, depthwise=True)
    assert layer.depthwise
    x = make_input(name, 6)
    assert rel_err(layer(x), ref(x)) <= 1e-6
    p.resize(4)
    d = layer.to_discrete()
    assert type(d) is nn_type and d.groups == 4 and d.in_channels == d.out_channels == 4
    assert d.weight.shape == (4, 1, *d.kernel_size)
    x4 = make_input(name, 4)
    torch.testing.assert_close(layer(x4), d(x4), rtol=1e-6, atol=1e-6)
    # from scratch
    q = UniformPartition(5, size=3)
    dw = cls(q, q, k, groups=q, padding=1)
    d = dw.to_discrete()
    assert d.groups == 3
    x3 = make_input(name, 3)
    torch.testing.assert_close(dw(x3), d(x3), rtol=1e-6, atol=1e-6)
    assert "groups=depthwise" in repr(dw)


def test_depthwise_needs_the_same_partition():
    p, q = UniformPartition(4), UniformPartition(4)
    with pytest.raises(ValueError, match="same Partition object"):
        IntegralConv2d(p, q, 3, groups=p)
    with pytest.raises(ValueError, match="same Partition object"):
        IntegralConv2d(4, p, 3, groups=p)


@pytest.mark.parametrize("name", CONVS)
def test_discrete_groups(name):
    torch.manual_seed(8)
    nn_type, cls, _, k = SPECS[name]
    ref = randomize(nn_type(4, 6, k, groups=2))
    layer = cls.from_discrete(ref)
    x = make_input(name, 4)
    assert rel_err(layer(x), ref(x)) <= 1e-6
    d = layer.to_discrete()
    assert d.groups == 2 and d.weight.shape == ref.weight.shape
    scratch = cls(4, 6, k, groups=2)
    assert scratch.to_discrete().groups == 2
    torch.testing.assert_close(scratch(x), scratch.to_discrete()(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CONVS)
def test_groups_with_partitions_raise(name):
    cls, k = SPECS[name][1], SPECS[name][3]
    with pytest.raises(ValueError, match=r"groups=2 with continuous channels is not supported"):
        cls(UniformPartition(4), 6, k, groups=2)
    with pytest.raises(ValueError, match=r"groups=2 with continuous channels"):
        cls(4, UniformPartition(6), k, groups=2)
    with pytest.raises(ValueError, match=r"groups=2 with continuous channels"):
        cls.from_discrete(SPECS[name][0](4, 6, k, groups=2), UniformPartition(4), UniformPartition(6))


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SPECS))
def test_wrong_channel_count(name):
    p = UniformPartition(6, size=4)
    layer = SPECS[name][1](p, 3) if name == "linear" else SPECS[name][1](p, 3, SPECS[name][3])
    x = make_input(name, 5)
    axis = x.ndim - 1 if name == "linear" else 1
    shape = str(tuple(x.shape)).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"expected 4 input channels \(dim {axis}\).*shape {shape}"):
        layer(x)
    p.resize(5)
    assert layer(x).shape[0] == 2  # fine once the size matches


@pytest.mark.parametrize("name", CONVS)
def test_wrong_ndim(name):
    layer = SPECS[name][1](3, 2, SPECS[name][3])
    n = len(SPECS[name][2])
    with pytest.raises(ValueError, match=rf"expects a {n + 1}-D \(unbatched\) or {n + 2}-D"):
        layer(torch.randn(*([2] * (n + 3))))
    with pytest.raises(ValueError, match="scalar"):
        IntegralLinear(3, 2)(torch.tensor(1.0))


@pytest.mark.parametrize("name", list(SPECS))
def test_input_on_other_device(name):
    layer = SPECS[name][1](4, 3) if name == "linear" else SPECS[name][1](4, 3, SPECS[name][3])
    x = make_input(name, 4).to("meta")
    with pytest.raises(ValueError, match=r"input is on meta but the layer's weights are on cpu"):
        layer(x)


def test_bad_channel_arguments():
    with pytest.raises(ValueError, match=r"in_features must be a positive int or a Partition, got 0"):
        IntegralLinear(0, 3)
    with pytest.raises(ValueError, match=r"out_channels must be a positive int or a Partition, got 2.5"):
        IntegralConv2d(3, 2.5, 3)


# -- eval-mode cache ------------------------------------------------------------------------------

def test_eval_cache_reused_and_invalidated_by_resize():
    p = UniformPartition(8)
    layer = IntegralConv2d(3, p, 3).eval()
    x = make_input("conv2d", 3)
    with torch.no_grad():
        y1 = layer(x)
        cache = layer._cache.value
        assert cache is not None
        w = cache[0]
        y2 = layer(x)
        assert layer._cache.value is cache and layer._cache.value[0] is w
        torch.testing.assert_close(y1, y2, rtol=0, atol=0)
        p.resize(5)
        y3 = layer(x)
        assert layer._cache.value is not cache and layer._cache.value[0].shape[0] == 5 and y3.shape[1] == 5
        p.resize(8)
        y4 = layer(x)
        assert layer._cache.value[0].shape[0] == 8
        torch.testing.assert_close(y4, y1, rtol=0, atol=0)


def test_eval_cache_invalidated_by_optimizer_step():
    torch.manual_seed(9)
    p = UniformPartition(6, size=4)
    layer = IntegralLinear(p, 3)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(5, 4)
    layer.eval()
    with torch.no_grad():
        y0 = layer(x)
        cache = layer._cache.value
    layer.train()
    layer(x).pow(2).sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        y1 = layer(x)
        assert layer._cache.value is not cache
        torch.testing.assert_close(y1, layer.to_discrete()(x), rtol=1e-6, atol=1e-6)
    assert float((y1 - y0).abs().max()) > 1e-3
    # also a plain in-place edit of the values (load_state_dict does the same)
    with torch.no_grad():
        layer(x)
        cache = layer._cache.value
        layer.weight_fn.blocks[0].values.mul_(2)
        y2 = layer(x)
        assert layer._cache.value is not cache
        torch.testing.assert_close(y2, layer.to_discrete()(x), rtol=1e-6, atol=1e-6)


def test_eval_cache_invalidated_by_trainable_partition_step():
    t = TrainablePartition(UniformPartition(5))
    layer = IntegralLinear(t, 2).eval()
    x = torch.randn(3, 5)
    with torch.no_grad():
        layer(x)
        cache = layer._cache.value
        t.delta.mul_(torch.linspace(0.5, 1.5, 6))
        y = layer(x)
        assert layer._cache.value is not cache
    torch.testing.assert_close(y, layer.to_discrete()(x), rtol=1e-6, atol=1e-6)


def test_no_cache_when_gradients_are_needed():
    layer = IntegralLinear(UniformPartition(4), 2)
    x = torch.randn(3, 4)
    layer(x)
    assert layer._cache.value is None  # train mode
    layer.eval()
    y = layer(x)  # eval mode but grad enabled: the result must carry gradients
    assert layer._cache.value is None and y.requires_grad
    with torch.no_grad():
        layer(x)
    assert layer._cache.value is not None
    layer.train()
    layer(x)
    assert layer._cache.value is None


def test_train_mode_gradients_reach_values_bias_and_partition():
    torch.manual_seed(10)
    t = TrainablePartition(UniformPartition(6, size=4))
    q = UniformPartition(5, size=3)
    layer = IntegralLinear(t, q)
    x = torch.randn(7, 4)
    layer(x).pow(2).sum().backward()
    for p in (layer.weight_fn.blocks[0].values, layer.bias_fn.blocks[0].values, t.delta):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        assert float(p.grad.abs().max()) > 0
    # only the control values next to the sampled points get gradient; all do here
    assert layer.weight_fn.blocks[0].values.grad.shape == (5, 6)
    assert layer._cache.value is None


def test_state_dict_roundtrip_and_copies():
    torch.manual_seed(11)
    p = UniformPartition(6, size=4)
    net = nn.Sequential(IntegralConv1d(2, p, 3), nn.ReLU(), IntegralConv1d(p, 3, 3))
    x = torch.randn(2, 2, 9)
    y = net(x)
    other = nn.Sequential(IntegralConv1d(2, UniformPartition(6, size=4), 3), nn.ReLU(),
                          IntegralConv1d(UniformPartition(6, size=4), 3, 3))
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x), y)
    net.eval()
    with torch.no_grad():
        net(x)  # fill the caches
    for cp in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert cp[0].out_partition is cp[2].in_partition  # still shared
        assert cp[0]._cache.value is None
        torch.testing.assert_close(cp(x), y)
        cp[0].out_partition.resize(2)
        assert cp(x).shape == (2, 3, 5) and p.size == 4


# -- networks -------------------------------------------------------------------------------------

def _net() -> tuple[nn.Sequential, UniformPartition, UniformPartition]:
    p, q = UniformPartition(8), UniformPartition(7)
    net = nn.Sequential(
        IntegralConv2d(3, p, 3, padding=1), nn.ReLU(),
        IntegralConv2d(p, p, 3, padding=1, groups=p), nn.ReLU(),  # depthwise, shares p
        IntegralConv2d(p, q, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        IntegralLinear(q, 5), nn.BatchNorm1d(5),
    )
    return net, p, q


def test_shared_partition_resizes_all_layers():
    torch.manual_seed(12)
    net, p, q = _net()
    x = torch.randn(4, 3, 6, 6)
    assert net(x).shape == (4, 5)
    p.resize(3)
    assert net[0].out_size == net[2].in_size == net[2].out_size == net[4].in_size == 3
    assert net[4].out_size == net[8].in_size == 7
    y = net(x)
    assert y.shape == (4, 5)
    p.resize(5)
    q.resize(3)
    assert net[2].to_discrete().groups == 5 and net[4].to_discrete().weight.shape == (3, 5, 1, 1)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_to_discrete_network(mode):
    torch.manual_seed(13)
    net, p, q = _net()
    x = torch.randn(4, 3, 6, 6)
    net.train()
    for _ in range(2):  # give the batch norm some statistics
        net(x)
    p.resize(5)
    q.resize(3)
    getattr(net, mode)()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    types = [type(m) for m in net.modules()]
    plain = to_discrete(torchinn.from_scratch(net, x))  # the one way from a network of layers
    # a plain module: nothing from torchinn inside
    for m in plain.modules():
        assert not type(m).__module__.startswith("torchinn"), type(m)
    assert [type(m) for m in plain] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU,
                                        nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.BatchNorm1d]
    assert plain[0].out_channels == 5 and plain[2].groups == 5 and plain[4].weight.shape == (3, 5, 1, 1)
    assert plain[8].in_features == 3
    assert plain.training == (mode == "train") and plain[0].training == (mode == "train")
    # the same outputs (compare in eval mode: batch norm statistics would otherwise move)
    net.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-6)
    # the original is unchanged and not shared with the copy
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [type(m) for m in net.modules()] == types
    assert p.size == 5 and q.size == 3
    assert plain[9] is not net[9] and plain[9].running_mean is not net[9].running_mean
    with torch.no_grad():
        plain[0].weight.zero_()
        plain[9].running_mean.add_(1)
    assert float(net[0].weight_fn.blocks[0].values.detach().abs().sum()) > 0
    assert torch.equal(net[9].running_mean, before["9.running_mean"])
    # the integral net still resizes after the conversion
    p.resize(8)
    assert net(x).shape == (4, 5)


def test_a_network_of_layers_goes_through_from_scratch():
    layer = IntegralLinear(UniformPartition(4, size=2), 3)
    d = layer.to_discrete()  # one layer's plain twin
    assert type(d) is nn.Linear and d.in_features == 2
    outer = nn.ModuleDict({"a": nn.Sequential(IntegralLinear(3, 4), nn.Tanh()), "b": nn.Linear(4, 4)})
    for module in (layer, outer):
        with pytest.raises(TypeError, match=rf"^{type(module).__name__} is built from Integral\* layers, a declaration "
                           r"of an integral network: torchinn.from_scratch\(model, example_inputs\) gives its "
                           "IntegralModel"):
            to_discrete(module)
    with pytest.raises(TypeError, match=r"expected an integral network \(an IntegralModel from torchinn.convert "
                       r"or torchinn.from_scratch\), got Linear"):
        torchinn.resize(nn.Linear(2, 2), 0.5)


def test_each_layer_names_its_discrete_twin():
    for name, (nn_type, cls, _, _) in SPECS.items():
        assert cls.discrete_type is nn_type


def test_reprs():
    p = UniformPartition(8, size=3)
    assert "in, out=3/8, 4" in repr(IntegralLinear(p, 4))
    r = repr(IntegralConv2d(2, p, 3, stride=2, padding=1, dilation=2, padding_mode="reflect", bias=False))
    for s in ("in, out=2, 3/8", "stride=(2, 2)", "padding=(1, 1)", "dilation=(2, 2)",
              "padding_mode='reflect'", "bias=False"):
        assert s in r, (s, r)


def test_stored_values_keep_the_weights_magnitude():
    """Values are the weight over n * q_full: equal to it where q_full = 1/n (interior trapezoid
    points are 1/(n-1), so the ratio is (n-1)/n), so a plain learning rate suits them."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 3)
    for rule, interior in (("midpoint", 1.0), ("trapezoid", 15 / 16)):
        layer = IntegralLinear.from_discrete(lin, UniformPartition(16, rule), None)
        ratio = layer.weight_fn.blocks[0].values.detach()[:, 1:-1] / lin.weight.detach()[:, 1:-1]
        assert torch.allclose(ratio, torch.full_like(ratio, interior), rtol=1e-5)
