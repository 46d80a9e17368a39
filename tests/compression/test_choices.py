"""compress's choices within a time bound (torchinn.compression.choices): the bound without tuning, the
reconstruction judged on batches it was never fitted on, and what the report says was skipped."""

from __future__ import annotations

import copy
import time

import pytest
import torch

import torchinn as inn
import torchinn.compression.baselines as baselines
from torchinn.compression import choices, refit_candidate
from torchinn.compression import pipeline as compression
from torchinn.training.train import TuneConfig
from torchinn_demo.zoo import ZOO
from conftest import FakeClock as _Clock

FAST = inn.ConvertConfig(permute=False)


def _mlp_and_batches(n: int, rows: int = 16):
    torch.manual_seed(0)
    model, inputs = ZOO["mlp"]()
    g = torch.Generator().manual_seed(7)
    return model, inputs, [(torch.randn(rows, 32, generator=g),) for _ in range(n)]


def _teacher_and_outputs(n: int):
    """An MLP converted without permutation, its full-size teacher, ``n`` batches of 8 rows as
    Inputs and the teacher's outputs on them."""
    from torchinn.model.inputs import Inputs, run

    model, inputs, cal = _mlp_and_batches(n, rows=8)
    imodel = inn.convert(model, inputs, FAST)
    teacher = imodel.to_discrete(graph=True).eval()
    batches = [Inputs(b) for b in cal]
    with torch.no_grad():
        reference = [run(teacher, b) for b in batches]
    return imodel, teacher, batches, reference


def test_the_reconstruction_is_fitted_on_training_batches_and_judged_on_the_others(monkeypatch):
    model, inputs, cal = _mlp_and_batches(10)
    fitted: list[list] = []
    original = baselines.reconstruct

    def recording(imodel, sizes, data, **kwargs):
        fitted.append([b[0] if isinstance(b, tuple) else b for b in data])
        return original(imodel, sizes, data, **kwargs)

    monkeypatch.setattr(baselines, "reconstruct", recording)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    held_out = [b[0] for b in cal[-2:]]  # holdout 0.2 of 10 batches
    assert fitted and "reconstruct" in report.reconstruct_errors
    for data in fitted:
        assert data and not any(x is h for x in data for h in held_out)
    assert len(fitted[-1]) == 8  # all the training batches


def test_one_calibration_batch_has_nothing_to_judge_a_reconstruction_on():
    model, inputs, cal = _mlp_and_batches(1)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    assert "reconstruct" not in report.starts.values() and report.reconstruct_errors == {}
    assert any("no held-out calibration batch" in s for s in report.skipped)
    assert "skipped: reconstruction (no held-out" in str(report)


def test_without_tuning_the_choices_hold_their_own_bound(monkeypatch):
    # on a fake clock every measurement of starts costs 0.8 s, as on a large network: the three size
    # options would take 2.5 s; with a 2 s bound the choices measure fewer, by the time the first took
    clock, calls, slow = _Clock(), [], choices.best_start

    def slow_best_start(*args, **kwargs):
        calls.append(1)
        clock.now += 0.8
        return slow(*args, **kwargs)

    monkeypatch.setattr(choices, "best_start", slow_best_start)
    monkeypatch.setattr(compression, "NO_TUNE_SECONDS", 2.0)
    monkeypatch.setattr(compression, "NO_TUNE_PASSES", 1)  # the bound is 2 s, not 40 passes
    monkeypatch.setattr(time, "perf_counter", clock)
    model, inputs, cal = _mlp_and_batches(6)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    assert report.bound == 2.0
    assert report.seconds["after_convert"] <= 2.0 * 1.05, report.seconds
    assert len(calls) == 2 and any(s.startswith("sizes ") and "0.8 s each" in s for s in report.skipped), report.skipped
    assert report.stages == {}


