"""The importance pass and the distillation loss within a memory bound give what they gave whole:
a batch run in chunks of samples (:mod:`torchinn.compression.backward`) scores every channel as the
whole batch does, the KL cotangent built over chunks of rows is the whole one, and the KL loss
and its gradient computed over chunks of rows are those of the formula on whole tensors."""

from __future__ import annotations

import gc
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import converted

import torchinn.compression.backward as backward
import torchinn.training.distill as distill
from torchinn.compression.importance import measure_importance
from torchinn.model.inputs import Inputs, batch_size, position_mask
from torchinn.training.distill import Distillation, kl_distillation_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def _close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys() and a
    for g in a:
        scale = float(b[g].abs().max().clamp_min(1e-300))
        assert float((a[g] - b[g]).abs().max()) <= tol * scale, g


def _chunked(monkeypatch, imodel, batches, **kw):
    """measure_importance with a backward bound of 1 byte (chunks of one sample), and the sizes
    of the chunks it ran."""
    sizes = []
    real = backward.sample_slice

    def spy(inputs, start, stop):
        sizes.append(stop - start)
        return real(inputs, start, stop)

    monkeypatch.setattr(backward, "BACKWARD_BYTES", 1)
    monkeypatch.setattr(backward, "sample_slice", spy)
    return measure_importance(imodel, batches, **kw), sizes


@pytest.fixture(scope="module")
def llama():
    tf = pytest.importorskip("transformers")
    from torchinn_demo import lm

    import torchinn as inn

    model, _ = lm.load()
    ids = lm.windows(lm.tokens(lm.texts()[0]), 32)[:8]
    batches = []
    for i in range(0, 8, 4):
        x, mask = ids[i:i + 4].clone(), torch.ones(4, 32, dtype=torch.long)
        x[1, 20:], mask[1, 20:] = 0, 0  # right padding
        batches.append(Inputs((), dict(tf.BatchEncoding({"input_ids": x, "attention_mask": mask}))))
    imodel = inn.convert(model, batches[0], inn.ConvertConfig(permute=False))
    return imodel, batches


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_importance_in_chunks_of_samples_is_the_whole_batchs(llama, monkeypatch, kind):
    imodel, batches = llama
    loss = Distillation(kind, 2.0 if kind == "kl" else 1.0)
    teacher = imodel.shared_discrete().eval()
    with torch.no_grad():
        reference = [teacher(**batches[0].kwargs)]  # the first batch's outputs given, the second's not
    whole = measure_importance(imodel, batches, loss, reference, network=teacher)
    parts, sizes = _chunked(monkeypatch, imodel, batches, loss=loss, reference=reference, network=teacher)
    # one sample probed, then one at a time, for the second batch too
    assert sizes == [1] * 9
    assert whole.batches == parts.batches == 2
    _close(parts.fisher, whole.fisher, 1e-5)
    _close(parts.activation, whole.activation, 1e-6)
    assert all(bool((s > 0).any()) for s in whole.fisher.values())


def test_importance_in_chunks_on_a_cnn(monkeypatch):
    _, inputs, imodel = converted("resnet_basic")
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(inputs[0].shape, generator=g),) for _ in range(2)]
    whole = measure_importance(imodel, batches)
    parts, sizes = _chunked(monkeypatch, imodel, batches)
    n = inputs[0].shape[0]
    assert sizes == [1] * (2 * n + 1)
    _close(parts.fisher, whole.fisher, 1e-5)
    _close(parts.activation, whole.activation, 1e-6)


def test_a_batch_under_the_bound_is_not_cut(monkeypatch):
    _, inputs, imodel = converted("resnet_basic")
    cut = []
    real = backward.sample_slice
    monkeypatch.setattr(backward, "sample_slice", lambda x, i, j: cut.append((i, j)) or real(x, i, j))
    before = measure_importance(imodel, [inputs, inputs])
    assert cut == [(0, 1)] and before.batches == 2  # the probe of one sample only


def _live_bytes() -> int:
    gc.collect()
    seen, total = set(), 0
    for o in gc.get_objects():
        if issubclass(type(o), torch.Tensor) and o.device.type == "cpu":
            try:
                s = o.untyped_storage()
                s.data_ptr()
            except RuntimeError:  # fake tensors (export's) have no storage
                continue
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
    return total


def test_nothing_stays_alive_after_the_chunks(llama, monkeypatch):
    imodel, batches = llama
    teacher = imodel.shared_discrete().eval()
    monkeypatch.setattr(backward, "BACKWARD_BYTES", 300_000)  # chunks of a few samples
    measure_importance(imodel, batches, Distillation("kl"), network=teacher)
    before = _live_bytes()
    for _ in range(2):
        measure_importance(imodel, batches, Distillation("kl"), network=teacher)
    assert _live_bytes() == before


