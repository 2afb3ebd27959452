"""Training-step benchmarks: the keyframe trainer's step, and the MM-DiT against diffusers' FLUX.

  python -m benchmarks.train_step [--steps=5] [--quick]

Prints a Markdown table for BENCHMARKS.md. Every figure is the median of --steps timed calls after a
warm-up (compilation excluded), each call blocking until its results exist. FLOPs are analytic
(cinema_jax.flops.StepCost: a training step is 3x the forward); MFU is against this machine's fp32
matmul roof as JAX measures it. The peer rows run diffusers' FluxTransformer2DModel (PyTorch CPU,
fp32) with the same weights at the same sizes, alternating with cinema_jax call by call, so that
their ratio is meaningful on a noisy machine. --quick shrinks everything to a smoke test.
"""

from __future__ import annotations

import os
import platform

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import flops
from cinema_jax import input_space
from cinema_jax.convert import flux
from cinema_jax.models import keyframe
from cinema_jax.models import mmdit
from configs import keyframe as keyframe_config
from data_pipelines import toy_world

_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per measurement (the median is reported).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes and at most 2 timed calls: a smoke test, not a figure.")


# ---------------------------------------------------------------------------------- training step


def train_configs(quick: bool) -> dict:
  demo = keyframe_config.get_config("demo")
  wide = keyframe_config.get_config("demo")
  # The demo at a width where matmuls, not per-op overhead, dominate; patch 2 -> 128 tokens per frame.
  wide.model.update(hidden=512, num_heads=8, axes_dim=(16, 24, 24), depth_double=4, depth_single=4, patch=2)
  demo, wide = (config_validation.load(c) for c in (demo, wide))  # --quick still checks the full-size configs
  if quick:
    return {"tiny": config_validation.load(keyframe_config.get_config("tiny"))}
  return {"demo": demo, "wide": wide}