def test_a_slow_importance_pass_in_chunks_ends_within_its_share_and_the_call_within_its_bound(monkeypatch):
    # as SmolLM2 with 60 s on one core (22.3 s for the importance pass where its share was 11 s): on a
    # fake clock each chunk of one sample costs 5 s, a whole batch of 4 would take the whole 20 s bound;
    # the passes' guess (4 forward passes, ~0 s on this clock) let main run it all
    import torchinn.compression.backward as backward
    from torchinn_demo import lm

    model, _ = lm.load()
    ids = lm.windows(lm.tokens(lm.texts()[0]), 32)[:20]
    cal = [(ids[i:i + 4],) for i in range(0, 20, 4)]
    clock, chunks, real = _Clock(), [], backward._backward

    def slow(*args):
        chunks.append(1)
        clock.now += 5.0
        return real(*args)

    monkeypatch.setattr(backward, "BACKWARD_BYTES", 1)  # chunks of one sample, as a LM's batch
    monkeypatch.setattr(backward, "_backward", slow)
    monkeypatch.setattr(compression, "NO_TUNE_SECONDS", 20.0)
    monkeypatch.setattr(compression, "NO_TUNE_PASSES", 1)
    monkeypatch.setattr(time, "perf_counter", clock)
    _, report = inn.compress(model, cal[0], 0.5, calibration=cal, config=FAST, tune=False)
    assert report.bound == 20.0 and len(chunks) == 1  # the second would end past the share (6 s)
    assert 5.0 <= report.seconds["importance"] <= choices.IMPORTANCE_SHARE * 20.0, report.seconds
    assert any(s.startswith("importance on the first 1 of 4 samples of batch 1 only (5.0 s measured, 6.0 s allowed")
               for s in report.skipped), report.skipped
    assert "fisher" in report.start_errors  # the scores of one sample rank the channels
    assert report.seconds["after_convert"] <= 1.05 * 20.0, report.seconds


def test_a_tight_bound_skips_the_measured_sensitivities_and_says_so():
    model, inputs, cal = _mlp_and_batches(6)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST,
                             tune=TuneConfig(seconds=0.02, progress=False))  # sensitivities: ~0.05 s
    assert "sensitivity" not in report.sizes_errors
    assert any(s.startswith("measured sensitivities") for s in report.skipped)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST,
                             tune=TuneConfig(seconds=300, steps=2, progress=False))
    assert {"sensitivity", "fisher", "uniform"} <= set(report.sizes_errors)  # room for all three


