"""The toy world's text encoder: a small transformer over word tokens, trained with the model.

Its tokens come from a tokenizer.json (data_pipelines.tokenizer; the toy world writes a word-level
one, so a name is one token). It gives per-token states (the MM-DiT's text tokens, like T5's) and a
pooled vector (its `y`, like CLIP's): the same two inputs FLUX.1 takes from T5 and CLIP.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from cinema_jax.models import attention as attention_lib
from cinema_jax.models import layers

@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  max_len: int = 48
  vocab_size: int = 128  # at least the tokenizer's (the pipeline checks)
  vec_dim: int = 128
  dtype: str = "float32"
  param_dtype: str = "float32"

  def validate(self) -> None:
    if self.width % self.num_heads:
      raise ValueError(f"model.text.width={self.width} is not a multiple of model.text.num_heads={self.num_heads}")


class _Block(nnx.Module):

  def __init__(self, cfg: TextEncoderConfig, rngs: nnx.Rngs, **kw):
    self.num_heads = cfg.num_heads
    self.norm1 = nnx.LayerNorm(cfg.width, epsilon=1e-6, rngs=rngs, **kw)
    self.qkv = layers.dense(cfg.width, 3 * cfg.width, ("embed", "qkv"), rngs, **kw)
    self.proj = layers.dense(cfg.width, cfg.width, ("qkv", "embed"), rngs, **kw)
    self.norm2 = nnx.LayerNorm(cfg.width, epsilon=1e-6, rngs=rngs, **kw)
    self.fc1 = layers.dense(cfg.width, 4 * cfg.width, ("embed", "mlp"), rngs, **kw)
    self.fc2 = layers.dense(4 * cfg.width, cfg.width, ("mlp", "embed"), rngs, **kw)

  def __call__(self, x_BLD: jax.Array, mask_BL: jax.Array) -> jax.Array:
    qkv = self.qkv(self.norm1(x_BLD)).reshape(*x_BLD.shape[:2], 3, self.num_heads, -1)
    # Fully padded captions (caption dropout) would have no key to attend to: let them see all
    # positions; their states are masked out downstream.
    kv_mask = mask_BL | ~mask_BL.any(axis=1, keepdims=True)
    out = attention_lib.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], kv_mask_BS=kv_mask, backend="xla")
    x = x_BLD + self.proj(out.reshape(x_BLD.shape))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=True))


class TextEncoder(nnx.Module):

  def __init__(self, cfg: TextEncoderConfig, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    kw = {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}
    self.embed = nnx.Embed(cfg.vocab_size, cfg.width, rngs=rngs,
                           embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")),
                           **kw)
    self.pos = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed"))(
        rngs.params(), (cfg.max_len, cfg.width), jnp.dtype(cfg.param_dtype)))
    self.blocks = nnx.List([_Block(cfg, rngs, **kw) for _ in range(cfg.depth)])
    self.norm = nnx.LayerNorm(cfg.width, epsilon=1e-6, rngs=rngs, **kw)
    self.pooled = layers.dense(cfg.width, cfg.vec_dim, ("embed", None), rngs, **kw)

  def __call__(self, tokens_BPL: jax.Array, mask_BPL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(states [B, P, L, width], mask [B, P, L], pooled [B, P, vec_dim])."""
    b, p, l = tokens_BPL.shape
    if l != self.cfg.max_len:
      raise ValueError(f"text has {l} tokens, the text encoder was built for {self.cfg.max_len}")
    tokens, mask = tokens_BPL.reshape(b * p, l), mask_BPL.reshape(b * p, l)
    x = self.embed(tokens) + self.pos[...].astype(jnp.dtype(self.cfg.dtype))
    for block in self.blocks:
      x = block(x, mask)
    x = self.norm(x) * mask[..., None]
    count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
    pooled = self.pooled(x.sum(axis=1) / count)
    return x.reshape(b, p, l, -1), mask.reshape(b, p, l), pooled.reshape(b, p, -1)
