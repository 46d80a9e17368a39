"""Super-resolution x2 on real photographs that ship inside PyPI packages (no download).

* **Photos**: the colour photographs bundled with scikit-image (``skimage.data``) and scikit-learn
  (``load_sample_images``), split once and for all into training photos and held-out photos
  (whole photographs: no held-out pixel is ever seen in training), see :data:`TRAIN_PHOTOS` and
  :data:`HELDOUT_PHOTOS`.
* **Degradation**: bicubic downsampling with antialiasing (:func:`degrade`), the classical
  "BI" setting; :func:`bicubic_upscale` is the baseline every network must beat.
* **Metrics**: :func:`psnr` and :func:`ssim` on the luma (Y of ITU-R BT.601, in [16, 235] / 255)
  with a border of ``scale`` pixels cropped, as in the EDSR paper and most SR tables; SSIM with an
  11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03 (Wang et al. 2004).
* **Model**: :class:`EDSR` (residual blocks without batch norm, residual scaling, PixelShuffle
  upsampler) and :func:`load_edsr`, the x2 checkpoint shipped with torchinn.

>>> hr = torch.rand(1, 3, 32, 32)
>>> degrade(hr).shape, bicubic_upscale(degrade(hr)).shape
(torch.Size([1, 3, 16, 16]), torch.Size([1, 3, 32, 32]))
>>> psnr(hr, hr)
inf
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PHOTOS", "TRAIN_PHOTOS", "HELDOUT_PHOTOS", "load_photo", "mod_crop", "degrade",
           "bicubic_upscale", "rgb_to_y", "psnr", "ssim", "PatchSampler", "EDSR", "load_edsr",
           "save_edsr", "super_resolve", "evaluate", "CHECKPOINT"]

# name -> (package, loader). Only photographs stored inside the wheels: skimage's ``skin``,
# ``lily``, ``kidney``... need pooch and a download, so they are not used. ``chelsea`` is ``cat``.
PHOTOS: dict[str, str] = {
    "astronaut": "skimage", "rocket": "skimage", "immunohistochemistry": "skimage",
    "hubble_deep_field": "skimage", "retina": "skimage", "motorcycle": "skimage",
    "china": "sklearn", "coffee": "skimage", "chelsea": "skimage", "flower": "sklearn",
}
#: Photos the shipped EDSR was trained on (and grid tuning calibrates on).
TRAIN_PHOTOS: tuple[str, ...] = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field",
                                 "retina", "motorcycle", "china")
#: Photos never seen in training: every PSNR/SSIM torchinn reports is measured on these.
HELDOUT_PHOTOS: tuple[str, ...] = ("coffee", "chelsea", "flower")

CHECKPOINT = "edsr_x2.safetensors"


@functools.lru_cache(maxsize=None)
def _photo_array(name: str) -> np.ndarray:
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; known: {sorted(PHOTOS)}")
    try:
        if PHOTOS[name] == "sklearn":
            from sklearn.datasets import load_sample_image

            img = load_sample_image(f"{name}.jpg")
        else:
            import skimage.data

            img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"photo {name!r} needs {PHOTOS[name]} ({e}); "
                          'install it with: pip install "torchinn[demo]"') from e
    img = np.ascontiguousarray(img[..., :3])
    img.setflags(write=False)
    return img


def load_photo(name: str) -> Tensor:
    """A photograph as a ``(3, H, W)`` float32 tensor in [0, 1] (RGB)."""
    img = _photo_array(name)
    top = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0  # 8-bit / 255, 16-bit / 65535
    return torch.from_numpy(img.astype(np.float32) / top).permute(2, 0, 1).contiguous()


def mod_crop(img: Tensor, scale: int = 2) -> Tensor:
    """Crop the bottom/right so that height and width are multiples of ``scale``."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def _batched(fn):
    @functools.wraps(fn)
    def wrapper(img: Tensor, *args, **kwargs):
        if img.ndim == 3:
            return fn(img[None], *args, **kwargs)[0]
        return fn(img, *args, **kwargs)
    return wrapper


@_batched
def degrade(hr: Tensor, scale: int = 2) -> Tensor:
    """The low-resolution image: bicubic downsampling with antialiasing by ``scale`` (after
    :func:`mod_crop`), clamped to [0, 1]. ``(3, H, W)`` or ``(N, 3, H, W)``."""
    hr = mod_crop(hr, scale)
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp(0, 1)


