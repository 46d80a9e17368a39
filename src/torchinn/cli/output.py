"""What the command line writes and prints: ``compress -o`` checked before the run, its report names,
the folders it made removed after a failure, the network saved and checked, and text from files
made printable.

``-o OUT`` writes ``OUT`` and its reports ``OUT.report.json`` and ``OUT.report.txt`` (named after the
whole output name, so ``-o a.pt`` and ``-o a.pth`` do not share reports). None of them may be one
of the command's inputs (the model's file, a ``file.py`` of ``file.py:callable``, a calibration
image; also through a symbolic or hard link) unless ``--force``.

An ``OUT`` that is an existing directory or ends with ``/`` is a folder (:func:`is_folder`): a
``transformers`` model is written there as a Hugging Face folder by
:func:`torchinn.io.save_pretrained` (:func:`save_folder_checked`), built in a temporary folder
next to it and renamed into place once it loads back; a non-empty folder is replaced only with
``--force``.

Names and reasons read from a model file go to the terminal through :func:`printable`, so a crafted
file cannot send terminal escape sequences:

>>> printable("conv\\x1b[2J1")
'conv\\\\x1b[2J1'
>>> printable("two\\nlines", keep_newlines=True)
'two\\nlines'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..io.fileio import atomic_open, check_target
from ..model.inputs import run
from .loading import CLIError

__all__ = ["printable", "report_paths", "is_folder", "check_output", "created_folders", "save_checked",
           "save_folder_checked", "nan_equal"]


def printable(text: object, keep_newlines: bool = False) -> str:
    """``str(text)`` with every character that is not printable (control characters such as ESC,
    bidirectional overrides; newlines unless ``keep_newlines``) escaped as ``\\x1b`` / ``\\u202e``."""
    lines = str(text).split("\n") if keep_newlines else [str(text)]
    return "\n".join("".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in line)
                     for line in lines)


def report_paths(out: Path) -> tuple[Path, Path]:
    """``OUT.report.json`` and ``OUT.report.txt``, after the whole name of ``out``."""
    return out.with_name(out.name + ".report.json"), out.with_name(out.name + ".report.txt")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist, deepest first."""
    missing = []
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _same_files(targets: Iterable[Path], inputs: Iterable[tuple[str, Path]]) -> tuple[Path, str, Path] | None:
    """The first (target, role, input) where a target is the same file as an input (same device and
    inode: through symbolic and hard links too); None if there is none."""
    ids = {}
    for t in targets:
        with contextlib.suppress(OSError):
            st = os.stat(t)
            ids.setdefault((st.st_dev, st.st_ino), t)
    if not ids:
        return None
    for role, path in inputs:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in ids:
                return ids[st.st_dev, st.st_ino], role, path
    return None


def is_folder(output: str) -> bool:
    """Whether ``-o output`` names a folder: an existing directory, or a name ending with ``/``."""
    return Path(output).is_dir() or output.endswith(("/", os.sep))


