"""What the continuous representation costs: integral model vs plain network at equal size.

Side by side in one run, for a converted ResNet-18 (CIFAR-size inputs) and the digits demo's
from-scratch integral CNN, each at 50% of every group:

* training step (forward + backward + Adam) of the integral model vs its ``to_discrete()``
  network trained the same way (goal: at most 1.3x);
* grid-tuning step (only the partitions train) vs the same plain training step;
* eval-mode forward of the integral model (cached sampled weights) vs ``to_discrete()``.

    python benchmarks/overhead.py [--threads 2] [--batch 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from zoo import resnet18  # noqa: E402

import torchinn as inn  # noqa: E402
from torchinn.demos.digits import integral_cnn  # noqa: E402
from torchinn.train import make_grid_trainable  # noqa: E402


def timed(fn: Callable[[], None], repeats: int) -> float:
    """Median seconds of ``fn`` after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: list) -> Callable[[], None]:
    opt = torch.optim.Adam(params, 1e-4)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def forward(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def compare(name: str, imodel: torch.nn.Module, small: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            repeats: int, tunable: Callable[[], torch.nn.Module] | None) -> None:
    imodel.train(), small.train()
    t_int = timed(train_step(imodel, x, y, list(imodel.parameters())), repeats)
    t_dis = timed(train_step(small, x, y, list(small.parameters())), repeats)
    print(f"| {name} | training step | {t_int * 1e3:.1f} | {t_dis * 1e3:.1f} | {t_int / t_dis:.2f} |")
    if tunable is not None:
        tuned = tunable()
        tuned.eval()
        grid = [p for p in tuned.partitions.parameters()]
        for p in tuned.parameters():
            p.requires_grad_(False)
        for p in grid:
            p.requires_grad_(True)
        t_tune = timed(train_step(tuned, x, y, grid), repeats)
        print(f"| {name} | grid-tuning step | {t_tune * 1e3:.1f} | {t_dis * 1e3:.1f} | {t_tune / t_dis:.2f} |")
    imodel.eval(), small.eval()
    f_int = timed(forward(imodel, x), repeats)
    f_dis = timed(forward(small, x), repeats)
    print(f"| {name} | eval forward | {f_int * 1e3:.1f} | {f_dis * 1e3:.1f} | {f_int / f_dis:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.machine()}, {args.threads} threads, torch {torch.__version__}, batch {args.batch}, "
          f"load average {load:.1f}")
    print("| model | what | integral ms | plain ms | ratio |")
    print("|---|---|---|---|---|")

    # a converted ResNet-18 at half of every group, on 32x32 inputs
    model = resnet18(num_classes=10).eval()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    imodel = inn.convert(model, (x[:2],), inn.ConvertConfig(tsp_time_limit=0.05))
    imodel.resize(0.5)
    small = imodel.to_discrete()

    def tunable() -> torch.nn.Module:
        t = inn.convert(model, (x[:2],), inn.ConvertConfig(permute=False))
        t.resize(0.5)
        make_grid_trainable(t)
        return t

    compare("ResNet-18 (converted)", imodel, small, x, y, args.repeats, tunable)

    # the demo's from-scratch integral CNN at half width, on 28x28 digits
    net = integral_cnn()
    inn.resize(net, 0.5)
    plain = inn.to_discrete(net)
    xd = torch.randn(args.batch, 1, 28, 28)
    compare("digits CNN (from scratch)", net, plain, xd, y, args.repeats, None)


if __name__ == "__main__":
    main()
