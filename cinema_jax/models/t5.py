"""The T5 v1.1 encoder (FLUX's text encoder, T5-XXL) in Flax NNX.

Module and parameter names mirror transformers' T5EncoderModel (encoder.block.0.layer.0.SelfAttention.q,
...) so that a checkpoint maps on name for name (cinema_jax/convert/text.py). T5 specifics: RMS layer
norm without a mean or bias, no attention scaling (folded into the weights), a learned bias per
relative-position bucket (first layer's, shared by all layers), gated-GELU feed-forward.
"""

from __future__ import annotations

import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class T5Config:
  """T5 v1.1 XXL's encoder by default (google/t5-v1_1-xxl, as FLUX.1 uses it)."""

  vocab_size: int = 32128
  d_model: int = 4096
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"


def _kw(cfg: T5Config) -> dict:
  return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


class T5LayerNorm(nnx.Module):
  """x / rms(x) * scale, in float32 (no mean subtraction, no bias)."""

  def __init__(self, dim: int, cfg: T5Config):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.dtype(cfg.param_dtype)))
    self.eps, self.dtype = cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (self.scale.get_value().astype(jnp.float32) * x32).astype(self.dtype)


def relative_position_bucket(rel_QK: jax.Array, num_buckets: int, max_distance: int) -> jax.Array:
  """T5's bidirectional buckets of (key - query) offsets: exact up to num_buckets/4, then logarithmic."""
  half = num_buckets // 2
  bucket = (rel_QK > 0).astype(jnp.int32) * half
  n = jnp.abs(rel_QK)
  exact = half // 2
  large = exact + (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
                   * (half - exact)).astype(jnp.int32)
  return bucket + jnp.where(n < exact, n, jnp.minimum(large, half - 1))


class T5Attention(nnx.Module):

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs, has_bias: bool):
    inner = cfg.num_heads * cfg.d_kv
    for name, (din, dout) in {"q": (cfg.d_model, inner), "k": (cfg.d_model, inner), "v": (cfg.d_model, inner),
                              "o": (inner, cfg.d_model)}.items():
      setattr(self, name, nnx.Linear(din, dout, use_bias=False, rngs=rngs, **_kw(cfg)))
    self.relative_attention_bias = (nnx.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, rngs=rngs, **_kw(cfg))
                                    if has_bias else None)
    self.cfg = cfg

  def position_bias(self, length: int) -> jax.Array:
    """[1, H, L, L] from this (first) layer's bucket table."""
    pos = jnp.arange(length)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.relative_attention_num_buckets,
                                       self.cfg.relative_attention_max_distance)
    return jnp.einsum("qkh->hqk", self.relative_attention_bias(buckets))[None].astype(jnp.float32)

  def __call__(self, x_BLD: jax.Array, bias_1HLL: jax.Array, mask_BL: jax.Array) -> jax.Array:
    b, length, _ = x_BLD.shape
    heads = lambda t: t.reshape(b, length, self.cfg.num_heads, self.cfg.d_kv)
    q, k, v = heads(self.q(x_BLD)), heads(self.k(x_BLD)), heads(self.v(x_BLD))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias_1HLL
    scores = jnp.where(mask_BL[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
    return self.o(out.reshape(b, length, -1))


class T5LayerSelfAttention(nnx.Module):

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs, has_bias: bool):
    self.SelfAttention = T5Attention(cfg, rngs, has_bias)  # pylint: disable=invalid-name  (the checkpoint's name)
    self.layer_norm = T5LayerNorm(cfg.d_model, cfg)


class T5DenseGatedActDense(nnx.Module):

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs):
    self.wi_0 = nnx.Linear(cfg.d_model, cfg.d_ff, use_bias=False, rngs=rngs, **_kw(cfg))
    self.wi_1 = nnx.Linear(cfg.d_model, cfg.d_ff, use_bias=False, rngs=rngs, **_kw(cfg))
    self.wo = nnx.Linear(cfg.d_ff, cfg.d_model, use_bias=False, rngs=rngs, **_kw(cfg))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.wo(jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x))


class T5LayerFF(nnx.Module):

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs):
    self.DenseReluDense = T5DenseGatedActDense(cfg, rngs)  # pylint: disable=invalid-name
    self.layer_norm = T5LayerNorm(cfg.d_model, cfg)


class T5Block(nnx.Module):

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs, has_bias: bool):
    self.layer = nnx.List([T5LayerSelfAttention(cfg, rngs, has_bias), T5LayerFF(cfg, rngs)])

  def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
    attn, ff = self.layer
    x = x + attn.SelfAttention(attn.layer_norm(x), bias, mask)
    return x + ff.DenseReluDense(ff.layer_norm(x))


class T5Stack(nnx.Module):

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs):
    self.block = nnx.List([T5Block(cfg, rngs, has_bias=i == 0) for i in range(cfg.num_layers)])
    self.final_layer_norm = T5LayerNorm(cfg.d_model, cfg)


class T5EncoderModel(nnx.Module):
  """token ids [B, L] (+ mask) -> token states [B, L, d_model]."""

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs):
    self.shared = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, **_kw(cfg))
    self.encoder = T5Stack(cfg, rngs)

  def __call__(self, ids_BL: jax.Array, mask_BL: jax.Array | None = None) -> jax.Array:
    mask_BL = jnp.ones(ids_BL.shape, bool) if mask_BL is None else mask_BL.astype(bool)
    x = self.shared(ids_BL)
    bias = self.encoder.block[0].layer[0].SelfAttention.position_bias(ids_BL.shape[1])
    for blk in self.encoder.block:
      x = blk(x, bias, mask_BL)
    return self.encoder.final_layer_norm(x)
