"""What :func:`torchinn.make_elastic` did: :class:`ElasticReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ElasticReport"]


@dataclass
class ElasticReport:
    """What :func:`torchinn.make_elastic` did. Errors are distillation errors against the
    original network on held-out calibration batches (``loss``), before and after training."""

    steps: int
    seconds: float
    loss: str
    ranking: str
    low: float
    lr: float
    full_tolerance: float
    full_error_before: float
    full_error_after: float
    full_metric: str                                 # what the full-size errors measure (:func:`_full_change`)
    kept_step: int                                   # the step whose state was returned
    #: ratio of every group's channels -> (parameters, error before, error after)
    quality: dict[float, tuple[int, float, float]] = field(default_factory=dict)
    ranking_errors: dict[str, float] = field(default_factory=dict)
    #: deployed fraction of the parameters -> (parameters, error before, error after), at its own
    #: sizes and partitions (``deploy=``; the guard then scores these sizes)
    deployed: dict[float, tuple[int, float, float]] = field(default_factory=dict)
    #: every held-out check: (step, seconds, full-size error, geometric-mean error over the sizes of
    #: ``quality``; with deployed sizes, the sum of their errors)
    history: list[tuple[int, float, float, float]] = field(default_factory=list)
    held_out_batches: int = 0
    note: str = ""
    deploy_kind: str = ""                            # what the deployed sizes train ("scales", "partitions")
    train_seconds: float = 0.0                       # of the training steps (``seconds``: the whole call)
    #: deployed fraction -> bytes of the state it carries beside the shared weights (scales, offsets)
    deployed_bytes: dict[float, int] = field(default_factory=dict)
    #: deployed fraction -> its least-squares refit (``deploy_kind="scales-refit"``:
    #: :func:`torchinn.elastic.refit.refit_deployed`'s report; with ``tune_share`` > 0 also
    #: ``error_tuned``, the held-out error after the tuning that follows it)
    refit: dict[float, dict[str, Any]] = field(default_factory=dict)
    #: deployed fraction -> how its sizes were chosen (``deploy_sizes="best"``: ``{"method": "curves"
    #: or "fisher", "errors": method -> held-out error at the ranked top-k}``)
    deployed_sizes: dict[float, dict[str, Any]] = field(default_factory=dict)
    #: seconds per stage: "convert" (not counted in ``seconds=``), "setup" (rankings, curves, sizes,
    #: first checks), "train", "refit", "tune", "final" (:mod:`torchinn.elastic.budget`)
    stages: dict[str, float] = field(default_factory=dict)
    #: what did not fit in the budget and was skipped or shortened, and why
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"elastic: {self.steps} steps in {self.train_seconds:.1f} s of training, {self.seconds:.1f} s in all "
                 f"(Adam lr {self.lr:g}, sizes from "
                 f"{self.low:g} to full, loss {self.loss}), channels ranked by {self.ranking}",
                 f"full size: held-out {self.full_metric} {self.full_error_before:.4g} -> {self.full_error_after:.4g} "
                 f"(tolerance {self.full_tolerance:g}); returned the state of step {self.kept_step}"]
        for r, (params, before, after) in sorted(self.quality.items()):
            lines.append(f"  {r:.0%} of the channels ({params:,} parameters): error {before:.4g} -> {after:.4g}")
        for t, (params, before, after) in sorted(self.deployed.items()):
            size = f", {self.deployed_bytes[t]:,} bytes of its own" if t in self.deployed_bytes else ""
            lines.append(f"  deployed {t:.0%} of the parameters ({params:,}, own {self.deploy_kind or 'partitions'}{size}): "
                         f"error {before:.4g} -> {after:.4g}")
            if t in self.deployed_sizes:
                c = self.deployed_sizes[t]
                lines.append(f"    sizes: {c['method']} (" + ", ".join(f"{m} {e:.4g}" for m, e in c["errors"].items()) + ")")
            if t in self.refit:
                r = self.refit[t]
                lines.append(f"    refit: {len(r['layers'])} layers" + ("" if r["kept"] else f", not kept ({r.get('why', '')})")
                             + (f"; tuned after it: error {r['error_after']:.4g} -> {r['error_tuned']:.4g}"
                                if r.get("error_tuned") is not None and r.get("error_after") is not None else ""))
        if self.stages:
            lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items()))
        lines += [f"skipped: {s}" for s in self.skipped]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)
