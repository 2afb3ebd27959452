"""Shared by the benchmarks: medians of blocking calls, and the trainer's step jitted on its mesh."""

from __future__ import annotations

import statistics
import time

import jax

from cinema_jax import sharding
from cinema_jax.training import train_step


def median_times(fns: dict, steps: int, warmup: int) -> dict[str, float]:
  """Median seconds per call of each blocking fn; calls alternate so machine drift hits all alike."""
  for f in fns.values():
    for _ in range(warmup):
      f()
  times = {k: [] for k in fns}
  for _ in range(steps):
    for k, f in fns.items():
      start = time.perf_counter()
      f()
      times[k].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}


def jit_train_step(c, batch_np: dict, devices=None):
  """(jitted donated step, setup, device batch, mesh): the trainer's step for config c on its mesh.

  Call and lower the step inside `with jax.set_mesh(mesh)`, as the trainer does."""
  mesh = sharding.make_mesh(c.mesh, devices)
  setup = train_step.make_setup(c, mesh)  # outside the mesh context, as the trainer does
  with jax.set_mesh(mesh):
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch_np.items()}
    step = train_step.jit_train_step(c, setup, mesh, batch)
  return step, setup, batch, mesh
