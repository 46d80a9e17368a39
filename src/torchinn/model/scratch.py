"""Networks built from scratch: :func:`from_scratch`, and ``Integral*`` layers seen as an
:class:`IntegralNetwork`.

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

:class:`ScratchNetwork` is a view of such a module that implements the protocol of
:mod:`torchinn.model.protocol`: its groups are the module's leaf partitions, each named by the first
path it is found at; resizing changes the partitions inside the module (every layer that holds a
partition follows it); :meth:`ScratchNetwork.to_discrete` gives a fresh plain copy. An
:class:`~torchinn.IntegralModel` nested inside the module counts too: its groups are listed under
its path (``"backbone.0.weight:0"``) and ``to_discrete`` replaces it by its own discrete network.

>>> import torch
>>> from torchinn.nn import IntegralLinear
>>> from torchinn.maths import UniformPartition
>>> p = UniformPartition(64)
>>> net = torch.nn.Sequential(IntegralLinear(8, p), torch.nn.ReLU(), IntegralLinear(p, 2))
>>> view = ScratchNetwork(net)
>>> view.resize(0.25)
{'0.out_partition': 16}
>>> view.to_discrete()
Sequential(
  (0): Linear(in_features=8, out_features=16, bias=True)
  (1): ReLU()
  (2): Linear(in_features=16, out_features=2, bias=True)
)
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..graph.trace import clone_inputs
from .integral_model import IntegralModel
from ..nn.layers import IntegralLayer
from ..maths.partition import CompositePartition, FixedPartition, Partition, UniformPartition
from ..options import unknown_group
from .protocol import IntegralNetwork, SizeSpec, plan_sizes, set_sizes
from ..sizing.rounding import Multiple

__all__ = ["ScratchNetwork", "from_scratch"]

_FIXED = {"permute": False, "fuse_batch_norm": False}


def from_scratch(model: nn.Module, example_inputs: tuple | Tensor, **options: Any) -> IntegralModel:
    """An :class:`~torchinn.IntegralModel` to train from scratch, built from the plain network
    ``model`` (not modified): :func:`torchinn.convert` with no channel permutation and with the
    batch norms kept (their weight, bias and running statistics continuous along their group).
    At full size it computes exactly what ``model`` computes, in training mode too.

    The returned model is in ``model``'s mode and has ``batch_statistics=True``: in training mode
    its batch norms normalise by each batch's statistics, like ``model`` would. After training
    (e.g. with :class:`~torchinn.RandomSizes`), resize it and call
    :func:`torchinn.recalibrate_bn` on a few batches before evaluating or calling
    ``to_discrete()``.

    ``options`` are other :class:`~torchinn.ConvertConfig` fields (``quadrature``, ``kind``,
    ``keep_discrete``, ``unsupported``, ``check``).

    ``model`` may also be built from ``Integral*`` layers (trained or not): they become the same
    :class:`~torchinn.IntegralModel`, with the same outputs at every size. Each group takes a copy
    of the partition of the layers in it (its points and current size; one quadrature for all
    partitions, since the stored values are relative to it); channels given as an ``int`` keep
    their size (a :class:`~torchinn.maths.FixedPartition`). Groups follow the
    graph: a partition shared by layers that the graph does not tie (two branches concatenated)
    becomes one group per branch, and two partitions that the graph ties (a residual sum) are an
    error.
    """
    from .convert import ConvertConfig, convert

    if any(isinstance(m, IntegralLayer) for m in model.modules()):
        return _from_layers(model, example_inputs, options)
    for name, value in _FIXED.items():
        if name in options and options[name] != value:
            raise ValueError(f"from_scratch builds with {name}={value}, got {name}={options[name]!r}; "
                             f"use torchinn.convert(model, example_inputs, ConvertConfig({name}=...)) "
                             "for a trained network")
    config = ConvertConfig(**{**options, **_FIXED})
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
    for path, layer in model.named_modules():
        if not isinstance(layer, IntegralLayer):
            continue
        dims = [(layer.out_dim, layer.out_partition)] + ([] if layer.depthwise else [(layer.in_dim, layer.in_partition)])
        for dim, p in dims:
            group = _group_of(imodel, f"{path}.weight", dim)
            if group is None or p is None:
                continue
            if group in owner and owner[group] is not p:
                raise ValueError(f"layers {where[group]!r} and {path!r} have different partitions, but their "
                                 f"channels must stay equal (group {group!r}, e.g. a residual sum): give them "
                                 "one Partition object")
            owner[group], where[group] = p, path
    for group, g in imodel.groups.items():
        p = owner.get(group)
        if p is None:  # channels given as an int: they keep their size
            imodel.set_partition(group, FixedPartition(g.partition.control_points(dtype=torch.float64),
                                                       g.partition.quadrature))
        else:
            imodel.set_partition(group, copy.deepcopy(p))
    _check_same(model, imodel, example_inputs)
    return imodel


def _check_same(model: nn.Module, imodel: IntegralModel, example_inputs: tuple | Tensor) -> None:
    """Raise unless ``imodel`` computes what ``model`` computes at its current sizes (eval mode;
    both get their modes back)."""
    from ..discrete.rebuild import relative_error

    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    modes = model.training, imodel.training
    try:
        model.eval()
        imodel.eval()
        with torch.no_grad():
            want, got = model(*clone_inputs(inputs)), imodel(*clone_inputs(inputs))  # a forward may write to them
    finally:
        model.train(modes[0])
        imodel.train(modes[1])
    err = relative_error(want, got)
    if not err <= 1e-4:
        raise ValueError(f"from_scratch: the integral model differs from {type(model).__name__} by {err:.2g} "
                         "(relative) at the current sizes; a partition it cannot carry over (e.g. a "
                         "CompositePartition of concatenated channels): build the plain network and call "
                         "from_scratch on it")


def _group_of(imodel: IntegralModel, tensor: str, dim: int) -> str | None:
    for name, g in imodel.groups.items():
        if (tensor, dim) in g.members:
            return name
    return None


def _nested(model: nn.Module) -> dict[str, IntegralNetwork]:
    """The outermost submodules of ``model`` (not ``model`` itself) that implement the protocol."""
    found: dict[str, IntegralNetwork] = {}
    for name, module in model.named_modules():
        if name and isinstance(module, IntegralNetwork) and not any(name.startswith(n + ".") for n in found):
            found[name] = module
    return found


class ScratchNetwork:
    """The :class:`~torchinn.model.protocol.IntegralNetwork` view of a module built from ``Integral*``
    layers. It holds ``module`` (not a copy): :meth:`resize` changes the module's partitions, and
    calling the view calls the module."""

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"ScratchNetwork needs an nn.Module, got {type(module).__name__}")
        if isinstance(module, IntegralNetwork):
            raise TypeError(f"{type(module).__name__} is an integral network itself; use it directly")
        self.module = module

    def partition_map(self) -> dict[str, Partition]:
        """The module's leaf partitions, each named by the first path it is found at (a nested
        integral network's by its path and its own group names)."""
        nested = _nested(self.module)
        found: dict[str, Partition] = {}
        seen: set[int] = set()
        for name, module in self.module.named_modules(remove_duplicate=False):
            if name in nested:
                for group, p in nested[name].partition_map().items():
                    if id(p) not in seen:
                        seen.add(id(p))
                        found[f"{name}.{group}"] = p
            elif (isinstance(module, Partition) and not isinstance(module, CompositePartition)
                  and id(module) not in seen and not any(name.startswith(n + ".") for n in nested)):
                seen.add(id(module))
                found[name] = module
        return found

    def sizes(self) -> dict[str, int]:
        """Every group's current size."""
        return {name: p.size for name, p in self.partition_map().items()}

    def resize(self, sizes: SizeSpec, *, multiple: Multiple = 1) -> dict[str, int]:
        """Set group sizes (see :mod:`torchinn.model.protocol`), rounded to ``multiple`` (one int, or
        group name -> int; :mod:`torchinn.sizing.rounding`); a name may also be an integral layer's path,
        for the partition of its outputs. Returns every group's size."""
        parts = self.partition_map()

        def find(name: str) -> str:
            if name in parts:
                return name
            try:
                layer = self.module.get_submodule(name) if isinstance(name, str) else None
            except AttributeError:
                layer = None
            out = getattr(layer, "out_partition", None) if isinstance(layer, IntegralLayer) else None
            hit = [n for n, p in parts.items() if p is out]
            if hit:
                return hit[0]
            raise unknown_group(name, parts)

        set_sizes(plan_sizes(parts, sizes, find, multiple))
        return self.sizes()

    def to_discrete(self) -> nn.Module:
        """A fresh plain copy of the module at the current sizes: every integral layer (and nested
        integral network) replaced by its plain twin, no torchinn object left inside. The module
        is not modified."""
        return _discrete_copy(self.module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ScratchNetwork({type(self.module).__name__}, sizes={self.sizes()})"


def _discrete_copy(model: nn.Module) -> nn.Module:
    if isinstance(model, (IntegralLayer, IntegralNetwork)):
        return model.to_discrete()
    swaps: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, (IntegralLayer, IntegralNetwork)) and not any(name.startswith(s + ".") for s in swaps):
            swaps[name] = module.to_discrete()
    # Copy everything except what is replaced (integral layers, nested networks, partitions).
    memo: dict[int, Any] = {}
    for name in swaps:
        memo[id(model.get_submodule(name))] = None
    for m in model.modules():
        if isinstance(m, Partition):
            memo[id(m)] = None
    out = copy.deepcopy(model, memo)
    for name, new in swaps.items():
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, new)
    leftovers = [n for n, m in out.named_modules()
                 if isinstance(m, (IntegralLayer, Partition, IntegralNetwork))]
    if leftovers:
        raise TypeError(f"torchinn modules left after to_discrete at {leftovers}")
    return out
