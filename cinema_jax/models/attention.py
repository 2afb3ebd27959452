"""The one attention function, with named backends.

Masks are described, not materialised by callers: `kv_mask` marks valid keys (text padding), and
`q_pairs`/`kv_pairs` give each token's pair index for the pair masks: block-causal (`causal`, a query
in pair i sees keys in pairs <= i) and pair-diagonal (`same_pair`, only keys of its own pair).
Backends build what they need from that description, so the blockwise and Pallas kernels skip masked
blocks instead of reading a dense [T, S] mask.

Backends:
  xla          einsum reference, softmax in float32 (CPU default, the parity reference)
  dot_product  jax.nn.dot_product_attention with XLA's implementation
  cudnn        jax.nn.dot_product_attention(implementation="cudnn") (GPU only)
  blockwise    flash-style JAX (blockwise.py): no [T, S] scores, masked blocks skipped; any platform
  splash       Pallas splash attention with the block mask (TPU; interpret mode elsewhere, for tests)
  auto         cudnn on GPU for bf16/fp16 inputs (cuDNN has no fp32 flash attention), splash on TPU,
               xla otherwise

Context parallelism is not a backend: with `context_parallel=True` (self-attention over a sequence
that the mesh shards on 'context') and a 'context' axis larger than 1, ring.py runs instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cinema_jax.models import blockwise
from cinema_jax.models import ring

BACKENDS = ("auto", "xla", "dot_product", "cudnn", "blockwise", "splash")


def _dense_mask(batch: int, t: int, s: int, kv_mask, q_pairs, kv_pairs, causal: bool, same_pair: bool):
  """bool [B, 1, T, S] or None."""
  if kv_mask is None and not (causal or same_pair):
    return None
  kv_mask = jnp.ones((batch, s), bool) if kv_mask is None else kv_mask
  return jnp.broadcast_to(blockwise.allowed(q_pairs, kv_pairs, kv_mask, causal, same_pair), (batch, 1, t, s))


def attention(q_BTHD: jax.Array, k_BSHD: jax.Array, v_BSHD: jax.Array, *, kv_mask_BS: jax.Array | None = None,
              q_pairs_T: jax.Array | None = None, kv_pairs_S: jax.Array | None = None, causal: bool = False,
              same_pair: bool = False, backend: str = "auto", context_parallel: bool = False) -> jax.Array:
  """Softmax attention; returns [B, T, H, D]. Every query must see at least one key."""
  if (causal or same_pair) and (q_pairs_T is None or kv_pairs_S is None):
    raise ValueError("a pair mask (causal, same_pair) needs q_pairs and kv_pairs")
  if backend not in BACKENDS:
    raise ValueError(f"unknown attention backend {backend!r}; known: {', '.join(BACKENDS)}")
  masks = dict(causal=causal, same_pair=same_pair)
  if context_parallel and ring.context_size() > 1:
    return ring.attention(q_BTHD, k_BSHD, v_BSHD, kv_mask_BS, q_pairs_T, kv_pairs_S, **masks)
  if backend == "auto":
    half = q_BTHD.dtype in (jnp.bfloat16, jnp.float16)
    platform = jax.default_backend()
    backend = "cudnn" if platform == "gpu" and half else "splash" if platform == "tpu" else "xla"
  if backend == "blockwise":
    return blockwise.attention(q_BTHD, k_BSHD, v_BSHD, kv_mask_BS, q_pairs_T, kv_pairs_S, **masks)
  if backend == "splash":
    from cinema_jax.models import splash  # pylint: disable=import-outside-toplevel  (Pallas: TPU stack)
    return splash.attention(q_BTHD, k_BSHD, v_BSHD, kv_mask_BS, q_pairs_T, kv_pairs_S, **masks)
  b, t, _, d = q_BTHD.shape
  mask = _dense_mask(b, t, k_BSHD.shape[1], kv_mask_BS, q_pairs_T, kv_pairs_S, causal, same_pair)
  if backend == "xla":
    scores = jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BSHD, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BSHD.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs, v_BSHD)
  impl = "cudnn" if backend == "cudnn" else "xla"
  return jax.nn.dot_product_attention(q_BTHD, k_BSHD, v_BSHD, mask=mask, implementation=impl)