def test_a_reconstruction_out_of_time_keeps_the_selected_weights_of_the_layers_it_did_not_start():
    model, inputs, cal = _mlp_and_batches(4)
    imodel = inn.convert(model, inputs, FAST)
    sizes = {n: g.max_size // 2 for n, g in imodel.groups.items()}
    late = baselines.reconstruct(imodel, sizes, cal, max_seconds=0.0).eval()
    report = late.refit_report
    l1 = inn.prune(imodel, sizes, "l1").eval()
    x = cal[0][0]
    assert report and all(r["skipped"].startswith("out of time") for r in report.values())
    assert torch.equal(late(x), l1(x))
    report = baselines.reconstruct(imodel, sizes, cal, max_seconds=60.0).refit_report
    assert report and not any("skipped" in r for r in report.values())


def test_a_refit_under_a_deadline_starts_no_layer_that_a_layer_of_its_shape_says_would_end_past_it(monkeypatch):
    # on a fake clock an o_proj's refit costs 1 s and a down_proj's 2 s (4x its features), 2.5 s allowed:
    # the first o_proj is refit (0-1 s); the first down_proj, a shape not refit yet, is guessed from the
    # o_proj's seconds per feature (4 s) and not started (main started it: 3 s, past the deadline); the
    # next o_proj is refit (1-2 s), the one after would end at 3 s by the last of its shape
    import torchinn.compression.refit as refit
    from torchinn_demo import lm

    model, _ = lm.load()
    ids = lm.windows(lm.tokens(lm.texts()[0]), 32)[:8]
    cal = [(ids[i:i + 4],) for i in range(0, 8, 4)]
    imodel = inn.convert(model, cal[0], FAST)
    sizes = {n: g.max_size // 2 for n, g in imodel.groups.items()}
    now, real = [0.0], refit._refit_layer

    def slow(layer, *args):
        now[0] += 2.0 if "down_proj" in layer.weight else 1.0
        return real(layer, *args)

    monkeypatch.setattr(refit, "_refit_layer", slow)
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    report = baselines.reconstruct(imodel, sizes, cal, max_seconds=2.5).refit_report
    done = [n for n, r in report.items() if "skipped" not in r]
    late = {n: r["skipped"] for n, r in report.items() if "skipped" in r}
    assert now[0] == 2.0 and len(done) == 2 and all("o_proj" in n for n in done), report
    first_down = next(n for n in late if "down_proj" in n)
    assert late[first_down] == "out of time (about 4.00 s, by the layers refit so far per feature: past the deadline)"
    assert any(why.startswith("out of time (a layer of this shape took 1.00 s: past the deadline)")
               for why in late.values())


def test_without_time_for_one_importance_batch_the_choices_need_no_data_and_hold_the_bound(monkeypatch):
    # a network whose importance pass does not fit (as a 1 B model's on 2 cores within 24 s) is
    # given one ratio and the starts that need no data, and the report says so
    model, inputs, cal = _mlp_and_batches(5)
    monkeypatch.setattr(choices, "IMPORTANCE_PASSES", 1e9)
    measured = []
    monkeypatch.setattr(choices, "measure_importance", lambda *a, **k: measured.append(1))
    import torchinn.compression.starts as starts

    monkeypatch.setattr(starts, "measure_importance", lambda *a, **k: measured.append(1))
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    assert not measured
    assert any(s.startswith("importance scores (one batch takes about") for s in report.skipped)
    assert report.sizes_method in ("uniform", "sensitivity")
    assert not {"fisher", "activation"} & set(report.start_errors)


def test_the_bound_without_tuning_follows_the_time_of_a_forward_pass(monkeypatch):
    model, inputs, cal = _mlp_and_batches(3)
    _, quick = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    assert quick.bound == compression.NO_TUNE_SECONDS  # the MLP's pass takes well under 30 / 40 s
    monkeypatch.setattr(compression, "NO_TUNE_SECONDS", 1e-6)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    # 40 forward passes of a 16-row batch through the MLP: ~0.05 s idle, 2.5 s seen at load 7 on 2 cores
    assert 0 < report.bound < 10.0


def test_the_reconstruction_selects_the_channels_of_the_chosen_start(monkeypatch):
    # the layers a deadline leaves unrefit keep the chosen start's channels (activation or Fisher
    # selection), not L1's; given scores are what select_channels keeps
    model, inputs, cal = _mlp_and_batches(10)
    seen = []
    original = baselines.reconstruct

    def recording(imodel, sizes, data, **kwargs):
        seen.append((kwargs.get("scores"), imodel, dict(sizes)))
        return original(imodel, sizes, data, **kwargs)

    monkeypatch.setattr(baselines, "reconstruct", recording)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False,
                             starts=("fisher",))
    scores, imodel, sizes = seen[0]
    assert set(report.starts.values()) <= {"fisher", "reconstruct"}
    assert scores and set(scores) == set(imodel.group_names)
    keep = baselines.select_channels(imodel, sizes, "l1", scores=scores)
    for g, idx in keep.items():
        assert torch.equal(idx, torch.sort(torch.topk(scores[g].double(), sizes[g]).indices).values)


def test_a_budget_too_short_for_tuning_goes_to_the_choices(monkeypatch):
    model, inputs, cal = _mlp_and_batches(5)
    tune = TuneConfig(seconds=6.0, progress=False)
    _, normal = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=tune)
    assert not any(s.startswith("tuning (") for s in normal.skipped)  # hundreds of MLP steps fit in 6 s
    monkeypatch.setattr(compression, "MIN_TUNING_STEPS", 10**12)
    monkeypatch.setattr(refit_candidate, "RUNNER_UP_MARGIN", 1e9)  # the other starts' refits would take the time
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=tune)
    assert any(s.startswith("tuning (about") and "the choices were given the budget" in s
               and s.endswith("calibration batches of fewer rows make a step cheaper)") for s in report.skipped)
    # the MLP's choices end in well under 6 s: the report says the rest went unused (an unseen
    # recognizer's ended at 44 s of 60 with nothing tuned, and the entry said they took the budget)
    left = 6.0 - report.seconds["after_convert"]
    assert left > 2.0, report.seconds
    said = [float(s.split("ended with ")[1].split(" s of it unused")[0]) for s in report.skipped if "unused" in s]
    assert said and said[0] == pytest.approx(left, abs=1.5), (report.skipped, report.seconds)
    assert report.seconds["after_convert"] <= 1.05 * 6.0 + 0.5


