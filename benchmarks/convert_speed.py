"""Conversion wall time by stage, and how smooth the permutation makes the weights.

For a ResNet-18 and a ResNet-50 (torchvision layouts, random initialisation, BN statistics
randomised so folding is not trivial), prints the seconds spent tracing, folding batch norms,
finding groups, permuting and fitting, and the total variation (summed over all groups) of
the identity order, a greedy nearest-neighbour order and the TSP solver's order.

    python benchmarks/convert_speed.py [--models resnet18 resnet50] [--solver local|fast_tsp]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import torchinn as inn
from torchinn.model.convert import _members, _view
from torchinn.graph.analysis import analyse
from torchinn.graph.fuse import fuse_batch_norms
from torchinn.graph.groups import finalize
from torchinn.graph.trace import trace
from torchinn.model.permute import distance_matrix, greedy_path, path_length, total_variation
from torchinn_demo.zoo import resnet18, resnet50

MODELS = {"resnet18": resnet18, "resnet50": resnet50}


def randomize_bn(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def greedy_tv(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Total variation of the identity and of the greedy order, summed over the groups."""
    traced = trace(model, (x,))
    fuse_batch_norms(traced)
    plan = finalize(analyse(traced))
    ident = greedy = 0.0
    for g in plan.groups:
        members = [(_view(traced.tensors[n], d, s, ln, sz, k), 0)
                   for n, d, s, ln, sz, k in _members(traced.tensors, plan.tensors, g.name)]
        ident += total_variation(members)
        D = distance_matrix(members)
        greedy += path_length(D, greedy_path(D))
    return ident, greedy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--solver", default="local", choices=["local", "fast_tsp"])
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, solver={args.solver}")
    print("| model | params | groups | trace s | fuse s | groups s | permute s | fit s | total s |"
          " TV identity | TV greedy | TV solver | solver/identity |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = MODELS[name]().eval()
        randomize_bn(model)
        x = torch.randn(2, 3, 224, 224)
        t0 = time.perf_counter()
        imodel = inn.convert(model, (x,), inn.ConvertConfig(tsp_solver=args.solver, progress=False))
        total = time.perf_counter() - t0
        r = imodel.report
        ident, greedy = greedy_tv(model, x)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {params:.1f} M | {len(imodel.groups)} | {r['trace_s']:.1f} | {r['fuse_s']:.2f} |"
              f" {r['analyse_s']:.2f} | {r['permute_s']:.1f} | {r['fit_s']:.2f} | {total:.1f} |"
              f" {ident:.4g} | {greedy:.4g} | {r['tv_after']:.4g} | {r['tv_after'] / ident:.3f} |")


if __name__ == "__main__":
    main()
