"""Helpers shared by several test files and by benchmarks/faults.py (its randomized version of
tests/test_faults.py): a mesh of given axes, n train steps on one batch, and the crash harness (a tiny
run that checkpoints every step, started, SIGKILLed, checked and resumed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import sharding
from cinema_jax.training import loop
from cinema_jax.training import prepare
from cinema_jax.training import train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(c: ml_collections.ConfigDict, workdir: str, **kw) -> dict:
  """What `python -m cinema_jax.train` does in this process: load (validate), prepare the inputs, train."""
  c = config_validation.load(c)
  prepare.training_inputs(c, workdir, log=lambda msg: None)
  return loop.train_and_evaluate(c, workdir, **kw)


def mesh(data, fsdp, context, tensor, devices):
  return sharding.make_mesh(config_validation.Mesh(data=data, fsdp=fsdp, context=context, tensor=tensor),
                            devices)


def run_steps(c, mesh, batch_np, n, hlo=None):
  """(state, losses) after n steps on batch_np; hlo: a list that gets the step's HLO text."""
  setup = train_step.make_setup(c, mesh)
  with jax.set_mesh(mesh):
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch_np.items()}
    step = train_step.jit_train_step(c, setup, mesh, batch)
    if hlo is not None:
      hlo.append(step.lower(setup.abstract_state, batch).as_text(dialect="hlo"))
    state, losses = setup.init(), []
    for _ in range(n):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
  return state, losses


def train_cmd(workdir: str, steps: int, extra=()) -> list[str]:
  """The tiny run every trial repeats: checkpoints every step, async, 2 kept, no sample sheets."""
  return [sys.executable, "-m", "cinema_jax.train", "--config=configs/keyframe.py:tiny", f"--workdir={workdir}",
          f"--config.total_steps={steps}", "--config.checkpoint.every_steps=1", "--config.checkpoint.async_save=True",
          "--config.checkpoint.keep=2", "--config.log.sample_every_steps=0", "--config.log.every_steps=1", *extra]


def train_env(cache_dir: str) -> dict[str, str]:
  """One CPU device per process, and a shared compilation cache (the runs compile the same step)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _step_dirs(workdir: str) -> list[int]:
  """Committed step folders (Orbax renames a step's temporary folder to its number when complete)."""
  path = os.path.join(workdir, "checkpoints")
  return [int(n) for n in os.listdir(path) if n.isdigit()] if os.path.isdir(path) else []


def committed_steps(workdir: str) -> list[int]:
  mngr = checkpoints.manager(workdir, read_only=True)
  try:
    return sorted(mngr.all_steps())
  finally:
    mngr.close()


def state_at(workdir: str, step: int | None = None) -> list[np.ndarray]:
  """The leaves of the saved state at `step` (default: the latest), restored on one device."""
  c = checkpoints.saved_config(workdir)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  setup = train_step.make_setup(c, mesh)
  mngr = checkpoints.manager(workdir, read_only=True)
  try:
    step = mngr.latest_step() if step is None else step
    with jax.set_mesh(mesh):
      return [np.asarray(x) for x in jax.tree.leaves(checkpoints.restore(mngr, step, setup.abstract_state))]
  finally:
    mngr.close()


def run(workdir: str, steps: int, cache_dir: str, extra=()) -> subprocess.CompletedProcess:
  return subprocess.run(train_cmd(workdir, steps, extra), cwd=REPO, env=train_env(cache_dir), capture_output=True,
                        text=True, check=False, timeout=900)


def kill_trial(workdir: str, steps: int, cache_dir: str, reference: list[np.ndarray], rng: np.random.Generator,
               resume: bool = True) -> dict:
  """SIGKILL one run at a random moment, check its checkpoints, resume it; what happened."""
  shutil.rmtree(workdir, ignore_errors=True)
  after = int(rng.integers(1, steps - 2))  # kill after this step's checkpoint is committed ...
  delay = float(rng.uniform(0.0, 0.6))  # ... plus this long (a step and a save take ~0.1-0.5 s here)
  os.makedirs(workdir)
  log = open(os.path.join(workdir, "killed_run.log"), "w")  # a file, not a pipe: a full pipe would stall the run
  proc = subprocess.Popen(train_cmd(workdir, steps), cwd=REPO, env=train_env(cache_dir), stdout=subprocess.DEVNULL,
                          stderr=log)
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline and not any(s >= after for s in _step_dirs(workdir)):
    time.sleep(0.01)
  time.sleep(delay)
  finished_first = proc.poll() is not None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  log.close()
  if finished_first or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    with open(log.name) as f:
      raise RuntimeError(f"the run ended or stalled before the kill (rc {proc.returncode}): {f.read()[-2000:]}")
  steps_seen = committed_steps(workdir)
  lost = 0
  for s in steps_seen:  # every committed checkpoint must restore whole
    try:
      state_at(workdir, s)
    except Exception:  # pylint: disable=broad-except
      lost += 1
  out = {"killed_after_step": after, "delay_s": round(delay, 3), "committed": steps_seen, "lost": lost,
         "resumed_from": None, "exact": None}
  if resume:
    done = run(workdir, steps, cache_dir)
    if done.returncode:
      raise RuntimeError(f"resume failed: {done.stderr[-3000:]}")
    resumed = [line for line in done.stderr.splitlines() if "resuming from step" in line]
    out["resumed_from"] = int(resumed[0].split("resuming from step ")[1].split()[0]) if resumed else 0
    if steps_seen and out["resumed_from"] != steps_seen[-1]:
      out["lost"] += 1  # the restart did not take the newest committed checkpoint
    final = state_at(workdir)
    out["exact"] = len(final) == len(reference) and all(np.array_equal(a, b) for a, b in zip(final, reference))
  return out
