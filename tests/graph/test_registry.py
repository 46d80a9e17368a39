"""torchinn.graph.registry: built-in handlers registered at import, a user's handler kept,
double registration refused, view-like ops declared with their handler, the pointwise rule;
and the TSP solver registry (torchinn.model.tsp.register_solver)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.model import tsp
from torchinn.graph import registry
from torchinn.graph.registry import (
    OPS,
    VIEWS,
    handler,
    is_pointwise,
    register_op,
    view_rule,
)
from torchinn.model.permute import order_channels

aten = torch.ops.aten
SRC = Path(inn.__file__).resolve().parents[1]


@pytest.fixture
def restore_registry():
    ops, views = dict(OPS), dict(VIEWS)
    yield
    OPS.clear()
    OPS.update(ops)
    VIEWS.clear()
    VIEWS.update(views)


def run_fresh(code: str) -> str:
    """``code`` in a new Python process (nothing of torchinn imported yet); its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC)] + sys.path))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_torchinn_register_op_is_the_registry_one() -> None:
    assert inn.register_op is register_op
    assert "register_op" in inn.__all__


def test_user_handlers_registered_before_the_first_convert_are_used() -> None:
    """The bug: built-ins were registered inside the first analyse() and replaced a user's."""
    out = run_fresh("""
        import torch, torchinn
        from torch import nn
        aten = torch.ops.aten
        calls = []
        builtin = torchinn.graph.OPS[aten.hardswish]

        @torchinn.register_op(aten.hardswish, override=True)   # replaces a built-in
        def mine(an, node):
            calls.append("hardswish")
            return builtin(an, node)

        @torchinn.register_op(aten.logcumsumexp)   # an op torchinn does not know
        def along(an, node):
            calls.append("logcumsumexp")
            x = an.tensor_label(node.args[0])
            an.pin(x[node.args[1] % len(x)], node, "logcumsumexp along channels")
            return list(x)

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 2)
            def forward(self, x):
                return self.c(torch.logcumsumexp(self.b(nn.functional.hardswish(self.a(x))), 0))

        im = torchinn.convert(M().eval(), (torch.randn(3, 4),))   # the first convert
        print(sorted(calls), im.sizes())
    """)
    assert out.strip() == "['hardswish', 'logcumsumexp'] {'a.weight:0': 8, 'b.weight:0': 6}"


def test_builtin_handlers_are_registered_at_import() -> None:
    out = run_fresh("""
        import torch, torchinn.graph.analysis as a   # any module of the package
        aten = torch.ops.aten
        print(all(op in a.OPS for op in (aten.conv2d, aten.linear, aten.view, aten.softmax)))
    """)
    assert out.strip() == "True"


def test_a_second_handler_for_an_op_needs_override(restore_registry) -> None:
    with pytest.raises(ValueError, match=r"op aten\.linear already has a handler \(torchinn\.graph\.ops\.linear\._linear\); "
                                         r"pass override=True"):
        register_op(aten.linear)(lambda an, node: None)
    assert OPS[aten.linear].__name__ == "_linear"  # nothing changed

    def mine(an, node):
        return None

    register_op(aten.linear, override=True)(mine)
    assert handler(aten.linear.default) is mine
    register_op(aten.linear.default)(mine)  # an overload is more specific than its packet: allowed
    with pytest.raises(ValueError, match="already has a handler"):
        register_op(aten.linear.default)(mine)


def test_register_op_refuses_what_is_not_an_op() -> None:
    with pytest.raises(TypeError, match=r"register_op needs ops such as torch\.ops\.aten\.relu .* got 'relu' of type str"):
        register_op("relu")
    with pytest.raises(TypeError, match="at least one op"):
        register_op()
    with pytest.raises(TypeError, match="view must be a function"):
        register_op(aten.logcumsumexp, view=1)  # type: ignore[arg-type]


def test_view_like_ops_are_declared_with_their_handler(restore_registry) -> None:
    for op in (aten.contiguous, aten.clone, aten.transpose, aten.permute, aten.t, aten.split, aten.chunk):
        assert view_rule(op) is not None, op
    for op in (aten.view, aten.linear, aten.tensor_split, aten.relu):
        assert view_rule(op) is None, op
    register_op(aten.t, override=True)(lambda an, node: None)  # a new handler without view=
    assert view_rule(aten.t) is None


