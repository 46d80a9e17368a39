"""Channel importance in one pass: what :func:`torchinn.compress` chooses sizes and starts with.

:func:`measure_importance` runs the full-size network once forward and once backward per
calibration batch and returns, per group and channel:

* ``activation``: the RMS of the channel where convolutions and linear layers read it, times the
  L1 norm of the weights that read it (the channel-level form of Wanda's ``|W| x ||x||``);
* ``fisher``: the expected increase of the distillation loss when the channel is removed, to
  second order (the loss is zero, and so is its gradient, at the full-size network, so first-order
  Taylor scores vanish; Molchanov et al. 2019 and LLM-Pruner use the Fisher / Gauss-Newton
  term instead). Removing channel ``c`` where a layer reads it changes the output by ``-J x_c``;
  the loss grows by ``(J x_c)^T H (J x_c) / 2``, ``H`` the loss's Hessian in the outputs. With a
  random cotangent ``v`` of covariance ``H / 2`` (for ``"mse"``: Gaussian; for ``"kl"``: one-hot
  class draws from the teacher's probabilities minus those probabilities), one backward pass
  gives ``t_s = sum(x_c * dL/dx_c)`` per sample ``s`` with ``E[t_s^2]`` that increase, so the
  score sums ``t_s^2`` over samples and averages over batches (as :func:`torchinn.compression.starts.distill_error` does) (per sample, hence a relative spread of about
  ``sqrt(2 / samples)``). A channel read in several places (a residual stream) sums its
  ``t_s`` over them first. Groups no weight reads along its input dimension (the heads of
  ``q`` and ``k``) take the same estimate on the weights that produce them, per batch.

The scores of a group are in the loss's units, so they compare across groups:
:func:`fisher_curves` turns them into the error of keeping each group's best channels, which
:func:`torchinn.compression.budget.choose_sizes` (``method="fisher"``) shrinks greedily without running the
network again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx
from torch.overrides import TorchFunctionMode

from . import clock as timer
from ..graph.kinds import node_kind
from ..training.distill import Distillation
from .backward import fisher_batch, forward_only
from ..model.inputs import Inputs, batch_size, padding_mask, position_mask, run
from ..model.integral_model import IntegralModel

__all__ = ["Importance", "activation_importance", "channel_importance", "fisher_curves", "measure_importance"]

#: the layer kinds (:mod:`torchinn.graph.kinds`) whose weight reads are scored; a broadcasting
#: ``"matmul"`` is not (its weight operand may be a transposing view, read along another dimension)
READ_KINDS = ("linear", "mm", "conv", "conv_transpose")
#: after the first forward pass, the weights whose every group a layer reads stop requiring grad
#: (their gradients only fed producer-side sums that are not needed): the same scores, a cheaper
#: backward pass; False keeps every grouped weight's gradient (what the tests compare with)
NARROW_GRADIENTS = True


@dataclass
class Importance:
    """Per group, one score per channel (float64, on the CPU)."""

    activation: dict[str, Tensor] = field(default_factory=dict)
    fisher: dict[str, Tensor] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    #: (samples measured, samples) of the last batch when the time bound stopped it part way
    cut: tuple[int, int] | None = None
    #: batches read forward only, for the activation scores alone, after the ``batches`` above
    activation_batches: int = 0


def _reads(func: Any, args: tuple) -> tuple[Any, Any, int, int] | None:
    """(input, weight, the input's channel dim, the weight's input dim) of a layer op (of one of
    :data:`READ_KINDS`)."""
    if not isinstance(func, torch._ops.OpOverload):
        return None
    kind = node_kind(func, args)
    if kind is None or kind.name not in READ_KINDS or max(kind.input, kind.weight) >= len(args):
        return None
    return args[kind.input], args[kind.weight], kind.channel, kind.weight_in


class _Reads(TorchFunctionMode):
    """Where each weight (known by its storage) reads its input: the input's squared sums per
    channel and, with ``grads``, per sample and channel ``sum(x * dL/dx)`` through that layer only
    (the layer reads an alias of ``x`` whose gradient hook sees no other use)."""

    def __init__(self, owners: Mapping[int, tuple[str, tuple]], grads: bool) -> None:
        super().__init__()
        self.owners, self.grads = owners, grads
        self.squares: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.dims: dict[str, int] = {}                       # weight -> the dimension that reads
        self.taylor: dict[str, Tensor] = {}                  # group -> (samples, channels), this batch
        self.mask: Tensor | None = None                      # this batch's (batch, positions) padding mask

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        read = _reads(func, args)
        if read is not None and self._record(*read) and self.grads and torch.is_grad_enabled():
            x, weight, channel_dim, weight_dim = read
            if not x.requires_grad:  # no weight before it needs its gradient: dL/dx from a leaf here
                x = x.detach().requires_grad_()
            alias = x.view_as(x)
            plan = self.owners[weight.untyped_storage().data_ptr()][1][weight_dim]
            alias.register_hook(lambda g, x=x.detach(), d=channel_dim, p=plan: self._taylor(x, g, d, p))
            args = (alias, *args[1:])
        return func(*args, **(kwargs or {}))

    def _record(self, x: Any, weight: Any, channel_dim: int, weight_dim: int) -> bool:
        if not isinstance(weight, Tensor) or not isinstance(x, Tensor) or weight.ndim < 2 or not x.is_floating_point():
            return False
        owner = self.owners.get(weight.untyped_storage().data_ptr())
        if owner is None or x.ndim < 2 or weight_dim >= len(owner[1]):
            return False
        name, plan = owner
        if x.shape[channel_dim] != weight.shape[weight_dim] or not any(
                a.group is not None for seg in plan[weight_dim] for a in seg):
            return False
        xs = x.detach().movedim(channel_dim, -1)
        # a (batch, positions, channels) input of a padded batch: the padded positions do not count
        keep = position_mask(self.mask, xs) if xs.ndim == 3 and channel_dim in (-1, 2) else None
        count = xs.numel() // xs.shape[-1] if keep is None else int(keep.sum())
        if keep is None:  # no copy: squares summed in float32 over the other dims (their order is kept)
            dims = [i for i in range(x.ndim) if i != channel_dim % x.ndim]
            sq = x.detach().float().square().sum(dims).double()
        else:
            sq = ((xs.double() * keep) ** 2).reshape(-1, xs.shape[-1]).sum(0)
        if name not in self.squares:
            self.squares[name], self.counts[name] = sq, count
            self.dims[name] = weight_dim
        elif self.squares[name].shape == sq.shape:
            self.squares[name] += sq
            self.counts[name] += count
        return True

    def _taylor(self, x: Tensor, g: Tensor, channel_dim: int, dim_plan: tuple) -> None:
        prod = (x.double() * g.double()).movedim(channel_dim, -1)
        per = prod.reshape(prod.shape[0], -1, prod.shape[-1]).sum(1)  # (samples, channels)
        for group, vec in _split(per, dim_plan):
            if group in self.taylor and self.taylor[group].shape == vec.shape:
                self.taylor[group] += vec
            elif group not in self.taylor:
                self.taylor[group] = vec.clone()


def _split(per: Tensor, dim_plan: tuple) -> list[tuple[str, Tensor]]:
    """Per group atom of ``dim_plan``, the ``(rows, channels)`` sums of ``per``'s last dimension."""
    out, start = [], 0
    for seg in dim_plan:
        length = 1
        for a in seg:
            length *= a.size
        block = per.narrow(-1, start, length).reshape(per.shape[0], *[a.size for a in seg])
        for k, a in enumerate(seg):
            if a.group is not None:
                dims = [i for i in range(1, block.ndim) if i != k + 1]
                out.append((a.group, block.sum(dim=dims) if dims else block))
        start += length
    return out


