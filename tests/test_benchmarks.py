"""Smoke test of the benchmark harness on a tiny shape with lstm_jax only (the peers are optional)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

# `benchmarks/` is not an installed package; run from the repository root like `python -m benchmarks.run`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import run  # noqa: E402
from benchmarks.shapes import SHAPES, TINY, Shape  # noqa: E402


def test_train_flops_counts_every_matmul():
    s = Shape(
        "x",
        "x",
        batch=2,
        time=3,
        vocab=0,
        embed=0,
        lstm=(4,),
        dense=(),
        classes=5,
        optimizer="adam",
    )
    bt = 6
    lstm = 3 * (2 * bt * 4 * 16) + 2 * (2 * bt * 1 * 16)  # recurrent: fwd+dh+dW; input: fwd+dW
    head = 3 * (2 * 2 * 4 * 5)
    assert s.train_flops() == lstm + head
    # The char model is dominated by its recurrent matmuls: ~13 GFLOP per step.
    assert 12e9 < SHAPES["A"].train_flops() < 14e9
    # Below an embedding the first layer's input gradient is computed too (for the embedding's gradient).
    e = Shape("e", "e", batch=2, time=3, vocab=9, embed=1, lstm=(4,), dense=(), classes=5,
              optimizer="adam")  # fmt: skip
    assert e.train_flops() == lstm + head + 2 * bt * 1 * 16


def test_shape_data_is_fixed_and_typed():
    x, y = SHAPES["B"].data(0)
    x2, _ = SHAPES["B"].data(0)
    assert x.shape == (128, 30) and x.dtype == np.int32 and y.shape == (128,)
    np.testing.assert_array_equal(x, x2)
    xa, ya = SHAPES["A"].data(0)
    assert xa.shape == (40, 50, 1) and xa.dtype == np.float32 and ya.max() < 60


def test_harness_end_to_end_on_tiny_shape(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--shapes", "tiny", "--peers", "lstm_jax,lstm_jax_dp,lstm_jax_cudnn", "--rounds", "2"]
    argv += [
        "--round-seconds",
        "0.02",
        "--malloc",
        "ours",
    ]  # the workers' own reports of their malloc
    argv += ["--ceiling-n", "128", "--timeout", "300", "--out", str(out)]
    assert run.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["ceiling"]["ceiling_gflops"] > 0
    assert (
        report["ceiling"]["fma_peak_gflops"] > 0
    )  # the native kernel builds wherever the tests run
    assert report["ceiling"]["openblas_coretype"] is None  # removed inside the benchmark's command
    res = report["shapes"]["tiny"]["lstm_jax"]
    assert res["status"] == "ready"
    assert res["param_count"] == 1605
    assert res["n"] >= 2 and len(res["times"]) == res["n"]
    assert 0 < res["min_ms"] <= res["median_ms"] <= res["max_ms"]
    assert res["first_step_s"] > 0 and res["peak_rss_mb"] > res["base_rss_mb"] > 0
    compiled = res["first_step_compile"]  # where the first step went: JAX's phases, XLA's compile
    assert set(compiled) == {"trace_s", "lower_s", "xla_compile_s"}
    assert compiled["trace_s"] > 0 and compiled["lower_s"] > 0 and compiled["xla_compile_s"] > 0
    assert sum(compiled.values()) < res["first_step_s"]
    assert res["xla_bytes"] > 0
    assert (
        res["malloc_tuned"] is True
    )  # `import lstm_jax` on the CPU applies lstm_jax's malloc setting
    assert report["flops"]["tiny"] == TINY.train_flops()
    dp = report["shapes"]["tiny"]["lstm_jax_dp"]
    assert dp["status"] == "ready" and dp["param_count"] == 1605 and dp["median_ms"] > 0
    cudnn = report["shapes"]["tiny"]["lstm_jax_cudnn"]
    if jax.default_backend() == "cpu":  # impl="cudnn" is reported as missing, not an error
        assert cudnn["status"] == "missing" and "needs an NVIDIA GPU" in cudnn["reason"]
    printed = capsys.readouterr().out
    assert "| tiny smoke | lstm_jax | 1,605 |" in printed
    assert (
        "| tiny smoke | lstm_jax, data-parallel over one host device per core | 1,605 |" in printed
    )
    assert report["markdown"] in printed
    assert "glibc malloc tuned for: lstm_jax, lstm_jax_dp." in printed  # as the workers reported it
    assert f"| tiny | lstm_jax | {res['first_step_s']:.2f} | {compiled['trace_s']:.2f} |" in printed


def test_a_run_cut_short_keeps_the_shapes_it_measured(tmp_path, monkeypatch):
    """The JSON is rewritten after each shape: a second shape that never finishes (a device call's time
    limit, say) leaves the first shape's results on disk, with their table."""
    out = tmp_path / "r.json"
    monkeypatch.setattr(
        run,
        "run_child_json",
        lambda args, timeout=600: {
            "ceiling_gflops": 100.0,
            "numpy_gflops": 100.0,
            "jax_gflops": 90.0,
            "n": 128,
        },
    )
    done = {
        "lstm_jax": {
            "status": "ready",
            "param_count": 1605,
            "first_step_s": 0.5,
            "median_ms": 2.0,
            "p25_ms": 1.9,
            "p75_ms": 2.1,
            "n": 3,
        }
    }

    def bench_shape(name, peers, args):
        if name == "C":
            raise KeyboardInterrupt  # the run is stopped during the second shape
        return done

    monkeypatch.setattr(run, "bench_shape", bench_shape)
    argv = ["--shapes", "tiny,C", "--peers", "lstm_jax", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        run.main(argv)
    report = json.loads(out.read_text())
    assert list(report["shapes"]) == ["tiny"] and report["shapes"]["tiny"] == done
    assert report["flops"] == {"tiny": TINY.train_flops()}
    assert "| tiny smoke | lstm_jax | 1,605 |" in report["markdown"]
    assert not list(tmp_path.glob("r.json.tmp*"))


def test_gpu_workers_do_not_preallocate_and_the_ceiling_names_its_device(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    for peer in ("lstm_jax", "flax", "keras_jax"):
        assert run.child_env(peer)["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")  # a caller's own choice stands
    assert run.child_env("flax")["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"
    report = {
        "machine": "m",
        "ceiling": {
            "ceiling_gflops": 29000.0,
            "numpy_gflops": 1200.0,
            "jax_gflops": 29000.0,
            "n": 2048,
            "jax_backend": "gpu",
            "jax_device": "NVIDIA H200",
        },
        "args": {"rounds": 3, "malloc": "ours"},
        "shapes": {},
    }
    assert "(numpy 1200, JAX on NVIDIA H200 29000, 2048^3)" in run.markdown(report)
    report["ceiling"].update(jax_backend="cpu", jax_device="cpu")
    assert "(numpy 1200, JAX 29000, 2048^3)" in run.markdown(report)
    del report["ceiling"]["jax_backend"], report["ceiling"]["jax_device"]  # runs saved before
    assert "(numpy 1200, JAX 29000, 2048^3)" in run.markdown(report)


DP_PARITY = """
import json
import jax, numpy as np
from benchmarks.peers import lstm_jax_peer as mod
from benchmarks.shapes import TINY
plain, dp = mod.Bench(TINY), mod.Bench(TINY, data_parallel=True)
losses = []
for _ in range(3):
    plain.step(); dp.step()
    losses.append((float(plain.loss), float(dp.loss)))
diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(dp.params)))
print(json.dumps({"devices": jax.device_count(), "losses": losses, "max_param_diff": diff,
                  "sharded": len(dp.x.sharding.device_set)}))
"""


def test_data_parallel_step_matches_the_single_device_step():
    """The `lstm_jax_dp` fast path (two host devices, pmean of the slices' gradients) against the plain
    jitted step: same losses and parameters after three Adam steps, up to float summation order."""
    import os
    import subprocess

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", DP_PARITY], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["devices"] == 2 and got["sharded"] == 2
    for a, b in got["losses"]:
        assert a == pytest.approx(b, rel=1e-5)
    assert got["max_param_diff"] < 1e-5
    assert got["losses"][0] != got["losses"][-1]  # the steps did update the parameters


def _report(shapes: dict, versions: dict | None = None, **args: object) -> dict:
    """A `benchmarks.run` report of `shapes` on a fake machine with a 400 GFLOP/s fp32 ceiling, 3 rounds
    (`args` adds run arguments, e.g. `malloc="all"`)."""
    report = {
        "machine": "m",
        "ceiling": {"ceiling_gflops": 400.0, "numpy_gflops": 400.0, "jax_gflops": 300.0, "n": 2048},
        "args": {"rounds": 3, **args},
        "shapes": shapes,
    }
    return report if versions is None else {**report, "versions": versions}


def test_markdown_reports_missing_and_failed_peers(tmp_path, capsys):
    report = _report(
        {
            "C": {
                "lstm_jax": {
                    "param_count": 10,
                    "median_ms": 10.0,
                    "p25_ms": 9.0,
                    "p75_ms": 11.0,
                    "first_step_s": 1.0,
                    "peak_rss_mb": 100.0,
                },
                "torch": {
                    "param_count": 12,
                    "median_ms": 20.0,
                    "p25_ms": 19.0,
                    "p75_ms": 21.0,
                    "first_step_s": 0.5,
                    "peak_rss_mb": 90.0,
                },
                "keras_jax": {"status": "missing", "reason": "keras not installed"},
                "torch_compile": {"status": "failed", "reason": "RuntimeError: boom"},
            }
        }
    )
    table = run.markdown(report)
    assert "| C imdb | lstm_jax | 10 | 10.0 [9.0-11.0] | 10000 | 2.00x |" in table
    assert "| C imdb | PyTorch eager | 12 | 20.0 [19.0-21.0] | 5000 | 1.00x |" in table
    assert "missing: keras not installed" in table
    assert "failed: RuntimeError: boom" in table
    # C's step is 0.8405 GFLOP: 2.10 ms at 400 GFLOP/s; the target 20 / 1.5 = 13.3 ms needs 16% of the
    # ceiling, and lstm_jax's 10 ms is 21% of it.
    # Without a measured FMA peak (results saved before it was), its columns say so.
    assert "| C | 20.0 | 13.3 | 2.1 | 16% | 21% | - | - |" in table
    assert "FMA peak" not in table.splitlines()[0]
    path = tmp_path / "run.json"  # a saved run's tables, printed again by --show
    path.write_text(json.dumps(report))
    assert run.main(["--show", str(path)]) == 0
    assert capsys.readouterr().out.strip() == table.strip()
    # With it: the target's 63.0 GFLOP/s is 13% of a 500 GFLOP/s peak, lstm_jax's 84.0 is 17%.
    report["ceiling"]["fma_peak_gflops"] = 500.0
    table = run.markdown(report)
    assert "fp32 FMA peak 500 GFLOP/s" in table.splitlines()[0]
    assert "WARNING" not in table
    # A peak under numpy's matmul on the same cores is no peak (a kernel built at half its vector width).
    report["ceiling"]["fma_peak_gflops"] = 300.0
    assert (
        "WARNING: under numpy's 400, so not the cores' peak" in run.markdown(report).splitlines()[0]
    )
    report["ceiling"]["fma_peak_gflops"] = 500.0
    assert "| C | 20.0 | 13.3 | 2.1 | 16% | 21% | 13% | 17% |" in table
    # A run saved with the host's CPU description names it in the first line.
    report["cpu"] = {
        "model_name": "Some CPU",
        "family_model_stepping": "6/167/1",
        "isa": ["avx2", "fma", "avx512f"],
        "caches": {"L1": "48K", "L2": "2048K"},
    }
    first = run.markdown(report).splitlines()[0]
    assert (
        "Machine: m (Some CPU, family/model/stepping 6/167/1; avx2 fma avx512f; L1 48K, L2 2048K)"
        in first
    )


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads Linux's /proc/cpuinfo")
def test_cpu_description_reads_this_host():
    cpu = run.cpu_description()
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    assert cpu["model_name"]
    assert cpu["family_model_stepping"].count("/") == 2
    assert ("avx2" in cpu["isa"]) == ("avx2" in flags)
    assert ("avx512f" in cpu["isa"]) == ("avx512f" in flags)
    assert json.loads(json.dumps(cpu)) == cpu  # saved in the run's JSON as it is


def test_unknown_names_are_user_errors(capsys, tmp_path):
    assert run.main(["--peers", "lstm_jax,caffe"]) == 2
    assert "unknown peer 'caffe'" in capsys.readouterr().err
    assert run.main(["--shapes", "Z"]) == 2
    assert run.main(["--gen-modes", "stateful,beam"]) == 2
    assert "unknown --gen-modes beam" in capsys.readouterr().err
    # Each of these once ran minutes of work and then failed with a traceback.
    for argv, message in (
        (["--peers", ""], "names no peer"),
        (["--shapes", " , "], "names no shape"),
        (["--rounds", "0"], "--rounds=0 must be >= 1"),
        (["--round-seconds", "-1"], "--round-seconds=-1.0 must be > 0"),
    ):
        assert run.main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert run.main(["--show", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert run.main(["--show", str(tmp_path)]) == 2  # a directory
    assert "cannot read" in capsys.readouterr().err
    for name, text in (("bad.json", "{not json"), ("other.json", '{"a": 1}')):
        (tmp_path / name).write_text(text)
        assert run.main(["--show", str(tmp_path / name)]) == 2
        assert "is not a benchmark run's JSON" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown peer"):
        from benchmarks.worker import load

        load("caffe")


def test_malloc_modes_set_each_workers_environment(monkeypatch):
    monkeypatch.setenv(
        "GLIBC_TUNABLES", "glibc.malloc.arena_max=4"
    )  # the caller's own is not inherited
    ours = run.child_env("lstm_jax", "ours")
    assert "GLIBC_TUNABLES" not in ours and "LSTM_JAX_TUNE_MALLOC" not in ours
    for peer in ("flax", "torch"):  # the Flax worker imports lstm_jax: it must not be tuned by that
        env = run.child_env(peer, "ours")
        assert "GLIBC_TUNABLES" not in env and env["LSTM_JAX_TUNE_MALLOC"] == "0"
    assert run.child_env("torch", "all")["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
    )
    assert run.child_env("lstm_jax", "none")["LSTM_JAX_TUNE_MALLOC"] == "0"
    with pytest.raises(ValueError, match="malloc"):
        run.child_env("torch", "some")
    report = _report({}, malloc="all")
    assert "glibc malloc tuned for: every framework" in run.markdown(report)
    # GLIBC_TUNABLES reaches workers that never import lstm_jax (and so report False): still every one.
    report["shapes"] = {
        "tiny": {"torch": {"status": "missing", "reason": "-", "malloc_tuned": False}}
    }
    assert "glibc malloc tuned for: every framework" in run.markdown(report)
    report["args"]["malloc"] = "ours"
    assert "glibc malloc tuned for: nobody" in run.markdown(report)


def test_floor_counts_the_chains_and_the_rest_at_the_ceiling():
    from benchmarks import floor

    s = Shape("x", "x", batch=2, time=3, vocab=0, embed=0, lstm=(4, 2), dense=(), classes=5,
              optimizer="adam")  # fmt: skip
    # Per layer 2*T chained products of 2*B*H*4H FLOPs: 2*3*(2*2*4*16) + 2*3*(2*2*2*8).
    assert floor.chain_flops(s) == 1536 + 384
    assert floor.chain_flops(s) < s.train_flops()
    # The rest of the FLOPs at 1 GFLOP/s, plus the measured chain.
    rest_ms = (s.train_flops() - 1920) / 1e9 * 1e3
    assert floor.floor_ms(s, 5.0, 1.0) == pytest.approx(5.0 + rest_ms)
    # On every benchmark shape the chains are a real part of the step's FLOPs (A: 2/3 of the recurrence).
    for shape in SHAPES.values():
        assert 0.1 < floor.chain_flops(shape) / shape.train_flops() < 0.7


def test_floor_report_compares_the_target_with_the_floor():
    from benchmarks import floor

    results = {
        "shapes": {
            "A": {
                "lstm_jax": {"median_ms": 150.0},
                "lstm_jax_dp": {"median_ms": 120.0},
                "torch": {"median_ms": 90.0},
                "flax": {"median_ms": 200.0},
                "keras_tf": {"status": "failed"},
            },
            "B": {"lstm_jax": {"median_ms": 30.0}},
        }
    }
    assert floor.fastest_peer_ms(results, "A") == ("torch", 90.0)
    assert floor.fastest_peer_ms(results, "B") is None
    chains = {"A": {"batch": 40, "xla_chain_ms": 70.0, "torch_chain_ms": None}}
    chains["B"] = {"batch": 128, "xla_chain_ms": 1.0, "torch_chain_ms": 2.5}
    half = {"A": {"batch": 20, "xla_chain_ms": 65.0, "torch_chain_ms": None}}
    half["B"] = {"batch": 64, "xla_chain_ms": 0.8, "torch_chain_ms": 2.0}
    table = floor.report(["A", "B"], chains, half, 100.0, results)
    row_a = next(line for line in table.splitlines() if line.startswith("| A "))
    # A: target 90 / 1.5 = 60 ms, below the 2-device floor 65 + rest -> out of reach; best ours 120 ms.
    assert "| 120.0 | torch 90.0 | 60.0 | no: below the floor |" in row_a
    rest_a = floor.floor_ms(SHAPES["A"], 0.0, 100.0)
    assert f"| {rest_a:.1f} | {70 + rest_a:.1f} | {65 + rest_a:.1f} |" in row_a
    row_b = next(line for line in table.splitlines() if line.startswith("| B "))
    assert row_b.endswith("| 30.0 | - | - | - |") and "| 2.5 |" in row_b


def test_floor_chain_runs_in_xla():
    from benchmarks import floor

    short = floor.xla_chain_ms(batch=4, steps=3, hidden=8, reps=2)
    assert 0 < short < 1e3


def test_weight_stream_times_a_chain_per_matrix_count(capsys):
    from benchmarks import weight_stream

    assert weight_stream.per_step_seconds(2, 8, steps=5, repeats=1) > 0
    weight_stream.main(["--hidden", "8", "--max-matrices", "2", "--steps", "5", "--no-kernel"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" x ")[0] for line in lines] == ["1", "2"] and "us/step" in lines[1]


def test_weight_stream_times_the_native_generation_kernel_per_thread_count(capsys, monkeypatch):
    from benchmarks import weight_stream
    from lstm_jax import native

    if native.unavailable_reason() is not None:
        pytest.skip(native.unavailable_reason())
    monkeypatch.setattr("lstm_jax.runtime.usable_cores", lambda: 2)
    weight_stream.main(["--hidden", "8", "--max-matrices", "1", "--steps", "5", "--vocab", "7"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == [
        "native generate, 1 thread(s)",
        "native generate, 2 thread(s)",
    ]
    assert all(float(line.split(":")[1].split()[0]) > 0 for line in lines[1:])


def test_weight_stream_spread_times_calls_with_the_helper_moved_and_not(capsys, monkeypatch):
    from benchmarks import weight_stream
    from lstm_jax import native

    if native.unavailable_reason() is not None:
        pytest.skip(native.unavailable_reason())
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPREAD", "1")
    weight_stream.main(
        ["--spread", "--hidden", "8", "--vocab", "7", "--length", "6", "--calls", "3"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["helper moved", "helper not moved"]
    assert all("(3 calls)" in line and float(line.split()[4]) > 0 for line in lines)
    assert os.environ["LSTM_JAX_NATIVE_SPREAD"] == "1"  # the caller's setting is back


def test_dots_times_xla_against_numpy_on_the_step_shapes(capsys):
    from benchmarks import dots

    xla, ref = dots.time_shape(6, 5, 4, True, repeats=2)
    assert xla > 0 and ref > 0
    dots.main(["--scale", "0.01", "--repeats", "2"])
    rows = [
        r
        for r in capsys.readouterr().out.splitlines()
        if r.startswith("| A ") or r.startswith("| D ")
    ]
    assert len(rows) == len(dots.SHAPES)


def test_stateful_generation_speed_runs_both_impls():
    from benchmarks.peers import lstm_jax_peer

    shape = Shape(
        "g",
        "g",
        batch=2,
        time=3,
        vocab=0,
        embed=0,
        lstm=(8, 6),
        dense=(),
        classes=11,
        optimizer="adam",
    )
    for impl in ("auto", "xla"):
        r = lstm_jax_peer.stateful_generation_speed(
            shape, streams=2, length=5, repeats=2, impl=impl, min_seconds=0.0
        )
        assert r["impl"] == impl and r["streams"] == 2 and r["chars_per_s"] > 0
        assert r["calls"] == 2


def test_profile_step_reports_ops_a_timeline_and_the_kernel_calls():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.profile_step",
            "--shape",
            "tiny",
            "--steps",
            "2",
            "--native-stats",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("shape tiny:") and "ms per traced step" in lines[0]
    assert lines[1].startswith("ms per step, summed over threads")
    ops = lines[2 : lines.index(next(x for x in lines if x.startswith("timeline")))]
    assert ops and all(float(x.split()[0]) >= 0 and x.split()[1].startswith("x") for x in ops)
    # The native kernel's calls: a forward and a backward row per LSTM layer, then their share.
    start = next(i for i, x in enumerate(lines) if x.startswith("native kernel calls, 2 untraced"))
    rows = lines[start + 2 : -2]
    kinds = [x.split()[5] for x in rows]
    known = {"forward", "forward_x", "backward", "backward_x", "backward+wg", "backward_x+wg"}
    assert kinds and set(kinds) <= known, rows
    assert sum(k.startswith("forward") for k in kinds) == sum(
        k.startswith("backward") for k in kinds
    )
    assert all(float(x.split()[0]) > 0 and float(x.split()[3]) > 0 for x in rows), rows
    assert lines[-2].startswith("in the calls:") and lines[-2].endswith("%)")
    assert lines[-1].startswith("one core's FMA peak ") and lines[-1].endswith("% of it")
    peak = float(lines[-1].split()[4])
    low, high = (float(p) for p in lines[-1].split()[-3].rstrip("%").split("-"))
    assert peak > 0 and 0 < low <= high


def test_ab_rule_times_a_changed_rule_against_the_shipped_one():
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def ab_rule(*args):
        cmd = [sys.executable, "-m", "benchmarks.ab_rule", "--shape", "tiny", "--rounds", "1"]
        return subprocess.run(
            [*cmd, "--steps", "1", *args], cwd=root, capture_output=True, text=True, timeout=300
        )

    proc = ab_rule("--set", "NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION=-1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(
        "shape tiny, NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION=-1 (shipped: 0.55): changed "
    )
    changed, shipped = (
        float(x.split(" ms")[0]) for x in line.split("changed ")[1].split("shipped ")
    )
    assert changed > 0 and shipped > 0
    bad = ab_rule("--set", "NO_SUCH_RULE=1")
    assert bad.returncode == 2 and "--set must be NAME=VALUE" in bad.stderr
    # An XLA compiler option for the changed build alone: given to its step's compilation (a value
    # XLA rejects fails there), and the report names it.
    option = "xla_cpu_experimental_ynn_fusion_type"
    proc = ab_rule("--xla", f"{option}=LIBRARY_FUSION_TYPE_REDUCE")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(f"shape tiny, XLA option {option}=LIBRARY_FUSION_TYPE_REDUCE: changed ")
    bad = ab_rule("--xla", f"{option}=NO_SUCH_TYPE")
    assert bad.returncode != 0 and "not a valid enum value" in bad.stderr


def test_ab_trees_times_this_checkout_against_another_tree_and_cleans_up_its_worktree():
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def ab_trees(base):
        cmd = [sys.executable, "-m", "benchmarks.ab_trees", "--shape", "tiny", "--rounds", "2"]
        return subprocess.run(
            [*cmd, "--steps", "1", "--base", base],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def worktrees():
        out = subprocess.run(
            ["git", "-C", str(root), "worktree", "list"], capture_output=True, text=True
        )
        return out.stdout if out.returncode == 0 else None

    proc = ab_trees(str(root))  # a directory: the checkout against itself
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("shape tiny: this checkout ") and f"--base {root} " in line
    this, base = (float(x.split(" ms")[0]) for x in line.split("checkout ")[1].split(f"{root} "))
    assert this > 0 and base > 0
    assert 0 < float(line.rsplit("= ", 1)[1]) < 100
    bad = ab_trees("no-such-revision-or-directory")
    assert bad.returncode != 0
    assert "--base no-such-revision-or-directory: neither a directory nor a revision" in bad.stderr
    assert "Traceback" not in bad.stderr
    empty = ab_trees(str(Path(__file__).parent))  # a directory without a checkout
    assert empty.returncode != 0 and "holds no lstm_jax checkout" in empty.stderr
    cmd = [sys.executable, "-m", "benchmarks.ab_trees", "--shape", "tiny", "--base", "HEAD"]
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, and no git
    no_git = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert no_git.returncode != 0 and "git is not installed" in no_git.stderr, no_git.stderr
    before = worktrees()
    if before is None or not (root / ".git").exists():
        return  # not a git checkout (an unpacked archive): revisions cannot be checked out
    proc = ab_trees("HEAD")  # a revision: a temporary worktree, removed afterwards
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--base HEAD " in proc.stdout
    assert worktrees() == before


def test_a_shape_whose_every_peer_is_missing_still_reports(tmp_path, capsys):
    """`--peers lstm_jax_cudnn` alone off a GPU once ended in ZeroDivisionError after the ceiling."""
    if jax.default_backend() != "cpu":
        pytest.skip("the cudnn peer runs on this machine")
    argv = ["--peers", "lstm_jax_cudnn", "--shapes", "tiny", "--rounds", "1", "--no-generate"]
    assert run.main([*argv, "--ceiling-n", "128", "--out", str(tmp_path / "r.json")]) == 0
    assert "missing: it needs an NVIDIA GPU" in capsys.readouterr().out


def test_an_unwritable_out_is_a_user_error_before_any_measuring(tmp_path, monkeypatch, capsys):
    """`--out` a directory, or under a file, once failed with a traceback after the ceiling and the first
    shape's minutes of measuring, losing them."""

    def measured(*args, **kwargs):
        raise AssertionError("measured before checking --out")

    monkeypatch.setattr(run, "run_child_json", measured)
    (tmp_path / "file").write_text("")
    argv = ["--shapes", "tiny", "--peers", "lstm_jax", "--rounds", "1", "--no-generate"]
    for out, message in (
        (tmp_path, "is a directory"),
        (tmp_path / "file" / "r.json", "cannot be written"),
    ):
        assert run.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no probe left behind


class _FakeWorker:
    """A `run.Worker` stand-in that replies from a script: `{peer: {cmd: reply}}` (`"ready"`: the start)."""

    script: dict = {}

    def __init__(self, peer, shape, timeout, malloc="all"):
        self.peer = peer

    def read(self):
        return self.script[self.peer]["ready"]

    def ask(self, cmd):
        reply = self.script[self.peer][cmd["cmd"]]
        return reply() if callable(reply) else reply

    def close(self):
        return {"peak_rss_mb": 100.0}


def _fake_ceiling(args, timeout=600):
    return {"ceiling_gflops": 100.0, "numpy_gflops": 100.0, "jax_gflops": 90.0, "n": 128}


def _run_with_fake_workers(monkeypatch, tmp_path, script: dict, argv: list[str]) -> dict:
    """`run.main(argv + --out)` with `_FakeWorker`s playing `script` and a fake ceiling; the saved JSON."""
    monkeypatch.setattr(_FakeWorker, "script", script)
    monkeypatch.setattr(run, "Worker", _FakeWorker)
    monkeypatch.setattr(run, "run_child_json", _fake_ceiling)
    out = tmp_path / "r.json"
    assert run.main([*argv, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_a_failed_generation_keeps_the_run(tmp_path, monkeypatch, capsys):
    """A worker whose generation fails (an exception, or killed for memory) once ended the whole run with a
    TypeError in the table, before the JSON was written."""
    ready = {"status": "ready", "param_count": 1, "first_step_s": 0.5, "second_step_s": 0.01}
    failed = {"status": "failed", "reason": "worker exited: MemoryError: simulated"}
    gen = {"tutorial_1": {"streams": 1, "chars_per_s": 30.0, "first_call_s": 1.0}}
    script = {
        "lstm_jax": {"ready": ready, "time": {"times": [0.01]}, "generate": failed},
        "keras_jax": {"ready": ready, "time": {"times": [0.02]}, "generate": gen},
        "keras_tf": {"ready": ready, "time": {"times": [0.03]}, "generate": gen},
    }
    argv = ["--shapes", "A", "--peers", "lstm_jax,keras_jax,keras_tf", "--rounds", "1"]
    res = _run_with_fake_workers(monkeypatch, tmp_path, script, argv)["shapes"]["A"]
    assert res["lstm_jax"]["median_ms"] == 10.0 and res["keras_jax"]["median_ms"] == 20.0
    assert "generation" not in res["lstm_jax"] and res["keras_jax"]["generation"] == gen
    printed = capsys.readouterr().out
    assert "A lstm_jax generation: failed: worker exited: MemoryError: simulated" in printed
    assert "| lstm_jax | failed: worker exited: MemoryError: simulated | | | |" in printed
    assert "| Keras 3 (JAX) | tutorial_1 | 1 | 30 | 1.00 |" in printed
    assert "| Keras 3 (TensorFlow) | tutorial_1 | 1 | 30 | 1.00 |" in printed


def test_a_worker_reports_a_failed_generation_and_still_answers(monkeypatch, capsys):
    import io

    from benchmarks import worker

    def boom(peer, shape, cmd):
        raise MemoryError("simulated")

    monkeypatch.setattr(worker, "_generate", boom)
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"cmd": "generate"}\n{"cmd": "quit"}\n'))
    assert worker.main("lstm_jax", "tiny") == 0
    replies = [
        json.loads(line[len(worker.PREFIX) :])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(worker.PREFIX)
    ]
    assert replies[1] == {"status": "failed", "reason": "MemoryError: simulated"}
    assert replies[2]["peak_rss_mb"] > 0


def test_a_peer_failing_mid_run_is_reported_with_its_cause(tmp_path, monkeypatch, capsys):
    """A worker that fails after its first steps: the others' results stand, it keeps its parameter count
    and first step, and the reason names the cause (it was the traceback's first line, 'Traceback (most
    recent call last):', cut at 80 characters in the table, or nothing at all for a worker killed for
    memory)."""
    ready = {"status": "ready", "param_count": 7, "first_step_s": 0.5, "second_step_s": 0.01}
    calls = []

    def flax_time():
        calls.append(1)
        if len(calls) > 1:  # round 1, after the warm-up
            return {"status": "failed", "reason": "MemoryError: simulated"}
        return {"times": [0.03]}

    script = {
        "lstm_jax": {"ready": ready, "time": {"times": [0.01]}},
        "flax": {"ready": ready, "time": flax_time},
    }
    argv = ["--shapes", "tiny", "--peers", "lstm_jax,flax", "--rounds", "2"]
    res = _run_with_fake_workers(monkeypatch, tmp_path, script, argv)["shapes"]["tiny"]
    assert res["lstm_jax"]["median_ms"] == 10.0 and res["lstm_jax"]["n"] == 2
    flax = res["flax"]
    assert flax["status"] == "failed" and flax["reason"] == "MemoryError: simulated"
    assert flax["param_count"] == 7 and flax["first_step_s"] == 0.5 and "median_ms" not in flax
    printed = capsys.readouterr().out
    assert "  tiny flax: failed: MemoryError: simulated" in printed
    assert (
        "| tiny | Flax nnx.RNN(OptimizedLSTMCell) | | failed: MemoryError: simulated |" in printed
    )


@pytest.mark.parametrize(
    "code, reason",
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by signal 9 (SIGKILL"),
        ("raise MemoryError('simulated')", "exit code 1: MemoryError: simulated"),
    ],
)
def test_a_dead_workers_reason_names_its_exit(code, reason):
    import subprocess
    import tempfile

    w = object.__new__(run.Worker)
    w.peer, w.timeout, w.log = "x", 60, tempfile.TemporaryFile(mode="w+")
    w.proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=w.log, text=True
    )
    w.start_reader()
    got = w.read()
    w.log.close()
    assert got["status"] == "failed" and reason in got["reason"], got


def test_peak_rss_is_the_training_steps_not_the_generations():
    """On shape A lstm_jax and Keras also generate in their workers (Flax and PyTorch do not): their peak
    RSS counted generation's models too (lstm_jax, one worker, --gen-length 20: 456 MB before, 564 after)."""
    import subprocess

    code = (
        "import io, sys, numpy as np\n"
        "from benchmarks import worker\n"
        "def gen(peer, shape, cmd):\n"
        "    a = np.ones(600 * 2**20 // 8)  # 600 MB, touched\n"
        "    return {}\n"
        "worker._generate = gen\n"
        'sys.stdin = io.StringIO(\'{"cmd": "generate"}\\n{"cmd": "quit"}\\n\')\n'
        "worker.main('lstm_jax', 'tiny')\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=run.child_env("lstm_jax"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    from benchmarks.worker import PREFIX

    quit_reply = [json.loads(x[len(PREFIX) :]) for x in out.stdout.splitlines() if PREFIX in x][-1]
    # (the peak before may hold compile-time memory since freed: not all 600 MB show above it)
    assert quit_reply["peak_rss_with_generation_mb"] > quit_reply["peak_rss_mb"] + 300, quit_reply


def test_a_workers_peak_rss_is_its_own_not_its_parents():
    """Linux carries the parent's resident size at the fork into the child's `ru_maxrss`: every worker
    reported at least its starter's size (2.7 GB under a pytest worker)."""
    import subprocess

    import numpy as np

    held = np.ones(1024 * 2**20 // 8)  # 1 GB resident in this (the parent) process
    code = "from benchmarks import worker; print(worker._peak_rss_mb())"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert held[-1] == 1.0 and float(out.stdout) < 512, out


def test_show_of_a_damaged_run_is_one_error_line(tmp_path, capsys):
    """A number field holding text, or a zero time or ceiling, ended --show in a traceback (ValueError,
    ZeroDivisionError); a generating peer this version does not name (an older or newer run) too."""
    row = {"param_count": 10, "median_ms": 10.0, "p25_ms": 9.0, "p75_ms": 11.0, "first_step_s": 1.0}
    report = _report({"C": {"lstm_jax": row}})
    path = tmp_path / "run.json"
    for field, value in (("param_count", "ten"), ("median_ms", 0), ("ceiling_gflops", 0)):
        damaged = json.loads(json.dumps(report))
        where = (
            damaged["ceiling"] if field == "ceiling_gflops" else damaged["shapes"]["C"]["lstm_jax"]
        )
        where[field] = value
        path.write_text(json.dumps(damaged))
        assert run.main(["--show", str(path)]) == 2, field
        err = capsys.readouterr().err
        assert "is not a benchmark run's JSON" in err and len(err.strip().splitlines()) == 1
    gen = {"window_1": {"streams": 1, "chars_per_s": 500.0, "first_call_s": 2.0}}
    report["shapes"]["C"]["mxnet"] = {**row, "generation": gen}
    path.write_text(json.dumps(report))
    assert run.main(["--show", str(path)]) == 0
    assert "| mxnet | window_1 | 1 | 500 | 2.00 |" in capsys.readouterr().out


def test_a_zero_ceiling_size_or_timeout_is_a_user_error(tmp_path, monkeypatch, capsys):
    """`--ceiling-n 0` measured a 0 GFLOP/s ceiling and, after the first shape, ended in
    ZeroDivisionError before the JSON was written; `--timeout 0` had every peer "time out" at once."""

    def measured(*args, **kwargs):
        raise AssertionError("measured a bad flag's run")

    monkeypatch.setattr(run, "run_child_json", measured)
    argv = ["--shapes", "tiny", "--peers", "lstm_jax", "--out", str(tmp_path / "r.json")]
    for flag, message in (
        (["--ceiling-n", "0"], "--ceiling-n=0 must be >= 1"),
        (["--timeout", "0"], "--timeout=0.0 must be > 0"),
    ):
        assert run.main([*argv, *flag]) == 2, flag
        assert message in capsys.readouterr().err


def _worker_running(code: str, timeout: float) -> run.Worker:
    """A `run.Worker` driving `python -c code` instead of a benchmark worker, started as `Worker` starts one."""
    w = object.__new__(run.Worker)
    w.peer, w.timeout = "x", timeout
    w.start([sys.executable, "-c", code])
    return w


def test_a_worker_killed_while_idle_is_a_failed_peer():
    """The out-of-memory killer picks the largest process, often a worker waiting for its turn: the next
    command to it raised BrokenPipeError in the driver, which ended the run and lost every result."""
    import signal

    w = _worker_running("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 60)
    w.proc.wait()
    got = w.ask({"cmd": "time", "steps": 1})
    assert got["status"] == "failed" and f"killed by signal {int(signal.SIGKILL)}" in got["reason"]
    assert w.close() == {}


def test_a_hung_worker_times_out():
    """`--timeout` was checked only between output lines: a worker that hung without printing (a deadlock,
    a step that never ends) held the run forever."""

    w = _worker_running("import time; print('chatter', flush=True); time.sleep(30)", 1.0)
    t0 = time.monotonic()
    got = w.read()
    assert time.monotonic() - t0 < 10
    assert got == {"status": "failed", "reason": "timed out: no reply in 1 s"}
    assert w.proc.wait(timeout=10) != 0  # killed, not left to run
    w.close()


def test_a_repeated_peer_or_shape_runs_once(tmp_path, monkeypatch):
    started = []

    class Counting(_FakeWorker):
        def __init__(self, peer, shape, timeout, malloc="all"):
            started.append((peer, shape))
            super().__init__(peer, shape, timeout, malloc)

    ready = {"status": "ready", "param_count": 1, "first_step_s": 0.5, "second_step_s": 0.01}
    monkeypatch.setattr(
        _FakeWorker, "script", {"lstm_jax": {"ready": ready, "time": {"times": [0.01]}}}
    )
    monkeypatch.setattr(run, "Worker", Counting)
    monkeypatch.setattr(run, "run_child_json", _fake_ceiling)
    argv = ["--shapes", "tiny,tiny", "--peers", "lstm_jax, lstm_jax", "--rounds", "1"]
    assert run.main([*argv, "--out", str(tmp_path / "r.json")]) == 0
    assert started == [("lstm_jax", "tiny")]


def test_peak_rss_measures_fresh_processes_of_both_builds():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    option = "xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"

    def peak_rss(*args):
        cmd = [sys.executable, "-m", "benchmarks.peak_rss", "--shape", "tiny", "--processes", "1"]
        return subprocess.run([*cmd, *args], cwd=root, capture_output=True, text=True, timeout=300)

    proc = peak_rss("--steps", "2", "--xla", option)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "shape tiny: peak RSS MB per process (after build / first step / step 2)"
    assert [x.split(":")[0].strip() for x in lines[1:]] == ["shipped", f"--xla {option}"]
    for line in lines[1:]:
        build, first, last = (float(v) for v in line.split(": ")[1].split(";")[0].split("/"))
        assert 0 < build <= first <= last  # a peak never falls
    # A value XLA rejects fails in the child: one line naming the build, non-zero exit.
    bad = peak_rss("--xla", "xla_cpu_experimental_ynn_fusion_type=NO_SUCH_TYPE")
    assert bad.returncode == 1 and "peak_rss: --xla xla_cpu" in bad.stderr
    assert "not a valid enum value" in bad.stderr
    usage = peak_rss("--xla", "novalue")
    assert usage.returncode == 2 and "--xla takes NAME=VALUE" in usage.stderr


def test_peak_rss_measures_each_process_not_its_starter():
    """`peak_rss` read `ru_maxrss`, which Linux carries over fork+exec from the starting process: called
    from a large process (a notebook, a pytest worker), every build reported at least that process's size."""
    from benchmarks import peak_rss

    held = np.ones(1536 * 2**20 // 8)  # 1.5 GB resident in this (the starting) process
    runs = peak_rss.measure("tiny", processes=1, steps=1, xla=None)
    assert held[-1] == 1.0
    (shipped,) = runs["shipped"]
    assert 0 < shipped["build"] <= shipped["last_step"] < 1024, shipped


@pytest.mark.parametrize(
    "module, argv",
    [
        ("ab_rule", ["--shape", "Z", "--set", "NATIVE_SCATTER_ROWS=0"]),
        ("profile_step", ["--shape", "Z"]),
        ("page_faults", ["--shapes", "A,Z"]),
        ("floor", ["--shapes", "Z"]),
        ("gpu_check", ["--emulate", "--shapes", "C,Z"]),
        ("gpu_check", ["--emulate", "--shapes", " , "]),
    ],
)
def test_the_tools_refuse_an_unknown_shape_as_a_usage_error(module, argv, capsys):
    """An unknown shape name ended these tools in `KeyError: 'Z'` (a traceback, exit 1), some of them (floor)
    only after minutes of measuring the shapes named before it."""
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unknown shape 'Z'" in err or "names no shape" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "module, argv, flag",
    [
        (
            "ab_rule",
            ["--shape", "tiny", "--set", "NATIVE_SCATTER_ROWS=0", "--rounds", "0"],
            "--rounds",
        ),
        (
            "ab_rule",
            ["--shape", "tiny", "--set", "NATIVE_SCATTER_ROWS=0", "--steps", "0"],
            "--steps",
        ),
        ("page_faults", ["--shapes", "tiny", "--steps", "0"], "--steps"),
        ("profile_step", ["--shape", "tiny", "--steps", "0"], "--steps"),
        ("dots", ["--scale", "0.01", "--repeats", "0"], "--repeats"),
        ("layer", ["--batch", "2", "--time", "3", "--hidden", "4", "--reps", "0"], "--reps"),
        ("gpu_check", ["--emulate", "--shapes", "tiny", "--rounds", "0"], "--rounds"),
        ("floor", ["--shapes", "tiny", "--reps", "0"], "--reps"),
        ("logits_chunk", ["--steps", "0"], "--steps"),
        ("weight_stream", ["--spread", "--calls", "0"], "--calls"),
        ("bench_engine", ["--steps", "15"], "--steps"),
    ],
)
def test_the_tools_refuse_a_count_that_measures_nothing(module, argv, flag, capsys):
    """A zero count ended these tools in a ZeroDivisionError, StatisticsError or IndexError traceback, most
    after compiling the step (bench_engine: under 20 steps, after training and compiling both loops)."""
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and "must be at least" in err, err


def test_floor_refuses_a_results_file_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    """`floor --results` of a missing file, of text that is not JSON or of another tool's JSON (gpu_check's)
    ended in a FileNotFoundError, JSONDecodeError or KeyError traceback; a damaged row of a run's JSON only
    after both chain measurements."""
    from benchmarks import floor

    def measured(*args, **kwargs):
        raise AssertionError("measured before reading --results")

    monkeypatch.setattr(floor, "_run_worker", measured)
    row = {"median_ms": "ten"}  # a number field holding text
    run_json = {"ceiling": {"ceiling_gflops": 100.0}, "shapes": {"tiny": {"torch": row}}}
    files = {
        "bad.json": "{not json",
        "gpu.json": json.dumps({"device": "H200", "parity": []}),
        "damaged.json": json.dumps(run_json),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for name, message in (
        ("none.json", "cannot be read"),
        ("bad.json", "is not a benchmarks.run JSON"),
        ("gpu.json", "is not a benchmarks.run JSON"),
        ("damaged.json", "is not a benchmarks.run JSON"),
    ):
        with pytest.raises(SystemExit) as stop:
            floor.main(["--shapes", "tiny", "--results", str(tmp_path / name)])
        assert stop.value.code == 2, name
        err = capsys.readouterr().err
        assert f"--results '{tmp_path / name}' {message}" in err, err


def test_a_run_without_out_never_overwrites_an_earlier_runs_json(tmp_path, monkeypatch):
    """Without --out the JSON was named by the minute alone: a second run started in the minute of a
    finished one (a short run: one shape, one peer) overwrote the first's results."""
    import datetime as dt
    import types

    minute = dt.datetime(2026, 12, 7, 9, 30, 5, tzinfo=dt.UTC)
    clock = types.SimpleNamespace(UTC=dt.UTC, datetime=types.SimpleNamespace(now=lambda tz: minute))
    monkeypatch.setattr(run, "dt", clock)
    monkeypatch.setattr(run, "ROOT", tmp_path)
    ready = {"status": "ready", "param_count": 1, "first_step_s": 0.5, "second_step_s": 0.01}
    monkeypatch.setattr(
        _FakeWorker, "script", {"lstm_jax": {"ready": ready, "time": {"times": [0.01]}}}
    )
    monkeypatch.setattr(run, "Worker", _FakeWorker)
    monkeypatch.setattr(run, "run_child_json", _fake_ceiling)
    for shape in ("tiny", "C", "tiny"):
        argv = ["--shapes", shape, "--peers", "lstm_jax", "--rounds", "1", "--no-generate"]
        assert run.main(argv) == 0
    results = tmp_path / "benchmarks" / "results"
    names = sorted(p.name for p in results.iterdir())
    assert names == ["2026-12-07T0930-2.json", "2026-12-07T0930-3.json", "2026-12-07T0930.json"]
    shapes = [list(json.loads((results / n).read_text())["shapes"]) for n in names]
    assert shapes == [["C"], ["tiny"], ["tiny"]]


def test_a_missing_keras_backend_is_named_not_keras():
    """Without TensorFlow the Keras-TF peers were reported as "keras not installed", Keras being installed:
    the reason now names the backend that is missing and the package that provides it."""
    import subprocess

    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # as if tensorflow-cpu were not installed\n"
        "from benchmarks.peers import keras_peer\n"
        "print(keras_peer.available())\n"
    )
    env = {**run.child_env("keras_tf"), "KERAS_BACKEND": "tensorflow"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    reason = out.stdout.strip().splitlines()[-1]
    assert reason.startswith("keras's tensorflow backend cannot be imported"), out
    assert reason.endswith("pip install tensorflow-cpu") and "keras not installed" not in reason


def test_a_generation_length_below_one_is_a_user_error(tmp_path, monkeypatch, capsys):
    """`--gen-length 0` (or `--tutorial-length 0`) put 0 chars/s rows in the generation table as measured,
    and a negative length failed every peer's generation, both after shape A's timing."""

    def measured(*args, **kwargs):
        raise AssertionError("measured a bad flag's run")

    monkeypatch.setattr(run, "run_child_json", measured)
    argv = ["--shapes", "A", "--peers", "lstm_jax", "--out", str(tmp_path / "r.json")]
    for flag, message in (
        (["--gen-length", "0"], "--gen-length=0 must be >= 1"),
        (["--tutorial-length", "-3"], "--tutorial-length=-3 must be >= 1"),
    ):
        assert run.main([*argv, *flag]) == 2, flag
        assert message in capsys.readouterr().err


def test_ab_rule_refuses_a_value_its_rule_cannot_take(monkeypatch, capsys):
    """An integer or on/off rule took `type(shipped)(value)`: CPU_PER_STEP_MAX_HIDDEN=64.5 ran as 64 and
    NATIVE_SCATTER_ROWS=0.5 as True (the shipped build twice), while the report named 64.5 and 0.5.
    `inf` (or `nan`) ended in an OverflowError (ValueError) traceback from `int(number)`, and a float
    rule's `nan` was refused as "not an integer"."""
    from benchmarks import ab_rule

    def compare(*args, **kwargs):
        raise AssertionError("compared a bad value")

    monkeypatch.setattr(ab_rule, "compare", compare)
    for setting, message in (
        ("CPU_PER_STEP_MAX_HIDDEN=64.5", "'64.5' is not an integer"),
        ("NATIVE_SCATTER_ROWS=0.5", "'0.5' is not 0 or 1"),
        ("NATIVE_BIAS_GRAD_IN_KERNEL=2", "'2' is not 0 or 1"),
        ("CPU_PER_STEP_MAX_HIDDEN=inf", "'inf' is not an integer"),
        ("CPU_PER_STEP_MAX_HIDDEN=nan", "'nan' is not a number"),
        ("NATIVE_SCATTER_ROWS=-inf", "'-inf' is not 0 or 1"),
        ("NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION=nan", "'nan' is not a number"),
    ):
        with pytest.raises(SystemExit) as stop:
            ab_rule.main(["--shape", "tiny", "--set", setting])
        assert stop.value.code == 2, setting
        assert message in capsys.readouterr().err, setting


# ---------------------------------------------------------------------------------------------------------
# The helper tools' numbers (floor, ceiling, ab_rule, peak_rss, profile_step, gpu_check, dots, layer,
# logits_chunk, weight_stream, page_faults): what each prints or returns, with their clocks, benches and
# measurements replaced by fakes, so that a wrong formula, statistic or label fails in well under a second.
# ---------------------------------------------------------------------------------------------------------


class _Clock:
    """A fake `time.perf_counter` (and `process_time`): time moves only when a fake step `advance`s it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0

    def advance(self, seconds: float, cpu: float = 0.0) -> None:
        self.now += seconds
        self.cpu += cpu

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.cpu


def _fake_time(clock: _Clock):
    import types

    return types.SimpleNamespace(perf_counter=clock.perf_counter, process_time=clock.process_time)


def test_floor_median_ms_is_the_median_after_a_warm_up(monkeypatch):
    from benchmarks import floor

    clock = _Clock()
    monkeypatch.setattr(floor, "time", _fake_time(clock))
    durations = iter([100.0, 1.0, 5.0, 2.0])  # the warm-up (compiling), then three timed calls
    assert floor.median_ms(lambda: clock.advance(next(durations)), reps=3) == 2000.0


def test_floor_fastest_peer_skips_every_lstm_jax_build():
    from benchmarks import floor

    rows = {"lstm_jax_dp": {"median_ms": 50.0}, "lstm_jax_cudnn": {"median_ms": 40.0}}
    rows |= {"torch": {"median_ms": 90.0}, "flax": {"median_ms": 80.0}}
    assert floor.fastest_peer_ms({"shapes": {"A": rows}}, "A") == ("flax", 80.0)


def test_floor_verdict_compares_the_target_with_the_lower_floor():
    """The target is reachable when it is at least either arrangement's floor (one device, or two)."""
    from benchmarks import floor

    rest = floor.floor_ms(SHAPES["A"], 0.0, 100.0)
    all_cores = {"A": {"batch": 40, "xla_chain_ms": 70.0, "torch_chain_ms": None}}
    one_core = {"A": {"batch": 20, "xla_chain_ms": 10.0, "torch_chain_ms": None}}
    for target, verdict in ((40.0, "yes"), (5.0, "no: below the floor"), (80.0, "yes")):
        peer = 1.5 * (target + rest)
        results = {"shapes": {"A": {"torch": {"median_ms": peer}}}}
        table = floor.report(["A"], one_core, all_cores, 100.0, results)
        assert table.splitlines()[-1].endswith(f"| {verdict} |"), (target, table)
        table = floor.report(["A"], all_cores, one_core, 100.0, results)
        assert table.splitlines()[-1].endswith(f"| {verdict} |"), (target, table)


def test_floor_worker_sums_the_layers_at_the_divided_batch(monkeypatch):
    from benchmarks import floor

    calls = []

    def xla(batch, steps, hidden, reps):
        calls.append((batch, steps, hidden, reps))
        return 1.0 + len(calls)

    monkeypatch.setattr(floor, "xla_chain_ms", xla)
    monkeypatch.setattr(floor, "torch_chain_ms", lambda b, t, h, r: 0.5)
    # TINY: batch 4, 6 steps, two layers of 8.
    assert floor.worker(["tiny"], 2, 3) == {
        "tiny": {"batch": 2, "xla_chain_ms": 2.0 + 3.0, "torch_chain_ms": 1.0}
    }
    assert calls == [(2, 6, 8, 3), (2, 6, 8, 3)]
    # Without torch (or with a layer it cannot time) there is no PyTorch chain, not a partial sum.
    per_layer = iter([0.5, None])
    monkeypatch.setattr(floor, "torch_chain_ms", lambda b, t, h, r: next(per_layer))
    assert floor.worker(["tiny"], 1, 3)["tiny"]["torch_chain_ms"] is None
    assert calls[-1] == (4, 6, 8, 3)


def test_floor_single_core_worker_runs_half_the_batch_on_one_thread(monkeypatch):
    import types

    from benchmarks import floor

    seen = []

    def fake_run(args, env, **kwargs):
        seen.append((args, env))
        out = floor.PREFIX + json.dumps({"tiny": {"batch": 2}})
        return types.SimpleNamespace(stdout=f"noise\n{out}\n", returncode=0, stderr="")

    monkeypatch.setattr(floor, "subprocess", types.SimpleNamespace(run=fake_run))
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert floor._run_worker(["tiny"], single_core=True, reps=4) == {"tiny": {"batch": 2}}
    args, env = seen[-1]
    assert args[args.index("--batch-divisor") + 1] == "2" and args[args.index("--reps") + 1] == "4"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=false"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    floor._run_worker(["tiny"], single_core=False, reps=4)
    args, env = seen[-1]
    assert "--batch-divisor" not in args and env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"

    def failed(args, env, **kwargs):
        return types.SimpleNamespace(stdout="", returncode=3, stderr="boom")

    monkeypatch.setattr(floor, "subprocess", types.SimpleNamespace(run=failed))
    with pytest.raises(RuntimeError, match=r"exit 3\):\nboom"):
        floor._run_worker(["tiny"], single_core=False, reps=4)


def test_floor_main_prints_the_runs_ceiling_and_each_workers_chain(tmp_path, monkeypatch, capsys):
    from benchmarks import floor

    def worker(names, single_core, reps):
        ms = 30.0 if single_core else 70.0
        return {n: {"batch": 1, "xla_chain_ms": ms, "torch_chain_ms": None} for n in names}

    monkeypatch.setattr(floor, "_run_worker", worker)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"ceiling": {"ceiling_gflops": 250.0}, "shapes": {}}))
    floor.main(["--shapes", "tiny", "--results", str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fp32 matmul ceiling 250 GFLOP/s;")
    rest = floor.floor_ms(TINY, 0.0, 250.0)
    assert lines[-1].startswith(
        f"| tiny smoke | 70.0 | 30.0 | - | {rest:.1f} | {70 + rest:.1f} | {30 + rest:.1f} |"
    )


def test_floor_refuses_a_results_ceiling_that_is_not_positive(tmp_path, monkeypatch, capsys):
    """A zero ceiling divided by zero in the table, a negative one gave negative floors."""
    from benchmarks import floor

    def measured(*args, **kwargs):
        raise AssertionError("measured before reading --results")

    monkeypatch.setattr(floor, "_run_worker", measured)
    path = tmp_path / "run.json"
    for ceiling in (0.0, -5.0):
        path.write_text(json.dumps({"ceiling": {"ceiling_gflops": ceiling}, "shapes": {}}))
        with pytest.raises(SystemExit) as stop:
            floor.main(["--shapes", "tiny", "--results", str(path)])
        assert stop.value.code == 2
        assert "is not a benchmarks.run JSON (ValueError" in capsys.readouterr().err


def test_ceiling_is_the_fastest_repeat_of_the_faster_library(monkeypatch):
    from benchmarks import ceiling
    from lstm_jax import native

    clock = _Clock()
    monkeypatch.setattr(ceiling, "time", _fake_time(clock))
    durations = iter([100.0, 4.0, 2.0, 8.0])  # the warm-up, then three repeats
    # 2 * 1000^3 FLOPs in the best repeat's 2 s: 1 GFLOP/s.
    assert ceiling.best_gflops(lambda: clock.advance(next(durations)), 1000, 3) == 1.0
    monkeypatch.setattr(native, "fma_peak_gflops", lambda: 99.0)
    for numpy_gf, jax_gf in ((5.0, 7.0), (7.0, 5.0)):
        rates = iter([numpy_gf, jax_gf])
        monkeypatch.setattr(ceiling, "best_gflops", lambda fn, n, repeats, rates=rates: next(rates))
        got = ceiling.measure(n=8, repeats=1)
        assert (got["numpy_gflops"], got["jax_gflops"]) == (numpy_gf, jax_gf)
        assert got["ceiling_gflops"] == 7.0 and got["fma_peak_gflops"] == 99.0 and got["n"] == 8


class _FakeBench:
    """A `lstm_jax_peer.Bench` stand-in: records the rule `watch` (a `core` constant) when its step is first
    run (traced), and advances `clock` by the next of `durations` per step."""

    clock: _Clock = _Clock()
    watch: str = "CPU_PER_STEP_MAX_HIDDEN"
    made: list = []

    def __init__(self, shape, compiler_options=None, **kwargs):
        self.shape, self.options, self.steps, self.traced = shape, compiler_options, 0, None
        self.durations = None
        self.loss = 0.0
        self.made.append(self)

    def step(self) -> None:
        from lstm_jax import core

        if self.steps == 0:
            self.traced = getattr(core, self.watch)
        self.steps += 1
        self.loss = float(self.steps)
        self.clock.advance(next(self.durations) if self.durations else 0.001)


def test_ab_rule_compare_times_each_build_under_its_own_rule(monkeypatch):
    from benchmarks import ab_rule
    from benchmarks.peers import lstm_jax_peer
    from lstm_jax import core

    clock = _Clock()
    monkeypatch.setattr(ab_rule, "time", _fake_time(clock))
    monkeypatch.setattr(_FakeBench, "clock", clock)
    monkeypatch.setattr(_FakeBench, "made", [])
    shipped = core.CPU_PER_STEP_MAX_HIDDEN

    class Bench(_FakeBench):
        def step(self):
            if self.durations is None:  # the changed build is made first: 3 rounds of 2 steps
                changed = len(self.made) == 1 or self is self.made[0]
                per = [1, 5, 2, 2, 9, 9] if changed else [1, 1, 1, 1, 1, 1]
                self.durations = iter([0.0] + [ms / 1e3 for ms in per])
            super().step()

    monkeypatch.setattr(lstm_jax_peer, "Bench", Bench)
    r = ab_rule.compare("tiny", "CPU_PER_STEP_MAX_HIDDEN", 7.0, rounds=3, steps=2)
    changed, as_shipped = _FakeBench.made
    assert (changed.traced, as_shipped.traced) == (7, shipped)
    assert core.CPU_PER_STEP_MAX_HIDDEN == shipped  # restored
    # The changed build's rounds average 3, 2 and 9 ms per step: median 3.
    assert r["changed_ms"] == pytest.approx(3.0) and r["shipped_ms"] == pytest.approx(1.0)
    assert r["rule"] == f"CPU_PER_STEP_MAX_HIDDEN=7 (shipped: {shipped:g})"
    assert (r["changed_loss"], r["shipped_loss"]) == (7.0, 7.0) and r["shape"] == "tiny"
    # An XLA option goes to the changed build's compilation alone.
    monkeypatch.setattr(_FakeBench, "made", [])
    r = ab_rule.compare("tiny", "xla_opt", "V", rounds=1, steps=1, xla=True)
    assert [b.options for b in _FakeBench.made] == [{"xla_opt": "V"}, None]
    assert r["rule"] == "XLA option xla_opt=V"


def test_ab_rule_prints_each_builds_time_and_refuses_bad_values(monkeypatch, capsys):
    from benchmarks import ab_rule

    seen = []

    def compare(shape, name, value, rounds, steps, xla=False):
        seen.append((shape, name, value, rounds, steps, xla))
        times = {"changed_ms": 3.0, "shipped_ms": 1.0}
        return {"shape": shape, "rule": "R", **times, "changed_loss": 0.25, "shipped_loss": 0.5}

    monkeypatch.setattr(ab_rule, "compare", compare)
    ab_rule.main(["--shape", "tiny", "--set", "CPU_PER_STEP_MAX_HIDDEN=64", "--rounds", "4"])
    assert seen[-1] == ("tiny", "CPU_PER_STEP_MAX_HIDDEN", 64.0, 4, 5, False)
    assert capsys.readouterr().out.strip() == (
        "shape tiny, R: changed 3.00 ms, shipped 1.00 ms per step (median of 4 interleaved rounds);"
        " losses 0.25 / 0.5"
    )
    ab_rule.main(["--shape", "tiny", "--xla", "opt=a=b", "--steps", "2"])
    assert seen[-1] == ("tiny", "opt", "a=b", 15, 2, True)
    for argv, message in (
        (["--set", "CPU_PER_STEP_MAX_HIDDEN=abc"], "'abc' is not a number"),
        (["--xla", "=v"], "--xla must be NAME=VALUE; got '=v'"),
        (["--xla", "novalue"], "--xla must be NAME=VALUE; got 'novalue'"),
        (["--set", "NO_SUCH_RULE=1"], "--set must be NAME=VALUE with NAME one of CPU_PER_STEP"),
    ):
        with pytest.raises(SystemExit) as stop:
            ab_rule.main(["--shape", "tiny", *argv])
        assert stop.value.code == 2, argv
        assert message in capsys.readouterr().err
    assert len(seen) == 2


def test_peak_rss_prints_each_process_and_the_spread(monkeypatch, capsys):
    from benchmarks import peak_rss

    peaks = [
        {"build": 1.0, "first_step": 2.0, "last_step": 9.0},
        {"build": 1.0, "first_step": 3.0, "last_step": 5.0},
        {"build": 2.0, "first_step": 4.0, "last_step": 6.0},
    ]
    monkeypatch.setattr(peak_rss, "measure", lambda *args: {"shipped": peaks})
    peak_rss.main(["--shape", "tiny", "--processes", "3", "--steps", "4"])
    assert capsys.readouterr().out.splitlines() == [
        "shape tiny: peak RSS MB per process (after build / first step / step 4)",
        "  shipped: 1/2/9, 1/3/5, 2/4/6; last step min 5, median 6, max 9",
    ]
    for argv in (["--processes", "0"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as stop:
            peak_rss.main(["--shape", "tiny", *argv])
        assert stop.value.code == 2
        assert "must be at least 1" in capsys.readouterr().err


def test_peak_rss_child_reads_the_peak_after_each_stage(monkeypatch):
    from benchmarks import peak_rss
    from benchmarks.peers import lstm_jax_peer

    monkeypatch.setattr(_FakeBench, "clock", _Clock())
    monkeypatch.setattr(_FakeBench, "made", [])
    monkeypatch.setattr(lstm_jax_peer, "Bench", _FakeBench)
    monkeypatch.setattr(peak_rss, "_maxrss_mb", lambda: 100.0 + _FakeBench.made[-1].steps)
    out = peak_rss.child("tiny", 3, "opt=a=b")
    (bench,) = _FakeBench.made
    assert bench.options == {"opt": "a=b"} and bench.steps == 3 and bench.shape is TINY
    assert out == {"build": 100.0, "first_step": 101.0, "last_step": 103.0}
    one = peak_rss.child("tiny", 1, None)
    assert one == {"build": 100.0, "first_step": 101.0, "last_step": 101.0}
    assert _FakeBench.made[-1].options is None


def test_profile_step_sums_each_ops_time_per_step_and_shows_the_last_step(monkeypatch):
    import contextlib

    from benchmarks import profile_step
    from benchmarks.peers import lstm_jax_peer

    clock = _Clock()
    monkeypatch.setattr(profile_step, "time", _fake_time(clock))
    monkeypatch.setattr(_FakeBench, "clock", clock)
    monkeypatch.setattr(_FakeBench, "made", [])
    monkeypatch.setattr(lstm_jax_peer, "Bench", _FakeBench)
    monkeypatch.setattr(jax.profiler, "trace", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(_FakeBench, "step", lambda self: clock.advance(0.010))

    def op(name, ts, dur, tid=1):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}

    events = [
        op("dot.1", 0, 3000),
        op("fusion", 3000, 2000),
        op("dot.1", 10000, 3000),
        op("fusion", 13000, 60),  # under --min-ms 0.1: not in the timeline
        op("python_side", 0, 9000, tid=2),  # Python's thread, not XLA's
        op("ThunkExecutor::Execute", 0, 20000),
        op("$bookkeeping", 0, 20000),
    ]
    names = {(1, 1): "tf_XLAEigen/7", (1, 2): "python3"}
    monkeypatch.setattr(profile_step, "_events", lambda d: (events, names))
    lines = profile_step.profile("tiny", steps=2, top=5, min_ms=0.1).splitlines()
    assert lines == [
        "shape tiny: 10.00 ms per traced step",
        "ms per step, summed over threads (top 5; all ops: 4.03):",
        "     3.00  x 1.0  dot.1",
        "     1.03  x 1.0  fusion",
        "timeline of the last step (start ms, +duration ms, thread, op >= 0.1 ms):",
        "    0.00 +   3.00  XLAEigen/7 dot.1",
    ]


def test_profile_step_native_stats_per_step_rates_and_shares(monkeypatch):
    from benchmarks import profile_step
    from lstm_jax import native

    clock = _Clock()
    monkeypatch.setattr(profile_step, "time", _fake_time(clock))

    class Bench:
        def step(self):
            clock.advance(0.010)

    calls = [
        {"kind": "forward", "T": 6, "B": 4, "F": 8, "H": 8, "calls": 4, "wall": 0.012}
        | {"steps": 0.016, "matmul": 0.008, "matmul_flops": 8e8}
        | {"helper_start": 0.001, "helpers_started": 2},
        {"kind": "backward", "T": 6, "B": 4, "F": 0, "H": 8, "calls": 2, "wall": 0.004}
        | {"steps": 0.006, "matmul": 0.008, "matmul_flops": 4e8}
        | {"helper_start": 0.0, "helpers_started": 0},
    ]

    class Stats:
        def __enter__(self):
            return calls

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(native, "stats", Stats)
    monkeypatch.setattr(native, "fma_peak_gflops", lambda **kwargs: 200.0)
    lines = profile_step.native_stats(Bench(), steps=2).splitlines()
    assert lines[0] == "native kernel calls, 2 untraced steps: 10.00 ms per step"
    assert lines[2].split()[:5] == ["6.00", "8.00", "4.00", "100.0", "0.500"]
    assert lines[2].endswith("  forward T=6 B=4 F=8 H=8 (x2)")
    assert lines[3].split()[:5] == ["2.00", "3.00", "4.00", "50.0", "0.000"]
    assert lines[3].endswith("(x1)")
    assert lines[4] == "in the calls: 8.00 of 10.00 ms (80%)"
    assert lines[5].startswith("one core's FMA peak 200.0 GFLOP/s")
    assert lines[5].endswith("the calls' matmuls at 25-50% of it")


def test_gpu_check_errors_masks_and_speed_up(monkeypatch):
    import types

    from benchmarks import gpu_check

    # The largest absolute error over the reference's largest magnitude.
    assert gpu_check._rel_err([[2.0, -4.0]], [[2.0, -5.0]]) == pytest.approx(0.25)
    assert gpu_check._rel_err([0.0], [0.0]) == 0.0
    masks = gpu_check._masks(5, 4, np.random.default_rng(0))
    post, pre = masks["post"], masks["pre"]
    assert masks["none"] is None and post.shape == pre.shape == (5, 4)
    assert not post[0].any() and post[-1].all()  # an empty row and a full one
    for row in post:  # post-padding: the valid steps first
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()
    np.testing.assert_array_equal(pre, post[:, ::-1])
    # The timing: cudnn's calls take 1 ms, scan's 2 ms (a fake clock, no compiling).
    clock = _Clock()
    monkeypatch.setattr(gpu_check, "time", _fake_time(clock))

    def stack_fn(shape, impl):
        def fn(params, xs, mask):
            clock.advance(0.002 if impl == "scan" else 0.001)
            return impl

        return fn, None

    monkeypatch.setattr(gpu_check, "_stack_fn", stack_fn)
    fake_jax = types.SimpleNamespace(
        jit=lambda f: f,
        value_and_grad=lambda f, argnums, has_aux: f,
        block_until_ready=lambda x: x,
    )
    monkeypatch.setattr(gpu_check, "jax", fake_jax)
    r = gpu_check.timing(TINY, 3, 2, np.random.default_rng(0))
    assert (r["shape"], r["time"]) == ("tiny", 3)
    assert r["scan_ms"] == pytest.approx(2.0) and r["cudnn_ms"] == pytest.approx(1.0)
    assert r["speedup"] == pytest.approx(2.0) and len(r["all_ms"]["scan"]) == 2


def test_dots_reports_each_products_gflops(monkeypatch, capsys):
    from benchmarks import dots

    seen = []

    def time_shape(m, k, n, transposed, repeats):
        seen.append((m, k, n, transposed, repeats))
        return 0.002, 0.001  # XLA 2 ms, numpy 1 ms

    monkeypatch.setattr(dots, "time_shape", time_shape)
    dots.main(["--repeats", "3"])
    out = capsys.readouterr().out.splitlines()
    # A's weight gradient: 2 * 300 * 2000 * 1200 = 1.44 GFLOP.
    assert "| A weight grad x^T @ dz | 1.44 | 2.00 | 720.0 | 1.00 | 1440.0 |" in out
    assert seen[0] == (300, 2000, 1200, True, 3) and len(seen) == len(dots.SHAPES)
    dots.main(["--repeats", "1", "--scale", "0.01"])
    assert seen[-len(dots.SHAPES)] == (3, 20, 12, True, 1)
    assert seen[-1] == (320, 3, 8, False, 1)


def test_layer_floor_chain_and_its_report(monkeypatch, capsys):
    import jax.numpy as jnp

    from benchmarks import layer

    # A recurrent kernel whose first H columns are the identity: h_t = 0.5^t.
    rk = jnp.concatenate([jnp.eye(3), jnp.zeros((3, 9))], axis=1)
    hs = layer._chained_matmul(rk, batch=2, steps=4)
    assert hs.shape == (2, 4, 3)
    np.testing.assert_allclose(np.asarray(hs[1, :, 2]), [0.5, 0.25, 0.125, 0.0625])
    clock = _Clock()
    monkeypatch.setattr(layer, "time", _fake_time(clock))
    # (wall, cpu) seconds of each call: the first (compiling), then wall 1, 5, 2 ms and cpu 4, 4, 10 ms.
    spent = iter([(0.0, 0.0), (0.001, 0.004), (0.005, 0.004), (0.002, 0.010)])
    real = jax.block_until_ready

    def block(x):
        clock.advance(*next(spent))
        return real(x)

    monkeypatch.setattr(layer.jax, "block_until_ready", block)
    argv = ["--batch", "2", "--time", "3", "--hidden", "4", "--layers", "1", "--impls", "floor"]
    layer.main([*argv, "--reps", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("floor: first call ")
    # wall: median 2, 10th percentile 1.2; cpu: median 4, 10th percentile 4.
    assert (
        lines[1].split()[1:] == "wall median 2.00 ms p10 1.20 cpu median 4.00 ms p10 4.00".split()
    )


def test_weight_stream_bandwidth_and_per_step_times(monkeypatch, capsys):
    from benchmarks import weight_stream

    monkeypatch.setattr(weight_stream, "median_ms", lambda fn, repeats: 10.0)
    # 10 ms per call of 5 steps: 2 ms per step, per character.
    assert weight_stream.per_step_seconds(1, 4, steps=5) == pytest.approx(0.002)
    monkeypatch.setattr(weight_stream, "per_step_seconds", lambda m, hidden, steps: 2e-5 * m)
    weight_stream.main(["--hidden", "500", "--max-matrices", "2", "--no-kernel"])
    # One [500, 2000] fp32 matrix is 4 MB: 4 MB in 20 us is 200 GB/s.
    assert capsys.readouterr().out.splitlines() == [
        "1 x [500, 2000] (4.0 MB):    20.0 us/step,  200.0 GB/s",
        "2 x [500, 2000] (8.0 MB):    40.0 us/step,  200.0 GB/s",
    ]


def test_weight_stream_kernel_time_per_character(monkeypatch):
    from benchmarks import weight_stream
    from lstm_jax import native

    if native.unavailable_reason() is not None:
        pytest.skip(native.unavailable_reason())
    monkeypatch.setattr(weight_stream, "median_ms", lambda fn, repeats: 10.0)
    assert weight_stream.kernel_per_char_seconds(4, 5, steps=5, threads=1) == pytest.approx(0.002)


def test_weight_stream_spread_labels_and_quartiles(monkeypatch, capsys):
    from benchmarks import weight_stream
    from lstm_jax import generate

    seen = []

    class Done:
        def block_until_ready(self):
            return self

    def fake_generate(model, prime, length, **kwargs):
        seen.append(os.environ.get("LSTM_JAX_NATIVE_SPREAD"))
        return Done()

    monkeypatch.setattr(generate, "generate_stateful", fake_generate)
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPREAD", "7")
    times = weight_stream.spread_ab(hidden=4, vocab=5, length=3, calls=2)
    assert list(times) == ["moved", "not moved"] and [len(v) for v in times.values()] == [2, 2]
    assert seen == ["7", None, "0", None, "0"]  # the warm-up call, then moved / not moved in turn
    assert os.environ["LSTM_JAX_NATIVE_SPREAD"] == "7"
    ms = {"moved": [0.002, 0.004, 0.003, 0.010], "not moved": [0.001] * 4}
    monkeypatch.setattr(weight_stream, "spread_ab", lambda *args: ms)
    weight_stream.main(["--spread", "--length", "200", "--calls", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "helper moved    : median   3.50 ms (57,143 chars/s), quartiles 2.75-5.50, 90th percentile"
        " 8.20 (4 calls)"
    )
    assert lines[1].startswith("helper not moved: median   1.00 ms (200,000 chars/s)")


def test_page_faults_counts_per_step_after_the_warm_up(monkeypatch, capsys):
    import types

    from benchmarks import page_faults
    from benchmarks.peers import lstm_jax_peer

    clock = _Clock()
    usage = types.SimpleNamespace(ru_utime=0.0, ru_stime=0.0, ru_minflt=0)

    class Bench:
        steps = 0

        def step(self):
            self.steps += 1
            warm = self.steps <= 2  # the warm-up steps compile: many faults, long
            clock.advance(1.0 if warm else 0.004)
            usage.ru_utime += 0.002
            usage.ru_stime += 0.001
            usage.ru_minflt += 10_000 if warm else 50

    def getrusage(who):
        return types.SimpleNamespace(**vars(usage))

    monkeypatch.setattr(lstm_jax_peer, "build", lambda shape: Bench())
    monkeypatch.setattr(page_faults, "time", _fake_time(clock))
    monkeypatch.setattr(
        page_faults, "resource", types.SimpleNamespace(RUSAGE_SELF=0, getrusage=getrusage)
    )
    page_faults.main(["--shapes", "tiny", "--steps", "4"])
    assert capsys.readouterr().out.splitlines()[1] == (
        "tiny: wall 4.0 ms/step, user 2.0 ms, sys 1.0 ms, minor faults 50 per step"
    )


def test_logits_chunk_times_each_chunk_size_per_step(monkeypatch, capsys):
    import types

    from benchmarks import logits_chunk

    clock = _Clock()
    usage = types.SimpleNamespace(ru_minflt=0, ru_stime=0.0)
    spent = iter([0.0, 0.001, 0.005, 0.002])  # per call: the compiling one, then 3 timed steps
    real = jax.block_until_ready

    def block(x):
        clock.advance(next(spent))
        usage.ru_minflt += 30
        usage.ru_stime += 0.003
        return real(x)

    chunks = []
    real_loss = logits_chunk.line_loss

    def line_loss(*args, logits_chunk, **kwargs):
        chunks.append(logits_chunk)
        return real_loss(*args, logits_chunk=logits_chunk, **kwargs)

    def getrusage(who):
        return types.SimpleNamespace(**vars(usage))

    monkeypatch.setattr(logits_chunk, "VOCAB", 11)
    monkeypatch.setattr(logits_chunk, "line_loss", line_loss)
    monkeypatch.setattr(logits_chunk, "time", _fake_time(clock))
    monkeypatch.setattr(
        logits_chunk, "resource", types.SimpleNamespace(RUSAGE_SELF=0, getrusage=getrusage)
    )
    monkeypatch.setattr(logits_chunk.jax, "block_until_ready", block)
    logits_chunk.main(["--lengths", "3", "--chunks", "2", "--steps", "3"])
    assert chunks == [2]  # traced once, with the chunk asked for
    assert capsys.readouterr().out.splitlines() == [
        "T=3 logits_chunk=2: 2.0 ms/step, minor faults 30, sys 3 ms per step"
    ]


def test_logits_chunk_refuses_lengths_and_chunks_it_cannot_run(monkeypatch, capsys):
    """A negative chunk ran the output layer whole (`line_loss` chunks only above 0) while the report named
    the chunk; a length or chunk that is not an integer ended in a ValueError traceback after the model was
    built."""
    from benchmarks import logits_chunk

    monkeypatch.setattr(logits_chunk, "VOCAB", 11)
    for argv, message in (
        (["--lengths", "3", "--chunks", "-5"], "argument --chunks: -5 must be at least 0"),
        (["--lengths", "3,0"], "argument --lengths: 0 must be at least 1"),
        (["--lengths", "a"], "argument --lengths: 'a' is not an integer"),
    ):
        with pytest.raises(SystemExit) as stop:
            logits_chunk.main([*argv, "--steps", "1"])
        assert stop.value.code == 2, argv
        assert message in capsys.readouterr().err, argv


def test_the_driver_rotates_the_order_discards_the_warm_up_and_summarizes(tmp_path, monkeypatch):
    """The A/B protocol on fake workers: each round starts with the next peer (so no framework always runs
    right after the same other one), round 0 is a warm-up left out of the numbers, each peer is asked for
    about `--round-seconds` of steps by its second (compiled) step's time, and the summary is the median and
    the inclusive quartiles of the kept steps' times, with the worker's closing reply (peak memory)."""
    calls: list[tuple[str, int]] = []
    # Per peer, the step times of rounds 0 (warm-up), 1, 2 and 3.
    rounds = {
        "lstm_jax": [[9.0], [0.010, 0.012], [0.014, 0.040], [0.016, 0.018]],
        "flax": [[9.0], [0.020], [0.020], [0.020]],
        "torch": [[9.0], [0.040], [0.040], [0.040]],
    }

    def replies(peer: str):
        def time_reply():
            done = sum(1 for p, _ in calls if p == peer)
            return {"times": rounds[peer][done - 1]}

        return time_reply

    fake_ask = _FakeWorker.ask

    def ask(self, cmd):
        calls.append((self.peer, cmd["steps"]))
        return fake_ask(self, cmd)

    def ready(second_step_s: float) -> dict:
        return {
            "status": "ready",
            "param_count": 3,
            "first_step_s": 5.0,
            "second_step_s": second_step_s,
        }

    missing = {"status": "missing", "reason": "keras not installed"}
    script = {
        "lstm_jax": {"ready": ready(0.25), "time": replies("lstm_jax")},
        "keras_jax": {"ready": missing},
        "flax": {"ready": ready(0.001), "time": replies("flax")},
        "torch": {"ready": ready(2.0), "time": replies("torch")},
    }
    monkeypatch.setattr(_FakeWorker, "ask", ask)
    argv = ["--shapes", "tiny", "--peers", "lstm_jax,keras_jax,flax,torch", "--rounds", "3"]
    argv += ["--round-seconds", "0.5"]
    report = _run_with_fake_workers(monkeypatch, tmp_path, script, argv)
    order = [p for p, _ in calls]
    first = ["lstm_jax", "flax", "torch"]
    assert order == first + first[1:] + first[:1] + first[2:] + first[:2] + first
    # 0.5 s per round: 2 steps of 0.25 s; at most 50 steps of 1 ms; at least 1 step of 2 s.
    assert set(calls) == {("lstm_jax", 2), ("flax", 50), ("torch", 1)}
    res = report["shapes"]["tiny"]
    ours = res["lstm_jax"]
    assert ours["times"] == [0.010, 0.012, 0.014, 0.040, 0.016, 0.018]  # round 0's 9 s left out
    # Sorted 10, 12, 14, 16, 18, 40 ms: median 15 (the mean would be 18.3), inclusive quartiles 12.5 and
    # 17.5 (exclusive ones: 11.5 and 23.5).
    assert ours["median_ms"] == pytest.approx(15.0)
    assert ours["p25_ms"] == pytest.approx(12.5) and ours["p75_ms"] == pytest.approx(17.5)
    assert ours["min_ms"] == pytest.approx(10.0) and ours["max_ms"] == pytest.approx(40.0)
    assert ours["n"] == 6 and ours["peak_rss_mb"] == 100.0
    # A peer that is not installed is kept, as missing, and never timed.
    assert res["keras_jax"] == missing and "keras_jax" not in order
    assert "| tiny | Keras 3 (JAX) | | missing: keras not installed |" in report["markdown"]
    # lstm_jax against the fastest peer (Flax's 20 ms), not the slowest or itself.
    assert "| tiny smoke | lstm_jax | 3 | 15.0 [12.5-17.5] | 267 | 1.33x |" in report["markdown"]
    assert "Per-step times: median [p25-p75] over 3 interleaved rounds;" in report["markdown"]
    assert report["versions"] == run.package_versions()


def test_shape_tables_of_the_markdown_are_full_rows(tmp_path):
    """Every row of the main table, a missing or failed peer's included, has the header's columns, and a
    measured row's GFLOP/s and % of the ceiling are its step's FLOPs over its median (C: 0.8405 GFLOP)."""
    row = {"param_count": 10, "median_ms": 10.0, "p25_ms": 9.0, "p75_ms": 11.0, "first_step_s": 1.0}
    report = _report(
        {
            "C": {
                "lstm_jax": {**row, "peak_rss_mb": 100.0},
                "lstm_jax_dp": {**row, "median_ms": 5.0, "peak_rss_mb": 80.0},
                "torch": {**row, "median_ms": 20.0, "first_step_s": 0.5, "peak_rss_mb": 90.0},
                "keras_jax": {"status": "missing", "reason": "keras not installed"},
                "flax": {"status": "failed", "reason": "RuntimeError: boom"},
            }
        }
    )
    lines = run.markdown(report).splitlines()
    start = lines.index(next(x for x in lines if x.startswith("| shape | framework |")))
    end = lines.index("", start)
    table = lines[start:end]
    assert len(table) == 2 + 5
    assert {x.count("|") for x in table} == {11}, table
    # 84.05 GFLOP/s is 21% of the 400 GFLOP/s ceiling (not of JAX's 300), first step 1.00 s, 100 MB;
    # against PyTorch's 20 ms, the fastest peer (lstm_jax_dp is lstm_jax, not a peer).
    assert table[2] == (
        "| C imdb | lstm_jax | 10 | 10.0 [9.0-11.0] | 10000 | 2.00x | 84 | 21% | 1.00 | 100 |"
    )
    assert table[3].startswith("| C imdb | lstm_jax, data-parallel") and "| 4.00x |" in table[3]
    assert table[4].endswith("| 1.00x | 42 | 11% | 0.50 | 90 |")
    # With no peer measured there is nothing to compare with.
    report["shapes"]["C"] = {"lstm_jax": {**row, "peak_rss_mb": 100.0}}
    assert "| 10000 | - | 84 | 21% |" in run.markdown(report)


def test_workers_run_without_the_callers_openblas_coretype(monkeypatch):
    """OPENBLAS_CORETYPE halves numpy's matmul here: the ceiling's child and every worker start without it
    (the end-to-end test's check of the ceiling's report holds only where the caller has it set)."""
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    for peer in (None, "lstm_jax", "torch"):
        assert "OPENBLAS_CORETYPE" not in run.child_env(peer)


def test_each_keras_peer_gets_its_backend():
    """Keras' backend is fixed at import, by the worker's environment: a wrong one times Keras on another
    framework under the table's "Keras 3 (JAX)" or "(TensorFlow)"."""
    assert run.child_env("keras_jax")["KERAS_BACKEND"] == "jax"
    assert run.child_env("keras_tf")["KERAS_BACKEND"] == "tensorflow"
    assert run.child_env("keras_tf_xla")["KERAS_BACKEND"] == "tensorflow"


class _FakeWorkerBench:
    """A peer's `Bench` whose steps advance a fake clock: the first by 3 s (compiling), the rest by 0.25 s."""

    param_count = 42

    def __init__(self, clock: list[float]):
        self.clock = clock
        self.steps = 0

    def step(self) -> None:
        self.clock[0] += 3.0 if self.steps == 0 else 0.25
        self.steps += 1

    def memory_bytes(self) -> int:
        return 1234


def _run_worker(
    monkeypatch,
    capsys,
    peer: str,
    commands: str,
    missing: str | None = None,
    import_error: str = "",
):
    """`worker.main(peer, "tiny")` on a fake peer module and clock (`available()` says `missing`; loading it
    raises ImportError(`import_error`) if given); its replies and the kwargs of `available` and `build`."""
    import io
    import types

    from benchmarks import worker

    clock = [0.0]
    calls: dict[str, list[dict]] = {"available": [], "build": []}

    def available(**kwargs):
        calls["available"].append(kwargs)
        return missing

    def build(shape, **kwargs):
        calls["build"].append(kwargs)
        return _FakeWorkerBench(clock)

    module = types.SimpleNamespace(available=available, build=build)
    real_load = worker.load

    def load(p):
        if import_error:
            raise ImportError(import_error)
        return module, real_load(p)[1]

    monkeypatch.setattr(worker, "load", load)
    monkeypatch.setattr(worker, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(sys, "stdin", io.StringIO(commands))
    assert worker.main(peer, "tiny") == 0
    replies = [
        json.loads(line[len(worker.PREFIX) :])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(worker.PREFIX)
    ]
    return replies, calls


def test_a_worker_times_each_step_and_reports_its_first_apart(monkeypatch, capsys):
    commands = '{"cmd": "time", "steps": 3}\n{"cmd": "quit"}\n'
    replies, calls = _run_worker(monkeypatch, capsys, "lstm_jax", commands)
    ready, timed, quit_reply = replies
    assert ready["status"] == "ready" and ready["param_count"] == 42
    assert ready["first_step_s"] == 3.0 and ready["second_step_s"] == 0.25
    assert timed == {
        "times": [0.25, 0.25, 0.25]
    }  # each step's own time, not the time since the first
    assert quit_reply["xla_bytes"] == 1234 and quit_reply["peak_rss_mb"] > 0
    assert calls == {"available": [{}], "build": [{}]}


def test_a_worker_reports_a_missing_framework_as_missing(monkeypatch, capsys):
    """Not installed (its module says so, or cannot be imported): "missing", not built, not a crash."""
    replies, calls = _run_worker(monkeypatch, capsys, "torch", "", missing="torch not installed")
    assert replies == [{"status": "missing", "reason": "torch not installed"}]
    assert calls["build"] == []
    replies, calls = _run_worker(monkeypatch, capsys, "torch", "", import_error="No module 'torch'")
    assert replies == [{"status": "missing", "reason": "No module 'torch'"}]


@pytest.mark.parametrize(
    "peer, kwargs",
    [
        ("lstm_jax_dp", {"data_parallel": True}),
        ("lstm_jax_cudnn", {"impl": "cudnn"}),
        ("lstm_jax_unroll8", {"unroll": 8}),
        ("flax", {}),
        ("keras_jax", {}),
        ("keras_tf", {"jit_compile": False}),
        ("keras_tf_xla", {"jit_compile": True}),
        ("torch", {"compile": False}),
        ("torch_compile", {"compile": True}),
    ],
)
def test_each_peer_name_builds_its_variant(peer, kwargs, monkeypatch, capsys):
    """The peer names the table labels ("torch.compile", "Keras 3 (TensorFlow, XLA)", ...) build what they
    say: a swapped flag times the wrong variant under the right name."""
    replies, calls = _run_worker(monkeypatch, capsys, peer, '{"cmd": "quit"}\n')
    assert replies[0]["status"] == "ready" and calls["build"] == [kwargs]
    # Whether it can run here is asked of the variant: impl="cudnn" needs an NVIDIA GPU.
    assert calls["available"] == [{"impl": "cudnn"} if peer == "lstm_jax_cudnn" else {}]


def test_bench_engine_skips_the_compiling_interval_and_takes_medians(monkeypatch, capsys):
    """bench_engine's numbers on fake measurements: the engine's ms per step is the median over its logged
    training intervals after the first (compilation), from examples/s; the bare loop's the median over its
    10-step chunks after the first, per step; the overhead is engine over bare."""
    import types

    from benchmarks import bench_engine

    def train_and_evaluate(config, workdir, task):
        rates = [1.0, 5000.0, 2000.0, 4000.0]  # 100-example batches: 100 (compiling), 20, 50, 25 ms
        lines = [{"kind": "train", "examples_per_s": r} for r in rates]
        lines.insert(2, {"kind": "eval", "examples_per_s": 1.0})
        Path(workdir, "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    monkeypatch.setattr(bench_engine, "train_and_evaluate", train_and_evaluate)
    assert bench_engine.engine_ms_per_step(20) == pytest.approx(25.0)  # 37.5 with the first
    # A tiny model (compiled in a second), and a clock whose 10-step chunks take 10, 20 and 60 ms: 1, 2
    # and 6 ms per step.
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, *, rngs: nnx.Rngs):
            self.out = nnx.Linear(1, 1, rngs=rngs)

        def __call__(self, tokens):
            return self.out(tokens[:, :1].astype(np.float32))[:, 0]

    monkeypatch.setattr(bench_engine, "Classifier", Tiny)
    monkeypatch.setattr(bench_engine, "BATCH", 2)
    ticks = iter([0.0, 0.010, 1.0, 1.020, 2.0, 2.060])
    monkeypatch.setattr(
        bench_engine, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks))
    )
    assert bench_engine.bare_ms_per_step(40) == pytest.approx(2.0)
    monkeypatch.setattr(bench_engine, "bare_ms_per_step", lambda steps: 2.0)
    monkeypatch.setattr(bench_engine, "engine_ms_per_step", lambda steps: 2.5)
    bench_engine.main([])
    got = json.loads(capsys.readouterr().out)
    assert got["bare_ms_per_step"] == 2.0 and got["engine_ms_per_step"] == 2.5
    assert got["overhead_pct"] == 25.0


def test_the_four_shapes_are_the_tutorials_models():
    """The compared models, as the tutorials define them (issue 6): a changed size would time another
    model under the tutorial's name. Fields: batch, time, vocab, embed, LSTM sizes, dense head, classes,
    optimizer."""
    got = {n: (s.title, s.batch, s.time, s.vocab, s.embed, s.lstm, s.dense, s.classes, s.optimizer)
           for n, s in SHAPES.items()}  # fmt: skip
    assert got == {
        "A": ("char", 40, 50, 0, 0, (300, 300), (), 60, "adam"),
        "B": ("word", 128, 30, 5000, 64, (128, 64), ((64, "relu"),), 5000, "adam"),
        "C": ("imdb", 100, 228, 15000, 16, (32,), (), 1, "rmsprop"),
        "D": ("fake_news", 64, 500, 10000, 300, (199,), ((399, "relu"), (43, "relu")), 1, "adam"),
    }


def test_summaries_of_one_and_two_steps():
    assert run.summarize([0.003, 0.001]) == {
        "median_ms": pytest.approx(2.0),
        "p25_ms": pytest.approx(1.5),
        "p75_ms": pytest.approx(2.5),
        "min_ms": pytest.approx(1.0),
        "max_ms": pytest.approx(3.0),
        "n": 2,
    }
    one = run.summarize([0.004])
    assert [one[k] for k in ("median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms")] == [4.0] * 5


def test_the_report_names_the_installed_versions(monkeypatch):
    import importlib.metadata

    def version(name):
        if name in ("torch", "tensorflow"):
            raise importlib.metadata.PackageNotFoundError(name)
        return f"{len(name)}.0"

    monkeypatch.setattr(run.importlib.metadata, "version", version)
    versions = run.package_versions()
    assert versions["torch"] == versions["tensorflow"] == "missing" and versions["jax"] == "3.0"
    assert list(versions) == list(run.VERSIONED_PACKAGES)
    report = _report({}, versions=versions)
    first = run.markdown(report).splitlines()[0]
    assert first.endswith(
        " Versions: jax 3.0, jaxlib 6.0, flax 4.0, optax 5.0, numpy 5.0, keras 5.0, tensorflow-cpu 14.0."
    )


def test_a_worker_sums_jaxs_compile_phases_for_jax_peers_only(monkeypatch):
    """The first step's split into tracing, lowering and XLA compilation (why lstm_jax's first GPU steps
    took 8.9-32 s against Flax's 0.9-4.7 was not measured): the events JAX emits are summed under their
    keys, only from the moment of the call, and only for a peer whose step JAX compiles."""
    import jax.numpy as jnp

    from benchmarks import worker

    registered = []  # to take the listener out of this test process afterwards
    register = jax.monitoring.register_event_duration_secs_listener

    def register_and_keep(listener):
        registered.append(listener)
        register(listener)

    monkeypatch.setattr(jax.monitoring, "register_event_duration_secs_listener", register_and_keep)
    assert worker._watch_jax_compiles("torch") is None
    assert worker._watch_jax_compiles("keras_tf_xla") is None
    assert registered == []
    before = jax.jit(lambda x: x * 3.0 + 1.0)
    before(jnp.ones(5)).block_until_ready()
    sums = worker._watch_jax_compiles("flax")
    try:
        assert sums == {"trace_s": 0.0, "lower_s": 0.0, "xla_compile_s": 0.0}
        before(jnp.ones(5)).block_until_ready()  # compiled before the watch: nothing counted
        assert sums == {"trace_s": 0.0, "lower_s": 0.0, "xla_compile_s": 0.0}
        salt = float(np.random.default_rng().integers(1, 1 << 30))  # no cache holds this program
        jax.jit(lambda x: jnp.tanh(x @ x.T) * salt)(jnp.ones((7, 3))).block_until_ready()
        assert sums["trace_s"] > 0 and sums["lower_s"] > 0 and sums["xla_compile_s"] > 0
    finally:
        for listener in registered:
            jax.monitoring.unregister_event_duration_listener(listener)


def test_the_first_step_table_splits_each_jax_peers_first_step():
    report = {
        "shapes": {
            "C": {
                "lstm_jax": {
                    "first_step_s": 3.0,
                    "first_step_compile": {"trace_s": 0.25, "lower_s": 0.5, "xla_compile_s": 2.0},
                },
                "torch": {"first_step_s": 0.3},
                "flax": {"status": "failed", "reason": "x"},
            }
        }
    }
    lines = run._first_step_lines(report)
    assert lines[-1] == "| C | lstm_jax | 3.00 | 0.25 | 0.50 | 2.00 | 0.25 |"
    assert len([line for line in lines if line.startswith("| C ")]) == 1  # torch and flax: no row
    assert run._first_step_lines({"shapes": {"C": {"torch": {"first_step_s": 0.3}}}}) == []


def test_the_unrolled_peer_unrolls_every_layer_and_trains_as_the_plain_one():
    """`lstm_jax_unroll8` (the GPU session's loop probe) times the same model and update, its scans
    unrolled 8 steps a loop iteration: every layer gets unroll=8, and one step from the same
    initialisation gives the plain peer's loss and parameters."""
    from benchmarks.peers import lstm_jax_peer

    plain = lstm_jax_peer.build(TINY, impl="scan")
    unrolled = lstm_jax_peer.build(TINY, impl="scan", unroll=8)
    model = lstm_jax_peer.merge(unrolled.graphdef, unrolled.template, unrolled.params)
    assert [layer.unroll for layer in model.lstm.layers] == [8] * len(TINY.lstm)
    for bench in (plain, unrolled):
        bench.step()
        bench.step()
    np.testing.assert_allclose(float(unrolled.loss), float(plain.loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(unrolled.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
