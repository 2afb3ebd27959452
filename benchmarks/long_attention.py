"""Long-sequence attention: the blockwise backend against the XLA reference as the sequence grows.

  python -m benchmarks.long_attention [--tokens=1024,2048,4096,8192,16384,32768] [--budget_gib=4] [--quick]

Self-attention over the interleaved sequence with the block-causal pair mask (pairs of 1024 tokens,
10% padding keys), forward + backward (the gradient of a sum of squares), batch 1, 8 heads of 64,
fp32. Memory is XLA's analysis of each compiled program (arguments + outputs + temporaries); a
program over the fixed budget is reported as out of memory and not run, as on a device that size.
Time is the median of --steps calls, the two backends alternating; the outputs are checked equal.
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

_TOKENS = flags.DEFINE_list("tokens", ["1024", "2048", "4096", "8192", "16384", "32768"], "Sequence lengths.")
_BUDGET = flags.DEFINE_float("budget_gib", 4.0, "Memory budget per program (GiB): over it counts as out of memory.")
_MAX_TIMED = flags.DEFINE_integer("max_timed_tokens", 8192, "Time only up to this length (2 cores: the rest "
                                  "takes minutes a call); longer ones are compiled for their memory only.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls per figure (the median is reported).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes, 1 timed call: a smoke test, not a figure.")

PAIR_TOKENS, HEADS, HEAD_DIM = 1024, 8, 64


def inputs(t: int):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, t, HEADS, HEAD_DIM), np.float32)) for _ in range(3))
  pairs = np.arange(t, dtype=np.int32) // PAIR_TOKENS
  mask = jnp.asarray(rng.random((1, t)) > 0.1).at[:, ::PAIR_TOKENS].set(True)
  return (q, k, v), dict(kv_mask_BS=mask, q_pairs_T=pairs, kv_pairs_S=pairs, causal=True)


def measure(t: int, budget: float, timed: bool, steps: int) -> dict:
  qkv, kw = inputs(t)
  out, fns = {}, {}
  for backend in ("xla", "blockwise"):
    f = lambda q, k, v, backend=backend: attention.attention(q, k, v, backend=backend, **kw)
    grad = jax.jit(jax.value_and_grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2)))
    mem = grad.lower(*qkv).compile().memory_analysis()
    out[f"{backend}_mem"] = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    out[f"{backend}_oom"] = out[f"{backend}_mem"] > budget
    if timed and not out[f"{backend}_oom"]:
      fns[backend] = lambda grad=grad: jax.block_until_ready(grad(*qkv))
      out[f"{backend}_out"] = np.asarray(jax.jit(f)(*qkv))
  out.update(common.median_times(fns, steps, 1) if fns else {})
  if len(fns) == 2:
    out["diff"] = float(np.abs(out["xla_out"] - out["blockwise_out"]).max())
  return out


def main(argv):
  del argv
  quick = _QUICK.value
  tokens = [512, 1024, 2048] if quick else [int(x) for x in _TOKENS.value]
  budget = _BUDGET.value * 2 ** 30
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}"
        f"; budget {_BUDGET.value:g} GiB{' (--quick: not a figure)' if quick else ''}")
  print()
  print("| tokens | reference s | blockwise s | time ratio (blockwise / reference) | reference MiB | blockwise MiB "
        "| max abs diff |")
  print("|---|---|---|---|---|---|---|")
  mib = lambda r, b: "out of memory" if r[f"{b}_oom"] else f"{r[f'{b}_mem'] / 2 ** 20:.0f}"
  for t in tokens:
    r = measure(t, budget, t <= _MAX_TIMED.value, 1 if quick else _STEPS.value)
    sec = lambda b: "-" if b not in r else f"{r[b]:.3f}"
    ratio = f"{r['blockwise'] / r['xla']:.2f}x" if "xla" in r and "blockwise" in r else "-"
    diff = f"{r['diff']:.1e}" if "diff" in r else "-"
    print(f"| {t} | {sec('xla')} | {sec('blockwise')} | {ratio} | {mib(r, 'xla')} | {mib(r, 'blockwise')} | {diff} |",
          flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
