"""The compressed network leaves torchinn: ``to_discrete()`` models through torch.compile,
torch.export, TorchScript and ONNX (run with onnxruntime), outputs equal to 1e-5.

Each zoo model is converted (without the channel permutation: it changes weight values, not the
graph that is exported), every group is resized to half its channels, and ``to_discrete()``
gives the plain ``torch.fx.GraphModule`` that every route starts from. Outputs are compared with
the GraphModule's own eager outputs: ``max |a - b| <= 1e-5 * max(1, max |b|)`` (U-Net outputs
reach ~300, where float32 rounding alone exceeds 1e-5 absolute).

What does not work, checked here so the docs stay honest:

* ``torch.jit.script`` cannot compile the GraphModule: its code calls ATen overloads
  (``torch.ops.aten.conv2d.default(...)``) and TorchScript rejects attribute lookup on builtin
  ops. Replacing every overload by its overload packet (``torch.ops.aten.conv2d``) makes it
  scriptable; ``test_jit_script_after_overload_rewrite`` does that. ``torch.jit.trace`` works
  directly.
* ``torch.jit.trace`` freezes the batch size of networks whose graph computes shapes from it
  (the ViTs' ``reshape(B, N, 3, heads, d)``, class-token ``expand``): the traced ViT runs only
  at the traced batch size. Convolutional networks trace with a free batch size. torch.export
  and ONNX keep the batch dimension symbolic for every model here.
"""

from __future__ import annotations

import copy
import io
import logging
import shutil
import warnings

import pytest
import torch
from torch.export import Dim

from conftest import converted

MODELS = ["resnet_basic", "mobilenet_v2", "vit_timm", "edsr", "unet"]
# jit.trace bakes the batch size into these graphs' reshape/expand arguments (see the docstring)
TRACE_FIXED_BATCH = {"vit_timm", "vit_mha"}

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning",
    "ignore::torch.jit.TracerWarning")


def _close(got, ref, tol: float = 1e-5) -> None:
    got_leaves, ref_leaves = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(ref)
    assert len(got_leaves) == len(ref_leaves)
    for g, r in zip(got_leaves, ref_leaves):
        g = torch.as_tensor(g)
        assert g.shape == r.shape
        err = float((g - r).abs().max())
        assert err <= tol * max(1.0, float(r.abs().max())), f"max abs error {err:.3g}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models on a shared machine: one thread is faster and steadier
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    """(name, discrete half-size model, inputs, inputs at batch 3, reference outputs for both)."""
    torch.manual_seed(0)
    model, inputs, imodel = converted(request.param)
    imodel.resize(0.5)
    small = imodel.to_discrete(graph=True).eval()
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    other = (torch.randn(3, *inputs[0].shape[1:]),)
    with torch.no_grad():
        ref, ref_other = small(*inputs), small(*other)
        _close(imodel(*inputs), ref)  # the discrete network is the integral one at these sizes
    return request.param, small, inputs, other, ref, ref_other


def test_torch_compile_eager(case):
    _, small, inputs, other, ref, ref_other = case
    compiled = torch.compile(small, backend="eager")
    with torch.no_grad():
        _close(compiled(*inputs), ref)
        _close(compiled(*other), ref_other)


def test_torch_export_dynamic_batch_and_save_load(case):
    _, small, inputs, other, ref, ref_other = case
    program = torch.export.export(small, inputs, dynamic_shapes=({0: Dim("batch")},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    for prog in (program, loaded):
        module = prog.module()
        with torch.no_grad():
            _close(module(*inputs), ref)
            _close(module(*other), ref_other)


def test_jit_trace_and_save_load(case):
    name, small, inputs, other, ref, ref_other = case
    with torch.no_grad():
        traced = torch.jit.trace(small, inputs)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    with torch.no_grad():
        _close(traced(*inputs), ref)
        _close(loaded(*inputs), ref)
        if name in TRACE_FIXED_BATCH:
            with pytest.raises(RuntimeError):  # documented: the trace keeps batch size 2
                loaded(*other)
        else:
            _close(loaded(*other), ref_other)


def test_jit_script_rejects_aten_overloads(case):
    """Documented limitation: TorchScript cannot compile ``torch.ops.aten.<op>.<overload>`` calls.
    If a torch release lifts it, this test fails and the docs should say scripting works."""
    _, small, *_ = case
    assert "torch.ops.aten." in small.code
    with pytest.raises(RuntimeError, match="attribute lookup is not defined on builtin"):
        torch.jit.script(small)


def test_jit_script_after_overload_rewrite(case):
    """The workaround from the to_discrete docstring: call overload packets instead."""
    _, small, inputs, other, ref, ref_other = case
    small = copy.deepcopy(small)  # the fixture's model is shared with the other tests
    for node in small.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            node.target = node.target.overloadpacket
    small.recompile()
    scripted = torch.jit.script(small)
    with torch.no_grad():
        _close(scripted(*inputs), ref)
        _close(scripted(*other), ref_other)


def test_onnx_dynamo_onnxruntime(case, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, small, inputs, other, ref, ref_other = case
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(small, inputs, dynamo=True, verbose=False,
                                        dynamic_shapes=({0: Dim("batch")},))
    finally:
        onnx_log.setLevel(level)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch_dim = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str), f"batch dimension should be symbolic, got {batch_dim!r}"
    for x, r in ((inputs[0], ref), (other[0], ref_other)):
        (out,) = session.run(None, {name: x.numpy()})
        _close(torch.from_numpy(out), r)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor's CPU backend needs a C++ compiler")
def test_torch_compile_inductor():
    """The default backend on one model (generating and compiling C++ takes ~10 s)."""
    _, inputs, imodel = converted("resnet_basic")
    imodel.resize(0.5)
    small = imodel.to_discrete(graph=True).eval()
    with torch.no_grad():
        ref = small(*inputs)
        _close(torch.compile(small)(*inputs), ref)
