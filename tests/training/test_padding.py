"""Padded calibration batches: the distillation losses leave out the positions a batch's
attention_mask marks as padding, so a right-padded batch of the shipped Llama gives the loss of its
rows run one by one, each weighted by its tokens (training/distill.py)."""

from __future__ import annotations

import pytest
import torch

from torchinn.training.distill import Distillation, distillation_loss, kl_distillation_loss, resolve_loss

tf = pytest.importorskip("transformers")
LENGTHS = (12, 9, 5)


@pytest.fixture(scope="module")
def pair():
    from torchinn_demo import lm

    teacher, _ = lm.load()
    student, _ = lm.load()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.model.layers[1].mlp.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ids = lm.tokens(lm.texts()[0][:4000])
    rows = [ids[100 * i: 100 * i + n] for i, n in enumerate(LENGTHS)]
    padded = torch.zeros(len(rows), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(padded)
    for i, r in enumerate(rows):
        padded[i, :len(r)] = r
        mask[i, :len(r)] = 1
    with torch.no_grad():
        run = lambda m, **kw: m(**kw, use_cache=False).logits
        batch = {"input_ids": padded, "attention_mask": mask, "labels": padded}
        out = run(student, input_ids=padded, attention_mask=mask)
        ref = run(teacher, input_ids=padded, attention_mask=mask)
        singles = [(run(student, input_ids=r[None]), run(teacher, input_ids=r[None])) for r in rows]
    return batch, out, ref, singles


def _weighted(loss, singles) -> float:
    n = torch.tensor(LENGTHS, dtype=torch.float64)
    return float(sum(float(loss(o, None, r)) * k for (o, r), k in zip(singles, n)) / n.sum())


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_padded_batch_gives_the_loss_of_its_rows(pair, kind: str) -> None:
    batch, out, ref, singles = pair
    loss = Distillation(kind, temperature=2.0)
    padded = float(loss(out, batch, ref))
    rows = _weighted(loss, singles)
    assert padded > 1e-4  # the student differs from its teacher
    assert padded == pytest.approx(rows, rel=1e-4)
    unmasked = float(loss(out, None, ref))
    assert abs(unmasked - rows) > 0.01 * rows  # without the mask the padded positions count
    junk = out.clone()
    junk[batch["attention_mask"] == 0] = float("nan")  # whatever padded positions hold does not count
    assert float(loss(junk, batch, ref)) == pytest.approx(padded, rel=1e-12)


def test_default_losses_and_error_use_the_mask(pair) -> None:
    batch, out, ref, singles = pair
    assert float(distillation_loss(out, batch, ref)) == pytest.approx(_weighted(distillation_loss, singles), rel=1e-4)
    kl = lambda o, b, r: kl_distillation_loss(o, b, r, 1.0)
    assert float(kl(out, batch, ref)) == pytest.approx(_weighted(kl, singles), rel=1e-4)
    mse = Distillation("mse")
    mask = batch["attention_mask"]
    # the relative error: squared error over the teacher's mean square, both over the real positions
    real = mask.bool()
    want = float(((out - ref)[real] ** 2).mean() / (ref[real] ** 2).mean())
    assert mse.error(out, ref, mask) == pytest.approx(want, rel=1e-5)
    assert abs(mse.error(out, ref) - want) > 1e-3 * want


def test_choice_of_loss_ignores_padding() -> None:
    """Logits that are confident at the real positions and flat at the padded ones: the temperature
    fitted with the mask is the one of the real positions alone, not the one the flat rows pull down."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 10, generator=g) * 20
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[:, 3:] = 0
    logits[:, 3:] = 0.1 * logits[:, 3:]
    real = resolve_loss("auto", [logits[:, :3]])
    masked = resolve_loss("auto", [logits], masks=[mask])
    unmasked = resolve_loss("auto", [logits])
    assert real.kind == masked.kind == "kl" and real.temperature > 1.5
    assert masked.temperature == pytest.approx(real.temperature, rel=1e-9)
    assert unmasked.temperature == 1.0  # the flat rows bring the mean top probability under 0.9
