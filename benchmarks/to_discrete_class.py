"""to_discrete() on every zoo model at four ratios: does the user's class come back, how close is
it to the graph module, and what does it cost (docs/decisions/2-user-class-back.md).

    PYTHONPATH=src python benchmarks/to_discrete_class.py
"""

from __future__ import annotations

import time
import warnings

import torch

import torchinn as inn
from torchinn.discrete.rebuild import relative_error
from torchinn_demo.zoo import ZOO


def main() -> None:
    torch.set_num_threads(1)
    print("| model | folded norms | real tensor elements in the template | ratio: class or graph, error, "
          "ms copy / ms graph |")
    print("|---|---:|---:|---|")
    for name in sorted(ZOO):
        torch.manual_seed(0)
        model, x = ZOO[name]()
        imodel = inn.convert(model, x)
        template = imodel._original.module
        real = sum(t.numel() for t in list(template.parameters()) + list(template.buffers()) if not t.is_meta)
        cells = []
        for ratio in (1.0, 0.75, 0.5, 0.25):
            imodel.resize(ratio)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                small = imodel.to_discrete()
                t1 = time.perf_counter()
            graph = imodel.to_discrete(graph=True)
            t2 = time.perf_counter()
            with torch.no_grad():
                err = relative_error(graph(*x), small(*x))
            kind = "class" if type(small) is type(model) and not caught else "GRAPH"
            cells.append(f"{ratio}: {kind} {err:.0e} {1e3 * (t1 - t0):.0f}/{1e3 * (t2 - t1):.0f}")
        print(f"| {name} | {imodel.report['folded_batch_norms']} | {real} | {'; '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
