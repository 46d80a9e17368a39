"""The squared error weighted per output channel (``loss="mse-channels"``) and when ``"auto"``
picks it: outputs that mix scales (boxes in pixels beside scores), not images or ratings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchinn as inn
from torchinn.compression.backward import cotangent
from torchinn.compression import pipeline
from torchinn.compression.starts import distill_error
from torchinn.model.inputs import Inputs
from torchinn.training.channels import CHANNEL_FLOOR, channel_scales, channel_weights, format_spread, scale_drift
from torchinn.training.distill import Distillation, distillation_loss, resolve_loss
from torchinn.training.train import TuneConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def yolo_like(seed: int, batches: int = 2) -> list[torch.Tensor]:
    """(batch, 4 boxes in pixels + 3 sigmoid scores, anchors), as NudeNet's YOLOv8n gives."""
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([320 * torch.rand(3, 4, 40, generator=g),
                       torch.sigmoid(3 * torch.randn(3, 3, 40, generator=g) - 5)], 1) for _ in range(batches)]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), ndim=st.sampled_from([2, 3, 4]))
def test_weighted_loss_is_the_formula(seed, ndim):
    g = torch.Generator().manual_seed(seed)
    shape = {2: (5, 6), 3: (5, 6, 7), 4: (5, 6, 3, 2)}[ndim]
    scale = torch.logspace(-1.5, 1.5, 6).reshape(1, 6, *([1] * (ndim - 2)))
    ref = [torch.randn(shape, generator=g) * scale for _ in range(2)]
    out = ref[0] + 0.1 * torch.randn(shape, generator=g) * scale
    loss = resolve_loss("mse-channels", ref)
    # the formula: the mean square of channel c over both batches, and the mean over channels of
    # each channel's squared error (of batch 0) over it
    dims = [d for d in range(ndim) if d != (1 if ndim >= 3 else ndim - 1)]
    ms = torch.stack([r.double() ** 2 for r in ref]).mean([0, *[d + 1 for d in dims]])
    per_channel = ((out.double() - ref[0].double()) ** 2).mean(dims)
    expected = float((per_channel / ms).mean())
    assert float(loss(out, None, ref[0])) == pytest.approx(expected, rel=1e-4)
    assert loss.error(out, ref[0]) == pytest.approx(expected, rel=1e-4)
    _, spread = channel_weights(ref)
    assert loss.kind == "mse-channels" and 1e2 < spread < 1e4  # RMS 10^-1.5 .. 10^1.5: a spread near 1e3
    assert loss.note == f"mse weighted per output channel: their scales span {format_spread(spread)}x"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), factors=st.lists(st.floats(0.03, 30), min_size=4, max_size=4))
def test_weighted_loss_is_invariant_to_each_channels_scale(seed, factors):
    g = torch.Generator().manual_seed(seed)
    ref = [torch.randn(4, 4, 9, generator=g) for _ in range(2)]
    out = ref[1] + 0.3 * torch.randn(4, 4, 9, generator=g)
    f = torch.tensor(factors).reshape(1, 4, 1)  # above the floor (mean squares 1e8 apart: CHANNEL_FLOOR)
    a = resolve_loss("mse-channels", ref)(out, None, ref[1])
    b = resolve_loss("mse-channels", [r * f for r in ref])(out * f, None, ref[1] * f)
    assert float(b) == pytest.approx(float(a), rel=1e-4)


def test_the_plain_squared_error_follows_the_loudest_channel_and_the_weighted_one_does_not():
    # channel 3 carries the largest error for its size; made 30x louder, it is all the plain loss sees
    # (a deterministic case: with random factors the plain loss can land near its old value by chance)
    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(4, 4, 9, generator=g) for _ in range(2)]
    out = ref[1] + torch.randn(4, 4, 9, generator=g) * torch.tensor([0.05, 0.1, 0.3, 1.0]).reshape(1, 4, 1)
    f = torch.tensor([1.0, 1.0, 1.0, 30.0]).reshape(1, 4, 1)
    plain = [float(distillation_loss(out, None, ref[1])), float(distillation_loss(out * f, None, ref[1] * f))]
    assert plain[1] > 3 * plain[0], plain
    weighted = [float(resolve_loss("mse-channels", ref)(out, None, ref[1])),
                float(resolve_loss("mse-channels", [r * f for r in ref])(out * f, None, ref[1] * f))]
    assert weighted[1] == pytest.approx(weighted[0], rel=1e-4)


