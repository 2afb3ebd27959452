"""Compile time of the keyframe train step as the model gets deeper (layers run under jax.lax.scan).

  python -m benchmarks.compile_time [--depths=1,2,4,8,16] [--quick]

The demo config's step (fwd + bwd + AdamW + EMA) at depth d double + d single blocks, lowered and
compiled for one CPU device; blocks are stacked and scanned, so XLA compiles one block body per kind
whatever the depth and the time should stay nearly flat. Parameters and FLOPs grow with d.
"""

from __future__ import annotations

import os
import platform
import time

from absl import app
from absl import flags
import jax

from benchmarks import common
from benchmarks import train_step as bench
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import flops
from configs import keyframe as keyframe_config

_DEPTHS = flags.DEFINE_list("depths", ["1", "2", "4", "8", "16"], "Double (= single) block counts.")


def compile_seconds(c) -> float:
  step, setup, batch, mesh = common.jit_train_step(c, bench.synthetic_batch(c))
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    step.lower(setup.abstract_state, batch).compile()
    return time.perf_counter() - start


def main(argv):
  del argv
  quick = bench._QUICK.value  # pylint: disable=protected-access
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}"
        f"{' (--quick: not a figure)' if quick else ''}")
  print()
  print("| blocks (double + single) | parameters | GFLOP/step | compile s | vs the shallowest |")
  print("|---|---|---|---|---|")
  first = None
  for d in (int(x) for x in (_DEPTHS.value[:2] if quick else _DEPTHS.value)):
    c = keyframe_config.get_config("tiny" if quick else "demo")
    c.model.update(depth_double=d, depth_single=d)
    c.mesh.update(data=1, fsdp=1)  # one device: the compile of the step itself, not of a sharded program
    c = config_validation.load(c, reads_data=False)
    t = compile_seconds(c)
    first = first or t
    cost = flops.StepCost(c)
    print(f"| {d} + {d} | {cost.num_params / 1e6:.2f}M | {cost.flops_per_step / 1e9:.1f} | {t:.1f} "
          f"| {t / first:.2f}x |", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
