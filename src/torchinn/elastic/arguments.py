"""The arguments of :func:`torchinn.make_elastic`, checked before any work: each bad one is named
with the values it may take, and the defaults that depend on others are resolved here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ..options import check_choice, check_number
from ..training.distill import LOSS_CHOICES, Distillation
from .budget import REFIT_SHARE
from .choose import SIZE_CHOICES
from .network import DEPLOY_KINDS

__all__ = ["RANKINGS", "check_arguments"]

RANKINGS = ("auto", "l1", "activation", "fisher", "uniform")


def check_arguments(*, low: Any, seconds: Any, steps: Any, lr: Any, full_tolerance: Any, random: Any, ranking: Any,
                    loss: Any, holdout: Any, eval_every: Any, deploy: Any, deploy_kind: Any, partition_lr: Any,
                    bias_lr: Any, fit_scales: Any, tune_share: Any = 0.0, offset_lr: Any = 1e-4,
                    deploy_sizes: Any = "curves", refit_share: Any = REFIT_SHARE) -> tuple[float, float]:
    """Raise on the first bad argument; return ``lr`` and ``partition_lr`` with their defaults
    resolved (``lr``: 0 with deployed scales, else 1e-5; ``partition_lr``: 1e-3 for trained
    partitions, else 1e-2)."""
    check_choice(deploy_kind, DEPLOY_KINDS, "deploy_kind")
    if lr is None:  # the measured recipes: the shared weights train, or, with deployed scales, stay frozen
        lr = 0.0 if deploy is not None and deploy_kind in ("scales", "scales-bias", "scales-refit") else 1e-5
    check_number(low, "low (the smallest share of every group's channels to train)", 0, 1, low_open=True)
    if seconds is None and steps is None:
        raise ValueError("make_elastic needs a budget: seconds (wall-clock time) or steps (optimizer steps), or both")
    if seconds is not None:
        check_number(seconds, "seconds", 0, low_open=True)
    if steps is not None:
        check_number(steps, "steps", 1, integer=True)
    check_number(lr, "lr", 0)
    if full_tolerance is not None:
        check_number(full_tolerance, "full_tolerance", 0)
    check_number(random, "random (random sizes per sandwich step)", 0, integer=True)
    check_choice(ranking, RANKINGS, "ranking")
    if not isinstance(loss, Distillation):
        check_choice(loss, LOSS_CHOICES, "loss")
    check_number(holdout, "holdout", 0, 1, low_open=True, high_open=True)
    check_number(eval_every, "eval_every", 1, integer=True)
    if partition_lr is None:
        partition_lr = 1e-3 if deploy_kind == "partitions" else 1e-2
    check_number(partition_lr, "partition_lr", 0, low_open=True)
    check_number(bias_lr, "bias_lr", 0)
    if deploy is not None and (isinstance(deploy, (str, bytes, Tensor)) or not isinstance(deploy, Iterable)
                               or not list(deploy)):
        raise ValueError(f"deploy must be a non-empty list of fractions of the parameters in (0, 1), got {deploy!r}")
    if lr == 0 and deploy is None:
        raise ValueError("lr=0 trains nothing without deploy (fractions of the parameters with their own "
                         "partitions); give lr > 0 or deploy")
    if not isinstance(fit_scales, bool):
        raise TypeError(f"fit_scales must be True or False, got {fit_scales!r}")
    if fit_scales and (deploy is None or deploy_kind not in ("scales-bias", "scales-refit")):
        raise ValueError(f"fit_scales=True fits the scales of deployed sizes with bias corrections: it needs "
                         f"deploy=[...] and deploy_kind='scales-bias' or 'scales-refit', got deploy={deploy!r}, "
                         f"deploy_kind={deploy_kind!r}")
    check_number(tune_share, "tune_share (the share of the budget after the refit)", 0, 1, high_open=True)
    check_number(offset_lr, "offset_lr", 0)
    if tune_share > 0 and (deploy is None or deploy_kind != "scales-refit"):
        raise ValueError(f"tune_share > 0 trains the refit weights of deployed sizes: it needs deploy=[...] and "
                         f"deploy_kind='scales-refit', got deploy={deploy!r}, deploy_kind={deploy_kind!r}")
    check_number(refit_share, "refit_share (the most of the time left after the shared training the refits take)",
                 0, 1, low_open=True)
    check_choice(deploy_sizes, SIZE_CHOICES, "deploy_sizes")
    if deploy_sizes != "curves" and deploy is None:
        raise ValueError(f"deploy_sizes={deploy_sizes!r} chooses the sizes of deployed fractions: it needs deploy=[...]")
    return float(lr), float(partition_lr)
