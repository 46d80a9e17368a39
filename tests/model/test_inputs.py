"""Batches as data loaders yield them (model/inputs.py): tensors, (inputs, labels) pairs, and
keyword inputs in a dict or a transformers BatchEncoding, whose labels are not inputs."""

from __future__ import annotations

import pickle

import pytest
import torch

from torchinn.model.inputs import Inputs, as_inputs, batch_inputs, padding_mask, position_mask, run

IDS = torch.arange(6).reshape(2, 3)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_batch_forms() -> None:
    x = torch.randn(2, 3)
    assert batch_inputs(x) == (x,) and batch_inputs(x).kwargs == {}
    assert batch_inputs((x, 1)) == (x,)
    assert batch_inputs(((x, x), 1)) == (x, x)
    got = batch_inputs({"input_ids": IDS, "attention_mask": MASK, "labels": IDS})
    assert got == () and list(got.kwargs) == ["input_ids", "attention_mask"]
    pair = batch_inputs(({"input_ids": IDS}, IDS))
    assert list(pair.kwargs) == ["input_ids"]
    assert bool(Inputs((), {"a": 1})) and not bool(Inputs())
    with pytest.raises(TypeError, match="cannot find the inputs in a batch of type int: give a tensor"):
        batch_inputs(3)
    with pytest.raises(TypeError, match=r"names must be str; got keys \[0\]"):
        batch_inputs({0: IDS})


def test_batch_encoding_is_keyword_inputs() -> None:
    tf = pytest.importorskip("transformers")
    enc = tf.BatchEncoding({"input_ids": IDS, "attention_mask": MASK, "labels": IDS})
    got = batch_inputs(enc)
    assert list(got.kwargs) == ["input_ids", "attention_mask"]
    assert torch.equal(padding_mask(enc), MASK)
    assert as_inputs(enc).kwargs.keys() == {"input_ids", "attention_mask", "labels"}  # an example is the whole call


def test_run_and_pickle() -> None:
    def f(*args, **kwargs):
        return args, kwargs

    assert run(f, Inputs((1,), {"b": 2})) == ((1,), {"b": 2})
    assert run(f, (1, 2)) == ((1, 2), {})
    again = pickle.loads(pickle.dumps(Inputs((1,), {"b": 2})))
    assert again == (1,) and again.kwargs == {"b": 2}


def test_masks() -> None:
    assert padding_mask((IDS,)) is None
    assert padding_mask({"input_ids": IDS, "attention_mask": MASK[0]}) is None  # not (batch, positions)
    m = position_mask(padding_mask({"input_ids": IDS, "attention_mask": MASK}), torch.zeros(2, 3, 5))
    assert m.shape == (2, 3, 1) and m.dtype == torch.float32 and m.flatten().tolist() == [1, 1, 1, 1, 1, 0]
    assert position_mask(MASK, torch.zeros(2, 3)) is None  # (batch, features): pooled, not per position
    assert position_mask(MASK, torch.zeros(2, 4, 5)) is None
