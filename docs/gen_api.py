"""Write docs/api.md, the API reference, from the public names' signatures and docstrings.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is out of date (tests/test_docs.py)

A small generator rather than Sphinx/mkdocs: the reference is one Markdown page that renders on
any git host and is checked for freshness by a test, with no documentation toolchain in CI.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

MODULES = [
    "torchinn.maths.quadrature", "torchinn.maths.partition", "torchinn.training.sizes", "torchinn.maths.functions",
    "torchinn.nn.layers", "torchinn.model.protocol", "torchinn.sizing.rounding", "torchinn.model.network", "torchinn.model.scratch",
    "torchinn.model.norms",
    "torchinn.model.convert", "torchinn.model.integral_model", "torchinn.model.inputs",
    "torchinn.training.train", "torchinn.training.distill", "torchinn.compression.budget", "torchinn.compression.pipeline", "torchinn.compression.baselines", "torchinn.elastic.train", "torchinn.elastic.network", "torchinn.model.tsp", "torchinn.model.permute",
    "torchinn.io.format", "torchinn.io.pretrained", "torchinn.maths.structured", "torchinn.graph",
]
OUT = Path(__file__).resolve().parent / "api.md"


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _signature(obj: object) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return sig.replace("'", "")


def _members(cls: type) -> list[tuple[str, object]]:
    out = []
    for name, value in cls.__dict__.items():
        if name.startswith("_") or not (inspect.isfunction(value) or isinstance(value, (property, classmethod))):
            continue
        if not _doc(value if not isinstance(value, classmethod) else value.__func__):
            continue
        out.append((name, value))
    return out


def render() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings by `docs/gen_api.py` (a test checks it is up to date).",
             "Workflows with runnable examples: [convert](convert.md), [from scratch](scratch.md),",
             "[grid tuning](grid-tuning.md), [budgets](budgets.md), [distributed](distributed.md).", ""]
    documented: set[int] = set()  # a name re-exported by a later module is documented once
    for modname in MODULES:
        mod = importlib.import_module(modname)
        lines += [f"## `{modname}`", "", _doc(mod).split("\n\n")[0], ""]
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if id(obj) in documented:
                continue
            documented.add(id(obj))
            if inspect.isclass(obj):
                lines += [f"### class `{name}{_signature(obj)}`", "", _doc(obj), ""]
                for mname, member in _members(obj):
                    fn = member.__func__ if isinstance(member, classmethod) else member
                    if isinstance(member, property):
                        lines += [f"- **`{mname}`** (property): {_doc(member).splitlines()[0]}"]
                    else:
                        lines += [f"- **`{mname}{_signature(fn)}`**: {_doc(fn).splitlines()[0]}"]
                lines.append("")
            elif callable(obj):
                lines += [f"### `{name}{_signature(obj)}`", "", _doc(obj), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
