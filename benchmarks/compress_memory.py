"""Peak RSS of ``compress`` stage by stage, and which copies of the weights are alive at each stage.

One network from ``benchmarks/scale.py`` (random weights) goes through
``inn.compress(model, inputs, target=0.5, tune=False)`` in this process. A thread samples VmRSS
every 5 ms and charges it to the innermost stage running; a stage that raises the process's
high-water mark (VmHWM) is charged that too, so short peaks are not missed. The stages are the
functions compress calls (wrapped here, nothing in the library changes): ``convert``, the
teacher (``to_discrete``), ``importance``, ``sizes``, ``starts``, ``reconstruct``, ``refine``,
``module_from``. At the end of each stage a census walks the live tensors (``gc``) and splits
their bytes into the user's model, the integral model (functions and fixed tensors), graph
modules (the teacher and the candidates) and the rest (activations, caches, sampled tensors).

Numbers are over the float32 size of the network's parameters and buffers, above the RSS of the
process before the network was built (the network itself counts 1.0).

    python benchmarks/compress_memory.py [--network llama_mid] [--calibration 0] [--threads 2]

``--calibration N``: N batches like the example (seeded) instead of the example alone: with 2
or more, the held-out ones judge the reconstruction, which then runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scale import _build, _status  # noqa: E402


class Stages:
    """Peak RSS per stage (sampled, and the high-water mark where a stage raised it)."""

    def __init__(self, base: int, scale: float) -> None:
        self.base, self.scale = base, scale
        self.stack: list[str] = ["setup"]
        self.peak: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.census: dict[str, dict[str, float]] = {}
        self.order: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _charge(self, label: str, rss: int) -> None:
        if label not in self.peak:
            self.order.append(label)
        self.peak[label] = max(self.peak.get(label, 0), rss)

    def _sample(self) -> None:
        while not self._stop:
            self._charge(self.stack[-1], _status("VmRSS"))
            time.sleep(0.005)

    @contextmanager
    def stage(self, label: str, census=None):
        hwm = _status("VmHWM")
        self.stack.append(label)
        self._charge(label, _status("VmRSS"))
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
            after = _status("VmHWM")
            if after > hwm:
                self._charge(label, after)
            self.stack.pop()
            if census is not None:
                self.census[label] = census()

    def stop(self) -> None:
        self._stop = True
        self._thread.join()

    def ratio(self, rss: int) -> float:
        return (rss - self.base) / self.scale


def _census(model, scale: float) -> dict[str, float]:
    """Bytes of live tensors (each storage once) by owner, over ``scale``."""
    import torch
    from torch import fx

    import torchinn as inn

    gc.collect()

    def storages(mod) -> dict[int, int]:
        out = {}
        for t in [*mod.parameters(), *mod.buffers()]:
            s = t.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
        return out

    user = storages(model)
    seen = set(user)
    out = {"user": sum(user.values())}
    imodels, graphs, tensors = [], [], []
    for obj in gc.get_objects():
        cls = type(obj)
        if issubclass(cls, inn.IntegralModel):
            imodels.append(obj)
        elif issubclass(cls, fx.GraphModule) and cls.__name__ == "DiscreteNetwork":
            graphs.append(obj)
        elif issubclass(cls, torch.Tensor):
            tensors.append(obj)
    for kind, mods in (("integral", imodels), ("graphs", graphs)):
        total = 0
        for m in mods:
            for p, n in storages(m).items():
                if p not in seen:
                    seen.add(p)
                    total += n
        out[kind] = total
    out["graph_modules"] = len(graphs)
    rest = 0
    for t in tensors:
        try:
            if t.device.type != "cpu" or t.is_meta:
                continue
            s = t.untyped_storage()
            ptr = s.data_ptr()
        except Exception:  # noqa: BLE001 - fake and functional tensors have no storage
            continue
        if ptr not in seen:
            seen.add(ptr)
            rest += s.nbytes()
    out["other"] = rest
    return {k: (v if k == "graph_modules" else round(v / scale, 2)) for k, v in out.items()}


def profile(name: str, calibration: int, threads: int, census: bool = True) -> dict:
    import torch

    import torchinn as inn
    from torchinn.compression import choices, pipeline
    from torchinn.model.integral_model import IntegralModel

    torch.set_num_threads(threads)
    rss0 = _status("VmRSS")
    model, inputs = _build(name, quick=False)
    scale = 4 * (sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()))
    stages = Stages(rss0, scale)
    count = (lambda: _census(model, scale)) if census else None

    def wrap(owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def wrapped(*a, **k):
            with stages.stage(label, count):
                return fn(*a, **k)

        setattr(owner, attr, wrapped)

    wrap(pipeline, "convert", "convert")
    wrap(pipeline, "_choice_batches", "teacher outputs")
    wrap(choices, "_importance", "importance")
    wrap(choices, "_size_options", "sizes")
    wrap(choices, "_sizes_and_starts", "starts")
    wrap(choices, "_reconstruct", "reconstruct")
    wrap(choices, "refine_start", "refine")
    wrap(IntegralModel, "to_discrete", "to_discrete")
    wrap(IntegralModel, "module_from", "module_from")
    batches = None
    if calibration:
        gen = torch.Generator().manual_seed(2)
        x = inputs[0]
        batches = [torch.randint(0, int(x.max()) + 1, x.shape, generator=gen) if not x.is_floating_point()
                   else torch.randn(x.shape, generator=gen) for _ in range(calibration)]
    t0 = time.perf_counter()
    with stages.stage("compress"):
        small, report = inn.compress(model, inputs, target=0.5, tune=False, calibration=batches)
    seconds = time.perf_counter() - t0
    stages.stop()
    hwm = _status("VmHWM")
    rows = [{"stage": s, "peak_over_model": round(stages.ratio(stages.peak[s]), 2),
             "seconds": round(stages.seconds.get(s, 0.0), 1), **({"alive_after": stages.census[s]}
                                                                  if s in stages.census else {})}
            for s in stages.order]
    return {"network": name, "calibration": calibration, "model_gb": round(scale / 2**30, 3),
            "seconds": round(seconds, 1), "peak_over_model": round(stages.ratio(hwm), 2), "stages": rows,
            "sizes": {k: v[1] for k, v in report.sizes.items()}, "error": report.error_before_tuning,
            "start_errors": report.start_errors, "sizes_errors": report.sizes_errors,
            "held_out": report.reconstruct_errors, "report_seconds": {k: round(v, 1) for k, v in
                                                                       report.seconds.items()},
            "params_after": report.params_after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="llama_mid")
    ap.add_argument("--calibration", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-census", action="store_true", help="no census of live tensors (faster)")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args()
    out = profile(args.network, args.calibration, args.threads, census=not args.no_census)
    print(f"# {out['network']}, {out['model_gb']} GB float32, calibration {out['calibration']}: "
          f"{out['seconds']} s, peak {out['peak_over_model']}x the model")
    print("| stage | peak / model | seconds | alive after (user, integral, graphs [n], other) |")
    print("|---|---|---|---|")
    for r in out["stages"]:
        c = r.get("alive_after")
        alive = f"{c['user']}, {c['integral']}, {c['graphs']} [{c['graph_modules']}], {c['other']}" if c else ""
        print(f"| {r['stage']} | {r['peak_over_model']} | {r['seconds']} | {alive} |")
    print(json.dumps({k: out[k] for k in ("error", "start_errors", "sizes_errors", "held_out", "params_after")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
