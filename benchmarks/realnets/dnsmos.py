"""DNSMOS P.835 (Microsoft's non-intrusive speech-quality model of the Deep Noise Suppression
challenge): from 9.01 s of 16 kHz audio it predicts the three ITU-T P.835 mean opinion scores
(speech signal SIG, background BAK, overall OVRL, raw scale ~1-5). Not about images: audio.

* Package: ``speechmos==0.0.1.1`` (PyPI, Microsoft's AEC/DNS challenge organizers), file
  ``speechmos/dnsmos_models/sig_bak_ovr.onnx`` (ONNX, 1.1 MB); licence MIT. 184,227 parameters in the network; the
  graph's fixed STFT front end (103,040 more numbers: DFT kernels) is :func:`features`. Its own code needs librosa; not used here.
* Architecture rebuilt here from the ONNX graph (weights read with ``onnx.numpy_helper``): frames
  of 320 samples, hop 160 (the graph fixes 900 frames; 200 here, see the data), real and imaginary DFT as 1x1 convolutions to 161 bins,
  ``log10(max(|X|^2, 1e-12))``, then a 2-D CNN over (time, frequency): 3x3 convolutions of 128, 64,
  64, 32 channels, max pool 2, 32, pool, 32, pool, 64 (ReLU after each), global max pooling, dense
  128 - 64 - 3. No batch norm. The front end is kept out of the compressed network (it is a fixed
  transform, not something to prune); since the fix of 2026-12-06 ``inn.convert`` also takes it
  inside the network, keeping the DFT's 161 bins (the *width* of the later convolutions) whole.
* Data: no real speech ships in any installed wheel, so the clips are synthetic but speech-like
  (seeded): glottal pulse trains with a wandering pitch (90-250 Hz) shaped by three moving
  formants and a syllabic envelope, plus white, pink or babble-like noise at -5..30 dB SNR, some
  with clipping, 2.01 s each (the original's 9.01 s cost 1.5 s per clip on 2 cores; the network is
  convolutional up to a global max pool, so it takes any length). Calibration and evaluation
  clips use disjoint seeds. Metric: *fidelity*, the
  pairwise ranking agreement (%) with the original: over all pairs of held-out clips and the three
  scores, the fraction the model orders as the original does (ties count half); the original
  scores 100%, a constant predictor 50%. These clips are not real speech and the original rates
  them poorly (raw OVRL 0.90-1.34, SIG 0.96-2.12, BAK 1.01-2.02 on the 48 held-out clips).
* Port checked against onnxruntime on the ONNX file itself at its 9.01 s input: max abs.
  difference 8e-7 on the three scores (``onnx_scores``; see the tests). 0.34 s per 2 s clip here.
* ``torchinn.convert`` (one clip, 2 threads): 10-17 s, relative error 4.6e-7, 9 groups.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import package_file

PIP = "speechmos==0.0.1.1"
metric_name = "pairwise ranking agreement with the original (%)"
SR = 16000
#: the ONNX graph's fixed input (9.01 s); the clips here are 2.01 s (201 frames): the network is
#: convolutional up to a global max pool, and 9 s clips cost ~21 GFLOP each on the CPU
ONNX_SAMPLES = 144160
SAMPLES = 32160
EVAL_CLIPS = 48
ONNX_FILE = "dnsmos_models/sig_bak_ovr.onnx"


class DNSMOS(nn.Module):
    """The learned part: a 2-D CNN on the log-power spectrogram ``(N, 1, T, 161)`` -> 3 scores."""

    def __init__(self) -> None:
        super().__init__()
        chans = [1, 128, 64, 64, 32, 32, 32, 64]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.pool = nn.MaxPool2d(2)
        self.dense = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i in (3, 4, 5):
                x = self.pool(x)
        return self.dense(x.amax((2, 3)))


@functools.lru_cache(maxsize=1)
def _weights() -> dict[str, Tensor]:
    import onnx
    from onnx import numpy_helper

    return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
            for i in onnx.load(str(_onnx_path())).graph.initializer}


@torch.no_grad()
def features(audio: Tensor) -> Tensor:
    """The graph's fixed front end, ``(N, 160 * (T + 1))`` audio -> ``(N, 1, T, 161)``: frames
    [0:320], [160:480], ... (built as the graph does, from two reshaped halves), real and imaginary
    DFT with the file's kernels, ``log10(max(|X|^2, 1e-12))``. The graph fixes T = 900."""
    w = _weights()
    n = audio.shape[0]
    frames = torch.cat([audio[:, :-160].reshape(n, -1, 160), audio[:, 160:].reshape(n, -1, 160)], 2).transpose(1, 2)
    power = (F.conv1d(frames, w["time2freq/stft-real/kernel:0"]) ** 2
             + F.conv1d(frames, w["time2freq/stft-imag/kernel:0"]) ** 2)
    return torch.log10(power.clamp_min(1e-12)).transpose(1, 2)[:, None].contiguous()


