"""What the command line writes and prints: ``compress -o`` checked before the run, its report names,
the folders it made removed after a failure, the network saved and checked, and text from files
made printable.

``-o OUT`` writes ``OUT`` and its reports ``OUT.report.json`` and ``OUT.report.txt`` (named after the
whole output name, so ``-o a.pt`` and ``-o a.pth`` do not share reports). None of them may be one
of the command's inputs (the model's file, a ``file.py`` of ``file.py:callable``, a calibration
image; also through a symbolic or hard link) unless ``--force``.

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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..io.fileio import atomic_open, check_target
from ..model.inputs import run
from .loading import CLIError

__all__ = ["printable", "report_paths", "check_output", "created_folders", "save_checked", "nan_equal"]


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


def check_output(output: str, inputs: Iterable[tuple[str, Path]] = (), force: bool = False) -> tuple[Path, list[Path]]:
    """``-o`` and its two reports, checked before the long run: the folder exists (it is created:
    the folders made are returned, deepest first, for :func:`created_folders` to remove after a
    failure) and can be written, no target is a directory, special file or read-only, and none is
    one of ``inputs`` (``(role, path)`` pairs, e.g. ``("MODEL", model.pt)``) unless ``force``."""
    out = Path(output)
    if out.is_dir():
        raise CLIError(f"-o {output!r} is a directory; give a file name like small.pt")
    if out.suffix.lower() == ".inn":
        raise CLIError(f"-o {output!r}: compress writes a plain network with torch.save (a pickle), but .inn "
                       "is torchinn's safetensors format, which is never unpickled; give a name like small.pt")
    targets = (out, *report_paths(out))
    same = None if force else _same_files(targets, inputs)
    if same is not None:
        target, role, path = same
        raise CLIError(f"-o {output!r}: {str(target)!r} is the same file as {role} {str(path)!r}, which compress "
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
