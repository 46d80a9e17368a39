"""Distillation losses (how far a network's outputs are from its teacher's) and the automatic
choice among them.

Every choice :func:`torchinn.compress` makes (sizes, starts, screening) and both tuning stages
measure the same :class:`Distillation`: ``"mse"`` (squared error of every floating output),
``"mse-channels"`` (the same, each output channel weighted by the inverse of the teacher's mean
square there: :mod:`torchinn.training.channels`) or ``"kl"`` at a temperature ``T`` (Hinton et al.: ``T**2`` times the KL divergence of the
teacher's softmax at ``T`` to the output's).

**Why a temperature.** A classifier that is confident on its calibration data puts a
probability of ``1 - 1e-12`` on its class: at ``T = 1`` the KL divergence of every candidate is
then about ``1e-12``, float noise, and the choices are made by it. ``loss="auto"`` therefore
reads the teacher's outputs on the calibration batches once (:func:`resolve_loss`):

* outputs that are not class logits (:func:`loss_kind`: not ``(batch, classes)`` or
  ``(batch, positions, classes)``, or a softmax that is nearly uniform or never changes its top
  class, as regression scores and embeddings give): ``"mse"``, or ``"mse-channels"`` when the
  RMS of their channels spans more than :data:`~torchinn.training.channels.CHANNEL_SPREAD`
  (boxes in pixels beside scores in ``[0, 1]``) and those scales belong to the channels, not to
  the data (:data:`~torchinn.training.channels.CHANNEL_DRIFT`: CREPE's pitch bins are loud where
  the sounds' pitches fall);
* class logits: ``"kl"`` at the temperature where the teacher's mean top probability on the
  calibration batches falls to :data:`CONFIDENCE` (0.9; found by bisection on the cached
  logits, :func:`fit_temperature`), and at ``T = 1`` when it is already at most that (a teacher
  that is not over-confident is distilled as before). At that temperature the probabilities of
  the classes after the first carry a tenth of the mass, so a candidate that shifts them is
  seen, while the loss still ignores what softmax ignores (adding a constant to every logit);
* class logits that stay saturated even at :data:`MAX_TEMPERATURE` (logit gaps of thousands):
  ``"mse"`` on the logits. As ``T`` grows, ``T**2`` KL tends to the squared error of the
  centred logits over twice the number of classes (Hinton et al. 2015, section 2.1), so this is
  the limit of the same loss, without a temperature that float64 would have to resolve.

>>> import torch
>>> logits = [torch.tensor([[40.0, 0.0, 0.0], [0.0, 40.0, 0.0]])]  # saturated: top probability 1
>>> loss = resolve_loss("auto", logits)
>>> loss.kind, round(loss.temperature, 2), round(mean_confidence(logits, loss.temperature), 3)
('kl', 13.84, 0.9)
>>> resolve_loss("auto", [torch.tensor([[0.5, 0.0, 0.0]])]).temperature  # not confident: T = 1
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils import _pytree as pytree

from ..model.inputs import Inputs, padding_mask, position_mask
from ..options import check_choice, check_number
from .channels import CHANNEL_DRIFT, CHANNEL_SPREAD, channel_weights, format_spread, scale_drift, weighted_squared_error

__all__ = ["CONFIDENCE", "Distillation", "LOGIT_ENTROPY", "LOSS_CHOICES", "MAX_TEMPERATURE", "MIN_ROWS",
           "distillation_loss", "fit_temperature", "kl_distillation_loss", "loss_kind", "mean_confidence",
           "resolve_loss"]

#: the kinds of :class:`Distillation`; a ``loss=`` option also takes ``"auto"`` (:func:`resolve_loss`)
KINDS = ("mse", "mse-channels", "kl")
LOSS_CHOICES = ("auto", *KINDS)
#: ``loss="auto"`` distils class logits at the temperature where the teacher's mean top
#: probability on the calibration batches is this (``T = 1`` when it already is at most this)
CONFIDENCE = 0.9
#: above this temperature, logits that are still saturated are compared by squared error
MAX_TEMPERATURE = 1000.0
#: :func:`fit_temperature` reads at most this many logits of the calibration outputs
FIT_ELEMENTS = 2**22
#: outputs whose softmax has a mean entropy above this fraction of the uniform one's are not taken
#: for class logits (scores and regression outputs sit near 1.0, classifiers' logits well below:
#: docs/decisions/compress-constants.md)
LOGIT_ENTROPY = 0.9
#: outputs whose top class is the same on this many rows or more are not taken for class logits
MIN_ROWS = 4


def _leaves(output: Any) -> list[Tensor]:
    return [o for o in pytree.tree_leaves(output) if isinstance(o, Tensor) and o.is_floating_point()]


def _mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """The mean of ``x``, over the positions ``mask`` keeps (:func:`position_mask`) when given;
    what padded positions hold (even NaN) does not count."""
    if mask is None:
        return x.mean()
    kept = mask.expand_as(x) != 0
    return torch.where(kept, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum() / kept.sum().clamp_min(1)


def distillation_loss(output: Any, batch: Any, teacher_output: Any) -> Tensor:
    """Mean squared error between the outputs and the teacher's, over every output tensor; an
    output with a value per position leaves out the positions the batch's ``attention_mask``
    marks as padding (:func:`torchinn.model.inputs.padding_mask`)."""
    mask = padding_mask(batch)
    losses = [F.mse_loss(o, t) if mask is None else _mean((o - t) ** 2, position_mask(mask, o))
              for o, t in zip(_leaves(output), _leaves(teacher_output))]
    if not losses:
        raise ValueError("the model has no floating-point outputs to distil")
    return torch.stack(losses).sum()


class _KLRows(torch.autograd.Function):
    """Per row (every dimension but the last), the KL divergence from ``softmax(r / t)`` to
    ``softmax(o / t)``, in float64, computed over :func:`_row_chunks` of rows at a time; the
    backward pass recomputes the softmaxes chunk by chunk, so that neither pass holds float64
    copies of the whole of ``o`` and ``r`` (a language model's logits: 4 x 256 x 49,152 floats are
    201 MB, their float64 softmaxes 0.4 GB each)."""

    @staticmethod
    def forward(ctx: Any, o: Tensor, r: Tensor, t: float) -> Tensor:
        ctx.save_for_backward(o, r)
        ctx.t = t
        o2, r2 = o.detach().reshape(-1, o.shape[-1]), r.detach().reshape(-1, r.shape[-1])
        out = torch.empty(o2.shape[0], dtype=torch.float64, device=o.device)
        for i in _row_chunks(o2):
            out[i] = F.kl_div(F.log_softmax(o2[i].double() / t, -1), F.log_softmax(r2[i].double() / t, -1),
                              log_target=True, reduction="none").sum(-1)
        return out.reshape(o.shape[:-1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        o, r = ctx.saved_tensors
        t = ctx.t
        o2, r2, g = o.reshape(-1, o.shape[-1]), r.reshape(-1, r.shape[-1]), grad.reshape(-1, 1).double()
        go = torch.empty_like(o2) if ctx.needs_input_grad[0] else None
        gr = torch.empty_like(r2) if ctx.needs_input_grad[1] else None
        for i in _row_chunks(o2):
            lo, lr = F.log_softmax(o2[i].double() / t, -1), F.log_softmax(r2[i].double() / t, -1)
            if go is not None:  # d KL / d o = (p_o - p_r) / t
                go[i] = (g[i] * (lo.exp() - lr.exp()) / t).to(go.dtype)
            if gr is not None:  # d KL / d r = p_r (log p_r - log p_o - KL) / t
                kl = (lr.exp() * (lr - lo)).sum(-1, keepdim=True)
                gr[i] = (g[i] * lr.exp() * (lr - lo - kl) / t).to(gr.dtype)
        return (None if go is None else go.reshape(o.shape)), (None if gr is None else gr.reshape(r.shape)), None


#: the KL divergence is computed over at most this many bytes of float64 logits at a time
KL_CHUNK_BYTES = 32 * 2**20


def _row_chunks(rows: Tensor) -> list[slice]:
    """Slices of the rows of a ``(rows, classes)`` tensor, :data:`KL_CHUNK_BYTES` of float64 each."""
    step = max(1, KL_CHUNK_BYTES // (8 * max(1, rows.shape[-1])))
    return [slice(i, i + step) for i in range(0, rows.shape[0], step)]


def kl_distillation_loss(output: Any, batch: Any, teacher_output: Any, temperature: float = 1.0) -> Tensor:
    """``temperature**2`` times the KL divergence from the teacher's softmax at ``temperature``
    to the output's (over the last dimension; Hinton et al.'s distillation), summed over every
    output tensor: for class logits, where it follows accuracy far better than the squared error
    (which punishes a uniform shrink of the logits that leaves every prediction as it was).
    Averaged over rows; per-position logits leave out the positions the batch's
    ``attention_mask`` marks as padding. Computed in float64 over chunks of rows
    (:data:`KL_CHUNK_BYTES`), its gradient too: a language model's logits are not copied whole."""
    # in float64: near the optimum float32 rounding makes the sum of p_t (log p_t - log p_s) come
    # out slightly negative
    t = float(temperature)
    mask = padding_mask(batch)
    losses = []
    for o, r in zip(_leaves(output), _leaves(teacher_output)):
        m = position_mask(mask, o)
        rows = _KLRows.apply(o, r, t)
        kl = rows.sum() / max(1, o[..., 0].numel()) if m is None else _mean(rows, m[..., 0])
        losses.append((kl * (t * t)).clamp_min(0.0).to(o.dtype))
    if not losses:
        raise ValueError("the model has no floating-point outputs to distil")
    return torch.stack(losses).sum()


