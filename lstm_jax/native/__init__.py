"""The LSTM recurrence as a native CPU kernel (XLA FFI custom calls), compiled on first use.

`lstm_jax.core`'s ``impl="native"`` runs the same mathematics as ``impl="fused"`` (hoisted input
projection, state-only backward recurrence, weight gradients as single matmuls afterwards, or for small
layers summed inside the backward call), but each of the
two recurrences is one call into `lstm_cpu.cc` instead of a `lax.scan` of XLA kernels: on XLA:CPU every
loop iteration costs several kernel dispatches, which dominate at LSTM sizes (measured in
benchmarks/README.md).

The source is compiled once per machine (and per jaxlib: its version and FFI headers are in the cache key)
into ``~/.cache/lstm_jax/native/`` (``LSTM_JAX_NATIVE_CACHE`` overrides) with ``-O3 -march=native``
(``LSTM_JAX_NATIVE_MARCH`` overrides), by the C++ compiler of the `ziglang` package (a project dependency,
so that a machine with only Python and pip has one), or ``$LSTM_JAX_CXX``, or ``c++`` on the PATH. The
source is compiled for that `-march`, then linked for the baseline CPU: zig builds its static C++ library
once per link target (minutes), so builds for several `-march` values share one, and the library runs on
every CPU of the architecture.
``LSTM_JAX_NATIVE=off`` turns the kernel off; when it cannot be built, `available()` is False, says why in
`unavailable_reason()`, and ``impl="auto"`` uses the XLA impls (with one warning per process that says
why; none for ``LSTM_JAX_NATIVE=off``). So does a compiler step that runs past 10 minutes (stopped, with
its children). zig is run from the `ziglang` package's directory, not as ``sys.executable -m ziglang``,
which in an embedded Python (uwsgi, an application hosting Python) starts the host application.

`forward_x`/`backward_x` do the same from the inputs `xs [T, B, F]`, projecting them inside each step's
matmul (`[x_t, h] @ [kernel; rk]`) instead of taking XLA's `[T, B, 4H]` projection `zx`. `forward_ids`
takes an embedding folded into the projection, `table [V, 4H]` and token ids `[T, B]`, reading each step's
rows by id (no `[T, B, 4H]` gather first); `scatter_rows` is its transpose, the table's gradient.

Shapes (time-major, float32): `zx [T, B, 4H]`, `mask [T, B]` (1.0 = real step), `h0, c0, rmask [B, H]`,
`rk [H, 4H]`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import filelock
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_SOURCE = Path(__file__).with_name("lstm_cpu.cc")
_FORWARD, _BACKWARD = "lstm_jax_native_forward", "lstm_jax_native_backward"
_FORWARD_X, _BACKWARD_X = "lstm_jax_native_forward_x", "lstm_jax_native_backward_x"
_FORWARD_IDS = "lstm_jax_native_forward_ids"
_SCATTER_ROWS = "lstm_jax_native_scatter_rows"
_GENERATE = "lstm_jax_native_generate"
_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-fno-math-errno"]
_LINK_FLAGS = ["-shared", "-fPIC"]
_ZIG_LINK_FLAGS = [
    "-mcpu=baseline"
]  # zig's libc++ for the baseline CPU, whatever the kernel's -march


def _vector_flags() -> list[str]:
    """On x86, ``-mprefer-vector-width=512``: the kernel's vectors are 16 floats wherever AVX-512 is there
    (its register tiles are sized for AVX-512's 32 zmm registers), and clang's tuning for every Intel
    AVX-512 CPU (skylake-avx512 to graniterapids, so ``-march=native`` on those hosts) prefers 256 bits and
    splits each 512-bit operation in two: an Intel Xeon host measured an fp32 FMA peak of 222 GFLOP/s
    (`fma_peak_gflops`) instead of 423, and the matmul's 6 x 4 tile of accumulators spilled to the stack.
    AMD's Zen 4 and Zen 5 tunings already keep 512 bits; on AVX2 machines the vectors are 8 floats and the
    flag changes nothing. (benchmarks/README.md, 2026-12-04, night.)"""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return ["-mprefer-vector-width=512"]
    return []


def _march() -> str:
    """The `-march` to build for: ``$LSTM_JAX_NATIVE_MARCH`` (e.g. ``x86-64-v3`` for every AVX2 machine of a
    cluster) or ``native``."""
    return os.environ.get("LSTM_JAX_NATIVE_MARCH", "").strip() or "native"


__all__ = [
    "available",
    "unavailable_reason",
    "build",
    "forward",
    "backward",
    "forward_x",
    "backward_x",
    "generate",
    "threads_per_device",
    "l2_cache_bytes",
    "stats",
    "fma_peak_gflops",
]


# Each compiler step (compile, link) and the test call of a library built for another `-march` is stopped
# after this many seconds, with its children: a compiler that hangs (or a host application started in its
# place) then costs this long once, and the XLA impls run. zig's first link builds its C++ library (one to
# three minutes on a 2-core machine), so the compile limit leaves room for a slow, busy machine.
_COMPILE_TIMEOUT_S = 600.0
_PROBE_TIMEOUT_S = 120.0


def _lock_timeout_s() -> float:
    """How long a process waits for another's build of the same library (one compile, one link)."""
    return 2 * _COMPILE_TIMEOUT_S + 60.0


def _zig() -> str | None:
    """The `zig` binary that the `ziglang` package ships, found in the package's directory (not imported,
    nothing run). ``python -m ziglang`` needs `sys.executable` to be a Python interpreter, and an embedded
    Python's (uwsgi, an application hosting Python) is the host application: run with ``-m ziglang`` it
    started another host, which could hang."""
    try:
        spec = importlib.util.find_spec("ziglang")
    except (ImportError, ValueError):
        return None
    for folder in (spec and spec.submodule_search_locations) or []:
        for name in ("zig", "zig.exe"):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def _is_zig(cmd: list[str]) -> bool:
    """Whether `cmd` runs zig's clang (``zig c++``, ``python -m ziglang c++``), which names CPU models with
    underscores and needs the baseline link target."""
    return "ziglang" in cmd or Path(cmd[0]).name in ("zig", "zig.exe")


def _python() -> str | None:
    """A Python interpreter to run a probe with: `sys.executable` where it is one, else this environment's
    (``bin/python3.X`` under `sys.prefix`); None where there is none. In an embedded Python `sys.executable`
    is empty or the host application (uwsgi, an application that embeds Python), which ``-c`` would start."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable]
    for prefix in dict.fromkeys([sys.prefix, sys.exec_prefix, sys.base_prefix]):
        for name in (f"python{version}", "python3", "python"):
            candidates.append(os.path.join(prefix, "bin", name))
    for path in candidates:
        name = os.path.basename(path or "")
        if re.fullmatch(r"(python|pypy)[0-9.]*[a-z]?(\.exe)?", name) and os.access(path, os.X_OK):
            return path
    return None


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)`` with no input, in a process
    group of its own that is killed whole when it runs past `timeout` (raising subprocess.TimeoutExpired)
    or this process is interrupted: the children of a compiler (zig runs clang) or of a host application
    started in a compiler's place would outlive a kill of the command alone."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _compilers() -> list[list[str]]:
    """Candidate C++ compiler commands, in order of preference."""
    found = []
    env = os.environ.get("LSTM_JAX_CXX", "").strip()
    if env:
        found.append(env.split())
    zig = _zig()
    if zig:
        found.append([zig, "c++"])
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            found.append([path])
    return found


def _cache_dir() -> Path:
    return Path(
        os.environ.get("LSTM_JAX_NATIVE_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "lstm_jax", "native")
    )


def build(compiler: list[str] | None = None) -> Path:
    """Compiles `lstm_cpu.cc` (if not cached) and returns the shared library's path.

    The cache key covers the source, the compiler command, the flags, jaxlib's version and the contents of
    the XLA FFI headers it ships (`_ffi_signature`), and this machine (``-march=native``): a copied home
    directory recompiles on another CPU, and a new jaxlib recompiles whatever version of jax is paired
    with it.
    """
    candidates = [compiler] if compiler else _compilers()
    if not candidates:
        raise RuntimeError(
            "no C++ compiler found: install the `ziglang` package (pip install ziglang), or set "
            "LSTM_JAX_CXX to a C++17 compiler"
        )
    include = jax.ffi.include_dir()
    ffi = _ffi_signature(include)
    source = _SOURCE.read_bytes()
    cpu = _cpu_signature()
    errors = []
    for cmd in candidates:
        march = _march()
        # zig names CPU models with underscores (x86_64_v3), gcc and clang with dashes
        if _is_zig(cmd):
            march = march.replace("-", "_")
        flags = [*_FLAGS, f"-march={march}", *_vector_flags()]
        link_flags = [*_LINK_FLAGS, *(_ZIG_LINK_FLAGS if _is_zig(cmd) else [])]
        key = hashlib.sha256(
            b"\0".join(
                [
                    source,
                    " ".join(cmd).encode(),
                    " ".join(flags).encode(),
                    " ".join(link_flags).encode(),
                    ffi,
                    cpu.encode(),
                ]
            )
        ).hexdigest()[:20]
        target = _cache_dir() / f"lstm_cpu-{key}.so"
        if _intact(target):
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(str(target) + ".lock")
            lock.acquire(timeout=_lock_timeout_s())  # one build per machine, not one per process
        except filelock.Timeout as e:
            raise RuntimeError(
                f"another process has held {lock.lock_file} for over {_lock_timeout_s():g} s "
                "(a build that hangs?); set LSTM_JAX_NATIVE_CACHE to another directory, or "
                "LSTM_JAX_NATIVE=off"
            ) from e
        except OSError as e:
            raise RuntimeError(
                f"the kernel's cache directory {target.parent} is not writable ({e}); set "
                "LSTM_JAX_NATIVE_CACHE to a writable directory"
            ) from e
        try:
            if _intact(target):
                return target
            if target.exists():
                logging.getLogger(__name__).warning(
                    "lstm_jax: the cached native kernel %s is damaged (truncated?); rebuilding it",
                    target,
                )
            error = _compile(cmd, flags, link_flags, include, target)
        finally:
            lock.release()
        if error is None:
            return target
        errors.append(error)
    raise RuntimeError("could not compile the native LSTM kernel:\n" + "\n".join(errors))


def _ffi_signature(include: str) -> bytes:
    """What the kernel's binary interface with XLA depends on: jaxlib's version and a hash of every header
    under `include` (``jax.ffi.include_dir()``, shipped by jaxlib), names and contents. Not jax's version:
    jax and jaxlib are released separately (jax 0.x.1 runs on jaxlib 0.x.0), and the headers, the FFI's
    structs and call frame, come with jaxlib. Unchanged files give the same bytes, so an unchanged
    environment keeps its cached library."""
    import jaxlib.version

    digest = hashlib.sha256()
    root = Path(include)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"jaxlib {jaxlib.version.__version__} headers {digest.hexdigest()}".encode()


def _intact(path: Path) -> bool:
    """Whether `path` is a whole 64-bit ELF file: its segments and section headers lie inside it. Loading a
    truncated library (a copy or sync of the cache cut short, a full disk) kills the process with SIGBUS
    instead of raising, so a damaged one is rebuilt rather than loaded."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
            if len(head) < 64 or head[:5] != b"\x7fELF\x02":
                return False
            end = "<" if head[5] == 1 else ">"
            phoff, shoff = struct.unpack_from(end + "QQ", head, 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 0x36)
            if shoff + shentsize * shnum > size or phoff + phentsize * phnum > size:
                return False
            if phnum and phentsize < 40:  # an Elf64_Phdr is 56 bytes; p_filesz ends at byte 40
                return False
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        # Elf64_Phdr: p_type, p_flags (4 bytes each), p_offset, p_vaddr, p_paddr, p_filesz (8 each).
        offset = struct.unpack_from(end + "Q", table, i * phentsize + 8)[0]
        filesz = struct.unpack_from(end + "Q", table, i * phentsize + 32)[0]
        if offset + filesz > size:
            return False
    return True


def _compile(
    cmd: list[str], flags: list[str], link_flags: list[str], include: str, target: Path
) -> str | None:
    """Compiles and links into `target` (atomically); returns None or the compiler's complaint."""
    logging.getLogger(__name__).warning(
        "lstm_jax: compiling the native CPU LSTM kernel with %s into %s (once per machine; one to "
        "three minutes the first time ziglang is used, seconds after that)",
        " ".join(cmd),
        target.parent,
    )
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    obj = tmp + ".o"
    try:
        for step in (
            [*cmd, *flags, f"-I{include}", "-c", str(_SOURCE), "-o", obj],
            [*cmd, *link_flags, obj, "-o", tmp],
        ):
            proc = _run(step, _COMPILE_TIMEOUT_S)
            if proc.returncode != 0:
                return f"{' '.join(cmd)}: {proc.stderr.strip()[-2000:]}"
        if not _intact(Path(tmp)):  # a "compiler" that exited 0 without writing a whole library
            return f"{' '.join(cmd)}: exited 0 but wrote no complete shared library to {tmp}"
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # readers never see a half-written library
        return None
    except subprocess.TimeoutExpired:
        return (
            f"{' '.join(cmd)}: no result after {_COMPILE_TIMEOUT_S:g} s, stopped (set LSTM_JAX_CXX "
            "to another C++17 compiler, or LSTM_JAX_NATIVE=off)"
        )
    except OSError as e:
        return f"{' '.join(cmd)}: {e}"
    finally:
        for path in (tmp, obj):
            if os.path.exists(path):
                os.unlink(path)


# The first CPU's lines of /proc/cpuinfo that the build depends on (-march=native): x86's model name and
# flags; ARM's Features and CPU model (the lines of its first CPU), which has neither of x86's.
_CPUINFO_KEYS = (
    "flags",
    "model name",
    "Features",
    "CPU implementer",
    "CPU architecture",
    "CPU variant",
    "CPU part",
)


def _cpu_signature() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(_CPUINFO_KEYS):
                    flags += line
                if line.startswith("flags") or (flags and not line.strip()):
                    break
    except OSError:
        pass
    return f"{platform.machine()} {platform.system()} {flags}"


_LIB: ctypes.CDLL | None = None

# Runs the library's vector code (`fma_peak_gflops`' loop, one short round) in a child process.
_PROBE = (
    "import ctypes, sys\n"
    "f = ctypes.CDLL(sys.argv[1]).lstm_jax_native_fma_gflops\n"
    "f.argtypes, f.restype = [ctypes.c_double], ctypes.c_double\n"
    "f(0.0)\n"
)


def _check_runs_here(path: Path) -> None:
    """Raises RuntimeError when a library built for an explicit ``LSTM_JAX_NATIVE_MARCH`` dies on this
    CPU (an instruction set it lacks: SIGILL, which would kill this process at the first kernel call), or
    when the test call gives no answer in `_PROBE_TIMEOUT_S`. Where there is no Python interpreter to run
    it with (`_python`), it is loaded untested."""
    python = _python()
    if python is None:
        return  # no verdict: load it as before
    try:
        proc = _run([python, "-c", _PROBE, str(path)], _PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"the test call of the kernel built for LSTM_JAX_NATIVE_MARCH={_march()} gave no answer in "
            f"{_PROBE_TIMEOUT_S:g} s ({python}); unset LSTM_JAX_NATIVE_MARCH (builds for this CPU, "
            "with no test call)"
        ) from None
    except OSError:
        return  # no verdict: load it as before
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise RuntimeError(
            f"the kernel built for LSTM_JAX_NATIVE_MARCH={_march()} cannot run on this CPU (a test "
            f"call died of {name}); unset LSTM_JAX_NATIVE_MARCH (builds for this CPU) or set it to "
            "an instruction set this CPU has"
        )


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the kernel once per process; returns None or why it is unavailable."""
    if os.environ.get("LSTM_JAX_NATIVE", "").strip().lower() in ("0", "off", "false", "no"):
        return "turned off by LSTM_JAX_NATIVE"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64", "aarch64"):
        return f"not built for {platform.system()} {platform.machine()}"
    global _LIB
    try:
        path = build()
        if _march() != "native":
            _check_runs_here(path)
        lib = ctypes.cdll.LoadLibrary(str(path))
    except (RuntimeError, OSError) as e:
        # Once per process (cached): impl="auto" falls back to the XLA impls, which is slower on CPU.
        logging.getLogger(__name__).warning(
            "lstm_jax: the native CPU LSTM kernel is unavailable, so impl='auto' uses the slower XLA "
            "impls (LSTM_JAX_NATIVE=off turns the kernel off without this warning): %s",
            e,
        )
        return str(e)
    lib.lstm_jax_native_stats_enable.argtypes = [ctypes.c_int]
    lib.lstm_jax_native_stats_take.argtypes = [ctypes.c_char_p, ctypes.c_int64]
    lib.lstm_jax_native_stats_take.restype = ctypes.c_int64
    lib.lstm_jax_native_fma_gflops.argtypes = [ctypes.c_double]
    lib.lstm_jax_native_fma_gflops.restype = ctypes.c_double
    _LIB = lib
    jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(lib.LstmForward), platform="cpu")
    jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(lib.LstmBackward), platform="cpu")
    jax.ffi.register_ffi_target(_FORWARD_X, jax.ffi.pycapsule(lib.LstmForwardX), platform="cpu")
    jax.ffi.register_ffi_target(_BACKWARD_X, jax.ffi.pycapsule(lib.LstmBackwardX), platform="cpu")
    jax.ffi.register_ffi_target(_FORWARD_IDS, jax.ffi.pycapsule(lib.LstmForwardIds), platform="cpu")
    jax.ffi.register_ffi_target(_SCATTER_ROWS, jax.ffi.pycapsule(lib.ScatterRows), platform="cpu")
    jax.ffi.register_ffi_target(_GENERATE, jax.ffi.pycapsule(lib.LstmGenerate), platform="cpu")
    return None


def unavailable_reason() -> str | None:
    """None when the kernel is usable, else why not (no compiler, build error, turned off)."""
    return _load()


def available() -> bool:
    """Whether ``impl="native"`` can run here (builds the kernel on the first call)."""
    return _load() is None


@functools.cache
def l2_cache_bytes() -> int:
    """One core's L2 cache as Linux reports it (sysfs), or 1 MiB where it does not say."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
        digits = size.rstrip("KM")
        if digits.isdigit() and int(digits) > 0:
            return int(digits) * scale
    return 1 << 20


def threads_per_device() -> int:
    """Threads for one kernel call: this process's cores divided among its CPU devices (one with
    ``--cpu_devices=auto``, where each device already is a core)."""
    from lstm_jax.runtime import usable_cores

    devices = max(1, len(jax.local_devices(backend="cpu")))
    return max(1, usable_cores() // devices)


def fma_peak_gflops(threads: int | None = None, seconds: float = 0.2, repeats: int = 3) -> float:
    """The machine's fp32 multiply-add peak in GFLOP/s, measured: `threads` (default: this process's
    usable cores) threads at once, each running independent chains of vector multiply-adds in registers
    for `seconds` (the kernel's instruction set, `-march` as built), summed over the threads; the best
    of `repeats`. No matmul can run faster; `benchmarks/ceiling.py` reports it beside the matmul ceiling.
    Raises RuntimeError where the kernel is unavailable."""
    import threading

    from lstm_jax.runtime import usable_cores

    _require()
    n = threads or usable_cores()

    def run(rates: list[float], i: int) -> None:
        rates[i] = _LIB.lstm_jax_native_fma_gflops(seconds)  # ctypes releases the GIL

    best = 0.0
    for _ in range(repeats):
        rates = [0.0] * n
        workers = [threading.Thread(target=run, args=(rates, i)) for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, sum(rates))
    return best


_STATS_FIELDS = ("calls", "wall_ns", "step_ns", "gemm_ns", "helpers", "helpers_started", "start_ns")


class stats:  # noqa: N801 (used as `with native.stats() as calls:`)
    """Times the training calls (forward and backward recurrences) run inside the block, for profiling:

        with native.stats() as calls:
            step(...); jax.block_until_ready(...)
        calls  # one dict per call kind and shape

    Each dict: `kind` (``forward``, ``forward_x``, ``backward``, ``backward_x``; ``+wg`` when the call
    also summed the weight gradients), `T`, `B`, `F` (inputs
    projected inside the call; 0 for the zx form), `H`, `calls`, and summed over the calls, in seconds:
    `wall` (the calling thread's time in the calls), `steps` (all threads' time in the timesteps),
    `matmul` (the part of `steps` in each step's `[rows, F + H] @ [F + H, 4H]` or backward product),
    with `matmul_flops` their FLOPs; `helpers` (helper tasks scheduled), `helpers_started` (those that
    started before the call ended or later) and `helper_start` (their summed delay from the call's start).
    The kernel times only while a block is open (one at a time); outside, the timing costs one load per step.
    """

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __enter__(self) -> list[dict]:
        _require()
        _take()  # drop anything recorded before
        _LIB.lstm_jax_native_stats_enable(1)
        return self.calls

    def __exit__(self, *exc) -> None:
        _LIB.lstm_jax_native_stats_enable(0)
        self.calls.extend(_take())


def _take() -> list[dict]:
    """The kernel's timing table (and clears it)."""
    size = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(size)
        need = _LIB.lstm_jax_native_stats_take(buf, size)
        if need < size:
            break
        size = need + 1
    calls = []
    for line in buf.value.decode().splitlines():
        key, *numbers = line.split("\t")
        kind, *dims = key.split()
        entry = {"kind": kind, **{d.split("=")[0]: int(d.split("=")[1]) for d in dims}}
        values = dict(zip(_STATS_FIELDS, map(int, numbers), strict=True))
        entry["calls"] = values["calls"]
        for name, field in (("wall", "wall_ns"), ("steps", "step_ns"), ("matmul", "gemm_ns")):
            entry[name] = values[field] / 1e9
        entry["helpers"] = values["helpers"]
        entry["helpers_started"] = values["helpers_started"]
        entry["helper_start"] = values["start_ns"] / 1e9
        t, b, f, h = entry["T"], entry["B"], entry["F"], entry["H"]
        products = 2 if kind.endswith("+wg") else 1  # with the weight gradients' product
        entry["matmul_flops"] = 2.0 * t * b * (f + h) * 4 * h * entry["calls"] * products
        calls.append(entry)
    return calls


def _require() -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"lstm_jax native LSTM kernel unavailable: {reason}")


def _forward_outs(t: int, b: int, rk: Array) -> list[tuple[int, ...]]:
    """The forward calls' output shapes: acts, outs, h_T, c_T, hc."""
    h = rk.shape[0]
    return [(t, b, 4 * h), (t, b, h), (b, h), (b, h), (t, b, 2 * h)]


def forward(
    rk: Array,
    bias: Array,
    zx: Array,
    mask: Array,
    h0: Array,
    c0: Array,
    rmask: Array,
    reverse: bool,
    threads: int | None = None,
) -> tuple[Array, Array, Array, Array, Array]:
    """The forward recurrence. Returns `(acts [T, B, 4H], outs [T, B, H], h_T, c_T, hc [T, B, 2H])`:
    the activated gates (written over `zx`'s buffer), outputs, final state and the saved `(h, c)` before
    each step."""
    args = (rk, bias, zx, mask, h0, c0, rmask)
    return _call(_FORWARD, args, _forward_outs(*zx.shape[:2], rk), 2, reverse, threads)


def forward_x(
    kernel: Array,
    rk: Array,
    bias: Array,
    xs: Array,
    mask: Array,
    h0: Array,
    c0: Array,
    rmask: Array,
    reverse: bool,
    threads: int | None = None,
) -> tuple[Array, Array, Array, Array, Array]:
    """`forward` with the input projection inside the recurrence: each step's matmul is
    `[x_t, h_{t-1} * rmask] @ [kernel; rk]`, from `xs [T, B, F]` (no `[T, B, 4H]` projection is made
    first). Returns what `forward` returns, the gates in a new buffer."""
    w = jnp.concatenate([kernel, rk], axis=0)
    outs = _forward_outs(*xs.shape[:2], rk)
    return _call(_FORWARD_X, (w, bias, xs, mask, h0, c0, rmask), outs, None, reverse, threads)


def forward_ids(
    rk: Array,
    bias: Array,
    table: Array,
    ids: Array,
    mask: Array,
    h0: Array,
    c0: Array,
    rmask: Array,
    reverse: bool,
    threads: int | None = None,
) -> tuple[Array, Array, Array, Array, Array]:
    """`forward` with the pre-activations read by id: step t's row b is `table[ids[t, b]]` (`table [V,
    4H]`, an embedding folded into the input projection; `ids [T, B]` integers, a negative id counting from
    the end and one outside `[-V, V)` giving a NaN row, as `jnp.take`), with no `[T, B, 4H]` gather
    first. Returns what `forward` returns, the gates in a new buffer."""
    args = (rk, bias, table, _int32_ids(ids, table.shape[0]), mask, h0, c0, rmask)
    return _call(_FORWARD_IDS, args, _forward_outs(*ids.shape, rk), None, reverse, threads)


def scatter_rows(dz: Array, ids: Array, vocab: int, threads: int | None = None) -> Array:
    """The transpose of `forward_ids`' reads: `[vocab, G]` zeros plus each row of `dz [..., G]` at its id
    in `ids` (same leading shape; a negative id counts from the end, one outside `[-vocab, vocab)` is
    dropped), summed in row order as XLA's scatter-add; threads split the columns."""
    g = dz.shape[-1]
    if g == 0:  # no columns to sum (H = 0): reshape(-1, 0) was a ZeroDivisionError
        return jnp.zeros((vocab, 0), jnp.float32)
    args = (_int32_ids(ids.reshape(-1), vocab), dz.reshape(ids.size, g))
    return _call(_SCATTER_ROWS, args, [(vocab, g)], None, None, threads)[0]


def _int32_ids(ids: Array, vocab: int) -> Array:
    """Token ids as the kernel's int32, the same rows named: an id of a wider or unsigned dtype outside
    `[-vocab, vocab)` becomes `vocab` (still outside the table) instead of wrapping into it (uint32
    `2**32 - 1` would be -1, the last row; int64 `2**32` row 0)."""
    info = jnp.iinfo(ids.dtype)
    if info.min >= np.iinfo(np.int32).min and info.max <= np.iinfo(np.int32).max:
        return ids.astype(jnp.int32)
    inside = ids < vocab if info.min == 0 else (ids >= -vocab) & (ids < vocab)
    return jnp.where(inside, ids, vocab).astype(jnp.int32)


def _call(name, args, out_shapes, aliased, reverse, threads, **attrs):
    """One kernel call: float32 outputs of `out_shapes`, the first written over input `aliased` (if
    not None); `reverse` None for a call without that attribute."""
    _require()
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes]
    call = jax.ffi.ffi_call(
        name,
        shapes,
        vmap_method="sequential",
        input_output_aliases={} if aliased is None else {aliased: 0},
    )
    if reverse is not None:
        attrs["reverse"] = bool(reverse)
    attrs["threads"] = threads or threads_per_device()
    return call(*args, **{k: np.int32(v) for k, v in attrs.items()})


