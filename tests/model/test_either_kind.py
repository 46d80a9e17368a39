"""Every public function that takes an integral model takes one made by ``convert`` or by
``from_scratch`` alike: the same small network (a conv net with a batch norm and a linear head) made
both ways, each function called on it, real results asserted."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchinn as inn

pytestmark = pytest.mark.usefixtures("single_thread")

G = torch.Generator().manual_seed(0)
X = torch.randn(16, 3, 8, 8, generator=G)
Y = torch.arange(16) % 4
KINDS = ["convert", "from_scratch"]
GROUPS = ["0.weight:0", "3.weight:0"]  # one naming whichever way


def network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))


def make(kind: str) -> inn.IntegralModel:
    net = network()
    if kind == "convert":  # "trained": its batch norm has statistics, and it is in eval mode
        with torch.no_grad():
            net.train()(X)
        return inn.convert(net.eval(), (X,), inn.ConvertConfig(permute=False))
    return inn.from_scratch(net, (X,)).eval()


def at_sizes(imodel: inn.IntegralModel, ratio: float) -> dict[str, int]:
    sizes = inn.resize(imodel, ratio)
    if imodel.batch_statistics:  # from_scratch: statistics at the new sizes
        assert inn.recalibrate_bn(imodel, [X[:8], (X[8:], Y[8:])]) == 2
    return sizes


@pytest.mark.parametrize("kind", KINDS)
def test_groups_resize_to_discrete(kind):
    imodel = make(kind)
    assert inn.model.integral_network(imodel) is imodel
    assert list(inn.model.partitions(imodel)) == GROUPS == list(imodel.groups)
    assert at_sizes(imodel, 0.5) == {"0.weight:0": 4, "3.weight:0": 6}
    for small in (inn.to_discrete(imodel), inn.model.to_discrete(imodel)):
        assert type(small) is nn.Sequential
        assert small[0].out_channels == 4 and small[3].weight.shape == (6, 4, 3, 3) and small[7].in_features == 6
        with torch.no_grad():
            torch.testing.assert_close(small(X), imodel(X), rtol=1e-4, atol=1e-5)
    assert isinstance(inn.to_discrete(imodel, graph=True), torch.fx.GraphModule)


@pytest.mark.parametrize("kind", KINDS)
def test_random_sizes_and_sandwich_backward(kind):
    imodel = make(kind).train()
    sizes = inn.RandomSizes(imodel, low=0.5, seed=0)
    drawn = sizes.step()
    assert list(drawn) == GROUPS and drawn == imodel.sizes() and 4 <= drawn["0.weight:0"] <= 8
    imodel.zero_grad()
    losses = inn.sandwich_backward(imodel, sizes, X, lambda out: F.cross_entropy(out, Y), random=1)
    assert len(losses) == 3 and all(v > 0 for v in losses)
    grads = [p.grad for p in imodel.parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert max(float(g.abs().max()) for g in grads) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_recalibrate_bn(kind):
    imodel = make(kind)
    if kind == "convert":  # its batch norm was folded at conversion: nothing to re-estimate
        with pytest.raises(ValueError, match=r"^the integral model has no batch norm with running statistics"):
            inn.recalibrate_bn(imodel, [X])
        return
    imodel.resize(0.5)
    assert inn.recalibrate_bn(imodel, [X]) == 1
    small = imodel.to_discrete()
    h = small[0](X)
    torch.testing.assert_close(small[1].running_mean, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_choose_sizes_prune_reconstruct(kind):
    imodel = make(kind)
    chosen = inn.choose_sizes(imodel, 0.5, "params", calibration=[X[:8], X[8:]], method="uniform")
    assert list(chosen) == GROUPS and all(1 <= chosen[n] <= imodel.groups[n].max_size for n in GROUPS)
    assert imodel.num_parameters(chosen) <= 0.5 * imodel.num_parameters() * 1.1
    sizes = {"0.weight:0": 4, "3.weight:0": 6}
    for pruned in (inn.prune(imodel, sizes, "l1"), inn.compression.reconstruct(imodel, sizes, [X[:8], X[8:]])):
        assert isinstance(pruned, torch.fx.GraphModule)
        assert pruned(X).shape == (16, 4)
        assert sum(p.numel() for p in pruned.parameters()) == imodel.num_parameters(sizes)
    assert imodel.sizes() == {"0.weight:0": 8, "3.weight:0": 12}  # the model is not resized


@pytest.mark.parametrize("kind", KINDS)
def test_tune_grid_and_finetune(kind):
    imodel = make(kind)
    teacher = copy.deepcopy(imodel)
    imodel.resize(0.5)
    if imodel.batch_statistics:
        inn.recalibrate_bn(imodel, [X])
    config = inn.TuneConfig(steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = inn.tune_grid(imodel, [X[:8], X[8:]], teacher=teacher, tune=config)
    assert isinstance(report, dict) and imodel.sizes() == {"0.weight:0": 4, "3.weight:0": 6}
    small = imodel.to_discrete(graph=True)
    with torch.no_grad():
        before = float(F.mse_loss(small(X), teacher(X)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inn.finetune(small, [X[:8], X[8:]], teacher=teacher, tune=inn.TuneConfig(steps=20))
    with torch.no_grad():
        after = float(F.mse_loss(small(X), teacher(X)))
    assert after <= before  # the loop never returns a worse network


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load(kind, tmp_path):
    imodel = make(kind)
    at_sizes(imodel, 0.5)
    path = str(tmp_path / "m.inn")
    inn.save(imodel, path)
    back = inn.load(path)
    assert isinstance(back, inn.IntegralModel) and back.sizes() == imodel.sizes()
    assert back.batch_statistics == imodel.batch_statistics
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(X), imodel(X), rtol=1e-5, atol=1e-6)
