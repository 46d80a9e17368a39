"""The ``inspect``, ``compress`` and ``bench`` commands: each takes the parsed arguments
(:func:`torchinn.cli.main.build_parser`) and returns the exit code; a mistake in their input raises
:class:`~torchinn.cli.loading.CLIError`. Text that comes from a model file or a model's names is printed
through :func:`~torchinn.cli.output.printable`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

from .args import available_cores
from .output import check_output, created_folders, is_folder, printable, report_paths, save_checked, save_folder_checked
from ..io.fileio import write_text
from .loading import (IMAGE_SUFFIXES, CLIError, Loaded, convertible, dtype_of, embedding_size, random_inputs,
                      random_tokens, shapes_text, load_images, load_model, vocabulary)
from .tokens import load_token_batches
from ..model.inputs import as_inputs

__all__ = ["inspect", "compress", "bench"]


def _human(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _check_integral_inputs(loaded: Loaded, shapes: list, inputs: tuple) -> None:
    """Run the integral model of a .inn file once on ``inputs``: its own checks say which inputs it
    takes (one line, not a failure deep inside the discrete network)."""
    import torch

    imodel = loaded.obj
    expected = getattr(imodel, "input_shapes", None)
    if expected is not None and len(expected) != len(shapes):
        raise CLIError(f"{loaded.source!r} takes {len(expected)} input(s), got {len(shapes)} "
                       f"--input-shape ({shapes_text(shapes)})")
    try:
        with torch.no_grad():
            imodel.eval()(*inputs)
    except (ValueError, TypeError) as err:
        raise CLIError(f"{loaded.source!r} cannot run on --input-shape {shapes_text(shapes)}: {err}") from err


# -- inspect ------------------------------------------------------------------------------------
def _pinned_summary(pinned: dict | None) -> list[dict]:
    """The tensor dimensions kept at full size, with the reason recorded at conversion."""
    return [{"tensor_dim": k, "reason": v} for k, v in (pinned or {}).items()]


def _print_pinned(pinned: list[dict]) -> None:
    print("Channels kept at full size (the network's inputs and outputs always are):")
    for p in pinned:
        text = printable(f"{p['tensor_dim']}: {p['reason']}")
        print(f"  {text if len(text) <= 110 else text[:107] + '...'}")
    if not pinned:
        print("  none")


def inspect(args: argparse.Namespace) -> int:
    """``torchinn inspect``: the channel groups of MODEL, as a table or JSON."""
    from ..sizing.metrics import count_flops, flops_by_tensor
    from ..model.convert import ConvertConfig, convert

    loaded = load_model(args.model, args.trust_code, convert=True)
    original = None
    if loaded.kind == "integral":
        imodel = loaded.obj
        inputs = random_inputs(args.input_shape, dtype_of(imodel), args.seed)
        _check_integral_inputs(loaded, args.input_shape, inputs)
    else:
        model = convertible(loaded, "inspect")
        original = sum(p.numel() for p in model.parameters())
        inputs = random_inputs(args.input_shape, dtype_of(model), args.seed)
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
        print(json.dumps(info, indent=2))  # ensure_ascii: control characters are escaped
        return 0
    folded = "" if original is None or original == total_params else f" ({original:,} before folding batch norms)"
    at = "" if all(g["size"] == g["max_size"] for g in groups) else " at its saved sizes"
    print(f"{printable(loaded.source)}: {len(groups)} channel groups, {total_params:,} parameters{folded}, "
          f"{_human(total_flops)} FLOPs for inputs {shapes_text(args.input_shape)}{at}")
    print("(params / FLOPs of a group: of the tensors with a dimension in it; a weight counts in its input and "
          "output groups)\n")
    names = [printable(g["name"]) for g in groups]
    width = min(44, max([len("group")] + [len(n) for n in names]))
    print(f"{'group':{width}s} {'channels':>9s} {'tensors':>7s} {'params':>10s} {'FLOPs':>8s}  modules")
    for g, name in zip(groups, names):
        ch = str(g["max_size"]) if g["size"] == g["max_size"] else f"{g['size']}/{g['max_size']}"
        mods = printable(", ".join(m or "<root>" for m in g["modules"]))
        if len(mods) > 60:
            mods = mods[:57] + "..."
        print(f"{name[:width]:{width}s} {ch:>9s} {len(g['tensors']):7d} {g['params']:10,d} "
              f"{_human(g['flops']):>8s}  {mods}")
        if args.members:
            for t, d in g["tensors"]:
                print(f"{'':{width}s}   {printable(t)}[dim {d}]")
    share = info["params_in_groups"] / total_params if total_params else 0.0
    print(f"\n{info['params_in_groups']:,} of {total_params:,} parameters ({share:.0%}) are in tensors that "
          "can shrink.")
    _print_pinned(info["pinned"])
    return 0


# -- compress -----------------------------------------------------------------------------------
def _input_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The files compress reads, which its output must not replace: the model's file (or the
    ``file.py`` of ``file.py:callable``) and the calibration images."""
    files = []
    spec = Path(args.model)
    if spec.exists():
        files.append(("MODEL", spec))
    elif args.model.rpartition(":")[0].endswith(".py"):
        files.append(("MODEL", Path(args.model.rpartition(":")[0])))
    if args.calibration is not None and Path(args.calibration).is_dir():
        files += [("--calibration image", p) for p in sorted(Path(args.calibration).rglob("*"))
                  if p.suffix.lower() in IMAGE_SUFFIXES]
    elif args.calibration is not None and Path(args.calibration).is_file():
        files.append(("--calibration", Path(args.calibration)))
    if args.tokenizer is not None:
        tok = Path(args.tokenizer)
        files.append(("--tokenizer", tok / "tokenizer.json" if tok.is_dir() else tok))
    return files


