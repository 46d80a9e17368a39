"""Every bad input in docs/bad-inputs.md, and the answer it gets (the page and this list agree)."""

from __future__ import annotations

import argparse
import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.compression.budget import choose_sizes
from torchinn.io.fileio import UnsafeTargetError
from torchinn.cli.loading import CLIError
from torchinn.training.train import TuneConfig, tune_grid
from torchinn_demo.zoo import ZOO

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


X = torch.randn(2, 3, 8, 8)


def converted() -> inn.IntegralModel:
    return inn.convert(small(), (X,), inn.ConvertConfig(permute=False))


def nan_weights() -> None:
    m = small()
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = float("nan")
    inn.convert(m, (X,))


def meta_device() -> None:
    with torch.device("meta"):
        m = small()
    inn.convert(m, (X,))


def wrong_input_shape() -> None:
    converted()(torch.randn(2, 4, 8, 8))


def broken_example_inputs() -> None:
    inn.convert(small(), (torch.randn(2, 5, 8, 8),))


def data_dependent_forward() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            if y.sum() > 0:  # depends on the values: not traceable
                y = y * 2
            return self.b(y)

    inn.convert(Branchy(), (torch.randn(2, 4),))


def unsupported_op() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.special.i0(self.a(x)))

    inn.convert(Odd(), (torch.randn(2, 4),))


def size_zero() -> None:
    converted().resize({"0.weight:0": 0})


def size_too_big() -> None:
    converted().resize({"0.weight:0": 9})


def ratio_out_of_range() -> None:
    converted().resize(0.0)


def unknown_group() -> None:
    converted().resize({"0.wieght:0": 4})


def target_out_of_range() -> None:
    choose_sizes(converted(), 1.5)


def unreachable_latency_target() -> None:
    from torchinn.compression.budget import choose_sizes

    m = converted()
    choose_sizes(m, 0.01, "latency", example_inputs=(X,), method="uniform")


def empty_calibration() -> None:
    m = converted()
    m.resize(0.5)
    tune_grid(m, [], tune=TuneConfig(steps=1, seconds=None, progress=False))


def not_converted() -> None:
    tune_grid(small(), [X], tune=TuneConfig(steps=1, seconds=None, progress=False))


def even_simpson() -> None:
    inn.convert(small(), (X,), inn.ConvertConfig(quadrature="simpson"))


def not_a_module() -> None:
    inn.convert(lambda x: x, (X,))


def empty_model() -> None:
    inn.convert(nn.Sequential(), (X,))


def layer_bad_size() -> None:
    inn.maths.UniformPartition(8).resize(9)


def partition_not_increasing() -> None:
    inn.maths.FixedPartition([0.0, 0.5, 0.4, 1.0])


def partition_outside() -> None:
    inn.maths.FixedPartition([0.0, 0.5, 1.2])


def simpson_even_points() -> None:
    inn.maths.get_quadrature("simpson").weights(torch.linspace(0, 1, 4))


def device_mismatch() -> None:
    layer = inn.nn.IntegralLinear(4, inn.maths.UniformPartition(8))
    layer(torch.randn(2, 4, device="meta"))


def load_foreign_file(tmp: Path) -> None:
    path = tmp / "x.inn"
    path.write_bytes(b"hello")
    inn.load(path)


