"""Starting partitions: the integral family contains channel selection, and the choice among
starts is never worse than any of them on the calibration data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.compression.baselines import prune
from torchinn.compression.budget import choose_sizes, compare_sizes
from torchinn.compression.pipeline import compress
from torchinn.compression.starts import (STARTS, StartChoice, activation_importance, best_start, distill_error, full_outputs,
                             refine_start, start_partition)
from torchinn_demo.zoo import ZOO


pytestmark = pytest.mark.usefixtures("single_thread")


def converted(name: str, permute: bool = True) -> tuple[nn.Module, tuple, inn.IntegralModel]:
    torch.manual_seed(0)
    model, inputs = ZOO[name]()
    return model, inputs, inn.convert(model, inputs, inn.ConvertConfig(permute=permute, tsp_time_limit=0.2))


def calibration(inputs: tuple, n: int, seed: int) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *inputs[0].shape[1:], generator=g),) for _ in range(n)]


@pytest.mark.parametrize("name", ["resnet_basic", "mlp", "mobilenet_v2", "densenet", "vit_timm"])
def test_l1_start_is_l1_pruning(name):
    model, inputs, imodel = converted(name)
    imodel.resize(0.5)
    sizes = imodel.sizes()
    pruned = prune(imodel, sizes, "l1")
    from torchinn.compression.importance import channel_importance

    scores = channel_importance(imodel)
    for n, p in imodel.partition_map().items():
        imodel.set_partition(n, start_partition(p, sizes[n], "l1", scores[n]))
    imodel.eval()
    with torch.no_grad():
        got, want = imodel(*inputs), pruned(*inputs)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), float((got - want).abs().max())
    # and the same network comes out of to_discrete()
    with torch.no_grad():
        assert torch.allclose(imodel.to_discrete()(*inputs), want, rtol=1e-4, atol=1e-5)


def at_40_percent(name: str) -> tuple[inn.IntegralModel, list[tuple], list]:
    """``name`` converted and resized to 40%, two calibration batches and the full network's outputs."""
    _, inputs, imodel = converted(name)
    imodel.resize(0.4)
    cal = calibration(inputs, 2, seed=1)
    return imodel, cal, full_outputs(imodel, cal)


@pytest.mark.parametrize("name", ["resnet_basic", "mlp"])
def test_best_start_is_never_worse_than_each_start(name):
    imodel, cal, ref = at_40_percent(name)
    choice = best_start(imodel, cal, reference=ref)
    assert set(choice.errors) == set(STARTS)
    assert choice.error <= min(choice.errors.values()) * (1 + 1e-9)
    assert distill_error(imodel, cal, ref) == pytest.approx(choice.error, rel=1e-6)  # imodel keeps the choice
    assert set(choice.kinds.values()) <= set(STARTS)


@pytest.mark.parametrize("name", ["resnet_basic", "mlp"])
def test_refining_later_is_refining_at_once(name):
    # best_start(per_group=False) then refine_start chooses what best_start(per_group=True) does
    # (on the ResNet that changes 3 groups, so a refinement that did nothing would fail here)
    imodel, cal, ref = at_40_percent(name)
    first = best_start(imodel, cal, reference=ref, per_group=False)
    assert first.changed_groups == 0 and set(first.kinds.values()) == {min(first.errors, key=first.errors.get)}
    assert distill_error(imodel, cal, ref) == pytest.approx(first.error, rel=1e-6)
    later = refine_start(imodel, cal, first, reference=ref)
    at_once = best_start(imodel, cal, reference=ref)
    assert later.kinds == at_once.kinds and later.error == pytest.approx(at_once.error, rel=1e-6)
    assert later.error <= first.error and distill_error(imodel, cal, ref) == pytest.approx(at_once.error, rel=1e-6)


def test_refine_start_needs_the_candidates():
    imodel, cal, ref = at_40_percent("mlp")
    bare = StartChoice(kinds={n: "uniform" for n in imodel.groups}, error=1.0, errors={"uniform": 1.0})
    with pytest.raises(ValueError, match="refine_start needs a StartChoice from best_start"):
        refine_start(imodel, cal, bare, reference=ref)


