"""The double-stream blocks' pair-by-pair attention against one masked attention over all pairs.

  python -m benchmarks.pair_attention [--pairs=8,16,32] [--steps=5] [--quick]

Double-stream blocks attend within each pair only. cinema_jax folds the pairs into the batch (P
attentions of T tokens); the alternative is one attention over P x T tokens with a block-diagonal
mask, which computes and stores P times more scores to throw most away. Both are timed forward +
backward (the gradient of a sum of squares) in one process, alternating, at demo_long's sizes (batch
4, 4 heads of 32, 48 tokens per pair); memory is XLA's analysis of each compiled program. Outputs are
checked equal.
"""

from __future__ import annotations

import os
import platform

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from cinema_jax import cli
from cinema_jax.models import attention

_PAIRS = flags.DEFINE_list("pairs", ["8", "16", "32"], "Pairs per example.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per figure (the median is reported).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes, 1 timed call: a smoke test, not a figure.")


def pairwise(q_BPTHD, k_BPTHD, v_BPTHD):
  b, p, t, h, d = q_BPTHD.shape
  fold = lambda x: x.reshape(b * p, t, h, d)
  return attention.attention(fold(q_BPTHD), fold(k_BPTHD), fold(v_BPTHD), backend="xla").reshape(b, p, t, h, d)


def masked_full(q_BPTHD, k_BPTHD, v_BPTHD):
  b, p, t, h, d = q_BPTHD.shape
  flat = lambda x: x.reshape(b, p * t, h, d)
  pair = jnp.repeat(jnp.arange(p), t)
  scores = jnp.einsum("bthd,bshd->bhts", flat(q_BPTHD), flat(k_BPTHD)) * d ** -0.5
  scores = jnp.where(pair[:, None] == pair[None, :], scores, jnp.finfo(jnp.float32).min)
  out = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), flat(v_BPTHD))
  return out.reshape(b, p, t, h, d)


def measure(pairs: int, steps: int, batch: int = 4, tokens: int = 48, heads: int = 4, head_dim: int = 32) -> dict:
  rng = np.random.default_rng(0)
  qkv = [jnp.asarray(rng.standard_normal((batch, pairs, tokens, heads, head_dim), np.float32)) for _ in range(3)]
  out = {}
  for name, fn in (("pairwise", pairwise), ("masked", masked_full)):
    grad = jax.jit(jax.value_and_grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))
    mem = grad.lower(*qkv).compile().memory_analysis()
    out[f"{name}_mem"] = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    out[f"{name}_fn"] = lambda grad=grad: jax.block_until_ready(grad(*qkv))
    out[f"{name}_out"] = np.asarray(jax.jit(fn)(*qkv))
  times = common.median_times({k: out[f"{k}_fn"] for k in ("pairwise", "masked")}, steps, 2)
  out.update(times, diff=float(np.abs(out["pairwise_out"] - out["masked_out"]).max()))
  return out


def main(argv):
  del argv
  quick = _QUICK.value
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}"
        f"{' (--quick: not a figure)' if quick else ''}")
  print()
  print("| pairs | tokens | pair-by-pair s | masked full s | time ratio (masked / pairwise) | memory MB "
        "(pairwise / masked) | max abs diff |")
  print("|---|---|---|---|---|---|---|")
  for p in (int(x) for x in _PAIRS.value):
    r = measure(p, 1 if quick else _STEPS.value, batch=1 if quick else 4)
    print(f"| {p} | {p * 48} | {r['pairwise']:.4f} | {r['masked']:.4f} | {r['masked'] / r['pairwise']:.1f}x | "
          f"{r['pairwise_mem'] / 1e6:.0f} / {r['masked_mem'] / 1e6:.0f} | {r['diff']:.1e} |", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
