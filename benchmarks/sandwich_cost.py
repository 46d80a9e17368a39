"""Seconds per training step of the digits transformer (batch 64, one thread): the plain network,
the integral one at one random size per step, and the sandwich rule with 0, 1 and 2 random sizes
(``inn.sandwich_backward``). Rounds of 5 steps of each, interleaved, 12 rounds; the median round,
so that load from other jobs hits every method alike (benchmarks/RESULTS.md, issue 12).

    python benchmarks/sandwich_cost.py
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import torchinn as inn
from torchinn_demo.models.transformer import DigitsTransformer


def main(rounds: int = 12, steps: int = 5) -> dict[str, float]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = DigitsTransformer()
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    imodel = inn.from_scratch(copy.deepcopy(net), (x[:2],))
    sizes = inn.RandomSizes(imodel, low=0.5, seed=0)
    opt_p = torch.optim.AdamW(net.parameters(), 1e-3)
    opt_i = torch.optim.AdamW(imodel.parameters(), 1e-3)

    def plain() -> None:
        opt_p.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt_p.step()

    def random() -> None:
        sizes.step()
        opt_i.zero_grad()
        F.cross_entropy(imodel(x), y).backward()
        opt_i.step()

    def sandwich(n: int) -> Callable[[], None]:
        def step() -> None:
            opt_i.zero_grad()
            inn.sandwich_backward(imodel, sizes, x, lambda out: F.cross_entropy(out, y), random=n)
            opt_i.step()
        return step

    fns = {"plain": plain, "random": random, "sandwich 0": sandwich(0), "sandwich 1": sandwich(1),
           "sandwich 2": sandwich(2)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for name, m in medians.items():
        print(f"{name}: {1000 * m:.1f} ms/step, {m / medians['random']:.2f}x random")
    return medians


if __name__ == "__main__":
    main()
