"""``torchinn demo``: the tour, on the two trained networks shipped with torchinn.

* **classification**: the digits ResNet (:func:`torchinn_demo.models.load_resnet_digits`) is
  converted; for each compression level (fraction of the parameters removed), one set of group
  sizes is chosen with :func:`~torchinn.compression.budget.choose_sizes`, and at exactly those sizes the
  table compares the integral network resampled without any tuning, after integration grid
  tuning for ``tune_seconds``, and L1-norm and random channel selection (as cut, no fine-tuning),
  by accuracy on the 1,000 held-out digits; then the speed of the discrete networks.
* **super-resolution**: the EDSR x2 (:func:`torchinn_demo.sr.load_edsr`) is converted and the inner
  channels of its residual blocks are removed (25/50/75%, as in the blog), the same four methods
  are compared by Y-PSNR / Y-SSIM on centre crops of the held-out photographs, next to bicubic
  upscaling, and the discrete networks are timed at 64x64 and 256x256 inputs.

Grid tuning is distillation against the original network on training data only (digits, or
patches of the training photographs). Each story writes its plots (:mod:`torchinn_demo.plots`) to
``out``. Every random draw comes from ``seed``; the caller's global RNG is left alone.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx, nn

from torchinn.compression.baselines import prune
from torchinn.compression.budget import choose_sizes
from torchinn.model.convert import ConvertConfig, convert
from torchinn.training.train import TuneConfig

from . import plots
from .harness import CachedTeacher, Table, interleaved_times, load_text, n_params, resample_and_tune

__all__ = ["TourConfig", "Table", "StoryResult", "STORIES", "classification", "superres", "run",
           "first_conv_output"]

log = logging.getLogger(__name__)

STORIES = ("classification", "superres")


@dataclass
class TourConfig:
    """Settings of the tour (the defaults are the ones of ``torchinn demo``; :meth:`quick` is a tiny
    setting for tests)."""

    levels: tuple[float, ...] = (0.25, 0.5, 0.75)  # fraction removed: parameters / inner channels
    tune_seconds: float = 15.0      # grid tuning per level
    out: str | Path = "torchinn-demo"
    threads: int | None = 1         # torch threads (None: leave as set)
    seed: int = 0
    progress: bool = True           # status lines on stderr and a tuning progress bar
    # classification
    calibration: int = 512          # training digits used to choose sizes and tune grids
    cal_batch: int = 128
    test_limit: int | None = None   # evaluate on a seeded subset of the 1,000 held-out digits
    speed_batch: int = 256
    speed_repeats: int = 10         # timing rounds of the digits networks (the median is shown)
    # super-resolution
    sr_patch: int = 24              # calibration patches (low-res side) of the training photos
    sr_batch: int = 4
    sr_calib: int = 16              # number of calibration batches (cycled)
    crop: int | None = 192          # high-res centre crop of each held-out photo (None: whole photos)
    speed_sizes: tuple[int, ...] = (64, 256)
    speed_rounds: tuple[int, ...] = (10, 3)   # timing rounds per size (the median is shown)

    def __post_init__(self) -> None:
        self.levels = tuple(float(v) for v in self.levels)
        if not self.levels or any(not 0.0 < v < 1.0 for v in self.levels):
            raise ValueError(f"levels are fractions removed, each in (0, 1), got {list(self.levels)}")
        if not self.tune_seconds > 0:
            raise ValueError(f"tune_seconds must be > 0, got {self.tune_seconds}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        if len(self.speed_sizes) != len(self.speed_rounds):
            raise ValueError(f"one number of rounds per speed size, got {self.speed_sizes} and {self.speed_rounds}")
        self.out = Path(self.out)

    @classmethod
    def quick(cls, **overrides: Any) -> TourConfig:
        """Seconds per story: one level, 0.3 s of tuning, 200 test digits, small crops and inputs."""
        kw: dict[str, Any] = dict(levels=(0.5,), tune_seconds=0.3, calibration=64, cal_batch=32, test_limit=200,
                                  speed_batch=16, speed_repeats=2, sr_patch=12, sr_batch=2, sr_calib=2, crop=48,
                                  speed_sizes=(16, 32), speed_rounds=(2, 2))
        kw.update(overrides)
        return cls(**kw)


@dataclass
class StoryResult:
    """One story's table, notes printed under it, raw numbers, plots written and wall time."""

    name: str
    title: str
    table: Table
    notes: list[str]
    data: dict[str, Any]
    plots: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        return "\n".join([self.title, "", self.table.markdown(), ""] + self.notes)


