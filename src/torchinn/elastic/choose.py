"""The sizes of each deployed fraction (``make_elastic(deploy=..., deploy_sizes="best")``), chosen
the way :func:`torchinn.compress` chooses them: the Fisher greedy allocation on the network's own
importance beside the sizes its error curves share, each measured on held-out batches at the
ranked top-``k`` channels, the lower error kept.

Why (benchmarks/RESULTS.md, "Deployed sizes chosen as compress chooses them"): the curves measure
each group shrunk alone, so they miss how groups interact; on waifu2x_photo at 50% of the
parameters the Fisher sizes (those `compress` deploys) gave a held-out error of 5.3e-4 where the
curves' gave 6.6e-4, while on mnist_cnn at 25% the curves' were better (37.8 against 47.9).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..compression.budget import UnreachableTarget, choose_sizes
from ..compression.importance import Importance
from ..compression.starts import distill_error
from ..training.distill import Distillation
from .network import ElasticNetwork

__all__ = ["SIZE_CHOICES", "choose_deployed_sizes"]

#: how ``make_elastic`` sizes its deployed fractions: ``"curves"`` (the sizes ``resize(target=t)``
#: shares by the error curves) or ``"best"`` (those or the Fisher greedy ones, the lower held-out error)
SIZE_CHOICES = ("curves", "best")


def choose_deployed_sizes(elastic: ElasticNetwork, targets: Sequence[float], importance: Importance | None,
                          batches: list, reference: list, loss: Distillation
                          ) -> tuple[dict[float, dict[str, int]], dict[float, dict[str, Any]]]:
    """Per fraction of ``targets``, the elastic groups' sizes: those of ``elastic.resize(target=t)``
    (``"curves"``, needs :attr:`ElasticNetwork.curves`) or of
    :func:`torchinn.choose_sizes` ``method="fisher"`` on ``importance`` (``"fisher"``; no smaller
    than ``elastic.low`` of a group), whichever has the lower ``loss`` error against ``reference``
    (the original's outputs on ``batches``) at the ranked top-``k`` channels (a tie keeps the
    curves'). Without Fisher scores the curves' sizes are kept. Also returns, per fraction, the
    method kept and each candidate's error. ``elastic`` is left at full size."""
    full = {n: elastic.groups[n].max_size for n in elastic.elastic_groups}
    low = elastic.low if elastic.low is not None else 0.1
    was = elastic.imodel.training
    elastic.imodel.eval()
    chosen: dict[float, dict[str, int]] = {}
    why: dict[float, dict[str, Any]] = {}
    try:
        for t in sorted(set(float(x) for x in targets)):
            options = {"curves": {n: s for n, s in elastic.resize(target=t).items() if n in full}}
            elastic.set_sizes(full)
            if importance is not None and importance.fisher:
                try:
                    fisher = choose_sizes(elastic.imodel, t, "params", method="fisher", importance=importance,
                                          min_ratio=low, loss=loss, calibration=[(b,) for b in batches[:1]])
                    options["fisher"] = {n: fisher[n] for n in full}
                except UnreachableTarget:  # the curves' sizes stand
                    pass
            errors = {}
            for method, sizes in options.items():
                if method != "curves" and sizes == options["curves"]:
                    errors[method] = errors["curves"]
                    continue
                elastic.set_sizes(sizes)
                errors[method] = distill_error(elastic.imodel, batches, reference, loss)
            elastic.set_sizes(full)
            best = min(errors, key=lambda m: (errors[m], m != "curves"))
            chosen[t], why[t] = options[best], {"method": best, "errors": errors}
    finally:
        elastic.set_sizes(full)
        elastic.imodel.train(was)
    return chosen, why
