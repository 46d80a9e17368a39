"""Helper of ``test_distributed.py`` (not a test): the training and grid-tuning loops it compares,
and a ``main`` that runs them under ``python -m torch.distributed.run --nproc_per_node 2``.

The loops are plain user code: ``RandomSizes`` + Adam for training with random sizes, and
``make_grid_trainable`` + ``DistributedDataParallel`` + ``tune_grid`` for grid tuning. The test
runs the same functions in one process on the global batches and compares.

Usage: ``python -m torch.distributed.run --nproc_per_node 2 dist_worker.py MODEL DATA OUT``
where MODEL is a ``torch.save``-d IntegralModel, DATA a dict of tensors (see :func:`shard`), and
OUT the file rank 0 writes its results to.
"""

from __future__ import annotations

import gc
import sys
import time

import torch
import torch.nn.functional as F

import torchinn as inn
from torchinn.training.train import TuneConfig, make_grid_trainable, tune_grid

SIZES_SEED = 7
TRAIN_LR = 1e-2
TUNE_RATIO = 0.5
LATE = 0.5  # seconds rank 1 starts the time-bounded tuning after rank 0


def train_random_sizes(model: torch.nn.Module, imodel: inn.IntegralModel,
                       batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, int]]:
    """Randomized-discretization training: new sizes every step, Adam, mean cross-entropy.
    ``model`` is ``imodel`` or a DDP wrapper of it. Returns the sizes drawn at each step."""
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    sizes = inn.RandomSizes(imodel, low=0.4, high=1.0, seed=SIZES_SEED)
    model.train()
    drawn = []
    for x, y in batches:
        drawn.append(sizes.step())
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sizes.full()
    return drawn


def train_sandwich(model: torch.nn.Module, imodel: inn.IntegralModel,
                   batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[float]]:
    """The sandwich rule (the largest, the smallest and one drawn size per step, gradients
    accumulated over the three passes), Adam, mean cross-entropy; ``model`` is ``imodel`` or a
    DDP wrapper of it (every pass's backward all-reduces its gradients). The losses per step."""
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    sizes = inn.RandomSizes(imodel, low=0.4, high=1.0, seed=SIZES_SEED + 1)
    model.train()
    losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        losses.append(inn.sandwich_backward(model, sizes, x, lambda out: F.cross_entropy(out, y), random=1))
        opt.step()
    sizes.full()
    return losses


def load_for_tuning(path: str) -> inn.IntegralModel:
    """The model in float64 at half size: Adam's first steps divide tiny gradients by their own
    magnitude, so float32 rounding differences of the all-reduce would reach ~1e-5 in the points;
    float64 shows whether the 2-process run computes the same thing."""
    imodel = torch.load(path, weights_only=False).double()
    imodel.resize(TUNE_RATIO)
    return imodel


def tune_config(steps: int) -> TuneConfig:
    return TuneConfig(steps=steps, seconds=None, progress=False, decay_every=2, decay=0.5, lr=1e-2)


def function_values(imodel: inn.IntegralModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in imodel.named_parameters() if not n.startswith("partitions.")}


def partition_points(imodel: inn.IntegralModel) -> dict[str, torch.Tensor]:
    return {n: p.points().detach().clone() for n, p in imodel.partition_map().items()}


def shard(data: dict, rank: int, world: int) -> tuple[list, list]:
    """This rank's part of every global batch: (training batches, tuning batches)."""
    def part(t: torch.Tensor) -> torch.Tensor:
        n = t.shape[0] // world
        return t[rank * n:(rank + 1) * n]
    train = [(part(x), part(y)) for x, y in zip(data["train_x"], data["train_y"])]
    tune = [part(x) for x in data["tune_x"]]
    return train, tune


def main(model_path: str, data_path: str, out_path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    run(model_path, data_path, out_path)
    # the DDP wrappers hold the process group through reference cycles: if they are collected only
    # at interpreter exit, gloo's threads are torn down then and one run in ~10 under load aborted
    # ("terminate called without an active exception") after everything had been saved
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def run(model_path: str, data_path: str, out_path: str) -> None:
    """Everything both ranks compute; rank 0 saves it to ``out_path``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.load(data_path)
    train, tune = shard(data, rank, world)

    # (a) the same seed draws the same sizes on every rank
    imodel = torch.load(model_path, weights_only=False)
    draws = [inn.RandomSizes(imodel, low=0.1, high=1.0, seed=s).step() for s in range(5)]
    everyone: list = [None] * world
    dist.all_gather_object(everyone, draws)

    # (b) training with random sizes, DDP-wrapped
    ddp = DDP(imodel)
    trained_sizes = train_random_sizes(ddp, imodel, train)
    trained = function_values(imodel)
    all_trained: list = [None] * world
    dist.all_gather_object(all_trained, trained_sizes)

    # (b') the sandwich rule, DDP-wrapped
    imodel = torch.load(model_path, weights_only=False)
    sandwich_losses = train_sandwich(DDP(imodel), imodel, train)
    sandwiched = function_values(imodel)

    # (c) grid tuning of a DDP-wrapped model at half size
    imodel = load_for_tuning(model_path)
    make_grid_trainable(imodel)
    ddp = DDP(imodel)
    report = tune_grid(ddp, [x.double() for x in tune], tune=tune_config(len(tune)))
    tuned = partition_points(imodel)
    tuned_values = function_values(imodel)
    all_points: list = [None] * world
    dist.all_gather_object(all_points, tuned)

    # (d) a time budget, with rank 1 starting late: its clock is behind rank 0's from the first
    # collective on, so the ranks stop together only if the stop is agreed
    imodel = load_for_tuning(model_path)
    make_grid_trainable(imodel)
    ddp = DDP(imodel)
    if rank == 1:
        time.sleep(LATE)
    timed = tune_grid(ddp, [x.double() for x in tune],
                      tune=TuneConfig(steps=None, seconds=4 * LATE, progress=False, lr=1e-3))
    all_timed: list = [None] * world
    dist.all_gather_object(all_timed, timed["steps"])

    if rank == 0:
        torch.save({"world": world, "draws": everyone, "train_sizes": all_trained, "trained": trained,
                    "tuned": all_points, "tuned_values": tuned_values, "report": report,
                    "timed_steps": all_timed, "sandwiched": sandwiched, "sandwich_losses": sandwich_losses},
                   out_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
