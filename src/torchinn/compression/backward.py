"""The backward pass of the Fisher importance scores (:mod:`torchinn.compression.importance`) within a
memory bound.

A language model's batch is large where these scores look at it: its logits (4 x 256 tokens x
49,152 classes: 201 MB in float32) and the activations its forward pass saves for the backward
pass (about 0.5 GB per 256-token window on SmolLM2-135M, two to three times the model's float32
weights for a batch of 4). Two things bound them, without changing what is computed:

* :func:`cotangent` builds the random cotangent over chunks of rows (:data:`ROW_BYTES` of float64
  softmaxes at a time) with the same random draws as on the whole, where one float64 softmax of the
  logits alone would take 0.4 GB;
* :func:`fisher_batch` counts the bytes one sample's forward pass saves for its backward pass
  (:func:`saved_bytes`) and, when the batch would save more than :data:`BACKWARD_BYTES`, runs it
  in chunks of samples (:func:`sample_slice`), each forward and backward on its own: the
  per-sample terms are per sample and the weight-gradient sums add over samples, so the scores
  are the same to float rounding. (The batch is not started whole and stopped: an exception in
  the middle of a forward pass left the graph built so far alive.) Between its chunks it stops
  when the next would end past a deadline (the mean time of the chunks made): the samples done
  are scored as if measured alone (their squared sums times the factor :func:`fisher_batch` returns).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from . import clock as timer
from ..model.inputs import Inputs, batch_size, padding_mask, position_mask, run
from ..training.channels import weight_shaped
from ..training.distill import Distillation

__all__ = ["BACKWARD_BYTES", "ROW_BYTES", "cotangent", "fisher_batch", "forward_only", "sample_slice", "saved_bytes"]

#: a batch whose forward pass saves more than this many bytes for its backward pass (the
#: network's own tensors not counted) is run in chunks of samples
BACKWARD_BYTES = 512 * 2**20
#: the KL cotangent is built over at most this many bytes of float64 rows at a time
ROW_BYTES = 32 * 2**20


@contextlib.contextmanager
def saved_bytes(own: set[int]) -> Iterator[dict[str, int]]:
    """While inside, the tensors autograd would save for the backward pass are counted (each
    storage once while it lives, those in ``own`` not at all: the network's weights) and NOT
    saved: for a forward pass that is measured, never differentiated (nothing it computes keeps
    a reference to its graph, which is freed with its outputs). Yields ``{"bytes": count}``."""
    alive: dict[int, weakref.ref] = {}  # storage -> a tensor on it already counted, while it lives
    count = {"bytes": 0}

    def pack(t: Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in own:
            return
        held = alive.get(ptr)
        if held is None or held() is None:  # not counted, or freed and its memory used again
            alive[ptr] = weakref.ref(t)
            count["bytes"] += storage.nbytes()

    def unpack(_: None) -> Tensor:
        raise RuntimeError("a forward pass run inside saved_bytes() cannot be differentiated")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield count


def sample_slice(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start`` to ``stop`` of a batch: every tensor input whose first dimension is the
    batch size (that of the first tensor input) cut to those rows, the other inputs as they are."""
    n = batch_size(inputs)
    cut = lambda v: v[start:stop] if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n else v  # noqa: E731
    return Inputs(tuple(cut(v) for v in inputs), {name: cut(v) for name, v in inputs.kwargs.items()})


def _rows(n: int, classes: int) -> list[slice]:
    step = max(1, ROW_BYTES // (8 * max(1, classes)))
    return [slice(i, i + step) for i in range(0, n, step)]


def cotangent(ref: Tensor, loss: Distillation, gen: torch.Generator, dtype: Any, index: int = 0) -> Tensor:
    """A random cotangent (of ``dtype``) whose covariance is half the loss's Hessian at outputs
    equal to ``ref`` (floating output ``index`` of the network): for ``"kl"``, one class drawn
    per row from the teacher's probabilities at the loss's temperature, minus those
    probabilities, over ``sqrt(2 rows)``; for ``"mse"``, Gaussian noise over the square root of
    ``ref``'s sum of squares; for ``"mse-channels"``, Gaussian noise times the square root of each
    channel's weight over the number of values (:mod:`torchinn.training.channels`). The KL one is built
    :data:`ROW_BYTES` of rows at a time: its values and draws are those of the whole."""
    if loss.kind == "kl":
        rows = ref.detach().reshape(-1, ref.shape[-1])
        chunks = _rows(rows.shape[0], rows.shape[-1])
        p32 = torch.empty(rows.shape, dtype=torch.float32)  # the draws are made on the CPU, in float32
        for i in chunks:
            p32[i] = torch.softmax(rows[i].double() / loss.temperature, -1).cpu().float()
        draw = torch.multinomial(p32, 1, generator=gen).to(rows.device)
        del p32
        scale = (2 * max(1, ref[..., 0].numel())) ** 0.5
        out = torch.empty(rows.shape, dtype=dtype, device=rows.device)
        for i in chunks:
            p = torch.softmax(rows[i].double() / loss.temperature, -1)
            onehot = torch.zeros_like(p).scatter_(1, draw[i], 1.0)
            out[i] = ((onehot - p) / scale).to(dtype)
        return out.reshape(ref.shape)
    noise = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(ref.device)
    if loss.kind == "mse-channels":
        return (noise * (weight_shaped(loss.weights[index], noise) / max(1, ref.numel())).sqrt()).to(dtype)
    scale = (ref.detach().double() ** 2).mean().clamp_min(1e-12) * ref.numel()
    return (noise / scale.sqrt()).to(dtype)


def _floats(out: Any) -> list[Tensor]:
    return [o for o in pytree.tree_leaves(out) if isinstance(o, Tensor) and o.is_floating_point()]


def _backward(outs: Sequence[Tensor], cots: Sequence[Tensor], mask: Tensor | None) -> None:
    """The backward pass of ``sum(o * cotangent)`` over the outputs (padded positions left out),
    with the cotangents as the outputs' gradients: no product of the size of the outputs is made."""
    pairs = [(o, c if position_mask(mask, o) is None else c * position_mask(mask, o))
             for o, c in zip(outs, cots) if o.requires_grad]
    if not pairs:
        raise RuntimeError("no output of the network depends on its grouped weights")
    # each weight's gradient is read (and dropped) as soon as it is complete
    torch.autograd.backward([o for o, _ in pairs], [c for _, c in pairs])


def _squares(mode: Any, into: dict[str, Tensor]) -> None:
    for group, t in mode.taylor.items():  # per group, sum over samples of the squared per-sample terms
        sq = (t.cpu() ** 2).sum(0)
        into[group] = into[group] + sq if group in into else sq


def _variances(ref: Tensor, loss: Distillation) -> Tensor:
    """Per ``m``, the squared scale :func:`cotangent` divides by on the first ``m + 1`` samples of
    ``ref`` (float64, one value per sample)."""
    n = ref.shape[0]
    if loss.kind == "kl":
        rows = max(1, ref[..., 0].numel() // max(1, n))
        return 2.0 * torch.arange(1, n + 1, dtype=torch.float64) * rows
    per = (ref.detach().double() ** 2).reshape(n, -1).sum(1).cpu()
    size = ref[0].numel()
    counts = torch.arange(1, n + 1, dtype=torch.float64) * size
    if loss.kind == "mse-channels":  # the weights stay; the number of values divided by grows
        return counts
    return torch.maximum(torch.cumsum(per, 0), 1e-12 * counts)


def _leading(b: Inputs, ref: Any, k: int) -> tuple[Inputs, Any]:
    n = batch_size(b)
    cut = lambda t: t[:k] if isinstance(t, Tensor) and t.ndim and t.shape[0] == n else t  # noqa: E731
    return sample_slice(b, 0, k), None if ref is None else pytree.tree_map(cut, ref)


def _probe(full: Any, b: Inputs, n: int) -> tuple[int, int]:
    """The bytes the forward pass of the smallest batch that runs (one sample, else two: a network
    exported with a guard against batch 1) saves for its backward pass, and that batch's size."""
    own = {t.untyped_storage().data_ptr() for t in [*full.parameters(), *full.buffers()]}
    for k in (1, 2):
        try:
            with torch.enable_grad(), saved_bytes(own) as count:
                run(full, sample_slice(b, 0, k))
            return count["bytes"], k
        except (RuntimeError, ValueError, AssertionError):  # refused at this batch size
            if k >= min(2, n):
                raise
    raise AssertionError("unreachable")


def fisher_batch(full: Any, b: Any, ref: Any, loss: Distillation, gen: torch.Generator, mode: Any,
                 chunk: list[Any], reading: Any, *, limit: int | None = None,
                 until: float | None = None) -> tuple[dict[str, Tensor], int, float]:
    """One batch's forward and backward passes: per group, the sum over samples of the squared
    per-sample terms (the weights' hooks add the producer-side sums), the samples measured and the
    factor that makes the squared sums of a batch stopped part way those of its samples measured
    alone (1 for a whole batch). The first batch of more than one sample is probed first: one
    sample's forward pass (two where the network refuses one), whose tensors saved for the
    backward pass are counted and dropped. When the batch would save more than
    :data:`BACKWARD_BYTES`, it runs in chunks of as many samples as fit (at least the probe's;
    ``chunk[0]``, and the probe's samples ``chunk[1]``, kept for the next batches; no chunk is
    smaller than the probe); the cotangents are drawn on the whole batch first, as without
    chunks, and a chunk after the first is not started when it would end past ``until`` (a
    :func:`~torchinn.compression.clock.now` value; at the mean time of the chunks made). A batch that does not
    run in chunks runs whole, or its first ``limit`` samples (a guess of what fits, when no time
    is measured yet)."""
    b = b if isinstance(b, Inputs) else Inputs(tuple(b))  # a tuple of positional inputs
    n = batch_size(b)
    if chunk[0] is None and n > 1:
        nbytes, chunk[1] = _probe(full, b, n)
        chunk[0] = chunk[1] * max(1, BACKWARD_BYTES // max(1, nbytes))
    k, least = chunk[0], chunk[1]
    limit = None if limit is None else max(limit, least)
    out_sums: dict[str, Tensor] = {}
    refs = None if ref is None else _floats(ref)
    if k is None or k >= n or (refs is not None and any(r.ndim == 0 or r.shape[0] != n for r in refs)):
        if limit is not None and 1 <= limit < n:
            b, ref = _leading(b, ref, limit)
            n, refs = limit, None if ref is None else _floats(ref)
            mode.mask = padding_mask(b)
        with torch.enable_grad(), mode:
            out = run(full, b)
        outs = _floats(out)
        cots = [cotangent(r, loss, gen, o.dtype, i) for i, (o, r) in enumerate(zip(outs, _floats(out) if refs is None
                                                                                   else refs))]
        reading()
        _backward(outs, cots, mode.mask)
        _squares(mode, out_sums)
        return out_sums, n, 1.0
    if refs is None:  # the cotangents need the outputs of the whole batch
        with torch.no_grad():
            refs = _floats(run(full, b))
        if any(r.ndim == 0 or r.shape[0] != n for r in refs):  # outputs not by sample: the whole batch
            return fisher_batch(full, b, None, loss, gen, mode, [n, chunk[1]], reading, limit=limit)
    cots = [cotangent(r, loss, gen, r.dtype, i) for i, r in enumerate(refs)]
    scales = [_variances(r, loss) for r in refs] if until is not None else []
    del refs
    done, took = 0, []
    starts = list(range(0, n, k))
    if len(starts) > 1 and n - starts[-1] < least:  # no last chunk smaller than a batch that runs
        starts.pop()
    for start, stop in zip(starts, starts[1:] + [n]):
        if until is not None and took and timer.now() + sum(took) / len(took) > until:
            break  # the next chunk would end past the deadline
        t0 = timer.now()
        part = sample_slice(b, start, stop)
        mode.taylor, mode.mask = {}, padding_mask(part)
        with torch.enable_grad(), mode:
            out = run(full, part)
        reading()
        _backward(_floats(out), [c[start:stop] for c in cots], mode.mask)
        del out
        _squares(mode, out_sums)
        done = stop
        took.append(timer.now() - t0)
    if done == n:
        return out_sums, n, 1.0
    # measured alone, the first samples' cotangents would be scaled for their own rows (for "kl" the
    # class draws of the first rows are the same): exact for one output, else the summed scales' ratio
    part = sum(float(v[done - 1]) for v in scales)
    return out_sums, done, sum(float(v[-1]) for v in scales) / part if part > 0 else 1.0


def forward_only(full: Any, mode: Any, batches: Sequence[tuple], seconds: float, result: Any) -> None:
    """Add the activation squares of ``batches`` to ``mode`` (importance's ``_Reads``), forward
    passes only (no gradients), while the next, at the mean time of those before it, ends within
    ``seconds`` (none when ``seconds <= 0``); ``result.activation_batches`` counts them."""
    t0 = timer.now()
    grads, mode.grads = mode.grads, False
    try:
        for b in batches:
            spent = timer.now() - t0
            done = result.activation_batches
            if (done and spent + spent / done > seconds) or (not done and seconds <= 0):
                break
            mode.mask = padding_mask(b)
            with torch.no_grad(), mode:
                run(full, b)
            result.activation_batches += 1  # an Importance
    finally:
        mode.grads = grads
