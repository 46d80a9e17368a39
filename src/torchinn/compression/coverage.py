"""Whether the calibration data show the classes a classifier tells apart.

Every choice :func:`torchinn.compress` makes from data (activation and Fisher scores, the refit,
the tuning) fits what the calibration data use: a channel that only the classes missing from the
data need looks free. On EfficientNet-Lite0 (ImageNet, 1000 classes) with 256 crops of seven
photos, the original's top class on them was one of 70 classes, and 5 of the 32 classes of the
held-out crops: at 25% fewer parameters the data-chosen channels kept 35-39% top-1 agreement on
the held-out crops, the L1 channels (no data) 60%, and compress without tuning 41% (benchmarks/RESULTS.md).
Keeping to the L1 channels there was not the answer either: with the same refit it gave 55%
at 25% and 14% at 50%, where the data-chosen channels gave 29%. :func:`narrow` tells that case, and
:func:`torchinn.compress` warns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..training.distill import Distillation

__all__ = ["narrow", "warning"]

#: calibration data are narrow when the teacher's top class on them is one of fewer than this share
#: of its classes ...
COVERED_SHARE = 0.25
#: ... for a classifier of at least this many classes (fewer: a few examples show them all)
MIN_CLASSES = 20


def narrow(reference: Sequence[Any], loss: Distillation) -> tuple[int, int, int] | None:
    """(examples, classes shown, classes) when ``reference`` (the teacher's outputs on the choice
    batches) are class logits, one row per example, whose top classes are fewer than
    :data:`COVERED_SHARE` of the classes; else None. Outputs with a class per position (a language
    model's tokens, a tagger's) are left alone: a text shows a small share of a vocabulary."""
    if loss.kind != "kl":
        return None
    tops, classes = [], 0
    for out in reference:
        leaves = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor) and o.is_floating_point()]
        if len(leaves) != 1 or leaves[0].ndim != 2:
            return None
        classes = leaves[0].shape[-1]
        tops.append(leaves[0].argmax(-1).flatten())
    if not tops or classes < MIN_CLASSES:
        return None
    top = torch.cat(tops)
    shown = int(top.unique().numel())
    return (int(top.numel()), shown, classes) if shown < COVERED_SHARE * classes else None


def warning(examples: int, shown: int, classes: int) -> str:
    """What :func:`torchinn.compress` says when :func:`narrow` holds."""
    return (f"the original's top class on {examples} of the calibration examples is one of {shown} of its {classes} "
            "classes: the choices and the tuning fit what these classes need and may drop what the others need "
            "(a channel only they use looks free); calibrate on examples of the classes you deploy on")
