#!/usr/bin/env bash
# Issue #6's GPU check in one command, for a session that is lent a GPU machine (its image has JAX with
# CUDA, Flax, Optax, Orbax and PyTorch, but not ml_collections). Prepare here, then make one device call:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl ml_collections==1.1.0
#   device run: command "bash benchmarks/gpu_session.sh", carry [".whl"], timeout_s 540
#
# Writes to $OUT (or /tmp/gpu_out): env.txt, gpu_check.{log,json} (impl="cudnn" against impl="scan":
# parity at full fp32 precision, then forward + backward timings), bench.log and bench_{C,B,A,D}.json (the
# training steps of each shape: lstm_jax with "scan" (what "auto" picks on GPUs) and "cudnn", Flax,
# PyTorch eager and torch.compile on CUDA; the "% ceiling" column there is against the host CPU's
# ceiling, not the GPU's).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout 180 python3 -m benchmarks.gpu_check --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
check=${PIPESTATUS[0]}
bench=0
for shape in C B A D; do  # one run per shape, so that a timeout keeps the shapes already measured
  timeout 80 python3 -m benchmarks.run --shapes "$shape" \
    --peers lstm_jax,lstm_jax_cudnn,flax,torch,torch_compile --no-generate --rounds 3 \
    --out "$OUT/bench_$shape.json" 2>&1 | tee -a "$OUT/bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || bench=1
done
echo "gpu_check exit $check, benchmark exit $bench"
exit $(( check != 0 || bench != 0 ))
