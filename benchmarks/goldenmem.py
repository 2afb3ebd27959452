"""GoldenMem against full-resolution context: training-step FLOPs, time and memory by context length.

  python -m benchmarks.goldenmem [--pairs=8,16,32,48] [--steps=5] [--budget_pairs=16] [--quick]

For each context length P, the demo_long model's training step (batch 4) with every context frame at
full resolution and with GoldenMem (groups of 4, resized in pixel space by the pipeline): analytic
FLOPs (cinema_jax.flops), XLA's memory analysis of the compiled step (temporaries + arguments +
outputs per device), and the median step time, the two settings alternating call by call so their
ratio is meaningful on a noisy machine. Then the largest P whose compiled step fits the memory that
the full-resolution step needs at --budget_pairs pairs, with and without GoldenMem (AOT compiles only).
--quick: the tiny config at 2 lengths, no search (a smoke test). Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import platform

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from benchmarks import train_step as bench
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import flops
from cinema_jax import goldenmem
from cinema_jax.models import keyframe
from configs import keyframe as keyframe_config
from data_pipelines import pipeline

_PAIRS = flags.DEFINE_list("pairs", ["8", "16", "32", "48"], "Context lengths to measure.")
_BUDGET = flags.DEFINE_integer("budget_pairs", 16, "The memory budget: the full-resolution step at this P.")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 96, "Largest P tried for the budget search (steps of 8).")
_STEPS, _QUICK = bench._STEPS, bench._QUICK  # pylint: disable=protected-access  (--steps, --quick: shared)


def config(pairs: int, goldenmem: bool, quick: bool = False):
  c = keyframe_config.get_config("tiny" if quick else "demo_long")
  c.data.num_pairs = pairs
  c.data.memory_levels = "goldenmem" if goldenmem else "none"
  if quick:
    c.data.goldenmem.group_size = 1
  c.mesh.update(data=1, fsdp=1)  # one device: the figures are per device
  return config_validation.load(c)


def batch_for(c) -> dict[str, np.ndarray]:
  """A synthetic batch as the pipeline yields it (GoldenMem groups already resized in pixel space)."""
  batch = bench.synthetic_batch(c)
  groups = keyframe.pipeline_image_groups(c)
  if groups:
    u8 = np.rint((batch.pop("image") + 1) * 127.5).astype(np.uint8)
    per_example = [goldenmem.group_frames(x, groups) for x in u8]
    for g in range(len(groups)):
      batch[f"image_g{g}"] = pipeline.normalise(np.stack([ex[g] for ex in per_example]))
  return batch


def compiled_step(c):
  """(compiled step, state, device batch) of config c on one device."""
  step, setup, batch, mesh = common.jit_train_step(c, batch_for(c), jax.devices()[:1])
  with jax.set_mesh(mesh):
    compiled = step.lower(setup.abstract_state, batch).compile()
  return compiled, setup, batch, mesh


def memory_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)


def measure(pairs: int, steps: int, quick: bool) -> dict:
  out, runs = {}, {}
  for gm in (False, True):
    c = config(pairs, gm, quick)
    compiled, setup, batch, mesh = compiled_step(c)
    with jax.set_mesh(mesh):
      box = {"state": setup.init()}

    def run(compiled=compiled, box=box, batch=batch):
      box["state"], box["metrics"] = compiled(box["state"], batch)
      jax.block_until_ready(box["state"])

    runs[gm] = run
    cost = flops.StepCost(c)
    out[gm] = {"gflop": cost.flops_per_step / 1e9, "tokens": cost.tokens_per_step // c.batch_size,
               "memory_mb": memory_bytes(compiled) / 2 ** 20}
  times = common.median_times({gm: runs[gm] for gm in runs}, steps, warmup=1)
  for gm in out:
    out[gm]["seconds"] = times[gm]
  return out


def largest_fitting(budget: int, goldenmem: bool, max_pairs: int) -> int:
  best = 0
  for pairs in range(8, max_pairs + 1, 8):
    compiled, *_ = compiled_step(config(pairs, goldenmem))
    if memory_bytes(compiled) > budget:
      break
    best = pairs
  return best


def main(argv):
  del argv
  quick = _QUICK.value
  pairs = [3, 6] if quick else [int(p) for p in _PAIRS.value]
  print(f"machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}")
  print("\n| pairs | tokens per example (full / GoldenMem) | GFLOP per step (full / GoldenMem) | FLOP ratio "
        "| memory MB (full / GoldenMem) | memory ratio | step time ratio (GoldenMem / full) |")
  print("|---|---|---|---|---|---|---|")
  for p in pairs:
    r = measure(p, 2 if quick else _STEPS.value, quick)
    full, gm = r[False], r[True]
    print(f"| {p} | {full['tokens']} / {gm['tokens']} | {full['gflop']:.1f} / {gm['gflop']:.1f} | "
          f"{gm['gflop'] / full['gflop']:.2f} | {full['memory_mb']:.0f} / {gm['memory_mb']:.0f} | "
          f"{gm['memory_mb'] / full['memory_mb']:.2f} | {gm['seconds'] / full['seconds']:.2f} |", flush=True)
  if quick:
    return
  budget = memory_bytes(compiled_step(config(_BUDGET.value, False))[0])
  full_max = largest_fitting(budget, False, _MAX_PAIRS.value)
  gm_max = largest_fitting(budget, True, _MAX_PAIRS.value)
  print(f"\nMemory budget {budget / 2 ** 20:.0f} MB (the full-resolution step at {_BUDGET.value} pairs): "
        f"largest P (steps of 8, up to {_MAX_PAIRS.value}) that fits: full resolution {full_max}, "
        f"GoldenMem {gm_max if gm_max < _MAX_PAIRS.value else f'>= {gm_max}'}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