def test_activation_importance_weighs_channels_by_what_they_carry():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0, -1.0, 0.5]))  # constant activations
        net[2].weight.fill_(1.0)
    x = torch.randn(16, 4)
    imodel = inn.convert(net, (x,), inn.ConvertConfig(permute=False))
    scores = activation_importance(imodel, [(x,)])
    (group,) = scores
    # relu(bias) is each channel's activation; the reading weights' column L1 norm is 2
    assert torch.allclose(scores[group], torch.tensor([0.0, 1.0, 2.0, 3.0, 0.0, 0.5], dtype=torch.float64) * 2)


def test_compare_sizes_leaves_the_model_alone():
    _, inputs, imodel = converted("resnet_basic")
    before = imodel.sizes()
    cal = calibration(inputs, 2, seed=2)
    options = {m: choose_sizes(imodel, 0.5, calibration=cal, method=m) for m in ("sensitivity", "uniform")}
    winner, table = compare_sizes(imodel, options, cal)
    assert imodel.sizes() == before and set(table) == {"sensitivity", "uniform"}
    assert table[winner] == min(table.values())


def confident(model: nn.Module, last: nn.Module, factor: float = 20.0) -> nn.Module:
    """``model`` with its ``last`` layer scaled: the same predictions with a decided softmax, as a
    trained classifier gives (random weights give a nearly uniform one, which "auto" compares by
    squared error)."""
    with torch.no_grad():
        for p in last.parameters():
            p.mul_(factor)
    return model


def test_compress_without_tuning_is_at_least_l1_on_the_calibration_data():
    torch.manual_seed(0)
    model, inputs = ZOO["resnet_basic"]()
    confident(model, model.fc)
    cal = calibration(inputs, 3, seed=3)
    config = inn.ConvertConfig(tsp_time_limit=0.2)
    small, report = compress(model, inputs, 0.5, calibration=cal, tune=False, config=config)
    imodel = inn.convert(model, inputs, config)
    sizes = {n: a for n, (_, a) in report.sizes.items()}
    cal = cal[:-1]  # the choices are made on the training batches (the last is held out)
    with torch.no_grad():
        ref = [model(*b) for b in cal]
    l1 = prune(imodel, sizes, "l1").eval()
    uniform = choose_sizes(imodel, 0.5, calibration=cal, method="uniform")
    l1_uniform = prune(imodel, uniform, "l1").eval()
    assert report.loss == "kl"  # class logits
    ours = distill_error(small, cal, ref, "kl")
    assert ours == pytest.approx(report.error_after_tuning, rel=1e-5)
    # (the integral model and the pruned graph module round differently: a KL near its optimum
    # moves by more than 1e-6 relative with float32 outputs; a worse start is far above 1e-4)
    assert ours <= distill_error(l1, cal, ref, "kl") * (1 + 1e-4)
    assert ours <= distill_error(l1_uniform, cal, ref, "kl") * (1 + 1e-4)
    assert report.sizes_method in ("sensitivity", "fisher", "uniform") and report.stages == {}
    assert "starts:" in str(report)


def test_compress_reports_its_stages():
    torch.manual_seed(0)
    model, inputs = ZOO["mlp"]()
    g = torch.Generator().manual_seed(4)
    cal = [(torch.randn(16, 32, generator=g),) for _ in range(5)]
    before = copy.deepcopy(model.state_dict())
    small, report = compress(model, inputs, 0.5, calibration=cal, config=inn.ConvertConfig(permute=False),
                             tune=inn.TuneConfig(steps=20, seconds=None, progress=False, weights_share=0.5),
                             reconstruct=False)
    assert report.tuning == {"steps": 20, "grid": 10, "weights": 10}
    for stage in ("grid", "weights"):
        st = report.stages[stage]
        assert st["best_error"] <= st["start_error"]
    assert report.error_after_tuning <= report.error_before_tuning * (1 + 1e-4)  # two forward paths
    text = str(report)
    assert "grid tuning: 10 steps" in text and "weights tuning: 10 steps" in text
    assert "relative output error on the choice batches: " in text  # no reconstruction start: nothing fitted on them
    after = model.state_dict()  # the user's model is left alone
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compress_starts_from_the_reconstruction_when_it_wins_on_held_out_data():
    torch.manual_seed(0)
    model, inputs = ZOO["mlp"]()
    g = torch.Generator().manual_seed(5)
    cal = [(torch.randn(64, 32, generator=g),) for _ in range(5)]
    tune = inn.TuneConfig(steps=6, seconds=None, progress=False, loss="kl", temperature=1.0)
    small, report = compress(model, inputs, 0.5, calibration=cal, config=inn.ConvertConfig(permute=False), tune=tune)
    held = report.reconstruct_errors
    assert held["reconstruct"] < held["partitions"]  # measured: 0.00062 < 0.00066 (KL, held-out batch)
    assert set(report.starts.values()) == {"reconstruct"}
    assert report.tuning == {"steps": 6, "weights": 6}  # no grid to tune: the budget goes to the weights
    assert "held out: partitions" in str(report)
    # its error before tuning is on batches it was fitted on, and the report says so
    assert "kl distillation loss on the choice batches (the reconstruction was fitted on them): " in str(report)
    _, report = compress(model, inputs, 0.5, calibration=cal, config=inn.ConvertConfig(permute=False), tune=tune,
                         reconstruct=False)
    assert not {"partitions", "reconstruct"} & set(report.reconstruct_errors) and "reconstruct" not in report.starts.values()


