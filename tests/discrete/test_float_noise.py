"""tolerance.float_noise: the float64 reference computed op by op (no float64 copy of the network)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from torchinn.discrete import tolerance
from torchinn_demo.zoo import ZOO


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "vit_timm"])
def test_op_by_op_float64_equals_a_float64_copy(name):
    torch.manual_seed(0)
    model, inputs = ZOO[name]()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    wide = copy.deepcopy(model).double()
    with torch.no_grad():
        want = tolerance.relative_error(wide(*[x.double() for x in inputs]), model(*inputs))
    got = tolerance.float_noise(model, inputs)
    assert 0 < got == pytest.approx(want, rel=1e-6)
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)


def test_a_module_that_cannot_run_op_by_op_is_copied_only_when_small(monkeypatch):
    def refuse(self, func, types, args=(), kwargs=None):
        raise RuntimeError("this op cannot run in float64")

    monkeypatch.setattr(tolerance._Wide, "__torch_function__", refuse)
    torch.manual_seed(0)
    model, inputs = ZOO["mlp"]()
    model.eval()
    assert 0 < tolerance.float_noise(model, inputs) < 1e-6  # a float64 copy ran instead
    monkeypatch.setattr(tolerance, "COPY_BYTES", 0)  # too big to copy: no estimate rather than a copy
    assert tolerance.float_noise(model, inputs) == math.inf
