"""The glibc malloc setting of `lstm_jax.runtime`: applied on import, opt-out, and it stops per-call paging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lstm_jax import runtime
from lstm_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]
GLIBC = runtime._libc() is not None

# Runs a jitted function whose temporaries (~64 MiB) are allocated and freed on every call and counts the
# minor page faults of the calls after the first two.
PROBE = """
import json, resource
import lstm_jax
import jax, jax.numpy as jnp
from lstm_jax import runtime
from lstm_jax.errors import UserError

@jax.jit
def f(x):
    y = jnp.tanh(x @ x.T)  # [2048, 2048] temporaries
    return (jnp.exp(y) * y).sum()

x = jnp.ones((2048, 4096), jnp.float32) * 1e-3
for _ in range(2):
    f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5
print(json.dumps({"tuned": runtime.malloc_tuned(), "faults_per_call": faults}))
"""


def _python(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Runs `script` (with `args` as its argv) in a fresh Python process on the CPU."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_script(script: str, env: dict[str, str]) -> dict:
    """`_python(script, env)`, which must succeed; returns the JSON of its last printed line."""
    proc = _python(script, env)
    proc.check_returncode()
    return _last_json(proc)


def _probe(tune: str) -> dict:
    return _run_script(PROBE, {**os.environ, "LSTM_JAX_TUNE_MALLOC": tune})


@pytest.mark.skipif(not GLIBC, reason="the malloc setting exists only with glibc")
def test_import_applies_the_setting_and_it_is_idempotent():
    assert runtime.malloc_tuned()  # `import lstm_jax` (conftest, the imports above) applied it
    assert runtime.tune_malloc()


@pytest.mark.skipif(not GLIBC, reason="the malloc setting exists only with glibc")
def test_tuned_malloc_stops_per_call_page_faults_and_the_env_var_opts_out():
    tuned, default = _probe("1"), _probe("0")
    assert tuned["tuned"] and not default["tuned"]
    # With glibc's defaults jaxlib 0.10's XLA:CPU mmaps the ~64 MiB of temporaries and faults them in again
    # on every call (262k faults of 4 KiB measured); tuned, the heap keeps them mapped (0). jaxlib 0.12's
    # reuses most of its buffers itself (1.8k-3.4k faults per call without the setting, 0.8k with it).
    # Either way a tuned process must not page its temporaries in again per call.
    assert tuned["faults_per_call"] < 5000, (tuned, default)
    if default["faults_per_call"] > 5000:  # this XLA pages per call: the setting must stop it
        assert tuned["faults_per_call"] < default["faults_per_call"] / 10, (tuned, default)


@pytest.mark.skipif(not GLIBC, reason="the malloc setting exists only with glibc")
@pytest.mark.parametrize(
    "platforms, switch, tuned",
    [
        (
            None,
            None,
            False,
        ),  # a GPU plugin is installed: JAX will run there, glibc keeps its defaults
        ("cpu", None, True),  # JAX_PLATFORMS puts the CPU first: tuned
        ("cuda,cpu", None, False),
        (None, "1", True),  # asked for: tuned anyway
        (None, "auto", False),
        ("cpu", "0", False),
    ],
)
def test_malloc_is_left_alone_where_jax_runs_on_an_accelerator(tmp_path, platforms, switch, tuned):
    plugin = (
        tmp_path / "jax_plugins" / "xla_fakegpu"
    )  # what jax-cuda13-pjrt installs, as a namespace
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    env = {
        k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "LSTM_JAX_TUNE_MALLOC")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), env.get("PYTHONPATH", "")])
    if platforms is not None:
        env["JAX_PLATFORMS"] = platforms
    if switch is not None:
        env["LSTM_JAX_TUNE_MALLOC"] = switch
    script = (
        "import json, lstm_jax\nfrom lstm_jax import runtime\n"
        "print(json.dumps([runtime.malloc_tuned(), runtime.accelerator_platform()]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    proc.check_returncode()
    got_tuned, platform = _last_json(proc)
    assert got_tuned == tuned
    expected = {None: "fakegpu", "cpu": None, "cuda,cpu": "cuda"}[platforms]
    assert platform == expected


def test_tune_malloc_reads_its_switch_words_and_applies_the_setting_once(monkeypatch):
    """In process, with a stand-in libc: every "off" word keeps glibc's defaults, an empty switch is
    "auto" (left alone where JAX runs on an accelerator), "on" applies the three mallopt calls, and a
    second call does not make them again."""
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1

    monkeypatch.setattr(runtime, "_libc", lambda: types.SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(runtime, "_TUNED", False)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    for switch in ("0", "false", "no", "off", " OFF "):
        monkeypatch.setenv("LSTM_JAX_TUNE_MALLOC", switch)
        assert runtime.tune_malloc() is False, switch
    monkeypatch.setenv("LSTM_JAX_TUNE_MALLOC", "")
    assert runtime.tune_malloc() is False
    assert calls == [] and not runtime.malloc_tuned()
    monkeypatch.setenv("LSTM_JAX_TUNE_MALLOC", "on")
    assert runtime.tune_malloc() is True and runtime.malloc_tuned()
    assert calls == [(-8, 1), (-4, 0), (-1, 2**31 - 1)]
    assert runtime.tune_malloc() is True
    assert len(calls) == 3


# Compiles one program with the persistent cache as the experiment binaries set it up; prints the cache
# directory and the cache entries on disk afterwards.
CACHE_PROBE = """
import json, os, sys
if os.environ.get("PROBE_WITHOUT_FILELOCK"):
    sys.modules["filelock"] = None  # `import filelock` raises ImportError, as when it is not installed
