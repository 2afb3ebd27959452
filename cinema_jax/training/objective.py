"""Rectified flow over interleaved pairs: x_t = (1 - t) x0 + t eps, the model predicts v = eps - x0.

Every pair draws its own t (logit-normal, shifted by the image-token count as in SD3/FLUX), so a
training example mixes clean-ish and noisy pairs, the way the context looks at sampling time.
Image tokens are one array [B, P, N, C] or a tuple of GoldenMem groups [B, n_g, N_g, C] (oldest first);
per-pair quantities ([B, P]) are split over the groups.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from cinema_jax import config_validation
from cinema_jax import goldenmem


def shift_mu(num_image_tokens: int, base: tuple[int, float] = (256, 0.5),
             top: tuple[int, float] = (4096, 1.15)) -> float:
  """FLUX's resolution shift: mu linear in the image-token count (256 -> 0.5, 4096 -> 1.15)."""
  slope = (top[1] - base[1]) / (top[0] - base[0])
  return base[1] + slope * (num_image_tokens - base[0])


def time_shift(t: jax.Array, mu: float) -> jax.Array:
  """t' = e^mu / (e^mu + 1/t - 1): more time near t = 1 (noise) for larger images; fixes 0 and 1."""
  e = jnp.exp(jnp.float32(mu))
  return jnp.where(t > 0, e / (e + 1.0 / jnp.maximum(t, 1e-12) - 1.0), 0.0)


def sample_t(key: jax.Array, shape: tuple[int, ...], o: config_validation.Objective,
             num_image_tokens: int) -> jax.Array:
  t = jax.nn.sigmoid(o.t_mean + o.t_std * jax.random.normal(key, shape))
  return time_shift(t, shift_mu(num_image_tokens)) if o.shift else t


LOSS_PAIRS = ("all", "last", "newest_group")


def pair_times(key: jax.Array, batch: int, num_pairs: int, o: config_validation.Objective,
               num_image_tokens: int, newest_group: int | None = None) -> tuple[jax.Array, jax.Array]:
  """(t [B, P], loss weight [B, P]) by config.objective.loss_pairs.

  all: every pair has its own t and carries loss. last / newest_group: only the last pair / the last
  `newest_group` pairs (GoldenMem's full-resolution group; all pairs when there are no groups) do;
  the others are context at t ~ U[config.objective.context_t].
  """
  k1, k2 = jax.random.split(key)
  t = sample_t(k1, (batch, num_pairs), o, num_image_tokens)
  if o.loss_pairs == "all":
    return t, jnp.ones((batch, num_pairs), jnp.float32)
  if o.loss_pairs not in LOSS_PAIRS:
    raise ValueError(f"config.objective.loss_pairs={o.loss_pairs!r}: expected one of {LOSS_PAIRS}")
  carries = 1 if o.loss_pairs == "last" else (newest_group or num_pairs)
  lo, hi = o.context_t
  context = jax.random.uniform(k2, (batch, num_pairs), minval=lo, maxval=hi)
  has_loss = jnp.arange(num_pairs) >= num_pairs - carries
  return jnp.where(has_loss, t, context), jnp.broadcast_to(has_loss, (batch, num_pairs)).astype(jnp.float32)


def drop_captions(key: jax.Array, states, mask, pooled, rate: float):
  """Replaces each pair's caption by the empty caption with probability `rate` (for CFG)."""
  keep = jax.random.uniform(key, mask.shape[:2]) >= rate  # [B, P]
  return states * keep[..., None, None], mask & keep[..., None], pooled * keep[..., None]


def velocity(out_BPNC, x_t_BPNC, t_BP: jax.Array, prediction: str, t_min: float = 0.05):
  """The flow velocity from the network output: itself ("v", FLUX), or from a clean-image estimate ("x").

  x-prediction (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise") lets a narrow
  network with large patches work: a token wider than the model cannot carry the noise through, but
  the clean image lies on a low-dimensional manifold. v = (x_t - x0_hat) / t, with t clamped at t_min.
  Works on one array or on a tuple of groups.
  """
  if prediction not in ("v", "x"):
    raise ValueError(f"config.objective.prediction={prediction!r}: expected 'v' or 'x'")
  if prediction == "v":
    return out_BPNC
  if isinstance(out_BPNC, (tuple, list)):
    return tuple(velocity(o, x, t, prediction, t_min)
                 for o, x, t in zip(out_BPNC, x_t_BPNC, goldenmem.split_pairs(t_BP, tuple(out_BPNC))))
  return (x_t_BPNC - out_BPNC) / jnp.maximum(t_BP, t_min)[..., None, None]


def flow_loss(apply: Callable[..., Any], x0_BPNC, key: jax.Array, o: config_validation.Objective,
              num_image_tokens: int | None = None) -> tuple[jax.Array, dict[str, Any]]:
  """Mean squared velocity error over the pairs that carry loss (each pair's error a mean over its tokens).

  apply(x_t, t) -> v_pred: the model with its text conditioning bound, its output already turned into
  a velocity (see `velocity`). x0 is one array or a tuple of groups; num_image_tokens (for the time
  shift) defaults to the newest group's tokens per frame, the full resolution.
  """
  grouped = isinstance(x0_BPNC, (tuple, list))
  xs = tuple(x0_BPNC) if grouped else (x0_BPNC,)
  b, p = xs[0].shape[0], sum(x.shape[1] for x in xs)
  k_t, k_eps = jax.random.split(key)
  t, weight = pair_times(k_t, b, p, o, num_image_tokens or xs[-1].shape[2], newest_group=xs[-1].shape[1])
  eps = tuple(jax.random.normal(k, x.shape, x.dtype) for k, x in zip(jax.random.split(k_eps, len(xs)), xs))
  x_t = tuple((1 - tt[..., None, None]) * x + tt[..., None, None] * e
              for x, e, tt in zip(xs, eps, goldenmem.split_pairs(t, xs)))
  v = apply(x_t if grouped else x_t[0], t)
  v = tuple(v) if grouped else (v,)
  err = jnp.concatenate([jnp.mean(jnp.square(vv.astype(jnp.float32) - (e - x)), axis=(2, 3))
                         for vv, e, x in zip(v, eps, xs)], axis=1)  # [B, P]
  loss = jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)
  return loss, {"loss": loss, "t_mean": jnp.mean(t)}
