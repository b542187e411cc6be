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


def test_markdown_reports_missing_and_failed_peers(tmp_path, capsys):
    report = {
        "machine": "m",
        "ceiling": {"ceiling_gflops": 400.0, "numpy_gflops": 400.0, "jax_gflops": 300.0, "n": 2048},
        "args": {"rounds": 3},
        "shapes": {
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
        },
    }
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
    report = {
        "machine": "m",
        "ceiling": {"ceiling_gflops": 400.0, "numpy_gflops": 400.0, "jax_gflops": 300.0, "n": 2048},
        "args": {"rounds": 3, "malloc": "all"},
        "shapes": {},
    }
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
    }
    argv = ["--shapes", "A", "--peers", "lstm_jax,keras_jax", "--rounds", "1"]
    res = _run_with_fake_workers(monkeypatch, tmp_path, script, argv)["shapes"]["A"]
    assert res["lstm_jax"]["median_ms"] == 10.0 and res["keras_jax"]["median_ms"] == 20.0
    assert "generation" not in res["lstm_jax"] and res["keras_jax"]["generation"] == gen
    printed = capsys.readouterr().out
    assert "A lstm_jax generation: failed: worker exited: MemoryError: simulated" in printed
    assert "| lstm_jax | failed: worker exited: MemoryError: simulated | | | |" in printed
    assert "| Keras 3 (JAX) | tutorial_1 | 1 | 30 | 1.00 |" in printed


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
    report = {
        "machine": "m",
        "ceiling": {"ceiling_gflops": 400.0, "numpy_gflops": 400.0, "jax_gflops": 300.0, "n": 2048},
        "args": {"rounds": 3},
        "shapes": {"C": {"lstm_jax": row}},
    }
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


def test_ab_rule_refuses_a_value_its_rule_cannot_take(capsys):
    """An integer or on/off rule took `type(shipped)(value)`: CPU_PER_STEP_MAX_HIDDEN=64.5 ran as 64 and
    NATIVE_SCATTER_ROWS=0.5 as True (the shipped build twice), while the report named 64.5 and 0.5."""
    from benchmarks import ab_rule

    for setting, message in (
        ("CPU_PER_STEP_MAX_HIDDEN=64.5", "'64.5' is not an integer"),
        ("NATIVE_SCATTER_ROWS=0.5", "'0.5' is not 0 or 1"),
        ("NATIVE_BIAS_GRAD_IN_KERNEL=2", "'2' is not 0 or 1"),
    ):
        argv = ["--shape", "tiny", "--rounds", "1", "--steps", "1", "--set", setting]
        with pytest.raises(SystemExit) as stop:
            ab_rule.main(argv)
        assert stop.value.code == 2, setting
        assert message in capsys.readouterr().err