def _crafted(tmp: Path, edit: Callable[[dict, dict], None], sign: bool = True) -> None:
    """Save the small model, change its metadata/tensors with ``edit``, (re-sign,) load it."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from torchinn.io.format import checksum

    path = tmp / "x.inn"
    inn.save(converted(), path)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    tensors = load_file(path)
    edit(meta, tensors)
    if sign:  # as a crafted file would be; unsigned, the saved checksum stays
        meta["sha256"] = checksum({k: v for k, v in meta.items() if k != "sha256"}, tensors)
    save_file(tensors, str(path), metadata={"torchinn": json.dumps(meta)})
    inn.load(path)


def load_eval_target(tmp: Path) -> None:
    evil = {"op": "call_function", "name": "evil", "target": "py::builtins.eval",
            "args": {"t": ["print('hi')"]}, "kwargs": {"d": {}}}
    _crafted(tmp, lambda meta, tensors: meta["graph"].insert(-1, evil))


def load_size_bomb(tmp: Path) -> None:
    _crafted(tmp, lambda meta, tensors: meta["partitions"]["0.weight:0"].update(max_size=1_000_000_000))


def load_edited_file(tmp: Path) -> None:
    _crafted(tmp, lambda meta, tensors: meta["partitions"]["0.weight:0"].update(size=5), sign=False)


def load_nan_tensor(tmp: Path) -> None:
    def edit(meta: dict, tensors: dict) -> None:
        tensors["f/0.weight/0"].view(-1)[0] = float("nan")
    _crafted(tmp, edit)


def _node(name: str, target: str, *args) -> dict:
    return {"op": "call_function", "name": name, "target": target, "args": {"t": list(args)}, "kwargs": {"d": {}}}


def load_op_off_the_list(tmp: Path) -> None:
    def edit(meta: dict, tensors: dict) -> None:
        x = {"n": meta["graph"][5]["name"]}
        meta["graph"].insert(-1, _node("sp", "aten::_sparse_coo_tensor_with_dims_and_tensors.default", 1, 0,
                                       {"l": [4]}, x, x))
    _crafted(tmp, edit)


def load_spec_outside_schema(tmp: Path) -> None:
    import json

    leaf = {"type": None, "context": None, "children_spec": []}
    spec = [1, {"type": "collections.defaultdict", "context": json.dumps(
        {"default_factory_module": "os", "default_factory_name": "getcwd", "dict_context": ["a"]}),
        "children_spec": [leaf]}]
    _crafted(tmp, lambda meta, tensors: meta.update(out_spec=json.dumps(spec)))


def load_guard_past_bounds(tmp: Path) -> None:
    guard = {"expr": ["pow", 10, ["pow", 10, 11]], "text": "crafted", "kind": "shape"}
    _crafted(tmp, lambda meta, tensors: meta.update(input_guards=[guard]))


def load_creation_too_big(tmp: Path) -> None:
    _crafted(tmp, lambda meta, tensors: meta["graph"].insert(-1, _node("big", "aten::zeros.default",
                                                                        {"l": [65536, 65536]})))


def load_write_to_input(tmp: Path) -> None:
    _crafted(tmp, lambda meta, tensors: meta["graph"].insert(-1, _node("w", "aten::relu_.default",
                                                                        {"n": meta["graph"][5]["name"]})))


def load_fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "x.inn")
    inn.load(tmp / "x.inn")


def save_over_symlink(tmp: Path) -> None:
    (tmp / "real.inn").write_bytes(b"keep")
    (tmp / "x.inn").symlink_to(tmp / "real.inn")
    inn.save(converted(), tmp / "x.inn")


def save_over_read_only(tmp: Path) -> None:
    (tmp / "x.inn").write_bytes(b"keep")
    (tmp / "x.inn").chmod(0o444)
    inn.save(converted(), tmp / "x.inn")


def cli_pickled_module(tmp: Path) -> None:
    from torchinn.cli.loading import load_model

    torch.save(small(), tmp / "x.pt")
    load_model(str(tmp / "x.pt"))


def cli_pickled_inn(tmp: Path) -> None:
    from torchinn.cli.loading import load_model

    torch.save(small(), tmp / "x.inn")
    load_model(str(tmp / "x.inn"), trust_code=True)


def cli_unwritable_output(tmp: Path) -> None:
    from torchinn.cli.output import check_output

    os.mkfifo(tmp / "out.pt")
    check_output(str(tmp / "out.pt"))
class _SizeBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x, t=1.0):
        h = self.a(x) * t
        return self.b(h * 0.5 if x.shape[0] > 4 else h)


def batch_across_a_branch() -> None:
    inn.convert(_SizeBranch().eval(), (torch.randn(8, 4),), inn.ConvertConfig(permute=False))(torch.randn(2, 4))


def other_scalar_input() -> None:
    x = torch.randn(8, 4)
    inn.convert(_SizeBranch().eval(), (x, 2.0), inn.ConvertConfig(permute=False))(x, 3.0)


def bool_channel_mask() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)
            self.register_buffer("mask", torch.arange(8) % 2 == 0)

        def forward(self, x):
            return self.b(self.a(x).masked_fill(self.mask, 0.0))

    inn.convert(Masked().eval(), (torch.randn(2, 4),))


def negative_running_var() -> None:
    m = small()
    with torch.no_grad():
        m[1].running_var[3] = -1.0
    inn.convert(m, (X,))


def resize_one_bad_entry() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    m = inn.convert(net, (torch.randn(2, 4),), inn.ConvertConfig(permute=False))
    try:
        m.resize({"0.weight:0": 4, "2.weight:0": 0})
    finally:
        if m.sizes() != {"0.weight:0": 8, "2.weight:0": 6}:
            raise AssertionError(f"a bad entry left other groups resized: {m.sizes()}")



def multiple_zero() -> None:
    converted().resize(0.5, multiple=0)


def multiple_bool() -> None:
    choose_sizes(converted(), 0.5, multiple=True)


def multiple_unknown_group() -> None:
    choose_sizes(converted(), 0.5, multiple={"0.wieght:0": 8})


def unknown_tsp_solver() -> None:
    inn.ConvertConfig(tsp_solver="2opt")


def second_op_handler() -> None:
    @inn.register_op(torch.ops.aten.linear)  # a built-in handler exists: needs override=True
    def mine(an, node):
        return None


def register_a_non_op() -> None:
    inn.register_op("relu")


class Cache:  # an output object that pytree cannot open (like transformers' DynamicCache)
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def unknown_output_object() -> None:
    class WithCache(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> tuple:
            y = self.a(x)
            return y, Cache(y)

    inn.convert(WithCache(), (torch.randn(2, 4),))


def keyword_inputs_twice() -> None:
    inn.convert(small(), {"input": X}, kwargs={"input": X})


def example_inputs_of_a_wrong_type() -> None:
    inn.convert(small(), [X])


def recalibrate_folded() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    inn.recalibrate_bn(inn.convert(net, (torch.randn(2, 3, 6, 6),)), [torch.randn(2, 3, 6, 6)])


def recalibrate_no_batches() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    inn.recalibrate_bn(inn.from_scratch(net, torch.randn(2, 3, 6, 6)), [])


def from_scratch_folding() -> None:
    inn.from_scratch(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.randn(2, 3, 6, 6),
                     fuse_batch_norm=True)


def sandwich_negative_count() -> None:
    next(inn.RandomSizes(converted(), seed=0).sandwich(-1))


def sandwich_unknown_distillation() -> None:
    m = converted()
    inn.sandwich_backward(m, inn.RandomSizes(m, seed=0), X, lambda out: out.sum(), distill="l2")


def from_scratch_untied_partitions() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = inn.nn.IntegralLinear(4, inn.maths.UniformPartition(6))
            self.b = inn.nn.IntegralLinear(4, inn.maths.UniformPartition(6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.a(x) + self.b(x)).sum(1)

    inn.from_scratch(Two(), torch.randn(2, 4))


def _scripted(tmp: Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # torch.jit.script is deprecated; the files still exist
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(small()).save(str(tmp / "x.ts"))
    return tmp / "x.ts"


def cli_torchscript(tmp: Path) -> None:
    from torchinn.cli.loading import load_model

    load_model(str(_scripted(tmp)))


def cli_std_not_finite() -> None:
    from torchinn.cli.args import std_values

    std_values("inf")


def cli_input_ids_not_two_numbers() -> None:
    from torchinn.cli.args import token_shape

    token_shape("4,128,2")


def cli_input_ids_without_embedding() -> None:
    from torchinn.cli.loading import vocabulary

    vocabulary(small())


def cli_threads_too_many() -> None:
    from torchinn.cli.args import threads

    threads("100000")


def cli_seed_too_big() -> None:
    from torchinn.cli.args import seed

    seed("99999999999999999999999")


def cli_output_is_an_input(tmp: Path) -> None:
    from torchinn.cli.output import check_output

    torch.save(small(), tmp / "in.pt")
    check_output(str(tmp / "in.pt"), [("MODEL", tmp / "in.pt")])


def cli_inn_wrong_shape(tmp: Path) -> None:
    from torchinn.cli.main import main

    inn.save(converted(), tmp / "x.inn")
    main(["-v", "inspect", str(tmp / "x.inn"), "--input-shape", "2,4,8,8"])


def cli_demo_out_is_a_file(tmp: Path) -> None:
    from torchinn.cli.main import main

    (tmp / "afile").write_text("")
    main(["-v", "demo", "--out", str(tmp / "afile"), "--quick"])


def cli_calibration_overflows(tmp: Path) -> None:
    import numpy as np
    from PIL import Image

    from torchinn.cli.main import main

    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp / f"{i}.png")
    torch.save(small(), tmp / "x.pt")
    main(["-v", "compress", str(tmp / "x.pt"), "--input-shape", "2,3,8,8", "--target", "0.5", "--calibration",
          str(tmp), "--std", "1e-45", "-o", str(tmp / "out" / "o.pt"), "--trust-code"])


def keep_discrete_unknown_name() -> None:  # issue 20: a typo kept nothing, silently
    inn.convert(small(), (X,), inn.ConvertConfig(keep_discrete=["conv2"], permute=False))


def keep_discrete_typo() -> None:
    inn.convert(small(), (X,), inn.ConvertConfig(keep_discrete=["0.wieght"], permute=False))


def choose_sizes_loss_typo() -> None:  # issue 20: behaved as "mse"
    choose_sizes(converted(), 0.5, loss="klx")


def choose_sizes_min_ratio_nan() -> None:  # issue 20: a raw "cannot convert float NaN to integer"
    choose_sizes(converted(), 0.5, min_ratio=float("nan"))


def compress_metric_typo_with_sizes() -> None:  # given sizes skipped every check of metric
    inn.compress(small(), (X,), metric="parmas", sizes={"0.weight:0": 4}, tune=False)


def tune_seconds_inf() -> None:
    TuneConfig(seconds=float("inf"))


def tune_decay_nan() -> None:
    TuneConfig(decay=float("nan"))


def hf_fewer_heads_save_pretrained(tmp_path: Path) -> None:  # issue 20: wrote a config that did not load
    tf = pytest.importorskip("transformers")
    import warnings

    cfg = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = tf.BertModel(cfg).eval()
    imodel = inn.convert(model, {"input_ids": torch.randint(0, 64, (2, 6))}, inn.ConvertConfig(permute=False))
    imodel.resize({g: 2 if s == 4 else s for g, s in imodel.sizes().items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the same message, at to_discrete()
        small = imodel.to_discrete()
    small.save_pretrained(tmp_path / "bert")


def _hf_folder(tmp_path: Path, file: str, change: Callable) -> None:  # issue 23: a tampered torchinn folder
    import json

    from safetensors.torch import load_file, save_file

    tf = pytest.importorskip("transformers")
    cfg = tf.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    torch.manual_seed(0)
    folder = tmp_path / "llama"
    inn.io.save_pretrained(tf.LlamaForCausalLM(cfg), folder)
    if file.endswith(".json"):
        data = json.loads((folder / file).read_text())
        change(data)
        (folder / file).write_text(json.dumps(data))
    else:
        tensors = load_file(folder / file)
        change(tensors)
        save_file(tensors, folder / file)
    inn.io.load_pretrained(folder)


def hf_folder_unknown_attribute(tmp_path: Path) -> None:
    _hf_folder(tmp_path, "torchinn_shapes.json",
               lambda d: d["attributes"].update({"model.layers.0.self_attn": {"training": 0}}))


def hf_folder_non_integer_size(tmp_path: Path) -> None:
    entry = {"type": "torch.nn.modules.linear.Linear", "args": {"in_features": 16, "out_features": 20.5, "bias": False}}
    _hf_folder(tmp_path, "torchinn_shapes.json", lambda d: d["modules"].update({"model.layers.0.mlp.up_proj": entry}))


def hf_folder_not_a_model_class(tmp_path: Path) -> None:
    _hf_folder(tmp_path, "config.json", lambda d: d.update(architectures=["os.system"]))


def hf_folder_missing_tensor(tmp_path: Path) -> None:
    _hf_folder(tmp_path, "model.safetensors", lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))


def hf_pad_gpt2_fewer_heads(tmp_path: Path) -> None:
    tf = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=32, n_embd=32, n_layer=1, n_head=4, n_positions=16)).eval()
    attn = model.transformer.h[0].attn  # 2 heads of 8 channels, as to_discrete() leaves them
    attn.c_attn, attn.c_proj, attn.num_heads, attn.split_size = Conv1D(48, 32), Conv1D(32, 16), 2, 16
    inn.io.save_pretrained(model, tmp_path / "gpt2", pad=True)


# (what, how it is triggered, the exception, a regex of its message)
CASES: list[tuple[str, Callable, type[BaseException], str]] = [
    ("NaN or Inf weights", nan_weights, ValueError, r"'0\.weight' has 1 NaN/Inf values"),
    ("empty model (no parameters)", empty_model, ValueError, r"has no parameters: nothing to convert"),
    ("model on the meta device", meta_device, ValueError, r"is on the meta device: load real weights"),
    ("not an nn.Module", not_a_module, TypeError, r"convert\(\) needs an nn\.Module"),
    ("a model that returns an object torch.export cannot output (a key/value cache)", unknown_output_object,
     RuntimeError, r"Found .*Cache.* in output.*\n.*convert with use_cache=False"),
    ("keyword inputs given twice (a dict and kwargs=)", keyword_inputs_twice, TypeError,
     r"pass keyword inputs either as example_inputs \(a dict\) or as kwargs, not both \(got keys \['input'\]"),
    ("example inputs that are a list", example_inputs_of_a_wrong_type, TypeError,
     r"example_inputs must be a tuple of inputs, a tensor or a dict of keyword inputs, got list"),
    ("example inputs the model itself rejects", broken_example_inputs, RuntimeError,
     r"Sequential fails on the example inputs \(RuntimeError: .*expected input\[2, 5, 8, 8\] to have 3 channels"),
    ("forward with Python control flow on tensor values", data_dependent_forward, RuntimeError,
     r"torch\.export could not trace Branchy"),
    ("an op on channels torchinn cannot follow", unsupported_op, inn.UnsupportedOpError,
     r"(?s)aten\.special_i0\.default at node 'special_i0'.*keep_discrete"),
    ("inputs of the wrong shape", wrong_input_shape, ValueError,
     r"input 0 has shape \(2, 4, 8, 8\), but the network was converted for inputs of shape \(any, 3, any, any\)"),
    ("a group size of 0", size_zero, ValueError, r"has 8 channels; size must be in \[1, 8\], got 0"),
    ("a group size above its channels", size_too_big, ValueError, r"size must be in \[1, 8\], got 9"),
    ("a ratio outside (0, 1]", ratio_out_of_range, ValueError, r"a ratio must be in \(0, 1\], got 0\.0"),
    ("an unknown group name", unknown_group, KeyError, r"no group named '0\.wieght:0'; did you mean \['0\.weight:0'\]"),
    ("a budget target outside (0, 1)", target_out_of_range, ValueError, r"must be in \(0, 1\), got 1\.5"),
    ("an empty calibration loader", empty_calibration, ValueError, r"the calibration loader is empty"),
    ("a budget the network cannot reach", unreachable_latency_target, ValueError,
     r"cannot reach the target: .* the network still has [0-9.e+]+ FLOPs > [0-9.e+]+ FLOPs \(latency is budgeted "
     r"through the FLOPs it is measured to follow\)"),
    ("tuning a model that was not converted", not_converted, TypeError, r"expected an IntegralModel"),
    ("Simpson's rule on groups of even size", even_simpson, ValueError, r"Simpson's rule needs an odd number"),
    ("a partition size above its maximum", layer_bad_size, ValueError,
     r"has 8 channels; size must be in \[1, 8\], got 9"),
    ("a partition that is not increasing", partition_not_increasing, ValueError,
     r"strictly increasing, but point 2 \(0\.4\) <= point 1 \(0\.5\)"),
    ("a partition that leaves [0, 1]", partition_outside, ValueError, r"leaves \[0, 1\]: its points span \[0, 1\.2\]"),
    ("Simpson's rule on an even point count", simpson_even_points, ValueError, r"odd number of points .* got 4"),
    ("input and weights on different devices", device_mismatch, ValueError, r"input is on meta but the layer's weights are on cpu"),
    ("loading a file that is not a torchinn model", load_foreign_file, inn.FormatError, r"not a torchinn model file"),
    ("a .inn file whose graph calls Python code", load_eval_target, inn.FormatError,
     r"graph node 'evil' calls 'py::builtins\.eval', which a torchinn file may not call"),
    ("a .inn file that declares more channels than it stores", load_size_bomb, inn.FormatError,
     r"partitions\['0\.weight:0'\]\.max_size must be in \[1, \d+\] \(sizes are bounded by the elements the file "
     r"stores\), got 1000000000"),
    ("a .inn file changed after it was saved", load_edited_file, inn.FormatError,
     r"checksum mismatch: the metadata or tensors changed after the file was saved"),
    ("a .inn file with NaN/Inf tensors", load_nan_tensor, inn.FormatError,
     r"tensor 'f/0\.weight/0' has 1 NaN/Inf values; a torchinn model has finite tensors"),
    ("saving over a symbolic link, FIFO or device node", save_over_symlink, UnsafeTargetError,
     r"refusing to replace '.*x\.inn': it is a symbolic link \(to '.*real\.inn'\), not a regular file.*"
     r"replace_special=True"),
    ("saving over a read-only file", save_over_read_only, PermissionError,
     r"refusing to replace '.*x\.inn': it is read-only \(mode -r--r--r--\)"),
    ("a pickled module given to the command line without --trust-code", cli_pickled_module, CLIError,
     r"is a pickle of Python objects .* can run arbitrary code .*\(it needs the Python object "
     r"torch\.nn\.modules\.container\.Sequential\): pass --trust-code if you trust its source"),
    ("a .inn file that is not a safetensors file, given to the command line", cli_pickled_inn, CLIError,
     r"is not a torchinn model file .*torchinn never unpickles a \.inn file"),
    ("compress -o to a special or read-only file, or a folder that cannot be created", cli_unwritable_output,
     CLIError, r"-o '.*out\.pt': refusing to replace '.*out\.pt': it is a FIFO \(named pipe\)"),
    ("a batch size on the other side of a size branch taken when converting", batch_across_a_branch, ValueError,
     r"input 0 \('x'\) has size 2 in dimension 0, .*only valid for x\.shape\[0\] in \[5, inf\)"),
    ("a Python scalar input other than the one converted with", other_scalar_input, ValueError,
     r"input 1 \('t'\) is 3\.0, but the network was converted with 2\.0 there"),
    ("a bool mask along channels", bool_channel_mask, TypeError,
     r"tensor 'mask' of dtype torch\.bool is used along the channels of group\(s\) \['a\.weight:0'\]"),
    ("a batch norm with negative running_var", negative_running_var, ValueError,
     r"batch norm '1' has 1 negative running_var value\(s\) \(min -1\)"),
    ("a resize mapping with one bad entry", resize_one_bad_entry, ValueError,
     r"group '2\.weight:0' has 6 channels; size must be in \[1, 6\], got 0"),
    ("a multiple of 0 or below", multiple_zero, ValueError,
     r"multiple must be an int >= 1 \(channel counts are rounded to multiples of it; 1: no rounding\), got 0"),
    ("a multiple that is a bool or not an int", multiple_bool, ValueError, r"multiple must be an int >= 1 .*got True"),
    ("a multiple for an unknown group", multiple_unknown_group, ValueError,
     r"multiple: no group named '0\.wieght:0'; did you mean \['0\.weight:0'\]"),
    ("an unknown TSP solver", unknown_tsp_solver, ValueError,
     r"tsp_solver must be one of the registered TSP solvers \['fast_tsp', 'local'\], got '2opt'"),
    ("a second handler for an op without override=True", second_op_handler, ValueError,
     r"op aten\.linear already has a handler \(torchinn\.graph\.ops\.linear\._linear\); pass override=True"),
    ("register_op on something that is not an op", register_a_non_op, TypeError,
     r"register_op needs ops such as torch\.ops\.aten\.relu .*got 'relu' of type str"),
    ("recalibrate_bn on a network whose batch norms were folded", recalibrate_folded, ValueError,
     r"the integral model has no batch norm with running statistics \(converted with "
     r"ConvertConfig\(fuse_batch_norm=True\)"),
    ("recalibrate_bn with no batches", recalibrate_no_batches, ValueError,
     r"calibration gave no batch: recalibrate_bn needs at least 1"),
    ("from_scratch asked to permute or fold batch norms", from_scratch_folding, TypeError,
     r"from_scratch\(\) got an unexpected keyword argument 'fuse_batch_norm'"),
    ("from_scratch of Integral* layers whose channels the graph ties, on different partitions",
     from_scratch_untied_partitions, ValueError,
     r"layers 'a' and 'b' have different partitions, but their channels must stay equal \(group "),
    ("a sandwich step with a negative or non-int number of random sizes", sandwich_negative_count, ValueError,
     r"random is the number of random sizes per sandwich step, an int >= 0, got -1"),
    ("sandwich_backward with an unknown distillation", sandwich_unknown_distillation, ValueError,
     r"distill must be None, 'auto', 'mse' or 'kl', got 'l2'"),
    ("a TorchScript file given to the command line without --trust-code", cli_torchscript, CLIError,
     r"MODEL '.*x\.ts' is a TorchScript file, which is code: torch\.jit\.load runs its __setstate__ methods .*"
     r"pass --trust-code if you trust its source"),
    ("a --input-ids that is not N,L", cli_input_ids_not_two_numbers, argparse.ArgumentTypeError,
     r"^--input-ids is two positive integers N,L \(N sequences of L tokens\), like 4,128; got '4,128,2'$"),
    ("--input-ids for a model without a token embedding", cli_input_ids_without_embedding, CLIError,
     r"^--input-ids makes token ids below the vocabulary size, read from the model's get_input_embeddings\(\) "
     r"\(an nn\.Embedding, as transformers models have\); Sequential has none: give --input-shape for float inputs$"),
    ("a --std or --mean that is not finite, or a --std <= 0", cli_std_not_finite, argparse.ArgumentTypeError,
     r"every std must be a finite number > 0 \(the images are divided by it\), got 'inf'"),
    ("--threads outside [1, 4 x the logical CPUs]", cli_threads_too_many, argparse.ArgumentTypeError,
     r"the number of threads must be in \[1, \d+\] \(4 x the \d+ logical CPUs of this machine\), got 100000"),
    ("--seed outside [0, 2**32 - 1]", cli_seed_too_big, argparse.ArgumentTypeError,
     r"a seed must be in \[0, 4294967295\], got 99999999999999999999999"),
    ("compress -o (or its reports) naming one of its inputs", cli_output_is_an_input, CLIError,
     r"-o '.*in\.pt': '.*in\.pt' is the same file as MODEL '.*in\.pt', which compress would replace with its "
     r"output; write elsewhere, or pass --force to replace it"),
    ("inspect or bench of a .inn file on inputs of the wrong shape", cli_inn_wrong_shape, CLIError,
     r"'.*x\.inn' cannot run on --input-shape 2x4x8x8: input 0 has shape \(2, 4, 8, 8\), but the network was "
     r"converted for inputs of shape \(any, 3, any, any\)"),
    ("demo --out that is a file", cli_demo_out_is_a_file, CLIError,
     r"--out '.*afile' is a file, not a folder; give a folder for the plots"),
    ("calibration images that --mean/--std make too large for the model's dtype", cli_calibration_overflows,
     CLIError, r"--mean None / --std \(1e-45,\) make calibration values that are not finite in torch\.float32"),
    ("a keep_discrete name the model does not have", keep_discrete_unknown_name, ValueError,
     r"ConvertConfig\.keep_discrete: 'conv2' is not the name of a module, parameter or buffer of Sequential; "
     r"its names include \['0', '0\.bias', '0\.weight', '1', '1\.bias'"),
    ("a keep_discrete name with a typo", keep_discrete_typo, ValueError,
     r"'0\.wieght' is not the name of a module, parameter or buffer of Sequential; did you mean \['0\.weight'"),
    ("a loss, metric or method name with a typo", choose_sizes_loss_typo, ValueError,
     r"^loss must be 'auto', 'mse', 'mse-channels' or 'kl', got 'klx'; did you mean 'kl'\?$"),
    ("a metric with a typo, with sizes given to compress", compress_metric_typo_with_sizes, ValueError,
     r"^metric must be 'params', 'flops' or 'latency', got 'parmas'; did you mean 'params'\?$"),
    ("a NaN or infinite float option", choose_sizes_min_ratio_nan, ValueError,
     r"^min_ratio \(the smallest share of a group's channels\) must be a finite number in \(0, 1\], got nan$"),
    ("an infinite time budget", tune_seconds_inf, ValueError, r"^seconds must be a finite number > 0, got inf$"),
    ("a NaN learning-rate decay", tune_decay_nan, ValueError,
     r"^decay \(the factor of the learning rates\) must be a finite number in \(0, 1\], got nan$"),
    ("save_pretrained of a Hugging Face model whose config cannot say its new sizes", hf_fewer_heads_save_pretrained,
     ValueError, r"refusing to save_pretrained: BertModel at these sizes cannot be described by its BertConfig: its "
     r"config has no head size field: the head size is derived as hidden_size / num_attention_heads \(32 / 4\)"),
    ("a torchinn Hugging Face folder whose shapes file sets an attribute off the allow-list",
     hf_folder_unknown_attribute, inn.FormatError,
     r"torchinn_shapes\.json: attributes\['model\.layers\.0\.self_attn'\]: 'training' is not an attribute a shapes "
     r"file may set \(allowed: the integer attributes \["),
    ("a torchinn Hugging Face folder whose shapes file gives a size that is not an int", hf_folder_non_integer_size,
     inn.FormatError, r"modules\['model\.layers\.0\.mlp\.up_proj'\]\.args\.out_features must be an int in "
     r"\[1, 2147483648\), got 20\.5"),
    ("a torchinn Hugging Face folder whose config names a class that is not a transformers model",
     hf_folder_not_a_model_class, inn.FormatError,
     r"config\.json: architectures is \['os\.system'\], which does not name one transformers model class \(looked "
     r"up in transformers' auto model mappings, an allow-list; torchinn imports no other name and runs no code"),
    ("a torchinn Hugging Face folder with a tensor missing", hf_folder_missing_tensor, inn.FormatError,
     r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' \(shape \(32, 16\)\) is missing"),
    ("save_pretrained(pad=True) of GPT-2 or BERT with fewer heads", hf_pad_gpt2_fewer_heads, ValueError,
     r"cannot pad tensor 'transformer\.h\.0\.attn\.c_attn\.bias' \(shape \(48,\), where the config builds "
     r"\(96,\)\): .*GPT2Config has no head_dim field \(the head size is derived as hidden size / heads\), so "
     r"fewer heads cannot be padded"),
    ("a .inn file whose graph calls an op outside the allow-list", load_op_off_the_list, inn.FormatError,
     r"graph node 'sp' calls 'aten::_sparse_coo_tensor_with_dims_and_tensors\.default', which is not on "
     r"torchinn's list .*torchinn\.io\.format\.allow_ops\(torch\.ops\.aten\._sparse_coo_tensor_with_dims"),
    ("a .inn file whose input/output structure is not in torchinn's schema", load_spec_outside_schema,
     inn.FormatError, r"out_spec: node type 'collections\.defaultdict' is not in a torchinn file's schema"),
    ("a .inn file with a guard past the arithmetic bounds", load_guard_past_bounds, inn.FormatError,
     r"input_guards\[0\]\.expr: the exponent of 'pow' must be an int in \[0, 64\], got \['pow', 10, 11\]"),
    ("a .inn file whose graph creates a tensor larger than the file can justify", load_creation_too_big,
     inn.FormatError, r"graph node 'big' \(aten::zeros\.default\): its size arguments \['size'\] ask for up to "
     r"4294967296 elements \(times the input sizes\); a tensor made from sizes in the file may have at most \d+"),
    ("a .inn file whose graph writes to its input", load_write_to_input, inn.FormatError,
     r"graph node 'w' \(aten::relu_\.default\) writes to its argument input_1, which is not a tensor made in "
     r"this forward"),
    ("loading a FIFO, a directory or a device as a model", load_fifo, inn.FormatError,
     r"x\.inn is a FIFO \(named pipe\), not a regular file"),
]



# issue 20, items 5 and 9 (hard-lib)
class _Mode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x, mode="relu", mask=None):
        h = self.a(x)
        h = torch.relu(h) if mode == "relu" else torch.tanh(h)
        return self.b(h if mask is None else h * mask)


def graph_module_other_str_input() -> None:
    x = torch.randn(3, 4)
    inn.convert(_Mode().eval(), (x, "relu"), inn.ConvertConfig(permute=False)).to_discrete(graph=True)(x, "tanh")


def keyword_input_not_converted_with() -> None:
    x, mask = torch.randn(3, 4), torch.ones(3, 8)
    imodel = inn.convert(_Mode().eval(), (x,), inn.ConvertConfig(permute=False), kwargs={"mask": mask})
    imodel(x, masks=mask)


def calibration_of_the_wrong_shape() -> None:
    inn.compress(small(), (X,), 0.5, calibration=[X, torch.randn(2, 3, 8, 8, dtype=torch.float64)],
                 config=inn.ConvertConfig(permute=False), tune=False)


def calibration_with_an_empty_batch() -> None:
    inn.compress(small(), (X,), 0.5, calibration=[X, X, X[:0]], config=inn.ConvertConfig(permute=False), tune=False)


def compress_example_inputs_of_a_wrong_type() -> None:
    inn.compress(small(), "x", 0.5, tune=False)


def dict_batches_for_positional_inputs() -> None:
    inn.compress(small(), (X,), 0.5, tune=False, calibration=[{"input": X}])


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.a, self.b = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(self.emb(input_ids)))) * attention_mask[..., None]


def calibration_all_padding() -> None:
    ids, mask = torch.randint(0, 10, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    cal = [{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids, "attention_mask": mask * 0}]
    inn.compress(_Tokens().eval(), cal[0], 0.5, tune=False, calibration=cal)


CASES += [
    ("a str or None input other than the one converted with, to the graph module", graph_module_other_str_input,
     RuntimeError, r"input 1 \('mode'\) must be 'relu', the value the network was converted with: torch\.export "
     r"bakes a Python input into the traced graph as a constant; pass 'relu'"),
    ("a keyword input the model was not converted with, or a missing one", keyword_input_not_converted_with,
     ValueError, r"the network was called with keyword input 'masks', which it was not converted with \(did you "
     r"mean 'mask'\?\); no keyword input\(s\) \['mask'\], but it was converted with 1 positional input\(s\) "
     r"and the keyword input\(s\) \['mask'\]"),
    ("a calibration batch of the wrong shape or dtype", calibration_of_the_wrong_shape, ValueError,
     r"calibration batch 1: input 0 has dtype torch\.float64, but the network was converted for torch\.float32"),
    ("an empty calibration batch", calibration_with_an_empty_batch, ValueError,
     r"calibration batch 2: input 0 has shape \(0, 3, 8, 8\): an empty batch \(0 rows\); drop it"),
    ("example inputs of a wrong type given to compress", compress_example_inputs_of_a_wrong_type, TypeError,
     r"^example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs "
     r"\(\{'input_ids': ids, 'attention_mask': mask\}\), got str$"),
    ("dict calibration batches for a network converted with positional inputs", dict_batches_for_positional_inputs,
     ValueError, r"^calibration batch 0: the network was called with keyword input 'input', which it was not "
     r"converted with; 0 positional input\(s\), but it was converted with 1 positional input\(s\) and the "
     r"keyword input\(s\) \[\]"),
    ("a calibration batch whose attention_mask is all 0", calibration_all_padding, ValueError,
     r"^calibration batch 1: its attention_mask of shape \(2, 5\) is all 0: every position is padding, so "
     r"there is nothing to compare; drop the batch$"),
]


# issue 21, item 4 (scale-heads)
def refit_memory_bound_below_one() -> None:
    inn.compression.reconstruct(converted(), None, [X], max_system_bytes=0)


CASES += [
    ("a refit memory bound below one byte", refit_memory_bound_below_one, ValueError,
     r"max_system_bytes must be an int >= 1 \(bytes\), got 0"),
]



def tune_temperature_with_mse() -> None:  # issue 21: the temperature only means something for kl
    TuneConfig(loss="mse", temperature=2.0)


CASES += [
    ("a temperature with loss='mse'", tune_temperature_with_mse, ValueError,
     r"^temperature=2\.0 applies to the 'kl' loss \(and 'auto' on class logits\); loss='mse' compares the "
     r"outputs directly: leave temperature None$"),
]


# issue 23 (clicalib): compress --input-ids N,L --calibration FILE
def _token_file(tmp: Path, **tensors: torch.Tensor) -> str:
    from safetensors.torch import save_file

    save_file(tensors, str(tmp / "cal.safetensors"))
    return str(tmp / "cal.safetensors")


def cli_token_file_other_key(tmp: Path) -> None:
    from torchinn.cli.tokens import load_token_batches

    ids = torch.ones(4, 6, dtype=torch.long)
    load_token_batches(_token_file(tmp, input_ids=ids, labels=ids.clone()), None, (2, 6), None, 64)


def cli_token_ids_past_the_vocabulary(tmp: Path) -> None:
    from torchinn.cli.tokens import load_token_batches

    load_token_batches(_token_file(tmp, input_ids=torch.arange(60, 72).reshape(2, 6)), None, (2, 6), None, 64)


def cli_token_mask_not_binary(tmp: Path) -> None:
    from torchinn.cli.tokens import load_token_batches

    ids = torch.ones(4, 6, dtype=torch.long)
    load_token_batches(_token_file(tmp, input_ids=ids, attention_mask=ids * 2), None, (2, 6), None, 64)


def cli_token_file_float_ids(tmp: Path) -> None:
    from torchinn.cli.tokens import load_token_batches

    load_token_batches(_token_file(tmp, input_ids=torch.ones(4, 6)), None, (2, 6), None, 64)


def cli_token_file_too_few_rows(tmp: Path) -> None:
    from torchinn.cli.tokens import load_token_batches

    load_token_batches(_token_file(tmp, input_ids=torch.ones(3, 6, dtype=torch.long)), None, (4, 6), None, 64)


def cli_text_without_tokenizer(tmp: Path) -> None:
    from torchinn.cli.tokens import load_token_batches

    (tmp / "cal.txt").write_text("some text")
    load_token_batches(str(tmp / "cal.txt"), None, (2, 6), None, 64)


CASES += [
    ("a --calibration token file with a tensor other than input_ids / attention_mask", cli_token_file_other_key,
     CLIError, r"^--calibration '.*cal\.safetensors' holds \['labels'\]: a token calibration file holds only "
     r"\['input_ids', 'attention_mask'\] \(attention_mask optional\)$"),
    ("--calibration token ids outside the model's vocabulary", cli_token_ids_past_the_vocabulary, CLIError,
     r"^--calibration '.*cal\.safetensors': input_ids must be token ids in \[0, 64\) \(the vocabulary size of the "
     r"model's input embedding\), got 64 at row 0, position 4$"),
    ("a --calibration attention_mask that is not 0/1", cli_token_mask_not_binary, CLIError,
     r"^--calibration '.*cal\.safetensors': attention_mask must be 0 \(padding\) or 1 \(a token\), got 2 at row 0, "
     r"position 0$"),
    ("a --calibration token file of float dtype or mismatched shapes", cli_token_file_float_ids, CLIError,
     r"^--calibration '.*cal\.safetensors': input_ids has dtype F32; it must be an integer dtype \(I8, I16, I32, "
     r"I64, U8, U16, U32, U64\)$"),
    ("a --calibration token file with fewer sequences than a batch", cli_token_file_too_few_rows, CLIError,
     r"^--calibration '.*cal\.safetensors' has 3 sequence\(s\) of 6 tokens; a batch needs 4 \(the N of "
     r"--input-ids, or --batch-size\): give more text or a smaller batch$"),
    ("a --calibration .txt file without --tokenizer", cli_text_without_tokenizer, CLIError,
     r"^--calibration '.*cal\.txt' is text: give --tokenizer DIR \(a folder with the model's tokenizer\.json\) to "
     r"tokenize it, or a \.safetensors file of input_ids$"),
]



def cli_folder_without_config(tmp: Path) -> None:
    from torchinn.cli.loading import load_model

    (tmp / "weights").mkdir()
    load_model(str(tmp / "weights"))


def cli_folder_output_for_a_plain_module(tmp: Path) -> None:
    from torchinn.cli.main import build_parser

    torch.save(nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 2)), tmp / "m.pt")
    args = build_parser().parse_args(["compress", str(tmp / "m.pt"), "--input-ids", "2,4", "--target", "0.5",
                                      "--trust-code", "-o", f"{tmp / 'small'}/"])
    args.func(args)


def cli_folder_output_not_empty(tmp: Path) -> None:
    from torchinn.cli.output import check_output

    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    check_output(str(tmp / "out"))


def load_pretrained_sharded(tmp: Path) -> None:
    (tmp / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    (tmp / "model.safetensors.index.json").write_text("{}")
    inn.io.load_pretrained(tmp)


CASES += [
    ("a folder MODEL without config.json, given to the command line", cli_folder_without_config, CLIError,
     r"^MODEL '.*weights' is a directory without config\.json; expected a Hugging Face model folder \(config\.json "
     r"and model\.safetensors\), a model file or module:callable$"),
    ("compress of a model that is not a transformers model to a folder -o", cli_folder_output_for_a_plain_module,
     CLIError, r"^-o '.*small/' is a folder, and folders are for transformers models \(written as a Hugging Face "
     r"folder\); Sequential is not one: give a file name like small\.pt$"),
    ("compress -o a folder that is not empty, without --force", cli_folder_output_not_empty, CLIError,
     r"^-o '.*out' is a folder that is not empty; give a new or empty folder, or pass --force to replace its "
     r"contents$"),
    ("load_pretrained of a folder whose weights are sharded", load_pretrained_sharded, inn.FormatError,
     r"^.* has no model\.safetensors: its weights are sharded \(model\.safetensors\.index\.json\), which torchinn "
     r"does not read; save the model again with a max_shard_size above its size for one file; a Hugging Face "
     r"model folder holds config\.json and model\.safetensors \(and, from torchinn\.io\.save_pretrained, "
     r"torchinn_shapes\.json\)$"),
]

def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def elastic_low_outside() -> None:
    inn.make_elastic(_mlp(), torch.randn(2, 4), [torch.randn(8, 4)] * 3, low=1.5, steps=1)


def elastic_no_budget() -> None:
    inn.make_elastic(_mlp(), torch.randn(2, 4), [torch.randn(8, 4)] * 3)


def elastic_one_batch() -> None:
    inn.make_elastic(_mlp(), torch.randn(2, 4), [torch.randn(8, 4)], steps=1)


def elastic_unknown_ranking() -> None:
    inn.make_elastic(_mlp(), torch.randn(2, 4), [torch.randn(8, 4)] * 3, steps=1, ranking="fishr")


def elastic_fit_scales_alone() -> None:
    inn.make_elastic(_mlp(), torch.randn(2, 4), [torch.randn(8, 4)] * 3, steps=1, deploy=[0.5], fit_scales=True)


def elastic_tune_share_alone() -> None:
    inn.make_elastic(_mlp(), torch.randn(2, 4), [torch.randn(8, 4)] * 3, steps=1, deploy=[0.5], tune_share=0.5)


def elastic_bad_order() -> None:
    inn.elastic.ElasticNetwork(inn.convert(_mlp(), (torch.randn(2, 4),)), {"0.weight:0": [0, 0, 1]})


def elastic_resize_both() -> None:
    net = inn.elastic.ElasticNetwork(inn.convert(_mlp(), (torch.randn(2, 4),)), {})
    net.resize(0.5, target=0.5)


def elastic_file_bad_order(tmp: Path) -> None:
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    net = inn.elastic.ElasticNetwork(inn.convert(_mlp(), (torch.randn(2, 4),)), {"0.weight:0": list(range(16))})
    inn.save(net, tmp / "e.inn")
    with safe_open(tmp / "e.inn", framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["elastic"]["orders"]["0.weight:0"] = [0] * 16
    save_file(tensors, tmp / "e.inn", metadata={"torchinn": json.dumps(meta)})
    inn.load(tmp / "e.inn", verify=False)


def cli_resize_not_elastic(tmp: Path) -> None:
    from torchinn.cli.elastic import resize

    inn.save(inn.convert(_mlp(), (torch.randn(2, 4),)), tmp / "m.inn")
    resize(argparse.Namespace(model=str(tmp / "m.inn"), target=0.5, ratio=None, multiple=1, output=str(tmp / "s.pt"),
                              force=False))


CASES += [
    ("make_elastic with low outside (0, 1]", elastic_low_outside, ValueError,
     r"^low \(the smallest share of every group's channels to train\) must be in \(0, 1\], got 1\.5$"),
    ("make_elastic without a budget", elastic_no_budget, ValueError,
     r"^make_elastic needs a budget: seconds \(wall-clock time\) or steps \(optimizer steps\), or both$"),
    ("make_elastic with one calibration batch", elastic_one_batch, ValueError,
     r"^make_elastic needs at least 2 calibration batches: some to train on, at least one held out to measure the "
     r"sizes and guard the full size; got 1$"),
    ("make_elastic with an unknown ranking", elastic_unknown_ranking, ValueError,
     r"^ranking must be one of \['auto', 'l1', 'activation', 'fisher', 'uniform'\], got 'fishr'; did you mean "
     r"'fisher'\?$"),
    ("make_elastic with fit_scales but no bias corrections", elastic_fit_scales_alone, ValueError,
     r"^fit_scales=True fits the scales of deployed sizes with bias corrections: it needs deploy=\[\.\.\.\] and "
     r"deploy_kind='scales-bias' or 'scales-refit', got deploy=\[0\.5\], deploy_kind='scales'$"),
    ("make_elastic with tune_share but no refit", elastic_tune_share_alone, ValueError,
     r"^tune_share > 0 trains the refit weights of deployed sizes: it needs deploy=\[\.\.\.\] and "
     r"deploy_kind='scales-refit', got deploy=\[0\.5\], deploy_kind='scales'$"),
    ("an elastic ranking that is not a permutation of the channels", elastic_bad_order, ValueError,
     r"^the ranking of group '0\.weight:0' must be a permutation of range\(16\) \(its channels, most important "
     r"first\), got \[0, 0, 1\]$"),
    ("ElasticNetwork.resize with both sizes and a target", elastic_resize_both, ValueError,
     r"^resize needs either sizes \(a ratio, a size, or group -> size\) or target \(a fraction of the params to "
     r"keep\), not both$"),
    ("a .inn file whose elastic ranking is not a permutation", elastic_file_bad_order, inn.FormatError,
     r"^.*e\.inn: elastic\.orders\['0\.weight:0'\] must be a permutation of range\(16\) \(the group's channels, "
     r"most important first\), got \[0, 0, "),
    ("torchinn resize of a .inn file that is not elastic", cli_resize_not_elastic, CLIError,
     r"^'.*m\.inn' is an integral model without the rankings of an elastic network; make one with: torchinn "
     r"elastic MODEL \.\.\. -o net\.inn$"),
]


@pytest.mark.parametrize("what,fn,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(what: str, fn: Callable, exc: type, pattern: str, tmp_path: Path) -> None:
    with pytest.raises(exc, match=pattern):
        fn(tmp_path) if inspect.signature(fn).parameters else fn()


# Documented behaviours that are not errors.
def test_16_and_64_bit_models_convert() -> None:
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        m = small().to(dtype)
        imodel = inn.convert(m, (X.to(dtype),), inn.ConvertConfig(permute=False))
        assert imodel(X.to(dtype)).dtype == dtype


def test_tied_weights_and_channel_buffers_convert() -> None:
    for name in ("tied_weights", "channel_buffer"):
        torch.manual_seed(0)
        model, inputs = ZOO[name]()
        imodel = inn.convert(model, inputs, inn.ConvertConfig(permute=False))
        assert len(imodel.groups) >= 1
        imodel.resize(0.5)
        with torch.no_grad():
            assert torch.allclose(imodel(*inputs), imodel.to_discrete()(*inputs), atol=1e-5)


def test_training_mode_model_warns() -> None:
    with pytest.warns(UserWarning, match="converted as in eval mode"):
        inn.convert(small().train(), (X,), inn.ConvertConfig(permute=False))


def test_16_bit_calibration_images_are_scaled(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from torchinn.cli.loading import load_images

    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(tmp_path / "a.png")  # 16-bit grey
    Image.fromarray(np.full((8, 8), 60000, np.uint16)).save(tmp_path / "b.png")
    (x,) = load_images(str(tmp_path), (2, 1, 8, 8))
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([1000 / 65535, 60000 / 65535]), atol=1e-6)


def test_nan_batch_and_one_shot_iterator_in_tuning() -> None:
    m = converted()
    m.resize(0.5)
    bad = X.clone()
    bad[0, 0, 0, 0] = float("nan")
    report = tune_grid(m, [X, bad], validation=[X], tune=TuneConfig(steps=4, seconds=None, progress=False))
    assert report["skipped_nonfinite"] == 2 and all(torch.isfinite(p).all() for p in m.parameters())
    report = tune_grid(m, (x for x in [X, X, X]), tune=TuneConfig(steps=None, seconds=60.0, progress=False))
    assert report["steps"] == 3 and report["stopped"] == "exhausted" and report["seconds"] < 30


def test_docs_page_lists_every_case() -> None:
    text = DOC.read_text()
    rows = re.findall(r"^\| ([^|]+?) \|", text, re.M)
    for what, *_ in CASES:
        assert what in rows, f"docs/bad-inputs.md has no row for {what!r}"

