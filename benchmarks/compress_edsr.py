"""Compress the shipped EDSR x2 inside its residual blocks: INN grid tuning vs L1 and random pruning.

The EDSR of :mod:`torchinn_demo.sr` (``src/torchinn_demo/checkpoints/edsr_x2.safetensors``, trained by
``benchmarks/train_edsr.py``) is converted with ``inn.convert``. As in the blog post, only the
groups produced by each residual block's *first* convolution (its inner channels) shrink; the
residual stream, the head, the upsampler and the tail keep their size. For 25%, 50% and 75% of the
inner channels removed, every method gives a network of exactly the same shape:

* INN resampled at the new sizes (no tuning);
* INN after integration grid tuning for ``--seconds`` (only the partitions move; distillation
  against the original network on training patches, the library's default);
* L1-norm and random channel selection (``torchinn.compression.baselines.prune``), as cut, and after
  fine-tuning all their weights for the same ``--seconds`` (same patches, loss and teacher);
* the INN's resampled network fine-tuned the same way (what the baselines get, from the INN's
  starting point instead of theirs);
* the reconstruction baseline (L1 selection + least-squares refit of the consuming layers), as cut
  and fine-tuned the same way;
* ``torchinn.compress`` at the same sizes, no tuning and with ``--seconds`` in all (its choice of
  start and its tuning stages share them).

Quality is Y-PSNR / Y-SSIM (border of 2 pixels cropped) on the held-out photos, never seen in
training or calibration. Speed is measured on the plain discrete networks at batch 1, 64x64 and
256x256 inputs, eager and ``torch.compile``, all models interleaved round by round in one run.
``--variants`` tries other conversion/tuning settings at 50%. Prints markdown tables.

    python benchmarks/compress_edsr.py [--seconds 60] [--variants all] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchinn as inn
from torchinn.compression.baselines import prune
from torchinn.sizing.metrics import count_flops
from torchinn.training.train import TuneConfig, finetune
from torchinn_demo import sr
from torchinn_demo.harness import Table, cpu_name, interleaved_times, load_average, resample_and_tune

#: variants tried at 50% with ``--variants``: conversion and tuning settings that may matter
VARIANTS: dict[str, dict[str, Any]] = {
    "default (trapezoid, cubic, lr 1e-3)": {},
    "quadrature=midpoint": {"quadrature": "midpoint"},
    "kind=catmull-rom": {"kind": "catmull-rom"},
    "kind=linear": {"kind": "linear"},
    "lr=3e-3": {"lr": 3e-3},
    "lr=3e-4": {"lr": 3e-4},
    "train biases": {"train": ("biases",)},
    "loss=L1 vs high-res": {"loss": "hr"},
    "calibration x4 (4x more patches)": {"calib_mult": 4},
}


@dataclass
class Settings:
    checkpoint: str | None = None          # None: the shipped checkpoint
    levels: tuple[float, ...] = (0.25, 0.5, 0.75)   # fraction of the inner channels removed
    seconds: float = 60.0                  # tuning / fine-tuning budget per network
    quadrature: str = "trapezoid"
    kind: str = "cubic"
    lr: float = 1e-3                       # grid tuning (TuneConfig's default)
    ft_lr: float = 1e-4                    # baselines' fine-tuning (EDSR's training lr)
    batch: int = 8                         # calibration batches: (low-res, high-res) patch pairs
    patch: int = 32
    calib: int = 32                        # number of calibration batches (cycled)
    seed: int = 0
    threads: int = 1                       # tuning and evaluation: under load, 2 OpenMP threads
                                           # ran 3-7x fewer tuning steps per minute than 1
    finetune: bool = True
    variants: tuple[str, ...] = ()
    speed_sizes: tuple[int, ...] = (64, 256)
    speed_threads: tuple[int, ...] = (1, 2)  # () : no speed measurement
    compile: bool = True
    rounds: tuple[int, ...] = (20, 5)      # timing rounds per speed size
    quick: bool = False


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> str:
    return (f"torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} cores, "
            f"load average {load_average()[0]:.2f}")


# -- data and quality -------------------------------------------------------------------------

def heldout(s: Settings) -> dict[str, Tensor]:
    photos = {n: sr.mod_crop(sr.load_photo(n)) for n in sr.HELDOUT_PHOTOS}
    if s.quick:  # a 64x64 centre crop of each
        photos = {n: p[:, p.shape[1] // 2 - 32: p.shape[1] // 2 + 32, p.shape[2] // 2 - 32: p.shape[2] // 2 + 32]
                  for n, p in photos.items()}
    return photos


def calibration(s: Settings, mult: int = 1) -> list[tuple[Tensor, Tensor]]:
    sampler = sr.PatchSampler(sr.TRAIN_PHOTOS, patch=s.patch, batch_size=s.batch, seed=s.seed + 1)
    return [sampler.sample() for _ in range(s.calib * mult)]


def quality(model: nn.Module | None, photos: dict[str, Tensor]) -> dict[str, float]:
    if model is not None:
        model.eval()
    r = sr.evaluate(model, photos)
    return {"psnr": r["psnr"], "ssim": r["ssim"]}


def hr_loss(output: Tensor, batch: Any, teacher_output: Tensor) -> Tensor:
    return F.l1_loss(output, batch[1])


def _finetune(net: nn.Module, teacher: nn.Module, batches: Sequence[tuple], s: Settings) -> dict[str, Any]:
    """Adam on every weight of a plain pruned network for ``s.seconds``: :func:`torchinn.training.train.finetune`,
    the loop of ``tune_grid`` (distillation against the same teacher, the same held-out batches)."""
    report = finetune(net, batches, teacher=teacher, tune=TuneConfig(seconds=s.seconds, lr_weights=s.ft_lr,
                                                                       progress=False))
    for p in net.parameters():
        p.requires_grad_(False)
    return report


def inner_sizes(imodel: inn.IntegralModel, n_blocks: int, removed: float) -> dict[str, int]:
    """Each residual block's inner group (produced by its first conv) at ``1 - removed``."""
    out = {}
    for i in range(n_blocks):
        g = imodel.groups[f"body.{i}.conv1"]
        out[g.name] = max(1, round((1 - removed) * g.max_size))
    return out


