"""The budgeted training loop shared by grid tuning and weight fine-tuning.

It trains some parameters of a network on calibration batches for a number of steps or seconds
and guarantees that what it returns is never worse than where it started on the validation
batches: the best state seen there is kept and restored at the end. A learning rate that makes
the validation error jump, or the parameters non-finite, is noticed: the best state comes back
and the learning rates are halved; after :data:`MAX_REDUCTIONS` halvings the steps would be float
noise, and the loop stops (``stopped: "learning rate"``) instead of spending the rest of its
budget on them. A step whose loss is not finite is skipped and counted.

Under ``torch.distributed`` the validation error is averaged over the processes, so that every
process takes the same decisions.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["LoopConfig", "run", "split_validation", "Batches"]

log = logging.getLogger(__name__)

#: a validation error this many times the best one means the learning rate is too high
DIVERGED = 1.5
#: an extra validation this early: a start already near its optimum (a compressed network distilled
#: from its original) is made worse by the first steps at the configured learning rate, and a
#: budget of a few dozen steps would otherwise see only two checks
EARLY_CHECK = 3
#: halvings of the learning rates after which the loop stops: 2**-20 (about 1e-6) of a learning
#: rate of 1e-4 moves a weight by 1e-10 a step, below float32's resolution of any weight above 1e-3
#: (docs/decisions/compress-constants.md)
MAX_REDUCTIONS = 20


@dataclass
class LoopConfig:
    steps: int | None
    seconds: float | None
    eval_every: int = 10
    decay_every: int = 300
    decay: float = 0.33
    progress: bool = False
    desc: str = "tuning"


@dataclass
class Batches:
    """Where the loop draws training batches from, told apart by kind: a re-iterable collection
    (a list, a DataLoader) is cycled; a one-shot iterator (a generator) is used once."""

    source: Iterable[Any]
    one_shot: bool = field(init=False)

    def __post_init__(self) -> None:
        self.one_shot = iter(self.source) is self.source

    def __iter__(self) -> Iterator[Any]:
        if self.one_shot:
            yield from self.source
            return
        empty = True
        for epoch in itertools.count():
            sampler = getattr(self.source, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            for batch in self.source:
                empty = False
                yield batch
            if empty:
                raise ValueError("the calibration loader is empty")


def split_validation(loader: Iterable[Any], holdout: float) -> tuple[Iterable[Any], list[Any] | None]:
    """``(training batches, validation batches)``: the last ``holdout`` share of a list or tuple
    of at least 2 batches is held out; otherwise there is no held-out slice (``None``)."""
    if holdout > 0 and isinstance(loader, Sequence) and not isinstance(loader, (str, bytes)) and len(loader) >= 2:
        n = min(len(loader) - 1, max(1, round(holdout * len(loader))))
        return list(loader[:-n]), list(loader[-n:])
    return loader, None


def _all_mean(value: float) -> float:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        # NCCL reduces only CUDA tensors (gloo and mpi CPU ones)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t) / dist.get_world_size()
    return value


def _all_agree(flag: bool) -> bool:
    """``flag`` as every process sees it: true if it is true in any (a stop that one process of a
    distributed run takes alone would leave the others waiting in their next collective)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
    return flag