def synthetic_batch(c) -> dict[str, np.ndarray]:
  """A toy-pipeline batch (latents ~ N(0, 1) or pixels in [-1, 1], word tokens, padded captions) of random
  content."""
  assert c.data.text_source == "tokens", "toy (word-token) configs only"
  b, p, L = c.batch_size, c.data.num_pairs, c.data.text_len
  space = input_space.of(c)
  rng = np.random.default_rng(0)
  mask = np.arange(L) < rng.integers(L // 4, L + 1, (b, p))[..., None]
  shape = (b, p, *space.frame_shape)
  return {
      space.image_key: (rng.uniform(-1, 1, shape) if space.pixels else rng.standard_normal(shape)).astype(np.float32),
      "text_tokens": np.where(mask, rng.integers(2, len(toy_world.vocabulary()), (b, p, L)), 0).astype(np.int32),
      "text_mask": mask,
      "movie": np.arange(b, dtype=np.int32),
      "shot_index": np.tile(np.arange(p, dtype=np.int32), (b, 1)),
      "stride": np.ones(b, np.int32),
  }


def train_step_time(c, steps: int, warmup: int) -> tuple[float, float]:
  """(median s/step, last loss) of the trainer's jitted, donated step on a 1-device-or-more mesh."""
  step, setup, batch, mesh = common.jit_train_step(c, synthetic_batch(c))
  with jax.set_mesh(mesh):
    box = {"state": setup.init()}

    def run():  # the state is donated: each call consumes the previous call's state
      box["state"], box["metrics"] = step(box["state"], batch)
      jax.block_until_ready((box["state"], box["metrics"]))

    t = common.median_times({"step": run}, steps, warmup)["step"]
  return t, float(box["metrics"]["loss"])


# ------------------------------------------------------------------------ FLUX MM-DiT vs diffusers


def flux_config(quick: bool):
  """A P = 1 keyframe config at the peer sizes: StepCost then counts its FLOPs like the trainer's."""
  c = keyframe_config.get_config("flux_dev")
  if quick:
    c.batch_size, grid, c.data.text_len = 1, (4, 8), 8
    c.model.update(hidden=64, num_heads=2, depth_double=1, depth_single=1, axes_dim=(8, 12, 12), context_dim=32,
                   vec_dim=16)
  else:  # width 512, heads 8 x 64, 4 + 4 blocks, batch 4, 512 image + 64 text tokens
    c.batch_size, grid, c.data.text_len = 4, (16, 32), 64
    c.model.update(hidden=512, num_heads=8, depth_double=4, depth_single=4, axes_dim=(8, 28, 28), context_dim=256,
                   vec_dim=128)
  cell = input_space.of(c).cell  # 16 latent channels x 2 x 2 patch = 64 channels per token
  c.data.resolution = (grid[0] * cell, grid[1] * cell)
  c.data.num_pairs = 1
  c.model.update(guidance_embed=False, dtype="float32", remat="none", attention="xla")
  return config_validation.load(c, reads_data=False), grid


def _torch_model(cfg: mmdit.MMDiTConfig):
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import FluxTransformer2DModel  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = FluxTransformer2DModel(
      patch_size=1, in_channels=cfg.in_channels, num_layers=cfg.depth_double, num_single_layers=cfg.depth_single,
      attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads, joint_attention_dim=cfg.context_dim,
      pooled_projection_dim=cfg.vec_dim, guidance_embeds=False, axes_dims_rope=cfg.axes_dim).float()
  with torch.no_grad():  # diffusers zero-initialises adaLN and output layers: the output would be 0
    for name, p in model.named_parameters():
      if p.ndim == 1 and "norm" in name and "linear" not in name:  # RMSNorm scales
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif p.ndim == 2:  # fan-in scaling keeps activations O(1) through the blocks
        p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
      else:
        p.copy_(0.02 * torch.randn_like(p))
  return model


def flux_times(quick: bool, steps: int, warmup: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  c, (gh, gw) = flux_config(quick)
  cfg, _ = keyframe.configs(c)
  b, L = c.batch_size, c.data.text_len
  tm = _torch_model(cfg)
  with nnx.use_eager_sharding(False):  # no mesh: plain unsharded parameters
    jm = mmdit.MMDiT(cfg, nnx.Rngs(0))
  flux.load_into(jm, flux.from_diffusers({k: v.detach().numpy() for k, v in tm.state_dict().items()}, cfg))
  graphdef, params, rest = nnx.split(jm, nnx.Param, ...)

  rng = np.random.default_rng(0)
  img = rng.standard_normal((b, gh * gw, cfg.in_channels), np.float32)
  txt = rng.standard_normal((b, L, cfg.context_dim), np.float32)
  y = rng.standard_normal((b, cfg.vec_dim), np.float32)
  t = rng.uniform(0, 1, b).astype(np.float32)
  img_ids, txt_ids = (np.array(a[0]) for a in mmdit.position_ids(1, L, gh, gw))  # writable, for torch
  pair = lambda a: jnp.asarray(a)[:, None]  # the pair axis, P = 1
  ids = lambda a: jnp.broadcast_to(jnp.asarray(a), (b, 1, *a.shape))
  jx = (pair(img), ids(img_ids), pair(txt), ids(txt_ids), jnp.ones((b, 1, L), bool), pair(t), pair(y))
  tx = dict(hidden_states=torch.from_numpy(img), encoder_hidden_states=torch.from_numpy(txt),
            pooled_projections=torch.from_numpy(y), timestep=torch.from_numpy(t), img_ids=torch.from_numpy(img_ids),
            txt_ids=torch.from_numpy(txt_ids), return_dict=False)

  apply = lambda p, x: nnx.merge(graphdef, p, rest)(*x)
  j_fwd = jax.jit(apply)
  j_grad = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(apply(p, x) ** 2)))

  def t_grad():  # set_to_none: torch allocates fresh gradients, as the JAX step returns new ones
    tm.zero_grad(set_to_none=True)
    tm(**tx)[0].square().sum().backward()

  def t_fwd():
    with torch.inference_mode():
      return tm(**tx)[0]

  want, got = t_fwd().numpy(), np.asarray(j_fwd(params, jx))[:, 0]
  fns = {"jax_grad": lambda: jax.block_until_ready(j_grad(params, jx)), "torch_grad": t_grad,
         "jax_fwd": lambda: jax.block_until_ready(j_fwd(params, jx)), "torch_fwd": t_fwd}
  out = common.median_times(fns, steps, warmup)
  out.update(diff=float(np.abs(got - want).max()), scale=float(np.abs(want).max()), config=c, cfg=cfg,
             tokens=b * (gh * gw + L), torch_peak=_torch_peak(512 if quick else 2048))
  return out