def compress_inn(imodel: inn.IntegralModel, sizes: dict[str, int], teacher: nn.Module,
                 batches: Sequence[tuple], s: Settings, lr: float | None = None,
                 train: Sequence[str] = (), loss: str = "distill") -> tuple[nn.Module, nn.Module, dict]:
    """(untuned discrete net, tuned discrete net, tuning report) at ``sizes``."""
    cfg = TuneConfig(seconds=s.seconds, lr=lr or s.lr, train=tuple(train), progress=False)
    return resample_and_tune(imodel, sizes, batches, teacher, cfg, loss_fn=hr_loss if loss == "hr" else None)


# -- speed ------------------------------------------------------------------------------------

def speed(models: dict[str, nn.Module], s: Settings) -> list[dict[str, Any]]:
    """Images per second of every model at batch 1, per (threads, input size, eager/compile):
    models interleaved round by round (the order rotates), median time per model."""
    rows = []
    modes = ("eager", "compile") if s.compile else ("eager",)
    for threads in s.speed_threads:
        torch.set_num_threads(threads)
        for mode in modes:
            if mode == "compile":
                torch._dynamo.reset()
            fns = {n: (torch.compile(m, dynamic=False) if mode == "compile" else m) for n, m in models.items()}
            for size, rounds in zip(s.speed_sizes, s.rounds):
                x = torch.rand(1, 3, size, size)
                load0 = load_average()[0]
                times, warm = interleaved_times(fns, x, rounds, warmup=2)
                names = list(fns)
                for n in names:
                    rows.append({"threads": threads, "mode": mode, "size": size, "model": n,
                                 "ips": 1.0 / statistics.median(times[n]), "warmup_s": warm[n],
                                 "load": [load0, load_average()[0]]})
                log(f"speed: {threads} threads, {mode}, {size}x{size}: " + ", ".join(
                    f"{r['model']} {r['ips']:.2f}/s" for r in rows[-len(names):]))
    torch.set_num_threads(s.threads)
    return rows


# -- the benchmark ----------------------------------------------------------------------------