def test_auto_weighs_mixed_scales_only():
    loss = resolve_loss("auto", yolo_like(0))
    assert loss.kind == "mse-channels"
    assert "no negative value" in loss.note and "mse weighted per output channel: their scales span" in loss.note
    _, spread = channel_weights(yolo_like(0))
    assert spread > 1e3 and format_spread(spread) + "x" in loss.note
    # separate output tensors are channels too: a depth in millimetres beside a mask in [0, 1]
    g = torch.Generator().manual_seed(1)
    two = [(3000 * torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)) for _ in range(2)]
    assert resolve_loss("auto", two).kind == "mse-channels"
    # similar scales: images, three ratings near 3, a depth in metres beside a mask: plain mse
    images = [torch.rand(2, 3, 16, 16, generator=g) for _ in range(2)]
    ratings = [3 + 0.5 * torch.randn(8, 3, generator=g) for _ in range(2)]
    metres = [(5 * torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)) for _ in range(2)]
    for ref in (images, ratings, metres):
        assert resolve_loss("auto", ref).kind == "mse"
    # class logits stay kl; an explicit "mse" stays plain on mixed scales
    logits = [torch.randn(8, 5, generator=g) for _ in range(2)]
    assert resolve_loss("auto", logits).kind == "kl"
    assert resolve_loss("mse", yolo_like(0)).kind == "mse"


def test_loss_values_unchanged_where_scales_are_similar():
    g = torch.Generator().manual_seed(2)
    waifu = [torch.rand(2, 3, 24, 24, generator=g) for _ in range(3)]  # an image out of a super-resolution net
    dnsmos = [torch.tensor([[3.1, 3.9, 2.8], [2.5, 3.4, 2.2], [3.6, 4.1, 3.3], [2.9, 3.3, 2.6]])]  # three MOS
    for ref in (waifu, dnsmos):
        loss = resolve_loss("auto", ref)
        assert loss.kind == "mse" and not loss.weights
        out = ref[0] + 0.05 * torch.randn(ref[0].shape, generator=g)
        assert float(loss(out, None, ref[0])) == float(distillation_loss(out, None, ref[0]))
        assert float(loss(out, None, ref[0])) == pytest.approx(float(((out - ref[0]) ** 2).mean()), rel=1e-6)
        assert loss.error(out, ref[0]) == pytest.approx(float(((out - ref[0]) ** 2).mean() / (ref[0] ** 2).mean()),
                                                        rel=1e-6)


def test_silent_channels_are_floored_and_do_not_decide():
    g = torch.Generator().manual_seed(3)
    ref = [torch.cat([torch.rand(4, 3, 5, generator=g), torch.zeros(4, 1, 5)], 1)]
    weights, spread = channel_weights(ref)
    assert spread < 2  # the silent channel is below the floor: three similar channels decide
    loud = float(channel_scales(ref)[0].max())
    assert float(weights[0][3]) == pytest.approx(1 / (CHANNEL_FLOOR * loud), rel=1e-9)
    assert resolve_loss("auto", ref).kind == "mse"
    # near silent, not silent (a score of a class that never shows): counted at the floor
    ref[0][:, 3] = 1e-5
    weights, spread = channel_weights(ref)
    assert spread == pytest.approx(CHANNEL_FLOOR ** -0.5, rel=1e-6)  # 1e4: the floor bounds it
    assert float(weights[0][3]) == pytest.approx(1 / (CHANNEL_FLOOR * loud), rel=1e-9)
    assert resolve_loss("auto", ref).kind == "mse-channels"


def test_padding_is_left_out_of_the_scales():
    ref = [torch.ones(2, 3, 4)]
    ref[0][1, 2] = 1e6  # row 1's position 2 is padding: what it holds does not count
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scales = channel_scales(ref, [mask])
    assert torch.allclose(scales[0], torch.ones(3, dtype=torch.float64))
    loss = resolve_loss("mse-channels", ref, masks=[mask])
    out = ref[0].clone()
    out[1, 2] = 0  # padding: no error
    assert float(loss(out, Inputs((), {"attention_mask": mask}), ref[0])) == 0.0


