"""The squared error weighted per output channel (``loss="mse-channels"``), and when
``loss="auto"`` uses it.

The plain squared error sums the outputs' squared differences: where the outputs mix scales it
sees the large ones only. A YOLOv8 head's ``(batch, 4 + classes, anchors)`` holds boxes in pixels
beside sigmoid scores in ``[0, 1]``; on NudeNet's the boxes held all but ``3.6e-8`` of the
squared values, so every choice and tuning step was judged on the boxes alone, and tuning took the
detections' F1 to 0 (benchmarks/RESULTS.md, "Unseen networks III"). The same holds for a depth
head beside a mask, or logits beside a regression.

**Channels.** Dimension 1 of an output of 3 or more dimensions (``(batch, channels, ...)``), the
last of a 2-D one (``(batch, features)``); a 0-D or 1-D output is one channel; separate output
tensors are channels too. :func:`channel_scales` measures each channel's mean square on the
teacher's outputs over the calibration batches (padded positions left out, as the loss does).

**Weights.** Each channel's squared error is divided by its teacher mean square, floored at
:data:`CHANNEL_FLOOR` times the loudest channel's (RMS: 1e-4 of it). A channel quieter than that
on the calibration data is counted as if it were that loud, so it does not explode: the score of a
class that never shows in a YOLO head (sigmoid outputs near 1e-4) has its error counted against
1e-4 of the boxes' RMS (0.03 for boxes in pixels), not against its own near-zero level, where
every candidate's noise would look like a 100% error. The loss of one output is then the mean
over its channels of their relative squared errors; the outputs' are summed, as the plain loss
sums them. ``loss="auto"`` weighs the outputs that are not class logits so when the RMS of the
loudest channel is more than :data:`CHANNEL_SPREAD` times that of the quietest one (counted at
the floor when below it; channels below :data:`CHANNEL_SILENT` of the loudest, silent on the
calibration data, do not count: :func:`channel_weights`); otherwise the loss is the plain squared
error, exactly as before.

>>> import torch
>>> boxes_and_scores = [torch.cat([300 * torch.rand(2, 4, 5), torch.rand(2, 3, 5)], 1)]
>>> weights, spread = channel_weights(boxes_and_scores)
>>> spread > CHANNEL_SPREAD, tuple(weights[0].shape)
(True, (7,))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from ..model.inputs import padding_mask, position_mask

__all__ = ["CHANNEL_DRIFT", "CHANNEL_FLOOR", "CHANNEL_SILENT", "CHANNEL_SPREAD", "channel_scales", "channel_weights",
           "format_spread", "scale_drift", "weight_shaped", "weighted_squared_error"]

#: ``loss="auto"`` weighs the squared error per channel when the loudest channel's RMS is more than
#: this many times the quietest's (of the channels above :data:`CHANNEL_FLOOR`): images, audio,
#: scores and embeddings stay within it, boxes in pixels beside probabilities are 10^4 apart
CHANNEL_SPREAD = 30.0
#: a channel's mean square is floored at this share of the loudest channel's (RMS: 1e-4 of it)
CHANNEL_FLOOR = 1e-8
#: channels whose mean square is at most this share of the loudest's (RMS 1e-6) are silent on the
#: calibration data: they do not count in the spread (a dead channel of an image does not make
#: its network weigh channels)
CHANNEL_SILENT = 1e-12
#: ``loss="auto"`` weighs the channels only when their scales belong to the channels, not to the
#: data: measured on each half of the calibration batches, the median channel's mean square
#: differs by at most this factor (:func:`scale_drift`). Boxes beside scores keep their scales
#: whatever the photos; the 360 pitch bins of CREPE are loud where the sounds' pitches fall, so a
#: bin quiet on one half is loud on the other, and weights fitted on one half blow up on the other
CHANNEL_DRIFT = 10.0


def _leaves(output: Any) -> list[Tensor]:
    return [o for o in pytree.tree_leaves(output) if isinstance(o, Tensor) and o.is_floating_point()]


def _per_channel(x: Tensor) -> Tensor:
    """The sum of ``x`` per channel (module docstring), as a float64 vector."""
    x = x.double()
    if x.ndim <= 1:
        return x.sum().reshape(1)
    if x.ndim == 2:
        return x.sum(0)
    return x.transpose(0, 1).reshape(x.shape[1], -1).sum(1)


def weight_shaped(w: Tensor, o: Tensor) -> Tensor:
    """The channel weights ``w`` shaped to multiply ``o``."""
    w = w.to(device=o.device, dtype=o.dtype)
    if o.ndim <= 1:
        return w.reshape(())
    return w.reshape(1, -1) if o.ndim == 2 else w.reshape(1, -1, *([1] * (o.ndim - 2)))


def channel_scales(reference: Sequence[Any], masks: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """Per floating output, the teacher's mean square of each channel over ``reference`` (the
    outputs on each calibration batch; ``masks``, one ``attention_mask`` or ``None`` per batch,
    leave the padded positions out): float64 vectors. ``ValueError`` when the outputs of the
    batches differ in their number of outputs or of channels (positions of varying length)."""
    sums: list[Tensor] = []
    counts: list[Tensor] = []
    for k, out in enumerate(reference):
        mask = masks[k] if masks is not None else None
        leaves = _leaves(out)
        if k and len(leaves) != len(sums):
            raise ValueError(f"the teacher's outputs on calibration batch {k} are {len(leaves)} floating tensors, "
                             f"on batch 0 {len(sums)}: their channels cannot be weighed")
        for i, o in enumerate(leaves):
            m = position_mask(mask, o)
            kept = torch.ones_like(o) if m is None else m.expand_as(o)
            sq = (o.detach().double() ** 2) * kept.double()
            s, c = _per_channel(sq), _per_channel(kept)
            if k and s.shape != sums[i].shape:
                raise ValueError(f"output {i} has {s.numel()} channels on calibration batch {k} and "
                                 f"{sums[i].numel()} on batch 0 (shape {tuple(o.shape)}): its channels cannot be weighed")
            if k:
                sums[i], counts[i] = sums[i] + s.cpu(), counts[i] + c.cpu()
            else:
                sums.append(s.cpu())
                counts.append(c.cpu())
    return [s / c.clamp_min(1) for s, c in zip(sums, counts)]


def channel_weights(reference: Sequence[Any], masks: Sequence[Tensor | None] | None = None
                    ) -> tuple[list[Tensor], float]:
    """The weight of every channel of every floating output (the inverse of its floored teacher
    mean square, :func:`channel_scales`), and the spread of the channels' RMS: the loudest over
    the quietest one that is not silent, at least the floor (1 when fewer than two are not
    silent). ``ValueError`` when every
    output is zero on the calibration batches (no scale to weigh by)."""
    scales = channel_scales(reference, masks)
    if not scales:
        raise ValueError("the model has no floating-point outputs to distil")
    every = torch.cat(scales)
    loud = float(every.max())
    if not loud > 0 or not math.isfinite(loud):
        raise ValueError(f"the teacher's outputs have a largest channel mean square of {loud:g} on the calibration "
                         "batches: per-channel weights need a positive, finite one")
    floor = CHANNEL_FLOOR * loud
    audible = every[every > CHANNEL_SILENT * loud]
    spread = math.sqrt(loud / max(floor, float(audible.min()))) if audible.numel() >= 2 else 1.0
    return [1.0 / s.clamp_min(floor) for s in scales], spread


def scale_drift(reference: Sequence[Any], masks: Sequence[Tensor | None] | None = None) -> float:
    """How much the channels' scales depend on the data: the median, over the channels not silent
    on either half, of the ratio of their mean squares on the first half of the batches of
    ``reference`` and on the second (the larger over the smaller, each floored as
    :func:`channel_weights` floors them). One batch is cut in two halves of its rows (``compress``
    may choose on one); 1.0 when that cannot be done (a row, or outputs without a batch)."""
    masks = list(masks) if masks is not None else [None] * len(reference)
    if len(reference) == 1:
        leaves = pytree.tree_leaves(reference[0])
        rows = {int(o.shape[0]) for o in leaves if isinstance(o, Tensor) and o.ndim}
        if len(rows) != 1 or min(rows) < 2 or any(isinstance(o, Tensor) and not o.ndim for o in leaves):
            return 1.0
        n = rows.pop() // 2
        cut = lambda x, part: x if not isinstance(x, Tensor) else (x[:n] if part == 0 else x[n:])
        reference = [pytree.tree_map(lambda x: cut(x, k), reference[0]) for k in (0, 1)]
        masks = [None if masks[0] is None else cut(masks[0], k) for k in (0, 1)]
    if len(reference) < 2:
        return 1.0
    half = len(reference) // 2
    parts = [channel_scales(reference[:half], masks[:half]), channel_scales(reference[half:], masks[half:])]
    a, b = (torch.cat(p) for p in parts)
    loud = float(torch.maximum(a, b).max())
    if not loud > 0 or not math.isfinite(loud):
        return 1.0
    audible = (a > CHANNEL_SILENT * loud) | (b > CHANNEL_SILENT * loud)
    if not bool(audible.any()):
        return 1.0
    a, b = a[audible].clamp_min(CHANNEL_FLOOR * loud), b[audible].clamp_min(CHANNEL_FLOOR * loud)
    return float(torch.maximum(a / b, b / a).median())


def format_spread(spread: float) -> str:
    """``4.1e5`` for 410,000, ``37`` for 37.2: the spread as the loss note shows it."""
    text = f"{spread:.2g}"
    return text.replace("e+0", "e").replace("e+", "e")


def weighted_squared_error(output: Any, batch: Any, teacher_output: Any, weights: Sequence[Tensor]) -> Tensor:
    """Per floating output, the mean of the squared error times its channel's weight (with the
    weights of :func:`channel_weights`, the mean over channels of their relative squared errors),
    summed over the outputs; an output with a value per position leaves out the positions the
    batch's ``attention_mask`` marks as padding."""
    mask = padding_mask(batch)
    outs, refs = _leaves(output), _leaves(teacher_output)
    if len(refs) != len(weights):
        raise ValueError(f"the loss weighs {len(weights)} floating outputs, the teacher gave {len(refs)}")
    losses = []
    for i, (o, r, w) in enumerate(zip(outs, refs, weights)):
        shaped = weight_shaped(w, o)
        channels = 1 if o.ndim <= 1 else o.shape[1 if o.ndim >= 3 else -1]
        if channels != w.numel():
            raise ValueError(f"output {i} of shape {tuple(o.shape)} has {channels} channels; the loss weighs "
                             f"{w.numel()} (those of the teacher's outputs on the calibration batches)")
        # in float32 at least: a weight of 1e8 (a score beside boxes in pixels) overflows float16
        dt = torch.promote_types(o.dtype, torch.float32)
        err = shaped.to(dt) * (o.to(dt) - r.to(dt)) ** 2
        m = position_mask(mask, o)
        if m is None:
            losses.append(err.mean().to(o.dtype))
        else:
            kept = m.expand_as(err) != 0
            losses.append((torch.where(kept, err, torch.zeros((), dtype=err.dtype, device=err.device)).sum()
                           / kept.sum().clamp_min(1)).to(o.dtype))
    if not losses:
        raise ValueError("the model has no floating-point outputs to distil")
    return torch.stack(losses).sum()