def check_output(output: str, inputs: Iterable[tuple[str, Path]] = (), force: bool = False, *,
                 command: str = "compress", plain: bool = True) -> tuple[Path, list[Path]]:
    """``-o`` and its two reports, checked before the long run: the folder exists (it is created:
    the folders made are returned, deepest first, for :func:`created_folders` to remove after a
    failure) and can be written, no target is a special file or read-only, and none is one of
    ``inputs`` (``(role, path)`` pairs, e.g. ``("MODEL", model.pt)``) unless ``force``. A folder
    ``-o`` (:func:`is_folder`) must be empty or new unless ``force``. ``command`` names the command
    in the messages; ``plain=False`` for one that writes a torchinn file (``.inn``), not a pickle."""
    out = Path(output)
    folder = is_folder(output)
    if folder and out.exists() and not out.is_dir():
        raise CLIError(f"-o {output!r} ends with '/' (a folder), but {str(out)!r} is a file")
    if folder and not force and out.is_dir() and any(out.iterdir()):
        raise CLIError(f"-o {output!r} is a folder that is not empty; give a new or empty folder, or pass --force "
                       "to replace its contents")
    if plain and not folder and out.suffix.lower() == ".inn":
        raise CLIError(f"-o {output!r}: {command} writes a plain network with torch.save (a pickle), but .inn "
                       "is torchinn's safetensors format, which is never unpickled; give a name like small.pt")
    targets = report_paths(out) if folder else (out, *report_paths(out))
    same = None if force else _same_files(targets, inputs)
    if same is not None:
        target, role, path = same
        raise CLIError(f"-o {output!r}: {str(target)!r} is the same file as {role} {str(path)!r}, which {command} "
                       "would replace with its output; write elsewhere, or pass --force to replace it")
    made = _missing_folders(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove(made)
        raise CLIError(f"-o {output!r}: cannot create its folder {str(out.parent)!r}: {err.strerror or err}") from err
    try:
        for path in targets:
            check_target(path)
    except OSError as err:
        _remove(made)
        raise CLIError(f"-o {output!r}: {err.strerror or err}") from err
    return out, made


def _remove(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; only if still empty: never what someone put there since
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def created_folders(folders: list[Path]) -> Iterator[None]:
    """On any exception (``KeyboardInterrupt`` too) in the block, remove ``folders`` (those the
    command made, deepest first) if they are still empty, then re-raise."""
    try:
        yield
    except BaseException:
        _remove(folders)
        raise


def nan_equal(a: Any, b: Any) -> bool:
    """Two tensors with the same dtype, shape and values, NaN at the same places counting as equal."""
    import torch

    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return type(a) is type(b) and a == b
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point() and not a.is_complex():
        return torch.equal(a, b)
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def save_checked(small: Any, out: Path, example: tuple) -> None:
    """``torch.save(small)`` to ``out`` atomically, after checking that the new file loads back to
    the same network (the old ``out`` stays if anything fails)."""
    import torch

    with atomic_open(out) as f:
        torch.save(small, f)
        f.seek(0)
        again = torch.load(f, weights_only=False)  # our own file, just written
        with torch.no_grad():
            ref, got = run(small, example), run(again, example)
        leaves = list(zip(torch.utils._pytree.tree_leaves(ref), torch.utils._pytree.tree_leaves(got)))
        if not all(nan_equal(a, b) for a, b in leaves):
            raise CLIError(f"internal error: the network written for {out} does not load back to the same "
                           "network; please report this (the old file, if any, is unchanged)")


def _tensors(out: Any) -> list:
    """The tensors of a model's output (a transformers ``ModelOutput`` through its ``to_tuple()``)."""
    import torch

    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _close(a: Any, b: Any, exact: bool) -> bool:
    if exact or not a.is_floating_point():
        return nan_equal(a, b)
    scale = float(a.abs().max()) if a.numel() else 0.0  # padding with zeros: equal within float rounding
    return a.shape == b.shape and bool(((a - b).abs() <= 1e-4 * (1.0 + scale)).all())


def save_folder_checked(small: Any, out: Path, example: Any, pad: bool = False) -> None:
    """:func:`torchinn.io.save_pretrained` of ``small`` (a transformers model) to the folder ``out``:
    written to a temporary folder next to it, read back with :func:`torchinn.io.load_pretrained`
    and run on ``example`` (:class:`~torchinn.model.inputs.Inputs`; ``use_cache=False``), with the
    same outputs (``pad=True``: within float rounding), then renamed to ``out``. Contents of ``out``
    are replaced only then; if anything fails, ``out`` is left as it was and nothing half-written
    stays."""
    import torch

    from ..io.pretrained import load_pretrained, save_pretrained

    temp = Path(tempfile.mkdtemp(prefix=f".{out.name[:200]}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        save_pretrained(small, temp, pad=pad)
        again = load_pretrained(temp)
        call = dict(example.kwargs, use_cache=False) if hasattr(small.config, "use_cache") else dict(example.kwargs)
        with torch.no_grad():
            ref, got = _tensors(small(*example, **call)), _tensors(again(*example, **call))
        if len(ref) != len(got) or not all(_close(a, b, not pad) for a, b in zip(ref, got)):
            raise CLIError(f"internal error: the folder written for {out} does not load back to the same "
                           "network; please report this (the old folder, if any, is unchanged)")
        os.chmod(temp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name[:200]}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")  # the old folder moved aside, removed once the new one is in place
        os.replace(temp, out)
    except BaseException:
        if old is not None and (old / "x").exists() and not out.exists():
            os.replace(old / "x", out)
        shutil.rmtree(temp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
