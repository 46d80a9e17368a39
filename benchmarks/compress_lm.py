"""Compress the small causal LM shipped with torchinn: perplexity on held-out Python documentation.

The model is :mod:`torchinn_demo.lm` (a Hugging Face ``LlamaForCausalLM``: 4 layers, hidden 128,
4 query / 2 key-value heads, MLP 512, bytes as tokens; trained by ``benchmarks/train_lm.py`` on the
``pydoc_data`` topics that ship with Python). It is converted with ``inn.convert`` (attention
heads and each layer's MLP channels are groups; the residual width stays). For 25%, 50% and 75%
fewer parameters, the sizes are chosen ONCE (``choose_sizes(metric="params")`` on the calibration
windows) and shared by every method:

* INN resampled at those sizes; ``torchinn.compress`` at those sizes with no tuning and with
  ``--seconds`` in all (its choices come out of them);
* L1-norm, random and activation-aware selection (channel-level Wanda, ``|W| x ||x||``:
  ``prune(..., "activation")``), as cut and after ``--seconds`` of fine-tuning of all their
  weights with ``torchinn.finetune`` (the loop, loss and learning rate ``compress`` tunes with).

Every method distils the original's next-byte distribution (KL per position). Perplexity (per
byte) is on the held-out topics, never seen in training or calibration.

    python benchmarks/compress_lm.py [--seconds 60] [--levels 0.25,0.5,0.75] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

import torchinn as inn
from torchinn.training.train import LOSSES
from torchinn_demo import harness, lm


@dataclass
class Settings:
    levels: tuple[float, ...] = (0.25, 0.5, 0.75)   # fraction of the parameters removed
    seconds: float = 60.0
    lr: float = 1e-4                                # Adam on the weights (compress and the baselines)
    calib_windows: int = 128                        # calibration windows of the training text
    batch: int = 8
    length: int = 128
    eval_windows: int | None = None                 # None: every held-out window
    threads: int = 1
    quick: bool = False


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(s: Settings) -> dict[str, Any]:
    torch.set_num_threads(s.threads)
    torch.manual_seed(0)
    model, meta = lm.load()
    net = model.eval()  # the LlamaForCausalLM itself: compress hands back a LlamaForCausalLM
    train, held = (lm.tokens(t) for t in lm.texts())
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(train) - s.length, (s.calib_windows,), generator=g).tolist()
    windows = torch.stack([train[i:i + s.length] for i in starts])
    cal = [(windows[i:i + s.batch],) for i in range(0, len(windows), s.batch)]
    ppl = lambda m: lm.perplexity(m, held, s.length, max_windows=s.eval_windows)
    res: dict[str, Any] = {"settings": asdict(s), "machine": harness.machine_line(), "checkpoint": meta,
                           "params": harness.n_params(net), "original": ppl(net)}
    log(f"original: perplexity {res['original']:.3f}, {res['params']:,} parameters")
    t0 = time.perf_counter()
    imodel = inn.convert(net, cal[0])
    res["convert_seconds"] = time.perf_counter() - t0
    res["groups"] = {n: g.max_size for n, g in imodel.groups.items()}
    with torch.no_grad():
        ref, out = net(*cal[0]).logits, imodel.to_discrete()(*cal[0]).logits
    res["convert_rel_error"] = float((out - ref).abs().max() / ref.abs().max())
    log(f"converted in {res['convert_seconds']:.1f} s: {len(res['groups'])} groups, "
        f"relative error {res['convert_rel_error']:.1e}")
    tune = inn.TuneConfig(seconds=s.seconds, lr_weights=s.lr, loss="kl", progress=False)
    res["levels"] = []
    for level in s.levels:
        row: dict[str, Any] = {"removed": level}
        sizes = inn.choose_sizes(imodel, 1 - level, "params", calibration=cal[:2], loss="kl")
        row["sizes"] = sizes
        m = copy.deepcopy(imodel)
        m.resize(sizes)
        resampled = m.to_discrete().eval()
        row["params"], row["inn"] = harness.n_params(resampled), ppl(resampled)
        for key, cfg in (("compress_0s", False), ("compress", tune)):
            t0 = time.perf_counter()
            small, rep = inn.compress(net, cal[0], 1 - level, calibration=cal, tune=cfg, sizes=sizes)
            row[key] = ppl(small)
            row[key + "_class"] = type(small).__name__
            row[key + "_report"] = {"steps": rep.tuning.get("steps", 0), "wall": time.perf_counter() - t0,
                                    "start": sorted(set(rep.starts.values())), "seconds": rep.seconds}
        for method in ("l1", "random", "activation"):
            pruned = inn.prune(imodel, sizes, method, calibration=cal).eval()
            row[method] = ppl(pruned)
            rep = inn.finetune(pruned, cal, teacher=net, tune=tune, loss_fn=LOSSES["kl"])
            row[method + "_ft"], row[method + "_ft_report"] = ppl(pruned), {"steps": rep["steps"]}
        log(f"{level:.0%} removed: " + json.dumps({k: v for k, v in row.items() if "report" not in k
                                                   and k != "sizes"}, default=lambda v: round(v, 3)))
        res["levels"].append(row)
    res["machine_after"] = harness.machine_line()
    return res


def _b(v: float, best: float) -> str:
    return f"**{v:.3f}**" if v <= best + 1e-9 else f"{v:.3f}"


def format_table(res: dict[str, Any]) -> str:
    s = res["settings"]
    sec = f"{s['seconds']:g} s"
    out = [f"Machine: {res['machine']} (before) / {res['machine_after']} (after); "
           f"torch.set_num_threads({s['threads']}); {s['calib_windows']} calibration windows of {s['length']} bytes; "
           f"tuning and fine-tuning {sec} each (compress: its choices included), Adam lr {s['lr']:g}, KL distillation.",
           "", f"Original: perplexity **{res['original']:.3f}** per byte on the held-out topics; "
           f"{res['params']:,} parameters; groups {list(res['groups'].values())}.", ""]
    cols = ["removed", "params", "INN resampled", "compress 0 s", "L1", "random", "Wanda (activation)",
            f"compress {sec}", f"L1 + FT {sec}", f"random + FT {sec}", f"Wanda + FT {sec}"]
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["levels"]:
        b0 = min(r[k] for k in ("compress_0s", "l1", "random", "activation"))
        b1 = min(r[k] for k in ("compress", "l1_ft", "random_ft", "activation_ft"))
        cr = r["compress_report"]
        cells = [f"{r['removed']:.0%}", f"{r['params'] / res['params']:.1%}", f"{r['inn']:.3f}",
                 _b(r["compress_0s"], b0), _b(r["l1"], b0), _b(r["random"], b0), _b(r["activation"], b0),
                 f"{_b(r['compress'], b1)} ({cr['steps']} steps, {cr['wall']:.0f} s, start {'+'.join(cr['start'])})"]
        cells += [f"{_b(r[k + '_ft'], b1)} ({r[k + '_ft_report']['steps']} steps)" for k in ("l1", "random", "activation")]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Perplexity per byte, lower is better; bold: best untuned at the shared sizes, best tuned."]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=harness.fractions, default=d.levels,
                    help="comma-separated fractions of the parameters removed, each in (0, 1)")
    ap.add_argument("--seconds", type=float, default=d.seconds)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--quick", action="store_true", help="a small setting for the test suite")
    ap.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    levels = tuple(args.levels)
    if not args.seconds > 0:
        ap.error(f"--seconds must be > 0, got {args.seconds}")
    s = Settings(levels=levels, seconds=args.seconds, threads=args.threads, quick=args.quick)
    if s.quick:
        s.seconds, s.calib_windows, s.eval_windows = min(s.seconds, 1.0), 16, 8
    res = run(s)
    print(format_table(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
