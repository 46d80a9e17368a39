"""compress holds fewer copies of the weights: a teacher that shares the integral model's tensors
(``IntegralModel.shared_discrete``), a reconstruction that reads it, a returned module that takes
the compressed graph's tensors, and memory given back between stages (``model.memory``)."""

from __future__ import annotations

import pytest
import torch
from conftest import converted

import torchinn.model.memory as memory
from torchinn.compression.baselines import reconstruct
from torchinn.compression.importance import measure_importance

pytestmark = pytest.mark.usefixtures("single_thread")


def _storages(module: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}


def _batches(x: torch.Tensor, n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(x.shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("name", ["resnet_basic", "vit_mha"])
def test_shared_discrete_is_to_discrete_without_the_copies(name):
    _, inputs, imodel = converted(name)
    copy = imodel.to_discrete(graph=True).eval()
    shared = imodel.shared_discrete().eval()
    named = dict(shared.named_parameters(), **dict(shared.named_buffers()))
    for n, t in dict(copy.named_parameters(), **dict(copy.named_buffers())).items():
        assert torch.equal(t, named[n]), n
    mine = _storages(imodel)
    held = [n for n, t in named.items() if t.untyped_storage().data_ptr() in mine]
    assert held, "no tensor shared with the integral model"
    # what grid tuning may move (biases, 1-D tensors) is a copy, and no two tensors share storage
    assert all(named[n].ndim >= 2 and not n.endswith("bias") for n in held), held
    assert len({t.untyped_storage().data_ptr() for t in named.values()}) == len(named)
    assert not _storages(copy) & mine  # to_discrete still gives a network of its own
    x = inputs[0]
    with torch.no_grad():
        want = copy(x)
        imodel.resize(0.5)  # the teacher keeps the full-size tensors it holds
        assert torch.equal(shared(x), want)


def test_importance_on_the_shared_teacher_is_the_same():
    _, inputs, imodel = converted("resnet_basic")
    batches = [(b,) for b in _batches(inputs[0], 2)]
    a = measure_importance(imodel, batches, network=imodel.to_discrete(graph=True).eval())
    b = measure_importance(imodel, batches, network=imodel.shared_discrete().eval())
    assert a.activation.keys() == b.activation.keys() and a.fisher.keys() == b.fisher.keys()
    assert len(a.fisher) == len(imodel.groups)
    for g in a.fisher:
        assert torch.equal(a.fisher[g], b.fisher[g]), g
    for g in a.activation:
        assert torch.equal(a.activation[g], b.activation[g]), g


def test_reconstruct_reading_the_teacher_is_the_same_network():
    _, inputs, imodel = converted("resnet_basic")
    cal = _batches(inputs[0], 3)
    sizes = {n: max(1, g.max_size // 2) for n, g in imodel.groups.items()}
    teacher = imodel.shared_discrete().eval()
    before = {n: t.clone() for n, t in teacher.state_dict().items()}
    a = reconstruct(imodel, sizes, cal)
    b = reconstruct(imodel, sizes, cal, teacher=teacher)
    assert a.state_dict().keys() == b.state_dict().keys()
    for n, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[n]), n
    assert {n for n, r in a.refit_report.items() if "skipped" not in r} == \
        {n for n, r in b.refit_report.items() if "skipped" not in r} != set()
    assert not teacher.training and all(torch.equal(t, before[n]) for n, t in teacher.state_dict().items())
    assert not _storages(b) & _storages(teacher)  # the pruned network owns its tensors


def test_reconstruct_refuses_the_teacher_of_another_network():
    _, inputs, imodel = converted("resnet_basic")
    other = converted("mlp")[2].to_discrete(graph=True)
    sizes = {n: max(1, g.max_size // 2) for n, g in imodel.groups.items()}
    with pytest.raises(ValueError, match=r"^the teacher has no tensor named '.+': pass the full-size graph "
                                         r"module of this model \(to_discrete\(graph=True\) at full size\)$"):
        reconstruct(imodel, sizes, _batches(inputs[0], 2), teacher=other)


def test_module_from_can_take_the_graph_tensors():
    _, inputs, imodel = converted("resnet_basic")
    imodel.resize(0.5)
    gm = imodel.to_discrete(graph=True).eval()
    own = imodel.module_from(gm)
    shared = imodel.module_from(gm, share=True)
    assert type(own) is type(shared) is type(converted("resnet_basic")[0])
    assert not _storages(own) & _storages(gm)
    assert len(_storages(shared) & _storages(gm)) >= len(list(gm.parameters())) // 2
    with torch.no_grad():
        assert torch.equal(own(inputs[0]), shared(inputs[0]))


def test_release_memory_only_for_large_networks(monkeypatch):
    calls = []
    monkeypatch.setattr(memory.gc, "collect", lambda: calls.append(1) or 0)
    memory.release_memory(memory.RELEASE_BYTES - 1)
    assert calls == []
    memory.release_memory(memory.RELEASE_BYTES)
    assert calls == [1]
    net = torch.nn.Linear(10, 4)
    tied = torch.nn.Sequential(net, net)
    assert memory.weight_bytes(net) == memory.weight_bytes(tied) == 4 * (10 * 4 + 4)
