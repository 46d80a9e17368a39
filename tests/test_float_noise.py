"""tolerance.float_noise: the float64 reference computed op by op (no float64 copy of the network)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from torchinn import tolerance
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


class _Picky(nn.Module):
    """Refuses to run in anything but float32 (as code that reads a dtype back may)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if self.lin.weight.dtype != x.dtype:
            raise RuntimeError("mixed dtypes")
        return self.lin(x)


def test_a_module_that_cannot_run_op_by_op_is_copied_only_when_small(monkeypatch):
    torch.manual_seed(0)
    picky = _Picky().eval()
    x = (torch.randn(2, 4),)
    assert tolerance.float_noise(picky, x) < 1e-6  # the copy runs in float64 throughout
    monkeypatch.setattr(tolerance, "COPY_BYTES", 0)  # too big to copy: no estimate, not a copy
    assert tolerance.float_noise(picky, x) == math.inf
