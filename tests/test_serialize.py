"""Saving and loading integral models: one file, a new process, no original network."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchinn as inn
from torchinn.train import TuneConfig, tune_grid
from torchinn_demo.zoo import ZOO


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple:
    torch.manual_seed(0)
    model, inputs = ZOO["resnet_basic"]()
    imodel = inn.convert(model, inputs, inn.ConvertConfig(tsp_time_limit=0.05))
    imodel.resize({"layer1.0.conv1.weight:0": 5, "layer3.0.conv2.weight:0": 11})
    tune_grid(imodel, [inputs[0]], config=TuneConfig(steps=5, seconds=None, progress=False))
    imodel.eval()
    path = tmp_path_factory.mktemp("m") / "resnet.inn"
    imodel.save(str(path))
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
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    newer = dict(meta, version=inn.serialize.FORMAT_VERSION + 1)
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
    missing.pop(next(k for k in missing if k.startswith("f/")))
    save_file(missing, str(tmp_path / "missing.inn"), metadata={"torchinn": json.dumps(meta)})
    with pytest.raises(inn.FormatError, match="broken or incomplete"):
        inn.load(tmp_path / "missing.inn")
    evil = dict(meta, graph=[{"op": "call_function", "name": "x", "target": "py::os.system",
                              "args": {"t": ["echo hi"]}, "kwargs": {"d": {}}}])
    save_file(tensors, str(tmp_path / "evil.inn"), metadata={"torchinn": json.dumps(evil)})
    with pytest.raises(inn.FormatError, match="unknown function 'py::os.system'"):
        inn.load(tmp_path / "evil.inn")
    with pytest.raises(FileNotFoundError):
        inn.load(tmp_path / "nope.inn")
    with pytest.raises(TypeError, match="needs an IntegralModel"):
        inn.save(torch.nn.Linear(2, 2), tmp_path / "x.inn")
