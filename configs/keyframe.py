"""Keyframe-planning config: `--config=configs/keyframe.py[:VARIANT]`.

  flux_dev  (the default) FLUX.1-dev size (3072 wide, 24 heads, 19 + 38 blocks, ~11.9B parameters)
            with the paper's Table 4 recipe; reads pre-computed VAE latents and T5/CLIP states
            from config.data.path
  demo      the toy world at 32x64, as latents of its own autoencoder (TOY_AUTOENCODER, trained first by
            configs/autoencoder.py:toy); 700 steps of batch 8, about 7 minutes on a 2-core CPU (the
            quickstart demo's share of its 25 minutes)
  demo_long the demo model on 16-pair windows, batch 4, 1600 steps (the tokens per step of batch 16 at
            4 pairs), the model the toy-cinema benchmark (RESULTS.md) measures at 8 to 32 context pairs
  tiny      the smallest end-to-end setting, for tests and smoke runs: 16x32 pixels (the identity
            autoencoder, so a test needs no trained one)

Override any field from the command line: `--config.data.num_pairs=16 --config.model.remat=full`.
"""

import ml_collections

from configs import data as data_config

# The toy autoencoder's folder (configs/autoencoder.py:toy with --workdir=runs/toy_autoencoder writes
# it; launch/quickstart.sh demo does so first): the toy configs' input space
TOY_AUTOENCODER = "runs/toy_autoencoder/vae"