def loss_kind(output: Any) -> str:
    """``"kl"`` for class logits, else ``"mse"``: the kind ``loss="auto"`` picks (before the
    saturation check of :func:`resolve_loss`). ``output`` is one output or, as
    :func:`resolve_loss` passes it, a list of them (one per calibration batch).

    Every floating output must look like class logits over its last axis: ``(batch, classes)``
    or ``(batch, positions, classes)`` (per-token logits) with ``classes >= 2``, whose softmax
    carries a decision: a mean entropy at most :data:`LOGIT_ENTROPY` of the uniform one's, and,
    over at least :data:`MIN_ROWS` rows, more than one top class and a negative value somewhere
    (logits are defined up to a shift: boxes in pixels and sigmoid scores, a YOLO head's
    ``(batch, 4 + classes, anchors)``, are not). Scores that a softmax would
    flatten (three quality ratings near 1.0 each, probabilities in ``[0, 1]``, small embeddings)
    or whose top class never changes (an embedding with one large coordinate) are compared by
    squared error, which keeps their level; where a softmax is nearly uniform the KL divergence
    is that squared error without the mean, so little is lost if they were logits after all.
    """
    return "mse" if _not_logits(output if isinstance(output, list) else [output]) else "kl"


def _not_logits(outputs: list[Any]) -> str:
    """Why the outputs (one per batch) are not class logits (:func:`loss_kind`), or ``""``."""
    per_batch = [_leaves(o) for o in outputs]
    if not per_batch or not per_batch[0]:
        return "no floating outputs"
    for leaves in zip(*per_batch):
        shape = tuple(leaves[0].shape)
        if not all(o.ndim in (2, 3) and o.shape[-1] >= 2 for o in leaves):
            return f"an output of shape {shape} is not (batch, classes) or (batch, positions, classes)"
        classes = leaves[0].shape[-1]
        non_negative = all(bool((o >= 0).all()) for o in leaves)
        if non_negative and all(
                bool(((_per_row(o, lambda x: x.double().sum(-1)) - 1).abs() <= 1e-3).all()) for o in leaves):
            return (f"an output of shape {shape} is already probabilities (every row is non-negative and sums "
                    f"to 1): a softmax of them would flatten them")
        per_row = torch.cat([_per_row(o, lambda x: _entropy(torch.log_softmax(x.double(), -1))) for o in leaves])
        entropy = float(per_row.mean()) / math.log(classes)
        if entropy > LOGIT_ENTROPY:
            return (f"the softmax of an output of shape {shape} is nearly uniform (entropy {entropy:.4f} of "
                    f"the uniform one's, above {LOGIT_ENTROPY:g})")
        tops = torch.cat([_per_row(o, lambda x: x.argmax(-1)) for o in leaves])
        if len(tops) >= MIN_ROWS and bool((tops == tops[0]).all()):
            return f"an output of shape {shape} has the same top class on all {len(tops)} rows"
        if len(tops) >= MIN_ROWS and non_negative:  # logits are defined up to a shift and take both signs;
            # boxes, scores after a sigmoid, counts and intensities do not (a YOLO head's (batch, 4 + classes, anchors))
            return (f"an output of shape {shape} has no negative value on {len(tops)} rows (scores, boxes or "
                    f"intensities, not logits)")
    return ""


