"""What the continuous representation costs: integral model vs plain network at equal size.

Side by side in one run (interleaved rounds, medians), for a converted ResNet-18 (CIFAR-size
inputs) and the digits demo's from-scratch integral CNN:

* training step (forward + backward + Adam) of the integral model vs its ``to_discrete()``
  network trained the same way, at full size and at 50% of every group (goal: at most 1.3x),
  with ``torch.optim.Adam`` as it comes (``foreach``/``fused`` unset: one tensor at a time on
  CPU) and with ``fused=True`` (one pass per tensor), the same optimizer on both sides;
* grid-tuning step at 50% (only the partitions train) vs the same plain training step;
* eval-mode forward at 50% of the integral model (cached sampled weights) vs ``to_discrete()``;
* the step of ``make_elastic(deploy=[...])``'s default design (``deploy_kind="scales"``): shared
  weights frozen, the ranked top half of every group's channels
  (:class:`~torchinn.elastic.scaled.ScaledPartition`), only a scale per kept channel trains, vs
  the plain training step at that size.

Where the time goes at 50% (measured with the profiler and CPU-time splits, RESULTS.md): the
integral model has every control value as a parameter, 4x the plain network's at 50% of every
group, and they are all used (cubic taps of a 2x coarser grid reach every control value), so
(1) sampling reads the full tensors forward and writes full-size gradients backward, and (2)
the optimizer updates 4x more values. Neither depends on the batch, so the ratio falls as the
batch (or the input) grows; ``--batch 128`` shows it.

``--clock cpu`` times with ``time.process_time`` (CPU time of this process) instead of the wall
clock: on a shared machine it leaves out the time spent waiting for a core.

    python benchmarks/overhead.py [--threads 2] [--batch 32] [--repeats 20] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import torchinn as inn
from torchinn.elastic import ElasticNetwork
from torchinn.elastic.scaled import ScaledPartition
from torchinn.training.train import make_grid_trainable
from torchinn_demo.digits import integral_cnn
from torchinn_demo.harness import load_average
from torchinn_demo.zoo import resnet18


CLOCK: list[Callable[[], float]] = [time.perf_counter]


def timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in interleaved rounds (so that a change in the
    machine's load hits all of them alike) after two warm-up calls each."""
    clock = CLOCK[0]
    for fn in fns.values():
        fn(), fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def row(name: str, what: str, t_int: float, t_dis: float) -> None:
    print(f"| {name} | {what} | {t_int * 1e3:.1f} | {t_dis * 1e3:.1f} | {t_int / t_dis:.2f} |")


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: list,
               fused: bool = False) -> Callable[[], None]:
    opt = torch.optim.Adam(params, 1e-4, fused=True) if fused else torch.optim.Adam(params, 1e-4)

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
            y: torch.Tensor, repeats: int, tunable: Callable[[], torch.nn.Module] | None,
            scaled: Callable[[], torch.nn.Module] | None = None) -> None:
    """Training steps at full size and at 50%, grid tuning, elastic scales and eval forward at 50%."""
    for ratio in (1.0, 0.5):
        resize(ratio)
        small = to_discrete(imodel)
        imodel.train(), small.train()
        for fused in (False, True):
            t = timed({"int": train_step(imodel, x, y, list(imodel.parameters()), fused),
                       "dis": train_step(small, x, y, list(small.parameters()), fused)}, repeats)
            row(name, f"training step, {ratio:.0%} of every group{', fused Adam' if fused else ''}",
                t["int"], t["dis"])
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
    if scaled is not None:
        net = scaled()
        net.train()
        extra = [p for p in net.parameters() if p.requires_grad]
        t = timed({"int": train_step(net, x, y, extra), "dis": train_step(small, x, y, list(small.parameters()))},
                  repeats)
        row(name, "elastic scales step, 50% (vs plain training step)", t["int"], t["dis"])
    imodel.eval(), small.eval()
    t = timed({"int": forward(imodel, x), "dis": forward(small, x)}, repeats)
    row(name, "eval forward, 50%", t["int"], t["dis"])


def scaled_half(t: inn.IntegralModel) -> inn.IntegralModel:
    """``t`` as make_elastic trains it with deployed scales (lr=0): the shared weights frozen, the
    top half of every group (a random ranking: as good as any for timing) with a trained scale per
    kept channel."""
    orders = {n: torch.randperm(g.max_size, generator=torch.Generator().manual_seed(0))
              for n, g in t.groups.items() if g.partition.resizable}
    elastic = ElasticNetwork(t, orders)
    for p in t.parameters():
        p.requires_grad_(False)
    for n in orders:
        t.set_partition(n, ScaledPartition(elastic.partition(n, t.groups[n].max_size // 2)).requires_grad_(True))
    return t


def to_discrete(model: torch.nn.Module) -> torch.nn.Module:
    return model.to_discrete(graph=True) if isinstance(model, inn.IntegralModel) else inn.to_discrete(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = load_average()[0]
    print(f"# {platform.machine()}, {args.threads} threads, torch {torch.__version__}, batch {args.batch}, "
          f"load average {load:.1f}, {args.clock} clock")
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

    def scaled() -> torch.nn.Module:
        return scaled_half(inn.convert(model, (x[:2],), inn.ConvertConfig(tsp_time_limit=0.05)))

    compare("ResNet-18 (converted)", imodel, imodel.resize, x, y, args.repeats, tunable, scaled)

    # the demo's from-scratch integral CNN at half width, on 28x28 digits
    xd = torch.randn(args.batch, 1, 28, 28)
    net = inn.from_scratch(integral_cnn(), (xd[:2],))
    compare("digits CNN (from scratch)", net, net.resize, xd, y, args.repeats, None)


if __name__ == "__main__":
    main()
