"""A .inn file is data: an allow-list of graph ops with bounded sizes and no writes to inputs,
specs parsed by torchinn (nothing imported), bounded guards, no reading of FIFOs.

Each repro of issue 20 ("Found" 1-3 and the FIFO of 7) is a test here: the crafted file is a
real saved model whose metadata was edited and re-signed, as an attacker would.

``python tests/io/test_serialize_ops.py`` prints the ATen ops the zoo's saved graphs call (the
table of ``torchinn.io.ops.ALLOWED`` is that list plus the Hugging Face models'; see its
module doc).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import torchinn as inn
from torchinn.io import ops as serialize_ops
from torchinn.graph.guards import evaluate
from torchinn.io.format import checksum
from torchinn.io.graph import target_name
from torchinn.io.spec import spec_dumps, spec_loads
from torchinn_demo.zoo import ZOO


def read(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    return meta, load_file(path)


def write(path: Path, meta: dict, tensors: dict) -> Path:
    """A crafted file, signed with a valid checksum as an attacker would."""
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    meta["sha256"] = checksum(meta, tensors)
    save_file(tensors, str(path), metadata={"torchinn": json.dumps(meta)})
    return path


def _graph_ops(imodel: inn.IntegralModel) -> set[str]:
    """The saved names of the ATen/py targets of a runtime graph (never refused here)."""
    out = set()
    for node in imodel.runtime.graph.nodes:
        if node.op == "call_function":
            t = node.target
            out.add(f"aten::{t._opname}.{t._overloadname}" if isinstance(t, torch._ops.OpOverload)
                    else target_name(t))
    return out


def _zoo_ops(name: str) -> set[str]:
    torch.manual_seed(0)
    model, inputs = ZOO[name]()
    return _graph_ops(inn.convert(model, inputs, inn.ConvertConfig(permute=False, progress=False)))


# -- the allow-list -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_graph_uses_only_allowed_ops(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, inputs = ZOO[name]()
    imodel = inn.convert(model, inputs, inn.ConvertConfig(permute=False, progress=False))
    off = sorted(o for o in _graph_ops(imodel) if o.startswith("aten::") and o[6:] not in serialize_ops.ALLOWED)
    assert not off, (f"{name}: torchinn's export now emits {off}, which a .inn file may not call: check each "
                     "is not sparse/layout/storage and writes nothing, then add it to "
                     "torchinn.io.ops.ALLOWED (and to FRESH / SIZE_ARGS if it applies)")
    imodel.resize(0.5)
    inn.save(imodel, tmp_path / "m.inn")
    with torch.no_grad():
        assert torch.equal(inn.load(tmp_path / "m.inn")(*inputs), imodel(*inputs))


def test_the_lists_are_consistent() -> None:
    for key in serialize_ops.ALLOWED:
        name, overload = key.split(".")
        op = getattr(getattr(torch.ops.aten, name), overload)
        writes = any(a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments)
        assert writes == (key in serialize_ops.IN_PLACE), key
        assert not any(w in name for w in ("sparse", "dense", "storage", "resize", "set_")), key
    assert serialize_ops.FRESH <= serialize_ops.ALLOWED and set(serialize_ops.SIZE_ARGS) <= serialize_ops.ALLOWED


def test_allow_ops_extends_the_list_in_code_only(small, tmp_path: Path) -> None:
    path, x, _ = small
    meta, tensors = read(path)
    node = {"op": "call_function", "name": "tr", "target": "aten::trace.default",
           "args": {"t": [{"n": "relu_default"}]}, "kwargs": {"d": {}}}
    meta["graph"].insert(-1, node)
    with pytest.raises(inn.FormatError, match=r"graph node 'tr' calls 'aten::trace\.default', which is not on "
                       r"torchinn's list .* torchinn\.io\.format\.allow_ops\(torch\.ops\.aten\.trace\.default\)"):
        inn.load(write(tmp_path / "e.inn", meta, tensors))
    try:
        inn.io.format.allow_ops(torch.ops.aten.trace.default)
        inn.load(tmp_path / "e.inn")
    finally:
        serialize_ops.ALLOWED.discard("trace.default")
    with pytest.raises(TypeError, match=r"allow_ops needs ATen operator overloads .* got 'erf' of type str"):
        inn.io.format.allow_ops("erf")
    with pytest.raises(TypeError, match=r"got <OpOverloadPacket"):
        inn.io.format.allow_ops(torch.ops.aten.erf)
    for op in (torch.ops.aten._to_dense.default, torch.ops.aten.resize_.default, torch.ops.aten.set_.source_Tensor):
        with pytest.raises(ValueError, match=r"sparse, layout, storage, file or global-state operator"):
            inn.io.format.allow_ops(op)
    with pytest.raises(ValueError, match=r"aten\.index_put_\.default writes to an argument"):
        inn.io.format.allow_ops(torch.ops.aten.index_put_.default)
    assert "index_put_.default" not in serialize_ops.ALLOWED


def test_save_refuses_an_op_a_file_may_not_call(small, tmp_path: Path) -> None:
    torch.manual_seed(0)
    imodel = inn.convert(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
                         (torch.randn(2, 4),), inn.ConvertConfig(permute=False, progress=False))
    relu = next(n for n in imodel.runtime.graph.nodes if n.target == torch.ops.aten.relu.default)
    relu.target = torch.ops.aten.trace.default
    with pytest.raises(TypeError, match=r"cannot save this model: its graph calls aten::trace\.default, which is "
                       r"not on .*io\.format\.allow_ops\(torch\.ops\.aten\.trace\.default\)"):
        inn.save(imodel, tmp_path / "m.inn")
    assert not (tmp_path / "m.inn").exists()


class _Activations(torch.nn.Module):
    """Ops no zoo network emits but conversion follows: pointwise (some in place) and a pad."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3)
        self.b = torch.nn.Conv2d(8, 6, 3)
        self.act = torch.nn.Sequential(torch.nn.LeakyReLU(0.1, inplace=True), torch.nn.Hardswish(),
                                       torch.nn.SiLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.a(x)).clamp(-3, 3)
        h = torch.nn.functional.pad(h, (1, 1, 1, 1), mode="reflect")
        return torch.nn.functional.elu(self.b(h)).flatten(1)