VARIANTS = ("flux_dev", "demo", "demo_long", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "flux_dev"
  if variant not in VARIANTS:
    raise ValueError(f"configs/keyframe.py: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.task = "keyframe"  # which model this config trains: "keyframe" (this file) | "video" (configs/video.py)
  c.seed = 0
  # A converted FLUX transformer (python -m cinema_jax.convert.flux --src ... --dst DIR) to start the
  # MM-DiT from instead of a random init; "" for none. Ignored when the workdir has a checkpoint.
  c.init_from = ""
  c.total_steps = 20_000
  c.batch_size = 16  # global examples per step (each example: data.num_pairs pairs)

  c.data = data_config.get_config()
  c.data.resolution = (400, 800)  # keyframe pixels (H, W); the toy world is rendered at this size
  c.data.path = ""
  c.data.num_pairs = 8
  c.data.text_source = "precomputed"
  c.data.text_len = 512  # FLUX.1-dev's T5 length
  c.data.text_convention = "flux"  # T5 states of the padded caption, unmasked, as FLUX.1-dev was trained

  c.model = m = ml_collections.ConfigDict()
  m.hidden = 3072
  m.num_heads = 24
  m.depth_double = 19
  m.depth_single = 38
  m.mlp_ratio = 4.0
  m.axes_dim = (16, 56, 56)  # RoPE channels for (pair, row, col); sums to hidden / num_heads
  m.theta = 10_000.0
  m.qkv_bias = True
  m.guidance_embed = True  # FLUX.1-dev's distilled guidance input
  m.image_channels = 16  # channels of what the pipeline yields: VAE latents (16) or pixels (3)
  m.vae_downsample = 8  # pixels per latent: 8 for the FLUX VAE, 1 for pixels
  m.patch = 2
  m.text_encoder = "precomputed"  # "precomputed": T5 states + CLIP pooled from the records | "tokens": the
                                  # model's own text encoder on word tokens (the toy world)
  m.context_dim = 4096  # T5-XXL
  m.vec_dim = 768  # CLIP-L pooled
  m.text = ml_collections.ConfigDict(dict(width=128, depth=2, num_heads=4, vocab_size=128, vec_dim=128))
  m.dtype = "bfloat16"  # compute; parameters stay in param_dtype
  m.param_dtype = "float32"
  m.remat = "full"  # none | full | dots
  m.attention = "auto"

  c.objective = o = ml_collections.ConfigDict()
  o.t_mean = 0.0  # logit-normal timesteps: sigmoid(N(t_mean, t_std))
  o.t_std = 1.0
  o.prediction = "v"  # what the network outputs: "v" (FLUX) | "x" (the clean image; for narrow toy models)
  o.shift = True  # shift t by the image-token count (mu 0.5 at 256 tokens, 1.15 at 4096)
  o.loss_pairs = "all"  # "all": every pair has its own t and carries loss | "last": only the last pair |
                        # "newest_group": only GoldenMem's full-resolution group (all pairs without it)
  o.context_t = (0.0, 0.0)  # pairs without loss get t ~ U[a, b] (paper: 1..250 of 1000)
  o.caption_dropout = 0.1  # per pair, for classifier-free guidance
  o.guidance = 3.5  # the guidance value fed to guidance_in during training (guidance_embed models)

  c.optimizer = opt = ml_collections.ConfigDict()
  opt.lr = 4e-4  # paper Table 4 (its text also says 2e-4)
  opt.warmup_steps = 500
  opt.end_lr_fraction = 0.0  # cosine decays to lr * end_lr_fraction at total_steps
  opt.b1, opt.b2, opt.eps = 0.9, 0.999, 1e-8
  opt.weight_decay = 0.0
  opt.grad_clip = 1.0
  opt.ema_decay = 0.999  # 0 disables the EMA copy
  # Adam's moments (2x the parameters in fp32) live in host memory between steps and come to the
  # device for the update: frees HBM at the cost of a host<->device copy per step (GPU, TPU; CPU for tests)
  opt.offload = False

  # Progressive long-context tuning (paper: 1 -> 8 -> 16 -> 32 pairs): window length and steps per
  # stage; the steps sum to total_steps and the last stage's pairs equal data.num_pairs. Empty: off.
  c.curriculum = ml_collections.ConfigDict(dict(pairs=(), steps=()))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))  # -1: the rest
  # across slices (TPU multi-slice) or hosts: each axis is mesh x mesh.dcn devices (sharding.make_mesh)
  c.mesh.dcn = ml_collections.ConfigDict(dict(data=1, fsdp=1, context=1, tensor=1))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, async_save=True,
      on_save_error="stop"))  # a failed save: "stop" | "retry" at the next checkpoint step (training/faults.py)
  # A step whose loss, gradient or update is not finite changes nothing; then "stop" (naming the step and
  # quantity) or "skip" it and stop after max_consecutive in a row.
  c.nonfinite = ml_collections.ConfigDict(dict(policy="stop", max_consecutive=10))
  c.log = ml_collections.ConfigDict(dict(every_steps=50, sample_every_steps=2000, tensorboard=True))
  c.sample = s = ml_collections.ConfigDict()
  s.num_steps = 28
  s.guidance = 3.5  # CFG scale (or the distilled guidance for guidance_embed models)
  s.mode = "autoregressive"  # one keyframe at a time, block-causal | "joint": all at once, bidirectional
  s.max_shots = 0  # 0: every shot of a storyline
  s.context_t = (0.0, 0.0)  # autoregressive context pairs re-noised to t ~ U[a, b] (paper: 1..250 of 1000)
  s.kv_cache = True  # autoregressive: the context's keys/values once per keyframe, not once per step
  s.param_dtype = "auto"  # parameters as sampling holds them: "auto" (bfloat16 on accelerators) | float32 | bfloat16
  # Encoder folders for models on T5/CLIP states and VAE latents (diffusers/transformers layout; the
  # sample command's --vae/--t5/--clip/--retrieval_clip flags override them)
  s.encoders = ml_collections.ConfigDict(dict(
      vae="", t5="", clip="",
      retrieval_clip="",  # a whole CLIP model (text and vision towers): context_order "image" on real data
      t5_on_host=False,  # T5-XXL on the host's memory instead of sharded over the devices
      vae_tile=64))  # decode latents larger than this (latent pixels) in overlapping tiles; 0: never

  if variant in ("demo", "demo_long"):
    # Sized for a 2-core CPU, on the toy autoencoder's 16x32x4 latents of a 32x64 frame. Patch 4: 32 image
    # tokens a keyframe (the 4x8 grid GoldenMem halves twice), and 44 word tokens a caption.
    _toy(c, steps=1600, batch=16)
    _toy_latents(c)
    m.update(hidden=128, num_heads=4, depth_double=2, depth_single=2, axes_dim=(8, 12, 12), patch=4)
    m.text.update(width=64, depth=1, num_heads=2, vec_dim=64)
    c.data.num_pairs = 4
    c.objective.prediction = "x"  # a 128-wide model cannot carry noise tokens well: predict the image
    c.optimizer.update(lr=1e-3, warmup_steps=100, end_lr_fraction=0.1, ema_decay=0.995)
    c.checkpoint.update(every_steps=400, keep=2)
    c.log.update(every_steps=50, sample_every_steps=400)
    c.sample.update(num_steps=24, guidance=2.0, max_shots=8)
    if variant == "demo":  # the quickstart's budget: 25 minutes on 2 cores, autoencoder and video included
      c.update(batch_size=8, total_steps=700)
      c.log.sample_every_steps = 700  # one sheet, at the end
    if variant == "demo_long":
      c.batch_size = 4
      c.data.num_pairs = 16
      c.sample.max_shots = 0
  elif variant == "tiny":
    _toy(c, steps=4, batch=2)
    c.data.toy.update(num_movies=6, min_shots=8, max_shots=16, num_frames=1)
    c.data.resolution = (16, 32)
    c.data.num_pairs = 3
    c.data.text_len = 24  # truncates the longest captions: tests and smoke runs
    m.update(hidden=32, num_heads=2, depth_double=1, depth_single=1, axes_dim=(4, 6, 6), patch=4)
    m.text.update(width=32, depth=1, num_heads=2, vec_dim=16)
    c.optimizer.update(lr=1e-3, warmup_steps=1)
    c.checkpoint.update(every_steps=2, keep=2, async_save=False)
    c.log.update(every_steps=1, sample_every_steps=0, tensorboard=False)
    c.sample.update(num_steps=2, max_shots=3)
  return c


def _toy(c: ml_collections.ConfigDict, steps: int, batch: int) -> None:
  """The toy world with word tokens, on one CPU host; in pixel space (the identity autoencoder) unless
  _toy_latents moves it onto its autoencoder's latents."""
  c.total_steps = steps
  c.batch_size = batch
  c.data.resolution = (32, 64)
  c.data.text_source = "tokens"
  c.data.text_len = 44  # the toy world's longest caption: 43 words and marks
  c.data.text_convention = "masked"
  c.model.update(image_channels=3, vae_downsample=1, text_encoder="tokens", guidance_embed=False,
                 dtype="float32", remat="none")
  c.objective.guidance = 0.0
  c.mesh.update(data=-1, fsdp=1)


def _toy_latents(c: ml_collections.ConfigDict) -> None:
  """The toy world as FLUX's road takes it: latents of the toy autoencoder (2x down, 4 channels)."""
  c.model.update(image_channels=4, vae_downsample=2)
  c.data.toy.autoencoder = TOY_AUTOENCODER
  c.data.goldenmem.resize = "latents"