# -- helpers -------------------------------------------------------------------------------------

def _say(cfg: TourConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def _tune_config(cfg: TourConfig) -> TuneConfig:
    return TuneConfig(seconds=cfg.tune_seconds, progress=cfg.progress)


def speed(models: Mapping[str, nn.Module], x: Tensor, rounds: int) -> dict[str, float]:
    """Items per second (batch size / median seconds of a forward pass) of every model, the
    models interleaved round by round (the order rotates), after one untimed pass each."""
    times, _ = interleaved_times(models, x, rounds)
    return {n: x.shape[0] / statistics.median(t) for n, t in times.items()}


def first_conv_output(model: nn.Module, x: Tensor) -> Tensor:
    """The output of the first convolution ``model`` runs on ``x``: of its first ``nn.Conv*``
    module, or, for a ``torch.fx.GraphModule`` (``to_discrete()``), of its first convolution node."""
    if isinstance(model, fx.GraphModule):
        convs = {torch.ops.aten.convolution.default, torch.ops.aten.conv2d.default,
                 torch.nn.functional.conv2d}

        class Capture(fx.Interpreter):
            found: Tensor | None = None

            def run_node(self, n: fx.Node) -> Any:
                out = super().run_node(n)
                is_conv = (n.op == "call_function" and n.target in convs) or (
                    n.op == "call_module" and isinstance(model.get_submodule(n.target), nn.modules.conv._ConvNd))
                if self.found is None and is_conv:
                    self.found = out
                return out

        cap = Capture(model)
        with torch.no_grad():
            cap.run(x)
        if cap.found is None:
            raise ValueError("the graph has no convolution")
        return cap.found
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no convolution")
    seen: list[Tensor] = []
    handle = conv.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _pct(v: float) -> str:
    return f"{v:.1%}"


def _rate(v: float, ref: float) -> str:
    digits = 0 if v >= 100 else 2
    return f"{v:,.{digits}f}/s ({v / ref:.2f}x)"


# -- classification --------------------------------------------------------------------------------

def classification(cfg: TourConfig) -> StoryResult:
    """The digits ResNet: accuracy of INN (untuned, grid-tuned) vs L1 / random pruning at equal
    parameter counts, and speed of the discrete networks."""
    from .data import load_digits
    from .models import load_resnet_digits
    from .digits import accuracy

    t_start = time.perf_counter()
    net, meta = load_resnet_digits()
    data = load_digits(1000, 0)  # the split the checkpoint was trained on (held-out never seen)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_te, y_te = data.x_test, data.y_test
    if cfg.test_limit is not None:
        keep = torch.randperm(len(y_te), generator=gen)[:cfg.test_limit]
        x_te, y_te = x_te[keep], y_te[keep]
    idx = torch.randperm(len(data.y_train), generator=gen)[:cfg.calibration]
    batches = [(data.x_train[idx[i:i + cfg.cal_batch]], data.y_train[idx[i:i + cfg.cal_batch]])
               for i in range(0, len(idx), cfg.cal_batch)]
    acc0 = accuracy(net, x_te, y_te)
    _say(cfg, f"[classification] digits ResNet ({n_params(net):,} parameters): {acc0:.1%} on {len(y_te)} "
              "held-out digits; converting...")
    t0 = time.perf_counter()
    imodel = convert(net, (batches[0][0][:2],), ConvertConfig(seed=cfg.seed, progress=False))
    convert_s = time.perf_counter() - t0
    full = imodel.sizes()
    reference = imodel.to_discrete(graph=True).eval()      # batch norms folded: the speed reference
    full_params = imodel.num_parameters(full)
    teacher = CachedTeacher(net)
    levels, speed_models = [], {"original": reference}
    for removed in cfg.levels:
        imodel.resize(full)
        sizes = choose_sizes(imodel, 1.0 - removed, "params", calibration=batches)
        _say(cfg, f"[classification] {removed:.0%} fewer parameters: sizes {list(sizes.values())}; grid tuning "
                  f"for {cfg.tune_seconds:g} s...")
        untuned, tuned, rep = resample_and_tune(imodel, sizes, batches, teacher, _tune_config(cfg))
        imodel.resize(full)
        nets = {"inn": untuned, "inn_tuned": tuned, "l1": prune(imodel, sizes, "l1").eval(),
                "random": prune(imodel, sizes, "random", seed=cfg.seed).eval()}
        counts = {k: n_params(m) for k, m in nets.items()}
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"internal error: parameter counts differ between methods: {counts}")
        row = {"removed": removed, "sizes": dict(sizes), "params": counts["inn"], "tuning": rep,
               "acc": {k: accuracy(m, x_te, y_te) for k, m in nets.items()}}
        levels.append(row)
        speed_models[f"{removed:.0%}"] = tuned
    _say(cfg, f"[classification] timing the discrete networks (batch {cfg.speed_batch})...")
    ips = speed(speed_models, data.x_test[:cfg.speed_batch], rounds=cfg.speed_repeats)

    tune_head = f"INN + grid tuning ({cfg.tune_seconds:g} s)"
    columns = ["parameters removed", "parameters", "INN, no tuning", tune_head, "L1 pruning", "random pruning",
               f"images/s (batch {cfg.speed_batch})"]
    rows = [["0% (original)", f"{full_params:,}"] + [_pct(acc0)] * 4 + [_rate(ips["original"], ips["original"])]]
    for r in levels:
        a = r["acc"]
        rows.append([f"{r['removed']:.0%}", f"{r['params']:,}", _pct(a["inn"]),
                     f"{_pct(a['inn_tuned'])} ({r['tuning']['steps']} steps)", _pct(a["l1"]), _pct(a["random"]),
                     _rate(ips[f"{r['removed']:.0%}"], ips["original"])])
    table = Table(columns, rows)

    cfg.out.mkdir(parents=True, exist_ok=True)
    written = [plots.compression_curve(
        cfg.out / "classification_accuracy.png", [1.0] + [r["params"] / full_params for r in levels],
        {label: [acc0] + [r["acc"][key] for r in levels] for key, label in
         (("inn_tuned", tune_head), ("inn", "INN, no tuning"), ("l1", "L1 pruning"), ("random", "random pruning"))},
        references={"original": acc0}, ylabel="held-out accuracy",
        title=f"Digits ResNet: accuracy vs parameters kept ({len(y_te)} held-out digits)")]
    _say(cfg, "[classification] plotting the permutation and the feature maps...")
    plain = convert(net, (batches[0][0][:2],), ConvertConfig(permute=False, check=False))
    name = "stages.2.0.conv1.weight"
    with torch.no_grad():
        before = plain.tensors(plain.full_partitions())[name]
        after = imodel.tensors(imodel.full_partitions())[name]
    written.append(plots.permutation(cfg.out / "permutation.png", before, after,
                                     f"digits ResNet {name} (batch norm folded)"))
    digit = x_te[:1]
    written.append(plots.feature_maps(
        cfg.out / "feature_maps_digits.png", first_conv_output(plain.to_discrete(graph=True), digit)[0],
        first_conv_output(reference, digit)[0],
        title="Digits ResNet, after the first convolution (batch norm folded), one held-out digit", columns=8))
    notes = [f"{len(y_te)} held-out digits; parameters of the converted network (batch norms folded). At each "
             "level all four networks have exactly the same shape (sizes from choose_sizes).",
             f"Grid tuning: {cfg.tune_seconds:g} s per level on {cfg.calibration} training digits, distillation "
             "against the original; L1 and random: channels cut, no fine-tuning.",
             f"Speed: discrete networks, batch {cfg.speed_batch}, {torch.get_num_threads()} thread(s), relative to "
             f"the uncompressed network with its batch norms folded; load average {load_text()}."]
    return StoryResult("classification", "Classification: digits ResNet, INN vs channel selection", table, notes,
                       {"original_acc": acc0, "params": full_params, "levels": levels, "speed": ips,
                        "convert_seconds": convert_s, "checkpoint": meta},
                       written, time.perf_counter() - t_start)