def test_ops_conversion_follows_are_on_the_list(tmp_path: Path) -> None:
    """The list holds what conversion can follow in a user's network, not only what the zoo emits:
    pointwise ops, in place or not (leaky_relu_, hardswish, silu_, clamp, elu) and reflection pads."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10)
    imodel = inn.convert(_Activations().eval(), (x,), inn.ConvertConfig(permute=False, progress=False))
    imodel.resize(0.5)
    ops = {o.removeprefix("aten::") for o in _graph_ops(imodel) if o.startswith("aten::")}
    assert {"leaky_relu_.default", "hardswish.default", "silu_.default", "clamp.default", "elu.default"} <= ops, ops
    assert ops <= serialize_ops.ALLOWED, ops - serialize_ops.ALLOWED
    inn.save(imodel, tmp_path / "m.inn")
    assert torch.equal(inn.load(tmp_path / "m.inn")(x), imodel(x))


# -- issue 20, Found 2 and 3: memory corruption, allocations, writes to the input -----------------

@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple:
    """A small MLP saved to a ~4.5 kB file, its input and outputs."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(2, 8)
    imodel = inn.convert(net, (x,), inn.ConvertConfig(progress=False))
    imodel.resize(0.5)
    path = tmp_path_factory.mktemp("small") / "mlp.inn"
    inn.save(imodel, path)
    with torch.no_grad():
        return path, x, imodel(x)


def _node(name: str, target: str, *args, **kwargs) -> dict:
    return {"op": "call_function", "name": name, "target": target, "args": {"t": list(args)}, "kwargs": {"d": kwargs}}


def _with_nodes(small, tmp_path: Path, *nodes: dict, output: str | None = None) -> Path:
    path, _, _ = small
    meta, tensors = read(path)
    for n in nodes:
        meta["graph"].insert(-1, n)
    if output:
        meta["graph"][-1]["args"] = {"t": [{"t": [{"n": output}]}]}
    return write(tmp_path / "crafted.inn", meta, tensors)


