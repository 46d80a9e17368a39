"""The ``torchinn demo`` command: run the stories chosen on the command line, print their results.

:func:`run` checks which options belong to which story, then runs the tour's classification and
super-resolution stories (:mod:`torchinn_demo.tour`) and the from-scratch digits story
(:mod:`torchinn_demo.digits`) with the command's settings, and prints their tables, the plots
written and the time taken. The parser that builds ``args`` is :func:`torchinn.cli.main.build_parser`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from torchinn.cli.args import available_cores
from torchinn.cli.loading import CLIError

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run ``torchinn demo`` with the parsed ``args``; returns the exit code."""
    import time

    story = args.story or "tour"
    tour_stories = {"tour": ["classification", "superres"], "all": ["classification", "superres"],
                    "classification": ["classification"], "superres": ["superres"], "scratch": []}[story]
    if not tour_stories and (args.levels is not None or args.tune_seconds is not None):
        raise CLIError("--levels and --tune-seconds belong to the classification and superres stories")
    if story not in ("scratch", "all") and (args.epochs is not None or args.widths is not None):
        raise CLIError("--epochs and --widths belong to the scratch story: add --story scratch (or --story all)")
    if tour_stories:
        _check_out(args.out)
    t0 = time.perf_counter()
    if tour_stories:
        _tour(args, tour_stories)
    if story in ("scratch", "all"):
        _scratch(args)
    if story == "all":
        print(f"\nTotal time: {time.perf_counter() - t0:.0f} s.")
    return 0


def _check_out(out: str) -> None:
    """--out, checked before the stories run: a folder, or a path where one can be made."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {out!r} is a file, not a folder; give a folder for the plots (it is created if "
                       "needed)")
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise CLIError(f"--out {out!r}: {str(parent)!r} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out!r}: no permission to write in {str(parent)!r}")


def _tour(args: argparse.Namespace, stories: list[str]) -> None:
    from . import tour

    overrides: dict = {"seed": args.seed, "progress": not args.no_progress, "out": args.out,
                       "threads": args.threads or 1}
    if args.levels is not None:
        overrides["levels"] = args.levels
    if args.tune_seconds is not None:
        overrides["tune_seconds"] = args.tune_seconds
    cfg = tour.TourConfig.quick(**overrides) if args.quick else tour.TourConfig(**overrides)
    results = tour.run(stories, cfg)
    for r in results:
        print()
        print(r.text())
    out = Path(cfg.out).resolve()
    print(f"\nPlots written to {out}{os.sep}:")
    for r in results:
        print("  " + "  ".join(p.name for p in r.plots))
    times = ", ".join(f"{r.name} {r.seconds:.0f} s" for r in results)
    print(f"Time: {sum(r.seconds for r in results):.0f} s ({times}; {cfg.threads} torch thread(s)).")


def _scratch(args: argparse.Namespace) -> None:
    from . import digits

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
        overrides.setdefault("workers", 2 if available_cores() >= 2 else 1)
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
