"""The interleaved MM-DiT: pair-by-pair attention, block-causal masking, per-pair modulation, RoPE ids."""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cinema_jax.models import attention
from cinema_jax.models import mmdit
from cinema_jax.models import rope

CFG = mmdit.MMDiTConfig(in_channels=12, hidden=48, num_heads=2, depth_double=2, depth_single=2, context_dim=20,
                        vec_dim=8, axes_dim=(4, 10, 10), guidance_embed=False)
B, P, GH, GW, L = 2, 3, 2, 4, 5


def _model(cfg=CFG, seed=0):
  """A model with every parameter random (no zero-initialised gates), so every path matters."""
  with nnx.use_eager_sharding(False):
    model = mmdit.MMDiT(cfg, nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [0.2 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def _inputs(seed=0, p=P):
  k = jax.random.split(jax.random.key(seed), 5)
  img_ids, txt_ids = mmdit.position_ids(p, L, GH, GW)
  mask = jnp.ones((B, p, L), bool).at[:, :, -2:].set(False)  # padded text
  return dict(img_BPNC=jax.random.normal(k[0], (B, p, GH * GW, 12)),
              img_ids_BPN3=jnp.broadcast_to(img_ids, (B, *img_ids.shape)),
              txt_BPLE=jax.random.normal(k[1], (B, p, L, 20)),
              txt_ids_BPL3=jnp.broadcast_to(txt_ids, (B, *txt_ids.shape)),
              txt_mask_BPL=mask, t_BP=jax.random.uniform(k[2], (B, p)), y_BPV=jax.random.normal(k[3], (B, p, 8)))


def _slice_pairs(inputs, stop):
  return {k: v[:, :stop] for k, v in inputs.items()}


def test_position_ids():
  img, txt = mmdit.position_ids(3, 4, 2, 5)
  assert img.shape == (3, 10, 3) and txt.shape == (3, 4, 3)
  np.testing.assert_array_equal(txt[2], [[2, 0, 0]] * 4)
  np.testing.assert_array_equal(img[1, 7], [1, 1, 2])  # token 7 of a 2x5 grid: row 1, col 2
  np.testing.assert_array_equal(img[:, :, 0], np.repeat(np.arange(3)[:, None], 10, axis=1))


def test_rope_is_relative_along_each_axis():
  k1, k2 = jax.random.split(jax.random.key(0))
  q, k = jax.random.normal(k1, (1, 1, 24)), jax.random.normal(k2, (1, 1, 24))
  axes = (4, 10, 10)

  def dot(pos_q, pos_k):
    cq, sq = rope.frequencies(jnp.array([pos_q], jnp.float32), axes, 1e4)
    ck, sk = rope.frequencies(jnp.array([pos_k], jnp.float32), axes, 1e4)
    return float(jnp.sum(rope.apply(q, cq, sq) * rope.apply(k, ck, sk)))

  np.testing.assert_allclose(dot([1, 2, 3], [0, 5, 1]), dot([4, 7, 9], [3, 10, 7]), rtol=1e-5)
  assert abs(dot([1, 2, 3], [0, 5, 1]) - dot([1, 2, 3], [0, 5, 2])) > 1e-3
  cos, sin = rope.frequencies(jnp.array([[3.0, 1.0, 2.0]]), axes, 1e4)
  np.testing.assert_allclose(jnp.linalg.norm(rope.apply(q, cos, sin)), jnp.linalg.norm(q), rtol=1e-6)


def test_pair_by_pair_attention_equals_masked_full_attention():
  k = jax.random.split(jax.random.key(1), 4)
  shape = (B, P, L + GH * GW, 2, 24)
  q, kk, v = (jax.random.normal(x, shape) for x in k[:3])
  ids = jnp.concatenate(mmdit.position_ids(P, L, GH, GW)[::-1], axis=1)
  cos, sin = rope.frequencies(jnp.broadcast_to(ids, (B, *ids.shape)), (4, 10, 10), 1e4)
  valid = jnp.ones((B, P, shape[2]), bool).at[:, :, 1:3].set(False)
  ctx = mmdit.Context(cos_BPTF=(cos,), sin_BPTF=(sin,), kv_mask_BPT=(valid,), causal=False, backend="xla")
  out = mmdit._attend_within_pairs(q, kk, v, ctx)  # pylint: disable=protected-access

  # Reference: one sequence of all pairs, with a block-diagonal (same-pair) mask.
  t = P * shape[2]
  flat = lambda x: rope.apply(x, cos, sin).reshape(B, t, 2, 24)
  pair = jnp.repeat(jnp.arange(P), shape[2])
  scores = jnp.einsum("bthd,bshd->bhts", flat(q), flat(kk)) / np.sqrt(24)
  mask = (pair[:, None] == pair[None, :])[None, None] & valid.reshape(B, 1, 1, t)
  probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
  ref = jnp.einsum("bhts,bshd->bthd", probs, v.reshape(B, t, 2, 24)).reshape(B, P, shape[2], 48)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["dot_product"])
def test_attention_backends_match_the_reference(backend):
  k = jax.random.split(jax.random.key(2), 3)
  q, kk, v = (jax.random.normal(x, (2, 12, 2, 8)) for x in k)
  pairs = jnp.repeat(jnp.arange(3), 4)
  kv_mask = jnp.ones((2, 12), bool).at[:, 5].set(False)
  kw = dict(kv_mask_BS=kv_mask, q_pairs_T=pairs, kv_pairs_S=pairs, causal=True)
  np.testing.assert_allclose(attention.attention(q, kk, v, backend=backend, **kw),
                             attention.attention(q, kk, v, backend="xla", **kw), atol=1e-5)


def test_block_causal_prefix_equals_the_model_on_that_prefix():
  # Under the block-causal mask pair i sees pairs <= i only, and each pair is modulated by its own t:
  # the output for the first k pairs is the model's output when only those k pairs exist.
  model, x = _model(), _inputs()
  full = model(**x, causal=True)
  for stop in (1, 2):
    np.testing.assert_allclose(full[:, :stop], model(**_slice_pairs(x, stop), causal=True), atol=2e-5, rtol=1e-4)
  # Changing the last pair (its image, caption and time) leaves earlier pairs bitwise unchanged ...
  changed = dict(x, img_BPNC=x["img_BPNC"].at[:, -1].add(1.0), t_BP=x["t_BP"].at[:, -1].set(0.9),
                 txt_BPLE=x["txt_BPLE"].at[:, -1].mul(-1.0))
  out = model(**changed, causal=True)
  np.testing.assert_array_equal(out[:, :-1], full[:, :-1])
  assert not np.allclose(out[:, -1], full[:, -1], atol=1e-3)
  # ... while the bidirectional mask lets it reach them.
  bidir = model(**x), model(**changed)
  assert not np.allclose(bidir[0][:, 0], bidir[1][:, 0], atol=1e-4)


def test_each_pair_is_modulated_by_its_own_time():
  model, x = _model(), _inputs()
  base = model(**x, causal=True)
  moved = model(**dict(x, t_BP=x["t_BP"].at[:, 1].set(0.123)), causal=True)
  np.testing.assert_array_equal(moved[:, 0], base[:, 0])
  assert not np.allclose(moved[:, 1], base[:, 1], atol=1e-3)


def test_padded_text_tokens_are_ignored():
  model, x = _model(), _inputs()
  junk = x["txt_BPLE"].at[:, :, -2:].set(100.0)  # the last two text tokens are padding
  np.testing.assert_allclose(model(**dict(x, txt_BPLE=junk)), model(**x), atol=1e-5)
  real = x["txt_BPLE"].at[:, :, 0].set(100.0)
  assert not np.allclose(model(**dict(x, txt_BPLE=real)), model(**x), atol=1e-3)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_change_memory_not_values(remat):
  import dataclasses  # pylint: disable=g-import-not-at-top
  x = _inputs()
  ref = _model()
  other = _model(dataclasses.replace(CFG, remat=remat))
  loss = lambda m: jnp.sum(m(**x) ** 2)
  np.testing.assert_allclose(loss(other), loss(ref), rtol=1e-6)
  g_ref = jax.tree.leaves(nnx.grad(loss)(ref))
  g_other = jax.tree.leaves(nnx.grad(loss)(other))
  for a, b in zip(g_ref, g_other):  # fp32 reassociation only: errors far below each gradient's scale
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(a))))


