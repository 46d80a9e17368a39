"""The ``elastic`` and ``resize`` commands: train one network for every size
(:func:`torchinn.make_elastic`) and save it as one ``.inn`` file; deploy a size of it as a plain
network (``torch.save`` of the graph module, as ``compress`` writes).

    torchinn elastic MODEL --input-shape 8,3,64,64 --calibration photos/ --seconds 600 -o net.inn
    torchinn resize net.inn --target 0.5 -o small.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..elastic.network import ElasticNetwork
from ..elastic.train import make_elastic
from ..io.fileio import write_text
from ..io.format import load, save
from ..model.inputs import as_inputs
from .commands import _check_token_flags, _input_files, calibration_data
from .loading import CLIError, convertible, dtype_of, load_model
from .output import check_output, created_folders, printable, report_paths, save_checked

__all__ = ["elastic", "resize"]


def elastic(args: argparse.Namespace) -> int:
    """``torchinn elastic``: train, then write the ``.inn`` file and its reports."""
    if args.calibration is None and (args.mean is not None or args.std is not None):
        raise CLIError("--mean/--std normalise --calibration images; give --calibration too")
    if Path(args.output).suffix != ".inn":
        raise CLIError(f"-o {args.output!r}: an elastic network is saved as a torchinn file; give a name ending "
                       "with .inn")
    _check_token_flags(args)
    out, made = check_output(args.output, _input_files(args), args.force, command="elastic", plain=False)
    with created_folders(made):
        return _elastic(args, out)


def _elastic(args: argparse.Namespace, out: Path) -> int:
    loaded = load_model(args.model, args.trust_code, convert=True)
    model = convertible(loaded, "elastic", original=True)
    dtype = dtype_of(model)
    batches, example, calibration, described = calibration_data(args, model, dtype, "training")
    net, report = make_elastic(model, example, batches, low=args.low, seconds=args.seconds, steps=args.steps,
                               lr=args.lr, full_tolerance=args.full_tolerance, loss=args.loss, seed=args.seed,
                               deploy=args.deploy, deploy_kind=args.deploy_kind, tune_share=args.tune_share,
                               deploy_sizes=args.deploy_sizes, refit_share=args.refit_share)
    save(net, out)
    data = {k: v for k, v in vars(report).items() if k != "quality"}
    data["quality"] = {str(r): {"params": p, "error_before": b, "error_after": a} for r, (p, b, a) in report.quality.items()}
    data.update(model=loaded.source, output=str(out), calibration=calibration)
    text = printable(f"torchinn elastic {loaded.source} -> {out} (calibration: {described})\n{report}\n",
                     keep_newlines=True)
    json_path, text_path = report_paths(out)
    write_text(json_path, json.dumps(data, indent=2, default=str) + "\n")
    write_text(text_path, text)
    print(text, end="")
    print(printable(f"wrote {out} (deploy a size with: torchinn resize {out} --target 0.5 -o small.pt), "
                    f"{json_path.name}, {text_path.name}"))
    return 0


def _example(net: ElasticNetwork, path: str) -> Any:
    """Inputs to check the written network with, from the shapes its file records (a free
    dimension: 2); a language model converted with keyword token inputs gets token ids 0 (and an
    attention mask of ones), 8 per sequence where the length is free."""
    import torch

    shapes, names = net.imodel.input_shapes, list(net.imodel.input_names)
    if names and len(names) == len(shapes) and set(names) <= {"input_ids", "attention_mask"}:
        def tokens(shape: Any, fill: int) -> torch.Tensor:
            n, length = tuple(shape) if shape is not None and len(shape) == 2 else (None, None)
            return torch.full((n or 2, length or 8), fill, dtype=torch.long)
        return as_inputs({n: tokens(s, int(n == "attention_mask")) for n, s in zip(names, shapes)})
    if not shapes or any(s is None for s in shapes):
        raise CLIError(f"{path!r} does not record the shapes of its inputs, so the written network cannot be checked")
    dtypes = list(net.imodel.input_dtypes) + [None] * len(shapes)
    return as_inputs(tuple(torch.zeros([2 if d is None else d for d in s], dtype=t or torch.float32)
                           for s, t in zip(shapes, dtypes)))


def resize(args: argparse.Namespace) -> int:
    """``torchinn resize``: one size of an elastic (or integral) ``.inn`` file as a plain network."""
    if (args.target is None) == (args.ratio is None):
        raise CLIError("resize needs one of --target (a fraction of the parameters) or --ratio (of every group's "
                       "channels)")
    out, made = check_output(args.output, [("MODEL", Path(args.model))], args.force, command="resize")
    with created_folders(made):
        try:
            net = load(args.model)
        except FileNotFoundError:
            raise CLIError(f"MODEL {args.model!r} does not exist") from None
        if not isinstance(net, ElasticNetwork):
            raise CLIError(f"{args.model!r} is an integral model without the rankings of an elastic network; "
                           "make one with: torchinn elastic MODEL ... -o net.inn")
        if args.target is not None:
            net.resize(target=args.target, multiple=args.multiple)
        else:
            net.resize(args.ratio, multiple=args.multiple)
        small = net.to_discrete(graph=True).eval()
        save_checked(small, out, _example(net, args.model))
        params = sum(p.numel() for p in small.parameters())
        full = net.num_parameters({n: net.groups[n].max_size for n in net.elastic_groups})
        print(printable(f"torchinn resize {args.model} -> {out}: sizes {net.sizes()}, {params:,} parameters "
                        f"({params / full:.1%} of {full:,}); load with torch.load(path, weights_only=False)"))
    return 0
