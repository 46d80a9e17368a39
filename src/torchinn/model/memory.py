"""Memory back to the system between the stages of a long call (:func:`torchinn.convert`,
:func:`torchinn.compress`).

PyTorch allocates CPU tensors with ``malloc``. glibc serves large blocks from ``mmap`` and gives
them back when freed, but after the first large block is freed it raises its threshold (up to
32 MiB) and serves blocks below it from its heap, which it keeps: a network's weights, copied and
freed while converting, stay in the process's resident memory after the copies are gone. On a
0.18 B-parameter Llama that was about 1x the model for the rest of ``compress`` (3.9x the model at
the peak, 3.1x with the memory given back: benchmarks/RESULTS.md). :func:`release_memory`
collects garbage (reference cycles that hold tensors) and asks glibc to give back its free pages
(``malloc_trim``); elsewhere it only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

from torch import nn

__all__ = ["RELEASE_BYTES", "release_memory", "weight_bytes"]

_LIBC: list = []


def _trim() -> object | None:
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib = lib if hasattr(lib, "malloc_trim") else None
            except OSError:  # no glibc (musl has no malloc_trim either)
                lib = None
        _LIBC.append(lib)
    return _LIBC[0]


#: below this many bytes of weights :func:`release_memory` does nothing: what a small network
#: leaves behind is not worth the 0.1-0.2 s of a collection
RELEASE_BYTES = 64 * 2**20


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each storage once)."""
    seen: dict[int, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def release_memory(nbytes: int) -> None:
    """Collect garbage and give the allocator's free memory back to the system (glibc), where the
    network's weights take ``nbytes`` of at least :data:`RELEASE_BYTES`; 0.1-0.2 s, next to
    stages that take seconds at that size."""
    if nbytes < RELEASE_BYTES:
        return
    gc.collect()
    lib = _trim()
    if lib is not None:
        lib.malloc_trim(0)