def test_sparse_tensor_then_to_dense_is_refused_before_it_runs(small, tmp_path: Path, capsys) -> None:
    """Found 2: unchecked sparse indices then ``_to_dense`` wrote out of bounds (SIGSEGV)."""
    from torchinn.cli.main import main

    idx = {"n": "getitem"}  # any tensor: the op is refused by name, before anything runs
    path = _with_nodes(small, tmp_path,
                       _node("sp", "aten::_sparse_coo_tensor_with_dims_and_tensors.default", 1, 0, {"l": [4]},
                             idx, idx),
                       _node("dense", "aten::_to_dense.default", {"n": "sp"}), output="dense")
    with pytest.raises(inn.FormatError, match=r"graph node 'sp' calls "
                       r"'aten::_sparse_coo_tensor_with_dims_and_tensors\.default', which is not on torchinn's list"):
        inn.load(path)
    assert main(["inspect", str(path), "--input-shape", "2,8"]) == 1
    assert "not on torchinn's list" in capsys.readouterr().err


def test_a_4kb_file_asking_for_16_gib_is_refused_at_load(small, tmp_path: Path) -> None:
    """Found 3: ``aten.ones([65536, 65536])`` in a 4.5 kB file asked for 16 GiB at inspect/forward."""
    for op in ("ones", "zeros"):  # ops that make tensors: their sizes are bounded by what the file stores
        path = _with_nodes(small, tmp_path, _node("big", f"aten::{op}.default", {"l": [65536, 65536]}))
        assert path.stat().st_size < 6000
        with pytest.raises(inn.FormatError, match=rf"graph node 'big' \(aten::{op}\.default\): its size arguments "
                           r"\['size'\] ask for up to 4294967296 elements .* at most \d+ \(4 times the elements"):
            inn.load(path)  # refused by the check, before any graph runs (no 16 GiB asked for)


@pytest.mark.parametrize("node", [
    _node("big", "aten::new_zeros.default", {"n": "relu_default"}, {"l": [65536, 65536]}),
    _node("big", "aten::repeat.default", {"n": "relu_default"}, {"l": [4096, 4096, 1, 1]}),
    _node("big", "aten::arange.start_step", 0, 10**12, 1),
    _node("big", "aten::constant_pad_nd.default", {"n": "relu_default"}, {"l": [100000, 100000]}),
    # broadcast_to is followed by the conversion since onnx2torch's Max / Min use it (as expand)
    _node("big", "aten::broadcast_to.default", {"n": "relu_default"}, {"l": [65536, 65536, 8]}),
])
def test_sizes_of_the_ops_added_to_the_list_are_bounded(small, tmp_path: Path, node: dict) -> None:
    """The ops :func:`serialize_ops._derive` adds have their size arguments bounded as well."""
    path = _with_nodes(small, tmp_path, node)
    with pytest.raises(inn.FormatError, match=r"graph node 'big' .*: its size arguments .* ask for up to \d+ "
                       r"elements .* at most \d+ \(4 times the elements"):
        inn.load(path)


@pytest.mark.parametrize("sizes,pattern", [
    ([{"n": "s"}, 65536, 65536], r"ask for up to 4294967296 elements \(times the input sizes\)"),
    ([{"n": "s"}] * 5, r"multiply 5 input sizes; at most 4"),
    ([{"n": "getitem"}], r"argument 'size' must be constants or arithmetic on input sizes"),
    ([{"n": "m"}], r"ask for up to 1000000 elements"),
])
def test_sizes_from_nodes_must_come_from_input_sizes(small, tmp_path: Path, sizes, pattern) -> None:
    path = _with_nodes(small, tmp_path, _node("s", "aten::sym_size.int", {"n": "input_1"}, 0),
                       _node("m", "py::operator.mul", {"n": "s"}, 1000000),
                       _node("big", "aten::new_ones.default", {"n": "input_1"}, {"l": sizes}))
    with pytest.raises(inn.FormatError, match=pattern):
        inn.load(path)


def test_sizes_from_input_sizes_load_and_run(small, tmp_path: Path) -> None:
    _, x, expected = small
    path = _with_nodes(small, tmp_path, _node("s", "aten::sym_size.int", {"n": "input_1"}, 0),
                       _node("m", "py::operator.mul", {"n": "s"}, 3),
                       _node("ones", "aten::new_ones.default", {"n": "input_1"}, {"l": [{"n": "m"}, 4]}))
    with torch.no_grad():
        assert torch.equal(inn.load(path)(x), expected)  # the node is dead code here, but checked and kept


