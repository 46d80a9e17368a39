"""Steps where only the quadrature weights train (control values frozen, points fixed: the
per-channel scales of :class:`~torchinn.elastic.scaled.ScaledPartition`, ``make_elastic``'s default
deployed sizes) sample once and scale every step (:class:`torchinn.maths.structured.FrozenSamples`):
the same outputs and gradients as sampling every step, and a change of the values or the points
is seen in the next pass."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchinn as inn
import torchinn.maths.functions as functions
import torchinn.maths.structured as structured
from torchinn.elastic import ElasticNetwork
from torchinn.elastic.scaled import ScaledPartition
from torchinn.maths import UniformPartition

F64 = torch.float64


def scaled_pair(sizes: dict[str, int] | None = None):
    """Two copies of a converted CNN (float64) with the ranked top half of every group and
    random scales: ``cached`` with frozen control values (the kept samples), ``plain`` with
    trainable ones (sampled every step, the quadrature folded into the taps)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 10, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 5)).double()
    x = torch.randn(4, 3, 8, 8, dtype=F64)
    imodel = inn.convert(net, (x,), inn.ConvertConfig(permute=False))
    orders = {n: torch.randperm(g.max_size) for n, g in imodel.groups.items() if g.partition.resizable}
    assert len(orders) == 2
    elastic = ElasticNetwork(imodel, orders)
    for n in orders:
        k = (sizes or {}).get(n, imodel.groups[n].max_size // 2)
        p = ScaledPartition(elastic.partition(n, k)).requires_grad_(True)
        with torch.no_grad():
            p.log_scale.copy_(0.3 * torch.randn(k, dtype=p.log_scale.dtype))
        imodel.set_partition(n, p)
    cached, plain = imodel, copy.deepcopy(imodel)
    for p in cached.functions.parameters():
        p.requires_grad_(False)
    return cached, plain, x


def count_sampling(monkeypatch) -> list:
    """A list that grows by one at every interpolation along a dim."""
    calls: list = []
    for name in ("tap_sum", "middle_tap_sum"):
        fn = getattr(functions, name)
        monkeypatch.setattr(functions, name, lambda *a, fn=fn: calls.append(1) or fn(*a))
    return calls


def scales(model) -> list[torch.Tensor]:
    return [p.log_scale for p in model.partition_map().values() if isinstance(p, ScaledPartition)]


def frozen_entries(model) -> int:
    return sum(len(f.frozen) for f in model.functions.values())


def step(model, x, opt) -> torch.Tensor:
    opt.zero_grad()
    out = model(x)
    (out ** 2).mean().backward()
    grads = [s.grad.clone() for s in scales(model)]
    opt.step()
    return out.detach(), grads


def test_only_scales_training_samples_once_with_the_outputs_and_gradients_of_sampling_every_step(monkeypatch):
    cached, plain, x = scaled_pair()
    calls = count_sampling(monkeypatch)
    opt_c = torch.optim.Adam(scales(cached), 1e-2)
    opt_p = torch.optim.Adam(scales(plain), 1e-2)
    for i in range(4):
        before = len(calls)
        out_c, g_c = step(cached, x, opt_c)
        sampled = len(calls) - before
        out_p, g_p = step(plain, x, opt_p)
        # the first step samples the 3 weights along their groups (conv 2 along out and in: 4)
        # and the 2 conv biases, later steps nothing
        assert sampled == (6 if i == 0 else 0), (i, sampled)
        assert torch.allclose(out_c, out_p, rtol=1e-10, atol=1e-12)
        for a, b in zip(g_c, g_p):
            assert a.abs().max() > 1e-6   # the scales get a gradient
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (a - b).abs().max()
    assert frozen_entries(cached) == 5 and frozen_entries(plain) == 0
    for a, b in zip(scales(cached), scales(plain)):   # four Adam steps apart from the start
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_change_of_the_control_values_or_of_the_points_is_seen_in_the_next_pass():
    cached, plain, x = scaled_pair()
    cached(x).sum().backward()
    with torch.no_grad():   # an in-place change of the frozen values (an optimizer step, a load)
        for m in (cached, plain):
            next(iter(m.functions.values())).blocks[0].values.mul_(1.5)
    assert torch.allclose(cached(x), plain(x), rtol=1e-10, atol=1e-12)
    with torch.no_grad():   # the base points move (a trainable base partition, changed in place)
        for m in (cached, plain):
            base = next(iter(scales_partitions(m))).base
            base.delta[1:-1].mul_(1.3)
    out_c = cached(x)
    assert torch.allclose(out_c, plain(x), rtol=1e-10, atol=1e-12)
    assert frozen_entries(cached) == 5 + 1 + 3   # new: the changed values' block, the moved group's weights and bias


def scales_partitions(model):
    return [p for p in model.partition_map().values() if isinstance(p, ScaledPartition)]


def test_two_deployed_sizes_keep_their_own_samples_and_a_copy_starts_empty():
    cached, plain, x = scaled_pair()
    other, other_plain, _ = scaled_pair({n: 3 for n in cached.group_names})
    for n in cached.group_names:   # a second size per group beside the first one
        if isinstance(other.partition(n), ScaledPartition):
            first = cached.partition(n), plain.partition(n)
            for _ in range(2):
                cached.set_partition(n, other.partition(n))
                plain.set_partition(n, other_plain.partition(n))
                assert torch.allclose(cached(x), plain(x), rtol=1e-10, atol=1e-12)
                cached.set_partition(n, first[0])
                plain.set_partition(n, first[1])
                assert torch.allclose(cached(x), plain(x), rtol=1e-10, atol=1e-12)
    # two entries (the two sizes) for each of the 4 tensors of one group, three for conv 2's
    # weight on both: (other, first), (first, first), (first, other)
    assert frozen_entries(cached) == 4 * 2 + 3
    assert frozen_entries(copy.deepcopy(cached)) == 0
    cached.clear_samples()   # IntegralModel.clear_samples drops them too
    assert frozen_entries(cached) == 0
    with torch.no_grad():   # without gradients nothing is kept (eval caches are the model's own)
        fresh = copy.deepcopy(cached)
        fresh(x)
    assert frozen_entries(fresh) == 0


@pytest.mark.parametrize("bound", [2])
def test_the_kept_samples_are_bounded(monkeypatch, bound):
    from torchinn.maths.structured import FrozenSamples
    monkeypatch.setattr(FrozenSamples, "MAX_ENTRIES", bound)
    cache = FrozenSamples(blocks=1)
    for i in range(5):
        assert torch.equal(cache.get((i,), (), lambda: torch.tensor(float(i))), torch.tensor(float(i)))
        assert len(cache) <= bound
    assert len(cache) == 1   # cleared when full: 0, 1 | 2, 3 | 4


def test_a_new_uniform_partition_of_the_same_size_keeps_the_samples(monkeypatch):
    """An elastic network gives the groups it does not scale a new uniform partition at every
    resize: a block on a scaled group and such a group is not sampled again."""
    cached, plain, x = scaled_pair()
    first, second = cached.group_names
    calls = count_sampling(monkeypatch)
    opt = torch.optim.Adam(scales(cached), 1e-2)
    counts = []
    for _ in range(3):
        for m in (cached, plain):
            m.set_partition(second, UniformPartition(10, size=5))
        before = len(calls)
        step(cached, x, opt)
        counts.append(len(calls) - before)
    plain.set_partition(first, cached.partition(first))   # the trained scales on both
    assert torch.allclose(cached(x), plain(x), rtol=1e-10, atol=1e-12)
    # first step: conv 1's weight and bias, conv 2's weight (2), its bias and the classifier;
    # then only the last two, which no scale reaches (sampled as before, without a gradient)
    assert counts == [6, 2, 2]


def test_make_elastic_with_deployed_scales_keeps_no_samples_after_training(monkeypatch):
    """Its steps use the kept samples (sampled once per deployed size and tensor) and it drops
    them when training ends (they would hold memory for the user's network)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 10, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 5))
    data = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    seen = []
    get = structured.FrozenSamples.get
    monkeypatch.setattr(structured.FrozenSamples, "get", lambda self, *a: seen.append(len(self)) or get(self, *a))
    elastic, report = inn.make_elastic(net, data[0], data, steps=3, ranking="l1", deploy=[0.5])
    assert report.steps == 3 and report.lr == 0.0 and max(seen) >= 1   # later steps found their samples
    assert frozen_entries(elastic.imodel) == 0