def _onnx_path():
    return package_file("speechmos", ONNX_FILE, PIP)


def load() -> nn.Module:
    w = _weights()
    sd = {}
    for i in range(7):
        tag = "conv2d" if i == 0 else f"conv2d_{i}"
        sd[f"convs.{i}.weight"], sd[f"convs.{i}.bias"] = w[f"{tag}/kernel:0"], w[f"{tag}/bias:0"]
    for j, tag in zip((0, 2, 4), ("dense", "dense_1", "dense_3")):
        pre = f"mos_estimator_logpow/{tag}"
        sd[f"dense.{j}.weight"] = w[f"{pre}/MatMul/ReadVariableOp/resource:0"].T.contiguous()
        sd[f"dense.{j}.bias"] = w[f"{pre}/BiasAdd/ReadVariableOp/resource:0"]
    net = DNSMOS()
    net.load_state_dict(sd)
    return net.float().eval()


def _colored(gen: torch.Generator, n: int, slope: float) -> Tensor:
    """Noise with power spectrum ~ f^-slope (0: white, 1: pink)."""
    spec = torch.fft.rfft(torch.randn(n, generator=gen))
    f = torch.arange(spec.numel(), dtype=torch.float32).clamp_min(1.0)
    return torch.fft.irfft(spec / f ** (slope / 2), n)


def _formant_filter(x: Tensor, freqs: Tensor, bw: float = 90.0) -> Tensor:
    """Two-pole resonators at the (slowly moving) formant frequencies, retuned every 20 ms."""
    from scipy.signal import lfilter

    r, xs, out = math.exp(-math.pi * bw / SR), x.double().numpy(), np.zeros(len(x))
    for f_track in freqs.tolist():
        zi, ys = np.zeros(2), []
        for k, start in enumerate(range(0, len(xs), 320)):
            a = [1.0, -2 * r * math.cos(2 * math.pi * f_track[min(k, len(f_track) - 1)] / SR), r * r]
            y, zi = lfilter([1 - r], a, xs[start:start + 320], zi=zi)
            ys.append(y)
        out += np.concatenate(ys)
    return torch.from_numpy(out).float()


