"""Reading the command line's inputs: models (``MODEL`` specs) and calibration images.

See :mod:`torchinn.cli.main` for the ``MODEL`` forms. :class:`CLIError` is an input mistake, reported
as one line without a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import re
import struct
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "Loaded", "load_model", "load_images", "IMAGE_SUFFIXES", "convertible", "dtype_of",
           "embedding_size", "random_inputs", "random_tokens", "shapes_text", "vocabulary"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class CLIError(Exception):
    """A mistake in the command's input, reported as one line without a traceback."""


# -- loading models -----------------------------------------------------------------------------
@dataclasses.dataclass
class Loaded:
    """A model read from a MODEL argument; ``kind`` is module (a Hugging Face folder too),
    torchscript, exported or integral."""

    obj: Any
    kind: str
    source: str


def _zip_kind(path: Path) -> str:
    names = zipfile.ZipFile(path).namelist()
    inner = [n.split("/", 1)[-1] for n in names]
    if any(n.startswith("code/") or n == "constants.pkl" for n in inner):  # torch's own test: constants.pkl
        return "torchscript"
    if any(n.startswith("models/") or n == "archive_format" for n in inner):
        return "exported"
    return "pickle"


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


_TRUST_HINT = ("pass --trust-code if you trust its source, or give the model as a state_dict loaded by "
               "pkg.module:callable (or path/to/file.py:callable) that builds it")


_CODE = {"torchscript": "a TorchScript file, which is code: torch.jit.load runs its __setstate__ methods "
                        "and bench runs its forward, and either can do anything Python can (write files, "
                        "start processes)",
         "exported": "a torch.export program, whose loader unpickles Python objects stored in it, which "
                     "can run arbitrary code"}


