"""The close calls of ``benchmarks/real_networks.py``, examined (issue 14).

Some rows there are decided by one or two test examples, or by a twentieth of a dB. Two looks
tell a real difference from the measurement's resolution:

* ``fidelity`` (classifiers: ``mnist_cnn``, ``mnist_mlp`` with their labels, and
  ``efficientnet_lite0``, whose "labels" are the original's top-1 classes): at the sizes
  real_networks.py shares, ``compress`` against itself without its reconstruction candidate
  (``reconstruct=False``: integral partitions only) and L1, random and the reconstruction
  baselines, example by example: how many held-out predictions differ from the original network's, the KL
  divergence from the original's class probabilities (what ``compress`` chooses by, on its
  calibration data), how many examples only one of the two gets right, and the exact two-sided
  sign test on those (p: the chance of a split at least that uneven between two equally good
  networks; examples are treated as independent, which crops of three photos are not).
  ``--seconds S`` tunes every network S seconds first (``compress``'s choices inside them, the
  baselines' fine-tuning as in real_networks.py).
* ``repeat``: ``compress`` with S seconds and a baseline with S seconds of fine-tuning, run
  ``--runs`` times at the same sizes: the spread the clock alone causes (the step counts vary
  with the machine's speed; every seed is fixed).

    python benchmarks/real_close_calls.py fidelity --network mnist_mlp --level 0.25 [--seconds 60]
    python benchmarks/real_close_calls.py repeat --network waifu2x_photo --level 0.5 --baseline random [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

try:  # imported as benchmarks.real_close_calls (the tests) or run as a script from benchmarks/
    from . import realnets
    from .real_networks import Settings, _tune, log
except ImportError:
    import realnets  # type: ignore[no-redef]
    from real_networks import Settings, _tune, log  # type: ignore[no-redef]

import torchinn as inn
from torchinn.training.train import LOSSES, kl_distillation_loss, loss_kind
from torchinn_demo import harness


def sign_test(a: int, b: int) -> float:
    """Exact two-sided sign test: the chance of a split at least as uneven as ``a`` : ``b`` when
    each of the ``a + b`` examples goes either way with probability 1/2."""
    n, k = a + b, min(a, b)
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n)


def _logits(model: nn.Module, x: Tensor, batch: int = 100) -> Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def _setup(name: str, level: float, s: Settings) -> tuple[Any, nn.Module, inn.IntegralModel, list, dict[str, int]]:
    mod = realnets.get(name)
    net = mod.load()
    cal = mod.calibration(s.calib)
    imodel = inn.convert(net, mod.example_inputs())
    sizes = inn.choose_sizes(imodel, 1.0 - level, "params", calibration=cal, max_batches=s.sens_batches)
    return mod, net, imodel, cal, sizes


def _compress(mod: Any, net: nn.Module, cal: list, level: float, sizes: dict[str, int], s: Settings,
              reconstruct: bool = True) -> tuple[nn.Module, inn.CompressReport]:
    tune = _tune(s) if s.seconds > 0 else False
    return inn.compress(net, mod.example_inputs(), 1.0 - level, "params", calibration=cal, tune=tune, sizes=sizes,
                        reconstruct=reconstruct)


def _baseline(net: nn.Module, imodel: inn.IntegralModel, cal: list, sizes: dict[str, int], method: str,
              s: Settings) -> tuple[nn.Module, int]:
    pruned = inn.prune(imodel, sizes, method, calibration=cal).eval()
    steps = 0
    if s.seconds > 0:
        with torch.no_grad():
            loss = loss_kind(net(*cal[0]))
        steps = inn.finetune(pruned, cal, teacher=net, tune=_tune(s), loss_fn=LOSSES[loss])["steps"]
    return pruned.eval(), steps


def fidelity(name: str, level: float, s: Settings) -> list[str]:
    mod, net, imodel, cal, sizes = _setup(name, level, s)
    if not hasattr(mod, "heldout"):
        raise SystemExit(f"{name} has no labelled held-out data (fidelity needs a classifier with heldout())")
    x, y = mod.heldout(s.quick)
    reference = _logits(net, x)
    original = reference.argmax(-1)
    small, report = _compress(mod, net, cal, level, sizes, s)
    logits = _logits(small, x)
    ours = logits.argmax(-1)

    def cells(out: Tensor, pred: Tensor) -> str:
        kl = float(kl_distillation_loss(out, None, reference))
        return f"{100 * float((pred == y).float().mean()):.2f}% | {int((pred != original).sum())} | {kl:.4g}"

    tuned = f", {s.seconds:g} s each" if s.seconds > 0 else ", no tuning"
    lines = [f"{name}, {level:.0%} fewer parameters{tuned}, {len(y)} held-out examples "
             f"(original: {100 * float((original == y).float().mean()):.2f}%)", "",
             "| network | accuracy | differs from the original | KL to the original | "
             "right where the other is wrong | sign test p |", "|---|---|---|---|---|---|",
             f"| compress (start: {'+'.join(sorted(set(report.starts.values())))}, "
             f"{report.tuning.get('steps', 0)} steps) | {cells(logits, ours)} | | |"]
    def partitions_only() -> tuple[nn.Module, int]:
        small, report = _compress(mod, net, cal, level, sizes, s, reconstruct=False)
        return small, report.tuning.get("steps", 0)

    ft = " + FT ({} steps)" if s.seconds > 0 else ""
    others = [("compress, reconstruct=False ({} steps)", "partitions", partitions_only)]
    others += [(method + ft, method, functools.partial(_baseline, net, imodel, cal, sizes, method, s))
               for method in ("l1", "random", "reconstruct")]
    for label, short, make in others:
        theirs_net, steps = make()
        out = _logits(theirs_net, x)
        theirs = out.argmax(-1)
        a, b = int(((ours == y) & (theirs != y)).sum()), int(((theirs == y) & (ours != y)).sum())
        lines.append(f"| {label.format(steps)} | {cells(out, theirs)} | compress {a}, {short} {b} | "
                     f"{sign_test(a, b):.2f} |")
    return lines


def repeat(name: str, level: float, baseline: str, runs: int, s: Settings) -> list[str]:
    mod, net, imodel, cal, sizes = _setup(name, level, s)
    rows = []
    for run in range(runs):
        torch.manual_seed(0)
        small, report = _compress(mod, net, cal, level, sizes, s)
        ours = mod.evaluate(small, quick=s.quick)
        torch.manual_seed(0)
        theirs_net, steps = _baseline(net, imodel, cal, sizes, baseline, s)
        rows.append((ours, report.tuning.get("steps", 0), mod.evaluate(theirs_net, quick=s.quick), steps))
        log(f"run {run + 1}: compress {ours:.3f} ({rows[-1][1]} steps), {baseline} + FT {rows[-1][2]:.3f} "
            f"({steps} steps)")
    lines = [f"{name}, {level:.0%} fewer parameters, {s.seconds:g} s each, {runs} runs: {mod.metric_name}", "",
             f"| run | compress | {baseline} + FT |", "|---|---|---|"]
    lines += [f"| {i + 1} | {a:.3f} ({n} steps) | {b:.3f} ({m} steps) |" for i, (a, n, b, m) in enumerate(rows)]

    def spread(v: list[float]) -> str:
        return f"{statistics.mean(v):.3f} (range {max(v) - min(v):.3f})"

    lines.append(f"| mean | {spread([r[0] for r in rows])} | {spread([r[2] for r in rows])} |")
    return lines


def main(argv: Sequence[str] | None = None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("look", choices=["fidelity", "repeat"])
    ap.add_argument("--network", required=True, choices=realnets.NETWORKS)
    ap.add_argument("--level", type=float, required=True, help="fraction of the parameters removed, in (0, 1)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="tuning / fine-tuning per method (fidelity: default 0; repeat: default 60)")
    ap.add_argument("--baseline", default="random", choices=["l1", "random", "reconstruct"], help="repeat only")
    ap.add_argument("--runs", type=int, default=3, help="repeat only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the networks' quick evaluation sets")
    a = ap.parse_args(argv)
    if not 0.0 < a.level < 1.0:
        ap.error(f"--level is the fraction of parameters removed, in (0, 1); got {a.level}")
    if a.runs < 1:
        ap.error(f"--runs must be >= 1, got {a.runs}")
    seconds = a.seconds if a.seconds is not None else (0.0 if a.look == "fidelity" else 60.0)
    if seconds < 0 or (a.look == "repeat" and seconds == 0):
        ap.error(f"--seconds must be > 0 for repeat and >= 0 for fidelity, got {seconds}")
    s = Settings(networks=(a.network,), seconds=seconds, threads=a.threads, quick=a.quick)
    torch.set_num_threads(s.threads)
    log(harness.machine_line())
    lines = (fidelity(a.network, a.level, s) if a.look == "fidelity"
             else repeat(a.network, a.level, a.baseline, a.runs, s))
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