@functools.lru_cache(maxsize=256)
def _clip(seed: int) -> Tensor:
    """One synthetic speech-like clip in noise (see the module docstring), float32, peak <= 1."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=gen)
    blocks = SAMPLES // 320 + 1
    f0 = 90 + 160 * float(rnd(())) + 25 * torch.cumsum(torch.randn(blocks, generator=gen), 0).clamp(-2, 2) / 2
    phase = torch.cumsum(f0.repeat_interleave(320)[:SAMPLES] / SR, 0)
    pulses = (torch.diff(torch.floor(phase), prepend=torch.zeros(1)) > 0).float()
    source = pulses + 0.05 * torch.randn(SAMPLES, generator=gen)
    base = torch.tensor([[500.0, 1500.0, 2500.0]]).T
    formants = base * (1 + 0.35 * torch.sin(torch.linspace(0, 20 + 30 * float(rnd(())), blocks) + 6 * rnd(3, 1)))
    voiced = _formant_filter(source, formants)
    syllables = (torch.sin(torch.linspace(0, 2 * math.pi * (25 + 15 * float(rnd(()))), SAMPLES)) > -0.2).float()
    pauses = (rnd(10) > 0.25).float().repeat_interleave(SAMPLES // 10 + 1)[:SAMPLES]
    speech = voiced * torch.nn.functional.avg_pool1d((syllables * pauses)[None, None], 801, 1, 400)[0, 0]
    speech = speech / speech.pow(2).mean().sqrt()
    kind = int(torch.randint(3, (1,), generator=gen))
    if kind == 2:  # babble: the sum of four other pitched sources
        noise = sum(_formant_filter(_colored(gen, SAMPLES, 0.0), formants.roll(k, 1) * 0.9, bw=200) for k in range(1, 3))
    else:
        noise = _colored(gen, SAMPLES, float(kind))
    snr = -5 + 35 * float(rnd(()))
    x = speech + noise / noise.pow(2).mean().sqrt() * 10 ** (-snr / 20)
    x = 0.1 * x / x.abs().max() * (1 + 4 * float(rnd(())))
    if float(rnd(())) < 0.2:
        x = x.clamp(-0.15, 0.15)
    return (x / max(1.0, float(x.abs().max()))).float()


def _clips(seeds: range) -> Tensor:
    """The audio of the clips ``seeds``, ``(N, SAMPLES)``."""
    return torch.stack([_clip(s) for s in seeds])


def _inputs(seeds: range) -> Tensor:
    """The network's inputs for the clips ``seeds``: their spectrograms ``(N, 1, 200, 161)``."""
    return features(_clips(seeds))


def example_inputs() -> tuple[Tensor]:
    return (_inputs(range(10_000, 10_001)),)


def calibration(n: int, batch: int = 8) -> list[tuple[Tensor]]:
    if n < 1:
        raise ValueError(f"calibration size must be >= 1, got {n}")
    x = _inputs(range(n))
    return [(x[i:i + batch],) for i in range(0, n, batch)]


def heldout(quick: bool = False) -> Tensor:
    """The held-out clips' spectrograms (EVAL_CLIPS; ``quick``: 16), seeds disjoint from calibration's."""
    return _inputs(range(100_000, 100_000 + (16 if quick else EVAL_CLIPS)))


@torch.no_grad()
def scores(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    return torch.cat([model(x[i:i + 8]) for i in range(0, len(x), 8)])


@functools.lru_cache(maxsize=2)
def _reference(quick: bool) -> Tensor:
    return scores(load(), heldout(quick))


def ranking_agreement(pred: Tensor, ref: Tensor) -> float:
    """% of (pair of clips, score) that ``pred`` orders as ``ref`` does (ties count half)."""
    i, j = torch.triu_indices(len(ref), len(ref), 1)
    a, b = torch.sign(pred[i] - pred[j]), torch.sign(ref[i] - ref[j])
    return 100.0 * float(((a == b).float() + 0.5 * ((a == 0) ^ (b == 0)).float()).mean())


def evaluate(model: nn.Module, quick: bool = False) -> float:
    """Pairwise ranking agreement (%) of ``model``'s three scores with the original's."""
    return ranking_agreement(scores(model, heldout(quick)), _reference(quick))


def onnx_scores(x: Tensor) -> np.ndarray:
    """The scores of the original ONNX file under onnxruntime for ``(N, 144160)`` audio (the check
    of the port: compare with ``load()(features(x))``)."""
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(_onnx_path()), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_1": x.numpy()})[0]
