"""Process-wide runtime settings that make XLA:CPU training faster: glibc's allocator kept from paging, and
a persistent compilation cache for the experiment binaries.

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

`import lstm_jax` calls `tune_malloc()` once. Set `LSTM_JAX_TUNE_MALLOC=0` to keep glibc's defaults. It does
nothing on systems without glibc (macOS, Windows, musl); threads that already have their own arena keep it,
so the setting works best before the first JAX computation.

`enable_compilation_cache()` (called by the experiment binaries, not on import) turns on JAX's persistent
compilation cache, so a second run of the same shapes (another seed, a resumed run, an ensemble's members)
loads its executables from disk instead of compiling them again: `imdb_best` compiles a train step for each
of its ~25 length buckets, and a warm cache made a whole run 129 s shorter on 2 cores (853 -> 724 s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = [
    "GLIBC_TUNABLES",
    "DEFAULT_COMPILATION_CACHE",
    "tune_malloc",
    "malloc_tuned",
    "enable_compilation_cache",
]

# The setting: (glibc tunable name, <malloc.h> mallopt parameter, value).
_SETTINGS = (
    ("arena_max", -8, 1),  # M_ARENA_MAX: one arena for every thread
    ("mmap_max", -4, 0),  # M_MMAP_MAX: never serve a chunk by mmap
    ("trim_threshold", -1, 2**31 - 1),  # M_TRIM_THRESHOLD: the largest int, 2 GiB of free heap kept
)
# The same setting for a process that does not import lstm_jax: `GLIBC_TUNABLES=<this> python ...`.
GLIBC_TUNABLES = ":".join(f"glibc.malloc.{name}={value}" for name, _, value in _SETTINGS)

_TUNED = False
_OFF_WORDS = ("0", "false", "no", "off")  # what the LSTM_JAX_* switches accept for "off"

DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "lstm_jax", "jax_compilation_cache")
_CACHE_MAX_BYTES = 2 * 2**30  # least recently used executables are evicted beyond 2 GiB


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
    if os.environ.get("LSTM_JAX_TUNE_MALLOC", "1").strip().lower() in _OFF_WORDS:
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = all(libc.mallopt(param, value) == 1 for _, param, value in _SETTINGS)
    _TUNED = ok
    return ok


def malloc_tuned() -> bool:
    """Whether `tune_malloc()` has been applied in this process."""
    return _TUNED


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache; returns its directory, or None when left off.

    The directory is `$LSTM_JAX_COMPILATION_CACHE`, by default `DEFAULT_COMPILATION_CACHE` in the user's
    home; `LSTM_JAX_COMPILATION_CACHE=off` (or 0, or empty) disables it. A cache the user configured for
    JAX itself (`JAX_COMPILATION_CACHE_DIR` or `jax.config`) is left as it is. Entries are keyed by JAX on
    the program, its shapes, the compiler options and the jaxlib version, so a hit returns the executable a
    fresh compilation would build; numerics do not change.
    """
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    setting = os.environ.get("LSTM_JAX_COMPILATION_CACHE")
    if setting is not None and setting.strip().lower() in (*_OFF_WORDS, ""):
        return None
    path = os.path.abspath(os.path.expanduser(setting or DEFAULT_COMPILATION_CACHE))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # an unwritable home: compile as usual rather than fail the run
    jax.config.update("jax_compilation_cache_dir", path)
    if jax.config.jax_compilation_cache_max_size == -1 and _has_filelock():
        # JAX's size cap locks the directory with `filelock` (a dependency of lstm_jax); without the
        # package a capped cache fails to read or write every entry, so the cap is only set with it.
        jax.config.update("jax_compilation_cache_max_size", _CACHE_MAX_BYTES)
    return path


def _has_filelock() -> bool:
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True
