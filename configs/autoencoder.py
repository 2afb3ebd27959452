"""Autoencoder config: `--config=configs/autoencoder.py[:VARIANT]` (cinema_jax/training/autoencoder.py).

  toy   FLUX's AutoencoderKL module at the toy world's size: 32x64 frames -> 16x32 latents of 4 channels
        (2x down), which the keyframe and video models read in 4x4 patches: the 4x8 token grid of a
        32x64 keyframe, as before, so GoldenMem keeps its three levels (docs/design_notes.md says why
        2x and not 4x). 1400 steps on frames of the toy world's shots: 5.2 minutes on a 2-core Intel
        Xeon (AVX-512), about twice that on a 2-core AMD EPYC (AVX2) (RESULTS.md: the toy autoencoder)
  tiny  the smallest end-to-end setting, for tests and smoke runs (16x32 frames)

Everything else (data pipeline, mesh, checkpoints, optimizer fields) is the keyframe config's.
"""

import ml_collections

from configs import keyframe as keyframe_config

VARIANTS = ("toy", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"configs/autoencoder.py: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = keyframe_config.get_config("demo" if variant == "toy" else "tiny")
  c.variant = variant
  c.task = "autoencoder"
  c.model.autoencoder = a = ml_collections.ConfigDict()
  a.block_out_channels = (16, 32)  # 2 ** (levels - 1) pixels per latent
  a.layers_per_block = 1
  a.latent_channels = 4
  a.norm_num_groups = 8
  a.mid_block_attention = False
  a.kernel_grad_chunk = 4  # CPU training: see models/vae.py
  a.edge_weight = 8.0  # extra loss weight of pixels at colour edges (sprites, outlines)
  a.corner_weight = 4.0  # times more again where colour changes both ways (sprite corners, not the horizon)
  a.border_weight = 4.0  # extra loss weight of the frame's outer rows and columns (zero padding blurs them)
  a.gradient_weight = 0.0  # L1 of the error's pixel differences: sharp corners, not only the right colours
  a.l2_weight = 0.0  # a squared term beside L1: a few pixels far off (a small sprite's corner) cost more
  a.kl_weight = 1e-6
  a.frames_per_shot = 1  # random frames of each shot in a step (0: all): more shots for the same work
  c.data.toy.autoencoder = ""  # it reads the toy world's pixels: it is what makes the latents
  c.model.update(image_channels=3, vae_downsample=1)
  c.data.num_pairs = 1  # an example is one shot: its frames are the batch's images
  c.data.load_frames = True
  c.data.context_order = "chronological"
  c.data.memory_levels = "none"
  c.objective.caption_dropout = 0.0
  c.log.sample_every_steps = 0
  c.sample.param_dtype = "float32"
  c.optimizer.update(lr=8e-3, warmup_steps=100, end_lr_fraction=0.05, b2=0.99, ema_decay=0.99, grad_clip=1.0)
  if variant == "toy":
    c.total_steps = 1400
    c.batch_size = 16  # shots, one frame of each: 16 frames a step
    c.checkpoint.update(every_steps=200, keep=2)
    c.log.update(every_steps=50)
  else:
    a.update(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4)
    c.data.toy.num_frames = 2
    c.total_steps = 4
    c.batch_size = 2
  return c
