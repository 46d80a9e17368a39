"""Writing files so that a crash, a kill or an error never loses the old contents.

Every file torchinn or its command line writes goes through :func:`atomic_open`: the data goes to
a temporary file in the target's folder, is flushed and ``fsync``-ed, then renamed over the target
and the folder is ``fsync``-ed. A reader sees the old file or the new one, never a part of either.

* On Linux the temporary file is anonymous (``O_TMPFILE``): a process killed while writing leaves
  nothing behind; it gets a name (``.NAME.XXXXXXXX.torchinn-tmp``, hidden and not ending like the
  target) only for the instant between linking and renaming. Elsewhere it has that name from the
  start and is removed on any failure, ``KeyboardInterrupt`` included.
* Only a regular file is replaced. A symbolic link, FIFO, device node or socket is refused with an
  :class:`UnsafeTargetError` naming it, unless ``replace_special=True`` (then the link or node
  itself is replaced by a regular file; what a link points to is never written). A directory is
  always refused (``IsADirectoryError``).
* A target without write permission (``os.access``, or no write bit at all, which also stops root)
  is refused with ``PermissionError`` instead of being replaced, and so is a folder we cannot write.
* A replaced file keeps its permission bits (and, where allowed, its owner); a new file gets the
  usual ``0o666 & ~umask``.

>>> import tempfile, os
>>> with tempfile.TemporaryDirectory() as d:
...     write_text(os.path.join(d, "a.txt"), "one")
...     with atomic_open(os.path.join(d, "a.txt")) as f:
...         _ = f.write(b"two")
...     print(open(os.path.join(d, "a.txt")).read(), os.listdir(d))
two ['a.txt']
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["UnsafeTargetError", "atomic_open", "check_target", "save_safetensors", "write_bytes",
           "write_text", "TEMP_SUFFIX"]

#: the end of every temporary file's name (never the target's own suffix)
TEMP_SUFFIX = ".torchinn-tmp"

_KINDS = ((stat.S_ISLNK, "a symbolic link", "link"), (stat.S_ISFIFO, "a FIFO (named pipe)", "FIFO"),
          (stat.S_ISCHR, "a character device", "device node"), (stat.S_ISBLK, "a block device", "device node"),
          (stat.S_ISSOCK, "a socket", "socket"))


class UnsafeTargetError(OSError):
    """The target exists and is not a regular file (a symlink, FIFO, device node or socket)."""


def _kind(st: os.stat_result) -> tuple[str, str] | None:
    """(description, noun) of a special file; None for a regular file or a directory."""
    return next(((name, noun) for test, name, noun in _KINDS if test(st.st_mode)), None)


def check_target(path: str | os.PathLike, *, replace_special: bool = False) -> os.stat_result | None:
    """Raise if :func:`atomic_open` would refuse to write ``path``; return the existing target's
    ``lstat`` (``None`` if there is none). Call it before a long computation whose result goes there."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a directory"
        raise FileNotFoundError(f"cannot write {str(path)!r}: its folder {str(folder)!r} {what}")
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        _check_existing(path, st, replace_special)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {str(path)!r}: no permission to create files in its folder "
                              f"{str(folder)!r}")
    return st


def _check_existing(path: Path, st: os.stat_result, replace_special: bool) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a directory")
    kind = _kind(st)
    if kind is not None and not replace_special:
        extra = f" (to {os.readlink(path)!r})" if stat.S_ISLNK(st.st_mode) else ""
        raise UnsafeTargetError(
            f"refusing to replace {str(path)!r}: it is {kind[0]}{extra}, not a regular file; torchinn writes a new "
            f"file and renames it over the target, which would replace the {kind[1]} itself. Write to a regular "
            "file, or pass replace_special=True")
    if kind is None and (not os.access(path, os.W_OK) or not st.st_mode & 0o222):
        raise PermissionError(f"refusing to replace {str(path)!r}: it is read-only (mode "
                              f"{stat.filemode(st.st_mode)}); make it writable or write elsewhere")


def _fsync_dir(folder: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows cannot open a folder
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:  # pragma: no cover - a few file systems cannot sync a folder
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name[:200]}.{secrets.token_hex(4)}{TEMP_SUFFIX}")  # within NAME_MAX (255)


def _open_temp(path: Path) -> tuple[int, Path | None]:
    """An fd for the new contents: anonymous (``O_TMPFILE``, name ``None``) where the system has it."""
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if hasattr(os, "O_TMPFILE") and os.link in os.supports_dir_fd and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(path.parent, flags | os.O_TMPFILE, 0o666), None
        except OSError as err:  # the file system has no O_TMPFILE: fall back to a named file
            if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    for _ in range(100):
        name = _temp_name(path)
        try:
            return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    raise FileExistsError(f"cannot create a temporary file next to {str(path)!r}")  # pragma: no cover


def _commit(fd: int, name: Path | None, path: Path, old: os.stat_result | None) -> None:
    if old is not None and not stat.S_ISLNK(old.st_mode) and hasattr(os, "fchmod"):
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
        if hasattr(os, "fchown") and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            with contextlib.suppress(PermissionError):  # only root may give a file away
                os.fchown(fd, old.st_uid, old.st_gid)
    os.fsync(fd)
    if name is None:  # give the anonymous file a name, then rename it over the target
        name = _temp_name(path)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:  # a dir fd makes CPython call linkat(AT_SYMLINK_FOLLOW); plain link() would not follow /proc's link
            os.link(f"/proc/self/fd/{fd}", name.name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=True)
        finally:
            os.close(folder)
    try:
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, replace_special: bool = False) -> Iterator[IO[bytes]]:
    """A binary file (readable too, to check what was written) whose contents replace ``path`` when
    the ``with`` block ends without an exception (see the module docstring); on any exception,
    ``path`` is left as it was."""
    path = Path(path)
    old = check_target(path, replace_special=replace_special)
    fd, name = _open_temp(path)
    try:
        with os.fdopen(fd, "w+b", closefd=False) as f:
            yield f
            f.flush()
        check_target(path, replace_special=replace_special)  # it may have changed while we wrote
        _commit(fd, name, path, old)
    except BaseException:
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
        raise
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes, *, replace_special: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, replace_special=replace_special) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
               replace_special: bool = False) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_open`)."""
    write_bytes(path, text.encode(encoding), replace_special=replace_special)


def save_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None,
                     *, replace_special: bool = False) -> None:
    """``safetensors.torch.save_file`` through :func:`atomic_open` (the file is built in memory)."""
    from safetensors.torch import save

    check_target(path, replace_special=replace_special)  # before serialising: fail fast
    write_bytes(path, save(dict(tensors), metadata=metadata), replace_special=replace_special)
