"""Per-size bias corrections of an elastic network's deployed sizes: :func:`fit_biases`.

A deployed size of kind ``"scales-bias"`` (:meth:`torchinn.elastic.ElasticNetwork.deploy`)
carries, beside a scale per kept channel, a correction of the bias of every layer (linear layer
or convolution with a bias) whose input channels are fewer than at full size. The shared weights
stay untouched (the full size stays the converted network exactly); the correction is added to
the sampled bias at that size only (``IntegralModel.offsets``) and folds into the plain bias of
:meth:`~torchinn.elastic.ElasticNetwork.to_discrete`.

The closed form (:func:`fit_biases`), layer by layer in graph order, each layer seeing the
corrections of the layers before it: the correction is the mean, over the calibration batches
(and a convolution's output positions), of the difference between the layer's output in the
full network (its kept output channels) and in the deployed one. On a layer whose inputs are
the full network's (the first consumer) with the scales at 1, it is FLAP's bias compensation
(An et al., 2024), ``W[:, removed] @ mean(x[removed])``: the mean of what the removed channels
fed the layer.

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> data = [torch.randn(16, 4) for _ in range(3)]
>>> elastic = inn.elastic.ElasticNetwork(inn.convert(net, data[0], inn.ConvertConfig(permute=False)),
...                                      {"0.weight:0": list(range(8))})
>>> _ = elastic.deploy([0.5], kind="scales-bias")
>>> fitted = fit_biases(elastic, data)
>>> sorted(fitted[0.5])
['2.bias']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import math

import torch
from torch import Tensor, fx, nn

from ..compression.capture import Capture
from ..compression.refit import SAVED_BYTES, find_layer, graph_tensor
from ..compression.regression import in_channels, row_chunks, sample, spatial_size
from ..maths.structured import plan_size, take_channels
from ..model.inputs import batch_inputs
from .network import ElasticNetwork

__all__ = ["fit_biases"]


def _layers(gm: fx.GraphModule) -> dict[str, Any]:
    """Weight name -> the layer (:func:`~torchinn.compression.refit.find_layer`) of every linear
    layer and convolution of ``gm``, in graph order."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_function":
            layer, _ = find_layer(gm, node)
            if layer is not None:
                out[layer.weight] = layer
    return out


def fit_biases(elastic: ElasticNetwork, batches: Sequence[Any], teacher: fx.GraphModule | None = None,
               scales: bool = False) -> dict[float, dict[str, float]]:
    """Fit the bias corrections of every deployed size of kind ``"scales-bias"`` (or ``"scales-refit"``) of ``elastic`` by
    the closed form of the module (on ``batches``, calibration inputs; ``teacher``: the full-size
    graph module, default the elastic network's own at full size), each added to the size's
    current correction (starting at none), at its current scales. Returns per target, per bias
    tensor, the norm of the change. Layers whose output channels belong to a group without a
    ranking (resampled, not selected) below full size keep no correction. The network is left at
    full size.

    ``scales=True``: first multiply the scales of a group read by one layer only by the per-channel
    least-squares fit of that layer's output (the diagonal refit, :func:`_scale_fit`), then
    correct its bias (together, the least-squares fit of the scales and the bias)."""
    inputs = [batch_inputs(b) for b in batches]
    if not inputs:
        raise ValueError("fit_biases needs at least one calibration batch")
    elastic.resize(1.0)
    full = elastic.imodel.to_discrete(graph=True).eval() if teacher is None else teacher
    full_layers = _layers(full)
    plans = elastic.imodel.plans()
    report = {}
    was = elastic.imodel.training
    try:
        for target, d in sorted(elastic.deployed.items()):
            if d.kind not in ("scales-bias", "scales-refit"):
                continue
            elastic.resize(target=target)
            keep = elastic.kept_channels(d.sizes)
            below = {g for g, k in d.sizes.items() if k < elastic.groups[g].max_size}
            pruned = elastic.imodel.to_discrete(graph=True).eval()
            cap_full, cap_pruned = Capture(full, SAVED_BYTES), Capture(pruned, SAVED_BYTES)
            deltas: dict[str, Tensor] = {}
            layers = _layers(pruned)
            readers: dict[str, int] = {}
            for n in layers:
                for a in (a for seg in plans.get(n, ((), ()))[1] for a in seg) if len(plans.get(n, ())) > 1 else ():
                    readers[a.group] = readers.get(a.group, 0) + 1
            for name, layer in layers.items():
                if layer.bias is None or name not in full_layers:
                    continue
                w = graph_tensor(pruned, name)
                wf = graph_tensor(full, name)
                if in_channels(layer, w) == in_channels(full_layers[name], wf):
                    continue  # reads no resized group
                plan = plans.get(layer.bias)
                if plan is not None and any(a.group in below and a.group not in keep for seg in plan[0] for a in seg):
                    continue  # output channels resampled, not selected: no full-network counterpart
                index = None if plan is None else take_channels(torch.arange(plan_size(plan[0])), plan, keep)
                reads = [a.group for seg in plans[name][1] for a in seg] if len(plans.get(name, ())) > 1 else []
                if scales and len(reads) == 1 and reads[0] in d.partitions and readers.get(reads[0]) == 1 \
                        and layer.groups == 1 and not layer.transposed and w.shape[1] == d.sizes[reads[0]]:
                    m = _scale_fit(layer, w, full_layers[name].node, cap_full, cap_pruned, inputs, index)
                    with torch.no_grad():
                        w.mul_(m.to(w.dtype).reshape(1, -1, *([1] * (w.ndim - 2))))
                        part = d.partitions[reads[0]]
                        part.log_scale.add_(torch.log(m).to(part.log_scale.dtype))
                deltas[layer.bias] = _mean_gap(layer, full_layers[name].node, cap_full, cap_pruned, inputs, index)
                bias = graph_tensor(pruned, layer.bias)
                with torch.no_grad():  # in place: the layers after it see the correction
                    bias.add_(deltas[layer.bias].to(bias.dtype))
            for n, delta in deltas.items():
                old = d.biases.get(n)
                value = delta.to(old.dtype) + old.detach() if old is not None else delta.float()
                d.biases[n] = nn.Parameter(value.detach().clone(), requires_grad=True)
            report[target] = {n: float(t.norm()) for n, t in deltas.items()}
    finally:
        elastic.resize(1.0)
        elastic.imodel.train(was)
    return report


