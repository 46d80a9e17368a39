"""ElasticNetwork: the top channels at every size, resize by ratio, sizes or budget, the sweep, and
one .inn file that resizes like the network that was trained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.elastic import ElasticNetwork


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(24, 3, 3, padding=1)).eval()


X = torch.randn(2, 3, 8, 8)


def test_a_ranked_group_keeps_its_top_channels():
    net = _conv()
    order = list(torch.randperm(16, generator=torch.Generator().manual_seed(0)))
    elastic = ElasticNetwork(inn.convert(net, (X,), inn.ConvertConfig(permute=False)), {"0.weight:0": order})
    assert elastic.resize({"0.weight:0": 5})["0.weight:0"] == 5
    small = elastic.to_discrete()
    keep = sorted(int(i) for i in order[:5])
    same = lambda a, b: a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # sampled on the nodes
    assert same(small[0].weight, net[0].weight[keep]) and same(small[0].bias, net[0].bias[keep])
    assert same(small[2].weight, net[2].weight[:, keep])   # read unscaled: plain channel selection
    # the unranked group resamples uniformly; full size is the converted network again
    assert elastic.resize(1.0) == {"0.weight:0": 16, "2.weight:0": 24}
    with torch.no_grad():
        assert torch.allclose(elastic(X), net(X), atol=1e-5)
    assert inn.resize(elastic, 0.5) == {"0.weight:0": 8, "2.weight:0": 12}  # the protocol's top-level function


def test_resize_by_budget_meets_it_and_follows_the_curves():
    elastic = ElasticNetwork(inn.convert(_conv(), (X,)), {})
    full = elastic.num_parameters()
    sizes = elastic.resize(target=0.5)   # no curves: one ratio for every group
    assert elastic.num_parameters() <= 0.5 * full and abs(sizes["0.weight:0"] / 16 - sizes["2.weight:0"] / 24) < 0.1
    # curves that make the first group expensive to cut: the budget is taken from the second
    elastic.curves = {"0.weight:0": [(0.25, 100.0), (1.0, 0.0)], "2.weight:0": [(0.25, 1.0), (1.0, 0.0)]}
    elastic.low = 0.25
    sizes = elastic.resize(target=0.6)
    assert sizes["0.weight:0"] == 16 and sizes["2.weight:0"] < 24 and elastic.num_parameters() <= 0.6 * full
    sizes = elastic.resize(target=0.6, multiple=4)
    assert all(s % 4 == 0 for s in sizes.values())


def test_sweep_gives_the_points_of_a_pareto_front():
    net = _conv()
    elastic = ElasticNetwork(inn.convert(net, (X,)), {})
    with torch.no_grad():
        ref = net(X)
    quality = lambda m: -float(((m(X) - ref) ** 2).mean())
    points = elastic.sweep((0.25, 0.5, 1.0), quality)
    assert [p.target for p in points] == [0.25, 0.5, 1.0]
    assert points[0].params < points[1].params < points[2].params == sum(p.numel() for p in net.parameters())
    assert points[2].quality > -1e-10 and points[0].quality < points[2].quality
    assert elastic.sizes() == {"0.weight:0": 16, "2.weight:0": 24}   # left at full size
    front = elastic.sweep((0.25, 0.5, 1.0), lambda m: 1.0, pareto=True)
    assert [p.target for p in front] == [0.25]   # equal quality: the fewest parameters win


def test_saved_and_loaded_it_resizes_like_the_trained_one(tmp_path):
    net = _conv()
    data = [torch.randn(4, 3, 8, 8) for _ in range(4)]
    elastic, _ = inn.make_elastic(net, data[0], data, steps=3, lr=1e-3, full_tolerance=1.0, ranking="activation")
    elastic.resize(0.5)
    inn.save(elastic, tmp_path / "e.inn")
    back = inn.load(tmp_path / "e.inn")
    assert isinstance(back, ElasticNetwork) and back.sizes() == elastic.sizes()
    assert back.curves == elastic.curves and back.low == 0.25
    assert {g: o.tolist() for g, o in back.orders.items()} == {g: o.tolist() for g, o in elastic.orders.items()}
    for sizes in (0.3, {"0.weight:0": 11, "2.weight:0": 7}):
        elastic.resize(sizes)
        back.resize(sizes)
        with torch.no_grad():
            assert torch.equal(elastic(X), back(X))
            assert torch.equal(elastic.to_discrete(graph=True)(X), back.to_discrete(graph=True)(X))
    assert back.resize(target=0.4) == elastic.resize(target=0.4)


def test_bad_rankings_and_groups():
    imodel = inn.convert(_conv(), (X,))
    with pytest.raises(KeyError, match="no group named '0.wieght:0'"):
        ElasticNetwork(imodel, {"0.wieght:0": list(range(16))})
    with pytest.raises(ValueError, match=r"must be a permutation of range\(16\)"):
        ElasticNetwork(imodel, {"0.weight:0": torch.arange(16.0)})
    with pytest.raises(TypeError, match="needs an IntegralModel"):
        ElasticNetwork(_conv(), {})
    elastic = ElasticNetwork(imodel, {})
    with pytest.raises(ValueError, match="not neither"):
        elastic.resize()
