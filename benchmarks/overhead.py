"""What the continuous representation costs: integral model vs plain network at equal size.

Side by side in one run (interleaved rounds, medians), for a converted ResNet-18 (CIFAR-size
inputs) and the digits demo's from-scratch integral CNN:

* training step (forward + backward + Adam) of the integral model vs its ``to_discrete()``
  network trained the same way, at full size and at 50% of every group (goal: at most 1.3x);
* grid-tuning step at 50% (only the partitions train) vs the same plain training step;
* eval-mode forward at 50% of the integral model (cached sampled weights) vs ``to_discrete()``.

    python benchmarks/overhead.py [--threads 2] [--batch 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import torchinn as inn
from torchinn.training.train import make_grid_trainable
from torchinn_demo.digits import integral_cnn
from torchinn_demo.harness import load_average
from torchinn_demo.zoo import resnet18


def timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in interleaved rounds (so that a change in the
    machine's load hits all of them alike) after two warm-up calls each."""
    for fn in fns.values():
        fn(), fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def row(name: str, what: str, t_int: float, t_dis: float) -> None:
    print(f"| {name} | {what} | {t_int * 1e3:.1f} | {t_dis * 1e3:.1f} | {t_int / t_dis:.2f} |")


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


def compare(name: str, imodel: torch.nn.Module, resize: Callable[[float], None], x: torch.Tensor,
            y: torch.Tensor, repeats: int, tunable: Callable[[], torch.nn.Module] | None) -> None:
    """Training steps at full size and at 50%, grid tuning and eval forward at 50%."""
    for ratio in (1.0, 0.5):
        resize(ratio)
        small = to_discrete(imodel)
        imodel.train(), small.train()
        t = timed({"int": train_step(imodel, x, y, list(imodel.parameters())),
                   "dis": train_step(small, x, y, list(small.parameters()))}, repeats)
        row(name, f"training step, {ratio:.0%} of every group", t["int"], t["dis"])
    if tunable is not None:
        tuned = tunable()
        tuned.eval()
        grid = [p for p in tuned.partitions.parameters()]
        for p in tuned.parameters():
            p.requires_grad_(False)
        for p in grid:
            p.requires_grad_(True)
        t = timed({"int": train_step(tuned, x, y, grid), "dis": train_step(small, x, y, list(small.parameters()))},
                  repeats)
        row(name, "grid-tuning step, 50% (vs plain training step)", t["int"], t["dis"])
    imodel.eval(), small.eval()
    t = timed({"int": forward(imodel, x), "dis": forward(small, x)}, repeats)
    row(name, "eval forward, 50%", t["int"], t["dis"])


def to_discrete(model: torch.nn.Module) -> torch.nn.Module:
    return model.to_discrete(graph=True) if isinstance(model, inn.IntegralModel) else inn.to_discrete(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = load_average()[0]
    print(f"# {platform.machine()}, {args.threads} threads, torch {torch.__version__}, batch {args.batch}, "
          f"load average {load:.1f}")
    print("| model | what | integral ms | plain ms | ratio |")
    print("|---|---|---|---|---|")

    # a converted ResNet-18 at half of every group, on 32x32 inputs
    model = resnet18(num_classes=10).eval()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    imodel = inn.convert(model, (x[:2],), inn.ConvertConfig(tsp_time_limit=0.05))

    def tunable() -> torch.nn.Module:
        t = inn.convert(model, (x[:2],), inn.ConvertConfig(permute=False))
        t.resize(0.5)
        make_grid_trainable(t)
        return t

    compare("ResNet-18 (converted)", imodel, imodel.resize, x, y, args.repeats, tunable)

    # the demo's from-scratch integral CNN at half width, on 28x28 digits
    net = integral_cnn()
    xd = torch.randn(args.batch, 1, 28, 28)
    compare("digits CNN (from scratch)", net, lambda r: inn.resize(net, r), xd, y, args.repeats, None)


if __name__ == "__main__":
    main()
