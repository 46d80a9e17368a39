"""Super-resolution data, metrics, the shipped EDSR checkpoint and the compression benchmark."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from skimage.metrics import structural_similarity  # noqa: E402

from benchmarks import compress_edsr  # noqa: E402
from torchinn_demo import sr  # noqa: E402


# -- photos and split ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(sr.PHOTOS))
def test_photos_load_as_rgb_floats_in_unit_range(name):
    img = sr.load_photo(name)
    assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == 3
    assert min(img.shape[1:]) >= 256
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert float(img.max()) > 0.5 and float(img.std()) > 0.05  # a real photo, not a blank
    # exactly the packaged uint8 pixels
    assert np.array_equal((img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), sr._photo_array(name))


def test_photos_are_distinct():
    means = {n: round(float(sr.load_photo(n).mean()), 5) for n in sr.PHOTOS}
    assert len(set(means.values())) == len(means)


def test_split_is_fixed_and_disjoint():
    assert sr.TRAIN_PHOTOS == ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field",
                               "retina", "motorcycle", "china")
    assert sr.HELDOUT_PHOTOS == ("coffee", "chelsea", "flower")
    assert not set(sr.TRAIN_PHOTOS) & set(sr.HELDOUT_PHOTOS)
    assert set(sr.TRAIN_PHOTOS) | set(sr.HELDOUT_PHOTOS) == set(sr.PHOTOS)


def test_unknown_photo():
    with pytest.raises(KeyError, match="unknown photo 'lena'"):
        sr.load_photo("lena")


# -- degradation --------------------------------------------------------------------------------

def test_degradation_and_bicubic_shapes():
    hr = sr.load_photo("chelsea")                        # 300 x 451: odd width is cropped
    assert hr.shape == (3, 300, 451)
    lr = sr.degrade(hr)
    assert lr.shape == (3, 150, 225) and lr.dtype == torch.float32
    assert 0 <= float(lr.min()) and float(lr.max()) <= 1
    up = sr.bicubic_upscale(lr)
    assert up.shape == sr.mod_crop(hr).shape == (3, 300, 450)
    batch = torch.rand(2, 3, 20, 14)
    assert sr.degrade(batch).shape == (2, 3, 10, 7) and sr.bicubic_upscale(sr.degrade(batch)).shape == (2, 3, 20, 14)
    const = torch.full((3, 16, 16), 0.3)
    assert torch.allclose(sr.degrade(const), torch.full((3, 8, 8), 0.3), atol=1e-6)
    # bicubic upscaling of a smooth photo is a good reconstruction, but not a perfect one
    assert 30 < sr.psnr(up, sr.mod_crop(hr)) < 40


def test_patch_sampler_is_seeded_and_aligned():
    a = sr.PatchSampler(patch=24, batch_size=4, seed=3)
    lr, hr = a.sample()
    assert lr.shape == (4, 3, 24, 24) and hr.shape == (4, 3, 48, 48)
    lr2, hr2 = sr.PatchSampler(patch=24, batch_size=4, seed=3).sample()
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert not torch.equal(lr, sr.PatchSampler(patch=24, batch_size=4, seed=4).sample()[0])
    # the low-res patch is the degraded high-res patch (away from the patch border), flips and
    # rotations included
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert torch.allclose(sr.degrade(hr)[inner], lr[inner], atol=2e-3)


# -- metrics ------------------------------------------------------------------------------------

def test_psnr_known_values():
    x = torch.rand(3, 20, 20, dtype=torch.float64) * 0.5
    assert sr.psnr(x, x) == math.inf
    c = 0.01
    # RGB: MSE = c^2 exactly
    assert sr.psnr(x + c, x, crop=0, y_channel=False) == pytest.approx(-10 * math.log10(c * c), abs=1e-9)
    # Y: a constant RGB offset c moves Y by c * (65.481 + 128.553 + 24.966) / 255 = c * 219 / 255
    assert sr.psnr(x + c, x) == pytest.approx(-20 * math.log10(c * 219 / 255), abs=1e-9)
    # errors only inside the cropped border do not count
    y = x.clone()
    y[:, :2] += 0.2
    y[:, :, -2:] += 0.2
    assert sr.psnr(y, x, crop=2) == math.inf and sr.psnr(y, x, crop=0) < 30
    with pytest.raises(ValueError, match="same shape"):
        sr.psnr(x, x[:, :10])


def test_ssim_matches_skimage_on_a_real_pair():
    hr = sr.mod_crop(sr.load_photo("coffee"))[:, :200, :300]
    up = sr.bicubic_upscale(sr.degrade(hr))
    ours = sr.ssim(up, hr)
    y = [sr.rgb_to_y(t.double())[0, 2:-2, 2:-2].numpy() for t in (up, hr)]
    ref = structural_similarity(y[0], y[1], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0)
    assert ours == pytest.approx(ref, abs=1e-9) and 0.7 < ours < 0.99
    # RGB: the mean over channels
    ours_rgb = sr.ssim(up, hr, crop=0, y_channel=False)
    ref_rgb = structural_similarity(up.double().permute(1, 2, 0).numpy(), hr.double().permute(1, 2, 0).numpy(),
                                    channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
    assert ours_rgb == pytest.approx(ref_rgb, abs=1e-9)
    assert sr.ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        sr.ssim(hr[:, :12, :12], hr[:, :12, :12])


def test_rgb_to_y_range():
    assert float(sr.rgb_to_y(torch.zeros(3, 1, 1))) == pytest.approx(16 / 255)
    assert float(sr.rgb_to_y(torch.ones(3, 1, 1))) == pytest.approx(235 / 255)


# -- the shipped checkpoint ----------------------------------------------------------------------

def test_shipped_checkpoint_beats_bicubic_on_a_heldout_crop():
    model, meta = sr.load_edsr()
    assert isinstance(model, sr.EDSR) and not model.training
    assert meta["config"]["scale"] == 2 and meta["heldout_psnr_y"] > meta["bicubic_psnr_y"] + 0.5
    assert meta["train_photos"] == list(sr.TRAIN_PHOTOS)
    hr = sr.mod_crop(sr.load_photo("chelsea"))[:, 100:196, 150:246]
    lr = sr.degrade(hr)
    with torch.no_grad():
        out = sr.super_resolve(model, lr)
    assert out.shape == hr.shape
    gain = sr.psnr(out, hr) - sr.psnr(sr.bicubic_upscale(lr), hr)
    assert gain > 0.5, f"EDSR beats bicubic by only {gain:.2f} dB"


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = sr.EDSR(n_blocks=1, channels=8).eval()
    path = tmp_path / "m.safetensors"
    sr.save_edsr(model, path, note="x", steps=3)
    loaded, meta = sr.load_edsr(path)
    assert meta["note"] == "x" and meta["steps"] == 3 and meta["config"]["channels"] == 8
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))


# -- the compression benchmark, end to end on a tiny setting ------------------------------------

def test_compress_edsr_quick(capsys):
    mod = compress_edsr
    threads = torch.get_num_threads()
    try:
        res = mod.main(["--quick", "--threads", "1", "--speed-threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| 50% (64 -> 32)" in out and "INN + grid tuning" in out and "images/s" in out
    (row,) = res["levels"]
    assert row["tuning"]["steps"] >= 1 and row["params"] < res["original"]["params"]
    for key in ("inn", "inn_tuned", "l1", "random", "inn_ft", "l1_ft", "random_ft"):
        assert np.isfinite(row[key]["psnr"]) and 0 < row[key]["ssim"] <= 1
    assert {r["model"] for r in res["speed"]} == set(res["params"])
