"""Ring attention: context parallelism for attention over a sequence sharded on the 'context' axis.

Each of the C devices of the 'context' axis holds T/C queries and T/C keys. In C steps every device
folds its current key/value chunk into an online softmax (blockwise.online_softmax_step) and passes
the chunk to the next device (ppermute), so no device ever holds the whole sequence's keys or scores.
A chunk that the mask removes for all local queries (later pairs under the block-causal mask) is
skipped by lax.cond.

Balance: with a contiguous split, the block-causal mask gives the last device all of the work. For
causal attention the sequence is cut into 2C pieces and device i takes pieces i and 2C-1-i (zigzag),
so every device sees the same number of live query/key chunk pairs. The mask follows the tokens
(it is built from their pair ids), so reordering the sequence does not change the result. The reorder
is a gather along the sharded axis (one all-to-all before and one after); keeping the whole
single-stream stack in zigzag order would remove it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from cinema_jax import sharding
from cinema_jax.models import blockwise


def zigzag_order(length: int, shards: int) -> np.ndarray:
  """Token order whose contiguous split in `shards` gives device i pieces i and 2*shards-1-i."""
  pieces = np.arange(length).reshape(2 * shards, -1)
  return np.concatenate([np.concatenate([pieces[i], pieces[2 * shards - 1 - i]]) for i in range(shards)])


def context_size(axis: str = "context") -> int:
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty or axis not in mesh.axis_names else mesh.shape[axis]


def attention(q_BTHD, k_BTHD, v_BTHD, kv_mask_BT=None, q_pairs_T=None, kv_pairs_T=None, *, causal: bool = False,
              same_pair: bool = False, axis: str = "context") -> jax.Array:
  """Self-attention over a sequence sharded on `axis` of the current mesh; [B, T, H, D]."""
  mesh = jax.sharding.get_abstract_mesh()
  c = mesh.shape[axis]
  b, t, h, _ = q_BTHD.shape
  if k_BTHD.shape[1] != t:
    raise ValueError(f"ring attention is self-attention: {t} queries, {k_BTHD.shape[1]} keys")
  kv_mask_BT = jnp.ones((b, t), bool) if kv_mask_BT is None else kv_mask_BT
  q_pairs_T = jnp.zeros((t,), jnp.int32) if q_pairs_T is None else jnp.asarray(q_pairs_T, jnp.int32)
  kv_pairs_T = jnp.zeros((t,), jnp.int32) if kv_pairs_T is None else jnp.asarray(kv_pairs_T, jnp.int32)

  pieces = 2 * c if causal else c
  padded = -(-t // pieces) * pieces
  pad = lambda x, axis_, **kw: jnp.pad(x, [(0, padded - t) if i == axis_ else (0, 0) for i in range(x.ndim)], **kw)
  q, k, v = (pad(x, 1) for x in (q_BTHD, k_BTHD, v_BTHD))
  kv_mask = pad(kv_mask_BT, 1)  # padding keys are masked out
  qp, kp = pad(q_pairs_T, 0, mode="edge"), pad(kv_pairs_T, 0, mode="edge")
  if causal:
    order = zigzag_order(padded, c)
    q, k, v, kv_mask = q[:, order], k[:, order], v[:, order], kv_mask[:, order]
    qp, kp = qp[order], kp[order]

  batch = sharding.dividing_axes(b, mesh, sharding.BATCH_AXES)
  x_spec = P(batch, axis, sharding.dividing_axes(h, mesh, ("tensor",)), None)
  ring = [(i, (i + 1) % c) for i in range(c)]

  def local(q, k, v, kv_mask, qp, kp):
    carry = blockwise.init_carry(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
    for step in range(c):
      def fold(carry, k=k, v=v, kv_mask=kv_mask, kp=kp):
        return blockwise.online_softmax_step(carry, q, k, v, blockwise.allowed(qp, kp, kv_mask, causal, same_pair))
      live = blockwise.block_live(qp, kp, kv_mask, causal, same_pair)
      # remat: the backward pass recomputes a chunk's scores instead of keeping C of them
      carry = jax.lax.cond(live, jax.checkpoint(fold), lambda x: x, carry)
      if step < c - 1:
        k, v, kv_mask, kp = jax.lax.ppermute((k, v, kv_mask, kp), axis, ring)
    return blockwise.finish(carry, q.dtype)[0]

  out = jax.shard_map(local, mesh=mesh, in_specs=(x_spec, x_spec, x_spec, P(batch, axis), P(axis), P(axis)),
                      out_specs=x_spec, check_vma=False)(q, k, v, kv_mask, qp, kp)
  if causal:
    out = out[:, np.argsort(order)]
  return out[:, :t]
