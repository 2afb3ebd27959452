"""The keyframe model: (optional) toy text encoder + interleaved MM-DiT, built from a config.

Images enter as patch tokens: [B, P, H, W, C] -> [B, P, (H/p)(W/p), C*p*p] with channels ordered
(c, ph, pw) as FLUX packs its latents, so FLUX's img_in weights load unchanged. The toy world feeds
pixels (C = 3); real data feeds VAE latents (C = 16, p = 2 -> 64 channels).
"""

from __future__ import annotations

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp

from cinema_jax import config_validation
from cinema_jax import goldenmem
from cinema_jax import input_space
from cinema_jax import sharding
from cinema_jax.models import mmdit
from cinema_jax.models import text_encoder
from cinema_jax.training import objective


def patchify(x_BPHWC: jax.Array, p: int) -> jax.Array:
  b, n, h, w, c = x_BPHWC.shape
  x = x_BPHWC.reshape(b, n, h // p, p, w // p, p, c)
  x = jnp.einsum("bnhpwqc->bnhwcpq", x)
  return x.reshape(b, n, (h // p) * (w // p), c * p * p)


def unpatchify(x_BPNC: jax.Array, p: int, h: int, w: int) -> jax.Array:
  b, n, _, cpp = x_BPNC.shape
  c = cpp // (p * p)
  x = x_BPNC.reshape(b, n, h // p, w // p, c, p, p)
  x = jnp.einsum("bnhwcpq->bnhpwqc", x)
  return x.reshape(b, n, h, w, c)


class KeyframeModel(nnx.Module):
  """text (tokens or pre-computed states) + noisy image tokens of P pairs -> velocity per image token."""

  def __init__(self, dit: mmdit.MMDiTConfig, text: text_encoder.TextEncoderConfig | None, rngs: nnx.Rngs):
    self.text = text_encoder.TextEncoder(text, rngs) if text is not None else None
    self.dit = mmdit.MMDiT(dit, rngs)

  def encode_text(self, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(states [B, P, L', E], mask [B, P, L'], pooled [B, P, V]) from a pipeline batch."""
    if self.text is not None:
      return self.text(batch["text_tokens"], batch["text_mask"])
    return batch["text_states"], batch["text_mask"], batch["text_pooled"]

  def __call__(self, x_BPNC, t_BP, txt_BPLE, txt_mask_BPL, y_BPV, grid: tuple[int, int], guidance_BP=None,
               causal: bool = False, group_grids: tuple[tuple[int, int], ...] | None = None,
               cache: mmdit.KVCache | None = None, first_pair=0):
    """Velocities of the image tokens: x is [B, P, N, C] on `grid`, or a tuple of GoldenMem groups
    [B, n_g, N_g, C] on `group_grids` (oldest first), their coordinates spanning the full `grid`.
    With a cache (fill_cache) these pairs also see the cached pairs; they are numbered from first_pair."""
    out = self.dit(*self._inputs(x_BPNC, t_BP, txt_BPLE, txt_mask_BPL, y_BPV, grid, guidance_BP, group_grids,
                                 first_pair), causal=causal, cache=cache)
    return out if isinstance(x_BPNC, (tuple, list)) else out[0]

  def fill_cache(self, x_BPNC, t_BP, txt_BPLE, txt_mask_BPL, y_BPV, grid: tuple[int, int], guidance_BP=None,
                 group_grids: tuple[tuple[int, int], ...] | None = None, pair_valid_BP=None) -> mmdit.KVCache:
    """The KV cache of these context pairs (block-causal); pair_valid marks the pairs later ones see."""
    return self.dit.fill_cache(*self._inputs(x_BPNC, t_BP, txt_BPLE, txt_mask_BPL, y_BPV, grid, guidance_BP,
                                             group_grids, 0), pair_valid_BP=pair_valid_BP)

  def _inputs(self, x_BPNC, t_BP, txt_BPLE, txt_mask_BPL, y_BPV, grid, guidance_BP, group_grids, first_pair):
    grouped = isinstance(x_BPNC, (tuple, list))
    xs = tuple(x_BPNC) if grouped else (x_BPNC,)
    grids = tuple(group_grids) if grouped else (tuple(grid),)
    if len(grids) != len(xs):
      raise ValueError(f"{len(xs)} image groups but {len(grids)} group grids")
    b = xs[0].shape[0]
    img_ids, txt_ids = mmdit.group_position_ids(tuple(grid), [(x.shape[1], g) for x, g in zip(xs, grids)],
                                                txt_BPLE.shape[2], first_pair)
    bcast = lambda ids: jnp.broadcast_to(ids, (b, *ids.shape))
    return (xs, tuple(bcast(i) for i in img_ids), txt_BPLE, bcast(txt_ids), txt_mask_BPL, t_BP, y_BPV, guidance_BP)


def full_grid(c: config_validation.Config) -> tuple[int, int]:
  """The token grid of a full-resolution keyframe."""
  return input_space.of(c).grid


def memory_plan(c: config_validation.Config, num_pairs: int | None = None) -> tuple[goldenmem.Group, ...] | None:
  """GoldenMem's level groups of a window of num_pairs (default: the config's) pairs; None without it."""
  if c.data.memory_levels != "goldenmem":
    return None
  g = c.data.goldenmem
  return goldenmem.plan(num_pairs or c.data.num_pairs, full_grid(c), g.group_size, g.phi)


def pipeline_image_groups(c: config_validation.Config):
  """(pairs, (h, w) pixels) per group for a pipeline that resizes in pixel space; None otherwise."""
  plan = memory_plan(c)
  if plan is None or c.data.goldenmem.resize != "pixels":
    return None
  cell = input_space.of(c).cell
  return tuple((g.num_pairs, (g.grid[0] * cell, g.grid[1] * cell)) for g in plan)


def image_tokens(c: config_validation.Config, batch: dict):
  """The clean image tokens of a batch: [B, P, N, C], or GoldenMem's groups and their token grids.

  Returns (tokens, group_grids); group_grids is None without GoldenMem. Groups come from the
  pipeline (image_g0, ... resized in pixel space) or are resized here (resize="latents").
  """
  key = input_space.of(c).image_key
  p = c.model.patch
  plan = memory_plan(c)
  if plan is None:
    return patchify(batch[key], p), None
  if f"{key}_g0" in batch:
    arrays = [batch[f"{key}_g{i}"] for i in range(len(plan))]
  else:
    arrays, first = [], 0
    for g in plan:
      size = (g.grid[0] * p, g.grid[1] * p)
      arrays.append(goldenmem.resize_array(batch[key][:, first:first + g.num_pairs], size))
      first += g.num_pairs
  return tuple(patchify(a, p) for a in arrays), tuple(g.grid for g in plan)


def loss(c: config_validation.Config, model: KeyframeModel, batch: dict, key: jax.Array):
  """Flow-matching loss of a pipeline batch of P-pair windows (objective.flow_loss, per-pair t)."""
  o, grid = c.objective, full_grid(c)
  k_drop, k_flow = jax.random.split(key)
  text = objective.drop_captions(k_drop, *model.encode_text(batch), o.caption_dropout)
  x0, group_grids = image_tokens(c, batch)
  guidance = jnp.full(text[2].shape[:2], o.guidance, jnp.float32) if c.model.guidance_embed else None
  run = lambda x_t, t: objective.velocity(
      model(x_t, t, *text, grid=grid, guidance_BP=guidance, group_grids=group_grids), x_t, t, o.prediction)
  return objective.flow_loss(run, x0, k_flow, o, num_image_tokens=grid[0] * grid[1])


def configs(c: config_validation.Config) -> tuple[mmdit.MMDiTConfig, text_encoder.TextEncoderConfig | None]:
  """The model dataclasses of a full config (its model and data sections)."""
  m = c.model
  # the video model's tokens are 3D patches: patch_t frames of patch x patch (models/video.py)
  channels = m.image_channels * m.patch * m.patch * (m.video.patch_t if c.task == "video" else 1)
  text = None
  if m.text_encoder == "tokens":
    text = text_encoder.TextEncoderConfig(width=m.text.width, depth=m.text.depth, num_heads=m.text.num_heads,
                                          max_len=c.data.text_len, vocab_size=m.text.vocab_size,
                                          vec_dim=m.text.vec_dim, dtype=m.dtype, param_dtype=m.param_dtype)
    context_dim, vec_dim = m.text.width, m.text.vec_dim
  elif m.text_encoder == "precomputed":
    context_dim, vec_dim = m.context_dim, m.vec_dim
  elif m.text_encoder == "bytes":
    raise ValueError("model.text_encoder='bytes': byte tokens gave way to the toy world's word tokens "
                     "(text_encoder='tokens'); a byte-token model cannot be resumed or sampled: retrain it")
  else:
    raise ValueError(f"model.text_encoder={m.text_encoder!r}: expected 'tokens' or 'precomputed'")
  dit = mmdit.MMDiTConfig(
      in_channels=channels, hidden=m.hidden, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      depth_double=m.depth_double, depth_single=m.depth_single, context_dim=context_dim, vec_dim=vec_dim,
      axes_dim=tuple(m.axes_dim), theta=m.theta, qkv_bias=m.qkv_bias, guidance_embed=m.guidance_embed,
      dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention=m.attention)
  return dit, text


def build(c: config_validation.Config, seed: int = 0) -> KeyframeModel:
  """A KeyframeModel with real parameters (sharding annotations kept as metadata)."""
  dit, text = configs(c)
  with nnx.use_eager_sharding(False):
    return KeyframeModel(dit, text, nnx.Rngs(seed))


def abstract(c: config_validation.Config) -> KeyframeModel:
  """The model built with jax.eval_shape: shapes and sharding metadata, no memory.

  Under the logical-axis rules, so that it also works inside a mesh context (eval_shape then resolves
  each parameter's logical names to mesh axes).
  """
  dit, text = configs(c)
  with nnx.use_eager_sharding(False), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    return nnx.eval_shape(lambda: KeyframeModel(dit, text, nnx.Rngs(0)))
