#!/usr/bin/env bash
# Everything the GPU figures need, in at most 6 minutes on one H100/H200 (see
# benchmarks/device_check.py for the parts and their budgets):
#
#   bash benchmarks/device_check.sh [--tiny] [--wheels DIR] OUT
#
#   --wheels DIR  first installs the wheels benchmarks/device_wheels.sh put in DIR
#                 (pip install --no-index --find-links DIR -r DIR/requirements.txt)
#   --tiny        the same code at tiny shapes on the CPU (the test suite runs it)
#
# Two processes, one per framework (JAX, then PyTorch), each under a hard time limit, then
# OUT/summary.md and OUT/check.json. Each part's figures or error are in OUT/jax.json and
# OUT/torch.json; a part that fails or runs out of time does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=""
WHEELS=""
while [ $# -gt 1 ]; do
  case "$1" in
    --tiny) TINY="--tiny"; shift ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    *) echo "device_check.sh: unknown flag $1; usage: device_check.sh [--tiny] [--wheels DIR] OUT" >&2
       exit 2 ;;
  esac
done
if [ $# -ne 1 ] || [ "${1#--}" != "$1" ]; then
  echo "usage: bash benchmarks/device_check.sh [--tiny] [--wheels DIR] OUT" >&2
  exit 2
fi
OUT="$1"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
START=$(date +%s)
# Compiled steps persist, so a rerun on the same machine skips most compilation (the JSON
# counts persistent-cache hits beside backend compiles).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${HOME:-/tmp}/.cache/auxskd_device_check_xla}"
if [ -n "$WHEELS" ]; then
  if [ ! -f "$WHEELS/requirements.txt" ]; then
    echo "device_check.sh: --wheels $WHEELS has no requirements.txt; run benchmarks/device_wheels.sh $WHEELS first." >&2
    exit 2
  fi
  "$PY" -m pip install --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt" \
    > "$OUT/pip_install.txt" 2>&1 || echo "device_check.sh: wheel install failed, see $OUT/pip_install.txt" >&2
fi
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
if [ -n "$TINY" ]; then
  # CPU: no TensorFlow either (as on the GPU host). Limits far above a tiny run's needs (~2
  # min for both processes on a loaded 2-core CPU with the test's warm compilation cache; a
  # cold cache on a machine shared 5 ways has taken over 4 min for the JAX process alone).
  JAX_LIMIT=900; TORCH_LIMIT=300; EXTRA="--block_tensorflow"
else
  # 230 s of JAX parts + 95 s of PyTorch + installs, start-up and summary: under 6 minutes.
  JAX_LIMIT=240; TORCH_LIMIT=105; EXTRA=""
fi
timeout -k 10 "$JAX_LIMIT" "$PY" benchmarks/device_check.py jax "$OUT" $TINY $EXTRA \
  --budget=$((JAX_LIMIT - 10)) 2>&1 | tee "$OUT/jax.log"
echo "${PIPESTATUS[0]}" > "$OUT/rc_jax.txt"
timeout -k 10 "$TORCH_LIMIT" "$PY" benchmarks/device_check.py torch "$OUT" $TINY $EXTRA \
  --budget=$((TORCH_LIMIT - 5)) 2>&1 | tee "$OUT/torch.log"
echo "${PIPESTATUS[0]}" > "$OUT/rc_torch.txt"
"$PY" benchmarks/device_check.py summary "$OUT"
echo "device_check.sh: $(( $(date +%s) - START )) s in all; results in $OUT"