# -- super-resolution ------------------------------------------------------------------------------

def _crop(img: Tensor, size: int | None) -> Tensor:
    if size is None:
        return img
    h, w = img.shape[-2:]
    size = min(size, h, w) // 2 * 2
    top, left = (h - size) // 4 * 2, (w - size) // 4 * 2
    return img[..., top:top + size, left:left + size]


def superres(cfg: TourConfig) -> StoryResult:
    """The EDSR x2: Y-PSNR / Y-SSIM of INN (untuned, grid-tuned) vs L1 / random pruning of the
    residual blocks' inner channels, bicubic, and speed of the discrete networks."""
    from . import sr

    t_start = time.perf_counter()
    net, meta = sr.load_edsr()
    for p in net.parameters():
        p.requires_grad_(False)
    photos = {n: _crop(sr.mod_crop(sr.load_photo(n)), cfg.crop) for n in sr.HELDOUT_PHOTOS}
    sampler = sr.PatchSampler(sr.TRAIN_PHOTOS, patch=cfg.sr_patch, batch_size=cfg.sr_batch, seed=cfg.seed + 1)
    batches = [sampler.sample() for _ in range(cfg.sr_calib)]

    def quality(model: nn.Module | None) -> dict[str, float]:
        r = sr.evaluate(model, photos)
        return {"psnr": r["psnr"], "ssim": r["ssim"]}

    original, bicubic = quality(net), quality(None)
    _say(cfg, f"[superres] EDSR x2 ({n_params(net):,} parameters): {original['psnr']:.2f} dB on the held-out "
              f"crops (bicubic {bicubic['psnr']:.2f} dB); converting...")
    t0 = time.perf_counter()
    imodel = convert(net, (batches[0][0][:1],), ConvertConfig(seed=cfg.seed, progress=False))
    convert_s = time.perf_counter() - t0
    full = imodel.sizes()
    blocks = meta["config"]["n_blocks"]
    inner = [imodel.groups[f"body.{i}.conv1"].name for i in range(blocks)]
    teacher = CachedTeacher(net)
    levels, speed_models = [], {"original": net}
    for removed in cfg.levels:
        sizes = {g: max(1, round((1 - removed) * imodel.groups[g].max_size)) for g in inner}
        _say(cfg, f"[superres] {removed:.0%} of the inner channels removed; grid tuning for {cfg.tune_seconds:g} s...")
        untuned, tuned, rep = resample_and_tune(imodel, sizes, batches, teacher, _tune_config(cfg))
        imodel.resize(full)
        nets = {"inn": untuned, "inn_tuned": tuned, "l1": prune(imodel, sizes, "l1").eval(),
                "random": prune(imodel, sizes, "random", seed=cfg.seed).eval()}
        levels.append({"removed": removed, "size": next(iter(sizes.values())), "params": n_params(tuned),
                       "tuning": rep, "quality": {k: quality(m) for k, m in nets.items()}, "nets": nets})
        speed_models[f"{removed:.0%}"] = tuned
    ips: dict[int, dict[str, float]] = {}
    for size, rounds in zip(cfg.speed_sizes, cfg.speed_rounds):
        _say(cfg, f"[superres] timing the discrete networks at {size}x{size}...")
        ips[size] = speed(speed_models, torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)),
                          rounds)

    q = lambda r: f"{r['psnr']:.2f} / {r['ssim']:.4f}"  # noqa: E731
    tune_head = f"INN + grid tuning ({cfg.tune_seconds:g} s)"
    columns = ["inner channels removed", "parameters", "INN, no tuning", tune_head, "L1 pruning",
               "random pruning"] + [f"speed {s}x{s}" for s in cfg.speed_sizes]
    channels = imodel.groups[inner[0]].max_size
    rows = [["0% (original)", f"{n_params(net):,}"] + [q(original)] * 4
            + [_rate(ips[s]["original"], ips[s]["original"]) for s in cfg.speed_sizes],
            ["bicubic (no network)", "-"] + [q(bicubic)] * 4 + ["-"] * len(cfg.speed_sizes)]
    for r in levels:
        k = f"{r['removed']:.0%}"
        qq = r["quality"]
        rows.append([f"{k} ({channels} -> {r['size']})", f"{r['params']:,}", q(qq["inn"]),
                     f"{q(qq['inn_tuned'])} ({r['tuning']['steps']} steps)", q(qq["l1"]), q(qq["random"])]
                    + [_rate(ips[s][k], ips[s]["original"]) for s in cfg.speed_sizes])
    table = Table(columns, rows)

    _say(cfg, "[superres] plotting...")
    cfg.out.mkdir(parents=True, exist_ok=True)
    full_params = n_params(net)
    written = [plots.compression_curve(
        cfg.out / "superres_psnr.png", [1.0] + [r["params"] / full_params for r in levels],
        {label: [original["psnr"]] + [r["quality"][key]["psnr"] for r in levels] for key, label in
         (("inn_tuned", tune_head), ("inn", "INN, no tuning"), ("l1", "L1 pruning"), ("random", "random pruning"))},
        references={"original EDSR": original["psnr"], "bicubic": bicubic["psnr"]}, ylabel="Y-PSNR (dB)",
        title="EDSR x2: PSNR vs parameters kept (inner channels of the residual blocks removed)")]
    name = "chelsea" if "chelsea" in photos else next(iter(photos))
    hr = photos[name]
    lr = sr.degrade(hr)
    mid = min(levels, key=lambda r: abs(r["removed"] - 0.5))
    shown = {"high-res (held-out)": hr}
    for label, model in (("bicubic", None), ("EDSR", net), (f"EDSR, {mid['removed']:.0%} removed + grid tuning",
                                                              mid["nets"]["inn_tuned"])):
        out = sr.bicubic_upscale(lr) if model is None else sr.super_resolve(model, lr)
        shown[f"{label}\n{sr.psnr(out, hr):.2f} dB"] = out
    written.append(plots.side_by_side(cfg.out / "superres.png", shown,
                                      title=f"x2 super-resolution of a crop of '{name}' (Y-PSNR)"))
    written.append(plots.feature_maps(
        cfg.out / "feature_maps_edsr.png", first_conv_output(net, lr[None])[0],
        first_conv_output(imodel.to_discrete(graph=True).eval(), lr[None])[0],
        title=f"EDSR head convolution on the low-res crop of '{name}'", columns=8))
    crop = "whole photos" if cfg.crop is None else f"{cfg.crop}x{cfg.crop} centre crops"
    notes = [f"Y-PSNR (dB) / Y-SSIM on {crop} of the held-out photos {', '.join(photos)} (border of 2 px cropped). "
             "At each level all four networks have the same shape.",
             f"Grid tuning: {cfg.tune_seconds:g} s per level on {cfg.sr_calib} batches of {cfg.sr_batch} patches "
             f"({cfg.sr_patch}x{cfg.sr_patch} low-res) of the training photos, distillation against the original; "
             "L1 and random: channels cut, no fine-tuning.",
             f"Speed: discrete networks, eager, batch 1, {torch.get_num_threads()} thread(s), images/s (ratio to "
             f"the original); load average {load_text()}."]
    for r in levels:
        del r["nets"]
    return StoryResult("superres", "Super-resolution: EDSR x2, INN vs channel selection", table, notes,
                       {"original": original, "bicubic": bicubic, "params": full_params, "levels": levels,
                        "speed": ips, "convert_seconds": convert_s, "checkpoint": meta},
                       written, time.perf_counter() - t_start)


_RUNNERS: dict[str, Callable[[TourConfig], StoryResult]] = {"classification": classification, "superres": superres}


def run(stories: Sequence[str] = STORIES, config: TourConfig | None = None) -> list[StoryResult]:
    """Run the named stories in order with ``config`` (threads and seed set for the run, then
    restored; the global RNG is left as it was)."""
    cfg = config or TourConfig()
    bad = [s for s in stories if s not in _RUNNERS]
    if bad:
        raise ValueError(f"unknown stories {bad}; choose from {list(_RUNNERS)}")
    threads = torch.get_num_threads()
    results = []
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        with torch.random.fork_rng(devices=[]):
            for story in stories:
                torch.manual_seed(cfg.seed)
                results.append(_RUNNERS[story](replace(cfg)))
    finally:
        torch.set_num_threads(threads)
    return results