def test_config_errors():
  import dataclasses  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"model.axes_dim=\(4, 10, 8\) sums to 22, the head dim is 24"):
    dataclasses.replace(CFG, axes_dim=(4, 10, 8)).validate()
  with pytest.raises(ValueError, match="model.remat='some'"):
    dataclasses.replace(CFG, remat="some").validate()


@pytest.mark.parametrize("causal", [False, True])
def test_pairs_in_groups_compute_what_one_group_computes(causal):
  """Splitting the pairs into groups (GoldenMem's levels, here all at one grid) changes nothing."""
  model, x = _model(), _inputs(p=4)
  whole = model(**x, causal=causal)
  split = lambda a: (a[:, :1], a[:, 1:3], a[:, 3:])
  grouped = model(**dict(x, img_BPNC=split(x["img_BPNC"]), img_ids_BPN3=split(x["img_ids_BPN3"])), causal=causal)
  np.testing.assert_allclose(jnp.concatenate(grouped, axis=1), whole, atol=2e-5, rtol=1e-4)


def test_groups_may_have_their_own_token_grids():
  model, x = _model(), _inputs(p=3)
  small = jax.random.normal(jax.random.key(9), (B, 2, 2, 12))  # two older pairs at a 1x2 grid
  ids = jnp.broadcast_to(jnp.array([[[p, 0.5, 1.5], [p, 0.5, 5.5]] for p in range(2)]), (B, 2, 2, 3))
  groups = dict(x, img_BPNC=(small, x["img_BPNC"][:, 2:]), img_ids_BPN3=(ids, x["img_ids_BPN3"][:, 2:]))
  old, new = model(**groups, causal=True)
  assert old.shape == (B, 2, 2, 12) and new.shape == (B, 1, GH * GW, 12)
  # Block-causal: the compressed context does not see the newest pair, the newest pair sees it.
  moved = dict(groups, img_BPNC=(small, groups["img_BPNC"][1] + 1.0))
  np.testing.assert_allclose(model(**moved, causal=True)[0], old, atol=1e-6)
  changed = dict(groups, img_BPNC=(small + 1.0, groups["img_BPNC"][1]))
  assert not np.allclose(model(**changed, causal=True)[1], new, atol=1e-4)
  with pytest.raises(ValueError, match="image groups hold 2 pairs, t_BP has 3"):
    model(**dict(groups, img_BPNC=(small,), img_ids_BPN3=(ids,)))