def test_a_transposed_weight_is_still_the_weight() -> None:
    """matmul against ``w.t()`` integrates the parameter (its quadrature is fused), through the
    view rules of ``t`` and ``permute``."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.w = nn.Parameter(torch.randn(3, 8))
            self.v = nn.Parameter(torch.randn(8, 3))

        def forward(self, x):
            h = self.a(x)
            return h @ self.w.t() + h @ self.v.permute(1, 0).permute(1, 0)

    torch.manual_seed(0)
    from torchinn.graph.analysis import analyse
    from torchinn.graph.trace import trace

    an = analyse(trace(M().eval(), (torch.randn(2, 4),)))
    assert sorted((name, dim) for name, dim, *_ in an.integrate_requests) == [("v", 0), ("w", 1)]
    assert not an.contractions


def test_every_pointwise_op_and_its_in_place_variant_have_a_handler() -> None:
    checked = 0
    for name in dir(aten):
        packet = getattr(aten, name)
        for o in getattr(packet, "overloads", list)():
            op = getattr(packet, o)
            if torch.Tag.pointwise not in op.tags:
                continue
            assert handler(op) is not None, op
            inplace = getattr(getattr(aten, name + "_", None), o, None)
            if inplace is not None and torch.Tag.inplace in inplace.tags:
                assert is_pointwise(inplace) and handler(inplace) is not None, inplace
                checked += 1
    assert checked > 100  # relu_, sigmoid_, add_ ... (about 150 in torch 2.13)


def test_pointwise_rule_marks_only_pointwise_ops() -> None:
    assert is_pointwise(aten.relu6_.default)  # not tagged itself; relu6 is
    assert is_pointwise(aten.add_.Tensor)
    assert not is_pointwise(aten.conv2d.default)
    assert not is_pointwise(aten.cumsum_.default)
    assert not is_pointwise(aten.relu6)  # a packet: its overloads are looked at one by one
    assert handler(aten.erfinv.default) is registry._pointwise
    assert handler(aten.special_i0.default) is None  # not marked pointwise by torch


# -- TSP solvers ------------------------------------------------------------------------------

CALLS: list[tuple[int, int, float | None]] = []


@pytest.fixture
def custom_solver():
    """A solver that walks the channels sorted by their distance to channel 0."""

    @tsp.register_solver("by_distance")
    def by_distance(D: np.ndarray, seed: int, time_limit: float | None) -> np.ndarray:
        CALLS.append((len(D), seed, time_limit))
        return np.argsort(D[0], kind="stable")

    CALLS.clear()
    yield "by_distance"
    del tsp.SOLVERS["by_distance"]


def test_builtin_solvers_are_registered() -> None:
    assert {"local", "fast_tsp"} <= set(tsp.SOLVERS)


def test_a_registered_solver_is_used_by_order_channels_and_convert(custom_solver) -> None:
    values = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 6.0, 8.0, 7.0, 11.0, 10.0])
    x = values.reshape(12, 1)
    perm = order_channels([(x, 0)], solver="by_distance", seed=3, time_limit=0.5)
    assert CALLS == [(12, 3, 0.5)]
    assert values[perm].tolist() == sorted(values.tolist())  # the solver's order (the best one here)
    config = inn.ConvertConfig(tsp_solver="by_distance", tsp_time_limit=0.25)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 2)).eval()
    imodel = inn.convert(net, (torch.randn(2, 3),), config)
    assert CALLS[1:] == [(12, 0, 0.25)]
    # the solver's path is no longer in float64; the total variations are summed in the weights'
    # dtype, so an order as good as the first can measure a few ulps more
    assert imodel.report["tv_after"] <= imodel.report["tv_before"] * (1 + 1e-6)


def test_unknown_solver_names_the_registered_ones(custom_solver) -> None:
    with pytest.raises(ValueError, match=r"tsp_solver must be one of the registered TSP solvers "
                                         r"\['by_distance', 'fast_tsp', 'local'\], got '2opt'"):
        inn.ConvertConfig(tsp_solver="2opt")
    with pytest.raises(ValueError, match=r"solver must be one of the registered TSP solvers"):
        tsp.solve_path(torch.zeros(3, 3), solver="2opt")


def test_a_solver_name_is_registered_once(custom_solver) -> None:
    with pytest.raises(ValueError, match=r"a TSP solver named 'by_distance' is already registered; pass override=True"):
        tsp.register_solver("by_distance")
    with pytest.raises(TypeError, match="a solver name must be a non-empty str"):
        tsp.register_solver("")

    @tsp.register_solver("by_distance", override=True)
    def bad(D, seed, time_limit):
        return np.zeros(len(D), dtype=np.int64)

    D = torch.rand(12, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"TSP solver 'by_distance' must return an order of the 12 channels"):
        tsp.solve_path(D + D.T, solver="by_distance")
