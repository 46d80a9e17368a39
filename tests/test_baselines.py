"""L1-norm and random channel selection on the converted network's groups (the baselines every
INN result is compared with at equal sizes)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchinn as inn
from torchinn.baselines import channel_importance, prune, select_channels
from torchinn_demo.zoo import ZOO

FAST = inn.ConvertConfig(permute=False)
_CONVERTED: dict[str, tuple] = {}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def converted(name: str) -> tuple:
    if name not in _CONVERTED:
        torch.manual_seed(0)
        model, inputs = ZOO[name]()
        _CONVERTED[name] = (model, inputs, inn.convert(model, inputs, FAST))
    return _CONVERTED[name]


@pytest.fixture(scope="module")
def tiny():
    """Linear(8, 32) - ReLU - Linear(32, 16) - ReLU - Linear(16, 4), converted without permuting
    (channel i of a group is channel i of the network)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(6, 8)
    return net, x, inn.convert(net, (x,), FAST)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_l1_scores_and_selection_by_hand(tiny):
    net, _, imodel = tiny
    assert imodel.sizes() == {"0.weight:0": 32, "2.weight:0": 16}
    w0, b0, w1, b1 = (net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach(), net[2].bias.detach())
    # producer L1 norm: the filter (row of the weight) and its bias; not the next layer's columns
    norms = {"0.weight:0": (w0.abs().sum(1) + b0.abs()).double(), "2.weight:0": (w1.abs().sum(1) + b1.abs()).double()}
    scores = channel_importance(imodel)
    for g, want in norms.items():
        assert torch.allclose(scores[g], want, rtol=1e-5, atol=1e-6), g
    sizes = {"0.weight:0": 11, "2.weight:0": 5}
    keep = select_channels(imodel, sizes, "l1")
    for g, k in sizes.items():
        mine = torch.sort(torch.argsort(norms[g], descending=True)[:k]).values
        assert torch.equal(keep[g], mine), g
        dropped = torch.ones(norms[g].numel(), dtype=torch.bool)
        dropped[keep[g]] = False
        assert float(norms[g][keep[g]].min()) > float(norms[g][dropped].max())


@pytest.mark.parametrize("method", ["l1", "random"])
def test_pruned_equals_hand_sliced_network(tiny, method):
    net, x, imodel = tiny
    sizes = {"0.weight:0": 11, "2.weight:0": 5}
    keep = select_channels(imodel, sizes, method, seed=3)
    k0, k1 = keep["0.weight:0"], keep["2.weight:0"]
    hand = nn.Sequential(nn.Linear(8, 11), nn.ReLU(), nn.Linear(11, 5), nn.ReLU(), nn.Linear(5, 4)).eval()
    with torch.no_grad():
        hand[0].weight.copy_(net[0].weight[k0])
        hand[0].bias.copy_(net[0].bias[k0])
        hand[2].weight.copy_(net[2].weight[k1][:, k0])
        hand[2].bias.copy_(net[2].bias[k1])
        hand[4].weight.copy_(net[4].weight[:, k1])
        hand[4].bias.copy_(net[4].bias)
    pruned = prune(imodel, sizes, method, seed=3).eval()
    xs = torch.randn(20, 8)
    with torch.no_grad():
        a, b = pruned(xs), hand(xs)
    assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(b.abs().max()))
    assert n_params(pruned) == n_params(hand) == imodel.num_parameters(sizes)
    assert imodel.sizes() == {"0.weight:0": 32, "2.weight:0": 16}  # prune leaves the model alone


@pytest.mark.parametrize("method", ["l1", "random"])
@pytest.mark.parametrize("name", ["resnet_basic", "vit_timm", "densenet"])
def test_baselines_keep_exactly_the_requested_sizes(name, method):
    _, inputs, imodel = converted(name)
    g = torch.Generator().manual_seed(len(name))
    sizes = {n: int(torch.randint(1, grp.max_size + 1, (), generator=g)) for n, grp in imodel.groups.items()}
    keep = select_channels(imodel, sizes, method)
    for n, k in keep.items():
        assert k.numel() == sizes[n] and k.unique().numel() == sizes[n]
        assert bool((k.diff() > 0).all()) and 0 <= int(k.min()) and int(k.max()) < imodel.groups[n].max_size
    pruned = prune(imodel, sizes, method).eval()
    saved = imodel.sizes()
    imodel.resize(sizes)
    try:
        inn_small = imodel.to_discrete().eval()
        shapes = {n: t.shape for n, t in imodel.tensors().items()}
    finally:
        imodel.resize(saved)
    assert n_params(pruned) == imodel.num_parameters(sizes) == n_params(inn_small)
    for n, p in pruned.named_parameters():
        assert p.shape == shapes[n] == inn_small.get_parameter(n).shape, n
    assert not any(type(m).__module__.startswith("torchinn") for m in pruned.modules())
    with torch.no_grad():
        out = pruned(*inputs)
    assert out.shape == imodel(*inputs).shape and torch.isfinite(out).all()


def test_prune_defaults_to_the_current_sizes():
    _, inputs, imodel = converted("resnet_basic")
    saved = imodel.sizes()
    imodel.resize(0.5)
    try:
        sizes = imodel.sizes()
        pruned = prune(imodel)
    finally:
        imodel.resize(saved)
    assert n_params(pruned) == imodel.num_parameters(sizes) < imodel.num_parameters()


def test_l1_keeps_everything_at_full_size():
    model, inputs, imodel = converted("resnet_basic")
    pruned = prune(imodel, {n: g.max_size for n, g in imodel.groups.items()}, "l1").eval()
    with torch.no_grad():
        a, b = pruned(*inputs), model(*inputs)
    assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_reproducible_and_seed_dependent(seed):
    _, _, imodel = converted("resnet_basic")
    sizes = {n: g.max_size // 2 for n, g in imodel.groups.items()}
    a = select_channels(imodel, sizes, "random", seed=seed)
    b = select_channels(imodel, sizes, "random", seed=seed)
    c = select_channels(imodel, sizes, "random", seed=seed + 1)
    assert all(torch.equal(a[n], b[n]) for n in sizes)
    # 8 groups of 8-20 channels: two seeds giving the same halves everywhere is (almost) impossible
    assert any(not torch.equal(a[n], c[n]) for n in sizes)


def test_random_selection_is_uniform():
    _, _, imodel = converted("resnet_basic")
    name = "layer3.0.conv2.weight:0"  # 20 channels
    counts = torch.zeros(20)
    for seed in range(400):
        counts[select_channels(imodel, {name: 5}, "random", seed=seed)[name]] += 1
    # each channel is kept with probability 1/4: 100 of 400 expected, sd ~8.7
    assert float(counts.min()) > 60 and float(counts.max()) < 140, counts


def test_sizes_out_of_range_raise(tiny):
    _, _, imodel = tiny
    for bad in (0, -1, 33, 2.5, True):
        with pytest.raises(ValueError, match=r"\[1, 32\]"):
            select_channels(imodel, {"0.weight:0": bad})
        with pytest.raises(ValueError, match=r"\[1, 32\]"):
            prune(imodel, {"0.weight:0": bad}, "random")
    with pytest.raises(KeyError, match="nope"):
        prune(imodel, {"nope": 3})
    with pytest.raises(ValueError, match="method"):
        select_channels(imodel, {"0.weight:0": 3}, "magnitude")