def _torch_peak(n: int, repeats: int = 5) -> float:
  """torch's fp32 matmul FLOP/s here, for reading the peer's rows against its own roof."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.ones(n, n)
  return 2 * n ** 3 / min(common.median_times({"mm": lambda: x @ x}, 1, 1)["mm"] for _ in range(repeats))


# ------------------------------------------------------------------------------------------ main


def _describe(c) -> str:
  dit, _ = keyframe.configs(c)
  gh, gw = keyframe.full_grid(c)
  cost = flops.StepCost(c)
  txt = cost.tokens_per_step // (c.batch_size * c.data.num_pairs) - gh * gw
  return (f"{dit.hidden} wide, {dit.depth_double}+{dit.depth_single} blocks, patch {c.model.patch}, "
          f"batch {c.batch_size} x P={c.data.num_pairs} x ({gh * gw} image + {txt} text tokens)")


def main(argv):
  del argv
  quick = _QUICK.value
  steps, warmup = (min(_STEPS.value, 2), 1) if quick else (_STEPS.value, 2)
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, jax {jax.__version__} on {jax.devices()[0].platform}"
        f"{' (--quick: smoke-test sizes, not figures)' if quick else ''}")
  peak = flops.measured_peak_flops(512 if quick else 2048)
  rows = []
  for name, c in train_configs(quick).items():
    t, loss = train_step_time(c, steps, warmup)
    cost = flops.StepCost(c)
    rows.append((f"train step (fwd + bwd + AdamW, jitted, donated), {name}: {_describe(c)}; loss {loss:.3f}",
                 t, cost.tokens_per_step, cost.flops_per_step))

  f = flux_times(quick, steps, warmup)
  cfg, cost = f["cfg"], flops.StepCost(f["config"])
  size = (f"{cfg.hidden} wide, {cfg.num_heads}x{cfg.head_dim} heads, {cfg.depth_double}+{cfg.depth_single} blocks, "
          f"batch {f['config'].batch_size}, {f['tokens'] // f['config'].batch_size} tokens")
  for kind, label, gflop in (("grad", "fwd + bwd (loss = sum of squares)", cost.flops_per_step),
                             ("fwd", "forward only", cost.flops_per_step / 3)):
    rows.append((f"FLUX MM-DiT P=1 {label}, cinema_jax (jit): {size}", f[f"jax_{kind}"], f["tokens"], gflop))
    rows.append((f"same, diffusers FluxTransformer2DModel (torch {os.cpu_count()} threads)", f[f"torch_{kind}"],
                 f["tokens"], gflop))

  print()
  print("| what | s/step | tokens/s | GFLOP/step | MFU |")
  print("|---|---|---|---|---|")
  for what, t, tokens, fl in rows:
    print(f"| {what} | {t:.3f} | {tokens / t:.0f} | {fl / 1e9:.2f} | {100 * fl / t / peak:.1f}% |")
  print()
  print(f"torch / cinema_jax time (>1: cinema_jax faster): fwd + bwd {f['torch_grad'] / f['jax_grad']:.2f}x, "
        f"forward {f['torch_fwd'] / f['jax_fwd']:.2f}x; same weights, outputs differ by max |diff| "
        f"{f['diff']:.2e} (output scale {f['scale']:.2f})")
  print(f"MFU is against JAX's fp32 matmul roof here, {peak / 1e9:.0f} GFLOP/s (torch's: "
        f"{f['torch_peak'] / 1e9:.0f} GFLOP/s); median of {steps} timed steps after {warmup} warm-up")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
