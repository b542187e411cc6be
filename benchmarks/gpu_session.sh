#!/usr/bin/env bash
# Issue #6's GPU check in one command, for a session that is lent a GPU machine (its image has JAX with
# CUDA, Flax, Optax, Orbax and PyTorch, but not ml_collections or Keras). Prepare here, then make one call:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl ml_collections==1.1.0 keras==3.15.1 namex==0.1.0 optree==0.20.0
#   device run: command "bash benchmarks/gpu_session.sh", carry [".whl"], timeout_s 560
#
# On the H200 of 2026-12-04 the four shapes did not fit one 10-minute call: the first call (all shapes)
# measured C, B and A and was cut off in D; a second, "GPU_SESSION_SHAPES=D GPU_CHECK_TIMEOUT=100
# BENCH_TIMEOUT=170 bash benchmarks/gpu_session.sh" (timeout_s 300), measured D. Results:
# benchmarks/results/2026-12-04-gpu-h200-*.json.
#
# Writes to $OUT (or /tmp/gpu_out): env.txt; gpu_check.{log,json} (impl="cudnn" against impl="scan":
# parity at full fp32 precision, then forward + backward timings); bench.{log,json} (the training steps
# of the shapes: lstm_jax with "scan" (what "auto" picks on GPUs) and "cudnn", Flax, Keras on JAX,
# PyTorch eager and torch.compile on CUDA; the ceiling there is the GPU's fp32 matmul at "highest"
# precision). Both JSON files are rewritten after each shape, so a timeout keeps what was measured.
# GPU_SESSION_SHAPES, GPU_CHECK_TIMEOUT and BENCH_TIMEOUT override the shapes and the two time limits
# (a dry run off a GPU: GPU_SESSION_SHAPES=C; gpu_check then exits 2 at once).
# MALLOC_PROBE=1 adds malloc_probe.{log,json}: shape B's lstm_jax and Flax workers with lstm_jax's glibc
# malloc setting forced on both (--malloc all), whose first steps, against the main run's (where
# `import lstm_jax` leaves malloc alone on a GPU), say whether that setting slowed XLA:GPU's compilation
# (on 2026-12-04 lstm_jax's first steps took 8.9-32.3 s tuned, Flax's 0.9-4.7 s untuned).
# bench.json's workers now split each JAX peer's first step into tracing, lowering, XLA compilation
# (autotuning included) and the rest ("first_step_compile"; the markdown's "First step" table).
# AUTOTUNE_PROBE=1 adds autotune_probe.{log,json}: shape B's lstm_jax and Flax workers compiled with
# XLA_FLAGS=--xla_gpu_autotune_level=0 (no autotuning), whose first steps and step times, against the
# main run's, say what XLA:GPU's autotuning costs at the first step and buys afterwards.
# LOOP_PROBE=1 adds loop_probe.{log,json} and loop_probe_cmdbuf.{log,json}: shape C (228 timesteps of a
# 32-unit LSTM, where on 2026-12-04 every JAX implementation took 6.8-9.2 ms a step against PyTorch cuDNN's
# 2.4) with lstm_jax, lstm_jax_unroll8 (every scan unrolled 8 timesteps a loop iteration), Flax and PyTorch,
# first as XLA compiles it by default, then with the scans' while loops captured as CUDA graphs
# (--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL): whether C's gap is per-timestep launch overhead.
# A short session can give the probes the call: GPU_SESSION_SHAPES=C LOOP_PROBE=1 AUTOTUNE_PROBE=1.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
SHAPES=${GPU_SESSION_SHAPES:-C,B,A,D}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nproc
  KERAS_BACKEND=jax python3 -c "import jax, flax, optax, torch, keras; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.is_available(), 'cudnn', torch.backends.cudnn.version(), 'keras', keras.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout "${GPU_CHECK_TIMEOUT:-170}" python3 -m benchmarks.gpu_check --shapes "$SHAPES" --rounds 3 \
  --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
check=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT:-320}" python3 -m benchmarks.run --shapes "$SHAPES" \
  --peers lstm_jax,lstm_jax_cudnn,flax,keras_jax,torch,torch_compile --no-generate --rounds 3 \
  --round-seconds 0.5 --timeout 120 --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
if [ "${MALLOC_PROBE:-0}" = 1 ]; then
  timeout "${MALLOC_PROBE_TIMEOUT:-150}" python3 -m benchmarks.run --shapes B --peers lstm_jax,flax \
    --no-generate --rounds 1 --round-seconds 0.5 --timeout 120 --malloc all \
    --out "$OUT/malloc_probe.json" 2>&1 | tee "$OUT/malloc_probe.log"
fi
if [ "${AUTOTUNE_PROBE:-0}" = 1 ]; then
  XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_autotune_level=0" \
    timeout "${AUTOTUNE_PROBE_TIMEOUT:-150}" python3 -m benchmarks.run --shapes B --peers lstm_jax,flax \
    --no-generate --rounds 1 --round-seconds 0.5 --timeout 120 \
    --out "$OUT/autotune_probe.json" 2>&1 | tee "$OUT/autotune_probe.log"
fi
if [ "${LOOP_PROBE:-0}" = 1 ]; then
  for variant in "" _cmdbuf; do
    flags=${XLA_FLAGS:-}
    if [ -n "$variant" ]; then
      flags="${flags:+$flags }--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"
    fi
    XLA_FLAGS=$flags timeout "${LOOP_PROBE_TIMEOUT:-150}" python3 -m benchmarks.run --shapes C \
      --peers lstm_jax,lstm_jax_unroll8,flax,torch --no-generate --rounds 3 --round-seconds 0.5 \
      --timeout 120 --out "$OUT/loop_probe$variant.json" 2>&1 | tee "$OUT/loop_probe$variant.log"
  done
fi
echo "gpu_check exit $check, benchmark exit $bench"
exit $(( check != 0 || bench != 0 ))
