"""The one integration loop of keyframes and shots: the shifted rectified-flow time schedule, Euler steps,
and classifier-free guidance of a batch that holds the conditional and caption-free passes together."""

import jax
import numpy as np

from cinema_jax.training import objective


def schedule(num_steps: int, num_image_tokens: int, shift: bool) -> np.ndarray:
  """Times from 1 (noise) to 0 (data), [num_steps + 1], shifted like training."""
  t = np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64)
  if shift:  # objective.time_shift, in numpy: the schedule is a compile-time constant
    e = np.exp(objective.shift_mu(num_image_tokens))
    t = np.where(t > 0, e / (e + 1.0 / np.maximum(t, 1e-12) - 1.0), 0.0)
  return t.astype(np.float32)


def guided(velocity_2B, guidance):
  """Classifier-free guidance, v_u + g (v_c - v_u), from the velocities of a batch whose first half is
  the conditional pass and whose second half the caption-free one (arrays or tuples of groups)."""
  half = jax.tree.leaves(velocity_2B)[0].shape[0] // 2
  return jax.tree.map(lambda v: v[half:] + guidance * (v[:half] - v[half:]), velocity_2B)


def euler(velocity, x, times: jax.Array, num_steps: int):
  """x from times[0] (noise) to times[num_steps] (data) by Euler steps of dx/dt = velocity(x, i), where
  i is the step; x is an array or a tuple of groups. The one integration loop of keyframes and shots."""
  def body(i, x):
    dt = times[i + 1] - times[i]
    return jax.tree.map(lambda a, v: a + dt * v, x, velocity(x, i))
  return jax.lax.fori_loop(0, num_steps, body, x)