def test_importance_runs_on_the_first_samples_of_a_batch_when_a_whole_one_does_not_fit():
    from torchinn.compression.importance import measure_importance
    from torchinn.model.inputs import leading_samples
    from torchinn.training.distill import Distillation

    imodel, teacher, batches, reference = _teacher_and_outputs(2)
    loss, skipped = Distillation("mse"), []
    # one batch is said to cost 1 s a pass; the share allows half of one batch's importance pass
    got = choices._importance(imodel, batches, reference, loss, 0.5 * choices.IMPORTANCE_PASSES, skipped,
                              teacher, per_batch=1.0)
    assert got is not None and got.batches == 1
    assert len(skipped) == 1 and skipped[0].startswith("importance on the first 4 of 8 samples of batch 1 only (")
    assert skipped[0].endswith(f" s measured, {0.5 * choices.IMPORTANCE_PASSES:.1f} s allowed; a whole batch by the "
                               f"passes' guess: {choices.IMPORTANCE_PASSES:.1f} s)")
    alone = measure_importance(imodel, [leading_samples(batches[0], 4)], loss, network=teacher)
    for g in imodel.group_names:
        torch.testing.assert_close(got.activation[g], alone.activation[g], rtol=1e-6, atol=0)
        torch.testing.assert_close(got.fisher[g], alone.fisher[g], rtol=1e-5, atol=1e-12)
    # less than one sample's share: one sample when it fits in the whole choice budget, else skipped
    skipped.clear()
    one = choices._importance(imodel, batches, reference, loss, 0.1 * choices.IMPORTANCE_PASSES, skipped,
                              teacher, per_batch=1.0, whole=0.2 * choices.IMPORTANCE_PASSES)
    assert one is not None and skipped[0].startswith("importance on the first 1 of 8 samples")
    skipped.clear()
    assert choices._importance(imodel, batches, reference, loss, 0.1 * choices.IMPORTANCE_PASSES, skipped,
                               teacher, per_batch=1.0, whole=0.1 * choices.IMPORTANCE_PASSES) is None
    assert skipped[0].startswith("importance scores (one batch takes about")


def test_a_budget_with_no_room_for_tuning_says_so_and_names_tune_false(monkeypatch, caplog):
    model, inputs, cal = _mlp_and_batches(6)
    monkeypatch.setattr(compression, "MIN_TUNING_STEPS", 10**9)  # no budget can hold that many steps
    with caplog.at_level("WARNING", logger="torchinn.compression.pipeline"):
        _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST,
                                 tune=TuneConfig(seconds=2.0, progress=False))
    assert report.tuning["steps"] == 0
    assert any(s.startswith("tuning (about") for s in report.skipped)
    msg = [r.getMessage() for r in caplog.records if "leaves no time for tuning" in r.getMessage()]
    assert len(msg) == 1 and "TuneConfig(seconds=2)" in msg[0] and "tune=False chooses within 30 s" in msg[0]