import jax, jax.numpy as jnp
from lstm_jax import runtime
from lstm_jax.errors import UserError

path = runtime.enable_compilation_cache()

@jax.jit
def f(x):
    return jnp.tanh(x @ x.T).sum()

value = float(f(jnp.ones((64, 32), jnp.float32)))
entries = sorted(n for n in os.listdir(path) if n.endswith("-cache")) if path else []
cap = jax.config.jax_compilation_cache_max_size
print(json.dumps({"path": path, "entries": entries, "value": value, "max_size": cap}))
"""


def _cache_probe(**env_vars: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env_vars)
    return _run_script(CACHE_PROBE, env)


def test_compilation_cache_is_reused_by_the_next_process_and_can_be_turned_off(tmp_path):
    cache = tmp_path / "cache"
    first = _cache_probe(LSTM_JAX_COMPILATION_CACHE=str(cache))
    assert first["path"] == str(cache) and len(first["entries"]) >= 1
    # Size-capped: the least recently used entries are evicted beyond the cap.
    assert first["max_size"] == runtime._CACHE_MAX_BYTES
    # A second process with the same program finds its executable: no new entry, the same result.
    # (A cap the user set for JAX is kept.)
    second = _cache_probe(
        LSTM_JAX_COMPILATION_CACHE=str(cache), JAX_COMPILATION_CACHE_MAX_SIZE="123456789"
    )
    assert second["entries"] == first["entries"] and second["value"] == first["value"]
    assert second["max_size"] == 123456789
    # Off: nothing configured, nothing written.
    for off in ("off", "0", ""):
        assert _cache_probe(LSTM_JAX_COMPILATION_CACHE=off)["path"] is None
    # Without the filelock package JAX cannot cap the cache (every entry would fail to read or write):
    # the cache still works, uncapped.
    bare = _cache_probe(
        LSTM_JAX_COMPILATION_CACHE=str(tmp_path / "bare"), PROBE_WITHOUT_FILELOCK="1"
    )
    assert bare["entries"] and bare["max_size"] == -1
    # A cache the user set for JAX itself wins over ours.
    theirs = tmp_path / "theirs"
    probe = _cache_probe(
        LSTM_JAX_COMPILATION_CACHE=str(cache), JAX_COMPILATION_CACHE_DIR=str(theirs)
    )
    assert probe["path"] == str(theirs) and probe["entries"]


def test_experiment_binaries_enable_the_cache(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "LSTM_JAX_COMPILATION_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-m", "experiments.imdb_sentiment.main", f"--workdir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # No config and no saved run: a user error, after the cache was set up (the directory exists).
    assert out.returncode == 2 and "no --config given" in out.stderr
    assert cache.is_dir()


def test_cpu_list_parses_core_lists_and_shares():
    four = [0, 1, 2, 3]
    assert runtime.cpu_list("2", four) == [2]
    assert runtime.cpu_list("0-1,3", four) == [0, 1, 3]
    assert runtime.cpu_list(" 3,1-1 ", four) == [1, 3]
    assert runtime.cpu_list("1/2", four) == [0, 1] and runtime.cpu_list("2/2", four) == [2, 3]
    assert runtime.cpu_list("1/1", four) == four
    assert runtime.cpu_list("2/3", [4, 5, 6, 7, 8]) == [
        5,
        6,
    ]  # shares of the cores actually available
    assert runtime.cpu_list("1/2", [4, 5]) == [4]
    for bad, message in [
        ("x", "is not a list of cores"),
        ("3-1", "is not a list of cores"),
        ("1,,2", "is not a list of cores"),
        ("0/2", "is not a share k/n"),
        ("3/2", "is not a share k/n"),
        ("a/2", "is not a share k/n"),
        ("1/5", "5 shares of 4 available core"),
        ("2-5", "core\\(s\\) 4-5 this process cannot use; the available cores are 0-3"),
        ("1,5,7", "core\\(s\\) 5,7 this process cannot use; the available cores are 0-3"),
        # str.isdigit takes a superscript, which int() refuses (a ValueError traceback), and other
        # scripts' digits: the same flag error as any other malformed value.
        ("\u00b2", "is not a list of cores"),
        ("0-\u00b2", "is not a list of cores"),
        ("1\u00b2", "is not a list of cores"),
        ("\u0663", "is not a list of cores"),
        ("1/\u00b2", "is not a share k/n"),
        ("\u00b2/2", "is not a share k/n"),
    ]:
        with pytest.raises(UserError, match=message):
            runtime.cpu_list(bad, four)


CPUS_PROBE = """
import json, os, sys
import numpy  # starts OpenBLAS's worker threads, before --cpus is applied
import jax
import jax.numpy as jnp
from lstm_jax import cli

