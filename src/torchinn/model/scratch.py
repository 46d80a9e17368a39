"""Networks built from scratch: :func:`from_scratch`, from a plain network or one of ``Integral*``
layers.

:func:`from_scratch` is the way to build any network from scratch: it converts a plain,
untrained ``nn.Module`` into the same :class:`~torchinn.IntegralModel` that :func:`torchinn.convert`
gives for a trained one (same groups, sampling, resizing, saving and ``to_discrete``), but with no
channel permutation (there is nothing to smooth yet) and with its batch norms kept as batch norms
(folding an untrained network's statistics would be meaningless): their weight, bias and running
statistics are continuous along their channel group like biases. Train it with
:class:`~torchinn.RandomSizes`, choose the sizes, then re-estimate the batch norm statistics at
those sizes with :func:`torchinn.recalibrate_bn` (:mod:`torchinn.model.norms`). A network of
``Integral*`` layers goes the same way: :func:`from_scratch` turns it into that
:class:`~torchinn.IntegralModel`, with the same outputs at every size.

>>> import torch, torchinn as inn
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
...                           torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 10))
>>> imodel = inn.from_scratch(net, torch.randn(2, 1, 8, 8))
>>> imodel.training, imodel.batch_statistics, imodel.sizes()
(True, True, {'0.weight:0': 16})

A network of ``Integral*`` layers is a declaration of such a model: :func:`from_scratch` turns
it into its :class:`~torchinn.IntegralModel` (the groups named as :func:`torchinn.convert` names
them), which resizes, trains and gives back the plain network; there is no second runtime.

>>> from torchinn.nn import IntegralLinear
>>> from torchinn.maths import UniformPartition
>>> p = UniformPartition(64)
>>> net = torch.nn.Sequential(IntegralLinear(8, p), torch.nn.ReLU(), IntegralLinear(p, 2))
>>> imodel = inn.from_scratch(net, torch.randn(2, 8))
>>> imodel.resize(0.25)
{'0.weight:0': 16}
>>> imodel.to_discrete()
Sequential(
  (0): Linear(in_features=8, out_features=16, bias=True)
  (1): ReLU()
  (2): Linear(in_features=16, out_features=2, bias=True)
)
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..maths.functions import Kind
from .convert import ConvertConfig, convert
from .integral_model import IntegralModel
from ..nn.layers import IntegralLayer
from ..maths.partition import CompositePartition, FixedPartition, Partition, UniformPartition
from .protocol import IntegralNetwork

__all__ = ["from_scratch"]

def from_scratch(model: nn.Module, example_inputs: tuple | Tensor, *, quadrature: str | None = None,
                 kind: Kind | None = None, keep_discrete: Sequence[str] = (),
                 unsupported: Literal["error", "keep"] = "error", hidden: bool | None = None,
                 check: bool = True) -> IntegralModel:
    """An :class:`~torchinn.IntegralModel` to train from scratch, built from the plain network
    ``model`` (not modified): :func:`torchinn.convert` with no channel permutation and with the
    batch norms kept (their weight, bias and running statistics continuous along their group).
    At full size it computes exactly what ``model`` computes, in training mode too.

    The returned model is in ``model``'s mode and has ``batch_statistics=True``: in training mode
    its batch norms normalise by each batch's statistics, like ``model`` would. After training
    (e.g. with :class:`~torchinn.RandomSizes`), resize it and call
    :func:`torchinn.recalibrate_bn` on a few batches before evaluating or calling
    ``to_discrete()``.

    The keywords mean what the :class:`~torchinn.ConvertConfig` fields of the same names mean
    (``quadrature`` and ``kind``: ``None`` for the default, or for the one of the ``Integral*``
    layers); there is no ``permute`` or ``fuse_batch_norm`` (a network to be trained has nothing
    to smooth or fold: use :func:`torchinn.convert` for a trained one).

    ``model`` may also be built from ``Integral*`` layers (trained or not): such a module is a
    declaration of the :class:`~torchinn.IntegralModel` this returns, which has the same outputs at
    every size (both sample with :mod:`torchinn.maths.sampling`) and names its groups as
    :func:`torchinn.convert` does (``"0.weight:0"``). Each group takes a copy
    of the partition of the layers in it (its points and current size; one quadrature for all
    partitions, since the stored values are relative to it); channels given as an ``int`` keep
    their size (a :class:`~torchinn.maths.FixedPartition`). Groups follow the
    graph: a partition shared by layers that the graph does not tie (two branches concatenated)
    becomes one group per branch; two partitions that the graph ties (a residual sum), or a
    partition on channels the graph does not resize alike, are an error.
    """
    options: dict[str, Any] = {k: v for k, v in (("quadrature", quadrature), ("kind", kind)) if v is not None}
    options.update(keep_discrete=keep_discrete, unsupported=unsupported, hidden=hidden, check=check)
    if any(isinstance(m, IntegralLayer) for m in model.modules()):
        return _from_layers(model, example_inputs, options)
    config = ConvertConfig(**options, permute=False, fuse_batch_norm=False)
    with warnings.catch_warnings():  # a fresh network is in training mode: expected here
        warnings.filterwarnings("ignore", message=".* is in training mode; it is converted as in eval mode")
        imodel = convert(model, example_inputs, config)
    imodel.batch_statistics = True
    return imodel.train(model.training)


def _from_layers(model: nn.Module, example_inputs: tuple | Tensor, options: dict[str, Any]) -> IntegralModel:
    """:func:`from_scratch` of a module holding ``Integral*`` layers: their plain twins at full size
    converted, then each group given (a copy of) its layers' partition."""
    nested = [n for n, m in model.named_modules() if n and isinstance(m, IntegralNetwork)]
    if nested:
        raise TypeError(f"from_scratch takes plain layers and Integral* layers; {nested[0]!r} is an integral "
                        "network already")
    kinds = {m.kind for m in model.modules() if isinstance(m, IntegralLayer)}
    if len(kinds) > 1 or options.get("kind", next(iter(kinds))) not in kinds:
        raise ValueError(f"the Integral* layers interpolate with {sorted(kinds)}; from_scratch needs one kind for "
                         f"every layer, got kind={options.get('kind', sorted(kinds))!r}")
    parts = [m for m in model.modules() if isinstance(m, Partition) and not isinstance(m, CompositePartition)]
    quads = sorted({p.quadrature.name for p in parts}) or [options.get("quadrature", "trapezoid")]
    if len(quads) > 1 or options.get("quadrature", quads[0]) != quads[0]:
        raise ValueError(f"the Integral* layers' partitions use the quadratures {quads}; from_scratch needs one "
                         f"for every group (the stored values are relative to it), got "
                         f"quadrature={options.get('quadrature', quads)!r}")
    options = {**options, "kind": next(iter(kinds)), "quadrature": quads[0]}
    memo: dict[int, Any] = {}
    for m in parts:  # the copy samples every partition at its full, standard nodes
        memo[id(m)] = UniformPartition(m.max_size, m.quadrature)
    full = copy.deepcopy(model, memo)
    imodel = from_scratch(_discrete_copy(full), example_inputs, **options)
    imodel.train(model.training)
    owner: dict[str, Partition] = {}  # group -> the user's partition
    where: dict[str, str] = {}
    plans = imodel.plans()
    for path, layer in model.named_modules():
        if not isinstance(layer, IntegralLayer):
            continue
        dims = [(layer.out_dim, layer.out_partition)] + ([] if layer.depthwise else [(layer.in_dim, layer.in_partition)])
        for dim, p in dims:
            if p is None:
                continue
            segments = plans.get(f"{path}.weight", ((),) * (dim + 1))[dim]
            groups = [(seg[0].group, seg[0].size) for seg in segments if len(seg) == 1 and seg[0].group is not None]
            leaves = p.leaves()
            if len(groups) != len(segments) or [n for _, n in groups] != [q.max_size for q in leaves]:
                raise ValueError(f"layer {path!r}: the graph does not resize its {'output' if dim == layer.out_dim else 'input'} "
                                 f"channels as its {type(p).__name__} does (channel groups there: "
                                 f"{[a.group for seg in segments for a in seg if a.group] or 'none, kept at full size'}); "
                                 "give that dimension an int, "
                                 "or build the plain network and call from_scratch on it")
            for (group, _), leaf in zip(groups, leaves):
                if group in owner and owner[group] is not leaf:
                    raise ValueError(f"layers {where[group]!r} and {path!r} have different partitions, but their "
                                     f"channels must stay equal (group {group!r}, e.g. a residual sum): give them "
                                     "one Partition object")
                owner[group], where[group] = leaf, path
    for group, g in imodel.groups.items():
        p = owner.get(group)
        if p is None:  # channels given as an int: they keep their size
            imodel.set_partition(group, FixedPartition(g.partition.control_points(dtype=torch.float64),
                                                       g.partition.quadrature))
        else:
            imodel.set_partition(group, copy.deepcopy(p))
    return imodel


def _discrete_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``Integral*`` layer replaced by its plain twin (what
    :func:`from_scratch` traces; the partitions are not copied)."""
    if isinstance(model, IntegralLayer):
        return model.to_discrete()
    swaps = {name: m.to_discrete() for name, m in model.named_modules() if isinstance(m, IntegralLayer)}
    memo: dict[int, Any] = {id(model.get_submodule(name)): None for name in swaps}
    memo.update({id(m): None for m in model.modules() if isinstance(m, Partition)})
    out = copy.deepcopy(model, memo)
    for name, new in swaps.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, attr, new)
    return out
