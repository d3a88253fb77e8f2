#!/usr/bin/env bash
# Downloads the wheels the GPU host lacks for benchmarks/device_check.sh into DIR (it has
# Python 3.12, jax, flax, optax, orbax, einops, chex, absl-py, tensorboard, numpy, pillow,
# opencv and torch, and no TensorFlow), checks they fit 64 MiB, and writes DIR/requirements.txt.
#
#   bash benchmarks/device_wheels.sh DIR        # on any machine that reaches PyPI
#   bash benchmarks/device_check.sh --wheels DIR OUT   # on the GPU host: installs them with
#        pip install --no-index --find-links DIR -r DIR/requirements.txt
#
# PACKAGES: what the device check's imports need beyond the host's packages and their
# dependencies (tests/test_benchmarks_smoke.py derives that set from the imports and checks it
# equals this list). PyAV is not among them: nothing on the check's path decodes video files.
# FALLBACKS: small dependencies the host should already have at a recent enough version; in
# DIR so `pip --no-index` can resolve if it has not (pip keeps an installed one that fits).
set -euo pipefail
PACKAGES=(
  ml-collections
  dm-pix
  grain
  array-record
  cloudpickle
  portpicker
  simplejpeg
)
FALLBACKS=(
  protobuf
  etils
  psutil
  absl-py
  PyYAML
)
LIMIT_MIB=64
if [ $# -ne 1 ]; then
  echo "usage: bash benchmarks/device_wheels.sh DIR" >&2
  exit 2
fi
DIR="$1"
mkdir -p "$DIR"
PY="${PYTHON:-python}"
# --no-deps: the host has the rest (jax alone would be far over the limit); cp312 manylinux
# binaries only, whatever this machine's Python is.
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  -d "$DIR" "${PACKAGES[@]}" "${FALLBACKS[@]}"
printf '%s\n' "${PACKAGES[@]}" > "$DIR/requirements.txt"
BYTES=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
MIB=$(( (BYTES + 1048575) / 1048576 ))
ls -l "$DIR"/*.whl
echo "device_wheels.sh: $(ls "$DIR"/*.whl | wc -l) wheels, $BYTES bytes (~$MIB MiB) in $DIR"
if [ "$BYTES" -gt $(( LIMIT_MIB * 1048576 )) ]; then
  echo "device_wheels.sh: over the $LIMIT_MIB MiB limit" >&2
  exit 1
fi
echo "On the GPU host: bash benchmarks/device_check.sh --wheels $DIR OUT"
echo "  (it runs: python -m pip install --no-index --find-links $DIR -r $DIR/requirements.txt)"