def _check_token_flags(args: argparse.Namespace) -> None:
    """The flags that belong to token calibration (--input-ids with a --calibration file) or to images."""
    if args.input_ids is None:
        for flag, value in (("--tokenizer", args.tokenizer), ("--batch-size", args.batch_size)):
            if value is not None:
                raise CLIError(f"{flag} is for a language model's --calibration text (with --input-ids N,L); "
                               "--input-shape batches take N images of --input-shape")
    elif args.mean is not None or args.std is not None:
        raise CLIError("--mean/--std normalise --calibration images (with --input-shape); token ids "
                       "(--input-ids) are not normalised")
    elif args.calibration is None:
        for flag, value in (("--tokenizer", args.tokenizer), ("--batch-size", args.batch_size)):
            if value is not None:
                raise CLIError(f"{flag} goes with --calibration FILE (a .txt or .safetensors file of text); "
                               f"without it, --input-ids N,L makes random token ids in batches of N")


def compress(args: argparse.Namespace) -> int:
    """``torchinn compress``: the plain compressed network and its reports, written after the run;
    the folders it made for them are removed again if it fails."""
    _check_token_flags(args)
    if args.calibration is None and (args.mean is not None or args.std is not None):
        raise CLIError("--mean/--std normalise --calibration images; give --calibration too")
    if args.pad and not is_folder(args.output):
        raise CLIError(f"--pad pads a Hugging Face folder for transformers' from_pretrained; -o {args.output!r} is "
                       "a file: give a folder (an existing directory or a name ending with '/')")
    out, made = check_output(args.output, _input_files(args), args.force)
    with created_folders(made):
        return _compress(args, out)


def _is_transformers(model: Any) -> bool:
    """A transformers model (a PreTrainedModel with a config), as torchinn.io.save_pretrained takes."""
    return hasattr(getattr(model, "config", None), "save_pretrained") and hasattr(type(model), "_from_config")