def _full_network(imodel: IntegralModel) -> fx.GraphModule:
    with torch.no_grad():
        tensors = imodel.tensors(imodel.full_partitions())
    # the network owns copies: the sampled tensors are dropped on return (one copy held, not two)
    return imodel.discrete_from(tensors, {n: g.max_size for n, g in imodel.groups.items()}).eval()


def _owners(full: Any, plans: Mapping[str, tuple]) -> dict[int, tuple[str, tuple]]:
    named = list(full.named_parameters()) + list(full.named_buffers())
    return {t.untyped_storage().data_ptr(): (n, plans[n]) for n, t in named if n in plans}


def _activation(mode: _Reads, tensors: Mapping[str, Tensor], plans: Mapping[str, tuple]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, sq in mode.squares.items():
        d = mode.dims[name]
        w = tensors[name].detach().double().abs().cpu()
        column_l1 = w.sum(dim=[i for i in range(w.ndim) if i != d])
        score = torch.sqrt(sq.cpu() / max(1, mode.counts[name])) * column_l1
        for group, vec in _split(score[None], plans[name][d]):
            out[group] = out[group] + vec[0] if group in out else vec[0].clone()
    return out


def channel_importance(imodel: IntegralModel, tensors: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Per group, the L1 norm of each channel over the tensors that *produce* it (dimensions not
    summed over: filters and biases, not the next layer's input slices), at full size.
    ``tensors``: the full-size tensors by name, when the caller holds them (not sampled again)."""
    if tensors is None:
        with torch.no_grad():
            tensors = imodel.tensors(imodel.full_partitions())
    plans = imodel.plans()
    scores = {g: torch.zeros(imodel.groups[g].max_size, dtype=torch.float64) for g in imodel.group_names}
    for name, plan in plans.items():
        t = tensors[name].detach().double().cpu()
        for d, dim_plan in enumerate(plan):
            start = 0
            for seg in dim_plan:
                length = 1
                for a in seg:
                    length *= a.size
                block = t.narrow(d, start, length)
                block = block.reshape(list(t.shape[:d]) + [a.size for a in seg] + list(t.shape[d + 1:]))
                for k, a in enumerate(seg):
                    if a.group is None or a.integrate:
                        continue
                    axis = d + k
                    dims = [i for i in range(block.ndim) if i != axis]
                    scores[a.group] += block.abs().sum(dim=dims) if dims else block.abs()
                start += length
    return scores


def activation_importance(imodel: IntegralModel, batches: Sequence[tuple]) -> dict[str, Tensor]:
    """Per group, how much each channel feeds the layers that read it, on the calibration
    batches at full size: the RMS of the channel's activation times the L1 norm of the weights
    that read it (the channel-level form of Wanda's ``|W| x ||x||``), summed over those layers.
    Groups read by no convolution or linear layer are left out."""
    return measure_importance(imodel, batches, fisher=False).activation


def measure_importance(imodel: IntegralModel, batches: Sequence[tuple], loss: Distillation | None = None,
                       reference: Sequence[Any] | None = None, *, fisher: bool = True,
                       max_seconds: float | None = None, seed: int = 0,
                       network: fx.GraphModule | None = None, leading: int | None = None,
                       activation_batches: Sequence[tuple] = (), activation_seconds: float = 0.0) -> Importance:
    """Activation and (with ``fisher``) Fisher importance of every channel at full size, one
    forward (and backward) pass per batch of ``batches``, stopping before a batch that would end
    past ``max_seconds`` (at least one batch), or, in a batch run in chunks of samples
    (:func:`~torchinn.compression.backward.fisher_batch`), before a chunk that would (at least one):
    the samples measured are scored as if they were the batch (:attr:`Importance.cut`).
    ``leading``: with ``fisher``, where the first batch does not run in chunks, only its first
    ``leading`` samples are measured (a guess of what fits ``max_seconds``; where it runs in
    chunks, their measured time decides). ``reference``: the full network's outputs on the
    first batches (the others' are computed); ``loss``: the distillation loss the scores are in units of
    (default ``"mse"``). ``network``: ``imodel.to_discrete(graph=True)`` at full size, when the
    caller holds one (:func:`torchinn.compress`'s teacher), run instead of a new copy of every
    weight; it is left as it was (no gradients kept, ``requires_grad`` restored).

    ``activation_batches``: after those, the activation scores also read these batches (and the
    batches of ``batches`` the time bound left unread), forward only (no backward: a few times
    cheaper than a Fisher batch), while the next would end within ``activation_seconds`` of the
    end of the first stage (:attr:`Importance.activation_batches` counts them): a channel silent on
    the few batches the Fisher pass reads may not be on others."""
    t0 = timer.now()
    loss = loss or Distillation("mse")
    plans = imodel.plans()
    full = _full_network(imodel) if network is None else network
    named = dict(full.named_parameters(), **dict(full.named_buffers()))
    tensors = {n: named[n] for n in plans if n in named}
    mode = _Reads(_owners(full, plans), grads=fisher)
    result = Importance()
    sums = {g: torch.zeros(imodel.groups[g].max_size, dtype=torch.float64) for g in imodel.group_names}
    producer = {g: torch.zeros_like(s) for g, s in sums.items()}
    gen = torch.Generator().manual_seed(seed)
    terms: dict[str, Tensor] = {}  # this batch's producer-side sums, group -> (channels,)
    read: set[str] = set()          # groups a layer reads in this batch: no producer-side sums needed
    chunk: list[Any] = [None, 1]  # samples per chunk (once a batch has needed chunks), the fewest that run
    with _gradients(full, plans, fisher, terms, read) as narrow:
        for i, b in enumerate(batches):
            mode.taylor = {}
            mode.mask = padding_mask(b)  # padded positions count in no score
            if not fisher:
                with torch.set_grad_enabled(False), mode:
                    run(full, b)
            else:
                ref = reference[i] if reference is not None and i < len(reference) else None
                terms.clear()
                squares, done, factor = fisher_batch(
                    full, b, ref, loss, gen, mode, chunk, lambda: narrow(_reading(mode, plans, read)),
                    limit=leading if i == 0 else None, until=None if max_seconds is None else t0 + max_seconds)
                for group, t in squares.items():
                    sums[group] += t * factor if factor != 1.0 else t
                for g, t in terms.items():
                    if g in producer and producer[g].shape == t.shape:
                        producer[g] += t**2 * factor if factor != 1.0 else t**2
                n = batch_size(b if isinstance(b, Inputs) else Inputs(tuple(b)))
                if done < n:
                    result.cut = (done, n)
            result.batches = i + 1
            spent = timer.now() - t0
            if result.cut is not None or (max_seconds is not None and spent + spent / result.batches > max_seconds):
                break  # out of time part way through a batch, or the next would not fit
        forward_only(full, mode, list(batches[result.batches:]) + list(activation_batches), activation_seconds,
                     result)
    result.activation = _activation(mode, tensors, plans)
    if fisher:
        scored = {g for g, s in sums.items() if bool((s > 0).any())}
        result.fisher = {g: (sums[g] if g in scored else producer[g]) / result.batches for g in sums}
    result.seconds = timer.now() - t0
    return result


def _reading(mode: _Reads, plans: Mapping[str, tuple], read: set[str]) -> set[str]:
    """``read``: the groups a layer reads in this batch (no producer-side sums needed for them)."""
    read.clear()
    read.update(a.group for name, d in mode.dims.items() for seg in plans[name][d] for a in seg if a.group is not None)
    return read


@contextlib.contextmanager
def _gradients(full: Any, plans: Mapping[str, tuple], fisher: bool, terms: dict[str, Tensor],
               read: set[str]) -> Iterator[Callable[[set[str]], None]]:
    """While inside: only the grouped weights require grad (with ``fisher``), each with a hook that
    adds its producer-side sums to ``terms``; on exit every weight is as it was, without ``.grad``.
    Yields ``narrow(read)``: once a forward pass has shown which groups a layer reads, the weights
    whose every group is read (the consumer side scores them, :class:`_Reads`) stop requiring grad
    for the passes after it, so their gradients (a third of a backward pass's products) are not
    computed (on the CNNs and Llamas here none keeps them; the scores are the same, to the bit on the
    zoo's networks)."""
    was = {id(p): p.requires_grad for p in full.parameters()}
    hooks = []
    graded = {}

    def narrow(read: set[str]) -> None:
        if not NARROW_GRADIENTS:
            return
        for name, p in list(graded.items()):
            if not _producer_dims(plans[name], read):
                p.requires_grad_(False)
                del graded[name]

    try:
        for name, p in full.named_parameters():  # the weights of other tensors would only hold gradients
            p.requires_grad_(fisher and name in plans)
            if fisher and name in plans:
                graded[name] = p
                hooks.append(p.register_post_accumulate_grad_hook(
                    lambda p, name=name: _producer_terms(p, plans[name], terms, read)))
        yield narrow
    finally:
        for h in hooks:
            h.remove()
        for p in full.parameters():
            p.grad = None
            p.requires_grad_(was[id(p)])


def _producer_terms(p: Tensor, plan: tuple, terms: dict[str, Tensor], read: set[str]) -> None:
    """Add weight ``p``'s per-channel ``sum(W * dL/dW)`` over the rows that produce each group
    (not the input slices that read it) to ``terms``, then drop its gradient: a hook run when
    the gradient is complete, so no more than one weight's gradient is held at a time. Groups in
    ``read`` (a layer reads them: their scores come from that read) are not summed."""
    dims = _producer_dims(plan, read)
    if not dims:
        p.grad = None
        return
    prod = (p.detach().double() * p.grad.double()).cpu()
    p.grad = None
    for d, dim_plan in enumerate(plan):
        if d not in dims:
            continue
        moved = prod.movedim(d, -1).reshape(-1, prod.shape[d]).sum(0)[None]
        for seg_group, vec in _split(moved, dim_plan):
            if _integrated(dim_plan, seg_group):
                continue
            terms[seg_group] = terms[seg_group] + vec[0] if seg_group in terms else vec[0]


def _producer_dims(plan: tuple, read: set[str]) -> list[int]:
    """The dimensions of a weight (``plan``: its plan) whose producer-side sums a group needs: one
    no layer reads (``read``), not integrated along it."""
    return [d for d, dim_plan in enumerate(plan)
            if any(a.group is not None and a.group not in read and not _integrated(dim_plan, a.group)
                   for seg in dim_plan for a in seg)]


def _integrated(dim_plan: tuple, group: str) -> bool:
    return any(a.integrate for seg in dim_plan for a in seg if a.group == group)


def fisher_curves(imodel: IntegralModel, scores: Mapping[str, Tensor], points: int = 32
                  ) -> dict[str, list[tuple[float, float]]]:
    """Per group, ``[(ratio, error)]``: the Fisher estimate of the loss after keeping the
    ``ratio`` share of the channels with the largest scores (the sum of the others' scores), at
    ``points`` ratios and 1 (error 0)."""
    out = {}
    for name, g in imodel.groups.items():
        s = scores.get(name)
        n = g.max_size
        if s is None or s.numel() != n:
            continue
        ascending = torch.cumsum(torch.sort(s.double()).values, 0)
        curve = [(1.0, 0.0)]
        for j in range(points - 1, 0, -1):
            keep = max(1, round(j / points * n))
            curve.append((keep / n, float(ascending[n - keep - 1]) if n - keep >= 1 else 0.0))
        keep = 1
        curve.append((keep / n, float(ascending[n - 2]) if n >= 2 else 0.0))
        out[name] = sorted(set(curve))
    return out
