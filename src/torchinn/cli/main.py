"""The ``torchinn`` command line: ``inspect``, ``compress`` and ``bench`` a network, train one for every
size (``elastic``) and deploy a size of it (``resize``), and ``demo``.

``MODEL`` is one of:

* a file written by ``torch.save(module)``: a pickle of Python objects, which can run arbitrary
  code when loaded, so it is read only with ``--trust-code`` (``torch.load(weights_only=False)``);
  without it, pickles are read with ``torch.load(weights_only=True)`` (tensors and plain
  containers only) and a whole pickled module is refused with an error that says what to do;
* a TorchScript file (``torch.jit.save``): code too (``torch.jit.load`` runs its ``__setstate__``
  methods, ``bench`` its ``forward``), so ``bench`` runs it only with ``--trust-code``; ``inspect``
  and ``compress`` need the Python module, because ``torch.export`` cannot trace a
  ``ScriptModule``, and refuse the file without opening it;
* a ``torch.export`` program (``.pt2``, ``torch.export.save``): ``bench`` only, with
  ``--trust-code`` (its loader unpickles the constants stored in it);
* an integral model saved by torchinn (``.inn``, :func:`torchinn.save`; a safetensors file, never
  unpickled): ``inspect`` and ``bench``;
* a Hugging Face model folder (``config.json`` and ``model.safetensors``; with
  ``torchinn_shapes.json``, per-layer sizes as :func:`torchinn.io.save_pretrained` writes them),
  read with :func:`torchinn.io.load_pretrained`: data only (the class comes from transformers'
  auto mappings, nothing is unpickled or run), so no ``--trust-code``; sharded weights are refused;
* ``package.module:callable`` or ``path/to/file.py:callable``: imported (the current directory
  is put on ``sys.path``) and called without arguments; it must return an ``nn.Module``
  (``module:name`` of an ``nn.Module`` instance uses the instance).

``--trust-pickle`` is the old name of ``--trust-code``. Files are written atomically
(:mod:`torchinn.io.fileio`): ``compress -o OUT`` checks OUT and its reports (``OUT.report.json``,
``OUT.report.txt``) can be written, and are none of its inputs (unless ``--force``), before the
run; a crash or kill leaves the old OUT as it was, and a failure removes the folders it made.

The commands live in :mod:`torchinn.cli.commands`, their argument types in :mod:`torchinn.cli.args`,
and the output checks in :mod:`torchinn.cli.output`. Errors print one ``torchinn: error: ...`` line
(text from files with its control characters escaped) and exit with status 1 (argument errors:
status 2); ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..elastic.budget import REFIT_SHARE
from ..elastic.choose import SIZE_CHOICES
from ..elastic.network import DEPLOY_KINDS
from ..training.distill import LOSS_CHOICES
from . import args as ca
from .commands import bench, compress, inspect
from .elastic import elastic, resize
from .output import printable
from .loading import CLIError, load_images, load_model

__all__ = ["main", "build_parser", "load_model", "load_images", "CLIError"]


def _elastic_command(args: argparse.Namespace) -> int:
    if args.seconds is None and args.steps is None:
        args.seconds = 600.0
    if args.low <= 0:
        raise CLIError(f"--low must be in (0, 1], got {args.low}")
    return elastic(args)


def _resize_command(args: argparse.Namespace) -> int:
    return resize(args)


def _demo(args: argparse.Namespace) -> int:
    """``torchinn demo``: the demo application (:mod:`torchinn_demo`), imported only when run."""
    from torchinn_demo.command import run

    return run(args)


# -- parser -------------------------------------------------------------------------------------
_MODEL_HELP = ("a torch.save(module) file (needs --trust-code), {extra}or module:callable / "
               "path/to/file.py:callable that returns an nn.Module")
_TRUST_HELP = ("allow reading MODEL files that hold code: pickles of Python objects (torch.save of a whole "
               "module; read with torch.load(weights_only=False)), TorchScript files and torch.export programs "
               "(.pt2). Loading them can run arbitrary code (unpickling; TorchScript's __setstate__ and forward): "
               "only load files you trust. Without this flag nothing is unpickled or run: pickles are read "
               "with torch.load(weights_only=True), tensors only, and TorchScript and torch.export files are "
               "refused. --trust-pickle is the old name of this flag")
_SHAPE_HELP = "shape of the (random or calibration) input batch, like 1,3,224,224; repeat for several inputs"
_SEED_HELP = f"seed of the random inputs, in [0, {ca.MAX_SEED}] (default 0)"


def _input_flags(parser: argparse.ArgumentParser) -> None:
    """--input-shape or --input-ids (compress and elastic)."""
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--input-shape", type=ca.shape, action="append", metavar="N,C,H,W",
                       help=_SHAPE_HELP + "; with --calibration, N images make one batch")
    given.add_argument("--input-ids", type=ca.token_shape, metavar="N,L",
                       help="token inputs instead (a transformers language model): batches of N sequences of L "
                            "random token ids below the vocabulary size of the model's input embedding, passed "
                            "as input_ids= with an attention_mask= of ones; a smoke test, as random --input-shape "
                            "inputs are. With --calibration FILE: real text, in batches of N sequences of L "
                            "tokens")


def _data_flags(parser: argparse.ArgumentParser, purpose: str) -> None:
    """--calibration (images or token text), --tokenizer, --batch-size, --mean, --std, --max-images."""
    parser.add_argument("--calibration", metavar="FOLDER|FILE",
                        help=f"the data {purpose}. With --input-shape: a folder of images (png/jpg, "
                             "searched recursively): each is resized to cover H x W, centre-cropped, scaled to [0, 1] "
                             "(RGB, or grey when C = 1), then normalised by --mean/--std if given. With --input-ids: "
                             "a .safetensors file of input_ids (integers, [rows, L]) and optionally attention_mask "
                             "(0/1, 0 = padding), or a .txt file with --tokenizer, cut into windows of L tokens (the "
                             "last one padded and masked); passed as input_ids= and attention_mask=. Without it, "
                             "random inputs are used: a smoke test only")
    parser.add_argument("--tokenizer", metavar="DIR",
                        help="a folder with a Hugging Face tokenizer.json (read by the tokenizers library: data, no "
                             "code) that tokenizes a .txt --calibration file")
    parser.add_argument("--batch-size", type=ca.positive, default=None, metavar="N",
                        help="sequences per batch of a --calibration text (default: the N of --input-ids)")
    parser.add_argument("--mean", type=ca.mean_values, metavar="M1,M2,M3",
                        help="per-channel mean subtracted from the [0, 1] images (ImageNet: 0.485,0.456,0.406)")
    parser.add_argument("--std", type=ca.std_values, metavar="S1,S2,S3",
                        help="per-channel std the images are divided by (ImageNet: 0.229,0.224,0.225)")
    parser.add_argument("--max-images", type=ca.positive, default=256, help="use at most this many images (default 256)")


def _trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-code", "--trust-pickle", dest="trust_code", action="store_true", help=_TRUST_HELP)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    demo.add_argument("--levels", type=ca.levels, default=None, metavar="L1,L2,...",
                      help="fractions removed: of the parameters (classification), of the residual blocks' inner "
                           "channels (superres) (default 0.25,0.5,0.75)")
    demo.add_argument("--out", default="torchinn-demo", metavar="DIR",
                      help="folder for the plots (default ./torchinn-demo)")
    demo.add_argument("--tune-seconds", type=ca.seconds, default=None,
                      help="seconds of grid tuning per level (default 15; 0.3 with --quick)")
    demo.add_argument("--epochs", type=ca.positive, default=None,
                      help="scratch story: training epochs (default 10; 1 with --quick)")
    demo.add_argument("--seed", type=ca.seed, default=0,
                      help=f"seed of everything random, in [0, {ca.MAX_SEED}] (default 0)")
    demo.add_argument("--widths", type=ca.widths, default=None, metavar="W1,W2,...",
                      help="scratch story: fractions of every hidden width to evaluate (default 1,0.75,0.5,0.25)")
    demo.add_argument("--quick", action="store_true", help="a tiny setting that runs in seconds (for tests)")
    demo.add_argument("--threads", type=ca.threads, default=None,
                      help=f"torch threads, in [1, {ca.max_threads()}] (tour default 1: faster than 2 on a busy "
                           "2-core machine); scratch: train "
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
    ins.add_argument("--input-shape", type=ca.shape, action="append", required=True, metavar="N,C,H,W",
                     help=_SHAPE_HELP)
    ins.add_argument("--members", action="store_true", help="list every tensor dimension of every group")
    ins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ins.add_argument("--seed", type=ca.seed, default=0, help=_SEED_HELP)
    _trust_flag(ins)
    ins.set_defaults(func=inspect)

    com = sub.add_parser(
        "compress", help="shrink a trained network to a budget and save the plain smaller network",
        description="Convert MODEL to an integral network, choose every group's size so the discrete "
                    "network keeps --target of the --metric, tune the integration grids on --calibration "
                    "images for --seconds, and save the plain compressed network (torch.save of a "
                    "torch.fx.GraphModule: load it with torch.load(path, weights_only=False); torchinn is "
                    "not needed to load it) with a report next to it (OUT.report.json, OUT.report.txt: after "
                    "the whole name, so -o small.pt writes small.pt.report.json).")
    com.add_argument("model", metavar="MODEL",
                     help=_MODEL_HELP.format(extra="a Hugging Face model folder (config.json and model.safetensors), "))
    _input_flags(com)
    com.add_argument("--target", type=ca.fraction, required=True,
                     help="fraction of the metric to keep, in (0, 1): 0.5 halves it")
    com.add_argument("--metric", choices=("params", "flops", "latency"), default="params",
                     help="what the target counts (default params)")
    com.add_argument("--multiple", type=ca.multiple, default=1, metavar="N",
                     help="round every group's size to a multiple of N channels, such as 8 or 16 (what fast "
                          "kernels want), or keep its full size; the sizes are chosen among those, so the target "
                          "still holds (default 1: any size)")
    _data_flags(com, "to choose sizes and tune on")
    com.add_argument("--seconds", type=ca.non_negative_seconds, default=60.0,
                     help="seconds of tuning (default 60): grid tuning, then the weights (--weights-share); 0: no "
                          "tuning (sizes and starting partitions are still chosen on the calibration data)")
    com.add_argument("--weights-share", type=ca.share, default=0.5,
                     help="share of --seconds spent tuning all the weights after grid tuning (default 0.5)")
    com.add_argument("--loss", choices=LOSS_CHOICES, default="auto",
                     help="distillation loss: kl for class logits, mse otherwise (mse-channels: each output "
                          "channel's squared error over the original's mean square there, for outputs that mix "
                          "scales); auto picks kl when every output looks like class logits ((batch, classes) or "
                          "(batch, positions, classes) with a softmax that is not nearly uniform), at a temperature "
                          "set from the network's confidence on the calibration data, else mse-channels when the "
                          "output channels' RMS spans more than 30x, else mse (default auto)")
    com.add_argument("--no-reconstruct", action="store_true",
                     help="do not try the least-squares reconstruction baseline as a starting point")
    com.add_argument("-o", "--output", required=True, metavar="OUT",
                     help="file for the compressed network (.pt); checked before the run and replaced atomically "
                          "(a crash leaves the old file as it was); never one of the inputs unless --force. A "
                          "folder (an existing directory, or a name ending with '/') for a transformers model: "
                          "written with torchinn.io.save_pretrained (config.json, model.safetensors and the "
                          "per-layer sizes in torchinn_shapes.json; load with torchinn.io.load_pretrained), built "
                          "next to it and renamed into place once it loads back; a folder that is not empty only "
                          "with --force")
    com.add_argument("--pad", action="store_true",
                     help="with a folder -o: pad every layer with zeros to the largest sizes over the layers, so "
                          "that plain transformers' from_pretrained loads it (outputs equal within float rounding; "
                          "the model is larger than without --pad)")
    com.add_argument("--force", action="store_true",
                     help="allow -o (or its reports) to replace an input: MODEL's file or a calibration image; "
                          "or a folder -o that is not empty")
    com.add_argument("--seed", type=ca.seed, default=0, help=_SEED_HELP)
    com.add_argument("--no-progress", action="store_true", help="hide the tuning progress bar")
    _trust_flag(com)
    com.set_defaults(func=compress)

    ela = sub.add_parser(
        "elastic", help="train one network that works at every size, saved as one .inn file",
        description="Convert MODEL and train it for --seconds (or --steps) on --calibration data (images, or token "
                    "text with --input-ids) so that every "
                    "size from --low of each group's channels to full works (torchinn.make_elastic: channels "
                    "ranked by importance, the sandwich rule, distillation from MODEL, the full size guarded), "
                    "then save it as one .inn file (with OUT.report.json and OUT.report.txt). Deploy a size "
                    "with: torchinn resize OUT --target 0.5 -o small.pt")
    ela.add_argument("model", metavar="MODEL", help=_MODEL_HELP.format(extra=""))
    _input_flags(ela)
    _data_flags(ela, "to train on (its last 20%% held out)")
    ela.add_argument("--seconds", type=ca.seconds, default=None,
                     help="seconds of training (default 600 when --steps is not given either)")
    ela.add_argument("--steps", type=ca.positive, default=None, help="optimizer steps of training")
    ela.add_argument("--low", type=ca.share, default=0.25,
                     help="the smallest share of every group's channels to train for, in (0, 1] (default 0.25)")
    ela.add_argument("--lr", type=float, default=None,
                     help="Adam learning rate of the shared weights (default 1e-5; 0 with --deploy scales: the "
                          "shared weights stay as converted)")
    ela.add_argument("--deploy", type=ca.kept_fractions, default=None, metavar="F1,F2,...",
                     help="fractions of the parameters that get their own sizes and their own trained state beside "
                          "the shared weights (torchinn resize --target F deploys them), like 0.25,0.5,0.75")
    ela.add_argument("--deploy-kind", choices=DEPLOY_KINDS, default="scales",
                     help="what each --deploy size trains: a scale per kept channel (default; the cheapest that "
                          "measured well), its partition's points, scales and bias corrections, or those and a "
                          "least-squares refit of the layers reading the resized channels (scales-refit: about "
                          "+0.3 dB on an image-to-image network, costs weights per size)")
    ela.add_argument("--tune-share", type=ca.tune_share, default=0.0,
                     help="with --deploy-kind scales-refit: the share of the budget spent after the refit, training "
                          "each size's scales, bias corrections and refit weights by distillation (default 0: the "
                          "refit comes last; 0.7 measured best on an image-to-image network)")
    ela.add_argument("--refit-share", type=ca.refit_share, default=REFIT_SHARE,
                     help="with --deploy-kind scales-refit: the most of the time left after the shared training "
                          f"that the per-size refits take, in (0, 1] (default {REFIT_SHARE}; the tuning gets the rest)")
    ela.add_argument("--deploy-sizes", choices=SIZE_CHOICES, default="curves",
                     help="how each --deploy size's per-group sizes are chosen: shared by the measured error curves "
                          "(default), or best: those or the Fisher greedy sizes (as compress chooses), whichever has "
                          "the lower held-out error")
    ela.add_argument("--full-tolerance", type=float, default=None,
                     help="how far from MODEL the full-size network may end up on held-out batches: share of "
                          "samples whose top class differs (class logits; default 0.001), else relative squared "
                          "error (default 1e-5)")
    ela.add_argument("--loss", choices=LOSS_CHOICES, default="auto",
                     help="distillation loss (default auto; as compress's --loss)")
    ela.add_argument("-o", "--output", required=True, metavar="OUT.inn", help="the elastic network's file (.inn)")
    ela.add_argument("--force", action="store_true", help="allow -o (or its reports) to replace an input")
    ela.add_argument("--seed", type=ca.seed, default=0, help=_SEED_HELP)
    _trust_flag(ela)
    ela.set_defaults(func=_elastic_command)

    res = sub.add_parser(
        "resize", help="one size of an elastic .inn network as a plain network",
        description="Load an elastic network (torchinn elastic -o net.inn), deploy one size of it and save the plain "
                    "network (torch.save of a torch.fx.GraphModule: load it with torch.load(path, "
                    "weights_only=False); torchinn is not needed to load it).")
    res.add_argument("model", metavar="NET.inn", help="an elastic network saved by torchinn elastic")
    res.add_argument("--target", type=ca.fraction, default=None,
                     help="fraction of the parameters to keep, in (0, 1): the sizes are shared among the groups by "
                          "the error curves measured when the network was trained")
    res.add_argument("--ratio", type=ca.fraction, default=None,
                     help="instead: this fraction of every group's channels, in (0, 1)")
    res.add_argument("--multiple", type=ca.multiple, default=1, metavar="N",
                     help="round every group's size to a multiple of N channels or its full size (default 1)")
    res.add_argument("-o", "--output", required=True, metavar="OUT", help="file for the plain network (.pt)")
    res.add_argument("--force", action="store_true", help="allow -o to replace NET.inn")
    res.set_defaults(func=_resize_command)

    ben = sub.add_parser(
        "bench", help="latency and throughput of a network, and of its compressed version",
        description="Time forward passes (no grad, eval mode) on random inputs: median latency and items "
                    "per second (batch size / latency), for MODEL and --compressed side by side.")
    ben.add_argument("model", metavar="MODEL",
                     help=_MODEL_HELP.format(extra="a TorchScript file or a torch.export (.pt2) file (both need "
                                                   "--trust-code), a torchinn .inn file (run as to_discrete() "
                                                   "at its saved sizes), "))
    ben.add_argument("--input-shape", type=ca.shape, action="append", required=True, metavar="N,C,H,W",
                     help=_SHAPE_HELP)
    ben.add_argument("--compressed", metavar="OUT", help="a compressed network (the -o of compress) to compare")
    ben.add_argument("--threads", type=ca.threads, default=None,
                     help=f"torch threads, in [1, {ca.max_threads()}] (default: torch's choice)")
    ben.add_argument("--repeats", type=ca.positive, default=20, help="timed runs; the median is shown (default 20)")
    ben.add_argument("--warmup", type=ca.positive, default=3, help="untimed runs first (default 3)")
    ben.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ben.add_argument("--seed", type=ca.seed, default=0, help=_SEED_HELP)
    _trust_flag(ben)
    ben.set_defaults(func=bench)
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
            print(f"torchinn: error: {printable(err, keep_newlines=True)}", file=sys.stderr)
        elif isinstance(err, (ValueError, TypeError)):  # the library's answer to a bad input (FormatError too)
            print(f"torchinn: error: {type(err).__name__}: {printable(err, keep_newlines=True)}", file=sys.stderr)
        else:
            print(f"torchinn: error: {type(err).__name__}: {printable(err, keep_newlines=True)}\n"
                  "(run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
