"""Channel importance in one pass (torchinn.compression.importance): the Fisher estimate against the measured
error of removing each channel, the activation scores, the curves and the time bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchinn as inn
import torchinn.compression.baselines as baselines
from torchinn.compression.baselines import prune
from torchinn.training.distill import Distillation
from torchinn.compression.importance import activation_importance, fisher_curves, measure_importance
from torchinn.compression.starts import distill_error, full_outputs


def _cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 12, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 8 * 8, 10)).eval()
    with torch.no_grad():  # batch norm statistics that are not the identity
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    imodel = inn.convert(net, (x[:2],), inn.ConvertConfig(permute=False))
    return imodel, [(x[i:i + 16],) for i in range(0, 64, 16)]


def _removal_errors(imodel, group, batches, reference, loss):
    """The measured loss of the network without each channel of ``group`` (one at a time)."""
    n = imodel.groups[group].max_size
    out = []
    for c in range(n):
        scores = torch.ones(n)
        scores[c] = 0.0
        keep = torch.topk(scores, n - 1).indices
        original = baselines.select_channels
        baselines.select_channels = lambda *a, keep=keep, **k: {group: torch.sort(keep).values}
        try:
            small = prune(imodel, {group: n - 1}, "l1").eval()
        finally:
            baselines.select_channels = original
        out.append(distill_error(small, batches, reference, loss))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_fisher_scores_estimate_the_error_of_removing_each_channel(kind):
    imodel, batches = _cnn()
    loss = Distillation(kind, 1.0)
    reference = full_outputs(imodel, batches)
    imp = measure_importance(imodel, batches, loss, reference)
    assert imp.batches == 4 and set(imp.fisher) == set(imodel.group_names)
    for group, scores in imp.fisher.items():
        measured = _removal_errors(imodel, group, batches, reference, loss)
        ratio = (scores / measured).median()
        corr = torch.corrcoef(torch.stack([scores, measured]))[0, 1]
        # unbiased: about 1 (0.96-1.09 here); a factor of batches or of 2 would be far outside
        assert 0.6 < ratio < 1.6, (group, ratio)
        assert corr > 0.8, (group, corr)


def test_activation_scores_are_rms_times_the_reading_weights_l1():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(32, 8)
    imodel = inn.convert(net, (x[:2],), inn.ConvertConfig(permute=False))
    (group,) = imodel.group_names
    got = activation_importance(imodel, [(x[:16],), (x[16:],)])[group]
    with torch.no_grad():
        h = torch.relu(net[0](x)).double()
    want = h.pow(2).mean(0).sqrt() * net[2].weight.double().abs().sum(0)
    assert torch.allclose(got, want, rtol=1e-5)


def test_a_group_read_through_a_flatten_gets_scores():
    imodel, batches = _cnn()
    imp = measure_importance(imodel, batches[:1], fisher=False)
    last = [g for g in imodel.group_names if imodel.groups[g].max_size == 12]
    assert last and last[0] in imp.activation and imp.activation[last[0]].shape == (12,)
    assert bool((imp.activation[last[0]] > 0).all())


def test_the_time_bound_stops_after_one_batch():
    imodel, batches = _cnn()
    assert measure_importance(imodel, batches, max_seconds=0.0).batches == 1


def test_fisher_curves_sum_the_scores_of_the_channels_left_out():
    imodel, batches = _cnn()
    scores = {g: torch.arange(1, imodel.groups[g].max_size + 1, dtype=torch.float64) for g in imodel.group_names}
    curves = fisher_curves(imodel, scores, points=4)
    for g, curve in curves.items():
        n = imodel.groups[g].max_size
        assert curve[-1] == (1.0, 0.0)
        for r, e in curve:
            dropped = n - round(r * n)
            assert e == pytest.approx(dropped * (dropped + 1) / 2)  # the smallest ones: 1 + 2 + ...
        errors = [e for _, e in curve]
        assert errors == sorted(errors, reverse=True)


def test_fisher_sizes_and_start():
    imodel, batches = _cnn()
    sizes = inn.choose_sizes(imodel, 0.5, calibration=batches, method="fisher")
    full = imodel.num_parameters({g: imodel.groups[g].max_size for g in imodel.group_names})
    assert imodel.num_parameters(sizes) <= 0.5 * full
    from torchinn.compression.starts import best_start

    imodel.resize(sizes)
    choice = best_start(imodel, batches, kinds=["fisher", "l1"], per_group=False)
    assert set(choice.errors) == {"fisher", "l1"}
    choice = best_start(imodel, batches, kinds=["fisher", "l1", "uniform"], per_group=False, max_seconds=0.0)
    assert list(choice.errors) == ["fisher"]  # the first is always measured, the rest did not fit


class _ProducedOnly(nn.Module):
    """A group (q and k's outputs) that no layer reads, only a product and a sum: scored on the
    weights that produce it; and one (fc's outputs) that the head reads."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.fc, self.head = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x))) + (self.q(x) * self.k(x)).sum(-1, keepdim=True)


def test_after_the_first_batch_only_the_weights_producing_a_group_no_layer_reads_compute_gradients(monkeypatch):
    import torchinn.compression.importance as importance

    torch.manual_seed(0)
    x = torch.randn(32, 8)
    imodel = inn.convert(_ProducedOnly().eval(), (x[:4],), inn.ConvertConfig(permute=False))
    assert sorted(g.max_size for g in imodel.groups.values()) == [12, 16]
    teacher = imodel.shared_discrete().eval()
    names = {id(p): n for n, p in teacher.named_parameters()}
    calls: list[str] = []
    real = importance._producer_terms
    monkeypatch.setattr(importance, "_producer_terms", lambda p, *a: (calls.append(names[id(p)]), real(p, *a))[1])
    batches = [(x[i:i + 8],) for i in range(0, 32, 8)]
    scores = {}
    for narrow in (False, True):
        monkeypatch.setattr(importance, "NARROW_GRADIENTS", narrow)
        calls.clear()
        scores[narrow] = measure_importance(imodel, batches, network=teacher).fisher
        counts = {n: calls.count(n) for n in set(calls)}
        produced = {n: c for n, c in counts.items() if n.startswith(("q.", "k."))}
        assert produced == {"q.weight": 4, "q.bias": 4, "k.weight": 4, "k.bias": 4}
        assert {n: c for n, c in counts.items() if n not in produced} == (
            {"fc.weight": 1, "fc.bias": 1, "head.weight": 1} if narrow else {"fc.weight": 4, "fc.bias": 4, "head.weight": 4})
    for g in scores[False]:
        assert torch.allclose(scores[True][g], scores[False][g], rtol=1e-12, atol=0) and bool((scores[True][g] > 0).all())


def test_forward_only_batches_add_to_the_activation_scores_and_not_to_the_fisher_ones():
    imodel, batches = _cnn()
    loss = Distillation("mse")
    reference = full_outputs(imodel, batches[:1])
    one = measure_importance(imodel, batches[:1], loss, reference)
    more = measure_importance(imodel, batches[:1], loss, reference, activation_batches=batches[1:],
                              activation_seconds=60.0)
    every = activation_importance(imodel, batches)  # all four batches, as the activation baseline reads them
    assert (one.batches, one.activation_batches) == (1, 0) and (more.batches, more.activation_batches) == (1, 3)
    for g in every:
        assert torch.allclose(more.activation[g], every[g], rtol=1e-5), g
        assert not torch.allclose(one.activation[g], every[g], rtol=1e-3), g  # one batch alone differs
        assert torch.equal(more.fisher[g], one.fisher[g])  # Fisher: the first stage's batch only
    none = measure_importance(imodel, batches[:1], loss, reference, activation_batches=batches[1:],
                              activation_seconds=0.0)
    assert none.activation_batches == 0 and all(torch.equal(none.activation[g], one.activation[g]) for g in every)


def test_a_channel_silent_on_the_first_batches_gets_its_score_from_the_forward_only_ones():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():  # hidden channel 0 reads input 0 only: silent while input 0 is 0
        net[0].weight.copy_(torch.tensor([[2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
        net[0].bias.zero_()
    quiet, loud = torch.rand(8, 4), torch.rand(8, 4)
    quiet[:, 0] = 0.0
    imodel = inn.convert(net, (quiet[:2],), inn.ConvertConfig(permute=False))
    (group,) = imodel.group_names
    first = measure_importance(imodel, [(quiet,)], fisher=False).activation[group]
    both = measure_importance(imodel, [(quiet,)], activation_batches=[(loud,)], activation_seconds=60.0,
                              loss=Distillation("mse"), reference=full_outputs(imodel, [(quiet,)])).activation[group]
    assert float(first[0]) == 0.0
    rms = float(loud[:, 0].mul(2).pow(2).sum().div(16).sqrt())  # over both batches' 16 rows
    assert float(both[0]) == pytest.approx(rms * float(net[2].weight[:, 0].detach().abs().sum()), rel=1e-5)
