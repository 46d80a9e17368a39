"""Evaluate Torch-Pruning's DependencyGraph as a channel-group finder on the test zoo.

For every model of ``torchinn_demo.zoo`` this script

1. builds ``tp.DependencyGraph().build_dependency(model, example_inputs)`` and lists the groups
   of ``DG.get_all_groups(ignored_layers=[output layer])`` (the output layer is the last
   Conv/Linear to run; the network input is never a pruning root in Torch-Pruning), with their
   members and channel counts, and the wall time;
2. for each group, on a fresh deepcopy, prunes a few channels with Torch-Pruning itself and
   checks that the pruned model (P) runs and keeps the output shape;
3. checks that P computes the *right function*: a reference M is the unpruned model in which
   the same channels are zeroed at the output of every producer in Torch-Pruning's group
   (conv/linear/norm outputs, bare parameters). If the group is complete and every consumer
   lost exactly the matching input slice, P(x) == M(x) up to rounding (float64). Groups that
   contain a LayerNorm/GroupNorm or nn.MultiheadAttention are reported but not expected to
   match exactly: removing a channel changes the normalisation statistics or the attention
   scale, which zeroing cannot reproduce.

It also compares the number of groups with a hand count of the channel groups of each zoo
model (``EXPECTED``, derived from the architectures; see the comments).

Usage::

    pip install --no-deps torch-pruning   # not a dependency of torchinn
    python benchmarks/tp_groups.py                 # table
    python benchmarks/tp_groups.py --details       # plus every group's members
    python benchmarks/tp_groups.py --models vit_timm edsr
    python benchmarks/tp_groups.py --big           # plus timing on full-size networks
"""

from __future__ import annotations

import argparse
import copy
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from torchinn_demo.zoo import ZOO, ViT, resnet18, resnet50

try:
    import torch_pruning as tp
except ImportError:  # pragma: no cover
    sys.exit("torch-pruning is not installed: pip install --no-deps torch-pruning")

# Hand count of the channel groups of each zoo model (inputs and outputs fixed).
# nn.MultiheadAttention is counted as one unit (its q/k/v width is its embed_dim, so it lives in
# the residual-stream group); the timm attention's reshape(B, N, 3, H, hd) forces q, k and v to
# share head_dim, so qkv-out + proj-in is one group per block (structured as 3 x heads x hd) --
# and its reshape(B, N, C), with C read from the input, ties that group's *size* to the stream
# width (a size constraint between two groups, not a shared index).
EXPECTED = {
    "mlp": 2,                # 48, 24
    "vgg_bn": 5,             # convs 8, 12, 12, 20 (-> fc1 in x4 positions), fc1 28
    "resnet_basic": 8,       # 3 residual streams + 5 block-internal
    "resnet_bottleneck": 12, # stem + 3 streams + 2 x 4 block-internal
    "resnext": 10,           # stem + 3 streams + 2 x 3 block-internal (grouped, 4 blocks)
    "preact_resnet": 8,      # 3 streams + 5 block-internal
    "densenet": 12,          # stem + 2 per dense layer x 5 + transition
    "mobilenet_v2": 9,       # stem(+dw), proj 6, 2 streams, 4 hidden (+dw), last conv
    "se_net": 6,             # 2 streams (+SE gate FC), 2 conv1, 2 SE hidden
    "edsr": 5,               # stream, 3 block-internal, upsampler (x4 through PixelShuffle)
    "unet": 15,              # 2 per DoubleConv x 7 + ConvTranspose out
    "vit_mha": 3,            # stream, 2 MLP hidden
    "vit_timm": 5,           # stream, 2 x (qkv/proj, MLP hidden)
    "conv1d": 3,
    "shape_check": 2,
    "view_flatten": 3,
    "torch_flatten": 3,
    "groupnorm": 2,          # stem 8, 16 (conv1 + residual conv2)
    "channel_buffer": 2,
    "tied_weights": 1,       # fc_in out = shared in = shared out = fc_out in
}

STAT_COUPLED = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention)


class Timeout(Exception):
    pass


def _alarm(seconds: int):
    def handler(signum, frame):
        raise Timeout(f"timed out after {seconds}s")

    signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)


@dataclass
class Member:
    name: str        # qualified module/parameter name, or <OPTYPE> for Torch-Pruning's virtual ops
    role: str        # "out" (producer / norm / self-coupled) or "in" (consumer)
    n: int           # number of indices of this member touched by the group
    kind: str        # "module", "param", "op"


@dataclass
class Attempt:
    label: str                       # which index set: "naive", "1 per block of 6", ...
    idxs: list[int]
    fixup: bool = False              # a user-side fix-up was applied after pruning
    pruned_members: list[Member] = field(default_factory=list)
    stage: str = ""                  # "ok", or where it failed: "group", "prune", "forward", "shape"
    error: str = ""
    equiv_err: float | None = None   # max |P(x) - M(x)| / max |M(x)|
    stat_coupled: bool = False       # group holds LayerNorm / GroupNorm / nn.MultiheadAttention


