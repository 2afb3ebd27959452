"""The one attention function, with named backends.

Masks are described, not materialised by callers: `kv_mask` marks valid keys (text padding), and
`q_pairs`/`kv_pairs` give each token's pair index for the block-causal mask (query in pair i sees keys
in pairs <= i). Backends build what they need from that description, so a blockwise or Pallas kernel
can skip masked blocks instead of reading a dense [T, S] mask.

Backends:
  xla          einsum reference, softmax in float32 (CPU default, the parity reference)
  dot_product  jax.nn.dot_product_attention with XLA's implementation
  cudnn        jax.nn.dot_product_attention(implementation="cudnn") (GPU only)
  auto         cudnn on GPU for bf16/fp16 inputs (cuDNN has no fp32 flash attention), xla otherwise
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("auto", "xla", "dot_product", "cudnn")


def _dense_mask(batch: int, t: int, s: int, kv_mask, q_pairs, kv_pairs, causal: bool):
  """bool [B, 1, T, S] or None."""
  mask = None
  if kv_mask is not None:
    mask = kv_mask[:, None, None, :]
  if causal:
    if q_pairs is None or kv_pairs is None:
      raise ValueError("causal attention needs q_pairs and kv_pairs")
    c = (kv_pairs[None, :] <= q_pairs[:, None])[None, None]
    mask = c if mask is None else mask & c
  if mask is not None:
    mask = jnp.broadcast_to(mask, (batch, 1, t, s))
  return mask


def attention(q_BTHD: jax.Array, k_BSHD: jax.Array, v_BSHD: jax.Array, *, kv_mask_BS: jax.Array | None = None,
              q_pairs_T: jax.Array | None = None, kv_pairs_S: jax.Array | None = None, causal: bool = False,
              backend: str = "auto") -> jax.Array:
  """Softmax attention; returns [B, T, H, D]. Every query must see at least one key."""
  if backend == "auto":
    half = q_BTHD.dtype in (jnp.bfloat16, jnp.float16)
    backend = "cudnn" if jax.default_backend() == "gpu" and half else "xla"
  b, t, _, d = q_BTHD.shape
  mask = _dense_mask(b, t, k_BSHD.shape[1], kv_mask_BS, q_pairs_T, kv_pairs_S, causal)
  if backend == "xla":
    scores = jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BSHD, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BSHD.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs, v_BSHD)
  if backend in ("dot_product", "cudnn"):
    impl = "cudnn" if backend == "cudnn" else "xla"
    return jax.nn.dot_product_attention(q_BTHD, k_BSHD, v_BSHD, mask=mask, implementation=impl)
  raise ValueError(f"unknown attention backend {backend!r}; known: {', '.join(BACKENDS)}")
