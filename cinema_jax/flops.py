"""Analytic FLOPs of a keyframe-model training step, and the machine's matmul peak, for MFU.

Forward FLOPs = 2 x (tokens each linear sees) x (its in x out) + 4 x (query tokens) x (key tokens) x width
per attention; a training step is 3x the forward. adaLN linears see one vector per pair, not per token.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections

from cinema_jax.models import keyframe


@functools.lru_cache(maxsize=None)
def measured_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a large fp32 matmul on the default device: the roof MFU is measured against."""
  x = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


class StepCost:
  """Parameters, tokens and FLOPs of one training step of config `c`."""

  def __init__(self, c: ml_collections.ConfigDict):
    dit, text = keyframe.configs(c)
    h, w = c.data.resolution
    cell = c.model.vae_downsample * c.model.patch
    n_img = (h // cell) * (w // cell)
    n_txt = c.data.text_len // (text.pool_stride if text else 1)
    p, b, d, m = c.data.num_pairs, c.batch_size, dit.hidden, dit.mlp_hidden
    t = n_img + n_txt
    per_pair_vec = 2 * (d * 6 * d * 2 * dit.depth_double + d * 3 * d * dit.depth_single + d * 2 * d)
    double = dit.depth_double * (2 * t * (3 * d * d + d * d + 2 * d * m) + 4 * t * t * d)
    single = dit.depth_single * (2 * t * (d * (3 * d + m) + (d + m) * d) + 4 * t * (p * t) * d)
    embed = 2 * (n_img * dit.in_channels * d + n_txt * dit.context_dim * d + n_img * d * dit.in_channels)
    forward_per_pair = double + single + embed + per_pair_vec
    text_fwd = 0
    if text is not None:
      tw, tl = text.width, c.data.text_len
      text_fwd = text.depth * (2 * tl * (3 * tw * tw + tw * tw + 8 * tw * tw) + 4 * tl * tl * tw)
    self.flops_per_step = 3 * b * p * (forward_per_pair + text_fwd)
    self.tokens_per_step = b * p * t
    self.num_params = sum(x.size for x in jax.tree.leaves(_param_shapes(c)))
    self._desc = f"{p} pairs x ({n_img} image + {n_txt} text tokens), batch {b}"

  @functools.cached_property
  def peak_flops(self) -> float:
    return measured_peak_flops()

  def describe(self) -> str:
    return f"{self._desc}, {self.flops_per_step / 1e9:.1f} GFLOP per step"


def _param_shapes(c):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return nnx.state(keyframe.abstract(c))