def _entropy(logp: Tensor) -> Tensor:
    return -(logp.exp() * logp).sum(-1)


def _per_row(o: Tensor, fn: Any) -> Tensor:
    """``fn`` of the rows of ``o`` (every dimension but the last), applied to
    :data:`KL_CHUNK_BYTES` of float64 rows at a time (a language model's logits are not copied
    whole), as one flat tensor."""
    rows = o.detach().reshape(-1, o.shape[-1])
    return torch.cat([fn(rows[i]) for i in _row_chunks(rows)]) if len(rows) else fn(rows)


def mean_confidence(reference: Sequence[Any], temperature: float = 1.0) -> float:
    """The mean top probability of the softmax at ``temperature`` over every row of every
    floating output in ``reference`` (a list of outputs, one per batch)."""
    tops = [_per_row(o, lambda x: torch.softmax(x.double() / temperature, -1).amax(-1))
            for out in reference for o in _leaves(out)]
    return float(torch.cat(tops).mean()) if tops else 0.0


def _fit_rows(reference: Sequence[Any]) -> list[Tensor]:
    """The rows of every floating output in ``reference``, every ``k``-th one so that at most
    :data:`FIT_ELEMENTS` values are kept in all, in float64 less their maximum (a mean over rows
    needs no more; a recognizer's 8210 classes at 64 positions spent 9.9 s of a 30 s bound here)."""
    rows = [o.detach().reshape(-1, o.shape[-1]) for out in reference for o in _leaves(out) if o.dim()]
    step = max(1, math.ceil(sum(r.numel() for r in rows) / FIT_ELEMENTS))
    rows = [r[::step].double() for r in rows if r.numel()]
    return [r - r.amax(-1, keepdim=True) for r in rows]


