"""Per-size least-squares refits of an elastic network's deployed sizes of kind ``"scales-refit"``:
:func:`refit_deployed`.

A deployed size of kind ``"scales-refit"`` (:meth:`torchinn.elastic.ElasticNetwork.deploy`) is a
size of kind ``"scales-bias"`` (a scale per kept channel, a per-size correction of the bias of every
layer reading a resized group) whose layers reading resized groups are then refit by least
squares against the original network's outputs, as :func:`torchinn.compress`'s reconstruction
does (:func:`torchinn.compression.refit.refit_consumers`: layer by layer in graph order, each
seeing the refit layers before it, the ridge chosen by two-fold cross-validation, a layer kept as
it was where no ridge lowers its held-out error). Each refit weight (and bias) is stored as that
size's offset: the refit tensor minus the tensor sampled at that size (``IntegralModel.offsets``,
with the bias corrections), so the shared weights stay untouched (the full size stays exact),
``resize(target=t)`` deploys it, :meth:`~torchinn.elastic.ElasticNetwork.to_discrete` folds it
and :func:`torchinn.save` stores it. The price: per deployed size, a full copy of every refit
layer's weight (on waifu2x_photo 0.4-0.8 MiB per size, the network being 2.1 MiB).

The refit of a size is kept only if it lowers that size's held-out distillation error
(``error``, measured before and after); otherwise the size keeps its scales and bias corrections.

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> data = [torch.randn(64, 4) for _ in range(3)]
>>> elastic = inn.elastic.ElasticNetwork(inn.convert(net, data[0], inn.ConvertConfig(permute=False)),
...                                      {"0.weight:0": list(range(8))})
>>> _ = elastic.deploy([0.5], kind="scales-refit")
>>> done = refit_deployed(elastic, data)
>>> done[0.5]["layers"]
['2.weight']
>>> sorted(elastic.deployed[0.5].biases)
['2.bias', '2.weight']
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..compression.refit import refit_consumers
from ..maths.structured import plan_size, take_channels
from ..model.inputs import batch_inputs
from .network import DeployedSize, ElasticNetwork
from .scaled import ScaledPartition

__all__ = ["deployed_bytes", "refit_deployed"]


def deployed_bytes(d: DeployedSize) -> int:
    """The bytes of the state deployed size ``d`` carries beside the shared weights (as saved): its
    scales (a :class:`~torchinn.elastic.scaled.ScaledPartition`'s points are the ranked top-``k``,
    not stored) or its partitions' tensors, and its offsets (bias corrections, refit weights)."""
    tensors: list[Tensor] = []
    for part in d.partitions.values():
        tensors += [part.log_scale] if isinstance(part, ScaledPartition) else list(part.parameters())
    return sum(t.numel() * t.element_size() for t in [*tensors, *d.biases.values()])


def _kept(elastic: ElasticNetwork, sizes: dict[str, int]) -> dict[str, list[Tensor | None]] | None:
    """Per tensor name, per dimension, the positions of the full tensor a deployed size keeps (None:
    all); ``None`` if a group below full size is resampled (no ranking), not selected."""
    keep = elastic.kept_channels(sizes)
    if any(k < elastic.groups[g].max_size and g not in keep for g, k in sizes.items()):
        return None
    return {n: [take_channels(torch.arange(plan_size(p)), (p,), keep)
                if any(a.group in keep for seg in p for a in seg) else None for p in plan]
            for n, plan in elastic.imodel.plans().items()}


def _tensors(gm: fx.GraphModule, names: Sequence[str]) -> dict[str, Tensor]:
    """The tensors of ``gm`` named ``names`` (those it holds)."""
    held = dict(gm.named_parameters())
    held.update(gm.named_buffers())
    return {n: held[n] for n in names if n in held}


def _pilot(full: fx.GraphModule, elastic: ElasticNetwork, kept: dict, batch: Any) -> float:
    """The seconds a refit of the current size takes on one batch (on a throwaway copy): the
    estimate of a refit's seconds per batch before any was timed (high: it counts the solves once)."""
    pruned = elastic.imodel.to_discrete(graph=True).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        refit_consumers(full, pruned, [batch], kept)
    return time.perf_counter() - t0


