#!/usr/bin/env bash
# One-command setup and run on a machine with Python >= 3.11 and access to the package index.
#
#   bash launch/quickstart.sh demo   # the main job on the embedded default (toy-movie world)
#   bash launch/quickstart.sh test   # the whole test suite
#
# Creates .venv beside the checkout on first use (PYTHON=... picks the interpreter, VENV=... the
# folder) and reinstalls only when setup.py changes.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: cinema_jax needs Python >= 3.11, this is " + sys.version.split()[0])'

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha1(open("setup.py","rb").read()).hexdigest()[:12])')"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

case "${1:-}" in
  demo)
    shift
    exec "$VENV/bin/python" -m data_pipelines.preview --config=configs/keyframe.py --workdir=runs/demo "$@"
    ;;
  test)
    shift
    exec "$VENV/bin/python" -m pytest -n 2 "$@" tests
    ;;
  *)
    echo "usage: bash launch/quickstart.sh demo|test [extra args]" >&2
    exit 2
    ;;
esac
