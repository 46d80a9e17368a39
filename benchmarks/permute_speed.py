"""Speed and quality of the channel permutation (TSP on total variation), group by group.

For groups of n channels shaped like a ResNet-50's (filters of a conv, its BN/bias, the input
slices of the convs that read it), prints the time of the distance matrix (torchinn's blocked
``F.pdist`` on all threads and on one, SciPy's ``cityblock``, ``torch.cdist(p=1)``) and of the path
solvers, and the total variation of the identity
order, the nearest-neighbour path, the default (reproducible) local search and fast_tsp.

Weights are synthetic (Gaussian filters with log-normal per-channel scales, like trained filters'
spread of norms); no pretrained weights are downloaded.

    python benchmarks/permute_speed.py                # n = 64, 128, 256, 512, 1024, 2048
    python benchmarks/permute_speed.py --sizes 64 256 --no-cdist
"""

from __future__ import annotations

import argparse
import time

import torch

from torchinn.model.permute import (
    default_time_limit,
    distance_matrix,
    greedy_path,
    path_length,
    solve_path,
)
from torchinn_demo.harness import load_average

# values per channel of each member in a ResNet-50 group of that size:
# (tensor shape with the channel dim first, dim) - the dim is where the channels sit
RESNET50_GROUPS: dict[int, list[tuple[tuple[int, ...], int]]] = {
    # layer1 inner group: conv1 filters (64 x 256), BN, conv2 input slices (64 x 64 x 3 x 3)
    64: [((64, 256, 1, 1), 0), ((64,), 0), ((64,), 0), ((64, 64, 3, 3), 1)],
    # layer2 inner group: conv1 filters (128 x 512), BN, conv2 input (128 x 128 x 3 x 3)
    128: [((128, 512, 1, 1), 0), ((128,), 0), ((128,), 0), ((128, 128, 3, 3), 1)],
    # layer3 inner group: conv1 filters (256 x 1024), BN, conv2 input (256 x 256 x 3 x 3)
    256: [((256, 1024, 1, 1), 0), ((256,), 0), ((256,), 0), ((256, 256, 3, 3), 1)],
    # layer4 inner group: conv1 filters (512 x 1024), BN, conv2 input (512 x 512 x 3 x 3)
    512: [((512, 1024, 1, 1), 0), ((512,), 0), ((512,), 0), ((512, 512, 3, 3), 1)],
    # layer3 residual stream: 6 conv3 (1024 x 256) + downsample (1024 x 512), BN, the inputs of
    # 5 conv1 (256 x 1024) and of layer4's conv1 (512 x 1024) and downsample (2048 x 1024)
    1024: [((1024, 256, 1, 1), 0)] * 6 + [((1024, 512, 1, 1), 0), ((1024,), 0)]
    + [((256, 1024, 1, 1), 1)] * 5 + [((512, 1024, 1, 1), 1), ((2048, 1024, 1, 1), 1)],
    # layer4 residual stream: 3 conv3 (2048 x 512) + downsample (2048 x 1024), BN, the inputs of
    # 2 conv1 (512 x 2048) and of the classifier (1000 x 2048)
    2048: [((2048, 512, 1, 1), 0)] * 3 + [((2048, 1024, 1, 1), 0), ((2048,), 0)]
    + [((512, 2048, 1, 1), 1)] * 2 + [((1000, 2048), 1)],
}
# how many groups of each size a ResNet-50 has (stem + 3/4/6/3 bottlenecks x 2 inner groups,
# and the residual streams of the four stages)
RESNET50_COUNTS = {64: 7, 128: 8, 256: 13, 512: 7, 1024: 1, 2048: 1}


