"""Grid tuning and random-size training on several processes (run with torchrun).

    torchrun --nproc_per_node 2 docs/examples/ddp_tune.py

Every process converts the same network (conversion is deterministic), tunes the integration
grids of its DistributedDataParallel-wrapped copy on its shard of the calibration data, then
trains with random sizes, drawing the same sizes as every other process from a shared seed.
"""

import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import torchinn as inn
from torchinn.training.train import TuneConfig, make_grid_trainable, tune_grid


def main() -> None:
    dist.init_process_group("gloo")  # "nccl" on GPUs
    tune_and_train(dist.get_rank(), dist.get_world_size())
    # DDP wrappers keep the process group alive through reference cycles: collect them while the
    # interpreter runs, or gloo's threads may be torn down at exit and abort the process
    gc.collect()
    dist.barrier()  # no process tears gloo down while another still talks to it
    dist.destroy_process_group()


def tune_and_train(rank: int, world: int) -> None:
    torch.manual_seed(0)  # the same network and data on every process
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    data = [(torch.randn(32, 16), torch.randint(0, 4, (32,))) for _ in range(8)]
    shard = data[rank::world]  # in practice: a DistributedSampler

    # 1. grid tuning at half size: make the grids trainable *before* wrapping in DDP
    imodel = inn.convert(model, (data[0][0],))
    imodel.resize(0.5)
    make_grid_trainable(imodel)
    teacher = inn.convert(model, (data[0][0],))  # the full-size network, frozen
    report = tune_grid(DDP(imodel), shard, teacher=teacher,
                       tune=TuneConfig(steps=20, seconds=None, progress=False))

    # 2. training with random sizes: the same seed draws the same sizes on every process
    trained = inn.convert(model, (data[0][0],))
    sizes = inn.RandomSizes(trained, low=0.5, seed=0)
    ddp = DDP(trained.train())
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    for x, y in shard * 3:
        drawn = sizes.step()
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    # every process ends with the same tuned grids and the same trained functions
    checks = torch.tensor([float(sum(p.sum() for p in imodel.partitions.parameters())),
                           float(sum(p.sum() for p in trained.parameters())), float(sum(drawn.values()))])
    gathered = [torch.zeros(3) for _ in range(world)]
    dist.all_gather(gathered, checks)
    if rank == 0:
        same = all(torch.allclose(g, gathered[0], rtol=1e-6) for g in gathered)
        print(f"tuned {report['steps']} steps; processes agree: {same}")


if __name__ == "__main__":
    main()
