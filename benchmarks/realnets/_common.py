"""Helpers shared by the network modules: find a file inside an installed wheel without
importing its package (some packages run code at import time), and calibration batches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """``relative`` inside the installed top-level ``package`` (found, not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed; install it with: pip install {pip_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{pip_name} is installed but has no {relative!r} ({path})")
    return path


def split_batches(x: Tensor, n: int, batch: int) -> list[tuple[Tensor]]:
    """The first ``n`` rows of ``x`` as ``(inputs,)`` batches of ``batch`` rows."""
    if not 1 <= n <= len(x):
        raise ValueError(f"calibration size must be in [1, {len(x)}], got {n}")
    return [(x[i:i + batch].contiguous(),) for i in range(0, n, batch)]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    """Top-1 accuracy in % of ``model`` on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)
