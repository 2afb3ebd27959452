"""Blockwise (flash-style) attention in plain JAX, and the mask it shares with ring attention.

The score matrix is never built: queries go block by block (lax.scan), each runs an online softmax
over key blocks (lax.fori_loop), and a key block that the mask removes for the whole query block
(a later pair under the block-causal mask, another pair under the pair-diagonal mask, keys that are
padding in every example) is skipped by lax.cond, so block-causal attention does about half the work.
The backward pass (custom VJP) recomputes each block's probabilities from the saved log-sum-exp
instead of storing them: memory is O(T + S) per head, not O(T * S).

It runs anywhere XLA does (the long-sequence backend on CPU, a portable fallback elsewhere); on GPU
and TPU the cuDNN and Pallas kernels are faster.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e30  # a masked score: finite, so rows with no valid key so far never produce inf - inf


def allowed(q_pairs_T, kv_pairs_S, kv_mask_BS, causal: bool, same_pair: bool) -> jax.Array:
  """bool [B, 1, T, S]: which key each query sees (kv_mask, then the pair mask)."""
  ok = kv_mask_BS[:, None, None, :]
  if causal:
    ok = ok & (kv_pairs_S[None, :] <= q_pairs_T[:, None])[None, None]
  if same_pair:
    ok = ok & (kv_pairs_S[None, :] == q_pairs_T[:, None])[None, None]
  return ok


def block_live(q_pairs_T, kv_pairs_S, kv_mask_BS, causal: bool, same_pair: bool) -> jax.Array:
  """bool: may any query of this block see any key of that block? (conservative, from id ranges)."""
  live = jnp.any(kv_mask_BS)
  if causal or same_pair:
    live = live & (jnp.min(kv_pairs_S) <= jnp.max(q_pairs_T))
  if same_pair:
    live = live & (jnp.max(kv_pairs_S) >= jnp.min(q_pairs_T))
  return live


def online_softmax_step(carry, q_BTHD, k_BSHD, v_BSHD, ok_B1TS):
  """Folds one key block into the running (out [B,H,T,D] f32, max [B,H,T], sum [B,H,T])."""
  o, m, l = carry
  s = jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BSHD, preferred_element_type=jnp.float32)
  s = jnp.where(ok_B1TS, s * (q_BTHD.shape[-1] ** -0.5), NEG)
  m_new = jnp.maximum(m, s.max(-1))
  p = jnp.where(ok_B1TS, jnp.exp(s - m_new[..., None]), 0.0)
  alpha = jnp.exp(m - m_new)
  l = l * alpha + p.sum(-1)
  o = o * alpha[..., None] + jnp.einsum("bhts,bshd->bhtd", p.astype(v_BSHD.dtype), v_BSHD,
                                        preferred_element_type=jnp.float32)
  return o, m_new, l


def init_carry(b: int, h: int, t: int, d: int):
  return (jnp.zeros((b, h, t, d), jnp.float32), jnp.full((b, h, t), NEG, jnp.float32),
          jnp.zeros((b, h, t), jnp.float32))


def finish(carry, dtype):
  """(out [B, T, H, D], log-sum-exp [B, H, T]); a query that saw no key gets zeros."""
  o, m, l = carry
  safe = jnp.maximum(l, 1e-30)
  return jnp.einsum("bhtd->bthd", o / safe[..., None]).astype(dtype), m + jnp.log(safe)


def _to_blocks(x, n: int, size: int, axis: int):
  """Pads axis to n * size and moves the block index to the front."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, n * size - x.shape[axis])
  x = jnp.pad(x, pad)
  x = x.reshape(*x.shape[:axis], n, size, *x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _from_blocks(x, axis: int, length: int):
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])[(slice(None),) * axis + (slice(0, length),)]


