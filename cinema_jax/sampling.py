"""Keyframe sampling: Euler on the shifted rectified-flow schedule with classifier-free guidance.

autoregressive  keyframe k is denoised with keyframes max(0, k-P+1)..k-1 (already generated, clean)
                as its context, block-causal attention. P is the training window unless the caller
                asks for another (context_pairs=1: no memory, every shot from its caption alone). The
                window is padded to a multiple of 8 pair slots (at most P), so a few compiled programs
                serve every shot; slots after the new pair cannot affect it.
joint           all keyframes of a storyline denoised together with bidirectional attention.

CFG drops only the new pairs' captions (the context keeps its own), the way training drops them. A
guidance-distilled model (model.guidance_embed, FLUX.1-dev) instead gets the scale through its guidance
embedding and runs one conditional pass per step.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from cinema_jax import objective
from cinema_jax import storyboard
from cinema_jax.models import keyframe
from data_pipelines import tokenizer


_SLOT_BUCKET = 8  # autoregressive windows are padded to a multiple of this many pairs


def schedule(num_steps: int, num_image_tokens: int, shift: bool) -> np.ndarray:
  """Times from 1 (noise) to 0 (data), [num_steps + 1], shifted like training."""
  t = np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64)
  if shift:  # objective.time_shift, in numpy: the schedule is a compile-time constant
    e = np.exp(objective.shift_mu(num_image_tokens))
    t = np.where(t > 0, e / (e + 1.0 / np.maximum(t, 1e-12) - 1.0), 0.0)
  return t.astype(np.float32)


class Sampler:
  """Samples keyframes of storylines for the model of config `c` (its params passed per call)."""

  def __init__(self, c: ml_collections.ConfigDict, graphdef, context_pairs: int | None = None):
    if c.model.text_encoder != "bytes":
      raise ValueError("sampling from caption text needs the byte text encoder (config.model.text_encoder="
                       "'bytes'); models on pre-computed T5/CLIP states need those encoders (pretrained-weights issue)")
    if c.model.vae_downsample != 1:
      raise ValueError("sampling latent-space models needs the VAE decoder (pretrained-weights issue)")
    self.c, self.graphdef = c, graphdef
    cell = c.model.patch
    self.h, self.w = c.data.resolution
    self.grid = (self.h // cell, self.w // cell)
    self.num_pairs = context_pairs or c.data.num_pairs  # pairs in the autoregressive window
    if self.num_pairs < 1:
      raise ValueError(f"context_pairs must be >= 1, got {context_pairs}")

  def _text(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = [tokenizer.encode(cap, self.c.data.text_len)[:2] for cap in captions]
    return np.stack([e[0] for e in enc]), np.stack([e[1] for e in enc])

  @functools.partial(jax.jit, static_argnums=(0, 6))
  def _denoise(self, params, x_PNC, tokens_PL, mask_PL, new_P, causal: bool, key, guidance):
    """Denoises the pairs flagged in new_P (the others are clean context); returns x [P, N, C]."""
    c = self.c
    model = nnx.merge(self.graphdef, params)
    states, mask, pooled = model.encode_text({"text_tokens": tokens_PL[None], "text_mask": mask_PL[None]})
    distilled = c.model.guidance_embed  # FLUX.1-dev style: the scale goes into guidance_in, one pass
    if distilled:
      text = (states, mask, pooled)
    else:
      keep = ~new_P[None]  # CFG: the unconditional branch loses the new pairs' captions only
      text = (jnp.concatenate([states, states * keep[..., None, None]]),
              jnp.concatenate([mask, mask & keep[..., None]]),
              jnp.concatenate([pooled, pooled * keep[..., None]]))
    times = jnp.asarray(schedule(c.sample.num_steps, self.grid[0] * self.grid[1], c.objective.shift))
    noise = jax.random.normal(key, x_PNC.shape, jnp.float32)
    x = jnp.where(new_P[:, None, None], noise, x_PNC)

    def body(i, x):
      t = jnp.where(new_P, times[i], 0.0)
      if distilled:
        g = jnp.full((1, t.shape[0]), guidance, jnp.float32)
        out = model(x[None], t[None], *text, grid=self.grid, guidance_BP=g, causal=causal)
        v = objective.velocity(out, x[None], t[None], c.objective.prediction)[0]
      else:
        xx, tt = jnp.stack([x, x]), jnp.stack([t, t])
        v = objective.velocity(model(xx, tt, *text, grid=self.grid, causal=causal), xx, tt, c.objective.prediction)
        v = v[1] + guidance * (v[0] - v[1])
      return jnp.where(new_P[:, None, None], x + (times[i + 1] - times[i]) * v, x)

    return jax.lax.fori_loop(0, c.sample.num_steps, body, x)

  def keyframes(self, params, captions: list[str], *, seed: int = 0, mode: str | None = None,
                guidance: float | None = None) -> np.ndarray:
    """uint8 [K, H, W, 3]: one keyframe per caption, reproducible from the seed."""
    c = self.c
    mode = mode or c.sample.mode
    g = jnp.float32(c.sample.guidance if guidance is None else guidance)
    key = jax.random.key(seed)
    tokens, masks = self._text(captions)
    n_tok = self.grid[0] * self.grid[1]
    chans = 3 * c.model.patch ** 2
    if mode == "joint":
      x = np.zeros((len(captions), n_tok, chans), np.float32)
      x = self._denoise(params, x, tokens, masks, jnp.ones(len(captions), bool), False, key, g)
      tok = np.asarray(x)
    elif mode == "autoregressive":
      p = self.num_pairs
      tok = np.zeros((len(captions), n_tok, chans), np.float32)
      for k in range(len(captions)):
        lo = max(0, k - p + 1)
        n = k - lo + 1
        slots = min(p, -(-n // _SLOT_BUCKET) * _SLOT_BUCKET)
        x = np.zeros((slots, n_tok, chans), np.float32)
        x[:n - 1] = tok[lo:k]
        win_tokens = np.zeros((slots, tokens.shape[1]), np.int32)
        win_masks = np.zeros((slots, tokens.shape[1]), bool)
        win_tokens[:n], win_masks[:n] = tokens[lo:k + 1], masks[lo:k + 1]
        new = np.arange(slots) == n - 1
        out = self._denoise(params, x, win_tokens, win_masks, new, True, jax.random.fold_in(key, k), g)
        tok[k] = np.asarray(out[n - 1])
    else:
      raise ValueError(f"sample mode {mode!r}: expected 'autoregressive' or 'joint'")
    pixels = keyframe.unpatchify(jnp.asarray(tok)[None], c.model.patch, self.h, self.w)[0]
    return np.asarray(jnp.clip(jnp.round((pixels + 1.0) * 127.5), 0, 255)).astype(np.uint8)


def storyboard_image(frames_KHWC: np.ndarray, captions: list[str], title: str = "") -> Image.Image:
  return storyboard.sheet(frames_KHWC, captions, columns=4, title=title)
