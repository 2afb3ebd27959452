"""Pallas splash attention (TPU) with the interleaved sequence's block mask.

Splash attention takes the mask as data about blocks: which (query block, key block) tiles are empty,
full or partial. The pair mask (block-causal or pair-diagonal) is built from the tokens' pair ids,
static numpy (the model's pair ids follow from the shapes), so empty tiles are skipped by the kernel;
text padding enters as segment ids (a padding key is in segment 0, every query in segment 1). Under a
mesh the kernel runs per shard (shard_map over examples and heads): XLA cannot partition a Pallas call.
Off TPU it runs in Pallas interpret mode: slow, for tests only.
"""

from __future__ import annotations

import jax
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from cinema_jax import sharding

BLOCK = 128  # the kernel's tile; sequences are padded to a multiple of it


def _pair_mask(q_pairs: np.ndarray, kv_pairs: np.ndarray, causal: bool, same_pair: bool) -> np.ndarray:
  ok = np.ones((q_pairs.shape[0], kv_pairs.shape[0]), bool)
  if causal:
    ok &= kv_pairs[None, :] <= q_pairs[:, None]
  if same_pair:
    ok &= kv_pairs[None, :] == q_pairs[:, None]
  return ok


def attention(q_BTHD, k_BSHD, v_BSHD, kv_mask_BS=None, q_pairs_T=None, kv_pairs_S=None, *, causal: bool = False,
              same_pair: bool = False) -> jax.Array:
  """Softmax attention by the splash kernel; [B, T, H, D]. Under a mesh, per shard of examples and heads.

  The pair ids must be static (numpy): the kernel's block mask is built at trace time (this splash
  version's dynamic masks do not trace under jit).
  """
  b, t, h, d = q_BTHD.shape
  s = k_BSHD.shape[1]
  tp, sp = -(-t // BLOCK) * BLOCK, -(-s // BLOCK) * BLOCK
  pairs = [np.zeros((n,), np.int32) if x is None else x for x, n in ((q_pairs_T, t), (kv_pairs_S, s))]
  if not all(isinstance(x, np.ndarray) for x in pairs):
    raise ValueError("splash attention needs static (numpy) pair ids: its block mask is built at trace time")
  # padded queries repeat the last pair id (their rows are dropped); padded keys are segment 0
  mask = _pair_mask(np.pad(pairs[0], (0, tp - t), mode="edge"), np.pad(pairs[1], (0, sp - s), mode="edge"),
                    causal, same_pair)
  kv_valid = jnp.ones((b, s), bool) if kv_mask_BS is None else kv_mask_BS
  seg_kv = jnp.pad(kv_valid.astype(jnp.int32), ((0, 0), (0, sp - s)))
  seg_q = jnp.ones((b, tp), jnp.int32)
  heads_first = lambda x, n: jnp.pad(jnp.einsum("bthd->bhtd", x), ((0, 0), (0, 0), (0, n - x.shape[1]), (0, 0)))
  q = heads_first(q_BTHD * jnp.asarray(d ** -0.5, q_BTHD.dtype), tp)  # the kernel does not scale
  k, v = heads_first(k_BSHD, sp), heads_first(v_BSHD, sp)

  def run(q, k, v, seg_q, seg_kv):
    """[b, h, T, D] for this shard's examples and heads."""
    heads = splash_lib.MultiHeadMask([splash_lib.NumpyMask(mask)] * q.shape[1])
    kernel = splash_lib.make_splash_mha(heads, head_shards=1, q_seq_shards=1, interpret=jax.default_backend() != "tpu")
    return jax.vmap(lambda q, k, v, sq, skv: kernel(q, k, v, segment_ids=splash_lib.SegmentIds(sq, skv)))(
        q, k, v, seg_q, seg_kv)

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:  # XLA cannot partition a Pallas kernel: run it per shard of examples and heads
    # pair-by-pair attention folds the pairs, which 'context' shards, into the batch
    batch = sharding.dividing_axes(b, mesh, sharding.BATCH_AXES + ("context",), sharding.BATCH_AXES)
    x = P(batch, sharding.dividing_axes(h, mesh, ("tensor",)), None, None)
    run = jax.shard_map(run, mesh=mesh, in_specs=(x, x, x, P(x[0], None), P(x[0], None)), out_specs=x,
                        check_vma=False)
  return jnp.einsum("bhtd->bthd", run(q, k, v, seg_q, seg_kv)[:, :, :t])