def test_the_kl_cotangent_in_chunks_of_rows_is_the_whole_one(monkeypatch):
    ref = torch.randn(3, 7, 50) * 4
    loss = Distillation("kl", 1.5)
    whole = backward.cotangent(ref, loss, torch.Generator().manual_seed(1), torch.float32)
    monkeypatch.setattr(backward, "ROW_BYTES", 8 * 50 * 2)  # two rows at a time
    parts = backward.cotangent(ref, loss, torch.Generator().manual_seed(1), torch.float32)
    assert torch.equal(whole, parts)
    assert whole.shape == ref.shape and float(whole.abs().sum()) > 0
    # one class drawn per row: each row sums to 0 (a one-hot minus probabilities)
    assert float(whole.sum(-1).abs().max()) < 1e-6


def _kl_whole(o, r, t, mask):
    """The loss on whole tensors, as it was computed before the chunks."""
    m = position_mask(mask, o)
    if m is None:
        kl = F.kl_div(F.log_softmax(o.double() / t, -1), F.log_softmax(r.double() / t, -1), log_target=True,
                      reduction="sum") / max(1, o[..., 0].numel())
    else:
        rows = F.kl_div(F.log_softmax(o.double() / t, -1), F.log_softmax(r.double() / t, -1), log_target=True,
                        reduction="none").sum(-1)
        kept = m[..., 0].expand_as(rows) != 0
        kl = torch.where(kept, rows, torch.zeros((), dtype=rows.dtype)).sum() / kept.sum()
    return (kl * t * t).clamp_min(0).to(o.dtype)


@pytest.mark.parametrize("shape", [(6, 40), (2, 9, 40)])
@pytest.mark.parametrize("masked", [False, True])
def test_the_kl_loss_in_chunks_of_rows_is_the_whole_loss(monkeypatch, shape, masked):
    monkeypatch.setattr(distill, "KL_CHUNK_BYTES", 8 * 40 * 4)  # four rows at a time
    g = torch.Generator().manual_seed(0)
    o = (torch.randn(shape, generator=g) * 3).requires_grad_()
    r = (torch.randn(shape, generator=g) * 3).requires_grad_()
    mask = None
    if masked and len(shape) == 3:
        mask = torch.ones(shape[:2], dtype=torch.long)
        mask[0, 5:] = 0
    batch = None if mask is None else Inputs((), {"attention_mask": mask})
    mine = kl_distillation_loss(o, batch, r, 2.5)
    want = _kl_whole(o, r, 2.5, mask)
    assert float(mine.detach()) == pytest.approx(float(want.detach()), rel=1e-6) and float(want.detach()) > 0.1
    for a, b in zip(torch.autograd.grad(mine, (o, r)), torch.autograd.grad(want, (o, r))):
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max())
        assert float(b.abs().max()) > 0


def test_the_choice_of_loss_over_chunks_of_rows_is_the_whole_ones(monkeypatch):
    g = torch.Generator().manual_seed(5)
    reference = [torch.randn(2, 9, 40, generator=g) * 20, torch.randn(2, 9, 40, generator=g) * 20]
    whole = distill.resolve_loss("auto", reference)
    confidence = distill.mean_confidence(reference, 1.7)
    monkeypatch.setattr(distill, "KL_CHUNK_BYTES", 8 * 40 * 4)  # four rows at a time
    parts = distill.resolve_loss("auto", reference)
    assert parts == whole and whole.kind == "kl" and whole.temperature > 1.0
    assert distill.mean_confidence(reference, 1.7) == confidence
    flat = [torch.zeros(2, 9, 40)]  # a uniform softmax: not class logits, in chunks too
    assert "nearly uniform" in distill.resolve_loss("auto", flat).note


def test_the_probe_counts_what_the_backward_pass_would_keep(llama):
    imodel, batches = llama
    teacher = imodel.shared_discrete().eval()
    for p in teacher.parameters():
        p.requires_grad_(True)
    own = {t.untyped_storage().data_ptr() for t in teacher.parameters()}
    one = backward.sample_slice(batches[0], 0, 1)
    kept, held = [], {}

    def pack(t):  # what a real forward pass keeps, each storage once (held here, so none is reused)
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own and ptr not in held:
            held[ptr] = t
            kept.append(t.untyped_storage().nbytes())

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        teacher(**one.kwargs)
    held.clear()
    with backward.saved_bytes(own) as count:
        teacher(**one.kwargs)
    for p in teacher.parameters():
        p.requires_grad_(False)
    assert sum(kept) > 100_000
    assert sum(kept) <= count["bytes"] <= 1.5 * sum(kept)


