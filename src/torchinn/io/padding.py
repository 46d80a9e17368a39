"""Per-layer sizes padded with zeros to one config (``torchinn.io.save_pretrained(..., pad=True)``).

Each config field that sets a size per layer and can be padded (the MLP width:
``intermediate_size``, GPT-2's ``n_inner``, ``ffn_dim``; the head counts
``num_key_value_heads`` / ``num_attention_heads`` when the config states ``head_dim``) is set to
its largest value over the layers, and every tensor is padded with zeros at the end of each
dimension that field sets. Zero MLP channels add exact zeros (their output rows and the next
layer's input columns are zero). A padded key/value head has zero k and v rows, its query heads
zero q rows and zero ``o_proj`` columns: its scores are 0, so its softmax is uniform over zero
values and its output is zero, which the zero ``o_proj`` columns drop anyway; heads are appended
after the kept ones, so each kept query head still reads its own key/value head. Which tensors a
field sets is read from the class itself (built on the meta device at the field's value and one
more), so nothing is assumed about the architecture; a tensor that differs from the config but
that no paddable field sets is refused (:class:`PaddingError`): GPT-2 and BERT derive the head
size as hidden / heads, so fewer heads there cannot be padded. The padded model is then checked
against the model on ``model.dummy_inputs`` (the largest difference must stay within
``1e-4 x max|output|``: the zeros are exact, but BLAS may block the longer sums differently).
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PaddingError", "build", "hf", "padded"]

#: the MLP width fields of Hugging Face configs (GPT-2's n_inner is None for 4 x n_embd)
MLP_FIELDS = ("intermediate_size", "n_inner", "ffn_dim")
RTOL = 1e-4


class PaddingError(ValueError):
    """``save_pretrained(..., pad=True)`` of a model whose sizes cannot be padded to one config."""


def hf() -> Any:
    """The ``transformers`` module (an optional dependency: ``pip install torchinn[hf]``)."""
    try:
        return importlib.import_module("transformers")
    except ImportError as e:  # pragma: no cover - transformers is installed where this is tested
        raise ImportError("torchinn.io.save_pretrained / load_pretrained need transformers: "
                          "pip install 'torchinn[hf]'") from e


def build(cls: type, config: Any, device: str = "cpu") -> nn.Module:
    """``cls`` built from ``config``: on the meta device, or on the CPU without initialising its
    weights (transformers' ``no_init_weights``: its non-persistent buffers, such as the rotary
    frequencies, are computed as ``__init__`` computes them)."""
    if device == "meta":
        with torch.device("meta"):
            return cls._from_config(copy.deepcopy(config))
    with importlib.import_module("transformers.initialization").no_init_weights():
        return cls._from_config(copy.deepcopy(config))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fields(config: Any) -> list[tuple[str, int, Callable[[Any, int], None]]]:
    """(label, full value, setter) of every paddable size field of ``config``."""
    out: list[tuple[str, int, Callable[[Any, int], None]]] = []
    for name in MLP_FIELDS:
        value = getattr(config, name, None)
        if name == "n_inner" and value is None and isinstance(getattr(config, "n_embd", None), int):
            value = 4 * config.n_embd
        if isinstance(value, int) and not isinstance(value, bool):
            out.append((name, value, lambda c, v, n=name: setattr(c, n, v)))
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if isinstance(getattr(config, "head_dim", None), int) and isinstance(heads, int):
        if isinstance(kv, int) and heads % kv == 0:
            def set_kv(c: Any, v: int, per: int = heads // kv) -> None:
                c.num_key_value_heads, c.num_attention_heads = v, v * per
            out.append(("num_key_value_heads", kv, set_kv))
        else:
            out.append(("num_attention_heads", heads, lambda c, v: setattr(c, "num_attention_heads", v)))
    return out


def _refuse(config: Any, name: str, mine: tuple, full: tuple) -> PaddingError:
    labels = [f for f, _, _ in _fields(config)]
    why = ""
    if getattr(config, "head_dim", None) is None and isinstance(getattr(config, "num_attention_heads", None), int):
        why = (f"; {type(config).__name__} has no head_dim field (the head size is derived as hidden size / heads), "
               "so fewer heads cannot be padded to its sizes")
    return PaddingError(f"cannot pad tensor {name!r} (shape {mine}, where the config builds {full}): pad=True pads "
                        f"the sizes of the config fields {labels} (MLP widths, and head counts where the config states "
                        f"head_dim), and no such field sets this tensor's size{why}; save with "
                        "torchinn.io.save_pretrained(model, directory) and load with torchinn.io.load_pretrained")


def padded(model: nn.Module) -> tuple[Any, dict[str, Tensor]]:
    """The config and the state dict of ``model`` padded with zeros to the largest size of each
    layer (the module docstring); the model is not changed."""
    config = copy.deepcopy(model.config)
    cls = type(model)
    mine = model.state_dict()
    full = _shapes(build(cls, config, "meta"))
    differ = {k for k, t in mine.items() if tuple(t.shape) != full.get(k)}
    covered: set[str] = set()
    for label, value, setter in _fields(config):
        more = copy.deepcopy(model.config)  # one field changed from the model's config
        setter(more, value + 1)
        try:
            other = _shapes(build(cls, more, "meta"))
        except Exception:  # noqa: BLE001 - the class refuses one more: this field cannot be padded
            continue
        need = 0
        for k in full:  # every tensor the field sets, at its full size or not
            if other.get(k) == full[k] or k not in other:
                continue
            covered.add(k)
            for mine_n, at_v, at_v1 in zip(mine[k].shape, full[k], other[k]):
                if at_v1 != at_v:
                    step = at_v1 - at_v
                    need = max(need, math.ceil((mine_n - (at_v - step * value)) / step))
        if need:
            setter(config, max(1, need))
    for k in sorted(differ - covered):
        raise _refuse(model.config, k, tuple(mine[k].shape), full.get(k, ()))
    target = _shapes(build(cls, config, "meta"))
    out = {}
    for k, t in mine.items():
        want = target[k]
        if len(want) != t.ndim or any(n > w for n, w in zip(t.shape, want)):
            raise _refuse(model.config, k, tuple(t.shape), want)
        pads = [p for n, w in zip(reversed(t.shape), reversed(want)) for p in (0, w - n)]
        out[k] = F.pad(t, pads) if any(pads) else t
    if differ:
        _check(model, cls, config, out)
    return config, out


def _check(model: nn.Module, cls: type, config: Any, tensors: dict[str, Tensor]) -> None:
    """Refuse a padding whose model does not give ``model``'s outputs on its dummy inputs."""
    pad_model = build(cls, config)
    pad_model.load_state_dict(tensors, strict=True, assign=True)
    pad_model.eval()
    inputs = model.dummy_inputs
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            want, got = model(**inputs)[0], pad_model(**inputs)[0]
    finally:
        for m, mode in modes.items():
            m.training = mode
    diff = float((want.float() - got.float()).abs().max())
    scale = float(want.float().abs().max())
    if not diff <= RTOL * max(scale, 1.0):
        raise PaddingError(f"padding {type(model).__name__} with zeros changes its outputs on model.dummy_inputs "
                           f"(largest difference {diff:.3g}, outputs up to {scale:.3g}): its layers do not read the "
                           "padded channels as plain channels; save without pad=True")
