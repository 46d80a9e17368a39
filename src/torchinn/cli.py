"""The ``torchinn`` command line: ``inspect``, ``compress`` and ``bench`` a network, and ``demo``.

``MODEL`` is one of:

* a file written by ``torch.save(module)``: a pickle of Python objects, which can run arbitrary
  code when loaded, so it is read only with ``--trust-pickle`` (``torch.load(weights_only=False)``);
  without it, pickles are read with ``torch.load(weights_only=True)`` (tensors and plain
  containers only) and a whole pickled module is refused with an error that says what to do;
* a TorchScript file (``torch.jit.save``): ``bench`` runs it, but ``inspect`` and ``compress``
  need the Python module, because ``torch.export`` cannot trace a ``ScriptModule``;
* a ``torch.export`` program (``.pt2``, ``torch.export.save``): ``bench`` only, with
  ``--trust-pickle`` (its loader unpickles the constants stored in it);
* an integral model saved by torchinn (``.inn``, :func:`torchinn.save`; a safetensors file, never
  unpickled): ``inspect`` and ``bench``;
* ``package.module:callable`` or ``path/to/file.py:callable``: imported (the current directory
  is put on ``sys.path``) and called without arguments; it must return an ``nn.Module``
  (``module:name`` of an ``nn.Module`` instance uses the instance).

Files are written atomically (:mod:`torchinn.fileio`): ``compress -o OUT`` checks OUT and its
reports can be written before the run, and a crash or kill leaves the old OUT as it was.

Errors print one ``torchinn: error: ...`` line and exit with status 1 (argument errors: status 2);
``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .fileio import atomic_open, check_target, write_text
from .loading import (CLIError, Loaded, _convertible, _dtype_of, _random_inputs, _shapes_text,
                      load_images, load_model)

__all__ = ["main", "build_parser", "load_model", "CLIError"]

def _demo(args: argparse.Namespace) -> int:
    """``torchinn demo``: the demo application (:mod:`torchinn_demo`), imported only when run."""
    from torchinn_demo.command import run

    return run(args)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- argument types -----------------------------------------------------------------------------
def _widths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated fractions like 1,0.5; got {text!r}")
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"every width must be a fraction in (0, 1]; got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _multiple(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the multiple is a whole number of channels >= 1 like 8, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"the multiple must be >= 1 (1: no rounding), got {value}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is comma-separated positive integers like 1,3,224,224; got {text!r}")
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"every dimension must be a positive integer; got {text!r}")
    return dims


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) like 0.5, got {text!r}")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"the target is the fraction of the metric to keep and must be "
                                         f"in (0, 1), got {value}")
    return value


def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated fractions like 0.25,0.5; got {text!r}")
    if not values or any(not 0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"every level is a fraction removed, in (0, 1); got {text!r}")
    return values


def _float(text: str, ok: Callable[[float], bool], expected: str, rule: str) -> float:
    """``text`` as a finite float meeting ``ok``; argparse errors say ``expected`` / ``rule``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    return value


def _seconds(text: str) -> float:
    return _float(text, lambda v: v > 0, "a number of seconds", "seconds must be > 0")


def _non_negative_seconds(text: str) -> float:
    return _float(text, lambda v: v >= 0, "a number of seconds", "seconds must be >= 0")


def _share(text: str) -> float:
    return _float(text, lambda v: 0.0 <= v <= 1.0, "a share in [0, 1]", "the share must be in [0, 1]")


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.485,0.456,0.406; got {text!r}")
    return values