def show(config, workdir):
    (jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()
    print(json.dumps({"cores": sorted(os.sched_getaffinity(0)), "threads": len(os.listdir("/proc/self/task")),
                      "devices": jax.device_count(),
                      "thread_cores": sorted({tuple(sorted(os.sched_getaffinity(int(t))))
                                              for t in os.listdir("/proc/self/task")})}))

show.needs_config = False
cli.run({"show": show}, argv=["probe", "--workdir=unused"] + sys.argv[1:])
"""


def _cpus_probe(*flags: str) -> subprocess.CompletedProcess:
    # Without the compilation cache: a program read from it starts none of the compiler's threads.
    return _python(CPUS_PROBE, {**os.environ, "LSTM_JAX_COMPILATION_CACHE": "off"}, *flags)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="--cpus needs Linux")
def test_cpus_flag_pins_the_run_before_jax_sizes_its_thread_pools():
    available = sorted(os.sched_getaffinity(0))
    n = len(available)
    pinned = _cpus_probe(f"--cpus=1/{n}")
    assert pinned.returncode == 0, pinned.stderr[-2000:]
    got = _last_json(pinned)
    assert got["cores"] == [available[0]]
    # Every thread, those started before --cpus took effect (numpy's OpenBLAS workers) included.
    assert got["thread_cores"] == [[available[0]]]
    if n >= 2:  # XLA starts fewer threads for one core than for all of them
        free = _cpus_probe()
        assert free.returncode == 0, free.stderr[-2000:]
        assert got["threads"] < _last_json(free)["threads"]
    bad = _cpus_probe("--cpus=first")
    assert bad.returncode == 2
    assert (
        bad.stderr.strip().splitlines()[-1].startswith("error: --cpus=first is not a list of cores")
    )


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="--cpus needs Linux")
def test_set_cpu_affinity_refuses_once_jax_has_started():
    """--cpus after the backend started would leave XLA's thread pools sized for every core."""
    import jax

    jax.devices()
    before = os.sched_getaffinity(0)
    with pytest.raises(UserError, match="--cpus must take effect before JAX starts its backend"):
        runtime.set_cpu_affinity("1/1")
    assert os.sched_getaffinity(0) == before


def test_the_suites_compilation_cache_keeps_each_optimisation_level_apart(full_xla_optimization):
    """tests/conftest.py shares compiled programs between the suite's tests: a program compiled at full
    optimisation (this fixture) must get an entry of its own, not the -O0 one the other tests compiled."""
    import jax
    import jax.numpy as jnp

    cache = jax.config.jax_compilation_cache_dir
    if not cache:
        pytest.skip("the suite's compilation cache is off (LSTM_JAX_TEST_XLA_CACHE=off)")

    def entries() -> set[str]:
        return {name for name in os.listdir(cache) if name.endswith("-cache")}

    def compiled():  # each call a new function (JAX's in-memory cache misses), the same program
        def program(v):  # built by no other test
            return jnp.cos(v) * 2.375 - 0.0625

        jax.jit(program)(x).block_until_ready()

    x = jnp.arange(11.0)
    before = entries()
    compiled()  # full optimisation (the fixture)
    full = entries() - before
    jax.config.update("jax_disable_most_optimizations", True)
    compiled()
    reduced = entries() - before - full
    compiled()  # the same program and options: a hit, no new entry
    assert len(full) == 1 and len(reduced) == 1, (full, reduced)
    assert entries() - before == full | reduced


def test_a_cache_directory_that_cannot_be_made_leaves_the_cache_off(tmp_path, monkeypatch):
    """An unwritable home (here a file where a directory should be): compile as usual, no traceback."""
    import jax

    # The suite's own cache (tests/conftest.py), if on, is set aside for this test.
    suites = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("LSTM_JAX_COMPILATION_CACHE", str(tmp_path / "file" / "cache"))
        assert runtime.enable_compilation_cache() is None
        assert not jax.config.jax_compilation_cache_dir
    finally:
        jax.config.update("jax_compilation_cache_dir", suites)


def test_cpu_devices_flags_replace_a_device_count_already_set():
    assert runtime.cpu_devices_flags(1) == ""
    assert runtime.cpu_devices_flags(1, "--xla_force_host_platform_device_count=8 --a=1") == "--a=1"
    assert runtime.cpu_devices_flags(
        2, "--a=1 --xla_force_host_platform_device_count=8"
    ).split() == [
        "--a=1",
        "--xla_force_host_platform_device_count=2",
        "--xla_cpu_multi_thread_eigen=false",
    ]
    # A user's own threading flag gives way to the single-threaded kernels of several devices.
    assert runtime.cpu_devices_flags(2, "--xla_cpu_multi_thread_eigen=true").split() == [
        "--xla_force_host_platform_device_count=2",
        "--xla_cpu_multi_thread_eigen=false",
    ]


def test_set_cpu_devices_refuses_once_jax_has_started():
    import jax

    jax.devices()
    for spec in ("2", " Auto "):
        with pytest.raises(UserError, match="before JAX starts its backend"):
            runtime.set_cpu_devices(spec)


def test_a_superscript_device_count_is_the_flag_error_not_a_traceback():
    """ "²".isdigit() is True but int("²") a ValueError: --cpu_devices=² gave a traceback."""
    for bad in ("\u00b2", "1\u00b2"):
        with pytest.raises(UserError, match="is not a device count; pass a positive integer"):
            runtime.set_cpu_devices(bad)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="--cpus needs Linux")
