"""What :func:`torchinn.compress` hands back beside the network: :class:`CompressReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CompressReport"]


@dataclass
class CompressReport:
    """What :func:`compress` did."""

    metric: str
    target: float
    sizes: dict[str, tuple[int, int]]          # group -> (before, after)
    before: float                               # metric of the original network
    after: float                                # metric of the compressed network
    params_before: int
    params_after: int
    #: the loss vs the original outputs on the choice batches (``loss``), which the reconstruction
    #: start is fitted on: the tuning stages' validation errors are the held-out ones
    error_before_tuning: float
    error_after_tuning: float
    tuning: dict[str, Any] = field(default_factory=dict)  # steps in all, and per stage
    #: per stage, on the bound's clock (``clock``); "after_convert": wall time after the conversion;
    #: "waited": of that, the seconds the call waited for a CPU, which a "run" clock leaves out
    seconds: dict[str, float] = field(default_factory=dict)
    sizes_method: str = "given"                 # which sizes won: "sensitivity", "uniform", "given"
    sizes_errors: dict[str, float] = field(default_factory=dict)  # calibration error per sizes option
    starts: dict[str, str] = field(default_factory=dict)          # group -> starting partition
    start_errors: dict[str, float] = field(default_factory=dict)  # calibration error per start (all groups)
    #: held-out calibration error of the best partitions and of the reconstruction baseline, and of the
    #: two best starts on the choice batches ("start fisher", ...: the held-out error chose between them)
    reconstruct_errors: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # "grid" / "weights": what each did
    loss: str = "mse"                           # "mse": relative squared error; "mse-channels": the same per output
    #                                             channel, averaged over them; "kl": KL of class probabilities
    temperature: float | None = None            # the temperature of "kl" (torchinn.training.distill)
    loss_note: str = ""                         # why loss="auto" chose that loss and temperature
    multiple: dict[str, int] = field(default_factory=dict)  # group -> the multiple its size was rounded to (> 1)
    skipped: list[str] = field(default_factory=list)        # choices the time bound left out, and why
    bound: float | None = None                              # seconds after the conversion it was given
    #: what the bound counts: "wall" seconds (a time budget) or the seconds the call "run" (without one,
    #: the time waited for a CPU left out: torchinn.compression.clock)
    clock: str = "wall"

    @property
    def ratio(self) -> float:
        return self.after / self.before

    def __str__(self) -> str:
        lines = [f"{'group':48s} {'before':>7s} {'after':>7s} start"]
        lines += [f"{n[:48]:48s} {b:7d} {a:7d} {self.starts.get(n, '-')}" for n, (b, a) in self.sizes.items()]
        lines.append(f"{self.metric}: {self.before:.4g} -> {self.after:.4g} ({self.ratio:.1%} of the original, "
                     f"target {self.target:.0%})")
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,}")
        if self.multiple:
            ms = set(self.multiple.values())
            lines.append("sizes rounded to multiples of " + (str(ms.pop()) if len(ms) == 1 else str(self.multiple))
                         + " (or the full size)")
        temp = f" at temperature {self.temperature:.4g}" if self.loss == "kl" and self.temperature else ""
        lines.append(f"loss: {self.loss}{temp}" + (f" ({self.loss_note})" if self.loss_note else ""))
        if self.sizes_errors:
            lines.append("sizes: " + ", ".join(f"{m} {e:.4g}" for m, e in self.sizes_errors.items())
                         + f" -> {self.sizes_method}")
        if self.start_errors:
            lines.append("starts: " + ", ".join(f"{k} {e:.4g}" for k, e in self.start_errors.items()))
        if self.reconstruct_errors:
            lines.append("held out: " + ", ".join(f"{k} {e:.4g}" for k, e in self.reconstruct_errors.items()))
        what = {"mse": "relative output error", "mse-channels": "relative output error per channel"}.get(
            self.loss, f"{self.loss} distillation loss")
        fitted = " (the reconstruction was fitted on them)" if "reconstruct" in self.starts.values() else ""
        lines.append(f"{what} on the choice batches{fitted}: {self.error_before_tuning:.4g} before tuning, "
                     f"{self.error_after_tuning:.4g} after")
        for name, st in self.stages.items():
            lines.append(f"  {name} tuning: {st['steps']} steps in {st['seconds']:.1f} s, validation error "
                         f"{_fmt(st.get('start_error'))} -> {_fmt(st.get('best_error'))}")
        if self.skipped:
            lines.append("skipped: " + "; ".join(self.skipped))
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        tuned = self.seconds.get("tune_grid", 0.0) + self.seconds.get("tune_weights", 0.0)
        spent = self.seconds.get("after_convert")
        if spent and self.bound:
            waited = self.seconds.get("waited", 0.0)
            why = ("not counted: without a time budget the bound counts the time the call ran" if self.clock == "run"
                   else "counted: a time budget is wall time")
            note = f" ({waited:.1f} s of it waiting for a CPU, {why})" if waited else ""
            lines.append(f"after the conversion: {spent:.1f} s of a {self.bound:.1f} s bound{note}, {tuned:.1f} s "
                         f"({tuned / spent:.0%}) tuning")
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
