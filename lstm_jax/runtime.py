"""Process-wide runtime settings that make XLA:CPU training faster: glibc's allocator kept from paging,
a persistent compilation cache for the experiment binaries, and pinning a run to some of the CPU cores
(`set_cpu_affinity`, the binaries' ``--cpus``) so that runs side by side do not share them.

XLA:CPU allocates the temporary buffers of every executable call afresh (the saved gates of an LSTM scan,
gradients, logits) and frees them when the call ends. With glibc's default `malloc`, every buffer above its
mmap threshold (128 KiB growing to at most 32 MiB) and every buffer served from a per-thread arena is
`mmap`-ed and `munmap`-ed on each call, so each training step page-faults and zero-fills its working set
again. Measured on the 2-core benchmark machine (`python -m benchmarks.run`, shapes of the issue): 8,500 to
15,000 page faults per step and a quarter to a third of the step's CPU time in the kernel. (That is
jaxlib 0.10, what Python 3.11 gets. jaxlib 0.12 reuses most buffers itself: tests/test_runtime.py's probe
faults 1.8k-3.4k times per call there without the setting instead of 262k, and on the Zen 4 benchmark host
the setting bought less: shape B 25.7-27.3 ms against 28.4-29.9 ms without it, two runs each.)

`tune_malloc()` asks glibc (through `mallopt`) for one arena, no `mmap`-ed chunks and a 2 GiB trim
threshold: freed buffers stay in the heap and the next step reuses the same, already mapped pages. The price
is that the process keeps its peak heap instead of returning it to the system between steps, which is what a
training process wants. Numerics do not change (the allocator only decides where buffers live).

`import lstm_jax` calls `tune_malloc()` once. It leaves glibc's defaults where JAX will run on an accelerator
(a GPU or TPU plugin is installed and ``JAX_PLATFORMS`` does not put ``cpu`` first;
`accelerator_platform()`): the setting was measured for XLA:CPU's buffers only, and one arena for every
thread is suspected of slowing XLA:GPU's many-threaded compilation (on an H200, lstm_jax's workers, which
tuned malloc, took 1.5-32 s for a first step that the untuned Flax worker took 0.9-4.7 s for; not measured
with the tuning alone changed). ``LSTM_JAX_TUNE_MALLOC=0`` keeps glibc's defaults everywhere, ``=1`` applies
the setting everywhere. It does nothing on systems without glibc (macOS, Windows, musl); threads that already
have their own arena keep it, so the setting works best before the first JAX computation.

`jit_choosing_cpu_dots(fn, ...)` is `jax.jit(fn, ...)` that, on the CPU backend, compiles a program whose
largest matmul has at least `EIGEN_DOTS_MIN_GFLOP` GFLOP with Eigen's dots instead of YNNPACK's (XLA's
default for row-major dots): measured on the Zen 4 benchmark host, Eigen ran large dots 7-48% faster
(`[10000, 300] @ [300, 796]` 21.9 against 27.3 ms, `[32000, 300] @ [300, 796]` 100 against 149 ms) and B's
small-dot step 1.7% slower without YNNPACK (benchmarks/README.md, 2026-12-06). The engine's train and
eval steps and the benchmark's step use it. Only the library computing each product changes (float
summation order, not the mathematics).

`enable_compilation_cache()` (called by the experiment binaries, not on import) turns on JAX's persistent
compilation cache, so a second run of the same shapes (another seed, a resumed run, an ensemble's members)
loads its executables from disk instead of compiling them again: `imdb_best` compiles a train step for each
of its ~25 length buckets, and a warm cache made a whole run 129 s shorter on 2 cores (853 -> 724 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lstm_jax.errors import UserError

__all__ = [
    "GLIBC_TUNABLES",
    "DEFAULT_COMPILATION_CACHE",
    "tune_malloc",
    "malloc_tuned",
    "accelerator_platform",
    "enable_compilation_cache",
    "cpu_list",
    "set_cpu_affinity",
    "usable_cores",
    "cpu_devices_flags",
    "set_cpu_devices",
    "EIGEN_DOTS_MIN_GFLOP",
    "largest_dot_gflop",
    "jit_choosing_cpu_dots",
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


def accelerator_platform() -> str | None:
    """The accelerator JAX will run on by default, found without starting a backend: the first entry of
    ``JAX_PLATFORMS`` when that is set (None when it is ``cpu``), else an installed plugin's name
    (``jax_plugins.xla_cuda13``, a module or an entry point: "cuda13"; ``libtpu``: "tpu"), else None (JAX
    will run on the CPU)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        first = platforms.split(",")[0].strip()
        return None if first == "cpu" else first
    import importlib.util
    import pkgutil

    try:
        import jax_plugins  # the namespace JAX discovers its GPU plugins in
    except ImportError:
        jax_plugins = None
    if jax_plugins is not None:
        for module in pkgutil.iter_modules(getattr(jax_plugins, "__path__", [])):
            if module.name.startswith("xla_"):
                return module.name[len("xla_") :]
    from importlib.metadata import entry_points

    for ep in entry_points(group="jax_plugins"):  # plugins registered by entry point alone
        return ep.name.removeprefix("xla_")
    if importlib.util.find_spec("libtpu") is not None:
        return "tpu"
    return None