def refit_deployed(elastic: ElasticNetwork, batches: Sequence[Any], teacher: fx.GraphModule | None = None,
                   error: Callable[[float], float] | None = None,
                   seconds: float | None = None) -> dict[float, dict[str, Any]]:
    """Refit every deployed size of kind ``"scales-refit"`` of ``elastic`` (at its current scales
    and bias corrections) on ``batches`` (calibration inputs) against ``teacher`` (the original
    network as a graph module; default: the elastic network's own at full size), storing each refit
    weight and bias as the size's offset (see the module). ``error(target)``: the size's held-out
    error (at its current state); where given, a refit that does not lower it is undone. Returns per
    target: ``layers`` (the weights refit, empty if the refit was undone or none lowered its
    layer's error), ``error_before`` / ``error_after`` (None without ``error``), ``kept`` (bool),
    ``seconds``, ``batches`` (how many it was fitted on), and ``why`` where it was not kept.

    ``seconds`` (None: no bound): the time all the refits may take. Each size in turn gets the time
    left over the sizes left; its refit runs on as many of ``batches`` as fit in that share, by the
    most seconds per batch a refit has taken (before the first, a refit on one batch is timed), and
    layers that would end past the share keep their weights (``refit_consumers``'s ``deadline``);
    a size for which not one batch fits is not refit (``why``). A size shortened or skipped so is
    marked ``short``. The network is left at full size."""
    inputs = [batch_inputs(b) for b in batches]
    if not inputs:
        raise ValueError("refit_deployed needs at least one calibration batch")
    elastic.resize(1.0)
    was = elastic.imodel.training
    elastic.imodel.eval()
    report: dict[float, dict[str, Any]] = {}
    try:
        full = elastic.imodel.to_discrete(graph=True).eval() if teacher is None else teacher
        todo = [(t, d) for t, d in sorted(elastic.deployed.items()) if d.kind == "scales-refit"]
        end = None if seconds is None else time.perf_counter() + seconds
        rate = 0.0  # the most seconds per batch a refit has taken
        for i, (target, d) in enumerate(todo):
            t0 = time.perf_counter()
            elastic.resize(target=target)
            kept = _kept(elastic, d.sizes)
            if kept is None:
                report[target] = {"layers": [], "kept": False, "error_before": None, "error_after": None,
                                  "seconds": time.perf_counter() - t0,
                                  "why": "a group below full size has no ranking (resampled, not selected)"}
                continue
            t_err = time.perf_counter()
            before = error(target) if error is not None else None
            t_err = time.perf_counter() - t_err  # the error after the refit costs as much
            elastic.resize(target=target)
            use, deadline, short = inputs, None, ""
            if end is not None:
                share = (end - t0) / (len(todo) - i)
                if rate == 0.0:
                    rate = _pilot(full, elastic, kept, inputs[0])
                fit = t0 + share - t_err - time.perf_counter()  # the seconds its refit may take
                n = min(len(inputs), int(max(0.0, fit) / rate))
                if n < 1:
                    report[target] = {"layers": [], "kept": False, "error_before": before, "error_after": before,
                                      "seconds": time.perf_counter() - t0, "batches": 0, "short": True,
                                      "why": f"no time: {rate:.1f} s a batch measured, {max(0.0, fit):.1f} s left for it"}
                    continue
                use, deadline = inputs[:n], t0 + share - t_err
                if n < len(inputs):
                    short = f"on {n} of {len(inputs)} batches ({rate:.1f} s a batch measured, {fit:.1f} s left for it)"
            pruned = elastic.imodel.to_discrete(graph=True).eval()
            old = {n: t.detach().clone() for n, t in _tensors(pruned, elastic.imodel.tensor_names).items()}
            t_fit = time.perf_counter()
            with torch.no_grad():
                rep = refit_consumers(full, pruned, use, kept, deadline=deadline)
            rate = max(rate, (time.perf_counter() - t_fit) / len(use))
            late = [n for n, r in rep.items() if "deadline" in str(r.get("skipped", ""))]
            if late:
                short = (short + "; " if short else "") + f"{len(late)} layers past its share kept as they were"
            layers = [n for n, r in rep.items() if "skipped" not in r]
            saved = dict(d.biases)
            for n, t in _tensors(pruned, list(old)).items():  # the refit weights and biases: their change, an offset
                delta = t.detach() - old[n]
                if not bool((delta != 0).any()):
                    continue
                prior = d.biases.get(n)
                value = delta.float() + (prior.detach().float() if prior is not None else 0.0)
                d.biases[n] = nn.Parameter(value.clone(), requires_grad=prior is not None and prior.requires_grad)
            after = error(target) if error is not None and layers else before
            info: dict[str, Any] = {"layers": layers, "kept": True, "error_before": before, "error_after": after,
                                    "batches": len(use)}
            if short:
                info.update(short=True, why=short)
            if before is not None and after is not None and layers and not after < before:
                d.biases.clear()
                d.biases.update(saved)
                info.update(layers=[], kept=False, why=(short + "; " if short else "")
                            + f"the held-out error rose ({before:.4g} -> {after:.4g})")
            info["seconds"] = time.perf_counter() - t0
            report[target] = info
    finally:
        elastic.resize(1.0)
        elastic.imodel.train(was)
    return report