def run(s: Settings) -> dict[str, Any]:
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    net, meta = sr.load_edsr(s.checkpoint)
    n_blocks = meta["config"]["n_blocks"]
    photos = heldout(s)
    batches = calibration(s)
    result: dict[str, Any] = {"settings": asdict(s), "machine": machine(), "checkpoint": meta}
    log(result["machine"])

    t0 = time.perf_counter()
    imodel = inn.convert(net, (batches[0][0][:1],), inn.ConvertConfig(quadrature=s.quadrature, kind=s.kind))
    result["convert_seconds"] = time.perf_counter() - t0
    log(f"converted in {result['convert_seconds']:.1f} s: {len(imodel.groups)} groups")
    result["original"] = quality(net, photos)
    result["bicubic"] = quality(None, photos)
    full_params = sum(p.numel() for p in net.parameters())
    result["original"]["params"] = full_params
    log(f"original {result['original']}, bicubic {result['bicubic']}")

    levels, speed_models = [], {"original": net, "INN 100% (to_discrete)": imodel.to_discrete(graph=True).eval()}
    for removed in s.levels:
        sizes = inner_sizes(imodel, n_blocks, removed)
        row: dict[str, Any] = {"removed": removed, "size": next(iter(sizes.values()))}
        untuned, tuned, rep = compress_inn(imodel, sizes, net, batches, s)
        row["params"] = sum(p.numel() for p in tuned.parameters())
        row["inn"], row["inn_tuned"], row["tuning"] = quality(untuned, photos), quality(tuned, photos), rep
        speed_models[f"{removed:.0%} removed"] = tuned
        if s.finetune:  # the INN's resampled network fine-tuned like the baselines: same start-up cost
            row["inn_ft_report"] = _finetune(untuned, net, batches, s)
            row["inn_ft"] = quality(untuned, photos)
        for method in ("l1", "random", "reconstruct"):
            pruned = prune(imodel, sizes, method, seed=s.seed, calibration=batches).eval()
            row[method] = quality(pruned, photos)
            if s.finetune:
                row[f"{method}_ft_report"] = _finetune(pruned, net, batches, s)
                row[f"{method}_ft"] = quality(pruned, photos)
        config = inn.ConvertConfig(quadrature=s.quadrature, kind=s.kind)
        for key, tune in (("compress", False), ("compress_tuned", TuneConfig(seconds=s.seconds, progress=False))):
            t0 = time.perf_counter()
            small, rep = inn.compress(net, (batches[0][0][:1],), 1 - removed, calibration=batches, sizes=sizes,
                                      tune=tune, config=config)
            row[key] = quality(small, photos)
            row[key + "_report"] = {"steps": rep.tuning.get("steps", 0), "wall": time.perf_counter() - t0,
                                    "start": sorted(set(rep.starts.values()))}
        log(f"{removed:.0%} removed: " + json.dumps({k: v for k, v in row.items() if "report" not in k},
                                                   default=lambda v: round(v, 4)))
        levels.append(row)
    result["levels"] = levels

    variants = []
    names = list(VARIANTS) if "all" in s.variants else list(s.variants)
    for name in names:
        v = VARIANTS[name]
        base = imodel
        if "quadrature" in v or "kind" in v:
            base = inn.convert(net, (batches[0][0][:1],), inn.ConvertConfig(
                quadrature=v.get("quadrature", s.quadrature), kind=v.get("kind", s.kind)))
        b = calibration(s, v.get("calib_mult", 1)) if "calib_mult" in v else batches
        sizes = inner_sizes(base, n_blocks, 0.5)
        untuned, tuned, rep = compress_inn(base, sizes, net, b, s, lr=v.get("lr"), train=v.get("train", ()),
                                           loss=v.get("loss", "distill"))
        variants.append({"name": name, "inn": quality(untuned, photos), "inn_tuned": quality(tuned, photos),
                         "tuning": rep})
        log(f"variant {name}: {variants[-1]}")
    result["variants"] = variants

    x = {size: torch.rand(1, 3, size, size) for size in s.speed_sizes}
    result["flops"] = {n: {size: count_flops(m, (x[size],)) for size in s.speed_sizes} for n, m in speed_models.items()}
    result["params"] = {n: sum(p.numel() for p in m.parameters()) for n, m in speed_models.items()}
    result["speed"] = speed(speed_models, s)
    result["machine_after"] = machine()
    return result


# -- tables -----------------------------------------------------------------------------------

def _q(r: dict[str, float]) -> str:
    return f"{r['psnr']:.2f} / {r['ssim']:.4f}"