def backward(
    rk: Array,
    acts: Array,
    hc: Array,
    mask: Array,
    d_outs: Array | None,
    dh_final: Array,
    dc_final: Array,
    rmask: Array,
    reverse: bool,
    threads: int | None = None,
    weight_grads: bool = False,
    bias_grad: bool = False,
) -> tuple[Array, ...]:
    """The backward recurrence. Returns `(dz [T, B, 4H], dh_0, dc_0)`: the gradient of the gates'
    pre-activations (written over `acts`' buffer) and of the initial state. `d_outs` None: the outputs'
    gradient is zero (only the final state was used), and no `[T, B, H]` zeros are made or read.
    `weight_grads`: also `d_rk [H, 4H]` (the sum over t of `(h_{t-1} * rmask)^T @ dz_t`) and
    `d_bias [4H]` (the sum of `dz`), accumulated inside the loop while each step's `dz_t` is in cache;
    `bias_grad` alone: `d_bias` only."""
    state = (acts, hc, mask, d_outs, dh_final, dc_final, rmask)
    return _backward(_BACKWARD, rk, None, state, reverse, threads, weight_grads, bias_grad)


# The backward calls' `weight_grads` attribute (lstm_cpu.cc: kNoGrads, kWeightAndBiasGrads, kBiasGrad).
_NO_GRADS, _WEIGHT_AND_BIAS_GRADS, _BIAS_GRAD = 0, 1, 2