def test_kv_cache_gives_the_new_pair_what_the_full_causal_pass_gives():
  """Context pairs filled once into the cache (padding slots masked out), then the new pair alone."""
  model, x = _model(), _inputs(p=4)
  new = 2  # pairs 0, 1 are context, pair 2 is new, pair 3 a padding slot the new pair must not see
  full = model(**x, causal=True)[:, new]
  ctx = {k: v for k, v in x.items()}
  valid = jnp.broadcast_to(jnp.arange(4) < new, (B, 4))
  cache = model.fill_cache(**ctx, pair_valid_BP=valid)
  assert cache.k_LBSHD.shape == (CFG.depth_single, B, 4 * (L + GH * GW), 2, 24)
  one = {k: v[:, new:new + 1] for k, v in x.items()}
  np.testing.assert_allclose(model(**one, causal=True, cache=cache)[:, 0], full, atol=2e-5, rtol=1e-4)
  # Without the cache the new pair is a different computation (it loses its context).
  assert not np.allclose(model(**one, causal=True)[:, 0], full, atol=1e-3)
  # GoldenMem-like groups: the cache covers groups at their own grids.
  split = lambda a: (a[:, :1], a[:, 1:])
  grouped = model.fill_cache(**dict(x, img_BPNC=split(x["img_BPNC"]), img_ids_BPN3=split(x["img_ids_BPN3"])),
                             pair_valid_BP=valid)
  np.testing.assert_allclose(grouped.k_LBSHD, cache.k_LBSHD, atol=2e-5, rtol=1e-4)
  np.testing.assert_array_equal(grouped.mask_BS, cache.mask_BS)


@pytest.mark.parametrize("backend", ["blockwise", "splash"])
def test_model_with_each_attention_backend_equals_the_reference(backend):
  x = _inputs()
  for causal in (False, True):
    ref = _model()(**x, causal=causal)
    got = _model(dataclasses.replace(CFG, attention=backend))(**x, causal=causal)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