def tune_malloc() -> bool:
    """Keeps XLA's per-step buffers in glibc's heap (see the module docstring); True when applied.

    Idempotent. `LSTM_JAX_TUNE_MALLOC`: unset (or "auto") applies it unless `accelerator_platform()`
    names one; "0"/"off" never (returns False and changes nothing); "1"/"on" always.
    """
    global _TUNED
    if _TUNED:
        return True
    switch = os.environ.get("LSTM_JAX_TUNE_MALLOC", "auto").strip().lower()
    if switch in _OFF_WORDS:
        return False
    if switch in ("", "auto") and accelerator_platform() is not None:
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


def cpu_list(spec: str, available: Iterable[int] | None = None) -> list[int]:
    """The CPU cores named by `spec`, sorted: a list such as ``"0"`` or ``"0-3,8"``, or ``"k/n"``, the k-th
    of n equal shares (in order) of the `available` cores (default: those this process may use now).

    Raises `UserError` for a malformed spec or a core that is not available.
    """
    avail = sorted(os.sched_getaffinity(0) if available is None else available)
    spec = spec.strip()
    hint = "pass e.g. --cpus=0-3,8 (a core list) or --cpus=1/2 (the first half of the cores)"
    if "/" in spec:
        k, _, n = spec.partition("/")
        if not (_digits(k.strip()) and _digits(n.strip())) or not 1 <= int(k) <= int(n):
            raise UserError(f"--cpus={spec} is not a share k/n with 1 <= k <= n; {hint}")
        k, n = int(k), int(n)
        if n > len(avail):
            raise UserError(
                f"--cpus={spec}: {n} shares of {len(avail)} available core(s) ({_ranges(avail)});"
                " use at most as many shares as cores"
            )
        return avail[(k - 1) * len(avail) // n : k * len(avail) // n]
    cores: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not _digits(lo) or (sep and not _digits(hi)) or (sep and int(hi) < int(lo)):
            raise UserError(f"--cpus={spec} is not a list of cores; {hint}")
        cores.update(range(int(lo), int(hi if sep else lo) + 1))
    missing = sorted(cores - set(avail))
    if missing:
        raise UserError(
            f"--cpus={spec} names core(s) {_ranges(missing)} this process cannot use; the available"
            f" cores are {_ranges(avail)}"
        )
    return sorted(cores)


def _digits(text: str) -> bool:
    """Whether `text` is a number in ASCII digits: `str.isdigit` alone accepts superscripts ("²"), which
    `int` refuses, and other scripts' digits, which no core list is written in."""
    return text.isascii() and text.isdigit()


def _ranges(cores: Sequence[int]) -> str:
    out, i = [], 0
    while i < len(cores):
        j = i
        while j + 1 < len(cores) and cores[j + 1] == cores[j] + 1:
            j += 1
        out.append(str(cores[i]) if i == j else f"{cores[i]}-{cores[j]}")
        i = j + 1
    return ",".join(out)


def set_cpu_affinity(spec: str) -> list[int]:
    """Restricts this process (every thread it has, and every thread it starts from now on) to the cores
    of `cpu_list(spec)`; returns them.

    XLA:CPU sizes its thread pools from the cores a process may use when its backend starts, so call this
    before the first JAX computation (`lstm_jax.cli` does, for ``--cpus``). Two trainings side by side on
    a 2-core machine, each on its own core, got 33% more steps per second between them than one training
    using both cores (`imdb_best`'s step, B=128, 256 tokens: 1.12 s alone on two cores; 1.58 and 1.80 s
    side by side on one core each), because XLA's two-thread matmuls and loops at these sizes are far
    from twice as fast as one thread. Linux only (`os.sched_setaffinity`).
    """
    if not hasattr(os, "sched_setaffinity"):
        raise UserError(f"--cpus needs Linux (os.sched_setaffinity); this is {sys.platform}")
    from jax._src import xla_bridge

    cores = cpu_list(spec)
    if xla_bridge.backends_are_initialized():
        raise UserError(
            "--cpus must take effect before JAX starts its backend (its thread pools are sized then);"
            " set it before the first computation"
        )
    os.sched_setaffinity(0, cores)
    # `sched_setaffinity(0, ...)` pins the calling thread only: threads started before it (OpenBLAS's
    # workers, started when numpy is imported) would go on running on every core. Pin each of them too.
    for tid in _thread_ids():
        with contextlib.suppress(OSError):  # a thread that ended since the listing
            os.sched_setaffinity(tid, cores)
    return cores


def _thread_ids() -> list[int]:
    """The ids of this process's threads (Linux: /proc/self/task); empty where that cannot be read."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task") if t.isdigit()]
    except OSError:
        return []


def usable_cores() -> int:
    """How many CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_devices_flags(count: int, flags: str = "") -> str:
    """`flags` (an ``XLA_FLAGS`` value) with `count` XLA host CPU devices instead of one; for `count` > 1
    also single-threaded kernels (``--xla_cpu_multi_thread_eigen=false``), so that each device is one core's
    worth of work. A device count already in `flags` is replaced."""
    kept = [
        f
        for f in flags.split()
        if not f.startswith(
            ("--xla_force_host_platform_device_count", "--xla_cpu_multi_thread_eigen")
        )
    ]
    if count > 1:
        kept += [
            f"--xla_force_host_platform_device_count={count}",
            "--xla_cpu_multi_thread_eigen=false",
        ]
    return " ".join(kept)


def set_cpu_devices(spec: str) -> int:
    """Splits the CPU into `spec` XLA devices (``"auto"``: one per core this process may use, after
    `set_cpu_affinity`); returns the count. The engine then trains data-parallel over them
    (`lstm_jax.train.data_parallel_grads`): each core runs the whole step on its slice of the batch.

    Why: XLA:CPU's two-thread kernels are far from twice as fast as one thread at LSTM sizes, while two
    half-batches on one core each share nothing but the gradient average. On the 2-core machine two devices
    gave 1.33x (Macbeth) and 1.34x (fake news) the examples/s of one, 0.96x on the small IMDB tutorial
    (benchmarks/README.md). That was with the XLA impls; the native CPU kernel (``impl="native"``, what
    ``"auto"`` picks on CPU) splits the batch over the cores itself, and with it one device was faster on
    all four benchmark shapes (2026-12-02: A 56.2 vs 58.3 ms, B 21.6 vs 22.2, C 9.7 vs 10.6, D 164.6 vs
    260.7). Only the CPU platform is affected (an accelerator stays the default device).
    Must run before JAX starts its backend (`lstm_jax.cli` does, for ``--cpu_devices``).
    """
    from jax._src import xla_bridge

    text = str(spec).strip().lower()
    if text == "auto":
        count = usable_cores()
    elif _digits(text) and int(text) >= 1:
        count = int(text)
    else:
        raise UserError(
            f"--cpu_devices={spec} is not a device count; pass a positive integer (e.g. --cpu_devices=2)"
            " or --cpu_devices=auto (one device per available core)"
        )
    if xla_bridge.backends_are_initialized():
        raise UserError(
            "--cpu_devices must take effect before JAX starts its backend; set it before the first"
            " computation"
        )
    os.environ["XLA_FLAGS"] = cpu_devices_flags(count, os.environ.get("XLA_FLAGS", ""))
    return count


# A program whose largest matmul has at least this many GFLOP is compiled with Eigen's dots, not YNNPACK's.
EIGEN_DOTS_MIN_GFLOP = 1.0
# XLA:CPU's default library fusions less YNNPACK's dots (`LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`).
_EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
_DOT = re.compile(
    r"stablehlo\.dot_general .*?contracting_dims = \[([\d, ]*)\] x \[[\d, ]*\].*?"
    r": \(tensor<([^>]*)>, tensor<[^>]*>\) -> tensor<([^>]*)>"
)


def _dims(tensor_type: str) -> list[int]:
    """``"2000x300xf32"`` -> ``[2000, 300]``."""
    return [int(d) for d in tensor_type.split("x")[:-1]]


def largest_dot_gflop(stablehlo: str) -> float:
    """The largest `dot_general` of a lowered program's StableHLO text (`jax.jit(f).lower(...).as_text()`),
    in GFLOP (2 x output elements x contracted size), scan and custom-VJP bodies included; 0 without one."""
    largest = 0
    for m in _DOT.finditer(stablehlo):
        contracting, lhs, out = m.groups()
        try:
            k = math.prod(_dims(lhs)[int(d)] for d in contracting.split(",") if d.strip())
            largest = max(largest, 2 * math.prod(_dims(out)) * k)
        except (ValueError, IndexError):  # a dynamic dimension ("?"): not a size to count
            continue
    return largest / 1e9


def jit_choosing_cpu_dots(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """`jax.jit(fn, **jit_kwargs)`, whose program is compiled with Eigen's dots instead of YNNPACK's when
    it runs on the CPU backend and its largest matmul has at least `EIGEN_DOTS_MIN_GFLOP` GFLOP (see the
    module docstring). The choice is made once, from the program of the first call (traced an extra time
    then); later calls with other shapes keep it. Elsewhere it is `jax.jit(fn, **jit_kwargs)` itself."""
    import jax

    plain = jax.jit(fn, **jit_kwargs)
    if jax.default_backend() != "cpu":
        return plain
    chosen: list[Any] = []

    def choose(args: tuple, kwargs: dict) -> Any:
        if not chosen:
            gflop = largest_dot_gflop(plain.lower(*args, **kwargs).as_text())
            big = gflop >= EIGEN_DOTS_MIN_GFLOP
            chosen.append(jax.jit(fn, compiler_options=_EIGEN_DOTS, **jit_kwargs) if big else plain)
        return chosen[0]

    def call(*args: Any, **kwargs: Any) -> Any:
        return choose(args, kwargs)(*args, **kwargs)

    def lower(*args: Any, **kwargs: Any) -> Any:
        return choose(args, kwargs).lower(*args, **kwargs)

    call.lower = lower  # type: ignore[attr-defined]
    return call
