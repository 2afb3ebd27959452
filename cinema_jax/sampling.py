"""Keyframe sampling: Euler on the shifted rectified-flow schedule with classifier-free guidance.

autoregressive  keyframe k is denoised with keyframes max(0, k-P+1)..k-1 (already generated, clean)
                as its context, block-causal attention; or, with retrieval (config.data.context_order),
                with the P-1 earlier keyframes whose captions are most similar, the best last. P is the training window unless the caller
                asks for another (context_pairs=1: no memory, every shot from its caption alone). The
                window is padded to a multiple of 8 pair slots (at most P), so a few compiled programs
                serve every shot; slots after the new pair cannot affect it.
joint           all keyframes of a storyline denoised together with bidirectional attention.

With GoldenMem (config.data.memory_levels) the window's history is re-levelled for every new keyframe:
older keyframes enter at their level's smaller grid (one compiled program per window length, up to P).
Context pairs can be re-noised to t ~ U[config.sample.context_t] (the paper's noisy context).

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

from cinema_jax import goldenmem
from cinema_jax import objective
from cinema_jax import retrieval
from cinema_jax import toy_clip
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

  def __init__(self, c: ml_collections.ConfigDict, graphdef, context_pairs: int | None = None,
               clip: toy_clip.ToyClip | None = None):
    """clip: the image/text embedding for context_order "image" (toy_clip.load(toy_clip.resolve(...)))."""
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
    if c.data.context_order == "image" and clip is None:
      raise ValueError("config.data.context_order='image' (text-to-image retrieval) needs the ToyCLIP embedding: "
                       "Sampler(..., clip=toy_clip.load(toy_clip.resolve(c.data, workdir)))")
    self.clip = clip

  def _text(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = [tokenizer.encode(cap, self.c.data.text_len)[:2] for cap in captions]
    return np.stack([e[0] for e in enc]), np.stack([e[1] for e in enc])

  @functools.partial(jax.jit, static_argnums=(0, 6, 7))
  def _denoise(self, params, xs, tokens_PL, mask_PL, new_P, causal: bool, group_grids, key, guidance):
    """Denoises the pairs flagged in new_P; the others are context (clean, or re-noised to
    sample.context_t). xs: groups [n_g, N_g, C] on group_grids, oldest first. Returns the groups."""
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
    k_ctx, k_ctx_t = jax.random.split(jax.random.fold_in(key, 1))
    lo, hi = c.sample.context_t
    t_ctx = jnp.where(new_P, 0.0, jax.random.uniform(k_ctx_t, new_P.shape, minval=lo, maxval=hi))
    batched = tuple(x[None] for x in xs)  # split_pairs cuts axis 1: the pairs of [B, P, ...]
    news = objective.split_pairs(new_P[None], batched)
    t_ctxs = objective.split_pairs(t_ctx[None], batched)
    noise_keys = [key] if len(xs) == 1 else jax.random.split(key, len(xs))
    noise = [jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(noise_keys, xs)]
    ctx_eps = [jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(jax.random.split(k_ctx, len(xs)), xs)]
    xs = tuple(jnp.where(n[0, :, None, None], e, (1 - t[0, :, None, None]) * x + t[0, :, None, None] * ce)
               for x, n, t, e, ce in zip(xs, news, t_ctxs, noise, ctx_eps))

    def body(i, xs):
      t = jnp.where(new_P, times[i], t_ctx)
      run = lambda xx, tt, txt, g=None: model(xx, tt, *txt, grid=self.grid, guidance_BP=g, causal=causal,
                                               group_grids=group_grids)
      if distilled:
        g = jnp.full((1, t.shape[0]), guidance, jnp.float32)
        xb = tuple(x[None] for x in xs)
        v = tuple(x[0] for x in objective.velocity(run(xb, t[None], text, g), xb, t[None], c.objective.prediction))
      else:
        xb, tt = tuple(jnp.stack([x, x]) for x in xs), jnp.stack([t, t])
        v = objective.velocity(run(xb, tt, text), xb, tt, c.objective.prediction)
        v = tuple(vv[1] + guidance * (vv[0] - vv[1]) for vv in v)
      return tuple(jnp.where(n[0, :, None, None], x + (times[i + 1] - times[i]) * vv, x)
                   for x, vv, n in zip(xs, v, news))

    return jax.lax.fori_loop(0, c.sample.num_steps, body, xs)

  def _context(self, frames_KHWC: np.ndarray, plan) -> tuple[np.ndarray, ...]:
    """GoldenMem: each group's frames (the last pair a placeholder) resized to its grid, as tokens."""
    c, p = self.c, self.c.model.patch
    out, first = [], 0
    for g in plan:
      size = (g.grid[0] * p, g.grid[1] * p)
      x = frames_KHWC[first:first + g.num_pairs]
      if c.data.goldenmem.resize == "pixels":  # what the pipeline does: uint8 frames, box filter
        x = goldenmem.resize_frames(_to_uint8(x), size).astype(np.float32) / 127.5 - 1.0
      else:
        x = np.asarray(goldenmem.resize_array(jnp.asarray(x)[None], size)[0])
      out.append(np.asarray(keyframe.patchify(jnp.asarray(x)[None], p)[0]))
      first += g.num_pairs
    return tuple(out)

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
    full = (tuple(self.grid),)
    to_pixels = lambda tok: keyframe.unpatchify(jnp.asarray(tok)[None], c.model.patch, self.h, self.w)[0]
    if mode == "joint":
      x = (np.zeros((len(captions), n_tok, chans), np.float32),)
      (x,) = self._denoise(params, x, tokens, masks, jnp.ones(len(captions), bool), False, full, key, g)
      pixels = to_pixels(x)
    elif mode == "autoregressive":
      p = self.num_pairs
      order = c.data.context_order
      query = history = None  # retrieval embeddings: of the captions, and of the captions or keyframes
      if order == "text":
        query = history = np.stack([retrieval.words_embedding(cap) for cap in captions])
      elif order == "image":
        query, history = self.clip.texts(captions), np.zeros((len(captions), self.clip.dim), np.float32)
      pixels = np.zeros((len(captions), self.h, self.w, 3), np.float32)
      for k in range(len(captions)):
        # The context: the last P - 1 keyframes, or the P - 1 most relevant (retrieval), best last.
        ctx = retrieval.select(order, k, p - 1, query=None if query is None else query[k],
                               history=None if history is None else history[:k], recency=c.data.retrieval.recency)
        sel = np.concatenate([ctx, [k]]).astype(np.int64)
        n = len(sel)
        plan = keyframe.memory_plan(c, n)
        if plan is None:  # every context frame in full, in a window padded to a multiple of 8 slots
          slots = min(p, -(-n // _SLOT_BUCKET) * _SLOT_BUCKET)
          x = np.zeros((slots, n_tok, chans), np.float32)
          if n > 1:
            x[:n - 1] = np.asarray(keyframe.patchify(jnp.asarray(pixels[ctx])[None], c.model.patch)[0])
          xs, grids = (x,), full
        else:  # GoldenMem: the history re-levelled for this window; shapes fixed per window length
          slots = n
          xs = self._context(pixels[sel], plan)
          grids = tuple(grp.grid for grp in plan)
        win_tokens = np.zeros((slots, tokens.shape[1]), np.int32)
        win_masks = np.zeros((slots, tokens.shape[1]), bool)
        win_tokens[:n], win_masks[:n] = tokens[sel], masks[sel]
        new = np.arange(slots) == n - 1
        out = self._denoise(params, xs, win_tokens, win_masks, new, True, grids, jax.random.fold_in(key, k), g)
        last = out[-1][-1] if plan is not None else out[0][n - 1]
        pixels[k] = np.asarray(to_pixels(last[None])[0])
        if order == "image":
          history[k] = self.clip.images(_to_uint8(pixels[k:k + 1]))[0]
    else:
      raise ValueError(f"sample mode {mode!r}: expected 'autoregressive' or 'joint'")
    return _to_uint8(pixels)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255]."""
  return np.clip(np.rint((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)


def storyboard_image(frames_KHWC: np.ndarray, captions: list[str], title: str = "") -> Image.Image:
  return storyboard.sheet(frames_KHWC, captions, columns=4, title=title)