def test_size_options_beyond_the_first_leave_the_reconstruction_its_time():
    from torchinn.model.inputs import Inputs, run
    from torchinn.training.distill import Distillation

    model, inputs, cal = _mlp_and_batches(2, rows=8)
    imodel = inn.convert(model, inputs, FAST)
    batches = [Inputs(b) for b in cal]
    teacher = imodel.to_discrete(graph=True).eval()
    with torch.no_grad():
        reference = [run(teacher, b) for b in batches]
    options = {"uniform": {n: g.max_size // 2 for n, g in imodel.groups.items()},
               "other": {n: g.max_size // 2 + 1 for n, g in imodel.groups.items()}}
    args = lambda: (copy.deepcopy(imodel), options, batches, reference, Distillation("mse"), ["l1"], None)
    skipped: list[str] = []
    # 100 s left, 99.5 of them held for the reconstruction: a second option (2 batches of 1 s) does not fit
    method, table, _ = choices._sizes_and_starts(*args(), choices._Clock(100.0), 0.5, 1.0, skipped, hold=99.5)
    assert list(table) == ["uniform"] and method == "uniform"
    assert skipped[0].startswith("sizes other (measuring them takes about 2.0 s each,")
    skipped.clear()
    _, table, _ = choices._sizes_and_starts(*args(), choices._Clock(100.0), 0.5, 1.0, skipped, hold=0.0)
    assert sorted(table) == ["other", "uniform"] and not skipped


def test_the_choices_give_up_part_of_their_share_so_that_the_tuning_steps_fit():
    from torchinn.compression.pipeline import CHOICE_SHARE, MIN_CHOICE_SHARE, MIN_TUNING_STEPS, STEP_PASSES, \
        _choice_share

    step = STEP_PASSES * 0.1  # a forward pass of 0.1 s
    # room for many steps: the usual share
    share, steps = _choice_share(1000.0, 0.1, timed=True)
    assert share == CHOICE_SHARE and steps == pytest.approx(0.6 * 1000.0 / step)
    # 40% would leave fewer than MIN_TUNING_STEPS: the choices keep what leaves exactly that many
    left = MIN_TUNING_STEPS * step / 0.7  # 70% of it holds MIN_TUNING_STEPS steps
    share, steps = _choice_share(left, 0.1, timed=True)
    assert share == pytest.approx(0.3) and steps == pytest.approx(MIN_TUNING_STEPS)
    # not even with MIN_CHOICE_SHARE: the choices take everything (steps: what 40% would have left)
    left = MIN_TUNING_STEPS * step / (1.0 - MIN_CHOICE_SHARE) * 0.99
    share, steps = _choice_share(left, 0.1, timed=True)
    assert share == 1.0 and steps == pytest.approx((1 - CHOICE_SHARE) * left / step)
    assert _choice_share(-1.0, 0.1, timed=True) == (1.0, 0.0)
    # no time budget (steps bound the tuning): the usual share whatever the time
    assert _choice_share(0.01, 0.1, timed=False)[0] == CHOICE_SHARE


def test_slow_passes_judge_the_reconstruction_on_fewer_held_out_batches(monkeypatch):
    # as the choice batches: when the held-out batches' passes would take more than 5% of the
    # bound, fewer of them (at least one) judge the candidates; tune=False's bound holds them all
    model, inputs, cal = _mlp_and_batches(10)  # 2 held out
    fast = compression.run

    def slow_run(module, batch):
        time.sleep(0.05)
        return fast(module, batch)

    monkeypatch.setattr(compression, "run", slow_run)
    judged: list[int] = []
    original = compression.choose

    def recording(imodel, **kwargs):
        judged.append(len(kwargs["judge"]))
        return original(imodel, **kwargs)

    monkeypatch.setattr(compression, "choose", recording)
    inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=TuneConfig(seconds=1.5, progress=False))
    inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)  # bound 30 s: 0.05 x 30 > 2 x 0.05
    assert judged == [1, 2]  # 0.05 x 1.5 s holds one pass of 0.05 s or more


def test_a_reconstruction_whose_whole_fit_does_not_fit_is_fitted_in_part(monkeypatch):
    # the estimate of the whole fit exceeds the time (as a LM's with 60 s on one core): it is still
    # fitted, under its deadline, and judged, where RECONSTRUCT_LEAST passes of it fit; skipped below
    model, inputs, cal = _mlp_and_batches(10)
    monkeypatch.setattr(refit_candidate, "RECONSTRUCT_PASSES", 1e9)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    assert {"partitions", "reconstruct"} <= set(report.reconstruct_errors)
    assert not any(s.startswith("reconstruction on") for s in report.skipped), report.skipped
    monkeypatch.setattr(refit_candidate, "RECONSTRUCT_LEAST", 1e9)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    assert not {"partitions", "reconstruct"} & set(report.reconstruct_errors)  # the starts' held-out errors only
    assert any(s.startswith("reconstruction on 8 batches (about") for s in report.skipped), report.skipped


def test_the_held_out_batches_decide_between_the_best_starts_on_the_choice_batches():
    # hidden channel 0 reads input 0 only: silent on the choice batch (input 0 is 0), not on the held-out
    # one; Fisher scores measured on the choice batch drop it (free there), activation scores keep it
    from torch import nn
    from torchinn.compression.importance import Importance
    from torchinn.compression.starts import best_start, distill_error, held_out_start
    from torchinn.training.distill import Distillation

    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0]]))
        net[2].bias.zero_()
    g = torch.Generator().manual_seed(0)
    quiet, loud = torch.rand(16, 4, generator=g), torch.rand(16, 4, generator=g)
    quiet[:, 0] = 0.0
    imodel = inn.convert(net, (quiet[:2],), FAST)
    (group,) = imodel.group_names
    imodel.resize({group: 2})
    scores = Importance(activation={group: torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)},
                        fisher={group: torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)})
    loss = Distillation("mse")
    with torch.no_grad():
        ref, judged = [net(quiet)], [net(loud)]
    start = best_start(imodel, [(quiet,)], kinds=["fisher", "activation"], per_group=False, reference=ref,
                       loss=loss, importance=scores)
    assert start.errors["fisher"] < 1e-12 < 1e-3 < start.errors["activation"]  # Fisher wins on the choice batch
    chosen, held = held_out_start(imodel, start, [(loud,)], judged, loss, choices.HELD_OUT_STARTS)
    assert set(held) == {"fisher", "activation"}
    # held out, dropping channel 0 (2 x input 0) costs about 4 times dropping channel 1 (input 1)
    assert held["activation"] > 1e-3 and held["fisher"] > 2.5 * held["activation"]
    assert set(chosen.kinds.values()) == {"activation"} and chosen.error == start.errors["activation"]
    assert distill_error(imodel, [(loud,)], judged, loss) == pytest.approx(held["activation"], rel=1e-6)


