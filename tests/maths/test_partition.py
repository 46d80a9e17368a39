"""Partitions of [0, 1]: uniform, Gauss-Legendre, fixed, trainable, composite; random sizes; resize."""

from __future__ import annotations

import copy
import math
import pickle
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import RULES, gap_partitions
import torchinn as inn
from torchinn import RandomSizes, resize
from torchinn.maths import CompositePartition, FixedPartition, GaussLegendrePartition, Partition, TrainablePartition, UniformPartition
from torchinn.nn import IntegralLinear
from torchinn.model import partitions
from torchinn.maths.quadrature import GaussLegendre, get_quadrature

F64 = torch.float64
NON_GL = [r for r in RULES if r != "gauss-legendre"]


def _odd_ok(rule: str, n: int) -> bool:
    return rule != "simpson" or n % 2 == 1


# -- UniformPartition -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, 9, -1])
def test_uniform_resize_bounds(bad):
    p = UniformPartition(8)
    with pytest.raises(ValueError, match=rf"size must be in \[1, 8\], got {bad}"):
        p.resize(bad)
    assert p.size == 8  # unchanged after a failed resize
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        UniformPartition(8, size=bad)


def test_uniform_resize_types():
    p = UniformPartition(8)
    assert p.resize(torch.tensor(3)) is p and p.size == 3
    with pytest.raises(TypeError, match="must be an int"):
        p.resize(2.0)
    with pytest.raises(TypeError, match="must be an int"):
        p.resize(True)
    with pytest.raises(ValueError, match="max_size"):
        UniformPartition(0)


def test_uniform_simpson_needs_odd_sizes():
    with pytest.raises(ValueError, match=r"odd number of points.*got 8"):
        UniformPartition(8, "simpson")
    p = UniformPartition(9, "simpson")
    with pytest.raises(ValueError, match=r"odd number of points.*got 4"):
        p.resize(4)
    assert p.size == 9
    assert p.resize(5).points(dtype=F64).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("size", [1, 3, 5, 8, 13])
