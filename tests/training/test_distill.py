"""The distillation loss compress chooses: a temperature from the teacher's confidence, so that a
classifier saturated on its calibration data is not compared by float noise (issue 21, item 2)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import torchinn as inn
from torchinn.training import distill
from torchinn.training.distill import (
    CONFIDENCE,
    MAX_TEMPERATURE,
    Distillation,
    fit_temperature,
    mean_confidence,
    resolve_loss,
)
from torchinn.compression.starts import distill_error


@settings(max_examples=30, deadline=None)
@given(gap=st.floats(1.0, 500.0), classes=st.integers(2, 20), rows=st.integers(1, 8))
def test_fitted_temperature_brings_the_mean_top_probability_to_the_target(gap, classes, rows):
    logits = torch.zeros(rows, classes)
    logits[torch.arange(rows), torch.arange(rows) % classes] = gap
    t = fit_temperature([logits])
    top1 = mean_confidence([logits], 1.0)
    if top1 <= CONFIDENCE:
        assert t == 1.0
    else:
        assert 1.0 < t <= MAX_TEMPERATURE
        assert mean_confidence([logits], t) == pytest.approx(CONFIDENCE, abs=1e-6)
        # one-hot gap g over C classes: p = 1 / (1 + (C - 1) e^(-g/T)) = 0.9 at T = g / ln(9 (C - 1))
        assert t == pytest.approx(gap / math.log(9 * (classes - 1)), rel=1e-6)


def test_resolve_loss_rules():
    confident = [torch.tensor([[60.0, 0.0], [0.0, 60.0]])]
    loss = resolve_loss("auto", confident)
    assert loss.kind == "kl" and loss.temperature == pytest.approx(60 / math.log(9), rel=1e-6)
    assert "0.9 at" in loss.note
    assert resolve_loss("kl", confident, temperature=1.0) == Distillation("kl", 1.0)
    assert resolve_loss("auto", [torch.tensor([[1.0, 0.0]])]).temperature == 1.0  # p = 0.73: as before
    assert resolve_loss("auto", [torch.randn(2, 3, 4, 5)]).kind == "mse"  # not class logits
    beyond = [torch.tensor([[1e6, 0.0]])]  # still saturated at MAX_TEMPERATURE
    assert resolve_loss("auto", beyond).kind == "mse"
    assert resolve_loss("kl", beyond).temperature == MAX_TEMPERATURE
    with pytest.raises(ValueError, match=r"loss must be 'auto', 'mse', 'mse-channels' or 'kl', got 'kll'; did you mean 'kl'\?"):
        resolve_loss("kll", confident)


def test_auto_tells_class_logits_from_scores_and_embeddings():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 7
    logits = torch.randn(64, 7, generator=gen) + 6.0 * nn.functional.one_hot(labels, 7)
    assert resolve_loss("auto", [logits[:32], logits[32:]]).kind == "kl"
    tokens = logits.reshape(4, 16, 7)  # per-token logits (batch, positions, classes)
    assert resolve_loss("auto", [tokens]).kind == "kl"
    # three quality scores near 1 (DNSMOS's raw outputs): their softmax is nearly uniform
    scores = 1.0 + 0.05 * torch.randn(64, 3, generator=gen)
    loss = resolve_loss("auto", [scores])
    assert loss.kind == "mse" and "nearly uniform" in loss.note and "(64, 3)" in loss.note
    # an embedding whose largest coordinate is always the same one
    embedding = torch.randn(64, 32, generator=gen)
    embedding[:, 5] = 8.0
    loss = resolve_loss("auto", [embedding])
    assert loss.kind == "mse" and "same top class on all 64 rows" in loss.note
    assert resolve_loss("auto", [embedding[:3]]).kind == "kl"  # too few rows to tell
    # probabilities already (onnx2torch's PP-OCRv4 recognizer ends in a softmax): said as such, even
    # where they are decided enough (2 classes) that their softmax is not nearly uniform
    for probs in (torch.softmax(tokens, -1), torch.softmax(logits[:, :2] * 3, -1)):
        loss = resolve_loss("auto", [probs])
        assert loss.kind == "mse" and "already probabilities" in loss.note, loss.note
    assert resolve_loss("auto", [torch.softmax(logits[:, :2] * 3, -1).log()]).kind == "kl"  # log-probabilities
    image = torch.randn(2, 3, 8, 8, generator=gen)
    assert "is not (batch, classes)" in resolve_loss("auto", [image]).note
    assert resolve_loss("kl", [scores]).kind == "kl"  # asked for: kept


def test_kl_at_temperature_one_saturates_where_the_fitted_one_does_not():
    teacher = torch.tensor([[60.0, 0.0, 0.0], [0.0, 60.0, 0.0]])
    student = teacher * torch.tensor([0.8, 1.0, 1.3])  # same predictions, other margins
    at_one = distill_error(lambda x: student, [(None,)], [teacher], Distillation("kl", 1.0))
    fitted = distill_error(lambda x: student, [(None,)], [teacher], resolve_loss("auto", [teacher]))
    assert at_one < 1e-12 < 1e-3 < fitted


def test_tune_config_temperature_checked():
    assert inn.TuneConfig(loss="kl", temperature=2.0).temperature == 2.0
    with pytest.raises(ValueError, match=r"temperature must be > 0, got -1.0"):
        inn.TuneConfig(temperature=-1.0)
    with pytest.raises(ValueError, match=r"temperature=2.0 applies to the 'kl' loss .* leave temperature None"):
        inn.TuneConfig(loss="mse", temperature=2.0)


@pytest.fixture(scope="module")
def saturated():
    """An MLP on sklearn's digits with 100% calibration accuracy and a softmax saturated there
    (its last layer scaled by 100: the same predictions, top probability 1 - 1e-30)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(300):
        loss = nn.functional.cross_entropy(net(x[:1200]), y[:1200])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        net[-1].weight.mul_(100.0)
        net[-1].bias.mul_(100.0)
    net.eval()
    cal = [(x[i:i + 100],) for i in range(0, 400, 100)]
    with torch.no_grad():
        outs = [net(b) for (b,) in cal]
    assert all(bool((o.argmax(1) == y[i * 100:(i + 1) * 100]).all()) for i, o in enumerate(outs))  # 100%
    assert min(float(torch.softmax(o.double(), 1).amax(1).min()) for o in outs) > 1 - 1e-6  # saturated
    return net, cal, x[1200:]


