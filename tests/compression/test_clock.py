"""The clock compress's own bound is counted on: the time the call ran, not the time it waited
for a CPU (torchinn.compression.clock)."""

from __future__ import annotations

import os
import re
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


class FakeThreads:
    """The process's threads as the kernel would report them: tid -> [CPU seconds, waiting seconds]."""

    def __init__(self, monkeypatch, n: int = 1) -> None:
        self.stats = {str(100 + i): [0.0, 0.0] for i in range(n)}
        monkeypatch.setattr(clock, "_threads", lambda: {t: tuple(v) for t, v in self.stats.items()})

    def add(self, tid: int, ran: float, waited: float) -> None:
        self.stats[str(100 + tid)][0] += ran
        self.stats[str(100 + tid)][1] += waited


def test_schedstat_is_cpu_and_run_queue_seconds(tmp_path):
    f = tmp_path / "schedstat"
    f.write_text("9876000000 4500000000 7\n")
    assert clock._schedstat(str(f)) == pytest.approx((9.876, 4.5))
    f.write_text("garbage\n")
    assert clock._schedstat(str(f)) is None
    assert clock._schedstat(str(tmp_path / "missing")) is None


def test_threads_reads_every_readable_thread_of_the_task_directory(tmp_path, monkeypatch):
    for tid, text in (("11", "2000000000 1000000000 3\n"), ("12", "oops\n")):
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "schedstat").write_text(text)
    monkeypatch.setattr(clock, "TASKS", str(tmp_path))
    assert clock._threads() == {"11": pytest.approx((2.0, 1.0))}
    monkeypatch.setattr(clock, "TASKS", str(tmp_path / "missing"))
    assert clock._threads() is None


@pytest.mark.skipif(not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat"),
                    reason="the kernel gives no per-thread schedstat here")
def test_this_kernel_reports_the_calling_thread(monkeypatch):
    monkeypatch.setattr(clock, "TASKS", "/proc/self/task")
    stats = clock._threads()
    cpu, wait = stats[str(threading.get_native_id())]
    assert cpu > 0.0 and wait >= 0.0


def test_now_runs_at_the_pace_of_the_slowest_busy_thread_inside_run_time_only(monkeypatch):
    threads, fake = FakeThreads(monkeypatch, 2), FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    with clock.run_time():
        t0 = clock.now()
        fake.now += 10.0  # a parallel region: the calling thread spins, the worker waits 7.5 s of 10
        threads.add(0, 10.0, 0.0)
        threads.add(1, 2.5, 7.5)
        assert clock.now() - t0 == pytest.approx(2.5, abs=0.01)
        t1 = clock.now()
        fake.now += 4.0  # serial work: the worker sleeps, the calling thread waits half the time
        threads.add(0, 2.0, 2.0)
        assert clock.now() - t1 == pytest.approx(2.0, abs=0.01)
        assert clock.waited() == pytest.approx(9.5, abs=0.05)
        t2 = clock.now()
        fake.now += 3.0  # no thread busy: sleeping, or waiting for a GPU, counts
        assert clock.now() - t2 == pytest.approx(3.0, abs=0.01)
        with clock.run_time(leave_out=False):  # a time budget: wall time, the waits still read
            t3 = clock.now()
            fake.now += 1.0
            threads.add(0, 0.5, 0.5)
            assert clock.now() - t3 == pytest.approx(1.0, abs=0.01)
            assert clock.waited() == pytest.approx(0.5, abs=0.01)  # since this block began
    t4 = clock.now()
    fake.now += 1.0
    threads.add(0, 0.0, 1.0)
    assert clock.now() - t4 == pytest.approx(1.0, abs=0.01) and clock.waited() == 0.0


def test_readings_closer_than_the_sample_run_on_at_the_last_pace(monkeypatch):
    threads, fake, reads = FakeThreads(monkeypatch), FakeClock(), []
    inner = clock._threads
    monkeypatch.setattr(clock, "_threads", lambda: reads.append(1) or inner())
    monkeypatch.setattr(time, "perf_counter", fake)
    with clock.run_time():
        fake.now += 1.0
        threads.add(0, 0.5, 0.5)
        t0 = clock.now()
        n = len(reads)
        fake.now += clock.SAMPLE_SECONDS / 2
        assert clock.now() - t0 == pytest.approx(0.5 * (clock.SAMPLE_SECONDS / 2 + 0.001), rel=0.01)
        assert len(reads) == n  # not read again