def test_forward_only_activation_batches_only_where_the_choices_hold_enough_passes():
    from torchinn.training.distill import Distillation

    imodel, teacher, batches, reference = _teacher_and_outputs(6)
    reference = reference[:1]
    loss = Distillation("mse")
    # a pass is said to cost 0.01 s: the Fisher pass reads the choice batch, the others are forward only
    many = choices.ACTIVATION_MIN_PASSES * 0.01
    got = choices._importance(imodel, batches[:1], reference, loss, 60.0, [], teacher, per_batch=0.01,
                              forward=batches[1:], forward_seconds=60.0, whole=many)
    assert (got.batches, got.activation_batches) == (1, 5)
    # a choice budget of fewer passes (a LM on one core): the Fisher batch only
    few = choices._importance(imodel, batches[:1], reference, loss, 60.0, [], teacher, per_batch=0.01,
                              forward=batches[1:], forward_seconds=60.0, whole=0.99 * many)
    assert (few.batches, few.activation_batches) == (1, 0)
    for g in imodel.group_names:
        assert torch.equal(few.fisher[g], got.fisher[g]) and not torch.allclose(few.activation[g], got.activation[g])


def test_without_tuning_the_error_after_is_the_error_before_and_that_of_the_network_returned():
    from torchinn.compression.starts import distill_error
    from torchinn.model.inputs import Inputs, run
    from torchinn.training.distill import Distillation

    model, inputs, cal = _mlp_and_batches(5, rows=8)
    for reconstruct in (False, True):
        small, report = inn.compress(model, inputs, 0.5, calibration=cal, tune=False, config=FAST, graph=True,
                                     reconstruct=reconstruct)
        assert report.error_after_tuning == report.error_before_tuning  # the same network: not measured again
        choice = [Inputs(b) for b in cal[:compression.SELECT_BATCHES]]  # the first training batches
        with torch.no_grad():
            reference = [run(model, b) for b in choice]
        # what it stands for: the returned network's error on the choice batches, to float rounding
        measured = distill_error(small, choice, reference, Distillation(report.loss))
        assert measured == pytest.approx(report.error_after_tuning, rel=1e-4, abs=1e-9), (reconstruct, report.starts)