def _backward(name, w, xs, state, reverse, threads, weight_grads, bias_grad):
    """One backward call with weights `w [F + H, 4H]` (passed transposed) and `state` = `(acts, hc, mask,
    d_outs, dh_final, dc_final, rmask)`; with inputs `xs [T, B, F]` (the x call) a `dxs [T, B, F]`
    output; with `weight_grads` `dw [F + H, 4H]` and `d_bias [4H]` last, with `bias_grad` alone
    `d_bias`."""
    acts, hc, mask, d_outs, dh_final, dc_final, rmask = state
    t, b, g = acts.shape
    h = g // 4
    f = 0 if xs is None else xs.shape[-1]
    dout = jnp.zeros((1,), jnp.float32) if d_outs is None else d_outs
    args = (w.T, acts, hc, mask, dout, dh_final, dc_final, rmask, *(() if xs is None else (xs,)))
    if weight_grads:
        mode, grads = _WEIGHT_AND_BIAS_GRADS, [(f + h, g), (g,)]
    elif bias_grad:
        mode, grads = _BIAS_GRAD, [(1,), (g,)]  # dw unused
    else:
        mode, grads = _NO_GRADS, [(1,), (1,)]
    outs = [(t, b, g), *([(t, b, f)] if f else []), (b, h), (b, h), *grads]
    results = _call(
        name, args, outs, 1, reverse, threads, has_dout=d_outs is not None, weight_grads=mode
    )
    if mode == _WEIGHT_AND_BIAS_GRADS:
        return tuple(results)
    if mode == _BIAS_GRAD:
        return (*results[:-2], results[-1])
    return tuple(results[:-2])