def test_cpu_devices_flag_splits_the_cpu_before_jax_starts():
    n = len(os.sched_getaffinity(0))
    for flags, devices in (
        (["--cpu_devices=3"], 3),
        (["--cpu_devices=auto"], n),
        ([f"--cpus=1/{n}", "--cpu_devices=auto"], 1),  # auto counts the cores left by --cpus
    ):
        proc = _cpus_probe(*flags)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _last_json(proc)["devices"] == devices, flags
    bad = _cpus_probe("--cpu_devices=0")
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --cpu_devices=0 is not a device count; pass a positive integer")
    )


def test_largest_dot_gflop_reads_every_dot_of_a_lowered_program():
    """Plain, batched and scan-body dots, and their gradients: 2 x output elements x contracted size."""
    import jax
    import jax.numpy as jnp

    def f(a, b, c):
        def body(h, x):
            return jnp.tanh(h @ b[:4, :4] + x), h

        h, _ = jax.lax.scan(body, jnp.zeros((3, 4)), jnp.ones((5, 3, 4)))
        return (a @ b).sum() + jnp.einsum("bij,bjk->bik", c, c).sum() + h.sum()

    args = jnp.ones((20, 30)), jnp.ones((30, 40)), jnp.ones((2, 7, 7))
    text = jax.jit(f).lower(*args).as_text()
    assert runtime.largest_dot_gflop(text) == 2 * 20 * 40 * 30 / 1e9
    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(*args).as_text()
    assert runtime.largest_dot_gflop(grads) == 2 * 20 * 40 * 30 / 1e9  # [20, 40] x [40, 30] etc.
    only_batched = jax.jit(lambda c: jnp.einsum("bij,bjk->bik", c, c)).lower(jnp.ones((2, 7, 7)))
    assert runtime.largest_dot_gflop(only_batched.as_text()) == 2 * 2 * 7 * 7 * 7 / 1e9
    assert runtime.largest_dot_gflop(jax.jit(jnp.tanh).lower(jnp.ones(3)).as_text()) == 0
    # Every contracted dimension counts (a tensordot over two axes).
    two_axes = jax.jit(lambda x, y: jnp.tensordot(x, y, axes=2))
    text = two_axes.lower(jnp.ones((6, 5, 4)), jnp.ones((5, 4, 3))).as_text()
    assert runtime.largest_dot_gflop(text) == 2 * 6 * 3 * 5 * 4 / 1e9
    # A dot of a dynamic size is skipped, the dots after it still read.
    dynamic = (
        "%0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] :"
        " (tensor<?x30xf32>, tensor<30x40xf32>) -> tensor<?x40xf32>\n"
        "%1 = stablehlo.dot_general %c, %d, contracting_dims = [1] x [0] :"
        " (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>\n"
    )
    assert runtime.largest_dot_gflop(dynamic) == 2 * 2 * 4 * 3 / 1e9