def test_the_teachers_passes_and_the_loss_are_reported_in_seconds(monkeypatch):
    # on an unseen recognizer (8210 classes), the loss's temperature fit took 9.9 s of the 30 s bound
    # before any choice, and report.seconds named none of it: 'reference' now holds it
    clock, fit = _Clock(), compression.resolve_loss

    def slow_loss(*args, **kwargs):
        clock.now += 3.0
        return fit(*args, **kwargs)

    monkeypatch.setattr(compression, "resolve_loss", slow_loss)
    monkeypatch.setattr(time, "perf_counter", clock)
    model, inputs, cal = _mlp_and_batches(4)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    assert 3.0 <= report.seconds["reference"] <= 3.5, report.seconds
    assert report.seconds["reference"] < report.seconds["after_convert"]


def test_without_tuning_the_runner_up_starts_channels_are_refit_and_the_better_refit_kept(monkeypatch):
    # a start's partitions and its refit need not rank alike (waifu2x at 25%: the activation start
    # wins on held-out batches, the refit on the Fisher start's channels beats its refit); with the
    # time no tuning uses, the runner-up start's channels are refit too and the lower error is kept
    made = []
    original = baselines.reconstruct

    def recording(imodel, sizes, data, scores=None, **kwargs):
        net = original(imodel, sizes, data, scores=scores, **kwargs)
        made.append(net)
        return net

    monkeypatch.setattr(baselines, "reconstruct", recording)
    model, inputs, cal = _mlp_and_batches(10)
    small, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    held = report.reconstruct_errors
    refits = {k: e for k, e in held.items() if k.startswith("reconstruct ")}
    # every channel set once: the chosen start's, the held-out runner-up's, L1's (no data chose it)
    assert len(refits) == 3 and len(made) == 3, (held, report.skipped)
    kinds = [k.split()[1] for k in refits]
    assert sorted(kinds) == ["activation", "fisher", "l1"]
    best = min(refits.values())
    if best < held["partitions"]:  # the kept network is the refit with the lowest held-out error
        assert held["reconstruct"] == best and set(report.starts.values()) == {"reconstruct"}
        x = cal[-1][0]
        i = list(refits.values()).index(best)
        with torch.no_grad():
            assert torch.allclose(small(x), made[i](x), atol=1e-5)
            for j, other in enumerate(made):
                if j != i:
                    assert not torch.allclose(small(x), other(x), atol=1e-3)
    # only the channel sets of the starts the user allows
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False, starts=("activation", "fisher"))
    assert {k.split()[1] for k in report.reconstruct_errors if k.startswith("reconstruct ")} == {"activation", "fisher"}
    # with tuning to follow, the time goes to the tuning: one refit
    made.clear()
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST,
                             tune=TuneConfig(seconds=4, progress=False))
    assert len(made) == 1 and not any(k.startswith("reconstruct ") for k in report.reconstruct_errors)
    # without the time for it: named in skipped
    made.clear()
    monkeypatch.setattr(refit_candidate, "RUNNER_UP_MARGIN", 1e9)
    _, report = inn.compress(model, inputs, 0.5, calibration=cal, config=FAST, tune=False)
    assert len(made) == 1 and any(s.startswith("the reconstruction on the ") for s in report.skipped), report.skipped
