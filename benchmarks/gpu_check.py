"""The accelerator check: the keyframe train step at FLUX block width in bf16, and the cached sampler.

  bash launch/gpu_check.sh            # installs the CUDA build of jax if needed, then runs this
  python -m benchmarks.gpu_check [--quick] [--depth=2,4] [--pairs=8] [--steps=5]

Prints, one section at a time (each section survives the failure of another):
- the device, jax's version, and the bf16 matmul roof measured here (8192^3, median of 10);
- the trainer's jitted, donated train step (fwd + bwd + AdamW + EMA) of a flux_dev config cut to
  `--depth` double + single blocks at FLUX.1's block width (3072 wide, 24 heads of 128, MLP x4),
  bf16 compute with fp32 master weights, cuDNN flash attention, `--pairs` pairs of 1024 image
  (512x512 keyframes) + 128 text tokens: step time, tokens/s, TFLOP/s (analytic FLOPs,
  cinema_jax.flops) and MFU against the chip's dense bf16 peak and the measured roof;
- the KV-cached sampler against the uncached one at 16 pairs and 28 steps (benchmarks.sampling).
--quick runs tiny sizes on any backend (a smoke test of the script on a CPU).
"""

from __future__ import annotations

import time
import traceback

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import sampling as sampling_bench
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import flops
from cinema_jax import input_space
from cinema_jax.models import keyframe
from configs import keyframe as keyframe_config

_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes on any backend: checks the script, measures nothing.")
_DEPTH = flags.DEFINE_list("depth", ["2", "4"], "Double, single blocks of the FLUX-width train step.")
_PAIRS = flags.DEFINE_integer("pairs", 8, "Pairs per example in the train step.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per figure (the median is reported).")
_ATTENTION = flags.DEFINE_list("attention", ["cudnn"], "Attention backends of the train step on a GPU (xla: the "
                               "reference, which materialises the scores).")

# Dense bf16 tensor-core peaks (vendor figures, without sparsity), by device_kind substring.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "B200": 2250e12, "TPU v5p": 459e12,
             "TPU v5 lite": 197e12, "TPU v4": 275e12}


def _median(f, steps: int, warmup: int = 2) -> float:
  return common.median_times({"f": f}, steps, warmup)["f"]


def matmul_roof(n: int, steps: int) -> float:
  x = jnp.ones((n, n), jnp.bfloat16)
  mm = jax.jit(lambda a: a @ a)
  return 2 * n ** 3 / _median(lambda: mm(x).block_until_ready(), steps)


def flux_width_config(quick: bool, depth: tuple[int, int], pairs: int, attention: str):
  c = keyframe_config.get_config("flux_dev")
  c.data.num_pairs = pairs
  c.data.path = "(synthetic batches)"  # the step is fed synthetic_batch(c); no records are read
  if quick:
    c.data.resolution, c.data.text_len = (64, 128), 16
    c.model.update(hidden=64, num_heads=2, axes_dim=(8, 12, 12), context_dim=32, vec_dim=16)
  else:
    c.data.resolution, c.data.text_len = (512, 512), 128  # 32x32 latent tokens (VAE /8, patch 2)
  c.model.update(depth_double=depth[0], depth_single=depth[1], dtype="bfloat16", param_dtype="float32",
                 attention=attention, remat="none")
  c.batch_size = max(1, jax.device_count())
  return config_validation.load(c)


