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
import ml_collections

from cinema_jax import sharding
from cinema_jax.models import mmdit
from cinema_jax.models import text_encoder


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
    self.text = text_encoder.ByteTextEncoder(text, rngs) if text is not None else None
    self.dit = mmdit.MMDiT(dit, rngs)

  def encode_text(self, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(states [B, P, L', E], mask [B, P, L'], pooled [B, P, V]) from a pipeline batch."""
    if self.text is not None:
      return self.text(batch["text_tokens"], batch["text_mask"])
    return batch["text_states"], batch["text_mask"], batch["text_pooled"]

  def __call__(self, x_BPNC, t_BP, txt_BPLE, txt_mask_BPL, y_BPV, grid: tuple[int, int], guidance_BP=None,
               causal: bool = False) -> jax.Array:
    b, p, _, _ = x_BPNC.shape
    img_ids, txt_ids = mmdit.position_ids(p, txt_BPLE.shape[2], *grid)
    bcast = lambda ids: jnp.broadcast_to(ids, (b, *ids.shape))
    return self.dit(x_BPNC, bcast(img_ids), txt_BPLE, bcast(txt_ids), txt_mask_BPL, t_BP, y_BPV, guidance_BP,
                    causal=causal)


def configs(c: ml_collections.ConfigDict) -> tuple[mmdit.MMDiTConfig, text_encoder.TextEncoderConfig | None]:
  """The model dataclasses of a full config (its model and data sections)."""
  m = c.model
  channels = m.image_channels * m.patch * m.patch
  text = None
  if m.text_encoder == "bytes":
    text = text_encoder.TextEncoderConfig(width=m.text.width, depth=m.text.depth, num_heads=m.text.num_heads,
                                          max_len=c.data.text_len, pool_stride=m.text.pool_stride,
                                          vec_dim=m.text.vec_dim, dtype=m.dtype, param_dtype=m.param_dtype)
    context_dim, vec_dim = m.text.width, m.text.vec_dim
  elif m.text_encoder == "precomputed":
    context_dim, vec_dim = m.context_dim, m.vec_dim
  else:
    raise ValueError(f"config.model.text_encoder={m.text_encoder!r}: expected 'bytes' or 'precomputed'")
  dit = mmdit.MMDiTConfig(
      in_channels=channels, hidden=m.hidden, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      depth_double=m.depth_double, depth_single=m.depth_single, context_dim=context_dim, vec_dim=vec_dim,
      axes_dim=tuple(m.axes_dim), theta=m.theta, qkv_bias=m.qkv_bias, guidance_embed=m.guidance_embed,
      dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention=m.attention)
  return dit, text


def build(c: ml_collections.ConfigDict, seed: int = 0) -> KeyframeModel:
  """A KeyframeModel with real parameters (sharding annotations kept as metadata)."""
  dit, text = configs(c)
  with nnx.use_eager_sharding(False):
    return KeyframeModel(dit, text, nnx.Rngs(seed))


def abstract(c: ml_collections.ConfigDict) -> KeyframeModel:
  """The model built with jax.eval_shape: shapes and sharding metadata, no memory.

  Under the logical-axis rules, so that it also works inside a mesh context (eval_shape then resolves
  each parameter's logical names to mesh axes).
  """
  dit, text = configs(c)
  with nnx.use_eager_sharding(False), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    return nnx.eval_shape(lambda: KeyframeModel(dit, text, nnx.Rngs(0)))