def fit_temperature(reference: Sequence[Any], confidence: float = CONFIDENCE,
                    high: float = MAX_TEMPERATURE) -> float | None:
    """The temperature in ``[1, high]`` at which :func:`mean_confidence` of ``reference`` is
    ``confidence`` (1 when it is at most that at 1), or ``None`` when it is still above it at
    ``high``. Bisection on ``log T`` (the mean top probability falls as ``T`` grows), on at most
    :data:`FIT_ELEMENTS` logits (rows evenly spaced)."""
    rows = _fit_rows(reference)

    def top(t: float) -> float:  # the softmax's top probability is 1 / sum(exp((x - max) / T))
        return float(torch.cat([1.0 / torch.exp(r / t).sum(-1) for r in rows]).mean()) if rows else 0.0
    if top(1.0) <= confidence:
        return 1.0
    if top(high) > confidence:
        return None
    lo, hi = 0.0, math.log(high)
    for _ in range(40):  # |log T| known to 1e-11 of log(high)
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if top(math.exp(mid)) > confidence else (lo, mid)
    return math.exp(hi)


@dataclass(frozen=True)
class Distillation:
    """A distillation loss: ``kind`` ``"mse"``, ``"mse-channels"`` (with ``weights``, one vector
    of channel weights per floating output: :func:`~torchinn.training.channels.channel_weights`)
    or ``"kl"`` (at ``temperature``; see the module).

    Called as ``loss(output, batch, teacher_output)`` it is the training loss of the tuning
    stages; :meth:`error` is the float the choices compare (``"mse"``: the squared error relative
    to the teacher's mean square, per output; ``"mse-channels"`` and ``"kl"``: the loss itself,
    the first already relative per channel). ``note`` says why
    ``"auto"`` chose it (shown in :class:`torchinn.CompressReport`).
    """

    kind: str = "mse"
    temperature: float = 1.0
    note: str = ""
    weights: tuple[Tensor, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        check_choice(self.kind, KINDS, "loss")
        check_number(self.temperature, "temperature", 0, low_open=True)
        if (self.kind == "mse-channels") != bool(self.weights):
            raise ValueError(f"Distillation('{self.kind}') takes " + (
                "the channel weights of the teacher's outputs (resolve_loss('mse-channels', reference) makes them)"
                if self.kind == "mse-channels" else "no channel weights (they are for 'mse-channels')"))

    def __call__(self, output: Any, batch: Any, teacher_output: Any) -> Tensor:
        if self.kind == "kl":
            return kl_distillation_loss(output, batch, teacher_output, self.temperature)
        if self.kind == "mse-channels":
            return weighted_squared_error(output, batch, teacher_output, self.weights)
        return distillation_loss(output, batch, teacher_output)

    def error(self, output: Any, reference: Any, mask: Tensor | None = None) -> float:
        """``mask``: the batch's ``attention_mask`` (:func:`torchinn.model.inputs.padding_mask`),
        whose padded positions are left out."""
        batch = None if mask is None else Inputs((), {"attention_mask": mask})
        if self.kind == "kl":
            return float(kl_distillation_loss(output, batch, reference, self.temperature))
        if self.kind == "mse-channels":
            return float(weighted_squared_error(output, batch, reference, self.weights))
        if mask is None:
            return sum(float(((o - r) ** 2).mean() / (r**2).mean().clamp_min(1e-12))
                       for o, r in zip(_leaves(output), _leaves(reference)))
        return sum(float(_mean((o - r) ** 2, position_mask(mask, o))
                         / _mean(r**2, position_mask(mask, o)).clamp_min(1e-12))
                   for o, r in zip(_leaves(output), _leaves(reference)))

    def __str__(self) -> str:
        what = f"kl at temperature {self.temperature:.4g}" if self.kind == "kl" else self.kind
        return what + (f" ({self.note})" if self.note else "")


def _unpadded(reference: Sequence[Any], masks: Sequence[Tensor | None]) -> list[Any]:
    """The floating outputs of each batch, each with a vector per position cut down to the
    positions its mask keeps (``(kept positions, ...)``)."""
    out = []
    for ref, mask in zip(reference, masks):
        leaves = _leaves(ref)
        kept = [position_mask(mask, o) for o in leaves]
        out.append([o if m is None else o[(m.reshape(m.shape[:2]) != 0)] for o, m in zip(leaves, kept)])
    return out


def _weighted_note(spread: float) -> str:
    return f"mse weighted per output channel: their scales span {format_spread(spread)}x"


def resolve_loss(loss: str | Distillation, reference: Sequence[Any], temperature: float | None = None,
                 masks: Sequence[Tensor | None] | None = None) -> Distillation:
    """The :class:`Distillation` that ``loss`` (``"auto"``, ``"mse"``, ``"mse-channels"``, ``"kl"``
    or one already resolved, returned as it is) means for a teacher whose outputs on the calibration batches are
    ``reference``. ``temperature`` fixes the temperature of ``"kl"`` (and of ``"auto"`` for class
    logits); ``None`` fits it (:func:`fit_temperature`). ``"kl"`` with logits that stay saturated
    at :data:`MAX_TEMPERATURE` keeps that temperature; ``"auto"`` then compares the logits by
    squared error. ``masks`` (one ``attention_mask`` or ``None`` per batch of ``reference``) leave
    the outputs at padded positions out of these choices. ``"mse-channels"`` (and ``"auto"`` on
    outputs that are not class logits and whose channels' RMS spans more than
    :data:`~torchinn.training.channels.CHANNEL_SPREAD`) weighs the channels by the teacher's
    outputs in ``reference`` (:mod:`torchinn.training.channels`)."""
    if isinstance(loss, Distillation):
        return loss
    check_choice(loss, LOSS_CHOICES, "loss")
    padded = reference
    if masks is not None and any(m is not None for m in masks):
        reference = _unpadded(reference, masks)
    if temperature is not None:
        check_number(temperature, "temperature", 0, low_open=True)
        if loss == "mse-channels":
            raise ValueError(f"temperature={temperature!r} applies to the 'kl' loss (and 'auto' on class logits); "
                             "loss='mse-channels' compares the outputs directly: leave temperature None")
    if loss == "mse-channels":
        weights, spread = channel_weights(padded, masks)
        return Distillation("mse-channels", note=_weighted_note(spread), weights=tuple(weights))
    why = _not_logits(list(reference)) if loss == "auto" else ""
    if why:
        try:
            weights, spread = channel_weights(padded, masks)
        except ValueError:  # outputs of varying channels, or all zero: the plain squared error
            weights, spread = [], 1.0
        drift = scale_drift(padded, masks) if spread > CHANNEL_SPREAD else 1.0
        if spread > CHANNEL_SPREAD and drift <= CHANNEL_DRIFT:
            return Distillation("mse-channels", note=f"auto: not class logits, {why}; " + _weighted_note(spread),
                                weights=tuple(weights))
        if spread > CHANNEL_SPREAD:  # the scales follow the data (pitch bins), not the channels
            why += (f"; its channels' scales span {format_spread(spread)}x but move with the data (the median "
                    f"channel's differs {format_spread(drift)}x between halves of the batches), so not weighted")
    if loss == "mse" or why:
        return Distillation("mse", note=f"auto: not class logits, {why}" if why else "")
    if temperature is not None:
        return Distillation("kl", temperature)
    top = mean_confidence(reference, 1.0)
    fitted = fit_temperature(reference)
    if fitted is None:
        note = (f"the teacher's mean top probability is {top:.6g} at temperature 1 and stays above "
                f"{CONFIDENCE:g} up to {MAX_TEMPERATURE:g}")
        if loss == "kl":
            return Distillation("kl", MAX_TEMPERATURE, note)
        return Distillation("mse", note="auto: " + note)
    if fitted == 1.0:
        note = f"the teacher's mean top probability is {top:.4g}, at most {CONFIDENCE:g}"
    else:
        note = (f"the teacher's mean top probability on the calibration batches is {top:.6g} at temperature 1, "
                f"{CONFIDENCE:g} at {fitted:.4g}")
    return Distillation("kl", fitted, ("auto: " if loss == "auto" else "") + note)
