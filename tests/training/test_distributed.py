"""Training with random sizes and grid tuning under torch.distributed (DDP, gloo, 2 CPU processes)
give the same results as one process on the same global batches.

One ``python -m torch.distributed.run --nproc_per_node 2 dist_worker.py`` run (about 10 s) does
everything on both ranks; the tests compare what rank 0 saved with the same loops
(:mod:`dist_worker`) run here in one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import torchinn as inn
from torchinn.training.train import tune_grid

import dist_worker as W

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

STEPS = 6
GLOBAL_BATCH = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory, single_thread) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(), torch.nn.Linear(48, 24),
                              torch.nn.ReLU(), torch.nn.Linear(24, 10)).eval()
    imodel = inn.convert(net, (torch.randn(4, 32),), inn.ConvertConfig(permute=False))
    g = torch.Generator().manual_seed(1)
    data = {"train_x": [torch.randn(GLOBAL_BATCH, 32, generator=g) for _ in range(STEPS)],
            "train_y": [torch.randint(0, 10, (GLOBAL_BATCH,), generator=g) for _ in range(STEPS)],
            "tune_x": [torch.randn(GLOBAL_BATCH, 32, generator=g) for _ in range(STEPS)]}
    paths = {"model": tmp / "model.pt", "data": tmp / "data.pt", "out": tmp / "out.pt"}
    torch.save(imodel, paths["model"])
    torch.save(data, paths["data"])
    return paths


@pytest.fixture(scope="module")
def ddp(files) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    worker = Path(__file__).with_name("dist_worker.py")
    for attempt in range(2):  # the free port may be taken between the check and the launch
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               str(worker), str(files["model"]), str(files["data"]), str(files["out"])]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(files["out"], weights_only=False)


def test_time_budget_stops_every_rank_at_the_same_step(ddp):
    # rank 1 started late, so the ranks' clocks disagree; a stop taken by one rank alone would
    # have left the other waiting in its next all-reduce (the run would not have finished)
    rank0, rank1 = ddp["timed_steps"]
    assert rank0 == rank1 > 1


def test_two_processes_ran(ddp):
    assert ddp["world"] == 2
    assert ddp["report"]["steps"] == STEPS


def test_same_seed_same_sizes_on_every_rank(ddp, files):
    rank0, rank1 = ddp["draws"]
    assert rank0 == rank1
    # ... and the same as in this process: the sizes depend on the seed only
    imodel = torch.load(files["model"], weights_only=False)
    here = [inn.RandomSizes(imodel, low=0.1, high=1.0, seed=s).step() for s in range(5)]
    assert here == rank0
    assert len({tuple(d.values()) for d in here}) == 5  # the seeds give different sizes
    # the sizes drawn during training, gathered from both ranks
    t0, t1 = ddp["train_sizes"]
    assert t0 == t1 and len(t0) == STEPS
    assert any(s < imodel.groups[n].max_size for d in t0 for n, s in d.items())


def test_training_equals_one_process(ddp, files):
    data = torch.load(files["data"])
    batches, _ = W.shard(data, 0, 1)  # one process: the global batches of 16
    assert batches[0][0].shape[0] == GLOBAL_BATCH
    imodel = torch.load(files["model"], weights_only=False)
    start = W.function_values(imodel)
    drawn = W.train_random_sizes(imodel, imodel, batches)
    assert drawn == ddp["train_sizes"][0]
    got, want = ddp["trained"], W.function_values(imodel)
    assert got.keys() == want.keys()
    moved = max(float((want[k] - start[k]).abs().max()) for k in want)
    assert moved > 1e-2  # the training did something
    diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert diff < 1e-5, f"2 processes differ from 1 by {diff:.2e}"


def test_sandwich_rule_equals_one_process(ddp, files):
    data = torch.load(files["data"])
    batches, _ = W.shard(data, 0, 1)
    imodel = torch.load(files["model"], weights_only=False)
    start = W.function_values(imodel)
    losses = W.train_sandwich(imodel, imodel, batches)
    assert len(losses) == STEPS and all(len(step) == 3 for step in losses)
    got, want = ddp["sandwiched"], W.function_values(imodel)
    moved = max(float((want[k] - start[k]).abs().max()) for k in want)
    assert moved > 1e-2  # the training did something
    diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert diff < 1e-5, f"2 processes differ from 1 by {diff:.2e}"


def test_grid_tuning_equals_one_process(ddp, files):
    data = torch.load(files["data"])
    _, batches = W.shard(data, 0, 1)
    imodel = W.load_for_tuning(files["model"])
    before = W.partition_points(imodel)
    values = W.function_values(imodel)
    report = tune_grid(imodel, [x.double() for x in batches], tune=W.tune_config(len(batches)))
    assert report["steps"] == STEPS
    want = W.partition_points(imodel)
    rank0, rank1 = ddp["tuned"]
    for name in want:
        assert torch.equal(rank0[name], rank1[name])  # the ranks stay in sync
        assert float((want[name] - before[name]).abs().max()) > 1e-3  # the grids moved
        diff = float((rank0[name] - want[name]).abs().max())
        assert diff < 1e-9, f"group {name}: 2 processes differ from 1 by {diff:.2e}"
    # only the partitions changed under DDP too
    for name, v in values.items():
        assert torch.equal(ddp["tuned_values"][name], v), name
