"""Hugging Face folders for models whose layers have different sizes (docs/decisions/per-layer-sizes.md).

A compressed ``transformers`` model whose layers keep different head counts or MLP widths (or
GPT-2 / BERT with fewer heads, whose configs derive the head size from hidden / heads) is not what
its config builds, so its own ``save_pretrained`` refuses it. :func:`save_pretrained` writes it as
a Hugging Face-style folder:

* ``config.json``, the model's own config (its ``config.save_pretrained``), and
  ``generation_config.json`` for a model that generates;
* ``model.safetensors``, the model's (smaller) tensors, a tensor shared by several names (tied
  embeddings) stored once under its first name, as ``transformers`` does;
* ``torchinn_shapes.json`` (:mod:`torchinn.io.shapes`): the modules whose sizes differ from what
  the config builds, and the integer attributes their forward reads.

:func:`load_pretrained` reads it back with nothing run from the folder: the class is the
``architectures`` entry of ``config.json`` looked up among the model classes of transformers' auto
mappings (an allow-list: no dotted name is imported, no ``trust_remote_code``), built without
initialising its weights, resized as the shapes file says (every entry checked first), and given
the tensors of ``model.safetensors`` (read as data with ``safetensors``); every parameter and
buffer must be there at its shape, and no other tensor may be. With ``pad=True`` the folder is
padded with zeros to one config (:mod:`torchinn.io.padding`) and loads with a plain
``AutoModel*.from_pretrained``.

>>> import tempfile, torch, transformers as tf, torchinn as inn
>>> torch.manual_seed(0) and None
>>> cfg = tf.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
...                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
>>> model = tf.LlamaForCausalLM(cfg).eval()
>>> ids = torch.randint(0, 32, (1, 6))
>>> imodel = inn.convert(model, {"input_ids": ids}, inn.ConvertConfig(permute=False))
>>> mlp = sorted(g for g in imodel.groups if "mlp" in g)
>>> _ = imodel.resize({mlp[0]: 12, mlp[1]: 20})  # a different MLP width in each layer
>>> import warnings; warnings.simplefilter("ignore", UserWarning)  # its config cannot say both
>>> small = imodel.to_discrete()
>>> folder = tempfile.mkdtemp()
>>> inn.io.save_pretrained(small, folder)
>>> back = inn.io.load_pretrained(folder)
>>> type(back).__name__, back.model.layers[0].mlp.up_proj.out_features
('LlamaForCausalLM', 12)
>>> bool(torch.equal(back(ids).logits, small(ids).logits))
True
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..discrete.hf_config import RefuseSave
from .fileio import save_safetensors, write_text
from .ops import FormatError
from .padding import build, hf, padded
from .shapes import FORMAT, SHAPES_FILE, VERSION, apply_shapes, describe

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_pretrained", "save_pretrained"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MAX_JSON = 64 * 2**20


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module) or not hasattr(getattr(model, "config", None), "save_pretrained") \
            or not hasattr(type(model), "_from_config"):
        raise TypeError("torchinn.io.save_pretrained needs a transformers model (a PreTrainedModel with a config), "
                        f"got {type(model).__name__}")


def _unique(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """One name per shared tensor (the first, as transformers keeps it), contiguous tensors."""
    out: dict[str, Tensor] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for k, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen and t.numel():
            continue
        seen[key] = k
        ptr = t.untyped_storage().data_ptr()
        t = t.detach().contiguous()
        out[k] = t.clone() if ptr in storages else t
        storages.add(ptr)
    return out


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, pad: bool = False) -> None:
    """Write ``model`` (a ``transformers`` model, e.g. from ``to_discrete()`` with per-layer sizes)
    to the folder ``directory`` (created if needed): ``config.json``, ``model.safetensors`` and
    ``torchinn_shapes.json``, read back by :func:`load_pretrained` with identical outputs.
    ``pad=True``: each layer padded with zeros to the largest sizes over the layers and the config
    set to them, so that ``transformers``' own ``from_pretrained`` loads it (outputs equal within
    float rounding); raises :class:`~torchinn.io.padding.PaddingError` where a size cannot be
    padded (fewer heads in GPT-2 or BERT). ``model`` is not changed."""
    _check_model(model)
    if not isinstance(pad, bool):
        raise TypeError(f"pad must be True or False, got {pad!r}")
    folder = Path(directory)
    if pad:
        config, state = padded(model)
        shapes: dict[str, Any] = {"format": FORMAT, "version": VERSION, "architecture": type(model).__name__,
                                  "modules": {}, "attributes": {}}
    else:
        config, state = model.config, model.state_dict()
        shapes = describe(model, build(type(model), model.config, "meta"))
    config = copy.deepcopy(config)
    config.architectures = [type(model).__name__]  # what load_pretrained and AutoModel build
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(_unique(state), folder / WEIGHTS_FILE, metadata={"format": "pt"})
    write_text(folder / SHAPES_FILE, json.dumps(shapes, indent=1, sort_keys=True) + "\n")
    config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(folder)


def _json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON:
        raise FormatError(f"{path}: {path.stat().st_size} bytes; a torchinn folder's JSON files are below {MAX_JSON}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} is not a JSON file: {e}") from None


def _model_classes(tf: Any) -> set[str]:
    """The names of the model classes of transformers' auto mappings (the allow-list)."""
    auto = tf.models.auto.modeling_auto
    names: set[str] = set()
    for attr in dir(auto):
        if attr.endswith("_MAPPING_NAMES") and isinstance(getattr(auto, attr), dict):
            for v in getattr(auto, attr).values():
                names.update([v] if isinstance(v, str) else [x for x in v if isinstance(x, str)])
    return names