def make_group(n: int, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    gen = torch.Generator().manual_seed(seed)
    members = []
    for shape, dim in RESNET50_GROUPS[n]:
        fan_in = 1
        for k, s in enumerate(shape):
            if k != 0:
                fan_in *= s
        t = torch.randn(shape, generator=gen) / fan_in ** 0.5
        # trained filters' norms spread over about a decade: scale each output channel
        scale = torch.exp(0.6 * torch.randn(shape[0], generator=gen))
        t = t * scale.view(-1, *([1] * (len(shape) - 1)))
        members.append((t, dim))
    return members


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(RESNET50_GROUPS))
    parser.add_argument("--no-cdist", action="store_true", help="skip the (slow) torch.cdist timing")
    parser.add_argument("--no-fast-tsp", action="store_true")
    args = parser.parse_args()
    for n in args.sizes:
        if n not in RESNET50_GROUPS:
            parser.error(f"size {n} is not one of {sorted(RESNET50_GROUPS)}")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average before: {load_average()[0]:.2f}")
    print("\ndistance matrix (seconds; error relative to the largest distance, vs float64)")
    print(f"{'n':>5} {'values/ch':>9} {'pdist':>8} {'pdist 1t':>8} {'scipy 1t':>8} {'cdist':>8}"
          f"  {'err pdist':>9} {'err cdist':>9}")
    dist = {}
    groups = {n: make_group(n) for n in args.sizes}
    distance_matrix(make_group(64))  # warm-up
    for n in args.sizes:
        members = groups[n]
        k = sum(t.numel() // n for t, _ in members)
        D, t_pd = timed(distance_matrix, members)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        _, t_one = timed(distance_matrix, members)
        torch.set_num_threads(threads)
        x64 = torch.cat([t.double().movedim(d, 0).reshape(n, -1) for t, d in members], 1).numpy()
        try:
            from scipy.spatial.distance import pdist, squareform

            exact, t_sp = timed(lambda: torch.from_numpy(squareform(pdist(x64, "cityblock"))))
            err = f"{float((D - exact).abs().max() / exact.max()):.1e}"
        except ImportError:
            exact, t_sp, err = None, float("nan"), "n/a"
        if args.no_cdist:
            t_cd, err_cd = float("nan"), "n/a"
        else:
            x32 = torch.from_numpy(x64).float()
            Dc, t_cd = timed(torch.cdist, x32, x32, p=1)
            err_cd = "n/a" if exact is None else f"{float((Dc - exact).abs().max() / exact.max()):.1e}"
        dist[n] = (D, t_pd)
        print(f"{n:>5} {k:>9} {t_pd:>8.3f} {t_one:>8.3f} {t_sp:>8.3f} {t_cd:>8.3f}"
              f"  {err:>9} {err_cd:>9}", flush=True)

    print("\npath: total variation relative to the identity order (lower is smoother); seconds")
    head = f"{'n':>5} {'TV identity':>12} {'greedy':>7} {'local':>7} {'t local':>7}"
    if not args.no_fast_tsp:
        head += f" {'fast_tsp':>8} {'t budget':>8} {'fast_tsp 2nd run':>16} {'same order':>10}"
    print(head)
    solve_time = {}
    for n in args.sizes:
        D = dist[n][0]
        ident = path_length(D, torch.arange(n))
        greedy = path_length(D, greedy_path(D)) / ident
        p_local, t_local = timed(solve_path, D, seed=0)
        local = path_length(D, p_local) / ident
        line = f"{n:>5} {ident:>12.1f} {greedy:>7.4f} {local:>7.4f} {t_local:>7.2f}"
        solve_time[n] = t_local
        if not args.no_fast_tsp:
            p1, t1 = timed(solve_path, D, solver="fast_tsp")
            p2 = solve_path(D, solver="fast_tsp")
            line += (f" {path_length(D, p1) / ident:>8.4f} {default_time_limit(n):>8.2f}"
                     f" {path_length(D, p2) / ident:>16.4f} {str(torch.equal(p1, p2)):>10}")
        print(line, flush=True)

    if set(RESNET50_COUNTS) <= set(args.sizes):
        total_d = sum(c * dist[n][1] for n, c in RESNET50_COUNTS.items())
        total_s = sum(c * solve_time[n] for n, c in RESNET50_COUNTS.items())
        total_f = sum(c * default_time_limit(n) for n, c in RESNET50_COUNTS.items())
        groups_n = sum(RESNET50_COUNTS.values())
        print(f"\nResNet-50 estimate ({groups_n} groups): distance matrices {total_d:.1f} s, "
              f"local search {total_s:.1f} s (fast_tsp budget instead: {total_f:.1f} s)")
    print(f"load average after: {load_average()[0]:.2f}")


if __name__ == "__main__":
    main()
