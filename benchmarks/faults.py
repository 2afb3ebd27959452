"""Crash-safety under random SIGKILLs: the randomized version of tests/test_faults.py.

  python -m benchmarks.faults [--trials=20] [--steps=12] [--seed=0] [--workdir=DIR]

Trains the tiny keyframe config once without interruption, then, per trial, starts the same run,
SIGKILLs it at a random moment (after a random committed step plus a random delay: inside a step,
inside an async checkpoint save, or between them), checks that every checkpoint Orbax lists as
committed restores, restarts the run to the end, and compares its final state with the
uninterrupted run's, bit for bit. Checkpoints are saved every step, asynchronously, keeping 2.
Prints a Markdown row for BENCHMARKS.md: trials, faults injected, resumes exact, checkpoints lost.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from cinema_jax import cli
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_TRIALS = flags.DEFINE_integer("trials", 20, "Random kills.")
_STEPS = flags.DEFINE_integer("steps", 12, "Steps per run.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill times.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch folder (default: a temporary one).")


def main(_):
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="faults-")
  cache = os.path.join(root, "jax_cache")
  start = time.perf_counter()
  whole = helpers.run(os.path.join(root, "whole"), _STEPS.value, cache)
  if whole.returncode:
    sys.exit(f"error: the uninterrupted run failed: {whole.stderr[-3000:]}")
  reference = helpers.state_at(os.path.join(root, "whole"))
  rng = np.random.default_rng(_SEED.value)
  rows = []
  for i in range(_TRIALS.value):
    r = helpers.kill_trial(os.path.join(root, "trial"), _STEPS.value, cache, reference, rng)
    rows.append(r)
    print(f"trial {i}: killed {r['delay_s']} s after step {r['killed_after_step']} committed; committed "
          f"{r['committed']}; resumed from {r['resumed_from']}; exact {r['exact']}; lost {r['lost']}", flush=True)
  print(f"\n{len(rows)} trials of {_STEPS.value} steps in {time.perf_counter() - start:.0f} s\n")
  print("| trials | faults injected | resumes exact | checkpoints lost |")
  print("|---|---|---|---|")
  print(f"| {len(rows)} | {len(rows)} SIGKILLs | {sum(bool(r['exact']) for r in rows)} "
        f"| {sum(r['lost'] for r in rows)} |")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