@dataclass
class GroupReport:
    root: str
    channels: int
    members: list[Member]
    attempts: list[Attempt] = field(default_factory=list)


@dataclass
class ModelReport:
    name: str
    ignored: str = ""
    build_s: float = 0.0
    groups_s: float = 0.0
    groups: list[GroupReport] = field(default_factory=list)
    error: str = ""
    warnings: list[str] = field(default_factory=list)


def output_layer(model: nn.Module, inputs: tuple) -> nn.Module:
    """The last Conv/ConvTranspose/Linear module to run in a forward pass."""
    order: list[nn.Module] = []
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d)
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m))
             for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return order[-1]


def _names(model: nn.Module, DG) -> tuple[dict, dict]:
    mod2name = {m: n for n, m in model.named_modules()}
    par2name = {id(p): n for n, p in model.named_parameters()}
    return mod2name, par2name


def members_of(group, DG, model) -> list[Member]:
    mod2name, par2name = _names(model, DG)
    out = []
    for item in group:
        dep, idxs = item.dep, item.idxs
        target = dep.target.module
        is_out = DG.is_out_channel_pruning_fn(dep.handler)
        if isinstance(target, nn.Parameter):
            out.append(Member(par2name.get(id(target), "?param"), "out", len(idxs), "param"))
        elif target in mod2name:
            out.append(Member(mod2name[target], "out" if is_out else "in", len(idxs), "module"))
        else:
            out.append(Member(f"<{dep.target.type.name}>", "-", len(idxs), "op"))
    return out