def _outputs(layer: Any, full_node: str, cap_full: Capture, cap_pruned: Capture, x: Any, i: int,
             index: Tensor | None) -> tuple[Tensor, Tensor, Tensor, int]:
    """On calibration input ``x`` (the ``i``-th), the deployed layer's input and output, the full
    layer's output at the kept channels ``index`` (None: all), and the outputs' channel dim."""
    x_in, y = cap_pruned.capture(x, layer.node, i)
    _, y_full = cap_full.capture(x, full_node, i)
    dim = 1 if layer.conv and y.ndim > len(layer.stride) + 1 else (0 if layer.conv else -1)
    if index is not None:
        y_full = y_full.index_select(dim, index.to(y_full.device))
    return x_in, y, y_full, dim


def _mean_gap(layer: Any, full_node: str, cap_full: Capture, cap_pruned: Capture, inputs: list,
              index: Tensor | None) -> Tensor:
    """The mean over ``inputs`` (at least one; and output positions) of the full layer's output at
    the kept channels ``index`` (None: all) minus the deployed layer's, one value per output
    channel (float64)."""
    total: Tensor | float = 0.0
    count = 0
    with torch.no_grad():
        for i, x in enumerate(inputs):
            _, y, y_full, dim = _outputs(layer, full_node, cap_full, cap_pruned, x, i, index)
            gap = (y_full.double() - y.double()).movedim(dim, -1).reshape(-1, y.shape[dim])
            total = total + gap.sum(0)
            count += gap.shape[0]
    return torch.as_tensor(total) / count


#: output positions (convolutions) or rows (linear layers) per calibration batch in :func:`_scale_fit`
ROWS_PER_BATCH = 2048


def _scale_fit(layer: Any, w: Tensor, full_node: str, cap_full: Capture, cap_pruned: Capture, inputs: list,
               index: Tensor | None, ridge: float = 1e-3) -> Tensor:
    """Per input channel ``i`` of the deployed layer (weight ``w``), the multiplier ``m_i`` of its
    contribution ``z_i`` that fits the full layer's output (kept channels ``index``) best in least
    squares, with a free offset per output channel: ``min ||y - sum_i m_i z_i - c||^2 + lam ||m -
    1||^2``, ``lam`` ``ridge`` times the mean diagonal of the normal matrix; clamped to [0.05, 20].
    On a sample of ``ROWS_PER_BATCH`` rows per batch."""
    n_in = w.shape[1]
    gram = torch.zeros(n_in, n_in, dtype=torch.float64)
    cross = torch.zeros(n_in, dtype=torch.float64)
    sum_z = torch.zeros(w.shape[0], n_in, dtype=torch.float64)
    sum_y = torch.zeros(w.shape[0], dtype=torch.float64)
    rows = 0
    wd = w.detach().double().reshape(w.shape[0], n_in, -1)
    with torch.no_grad():
        for i, inp in enumerate(inputs):
            x, _, y, dim = _outputs(layer, full_node, cap_full, cap_pruned, inp, i, index)
            if layer.conv:
                n, spatial = spatial_size(layer, y)
                picked = sample(spatial, math.ceil(ROWS_PER_BATCH / n), i)
            else:
                picked = sample(x.numel() // max(1, x.shape[-1]), ROWS_PER_BATCH, i)
            for xs, ys in row_chunks(layer, x, y, w, None, picked, bias=False):
                z = torch.einsum("rit,oit->roi", xs[0].reshape(xs.shape[1], n_in, -1), wd)
                target = ys[0]
                gram += torch.einsum("roi,roj->ij", z, z)
                cross += torch.einsum("roi,ro->i", z, target)
                sum_z += z.sum(0)
                sum_y += target.sum(0)
                rows += z.shape[0]
    gram -= sum_z.T @ sum_z / rows
    cross -= sum_z.T @ sum_y / rows
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-30))
    m = torch.linalg.solve(gram + lam * torch.eye(n_in, dtype=torch.float64), cross + lam)
    return m.clamp(0.05, 20.0)
