"""Pallas splash attention (TPU) with the interleaved sequence's block mask.

Splash attention takes the mask as data about blocks: which (query block, key block) tiles are empty,
full or partial. The pair mask (block-causal or pair-diagonal) is built from the tokens' pair ids,
static numpy when the ids are (the model's are: they follow from the shapes), so empty tiles are
skipped by the kernel; text padding enters as segment ids (a padding key is in segment 0, every query
in segment 1). Off TPU the kernel runs in Pallas interpret mode: slow, for tests only.
"""

from __future__ import annotations

import jax
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib
import jax.numpy as jnp
import numpy as np

BLOCK = 128  # the kernel's tile; sequences are padded to a multiple of it


def _pair_mask(q_pairs, kv_pairs, causal: bool, same_pair: bool):
  xp = np if isinstance(q_pairs, np.ndarray) and isinstance(kv_pairs, np.ndarray) else jnp
  ok = xp.ones((q_pairs.shape[0], kv_pairs.shape[0]), bool)
  if causal:
    ok = ok & (kv_pairs[None, :] <= q_pairs[:, None])
  if same_pair:
    ok = ok & (kv_pairs[None, :] == q_pairs[:, None])
  return ok


def attention(q_BTHD, k_BSHD, v_BSHD, kv_mask_BS=None, q_pairs_T=None, kv_pairs_S=None, *, causal: bool = False,
              same_pair: bool = False) -> jax.Array:
  """Softmax attention by the splash kernel; [B, T, H, D]."""
  b, t, h, d = q_BTHD.shape
  s = k_BSHD.shape[1]
  tp, sp = -(-t // BLOCK) * BLOCK, -(-s // BLOCK) * BLOCK
  zeros = lambda n: np.zeros((n,), np.int32)
  q_pairs = zeros(t) if q_pairs_T is None else q_pairs_T
  kv_pairs = zeros(s) if kv_pairs_S is None else kv_pairs_S
  xp = np if isinstance(q_pairs, np.ndarray) and isinstance(kv_pairs, np.ndarray) else jnp
  # padded queries repeat the last pair id (their rows are dropped); padded keys are segment 0
  q_pairs = xp.pad(q_pairs, (0, tp - t), mode="edge")
  kv_pairs = xp.pad(kv_pairs, (0, sp - s), mode="edge")
  mask = _pair_mask(q_pairs, kv_pairs, causal, same_pair)
  if xp is np:
    mask = splash_lib.MultiHeadMask([splash_lib.NumpyMask(mask)] * h)
  else:
    mask = jnp.broadcast_to(mask, (h, tp, sp))
  kernel = splash_lib.make_splash_mha(mask, head_shards=1, q_seq_shards=1,
                                      interpret=jax.default_backend() != "tpu")
  kv_valid = jnp.ones((b, s), bool) if kv_mask_BS is None else kv_mask_BS
  seg_kv = jnp.pad(kv_valid.astype(jnp.int32), ((0, 0), (0, sp - s)))
  seg_q = jnp.ones((b, tp), jnp.int32)
  heads_first = lambda x, n: jnp.pad(jnp.einsum("bthd->bhtd", x), ((0, 0), (0, 0), (0, n - x.shape[1]), (0, 0)))
  q = heads_first(q_BTHD * jnp.asarray(d ** -0.5, q_BTHD.dtype), tp)  # the kernel does not scale
  k, v = heads_first(k_BSHD, sp), heads_first(v_BSHD, sp)
  out = jax.vmap(lambda q, k, v, sq, skv: kernel(q, k, v, segment_ids=splash_lib.SegmentIds(sq, skv)))(
      q, k, v, seg_q, seg_kv)
  return jnp.einsum("bhtd->bthd", out[:, :, :t])