def run(params: list[Tensor], optimizer: torch.optim.Optimizer, batches: Batches,
        step_loss: Callable[[Any], Tensor], validate: Callable[[], float] | None,
        config: LoopConfig) -> dict[str, Any]:
    """Train ``params`` with ``optimizer``: ``step_loss(batch)`` gives the loss of one batch;
    ``validate()`` the validation error (``None``: the mean training loss since the last check
    stands in for it). Returns the report; ``params`` end at the best state validated.

    With ``config.seconds``, a step starts only if it and the check after it fit in what is left,
    by the mean time of the steps and the last check so far, so the loop ends within its seconds
    rather than one step and one check after them."""
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.decay_every, gamma=config.decay)
    start = time.perf_counter()
    window: list[float] = []

    def check() -> float:
        if validate is not None:
            return _all_mean(validate())
        return _all_mean(sum(window) / len(window)) if window else math.inf

    best_state = [p.detach().clone() for p in params]
    t0 = time.perf_counter()
    start_error = check() if validate is not None else None
    check_seconds = time.perf_counter() - t0  # of the last check
    step_seconds = 0.0  # all the steps so far, without their checks
    best_error = start_error if start_error is not None else math.inf
    best_step, step, skipped, reductions, evaluations = 0, 0, 0, 0, 1 if validate is not None else 0
    first = last = None
    stopped = "steps"

    def restore() -> None:
        with torch.no_grad():
            for p, s in zip(params, best_state):
                p.copy_(s)
        optimizer.state.clear()  # the moments belong to the abandoned trajectory

    def slow_down(why: str) -> None:
        nonlocal reductions
        restore()
        reductions += 1
        for g in optimizer.param_groups:
            g["lr"] *= 0.5
        sched.base_lrs = [lr * 0.5 for lr in sched.base_lrs]
        log.info("%s: back to the best state (step %d), learning rates halved", why, best_step)

    bar = tqdm(total=config.steps, desc=config.desc, disable=not config.progress, leave=False)
    source = iter(batches)
    try:
        while True:
            if config.steps is not None and step >= config.steps:
                stopped = "steps"
                break
            if reductions >= MAX_REDUCTIONS:
                stopped = "learning rate"
                log.info("learning rates halved %d times without a better validation: stopped after %d steps",
                         reductions, step)
                break
            if config.seconds is not None:
                need = step_seconds / step + check_seconds if step else 0.0
                if _all_agree(time.perf_counter() - start + need >= config.seconds):
                    stopped = "seconds"
                    break
            t_step = time.perf_counter()
            try:
                batch = next(source)
            except StopIteration:
                if step == 0:
                    raise ValueError("the calibration loader is empty") from None
                stopped = "exhausted"
                log.info("the calibration iterator was exhausted after %d steps (a one-shot iterator "
                         "cannot be cycled: pass a list or a DataLoader to use the whole budget)", step)
                break
            loss = step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            step += 1
            if not math.isfinite(value):
                skipped += 1
            else:
                loss.backward()
                optimizer.step()
                last = value
                first = value if first is None else first
                window.append(value)
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    slow_down("parameters became non-finite")
            sched.step()
            step_seconds += time.perf_counter() - t_step
            bar.update(1)
            if last is not None:
                bar.set_postfix(loss=f"{last:.4g}")
            if step % config.eval_every == 0 or (step == EARLY_CHECK < config.eval_every and validate is not None):
                t0 = time.perf_counter()
                error = check()
                check_seconds = time.perf_counter() - t0
                evaluations += 1
                window.clear()
                if error < best_error:
                    best_error, best_step = error, step
                    best_state = [p.detach().clone() for p in params]
                elif not math.isfinite(error) or error > DIVERGED * best_error:
                    slow_down(f"validation error {error:.4g} > {DIVERGED} x best {best_error:.4g}")
                elif best_step == 0 and validate is not None:  # no step has helped yet: smaller ones
                    slow_down(f"validation error {error:.4g} not below the start's {best_error:.4g}")
        if step % config.eval_every != 0 and (validate is not None or window):
            error = check()
            evaluations += 1
            if error < best_error:
                best_error, best_step = error, step
                best_state = [p.detach().clone() for p in params]
    finally:
        bar.close()
    restore()
    return {"steps": step, "seconds": time.perf_counter() - start, "first_loss": first, "last_loss": last,
            "start_error": start_error, "best_error": best_error if math.isfinite(best_error) else None,
            "best_step": best_step, "skipped_nonfinite": skipped, "lr_reductions": reductions,
            "evaluations": evaluations, "stopped": stopped}

