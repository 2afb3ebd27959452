"""Analytic FLOPs of a keyframe-model training step, and the machine's matmul peak, for MFU.

Forward FLOPs = 2 x (tokens each linear sees) x (its in x out) + 4 x (query tokens) x (key tokens) x width
per attention; a training step is 3x the forward. adaLN linears see one vector per pair, not per token.
With GoldenMem each pair counts its own level's image tokens.
"""

from __future__ import annotations

import functools
import time

from flax import nnx
import jax
import jax.numpy as jnp

from cinema_jax import config_validation
from cinema_jax.models import keyframe
from cinema_jax.models import video


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

  def __init__(self, c: config_validation.Config, frames_per_example: int = 1):
    if c.task == "autoencoder":  # every frame of the example's shot, through the encoder and decoder
      from cinema_jax.training import autoencoder  # pylint: disable=import-outside-toplevel
      h, w = c.data.resolution
      images = c.batch_size * (c.model.autoencoder.frames_per_shot or frames_per_example)
      self.flops_per_step = 3 * images * autoencoder.forward_flops(c)
      self.tokens_per_step = images * h * w  # pixels
      self.num_params = sum(x.size for x in jax.tree.leaves(nnx.state(autoencoder.abstract(c))))
      self._desc = f"{images} frames of {h}x{w} pixels"
      return
    dit, text = keyframe.configs(c)
    gh, gw = keyframe.full_grid(c)
    n_txt = c.data.text_len
    b, d, m = c.batch_size, dit.hidden, dit.mlp_hidden
    plan = keyframe.memory_plan(c)  # GoldenMem: older pairs have fewer image tokens
    if c.task == "video":  # K shots (or, keyframes="pairs": K keyframe pairs and K clip pairs)
      n_img = video.pair_image_tokens(c)
      n_txt *= c.data.num_pairs if c.model.video.captions == "global" else 1
    elif plan is None:
      n_img = [gh * gw] * c.data.num_pairs
    else:
      n_img = [g.grid[0] * g.grid[1] for g in plan for _ in range(g.num_pairs)]
    p = len(n_img)
    t = [n + n_txt for n in n_img]  # tokens per pair
    total = sum(t)
    per_pair_vec = 2 * (d * 6 * d * 2 * dit.depth_double + d * 3 * d * dit.depth_single + d * 2 * d)
    double = dit.depth_double * sum(2 * ti * (3 * d * d + d * d + 2 * d * m) + 4 * ti * ti * d for ti in t)
    single = dit.depth_single * (2 * total * (d * (3 * d + m) + (d + m) * d) + 4 * total * total * d)
    embed = sum(2 * (ni * dit.in_channels * d + n_txt * dit.context_dim * d + ni * d * dit.in_channels)
                for ni in n_img)
    text_fwd = 0
    if text is not None:
      tw, tl = text.width, c.data.text_len
      text_fwd = text.depth * (2 * tl * (3 * tw * tw + tw * tw + 8 * tw * tw) + 4 * tl * tl * tw)
    captions = c.data.num_pairs  # the text encoder runs once per caption
    self.flops_per_step = 3 * b * (double + single + embed + p * per_pair_vec + captions * text_fwd)
    self.tokens_per_step = b * total
    self.num_params = sum(x.size for x in jax.tree.leaves(_param_shapes(c)))
    self._desc = (f"{c.data.num_pairs} shots ({sum(n_img)} image tokens in all + {n_txt} text tokens per pair), "
                  f"batch {b}"
                  if c.task == "video" else
                  f"{p} pairs x ({gh * gw} image + {n_txt} text tokens), batch {b}" if plan is None else
                  f"{p} pairs ({sum(n_img)} GoldenMem image tokens in all + {n_txt} text tokens each), batch {b}")

  @functools.cached_property
  def peak_flops(self) -> float:
    return measured_peak_flops()

  def describe(self) -> str:
    f = self.flops_per_step
    return f"{self._desc}, " + (f"{f / 1e9:.1f} GFLOP" if f < 1e13 else f"{f / 1e12:.1f} TFLOP") + " per step"


def _param_shapes(c):
  return nnx.state(keyframe.abstract(c))
