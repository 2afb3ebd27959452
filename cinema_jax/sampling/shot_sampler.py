"""Shot sampling: every shot's frames 1..F-1 from its keyframe and caption, with the video model.

A storyline's shots are generated in windows of the training window's length (config.data.num_pairs
shots: the RoPE time positions the model was trained on), all shots of a window at once, each window
seeing its shots' keyframes as clean conditions (t ~ U[config.sample.context_t], 0 by default) at
their first-frame slots. Euler on the shifted schedule over the clip tokens only; CFG drops every
caption of the window (the keyframes stay). The keyframes come out as the first frames bit for bit:
they are the conditions, not denoised.

Each shot draws its noise from (seed, shot index) alone, so a shot's noise does not change with its
window mates, the window length or the batch.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cinema_jax import config_validation
from cinema_jax import encoders
from cinema_jax import input_space
from cinema_jax.models import keyframe
from cinema_jax.models import video
from cinema_jax.sampling import flow


@functools.partial(jax.jit, static_argnames=("c", "graphdef"))
def denoise(c: config_validation.Config, graphdef, params, kf_BKhwC, text_BK: dict, keys_K, guidance):
  """Clip frames [1, K, F-1, h, w, C] (model space) of one window; keys_K: one PRNG key per shot."""
  v = c.model.video
  model = nnx.merge(graphdef, params)
  text = model.encode_text(text_BK)
  kf = video.keyframe_tokens(c, kf_BKhwC)
  k = kf.shape[1]
  gh, gw = keyframe.full_grid(c)
  n_clip, chans = video.token_frames(c) * gh * gw, kf.shape[-1]

  def draws(key):  # the shot's own: clip noise, its keyframe's context t and noise
    k_noise, k_t, k_ctx = jax.random.split(key, 3)
    lo, hi = c.sample.context_t
    return (jax.random.normal(k_noise, (n_clip, chans)), jax.random.uniform(k_t, (), minval=lo, maxval=hi),
            jax.random.normal(k_ctx, (gh * gw, chans)))

  x, t_kf, eps_kf = jax.vmap(draws)(keys_K)
  x, t_kf = x[None], t_kf[None]
  kf = (1 - t_kf[..., None, None]) * kf + t_kf[..., None, None] * eps_kf[None]
  times = jnp.asarray(flow.schedule(c.sample.num_steps, n_clip, c.objective.shift))
  distilled = c.model.guidance_embed  # the scale goes into guidance_in: one conditional pass
  if not distilled:  # CFG: the conditional and the caption-free window in one batch of 2
    text = jax.tree.map(lambda a: jnp.concatenate([a, jnp.zeros_like(a)]), text)
    kf, t_kf = jnp.concatenate([kf, kf]), jnp.concatenate([t_kf, t_kf])
  g = jnp.full((1, k), guidance, jnp.float32) if distilled else None

  def velocity(x, i):
    xx = x if distilled else jnp.concatenate([x, x])
    vel = video.velocity(c, model, kf, xx, jnp.full((xx.shape[0], k), times[i]), t_kf, text, g)
    return vel if distilled else flow.guided(vel, guidance)

  x = flow.euler(velocity, x, times, c.sample.num_steps)
  return video.unpatchify(x, v.patch_t, c.model.patch, v.num_frames - 1, *input_space.of(c).frame_shape[:2])


class ShotSampler:
  """Samples the shot videos of storylines for the video model of config `c` (params passed per call)."""

  def __init__(self, c: config_validation.Config, graphdef, text=None, frames=None):
    """text: captions -> the model's text input; frames: uint8 keyframes <-> the model's frames (encode and
    decode); both from cinema_jax/encoders.py, the data's tokenizer and pixels by default."""
    if c.task != "video":
      raise ValueError(f"ShotSampler needs a video-model config (config.task='video'), got {c.task!r}")
    config_validation.require(c, "ShotSampler")
    self.c = c  # frozen, as keyframe_sampler.Sampler's
    self.graphdef = graphdef
    self.text, self.frames = encoders.for_model(c, text, frames)
    self.h, self.w = c.data.resolution
    self.frame_shape = input_space.of(c).frame_shape
    self.window = c.data.num_pairs
    self.num_frames = c.model.video.num_frames

  def _denoise(self, params, kf_BKhwC, text_BK: dict, keys_K, guidance):
    """`denoise` with this sampler's frozen config and graph."""
    return denoise(self.c, self.graphdef, params, kf_BKhwC, text_BK, keys_K, guidance)

  def shots(self, params, keyframes_KHWC: np.ndarray, captions: list[str], *, seed: int = 0,
            shot_seeds: list[int] | None = None, guidance: float | None = None) -> np.ndarray:
    """uint8 [K, F, H, W, 3]: each shot's frames, its keyframe (given, uint8) first.

    shot_seeds: one noise seed per shot (default: seed, with the shot index folded in)."""
    keyframes_KHWC = np.asarray(keyframes_KHWC)
    num = len(captions)
    if keyframes_KHWC.dtype != np.uint8 or keyframes_KHWC.shape != (num, self.h, self.w, 3):
      raise ValueError(f"keyframes: expected uint8 [{num}, {self.h}, {self.w}, 3] (one per caption), got "
                       f"{keyframes_KHWC.dtype} {list(keyframes_KHWC.shape)}")
    if shot_seeds is not None and len(shot_seeds) != num:
      raise ValueError(f"{len(shot_seeds)} shot seeds for {num} shots")
    keys = [jax.random.fold_in(jax.random.key(seed), i) if shot_seeds is None else jax.random.key(shot_seeds[i])
            for i in range(num)]
    g = jnp.float32(self.c.sample.guidance if guidance is None else guidance)
    kf = self.frames.encode(keyframes_KHWC)  # the model's frames: pixels in [-1, 1], or VAE latents
    out = np.zeros((num, self.num_frames, self.h, self.w, 3), np.uint8)
    out[:, 0] = keyframes_KHWC
    text = self.text(captions)
    for first in range(0, num, self.window):
      sl = slice(first, min(num, first + self.window))
      clips = np.asarray(self._denoise(params, jnp.asarray(kf[None, sl]), {k: jnp.asarray(a[None, sl])
                                                                           for k, a in text.items()},
                                       jnp.stack(keys[sl]), g)[0])  # [k, F-1, h, w, C]
      pixels = self.frames.decode(clips.reshape(-1, *self.frame_shape))
      out[sl, 1:] = encoders.to_uint8(pixels).reshape(clips.shape[0], self.num_frames - 1, self.h, self.w, 3)
    return out
