#!/usr/bin/env bash
# One-command setup and run on a machine with Python >= 3.11 and access to the package index.
#
#   bash launch/quickstart.sh demo   # build the toy-movie world, train its autoencoder, the demo keyframe and video models,
#                                    # sample movies (keyframes, shot videos, MP4s, an HTML page each)
#   bash launch/quickstart.sh test   # the linter (ruff.toml), then the whole test suite (installs the PyTorch
#                                    # references and curation too)
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
install() {  # $1: the extras; reinstalls only when setup.py or the extras change
  local stamp="$VENV/.installed-$1-$("$PYTHON" -c 'import hashlib; print(hashlib.sha1(open("setup.py","rb").read()).hexdigest()[:12])')"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[$1]"
    touch "$stamp"
  fi
}

case "${1:-}" in
  demo)
    shift
    install dev
    workdir=${WORKDIR:-runs/demo}
    video_workdir=${VIDEO_WORKDIR:-runs/demo_video}
    ae_workdir=${AE_WORKDIR:-runs/toy_autoencoder}
    # the toy autoencoder first (it ends by writing $ae_workdir/vae); each training below pre-computes its
    # toy world's latents with it on first use
    "$VENV/bin/python" -m cinema_jax.train --config=configs/autoencoder.py:toy --workdir="$ae_workdir"
    # extra args (e.g. --config.total_steps=300) go to both trainings
    "$VENV/bin/python" -m cinema_jax.train --config=configs/keyframe.py:demo --workdir="$workdir" \
        --config.data.toy.autoencoder="$ae_workdir/vae" "$@"
    "$VENV/bin/python" -m cinema_jax.train --config=configs/video.py:demo --workdir="$video_workdir" \
        --config.data.toy.autoencoder="$ae_workdir/vae" "$@"
    "$VENV/bin/python" -m cinema_jax.sample --workdir="$workdir" --video_workdir="$video_workdir" --storylines=toy \
        --outdir="$workdir/movies"
    echo "movies of the held-out toy storylines: $workdir/movies/*/movie.html (storyboard, captions, playable shots),"
    echo "  movie.mp4, shot_*.mp4, storyboard.png, filmstrip.png"
    echo "training curves (TensorBoard event files): $workdir/tensorboard, $video_workdir/tensorboard"
    ;;
  test)
    shift
    install dev,torch,curate
    "$VENV/bin/ruff" check --quiet . || { echo "error: ruff found the problems above (ruff.toml)" >&2; exit 1; }
    # loadgroup: tests marked xdist_group("x") share one worker (and its expensive module fixture)
    exec "$VENV/bin/python" -m pytest -n 2 --dist loadgroup "$@" tests
    ;;
  *)
    echo "usage: bash launch/quickstart.sh demo|test [extra args]" >&2
    exit 2
    ;;
esac
