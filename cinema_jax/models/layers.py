"""Small building blocks shared by the MM-DiT blocks and the text encoder.

Parameters carry logical axis names (cinema_jax/sharding.py maps them to mesh axes):
  embed  the model width          mlp    MLP hidden width       qkv  fused q/k/v outputs
  mod    adaLN modulation outputs  in     input features         norm per-head norm scales
  vocab  token vocabulary          layers the stacked-layer axis (added by scan stacking)
"""

from __future__ import annotations

import math

from flax import nnx
import jax
import jax.numpy as jnp


def dense(din: int, dout: int, axes: tuple[str | None, str | None], rngs: nnx.Rngs, *, dtype, param_dtype,
          use_bias: bool = True, zero_init: bool = False) -> nnx.Linear:
  """nnx.Linear (kernel [din, dout], the transpose of torch's) with logical axis names."""
  kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
  return nnx.Linear(
      din, dout, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nnx.with_partitioning(kernel_init, axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
      rngs=rngs)


def rms_norm(dim: int, rngs: nnx.Rngs, *, dtype, param_dtype) -> nnx.RMSNorm:
  return nnx.RMSNorm(dim, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                     scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)), rngs=rngs)


def layer_norm(dim: int, rngs: nnx.Rngs, *, dtype, param_dtype) -> nnx.LayerNorm:
  """LayerNorm without affine parameters (adaLN supplies scale and shift)."""
  return nnx.LayerNorm(dim, epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0,
                       time_factor: float = 1000.0) -> jax.Array:
  """FLUX's sinusoidal embedding of t in [0, 1] (scaled by 1000): [cos | sin], float32 [..., dim]."""
  t = time_factor * t.astype(jnp.float32)
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class MLPEmbedder(nnx.Module):
  """in_layer -> SiLU -> out_layer (FLUX's time/guidance/vector embedders)."""

  def __init__(self, in_dim: int, hidden: int, rngs: nnx.Rngs, *, dtype, param_dtype):
    self.in_layer = dense(in_dim, hidden, ("in", "embed"), rngs, dtype=dtype, param_dtype=param_dtype)
    self.out_layer = dense(hidden, hidden, ("embed", None), rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out_layer(jax.nn.silu(self.in_layer(x)))


class Modulation(nnx.Module):
  """adaLN: n (shift, scale, gate) triples, or n halves, from the conditioning vector.

  vec is per pair, [B, P, D]; outputs are [B, P, 1, D] so they broadcast over the pair's tokens.
  """

  def __init__(self, dim: int, chunks: int, rngs: nnx.Rngs, *, dtype, param_dtype):
    self.chunks = chunks
    # Zero init (adaLN-Zero): a fresh block starts as the identity, which trains stably from scratch.
    self.lin = dense(dim, chunks * dim, ("embed", "mod"), rngs, dtype=dtype, param_dtype=param_dtype,
                     zero_init=True)

  def __call__(self, vec_BPD: jax.Array) -> list[jax.Array]:
    out = self.lin(jax.nn.silu(vec_BPD))[..., None, :]
    return jnp.split(out, self.chunks, axis=-1)


def modulate(x_BPTD: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x_BPTD * (1 + scale) + shift
