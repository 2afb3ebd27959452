"""Shot-video config: `--config=configs/video.py[:VARIANT]` (the paper's bottom-up stage, models/video.py).

  paper  (the default) ~3.0B parameters (2048 wide, 16 heads, 10 + 24 blocks), 8 shots of 17 frames at
         336x672 (about the paper's 480x480 area) as FLUX-VAE latents in 4x2x2 patches, the paper's
         video recipe (AdamW 0.9/0.95, lr 1e-4, 1K warm-up, cosine, 10K steps, batch 64). Record schema 1
         stores no frame latents, so this variant is for --compile_only (sizing, sharding) until it does
  demo   the toy world at 32x64 (the toy autoencoder's latents), 4 shots of 9 frames; 300 steps of batch 2,
         about 2.5 minutes on a 2-core CPU
  tiny   the smallest end-to-end setting, for tests and smoke runs

Everything else (data pipeline, mesh, checkpoints, optimizer fields) is the keyframe config's.
"""

import ml_collections

from configs import keyframe as keyframe_config

VARIANTS = ("paper", "demo", "tiny")
_BASE = {"paper": "flux_dev", "demo": "demo", "tiny": "tiny"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "paper"
  if variant not in VARIANTS:
    raise ValueError(f"configs/video.py: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = keyframe_config.get_config(_BASE[variant])
  c.variant = variant
  c.task = "video"
  c.model.video = v = ml_collections.ConfigDict()
  v.num_frames = 17  # per shot, the keyframe first
  v.patch_t = 4  # frames per token along time (must divide num_frames - 1)
  v.shot_gap = 4  # empty RoPE time positions between shots
  v.keyframes = "in_shot"  # each keyframe leads its shot's tokens | "pairs": its own clean pair (LCT)
  v.from_keyframe = False  # x-prediction only: predict each clip frame as a change from its keyframe
  v.shot_attention = "full"  # single-stream blocks: "full" (every shot sees every shot) | "causal"
  v.captions = "shot"  # each shot's pairs read its caption | "global": every shot's captions, in order
  c.data.load_frames = True
  c.data.max_stride = 1  # consecutive shots: a scene, as LCT trains
  c.data.num_pairs = 8  # shots per example
  c.objective.loss_pairs = "newest_group"  # the clips; the keyframes are clean conditions ...
  c.objective.context_t = (0.0, 0.0)  # ... at t ~ U[a, b]
  c.sample.context_t = (0.0, 0.0)
  c.log.sample_every_steps = 0  # sample with python -m cinema_jax.sample (keyframes, then shots)
  if variant == "paper":
    c.data.resolution = (336, 672)
    c.model.update(hidden=2048, num_heads=16, depth_double=10, depth_single=24)
    c.total_steps = 10_000
    c.batch_size = 64
    c.optimizer.update(lr=1e-4, warmup_steps=1000, b1=0.9, b2=0.95)
  elif variant == "demo":
    v.update(num_frames=9, patch_t=2, shot_gap=2, from_keyframe=True)  # the demo predicts x (keyframe.py)
    c.data.toy.num_frames = 9
    c.data.num_pairs = 4
    c.batch_size = 2
    c.total_steps = 300  # the quickstart demo's share of its 25 minutes on 2 cores
    c.sample.update(max_shots=8, guidance=1.0)  # CFG 2 over-saturated the demo's clips (docs/design_notes.md)
  elif variant == "tiny":
    v.update(num_frames=3, patch_t=2, shot_gap=1)
    c.data.toy.num_frames = 3
    c.data.num_pairs = 2
  return c
