#!/usr/bin/env bash
# The accelerator check (benchmarks/gpu_check.py): one GPU, under 8 minutes.
#
#   bash launch/gpu_check.sh [WHEEL_DIR] [-- gpu_check flags]
#
# Uses the CUDA build of jax if python3 already has one; otherwise installs jax[cuda13] at the
# project's pinned version. WHEEL_DIR (optional): wheels of the project's other pins, installed
# offline, for machines without a package index (they go first on PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${1:-}
[[ "${WHEELS}" == "--" ]] && WHEELS=""
[[ $# -gt 0 ]] && shift
[[ "${1:-}" == "--" ]] && shift
JAX_PIN=$(sed -n 's/^JAX_VERSION = "\(.*\)"/\1/p' setup.py)

if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  echo "+ $PY -m pip install jax[cuda13]==${JAX_PIN}"
  "$PY" -m pip install -q "jax[cuda13]==${JAX_PIN}"
fi
if [[ -n "${WHEELS}" ]]; then
  echo "+ $PY -m pip install --no-index --no-deps --target /tmp/cinema_site ${WHEELS}/*.whl"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cinema_site "${WHEELS}"/*.whl
  export PYTHONPATH=/tmp/cinema_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
"$PY" -c "import jax, flax, optax, orbax.checkpoint, grain; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'grain', grain.__version__, jax.devices())"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
echo "+ $PY -m benchmarks.gpu_check $*"
exec "$PY" -m benchmarks.gpu_check "$@"
