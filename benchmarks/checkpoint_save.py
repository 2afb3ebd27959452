"""What the checkpoint checksums cost: each save's fingerprint of the state against the save and the step.

  python -m benchmarks.checkpoint_save [--steps=5] [--quick]

Every save computes `checkpoints.fingerprint(state)` (two exact uint32 sums per array, reduced on the
devices that hold it, then fetched) before handing the state to Orbax, so a later restore can verify
what it reads. For the demo keyframe model and its 512-wide variant (benchmarks.train_step's configs)
this times, alternating call by call (benchmarks.common.median_times): the fingerprint alone, a
synchronous Orbax save of the state alone (no checksums) and the trainer's step. The ratios are what
carry over between hosts. Prints Markdown for BENCHMARKS.md. --quick: the tiny config, a smoke test.
"""

from __future__ import annotations

import itertools
import platform
import tempfile

from absl import app
import jax
import orbax.checkpoint as ocp

from benchmarks import common
from benchmarks import train_step as train_step_bench
from cinema_jax import checkpoints
from cinema_jax import cli
from cinema_jax import flops

# --steps and --quick: benchmarks.train_step's flags (its configs and batches are the ones measured here)
_STEPS, _QUICK = train_step_bench._STEPS, train_step_bench._QUICK  # pylint: disable=protected-access


def times(c, steps: int) -> dict[str, float]:
  """Median seconds of the fingerprint, of a synchronous save of the state, and of one training step."""
  step, setup, batch, mesh = common.jit_train_step(c, train_step_bench.synthetic_batch(c))
  with jax.set_mesh(mesh), tempfile.TemporaryDirectory() as tmp:
    box = {"state": setup.init()}
    mngr = ocp.CheckpointManager(tmp, options=ocp.CheckpointManagerOptions(max_to_keep=1), item_names=("state",))
    numbers = itertools.count(1)

    def train():
      box["state"], metrics = step(box["state"], batch)
      jax.block_until_ready((box["state"], metrics))

    def save():
      mngr.save(next(numbers), args=ocp.args.Composite(state=ocp.args.StandardSave(box["state"])))
      mngr.wait_until_finished()

    out = common.median_times({"fingerprint": lambda: checkpoints.fingerprint(box["state"]), "save": save,
                               "step": train}, steps, warmup=1)
    mngr.close()
  return out


def main(argv) -> None:
  del argv
  steps = 2 if _QUICK.value else _STEPS.value
  print(f"host: {platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} "
        f"device(s); medians of {steps} calls, alternating\n")
  print("| config | parameters | state | fingerprint, ms | save (sync, no checksums), ms | step, ms | "
        "fingerprint / save | fingerprint / step |\n|---|---|---|---|---|---|---|---|")
  for name, c in train_step_bench.train_configs(_QUICK.value).items():
    t = times(c, steps)
    n = flops.StepCost(c).num_params
    print(f"| {name} | {n / 1e6:.1f} M | {5 * 4 * n / 2**20:.0f} MiB | {t['fingerprint'] * 1e3:.1f} | "
          f"{t['save'] * 1e3:.0f} | {t['step'] * 1e3:.0f} | {t['fingerprint'] / t['save']:.3f} | "
          f"{t['fingerprint'] / t['step']:.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