def test_uniform_points_and_weights(rule, size):
    p = UniformPartition(13, rule)
    if not _odd_ok(rule, size):
        return
    p.resize(size)
    r = get_quadrature(rule)
    pts = p.points(dtype=F64)
    torch.testing.assert_close(pts, r.nodes(size, dtype=F64), rtol=0, atol=0)
    w = p.weights(dtype=F64)
    assert w.shape == (size,) and w.dtype == F64
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)
    assert bool((torch.diff(pts) > 0).all()) and float(pts.min()) >= 0 and float(pts.max()) <= 1
    assert p.is_standard == (size == 13)
    torch.testing.assert_close(p.control_points(dtype=F64), r.nodes(13, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(p.full_weights(dtype=F64), r.weights(r.nodes(13, dtype=F64)))


def test_uniform_default_dtype_and_cache():
    p = UniformPartition(6)
    a = p.points()
    assert a.dtype == torch.get_default_dtype()
    assert p.points() is a  # cached
    p.resize(3)
    assert p.points().tolist() == [0.0, 0.5, 1.0]
    p.resize(6)
    assert p.points() is a
    assert p.points(dtype=F64).dtype == F64


def test_uniform_chunks():
    p = UniformPartition(5)
    (c,) = p.chunks(dtype=F64)
    assert c.points is c.control  # full size: sampling is skipped
    p.resize(3)
    (c,) = p.chunks(dtype=F64)
    assert c.points.tolist() == [0.0, 0.5, 1.0]
    assert c.control.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert p.chunk_sizes() == [(3, 5)] and p.leaves() == [p]


def test_uniform_deepcopy_and_pickle():
    p = UniformPartition(7, "midpoint", size=4)
    p.points()
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert q.size == 4 and q.max_size == 7 and q.quadrature.name == "midpoint"
        torch.testing.assert_close(q.points(), p.points())
    assert "size=4, max_size=7, quadrature='midpoint'" in repr(p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_partitions_follow_device_and_dtype(dtype):
    parts = [UniformPartition(5, size=3), GaussLegendrePartition(4), FixedPartition([0.0, 0.3, 1.0]),
             CompositePartition([UniformPartition(2), UniformPartition(3, "simpson")])]
    for p in parts:
        for device in ("cpu", "meta"):
            pts, w = p.points(device, dtype), p.weights(device, dtype)
            assert pts.device.type == device and w.device.type == device, p
            assert pts.dtype == dtype and w.dtype == dtype, p
            assert pts.shape == w.shape == (p.size,)
            if device == "cpu":
                assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)


# -- Gauss-Legendre -------------------------------------------------------------------------------

def test_gauss_legendre_partition():
    p = GaussLegendrePartition(10, size=4)
    assert p.size == 4 and p.quadrature.name == "gauss-legendre"
    pts, w = p.points(dtype=F64), p.weights(dtype=F64)
    torch.testing.assert_close(pts, GaussLegendre().nodes(4, dtype=F64))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)
    # exact for degree 7 on 4 points
    assert float((w * pts**7).sum()) == pytest.approx(1 / 8, abs=1e-14)
    p.resize(10)
    assert p.is_standard
    assert UniformPartition(5, "gauss-legendre").points(dtype=F64).tolist() == \
        GaussLegendre().nodes(5, dtype=F64).tolist()


def test_gauss_legendre_cannot_be_trainable():
    with pytest.raises(ValueError, match="Gauss-Legendre"):
        TrainablePartition(GaussLegendrePartition(5))
    with pytest.raises(ValueError, match="Gauss-Legendre"):
        TrainablePartition(torch.linspace(0, 1, 5), "gauss-legendre")


# -- FixedPartition -------------------------------------------------------------------------------

def test_fixed_partition():
    p = FixedPartition([0.0, 0.1, 0.5, 1.0])
    assert p.size == 4 and p.max_size == 4 and not p.resizable and not hasattr(p, "resize")
    assert p.points(dtype=F64).tolist() == [0.0, 0.1, 0.5, 1.0]
    torch.testing.assert_close(p.weights(dtype=F64), torch.tensor([0.05, 0.25, 0.45, 0.25], dtype=F64))
    p2 = FixedPartition(torch.tensor([0.2, 0.6], dtype=F64), "midpoint", max_size=10)
    assert p2.max_size == 10 and p2.size == 2
    assert p2.control_points(dtype=F64).shape == (10,)
    torch.testing.assert_close(p2.weights(dtype=F64), torch.tensor([0.4, 0.6], dtype=F64))
    # the partition keeps a copy of the user's tensor
    t = torch.tensor([0.0, 0.5, 1.0])
    p3 = FixedPartition(t)
    t[1] = 0.9
    assert p3.points().tolist() == [0.0, 0.5, 1.0]
    assert "_points" in p3.state_dict()


def test_fixed_partition_validation():
    with pytest.raises(ValueError, match=r"strictly increasing.*\(0\.2\) <= point 1 \(0\.5\)"):
        FixedPartition([0.0, 0.5, 0.2])
    with pytest.raises(ValueError, match=r"leaves \[0, 1\]"):
        FixedPartition([0.0, 0.5, 1.5])
    with pytest.raises(ValueError, match=r"non-finite"):
        FixedPartition([0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"Gauss-Legendre"):
        FixedPartition([0.0, 0.5, 1.0], "gauss-legendre")
    with pytest.raises(ValueError, match=r"odd number of points.*got 4"):
        FixedPartition([0.0, 0.2, 0.5, 1.0], "simpson")
    with pytest.raises(ValueError, match=r"\[1, 2\], got 3"):
        FixedPartition([0.0, 0.5, 1.0], max_size=2)
    # Gauss-Legendre nodes are accepted
    p = FixedPartition(GaussLegendre().nodes(3, dtype=F64), "gauss-legendre")
    assert float(p.weights(dtype=F64).sum()) == pytest.approx(1.0)


# -- TrainablePartition ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule", NON_GL)
@pytest.mark.parametrize("size", [1, 3, 9])
def test_trainable_init_from_uniform(rule, size):
    u = UniformPartition(9, rule, size=size)
    t = TrainablePartition(u)
    assert t.size == size and t.max_size == 9 and t.quadrature.name == rule
    torch.testing.assert_close(t.points().detach().double(), u.points(dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(t.weights().detach().double(), u.weights(dtype=F64), rtol=0, atol=1e-6)
    assert not t.is_standard and not t.resizable


@settings(max_examples=30)
@given(pts=gap_partitions(min_points=3, max_points=15), rule=st.sampled_from(["trapezoid", "midpoint", "left"]),
       lo=st.floats(0.0, 0.2), hi=st.floats(0.8, 1.0))
def test_trainable_init_exact_nonuniform(pts, rule, lo, hi):
    init = lo + (hi - lo) * pts
    t = TrainablePartition(init, rule)
    assert t.size == init.numel()
    torch.testing.assert_close(t.points().detach().double(), init, rtol=0, atol=1e-6)


def _check_valid(pts: torch.Tensor) -> None:
    assert bool(torch.isfinite(pts).all()), pts
    assert float(pts.min()) >= 0.0 and float(pts.max()) <= 1.0, pts
    assert bool((torch.diff(pts) > 0).all()), pts


magnitudes = st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False)
spread = st.builds(lambda m, e, s: s * m * 10.0**e, st.floats(0.0, 10.0), st.integers(-30, 30),
                   st.sampled_from([-1.0, 1.0]))


@settings(max_examples=150)
@given(rule=st.sampled_from(["trapezoid", "midpoint", "left", "right", "simpson"]),
       data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_trainable_stays_valid_for_any_delta(rule, data, dtype):
    n = data.draw(st.sampled_from([1, 3, 5, 9, 17]))
    t = TrainablePartition(UniformPartition(n, rule)).to(dtype)
    first0 = rule in ("trapezoid", "simpson", "left")
    last1 = rule in ("trapezoid", "simpson", "right")
    values = data.draw(st.lists(st.one_of(magnitudes, spread, st.just(0.0)),
                                min_size=t.delta.numel(), max_size=t.delta.numel()))
    with torch.no_grad():
        t.delta.copy_(torch.tensor(values, dtype=F64).to(dtype))
    pts = t.points().detach()
    assert pts.dtype == dtype and pts.shape == (n,)
    _check_valid(pts)
    if first0 and n > 1:
        assert float(pts[0]) == 0.0
    if last1 and n > 1:
        assert float(pts[-1]) == 1.0
    # the rule accepts the points and its weights still sum to one (in float64: on extreme
    # panels Simpson's weights are huge and of both signs, so float32 sums cancel badly)
    t.quadrature.weights(pts)
    w = t.quadrature.weights(pts.double())
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-13 * max(1.0, float(w.abs().max())))


@pytest.mark.parametrize("rule", ["trapezoid", "midpoint", "simpson"])
@pytest.mark.parametrize("lr", [1e2, 1e6, 1e12])
def test_trainable_huge_optimizer_steps(rule, lr):
    torch.manual_seed(0)
    t = TrainablePartition(UniformPartition(9, rule))
    opt = torch.optim.SGD(t.parameters(), lr=lr)
    target = torch.rand(9)
    for _ in range(5):
        opt.zero_grad()
        x = t.points()
        loss = ((x - target) ** 2).sum() + (t.weights() * torch.sin(20 * x)).sum()
        loss.backward()
        assert bool(torch.isfinite(t.delta.grad).all())
        opt.step()
        pts = t.points().detach()
        _check_valid(pts)
        if rule != "midpoint":
            assert float(pts[0]) == 0.0 and float(pts[-1]) == 1.0


def test_trainable_gradients_reach_delta():
    t = TrainablePartition(UniformPartition(7, "trapezoid"))
    x = t.points()
    (t.weights() * torch.exp(3 * x)).sum().backward()
    g = t.delta.grad
    assert g is not None and g.shape == (8,) and bool(torch.isfinite(g).all())
    assert float(g[1:-1].abs().max()) > 1e-3  # free gaps move
    # a step reduces the (trapezoid) error on a convex function: points move
    before = t.points().detach().clone()
    with torch.no_grad():
        t.delta -= 0.1 * g
    assert float((t.points().detach() - before).abs().max()) > 1e-5


@pytest.mark.parametrize("rule", ["trapezoid", "midpoint"])
def test_trainable_points_gradcheck(rule):
    torch.manual_seed(0)
    t = TrainablePartition(UniformPartition(6 if rule == "midpoint" else 5, rule)).double()
    d0 = (t.delta.detach() * (1 + 0.5 * torch.rand_like(t.delta))).requires_grad_(True)
    del t.delta

    def points(d):
        t.delta = d
        return t.points(), t.weights()

    assert torch.autograd.gradcheck(points, (d0,), eps=1e-7, atol=1e-6)


def test_trainable_cache_key_changes_on_step():
    t = TrainablePartition(UniformPartition(5))
    k0 = t.cache_key()
    assert t.cache_key() == k0
    opt = torch.optim.SGD(t.parameters(), lr=0.1)
    t.points().sum().backward()
    opt.step()
    assert t.cache_key() != k0


def test_trainable_errors():
    with pytest.raises(TypeError, match="CompositePartition"):
        TrainablePartition(CompositePartition([UniformPartition(3), UniformPartition(3)]))
    with pytest.raises(ValueError, match="strictly increasing"):
        TrainablePartition(torch.tensor([0.0, 0.6, 0.4]))
    with pytest.raises(ValueError, match=r"odd number of points.*got 4"):
        TrainablePartition(torch.linspace(0, 1, 4), "simpson", max_size=9)
    with pytest.raises(ValueError, match=r"on meta"):
        TrainablePartition(UniformPartition(3)).points(device="meta")


def test_trainable_state_dict_roundtrip():
    t = TrainablePartition(torch.tensor([0.0, 0.2, 0.3, 1.0]))
    with torch.no_grad():
        t.delta.mul_(1.7).add_(0.1)
    u = TrainablePartition(torch.linspace(0, 1, 4))
    u.load_state_dict(t.state_dict())
    torch.testing.assert_close(u.points(), t.points())


# -- CompositePartition ---------------------------------------------------------------------------

def test_composite_partition():
    a, b = UniformPartition(4), UniformPartition(6, size=3)
    c = CompositePartition([a, b])
    assert c.max_size == 10 and c.size == 7
    assert c.chunk_sizes() == [(4, 4), (3, 6)] and c.leaves() == [a, b]
    wa, wb = a.weights(dtype=F64), b.weights(dtype=F64)
    torch.testing.assert_close(c.weights(dtype=F64), torch.cat([0.4 * wa, 0.6 * wb]))
    assert float(c.weights(dtype=F64).sum()) == pytest.approx(1.0)
    torch.testing.assert_close(c.points(dtype=F64),
                               torch.cat([0.4 * a.points(dtype=F64), 0.4 + 0.6 * b.points(dtype=F64)]))
    torch.testing.assert_close(c.full_weights(dtype=F64),
                               torch.cat([0.4 * a.full_weights(dtype=F64), 0.6 * b.full_weights(dtype=F64)]))
    chunks = c.chunks(dtype=F64)
    assert len(chunks) == 2
    assert chunks[0].points is chunks[0].control  # a at full size
    assert chunks[1].points.tolist() == [0.0, 0.5, 1.0] and chunks[1].control.numel() == 6
    assert not c.is_standard
    b.resize(6)
    assert c.is_standard and c.size == 10
    with pytest.raises(TypeError, match="chunks"):
        c.control_points()
    k = c.cache_key()
    a.resize(2)
    assert c.cache_key() != k and c.size == 8


def test_composite_nested_and_errors():
    a, b, d = UniformPartition(2), UniformPartition(3), UniformPartition(5)
    c = CompositePartition([CompositePartition([a, b]), d])
    assert c.leaves() == [a, b, d] and c.max_size == 10
    assert [ch.control.numel() for ch in c.chunks()] == [2, 3, 5]
    torch.testing.assert_close(c.weights(dtype=F64),
                               torch.cat([0.2 * a.weights(dtype=F64), 0.3 * b.weights(dtype=F64),
                                          0.5 * d.weights(dtype=F64)]))
    with pytest.raises(ValueError, match="at least one"):
        CompositePartition([])
    with pytest.raises(TypeError, match="must be Partitions"):
        CompositePartition([UniformPartition(2), 3])


# -- partitions() / resize() ----------------------------------------------------------------------

def _net(p: UniformPartition, q: UniformPartition | None = None) -> tuple[inn.IntegralModel, Partition, Partition]:
    """The IntegralModel of three Integral* layers (from_scratch), ``q`` then given to its second
    group (another quadrature than ``p``'s), and its two partitions."""
    q = q or UniformPartition(5, "simpson")
    hidden = UniformPartition(q.max_size, p.quadrature)
    net = nn.Sequential(IntegralLinear(3, p), nn.ReLU(), IntegralLinear(p, hidden), IntegralLinear(hidden, 2))
    imodel = inn.from_scratch(net, torch.randn(2, 3))
    imodel.set_partition("2.weight:0", q)
    return imodel, imodel.partition("0.weight:0"), imodel.partition("2.weight:0")


def test_partitions_found_once():
    net, p, q = _net(UniformPartition(8), UniformPartition(5, "simpson"))
    found = partitions(net)
    assert list(found) == ["0.weight:0", "2.weight:0"]
    assert found["0.weight:0"] is p and found["2.weight:0"] is q
    net.set_partition("2.weight:0", FixedPartition(torch.linspace(0, 1, 5)))
    assert len(partitions(net)) == 2 and list(partitions(net, resizable_only=True)) == ["0.weight:0"]


def test_resize_ratio_and_mapping():
    net, p, q = _net(UniformPartition(8), UniformPartition(9, "simpson"))
    # Simpson partitions are rounded down to an odd size: round(0.5 * 9) = 4 -> 3
    assert resize(net, 0.5) == {"0.weight:0": 4, "2.weight:0": 3}
    assert p.size == 4 and q.size == 3
    assert net.to_discrete()[2].weight.shape == (3, 4)
    assert resize(net, 0.7) == {"0.weight:0": 6, "2.weight:0": 5}  # round(6.3) = 6 -> 5
    assert resize(net, 0.75) == {"0.weight:0": 6, "2.weight:0": 7}  # round(6.75) = 7
    resize(net, 0.45)
    assert q.size == 3
    # a mapping sets the groups it names; resize returns every group's size (as IntegralModel.resize)
    assert resize(net, {"0.weight:0": 2}) == {"0.weight:0": 2, "2.weight:0": 3}
    assert p.size == 2 and q.size == 3
    assert resize(net, {"2.weight:0": 1.0}) == {"0.weight:0": 2, "2.weight:0": 9}
    assert resize(net, 1.0) == {"0.weight:0": 8, "2.weight:0": 9}
    assert resize(net, 0.01) == {"0.weight:0": 1, "2.weight:0": 1}


def test_resize_errors():
    net, p, _ = _net(UniformPartition(8))
    with pytest.raises(KeyError, match=r"no group named 'nope'; known groups: \['0.weight:0', '2.weight:0'\]"):
        resize(net, {"nope": 3})
    assert p.size == 8
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 1.5"):
        resize(net, 1.5)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 0.0"):
        resize(net, 0.0)
    with pytest.raises(ValueError, match=r"'0.weight:0' has 8 channels; size must be in \[1, 8\], got 9"):
        resize(net, {"0.weight:0": 9})


# -- RandomSizes ----------------------------------------------------------------------------------

def _many(rs: RandomSizes, n: int) -> list[dict[str, int]]:
    return [rs.step() for _ in range(n)]


@settings(max_examples=25)
@given(low=st.floats(0.05, 1.0), width=st.floats(0.0, 1.0), sizes=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       seed=st.integers(0, 2**31))
def test_random_sizes_in_bounds(low, width, sizes, seed):
    high = low + (1.0 - low) * width
    parts = {f"p{i}": UniformPartition(n) for i, n in enumerate(sizes)}
    rs = RandomSizes(parts, low=low, high=high, seed=seed)
    for _ in range(20):
        for name, s in rs.step().items():
            n = parts[name].max_size
            lo, hi = math.ceil(low * n - 1e-9), math.ceil(high * n - 1e-9)
            assert max(1, lo) <= s <= max(1, hi)
            assert parts[name].size == s
    rs.full()
    assert all(p.size == p.max_size for p in parts.values())


def test_random_sizes_cover_range_uniformly():
    p = UniformPartition(20)
    rs = RandomSizes({"p": p}, low=0.5, high=1.0, seed=1)
    counts = Counter(d["p"] for d in _many(rs, 2000))
    assert set(counts) == set(range(10, 21))
    assert min(counts.values()) > 2000 / 11 * 0.6  # no size starved


def test_random_sizes_reproducible():
    net, _, _ = _net(UniformPartition(16), UniformPartition(9, "simpson"))

    def run(**kw):
        resize(net, 1.0)
        return _many(RandomSizes(net, low=0.25, **kw), 30)

    assert run(seed=7) == run(seed=7)
    assert run(seed=7) != run(seed=8)
    g1, g2 = torch.Generator().manual_seed(123), torch.Generator().manual_seed(123)
    assert run(generator=g1) == run(generator=g2)
    assert run(generator=torch.Generator().manual_seed(5)) == run(seed=5)
    # the global RNG is neither used nor advanced
    state = torch.get_rng_state()
    run(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    a = run()
    torch.manual_seed(1)
    assert run() == a


def test_random_sizes_shared_partition_one_size():
    p = UniformPartition(12)
    net = inn.from_scratch(nn.Sequential(IntegralLinear(3, p), IntegralLinear(p, p), IntegralLinear(p, 2)),
                           torch.randn(2, 3))
    rs = RandomSizes(net, low=0.25, seed=0)
    seen = set()
    for _ in range(20):
        sizes = rs.step()
        # one size for the layers that share a channel group; layer 1's outputs, tied to nothing
        # by the graph, are a group of their own (a copy of p)
        assert list(sizes) == ["0.weight:0", "1.weight:0"]
        s, t = sizes.values()
        seen.add(s)
        assert [m.weight.shape for m in net.to_discrete()] == [(s, 3), (t, s), (2, t)]
        y = net(torch.randn(2, 3))
        assert y.shape == (2, 2)
    assert len(seen) > 3


def test_random_sizes_full_biased_prefers_large():
    p = UniformPartition(40)
    uni = [d["p"] for d in _many(RandomSizes({"p": p}, low=0.25, seed=0), 3000)]
    fb = [d["p"] for d in _many(RandomSizes({"p": p}, low=0.25, distribution="full-biased", seed=0), 3000)]
    mean_u, mean_b = sum(uni) / len(uni), sum(fb) / len(fb)
    # uniform on [10, 40]: mean 25; density ~ linear towards 40: mean ~ 10 + 2/3 * 31 ~ 30.7
    assert mean_u == pytest.approx(25.0, abs=0.8)
    assert mean_b == pytest.approx(10 + 2 / 3 * 31, abs=1.0)
    assert mean_b > mean_u + 4
    assert min(fb) >= 10 and max(fb) == 40


def test_random_sizes_simpson_odd():
    p, q = UniformPartition(21, "simpson"), UniformPartition(10)
    rs = RandomSizes({"p": p, "q": q}, low=0.3, seed=2)
    ps = [d["p"] for d in _many(rs, 300)]
    assert all(s % 2 == 1 and 7 <= s <= 21 for s in ps)
    assert set(ps) == set(range(7, 22, 2))


def test_random_sizes_iter_and_errors():
    p = UniformPartition(10)
    it = iter(RandomSizes({"p": p}, seed=0))
    assert all(5 <= next(it)["p"] <= 10 for _ in range(5))
    with pytest.raises(ValueError, match=r"0 < low <= high <= 1.*low=0.9, high=0.5"):
        RandomSizes({"p": p}, low=0.9, high=0.5)
    with pytest.raises(ValueError, match="'uniform' or 'full-biased'"):
        RandomSizes({"p": p}, distribution="normal")
    with pytest.raises(ValueError, match="either a generator or a seed"):
        RandomSizes({"p": p}, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="no resizable partitions"):
        RandomSizes({})
    with pytest.raises(TypeError, match=r"expected an integral network .*got Linear"):
        RandomSizes(nn.Linear(2, 2))