def _compress(net, cal, **loss):
    tune = inn.TuneConfig(steps=150, seconds=None, progress=False, **loss)
    return inn.compress(net, (cal[0][0][:4],), 0.75, calibration=cal, tune=tune, reconstruct=False)


def test_auto_loss_carries_signal_on_a_saturated_classifier(saturated):
    net, cal, held_out = saturated
    old, old_report = _compress(net, cal, loss="kl", temperature=1.0)
    new, report = _compress(net, cal)
    assert report.loss == "kl" and 100 < report.temperature < MAX_TEMPERATURE  # measured 489
    assert f"loss: kl at temperature {report.temperature:.4g} (auto: the teacher's mean top probability" in str(report)
    assert "\nloss: kl at temperature 1\n" in str(old_report)
    # at T = 1 the candidates' errors are float noise (measured: 0); at the fitted temperature
    # they are far above it and tell the two sets of sizes apart (measured 2.4e3 and 5.7e3)
    assert min(old_report.sizes_errors.values()) < 1e-6
    errors = sorted(report.sizes_errors.values())
    assert errors[0] > 1e-3 and errors[1] > 1.2 * errors[0]
    # on held-out digits the auto loss keeps closer to the teacher (measured: agreement 99.2% vs
    # 97.5%, relative logit error 0.001 vs 0.012)
    with torch.no_grad():
        ref, a, b = net(held_out), new(held_out), old(held_out)
    agree = [float((o.argmax(1) == ref.argmax(1)).float().mean()) for o in (a, b)]
    rel = [float(((o - ref) ** 2).mean() / (ref**2).mean()) for o in (a, b)]
    assert agree[0] >= agree[1] - 0.005
    assert rel[0] < 0.5 * rel[1]


def test_auto_does_not_read_non_negative_outputs_as_logits():
    """A YOLO-style detector's output (batch, 4 box coordinates in pixels + class scores after a
    sigmoid, anchors): rows of the last axis are not distributions, and its softmax over the anchors
    is far from uniform, so the entropy rule let it through as logits (KL at temperature 1 over
    2100 anchors, on NudeNet's YOLOv8n). Logits are defined up to a shift and take both signs."""
    gen = torch.Generator().manual_seed(0)
    boxes = 320 * torch.rand(16, 4, 300, generator=gen)
    scores = torch.sigmoid(torch.randn(16, 18, 300, generator=gen) * 3 - 4)
    out = torch.cat([boxes, scores], 1)
    loss = resolve_loss("auto", [out[:8], out[8:]])
    assert loss.kind == "mse-channels" and "scales span" in loss.note, loss  # boxes beside scores: weighed per channel
    assert "no negative value" in loss.note and "(8, 22, 300)" in loss.note, loss.note
    assert resolve_loss("auto", [out - out.mean()]).kind == "kl"  # the same numbers shifted: could be logits
    assert resolve_loss("kl", [out]).kind == "kl"  # asked for: kept


class _Elements(TorchDispatchMode):
    """Counts the values every aten op writes (the work done)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.n += sum(o.numel() for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor))
        return out


def test_fitting_the_temperature_reads_a_bounded_share_of_many_logits(monkeypatch):
    # a recognizer's 8210 classes at 64 positions: 42 softmaxes over all of them took 9.9 s of
    # compress's 30 s; the mean top probability needs a bounded number of rows, not all of them
    monkeypatch.setattr(distill, "FIT_ELEMENTS", 2**15, raising=False)
    g = torch.Generator().manual_seed(0)
    reference = []
    for _ in range(4):  # 2**20 logits, each row's top class ahead by 10 to 40
        x = torch.randn(8, 64, 512, generator=g)
        top = torch.randint(0, 512, (8, 64, 1), generator=g)
        reference.append(x.scatter_add(-1, top, 10 + 30 * torch.rand(8, 64, 1, generator=g)))
    with _Elements() as work:
        t = fit_temperature(reference)
    assert work.n < 10 * 2**20  # 42 passes over every logit write more than 42 * 3 * 2**20
    monkeypatch.setattr(distill, "FIT_ELEMENTS", 2**20)
    exact = fit_temperature(reference)  # on every row
    assert mean_confidence(reference, exact) == pytest.approx(CONFIDENCE, abs=1e-6)
    assert exact > 1.5 and t == pytest.approx(exact, rel=0.15)  # 64 rows of 2048 (1.76 against 1.94)
