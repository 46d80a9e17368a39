"""Train the small causal LM shipped with torchinn (src/torchinn_demo/checkpoints/lm_pydoc.safetensors).

    python benchmarks/train_lm.py                          # the shipped checkpoint (seeded)
    python benchmarks/train_lm.py --steps 20 --out /tmp/lm.safetensors   # a smoke run

A Hugging Face ``LlamaForCausalLM`` (:data:`torchinn_demo.lm.CONFIG`: 4 layers, hidden 128, 4
query / 2 key-value heads, MLP 512, byte vocabulary) on the training topics of ``pydoc_data``
(:func:`torchinn_demo.lm.texts`): random windows of 128 bytes, AdamW with a linear warm-up and a
cosine decay. The held-out topics are used once, at the end, for the perplexity written into the
checkpoint's metadata with the training time and the machine. Saved in float16.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from torchinn_demo import lm
from torchinn_demo.harness import load_average


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: the shipped checkpoint's path")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, held = (lm.tokens(t) for t in lm.texts())
    model = lm.build()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / a.steps))))
    g = torch.Generator().manual_seed(a.seed)
    t0, load0 = time.perf_counter(), load_average()[0]
    model.train()
    for step in range(a.steps):
        starts = torch.randint(0, len(train) - a.length, (a.batch,), generator=g)
        x = torch.stack([train[s:s + a.length] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} (perplexity {math.exp(loss.item()):.2f}), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    model.eval()
    ppl_train = lm.perplexity(model, train, a.length, max_windows=256)
    ppl_held = lm.perplexity(model, held, a.length)
    meta = {"config": lm.CONFIG, "steps": a.steps, "batch": a.batch, "length": a.length, "lr": a.lr,
            "seed": a.seed, "train_seconds": round(seconds, 1), "threads": a.threads,
            "machine": f"{platform.processor() or platform.machine()}, load average {load0:.2f}",
            "torch": torch.__version__, "perplexity_train_256_windows": round(ppl_train, 4),
            "perplexity_heldout": round(ppl_held, 4),
            "params": sum(p.numel() for p in model.parameters())}
    print(json.dumps(meta, indent=1))
    from importlib import resources

    from safetensors.torch import save_file

    out = a.out or str(resources.files("torchinn_demo") / "checkpoints" / lm.CHECKPOINT)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out, metadata={k: json.dumps(v) for k, v in meta.items()})
    print(f"saved {out}")
    return meta


if __name__ == "__main__":
    main()