def test_a_ceil_mode_pooling_before_a_flatten_saves_and_loads(tmp_path: Path) -> None:
    """torch.export checks the input sizes of a ceil_mode max-pooling followed by a flatten with
    Python's ``max(1, ...)`` in the graph (MTCNN's ONet in facenet-pytorch): save() refused it."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.pool = torch.nn.Conv2d(3, 8, 3), torch.nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.fc = torch.nn.Conv2d(8, 8, 2), torch.nn.Linear(8 * 4 * 4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv2(self.pool(torch.relu(self.conv1(x)))).permute(0, 3, 2, 1).contiguous()
            return self.fc(x.view(x.shape[0], -1))

    torch.manual_seed(0)
    imodel = inn.convert(Net().eval(), torch.randn(2, 3, 12, 12))
    assert max in {n.target for n in imodel.runtime.graph.nodes}
    inn.save(imodel, tmp_path / "m.inn")
    back = inn.load(tmp_path / "m.inn")
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(back(x), imodel(x), atol=1e-6)
    assert target_name(max) == "py::builtins.max" and target_name(min) == "py::builtins.min"


def test_huge_integer_arithmetic_is_refused(small, tmp_path: Path) -> None:
    nodes = [_node("s", "aten::sym_size.int", {"n": "input_1"}, 0)]
    for i in range(70):  # s ** (2 ** 70): a number of 2 ** 70 bits
        prev = "s" if i == 0 else f"m{i - 1}"
        nodes.append(_node(f"m{i}", "py::operator.mul", {"n": prev}, {"n": prev}))
    with pytest.raises(inn.FormatError, match=r"graph node 'm6': its size arithmetic .* over 128 input size\(s\)"):
        inn.load(_with_nodes(small, tmp_path, *nodes))


@pytest.mark.parametrize("target,arg", [("aten::resize_.default", {"n": "input_1"}),
                                        ("aten::relu_.default", {"n": "input_1"}),
                                        ("aten::relu_.default", {"n": "getitem"}),
                                        ("aten::relu_.default", {"n": "v"})])
def test_no_write_to_an_input_or_a_stored_tensor(small, tmp_path: Path, target: str, arg) -> None:
    """Found 3: ``aten.resize_`` on the input emptied the caller's tensor."""
    _, x, _ = small
    view = _node("v", "aten::view.default", {"n": "input_1"}, {"l": [-1]})
    args = (arg, {"l": [0]}) if "resize" in target else (arg,)
    path = _with_nodes(small, tmp_path, view, _node("w", target, *args))
    pattern = (r"'aten::resize_\.default', which is not on torchinn's list" if "resize" in target else
               rf"graph node 'w' \(aten::relu_\.default\) writes to its argument {arg['n']}, which is not a tensor "
               r"made in this forward")
    before = x.clone()
    with pytest.raises(inn.FormatError, match=pattern):
        inn.load(path)
    assert torch.equal(x, before)


def test_batch_norm_statistics_are_stored_tensors_and_the_runtime_flag(small, tmp_path: Path) -> None:
    w = {"n": "getitem"}
    for running, training, pattern in [({"n": "input_1"}, False, r"running_mean must be a stored tensor"),
                                       (w, True, r"training must be the runtime's norm_training flag or false")]:
        bn = _node("bn", "aten::batch_norm.default", {"n": "input_1"}, None, None, running, w, training, 0.1,
                   1e-5, False)
        with pytest.raises(inn.FormatError, match=pattern):
            inn.load(_with_nodes(small, tmp_path, bn))


# -- issue 20, Found 1: specs are parsed by torchinn, nothing imported ----------------------------

def _spec_file(small, tmp_path: Path, spec: str, field: str = "out_spec") -> Path:
    path, _, _ = small
    meta, tensors = read(path)
    meta[field] = spec
    return write(tmp_path / "spec.inn", meta, tensors)


