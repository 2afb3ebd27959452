"""The toy autoencoder's training step: XLA's convolution kernel gradient against the chunked one.

  python -m benchmarks.autoencoder_step [--chunks=0,2,4,8] [--frames=4,16] [--steps=5] [--quick]

XLA:CPU computes a convolution's kernel gradient as one convolution whose kernel is the whole batch's
output gradient; its time grows faster than the batch (models/vae.py). First one 3x3 convolution's
kernel gradient alone at a few batch sizes, then the trainer's whole step of configs/autoencoder.py:toy
(16 frames) with config.model.autoencoder.kernel_grad_chunk at each value (0: XLA's own gradient). The
settings alternate call by call (benchmarks.common.median_times), so their ratios are meaningful on a
noisy machine. Prints Markdown for BENCHMARKS.md. --quick: the tiny config, a smoke test.
"""

from __future__ import annotations

import platform

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import flops
from cinema_jax.models import vae
from configs import autoencoder as autoencoder_config

_CHUNKS = flags.DEFINE_list("chunks", ["0", "2", "4", "8"], "kernel_grad_chunk values (0: XLA's gradient).")
_FRAMES = flags.DEFINE_list("frames", ["4", "16"], "Batch sizes of the single-convolution measurement.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per figure (the median is reported).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes, 2 timed calls: a smoke test, not a figure.")


def conv_kernel_grad_times(frames: list[int], chunk: int, steps: int, channels: int = 64,
                           size: tuple[int, int] = (32, 64)) -> dict[tuple[int, int], float]:
  """{(frames, chunk or 0): median s} of one 3x3 convolution's kernel gradient."""
  fns = {}
  for n in frames:
    x = jax.random.normal(jax.random.key(0), (n, *size, channels))
    k = jax.random.normal(jax.random.key(1), (3, 3, channels, channels)) * 0.05
    for ch in (0, chunk):
      conv = vae.conv_with_chunked_kernel_grad(ch) if ch else jax.lax.conv_general_dilated
      grad = jax.jit(jax.grad(lambda k, x, conv=conv: jnp.sum(conv(x, k, (1, 1), "SAME",
                                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)))
      fns[(n, ch)] = lambda g=grad, k=k, x=x: g(k, x).block_until_ready()
  return common.median_times(fns, steps, warmup=2)


def synthetic_batch(c) -> dict[str, np.ndarray]:
  """What the pipeline gives the autoencoder task: one shot a row, its frames in [-1, 1]."""
  h, w = c.data.resolution
  rng = np.random.default_rng(0)
  return {"frames": rng.uniform(-1, 1, (c.batch_size, 1, c.data.toy.num_frames, h, w, 3)).astype(np.float32)}


def step_times(chunks: list[int], quick: bool, steps: int) -> dict[int, tuple[float, float]]:
  """{chunk: (median s/step, analytic GFLOP/step)} of the trainer's autoencoder step."""
  fns, cost = {}, None
  for ch in chunks:
    c = autoencoder_config.get_config("tiny" if quick else "toy")
    c.model.autoencoder.kernel_grad_chunk = ch
    c = config_validation.load(c, reads_data=False)
    cost = flops.StepCost(c).flops_per_step
    step, setup, batch, mesh = common.jit_train_step(c, synthetic_batch(c))
    with jax.set_mesh(mesh):
      box = {"state": setup.init()}

    def run(step=step, box=box, batch=batch, mesh=mesh):
      with jax.set_mesh(mesh):
        box["state"], metrics = step(box["state"], batch)  # donated: each call consumes the last state
        jax.block_until_ready((box["state"], metrics))

    fns[ch] = run
  times = common.median_times(fns, steps, warmup=2)
  return {ch: (t, cost / 1e9) for ch, t in times.items()}


def main(argv) -> None:
  del argv
  quick = _QUICK.value
  steps = 2 if quick else _STEPS.value
  chunks = [int(x) for x in _CHUNKS.value]
  frames = [4] if quick else [int(x) for x in _FRAMES.value]
  print(f"host: {platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} "
        f"device(s), jax {jax.__version__}\n")
  conv = conv_kernel_grad_times(frames, 4, steps, channels=8 if quick else 64)
  print("| frames | XLA kernel gradient, ms | chunks of 4, ms | ratio |\n|---|---|---|---|")
  for n in frames:
    print(f"| {n} | {conv[(n, 0)] * 1e3:.1f} | {conv[(n, 4)] * 1e3:.1f} | {conv[(n, 0)] / conv[(n, 4)]:.2f}x |")
  times = step_times(chunks, quick, steps)
  base = times.get(0, next(iter(times.values())))[0]
  print("\n| kernel_grad_chunk | s/step | GFLOP/step | vs XLA's gradient |\n|---|---|---|---|")
  for ch, (t, gflop) in times.items():
    print(f"| {ch or 'XLA'} | {t:.3f} | {gflop:.1f} | {base / t:.2f}x |")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
