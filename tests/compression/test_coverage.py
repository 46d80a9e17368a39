"""Calibration data that show few of a classifier's classes: compress says so
(torchinn/compression/coverage.py)."""

import logging
import re

import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.compression import coverage
from torchinn.training.distill import Distillation

KL = Distillation("kl")


def _logits(tops: list[int], classes: int) -> torch.Tensor:
    out = torch.zeros(len(tops), classes)
    out[torch.arange(len(tops)), torch.tensor(tops)] = 5.0
    return out


def test_narrow_counts_the_top_classes_of_one_row_per_example():
    few = [_logits([0, 1, 2, 3] * 4, 100), _logits([4] * 16, 100)]
    assert coverage.narrow(few, KL) == (32, 5, 100)
    # 25 of 100 classes shown: not narrow (the share is COVERED_SHARE)
    assert coverage.narrow([_logits(list(range(25)), 100)], KL) is None
    assert coverage.narrow([_logits(list(range(24)), 100)], KL) == (24, 24, 100)


@pytest.mark.parametrize("case", ["mse", "few classes", "per position", "two outputs"])
def test_narrow_leaves_other_outputs_alone(case):
    ref = [_logits([0] * 8, 100)]
    loss = KL
    if case == "mse":
        loss = Distillation("mse")
    elif case == "few classes":  # 10 classes: a few examples show them all
        ref = [_logits([0] * 8, 10)]
    elif case == "per position":  # a language model's tokens: a text shows few of a vocabulary
        ref = [_logits([0] * 8, 100)[None]]
    else:
        ref = [(ref[0], ref[0])]
    assert coverage.narrow(ref, loss) is None


class _Classifier(nn.Module):
    def __init__(self, bias: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU())
        self.head = nn.Linear(48, 20)
        with torch.no_grad():  # bias > 0: the top class is one of the first three whatever the input
            self.head.bias.zero_()[:3] += 100 * bias
            self.head.weight *= 40.0  # logits that are not flat: the "kl" loss

    def forward(self, x):
        return self.head(self.body(x))


def _batches(n: int = 8):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 16, generator=g),) for _ in range(n)]


def test_compress_warns_when_the_calibration_shows_few_classes(caplog):
    model, cal = _Classifier(bias=4.0), _batches()
    with torch.no_grad():
        assert len(torch.cat([model(*b) for b in cal]).argmax(-1).unique()) <= 3
    with caplog.at_level(logging.WARNING, logger="torchinn.compression.pipeline"):
        _, report = inn.compress(model, cal[0], 0.5, calibration=cal, tune=False,
                                 config=inn.ConvertConfig(permute=False))
    assert report.loss == "kl"
    said = [r.getMessage() for r in caplog.records if "calibration examples" in r.getMessage()]
    assert len(said) == 1 and re.search(r"on \d+ of the calibration examples is one of [123] of its 20 classes",
                                        said[0]), said


def test_compress_does_not_warn_when_the_calibration_shows_the_classes(caplog):
    model, cal = _Classifier(bias=0.0), _batches()
    with torch.no_grad():
        assert len(torch.cat([model(*b) for b in cal]).argmax(-1).unique()) >= 10
    with caplog.at_level(logging.WARNING, logger="torchinn.compression.pipeline"):
        _, report = inn.compress(model, cal[0], 0.5, calibration=cal, tune=False,
                                 config=inn.ConvertConfig(permute=False))
    assert report.loss == "kl"
    assert not any("calibration examples" in r.getMessage() for r in caplog.records)
