"""The autoencoder task: FLUX's AutoencoderKL module, at a world's size, trained on the world's frames.

  python -m cinema_jax.train --config=configs/autoencoder.py:toy --workdir=AE

trains it with the framework's own pipeline (shots of one pair, every frame), checkpoints and logs,
on this module's loss. When the run ends, the entry point writes AE/vae/ (`export`): config.json and
diffusion_pytorch_model.safetensors in diffusers' layout and names, with the latent shift and scale
measured on the training frames. `data_pipelines.precompute --vae=AE/vae` and the sampler read that
folder exactly as they read FLUX.1's VAE, so a toy model travels the same road as FLUX.1-dev.

The loss is an L1 reconstruction of posterior samples with a small KL term, as latent-diffusion
autoencoders train, with pixels near edges weighted up (config.model.autoencoder.edge_weight): in the
toy world the characters are small sprites on flat backgrounds, and a plain L1 spends the model's
capacity on the sky and ground while diamonds and squares blur into circles.
"""

from __future__ import annotations

import json
import os

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import encoders
from cinema_jax.convert import mapping
from cinema_jax.models import vae
from data_pipelines import toy_dataset

EXPORT_DIR = "vae"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def vae_config(c: config_validation.Config, scaling_factor: float = 1.0, shift_factor: float = 0.0) -> vae.VAEConfig:
  a = c.model.autoencoder
  return vae.VAEConfig(block_out_channels=tuple(a.block_out_channels), layers_per_block=a.layers_per_block,
                       latent_channels=a.latent_channels, norm_num_groups=a.norm_num_groups,
                       mid_block_add_attention=a.mid_block_attention, kernel_grad_chunk=a.kernel_grad_chunk,
                       scaling_factor=scaling_factor, shift_factor=shift_factor,
                       dtype=c.model.dtype, param_dtype=c.model.param_dtype)


def validate(c: config_validation.Config) -> None:
  """ValueErrors that name the config field."""
  a, (h, w) = c.model.autoencoder, c.data.resolution
  down = 2 ** (len(a.block_out_channels) - 1)
  if h % down or w % down:
    raise ValueError(f"config.data.resolution={(h, w)}: not a multiple of the autoencoder's downsampling {down}")
  if any(ch % a.norm_num_groups for ch in a.block_out_channels):
    raise ValueError(f"config.model.autoencoder.block_out_channels={tuple(a.block_out_channels)}: each must be a "
                     f"multiple of norm_num_groups={a.norm_num_groups}")
  if c.data.num_pairs != 1 or not c.data.load_frames:
    raise ValueError("config.data: the autoencoder trains on single shots' frames (num_pairs=1, load_frames=True)")


def build(c: config_validation.Config, seed: int = 0) -> vae.AutoencoderKL:
  return vae.AutoencoderKL(vae_config(c), nnx.Rngs(seed))


def abstract(c: config_validation.Config) -> vae.AutoencoderKL:
  return nnx.eval_shape(lambda: build(c))


def forward_flops(c: config_validation.Config) -> float:
  """FLOPs of one frame through the encoder and decoder, as XLA counts them."""
  model = abstract(c)
  x = jax.ShapeDtypeStruct((1, *c.data.resolution, 3), jnp.float32)
  cost = nnx.jit(lambda m, x: m.decoder(m.encode(x)[0])).lower(model, x).cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def batch_images(batch: dict, frames_per_shot: int = 0, key: jax.Array | None = None) -> jax.Array:
  """Frames of a batch's shots, [N, H, W, 3] in [-1, 1]: every frame, or frames_per_shot random ones of
  each shot (more shots for the same work: a shot's frames differ little)."""
  x = batch["frames"]  # [B, 1, F, H, W, 3]
  x = x.reshape(x.shape[0], -1, *x.shape[-3:])
  if frames_per_shot:
    pick = jax.random.randint(key, (x.shape[0], frames_per_shot), 0, x.shape[1])
    x = jnp.take_along_axis(x, pick[:, :, None, None, None], axis=1)
  return x.reshape(-1, *x.shape[-3:])