# -- inspect ------------------------------------------------------------------------------------
def _human(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _pinned_summary(pinned: dict | None) -> list[dict]:
    """The tensor dimensions kept at full size, with the reason recorded at conversion."""
    return [{"tensor_dim": k, "reason": v} for k, v in (pinned or {}).items()]


def _print_pinned(pinned: list[dict]) -> None:
    print("Channels kept at full size (the network's inputs and outputs always are):")
    for p in pinned:
        text = f"{p['tensor_dim']}: {p['reason']}"
        print(f"  {text if len(text) <= 110 else text[:107] + '...'}")
    if not pinned:
        print("  none")


def _inspect(args: argparse.Namespace) -> int:
    from .budget import count_flops, flops_by_tensor
    from .convert import ConvertConfig, convert

    loaded = load_model(args.model, args.trust_pickle)
    original = None
    if loaded.kind == "integral":
        imodel = loaded.obj
        inputs = _random_inputs(args.input_shape, _dtype_of(imodel), args.seed)
    else:
        model = _convertible(loaded, "inspect")
        original = sum(p.numel() for p in model.parameters())
        inputs = _random_inputs(args.input_shape, _dtype_of(model), args.seed)
        imodel = convert(model, inputs, ConvertConfig(permute=False, progress=False))
    small = imodel.to_discrete(graph=True).eval()
    params = {n: t.numel() for n, t in small.named_parameters()}
    by_tensor, _ = flops_by_tensor(small, inputs)
    total_flops = count_flops(small, inputs)
    groups, grouped = [], set()
    for g in imodel.groups.values():
        tensors = list(dict.fromkeys(t for t, _ in g.members))
        grouped.update(tensors)
        groups.append({"name": g.name, "size": g.size, "max_size": g.max_size,
                       "tensors": [[t, d] for t, d in g.members], "modules": g.modules,
                       "params": sum(params.get(t, 0) for t in tensors),
                       "flops": sum(by_tensor.get(t, 0) for t in tensors)})
    total_params = sum(params.values())
    info = {"model": loaded.source, "input_shapes": [list(s) for s in args.input_shape],
            "params": total_params, "params_original": original, "flops": total_flops,
            "params_in_groups": sum(n for t, n in params.items() if t in grouped),
            "groups": groups, "pinned": _pinned_summary(imodel.pinned)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    folded = "" if original is None or original == total_params else f" ({original:,} before folding batch norms)"
    at = "" if all(g["size"] == g["max_size"] for g in groups) else " at its saved sizes"
    print(f"{loaded.source}: {len(groups)} channel groups, {total_params:,} parameters{folded}, "
          f"{_human(total_flops)} FLOPs for inputs {_shapes_text(args.input_shape)}{at}")
    print("(params / FLOPs of a group: of the tensors with a dimension in it; a weight counts in its input and "
          "output groups)\n")
    width = min(44, max([len("group")] + [len(g["name"]) for g in groups]))
    print(f"{'group':{width}s} {'channels':>9s} {'tensors':>7s} {'params':>10s} {'FLOPs':>8s}  modules")
    for g in groups:
        ch = str(g["max_size"]) if g["size"] == g["max_size"] else f"{g['size']}/{g['max_size']}"
        mods = ", ".join(m or "<root>" for m in g["modules"])
        if len(mods) > 60:
            mods = mods[:57] + "..."
        print(f"{g['name'][:width]:{width}s} {ch:>9s} {len(g['tensors']):7d} {g['params']:10,d} "
              f"{_human(g['flops']):>8s}  {mods}")
        if args.members:
            for t, d in g["tensors"]:
                print(f"{'':{width}s}   {t}[dim {d}]")
    share = info["params_in_groups"] / total_params if total_params else 0.0
    print(f"\n{info['params_in_groups']:,} of {total_params:,} parameters ({share:.0%}) are in tensors that "
          "can shrink.")
    _print_pinned(info["pinned"])
    return 0


# -- compress -----------------------------------------------------------------------------------
def _report_paths(out: Path) -> tuple[Path, Path]:
    base = out.with_suffix("") if out.suffix else out
    return base.with_name(base.name + ".report.json"), base.with_name(base.name + ".report.txt")


def _writable_output(output: str) -> Path:
    """``-o`` and its two reports, checked before the long run: the folder exists (it is created) and
    can be written, and no target is a directory, special file or read-only."""
    out = Path(output)
    if out.is_dir():
        raise CLIError(f"-o {output!r} is a directory; give a file name like small.pt")
    if out.suffix.lower() == ".inn":
        raise CLIError(f"-o {output!r}: compress writes a plain network with torch.save (a pickle), but .inn "
                       "is torchinn's safetensors format, which is never unpickled; give a name like small.pt")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"-o {output!r}: cannot create its folder {str(out.parent)!r}: {err.strerror or err}") from err
    try:
        for path in (out, *_report_paths(out)):
            check_target(path)
    except OSError as err:
        raise CLIError(f"-o {output!r}: {err.strerror or err}") from err
    return out


def _save_checked(small: Any, out: Path, example: tuple) -> None:
    """``torch.save(small)`` to ``out`` atomically, after checking that the new file loads back to
    the same network (the old ``out`` stays if anything fails)."""
    import torch

    with atomic_open(out) as f:
        torch.save(small, f)
        f.seek(0)
        again = torch.load(f, weights_only=False)  # our own file, just written
        with torch.no_grad():
            ref, got = small(*example), again(*example)
        leaves = zip(torch.utils._pytree.tree_leaves(ref), torch.utils._pytree.tree_leaves(got))
        if not all(torch.equal(a, b) for a, b in leaves):
            raise CLIError(f"internal error: the network written for {out} does not load back to the same "
                           "network; please report this (the old file, if any, is unchanged)")


def _compress(args: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .budget import compress
    from .train import TuneConfig

    if args.calibration is None and (args.mean is not None or args.std is not None):
        raise CLIError("--mean/--std normalise --calibration images; give --calibration too")
    out = _writable_output(args.output)
    loaded = load_model(args.model, args.trust_pickle)
    if loaded.kind == "integral":
        raise CLIError(f"{loaded.source!r} is an integral model: compress needs the original network "
                       "(a torch.save(module) file or module:callable)")
    model = _convertible(loaded, "compress")
    dtype = _dtype_of(model)
    if args.calibration is not None:
        if len(args.input_shape) != 1:
            raise CLIError("--calibration feeds one image input; the model has "
                           f"{len(args.input_shape)} --input-shape")
        batches = [b.to(dtype) for b in load_images(args.calibration, args.input_shape[0], args.mean,
                                                    args.std, args.max_images)]
        calibration = {"source": args.calibration, "images": sum(len(b) for b in batches),
                       "batches": len(batches), "scaling": "[0, 1] (8-bit / 255, 16-bit / 65535)",
                       "mean": args.mean, "std": args.std}
        example = (batches[0],)
        loader: list = batches
        described = f"{calibration['images']} images from {args.calibration}"
    else:
        print("torchinn: warning: no --calibration folder: choosing sizes and tuning on random normal "
              f"inputs of shape {_shapes_text(args.input_shape)}; this is only a smoke test of the pipeline, not a "
              "real compression", file=sys.stderr)
        loader = [_random_inputs(args.input_shape, dtype, args.seed + i) for i in range(4)]
        example = loader[0]
        calibration = {"source": "random normal inputs (smoke test)", "batches": len(loader)}
        described = calibration["source"]
        loader = [(b,) if len(b) > 1 else b[0] for b in loader]  # batch_inputs: a tensor or ((inputs),)
    tune = (TuneConfig(seconds=args.seconds, progress=not args.no_progress, weights_share=args.weights_share,
                       loss=args.loss) if args.seconds > 0 else False)
    small, report = compress(model, example, args.target, args.metric, calibration=loader, tune=tune,
                             reconstruct=not args.no_reconstruct, multiple=args.multiple)
    _save_checked(small, out, example)
    data = dataclasses.asdict(report)
    data.update(ratio=report.ratio, model=loaded.source, output=str(out),
                input_shapes=[list(s) for s in args.input_shape], calibration=calibration,
                load_with="torch.load(path, weights_only=False)", torchinn=__version__, torch=torch.__version__)
    rounded = f", sizes in multiples of {args.multiple}" if args.multiple > 1 else ""
    text = (f"torchinn compress {loaded.source} -> {out} (target {args.target:g} of the {args.metric}{rounded}, "
            f"{args.seconds:g} s of tuning, calibration: {described})\n{report}\n")
    json_path, text_path = _report_paths(out)
    write_text(json_path, json.dumps(data, indent=2) + "\n")
    write_text(text_path, text)
    print(text, end="")
    print(f"wrote {out} (load with torch.load(path, weights_only=False)), {json_path.name}, {text_path.name}")
    return 0


# -- bench --------------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _runnable(loaded: Loaded) -> tuple[Any, str]:
    if loaded.kind == "integral":
        return loaded.obj.eval().to_discrete(graph=True).eval(), "to_discrete() at its saved sizes"
    model = loaded.obj
    if loaded.kind != "exported":
        model = model.eval()
    return model, {"module": "nn.Module", "torchscript": "TorchScript", "exported": "torch.export"}[loaded.kind]


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .budget import measure_latency

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for role, spec in (("original", args.model), ("compressed", args.compressed)):
        if spec is None:
            continue
        model, kind = _runnable(load_model(spec, args.trust_pickle))
        inputs = _random_inputs(args.input_shape, _dtype_of(model), args.seed)
        try:
            seconds = measure_latency(model, inputs, repeats=args.repeats, warmup=args.warmup)
        except Exception as err:
            raise CLIError(f"running {spec!r} on inputs of shape {_shapes_text(args.input_shape)} failed: "
                           f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        batch = args.input_shape[0][0]
        rows.append({"role": role, "model": spec, "kind": kind,
                     "params": sum(p.numel() for p in model.parameters()),
                     "latency_ms": seconds * 1e3, "items_per_s": batch / seconds})
    for r in rows:
        r["speedup"] = rows[0]["latency_ms"] / r["latency_ms"]
    info = {"rows": rows, "input_shapes": [list(s) for s in args.input_shape], "threads": torch.get_num_threads(),
            "cores": _available_cores(), "cpu": _cpu_name(), "torch": torch.__version__,
            "repeats": args.repeats, "warmup": args.warmup}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"machine: {info['cpu']}, {info['cores']} cores available; torch {info['torch']} with "
          f"{info['threads']} thread(s); inputs {_shapes_text(args.input_shape)}; "
          f"median of {args.repeats} runs after {args.warmup} warm-up")
    names = [f"{r['model']} ({r['kind']})" for r in rows]
    width = max(len(n) for n in names)
    print(f"{'':10s} {'model':{width}s} {'params':>11s} {'latency ms':>11s} {'items/s':>10s} {'speed-up':>8s}")
    for r, name in zip(rows, names):
        print(f"{r['role']:10s} {name:{width}s} {r['params']:11,d} {r['latency_ms']:11.3f} "
              f"{r['items_per_s']:10.1f} {r['speedup']:7.2f}x")
    return 0


# -- parser -------------------------------------------------------------------------------------
_MODEL_HELP = ("a torch.save(module) file (needs --trust-pickle), {extra}or module:callable / "
               "path/to/file.py:callable that returns an nn.Module")
_TRUST_HELP = ("allow reading MODEL files that are pickles of Python objects (torch.save of a whole module, "
               "torch.export programs) with torch.load(weights_only=False). Unpickling can run arbitrary "
               "code: only load files you trust. Without this flag nothing is unpickled: pickles are read "
               "with torch.load(weights_only=True), tensors only")


def _trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-pickle", action="store_true", help=_TRUST_HELP)
_SHAPE_HELP = "shape of the (random or calibration) input batch, like 1,3,224,224; repeat for several inputs"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="torchinn", description="Integral Neural Networks for PyTorch: train once, run at any width.")
    parser.add_argument("--version", action="version", version=f"torchinn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="the tour: compress the shipped digits ResNet and super-resolution EDSR, print tables, "
                     "write plots",
        description="Without arguments: convert the digits ResNet and the EDSR x2 shipped with torchinn, compress "
                    "them at several levels (INN resampled, INN after integration grid tuning, L1 and random "
                    "channel selection at the same sizes), print accuracy / PSNR and speed tables and write plots "
                    "(a few minutes on 2 CPU cores). --story scratch trains a small integral CNN from scratch on "
                    "the digits next to a plain one and cuts both to several widths.")
    demo.add_argument("--story", choices=["classification", "superres", "scratch", "all"], default=None,
                      help="run one story (default: classification and superres; all: the three)")
    demo.add_argument("--levels", type=_levels, default=None, metavar="L1,L2,...",
                      help="fractions removed: of the parameters (classification), of the residual blocks' inner "
                           "channels (superres) (default 0.25,0.5,0.75)")
    demo.add_argument("--out", default="torchinn-demo", metavar="DIR",
                      help="folder for the plots (default ./torchinn-demo)")
    demo.add_argument("--tune-seconds", type=_seconds, default=None,
                      help="seconds of grid tuning per level (default 15; 0.3 with --quick)")
    demo.add_argument("--epochs", type=_positive, default=None,
                      help="scratch story: training epochs (default 10; 1 with --quick)")
    demo.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    demo.add_argument("--widths", type=_widths, default=None, metavar="W1,W2,...",
                      help="scratch story: fractions of every hidden width to evaluate (default 1,0.75,0.5,0.25)")
    demo.add_argument("--quick", action="store_true", help="a tiny setting that runs in seconds (for tests)")
    demo.add_argument("--threads", type=_positive, default=None,
                      help="torch threads (tour default 1: faster than 2 on a busy 2-core machine); scratch: train "
                           "both networks one after the other in this process with this many threads (default: two "
                           "parallel single-threaded processes on 2+ cores)")
    demo.add_argument("--no-progress", action="store_true", help="hide status lines and progress bars")
    demo.set_defaults(func=_demo)

    ins = sub.add_parser(
        "inspect", help="the channel groups of a network: sizes, tensors, parameters, FLOPs",
        description="Convert MODEL (without the channel permutation, which inspect does not need) and list "
                    "its channel groups: the tensor dimensions that must keep one common size, with the "
                    "parameters and FLOPs of their tensors, and which channels stay at full size and why.")
    ins.add_argument("model", metavar="MODEL", help=_MODEL_HELP.format(extra="a torchinn .inn file, "))
    ins.add_argument("--input-shape", type=_shape, action="append", required=True, metavar="N,C,H,W",
                     help=_SHAPE_HELP)
    ins.add_argument("--members", action="store_true", help="list every tensor dimension of every group")
    ins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ins.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    _trust_flag(ins)
    ins.set_defaults(func=_inspect)

    com = sub.add_parser(
        "compress", help="shrink a trained network to a budget and save the plain smaller network",
        description="Convert MODEL to an integral network, choose every group's size so the discrete "
                    "network keeps --target of the --metric, tune the integration grids on --calibration "
                    "images for --seconds, and save the plain compressed network (torch.save of a "
                    "torch.fx.GraphModule: load it with torch.load(path, weights_only=False); torchinn is "
                    "not needed to load it) with a report next to it (OUT.report.json, OUT.report.txt).")
    com.add_argument("model", metavar="MODEL", help=_MODEL_HELP.format(extra=""))
    com.add_argument("--input-shape", type=_shape, action="append", required=True, metavar="N,C,H,W",
                     help=_SHAPE_HELP + "; with --calibration, N images make one batch")
    com.add_argument("--target", type=_fraction, required=True,
                     help="fraction of the metric to keep, in (0, 1): 0.5 halves it")
    com.add_argument("--metric", choices=("params", "flops", "latency"), default="params",
                     help="what the target counts (default params)")
    com.add_argument("--multiple", type=_multiple, default=1, metavar="N",
                     help="round every group's size to a multiple of N channels, such as 8 or 16 (what fast "
                          "kernels want), or keep its full size; the sizes are chosen among those, so the target "
                          "still holds (default 1: any size)")
    com.add_argument("--calibration", metavar="FOLDER",
                     help="folder of images (png/jpg, searched recursively) to choose sizes and tune on: each "
                          "is resized to cover H x W, centre-cropped, scaled to [0, 1] (RGB, or grey when C = 1), "
                          "then normalised by --mean/--std if given. Without it, random inputs are used: a "
                          "smoke test only")
    com.add_argument("--mean", type=_floats, metavar="M1,M2,M3",
                     help="per-channel mean subtracted from the [0, 1] images (ImageNet: 0.485,0.456,0.406)")
    com.add_argument("--std", type=_floats, metavar="S1,S2,S3",
                     help="per-channel std the images are divided by (ImageNet: 0.229,0.224,0.225)")
    com.add_argument("--max-images", type=_positive, default=256, help="use at most this many images (default 256)")
    com.add_argument("--seconds", type=_non_negative_seconds, default=60.0,
                     help="seconds of tuning (default 60): grid tuning, then the weights (--weights-share); 0: no "
                          "tuning (sizes and starting partitions are still chosen on the calibration data)")
    com.add_argument("--weights-share", type=_share, default=0.5,
                     help="share of --seconds spent tuning all the weights after grid tuning (default 0.5)")
    com.add_argument("--loss", choices=("auto", "mse", "kl"), default="auto",
                     help="distillation loss: kl for class logits, mse otherwise; auto picks kl when every output "
                          "is (batch, classes) (default auto)")
    com.add_argument("--no-reconstruct", action="store_true",
                     help="do not try the least-squares reconstruction baseline as a starting point")
    com.add_argument("-o", "--output", required=True, metavar="OUT",
                     help="file for the compressed network (.pt); checked before the run and replaced atomically "
                          "(a crash leaves the old file as it was)")
    com.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    com.add_argument("--no-progress", action="store_true", help="hide the tuning progress bar")
    _trust_flag(com)
    com.set_defaults(func=_compress)

    ben = sub.add_parser(
        "bench", help="latency and throughput of a network, and of its compressed version",
        description="Time forward passes (no grad, eval mode) on random inputs: median latency and items "
                    "per second (batch size / latency), for MODEL and --compressed side by side.")
    ben.add_argument("model", metavar="MODEL",
                     help=_MODEL_HELP.format(extra="a TorchScript file, a torch.export (.pt2) file (needs "
                                                   "--trust-pickle), a torchinn .inn file (run as to_discrete() "
                                                   "at its saved sizes), "))
    ben.add_argument("--input-shape", type=_shape, action="append", required=True, metavar="N,C,H,W",
                     help=_SHAPE_HELP)
    ben.add_argument("--compressed", metavar="OUT", help="a compressed network (the -o of compress) to compare")
    ben.add_argument("--threads", type=_positive, default=None, help="torch threads (default: torch's choice)")
    ben.add_argument("--repeats", type=_positive, default=20, help="timed runs; the median is shown (default 20)")
    ben.add_argument("--warmup", type=_positive, default=3, help="untimed runs first (default 3)")
    ben.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ben.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    _trust_flag(ben)
    ben.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("torchinn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `torchinn inspect ... | head`: stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")
        return 141
    except Exception as err:
        if args.verbose:
            raise
        if isinstance(err, CLIError):
            print(f"torchinn: error: {err}", file=sys.stderr)
        else:
            print(f"torchinn: error: {type(err).__name__}: {err}\n(run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