@_batched
def bicubic_upscale(lr: Tensor, scale: int = 2) -> Tensor:
    """The baseline: bicubic upscaling by ``scale``, clamped to [0, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def rgb_to_y(img: Tensor) -> Tensor:
    """Luma of ITU-R BT.601 (MATLAB's ``rgb2ycbcr``) for RGB in [0, 1]: values in [16, 235] / 255.
    Channel dim -3; returns the same shape with one channel."""
    w = img.new_tensor([65.481, 128.553, 24.966]).view(3, 1, 1) / 255.0
    return (img * w).sum(-3, keepdim=True) + 16.0 / 255.0


def _prepare(sr: Tensor, hr: Tensor, crop: int, y_channel: bool) -> tuple[Tensor, Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"images must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
    sr, hr = sr.double(), hr.double()
    if y_channel:
        if sr.shape[-3] != 3:
            raise ValueError(f"y_channel=True needs RGB images (3 channels), got {sr.shape[-3]}")
        sr, hr = rgb_to_y(sr), rgb_to_y(hr)
    if crop:
        sr, hr = sr[..., crop:-crop, crop:-crop], hr[..., crop:-crop, crop:-crop]
    return sr, hr


def psnr(sr: Tensor, hr: Tensor, crop: int = 2, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (peak 1), on the Y channel by
    default, with ``crop`` border pixels removed (``crop = scale``). Batches are pooled."""
    sr, hr = _prepare(sr, hr, crop, y_channel)
    mse = float(((sr - hr) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(sr: Tensor, hr: Tensor, crop: int = 2, y_channel: bool = True) -> float:
    """Mean structural similarity (Wang et al. 2004) for images in [0, 1]: 11x11 Gaussian window
    (sigma 1.5), K1 = 0.01, K2 = 0.03, averaged over the positions where the window fits and over
    channels; equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1)``."""
    sr, hr = _prepare(sr, hr, crop, y_channel)
    x, y = sr.reshape(-1, 1, *sr.shape[-2:]), hr.reshape(-1, 1, *hr.shape[-2:])
    g = _gaussian_window()
    if min(x.shape[-2:]) < g.numel():
        raise ValueError(f"SSIM needs images of at least {g.numel()}x{g.numel()} pixels after cropping, "
                         f"got {tuple(x.shape[-2:])}")

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t, g.view(1, 1, -1, 1))
        return F.conv2d(t, g.view(1, 1, 1, -1))

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


class PatchSampler:
    """Random aligned (low-res, high-res) training patches from whole photos, forever.

    Each batch draws, per patch, a photo uniformly, a position uniformly, and one of the 8
    flips/rotations. Low-res photos are computed once from the whole photo (so patches have no
    border effects of their own). Seeded: the same ``seed`` gives the same batches.
    """

    def __init__(self, photos: Sequence[str] = TRAIN_PHOTOS, patch: int = 32, batch_size: int = 16,
                 scale: int = 2, seed: int = 0, augment: bool = True) -> None:
        if patch < 1 or batch_size < 1:
            raise ValueError(f"patch and batch_size must be >= 1, got {patch} and {batch_size}")
        self.hr = [mod_crop(load_photo(n), scale) for n in photos]
        self.lr = [degrade(h, scale) for h in self.hr]
        small = [n for n, lr in zip(photos, self.lr) if min(lr.shape[-2:]) < patch]
        if small:
            raise ValueError(f"photos {small} are smaller than a {patch}-pixel low-res patch")
        self.patch, self.batch_size, self.scale, self.augment = patch, batch_size, scale, augment
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self) -> tuple[Tensor, Tensor]:
        p, s = self.patch, self.scale
        lrs, hrs = [], []
        for _ in range(self.batch_size):
            i = int(torch.randint(len(self.lr), (1,), generator=self.gen))
            lr, hr = self.lr[i], self.hr[i]
            y = int(torch.randint(lr.shape[1] - p + 1, (1,), generator=self.gen))
            x = int(torch.randint(lr.shape[2] - p + 1, (1,), generator=self.gen))
            a, b = lr[:, y:y + p, x:x + p], hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
            if self.augment:
                k, flip = (int(v) for v in torch.randint(4, (2,), generator=self.gen))
                if flip % 2:
                    a, b = a.flip(-1), b.flip(-1)
                a, b = a.rot90(k, (-2, -1)), b.rot90(k, (-2, -1))
            lrs.append(a)
            hrs.append(b)
        return torch.stack(lrs).contiguous(), torch.stack(hrs).contiguous()

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.sample()


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, scaled by ``res_scale`` and added to the input (no BN)."""

    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x))) * self.res_scale


class EDSR(nn.Module):
    """EDSR (Lim et al. 2017) for RGB in [0, 1]: subtract the mean and scale to [0, 255], head conv,
    ``n_blocks`` residual blocks, body conv + global skip, conv + PixelShuffle upsampler (x2:
    one stage; x4: two), tail conv, add the mean back. ``n_blocks=16, channels=64, res_scale=1``
    is the paper's baseline EDSR."""

    def __init__(self, n_blocks: int = 8, channels: int = 64, scale: int = 2, res_scale: float = 1.0) -> None:
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
        self.config = {"n_blocks": n_blocks, "channels": channels, "scale": scale, "res_scale": res_scale}
        self.register_buffer("mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(channels, res_scale) for _ in range(n_blocks)))
        self.body_conv = nn.Conv2d(channels, channels, 3, padding=1)
        stages = [(2, 2)] * (scale // 2) if scale in (2, 4) else [(3, 3)]
        up: list[nn.Module] = []
        for _, f in stages:
            up += [nn.Conv2d(channels, channels * f * f, 3, padding=1), nn.PixelShuffle(f)]
        self.upsample = nn.Sequential(*up)
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) * 255.0
        x = self.head(x)
        x = x + self.body_conv(self.body(x))
        return self.tail(self.upsample(x)) / 255.0 + self.mean


def save_edsr(model: EDSR, path: str | Path, **metadata: object) -> None:
    """Write an :class:`EDSR` to a safetensors file with its configuration (and any JSON-able
    ``metadata``, e.g. training time and held-out PSNR)."""
    from torchinn.io.fileio import save_safetensors

    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(model.config), **{k: json.dumps(v) for k, v in metadata.items()}}
    save_safetensors(tensors, path, metadata=meta)


def load_edsr(path: str | Path | None = None) -> tuple[EDSR, dict]:
    """The EDSR in ``path`` (default: the x2 checkpoint shipped with torchinn), in eval mode,
    and its metadata (configuration, training time, held-out PSNR...)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        path = resources.files("torchinn_demo") / "checkpoints" / CHECKPOINT
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    model = EDSR(**meta["config"])
    model.load_state_dict(load_file(str(path)))
    return model.eval(), meta


@torch.no_grad()
def super_resolve(model: nn.Module, lr: Tensor) -> Tensor:
    """``model`` applied to one ``(3, h, w)`` or a batch of low-res images, clamped to [0, 1]."""
    out = model(lr[None] if lr.ndim == 3 else lr)
    out = out.clamp(0, 1)
    return out[0] if lr.ndim == 3 else out


def evaluate(model: nn.Module | None, photos: Mapping[str, Tensor] | Sequence[str] = HELDOUT_PHOTOS,
             scale: int = 2) -> dict[str, float]:
    """Mean Y-PSNR and Y-SSIM over ``photos`` (names, or name -> HR image) of ``model`` on their
    bicubic-degraded versions (``model=None``: bicubic upscaling). Returns ``{"psnr", "ssim"}`` and
    per-photo ``"psnr/<name>"``."""
    if not isinstance(photos, Mapping):
        photos = {n: load_photo(n) for n in photos}
    out: dict[str, float] = {}
    ps, ss = [], []
    for name, hr in photos.items():
        hr = mod_crop(hr, scale)
        lr = degrade(hr, scale)
        sr = bicubic_upscale(lr, scale) if model is None else super_resolve(model, lr)
        ps.append(psnr(sr, hr, crop=scale))
        ss.append(ssim(sr, hr, crop=scale))
        out[f"psnr/{name}"] = ps[-1]
    out["psnr"], out["ssim"] = float(np.mean(ps)), float(np.mean(ss))
    return out