def format_tables(res: dict[str, Any]) -> str:
    s = res["settings"]
    o, b = res["original"], res["bicubic"]
    out = [f"Machine: {res['machine']} (before) / load average {res['machine_after'].rsplit(' ', 1)[-1]} (after); "
           f"{s['threads']} threads for tuning and evaluation.",
           f"Held-out photos {', '.join(sr.HELDOUT_PHOTOS)}: Y-PSNR (dB) / Y-SSIM, border 2 px cropped.",
           f"Original EDSR ({o['params']:,} parameters): **{_q(o)}**; bicubic: {_q(b)}.", ""]
    cols = ["inner channels removed", "params", "INN, no tuning", f"INN + grid tuning ({s['seconds']:g} s)",
            "L1", "random", "reconstruction", "compress, no tuning", f"compress ({s['seconds']:g} s in all)"]
    if s["finetune"]:
        cols += [f"INN resampled + fine-tuning ({s['seconds']:g} s)", f"L1 + fine-tuning ({s['seconds']:g} s)",
                 f"random + fine-tuning ({s['seconds']:g} s)", f"reconstruction + fine-tuning ({s['seconds']:g} s)"]
    rows = []
    for r in res["levels"]:
        cells = [f"{r['removed']:.0%} (64 -> {r['size']})", f"{r['params'] / o['params']:.1%}", _q(r["inn"]),
                 f"{_q(r['inn_tuned'])} ({r['tuning']['steps']} steps)", _q(r["l1"]), _q(r["random"]),
                 _q(r["reconstruct"]), _q(r["compress"]),
                 f"{_q(r['compress_tuned'])} ({r['compress_tuned_report']['steps']} steps, "
                 f"{r['compress_tuned_report']['wall']:.0f} s, start {'+'.join(r['compress_tuned_report']['start'])})"]
        if s["finetune"]:
            cells += [f"{_q(r[m + '_ft'])} ({r[m + '_ft_report']['steps']} steps)"
                      for m in ("inn", "l1", "random", "reconstruct")]
        rows.append(cells)
    out.append(Table(cols, rows).markdown(aligned=False))
    if res["variants"]:
        rows = [[v["name"], _q(v["inn"]), _q(v["inn_tuned"]), str(v["tuning"]["steps"]),
                 f"{v['tuning']['first_loss']:.3g} -> {v['tuning']['last_loss']:.3g}"] for v in res["variants"]]
        out += ["", "Variants at 50% removed (INN; Y-PSNR / Y-SSIM):", "",
                Table(["variant", "no tuning", "grid tuning", "steps", "distillation loss first -> last"],
                      rows).markdown(aligned=False)]
    rows = res["speed"]
    if not rows:
        return "\n".join(out)
    keys = sorted({(r["threads"], r["mode"], r["size"]) for r in rows}, key=lambda k: (k[0], k[2], k[1]))
    ips = {(r["threads"], r["mode"], r["size"], r["model"]): r["ips"] for r in rows}
    models = list(res["params"])
    size0 = min(s["speed_sizes"])
    out += ["", f"Speed of the discrete networks, batch 1 (images/s, ratio to the original); "
                f"GFLOPs at {size0}x{size0}:", ""]
    head = ["model", "params", "GFLOPs"] + [f"{t}T {m} {z}x{z}" for t, m, z in keys]
    rows = []
    for n in models:
        cells = [n, f"{res['params'][n]:,}", f"{res['flops'][n][size0] / 1e9:.2f} "
                 f"({res['flops']['original'][size0] / res['flops'][n][size0]:.2f}x)"]
        for t, m, z in keys:
            v, ref = ips[(t, m, z, n)], ips[(t, m, z, "original")]
            cells.append(f"{v:.2f} ({v / ref:.2f}x)")
        rows.append(cells)
    out.append(Table(head, rows).markdown(aligned=False))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="an EDSR safetensors file (default: the shipped one)")
    ap.add_argument("--levels", type=float, nargs="*", default=d.levels, help="fractions of inner channels removed")
    ap.add_argument("--seconds", type=float, default=d.seconds, help="tuning / fine-tuning budget (s)")
    ap.add_argument("--quadrature", default=d.quadrature)
    ap.add_argument("--kind", default=d.kind)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--speed-threads", type=int, nargs="*", default=d.speed_threads,
                    help="thread counts for the speed table (none: skip it)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--variants", nargs="*", default=(), help=f"'all' or names from {list(VARIANTS)}")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--quick", action="store_true", help="a tiny setting that runs in seconds (tests)")
    args = ap.parse_args(argv)
    s = Settings(checkpoint=args.checkpoint, levels=tuple(args.levels), seconds=args.seconds,
                 quadrature=args.quadrature, kind=args.kind, lr=args.lr, seed=args.seed, threads=args.threads,
                 finetune=not args.no_finetune, variants=tuple(args.variants),
                 speed_threads=tuple(args.speed_threads), compile=not args.no_compile)
    bad = [v for v in s.variants if v != "all" and v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {list(VARIANTS)} or 'all'")
    if args.quick:
        s.quick, s.levels, s.batch, s.patch, s.calib = True, (0.5,), 2, 16, 2
        s.seconds = min(s.seconds, 0.5)
        s.speed_sizes, s.rounds, s.compile = (32,), (2,), False
    t0 = time.perf_counter()
    res = run(s)
    res["seconds"] = time.perf_counter() - t0
    print(format_tables(res))
    print(f"\n(total {res['seconds'] / 60:.1f} min; conversion {res['convert_seconds']:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