def edge_weights(x_NHWC: jax.Array, weight: float) -> jax.Array:
  """1 + weight where a pixel or one of its 8 neighbours changes colour (edges, outlines, sprites)."""
  gx = jnp.abs(jnp.diff(x_NHWC, axis=2)).sum(-1)
  gy = jnp.abs(jnp.diff(x_NHWC, axis=1)).sum(-1)
  e = jnp.pad(gx, ((0, 0), (0, 0), (0, 1))) + jnp.pad(gx, ((0, 0), (0, 0), (1, 0)))
  e += jnp.pad(gy, ((0, 0), (0, 1), (0, 0))) + jnp.pad(gy, ((0, 0), (1, 0), (0, 0)))
  e = jax.lax.reduce_window(e, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
  return (1.0 + weight * jnp.minimum(e / 0.1, 1.0))[..., None]  # 0.1: ~13 of 255 levels in one channel


def corner_weights(x_NHWC: jax.Array, weight: float) -> jax.Array:
  """1 + weight where a pixel has both a horizontal and a vertical colour change within one pixel: the
  corners and slanted edges of sprites (and landmarks), not the straight horizon. A small cross and a
  small diamond differ only there."""
  gx = jnp.abs(jnp.diff(x_NHWC, axis=2)).sum(-1)
  gy = jnp.abs(jnp.diff(x_NHWC, axis=1)).sum(-1)
  ex = jnp.maximum(jnp.pad(gx, ((0, 0), (0, 0), (0, 1))), jnp.pad(gx, ((0, 0), (0, 0), (1, 0))))
  ey = jnp.maximum(jnp.pad(gy, ((0, 0), (0, 1), (0, 0))), jnp.pad(gy, ((0, 0), (1, 0), (0, 0))))
  near = lambda e: jax.lax.reduce_window(e, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
  return (1.0 + weight * jnp.minimum(jnp.minimum(near(ex), near(ey)) / 0.1, 1.0))[..., None]


def border_weights(shape_NHW: tuple[int, int, int], weight: float) -> jax.Array:
  """1 + weight on the frame's outer rows and columns, 1 inside: zero padding makes the border the least
  accurate part of a convolutional reconstruction, and it is where a frame's sky and ground colours are
  read."""
  _, h, w = shape_NHW
  ring = jnp.pad(jnp.zeros((h - 2, w - 2)), 1, constant_values=1.0)
  return (1.0 + weight * ring)[None, :, :, None]


def gradient_l1(y_NHWC: jax.Array, x_NHWC: jax.Array) -> jax.Array:
  """Mean L1 between the images' horizontal and vertical pixel differences: a blur that rounds a small
  sprite's corners costs little plain L1 but flattens the differences at those corners."""
  d = y_NHWC - x_NHWC
  return 0.5 * (jnp.mean(jnp.abs(jnp.diff(d, axis=1))) + jnp.mean(jnp.abs(jnp.diff(d, axis=2))))


def loss(c: config_validation.Config, model: vae.AutoencoderKL, batch: dict, key: jax.Array):
  a = c.model.autoencoder
  k_frames, key = jax.random.split(key)
  x = batch_images(batch, a.frames_per_shot, k_frames)
  mean, logvar = model.encode(x)
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
  y = model.decoder(z).astype(jnp.float32)
  w = jax.lax.stop_gradient(edge_weights(x, a.edge_weight) * corner_weights(x, a.corner_weight)
                            * border_weights(x.shape[:3], a.border_weight))
  l1 = jnp.mean(w * jnp.abs(y - x)) / jnp.mean(w)
  l2 = jnp.mean(w * jnp.square(y - x)) / jnp.mean(w)
  grad = gradient_l1(y, x)
  kl = 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
  total = l1 + a.l2_weight * l2 + a.gradient_weight * grad + a.kl_weight * kl
  return total, {"loss": total, "l1": l1, "l2": l2, "gradient": grad, "kl": kl}


@nnx.jit
def _mean_latents(model, x):
  return model.encode(x)[0]


def latent_statistics(model: vae.AutoencoderKL, images_NHWC: np.ndarray, batch: int = 64) -> tuple[float, float]:
  """(shift, scale) that bring the posterior means of these uint8 images to mean 0 and variance 1."""
  z = np.concatenate([np.asarray(_mean_latents(model, encoders.from_uint8(jnp.asarray(images_NHWC[i:i + batch]))))
                      for i in range(0, len(images_NHWC), batch)])
  return float(z.mean()), float(1.0 / max(z.std(), 1e-6))


def diffusers_config(cfg: vae.VAEConfig) -> dict:
  n = len(cfg.block_out_channels)
  return {"_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
          "latent_channels": cfg.latent_channels, "block_out_channels": list(cfg.block_out_channels),
          "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
          "layers_per_block": cfg.layers_per_block, "norm_num_groups": cfg.norm_num_groups, "act_fn": "silu",
          "scaling_factor": cfg.scaling_factor, "shift_factor": cfg.shift_factor,
          "use_quant_conv": cfg.use_quant_conv, "use_post_quant_conv": cfg.use_post_quant_conv,
          "mid_block_add_attention": cfg.mid_block_add_attention}


def save(model: vae.AutoencoderKL, out: str) -> str:
  """Writes the model as a diffusers AutoencoderKL folder, whole or not at all; returns the folder."""
  out = os.path.abspath(out)
  staging = f"{out}.partial-{os.getpid()}"
  os.makedirs(staging, exist_ok=True)
  mapping.save_safetensors(mapping.state_dict_by_name(model), os.path.join(staging, WEIGHTS_FILE))
  with open(os.path.join(staging, "config.json"), "w") as f:
    json.dump(diffusers_config(model.cfg), f, indent=1)
  if os.path.exists(out):
    os.rename(out, f"{staging}.old")
    os.rename(staging, out)
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(f"{staging}.old")
  else:
    os.rename(staging, out)
  return out


def calibration_frames(path: str, count: int = 1024) -> np.ndarray:
  """Up to `count` frames (every frame of evenly spaced shots) of a pixel dataset, uint8 [N, H, W, 3]."""
  from data_pipelines import records  # pylint: disable=import-outside-toplevel
  reader = records.ShotReader(path)
  per_shot = max(reader.index.num_frames, 1)
  picks = np.linspace(0, len(reader) - 1, min(len(reader), -(-count // per_shot))).astype(int)
  out = []
  for r in picks:
    _, keyframe, frames = reader.read_pixels(int(r), frames=True)
    out.append(frames if frames is not None else keyframe[None])
  return np.concatenate(out)[:count]


def export(c: config_validation.Config, workdir: str, images_NHWC: np.ndarray) -> str:
  """workdir/vae: the latest checkpoint's parameters (EMA copy) with the shift and scale of `images`."""
  from cinema_jax import loading  # pylint: disable=import-outside-toplevel  (loading imports the model zoo)
  graphdef, params, step = loading.restore_params(workdir, c, model=abstract(c))
  model = nnx.merge(graphdef, params)
  shift, scale = latent_statistics(model, images_NHWC)
  calibrated = vae.AutoencoderKL(vae_config(c, scaling_factor=scale, shift_factor=shift), nnx.Rngs(0))
  nnx.update(calibrated, nnx.state(model, nnx.Param))
  out = save(calibrated, os.path.join(workdir, EXPORT_DIR))
  logging.info("autoencoder of step %d -> %s (latent shift %.4f, scale %.4f, from %d frames)", step, out, shift,
               scale, len(images_NHWC))
  return out


def export_finished_run(c: config_validation.Config, workdir: str) -> None:
  """A finished autoencoder run: workdir/vae, the diffusers folder precompute --vae and sampling read."""
  mngr = checkpoints.manager(workdir, read_only=True)
  finished = mngr.latest_step() == c.total_steps
  mngr.close()
  if jax.process_index() != 0 or not finished:  # stopped early (--stop_at_step): a later run exports
    return
  path = toy_dataset.train_path(c.data, workdir)
  out = export(c, workdir, calibration_frames(path))
  print(f"autoencoder: {out} (precompute --vae={out})", flush=True)
