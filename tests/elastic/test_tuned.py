"""Deployed sizes of kind ``"scales-refit"`` with ``tune_share`` > 0 (:func:`torchinn.make_elastic`):
after the per-size refit, the rest of the budget trains each size's scales, bias corrections and
refit weight offsets by distillation, the shared weights frozen. The offsets change and the
held-out error falls, the full size stays exact, the ``.inn`` round trip keeps the tuned state,
and bad arguments are named."""

from __future__ import annotations

import pytest
import torch

import torchinn as inn
from small_nets import rel_error, small_data, small_net


def _make(steps: int, tune_share: float):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, data = small_net(), small_data()
        elastic, report = inn.make_elastic(net, data[0], data, steps=steps, deploy=[0.25, 0.5],
                                           deploy_kind="scales-refit", ranking="activation", tune_share=tune_share)
    finally:
        torch.set_num_threads(threads)
    return net, elastic, report


@pytest.fixture(scope="module")
def tuned():
    return _make(40, 0.5)


@pytest.fixture(scope="module")
def refit_only():
    # the same first 20 steps (seed, order and checks alike), then the refit and nothing after it
    return _make(20, 0.0)


def test_the_offsets_train_and_the_held_out_error_falls(tuned, refit_only):
    net, elastic, report = tuned
    _, plain, plain_report = refit_only
    assert report.steps == 40 and plain_report.steps == 20 and "tuned after it: error" in str(report)
    unseen = torch.cat(small_data(4, seed=7))
    for t, d in elastic.deployed.items():
        r, p = report.refit[t], plain_report.refit[t]
        # the same state before the refit, and the same refit
        assert r["error_before"] == pytest.approx(p["error_before"], rel=1e-6)
        assert r["error_after"] == pytest.approx(p["error_after"], rel=1e-6) and r["kept"]
        assert sorted(d.biases) == sorted(plain.deployed[t].biases) == ["2.bias", "2.weight", "4.bias", "4.weight"]
        # measured: 25%: 0.1765 -> 0.1661; 50%: 0.0756 -> 0.0719 (held-out relative squared error)
        assert r["error_tuned"] < 0.97 * r["error_after"], r
        assert report.deployed[t][2] == pytest.approx(r["error_tuned"], rel=1e-6)
        for name in ("2.weight", "4.weight"):  # the refit weights moved from their least-squares values
            moved = float((d.biases[name] - plain.deployed[t].biases[name]).detach().abs().max())
            assert moved > 1e-4, (t, name, moved)
        elastic.resize(target=t)
        plain.resize(target=t)
        assert rel_error(elastic, net, unseen) < rel_error(plain, net, unseen)
        plain.resize(1.0)
    elastic.resize(1.0)


def test_the_full_size_stays_exact(tuned):
    net, elastic, report = tuned
    elastic.resize(1.0)
    assert len(elastic.imodel.offsets) == 0 and report.full_error_after == 0.0
    assert rel_error(elastic, net, torch.cat(small_data(4, seed=7))) < 1e-10
    full, reference = elastic.to_discrete(), inn.convert(net, small_data(1)[0]).to_discrete()
    for name, p in reference.named_parameters():
        assert torch.equal(full.get_parameter(name), p), name


def test_save_and_load_give_the_tuned_outputs(tmp_path, tuned):
    _, elastic, _ = tuned
    x = small_data(1, seed=5)[0]
    inn.save(elastic, tmp_path / "e.inn")
    again = inn.load(tmp_path / "e.inn")
    try:
        with torch.no_grad():
            for t in (0.25, 0.5):
                elastic.resize(target=t)
                again.resize(target=t)
                assert torch.equal(again(x), elastic(x))
                assert torch.equal(again.to_discrete(graph=True)(x), elastic.to_discrete(graph=True)(x))
            again.resize(1.0)
            elastic.resize(1.0)
            assert torch.equal(again(x), elastic(x))
    finally:
        elastic.resize(1.0)


@pytest.mark.parametrize("kw, message", [
    ({"tune_share": 1.0, "deploy_kind": "scales-refit"},
     r"^tune_share \(the share of the budget after the refit\) must be in \[0, 1\), got 1\.0$"),
    ({"tune_share": -0.1, "deploy_kind": "scales-refit"},
     r"^tune_share \(the share of the budget after the refit\) must be in \[0, 1\), got -0\.1$"),
    ({"tune_share": 0.5, "deploy_kind": "scales"},
     r"^tune_share > 0 trains the refit weights of deployed sizes: it needs deploy=\[\.\.\.\] and "
     r"deploy_kind='scales-refit', got deploy=\[0\.5\], deploy_kind='scales'$"),
    ({"offset_lr": -1.0, "deploy_kind": "scales-refit"}, r"^offset_lr must be >= 0, got -1\.0$"),
])
def test_bad_arguments_are_named(kw, message):
    net, data = small_net(), small_data()
    with pytest.raises(ValueError, match=message):
        inn.make_elastic(net, data[0], data, steps=1, deploy=[0.5], **kw)
