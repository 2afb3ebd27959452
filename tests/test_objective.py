"""Rectified flow: the shifted schedule, per-pair times, which pairs carry loss, caption dropout."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cinema_jax import goldenmem
from cinema_jax.training import objective


def _o(**kw):
  o = ml_collections.ConfigDict(dict(t_mean=0.0, t_std=1.0, shift=True, loss_pairs="all", context_t=(0.0, 0.0),
                                     caption_dropout=0.1, guidance=0.0))
  o.update(kw)
  return o


def test_shift_matches_flux():
  assert objective.shift_mu(256) == pytest.approx(0.5)
  assert objective.shift_mu(4096) == pytest.approx(1.15)
  t = jnp.linspace(0, 1, 11)
  s = objective.time_shift(t, 1.15)
  assert float(s[0]) == 0.0 and float(s[-1]) == pytest.approx(1.0)
  assert bool(jnp.all(s[1:-1] > t[1:-1]))  # more time spent near noise
  assert bool(jnp.all(jnp.diff(s) > 0))
  np.testing.assert_allclose(objective.time_shift(jnp.float32(0.5), 0.0), 0.5)


def test_every_pair_gets_its_own_time():
  t, w = objective.pair_times(jax.random.key(0), 64, 8, _o(), 128)
  assert t.shape == (64, 8) and bool(jnp.all(w == 1))
  assert float(jnp.std(t, axis=1).mean()) > 0.1
  assert 0.0 < float(t.min()) and float(t.max()) < 1.0


def test_last_pair_mode_keeps_context_light():
  t, w = objective.pair_times(jax.random.key(0), 64, 8, _o(loss_pairs="last", context_t=(0.0, 0.25)), 128)
  np.testing.assert_array_equal(w, np.broadcast_to(np.arange(8) == 7, (64, 8)))
  assert float(t[:, :7].max()) <= 0.25 and float(t[:, 7].std()) > 0.1
  noisy, _ = objective.pair_times(jax.random.key(2), 64, 8, _o(loss_pairs="last", context_t=(0.001, 0.25)), 128)
  assert 0.001 <= float(noisy[:, :7].min()) and float(noisy[:, :7].max()) <= 0.25
  clean, _ = objective.pair_times(jax.random.key(1), 4, 8, _o(loss_pairs="last"), 128)
  np.testing.assert_array_equal(clean[:, :7], 0.0)


def test_newest_group_mode_puts_loss_on_the_full_resolution_group():
  o = _o(loss_pairs="newest_group", context_t=(0.001, 0.25))
  t, w = objective.pair_times(jax.random.key(0), 64, 12, o, 128, newest_group=4)
  np.testing.assert_array_equal(w, np.broadcast_to(np.arange(12) >= 8, (64, 12)))
  assert 0.001 <= float(t[:, :8].min()) and float(t[:, :8].max()) <= 0.25
  assert float(t[:, 8:].std()) > 0.1
  _, w_all = objective.pair_times(jax.random.key(0), 4, 12, o, 128)  # no groups: every pair is newest
  assert bool(jnp.all(w_all == 1))
  # flow_loss passes the newest group's size: errors in compressed groups do not move the loss.
  xs = (jnp.zeros((2, 8, 2, 6)), jnp.zeros((2, 4, 32, 6)))
  fine = objective.flow_loss(lambda x_t, t: tuple(jnp.zeros_like(x) for x in x_t), xs, jax.random.key(1), o)[0]
  bad_old = objective.flow_loss(lambda x_t, t: (x_t[0] + 5.0, jnp.zeros_like(x_t[1])), xs, jax.random.key(1), o)[0]
  np.testing.assert_allclose(bad_old, fine)


def _data(seed=0):
  return jax.random.normal(jax.random.key(seed), (4, 3, 16, 6))


def test_loss_is_zero_for_the_true_velocity_and_positive_otherwise():
  x0 = _data()

  def oracle(x_t, t):  # recovers eps - x0 = (x_t - x0) / t exactly
    return (x_t - x0) / t[..., None, None]

  loss, aux = objective.flow_loss(oracle, x0, jax.random.key(3), _o())
  assert float(loss) < 1e-6
  zero, _ = objective.flow_loss(lambda x_t, t: jnp.zeros_like(x_t), x0, jax.random.key(3), _o())
  # v = eps - x0 has E|v|^2 = 1 + E|x0|^2 = 2 for unit-normal data
  assert 1.6 < float(zero) < 2.4
  assert 0.0 < float(aux["t_mean"]) < 1.0


def test_only_loss_pairs_count():
  x0 = _data()

  def wrong_but_last(x_t, t):
    v = (x_t - x0) / jnp.maximum(t[..., None, None], 1e-6)
    return v.at[:, :-1].set(1e3)  # garbage everywhere except the last pair

  last, _ = objective.flow_loss(wrong_but_last, x0, jax.random.key(4), _o(loss_pairs="last", context_t=(0.0, 0.1)))
  every, _ = objective.flow_loss(wrong_but_last, x0, jax.random.key(4), _o())
  assert float(last) < 1e-4 and float(every) > 1e4


def test_caption_dropout():
  states, mask, pooled = jnp.ones((8, 4, 5, 3)), jnp.ones((8, 4, 5), bool), jnp.ones((8, 4, 2))
  kept = objective.drop_captions(jax.random.key(0), states, mask, pooled, 0.0)
  assert all(bool(jnp.all(a == b)) for a, b in zip(kept, (states, mask, pooled)))
  dropped = objective.drop_captions(jax.random.key(0), states, mask, pooled, 1.0)
  assert not bool(dropped[1].any()) and float(jnp.abs(dropped[0]).sum()) == 0 and float(dropped[2].sum()) == 0
  half = objective.drop_captions(jax.random.key(0), states, mask, pooled, 0.5)
  per_pair = half[1].any(-1)
  assert 0.2 < float(per_pair.mean()) < 0.8
  np.testing.assert_array_equal(half[2][..., 0] == 1, per_pair)  # pooled goes with its pair's caption


def test_loss_over_groups_of_pairs():
  """GoldenMem groups of pairs (with their own token counts) go through the same loss, pair by pair."""
  x0 = _data()
  groups = (x0[:, :2, :4], x0[:, 2:])  # two older pairs compressed to 4 tokens, the newest at 16

  def oracle(x_t, t):
    return tuple((x - g) / tt[..., None, None] for x, g, tt in zip(x_t, groups, goldenmem.split_pairs(t, groups)))

  loss, _ = objective.flow_loss(oracle, groups, jax.random.key(3), _o())
  assert float(loss) < 1e-6
  zero, _ = objective.flow_loss(lambda x_t, t: tuple(jnp.zeros_like(x) for x in x_t), groups, jax.random.key(3), _o())
  assert 1.6 < float(zero) < 2.4
  v = objective.velocity(groups, tuple(g * 2 for g in groups), jnp.full((4, 3), 0.5), "x")
  np.testing.assert_allclose(v[0], groups[0] * 2)
  np.testing.assert_allclose(v[1], groups[1] * 2)
