"""Multi-axis rotary position embedding as in FLUX: each axis of the position ids rotates its own
slice of the head dimension; pairs of adjacent channels (2i, 2i+1) are rotated together."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def frequencies(ids_XA: jax.Array, axes_dim: tuple[int, ...], theta: float) -> tuple[jax.Array, jax.Array]:
  """(cos, sin), each float32 [..., sum(axes_dim) // 2], for position ids [..., len(axes_dim)]."""
  if ids_XA.shape[-1] != len(axes_dim):
    raise ValueError(f"ids have {ids_XA.shape[-1]} axes, axes_dim {axes_dim} has {len(axes_dim)}")
  angles = []
  for a, dim in enumerate(axes_dim):
    omega = 1.0 / theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles.append(ids_XA[..., a:a + 1].astype(jnp.float32) * omega)
  angle = jnp.concatenate(angles, axis=-1)
  return jnp.cos(angle), jnp.sin(angle)


def apply(x_XHD: jax.Array, cos_XF: jax.Array, sin_XF: jax.Array) -> jax.Array:
  """Rotates x [..., H, D] by (cos, sin) [..., D // 2] (broadcast over heads), in float32."""
  x = x_XHD.astype(jnp.float32).reshape(*x_XHD.shape[:-1], -1, 2)
  cos, sin = cos_XF[..., None, :], sin_XF[..., None, :]
  x0, x1 = x[..., 0], x[..., 1]
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(x_XHD.shape).astype(x_XHD.dtype)