def backward_x(
    kernel: Array,
    rk: Array,
    acts: Array,
    hc: Array,
    mask: Array,
    d_outs: Array | None,
    dh_final: Array,
    dc_final: Array,
    rmask: Array,
    reverse: bool,
    threads: int | None = None,
    xs: Array | None = None,
    bias_grad: bool = False,
) -> tuple[Array, ...]:
    """The backward recurrence of `forward_x`: returns `(dz [T, B, 4H], dxs [T, B, F], dh_0, dc_0)`,
    the inputs' gradient `dz_t @ kernel^T` computed in the same per-step matmul as the state's. Given the
    inputs `xs [T, B, F]`, also `dw [F + H, 4H]` (the sum over t of `[x_t, h_{t-1} * rmask]^T @ dz_t`:
    the gradients of `[kernel; rk]`) and `d_bias [4H]`, accumulated inside the loop; without them and
    with `bias_grad`, `d_bias` only."""
    w = jnp.concatenate([kernel, rk], axis=0)
    # Without xs no weight gradients: a placeholder carries F, and the kernel does not read it.
    inputs = jnp.zeros((1, 1, kernel.shape[0]), jnp.float32) if xs is None else xs
    state = (acts, hc, mask, d_outs, dh_final, dc_final, rmask)
    return _backward(_BACKWARD_X, w, inputs, state, reverse, threads, xs is not None, bias_grad)