def synthetic_batch(c) -> dict[str, np.ndarray]:
  """What the pipeline gives a pre-computed-latents config: latents, T5 states, CLIP pooled vectors."""
  b, p, L = c.batch_size, c.data.num_pairs, c.data.text_len
  space = input_space.of(c)
  rng = np.random.default_rng(0)
  return {
      space.image_key: rng.standard_normal((b, p, *space.frame_shape), np.float32),
      "text_states": rng.standard_normal((b, p, L, c.model.context_dim), np.float32),
      "text_mask": np.arange(L)[None, None] < rng.integers(L // 4, L + 1, (b, p))[..., None],
      "text_pooled": rng.standard_normal((b, p, c.model.vec_dim), np.float32),
      "movie": np.arange(b, dtype=np.int32), "shot_index": np.tile(np.arange(p, dtype=np.int32), (b, 1)),
      "stride": np.ones(b, np.int32),
  }


def train_step(c, steps: int) -> dict:
  step, setup, batch, mesh = common.jit_train_step(c, synthetic_batch(c))
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    compiled = step.lower(setup.abstract_state, batch).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    box = {"state": setup.init()}

    def run():
      box["state"], box["metrics"] = step(box["state"], batch)
      jax.block_until_ready(box["metrics"])

    t = _median(run, steps)
  cost = flops.StepCost(c)
  peak_mem = None if mem is None else (mem.temp_size_in_bytes + mem.argument_size_in_bytes +
                                       mem.output_size_in_bytes - mem.alias_size_in_bytes)
  return {"s": t, "compile_s": compile_s, "flops": cost.flops_per_step, "tokens": cost.tokens_per_step,
          "params": cost.num_params, "loss": float(box["metrics"]["loss"]), "mem": peak_mem}


def main(argv):
  del argv
  quick = _QUICK.value
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  print(f"jax {jax.__version__}, {jax.device_count()} x {kind} ({dev.platform})", flush=True)
  chip_peak = next((v for k, v in PEAK_BF16.items() if k in kind), None)
  roof = None
  try:
    roof = matmul_roof(512 if quick else 8192, 3 if quick else 10)
    print(f"bf16 matmul roof measured here: {roof / 1e12:.1f} TFLOP/s; vendor dense bf16 peak: "
          f"{'unknown' if chip_peak is None else f'{chip_peak / 1e12:.0f} TFLOP/s'}", flush=True)
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()

  print("\n| train step (bf16, fp32 master weights) | attention | params | s/step | tokens/s | TFLOP/s | "
        "MFU (chip peak) | MFU (measured roof) | compile s | memory GiB |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  depth = tuple(int(x) for x in _DEPTH.value)
  for attention in (_ATTENTION.value if dev.platform == "gpu" else ("xla",)):
    try:
      c = flux_width_config(quick, depth, _PAIRS.value, attention)
      r = train_step(c, 2 if quick else _STEPS.value)
    except Exception:  # pylint: disable=broad-except
      print(f"| {attention}: failed (traceback below) |")
      traceback.print_exc()
      continue
    tf = r["flops"] / r["s"]
    mfu = lambda peak: "-" if not peak else f"{100 * tf / peak:.1f}%"
    gh, gw = keyframe.full_grid(c)
    what = (f"{c.model.hidden} wide, {c.model.num_heads} heads, {depth[0]}+{depth[1]} blocks, batch "
            f"{c.batch_size} x {c.data.num_pairs} pairs x ({gh * gw} image + {c.data.text_len} text tokens); "
            f"loss {r['loss']:.3f}")
    mem = "-" if r["mem"] is None else f"{r['mem'] / 2 ** 30:.1f}"
    print(f"| {what} | {attention} | {r['params'] / 1e9:.2f}B | {r['s']:.3f} | {r['tokens'] / r['s']:.0f} | "
          f"{tf / 1e12:.1f} | {mfu(chip_peak)} | {mfu(roof)} | {r['compile_s']:.0f} | {mem} |", flush=True)

  print("\n| sampler, demo_long model, full window | s/keyframe, no cache | s/keyframe, KV cache | keyframes/s "
        "(cache) | speed-up | max abs diff |")
  print("|---|---|---|---|---|---|")
  try:
    c = sampling_bench.config(quick, 28)
    for pairs, batch in ((16, 1), (16, 8)):
      if quick:
        pairs = 3
      t = sampling_bench.keyframe_times(c, pairs, 2 if quick else 3, batch=batch)
      print(f"| {pairs} pairs, {c.sample.num_steps} steps, CFG, {batch} storylines per call | {t['none']:.4f} | "
            f"{t['cache']:.4f} | {1 / t['cache']:.1f} | {t['none'] / t['cache']:.1f}x | {t['diff']:.1e} |",
            flush=True)
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