_ENUM = json.dumps([1, {"type": "builtins.dict", "context": json.dumps(
    [{"__enum__": True, "fqn": "planted_by_file:E", "name": "A"}]),
    "children_spec": [{"type": None, "context": None, "children_spec": []}]}])
_DEFAULTDICT = json.dumps([1, {"type": "collections.defaultdict", "context": json.dumps(
    {"default_factory_module": "os", "default_factory_name": "getcwd", "dict_context": ["a"]}),
    "children_spec": [{"type": None, "context": None, "children_spec": []}]}])


def test_an_enum_context_imports_nothing(small, tmp_path: Path, monkeypatch) -> None:
    """Found 1: the spec's enum hook imported a module named in the file (one in the cwd ran)."""
    marker = tmp_path / "ran"
    (tmp_path / "planted_by_file.py").write_text(
        f"import enum, pathlib\npathlib.Path({str(marker)!r}).touch()\nclass E(enum.Enum):\n    A = 1\n")
    # what torch's own decoder does with this text (in a child process, from that folder)
    subprocess.run([sys.executable, "-c", f"from torch.utils import _pytree as p; p.treespec_loads({_ENUM!r})"],
                   cwd=tmp_path, capture_output=True, timeout=120, check=True)
    assert marker.exists()
    marker.unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    inn.load(small[0])  # whatever a load imports the first time
    before = set(sys.modules)
    for field in ("out_spec", "in_spec"):
        with pytest.raises(inn.FormatError, match=rf"{field}: keys must be strings or ints within \+-2\*\*63, "
                           r"got \{'__enum__': True"):
            inn.load(_spec_file(small, tmp_path, _ENUM, field))
    assert not marker.exists() and "planted_by_file" not in sys.modules
    assert set(sys.modules) - before == set()


def test_a_defaultdict_spec_is_refused(small, tmp_path: Path) -> None:
    """Found 1: a ``collections.defaultdict`` spec made outputs with a factory the file chose."""
    inn.load(small[0])
    before = set(sys.modules)
    with pytest.raises(inn.FormatError, match=r"out_spec: node type 'collections\.defaultdict' is not in a "
                       r"torchinn file's schema \(allowed: a leaf.*\); nothing is imported"):
        inn.load(_spec_file(small, tmp_path, _DEFAULTDICT))
    assert set(sys.modules) - before == set()


@pytest.mark.parametrize("spec,pattern", [
    ('[1, {"type": "builtins.tuple"}]', r"must be an object with keys type, context, children_spec"),
    ("[2, {}]", r"expected \[1, \{\.\.\.\}\], protocol 1"),
    ("[1, " * 5000 + "]" * 5000, r"not a tree structure"),
    ('[1, {"type": "builtins.dict", "context": "[\\"a\\", \\"a\\"]", "children_spec": [{"type": null, '
     '"context": null, "children_spec": []}, {"type": null, "context": null, "children_spec": []}]}]',
     r"a key appears twice"),
    ('[1, {"type": "builtins.list", "context": "[1]", "children_spec": []}]', r'a builtins\.list has context "null"'),
    ('[1, {"type": "transformers.modeling_outputs.os", "context": "[]", "children_spec": []}]',
     r"has no ModelOutput class 'os'|install transformers"),
    ('[1, {"type": "builtins.eval", "context": "null", "children_spec": []}]', r"node type 'builtins\.eval'"),
])
def test_a_malformed_spec_is_a_format_error(small, tmp_path: Path, spec: str, pattern: str) -> None:
    """Found 1: a malformed spec raised a bare AssertionError / ModuleNotFoundError."""
    with pytest.raises(inn.FormatError, match=pattern):
        inn.load(_spec_file(small, tmp_path, spec))


def test_spec_text_is_torchs_for_the_schema() -> None:
    from torch.utils import _pytree as pytree

    x = torch.zeros(1)
    for tree in [x, (x, None), ((x,), {"a": x, 3: [x, None]}), ([], {}), {"k": (x, [x])}]:
        spec = pytree.tree_flatten(tree)[1]
        assert spec_dumps(spec) == pytree.treespec_dumps(spec)  # old files read, new files readable by old
        assert spec_loads(spec_dumps(spec), "spec") == spec
    import collections

    with pytest.raises(TypeError, match=r"hold a collections\.OrderedDict"):
        spec_dumps(pytree.tree_flatten(collections.OrderedDict(a=x))[1])


