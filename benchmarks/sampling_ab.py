"""The two sampling changes of 2026-12-07 switched off and on in one process (interleaved
rounds, CPU-time medians), ResNet-18 at 50% of every group, batch 32, against the plain network:

* ``middle_tap_sum`` (a dim after the first sampled in place): off = ``MIDDLE_MIN_ROW`` out of reach;
* the kept samples of steps that train only quadrature weights (``FrozenSamples``): off = every
  step samples, the weights folded into the taps (as before).

    python benchmarks/sampling_ab.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import overhead as o
import torchinn as inn
import torchinn.maths.functions as functions
import torchinn.maths.structured as structured
from torchinn.training.train import make_grid_trainable
from torchinn_demo.harness import load_average
from torchinn_demo.zoo import resnet18

FROZEN = structured._frozen


def switched(step: Callable[[], None], on: bool) -> Callable[[], None]:
    def run() -> None:
        functions.MIDDLE_MIN_ROW = 9 if on else 10**9
        structured._frozen = FROZEN if on else (lambda *a: False)
        step()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    o.CLOCK[0] = time.process_time
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"# 1 thread, batch 32, load average {load_average()[0]:.1f}, cpu clock; ms (ratio to plain)")
    model = resnet18(num_classes=10).eval()
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    imodel = inn.convert(model, (x[:2],), inn.ConvertConfig(permute=False))
    imodel.resize(0.5)
    small = o.to_discrete(imodel)
    imodel.train(), small.train()
    tuned = inn.convert(model, (x[:2],), inn.ConvertConfig(permute=False))
    tuned.resize(0.5)
    make_grid_trainable(tuned)
    tuned.eval()
    grid = list(tuned.partitions.parameters())
    for p in tuned.parameters():
        p.requires_grad_(p in set(grid))
    scaled = o.scaled_half(inn.convert(model, (x[:2],), inn.ConvertConfig(permute=False))).train()
    rows = {
        "training step, 50%": (imodel, list(imodel.parameters()), False),
        "training step, 50%, fused Adam": (imodel, list(imodel.parameters()), True),
        "grid-tuning step, 50%": (tuned, grid, False),
        "elastic scales step, 50%": (scaled, [p for p in scaled.parameters() if p.requires_grad], False),
    }
    print("| step | before ms | after ms | plain ms | before ratio | after ratio |")
    print("|---|---|---|---|---|---|")
    for name, (net, params, fused) in rows.items():
        t = o.timed({"before": switched(o.train_step(net, x, y, params, fused), False),
                     "after": switched(o.train_step(net, x, y, params, fused), True),
                     "plain": o.train_step(small, x, y, list(small.parameters()), fused)}, args.repeats)
        print(f"| {name} | {t['before'] * 1e3:.1f} | {t['after'] * 1e3:.1f} | {t['plain'] * 1e3:.1f} | "
              f"{t['before'] / t['plain']:.2f} | {t['after'] / t['plain']:.2f} |")


if __name__ == "__main__":
    main()
