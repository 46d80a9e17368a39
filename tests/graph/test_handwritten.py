"""Hand-written transformers (nanoGPT / litgpt style): ``torch.outer`` for the RoPE frequencies
and ``repeat_interleave`` for grouped-query keys and values are followed, and the shipped Llama
written in plain PyTorch (:mod:`torchinn_demo.handwritten_llama`) gets the groups of its
``transformers`` class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchinn as inn

from .helpers import check_converts, rel_err


# -- aten.outer ---------------------------------------------------------------------------------

class Outer(nn.Module):
    """Channels times a vector (``outer``), and a sinusoidal table ``outer(positions, freq)``
    added to the channels; ``freq`` a buffer (a frequency table) or a parameter."""

    def __init__(self, learned: bool) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.c = nn.Linear(4, 10)
        self.d = nn.Linear(10, 3)
        self.s = nn.Parameter(torch.randn(5))
        freq = torch.rand(10) + 0.1
        if learned:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.outer(self.a(x[0]), self.s)  # (6, 5): a's channels x s
        t = torch.arange(x.shape[0], dtype=x.dtype)
        pe = torch.outer(t, self.freq).sin()  # (T, 10): positions x frequencies
        return self.b(h.t()), self.d(self.c(x) + pe)


@pytest.mark.parametrize("learned", [False, True])
def test_outer_follows_its_inputs_axes_and_keeps_a_frequency_table(learned: bool) -> None:
    torch.manual_seed(0)
    model = Outer(learned).eval()
    x = torch.randn(7, 4)
    imodel = inn.convert(model, (x,), inn.ConvertConfig(tsp_time_limit=0.05))
    with torch.no_grad():
        for got, ref in zip(imodel(x), model(x)):
            assert rel_err(got, ref) <= 1e-5
    assert imodel.groups["a.weight:0"].max_size == 6  # outer's rows: a's channels (b reads them)
    assert "s:0" not in str(list(imodel.groups))  # its columns: the network output's rows
    if learned:  # a learned vector is channels: c's outputs and freq are one group
        group = imodel.groups["freq:0"]
        assert group.max_size == 10 and len(group.members) == 4  # freq, c.weight:0, c.bias, d.weight:1
    else:  # a buffer is a table of frequencies: kept whole, and c's outputs added to it with it
        assert "c.weight:0" not in imodel.groups
        assert "'freq' is a table of positions or frequencies in an outer product" in imodel.pinned["c.weight:0"]
    imodel.resize(0.5)
    small = imodel.to_discrete()
    assert small.a.out_features == 3 and small.b.in_features == 3
    assert small.c.out_features == (5 if learned else 10)
    with torch.no_grad():
        for got, ref in zip(small(x), imodel(x)):
            assert rel_err(got, ref) <= 1e-5


# -- aten.repeat_interleave ---------------------------------------------------------------------

class Interleave(nn.Module):
    """``a``'s 3 channels each repeated twice, added to ``c``'s 6: ``c``'s outputs are (a x 2)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Linear(8, 3)
        self.c = nn.Linear(8, 6)
        self.b = nn.Linear(6, 2)
        self.register_buffer("counts", torch.tensor([2]) if how == "count tensor" else torch.tensor([2, 2, 2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.how == "dim":
            h = h.repeat_interleave(2, dim=1)
        elif self.how == "output_size":
            h = h.repeat_interleave(2, dim=1, output_size=2 * self.a.out_features)
        elif self.how == "flat":  # no dim: the flattened tensor
            h = h.repeat_interleave(2).view(x.shape[0], -1)
        else:  # a tensor of counts: one for all, or one per channel
            h = h.repeat_interleave(self.counts, dim=1, output_size=2 * self.a.out_features)
        return self.b(h + self.c(x))


@pytest.mark.parametrize("how", ["dim", "output_size", "flat", "count tensor"])
def test_repeat_interleave_ties_each_channel_to_its_copies(how: str) -> None:
    torch.manual_seed(0)
    imodel = check_converts(Interleave(how), torch.randn(4, 8), 0.5)
    group = imodel.groups["a.weight:0"]
    assert group.max_size == 3 and group.size == 2  # one group: c's 6 outputs are a's 3 channels x 2
    assert "c.weight:0" not in imodel.groups
    plan = [[(a.size, a.group) for a in seg] for seg in imodel.plans()["c.weight"][0]]
    assert plan == [[(3, group.name), (2, None)]]
    small = imodel.to_discrete()
    assert (small.a.out_features, small.c.out_features, small.b.in_features) == (2, 4, 4)


def test_repeat_interleave_with_one_count_per_channel_keeps_them_whole() -> None:
    torch.manual_seed(0)
    imodel = check_converts(Interleave("counts per channel"), torch.randn(4, 8), 0.5)
    assert "a.weight:0" not in imodel.groups and "counts:0" not in imodel.groups
    assert "repeat_interleave with a tensor of counts" in imodel.pinned["a.weight:0"]


# -- the shipped Llama, hand-written ------------------------------------------------------------

@pytest.fixture(scope="module")
def llama() -> tuple[nn.Module, torch.Tensor]:
    hl = pytest.importorskip("torchinn_demo.handwritten_llama")
    from torchinn_demo import lm

    model, _ = hl.load()
    x = lm.windows(lm.tokens(lm.texts()[1]), 64)[:2]
    return model, x


@pytest.fixture(scope="module")
def llama_integral(llama) -> inn.IntegralModel:
    model, x = llama
    return inn.convert(model, (x,), inn.ConvertConfig(hidden=False, tsp_time_limit=0.05))


def test_handwritten_llama_is_the_transformers_model(llama) -> None:
    pytest.importorskip("transformers")
    from torchinn_demo import lm

    model, x = llama
    hf, _ = lm.load()
    with torch.no_grad():
        assert rel_err(model(x), hf(x).logits) <= 1e-5


def test_handwritten_llama_converts_exactly_with_the_groups_of_its_transformers_class(llama, llama_integral) -> None:
    model, x = llama
    with torch.no_grad():
        assert rel_err(llama_integral(x), model(x)) <= 1e-5
    groups = llama_integral.groups
    for i in range(4):  # per layer: 2 key/value heads (q, k, v, o) and 512 MLP channels (w1, w3, w2)
        heads, mlp = groups[f"layers.{i}.attention.wq.weight:0"], groups[f"layers.{i}.feed_forward.w1.weight:0"]
        assert (heads.max_size, len(heads.members), mlp.max_size, len(mlp.members)) == (2, 4, 512, 3)
    assert len(groups) == 8
    plans = llama_integral.plans()
    atoms = lambda name: [[[(a.size, a.group is not None) for a in seg] for seg in dim] for dim in plans[name]]
    # queries: (kv heads x (2 queries x head size 32)); keys: (kv heads x 32); o reads the queries' layout
    assert atoms("layers.0.attention.wq.weight") == [[[(2, True), (64, False)]], [[(128, False)]]]
    assert atoms("layers.0.attention.wk.weight") == [[[(2, True), (32, False)]], [[(128, False)]]]
    assert atoms("layers.0.attention.wo.weight") == [[[(128, False)]], [[(2, True), (64, False)]]]


def test_handwritten_llama_groups_are_those_of_the_transformers_class(llama, llama_integral) -> None:
    pytest.importorskip("transformers")
    from torchinn_demo import lm

    hf, _ = lm.load()
    imodel = inn.convert(hf, (llama[1],), inn.ConvertConfig(tsp_time_limit=0.05))
    rename = lambda n: n.replace("model.", "").replace("self_attn.q_proj", "attention.wq").replace(
        "mlp.gate_proj", "feed_forward.w1")
    assert {rename(n): (g.max_size, len(g.members)) for n, g in imodel.groups.items()} == {
        n: (g.max_size, len(g.members)) for n, g in llama_integral.groups.items()}
    hf_plans, plans = imodel.plans(), llama_integral.plans()
    layout = lambda plan: [[[(a.size, a.group is not None, a.integrate) for a in seg] for seg in dim] for dim in plan]
    for hf_name, name in (("self_attn.q_proj", "attention.wq"), ("self_attn.k_proj", "attention.wk"),
                          ("self_attn.v_proj", "attention.wv"), ("self_attn.o_proj", "attention.wo"),
                          ("mlp.gate_proj", "feed_forward.w1"), ("mlp.down_proj", "feed_forward.w2")):
        for i in range(4):
            assert layout(hf_plans[f"model.layers.{i}.{hf_name}.weight"]) == layout(plans[f"layers.{i}.{name}.weight"])


def test_handwritten_llama_at_half_size_is_a_smaller_handwritten_llama(llama, llama_integral) -> None:
    hl = pytest.importorskip("torchinn_demo.handwritten_llama")
    model, x = llama
    llama_integral.resize(0.5)
    try:
        small = llama_integral.to_discrete()
        with torch.no_grad():
            got, ref = small(x), llama_integral(x)
    finally:
        llama_integral.resize(1.0)
    assert type(small) is hl.HandwrittenLlama
    attn, mlp = small.layers[0].attention, small.layers[0].feed_forward
    assert (attn.n_head, attn.n_kv_head, attn.head_dim, attn.n_rep) == (2, 1, 32, 2)
    assert (attn.wq.out_features, attn.wk.out_features, attn.wo.in_features, mlp.w1.out_features) == (64, 32, 64, 256)
    assert rel_err(got, ref) <= 1e-4
    assert model.layers[0].attention.n_kv_head == 2  # the user's model is untouched


def test_compress_handwritten_llama(llama) -> None:
    hl = pytest.importorskip("torchinn_demo.handwritten_llama")
    model, x = llama
    # hidden=False: the residual stream stays (shrinking it returns the graph module, as for the
    # transformers class with hidden=True: its RMSNorm means over the stream stay in the graph)
    config = inn.ConvertConfig(hidden=False, tsp_time_limit=0.05)
    small, report = inn.compress(model, (x,), 0.5, tune=False, config=config)
    assert type(small) is hl.HandwrittenLlama
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert abs(n(small) / n(model) - 0.5) <= 0.02
    with torch.no_grad():
        out = small(x)
    assert out.shape == (2, 64, 256) and bool(torch.isfinite(out).all())
    assert len(report.sizes) == 8 and report.params_after < report.params_before
    assert all(after <= before for before, after in report.sizes.values())