# -- issue 20, Found 3: guards with bounded arithmetic -------------------------------------------

@pytest.mark.parametrize("expr,pattern", [
    (["pow", 10, ["pow", 10, 11]], r"the exponent of 'pow' must be an int in \[0, 64\], got \['pow', 10, 11\]"),
    (["pow", 10, 65], r"the exponent of 'pow' must be an int in \[0, 64\], got 65"),
    (["eq", ["dim", 0, 0], 2**70], r"ints in a guard must be within \+-2\*\*63"),
    (["mul", "x", 10**9], r"'mul' of a string"),
    (["add", 1, 2, 3], r"'add' takes 2 argument\(s\), got 3"),
])
def test_guards_past_the_bounds_are_refused_at_load(small, tmp_path: Path, expr, pattern) -> None:
    """Found 3: ``["pow", 10, ["pow", 10, 11]]`` hung the first forward."""
    path, _, _ = small
    meta, tensors = read(path)
    meta["input_guards"] = [{"expr": expr, "text": "crafted", "kind": "shape"}]
    t = time.perf_counter()
    with pytest.raises(inn.FormatError, match=r"input_guards\[0\]\.expr.*" + pattern):
        inn.load(write(tmp_path / "g.inn", meta, tensors))
    assert time.perf_counter() - t < 10.0  # a hang, not a speed goal: the tower ran for hours


def test_guard_forms_and_sizes_are_checked(small, tmp_path: Path) -> None:
    path, _, _ = small
    meta, tensors = read(path)
    deep = ["dim", 0, 0]
    for _ in range(200):
        deep = ["add", deep, 1]
    for guard, pattern in [({"expr": ["dim", 0, 0], "text": "t", "kind": "value"}, r"a 'value' guard must be"),
                           ({"expr": ["eq", 1, 1], "text": "t", "kind": "range"}, r"a 'range' guard must be"),
                           ({"expr": ["eq", 1, 1], "text": "t" * 1001, "kind": "shape"}, r"more than 1000 characters"),
                           ({"expr": deep, "text": "t", "kind": "shape"}, r"nested more than 32 levels")]:
        meta["input_guards"] = [guard]
        with pytest.raises(inn.FormatError, match=pattern):
            inn.load(write(tmp_path / "g.inn", meta, tensors))


def test_guard_evaluation_is_bounded_at_run_time() -> None:
    x = torch.zeros(3, 4)
    assert evaluate(("eq", ("pow", ("dim", 0, 0), 2), 9), [x]) is True
    t = time.perf_counter()
    tower = ("dim", 0, 1)
    for _ in range(30):
        tower = ("pow", tower, 64)
    with pytest.raises(ValueError, match=r"guard power past 4096 bits"):
        evaluate(tower, [x])
    squares = ("dim", 0, 1)
    for _ in range(30):
        squares = ("mul", squares, squares)
    with pytest.raises(ValueError, match=r"guard arithmetic past 4096 bits"):
        evaluate(squares, [x])
    with pytest.raises(ValueError, match=r"guard operation 'mul' on a non-number"):
        evaluate(("mul", ("input", 1), 10**9), [x, "s"])
    assert time.perf_counter() - t < 10.0  # a hang, not a speed goal: the tower ran for hours


# -- issue 20, Found 7: a FIFO ---------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_load_of_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.inn"
    os.mkfifo(fifo)
    result: list = []

    def run() -> None:
        try:
            inn.load(fifo)
        except Exception as err:  # noqa: BLE001 - the test checks what it is
            result.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "inn.load of a FIFO blocks"
    assert isinstance(result[0], inn.FormatError)
    assert re.search(r"x\.inn is a FIFO \(named pipe\), not a regular file", str(result[0]))
    with pytest.raises(inn.FormatError, match=r"is a directory, not a regular file"):
        inn.load(tmp_path)


if __name__ == "__main__":  # print the ops the zoo's graphs call, for serialize_ops.ALLOWED
    print(textwrap.fill(", ".join(sorted({o[6:] for n in sorted(ZOO) for o in _zoo_ops(n) if o[:6] == "aten::"})),
                        100))
