"""One elastic network against compress once per size (issue 24), on real pretrained networks.

For a network of ``benchmarks/realnets/`` (loaded, calibrated and evaluated as
``benchmarks/real_networks.py`` does): ``torchinn.make_elastic`` trains for ``--seconds`` T on the
calibration batches, then the one elastic network is deployed at every ``--targets`` fraction of
the parameters (``ElasticNetwork.resize(target=...)``: sizes shared by the curves it measured)
and evaluated; ``torchinn.compress`` runs once per fraction with T/5 s (equal total time) and with
60 s (``--compress-seconds``), on the same calibration batches. "elastic 0 s" is the ranked
network before training (its curves and sizes, no weight changed). Quality is the network's own
metric on held-out data (higher is better). Prints a markdown table and writes JSON.

    python benchmarks/elastic.py --network waifu2x_photo --seconds 300 --threads 1 --out elastic.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

try:  # imported as benchmarks.elastic (the tests) or run as a script from benchmarks/
    from . import realnets
except ImportError:
    import realnets  # type: ignore[no-redef]

import torchinn as inn
from torchinn_demo import harness

TARGETS = (0.25, 0.4, 0.5, 0.6, 0.75, 1.0)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _deploy(elastic: inn.elastic.ElasticNetwork, mod: Any, targets: Sequence[float], quick: bool) -> dict[str, Any]:
    out = {}
    for t in targets:
        if t < 1.0:
            elastic.resize(target=t)
        else:
            elastic.resize(1.0)
        net = elastic.to_discrete(graph=True).eval()
        out[str(t)] = {"quality": mod.evaluate(net, quick=quick), "params": harness.n_params(net),
                       "sizes": elastic.sizes()}
    elastic.resize(1.0)
    return out


def _refit(elastic: inn.elastic.ElasticNetwork, mod: Any, targets: Sequence[float], cal: Any,
           quick: bool) -> dict[str, Any]:
    """Each deployed size (scales and corrections as trained) followed by the least-squares refit of
    every layer reading a resized group (``torchinn.compression``'s reconstruction: per-size full
    weights of those layers): the quality, and the bytes those per-size weights take."""
    from torchinn.compression.refit import refit_consumers
    from torchinn.maths.structured import plan_size, take_channels

    elastic.resize(1.0)
    full = elastic.to_discrete(graph=True).eval()
    plans = elastic.imodel.plans()
    out = {}
    for t in targets:
        if t >= 1.0:
            continue
        sizes = elastic.resize(target=t)
        keep = {g: torch.sort(elastic.orders[g][:k]).values for g, k in sizes.items()
                if g in elastic.orders and k < elastic.groups[g].max_size}
        kept = {n: [take_channels(torch.arange(plan_size(p)), (p,), keep) if any(
            a.group in keep for seg in p for a in seg) else None for p in plan] for n, plan in plans.items()}
        pruned = elastic.to_discrete(graph=True).eval()
        t0 = time.perf_counter()
        rep = refit_consumers(full, pruned, [b for b in cal], kept)
        named = dict(pruned.named_parameters())
        refit = [n for n, r in rep.items() if "skipped" not in r]
        nbytes = sum(named[n].numel() * named[n].element_size() for n in refit)
        nbytes += sum(named[n.rsplit(".", 1)[0] + ".bias"].numel() * 4 for n in refit
                      if n.rsplit(".", 1)[0] + ".bias" in named)
        out[str(t)] = {"quality": mod.evaluate(pruned, quick=quick), "refit_layers": len(refit),
                       "bytes": nbytes, "seconds": time.perf_counter() - t0}
        log(f"  refit at {t}: {out[str(t)]['quality']:.2f} ({len(refit)} layers, {nbytes / 2**20:.2f} MiB, "
            f"{out[str(t)]['seconds']:.0f} s)")
    elastic.resize(1.0)
    return out


#: the designs ``--designs`` may compare, each trained for T: name -> make_elastic's keywords
#: (``lr`` is the benchmark's ``--lr`` unless set; ``deploy`` the benchmark's targets below 1)
DESIGNS = {"ranked": {}, "partitions": {"deploy": True, "deploy_kind": "partitions"},
           "partitions-frozen": {"deploy": True, "lr": 0.0, "deploy_kind": "partitions"},
           "scales": {"deploy": True, "lr": 0.0, "deploy_kind": "scales"},
           "scales-joint": {"deploy": True, "deploy_kind": "scales"},
           "scales-bias": {"deploy": True, "lr": 0.0, "deploy_kind": "scales-bias"},
           "scales-bias-fit": {"deploy": True, "lr": 0.0, "deploy_kind": "scales-bias", "fit_scales": True},
           "scales-refit": {"deploy": True, "lr": 0.0, "deploy_kind": "scales-refit"},
           "scales-tuned": {"deploy": True, "lr": 0.0, "deploy_kind": "scales-refit", "tune_share": 0.7},
           "scales-tuned-90": {"deploy": True, "lr": 0.0, "deploy_kind": "scales-refit", "tune_share": 0.9},
           "scales-tuned-best": {"deploy": True, "lr": 0.0, "deploy_kind": "scales-refit", "tune_share": 0.7,
                                 "deploy_sizes": "best"},
           "scales-tuned-best-r90": {"deploy": True, "lr": 0.0, "deploy_kind": "scales-refit", "tune_share": 0.7,
                                     "deploy_sizes": "best", "refit_share": 0.9},
           "scales-tuned-r90": {"deploy": True, "lr": 0.0, "deploy_kind": "scales-refit", "tune_share": 0.7,
                                "refit_share": 0.9}}
PARTITION_LR: list[float | None] = [None]  # --partition-lr (None: make_elastic's default)
REFIT = [False]  # --refit


def _design(net: Any, x: Any, cal: Any, name: str, seconds: float, lr: float, low: float,
            targets: Sequence[float]) -> tuple[inn.elastic.ElasticNetwork, dict[str, Any]]:
    kw = dict(DESIGNS[name])
    if kw.pop("deploy", False):
        kw["deploy"] = [t for t in targets if t < 1.0]
    kw.setdefault("lr", lr)
    if "deploy" in kw and PARTITION_LR[0] is not None:
        kw["partition_lr"] = PARTITION_LR[0]
    t0 = time.perf_counter()
    elastic, rep = inn.make_elastic(net, x, cal, seconds=seconds, low=low, **kw)
    log(f"[{name}] {rep}")
    return elastic, {"steps": rep.steps, "seconds": rep.seconds, "wall": time.perf_counter() - t0,
                     "kept_step": rep.kept_step, "ranking": rep.ranking, "loss": rep.loss, "lr": kw["lr"],
                     "full_tolerance": rep.full_tolerance, "full_metric": rep.full_metric,
                     "full_error_after": rep.full_error_after, "history": rep.history,
                     "quality": {str(r): q for r, q in rep.quality.items()},
                     "deployed": {str(t): q for t, q in rep.deployed.items()},
                     "deployed_bytes": {str(t): b for t, b in rep.deployed_bytes.items()},
                     "refit": {str(t): r for t, r in rep.refit.items()},
                     "deployed_sizes": {str(t): c for t, c in rep.deployed_sizes.items()},
                     "stages": getattr(rep, "stages", {}), "skipped": getattr(rep, "skipped", [])}


def run(network: str, seconds: float, targets: Sequence[float], compress_seconds: Sequence[float], calib: int,
        lr: float, low: float, quick: bool, designs: Sequence[str] = ("ranked",),
        reuse: dict[str, Any] | None = None) -> dict[str, Any]:
    mod = realnets.get(network)
    net = mod.load()
    x = mod.example_inputs()
    cal = mod.calibration(calib)
    res: dict[str, Any] = {"network": network, "metric": mod.metric_name, "params": harness.n_params(net),
                           "seconds": seconds, "lr": lr, "low": low, "calibration_batches": len(cal),
                           "machine": harness.machine_line()}
    res["original"] = mod.evaluate(net, quick=quick)
    log(f"{network}: {res['params']:,} parameters, original {res['original']:.2f} {mod.metric_name}")

    t0 = time.perf_counter()
    start, rep0 = inn.make_elastic(net, x, cal, steps=1, full_tolerance=0.0, low=low)
    res["elastic_0s"] = _deploy(start, mod, targets, quick)
    res["elastic_0s_report"] = {"ranking": rep0.ranking, "ranking_errors": rep0.ranking_errors,
                                "wall": time.perf_counter() - t0}
    log(f"  elastic 0 s ({rep0.ranking}): " + ", ".join(f"{t}: {v['quality']:.2f}" for t, v in res["elastic_0s"].items()))

    res["designs"] = {}
    for name in designs:
        elastic, report = _design(net, x, cal, name, seconds, lr, low, targets)
        res["designs"][name] = {"report": report, "deployed": _deploy(elastic, mod, targets, quick)}
        if REFIT[0]:
            res["designs"][name]["refit"] = _refit(elastic, mod, targets, cal, quick)
        log(f"  {name}: " + ", ".join(f"{t}: {v['quality']:.2f}" for t, v in res["designs"][name]["deployed"].items()))
    first = res["designs"][designs[0]]
    res["elastic"], res["elastic_report"] = first["deployed"], first["report"]

    res["compress"] = {}
    if reuse is not None:  # an earlier run's compress columns (same network, calibration, evaluation)
        res["compress"] = reuse["compress"]
        res["compress_reused_from"] = reuse.get("machine", "an earlier run")
        compress_seconds = ()
    for s in compress_seconds:
        rows = {}
        for t in targets:
            if t >= 1.0:
                continue
            t0 = time.perf_counter()
            small, report = inn.compress(net, x, t, "params", calibration=cal,
                                         tune=inn.TuneConfig(seconds=s, progress=False))
            rows[str(t)] = {"quality": mod.evaluate(small, quick=quick), "params": harness.n_params(small),
                            "wall": time.perf_counter() - t0, "steps": report.tuning.get("steps", 0)}
            log(f"  compress {s:g} s at {t}: {rows[str(t)]['quality']:.2f} ({rows[str(t)]['wall']:.0f} s)")
        res["compress"][f"{s:g}"] = rows
    res["machine_after"] = harness.machine_line()
    return res


def format_table(res: dict[str, Any]) -> str:
    cols = ["params kept", "params (elastic)", "elastic 0 s", f"elastic {res['seconds']:g} s"]
    cols += [f"compress {s} s each" for s in res["compress"]]
    rep = res["elastic_report"]
    out = [f"### {res['network']}: {res['metric']}", "",
           f"Original {res['original']:.2f}; {res['params']:,} parameters; {res['calibration_batches']} calibration "
           f"batches. Elastic: {rep['steps']} steps in {rep['seconds']:.0f} s (Adam lr {res['lr']:g}, sizes from "
           f"{res['low']:g}), channels ranked by {rep['ranking']}, state of step {rep['kept_step']} kept "
           f"(full-size {rep['full_metric']} {rep['full_error_after']:.3g}, tolerance {rep['full_tolerance']:g}). "
           f"{res['machine']}", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    more = list(res.get("designs", {}))[1:]  # the first design is the "elastic" column
    if more:
        cols[4:4] = [f"{n} {res['seconds']:g} s" for n in more]
        out[-2] = "| " + " | ".join(cols) + " |"
        out[-1] = "|" + "---|" * len(cols)
        for i, n in enumerate(more):
            r = res["designs"][n]["report"]
            out.insert(3 + i, f"{n}: {r['steps']} steps, lr {r['lr']:g}, state of step {r['kept_step']} kept, full-size "
                          f"{r['full_error_after']:.3g}; deployed errors " + ", ".join(
                              f"{float(t):.0%}: {b:.3g} -> {a:.3g}" for t, (_, b, a) in r["deployed"].items()) + ".")
    for t, e in res["elastic"].items():
        cells = [f"{float(t):.0%}", f"{e['params'] / res['params']:.1%}", f"{res['elastic_0s'][t]['quality']:.2f}",
                 f"{e['quality']:.2f}"]
        cells += [f"{res['designs'][n]['deployed'][t]['quality']:.2f}" for n in more]
        for rows in res["compress"].values():
            c = rows.get(t)
            cells.append("-" if c is None else f"{c['quality']:.2f} ({c['params'] / res['params']:.1%}, "
                                               f"{c['wall']:.0f} s)")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(res: dict[str, Any], path: str) -> str:
    """Quality against the fraction of the parameters kept: the elastic network before and after
    its training, compress once per size (each budget), the original as a dashed line."""
    from torchinn_demo.plots import compression_curve

    kept = sorted((float(t) for t in res["elastic"] if float(t) < 1.0), reverse=True)
    design = next(iter(res.get("designs", {})), "ranked")  # res["elastic"] is the first design run
    series = {f"elastic {res['seconds']:.0f} s ({design})": [res["elastic"][str(t)]["quality"] for t in kept],
              "elastic 0 s (ranked)": [res["elastic_0s"][str(t)]["quality"] for t in kept]}
    for budget, cells in res["compress"].items():
        if all(str(t) in cells for t in kept):
            series[f"compress {budget} s each"] = [cells[str(t)]["quality"] for t in kept]
    return str(compression_curve(path, kept, series, references={"original": res["original"]},
                                 ylabel=res["metric"], title=f"{res['network']}: one elastic network against "
                                 "compress per size", percent=False))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="waifu2x_photo", choices=realnets.NETWORKS)
    ap.add_argument("--seconds", type=float, default=600.0, help="elastic training budget T (s)")
    ap.add_argument("--targets", type=harness.fractions, default=TARGETS[:-1],
                    help="fractions of the parameters kept, each in (0, 1) (1.0 is always added)")
    ap.add_argument("--compress-seconds", default=None,
                    help="comma-separated compress budgets per size (default: T/5 and 60)")
    ap.add_argument("--calib", type=int, default=256, help="calibration examples")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--low", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--designs", default="ranked",
                    help=f"comma-separated elastic designs, each trained for T, the first in the plot: {', '.join(DESIGNS)}")
    ap.add_argument("--partition-lr", type=float, default=None,
                    help="learning rate of the deployed sizes' partitions (default: make_elastic's)")
    ap.add_argument("--reuse-compress", default=None, metavar="JSON",
                    help="take the compress columns from an earlier run's JSON instead of running compress")
    ap.add_argument("--refit", action="store_true",
                    help="also evaluate each design's deployed sizes after a least-squares refit of the layers "
                         "reading resized groups (per-size full weights of those layers: a data point)")
    ap.add_argument("--quick", action="store_true", help="small evaluation sets (tests)")
    ap.add_argument("--out", default=None, help="also write the results as JSON to this file")
    ap.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"), default=None,
                    help="instead of a run: draw the results of an earlier run's JSON as a PNG")
    args = ap.parse_args(argv)
    if args.plot:
        with open(args.plot[0]) as f:
            res = json.load(f)
        log(plot(res, args.plot[1]))
        return res
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    targets = tuple(sorted(set(args.targets) | {1.0}))
    budgets = ([float(s) for s in args.compress_seconds.split(",")] if args.compress_seconds
               else sorted({args.seconds / 5, 60.0}))
    designs = tuple(d.strip() for d in args.designs.split(","))
    bad = [d for d in designs if d not in DESIGNS]
    if bad:
        ap.error(f"--designs: unknown {bad}; choose among {list(DESIGNS)}")
    PARTITION_LR[0] = args.partition_lr
    REFIT[0] = args.refit
    reuse = None
    if args.reuse_compress:
        with open(args.reuse_compress) as f:
            reuse = json.load(f)
    res = run(args.network, args.seconds, targets, budgets, args.calib, args.lr, args.low, args.quick, designs, reuse)
    print(format_table(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
