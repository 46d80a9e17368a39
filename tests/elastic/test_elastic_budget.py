"""The budget of :func:`torchinn.make_elastic` holds (:mod:`torchinn.elastic.budget`): on a fake
clock, a slow per-size refit is shortened (fewer batches) or skipped, the tuning after it keeps its
share, and the call ends within ``seconds`` x 1.05 after the conversion."""

from __future__ import annotations

import time

import pytest
import torch

import torchinn as inn
import torchinn.elastic.refit as refit_module
import torchinn.elastic.train as train_module
from small_nets import small_data, small_net
from conftest import FakeClock as _Clock

SECONDS = 20.0
STEP = 0.05  # fake seconds a training step costs


def _run(monkeypatch, per_batch: float, **kwargs):
    """make_elastic with scales-refit and tuning, each training step costing STEP and each refit
    ``per_batch`` fake seconds per calibration batch it fits on."""
    clock, fits = _Clock(), []
    real_step, real_refit = train_module.sandwich_backward, refit_module.refit_consumers

    def step(*args, **kw):
        clock.now += STEP
        return real_step(*args, **kw)

    def slow_refit(full, pruned, calibration, kept, **kw):
        fits.append(len(calibration))
        clock.now += per_batch * len(calibration)
        return real_refit(full, pruned, calibration, kept, **kw)

    monkeypatch.setattr(train_module, "sandwich_backward", step)
    monkeypatch.setattr(refit_module, "refit_consumers", slow_refit)
    monkeypatch.setattr(time, "perf_counter", clock)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, data = small_net(), small_data()
        _, report = inn.make_elastic(net, data[0], data, seconds=SECONDS, deploy=[0.25, 0.5],
                                     deploy_kind="scales-refit", ranking="activation", **kwargs)
    finally:
        torch.set_num_threads(threads)
    return report, fits


def test_a_slow_refit_is_shortened_and_the_call_ends_within_its_budget(monkeypatch):
    # 0.6 s a batch: the two refits on all 8 training batches would take 9.6 s, where the budget
    # leaves them half of the 10 s after the shared training (refit_share 0.5)
    report, fits = _run(monkeypatch, 0.6, tune_share=0.5, refit_share=0.5)
    after_convert = report.seconds - report.stages["convert"]
    assert after_convert <= SECONDS * 1.05, report.stages
    assert set(report.stages) == {"convert", "setup", "train", "refit", "tune", "final"}
    # the pilot on one batch, then each size on the batches its share holds: 0.25 on 3 of 8 (2.5 s
    # for it, the pilot's 0.6 s in it), 0.5 on 4 of 8 (what is left)
    assert fits == [1, 3, 4], fits
    assert report.stages["refit"] <= 0.5 * (SECONDS - report.stages["setup"] - report.stages["train"]) + 0.2
    assert all(r["short"] and r["batches"] == n for (t, r), n in zip(sorted(report.refit.items()), fits[1:]))
    assert any(s.startswith("refit at 25%: on 3 of 8 batches") for s in report.skipped), report.skipped
    # the tuning kept its share: at least half of what the refits found left
    assert report.stages["tune"] >= 0.45 * (SECONDS - report.stages["setup"] - report.stages["train"]), report.stages
    assert "skipped: refit at 25%" in str(report) and "time: convert" in str(report)


def test_a_refit_slower_than_the_whole_budget_is_skipped(monkeypatch):
    # 30 s a batch: the pilot alone takes the refits' share; no size is refit, the call still holds
    report, fits = _run(monkeypatch, 30.0, tune_share=0.5, refit_share=0.5)
    assert fits == [1]
    assert all(not r["kept"] and r["batches"] == 0 and r["why"].startswith("no time") for r in report.refit.values())
    # the pilot is the one piece of work not bounded before it starts: it overruns by its 30 s
    assert report.seconds - report.stages["convert"] <= SECONDS * 1.05 + 30.0, report.stages


def test_without_tuning_the_refits_take_what_the_training_left(monkeypatch):
    report, fits = _run(monkeypatch, 0.6)
    assert report.seconds - report.stages["convert"] <= SECONDS * 1.05, report.stages
    assert "tune" not in report.stages and fits[0] == 1
    # the shared training took 0.6 of the budget (1 - REFIT_ALONE), the refits the rest
    assert report.stages["train"] == pytest.approx(0.6 * (SECONDS - report.stages["setup"]), abs=0.6)


def test_refit_share_is_checked():
    net, data = small_net(), small_data(3)
    with pytest.raises(ValueError, match=r"refit_share .* must be in \(0, 1\], got 0"):
        inn.make_elastic(net, data[0], data, steps=1, deploy=[0.5], deploy_kind="scales-refit", refit_share=0)


def test_by_default_the_refits_may_take_nine_tenths_of_what_the_training_left(monkeypatch):
    # 0.6 s a batch: the pilot, then 0.25 on 7 of 8 batches (its share of 9 s: 4.5 s, less the pilot's
    # 0.6 s), 0.5 on all 8 (4.8 s of the 4.5 s + what was left)
    report, fits = _run(monkeypatch, 0.6, tune_share=0.5)
    assert report.seconds - report.stages["convert"] <= SECONDS * 1.05, report.stages
    assert fits[0] == 1 and fits[1] > 3, fits
    assert report.stages["refit"] <= 0.9 * (SECONDS - report.stages["setup"] - report.stages["train"]) + 0.2