def _model_class(raw: Any, where: Path) -> tuple[type, Any]:
    tf = hf()
    if not isinstance(raw, dict):
        raise FormatError(f"{where} must hold a JSON object, got {type(raw).__name__}")
    arch = raw.get("architectures")
    name = arch[0] if isinstance(arch, list) and len(arch) == 1 else arch
    if not isinstance(name, str) or name not in _model_classes(tf) or not hasattr(tf, name):
        raise FormatError(f"{where}: architectures is {arch!r}, which does not name one transformers model class "
                          "(looked up in transformers' auto model mappings, an allow-list; torchinn imports no other "
                          "name and runs no code from the folder)")
    cls = getattr(tf, name)
    config_cls = cls.config_class
    if raw.get("model_type") != config_cls.model_type:
        raise FormatError(f"{where}: model_type is {raw.get('model_type')!r}, but {name} takes a "
                          f"{config_cls.__name__} (model_type {config_cls.model_type!r})")
    clean = {k: v for k, v in raw.items() if k != "auto_map"}
    return cls, config_cls.from_dict(clean)


def _ties(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings), the first of each list kept."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    return [names for names in by_id.values() if len(names) > 1]


def _missing_hint(folder: Path, name: str) -> str:
    """Why a folder has no ``name``: the weights sharded over several files, or only in a pickle."""
    if name != WEIGHTS_FILE:
        return ""
    if (folder / f"{WEIGHTS_FILE}.index.json").is_file():
        return (f"its weights are sharded ({WEIGHTS_FILE}.index.json), which torchinn does not read; save the "
                "model again with a max_shard_size above its size for one file; ")
    if (folder / "pytorch_model.bin").is_file():
        return "its weights are in pytorch_model.bin, a pickle that torchinn does not read; "
    return ""


def load_pretrained(directory: str | os.PathLike) -> nn.Module:
    """The model saved by :func:`save_pretrained` in ``directory``, of its own ``transformers``
    class, in eval mode (see the module docstring for what is checked). A folder without
    ``torchinn_shapes.json`` (a plain ``transformers`` folder of one ``model.safetensors``; sharded
    weights are refused) loads at the sizes its config says. Raises
    :class:`~torchinn.io.ops.FormatError` naming the file, entry or tensor that is wrong."""
    folder = Path(directory)
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder: load_pretrained reads a Hugging Face model folder "
                          f"({CONFIG_FILE} and {WEIGHTS_FILE}, and {SHAPES_FILE} for per-layer sizes)")
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / f).is_file():
            raise FormatError(f"{folder} has no {f}: {_missing_hint(folder, f)}a Hugging Face model folder holds "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE} (and, from torchinn.io.save_pretrained, "
                              f"{SHAPES_FILE})")
    cls, config = _model_class(_json(folder / CONFIG_FILE), folder / CONFIG_FILE)
    model = build(cls, config)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # as its config says (built without initialising, it is not tied yet)
    ties = _ties(model)
    plain = not (folder / SHAPES_FILE).is_file()  # a plain transformers folder: the sizes of its config
    shapes = ({"format": FORMAT, "version": VERSION, "architecture": cls.__name__, "modules": {}, "attributes": {}}
              if plain else _json(folder / SHAPES_FILE))
    sizes_of = f"{CONFIG_FILE} (the folder has no {SHAPES_FILE})" if plain else SHAPES_FILE
    apply_shapes(model, shapes, str(folder / SHAPES_FILE))
    try:
        tensors = load_file(folder / WEIGHTS_FILE)
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file: {e}") from None
    expected = model.state_dict(keep_vars=True)
    where = folder / WEIGHTS_FILE
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise FormatError(f"{where}: tensor {unexpected[0]!r} is not a parameter or buffer of {cls.__name__} at the "
                          f"sizes of {sizes_of} ({len(unexpected)} such tensors)")
    tied_to = {n: names for names in ties for n in names}
    for k, t in expected.items():
        if k not in tensors:
            src = next((n for n in tied_to.get(k, []) if n in tensors), None)
            if src is None:
                raise FormatError(f"{where}: tensor {k!r} (shape {tuple(t.shape)}) is missing")
            continue
        if tuple(tensors[k].shape) != tuple(t.shape):
            raise FormatError(f"{where}: tensor {k!r} has shape {tuple(tensors[k].shape)}, but {cls.__name__} at the "
                              f"sizes of {sizes_of} has {tuple(t.shape)} there")
    for k in list(tensors):  # fresh, aligned memory: BLAS sums misaligned tensors in another order (4e-8)
        tensors[k] = tensors.pop(k).clone()
    model.load_state_dict(tensors, strict=False, assign=True)
    for names in ties:
        src = next(n for n in names if n in tensors)
        for n in names:
            if n not in tensors:
                parent, _, leaf = n.rpartition(".")
                setattr(model.get_submodule(parent), leaf, model.get_parameter(src))
    for n, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise FormatError(f"{where}: tensor {n!r} is missing (not in the file and not computed by the model)")
    model.eval()
    if (folder / "generation_config.json").is_file() and getattr(model, "can_generate", lambda: False)():
        model.generation_config = hf().GenerationConfig.from_dict(_json(folder / "generation_config.json"))
    if shapes.get("modules") or shapes.get("attributes"):
        model.save_pretrained = RefuseSave(
            f"refusing to save_pretrained: this {cls.__name__} has sizes its {type(config).__name__} cannot describe "
            f"(loaded by torchinn.io.load_pretrained with {SHAPES_FILE}); save it with "
            "torchinn.io.save_pretrained(model, directory), or with pad=True for a folder plain transformers loads")
    return model