def pick_idxs(n: int) -> list[int]:
    """A few channels to prune, spread over the range, always leaving some."""
    if n < 2:
        return []
    if n < 4:
        return [0]
    return sorted({1, n // 2, n - 1})


def aligned_strategies(n: int) -> list[tuple[str, list[int]]]:
    """Index sets that respect a block structure the group might have (conv groups, heads,
    GroupNorm groups: one channel per block; PixelShuffle: a run of r*r consecutive channels)."""
    out = []
    for s in (4, 3, 2, 8, 6):
        if n % s == 0 and n // s >= 2:
            out.append((f"1 per block of {n // s}", [b * (n // s) + 1 for b in range(s)]))
    if n >= 8:
        out.append(("run of 4", [4, 5, 6, 7]))
    return out


def _to_double(model: nn.Module, inputs: tuple) -> tuple[nn.Module, tuple]:
    model = model.double()
    inputs = tuple(t.double() if t.is_floating_point() else t for t in inputs)
    return model, inputs


def _mask_hooks(model: nn.Module, pruned: list[tuple[str, str, list[int], int | None]]):
    """Zero the pruned channels at the output of every producer member, on ``model``."""
    hooks = []
    for name, kind, idxs, pdim in pruned:
        if kind == "param":
            p = model.get_parameter(name)
            with torch.no_grad():
                p.index_fill_(pdim, torch.tensor(idxs), 0.0)
            continue
        m = model.get_submodule(name)
        dim = -1 if isinstance(m, (nn.Linear, nn.LayerNorm, nn.MultiheadAttention)) else 1
        index = torch.tensor(idxs)

        def hook(mod, inp, out, dim=dim, index=index):
            if isinstance(out, tuple):
                return (out[0].index_fill(dim, index, 0.0),) + tuple(out[1:])
            return out.index_fill(dim, index, 0.0)

        hooks.append(m.register_forward_hook(hook))
    return hooks


def build_dg(model, inputs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=True)
    return DG, [str(w.message).split("\n")[0] for w in caught]


# --------------------------------------------------------------------------- user fix-ups
# What a Torch-Pruning user is told to do for timm-style attention: after pruning, update the
# module's hard-coded head_dim and stop reshaping to the input width C. We also keep the
# original softmax scale, so that the comparison with the masked reference is exact.


def _fix_timm_attention(model: nn.Module) -> None:
    import torch.nn.functional as F

    for m in model.modules():
        if type(m).__name__ != "TimmAttention":
            continue
        scale = m.head_dim ** -0.5
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)

        def forward(x, m=m, scale=scale):
            B, N, _ = x.shape
            qkv = m.qkv(x).reshape(B, N, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            x = F.scaled_dot_product_attention(q, k, v, scale=scale)
            return m.proj(x.transpose(1, 2).reshape(B, N, -1))

        m.forward = forward


FIXUPS = {"vit_timm": _fix_timm_attention}


def _error(e: BaseException) -> str:
    msg = str(e).splitlines()[0][:160] if str(e) else ""
    return f"{type(e).__name__}: {msg}"


def attempt(name: str, root_name: str, label: str, idxs: list[int], fixup: bool) -> Attempt:
    """Prune ``idxs`` of the group rooted at ``root_name`` on a fresh copy and check it."""
    a = Attempt(label, idxs, fixup)
    torch.manual_seed(0)
    model, inputs = _to_double(*ZOO[name]())
    with torch.no_grad():
        ref_shape = tuple(model(*inputs).shape)
    P = copy.deepcopy(model)
    a.stage = "group"
    try:
        DG, _ = build_dg(P, inputs)
        root = P.get_submodule(root_name)
        sub = DG.get_pruning_group(root, DG.get_pruner_of_module(root).prune_out_channels, idxs)
        a.pruned_members = members_of(sub, DG, P)
        pdims = {id(u.parameters): u.pruning_dim for u in DG.unwrapped_parameters}
        mod2name, par2name = _names(P, DG)
        masks = []
        for item in sub:
            t = item.dep.target.module
            if isinstance(t, nn.Parameter):
                masks.append((par2name[id(t)], "param", list(item.idxs), pdims.get(id(t))))
            elif t in mod2name and DG.is_out_channel_pruning_fn(item.dep.handler):
                masks.append((mod2name[t], "module", list(item.idxs), None))
            if isinstance(t, STAT_COUPLED):
                a.stat_coupled = True
        a.stage = "prune"
        sub.prune()
        if fixup:
            FIXUPS[name](P)
        a.stage = "forward"
        with torch.no_grad():
            out = P(*inputs)
        if tuple(out.shape) != ref_shape:
            a.stage, a.error = "shape", f"output shape {tuple(out.shape)} != {ref_shape}"
            return a
        M = copy.deepcopy(model)
        _mask_hooks(M, masks)
        with torch.no_grad():
            ref = M(*inputs)
        a.equiv_err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        a.stage = "ok"
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        a.error = _error(e)
    return a


def check_group(name: str, g: GroupReport, timeout: int) -> None:
    """Try the naive index set; if pruning or running fails, try block-aligned index sets."""
    tries = [("naive", pick_idxs(g.channels))] + aligned_strategies(g.channels)
    fixups = [False] + ([True] if name in FIXUPS else [])
    _alarm(timeout)
    try:
        for fixup in fixups:
            for label, idxs in tries:
                if not idxs:
                    continue
                a = attempt(name, g.root, label, idxs, fixup)
                g.attempts.append(a)
                if a.stage == "ok":
                    return
    except Timeout as e:
        g.attempts.append(Attempt("timeout", [], stage="timeout", error=str(e)))
    finally:
        signal.alarm(0)


def run_model(name: str, timeout: int = 120) -> ModelReport:
    rep = ModelReport(name)
    torch.manual_seed(0)
    model, inputs = _to_double(*ZOO[name]())
    try:
        ignored = output_layer(model, inputs)
        rep.ignored = {m: n for n, m in model.named_modules()}[ignored]
        _alarm(timeout)
        t0 = time.perf_counter()
        DG, rep.warnings = build_dg(model, inputs)
        t1 = time.perf_counter()
        groups = list(DG.get_all_groups(ignored_layers=[ignored]))
        rep.groups_s = time.perf_counter() - t1
        rep.build_s = t1 - t0
        signal.alarm(0)
        mod2name, _ = _names(model, DG)
        for g in groups:
            root = g[0].dep.target.module
            rep.groups.append(GroupReport(mod2name[root], len(g[0].idxs), members_of(g, DG, model)))
    except Exception as e:  # noqa: BLE001
        rep.error = _error(e)
        traceback.print_exc(file=sys.stderr)
        return rep
    finally:
        signal.alarm(0)
    for g in rep.groups:
        check_group(name, g, timeout)
    return rep


TOL = 1e-9


def verdict(a: Attempt) -> str:
    if a.stage != "ok":
        return {"group": "GROUP-ERR", "prune": "PRUNE-ERR", "forward": "RUN-ERR",
                "shape": "SHAPE", "timeout": "TIMEOUT"}.get(a.stage, a.stage)
    if a.equiv_err is not None and a.equiv_err <= TOL:
        return "exact"
    return "inexact(norm/attn)" if a.stat_coupled else "WRONG"


def fmt_members(ms: list[Member], ops: bool = False) -> str:
    real = [m for m in ms if m.kind != "op" or m.name == "<OUTPUT>"]
    s = ", ".join(f"{m.name}.{m.role}[{m.n}]" if m.kind != "op" else f"{m.name}[{m.n}]" for m in real)
    n_ops = sum(1 for m in ms if m.kind == "op" and m.name != "<OUTPUT>")
    return s + (f"  (+{n_ops} virtual ops)" if n_ops else "")


def table(reports: list[ModelReport]) -> str:
    lines = [
        "| model | expected | TP groups | build s | naive prune runs | after aligned retry "
        "| exact | inexact (norm/attn) | WRONG | notes |",
        "|" + "---|" * 10,
    ]
    for r in reports:
        if r.error:
            lines.append(f"| {r.name} | {EXPECTED.get(r.name, '?')} | build failed | - | - | - | - | - | - "
                         f"| {r.error} |")
            continue
        n = len(r.groups)
        naive_ok = sum(1 for g in r.groups if g.attempts and g.attempts[0].stage == "ok")
        finals = [g.attempts[-1] for g in r.groups if g.attempts]
        any_ok = sum(1 for a in finals if a.stage == "ok")
        exact = sum(1 for a in finals if verdict(a) == "exact")
        inexact = sum(1 for a in finals if verdict(a) == "inexact(norm/attn)")
        wrong = sum(1 for a in finals if verdict(a) == "WRONG")
        notes = []
        for g in r.groups:
            first, last = g.attempts[0], g.attempts[-1]
            if first.stage != "ok":
                how = (f"ok with {last.label}" + (" + user fix-up" if last.fixup else "")
                       if last.stage == "ok" else "no index set works")
                notes.append(f"`{g.root}` ({g.channels}): {verdict(first)} `{first.error}`; {how}")
            if last.stage == "ok" and verdict(last) == "WRONG":
                notes.append(f"`{g.root}`: runs, output differs (rel err {last.equiv_err:.1e})")
        if any("Unwrapped" in w for w in r.warnings):
            notes.append("warns: unwrapped parameters")
        lines.append(
            f"| {r.name} | {EXPECTED.get(r.name, '?')} | {n} | {r.build_s:.3f} | {naive_ok}/{n} | {any_ok}/{n} "
            f"| {exact} | {inexact} | {wrong} | " + "; ".join(notes).replace("|", "/") + " |"
        )
    return "\n".join(lines)


def details(reports: list[ModelReport]) -> str:
    out = []
    for r in reports:
        out.append(f"#### {r.name}\n\nignored output layer `{r.ignored}`; build_dependency {r.build_s:.3f} s, "
                   f"get_all_groups {r.groups_s:.3f} s\n")
        if r.error:
            out.append(f"build failed: {r.error}\n")
            continue
        for w in sorted(set(r.warnings)):
            out.append(f"- warning: {w[:200]}")
        for i, g in enumerate(r.groups):
            out.append(f"- group {i}: root `{g.root}`, {g.channels} channels; members: {fmt_members(g.members)}")
            for a in g.attempts:
                res = verdict(a) + (f" (rel err {a.equiv_err:.1e})" if a.equiv_err is not None else "")
                res += f" `{a.error}`" if a.error else ""
                out.append(f"    - prune {a.label} {a.idxs}{' + fix-up' if a.fixup else ''}: {res}; "
                           f"touches {fmt_members(a.pruned_members)}")
        out.append("")
    return "\n".join(out)


BIG = {
    "resnet18@224": lambda: resnet18(),
    "resnet50@224": lambda: resnet50(),
    "vit_s16_timm@224": lambda: ViT("timm", dim=384, heads=6, hidden=1536, depth=12, patch=16,
                                    img=224, pool="avg", num_classes=1000),
}


def time_big() -> str:
    """Wall time of build_dependency + get_all_groups on full-size networks (float32, batch 1)."""
    lines = ["| network | params (M) | build_dependency s | get_all_groups s | groups |", "|---|---|---|---|---|"]
    for name, make in BIG.items():
        torch.manual_seed(0)
        model = make().eval()
        x = torch.randn(1, 3, 224, 224)
        last = output_layer(model, (x,))
        t0 = time.perf_counter()
        DG, _ = build_dg(model, (x,))
        t1 = time.perf_counter()
        n = len(list(DG.get_all_groups(ignored_layers=[last])))
        t2 = time.perf_counter()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        lines.append(f"| {name} | {params:.1f} | {t1 - t0:.2f} | {t2 - t1:.2f} | {n} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(ZOO))
    ap.add_argument("--details", action="store_true", help="list every group's members")
    ap.add_argument("--big", action="store_true", help="also time full-size ResNet-18/50, ViT-S/16")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per model build / group check")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from importlib.metadata import version

    print(f"torch {torch.__version__}, torch-pruning {version('torch-pruning')} "
          f"(module says {getattr(tp, '__version__', '?')}), {torch.get_num_threads()} thread")
    reports = []
    for name in args.models:
        t0 = time.perf_counter()
        reports.append(run_model(name, args.timeout))
        print(f"  {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(table(reports))
    if args.big:
        print()
        print(time_big())
    if args.details:
        print()
        print(details(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
