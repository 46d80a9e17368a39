"""make_elastic on a tiny network: training makes the small sizes better (measured), the full size
stays within the tolerance, and the ranked partitions start far better than uniform resampling."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.elastic import ElasticNetwork


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


def _data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(64, 16, generator=g) for _ in range(10)]


@pytest.fixture
def one_thread():
    """Hundreds of passes of a tiny MLP: with two threads on a busy 2-core machine they wait on each
    other (40 s instead of 2 s); the test passes with either."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_improves_small_sizes_within_the_full_size_tolerance(one_thread):
    net, data = _net(), _data()
    before = copy.deepcopy(net.state_dict())
    elastic, report = inn.make_elastic(net, data[0], data, steps=80, lr=1e-3, full_tolerance=0.03,
                                       ranking="activation")
    assert isinstance(elastic, ElasticNetwork) and report.steps == 80 and report.ranking == "activation"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the user's model is untouched
    params, err_before, err_after = report.quality[0.25]
    # measured: 0.558 -> 0.366 at a quarter of the channels (held-out relative squared error)
    assert err_after < 0.8 * err_before, report
    assert report.quality[0.5][2] < 0.85 * report.quality[0.5][1], report
    assert 0 < report.kept_step <= 80 and report.full_error_after <= 0.03
    assert report.full_error_before == 0.0 and [h[0] for h in report.history] == [20, 40, 60, 80]
    # the report says what the network does: the full size, measured again here
    x = data[-1]
    with torch.no_grad():
        ref = net(x)
        rel = float(((elastic(x) - ref) ** 2).mean() / (ref**2).mean())
    assert rel <= 0.03
    assert elastic.sizes() == {"0.weight:0": 64, "2.weight:0": 64} and elastic.low == 0.25
    assert set(elastic.curves) == {"0.weight:0", "2.weight:0"}


def test_zero_tolerance_keeps_the_converted_network_exactly():
    net, data = _net(), _data()
    elastic, report = inn.make_elastic(net, data[0], data, steps=10, lr=1e-2, full_tolerance=0.0,
                                       ranking="l1", eval_every=5)
    assert report.kept_step == 0 and report.full_error_after <= 1e-10 and "kept the state of step 0" in report.note
    assert report.quality[0.25][1] == report.quality[0.25][2]
    with torch.no_grad():
        assert torch.allclose(elastic(data[0]), net(data[0]), rtol=1e-5, atol=1e-6)


def test_ranked_partitions_start_better_than_uniform_resampling():
    """The design choice of the module (see its notes): at 25% of the channels the top-ranked
    channels keep far more of the network than the uniform resampled one."""
    net, data = _net(), _data()
    _, ranked = inn.make_elastic(net, data[0], data, steps=1, lr=1e-12, ranking="auto")
    _, uniform = inn.make_elastic(net, data[0], data, steps=1, lr=1e-12, ranking="uniform")
    assert ranked.ranking in ("l1", "activation", "fisher") and set(ranked.ranking_errors) == {"l1", "activation", "fisher"}
    assert ranked.quality[0.25][1] < 0.5 * uniform.quality[0.25][1], (ranked.quality, uniform.quality)


def test_class_logits_guard_the_top_class():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        net[2].weight.mul_(4.0)  # confident logits: the loss resolves to KL
    data = [torch.randn(32, 8) for _ in range(5)]
    _, report = inn.make_elastic(net, data[0], data, steps=4, ranking="l1")
    assert report.loss.startswith("kl") and report.full_tolerance == 1e-3
    assert "top class" in report.full_metric and report.full_error_after <= 1e-3
    assert "share of samples whose top class differs" in str(report)