def generate(
    first: Array,
    table: Array,
    layers: list[dict[str, Array]],
    head_kernel: Array,
    head_bias: Array,
    num_steps: int,
    *,
    noise: Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    threads: int | None = None,
) -> Array:
    """Stateful generation through a stack of LSTM layers and a linear output layer, in one call.

    Token `t + 1` of each stream comes from the logits after feeding token `t`; the first is `first`.

    Args:
      first: int32 `[B]`, the first token of each stream (already chosen from the prime's logits), ids in
        `[0, V)` (others are an error).
      table: `[V, 4H_0]`, layer 0's pre-activations per input token (its input projection plus bias).
      layers: per layer `{"recurrent_kernel", "h", "c"}` (`[H, 4H]`, `[B, H]`, `[B, H]`), and from layer 1
        on also `{"kernel" [H_prev, 4H], "bias" [4H]}`.
      head_kernel, head_bias: the output layer, `[H_last, V]` and `[V]`.
      num_steps: tokens per stream to return (including `first`).
      noise: `[num_steps, B, V]` Gumbel noise when sampling (row `t` chooses token `t`; row 0 unused).
      temperature: 0 = greedy (argmax); else argmax of `(logits - max) / temperature + noise`.
      top_k: with sampling, only the `top_k` largest scaled logits compete (0 = all).
      threads: threads sharing each token's work (default: this device's cores).

    Returns:
      int32 tokens `[B, num_steps]`.
    """
    _require()
    # Not jnp.asarray(first, int32): that wraps an int64 id 2**32 + 3 to 3 (a valid id, silently) and
    # truncates float ids. A wider id outside the table becomes V, which the kernel refuses.
    first = first if isinstance(first, jax.Array) else np.asarray(first)
    if not jnp.issubdtype(first.dtype, jnp.integer):
        raise TypeError(
            f"native generate: first must be integer token ids, got dtype {first.dtype}"
        )
    first = _int32_ids(first, head_bias.shape[0])
    b = first.shape[0]
    if temperature > 0 and (noise is None or noise.shape != (num_steps, b, head_bias.shape[0])):
        raise ValueError("native generate: sampling needs noise of shape [num_steps, B, V]")
    args = [
        first,
        table,
        noise if temperature > 0 else jnp.zeros((1,)),
        head_kernel,
        head_bias,
    ]
    for i, layer in enumerate(layers):
        if i > 0:
            args += [layer["kernel"], layer["recurrent_kernel"], layer["bias"]]
        else:
            args += [layer["recurrent_kernel"]]
        args += [layer["h"], layer["c"]]
    call = jax.ffi.ffi_call(
        _GENERATE, jax.ShapeDtypeStruct((b, num_steps), jnp.int32), vmap_method="sequential"
    )
    args = [args[0]] + [jnp.asarray(a, jnp.float32) for a in args[1:]]
    return call(
        *args,
        threads=np.int32(threads or threads_per_device()),
        # A top_k of V or more restricts nothing (and one past int32 would not fit the attribute).
        top_k=np.int32(min(top_k, head_bias.shape[0])),
        temperature=np.float32(temperature),
    )
