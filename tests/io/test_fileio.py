"""The atomic writer: the old file survives every failure, special files and read-only files are
refused, permission bits are kept, and no temporary file is left behind."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchinn as inn
from torchinn.io import fileio
from torchinn.io.fileio import UnsafeTargetError, atomic_open, check_target, write_bytes, write_text

LINUX = sys.platform.startswith("linux")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_new_file_gets_the_umask_mode(tmp_path, umask_022):
    write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # 0o666 & ~0o022, not mkstemp's 0o600
    os.umask(0o077)
    write_text(tmp_path / "b.txt", "x")
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), mode=st.integers(0o200, 0o777).filter(lambda m: m & 0o200))
def test_replacing_keeps_the_mode_and_writes_the_bytes(tmp_path, data, mode):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old contents")
    path.chmod(mode)
    inode = path.stat().st_ino
    write_bytes(path, data)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert _names(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named temp"])
def test_a_failure_while_writing_keeps_the_old_file(tmp_path, monkeypatch, error, tmpfile):
    if not tmpfile:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    elif not hasattr(os, "O_TMPFILE"):
        pytest.skip("no O_TMPFILE on this system")
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_open(path) as f:
            f.write(b"new new new")
            f.flush()
            during = [n for n in _names(tmp_path) if n != "model.pt"]
            raise error
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["model.pt"]
    if tmpfile and LINUX:
        assert during == []  # anonymous while it is written: a crash leaves nothing
    else:  # hidden, and named so that nothing mistakes it for a model file
        assert len(during) == 1 and during[0].startswith(".model.pt.") and during[0].endswith(fileio.TEMP_SUFFIX)


def test_special_files_are_refused_unless_asked(tmp_path):
    real = tmp_path / "real.inn"
    real.write_bytes(b"real")
    link = tmp_path / "link.inn"
    link.symlink_to(real)
    fifo = tmp_path / "fifo.inn"
    os.mkfifo(fifo)
    for path, kind in ((link, "a symbolic link (to "), (fifo, "a FIFO (named pipe)"),
                       (Path("/dev/null"), "a character device")):
        with pytest.raises(UnsafeTargetError, match=re.escape(f"refusing to replace {str(path)!r}: it is {kind}")):
            write_bytes(path, b"new")
    assert real.read_bytes() == b"real" and link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    write_bytes(link, b"new", replace_special=True)  # the link itself is replaced, never what it points to
    write_bytes(fifo, b"new", replace_special=True)
    assert not link.is_symlink() and link.read_bytes() == b"new" and real.read_bytes() == b"real"
    assert stat.S_ISREG(os.lstat(fifo).st_mode) and fifo.read_bytes() == b"new"


def test_directories_and_missing_folders_are_refused(tmp_path):
    (tmp_path / "d").mkdir()
    for replace_special in (False, True):
        with pytest.raises(IsADirectoryError, match=r"cannot write '.*/d': it is a directory"):
            write_bytes(tmp_path / "d", b"x", replace_special=replace_special)
    with pytest.raises(FileNotFoundError, match=r"its folder '.*/nowhere' does not exist"):
        write_bytes(tmp_path / "nowhere" / "x.inn", b"x")
    assert _names(tmp_path) == ["d"] and _names(tmp_path / "d") == []


def test_a_read_only_target_is_refused(tmp_path):
    path = tmp_path / "keep.inn"
    path.write_bytes(b"precious")
    path.chmod(0o444)  # no write bit: refused even for root, whom os.access lets write anything
    with pytest.raises(PermissionError,
                       match=r"refusing to replace '.*keep\.inn': it is read-only \(mode -r--r--r--\)"):
        write_bytes(path, b"new")
    assert path.read_bytes() == b"precious" and _names(tmp_path) == ["keep.inn"]
    assert check_target(tmp_path / "new.inn") is None


def _tiny_imodel() -> inn.IntegralModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return inn.convert(net, (torch.randn(2, 4),), inn.ConvertConfig(permute=False))


def test_inn_save_goes_through_the_writer(tmp_path):
    imodel = _tiny_imodel()
    path = tmp_path / "m.inn"
    path.write_bytes(b"old")
    path.chmod(0o640)
    inn.save(imodel, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(inn.load(path)(x), imodel(x))
    link = tmp_path / "link.inn"
    link.symlink_to(path)
    before = path.read_bytes()
    with pytest.raises(UnsafeTargetError, match="it is a symbolic link"):
        inn.save(imodel, link)
    with pytest.raises(UnsafeTargetError, match="it is a character device"):
        inn.save(imodel, "/dev/full")  # as root, the old code replaced /dev/full by a regular file
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)
    assert path.read_bytes() == before and link.is_symlink()
    assert _names(tmp_path) == ["link.inn", "m.inn"]


KILLED = textwrap.dedent('''
    import os, sys, time
    from torchinn.io.fileio import atomic_open

    path, how, ready = sys.argv[1:]
    with atomic_open(path) as f:
        f.write(b"half of the new file")
        f.flush()
        if how == "exit":
            os._exit(3)
        open(ready, "w").close()
        time.sleep(300)
''')


@pytest.mark.skipif(not LINUX, reason="the anonymous temporary file (O_TMPFILE) is Linux only")
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_killed_writer_leaves_the_old_file_and_nothing_else(tmp_path, how):
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "net.inn"
    path.write_bytes(b"the old model")
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path), how, str(ready)], env=env,
                            stderr=subprocess.PIPE)
    if how == "sigkill":
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), proc.communicate()[1].decode()
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (3 if how == "exit" else -signal.SIGKILL), err.decode()
    assert path.read_bytes() == b"the old model"
    assert _names(folder) == ["net.inn"]
