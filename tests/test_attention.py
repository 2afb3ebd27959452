"""The attention backends and ring attention against the XLA reference, for every mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cinema_jax import config_validation
from cinema_jax import sharding
from cinema_jax.models import attention
from cinema_jax.models import ring

MASKS = {"full": {}, "block_causal": {"causal": True}, "pair_diagonal": {"same_pair": True}}


def _inputs(t=37, seed=0, padding=True):
  """[2, t, 4, 8] q/k/v; pairs of uneven lengths (5..9 tokens); padding keys in each pair when asked."""
  ks = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(x, (2, t, 4, 8)) for x in ks)
  pairs = np.repeat(np.arange(t), np.random.default_rng(seed).integers(5, 10, t))[:t]
  kv_mask = np.ones((2, t), bool)
  if padding:  # the last token of each pair but one, and the second example's 3 last tokens of pair 0
    last = np.flatnonzero(np.diff(pairs))
    kv_mask[:, last[1:]] = False
    kv_mask[1, last[0] - 2:last[0] + 1] = False
  return q, k, v, dict(kv_mask_BS=jnp.asarray(kv_mask), q_pairs_T=jnp.asarray(pairs), kv_pairs_S=jnp.asarray(pairs))


BACKENDS = {  # blocks of 8 and 16: several of each, the last ones ragged, masked ones skipped
    "blockwise": lambda q, k, v, **kw: attention.blockwise.attention(q, k, v, **kw, block_q=8, block_k=16),
    # Pallas interpret mode off TPU; static (numpy) pair ids, as the model passes them
    "splash": lambda q, k, v, **kw: attention.attention(q, k, v, backend="splash", **_static(kw)),
}


def _static(kw):
  return {k: np.asarray(v) if k.endswith("pairs_T") or k.endswith("pairs_S") else v for k, v in kw.items()}


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_equals_the_reference(backend, mask, padding):
  q, k, v, kw = _inputs(padding=padding)
  kw.update(MASKS[mask])
  ref = attention.attention(q, k, v, backend="xla", **kw)
  out = jax.jit(lambda q, k, v: BACKENDS[backend](q, k, v, **kw))(q, k, v)
  np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("mask", ["block_causal", "pair_diagonal"])
def test_backend_gradients_equal_the_reference(mask):
  q, k, v, kw = _inputs(seed=1)
  kw.update(MASKS[mask])
  cot = jax.random.normal(jax.random.key(9), q.shape)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * cot)
  ref = jax.grad(loss(lambda q, k, v: attention.attention(q, k, v, backend="xla", **kw)), (0, 1, 2))(q, k, v)
  blk = jax.jit(jax.grad(loss(lambda q, k, v: attention.blockwise.attention(q, k, v, **kw, block_q=8, block_k=8)),
                         (0, 1, 2)))(q, k, v)
  for g, r in zip(blk, ref):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)
  if mask == "block_causal":  # splash's own backward kernels (interpret mode)
    spl = jax.jit(jax.grad(loss(lambda q, k, v: BACKENDS["splash"](q, k, v, **kw)), (0, 1, 2)))(q, k, v)
    for g, r in zip(spl, ref):
      np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)


def _mesh(**axes):
  sizes = {**dict(data=1, fsdp=1, context=1, tensor=1), **axes}
  return sharding.make_mesh(config_validation.Mesh(**sizes), jax.devices()[:int(np.prod(list(sizes.values())))])


def test_splash_runs_per_shard_under_a_mesh():
  q, k, v, kw = _inputs(seed=3)
  kw.update(causal=True)
  ref = attention.attention(q, k, v, backend="xla", **kw)
  with jax.set_mesh(_mesh(data=2, tensor=2)):  # 2 examples over data, 4 heads over tensor
    fn = jax.jit(lambda q, k, v: attention.attention(q, k, v, backend="splash", **_static(kw)))
    out = fn(q, k, v)
    with pytest.raises(ValueError, match="static"):
      jax.jit(lambda q, k, v: attention.attention(q, k, v, backend="splash", **kw))(q, k, v)
  np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


def test_zigzag_gives_each_shard_two_mirrored_pieces():
  order = ring.zigzag_order(16, 4)
  np.testing.assert_array_equal(order.reshape(4, 4), [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11],
                                                        [6, 7, 8, 9]])


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("mask", list(MASKS))
def test_ring_attention_equals_the_reference(mask, padding):
  q, k, v, kw = _inputs(padding=padding)
  kw.update(MASKS[mask])
  ref = attention.attention(q, k, v, backend="xla", **kw)
  mesh = _mesh(data=2, context=4)  # 37 tokens: padded to 8 (or 40 zigzag) pieces inside
  with jax.set_mesh(mesh):
    fn = jax.jit(lambda q, k, v: attention.attention(q, k, v, context_parallel=True, **kw))
    out = fn(q, k, v)
    assert "collective-permute" in fn.lower(q, k, v).as_text(dialect="hlo")
  np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


def test_ring_attention_gradients_equal_the_reference():
  q, k, v, kw = _inputs(seed=2)
  kw.update(causal=True)
  cot = jax.random.normal(jax.random.key(9), q.shape)
  loss = lambda cp: lambda q, k, v: jnp.sum(attention.attention(q, k, v, context_parallel=cp, **kw) * cot)
  ref = jax.grad(loss(False), (0, 1, 2))(q, k, v)
  with jax.set_mesh(_mesh(context=4, tensor=2)):
    got = jax.jit(jax.grad(loss(True), (0, 1, 2)))(q, k, v)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)
