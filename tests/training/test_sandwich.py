"""The sandwich rule: RandomSizes.sandwich (the sizes of one step) and sandwich_backward (one step's
passes with in-place distillation, gradients accumulated)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchinn as inn
from torchinn.training.train import kl_distillation_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def mlp(quadrature: str = "trapezoid", n: tuple[int, int] = (16, 10),
        head_scale: float = 1.0) -> tuple[inn.IntegralModel, inn.maths.Partition, inn.maths.Partition]:
    """An MLP of Integral* layers as the IntegralModel from_scratch makes of it, and its two partitions."""
    torch.manual_seed(0)
    a, b = inn.maths.UniformPartition(n[0], quadrature=quadrature), inn.maths.UniformPartition(n[1], quadrature=quadrature)
    net = nn.Sequential(inn.nn.IntegralLinear(4, a), nn.Tanh(), inn.nn.IntegralLinear(a, b), nn.Tanh(),
                        inn.nn.IntegralLinear(b, 3))
    with torch.no_grad():
        for p in net[4].parameters():
            p.mul_(head_scale)
    imodel = inn.from_scratch(net, torch.randn(2, 4))
    parts = imodel.partition_map()
    return imodel, parts["0.weight:0"], parts["2.weight:0"]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), low=st.floats(0.05, 1.0), width=st.floats(0.0, 1.0),
       random=st.integers(0, 4))
def test_sandwich_yields_largest_smallest_then_the_draws_of_step(seed, low, width, random):
    net, a, b = mlp()
    high = low + (1.0 - low) * width
    sizes = inn.RandomSizes(net, low, high, seed=seed)
    twin = inn.RandomSizes(net, low, high, seed=seed)
    got = []
    for drawn in sizes.sandwich(random):
        assert drawn == {"0.weight:0": a.size, "2.weight:0": b.size}  # set when yielded
        got.append(drawn)
    assert len(got) == 2 + random
    for name, n in (("0.weight:0", 16), ("2.weight:0", 10)):
        lo, hi = max(1, math.ceil(low * n - 1e-9)), max(1, math.ceil(high * n - 1e-9))
        assert got[0][name] == max(lo, hi) and got[1][name] == lo
    # the random sizes are the draws step() makes from the same generator state
    assert got[2:] == [twin.step() for _ in range(random)]


def test_sandwich_numbers_and_ranges():
    net, a, b = mlp()
    sizes = inn.RandomSizes(net, low=0.25, seed=0, ranges={"2.weight:0": (0.5, 0.8)})
    got = list(sizes.sandwich(1))
    assert got[:2] == [{"0.weight:0": 16, "2.weight:0": 8}, {"0.weight:0": 4, "2.weight:0": 5}]
    assert 4 <= got[2]["0.weight:0"] <= 16 and 5 <= got[2]["2.weight:0"] <= 8
    assert (a.size, b.size) == tuple(got[2].values())  # the last sizes are kept
    sizes.full()
    assert (a.size, b.size) == (16, 10)


def test_sandwich_respects_the_quadrature():
    net, a, b = mlp("simpson", (17, 11))  # odd sizes only
    sizes = inn.RandomSizes(net, low=0.5, high=0.9, seed=0)
    largest, smallest = list(sizes.sandwich(0))
    # ranges [9, 16] and [6, 10]: the largest odd sizes in them, and the smallest
    assert largest == {"0.weight:0": 15, "2.weight:0": 9}
    assert smallest == {"0.weight:0": 9, "2.weight:0": 7}
    assert sizes.largest() == largest and sizes.smallest() == smallest


def test_sandwich_bad_count():
    net, _, _ = mlp()
    sizes = inn.RandomSizes(net, seed=0)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"int >= 0, got {bad!r}"):
            next(sizes.sandwich(bad))


def grads(net: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


def by_hand(net: nn.Module, order: list[dict[str, int]], x, y, detach: bool = True) -> tuple[list[float], list]:
    """The sandwich step computed pass by pass: cross-entropy at the first sizes, KL to its
    (detached unless ``detach=False``) outputs at the others."""
    parts = inn.model.partitions(net)
    net.zero_grad()
    losses, teacher = [], None
    for i, s in enumerate(order):
        for n, size in s.items():
            parts[n].resize(size)
        out = net(x)
        if i == 0:
            loss, teacher = F.cross_entropy(out, y), (out.detach() if detach else out)
        else:
            loss = kl_distillation_loss(out, None, teacher)
        loss.backward(retain_graph=True)
        losses.append(float(loss.detach()))
    return losses, grads(net)


def test_sandwich_backward_accumulates_the_passes_with_detached_teacher():
    net, _, _ = mlp()
    x, y = torch.randn(32, 4, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 3
    order = list(inn.RandomSizes(net, low=0.25, seed=7).sandwich(2))
    net.zero_grad()
    losses = inn.sandwich_backward(net, inn.RandomSizes(net, low=0.25, seed=7), x,
                                   lambda out: F.cross_entropy(out, y), random=2, distill="kl")
    got = grads(net)
    want_losses, want = by_hand(net, order, x, y)
    assert losses == pytest.approx(want_losses, rel=1e-6)
    assert losses[0] > 1.0 and all(0 < v < losses[0] for v in losses[1:])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    # a teacher that is not detached gives other gradients: sandwich_backward's targets are detached
    _, attached = by_hand(net, order, x, y, detach=False)
    assert max(float((g - w).abs().max()) for g, w in zip(got, attached)) > 1e-3


def test_sandwich_backward_auto_and_without_distillation():
    net, a, b = mlp(head_scale=20.0)  # a classifier with a decided softmax (random weights give a nearly uniform one)
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(2)), torch.arange(16) % 3
    net.zero_grad()
    auto = inn.sandwich_backward(net, inn.RandomSizes(net, seed=3), x, lambda o: F.cross_entropy(o, y),
                                 distill="auto")
    g_auto = grads(net)
    net.zero_grad()
    kl = inn.sandwich_backward(net, inn.RandomSizes(net, seed=3), x, lambda o: F.cross_entropy(o, y), distill="kl")
    assert auto == kl and all(torch.equal(u, v) for u, v in zip(g_auto, grads(net)))  # logits: "auto" is KL
    # distill=None (the default): every size learns the labels
    order = list(inn.RandomSizes(net, seed=3).sandwich(2))
    net.zero_grad()
    plain = inn.sandwich_backward(net, inn.RandomSizes(net, seed=3), (x,), lambda o: F.cross_entropy(o, y))
    want = []
    with torch.no_grad():
        for s in order:
            a.resize(s["0.weight:0"])
            b.resize(s["2.weight:0"])
            want.append(float(F.cross_entropy(net(x), y)))
    assert plain == pytest.approx(want, rel=1e-6)
    assert len(set(plain)) == len({tuple(s.values()) for s in order}) == 3  # a draw repeats a size
    with pytest.raises(ValueError, match="distill must be None, 'auto', 'mse' or 'kl', got 'l2'"):
        inn.sandwich_backward(net, inn.RandomSizes(net, seed=3), x, lambda o: o.sum(), distill="l2")


def test_sandwich_training_keeps_the_small_width():
    """On a toy problem, 200 sandwich steps train the smallest width as well as the largest
    (measured 99.6% and 99.6% on the labels, the default; 96.9% and 96.5% with KL distillation)."""
    net, a, b = mlp()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    sizes = inn.RandomSizes(net, low=0.5, seed=0)
    opt = torch.optim.Adam(net.parameters(), 2e-2)
    for _ in range(200):
        opt.zero_grad()
        inn.sandwich_backward(net, sizes, x, lambda o: F.cross_entropy(o, y))
        opt.step()

    def acc(size: str) -> float:
        getattr(sizes, size)()
        with torch.no_grad():
            return float((net(x).argmax(1) == y).float().mean())

    full, half = acc("largest"), acc("smallest")
    assert full > 0.94 and half > 0.94 and abs(full - half) < 0.02, (full, half)
