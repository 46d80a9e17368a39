"""Convert without a second copy of the weights: the traced tensors are permuted in place and
become the functions' control values; the results are bit-identical to the copying way."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import torchinn as inn
from torchinn.maths import structured
from torchinn.maths.structured import Atom, StructuredFunction
from torchinn.model import convert as convert_module
from torchinn.model import permute
from torchinn_demo.zoo import ZOO


def _permuted_copy(t, d, start, length, sizes, k, perm):
    """The copying permutation convert used before (the reference)."""
    block = t.narrow(d, start, length)
    shaped = block.reshape(list(t.shape[:d]) + sizes + list(t.shape[d + 1:]))
    out = t.clone()
    out.narrow(d, start, length).copy_(shaped.index_select(d + k, perm).reshape(block.shape))
    return out


def _square_by_indices(pairs, n):
    out = torch.zeros(n, n, dtype=pairs.dtype)
    i, j = torch.triu_indices(n, n, offset=1)
    out[i, j] = pairs
    out[j, i] = pairs
    return out


def test_permute_in_place_equals_the_copy():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(5, 2 * 3 * 4 + 7, 3, generator=gen)
    perm = torch.tensor([2, 0, 1])
    original = t.clone()
    want = _permuted_copy(t, 1, 7, 24, [2, 3, 4], 1, perm)
    ptr = t.data_ptr()
    got = convert_module._permute_(t, 1, 7, 24, [2, 3, 4], 1, perm)
    assert got.data_ptr() == ptr  # in place
    assert torch.equal(got, want) and not torch.equal(got, original)
    assert torch.equal(got[:, :7], original[:, :7])  # outside the segment: as it was
    # a non-contiguous tensor is copied (left as it was), with the same values
    nc = torch.randn(6, 4, generator=gen).T
    kept = nc.clone()
    perm4 = torch.tensor([3, 1, 0, 2])
    assert torch.equal(convert_module._permute_(nc, 0, 0, 4, [4], 0, perm4), kept[perm4])
    assert torch.equal(nc, kept)


def test_square_equals_the_indexed_fill():
    for n in (1, 2, 3, 255, 256, 257, 600):
        x = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
        pairs = F.pdist(x, p=1).double()
        got = permute._square(pairs, n)
        assert torch.equal(got, _square_by_indices(pairs, n))
        if n > 1:
            assert float(got[0, n - 1]) == float((x[0] - x[n - 1]).abs().sum())


def test_taken_tensor_is_the_control_values(monkeypatch):
    plan = (((Atom(6, "out"),),), ((Atom(4, "in", integrate=True),),))
    full = {"in": torch.tensor([1 / 6, 1 / 3, 1 / 3, 1 / 6], dtype=torch.float64), "out": torch.ones(6)}
    t = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    copied = StructuredFunction(t.clone(), plan, full)
    monkeypatch.setattr(structured, "_CHUNK", 8)  # two rows a pass: the division in chunks
    given = t.clone()
    taken = StructuredFunction(given, plan, full, take=True)
    assert taken.blocks[0].values.data_ptr() == given.data_ptr()
    assert torch.equal(taken.blocks[0].values, copied.blocks[0].values)
    # the integrated axis was divided by n * q: 4 * 1/6 = 2/3 at the ends, 4/3 inside
    assert torch.allclose(taken.blocks[0].values[:, 0], t[:, 0] / (4 / 6), rtol=1e-6)
    kept = t.clone()
    StructuredFunction(kept, plan, full)  # not taken: the caller's tensor is left alone
    assert torch.equal(kept, t)


def _old_way(monkeypatch):
    """convert as it was: copies for the permutation and for the control values."""
    monkeypatch.setattr(convert_module, "_permute_", _permuted_copy)
    monkeypatch.setattr(permute, "_square", _square_by_indices)

    class Copying(StructuredFunction):
        def __init__(self, tensor, plan, full_weights, kind="cubic", *, take=False):
            super().__init__(tensor, plan, full_weights, kind, take=False)

    monkeypatch.setattr(convert_module, "StructuredFunction", Copying)


def test_convert_gives_the_same_parameters_and_leaves_the_network_alone(monkeypatch):
    for name in ("vit_mha", "resnet_basic"):
        torch.manual_seed(0)
        model, inputs = ZOO[name]()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        new = inn.convert(model, inputs).state_dict()
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
        with monkeypatch.context() as m:
            _old_way(m)
            old = inn.convert(model, inputs).state_dict()
        assert new.keys() == old.keys() and len(new) > 10
        for k in new:
            assert new[k].dtype == old[k].dtype and torch.equal(new[k], old[k]), (name, k)
        assert sum(float(v.abs().sum()) for v in new.values() if v.is_floating_point()) > 1.0


def test_the_functions_hold_the_traced_storages(monkeypatch):
    """No second copy: every one-block function of a float32 network holds the storage torch.export's
    copy had (permuted in place), and the network's own tensors are none of them."""
    seen = {}
    real = convert_module.trace

    def trace(*args, **kwargs):
        traced = real(*args, **kwargs)
        seen.update(traced.tensors)  # kept alive here: no later tensor can take their addresses
        return traced

    monkeypatch.setattr(convert_module, "trace", trace)
    torch.manual_seed(0)
    model, inputs = ZOO["vit_mha"]()
    with monkeypatch.context() as m:  # the copying way holds none of them: the test tells the two apart
        _old_way(m)
        old = inn.convert(model, inputs)
    copies = {fn.blocks[0].values.untyped_storage().data_ptr() for fn in old.functions.values()}
    assert not copies & {t.untyped_storage().data_ptr() for t in seen.values()}
    seen.clear()
    imodel = inn.convert(model, inputs)
    users = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    one_block = {n: f for n, f in imodel.functions.items() if len(f.blocks) == 1}
    assert len(one_block) >= 10
    for name, fn in one_block.items():
        ptr = fn.blocks[0].values.untyped_storage().data_ptr()
        assert ptr not in users, name
    traced = {t.untyped_storage().data_ptr() for t in seen.values()}
    held = {fn.blocks[0].values.untyped_storage().data_ptr() for fn in one_block.values()}
    assert len(held) == len(one_block) and held <= traced
