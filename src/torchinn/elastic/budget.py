"""The clock of :func:`torchinn.make_elastic`: :class:`Budget`.

``seconds`` is the whole call after the conversion: the rankings and the choices before training,
the shared training, the per-size refits, the per-size tuning and the final measurements. The
final measurements are those made before training (the same passes), so their time is measured
there and kept aside (``reserve``); every stage after that ends by its own time and checks the
clock before starting work it cannot finish (the training loop before a step and a check, the
refits before each size: :func:`torchinn.elastic.refit.refit_deployed` with ``seconds``).

The split with ``deploy_kind="scales-refit"``: the shared training takes ``1 - tune_share`` of
what is left when it starts (``1 -`` :data:`REFIT_ALONE` when ``tune_share`` is 0); then the refits get at
most ``refit_share`` of what is left (all of it when ``tune_share`` is 0: nothing follows them;
default :data:`REFIT_SHARE`); the tuning gets the rest. Measured on waifu2x_photo (docs/decisions/elastic.md): with the refits
counted in the tuning's share and unbounded, the refits at the Fisher sizes took 127-174 s of a
200 s budget and the call ended 46 s past it.

>>> b = Budget(None)
>>> b.left()
inf
"""

from __future__ import annotations

import math
import time

__all__ = ["REFIT_ALONE", "REFIT_SHARE", "Budget"]

#: the share of the time left after the shared training that the per-size refits may take (with
#: ``tune_share`` > 0); the tuning gets the rest, and what the refits did not use. On waifu2x_photo
#: (T = 200 s, one thread, benchmarks/RESULTS.md "The budget holds") 0.9 gave 32.65 / 33.13 / 33.27 /
#: 33.40 / 33.61 dB at 25-75% of the parameters, 0.5 gave 32.66 / 32.94 / 33.25 / 33.36 / 33.57: the
#: refits on fewer batches lose more than the tuning they leave time for gains.
REFIT_SHARE = 0.9
#: the share of the budget kept for the per-size refits when no tuning follows them
#: (``tune_share=0``): on waifu2x_photo they took 78 s of 200 s at the curves' sizes
REFIT_ALONE = 0.4


class Budget:
    """``seconds`` (None: no bound) from now; ``reserve`` seconds kept for the final measurements;
    ``stages``: seconds each named stage took; ``skipped``: what was skipped or shortened, why."""

    def __init__(self, seconds: float | None) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds
        self.reserve = 0.0
        self.stages: dict[str, float] = {}
        self.skipped: list[str] = []
        self._mark = self.start

    def end(self) -> float:
        """The ``time.perf_counter()`` value the work before the final measurements must end by."""
        return math.inf if self.seconds is None else self.start + self.seconds - self.reserve

    def left(self) -> float:
        """Seconds left before :meth:`end` (inf without a bound; never below 0)."""
        return max(0.0, self.end() - time.perf_counter())

    def stage(self, name: str) -> float:
        """Record the seconds since the last stage ended as stage ``name``; return them."""
        now = time.perf_counter()
        took, self._mark = now - self._mark, now
        self.stages[name] = self.stages.get(name, 0.0) + took
        return took