def _calibration(args: argparse.Namespace, dtype: Any) -> tuple[list, dict, str]:
    """The calibration batches (of the model's dtype), their description for the report, and for the text."""
    import torch

    if len(args.input_shape) != 1:
        raise CLIError("--calibration feeds one image input; the model has "
                       f"{len(args.input_shape)} --input-shape")
    batches = [b.to(dtype) for b in load_images(args.calibration, args.input_shape[0], args.mean,
                                                args.std, args.max_images)]
    if not all(torch.isfinite(b).all() for b in batches):
        raise CLIError(f"--mean {args.mean} / --std {args.std} make calibration values that are not finite in "
                       f"{dtype} (too large for it); give the mean and std of the images' [0, 1] values")
    calibration = {"source": args.calibration, "images": sum(len(b) for b in batches),
                   "batches": len(batches), "scaling": "[0, 1] (8-bit / 255, 16-bit / 65535)",
                   "mean": args.mean, "std": args.std}
    return batches, calibration, f"{calibration['images']} images from {args.calibration}"


def calibration_data(args: argparse.Namespace, model: Any, dtype: Any, doing: str) -> tuple[list, Any, dict, str]:
    """(batches, example inputs, the data's description for the JSON report, and for the text) from
    --input-ids / --input-shape with or without --calibration: token text, random token ids,
    images or random inputs (the last two a smoke test, said on stderr; ``doing``: what the data is for)."""
    if args.input_ids is not None and args.calibration is not None:
        loader, calibration = load_token_batches(args.calibration, args.tokenizer, args.input_ids, args.batch_size,
                                                 embedding_size(model))
        example = loader[0]
        padded = f", {calibration['padded']:,} padded positions masked" if calibration["padded"] else ""
        described = (f"{calibration['sequences']:,} sequences of {calibration['length']} tokens from "
                     f"{args.calibration}{padded}")
    elif args.input_ids is not None:
        vocab = vocabulary(model)
        loader = [random_tokens(args.input_ids, vocab, args.seed + i) for i in range(4)]
        example = loader[0]
        described = f"random token ids below {vocab} (smoke test)"
        calibration = {"source": described, "batches": len(loader)}
        print(f"torchinn: warning: {doing} on random token ids of shape "
              f"{shapes_text([args.input_ids])}; this is only a smoke test of the pipeline", file=sys.stderr)
    elif args.calibration is not None:
        loader, calibration, described = _calibration(args, dtype)
        example = (loader[0],)
    else:
        print(f"torchinn: warning: no --calibration folder: {doing} on random normal inputs of shape "
              f"{shapes_text(args.input_shape)}; this is only a smoke test of the pipeline, not a real run",
              file=sys.stderr)
        loader = [random_inputs(args.input_shape, dtype, args.seed + i) for i in range(4)]
        example = loader[0]
        calibration = {"source": "random normal inputs (smoke test)", "batches": len(loader)}
        described = calibration["source"]
        loader = [(b,) if len(b) > 1 else b[0] for b in loader]  # batch_inputs: a tensor or ((inputs),)
    return loader, example, calibration, described