def test_bad_values_get_clear_errors():
    with pytest.raises(ValueError, match="did you mean 'mse-channels'"):
        TuneConfig(loss="mse-channel")
    with pytest.raises(ValueError, match="temperature"):
        TuneConfig(loss="mse-channels", temperature=2.0)
    with pytest.raises(ValueError, match="channel weights"):
        Distillation("mse-channels")
    with pytest.raises(ValueError, match="largest channel mean square of 0"):
        resolve_loss("mse-channels", [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="channels on calibration batch 1"):
        resolve_loss("mse-channels", [torch.rand(2, 3, 4), torch.rand(2, 5, 4)])
    loss = resolve_loss("mse-channels", [torch.rand(2, 3, 4)])
    with pytest.raises(ValueError, match="has 5 channels; the loss weighs 3"):
        loss(torch.rand(2, 5, 4), None, torch.rand(2, 5, 4))


def test_fisher_cotangent_covariance_is_half_the_hessian():
    ref = yolo_like(4, 1)[0]
    loss = resolve_loss("mse-channels", [ref])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([cotangent(ref, loss, gen, torch.float64) for _ in range(400)])
    var = (draws ** 2).mean([0, 1, 3]) * ref.numel()  # per channel, times the values: the weights
    assert torch.allclose(var, loss.weights[0], rtol=0.1)


class TwoHeads(nn.Module):
    """One head in hundreds (4 channels), one in [0, 1] (2 channels), on one trunk."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
        self.big, self.small = nn.Linear(48, 4), nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.cat([600 * torch.sigmoid(self.big(h)), torch.sigmoid(2 * self.small(h))], 1)  # boxes, scores


def _small_head_error(net: nn.Module, small: nn.Module, xs: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return sum(float(((small(x)[:, 4:] - net(x)[:, 4:]) ** 2).mean() / (net(x)[:, 4:] ** 2).mean())
                   for x in xs) / len(xs)


@pytest.mark.parametrize("tune", [False, True])
def test_compress_two_heads_keeps_the_small_head(tune, monkeypatch):
    net = TwoHeads().eval()
    g = torch.Generator().manual_seed(5)
    cal = [torch.randn(32, 8, generator=g) for _ in range(6)]
    test = [torch.randn(64, 8, generator=g) for _ in range(3)]
    errors, reports = {}, {}
    for loss in ("mse", "auto"):
        cfg = TuneConfig(steps=40, seconds=None, loss=loss, progress=False) if tune else False
        if not tune and loss == "mse":  # tune=False resolves "auto": the plain loss given as a Distillation
            monkeypatch.setattr(pipeline, "resolve_loss", lambda *a, **k: Distillation("mse"))
            small, rep = inn.compress(net, (cal[0],), 0.4, calibration=cal, tune=False, reconstruct=False)
            monkeypatch.undo()
        else:
            small, rep = inn.compress(net, (cal[0],), 0.4, calibration=cal, tune=cfg, reconstruct=False)
        errors[loss], reports[loss] = _small_head_error(net, small, test), rep
    assert reports["mse"].loss == "mse"
    assert reports["auto"].loss == "mse-channels" and "scales span" in reports["auto"].loss_note
    assert "relative output error per channel" in str(reports["auto"])
    # measured: 0.0165 -> 0.0031 (tune=False), 0.0166 -> 0.00047 (40 steps)
    assert errors["auto"] < 0.5 * errors["mse"], errors


def test_distill_error_uses_the_weights():
    ref = yolo_like(6)
    loss = resolve_loss("auto", ref)

    class Echo(nn.Module):
        def forward(self, x):
            return x

    noisy = [r + torch.cat([torch.zeros(3, 4, 40), 0.1 * torch.ones(3, 3, 40)], 1) for r in ref]
    weighted = distill_error(Echo(), [(n,) for n in noisy], ref, loss)
    plain = distill_error(Echo(), [(n,) for n in noisy], ref, "mse")
    assert weighted > 1e3 * plain  # an error in the scores alone: the plain error barely sees it


def test_half_precision_outputs_do_not_overflow():
    ref = [r.half() for r in yolo_like(7)]
    loss = resolve_loss("mse-channels", ref)
    out = ref[0] + 0.01
    value = float(loss(out, None, ref[0]))
    expected = float(resolve_loss("mse-channels", [r.float() for r in ref])(out.float(), None, ref[0].float()))
    assert value == pytest.approx(expected, rel=1e-2)  # weights up to 1e4 and more: float16 holds 6.5e4


def _bumps(centres: torch.Tensor, bins: int = 120) -> torch.Tensor:
    """CREPE-like outputs: per row, a sigmoid bump over ``bins`` pitch bins at its centre, 1e-4 elsewhere."""
    k = torch.arange(bins, dtype=torch.float64)
    return (0.9 * torch.exp(-((k - centres[:, None]) / 2.0) ** 2)).clamp_min(1e-4).float()


def test_scales_that_move_with_the_data_are_not_weighted():
    # pitch bins: the first batches' sounds sit low, the others' high, so the bins loud on one half of
    # the batches are quiet on the other; weights fitted on one half would blow up on the other
    gen = torch.Generator().manual_seed(0)
    ref = [_bumps(torch.randint(0, 60, (16,), generator=gen)) for _ in range(2)]
    ref += [_bumps(torch.randint(60, 120, (16,), generator=gen)) for _ in range(2)]
    weights, spread = channel_weights(ref)
    assert spread > 1e3  # 0.9 beside 1e-4: the spread alone would weigh them
    assert scale_drift(ref) > 1e3
    loss = resolve_loss("auto", ref)
    assert loss.kind == "mse" and "move with the data" in loss.note, loss.note
    # the same bins at the same pitches on both halves: stable scales, weighted as before
    same = [_bumps(torch.randint(0, 120, (16,), generator=torch.Generator().manual_seed(1)))] * 4
    assert scale_drift(same) == pytest.approx(1.0)
    assert resolve_loss("auto", same).kind == "mse-channels"
    # boxes in pixels beside scores, the case the weights are for: the scales stay put
    boxes = [torch.cat([300 * torch.rand(2, 4, 50, generator=gen), torch.rand(2, 3, 50, generator=gen)], 1)
             for _ in range(4)]
    assert scale_drift(boxes) < 2.0
    assert resolve_loss("auto", boxes).kind == "mse-channels"
    # one batch (compress may choose on one): its two halves of rows, low pitches then high ones
    one = [torch.cat([ref[0], ref[3]])]
    assert scale_drift(one) > 1e3 and resolve_loss("auto", one).kind == "mse"
    assert scale_drift([ref[0][:1]]) == 1.0  # one row: nothing to compare
