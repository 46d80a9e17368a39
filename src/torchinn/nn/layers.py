"""Integral operators: fully connected and convolution layers with continuous weights.

Each layer keeps its weight (and bias) as a :class:`~torchinn.maths.structured.StructuredFunction` of
the output and input channel coordinates, as an :class:`~torchinn.IntegralModel` keeps its tensors. A channel count given as an ``int`` is discrete (a
network's input channels or its classes); given as a :class:`~torchinn.maths.partition.Partition` it is
continuous, and every layer holding the same partition object is sampled on the same points.

Forward (the Neural Integral Lemma): sample the weight on the current partitions, multiply it by
the input partition's quadrature weights (fused into the weight, not applied to activations), and
call ``F.linear`` / ``F.conv*``. Sampling and its eval-mode cache are the ones of
:class:`~torchinn.IntegralModel` (:mod:`torchinn.maths.sampling`). :meth:`IntegralLayer.to_discrete`
returns one layer's plain ``nn`` twin; a network of these layers is a declaration that
:func:`torchinn.from_scratch` turns into its :class:`~torchinn.IntegralModel`, which resizes it by
group name, trains it with :class:`~torchinn.RandomSizes` and gives back the plain network.

>>> import torch
>>> from torchinn.nn import IntegralConv2d, IntegralLinear
>>> from torchinn.maths import UniformPartition
>>> p = UniformPartition(32)
>>> net = torch.nn.Sequential(IntegralConv2d(3, p, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), IntegralLinear(p, 10))
>>> p.resize(8)
UniformPartition(size=8, max_size=32, quadrature='trapezoid')
>>> net[0].to_discrete()
Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from ..maths.functions import Kind
from ..maths.partition import Partition
from ..maths.sampling import SampleCache, sample_tensors
from ..maths.structured import Atom, StructuredFunction

__all__ = [
    "IntegralLayer",
    "IntegralLinear",
    "IntegralConv1d",
    "IntegralConv2d",
    "IntegralConv3d",
    "IntegralConvTranspose1d",
    "IntegralConvTranspose2d",
    "IntegralConvTranspose3d",
]

Channels = int | Partition

def _max(ch: Channels, what: str) -> int:
    if isinstance(ch, Partition):
        return ch.max_size
    if isinstance(ch, bool) or not isinstance(ch, int) or ch < 1:
        raise ValueError(f"{what} must be a positive int or a Partition, got {ch!r}")
    return ch


class IntegralLayer(nn.Module):
    """Base class of the integral operators.

    Subclasses set ``in_dim``/``out_dim`` (the weight dimensions that run over input and output
    channels), build the discrete twin with :meth:`_make_discrete` and run it with :meth:`_run`.
    """

    discrete_type: type[nn.Module] = nn.Module
    in_dim = 1
    out_dim = 0

    def _setup(self, in_ch: Channels, out_ch: Channels, template: nn.Module,
               kind: Kind, depthwise: bool = False) -> None:
        """Take weight and bias from ``template`` (an ``nn`` layer at full size) and keep them as
        continuous functions (:class:`~torchinn.maths.structured.StructuredFunction`, as an
        :class:`~torchinn.IntegralModel` keeps its tensors) that sampling at full size gives back."""
        self.in_partition = in_ch if isinstance(in_ch, Partition) else None
        self.out_partition = out_ch if isinstance(out_ch, Partition) else None
        self._in_fixed = None if isinstance(in_ch, Partition) else in_ch
        self._out_fixed = None if isinstance(out_ch, Partition) else out_ch
        self.depthwise = depthwise
        self.kind = kind
        weight = template.weight.detach()
        dims = self._continuous_dims()
        plan = tuple(((Atom(n, dims[d][0], integrate=dims[d][0] == "in"),),) if d in dims else ((Atom(n),),)
                     for d, n in enumerate(weight.shape))
        full = {"in": self.in_partition.full_weights(weight.device, torch.float64)} if "in" in self._parts() else {}
        self.weight_fn = StructuredFunction(weight, plan, full, kind)
        bias = getattr(template, "bias", None)
        if bias is not None:
            atom = Atom(bias.shape[0], "out") if self.out_partition is not None else Atom(bias.shape[0])
            self.bias_fn: StructuredFunction | None = StructuredFunction(bias.detach(), (((atom,),),), {}, kind)
        else:
            self.bias_fn = None
        self._cache = SampleCache()

    # -- sizes ----------------------------------------------------------------------------
    @property
    def in_size(self) -> int:
        """Current number of input channels."""
        return self.in_partition.size if self.in_partition is not None else self._in_fixed

    @property
    def out_size(self) -> int:
        """Current number of output channels."""
        return self.out_partition.size if self.out_partition is not None else self._out_fixed

    @property
    def groups_now(self) -> int:
        return self.out_size if self.depthwise else self.groups

    # -- sampling -------------------------------------------------------------------------
    def _continuous_dims(self) -> dict[int, tuple[str, Partition]]:
        """Weight dimension -> ``("in" | "out", the partition it is sampled on)``."""
        if self.depthwise:  # weight (C, 1, *k) for both conv and transposed conv
            return {0: ("out", self.out_partition)}
        dims = {}
        if self.out_partition is not None:
            dims[self.out_dim] = ("out", self.out_partition)
        if self.in_partition is not None:
            dims[self.in_dim] = ("in", self.in_partition)
        return dims

    def _parts(self) -> dict[str, Partition]:
        """The layer's groups (``"in"``, ``"out"``) and their partitions."""
        return {name: p for name, p in self._continuous_dims().values()}

    def sample(self) -> tuple[Tensor, Tensor | None]:
        """The discrete weight (quadrature fused in) and bias at the current sizes, sampled as an
        :class:`~torchinn.IntegralModel` samples its tensors (:mod:`torchinn.maths.sampling`)."""
        functions = {"weight": self.weight_fn}
        if self.bias_fn is not None:
            functions["bias"] = self.bias_fn
        out = sample_tensors(functions, self._parts())
        return out["weight"], out.get("bias")

    def sampled(self) -> tuple[Tensor, Tensor | None]:
        """Like :meth:`sample`, but cached in eval mode while nothing needs a gradient (the cache
        of :meth:`torchinn.IntegralModel.sampled`)."""
        return self._cache.get(self, self._parts().values(), self.sample)

    def forward(self, input: Tensor) -> Tensor:
        weight, bias = self.sampled()
        if input.device != weight.device:
            raise ValueError(
                f"{type(self).__name__}: input is on {input.device} but the layer's weights are on "
                f"{weight.device}; move one of them with .to()"
            )
        axis = self._channel_axis(input)
        if input.shape[axis] != self.in_size:
            raise ValueError(
                f"{type(self).__name__}: expected {self.in_size} input channels (dim {axis}) at the "
                f"current sizes, but got input of shape {tuple(input.shape)}"
            )
        return self._run(input, weight, bias)

    def _channel_axis(self, input: Tensor) -> int:
        """The input dimension that runs over channels; raises for a wrong number of dims."""
        raise NotImplementedError

    def _run(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _make_discrete(self, weight: Tensor, bias: Tensor | None) -> nn.Module:
        raise NotImplementedError

    def to_discrete(self) -> nn.Module:
        """A fresh plain ``nn`` layer with the weights sampled at the current sizes (built without
        a random initialisation: the global RNG is not touched)."""
        with torch.no_grad():
            weight, bias = self.sample()
        layer = self._make_discrete(weight, bias)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer.train(self.training)

    def _discrete_kwargs(self) -> dict[str, Any]:
        return {"device": self.weight_fn.blocks[0].values.device, "dtype": self.weight_fn.out_dtype}

    def _channels_repr(self) -> str:
        def one(p: Partition | None, fixed: int | None) -> str:
            return f"{p.size}/{p.max_size}" if p is not None else str(fixed)
        return (f"{one(self.in_partition, self._in_fixed)}, {one(self.out_partition, self._out_fixed)}")


class IntegralLinear(IntegralLayer):
    """Integral twin of :class:`torch.nn.Linear`: ``y(x_out) = ∫ W(x_out, x_in) x(x_in) dx_in + b(x_out)``.

    Args:
        in_features: an ``int`` (discrete) or a :class:`Partition` (continuous).
        out_features: an ``int`` (discrete) or a :class:`Partition` (continuous).
        bias: learn a bias (a continuous function of ``x_out``).
        kind: ``"cubic"`` or ``"linear"`` interpolation of the control values.
    """

    in_dim, out_dim = 1, 0
    discrete_type = nn.Linear

    def __init__(self, in_features: Channels, out_features: Channels, bias: bool = True, *,
                 kind: Kind = "cubic", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        template = nn.Linear(_max(in_features, "in_features"), _max(out_features, "out_features"),
                             bias, device=device, dtype=dtype)
        self._setup(in_features, out_features, template, kind)

    @classmethod
    def from_discrete(cls, layer: nn.Linear, in_features: Channels | None = None,
                      out_features: Channels | None = None, *, kind: Kind = "cubic"
                      ) -> IntegralLinear:
        """The integral layer that reproduces ``layer`` exactly at full size."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(in_features or layer.in_features, out_features or layer.out_features, layer, kind)
        return self

    def _channel_axis(self, input: Tensor) -> int:
        if input.ndim == 0:
            raise ValueError("IntegralLinear needs an input with at least one dimension, got a scalar")
        return input.ndim - 1

    def _run(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(input, weight, bias)

    def _make_discrete(self, weight: Tensor, bias: Tensor | None) -> nn.Module:
        return skip_init(nn.Linear, self.in_size, self.out_size, bias is not None, **self._discrete_kwargs())

    def extra_repr(self) -> str:
        return f"in, out={self._channels_repr()}, bias={self.bias_fn is not None}, kind={self.kind!r}"


class _IntegralConvNd(IntegralLayer):
    _nn_conv: type[nn.Module] = nn.Conv2d
    transposed = False

    def __init__(self, in_channels: Channels, out_channels: Channels, kernel_size: int | tuple,
                 stride: int | tuple = 1, padding: int | tuple | str = 0, dilation: int | tuple = 1,
                 groups: int | Partition = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 output_padding: int | tuple = 0, kind: Kind = "cubic",
                 device: Any = None, dtype: Any = None, _template: nn.Module | None = None) -> None:
        super().__init__()
        depthwise = isinstance(groups, Partition)
        if depthwise and not (groups is in_channels and groups is out_channels):
            raise ValueError(
                "groups may be a Partition only for a depthwise convolution: pass the same "
                "Partition object as in_channels, out_channels and groups")
        if not depthwise and groups != 1 and (isinstance(in_channels, Partition) or isinstance(out_channels, Partition)):
            raise ValueError(
                f"groups={groups} with continuous channels is not supported; use groups=1, or a "
                "depthwise convolution (groups=the same Partition as in and out channels)")
        n_in, n_out = _max(in_channels, "in_channels"), _max(out_channels, "out_channels")
        n_groups = n_in if depthwise else groups
        if _template is None:
            kw: dict[str, Any] = dict(stride=stride, padding=padding, dilation=dilation, groups=n_groups,
                                      bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
            if self.transposed:
                kw["output_padding"] = output_padding
            _template = self._nn_conv(n_in, n_out, kernel_size, **kw)
        t = _template
        self.kernel_size, self.stride, self.dilation = t.kernel_size, t.stride, t.dilation
        self.padding, self.padding_mode = t.padding, t.padding_mode
        self.output_padding = getattr(t, "output_padding", None)
        self.groups = 1 if depthwise else t.groups
        self._setup(in_channels, out_channels, t, kind, depthwise=depthwise)

    @classmethod
    def from_discrete(cls, layer: nn.Module, in_channels: Channels | None = None,
                      out_channels: Channels | None = None, *, kind: Kind = "cubic",
                      depthwise: bool = False) -> _IntegralConvNd:
        """The integral layer that reproduces the ``nn`` convolution ``layer`` exactly at full size.

        With ``depthwise=True``, ``in_channels`` and ``out_channels`` must be the same Partition."""
        in_ch = in_channels if in_channels is not None else layer.in_channels
        out_ch = out_channels if out_channels is not None else layer.out_channels
        groups = in_ch if depthwise else layer.groups
        return cls(in_ch, out_ch, layer.kernel_size, groups=groups, kind=kind, _template=layer)

    def _channel_axis(self, input: Tensor) -> int:
        n = len(self.kernel_size)
        if input.ndim not in (n + 1, n + 2):
            raise ValueError(
                f"{type(self).__name__} expects a {n + 1}-D (unbatched) or {n + 2}-D (batched) "
                f"input, got shape {tuple(input.shape)}")
        return input.ndim - n - 1

    def _padding_for(self, input: Tensor) -> tuple[Tensor, Any]:
        if self.padding_mode == "zeros":
            return input, self.padding
        if self.padding == "valid":
            return input, 0
        pads: list[int] = []
        for k, d, p in zip(reversed(self.kernel_size), reversed(self.dilation),
                           reversed(self.padding if self.padding != "same" else [None] * len(self.kernel_size))):
            if p is None:  # 'same'
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            else:
                pads += [p, p]
        return F.pad(input, pads, mode=self.padding_mode), 0

    def _make_discrete(self, weight: Tensor, bias: Tensor | None) -> nn.Module:
        kw: dict[str, Any] = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                                  groups=self.groups_now, bias=bias is not None,
                                  padding_mode=self.padding_mode, **self._discrete_kwargs())
        if self.transposed:
            kw["output_padding"] = self.output_padding
        return skip_init(self._nn_conv, self.in_size, self.out_size, self.kernel_size, **kw)

    def extra_repr(self) -> str:
        s = f"in, out={self._channels_repr()}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in (0, (0,) * len(self.kernel_size)):
            s += f", padding={self.padding}"
        if self.dilation != (1,) * len(self.kernel_size):
            s += f", dilation={self.dilation}"
        if self.depthwise:
            s += ", groups=depthwise"
        elif self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", bias={self.bias_fn is not None}, kind={self.kind!r}"


class _Conv(_IntegralConvNd):
    in_dim, out_dim = 1, 0
    _conv: Callable[..., Tensor] = staticmethod(F.conv2d)

    def _run(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        input, padding = self._padding_for(input)
        return type(self)._conv(input, weight, bias, self.stride, padding, self.dilation, self.groups_now)


class _ConvTranspose(_IntegralConvNd):
    in_dim, out_dim = 0, 1
    transposed = True
    _conv: Callable[..., Tensor] = staticmethod(F.conv_transpose2d)

    def _run(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return type(self)._conv(input, weight, bias, self.stride, self.padding, self.output_padding,
                                self.groups_now, self.dilation)


def _conv_class(name: str, base: type[_IntegralConvNd], nn_type: type[nn.Module],
                fn: Callable[..., Tensor]) -> type[_IntegralConvNd]:
    doc = (f"Integral twin of :class:`torch.nn.{nn_type.__name__}`; takes the same arguments, and "
           "``in_channels``/``out_channels`` may be Partitions (continuous). A depthwise convolution "
           "passes the same Partition as in_channels, out_channels and groups.")
    cls = type(name, (base,), {"_nn_conv": nn_type, "_conv": staticmethod(fn), "__doc__": doc,
                               "__module__": __name__})
    cls.discrete_type = nn_type
    return cls


IntegralConv1d = _conv_class("IntegralConv1d", _Conv, nn.Conv1d, F.conv1d)
IntegralConv2d = _conv_class("IntegralConv2d", _Conv, nn.Conv2d, F.conv2d)
IntegralConv3d = _conv_class("IntegralConv3d", _Conv, nn.Conv3d, F.conv3d)
IntegralConvTranspose1d = _conv_class("IntegralConvTranspose1d", _ConvTranspose, nn.ConvTranspose1d,
                                      F.conv_transpose1d)
IntegralConvTranspose2d = _conv_class("IntegralConvTranspose2d", _ConvTranspose, nn.ConvTranspose2d,
                                      F.conv_transpose2d)
IntegralConvTranspose3d = _conv_class("IntegralConvTranspose3d", _ConvTranspose, nn.ConvTranspose3d,
                                      F.conv_transpose3d)

