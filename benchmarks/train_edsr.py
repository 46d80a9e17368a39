"""Train the EDSR x2 shipped with torchinn (src/torchinn_demo/checkpoints/edsr_x2.safetensors).

    python benchmarks/train_edsr.py                       # the shipped checkpoint (seeded)
    python benchmarks/train_edsr.py --steps 50 --out /tmp/e.safetensors   # a smoke run

Random 32x32 low-res patches (64x64 high-res) of the training photos of :mod:`torchinn_demo.sr`,
bicubic degradation, flips/rotations, L1 loss, Adam with a linear warm-up and a cosine decay.
The held-out photos are used once, at the end, to report PSNR/SSIM against bicubic upscaling
(they never choose anything). Training time, the machine and the held-out numbers are written
into the checkpoint's metadata.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from torchinn_demo import sr
from torchinn_demo.harness import load_average


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--res-scale", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=32, help="low-res patch size")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=1,
                   help="1: on a shared 2-core machine, 2 OpenMP threads were 3x slower per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "src", "torchinn",
                                                 "checkpoints", sr.CHECKPOINT))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = sr.EDSR(args.blocks, args.channels, scale=2, res_scale=args.res_scale)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"EDSR x2: {args.blocks} blocks x {args.channels} channels, res_scale {args.res_scale}, "
          f"{n_params / 1e6:.2f} M parameters; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average {load_average()[0]:.2f}")
    data = iter(sr.PatchSampler(sr.TRAIN_PHOTOS, patch=args.patch, batch_size=args.batch, seed=args.seed))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    start, running = time.perf_counter(), 0.0
    loads = [load_average()[0]]
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        lr_img, hr_img = next(data)
        loss = F.l1_loss(model(lr_img), hr_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.detach().item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = (step % args.log_every) + 1
            loads.append(load_average()[0])
            print(f"step {step + 1:5d}  L1 {running / n:.4f}  lr {lr_at(step):.2e}  "
                  f"{time.perf_counter() - start:7.1f} s  load {loads[-1]:.2f}", flush=True)
            running = 0.0
    seconds = time.perf_counter() - start
    model.eval()
    res, bic = sr.evaluate(model), sr.evaluate(None)
    print(f"trained {args.steps} steps in {seconds / 60:.1f} min (load average {min(loads):.1f}-{max(loads):.1f})")
    print("held-out   " + "  ".join(f"{k.split('/')[-1]}" for k in res if k.startswith("psnr/")))
    for name, r in (("bicubic", bic), ("EDSR", res)):
        per = "  ".join(f"{v:.2f}" for k, v in r.items() if k.startswith("psnr/"))
        print(f"{name:8s} Y-PSNR {r['psnr']:.2f} dB  Y-SSIM {r['ssim']:.4f}   per photo: {per}")
    meta = {"steps": args.steps, "batch": args.batch, "patch": args.patch, "lr": args.lr, "seed": args.seed,
            "threads": args.threads, "train_seconds": round(seconds, 1),
            "load_average": [round(min(loads), 2), round(max(loads), 2)],
            "train_photos": list(sr.TRAIN_PHOTOS), "heldout_photos": list(sr.HELDOUT_PHOTOS),
            "heldout_psnr_y": round(res["psnr"], 3), "heldout_ssim_y": round(res["ssim"], 4),
            "bicubic_psnr_y": round(bic["psnr"], 3), "bicubic_ssim_y": round(bic["ssim"], 4),
            "torch": torch.__version__, "script": "benchmarks/train_edsr.py " + " ".join(argv or sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    sr.save_edsr(model, args.out, **meta)
    print(f"wrote {os.path.abspath(args.out)} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
    return meta


if __name__ == "__main__":
    main()
