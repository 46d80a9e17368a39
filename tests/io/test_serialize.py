"""Saving and loading integral models: one file, a new process, no original network."""

from __future__ import annotations

import copy
import json
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import torchinn as inn
from torchinn.io.format import checksum
from torchinn.training.train import TuneConfig, tune_grid
from torchinn_demo.zoo import ZOO


def read(path: Path) -> tuple[dict, dict]:
    """A saved file's metadata and tensors."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    return meta, load_file(path)


def write(path: Path, meta: dict, tensors: dict, sign: bool = True) -> Path:
    """Write a (crafted) file; ``sign``: with a valid checksum, as an attacker would."""
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    if sign:
        meta["sha256"] = checksum(meta, tensors)
    save_file(tensors, str(path), metadata={"torchinn": json.dumps(meta)})
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple:
    torch.manual_seed(0)
    model, inputs = ZOO["resnet_basic"]()
    imodel = inn.convert(model, inputs, inn.ConvertConfig(tsp_time_limit=0.05))
    imodel.resize({"layer1.0.conv1.weight:0": 5, "layer3.0.conv2.weight:0": 11})
    tune_grid(imodel, [inputs[0]], tune=TuneConfig(steps=5, seconds=None, progress=False))
    imodel.eval()
    path = tmp_path_factory.mktemp("m") / "resnet.inn"
    inn.save(imodel, str(path))
    return imodel, inputs, path


def test_load_in_a_new_process_gives_identical_outputs(tuned, tmp_path: Path) -> None:
    imodel, inputs, path = tuned
    torch.save(inputs[0], tmp_path / "x.pt")
    with torch.no_grad():
        expected = imodel(*inputs)
    script = textwrap.dedent(f"""
        import torch, torchinn as inn
        m = inn.load({str(path)!r})
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            torch.save((m(x), m.sizes(), m.to_discrete()(x)), {str(tmp_path / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    out, sizes, discrete = torch.load(tmp_path / "out.pt")
    assert torch.equal(out, expected)
    assert torch.allclose(discrete, expected, atol=1e-5, rtol=0)
    assert sizes == imodel.sizes()


def test_loaded_model_keeps_partitions_and_trains(tuned) -> None:
    imodel, inputs, path = tuned
    again = inn.load(path)
    for name, p in imodel.partition_map().items():
        q = again.partition(name)
        assert type(q) is type(p) and q.size == p.size and q.max_size == p.max_size
        assert torch.equal(q.points(), p.points())
    again.train()
    loss = again(*inputs).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in again.functions.parameters())


def test_deepcopy_and_pickle(tuned) -> None:
    imodel, inputs, _ = tuned
    with torch.no_grad():
        expected = imodel(*inputs)
        for clone in (copy.deepcopy(imodel), pickle.loads(pickle.dumps(imodel))):
            assert torch.equal(clone(*inputs), expected)
            assert clone.sizes() == imodel.sizes()
    small = imodel.to_discrete()
    with torch.no_grad():
        assert torch.equal(pickle.loads(pickle.dumps(small))(*inputs), small(*inputs))


def test_newer_broken_and_foreign_files(tuned, tmp_path: Path) -> None:
    _, _, path = tuned
    meta, tensors = read(path)
    newer = dict(meta, version=inn.io.format.FORMAT_VERSION + 1)
    save_file(tensors, str(tmp_path / "newer.inn"), metadata={"torchinn": json.dumps(newer)})
    with pytest.raises(inn.FormatError, match=r"file format 2; this torchinn reads formats up to 1: upgrade"):
        inn.load(tmp_path / "newer.inn")
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    with pytest.raises(inn.FormatError, match="without torchinn metadata"):
        inn.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.inn").write_bytes(b"not a model at all")
    with pytest.raises(inn.FormatError, match="not a torchinn model file"):
        inn.load(tmp_path / "junk.inn")
    (tmp_path / "cut.inn").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(inn.FormatError):
        inn.load(tmp_path / "cut.inn")
    missing = dict(tensors)
    gone = next(k for k in missing if k.startswith("f/"))
    missing.pop(gone)
    save_file(missing, str(tmp_path / "missing.inn"), metadata={"torchinn": json.dumps(meta)})
    with pytest.raises(inn.FormatError, match="checksum mismatch"):
        inn.load(tmp_path / "missing.inn")
    write(tmp_path / "missing.inn", meta, missing)  # re-signed: the checks still see the hole
    with pytest.raises(inn.FormatError, match=rf"functions\['{gone.split('/')[1]}'\].*but the file stores"):
        inn.load(tmp_path / "missing.inn")
    evil = dict(meta, graph=[{"op": "call_function", "name": "x", "target": "py::os.system",
                              "args": {"t": ["echo hi"]}, "kwargs": {"d": {}}}])
    write(tmp_path / "evil.inn", evil, tensors)
    with pytest.raises(inn.FormatError, match="graph node 'x' calls 'py::os.system', which a torchinn file may not"):
        inn.load(tmp_path / "evil.inn")
    with pytest.raises(FileNotFoundError):
        inn.load(tmp_path / "nope.inn")
    with pytest.raises(TypeError, match="needs an IntegralModel"):
        inn.save(torch.nn.Linear(2, 2), tmp_path / "x.inn")


# -- a file describes, never executes -------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple:
    """A small MLP saved to a ~4 kB file, its input and outputs."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(2, 8)
    imodel = inn.convert(net, (x,))
    imodel.resize(0.5)
    path = tmp_path_factory.mktemp("small") / "mlp.inn"
    inn.save(imodel, path)
    with torch.no_grad():
        return path, x, imodel(x)


def _evil_node(target: str, marker: Path) -> dict:
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    args = {"t": [code]} if target != "py::builtins.__import__" else {"t": ["os"]}
    return {"op": "call_function", "name": "evil", "target": target, "args": args, "kwargs": {"d": {}}}


@pytest.mark.parametrize("target", ["py::builtins.eval", "py::builtins.exec", "py::builtins.__import__",
                                    "py::os.system", "py::builtins.getattr", "py::torch.load",
                                    "aten::from_file.default", "aten::_print.default", "prims::add.default",
                                    "aten::conv2d.default; import os", "eval"])
def test_crafted_call_target_is_refused_and_runs_nothing(small, tmp_path: Path, target: str, capsys) -> None:
    from torchinn.cli.main import main

    path, _, _ = small
    meta, tensors = read(path)
    marker = tmp_path / "marker"
    meta["graph"].insert(-1, _evil_node(target, marker))
    evil = write(tmp_path / "evil.inn", meta, tensors)  # a valid checksum: the attacker computes it
    with pytest.raises(inn.FormatError, match=rf"graph node 'evil'.* {re.escape(repr(target))}|graph node 'evil': "):
        inn.load(evil)
    assert main(["inspect", str(evil), "--input-shape", "2,8"]) == 1
    assert "FormatError" in capsys.readouterr().err
    assert not marker.exists()


def test_the_unchecked_eval_attack_ran_before(tmp_path: Path) -> None:
    """The attack the allow-list stops: rebuilt without checks, the eval node runs when the model runs."""
    from torch import fx

    marker = tmp_path / "marker"
    graph = fx.Graph()
    graph.call_function(eval, (f"__import__('pathlib').Path({str(marker)!r}).touch()",))
    graph.output(None)
    fx.GraphModule(torch.nn.Module(), graph)()
    assert marker.exists()  # so the refusal above is what keeps the marker away


@pytest.mark.parametrize("where", ["name", "dunder", "kwarg", "string"])
def test_names_and_keywords_cannot_inject_code(small, tmp_path: Path, where: str) -> None:
    path, x, _ = small
    meta, tensors = read(path)
    marker = tmp_path / "marker"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    relu = next(n for n in meta["graph"] if n.get("target") == "aten::relu.default")
    if where == "name":
        relu["name"] = f"r = 0; {code}; relu_default"
    elif where == "dunder":
        relu["name"] = "__builtins__"
    elif where == "kwarg":
        relu["kwargs"] = {"d": {f"x=0) if {code} else (0": 1}}
    else:  # strings are emitted with repr(): harmless, the op itself rejects the value
        gelu = {"op": "call_function", "name": "g", "target": "aten::gelu.default",
                "args": {"t": [{"n": "input_1"}]}, "kwargs": {"d": {"approximate": f"'); {code}; ('"}}}
        meta["graph"].insert(-1, gelu)
    write(tmp_path / "evil.inn", meta, tensors)
    if where == "string":
        m = inn.load(tmp_path / "evil.inn")
        with pytest.raises(RuntimeError):
            m(x)
    else:
        with pytest.raises(inn.FormatError, match="must be a Python identifier"):
            inn.load(tmp_path / "evil.inn")
    assert not marker.exists()


@pytest.mark.parametrize("version", [True, -5, 0, "1", 1.0, None])
def test_version_must_be_an_int_in_range(small, tmp_path: Path, version) -> None:
    path, _, _ = small
    meta, tensors = read(path)
    meta["version"] = version
    with pytest.raises(inn.FormatError, match=r"version must be an int in \[1, 1\], got "):
        inn.load(write(tmp_path / "v.inn", meta, tensors))


def _bombs(path: Path, out: Path) -> list[Path]:
    meta, tensors = read(path)
    files = []
    for i, edit in enumerate([
        lambda m: m["partitions"]["0.weight:0"].update(max_size=1_000_000_000),
        lambda m: m["functions"]["0.weight"].update(shape=[1e6, 1e6]),
        lambda m: m["functions"]["0.weight"].update(shape=[1_000_000, 1_000_000]),
        lambda m: m["functions"]["0.weight"]["plan"][1][0][0].__setitem__(0, 10**12),
        lambda m: m["contractions"].append({"plan": [[[10**9, None, False]]], "ndim": 2, "dim": 1, "mean": False}),
        lambda m: m["functions"]["0.weight"].update(plan=[[[[16, "0.weight:0", False]]] * 40, [[[8, None, False]]] * 40]),
    ]):
        m = json.loads(json.dumps(meta))
        edit(m)
        files.append(write(out / f"bomb{i}.inn", m, tensors))
    return files


def test_size_bombs_fail_fast_under_a_memory_limit(small, tmp_path: Path) -> None:
    path, _, _ = small
    files = _bombs(path, tmp_path)
    assert all(f.stat().st_size < 8192 for f in files)
    script = textwrap.dedent(f"""
        import resource, time, torchinn as inn
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        for f in {[str(f) for f in files]!r}:
            t = time.perf_counter()
            try:
                inn.load(f)
                print("LOADED", f)
            except inn.FormatError as err:
                print(f"{{time.perf_counter() - t:.3f}}", err)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(files) and not any(ln.startswith("LOADED") for ln in lines), out.stdout
    assert all(float(ln.split()[0]) < 1.0 for ln in lines), out.stdout
    assert "max_size must be in [1, " in lines[0] and "shape[0] must be an int" in lines[1]
    assert "more than this file's tensors can hold" in lines[2] or "must be in [1, " in lines[2]


def _edit(meta: dict, path: str, value) -> None:
    *keys, last = path.split("/")
    obj = meta
    for k in keys:
        obj = obj[int(k)] if isinstance(obj, list) else obj[k]
    if value is _DELETE:
        del obj[int(last) if isinstance(obj, list) else last]
    elif isinstance(obj, list):
        obj[int(last)] = value
    else:
        obj[last] = value


_DELETE = object()
# (what to change in the metadata, the value, a regex of the error): every field names itself
FIELD_CASES = [
    ("format", "torchinn.Other", r"unknown format 'torchinn.Other'"),
    ("tensor_names", "0.weight", r"tensor_names must be a list of names"),
    ("tensor_names/1", "0.weight", r"tensor_names lists '0.weight' twice"),
    ("trainable/0", "nope", r"trainable names unknown tensor\(s\) \['nope'\]"),
    ("training", 0, r"training must be true or false, got 0"),
    ("groups/0/members/0/1", 7, r"groups\[0\]\.members\[0\] dim must be in \[0, 1\], got 7"),
    ("groups/0/members/0", ["ghost", 0], r"groups\[0\]\.members\[0\] must be \[a tensor name, dim\]"),
    ("groups/0/name", "other", r"partitions must have one entry per group"),
    ("partitions/0.weight:0/type", "bogus", r"partitions\['0\.weight:0'\]\.type must be one of"),
    ("partitions/0.weight:0/size", 0, r"partitions\['0\.weight:0'\]\.size must be in \[1, 16\], got 0"),
    ("partitions/0.weight:0/size", 8.0, r"\.size must be an int in \[1, 16\], got 8\.0"),
    ("partitions/0.weight:0/max_size", 17, r"group '0\.weight:0' has 17 channels .* but the atom has size 16"),
    ("partitions/0.weight:0/quadrature", "magic", r"\.quadrature must be one of"),
    ("partitions/0.weight:0/extra", 1, r"partitions\['0\.weight:0'\] has unknown key\(s\) \['extra'\]"),
    ("functions/0.weight/kind", "sinc", r"functions\['0\.weight'\]\.kind must be one of"),
    ("functions/0.weight/dtype", "int64", r"functions\['0\.weight'\]\.dtype must be one of"),
    ("functions/0.weight/shape", [16, 9], r"functions\['0\.weight'\]\.plan\[1\] covers 8 positions but shape\[1\] is 9"),
    ("functions/0.weight/shape", [16], r"functions\['0\.weight'\]\.plan has 2 dimensions but shape \[16\] has 1"),
    ("functions/0.weight/plan/0/0/0/1", "ghost", r"names unknown group 'ghost'"),
    ("functions/0.weight/plan/0/0/0/2", "yes", r"integrate must be true or false"),
    ("functions/0.weight/block_dims", [[1]], r"block_dims\[0\] must be \[0\]"),
    ("functions/0.weight/plan", _DELETE, r"functions\['0\.weight'\] is missing key\(s\) \['plan'\]"),
    ("functions/ghost", {}, r"functions names unknown tensor\(s\) \['ghost'\]"),
    ("contractions", [{"plan": [[[16, "0.weight:0", False]]], "ndim": 2, "dim": 2, "mean": False}],
     r"contractions\[0\]\.dim must be in \[0, 1\], got 2"),
    ("in_spec", "not json", r"in_spec: not a tree structure"),
    ("out_spec", 3, r"out_spec must be a string, got 3"),
    ("input_shapes", [[None, 8], [1]], r"input_shapes has 2 entries for 1 input\(s\)"),
    ("input_shapes/0/1", -1, r"input_shapes\[0\]\[1\] must be in \[0, "),
    ("pinned/x", 5, r"pinned\['x'\] must be a string, got 5"),
    ("surprise", 1, r"metadata has unknown key\(s\) \['surprise'\]"),
    ("torch", 2, r"torch must be a version string, got 2"),
    ("graph", _DELETE, r"metadata is missing key\(s\) \['graph'\]"),
    ("graph/6/args/t/1", 99, r"graph node 'getitem' takes item 99 of 'tensors', which has 4 items"),
    ("graph/6/args/t/0", {"n": "later"}, r"graph node 'getitem' refers to unknown node 'later'"),
    ("graph/10/args/t", [{"n": "input_1"}] * 9, r"graph node 'linear_default' .* takes at most 3 positional"),
    ("graph/10/args/t", [{"n": "input_1"}], r"graph node 'linear_default' .* is missing argument\(s\) \['weight'\]"),
    ("graph/10/kwargs/d", {"bogus": 1}, r"graph node 'linear_default' .* has no argument\(s\) \['bogus'\]"),
    ("graph/11/name", "linear_default", r"name 'linear_default' is used twice"),
    ("graph/11/args/t/0", {"q": 1}, r"graph node 'relu_default': unknown value tag 'q'"),
    ("graph/11/args/t/0", {"dtype": "load"}, r"unknown dtype 'load'"),
    ("graph/11/args/t/0", {"f": "1e400"}, r"a special float must be one of"),
    ("graph/11/target", "aten::no_such_op.default", r"calls .aten::no_such_op\.default., which is not on torchinn.s list"),
    ("graph/0/name", "x", r"graph placeholder 0 must be named 'tensors', got 'x'"),
    ("graph/5", _DELETE, r"graph has 5 placeholders; expected 5 .* \+ 1 input"),
    ("graph/13/args/t/0", {"t": []}, r"the output must be one list of 1 values"),
    ("graph/13", _DELETE, r"graph has no output node"),
    ("graph/6/op", "call_module", r"graph node 6 must be an object with op in"),
]


@pytest.mark.parametrize("field,value,pattern", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_every_field_is_checked_and_named(small, tmp_path: Path, field: str, value, pattern: str) -> None:
    path, _, _ = small
    meta, tensors = read(path)
    _edit(meta, field, value)
    with pytest.raises(inn.FormatError, match=pattern):
        inn.load(write(tmp_path / "m.inn", meta, tensors))


def test_stored_tensors_are_checked(small, tmp_path: Path) -> None:
    path, _, _ = small
    meta, tensors = read(path)
    for name, change, pattern in [
        ("f/0.weight/0", lambda t: t[:, :4], r"tensor f/0\.weight/0 must be floats of shape \(16, 8\)"),
        ("f/0.weight/0", lambda t: t.double().long(), r"must be floats of shape"),
        ("x/extra", lambda t: torch.zeros(3), r"stores tensors the metadata does not describe: \['x/extra'\]"),
    ]:
        t = dict(tensors)
        t[name] = change(t.get(name, torch.zeros(1))).contiguous()
        with pytest.raises(inn.FormatError, match=pattern):
            inn.load(write(tmp_path / "t.inn", meta, t))


def test_checksum_catches_flipped_bytes_and_nan_never_loads(small, tmp_path: Path) -> None:
    path, x, expected = small
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # a bit of the last tensor's data
    (tmp_path / "flip.inn").write_bytes(bytes(data))
    with pytest.raises(inn.FormatError, match="checksum mismatch"):
        inn.load(tmp_path / "flip.inn")
    with torch.no_grad():  # without the check the damage goes unnoticed: the outputs differ
        assert not torch.equal(inn.load(tmp_path / "flip.inn", verify=False)(x), expected)
    meta, tensors = read(path)
    tensors["f/0.weight/0"][3, 2] = float("nan")
    for sign in (True, False):
        with pytest.raises(inn.FormatError, match=r"tensor 'f/0\.weight/0' has 1 NaN/Inf values"):
            inn.load(write(tmp_path / "nan.inn", meta, tensors, sign=sign), verify=sign)
    m = inn.load(path)
    with torch.no_grad():
        m.functions["0/weight"].blocks[0].values[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"cannot save this model: tensor 'f/0\.weight/0' has 1 NaN/Inf"):
        inn.save(m, tmp_path / "inf.inn")


def test_files_without_a_checksum_still_load(small, tmp_path: Path) -> None:
    path, x, expected = small
    meta, tensors = read(path)
    with torch.no_grad():
        assert torch.equal(inn.load(write(tmp_path / "old.inn", meta, tensors, sign=False))(x), expected)


def test_load_on_the_meta_device(small) -> None:
    path, _, _ = small
    m = inn.load(path, device="meta")
    assert m.sizes() == inn.load(path).sizes()
    assert all(t.device.type == "meta" for t in m.parameters())
    with pytest.raises(ValueError, match=r"device must be a torch device like .* got 'gpu-ish'"):
        inn.load(path, device="gpu-ish")
    with pytest.raises(ValueError, match=r"cannot save a model on the meta device \(tensor 'f/0\.weight/0'"):
        inn.save(m, path.parent / "meta.inn")


def test_a_group_in_no_plan_cannot_declare_a_size(small, tmp_path: Path) -> None:
    """A group that no stored tensor uses is refused: it could otherwise ask for any max_size (and
    Gauss-Legendre nodes cost O(n^2) memory)."""
    path, _, _ = small
    meta, tensors = read(path)
    meta["groups"].append({"name": "ghost", "members": []})
    meta["partitions"]["ghost"] = {"type": "uniform", "max_size": 4000, "quadrature": "gauss-legendre", "size": 1}
    with pytest.raises(inn.FormatError, match=r"groups \['ghost'\] are in no tensor's plan"):
        inn.load(write(tmp_path / "g.inn", meta, tensors))


def test_a_malformed_checksum_is_named_even_unverified(small, tmp_path: Path) -> None:
    path, _, _ = small
    meta, tensors = read(path)
    meta["sha256"] = "abc"
    save_file(tensors, str(tmp_path / "s.inn"), metadata={"torchinn": json.dumps(meta)})
    with pytest.raises(inn.FormatError, match="checksum mismatch"):
        inn.load(tmp_path / "s.inn")
    with pytest.raises(inn.FormatError, match=r"sha256 must be 64 hex digits, got 'abc'"):
        inn.load(tmp_path / "s.inn", verify=False)


def test_trainable_partition_tensors_are_checked(tmp_path: Path) -> None:
    from torchinn.maths.trainable import TrainablePartition

    torch.manual_seed(0)
    imodel = inn.convert(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
                         (torch.randn(2, 4),))
    imodel.resize(0.5)
    imodel.set_partition("0.weight:0", TrainablePartition(imodel.partition("0.weight:0")))
    inn.save(imodel, tmp_path / "t.inn")
    meta, tensors = read(tmp_path / "t.inn")
    for name, value, pattern in [
        ("p/0.weight:0/free", lambda t: torch.zeros_like(t), r"free must be 5 uint8 flags \(0 or 1, at least one 1\)"),
        ("p/0.weight:0/free", lambda t: t * 2, r"free must be 5 uint8 flags"),
        ("p/0.weight:0/free", lambda t: t.bool(), r"free must be 5 uint8 flags"),
        ("p/0.weight:0/delta", lambda t: t[:1], r"delta must hold 2 to 9 floats \(size \+ 1 gaps\), got 1"),
        ("p/0.weight:0/delta", lambda t: torch.cat([t, t]), r"delta must hold 2 to 9 floats \(size \+ 1 gaps\), got 10"),
        ("p/0.weight:0/delta", lambda t: t[:-1], r"free must be 4 uint8 flags"),
    ]:
        changed = dict(tensors, **{name: value(tensors[name]).contiguous()})
        with pytest.raises(inn.FormatError, match=rf"partitions\['0\.weight:0'\]: {pattern}"):
            inn.load(write(tmp_path / "bad.inn", meta, changed))
    meta["partitions"]["0.weight:0"]["eps"] = 2.0
    with pytest.raises(inn.FormatError, match=r"partitions\['0\.weight:0'\]\.eps must be a number in \[0, 1\), got 2\.0"):
        inn.load(write(tmp_path / "bad.inn", meta, tensors))


def test_a_constant_with_inf_round_trips_but_nan_does_not(tmp_path: Path) -> None:
    """A tensor constant that is not trained (an attention-style mask) may hold -inf; never NaN."""

    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
            self.mask = torch.tensor([0.0, float("-inf"), 0.0])  # a plain attribute: a lifted constant

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.b(torch.relu(self.a(x))) + self.mask, -1)

    torch.manual_seed(0)
    x = torch.randn(2, 4)
    imodel = inn.convert(Masked().eval(), (x,))
    inn.save(imodel, tmp_path / "m.inn")
    with torch.no_grad():
        out = inn.load(tmp_path / "m.inn")(x)
        assert torch.equal(out, imodel(x)) and bool((out[:, 1] == 0).all())
    meta, tensors = read(tmp_path / "m.inn")
    tensors["x/mask"][0] = float("nan")
    with pytest.raises(inn.FormatError, match=r"tensor 'x/mask' has 1 NaN values"):
        inn.load(write(tmp_path / "nan.inn", meta, tensors))


def test_selection_partition_round_trips(tmp_path):
    """A start from torchinn.compression.starts (points on selected channels, unit scales, trained mix)
    saves and loads to the same outputs."""
    from torchinn.compression.importance import channel_importance
    from torchinn.compression.starts import start_partition

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    imodel = inn.convert(net, (torch.randn(2, 8),))
    imodel.resize(0.5)
    scores = channel_importance(imodel)
    for n, p in imodel.partition_map().items():
        imodel.set_partition(n, start_partition(p, p.size, "l1", scores[n]))
    with torch.no_grad():
        next(iter(imodel.partition_map().values())).mix_raw.fill_(0.25)
    inn.save(imodel, tmp_path / "m.inn")
    again = inn.load(tmp_path / "m.inn")
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(again(x), imodel(x))
    (p,) = again.partition_map().values()
    assert float(p.mix.detach()) == 0.25 and p.mix_raw.requires_grad


def test_module_names_with_slashes_save_and_load(tmp_path: Path) -> None:
    """onnx2torch names its modules after the ONNX nodes ('p2o/Conv/0'): such a network converts,
    compresses and must save too, keeping its names."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("p2o/Conv/0", torch.nn.Conv2d(3, 8, 3, padding=1))
    model.add_module("p2o/Relu/0", torch.nn.ReLU())
    model.add_module("p2o/Conv/1", torch.nn.Conv2d(8, 4, 3, padding=1))
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    imodel = inn.convert(model, (x,))
    assert "p2o/Conv/0.weight" in imodel.tensor_names
    inn.resize(imodel, {imodel.group_names[0]: 5})
    inn.save(imodel, tmp_path / "slash.inn")
    back = inn.load(tmp_path / "slash.inn")
    assert back.tensor_names == imodel.tensor_names and back.group_names == imodel.group_names
    assert back.sizes() == imodel.sizes() == {imodel.group_names[0]: 5}
    with torch.no_grad():
        assert torch.equal(back(x), imodel(x))