def test_large_dots_compile_with_eigen_and_give_the_plain_jits_values(monkeypatch):
    """A program whose largest matmul reaches the threshold runs its dots in Eigen (no YNNPACK dot
    fusion left in the compiled program), one under it as plain `jax.jit`; values equal to plain jit's
    within float summation order, and donation still applies."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jax.random.normal(jax.random.key(0), (256, 128))
    b = jax.random.normal(jax.random.key(1), (128, 256))
    gflop = 2 * 256 * 128 * 256 / 1e9

    def f(a, b):
        return jnp.tanh(a @ b) @ b.T

    def ynn_dots(fn):
        return fn.lower(a, b).compile().as_text().count('"__ynn_fusion"')

    plain = jax.jit(f)
    assert ynn_dots(plain) > 0  # XLA's default on this CPU: YNNPACK's dots
    monkeypatch.setattr(runtime, "EIGEN_DOTS_MIN_GFLOP", gflop)
    big = runtime.jit_choosing_cpu_dots(f)
    np.testing.assert_allclose(big(a, b), plain(a, b), rtol=1e-5, atol=1e-5)
    assert ynn_dots(big) == 0
    monkeypatch.setattr(runtime, "EIGEN_DOTS_MIN_GFLOP", gflop * 1.01)
    small = runtime.jit_choosing_cpu_dots(f)
    assert ynn_dots(small) == ynn_dots(plain)
    np.testing.assert_array_equal(small(a, b), plain(a, b))
    donated = runtime.jit_choosing_cpu_dots(lambda x: x * 2.0, donate_argnums=0)
    x = jnp.ones(4)
    donated(x)
    assert x.is_deleted()