def _compress(args: argparse.Namespace, out: Path) -> int:
    import torch

    from .. import __version__
    from ..compression.pipeline import compress as compress_model
    from ..training.train import TuneConfig

    loaded = load_model(args.model, args.trust_code, convert=True)
    model = convertible(loaded, "compress", original=True)
    folder = is_folder(args.output)
    if folder and not _is_transformers(model):
        raise CLIError(f"-o {args.output!r} is a folder, and folders are for transformers models (written as a Hugging "
                       f"Face folder); {type(model).__name__} is not one: give a file name like small.pt")
    dtype = dtype_of(model)
    loader, example, calibration, described = calibration_data(args, model, dtype, "choosing sizes and tuning")
    tune = (TuneConfig(seconds=args.seconds, progress=not args.no_progress, weights_share=args.weights_share,
                       loss=args.loss) if args.seconds > 0 else False)
    with warnings.catch_warnings():
        if folder:  # its advice (save with torchinn.io.save_pretrained) is what a folder -o does
            warnings.filterwarnings("ignore", r"to_discrete\(\): .* cannot be described by its", UserWarning)
        small, report = compress_model(model, example, args.target, args.metric, calibration=loader, tune=tune,
                                       reconstruct=not args.no_reconstruct, multiple=args.multiple,
                                       graph=not folder)  # a file: the graph module, whose pickle loads without code
    if folder:
        if not _is_transformers(small):
            raise CLIError(f"the compressed {type(model).__name__} came back as a graph module (a warning above says "
                           f"why), not a transformers model, so it cannot be written to the folder -o {args.output!r}: "
                           "give a file name like small.pt")
        save_folder_checked(small, out, as_inputs(example), pad=args.pad)
        load_with = ("transformers' from_pretrained(path) (or torchinn.io.load_pretrained(path))" if args.pad
                     else "torchinn.io.load_pretrained(path)")
    else:
        save_checked(small, out, as_inputs(example))
        load_with = "torch.load(path, weights_only=False)"
    data = dataclasses.asdict(report)
    data.update(ratio=report.ratio, model=loaded.source, output=str(out),
                input_shapes=[list(s) for s in args.input_shape or []], calibration=calibration,
                input_ids=list(args.input_ids) if args.input_ids is not None else None,
                load_with=load_with, torchinn=__version__, torch=torch.__version__)
    rounded = f", sizes in multiples of {args.multiple}" if args.multiple > 1 else ""
    text = printable(f"torchinn compress {loaded.source} -> {out} (target {args.target:g} of the {args.metric}"
                     f"{rounded}, {args.seconds:g} s of tuning, calibration: {described})\n{report}\n",
                     keep_newlines=True)
    json_path, text_path = report_paths(out)
    write_text(json_path, json.dumps(data, indent=2) + "\n")
    write_text(text_path, text)
    print(text, end="")
    print(printable(f"wrote {out} (load with {load_with}), {json_path.name}, "
                    f"{text_path.name}"))
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


def bench(args: argparse.Namespace) -> int:
    """``torchinn bench``: latency and throughput of MODEL (and --compressed)."""
    import torch

    from ..sizing.metrics import measure_latency

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for role, spec in (("original", args.model), ("compressed", args.compressed)):
        if spec is None:
            continue
        loaded = load_model(spec, args.trust_code)
        inputs = random_inputs(args.input_shape, dtype_of(loaded.obj), args.seed)
        if loaded.kind == "integral":
            _check_integral_inputs(loaded, args.input_shape, inputs)
        model, kind = _runnable(loaded)
        try:
            seconds = measure_latency(model, inputs, repeats=args.repeats, warmup=args.warmup)
        except Exception as err:
            raise CLIError(f"running {spec!r} on inputs of shape {shapes_text(args.input_shape)} failed: "
                           f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        batch = args.input_shape[0][0]
        rows.append({"role": role, "model": spec, "kind": kind,
                     "params": sum(p.numel() for p in model.parameters()),
                     "latency_ms": seconds * 1e3, "items_per_s": batch / seconds})
    for r in rows:
        r["speedup"] = rows[0]["latency_ms"] / r["latency_ms"]
    info = {"rows": rows, "input_shapes": [list(s) for s in args.input_shape], "threads": torch.get_num_threads(),
            "cores": available_cores(), "cpu": _cpu_name(), "torch": torch.__version__,
            "repeats": args.repeats, "warmup": args.warmup}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(printable(f"machine: {info['cpu']}, {info['cores']} cores available; torch {info['torch']} with "
                    f"{info['threads']} thread(s); inputs {shapes_text(args.input_shape)}; "
                    f"median of {args.repeats} runs after {args.warmup} warm-up"))
    names = [printable(f"{r['model']} ({r['kind']})") for r in rows]
    width = max(len(n) for n in names)
    print(f"{'':10s} {'model':{width}s} {'params':>11s} {'latency ms':>11s} {'items/s':>10s} {'speed-up':>8s}")
    for r, name in zip(rows, names):
        print(f"{r['role']:10s} {name:{width}s} {r['params']:11,d} {r['latency_ms']:11.3f} "
              f"{r['items_per_s']:10.1f} {r['speedup']:7.2f}x")
    return 0