def test_a_batch_stopped_between_its_chunks_scores_its_samples_as_if_measured_alone(llama, monkeypatch):
    # a slow model (each chunk of one sample costs 1 s on a fake clock) with 2.5 s: two of the four
    # samples are measured; their scores are those of the same two samples measured alone
    imodel, batches = llama
    loss = Distillation("kl", 2.0)
    teacher = imodel.shared_discrete().eval()
    with torch.no_grad():
        reference = [teacher(**batches[0].kwargs)]
    now, real = [0.0], backward._backward

    def slow(*args):
        now[0] += 1.0
        return real(*args)

    monkeypatch.setattr(backward, "BACKWARD_BYTES", 1)  # chunks of one sample
    monkeypatch.setattr(backward, "_backward", slow)
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    part = measure_importance(imodel, batches, loss, reference, network=teacher, max_seconds=2.5)
    assert part.cut == (2, 4) and part.batches == 1 and now[0] == 2.0
    first = Inputs((), {k: v[:2] for k, v in batches[0].kwargs.items()})
    logits = reference[0].logits[:2]
    alone = measure_importance(imodel, [first], loss, [logits], network=teacher)
    assert alone.cut is None and now[0] == 4.0  # two more chunks, not stopped (no bound)
    _close(part.fisher, alone.fisher, 1e-5)
    _close(part.activation, alone.activation, 1e-6)  # (without the factor, the Fisher scores are half)


# a network exported with a guard against batch 1 (onnx2torch's PP-OCRv4 recognizer reshaped to
# batch x 40): the importance pass probed one sample and was skipped; it now probes two, and no
# chunk is smaller than what runs
@pytest.mark.parametrize("bound", [None, 1])
def test_a_network_that_refuses_one_sample_is_probed_with_two(monkeypatch, bound):
    _, inputs, imodel = converted("resnet_basic")
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn((5, *inputs[0].shape[1:]), generator=g),) for _ in range(2)]
    whole = measure_importance(imodel, batches)
    real, sizes = backward.run, []

    def guarded(network, b):
        n = batch_size(b if isinstance(b, Inputs) else Inputs(tuple(b)))
        if n == 1:
            raise RuntimeError("Guard failed: s0 != 1")
        sizes.append(n)
        return real(network, b)

    monkeypatch.setattr(backward, "run", guarded)
    if bound is not None:
        monkeypatch.setattr(backward, "BACKWARD_BYTES", bound)  # chunks of the probe's 2 samples
    parts = measure_importance(imodel, batches)
    # the probe of 2, then each batch of 5 whole, or (its outputs first, for the cotangents) in
    # chunks of 2 and a last one of 3, not 1
    assert sizes == ([2, 5, 5] if bound is None else [2, 5, 2, 3, 5, 2, 3])
    assert parts.batches == 2 and parts.cut is None
    _close(parts.fisher, whole.fisher, 1e-5)
    _close(parts.activation, whole.activation, 1e-6)


def test_after_the_first_chunk_only_weights_producing_a_group_no_layer_reads_compute_their_gradients(llama, monkeypatch):
    # the first chunk's backward pass computes every grouped weight's gradient; once it has shown which
    # groups a layer reads, only the weights that produce a group no layer reads keep them (none here),
    # and the scores are those with every gradient (NARROW_GRADIENTS=False)
    import torchinn.compression.importance as importance

    imodel, batches = llama
    loss = Distillation("kl", 2.0)
    teacher = imodel.shared_discrete().eval()
    names = {id(p): n for n, p in teacher.named_parameters()}
    was = [p.requires_grad for p in teacher.parameters()]
    calls: list[str] = []
    real = importance._producer_terms

    def spy(p, *args):
        calls.append(names[id(p)])
        return real(p, *args)

    monkeypatch.setattr(importance, "_producer_terms", spy)
    monkeypatch.setattr(importance, "NARROW_GRADIENTS", False)
    every, _ = _chunked(monkeypatch, imodel, batches, loss=loss, network=teacher)
    all_calls = list(calls)
    calls.clear()
    monkeypatch.setattr(importance, "NARROW_GRADIENTS", True)
    narrowed, sizes = _chunked(monkeypatch, imodel, batches, loss=loss, network=teacher)
    _close(narrowed.fisher, every.fisher, 1e-12)
    _close(narrowed.activation, every.activation, 1e-12)
    chunks = 8  # two batches of four samples, one at a time
    assert len(sizes) == chunks + 1 and len(all_calls) == chunks * len(set(all_calls))  # the probe: no backward
    # every group of this Llama is read by a layer (its heads by o_proj): after the first chunk no weight
    # computes its gradient
    assert sorted(calls) == sorted(set(all_calls))
    assert all(p.grad is None for p in teacher.parameters())
    assert [p.requires_grad for p in teacher.parameters()] == was  # as it was before


def test_narrowed_gradients_score_a_cnn_as_every_gradient_does(monkeypatch):
    # a CNN has no group that no layer reads: after the first batch no weight needs its gradient, and
    # every read's dL/dx comes from a leaf made at the first layer that reads a group
    import torchinn.compression.importance as importance

    _, inputs, imodel = converted("resnet_basic")
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(inputs[0].shape, generator=g),) for _ in range(3)]
    monkeypatch.setattr(importance, "NARROW_GRADIENTS", False)
    every = measure_importance(imodel, batches)
    monkeypatch.setattr(importance, "NARROW_GRADIENTS", True)
    narrowed = measure_importance(imodel, batches)
    _close(narrowed.fisher, every.fisher, 1e-12)
    assert all(bool((s > 0).any()) for s in narrowed.fisher.values())
