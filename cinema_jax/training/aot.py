"""Ahead-of-time compilation of the training step: check a config before booking a pod.

  python -m cinema_jax.train --config=configs/keyframe.py --compile_only --fake_devices=64
  python -m cinema_jax.train --config=configs/keyframe.py --compile_only --topology=v5p:4x4x4   # libtpu

Lowers and compiles the trainer's own step (same shardings, donation, remat) for the configured mesh
on abstract inputs (nothing is allocated, no data is read) and prints the parameter count, FLOPs per
step and XLA's per-device memory analysis. The devices are this machine's, N fake CPU devices
(--fake_devices: XLA's CPU compiler, so memory is indicative), or a Cloud TPU topology compiled by
libtpu on this host (--topology, `pip install -e '.[tpu]'`): then the memory figures are the TPU
compiler's own, and a step that does not fit fails here with its RESOURCE_EXHAUSTED message.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jax

from cinema_jax import batch_format
from cinema_jax import config_validation
from cinema_jax import flops
from cinema_jax import sharding
from cinema_jax.training import train_step

# Cloud TPU topology names that libtpu compiles for: generation:chips per dimension. v4 and v5p are 3D
# tori, v5e and v6e 2D (libtpu aborts the process, not a Python error, on a 3D v5e name).
TOPOLOGY = re.compile(r"^(v4|v5p|v5|v5e|v6e):(\d+)x(\d+)(?:x(\d+))?$")


def topology_devices(name: str) -> list:
  """The devices of a Cloud TPU slice, for compiling on this host (needs libtpu, not a TPU)."""
  match = TOPOLOGY.match(name)
  if not match:
    raise ValueError(f"--topology={name!r}: expected GENERATION:AxB[xC] with GENERATION one of v4, v5p, v5e, "
                     "v6e (e.g. v5p:4x4x4 is v5p-128, 64 chips; v5e:8x8 is 64 chips)")
  generation, dims = match.group(1), [d for d in match.groups()[1:] if d]
  if generation in ("v5e", "v6e") and len(dims) != 2:
    raise ValueError(f"--topology={name!r}: {generation} slices are 2D (e.g. {generation}:8x8)")
  if generation in ("v4", "v5p", "v5") and len(dims) != 3:
    raise ValueError(f"--topology={name!r}: {generation} slices are 3D (e.g. {generation}:4x4x4)")
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    kw = {"chip_config_name": "megacore"} if generation == "v4" else {}  # one device per chip
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **kw).devices)
  except Exception as e:  # pylint: disable=broad-except  (libtpu missing or the name refused)
    raise ValueError(f"--topology={name!r}: cannot get this TPU topology ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); it needs libtpu: pip install -e '.[tpu]'") from None


def compile_train_step(c: config_validation.Config, devices=None) -> dict[str, Any]:
  """Lowers and compiles the training step of config c on its mesh over `devices`; returns the figures."""
  mesh = sharding.make_mesh(c.mesh, devices)
  dp = sharding.data_parallel_size(mesh)
  if c.batch_size % dp:
    raise ValueError(f"config.batch_size={c.batch_size}: not a multiple of the data-parallel size {dp}")
  setup = train_step.make_setup(c, mesh)
  with jax.set_mesh(mesh):
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, v.ndim))
             for k, v in batch_format.spec(c).items()}
    step = train_step.jit_train_step(c, setup, mesh, batch)
    start = time.perf_counter()
    lowered = step.lower(setup.abstract_state, batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  counter = flops.StepCost(c)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state))
  return {
      "mesh": dict(mesh.shape), "devices": mesh.devices.size, "device_kind": mesh.devices.flat[0].device_kind,
      "params": counter.num_params, "tokens_per_step": counter.tokens_per_step,
      "flops_per_step": counter.flops_per_step, "xla_flops_per_device": float(cost.get("flops", -1.0)),
      "state_bytes": state_bytes, "argument_bytes": mem.argument_size_in_bytes,
      "output_bytes": mem.output_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
      "temp_bytes": mem.temp_size_in_bytes, "code_bytes": mem.generated_code_size_in_bytes,
      "total_bytes": (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                      + mem.temp_size_in_bytes),
      "xla_peak_bytes": getattr(mem, "peak_memory_in_bytes", 0),  # TPU's compiler fills it, CPU's does not
      "lower_s": lower_s, "compile_s": compile_s, "workload": counter.describe(),
  }


def _size(x: float, units: tuple[str, ...], base: float) -> str:
  i = 0
  while abs(x) >= base and i < len(units) - 1:
    x, i = x / base, i + 1
  return f"{x:.3g} {units[i]}"


def format_report(r: dict[str, Any]) -> str:
  mem = lambda x: _size(x, ("B", "KiB", "MiB", "GiB", "TiB"), 1024)
  num = lambda x, unit: _size(x, (unit, f"K{unit}", f"M{unit}", f"G{unit}", f"T{unit}", f"P{unit}"), 1000)
  mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
  return "\n".join([
      f"compiled the training step for {r['devices']} x {r['device_kind']} (mesh {mesh})",
      f"  workload         {r['workload']}",
      f"  parameters       {num(r['params'], '')} ({mem(r['state_bytes'])} of train state: params, optimizer, EMA)",
      f"  FLOPs per step   {num(r['flops_per_step'], 'FLOP')} (analytic, all devices); XLA cost analysis "
      f"{num(r['xla_flops_per_device'], 'FLOP')} per device (a loop body counted once)",
      f"  memory / device  {mem(r['total_bytes'])} = arguments {mem(r['argument_bytes'])} + outputs "
      f"{mem(r['output_bytes'])} - donated {mem(r['alias_bytes'])} + temporaries {mem(r['temp_bytes'])}"
      + (f"; XLA's peak {mem(r['xla_peak_bytes'])}" if r["device_kind"] != "cpu" and r["xla_peak_bytes"] else "")
      + f"; code {mem(r['code_bytes'])}",
      f"  time             lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s",
  ])
