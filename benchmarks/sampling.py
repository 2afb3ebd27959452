"""Sampling benchmark: seconds per keyframe with and without the KV cache, as the context grows.

  python -m benchmarks.sampling [--pairs=8,16,32] [--num_steps=28] [--repeats=3] [--quick]

For each context length P the `demo_long` model (random weights; speed does not depend on them)
samples the keyframe of a full window: P - 1 context keyframes and the new one, `num_steps` Euler
steps with CFG, exactly the call Sampler.keyframes makes per shot once the storyline is P shots in.
Both ways run in the same process, alternating call by call; the figure is the median call after a
compiling warm-up. The cached and uncached keyframes are compared too (max |difference|).
"""

from __future__ import annotations

import os
import platform

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax.models import keyframe
from cinema_jax.sampling import keyframe_sampler
from configs import keyframe as keyframe_config



def _define_flags():  # only when run as a script: benchmarks.gpu_check imports this module
  flags.DEFINE_list("pairs", ["8", "16", "32"], "Context lengths (pairs in the window, the new one included).")
  flags.DEFINE_integer("num_steps", 28, "Euler steps per keyframe.")
  flags.DEFINE_integer("repeats", 3, "Timed calls per setting (the median is reported).")
  flags.DEFINE_bool("quick", False, "The tiny model, 2 steps: a smoke test, not a figure.")


def random_model(c, seed: int = 0):
  """(graphdef, params) of config c with every parameter random (no zero-initialised gates)."""
  graphdef, state = nnx.split(keyframe.build(c))
  leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return graphdef, jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, x.shape, x.dtype)
                                                for k, x in zip(keys, leaves)])


def keyframe_times(c, pairs: int, repeats: int, batch: int = 1) -> dict:
  """Median seconds to sample one keyframe (per storyline in a batch) with a full window of `pairs`."""
  c = config_validation.replace(c, {"data.num_pairs": pairs})
  graphdef, params = random_model(c)
  s = keyframe_sampler.Sampler(c, graphdef)
  n_tok, chans = s.grid[0] * s.grid[1], s.frame_shape[-1] * c.model.patch ** 2
  rng = np.random.default_rng(0)
  xs = (jnp.asarray(rng.uniform(-1, 1, (batch, pairs, n_tok, chans)).astype(np.float32)),)
  captions = [f"Wide shot in the forest. Mia, a small red circle, jumps {i} times." for i in range(pairs)]
  text = {k: jnp.asarray(np.stack([v] * batch)) for k, v in s.text(captions).items()}
  new = np.arange(pairs) == pairs - 1
  keys = jnp.stack([jax.random.key(i) for i in range(batch)])
  g = jnp.float32(c.sample.guidance)
  calls = {name: (lambda cached=cached: jax.block_until_ready(s._denoise(  # pylint: disable=protected-access
      params, xs, text, new, True, (s.grid,), cached, keys, g))) for name, cached in (("none", False),
                                                                                               ("cache", True))}
  outs = {name: np.asarray(f()[0][:, -1]) for name, f in calls.items()}  # compiles
  out = {name: t / batch for name, t in common.median_times(calls, repeats, 0).items()}
  out["diff"] = float(np.abs(outs["none"] - outs["cache"]).max())
  return out


def config(quick: bool, num_steps: int):
  c = keyframe_config.get_config("tiny" if quick else "demo_long")
  c.sample.num_steps = 2 if quick else num_steps
  return config_validation.load(c, reads_data=False)


def main(argv):
  del argv
  f = flags.FLAGS
  c = config(f.quick, f.num_steps)
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}"
        f"; model: {c.model.hidden} wide, {c.model.depth_double}+{c.model.depth_single} blocks, "
        f"{c.sample.num_steps} steps, CFG{' (--quick: not a figure)' if f.quick else ''}")
  print()
  print("| context pairs | s/keyframe, no cache | s/keyframe, KV cache | speed-up | max abs diff |")
  print("|---|---|---|---|---|")
  for pairs in (int(p) for p in f.pairs):
    t = keyframe_times(c, pairs, f.repeats)
    print(f"| {pairs} | {t['none']:.3f} | {t['cache']:.3f} | {t['none'] / t['cache']:.1f}x | {t['diff']:.1e} |",
          flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
