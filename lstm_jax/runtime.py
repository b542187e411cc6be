"""Process-wide runtime settings that make XLA:CPU training faster: glibc's allocator kept from paging.

XLA:CPU allocates the temporary buffers of every executable call afresh (the saved gates of an LSTM scan,
gradients, logits) and frees them when the call ends. With glibc's default `malloc`, every buffer above its
mmap threshold (128 KiB growing to at most 32 MiB) and every buffer served from a per-thread arena is
`mmap`-ed and `munmap`-ed on each call, so each training step page-faults and zero-fills its working set
again. Measured on the 2-core benchmark machine (`python -m benchmarks.run`, shapes of the issue): 8,500 to
15,000 page faults per step and a quarter to a third of the step's CPU time in the kernel.

`tune_malloc()` asks glibc (through `mallopt`) for one arena, no `mmap`-ed chunks and a 2 GiB trim
threshold: freed buffers stay in the heap and the next step reuses the same, already mapped pages. The price
is that the process keeps its peak heap instead of returning it to the system between steps, which is what a
training process wants. Numerics do not change (the allocator only decides where buffers live).

`import lstm_jax` calls it once. Set `LSTM_JAX_TUNE_MALLOC=0` to keep glibc's defaults. It does nothing on
systems without glibc (macOS, Windows, musl); threads that already have their own arena keep it, so the
setting works best before the first JAX computation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_malloc", "malloc_tuned"]

# <malloc.h> mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt's int takes: 2 GiB of free heap kept

_TUNED = False


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # not glibc (e.g. musl): mallopt's parameters differ
    return libc


def tune_malloc() -> bool:
    """Keeps XLA's per-step buffers in glibc's heap (see the module docstring); True when applied.

    Idempotent; honours `LSTM_JAX_TUNE_MALLOC=0` (returns False and changes nothing).
    """
    global _TUNED
    if _TUNED:
        return True
    if os.environ.get("LSTM_JAX_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        )
    )
    _TUNED = ok
    return ok


def malloc_tuned() -> bool:
    """Whether `tune_malloc()` has been applied in this process."""
    return _TUNED
