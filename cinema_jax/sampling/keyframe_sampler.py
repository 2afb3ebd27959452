"""Keyframe sampling: Euler on the shifted rectified-flow schedule with classifier-free guidance.

autoregressive  keyframe k is denoised with keyframes max(0, k-P+1)..k-1 (already generated, clean)
                as its context, block-causal attention; or, with retrieval (config.data.context_order),
                with the P-1 earlier keyframes whose captions are most similar, the best last. P is the training
                window unless the caller asks for another (context_pairs=1: no memory, every shot from its caption
                alone). The window is padded to a multiple of 8 pair slots (at most P), so a few compiled programs
                serve every shot; slots after the new pair cannot affect it.
joint           all keyframes of a storyline denoised together with bidirectional attention.

With GoldenMem (config.data.memory_levels) the window's history is re-levelled for every new keyframe:
older keyframes enter at their level's smaller grid (one compiled program per window length, up to P).
Context pairs can be re-noised to t ~ U[config.sample.context_t] (the paper's noisy context).

KV cache (config.sample.kv_cache, default on): in autoregressive mode the context never sees the new
pair and keeps its t and captions through the loop, so its single-stream keys and values are computed
once per keyframe (MMDiT.fill_cache) and every Euler step runs only the new pair against them.

Storylines are sampled in batches (keyframes_batch): keyframe k of every storyline in one call, the
batch optionally split over devices; each window draws its own noise, so a storyline's keyframes do
not depend on its batch mates (up to float rounding).

CFG drops only the new pairs' captions (the context keeps its own), the way training drops them. A
guidance-distilled model (model.guidance_embed, FLUX.1-dev) instead gets the scale through its guidance
embedding and runs one conditional pass per step.

The sampler works in the model's frame space (pixels, or VAE latents) and takes its captions and
frames through cinema_jax/encoders.py: `text` turns captions into the model's text input (word tokens,
or T5 states and CLIP pooled vectors by the config's text convention), `frames` decodes frames into
pixels (identity, or the VAE). Context retrieval by image embeds each generated keyframe's pixels.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cinema_jax import config_validation
from cinema_jax import encoders
from cinema_jax import goldenmem
from cinema_jax import input_space
from cinema_jax import retrieval
from cinema_jax.models import keyframe
from cinema_jax.sampling import flow
from cinema_jax.sampling import storyboard
from cinema_jax.training import objective


_SLOT_BUCKET = 8  # autoregressive windows are padded to a multiple of this many pairs


@functools.partial(jax.jit, static_argnames=("c", "graphdef", "causal", "group_grids", "cached"))
def denoise(c: config_validation.Config, graphdef, params, xs, text_BP: dict, new_P, keys_B, guidance, *,
            causal: bool, group_grids, cached: bool):
  """Denoises the pairs flagged in new_P of B windows; the others are context (clean, or re-noised
  to sample.context_t). xs: groups [B, n_g, N_g, C] on group_grids, oldest first; text_BP: the windows'
  text input (Sampler.text's arrays, [B, P, ...]); keys_B: one PRNG key per window. cached: one new pair
  (in the last group), its context's keys and values computed once (KV cache) and only the new pair run
  at each step. c is frozen (hashable: the compile cache keys on its values). Returns the groups."""
  model = nnx.merge(graphdef, params)
  grid = keyframe.full_grid(c)
  b = xs[0].shape[0]
  states, mask, pooled = model.encode_text(text_BP)
  times = jnp.asarray(flow.schedule(c.sample.num_steps, grid[0] * grid[1], c.objective.shift))
  lo, hi = c.sample.context_t

  def draws(key):  # per window, so that a window's samples do not depend on the others in the batch
    k_ctx, k_ctx_t = jax.random.split(jax.random.fold_in(key, 1))
    t_ctx = jnp.where(new_P, 0.0, jax.random.uniform(k_ctx_t, new_P.shape, minval=lo, maxval=hi))
    noise_keys = [key] if len(xs) == 1 else jax.random.split(key, len(xs))
    noise = [jax.random.normal(k, x.shape[1:], jnp.float32) for k, x in zip(noise_keys, xs)]
    ctx_eps = [jax.random.normal(k, x.shape[1:], jnp.float32) for k, x in zip(jax.random.split(k_ctx, len(xs)), xs)]
    return t_ctx, noise, ctx_eps

  t_ctx, noise, ctx_eps = jax.vmap(draws)(keys_B)
  news = goldenmem.split_pairs(jnp.broadcast_to(new_P, (b, new_P.shape[0])), xs)
  t_ctxs = goldenmem.split_pairs(t_ctx, xs)
  xs = tuple(jnp.where(n[..., None, None], e, (1 - t[..., None, None]) * x + t[..., None, None] * ce)
             for x, n, t, e, ce in zip(xs, news, t_ctxs, noise, ctx_eps))
  distilled = c.model.guidance_embed  # FLUX.1-dev style: the scale goes into guidance_in, one pass
  g_BP = lambda p: jnp.full((b, p), guidance, jnp.float32) if distilled else None

  def velocity(run, x, t, text):
    """The guided velocity: CFG drops only the new pairs' captions, the way training drops them."""
    if distilled:
      return objective.velocity(run(x, t, text), x, t, c.objective.prediction)
    (st, m, pl), (st_u, m_u, pl_u) = text
    both = lambda a, u: jnp.concatenate([a, u])
    x2, t2 = jax.tree.map(lambda a: both(a, a), (x, t))
    return flow.guided(objective.velocity(run(x2, t2, (both(st, st_u), both(m, m_u), both(pl, pl_u))), x2, t2,
                                          c.objective.prediction), guidance)

  if not cached:
    keep = ~new_P[None]  # the unconditional branch loses the new pairs' captions only
    text = (states, mask, pooled)
    if not distilled:
      text = (text, (states * keep[..., None, None], mask & keep[..., None], pooled * keep[..., None]))
    run = lambda xx, tt, txt: model(xx, tt, *txt, grid=grid, guidance_BP=g_BP(tt.shape[1]), causal=causal,
                                    group_grids=group_grids)

    def new_pairs_velocity(xs, i):  # the context keeps its own t and does not move
      v = velocity(run, xs, jnp.where(new_P[None], times[i], t_ctx), text)
      return tuple(jnp.where(n[..., None, None], vv, 0.0) for vv, n in zip(v, news))

    return flow.euler(new_pairs_velocity, xs, times, c.sample.num_steps)

  # KV cache: the context never sees the new pair (block-causal) and keeps its t, captions and
  # guidance through the loop, so its keys and values are computed once; the pairs after the new
  # one (padding slots) are masked out of the cache.
  j = jnp.argmax(new_P)  # the new pair, the same slot in every window
  first = sum(x.shape[1] for x in xs[:-1])  # where the last group (holding the new pair) starts
  cache = model.fill_cache(xs, t_ctx, states, mask, pooled, grid=grid, guidance_BP=g_BP(new_P.shape[0]),
                           group_grids=group_grids, pair_valid_BP=jnp.broadcast_to(jnp.arange(new_P.shape[0]) < j,
                                                                                   (b, new_P.shape[0])))
  if not distilled:  # both CFG branches share the context
    cache = jax.tree.map(lambda a, axis: jnp.concatenate([a, a], axis),
                         cache, type(cache)(k_LBSHD=1, v_LBSHD=1, mask_BS=0))
  pick = lambda a: jax.lax.dynamic_slice_in_dim(a, j, 1, axis=1)
  text = (pick(states), pick(mask), pick(pooled))
  if not distilled:
    text = (text, (jnp.zeros_like(text[0]), jnp.zeros_like(text[1]), jnp.zeros_like(text[2])))
  x_new = jax.lax.dynamic_slice_in_dim(xs[-1], j - first, 1, axis=1)
  run = lambda xx, tt, txt: model(xx, tt, *txt, grid=grid, guidance_BP=g_BP(1), causal=True, cache=cache,
                                  first_pair=j)
  x_new = flow.euler(lambda x, i: velocity(run, x, jnp.full((b, 1), times[i]), text), x_new, times, c.sample.num_steps)
  return (*xs[:-1], jax.lax.dynamic_update_slice_in_dim(xs[-1], x_new, j - first, axis=1))


class Sampler:
  """Samples keyframes of storylines for the model of config `c` (its params passed per call)."""

  def __init__(self, c: config_validation.Config, graphdef, context_pairs: int | None = None, clip=None,
               text=None, frames=None):
    """clip: the image/text embedding for context_order "image" (encoders.ClipEmbedding, or ToyCLIP);
    text: captions -> the model's text input (default for token models: encoders.TokenText);
    frames: the model's frames -> pixels (default for pixel-space models: encoders.PixelFrames)."""
    # A frozen Config: a sampler samples with the settings it was built with, and samplers of equal
    # configs share compiled programs (jit keys on its value).
    config_validation.require(c, "Sampler")
    self.c, self.graphdef = c, graphdef
    self.text, self.frames = encoders.for_model(c, text, frames)
    self.grid = keyframe.full_grid(c)
    self.frame_shape = input_space.of(c).frame_shape
    self.num_pairs = context_pairs or c.data.num_pairs  # pairs in the autoregressive window
    if self.num_pairs < 1:
      raise ValueError(f"context_pairs must be >= 1, got {context_pairs}")
    if c.data.context_order == "image" and clip is None:
      raise ValueError("config.data.context_order='image' (text-to-image retrieval) needs an image/text embedding: "
                       "Sampler(..., clip=encoders.ClipEmbedding.load(...) or toy_clip.load(...))")
    self.clip = clip

  def _denoise(self, params, xs, text_BP: dict, new_P, causal: bool, group_grids, cached: bool, keys_B, guidance):
    """`denoise` with this sampler's frozen config and graph."""
    return denoise(self.c, self.graphdef, params, xs, text_BP, new_P, keys_B, guidance, causal=causal,
                   group_grids=group_grids, cached=cached)

  def _context(self, frames_KHWC: np.ndarray, plan, memo: dict, ids) -> tuple[np.ndarray, ...]:
    """GoldenMem: each group's frames (model space; the last pair a placeholder) resized to its grid, as tokens.

    memo keeps each generated frame's tokens per grid (keyed by (ids[i], grid)), so only frames whose
    level changed since the last keyframe are resized again; the new pair's placeholder is not kept."""
    c, p = self.c, self.c.model.patch
    out, first = [], 0
    for g in plan:
      size = (g.grid[0] * p, g.grid[1] * p)
      toks = []
      for i in range(first, first + g.num_pairs):
        key = (ids[i], g.grid) if i < len(ids) - 1 else None  # the last frame is not generated yet
        tok = memo.get(key)
        if tok is None:
          x = frames_KHWC[i:i + 1]
          if c.data.goldenmem.resize == "pixels":  # what the pipeline does: uint8 frames, box filter
            x = encoders.from_uint8(goldenmem.resize_frames(encoders.to_uint8(x), size))
          else:
            x = np.asarray(goldenmem.resize_array(jnp.asarray(x)[None], size)[0])
          tok = np.asarray(keyframe.patchify(jnp.asarray(x)[None], p)[0, 0])
          if key is not None:
            memo[key] = tok
        toks.append(tok)
      out.append(np.stack(toks))
      first += g.num_pairs
    return tuple(out)

  def keyframes(self, params, captions: list[str], *, seed: int = 0, mode: str | None = None,
                guidance: float | None = None) -> np.ndarray:
    """uint8 [K, H, W, 3]: one keyframe per caption, reproducible from the seed."""
    return self.keyframes_batch(params, [captions], seeds=[seed], mode=mode, guidance=guidance)[0]

  def keyframes_batch(self, params, storylines: list[list[str]], **kw) -> list[np.ndarray]:
    """uint8 [K_b, H, W, 3] per storyline (frames_batch's arguments), decoded to pixels."""
    return [self.decode(f) for f in self.frames_batch(params, storylines, **kw)]

  def decode(self, frames_KhwC: np.ndarray) -> np.ndarray:
    """The model's frames -> uint8 pixels [K, H, W, 3]."""
    return encoders.to_uint8(self.frames.decode(frames_KhwC))

  def frames_batch(self, params, storylines: list[list[str]], *, seeds: list[int], mode: str | None = None,
                   guidance: float | None = None, sharding=None) -> list[np.ndarray]:
    """float [K_b, h, w, C] per storyline in the model's frame space (pixels in [-1, 1], or latents);
    storyline b is reproducible from seeds[b].

    Autoregressive: the storylines are denoised together, one keyframe slot at a time (a shorter
    storyline repeats its last caption, and the extra keyframes are dropped). Joint: one at a time.
    sharding: where the batch goes (e.g. NamedSharding(mesh, P("data")): storylines split over devices).
    """
    c = self.c
    mode = mode or c.sample.mode
    if len(seeds) != len(storylines) or not storylines:
      raise ValueError(f"{len(storylines)} storylines and {len(seeds)} seeds")
    g = jnp.float32(c.sample.guidance if guidance is None else guidance)
    put = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jnp.asarray
    n_tok = self.grid[0] * self.grid[1]
    chans = self.frame_shape[2] * c.model.patch ** 2
    full = (tuple(self.grid),)
    to_frames = lambda tok: np.asarray(keyframe.unpatchify(jnp.asarray(tok), c.model.patch, *self.frame_shape[:2]))
    keys = lambda k: jnp.stack([jax.random.key(s) if k is None else jax.random.fold_in(jax.random.key(s), k)
                                for s in seeds])
    if mode == "joint":
      out = []
      for caps, seed in zip(storylines, seeds):
        text = {k: put(v[None]) for k, v in self.text(caps).items()}
        x = (np.zeros((1, len(caps), n_tok, chans), np.float32),)
        (x,) = self._denoise(params, x, text, jnp.ones(len(caps), bool), False, full, False,
                             jnp.stack([jax.random.key(seed)]), g)
        out.append(to_frames(x)[0])
      return out
    if mode != "autoregressive":
      raise ValueError(f"sample mode {mode!r}: expected 'autoregressive' or 'joint'")
    lengths = [len(caps) for caps in storylines]
    num = max(lengths)
    storylines = [list(caps) + [caps[-1]] * (num - len(caps)) for caps in storylines]
    text = [self.text(caps) for caps in storylines]
    p, order, bsz = self.num_pairs, c.data.context_order, len(storylines)
    query = history = None  # retrieval embeddings: of the captions, and of the captions or keyframes
    if order == "text":
      query = history = [np.stack([retrieval.words_embedding(cap) for cap in caps]) for caps in storylines]
    elif order == "image":
      query = [self.clip.texts(caps) for caps in storylines]
      history = [np.zeros((num, self.clip.dim), np.float32) for _ in storylines]
    frames = np.zeros((bsz, num, *self.frame_shape), np.float32)
    memos = [{} for _ in storylines]
    for k in range(num):
      # The context: the last P - 1 keyframes, or the P - 1 most relevant (retrieval), best last.
      sels = []
      for b in range(bsz):
        ctx = retrieval.select(order, k, p - 1, query=None if query is None else query[b][k],
                               history=None if history is None else history[b][:k], recency=c.data.retrieval.recency)
        sels.append(np.concatenate([ctx, [k]]).astype(np.int64))
      n = len(sels[0])  # the same in every storyline: min(k, P - 1) + 1
      plan = keyframe.memory_plan(c, n)
      if plan is None:  # every context frame in full, in a window padded to a multiple of 8 slots
        slots = min(p, -(-n // _SLOT_BUCKET) * _SLOT_BUCKET)
        x = np.zeros((bsz, slots, n_tok, chans), np.float32)
        if n > 1:
          x[:, :n - 1] = to_tokens(np.stack([frames[b, sel[:-1]] for b, sel in enumerate(sels)]), c.model.patch)
        xs, grids = (x,), full
      else:  # GoldenMem: the history re-levelled for this window; shapes fixed per window length
        slots = n
        xs = tuple(np.stack(gs) for gs in zip(*(self._context(frames[b, sel], plan, memos[b], sel)
                                                for b, sel in enumerate(sels))))
        grids = tuple(grp.grid for grp in plan)
      win = {}
      for key, arr in text[0].items():
        win[key] = np.zeros((bsz, slots, *arr.shape[1:]), arr.dtype)
        for b, sel in enumerate(sels):
          win[key][b, :n] = text[b][key][sel]
      new = np.arange(slots) == n - 1
      cached = bool(c.sample.kv_cache) and n > 1
      out = self._denoise(params, tuple(put(x) for x in xs), {key: put(v) for key, v in win.items()}, new, True,
                          grids, cached, put(keys(k)), g)
      last = np.asarray(out[-1][:, -1] if plan is not None else out[0][:, n - 1])
      frames[:, k] = to_frames(last[:, None])[:, 0]
      if order == "image":  # each generated keyframe is embedded as retrieval will see it: its pixels
        for b in range(bsz):
          history[b][k] = self.clip.images(self.decode(frames[b, k:k + 1]))[0]
    return [frames[b, :n] for b, n in enumerate(lengths)]


def to_tokens(frames_BKHWC: np.ndarray, patch: int) -> np.ndarray:
  return np.asarray(keyframe.patchify(jnp.asarray(frames_BKHWC), patch))


def storyboard_image(frames_KHWC: np.ndarray, captions: list[str], title: str = "") -> Image.Image:
  return storyboard.sheet(frames_KHWC, captions, columns=4, title=title)