def test_choose_sizes_reads_a_one_shot_calibration_iterator_once():
    _, inputs, imodel = converted("mlp", permute=False)
    cal = calibration(inputs, 2, seed=8)  # read twice, two batches would run out ("loader is empty")
    from_list = choose_sizes(imodel, 0.5, calibration=cal)
    assert choose_sizes(imodel, 0.5, calibration=iter(cal)) == from_list


def test_compress_screens_the_reconstruction_on_the_choice_batches(monkeypatch):
    # with many calibration batches the refit is first fitted on the few choice batches; it is
    # refit on all of them only when that screened fit is not clearly behind the partitions
    import torchinn.compression.refit_candidate as refit_candidate
    import torchinn.compression.pipeline as compression

    torch.manual_seed(0)
    model, inputs = ZOO["mlp"]()
    g = torch.Generator().manual_seed(5)
    cal = [(torch.randn(16, 32, generator=g),) for _ in range(3 * compression.SELECT_BATCHES)]
    args = dict(calibration=cal, config=inn.ConvertConfig(permute=False), tune=False)
    _, report = compress(model, inputs, 0.5, **args)
    held = report.reconstruct_errors
    assert {"partitions", "reconstruct_screened", "reconstruct"} <= set(held)
    assert held["reconstruct_screened"] <= refit_candidate.SCREEN_MARGIN * held["partitions"]
    monkeypatch.setattr(refit_candidate, "SCREEN_MARGIN", 0.0)  # every screened fit is "clearly behind"
    _, report = compress(model, inputs, 0.5, **args)
    assert "reconstruct" not in report.reconstruct_errors and "reconstruct_screened" in report.reconstruct_errors
    assert "reconstruct" not in report.starts.values()


def test_compress_refines_the_starts_only_when_the_reconstruction_is_not_far_ahead(monkeypatch):
    # trying the starts group by group costs seconds a large network's tuning needs: skipped when
    # the reconstruction's held-out error is below the partitions' / REFINE_GAIN
    import torchinn.compression.choices as choices
    import torchinn.compression.pipeline as compression

    torch.manual_seed(0)
    model, inputs = ZOO["mlp"]()
    g = torch.Generator().manual_seed(5)
    cal = [(torch.randn(64, 32, generator=g),) for _ in range(5)]
    # KL at temperature 1, as measured (without tuning "auto" takes these random logits for scores)
    monkeypatch.setattr(compression, "resolve_loss", lambda *_: inn.training.distill.Distillation("kl", 1.0))
    args = dict(calibration=cal, config=inn.ConvertConfig(permute=False), tune=False)
    _, report = compress(model, inputs, 0.5, **args)
    held = report.reconstruct_errors
    assert held["reconstruct"] < held["partitions"] < choices.REFINE_GAIN * held["reconstruct"]  # close: refined
    assert "refine_start" in report.seconds
    monkeypatch.setattr(choices, "REFINE_GAIN", 1.0)  # ahead by more than the gain: not refined
    _, report = compress(model, inputs, 0.5, **args)
    assert "refine_start" not in report.seconds and set(report.starts.values()) == {"reconstruct"}
    _, report = compress(model, inputs, 0.5, reconstruct=False, **args)  # no candidate: refined
    assert "refine_start" in report.seconds
