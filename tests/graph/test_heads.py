"""Attention heads are removed whole: the head size stays, the heads are the group (GQA-aware)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .helpers import check_converts


class Attention(nn.Module):
    """A block with fused q/k/v, ``kind`` of attention, and a grouped-query variant."""

    def __init__(self, kind: str, heads: int = 4, kv_heads: int = 4, d: int = 4) -> None:
        super().__init__()
        self.kind, self.h, self.kv, self.d = kind, heads, kv_heads, d
        self.embed = nn.Linear(8, heads * d)
        self.qkv = nn.Linear(heads * d, (heads + 2 * kv_heads) * d)
        self.o = nn.Linear(heads * d, heads * d)
        self.out = nn.Linear(heads * d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        x = self.embed(x)
        q, k, v = self.qkv(x).split([self.h * self.d, self.kv * self.d, self.kv * self.d], -1)
        q = q.view(b, t, -1, self.d).transpose(1, 2)
        k, v = (z.view(b, t, -1, self.d).transpose(1, 2) for z in (k, v))
        if self.kind == "sdpa_gqa":
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        elif self.kind == "repeat_kv":
            r = self.h // self.kv
            k, v = (z[:, :, None].expand(b, self.kv, r, t, self.d).reshape(b, self.h, t, self.d) for z in (k, v))
            y = F.scaled_dot_product_attention(q, k, v)
        elif self.kind == "einsum":
            a = torch.einsum("bhqd,bhkd->bhqk", q, k).mul(self.d ** -0.5).softmax(-1)
            y = torch.einsum("bhqk,bhkd->bhqd", a, v)
        else:  # eager matmul
            a = (q @ k.transpose(-1, -2) * self.d ** -0.5).softmax(-1)
            y = a @ v
        y = y.transpose(1, 2).reshape(b, t, self.h * self.d)
        return self.out(x + self.o(y))


@pytest.mark.parametrize("kind,heads,kv", [("eager", 4, 4), ("einsum", 4, 4), ("sdpa_gqa", 4, 2),
                                           ("repeat_kv", 6, 2)])
def test_heads_are_the_group_and_the_head_size_stays(kind: str, heads: int, kv: int) -> None:
    torch.manual_seed(0)
    model = Attention(kind, heads, kv)
    imodel = check_converts(model, torch.randn(2, 5, 8), {"qkv.weight:0": 1})
    group = imodel.groups["qkv.weight:0"]
    assert group.max_size == kv  # key/value heads; each takes its heads // kv queries along
    plan = [[(a.size, a.group) for a in seg] for seg in imodel.plans()["qkv.weight"][0]]
    if heads == kv:  # q, k, v: three copies of the same channels, laid out as (3 x heads x size)
        assert plan == [[(3, None), (kv, group.name), (4, None)]]
    else:  # queries: (kv heads x (queries per kv head x head size)); keys, values: (kv heads x size)
        assert plan == [[(kv, group.name), (heads // kv * 4, None)], [(kv, group.name), (4, None)],
                        [(kv, group.name), (4, None)]]
    small = imodel.to_discrete()
    assert small.get_parameter("qkv.weight").shape[0] == (heads // kv + 2) * 4  # one kv head left
    assert small.get_parameter("o.weight").shape[1] == heads // kv * 4