def _unpickle_refused(path: Path, err: Exception) -> CLIError:
    """The error for a file that ``torch.load(weights_only=True)`` refuses to read."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)  # "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y"
    if found:
        what = f"it needs the Python object {found.group(1)}"
    else:
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        what = f"the safe loader stops at: {detail.group(1).strip() if detail else type(err).__name__}"
    return CLIError(f"MODEL {str(path)!r} is a pickle of Python objects (such as torch.save of a whole module), "
                    f"which can run arbitrary code when loaded; torch.load(weights_only=True) cannot read it "
                    f"({what}): {_TRUST_HINT}")


def _torch_load(path: Path, trust_code: bool) -> Any:
    import pickle
    import warnings

    import torch

    if trust_code:
        return torch.load(path, map_location="cpu", weights_only=False)
    if not _looks_like_pickle(path):
        raise CLIError(f"cannot read MODEL {str(path)!r}: it is neither a torch.save, TorchScript, torch.export "
                       "nor torchinn file (not a zip, safetensors or pickle file)")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4..." is noise here
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise _unpickle_refused(path, err) from err
        raise


def _looks_like_pickle(path: Path) -> bool:
    """A torch.save zip, or a raw pickle (protocol 2+ starts with PROTO 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _load_file(path: Path, trust_code: bool = False, convert: bool = False) -> Loaded:
    import torch
    from torch import nn

    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise CLIError(f"MODEL {str(path)!r} is not a regular file (a FIFO or device?); expected a model file")
    safetensors = _is_safetensors(path)
    if path.suffix.lower() == ".inn" and not safetensors:
        raise CLIError(f"MODEL {str(path)!r} is not a torchinn model file (a .inn file is a safetensors file; "
                       "this one is not, and torchinn never unpickles a .inn file)")
    try:
        if zipfile.is_zipfile(path):
            kind = _zip_kind(path)
            if kind in ("torchscript", "exported"):
                if convert:  # refused before anything in the file is read
                    return Loaded(None, kind, str(path))
                if not trust_code:
                    raise CLIError(f"MODEL {str(path)!r} is {_CODE[kind]}: {_TRUST_HINT}")
            if kind == "torchscript":
                return Loaded(torch.jit.load(str(path), map_location="cpu").eval(), "torchscript", str(path))
            if kind == "exported":
                return Loaded(torch.export.load(str(path)).module(), "exported", str(path))
        elif safetensors:
            from ..elastic.network import ElasticNetwork
            from ..io.format import load

            obj = load(path)  # an elastic network: its integral model, at the sizes it was saved at
            return Loaded(obj.imodel if isinstance(obj, ElasticNetwork) else obj, "integral", str(path))
        obj = _torch_load(path, trust_code)
    except CLIError:
        raise
    except Exception as err:
        raise CLIError(f"cannot read MODEL {str(path)!r} (is it a torch.save, TorchScript, torch.export or "
                       f"torchinn file?): {type(err).__name__}: {_first_line(err)}") from err
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLIError(f"{str(path)!r} holds a state_dict (tensors only), not a module: save the whole "
                       "module with torch.save(model, path), or pass module:callable that builds it")
    if not isinstance(obj, nn.Module):
        raise CLIError(f"{str(path)!r} holds {_a(type(obj).__name__)}, not an nn.Module")
    return Loaded(obj, "module", str(path))


def _load_folder(path: Path) -> Loaded:
    """A Hugging Face model folder (config.json + model.safetensors, with or without torchinn's
    per-layer sizes), read by :func:`torchinn.io.load_pretrained`: data only, nothing is run."""
    from ..io.ops import FormatError
    from ..io.pretrained import CONFIG_FILE, WEIGHTS_FILE, load_pretrained

    if not (path / CONFIG_FILE).is_file():
        raise CLIError(f"MODEL {str(path)!r} is a directory without {CONFIG_FILE}; expected a Hugging Face model "
                       f"folder ({CONFIG_FILE} and {WEIGHTS_FILE}), a model file or module:callable")
    try:
        return Loaded(load_pretrained(path), "module", str(path))
    except (FormatError, ImportError) as err:
        raise CLIError(f"cannot read MODEL {str(path)!r} as a Hugging Face model folder: {err}") from err


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _import_callable(spec: str) -> Loaded:
    from torch import nn

    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise CLIError(f"MODEL {spec!r} is not a file, nor module:callable")
    try:
        if where.endswith(".py"):
            file = Path(where)
            if not file.is_file():
                raise CLIError(f"MODEL {spec!r}: no such file: {where}")
            name = file.stem if file.stem not in sys.modules else f"_torchinn_model_{file.stem}"
            mod_spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module  # dataclasses and pickling look classes up there
            mod_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except CLIError:
        raise
    except Exception as err:
        raise CLIError(f"cannot import {where!r} for MODEL {spec!r}: {type(err).__name__}: {err}") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"MODEL {spec!r}: {where!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise CLIError(f"MODEL {spec!r} is {_a(type(obj).__name__)}, neither an nn.Module nor a callable")
        try:
            obj = obj()
        except Exception as err:
            raise CLIError(f"MODEL {spec!r}: calling {attr}() failed: {type(err).__name__}: {err}") from err
        if not isinstance(obj, nn.Module):
            raise CLIError(f"MODEL {spec!r}: {attr}() returned {_a(type(obj).__name__)}, not an nn.Module")
    return Loaded(obj, "module", spec)


def load_model(spec: str, trust_code: bool = False, convert: bool = False) -> Loaded:
    """Read a MODEL argument (a file or ``module:callable``; see the module docstring). Without
    ``trust_code``, nothing is unpickled or run: pickles are read with ``torch.load(weights_only=True)``
    and TorchScript files and torch.export programs are refused before they are opened. With
    ``convert`` (the caller converts the model), a TorchScript or torch.export file is never
    opened: it comes back with ``obj=None`` for :func:`convertible` to refuse."""
    path = Path(spec)
    if path.exists():
        return _load_file(path, trust_code, convert)
    if ":" in spec:
        return _import_callable(spec)
    raise CLIError(f"MODEL {spec!r}: no such file (or give module:callable)")


def convertible(loaded: Loaded, command: str, *, original: bool = False) -> Any:
    """The nn.Module to convert; a clear error for what torch.export cannot trace, and with
    ``original`` for an integral model (``command`` needs the network it was converted from)."""
    if original and loaded.kind == "integral":
        raise CLIError(f"{loaded.source!r} is an integral model: {command} needs the original network "
                       "(a torch.save(module) file or module:callable)")
    if loaded.kind == "torchscript":
        raise CLIError(f"{loaded.source!r} is a TorchScript file: torch.export (which torchinn uses to trace) "
                       f"cannot trace a ScriptModule; pass the Python module to {command!r} instead "
                       "(a torch.save(module) file or module:callable)")
    if loaded.kind == "exported":
        raise CLIError(f"{loaded.source!r} is a torch.export program, which cannot be converted; pass the "
                       f"Python module to {command!r} (a torch.save(module) file or module:callable)")
    return loaded.obj


# -- inputs -------------------------------------------------------------------------------------
def dtype_of(model: Any) -> Any:
    import torch

    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def shapes_text(shapes: Sequence[tuple[int, ...]]) -> str:
    return ", ".join("x".join(map(str, s)) for s in shapes)


def embedding_size(model: Any) -> int | None:
    """The number of token ids ``model`` embeds, read from its ``get_input_embeddings()`` (an
    ``nn.Embedding``, as transformers models have); None when it has none."""
    from torch import nn

    get = getattr(model, "get_input_embeddings", None)
    try:
        embedding = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        embedding = None
    return embedding.num_embeddings if isinstance(embedding, nn.Embedding) else None


def vocabulary(model: Any) -> int:
    """The number of token ids ``model`` embeds: its ``get_input_embeddings()`` (a transformers model)."""
    size = embedding_size(model)
    if size is None:
        raise CLIError(f"--input-ids makes token ids below the vocabulary size, read from the model's "
                       f"get_input_embeddings() (an nn.Embedding, as transformers models have); "
                       f"{type(model).__name__} has none: give --input-shape for float inputs")
    return size


def random_tokens(shape: tuple[int, int], vocab: int, seed: int) -> dict[str, Any]:
    """Keyword inputs of ``shape = (N, L)`` random token ids in ``[0, vocab)``: ``input_ids`` and an
    ``attention_mask`` of ones."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, shape, generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def random_inputs(shapes: Sequence[tuple[int, ...]], dtype: Any, seed: int) -> tuple:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=gen).to(dtype) for s in shapes)


_WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def _cover_crop(im: Any, h: int, w: int) -> Any:
    """Resized (bilinear) to cover h x w, then centre-cropped to it."""
    from PIL import Image

    scale = max(h / im.height, w / im.width)
    size = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
    im = im.resize(size, Image.Resampling.BILINEAR)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))


def _image_array(im: Any, c: int, h: int, w: int) -> Any:
    """``(h, w, c)`` float32 in [0, 1]: 8-bit images / 255, 16-bit ones (PIL modes I;16*, and I as
    Pillow opens 16-bit PNGs) / 65535 (not clipped at 255)."""
    import numpy as np
    from PIL import Image

    if im.mode not in _WIDE_MODES:
        im = _cover_crop(im.convert("RGB" if c == 3 else "L"), h, w)
        return (np.asarray(im, dtype=np.float32) / 255.0).reshape(h, w, c)
    raw = np.asarray(im).astype(np.float64)
    top = _WIDE_MODES[im.mode]
    if raw.size and (raw.min() < 0 or raw.max() > top):
        raise ValueError(f"{im.mode} image values span [{raw.min():g}, {raw.max():g}], outside the 16-bit range "
                         f"[0, {top:g}]")
    grey = _cover_crop(Image.fromarray((raw / top).astype(np.float32), mode="F"), h, w)
    arr = np.clip(np.asarray(grey, dtype=np.float32), 0.0, 1.0)[..., None]
    return np.repeat(arr, c, axis=2)


def load_images(folder: str, shape: tuple[int, ...], mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, limit: int | None = None) -> list:
    """Images under ``folder`` (png/jpg/jpeg/bmp, recursively, sorted by path) as batches of
    ``shape = (N, C, H, W)``: resized so they cover H x W, centre-cropped, scaled to [0, 1] by their
    bit depth (8-bit / 255, 16-bit grey / 65535; a grey image is repeated for C = 3), then
    ``(x - mean) / std`` per channel when given. A last incomplete batch is dropped."""
    import torch

    root = Path(folder)
    if not root.is_dir():
        tokens = (" (a .safetensors or .txt file of tokens goes with --input-ids N,L)"
                  if root.suffix.lower() in (".safetensors", ".txt") else "")
        raise CLIError(f"--calibration {folder!r} is not a directory of images{tokens}")
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise CLIError(f"--calibration needs one image input of shape N,C,H,W with C = 1 or 3, got {shape}")
    try:
        from PIL import Image
    except ImportError as err:
        raise CLIError("--calibration reads images with Pillow: pip install pillow") from err
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    n, c, h, w = shape
    if limit is not None:
        files = files[:limit]
    if len(files) < n:
        raise CLIError(f"--calibration {folder!r} has {len(files)} image(s) ({'/'.join(IMAGE_SUFFIXES)}); "
                       f"a batch of --input-shape needs {n}")
    images = []
    for f in files[: len(files) // n * n]:
        try:
            with Image.open(f) as im:
                arr = _image_array(im, c, h, w)
        except Exception as err:
            raise CLIError(f"cannot read image {str(f)!r}: {err}") from err
        images.append(torch.from_numpy(arr).permute(2, 0, 1))
    x = torch.stack(images)
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, c):
            raise CLIError(f"--{name} needs 1 or {c} values (one per channel), got {len(values)}")
        if values is not None and not all(math.isfinite(v) for v in values):
            raise CLIError(f"--{name} values must be finite, got {list(values)}")
    if mean is not None:
        x = x - torch.tensor(mean, dtype=x.dtype).reshape(-1, 1, 1)
    if std is not None:
        if any(v <= 0 for v in std):
            raise CLIError(f"--std values must be > 0, got {list(std)}")
        x = x / torch.tensor(std, dtype=x.dtype).reshape(-1, 1, 1)
    return list(x.split(n))
