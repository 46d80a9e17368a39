"""Reading the command line's inputs: models (``MODEL`` specs) and calibration images.

See :mod:`torchinn.cli` for the ``MODEL`` forms. :class:`CLIError` is an input mistake, reported
as one line without a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import struct
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "Loaded", "load_model", "load_images", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class CLIError(Exception):
    """A mistake in the command's input, reported as one line without a traceback."""


# -- loading models -----------------------------------------------------------------------------
@dataclasses.dataclass
class Loaded:
    """A model read from a MODEL argument; ``kind`` is module, torchscript, exported or integral."""

    obj: Any
    kind: str
    source: str


def _zip_kind(path: Path) -> str:
    names = zipfile.ZipFile(path).namelist()
    inner = [n.split("/", 1)[-1] for n in names]
    if any(n.startswith("code/") for n in inner):
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


def _load_file(path: Path) -> Loaded:
    import torch
    from torch import nn

    if path.is_dir():
        raise CLIError(f"MODEL {str(path)!r} is a directory; expected a model file or module:callable")
    try:
        if zipfile.is_zipfile(path):
            kind = _zip_kind(path)
            if kind == "torchscript":
                return Loaded(torch.jit.load(str(path), map_location="cpu").eval(), "torchscript", str(path))
            if kind == "exported":
                return Loaded(torch.export.load(str(path)).module(), "exported", str(path))
        elif _is_safetensors(path):
            from .serialize import load

            return Loaded(load(path), "integral", str(path))
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CLIError(f"cannot read MODEL {str(path)!r} (is it a torch.save, TorchScript, torch.export or "
                       f"torchinn file?): {type(err).__name__}: {err}") from err
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLIError(f"{str(path)!r} holds a state_dict (tensors only), not a module: save the whole "
                       "module with torch.save(model, path), or pass module:callable that builds it")
    if not isinstance(obj, nn.Module):
        raise CLIError(f"{str(path)!r} holds {_a(type(obj).__name__)}, not an nn.Module")
    return Loaded(obj, "module", str(path))


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


def load_model(spec: str) -> Loaded:
    """Read a MODEL argument (a file or ``module:callable``; see the module docstring)."""
    path = Path(spec)
    if path.exists():
        return _load_file(path)
    if ":" in spec:
        return _import_callable(spec)
    raise CLIError(f"MODEL {spec!r}: no such file (or give module:callable)")


def _convertible(loaded: Loaded, command: str) -> Any:
    """The nn.Module to convert; a clear error for what torch.export cannot trace."""
    if loaded.kind == "torchscript":
        raise CLIError(f"{loaded.source!r} is a TorchScript file: torch.export (which torchinn uses to trace) "
                       f"cannot trace a ScriptModule; pass the Python module to {command!r} instead "
                       "(a torch.save(module) file or module:callable)")
    if loaded.kind == "exported":
        raise CLIError(f"{loaded.source!r} is a torch.export program, which cannot be converted; pass the "
                       f"Python module to {command!r} (a torch.save(module) file or module:callable)")
    return loaded.obj


# -- inputs -------------------------------------------------------------------------------------
def _dtype_of(model: Any) -> Any:
    import torch

    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _shapes_text(shapes: Sequence[tuple[int, ...]]) -> str:
    return ", ".join("x".join(map(str, s)) for s in shapes)


def _random_inputs(shapes: Sequence[tuple[int, ...]], dtype: Any, seed: int) -> tuple:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=gen).to(dtype) for s in shapes)


def load_images(folder: str, shape: tuple[int, ...], mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, limit: int | None = None) -> list:
    """Images under ``folder`` (png/jpg/jpeg/bmp, recursively, sorted by path) as batches of
    ``shape = (N, C, H, W)``: resized so they cover H x W, centre-cropped, scaled to [0, 1], then
    ``(x - mean) / std`` per channel when given. A last incomplete batch is dropped."""
    import numpy as np
    import torch

    root = Path(folder)
    if not root.is_dir():
        raise CLIError(f"--calibration {folder!r} is not a directory of images")
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
                im = im.convert("RGB" if c == 3 else "L")
                scale = max(h / im.height, w / im.width)
                size = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
                im = im.resize(size, Image.Resampling.BILINEAR)
                left, top = (im.width - w) // 2, (im.height - h) // 2
                im = im.crop((left, top, left + w, top + h))
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except Exception as err:
            raise CLIError(f"cannot read image {str(f)!r}: {err}") from err
        images.append(torch.from_numpy(arr.reshape(h, w, c)).permute(2, 0, 1))
    x = torch.stack(images)
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, c):
            raise CLIError(f"--{name} needs 1 or {c} values (one per channel), got {len(values)}")
    if mean is not None:
        x = x - torch.tensor(mean, dtype=x.dtype).reshape(-1, 1, 1)
    if std is not None:
        if any(v <= 0 for v in std):
            raise CLIError(f"--std values must be > 0, got {list(std)}")
        x = x / torch.tensor(std, dtype=x.dtype).reshape(-1, 1, 1)
    return list(x.split(n))