def attention(q_BTHD, k_BSHD, v_BSHD, kv_mask_BS=None, q_pairs_T=None, kv_pairs_S=None, *, causal: bool = False,
              same_pair: bool = False, block_q: int = 512, block_k: int = 512) -> jax.Array:
  """Softmax attention with the mask described by kv_mask and pair ids; [B, T, H, D]."""
  b, t, _, _ = q_BTHD.shape
  s = k_BSHD.shape[1]
  if (causal or same_pair) and (q_pairs_T is None or kv_pairs_S is None):
    raise ValueError("a pair mask needs q_pairs and kv_pairs")
  kv_mask_BS = jnp.ones((b, s), bool) if kv_mask_BS is None else kv_mask_BS
  q_pairs_T = jnp.zeros((t,), jnp.int32) if q_pairs_T is None else jnp.asarray(q_pairs_T, jnp.int32)
  kv_pairs_S = jnp.zeros((s,), jnp.int32) if kv_pairs_S is None else jnp.asarray(kv_pairs_S, jnp.int32)
  bq, bk = min(block_q, t), min(block_k, s)
  nq, nk = -(-t // bq), -(-s // bk)
  blocks = (_to_blocks(q_BTHD, nq, bq, 1), _to_blocks(k_BSHD, nk, bk, 1), _to_blocks(v_BSHD, nk, bk, 1),
            _to_blocks(kv_mask_BS, nk, bk, 1), _to_blocks(q_pairs_T, nq, bq, 0), _to_blocks(kv_pairs_S, nk, bk, 0))
  out = _flash(causal, same_pair, *blocks)
  return _from_blocks(out, 1, t)


def _live_table(mask_nBK, qp_nQ, kvp_nK, causal, same_pair):
  per_kv = jax.vmap(lambda qp, kp, km: block_live(qp, kp, km, causal, same_pair), in_axes=(None, 0, 0))
  return jax.vmap(lambda qp: per_kv(qp, kvp_nK, mask_nBK))(qp_nQ)  # [nq, nk]


def _forward(causal, same_pair, q_n, k_n, v_n, mask_n, qp_n, kvp_n):
  live = _live_table(mask_n, qp_n, kvp_n, causal, same_pair)
  _, b, bq, h, d = q_n.shape

  def q_block(args):
    q, qp, live_row = args

    def kv_step(j, carry):
      ok = allowed(qp, kvp_n[j], mask_n[j], causal, same_pair)
      step = lambda c: online_softmax_step(c, q, k_n[j], v_n[j], ok)
      return jax.lax.cond(live_row[j], step, lambda c: c, carry)

    return finish(jax.lax.fori_loop(0, k_n.shape[0], kv_step, init_carry(b, h, bq, d)), q.dtype)

  return jax.lax.map(q_block, (q_n, qp_n, live))  # out [nq, B, bq, H, D], lse [nq, B, H, bq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(causal, same_pair, q_n, k_n, v_n, mask_n, qp_n, kvp_n):
  return _forward(causal, same_pair, q_n, k_n, v_n, mask_n, qp_n, kvp_n)[0]


def _flash_fwd(causal, same_pair, q_n, k_n, v_n, mask_n, qp_n, kvp_n):
  out, lse = _forward(causal, same_pair, q_n, k_n, v_n, mask_n, qp_n, kvp_n)
  return out, (q_n, k_n, v_n, mask_n, qp_n, kvp_n, out, lse)


def _flash_bwd(causal, same_pair, res, g_n):
  q_n, k_n, v_n, mask_n, qp_n, kvp_n, out_n, lse_n = res
  live = _live_table(mask_n, qp_n, kvp_n, causal, same_pair)
  scale = q_n.shape[-1] ** -0.5
  delta_n = jnp.einsum("nbthd,nbthd->nbht", g_n.astype(jnp.float32), out_n.astype(jnp.float32))
  f32 = lambda x: jnp.zeros(x.shape, jnp.float32)

  def q_block(dkv, args):
    q, do, lse, delta, qp, live_row = args

    def kv_step(j, carry):
      def grads(carry):
        dq, dk, dv = carry
        k, v = k_n[j], v_n[j]
        ok = allowed(qp, kvp_n[j], mask_n[j], causal, same_pair)
        s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
        p = jnp.where(ok, jnp.exp(s - lse[..., None]), 0.0)
        dp = jnp.einsum("bthd,bshd->bhts", do, v, preferred_element_type=jnp.float32)
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum("bhts,bshd->bthd", ds, k.astype(jnp.float32))
        dk = dk.at[j].add(jnp.einsum("bhts,bthd->bshd", ds, q.astype(jnp.float32)))
        dv = dv.at[j].add(jnp.einsum("bhts,bthd->bshd", p, do.astype(jnp.float32)))
        return dq, dk, dv

      return jax.lax.cond(live_row[j], grads, lambda c: c, carry)

    dq, dk, dv = jax.lax.fori_loop(0, k_n.shape[0], kv_step, (f32(q), *dkv))
    return (dk, dv), dq.astype(q.dtype)

  (dk, dv), dq = jax.lax.scan(q_block, (f32(k_n), f32(v_n)), (q_n, g_n, lse_n, delta_n, qp_n, live))
  zero = lambda x: np.zeros(x.shape, jax.dtypes.float0)
  return dq, dk.astype(k_n.dtype), dv.astype(v_n.dtype), zero(mask_n), zero(qp_n), zero(kvp_n)


_flash.defvjp(_flash_fwd, _flash_bwd)