def test_run_time_is_wall_time_where_the_kernel_does_not_say(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    with clock.run_time():  # the conftest points TASKS at a directory that does not exist
        t0 = clock.now()
        fake.now += 3.0
        assert clock.now() - t0 == pytest.approx(3.0, abs=0.01) and clock.waited() == 0.0


def _slow_call(monkeypatch, tune, load: float, threads: FakeThreads | None = None):
    """compress on a fake clock where each measurement of starts runs 0.8 s of CPU and the machine
    lets the call run ``1 / load`` of the time: with ``threads`` of one thread it waits the rest;
    of two, the calling thread spins while the second waits. The measurements made, the report."""
    fake, calls = FakeClock(), []

    def slow_best_start(*args, **kwargs):
        calls.append(1)
        fake.now += 0.8 * load
        if threads is not None and len(threads.stats) == 1:
            threads.add(0, 0.8, 0.8 * (load - 1.0))
        elif threads is not None:
            threads.add(0, 0.8 * load, 0.0)
            threads.add(1, 0.8, 0.8 * (load - 1.0))
        return _BEST_START(*args, **kwargs)

    monkeypatch.setattr(choices, "best_start", slow_best_start)
    monkeypatch.setattr(time, "perf_counter", fake)
    torch.manual_seed(0)
    model, inputs = ZOO["mlp"]()
    g = torch.Generator().manual_seed(7)
    cal = [(torch.randn(16, 32, generator=g),) for _ in range(6)]
    return calls, inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=tune)[1]


def _words(skipped: list[str]) -> list[str]:
    return [re.sub(r"[0-9.e+-]+", "#", s) for s in skipped]


@pytest.mark.parametrize("n_threads", [1, 2])
def test_without_a_time_budget_a_loaded_machine_makes_the_same_choices_and_takes_longer(monkeypatch, n_threads):
    monkeypatch.setattr(compression, "NO_TUNE_SECONDS", 2.0)
    monkeypatch.setattr(compression, "NO_TUNE_PASSES", 1)  # the bound is 2 s, not 40 passes
    quiet_calls, quiet = _slow_call(monkeypatch, False, 1.0)
    assert len(quiet_calls) == 2, quiet.skipped  # 2 s hold two measurements of 0.8 s, not the third
    loaded_calls, loaded = _slow_call(monkeypatch, False, 3.0, FakeThreads(monkeypatch, n_threads))
    assert len(loaded_calls) == len(quiet_calls), loaded.skipped
    # the same skips (the seconds left they name move by a sample's pace)
    assert loaded.sizes == quiet.sizes and _words(loaded.skipped) == _words(quiet.skipped), loaded.skipped
    assert loaded.seconds["waited"] == pytest.approx(1.6 * len(loaded_calls), rel=0.05)
    assert loaded.seconds["after_convert"] > 2.0 * quiet.seconds["after_convert"], loaded.seconds
    assert "waited" not in quiet.seconds and loaded.clock == "run"
    assert "s of a 2.0 s bound (3.2 s of it waiting for a CPU, not counted" in str(loaded), str(loaded)


def test_a_time_budget_is_wall_time_on_a_loaded_machine_and_the_waits_are_reported(monkeypatch, caplog):
    # the user's seconds are the user's: the waits count, and leave no time for tuning here
    tune = TuneConfig(seconds=2.0, progress=False)
    quiet_calls, quiet = _slow_call(monkeypatch, tune, 1.0)
    assert "waited" not in quiet.seconds  # the conftest's task directory does not exist: no waits known
    caplog.set_level("WARNING", logger="torchinn.compression.pipeline")
    loaded_calls, loaded = _slow_call(monkeypatch, tune, 3.0, FakeThreads(monkeypatch))
    assert loaded.seconds["choose_start"] == pytest.approx(0.8 * 3.0, abs=0.1)  # its waits counted
    assert loaded.tuning["steps"] == 0 < quiet.tuning["steps"], (quiet.tuning, loaded.seconds)
    assert loaded.seconds["waited"] == pytest.approx(1.6, abs=0.05) and loaded.clock == "wall"
    assert "of it waiting for a CPU, counted: a time budget is wall time" in str(loaded), str(loaded)
    assert loaded.seconds["after_convert"] <= 2.0 * 1.05 + 0.8 * 3.0, loaded.seconds
    warned = [r.getMessage() for r in caplog.records if "for a CPU" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("compress waited 1.6 s of its 2.4 s for a CPU"), warned


def test_without_a_time_budget_a_busy_machine_with_several_threads_is_warned_about(monkeypatch, caplog):
    # threads that spin at a barrier count as running: the clock cannot see that work, so say so
    monkeypatch.setattr(compression, "NO_TUNE_SECONDS", 2.0)
    monkeypatch.setattr(compression, "NO_TUNE_PASSES", 1)
    caplog.set_level("WARNING", logger="torchinn.compression.pipeline")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    _slow_call(monkeypatch, False, 3.0, FakeThreads(monkeypatch, 2))
    warned = [r.getMessage() for r in caplog.records if "intra-op threads" in r.getMessage()]
    assert len(warned) == 1 and "torch.set_num_threads(1)" in warned[0], warned
    caplog.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    _slow_call(monkeypatch, False, 3.0, FakeThreads(monkeypatch, 1))
    assert not [r for r in caplog.records if "for a CPU" in r.getMessage()]  # one thread: the bound saw it all
