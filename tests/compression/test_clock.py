"""The clock compress's own bound is counted on: the time the call ran, not the time it waited
for a CPU (torchinn.compression.clock)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

import torchinn as inn
from torchinn.compression import choices, clock
from torchinn.compression import pipeline as compression
from torchinn.training.train import TuneConfig
from torchinn_demo.zoo import ZOO
from conftest import FakeClock

FAST = inn.ConvertConfig(permute=False)
_BEST_START = choices.best_start


def _schedstat(tmp_path, monkeypatch, waited: list[float]):
    """A schedstat file of the calling thread whose run_delay is ``waited[0]`` seconds."""
    path = tmp_path / "schedstat"

    def write() -> None:
        path.write_text(f"123456 {int(round(waited[0] * 1e9))} 42\n")
    write()
    monkeypatch.setattr(clock, "SCHEDSTAT", str(path))
    real = clock._run_delay

    def run_delay(p: str) -> float | None:
        write()
        return real(p)
    monkeypatch.setattr(clock, "_run_delay", run_delay)
    return path


def test_run_delay_is_the_second_field_in_seconds(tmp_path):
    f = tmp_path / "schedstat"
    f.write_text("9876 4500000000 7\n")
    assert clock._run_delay(str(f)) == pytest.approx(4.5)
    f.write_text("garbage\n")
    assert clock._run_delay(str(f)) is None
    assert clock._run_delay(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat"),
                    reason="the kernel gives no per-thread schedstat here")
def test_this_kernel_gives_a_run_delay_for_the_calling_thread():
    value = clock._run_delay(f"/proc/self/task/{threading.get_native_id()}/schedstat")
    assert value is not None and value >= 0.0


def test_now_leaves_out_the_waits_inside_run_time_only(tmp_path, monkeypatch):
    waited, fake = [0.0], FakeClock()
    _schedstat(tmp_path, monkeypatch, waited)
    monkeypatch.setattr(time, "perf_counter", fake)
    with clock.run_time():
        t0 = clock.now()
        fake.now += 10.0
        waited[0] = 7.5  # of those 10 s, 7.5 waiting for a CPU
        assert clock.now() - t0 == pytest.approx(2.5, abs=0.01)
        assert clock.waited() == pytest.approx(7.5)
        with clock.run_time(leave_out=False):  # a time budget: wall time, the waits still read
            t1 = clock.now()
            fake.now += 1.0
            waited[0] = 8.0
            assert clock.now() - t1 == pytest.approx(1.0, abs=0.01)
            assert clock.waited() == pytest.approx(0.5)  # since this block began
    assert clock.waited() == 0.0
    t2 = clock.now()
    fake.now += 1.0
    waited[0] = 100.0
    assert clock.now() - t2 == pytest.approx(1.0, abs=0.01)


def test_run_time_is_wall_time_where_the_kernel_does_not_say(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    with clock.run_time():  # the conftest points SCHEDSTAT at a file that does not exist
        t0 = clock.now()
        fake.now += 3.0
        assert clock.now() - t0 == pytest.approx(3.0, abs=0.01) and clock.waited() == 0.0


def test_the_report_says_how_long_the_call_waited_for_a_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "NO_TUNE_SECONDS", 2.0)
    monkeypatch.setattr(compression, "NO_TUNE_PASSES", 1)
    waited = [0.0]
    _schedstat(tmp_path, monkeypatch, waited)
    _, report = _slow_call(monkeypatch, False, 3.0, waited)
    assert "s of a 2.0 s bound (3.2 s of it waiting for a CPU, not counted" in str(report), str(report)
    assert report.clock == "run"


def _slow_call(monkeypatch, tune, load: float, waited: list[float]):
    """compress on a fake clock where each measurement of starts runs 0.8 s of CPU and the machine
    lets the call run ``1 / load`` of the time (the rest it waits for a CPU, added to ``waited``):
    the measurements made, the report."""
    fake, calls, slow = FakeClock(), [], _BEST_START

    def slow_best_start(*args, **kwargs):
        calls.append(1)
        fake.now += 0.8 * load
        waited[0] += 0.8 * (load - 1.0)
        return slow(*args, **kwargs)

    monkeypatch.setattr(choices, "best_start", slow_best_start)
    monkeypatch.setattr(time, "perf_counter", fake)
    torch.manual_seed(0)
    model, inputs = ZOO["mlp"]()
    g = torch.Generator().manual_seed(7)
    cal = [(torch.randn(16, 32, generator=g),) for _ in range(6)]
    return calls, inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=tune)[1]


def test_without_a_time_budget_a_loaded_machine_makes_the_same_choices_and_takes_longer(tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "NO_TUNE_SECONDS", 2.0)
    monkeypatch.setattr(compression, "NO_TUNE_PASSES", 1)  # the bound is 2 s, not 40 passes
    quiet_calls, quiet = _slow_call(monkeypatch, False, 1.0, [0.0])
    assert len(quiet_calls) == 2, quiet.skipped  # 2 s hold two measurements of 0.8 s, not the third
    waited = [0.0]
    _schedstat(tmp_path, monkeypatch, waited)
    loaded_calls, loaded = _slow_call(monkeypatch, False, 3.0, waited)  # a third of a CPU
    assert len(loaded_calls) == len(quiet_calls), loaded.skipped
    assert loaded.sizes == quiet.sizes and loaded.skipped == quiet.skipped
    assert loaded.seconds["waited"] == pytest.approx(1.6 * len(loaded_calls), rel=0.05)
    assert loaded.seconds["after_convert"] > 2.0 * quiet.seconds["after_convert"], loaded.seconds
    assert "waited" not in quiet.seconds


def test_a_time_budget_is_wall_time_on_a_loaded_machine_and_the_waits_are_reported(tmp_path, monkeypatch, caplog):
    # the user's seconds are the user's: the waits count, and leave no time for tuning here
    tune = TuneConfig(seconds=2.0, progress=False)
    quiet_calls, quiet = _slow_call(monkeypatch, tune, 1.0, [0.0])
    assert "waited" not in quiet.seconds  # the conftest's schedstat file does not exist: no waits known
    caplog.set_level("WARNING", logger="torchinn.compression.pipeline")
    waited = [0.0]
    _schedstat(tmp_path, monkeypatch, waited)
    loaded_calls, loaded = _slow_call(monkeypatch, tune, 3.0, waited)
    assert loaded.seconds["choose_start"] == pytest.approx(0.8 * 3.0, abs=0.1)  # its waits counted
    assert loaded.tuning["steps"] == 0 < quiet.tuning["steps"], (quiet.tuning, loaded.seconds)
    assert loaded.seconds["waited"] == pytest.approx(1.6) and loaded.clock == "wall"
    assert "of it waiting for a CPU, counted: a time budget is wall time" in str(loaded), str(loaded)
    assert loaded.seconds["after_convert"] <= 2.0 * 1.05 + 0.8 * 3.0, loaded.seconds
    warned = [r.getMessage() for r in caplog.records if "for a CPU" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("compress waited 1.6 s of its 2.4 s for a CPU"), warned
