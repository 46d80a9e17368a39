"""The budgeted loop on a fake clock: it ends within its seconds, not a step and a check after."""

from __future__ import annotations

import types

import pytest
import torch

from torchinn.training import loop


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


def _run(clock, step_s, check_s, seconds, validate=True, eval_every=100):
    w = torch.nn.Parameter(torch.ones(3))

    def step_loss(batch):
        clock.now += step_s
        return (w * batch).square().sum()

    def check():
        clock.now += check_s
        return float(w.detach().square().sum())

    config = loop.LoopConfig(steps=None, seconds=seconds, eval_every=eval_every)
    report = loop.run([w], torch.optim.SGD([w], lr=1e-3), loop.Batches([torch.ones(3)]), step_loss,
                      check if validate else None, config)
    return report


def test_ends_within_its_seconds(clock):
    # steps of 1 s and checks of 0.5 s from t = 0: the first check ends at 0.5, the early check
    # (step 3) adds 0.5; step 9 would start at 9.0 and need 1.0 + the final check's 0.5 > 10
    report = _run(clock, 1.0, 0.5, 10.0)
    assert report["stopped"] == "seconds"
    assert report["steps"] == 8
    assert clock.now == pytest.approx(9.5)  # eight steps, three checks
    assert report["seconds"] <= 10.0


@pytest.mark.parametrize("step_s,check_s,seconds", [(0.3, 0.0, 5.0), (0.7, 0.2, 5.0), (2.0, 1.0, 30.0),
                                                    (0.1, 0.9, 3.0)])
def test_never_over_when_steps_take_the_same_time(clock, step_s, check_s, seconds):
    report = _run(clock, step_s, check_s, seconds, eval_every=4)
    assert report["seconds"] <= seconds + 1e-9
    # and it did not stop with a whole step and check still to spare
    assert report["seconds"] + step_s + 2 * check_s > seconds


def test_first_step_always_runs(clock):
    # no estimate before the first step: a step longer than the budget still runs once
    report = _run(clock, 5.0, 0.0, 1.0, validate=False)
    assert report["steps"] == 1


def test_stops_when_the_learning_rate_is_float_noise(clock):
    # a validation error never below the start's: the rates are halved at every check (steps 3,
    # 10, 20, ... 190); after the 20th halving (lr 1e-3 * 2**-20) the loop stops instead of running
    # out its 1000 s of one-second steps
    w = torch.nn.Parameter(torch.ones(3))

    def step_loss(batch):
        clock.now += 1.0
        return (w * batch).square().sum()

    optimizer = torch.optim.SGD([w], lr=1e-3)
    config = loop.LoopConfig(steps=None, seconds=1000.0, eval_every=10)
    report = loop.run([w], optimizer, loop.Batches([torch.ones(3)]), step_loss, lambda: 1.0, config)
    assert report["stopped"] == "learning rate"
    assert report["lr_reductions"] == loop.MAX_REDUCTIONS == 20
    assert report["steps"] == 190 and report["seconds"] == pytest.approx(190.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 2**-20)
    assert torch.equal(w.detach(), torch.ones(3))  # the start, restored
